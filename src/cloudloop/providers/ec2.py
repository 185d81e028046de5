"""EC2 workers: spot first, many instance types and zones, scale to zero.

::

    Cluster.launch(n)
      ├─ budget: max_cost - spent so far -> a deadline every new worker leaves by
      ├─ user-data (userdata.py) -> a new launch template version (ec2_setup.py)
      ├─ EC2 Fleet, type instant, spot, price-capacity-optimized over
      │  instance_types x subnets; pools without capacity are reported, not fatal
      ├─ whatever spot could not supply: a second fleet, on-demand (on_demand_fallback)
      └─ ledger: store clusters/<name>/instances/<id> {type, zone, market, price, launched}

Every resource carries the tag ``cloudloop:cluster``; ``ls``, ``down`` and
``cleanup`` find things by it. Costs are estimates from list and spot prices
(see prices.py), kept in the store so any client sees the same bill.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import boto3
from botocore.exceptions import ClientError

from .. import __version__, keys
from ..backends.aws import aws_errors, clients, error_code, open_aws, parse_aws_url
from ..backends.base import secret_from_env
from ..config import check_known
from ..errors import ConfigError
from ..jobdata import paused
from ..model import WorkerOptions
from . import ec2_setup as setup
from . import prices
from .base import Provider, WorkerPool
from .userdata import Bootstrap, render

LIVE = ["pending", "running"]


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
    image: str = setup.DEFAULT_IMAGE
    requirements: tuple[str, ...] = ()
    install: str | None = None
    pip_args: tuple[str, ...] = ()
    workers_per_instance: int | None = None
    subnets: tuple[str, ...] = ()
    key_name: str | None = None
    prices: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_options(cls, profile: str, options: dict[str, Any]) -> Ec2Settings:
        opts = dict(options)
        check_known(opts, cls.__dataclass_fields__, "ec2 provider")
        for k in ("instance_types", "requirements", "pip_args", "subnets"):
            if k in opts:
                if isinstance(opts[k], str) or not all(isinstance(x, str) for x in opts[k]):
                    raise ConfigError(f"ec2 provider: {k} must be a list of strings")
                opts[k] = tuple(opts[k])
        for k in ("spot", "on_demand_fallback"):
            if k in opts and not isinstance(opts[k], bool):
                raise ConfigError(f"ec2 provider: {k} must be true or false")
        for k in ("max_workers", "workers_per_instance"):
            if k in opts and (not isinstance(opts[k], int) or opts[k] < 1):
                raise ConfigError(f"ec2 provider: {k} must be a whole number >= 1")
        if "max_cost" in opts and (
            not isinstance(opts["max_cost"], (int, float)) or opts["max_cost"] <= 0
        ):
            raise ConfigError("ec2 provider: max_cost must be a positive number of USD")
        if not opts.get("instance_types", True):
            raise ConfigError("ec2 provider: instance_types must name at least one type")
        opts.setdefault("cluster", profile)
        return cls(**opts)


@dataclass
class LaunchReport:
    wanted: int
    started: list[dict[str, Any]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    note: str = ""

    def __str__(self) -> str:
        groups: dict[tuple, int] = {}
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
        return "\n".join(lines)


def _aws_errors_in_public_methods(cls):
    """Every public method reports AWS trouble as a cloudloop error, not a boto traceback."""
    for name, fn in list(vars(cls).items()):
        if callable(fn) and not name.startswith("_"):

            def wrapped(self, *a, __fn=fn, __name=name, **kw):
                with aws_errors(
                    f"{__name.replace('_', ' ')} for cluster {self.settings.cluster!r}"
                ):
                    return __fn(self, *a, **kw)

            functools.update_wrapper(wrapped, fn)
            setattr(cls, name, wrapped)
    return cls


@_aws_errors_in_public_methods
class Cluster:
    """One profile's workers on EC2 and everything around them."""

    def __init__(
        self, backend_url: str, settings: Ec2Settings, worker: WorkerOptions, profile: str
    ):
        if worker.idle_exit is None:
            worker = worker.replace(idle_exit=settings.IDLE_EXIT)
        self.url, self.settings, self.worker, self.profile = backend_url, settings, worker, profile
        p = parse_aws_url(backend_url)
        self.bucket, self.prefix, self.queue_name = p["bucket"], p["prefix"], p["queue"]
        session = boto3.session.Session(region_name=p.get("region"))
        kw = {"endpoint_url": p.get("endpoint")}
        self.ec2 = session.client("ec2", **kw)
        self.iam = session.client("iam", **kw)
        self.ssm = session.client("ssm", **kw)
        self.sqs, self.s3 = clients(p.get("region"), p.get("endpoint"))
        name = settings.cluster
        self.role = f"cloudloop-{name}-worker"[:64]
        self.group_name = self.template_name = f"cloudloop-{name}"
        self.tags = setup.tags(name, profile)
        self._backend = None

    @property
    def backend(self):
        if self._backend is None:
            self._backend = open_aws(self.url)
        return self._backend

    # ---------------------------------------------------------------- set-up

    def init(self) -> list[str]:
        b = self.backend
        arn = self.sqs.get_queue_attributes(QueueUrl=b.queue.url, AttributeNames=["QueueArn"])
        arn = arn["Attributes"]["QueueArn"]
        policy = setup.worker_policy(arn, self.bucket, self.prefix)
        setup.ensure_role(self.iam, self.role, policy, self.tags)
        vpc = self._vpc()
        group = setup.ensure_security_group(self.ec2, self.group_name, vpc, self.tags)
        return [
            f"bucket s3://{self.bucket}/{self.prefix} and queue {self.queue_name}",
            f"IAM role and instance profile {self.role} (that queue and that prefix only)",
            f"security group {group} ({self.group_name}, no inbound rules) in {vpc}",
        ]

    def _vpc(self) -> str:
        if self.settings.subnets:
            return self.ec2.describe_subnets(SubnetIds=[self.settings.subnets[0]])["Subnets"][0][
                "VpcId"
            ]
        return setup.default_vpc(self.ec2)

    def workers_per_instance(self) -> int:
        if self.settings.workers_per_instance:
            return self.settings.workers_per_instance
        try:
            info = self.ec2.describe_instance_types(
                InstanceTypes=list(self.settings.instance_types)
            )
            return min(t["VCpuInfo"]["DefaultVCpus"] for t in info["InstanceTypes"])
        except (ClientError, ValueError, KeyError):
            return 2

    # ---------------------------------------------------------------- launching

    def launch(self, n: int) -> LaunchReport:
        """Start up to ``n`` instances (fewer if max_workers or max_cost say so)."""
        s = self.settings
        if self.paused():
            raise ConfigError(f"cluster {s.cluster!r} is paused: `cloudloop resume` first")
        wpi = self.workers_per_instance()
        room = max(0, math.ceil(s.max_workers / wpi) - len(self.instances()))
        report = LaunchReport(wanted=n)
        if room < n:
            report.note = f"max_workers = {s.max_workers} allows {room} more instance(s)"
            n = room
        stop_at = self._deadline(n)
        if stop_at is not None and stop_at <= time.time():
            report.note = f"max_cost ${s.max_cost:.2f} is spent: no instance started"
            return report
        if n <= 0:
            return report
        self.init()
        setup.wait_for_profile(self.iam, self.role)
        user_data = render(
            Bootstrap(
                backend=self.url, version=__version__, worker=self.worker, cluster=s.cluster,
                requirements=s.requirements, install=s.install, pip_args=s.pip_args,
                workers_per_instance=s.workers_per_instance, stop_at=stop_at,
            )
        )  # fmt: skip
        image = setup.resolve_image(self.ssm, s.image)
        group = setup.ensure_security_group(self.ec2, self.group_name, self._vpc(), self.tags)
        tid, version = setup.template_version(
            self.ec2, self.template_name, image, user_data, self.role, group, self.tags, s.key_name
        )
        nets = setup.subnets(self.ec2, s.subnets)
        zone_of = {x["SubnetId"]: x["AvailabilityZone"] for x in nets}
        markets = (
            ["spot", "on-demand"]
            if s.spot and s.on_demand_fallback
            else ["spot" if s.spot else "on-demand"]
        )
        want = n
        for market in markets:
            if want <= 0:
                break
            got = self._fleet(tid, version, nets, market, want, report)
            for inst in got:
                inst["zone"] = zone_of.get(inst.pop("subnet"), "?")
                self._record(inst)
            report.started += got
            want -= len(got)
        return report

    def _fleet(self, tid, version, nets, market, want, report) -> list[dict[str, Any]]:
        overrides = [
            {"InstanceType": t, "SubnetId": net["SubnetId"]}
            for t in self.settings.instance_types
            for net in nets
        ]
        kw: dict[str, Any] = {
            "Type": "instant",
            "LaunchTemplateConfigs": [
                {
                    "LaunchTemplateSpecification": {"LaunchTemplateId": tid, "Version": version},
                    "Overrides": overrides,
                }
            ],
            "TargetCapacitySpecification": {
                "TotalTargetCapacity": want,
                "DefaultTargetCapacityType": market,
            },
            "TagSpecifications": [
                {"ResourceType": "fleet", "Tags": self.tags},
                {"ResourceType": "instance", "Tags": self.tags},
            ],
        }
        if market == "spot":
            kw["SpotOptions"] = {"AllocationStrategy": "price-capacity-optimized"}
        else:
            kw["OnDemandOptions"] = {"AllocationStrategy": "lowest-price"}
        for attempt in range(6):
            try:
                resp = self.ec2.create_fleet(**kw)
                break
            except ClientError as e:
                # a brand-new instance profile is not visible to EC2 for a few seconds
                if "profile" in str(e).lower() and attempt < 5:
                    time.sleep(2 + 2 * attempt)
                    continue
                report.failed.append(f"{market}: {error_code(e)}: {e}")
                return []
        out = []
        for group in resp.get("Instances", []):
            o = group.get("LaunchTemplateAndOverrides", {}).get("Overrides", {})
            for iid in group.get("InstanceIds", []):
                out.append({"id": iid, "type": group.get("InstanceType") or o.get("InstanceType"),
                            "subnet": o.get("SubnetId"), "market": market})  # fmt: skip
        for err in resp.get("Errors", []):
            o = err.get("LaunchTemplateAndOverrides", {}).get("Overrides", {})
            where = f"{o.get('InstanceType', '?')} in {o.get('SubnetId', '?')}"
            report.failed.append(
                f"{market} {where}: {err.get('ErrorCode')}: {err.get('ErrorMessage', '')}"
            )
        return out

    # ---------------------------------------------------------------- what runs

    def instances(self, states: list[str] | None = None) -> list[dict[str, Any]]:
        filters = [{"Name": f"tag:{setup.TAG_CLUSTER}", "Values": [self.settings.cluster]}]
        filters.append({"Name": "instance-state-name", "Values": states or LIVE})
        out = []
        for page in self.ec2.get_paginator("describe_instances").paginate(Filters=filters):
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
        ids = (
            ids
            if ids is not None
            else [i["id"] for i in self.instances(LIVE + ["stopping", "stopped"])]
        )
        if ids:
            self.ec2.terminate_instances(InstanceIds=ids)
            self._ended(ids)
        return ids

    # ---------------------------------------------------------------- the bill

    @property
    def bill(self) -> prices.Ledger:
        return prices.Ledger(self.backend, self.settings.cluster)

    def _record(self, inst: dict[str, Any]) -> None:
        price = prices.hourly(
            self.ec2, inst["type"], inst["zone"], inst["market"] == "spot", self.settings.prices
        )
        self.bill.open(inst, price)

    def ledger(self) -> list[dict[str, Any]]:
        return self.bill.records()

    def _ended(self, ids: list[str]) -> None:
        self.bill.close(ids)

    def _current_bill(self) -> list[dict[str, Any]]:
        """The ledger, after closing the records of instances EC2 no longer runs."""
        recs = self.ledger()
        open_ids = [r["id"] for r in recs if not r.get("ended")]
        if open_ids:
            live = {i["id"] for i in self.instances()}
            gone = [i for i in open_ids if i not in live]
            if gone:
                self._ended(gone)
                recs = self.ledger()
        return recs

    def cost(self) -> tuple[float, float]:
        """(USD so far, USD per hour now); notices instances that ended meanwhile."""
        return prices.cost(self._current_bill())

    def job_cost(self, created: float, finished: float | None, eta: float | None) -> str:
        """One line for ``cloudloop status``: this cluster's cost while a job ran, and to go."""
        spent, burn = prices.cost(self._current_bill(), since=created, until=finished)
        line = f"cost: spent ${spent:.4f} on cluster {self.settings.cluster!r} while it ran"
        if finished is None:
            line += f", burning ${burn:.3f}/h"
            if eta is not None:
                line += f", about ${burn * eta / 3600:.4f} more to finish"
        if self.settings.max_cost:
            line += f" (max_cost ${self.settings.max_cost:.2f} for the cluster)"
        return line

    def _deadline(self, n: int) -> float | None:
        """When new workers must leave so the cluster stays within max_cost."""
        s = self.settings
        if s.max_cost is None:
            return None
        spent, burn = self.cost()
        top = max((prices.on_demand(t, s.prices) or 0.0) for t in s.instance_types) or 0.5
        burn += n * top
        if spent >= s.max_cost or burn <= 0:
            return time.time()
        return time.time() + 3600 * (s.max_cost - spent) / burn

    # ---------------------------------------------------------------- pause, down, cleanup

    def _flag(self) -> str:
        return keys.PAUSED

    def paused(self) -> bool:
        return paused(self.backend)

    def pause(self) -> None:
        self.backend.put_record(self._flag(), {"at": time.time()})

    def resume(self) -> None:
        self.backend.store.delete(self._flag())

    def _mine(self, items: list[dict]) -> list[dict]:
        """Only what carries this cluster's tag (never trust a server-side filter alone)."""
        name = self.settings.cluster
        return [
            x
            for x in items
            if any(t["Key"] == setup.TAG_CLUSTER and t["Value"] == name for t in x.get("Tags", []))
        ]

    def down(self, purge: bool = False) -> list[str]:
        """Terminate instances first (they cost money), then tidy fleets and spot requests.

        Each step reports its own failure and the next still runs: a fleet that
        cannot be deleted must not leave instances running.
        """
        done = []
        live = [i["id"] for i in self.instances(LIVE + ["stopping", "stopped"])]
        if live:
            self.ec2.terminate_instances(InstanceIds=live)
            self._ended(live)
            done.append(f"terminated {len(live)} instance(s)")
        tag_filter = [{"Name": f"tag:{setup.TAG_CLUSTER}", "Values": [self.settings.cluster]}]
        fleets = self._mine(self.ec2.describe_fleets(Filters=tag_filter).get("Fleets", []))
        gone = ("deleted", "deleted_terminating", "deleted_running")
        active = [f["FleetId"] for f in fleets if f.get("FleetState") not in gone]
        deleted = 0
        for fid in active:  # one at a time: an instant fleet with no instances left may refuse
            try:
                resp = self.ec2.delete_fleets(FleetIds=[fid], TerminateInstances=True)
            except ClientError as e:
                if "No instances" not in str(e):  # else: its instances are all gone already
                    done.append(f"could not delete fleet {fid}: {error_code(e)}: {e}")
                continue
            deleted += len(resp.get("SuccessfulFleetDeletions", []))
            for bad in resp.get("UnsuccessfulFleetDeletions", []):
                err = bad.get("Error", {})
                done.append(
                    f"could not delete fleet {fid}: {err.get('Code')}: {err.get('Message')}"
                )
        if deleted:
            done.append(f"deleted {deleted} fleet(s)")
        reqs = self.ec2.describe_spot_instance_requests(Filters=tag_filter)
        reqs = self._mine(reqs.get("SpotInstanceRequests", []))
        open_reqs = [r["SpotInstanceRequestId"] for r in reqs if r["State"] in ("open", "active")]
        if open_reqs:
            self.ec2.cancel_spot_instance_requests(SpotInstanceRequestIds=open_reqs)
            done.append(f"cancelled {len(open_reqs)} spot request(s)")
        if purge:
            done += self._purge()
        return done

    def _purge(self) -> list[str]:
        b = self.backend
        n = b.store.delete("")
        for name in (self.queue_name, f"{self.queue_name}-dlq"[:80]):
            try:
                url = self.sqs.get_queue_url(QueueName=name)["QueueUrl"]
                self.sqs.delete_queue(QueueUrl=url)
            except ClientError:
                pass
        self.s3.delete_object(
            Bucket=self.bucket, Key=(self.prefix + "/" if self.prefix else "") + ".secret.key"
        )
        out = [f"deleted {n} stored object(s) and queue {self.queue_name}"]
        try:
            self.s3.delete_bucket(Bucket=self.bucket)
            out.append(f"deleted bucket {self.bucket}")
        except ClientError:
            out.append(f"kept bucket {self.bucket} (it holds other data)")
        return out

    def cleanup(self, purge: bool = False) -> list[str]:
        done = self.down(purge=purge)
        try:
            self.ec2.delete_launch_template(LaunchTemplateName=self.template_name)
            done.append(f"deleted launch template {self.template_name}")
        except ClientError:
            pass
        done += setup.delete_role(self.iam, self.role)
        tag_filter = [{"Name": f"tag:{setup.TAG_CLUSTER}", "Values": [self.settings.cluster]}]
        for g in self._mine(
            self.ec2.describe_security_groups(Filters=tag_filter)["SecurityGroups"]
        ):
            try:
                self.ec2.delete_security_group(GroupId=g["GroupId"])
                done.append(f"deleted security group {g['GroupId']}")
            except ClientError as e:
                done.append(f"could not delete security group {g['GroupId']}: {error_code(e)}")
        return done


