"""What the dashboard and the report know about jobs, read with a bounded number of store calls.

::

    browser ──poll /api/...──► DashboardView ──(at most every N s)──► Store.list / get
                                  │ jobs:    index/ listed every `list_every` s (newest 200 shown);
                                  │          a job's status re-read every `job_every` s while its
                                  │          page is open, else every list_every/2 s or slower the
                                  │          more jobs run, and never again once it has finished
                                  │ results: each result part is read once, its values dropped
                                  │ logs:    logs/ listed every `job_every` s while a log is open;
                                  │          each log segment is read once
                                  │ workers: workers/ listed every `job_every` s, shared by all jobs
                                  │ boots:   clusters/ listed every `list_every` s; a boot record
                                  │          re-read only while it is booting (.boots)
                                  └ costs:   ec2 ledgers under clusters/ read every `cost_every`
                                             s (from the boots' listing when it is recent)

Everything is read through the backend's ``Store`` interface, so the same
view works for SQLite, S3 and Redis; what a browser polls costs at most the
listings above, however many browsers poll or however often. A job's
snapshot is a plain JSON-able dict (:meth:`JobView.snapshot`): the live page
renders it, and :mod:`cloudloop.report` embeds it in a static file.

Nothing here is trusted to be well-formed markup or even of the right type:
heartbeat records come from other machines, and task output, exception text
and job names are whatever the user's code produced. Records and log parts are
read through their verifying readers (:func:`~cloudloop.heartbeat.worker_records`,
:mod:`cloudloop.results`, the reader a :class:`~cloudloop.job.Job` uses too);
each :class:`~cloudloop.model.WorkerRecord` is then cut down to the fields the
page shows, each bounded (:func:`_worker_row`), and
:func:`page_json` never emits NaN or Infinity (which ``JSON.parse`` rejects).
Escaping is the page's job: ``app.js`` inserts every value as text.
"""

from __future__ import annotations

import json
import math
import threading
import time
from typing import Any

from .. import keys
from ..backends import Backend
from ..errors import CloudloopError
from ..heartbeat import worker_records
from ..job import Job
from ..model import JobStatus, Outcome, WorkerRecord
from ..providers import prices
from ..results import LogParts, better
from .boots import BootsView

_RECENT_TASKS = 100  # task rows the live page shows (the report shows every task)
_MAX_FAILURES = 100
_GRID_CELLS = 2000
_BUCKETS = 60
_LOG_TAIL = 256 << 10  # characters of a task's log sent (its latest)


class _Every:
    """True at most once per ``interval`` seconds for each name."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}

    def __call__(self, name: str, interval: float) -> bool:
        now = time.monotonic()
        if now - self._last.get(name, -1e18) < interval:
            return False
        self._last[name] = now
        return True


class _SharedJob(Job):
    """A Job whose worker records come from the view's one shared, throttled listing."""

    def __init__(self, backend: Backend, job_id: str, view: DashboardView):
        super().__init__(backend, job_id)
        self._view = view

    def workers(self) -> list[WorkerRecord]:
        return self._view.live_records()


