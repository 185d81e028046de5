"""Command tasks: one shell command per row of a table, in any language.

``cloudloop run --items params.csv -- Rscript fit.R --alpha {alpha}``

* ``{field}`` takes the row's value, shell-quoted, so a value can never break
  out of its argument; ``{index}``, ``{seed}`` and ``{job}`` are always there.
* Several words after ``--`` are a command line (literal words are quoted as
  the shell gave them); one word is a shell script (pipes, redirects allowed).
* Each task runs in its own new working directory holding copies of the
  job's shipped files; a non-zero exit is a failure that keeps the stderr tail.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import string
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import CommandFailed, ConfigError

STDOUT_KEEP = 1 << 20
STDERR_KEEP = 16 << 10
_SAFE = re.compile(r"^[\w@%+=:,./-]*$")


def build_template(argv: list[str]) -> str:
    """The command template from the words after ``--``."""
    if not argv:
        raise ConfigError("no command given: put it after '--', e.g. -- Rscript fit.R {alpha}")
    if len(argv) == 1:
        return argv[0]
    out = []
    for word in argv:
        parts = []
        for literal, field, spec, conv in string.Formatter().parse(word):
            if literal:
                lit = literal.replace("{", "{{").replace("}", "}}")
                parts.append(lit if _SAFE.match(literal) else shlex.quote(lit))
            if field is not None:
                parts.append(
                    "{" + field + ("!" + conv if conv else "") + (":" + spec if spec else "") + "}"
                )
        out.append("".join(parts))
    return " ".join(out)


def template_fields(template: str) -> list[str]:
    try:
        return [f for _, f, _, _ in string.Formatter().parse(template) if f]
    except ValueError as e:
        raise ConfigError(f"command template {template!r} is malformed: {e}") from None


class _Quoting(string.Formatter):
    def format_field(self, value: Any, format_spec: str) -> str:
        return shlex.quote(super().format_field(value, format_spec))


def render(template: str, item: Any, index: int, seed: int = 0, job: str = "") -> str:
    """The shell command for one row (values shell-quoted)."""
    fields = dict(item) if isinstance(item, dict) else {"item": item}
    fields.setdefault("index", index)
    fields.setdefault("seed", seed)
    fields.setdefault("job", job)
    try:
        return _Quoting().vformat(template, (), fields)
    except KeyError as e:
        known = ", ".join(sorted(map(str, fields)))
        raise ConfigError(
            f"row {index} has no field {e.args[0]!r} used in the command; its fields: {known}"
        ) from None
    except (IndexError, ValueError) as e:
        raise ConfigError(f"command template {template!r} cannot be filled: {e}") from None


def load_items(path: str | Path) -> Iterator[Any]:
    """Rows of a ``.csv`` (dicts of strings), ``.jsonl`` or ``.json`` (a list) file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"items file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with open(path, newline="") as f:
            yield from csv.DictReader(f)
    elif suffix in (".jsonl", ".ndjson"):
        with open(path) as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except ValueError as e:
                        raise ConfigError(f"{path}:{n} is not valid JSON: {e}") from None
    elif suffix == ".json":
        data = json.loads(path.read_text())
        if not isinstance(data, list):
            raise ConfigError(f"{path} must hold a JSON list of items")
        yield from data
    else:
        raise ConfigError(f"items file {str(path)!r}: use .csv, .jsonl or .json")


def _pump(src, fd: int, keep: int, out: list[bytes], tail: bool) -> None:
    size = 0
    for block in iter(lambda: src.read1(65536), b""):
        os.write(fd, block)
        out.append(block)
        size += len(block)
        while tail and size > keep and len(out) > 1:
            size -= len(out.pop(0))
        if not tail and size > keep:
            out[:] = [b"".join(out)[:keep]]
            size = keep
    src.close()


def run_command(command: str, workdir: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``command`` with ``sh -c`` in ``workdir``; its output also goes to our fds 1/2.

    Returns ``{"returncode": 0, "stdout": text}``; raises CommandFailed otherwise.
    """
    proc = subprocess.Popen(
        ["/bin/sh", "-c", command],
        cwd=workdir,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out: list[bytes] = []
    err: list[bytes] = []
    pumps = [
        threading.Thread(target=_pump, args=(proc.stdout, 1, STDOUT_KEEP, out, False)),
        threading.Thread(target=_pump, args=(proc.stderr, 2, STDERR_KEEP, err, True)),
    ]
    for t in pumps:
        t.start()
    rc = proc.wait()
    for t in pumps:
        t.join()
    stdout = b"".join(out).decode(errors="replace")
    if rc != 0:
        tail = b"".join(err).decode(errors="replace")
        why = f"signal {-rc}" if rc < 0 else f"status {rc}"
        raise CommandFailed(
            f"command exited with {why}: {command}\n--- end of its stderr ---\n{tail.rstrip()}",
            rc,
            tail,
        )
    return {"returncode": 0, "stdout": stdout}