class Ec2Pool(WorkerPool):
    def __init__(self, cluster: Cluster, ids: list[str], report: LaunchReport):
        self.cluster, self.ids, self.report = cluster, ids, report

    def alive(self) -> int:
        live = {i["id"] for i in self.cluster.instances()}
        return sum(1 for i in self.ids if i in live)

    def stop(self, timeout: float = 10.0) -> None:
        live = {i["id"] for i in self.cluster.instances()}
        self.cluster.terminate([i for i in self.ids if i in live])


class Ec2Provider(Provider):
    name = "ec2"

    def __init__(self, options: dict[str, Any] | None = None, profile: str = "aws"):
        super().__init__(options)
        self.settings = Ec2Settings.from_options(profile, self.options)
        self.profile = profile

    def cluster(self, backend_url: str, worker: WorkerOptions) -> Cluster:
        if not backend_url.startswith("aws://"):
            raise ConfigError(f"the ec2 provider needs an aws:// backend, not {backend_url!r}")
        if secret_from_env() is not None:
            # instances read the key from the bucket (their role allows it); a key kept
            # elsewhere would not reach them, and they would sign with another one
            raise ConfigError(
                "CLOUDLOOP_SECRET / CLOUDLOOP_SECRET_FILE is set, but the ec2 provider's "
                "instances read the key from the bucket: unset it for ec2 profiles"
            )
        return Cluster(backend_url, self.settings, worker, self.profile)

    def start(self, backend_url: str, n: int, worker: WorkerOptions) -> Ec2Pool:
        cluster = self.cluster(backend_url, worker)
        report = cluster.launch(math.ceil(n / cluster.workers_per_instance()))
        return Ec2Pool(cluster, [s["id"] for s in report.started], report)
