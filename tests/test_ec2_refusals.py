"""AWS's everyday refusals of a launch, each said in one line.

A real :class:`Ec2Cluster` (and, for some rows, ``cloudloop up -n 2`` as a
subprocess) launches through tests/awsfaults.py, an HTTP proxy in front of
moto_server that answers as EC2 does when it refuses: an error body and status
for the whole request, or errorSet entries for pools without capacity. One row
per refusal: what is injected, the lines the launch report says after "could not
get", and the markets of what got started; every row also checks that what runs
in the cluster is exactly what the report says started.
"""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import boto3
import pytest
from awsfaults import AwsFaults
from botocore.config import Config

from cloudloop.config import load_profile
from cloudloop.providers import ec2_fleet
from cloudloop.providers.ec2 import Ec2Cluster, Ec2Provider

PROFILE = """
[profiles.aws]
backend = "{url}"
provider = "ec2"
instance_types = ["c7a.large", "c6a.large"]
spot = true
max_workers = 4
workers_per_instance = 1
prices = {{ "c7a.large" = 0.10, "c6a.large" = 0.08 }}
cluster = "{cluster}"
idle_exit = "1m"
install = "cloudloop[aws]"  # from the index: no wheelhouse to publish, none of this needs one
"""

THROTTLED = ("RequestLimitExceeded", "Request limit exceeded.", 503)
UNAVAILABLE = ("Unavailable", "The server is overloaded and can't handle the request.", 503)
PROFILE_LAG = "Value ({profile}) for parameter iamInstanceProfile.name is invalid. Invalid IAM Instance Profile name"  # fmt: skip
VCPU = ("You have requested more vCPU capacity than your current vCPU limit of 32 allows for the "
        "instance bucket that the specified instance type belongs to. Please visit "
        "http://aws.amazon.com/contact-us/ec2-request to request an adjustment to this limit.")  # fmt: skip
DENIED = ("You are not authorized to perform this operation. User: arn:aws:iam::123456789012:user/dev "
          "is not authorized to perform: ec2:CreateFleet because no identity-based policy allows "
          "the ec2:CreateFleet action. Encoded authorization failure message: 4fQp2ZkX9vJ0b-Ew")  # fmt: skip
DENIED_LINE = ("any instance: EC2 refused the launch: " + DENIED.split(" Encoded")[0]
               + " (UnauthorizedOperation); let these credentials call ec2:CreateFleet, "
               "ec2:RunInstances, ec2:CreateTags and iam:PassRole on the workers' role")  # fmt: skip
NO_IMAGE = "The image id '[ami-0123456789abcdef0]' does not exist"
ICE = "no spot capacity (InsufficientInstanceCapacity)"
VCPU_HINT = ("ask AWS for a higher 'Running On-Demand Standard instances' vCPU quota "
             "(Service Quotas) or lower max_workers")  # fmt: skip


@dataclass
class Pools:
    """What a row's injection may name: the profile's subnets, zones and profile."""

    subnets: list[str]
    profile: str


@dataclass
class Row:
    name: str
    inject: Callable[[AwsFaults, Pools], None]
    said: list[str]  # {zones}: every zone; {zone}: one; {id}: an instance; {n}: a number
    started: list[str]  # markets, sorted
    fleets: int | None = None  # CreateFleet requests the proxy saw
    bound: float = 10.0  # ec2_fleet.BOUND for the row (FIRST_WAIT: a sixtieth of it)
    spot: bool = True
    one_subnet: bool = False  # the profile names the first subnet only
    extra: Callable[[Ec2Cluster, AwsFaults, list[str]], None] | None = field(
        default=None, repr=False
    )


def _stopped_one_is_terminated(cluster: Ec2Cluster, faults: AwsFaults, said: list[str]) -> None:
    (iid,) = re.findall(r"(i-[0-9a-f]+) stopped at once", " ".join(said))
    ec2 = cluster.ctx.aws.ec2
    state = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["State"]
    assert state["Name"] in ("shutting-down", "terminated")


def _every_request_counted(cluster: Ec2Cluster, faults: AwsFaults, said: list[str]) -> None:
    (asked,) = re.findall(r"\((\d+) requests\)", said[0])
    assert int(asked) == faults.count("CreateFleet")  # botocore's own retries included


