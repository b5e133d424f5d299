"""The IoT credential provider: a device's X.509 certificate exchanged for temporary
credentials, as AWS IoT's `https://<prefix>.credentials.iot.<region>.amazonaws.com` does it.

`GET /role-aliases/<alias>/credentials` with `x-amzn-iot-thingname: <thing>` over mutual
TLS answers `{"credentials": {"accessKeyId", "secretAccessKey", "sessionToken",
"expiration"}}`: credentials of a session whose policy is the role alias's, with the policy
variable `credentials-iot:ThingName` set to the thing.

It has a listener of its own (`--iot-port`), because it requires a client certificate and
kvslite's main port may not: the same guarded HTTPS as the main port (edge/tls.py), with
`ssl.CERT_REQUIRED` against the device CAs, so an unknown, expired or revoked certificate
ends at the handshake. AWS looks a thing up and checks that the certificate is attached to
it; kvslite has no registry of things, and takes the certificate's subject CN as the
thing it is attached to.
"""

from __future__ import annotations

import json
import re
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID
from starlette.requests import Request
from starlette.responses import Response

from kvslite.server.edge.connections import GuardedH11Protocol
from kvslite.server.edge.tls import server_context
from kvslite.server.iam.policy import PolicyError, parse
from kvslite.server.iam.principal import Principal
from kvslite.server.iam.tokens import SessionCredentials

THING_HEADER = "x-amzn-iot-thingname"
THING_VARIABLE = "credentials-iot:ThingName"
CLIENT_CN = "kvslite.iot.client_cn"  # the scope key: the client certificate's subject CN
_PATH = re.compile(r"/role-aliases/(?P<alias>[^/]+)/credentials")
ALIAS_NAME = re.compile(r"[\w=,@-]{1,128}")  # AWS's pattern for a role alias


@dataclass(frozen=True)
class RoleAlias:
    name: str
    policy: str  # the policy document, JSON text


def parse_role_alias(value: str) -> RoleAlias:
    """`camera=policy.json` -> the alias with its policy read; ValueError names a fault."""
    name, sep, path = value.partition("=")
    if not sep or not ALIAS_NAME.fullmatch(name) or not path:
        raise ValueError(f"--iot-role-alias must be NAME=POLICY_FILE (NAME of letters, "
                         f"digits and _=,@-), got {value!r}")
    try:
        policy = Path(path).read_text()
    except OSError as e:
        raise ValueError(f"--iot-role-alias {name}: cannot read {path}: {e}") from None
    try:
        parse(policy)  # what every device's request will be checked against
    except PolicyError as e:
        raise ValueError(f"--iot-role-alias {name}: {path} is not a valid policy: {e}"
                         ) from None
    return RoleAlias(name, policy)


def client_context(cert: Path, key: Path, device_cas: list[Path],
                   crl: Path | None = None) -> ssl.SSLContext:
    """The listener's TLS: this server certificate, and a client certificate required,
    issued by one of `device_cas`, unexpired and, with a `crl`, not revoked."""
    context = server_context(cert, key)
    context.verify_mode = ssl.CERT_REQUIRED
    for ca in device_cas:
        context.load_verify_locations(cafile=str(ca))
    if crl is not None:
        context.load_verify_locations(cafile=str(crl))
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return context


class ClientCertificateProtocol(GuardedH11Protocol):
    """The guarded h11 protocol that puts the verified client certificate's subject CN in
    each request's scope (uvicorn itself passes no certificate to the app)."""

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        tls = transport.get_extra_info("ssl_object")
        der = tls.getpeercert(binary_form=True) if tls is not None else None
        if der:
            self.app = _with_scope_value(self.app, CLIENT_CN, common_name(der))


def iot_protocol(*, max_connections: int, header_timeout_s: float) -> type:
    return type("IotProtocol", (ClientCertificateProtocol,),
                {"max_connections": max_connections, "header_timeout_s": header_timeout_s})


def _with_scope_value(app, key: str, value):
    async def with_value(scope, receive, send):
        await app({**scope, key: value}, receive, send)
    return with_value


def common_name(der: bytes) -> str | None:
    names = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(
        NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


class CredentialProvider:
    """The ASGI app of the `--iot-port` listener."""

    def __init__(self, sessions: SessionCredentials, aliases: list[RoleAlias], *,
                 account_id: str, ttl_s: int):
        self.sessions = sessions
        self.aliases = {alias.name: alias for alias in aliases}
        self.account_id = account_id
        self.ttl_s = ttl_s

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        await self.respond(Request(scope, receive))(scope, receive, send)

    def respond(self, request: Request) -> Response:
        match = _PATH.fullmatch(request.url.path)
        if match is None:
            return _error(404, "ResourceNotFoundException", "Not Found")
        if request.method != "GET":
            return _error(405, "MethodNotAllowedException", "Method Not Allowed")
        thing = request.headers.get(THING_HEADER)
        if not thing:
            return _error(400, "InvalidRequestException",
                          f"Missing header {THING_HEADER}")
        # the certificate must be attached to the thing: here, name it as its subject CN
        if request.scope.get(CLIENT_CN) != thing:
            return _error(403, "ForbiddenException", "Access Denied")
        alias = self.aliases.get(match["alias"])
        if alias is None:
            return _error(404, "ResourceNotFoundException", "Role alias does not exist")
        credentials = self.sessions.issue(self._principal(alias, thing), self.ttl_s)
        return _json(200, {"credentials": {
            "accessKeyId": credentials.access_key_id,
            "secretAccessKey": credentials.secret_access_key,
            "sessionToken": credentials.session_token,
            "expiration": credentials.expiration}})

    def _principal(self, alias: RoleAlias, thing: str) -> Principal:
        return Principal(arn=f"arn:aws:sts::{self.account_id}:assumed-role/{alias.name}/{thing}",
                         name=thing, kind="session", policies=(alias.policy,),
                         variables={THING_VARIABLE: thing})


def _json(status: int, body: dict, headers: dict | None = None) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status_code=status,
                    headers=headers, media_type="application/json")


def _error(status: int, code: str, message: str) -> Response:
    return _json(status, {"message": message}, {"x-amzn-ErrorType": code})
