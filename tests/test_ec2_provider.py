"""The ec2 provider against a real EC2/IAM/S3/SQS API server on loopback."""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import sys

import pytest

from cloudloop.config import load_profile
from cloudloop.providers.ec2 import Ec2Provider, Ec2Settings
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
    lines = cluster.init()
    assert any("IAM role" in x for x in lines)
    doc = cluster.iam.get_role_policy(RoleName=cluster.role, PolicyName="cloudloop-worker")[
        "PolicyDocument"
    ]
    doc = doc if isinstance(doc, dict) else json.loads(doc)
    resources = [r for st in doc["Statement"] for r in st["Resource"]]
    assert all(cluster.queue_name in r or cluster.bucket in r for r in resources)
    assert not any(r == "*" for r in resources)
    assert cluster.iam.get_instance_profile(InstanceProfileName=cluster.role)["InstanceProfile"][
        "Roles"
    ]
    (group,) = cluster.ec2.describe_security_groups(GroupNames=[cluster.group_name])[
        "SecurityGroups"
    ]
    assert group["IpPermissions"] == []
    assert cluster.init() == lines  # idempotent


def test_up_launches_tagged_spot_instances_with_clean_user_data(profile):
    p, cluster = profile()
    report = cluster.launch(3)
    assert len(report.started) == 3 and all(s["market"] == "spot" for s in report.started)
    live = cluster.instances()
    assert {i["id"] for i in live} == {s["id"] for s in report.started}
    iid = live[0]["id"]
    desc = cluster.ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    tags = {t["Key"]: t["Value"] for t in desc["Tags"]}
    assert tags[TAG_CLUSTER] == cluster.settings.cluster and tags["cloudloop:profile"] == "aws"
    ud = cluster.ec2.describe_instance_attribute(InstanceId=iid, Attribute="userData")["UserData"][
        "Value"
    ]
    script = base64.b64decode(ud).decode()
    import cloudloop

    assert f"cloudloop[aws]=={cloudloop.__version__}" in script and "scikit-learn>=1.3" in script
    assert "--lease 10" in script and "--idle-exit 60" in script and "shutdown -h now" in script
    for secret in ("testing", "AWS_SECRET", "AWS_ACCESS_KEY", cluster.backend.key.hex()):
        assert secret not in script
    versions = cluster.ec2.describe_launch_template_versions(
        LaunchTemplateName=cluster.template_name
    )
    data = versions["LaunchTemplateVersions"][0]["LaunchTemplateData"]
    assert data["InstanceInitiatedShutdownBehavior"] == "terminate"
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    assert data["IamInstanceProfile"]["Name"] == cluster.role
    ledger = cluster.ledger()
    assert len(ledger) == 3 and all(
        r["price"] == pytest.approx(0.035) or r["price"] == pytest.approx(0.028) for r in ledger
    )


def test_max_workers_caps_the_cluster(profile):
    p, cluster = profile(max_workers=2)
    assert len(cluster.launch(5).started) == 2
    report = cluster.launch(1)
    assert report.started == [] and "max_workers" in report.note


def test_spot_shortage_falls_back_to_on_demand_and_says_what_it_could_not_get(profile):
    p, cluster = profile()

    class Ok:
        status_code = 200

    def no_spot(params, **kwargs):  # the request as botocore is about to send it
        body = params["body"]
        if isinstance(body, (bytes, str)):
            from urllib.parse import parse_qs

            body = {
                k: v[0]
                for k, v in parse_qs(body if isinstance(body, str) else body.decode()).items()
            }
        if body.get("TargetCapacitySpecification.DefaultTargetCapacityType") == "spot":
            errors = [
                {
                    "LaunchTemplateAndOverrides": {
                        "Overrides": {"InstanceType": t, "SubnetId": "subnet-x"}
                    },
                    "Lifecycle": "spot",
                    "ErrorCode": "InsufficientInstanceCapacity",
                    "ErrorMessage": "There is no Spot capacity available that matches your request.",
                }
                for t in ("c7a.large", "c6a.large")
            ]
            return Ok(), {"Instances": [], "Errors": errors}
        return None

    cluster.ec2.meta.events.register("before-call.ec2.CreateFleet", no_spot)
    report = cluster.launch(2)
    assert [s["market"] for s in report.started] == ["on-demand", "on-demand"]
    text = str(report)
    assert "could not get spot c7a.large" in text and "InsufficientInstanceCapacity" in text
    assert "2 x c7a.large on-demand" in text or "on-demand" in text


def test_max_cost_sets_a_deadline_and_refuses_when_spent(profile):
    p, cluster = profile(extra="max_cost = 0.5")
    report = cluster.launch(1)
    ud = cluster.ec2.describe_instance_attribute(
        InstanceId=report.started[0]["id"], Attribute="userData"
    )
    assert "--stop-at" in base64.b64decode(ud["UserData"]["Value"]).decode()
    rec = cluster.ledger()[0]
    rec["launched"] -= 3600 * 24  # pretend it has run for a day: $0.84 > $0.50
    cluster.backend.put_record(cluster.bill.key(rec["id"]), rec)
    report = cluster.launch(1)
    assert report.started == [] and "max_cost" in report.note


def test_ls_down_and_cleanup_leave_nothing(profile, tmp_path):
    p, cluster = profile()
    cluster.launch(2)
    out = cli("ls", "--profile", "aws", cwd=tmp_path)
    assert out.returncode == 0 and "2 instance(s)" in out.stdout and "spent $" in out.stdout
    out = cli("down", "--profile", "aws", cwd=tmp_path)
    assert "terminated 2 instance(s)" in out.stdout, out.stderr
    assert cluster.instances() == []
    out = cli("cleanup", "--profile", "aws", "--purge", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "IAM role" in out.stdout and "security group" in out.stdout
    assert (
        cluster.ec2.describe_security_groups(
            Filters=[{"Name": f"tag:{TAG_CLUSTER}", "Values": [cluster.settings.cluster]}]
        )["SecurityGroups"]
        == []
    )
    names = [r["RoleName"] for r in cluster.iam.list_roles()["Roles"]]
    assert cluster.role not in names


def test_pause_stops_launches(profile, tmp_path):
    p, cluster = profile()
    assert cli("pause", "--profile", "aws", cwd=tmp_path).returncode == 0
    with pytest.raises(Exception, match="paused"):
        cluster.launch(1)
    assert cli("resume", "--profile", "aws", cwd=tmp_path).returncode == 0
    assert len(cluster.launch(1).started) == 1


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
