"""Between the wire's dicts and the typed request shapes of `kvslite.server.ops.requests`.

`from_wire(cls, params)` builds a request dataclass from the dict
`kvslite.server.edge.model.parse_input` returns (keyed by AWS member names); `to_wire` turns one
back into that dict. Members are matched by the classes' fields: a field's AWS name is its
CamelCase (`stream_name` -> `StreamName`) unless the class's `_WIRE` says otherwise
(`stream_arn` -> `StreamARN`).
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable
from functools import cache
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

T = TypeVar("T")
Converter = Callable[[Any], Any]

# Output members written as JSON null when a result leaves them None, as AWS does, where
# clients tell null from absent: (structure shape, member). Every other None is left out.
# AWS's JS WebRTC example tests `StreamARN !== null` to tell whether media storage is set.
NULL_WHEN_NONE = frozenset({("MediaStorageConfiguration", "StreamARN")})


def from_wire(cls: type[T], params: dict[str, Any]) -> T:
    """Build a `cls` from parsed request parameters keyed by AWS member names.

    Nested structures, also inside lists and maps, become their dataclasses; every
    other value is taken as it is. A key that is no member of the shape, or a missing
    required member, is a programming error: TypeError.
    """
    shape: type = cls  # (mypy does not count a type[T] as Hashable for the cache)
    members = _members(shape)
    kwargs = {}
    for key, value in params.items():
        try:
            name, convert = members[key]
        except KeyError:
            raise TypeError(f"{cls.__name__} has no member {key!r}") from None
        kwargs[name] = value if convert is None else convert(value)
    return cls(**kwargs)


def to_wire(value: Any) -> Any:
    """The inverse of from_wire: a generated dataclass (also inside lists and maps) as
    the dict of AWS member names it was built from, members left None omitted."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        names = {field: aws for aws, (field, _) in _members(type(value)).items()}
        return {names[f.name]: to_wire(getattr(value, f.name))
                for f in dataclasses.fields(value) if getattr(value, f.name) is not None}
    if isinstance(value, list):
        return [to_wire(v) for v in value]
    if isinstance(value, dict):
        return {k: to_wire(v) for k, v in value.items()}
    return value


@cache
def _members(cls: type[Any]) -> dict[str, tuple[str, Converter | None]]:
    """AWS member name -> (field name, converter or None) of a generated class."""
    wire = getattr(cls, "_WIRE", {})
    hints = get_type_hints(cls)
    return {
        wire.get(f.name, _camel(f.name)): (f.name, _converter(hints[f.name]))
        for f in dataclasses.fields(cls)
    }


def _camel(field_name: str) -> str:
    return "".join(part.capitalize() for part in field_name.split("_"))


def _converter(hint: Any) -> Converter | None:
    """How a member's parsed value becomes the field's: None where it already is."""
    if isinstance(hint, types.UnionType):  # X | None
        (hint,) = [arg for arg in get_args(hint) if arg is not type(None)]
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        structure = hint
        return lambda value: from_wire(structure, value)
    origin = get_origin(hint)
    if origin is list:
        item = _converter(get_args(hint)[0])
        if item is None:
            return None
        return lambda value: [item(v) for v in value]
    if origin is dict:
        entry = _converter(get_args(hint)[1])
        if entry is None:
            return None
        return lambda value: {k: entry(v) for k, v in value.items()}
    return None  # scalars arrive converted already
