"""The dashboard in a real headless Chromium (Debian's, driven by Playwright).

One job runs on a SQLite backend with two local workers: tasks 0-5 print, report
``cl.progress`` and finish (task 3 raises); tasks 6-11 wait for a gate file, so
the page is looked at while the job is really running, without a race: the
test opens the gate only after it has seen the running state in the browser
(and a running task's log tailed live); tasks 12+ then finish the job.

The page runs under its own Content-Security-Policy (no 'unsafe-eval'), so waits use
Playwright's locators, never ``wait_for_function`` (which evaluates a string in the page).
"""

from __future__ import annotations

import os
import re
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import cloudloop as cl
from cloudloop import keys
from cloudloop.cli import main as cli_main
from cloudloop.dashboard import DashboardServer
from cloudloop.providers.boots import Boots

try:
    from playwright.sync_api import expect
except ImportError:  # pragma: no cover - the browser fixture says what to install
    expect = None

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
N_TASKS = 40


def _task(i: int, gate: str) -> int:
    import time

    import cloudloop as cl

    print(f"task {i} starting", flush=True)
    cl.progress(0.25, "warming up")
    time.sleep(0.05)
    if i == 3:
        raise ValueError(f"bad input {i}")
    if i >= 12:  # the tail of the job: tasks of a few sizes
        time.sleep(0.05 * (1 + i % 4))
    elif i >= 6:
        deadline = time.monotonic() + 120
        while not os.path.exists(gate) and time.monotonic() < deadline:
            cl.progress(0.5, "waiting for the gate")
            time.sleep(0.1)
        for k in range(3):
            cl.progress(0.6 + 0.1 * k, f"step {k + 1} of 3")
            time.sleep(0.1)
    print(f"task {i} done", flush=True)
    return i * i


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """A job half done and held at a gate, with its executor, backend URL and dashboard."""
    base = tmp_path_factory.mktemp("dash")
    url = "sqlite://" + str(base / "backend")
    gate = str(base / "gate")
    ex = cl.Executor(backend=url, workers=2, lease=5, heartbeat=0.5)
    job = ex.map_job(_task, range(N_TASKS), [gate] * N_TASKS, chunksize=1, name="svm grid")
    server = DashboardServer(ex.backend, port=0, job_every=0.3)
    server.start()
    yield {"ex": ex, "job": job, "url": url, "gate": gate, "server": server, "base": base}
    Path(gate).touch()
    server.shutdown()
    server.server_close()
    ex.shutdown(wait=False, cancel_futures=True)
    if ex._pool is not None:
        ex._pool.stop(timeout=5)


