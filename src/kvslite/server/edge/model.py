"""The KVS wire contract, read from botocore's service models.

Routing, input validation and output serialization are all driven by the models
(`kinesisvideo`, `kinesis-video-media`, `kinesis-video-archived-media`,
`kinesis-video-signaling`, `kinesis-video-webrtc-storage`), so kvslite never re-types a
member name, a limit or an enum by hand.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import botocore.session
import regex  # the models' patterns use \p{L}-style classes that `re` lacks
from botocore.model import OperationModel, Shape

from kvslite.server.api_errors import INTERNAL_FAILURE, SERIALIZATION, ApiError, invalid
from kvslite.server.ops.wire import NULL_WHEN_NONE

SERVICES = ("kinesisvideo", "kinesis-video-media", "kinesis-video-archived-media",
            "kinesis-video-signaling", "kinesis-video-webrtc-storage")


@dataclass(frozen=True)
class Route:
    service: str
    operation: OperationModel

    @property
    def name(self) -> str:
        return self.operation.name


@lru_cache(maxsize=1)
def routes() -> dict[str, Route]:
    """Map each `requestUri` of the three models to its operation (paths are unique)."""
    session = botocore.session.get_session()
    table: dict[str, Route] = {}
    for service in SERVICES:
        model = session.get_service_model(service)
        for name in model.operation_names:
            operation = model.operation_model(name)
            table[operation.http["requestUri"]] = Route(service, operation)
    return table


@lru_cache(maxsize=1)
def error_statuses() -> dict[str, int]:
    """HTTP status of every modeled error shape, e.g. ResourceNotFoundException -> 404."""
    statuses: dict[str, int] = {}
    for route in routes().values():
        for shape in route.operation.error_shapes:
            statuses[shape.name] = shape.metadata.get("error", {}).get("httpStatusCode", 400)
    return statuses


@lru_cache(maxsize=None)
def _compiled(pattern: str) -> regex.Pattern:
    return regex.compile(pattern)


def parse_input(operation: OperationModel, body: object) -> dict:
    """Validate a decoded JSON body against the operation's input shape.

    Returns the parameters with wire types converted (timestamps to float epoch
    seconds, blobs to bytes). Raises InvalidArgumentException naming the member.
    """
    shape = operation.input_shape
    if shape is None:
        return {}
    if not isinstance(body, dict):
        raise ApiError(SERIALIZATION, "The request body must be a JSON object")
    return _parse(shape, body, "")


def _fail(path: str, value: object, constraint: str) -> ApiError:
    shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return invalid(
        f"1 validation error detected: Value {shown} at '{path}' failed to satisfy "
        f"constraint: {constraint}",
    )


def _check_range(shape: Shape, value: float | int, path: str, what: str) -> None:
    low, high = shape.metadata.get("min"), shape.metadata.get("max")
    if low is not None and value < low:
        raise _fail(path, value, f"Member must have {what} greater than or equal to {low}")
    if high is not None and value > high:
        raise _fail(path, value, f"Member must have {what} less than or equal to {high}")


def _parse(shape: Shape, value: object, path: str) -> Any:
    kind = shape.type_name
    parser = _PARSERS.get(kind)
    if parser is None:
        raise ApiError(INTERNAL_FAILURE, f"kvslite cannot parse shape type {kind}")
    return parser(shape, value, path)


def _parse_structure(shape, value, path):
    if not isinstance(value, dict):
        raise _fail(path or "body", value, "Member must be an object")
    for name in shape.required_members:
        if value.get(name) is None:
            raise _fail(_child(path, name), None, "Member must not be null")
    return {
        name: _parse(member, value[name], _child(path, name))
        for name, member in shape.members.items()
        if value.get(name) is not None
    }


def _child(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _parse_list(shape, value, path):
    if not isinstance(value, list):
        raise _fail(path, value, "Member must be a list")
    _check_range(shape, len(value), path, "length")
    return [_parse(shape.member, item, f"{path}[{i}]") for i, item in enumerate(value)]


def _parse_map(shape, value, path):
    if not isinstance(value, dict):
        raise _fail(path, value, "Member must be a map")
    _check_range(shape, len(value), path, "length")
    return {
        _parse(shape.key, key, f"{path}.key"): _parse(shape.value, item, f"{path}.{key}")
        for key, item in value.items()
    }


def _parse_string(shape, value, path):
    if not isinstance(value, str):
        raise _fail(path, value, "Member must be a string")
    if not _is_unicode(value):
        raise _fail(path, "<string>", "Member must be valid Unicode (no lone surrogates)")
    _check_range(shape, len(value), path, "length")
    if shape.enum and value not in shape.enum:
        raise _fail(path, value, f"Member must satisfy enum value set: [{', '.join(shape.enum)}]")
    pattern = shape.metadata.get("pattern")
    if pattern and not _compiled(pattern).fullmatch(value):
        raise _fail(path, value, f"Member must satisfy regular expression pattern: {pattern}")
    return value


def _parse_integer(shape, value, path):
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise _fail(path, value, "Member must be an integer")
    low, high = _INTEGER_RANGES[shape.type_name]  # the wire types' sizes, as AWS's
    if not low <= value <= high:
        raise _fail(path, "<number>", f"Member must fit a {shape.type_name}: {low} to {high}")
    _check_range(shape, value, path, "value")
    return value


_INTEGER_RANGES = {"integer": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}
# Timestamps must be dates a calendar has: from 1970 up to the end of year 9999.
_LATEST_TIMESTAMP = 253_402_300_799


def _is_unicode(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _parse_float(shape, value, path):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(path, value, "Member must be a number")
    _check_range(shape, value, path, "value")
    return float(value)


def _parse_boolean(shape, value, path):
    if not isinstance(value, bool):
        raise _fail(path, value, "Member must be a boolean")
    return value


def _parse_timestamp(shape, value, path):
    """Epoch seconds (what boto3 sends) or an ISO 8601 string."""
    if isinstance(value, bool):
        raise _fail(path, value, "Member must be a timestamp")
    if isinstance(value, (int, float)) and math.isfinite(value):
        if not 0 <= value <= _LATEST_TIMESTAMP:
            raise _fail(path, value, "Member must be a timestamp from 1970 to 9999")
        return float(value)
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=dt.timezone.utc)
            return _parse_timestamp(shape, parsed.timestamp(), path)
    raise _fail(path, value, "Member must be a timestamp (epoch seconds or ISO 8601)")


def _parse_blob(shape, value, path):
    if not isinstance(value, str):
        raise _fail(path, value, "Member must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        raise _fail(path, value, "Member must be valid base64") from None


_PARSERS = {
    "structure": _parse_structure,
    "list": _parse_list,
    "map": _parse_map,
    "string": _parse_string,
    "integer": _parse_integer,
    "long": _parse_integer,
    "float": _parse_float,
    "double": _parse_float,
    "boolean": _parse_boolean,
    "timestamp": _parse_timestamp,
    "blob": _parse_blob,
}


def serialize_output(operation: OperationModel, result: Mapping[str, Any]) -> dict:
    """Render an operation's result as its JSON body, following the output shape.

    Timestamps given as float epoch seconds stay numbers on the wire; members the
    model does not know are dropped so the response matches the contract exactly, and
    so are members left None, but for the few AWS writes as null.
    """
    shape = operation.output_shape
    if shape is None:
        return {}
    return _serialize(shape, result)


def _written(shape: Shape, name: str, value: Mapping[str, Any]) -> bool:
    """Whether a structure's member goes on the wire: when set, or as null where AWS
    writes null (ops.wire.NULL_WHEN_NONE)."""
    if value.get(name) is not None:
        return True
    return name in value and (shape.name, name) in NULL_WHEN_NONE


def _serialize(shape: Shape, value: Any) -> Any:
    kind = shape.type_name
    if kind == "structure":
        return {
            name: _serialize(member, value[name])
            for name, member in shape.members.items()
            if _written(shape, name, value) and "location" not in member.serialization
        }
    if kind == "list":
        return [_serialize(shape.member, item) for item in value]
    if kind == "map":
        return {key: _serialize(shape.value, item) for key, item in value.items()}
    if kind == "timestamp":
        if isinstance(value, dt.datetime):
            return value.timestamp()
        return float(value)
    if kind == "blob":
        return base64.b64encode(value).decode("ascii")
    return value
