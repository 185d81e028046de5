"""The ec2 provider against a real EC2/IAM/S3/SQS API server on loopback."""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import sys

import pytest

from cloudloop.config import load_profile
from cloudloop.errors import ConfigError
from cloudloop.providers.base import CLUSTER_ENV, Report
from cloudloop.providers.ec2 import Ec2Cluster, Ec2Provider, Ec2Settings
from cloudloop.providers.ec2_setup import TAG_CLUSTER

PROFILE = """
[profiles.aws]
backend = "{url}"
provider = "ec2"
instance_types = ["c7a.large", "c6a.large"]
spot = true
max_workers = {max_workers}
workers_per_instance = 1
requirements = ["scikit-learn>=1.3"]
prices = {{ "c7a.large" = 0.10, "c6a.large" = 0.08 }}
cluster = "{cluster}"
lease = "10s"
idle_exit = "1m"
{extra}
"""


@pytest.fixture
def profile(aws_url, tmp_path):
    def make(max_workers=4, extra=""):
        cluster = f"t{secrets.token_hex(3)}"
        text = PROFILE.format(url=aws_url, cluster=cluster, max_workers=max_workers, extra=extra)
        (tmp_path / "cloudloop.toml").write_text(text)
        p = load_profile("aws")
        return p, Ec2Provider(p.provider_options, p.name).cluster(p.backend, p.worker)

    return make


def cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "cloudloop", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_init_creates_least_privilege_identity_and_a_closed_group(profile):
    p, cluster = profile()
    assert isinstance(cluster, Ec2Cluster) and cluster.provider == "ec2"
    assert {"init", "cost", "job_cost", "follow"} <= cluster.capabilities()
    report = cluster.init()
    assert report.ok and any("IAM role" in x for x in report.lines)
    c = cluster.ctx
    doc = c.aws.iam.get_role_policy(RoleName=c.role, PolicyName="cloudloop-worker")[
        "PolicyDocument"
    ]
    doc = doc if isinstance(doc, dict) else json.loads(doc)
    resources = [r for st in doc["Statement"] for r in st["Resource"]]
    group_arn = f"autoScalingGroup:*:autoScalingGroupName/{c.group_name}"
    assert all(c.queue_name in r or c.bucket in r or r.endswith(group_arn)
               or r.endswith(f":alarm:{c.group_name}-work") for r in resources)  # fmt: skip
    assert not any(r == "*" for r in resources)
    # the group: instances may only end themselves within it (their capacity with them)
    (leave,) = [st for st in doc["Statement"] if any("autoscaling" in a for a in st["Action"])]
    assert leave["Action"] == ["autoscaling:TerminateInstanceInAutoScalingGroup"]
    (hold,) = [st for st in doc["Statement"] if any("cloudwatch" in a for a in st["Action"])]
    assert hold["Action"] == ["cloudwatch:DisableAlarmActions"]  # its scale-out alarm only
    assert hold["Resource"] == [f"arn:aws:cloudwatch:*:*:alarm:{c.group_name}-work"]
    assert leave["Condition"] == {
        "StringEquals": {"autoscaling:ResourceTag/cloudloop:cluster": c.cluster}
    }
    assert c.aws.iam.get_instance_profile(InstanceProfileName=c.role)["InstanceProfile"]["Roles"]
    (group,) = c.aws.ec2.describe_security_groups(GroupNames=[c.group_name])["SecurityGroups"]
    assert group["IpPermissions"] == []
    assert cluster.init() == report  # idempotent


