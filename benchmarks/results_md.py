"""benchmarks/RESULTS.md, one ``## `` section per benchmark, each rewritten by its own."""

from __future__ import annotations

import re
from pathlib import Path


def write_section(path: Path, section: str, text: str) -> None:
    """Replace the section headed ``section`` (up to the next ``## ``) with ``text``,
    or add it at the end."""
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    start = old.find(section)
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        nxt = re.search(r"^## ", old[start + len(section) :], re.M)
        end = start + len(section) + nxt.start() if nxt else len(old)
        new = old[:start] + text + ("\n" + old[end:] if nxt else "")
    path.write_text(new.rstrip("\n") + "\n")
