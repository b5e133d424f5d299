"""Verify AWS Signature Version 4 on incoming requests with botocore's own signer.

The signature is recomputed over exactly the headers the client listed in
`SignedHeaders`, with their values as received: boto3 signs `host` with the
port, the KVS producer SDK without it and also signs `user-agent`, which
botocore's signer would otherwise leave out.

The producer SDK's PutMedia also signs `connection` and `transfer-encoding`. Those are
hop-by-hop: a load balancer in HTTP mode consumes `Connection` (HAProxy drops its
`keep-alive`/`close` tokens; nginx sends `close` of its own) and may re-frame the body.
For those two alone, the values a client can have sent are tried as well as what
arrived; every other signed header must arrive, exactly as signed.
"""

from __future__ import annotations

import datetime as dt
import hmac
import itertools
import re
from collections.abc import Callable
from hashlib import sha256
from typing import Any
from urllib.parse import quote

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest, HTTPHeaders
from botocore.credentials import Credentials

from kvslite.server.api_errors import (
    INCOMPLETE_SIGNATURE,
    INVALID_SIGNATURE,
    MISSING_AUTHENTICATION_TOKEN,
    UNRECOGNIZED_CLIENT,
    ApiError,
)

SIGNING_NAME = "kinesisvideo"
EMPTY_SHA256 = sha256(b"").hexdigest()

_AUTH_RE = re.compile(
    r"AWS4-HMAC-SHA256\s+Credential=(?P<credential>[^,\s]+),\s*"
    r"SignedHeaders=(?P<signed>[^,\s]+),\s*Signature=(?P<signature>[0-9a-f]{64})\s*$"
)


# Signed hop-by-hop headers a proxy may drop or rewrite -> the values a client sends:
# `Connection` names the persistence it wants, and a request body of unknown length can
# only be chunked. Any other hop-by-hop header (keep-alive: timeout=...) must arrive.
HOP_BY_HOP_VALUES = {
    "connection": ("keep-alive", "close"),
    "transfer-encoding": ("chunked",),
}


class _ExactHeadersSigner(SigV4Auth):
    """botocore's SigV4 with the header list taken as given by the client."""

    def headers_to_sign(self, request):
        headers = HTTPHeaders()
        for name, value in request.headers.items():
            headers[name.lower()] = value
        return headers


def _forbidden(code: str, message: str) -> ApiError:
    return ApiError(code, message, status=403)


def _unrecognized() -> ApiError:
    return _forbidden(UNRECOGNIZED_CLIENT,
                      "The security token included in the request is invalid.")


# Who holds an access key: (access key id, session token or None) -> (the secret, the
# principal), or None for a key that may not sign (iam/credentials.py's Credentials.lookup).
Lookup = Callable[[str, "str | None"], "tuple[str, Any] | None"]


def signing_key_id(authorization: str) -> str | None:
    """The access key id an Authorization header names (None if it is not SigV4's)."""
    match = _AUTH_RE.match(authorization.strip())
    return match["credential"].split("/")[0] if match else None


def single_key(access_key_id: str, secret_access_key: str) -> Lookup:
    """A lookup that knows one key (whatever session token comes with it)."""
    def lookup(key_id: str, token: str | None):
        return (secret_access_key, None) if key_id == access_key_id else None
    return lookup


