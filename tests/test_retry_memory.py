"""retry_memory: a task killed for memory is retried with a bigger limit, on a
worker that offers that much, never again on the small one; with none about,
it fails saying what to do. Real workers (separate processes), real kills."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import wait_for, worker_records

import cloudloop as cl
from cloudloop.backends import open_backend
from cloudloop.errors import MemoryLimitExceeded


def hungry(mb):
    """Hold ``mb`` MB (touched, so it is resident) long enough to be measured."""
    import time

    print("on", os.environ.get("CLOUDLOOP_WORKER_ID"), flush=True)
    block = bytearray(mb << 20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    time.sleep(0.6)
    return len(block) >> 20


def _worker(url: str, memory: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "cloudloop", "worker", "--backend", url]
    cmd += ["--worker-memory", memory, "--heartbeat", "1", "--idle-exit", "60", "--lease", "5"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture
def workers(url):
    procs: list[subprocess.Popen] = []

    def start(*memories: str) -> list[int]:
        procs.extend(_worker(url, m) for m in memories)
        backend = open_backend(url)
        wait_for(lambda: len(worker_records(backend)) >= len(procs), 30, what="workers up")
        return [p.pid for p in procs]

    yield start
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(20)


def test_the_retry_runs_with_more_memory_on_a_worker_that_offers_it(url, workers):
    [small] = workers("300MB")  # the first attempts land on the small worker
    with cl.Executor(backend=url, workers=0) as ex:
        job = ex.map_job(hungry, [250] * 2, memory="150MB", retry_memory=4.0, retries=1)
        wait_for(lambda: f"-{small}-" in job.logs(0, attempt=1), 60, what="a first attempt")
        big = workers("4GB")[-1]  # then a big one starts
        st = job.wait(timeout=180)
        assert (st.failed, st.done) == (0, 2), job.failures()
        assert job.results() == [250] * 2
        for i, o in job.outcomes().items():
            assert o.attempt == 2 and f"-{big}-" in o.worker, (o.worker, small, big)
            assert f"-{small}-" in job.logs(i, attempt=1)


def test_with_no_worker_big_enough_it_fails_saying_what_to_do(url, workers):
    workers("300MB")
    with cl.Executor(backend=url, workers=0) as ex:
        job = ex.map_job(hungry, [250], memory="150MB", retry_memory=4.0, retries=1)
        st = job.wait(timeout=120)
        assert st.failed == 1
        [f] = job.failures()
        assert isinstance(f.exception, MemoryLimitExceeded)
        assert "no worker offers that much" in str(f.exception)
        assert f"cloudloop retry {job.id}" in str(f.exception)


@pytest.mark.parametrize(
    "value, words",
    [
        (1.0, "a factor above 1"),
        (0, "a factor above 1"),
        ("2", "a factor above 1"),
        (float("inf"), "a factor above 1"),
    ],
)
def test_a_bad_factor_is_refused(url, value, words):
    with cl.Executor(backend=url, workers=0) as ex, pytest.raises(cl.ConfigError, match=words):
        ex.map_job(hungry, [1], retry_memory=value)
