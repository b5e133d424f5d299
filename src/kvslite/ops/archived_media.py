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

from kvslite.archive import Clock, Fragment, Stream, seq_of
from kvslite.archive.control_plane import ControlPlane, require_archive
from kvslite.archive.fragments import Archive
from kvslite.archive.sampling import ImageRequest, ImageSampler
from kvslite.errors import invalid
from kvslite.ops.fragment_media import MEDIA_TYPE, fragment_mkv

DEFAULT_MAX_FRAGMENTS = 100
DEFAULT_MAX_IMAGES = 100
DEFAULT_JPEG_QUALITY = 80


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

    def _stream(self, params: dict) -> Stream:
        return require_archive(self.control.resolve(params.get("StreamName"),
                                                    params.get("StreamARN")))

    # -- ListFragments ------------------------------------------------------------------

    def list_fragments(self, params: dict) -> dict:
        stream = self._stream(params)
        limit = params.get("MaxResults", DEFAULT_MAX_FRAGMENTS)
        if params.get("NextToken"):
            query = _decode_token(params["NextToken"])
        else:
            query = _FragmentQuery()
            if params.get("FragmentSelector"):
                query = _FragmentQuery.from_selector(params["FragmentSelector"])
        page = self.archive.fragments(stream.arn, after_seq=query.after_seq, limit=limit + 1,
                                      clock=query.clock, start_ms=query.start_ms,
                                      end_ms=query.end_ms)
        result = {"Fragments": [fragment_shape(f) for f in page[:limit]]}
        if len(page) > limit:
            result["NextToken"] = _encode_token(query, after=page[limit - 1])
        return result

    # -- GetMediaForFragmentList --------------------------------------------------------

    def get_media_for_fragment_list(self, params: dict) -> StreamingResponse:
        stream = self._stream(params)
        numbers = params["Fragments"]
        found = self.archive.by_numbers(stream.arn, numbers)
        missing = [n for n in numbers if n not in found]
        if missing:
            raise invalid(f"Fragment numbers are invalid: {', '.join(missing[:5])}")
        chunks = self._fragment_chunks([found[n] for n in numbers])
        return StreamingResponse(iterate_in_threadpool(chunks), media_type=MEDIA_TYPE)

    def _fragment_chunks(self, fragments: list[Fragment]) -> Iterator[bytes]:
        """Each fragment a self-contained MKV, in request order (AWS's layout)."""
        for fragment in fragments:
            yield fragment_mkv(self.archive, fragment)

    # -- GetImages ----------------------------------------------------------------------

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
            stream_arn=stream.arn, clock=Clock(params["ImageSelectorType"]),
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


class _FragmentQuery:
    """What a ListFragments page asks for; its NextToken carries it to the next page."""

    def __init__(self, clock: Clock | None = None, start_ms: int = 0, end_ms: int = 0,
                 after_seq: int = 0):
        self.clock, self.start_ms, self.end_ms, self.after_seq = clock, start_ms, end_ms, after_seq

    @classmethod
    def from_selector(cls, selector: dict) -> _FragmentQuery:
        start = selector["TimestampRange"]["StartTimestamp"]
        end = selector["TimestampRange"]["EndTimestamp"]
        if start > end:
            raise invalid("TimestampRange StartTimestamp must not be after EndTimestamp")
        return cls(Clock(selector["FragmentSelectorType"]), round(start * 1000),
                   round(end * 1000))


def _encode_token(query: _FragmentQuery, *, after: Fragment) -> str:
    fields = {"after": after.number}
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
