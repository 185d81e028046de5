"""AutoScalingStandIn (asgbox.py) against a real moto_server: alarms on an SQS queue drive
an EC2 Auto Scaling group's policies, scheduled actions run once, lost instances come back.

The stand-in's clock is the test's: a round of :meth:`Cloud.rounds` is one 60 s period of
AWS time, so nothing sleeps.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import boto3
import pytest
from asgbox import AutoScalingStandIn, capacity_after

SCALE = 1 / 60  # a 60 s period lasts 1 s of the stand-in's clock
PERIOD = 60
AL2023 = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Cloud:
    """One group with its queue, launch template, policies and alarms, all named PREFIX*."""

    endpoint: str
    prefix: str
    clients: dict
    queue_url: str = ""
    clock: Clock = field(default_factory=Clock)
    standin: AutoScalingStandIn | None = None

    def __getattr__(self, service: str):
        return self.clients[service]

    @property
    def group(self) -> str:
        return self.prefix + "t"

    def rounds(self, n: int = 1, seconds: float = PERIOD) -> None:
        """``n`` rounds of the stand-in, ``seconds`` of AWS time after each."""
        for _ in range(n):
            self.standin.step()
            self.clock.now += seconds * SCALE

    def send(self, n: int) -> None:
        for i in range(n):
            self.sqs.send_message(QueueUrl=self.queue_url, MessageBody=f"m{i}")

    def described(self) -> dict:
        return self.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[self.group])[
            "AutoScalingGroups"
        ][0]

    def desired(self) -> int:
        return self.described()["DesiredCapacity"]

    def instances(self) -> set[str]:
        return {i["InstanceId"] for i in self.described()["Instances"]}

    def alarm(self, suffix: str) -> dict:
        names = [self.prefix + suffix]
        return self.cloudwatch.describe_alarms(AlarmNames=names)["MetricAlarms"][0]

    def policy_arn(self, suffix: str) -> str:
        policies = self.autoscaling.describe_policies(AutoScalingGroupName=self.group)
        return next(
            p["PolicyARN"]
            for p in policies["ScalingPolicies"]
            if p["PolicyName"] == self.prefix + suffix
        )


def sqs_metric(id_: str, metric: str, queue: str) -> dict:
    return {
        "Id": id_,
        "ReturnData": False,
        "MetricStat": {
            "Metric": {
                "Namespace": "AWS/SQS",
                "MetricName": metric,
                "Dimensions": [{"Name": "QueueName", "Value": queue}],
            },
            "Period": PERIOD,
            "Stat": "Maximum",
        },
    }


@pytest.fixture(scope="module")
def region(moto_endpoint):
    """Clients, an image and the default subnets, shared by the module's tests."""
    clients = {
        s: boto3.client(s, endpoint_url=moto_endpoint, region_name="us-east-1")
        for s in ("sqs", "ec2", "autoscaling", "cloudwatch", "ssm")
    }
    image = clients["ssm"].get_parameter(Name=AL2023)["Parameter"]["Value"]
    subnets = clients["ec2"].describe_subnets(
        Filters=[{"Name": "default-for-az", "Values": ["true"]}]
    )
    return clients, image, [s["SubnetId"] for s in subnets["Subnets"]]


