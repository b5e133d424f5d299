"""Who signed a request: the principal the edge puts in the ASGI scope."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Principal:
    """An authenticated caller.

    arn: `arn:aws:iam::<account>:user/<name>`, the administrator's `arn:aws:iam::<account>:root`,
    or a session's `arn:aws:sts::<account>:assumed-role/<alias>/<thing>`.
    kind: "admin" (allowed everything), "user" or "session".
    policies: the policy documents (JSON text) that grant this caller its actions; empty for
    the administrator.
    variables: the values of policy variables (`aws:username`, `credentials-iot:ThingName`, ...).
    """

    arn: str
    name: str
    kind: str
    policies: tuple[str, ...] = ()
    variables: dict[str, str] = field(default_factory=dict)
    access_key_id: str = ""


def user_arn(account_id: str, path: str, name: str) -> str:
    """An IAM user's ARN: its path ("/", "/cameras/") between `user` and its name."""
    return f"arn:aws:iam::{account_id}:user{path}{name}"


def root_arn(account_id: str) -> str:
    """The account's own ARN: the administrator's."""
    return f"arn:aws:iam::{account_id}:root"
