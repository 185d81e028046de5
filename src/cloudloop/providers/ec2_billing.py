"""What a cluster costs: its ledger in the store, priced (see prices.py).

::

    launched instance -> prices.hourly(type, zone, market) -> ledger record opened
                         (the Auto Scaling group's: by the next client that looks)
    cost()            -> records still open for instances EC2 no longer runs are
                         closed first, then prices.cost(records): (spent, $/h now)
    job_cost()        -> the same, for the time a job ran (``cloudloop status``)

The ledger is :class:`~cloudloop.providers.prices.Ledger`
(``clusters/<name>/instances/<id>``, signed); the client that launches an
instance opens its record, the instance closes it as it shuts down, and a
client that finds the instance gone closes it here.
"""

from __future__ import annotations

from typing import Any

from . import prices
from .ec2_inventory import Ec2Inventory
from .ec2_setup import Ec2Context, aws_errors_in_public_methods


@aws_errors_in_public_methods
class Ec2Billing:
    """The cluster's bill: open records at launch, close them, say what it costs."""

    def __init__(self, ctx: Ec2Context, inventory: Ec2Inventory):
        self.ctx, self.inventory = ctx, inventory

    def record(self, inst: dict[str, Any]) -> None:
        """Open the record of an instance just launched (its id, type, zone, market)."""
        s = self.ctx.settings
        price = prices.hourly(
            self.ctx.aws.ec2, inst["type"], inst["zone"], inst["market"] == "spot", s.prices
        )
        self.ctx.bill().open(inst, price)

    def ledger(self) -> list[dict[str, Any]]:
        """Every instance's record (verified), as plain dicts."""
        return self.ctx.bill().records()

    def current(self) -> list[dict[str, Any]]:
        """The ledger, after closing the records of instances EC2 no longer runs and
        opening those of instances no client launched (the Auto Scaling group's), from
        their launch time."""
        recs = self.ledger()
        known = {r["id"] for r in recs}
        open_ids = [r["id"] for r in recs if not r.get("ended")]
        live = self.inventory.instances()
        changed = False
        for inst in live:
            if inst["id"] not in known:
                s = self.ctx.settings
                price = prices.hourly(self.ctx.aws.ec2, inst["type"], inst["zone"],
                                      inst["market"] == "spot", s.prices)  # fmt: skip
                self.ctx.bill().open(inst, price, launched=inst["launched"])
                changed = True
        if open_ids:
            gone = [i for i in open_ids if i not in {x["id"] for x in live}]
            if gone:
                self.ctx.bill().close(gone)
                changed = True
        return self.ledger() if changed else recs

    def cost(self) -> tuple[float, float]:
        """(USD so far, USD per hour now); notices instances that ended meanwhile."""
        return prices.cost(self.current())

    def job_cost(self, created: float, finished: float | None, eta: float | None) -> str:
        """One line for ``cloudloop status``: this cluster's cost while a job ran, and to go."""
        s = self.ctx.settings
        spent, burn = prices.cost(self.current(), since=created, until=finished)
        line = f"cost: spent ${spent:.4f} on cluster {s.cluster!r} while it ran"
        if finished is None:
            line += f", burning ${burn:.3f}/h"
            if eta is not None:
                line += f", about ${burn * eta / 3600:.4f} more to finish"
        if s.max_cost:
            line += f" (max_cost ${s.max_cost:.2f} for the cluster)"
        return line
