"""The README's configuration table is the `kvslite serve` parser's, row for row: every
option with its environment variable and default, and no row the parser lacks. A setting
added without docs fails here."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from kvslite.cli.serve import serve

README = Path(__file__).resolve().parents[1] / "README.md"


def documented() -> dict[str, tuple[str, str]]:
    """The table under "## Configuration": flag -> (environment variable, default cell).
    A row may document two flags, `--tls-cert`, `--tls-key`, with their two variables."""
    section = README.read_text().split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, tuple[str, str]] = {}
    for line in section.splitlines():
        if not line.startswith("| `--"):
            continue
        flag_cell, env_cell, default_cell, _meaning = (
            cell.strip() for cell in line.strip().strip("|").split("|", 3))
        flags = re.findall(r"`(--[a-z0-9-]+)`", flag_cell)
        envs = re.findall(r"`(KVSLITE_[A-Z0-9_]+)`", env_cell)
        assert flags and len(flags) == len(envs), line
        for flag, env in zip(flags, envs):
            assert flag not in rows, f"{flag} is documented twice"
            rows[flag] = (env, default_cell)
    return rows


def options() -> dict[str, click.Option]:
    return {option.opts[0]: option for option in serve.params
            if isinstance(option, click.Option)}


def as_documented(option: click.Option) -> str | None:
    """The default cell the README must show, or None where it describes it in words
    (no fixed default: derived from other settings or the machine)."""
    if option.is_flag:
        return "on" if option.default else "off"
    if option.default is None:
        return None
    value = option.default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def test_every_option_is_in_the_table_and_every_row_is_an_option():
    rows, parsed = set(documented()), set(options())
    assert (sorted(parsed - rows), sorted(rows - parsed)) == ([], []), \
        "(options missing from the README table, rows for options that do not exist)"


@pytest.mark.parametrize("flag", sorted(options()))
def test_each_option_has_its_environment_variable_and_default(flag):
    option = options()[flag]
    env, default = documented()[flag]
    assert env == option.envvar
    expected = as_documented(option)
    if expected is None:
        assert default, f"{flag}: say what happens when it is not set"
    else:
        assert default == expected