def test_up_launches_tagged_spot_instances_with_clean_user_data(profile):
    p, cluster = profile()
    c, ec2 = cluster.ctx, cluster.ctx.aws.ec2
    report = cluster.launcher.launch(3)
    assert len(report.started) == 3 and all(s["market"] == "spot" for s in report.started)
    live = cluster.inventory.instances()
    assert {i["id"] for i in live} == {s["id"] for s in report.started}
    iid = live[0]["id"]
    desc = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    tags = {t["Key"]: t["Value"] for t in desc["Tags"]}
    assert tags[TAG_CLUSTER] == cluster.settings.cluster and tags["cloudloop:profile"] == "aws"
    ud = ec2.describe_instance_attribute(InstanceId=iid, Attribute="userData")["UserData"]["Value"]
    script = base64.b64decode(ud).decode()
    import cloudloop

    assert f"cloudloop[aws]=={cloudloop.__version__}" in script and "scikit-learn>=1.3" in script
    assert "--lease 10" in script and "--idle-exit 60" in script and "shutdown -h now" in script
    assert f"export {CLUSTER_ENV}={cluster.name}\n" in script  # into the workers' heartbeats
    for secret in ("testing", "AWS_SECRET", "AWS_ACCESS_KEY", cluster.backend.key.hex()):
        assert secret not in script
    versions = ec2.describe_launch_template_versions(LaunchTemplateName=c.template_name)
    data = versions["LaunchTemplateVersions"][0]["LaunchTemplateData"]
    assert data["InstanceInitiatedShutdownBehavior"] == "terminate"
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    assert data["IamInstanceProfile"]["Name"] == c.role
    ledger = cluster.billing.ledger()
    assert len(ledger) == 3 and all(
        r["price"] == pytest.approx(0.035) or r["price"] == pytest.approx(0.028) for r in ledger
    )


def test_max_workers_caps_the_cluster(profile):
    p, cluster = profile(max_workers=2)
    assert len(cluster.launcher.launch(5).started) == 2
    report = cluster.launcher.launch(1)
    assert report.started == [] and "max_workers" in report.note
    up = cluster.up(5)  # the group's maximum is max_workers too
    assert up.ok and "max 2 machine(s) of 1 worker(s)" in str(up)
    assert "desired capacity 0 -> 2 machine(s) (max_workers allows 2)" in up.lines, up.lines
    assert cluster.group.describe()["MaxSize"] == 2


def test_spot_shortage_falls_back_to_on_demand_and_says_what_it_could_not_get(
    profile, moto_endpoint
):
    from awsfaults import AwsFaults  # EC2's own answer, over HTTP (test_ec2_refusals.py: more)

    p, _ = profile()
    with AwsFaults(moto_endpoint) as faults:
        faults.refuse_pools(["c7a.large", "c6a.large"])  # no spot in any pool
        cluster = Ec2Provider(p.provider_options, p.name).cluster(faults.url(p.backend), p.worker)
        report = cluster.launcher.launch(2)
        assert faults.count("CreateFleet") == 2  # spot, then on-demand
    assert [s["market"] for s in report.started] == ["on-demand", "on-demand"]
    text = str(report)
    assert "could not get spot c7a.large in us-east-1a, us-east-1b" in text
    assert "could not get spot c6a.large in us-east-1a" in text
    assert text.count("no spot capacity (InsufficientInstanceCapacity)") == 2
    assert "2 x c7a.large on-demand" in text


def test_max_cost_sets_a_deadline_and_refuses_when_spent(profile):
    p, cluster = profile(extra="max_cost = 0.5")
    report = cluster.launcher.launch(1)
    ud = cluster.ctx.aws.ec2.describe_instance_attribute(
        InstanceId=report.started[0]["id"], Attribute="userData"
    )
    assert "--stop-at" in base64.b64decode(ud["UserData"]["Value"]).decode()
    rec = cluster.billing.ledger()[0]
    rec["launched"] -= 3600 * 24  # pretend it has run for a day: $0.84 > $0.50
    cluster.backend.put_record(cluster.ctx.bill().key(rec["id"]), rec)
    report = cluster.launcher.launch(1)
    assert report.started == [] and "max_cost" in report.note
    assert cluster.follow(0.01, until_idle=True, say=lambda line: None) == 3  # and says so
    assert cluster.inventory.instances() == []


