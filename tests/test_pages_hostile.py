"""The dashboard and the static report show hostile text as text, in real Chromium.

Everything a page shows was written by someone else: the job's name and its
tasks' arguments and output by the user's code, exception types and messages
by whatever the code raised, heartbeat records by other machines. Here every
one of those fields carries markup that would run script if it were inserted
as HTML (``<img onerror>``, a quote that closes an attribute, ``</script>``,
``<!--<script>``, a ``javascript:`` URL, U+2028), and each page is checked to:

* run nothing (``window.__pwned`` stays undefined) and grow no element
  (no ``img``, no ``script`` beyond the page's own, no ``on*`` attribute,
  no ``javascript:`` link);
* show the hostile text where it belongs, as text, and still render: jobs
  list, job page, workers, failures with tracebacks, the log panel;
* carry its Content-Security-Policy (a header live, a ``<meta>`` in the
  report), with no violation reported for the app's own code.

The boots of ec2 instances (``clusters/<cluster>/boots/<instance>``) are
written by the instances themselves: a validly signed one carries markup in
every field, its phases and its log, and one forged with another key, one
stored unsigned, one signed for another key and one of the wrong types must
not be shown at all.

Each page is looked at twice: with the policy enforced, and with it bypassed
(``bypass_csp``), so the escaping is shown to hold on its own and the policy
to be a second wall, not the only one.
"""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
import time
import urllib.request
from html.parser import HTMLParser

import pytest

import cloudloop as cl
from cloudloop import codec, keys
from cloudloop.cli import main as cli_main
from cloudloop.dashboard import DashboardServer
from cloudloop.dashboard.server import CSP
from cloudloop.dashboard.view import _worker_row, page_json
from cloudloop.display import job_html
from cloudloop.model import JobState, JobStatus, WorkerRecord
from cloudloop.report import render_report

PWN = "window.__pwned=1"
HOSTILE = [
    f"<img src=x onerror={PWN}>",
    f'"><script>{PWN}</script>',
    "<!--<script>",
    f"</script><script>{PWN}</script>",
    f"javascript:{PWN}",
    f"' onmouseover='{PWN}' x='",
    "line\u2028separator\u2029paragraph",
]
NAME = f"grid <img src=x onerror={PWN}> </script><!--<script>"
WAITING = f'waiting "><svg onload={PWN}>'
TYPE_MODULE = f"<img src=x onerror={PWN}>"
TYPE_NAME = "\"><svg onload=self['__pwned']=1>"  # no dot: the page shows the last dotted part
HOST = f"host<img src=x onerror={PWN}>"
PROVIDER = f"<script>{PWN}</script>"


def _hostile_task(i: int, text: str) -> int:
    print(f"arg {i}: {text}", flush=True)
    if i % 2 == 0:
        bad = type("Bad", (Exception,), {"__module__": TYPE_MODULE})
        bad.__qualname__ = TYPE_NAME
        raise bad(f"failed on {text}")
    return i


def _noop(i: int) -> int:
    return i


def _hostile_workers(backend, job_id: str) -> dict[str, dict]:
    """Heartbeat records as another machine could write them (signed: it holds the key)."""
    now = time.time()
    base = {"pid": 4242, "version": "0", "started": now - 60, "last_seen": now, "every": 1.0,
            "job": job_id, "tasks_done": 3, "failures": 0, "rss": 5_000_000, "load": 0.5}  # fmt: skip
    records = {
        # well-typed, hostile text in every text field: shown, as text
        "busy": {**base, "id": f'w1"><img src=x onerror={PWN}>', "host": HOST,
                 "provider": PROVIDER, "instance_type": f"<b>{HOSTILE[3]}</b>",
                 "market": HOSTILE[1], "state": "busy", "task": 1, "progress": 0.5,
                 "message": HOSTILE[0] + HOSTILE[6], "error": f"disk full {HOSTILE[2]}"},
        "odd state": {**base, "id": "w2-odd-state", "host": "plain-host", "state": HOSTILE[5],
                      "task": 2, "message": HOSTILE[4]},
        # wrong types: rejected by the record's checks, never shown, page unharmed
        "wrong types": {**base, "id": "w3-wrong-types", "host": "typed-wrong",
                        "task": f"<img src=x onerror={PWN}>", "load": "high",
                        "progress": "50%", "state": "busy"},
    }  # fmt: skip
    for rec in records.values():  # store keys are plain names; what a record says is not
        backend.put_record(keys.worker(keys.safe_name(rec["id"])), rec)
    # and one that is not signed at all: a forgery by someone with store access only
    forged = {**base, "id": "w4-forged", "host": "forged-host", "state": "busy", "task": 0}
    backend.store.put(keys.worker("w4-forged"), codec.encode_json(forged))
    return records


