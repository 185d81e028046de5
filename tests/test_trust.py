"""The trust boundary: tasks never hold the key, nothing replays, nothing forged is
believed, secrets stay out of every output, private files stay private."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import redis_server as rs
from helpers import wait_for, worker_records

import cloudloop as cl
from cloudloop import cli, codec, keys
from cloudloop.backends import open_backend
from cloudloop.config import find_config_file

# ---------------------------------------------------------------- what a task can reach


def inspect_my_powers(_):
    """Everything a task can find of the key or the store, through cloudloop or its env."""
    import gc

    from cloudloop import context, runner

    ctx = context.current()
    found = {
        "ctx_fields": sorted(vars(ctx)),
        "env": sorted(k for k in os.environ if k.startswith("CLOUDLOOP_")),
        "runner_globals": sorted(k for k in vars(runner) if "store" in k.lower()),
        "backends": sum(1 for o in gc.get_objects() if type(o).__name__.endswith("Backend")),
    }
    return found


def test_a_task_holds_neither_the_key_nor_the_store(make_executor, url, monkeypatch):
    monkeypatch.setenv("CLOUDLOOP_SECRET", "ab" * 32)  # kept outside the store, by the client
    ex = make_executor(workers=1)
    (found,) = ex.map_job(inspect_my_powers, [0]).results(timeout=60)
    assert "key" not in found["ctx_fields"] and "store_factory" not in found["ctx_fields"]
    assert not {"CLOUDLOOP_SECRET", "CLOUDLOOP_SECRET_FILE", "CLOUDLOOP_BACKEND"} & set(
        found["env"]
    )
    assert found["runner_globals"] == [] and found["backends"] == 0


def _child():
    import gc

    runner = sys.modules["__main__"]  # the runner runs as `python -m cloudloop.runner`
    return next(o for o in gc.get_objects() if isinstance(o, runner._Child))


def store_for_another_task(_):
    """Ask the worker, over the runner's own pipe, to checkpoint task 999."""
    import pickle

    child = _child()
    child.res.send_bytes(pickle.dumps(("call", ("checkpoint", 999, (b"forged",)))))
    return pickle.loads(child.ctl.recv_bytes())


def claim_other_tasks(_):
    """Send outcome rows for tasks this runner was never given."""
    import pickle

    from cloudloop import codec

    child = _child()
    rows = [(i, 1, codec.dumps_fast("forged", "x"), None, 0.0, 0.0, False) for i in (5, 6)]
    child.res.send_bytes(pickle.dumps(("outcomes", (codec.pack_rows(rows), [5, 6], []))))
    time.sleep(30)


def smuggle_code(_):
    """Send the worker a pickle that would run a command if it were unpickled."""
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch /tmp/cloudloop-pwned-by-a-task",))

    child = _child()
    child.res.send_bytes(pickle.dumps(("outcomes", (Evil(), [0], []))))
    time.sleep(30)


def test_a_task_can_only_touch_its_own_keys(make_executor, url):
    ex = make_executor(workers=1)
    job = ex.map_job(store_for_another_task, [0])
    (reply,) = job.results(timeout=60)
    assert reply[0] == "reply" and reply[1][0] is False
    assert "not a call for a task of the running batch" in reply[1][1]
    assert open_backend(url).get_signed(keys.checkpoint(job.id, 999)) is None


@pytest.mark.parametrize("fn", [claim_other_tasks, smuggle_code], ids=["rows", "pickle"])
def test_a_runner_that_breaks_its_protocol_is_killed_and_runs_no_code(make_executor, fn):
    Path("/tmp/cloudloop-pwned-by-a-task").unlink(missing_ok=True)
    ex = make_executor(workers=1)
    job = ex.map_job(fn, range(8), chunksize=8)
    out = job.results(return_exceptions=True, timeout=60)
    assert isinstance(out[0], cl.TaskCrashed), out
    assert "forged" not in out, out  # no row it made up was stored
    assert not Path("/tmp/cloudloop-pwned-by-a-task").exists()
    assert ex.map_job(double, [21]).results(timeout=60) == [42]  # the worker goes on


def double(x):
    return 2 * x


def triple(x):
    return 3 * x


def patch_the_runner(_):
    """Leave something behind in the runner: every later result reads 'PWNED'."""
    from cloudloop import codec

    real = codec.dumps_fast
    codec.dumps_fast = lambda value, what, n=None: real(
        "PWNED" if isinstance(value, int) else value, what, n
    )
    return "done"


