"""`kvslite serve`: every setting of the server as a flag and a KVSLITE_* variable, with
the defaults `kvslite.server.config.Settings` declares."""

from __future__ import annotations

from pathlib import Path

import click

from kvslite.server.config import Settings


def _option(name: str, env: str, **kwargs):
    return click.option(name, envvar=f"KVSLITE_{env}", show_envvar=True, **kwargs)


def as_typed(path: Path) -> str:
    """A default path as one would type it, `./kvslite-data`, so --help shows that it is
    relative to the current directory (str(Path) drops the `./`)."""
    return str(path) if path.is_absolute() else f"./{path}"


@click.command()
@_option("--host", "HOST", default=Settings.host, show_default=True, help="Address to bind.")
@_option("--port", "PORT", default=Settings.port, show_default=True,
         type=click.IntRange(1, 65535), help="Port to bind.")
@_option("--data-dir", "DATA_DIR", default=as_typed(Settings.data_dir), show_default=True,
         type=click.Path(file_okay=False, path_type=Path), help="Where metadata and media live.")
@_option("--database-url", "DATABASE_URL", default=None,
         help="Metadata: sqlite:///path/kvslite.db or postgresql://user:pw@host:port/db "
              "(every node of a cluster gets the same). [default: kvslite.db in --data-dir]")
@_option("--media-url", "MEDIA_URL", default=None,
         help="Media: file:///path or s3://bucket/optional/prefix (S3 credentials and region "
              "from the standard AWS configuration). [default: media/ in --data-dir]")
@_option("--s3-endpoint-url", "S3_ENDPOINT_URL", default=None,
         help="An S3-compatible server for --media-url s3://... (else AWS_ENDPOINT_URL_S3 "
              "or AWS).")
@_option("--region", "REGION", default=Settings.region, show_default=True,
         help="Region in stream ARNs.")
@_option("--account-id", "ACCOUNT_ID", default=Settings.account_id, show_default=True,
         help="Account id in stream ARNs.")
@_option("--public-url", "PUBLIC_URL", default=None,
         help="URL that GetDataEndpoint returns [default: http://HOST:PORT].")
@_option("--access-key-id", "ACCESS_KEY_ID", default=None,
         help="With --secret-access-key: require SigV4 signed by this key.")
@_option("--secret-access-key", "SECRET_ACCESS_KEY", default=None,
         help="Secret for --access-key-id.")
@_option("--allow-anonymous", "ALLOW_ANONYMOUS", is_flag=True, default=False,
         help="Serve without credentials on a non-loopback address.")
@_option("--min-sampling-interval-ms", "MIN_SAMPLING_INTERVAL_MS",
         default=Settings.min_sampling_interval_ms, show_default=True, type=int,
         help="Smallest GetImages SamplingInterval accepted.")
@_option("--max-image-requests", "MAX_IMAGE_REQUESTS", default=Settings.max_image_requests,
         show_default=True, type=click.IntRange(1, 1000),
         help="GetImages requests served at once; more get ClientLimitExceededException.")
@_option("--image-cache-mb", "IMAGE_CACHE_MB", default=Settings.image_cache_mb,
         show_default=True, type=click.IntRange(min=0),
         help="Memory for rendered images, so a repeated GetImages (the viewer's thumbnails, "
              "several clients, image generation) makes none twice; 0 turns it off.")
@_option("--sweep-interval-s", "SWEEP_INTERVAL_S", default=Settings.sweep_interval_s,
         show_default=True, type=click.FloatRange(min=0, min_open=True),
         help="How often fragments past retention, deleted streams and orphan media files "
              "are swept.")
@_option("--orphan-grace-s", "ORPHAN_GRACE_S", default=Settings.orphan_grace_s,
         show_default=True, type=click.FloatRange(min=0),
         help="Media files no fragment refers to are removed once this old.")
@_option("--header-timeout-s", "HEADER_TIMEOUT_S", default=Settings.header_timeout_s,
         show_default=True, type=click.FloatRange(min=0, min_open=True),
         help="A connection must send a complete request head this soon, or is closed.")