ROWS = [
    Row("no spot capacity in any pool: on-demand instead",
        lambda f, p: f.refuse_pools(["c7a.large", "c6a.large"]),
        [f"spot c7a.large in {{zones}}: {ICE}", f"spot c6a.large in {{zones}}: {ICE}"],
        ["on-demand", "on-demand"], fleets=2),
    Row("one pool without spot capacity: the fleet took another, nothing to say",
        lambda f, p: f.refuse_pools([("c7a.large", p.subnets[0])]),
        [], ["spot", "spot"], fleets=1),
    Row("the spot quota used up, and on-demand over the vCPU quota",
        lambda f, p: (f.refuse_pools(None, code="MaxSpotInstanceCountExceeded",
                                     message="Max spot instance count exceeded"),
                      f.refuse_pools(None, "on-demand", "VcpuLimitExceeded", VCPU)),
        ["spot instances: Max spot instance count exceeded (MaxSpotInstanceCountExceeded); ask "
         "AWS for a higher 'All Standard Spot Instance Requests' vCPU quota (Service Quotas) or "
         "lower max_workers", f"on-demand instances: {VCPU} (VcpuLimitExceeded); {VCPU_HINT}"],
        [], fleets=2),
    Row("one type without spot capacity, the other's subnet out of addresses: on-demand",
        lambda f, p: (f.refuse_pools(["c7a.large"]),
                      f.refuse_pools(["c6a.large"], code="InsufficientFreeAddressesInSubnet",
                                     message="There are not enough free addresses in subnet "
                                     f"'{p.subnets[0]}' to satisfy the requested number of "
                                     "instances.")),
        [f"spot c7a.large in {{zone}}: {ICE}",
         "spot instances in {zone}: no free IP address in subnet {subnet} "
         "(InsufficientFreeAddressesInSubnet)"],
        ["on-demand", "on-demand"], one_subnet=True),
    Row("throttled, then through",
        lambda f, p: f.fail("CreateFleet", *THROTTLED, times=4),
        [], ["spot", "spot"], fleets=5),
    Row("throttled past the bound: said once, on-demand not asked",
        lambda f, p: f.fail("CreateFleet", *THROTTLED, times=None),
        ["any instance: EC2 throttled the launch (RequestLimitExceeded); retried for {n} s "
         "({n} requests); try again later"],
        [], bound=1.5, extra=_every_request_counted),
    Row("EC2 unavailable (503) past the bound",
        lambda f, p: f.fail("CreateFleet", *UNAVAILABLE, times=None),
        ["any instance: EC2 was unavailable (Unavailable); retried for {n} s ({n} requests); "
         "try again later"],
        [], bound=1.5, extra=_every_request_counted),
    Row("instance profile not accepted yet (raised), then accepted",
        lambda f, p: f.fail("CreateFleet", "InvalidParameterValue",
                            PROFILE_LAG.format(profile=p.profile), times=2),
        [], ["spot", "spot"], fleets=3),
    Row("instance profile not accepted yet (in the fleet's errors), then accepted",
        lambda f, p: f.refuse_pools(None, None, "InvalidParameterValue",
                                    PROFILE_LAG.format(profile=p.profile), times=2),
        [], ["spot", "spot"], fleets=3),
    Row("instance profile never accepted: said once, naming it",
        lambda f, p: f.refuse_pools(None, None, "InvalidParameterValue",
                                    PROFILE_LAG.format(profile=p.profile)),
        ["any instance: EC2 does not accept the instance profile '{profile}' yet "
         "(InvalidParameterValue: " + PROFILE_LAG + "); waited {n} s; try again in a minute, "
         "or run `cloudloop aws init` if the profile was deleted"],
        [], bound=1.5),
    Row("not authorized: said once, not retried, on-demand not asked",
        lambda f, p: f.fail("CreateFleet", "UnauthorizedOperation", DENIED, 403, times=None),
        [DENIED_LINE], [], fleets=1),
    Row("the image is gone",
        lambda f, p: f.fail("CreateFleet", "InvalidAMIID.NotFound", NO_IMAGE, times=None),
        ["any instance: EC2 refused the launch: " + NO_IMAGE + " (InvalidAMIID.NotFound); "
         "check the profile's image (it must exist in this region); unset it for Amazon Linux"],
        [], fleets=1),
    Row("on-demand over the vCPU quota, spot off",
        lambda f, p: f.fail("CreateFleet", "VcpuLimitExceeded", VCPU, times=None),
        [f"on-demand instances: {VCPU} (VcpuLimitExceeded); {VCPU_HINT}"],
        [], fleets=1, spot=False),
    Row("instances that ended or stopped as soon as they started: said, the stopped one ended",
        lambda f, p: (f.end_at_once(1), f.end_at_once(1, how="stop")),
        ["spot c7a.large in {zone}: {id} ended at once (Client.UserInitiatedShutdown: User "
         "initiated shutdown)",
         "on-demand c7a.large in {zone}: {id} stopped at once (Client.UserInitiatedShutdown: "
         "User initiated shutdown); terminated it"],
        ["spot"], fleets=2, extra=_stopped_one_is_terminated),
    Row("EC2 started fewer than asked and said nothing: said, the rest on-demand",
        lambda f, p: f.deliver_at_most(1),
        ["1 more spot instance(s): EC2 started 1 of 2 and gave no reason"],
        ["on-demand", "spot"], fleets=2),
]  # fmt: skip


