"""Fragments: how a cluster is archived, indexed and read back.

A fragment is stored as one canonical Matroska Cluster blob (written by
`kvslite.media.mkv.write_cluster`) plus a row of metadata whose `frames`
column indexes every frame: track, keyframe flag, timestamp offset and the
byte range of its payload inside the blob. Readers slice payloads straight
out of the blob and never parse a cluster again.
"""

from __future__ import annotations

import secrets
import struct
from dataclasses import dataclass

from kvslite.media import mkv
from kvslite.store.files import FileBlobStore
from kvslite.store.metadata import Fragment, MetadataStore, Stream

# track, keyframe, pts offset from fragment start (ms), payload offset, payload size
_FRAME = struct.Struct("<BBiII")


@dataclass(frozen=True)
class FrameEntry:
    track: int
    keyframe: bool
    offset_ms: int  # presentation time relative to the fragment's start
    payload_offset: int
    size: int


def pack_frames(entries: list[FrameEntry]) -> bytes:
    return b"".join(_FRAME.pack(e.track, e.keyframe, e.offset_ms, e.payload_offset, e.size)
                    for e in entries)


def unpack_frames(data: bytes) -> list[FrameEntry]:
    return [FrameEntry(track, bool(key), offset, start, size)
            for track, key, offset, start, size in _FRAME.iter_unpack(data)]


def stream_dir(stream: Stream) -> str:
    """Blob folder of a stream; the creation time keeps a recreated name apart."""
    return f"streams/{stream.arn.rsplit('/', 1)[1]}-{stream.name}"


def fragment_duration_ms(frames: list[mkv.Frame], start_ms: int, to_ms, default_ms: int) -> int:
    """Span from the fragment start to the end of its last-shown frame.

    The last frame is shown for the typical frame interval of the fragment (or the
    track's DefaultDuration), so back-to-back fragments tile time without gaps.
    """
    times = sorted({to_ms(f.timecode) for f in frames})
    if len(times) > 1:
        frame_ms = max(1, round((times[-1] - times[0]) / (len(times) - 1)))
    else:
        frame_ms = max(1, default_ms)
    return max(1, times[-1] - start_ms + frame_ms)


class Archive:
    """Persist and read fragments: blobs in the blob store, index in the metadata store."""

    def __init__(self, store: MetadataStore, blobs: FileBlobStore):
        self.store = store
        self.blobs = blobs
        self._headers: dict[int, bytes] = {}  # headers never change once saved

    def save_header(self, stream: Stream, header: mkv.StreamHeader) -> int:
        return self.store.save_header(stream.arn, mkv.write_header(header))

    def header(self, header_id: int) -> bytes:
        if header_id not in self._headers:
            self._headers[header_id] = self.store.get_header(header_id)
        return self._headers[header_id]

    def persist(self, stream: Stream, header_id: int, cluster: mkv.Cluster, *,
                producer_ms: int, server_ms: int, duration_ms: int, to_ms) -> Fragment:
        """Write the cluster durably, then commit its index row: PERSISTED after this."""
        data, offsets = mkv.write_cluster(cluster)
        entries = [
            FrameEntry(f.track_number, f.keyframe, to_ms(f.timecode) - producer_ms, offset,
                       len(f.payload))
            for f, offset in zip(cluster.frames, offsets)
        ]
        key = f"{stream_dir(stream)}/{producer_ms}-{secrets.token_hex(4)}.mkv"
        self.blobs.put(key, data)
        return self.store.add_fragment(
            arn=stream.arn, producer_ms=producer_ms, server_ms=server_ms,
            duration_ms=duration_ms, size=len(data), header_id=header_id, blob_key=key,
            frames=pack_frames(entries))

    def cluster_bytes(self, fragment: Fragment) -> bytes:
        return self.blobs.get(fragment.blob_key)

    def payload(self, fragment: Fragment, entry: FrameEntry) -> bytes:
        return self.blobs.get(fragment.blob_key, entry.payload_offset, entry.size)

    def delete_stream_media(self, stream: Stream) -> None:
        self.blobs.delete_prefix(stream_dir(stream))
