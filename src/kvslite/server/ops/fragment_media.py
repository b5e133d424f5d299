"""How stored fragments go out as MKV, laid out as AWS lays them out.

Each fragment is a self-contained MKV: the stream header (EBML header, Segment, Info,
Tracks), a Tags element with the fragment's number and timestamps, the cluster, and
optionally trailing tags (GetMedia's MILLIS_BEHIND_NOW and CONTINUATION_TOKEN).
Consumers such as AWS's own parsers split a response on the EBML headers.
"""

from __future__ import annotations

from kvslite.server.archive import Fragment
from kvslite.server.archive.fragments import Archive
from kvslite.media import mkv

MEDIA_TYPE = "video/webm"


def fragment_tags(fragment: Fragment) -> list[tuple[str, str]]:
    """The tags AWS writes before each fragment it serves."""
    return [
        ("AWS_KINESISVIDEO_FRAGMENT_NUMBER", fragment.number),
        ("AWS_KINESISVIDEO_SERVER_TIMESTAMP", _seconds(fragment.server_ms)),
        ("AWS_KINESISVIDEO_PRODUCER_TIMESTAMP", _seconds(fragment.producer_ms)),
    ]


def fragment_mkv(archive: Archive, fragment: Fragment,
                 trailer: list[tuple[str, str]] | None = None) -> bytes:
    """One fragment as a self-contained MKV, with `trailer` tags after the cluster."""
    parts = [archive.header(fragment.header_id), mkv.write_tags(fragment_tags(fragment)),
             archive.cluster_bytes(fragment)]
    if trailer:
        parts.append(mkv.write_tags(trailer))
    return b"".join(parts)


def _seconds(ms: int) -> str:
    return f"{ms // 1000}.{ms % 1000:03d}"
