"""What a worker reads about the jobs it serves, cached: manifests, functions,
shipped files, cancellation, and which tasks already have results.

A long-lived worker serves many jobs (one queue per backend), so each cache is
bounded. Every blob is verified against the backend's key before use.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from . import keys
from .backends import Backend
from .errors import TamperedError
from .model import Cancelled, JobManifest

log = logging.getLogger("cloudloop.worker")

_MAX_CACHED = 256


class JobInfo:
    """One job as a worker knows it."""

    def __init__(self, manifest: JobManifest):
        self.manifest = manifest
        self.cancelled = False
        self.cancel_running = True  # the cancellation also kills running tasks
        self.cancel_checked = 0.0
        self.files: dict[str, str] = {}
        # the job's pins this worker does not satisfy, with what it has (None: not looked)
        self.lacks: tuple[tuple[str, str], ...] | None = None


class JobData:
    """Reads job metadata from a backend's store for a worker."""

    def __init__(self, backend: Backend, scratch: Path):
        self.backend, self.store, self.scratch = backend, backend.store, scratch
        self.check_interval = backend.check_interval
        self.jobs: dict[str, JobInfo] = {}
        self.fns: dict[str, bytes] = {}

    def job(self, job_id: str) -> JobInfo | None:
        """The job's manifest (None if the job is gone)."""
        info = self.jobs.get(job_id)
        if info is None:
            if len(self.jobs) >= _MAX_CACHED:
                del self.jobs[next(iter(self.jobs))]
            data = self.backend.get_signed(keys.manifest(job_id), f"manifest of job {job_id}")
            if data is None:
                return None
            try:
                manifest = JobManifest.from_dict(json.loads(data))
            except (TypeError, KeyError, ValueError) as e:
                raise TamperedError(f"manifest of job {job_id} is malformed: {e}") from None
            info = self.jobs[job_id] = JobInfo(manifest)
        return info

    def is_cancelled(self, job: JobInfo, force: bool = False) -> bool:
        """Looks at most every ``check_interval`` seconds (a billed call on S3)."""
        every = self.check_interval
        if not job.cancelled and (force or time.monotonic() - job.cancel_checked > every):
            job.cancel_checked = time.monotonic()
            name = keys.cancelled(job.manifest.id)
            try:
                rec = self.backend.get_record(name)
                job.cancelled = rec is not None
                if rec is not None:
                    job.cancel_running = _cancel_running(rec)
            except TamperedError as e:  # a forged marker cancels nothing
                log.warning("ignoring %s: %s", name, e)
        return job.cancelled

    def done(self, job_id: str, todo: dict[int, int]) -> list[int]:
        """Which of ``todo`` already have a stored result."""
        out: list[int] = []
        for key in self.store.list(keys.results_prefix(job_id)):
            try:
                lo, hi, _ = keys.parse_result(key)
            except ValueError:
                continue  # not a result part: a reader verifies the parts it reads
            out.extend(i for i in todo if lo <= i <= hi)
        return out

    def fn(self, job_id: str, ref: str) -> bytes:
        """A pickled function of the job, verified."""
        if ref not in self.fns:
            if len(self.fns) >= _MAX_CACHED:
                del self.fns[next(iter(self.fns))]
            blob = self.backend.get_signed(keys.fn(job_id, ref), f"function {ref} of job {job_id}")
            if blob is None:
                raise TamperedError(f"function {ref} of job {job_id} is missing from the store")
            self.fns[ref] = blob
        return self.fns[ref]

    def files(self, job: JobInfo) -> dict[str, str]:
        """The job's shipped files, written once under the worker's scratch dir."""
        if not job.files and job.manifest.files:
            d = self.scratch / "files" / job.manifest.id
            for name in job.manifest.files:
                data = self.backend.get_signed(keys.file(job.manifest.id, name))
                if data is None:
                    raise TamperedError(f"file {name!r} of job {job.manifest.id} is missing")
                (d / name).parent.mkdir(parents=True, exist_ok=True)
                (d / name).write_bytes(data)
                job.files[name] = str(d / name)
        return job.files


def paused(backend: Backend) -> bool:
    """``cloudloop pause`` is in force (a verified flag; a forged one pauses nothing)."""
    try:
        return backend.get_record(keys.PAUSED) is not None
    except TamperedError as e:
        log.warning("ignoring %s: %s", keys.PAUSED, e)
        return False


def _cancel_running(rec: Any) -> bool:
    """Whether a cancel record stops running tasks too (a malformed one does: cancelling
    more than asked loses no result, leaving a task running that should stop costs)."""
    try:
        return Cancelled.from_dict(rec).running
    except ValueError as e:
        log.warning("cancel record %.80r is malformed (%s): running tasks stop too", rec, e)
        return True
