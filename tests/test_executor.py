"""Executor is a real concurrent.futures.Executor; map/submit/cancel/shutdown semantics."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import inspect
import io
import os
import pickle
import re
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from pathlib import Path

import pytest
from helpers import pid_alive, wait_for

import cloudloop as cl
from cloudloop import keys
from cloudloop.errors import (
    CloudloopError,
    RemoteTraceback,
    SerializationError,
    TamperedError,
    UnreadableResult,
)
from cloudloop.job import list_jobs


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


# ---------------------------------------------------------------- the concurrent.futures contract

FUTURE_REPR = r"<Future at 0x[0-9a-f]+ state={}>"


def test_future_is_running_once_a_worker_claims_it_and_cancel_then_fails(make_executor):
    ex = make_executor(workers=1)
    fut = ex.submit(slow_square, 3, 1.5)
    assert re.fullmatch(FUTURE_REPR.format("(pending|running)"), repr(fut))
    wait_for(fut.running, what="the future to be RUNNING")
    assert re.fullmatch(FUTURE_REPR.format("running"), repr(fut))
    assert not fut.cancel()
    assert fut.running() and not fut.cancelled()
    assert fut.result(timeout=60) == 9
    assert re.fullmatch(FUTURE_REPR.format("finished returned int"), repr(fut))


def test_the_claim_decides_a_cancel_racing_a_worker_and_forged_claims_count_for_nothing(
    make_executor,
):
    ex = make_executor(workers=0)  # no worker: the test plays the worker's side of the claim
    job = ex.session_job().id
    claimed, free, forged = (ex.submit(add, i) for i in range(3))
    ex.backend.put_signed(keys.claim(job, 0), b"run", if_absent=True)  # a worker got there first
    ex.backend.store.put(keys.claim(job, 2), b"run")  # not signed: no worker wrote it
    wait_for(claimed.running, what="the claimed future to be RUNNING")
    assert not claimed.cancel() and claimed.running()
    assert free.cancel() and free.cancelled()
    assert ex.backend.get_signed(keys.claim(job, 1)) == b"cancel"  # no worker may run it now
    time.sleep(3 * ex.backend.poll_interval + 0.2)
    assert not forged.running()  # the session ignores what it cannot verify
    with pytest.raises(TamperedError):
        ex.backend.get_signed(keys.claim(job, 2))
    assert not forged.cancel()  # ... and workers run the task anyway: too late to cancel
    done, _ = cf.wait([free], timeout=5)  # a cancelled future wakes wait() at once
    assert done == {free}


def test_cancelled_futures_wake_as_completed_at_once(make_executor):
    ex = make_executor(workers=0)
    fs = [ex.submit(add, i) for i in range(3)]
    assert all(f.cancel() for f in fs)
    assert set(cf.as_completed(fs, timeout=5)) == set(fs)


class ExitOnClient:
    """Pickles anywhere; unpickling it outside a worker raises SystemExit."""

    def __reduce__(self):
        return _exit_outside_workers, ()


def _exit_outside_workers():
    if "CLOUDLOOP_PROVIDER" not in os.environ:  # set for the workers a provider starts
        raise SystemExit(3)
    return ExitOnClient()


class HostileError(Exception):
    """An exception that rebuilds on the worker but raises SystemExit on the client."""

    def __reduce__(self):
        return _hostile_error, (str(self),)


def _hostile_error(message):
    if "CLOUDLOOP_PROVIDER" not in os.environ:
        raise SystemExit(4)
    return HostileError(message)


def return_exit_on_client(_=None):
    return ExitOnClient()


def raise_hostile_error():
    raise HostileError("boom")


WORKER_ONLY_MODULE = """
class Thing:
    pass