def verify(
    *,
    access_key_id: str = "",
    secret_access_key: str = "",
    lookup: Lookup | None = None,
    method: str,
    path: str,
    query_string: str,
    headers: dict[str, list[str]],
    body: bytes,
    max_skew_s: int,
    streaming: bool = False,
    service: str = SIGNING_NAME,
    now: dt.datetime | None = None,
) -> Any:
    """Raise a 403 ApiError unless the request carries a valid signature; return the
    principal `lookup` found for its key (None with a single key).

    `headers` maps lower-case names to every value received; `body` is what the
    payload hash covers. A `streaming` body (PutMedia) is still arriving: the producer
    SDK signs the empty payload for it, as AWS expects. `service` is the signing name
    the credential scope must carry.
    """
    lookup = lookup or single_key(access_key_id, secret_access_key)
    authorization = (headers.get("authorization") or [""])[0]
    if not authorization:
        raise _forbidden(MISSING_AUTHENTICATION_TOKEN,
                         "Missing Authentication Token")
    match = _AUTH_RE.match(authorization.strip())
    if not match:
        raise _forbidden(INCOMPLETE_SIGNATURE,
                         "Authorization header is not a valid AWS4-HMAC-SHA256 signature")
    scope = match["credential"].split("/")
    if len(scope) != 5 or scope[4] != "aws4_request":
        raise _forbidden(INCOMPLETE_SIGNATURE,
                         f"Credential scope is malformed: {match['credential']}")
    key_id, date, region, scoped_service, _ = scope
    tokens = headers.get("x-amz-security-token")
    found = lookup(key_id, tokens[0] if tokens else None)
    if found is None:
        raise _unrecognized()
    secret_access_key, principal = found
    if scoped_service != service:
        raise _forbidden(INVALID_SIGNATURE,
                         f"Credential should be scoped to correct service: '{service}'.")

    amz_date = (headers.get("x-amz-date") or [""])[0]
    signed_at = _parse_amz_date(amz_date)
    if signed_at.strftime("%Y%m%d") != date:
        raise _forbidden(INVALID_SIGNATURE,
                         "Credential date does not match X-Amz-Date.")
    now = now or dt.datetime.now(dt.timezone.utc)
    if abs((now - signed_at).total_seconds()) > max_skew_s:
        raise _forbidden(
            INVALID_SIGNATURE,
            f"Signature expired: {amz_date} is now outside the allowed clock skew of "
            f"{max_skew_s // 60} minutes from {now.strftime('%Y%m%dT%H%M%SZ')}.",
        )

    signed_names = match["signed"].split(";")
    if "host" not in signed_names:
        raise _forbidden(INCOMPLETE_SIGNATURE, "'Host' must be a signed header")
    missing = [name for name in signed_names
               if name not in headers and name not in HOP_BY_HOP_VALUES]
    if missing:
        raise _forbidden(INVALID_SIGNATURE,
                         f"Signed headers are missing from the request: {', '.join(missing)}")
    _check_payload_hash(headers, body, streaming)
    signer = _ExactHeadersSigner(Credentials(key_id, secret_access_key), service, region)
    url = f"http://signed-host{path}" + (f"?{query_string}" if query_string else "")
    for signed_headers in _header_candidates(headers, signed_names):
        request = AWSRequest(method=method, url=url, headers=signed_headers, data=body)
        request.context["timestamp"] = amz_date
        canonical = signer.canonical_request(request)
        expected = signer.signature(signer.string_to_sign(request, canonical), request)
        if hmac.compare_digest(expected, match["signature"]):
            return principal
    raise _forbidden(
        INVALID_SIGNATURE,
        "The request signature we calculated does not match the signature you provided. "
        "Check your AWS Secret Access Key and signing method.",
    )


def _header_candidates(headers: dict[str, list[str]], signed_names: list[str]):
    """The signed headers as received, then with each signed hop-by-hop header replaced by
    the values a client can have sent for it (at most 3 x 2 = 6 tries in all)."""
    choices = []
    for name in signed_names:
        received = [",".join(headers[name])] if name in headers else []
        others = [v for v in HOP_BY_HOP_VALUES.get(name, ()) if v not in received]
        choices.append(received + others)
    for values in itertools.product(*choices):
        yield dict(zip(signed_names, values))


def _check_payload_hash(headers: dict[str, list[str]], body: bytes, streaming: bool) -> None:
    """A declared x-amz-content-sha256 must be the body's hash, as AWS checks it: botocore's
    signer would otherwise sign the declared value and never look at the body. Without
    the header, the signature covers the hash of the body as received."""
    declared_values = headers.get("x-amz-content-sha256")
    if not declared_values:
        return
    declared = declared_values[0]
    if streaming:
        if declared != EMPTY_SHA256:  # the body is not here yet to hash
            raise _forbidden(INVALID_SIGNATURE,
                             "PutMedia signs the empty payload: x-amz-content-sha256 must be "
                             "the SHA-256 of the empty string")
    elif declared != sha256(body).hexdigest():
        raise _forbidden(INVALID_SIGNATURE,
                         "The provided x-amz-content-sha256 header does not match what was "
                         "computed for the request body")


def _parse_amz_date(value: str) -> dt.datetime:
    try:
        return dt.datetime.strptime(value, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc)
    except ValueError:
        raise _forbidden(INCOMPLETE_SIGNATURE,
                         "Requests must carry a valid X-Amz-Date header (YYYYMMDDTHHMMSSZ)."
                         ) from None


# -- presigned URLs (query-string authentication) ----------------------------------------
#
# The WebRTC SDKs open the signaling WebSocket with every SigV4 field in the query string
# (WEBRTC-NOTES §4.1): only `host` is signed and the payload is the empty string's hash.
# `X-Amz-Security-Token` sits inside the signed query, so it is covered like any parameter.

MAX_PRESIGNED_EXPIRES_S = 7 * 24 * 3600  # AWS's upper bound for X-Amz-Expires


