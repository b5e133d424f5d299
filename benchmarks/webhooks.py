"""Webhook destinations and hostile receivers: what a notification Uri can reach, how long a
trickling receiver holds a delivery, and what a huge answer costs the server's memory.

  matrix   UpdateNotificationConfiguration with a literal address of every internal class,
           on a server with the defaults and on one with --webhook-allow allowing them all;
           plus credentials and ftp:// (refused by both).
  trickle  a receiver that sends its status line a byte every 0.2 s and never ends it: how
           long the server held the connection (the receiver's view, first byte to cut).
  huge     a receiver answering 200 with a --huge-mb body of zeros: growth of the server's
           peak RSS (VmHWM, reset just before the tagged fragment is sent).

Rerun:  .venv/bin/python benchmarks/webhooks.py [--huge-mb 1024] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
import threading
import time
from pathlib import Path

from botocore.exceptions import ClientError
from common import Server, Upload, chunk

from kvslite.media import mkv, synthetic

INTERNAL = {"loopback": "http://127.0.0.1:8080/", "loopback v6": "http://[::1]/",
            "mapped v6": "http://[::ffff:127.0.0.1]/", "link-local": "http://169.254.169.254/",
            "private": "http://10.0.0.1/", "unspecified": "http://0.0.0.0/",
            "multicast": "http://224.0.0.1/", "credentials": "http://user:pw@example.com/",
            "ftp": "ftp://example.com/"}
ALLOW = "loopback,private,link-local,0.0.0.0/32,224.0.0.0/4"


def receiver(answer: str, huge_bytes: int) -> tuple[int, dict]:
    """A one-connection-at-a-time receiver on a raw socket; `seen` gets held_s per answer."""
    listener = socket.create_server(("127.0.0.1", 0))
    seen: dict = {"held_s": [], "sent": []}

    def serve() -> None:
        while True:
            conn, _ = listener.accept()
            conn.recv(65536)
            started, sent = time.monotonic(), 0
            try:
                if answer == "trickle":
                    for byte in b"HTTP/1.1 200 " + b"O" * 100_000:
                        time.sleep(0.2)
                        sent += conn.send(bytes([byte]))
                else:
                    sent += conn.send(f"HTTP/1.1 200 OK\r\nContent-Length: {huge_bytes}\r\n"
                                      f"\r\n".encode())
                    zeros = bytes(1 << 20)
                    for _ in range(huge_bytes >> 20):
                        conn.sendall(zeros)
                        sent += len(zeros)
            except OSError:
                pass
            seen["held_s"].append(round(time.monotonic() - started, 2))
            seen["sent"].append(sent)
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()[1], seen


def send_tagged_fragment(server: Server, stream: str) -> None:
    video = synthetic.encode_video("h264", seconds=2, gop=25)
    upload = Upload(server.port, stream)
    data = mkv.write_header(synthetic.stream_header(video))
    for index, cluster in enumerate(synthetic.clusters(video, int(time.time() * 1000) - 60_000)):
        if index == 0:
            data += mkv.write_tags([("AWS_KINESISVIDEO_NOTIFICATION", "")])
        data += mkv.write_cluster(cluster)[0]
    upload.sock.sendall(chunk(data))
    upload.wait_persisted(2, 30)
    upload.finish()


def notify(kvs, stream: str, uri: str) -> str:
    try:
        kvs.update_notification_configuration(StreamName=stream, NotificationConfiguration={
            "Status": "ENABLED", "DestinationConfig": {"Uri": uri}})
        return "accepted"
    except ClientError as e:
        return e.response["Error"]["Code"]


def matrix(root: Path) -> dict:
    results = {}
    for name, args in (("default", ()), ("allowed", ("--webhook-allow", ALLOW))):
        (root / name).mkdir()
        with Server(root / name, *args) as server:
            kvs = server.client("kinesisvideo")
            kvs.create_stream(StreamName="m", DataRetentionInHours=1)
            results[name] = {kind: notify(kvs, "m", uri) for kind, uri in INTERNAL.items()}
    return results


def hostile(root: Path, answer: str, huge_bytes: int) -> dict:
    port, seen = receiver(answer, huge_bytes)
    (root / answer).mkdir()
    with Server(root / answer, "--webhook-allow", "loopback") as server:
        kvs = server.client("kinesisvideo")
        kvs.create_stream(StreamName=answer, DataRetentionInHours=1)
        notify(kvs, answer, f"http://127.0.0.1:{port}/hook")
        server.reset_peak()
        before = server.mb()
        send_tagged_fragment(server, answer)
        deadline = time.monotonic() + 60
        while not seen["held_s"] and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # the delivery's bookkeeping after the cut
        return {"held_s": seen["held_s"][:1], "sent_mb": round(seen["sent"][0] / 2**20, 1)
                if seen["sent"] else None, "peak_rss_growth_mb": round(server.mb() - before, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--huge-mb", type=int, default=1024)
    parser.add_argument("--out", type=Path,
                        default=Path(tempfile.gettempdir()) / "kvslite-webhooks.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        results = {"matrix": matrix(root),
                   "trickle": hostile(root, "trickle", 0),
                   "huge": hostile(root, "huge", args.huge_mb << 20)}
    print(f"{'destination':<14} {'default':<26} --webhook-allow {ALLOW}")
    for kind in INTERNAL:
        print(f"{kind:<14} {results['matrix']['default'][kind]:<26} "
              f"{results['matrix']['allowed'][kind]}")
    print(f"trickle: held {results['trickle']['held_s']} s")
    print(f"huge ({args.huge_mb} MB answer): peak RSS +{results['huge']['peak_rss_growth_mb']} "
          f"MB, {results['huge']['sent_mb']} MB taken by the socket before the cut")
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