@pytest.fixture
def cloud(moto_endpoint, region):
    """The cluster as production code makes it: a group following its queue with two alarms
    (work: visible > 0, 1 of 1 → step scale-out; empty: visible + in-flight <= 0, 3 of 3 →
    exact capacity 0)."""
    clients, image, subnets = region
    prefix = f"cloudloop-{secrets.token_hex(3)}-"
    c = Cloud(moto_endpoint, prefix, clients)
    queue = prefix + "q"
    c.queue_url = c.sqs.create_queue(QueueName=queue)["QueueUrl"]
    c.ec2.create_launch_template(
        LaunchTemplateName=c.group,
        LaunchTemplateData={"ImageId": image, "InstanceType": "c6a.large"},
    )
    c.autoscaling.create_auto_scaling_group(
        AutoScalingGroupName=c.group, MinSize=0, MaxSize=5, DesiredCapacity=0,
        VPCZoneIdentifier=",".join(subnets),
        MixedInstancesPolicy={
            "LaunchTemplate": {
                "LaunchTemplateSpecification": {"LaunchTemplateName": c.group,
                                                "Version": "$Latest"},
                "Overrides": [{"InstanceType": "c6a.large"}, {"InstanceType": "c7a.large"}],
            },
            "InstancesDistribution": {"OnDemandPercentageAboveBaseCapacity": 0,
                                      "SpotAllocationStrategy": "price-capacity-optimized"},
        },
    )  # fmt: skip
    c.autoscaling.put_scaling_policy(
        AutoScalingGroupName=c.group, PolicyName=prefix + "out", PolicyType="StepScaling",
        AdjustmentType="ChangeInCapacity", EstimatedInstanceWarmup=120,
        StepAdjustments=[
            {"MetricIntervalLowerBound": 0, "MetricIntervalUpperBound": 2, "ScalingAdjustment": 1},
            {"MetricIntervalLowerBound": 2, "MetricIntervalUpperBound": 4, "ScalingAdjustment": 2},
            {"MetricIntervalLowerBound": 4, "ScalingAdjustment": 5},
        ],
    )  # fmt: skip
    c.autoscaling.put_scaling_policy(
        AutoScalingGroupName=c.group, PolicyName=prefix + "in", PolicyType="SimpleScaling",
        AdjustmentType="ExactCapacity", ScalingAdjustment=0,
    )  # fmt: skip
    c.cloudwatch.put_metric_alarm(
        AlarmName=prefix + "t-work", Namespace="AWS/SQS",
        MetricName="ApproximateNumberOfMessagesVisible",
        Dimensions=[{"Name": "QueueName", "Value": queue}], Statistic="Maximum", Period=PERIOD,
        EvaluationPeriods=1, DatapointsToAlarm=1, Threshold=0,
        ComparisonOperator="GreaterThanThreshold", TreatMissingData="notBreaching",
        AlarmActions=[c.policy_arn("out")],
    )  # fmt: skip
    c.cloudwatch.put_metric_alarm(
        AlarmName=prefix + "t-empty",
        Metrics=[
            sqs_metric("v", "ApproximateNumberOfMessagesVisible", queue),
            sqs_metric("n", "ApproximateNumberOfMessagesNotVisible", queue),
            {"Id": "e", "Expression": "v + n", "ReturnData": True},
        ],
        EvaluationPeriods=3, DatapointsToAlarm=3, Threshold=0,
        ComparisonOperator="LessThanOrEqualToThreshold", TreatMissingData="notBreaching",
        AlarmActions=[c.policy_arn("in")],
    )  # fmt: skip
    c.standin = AutoScalingStandIn(moto_endpoint, scale=SCALE, prefix=prefix, clock=c.clock)
    yield c
    c.standin.close()
    alarms = c.cloudwatch.describe_alarms(AlarmNamePrefix=prefix)["MetricAlarms"]
    c.cloudwatch.delete_alarms(AlarmNames=[a["AlarmName"] for a in alarms])
    c.autoscaling.delete_auto_scaling_group(AutoScalingGroupName=c.group, ForceDelete=True)
    c.ec2.delete_launch_template(LaunchTemplateName=c.group)
    c.sqs.delete_queue(QueueUrl=c.queue_url)


# ---------------------------------------------------------------- alarms and policies


@pytest.mark.parametrize("messages, desired", [(1, 1), (2, 2), (3, 2), (4, 5), (9, 5)])
def test_messages_put_the_work_alarm_in_alarm_and_add_their_step(cloud, messages, desired):
    cloud.rounds()
    assert cloud.alarm("t-work")["StateValue"] == "OK"
    assert cloud.desired() == 0
    cloud.send(messages)
    cloud.rounds()
    work = cloud.alarm("t-work")
    assert work["StateValue"] == "ALARM"
    assert f"[{messages}]" in work["StateReason"]
    assert cloud.desired() == desired
    assert [(a["policy"], a["from"], a["to"]) for a in cloud.standin.activities] == [
        (cloud.prefix + "out", 0, desired)
    ]
    assert cloud.standin.errors == []


