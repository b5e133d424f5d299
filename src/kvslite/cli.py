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


def _time_param(value: str, param_hint: str, now_ms: int) -> int:
    from kvslite.fetch_images import parse_time

    try:
        return parse_time(value, now_ms)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint=param_hint) from None


@main.command()
@click.argument("stream")
@click.option("--start", required=True, metavar="TIME",
              help="First sample time: ISO 8601 (UTC unless a zone is given), epoch seconds, "
                   "now, or relative to now (-10m, -90s, -2h, -1d).")
@click.option("--end", required=True, metavar="TIME", help="Last sample time (same forms).")
@click.option("--every", default=None, metavar="INTERVAL",
              help="Sampling interval: 3s, 500ms, 1m or plain milliseconds "
                   "[default: the server's minimum].")
@click.option("--format", "image_format", default="jpeg", show_default=True,
              type=click.Choice(["jpeg", "png"], case_sensitive=False))
@click.option("--quality", default=None, type=click.IntRange(1, 100),
              help="JPEG quality 1-100 [default: the server's, 80].")
@click.option("--width", default=None, type=click.IntRange(1, 3840),
              help="Image width; alone, the height keeps the aspect ratio.")
@click.option("--height", default=None, type=click.IntRange(1, 2160),
              help="Image height; alone, the width keeps the aspect ratio.")
@click.option("--selector", default="producer", show_default=True,
              type=click.Choice(["producer", "server"], case_sensitive=False),
              help="Which clock the times are on: PRODUCER_TIMESTAMP or SERVER_TIMESTAMP.")
@click.option("--max-results", default=None, type=click.IntRange(1, 100),
              help="Images per GetImages page [default: the server's, 100].")
@click.option("--out", "out_dir", required=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Directory for the images (created if missing).")
@click.option("--endpoint-url", envvar="KVSLITE_ENDPOINT_URL", show_envvar=True,
              default="http://127.0.0.1:4567", show_default=True,
              help="Control-plane URL: kvslite, or https://kinesisvideo.REGION.amazonaws.com.")
@click.option("--region", default=None,
              help="Signing region [default: the AWS configuration's, else us-east-1].")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar, only the summary.")
def images(stream: str, start: str, end: str, every: str | None, image_format: str,
           quality: int | None, width: int | None, height: int | None, selector: str,
           max_results: int | None, out_dir: Path, endpoint_url: str, region: str | None,
           quiet: bool) -> None:
    """Save the images GetImages returns for STREAM between --start and --end.

    One file per sample time, named by its UTC timestamp (2026-11-27T06-24-51.496Z.jpg) in
    --out. The data endpoint comes from GetDataEndpoint (APIName GET_IMAGES), so this works
    against AWS too; credentials come from the usual AWS chain (dummy ones for a non-AWS
    endpoint when none are configured). Samples without media (NO_MEDIA, MEDIA_ERROR) are
    counted at the end and do not fail the command; an API error exits 1.

    \b
    kvslite images front-door --start -10m --end now --every 3s --out frames/
    """
    import time

    from kvslite import fetch_images as fi

    now_ms = round(time.time() * 1000)
    start_ms = _time_param(start, "--start", now_ms)
    end_ms = _time_param(end, "--end", now_ms)
    if start_ms > end_ms:
        raise click.BadParameter(f"{fi.format_time(start_ms)} is after --end "
                                 f"{fi.format_time(end_ms)}", param_hint="--start")
    interval = None
    if every is not None:
        try:
            interval = fi.parse_interval(every)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--every") from None
    if quality is not None and image_format.lower() != "jpeg":
        raise click.BadParameter("applies to --format jpeg only", param_hint="--quality")
    if not quiet:
        every_text = f"every {interval} ms" if interval else "at the server's minimum interval"
        click.echo(f"{stream}: {fi.format_time(start_ms)} .. {fi.format_time(end_ms)} "
                   f"{every_text} -> {out_dir}", err=True)
    try:
        client = fi.archived_media_client(stream, endpoint_url=endpoint_url, region=region)
        summary = fi.fetch_images(client, stream, start_ms, end_ms, out_dir,
                                  interval_ms=interval, image_format=image_format,
                                  quality=quality, width=width, height=height, selector=selector,
                                  max_results=max_results, progress=not quiet)
    except fi.FetchError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("aborted", err=True)
        sys.exit(130)
    for kind, first, last, count in summary.error_runs():
        when = fi.format_time(first) if count == 1 else \
            f"{fi.format_time(first)} .. {fi.format_time(last)}"
        click.echo(f"{kind}: {count} sample(s) at {when}", err=True)
    click.echo(f"images {summary.line()} -> {out_dir}")


@main.command()
@click.option("--port", default=4567, show_default=True, type=click.IntRange(1, 65535),
              help="Port to serve on (127.0.0.1).")
@click.option("--data-dir", default="./kvslite-data", show_default=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Where metadata and media live.")
@click.option("--out", "out_dir", default="./demo-images", show_default=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Directory for the images.")
@click.option("--seconds", default=60, show_default=True, type=click.IntRange(1, 600),
              help="Length of the synthetic video.")
def demo(port: int, data_dir: Path, out_dir: Path, seconds: int) -> None:
    """Serve, ingest a clock video, fetch images every 3 s, and keep serving.

    Starts kvslite on 127.0.0.1:PORT (embedded defaults, data in --data-dir), creates the
    stream kvslite-demo (retention 24 h; reused if it exists), uploads --seconds of synthetic
    H.264 video with a clock drawn in every frame through PutMedia (timestamps ending now),
    saves the images GetImages returns every 3 s into --out, prints the boto3 code that did
    it, and serves until Ctrl-C. Exits 2 if the port is busy.
    """
    from kvslite.demo import run as run_demo

    sys.exit(run_demo(port=port, data_dir=data_dir, out_dir=out_dir, seconds=seconds))
