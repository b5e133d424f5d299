"""The control plane: the KVS rules for streams, independent of HTTP.

Resolving StreamName/StreamARN, version checks, retention bounds and tag limits
live here; the store only persists and enforces atomicity.
"""

from __future__ import annotations

import secrets
import time

from kvslite.server.api_errors import (
    NO_DATA_RETENTION,
    RESOURCE_IN_USE,
    TAGS_PER_RESOURCE_EXCEEDED_LIMIT,
    VERSION_MISMATCH,
    ApiError,
    invalid,
    not_found,
)
from kvslite.server.store.metadata import DELETING, MetadataStore, NameTaken, Stream

MAX_TAGS = 50
MAX_RETENTION_HOURS = 87_600  # ten years, AWS's upper bound


def new_version() -> str:
    return secrets.token_hex(10)


class ControlPlane:
    def __init__(self, store: MetadataStore, *, region: str, account_id: str):
        self.store = store
        self.region = region
        self.account_id = account_id

    def arn_for(self, name: str, creation_ms: int) -> str:
        return f"arn:aws:kinesisvideo:{self.region}:{self.account_id}:stream/{name}/{creation_ms}"

    @property
    def default_kms_key_id(self) -> str:
        return f"arn:aws:kms:{self.region}:{self.account_id}:alias/aws/kinesisvideo"

    def create(
        self,
        name: str,
        *,
        retention_hours: int = 0,
        device_name: str | None = None,
        media_type: str | None = None,
        kms_key_id: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> Stream:
        check_retention(retention_hours)
        tags = tags or {}
        if len(tags) > MAX_TAGS:
            raise ApiError(TAGS_PER_RESOURCE_EXCEEDED_LIMIT,
                           f"A stream can have at most {MAX_TAGS} tags")
        created_ms = int(time.time() * 1000)
        stream = Stream(
            name=name,
            arn=self.arn_for(name, created_ms),
            version=new_version(),
            creation_time=created_ms / 1000,
            data_retention_hours=retention_hours,
            kms_key_id=kms_key_id or self.default_kms_key_id,
            device_name=device_name,
            media_type=media_type,
        )
        try:
            self.store.create_stream(stream, tags)
        except NameTaken:
            raise ApiError(RESOURCE_IN_USE,
                           f"The stream {name} already exists") from None
        return stream

    def resolve(self, name: str | None = None, arn: str | None = None, *,
                deleting_ok: bool = False) -> Stream:
        """The stream named by StreamName and/or StreamARN (both must agree). A stream
        being deleted is found only by ARN and only where `deleting_ok` (DescribeStream
        reports it DELETING); everywhere else it is gone."""
        if name is None and arn is None:
            raise invalid("You must specify either the StreamName or the StreamARN")
        stream = self.store.get_stream(arn=arn) if arn is not None else self.store.get_stream(
            name=name)
        if stream is None or (stream.status == DELETING and not deleting_ok):
            raise not_found(f"The requested stream {arn or name} was not found")
        if name is not None and arn is not None and stream.name != name:
            raise invalid(f"StreamName {name} and StreamARN {arn} name different streams")
        return stream

    def list_streams(self, *, prefix: str = "", after: str = "", limit: int) -> list[Stream]:
        return self.store.list_streams(prefix=prefix, after=after, limit=limit)

    def update(self, stream: Stream, current_version: str, *, device_name: str | None = None,
               media_type: str | None = None, data_retention_hours: int | None = None
               ) -> None:
        """Change the fields given (None: unchanged), if `current_version` is current."""
        if not self.store.update_stream(stream.arn, current_version, version=new_version(),
                                        device_name=device_name, media_type=media_type,
                                        data_retention_hours=data_retention_hours):
            raise _version_mismatch(stream, current_version)

    def delete(self, stream: Stream, current_version: str | None) -> None:
        """Mark the stream DELETING at once (its name is free again); the sweeper removes
        its media and rows in the background."""
        if not self.store.mark_deleting(stream.arn, current_version):
            raise _version_mismatch(stream, current_version)

    def change_retention(self, stream: Stream, current_version: str, operation: str,
                         hours: int) -> None:
        if stream.version != current_version:
            raise _version_mismatch(stream, current_version)
        sign = 1 if operation == "INCREASE_DATA_RETENTION" else -1
        retention = stream.data_retention_hours + sign * hours
        check_retention(retention)
        self.update(stream, current_version, data_retention_hours=retention)

    # -- tags ------------------------------------------------------------------------

    def tags(self, stream: Stream) -> dict[str, str]:
        return self.store.get_tags(stream.arn)

    def tag(self, stream: Stream, tags: dict[str, str]) -> None:
        if not self.store.put_tags(stream.arn, tags, MAX_TAGS):
            raise ApiError(TAGS_PER_RESOURCE_EXCEEDED_LIMIT,
                           f"A stream can have at most {MAX_TAGS} tags")

    def untag(self, stream: Stream, keys: list[str]) -> None:
        self.store.delete_tags(stream.arn, keys)


def require_archive(stream: Stream) -> Stream:
    """The stream, if it keeps an archive to read (retention 0 keeps nothing)."""
    if stream.data_retention_hours == 0:
        raise ApiError(NO_DATA_RETENTION,
                       f"Stream {stream.name} has no data retention, so no archive")
    return stream


def check_retention(hours: int) -> None:
    if not 0 <= hours <= MAX_RETENTION_HOURS:
        raise invalid(f"DataRetentionInHours must be between 0 and {MAX_RETENTION_HOURS}, "
                      f"got {hours}")


def _version_mismatch(stream: Stream, given: str | None) -> ApiError:
    return ApiError(VERSION_MISMATCH,
                    f"The version {given} of stream {stream.name} is not the latest version")
