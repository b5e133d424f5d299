"""Shared fixtures for the media tests: small synthetic videos, encoded once per session."""

import pytest

from kvslite.media.synthetic import encode_video


@pytest.fixture(scope="session")
def h264_video():
    # 2 s at 160x120, GOP 10, 2 B-frames: 5 clusters, small and fast.
    return encode_video("h264", width=160, height=120, fps=25, seconds=2.0, gop=10, bframes=2)


@pytest.fixture(scope="session")
def h265_video():
    return encode_video("h265", width=160, height=120, fps=25, seconds=2.0, gop=10, bframes=2)