@_option("--fragment-deadline-s", "FRAGMENT_DEADLINE_S", default=Settings.fragment_deadline_s,
         show_default=True, type=click.FloatRange(min=0, min_open=True),
         help="PutMedia: once its bytes arrive, a fragment must complete this soon, so a "
              "trickling producer cannot hold a stream.")
@_option("--max-connections", "MAX_CONNECTIONS", default=None, type=click.IntRange(min=1),
         help="Connections open at once; more are refused with 503 at once. "
              "[default: what the open-file limit allows, at most 4096]")
@_option("--tls-cert", "TLS_CERT", default=None,
         type=click.Path(dir_okay=False, path_type=Path),
         help="With --tls-key: serve HTTPS with this certificate (PEM).")
@_option("--tls-key", "TLS_KEY", default=None, type=click.Path(dir_okay=False, path_type=Path),
         help="The private key (PEM) for --tls-cert.")
@_option("--delivery-queue-limit", "DELIVERY_QUEUE_LIMIT",
         default=Settings.delivery_queue_limit, show_default=True, type=click.IntRange(min=1),
         help="Image-generation and notification deliveries waiting at most; past it, new "
              "fragments' events are dropped and counted (kvslite_deliveries_total).")
@_option("--delivery-stream-limit", "DELIVERY_STREAM_LIMIT",
         default=Settings.delivery_stream_limit, show_default=True, type=click.IntRange(min=1),
         help="The same for one stream: a stream whose destination fails drops its own new "
              "events, never another stream's.")
@_option("--delivery-max-attempts", "DELIVERY_MAX_ATTEMPTS",
         default=Settings.delivery_max_attempts, show_default=True, type=click.IntRange(min=1),
         help="A delivery that failed this many times (backoff 1 s doubling: about 8.5 "
              "minutes for 10) is dropped, logged and counted.")
@_option("--webhook-allow", "WEBHOOK_ALLOW", default=None,
         help="Internal addresses notifications may be POSTed to, comma-separated: loopback, "
              "private, link-local, networks (10.1.0.0/16) or host names. [default: none; "
              "only public addresses]")
@_option("--cors-allow-origins", "CORS_ALLOW_ORIGINS", default=None,
         help="Origins whose pages may call the APIs from a browser, comma-separated "
              "(https://app.example:8443) or *. HLS/DASH sessions are open to any origin, "
              "as on AWS. [default: none]")
@_option("--signaling-max-viewers", "SIGNALING_MAX_VIEWERS",
         default=Settings.signaling_max_viewers, show_default=True, type=click.IntRange(min=1),
         help="WebRTC: viewers connected to one signaling channel at once; one more is "
              "refused with ClientLimitExceededException.")
@_option("--signaling-max-payload-bytes", "SIGNALING_MAX_PAYLOAD_BYTES",
         default=Settings.signaling_max_payload_bytes, show_default=True,
         type=click.IntRange(min=1), help="WebRTC: the largest messagePayload relayed.")
@_option("--signaling-sdp-per-s", "SIGNALING_SDP_PER_S", default=Settings.signaling_sdp_per_s,
         show_default=True, type=click.FloatRange(min=0, min_open=True),
         help="WebRTC: SDP offers and answers a second per connection; more are refused.")
@_option("--signaling-ice-per-s", "SIGNALING_ICE_PER_S", default=Settings.signaling_ice_per_s,
         show_default=True, type=click.FloatRange(min=0, min_open=True),
         help="WebRTC: ICE candidates a second per connection; more are refused.")
@_option("--signaling-max-lifetime-s", "SIGNALING_MAX_LIFETIME_S",
         default=Settings.signaling_max_lifetime_s, show_default=True,
         type=click.FloatRange(min=0, min_open=True),
         help="WebRTC: a signaling connection ends (GO_AWAY, then closed) after this long.")
@_option("--signaling-idle-timeout-s", "SIGNALING_IDLE_TIMEOUT_S",
         default=Settings.signaling_idle_timeout_s, show_default=True,
         type=click.FloatRange(min=0, min_open=True),
         help="WebRTC: a signaling connection that sends nothing this long ends likewise.")
