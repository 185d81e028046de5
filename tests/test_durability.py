"""Workers and clients can die at any moment; no result is lost or doubled."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from helpers import kill, pid_alive, wait_for, worker_records

import cloudloop as cl
from cloudloop.backends import open_backend


def record(i, path, delay=0.2):
    with open(path, "a") as f:
        f.write(f"{i}\n")
    time.sleep(delay)
    return i * 10


def busy_workers(backend):
    out = []
    for rec in worker_records(backend):
        if rec.get("task") is not None:
            out.append(rec)
    return out


def test_kill_9_worker_mid_task_every_result_exactly_once(make_executor, url, tmp_path):
    ex = make_executor(workers=2, lease=2, heartbeat=0.2)
    runs = tmp_path / "runs.txt"
    n = 40
    job = ex.map_job(record, range(n), [str(runs)] * n, [0.15] * n, chunksize=5)
    backend = open_backend(url)
    wait_for(lambda: job.status().done >= 5, what="some progress")
    victim = wait_for(lambda: busy_workers(backend), what="a busy worker")[0]
    kill(victim["pid"])
    results = job.results(timeout=120)
    assert results == [i * 10 for i in range(n)]
    outcomes = job.outcomes()
    assert sorted(outcomes) == list(range(n))
    executed = [int(x) for x in runs.read_text().split()]
    assert set(executed) == set(range(n))
    assert len(executed) >= n  # the killed worker's task ran again elsewhere
    assert ex._pool.restarts >= 1  # and the pool replaced the worker


def test_kill_9_the_task_process_is_a_crash_not_a_hang(make_executor, url, tmp_path):
    ex = make_executor(workers=1, heartbeat=0.2)
    pidfile = tmp_path / "pid"
    job = ex.map_job(_write_pid_and_sleep, [str(pidfile)])
    pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text(), what="task pid"))
    kill(pid)
    (err,) = job.results(return_exceptions=True, timeout=60)
    assert isinstance(err, cl.TaskCrashed) and "SIGKILL" in str(err) and "out-of-memory" in str(err)


def _write_pid_and_sleep(path):
    Path(path).write_text(str(os.getpid()))
    time.sleep(60)


CLIENT = textwrap.dedent(
    """
    import sys, time
    import cloudloop as cl

    def work(i):
        time.sleep(0.25)
        return i * i

    if __name__ == "__main__":
        ex = cl.Executor(backend=sys.argv[1], workers=2, heartbeat=0.5)
        job = ex.map_job(work, range(30), chunksize=2)
        print(job.id, flush=True)
        job.wait()
    """
)


def test_client_killed_then_reattached_from_another_process(url, tmp_path):
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    client = subprocess.Popen(
        [sys.executable, str(script), url], stdout=subprocess.PIPE, text=True, cwd=tmp_path
    )
    job_id = client.stdout.readline().strip()
    job = cl.attach(job_id, backend=url)
    wait_for(lambda: job.status().done >= 4, what="progress before the kill")
    backend = open_backend(url)
    pids = [rec["pid"] for rec in worker_records(backend)]
    client.kill()
    client.wait()
    st = job.status()
    assert st.done < 30, "the job should still be running when its client dies"
    assert job.results(timeout=120) == [i * i for i in range(30)]
    assert job.status().state is cl.JobState.COMPLETED
    # the orphaned workers finish the job, then leave by themselves, records and all
    assert len(pids) == 2
    wait_for(
        lambda: not any(pid_alive(p) for p in pids), timeout=30, what="orphaned workers to exit"
    )
    assert backend.store.list("workers/") == []


def test_attach_unknown_job(url):
    open_backend(url)
    try:
        cl.attach("20990101-000000-abcdef", backend=url)
    except cl.JobNotFound as e:
        assert "cloudloop status" in str(e)
    else:
        raise AssertionError("expected JobNotFound")


def test_external_worker_serves_a_job_submitted_with_no_workers(url, tmp_path):
    ex = cl.Executor(backend=url, workers=0)
    job = ex.map_job(record, range(5), [str(tmp_path / "r")] * 5, [0] * 5)
    assert job.status().state is cl.JobState.QUEUED
    worker = subprocess.Popen(
        [sys.executable, "-m", "cloudloop", "worker", "--backend", url, "--idle-exit", "2s"]
    )
    try:
        assert job.results(timeout=60) == [0, 10, 20, 30, 40]
        assert worker.wait(timeout=30) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
    ex.shutdown()


def test_sigterm_releases_the_chunk_for_another_worker_at_once(url, tmp_path):
    ex = cl.Executor(backend=url, workers=0)
    job = ex.map_job(record, range(6), [str(tmp_path / "r")] * 6, [1.0] * 6, chunksize=6)
    cmd = [sys.executable, "-m", "cloudloop", "worker", "--backend", url, "--lease", "60"]
    first = subprocess.Popen(cmd)
    try:
        wait_for(lambda: job.status().done >= 1, timeout=30, what="first results")
        first.terminate()
        assert first.wait(timeout=20) == 0
        second = subprocess.Popen(cmd)
        t = time.monotonic()
        assert job.results(timeout=60) == [i * 10 for i in range(6)]
        assert time.monotonic() - t < 30  # not after the 60 s lease expired
    finally:
        for p in (first, locals().get("second")):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
