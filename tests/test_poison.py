"""A worker never dies of one message and never loops on one; a failing store is
bounded and said in words; orphans and daemonised children do not outlive a task."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from helpers import pid_alive, wait_for

import cloudloop as cl
from cloudloop import codec, keys
from cloudloop.backends import open_backend
from cloudloop.config import worker_options
from cloudloop.heartbeat import worker_records
from cloudloop.worker import Worker


def double(x):
    return 2 * x


class InProcessWorker:
    """A Worker running in a thread of the test, so a test can reach into it."""

    def __init__(self, url: str, **options):
        options.setdefault("lease", 3)
        options.setdefault("heartbeat", 0.5)
        self.backend = open_backend(url)
        self.worker = Worker(self.backend, worker_options(**options))
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.worker.run()
        except BaseException as e:  # the test asserts there is none
            self.error = e

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def stop(self, timeout: float = 30) -> float:
        t = time.monotonic()
        self.worker.request_stop()
        self.thread.join(timeout)
        return time.monotonic() - t


@pytest.fixture
def inproc(url):
    made: list[InProcessWorker] = []

    def start(**options) -> InProcessWorker:
        w = InProcessWorker(url, **options)
        made.append(w)
        return w

    yield start
    for w in made:
        w.stop()


def _raw_message(header: dict, mac: bytes = b"\0" * 32) -> bytes:
    head = json.dumps(header).encode()
    return b"CLM2" + mac + len(head).to_bytes(4, "big") + head


# ---------------------------------------------------------------- one message


def test_a_task_with_two_result_parts_redelivered_does_not_kill_the_worker(
    make_executor, url, inproc
):
    ex = make_executor(workers=0)
    job = ex.map_job(double, range(4), chunksize=4)
    backend = open_backend(url)
    (lease,) = backend.queue.lease(1, lease_s=60)
    for _ in range(2):  # task 0 ran twice already: two result parts hold it
        name = keys.result(job.id, 0, 0, 0)
        rows = [(0, 1, codec.dumps_fast(0, "r"), None, 1.0, 2.0, False)]
        backend.store.put(
            name, codec.encode_part(backend.key, name, "w", "h", [codec.pack_rows(rows)])
        )
    backend.queue.release([lease])  # the next delivery is careful (attempt 2)
    w = inproc()
    assert job.results(timeout=60) == [0, 2, 4, 6]
    assert w.alive and w.error is None


@pytest.mark.parametrize(
    "header",
    [
        {"v": 1, "job": "x" * 300, "chunk": 0, "lo": 0, "hi": 10**12, "runs": [[0, 10**12]]},
        {"v": 1, "job": "../../etc", "runs": [[0, 1]]},
        {"v": 1, "runs": "everything"},
        {"v": 1, "job": None, "runs": [["a", "b"]]},
    ],
    ids=["huge-runs-long-id", "path-id", "runs-not-a-list", "wrong-types"],
)
def test_forged_messages_are_dead_lettered_and_fail_nothing(make_executor, url, inproc, header):
    ex = make_executor(workers=0)
    job = ex.map_job(double, range(3), chunksize=3)
    backend = open_backend(url)
    # one as it is, one claiming the real job's tasks: neither is signed
    backend.queue.put([_raw_message(header), _raw_message({**header, "job": job.id})])
    w = inproc()
    assert job.results(timeout=60) == [0, 2, 4]  # the real job is untouched: no task failed
    wait_for(lambda: backend.queue.stats().total == 0, what="queue to drain")
    raw = [k for k in backend.store.list("deadletter/") if not k.endswith(".why")]
    assert len(raw) == 2
    assert w.alive and w.error is None


def test_a_tampered_message_is_dead_lettered_its_job_is_told(make_executor, url, inproc, caplog):
    ex = make_executor(workers=0)
    good = ex.map_job(double, range(6), chunksize=3)  # two messages
    backend = open_backend(url)
    q = backend.queue
    leases = q.lease(10, lease_s=60)
    tampered = bytearray(leases[0].body)
    tampered[-1] ^= 0xFF  # a payload byte: the signature no longer matches
    q.ack(leases)
    q.put([bytes(tampered), leases[1].body, b"total garbage, not a message"])
    inproc()
    out = good.iter_results(deadline=time.monotonic() + 60)
    with pytest.raises(TimeoutError):  # tasks 0-2 were in the tampered message: they never ran
        list(out)
    assert good.status().done == 3
    wait_for(lambda: q.stats().total == 0, what="queue to drain")
    raw = [k for k in backend.store.list("deadletter/") if not k.endswith(".why")]
    assert len(raw) == 2
    why = [backend.get_record(k + ".why")["why"] for k in raw]
    assert any("signature" in w for w in why)
    # the client says what happened instead of waiting in silence
    problems = good.problems()
    assert any("failed verification" in p and "0" in p for p in problems), problems


def test_a_message_that_always_breaks_the_worker_is_dead_lettered(
    make_executor, url, inproc, monkeypatch
):
    ex = make_executor(workers=0)
    poison = ex.map_job(double, range(3), chunksize=3, name="poison")
    fine = ex.map_job(double, range(3), chunksize=3, name="fine")
    real = Worker._run_chunk

    def broken(self, chunk):
        if chunk.job_id == poison.id:
            raise RuntimeError("a bug in the worker")
        return real(self, chunk)

    monkeypatch.setattr(Worker, "_run_chunk", broken)
    w = inproc(lease=1)
    assert fine.results(timeout=60) == [0, 2, 4]
    out = poison.results(return_exceptions=True, timeout=60)
    assert all(isinstance(e, cl.CorruptMessage) for e in out), out
    assert "a bug in the worker" in str(out[0]) and "dead-lettered" in str(out[0])
    assert w.alive and w.error is None


# ---------------------------------------------------------------- the backend fails


def test_transient_backend_errors_in_the_loop_are_retried(make_executor, url, inproc, monkeypatch):
    from cloudloop.backends.sqlite import SqliteQueue

    ex = make_executor(workers=0)
    job = ex.map_job(double, range(5), chunksize=5)
    real, calls = SqliteQueue.lease, {"n": 0}

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] <= 3:
            raise cl.errors.ConnectionFailed("the queue is away")
        return real(self, *a, **k)

    monkeypatch.setattr(SqliteQueue, "lease", flaky)
    w = inproc()
    assert job.results(timeout=60) == [0, 2, 4, 6, 8]
    assert calls["n"] > 3 and w.alive and w.error is None


def big(n):
    return b"x" * n


@pytest.fixture
def tiny_disk(tmp_path):
    """A 2 MB filesystem (tmpfs), so writes fail with ENOSPC for real."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True
    )
    if r.returncode != 0:
        if os.environ.get("CI"):
            raise RuntimeError(f"cannot mount a tmpfs: {r.stderr.decode()}")
        pytest.skip("mounting a tmpfs needs root")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_fails_the_task_in_words_and_leaves_no_temp_files(tiny_disk):
    url = f"sqlite://{tiny_disk}/backend"
    with cl.Executor(backend=url, workers=0) as ex:
        job = ex.map_job(big, [10, 3_000_000, 20], chunksize=3)
        w = InProcessWorker(url)
        w.worker.committer.tries = 2
        try:
            out = job.results(return_exceptions=True, timeout=120)
        finally:
            w.stop()
    assert out[0] == b"x" * 10 and out[2] == b"x" * 20
    assert isinstance(out[1], cl.errors.BackendError), out[1]
    assert "could not be stored" in str(out[1]) and "No space left" in str(out[1])
    assert not list(tiny_disk.rglob("*.tmp")), "half-written files were left behind"


