"""Removing jobs (rm, gc) and fetching their outputs, on sqlite, redis and aws (moto)."""

from __future__ import annotations

import secrets
import time

import pytest

import cloudloop as cl
from cloudloop import cli, keys
from cloudloop.backends import open_backend
from cloudloop.errors import CloudloopError, JobNotFound
from cloudloop.housekeeping import collect, download_outputs, remove_job, usage

DAY = 86400.0


def _square(x):
    return x * x


def _fails_on_odd(x):
    if x % 2:
        raise ValueError(f"odd {x}")
    return x


def _write(x):
    (cl.output_dir() / f"out-{x}.txt").write_text("y" * (x + 1))
    return x


@pytest.fixture(params=["sqlite", "redis", "aws"])
def hk_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return "sqlite://" + str(tmp_path / "backend")
    if request.param == "redis":
        return request.getfixturevalue("redis_srv").url(prefix=f"t{secrets.token_hex(4)}")
    return request.getfixturevalue("aws_url")


def _run(url, fn, items):
    with cl.Executor(backend=url, workers=2, lease=5) as ex:
        job = ex.map_job(fn, items)
        job.wait(timeout=120)
    return job.id


def _clone(backend, src: str, dst: str) -> dict[str, bytes]:
    """Copy a job's keys under another id (a job whose id src is a prefix of)."""
    copied = {}
    for key in [keys.index_entry(src), *backend.store.list(keys.job_prefix(src))]:
        new = key.replace(src, dst, 1)
        copied[new] = backend.store.get(key)
        backend.store.put(new, copied[new])
    return copied


def test_rm_frees_a_finished_job_and_leaves_others(hk_url):
    job = _run(hk_url, _square, range(6))
    b = open_backend(hk_url)
    twin = _clone(b, job, job + "2")  # jobs/<job>2/ must survive removing jobs/<job>/
    sizes = usage(b, job)
    assert keys.index_entry(job) in sizes and keys.manifest(job) in sizes
    freed = remove_job(b, job)
    assert (freed.keys, freed.bytes, freed.state) == (len(sizes), sum(sizes.values()), "completed")
    assert b.store.list(keys.job_prefix(job)) == [] and not b.store.exists(keys.index_entry(job))
    assert {k: b.store.get(k) for k in twin} == twin
    with pytest.raises(JobNotFound):
        remove_job(b, job)


@pytest.mark.parametrize(("force", "refused"), [(False, True), (True, False)])
def test_rm_of_a_running_job(hk_url, force, refused):
    ex = cl.Executor(backend=hk_url, workers=0)
    job = ex.map_job(_square, range(3))  # no worker: it stays queued
    b = open_backend(hk_url)
    if refused:
        with pytest.raises(CloudloopError, match="cloudloop cancel .* or pass --force"):
            remove_job(b, job.id, force=force)
        assert b.store.exists(keys.manifest(job.id))
    else:
        assert remove_job(b, job.id, force=force).state == "queued"
        assert usage(b, job.id) == {}


def test_an_interrupted_rm_is_finished_by_running_it_again(tmp_path):
    url = "sqlite://" + str(tmp_path / "b")
    job = _run(url, _square, range(3))
    b = open_backend(url)
    b.store.remove(keys.index_entry(job))
    b.store.remove(keys.manifest(job))  # cut short after the index and the manifest
    assert cli.main(["status", "--backend", url]) == 0  # lists nothing, breaks nothing
    left = usage(b, job)
    assert left and remove_job(b, job).state == "gone"
    assert usage(b, job) == {}


@pytest.mark.parametrize(
    ("age_days", "keep_failed", "dry_run", "removed"),
    [
        (8, False, False, {"ok", "failed"}),
        (8, True, False, {"ok"}),
        (8, False, True, set()),  # dry run: names both, removes none
        (6, False, False, set()),  # not old enough
    ],
)
def test_gc(tmp_path, age_days, keep_failed, dry_run, removed):
    url = "sqlite://" + str(tmp_path / "b")
    jobs = {"ok": _run(url, _square, range(4)), "failed": _run(url, _fails_on_odd, range(4))}
    running = cl.Executor(backend=url, workers=0).map_job(_square, range(2)).id
    b = open_backend(url)
    freed = collect(b, 7 * DAY, keep_failed, dry_run, now=time.time() + age_days * DAY)
    named = {f.job for f in freed}
    expect_named = removed if not dry_run else ({"ok", "failed"} if age_days > 7 else set())
    assert named == {jobs[n] for n in expect_named}
    assert all(f.removed is not dry_run and f.bytes > 0 for f in freed)
    for name, job in jobs.items():
        assert b.store.exists(keys.manifest(job)) is (name not in removed)
    assert b.store.exists(keys.manifest(running))  # never collected


