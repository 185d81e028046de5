"""The result cache and retries, end to end on real workers: what is computed
again, what is taken, and what a forged or misplaced pack gets (nothing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import cloudloop as cl
from cloudloop import keys
from cloudloop.backends import open_backend
from cloudloop.cache import CacheIndex, encode_pack
from cloudloop.errors import JobCancelled
from cloudloop.retry import NotRetryable

OFFSET = 100


def fit(x, log):
    """A task that says it ran (one line per call) and fails where a flag file says."""
    with open(log, "a") as f:
        f.write(f"{x}\n")
    if os.path.exists(f"{log}.fail-{x}"):
        raise ValueError(f"bad {x}")
    return x * x + OFFSET


def fit_changed(x, log):
    with open(log, "a") as f:
        f.write(f"{x}\n")
    return x * x + OFFSET + 1


def calls(log: Path) -> list[int]:
    return sorted(int(x) for x in log.read_text().split()) if log.exists() else []


def run(ex, xs, log, **options):
    job = ex.map_job(fit, xs, [str(log)] * len(xs), **options)
    job.wait(timeout=120)
    return job


def test_a_warm_run_computes_nothing_and_says_so(make_executor, tmp_path):
    log = tmp_path / "calls"
    ex = make_executor(workers=2)
    first = run(ex, list(range(40)), log, cache=True)
    assert first.results() == [x * x + OFFSET for x in range(40)]
    assert calls(log) == list(range(40)) and first.status().cached == 0
    log.unlink()
    second = run(ex, list(range(40)), log, cache=True)
    assert second.results() == [x * x + OFFSET for x in range(40)]
    assert calls(log) == []
    st = second.status()
    assert (st.cached, st.done, st.failed, st.state.value) == (40, 40, 0, "completed")
    assert "(40 cached)" in str(st)
    # a longer grid: only the new items run, in input order
    third = run(ex, list(range(50)), log, cache=True)
    assert third.results() == [x * x + OFFSET for x in range(50)]
    assert calls(log) == list(range(40, 50))


def test_failures_are_run_again_and_only_they(make_executor, tmp_path):
    log = tmp_path / "calls"
    for x in (3, 17):
        Path(f"{log}.fail-{x}").touch()
    ex = make_executor(workers=2)
    first = run(ex, list(range(30)), log, cache=True)
    assert first.status().failed == 2
    for x in (3, 17):
        Path(f"{log}.fail-{x}").unlink()
    log.unlink()
    second = run(ex, list(range(30)), log, cache=True)
    assert calls(log) == [3, 17]
    assert second.results() == [x * x + OFFSET for x in range(30)]
    assert second.status().cached == 28


def test_cache_all_serves_failures_too(make_executor, tmp_path):
    log = tmp_path / "calls"
    Path(f"{log}.fail-2").touch()
    ex = make_executor(workers=1)
    run(ex, list(range(5)), log, cache=True)
    log.unlink()
    again = run(ex, list(range(5)), log, cache="all")
    assert calls(log) == []
    out = again.results(return_exceptions=True)
    assert isinstance(out[2], ValueError) and "bad 2" in str(out[2])


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"fn": fit_changed}, id="changed-function"),
        pytest.param({"cache_version": "2"}, id="cache-version"),
        pytest.param({"seed": 7}, id="another-seed"),
        pytest.param({"env": {"ALPHA": "2"}}, id="another-environment"),
    ],
)
def test_what_must_miss_misses(make_executor, tmp_path, change):
    log = tmp_path / "calls"
    ex = make_executor(workers=2)
    run(ex, list(range(6)), log, cache=True)
    log.unlink()
    opts = {k: v for k, v in change.items() if k != "fn"}
    job = ex.map_job(change.get("fn", fit), list(range(6)), [str(log)] * 6, cache=True, **opts)
    job.wait(timeout=60)
    assert calls(log) == list(range(6)) and job.status().cached == 0


def test_without_the_option_nothing_is_cached(make_executor, tmp_path, url):
    log = tmp_path / "calls"
    ex = make_executor(workers=1)
    run(ex, list(range(4)), log)
    assert open_backend(url).store.list(keys.CACHE) == []
    run(ex, list(range(4)), log, cache=True)
    assert calls(log) == sorted([0, 1, 2, 3] * 2)


def test_a_forged_or_moved_pack_is_not_believed(make_executor, tmp_path, url):
    log = tmp_path / "calls"
    ex = make_executor(workers=1)
    job = run(ex, list(range(4)), log, cache=True)
    b = open_backend(url)
    fkey = job.manifest.cache_key
    packs = [k for k in b.store.list(keys.cache_prefix(fkey)) if not k.endswith("/about")]
    assert packs and len(CacheIndex.load(b, fkey)) == 4
    # a genuine pack copied under another function's key, and packs signed with another key
    other = "0" * 32
    moved = keys.cache_pack(other, 1, 0, 3, 4, job.id)
    b.store.put(moved, b.store.get(packs[0]))
    for pack in packs:
        b.store.put(pack, encode_pack(b"x" * 32, pack, "w", "h", []))
    assert len(CacheIndex.load(b, fkey)) == 0
    assert len(CacheIndex.load(b, other)) == 0
    log.unlink()
    again = run(ex, list(range(4)), log, cache=True)
    assert calls(log) == [0, 1, 2, 3] and again.results() == [x * x + OFFSET for x in range(4)]


def test_two_racing_jobs_store_each_result_once_per_job_and_serve_one(make_executor, tmp_path):
    log = tmp_path / "calls"
    ex = make_executor(workers=2)
    jobs: list = []
    barrier = threading.Barrier(2)

    def submit():
        barrier.wait()
        jobs.append(ex.map_job(fit, list(range(20)), [str(log)] * 20, cache=True))

    threads = [threading.Thread(target=submit) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for j in jobs:
        j.wait(timeout=60)
    ran = calls(log)
    assert all(ran.count(x) <= 2 for x in range(20)) and set(ran) == set(range(20))
    log.unlink()
    third = run(ex, list(range(20)), log, cache=True)
    assert calls(log) == [] and third.status().cached == 20


def test_command_jobs_are_cached_by_command_files_and_row(tmp_path, url):
    (tmp_path / "grid.csv").write_text("n\n1\n2\n3\n")
    (tmp_path / "square.sh").write_text('echo "$(( $1 * $1 ))"; echo ran >> calls\n')
    (tmp_path / "calls").write_text("")
    base = [sys.executable, "-m", "cloudloop", "run", "--backend", url, "--workers", "1"]
    cmd = [*base, "--cache", "--items", "grid.csv", "--quiet", "--", "sh", "square.sh", "{n}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    first = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert first.returncode == 0, first.stderr
    second = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert second.returncode == 0, second.stderr
    job = second.stderr.split("job ", 1)[1].split(":", 1)[0]
    st = cl.attach(job, backend=url).status()
    assert st.cached == 3
    (tmp_path / "square.sh").write_text('echo "$(( $1 * $1 * 1 ))"\n')  # a shipped file changed
    third = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    job = third.stderr.split("job ", 1)[1].split(":", 1)[0]
    assert cl.attach(job, backend=url).status().cached == 0


# ---------------------------------------------------------------- retry


def test_retry_runs_only_the_failures_and_keeps_the_id(make_executor, tmp_path, url):
    log = tmp_path / "calls"
    for x in (4, 9):
        Path(f"{log}.fail-{x}").touch()
    ex = make_executor(workers=2)
    job = run(ex, list(range(12)), log)
    assert job.status().failed == 2
    for x in (4, 9):
        Path(f"{log}.fail-{x}").unlink()
    log.unlink()
    assert job.retry() == 2
    st = job.wait(timeout=60)
    assert calls(log) == [4, 9] and (st.failed, st.done, st.state.value) == (0, 12, "completed")
    again = cl.attach(job.id, backend=url)  # another client sees the whole job
    assert again.results() == [x * x + OFFSET for x in range(12)]
    assert job.retry() == 0  # nothing failed: nothing to do


def test_retry_with_a_fixed_function_and_named_tasks(make_executor, tmp_path, url):
    log = tmp_path / "calls"
    Path(f"{log}.fail-1").touch()
    ex = make_executor(workers=2)
    job = run(ex, list(range(6)), log, cache=True)
    log.unlink()
    ex.retry(job, fn=fit_changed).wait(timeout=60)
    assert calls(log) == [1]
    assert job.results()[1] == 1 + OFFSET + 1
    # the fixed function's outcome did not go into the cache under fit's key
    index = CacheIndex.load(open_backend(url), job.manifest.cache_key)
    assert len(index) == 5
    log.unlink()
    ex.retry(job.id, tasks=[0, 5]).wait(timeout=60)  # later retries run the fixed one too
    assert calls(log) == [0, 5] and job.results()[0] == OFFSET + 1


def _failing_job(make_executor, tmp_path):
    log = tmp_path / "calls"
    Path(f"{log}.fail-0").touch()
    ex = make_executor(workers=1)
    return ex, run(ex, [0, 1], log)


@pytest.mark.parametrize(
    "case, error, words",
    [
        ("bad-index", NotRetryable, "tasks are numbered 0 to 1"),
        ("negative-index", NotRetryable, "not a task of job"),
        ("cancelled", JobCancelled, "was cancelled"),
        ("running", NotRetryable, "wait for it to finish"),
        ("submit-job", NotRetryable, "Executor.submit() calls"),
    ],
)
def test_what_cannot_be_retried_says_why(make_executor, tmp_path, case, error, words):
    ex, job = _failing_job(make_executor, tmp_path)
    tasks = None
    if case == "bad-index":
        tasks = [2]
    elif case == "negative-index":
        tasks = [-1]
    elif case == "cancelled":
        job.cancel()
    elif case == "running":
        job = ex.map_job(_sleepy, [30], timeout=60)
    elif case == "submit-job":
        ex.submit(abs, -1).result(timeout=60)
        job = ex.session_job()
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        job.retry(tasks)
    if case == "running":
        job.cancel()


def _sleepy(s):
    import time

    time.sleep(s)


def test_cli_retry_and_cache_commands(make_executor, tmp_path, url):
    log = tmp_path / "calls"
    Path(f"{log}.fail-2").touch()
    ex = make_executor(workers=1)
    job = run(ex, list(range(5)), log, cache=True)
    Path(f"{log}.fail-2").unlink()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "cloudloop", *args, "--backend", url],
            capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path,
        )  # fmt: skip

    bad = cli("retry", job.id, "--tasks", "x")
    assert bad.returncode == 2 and "not a task index" in bad.stderr
    done = cli("retry", job.id, "--workers", "1", "--quiet")
    assert done.returncode == 0, done.stderr
    assert "1 task queued again" in done.stderr
    assert job.results() == [x * x + OFFSET for x in range(5)]
    ls = cli("cache", "ls", "--json")
    [entry] = json.loads(ls.stdout)
    assert entry["name"] == "fit" and entry["results"] >= 5 and entry["jobs"] == [job.id]
    stats = cli("cache", "stats")
    assert "cached results of 1 functions" in stats.stdout
    dry = cli("cache", "clear", "--job", job.id, "--dry-run")
    assert "would free" in dry.stdout
    assert open_backend(url).store.list(keys.CACHE)
    gone = cli("cache", "clear")
    assert "freed" in gone.stdout and open_backend(url).store.list(keys.CACHE) == []
    bad_job = cli("cache", "clear", "--job", "../x")
    assert bad_job.returncode != 0 and "Traceback" not in bad_job.stderr


# ---------------------------------------------------------------- every backend


@pytest.fixture(params=["sqlite", "redis", "aws"])
def any_url(request, tmp_path) -> str:
    import secrets

    if request.param == "sqlite":
        return "sqlite://" + str(tmp_path / "any-backend")
    if request.param == "redis":
        return request.getfixturevalue("redis_srv").url(prefix=f"t{secrets.token_hex(4)}")
    return request.getfixturevalue("aws_url")


def test_cache_retry_and_clear_on_every_backend(any_url, tmp_path):
    """Packs, the lookup's listing, the copy, a retry's rewrite and `cache clear`,
    through each backend's own store and queue."""
    from cloudloop.cli_cache import clear, survey

    log = tmp_path / "calls"
    Path(f"{log}.fail-7").touch()
    with cl.Executor(backend=any_url, workers=2, lease=5) as ex:
        first = run(ex, list(range(12)), log, cache=True)
        assert first.status().failed == 1
        Path(f"{log}.fail-7").unlink()
        log.unlink()
        second = run(ex, list(range(12)), log, cache=True)
        assert calls(log) == [7] and second.status().cached == 11
        assert second.results() == [x * x + OFFSET for x in range(12)]
        log.unlink()
        Path(f"{log}.fail-3").touch()
        third = run(ex, list(range(12)), log)  # no cache: 3 fails, then is retried
        Path(f"{log}.fail-3").unlink()
        assert third.retry() == 1
        assert third.wait(timeout=60).failed == 0 and 3 in calls(log)
    b = open_backend(any_url)
    [entry] = survey(b).values()
    assert entry.results == 13 and entry.jobs == {first.id, second.id}  # 12 + the rerun 7
    packs, freed = clear(b)
    assert packs == entry.packs and freed > 0 and b.store.list(keys.CACHE) == []


