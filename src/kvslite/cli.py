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
