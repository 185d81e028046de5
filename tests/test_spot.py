"""Spot interruption: the worker hands its work back and the task resumes elsewhere."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from helpers import long_training, wait_for
from imds import MetadataServer

import cloudloop as cl
from cloudloop.spot import Imds, SpotWatcher


@pytest.fixture
def imds():
    server = MetadataServer()
    yield server
    server.close()


def test_imds_client_uses_v2_tokens(imds):
    client = Imds(imds.url)
    assert client.get("instance-id") == "i-0000000000000000"
    assert client.get("spot/instance-action") is None
    imds.notify()
    assert json.loads(client.get("spot/instance-action"))["action"] == "terminate"


def test_watcher_fires_once(imds):
    seen = []
    w = SpotWatcher(imds.url, seen.append, every=0.1)
    w.start()
    time.sleep(0.3)
    assert seen == []
    imds.notify()
    wait_for(lambda: seen, timeout=5, what="notice")
    w.join(5)
    assert len(seen) == 1 and not w.is_alive()


def _worker(url, *extra):
    cmd = [sys.executable, "-m", "cloudloop", "worker", "--backend", url, "--lease", "30", *extra]
    return subprocess.Popen(cmd)


def test_notice_releases_work_at_once_and_the_task_resumes_from_its_checkpoint(url, imds):
    ex = cl.Executor(backend=url, workers=0)
    job = ex.map_job(long_training, [20], [0.25])
    doomed = _worker(url, "--metadata-url", imds.url, "--preempt-grace", "30")
    try:
        wait_for(
            lambda: job.logs(0) is not None and _step(ex, job) >= 3, timeout=30, what="progress"
        )
        imds.notify()
        assert doomed.wait(timeout=20) == 0  # leaves well before its 30 s lease would expire
        rescuer = _worker(url, "--idle-exit", "2")
        (state,) = job.results(timeout=60)
        assert rescuer.wait(timeout=30) == 0
    finally:
        for p in (doomed, locals().get("rescuer")):
            if p is not None and p.poll() is None:
                p.kill()
    assert state["step"] == 20 and state["runs"] == 2
    assert state["resumed_at"] >= 3  # resumed, not restarted
    outcome = job.outcomes()[0]
    assert outcome.error is None


def plain_steps(steps):
    state = cl.restore({"step": 0, "starts": []})
    state["starts"].append(state["step"])
    while state["step"] < steps:
        time.sleep(0.2)
        state["step"] += 1
        cl.checkpoint(state)
    return state


def test_a_task_that_ignores_the_notice_is_stopped_after_the_grace(url, imds):
    ex = cl.Executor(backend=url, workers=0)
    job = ex.map_job(plain_steps, [60])  # 12 s: the notice is polled every 5 s
    doomed = _worker(url, "--metadata-url", imds.url, "--preempt-grace", "1")
    try:
        wait_for(lambda: _step(ex, job) >= 2, timeout=30, what="progress")
        imds.notify()
        assert doomed.wait(timeout=20) == 0
        rescuer = _worker(url, "--idle-exit", "2")
        (state,) = job.results(timeout=60)
    finally:
        for p in (doomed, locals().get("rescuer")):
            if p is not None and p.poll() is None:
                p.kill()
    assert state["starts"][0] == 0 and state["starts"][1] >= 2
    assert job.outcomes()[0].attempt == 1  # a preemption is not a retry


def _step(ex, job) -> int:
    from cloudloop import codec, keys

    data = ex.backend.get_signed(keys.checkpoint(job.id, 0))
    if data is None:
        return 0
    return codec.loads(data)["step"]
