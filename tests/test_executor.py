"""Executor is a real concurrent.futures.Executor; map/submit/cancel/shutdown semantics."""

from __future__ import annotations

import concurrent.futures as cf
import inspect
import time
from pathlib import Path

import pytest

import cloudloop as cl
from cloudloop.errors import RemoteTraceback


def add(x, y=0):
    return x + y


def slow_square(x, delay=0.2):
    time.sleep(delay)
    return x * x


def fail_on(x, bad=3):
    if x == bad:
        raise ValueError(f"bad value {x}")
    return x


def touch_and_sleep(path, delay):
    time.sleep(delay)
    Path(path).write_text("ran")
    return path


def test_signatures_match_the_stdlib():
    for name in ("submit", "map", "shutdown"):
        ours = inspect.signature(getattr(cl.Executor, name))
        std = inspect.signature(getattr(cf.Executor, name))
        assert list(ours.parameters) == list(std.parameters), name
        for p in std.parameters.values():
            assert ours.parameters[p.name].kind == p.kind, (name, p.name)
            assert ours.parameters[p.name].default == p.default, (name, p.name)
    assert issubclass(cl.Executor, cf.Executor)


def test_submit_returns_stdlib_future(make_executor):
    ex = make_executor()
    fut = ex.submit(add, 1, y=2)
    assert isinstance(fut, cf.Future)
    assert fut.result(timeout=60) == 3


def test_map_keeps_input_order_with_several_iterables(make_executor):
    ex = make_executor()
    assert list(ex.map(add, range(50), range(100, 150))) == [
        a + b for a, b in zip(range(50), range(100, 150))
    ]


def test_map_with_explicit_chunksize(make_executor):
    ex = make_executor()
    assert list(ex.map(add, range(300), chunksize=50)) == list(range(300))


def test_map_timeout_raises_timeouterror(make_executor):
    ex = make_executor()
    it = ex.map(slow_square, [1, 2], [5, 5], timeout=0.5)
    with pytest.raises(cf.TimeoutError):
        list(it)


def test_as_completed_and_wait(make_executor):
    ex = make_executor()
    fs = [ex.submit(slow_square, i, 0.05 * (5 - i)) for i in range(5)]
    assert sorted(f.result() for f in cf.as_completed(fs, timeout=60)) == [0, 1, 4, 9, 16]
    done, not_done = cf.wait(fs, timeout=60)
    assert len(done) == 5 and not not_done


def test_exception_has_own_type_and_remote_traceback(make_executor):
    ex = make_executor()
    fut = ex.submit(fail_on, 3)
    with pytest.raises(ValueError, match="bad value 3") as info:
        fut.result(timeout=60)
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "fail_on" in str(cause) and "raise ValueError" in str(cause)


def test_map_raises_at_the_failing_position(make_executor):
    ex = make_executor()
    it = ex.map(fail_on, range(6))
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError):
        next(it)


def test_cancel_pending_future_skips_the_task(make_executor, tmp_path):
    ex = make_executor(workers=1)
    blocker = ex.submit(slow_square, 1, 1.5)
    marker = tmp_path / "should-not-exist"
    late = ex.submit(touch_and_sleep, str(marker), 0)
    assert late.cancel()
    assert late.cancelled()
    assert blocker.result(timeout=60) == 1
    ex.submit(add, 1).result(timeout=60)  # the worker has moved past the cancelled task
    time.sleep(0.5)
    assert not marker.exists()


def test_shutdown_waits_and_refuses_new_work(make_executor):
    ex = make_executor()
    fs = [ex.submit(slow_square, i, 0.1) for i in range(4)]
    ex.shutdown(wait=True)
    assert all(f.done() for f in fs)
    with pytest.raises(RuntimeError):
        ex.submit(add, 1)
    assert ex._pool.alive() == 0


def test_shutdown_cancel_futures(make_executor):
    ex = make_executor(workers=1)
    fs = [ex.submit(slow_square, i, 0.5) for i in range(8)]
    time.sleep(0.3)
    ex.shutdown(wait=True, cancel_futures=True)
    assert any(f.cancelled() for f in fs)
    assert all(f.done() for f in fs)


def test_context_manager_and_module_map(url):
    assert cl.map(add, [1, 2, 3], [10, 20, 30], backend=url, workers=2) == [11, 22, 33]


def test_map_job_is_durable_and_attachable(make_executor, url):
    ex = make_executor()
    job = ex.map_job(slow_square, range(10), name="squares")
    assert job.id and job.name == "squares"
    st = job.wait(timeout=60)
    assert st.state is cl.JobState.COMPLETED and st.done == st.total == 10
    again = cl.attach(job.id, backend=url)
    assert again.results() == [x * x for x in range(10)]


def test_results_return_exceptions_and_failures(make_executor):
    ex = make_executor()
    job = ex.map_job(fail_on, range(5))
    out = job.results(return_exceptions=True)  # waits
    assert out[:3] == [0, 1, 2] and out[4] == 4
    assert isinstance(out[3], ValueError)
    (f,) = job.failures()
    assert f.index == 3 and isinstance(f.exception, ValueError) and f.attempt == 1
    assert "raise ValueError" in f.traceback
    assert job.status().state is cl.JobState.FAILED
    with pytest.raises(ValueError):
        job.results()


