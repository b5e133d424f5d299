"""`kvslite serve` as a user runs it: settings, logging, shutdown, restart persistence."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_state_survives_a_restart(start_server, tmp_path):
    server = start_server(data_dir=tmp_path / "persist")
    kvs = server.client("kinesisvideo")
    arn = kvs.create_stream(StreamName="durable", DataRetentionInHours=3,
                            Tags={"k": "v"})["StreamARN"]
    version = kvs.describe_stream(StreamARN=arn)["StreamInfo"]["Version"]
    kvs.update_data_retention(StreamARN=arn, CurrentVersion=version,
                              Operation="INCREASE_DATA_RETENTION", DataRetentionChangeInHours=2)
    kvs.tag_stream(StreamARN=arn, Tags={"k2": "v2"})
    before = kvs.describe_stream(StreamARN=arn)["StreamInfo"]
    assert server.stop() == 0

    again = start_server(data_dir=tmp_path / "persist")
    kvs = again.client("kinesisvideo")
    assert kvs.describe_stream(StreamName="durable")["StreamInfo"] == before
    assert before["DataRetentionInHours"] == 5
    assert kvs.list_tags_for_stream(StreamARN=arn)["Tags"] == {"k": "v", "k2": "v2"}


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_clean_shutdown_and_startup_log(start_server, sig):
    server = start_server()
    server.client("kinesisvideo").list_streams()
    assert server.stop(sig) == 0
    log = server.output()
    assert f"listening on http://127.0.0.1:{server.port}" in log
    assert str(server.data_dir.resolve()) in log
    assert "kvslite stopped" in log
    assert "Traceback" not in log


@pytest.mark.slow
def test_settings_from_environment(start_server):
    server = start_server(env={"KVSLITE_REGION": "eu-west-1",
                               "KVSLITE_ACCOUNT_ID": "123456789012",
                               "KVSLITE_PUBLIC_URL": "http://kvs.example.test:8080"})
    kvs = server.client("kinesisvideo")
    arn = kvs.create_stream(StreamName="env")["StreamARN"]
    assert arn.startswith("arn:aws:kinesisvideo:eu-west-1:123456789012:stream/env/")
    assert kvs.get_data_endpoint(StreamName="env", APIName="PUT_MEDIA")["DataEndpoint"] == \
        "http://kvs.example.test:8080"


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "kvslite", *args], capture_output=True,
                          text=True, timeout=30, env=env)


def test_refuses_non_loopback_without_credentials(tmp_path):
    result = run_cli("serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path / "d"))
    assert result.returncode == 2
    assert "--allow-anonymous" in result.stderr
    assert not (tmp_path / "d").exists()


def test_half_credentials_are_refused(tmp_path):
    result = run_cli("serve", "--access-key-id", "AK", "--data-dir", str(tmp_path / "d"))
    assert result.returncode == 2
    assert "--secret-access-key" in result.stderr


def test_non_loopback_with_allow_anonymous(start_server):
    server = start_server("--host", "0.0.0.0", "--allow-anonymous")
    assert server.client("kinesisvideo").list_streams()["StreamInfoList"] == []


def test_version_and_help():
    assert run_cli("--version").stdout.startswith("kvslite, version ")
    help_text = run_cli("serve", "--help").stdout
    for env in ("KVSLITE_HOST", "KVSLITE_PORT", "KVSLITE_DATA_DIR", "KVSLITE_REGION",
                "KVSLITE_ACCOUNT_ID", "KVSLITE_PUBLIC_URL", "KVSLITE_ACCESS_KEY_ID",
                "KVSLITE_SECRET_ACCESS_KEY", "KVSLITE_MIN_SAMPLING_INTERVAL_MS"):
        assert env in help_text
