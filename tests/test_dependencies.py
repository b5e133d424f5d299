"""Dependencies whose private parts kvslite builds on are pinned to the versions tested."""

from __future__ import annotations

import tomllib
from importlib.metadata import version
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _requirement(name: str) -> Requirement:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found = [Requirement(r) for r in project["dependencies"] if Requirement(r).name == name]
    assert len(found) == 1, found
    return found[0]


def test_uvicorn_is_pinned_below_the_next_untested_minor():
    """edge/connections.py subclasses uvicorn's private h11 protocol (its `connections`,
    `cycle`, `transport` and `on_response_complete`): a new minor release may change them,
    so pyproject admits only the minor releases the suite has run on."""
    specifier = _requirement("uvicorn").specifier
    assert any(s.operator == "<" for s in specifier), f"uvicorn{specifier} has no upper bound"
    assert specifier.contains(version("uvicorn")), (version("uvicorn"), str(specifier))
