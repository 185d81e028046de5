"""EC2 workers: spot first, many instance types and zones, scale to zero.

:class:`Ec2Cluster` is a profile's cluster as the CLI sees it (the
:class:`~cloudloop.providers.base.Cluster` interface, with every optional
capability: ``cost``, ``job_cost``, ``init``, ``follow``). It is a face over
one small part per job, all sharing one :class:`~.ec2_setup.Ec2Context`::

    Ec2Cluster ── up(n) ─────────► Ec2Launcher   (ec2_launch.py)    fleets, spot then
      │           follow()            │                              on-demand, max_cost deadline
      │                               ├─► Ec2Setup     (ec2_setup.py)     role, group, template
      │                               └─► Ec2Billing   (ec2_billing.py)   ledger, cost, job_cost
      ├─ ls(), cost() ───────────────────► Ec2Inventory (ec2_inventory.py) instances by tag,
      ├─ init() ─────────► Ec2Setup                                     terminate
      └─ down(), cleanup() ► Ec2Teardown (ec2_teardown.py)  instances, fleets, spot requests,
                                                            template, role, group, data

Every resource carries the tag ``cloudloop:cluster``; ``ls``, ``down`` and
``cleanup`` find things by it. The instances' workers carry the cluster's name
in their heartbeat records (``CLOUDLOOP_CLUSTER``, set by the user-data in
userdata.py), so :meth:`~cloudloop.providers.base.Cluster.workers` finds them.
Costs are estimates from list and spot prices (see prices.py), kept in the
store so any client sees the same bill. Pausing is the backend's flag (the
base class's ``pause``/``resume``): a paused cluster launches nothing.
"""

from __future__ import annotations

import math
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..backends.aws import AwsBackend, open_aws
from ..backends.base import secret_from_env
from ..config import check_known, parse_duration
from ..errors import ConfigError
from ..model import WorkerOptions, format_seconds
from . import prices
from .base import Cluster, Provider, Report, WorkerPool
from .ec2_billing import Ec2Billing
from .ec2_group import LEAVE_MARGIN, Ec2Group, overrides_for
from .ec2_inventory import LISTED, Ec2Inventory
from .ec2_launch import Ec2Launcher, LaunchReport
from .ec2_setup import AwsClients, Ec2Context, Ec2Setup, aws_errors_in_public_methods
from .ec2_teardown import Ec2Teardown


