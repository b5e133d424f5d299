"""GroupCommit's cost in context switches: 40 threads (a busy node's ingest workers) each
submit 100 requests, 2 ms apart, to a batch function that takes 0.5 ms (a commit's fsync).
Reports batches, context switches and CPU per request for this checkout and, with
--baseline-src, for another checkout's GroupCommit in a subprocess (same run, same machine).

Rerun:  PYTHONPATH=src .venv/bin/python benchmarks/group_commit_wakeups.py
            [--baseline-src /tmp/old/src]
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import threading
import time

from kvslite.server.store.group_commit import GroupCommit


def run_batch(batch) -> None:
    time.sleep(0.0005)  # a commit's fsync
    for pending in batch:
        pending.succeed(pending.request)


def measure(threads: int = 40, per_thread: int = 100) -> str:
    commits = GroupCommit(run_batch)
    start = threading.Barrier(threads)

    def caller(t: int) -> None:
        start.wait()
        for i in range(per_thread):
            commits.submit((t, i))
            time.sleep(0.002)

    workers = [threading.Thread(target=caller, args=(t,)) for t in range(threads)]
    r0 = resource.getrusage(resource.RUSAGE_SELF)  # every thread of the process, ended too
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    n = threads * per_thread
    switches = (r1.ru_nvcsw + r1.ru_nivcsw - r0.ru_nvcsw - r0.ru_nivcsw) / n
    cpu_ms = (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) * 1000 / n
    return (f"{commits.batches} batches for {n} requests; {switches:.1f} context switches "
            f"and {cpu_ms:.3f} ms CPU per request")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline-src", help="another checkout's src folder to compare with")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    for _ in range(args.rounds):
        print("this checkout:", measure(), flush=True)
        if args.baseline_src:
            out = subprocess.run([sys.executable, __file__], capture_output=True, text=True,
                                 env={**os.environ, "PYTHONPATH": args.baseline_src,
                                      "GROUP_COMMIT_ONCE": "1"}, check=True).stdout
            print("baseline:     ", out.strip(), flush=True)


if __name__ == "__main__":
    if os.environ.get("GROUP_COMMIT_ONCE"):
        print(measure())
    else:
        main()
