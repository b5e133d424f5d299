"""KVS's limits on what a producer sends, shared by the server's ingest and the producer.

One home for each number: the server enforces them, the producer stays within them,
readers rely on them to bound their lookups, and the web viewer gets them from here too.
"""

from __future__ import annotations


MAX_FRAGMENT_MS = 20_000  # frames of one fragment span at most this (PutMedia ERROR 4002)
MAX_FRAGMENT_BYTES = 50 * 1024 * 1024  # one fragment's cluster (ERROR 4001)
MAX_TRACKS = 3  # tracks in a stream header (ERROR 4012)
# Frames (blocks) in one fragment (ERROR 4009): 20 s of 60 fps video plus audio is ~2,500;
# the limit keeps a fragment of millions of empty blocks from costing memory and CPU.
MAX_FRAGMENT_FRAMES = 10_000
MAX_FUTURE_MS = 60_000  # producer clocks drift; further ahead than this is a bad clock (4007)

# A stored fragment's span [start, start + duration) is never longer than this: its frames
# spread over at most MAX_FRAGMENT_MS, and its last frame is shown for at most the rest.
# Lookups by time reach back this far to find the fragment that covers an instant.
MAX_FRAGMENT_SPAN_MS = 3 * MAX_FRAGMENT_MS

VIDEO_TRACK_TYPE = 1  # Matroska TrackType of video

# Fragment events (the producer SDK's putKinesisVideoEventMetadata): the SimpleTags that ask
# for images or a notification, and the limits on the custom name/value pairs they carry.
IMAGE_GENERATION_TAG = "AWS_KINESISVIDEO_IMAGE_GENERATION"
IMAGE_PREFIX_TAG = "AWS_KINESISVIDEO_IMAGE_PREFIX"
NOTIFICATION_TAG = "AWS_KINESISVIDEO_NOTIFICATION"
MAX_EVENT_PAIRS = 10
MAX_EVENT_NAME_BYTES = 128
MAX_EVENT_VALUE_BYTES = 256
MAX_IMAGE_PREFIX_BYTES = 256
RESERVED_TAG_PREFIX = "AWS"  # names and image prefixes starting so are the service's own
# AWS documents only the image prefix's length. It becomes the start of an S3 object's name
# (after the configured Uri's prefix), so it keeps to S3's safe characters for object names,
# letters of any script included: letters, digits and ! - _ . * ' ( ). No "/" to reach another
# folder, no "..", no spaces or control characters: no image lands outside the configured
# prefix. Slashes and spaces around it are dropped ("doorbell/" is "doorbell").
IMAGE_PREFIX_PUNCTUATION = frozenset("!-_.*'()")


def clean_image_prefix(prefix: str) -> str:
    """The image prefix (AWS_KINESISVIDEO_IMAGE_PREFIX) to use, "" for none; ValueError
    saying why for one that cannot be."""
    prefix = prefix.strip().strip("/")
    if len(prefix.encode()) > MAX_IMAGE_PREFIX_BYTES:
        raise ValueError(f"it is longer than {MAX_IMAGE_PREFIX_BYTES} bytes (UTF-8)")
    if ".." in prefix or not all(c.isalnum() or c in IMAGE_PREFIX_PUNCTUATION for c in prefix):
        raise ValueError("it may hold only letters, digits and ! - _ . * ' ( ), and no '..'")
    return prefix


def video_track(tracks):
    """The stream's video track (the first of type video), or None: frames are indexed,
    timed and decoded by it."""
    return next((t for t in tracks if t.track_type == VIDEO_TRACK_TYPE), None)
