"""The server key that seals users' secret access keys and session tokens is kept out of
the metadata store (--iam-key-file; embedded, DATA_DIR/iam.key): a database dump holds
neither a secret nor the key; the key survives restarts and is shared by a cluster's
nodes; a wrong key refuses users' keys cleanly; secrets sealed by earlier versions under
the store-kept key still work after the upgrade and are moved under the file's key."""

from __future__ import annotations

import base64
import json
import sqlite3
import stat

import pytest
from botocore.exceptions import ClientError
from conftest import ServerProcess
from cryptography.fernet import Fernet, InvalidToken
from postgres_server import fresh_database

pytestmark = pytest.mark.slow  # real servers, restarted

ADMIN = ("--access-key-id", "AKIDEXAMPLE", "--secret-access-key", "secret")
LIST_STREAMS = json.dumps({"Version": "2012-10-17", "Statement": {
    "Effect": "Allow", "Action": "kinesisvideo:ListStreams", "Resource": "*"}})


def new_user(server: ServerProcess, name: str = "camera") -> tuple[str, str]:
    """A user allowed ListStreams; its access key id and secret."""
    iam = server.client("iam")
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName="list", PolicyDocument=LIST_STREAMS)
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


def lists_streams(server: ServerProcess, key: tuple[str, str]) -> bool:
    """True if the key signs a request the server accepts; False if it is unrecognized."""
    try:
        server.client("kinesisvideo", key=key[0], secret=key[1]).list_streams()
        return True
    except ClientError as e:
        error = e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"]
        assert error == ("UnrecognizedClientException", 403)
        return False


def database_dump(data_dir) -> bytes:
    """Every byte of the SQLite database, its write-ahead log included."""
    return b"".join(path.read_bytes() for path in sorted(data_dir.glob("kvslite.db*")))


def test_the_key_file_is_made_private_in_the_data_dir_and_not_in_the_database(start_server):
    server = start_server(*ADMIN)
    key = new_user(server)
    key_file = server.data_dir / "iam.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(base64.b64decode(key_file.read_text().strip(), validate=True)) == 32
    assert lists_streams(server, key)
    server.stop()
    dump = database_dump(server.data_dir)
    assert key[1].encode() not in dump
    assert key_file.read_text().strip().encode() not in dump
    database = sqlite3.connect(server.data_dir / "kvslite.db")
    stored = [name for (name,) in database.execute("SELECT name FROM secrets")]
    database.close()
    assert "iam-access-key-encryption" not in stored and "session-credentials" not in stored
    server.start()  # the same key file: the key still signs
    assert lists_streams(server, key)


def test_a_wrong_key_file_refuses_users_keys_not_the_admins(start_server, tmp_path):
    server = start_server(*ADMIN)
    key = new_user(server)
    server.stop()
    other = tmp_path / "other.key"
    other.write_text(base64.b64encode(b"\x07" * 32).decode() + "\n")
    server.extra_args += ["--iam-key-file", str(other)]
    server.start()
    assert not lists_streams(server, key)
    assert server.client("kinesisvideo").list_streams()["StreamInfoList"] == []
    assert "1 access keys were encrypted under another IAM server key" in server.output()


def test_a_key_file_that_holds_no_key_is_refused_at_start(tmp_path):
    bad = tmp_path / "bad.key"
    bad.write_text("not base64 at all\n")
    server = ServerProcess(tmp_path / "data", *ADMIN, "--iam-key-file", str(bad))
    with pytest.raises(RuntimeError, match="does not hold 32 bytes in base64"):
        server.start()
    assert "Traceback" not in server.output()