def test_a_store_refusing_every_result_write_is_said_and_sigterm_honoured(
    make_executor, url, inproc, monkeypatch
):
    ex = make_executor(workers=0)
    job = ex.map_job(double, range(3), chunksize=3)
    w = inproc()
    w.worker.committer.tries = 2
    store = w.worker.backend.store
    real_put = store.put

    def refuse(key, data, if_absent=False):
        if "/results/" in key:
            raise OSError(errno.EACCES, "Access Denied")
        return real_put(key, data, if_absent)

    monkeypatch.setattr(store, "put", refuse)
    st = wait_for(
        lambda: (s := job.status()).problems and s, timeout=60, what="the trouble to show"
    )
    assert any("Access Denied" in p for p in st.problems), st.problems
    assert "Access Denied" in str(st)
    assert w.alive and w.error is None
    took = w.stop(timeout=30)
    assert not w.alive and took < 10, f"SIGTERM took {took:.1f} s"
    assert open_backend(url).queue.stats().total == 1  # the work was handed back, not lost


# ---------------------------------------------------------------- leases


def test_a_worker_frozen_past_its_lease_then_stopped_exits(make_executor, url):
    ex = make_executor(workers=1, lease=2, heartbeat=0.5)
    marker = Path(url.split("://", 1)[1]).parent / "started"
    job = ex.map_job(sleepy, [str(marker)], chunksize=1)
    wait_for(marker.exists, what="the task to start")
    (victim,) = ex._pool.pids
    os.kill(victim, signal.SIGSTOP)
    other = make_executor(workers=1, lease=2, heartbeat=0.5)  # takes the message once it expires
    assert job.results(timeout=60) == ["done"]
    os.kill(victim, signal.SIGCONT)
    os.kill(victim, signal.SIGTERM)
    wait_for(lambda: not pid_alive(victim), timeout=20, what="the frozen worker to exit")
    assert other


