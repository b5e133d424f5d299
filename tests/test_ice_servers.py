"""GetIceServerConfig (kinesis-video-signaling): TURN relays with credentials a real coturn
accepts, within the WebRTC SDKs' limits, never an empty list, and AWS's errors."""

from __future__ import annotations

import time

import pytest
from botocore.exceptions import ClientError
from coturn_server import SECRET, stun_binding, turn_allocate

from kvslite.server.config import Settings
from kvslite.server.signaling.turn import group_uris, turn_password

UNKNOWN_ARN = "arn:aws:kinesisvideo:us-east-1:000000000000:channel/nobody/1700000000000"

@pytest.fixture(scope="module")
def turn_kvs(module_servers, coturn):
    """kvslite handing out credentials for the session's coturn."""
    return module_servers(*coturn.kvslite_args(), "--log-level", "debug", "--access-log")


@pytest.fixture(scope="module")
def channel_arn(turn_kvs):
    kvs = turn_kvs.client("kinesisvideo")
    return kvs.create_signaling_channel(ChannelName="doorbell")["ChannelARN"]


def ice_servers(server, **params) -> list[dict]:
    return server.client("kinesis-video-signaling").get_ice_server_config(**params)[
        "IceServerList"]


def error(server, **params) -> tuple[str, int]:
    client = server.client("kinesis-video-signaling", validate=False)
    with pytest.raises(ClientError) as e:
        client.get_ice_server_config(**params)
    response = e.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


def test_the_credentials_get_a_relay_from_coturn(turn_kvs, channel_arn, coturn):
    before = time.time()
    servers = ice_servers(turn_kvs, ChannelARN=channel_arn, ClientId="viewer-1",
                          Service="TURN")
    after = time.time()
    # one relay host: one entry with both its transports, as `--turn-uri` listed them
    assert [(s["Uris"], s["Ttl"]) for s in servers] == [(coturn.uris(), 300)]
    username, password = servers[0]["Username"], servers[0]["Password"]
    expiry, name = username.split(":")
    assert name == "viewer-1"
    assert int(before) + 300 <= int(expiry) <= after + 300
    assert password == turn_password(SECRET, username)
    relay = turn_allocate(coturn.port, username, password)
    assert relay.error is None and relay.relayed is not None
    assert relay.relayed[0] == "127.0.0.1"


def test_without_a_client_id_the_username_names_the_channel(turn_kvs, channel_arn, coturn):
    (server,) = ice_servers(turn_kvs, ChannelARN=channel_arn)
    assert server["Username"].split(":")[1] == "doorbell"
    assert turn_allocate(coturn.port, server["Username"], server["Password"]).error is None


def test_coturn_refuses_a_wrong_password_and_an_expired_username(turn_kvs, channel_arn,
                                                                  coturn):
    (server,) = ice_servers(turn_kvs, ChannelARN=channel_arn, ClientId="viewer-1")
    wrong = turn_password("another-secret", server["Username"])
    assert turn_allocate(coturn.port, server["Username"], wrong).error == 401
    expired = f"{int(time.time()) - 1}:viewer-1"  # signed right, but its expiry has passed
    assert turn_allocate(coturn.port, expired, turn_password(SECRET, expired)).error == 401


def test_the_secret_is_never_logged(turn_kvs, channel_arn):
    ice_servers(turn_kvs, ChannelARN=channel_arn)
    output = turn_kvs.output()
    assert "GetIceServerConfig" in output  # the access log saw the request
    assert SECRET not in output


@pytest.mark.parametrize("params, expected", [
    ({"ChannelARN": UNKNOWN_ARN}, ("ResourceNotFoundException", 404)),
    ({"ChannelARN": UNKNOWN_ARN.replace("channel/", "")}, ("InvalidArgumentException", 400)),
    ({}, ("InvalidArgumentException", 400)),  # ChannelARN is required
])
def test_channel_errors(turn_kvs, params, expected):
    assert error(turn_kvs, **params) == expected


def test_a_service_other_than_turn_is_refused(turn_kvs, channel_arn):
    assert error(turn_kvs, ChannelARN=channel_arn, Service="STUN") == \
        ("InvalidArgumentException", 400)


@pytest.mark.slow  # two servers of its own
def test_without_turn_one_stun_server_is_answered(module_servers, coturn):
    """The C SDK fails on an empty list: without --turn-uri the list names a STUN server,
    by default on the host clients reach kvslite by."""
    plain = module_servers()
    arn = plain.client("kinesisvideo").create_signaling_channel(ChannelName="c")["ChannelARN"]
    assert ice_servers(plain, ChannelARN=arn) == [
        {"Uris": ["stun:127.0.0.1:3478"], "Username": "", "Password": "", "Ttl": 300}]
    stun = f"stun:127.0.0.1:{coturn.port}"
    named = module_servers("--stun-uri", stun, "--turn-ttl-s", "60")
    arn = named.client("kinesisvideo").create_signaling_channel(ChannelName="c")["ChannelARN"]
    (server,) = ice_servers(named, ChannelARN=arn)
    assert (server["Uris"], server["Ttl"]) == ([stun], 60)
    assert stun_binding(coturn.port)  # what it names answers STUN


# -- settings ----------------------------------------------------------------------------


def test_uris_are_grouped_by_host_at_most_four_each():
    uris = [f"turn:a.example:{port}?transport=udp" for port in range(3478, 3484)] + \
        ["turns:b.example:5349?transport=tcp"]
    assert group_uris(uris) == [tuple(uris[:4]), tuple(uris[4:6]), (uris[6],)]


@pytest.mark.parametrize("settings, message", [
    ({"turn_uri": ("turn:a.example",)}, "set --turn-secret with --turn-uri"),
    ({"turn_secret": "s"}, "set --turn-secret with --turn-uri"),
    ({"turn_uri": ("http://a.example",), "turn_secret": "s"}, "is not turn:HOST"),
    ({"turn_uri": tuple(f"turn:h{i}.example" for i in range(6)), "turn_secret": "s"},
     "at most 5 TURN hosts"),
    ({"turn_ttl_s": 30}, "--turn-ttl-s must be between 31 and 86400"),
    ({"turn_ttl_s": 86_401}, "--turn-ttl-s must be between 31 and 86400"),
    ({"stun_uri": "turn:a.example"}, "--stun-uri must start with stun:"),
])
def test_settings_the_sdks_would_reject_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        Settings(**settings).check()


def test_the_secret_is_not_in_the_settings_repr():
    assert "hunter2" not in repr(Settings(turn_uri=("turn:a.example",), turn_secret="hunter2"))
