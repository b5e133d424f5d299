"""Temporary credentials: an access key `ASIA...`, its secret and a session token that
carries everything about them, so that any node checks a request without a lookup.

The token is the credentials' secret, expiry and principal (name, ARN, policies, policy
variables), compressed and sealed with AES-GCM under a key every node shares (derived
from the server key file, iam/server_key.py). Nobody without the key
can read a token's secret or forge or alter one: a changed byte fails the seal. A token is
good until its expiry; there is no revocation list (AWS's STS credentials cannot be
revoked either, short of changing the key, which ends every session at once).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import os
import secrets
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kvslite.server.api_errors import EXPIRED_TOKEN, ApiError
from kvslite.server.iam.principal import Principal

SECRET_NAME = "session-credentials"  # the store-kept key, where no key file is given
_VERSION = b"\x01"  # the token format; a token of another version is not ours
_NONCE_BYTES = 12
_ASSOCIATED = b"kvslite session token"
MAX_TOKEN_CHARS = 16_384  # larger is no token of ours, and is not decoded
_KEY_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"  # what AWS key ids are made of


def new_key() -> bytes:
    """A fresh AES-256 key: what `store.secret(SECRET_NAME, new_key)` keeps."""
    return AESGCM.generate_key(bit_length=256)


@dataclass(frozen=True)
class TemporaryCredentials:
    access_key_id: str
    secret_access_key: str
    session_token: str
    expires_at: float  # epoch seconds

    @property
    def expiration(self) -> str:
        """ISO 8601 in UTC to the second, as STS and the IoT credential provider write it."""
        moment = dt.datetime.fromtimestamp(self.expires_at, dt.timezone.utc)
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class SessionCredentials:
    """Issues temporary credentials and opens their session tokens."""

    def __init__(self, key: bytes, clock: Callable[[], float] = time.time):
        self._aead = AESGCM(key)
        self.clock = clock

    def issue(self, principal: Principal, ttl_s: float) -> TemporaryCredentials:
        """Credentials for `principal` (its `access_key_id` is ignored: each issue gets a
        new one), valid for `ttl_s` seconds from now."""
        key_id = "ASIA" + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(16))
        secret = secrets.token_urlsafe(30)
        expires_at = int(self.clock() + ttl_s)
        payload = {"k": key_id, "s": secret, "e": expires_at, "a": principal.arn,
                   "n": principal.name, "t": principal.kind, "p": list(principal.policies),
                   "v": principal.variables}
        return TemporaryCredentials(key_id, secret, self._seal(payload), expires_at)

    def lookup(self, access_key_id: str, session_token: str) -> tuple[str, Principal] | None:
        """The secret and principal of a session token issued for `access_key_id`; None if
        the token is not one of ours (forged, altered, for another key). A genuine token
        past its expiry raises ExpiredTokenException, as AWS answers it."""
        payload = self._open(session_token)
        if payload is None or payload.get("k") != access_key_id:
            return None
        if self.clock() >= payload["e"]:
            raise ApiError(EXPIRED_TOKEN, "The security token included in the request is "
                                          "expired", status=403)
        principal = Principal(arn=payload["a"], name=payload["n"], kind=payload["t"],
                              policies=tuple(payload["p"]), variables=dict(payload["v"]),
                              access_key_id=access_key_id)
        return payload["s"], principal

    def _seal(self, payload: dict) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        plain = zlib.compress(json.dumps(payload, separators=(",", ":")).encode())
        sealed = _VERSION + nonce + self._aead.encrypt(nonce, plain, _ASSOCIATED)
        return base64.b64encode(sealed).decode()

    def _open(self, token: str) -> dict | None:
        if len(token) > MAX_TOKEN_CHARS:
            return None
        try:
            sealed = base64.b64decode(token, validate=True)
        except (binascii.Error, ValueError):
            return None
        if sealed[:1] != _VERSION or len(sealed) < 1 + _NONCE_BYTES + 16:
            return None
        nonce, body = sealed[1:1 + _NONCE_BYTES], sealed[1 + _NONCE_BYTES:]
        try:
            plain = self._aead.decrypt(nonce, body, _ASSOCIATED)
        except InvalidTag:
            return None
        # sealed with our key, so written by us: well-formed and of a bounded size
        return json.loads(zlib.decompress(plain))
