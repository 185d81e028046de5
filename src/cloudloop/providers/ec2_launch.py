"""Starting instances: spot first, many instance types and zones, within the budget.

::

    Ec2Launcher.launch(n)
      ├─ paused (the backend's flag)? refuse
      ├─ room: max_workers / workers per instance - instances running now
      ├─ budget: max_cost - spent so far -> a deadline every new worker leaves by
      ├─ aws init (ec2_setup.py), user-data (userdata.py) -> a new launch template version
      ├─ EC2 Fleet, type instant, spot, price-capacity-optimized over
      │  instance_types x subnets; pools without capacity are reported, not fatal
      ├─ whatever spot could not supply: a second fleet, on-demand (on_demand_fallback)
      └─ ledger: each instance's record opened at its price (ec2_billing.py)

:meth:`Ec2Launcher.wanted` is the rule for following the queue: enough
instances for the waiting tasks, never more than max_workers allows.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from .. import __version__
from ..errors import ConfigError
from . import ec2_fleet, prices
from . import ec2_setup as setup
from . import wheelhouse as wheelhouse_mod
from .base import Report
from .boots import Boots
from .ec2_billing import Ec2Billing
from .ec2_inventory import Ec2Inventory
from .ec2_setup import Ec2Context, Ec2Setup, aws_errors_in_public_methods
from .userdata import Bootstrap, render


@dataclass
class LaunchReport:
    """What one launch asked for, what it got, and what it could not get."""

    wanted: int
    started: list[dict[str, Any]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    note: str = ""
    lines: list[str] = field(default_factory=list)  # what was prepared (the environment)

    def __str__(self) -> str:
        groups: dict[tuple[str, str, str], int] = {}
        for s in self.started:
            groups[(s["type"], s["market"], s["zone"])] = (
                groups.get((s["type"], s["market"], s["zone"]), 0) + 1
            )
        got = ", ".join(f"{n} x {t} {m} ({z})" for (t, m, z), n in sorted(groups.items()))
        lines = [
            f"started {len(self.started)} of {self.wanted} instances" + (f": {got}" if got else "")
        ]
        lines += [f"  could not get {f}" for f in self.failed]
        if self.note:
            lines.append(f"  {self.note}")
        lines += [f"  {x}" for x in self.lines]
        return "\n".join(lines)

    def report(self) -> Report:
        """As a cluster command's report: not ok if it wanted instances and got none."""
        return Report(tuple(str(self).splitlines()), ok=bool(self.started) or self.wanted <= 0)


@dataclass(frozen=True)
class LaunchPlan:
    """What instances of one architecture are launched with."""

    arch: str
    image: str
    types: tuple[str, ...]
    boot: Bootstrap


