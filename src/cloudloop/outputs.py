"""Per-task output files: what a task writes in its output directory ends up in the store.

::

    function task: cl.output_dir() ─► <worker scratch>/out-<job>-<index>-<pid>/ (made on first use)
    command task:  $CLOUDLOOP_OUTPUT = ./out/ in the task's working directory
          │ the task returns successfully
          ▼
    every file under it ─► STORE jobs/<job>/outputs/<index>/<relative path>  (signed)
          │
    job.outputs() ─► [OutputFile(index, name)] ─► .read() / .save(dir) / .download(dir)

Files are uploaded after the task returns and before its result is stored,
so a task with a result has all its outputs in the store; a failed attempt
uploads nothing (its log says why). A task run twice (a lost worker) writes
the same keys again. Outside a task, :func:`output_dir` is ``./outputs``, so
the same function still runs in a plain loop.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import codec, keys

if TYPE_CHECKING:
    from .backends import Backend

_dir: Path | None = None  # the running task's output directory (in the runner child)
_lazy: tuple[str, int, str] | None = None  # ...or where it goes: made if the task asks


def output_dir() -> Path:
    """This task's output directory: files written here are kept with the job.

    Returns ``./outputs`` (created) outside a task.
    """
    global _dir, _lazy
    if _lazy is not None:
        _dir, _lazy = Path("".join((_lazy[0], str(_lazy[1]), _lazy[2]))), None
    path = _dir if _dir is not None else Path("outputs")
    path.mkdir(parents=True, exist_ok=True)
    return path


def begin(path: Path, create: bool = False) -> Path:
    """Runner hook: the next task's output directory (made now, or on first use)."""
    global _dir, _lazy
    _dir, _lazy = path, None
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def begin_lazy(where: tuple[str, int, str]) -> None:
    """Runner hook, per function task: its output directory, if it asks for one,
    is ``prefix + str(index) + suffix``. Nothing is built, made or removed for a
    task that never asks."""
    global _dir, _lazy
    _dir, _lazy = None, where


def current_dir() -> Path | None:
    """Runner hook: the running task's output directory (None outside a task, or
    when the task never asked for it)."""
    return _dir


def upload(backend: Backend, directory: Path, job_id: str, index: int) -> list[str]:
    """Worker side: store every file under a task's output ``directory``
    (signed under that task's keys); returns their names. Symbolic links are
    not followed: a task's outputs are the files it wrote there."""
    names = []
    for path in sorted(directory.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        name = path.relative_to(directory).as_posix()
        backend.put_signed(keys.output(job_id, index, name), path.read_bytes())
        names.append(name)
    return names


def end() -> None:
    """Runner hook: the task is over; remove its output directory."""
    global _dir, _lazy
    if _dir is not None:
        shutil.rmtree(_dir, ignore_errors=True)
    _dir = _lazy = None


@dataclass(frozen=True)
class OutputFile:
    """One file a task wrote, as :meth:`Job.outputs` lists it."""

    index: int
    name: str
    key: str
    _job: Any = field(repr=False, compare=False)

    def read(self) -> bytes:
        """Its bytes (signature checked)."""
        backend = self._job.backend
        what = f"output {self.name!r} of task {self.index}"
        return codec.verify(backend.key, backend.store.get(self.key), self.key, what)

    def save(self, directory: str | os.PathLike = ".") -> Path:
        """Write it to ``directory/<index>/<name>``; returns that path."""
        if self.name.startswith("/") or ".." in self.name.split("/"):
            raise ValueError(f"output name {self.name!r} would leave {directory}")
        target = Path(directory) / str(self.index) / self.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(self.read())
        return target


class Outputs(list):
    """A list of :class:`OutputFile`, in task order, that can download itself."""

    def download(self, directory: str | os.PathLike = ".") -> list[Path]:
        """Save every file under ``directory/<task index>/``; returns the paths."""
        return [f.save(directory) for f in self]

    def by_task(self) -> dict[int, list[OutputFile]]:
        out: dict[int, list[OutputFile]] = {}
        for f in self:
            out.setdefault(f.index, []).append(f)
        return out


def list_outputs(job: Any, index: int | None = None) -> Outputs:
    """The output files of a job's tasks (or of one task), in task order."""
    found = Outputs()
    for key in job.backend.store.list(keys.outputs_prefix(job.id, index)):
        i, name = keys.parse_output(key)
        found.append(OutputFile(i, name, key, job))
    found.sort(key=lambda f: (f.index, f.name))
    return found


__all__ = ["OutputFile", "Outputs", "output_dir"]
