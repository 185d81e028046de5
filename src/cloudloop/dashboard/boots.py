"""Every cluster's boots, as the dashboard shows them: read from the store alone.

::

    clusters/ listed (one listing, shared with the cost ledger; DashboardView)
        └─ clusters/<dir>/boots/<instance>   keys.parse_boot picks these out
              read once when it appears; re-read while it is still booting and among
              its cluster's newest 50; a failed or ready record is never read again
              (after ``workers`` an instance only ever adds ``ended``, and the
              heartbeats say that sooner); a forged one is tried again after 5 min

The dashboard never asks EC2 which instances exist (it reads only the store),
so whether an instance is still there is what the store says:

* a *ready* one (its workers started) is up while a worker on it heartbeats
  (``WorkerRecord.instance``), or for a minute after its workers started (the
  first heartbeat may lag); after that it shows as ended;
* a *booting* one is taken to be booting while its last phase is younger than
  the boot deadline (its profile's ``boot_timeout``, which the record carries;
  15 min, ec2's default, for a record without one). A record whose
  only phase is the launcher's ``launched`` and that is older than that shows
  as failed, "never reported" (no Python at all on its image, or it never
  booted); one that went quiet after a later phase as failed, "no word since".

``cloudloop ls`` and ``cloudloop up`` ask EC2, and say exactly which is which.

Records come from other machines: :meth:`BootRecord.from_dict` has checked and
bounded every field, a record not signed with the backend's key is never
shown, and the page inserts every value as text.
"""

from __future__ import annotations

import time
from typing import Any

from .. import keys
from ..backends import Backend
from ..errors import TamperedError
from ..model import format_seconds
from ..providers.boots import BootRecord

SHOWN = 50  # boots shown per cluster, newest first
CLUSTERS_SHOWN = 20
DEADLINE = 900.0  # ec2's default boot_timeout, for records that do not carry their own
HEARTBEAT_LAG = 60.0  # a ready instance with no heartbeat yet is up for this long
RETRY_UNREADABLE = 300.0


def outcome(r: BootRecord, workers: set[str], now: float) -> tuple[str, str]:
    """("booting" | "ready" | "failed" | "ended" | "stopped", words) from the store alone
    ("stopped": a client ended it before its workers started, which is not a failure).

    Args:
        r: the boot record.
        workers: the instances that have a live worker record.
        now: the time to judge by.
    """
    last_phase, last_t, _ = r.phases[-1]
    if r.failed is not None or r.has("failed") or r.stopped is not None:
        return r.outcome(set(), now)
    if r.ready:
        at = next(t for p, t, _ in r.phases if p == "workers")
        up = r.instance in workers or now - at < HEARTBEAT_LAG
        return r.outcome({r.instance} if up else set(), now)
    if r.instance in workers or now - last_t < (r.deadline or DEADLINE):
        return r.outcome({r.instance}, now)
    if last_phase == "launched":
        return "failed", (
            f"never reported: launched {format_seconds(now - r.launched)} ago and its boot "
            "said nothing (no Python at all on its image, or it never booted; its console "
            "output says: aws ec2 get-console-output)"
        )
    return "failed", (
        f"no word since phase {last_phase!r}, {format_seconds(now - last_t)} ago: its boot "
        "stalled or the instance is gone"
    )


class BootsView:
    """The boot records under ``clusters/``, each read as rarely as it can change."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self._records: dict[str, tuple[str, BootRecord]] = {}  # key -> (cluster dir, record)
        self._unreadable: dict[str, float] = {}  # key -> when it failed its checks
        self.reads = 0  # refreshes, so rows know when they are stale

    def refresh(self, listed: list[str]) -> None:
        """Read the boot records in ``listed`` (a listing of ``clusters/``) that are new or
        may have changed."""
        found = {k: p[0] for k in listed if (p := keys.parse_boot(k)) is not None}
        self._records = {k: v for k, v in self._records.items() if k in found}
        self._unreadable = {k: t for k, t in self._unreadable.items() if k in found}
        for key in self._due(found):
            self._read(key, found[key])
        self.reads += 1

    def _due(self, found: dict[str, str]) -> list[str]:
        now = time.monotonic()
        due = [
            k for k in found
            if k not in self._records
            and now - self._unreadable.get(k, -1e18) >= RETRY_UNREADABLE
        ]  # fmt: skip
        for recs in self._by_cluster().values():
            due += [k for k, r in recs[:SHOWN]
                    if not r.ready and not r.has("failed") and r.stopped is None]  # fmt: skip
        return due

    def _read(self, key: str, cluster: str) -> None:
        try:
            data = self.backend.get_record(key, "a boot record")  # verified for its key
            rec = None if data is None else BootRecord.from_dict(data)
        except (TamperedError, ValueError):
            self._records.pop(key, None)
            self._unreadable[key] = time.monotonic()
            return
        if rec is None:
            self._records.pop(key, None)
        else:
            self._records[key] = (cluster, rec)
            self._unreadable.pop(key, None)

    def _by_cluster(self) -> dict[str, list[tuple[str, BootRecord]]]:
        """Each cluster's (key, record) pairs, newest launch first."""
        out: dict[str, list[tuple[str, BootRecord]]] = {}
        for key, (cluster, rec) in self._records.items():
            out.setdefault(cluster, []).append((key, rec))
        for recs in out.values():
            recs.sort(key=lambda kr: (-kr[1].launched, kr[1].instance))
        return out

    def rows(self, workers: set[str], now: float) -> list[dict[str, Any]]:
        """Per cluster (the one with the latest launch first), its newest boots as the
        page shows them; a failed one with the tail of its log."""
        clusters = sorted(self._by_cluster().items(), key=lambda c: -c[1][0][1].launched)
        return [
            {"cluster": name[:120], "total": len(recs),
             "boots": [_row(r, workers, now) for _, r in recs[:SHOWN]]}
            for name, recs in clusters[:CLUSTERS_SHOWN]
        ]  # fmt: skip


def _row(r: BootRecord, workers: set[str], now: float) -> dict[str, Any]:
    state, words = outcome(r, workers, now)
    return {
        "instance": r.instance, "type": r.type, "market": r.market, "image": r.image,
        "state": state, "words": words, "launched": r.launched, "last": r.phases[-1][1],
        "log": list(r.log) if state == "failed" else [],
    }  # fmt: skip
