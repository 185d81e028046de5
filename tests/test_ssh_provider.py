"""The ssh provider on three "hosts": network namespaces, each running a real sshd.

::

    root namespace: the test (client), redis-server on the lab address
      │ lab bridge
      ├── n1  sshd :2222, HOME=<tmp>/n1    workers started by `cloudloop up`
      ├── n2  sshd :2222, HOME=<tmp>/n2
      ├── n3  sshd :2222, HOME=<tmp>/n3
      └── "dead" (an address nobody has) and "badkey" (n1 with a key it refuses)

The hosts cannot reach a package index, so ``up`` ships the wheelhouse over
ssh: this tests the air-gapped path for real. Each host gets its own HOME
(``SetEnv`` in its sshd_config) because the namespaces share one filesystem.
"""

from __future__ import annotations

import os
import sys
import time

import pytest
import redis_server as rs
import sshlab
from helpers import wait_for, worker_records
from sshlab import HOSTS, LabRig

import cloudloop as cl
from cloudloop import cli, codec, keys
from cloudloop.backends import open_backend
from cloudloop.errors import ConfigError
from cloudloop.model import WorkerOptions
from cloudloop.providers.ssh import SshCluster, SshSettings, _shares, _why, parse_hosts


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    sshlab.require()
    r = LabRig(tmp_path_factory.mktemp("sshlab"))
    yield r
    r.close()


def _task(i):
    time.sleep(0.02)  # long enough that every worker gets some chunks, no CPU
    return i * i


def _hosts_of(url: str, job_id: str) -> dict[int, list[str]]:
    """Every stored result row's task index -> the hosts that stored one."""
    seen: dict[int, list[str]] = {}
    with open_backend(url) as b:
        for key in b.store.list(keys.results_prefix(job_id)):
            _, host, rows = codec.part_rows(b.key, b.store.get(key), key)
            for r in rows:
                seen.setdefault(r[0], []).append(host)
    return seen


def _busy_on(url: str, host: str) -> bool:
    with open_backend(url) as b:
        for rec in worker_records(b):
            if rec.get("host") == host and rec.get("task") is not None:
                return True
    return False


def _ready_workers(url: str, n: int) -> None:
    with open_backend(url) as b:
        wait_for(lambda: len(b.store.list(keys.WORKERS)) >= n, timeout=60, what=f"{n} workers")


def _cli(capsys, *argv: str) -> tuple[int, list[str]]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    lines = out.out.strip().splitlines()
    return code, lines + ([f"stderr: {out.err.strip()}"] if out.err.strip() else [])


def test_settings_are_checked():
    assert parse_hosts(["n1", "n2*8"])[1].workers == 8
    for bad in ("n1", [], ["n1*0"], ["a b"], ["-oProxyCommand=x"], ["n1", "n1*2"]):
        with pytest.raises(ConfigError, match="ssh provider"):
            parse_hosts(bad)
    with pytest.raises(ConfigError, match="unknown option"):
        SshSettings.from_options({"hosts": ["n1"], "colour": "red"})
    with pytest.raises(ConfigError, match="give hosts"):
        SshSettings.from_options({})
    with pytest.raises(ConfigError, match="not a file"):
        SshSettings.from_options({"hosts": ["n1"], "ssh_config": "/nonexistent/config"})