def test_outputs_download(hk_url, tmp_path):
    job = _run(hk_url, _write, range(3))
    b = open_backend(hk_url)
    assert download_outputs(b, job, tmp_path / "all") == (3, 1 + 2 + 3)
    assert (tmp_path / "all" / "2" / "out-2.txt").read_text() == "yyy"
    assert download_outputs(b, job, tmp_path / "one", task=1) == (1, 2)
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["1"]


@pytest.mark.parametrize(
    "name", ["%2E%2E%2F%2E%2E%2Fevil", "%2Fetc%2Fevil", "a/%2E%2E/%2E%2E/%2E%2E/evil", "a%00/evil"]
)
def test_a_forged_output_name_is_not_written(tmp_path, name):
    url = "sqlite://" + str(tmp_path / "b")
    job = _run(url, _square, range(1))
    b = open_backend(url)
    b.put_signed(keys.outputs_prefix(job, 0) + name, b"evil")
    out = tmp_path / "deep" / "down"
    with pytest.raises(CloudloopError, match="would leave"):
        download_outputs(b, job, out)
    assert not [p for p in tmp_path.rglob("*evil*") if "store" not in p.parts]


def test_a_worker_drops_messages_of_a_removed_job(tmp_path):
    url = "sqlite://" + str(tmp_path / "b")
    gone = cl.Executor(backend=url, workers=0).map_job(_square, range(5)).id
    b = open_backend(url)
    remove_job(b, gone, force=True)
    assert b.queue.stats().visible > 0  # its messages are still queued
    assert cl.attach(_run(url, _square, range(3)), backend=url).results() == [0, 1, 4]
    deadline = time.monotonic() + 30
    while (b.queue.stats().visible or b.queue.stats().leased) and time.monotonic() < deadline:
        time.sleep(0.1)
    st = b.queue.stats()
    assert (st.visible, st.leased) == (0, 0)
    assert b.store.list("deadletter/") == [] and usage(b, gone) == {}


def test_cli(tmp_path, capsys):
    url = "sqlite://" + str(tmp_path / "b")
    done = _run(url, _write, range(2))
    plain = _run(url, _square, range(2))
    queued = cl.Executor(backend=url, workers=0).map_job(_square, range(2)).id
    capsys.readouterr()

    cases = [
        (["outputs", plain], 0, f"job {plain} has no output files", ""),
        (["outputs", done, "1", "-o", str(tmp_path / "o")], 0, "1 output file of task 1", ""),
        (["outputs", done, "5"], 0, f"task 5 of job {done} has no output files", ""),
        (["outputs", "no-such-job"], 2, "", "is not on backend"),
        (["outputs", done, "x"], 2, "", "is not a task index"),
        (["rm", queued], 1, "", f"cloudloop cancel {queued}` it first, or pass --force"),
        (["rm", "no-such-job", done], 1, f"removed job {done} (completed)", "is not on backend"),
        (["rm", "../etc"], 1, "", "is not a job id"),
        (["gc", "--older-than", "soon"], 2, "", "--older-than 'soon' is not a duration"),
        (["gc", "--older-than", "0s", "--dry-run"], 0, f"would remove job {plain}", ""),
        (["gc", "--older-than", "0s"], 0, "freed ", ""),
        (["rm", "--force", queued], 0, f"removed job {queued} (queued)", ""),
    ]
    for argv, status, out, err in cases:
        with pytest.raises(SystemExit) if status == 2 and argv[-1] == "x" else _nothing():
            assert cli.main([*argv, "--backend", url]) == status, argv
        got = capsys.readouterr()
        assert out in got.out and err in got.err, (argv, got)
        assert "Traceback" not in got.err
    assert (tmp_path / "o" / "1" / "out-1.txt").read_text() == "yy"
    assert open_backend(url).store.list("jobs/") == []


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
