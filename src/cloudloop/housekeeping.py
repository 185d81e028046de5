"""A store that does not only grow: remove jobs (``rm``, ``gc``) and fetch their
output files (``outputs``), from Python or from ``cloudloop rm/gc/outputs``.

::

    remove_job(backend, job, force)   running? refuse (or cancel, with force)
        │ sizes of index/<job> and jobs/<job>/...   (Store.sizes: no blob is read)
        ├─► delete index/<job>     first: the job stops listing, `cloudloop status` never
        │                          meets a listed job whose manifest is gone
        └─► delete jobs/<job>/     with the trailing slash: jobs/abc2/ is not abc's
    collect(backend, older_than)      remove_job for every finished job older than that
    download_outputs(backend, job)    jobs/<job>/outputs/<task>/<name> ─► DIR/<task>/<name>

An ``rm`` cut short (index gone, some ``jobs/<job>/`` keys left) is finished by
running it again: a job with keys but no index entry or manifest is still
removable. A queue message of a removed job is dropped by the worker that
leases it (its manifest is gone).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from . import keys
from .backends import Backend
from .errors import CloudloopError, JobNotFound, TamperedError
from .job import Job, list_jobs


@dataclass(frozen=True)
class Freed:
    """What removing a job freed (or would free, ``removed=False``)."""

    job: str
    keys: int
    bytes: int
    state: str  # the job's state when removed ("gone" if its manifest was already)
    removed: bool = True

    def line(self) -> str:
        verb = "removed" if self.removed else "would remove"
        return f"{verb} job {self.job} ({self.state}): {self.keys:,} keys, {human(self.bytes)}"


def human(n: int) -> str:
    """A byte count for people: ``512 B``, ``97.3 MB`` (powers of 1000)."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def usage(backend: Backend, job: str) -> dict[str, int]:
    """Every key of ``job`` (its index entry and everything under ``jobs/<job>/``) with its size."""
    entry = keys.index_entry(keys.check_job_id(job))
    found = {k: n for k, n in backend.store.sizes(entry).items() if k == entry}
    found.update(backend.store.sizes(keys.job_prefix(job)))
    return found


def _state(backend: Backend, job: str) -> tuple[Job | None, str, bool]:
    """(the job, its state's name, whether it is finished); a job whose manifest is
    gone (an rm cut short) is finished, a job with an unreadable state is not."""
    if backend.store.get_or_none(keys.manifest(job)) is None:
        return None, "gone", True
    j = Job(backend, job)
    try:
        st = j.status().state
    except TamperedError as e:
        raise CloudloopError(f"job {job}: {e}; pass --force to remove it anyway") from None
    return j, st.value, st.finished


def remove_job(backend: Backend, job: str, force: bool = False, dry_run: bool = False) -> Freed:
    """Remove every key of ``job``; a running job is refused unless ``force``
    (which cancels it first). JobNotFound if the store holds nothing of it."""
    keys.check_job_id(job)
    found = usage(backend, job)
    if not found:
        raise JobNotFound(
            f"job {job!r} is not on backend {backend.url}; `cloudloop status` lists the jobs there"
        )
    try:
        j, state, finished = _state(backend, job)
    except CloudloopError:
        if not force:
            raise
        j, state, finished = Job(backend, job), "unreadable", False
    if not finished:
        if not force:
            raise CloudloopError(
                f"job {job} is still {state}: `cloudloop cancel {job}` it first, or pass --force"
            )
        if not dry_run and j is not None:
            j.cancel()
    freed = Freed(job, len(found), sum(found.values()), state, removed=not dry_run)
    if not dry_run:
        backend.store.remove(keys.index_entry(job))  # one key: index/abc2 is not abc's
        backend.store.delete(keys.job_prefix(job))
    return freed


def finished_at(backend: Backend, job: Job) -> float:
    """When ``job`` finished (its finished record), else when it was created."""
    try:
        rec = backend.get_record(keys.finished(job.id))
        if isinstance(rec, dict) and isinstance(rec.get("at"), (int, float)):
            return float(rec["at"])
    except TamperedError:
        pass
    return job.manifest.created


def collect(
    backend: Backend,
    older_than: float,
    keep_failed: bool = False,
    dry_run: bool = False,
    now: float | None = None,
) -> list[Freed]:
    """Remove (or, ``dry_run``, measure) every finished job that finished (or was
    created) more than ``older_than`` seconds before ``now``; running jobs are kept,
    and with ``keep_failed`` so are jobs with failed tasks."""
    now = time.time() if now is None else now
    out: list[Freed] = []
    for job in list_jobs(backend):
        try:
            st = job.status()
            if not st.state.finished or (keep_failed and st.failed):
                continue
            if now - finished_at(backend, job) <= older_than:
                continue
        except CloudloopError:
            continue  # an unreadable job is left for `cloudloop rm --force`
        out.append(remove_job(backend, job.id, dry_run=dry_run))
    return out


def download_outputs(
    backend: Backend, job: str, directory: str | os.PathLike, task: int | None = None
) -> tuple[int, int]:
    """Write the output files of ``job`` (or of one task) as ``directory/<task>/<name>``;
    returns (files, bytes). A stored name that would leave its task's directory
    (``..``, absolute, a NUL) is refused before anything of it is written."""
    j = Job(backend, keys.check_job_id(job))
    j.manifest  # JobNotFound for a job that is not there  # noqa: B018
    files = nbytes = 0
    root = Path(directory)
    for f in j.outputs(task):
        parts = f.name.split("/")
        if f.name.startswith("/") or "\0" in f.name or any(p in ("", ".", "..") for p in parts):
            raise CloudloopError(
                f"job {job}: output name {f.name[:80]!r} of task {f.index} would leave "
                f"{root / str(f.index)}; not written"
            )
        data = f.read()
        target = root / str(f.index) / f.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        files += 1
        nbytes += len(data)
    return files, nbytes


__all__ = ["Freed", "collect", "download_outputs", "finished_at", "human", "remove_job", "usage"]
