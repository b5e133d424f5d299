"""What kvslite keeps about streams, and the contract every metadata store fills.

The SQLite store is the embedded default; a PostgreSQL store fills the same contract
for scale-out. Stores persist records and make the guarantees below hold under
concurrency (threads, processes and nodes); the rules of the KVS API live in
`kvslite.server.archive`. tests/test_store_contract.py proves each guarantee, for every store.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from kvslite.server.store.new_fragments import NewFragments


class Clock(Enum):
    """Which clock a fragment time is read on; values are the API's selector names."""

    PRODUCER = "PRODUCER_TIMESTAMP"  # the producer's timestamps (cluster timecodes)
    SERVER = "SERVER_TIMESTAMP"  # when kvslite received the fragment's first byte


@dataclass(frozen=True)
class Stream:
    name: str
    arn: str
    version: str
    creation_time: float  # epoch seconds
    data_retention_hours: int
    kms_key_id: str
    status: str = "ACTIVE"
    device_name: str | None = None
    media_type: str | None = None


@dataclass(frozen=True)
class SignalingChannel:
    """A WebRTC signaling channel, where a master and its viewers meet."""

    name: str
    arn: str  # arn:aws:kinesisvideo:<region>:<account>:channel/<name>/<epoch-ms>
    channel_type: str  # SINGLE_MASTER or FULL_MESH
    status: str  # ACTIVE, or DELETING while it is removed
    message_ttl_seconds: int  # how long a message waits for an absent master
    version: str
    creation_time: float  # epoch seconds


@dataclass(frozen=True)
class Fragment:
    """One archived fragment: a Matroska cluster that starts with a keyframe."""

    arn: str  # the stream's
    seq: int  # 1, 2, 3... within the stream, in arrival order
    number: str  # the KVS FragmentNumber, derived from seq (see fragment_number)
    producer_ms: int  # fragment start on the producer's clock, epoch ms
    server_ms: int  # when kvslite started receiving it, epoch ms
    duration_ms: int
    size: int  # bytes of the stored cluster
    header_id: int  # the EBML header + Tracks it was produced with
    blob_key: str
    frames: bytes  # packed frame index, see kvslite.server.archive.fragments
    digest: bytes | None = None  # SHA-256 of the stored cluster: a resend has the same

    def start_ms(self, clock: Clock) -> int:
        """Where the fragment starts on `clock`, epoch ms."""
        return self.producer_ms if clock is Clock.PRODUCER else self.server_ms


def fragment_number(seq: int) -> str:
    """A 47-digit decimal string, like AWS's, that sorts and compares like `seq`."""
    return f"9{seq:046d}"


def seq_of(number: str) -> int | None:
    if len(number) != 47 or not (number.isascii() and number.isdigit()) or number[0] != "9":
        return None
    return int(number[1:])


ACTIVE = "ACTIVE"
DELETING = "DELETING"  # deleted, its media still being removed in the background


class NameTaken(Exception):
    """A stream (or signaling channel) with this name already exists."""


class MappedElsewhere(Exception):
    """The stream is mapped to another channel, the channel to another stream, or one of
    them is not ACTIVE: the media storage mapping was left as it was."""


class StreamNotActive(Exception):
    """The stream is gone or being deleted: nothing may be added to it."""


@dataclass(frozen=True)
class Delivery:
    """Work a fragment's event tags asked for, from the outbox: `kind` "image-generation" or
    "notification", `event` the tag's details as JSON (image prefix, custom pairs)."""

    id: int
    arn: str
    fragment_number: str
    kind: str
    event: str
    attempts: int


class LeaseLost(Exception):
    """The writer's lease expired or was taken over: its writes are fenced off."""


@dataclass(frozen=True)
class Lease:
    """A time-limited right to one of `limit` slots on a resource (e.g. the one PutMedia
    connection of a stream). `epoch` grows with every grant on the resource."""

    resource: str
    holder: str
    epoch: int


