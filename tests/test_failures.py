"""Bad input gets a clear error and loses nothing."""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from helpers import pid_alive, wait_for

import cloudloop as cl
from cloudloop import codec
from cloudloop.backends import open_backend


def ok(x):
    return x


def segfault(x):
    if x == 1:
        ctypes.string_at(0)
    return x


def hard_exit(x):
    if x == 1:
        os._exit(3)
    return x


def hog(x, mb=800):
    if x == 1:
        blocks = []
        for _ in range(mb // 50):
            blocks.append(bytearray(50 * 10**6))
            time.sleep(0.02)
    time.sleep(0.2)
    return x


def sleeper_with_child(pidfile):
    child = subprocess.Popen(["sleep", "300"])
    Path(pidfile).write_text(str(child.pid))
    time.sleep(300)


def test_segfaulting_task_is_reported_and_others_survive(make_executor):
    ex = make_executor()
    job = ex.map_job(segfault, range(4))
    out = job.results(return_exceptions=True)
    assert out[0] == 0 and out[2:] == [2, 3]
    assert isinstance(out[1], cl.TaskCrashed)
    assert "SIGSEGV" in str(out[1])


def test_os_exit_in_a_task_is_reported(make_executor):
    ex = make_executor()
    out = ex.map_job(hard_exit, range(3)).results(return_exceptions=True)
    assert isinstance(out[1], cl.TaskCrashed) and "status 3" in str(out[1])
    assert out[0] == 0 and out[2] == 2


def test_crash_counts_against_retries(make_executor):
    ex = make_executor()
    job = ex.map_job(segfault, [1], retries=2)
    (f,) = job.results(return_exceptions=True)
    assert isinstance(f, cl.TaskCrashed)
    assert job.failures()[0].attempt == 3


def test_task_over_memory_limit_is_killed_with_a_clear_error(make_executor):
    ex = make_executor()
    job = ex.map_job(hog, range(3), memory="300MB")
    out = job.results(return_exceptions=True)
    assert out[0] == 0 and out[2] == 2
    assert isinstance(out[1], cl.MemoryLimitExceeded) and isinstance(out[1], MemoryError)
    assert "memory limit of 300 MB" in str(out[1])


def test_task_over_timeout_has_its_whole_process_group_killed(make_executor, tmp_path):
    ex = make_executor()
    pidfile = tmp_path / "child.pid"
    job = ex.map_job(sleeper_with_child, [str(pidfile)], timeout="1.5s")
    (err,) = job.results(return_exceptions=True)
    assert isinstance(err, cl.TaskTimeout) and isinstance(err, TimeoutError)
    assert "timeout of 1.5 s" in str(err)
    child = int(pidfile.read_text())
    wait_for(lambda: not pid_alive(child), timeout=5, what="task's subprocess to die")


def test_unpicklable_function_is_refused_at_submit_naming_the_object(make_executor):
    ex = make_executor(workers=0)
    lock = threading.Lock()

    def uses_lock(x):
        with lock:
            return x

    with pytest.raises(cl.SerializationError, match="closure variable 'lock'.*lock"):
        ex.map_job(uses_lock, [1, 2])
    with pytest.raises(TypeError):  # SerializationError is a TypeError too
        ex.submit(uses_lock, 1)
    assert ex.backend.queue.stats().total == 0


def test_unpicklable_argument_names_the_task_and_argument(make_executor):
    ex = make_executor(workers=0)
    items = [1, 2, threading.Lock()]
    with pytest.raises(cl.SerializationError, match="argument 0 of task 2"):
        ex.map_job(ok, items)
    with pytest.raises(cl.SerializationError, match="argument"):
        ex.submit(ok, threading.Lock())


def test_unknown_backend_scheme_lists_the_known_ones():
    from cloudloop.backends import known_schemes

    assert {"aws", "sqlite"} <= set(known_schemes())
    known = re.escape(", ".join(known_schemes()))
    with pytest.raises(cl.ConfigError, match=f"'sqs' is not known; known: {known}"):
        cl.Executor(backend="sqs://queue/x", workers=0)


def test_backend_in_an_unusable_place(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(cl.ConfigError, match="cannot use .*a-file/x.*choose a writable directory"):
        cl.Executor(backend=f"sqlite://{blocker}/x", workers=0)


def test_bad_option_values():
    with pytest.raises(cl.ConfigError, match="timeout 'soon' is not a duration"):
        cl.Executor(workers=0, timeout="soon")
    with pytest.raises(cl.ConfigError, match="unknown option"):
        cl.Executor(workers=0, retry=3)
    with pytest.raises(cl.ConfigError, match="memory"):
        cl.Executor(workers=0, memory="lots")


def test_tampered_function_blob_is_not_unpickled(make_executor, url):
    ex = make_executor(workers=0)
    job = ex.map_job(ok, [1])
    backend = open_backend(url)
    (key,) = backend.store.list(f"jobs/{job.id}/fn/")
    blob = bytearray(backend.store.get(key))
    blob[-1] ^= 1
    backend.store.put(key, bytes(blob))
    make_executor(workers=1)
    (err,) = job.results(return_exceptions=True)
    assert isinstance(err, cl.CorruptMessage) and "signature" in str(err)


def kill_my_worker(x):
    if x == 1:
        os.kill(os.getppid(), signal.SIGKILL)  # the runner's parent is the worker
        time.sleep(10)
    return x


def test_task_that_keeps_killing_its_worker_is_dead_lettered(make_executor):
    ex = make_executor(workers=1, lease=1, max_deliveries=2)
    job = ex.map_job(kill_my_worker, range(3), chunksize=3)
    out = job.results(return_exceptions=True, timeout=120)
    assert out[0] == 0 and out[2] == 2
    assert isinstance(out[1], cl.WorkerLost)
    assert "dead-lettered" in str(out[1])
    assert ex._pool.restarts >= 2


def test_secret_key_is_private(url):
    backend = open_backend(url)
    path = Path(url.split("://", 1)[1]) / "secret.key"
    assert path.stat().st_mode & 0o077 == 0
    assert len(backend.key) == 32
    blob = codec.sign(backend.key, b"data", "jobs/a/x")
    assert codec.verify(backend.key, blob, "jobs/a/x") == b"data"
    with pytest.raises(cl.TamperedError):
        codec.verify(b"another key" * 3, blob, "jobs/a/x")
    with pytest.raises(cl.TamperedError, match="copied from another key"):
        codec.verify(backend.key, blob, "jobs/b/x")  # the same bytes under another name