@pytest.fixture
def faults(moto_endpoint):
    with AwsFaults(moto_endpoint) as f:
        yield f


@pytest.fixture
def make_profile(faults, aws_url, tmp_path):
    def make(spot: bool = True, one_subnet: bool = False) -> tuple[Ec2Cluster, Pools]:
        ec2 = boto3.client("ec2", endpoint_url=faults.endpoint, region_name="us-east-1")
        vpc = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]
        nets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc["VpcId"]]}])
        subnets = [s["SubnetId"] for s in nets["Subnets"]][: 1 if one_subnet else None]
        text = PROFILE.format(url=faults.url(aws_url), cluster=f"t{secrets.token_hex(3)}")
        text = text.replace("spot = true", f"spot = {str(spot).lower()}")
        if one_subnet:
            text += f'subnets = ["{subnets[0]}"]\n'
        (tmp_path / "cloudloop.toml").write_text(text)
        p = load_profile("aws")
        cluster = Ec2Provider(p.provider_options, p.name).cluster(p.backend, p.worker)
        return cluster, Pools(subnets, cluster.ctx.role)

    return make


def _pattern(text: str, pools: Pools, zones: list[str]) -> str:
    rx = re.escape(text)
    for name, part in {
        "zones": re.escape(", ".join(sorted(zones))),
        "zone": r"us-east-1[a-z]",
        "id": r"i-[0-9a-f]+",
        "subnet": re.escape(pools.subnets[0]),
        "n": r"\d+",
        "profile": re.escape(pools.profile),
    }.items():
        rx = rx.replace(re.escape("{" + name + "}"), part)
    return rx


def _zones(cluster: Ec2Cluster, subnets: list[str]) -> list[str]:
    found = cluster.ctx.aws.ec2.describe_subnets(SubnetIds=subnets)["Subnets"]
    return sorted({s["AvailabilityZone"] for s in found})


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_a_refusal_is_said_in_one_line(row, faults, make_profile, monkeypatch):
    monkeypatch.setattr(ec2_fleet, "BOUND", row.bound)
    monkeypatch.setattr(ec2_fleet, "FIRST_WAIT", row.bound / 60)
    cluster, pools = make_profile(spot=row.spot, one_subnet=row.one_subnet)
    zones = _zones(cluster, pools.subnets)
    row.inject(faults, pools)
    faults.seen.clear()
    report = cluster.launcher.launch(2)
    said = list(report.failed)
    assert len(said) == len(row.said), str(report)
    for line, want in zip(said, row.said):
        assert re.fullmatch(_pattern(want, pools, zones), line), f"\n{line}\n{want}"
        assert "\n" not in line and "Traceback" not in line
    assert sorted(s["market"] for s in report.started) == row.started, str(report)
    if row.fleets is not None:
        assert faults.count("CreateFleet") == row.fleets
    live = {i["id"] for i in cluster.inventory.instances()}
    assert live == {s["id"] for s in report.started}  # nothing runs that was not said
    if row.extra:
        row.extra(cluster, faults, said)


