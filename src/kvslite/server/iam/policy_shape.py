"""Is a policy document well formed? The checks AWS makes when a policy is stored
(PutUserPolicy), before anything evaluates it: JSON, a Version, Statements with an Effect,
one of Action/NotAction and one of Resource/NotResource, each a string or list of strings.

AWS limits a user's inline policies to 2048 characters, whitespace not counted.
"""

from __future__ import annotations

import json

from kvslite.server.api_errors import ApiError

MALFORMED_POLICY_DOCUMENT = "MalformedPolicyDocument"
LIMIT_EXCEEDED = "LimitExceeded"
MAX_USER_POLICY_CHARS = 2048
VERSIONS = ("2012-10-17", "2008-10-17")
_STATEMENT_KEYS = {"Sid", "Effect", "Action", "NotAction", "Resource", "NotResource",
                   "Condition", "Principal", "NotPrincipal"}


def policy_size(document: str) -> int:
    return sum(not c.isspace() for c in document)


def check_user_policy(user_name: str, document: str) -> None:
    """Raise LimitExceeded (409) or MalformedPolicyDocument (400), as AWS does."""
    if policy_size(document) > MAX_USER_POLICY_CHARS:
        raise ApiError(LIMIT_EXCEEDED, f"Maximum policy size of {MAX_USER_POLICY_CHARS} "
                       f"bytes exceeded for user {user_name}", status=409)
    try:
        policy = json.loads(document)
    except (ValueError, RecursionError):
        raise _malformed("Syntax errors in policy.") from None
    if not isinstance(policy, dict):
        raise _malformed("Syntax errors in policy.")
    if policy.get("Version") not in VERSIONS:
        raise _malformed("The policy must contain a valid version string")
    statements = policy.get("Statement")
    if isinstance(statements, dict):
        statements = [statements]
    if not isinstance(statements, list) or not statements:
        raise _malformed("Policy document must contain a Statement")
    for statement in statements:
        _check_statement(statement)


def _check_statement(statement: object) -> None:
    if not isinstance(statement, dict):
        raise _malformed("Syntax errors in policy.")
    unknown = set(statement) - _STATEMENT_KEYS
    if unknown:
        raise _malformed(f"Policy statement has unknown keys: {', '.join(sorted(unknown))}")
    if statement.get("Effect") not in ("Allow", "Deny"):
        raise _malformed("Policy statement must contain an Effect of Allow or Deny")
    if "Principal" in statement or "NotPrincipal" in statement:
        raise _malformed("Policy document should not specify a principal.")
    for plain, negated, what in (("Action", "NotAction", "actions"),
                                 ("Resource", "NotResource", "resources")):
        if (plain in statement) == (negated in statement):
            raise _malformed(f"Policy statement must contain {what}: one of {plain} "
                             f"or {negated}")
        values = statement.get(plain, statement.get(negated))
        if isinstance(values, str):
            values = [values]
        if not isinstance(values, list) or not values or \
                not all(isinstance(v, str) and v for v in values):
            raise _malformed(f"{plain}/{negated} must be a string or a list of strings")


def _malformed(message: str) -> ApiError:
    return ApiError(MALFORMED_POLICY_DOCUMENT, message, status=400)