"""


def return_worker_only_thing(directory):
    sys.path.insert(0, directory)
    import worker_only_things

    return worker_only_things.Thing()


def test_a_result_that_cannot_be_unpickled_here_completes_its_future(make_executor, tmp_path):
    ex = make_executor()
    exits = ex.submit(return_exit_on_client)
    err = exits.exception(timeout=60)
    assert isinstance(err, UnreadableResult) and isinstance(err, CloudloopError)
    assert isinstance(err, cf.process.BrokenProcessPool)  # what ProcessPoolExecutor raises
    assert isinstance(err.__cause__, SystemExit) and "task 0" in str(err)
    hostile = ex.submit(raise_hostile_error).exception(timeout=60)
    assert isinstance(hostile, UnreadableResult) and isinstance(hostile.__cause__, SystemExit)
    assert "HostileError: boom" in str(hostile)
    only_there = tmp_path / "worker-only"
    only_there.mkdir()
    (only_there / "worker_only_things.py").write_text(WORKER_ONLY_MODULE)
    missing = ex.submit(return_worker_only_thing, str(only_there)).exception(timeout=60)
    assert isinstance(missing, UnreadableResult) and "importable" in str(missing)
    assert isinstance(missing.__cause__, ImportError)
    assert ex.submit(add, 1, 2).result(timeout=60) == 3  # the session thread lives on


def test_results_that_cannot_be_unpickled_do_not_escape_map_or_results(make_executor):
    ex = make_executor()
    with pytest.raises(UnreadableResult):
        list(ex.map(return_exit_on_client, range(2)))
    job = ex.map_job(return_exit_on_client, range(2))
    out = job.results(return_exceptions=True, timeout=60)
    assert [type(x) for x in out] == [UnreadableResult, UnreadableResult]


def test_a_done_callback_raising_system_exit_does_not_stop_the_session(make_executor):
    ex = make_executor()
    fut = ex.submit(add, 1)
    fut.add_done_callback(lambda f: sys.exit("callback"))
    assert fut.result(timeout=60) == 1
    assert ex.submit(add, 2).result(timeout=60) == 2


class Holder:
    def method(self):
        return "held"


def test_no_stale_references(make_executor):
    ex = make_executor()
    obj = Holder()
    collected = threading.Event()
    ref = weakref.ref(obj, lambda _: collected.set())  # noqa: F841 - keeps the callback
    fut = ex.submit(obj.method)
    del obj
    assert collected.wait(10), "the executor still holds the submitted bound method"
    assert fut.result(timeout=60) == "held"


def test_a_function_is_stored_once_per_job(make_executor):
    ex = make_executor()
    holder = Holder()
    fs = [ex.submit(add, i) for i in range(10)] + [ex.submit(holder.method) for _ in range(10)]
    cf.wait(fs, timeout=60)
    fns = ex.backend.store.list(keys.job_prefix(ex.session_job().id) + "fn/")
    assert len(fns) == 2


def return_lock():
    return threading.Lock()


def test_pickling_errors_are_pickling_errors(make_executor):
    ex = make_executor()
    with pytest.raises(pickle.PicklingError) as info:  # refused at once, naming the culprit
        ex.submit(add, threading.Lock())
    assert isinstance(info.value, SerializationError) and isinstance(info.value, TypeError)
    assert "argument" in str(info.value)
    err = ex.submit(return_lock).exception(timeout=60)  # the worker could not pickle it
    assert isinstance(err, pickle.PicklingError) and isinstance(err, SerializationError)


def test_max_workers_is_checked_as_the_stdlib_does(url):
    for bad in (0, -1):
        with pytest.raises(ValueError, match="max_workers must be greater than 0"):
            cl.Executor(backend=url, max_workers=bad)
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        cl.Executor(backend=url, max_workers="2")
    with pytest.raises(ValueError, match="workers"):
        cl.Executor(backend=url, workers=-1)
    with pytest.raises(ValueError, match="not both"):
        cl.Executor(backend=url, workers=1, max_workers=1)
    with cl.Executor(backend=url, max_workers=1, lease=3) as ex:
        assert ex.workers == 1 and ex.submit(add, 2, 3).result(timeout=60) == 5


def test_map_checks_chunksize_and_times_out_with_the_futures_timeouterror(make_executor):
    ex = make_executor()
    with pytest.raises(ValueError, match="chunksize"):
        ex.map(add, range(3), chunksize=0)
    it = ex.map(slow_square, [0, 1, 2], [0, 0, 5], timeout=3)
    assert [next(it), next(it)] == [0, 1]
    with pytest.raises(cf.TimeoutError):
        next(it)


def test_map_iterator_holds_no_reference_to_what_it_yielded(make_executor):
    ex = make_executor()
    for obj in ex.map(_make_holder, range(3)):
        wr = weakref.ref(obj)
        del obj
        assert wr() is None


def _make_holder(_):
    return Holder()


def test_shutdown_without_waiting_cancels_what_has_not_started(make_executor):
    ex = make_executor(workers=1)
    running = ex.submit(slow_square, 2, 1.0)
    wait_for(running.running, what="the first future to be RUNNING")
    queued = [ex.submit(add, i) for i in range(5)]
    t0 = time.monotonic()
    ex.shutdown(wait=False, cancel_futures=True)
    assert time.monotonic() - t0 < 1.0
    assert all(f.cancelled() for f in queued)
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(add, 1)
    assert running.result(timeout=30) == 4
    wait_for(lambda: ex._pool.alive() == 0, what="the workers to stop")


def raise_runtime_error():
    raise RuntimeError(123)  # some comment


def test_remote_traceback_shows_the_task_source_line(make_executor):
    ex = make_executor()  # what CPython's test_traceback checks, but for cl.RemoteTraceback
    exc = ex.submit(raise_runtime_error).exception(timeout=60)
    assert type(exc) is RuntimeError and exc.args == (123,)
    assert isinstance(exc.__cause__, RemoteTraceback)
    assert "raise RuntimeError(123)  # some comment" in exc.__cause__.tb
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        sys.excepthook(type(exc), exc, exc.__traceback__)
    assert "raise RuntimeError(123)  # some comment" in err.getvalue()


class ExitAtUnpickle:
    def __reduce__(self):
        return sys.exit, (1,)


def test_arguments_that_kill_their_unpickling_fail_only_their_task(make_executor):
    ex = make_executor()  # ProcessPoolExecutor breaks the pool here (BrokenProcessPool)
    assert isinstance(ex.submit(id, ExitAtUnpickle()).exception(timeout=60), SystemExit)
    assert ex.submit(add, 4).result(timeout=60) == 4


def shout(text):
    print(text)
    return len(text)


def test_task_output_reaches_the_clients_stdout(make_executor, capsys):
    ex = make_executor()
    assert ex.submit(shout, "hello from a submitted task").result(timeout=60) == 27
    assert list(ex.map(shout, ["hello from a mapped task"])) == [24]
    time.sleep(3 * ex.backend.poll_interval)
    out = capsys.readouterr().out
    assert "hello from a submitted task" in out and "hello from a mapped task" in out
    quiet = make_executor(relay_output=False)
    assert quiet.submit(shout, "kept in the store").result(timeout=60) == 17
    time.sleep(3 * quiet.backend.poll_interval)
    assert "kept in the store" not in capsys.readouterr().out


_STATUS = "uninitialised"


def set_status(value):
    global _STATUS
    _STATUS = value


def status_and_rng(_=None, rng=None):
    return _STATUS, rng is not None


def test_initializer_runs_before_the_tasks_of_each_process(make_executor):
    ex = make_executor(initializer=set_status, initargs=("ready",))
    assert ex.submit(status_and_rng).result(timeout=60) == ("ready", True)
    assert list(ex.map(status_and_rng, [0])) == [("ready", True)]


# ---------------------------------------------------------------- interpreter exit

EXIT_SCRIPT = """
import sys, time
import cloudloop as cl

