"""The `kinesis-video-archived-media` service: reading the archive back.

ListFragments, GetMediaForFragmentList and GetImages; GetClip and the
streaming-session APIs join as they land.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator

from starlette.responses import StreamingResponse

from kvslite.archive.fragments import Archive
from kvslite.archive.images import ImageRequest, ImageSampler
from kvslite.archive.streams import Streams
from kvslite.errors import ApiError, invalid
from kvslite.media import mkv
from kvslite.store.metadata import Fragment, Stream

DEFAULT_MAX_FRAGMENTS = 100
DEFAULT_MAX_IMAGES = 100
DEFAULT_JPEG_QUALITY = 80
MEDIA_TYPE = "video/webm"
TIME_COLUMNS = {"PRODUCER_TIMESTAMP": "producer_ms", "SERVER_TIMESTAMP": "server_ms"}


class ArchivedMedia:
    def __init__(self, streams: Streams, archive: Archive, images: ImageSampler, *,
                 min_sampling_interval_ms: int):
        self.streams = streams
        self.archive = archive
        self.images = images
        self.min_sampling_interval_ms = min_sampling_interval_ms

    def _stream(self, params: dict) -> Stream:
        stream = self.streams.resolve(params.get("StreamName"), params.get("StreamARN"))
        if stream.data_retention_hours == 0:
            raise ApiError("NoDataRetentionException",
                           f"Stream {stream.name} has no data retention, so no archive")
        return stream

    def list_fragments(self, params: dict) -> dict:
        stream = self._stream(params)
        limit = params.get("MaxResults", DEFAULT_MAX_FRAGMENTS)
        query = {"after_seq": 0}
        if params.get("NextToken"):
            query = _decode_token(params["NextToken"])
        elif params.get("FragmentSelector"):
            selector = params["FragmentSelector"]
            start = selector["TimestampRange"]["StartTimestamp"]
            end = selector["TimestampRange"]["EndTimestamp"]
            if start > end:
                raise invalid("TimestampRange StartTimestamp must not be after EndTimestamp")
            query.update(time_column=TIME_COLUMNS[selector["FragmentSelectorType"]],
                         start_ms=round(start * 1000), end_ms=round(end * 1000))
        page = self.archive.store.list_fragments(stream.arn, limit=limit + 1, **query)
        result = {"Fragments": [fragment_shape(f) for f in page[:limit]]}
        if len(page) > limit:
            result["NextToken"] = _encode_token({**query, "after_seq": page[limit - 1].seq})
        return result

    def get_media_for_fragment_list(self, params: dict) -> StreamingResponse:
        stream = self._stream(params)
        numbers = params["Fragments"]
        found = self.archive.store.fragments_by_number(stream.arn, numbers)
        missing = [n for n in numbers if n not in found]
        if missing:
            raise invalid(f"Fragment numbers are invalid: {', '.join(missing[:5])}")
        fragments = [found[n] for n in numbers]
        return StreamingResponse(self._mkv_chunks(fragments), media_type=MEDIA_TYPE)

    def _mkv_chunks(self, fragments: list[Fragment]) -> Iterator[bytes]:
        """One header per track set, then each fragment's tags and cluster, in order."""
        header_id = None
        for fragment in fragments:
            if fragment.header_id != header_id:
                header_id = fragment.header_id
                yield self.archive.header(header_id)
            yield mkv.write_tags(fragment_tags(fragment))
            yield self.archive.cluster_bytes(fragment)


    def get_images(self, params: dict) -> dict:
        stream = self._stream(params)
        request = self._image_request(stream, params)
        first = 0
        if params.get("NextToken"):
            first = self.images.index_from(request, params["NextToken"])
        images, next_index = self.images.page(request, first,
                                              params.get("MaxResults", DEFAULT_MAX_IMAGES))
        result = {"Images": [
            {"TimeStamp": image.time_ms / 1000, "Error": image.error,
             "ImageContent": base64.b64encode(image.content).decode() if image.content else None}
            for image in images
        ]}
        if next_index is not None:
            result["NextToken"] = self.images.token_for(request, next_index)
        return result

    def _image_request(self, stream: Stream, params: dict) -> ImageRequest:
        start_ms = round(params["StartTimestamp"] * 1000)
        end_ms = round(params["EndTimestamp"] * 1000)
        if start_ms > end_ms:
            raise invalid("StartTimestamp must not be after EndTimestamp")
        interval = params.get("SamplingInterval", self.min_sampling_interval_ms)
        if interval < self.min_sampling_interval_ms:
            raise invalid(f"SamplingInterval must be at least {self.min_sampling_interval_ms} "
                          f"ms on this server, got {interval}")
        quality = (params.get("FormatConfig") or {}).get("JPEGQuality",
                                                         str(DEFAULT_JPEG_QUALITY))
        if not quality.isdigit() or not 1 <= int(quality) <= 100:
            raise invalid(f"FormatConfig JPEGQuality must be an integer from 1 to 100, "
                          f"got {quality!r}")
        return ImageRequest(
            stream_arn=stream.arn, clock=TIME_COLUMNS[params["ImageSelectorType"]],
            start_ms=start_ms, end_ms=end_ms, interval_ms=interval,
            image_format=params["Format"], quality=int(quality),
            width=params.get("WidthPixels"), height=params.get("HeightPixels"))


def fragment_shape(fragment: Fragment) -> dict:
    return {
        "FragmentNumber": fragment.number,
        "FragmentSizeInBytes": fragment.size,
        "ProducerTimestamp": fragment.producer_ms / 1000,
        "ServerTimestamp": fragment.server_ms / 1000,
        "FragmentLengthInMilliseconds": fragment.duration_ms,
    }


def fragment_tags(fragment: Fragment) -> list[tuple[str, str]]:
    """The tags AWS writes before each fragment it serves."""
    return [
        ("AWS_KINESISVIDEO_FRAGMENT_NUMBER", fragment.number),
        ("AWS_KINESISVIDEO_SERVER_TIMESTAMP", _seconds(fragment.server_ms)),
        ("AWS_KINESISVIDEO_PRODUCER_TIMESTAMP", _seconds(fragment.producer_ms)),
    ]


def _seconds(ms: int) -> str:
    return f"{ms // 1000}.{ms % 1000:03d}"


def _encode_token(query: dict) -> str:
    return base64.b64encode(json.dumps(query, separators=(",", ":")).encode()).decode()


def _decode_token(token: str) -> dict:
    try:
        query = json.loads(base64.b64decode(token, validate=True))
        allowed = {"after_seq", "time_column", "start_ms", "end_ms"}
        if not isinstance(query, dict) or not set(query) <= allowed or \
                not all(isinstance(v, (int, str)) for v in query.values()) or \
                query.get("time_column", "producer_ms") not in TIME_COLUMNS.values():
            raise ValueError
        return query
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise invalid("NextToken is not valid") from None
