"""IAM policy documents: parsing, validation and evaluation (pure, no I/O).

The subset of AWS's policy language kvslite speaks:

- `Version` "2012-10-17" (policy variables work) or "2008-10-17" / absent (they are plain text);
- `Statement`: one object or a list; each has `Effect` Allow|Deny, exactly one of
  `Action`/`NotAction` and exactly one of `Resource`/`NotResource` (a string or a list of
  strings), an optional `Sid` and `Condition`. An identity policy names no `Principal`.
- Wildcards `*` (any run of characters) and `?` (one character); actions match without regard
  to case, resources with it (as on AWS).
- Policy variables in resources: `${aws:username}`, `${credentials-iot:ThingName}`, any key of
  the caller's variables, with an optional default (`${aws:username, 'nobody'}`); `${*}`,
  `${?}` and `${$}` stand for a literal `*`, `?` and `$`. A value substituted is literal text,
  never a wildcard. A variable with no value and no default makes that resource match nothing.
- Conditions: StringEquals, StringNotEquals, StringLike, StringNotLike (and their
  `IgnoreCase`/`IfExists` forms where AWS has them) and Bool, on the request's context (the
  caller's variables and the global keys edge/authorization.py supplies). Any
  other operator cannot be evaluated here, and such a statement fails closed: an Allow does
  not apply, a Deny does.

Evaluation is AWS's: an explicit Deny wins, then any Allow, else the default deny.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache

ALLOW, DENY, IMPLICIT_DENY = "Allow", "Deny", "ImplicitDeny"
VERSIONS = ("2012-10-17", "2008-10-17")
WITH_VARIABLES = "2012-10-17"
_STATEMENT_KEYS = {"Sid", "Effect", "Action", "NotAction", "Resource", "NotResource",
                   "Condition"}
_ACTION = re.compile(r"\*|[a-zA-Z0-9-]+:[a-zA-Z0-9*?]+")
# a resource pattern's pieces: a policy variable, a wildcard, or literal text
_PIECE = re.compile(r"\$\{([^}]*)\}|([*?])|([^$*?]+|\$)")
_VARIABLE = re.compile(r"\s*([^,\s]+)\s*(?:,\s*'([^']*)'\s*)?")
_ESCAPES = {"*": "*", "?": "?", "$": "$"}


class PolicyError(ValueError):
    """A document that is not a valid identity policy (AWS: MalformedPolicyDocument)."""


@dataclass(frozen=True)
class Statement:
    effect: str
    actions: tuple[str, ...]
    not_action: bool  # the actions are NotAction: the statement covers every other action
    resources: tuple[str, ...]
    not_resource: bool
    conditions: tuple[tuple[str, str, tuple[str, ...]], ...]  # (operator, key, values)
    variables: bool  # ${...} in resources is a variable (Version 2012-10-17)
    # compiled once: the actions as one regex; the resources without variables as another
    action_regex: re.Pattern = field(init=False, repr=False, compare=False)
    fixed_resources: re.Pattern | None = field(init=False, repr=False, compare=False)
    variable_resources: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        def built(name: str, value) -> None:
            object.__setattr__(self, name, value)  # a frozen dataclass's derived fields

        built("action_regex", _any_of(self.actions, ignore_case=True))
        varying = tuple(r for r in self.resources if self.variables and "${" in r)
        fixed = tuple(r for r in self.resources if r not in varying)
        built("fixed_resources", _any_of(fixed, ignore_case=False) if fixed else None)
        built("variable_resources", varying)

    def applies(self, action: str, resource: str, context: Mapping[str, str]) -> bool:
        if (self.action_regex.fullmatch(action) is not None) == self.not_action:
            return False
        if self._resource_matches(resource, context) == self.not_resource:
            return False
        return not self.conditions or self._conditions_hold(context)

    def _resource_matches(self, resource: str, context: Mapping[str, str]) -> bool:
        if self.fixed_resources is not None and self.fixed_resources.fullmatch(resource):
            return True
        for pattern in self.variable_resources:
            compiled = _resource_regex(pattern, tuple(sorted(context.items())))
            if compiled is not None and compiled.fullmatch(resource):
                return True
        return False

    def _conditions_hold(self, context: Mapping[str, str]) -> bool:
        for operator, key, values in self.conditions:
            held = condition_holds(operator, context.get(key), values)
            if held is None:  # an operator kvslite cannot evaluate: fail closed
                return self.effect == DENY
            if not held:
                return False
        return True


@dataclass(frozen=True)
class Policy:
    statements: tuple[Statement, ...]


def decide(policies: Iterable[Policy], action: str, resource: str,
           context: Mapping[str, str]) -> str:
    """ALLOW, DENY (an explicit Deny applies) or IMPLICIT_DENY (nothing allows it)."""
    allowed = False
    for policy in policies:
        for statement in policy.statements:
            if statement.applies(action, resource, context):
                if statement.effect == DENY:
                    return DENY
                allowed = True
    return ALLOW if allowed else IMPLICIT_DENY


def is_allowed(documents: Iterable[str], action: str, resource: str,
               context: Mapping[str, str]) -> bool:
    """Whether policy documents (JSON text) allow `action` on `resource`."""
    return decide([parse(text) for text in documents], action, resource, context) == ALLOW


@lru_cache(maxsize=1024)
def parse(text: str) -> Policy:
    """A policy document (JSON text), validated; PolicyError says what is wrong."""
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise PolicyError(f"The policy is not valid JSON: {str(e)[:200]}") from None
    return from_document(document)


def from_document(document: object) -> Policy:
    if not isinstance(document, dict):
        raise PolicyError("The policy must be a JSON object")
    unknown = set(document) - {"Version", "Id", "Statement"}
    if unknown:
        raise PolicyError(f"Unknown policy element(s): {', '.join(sorted(unknown))}")
    version = document.get("Version", "2008-10-17")
    if version not in VERSIONS:
        raise PolicyError(f"Version must be one of {', '.join(VERSIONS)}")
    statements = document.get("Statement")
    if isinstance(statements, dict):
        statements = [statements]
    if not isinstance(statements, list) or not statements:
        raise PolicyError("The policy needs a Statement (an object or a non-empty list)")
    return Policy(tuple(_statement(s, version == WITH_VARIABLES) for s in statements))


def _statement(raw: object, variables: bool) -> Statement:
    if not isinstance(raw, dict):
        raise PolicyError("Each Statement must be a JSON object")
    if "Principal" in raw or "NotPrincipal" in raw:
        raise PolicyError("An identity policy may not specify a Principal")
    unknown = set(raw) - _STATEMENT_KEYS
    if unknown:
        raise PolicyError(f"Unknown statement element(s): {', '.join(sorted(unknown))}")
    effect = raw.get("Effect")
    if effect not in (ALLOW, DENY):
        raise PolicyError("Effect must be Allow or Deny")
    actions, not_action = _one_of(raw, "Action", "NotAction")
    for action in actions:
        if not _ACTION.fullmatch(action):
            raise PolicyError(f"Action {action!r} is not of the form service:action")
    resources, not_resource = _one_of(raw, "Resource", "NotResource")
    return Statement(effect=effect, actions=actions, not_action=not_action,
                     resources=resources, not_resource=not_resource,
                     conditions=_conditions(raw.get("Condition", {})), variables=variables)


def _one_of(raw: dict, name: str, negated: str) -> tuple[tuple[str, ...], bool]:
    if (name in raw) == (negated in raw):
        raise PolicyError(f"A statement needs exactly one of {name} and {negated}")
    key = name if name in raw else negated
    return _strings(raw[key], key), key == negated


def _strings(value: object, what: str) -> tuple[str, ...]:
    values = [value] if isinstance(value, str) else value
    if (not isinstance(values, list) or not values
            or not all(isinstance(v, str) and v for v in values)):
        raise PolicyError(f"{what} must be a non-empty string or list of strings")
    return tuple(values)


def _conditions(raw: object) -> tuple[tuple[str, str, tuple[str, ...]], ...]:
    if not isinstance(raw, dict):
        raise PolicyError("Condition must be a JSON object")
    conditions = []
    for operator, tests in raw.items():
        if not isinstance(tests, dict) or not tests:
            raise PolicyError(f"Condition {operator} must map keys to values")
        for key, values in tests.items():
            if isinstance(values, bool):  # Bool's true/false may come unquoted
                values = str(values).lower()
            conditions.append((operator, key, _strings(values, f"Condition {operator}")))
    return tuple(conditions)


def condition_holds(operator: str, value: str | None, wanted: tuple[str, ...]) -> bool | None:
    """Whether a condition holds for the context's value (None: the key is absent); None
    where the operator is one kvslite does not evaluate."""
    base = operator.removesuffix("IfExists")
    if value is None:  # an absent key: IfExists forms and negated operators hold (as AWS)
        return (base != operator or "Not" in base) if base in _OPERATORS else None
    test = _OPERATORS.get(base)
    return None if test is None else test(value, wanted)


def _like(value: str, patterns: tuple[str, ...]) -> bool:
    return _any_of(patterns, ignore_case=False).fullmatch(value) is not None


_OPERATORS = {
    "StringEquals": lambda v, w: v in w,
    "StringNotEquals": lambda v, w: v not in w,
    "StringEqualsIgnoreCase": lambda v, w: v.lower() in {x.lower() for x in w},
    "StringNotEqualsIgnoreCase": lambda v, w: v.lower() not in {x.lower() for x in w},
    "StringLike": _like,
    "StringNotLike": lambda v, w: not _like(v, w),
    "Bool": lambda v, w: v.lower() in {x.lower() for x in w},
}


def _glob(pattern: str) -> str:
    """A pattern's `*` and `?` as regex; everything else literal."""
    return "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)


@lru_cache(maxsize=4096)
def _any_of(patterns: tuple[str, ...], *, ignore_case: bool) -> re.Pattern:
    return re.compile("|".join(f"(?:{_glob(p)})" for p in patterns),
                      re.DOTALL | (re.IGNORECASE if ignore_case else 0))


@lru_cache(maxsize=4096)
def _resource_regex(pattern: str, context: tuple[tuple[str, str], ...]) -> re.Pattern | None:
    """The pattern as a regex, variables substituted as literal text; None where a
    variable has no value (the pattern then matches nothing)."""
    values = dict(context)
    regex = []
    for variable, wildcard, text in _PIECE.findall(pattern):
        if wildcard:
            regex.append(".*" if wildcard == "*" else ".")
        elif text:
            regex.append(re.escape(text))
        else:
            value = _substitute(variable, values)
            if value is None:
                return None
            regex.append(re.escape(value))
    return re.compile("".join(regex), re.DOTALL)


def _substitute(variable: str, values: Mapping[str, str]) -> str | None:
    if variable in _ESCAPES:
        return _ESCAPES[variable]
    parsed = _VARIABLE.fullmatch(variable)
    if parsed is None:
        return None
    key, default = parsed.groups()
    return values.get(key, default)
