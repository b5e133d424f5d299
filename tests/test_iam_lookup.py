"""A request signed with an IAM user's key is looked up in the metadata store (the key, the
user, the policies): on PostgreSQL, round trips that may wait. They run on a worker thread,
so a lookup that waits holds up its own request and nobody else's."""

from __future__ import annotations

import base64
import threading

import boto3
import psycopg
import pytest
from botocore.config import Config
from conftest import REGION, ServerProcess
from postgres_server import fresh_database
from test_iam_key import ADMIN, new_user

pytestmark = pytest.mark.slow  # a real PostgreSQL


def test_a_user_lookup_that_waits_holds_up_no_other_request(postgres_url, tmp_path):
    key_file = tmp_path / "iam.key"
    key_file.write_text(base64.b64encode(bytes(range(32))).decode() + "\n")
    database = fresh_database(postgres_url)
    node = ServerProcess(tmp_path / "node", *ADMIN, "--database-url", database,
                         "--iam-key-file", str(key_file)).start()
    try:
        key_id, secret = new_user(node)
        user = boto3.client("kinesisvideo", endpoint_url=node.endpoint, region_name=REGION,
                            aws_access_key_id=key_id, aws_secret_access_key=secret,
                            config=Config(retries={"max_attempts": 1}, read_timeout=60))
        admin = node.client("kinesisvideo", read_timeout=5)
        with psycopg.connect(database) as lock:
            # every read of the access keys now waits until this transaction ends
            lock.execute("LOCK TABLE iam_access_keys IN ACCESS EXCLUSIVE MODE")
            answers: list = []
            waiting = threading.Thread(
                target=lambda: answers.append(user.list_streams()["StreamInfoList"]))
            waiting.start()
            waiting.join(1.0)
            assert waiting.is_alive()  # the user's request waits on its lookup ...
            # ... while the administrator's key is answered (the previous code: a read
            # timeout, with the event loop stuck in that lookup)
            assert admin.list_streams()["StreamInfoList"] == []
            lock.rollback()
        waiting.join(30)
        assert answers == [[]]
    finally:
        node.stop()
