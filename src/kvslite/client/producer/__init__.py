"""A Python Kinesis Video Streams producer: compressed video in, PutMedia out.

Use it against kvslite or real AWS (the protocol is the same):

    from kvslite.client.producer import Producer, VideoFormat

    producer = Producer("front-door", endpoint_url="http://127.0.0.1:4567")
    summary = producer.put(packets, VideoFormat("h264", codec_private=avcc))
    print(summary.fragments_persisted, summary.fragment_numbers)

`packets` is any iterable of `(pts_ms, keyframe, payload)` in decode order (or `Packet`s);
payloads are length-prefixed NAL units (with an avcC/hvcC `codec_private`) or Annex-B
(start codes; the avcC/hvcC record is then built from the SPS/PPS in the stream).
`put_source("clip.mp4", "front-door")` does the same for anything FFmpeg can demux.
`events=FragmentEvent(image_generation=True)` (or a function of the fragment's index and
timecode) asks AWS to generate images from fragments and/or to notify when they persist.

How it works, one module per step:

- video: `Packet` and `VideoFormat`, what goes up (H.264 or H.265).
- annexb: Annex-B packets -> length-prefixed NAL units, and the avcC/hvcC record built
  from the SPS/PPS (and VPS) found in the stream.
- fragments: packets -> KVS-style Matroska, one Cluster per GOP (a fragment), absolute
  cluster timecodes in epoch ms: producer start time + the pts offset from the first keyframe.
- events: `FragmentEvent`, the image generation / notification Tags put before a Cluster.
- connection: the MKV streams as the chunked body of `POST <DataEndpoint>/putMedia`, SigV4-
  signed over the empty payload hash, while the server's JSON acks (acks) are read on the
  same connection (asyncio + h11). The packets are read in a thread (readahead) so that
  acks keep flowing; the upload ends when every fragment has its final ack (PERSISTED, or
  RECEIVED for a stream that keeps no data); an ERROR ack raises `AckError`.
- producer: `Producer` (control plane + upload) and `put_source`; source: PyAV demuxing.
"""

from .acks import Ack, AckParser
from .annexb import (
                     AnnexBConverter,
                     avcc_from_parameter_sets,
                     hvcc_from_parameter_sets,
                     is_annexb,
                     split_annexb,
                     split_length_prefixed,
)
from .connection import putmedia_headers
from .errors import AckError, FragmentEventError, HttpError, ProducerError, SourceError
from .event_tags import FragmentEvent, every_nth_fragment
from .clusters import MAX_FRAGMENT_MS, USER_AGENT, FragmentBuilder, media_chunks
from .producer import DEFAULT_ENDPOINT_URL, Producer, put_source
from .source import MediaSource, open_source
from .summary import PutSummary
from .timestamps import format_timestamp, parse_timestamp
from .video import Packet, VideoFormat

__all__ = [
    "DEFAULT_ENDPOINT_URL", "MAX_FRAGMENT_MS", "USER_AGENT", "Ack", "AckError", "AckParser",
    "HttpError", "Packet", "Producer", "ProducerError", "PutSummary", "SourceError",
    "VideoFormat", "AnnexBConverter", "FragmentBuilder", "avcc_from_parameter_sets",
    "hvcc_from_parameter_sets", "split_annexb", "is_annexb", "split_length_prefixed",
    "parse_timestamp", "format_timestamp", "put_source", "open_source", "MediaSource",
    "media_chunks", "putmedia_headers", "FragmentEvent", "FragmentEventError",
    "every_nth_fragment",
]