@aws_errors_in_public_methods
class Ec2Launcher:
    """Launches the cluster's instances.

    Args:
        ctx: the cluster.
        setup: makes sure its role, group and backend exist before a launch.
        inventory: what already runs (max_workers counts it).
        billing: opens each new instance's record; what is spent sets the deadline.
        paused: whether the backend is paused (then nothing is launched).
    """

    def __init__(
        self,
        ctx: Ec2Context,
        setup: Ec2Setup,
        inventory: Ec2Inventory,
        billing: Ec2Billing,
        paused: Callable[[], bool],
    ):
        self.ctx, self.setup, self.inventory, self.billing = ctx, setup, inventory, billing
        self.paused = paused

    @property
    def boots(self) -> Boots:
        return Boots(self.ctx.backend(), self.ctx.cluster)

    def workers_per_instance(self) -> int:
        """The profile's, else the fewest vCPUs among its instance types (2 if unknown)."""
        s = self.ctx.settings
        if s.workers_per_instance:
            return s.workers_per_instance
        try:
            info = self.ctx.aws.ec2.describe_instance_types(InstanceTypes=list(s.instance_types))
            return min(int(t["VCpuInfo"]["DefaultVCpus"]) for t in info["InstanceTypes"])
        except (ClientError, ValueError, KeyError):
            return 2

    def wanted(self, waiting: int, live: int, per_instance: int) -> int:
        """Instances to add so ``waiting`` tasks have a worker each (max_workers allowing)."""
        cap = math.ceil(self.ctx.settings.max_workers / per_instance)
        want = min(cap, math.ceil(waiting / per_instance))
        return want - live if waiting and want > live else 0

    def launch(self, n: int) -> LaunchReport:
        """Start up to ``n`` instances (fewer if max_workers or max_cost say so)."""
        s = self.ctx.settings
        if self.paused():
            raise ConfigError(f"cluster {s.cluster!r} is paused: `cloudloop resume` first")
        wpi = self.workers_per_instance()
        room = max(0, math.ceil(s.max_workers / wpi) - len(self.inventory.instances()))
        report = LaunchReport(wanted=n)
        if room < n:
            report.note = f"max_workers = {s.max_workers} allows {room} more instance(s)"
            n = room
        stop_at = self.deadline(n)
        if stop_at is not None and stop_at <= time.time():
            report.note = f"max_cost ${s.max_cost:.2f} is spent: no instance started"
            return report
        if n <= 0:
            return report
        prepared = self.prepare(stop_at, report)
        if prepared is None:
            return report
        configs, nets = prepared
        plans = [p for _, _, p in configs]
        zone_of = {x["SubnetId"]: x["AvailabilityZone"] for x in nets}
        plan_of = {t: p for p in plans for t in p.types}
        markets = (
            ["spot", "on-demand"]
            if s.spot and s.on_demand_fallback
            else ["spot" if s.spot else "on-demand"]
        )
        want = n
        for market in markets:
            if want <= 0:
                break
            got = self._request(configs, nets, market, want, report)
            for inst in got:
                inst["zone"] = zone_of.get(inst.pop("subnet"), "?")
                self.billing.record(inst)
                p = plan_of.get(inst["type"], plans[0])
                self.boots.launched(inst["id"], p.boot.config(), p.image, inst["type"], market,
                                    deadline=s.boot_timeout)  # fmt: skip
            report.started += got
            want -= len(got)
        return report

    def prepare(
        self, stop_at: float | None, report: LaunchReport, group: str | None = None
    ) -> tuple[list[tuple[str, str, LaunchPlan]], list[dict[str, str]]] | None:
        """What any launch needs: the account set up (aws init), a launch template version
        per architecture (its user-data: ``stop_at``, and ``group``, the Auto Scaling group
        its instances leave when idle), the subnets. None: every plan is held back
        (said in the report)."""
        c, s = self.ctx, self.ctx.settings
        self.setup.init()
        setup.wait_for_profile(c.aws.iam, c.role)
        plans = self.plans(stop_at, report, group)
        if not plans:
            return None
        sg = self.setup.security_group()
        configs = []
        for p in plans:
            tid, version = setup.template_version(
                c.aws.ec2, c.template_name, p.image, render(p.boot), c.role, sg, c.tags,
                s.key_name, instance_type=p.types[0],
            )  # fmt: skip
            configs.append((tid, version, p))
        return configs, setup.subnets(c.aws.ec2, s.subnets)

    def _request(
        self,
        configs: list[tuple[str, str, LaunchPlan]],
        nets: list[dict[str, str]],
        market: str,
        want: int,
        report: LaunchReport,
    ) -> list[dict[str, Any]]:
        """One fleet over every architecture's template version and its instance types."""
        fleet = [ec2_fleet.FleetConfig(tid, version, p.types) for tid, version, p in configs]
        c = self.ctx
        return ec2_fleet.request(c.aws.ec2, fleet, nets, market, want, c.tags, report.failed)

    def plans(
        self, stop_at: float | None, report: LaunchReport, group: str | None = None
    ) -> list[LaunchPlan]:
        """For each architecture of the profile's instance types: its image, the wheelhouse
        its instances install (published to the store), and their user-data; none for an
        architecture whose boots keep failing (:meth:`Boots.hold`: said in the report)."""
        c, s = self.ctx, self.ctx.settings
        arch_of = setup.architectures(c.aws.ec2, s.instance_types)
        image_of = setup.images(c.aws.ec2, c.aws.ssm, s.image, set(arch_of.values()))
        skipped = [t for t, a in arch_of.items() if a not in image_of]
        if skipped:
            report.lines.append(f"not launching {', '.join(skipped)}: image {s.image} is "
                                f"{', '.join(image_of)}")  # fmt: skip
        requirements = self.requirements(report)
        live = {i["id"] for i in self.inventory.instances()}
        out = []
        for arch, image in sorted(image_of.items()):
            types = tuple(t for t in s.instance_types if arch_of[t] == arch)
            wheelhouse: str | None = None
            install: tuple[str, ...] = ()
            if not s.install:
                pub = wheelhouse_mod.publish(c.backend(), ("aws",), requirements,
                                             wheelhouse_mod.Target(s.python, arch))  # fmt: skip
                wheelhouse, install = pub.digest, pub.install
                sent = (f"uploaded {pub.uploaded} wheels ({pub.bytes / 1e6:.1f} MB)"
                        if pub.uploaded else "in the store already")  # fmt: skip
                report.lines.append(f"environment for {arch}, Python {s.python}: wheelhouse "
                                    f"{pub.digest} {sent} ({pub.seconds:.1f} s)")  # fmt: skip
            else:
                install = (s.install, *requirements)
            boot = Bootstrap(
                backend=c.url, version=__version__, worker=c.worker, python=s.python,
                wheelhouse=wheelhouse, install=install, pip_args=s.pip_args,
                workers_per_instance=s.workers_per_instance, boot_timeout=s.boot_timeout,
                stop_at=stop_at, cluster=s.cluster, group=group,
                max_failed_boots=s.max_failed_boots,
            )  # fmt: skip
            held = self.boots.hold(boot.config(), live, s.max_failed_boots)
            if held:
                report.failed.append(f"{arch}: {held}")
                continue
            out.append(LaunchPlan(arch, image, types, boot))
        return out

    def requirements(self, report: LaunchReport) -> tuple[str, ...]:
        """The profile's requirements; for ``"auto"``, what the backend's unfinished jobs
        recorded they need (environment.waiting_requirements)."""
        s = self.ctx.settings
        if s.requirements != "auto":
            return tuple(s.requirements)
        from ..environment import waiting_requirements

        pins, warnings = waiting_requirements(self.ctx.backend())
        report.lines += warnings
        return tuple(pins)

    def deadline(self, n: int) -> float | None:
        """When ``n`` new workers must leave so the cluster stays within max_cost."""
        s = self.ctx.settings
        if s.max_cost is None:
            return None
        spent, burn = self.billing.cost()
        top = max((prices.on_demand(t, s.prices) or 0.0) for t in s.instance_types) or 0.5
        burn += n * top
        if spent >= s.max_cost or burn <= 0:
            return time.time()
        return time.time() + 3600 * (s.max_cost - spent) / burn
