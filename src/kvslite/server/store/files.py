"""Media blobs on the local filesystem: the embedded default BlobStore (store/blobs.py)."""

from __future__ import annotations

import errno
import heapq
import math
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from kvslite.server.api_errors import OutOfSpace

TEMP_SUFFIX = ".tmp"


class FileBlobStore:
    """Blobs under `root`, addressed by slash-separated keys.

    `put` is durable when it returns: data is written to a temporary file,
    fsynced, renamed into place and the directory fsynced, so a crash leaves
    either the whole blob or none of it (and perhaps a temporary file, which
    `remove_temp_files` and the orphan collector clear).
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._real_root = self.root.resolve()

    def _path(self, key: str) -> Path:
        """The file of `key`, checked by its words alone (kvslite makes no links inside
        the store, and resolving links costs a system call per folder on every write)."""
        parts = key.rstrip("/").split("/")
        if key.startswith("/") or any(part in ("", ".", "..") for part in parts):
            raise ValueError(f"blob key escapes the store: {key!r}")
        return self._real_root.joinpath(*parts)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        tmp = path.with_name(f".{path.name}{TEMP_SUFFIX}")
        try:
            try:
                f = open(tmp, "wb")
            except FileNotFoundError:  # the stream's first blob: make its folder
                self._make_folder(path.parent)
                f = open(tmp, "wb")
            with f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            _fsync_folder(path.parent)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise OutOfSpace(f"writing {key}: {e.strerror}") from e
            raise

    def _make_folder(self, folder: Path) -> None:
        """Make `folder` (and what is missing above it) with each new entry on disk: a
        blob's name is durable only once every folder on its path is."""
        missing = [folder, *(p for p in folder.parents if self._real_root in p.parents)]
        missing = [p for p in missing if not p.is_dir()]
        folder.mkdir(parents=True, exist_ok=True)
        for made in missing:
            _fsync_folder(made.parent)

    def check(self) -> None:
        """Raise unless the store's folder is there (a readiness probe)."""
        if not self.root.is_dir():
            raise FileNotFoundError(errno.ENOENT, "the media folder is missing")

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        with open(self._path(key), "rb") as f:
            f.seek(offset)
            return f.read() if length is None else f.read(length)

    def delete(self, key: str, *, prune: bool = False) -> None:
        """Remove a blob; with `prune`, also its folder if that is left empty."""
        path = self._path(key)
        path.unlink(missing_ok=True)
        if prune:
            try:
                path.parent.rmdir()
            except OSError:
                pass  # not empty (or already gone): leave it

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self._path(prefix), ignore_errors=True)

    def keys_older_than(self, seconds: float) -> Iterator[str]:
        """Keys of blobs (and temporary files) last written more than `seconds` ago."""
        cutoff = time.time() - seconds
        for directory, _, names in os.walk(self.root):
            for name in names:
                path = Path(directory, name)
                try:
                    if path.stat().st_mtime < cutoff:
                        yield path.relative_to(self.root).as_posix()
                except FileNotFoundError:
                    continue  # deleted while we walked

    def list_after(self, after: str, limit: int) -> list[tuple[str, float]]:
        """Up to `limit` blobs (and temporary files) whose keys sort after `after`, in key
        order, each with when it was last written (epoch seconds): one page of a listing
        that resumes anywhere. Memory is bounded by `limit`, however many blobs there are."""
        page: list[tuple[str, float]] = []
        for key in self._keys_after(self.root, "", after, limit):
            try:
                page.append((key, (self.root / key).stat().st_mtime))
            except FileNotFoundError:
                continue  # deleted while we walked
            if len(page) == limit:
                break
        return page

    def _keys_after(self, directory: Path, prefix: str, after: str, chunk: int
                    ) -> Iterator[str]:
        """Keys under `directory` (each starting with `prefix`) that sort after `after`, in
        order. A folder's entries are taken `chunk` at a time, the smallest not yet visited,
        so a folder of a million files costs a scan per chunk, never a million names held."""
        visited = ""  # the last entry of this folder already walked (as ordered below)
        while True:
            try:
                with os.scandir(directory) as entries:
                    ordered = (_ordered(prefix, entry) for entry in entries)
                    page = heapq.nsmallest(chunk, (
                        (name, is_dir) for name, is_dir in ordered
                        if name > visited and _may_follow(name, is_dir, after)))
            except (FileNotFoundError, NotADirectoryError):
                return  # removed while we walked
            for name, is_dir in page:
                if is_dir:
                    yield from self._keys_after(directory / name[len(prefix):-1], name,
                                                after, chunk)
                else:
                    yield name
            if len(page) < chunk:
                return
            visited = page[-1][0]

    def remove_temp_files(self) -> list[str]:
        """Remove every temporary file (call only when no write can be in flight)."""
        removed = [key for key in self.keys_older_than(-math.inf) if _is_temp(key)]
        for key in removed:
            self.delete(key)
        return removed


def _is_temp(key: str) -> bool:
    return key.rsplit("/", 1)[-1].startswith(".") and key.endswith(TEMP_SUFFIX)


def _ordered(prefix: str, entry: os.DirEntry) -> tuple[str, bool]:
    """A folder entry as its key ("a/b.mkv") or, for a folder, its keys' prefix ("a/b/"):
    sorting these strings walks the folders in the order of their keys as strings."""
    is_dir = entry.is_dir(follow_symlinks=False)
    return prefix + entry.name + ("/" if is_dir else ""), is_dir


def _may_follow(name: str, is_dir: bool, after: str) -> bool:
    """Whether this key, or for a folder some key in it, sorts after `after`."""
    return name > after or (is_dir and after.startswith(name))


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