@dataclass(frozen=True)
class Ec2Settings:
    """The ``ec2`` provider's options from a profile (see the README).

    ``IDLE_EXIT`` is how long an instance's workers wait for work before they
    leave, and the instance with them, when the profile sets no ``idle_exit``:
    an idle machine costs money, so ec2 workers do not wait for ever as
    workers elsewhere do.
    """

    IDLE_EXIT: ClassVar[float] = 120.0

    cluster: str
    instance_types: tuple[str, ...] = ("c7a.large", "c6a.large", "m7a.large", "c6i.large")
    spot: bool = True
    on_demand_fallback: bool = True
    max_workers: int = 100
    max_cost: float | None = None
    image: str = "auto"  # AWS's Amazon Linux 2023 for each architecture, or an AMI / ssm:NAME
    python: str = f"{sys.version_info[0]}.{sys.version_info[1]}"  # the client's: pickles need it
    requirements: tuple[str, ...] | str = ()  # or "auto": what the waiting jobs record
    install: str | None = None  # a pip spec from the package index instead of the wheelhouse
    boot_timeout: float = 900.0  # an instance with no worker by then is terminated
    max_failed_boots: int = 3  # failed boots in a row before launches stop
    on_demand_base: int = 0  # the group's first machines on-demand (needs on_demand_fallback)
    scale_in_after: float = 600.0  # the group goes to zero once the queue is empty this long
    pip_args: tuple[str, ...] = ()
    workers_per_instance: int | None = None
    subnets: tuple[str, ...] = ()
    key_name: str | None = None
    prices: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_options(cls, profile: str, options: dict[str, Any]) -> Ec2Settings:
        opts = dict(options)
        check_known(opts, cls.__dataclass_fields__, "ec2 provider")
        if opts.get("requirements") == "auto":
            opts["requirements"] = "auto"
        elif "requirements" in opts and isinstance(opts["requirements"], str):
            raise ConfigError('ec2 provider: requirements must be a list of strings, or "auto"')
        for k in ("instance_types", "requirements", "pip_args", "subnets"):
            if k in opts and opts[k] != "auto":
                if isinstance(opts[k], str) or not all(isinstance(x, str) for x in opts[k]):
                    raise ConfigError(f"ec2 provider: {k} must be a list of strings")
                opts[k] = tuple(opts[k])
        for k in ("spot", "on_demand_fallback"):
            if k in opts and not isinstance(opts[k], bool):
                raise ConfigError(f"ec2 provider: {k} must be true or false")
        if "python" in opts and (
            not isinstance(opts["python"], str) or not re.fullmatch(r"3\.\d{1,2}", opts["python"])
        ):
            raise ConfigError('ec2 provider: python must be a minor version such as "3.11"')
        if "boot_timeout" in opts:
            opts["boot_timeout"] = parse_duration(opts["boot_timeout"], "boot_timeout")
            if not opts["boot_timeout"] or opts["boot_timeout"] < 30:
                raise ConfigError("ec2 provider: boot_timeout must be at least 30 s")
        for k in ("max_workers", "workers_per_instance", "max_failed_boots"):
            if k in opts and (not isinstance(opts[k], int) or opts[k] < 1):
                raise ConfigError(f"ec2 provider: {k} must be a whole number >= 1")
        base = opts.get("on_demand_base", 0)
        if isinstance(base, bool) or not isinstance(base, int) or base < 0:
            raise ConfigError("ec2 provider: on_demand_base must be a whole number >= 0")
        if base and not opts.get("on_demand_fallback", True):
            raise ConfigError("ec2 provider: on_demand_base asks for on-demand machines, but "
                              "on_demand_fallback = false forbids them: choose one")  # fmt: skip
        if "scale_in_after" in opts:
            opts["scale_in_after"] = parse_duration(opts["scale_in_after"], "scale_in_after")
            if not opts["scale_in_after"] or not 60 <= opts["scale_in_after"] <= 86400:
                raise ConfigError("ec2 provider: scale_in_after must be between 1m and 24h")
        if "max_cost" in opts and (
            not isinstance(opts["max_cost"], (int, float)) or opts["max_cost"] <= 0
        ):
            raise ConfigError("ec2 provider: max_cost must be a positive number of USD")
        if not opts.get("instance_types", True):
            raise ConfigError("ec2 provider: instance_types must name at least one type")
        opts.setdefault("cluster", profile)
        return cls(**opts)