@pytest.mark.parametrize(
    "first, added, then, later, desired",
    [
        (1, 1, 1, 60, 1),  # the same step while the first instance warms up: nothing
        (1, 1, 2, 60, 2),  # a larger step: only the difference (+2 asked, +1 warming)
        (1, 1, 4, 60, 5),  # +5 asked, +1 warming
        (2, 2, 1, 60, 2),  # a smaller step: nothing
        (1, 1, 1, 120, 2),  # the warm-up (120 s) is over: the whole step again
    ],
)
def test_warm_up_counts_the_instances_still_warming(cloud, first, added, then, later, desired):
    cloud.send(first)
    cloud.rounds(seconds=later)
    assert cloud.desired() == added
    if then > first:
        cloud.send(then - first)
    elif then < first:  # in flight: no longer visible
        cloud.sqs.receive_message(
            QueueUrl=cloud.queue_url, MaxNumberOfMessages=first - then, VisibilityTimeout=600
        )
    cloud.rounds()
    assert cloud.alarm("t-work")["StateValue"] == "ALARM"
    assert cloud.desired() == desired
    assert len(cloud.standin.activities) == (1 if desired == added else 2)


def test_scale_out_is_clamped_at_max_size(cloud):
    cloud.send(1)
    cloud.rounds(seconds=120)
    cloud.send(9)
    cloud.rounds(seconds=120)
    assert cloud.desired() == 5  # 1 + 5, MaxSize 5
    cloud.rounds(2, seconds=120)  # still breaching the +5 step, at MaxSize: no call, no activity
    assert cloud.desired() == 5
    assert [(a["from"], a["to"]) for a in cloud.standin.activities] == [(0, 1), (1, 5)]


@pytest.mark.parametrize(
    "in_flight, state, desired",
    [
        (0, "ALARM", 0),  # drained: nothing visible, nothing being worked on
        (1, "OK", 3),  # a message being worked on keeps the group
    ],
)
def test_empty_alarm_scales_to_zero_after_three_empty_periods(cloud, in_flight, state, desired):
    cloud.autoscaling.set_desired_capacity(AutoScalingGroupName=cloud.group, DesiredCapacity=3)
    cloud.send(in_flight)
    if in_flight:
        got = cloud.sqs.receive_message(QueueUrl=cloud.queue_url, VisibilityTimeout=600)
        assert len(got["Messages"]) == in_flight
    cloud.rounds(2)
    assert cloud.alarm("t-empty")["StateValue"] == "INSUFFICIENT_DATA"  # 2 of 3 datapoints
    assert cloud.desired() == 3
    cloud.rounds()
    assert cloud.alarm("t-empty")["StateValue"] == state
    assert cloud.alarm("t-work")["StateValue"] == "OK"
    assert cloud.desired() == desired


def test_simple_policy_waits_out_its_cooldown(cloud):
    cloud.autoscaling.set_desired_capacity(AutoScalingGroupName=cloud.group, DesiredCapacity=2)
    cloud.rounds(3)
    assert cloud.desired() == 0
    cloud.autoscaling.set_desired_capacity(AutoScalingGroupName=cloud.group, DesiredCapacity=2)
    cloud.rounds(4)  # still ALARM, but within the group's DefaultCooldown of 300 s
    assert cloud.desired() == 2
    cloud.rounds()
    assert cloud.alarm("t-empty")["StateValue"] == "ALARM"
    assert cloud.desired() == 0
    assert [(a["from"], a["to"]) for a in cloud.standin.activities] == [(2, 0), (2, 0)]


def test_disabled_actions_track_the_state_but_do_not_scale(cloud):
    cloud.cloudwatch.disable_alarm_actions(AlarmNames=[cloud.prefix + "t-work"])
    cloud.send(3)
    cloud.rounds()
    assert cloud.alarm("t-work")["StateValue"] == "ALARM"
    assert cloud.desired() == 0
    assert cloud.standin.activities == []
    cloud.cloudwatch.enable_alarm_actions(AlarmNames=[cloud.prefix + "t-work"])
    cloud.rounds()
    assert cloud.desired() == 2


MISSING_DATA = {  # TreatMissingData: (the state before, the state after a missing datapoint)
    "breaching": ("OK", "ALARM"),
    "notBreaching": ("ALARM", "OK"),
    "ignore": ("ALARM", "ALARM"),
    "missing": ("OK", "INSUFFICIENT_DATA"),
}


