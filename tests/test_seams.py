"""Where modules meet: cluster run directories and pid files, worker flags, the
results and log readers shared by several threads, checked record decoders, and
the cluster commands' options. Each test pins one way these seams broke."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
import time

import pytest

from cloudloop import cli, codec, keys
from cloudloop.backends import open_backend
from cloudloop.heartbeat import worker_records
from cloudloop.model import (
    Cancelled,
    DeadLetterReason,
    Finished,
    JobOptions,
    OutcomeRow,
    Sealed,
    WorkerOptions,
    WorkerRecord,
)
from cloudloop.providers.local import LocalProvider, _started_at
from cloudloop.providers.prices import LedgerRecord
from cloudloop.results import LogParts
from cloudloop.session import _Session


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """$TMPDIR (where local clusters keep their pid files) in the test's own directory."""
    d = tmp_path / "tmp"
    d.mkdir(mode=0o700)
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


def _fake_worker() -> subprocess.Popen:
    """A process whose command line looks like a worker's (what `down` checks)."""
    return subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "cloudloop", "worker"],
        start_new_session=True,
    )


@pytest.mark.parametrize(("mine", "other"), [("a/b", "a_b"), ("..", "_"), ("x" * 70, "x" * 64)])
def test_local_down_never_stops_the_workers_of_a_profile_with_a_similar_name(
    private_tmp, url, mine, other
):
    """Two profile names that differ must not share the directory of pid files:
    `down --profile a_b` stopped the workers `up --profile a/b` had started."""
    provider = LocalProvider({}, profile=other)
    theirs = provider.cluster(url, WorkerOptions())
    ours = LocalProvider({}, profile=mine).cluster(url, WorkerOptions())
    p = _fake_worker()
    try:
        (theirs._run_dir() / str(p.pid)).write_text(f"{_started_at(p.pid)}\n")
        ours.down()
        time.sleep(0.2)
        assert p.poll() is None, f"down of {mine!r} stopped a worker of {other!r}"
        assert theirs._run_dir() != ours._run_dir()
    finally:
        p.kill()
        p.wait()


def test_ssh_profile_names_never_leave_or_share_the_run_directory(url):
    """The ssh cluster's name goes into remote paths ($D/run/<name>) that `down` finds
    pid files under and removes: '..' reached every profile's workers."""
    from cloudloop.providers.ssh import SshProvider

    def cluster(name):
        return SshProvider({"hosts": ["n1"]}, profile=name).cluster(url, WorkerOptions())

    dirs = {name: cluster(name).profile for name in ("..", ".", "a/b", "a_b", "lab")}
    assert dirs["lab"] == "lab"  # a plain name keeps its remote directory
    assert not {dirs[".."], dirs["."]} & {".", ".."}
    assert len(set(dirs.values())) == len(dirs)
    assert '/run/.."' not in cluster("..")._stop_script(None)


def test_local_up_with_a_python_that_is_not_there_is_one_line_not_a_traceback(
    private_tmp, tmp_path, monkeypatch, capsys
):
    config = tmp_path / "cloudloop.toml"
    config.write_text(
        f'[profiles.p]\nbackend = "sqlite://{tmp_path}/b"\npython = "/nonexistent/python"\n'
    )
    config.chmod(0o600)
    monkeypatch.setenv("CLOUDLOOP_CONFIG", str(config))
    rc = cli.main(["up", "-n", "1", "--profile", "p"])
    out = capsys.readouterr()
    assert rc != 0
    assert "Traceback" not in out.err + out.out
    assert "/nonexistent/python" in out.err + out.out


@pytest.mark.parametrize("value", [1e-05, 2.5e-07, 0.1 + 0.2, 1e16 + 2])
@pytest.mark.parametrize("name", ["idle_exit", "heartbeat", "split_after", "preempt_grace"])
def test_worker_durations_round_trip_through_flags_however_small(name, value):
    """A profile may say idle_exit = 0.00001 (a valid duration); to_args wrote '1e-05',
    which from_args (and so every worker `up` starts) refused."""
    opts = WorkerOptions(**{name: value})
    assert WorkerOptions.from_args(opts.to_args()) == opts


@pytest.fixture
def session(url):
    """A real executor session (its thread idles: it has no futures to watch)."""
    s = _Session(open_backend(url), JobOptions(), 1)
    yield s
    s.close(abandon=True)


def _part(backend, job: str, i: int) -> tuple[str, bytes]:
    name = keys.result(job, i, i, 1)
    row = OutcomeRow(i, 1, codec.dumps(i, "value"), None, 1.0, 2.0)
    return name, codec.encode_part(backend.key, name, "w", "h", [codec.pack_rows([row])])


def test_session_keeps_the_outcomes_read_before_a_store_error_in_the_same_round(
    session, monkeypatch
):
    """_gather reads every new part; a transient store error on one part must not lose
    the outcomes of the parts read before it in that round (their futures would hang)."""
    backend, job = session.backend, session.writer.id
    for i in (0, 1):
        backend.store.put(*_part(backend, job, i))
    real, calls = backend.store.get_or_none, []

    def flaky(key):
        calls.append(key)
        if len(calls) == 2:  # the second part read in the first round
            raise ConnectionError("the store blinked")
        return real(key)

    monkeypatch.setattr(backend.store, "get_or_none", flaky)
    got = []
    for _ in range(3):
        try:
            got += session._gather()
        except ConnectionError:
            pass
    assert sorted(o.index for o in got) == [0, 1]


