"""Fragment events: tags that ask KVS to generate images from a fragment and/or to send a
notification once it is PERSISTED, as the AWS producer SDK's putKinesisVideoEventMetadata.

The SDK writes them just before the fragment's Cluster, as segment-level elements: one Tags
element per event type, notification first, then image generation, each a single Tag whose
SimpleTags are siblings: the event's own tag (empty value), for image generation the S3
image prefix if any, then the custom name/value pairs (repeated under each event).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from kvslite.media import mkv
from kvslite.media.limits import (  # the SDK refuses events beyond these limits, as we do
    IMAGE_GENERATION_TAG,
    IMAGE_PREFIX_TAG,
    MAX_EVENT_NAME_BYTES,
    MAX_EVENT_PAIRS,
    MAX_EVENT_VALUE_BYTES,
    MAX_IMAGE_PREFIX_BYTES,
    NOTIFICATION_TAG,
    RESERVED_TAG_PREFIX,
    clean_image_prefix,
)

from .errors import FragmentEventError


EVENT_TYPES = ("image-generation", "notification")  # as `kvslite put --event` names them


@dataclass(frozen=True)
class FragmentEvent:
    """What AWS is to do with a fragment: generate images from it into S3 (per the stream's
    ImageGenerationConfiguration, under `image_prefix` if given) and/or send a notification
    (per the stream's NotificationConfiguration) once it is PERSISTED. `metadata` holds up to
    10 custom name/value pairs sent with each event. Invalid values raise FragmentEventError
    (a ValueError and a SourceError)."""

    image_generation: bool = False
    notification: bool = False
    image_prefix: str | None = None
    metadata: dict[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "metadata", dict(self.metadata))  # a copy, in order
        self.validate()

    def validate(self) -> None:
        if not (self.image_generation or self.notification):
            raise FragmentEventError("event", "a FragmentEvent needs image_generation or "
                                              "notification (or both)")
        if self.image_prefix is not None:
            _check_image_prefix(self.image_prefix, self.image_generation)
        if len(self.metadata) > MAX_EVENT_PAIRS:
            raise FragmentEventError("metadata", f"at most {MAX_EVENT_PAIRS} metadata pairs, got "
                                                 f"{len(self.metadata)}")
        for name, value in self.metadata.items():
            _check_pair(name, value)

    def tag_groups(self) -> list[list[tuple[str, str]]]:
        """The (TagName, TagString) pairs of each Tags element, in the SDK's order."""
        pairs = list(self.metadata.items())
        groups = []
        if self.notification:
            groups.append([(NOTIFICATION_TAG, ""), *pairs])
        if self.image_generation:
            prefix = [(IMAGE_PREFIX_TAG, self.image_prefix)] if self.image_prefix else []
            groups.append([(IMAGE_GENERATION_TAG, ""), *prefix, *pairs])
        return groups

    def mkv_tags(self) -> bytes:
        """The Tags elements to write just before the fragment's Cluster."""
        return b"".join(mkv.write_tags(group) for group in self.tag_groups())


def _check_image_prefix(prefix: str, image_generation: bool) -> None:
    if not isinstance(prefix, str):
        raise FragmentEventError("image_prefix", f"image_prefix must be a string, not "
                                                 f"{type(prefix).__name__}")
    if not image_generation:
        raise FragmentEventError("image_prefix", "image_prefix applies to image generation "
                                                 "only: set image_generation too")
    if not prefix:
        raise FragmentEventError("image_prefix", "image_prefix is empty (None for no prefix)")
    if len(prefix.encode()) > MAX_IMAGE_PREFIX_BYTES:
        raise FragmentEventError("image_prefix", f"image_prefix is {len(prefix.encode())} "
                                                 f"bytes long, more than "
                                                 f"{MAX_IMAGE_PREFIX_BYTES} (UTF-8)")
    if prefix.startswith(RESERVED_TAG_PREFIX):
        raise FragmentEventError("image_prefix", f"image_prefix {prefix!r} starts with "
                                                 f"{RESERVED_TAG_PREFIX!r}, which is reserved")
    try:
        clean_image_prefix(prefix)
    except ValueError as e:
        raise FragmentEventError("image_prefix", f"image_prefix {prefix!r}: {e}") from None


def _check_pair(name: str, value: str) -> None:
    if not isinstance(name, str) or not isinstance(value, str):
        raise FragmentEventError("metadata", f"metadata names and values must be strings: "
                                             f"{name!r}: {value!r}")
    size = len(name.encode())
    if not 1 <= size <= MAX_EVENT_NAME_BYTES:
        raise FragmentEventError("metadata", f"metadata name {name!r} is {size} bytes long, "
                                             f"not 1 to {MAX_EVENT_NAME_BYTES} (UTF-8)")
    if name.startswith(RESERVED_TAG_PREFIX):
        raise FragmentEventError("metadata", f"metadata name {name!r} starts with "
                                             f"{RESERVED_TAG_PREFIX!r}, which is reserved")
    if len(value.encode()) > MAX_EVENT_VALUE_BYTES:
        raise FragmentEventError("metadata", f"the value of metadata {name!r} is "
                                             f"{len(value.encode())} bytes long, more than "
                                             f"{MAX_EVENT_VALUE_BYTES} (UTF-8)")


EventChooser = Callable[[int, int], "FragmentEvent | None"]  # (index, timecode ms) -> event
Events = FragmentEvent | EventChooser | None  # what Producer.put's `events` takes


def event_chooser(events: Events) -> EventChooser | None:
    """`events` as a function of (fragment index, cluster timecode ms); None: no events."""
    if events is None:
        return None
    if isinstance(events, FragmentEvent):
        return lambda index, timecode_ms: events
    if callable(events):
        return events
    raise TypeError(f"events must be a FragmentEvent, a function (index, timecode_ms) -> "
                    f"FragmentEvent | None, or None; not {type(events).__name__}")


def every_nth_fragment(event: FragmentEvent, n: int) -> EventChooser:
    """`event` on fragments 0, n, 2n, ... (in send order)."""
    if n < 1:
        raise ValueError(f"n must be at least 1, not {n}")
    return lambda index, timecode_ms: event if index % n == 0 else None


def parse_event_types(text: str) -> tuple[bool, bool]:
    """`kvslite put --event`: "image-generation,notification" -> (image_generation,
    notification). Raises ValueError naming the valid types."""
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in EVENT_TYPES]
    if unknown or not names:
        what = f"{unknown[0]!r} is not one of" if unknown else "give one or more of"
        raise ValueError(f"{what} {', '.join(EVENT_TYPES)} (comma-separated)")
    return "image-generation" in names, "notification" in names


def parse_metadata(items: Iterable[str]) -> dict[str, str]:
    """`kvslite put --meta KEY=VALUE ...` -> the pairs, in order. Raises ValueError."""
    pairs: dict[str, str] = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        if name in pairs:
            raise ValueError(f"{name!r} given twice")
        pairs[name] = value
    return pairs
