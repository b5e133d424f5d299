"""The structure the README promises, checked on every run so it cannot quietly rot."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from kvslite import errors
from kvslite.edge import model

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "kvslite"


def test_import_layers_hold():
    """pyproject's [tool.importlinter] contracts: data flows edge -> ops -> archive -> store,
    and client libraries never import server code."""
    linter = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(linter), "--no-cache"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 kept, 0 broken" in result.stdout, result.stdout  # every contract was checked


def _python_files(*packages: str):
    for package in packages:
        yield from sorted((SRC / package).rglob("*.py"))


def test_operations_do_not_reach_through_the_archive_to_a_store():
    """An import contract cannot see `self.archive.store.x`; this can."""
    for path in _python_files("ops", "edge", "web"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("store", "blobs"):
                raise AssertionError(f"{path.relative_to(ROOT)}:{node.lineno} reaches .{node.attr}")


def test_no_module_is_two_things():
    """A module past ~400 lines is usually two concepts (the generated request shapes are
    data, not code)."""
    long = {str(p.relative_to(ROOT)): n for p in SRC.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400 and p.name != "requests.py"}
    assert long == {}


def test_error_codes_match_the_models():
    """Codes raised as modeled errors are error shapes of the KVS models (so their HTTP
    status comes from there); the others really are outside the models."""
    shapes = set(model.error_statuses())
    assert errors.MODELED <= shapes, errors.MODELED - shapes
    assert not errors.UNMODELED & shapes, errors.UNMODELED & shapes


def test_every_raised_error_code_is_a_named_constant():
    """ApiError codes come from kvslite.errors, never a string typed at the raise site."""
    literal = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call)
                    and getattr(node.func, "id", None) in ("ApiError", "_forbidden")
                    and node.args and isinstance(node.args[0], ast.Constant)):
                literal.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert literal == []
    codes = {v for k, v in vars(errors).items() if k.isupper() and isinstance(v, str)}
    assert codes == errors.MODELED | errors.UNMODELED


def _literal_arguments(call: str, keyword: str | None = None):
    """Where `call(...)` gets a number (0, "none yet", aside) typed at the call site: as its
    first argument, or as `keyword=`."""
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if name != call:
                continue
            values = ([k.value for k in node.keywords if k.arg == keyword] if keyword
                      else node.args[:1])
            if any(isinstance(v, ast.Constant) and isinstance(v.value, int) and v.value
                   for v in values):
                yield f"{path.relative_to(ROOT)}:{node.lineno}"


def test_putmedia_error_ids_and_track_types_are_named_once():
    """ErrorIds come from kvslite.media.error_ids (which the producer's failover reads too)
    and track types from kvslite.media.limits, never a number typed at the call site."""
    assert list(_literal_arguments("IngestError")) == []
    assert list(_literal_arguments("Track", keyword="track_type")) == []