def test_a_forged_chunk_record_is_not_sent_again(make_executor, tmp_path, url):
    from cloudloop.errors import TamperedError

    log = tmp_path / "calls"
    Path(f"{log}.fail-1").touch()
    ex = make_executor(workers=1)
    job = run(ex, [0, 1, 2], log)
    b = open_backend(url)
    for record in b.store.list(keys.chunks_prefix(job.id)):
        b.store.put(record, b.store.get(record)[:-1] + b"x")  # one byte changed
    with pytest.raises(TamperedError, match="chunk record"):
        job.retry()
    assert b.queue.stats().total == 0 and job.status().failed == 1


def test_a_profile_turns_the_cache_on(tmp_path):
    log = tmp_path / "calls"
    (tmp_path / "cloudloop.toml").write_text(
        f'[profiles.cached]\nbackend = "sqlite://{tmp_path}/p"\nworkers = 1\ncache = true\n'
    )
    args = (list(range(3)), [str(log)] * 3)
    assert cl.map(fit, *args, profile="cached") == [x * x + OFFSET for x in range(3)]
    log.unlink()
    assert cl.map(fit, *args, profile="cached") == [x * x + OFFSET for x in range(3)]
    assert calls(log) == []


@pytest.mark.parametrize(
    "value, words",
    [
        ("yes", 'cache must be true, false or "all"'),
        (1, 'cache must be true, false or "all"'),
        ("ALL", 'cache must be true, false or "all"'),
    ],
)
def test_a_bad_cache_option_is_refused(url, value, words):
    with cl.Executor(backend=url, workers=0) as ex, pytest.raises(cl.ConfigError, match=words):
        ex.map_job(fit, [1], ["x"], cache=value)