def test_a_queue_that_does_not_exist_is_missing_data(cloud):
    for treat, (before, _) in MISSING_DATA.items():
        name = f"{cloud.prefix}gone-{treat}"
        cloud.cloudwatch.put_metric_alarm(
            AlarmName=name, Namespace="AWS/SQS", MetricName="ApproximateNumberOfMessagesVisible",
            Dimensions=[{"Name": "QueueName", "Value": cloud.prefix + "no-such-queue"}],
            Statistic="Maximum", Period=PERIOD, EvaluationPeriods=1, Threshold=0,
            ComparisonOperator="GreaterThanThreshold", TreatMissingData=treat,
        )  # fmt: skip
        cloud.cloudwatch.set_alarm_state(AlarmName=name, StateValue=before, StateReason="set")
    cloud.rounds(2)
    after = {t: cloud.alarm(f"gone-{t}") for t in MISSING_DATA}
    assert {t: a["StateValue"] for t, a in after.items()} == {
        t: state for t, (_, state) in MISSING_DATA.items()
    }
    assert after["ignore"]["StateReason"] == "set"
    assert "[missing]" in after["breaching"]["StateReason"]
    assert cloud.standin.errors == []


@pytest.mark.parametrize(
    "alarm, complaint",
    [
        (
            {"Metrics": [sqs_metric("v", "ApproximateNumberOfMessagesVisible", "q"),
                         {"Id": "e", "Expression": "v * 2", "ReturnData": True}]},
            "'v * 2' is not a sum of ids",
        ),
        (
            {"Metrics": [sqs_metric("v", "ApproximateNumberOfMessagesVisible", "q"),
                         {"Id": "e", "Expression": "v + w", "ReturnData": True}]},
            "names no MetricStat ['w']",
        ),
        (
            {"Namespace": "AWS/EC2", "MetricName": "CPUUtilization", "Statistic": "Average",
             "Period": PERIOD},
            "metric AWS/EC2/CPUUtilization",
        ),
        (
            {"Namespace": "AWS/SQS", "MetricName": "ApproximateNumberOfMessagesVisible",
             "ExtendedStatistic": "p90", "Period": PERIOD,
             "Dimensions": [{"Name": "QueueName", "Value": "q"}]},
            "statistic None",
        ),
    ],
)  # fmt: skip
def test_what_is_not_simulated_is_an_error_not_a_crash(cloud, alarm, complaint):
    cloud.cloudwatch.put_metric_alarm(
        AlarmName=cloud.prefix + "bad", EvaluationPeriods=1, Threshold=0,
        ComparisonOperator="GreaterThanThreshold", **alarm,
    )  # fmt: skip
    cloud.send(1)
    cloud.rounds(3)
    assert len(cloud.standin.errors) == 1, cloud.standin.errors
    assert cloud.prefix + "bad" in cloud.standin.errors[0]
    assert complaint in cloud.standin.errors[0]
    assert cloud.alarm("bad")["StateReason"].startswith("Unchecked")
    assert cloud.alarm("t-work")["StateValue"] == "ALARM"  # the others are still evaluated
    assert cloud.desired() >= 1


PERCENT = "PercentChangeInCapacity"


@pytest.mark.parametrize(
    "kind, desired, adjustment, expected",
    [
        ("ChangeInCapacity", 2, 3, 5),
        ("ChangeInCapacity", 2, -3, -1),  # clamped later, by the group
        ("ExactCapacity", 4, 0, 0),
        (PERCENT, 8, 50, 12),
        (PERCENT, 10, 67, 16),  # 6.7 rounds down
        (PERCENT, 10, -67, 4),  # -6.7 rounds up
        (PERCENT, 3, 10, 4),  # 0.3 rounds to 1
        (PERCENT, 3, -10, 2),  # -0.3 rounds to -1
        ((PERCENT, 2), 3, 10, 5),  # at least MinAdjustmentMagnitude
        ((PERCENT, 2), 6, -50, 3),  # more than it: as computed
    ],
)
def test_adjustment_types_round_as_aws_does(kind, desired, adjustment, expected):
    kind, least = kind if isinstance(kind, tuple) else (kind, None)
    policy = {"AdjustmentType": kind, "MinAdjustmentMagnitude": least}
    assert capacity_after(policy, desired, adjustment) == expected


