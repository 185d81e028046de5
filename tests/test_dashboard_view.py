"""What the dashboard reads from the store: bounded however often it is polled; costs; the CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter

import pytest

from cloudloop import keys
from cloudloop.backends import open_backend
from cloudloop.cli import main as cli_main
from cloudloop.dashboard import DashboardView
from cloudloop.dashboard.boots import SHOWN


def _square(i: int) -> int:
    print(f"squaring {i}")
    if i == 2:
        raise KeyError("two")
    return i * i


class CountingStore:
    """Wraps a Store and counts the calls that cost money on S3."""

    def __init__(self, inner):
        self.inner = inner
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if name in ("list", "get", "get_or_none", "exists", "put", "delete"):

            def counted(*a, **kw):
                self.calls[name] += 1
                return attr(*a, **kw)

            return counted
        return attr


@pytest.fixture
def finished_job(make_executor):
    ex = make_executor(workers=1)
    job = ex.map_job(_square, range(6), chunksize=2, name="squares")
    job.wait(timeout=60)
    return job


def test_polling_is_bounded_and_reads_each_blob_once(url, finished_job):
    backend = open_backend(url)
    store = backend.store = CountingStore(backend.store)
    view = DashboardView(backend, job_every=3600, list_every=3600, cost_every=3600)
    for _ in range(50):  # fifty polls of the jobs page and the job page
        rows = view.jobs()
        jv = view.job(finished_job.id)
        jv.refresh(view.job_every)
        snap = jv.snapshot()
    assert [r["id"] for r in rows] == [finished_job.id]
    assert rows[0]["state"] == "failed" and rows[0]["done"] == 6 and rows[0]["cost"] is None
    assert snap["failed"] == 1 and snap["failures"][0]["type"] == "KeyError"
    assert sum(snap["throughput"]["rates"]) > 0
    # index/, results/, workers/ and clusters/ listed once each; 3 result parts read once
    assert store.calls["list"] <= 5, store.calls
    assert store.calls["get"] + store.calls["get_or_none"] <= 12, store.calls

    before = store.calls.copy()
    for _ in range(20):
        text = jv.log(2, interval=3600)
    assert "squaring 2" in text and "KeyError" in text
    assert jv.log(4, interval=3600) == "squaring 4\n"
    assert store.calls["list"] - before["list"] == 1  # a finished job's logs are listed once
    log_gets = store.calls["get_or_none"] - before["get_or_none"]
    assert 1 <= log_gets <= 3  # only the segments holding tasks 2 and 4, each once


def test_jobs_list_shows_cluster_cost_from_the_ledger(url, finished_job):
    backend = open_backend(url)
    st = finished_job.status()
    record = {"id": "i-0abc", "type": "c7a.large", "zone": "eu-west-1a", "market": "spot",
              "price": 36.0, "launched": st.created - 100, "ended": None}  # fmt: skip
    backend.put_record("clusters/aws/instances/i-0abc", record)  # signed, as the cluster does
    row = DashboardView(backend).jobs()[0]
    # $36/h over the job's elapsed seconds: the job's share of the cluster's bill
    assert row["cost"] == pytest.approx(36.0 * st.elapsed / 3600, rel=0.05)


def test_boots_share_the_clusters_listing_and_are_reread_only_while_booting(url):
    backend = open_backend(url)
    now = time.time()

    def boot(instance, *phases, **fields):
        record = {"instance": instance, "phases": [list(p) for p in phases], **fields}
        backend.put_record(keys.boot("fleet", instance), record)

    boot("i-failed", ("launched", now - 100, ""), ("failed", now - 90, ""), failed="no python")
    boot("i-ready", ("launched", now - 300, ""), ("workers", now - 200, ""))
    boot("i-gone", ("launched", now - 400, ""), ("workers", now - 390, ""))
    boot("i-new", ("launched", now - 20, ""), ("workers", now - 10, ""))
    boot("i-booting", ("launched", now - 10, ""), ("started", now - 5, ""))
    boot("i-silent", ("launched", now - 1000, ""))  # past the boot deadline, never a word
    boot("i-stalled", ("launched", now - 2000, ""), ("environment", now - 1900, "pip"))
    backend.put_record(keys.boots_reset("fleet"), {"at": now})  # not a boot
    backend.put_record(keys.worker("w-1"), {"id": "w-1", "instance": "i-ready", "last_seen": now,
                                            "every": 60.0, "python": "3.11"})  # fmt: skip
    backend.put_record("clusters/fleet/instances/i-ready", {
        "id": "i-ready", "type": "c7a.large", "zone": "eu-west-1a", "market": "spot",
        "price": 0.05, "launched": now - 300, "ended": None})  # fmt: skip
    store = backend.store = CountingStore(backend.store)
    view = DashboardView(backend, job_every=3600, list_every=3600, cost_every=3600)
    for _ in range(50):  # fifty polls
        (cluster,) = view.boots()
        view._ledger_records()
    assert store.calls["list"] == 2, store.calls  # clusters/ once, for boots and costs; workers/
    assert store.calls["get_or_none"] == 7 + 1 + 1, store.calls  # boots, the heartbeat, the ledger
    assert cluster["cluster"] == "fleet" and cluster["total"] == 7
    states = {b["instance"]: (b["state"], b["words"]) for b in cluster["boots"]}
    assert [b["instance"] for b in cluster["boots"]] == [
        "i-booting",
        "i-new",
        "i-failed",
        "i-ready",
        "i-gone",
        "i-silent",
        "i-stalled",
    ]
    assert states["i-failed"] == ("failed", "boot failed after 0:10: no python")
    assert states["i-ready"][0] == "ready"  # a live worker on it
    assert states["i-new"][0] == "ready"  # workers 10 s ago: its first heartbeat may lag
    assert states["i-gone"] == ("ended", "workers started 0:10 after launch; ended")
    assert states["i-booting"] == ("booting", "booting for 0:10: started")
    assert states["i-silent"][0] == "failed" and "never reported: launched 16:4" in states[
        "i-silent"][1]  # fmt: skip
    assert states["i-stalled"][0] == "failed"
    assert states["i-stalled"][1].startswith("no word since phase 'environment', 31:4")
    assert all(b["log"] == [] for b in cluster["boots"])

    # listed again: only the records that are still booting are read again
    view.list_every = 0
    boot(
        "i-booting",
        ("launched", now - 10, ""),
        ("failed", now - 2, ""),
        failed="pip failed",
        log="Collecting x\nERROR: no x",
    )
    before = store.calls.copy()
    (cluster,) = view.boots()
    assert store.calls["list"] - before["list"] == 1
    assert store.calls["get_or_none"] - before["get_or_none"] == 3  # booting, silent, stalled
    first = cluster["boots"][0]
    assert (first["instance"], first["state"]) == ("i-booting", "failed")
    assert first["log"] == ["Collecting x", "ERROR: no x"]
    before = store.calls.copy()
    view.boots()
    assert store.calls["get_or_none"] - before["get_or_none"] == 2  # a failed boot is final

    # a big cluster: its newest boots shown, and only those re-read
    for k in range(SHOWN + 5):
        rec = {"instance": f"i-{k:03d}", "phases": [["launched", now - 60 + k, ""]]}
        backend.put_record(keys.boot("big", f"i-{k:03d}"), rec)
    view.boots()
    before = store.calls.copy()
    big, _ = view.boots()  # the cluster with the latest launch first
    assert big["total"] == SHOWN + 5 and len(big["boots"]) == SHOWN
    assert big["boots"][0]["instance"] == f"i-{SHOWN + 4:03d}"
    assert store.calls["get_or_none"] - before["get_or_none"] == SHOWN + 2


def test_dashboard_command_prints_a_token_url_and_warns_when_open(url, finished_job):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cloudloop",
            "dashboard",
            "--backend",
            url,
            "--port",
            "0",
            "--host",
            "0.0.0.0",
        ],  # fmt: skip
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        lines = [proc.stdout.readline(), proc.stdout.readline()]
        m = re.search(r"(http://127\.0\.0\.1:\d+/)\?token=(\S+)", "".join(lines))
        assert m, lines
        base, token = m.groups()
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(base + "api/jobs", timeout=10)
        assert e.value.code == 403
        with urllib.request.urlopen(f"{base}api/jobs?token={token}", timeout=10) as r:
            assert finished_job.id in r.read().decode()
        with urllib.request.urlopen(f"{base}?token={token}", timeout=10) as r:
            page = r.read().decode()
            assert "static/app.js" in page
            assert "HttpOnly" in r.headers["Set-Cookie"]
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert "warning: the dashboard listens on 0.0.0.0" in err


def test_report_command_default_name(url, finished_job, tmp_path):
    assert cli_main(["report", "--backend", url, finished_job.id]) == 0
    html = (tmp_path / f"{finished_job.id}.html").read_text()
    assert '<script type="application/json" id="cloudloop-snapshot">' in html
    assert "KeyError" in html
    assert not re.search(r"(src|href)=\"(?!data:|#)", html)


def test_jobs_list_shows_the_newest_jobs_only(url, finished_job):
    backend = open_backend(url)
    for day in range(1, 6):  # older jobs whose data is gone: listed as unreadable
        backend.store.put(f"index/2020010{day}-000000-00000{day}", b"{}")
    view = DashboardView(backend)
    rows = view.jobs(limit=3)
    assert view.job_count == 6
    assert [r["id"] for r in rows] == [finished_job.id, "20200105-000000-000005",
                                       "20200104-000000-000004"]  # fmt: skip
    assert rows[0]["state"] == "failed" and rows[1]["state"] == "unreadable"
    assert "not on backend" in rows[1]["error"]
    store = backend.store = CountingStore(backend.store)
    assert [r["state"] for r in view.jobs(limit=3)] == ["failed", "unreadable", "unreadable"]
    assert sum(store.calls.values()) == 0  # neither the finished job nor the broken ones re-read


def test_worker_rows_carry_machine_and_task_progress(url, make_executor):
    ex = make_executor(workers=0)  # nobody serves the queue: the job stays unfinished
    job = ex.map_job(_square, range(3), name="waiting")
    record = {"id": "ip-10-0-0-7-311-ab12", "host": "ip-10-0-0-7", "provider": "ec2",
              "instance_type": "c7a.large", "market": "spot", "state": "busy",
              "job": job.id, "task": 1, "progress": 0.4, "message": "epoch 4",
              "tasks_done": 12, "last_seen": time.time(), "rss": 123_000_000, "load": 1.5}  # fmt: skip
    ex.backend.put_record("workers/ip-10-0-0-7-311-ab12", record)  # signed, as a worker does
    snap = DashboardView(ex.backend).job(job.id).snapshot()
    assert (snap["state"], snap["running"], snap["pending"]) == ("running", 1, 2)
    (row,) = snap["workers"]
    assert row["live"] and (row["task"], row["progress"], row["message"]) == (1, 0.4, "epoch 4")
    assert (row["provider"], row["instance_type"], row["market"]) == ("ec2", "c7a.large", "spot")
    assert (row["rss"], row["load"]) == (123_000_000, 1.5)
    (task,) = [t for t in snap["tasks"] if t["state"] == "running"]
    assert (task["i"], task["worker"], task["message"]) == (1, record["id"], "epoch 4")

    # a worker that ran nothing of this job and is now on another job is not one of its rows
    record["job"], record["task"] = "some-other-job", 0
    ex.backend.put_record("workers/ip-10-0-0-7-311-ab12", record)
    snap = DashboardView(ex.backend).job(job.id).snapshot()
    assert snap["workers"] == [] and snap["running"] == 0


def test_dashboard_on_a_busy_port_says_so(url, capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli_main(["dashboard", "--backend", url, "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_a_boot_a_client_stopped_shows_as_stopped_not_failed():
    import time

    from cloudloop.dashboard.boots import outcome
    from cloudloop.providers.boots import BootRecord

    now = time.time()
    r = BootRecord.from_dict({"instance": "i-x", "stopped": "cloudloop down",
                              "phases": [["launched", now - 2000, ""],
                                         ["ended", now - 1990, "stopped by cloudloop down"]]})  # fmt: skip
    state, words = outcome(r, set(), now)
    assert state == "stopped" and "stopped by cloudloop down" in words
