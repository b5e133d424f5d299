"""The access log: one line per request, with the request id the client saw.

`kvslite serve --access-log` writes, to the `kvslite.access` logger,

    <request id> <method> <path> op=<operation> stream=<stream> status=<code> bytes=<n> ms=<t> who=<arn>

where bytes counts the response body and ms runs from the request to its last byte (for a
PutMedia or GetMedia, the whole connection), and who=<arn> is the caller's identity (the
principal whose key signed the request; `-` when none did), followed by ` denied=<IAM action>`
when the caller's policies refused the request (edge/authorization.py).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

log = logging.getLogger("kvslite.access")

OPERATION = "kvslite.operation"  # scope keys the routes fill in for the log
STREAM = "kvslite.stream"
PRINCIPAL = "kvslite.principal"  # who signed the request (kvslite.server.iam.Principal)
DENIED = "kvslite.denied"  # the IAM action a policy refused (edge/authorization.py)


@dataclass
class Exchange:
    request_id: str
    scope: dict
    started: float = field(default_factory=time.monotonic)
    status: int | None = None
    sent: int = 0

    def observe(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif message["type"] == "http.response.body":
            self.sent += len(message.get("body", b""))

    def line(self) -> str:
        scope = self.scope
        return (f"{self.request_id} {scope.get('method')} {scope.get('path')} "
                f"op={scope.get(OPERATION) or '-'} stream={scope.get(STREAM) or '-'} "
                f"status={self.status or '-'} bytes={self.sent} "
                f"ms={(time.monotonic() - self.started) * 1000:.1f} "
                f"who={getattr(scope.get(PRINCIPAL), 'arn', None) or '-'}"
                + (f" denied={scope[DENIED]}" if scope.get(DENIED) else ""))
