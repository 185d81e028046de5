"""What a cluster runs on EC2: its instances, found by tag, and ending them.

::

    DescribeInstances  tag:cloudloop:cluster=<name>, state in LIVE (or what is asked)
      -> [{id, type, state, market, zone, launched, ip}]
    TerminateInstances ids -> the ledger closes their records (ended_by "client")

A server-side tag filter is not the only check: :meth:`Ec2Inventory.mine`
keeps only what carries the cluster's tag, so a filter an API ignores cannot
make ``down`` or ``cleanup`` touch another cluster's fleets or groups.
"""

from __future__ import annotations

from typing import Any

from .ec2_setup import TAG_CLUSTER, Ec2Context, aws_errors_in_public_methods

LIVE = ["pending", "running"]
#: what still runs or could run again: ``down`` terminates all of it
STOPPABLE = [*LIVE, "stopping", "stopped"]
#: what ``ls`` shows
LISTED = [*STOPPABLE, "shutting-down"]


@aws_errors_in_public_methods
class Ec2Inventory:
    """The cluster's instances."""

    def __init__(self, ctx: Ec2Context):
        self.ctx = ctx

    def instances(self, states: list[str] | None = None) -> list[dict[str, Any]]:
        """The cluster's instances in ``states`` (default: pending or running)."""
        filters = [*self.ctx.tag_filter()]
        filters.append({"Name": "instance-state-name", "Values": states or LIVE})
        out = []
        pages = self.ctx.aws.ec2.get_paginator("describe_instances").paginate(Filters=filters)
        for page in pages:
            for r in page["Reservations"]:
                for i in r["Instances"]:
                    out.append({
                        "id": i["InstanceId"], "type": i["InstanceType"], "state": i["State"]["Name"],
                        "market": "spot" if i.get("InstanceLifecycle") == "spot" else "on-demand",
                        "zone": i.get("Placement", {}).get("AvailabilityZone", "?"),
                        "launched": i["LaunchTime"].timestamp(), "ip": i.get("PrivateIpAddress"),
                    })  # fmt: skip
        return out

    def terminate(self, ids: list[str] | None = None) -> list[str]:
        """Terminate ``ids`` (default: every instance that runs or could) and close
        their records in the bill; returns the ids."""
        if ids is None:
            ids = [i["id"] for i in self.instances(STOPPABLE)]
        if ids:
            self.ctx.aws.ec2.terminate_instances(InstanceIds=ids)
            self.ctx.bill().close(ids)
        return ids

    def mine(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Only what carries this cluster's tag (never trust a server-side filter alone)."""
        name = self.ctx.cluster
        return [
            x
            for x in items
            if any(t["Key"] == TAG_CLUSTER and t["Value"] == name for t in x.get("Tags", []))
        ]
