"""Progress displays: a terminal bar that is also safe in logs, and HTML for notebooks.

On a terminal it redraws one line in place at most ten times a second; when
standard error is a pipe or a file it prints a plain line at most every
30 seconds (and on every 10 % step), so logs get no carriage-return garbage.
In a Jupyter kernel, :func:`progress_display` gives an HTML card updated in
place instead (IPython's ``display(..., display_id=True)``; no widget library).
"""

from __future__ import annotations

import html
import math
import sys
import time
from typing import TextIO

from .model import JobStatus, format_seconds


class ProgressBar:
    def __init__(self, stream: TextIO | None = None, width: int = 30):
        self.stream = stream or sys.stderr
        self.width = width
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last = 0.0
        self._last_step = -1
        self._drawn = False

    def line(self, st: JobStatus) -> str:
        total = st.total
        frac = (st.done / total) if total else 0.0
        filled = int(frac * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        parts = [f"[{bar}] {st.counts()} {frac * 100:5.1f}%"]
        if st.rate > 0:
            parts.append(f"{st.rate:.1f} task/s")
        if st.eta is not None and not st.state.finished:
            parts.append(f"eta {format_seconds(st.eta)}")
        if not st.state.finished:  # once it has finished, who is about says nothing
            parts.append(
                f"{st.running} running on {st.workers} worker{'s' if st.workers != 1 else ''}"
            )
        else:
            parts.append(f"{st.state.value} in {format_seconds(st.elapsed)}")
        return " · ".join(parts)

    def update(self, st: JobStatus, final: bool = False) -> None:
        now = time.monotonic()
        if self.tty:
            if final or now - self._last >= 0.1:
                self.stream.write("\r\x1b[2K" + self.line(st))
                if final:
                    self.stream.write("\n")
                self.stream.flush()
                self._last, self._drawn = now, True
            return
        step = int(10 * st.done / st.total) if st.total else 0
        if final or step != self._last_step or now - self._last >= 30:
            self.stream.write(f"{st.id}: {self.line(st)}\n")
            self.stream.flush()
            self._last, self._last_step = now, step


# ---------------------------------------------------------------- notebooks


def in_notebook() -> bool:
    """True inside a Jupyter (IPython kernel) session, where cell output is HTML."""
    ipython = sys.modules.get("IPython")  # never imported here: only if the user runs it
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:
        return False
    return shell is not None and getattr(shell, "kernel", None) is not None


_STATE_COLOURS = {
    "completed": "#15803d",
    "failed": "#b91c1c",
    "cancelled": "#b45309",
    "running": "#1d4ed8",
}


def job_html(st: JobStatus, backend: str = "") -> str:
    """A job's status as a small self-contained HTML card (inline styles only).

    Every value is escaped (a job's name is the user's text; a status read from a
    store is not trusted to hold numbers), and only numbers go into style values.
    """
    e = _text
    total = _number(st.total)
    ok = _pct(_number(st.done) - _number(st.failed), total)
    bad = _pct(_number(st.failed), total)
    facts = [f"{e(st.succeeded)} ok"]
    if st.failed:
        facts.append(f'<span style="color:#b91c1c">{e(st.failed)} failed</span>')
    facts[-1] += f" of {'?' if st.total is None else e(st.total)}"
    if getattr(st, "cached", 0):
        facts.append(f"{e(st.cached)} from the cache")
    if st.running:
        facts.append(f"{e(st.running)} running on {e(st.workers)} workers")
    if _number(st.rate) > 0:
        facts.append(f"{st.rate:.1f} tasks/s")
    facts.append(f"elapsed {e(format_seconds(_number(st.elapsed)))}")
    if _number(st.eta) and not st.state.finished:
        facts.append(f"eta {e(format_seconds(_number(st.eta)))}")
    state = getattr(st.state, "value", st.state)
    colour = _STATE_COLOURS.get(state, "#344054")
    where = f" · {e(backend)}" if backend else ""
    return (
        '<div style="font-family:system-ui,sans-serif;max-width:640px;border:1px solid #e4e7ec;'
        'border-radius:10px;padding:10px 14px;line-height:1.5">'
        f'<div><b>{e(st.name)}</b> <code style="color:#667085">{e(st.id)}</code>'
        f' <span style="color:{colour};font-weight:600">{e(state)}</span>'
        f'<span style="color:#98a2b3;font-size:12px">{where}</span></div>'
        '<div style="display:flex;height:10px;border-radius:5px;background:#eaecf0;'
        'overflow:hidden;margin:6px 0">'
        f'<div style="width:{ok:.2f}%;background:#16a34a"></div>'
        f'<div style="width:{bad:.2f}%;background:#dc2626"></div></div>'
        f'<div style="color:#475467;font-size:13px">{" · ".join(facts)}</div></div>'
    )


def _text(value: object) -> str:
    return html.escape(str(value), quote=True)


def _number(value: object) -> float:
    """``value`` if it is a finite number, else 0."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return value
    return 0


def _pct(part: float, total: float) -> float:
    return min(100.0, max(0.0, 100 * part / total)) if total else 0.0


class NotebookProgress:
    """Progress of ``Job.wait(progress=True)`` in a notebook: one HTML card updated in place."""

    def __init__(self, backend: str = "", every: float = 0.5):
        from IPython.display import HTML, display  # in a notebook, IPython is there

        self._html, self._backend, self._every = HTML, backend, every
        self._handle = display(HTML(""), display_id=True)
        self._last = 0.0

    def update(self, st: JobStatus, final: bool = False) -> None:
        now = time.monotonic()
        if final or now - self._last >= self._every:
            self._handle.update(self._html(job_html(st, self._backend)))
            self._last = now


def progress_display(backend: str = "") -> ProgressBar | NotebookProgress:
    """The progress display for where we run: HTML in a notebook, else the terminal bar."""
    if in_notebook():
        try:
            return NotebookProgress(backend)
        except Exception:  # an IPython without display support: fall back to text
            pass
    return ProgressBar()
