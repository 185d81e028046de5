"""A terminal progress bar that is also safe in logs.

On a terminal it redraws one line in place at most ten times a second; when
standard error is a pipe or a file it prints a plain line at most every
30 seconds (and on every 10 % step), so logs get no carriage-return garbage.
"""

from __future__ import annotations

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
        count = f"{st.done}/{total if total is not None else '?'}"
        parts = [f"[{bar}] {count} {frac * 100:5.1f}%"]
        if st.rate > 0:
            parts.append(f"{st.rate:.1f} task/s")
        if st.eta is not None and not st.state.finished:
            parts.append(f"eta {format_seconds(st.eta)}")
        parts.append(f"{st.workers} worker{'s' if st.workers != 1 else ''}")
        if st.failed:
            parts.append(f"{st.failed} failed")
        if st.state.finished:
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