def sleepy(marker):
    Path(marker).write_text("x")
    time.sleep(4)
    return "done"


# ---------------------------------------------------------------- orphans


ORPHAN = textwrap.dedent(
    """
    import os, sys
    import cloudloop as cl
    ex = cl.Executor(backend=sys.argv[1], workers=2)
    print(" ".join(map(str, ex._pool.pids)), flush=True)
    os._exit(0)  # gone while its workers are still starting
    """
)


def test_local_workers_whose_client_dies_during_start_up_exit(url, tmp_path):
    script = tmp_path / "client.py"
    script.write_text(ORPHAN)
    out = subprocess.run(
        [sys.executable, str(script), url], capture_output=True, text=True, cwd=tmp_path
    )
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) == 2, out.stderr
    wait_for(
        lambda: not any(pid_alive(p) for p in pids), timeout=30, what="orphaned workers to exit"
    )


# ---------------------------------------------------------------- daemonised children


def daemonise(pidfile):
    """Start a process in its own session that outlives this task, and return."""
    p = subprocess.Popen(["setsid", "sleep", "300"], start_new_session=True)
    Path(pidfile).write_text(str(p.pid))
    return p.pid


def daemonise_then_hang(pidfile):
    daemonise(pidfile)
    time.sleep(300)


def double_fork(pidfile):
    """The classic daemon: fork, setsid, fork again; the grandchild is re-parented."""
    code = (
        "import os, sys, time\n"
        "if os.fork(): os._exit(0)\n"
        "os.setsid()\n"
        "if os.fork(): os._exit(0)\n"
        f"open({pidfile!r}, 'w').write(str(os.getpid()))\n"
        "time.sleep(300)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    path = Path(pidfile)
    return int(wait_for(lambda: path.exists() and path.read_text().strip(), what="its pid"))


@pytest.mark.parametrize("fn", [daemonise, double_fork], ids=["setsid", "double-fork"])
def test_processes_a_task_leaves_behind_end_with_it(make_executor, tmp_path, fn):
    ex = make_executor(workers=1)
    pidfile = tmp_path / "daemon.pid"
    (pid,) = ex.map_job(fn, [str(pidfile)]).results(timeout=60)
    assert int(pidfile.read_text()) == pid
    wait_for(lambda: not pid_alive(pid), timeout=10, what="the task's daemon to end")


def test_a_timed_out_task_takes_its_escaped_children_with_it(make_executor, tmp_path):
    ex = make_executor(workers=1)
    pidfile = tmp_path / "daemon.pid"
    (err,) = ex.map_job(daemonise_then_hang, [str(pidfile)], timeout=3).results(
        return_exceptions=True, timeout=60
    )
    assert isinstance(err, cl.TaskTimeout)
    pid = int(pidfile.read_text())
    wait_for(lambda: not pid_alive(pid), timeout=10, what="the escaped child to be killed")


def test_a_command_task_background_process_ends_with_the_task(make_executor, tmp_path):
    ex = make_executor(workers=1)
    pidfile = tmp_path / "bg.pid"
    job = ex.command_job(f"sleep 300 & echo $! > {pidfile}", [{}])
    job.results(timeout=60)
    pid = int(pidfile.read_text())
    wait_for(lambda: not pid_alive(pid), timeout=10, what="the background process to end")


def test_heartbeat_records_say_nothing_unverified(make_executor, url):
    backend = open_backend(url)
    backend.store.put(
        "workers/forged", json.dumps({"id": "forged", "last_seen": time.time()}).encode()
    )
    name = "workers/typed"
    backend.put_record(name, {"id": "typed", "task": "<img src=x>", "last_seen": time.time()})
    assert [r.id for r in worker_records(backend)] == []
