"""The `kvslite` command: serve, put, images and demo.

Heavy modules (the server, the producer, boto3) are imported inside the commands, so
`kvslite --help` and a mistyped option answer at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from pathlib import Path
from typing import NoReturn

import click

from kvslite import __version__
from kvslite.client.common import DEFAULT_ENDPOINT_URL
from kvslite.server.config import Settings
from kvslite.cli.iot import iot
from kvslite.cli.serve import as_typed, serve


def _exit_aborted() -> NoReturn:
    click.echo("aborted", err=True)
    sys.exit(130)


def _endpoint_options(command):
    """--endpoint-url and --region, as the client commands (put, images) take them."""
    command = click.option(
        "--region", default=None,
        help="Signing region [default: the AWS configuration's, else us-east-1].")(command)
    return click.option(
        "--endpoint-url", envvar="KVSLITE_ENDPOINT_URL", show_envvar=True,
        default=DEFAULT_ENDPOINT_URL, show_default=True,
        help="Control-plane URL: kvslite, or https://kinesisvideo.REGION.amazonaws.com.")(command)


@click.group()
@click.version_option(__version__, prog_name="kvslite")
def main() -> None:
    """kvslite: a self-hosted Amazon Kinesis Video Streams server."""


main.add_command(serve)
main.add_command(iot)


@main.command()
@click.argument("stream")
@click.argument("source")
@_endpoint_options
@click.option("--create", is_flag=True, help="Create the stream if it does not exist.")
@click.option("--retention-hours", default=24, show_default=True, type=click.IntRange(0, 87600),
              help="Data retention of a stream made by --create.")
@click.option("--realtime", is_flag=True,
              help="Pace the upload at the source's own rate, like a live camera.")
@click.option("--start-timestamp", default=None, metavar="TIME",
              help="Producer time of the first frame: ISO 8601 (UTC unless a zone is given) "
                   "or epoch seconds, e.g. to back-fill an old recording. [default: now with "
                   "--realtime or a live URL; else now minus the file's duration]")
@click.option("--retries", default=8, show_default=True, type=click.IntRange(0, 1000),
              help="Reconnects in a row after a lost connection (resending what was not yet "
                   "acknowledged) before giving up; 0: none.")
@click.option("--ack-timeout", default=30.0, show_default=True, metavar="SECONDS",
              type=click.FloatRange(min=1), help="A fragment with no acknowledgement for "
              "this long means the connection is lost: reconnect and resend.")
@click.option("--event", "event_types", default=None, metavar="TYPES",
              help="Mark fragments, comma-separated: image-generation (images generated into S3 "
                   "per the stream's ImageGenerationConfiguration), notification (a "
                   "notification per the stream's NotificationConfiguration once PERSISTED).")
@click.option("--meta", multiple=True, metavar="KEY=VALUE",
              help="A custom name/value pair sent with each --event (repeatable, up to 10).")
@click.option("--image-prefix", default=None, metavar="PREFIX",
              help="S3 prefix of the images that --event image-generation makes.")
@click.option("--event-every", default=None, type=click.IntRange(min=1), metavar="N",
              help="Mark fragments 0, N, 2N, ... with --event [default: 1, every fragment].")
@click.option("--quiet", "-q", is_flag=True, help="No progress output, only the summary.")
def put(stream: str, source: str, endpoint_url: str, region: str | None, create: bool,
        retention_hours: int, realtime: bool, start_timestamp: str | None, retries: int,
        ack_timeout: float, event_types: str | None, meta: tuple[str, ...],
        image_prefix: str | None, event_every: int | None, quiet: bool) -> None:
    """Upload SOURCE to STREAM with PutMedia, like a KVS producer.

    SOURCE is a file any FFmpeg demuxer reads (mp4, mkv, ts, ...) or a live URL (rtsp://,
    http://, ...). Its first video stream (H.264 or H.265) is remuxed without re-encoding
    into one fragment per GOP, stamped with absolute producer timestamps; audio and other
    streams are skipped. STREAM is a stream name or ARN. Requests are signed with SigV4 from
    the usual AWS credential chain (unsigned if there are none). Progress comes from the
    server's acks; Ctrl-C ends the upload cleanly after the current fragment. A dropped
    connection (a node of a cluster dying, say) is retried with backoff, resending every
    fragment not yet acknowledged. Exits 1 on an ERROR ack or HTTP error that a retry
    cannot mend, printing its ErrorId/ErrorCode or error type. --event tags fragments as the
    AWS producer SDK does, for image generation and/or a notification.
    """
    from kvslite.client import producer as kp

    start_ms = _start_timestamp_param(start_timestamp)
    events = _events_params(event_types, meta, image_prefix, event_every)
    progress = _PutProgress(source, stream, endpoint_url, quiet)
    stop = threading.Event()
    with _ctrl_c_sets(stop):
        try:
            summary = kp.put_source(source, stream, endpoint_url=endpoint_url, region=region,
                                    create=create, retention_hours=retention_hours,
                                    realtime=realtime, start_timestamp=start_ms, stop=stop,
                                    max_retries=retries, ack_timeout=ack_timeout,
                                    on_ack=progress.on_ack,
                                    on_retry=progress.on_retry, on_source=progress.on_source,
                                    events=events)
        except kp.ProducerError as e:
            progress.close()
            _exit_put_failed(e)
        except KeyboardInterrupt:
            progress.close()
            _exit_aborted()
    progress.close()
    click.echo(f"put {summary.line()}")


def _start_timestamp_param(value: str | None) -> int | None:
    from kvslite.client.producer import parse_timestamp

    try:
        return parse_timestamp(value) if value else None
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--start-timestamp") from None


def _events_params(event_types: str | None, meta: tuple[str, ...], image_prefix: str | None,
                   event_every: int | None):
    """--event, --meta, --image-prefix and --event-every as put's `events` (None: none)."""
    from kvslite.client.producer.event_tags import (FragmentEvent, every_nth_fragment, parse_event_types,
                                         parse_metadata)

    if event_types is None:
        for option, value in (("--meta", meta), ("--image-prefix", image_prefix),
                              ("--event-every", event_every)):
            if value not in (None, ()):
                raise click.UsageError(f"{option} needs --event")
        return None
    try:
        image_generation, notification = parse_event_types(event_types)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--event") from None
    if image_prefix is not None and not image_generation:
        raise click.BadParameter("applies to --event image-generation only",
                                 param_hint="--image-prefix")
    try:
        event = FragmentEvent(image_generation=image_generation, notification=notification,
                              image_prefix=image_prefix, metadata=parse_metadata(meta))
    except ValueError as e:
        hint = "--image-prefix" if getattr(e, "field", None) == "image_prefix" else "--meta"
        raise click.BadParameter(str(e), param_hint=hint) from None
    return every_nth_fragment(event, event_every) if event_every else event


@contextlib.contextmanager
def _ctrl_c_sets(stop: threading.Event):
    """While inside: the first Ctrl-C sets `stop` (the upload ends cleanly after the current
    fragment), a second one raises KeyboardInterrupt."""
    def on_sigint(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        click.echo("stopping after the current fragment (Ctrl-C again to abort)", err=True)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _stderr_columns() -> int:
    """The terminal's width if stderr is one, else 0."""
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns if sys.stderr.isatty() else 0
    except (OSError, ValueError):
        return 0


class _PutProgress:
    """What `put` shows on stderr while uploading: the source, then a bar on a terminal or
    a line per fragment elsewhere; nothing with --quiet."""

    def __init__(self, source: str, stream: str, endpoint_url: str, quiet: bool):
        self.source, self.stream, self.endpoint_url = source, stream, endpoint_url
        self.quiet = quiet
        self.lines = not quiet and not _stderr_columns()
        self.bar = None

    def on_source(self, media) -> None:
        """The source is open: say what it holds, and start the bar."""
        if self.quiet:
            return
        skipped = f", {media.skipped_streams} other stream(s) skipped" \
            if media.skipped_streams else ""
        click.echo(f"{self.source}: {media.description}{skipped} -> {self.stream} at "
                   f"{self.endpoint_url}", err=True)
        if not self.lines:
            from tqdm import tqdm

            self.bar = tqdm(desc="persisted", unit=" fragments", file=sys.stderr)

    def on_ack(self, ack, summary) -> None:
        """Count each fragment once, at its last ack: PERSISTED, or RECEIVED on a stream
        that keeps no data."""
        final = "RECEIVED" if summary.data_retained is False else "PERSISTED"
        if ack.event_type != final:
            return
        lag = f"{ack.lag_ms:.0f} ms" if ack.lag_ms is not None else "?"
        if self.bar is not None:
            self.bar.update(1)
            retries = f", {summary.retries} retries" if summary.retries else ""
            self.bar.set_postfix_str(f"{summary.bytes_sent / 1e6:.2f} MB sent, ack lag {lag}"
                                     f"{retries}")
        elif self.lines:
            click.echo(_fragment_line(ack, summary, lag), err=True)

    def on_retry(self, error, delay_s: float, summary) -> None:
        """A connection failed: say why, and when the next one goes (even with --quiet:
        the upload is not what it seemed)."""
        unacked = summary.fragments_sent - summary.fragments_acked
        line = (f"retry {summary.retries}: {error}; reconnecting in {delay_s:.1f} s, "
                f"resending {max(0, unacked)} unacknowledged fragment(s)")
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            click.echo(line, err=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _fragment_line(ack, summary, lag: str) -> str:
    from kvslite.client.producer import format_timestamp

    when = format_timestamp(ack.timecode) if ack.timecode is not None else "?"
    return (f"fragment {summary.fragments_acked} {ack.event_type.lower()}: {when} "
            f"#{ack.fragment_number or '-'}, {summary.bytes_sent / 1e6:.2f} MB sent, "
            f"ack lag {lag}" + (f", {summary.retries} retries" if summary.retries else ""))


def _exit_put_failed(error) -> NoReturn:
    """Report a failed upload (and what got through before it) and exit 1."""
    got = error.summary
    if got is not None and got.fragments_sent:
        click.echo(f"partial: {got.line()}", err=True)
    click.echo(f"error: {error}", err=True)
    sys.exit(1)


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
@_endpoint_options
@click.option("--quiet", "-q", is_flag=True, help="No progress bar, only the summary.")
def images(stream: str, start: str, end: str, every: str | None, image_format: str,
           quality: int | None, width: int | None, height: int | None, selector: str,
           max_results: int | None, out_dir: Path, endpoint_url: str, region: str | None,
           quiet: bool) -> None:
    """Save the images GetImages returns for STREAM between --start and --end.

    One file per sample time, named by its UTC timestamp (2026-11-27T06-24-51.496Z.jpg) in
    --out. The data endpoint comes from GetDataEndpoint (APIName GET_IMAGES), so this works
    against AWS too; requests are signed with SigV4 from the usual AWS credential chain
    (unsigned if there are none). Samples without media (NO_MEDIA, MEDIA_ERROR) are
    counted at the end and do not fail the command; an API error exits 1.

    \b
    kvslite images front-door --start -10m --end now --every 3s --out frames/
    """
    from kvslite.client import image_fetcher as fi

    start_ms, end_ms = _time_range_params(start, end)
    interval = _interval_param(every)
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
        _exit_aborted()
    _echo_missing_samples(summary)
    click.echo(f"images {summary.line()} -> {out_dir}")


def _time_range_params(start: str, end: str) -> tuple[int, int]:
    """--start and --end as epoch ms, both relative to the same `now`."""
    import time

    from kvslite.client.image_fetcher import format_time

    now_ms = round(time.time() * 1000)
    start_ms = _time_param(start, "--start", now_ms)
    end_ms = _time_param(end, "--end", now_ms)
    if start_ms > end_ms:
        raise click.BadParameter(f"{format_time(start_ms)} is after --end "
                                 f"{format_time(end_ms)}", param_hint="--start")
    return start_ms, end_ms


def _time_param(value: str, param_hint: str, now_ms: int) -> int:
    from kvslite.client.image_fetcher import parse_time

    try:
        return parse_time(value, now_ms)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint=param_hint) from None


def _interval_param(every: str | None) -> int | None:
    from kvslite.client.image_fetcher import parse_interval

    if every is None:
        return None
    try:
        return parse_interval(every)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--every") from None


def _echo_missing_samples(summary) -> None:
    """One stderr line per run of samples that got no image (NO_MEDIA, MEDIA_ERROR, ...)."""
    from kvslite.client.image_fetcher import format_time

    for kind, first, last, count in summary.error_runs():
        when = format_time(first)
        if count > 1:
            when += f" .. {format_time(last)}"
        click.echo(f"{kind}: {count} sample(s) at {when}", err=True)


@main.command()
@click.option("--port", default=Settings.port, show_default=True, type=click.IntRange(1, 65535),
              help=f"Port to serve on ({Settings.host}).")
@click.option("--data-dir", default=as_typed(Settings.data_dir), show_default=True,
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
    from kvslite.cli.demo import run as run_demo

    sys.exit(run_demo(port=port, data_dir=data_dir, out_dir=out_dir, seconds=seconds))
