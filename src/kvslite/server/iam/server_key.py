"""The server key: what users' secret access keys and session tokens are sealed with.

It lives in a file outside the metadata store (--iam-key-file; embedded, by default
`<data-dir>/iam.key`), so a dump of the database holds the encrypted secrets but not the
key that opens them. The file holds 32 random bytes in base64 on one line (what
`openssl rand -base64 32` writes); two keys are derived from it with HKDF-SHA256 under
distinct labels: a Fernet key for the access keys' secrets and an AES-256-GCM key for
session tokens, so neither use can stand in for the other.

Earlier versions kept both keys in the store as server secrets. At start, the access
keys' secrets still under the store-kept key are re-encrypted under the file's, then the
store-kept keys are deleted; session tokens sealed with the old key just stop opening
(they live an hour or so; the holder asks for new ones).

A cluster (PostgreSQL metadata) needs the same key on every node, so its key file is
never made up by a node: it must exist. Without --iam-key-file a cluster keeps using the
store-kept keys, as before, with a warning at start: refusing to start would break
clusters that were set up before the setting existed. Once a node has moved the secrets
under a key file, the store says so (KEY_FILE_IN_USE), and a node started without the file
refuses to start: it would make fresh store-kept keys that open none of the secrets.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from kvslite.server.iam import tokens

log = logging.getLogger("kvslite")

KEY_BYTES = 32
STORED_ACCESS_KEY_SECRET = "iam-access-key-encryption"  # the store-kept Fernet key, if any
KEY_FILE_IN_USE = "iam-key-file-in-use"  # set once secrets are sealed under a key file
ACCESS_KEYS_LABEL = b"kvslite iam access-key secrets v1"
SESSION_TOKENS_LABEL = b"kvslite iam session tokens v1"
MAKE_ONE = "make one with `openssl rand -base64 32 > FILE && chmod 600 FILE`"


class ServerKeyError(Exception):
    """The key file cannot be read or made, or holds no key."""


@dataclass(frozen=True)
class ServerKeys:
    access_keys: MultiFernet  # encrypts with the first key, decrypts with any
    session_tokens: bytes  # AES-256-GCM (iam/tokens.py)


def open_keys(store, key_file: Path | None, *, create: bool) -> ServerKeys:
    """The keys from `key_file` (made if missing and `create`), the store's secrets moved
    under them; with no file, the keys kept in the store."""
    if key_file is None:
        if store.find_secret(KEY_FILE_IN_USE) is not None:
            raise ServerKeyError("the IAM secrets in this metadata store are sealed with a "
                                 "key file, and this node was given none: start it with "
                                 "the other nodes' --iam-key-file")
        log.warning("the IAM server key is kept in the metadata store, so a database dump "
                    "holds the key with the secrets it encrypts: give every node the same "
                    "--iam-key-file (%s) and restart them", MAKE_ONE.replace("FILE", "iam.key"))
        return ServerKeys(
            MultiFernet([Fernet(store.secret(STORED_ACCESS_KEY_SECRET, Fernet.generate_key))]),
            store.secret(tokens.SECRET_NAME, tokens.new_key))
    key = read_key_file(key_file, create=create)
    store.secret(KEY_FILE_IN_USE, lambda: b"1")  # before the store-kept keys go
    current = Fernet(base64.urlsafe_b64encode(derive(key, ACCESS_KEYS_LABEL)))
    stored = store.find_secret(STORED_ACCESS_KEY_SECRET)
    access_keys = MultiFernet([current] + ([Fernet(stored)] if stored else []))
    move_secrets(store, current, access_keys)
    store.delete_secret(STORED_ACCESS_KEY_SECRET)
    store.delete_secret(tokens.SECRET_NAME)
    return ServerKeys(access_keys, derive(key, SESSION_TOKENS_LABEL))


def derive(key: bytes, label: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(key)


def read_key_file(path: Path, *, create: bool) -> bytes:
    if create:
        try:
            return _create(path)
        except FileExistsError:
            pass
        except OSError as e:
            raise ServerKeyError(f"cannot create the IAM key file {path}: {e}") from None
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        raise ServerKeyError(f"the IAM key file {path} does not exist: {MAKE_ONE} and give "
                             f"every node the same file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ServerKeyError(f"cannot read the IAM key file {path}: {e}") from None
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise ServerKeyError(f"the IAM key file {path} does not hold {KEY_BYTES} bytes in "
                             f"base64: {MAKE_ONE}")
    return key


def _create(path: Path) -> bytes:
    """A new key in a new file only its owner reads; FileExistsError if there is one."""
    key = os.urandom(KEY_BYTES)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(base64.b64encode(key).decode() + "\n")
        file.flush()
        os.fsync(file.fileno())
    log.info("made the IAM server key %s: back it up apart from the database; without it "
             "no user's access key works", path)
    return key


def move_secrets(store, current: Fernet, any_key: MultiFernet) -> None:
    """Re-encrypt under `current` the secrets another key of `any_key` opens; count (and
    leave) those none opens: keys made under a key file that is not this one."""
    lost = 0
    for key in store.all_access_keys():
        try:
            current.decrypt(key.secret)
            continue
        except InvalidToken:
            pass
        try:
            store.set_access_key_secret(key.access_key_id, any_key.rotate(key.secret))
        except InvalidToken:
            lost += 1
    if lost:
        log.warning("%d access keys were encrypted under another IAM server key and will "
                    "be refused: is --iam-key-file the file they were made with?", lost)