BOOT_ID = f"<img src=x onerror={PWN}>"  # 36 characters: a record keeps 64
BOOT_FAILED = f'no python <script>{PWN}</script> on "><svg onload={PWN}>'
BOOT_LOG = [*HOSTILE[:6], f"</pre><img src=x onerror={PWN}>", "<!-- the end -->"]
BOOT_DETAIL = f"<b onmouseover={PWN}>pip</b>"


def _hostile_boots(backend) -> None:
    """Boot records as an instance could write them (signed: its profile holds the key),
    and four that a page must never show."""
    now = time.time()
    base = {"config": HOSTILE[2], "image": HOSTILE[3], "type": HOSTILE[1], "market": HOSTILE[0]}
    backend.put_record(keys.boot("hostile", "i-0failed"), {
        **base, "instance": BOOT_ID, "failed": BOOT_FAILED, "log": "\n".join(BOOT_LOG),
        "phases": [["launched", now - 60, HOSTILE[5]], ["started", now - 50, HOSTILE[0]],
                   ["failed", now - 40, HOSTILE[1]]],
    })  # fmt: skip
    backend.put_record(keys.boot("hostile", "i-0booting"), {
        **base, "instance": "i-0booting" + HOSTILE[1][:40],
        "phases": [["launched", now - 30, ""], ["environment", now - 20, BOOT_DETAIL]],
    })  # fmt: skip
    hidden = {"phases": [["launched", now, ""]], "failed": "forged reason"}
    other = codec.encode_record(b"k" * 32, keys.boot("hostile", "i-0otherkey"),
                                {**hidden, "instance": "i-0otherkey"})  # fmt: skip
    backend.store.put(keys.boot("hostile", "i-0otherkey"), other)
    unsigned = codec.encode_json({**hidden, "instance": "i-0unsigned"})
    backend.store.put(keys.boot("hostile", "i-0unsigned"), unsigned)
    elsewhere = codec.encode_record(backend.key, keys.boot("hostile", "i-0elsewhere"),
                                    {**hidden, "instance": "i-0copied"})  # fmt: skip
    backend.store.put(keys.boot("hostile", "i-0copied"), elsewhere)
    backend.put_record(
        keys.boot("hostile", "i-0typed"),
        {**hidden, "instance": "i-0typed", "phases": [["launched", "<img>", ""]]},
    )


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A finished job whose every field is hostile, a waiting one with hostile worker
    records, its dashboard, and the finished job's report."""
    base = tmp_path_factory.mktemp("hostile")
    url = "sqlite://" + str(base / "backend")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLOUDLOOP_HOST", HOST)  # what local workers call their machine
        with cl.Executor(backend=url, workers=1, lease=5, heartbeat=0.5) as ex:
            done = ex.map_job(_hostile_task, range(len(HOSTILE)), HOSTILE, name=NAME)
            done.wait(timeout=120)
    ex2 = cl.Executor(backend=url, workers=0)  # nobody serves it: it stays unfinished
    waiting = ex2.map_job(_noop, range(3), name=WAITING)
    records = _hostile_workers(ex2.backend, waiting.id)
    _hostile_boots(ex2.backend)
    report = base / "report.html"
    assert cli_main(["report", "--backend", url, done.id, "-o", str(report)]) == 0
    server = DashboardServer(ex2.backend, port=0, job_every=0.2, groups=lambda: GROUPS)
    server.start()
    yield {"url": url, "done": done, "waiting": waiting, "records": records,
           "server": server, "report": report}  # fmt: skip
    server.shutdown()
    server.server_close()
    ex2.shutdown(wait=False, cancel_futures=True)


GROUP_NAME = "cloudloop-" + HOSTILE[0]
GROUPS = [
    {
        "group": GROUP_NAME, "cluster": HOSTILE[1], "desired": 2, "min": 0, "max": "<b>9</b>",
        "in_service": 1, "suspended": True,
        "alarms": [{"name": HOSTILE[2], "state": HOSTILE[3], "actions": False}, "not a dict"],
        "scheduled": [{"name": HOSTILE[4], "max": 0, "at": "not a time"}],
        "activities": [
            {"at": 1796140000.0, "status": HOSTILE[5], "text": HOSTILE[6], "why": HOSTILE[0]},
            {"at": None, "status": None, "text": 7, "why": ["x"]},
        ],
    },
    {"error": HOSTILE[1]},  # a group AWS would not describe
]  # fmt: skip