class MetadataStore(Protocol):
    """The guarantees, each holding with concurrent writers:

    - Stream names are unique among streams not being deleted (create raises NameTaken).
    - Stream updates and deletion are compare-and-set on the version.
    - The tag limit is checked and applied in one step: concurrent TagStreams never
      leave more than `max_tags`.
    - add_fragment allocates the stream's next seq atomically (1, 2, 3, ... without gaps
      or repeats); it stores at most one fragment per (stream, producer time, digest), so
      a resend racing its original is stored once; and in the same step it checks that
      the stream is ACTIVE and, when given, that the writer still holds its lease.
    - acquire_lease checks the limit and takes the slot in one step; an expired lease
      counts for nothing; epochs on a resource only grow.
    """

    # -- streams -------------------------------------------------------------------------

    def create_stream(self, stream: Stream, tags: dict[str, str]) -> None:
        """Insert a stream with its tags atomically; raise NameTaken on a duplicate name."""

    def get_stream(self, *, name: str | None = None, arn: str | None = None) -> Stream | None:
        """By ARN (whatever its status), or by name (only a stream not being deleted)."""

    def list_streams(self, *, prefix: str, after: str, limit: int) -> list[Stream]:
        """Streams not being deleted whose name starts with `prefix` and sorts after
        `after`, by name."""

    def update_stream(self, arn: str, expected_version: str, *, version: str,
                      device_name: str | None = None, media_type: str | None = None,
                      data_retention_hours: int | None = None) -> bool:
        """Set the new `version` and the fields given (None: unchanged) if the version
        still matches."""

    def mark_deleting(self, arn: str, expected_version: str | None) -> bool:
        """Set an ACTIVE stream DELETING (freeing its name); False if it is gone, already
        deleting, or the version moved on."""

    def deleting_streams(self) -> list[Stream]: ...

    def purge_stream(self, arn: str, lease_resources: Iterable[str] = ()) -> None:
        """Remove a stream's row with its tags, headers and fragment rows, and the leases
        on `lease_resources` (the stream's, named as the caller names them)."""

    def get_tags(self, arn: str) -> dict[str, str]: ...

    def put_tags(self, arn: str, tags: dict[str, str], max_tags: int) -> bool:
        """Add or overwrite tags; False (and nothing changed) if the total would exceed max_tags."""

    def delete_tags(self, arn: str, keys: list[str]) -> None: ...

    # -- signaling channels: the same guarantees as streams ---------------------------

    def create_channel(self, channel: SignalingChannel, tags: dict[str, str]) -> None:
        """Insert a channel with its tags atomically; raise NameTaken on a duplicate name."""

    def get_channel(self, *, name: str | None = None, arn: str | None = None
                    ) -> SignalingChannel | None:
        """By ARN (whatever its status), or by name (only a channel not being deleted)."""

    def list_channels(self, *, prefix: str, after: str, limit: int) -> list[SignalingChannel]:
        """Channels not being deleted whose name starts with `prefix` and sorts after
        `after`, by name."""

    def update_channel(self, arn: str, expected_version: str, *, version: str,
                       message_ttl_seconds: int | None = None) -> bool:
        """Set the new `version` (and the TTL, if given) if the version still matches."""

    def mark_channel_deleting(self, arn: str, expected_version: str | None) -> bool:
        """Set an ACTIVE channel DELETING (freeing its name); False if it is gone, already
        deleting, or the version moved on."""

    def purge_channel(self, arn: str) -> None:
        """Remove a channel's row with its tags."""

    def get_channel_tags(self, arn: str) -> dict[str, str]: ...

    def put_channel_tags(self, arn: str, tags: dict[str, str], max_tags: int) -> bool:
        """Add or overwrite tags; False (and nothing changed) if the total would exceed max_tags."""

    def delete_channel_tags(self, arn: str, keys: list[str]) -> None: ...

    # -- media storage: one stream per channel, one channel per stream ----------------

    def set_media_storage(self, channel_arn: str, status: str, stream_arn: str | None
                          ) -> None:
        """Map the ACTIVE channel to the ACTIVE stream with `status` (ENABLED or DISABLED),
        or, with no stream, remove the channel's mapping. Checked and applied in one step:
        raise MappedElsewhere if the stream is mapped to another channel, the channel to
        another stream, or either is not ACTIVE. A mapping goes when its channel is purged
        or its stream marked deleting."""

    def get_media_storage(self, channel_arn: str) -> tuple[str, str] | None:
        """(status, stream ARN) the channel is mapped to; None if it is not mapped."""

    def channel_for_stream(self, stream_arn: str) -> str | None:
        """The ARN of the channel mapped to the stream; None if there is none."""

    # -- fragments -------------------------------------------------------------------

    def save_header(self, arn: str, data: bytes) -> int:
        """Keep a stream header (EBML + Info + Tracks); reuse the latest if identical."""

    def get_header(self, header_id: int) -> bytes: ...

    # Wakes live readers when a fragment is committed, by this instance or (where the
    # store spans nodes) by any other.
    new_fragments: NewFragments

    def add_fragment(self, *, arn: str, producer_ms: int, server_ms: int, duration_ms: int,
                     size: int, header_id: int, blob_key: str, frames: bytes, digest: bytes,
                     fence: Lease | None = None, renew_fence_ms: int | None = None,
                     deliveries: Sequence[tuple[str, str]] = ()) -> tuple[Fragment, bool]:
        """Commit a fragment, assigning the stream's next seq and its number; returns it
        and True, or the fragment already stored with the same producer time and digest
        and False. `deliveries` ((kind, event JSON) pairs) go into the outbox in the same
        commit, for a new fragment only. Raises StreamNotActive, or LeaseLost if `fence` is
        no longer held; with `renew_fence_ms`, a fence still held is renewed for that long
        in the same commit (a writer that commits often needs no renewals of its own)."""

    def find_fragment(self, arn: str, *, producer_ms: int, digest: bytes) -> Fragment | None:
        """The fragment with exactly this producer time and content, if stored."""

    def list_fragments(self, arn: str, *, clock: Clock | None = None, start_ms: int = 0,
                       end_ms: int = 0, after_seq: int = 0, limit: int) -> list[Fragment]:
        """Fragments by seq; with a clock, only those starting in [start_ms, end_ms] on it."""

    def fragments_by_number(self, arn: str, numbers: list[str]) -> dict[str, Fragment]: ...

    def latest_fragment(self, arn: str) -> Fragment | None: ...

    def fragment_at(self, arn: str, clock: Clock, ms: int, max_duration_ms: int
                    ) -> Fragment | None:
        """The latest-starting fragment whose span holds `ms` on that clock, else the first
        starting after it. No fragment is longer than `max_duration_ms`."""

    def fragments_overlapping(self, arn: str, clock: Clock, start_ms: int, end_ms: int,
                              max_duration_ms: int) -> list[Fragment]:
        """Fragments whose span [start, start + duration) meets [start_ms, end_ms]."""

    def fragments_starting(self, arn: str, clock: Clock, start_ms: int, end_ms: int, *,
                           after: tuple[int, int] | None = None, descending: bool = False,
                           newest_only: bool = False, limit: int) -> list[Fragment]:
        """Fragments starting in [start_ms, end_ms] on the clock, ordered by (start, seq)
        (descending if asked), strictly past `after` = (start, seq) for keyset paging;
        `newest_only` keeps only the newest fragment of each start."""

    def count_starting(self, arn: str, clock: Clock, start_ms: int, end_ms: int, *,
                       newest_only: bool = False) -> int:
        """How many fragments `fragments_starting` would list over the whole range."""

    def count_discontinuities(self, arn: str, clock: Clock, start_ms: int, end_ms: int, *,
                              newest_only: bool = False, gap_ms: int | None = None) -> int:
        """Among those fragments in (start, seq) order, how many follow one with other
        codec data (header) or, with `gap_ms`, start more than gap_ms from where it ended."""

    def fragments_received_before(self, arn: str, server_ms: int, limit: int
                                  ) -> list[Fragment]:
        """Up to `limit` of the stream's oldest fragments received before `server_ms`."""

    def delete_fragments(self, arn: str, seqs: list[int]) -> None: ...

    def referenced_blobs(self, keys: list[str]) -> set[str]:
        """Which of these blob keys a fragment row refers to."""

    # -- leases ----------------------------------------------------------------------

    def acquire_lease(self, resource: str, holder: str, *, limit: int, ttl_ms: int
                      ) -> Lease | None:
        """Take one of `limit` slots on `resource` for `ttl_ms`, or None if all are held."""

    def renew_lease(self, lease: Lease, ttl_ms: int) -> bool:
        """Extend a lease still held; False if it expired and was lost."""

    def release_lease(self, lease: Lease) -> None: ...

    def count_leases(self, resource: str) -> int:
        """How many live (unexpired) leases `resource` has."""

    def ping(self, timeout_s: float) -> None:
        """Raise unless the store answers a query within about `timeout_s` (readiness)."""

    # -- server secrets --------------------------------------------------------------

    def secret(self, name: str, create: Callable[[], bytes] | None = None) -> bytes:
        """A server secret, created on first use and shared by every node: 32 random
        bytes, or what `create` makes (the first node's value wins a race)."""

    def find_secret(self, name: str) -> bytes | None:
        """A server secret if one was made, without making it."""

    def delete_secret(self, name: str) -> None:
        """Forget a server secret (one moved out of the store)."""

    # -- event configurations and the delivery outbox -----------------------------------

    def get_stream_config(self, arn: str, kind: str) -> str | None:
        """The stream's configuration of `kind` (JSON), if set."""

    def put_stream_config(self, arn: str, kind: str, config: str | None) -> None:
        """Set (or with None, delete) the stream's configuration of `kind`."""

    def count_deliveries(self, arn: str | None = None) -> int:
        """How many deliveries are waiting in the outbox (with `arn`: for that stream)."""

    def count_delivery_streams(self) -> int:
        """How many streams have deliveries waiting."""

    def claim_deliveries(self, limit: int, claim_ms: int) -> list[Delivery]:
        """Up to `limit` due deliveries, claimed for `claim_ms`: no other worker gets them
        until the claim lapses (a worker that died loses its claim). Fair across
        destinations (a stream's deliveries of one kind): at most one per destination, none
        for a destination with a delivery claimed or one waiting out its backoff after a
        failure (parked), and each destination's oldest first; deliveries never attempted
        before retries, then oldest first."""

    def finish_delivery(self, delivery_id: int) -> None:
        """Done: remove it from the outbox."""

    def retry_delivery(self, delivery_id: int, delay_ms: int, error: str) -> None:
        """Failed: due again in `delay_ms`, one attempt more, the claim released."""

    def close(self) -> None: ...
