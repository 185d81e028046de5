"""What a task can ask of cloudloop: checkpoints that survive crashes, progress."""

from __future__ import annotations

import importlib
import os
import pkgutil
import time

from helpers import wait_for, worker_records

import cloudloop as cl
from cloudloop.backends import open_backend


def resumable(n):
    state = cl.restore({"step": 0, "resumed": False})
    if state["step"]:
        state["resumed"] = True
    while state["step"] < n:
        state["step"] += 1
        cl.checkpoint(state)
        if state["step"] == n // 2 and not state["resumed"]:
            os._exit(9)  # dies mid-way on the first attempt
    return state


def test_checkpoint_survives_a_crash_and_the_retry_resumes(make_executor, url):
    ex = make_executor()
    job = ex.map_job(resumable, [10], retries=1)
    (state,) = job.results()
    assert state == {"step": 10, "resumed": True}
    assert job.outcomes()[0].attempt == 2
    # a finished task's checkpoint is removed
    assert open_backend(url).store.list(f"jobs/{job.id}/checkpoints/") == []


def reports(x):
    for i in range(30):
        cl.progress(i / 30, f"epoch {i}")
        time.sleep(0.1)
    return x


def test_progress_shows_in_the_worker_heartbeat(make_executor, url):
    ex = make_executor(workers=1, heartbeat=0.2)
    job = ex.map_job(reports, [1])
    backend = open_backend(url)

    def progressed():
        for rec in worker_records(backend):
            if rec.get("job") == job.id and (rec.get("progress") or 0) > 0.2:
                return rec
        return None

    rec = wait_for(progressed, timeout=20, what="task progress in a heartbeat")
    assert rec["message"].startswith("epoch") and rec["task"] == 0
    assert job.results() == [1]


def test_public_names_are_not_shadowed_by_submodules():
    for mod in pkgutil.iter_modules(cl.__path__):
        if mod.name != "__main__":
            importlib.import_module(f"cloudloop.{mod.name}")
    for name in ("map", "progress", "checkpoint", "restore", "attach", "task_seed"):
        assert callable(getattr(cl, name)), name