def _page(browser, csp: str):
    """A page recording script errors, CSP violations and any request that leaves."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900},
                              bypass_csp=csp == "bypassed")  # fmt: skip
    page = ctx.new_page()
    seen: dict[str, list[str]] = {"outside": [], "errors": [], "csp": []}

    def guard(route):
        u = route.request.url
        if u.startswith(("http://127.0.0.1:", "file://", "data:")):
            route.continue_()
        else:
            seen["outside"].append(u)
            route.abort()

    page.route("**/*", guard)
    page.on("pageerror", lambda e: seen["errors"].append(str(e)))
    page.on("console", lambda m: "Content Security Policy" in m.text and seen["csp"].append(m.text))
    page.add_init_script(
        "document.addEventListener('securitypolicyviolation', (e) =>"
        " (window.__violations = window.__violations || []).push(e.violatedDirective));"
    )
    return ctx, page, seen


_INJECTED = """() => ({
  pwned: typeof window.__pwned,
  imgs: document.querySelectorAll("img").length,
  scripts: document.scripts.length,
  handlers: [...document.querySelectorAll("*")].flatMap((el) =>
    [...el.attributes].filter((a) => a.name.startsWith("on")).map((a) => el.tagName + " " + a.name)),
  jsLinks: [...document.querySelectorAll("[href], [src], [action]")].map((el) =>
    el.getAttribute("href") || el.getAttribute("src") || el.getAttribute("action"))
    .filter((u) => /^\\s*javascript:/i.test(u)),
  violations: window.__violations || [],
})"""


def _assert_clean(page, seen, scripts: int, csp: str) -> None:
    got = page.evaluate(_INJECTED)
    assert got["pwned"] == "undefined", got
    assert got["imgs"] == 0 and got["handlers"] == [] and got["jsLinks"] == [], got
    assert got["scripts"] == scripts, got  # only the page's own
    assert seen["errors"] == [] and seen["outside"] == [], seen
    if csp == "enforced":  # nothing of the app's own was refused, and nothing else was tried
        assert got["violations"] == [] and seen["csp"] == [], (got, seen)


def _text(page, selector: str) -> str:
    return page.locator(selector).first.text_content() or ""


CSPS = ["enforced", "bypassed"]


@pytest.mark.parametrize("csp", CSPS)
def test_live_dashboard_shows_hostile_fields_as_text(hostile, browser, csp):
    from playwright.sync_api import expect

    server, done, waiting = hostile["server"], hostile["done"], hostile["waiting"]
    ctx, page, seen = _page(browser, csp)
    resp = page.goto(server.url)
    assert resp.headers["content-security-policy"] == CSP

    # the jobs list: both hostile names, as text
    expect(page.locator("#jobs tr.job-row")).to_have_count(2)
    rows = page.locator("#jobs").text_content()
    assert NAME in rows and WAITING in rows
    _assert_clean(page, seen, 1, csp)

    # the finished job: title, failures (type, message, traceback), tasks, log panel
    page.locator(f"#jobs tr.job-row[data-job='{done.id}']").click()
    expect(page.locator("#job-state")).to_have_text("failed")
    assert _text(page, "h1") == NAME
    assert page.title() == f"{NAME} · cloudloop"
    failures = page.locator("#failures details.failure")
    expect(failures).to_have_count(4)  # tasks 0, 2, 4, 6
    for k, i in enumerate(range(0, len(HOSTILE), 2)):
        summary = failures.nth(k).locator("summary").text_content()
        assert f"{TYPE_NAME}: failed on {HOSTILE[i]}" in summary
        assert HOST in summary
        tb = failures.nth(k).locator("pre.traceback").text_content()
        assert f"failed on {HOSTILE[i]}" in tb and "_hostile_task" in tb
    tasks = page.locator("#tasks tr.task-row")
    expect(tasks).to_have_count(len(HOSTILE))
    assert HOST in tasks.first.text_content()
    assert HOST[:20] in _text(page, "svg.chart[aria-label='per-worker timeline']")
    for i in (1, 4, 6):  # a task's log, as the task printed it
        page.locator(f"#tasks tr.task-row[data-task='{i}']").click()
        expect(page.locator("#log-text")).to_contain_text(f"arg {i}: ")
        assert f"arg {i}: {HOSTILE[i]}\n" in _text(page, "#log-text")
    _assert_clean(page, seen, 1, csp)

    # the waiting job: worker records from "other machines"
    page.goto(server.url + f"#/job/{waiting.id}")
    busy = page.locator("#workers tr.worker-row", has_text="task 1")
    busy.wait_for()
    rec = hostile["records"]["busy"]
    text = busy.text_content()
    for field in ("host", "provider", "instance_type", "message", "error", "id"):
        assert rec[field] in text, field
    assert "on-demand" in text  # a market that is not "spot"
    assert busy.get_attribute("data-worker") == rec["id"]
    assert busy.locator(".bar.mini .ok").evaluate("el => el.style.width") == "50%"
    odd = page.locator("#workers tr.worker-row[data-worker='w2-odd-state']")
    assert HOSTILE[5][:20] in odd.text_content()  # a state is a word: cut to 20 characters
    workers = page.locator("#workers").text_content()
    assert "typed-wrong" not in workers and "forged-host" not in workers
    assert page.locator("#workers tr.worker-row").count() == 2
    # what keeps the job from finishing (job.status().problems): a worker's trouble, as text
    assert f"worker {rec['id']}: {rec['error']}" in _text(page, "#problems")
    assert _text(page, "h1") == WAITING
    _assert_clean(page, seen, 1, csp)
    ctx.close()


@pytest.mark.parametrize("csp", CSPS)
def test_boots_show_hostile_fields_as_text(hostile, browser, csp):
    from playwright.sync_api import expect

    server, waiting = hostile["server"], hostile["waiting"]
    ctx, page, seen = _page(browser, csp)
    for route in ("", f"#/job/{waiting.id}"):  # the jobs list and a job page both show them
        page.goto(server.url + route)
        rows = page.locator("#boots-card tr.boot-row")
        expect(rows).to_have_count(2)  # the forged, unsigned, copied and ill-typed: not shown
        failed = page.locator("#boots-card tr.boot-row", has_text="boot failed")
        assert failed.get_attribute("data-instance") == BOOT_ID
        text = failed.text_content()
        for shown in (BOOT_ID, HOSTILE[3], HOSTILE[1], HOSTILE[0], BOOT_FAILED):
            assert shown in text, shown
        assert f"boot failed after 0:20: {BOOT_FAILED}" in text
        assert _text(page, "#boots-card pre.bootlog").splitlines() == BOOT_LOG
        booting = page.locator("#boots-card tr.boot-row", has_text="booting for")
        assert f"environment ({BOOT_DETAIL})" in booting.text_content()
        assert "i-0booting" + HOSTILE[1][:40] in booting.text_content()
        card = page.locator("#boots-card").text_content()
        for hidden in ("i-0otherkey", "i-0unsigned", "i-0copied", "i-0typed", "forged reason"):
            assert hidden not in card, hidden
        _assert_clean(page, seen, 1, csp)
    ctx.close()


@pytest.mark.parametrize("csp", CSPS)
def test_the_auto_scaling_group_shows_awss_words_as_text(hostile, browser, csp):
    from playwright.sync_api import expect

    server = hostile["server"]
    ctx, page, seen = _page(browser, csp)
    page.goto(server.url)
    card = page.locator("#group-card")
    expect(card.locator("tr.group-activity")).to_have_count(2)
    text = card.text_content()
    for shown in (GROUP_NAME, HOSTILE[2], HOSTILE[3], HOSTILE[4], HOSTILE[5], HOSTILE[6],
                  HOSTILE[0], HOSTILE[1], "(actions off)", "launching stopped"):  # fmt: skip
        assert shown in text, shown
    assert "desired 2, in service 1, min 0, max ?" in text  # a max that is not a number
    assert card.locator("[data-group]").first.get_attribute("data-group") == GROUP_NAME
    _assert_clean(page, seen, 1, csp)
    ctx.close()


def test_api_sends_the_policy_and_never_nan(hostile):
    server = hostile["server"]
    base, token = server.url.split("?token=")
    for path in ("", "static/app.js", "api/jobs", f"api/jobs/{hostile['waiting'].id}",
                 "api/boots"):  # fmt: skip
        req = urllib.request.Request(base + path, headers={"X-Cloudloop-Token": token})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.headers["Content-Security-Policy"] == CSP, path
            body = r.read().decode()
        if path.startswith("api/"):
            json.loads(body, parse_constant=lambda c, p=path: pytest.fail(f"{p} sent {c}"))
    for directive in ("default-src 'none'", "script-src 'self'", "style-src 'self'",
                      "connect-src 'self'", "frame-ancestors 'none'", "base-uri 'none'"):  # fmt: skip
        assert directive in CSP
    assert "unsafe" not in CSP


@pytest.mark.parametrize("csp", CSPS)
def test_report_shows_hostile_fields_as_text(hostile, browser, csp):
    from playwright.sync_api import expect

    done = hostile["done"]
    ctx, page, seen = _page(browser, csp)
    page.goto(hostile["report"].as_uri())
    expect(page.locator("#progress-text")).to_have_text(f"{len(HOSTILE)} / {len(HOSTILE)}")
    policy = page.locator('meta[http-equiv="Content-Security-Policy"]').get_attribute("content")
    assert "script-src 'sha256-" in policy and "connect-src 'none'" in policy
    assert "default-src 'none'" in policy and "unsafe" not in policy
    assert _text(page, "h1") == NAME and page.title() == f"{NAME} · cloudloop report"
    assert _text(page, "#job-state") == "failed" and done.id in _text(page, ".title")
    failures = page.locator("#failures details.failure")
    expect(failures).to_have_count(4)
    for k, i in enumerate(range(0, len(HOSTILE), 2)):
        assert f"failed on {HOSTILE[i]}" in failures.nth(k).locator("pre.traceback").text_content()
        failures.nth(k).locator("button.tasklink").click()  # the log kept in the file
        assert _text(page, "#log-text").startswith(f"arg {i}: {HOSTILE[i]}\n")
    expect(page.locator("#tasks tr.task-row")).to_have_count(len(HOSTILE))
    assert page.locator(".bar.big .ok").evaluate("el => el.style.width") != ""
    _assert_clean(page, seen, 2, csp)  # the snapshot's data block and app.js
    ctx.close()


ALL = " ".join(HOSTILE)


def _wrong_types(text: str = ALL) -> tuple[list[dict], dict]:
    """A jobs list and a job snapshot in which every value, numbers too, is ``text``:
    what the page must survive if a reader upstream ever let anything through."""
    every = lambda *names: dict.fromkeys(names, text)  # noqa: E731
    worker = every("id", "host", "provider", "instance_type", "market", "state", "task",
                   "progress", "message", "error", "tasks_done", "last_seen", "rss", "load",
                   "pid", "done_job", "failed_job", "first", "last", "live")  # fmt: skip
    task = every("i", "state", "worker", "host", "started", "ended", "attempt", "error",
                 "progress", "message")  # fmt: skip
    snap = every("id", "name", "state", "total", "done", "failed", "running", "pending",
                 "workers_live", "created", "elapsed", "rate", "eta", "ended_at", "now",
                 "kind", "command", "client", "backend", "cost")  # fmt: skip
    snap.update({
        "throughput": {**every("t0", "span", "step"), "rates": [text, 1, 2]},
        "grid": every("per", "cells"),
        "workers": [worker, {**worker, "state": "busy", "live": True},
                    {**worker, "live": False}],
        "timeline": {**every("t0", "t1"),
                     "rows": [{"worker": text, "host": text, "segs": [[text, text, text], text]}]},
        "tasks": [task, {**task, "state": "running"}, {**task, "i": 0}],
        "failures": [every("i", "type", "message", "traceback", "attempt", "worker", "host"),
                     {**every("type", "message", "traceback", "attempt", "host"), "i": 0}],
        "logs": {text: text, "0": text},
    })  # fmt: skip
    jobs = [every("id", "name", "state", "total", "done", "failed", "running", "created",
                  "elapsed", "eta", "cost"),
            {"id": text, "name": "", "state": "unreadable", "error": text}]  # fmt: skip
    return jobs, snap


def _wrong_boots(text: str = ALL) -> dict:
    """The boots as /api/boots could send them if every value were ``text``."""
    boot = dict.fromkeys(("instance", "type", "market", "image", "state", "words", "launched",
                          "last", "log"), text)  # fmt: skip
    boots = [boot, {**boot, "state": "failed", "log": [text, 5, None, {"x": text}]}, text, None]
    return {"clusters": [{"cluster": text, "total": text, "boots": boots}, text, None]}


def _fake_api(page, jobs: list[dict], snap: dict) -> None:
    """Answer the page's API calls with ``jobs`` and ``snap`` (and the boots of
    :func:`_wrong_boots`) instead of the server's."""

    def answer(route):
        path = route.request.url.split("?")[0]
        if path.endswith("/api/jobs"):
            body = {"backend": ALL, "jobs": jobs, "count": ALL}
        elif path.endswith("/api/boots"):
            body = _wrong_boots()
        elif "/logs/" in path:
            body = {"task": 0, "text": ALL}
        else:
            body = snap
        route.fulfill(status=200, content_type="application/json", body=json.dumps(body))

    page.route(re.compile(r"/api/"), answer)  # registered last: asked before the guard


