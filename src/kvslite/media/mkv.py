"""Incremental EBML/Matroska reader and a small KVS-style Matroska writer.

The reader takes a PutMedia body in arbitrary chunks and yields `StreamHeader`,
`Cluster` and `Tags` events as soon as each is known complete. An unknown-size
Cluster ends at the first element ID that cannot be a Cluster child; a known-size
element ends with its last byte. Memory is bounded by the current cluster.

What the producer sent is kept: `StreamHeader.raw` holds the EBML header, Info and
Tracks as received and each `Frame.block` its SimpleBlock or BlockGroup, so the server
stores them byte for byte (`header_bytes`, `write_cluster`); only the Cluster framing
(ID, size, Timecode) is written anew. Only what KVS needs is interpreted; a track whose
frames are compressed or encrypted (ContentEncodings) is refused, as they could not be
served as sent.

The code lives in mkv_model (data), mkv_read + mkv_parse (reader) and mkv_write (writers);
import it from here.
"""

from __future__ import annotations

from .ebml import MkvError
from .mkv_model import Cluster, Frame, StreamHeader, Tags, Track
from .mkv_read import MkvReader
from .mkv_write import header_bytes, write_cluster, write_header, write_tags

__all__ = ["MkvError", "Track", "StreamHeader", "Frame", "Cluster", "Tags", "MkvReader",
           "header_bytes", "write_header", "write_cluster", "write_tags"]