def test_cache_ls_shows_a_hostile_job_name_as_inert_text(make_executor, tmp_path, url):
    log = tmp_path / "calls"
    ex = make_executor(workers=1)
    run(ex, [1], log, cache=True, name="\x1b]0;owned\x07\x1b[2Jfit")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run(
        [sys.executable, "-m", "cloudloop", "cache", "ls", "--backend", url],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0 and "\x1b" not in out.stdout and "\x07" not in out.stdout
    assert "?]0;owned??[2Jfit"[:24] in out.stdout


def _init(path):
    global INIT_PATH
    INIT_PATH = path


INIT_PATH = ""


def uses_init(x, log):
    with open(log, "a") as f:
        f.write(f"{x}\n")
    return (x, INIT_PATH)


def test_the_executors_initializer_is_in_the_key(url, tmp_path):
    log = tmp_path / "calls"
    for path in ("v1", "v1", "v2"):
        with cl.Executor(backend=url, workers=1, initializer=_init, initargs=(path,)) as ex:
            out = ex.map_job(uses_init, [1, 2], [str(log)] * 2, cache=True).results()
        assert out == [(1, path), (2, path)]
    assert calls(log) == [1, 1, 2, 2]  # v1 computed, v1 taken, v2 computed


def test_cache_all_prefers_a_later_success(make_executor, tmp_path):
    log = tmp_path / "calls"
    Path(f"{log}.fail-1").touch()
    ex = make_executor(workers=1)
    job = run(ex, [0, 1], log, cache=True)
    Path(f"{log}.fail-1").unlink()
    job.retry()  # the same function: its new success is packed too
    job.wait(timeout=60)
    log.unlink()
    assert run(ex, [0, 1], log, cache="all").results() == [OFFSET, 1 + OFFSET]
    assert calls(log) == []


def test_a_plain_retry_after_a_fixed_one_runs_the_fixed_function(make_executor, tmp_path):
    log = tmp_path / "calls"
    for x in (1, 2):
        Path(f"{log}.fail-{x}").touch()
    ex = make_executor(workers=1)
    job = run(ex, [0, 1, 2], log)
    ex.retry(job, fn=fit_changed, tasks=[1]).wait(timeout=60)
    ex.retry(job).wait(timeout=60)  # task 2 still failed: fixed function again
    assert job.results() == [OFFSET, 1 + OFFSET + 1, 4 + OFFSET + 1]


def test_a_module_imported_inside_the_function_is_in_the_key(tmp_path, monkeypatch):
    from cloudloop import cachekey

    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "inner_helpers.py").write_text("K = 1\ndef g(x):\n    return x + K\n")
    ns: dict = {"__name__": "__main__"}
    exec("def f(x):\n    import inner_helpers\n    return inner_helpers.g(x)\n", ns)
    before = cachekey.function_key(ns["f"])
    (tmp_path / "inner_helpers.py").write_text("K = 1000\ndef g(x):\n    return x + K\n")
    assert cachekey.function_key(ns["f"]) != before
