"""The `kinesis-video-archived-media` service, reading the archive back: ListFragments,
GetMediaForFragmentList and GetImages. (GetClip and the streaming sessions have their
own modules, `clips` and `streaming_sessions`.)
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator

from starlette.concurrency import iterate_in_threadpool
from starlette.responses import StreamingResponse

from kvslite.server import metrics
from kvslite.server.archive import Clock, Fragment, Stream, seq_of
from kvslite.server.archive.control_plane import ControlPlane, require_archive
from kvslite.server.archive.fragments import Archive, FragmentGone
from kvslite.server.archive.sampling import (ImageRequest, ImageSampler, check_sampling_interval,
                                      jpeg_quality)
from kvslite.server.api_errors import invalid
from kvslite.server.ops import requests as rq
from kvslite.server.ops import responses as rs
from kvslite.server.ops.fragment_media import MEDIA_TYPE, fragment_mkv

DEFAULT_MAX_FRAGMENTS = 100
DEFAULT_MAX_IMAGES = 100


class ArchivedMedia:
    def __init__(self, control: ControlPlane, archive: Archive, images: ImageSampler, *,
                 min_sampling_interval_ms: int):
        self.control = control
        self.archive = archive
        self.images = images
        self.min_sampling_interval_ms = min_sampling_interval_ms

    def operations(self) -> dict:
        return {"ListFragments": self.list_fragments,
                "GetMediaForFragmentList": self.get_media_for_fragment_list,
                "GetImages": self.get_images}

    def _stream(self, request) -> Stream:
        return require_archive(self.control.resolve(request.stream_name, request.stream_arn))

    # -- ListFragments ------------------------------------------------------------------

    def list_fragments(self, request: rq.ListFragmentsInput) -> rs.ListFragmentsOutput:
        stream = self._stream(request)
        limit = request.max_results or DEFAULT_MAX_FRAGMENTS
        if request.next_token:
            query = _decode_token(request.next_token)
        elif request.fragment_selector:
            query = _FragmentQuery.from_selector(request.fragment_selector)
        else:
            query = _FragmentQuery()
        page = self.archive.fragments(stream.arn, after_seq=query.after_seq, limit=limit + 1,
                                      clock=query.clock, start_ms=query.start_ms,
                                      end_ms=query.end_ms)
        result: rs.ListFragmentsOutput = {"Fragments": [fragment_shape(f) for f in page[:limit]]}
        if len(page) > limit:
            result["NextToken"] = _encode_token(query, after=page[limit - 1])
        return result

    # -- GetMediaForFragmentList --------------------------------------------------------

    def get_media_for_fragment_list(self, request: rq.GetMediaForFragmentListInput
                                    ) -> StreamingResponse:
        stream = self._stream(request)
        numbers = request.fragments
        found = self.archive.by_numbers(stream.arn, numbers)
        missing = [n for n in numbers if n not in found]
        if missing:
            raise invalid(f"Fragment numbers are invalid: {', '.join(missing[:5])}")
        chunks = self._fragment_chunks([found[n] for n in numbers])
        return StreamingResponse(iterate_in_threadpool(chunks), media_type=MEDIA_TYPE)

    def _fragment_chunks(self, fragments: list[Fragment]) -> Iterator[bytes]:
        """Each fragment a self-contained MKV, in request order (AWS's layout)."""
        for fragment in fragments:
            try:
                yield fragment_mkv(self.archive, fragment)
            except FragmentGone:
                continue  # retention removed it while the response was being sent

    # -- GetImages ----------------------------------------------------------------------

    def get_images(self, request: rq.GetImagesInput) -> rs.GetImagesOutput:
        stream = self._stream(request)
        wanted = self._image_request(stream, request)
        first = 0
        if request.next_token:
            first = self.images.index_from(wanted, request.next_token)
        with metrics.IMAGE_SECONDS.time():
            images, next_index = self.images.page(wanted, first,
                                                  request.max_results or DEFAULT_MAX_IMAGES)
        metrics.IMAGE_REQUESTS.inc()
        metrics.IMAGES.inc(sum(1 for image in images if image.content))
        result: rs.GetImagesOutput = {"Images": [
            {"TimeStamp": image.time_ms / 1000, "Error": image.error,
             "ImageContent": base64.b64encode(image.content).decode() if image.content else None}
            for image in images
        ]}
        if next_index is not None:
            result["NextToken"] = self.images.token_for(wanted, next_index)
        return result

    def _image_request(self, stream: Stream, request: rq.GetImagesInput) -> ImageRequest:
        start_ms = round(request.start_timestamp * 1000)
        end_ms = round(request.end_timestamp * 1000)
        if start_ms > end_ms:
            raise invalid("StartTimestamp must not be after EndTimestamp")
        interval = request.sampling_interval
        if interval is None:
            interval = self.min_sampling_interval_ms
        check_sampling_interval(interval, self.min_sampling_interval_ms)
        return ImageRequest(
            stream_arn=stream.arn, clock=Clock(request.image_selector_type),
            start_ms=start_ms, end_ms=end_ms, interval_ms=interval,
            image_format=request.format, quality=jpeg_quality(request.format_config),
            width=request.width_pixels, height=request.height_pixels)


def fragment_shape(fragment: Fragment) -> rs.Fragment:
    return {
        "FragmentNumber": fragment.number,
        "FragmentSizeInBytes": fragment.size,
        "ProducerTimestamp": fragment.producer_ms / 1000,
        "ServerTimestamp": fragment.server_ms / 1000,
        "FragmentLengthInMilliseconds": fragment.duration_ms,
    }


class _FragmentQuery:
    """What a ListFragments page asks for; its NextToken carries it to the next page."""

    def __init__(self, clock: Clock | None = None, start_ms: int = 0, end_ms: int = 0,
                 after_seq: int = 0):
        self.clock, self.start_ms, self.end_ms, self.after_seq = clock, start_ms, end_ms, after_seq

    @classmethod
    def from_selector(cls, selector: rq.FragmentSelector) -> _FragmentQuery:
        start = selector.timestamp_range.start_timestamp
        end = selector.timestamp_range.end_timestamp
        if start > end:
            raise invalid("TimestampRange StartTimestamp must not be after EndTimestamp")
        return cls(Clock(selector.fragment_selector_type), round(start * 1000),
                   round(end * 1000))


def _encode_token(query: _FragmentQuery, *, after: Fragment) -> str:
    fields: dict[str, str | int] = {"after": after.number}
    if query.clock is not None:
        fields.update(selector=query.clock.value, start=query.start_ms, end=query.end_ms)
    return base64.b64encode(json.dumps(fields, separators=(",", ":")).encode()).decode()


def _decode_token(token: str) -> _FragmentQuery:
    try:
        fields = json.loads(base64.b64decode(token, validate=True))
        if not isinstance(fields, dict) or set(fields) not in (
                {"after"}, {"after", "selector", "start", "end"}):
            raise ValueError
        after_seq = seq_of(fields["after"]) if isinstance(fields["after"], str) else None
        if after_seq is None:
            raise ValueError
        if "selector" not in fields:
            return _FragmentQuery(after_seq=after_seq)
        start, end = fields["start"], fields["end"]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, end)):
            raise ValueError
        return _FragmentQuery(Clock(fields["selector"]), start, end, after_seq)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise invalid("NextToken is not valid") from None
