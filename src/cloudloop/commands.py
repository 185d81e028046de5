"""Command tasks: one shell command per row of a table, in any language.

``cloudloop run --items params.csv -- Rscript fit.R --alpha {alpha}``

The words after ``--`` are the command template; ``{field}`` takes the row's
value (what a template may hold: :mod:`cloudloop.template`). Each task runs in
its own new working directory holding copies of the job's shipped files; a
non-zero exit is a failure that keeps the stderr tail.

Values are data, never code: a value is never pasted into the script, each
placeholder is an environment variable the shell expands once, and a template
where a value could still be parsed again as code is refused before anything
runs. The job is in four modules; this one holds the public entry points (the
CLI and the runner import them from here) and runs one rendered command::

    items.py        the items file: CSV/JSONL/JSON rows, checked, errors as file:line
    template.py     placeholders to environment variables: compile, fill a row, show
    shellsyntax.py  the template read as /bin/sh reads it: each placeholder's context
    shellrules.py   commands that would parse a value again (sh -c, eval, ssh…): refused
    commands.py     check_rows, run_command

    params.csv ─read_table─> Table ──────────────────┐ check_rows: every row fills it
    argv ─build_template─> template ─compile_template─┴─prepare(row)─> CommandLine
    CommandLine.script, .env ─run_command─> /bin/sh -c (in the task's directory)

:func:`run_command` starts ``/bin/sh -c script`` with the values added to the
environment, and two threads pump its output to this process's own fds 1 and 2
(so the worker's log has it) while keeping the first ``STDOUT_KEEP`` bytes of
stdout (the task's result) and the last ``STDERR_KEEP`` bytes of stderr (what
:class:`CommandFailed` reports). A process the command leaves behind holding
its output open (``cmd &``) is ended once the command has exited.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import procs
from .errors import CommandFailed, ConfigError, TaskCrashed

if TYPE_CHECKING:
    from .items import Table, load_items, read_table
    from .template import (
        CommandLine,
        Script,
        build_template,
        compile_template,
        prepare,
        render,
        template_fields,
    )

# Every task runner imports this module, and most never run a command: the
# template and items modules (the shell reader and its rules among them) are
# imported when one of their names is first used (PEP 562).
_LAZY = {
    **dict.fromkeys(["Table", "load_items", "read_table"], "items"),
    **dict.fromkeys(
        [
            "CommandLine",
            "Script",
            "build_template",
            "compile_template",
            "prepare",
            "render",
            "template_fields",
        ],
        "template",
    ),
}


def __getattr__(name: str) -> Any:
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{where}", __package__), name)
    globals()[name] = value
    return value


__all__ = [
    "STDERR_KEEP",
    "STDOUT_KEEP",
    "CommandFailed",
    "CommandLine",
    "ConfigError",
    "Script",
    "Table",
    "build_template",
    "Server",
    "check_rows",
    "check_served",
    "compile_template",
    "load_items",
    "prepare",
    "read_table",
    "render",
    "run_command",
    "template_fields",
]

STDOUT_KEEP = 1 << 20
STDERR_KEEP = 16 << 10


def check_rows(template: str, table: Table) -> None:
    """Every row fills the template (raises ConfigError naming file, line and field)."""
    from .template import prepare

    for i, item in enumerate(table.items):
        prepare(template, item, i, where=table.where(i))


# -- running ---------------------------------------------------------------------


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


def run_command(
    command: str, workdir: Path, env: dict[str, str] | None = None, shown: str = ""
) -> dict[str, Any]:
    """Run ``command`` with ``sh -c`` in ``workdir``; its output also goes to our fds 1/2.

    ``env`` adds to this process's environment (a :class:`CommandLine`'s
    values travel there); ``shown`` is how errors name the command.
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
        t.join(timeout=1.0)
    if any(t.is_alive() for t in pumps):
        # the command left a process behind that holds its output open (`cmd &`):
        # the task is over, so it is ended (the runner is its subreaper)
        procs.end_leftovers()
        for t in pumps:
            t.join()
    stdout = b"".join(out).decode(errors="replace")
    if rc != 0:
        tail = b"".join(err).decode(errors="replace")
        sig = died_of(rc, tail)
        if sig is not None:
            raise TaskCrashed(crash_message(sig, shown or command, tail))
        text = f"command exited with status {rc}: {shown or command}"
        if tail.strip():
            text += f"\n--- end of its stderr ---\n{tail.rstrip()}"
        raise CommandFailed(text, rc, tail)
    return {"returncode": 0, "stdout": stdout}


# -- serving many rows in one process ---------------------------------------------

#: the longest answer line a served command may write (a result travels in it)
ANSWER_LIMIT = 64 << 20


def check_served(template: str) -> None:
    """A served command is started once for many rows: its template holds no row
    fields (the rows arrive on its stdin), only ``{job}``."""
    from .template import template_fields

    fields = sorted(set(template_fields(template)) - {"job"})
    if fields:
        shown = ", ".join("{" + f + "}" for f in fields)
        raise ConfigError(
            f"a served command (serve=True, --serve) reads its rows on stdin, one JSON line "
            f"each: its template cannot hold {shown}; read the row's fields from that line"
        )


