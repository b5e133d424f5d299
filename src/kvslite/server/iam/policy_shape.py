"""Is a user's policy document one kvslite can store? The checks AWS makes when a policy is
stored (PutUserPolicy), before anything evaluates it: small enough, and a policy that
`policy.parse` reads (so a stored policy can always be evaluated).

AWS limits a user's inline policies to 2048 characters, whitespace not counted.
"""

from __future__ import annotations

from kvslite.server.api_errors import LIMIT_EXCEEDED, MALFORMED_POLICY_DOCUMENT, ApiError
from kvslite.server.iam.policy import PolicyError, parse

MAX_USER_POLICY_CHARS = 2048


def policy_size(document: str) -> int:
    return sum(not c.isspace() for c in document)


def check_user_policy(user_name: str, document: str) -> None:
    """Raise LimitExceeded (409) or MalformedPolicyDocument (400), as AWS does."""
    if policy_size(document) > MAX_USER_POLICY_CHARS:
        raise ApiError(LIMIT_EXCEEDED, f"Maximum policy size of {MAX_USER_POLICY_CHARS} "
                       f"bytes exceeded for user {user_name}", status=409)
    try:
        parse(document)
    except PolicyError as e:
        raise ApiError(MALFORMED_POLICY_DOCUMENT, str(e), status=400) from None