def test_the_cluster_interface_reports_what_it_did(profile):
    """up() sets up the Auto Scaling group and returns; ls, down and cleanup return Reports."""
    p, cluster = profile(max_workers=3)
    r = cluster.up()
    assert r.ok and r.lines[0] == f"created Auto Scaling group {cluster.group.names.group}"
    assert any("follows queue" in x for x in r.lines) and "max 3 machine(s)" in str(r)
    g = cluster.group.describe()
    assert (g["MinSize"], g["MaxSize"], g["DesiredCapacity"]) == (0, 3, 0)
    assert cluster.up().lines[0] == f"updated Auto Scaling group {cluster.group.names.group}"
    assert "desired capacity 0 -> 3 machine(s) (max_workers allows 3)" in cluster.up(5).lines
    assert any("already" in x for x in cluster.up(1).lines)  # never fewer: machines at work
    r = cluster.ls()
    assert r.lines[0].startswith(f"group {cluster.group.names.group}: desired 3, in service 3")
    inst = [x for x in r.lines if x.startswith("i-")]
    assert len(inst) == 3 and all("$0.1000/h" in line for line in inst)  # moto: on-demand
    assert r.lines[-1].startswith(f"3 instance(s) in cluster {cluster.name!r}; spent $0.00,")
    assert len(cluster.billing.ledger()) == 3  # the group's: opened by the client that looked
    r = cluster.down()
    assert r.ok and r.lines[-1] == (
        f"deleted Auto Scaling group {cluster.group.names.group} and its 3 instance(s)"
    ), r.lines
    assert cluster.down() == Report(("nothing was running",))  # idempotent
    assert cluster.cost()[1] == 0.0  # their records are closed
    r = cluster.cleanup()
    assert r.ok and any("security group" in line for line in r.lines)
    assert cluster.cleanup() == Report(("nothing to clean up",))


