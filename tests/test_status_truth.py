"""What a user sees of a job is true: counts that say how many failed, a running count
that sees tasks shorter than a heartbeat and is 0 once the job has finished, and a
bad job id that is JobNotFound at every entry point."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
import redis_server as rs

import cloudloop as cl
from cloudloop.cli import main as cli_main
from cloudloop.dashboard import DashboardServer
from cloudloop.display import ProgressBar, job_html
from cloudloop.errors import JobNotFound
from cloudloop.model import JobState, JobStatus
from cloudloop.report import write_report

try:
    from playwright.sync_api import expect
except ImportError:  # pragma: no cover - the browser fixture says what to install
    expect = None

BAD_IDS = ["job 20261201-120000-abcdef", "../x", "", "a" * 200, "x/y", "jöb-ü", "20261201 x"]


def _sleepy(i: int) -> int:
    import time

    time.sleep(1.0)
    if i % 5 == 4:
        raise ValueError(i)
    return i


@pytest.fixture(params=["sqlite", "redis"])
def any_url(request, tmp_path):
    if request.param == "sqlite":
        yield "sqlite://" + str(tmp_path / "backend")
    else:
        rs.require()
        server = rs.RedisServer(tmp_path / "redis")
        yield server.url()
        server.stop()


def _st(state: JobState, done: int, failed: int, running: int = 0) -> JobStatus:
    return JobStatus("j1", "grid", state, 30, done, failed, running, 2, 0.0, 21.0, 1.5, None)


@pytest.mark.parametrize(
    ("st", "shown", "absent"),
    [
        (_st(JobState.FAILED, 30, 4), "26 ok · 4 failed of 30", "30/30"),
        (_st(JobState.COMPLETED, 30, 0), "30 ok of 30", "workers"),
        (_st(JobState.RUNNING, 10, 1, 2), "9 ok · 1 failed of 30", "10/30"),
    ],
)
def test_counts_are_unambiguous(st, shown, absent):
    assert st.succeeded == st.done - st.failed
    for text in (str(st), ProgressBar().line(st)):
        assert shown in text and absent not in text, text
    html = job_html(st)
    assert f"{st.succeeded} ok" in html and f"{st.done}/" not in html
    if st.state.finished:
        line = ProgressBar().line(st)
        assert "worker" not in line and f"{st.state.value} in 0:21" in line


def test_running_is_seen_and_zero_when_finished(any_url, capsys):
    """1 s tasks on 2 workers with a 5 s heartbeat: seen running while they run."""
    with cl.Executor(backend=any_url, workers=2, heartbeat=5.0) as ex:
        job = ex.map_job(_sleepy, range(10), chunksize=1)
        seen = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            st = job.status()
            if st.state.finished:
                break
            if st.done >= 1:  # a worker has started; its record said so at once
                seen = max(seen, st.running)
            time.sleep(0.2)
        assert seen >= 1
        job.wait(timeout=60)
        st = job.status()
        assert st.state is JobState.FAILED and st.running == 0
        assert (st.succeeded, st.failed, st.done) == (8, 2, 10)
        assert "8 ok · 2 failed of 10" in str(st) and "running" not in str(st)
        capsys.readouterr()
        assert cli_main(["status", job.id, "--backend", any_url, "--json"]) == 0
        data = json.loads(capsys.readouterr().out)
        assert (data["done"], data["failed"], data["succeeded"], data["running"]) == (10, 2, 8, 0)
        assert cli_main(["status", "--backend", any_url]) == 0
        out = capsys.readouterr().out
        assert re.search(r"OK\s+FAILED\s+OF", out) and re.search(r"\b8\s+2\s+10\b", out)


def test_dashboard_sees_short_tasks_running(tmp_path, browser):
    url = "sqlite://" + str(tmp_path / "backend")
    with cl.Executor(backend=url, workers=2, heartbeat=5.0) as ex:
        job = ex.map_job(_sleepy, range(16), chunksize=1)
        server = DashboardServer(ex.backend, port=0, job_every=0.3)
        server.start()
        try:
            page = browser.new_page()
            page.goto(server.url + f"#/job/{job.id}")
            page.wait_for_selector("#progress-text", timeout=30_000)
            seen_running = seen_busy = 0
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not (seen_running and seen_busy):
                n = page.locator(".stat.run .n").text_content() or "0"
                seen_running = max(seen_running, int(n) if n.isdigit() else 0)
                busy = page.locator("#workers tr.worker-row .dot.busy").count()
                seen_busy = max(seen_busy, busy)
                time.sleep(0.3)
            assert seen_running >= 1 and seen_busy >= 1
            job.wait(timeout=60)
            expect(page.locator("#progress-counts")).to_contain_text(
                "finished (13 ok, 3 failed)", timeout=30_000
            )
        finally:
            server.shutdown()
            server.server_close()


def test_throughput_leaves_out_the_bucket_in_progress():
    from cloudloop.dashboard.view import _throughput

    class Ended:
        def __init__(self, t):
            self.ended = t

    tasks = [Ended(100.0 + k * 0.5) for k in range(200)]  # 2 a second over 100 s
    live = _throughput(tasks, 100.0, 200.2, finished=False)
    assert min(live["rates"]) > 1.0 and live["rates"][-1] > 1.0  # no dip at the right edge
    done = _throughput(tasks, 100.0, 200.0, finished=True)
    assert done["rates"][-1] > 1.0


@pytest.mark.parametrize("bad", BAD_IDS)
def test_bad_job_id_is_job_not_found_everywhere(url, bad, capsys):
    with cl.Executor(backend=url, workers=0) as ex:
        with pytest.raises(JobNotFound):
            cl.attach(bad, backend=url)
        with pytest.raises(JobNotFound):
            ex.attach(bad)
        for cmd in (["status", bad], ["logs", bad], ["results", bad], ["cancel", bad]):
            capsys.readouterr()
            assert cli_main([*cmd, "--backend", url]) != 0
            err = capsys.readouterr().err
            assert "cloudloop: error:" in err and "Traceback" not in err, (cmd, err)
            assert "invalid store key" not in err
        with pytest.raises(JobNotFound):
            write_report(ex.backend, bad, "report.html")
        if not bad:  # /api/jobs/ is the list of jobs
            return
        server = DashboardServer(ex.backend, port=0)
        server.start()
        try:
            base, _, query = server.url.partition("?")
            api = f"{base.rstrip('/')}/api/jobs/{urllib.parse.quote(bad, safe='')}?{query}"
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(api, timeout=10)
            assert info.value.code == 404
            assert "invalid store key" not in info.value.read().decode()
        finally:
            server.shutdown()
            server.server_close()