def work(path):
    time.sleep(0.5)
    open(path, "w").write("ran")
    print("task says hi")
    return 1

ex = cl.Executor(backend={url!r}, workers={workers}, lease=3, heartbeat=1)
print("pids", *(ex._pool.pids if ex._pool else []), flush=True)
ex.submit(work, {path!r})
"""

LATE_SUBMIT = """
import atexit

@atexit.register
def too_late():
    try:
        ex.submit(print, "never")
    except RuntimeError as e:
        print("refused:", e)
"""


def _run_script(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_interpreter_exit_sends_waits_for_and_relays_submitted_tasks(url, tmp_path):
    path = tmp_path / "ran"
    out = _run_script(EXIT_SCRIPT.format(url=url, workers=1, path=str(path)))
    assert out.returncode == 0, out.stderr
    assert path.read_text() == "ran"  # exit waited for the future
    assert "task says hi" in out.stdout  # ... and relayed its output
    assert out.stderr == ""
    pids = [int(p) for p in out.stdout.split("pids", 1)[1].split("\n", 1)[0].split()]
    wait_for(lambda: not any(pid_alive(p) for p in pids), 10, what="its workers to stop")


def test_interpreter_exit_without_workers_queues_the_task_and_refuses_new_ones(url, tmp_path):
    path = tmp_path / "ran-later"
    code = textwrap.dedent(LATE_SUBMIT) + EXIT_SCRIPT.format(url=url, workers=0, path=str(path))
    out = _run_script(code)
    assert out.returncode == 0, out.stderr
    assert "refused: cannot schedule new futures after interpreter shutdown" in out.stdout
    backend = cl.Executor(backend=url, workers=0).backend
    (job,) = list_jobs(backend)
    assert backend.queue.stats().visible == 1  # sent before exit, for any worker to run
    with cl.Executor(backend=url, workers=1, lease=3):
        wait_for(path.exists, 60, what="a later worker to run the task")


# ---------------------------------------------------------------- bad input leaves nothing


def items_then_a_lock(n):
    yield from range(n)
    yield threading.Lock()


def items_then_an_error(n):
    yield from range(n)
    raise KeyError("the generator failed")


def test_a_failed_submission_cancels_and_removes_its_job(make_executor):
    ex = make_executor(workers=0)
    with pytest.raises(SerializationError, match="task 5000"):
        ex.map_job(add, items_then_a_lock(5000))
    with pytest.raises(KeyError, match="the generator failed"):
        ex.map_job(add, items_then_an_error(300))
    store = ex.backend.store
    assert list_jobs(ex.backend) == []
    leftovers = store.list("jobs/")
    assert leftovers and all(k.endswith("/cancelled") for k in leftovers), leftovers
    assert ex.backend.queue.stats().visible > 0  # sent before the bad item was reached
    with cl.Executor(backend=ex.backend.url, workers=1, lease=3):  # workers drop them all
        wait_for(lambda: ex.backend.queue.stats().visible == 0, 60, what="the queue to drain")
    assert all(k.endswith("/cancelled") for k in store.list("jobs/"))  # nothing ran


def test_an_unpicklable_function_creates_no_job(make_executor):
    ex = make_executor(workers=0)
    lock = threading.Lock()

    def holds_a_lock(x):
        return lock, x

    with pytest.raises(SerializationError):
        ex.map_job(holds_a_lock, [1, 2])
    with pytest.raises(SerializationError):
        ex.submit(holds_a_lock, 1)
    with pytest.raises(SerializationError):
        list(ex.map(holds_a_lock, [1]))
    assert list_jobs(ex.backend) == [] and ex.backend.store.list("jobs/") == []


def test_shutdown_cancel_futures_lets_running_map_tasks_finish(url, tmp_path):
    ex = cl.Executor(backend=url, workers=1, lease=3)
    job = ex.map_job(touch_and_sleep, [str(tmp_path / f"t{i}") for i in range(6)], [1.0] * 6,
                     chunksize=6)  # fmt: skip
    wait_for(lambda: (tmp_path / "t1").exists(), what="the second task to start")
    ex.shutdown(wait=True, cancel_futures=True)  # as the stdlib: queued calls go, running ones end
    outcomes = job.outcomes()
    assert outcomes[1].ok, outcomes[1]  # it was running: it finished
    assert all(o.cancelled for i, o in outcomes.items() if i >= 3)
    assert not (tmp_path / "t4").exists()


class BreaksOnWorker:
    """An argument that pickles here but cannot be rebuilt on a worker."""

    def __reduce__(self):
        return _break_on_worker, ()


def _break_on_worker():
    if "CLOUDLOOP_PROVIDER" in os.environ:
        raise SystemExit(5)
    return BreaksOnWorker()


def test_one_submit_whose_argument_cannot_be_rebuilt_fails_alone(make_executor):
    ex = make_executor(workers=1)
    futs = [ex.submit(add, i, 1) for i in range(3)]
    futs.insert(1, ex.submit(add, BreaksOnWorker(), 1))
    assert [f.result(timeout=60) for i, f in enumerate(futs) if i != 1] == [1, 2, 3]
    assert isinstance(futs[1].exception(timeout=60), SystemExit)