def verify_presigned(
    *,
    access_key_id: str = "",
    secret_access_key: str = "",
    lookup: Lookup | None = None,
    path: str,
    query: list[tuple[str, str]],
    host: str,
    max_skew_s: int,
    now: dt.datetime | None = None,
) -> Any:
    """Raise a 403 ApiError unless the GET `path?query` is a valid presigned URL for
    `host` (the Host header as received, port included). `query` is the decoded query
    string in order, as urllib.parse.parse_qsl(keep_blank_values=True) gives it.
    Returns the principal `lookup` found for the key (None with a single key)."""
    lookup = lookup or single_key(access_key_id, secret_access_key)
    params = dict(query)
    signature = params.get("X-Amz-Signature", "")
    if not signature:
        raise _forbidden(MISSING_AUTHENTICATION_TOKEN, "Missing Authentication Token")
    if params.get("X-Amz-Algorithm") != "AWS4-HMAC-SHA256":
        raise _forbidden(INCOMPLETE_SIGNATURE, "X-Amz-Algorithm must be AWS4-HMAC-SHA256")
    scope = params.get("X-Amz-Credential", "").split("/")
    if len(scope) != 5 or scope[4] != "aws4_request":
        raise _forbidden(INCOMPLETE_SIGNATURE, "X-Amz-Credential is malformed")
    key_id, date, region, service, _ = scope
    found = lookup(key_id, params.get("X-Amz-Security-Token"))
    if found is None:
        raise _unrecognized()
    secret_access_key, principal = found
    if service != SIGNING_NAME:
        raise _forbidden(INVALID_SIGNATURE,
                         f"Credential should be scoped to correct service: '{SIGNING_NAME}'.")
    if params.get("X-Amz-SignedHeaders") != "host":
        raise _forbidden(INCOMPLETE_SIGNATURE, "X-Amz-SignedHeaders must be 'host'")
    amz_date = params.get("X-Amz-Date", "")
    signed_at = _parse_amz_date(amz_date)
    if signed_at.strftime("%Y%m%d") != date:
        raise _forbidden(INVALID_SIGNATURE, "Credential date does not match X-Amz-Date.")
    _check_validity(signed_at, params.get("X-Amz-Expires", ""), max_skew_s,
                    now or dt.datetime.now(dt.timezone.utc))

    canonical = "\n".join([
        "GET", path or "/", canonical_query(query),
        f"host:{host}\n", "host", EMPTY_SHA256,
    ])
    string_to_sign = "\n".join([
        "AWS4-HMAC-SHA256", amz_date, f"{date}/{region}/{service}/aws4_request",
        sha256(canonical.encode()).hexdigest(),
    ])
    key = signing_key(secret_access_key, date, region, service)
    expected = hmac.new(key, string_to_sign.encode(), sha256).hexdigest()
    if not hmac.compare_digest(expected, signature):
        raise _forbidden(
            INVALID_SIGNATURE,
            "The request signature we calculated does not match the signature you provided. "
            "Check your AWS Secret Access Key and signing method.",
        )
    return principal


def canonical_query(query: list[tuple[str, str]]) -> str:
    """SigV4's canonical query: every parameter but the signature, RFC 3986-encoded and
    sorted by key, then value."""
    pairs = sorted((quote(k, safe="-_.~"), quote(v, safe="-_.~"))
                   for k, v in query if k != "X-Amz-Signature")
    return "&".join(f"{k}={v}" for k, v in pairs)


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = f"AWS4{secret}".encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), sha256).digest()
    return key


def _check_validity(signed_at: dt.datetime, expires: str, max_skew_s: int,
                    now: dt.datetime) -> None:
    """Valid from X-Amz-Date (less the allowed clock skew) for X-Amz-Expires seconds.
    The messages are AWS's: the C SDK retries with a corrected clock on these words."""
    if not expires.isdigit() or not 1 <= int(expires) <= MAX_PRESIGNED_EXPIRES_S:
        raise _forbidden(INCOMPLETE_SIGNATURE,
                         f"X-Amz-Expires must be between 1 and {MAX_PRESIGNED_EXPIRES_S}")
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    if (signed_at - now).total_seconds() > max_skew_s:
        raise _forbidden(INVALID_SIGNATURE,
                         f"Signature not yet current: {signed_at:%Y%m%dT%H%M%SZ} is still "
                         f"later than {stamp}")
    if (now - signed_at).total_seconds() > int(expires):
        raise _forbidden(INVALID_SIGNATURE,
                         f"Signature expired: {signed_at:%Y%m%dT%H%M%SZ} plus {expires} s is "
                         f"now earlier than {stamp}")
