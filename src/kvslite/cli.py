"""The `kvslite` command: serve (and, as they land, put, images, demo)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from kvslite import __version__
from kvslite.config import Settings


def _option(name: str, env: str, **kwargs):
    return click.option(name, envvar=f"KVSLITE_{env}", show_envvar=True, **kwargs)


@click.group()
@click.version_option(__version__, prog_name="kvslite")
def main() -> None:
    """kvslite: a self-hosted Amazon Kinesis Video Streams server."""


@main.command()
@_option("--host", "HOST", default="127.0.0.1", show_default=True, help="Address to bind.")
@_option("--port", "PORT", default=4567, show_default=True, type=click.IntRange(1, 65535),
         help="Port to bind.")
@_option("--data-dir", "DATA_DIR", default="./kvslite-data", show_default=True,
         type=click.Path(file_okay=False, path_type=Path), help="Where metadata and media live.")
@_option("--region", "REGION", default="us-east-1", show_default=True,
         help="Region in stream ARNs.")
@_option("--account-id", "ACCOUNT_ID", default="000000000000", show_default=True,
         help="Account id in stream ARNs.")
@_option("--public-url", "PUBLIC_URL", default=None,
         help="URL that GetDataEndpoint returns [default: http://HOST:PORT].")
@_option("--access-key-id", "ACCESS_KEY_ID", default=None,
         help="With --secret-access-key: require SigV4 signed by this key.")
@_option("--secret-access-key", "SECRET_ACCESS_KEY", default=None,
         help="Secret for --access-key-id.")
@_option("--allow-anonymous", "ALLOW_ANONYMOUS", is_flag=True, default=False,
         help="Serve without credentials on a non-loopback address.")
@_option("--min-sampling-interval-ms", "MIN_SAMPLING_INTERVAL_MS", default=3000,
         show_default=True, type=int, help="Smallest GetImages SamplingInterval accepted.")
@_option("--max-image-requests", "MAX_IMAGE_REQUESTS", default=8, show_default=True,
         type=click.IntRange(1, 1000),
         help="GetImages requests served at once; more get ClientLimitExceededException.")
@_option("--log-level", "LOG_LEVEL", default="info", show_default=True,
         type=click.Choice(["debug", "info", "warning", "error"]))
def serve(log_level: str, **options) -> None:
    """Run the server on embedded defaults (SQLite + files under --data-dir)."""
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings(**options)
    try:
        settings.check()
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    from kvslite.server import serve as run_server

    run_server(settings)


@main.command()
@click.argument("stream")
@click.argument("source")
@click.option("--endpoint-url", envvar="KVSLITE_ENDPOINT_URL", show_envvar=True,
              default="http://127.0.0.1:4567", show_default=True,
              help="Control-plane URL: kvslite, or https://kinesisvideo.REGION.amazonaws.com.")
@click.option("--region", default=None,
              help="Signing region [default: the AWS configuration's, else us-east-1].")
@click.option("--create", is_flag=True, help="Create the stream if it does not exist.")
@click.option("--retention-hours", default=24, show_default=True, type=click.IntRange(0, 87600),
              help="Data retention of a stream made by --create.")
@click.option("--realtime", is_flag=True,
              help="Pace the upload at the source's own rate, like a live camera.")
@click.option("--start-timestamp", default=None, metavar="TIME",
              help="Producer time of the first frame: ISO 8601 (UTC unless a zone is given) "
                   "or epoch seconds, e.g. to back-fill an old recording. [default: now with "
                   "--realtime or a live URL; else now minus the file's duration]")
@click.option("--quiet", "-q", is_flag=True, help="No progress output, only the summary.")
def put(stream: str, source: str, endpoint_url: str, region: str | None, create: bool,
        retention_hours: int, realtime: bool, start_timestamp: str | None, quiet: bool) -> None:
    """Upload SOURCE to STREAM with PutMedia, like a KVS producer.

    SOURCE is a file any FFmpeg demuxer reads (mp4, mkv, ts, ...) or a live URL (rtsp://,
    http://, ...). Its first video stream (H.264 or H.265) is remuxed without re-encoding
    into one fragment per GOP, stamped with absolute producer timestamps; audio and other
    streams are skipped. STREAM is a stream name or ARN. Requests are signed with SigV4 from
    the usual AWS credential chain (unsigned if there are none). Progress comes from the
    server's acks; Ctrl-C ends the upload cleanly after the current fragment. Exits 1 on an
    ERROR ack or HTTP error, printing its ErrorId/ErrorCode or error type.
    """
    import os
    import signal
    import threading

    from kvslite import producer as kp

    try:
        start_ms = kp.parse_timestamp(start_timestamp) if start_timestamp else None
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--start-timestamp") from None

    stop = threading.Event()

    def on_sigint(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        click.echo("stopping after the current fragment (Ctrl-C again to abort)", err=True)

    def terminal_columns() -> int:
        try:
            return os.get_terminal_size(sys.stderr.fileno()).columns if sys.stderr.isatty() else 0
        except (OSError, ValueError):
            return 0

    bar = None
    lines = not quiet and not terminal_columns()  # a bar on a terminal, else a line per fragment

    def on_source(media) -> None:
        nonlocal bar
        if not quiet:
            skipped = f", {media.skipped_streams} other stream(s) skipped" \
                if media.skipped_streams else ""
            click.echo(f"{source}: {media.description}{skipped} -> {stream} at {endpoint_url}",
                       err=True)
        if not quiet and not lines:
            from tqdm import tqdm

            bar = tqdm(desc="persisted", unit=" fragments", file=sys.stderr)

    def on_ack(ack, summary) -> None:
        final = "RECEIVED" if summary.data_retained is False else "PERSISTED"
        if ack.event_type != final:
            return
        lag = f"{ack.lag_ms:.0f} ms" if ack.lag_ms is not None else "?"
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"{summary.bytes_sent / 1e6:.2f} MB sent, ack lag {lag}")
        elif lines:
            when = kp.format_timestamp(ack.timecode) if ack.timecode is not None else "?"
            click.echo(f"fragment {summary.fragments_acked} {ack.event_type.lower()}: {when} "
                       f"#{ack.fragment_number or '-'}, {summary.bytes_sent / 1e6:.2f} MB sent, "
                       f"ack lag {lag}", err=True)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        summary = kp.put_source(source, stream, endpoint_url=endpoint_url, region=region,
                                create=create, retention_hours=retention_hours,
                                realtime=realtime, start_timestamp=start_ms, stop=stop,
                                on_ack=on_ack, on_source=on_source)
    except kp.ProducerError as e:
        if bar is not None:
            bar.close()
        got = e.summary
        if got is not None and got.fragments_sent:
            click.echo(f"partial: {got.line()}", err=True)
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        click.echo("aborted", err=True)
        sys.exit(130)
    finally:
        signal.signal(signal.SIGINT, previous)
    if bar is not None:
        bar.close()
    click.echo(f"put {summary.line()}")
