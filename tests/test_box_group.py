"""The cluster lives in AWS: an Auto Scaling group follows the queue with no client running.

In the cloud-in-a-box (cloudbox.py), with asgbox.py standing in for the alarms,
policies and scheduled actions AWS would run: ``cloudloop up`` sets the group up
and returns, the client that submits a job exits at once, and what happens next
is AWS's doing (the stand-in's) and the instances' own.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from helpers import wait_for

from cloudloop.backends import open_backend
from cloudloop.config import load_profile
from cloudloop.job import attach_job
from cloudloop.providers import cluster_for

PROFILE = """
[profiles.aws]
backend = "aws://box-{tag}/jobs?region=us-east-1&endpoint={endpoint}"
provider = "ec2"
instance_types = ["c7a.large", "c6a.large"]
spot = true
max_workers = 4
workers_per_instance = 2
prices = {{ "c7a.large" = 0.10, "c6a.large" = 0.08 }}
lease = "12s"
heartbeat = "1s"
idle_exit = "8s"
"""

SUBMIT = """
import sys, time
import cloudloop as cl

def square(i, seconds=float(sys.argv[2])):  # its default travels with it
    time.sleep(seconds)
    return i * i

job = cl.Executor(profile="aws").map_job(square, range(int(sys.argv[1])))
print(job.id)
"""


def cli(*args, cwd, timeout=120, ok=True):
    r = subprocess.run([sys.executable, "-m", "cloudloop", *args], cwd=cwd,
                       capture_output=True, text=True, timeout=timeout)  # fmt: skip
    if ok:
        assert r.returncode == 0, f"cloudloop {' '.join(args)}:\n{r.stdout}\n{r.stderr}"
    return r


def _home(box, tmp_path: Path, extra: str = "") -> Path:
    home = tmp_path / "client"
    home.mkdir()
    text = PROFILE.format(tag=os.getpid(), endpoint=box.endpoint) + extra
    (home / "cloudloop.toml").write_text(text)
    (home / "submit.py").write_text(SUBMIT)
    os.chdir(home)
    return home


def _submit(home: Path, n: int, seconds: float = 0.05):
    """A job submitted by a client process that has exited by the time this returns."""
    r = subprocess.run([sys.executable, "submit.py", str(n), str(seconds)], cwd=home,
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    return attach_job(open_backend(load_profile("aws").backend), r.stdout.strip())


def _cluster():
    return cluster_for(load_profile("aws"))


def _group(cluster) -> dict:
    g = cluster.group.describe()
    assert g is not None
    return g


def _in_service(cluster) -> int:
    return sum(1 for i in _group(cluster)["Instances"] if i["LifecycleState"] == "InService")


def test_a_job_whose_client_left_gets_machines_finishes_the_group_returns_to_zero_and_obeys(
    box, tmp_path
):
    """...then pause, resume, down and cleanup leave what the docs say."""
    home = _home(box, tmp_path)
    t0 = time.monotonic()
    out = cli("up", "--profile", "aws", cwd=home).stdout
    assert time.monotonic() - t0 < 60 and "created Auto Scaling group" in out, out
    cluster = _cluster()
    g = _group(cluster)
    assert (g["MinSize"], g["MaxSize"], g["DesiredCapacity"]) == (0, 2, 0)
    assert g["CapacityRebalance"] is True
    spread = g["MixedInstancesPolicy"]["InstancesDistribution"]
    assert spread["SpotAllocationStrategy"] == "price-capacity-optimized"
    assert spread["OnDemandPercentageAboveBaseCapacity"] == 0
    time.sleep(4)  # a compressed minute or more of an empty queue: nothing starts
    assert box.running() == [] and _group(cluster)["DesiredCapacity"] == 0

    job = _submit(home, 300)  # its client has exited: nothing of ours runs on this side
    assert job.results(timeout=240) == [i * i for i in range(300)]
    assert sorted(job.outcomes()) == list(range(300))  # every result, once
    wait_for(lambda: not box.running(), timeout=120, what="every machine to leave")
    g = _group(cluster)
    assert g["DesiredCapacity"] == 0 and _in_service(cluster) == 0
    assert len(box.history) == 2  # max_workers 4, two workers a machine; none replaced
    for iid in box.history:  # each left when idle, ending itself within the group
        log = (box.root / iid / "opt" / "bootstrap.log").read_text()
        assert f"{iid} ends within group cloudloop-" in log, log[-1500:]
    acts = box.autoscaling.activities
    assert acts[0]["from"] == 0 and acts[0]["to"] == 2 and "-out" in acts[0]["policy"], acts
    assert not [a for a in acts if "replac" in a["cause"].lower()], acts
    bill = {r["id"]: r for r in cluster.billing.ledger()}
    assert set(bill) == set(box.history)  # the instances wrote their own records
    assert all(r["ended_by"] == "instance" and r["ended"] > r["launched"] for r in bill.values())
    ls = cli("ls", "--profile", "aws", cwd=home).stdout
    assert f"group {cluster.group.names.group}: desired 0, in service 0" in ls, ls
    assert box.autoscaling.errors == [] and box.errors == []

    # pause, resume, down and cleanup, on the same cluster
    job = _submit(home, 40, 0.5)
    cli("up", "--profile", "aws", "-n", "2", cwd=home)  # one machine of two workers now
    wait_for(lambda: box.running(), timeout=60, what="a machine")
    wait_for(lambda: job.status().done > 0, timeout=90, what="work under way")

    out = cli("pause", "--profile", "aws", cwd=home).stdout
    serving = int(re.search(r"starts nothing more \(max (\d+), its machines in service", out)[1])
    g = _group(cluster)
    assert g["MaxSize"] == serving >= 1  # what is in service: nothing at work is ended
    booted = len(box.history)
    alarms = cluster.ctx.aws.cloudwatch.describe_alarms(AlarmNames=cluster.group.names.alarms)
    work = [a for a in alarms["MetricAlarms"] if a["AlarmName"].endswith("-work")]
    assert work[0]["ActionsEnabled"] is False
    # paused, the machine's workers finish what they hold and leave; the group shrinks
    wait_for(lambda: not box.running(), timeout=120, what="the machine to leave, paused")
    assert _group(cluster)["DesiredCapacity"] == 0 and job.status().done < 40
    time.sleep(5)  # tasks wait, but the group starts nothing while paused
    assert len(box.history) == booted and not box.running()

    out = cli("resume", "--profile", "aws", cwd=home).stdout
    assert "max 2 again" in out, out
    assert job.results(timeout=180) == [i * i for i in range(40)]  # the group came back
    assert len(box.history) > booted

    out = cli("down", "--profile", "aws", cwd=home).stdout
    assert "deleted Auto Scaling group" in out and "deleted its alarms (2)" in out, out
    wait_for(lambda: not box.running(), timeout=60, what="every machine to stop")
    assert cluster.group.describe() is None and cluster.group.leftovers() == []
    assert cluster.inventory.instances() == []
    out = cli("cleanup", "--profile", "aws", cwd=home).stdout
    asg, cw = cluster.ctx.aws.autoscaling, cluster.ctx.aws.cloudwatch
    name = cluster.group.names.group
    assert asg.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"] == []
    assert asg.describe_policies(AutoScalingGroupName=name)["ScalingPolicies"] == []
    assert (
        asg.describe_scheduled_actions(AutoScalingGroupName=name)["ScheduledUpdateGroupActions"]
        == []
    )
    assert cw.describe_alarms(AlarmNamePrefix=name)["MetricAlarms"] == []
    tagged = cluster.ctx.aws.ec2.describe_launch_templates(
        Filters=[{"Name": "tag:cloudloop:cluster", "Values": [cluster.name]}]
    )["LaunchTemplates"]
    assert tagged == [], out
    assert box.autoscaling.errors == []


def test_max_cost_with_nobody_running_anything_ends_every_machine_by_the_deadline(box, tmp_path):
    # $0.0015 for a group of two machines at the dearest listed $0.10/h: a deadline 27 s out
    home = _home(box, tmp_path, "max_cost = 0.0015\n")
    out = cli("up", "--profile", "aws", cwd=home).stdout
    assert "AWS sets the group to zero at" in out, out
    cluster = _cluster()
    (action,) = cluster.ctx.aws.autoscaling.describe_scheduled_actions(
        AutoScalingGroupName=cluster.group.names.group
    )["ScheduledUpdateGroupActions"]
    deadline = action["StartTime"].timestamp()
    assert (action["MinSize"], action["MaxSize"], action["DesiredCapacity"]) == (0, 0, 0)
    assert 15 < deadline - time.time() < 30
    job = _submit(home, 200, 0.5)  # more work than the budget buys
    wait_for(lambda: len(box.running()) == 2, timeout=60, what="two machines")
    wait_for(lambda: time.time() > deadline + 2, timeout=120, interval=1, what="the deadline")
    wait_for(lambda: not box.running(), timeout=15, what="every machine gone at the deadline")
    g = _group(cluster)
    assert (g["MinSize"], g["MaxSize"], g["DesiredCapacity"]) == (0, 0, 0)
    assert 0 < job.status().done < 200  # it worked until the deadline and stopped there
    logs = "".join(m.worker_logs() for m in box.machines.values())
    assert "cost deadline has passed" in logs, logs[-2000:]
    time.sleep(5)
    assert not box.running()  # tasks still wait, and the group stays at zero
    assert [a for a in box.autoscaling.activities if "scheduled" in a["cause"].lower()]

    # a bigger budget: `up` again, and the group picks up exactly what is left
    (home / "cloudloop.toml").write_text(
        PROFILE.format(tag=os.getpid(), endpoint=box.endpoint) + "max_cost = 5.0\n"
    )
    cli("up", "--profile", "aws", cwd=home)
    assert job.results(timeout=180) == [i * i for i in range(200)]
    assert sorted(job.outcomes()) == list(range(200))
