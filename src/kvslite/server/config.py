"""One Settings object for the whole server, filled from flags and KVSLITE_* env."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from kvslite.client.common import DEFAULT_HOST, DEFAULT_PORT
from kvslite.server.edge.cors import parse_origins
from kvslite.server.edge.credential_provider import parse_role_alias
from kvslite.server.signaling.turn import DEFAULT_TTL_S, check_turn_settings, stun_uri_for
from kvslite.server.webhook_policy import WebhookPolicy


@dataclass(frozen=True)
class Settings:
    host: str = DEFAULT_HOST  # where the clients look by default (kvslite.client.common)
    port: int = DEFAULT_PORT
    data_dir: Path = Path("./kvslite-data")
    database_url: str | None = None  # sqlite:///... | postgresql://...; default: in data_dir
    media_url: str | None = None  # file:///... | s3://bucket/prefix; default: data_dir/media
    s3_endpoint_url: str | None = None  # an S3-compatible server (else AWS's configuration)
    region: str = "us-east-1"
    account_id: str = "000000000000"
    public_url: str | None = None  # what GetDataEndpoint returns; derived from host/port if unset
    access_key_id: str | None = None
    secret_access_key: str | None = None
    allow_anonymous: bool = False
    min_sampling_interval_ms: int = 3000
    max_image_requests: int = 8  # GetImages in flight; more are refused, not queued
    image_cache_mb: int = 64  # rendered images kept for repeated requests; 0: none
    max_clock_skew_s: int = 900  # SigV4: how far X-Amz-Date may be from the server clock
    max_request_body_bytes: int = 1 << 20  # JSON APIs; PutMedia streams and has its own limits
    header_timeout_s: float = 10.0  # a request head must be complete this soon
    # PutMedia: a fragment must complete this soon; 3x the longest one, sent in real time
    fragment_deadline_s: float = 60.0
    max_connections: int | None = None  # None: what the descriptor limit allows
    access_log: bool = False  # one line per request on the kvslite.access logger
    tls_cert: Path | None = None  # with tls_key: serve HTTPS
    tls_key: Path | None = None
    sweep_interval_s: float = 60.0  # how often retention, deletion and orphans are swept
    orphan_grace_s: float = 3600.0  # media files without a row are removed after this long
    delivery_queue_limit: int = 10_000  # image/notification work waiting; more is dropped
    delivery_stream_limit: int = 1000  # the same, for one stream
    delivery_max_attempts: int = 10  # a delivery failing this often is dropped
    webhook_allow: str | None = None  # internal webhook destinations allowed (webhook_policy)
    cors_allow_origins: str | None = None  # other origins' pages that may call the APIs
    # the WebRTC signaling WebSocket: AWS's quotas (server/signaling/hub.py)
    signaling_max_viewers: int = 10  # viewers connected to one channel at once
    signaling_max_payload_bytes: int = 10_240  # one message's messagePayload
    signaling_sdp_per_s: float = 5  # SDP offers/answers a second, per connection
    signaling_ice_per_s: float = 20  # ICE candidates a second, per connection
    signaling_max_lifetime_s: float = 3600  # a connection ends (GO_AWAY) after this long
    signaling_idle_timeout_s: float = 600  # ... or after this long without a message
    turn_uri: tuple[str, ...] = ()  # TURN URIs GetIceServerConfig hands out (signaling/turn.py)
    turn_secret: str | None = field(default=None, repr=False)  # shared with the TURN server
    turn_ttl_s: int = DEFAULT_TTL_S  # how long a TURN credential is valid
    stun_uri: str | None = None  # answered without TURN; default: stun:<public host>:3478
    storage_session_max_s: float = 3600  # a WebRTC storage session ends after this (AWS's max)
    # the IoT credential provider (edge/credential_provider.py): a mutual-TLS listener
    iot_port: int | None = None
    iot_ca: tuple[Path, ...] = ()  # CAs of device certificates; default: kvslite's own
    iot_role_alias: tuple[str, ...] = ()  # NAME=POLICY_FILE
    iot_credential_ttl_s: int = 3600  # AWS's default credentialDurationSeconds
    iot_crl: Path | None = None  # revoked device certificates (PEM CRL)
    # seals users' secrets and session tokens (iam/server_key.py); embedded: data_dir/iam.key
    iam_key_file: Path | None = None

    @property
    def auth_enabled(self) -> bool:
        return bool(self.access_key_id and self.secret_access_key)

    @property
    def metadata_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'kvslite.db').resolve()}"

    @property
    def blobs_url(self) -> str:
        return self.media_url or f"file://{(self.data_dir / 'media').resolve()}"

    @property
    def tls_enabled(self) -> bool:
        return bool(self.tls_cert and self.tls_key)

    @property
    def stun_server(self) -> str:
        return self.stun_uri or stun_uri_for(self.endpoint_url)

    @property
    def endpoint_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = self.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        scheme = "https" if self.tls_enabled else "http"
        return f"{scheme}://{host}:{self.port}"

    def check(self) -> None:
        """Refuse unsafe or inconsistent settings before the server binds."""
        if bool(self.access_key_id) != bool(self.secret_access_key):
            raise ValueError("set both --access-key-id and --secret-access-key, or neither")
        if not self.auth_enabled and not self.allow_anonymous and not is_loopback(self.host):
            raise ValueError(
                f"refusing to serve without credentials on non-loopback address {self.host}: "
                "set --access-key-id/--secret-access-key, or pass --allow-anonymous"
            )
        if not 1 <= self.min_sampling_interval_ms <= 20_000:
            raise ValueError("--min-sampling-interval-ms must be between 1 and 20000")
        for flag, url, schemes in (("--database-url", self.database_url,
                                    ("sqlite", "postgresql", "postgres")),
                                   ("--media-url", self.media_url, ("file", "s3"))):
            if url is not None and url.split("://", 1)[0] not in schemes or \
                    (url is not None and "://" not in url):
                raise ValueError(f"{flag} must start with one of "
                                 f"{', '.join(s + '://' for s in schemes)}, got {url!r}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("set both --tls-cert and --tls-key, or neither")
        for path in (self.tls_cert, self.tls_key):
            if path and not Path(path).is_file():
                raise ValueError(f"TLS file {path} does not exist")
        if self.header_timeout_s <= 0 or self.fragment_deadline_s <= 0 or \
                (self.max_connections or 1) < 1:
            raise ValueError("--header-timeout-s, --fragment-deadline-s and "
                             "--max-connections must be positive")
        if self.sweep_interval_s <= 0 or self.orphan_grace_s < 0:
            raise ValueError("--sweep-interval-s must be positive and --orphan-grace-s not "
                             "negative")
        WebhookPolicy.parse(self.webhook_allow)  # names the value it cannot read
        parse_origins(self.cors_allow_origins)  # the same
        check_turn_settings(self.turn_uri, self.turn_secret, self.turn_ttl_s)
        if self.stun_uri is not None and not self.stun_uri.startswith(("stun:", "stuns:")):
            raise ValueError(f"--stun-uri must start with stun: or stuns:, got {self.stun_uri!r}")
        self._check_iot()

    def _check_iot(self) -> None:
        if self.iot_port is None:
            return
        if not self.auth_enabled:
            raise ValueError("--iot-port needs --access-key-id/--secret-access-key: without "
                             "them no request's credentials are checked")
        if self.iot_port == self.port:
            raise ValueError("--iot-port must differ from --port")
        if not self.iot_role_alias:
            raise ValueError("--iot-port needs at least one --iot-role-alias NAME=POLICY_FILE")
        for alias in self.iot_role_alias:
            parse_role_alias(alias)  # names the fault
        for path in (*self.iot_ca, self.iot_crl):
            if path and not Path(path).is_file():
                raise ValueError(f"IoT file {path} does not exist")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