@pytest.mark.parametrize(
    "datapoints_to_alarm, visible, states",
    [
        (2, [1, 0, 1], ["INSUFFICIENT_DATA", "INSUFFICIENT_DATA", "ALARM"]),
        (2, [1, 0, 0, 1], ["INSUFFICIENT_DATA", "INSUFFICIENT_DATA", "OK", "OK"]),
        (2, [0, 1, 1, 0], ["INSUFFICIENT_DATA", "INSUFFICIENT_DATA", "ALARM", "ALARM"]),
        (None, [1, 0, 1, 1, 1], ["INSUFFICIENT_DATA"] * 2 + ["OK", "OK", "ALARM"]),  # 3 of 3
    ],
)
def test_m_of_n_datapoints_make_alarm(cloud, datapoints_to_alarm, visible, states):
    name = cloud.prefix + "m-of-n"
    cloud.cloudwatch.put_metric_alarm(
        AlarmName=name, Namespace="AWS/SQS", MetricName="ApproximateNumberOfMessagesVisible",
        Dimensions=[{"Name": "QueueName", "Value": cloud.prefix + "q"}], Statistic="Maximum",
        Period=PERIOD, EvaluationPeriods=3, Threshold=0, ComparisonOperator="GreaterThanThreshold",
        **({"DatapointsToAlarm": datapoints_to_alarm} if datapoints_to_alarm else {}),
    )  # fmt: skip
    seen = []
    for n in visible:
        if n:
            cloud.send(n)
        else:  # the visible ones go in flight
            cloud.sqs.receive_message(
                QueueUrl=cloud.queue_url, MaxNumberOfMessages=10, VisibilityTimeout=600
            )
        cloud.rounds()
        seen.append(cloud.alarm("m-of-n")["StateValue"])
    assert seen == states


# ---------------------------------------------------------------- scheduled actions


@pytest.mark.parametrize(
    "sets, desired_before, after",
    [
        ({"MinSize": 1, "MaxSize": 4, "DesiredCapacity": 3}, 0, (1, 4, 3)),
        ({"MaxSize": 2}, 4, (0, 2, 2)),  # a new MaxSize below the desired capacity lowers it
        ({"MinSize": 2}, 0, (2, 5, 2)),
    ],
)
def test_a_one_time_scheduled_action_runs_once_at_its_start_time(
    cloud, sets, desired_before, after
):
    cloud.cloudwatch.disable_alarm_actions(AlarmNames=[cloud.prefix + "t-empty"])
    cloud.autoscaling.set_desired_capacity(
        AutoScalingGroupName=cloud.group, DesiredCapacity=desired_before
    )
    now = datetime.now(timezone.utc)
    put = cloud.autoscaling.put_scheduled_update_group_action
    put(
        AutoScalingGroupName=cloud.group,
        ScheduledActionName="past",
        StartTime=now - timedelta(seconds=30),
        **sets,
    )
    put(
        AutoScalingGroupName=cloud.group,
        ScheduledActionName="future",
        StartTime=now + timedelta(hours=1),
        DesiredCapacity=5,
    )
    put(AutoScalingGroupName=cloud.group, ScheduledActionName="daily",
        Recurrence="0 9 * * *", DesiredCapacity=5)  # fmt: skip
    cloud.rounds()
    g = cloud.described()
    assert (g["MinSize"], g["MaxSize"], g["DesiredCapacity"]) == after
    left = cloud.autoscaling.describe_scheduled_actions(AutoScalingGroupName=cloud.group)
    assert {a["ScheduledActionName"] for a in left["ScheduledUpdateGroupActions"]} == {
        "future",
        "daily",
    }
    assert any("daily" in e and "Recurrence" in e for e in cloud.standin.errors)
    cloud.rounds(2)
    assert [(a["from"], a["to"]) for a in cloud.standin.activities] == [(desired_before, after[2])]
    assert "scheduled action past" in cloud.standin.activities[0]["cause"]


# ---------------------------------------------------------------- lost instances