class JobView:
    """One job as the dashboard sees it: status, per-task outcomes (without values), logs."""

    def __init__(self, view: DashboardView, job_id: str):
        self.view = view
        self.job = _SharedJob(view.backend, job_id, view)
        self.id = job_id
        self.status: JobStatus | None = None
        self.tasks: dict[int, Outcome] = {}  # best outcome per index, value dropped
        self._read_parts: set[str] = set()
        self._logs = LogParts(view.backend, job_id, keep=True)  # each part read once
        self._logs_final = False
        self._snap: tuple[tuple, dict[str, Any]] | None = None
        self._reads = 0  # status re-reads, so a snapshot knows when it is stale
        self._every = _Every()

    @property
    def finished(self) -> bool:
        return self.status is not None and self.status.state.finished

    def refresh(self, interval: float) -> JobStatus:
        """Re-read the job's listing and new result parts, at most every ``interval`` s."""
        if self.status is not None and self.finished:
            return self.status
        if not self._every("status", interval) and self.status is not None:
            return self.status
        self.status = self.job.status()
        self._reads += 1
        for outcomes in self.job.parts.unread(self._read_parts):
            for o in outcomes:
                o.value = None  # only the metadata is kept: results can be large
                if better(o, self.tasks.get(o.index)):
                    self.tasks[o.index] = o
        return self.status

    def log(self, index: int, interval: float) -> str:
        """Everything task ``index`` printed so far (the last 256 KB), reading only new segments."""
        if not self._logs_final and self._every("logs", interval):
            self._logs_final = self.finished  # a finished job's logs are all written
            self._logs.refresh()
        return self._logs.log(index)[-_LOG_TAIL:]

    # ------------------------------------------------------------ snapshot

    def snapshot(self, all_tasks: bool = False) -> dict[str, Any]:
        """The job as plain data for the page (every task when ``all_tasks``).

        Recomputed only after the status or the workers were re-read: for
        a big job that costs a fraction of a second.
        """
        st = self.status or self.refresh(0)
        self.view.workers()
        key = (self._reads, self.view.worker_reads, all_tasks)
        if self._snap is not None and self._snap[0] == key:
            return {**self._snap[1], "now": time.time()}
        snap = self._compute(st, all_tasks)
        self._snap = (key, snap)
        return snap

    def _compute(self, st: JobStatus, all_tasks: bool) -> dict[str, Any]:
        m = self.job.manifest
        now = time.time()
        end = st.created + st.elapsed if st.state.finished else now
        tasks = self.tasks
        live = [w for w in self.view.workers() if w["live"]]
        # a heartbeat can lag the results by a few seconds: a task with a result is not running
        running = {
            w["task"]: w
            for w in live
            if w["job"] == self.id and w["task"] is not None and w["task"] not in tasks
        }
        # a worker is on this job from its first chunk until it goes idle (its record
        # says so at once): it counts even between tasks shorter than a heartbeat
        on_job = [] if st.state.finished else [
            w for w in live if w["job"] == self.id and w["state"] == "busy"
        ]  # fmt: skip
        if st.state.finished:
            running = {}
        left = None if st.total is None else max(0, st.total - st.done)
        n_running = max(len(running), len(on_job))
        if left is not None:
            n_running = min(n_running, left)
        return {
            "id": st.id,
            "name": st.name,
            "state": st.state.value,
            "total": st.total,
            "done": st.done,
            "failed": st.failed,
            "cached": st.cached,
            "running": n_running,
            "pending": None if left is None else max(0, left - n_running),
            "workers_live": len({w["id"] for w in [*running.values(), *on_job]}),
            "created": st.created,
            "elapsed": st.elapsed,
            "rate": st.rate,
            "eta": st.eta,
            "ended_at": end if st.state.finished else None,
            "now": now,
            "kind": m.kind,
            "command": m.command,
            "client": m.client,
            "backend": self.view.backend.url,
            "cost": self.view.job_cost(st),
            "throughput": _throughput(tasks.values(), st.created, end, st.state.finished),
            "grid": _grid(st.total, tasks, running),
            "workers": self._workers(live, running, {w["id"] for w in on_job}),
            "timeline": _timeline(tasks.values(), st.created, end),
            "tasks": self._task_rows(running, all_tasks),
            "failures": self._failures(),
            # what keeps the job from finishing, in words (no worker can run it, ...)
            "problems": [p[:2000] for p in st.problems[:20]],
        }

    def _workers(
        self, live: list[dict[str, Any]], running: dict[int, dict], on_job: set[str]
    ) -> list[dict]:
        """A row per worker that ran a task of this job or is on it now."""
        rows: dict[str, dict[str, Any]] = {}
        for o in self.tasks.values():
            r = rows.setdefault(o.worker, {"id": o.worker, "host": o.host, "done_job": 0,
                                           "failed_job": 0, "first": o.started, "last": o.ended})  # fmt: skip
            r["done_job"] += 1
            r["failed_job"] += o.error is not None
            r["first"] = min(r["first"], o.started)
            r["last"] = max(r["last"], o.ended)
        busy_here = {w["id"] for w in running.values()} | on_job
        for w in live:
            if w["id"] not in rows and w["id"] not in busy_here:
                continue  # serving other jobs only
            r = rows.setdefault(w["id"], {"id": w["id"], "done_job": 0, "failed_job": 0})
            r.update({k: w[k] for k in _WORKER_FIELDS})
            r["live"] = True
            if w["id"] not in busy_here:  # not on this job now
                r["task"] = r["progress"] = None
                r["message"] = ""
                if r["state"] == "busy":
                    other = w["job"] not in (None, self.id)
                    r["state"] = "elsewhere" if other else "idle"
        for r in rows.values():
            r.setdefault("live", False)
            r.setdefault("state", "gone")
        return sorted(rows.values(), key=lambda r: (not r["live"], r.get("host") or "", r["id"]))

    def _task_rows(self, running: dict[int, dict], all_tasks: bool) -> list[dict[str, Any]]:
        rows = [
            {"i": i, "state": "running", "worker": w["id"], "host": w["host"],
             "started": None, "ended": None, "attempt": None,
             "progress": w["progress"], "message": w["message"]}
            for i, w in sorted(running.items())
        ]  # fmt: skip
        done = sorted(self.tasks.values(), key=lambda o: o.index if all_tasks else -o.ended)
        if not all_tasks:
            done = done[:_RECENT_TASKS]
        for o in done:
            rows.append({
                "i": o.index, "state": _state(o), "worker": o.worker, "host": o.host,
                "started": o.started, "ended": o.ended, "attempt": o.attempt,
                "error": f"{_short_type(o.error.type_name)}: {o.error.message}"[:200]
                if o.error else None,
            })  # fmt: skip
        return rows

    def _failures(self) -> list[dict[str, Any]]:
        out = []
        for i, o in sorted(self.tasks.items()):
            if o.error is not None:
                out.append({
                    "i": i, "type": _short_type(o.error.type_name), "message": o.error.message,
                    "traceback": o.error.traceback, "attempt": o.attempt,
                    "worker": o.worker, "host": o.host,
                })  # fmt: skip
                if len(out) >= _MAX_FAILURES:
                    break
        return out