@pytest.mark.parametrize("csp", CSPS)
def test_live_page_survives_values_of_the_wrong_type(hostile, browser, csp):
    from playwright.sync_api import expect

    jobs, snap = _wrong_types()
    ctx, page, seen = _page(browser, csp)
    _fake_api(page, jobs, snap)
    page.goto(hostile["server"].url)
    expect(page.locator("#jobs tr")).to_have_count(3)  # the head and both rows
    assert ALL in page.locator("#jobs").text_content()
    assert _text(page, "#backend") == ALL
    expect(page.locator("#boots-card tr.boot-row")).to_have_count(4)
    assert ALL in _text(page, "#boots-card h3") and ALL in _text(page, "#boots-card pre.bootlog")
    _assert_clean(page, seen, 1, csp)
    page.goto(hostile["server"].url + "#/job/x")
    expect(page.locator("h1")).to_have_text(ALL)
    assert page.locator("#workers tr.worker-row").count() == 3
    assert page.locator("#tasks tr.task-row").count() == 3
    page.locator("#tasks tr.task-row[data-task='0']").click()
    expect(page.locator("#log-text")).to_have_text(ALL)
    assert ALL in _text(page, "#failures")
    _assert_clean(page, seen, 1, csp)
    ctx.close()


@pytest.mark.parametrize("csp", CSPS)
def test_report_survives_values_of_the_wrong_type(browser, csp, tmp_path):
    from playwright.sync_api import expect

    out = tmp_path / "report.html"
    out.write_text(render_report(_wrong_types()[1]), encoding="utf-8")
    ctx, page, seen = _page(browser, csp)
    page.goto(out.as_uri())
    expect(page.locator("h1")).to_have_text(ALL)
    assert page.locator("#tasks tr.task-row").count() == 3
    page.locator("#failures button.tasklink[data-task='0']").click()
    expect(page.locator("#log-text")).to_have_text(ALL)
    _assert_clean(page, seen, 2, csp)
    ctx.close()