def test_secrets_sealed_under_the_store_kept_key_work_after_the_upgrade(start_server):
    """An earlier version kept a Fernet key in the store's secrets: a database as it left
    it, with a user's secret under that key, opens and is moved under the file's key."""
    server = start_server(*ADMIN)
    key = new_user(server)
    server.stop()
    old_key = Fernet.generate_key()
    database = sqlite3.connect(server.data_dir / "kvslite.db")
    with database:
        database.execute("INSERT OR REPLACE INTO secrets (name, value) VALUES (?, ?)",
                         ("iam-access-key-encryption", old_key))
        database.execute("UPDATE iam_access_keys SET secret = ? WHERE access_key_id = ?",
                         (Fernet(old_key).encrypt(key[1].encode()), key[0]))
    database.close()
    (server.data_dir / "iam.key").unlink()  # as before the upgrade: no key file
    server.start()
    assert lists_streams(server, key)
    server.stop()
    database = sqlite3.connect(server.data_dir / "kvslite.db")
    names = [name for (name,) in database.execute("SELECT name FROM secrets")]
    (sealed,) = database.execute("SELECT secret FROM iam_access_keys").fetchone()
    database.close()
    assert "iam-access-key-encryption" not in names  # the store no longer holds a key
    with pytest.raises(InvalidToken):
        Fernet(old_key).decrypt(sealed)  # moved under the file's key
    server.start()
    assert lists_streams(server, key)


def test_two_nodes_with_one_key_file_on_postgresql_share_users(postgres_url, tmp_path):
    key_file = tmp_path / "iam.key"
    key_file.write_text(base64.b64encode(bytes(range(32))).decode() + "\n")
    args = (*ADMIN, "--database-url", fresh_database(postgres_url), "--iam-key-file",
            str(key_file))
    nodes = [ServerProcess(tmp_path / f"node{i}", *args) for i in range(2)]
    try:
        for node in nodes:
            node.start()
        key = new_user(nodes[0])
        assert lists_streams(nodes[0], key) and lists_streams(nodes[1], key)
        assert "IAM server key is kept in the metadata store" not in nodes[0].output()
    finally:
        for node in nodes:
            node.stop()


def test_a_cluster_without_a_key_file_keeps_the_stored_key_and_warns(postgres_url, tmp_path):
    node = ServerProcess(tmp_path / "node", *ADMIN, "--database-url",
                         fresh_database(postgres_url))
    try:
        node.start()
        key = new_user(node)
        assert lists_streams(node, key)
        assert "IAM server key is kept in the metadata store" in node.output()
        assert not (tmp_path / "node" / "iam.key").exists()
    finally:
        node.stop()


def test_a_missing_key_file_is_not_made_up_by_a_cluster_node(postgres_url, tmp_path):
    node = ServerProcess(tmp_path / "node", *ADMIN, "--database-url",
                         fresh_database(postgres_url), "--iam-key-file",
                         str(tmp_path / "missing.key"))
    with pytest.raises(RuntimeError, match="missing.key does not exist"):
        node.start()
    assert not (tmp_path / "missing.key").exists()


def test_a_cluster_node_without_the_key_file_refuses_to_start_once_one_is_in_use(
        postgres_url, tmp_path):
    """Without the file, the node would make fresh store-kept keys that open none of the
    users' secrets (each user's key refused there), and seal new ones apart."""
    database = fresh_database(postgres_url)
    key_file = tmp_path / "iam.key"
    key_file.write_text(base64.b64encode(bytes(range(32))).decode() + "\n")
    upgraded = ServerProcess(tmp_path / "node0", *ADMIN, "--database-url", database)
    without = ServerProcess(tmp_path / "node1", *ADMIN, "--database-url", database)
    try:
        upgraded.start()  # as before the key file: the key kept in the store
        key = new_user(upgraded)
        upgraded.stop()
        upgraded.extra_args += ["--iam-key-file", str(key_file)]
        upgraded.start()  # the secrets move under the file's key
        with pytest.raises(RuntimeError, match="sealed with a key file, and this node was "
                                               "given none"):
            without.start()
        assert lists_streams(upgraded, key)
    finally:
        upgraded.stop()
        without.stop()
