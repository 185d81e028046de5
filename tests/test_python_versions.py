"""Workers run only what they can: a job pickled by Python 3.X waits for a 3.X worker.

The other worker here is a real interpreter of another minor version (the
machine image carries several under pyenv, see FACTS.md), running this
cloudloop from the source tree with nothing but cloudpickle beside it: it
must leave the job's tasks alone (not fail them, not dead-letter them), say
nothing wrong about itself, and the job's status must name the mismatch,
until a worker of the right version comes and runs them.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from helpers import wait_for

import cloudloop as cl
from cloudloop import keys
from cloudloop.backends import open_backend
from cloudloop.heartbeat import worker_records
from cloudloop.model import PYTHON

SRC = Path(cl.__file__).resolve().parents[1]


def _other_python() -> tuple[str, str]:
    """(interpreter, its minor version) of a CPython >= 3.11 other than this one (3.10
    would need tomli beside it too)."""
    roots = [os.environ.get("PYENV_ROOT", ""), os.path.expanduser("~/.pyenv")]
    for root in filter(None, roots):
        for exe in sorted(glob.glob(f"{root}/versions/3.1[1-9].*/bin/python"), reverse=True):
            version = Path(exe).parents[1].name.rsplit(".", 1)[0]
            if version != PYTHON:
                return exe, version
    if os.environ.get("CI"):
        pytest.fail("CI's machine image must carry another CPython under pyenv (FACTS.md)")
    pytest.skip("no other CPython minor version on this machine")


def _square(x):
    return x * x


@pytest.fixture
def other_worker(tmp_path):
    """A worker of another Python minor version on a fresh SQLite backend."""
    exe, version = _other_python()
    deps = tmp_path / "deps"  # its own site: this cloudloop's source and cloudpickle only
    deps.mkdir()
    import cloudpickle

    shutil.copytree(Path(cloudpickle.__file__).parent, deps / "cloudpickle")
    url = f"sqlite://{tmp_path / 'backend'}"
    env = {**os.environ, "CLOUDLOOP_BACKEND": url, "PYTHONPATH": f"{SRC}{os.pathsep}{deps}",
           "PYTHONNOUSERSITE": "1", "CLOUDLOOP_CONFIG": str(tmp_path / "none.toml")}  # fmt: skip
    (tmp_path / "none.toml").write_text("")
    proc = subprocess.Popen(
        [exe, "-s", "-m", "cloudloop", "worker", "--no-profile", "--heartbeat", "0.5"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        with open_backend(url) as b:
            if proc.poll() is not None:
                pytest.fail(f"the Python {version} worker exited: {proc.stdout.read()}")
            wait_for(lambda: [r for r in worker_records(b) if r.python == version], timeout=60,
                     what=f"the Python {version} worker's record")  # fmt: skip
        yield url, version, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_a_worker_of_another_python_leaves_the_job_to_one_that_can(other_worker):
    url, version, proc = other_worker
    with cl.Executor(backend=url, workers=0) as ex:
        job = ex.map_job(_square, range(6), chunksize=6)  # one message
        assert job.manifest.python == PYTHON
        needs = f"no worker can run this job: it needs Python {PYTHON}, workers have {version}"
        wait_for(lambda: any(needs in p for p in job.status().problems), timeout=30,
                 what="the status to name the mismatch")  # fmt: skip
        assert needs in str(job.status())  # what `cloudloop status JOB` prints
        # a command job is plain data: the other Python runs it (past the job it set aside)
        echo = ex.command_job("echo {x}", [{"x": 1}, {"x": 2}])
        assert [r["stdout"].strip() for r in echo.results(timeout=60)] == ["1", "2"]
        st = job.status()
        assert st.done == 0 and st.failed == 0 and not st.state.finished
        with open_backend(url) as b:
            (rec,) = [r for r in worker_records(b) if r.python == version]
            assert rec.failures == 0 and rec.error is None
            assert b.store.list(keys.DEADLETTER) == []  # set aside, never dead-lettered
        # a worker of the job's own Python comes: it runs every task, the problem goes
        with cl.Executor(backend=url, workers=1):
            assert job.results(timeout=150) == [x * x for x in range(6)]
        assert rec.id not in {o.worker for o in job.outcomes().values()}
        assert not any("no worker can run" in p for p in job.status().problems)
    assert proc.poll() is None  # the other worker is alive and well, serving on