def test_a_user_watching_the_session_job_races_nothing_with_the_session_thread(
    session, monkeypatch
):
    """Executor.session_job() hands the user the Job the session thread reads results
    through; both refreshing its one ResultParts at once raised 'dictionary changed size
    during iteration' in the user's status() (or the session's round)."""
    backend, job = session.backend, session.writer.id
    blobs = dict(_part(backend, job, i) for i in range(3000))
    listed: list[str] = []
    monkeypatch.setattr(backend.store, "list", lambda prefix: list(listed))
    monkeypatch.setattr(backend.store, "get_or_none", blobs.get)
    user = session.job  # what Executor.session_job() returns
    errors: list[BaseException] = []
    done = threading.Event()

    def watch():
        while not done.is_set():
            try:
                user.parts.refresh()
                user.parts.containing(7)
                user.parts.failing()
            except RuntimeError as e:
                errors.append(e)
                return

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    t = threading.Thread(target=watch)
    t.start()
    try:
        deadline = time.monotonic() + 1.5
        for name in blobs:
            listed.append(name)
            session._gather()
            if errors or time.monotonic() > deadline:
                break
    finally:
        done.set()
        t.join()
        sys.setswitchinterval(interval)
    assert not errors


HUGE = 10**400  # JSON holds it as an int; as a float it overflows


@pytest.mark.parametrize(
    "decode",
    [
        lambda: Finished.from_dict({"at": HUGE}),
        lambda: Cancelled.from_dict({"at": HUGE}),
        lambda: Sealed.from_dict({"tasks": 1, "at": HUGE}),
        lambda: DeadLetterReason.from_dict({"why": "x", "at": HUGE}),
        lambda: WorkerRecord.from_dict({"id": "w", "last_seen": HUGE}),
        lambda: LedgerRecord.from_dict({"id": "i", "type": "t", "price": HUGE, "launched": 0}),
    ],
)
def test_a_number_too_big_for_a_float_is_a_value_error_like_any_malformed_field(decode):
    """The checked decoders promise ValueError (what every caller catches); math.isfinite
    of a 400-digit int raised OverflowError, which went past them (status, ls, a worker's
    cancel check)."""
    with pytest.raises(ValueError):
        decode()


def test_ls_skips_a_heartbeat_record_with_a_number_too_big(url):
    backend = open_backend(url)
    backend.put_record(keys.worker("w-1"), {"id": "w-1", "last_seen": HUGE})
    assert worker_records(backend) == []


@pytest.mark.parametrize("attempt", [[1], float("inf"), "1"])
def test_a_log_part_with_a_segment_of_the_wrong_shape_reads_as_a_note(url, attempt):
    """read_log_part promises a part that is malformed reads as a note; int() of a list
    (TypeError) or of Infinity (OverflowError) went past it (Job.logs, the dashboard)."""
    backend = open_backend(url)
    name = keys.logs("j1", 0, 0)
    backend.put_record(name, {"0": [[attempt, 0, "hello\n"]]})
    reader = LogParts(backend, "j1", keep=True)
    reader.refresh()
    assert "could not be read" in reader.log(0)


def test_cluster_commands_act_on_the_backend_given_with_backend(tmp_path, monkeypatch):
    """`--backend URL` is accepted by up/ls/down/pause/resume ("default: the profile's")
    but was ignored: `cloudloop pause --backend B` paused the profile's backend."""
    from cloudloop.jobdata import paused

    config = tmp_path / "cloudloop.toml"
    config.write_text(f'[profiles.p]\nbackend = "sqlite://{tmp_path}/mine"\n')
    config.chmod(0o600)
    monkeypatch.setenv("CLOUDLOOP_CONFIG", str(config))
    other = f"sqlite://{tmp_path}/other"
    assert cli.main(["pause", "--profile", "p", "--backend", other]) == 0
    assert paused(open_backend(other))
    assert not paused(open_backend(f"sqlite://{tmp_path}/mine"))


@pytest.mark.parametrize("name", ["lease", "split_after", "preempt_grace"])
def test_a_worker_option_that_must_have_a_value_refuses_none(name):
    """worker_options (Executor(**options) goes through it) took split_after=None, which
    no flag can say (Executor(workers=N) then failed with a bare ValueError from to_args;
    lease=None with a TypeError)."""
    from cloudloop.config import worker_options
    from cloudloop.errors import ConfigError

    with pytest.raises(ConfigError, match=name):
        worker_options(**{name: None})


@pytest.mark.parametrize("name", ["idle_exit", "heartbeat", "metadata_url", "stop_at"])
def test_a_worker_option_that_may_be_unset_still_takes_none(name):
    from cloudloop.config import worker_options

    assert getattr(worker_options(**{name: None}), name) is None


def test_a_part_added_as_another_is_removed_is_still_seen():
    """Progress is read from listings: a listing of the same length (one part gone,
    one new) must not hide the new part."""
    from types import SimpleNamespace

    from cloudloop.results import ResultParts

    a, b, c = keys.result("j", 0, 9, 0), keys.result("j", 10, 19, 0), keys.result("j", 20, 29, 0)
    listed = [a, b]
    store = SimpleNamespace(list=lambda prefix: list(listed))
    parts = ResultParts(SimpleNamespace(store=store), "j")  # type: ignore[arg-type]
    assert parts.refresh() and parts.done == 20
    listed[:] = [a, c]  # b removed (say, by a cleanup) while c was added
    assert parts.refresh() and parts.covers(25)
    assert not parts.refresh()  # nothing new


def test_up_while_the_backend_is_paused_says_so(tmp_path):
    cluster = LocalProvider({}, "paused-up").cluster(f"sqlite://{tmp_path / 'b'}", WorkerOptions())
    cluster.pause()
    try:
        report = cluster.up(1)
        assert report.ok and "paused" in report.lines[-1] and "cloudloop resume" in report.lines[-1]
    finally:
        cluster.down()
        cluster.resume()
