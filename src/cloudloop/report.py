"""``cloudloop report JOB -o report.html``: one self-contained HTML file about a job.

The file is the dashboard's own page with its CSS, its JavaScript and one
snapshot of the job (every task, every failure with its traceback, the logs of
failed tasks, per-worker timeline) inlined, so it renders the same charts with
no server and no network: it can be mailed, attached to a ticket or served as
a static page. Nothing in it points outside the file.

The snapshot holds whatever the job's code printed or raised, so the file
treats it as data, never as code or markup::

    <meta http-equiv="Content-Security-Policy"   script and style only by hash (the
          content="... 'sha256-…' ...">          app.js and style.css blocks below),
                                                  no network, no other script at all
    <style>style.css</style>
    <script type="application/json"             the snapshot: a data block the browser
            id="cloudloop-snapshot">{…}</script>  never runs; every < > & U+2028 U+2029
                                                  in it written as \u003c etc.
    <script>app.js</script>                      reads it with JSON.parse and inserts
                                                  every value as text

So a log line ``</script><script>alert(1)</script>`` or ``<!--<script>``
can neither end the data block nor start a script, and if some value ever
reached the page as markup, the policy would still refuse to run it.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
from pathlib import Path
from typing import Any

from .backends import Backend
from .dashboard import DashboardView, static_file
from .dashboard.view import page_json

_LOGS_KEPT = 50  # failed tasks whose log is embedded
_LOG_CHARS = 64 << 10


def job_snapshot(backend: Backend, job_id: str) -> dict[str, Any]:
    """Everything the report shows about a job, as plain data."""
    view = DashboardView(backend)
    jv = view.job(job_id)
    jv.refresh(0)
    snap = jv.snapshot(all_tasks=True)
    # one listing of the logs, then only the segments holding these tasks
    snap["logs"] = {
        f["i"]: jv.log(f["i"], 3600)[-_LOG_CHARS:] for f in snap["failures"][:_LOGS_KEPT]
    }
    return snap


def render_report(snapshot: dict[str, Any]) -> str:
    """The report's HTML for a snapshot from :func:`job_snapshot`."""
    page = static_file("index.html").decode()
    css = _inline(static_file("style.css").decode(), "style")
    js = _inline(static_file("app.js").decode(), "script")
    icon = base64.b64encode(static_file("logo.svg")).decode()
    csp = (
        f"default-src 'none'; script-src '{_sha256(js)}'; style-src '{_sha256(css)}'; "
        "img-src data:; connect-src 'none'; base-uri 'none'; form-action 'none'"
    )
    replacements = {
        '<meta charset="utf-8">': (
            f'<meta charset="utf-8">\n<meta http-equiv="Content-Security-Policy" content="{csp}">'
        ),
        '<link rel="icon" href="static/logo.svg">': (
            f'<link rel="icon" href="data:image/svg+xml;base64,{icon}">'
        ),
        '<link rel="stylesheet" href="static/style.css">': f"<style>{css}</style>",
        '<script src="static/app.js"></script>': (
            f'<script type="application/json" id="cloudloop-snapshot">{_data(snapshot)}</script>'
            f"\n<script>{js}</script>"
        ),
        "<title>cloudloop</title>": (
            f"<title>{html.escape(str(snapshot.get('name', '')))} · cloudloop report</title>"
        ),
    }
    for old in replacements:
        if page.count(old) != 1:
            raise RuntimeError(f"dashboard page has changed: {old!r} not found once")
    # one pass: text put in by one replacement is never searched for the next
    pattern = re.compile("|".join(map(re.escape, replacements)))
    return pattern.sub(lambda m: replacements[m.group(0)], page)


def write_report(backend: Backend, job_id: str, path: str | Path) -> Path:
    """Write the report of ``job_id`` to ``path``; returns the path."""
    path = Path(path)
    path.write_text(render_report(job_snapshot(backend, job_id)), encoding="utf-8")
    return path


_JSON_IN_HTML = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}


def _data(snapshot: dict[str, Any]) -> str:
    """The snapshot as JSON that cannot end or re-open its <script> element: no < > & left
    (outside strings JSON has none; inside, \\u003c reads back as <), nor U+2028/9."""
    return re.sub("[<>&\u2028\u2029]", lambda m: _JSON_IN_HTML[m.group(0)], page_json(snapshot))


def _inline(text: str, tag: str) -> str:
    """Our own CSS/JS, checked to be safe to put between <tag> and </tag> as is."""
    if re.search(f"</{tag}|<!--", text, re.IGNORECASE):
        raise RuntimeError(f"the dashboard's {tag} contains '</{tag}' or '<!--': cannot inline")
    return text


def _sha256(text: str) -> str:
    """A CSP source for an inline block of exactly ``text``."""
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()