ANOTHER_CLIENT = textwrap.dedent(
    """
    import sys
    import cloudloop as cl

    def triple(x):
        return 3 * x

    with cl.Executor(backend=sys.argv[1], workers=0) as ex:
        print(ex.map_job(triple, range(4)).id, flush=True)
    """
)


def test_one_clients_code_cannot_reach_another_clients_tasks(make_executor, url, tmp_path):
    ex = make_executor(workers=1)
    assert ex.map_job(patch_the_runner, [0]).results(timeout=60) == ["done"]
    script = tmp_path / "other.py"
    script.write_text(ANOTHER_CLIENT)
    out = subprocess.run([sys.executable, str(script), url], capture_output=True, text=True)
    other = cl.attach(out.stdout.strip(), backend=url)
    assert other.results(timeout=60) == [0, 3, 6, 9]


# ---------------------------------------------------------------- nothing replays, nothing forged


def test_a_signed_blob_copied_to_another_job_is_not_believed(make_executor, url):
    ex = make_executor(workers=1)
    a = ex.map_job(double, range(3), chunksize=3)
    assert a.results(timeout=60) == [0, 2, 4]
    ex.shutdown()  # its worker must not run b before the copies are in place
    backend = open_backend(url)
    b = make_executor(workers=0).map_job(triple, range(3), chunksize=3)
    # a's result part, under b's results: it would answer every task of b
    (part,) = backend.store.list(keys.results_prefix(a.id))
    backend.store.put(part.replace(a.id, b.id), backend.store.get(part))
    # a's function under b's function key: it must not run as b's
    (fa,) = backend.store.list(f"jobs/{a.id}/fn/")
    (fb,) = backend.store.list(f"jobs/{b.id}/fn/")
    backend.store.put(fb, backend.store.get(fa))
    make_executor(workers=1)
    out = b.results(return_exceptions=True, timeout=60)
    assert all(isinstance(e, cl.CorruptMessage) for e in out), out
    assert "copied from another key" in str(out[0])


def test_forged_markers_change_nothing(make_executor, url):
    ex = make_executor(workers=0)
    job = ex.map_job(double, range(4), chunksize=2)
    backend = open_backend(url)
    store = backend.store
    store.put(keys.cancelled(job.id), b"{}")  # a cancelled job
    store.put(keys.finished(job.id), json.dumps({"at": 0}).encode())
    store.put(keys.PAUSED, b"{}")  # every worker paused
    store.put("index/not-a-job-../x", b"{}")
    for n in range(5):  # task 0 "took its worker down" five times
        store.put(keys.start(job.id, 0, f"w{n}"), b"")
    fresh = cl.attach(job.id, backend=url)
    make_executor(workers=1, lease=2)
    assert fresh.results(timeout=60) == [0, 2, 4, 6]
    st = fresh.status()
    assert st.state is cl.JobState.COMPLETED and st.elapsed > 0
    assert any("cancelled was not written" in p for p in st.problems), st.problems


def test_a_rewritten_sealed_record_never_yields_fewer_results(make_executor, url):
    ex = make_executor(workers=1)
    job = ex.map_job(double, range(4), chunksize=2)
    assert job.results(timeout=60) == [0, 2, 4, 6]
    open_backend(url).store.put(keys.sealed(job.id), json.dumps({"tasks": 1}).encode())
    fresh = cl.attach(job.id, backend=url)
    with pytest.raises(TimeoutError):
        fresh.results(timeout=3)  # not [0]: the count is not believed, so it is unknown
    assert any("sealed was not written" in p for p in fresh.status().problems)


def test_forged_log_and_heartbeat_records_are_not_shown(make_executor, url, capsys):
    ex = make_executor(workers=1)
    job = ex.map_job(print, ["real line"])
    job.results(timeout=60)
    backend = open_backend(url)
    backend.store.put(keys.logs(job.id, 0, 0), json.dumps({"0": [[1, 9, "FORGED"]]}).encode())
    backend.store.put("workers/evil", json.dumps({"id": "evil", "last_seen": time.time()}).encode())
    text = cl.attach(job.id, backend=url).logs(0)
    assert "real line" in text and "FORGED" not in text and "could not be read" in text
    assert "evil" not in [w["id"] for w in worker_records(backend)]


# ---------------------------------------------------------------- private files