class Server:
    """A command that serves many rows in one process: the line protocol.

    The command is started once (``/bin/sh -c``, in its own working directory
    holding the shipped files) and kept running. For each row cloudloop writes
    one line of JSON to its stdin::

        {"row": {...the row's fields...}, "index": 68, "row_number": 69,
         "seed": 123456789, "output": "/path/to/this/row's/output/dir"}

    and reads the answer from its stdout, one line of JSON::

        {"value": <any JSON>}        the row's result
        {"error": "what went wrong"} the row failed (CommandFailed); the process goes on

    A line on stdout that does not start with ``{`` is not an answer: it goes to
    the row's log (R's ``print`` writes to stdout). stderr goes to the log as it
    comes. End of stdin means: exit. A process that exits, or dies, before
    answering fails the row it was on with the reason (its exit status or signal
    and the end of its stderr is in the log) and is started again for the next
    row; a row over its timeout ends it with the task. Files the command writes
    in a row's ``output`` directory are kept with that row.
    """

    def __init__(self, script: str, workdir: Path, env: dict[str, str], shown: str):
        self.script, self.workdir, self.env, self.shown = script, workdir, env, shown
        self.proc: subprocess.Popen | None = None
        self.rows = 0

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else 0

    def _start(self) -> subprocess.Popen:
        self.rows = 0
        self.proc = subprocess.Popen(
            ["/bin/sh", "-c", "exec " + self.script if self._simple() else self.script],
            cwd=self.workdir,
            env={**os.environ, **self.env},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,  # straight into the task's log
            preexec_fn=procs.die_with_parent,
        )
        return self.proc

    def _simple(self) -> bool:
        # `exec` spares a shell between us and the program (its signals and exit
        # status are then the program's own) when the script is one plain command
        return not any(c in self.script for c in ";&|\n`$()<>")

    def ask(self, message: dict[str, Any], where: str) -> Any:
        """Send one row, return its answer's value (CommandFailed/TaskCrashed if none)."""
        import json

        proc = self.proc if self.proc is not None and self.proc.poll() is None else self._start()
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(json.dumps(message, allow_nan=False).encode() + b"\n")
            proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # it has exited: reading says how
        while True:
            line = proc.stdout.readline(ANSWER_LIMIT + 1)
            if not line:
                raise self._gone(where)
            if len(line) > ANSWER_LIMIT:
                self.close()
                raise CommandFailed(
                    f"{where}: the served command's answer is over {ANSWER_LIMIT >> 20} MB: "
                    f"write large results to the row's output directory: {self.shown}",
                    -1,
                    "",
                )
            if not line.lstrip().startswith(b"{"):
                os.write(2, line)  # not an answer: output, for the log
                continue
            try:
                answer = json.loads(line)
            except ValueError as e:
                self.close()
                raise CommandFailed(
                    f"{where}: the served command wrote a line that is not JSON ({e}): "
                    f"{line[:200]!r}; answer each row with one line "
                    '{"value": ...} or {"error": "..."}',
                    -1,
                    "",
                ) from None
            self.rows += 1
            if isinstance(answer, dict) and "error" in answer:
                raise CommandFailed(f"{where}: {answer['error']}", 1, str(answer["error"]))
            if not isinstance(answer, dict) or "value" not in answer:
                self.close()
                raise CommandFailed(
                    f"{where}: the served command answered {line[:200]!r}; answer each row "
                    'with one line {"value": ...} or {"error": "..."}',
                    -1,
                    "",
                )
            return answer["value"]

    def _gone(self, where: str) -> Exception:
        proc = self.proc
        assert proc is not None
        rc = proc.wait()
        self.proc = None
        if rc < 0 or died_of(rc, "") is not None:
            sig = -rc if rc < 0 else rc - 128
            return TaskCrashed(f"{where}: {crash_message(sig, self.shown, '')}")
        return CommandFailed(
            f"{where}: the served command exited with status {rc} before answering "
            f"(after {self.rows} rows): {self.shown}",
            rc,
            "",
        )

    def close(self, grace: float = 2.0) -> None:
        """End of stdin, then SIGTERM, then SIGKILL: the process is gone and reaped."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.close()
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None:
                with contextlib.suppress(OSError):
                    proc.send_signal(sig)
            try:
                proc.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(OSError):
            assert proc.stdout is not None
            proc.stdout.close()


def died_of(rc: int, stderr: str) -> int | None:
    """The signal a command died of, or None when it exited.

    ``rc < 0``: the shell itself was killed. ``rc`` 128+N: ``/bin/sh`` returns
    that when the program it ran died of signal N, and then reports it on its
    stderr in ``strsignal(N)``'s words ("Killed", "Segmentation fault"); a
    script that merely says ``exit 137`` prints no such line, so it stays an
    exit status.
    """
    if rc < 0:
        return -rc
    n = rc - 128
    if n <= 0 or n >= 65:
        return None
    try:
        words = signal.strsignal(n)
    except ValueError:
        return None
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    if words and lines and lines[-1].split(": ")[-1].startswith(words):
        return n
    return None


def crash_message(sig: int, shown: str, stderr: str) -> str:
    """TaskCrashed's text for a command killed by signal ``sig``."""
    try:
        name = signal.Signals(sig).name
    except ValueError:
        name = f"signal {sig}"
    desc = signal.strsignal(sig) or name
    if sig == signal.SIGKILL:
        why = (
            "most likely by the kernel's out-of-memory killer (the machine ran out of "
            "memory). Give the job a memory= limit to get a clear error, or use machines "
            "with more memory."
        )
    else:
        why = f"{desc}: usually a crash in the program (native code, a corrupt input file)."
    text = f"command was killed by {name} (signal {sig}), {why}\n  command: {shown}"
    if stderr.strip():
        text += f"\n--- end of its stderr ---\n{stderr.rstrip()}"
    return text
