"""A waiting worker sleeps, and still does everything on time.

A worker waits blocked (on its task runner's pipe while a task runs; on the
queue's doorbell or a blocking stream read while idle), so these check both
halves: what must happen while it waits still happens promptly (a timeout, a
cancellation, a stop, a new job), and it does not wake up many times a second
while nothing happens (counted as context switches of the worker's threads,
with bounds generous enough for a busy machine, far below what polling costs).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import redis_server as rs
from helpers import wait_for

import cloudloop as cl
from cloudloop.backends import open_backend
from cloudloop.config import worker_options
from cloudloop.heartbeat import worker_records
from cloudloop.worker import Worker


def nap(seconds):
    time.sleep(seconds)
    return seconds


def started_at(_):
    return time.time()


def switches(pid: int) -> int:
    """Context switches of every thread of ``pid`` so far: how often it woke up."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            text = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                total += int(line.split()[1])
    return total


def wakeups(pid: int, seconds: float) -> int:
    before = switches(pid)
    time.sleep(seconds)
    return switches(pid) - before


def serving(url: str, n: int = 1) -> None:
    with open_backend(url) as b:
        wait_for(lambda: len(worker_records(b)) >= n, 30, what="the worker serving")


class InProcessWorker:
    """A Worker in a thread of the test (its runner is still a child process)."""

    def __init__(self, url: str, **options):
        options.setdefault("lease", 3)
        options.setdefault("heartbeat", 1)
        self.backend = open_backend(url)
        self.worker = Worker(self.backend, worker_options(**options))
        self.thread = threading.Thread(target=self.worker.run, daemon=True)
        self.thread.start()

    def stop(self, timeout: float = 30) -> float:
        t = time.monotonic()
        self.worker.request_stop()
        self.thread.join(timeout)
        return time.monotonic() - t


@pytest.fixture
def redis_url(tmp_path):
    rs.require()
    server = rs.RedisServer(tmp_path / "redis")
    yield server.url()
    server.stop()


# ---------------------------------------------------------------- on time


def test_a_timeout_is_enforced_promptly_while_the_worker_waits(make_executor):
    ex = make_executor(workers=1)
    job = ex.map_job(nap, [60, 0], timeout=1.0, chunksize=1)
    t = time.monotonic()
    first, second = job.results(return_exceptions=True, timeout=60)
    assert isinstance(first, cl.TaskTimeout) and second == 0
    assert time.monotonic() - t < 20  # start-up included; the task would sleep 60 s


def test_a_cancellation_stops_a_sleeping_task(make_executor):
    ex = make_executor(workers=1)
    job = ex.map_job(nap, [60])
    wait_for(lambda: job.status().running == 1, 30, what="the task running")
    t = time.monotonic()
    job.cancel()
    st = job.wait(timeout=30)
    assert st.state is cl.JobState.CANCELLED
    assert time.monotonic() - t < 15  # the worker checks every check_interval (2 s)


def test_a_stop_ends_the_wait_on_a_sleeping_task_and_hands_it_back(url):
    w = InProcessWorker(url)
    with cl.Executor(backend=url, workers=0) as ex:
        job = ex.map_job(nap, [60])
        wait_for(lambda: job.status().running == 1, 30, what="the task running")
        assert w.stop() < 5  # not the 60 s the task sleeps
        assert not w.thread.is_alive()
        assert open_backend(url).queue.stats().visible == 1  # handed back at once
        job.cancel()


def test_an_idle_worker_stops_at_once(url):
    w = InProcessWorker(url)
    serving(url)
    time.sleep(1.0)  # deep in its wait for a message
    assert w.stop() < 1.5


# ---------------------------------------------------------------- promptly woken


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_an_idle_worker_takes_a_new_job_within_a_second(backend, url, request):
    if backend == "redis":
        url = request.getfixturevalue("redis_url")
    w = InProcessWorker(url)
    try:
        serving(url)
        time.sleep(2.5)  # past its first wait: asleep on the queue
        with cl.Executor(backend=url, workers=0) as ex:
            for _ in range(3):
                t = time.time()
                (began,) = ex.map(started_at, [0])
                assert began - t < 1.0
                time.sleep(0.7)
    finally:
        w.stop()


# ---------------------------------------------------------------- asleep


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_a_worker_sleeps_while_idle_and_while_its_task_sleeps(backend, make_executor, request):
    """Polling every 20-50 ms would wake a worker 60-150 times in 3 s; blocked, it
    wakes a few times a second at most (its heartbeat is every second here)."""
    if backend == "redis":
        url = request.getfixturevalue("redis_url")
        ex = cl.Executor(backend=url, workers=1, lease=30, heartbeat=1)
    else:
        ex = make_executor(workers=1, lease=30)
        url = ex.backend.url
    try:
        (pid,) = ex._pool.pids
        serving(url)
        ex.map(nap, [0])  # its task runner is up
        time.sleep(1.0)
        idle = wakeups(pid, 3.0)
        job = ex.map_job(nap, [30])
        wait_for(lambda: job.status().running == 1, 30, what="the task running")
        time.sleep(0.5)
        waiting = wakeups(pid, 3.0)
        job.cancel()
    finally:
        ex.shutdown(wait=False, cancel_futures=True)
        ex._pool.stop(timeout=10)
    assert idle < 40, f"idle, the worker woke {idle} times in 3 s"
    assert waiting < 40, f"waiting on its task, the worker woke {waiting} times in 3 s"
