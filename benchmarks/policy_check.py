"""The cost of authorization per request: policy checks per second, and GetImages signed by a
user (policies evaluated) against the same request signed by the administrator (not evaluated).

  A  in process: a typical 3-statement policy (an Allow with ${aws:username} in its resource,
     an Allow with wildcards, a Deny) checked by edge/authorization.py's Authorizer for a
     GetImages by StreamARN (no name lookup), N times; checks/s and us/check. Also the bare
     policy evaluation (iam/policy.py decide), and a check by StreamName, whose stream is
     looked up by name in a real SQLite metadata store, as the server does.
  B  end to end, when the server has the IAM API: a `kvslite serve` with an administrator
     key, a user created with boto3's iam client, allowed by that policy; GetImages (1 image,
     MaxResults 1, image cache on: the request, not the decode, is measured) by StreamName
     with the user's key and with the administrator's, interleaved rounds; requests/s and
     p50 latency each, and the difference.

Rerun:  .venv/bin/python benchmarks/policy_check.py [--checks 200000] [--requests 300]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from kvslite.server.edge.access_log import PRINCIPAL
from kvslite.server.edge.authorization import Authorizer, arn_by_name
from kvslite.server.iam.policy import decide, parse
from kvslite.server.iam.principal import Principal

ACCOUNT = "123456789012"
POLICY = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow",
     "Action": ["kinesisvideo:GetImages", "kinesisvideo:ListFragments",
                "kinesisvideo:GetHLSStreamingSessionURL"],
     "Resource": "arn:aws:kinesisvideo:*:*:stream/${aws:username}/*"},
    {"Effect": "Allow",
     "Action": ["kinesisvideo:PutMedia", "kinesisvideo:Describe*",
                "kinesisvideo:GetDataEndpoint"],
     "Resource": ["arn:aws:kinesisvideo:*:*:stream/cam-*/*",
                  "arn:aws:kinesisvideo:*:*:stream/bench/*"]},
    {"Effect": "Deny", "Action": "kinesisvideo:Delete*", "Resource": "*"},
]})


def rate(label: str, n: int, call) -> dict:
    call()  # warm the caches a server has warm after its first request
    started = time.perf_counter()
    for _ in range(n):
        call()
    seconds = time.perf_counter() - started
    row = {"what": label, "n": n, "per_s": n / seconds, "us_each": seconds / n * 1e6}
    print(f"  {label:<44} {row['per_s']:>12,.0f}/s {row['us_each']:>8.2f} us")
    return row


def in_process(checks: int) -> list[dict]:
    from kvslite.server.archive.control_plane import ControlPlane
    from kvslite.server.store.urls import open_metadata_store

    data = Path(tempfile.mkdtemp(prefix="kvslite-policy-bench-"))
    store = open_metadata_store(f"sqlite:///{data / 'meta.db'}")
    control = ControlPlane(store, region="us-east-1", account_id=ACCOUNT)
    arn = control.create("bench", retention_hours=1).arn
    authorizer = Authorizer(region="us-east-1", account_id=ACCOUNT,
                            stream_arn=arn_by_name(control.resolve),
                            channel_arn=lambda name: None)
    user = Principal(arn=f"arn:aws:iam::{ACCOUNT}:user/bench", name="bench", kind="user",
                     policies=(POLICY,), variables={"aws:username": "bench"})
    scope = {PRINCIPAL: user}
    policy = parse(POLICY)
    print("A  in process, a 3-statement policy:")
    return [
        rate("decide (policy evaluation alone)", checks,
             lambda: decide([policy], "kinesisvideo:GetImages", arn, user.variables)),
        rate("Authorizer.check, GetImages by StreamARN", checks,
             lambda: authorizer.check(scope, "GetImages", {"StreamARN": arn})),
        rate("Authorizer.check, GetImages by StreamName", checks // 20,
             lambda: authorizer.check(scope, "GetImages", {"StreamName": "bench"})),
    ]


def ingest(root: Path, stream: str) -> int:
    """Two seconds of video into `stream` by a server without credentials (so the upload
    needs no signing); returns the first frame's timestamp (ms)."""
    from common import Server, Upload, chunk

    from kvslite.media import synthetic

    start_ms = int(time.time() * 1000) - 60_000
    video = synthetic.encode_video("h264", seconds=2, gop=25)
    with Server(root) as server:
        server.client("kinesisvideo").create_stream(StreamName=stream, DataRetentionInHours=1)
        upload = Upload(server.port, stream)
        upload.sock.sendall(chunk(synthetic.to_mkv(video, start_ms)))
        upload.wait_persisted(2, timeout=30)
        upload.finish()
    return start_ms


def end_to_end(requests: int) -> dict | None:
    sys.path.insert(0, str(Path(__file__).parent))
    from common import Server

    root = Path(tempfile.mkdtemp(prefix="kvslite-policy-bench-"))
    start_ms = ingest(root, "bench")
    with Server(root, "--access-key-id", "ADMIN", "--secret-access-key", "admin-secret") as srv:
        endpoint = f"http://127.0.0.1:{srv.port}"
        admin = ("ADMIN", "admin-secret")
        try:
            iam = client("iam", endpoint, admin)
            iam.create_user(UserName="bench")
            key = iam.create_access_key(UserName="bench")["AccessKey"]
            iam.put_user_policy(UserName="bench", PolicyName="p", PolicyDocument=POLICY)
        except Exception as e:  # a server without the IAM API
            print(f"B  skipped: the server has no IAM API ({type(e).__name__}: {e})")
            return None
        user = (key["AccessKeyId"], key["SecretAccessKey"])
        clients = {who: client("kinesis-video-archived-media", endpoint, keys)
                   for who, keys in (("admin", admin), ("user", user))}
        request = {"StreamName": "bench", "ImageSelectorType": "PRODUCER_TIMESTAMP",
                   "StartTimestamp": (start_ms + 500) / 1000,
                   "EndTimestamp": (start_ms + 500) / 1000, "SamplingInterval": 3000,
                   "Format": "JPEG", "MaxResults": 1}
        times: dict[str, list[float]] = {"admin": [], "user": []}
        for _ in range(requests):
            for who, archived in clients.items():
                started = time.perf_counter()
                images = archived.get_images(**request)["Images"]
                times[who].append(time.perf_counter() - started)
                assert len(images) == 1 and "ImageContent" in images[0], images
    print("B  GetImages (1 image, cached) by StreamName:")
    result: dict = {}
    for who, seconds in times.items():
        result[who] = {"per_s": len(seconds) / sum(seconds),
                       "p50_ms": statistics.median(seconds) * 1000}
        print(f"  {who:<6} key {result[who]['per_s']:>8.1f}/s  p50 {result[who]['p50_ms']:.2f} ms")
    result["user_minus_admin_p50_ms"] = result["user"]["p50_ms"] - result["admin"]["p50_ms"]
    print(f"  user - admin p50: {result['user_minus_admin_p50_ms']:+.2f} ms")
    return result


def client(service: str, endpoint: str, keys: tuple[str, str]):
    import boto3
    from botocore.config import Config

    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=keys[0], aws_secret_access_key=keys[1],
                        config=Config(retries={"max_attempts": 1}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checks", type=int, default=200_000)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--skip-server", action="store_true", help="only part A")
    ap.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "kvslite-policy.json"))
    args = ap.parse_args()
    results = {"in_process": in_process(args.checks)}
    if not args.skip_server:
        results["getimages"] = end_to_end(args.requests)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