def test_waiting_is_bounded_at_a_minute_in_all(faults, moto_endpoint):
    """With the default bound and a clock that only sleeping moves: at most 60 s of
    waiting, then one line; the next request of the same launch asks nothing."""
    ec2 = boto3.client("ec2", endpoint_url=faults.endpoint, region_name="us-east-1",
                       config=Config(retries={"total_max_attempts": 1}))  # fmt: skip
    lt = ec2.create_launch_template(
        LaunchTemplateName=f"t{secrets.token_hex(3)}",
        LaunchTemplateData={"ImageId": "ami-12c6146b"},
    )["LaunchTemplate"]
    nets = [{"SubnetId": s["SubnetId"], "AvailabilityZone": s["AvailabilityZone"]}
            for s in ec2.describe_subnets()["Subnets"][:2]]  # fmt: skip
    configs = [ec2_fleet.FleetConfig(lt["LaunchTemplateId"], "1", ("c7a.large",))]
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    for inject in (
        lambda: faults.fail("CreateFleet", *THROTTLED, times=None),
        lambda: faults.refuse_pools(None, None, "InvalidParameterValue",
                                    PROFILE_LAG.format(profile="p")),
    ):  # fmt: skip
        faults.clear()
        inject()
        now[0], slept[:] = 0.0, []
        failed: list[str] = []
        got = ec2_fleet.request(ec2, configs, nets, "spot", 2, [], failed, sleep, lambda: now[0])
        assert got == [] and len(failed) == 1
        assert sum(slept) == pytest.approx(ec2_fleet.BOUND) and ec2_fleet.BOUND == 60.0, slept
        assert all(0 < s <= 20 for s in slept)
        asked = faults.count("CreateFleet")
        assert asked == len(slept) + 1
        assert re.search(r"(retried for|waited) (\d+) s", failed[0])
        assert ec2_fleet.request(ec2, configs, nets, "on-demand", 2, [], failed) == []
        assert faults.count("CreateFleet") == asked and len(failed) == 1


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "cloudloop", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


ASG_DENIED = ("User: arn:aws:iam::123456789012:user/dev is not authorized to perform: "
              "autoscaling:CreateAutoScalingGroup on resource: arn:aws:autoscaling:us-east-1:"
              "123456789012:autoScalingGroup:*:autoScalingGroupName/cloudloop-x because no "
              "identity-based policy allows the autoscaling:CreateAutoScalingGroup action")  # fmt: skip


@dataclass
class GroupRow:
    name: str
    action: str
    code: str
    message: str
    status: int
    said: str  # a pattern of the one line `cloudloop up` says
    group_made: bool  # whether the group exists afterwards (a later step was refused)


GROUP_ROWS = [
    GroupRow("no right to create the group", "CreateAutoScalingGroup", "AccessDenied", ASG_DENIED,
             403, r"cloudloop: error: AWS refused CreateAutoScalingGroup \(AccessDenied\): .*"
             r"autoscaling:CreateAutoScalingGroup action; let these credentials manage Auto "
             r"Scaling groups .* `cloudloop up --foreground`", False),
    GroupRow("no right to put an alarm", "PutMetricAlarm", "AccessDenied",
             "User: arn:aws:iam::123456789012:user/dev is not authorized to perform: "
             "cloudwatch:PutMetricAlarm", 403,
             r"cloudloop: error: AWS refused PutMetricAlarm \(AccessDenied\): .*"
             r"cloudwatch:PutMetricAlarm; let these .*--foreground`", True),
    GroupRow("throttled for good", "CreateAutoScalingGroup", "Throttling", "Rate exceeded", 400,
             r"cloudloop: error: AWS refused set up for cluster 't[0-9a-f]+': Throttling: .*"
             r"CreateAutoScalingGroup operation \(reached max retries: \d+\): Rate exceeded",
             False),
]  # fmt: skip


@pytest.mark.parametrize("row", GROUP_ROWS, ids=[r.name for r in GROUP_ROWS])
def test_cloudloop_up_says_a_group_refusal_in_one_line(row, faults, make_profile, tmp_path):
    """`cloudloop up` sets up the Auto Scaling group: a refusal of any step is one line and
    exit status 2 (the CLI's for an error), no traceback; `down` then removes whatever was made before it."""
    cluster, _ = make_profile()
    faults.fail(row.action, row.code, row.message, row.status, times=None)
    r = cli("up", "--profile", "aws", cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert re.fullmatch(row.said, line), line
    assert (cluster.group.describe() is not None) == row.group_made
    faults.clear()
    d = cli("down", "--profile", "aws", cwd=tmp_path)
    assert d.returncode == 0, d.stdout + d.stderr
    assert cluster.group.leftovers() == []