_WORKER_FIELDS = ("host", "provider", "instance_type", "market", "state", "task", "progress",
                  "message", "error", "tasks_done", "last_seen", "rss", "load", "pid",
                  "python")  # fmt: skip
# what a page may show of a heartbeat record: text fields (longest kept) and numbers
_WORKER_TEXT = {"id": 200, "host": 200, "provider": 40, "instance_type": 60, "market": 20,
                "state": 20, "job": 100, "message": 400, "error": 1000, "python": 20}  # fmt: skip
_WORKER_COUNTS = ("task", "tasks_done", "pid")  # whole numbers >= 0
_WORKER_REALS = ("progress", "last_seen", "every", "rss", "load")  # finite numbers >= 0


def _worker_row(rec: WorkerRecord, now: float | None = None) -> dict[str, Any] | None:
    """A heartbeat record as the pages may show it, or None if it has no id.

    The record was checked as it was read (:meth:`WorkerRecord.from_dict`: a
    ``task`` of ``"<img ...>"`` or a ``load`` of ``"high"`` never gets here);
    only the fields above are kept, text cut to the lengths above, a count
    that is not a whole number >= 0 or a measure that is negative shown as
    None, progress at most 1.
    """
    if not rec.id:
        return None
    row: dict[str, Any] = {k: _text(getattr(rec, k), n) for k, n in _WORKER_TEXT.items()}
    row.update({k: _count(getattr(rec, k)) for k in _WORKER_COUNTS})
    row.update({k: _real(getattr(rec, k)) for k in _WORKER_REALS})
    row["message"] = row["message"] or ""
    if row["progress"] is not None:
        row["progress"] = min(row["progress"], 1.0)
    row["live"] = rec.live(now)
    return row


def _text(v: Any, limit: int) -> str | None:
    return v[:limit] if isinstance(v, str) else None


def _count(v: Any) -> int | None:
    return v if type(v) is int and 0 <= v < 2**53 else None


def _real(v: Any) -> float | int | None:
    return v if type(v) in (int, float) and math.isfinite(v) and 0 <= v < 2**63 else None


def page_json(obj: Any) -> str:
    """``obj`` as JSON a browser's ``JSON.parse`` reads: NaN and infinities become null."""
    try:
        return json.dumps(obj, default=str, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(obj), default=str, allow_nan=False)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _short_type(name: str) -> str:
    return name.removeprefix("builtins.")


def _state(o: Outcome) -> str:
    return "ok" if o.ok else ("cancelled" if o.cancelled else "failed")