def flaky(path):
    p = Path(path)
    n = int(p.read_text()) if p.exists() else 0
    p.write_text(str(n + 1))
    print(f"attempt {n + 1}")
    if n == 0:
        raise RuntimeError("first attempt fails")
    return n + 1


def test_retries_rerun_user_errors(make_executor, tmp_path):
    ex = make_executor()
    job = ex.map_job(flaky, [str(tmp_path / "count")], retries=2)
    assert job.results() == [2]
    (o,) = job.outcomes().values()
    assert o.attempt == 2
    log = job.logs(0)
    assert (
        "attempt 1" in log and "attempt 2" in log and "RuntimeError" not in job.logs(0, attempt=2)
    )


def test_no_retries_means_one_attempt(make_executor, tmp_path):
    ex = make_executor()
    job = ex.map_job(flaky, [str(tmp_path / "count")])
    job.wait(timeout=60)
    (f,) = job.failures()
    assert f.attempt == 1 and "attempt 1" in f.log


def test_job_cancel_stops_running_and_queued_tasks(make_executor):
    ex = make_executor()
    job = ex.map_job(slow_square, range(40), [1.0] * 40, chunksize=1)
    time.sleep(1.5)
    job.cancel()
    st = job.wait(timeout=30)
    assert st.state is cl.JobState.CANCELLED
    with pytest.raises(cl.JobCancelled):
        job.results()
    time.sleep(2)
    assert job.status().done < 40


def hello(x):
    print(f"hello from task {x}")
    import logging

    logging.getLogger("user").warning("warned %s", x)
    return x


def test_logs_capture_print_and_logging(make_executor):
    ex = make_executor()
    job = ex.map_job(hello, range(3))
    job.wait(timeout=60)
    for i in range(3):
        text = job.logs(i)
        assert f"hello from task {i}" in text
        assert f"warned {i}" in text


def chatty(n):
    print("started", flush=True)
    time.sleep(n)
    print("finished", flush=True)
    return n


def test_logs_stream_while_the_task_runs(make_executor):
    ex = make_executor(workers=1)
    job = ex.map_job(chatty, [6])
    from helpers import wait_for

    wait_for(lambda: "started" in job.logs(0), timeout=5.5, what="live log")
    assert "finished" not in job.logs(0)
    job.wait(timeout=60)
    assert job.logs(0).count("started") == 1 and "finished" in job.logs(0)


def big(x):
    return len(x)


def test_large_arguments_spill_to_the_store(make_executor):
    ex = make_executor()
    ex.backend.queue.max_message_bytes = 64 * 1024  # as a service with small messages would
    data = b"x" * (1 << 20)
    job = ex.map_job(big, [data, data[:10]])
    assert job.results() == [1 << 20, 10]
    assert ex.backend.store.list(f"jobs/{job.id}/inputs/")


def worker_of(x):
    time.sleep(0.3)
    import os

    return os.environ["CLOUDLOOP_WORKER_ID"]


def test_long_chunks_are_split_for_idle_workers(make_executor):
    ex = make_executor(workers=2, split_after=1)
    job = ex.map_job(worker_of, range(16), chunksize=16)
    assert len(set(job.results())) == 2


USER_MODULE = """
import functools

SCALE = 3

@functools.lru_cache(maxsize=None)
def table():
    return {i: i * SCALE for i in range(10)}

class Point:
    def __init__(self, x):
        self.x = x

def scaled(p):
    return Point(table()[p.x])
"""


def test_user_modules_workers_cannot_import_are_shipped_by_value(
    make_executor, tmp_path, monkeypatch
):
    pkg = tmp_path / "elsewhere"
    pkg.mkdir()
    (pkg / "mylab_models.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(pkg))  # importable here, not on the workers' path
    import mylab_models

    ex = make_executor()
    out = list(ex.map(mylab_models.scaled, [mylab_models.Point(i) for i in range(4)]))
    assert [p.x for p in out] == [0, 3, 6, 9]
    assert all(isinstance(p, mylab_models.Point) for p in out)


HELPER_MODULE = """
def train(x):
    return x * 7
"""

USES_HELPER = """
from mylab_helpers import train
import mylab_helpers as helpers_module

def fit(x):
    return train(x) + helpers_module.train(1)
"""


def test_modules_a_task_uses_indirectly_are_shipped_too(make_executor, tmp_path, monkeypatch):
    pkg = tmp_path / "elsewhere2"
    pkg.mkdir()
    (pkg / "mylab_helpers.py").write_text(HELPER_MODULE)
    (pkg / "mylab_fits.py").write_text(USES_HELPER)
    monkeypatch.syspath_prepend(str(pkg))  # importable here, not on the workers' path
    import mylab_fits

    ex = make_executor()
    assert list(ex.map(mylab_fits.fit, range(3))) == [7, 14, 21]


def test_main_style_cached_function_is_shipped(make_executor):
    import functools

    @functools.cache
    def data():
        return [1, 2, 3]

    def use(i):
        return data()[i]

    ex = make_executor()
    assert list(ex.map(use, range(3))) == [1, 2, 3]