@aws_errors_in_public_methods
class Ec2Cluster(Cluster):
    """One profile's workers on EC2 and everything around them.

    The parts are public for callers that need more than the interface
    (:class:`Ec2Pool`, tests): ``setup``, ``inventory``, ``billing``,
    ``launcher``, ``teardown``, and ``ctx``, what they share.
    """

    provider = "ec2"

    def __init__(
        self, backend_url: str, settings: Ec2Settings, worker: WorkerOptions, profile: str
    ):
        if worker.idle_exit is None:
            worker = worker.replace(idle_exit=settings.IDLE_EXIT)
        super().__init__(settings.cluster, backend_url, worker)
        self.settings, self.profile = settings, profile
        self.ctx = Ec2Context(backend_url, settings, worker, profile,
                              AwsClients.for_backend(backend_url), lambda: self.backend)  # fmt: skip
        self.setup = Ec2Setup(self.ctx)
        self.inventory = Ec2Inventory(self.ctx)
        self.billing = Ec2Billing(self.ctx, self.inventory)
        self.launcher = Ec2Launcher(
            self.ctx, self.setup, self.inventory, self.billing, paused=self.paused
        )
        self.teardown = Ec2Teardown(self.ctx, self.inventory)
        self.group = Ec2Group(self.ctx)

    @property
    def backend(self) -> AwsBackend:
        if self._backend is None:
            self._backend = open_aws(self.url)
        backend: AwsBackend = self._backend
        return backend

    # ---------------------------------------------------------------- every provider

    def up(self, n: int | None = None) -> Report:
        """Set up (or update) the cluster's Auto Scaling group, which follows the queue
        with nothing of ours running (ec2_group.py), and return; ``n``: that many workers
        now too (the group's desired capacity, in machines)."""
        s = self.settings
        if n is not None and self.paused():
            raise ConfigError(f"cluster {s.cluster!r} is paused: `cloudloop resume` first")
        unpriced = [t for t in s.instance_types if not prices.on_demand(t, s.prices)]
        if s.max_cost is not None and unpriced:  # an unknown price would count as free
            raise ConfigError(f"max_cost needs a price for every instance type; "
                              f"{', '.join(unpriced)} has none: add it to the profile's "
                              'prices = { "TYPE" = USD_PER_HOUR }')  # fmt: skip
        wpi = self.launcher.workers_per_instance()
        deadline = self.group_deadline(self.group.cap(wpi))
        # workers leave a little before AWS sets the group to zero (a tenth of a short budget)
        margin = 0.0 if deadline is None else min(LEAVE_MARGIN, (deadline - time.time()) / 10)
        stop_at = None if deadline is None else deadline - max(0.0, margin)
        report = LaunchReport(wanted=0)
        prepared = self.launcher.prepare(stop_at, report, group=self.group.names.group)
        if prepared is None:  # every architecture's boots keep failing: the group must not grow
            said = self.group.pause() if self.group.describe() else None
            lines = [f"could not set up the group: {x}" for x in report.failed]
            lines += [f"  {x}" for x in report.lines] + ([said] if said else [])
            return Report(tuple(lines + self.boot_problems(limit=1)), ok=False)
        configs, nets = prepared
        default, overrides = overrides_for([(tid, v, p.types) for tid, v, p in configs])
        lines = [f"  {x}" for x in report.lines]
        lines += [f"  could not use {x}" for x in report.failed]
        lines = self.group.set_up(overrides, default, [x["SubnetId"] for x in nets], wpi,
                                  deadline, self.paused()) + lines  # fmt: skip
        if n is not None:
            lines.append(self.group.raise_desired(math.ceil(n / wpi)))
            if not self.backend.queue.stats().total:
                lines.append("  no task waits: the group takes these machines back within a "
                             "minute or two while the queue stays empty (submit, then `up -n`)")  # fmt: skip
        return Report(tuple(lines + self.boot_problems(limit=1)))

    def group_deadline(self, cap: int) -> float | None:
        """When max_cost is reached if the group ran ``cap`` machines at the dearest type's
        on-demand price from now on (the bill so far counted): the most it could spend."""
        s = self.settings
        if s.max_cost is None:
            return None
        spent, _ = self.billing.cost()
        top = max((prices.on_demand(t, s.prices) or 0.0) for t in s.instance_types) or 0.5
        if spent >= s.max_cost:
            return time.time()
        return time.time() + 3600 * (s.max_cost - spent) / (cap * top)

    def down(self, purge: bool = False) -> Report:
        """Terminate the instances, delete fleets, cancel spot requests (``purge``:
        the backend's data, queues and bucket too); each step runs even if one fails."""
        said = self._stopping("cloudloop down")
        group_lines, group_ok = self.group.delete()
        lines, ok = self.teardown.down(purge=purge)
        left = self._leftovers()
        if left:
            lines.append(f"still there: {', '.join(left)}; run `cloudloop down` again")
        return Report(tuple(said + group_lines + lines or ["nothing was running"]),
                      ok and group_ok and not left)  # fmt: skip

    def _leftovers(self) -> list[str]:
        """What of the group is left, or why that cannot be seen (one line, not a stop)."""
        try:
            return self.group.leftovers()
        except Exception as e:
            return [f"(could not check the group: {e})"]

    def _stopping(self, by: str, ids: list[str] | None = None) -> list[str]:
        """Boots the client is about to end (all live instances' by default) are not
        failed boots (Boots.stopped); trouble saying so is a line, not a stop."""
        try:
            if ids is None:
                ids = [i["id"] for i in self.inventory.instances()]
            self.launcher.boots.stopped(ids, by)
        except Exception as e:  # teardown goes on whatever the store says
            return [f"could not note in the store that {by} ended booting instances: {e}"]
        return []

    def ls(self) -> Report:
        """One line per instance (type, market, zone, state, age, price, boot), the bill,
        then the boots that failed lately (why, and their log's last lines)."""
        spent, burn = self.billing.cost()
        ledger = {r["id"]: r for r in self.billing.ledger()}
        now = time.time()
        rows = self.inventory.instances(LISTED)
        live = {i["id"] for i in rows if i["state"] in ("pending", "running")}
        boots = {r.instance: r for r in self.launcher.boots.records()}
        lines = self.group.lines(paused=self.paused())
        for i in rows:
            up = format_seconds(now - i["launched"])
            price = ledger.get(i["id"], {}).get("price", 0.0)
            boot = boots.get(i["id"])
            said = f"  {boot.outcome(live, now)[1]}" if boot else ""
            lines.append(f"{i['id']:20s} {i['type']:11s} {i['market']:9s} {i['zone']:11s} "
                         f"{i['state']:13s} up {up:>8s}  ${price:.4f}/h{said}")  # fmt: skip
        s = self.settings
        budget = f" of max ${s.max_cost:.2f}" if s.max_cost else ""
        lines.append(f"{len(rows)} instance(s) in cluster {s.cluster!r}; "
                     f"spent ${spent:.2f}{budget}, burning ${burn:.3f}/h")  # fmt: skip
        lines += self.boot_problems(live, boots=list(boots.values()))
        return Report(tuple(lines))

    def boot_problems(
        self, live: set[str] | None = None, boots: list[Any] | None = None, limit: int = 3
    ) -> list[str]:
        """The latest failed boots, each with the last lines of its log, and whether
        launching has stopped for them (also for ``status`` and ``up``)."""
        if live is None:
            live = {i["id"] for i in self.inventory.instances()}
        records = boots if boots is not None else self.launcher.boots.records()
        now = time.time()
        failed = [r for r in reversed(records) if r.outcome(live, now)[0] == "failed"]
        lines = []
        for r in failed[:limit]:
            lines.append(r.line(live, now))
            lines += [f"    | {x}" for x in r.log[-5:]]
        if failed:
            # the run that holds launches back (Boots.hold), for the config of the latest
            # boot that ended: since the last `cloudloop resume`, other configs passed over
            recent = [r for r in reversed(records) if r.outcome(live, now)[0] != "booting"]
            run = len(self.launcher.boots.failed_in_a_row(recent[0].config, live, now, records))
            if run >= self.settings.max_failed_boots:
                lines.append(f"launching stopped: the last {run} boots failed; fix the profile "
                             "(a changed profile launches again) or `cloudloop resume`")  # fmt: skip
        return lines

    def cleanup(self, purge: bool = False) -> Report:
        """``down``, then everything ``init`` and launching made (template, role, group)."""
        self._stopping("cloudloop cleanup")
        group_lines, group_ok = self.group.delete()
        lines, ok = self.teardown.cleanup(purge=purge)
        left = self._leftovers()
        if left:
            lines.append(f"still there: {', '.join(left)}; run `cloudloop cleanup` again")
        return Report(tuple(group_lines + lines or ["nothing to clean up"]),
                      ok and group_ok and not left)  # fmt: skip

    # ---------------------------------------------------------------- capabilities

    def cost(self) -> tuple[float, float]:
        """(USD so far, USD per hour now); notices instances that ended meanwhile."""
        return self.billing.cost()

    def job_cost(self, created: float, finished: float | None, eta: float | None) -> str:
        """For ``cloudloop status``: this cluster's cost while a job ran, and to go; while
        it runs, also the cluster's latest failed boot (why its tasks may be waiting)."""
        line = self.billing.job_cost(created, finished, eta)
        problems = (
            []
            if finished
            else self.group.lines(activities=2, paused=self.paused()) + self.boot_problems(limit=1)
        )
        return "\n".join([line, *problems])

    def pause(self) -> Report:
        """The backend's flag, and the group starts nothing more (nothing at work ends)."""
        super().pause()
        said = self.group.pause()
        return Report((said,) if said else ())

    def resume(self) -> Report:
        """Workers take work again; boots that failed so far hold launches back no more;
        the group follows the queue again."""
        super().resume()
        self.launcher.boots.reset()
        said = self.group.resume(self.launcher.workers_per_instance())
        return Report((said,) if said else ())

    def init(self) -> Report:
        """Create the bucket, queue, IAM role and instance profile, security group."""
        return Report(tuple(self.setup.init()))

    def follow(self, every: float, until_idle: bool, say: Callable[[str], None]) -> int:
        """Keep enough instances for the waiting work; stop at max_cost; workers leave when idle.

        Returns the exit status: 3 once max_cost is reached (every instance
        terminated), 0 with ``until_idle`` once the queue is empty and no
        instance is left; otherwise it runs until interrupted.
        """
        s = self.settings
        if self.group.describe() is not None:
            raise ConfigError(f"cluster {s.cluster!r} has an Auto Scaling group following the "
                              f"queue already ({self.group.names.group}): `cloudloop down` "
                              "first to scale it from this terminal instead")  # fmt: skip
        wpi = self.launcher.workers_per_instance()
        say(f"scaling cluster {s.cluster!r} to its queue every {every:g} s (Ctrl-C stops scaling; "
            "workers still leave by themselves when idle)")  # fmt: skip
        quiet_since = None
        said: dict[str, str] = {}  # instance -> what was last said of its boot
        last_held = ""  # why launches were held back when that was last said
        while True:
            stats = self.backend.queue.stats()
            live = self.inventory.instances()
            spent, _ = self.billing.cost()
            if s.max_cost is not None and spent >= s.max_cost:
                self._stopping("max_cost")
                ids = self.inventory.terminate()
                say(f"max_cost ${s.max_cost:.2f} reached (${spent:.2f} spent): "
                    f"terminated {len(ids)} instance(s)")  # fmt: skip
                return 3
            for line in self.watch_boots({i["id"] for i in live}, said):
                say(line)
            add = self.launcher.wanted(stats.total, len(live), wpi)
            if add > 0 and not self.paused():
                report = self.launcher.launch(add)
                # a launch held back says so once, not every round (the rest of its report,
                # such as the seconds the environment took, changes from round to round)
                held = "" if report.started else "\n".join(
                    x for x in report.failed if "boots in a row failed" in x
                )  # fmt: skip
                if not held or held != last_held:
                    say(str(report))
                last_held = held
            if stats.total or live:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = time.monotonic()
            elif until_idle and time.monotonic() - quiet_since > every:
                say(f"queue empty and no instances left; spent ${spent:.2f}")
                return 0
            time.sleep(every)

    def watch_boots(self, live: set[str], said: dict[str, str]) -> list[str]:
        """What changed in the boots since ``said`` (updated), and the instances past the
        boot deadline terminated (billed while they sit; their own watchdog may be broken)."""
        now, out = time.time(), []
        boots = self.launcher.boots
        late = boots.overdue(live, self.settings.boot_timeout, now)
        if late:  # its workers' heartbeats say more than a record whose last report was lost
            serving = {w.instance for w in self.workers() if w.instance}
            late = [i for i in late if i not in serving]
        if late:
            self.inventory.terminate(late)
            out.append(f"terminated {', '.join(late)}: no worker within boot_timeout "
                       f"({format_seconds(self.settings.boot_timeout)})")  # fmt: skip
        for r in boots.records():
            state, words = r.outcome(live, now)
            if state == "booting" or said.get(r.instance) == state:
                continue
            if r.instance not in said and (state == "ended" or now - r.phases[-1][1] > 600):
                said[r.instance] = state  # old news
                continue
            said[r.instance] = state
            out.append(r.line(live, now))
            if state == "failed":
                out += [f"    | {x}" for x in r.log[-5:]]
        return out


