"""``cloudloop report JOB -o report.html``: one self-contained HTML file about a job.

The file is the dashboard's own page with its CSS, its JavaScript and one
snapshot of the job (every task, every failure with its traceback, the logs of
failed tasks, per-worker timeline) inlined, so it renders the same charts with
no server and no network: it can be mailed, attached to a ticket or served as
a static page. Nothing in it points outside the file.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from .backends import Backend
from .dashboard import DashboardView, static_file

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
    css = static_file("style.css").decode()
    js = static_file("app.js").decode()
    icon = base64.b64encode(static_file("logo.svg")).decode()
    # "</" cannot end the script element early once escaped; JSON stays valid
    data = json.dumps(snapshot, default=str).replace("</", "<\\/")
    replacements = {
        '<link rel="icon" href="static/logo.svg">': (
            f'<link rel="icon" href="data:image/svg+xml;base64,{icon}">'
        ),
        '<link rel="stylesheet" href="static/style.css">': f"<style>\n{css}</style>",
        '<script src="static/app.js"></script>': (
            f"<script>window.CLOUDLOOP_SNAPSHOT = {data};</script>\n<script>\n{js}</script>"
        ),
        "<title>cloudloop</title>": f"<title>{_html(snapshot['name'])} · cloudloop report</title>",
    }
    for old, new in replacements.items():
        if old not in page:
            raise RuntimeError(f"dashboard page has changed: {old!r} not found")
        page = page.replace(old, new)
    return page


def write_report(backend: Backend, job_id: str, path: str | Path) -> Path:
    """Write the report of ``job_id`` to ``path``; returns the path."""
    path = Path(path)
    path.write_text(render_report(job_snapshot(backend, job_id)), encoding="utf-8")
    return path


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
