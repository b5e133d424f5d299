"""The real engines some tests start (PostgreSQL, SeaweedFS, libfaketime, openssl, a tmpfs).

On a developer's machine a missing engine skips the tests that need it, saying what to
install. On CI (`CI` set), where scripts/test installs every engine, a missing one is a
failure: a suite that quietly skipped what it exists to prove would pass for nothing.
"""

from __future__ import annotations

import glob
import os

import pytest

LIBFAKETIME = next(iter(sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))), None)


def need(available: bool, what: str) -> None:
    if available:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing on CI, where scripts/test installs it", pytrace=False)
    pytest.skip(f"{what} is not available here (./scripts/test installs it)",
                allow_module_level=True)
