"""Ctrl-C on a durable job, with a real SIGINT: stop waiting at once, say the job goes
on (and how to see, re-attach to and cancel it); the local workers finish it and then
exit; no finished result is lost. An exception or sys.exit inside ``with
cl.Executor()`` returns at once too. A second Ctrl-C leaves at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import wait_for

import cloudloop as cl

PRELUDE = """
import sys, time
import cloudloop as cl
def slow(x):
    time.sleep(0.5)
    return x * 10
"""

# (name, body run after PRELUDE, how it must end: "interrupt" | exit status)
PATTERNS = [
    (
        "with-executor-wait",
        "with cl.Executor(workers=2) as ex:\n"
        "    job = ex.map_job(slow, range(24))\n"
        "    print('JOB', job.id, flush=True)\n"
        "    job.wait(progress=True)\n",
        "interrupt",
    ),
    (
        "with-executor-results",
        "with cl.Executor(workers=2) as ex:\n"
        "    job = ex.map_job(slow, range(24))\n"
        "    print('JOB', job.id, flush=True)\n"
        "    job.results()\n",
        "interrupt",
    ),
    (
        "cl-map",
        "import cloudloop.executor as e\n"
        "orig = e.Executor.map_job\n"
        "def map_job(self, *a, **k):\n"
        "    job = orig(self, *a, **k); print('JOB', job.id, flush=True); return job\n"
        "e.Executor.map_job = map_job\n"
        "cl.map(slow, range(24), workers=2, progress=True)\n",
        "interrupt",
    ),
]


def _start(tmp_path: Path, body: str) -> subprocess.Popen:
    script = tmp_path / "loop.py"
    script.write_text(PRELUDE + body)
    return subprocess.Popen(
        [sys.executable, str(script)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _job_id(proc: subprocess.Popen) -> str:
    line = proc.stdout.readline()
    assert line.startswith("JOB "), line + proc.stderr.read()
    return line.split()[1]


def _workers_of(pid: int) -> list[int]:
    out = subprocess.run(
        ["pgrep", "-f", f"cloudloop worker .*--parent-pid {pid}"], capture_output=True, text=True
    )
    return [int(p) for p in out.stdout.split()]


@pytest.mark.parametrize("name,body,ends", PATTERNS, ids=[p[0] for p in PATTERNS])
def test_one_ctrl_c_stops_waiting_at_once_and_the_job_goes_on(tmp_path, name, body, ends):
    proc = _start(tmp_path, body)
    job_id = _job_id(proc)
    time.sleep(1.5)  # some tasks done, most not
    t0 = time.monotonic()
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    took = time.monotonic() - t0
    assert took < 3.0, f"returned {took:.1f} s after Ctrl-C"
    assert proc.returncode in (-signal.SIGINT, 1, 130), (proc.returncode, err)
    assert "KeyboardInterrupt" in err  # a Python program is interrupted as Python says
    assert f"cloudloop status {job_id}" in err and f"cloudloop cancel {job_id}" in err, err
    assert f'cl.attach("{job_id}")' in err and "go on with its tasks" in err
    # the job goes on: this process's workers finish it, then leave by themselves
    job = cl.attach(job_id, backend=f"sqlite://{tmp_path}/.cloudloop")
    assert job.wait(timeout=60).state.value == "completed"
    assert job.results() == [x * 10 for x in range(24)], "no finished result is lost"
    wait_for(lambda: not _workers_of(proc.pid), timeout=30, what="its workers to exit")


# (name, body, exit status): leaving `with` by an exception does not wait for the job
LEAVES = [
    (
        "exception",
        "with cl.Executor(workers=1) as ex:\n    ex.map_job(slow, range(40))\n"
        "    raise RuntimeError('a bug in the loop')\n",
        1,
    ),
    (
        "sys-exit",
        "with cl.Executor(workers=1) as ex:\n    ex.map_job(slow, range(40))\n    sys.exit(3)\n",
        3,
    ),
]


@pytest.mark.parametrize("name,body,status", LEAVES, ids=[p[0] for p in LEAVES])
def test_an_exception_inside_the_with_block_returns_at_once(tmp_path, name, body, status):
    t0 = time.monotonic()
    proc = _start(tmp_path, body)
    _, err = proc.communicate(timeout=30)
    assert time.monotonic() - t0 < 8.0, "it waited for the 40 x 0.5 s job"
    assert proc.returncode == status, err
    assert "stopped waiting" not in err, "only Ctrl-C speaks of itself"


def test_a_second_ctrl_c_leaves_at_once(tmp_path):
    body = (
        "import threading\n"
        "with cl.Executor(workers=1) as ex:\n"
        "    job = ex.map_job(slow, range(24))\n"
        "    print('JOB', job.id, flush=True)\n"
        "    try:\n"
        "        job.wait()\n"
        "    finally:\n"
        "        time.sleep(30)  # a slow clean-up: the second Ctrl-C ends it\n"
    )
    proc = _start(tmp_path, body)
    _job_id(proc)
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGINT)
    time.sleep(0.5)
    t0 = time.monotonic()
    os.kill(proc.pid, signal.SIGINT)
    proc.communicate(timeout=10)
    assert time.monotonic() - t0 < 3.0
    assert proc.returncode != 0


def test_cloudloop_run_ctrl_c_says_how_to_go_on_with_no_traceback(tmp_path):
    (tmp_path / "rows.csv").write_text("n\n" + "".join(f"{i}\n" for i in range(20)))
    exe = Path(sys.executable).with_name("cloudloop")
    proc = subprocess.Popen(
        [str(exe), "run", "--workers", "2", "--items", "rows.csv", "--", "sleep", "0.5"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    wait_for(lambda: (tmp_path / ".cloudloop").exists(), timeout=20, what="the job")
    time.sleep(2.0)
    t0 = time.monotonic()
    os.kill(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert time.monotonic() - t0 < 3.0
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "stopped waiting" in err and "cloudloop cancel" in err, err
