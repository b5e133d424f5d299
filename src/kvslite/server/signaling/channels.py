"""Signaling channels: the KVS rules for them, independent of HTTP.

Resolving ChannelName/ChannelARN, ARNs, defaults, version checks and tag limits live
here; the store only persists and enforces atomicity. The WebSocket signaling service
asks `find` and `resolve` for the channel a connection names, and subscribes to
`on_delete` to send GO_AWAY to the connections of a deleted channel.

Media storage (WebRTC ingestion) maps a channel to the stream its master's media is
recorded in: one stream per channel, one channel per stream. Whether that stream exists
and keeps data is the archive's to say, a layer signaling does not import: the
operations check it before `update_media_storage`.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable

from kvslite.server.api_errors import (
    RESOURCE_IN_USE,
    TAGS_PER_RESOURCE_EXCEEDED_LIMIT,
    VERSION_MISMATCH,
    ApiError,
    invalid,
    not_found,
)
from kvslite.server.store.metadata import (
    ACTIVE,
    DELETING,
    MappedElsewhere,
    MetadataStore,
    NameTaken,
    SignalingChannel,
)

log = logging.getLogger(__name__)

SINGLE_MASTER = "SINGLE_MASTER"
DEFAULT_MESSAGE_TTL_S = 60  # AWS's default, which the C SDK also uses
MIN_MESSAGE_TTL_S, MAX_MESSAGE_TTL_S = 5, 120
MAX_TAGS = 50
ENABLED, DISABLED = "ENABLED", "DISABLED"  # media storage statuses


class Channels:
    def __init__(self, store: MetadataStore, *, region: str, account_id: str):
        self.store = store
        self.region = region
        self.account_id = account_id
        # called with the channel after each delete (e.g. to end its connections)
        self.on_delete: list[Callable[[SignalingChannel], None]] = []

    def arn_for(self, name: str, creation_ms: int) -> str:
        return f"arn:aws:kinesisvideo:{self.region}:{self.account_id}:channel/{name}/{creation_ms}"

    def create(self, name: str, *, channel_type: str | None = None,
               message_ttl_seconds: int | None = None,
               tags: dict[str, str] | None = None) -> SignalingChannel:
        tags = tags or {}
        if len(tags) > MAX_TAGS:
            raise _too_many_tags()
        created_ms = int(time.time() * 1000)
        channel = SignalingChannel(
            name=name, arn=self.arn_for(name, created_ms),
            channel_type=channel_type or SINGLE_MASTER, status=ACTIVE,
            message_ttl_seconds=(DEFAULT_MESSAGE_TTL_S if message_ttl_seconds is None
                                 else _checked_ttl(message_ttl_seconds)),
            version=_new_version(), creation_time=created_ms / 1000)
        try:
            self.store.create_channel(channel, tags)
        except NameTaken:
            raise ApiError(RESOURCE_IN_USE,
                           f"The signaling channel {name} already exists") from None
        return channel

    def find(self, arn: str) -> SignalingChannel | None:
        """The channel with this ARN, whatever its status; None if there is none."""
        return self.store.get_channel(arn=arn)

    def resolve(self, name: str | None = None, arn: str | None = None) -> SignalingChannel:
        """The channel named by ChannelName and/or ChannelARN (both must agree); a
        channel being deleted is found only by ARN, as DELETING."""
        if name is None and arn is None:
            raise invalid("You must specify either the ChannelName or the ChannelARN")
        channel = (self.store.get_channel(arn=arn) if arn is not None
                   else self.store.get_channel(name=name))
        if channel is None:
            raise not_found(f"The requested channel {arn or name} was not found")
        if name is not None and arn is not None and channel.name != name:
            raise invalid(f"ChannelName {name} and ChannelARN {arn} name different channels")
        return channel

    def list_channels(self, *, prefix: str = "", after: str = "", limit: int) -> list[SignalingChannel]:
        return self.store.list_channels(prefix=prefix, after=after, limit=limit)

    def update(self, channel: SignalingChannel, current_version: str, *,
               message_ttl_seconds: int | None = None) -> None:
        """Change the TTL if given, if `current_version` is current."""
        ttl = None if message_ttl_seconds is None else _checked_ttl(message_ttl_seconds)
        if not self.store.update_channel(channel.arn, current_version, version=_new_version(),
                                         message_ttl_seconds=ttl):
            raise _version_mismatch(channel, current_version)

    def delete(self, channel: SignalingChannel, current_version: str | None) -> None:
        """DELETING (its name is free at once), then gone; then `on_delete` is told."""
        if not self.store.mark_channel_deleting(channel.arn, current_version):
            if channel.status == DELETING:
                raise not_found(f"The requested channel {channel.arn} was not found")
            raise _version_mismatch(channel, current_version)
        self.store.purge_channel(channel.arn)
        for listener in self.on_delete:
            try:
                listener(channel)
            except Exception:  # one failing listener must not undo the delete
                log.exception("on_delete listener failed for %s", channel.arn)

    # -- media storage -----------------------------------------------------------------

    def media_storage(self, channel_arn: str) -> tuple[str, str | None]:
        """(status, stream ARN) of the channel's media storage; (DISABLED, None) when it
        was never configured."""
        return self.store.get_media_storage(channel_arn) or (DISABLED, None)

    def update_media_storage(self, channel: SignalingChannel, status: str,
                             stream_arn: str | None) -> None:
        """Map the channel to the stream (which the caller checked exists and keeps data)
        with `status`; DISABLED with no stream removes the mapping. ResourceInUse if the
        stream is mapped to another channel or the channel to another stream."""
        if status == ENABLED and stream_arn is None:
            raise invalid("MediaStorageConfiguration needs a StreamARN to be ENABLED")
        try:
            self.store.set_media_storage(channel.arn, status, stream_arn)
        except MappedElsewhere as e:
            raise ApiError(RESOURCE_IN_USE, f"The media storage of signaling channel "
                                            f"{channel.name} cannot be changed: {e}") from None

    def channel_for_stream(self, stream_arn: str) -> SignalingChannel | None:
        """The channel whose media is stored in the stream, if there is one."""
        arn = self.store.channel_for_stream(stream_arn)
        return None if arn is None else self.store.get_channel(arn=arn)

    # -- tags ------------------------------------------------------------------------

    def tags(self, channel: SignalingChannel) -> dict[str, str]:
        return self.store.get_channel_tags(channel.arn)

    def tag(self, channel: SignalingChannel, tags: dict[str, str]) -> None:
        if not self.store.put_channel_tags(channel.arn, tags, MAX_TAGS):
            raise _too_many_tags()

    def untag(self, channel: SignalingChannel, keys: list[str]) -> None:
        self.store.delete_channel_tags(channel.arn, keys)


def is_channel_arn(arn: str) -> bool:
    return ":channel/" in arn


def _checked_ttl(seconds: int) -> int:
    if not MIN_MESSAGE_TTL_S <= seconds <= MAX_MESSAGE_TTL_S:
        raise invalid(f"MessageTtlSeconds must be between {MIN_MESSAGE_TTL_S} and "
                      f"{MAX_MESSAGE_TTL_S}, got {seconds}")
    return seconds


def _new_version() -> str:
    return secrets.token_hex(10)


def _too_many_tags() -> ApiError:
    return ApiError(TAGS_PER_RESOURCE_EXCEEDED_LIMIT,
                    f"A signaling channel can have at most {MAX_TAGS} tags")


def _version_mismatch(channel: SignalingChannel, given: str | None) -> ApiError:
    return ApiError(VERSION_MISMATCH, f"The version {given} of signaling channel "
                                      f"{channel.name} is not the latest version")