# ------------------------------------------------------------------ without a browser


def _snapshot(text: str) -> dict:
    """A report snapshot with ``text`` in every string field."""
    return {"id": "20260101-000000-000000", "name": text, "state": "failed", "total": 1,
            "done": 1, "failed": 1, "running": 0, "pending": 0, "workers_live": 0,
            "created": 1.0, "elapsed": 2.0, "rate": float("nan"), "eta": None,
            "ended_at": 3.0, "now": 3.0, "kind": "python", "command": text, "client": text,
            "backend": text, "cost": None,
            "throughput": {"t0": 1.0, "span": 2.0, "step": 1.0, "rates": [0.5, float("inf")]},
            "grid": {"per": 1, "cells": text}, "workers": [],
            "timeline": {"t0": 1.0, "t1": 3.0, "rows": []},
            "tasks": [{"i": 0, "state": text, "worker": text, "host": text, "started": 1.0,
                       "ended": 2.0, "attempt": 1, "error": text}],
            "failures": [{"i": 0, "type": text, "message": text, "traceback": text,
                          "attempt": 1, "worker": text, "host": text}],
            "logs": {0: text}}  # fmt: skip


class _Elements(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


@pytest.mark.parametrize("text", HOSTILE + [NAME, "&lt;b&gt; & \\u003c"])
def test_report_keeps_the_snapshot_in_an_inert_data_block(text):
    page = render_report(_snapshot(text))
    parsed = _Elements()
    parsed.feed(page)
    scripts = [attrs for tag, attrs in parsed.tags if tag == "script"]
    assert scripts == [{"type": "application/json", "id": "cloudloop-snapshot"}, {}]
    start = page.index('id="cloudloop-snapshot">') + len('id="cloudloop-snapshot">')
    data = page[start : page.index("</script>", start)]
    assert not set("<>&\u2028\u2029") & set(data)
    back = json.loads(data)
    assert back["name"] == text and back["logs"]["0"] == text
    assert back["rate"] is None and back["throughput"]["rates"] == [0.5, None]
    assert f"<title>{html.escape(text)} · cloudloop report</title>" in page


REFUSED = object()  # the record as a whole is not believed: no row at all


def _row(rec, now=None):
    """A heartbeat record as the pages get it: decoded as every reader decodes it
    (:func:`cloudloop.heartbeat.worker_records`), then cut to what a page shows."""
    try:
        record = WorkerRecord.from_dict(rec)
    except ValueError:
        return REFUSED
    return _worker_row(record, now=now)


@pytest.mark.parametrize(
    ("field", "value", "shown"),
    [
        ("task", f"<img src=x onerror={PWN}>", REFUSED),
        ("task", -1, None),
        ("task", 2.5, REFUSED),
        ("task", True, REFUSED),
        ("task", 7, 7),
        ("load", "high", REFUSED),
        ("load", float("nan"), REFUSED),
        ("load", float("inf"), REFUSED),
        ("load", -1.0, None),
        ("load", 1.25, 1.25),
        ("progress", 3.0, 1.0),
        ("progress", "50%", REFUSED),
        ("rss", [1], REFUSED),
        ("tasks_done", {"n": 1}, REFUSED),
        ("last_seen", "yesterday", REFUSED),
        ("host", 12, REFUSED),
        ("host", "h" * 500, "h" * 200),
        ("provider", "p" * 500, "p" * 40),
        ("message", None, ""),
        ("message", HOSTILE[0], HOSTILE[0]),
        ("message", "\x1b[2Jgone", "?[2Jgone"),
        ("state", ["busy"], REFUSED),
    ],
)
def test_worker_row_keeps_each_field_of_its_type(field, value, shown):
    row = _row({"id": "w-1", "host": "h", "last_seen": 100.0, "task": 1, field: value}, 101.0)
    if shown is REFUSED:
        assert row is REFUSED
        return
    assert row[field] == shown
    assert set(row) >= {"id", "host", "task", "progress", "load", "rss", "live"}
    assert "backend" not in row  # a worker's own account of its backend URL is not shown


@pytest.mark.parametrize("rec", [None, [], "x", {}, {"id": 5}, {"id": ""}, {"host": "h"}])
def test_worker_row_without_an_id_is_dropped(rec):
    assert _row(rec) in (None, REFUSED)


def test_a_stale_or_timeless_worker_is_not_live():
    assert _row({"id": "w", "last_seen": 100.0}, now=200.0)["live"] is False
    assert _row({"id": "w"}, now=200.0)["live"] is False
    assert _row({"id": "w", "last_seen": "now"}, now=200.0) is REFUSED
    assert _row({"id": "w", "last_seen": 100.0, "every": 60}, now=200.0)["live"] is True


def test_page_json_never_sends_nan():
    assert (
        page_json({"a": float("nan"), "b": [float("-inf"), 1.5]}) == '{"a": null, "b": [null, 1.5]}'
    )


@pytest.mark.parametrize("text", HOSTILE)
def test_notebook_card_escapes(text):
    st = JobStatus(text, text, JobState.RUNNING, 10, 4, 1, 2, 2, 0.0, 5.0, float("nan"), None)
    card = job_html(st, backend=text)
    parsed = _Elements()
    parsed.feed(card)
    assert {tag for tag, _ in parsed.tags} <= {"div", "b", "code", "span"}
    assert all(set(attrs) <= {"style"} for _, attrs in parsed.tags)
    assert html.escape(text) in card and "width:30.00%" in card


@pytest.mark.parametrize("port", ["99999", "65536", "-1", "http", "8o80", ""])
def test_dashboard_port_out_of_range_is_one_line(port, tmp_path):
    backend_dir = tmp_path / "never-made"
    proc = subprocess.run(
        [sys.executable, "-m", "cloudloop", "dashboard", "--backend",
         f"sqlite://{backend_dir}", "--port", port],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cloudloop: error: --port"), proc.stderr
    assert "65535" in lines[0] and "Traceback" not in proc.stderr
    assert proc.stdout == "" and not backend_dir.exists()
