"""`kvslite iot`: kvslite's own CA for device certificates (server/iam/device_ca.py), kept in
the data directory, for the IoT credential provider (`kvslite serve --iot-port`)."""

from __future__ import annotations

from pathlib import Path

import click

from kvslite.cli.serve import as_typed
from kvslite.server.config import Settings

_THING = r"[a-zA-Z0-9:_-]{1,128}"  # AWS IoT's thing name pattern


def _data_dir_option(command):
    return click.option("--data-dir", envvar="KVSLITE_DATA_DIR", show_envvar=True,
                        default=as_typed(Settings.data_dir), show_default=True,
                        type=click.Path(file_okay=False, path_type=Path),
                        help="The data directory of the server whose CA this is.")(command)


def _ca(data_dir: Path):
    from kvslite.server.iam.device_ca import DeviceCa

    return DeviceCa(data_dir / "iot-ca").ensure()


@click.group()
def iot() -> None:
    """Device certificates for the IoT credential provider."""


@iot.command("issue-cert")
@click.argument("thing")
@click.option("--out", default=".", show_default=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Where THING.cert.pem and THING.key.pem are written.")
@click.option("--days", default=3650, show_default=True, type=click.IntRange(1, 36500),
              help="How long the certificate is valid.")
@_data_dir_option
def issue_cert(thing: str, out: Path, days: int, data_dir: Path) -> None:
    """Write a key and a certificate for THING (its subject CN), signed by kvslite's device
    CA (made in the data directory at first use)."""
    import re

    if not re.fullmatch(_THING, thing):
        raise click.BadParameter("a thing name is 1 to 128 of a-z A-Z 0-9 : _ -",
                                 param_hint="THING")
    cert, key = _ca(data_dir).issue(thing, out, days=days)
    click.echo(f"{cert}\n{key}")


@iot.command()
@_data_dir_option
def ca(data_dir: Path) -> None:
    """Print the path of kvslite's device CA certificate (a device's ca-path)."""
    click.echo(_ca(data_dir).cert_path)


@iot.command()
@click.argument("certificate", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@_data_dir_option
def revoke(certificate: Path, data_dir: Path) -> None:
    """Add CERTIFICATE to the CA's revocation list and print the list's path (serve it with
    --iot-crl; a running server reads it at start)."""
    try:
        click.echo(_ca(data_dir).revoke(certificate.read_bytes()))
    except ValueError as e:
        raise click.ClickException(str(e)) from None
