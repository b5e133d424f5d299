"""Authorization: is the caller who signed a request allowed its action on its resource?

Runs on every request once it is authenticated (the principal is in the scope) and parsed:
KVS operations (edge/app.py), PutMedia, and the signaling WebSocket before its upgrade
(edge/websocket.py), and the IAM API (`check_iam`). The administrator is allowed everything and is not evaluated; anyone
else needs a policy that allows the action (kvslite.server.iam.actions) on the resource
(kvslite.server.iam.policy). A refusal is AWS's AccessDeniedException naming both, e.g.

    User: arn:aws:iam::123456789012:user/cam is not authorized to perform:
    kinesisvideo:DeleteStream on resource: arn:aws:kinesisvideo:...:stream/A/1700000000000

with the status AccessDeniedException has in the operation's model (401 in the kinesisvideo
model, 403 in webrtc-storage's), and 403 where the model has none (the archived-media,
media and signaling models, PutMedia, the WebSocket). It is counted in
`kvslite_access_denied_total{action}` and named in the access log line.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from typing import Any
from functools import lru_cache

from kvslite.server import metrics
from kvslite.server.api_errors import ACCESS_DENIED, IAM_ACCESS_DENIED, ApiError
from kvslite.server.edge import model
from kvslite.server.edge.access_log import DENIED, PRINCIPAL
from kvslite.server.iam import actions
from kvslite.server.iam.actions import ANY, CHANNEL, STREAM, Target
from kvslite.server.iam.policy import ALLOW, decide, parse
from kvslite.server.iam.principal import Principal

ADMIN = "admin"
DEFAULT_DENIAL_STATUS = 403
# a name -> what bears it (a stream's or channel's ARN, a user's path), None if nothing
Lookup = Callable[[str], "str | None"]


class Authorizer:
    def __init__(self, *, region: str, account_id: str, stream_arn: Lookup,
                 channel_arn: Lookup, user_path: Lookup = lambda name: None):
        self.region = region
        self.account_id = account_id
        self.lookups = {STREAM: stream_arn, CHANNEL: channel_arn}
        self.user_path = user_path  # an IAM user's name -> its path, None if there is none

    @staticmethod
    def evaluates(scope: MutableMapping[str, Any]) -> bool:
        """Whether the request's caller is one whose policies are evaluated (cheap: lets
        the administrator's requests skip the worker thread a check may need)."""
        principal = scope.get(PRINCIPAL)
        return principal is not None and principal.kind != ADMIN

    def check(self, scope: MutableMapping[str, Any], operation: str,
              params: Mapping[str, object]) -> None:
        """Raise AccessDeniedException unless the scope's principal may do `operation`
        with these parameters. No principal (anonymous mode) or the administrator: allowed.
        Blocking (a name may be looked up): call it from a worker thread."""
        if not self.evaluates(scope):
            return
        wanted = actions.target(operation, params)
        self.require(scope, wanted.action, self.resource(wanted), denial_status(operation))

    def check_iam(self, scope: MutableMapping[str, Any], operation: str,
                  params: Mapping[str, object]) -> None:
        """The same for the IAM API (`iam:<operation>`); its refusal is IAM's own,
        AccessDenied with 403. Blocking (the user's path is looked up): call it from a
        worker thread."""
        if not self.evaluates(scope) or operation in actions.NO_PERMISSION_NEEDED:
            return
        resource = actions.iam_resource(operation, params, account_id=self.account_id,
                                        caller=scope[PRINCIPAL].name,
                                        user_path=self.user_path)
        self.require(scope, f"iam:{operation}", resource, 403, code=IAM_ACCESS_DENIED)

    def require(self, scope: MutableMapping[str, Any], action: str, resource: str, status: int, *,
                code: str = ACCESS_DENIED) -> None:
        principal: Principal = scope[PRINCIPAL]
        policies = [parse(text) for text in principal.policies]
        if decide(policies, action, resource, request_context(scope, principal)) != ALLOW:
            metrics.ACCESS_DENIED.labels(action).inc()
            scope[DENIED] = action
            raise ApiError(code, f"User: {principal.arn} is not authorized to perform: "
                                 f"{action} on resource: {resource}", status=status)

    def resource(self, wanted: Target) -> str:
        if wanted.kind == ANY:
            return "*"
        if wanted.arn is not None:
            return wanted.arn
        if wanted.name is None:  # neither name nor ARN: the handler will say what is missing
            return "*"
        found = self.lookups[wanted.kind](wanted.name)
        return found or actions.unresolved_arn(wanted.kind, wanted.name, region=self.region,
                                               account_id=self.account_id)


def arn_by_name(resolve: Callable[..., object]) -> Lookup:
    """A Lookup from a `resolve(name=...)` that raises ApiError for a name it does not know
    (ControlPlane.resolve, Channels.resolve)."""
    def lookup(name: str) -> str | None:
        try:
            return resolve(name=name).arn  # type: ignore[attr-defined]
        except ApiError:
            return None

    return lookup


@lru_cache(maxsize=None)
def denial_status(operation: str) -> int:
    """The HTTP status of AccessDeniedException in the model the operation belongs to."""
    for route in model.routes().values():
        service = route.operation.service_model
        if route.name == operation and ACCESS_DENIED in service.shape_names:
            error = service.shape_for(ACCESS_DENIED).metadata.get("error", {})
            return error.get("httpStatusCode", DEFAULT_DENIAL_STATUS)
    return DEFAULT_DENIAL_STATUS


def request_context(scope: Mapping[str, Any], principal: Principal) -> dict[str, str]:
    """The condition keys of a request: the caller's variables, and the global keys AWS
    supplies on every request that kvslite knows as well. A key left out is absent, and a
    condition on an absent key does not hold: a Deny of plain HTTP (Bool
    aws:SecureTransport false) would never apply."""
    context = dict(principal.variables)
    # "https"/"wss" over TLS, also where a trusted balancer says so (X-Forwarded-Proto)
    secure = scope.get("scheme") in ("https", "wss")
    context["aws:SecureTransport"] = "true" if secure else "false"
    client = scope.get("client")
    if client:
        context["aws:SourceIp"] = client[0]
    return context