def _page(browser):
    """A page whose every request must go to 127.0.0.1 (others are aborted and recorded,
    as are script errors and CSP violations)."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    outside: list[str] = []

    def guard(route):
        u = route.request.url
        if u.startswith(("http://127.0.0.1:", "file://", "data:")):
            route.continue_()
        else:
            outside.append(u)
            route.abort()

    page.route("**/*", guard)
    page.on("pageerror", lambda e: outside.append(f"script error: {e}"))
    # the page's own code must need nothing its Content-Security-Policy refuses
    page.on("console", lambda m: "Content Security Policy" in m.text and outside.append(m.text))
    return page, outside


def test_wrong_or_missing_token_is_refused(running):
    server = running["server"]
    base = server.url.split("?")[0]
    for path in ("", "?token=nope", "api/jobs", "api/jobs?token=" + server.token[:-1] + "x",
                 "static/app.js"):  # fmt: skip
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(base + path, timeout=10)
        assert e.value.code == 403, path
    with urllib.request.urlopen(base + "api/jobs?token=" + server.token, timeout=10) as r:
        assert r.status == 200


def test_live_job_page_updates_without_reload(running, browser):
    server, job = running["server"], running["job"]
    page, outside = _page(browser)
    resp = page.goto(server.url.replace("?token=", "?token=wrong"))
    assert resp.status == 403

    # the jobs list
    page.goto(server.url)
    page.wait_for_selector("#jobs tr.job-row")
    row = page.locator("#jobs tr.job-row").first
    assert "svm grid" in row.inner_text()
    assert job.id in row.inner_text()

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-jobs.png"))
    page.goto(server.url + "#/job/19990101-000000-000000")
    page.wait_for_selector("text=Not found")
    assert "is not on backend" in page.locator("main").inner_text()
    page.goto(server.url)
    row = page.locator("#jobs tr.job-row").first
    row.wait_for()

    # one job, while it runs: six tasks settled, workers held at the gate
    row.click()
    page.wait_for_selector("#progress-text")
    page.evaluate("window.__same_page = 1")  # gone if the page reloads
    expect(page.locator("#progress-text")).to_have_text(re.compile(r"^6 /"), timeout=60_000)
    busy = page.locator("#workers tr.worker-row", has_text="waiting for the gate")
    busy.first.wait_for(timeout=30_000)
    assert page.locator("#workers tr.worker-row").count() >= 2
    assert "%" in busy.first.inner_text()
    assert page.locator("#job-state").text_content() == "running"
    # a running task's log, tailed while it runs (workers stream logs every ~2 s)
    page.locator("#tasks tr.task-row[data-task='6']").click()
    expect(page.locator("#log-text")).to_contain_text("task 6 starting", timeout=30_000)
    assert "task 6 done" not in page.locator("#log-text").inner_text()
    page.screenshot(path=str(ARTIFACTS / "dashboard-job-running.png"), full_page=True)

    Path(running["gate"]).touch()
    # the running tasks now step through progress messages, then the job completes
    expect(page.locator("#progress-text")).to_have_text(re.compile(f"^{N_TASKS} /"), timeout=60_000)
    expect(page.locator("#job-state")).to_have_text("failed")
    # the open log followed the task to its end, without a click
    expect(page.locator("#log-text")).to_contain_text("task 6 done", timeout=30_000)
    assert page.locator("#log-text").inner_text().count("task 6 starting") == 1
    assert page.evaluate("window.__same_page") == 1
    assert page.locator("#workers tr.worker-row .done-here").count() >= 2
    python = f"{sys.version_info.major}.{sys.version_info.minor}"  # what local workers run
    expect(page.locator("#workers tr.worker-row td.python").first).to_have_text(python)

    # the failing task's remote traceback, with the user's own source line
    failure = page.locator("#failures details.failure").first
    assert "ValueError: bad input 3" in failure.inner_text()
    failure.locator("summary").click(position={"x": 5, "y": 5})
    tb = failure.locator("pre.traceback")
    tb.wait_for()
    assert 'raise ValueError(f"bad input {i}")' in tb.inner_text()
    assert "test_dashboard.py" in tb.inner_text()

    # a task's log, from the task table
    page.locator("#tasks tr.task-row[data-task='7']").click()
    expect(page.locator("#log-text")).to_contain_text("task 7 done", timeout=30_000)
    assert "task 7 starting" in page.locator("#log-text").inner_text()
    # the throughput chart has a drawn series
    assert page.locator("svg.chart[aria-label='throughput over time'] path").count() == 2
    page.locator("#tasks tr.task-row[data-task='3']").click()
    expect(page.locator("#log-text")).to_contain_text("task 3 starting")
    page.evaluate("window.scrollTo(0, 0); document.querySelector('.scroll').scrollTop = 0")
    page.screenshot(path=str(ARTIFACTS / "dashboard-job.png"), full_page=True)
    assert outside == []
    page.close()


def test_report_is_self_contained_and_renders(running, browser, tmp_path):
    Path(running["gate"]).touch()
    job = running["job"]
    job.wait(timeout=60)
    out = tmp_path / "report.html"
    assert cli_main(["report", "--backend", running["url"], job.id, "-o", str(out)]) == 0
    html = out.read_text()
    assert "http://" not in html and "https://" not in html
    assert "bad input 3" in html
    page, outside = _page(browser)
    page.goto(out.as_uri())
    page.wait_for_selector("#progress-text")
    assert page.locator("#progress-text").inner_text().startswith(f"{N_TASKS} /")
    assert page.locator("svg.chart").count() == 2  # throughput and per-worker timeline
    assert page.locator("svg.chart[aria-label='per-worker timeline'] rect").count() >= 4
    assert page.locator("#tasks tr.task-row").count() == N_TASKS
    assert "ValueError: bad input 3" in page.locator("#failures").inner_text()
    page.locator("#failures button.tasklink[data-task='3']").click()  # the log kept in the file
    assert "task 3 starting" in page.locator("#log-text").inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
    assert [u for u in outside if not u.startswith("file://")] == []
    page.close()


CLUSTER = "spot-fleet"
NO_PYTHON = ("no python3.11 on ami-0old (python3 is 3.9) and its package manager could not "
             "install it: set image = or python = in the profile")  # fmt: skip
BOOT_LOG = [f"step {k}: dnf install python3.11" for k in range(30)] + ["No match for argument"]


def _boot(backend, instance: str, phases: list, **fields) -> None:
    """An instance's own account of its boot (signed: its profile holds the key)."""
    record = {"instance": instance, "config": "c1", "image": "ami-0old", "type": "c7a.large",
              "market": "spot", "phases": phases, **fields}  # fmt: skip
    backend.put_record(keys.boot(CLUSTER, instance), record)


def test_boots_and_worker_pythons_on_the_page(browser, tmp_path):
    """The Boots card, from boot records as launcher and instances write them, and an ec2
    worker's Python; a boot that fails while the page is open shows why, without a reload."""
    now = time.time()
    ex = cl.Executor(backend="sqlite://" + str(tmp_path / "backend"), workers=0)
    try:
        job = ex.map_job(abs, range(3), name="on the fleet")  # nobody local serves it
        backend = ex.backend
        boots = Boots(backend, CLUSTER)
        boots.launched("i-0fail", "c1", "ami-0old", "c7a.large", "spot")  # the launcher
        _boot(
            backend,
            "i-0fail",
            [
                ["launched", now - 120, ""],
                ["started", now - 100, ""],
                ["failed", now - 79, NO_PYTHON],
            ],
            failed=NO_PYTHON,
            log="\n".join(BOOT_LOG),
        )
        _boot(
            backend,
            "i-0ready",
            [
                ["launched", now - 300, ""],
                ["started", now - 280, ""],
                ["python", now - 270, "/usr/bin/python3.11 (Python 3.11)"],
                ["environment", now - 240, "installed in 30 s"],
                ["workers", now - 230, "2 worker(s) started 50 s after boot"],
            ],
        )
        _boot(
            backend,
            "i-0silent",
            [["launched", now - 1200, ""]],
            type="m7i.large",
            market="on-demand",
        )  # launched 20 minutes ago and never heard from
        boots.launched("i-0slow", "c1", "ami-0new", "c7a.xlarge", "spot")
        _boot(
            backend,
            "i-0slow",
            [["launched", now - 30, ""], ["started", now - 20, ""]],
            image="ami-0new",
            type="c7a.xlarge",
        )
        backend.put_record(keys.worker("w-ec2-1"), {
            "id": "w-ec2-1", "host": "ip-10-0-0-7", "provider": "ec2", "instance": "i-0ready",
            "instance_type": "c7a.large", "market": "spot", "python": "3.11",
            "cluster": CLUSTER, "state": "busy", "job": job.id, "task": 1, "started": now - 200,
            "last_seen": now, "every": 60.0, "message": "on the fleet",
        })  # fmt: skip
        server = DashboardServer(backend, port=0, job_every=0.3)
        server.view.list_every = 0.3  # clusters/ re-listed quickly, to watch a boot change
        server.start()
        try:
            page, outside = _page(browser)
            page.goto(server.url)
            card = page.locator("#boots-card")
            rows = card.locator("tr.boot-row")
            expect(rows).to_have_count(4)
            assert CLUSTER in card.locator("h3").inner_text()
            # newest launch first
            order = [rows.nth(k).get_attribute("data-instance") for k in range(4)]
            assert order == ["i-0slow", "i-0fail", "i-0ready", "i-0silent"]
            failed = card.locator("tr.boot-row[data-instance='i-0fail']")
            assert "c7a.large" in failed.inner_text() and "spot" in failed.inner_text()
            assert failed.locator(".pill").inner_text().lower() == "failed"
            assert (
                f"boot failed after 0:41: {NO_PYTHON}" in failed.locator(".boot-words").inner_text()
            )
            tail = card.locator("pre.bootlog").first.inner_text()  # the record keeps the last 20
            assert tail.splitlines() == BOOT_LOG[-20:]
            ready = card.locator("tr.boot-row[data-instance='i-0ready']")
            assert ready.locator(".pill").inner_text().lower() == "ready"
            assert "workers started 1:10 after launch" in ready.inner_text()
            silent = card.locator("tr.boot-row[data-instance='i-0silent']")
            assert silent.locator(".pill").inner_text().lower() == "failed"
            assert "never reported: launched 20:0" in silent.inner_text()
            assert "on-demand" in silent.inner_text()
            slow = card.locator("tr.boot-row[data-instance='i-0slow']")
            assert slow.locator(".pill").inner_text().lower() == "booting"
            assert "booting for 0:" in slow.inner_text() and "ami-0new" in slow.inner_text()
            assert card.locator("pre.bootlog").count() == 1  # logs of failed boots only

            # the job page: the ec2 worker's Python, and the same boots
            page.locator(f"#jobs tr.job-row[data-job='{job.id}']").click()
            worker = page.locator("#workers tr.worker-row[data-worker='w-ec2-1']")
            expect(worker.locator("td.python")).to_have_text("3.11")
            expect(page.locator("#boots-card tr.boot-row")).to_have_count(4)

            # the slow one fails while the page is open
            page.evaluate("window.__same_page = 1")
            _boot(
                backend,
                "i-0slow",
                [
                    ["launched", now - 30, ""],
                    ["started", now - 20, ""],
                    ["failed", now - 5, "environment failed (exit 1)"],
                ],
                failed="environment failed (exit 1; the log's tail is below)",
                image="ami-0new",
                type="c7a.xlarge",
                log="Collecting numpy\nERROR: No matching distribution found for numpy",
            )
            slow = page.locator("#boots-card tr.boot-row[data-instance='i-0slow']")
            expect(slow.locator(".pill")).to_have_text("failed", timeout=30_000)
            assert "boot failed after 0:25: environment failed (exit 1;" in slow.inner_text()
            assert "ami-0new" in slow.inner_text()
            log = page.locator("#boots-card pre.bootlog").first
            expect(log).to_contain_text("ERROR: No matching distribution found for numpy")
            assert log.inner_text().splitlines()[0] == "Collecting numpy"
            assert page.evaluate("window.__same_page") == 1
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "dashboard-boots.png"), full_page=True)
            assert outside == []
            page.close()
        finally:
            server.shutdown()
            server.server_close()
    finally:
        ex.shutdown(wait=False, cancel_futures=True)