def test_up_runs_a_job_on_all_three_hosts_and_down_leaves_nothing(rig, tmp_path, capsys):
    url = rig.profile(tmp_path, "lab", ["n1*2", "n2*2", "n3*2"])
    code, lines = _cli(capsys, "up", "--profile", "lab")
    assert code == 0, lines
    for name in HOSTS:
        assert any(line.startswith(f"{name}: 2 worker(s) started") for line in lines), lines
    assert lines[-1].startswith("6 worker(s) on 3 of 3 host(s)")
    code, lines = _cli(capsys, "up", "--profile", "lab")  # again: nothing more is started
    assert code == 0 and "n2: 2 worker(s) already running (`down` stops them)" in lines
    _ready_workers(url, 6)
    with cl.Executor(profile="lab") as ex:  # no workers of its own: `up` started them
        job = ex.map_job(_task, range(300), chunksize=5)
        assert job.results(timeout=120) == [i * i for i in range(300)]
    seen = _hosts_of(url, job.id)
    assert sorted(seen) == list(range(300))
    assert {h for hs in seen.values() for h in hs} == set(HOSTS)
    code, lines = _cli(capsys, "down", "--profile", "lab")
    assert code == 0 and sorted(lines) == [f"{n}: stopped 2 worker(s)" for n in HOSTS]
    for name in HOSTS:
        wait_for(lambda n=name: not rig.workers_on(n), timeout=15, what=f"no worker on {name}")
    with open_backend(url) as b:
        assert b.store.list("clusters/lab/ssh/") == []
        assert len(b.store.list(keys.WORKERS)) == 0  # they stopped cleanly (SIGTERM, not -9)


def test_a_host_dies_mid_job_every_result_exactly_once(rig, tmp_path, capsys):
    url = rig.profile(tmp_path, "kill", ["n1*2", "n2*2", "n3*2"])
    code, lines = _cli(capsys, "up", "--profile", "kill")
    assert code == 0, lines
    _ready_workers(url, 6)
    try:
        with cl.Executor(profile="kill") as ex:
            job = ex.map_job(_task, range(300), chunksize=5)
            wait_for(lambda: job.status().done >= 30, timeout=60, what="some progress")
            wait_for(lambda: _busy_on(url, "n2"), timeout=30, what="a task running on n2")
            rig.hosts["n2"].kill_all()  # its workers and its sshd, mid-task
            assert job.status().done < 300, "the job finished before the host died"
            assert job.results(timeout=120) == [i * i for i in range(300)]
            assert sorted(job.outcomes()) == list(range(300))
        seen = _hosts_of(url, job.id)
        assert sorted(seen) == list(range(300))
        assert {h for hs in seen.values() for h in hs} <= set(HOSTS)
        assert not rig.workers_on("n2")
    finally:
        rig.restart_sshd("n2")
    code, lines = _cli(capsys, "down", "--profile", "kill")
    assert "n2: stopped 0 worker(s)" in lines and "n1: stopped 2 worker(s)" in lines
    for name in HOSTS:
        wait_for(lambda n=name: not rig.workers_on(n), timeout=15, what=f"no worker on {name}")


def test_failed_hosts_get_one_line_each_and_the_job_runs_on_the_rest(rig, tmp_path, capsys):
    url = rig.profile(tmp_path, "part", ["n1*2", "dead", "badkey", "n3*2"])
    t = time.monotonic()
    code, lines = _cli(capsys, "up", "--profile", "part")
    assert code == 0
    assert time.monotonic() - t < 60
    dead = [line for line in lines if line.startswith("dead:")]
    bad = [line for line in lines if line.startswith("badkey:")]
    assert len(dead) == 1 and "FAILED: unreachable" in dead[0] and "\n" not in dead[0]
    assert len(bad) == 1 and "FAILED: auth refused" in bad[0] and "Permission denied" in bad[0]
    assert lines[-1].startswith("4 worker(s) on 2 of 4 host(s)")
    _ready_workers(url, 4)
    with cl.Executor(profile="part") as ex:
        job = ex.map_job(_task, range(100), chunksize=5)
        assert job.results(timeout=120) == [i * i for i in range(100)]
    assert {h for hs in _hosts_of(url, job.id).values() for h in hs} == {"n1", "n3"}
    code, lines = _cli(capsys, "down", "--profile", "part")
    assert "n1: stopped 2 worker(s)" in lines and "n3: stopped 2 worker(s)" in lines
    assert code == 1 and any(line.startswith("dead: FAILED") for line in lines)


