"""Bad input gets a one-line error that says what was wrong and what to do, and
leaves nothing half-made. One row per case: a new option gets its row here."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import cloudloop as cl
from cloudloop import keys
from cloudloop.backends import open_backend


def inc(x):
    return x + 1


def jobs_on(url: str) -> list[str]:
    return open_backend(url).store.list(keys.INDEX)


# ---------------------------------------------------------------- option values

# (option, value, words the error must hold); each is tried on Executor(...) (job and
# worker options) or map_job(...) (job options) and must create no job
OPTIONS = [
    ("timeout", -1, "timeout must be a duration >= 0"),
    ("timeout", 0, "timeout must be more than 0"),
    ("timeout", float("nan"), "timeout must be a duration"),
    ("timeout", float("inf"), "timeout must be a duration"),
    ("timeout", "soon", "timeout 'soon' is not a duration"),
    ("timeout", True, "timeout True is not a duration"),
    ("memory", -5, "memory must be more than 0 bytes"),
    ("memory", 0, "memory must be more than 0 bytes"),
    ("memory", float("nan"), "memory must be a size"),
    ("memory", "lots", "memory 'lots' is not a size"),
    ("retries", True, "retries must be a whole number >= 0"),
    ("retries", -1, "retries must be a whole number >= 0"),
    ("retries", 1.5, "retries must be a whole number >= 0"),
    ("retries", "2", "retries must be a whole number >= 0"),
    ("max_deliveries", 0, "max_deliveries must be a whole number >= 1"),
    ("chunksize", 0, "chunksize must be a whole number >= 1"),
    ("chunksize", True, "chunksize must be a whole number >= 1"),
    ("seed", "x", "seed must be a whole number"),
    ("seed", True, "seed must be a whole number"),
    ("name", 5, "name must be text"),
    ("env", ["A"], "env must be a table"),
    ("env", {"A B": "x"}, "'A B' is not an environment variable name"),
    ("seed_globals", "yes", "seed_globals must be true or false"),
    ("lease", -1, "lease must be a duration >= 0"),
    ("lease", 0, "lease must be more than 0"),
    ("lease", float("nan"), "lease must be a duration"),
    ("lease", 0.5, "lease must be at least 1 s"),
    ("heartbeat", 0, "heartbeat must be more than 0"),
    ("split_after", -2, "split_after must be a duration >= 0"),
    ("idle_exit", "forever", "idle_exit 'forever' is not a duration"),
    ("preempt_grace", float("inf"), "preempt_grace must be a duration"),
    ("metadata_url", "169.254.169.254", "metadata_url must be an http:// URL"),
    ("stop_at", "tomorrow", "stop_at must be a unix time"),
    ("retry", 3, "unknown option(s) ['retry']"),
]


@pytest.mark.parametrize("option,value,words", OPTIONS, ids=[f"{o}={v!r}" for o, v, _ in OPTIONS])
def test_a_bad_option_value_is_one_clear_error(url, option, value, words):
    with pytest.raises(cl.ConfigError) as e:
        cl.Executor(backend=url, workers=0, **{option: value})
    assert words in str(e.value) and "\n" not in str(e.value)
    assert not Path(url.split("://", 1)[1]).exists() or jobs_on(url) == []


JOB_OPTIONS = [row for row in OPTIONS if row[0] in ("timeout", "memory", "retries", "chunksize")]


@pytest.mark.parametrize(
    "option,value,words", JOB_OPTIONS, ids=[f"{o}={v!r}" for o, v, _ in JOB_OPTIONS]
)
def test_a_bad_job_option_creates_no_job(url, option, value, words):
    with (
        cl.Executor(backend=url, workers=0) as ex,
        pytest.raises(cl.ConfigError, match=re.escape(words)),
    ):
        ex.map_job(inc, range(3), **{option: value})
    assert jobs_on(url) == []


WORKERS = [("2", "workers"), (-1, "workers"), (True, "workers"), (2.0, "workers")]


@pytest.mark.parametrize("value,words", WORKERS, ids=[repr(v) for v, _ in WORKERS])
def test_a_bad_worker_count_is_one_clear_error(url, value, words):
    with pytest.raises((cl.ConfigError, ValueError, TypeError)) as e:
        cl.Executor(backend=url, workers=value)
    assert words in str(e.value) and "\n" not in str(e.value)


PROFILES = [
    ("backend = 5", "backend must be text"),
    ('backend = "ftp://x"', "backend scheme 'ftp' is not known"),
    ('workers = "2"', "workers must be a whole number >= 0"),
    ("timeout = -1", "timeout must be a duration >= 0"),
    ('lease = "0s"', "lease must be more than 0"),
    ("retries = true", "retries must be a whole number >= 0"),
    ("provider = 3", "provider must be text"),
]


@pytest.mark.parametrize("line,words", PROFILES, ids=[p[0] for p in PROFILES])
def test_a_bad_profile_is_one_clear_error(tmp_path, monkeypatch, line, words):
    (tmp_path / "cloudloop.toml").write_text(f"[profiles.p]\n{line}\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(cl.ConfigError) as e:
        cl.Executor(profile="p", workers=0)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_a_profile_that_is_not_a_table(tmp_path, monkeypatch):
    (tmp_path / "cloudloop.toml").write_text('[profiles]\np = "sqlite:///x"\n')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(cl.ConfigError, match=r"must be a table \(\[profiles.p\]\)"):
        cl.Executor(profile="p", workers=0)


# ---------------------------------------------------------------- what cannot be pickled


def _items_with_a_lock_at(n: int, at: int):
    for i in range(n):
        yield threading.Lock() if i == at else i


def test_an_unpicklable_item_deep_in_a_generator_leaves_no_job(url):
    with (
        cl.Executor(backend=url, workers=0) as ex,
        pytest.raises(cl.SerializationError, match="task 5000"),
    ):
        ex.map_job(inc, _items_with_a_lock_at(6000, 5000), chunksize=64)
    backend = open_backend(url)
    assert jobs_on(url) == []
    # whatever was queued before the bad item is never run: its job is gone
    with cl.Executor(backend=url, workers=1, lease=2) as ex:
        assert ex.map_job(inc, [1]).results(timeout=60) == [2]
    assert backend.queue.stats().total == 0


def test_an_unpicklable_function_leaves_no_job(url):
    lock = threading.Lock()

    def uses_a_lock(x):
        with lock:
            return x

    with (
        cl.Executor(backend=url, workers=0) as ex,
        pytest.raises(cl.SerializationError, match="lock"),
    ):
        ex.map_job(uses_a_lock, range(3))
    assert jobs_on(url) == []


# ---------------------------------------------------------------- the command line


def cli(*args, cwd, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "cloudloop", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_line_error(proc, words: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    err = [line for line in proc.stderr.splitlines() if line.strip()]
    assert err[-1].startswith("cloudloop: error:") and words in err[-1], proc.stderr
    assert "Traceback" not in proc.stderr


ITEMS = [
    ("empty.csv", b"", "is empty"),
    ("header-only.csv", b"a,b\n", "no rows"),
    ("latin1.csv", "v\ncaf\xe9\n".encode("latin-1"), "not UTF-8"),
    ("bad.jsonl", b'{"a": 1}\n{"a": \n', "bad.jsonl:2"),
    ("bad.json", b"[1, 2", "bad.json"),
    ("notalist.json", b'{"a": 1}', "list"),
    ("missing.csv", b"a,b\n1,2\n3\n", "line 3"),
]


@pytest.mark.parametrize("name,data,words", ITEMS, ids=[i[0] for i in ITEMS])
def test_cloudloop_run_with_bad_items(tmp_path, name, data, words):
    (tmp_path / name).write_bytes(data)
    one_line_error(
        cli("run", "--items", name, "--workers", "0", "--", "echo", "{a}", cwd=tmp_path), words
    )
    assert not (tmp_path / ".cloudloop").exists()  # no job, no backend: nothing half-made


CLI = [
    (["status", "../../etc"], "is not a job id"),
    (["results", "x" * 300], "is not a job id"),
    (["logs", "jobs/../../x"], "is not a job id"),
    (["dashboard", "--port", "99999"], "port"),
    (["worker", "--lease", "0"], "lease must be more than 0"),
    (["run", "--items", "nope.csv", "--", "echo"], "does not exist"),
    (["status", "--backend", "ftp://x"], "backend scheme 'ftp' is not known"),
]


@pytest.mark.parametrize("argv,words", CLI, ids=[" ".join(a)[:40] for a, _ in CLI])
def test_the_command_line_says_what_is_wrong_in_one_line(tmp_path, argv, words):
    one_line_error(cli(*argv, cwd=tmp_path), words)


def write_outputs(_):
    (cl.output_dir() / "my results.csv").write_text("a,b\n")
    (cl.output_dir() / ".hidden").write_text("x")
    return "ok"


def test_file_names_with_spaces_work_end_to_end(tmp_path):
    (tmp_path / "my data.txt").write_text("hello\n")
    (tmp_path / "rows.csv").write_text("v\n1\n")
    proc = cli(
        "run",
        "--items",
        "rows.csv",
        "--workers",
        "1",
        "--quiet",
        "--",
        "cat",
        "my data.txt",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    job = cl.attach(proc.stdout.strip().splitlines()[-1], backend=f"sqlite://{tmp_path}/.cloudloop")
    assert "hello" in job.results()[0]["stdout"]
    with cl.Executor(backend=f"sqlite://{tmp_path}/b", workers=1) as ex:
        j = ex.map_job(write_outputs, [0])
        assert j.results(timeout=60) == ["ok"]
        assert sorted(f.name for f in j.outputs()) == [".hidden", "my results.csv"]


def test_logs_of_a_malformed_log_part(tmp_path):
    url = f"sqlite://{tmp_path}/b"
    with cl.Executor(backend=url, workers=1) as ex:
        job = ex.map_job(print, ["a real line"])
        job.results(timeout=60)
    open_backend(url).store.put(keys.logs(job.id, 0, 0), b"{not json at all")
    proc = cli("logs", "--backend", url, job.id, "0", cwd=tmp_path)
    assert proc.returncode == 0 and "a real line" in proc.stdout, proc.stderr
    assert "could not be read" in proc.stdout and "Traceback" not in proc.stderr


# ---------------------------------------------------------------- the backend breaks under a job


def _done_job(url: str) -> str:
    with cl.Executor(backend=url, workers=1) as ex:
        job = ex.map_job(inc, range(3))
        assert job.results(timeout=60) == [1, 2, 3]
        return job.id


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_queue_db_still_lets_status_and_results_read_the_store(tmp_path, damage):
    url = f"sqlite://{tmp_path}/b"
    job_id = _done_job(url)
    db = tmp_path / "b" / "queue.db"
    for extra in ("-wal", "-shm"):
        Path(f"{db}{extra}").unlink(missing_ok=True)
    db.write_bytes(b"not a database, " * 64 if damage == "garbage" else db.read_bytes()[:100])
    assert cl.attach(job_id, backend=url).results() == [1, 2, 3]
    proc = cli("status", "--backend", url, job_id, cwd=tmp_path)
    assert proc.returncode == 0 and "completed" in proc.stdout, proc.stderr
    proc = cli("results", "--backend", url, job_id, cwd=tmp_path)
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == 3
    (tmp_path / "rows.csv").write_text("v\n1\n")
    proc = cli(
        "run",
        "--backend",
        url,
        "--items",
        "rows.csv",
        "--workers",
        "0",
        "--",
        "echo",
        "{v}",
        cwd=tmp_path,
    )
    one_line_error(proc, "move queue.db aside")


def sleepy(x):
    time.sleep(0.5)
    return x


def test_the_backend_directory_deleted_under_a_running_job(tmp_path):
    url = f"sqlite://{tmp_path}/b"
    ex = cl.Executor(backend=url, workers=1, lease=2)
    try:
        job = ex.map_job(sleepy, range(20), chunksize=1)
        deadline = time.monotonic() + 30
        while job.status().done < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        shutil.rmtree(tmp_path / "b")
        with pytest.raises(cl.errors.BackendError, match="no longer exists"):
            job.wait(timeout=60)  # not SUBMITTING forever: it says what happened
    finally:
        ex.shutdown(wait=False, cancel_futures=True)
        if ex._pool is not None:
            ex._pool.stop(timeout=10)


def test_a_job_id_from_the_index_that_is_not_one_is_skipped(url):
    backend = open_backend(url)
    backend.put_record("index/..%2F..%2Fetc", {"name": "x"})
    proc = cli("status", "--backend", url, cwd=Path(url.split("://", 1)[1]).parent)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr
