"""The filesystem blob store's durability: a blob's bytes, then its name, are on disk before
`put` returns. The one unit test of the store: durability cannot be seen from outside a
server without pulling the plug, so the system calls are recorded in order instead.
"""

from __future__ import annotations

import os
import stat

import pytest

from kvslite.server.store.files import FileBlobStore


def test_file_blob_store_fsyncs_the_blob_then_renames_then_fsyncs_the_folder(tmp_path,
                                                                           monkeypatch):
    events: list[tuple] = []
    real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename

    def fsync(fd):
        info = os.fstat(fd)
        events.append(("fsync", "dir" if stat.S_ISDIR(info.st_mode) else "file",
                       info.st_ino, info.st_size))
        return real_fsync(fd)

    def replace(src, dst, *args, **kwargs):
        events.append(("rename", str(src), str(dst)))
        return real_replace(src, dst, *args, **kwargs)

    def rename(src, dst, *args, **kwargs):
        events.append(("rename", str(src), str(dst)))
        return real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "rename", rename)

    store = FileBlobStore(tmp_path / "media")
    data = os.urandom(100_000)
    store.put("streams/s-1/1700000000000-abcd.mkv", data)
    monkeypatch.undo()

    path = tmp_path / "media" / "streams" / "s-1" / "1700000000000-abcd.mkv"
    assert path.read_bytes() == data and store.get("streams/s-1/1700000000000-abcd.mkv") == data
    blob_ino, dir_ino = path.stat().st_ino, path.parent.stat().st_ino
    file_syncs = [i for i, e in enumerate(events)
                  if e[:3] == ("fsync", "file", blob_ino) and e[3] == len(data)]
    dir_syncs = [i for i, e in enumerate(events) if e[:3] == ("fsync", "dir", dir_ino)]
    renames = [i for i, e in enumerate(events) if e[0] == "rename" and e[2] == str(path)]
    assert file_syncs, f"the blob's bytes were never fsynced: {events}"
    assert dir_syncs, f"the blob's folder was never fsynced: {events}"
    if renames:  # written under another name and renamed into place (atomic)
        assert file_syncs[0] < renames[-1] < dir_syncs[-1], events
    else:
        assert file_syncs[0] < dir_syncs[-1], events


def test_a_new_folder_is_on_disk_before_put_returns(tmp_path, monkeypatch):
    """A stream's first blob makes its folder: the folder's own entry is fsynced too (in
    its parent), else the blob could be lost with its folder after a power cut."""
    store = FileBlobStore(tmp_path / "media")
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.fstat(fd).st_ino),
                                                 real_fsync(fd))[1])
    store.put("streams/s-2/1-abcd.mkv", b"data")
    monkeypatch.undo()
    media = tmp_path / "media"
    for folder in (media, media / "streams", media / "streams" / "s-2"):
        assert folder.stat().st_ino in synced, folder


@pytest.mark.parametrize("key", ["../x.mkv", "streams/../../x.mkv", "/etc/passwd", "",
                                 "streams//x.mkv", "streams/./x.mkv"])
def test_a_key_that_would_leave_the_store_is_refused(tmp_path, key):
    store = FileBlobStore(tmp_path / "media")
    with pytest.raises(ValueError, match="escapes the store"):
        store.put(key, b"data")
    with pytest.raises(ValueError, match="escapes the store"):
        store.get(key)
    assert not (tmp_path / "x.mkv").exists()