def test_no_python_or_an_install_error_is_reported(rig, tmp_path, capsys):
    rig.profile(tmp_path, "nopy", ["n2"], python="/nonexistent/python3")
    code, lines = _cli(capsys, "up", "--profile", "nopy")
    assert code == 1
    assert lines[0].startswith("n2: FAILED: no Python") and "python = a path" in lines[0]
    rig.profile(tmp_path, "noinst", ["n2"], dir="/proc/cloudloop")  # nothing can be written there
    code, lines = _cli(capsys, "up", "--profile", "noinst")
    assert code == 1
    assert lines[0].startswith("n2: FAILED: could not install cloudloop: ") and "mkdir" in lines[0]


def test_executor_starts_workers_through_the_provider_and_stops_them(rig, tmp_path, capsys):
    url = rig.profile(tmp_path, "ex", ["n1", "dead", "n3"])
    with cl.Executor(profile="ex", workers=4) as ex:
        assert "dead: FAILED: unreachable" in capsys.readouterr().err
        job = ex.map_job(_task, range(60), chunksize=5)
        assert job.results(timeout=120) == [i * i for i in range(60)]
        assert ex._pool.alive() == 3  # n1: 2, n3: 1 (dead's share is lost, and said so)
    for name in ("n1", "n3"):
        wait_for(lambda n=name: not rig.workers_on(n), timeout=15, what=f"no worker on {name}")
    with open_backend(url) as b:
        assert b.store.list("clusters/ex/ssh/") == []


def test_a_backend_the_hosts_cannot_reach_is_one_line_per_host(rig, tmp_path, capsys):
    loopback = rs.RedisServer(tmp_path / "redis")  # this machine reaches it; the hosts do not
    try:
        rig.profile(tmp_path, "far", ["n1", "n3"], url=loopback.url())
        code, lines = _cli(capsys, "up", "--profile", "far")
        assert code == 1
        for name in ("n1", "n3"):
            (line,) = [x for x in lines if x.startswith(f"{name}:")]
            assert line.startswith(f"{name}: FAILED: cannot use the backend from there: ")
            assert f"ConnectionFailed: cannot reach Redis at 127.0.0.1:{loopback.port}/0" in line
            assert not rig.workers_on(name)
    finally:
        loopback.stop()


def test_worker_shares_and_failure_reasons():
    assert _shares([None, 8, 2], None) == [None, 8, 2]
    assert _shares([1, 1, 1], 4) == [2, 1, 1]
    assert _shares([None, 6, 2], 9) == [1, 6, 2]
    assert sum(_shares([3, 1], 7)) == 7
    refused = "root@n1: Permission denied (publickey).\n"
    assert _why(refused, 255) == "auth refused: root@n1: Permission denied (publickey)."
    down = "ssh: connect to host 10.0.0.9 port 22: No route to host\n"
    assert _why(down, 255).startswith("unreachable: ssh: connect to host 10.0.0.9")
    assert _why("", 3) == "exit status 3"


def test_index_first_then_wheels_when_the_host_has_no_index(rig):
    """A released cloudloop is tried from the host's index; the lab has none: wheels follow."""
    settings = SshSettings.from_options(
        {"hosts": ["n3*1"], "ssh_config": str(rig.ssh_config), "dir": ".cloudloop-idx",
         "python": os.path.realpath(sys._base_executable), "connect_timeout": 3}
    )  # fmt: skip
    cluster = SshCluster(settings, rig.redis.url(prefix="idx"), WorkerOptions(lease=3), "idx")
    cluster.released = True  # as if this cloudloop had been installed from an index
    (report,) = cluster.start_workers()
    assert not report.error, report
    assert (
        str(report)
        == f"n3: 1 worker(s) started (cloudloop {cl.__version__} installed from wheels copied over)"
    )
    assert cluster.stop() == ["n3: stopped 1 worker(s)"]