def test_the_sqlite_backend_and_worker_logs_are_private(make_executor, url):
    started = time.time() - 1
    ex = make_executor(workers=1)
    ex.map_job(double, [1]).results(timeout=60)
    root = Path(url.split("://", 1)[1])
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    for p in [root / "secret.key", root / "queue.db", *root.joinpath("store").rglob("*")]:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode & 0o077 == 0, f"{p} is mode {mode:o}"
    logs = Path(os.environ.get("TMPDIR", "/tmp")) / f"cloudloop-{os.getuid()}"
    assert stat.S_IMODE(logs.stat().st_mode) == 0o700
    mine = [p for p in logs.joinpath("workers").glob("*.log") if p.stat().st_mtime >= started]
    assert mine
    for p in mine:
        assert stat.S_IMODE(p.stat().st_mode) & 0o077 == 0


# ---------------------------------------------------------------- secrets in output


@pytest.fixture
def redis_with_password(tmp_path):
    server = rs.RedisServer(tmp_path / "redis", password="Hunter2-secret")
    yield server
    server.stop()


def test_a_redis_password_is_in_no_output(redis_with_password, tmp_path, capsys):
    url = redis_with_password.url(prefix="pw")
    secret = "Hunter2-secret"
    with cl.Executor(backend=url, workers=1, heartbeat=0.5) as ex:
        assert secret not in repr(ex.backend) and secret not in ex.backend.url
        job = ex.map_job(double, range(3))
        assert secret not in repr(job)
        assert job.results(timeout=60) == [0, 2, 4]
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        assert "cloudloop worker" in ps and secret not in ps
        records = wait_for(lambda: worker_records(ex.backend), what="a heartbeat")
        assert secret not in json.dumps(records)
        pid = records[0]["pid"]
        assert secret not in Path(f"/proc/{pid}/cmdline").read_text()
        for argv in (["status", "--backend", url], ["status", "--backend", url, job.id],
                     ["logs", "--backend", url, job.id, "0"]):  # fmt: skip
            capsys.readouterr()
            assert cli.main(argv) == 0
            out = capsys.readouterr()
            assert secret not in out.out + out.err
    logs = Path(os.environ.get("TMPDIR", "/tmp")) / f"cloudloop-{os.getuid()}" / "workers"
    for p in logs.glob("*.log"):
        assert secret not in p.read_text(errors="replace")


# ---------------------------------------------------------------- configuration


def test_a_config_file_in_a_shared_directory_is_not_read(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    (shared / "work").mkdir(parents=True)
    shared.chmod(0o1777)  # like /tmp: anyone may leave a file here
    (shared / "cloudloop.toml").write_text('[profiles.evil]\nbackend = "redis://evil:6379/0"\n')
    monkeypatch.chdir(shared / "work")
    assert find_config_file() is None


def test_a_config_file_others_can_write_is_refused(tmp_path, monkeypatch):
    (tmp_path / "cloudloop.toml").write_text('[profiles.x]\nbackend = "sqlite:///tmp/x"\n')
    (tmp_path / "cloudloop.toml").chmod(0o666)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(cl.ConfigError, match="can be changed by other users"):
        find_config_file()


def test_the_config_search_stops_at_the_repository_root(tmp_path, monkeypatch):
    (tmp_path / "cloudloop.toml").write_text("")
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / "src").mkdir()
    monkeypatch.chdir(repo / "src")
    assert find_config_file() is None
    (repo / "cloudloop.toml").write_text("")
    assert find_config_file() == repo / "cloudloop.toml"


def test_a_key_file_others_can_read_is_refused(tmp_path, monkeypatch, url):
    path = tmp_path / "key"
    path.write_text("ab" * 32)
    path.chmod(0o644)
    monkeypatch.setenv("CLOUDLOOP_SECRET_FILE", str(path))
    with pytest.raises(cl.ConfigError, match="chmod 600"):
        open_backend(url)
    path.chmod(0o600)
    assert open_backend(url).key == bytes.fromhex("ab" * 32)


def test_signatures_bind_the_name(url):
    key = open_backend(url).key
    blob = codec.sign(key, b"data", "jobs/a/results/x")
    assert codec.verify(key, blob, "jobs/a/results/x") == b"data"
    for other in ("jobs/b/results/x", "jobs/a/checkpoints/x", "jobs/a/results/y"):
        with pytest.raises(cl.TamperedError):
            codec.verify(key, blob, other)


def test_a_worker_record_cannot_drive_the_terminal(url, capsys):
    backend = open_backend(url)
    rec = {
        "id": "w1",
        "host": "evil\x1b]0;pwned\x07\x1b[2J",
        "message": "a\nb",
        "last_seen": time.time(),
    }
    backend.put_record("workers/w1", rec)
    (got,) = worker_records(backend)
    assert "\x1b" not in got["host"] and "\n" not in got["message"] and "\x07" not in got["host"]
