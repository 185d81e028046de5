"""How a cluster's instances booted, as they told the store, and when to stop launching.

Every instance's boot (userdata.py, bootagent.py) rewrites one signed record,
``clusters/<cluster>/boots/<instance>``, phase by phase; the launcher writes
the first one (``launched``) itself, so an instance that never says a word
(no Python at all on its image, a kernel that did not boot) is seen too::

    launched ─► started ─► python ─► environment ─► workers ─► ended
                   └──────────┴──────────┴─────────► failed (reason, log tail)

A boot *failed* if it says so, or if its instance is gone without having
started workers, unless the client itself ended it meanwhile (``down``, an
Executor's pool, ``max_cost``: :meth:`Boots.stopped`), which counts for
nothing. :meth:`Boots.hold` is the rule that ends launch loops: after
``limit`` failed boots in a row with the profile's current config (what the
instances were told to install; another config is a changed profile), the
cluster launches nothing until the profile changes or ``cloudloop resume``
(:meth:`Boots.reset`). :meth:`Boots.overdue` names instances that have not
started workers within the boot deadline, to be terminated.

These records come from machines, so :meth:`BootRecord.from_dict` checks
every field; only what passed is shown: text bounded, without control or
bidirectional characters or credentials in URLs, times of this era, and a
record only under its own instance's key (any instance holds the backend's
key, but it speaks for itself only).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import keys
from ..errors import TamperedError
from ..model import finite, format_seconds
from .bootagent import redact

if TYPE_CHECKING:
    from ..backends import Backend

PHASES = ("launched", "started", "python", "environment", "workers", "failed", "ended")
GRACE = 60.0  # an instance missing from describe calls this soon after launch may just be new
# control characters (escape sequences), and the bidirectional and invisible format
# characters that make a terminal show text in another order than it is
_CONTROL = {c: "?" for c in [*range(0x20), *range(0x7F, 0xA0), *range(0x200B, 0x2010),
                             *range(0x2028, 0x202F), *range(0x2060, 0x2070), 0xFEFF]}  # fmt: skip
_LATEST = 2.0**33  # unix time in the year 2242: a phase later than that is garbage


def _text(value: Any, name: str, limit: int = 200) -> str:
    if not isinstance(value, str):
        raise ValueError(f"boot record field {name!r} must be text")
    # credentials out before the cut (which could leave half of one); a lone surrogate
    # (JSON's "\udc80") cannot be printed at all: it becomes "?"
    value = redact(value[: limit + 1024])[:limit].encode("utf-8", "replace").decode("utf-8")
    return value.translate(_CONTROL)


@dataclass(frozen=True)
class BootRecord:
    """One instance's boot.

    Attributes:
        instance: its EC2 id.
        phases: ``(phase, unix time, detail)`` in order.
        config: the digest of what it was told to install (userdata.Bootstrap.config).
        image, type, market: as the instance (or its launcher) saw them.
        failed: why the boot failed, in words (None: it did not say so).
        log: the tail of its bootstrap log, when it failed (lines, control characters removed).
        stopped: who ended it before its workers started (``cloudloop down``), if the client did.
        deadline: its profile's ``boot_timeout`` in seconds (None: a record from before it
            was kept; readers use the default).
    """

    instance: str
    phases: tuple[tuple[str, float, str], ...]
    config: str = ""
    image: str | None = None
    type: str | None = None
    market: str | None = None
    failed: str | None = None
    log: tuple[str, ...] = ()
    stopped: str | None = None
    deadline: float | None = None

    @classmethod
    def from_dict(cls, data: Any) -> BootRecord:
        if not isinstance(data, dict):
            raise ValueError("a boot record is a JSON object")
        phases = data.get("phases")
        if not isinstance(phases, list) or not phases or len(phases) > 50:
            raise ValueError("boot record field 'phases' must be a list of 1 to 50 phases")
        out = []
        for p in phases:
            if (
                not isinstance(p, list)
                or len(p) != 3
                or p[0] not in PHASES
                or type(p[1]) not in (int, float)
                or not finite(p[1])
                or not 0 <= p[1] < _LATEST
            ):
                raise ValueError("a boot phase is [name, unix time, detail] with a known name")
            out.append((p[0], float(p[1]), _text(p[2], "detail", 400)))
        opt: dict[str, Any] = {}
        for name in ("image", "type", "market", "failed", "stopped"):
            if data.get(name) is not None:
                opt[name] = _text(data[name], name, 400)
        deadline = data.get("deadline")
        if deadline is not None:
            if type(deadline) not in (int, float) or not finite(deadline) or not 0 < deadline < 1e6:
                raise ValueError("boot record field 'deadline' must be seconds, 0 to 1e6")
            opt["deadline"] = float(deadline)
        log = data.get("log")
        if log is not None:
            if not isinstance(log, str):
                raise ValueError("boot record field 'log' must be text")
            lines = [_text(x, "log", 300) for x in log[-8000:].splitlines()]
            opt["log"] = tuple(x for x in lines if x.strip())[-20:]
        return cls(
            instance=_text(data.get("instance"), "instance", 64),
            phases=tuple(out),
            config=_text(data.get("config", ""), "config", 64),
            **opt,
        )

    @property
    def launched(self) -> float:
        return self.phases[0][1]

    def has(self, phase: str) -> bool:
        return any(p[0] == phase for p in self.phases)

    def detail(self, phase: str) -> str:
        return next((d for p, _, d in self.phases if p == phase), "")

    @property
    def ready(self) -> bool:
        """Its workers started."""
        return self.has("workers")

    def outcome(self, live: set[str], now: float) -> tuple[str, str]:
        """("booting" | "ready" | "failed" | "ended" | "stopped", words) given the instances
        alive now ("stopped": the client ended it before its workers started)."""
        last_phase, last_t, _ = self.phases[-1]
        took = format_seconds(max(0.0, last_t - self.launched))
        if self.failed is not None or self.has("failed"):
            return "failed", f"boot failed after {took}: {self.failed or self.detail('failed')}"
        gone = self.instance not in live and now - self.launched > GRACE
        if self.ready:
            at = next(t for p, t, _ in self.phases if p == "workers")
            words = f"workers started {format_seconds(at - self.launched)} after launch"
            if gone or last_phase == "ended":
                return "ended", words + "; ended"
            return "ready", words
        if self.stopped is not None:
            return "stopped", f"stopped by {self.stopped} while booting ({last_phase})"
        if gone:
            if last_phase == "launched":
                return "failed", (
                    "boot failed: it ended without a word: no Python at all on its image, or it "
                    "never booted (its console output says: aws ec2 get-console-output)"
                )
            return "failed", f"boot failed: it ended after phase {last_phase!r} ({took})"
        return "booting", f"booting for {format_seconds(now - self.launched)}: {last_phase}" + (
            f" ({self.phases[-1][2]})" if self.phases[-1][2] else ""
        )

    def line(self, live: set[str], now: float) -> str:
        state, words = self.outcome(live, now)
        what = " ".join(x for x in (self.type, self.market) if x)
        return f"{self.instance} {what}: {words}"


class Boots:
    """A cluster's boot records in a backend's store."""

    def __init__(self, backend: Backend, cluster: str):
        self.backend, self.cluster = backend, cluster

    def launched(
        self,
        instance: str,
        config: str,
        image: str,
        type: str,
        market: str,
        deadline: float | None = None,
    ) -> None:
        """The launcher's first word on an instance (before it has booted); ``deadline``
        is the profile's boot_timeout, for readers that do not know the profile."""
        self.backend.put_record(keys.boot(self.cluster, instance), {
            "instance": instance, "config": config, "image": image, "type": type,
            "market": market, "by": "client", "phases": [["launched", time.time(), ""]],
            **({"deadline": deadline} if deadline else {}),
        }, if_absent=True)  # fmt: skip

    def stopped(self, instances: Iterable[str], by: str) -> None:
        """The client ends ``instances`` (``by``: "cloudloop down", ...): those still
        booting did not fail, and count for nothing (:meth:`failed_in_a_row`)."""
        for iid in instances:
            key = keys.boot(self.cluster, iid)
            try:
                data = self.backend.get_record(key, "a boot record")
                r = BootRecord.from_dict(data) if data is not None else None
            except (TamperedError, ValueError):
                continue
            if r is None or r.instance != iid or r.ready or r.failed or r.has("failed"):
                continue
            data["stopped"] = by
            if len(data["phases"]) < 50:
                data["phases"].append(["ended", time.time(), f"stopped by {by}"])
            self.backend.put_record(key, data)

    def records(self) -> list[BootRecord]:
        """Every readable record, oldest launch first (forged or garbled ones, and those
        that speak for another instance than their key's, are left out)."""
        out = []
        for key in self.backend.store.list(keys.boots_prefix(self.cluster)):
            try:
                data = self.backend.get_record(key, "a boot record")
                if data is not None:
                    r = BootRecord.from_dict(data)
                    if keys.boot(self.cluster, r.instance) == key:
                        out.append(r)
            except (TamperedError, ValueError):
                continue
        return sorted(out, key=lambda r: r.launched)

    def reset(self) -> None:
        """Failed boots so far no longer hold launches back (``cloudloop resume``)."""
        self.backend.put_record(keys.boots_reset(self.cluster), {"at": time.time()})

    def _reset_at(self) -> float:
        try:
            data = self.backend.get_record(keys.boots_reset(self.cluster), "the boots' reset")
        except TamperedError:
            return 0.0
        at = data.get("at") if isinstance(data, dict) else None
        return float(at) if isinstance(at, (int, float)) and finite(at) else 0.0

    def failed_in_a_row(
        self,
        config: str,
        live: set[str],
        now: float | None = None,
        records: list[BootRecord] | None = None,
    ) -> list[tuple[BootRecord, str]]:
        """The latest boots with ``config`` that failed, up to the last one that did not
        (boots still under way, of another config or from before the last reset are
        passed over), newest first, with their reasons. ``records``: as read already."""
        now = now or time.time()
        since = self._reset_at()
        out = []
        for r in reversed(self.records() if records is None else records):
            if r.config != config or r.launched < since:
                continue
            state, words = r.outcome(live, now)
            if state in ("booting", "stopped"):
                continue
            if state != "failed":
                break
            out.append((r, words))
        return out

    def hold(self, config: str, live: set[str], limit: int) -> str | None:
        """Why the cluster must not launch (``limit`` failed boots in a row), else None."""
        failed = self.failed_in_a_row(config, live)
        if len(failed) < limit:
            return None
        r, words = failed[0]
        return (
            f"{len(failed)} boots in a row failed, so the cluster launches no more until the "
            f"profile changes or `cloudloop resume`; the last: {r.line(live, time.time())}"
        )

    def overdue(self, live: set[str], deadline: float, now: float | None = None) -> list[str]:
        """Live instances launched more than ``deadline`` s ago whose workers never started."""
        now = now or time.time()
        return [
            r.instance
            for r in self.records()
            if r.instance in live and not r.ready and not r.has("failed")
            and r.stopped is None and now - r.launched > deadline
        ]  # fmt: skip