@_option("--turn-uri", "TURN_URI", multiple=True, default=None,
         help="A TURN server URI GetIceServerConfig hands out (turn:HOST:3478?transport=udp, "
              "turns:HOST:5349?transport=tcp); repeat for more, at most 5 hosts of 4 URIs. "
              "The variable takes them space-separated. [default: none; a STUN server only]")
@_option("--turn-secret", "TURN_SECRET", default=None,
         help="The secret shared with the TURN server (coturn's --static-auth-secret): "
              "credentials are signed with it, coturn's TURN REST scheme.")
@_option("--turn-ttl-s", "TURN_TTL_S", default=Settings.turn_ttl_s, show_default=True,
         type=click.IntRange(31, 86_400), help="How long a TURN credential is valid.")
@_option("--stun-uri", "STUN_URI", default=None,
         help="The STUN server GetIceServerConfig names when no --turn-uri is set. "
              "[default: stun:HOST:3478, HOST from --public-url]")
@_option("--storage-session-max-s", "STORAGE_SESSION_MAX_S",
         default=Settings.storage_session_max_s, show_default=True,
         type=click.FloatRange(min=0, min_open=True),
         help="WebRTC ingestion: a storage session ends after this long (AWS's maximum); "
              "the master rejoins with JoinStorageSession.")
@_option("--iot-port", "IOT_PORT", default=None, type=click.IntRange(1, 65535),
         help="Serve the IoT credential provider (GET /role-aliases/ALIAS/credentials, "
              "mutual TLS) on this port.")
@_option("--iot-ca", "IOT_CA", multiple=True, default=None,
         type=click.Path(dir_okay=False, path_type=Path),
         help="A CA (PEM) whose device certificates the IoT port accepts (repeatable). "
              "[default: kvslite's own, `kvslite iot ca`]")
@_option("--iot-role-alias", "IOT_ROLE_ALIAS", multiple=True, default=None,
         metavar="NAME=POLICY_FILE",
         help="A role alias and the IAM policy (JSON) of the credentials it hands out "
              "(repeatable).")
@_option("--iot-credential-ttl-s", "IOT_CREDENTIAL_TTL_S",
         default=Settings.iot_credential_ttl_s, show_default=True,
         type=click.IntRange(1, 43200),
         help="How long credentials from the IoT port are valid (AWS: 900 to 43200).")
@_option("--iot-crl", "IOT_CRL", default=None, type=click.Path(dir_okay=False, path_type=Path),
         help="A certificate revocation list (PEM) the IoT port checks device "
              "certificates against (`kvslite iot revoke` writes kvslite's own).")
@_option("--iam-key-file", "IAM_KEY_FILE", default=None,
         type=click.Path(dir_okay=False, path_type=Path),
         help="The server key (32 bytes, base64) that users' secret access keys and session "
              "tokens are encrypted with, kept out of the database; made (mode 0600) if "
              "missing on embedded stores; every node of a cluster needs the same file. "
              "[default: iam.key in --data-dir; in a cluster, a key kept in the database]")
@_option("--access-log", "ACCESS_LOG", is_flag=True, default=False,
         help="Log one line per request: request id, operation, stream, status, bytes, "
              "duration.")
@_option("--log-level", "LOG_LEVEL", default="info", show_default=True,
         type=click.Choice(["debug", "info", "warning", "error"]))
def serve(log_level: str, **options) -> None:
    """Run the server: on embedded defaults (SQLite + files under --data-dir), or as one
    node of a cluster (--database-url postgresql://..., --media-url s3://...)."""
    from kvslite.server.main import configure_logging

    configure_logging(log_level)
    settings = Settings(**options)
    try:
        settings.check()
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    from kvslite.server.iam.server_key import ServerKeyError
    from kvslite.server.main import DataDirInUse, StoreUnavailable
    from kvslite.server.main import serve as run_server

    try:
        run_server(settings)
    except (DataDirInUse, StoreUnavailable, ServerKeyError) as e:
        raise click.ClickException(str(e)) from None