class Ec2Pool(WorkerPool):
    """The instances an Executor started for itself (terminated with it)."""

    def __init__(self, cluster: Ec2Cluster, ids: list[str], report: LaunchReport):
        self.cluster, self.ids, self.report = cluster, ids, report

    def alive(self) -> int:
        live = {i["id"] for i in self.cluster.inventory.instances()}
        return sum(1 for i in self.ids if i in live)

    def stop(self, timeout: float = 10.0) -> None:
        live = {i["id"] for i in self.cluster.inventory.instances()}
        mine = [i for i in self.ids if i in live]
        self.cluster._stopping("its Executor's shutdown", mine)
        self.cluster.inventory.terminate(mine)


class Ec2Provider(Provider):
    name = "ec2"

    def __init__(self, options: dict[str, Any] | None = None, profile: str = "aws"):
        super().__init__(options, profile)
        self.settings = Ec2Settings.from_options(profile, self.options)

    def cluster(self, backend_url: str, worker: WorkerOptions) -> Ec2Cluster:
        if not backend_url.startswith("aws://"):
            raise ConfigError(f"the ec2 provider needs an aws:// backend, not {backend_url!r}")
        if secret_from_env() is not None:
            # instances read the key from the bucket (their role allows it); a key kept
            # elsewhere would not reach them, and they would sign with another one
            raise ConfigError(
                "CLOUDLOOP_SECRET / CLOUDLOOP_SECRET_FILE is set, but the ec2 provider's "
                "instances read the key from the bucket: unset it for ec2 profiles"
            )
        return Ec2Cluster(backend_url, self.settings, worker, self.profile)

    def start(self, backend_url: str, n: int, worker: WorkerOptions) -> Ec2Pool:
        cluster = self.cluster(backend_url, worker)
        launcher = cluster.launcher
        report = launcher.launch(math.ceil(n / launcher.workers_per_instance()))
        return Ec2Pool(cluster, [s["id"] for s in report.started], report)
