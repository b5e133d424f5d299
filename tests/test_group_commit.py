"""GroupCommit (src/kvslite/server/store/group_commit.py): requests queued while a batch
runs go together in the next one, each settled with its own outcome."""

from __future__ import annotations

import threading
import time

import pytest

from kvslite.server.store.group_commit import GroupCommit


def test_requests_queued_during_a_batch_share_the_next_and_keep_their_own_outcomes():
    """The first request's batch is held open while 9 more queue; they run as one second
    batch; each caller gets its own result, and the one bad request its own error."""
    release, batches = threading.Event(), []

    def run_batch(batch):
        batches.append([pending.request for pending in batch])
        if batch[0].request == 0:
            release.wait(10)
        for pending in batch:
            if pending.request == 5:
                pending.fail(ValueError("request 5 is bad"))
            else:
                pending.succeed(pending.request * 10)

    commits = GroupCommit(run_batch)
    outcomes = {}

    def call(request):
        try:
            outcomes[request] = commits.submit(request)
        except ValueError as e:
            outcomes[request] = str(e)

    first = threading.Thread(target=call, args=(0,))
    first.start()
    _wait_until(lambda: batches == [[0]])
    rest = [threading.Thread(target=call, args=(i,)) for i in range(1, 10)]
    for thread in rest:
        thread.start()
    _wait_until(lambda: commits.queued == 9)
    release.set()
    for thread in [first, *rest]:
        thread.join(10)

    assert [sorted(batch) for batch in batches] == [[0], list(range(1, 10))]
    assert commits.batches == 2
    assert outcomes == {i: "request 5 is bad" if i == 5 else i * 10 for i in range(10)}


def test_a_batch_that_raises_fails_each_of_its_requests_and_the_next_runs():
    def run_batch(batch):
        if batch[0].request == "boom":
            raise RuntimeError("the database went away")
        for pending in batch:
            pending.succeed("ok")

    commits = GroupCommit(run_batch)
    with pytest.raises(RuntimeError, match="went away"):
        commits.submit("boom")
    assert commits.submit("fine") == "ok"  # a failed batch leaves nothing running


def _wait_until(condition, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


def test_one_batch_at_a_time_under_many_callers_and_each_gets_its_own_outcome():
    """16 threads submit 40 requests each: never two batches at once, every caller gets
    its own result, and callers share batches. An unsettled request fails, alone."""
    running, overlaps, lock = [0], [], threading.Lock()

    def run_batch(batch):
        with lock:
            running[0] += 1
            overlaps.append(running[0])
        time.sleep(0.001)
        for pending in batch:
            if pending.request != (3, 7):  # left unsettled
                pending.succeed(pending.request)
        with lock:
            running[0] -= 1

    commits = GroupCommit(run_batch)
    outcomes: dict = {}

    def caller(thread):
        for i in range(40):
            try:
                outcomes[thread, i] = commits.submit((thread, i))
            except RuntimeError as e:
                outcomes[thread, i] = str(e)

    threads = [threading.Thread(target=caller, args=(t,)) for t in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert max(overlaps) == 1
    assert len(outcomes) == 640
    assert outcomes.pop((3, 7)) == "the batch left this request unsettled"
    assert all(key == value for key, value in outcomes.items())
    assert commits.batches < 640
