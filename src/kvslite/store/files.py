"""Media blobs on the local filesystem: the embedded default blob store."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


class FileBlobStore:
    """Blobs under `root`, addressed by slash-separated keys.

    `put` is durable when it returns: data is written to a temporary file,
    fsynced, renamed into place and the directory fsynced, so a crash leaves
    either the whole blob or none of it.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"blob key escapes the store: {key!r}")
        return path

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        with open(self._path(key), "rb") as f:
            f.seek(offset)
            return f.read() if length is None else f.read(length)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self._path(prefix), ignore_errors=True)
