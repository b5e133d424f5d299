"""Types that are checked: mypy passes with pyproject's [tool.mypy], and every KVS handler
declares the request and result shapes generated for its operation, so mypy's check of a
handler is a check against the model."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import typing
from pathlib import Path

import pytest
from starlette.responses import Response

from kvslite.server.ops.requests import REQUESTS
from kvslite.server.ops.responses import RESPONSES, STREAMING

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_mypy_passes():
    result = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("Success: no issues found in"), result.stdout


def served_handlers() -> dict:
    """The handlers of the assembled server, by operation name."""
    from kvslite.server.config import Settings
    from kvslite.server.main import build

    with tempfile.TemporaryDirectory() as data_dir:
        server = build(Settings(data_dir=Path(data_dir)))
        try:
            return dict(server.app.handlers)
        finally:
            server.close()


def test_every_handler_declares_its_operations_request_and_result_shapes():
    handlers = served_handlers()
    # 24 + 9 signaling-channel operations + GetIceServerConfig, SendAlexaOfferToMaster,
    # JoinStorageSession and JoinStorageSessionAsViewer
    assert len(handlers) == 37
    for operation, handler in handlers.items():
        hints = typing.get_type_hints(handler)
        returns = hints.pop("return")
        assert list(hints.values()) == [REQUESTS[operation]], operation
        if operation in STREAMING:  # GetMedia, GetClip, GetMediaForFragmentList
            assert issubclass(returns, Response), operation
        else:
            assert returns is RESPONSES[operation], operation