@pytest.mark.parametrize(
    "end, replaced, desired",
    [
        ("terminate_instances", True, 2),  # spot reclaim, a dead machine, shutdown -h
        ("stop_instances", True, 2),  # a stopped instance fails the EC2 health check
        ("decrement", False, 1),  # the instance left the group itself: not replaced
    ],
)
def test_lost_instances_are_replaced_unless_they_left_the_group(cloud, end, replaced, desired):
    cloud.cloudwatch.disable_alarm_actions(AlarmNames=[cloud.prefix + "t-empty"])
    cloud.autoscaling.set_desired_capacity(AutoScalingGroupName=cloud.group, DesiredCapacity=2)
    lost, kept = sorted(cloud.instances())
    if end == "decrement":
        cloud.autoscaling.terminate_instance_in_auto_scaling_group(
            InstanceId=lost, ShouldDecrementDesiredCapacity=True
        )
    else:
        getattr(cloud.ec2, end)(InstanceIds=[lost])
    cloud.rounds(2)
    now = cloud.instances()
    assert lost not in now and kept in now
    assert len(now) == desired == cloud.desired()  # one replacement at most
    state = cloud.ec2.describe_instances(InstanceIds=[lost])["Reservations"][0]["Instances"][0]
    assert state["State"]["Name"] == "terminated"
    if end == "stop_instances":  # moto replaces a terminated one itself
        [activity] = cloud.standin.activities
        assert f"instance {lost} is stopped" in activity["cause"]
    assert cloud.standin.errors == []


def test_an_instance_leaving_its_group_during_a_round_is_not_replaced(cloud, monkeypatch):
    cloud.cloudwatch.disable_alarm_actions(AlarmNames=[cloud.prefix + "t-empty"])
    cloud.autoscaling.set_desired_capacity(AutoScalingGroupName=cloud.group, DesiredCapacity=2)
    leaving, kept = sorted(cloud.instances())

    def leave(**_):  # after the round has listed the group, before it asks EC2
        cloud.autoscaling.terminate_instance_in_auto_scaling_group(
            InstanceId=leaving, ShouldDecrementDesiredCapacity=True
        )

    session = boto3.session.Session()  # the stand-in's clients are made from it
    session.events.register_first("before-call.ec2.DescribeInstances", leave, unique_id="leave")
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", session)
    standin = AutoScalingStandIn(
        cloud.endpoint, scale=SCALE, prefix=cloud.prefix, clock=cloud.clock
    )
    standin.step()
    assert cloud.instances() == {kept}
    assert cloud.desired() == 1
    assert standin.activities == [] and standin.errors == []


# ---------------------------------------------------------------- cost and the thread


def test_an_idle_round_makes_a_bounded_number_of_calls(cloud, capsys):
    cloud.rounds()  # the first resolves the queue's URL
    before = cloud.standin.calls
    cloud.rounds(seconds=PERIOD / 2)  # both alarms due: groups, alarms, the queue, schedules
    due = cloud.standin.calls - before
    before = cloud.standin.calls
    cloud.rounds()  # no alarm due
    idle = cloud.standin.calls - before
    assert due <= 4
    assert idle <= 3
    period = PERIOD / 20  # as CloudBox runs it, at scale 1/20: 3 s, a round each 0.5 s
    rounds = period / min(0.5, period / 2)
    hourly = 3600 / period * (due + (rounds - 1) * idle)
    with capsys.disabled():
        print(f"\nasg stand-in: {due} calls in a round that evaluates the alarms, {idle} in "
              f"one that does not: {hourly:.0f} requests/hour at scale 1/20")  # fmt: skip


def test_the_thread_scales_on_real_time_and_survives_errors(cloud):
    standin = AutoScalingStandIn(cloud.endpoint, scale=1 / 600, prefix=cloud.prefix)
    real_step, failed = standin.step, threading.Event()

    def step_failing_once():
        if not failed.is_set():
            failed.set()
            raise RuntimeError("the API server is away")
        real_step()

    standin.step = step_failing_once
    cloud.send(1)
    standin.start()
    try:
        deadline = time.monotonic() + 10
        while cloud.desired() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cloud.desired() >= 1
        assert standin.errors == ["RuntimeError: the API server is away"]
        assert standin.interval == pytest.approx(0.05)  # half of a 60 s period at 1/600
    finally:
        standin.close()
    assert "asg-standin" not in {t.name for t in threading.enumerate()}