def _throughput(tasks, t0: float, t1: float, finished: bool = True) -> dict[str, Any]:
    """Tasks finished per second in up to 60 equal buckets from the job's start to now/end.

    While the job runs, the bucket still filling is left out (drawn, it would drop
    toward 0 at the right edge however fast tasks finish); once it has finished, the
    last bucket's rate is over its real width."""
    span = max(t1 - t0, 1.0)
    step = max(span / _BUCKETS, 1.0)  # finer buckets only show how tasks were batched
    n = max(1, math.ceil(span / step))
    counts = [0] * n
    for o in tasks:
        if o.ended:
            counts[min(n - 1, max(0, int((o.ended - t0) / step)))] += 1
    rates = [c / step for c in counts]
    if not finished and n > 1:
        rates.pop()  # still filling
        span = (n - 1) * step
    else:
        # the last bucket is usually cut short by the end: a rate over its real width
        rates[-1] = counts[-1] / max(span - (n - 1) * step, step / 2)
    return {"t0": t0, "span": span, "step": step, "rates": rates}


def _grid(total: int | None, tasks: dict[int, Outcome], running: dict[int, Any]) -> dict:
    """One character per task (or per cell of tasks): o ok, f failed, c cancelled, r running,
    p partly done, . pending."""
    n = total if total is not None else max([*tasks, *running, -1]) + 1
    if n <= 0:
        return {"per": 1, "cells": ""}
    per = -(-n // _GRID_CELLS)
    cells = []
    for lo in range(0, n, per):
        idx = range(lo, min(n, lo + per))
        outs = [tasks.get(i) for i in idx]
        if any(o is not None and o.error is not None for o in outs):
            cells.append("f")
        elif any(i in running for i in idx):
            cells.append("r")
        elif all(o is not None for o in outs):
            cells.append("c" if all(o is not None and o.cancelled for o in outs) else "o")
        elif any(o is not None for o in outs):
            cells.append("p")
        else:
            cells.append(".")
    return {"per": per, "cells": "".join(cells)}


def _timeline(tasks, t0: float, t1: float) -> dict[str, Any]:
    """Per worker, its busy spans (adjacent tasks merged when closer than 0.5 % of the job)."""
    gap = max(t1 - t0, 1.0) / 200
    by_worker: dict[str, list[Outcome]] = {}
    for o in tasks:
        if o.started and o.ended:
            by_worker.setdefault(o.worker, []).append(o)
    rows = []
    for worker, outs in sorted(by_worker.items(), key=lambda kv: (kv[1][0].host, kv[0])):
        outs.sort(key=lambda o: o.started)
        segs: list[list[float]] = []
        for o in outs:
            failed = o.error is not None
            if segs and o.started - segs[-1][1] < gap and not failed and not segs[-1][2]:
                segs[-1][1] = max(segs[-1][1], o.ended)
            else:
                segs.append([o.started, o.ended, 1 if failed else 0])
        rows.append({"worker": worker, "host": outs[0].host, "segs": segs})
    return {"t0": t0, "t1": t1, "rows": rows}


class DashboardView:
    """Every job on one backend, read with bounded polling; safe to share between threads.

    Args:
        backend: an open backend.
        job_every: minimum seconds between re-reads of a watched job (and of workers/).
        list_every: minimum seconds between listings of the jobs (index/).
        cost_every: minimum seconds between reads of the clusters' instance ledgers.

    ``list_every`` also bounds how often ``clusters/`` is listed for the boots.
    """

    def __init__(self, backend: Backend, job_every: float = 2.0, list_every: float = 10.0,
                 cost_every: float = 60.0):  # fmt: skip
        self.backend = backend
        self.job_every, self.list_every, self.cost_every = job_every, list_every, cost_every
        self.lock = threading.RLock()
        self._jobs: dict[str, JobView] = {}
        self._job_ids: list[str] = []
        self._workers: list[dict[str, Any]] = []
        self._live: list[WorkerRecord] = []
        self._ledger: dict[str, prices.LedgerRecord] = {}
        self._broken: dict[str, tuple[float, str]] = {}  # job id -> (when tried, why)
        self.worker_reads = 0
        self._every = _Every()
        self._boots = BootsView(backend)
        self._boot_rows: tuple[tuple[int, int], list[dict[str, Any]]] = ((-1, -1), [])
        self._cluster_keys: list[str] = []

    def workers(self) -> list[dict[str, Any]]:
        """Every worker's latest heartbeat record as :func:`_worker_row` (``live``: seen lately)."""
        if self._every("workers", self.job_every):
            now = time.time()  # records are verified there, and cut to what a page shows here
            rows = [(r, _worker_row(r, now)) for r in worker_records(self.backend)]
            self._workers = [row for _, row in rows if row is not None]
            self._live = [r for r, row in rows if row is not None and row["live"]]
            self.worker_reads += 1
        return self._workers

    def live_records(self) -> list[WorkerRecord]:
        """The records of the workers :meth:`workers` shows as live (from the same listing)."""
        self.workers()
        return self._live

    def job(self, job_id: str) -> JobView:
        """The view of one job (raises JobNotFound for an unknown id)."""
        if job_id not in self._jobs:
            jv = JobView(self, keys.check_job_id(job_id))
            jv.job.manifest  # noqa: B018 - raises JobNotFound before it is cached
            self._jobs[job_id] = jv
        return self._jobs[job_id]

    @property
    def job_count(self) -> int:
        """How many jobs the backend's index held at the last listing."""
        return len(self._job_ids)

    def jobs(self, limit: int = 200) -> list[dict[str, Any]]:
        """One row per job for the newest ``limit`` jobs, newest first; unfinished jobs
        re-read at a bounded rate."""
        if self._every("index", self.list_every):
            self._job_ids = [keys.index_job(k) for k in self.backend.store.list(keys.INDEX)]
        unfinished = sum(1 for j in self._jobs.values() if not j.finished)
        # the more jobs run at once, the less often each is re-listed (S3 LIST costs money)
        interval = max(self.list_every / 2, 0.25 * unfinished)
        rows: list[dict[str, Any]] = []
        for job_id in reversed(self._job_ids[-limit:]):
            broken = self._broken.get(job_id)
            if broken is not None and time.monotonic() - broken[0] < self.cost_every:
                rows.append({"id": job_id, "name": "", "state": "unreadable", "error": broken[1]})
                continue
            try:
                jv = self.job(job_id)
                st = jv.refresh(interval)
            except CloudloopError as e:  # tried again only after a while
                self._broken[job_id] = (time.monotonic(), str(e))
                rows.append({"id": job_id, "name": "", "state": "unreadable", "error": str(e)})
                continue
            self._broken.pop(job_id, None)
            rows.append({
                "id": st.id, "name": st.name, "state": st.state.value, "total": st.total,
                "done": st.done, "failed": st.failed, "running": st.running,
                "created": st.created, "elapsed": st.elapsed, "eta": st.eta,
                "cost": self.job_cost(st),
            })  # fmt: skip
        return rows

    def _clusters(self, max_age: float) -> list[str]:
        """The keys under ``clusters/`` (ledgers, boots), listed again only when the last
        listing is ``max_age`` s old: the boots and the costs share one listing."""
        if self._every("clusters", max_age):
            self._cluster_keys = self.backend.store.list(keys.CLUSTERS)
        return self._cluster_keys

    def boots(self) -> list[dict[str, Any]]:
        """Every cluster's newest boots (:meth:`.boots.BootsView.rows`); ``clusters/``
        listed at most every ``list_every`` s, the rows recomputed only after that or
        after the workers were re-read."""
        if self._every("boots", self.list_every):
            self._boots.refresh(self._clusters(self.list_every))
        self.workers()
        key = (self._boots.reads, self.worker_reads)
        if self._boot_rows[0] != key:
            up = {r.instance for r in self._live if r.instance}
            self._boot_rows = (key, self._boots.rows(up, time.time()))
        return self._boot_rows[1]

    def _ledger_records(self) -> list[prices.LedgerRecord]:
        if self._every("ledger", self.cost_every):
            # the boots' listing, if it is fresh: listings are what S3 bills most
            for key in self._clusters(min(self.list_every, self.cost_every)):
                if not keys.is_ledger(key):
                    continue
                rec = self._ledger.get(key)
                if rec is not None and rec.ended:
                    continue  # an ended instance's record no longer changes
                rec = prices.read_ledger_record(self.backend, key)  # verified and checked
                if rec is not None:
                    self._ledger[key] = rec
        return list(self._ledger.values())

    def job_cost(self, st: JobStatus) -> float | None:
        """USD the backend's ec2 clusters cost while the job ran (None: no ledger)."""
        recs = self._ledger_records()
        if not recs:
            return None
        until = st.created + st.elapsed if st.state.finished else None
        return prices.cost(recs, since=st.created, until=until)[0]  # records checked as read