def test_ls_down_and_cleanup_leave_nothing(profile, tmp_path):
    p, cluster = profile(extra="max_cost = 5.0")
    cluster.up(2)
    out = cli("ls", "--profile", "aws", cwd=tmp_path)
    assert out.returncode == 0 and "2 instance(s)" in out.stdout and "spent $" in out.stdout
    assert "scheduled cloudloop-max-cost: max 0 at " in out.stdout, out.stdout
    out = cli("down", "--profile", "aws", cwd=tmp_path)
    assert "and its 2 instance(s)" in out.stdout, out.stderr
    assert "deleted its scheduled actions (1)" in out.stdout, out.stdout
    assert (
        "deleted its alarms (2)" in out.stdout and "deleted its scaling policies (2)" in out.stdout
    )
    assert cluster.inventory.instances() == []
    assert cluster.group.leftovers() == []
    out = cli("cleanup", "--profile", "aws", "--purge", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "IAM role" in out.stdout and "security group" in out.stdout
    ec2, iam = cluster.ctx.aws.ec2, cluster.ctx.aws.iam
    assert (
        ec2.describe_security_groups(
            Filters=[{"Name": f"tag:{TAG_CLUSTER}", "Values": [cluster.settings.cluster]}]
        )["SecurityGroups"]
        == []
    )
    names = [r["RoleName"] for r in iam.list_roles()["Roles"]]
    assert cluster.ctx.role not in names
    asg, cw = cluster.ctx.aws.autoscaling, cluster.ctx.aws.cloudwatch
    name = cluster.group.names.group
    assert asg.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"] == []
    assert cw.describe_alarms(AlarmNamePrefix=name)["MetricAlarms"] == []


def test_pause_stops_launches(profile, tmp_path):
    p, cluster = profile()
    assert cli("pause", "--profile", "aws", cwd=tmp_path).returncode == 0
    assert cluster.paused()
    with pytest.raises(Exception, match="paused"):
        cluster.up(1)
    assert cli("resume", "--profile", "aws", cwd=tmp_path).returncode == 0
    assert len(cluster.launcher.launch(1).started) == 1


def test_bad_ec2_options_are_clear():
    with pytest.raises(ValueError, match="unknown option.*instance_type"):
        Ec2Settings.from_options("x", {"instance_type": "c7a.large"})
    with pytest.raises(ValueError, match="instance_types must be a list"):
        Ec2Settings.from_options("x", {"instance_types": "c7a.large"})
    with pytest.raises(ValueError, match="max_cost"):
        Ec2Settings.from_options("x", {"max_cost": -1})


def test_cluster_commands_without_credentials_or_endpoint_say_so_in_one_line(tmp_path):
    (tmp_path / "cloudloop.toml").write_text(
        '[profiles.aws]\nbackend = "aws://no-such-bucket/p?region=us-east-1&endpoint=http://127.0.0.1:9"\n'
        'provider = "ec2"\ninstance_types = ["c7a.large"]\n'
    )
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_SHARED_CREDENTIALS_FILE="/nonexistent", AWS_CONFIG_FILE="/nonexistent",
               AWS_EC2_METADATA_DISABLED="true")  # fmt: skip
    for args in (("up", "-n", "1"), ("ls",), ("down",)):
        r = subprocess.run([sys.executable, "-m", "cloudloop", *args, "--profile", "aws"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert "no AWS credentials found" in r.stderr
    env.update(AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="y")
    r = subprocess.run([sys.executable, "-m", "cloudloop", "up", "-n", "1", "--profile", "aws"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "cannot reach AWS" in r.stderr and "127.0.0.1:9" in r.stderr


def test_resume_after_the_max_cost_deadline_keeps_the_group_at_zero(profile):
    p, cluster = profile(extra="max_cost = 0.5")
    cluster.up()
    asg, name = cluster.ctx.aws.autoscaling, cluster.group.names.group
    # the deadline came: AWS ran the scheduled action (set to zero, then removed it)
    asg.update_auto_scaling_group(AutoScalingGroupName=name, MinSize=0, MaxSize=0,
                                  DesiredCapacity=0)  # fmt: skip
    asg.delete_scheduled_action(AutoScalingGroupName=name, ScheduledActionName="cloudloop-max-cost")
    cluster.pause()
    said = cluster.resume()
    assert "stays at zero, its max_cost deadline has passed" in str(said), said
    assert cluster.group.describe()["MaxSize"] == 0


def test_down_leaves_a_group_of_the_same_name_that_is_not_the_clusters_alone(profile):
    p, cluster = profile()
    asg, cw = cluster.ctx.aws.autoscaling, cluster.ctx.aws.cloudwatch
    name = cluster.group.names.group
    ec2 = cluster.ctx.aws.ec2
    tid = ec2.create_launch_template(
        LaunchTemplateName=f"other-{name}",
        LaunchTemplateData={"ImageId": "ami-12c6146b", "InstanceType": "c7a.large"},
    )["LaunchTemplate"]["LaunchTemplateId"]
    subnet = ec2.describe_subnets()["Subnets"][0]["SubnetId"]
    asg.create_auto_scaling_group(
        AutoScalingGroupName=name,
        MinSize=0,
        MaxSize=1,
        LaunchTemplate={"LaunchTemplateId": tid},
        VPCZoneIdentifier=subnet,
    )  # fmt: skip  (untagged: not ours)
    asg.put_scaling_policy(AutoScalingGroupName=name, PolicyName="theirs",
                           AdjustmentType="ChangeInCapacity", ScalingAdjustment=1)  # fmt: skip
    cw.put_metric_alarm(AlarmName=f"{name}-work", MetricName="CPUUtilization",
                        Namespace="AWS/EC2", Statistic="Average", Period=60,
                        EvaluationPeriods=1, Threshold=1.0,
                        ComparisonOperator="GreaterThanThreshold")  # fmt: skip
    assert cluster.group.describe() is None
    cluster.down()
    assert asg.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"]
    assert asg.describe_policies(AutoScalingGroupName=name)["ScalingPolicies"]
    assert cw.describe_alarms(AlarmNames=[f"{name}-work"])["MetricAlarms"]
    asg.delete_auto_scaling_group(AutoScalingGroupName=name, ForceDelete=True)
    asg.delete_policy(AutoScalingGroupName=name, PolicyName="theirs")
    cw.delete_alarms(AlarmNames=[f"{name}-work"])


def test_max_cost_with_a_type_of_no_known_price_is_refused(profile):
    p, cluster = profile(extra="max_cost = 5.0")
    cluster.settings.prices.clear()
    object.__setattr__(cluster.settings, "instance_types", ("c7a.large", "x9z.weird"))
    with pytest.raises(ConfigError, match="x9z.weird has none"):
        cluster.up()
