"""The cluster contract every provider keeps (``cloudloop up/ls/down``), run against each.

Parametrised from the provider registry, as the backend suites are from the
backend registry: a provider registered without a world here fails the
suite instead of being skipped. Each world is real: local workers on this
machine; ssh workers on two hosts (network namespaces with their own sshd)
that install cloudloop from wheels shipped over ssh; ec2 instances of the
cloud-in-a-box that boot their real user-data.

One world per provider serves the module's tests (starting machines is the
slow part), and the tests run in file order against it.
"""

from __future__ import annotations

import contextlib
import math
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import wait_for

import cloudloop as cl
from cloudloop.model import WorkerOptions
from cloudloop.providers import REGISTRY, Cluster, Report, Unsupported, get_provider

FAST = WorkerOptions(lease=5.0, heartbeat=0.5)


World = tuple[Cluster, Callable[[], Cluster]]  # the cluster, and a new handle on it


@contextlib.contextmanager
def _local(tmp: Path) -> Iterator[World]:
    url = "sqlite://" + str(tmp / "backend")
    name = f"contract-{secrets.token_hex(3)}"
    provider = get_provider("local", {}, name)
    cluster = provider.cluster(url, FAST)
    try:
        yield cluster, lambda: provider.cluster(url, FAST)
    finally:
        cluster.down()


@contextlib.contextmanager
def _ssh(tmp: Path) -> Iterator[World]:
    import sshlab

    sshlab.require()
    rig = sshlab.LabRig(tmp)
    try:
        url = rig.redis.url(prefix=f"c{secrets.token_hex(3)}")
        options = {"hosts": ["n1*1", "n2*1"], "ssh_config": str(rig.ssh_config),
                   "connect_timeout": 3, "python": sshlab.host_python()}  # fmt: skip
        provider = get_provider("ssh", options, "contract")
        cluster = provider.cluster(url, FAST)
        try:
            yield cluster, lambda: provider.cluster(url, FAST)
        finally:
            cluster.down()
    finally:
        rig.close()


@contextlib.contextmanager
def _ec2(tmp: Path) -> Iterator[World]:
    from world_ec2 import ec2_world

    with ec2_world(tmp) as cluster:
        s = cluster.settings
        yield cluster, lambda: type(cluster)(cluster.url, s, cluster.worker, cluster.profile)


WORLDS = {"local": _local, "ssh": _ssh, "ec2": _ec2}


@pytest.fixture(scope="module", params=sorted(REGISTRY))
def world(request, tmp_path_factory) -> Iterator[World]:
    name = request.param
    if name not in WORLDS:
        pytest.fail(f"provider {name!r} is registered but has no world in the contract suite")
    with WORLDS[name](tmp_path_factory.mktemp(f"provider-{name}")) as w:
        yield w


@pytest.fixture
def cluster(world) -> Cluster:
    return world[0]


def _square(x):
    time.sleep(0.01)
    return x * x


def _lines_ok(report: Report) -> None:
    assert isinstance(report, Report) and report.ok, report
    assert all(isinstance(line, str) and line for line in report.lines)


def test_a_fresh_cluster_has_no_workers_and_down_is_harmless(cluster):
    assert cluster.workers() == []
    _lines_ok(cluster.down())
    _lines_ok(cluster.ls())


def test_up_starts_workers_that_serve_the_backend_and_carry_the_clusters_name(cluster):
    _lines_ok(cluster.up(2))
    live = wait_for(lambda: len(cluster.workers()) >= 2 and cluster.workers(), timeout=240,
                    interval=0.5, what="two workers of the cluster")  # fmt: skip
    assert {w.cluster for w in live} == {cluster.name}
    with cl.Executor(backend=cluster.url, workers=0) as ex:
        assert list(ex.map(_square, range(40))) == [x * x for x in range(40)]
    ls = cluster.ls()
    _lines_ok(ls)
    assert ls.lines[-1]  # a summary line, whatever the provider lists above it


def test_pause_holds_new_work_and_resume_lets_it_run(cluster):
    cluster.pause()
    try:
        assert cluster.paused()
        # a worker sees the flag within two heartbeats, once its current wait for work ends
        time.sleep(2 * FAST.heartbeat + cluster.backend.idle_wait + 1)
        with cl.Executor(backend=cluster.url, workers=0) as ex:
            job = ex.map_job(_square, range(4))
            time.sleep(2 * FAST.heartbeat + cluster.backend.idle_wait + 1)
            assert job.status().done == 0  # the workers took nothing while paused
            cluster.resume()
            assert not cluster.paused()
            assert job.results(timeout=120) == [0, 1, 4, 9]
    finally:
        cluster.resume()


def test_capabilities_either_work_or_refuse_in_one_line(cluster):
    caps = cluster.capabilities()
    assert caps <= set(Cluster.OPTIONAL)
    for name in set(Cluster.OPTIONAL) - caps:
        with pytest.raises(Unsupported, match=cluster.name):
            if name == "cost":
                cluster.cost()
            elif name == "job_cost":
                cluster.job_cost(time.time() - 60, None, None)
            elif name == "init":
                cluster.init()
            else:
                cluster.follow(1.0, True, print)
    if "cost" in caps:
        spent, burn = cluster.cost()
        assert math.isfinite(spent) and spent >= 0 and math.isfinite(burn) and burn >= 0
    if "job_cost" in caps:
        assert "cost" in cluster.job_cost(time.time() - 60, None, None)


def test_down_stops_every_worker_from_a_new_handle_and_twice(world):
    cluster, handle = world
    fresh = handle()  # as another client, later, sees the cluster
    assert fresh.name == cluster.name
    _lines_ok(fresh.down())
    wait_for(lambda: cluster.workers() == [], timeout=120, interval=0.5,
             what="every worker of the cluster gone")  # fmt: skip
    _lines_ok(fresh.down())
    assert cluster.workers() == []
