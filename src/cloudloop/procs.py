"""Process trees: what a task started, wherever it went, and how to end it.

A task may start processes that outlive it: a ``cmd &`` in a command task, a
server it forgets, a daemon that forks twice and calls ``setsid`` so it is in
no one's process group. Killing the task's process group misses those. So:

* the task runner is a *child subreaper* (``PR_SET_CHILD_SUBREAPER``): every
  orphan among its descendants is re-parented to it, not to init, and it ends
  them all when a task finishes (:func:`end_leftovers`, checked per task with
  one ``pread`` by :class:`Leftovers`);
* when the worker kills the runner (timeout, memory, cancellation), it first
  freezes the runner and every descendant with SIGSTOP, so none can fork away
  while it looks, then kills them all (:func:`kill_tree`).

Linux only (``/proc``); elsewhere these do nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading
import time


def proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, resident pages) for every process on the machine."""
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
                out[int(name)] = (int(fields[1]), int(fields[21]))
            except (OSError, IndexError, ValueError):
                continue
    return out


def descendants(root: int, table: dict[int, tuple[int, int]] | None = None) -> list[int]:
    """Every live descendant of ``root`` (children, their children, ...)."""
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _) in (table or proc_table()).items():
        kids.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        for child in kids.get(todo.pop(), ()):
            out.append(child)
            todo.append(child)
    return out


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_tree(root: int) -> None:
    """Freeze ``root`` and all its descendants (so none can fork away), then kill them."""
    frozen: set[int] = set()
    _signal(root, signal.SIGSTOP)
    for _ in range(20):
        new = [p for p in descendants(root) if p not in frozen]
        if not new:
            break
        for p in new:
            _signal(p, signal.SIGSTOP)
        frozen.update(new)
    try:
        os.killpg(root, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for p in [root, *frozen]:
        _signal(p, signal.SIGKILL)


_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a child before it runs its program: be killed (SIGKILL) when the process
    that started it dies, whatever kills that one (a served command outlives no runner)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _children() -> list[int]:
    """This process's live children, across its threads."""
    out: list[int] = []
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                out += [int(p) for p in f.read().split()]
        except OSError:
            continue
    return out


def end_leftovers(grace: float = 0.5, keep: int = 0) -> int:
    """End every process a finished task left running (they are our children: we
    are their subreaper). SIGTERM, up to ``grace`` seconds, then SIGKILL; reaped.
    Returns how many there were."""
    seen: set[int] = set()
    deadline = time.monotonic() + grace
    while True:
        kids = [p for p in _children() if p != keep]
        if not kids:
            return len(seen)
        for pid in kids:
            if pid not in seen:
                seen.add(pid)
                _signal(pid, signal.SIGTERM)
        pause = 0.01
        while time.monotonic() < deadline and any(_alive_child(p) for p in kids):
            time.sleep(pause)
            pause = min(pause * 2, 0.1)
        for pid in kids:
            if _alive_child(pid):
                _signal(pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
        if len(seen) > 10_000:  # a fork bomb: the worker kills the whole tree instead
            return len(seen)


def _alive_child(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    return done == 0


class Leftovers:
    """Cheap per-task check for processes a task left behind: one ``pread`` of the
    main thread's children list (orphans are re-parented to the main thread);
    the other threads' lists only when the process has other threads."""

    def __init__(self) -> None:
        try:
            self._fd: int | None = os.open(f"/proc/self/task/{os.getpid()}/children", os.O_RDONLY)
        except OSError:
            self._fd = None

    def any(self, keep: int = 0) -> bool:
        """Whether a process other than ``keep`` (a served command) is our child."""
        if self._fd is None:
            return False
        main = os.pread(self._fd, 64, 0)
        if main and (not keep or main.split() != [str(keep).encode()]):
            return True
        return threading.active_count() > 1 and any(p != keep for p in _children())


def meminfo() -> tuple[int, int]:
    """(total, available) bytes of this machine's memory (``/proc/meminfo``; (0, 0)
    where it cannot be read)."""
    got = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name in ("MemTotal", "MemAvailable"):
                    got[name] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return 0, 0
    return got.get("MemTotal", 0), got.get("MemAvailable", 0)
