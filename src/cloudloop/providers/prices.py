"""What instances cost: list prices, spot prices, and the running bill.

On-demand prices are list prices (us-east-1, Linux, USD per hour, as
published by AWS in 2025); other regions differ by a few percent, so treat
costs as estimates. Spot prices come from ``DescribeSpotPriceHistory`` for the
instance's zone; when the API gives nothing believable (an emulator answers
0.00001) the estimate is 35 % of on-demand. A profile's ``prices`` table
overrides both.

The bill itself is a :class:`Ledger` of :class:`LedgerRecord` s in the store.
The record lives here, beside its only writer and :func:`cost`, rather than in
:mod:`cloudloop.model`: it is the ec2 provider's format, not part of the job
protocol every backend and worker speaks (the dashboard only prices it).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import keys
from ..errors import TamperedError
from ..model import finite

if TYPE_CHECKING:
    from ..backends import Backend

log = logging.getLogger("cloudloop.ec2")

ON_DEMAND: dict[str, float] = {
    "t3.medium": 0.0416,
    "t3.large": 0.0832,
    "t3.xlarge": 0.1664,
    "c5.large": 0.085,
    "c5.xlarge": 0.17,
    "c5.2xlarge": 0.34,
    "c6i.large": 0.085,
    "c6i.xlarge": 0.17,
    "c6i.2xlarge": 0.34,
    "c6a.large": 0.0765,
    "c6a.xlarge": 0.153,
    "c6a.2xlarge": 0.306,
    "c7i.large": 0.08925,
    "c7i.xlarge": 0.1785,
    "c7i.2xlarge": 0.357,
    "c7a.large": 0.10264,
    "c7a.xlarge": 0.20528,
    "c7a.2xlarge": 0.41056,
    "m5.large": 0.096,
    "m5.xlarge": 0.192,
    "m6i.large": 0.096,
    "m6i.xlarge": 0.192,
    "m6a.large": 0.0864,
    "m6a.xlarge": 0.1728,
    "m7i.large": 0.1008,
    "m7i.xlarge": 0.2016,
    "m7a.large": 0.11592,
    "m7a.xlarge": 0.23184,
    "r6i.large": 0.126,
    "r7a.large": 0.15215,
    "c7g.large": 0.0725,
    "c7g.xlarge": 0.145,
    "m7g.large": 0.0816,
    "m7g.xlarge": 0.1632,
}
SPOT_SHARE = 0.35


def on_demand(instance_type: str, table: dict[str, float] | None = None) -> float | None:
    if table and instance_type in table:
        return float(table[instance_type])
    return ON_DEMAND.get(instance_type)


def hourly(
    ec2: Any,
    instance_type: str,
    zone: str | None,
    spot: bool,
    table: dict[str, float] | None = None,
) -> float:
    """USD per hour for one instance (best estimate; 0.0 if the type is unknown)."""
    if table and f"{instance_type}:{'spot' if spot else 'on-demand'}" in table:
        return float(table[f"{instance_type}:{'spot' if spot else 'on-demand'}"])
    listed = on_demand(instance_type, table)
    if not spot:
        return listed or 0.0
    if table and instance_type in table:
        return float(table[instance_type]) * SPOT_SHARE
    try:
        kw: dict[str, Any] = {
            "InstanceTypes": [instance_type],
            "ProductDescriptions": ["Linux/UNIX"],
            "StartTime": time.time() - 3600,
            "MaxResults": 10,
        }
        if zone:
            kw["AvailabilityZone"] = zone
        history = ec2.describe_spot_price_history(**kw).get("SpotPriceHistory", [])
        price = min(float(h["SpotPrice"]) for h in history) if history else None
    except Exception:
        price = None
    if price is not None and listed and price >= 0.05 * listed:
        return price
    return (listed or 0.0) * SPOT_SHARE


@dataclass(frozen=True)
class LedgerRecord:
    """One instance's line in a cluster's bill (``clusters/<cluster>/instances/<id>``).

    Attributes:
        id: the EC2 instance id.
        type: its instance type.
        price: USD per hour.
        launched: when it was launched (unix time).
        zone: its availability zone.
        market: "spot" or "on-demand".
        ended: when it ended (None: still running, as far as the bill knows).
        ended_by: who closed the record: "instance" (as it shut down) or "client".
    """

    id: str
    type: str
    price: float
    launched: float
    zone: str | None = None
    market: str | None = None
    ended: float | None = None
    ended_by: str | None = None

    @classmethod
    def from_dict(cls, data: Any) -> LedgerRecord:
        """Check every field (ValueError naming the first wrong one); other fields
        (older records also carry the instance's state and address) are ignored."""
        if not isinstance(data, dict):
            raise ValueError("an instance record is a JSON object")
        for name in ("id", "type"):
            if not isinstance(data.get(name), str):
                raise ValueError(f"field {name!r} must be text")
        for name in ("price", "launched"):
            if not _number(data.get(name)):
                raise ValueError(f"field {name!r} must be a finite number >= 0")
        ended = data.get("ended")
        if ended is not None and not _number(ended):
            raise ValueError("field 'ended' must be a finite number >= 0, or null")
        for name in ("zone", "market", "ended_by"):
            if data.get(name) is not None and not isinstance(data[name], str):
                raise ValueError(f"field {name!r} must be text, or null")
        return cls(
            data["id"],
            data["type"],
            float(data["price"]),
            float(data["launched"]),
            data.get("zone"),
            data.get("market"),
            None if ended is None else float(ended),
            data.get("ended_by"),
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def cost(
    records: Iterable[LedgerRecord | dict[str, Any]],
    now: float | None = None,
    since: float | None = None,
    until: float | None = None,
) -> tuple[float, float]:
    """(USD spent, USD per hour now) for instance ledger records.

    With ``since``/``until`` only the instance time inside that window counts
    (a job's share of a cluster that serves every job of its backend). A
    record given as a dict (:meth:`Ledger.records`) is checked as it is
    decoded (ValueError if it is not one).
    """
    now = now or time.time()
    spent = burn = 0.0
    for r in records:
        if not isinstance(r, LedgerRecord):
            r = LedgerRecord.from_dict(r)
        start = max(r.launched, since or r.launched)
        end = min(r.ended or now, until or now)
        spent += r.price * max(0.0, end - start) / 3600
        if not r.ended:
            burn += r.price
    return spent, burn


class Ledger:
    """One cluster's bill, kept in the store so every client sees the same.

    ``clusters/<cluster>/instances/<id>`` holds a signed :class:`LedgerRecord`
    (``{id, type, price, launched, zone, market, ended, ended_by}``). The client that launches an
    instance opens its record; the instance closes it as it shuts down
    (``ended_by`` "instance"), or a client that finds it gone from EC2 does
    ("client"). Records are signed: the bill decides when ``max_cost`` stops
    the cluster, so one rewritten in the store (a price of 0) is not believed.
    """

    def __init__(self, backend: Backend, cluster: str):
        self.backend, self.cluster = backend, cluster

    def key(self, iid: str) -> str:
        return keys.ledger(self.cluster, iid)

    def open(self, inst: dict[str, Any], price: float, launched: float | None = None) -> None:
        """Open the record of an instance just launched (``inst``: its id, type, zone, market;
        ``launched``: when, if not now: one the client did not launch itself)."""
        rec = LedgerRecord(
            inst["id"], inst["type"], price, launched or time.time(), inst["zone"], inst["market"]
        )
        self.backend.put_record(self.key(rec.id), rec.to_dict())

    def entries(self) -> list[LedgerRecord]:
        """Every instance's record, verified and checked (one not believed is left out)."""
        out = []
        for key in self.backend.store.list(keys.ledger_prefix(self.cluster)):
            rec = read_ledger_record(self.backend, key)
            if rec is not None:
                out.append(rec)
        return out

    def records(self) -> list[dict[str, Any]]:
        """:meth:`entries` as plain dicts (what :func:`cost` also takes)."""
        return [r.to_dict() for r in self.entries()]

    def close(self, ids: list[str], by: str = "client") -> int:
        """Mark instances ended now (once); returns how many were open."""
        n = 0
        for iid in ids:
            rec = read_ledger_record(self.backend, self.key(iid))
            if rec is not None and not rec.ended:
                rec = dataclasses.replace(rec, ended=time.time(), ended_by=by)
                self.backend.put_record(self.key(iid), rec.to_dict())
                n += 1
        return n


def read_ledger_record(backend: Backend, key: str) -> LedgerRecord | None:
    """One instance's bill record, verified and checked (None: absent or not believed)."""
    try:
        data = backend.get_record(key)
    except TamperedError as e:
        log.warning("ignoring %s: %s", key, e)
        return None
    if data is None:
        return None
    try:
        return LedgerRecord.from_dict(data)
    except ValueError as e:
        log.warning("ignoring %s: not an instance record: %s", key, e)
        return None


def _number(v: Any) -> bool:
    return type(v) in (int, float) and finite(v) and v >= 0
