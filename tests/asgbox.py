"""A stand-in for what moto stores but never runs: CloudWatch alarms and EC2 Auto Scaling.

::

    step(), once a round (start() runs it in a thread), for groups and alarms named PREFIX*:
      DescribeAutoScalingGroups ──► sizes and InService instances
      DescribeInstances ──► an instance stopped or gone ──► TerminateInstanceInAutoScaling-
          Group(ShouldDecrementDesiredCapacity=False): moto launches a replacement
      DescribeAlarms ──► each alarm whose compressed period is due:
          GetQueueAttributes ──► one datapoint ──► OK / ALARM / INSUFFICIENT_DATA
          (a change: SetAlarmState); in ALARM with ActionsEnabled, each scaling policy
          in AlarmActions (DescribePolicies) ──► SetDesiredCapacity in [MinSize, MaxSize]
      DescribeScheduledActions ──► one-time actions past their StartTime:
          UpdateAutoScalingGroup, DeleteScheduledAction

It stands in for CloudWatch's alarm evaluation and alarm actions, EC2 Auto Scaling's
StepScaling and SimpleScaling policies, one-time scheduled actions, and the EC2 health
check that replaces a group's lost instances (moto replaces one terminated through
TerminateInstances itself, not a stopped one). Each change it makes is a dict in
``activities``: moto's DescribeScalingActivities returns nothing.

Where it is simpler than AWS:

* Metrics: AWS/SQS ApproximateNumberOfMessages{Visible,NotVisible,Delayed} with the one
  dimension QueueName, and metric math that sums ids (``v + n``). Anything else is an
  entry in ``errors`` and the alarm is not evaluated (nothing is guessed).
* A datapoint: AWS aggregates, over the period, what SQS publishes each minute; here
  it is one reading of the queue's attributes when the alarm is evaluated (so Average,
  Maximum, Minimum and Sum are that reading; other statistics are refused).
* Time: a period, warm-up or cooldown of P seconds lasts ``P * scale`` seconds of
  ``clock``; one datapoint per period, none backfilled for late rounds. Datapoints are
  kept in memory: a new stand-in starts each alarm afresh. Scheduled actions' StartTime
  is a deadline in real UTC time, not compressed.
* Missing data (no such queue): ``breaching`` and ``notBreaching`` count it so;
  ``ignore`` drops it (the state stays); ``missing`` (the default) counts it as
  neither, and a window of missing datapoints only is INSUFFICIENT_DATA (as is an alarm
  with fewer than EvaluationPeriods datapoints). A step policy cannot pick a step for a
  missing datapoint: that is an error.
* Actions: only Auto Scaling policy ARNs in AlarmActions, run at each evaluation while
  in ALARM (as Auto Scaling keeps responding). OKActions, InsufficientDataActions,
  other ARNs (SNS, ...), composite alarms, target tracking and predictive scaling: none.
* StepScaling warm-up (EstimatedInstanceWarmup, else the group's DefaultCooldown): a
  scale-out within it of the policy's last one adds only what its step asks beyond
  that one's; scale-in is not held back. SimpleScaling: after a change, the policy does
  nothing for its Cooldown (else the group's DefaultCooldown, else 300 s).
* Suspended processes: with Launch suspended (SuspendProcesses) a policy that would
  raise the desired capacity does nothing (AWS raises it and launches nothing; moto
  would launch); other processes are not looked at.
* Scheduled actions with a Recurrence are errors, not run. The health check is the
  EC2 state alone (no grace period, no ELB check).
"""

from __future__ import annotations

import operator
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import boto3

SQS_METRICS = {  # CloudWatch metric name -> the SQS queue attribute it reports
    "ApproximateNumberOfMessagesVisible": "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible": "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed": "ApproximateNumberOfMessagesDelayed",
}
STATISTICS = ("Average", "Maximum", "Minimum", "Sum")
COMPARISONS = {
    "GreaterThanThreshold": operator.gt,
    "GreaterThanOrEqualToThreshold": operator.ge,
    "LessThanThreshold": operator.lt,
    "LessThanOrEqualToThreshold": operator.le,
}
SUM_OF_IDS = re.compile(r"\s*[a-z]\w*(\s*\+\s*[a-z]\w*)*\s*")
LOST = ("shutting-down", "terminated", "stopping", "stopped")
INF = float("inf")


class Unsupported(Exception):
    """An alarm or policy asks for something this stand-in does not simulate."""


@dataclass
class _Track:
    """An alarm's evaluation: when its next datapoint is due and the recent ones."""

    due: float
    points: list[float | None] = field(default_factory=list)


def capacity_after(policy: dict, desired: int, adjustment: int) -> int:
    """The desired capacity ``adjustment`` asks for under the policy's AdjustmentType,
    before clamping; PercentChangeInCapacity rounds as AWS does (toward zero, but at
    least 1 either way, and at least MinAdjustmentMagnitude)."""
    kind = policy.get("AdjustmentType", "ChangeInCapacity")
    if kind == "ChangeInCapacity":
        return desired + adjustment
    if kind == "ExactCapacity":
        return adjustment
    if kind == "PercentChangeInCapacity":
        change = desired * adjustment / 100
        n = int(change) or (1 if change > 0 else -1 if change < 0 else 0)
        least = policy.get("MinAdjustmentMagnitude") or 0
        if abs(n) < least:
            n = least if adjustment > 0 else -least
        return desired + n
    raise Unsupported(f"AdjustmentType {kind!r}")


def clamp(capacity: int, group: dict) -> int:
    return max(group["MinSize"], min(group["MaxSize"], capacity))


def step_adjustment(policy: dict, excess: float) -> int | None:
    """The ScalingAdjustment of the step whose interval holds ``excess`` (the value minus
    the threshold: lower bound inclusive, upper exclusive, absent: infinite)."""
    for step in policy["StepAdjustments"]:
        if (
            step.get("MetricIntervalLowerBound", -INF)
            <= excess
            < step.get("MetricIntervalUpperBound", INF)
        ):
            return int(step["ScalingAdjustment"])
    return None


class AutoScalingStandIn:
    """Evaluates alarms and runs scaling policies, scheduled actions and instance
    replacement for the alarms and groups whose names start with ``prefix``.

    Args:
        endpoint: the API server (moto_server) URL.
        scale: real seconds per AWS second (1/20: a 60 s period lasts 3 s).
        clock: monotonic seconds; tests pass their own to advance time without sleeping.

    Attributes:
        activities: what it did, oldest first: dicts with time (``clock``), group,
            policy (its name, or None), from and to (desired capacity), cause.
        errors: what it could not simulate or what failed, each message once.
        calls: API calls made so far.
    """

    def __init__(
        self,
        endpoint: str,
        region: str = "us-east-1",
        scale: float = 1 / 20,
        prefix: str = "cloudloop-",
        clock: Callable[[], float] = time.monotonic,
    ):
        self.scale, self.prefix, self.clock = scale, prefix, clock
        self.activities: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.calls = 0
        self._asg, self._cw, self._sqs, self._ec2 = (
            boto3.client(service, endpoint_url=endpoint, region_name=region,
                         aws_access_key_id="testing", aws_secret_access_key="testing")
            for service in ("autoscaling", "cloudwatch", "sqs", "ec2")
        )  # fmt: skip
        for client in (self._asg, self._cw, self._sqs, self._ec2):
            client.meta.events.register("before-call", self._count)  # each API call, once
        self._tracks: dict[str, _Track] = {}
        self._urls: dict[str, str] = {}  # queue name -> URL
        self._warm: dict[str, tuple[float, int]] = {}  # policy ARN -> (last scale-out, asked)
        self._cool: dict[str, float] = {}  # policy ARN -> end of its cooldown
        self._policies: dict[str, dict] | None = None  # this round's, by ARN
        self._shortest = INF  # the shortest compressed period among the alarms
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _count(self, **_: Any) -> None:
        self.calls += 1

    def _error(self, message: str) -> None:
        if message not in self.errors:
            self.errors.append(message)

    def _activity(self, group: str, policy: str | None, old: int, new: int, cause: str) -> None:
        self.activities.append(
            {"time": self.clock(), "group": group, "policy": policy, "from": old, "to": new,
             "cause": cause}
        )  # fmt: skip

    # ---------------------------------------------------------------- the rounds

    def step(self) -> None:
        """One round: lost instances, alarms and their policies, scheduled actions."""
        now = self.clock()
        self._policies = None
        groups = {
            g["AutoScalingGroupName"]: g
            for page in self._asg.get_paginator("describe_auto_scaling_groups").paginate()
            for g in page["AutoScalingGroups"]
            if g["AutoScalingGroupName"].startswith(self.prefix)
        }
        if groups:  # first, while the instances listed are the ones the group has
            self._replace_lost(groups)
        self._alarms(now, groups)
        if groups:
            self._scheduled(groups)

    def start(self) -> AutoScalingStandIn:
        """Run :meth:`step` in a daemon thread until :meth:`close`."""
        self._thread = threading.Thread(target=self._run, name="asg-standin", daemon=True)
        self._thread.start()
        return self

    @property
    def interval(self) -> float:
        """Seconds between rounds in the thread: at least two per compressed period."""
        return min(0.5, self._shortest / 2)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception as e:  # keep running; the test reads the errors
                self._error(f"{type(e).__name__}: {e}")
            self._stop.wait(self.interval)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    # ---------------------------------------------------------------- CloudWatch

    def _alarms(self, now: float, groups: dict[str, dict]) -> None:
        pages = self._cw.get_paginator("describe_alarms").paginate(AlarmNamePrefix=self.prefix)
        alarms = [a for page in pages for a in page["MetricAlarms"]]
        names = {a["AlarmName"] for a in alarms}
        self._tracks = {n: t for n, t in self._tracks.items() if n in names}
        readings: dict[str, dict | None] = {}  # queue name -> attributes, this round
        periods = []
        for alarm in alarms:
            name = alarm["AlarmName"]
            try:
                period = self._period(alarm) * self.scale
                periods.append(period)
                track = self._tracks.setdefault(name, _Track(due=now))
                if now < track.due:
                    continue
                track.due += period
                if track.due <= now:  # a late round: no backfill
                    track.due = now + period
                value = self._datapoint(alarm, readings)
            except Unsupported as e:
                self._error(f"alarm {name}: {e}; not evaluated")
                continue
            verdict = self._evaluate(alarm, track, value)
            if verdict is None:
                continue
            state, reason = verdict
            if state != alarm["StateValue"]:
                self._cw.set_alarm_state(AlarmName=name, StateValue=state, StateReason=reason)
            alarm["StateReason"] = reason
            if state == "ALARM" and alarm["ActionsEnabled"]:
                for arn in alarm.get("AlarmActions", []):
                    if ":scalingPolicy:" in arn:
                        self._execute(arn, alarm, value, groups, now)
        self._shortest = min(periods, default=INF)

    def _period(self, alarm: dict) -> float:
        periods = [m["MetricStat"]["Period"] for m in alarm.get("Metrics", []) if "MetricStat" in m]
        period = alarm.get("Period") or min(periods, default=None)
        if not period:
            raise Unsupported("no Period")
        return float(period)

    def _datapoint(self, alarm: dict, readings: dict[str, dict | None]) -> float | None:
        """The alarm's value now; None when it is missing (no such queue)."""
        if not alarm.get("Metrics"):
            return self._metric(alarm, alarm.get("Statistic"), readings)
        values = {
            m["Id"]: self._metric(m["MetricStat"]["Metric"], m["MetricStat"].get("Stat"), readings)
            for m in alarm["Metrics"]
            if "MetricStat" in m
        }
        returned = [m for m in alarm["Metrics"] if m.get("ReturnData", True)]
        if len(returned) != 1:
            raise Unsupported(f"{len(returned)} Metrics entries with ReturnData, expected 1")
        if "MetricStat" in returned[0]:
            return values[returned[0]["Id"]]
        expression = returned[0].get("Expression", "")
        if not SUM_OF_IDS.fullmatch(expression):
            raise Unsupported(f"expression {expression!r} is not a sum of ids like 'v + n'")
        ids = [part.strip() for part in expression.split("+")]
        if unknown := [i for i in ids if i not in values]:
            raise Unsupported(f"expression {expression!r} names no MetricStat {unknown}")
        parts = [values[i] for i in ids]
        return None if None in parts else sum(parts)  # type: ignore[arg-type]

    def _metric(self, metric: dict, stat: str | None, readings: dict) -> float | None:
        namespace, name = metric.get("Namespace"), metric.get("MetricName")
        dimensions = metric.get("Dimensions", [])
        if namespace != "AWS/SQS" or name not in SQS_METRICS:
            raise Unsupported(f"metric {namespace}/{name}; known: AWS/SQS {', '.join(SQS_METRICS)}")
        if stat not in STATISTICS:
            raise Unsupported(f"statistic {stat!r}; known: {', '.join(STATISTICS)}")
        if [d["Name"] for d in dimensions] != ["QueueName"]:
            raise Unsupported(f"dimensions {dimensions}, expected QueueName alone")
        queue = dimensions[0]["Value"]
        if queue not in readings:
            readings[queue] = self._read_queue(queue)
        attributes = readings[queue]
        return None if attributes is None else float(attributes[SQS_METRICS[name]])

    def _read_queue(self, queue: str) -> dict | None:
        try:
            if queue not in self._urls:
                self._urls[queue] = self._sqs.get_queue_url(QueueName=queue)["QueueUrl"]
            return self._sqs.get_queue_attributes(
                QueueUrl=self._urls[queue], AttributeNames=list(SQS_METRICS.values())
            )["Attributes"]
        except self._sqs.exceptions.QueueDoesNotExist:
            self._urls.pop(queue, None)
            return None

    def _evaluate(self, alarm: dict, track: _Track, value: float | None) -> tuple[str, str] | None:
        """The alarm's state and reason after ``value``; None: the state stays."""
        n = alarm["EvaluationPeriods"]
        needed = alarm.get("DatapointsToAlarm") or n
        treat = alarm.get("TreatMissingData", "missing")
        if value is None and treat == "ignore":
            return None
        track.points = (track.points + [value])[-n:]
        shown = ", ".join("missing" if v is None else f"{v:g}" for v in track.points)
        if len(track.points) < n or (treat == "missing" and set(track.points) == {None}):
            return "INSUFFICIENT_DATA", f"{len(track.points)} of {n} datapoints [{shown}]"
        compare = COMPARISONS[alarm["ComparisonOperator"]]
        threshold = alarm["Threshold"]
        breaching = sum(
            treat == "breaching" if v is None else compare(v, threshold) for v in track.points
        )
        state = "ALARM" if breaching >= needed else "OK"
        reason = (
            f"{breaching} of the last {n} datapoints [{shown}] breached "
            f"{alarm['ComparisonOperator']} {threshold:g} ({needed} make ALARM)"
        )
        return state, reason

    # ---------------------------------------------------------------- Auto Scaling

    def _policy(self, arn: str) -> dict | None:
        if self._policies is None:  # once a round, only when an alarm acts
            pages = self._asg.get_paginator("describe_policies").paginate()
            self._policies = {p["PolicyARN"]: p for page in pages for p in page["ScalingPolicies"]}
        return self._policies.get(arn)

    def _execute(
        self, arn: str, alarm: dict, value: float | None, groups: dict[str, dict], now: float
    ) -> None:
        policy = self._policy(arn)
        if policy is None:
            self._error(f"alarm {alarm['AlarmName']}: action {arn} names no scaling policy")
            return
        group = groups.get(policy["AutoScalingGroupName"])
        if group is None:  # not one of ours
            return
        kind, desired = policy.get("PolicyType", "SimpleScaling"), group["DesiredCapacity"]
        try:
            if kind == "StepScaling":
                if value is None:
                    raise Unsupported("a step needs a value; the datapoint is missing")
                adjustment = step_adjustment(policy, value - alarm["Threshold"])
                if adjustment is None:
                    return
            elif kind == "SimpleScaling":
                if now < self._cool.get(arn, -INF):
                    return
                adjustment = policy["ScalingAdjustment"]
            else:
                raise Unsupported(f"PolicyType {kind!r}")
            target = capacity_after(policy, desired, adjustment)
        except Unsupported as e:
            self._error(f"policy {policy['PolicyName']}: {e}; not run")
            return
        asked = target - desired
        if kind == "StepScaling" and asked > 0:
            since, before = self._warm.get(arn, (-INF, 0))
            warmup = policy.get("EstimatedInstanceWarmup", group.get("DefaultCooldown", 300))
            if now - since < warmup * self.scale:  # instances still warming up count
                target = desired + max(0, asked - before)
        new = clamp(target, group)
        if new == desired:
            return
        if new > desired and any(
            p.get("ProcessName") == "Launch" for p in group.get("SuspendedProcesses", [])
        ):  # AWS would raise the desired capacity and launch nothing; moto would launch
            return
        self._asg.set_desired_capacity(
            AutoScalingGroupName=group["AutoScalingGroupName"], DesiredCapacity=new,
            HonorCooldown=False,
        )  # fmt: skip
        group["DesiredCapacity"] = new
        if kind == "StepScaling" and new > desired:
            self._warm[arn] = (now, asked)
        if kind == "SimpleScaling":
            cooldown = policy.get("Cooldown") or group.get("DefaultCooldown") or 300
            self._cool[arn] = now + cooldown * self.scale
        cause = f"alarm {alarm['AlarmName']} in ALARM ({alarm['StateReason']}): value {value}"
        self._activity(group["AutoScalingGroupName"], policy["PolicyName"], desired, new, cause)

    def _scheduled(self, groups: dict[str, dict]) -> None:
        now = datetime.now(timezone.utc)
        pages = self._asg.get_paginator("describe_scheduled_actions").paginate()
        for action in [a for page in pages for a in page["ScheduledUpdateGroupActions"]]:
            name, group = action["ScheduledActionName"], groups.get(action["AutoScalingGroupName"])
            if group is None:
                continue
            if action.get("Recurrence") or "StartTime" not in action:
                self._error(f"scheduled action {name}: only one-time actions (a StartTime, no "
                            f"Recurrence) are run, not {action.get('Recurrence')!r}")  # fmt: skip
                continue
            if action["StartTime"] > now:
                continue
            sizes = {k: action[k] for k in ("MinSize", "MaxSize", "DesiredCapacity") if k in action}
            bounds = {**group, **sizes}  # new bounds move the desired capacity, as on AWS
            sizes.setdefault("DesiredCapacity", clamp(group["DesiredCapacity"], bounds))
            gname = group["AutoScalingGroupName"]
            self._asg.update_auto_scaling_group(AutoScalingGroupName=gname, **sizes)
            self._asg.delete_scheduled_action(AutoScalingGroupName=gname, ScheduledActionName=name)
            old = group["DesiredCapacity"]
            group.update(sizes)
            self._activity(gname, None, old, group["DesiredCapacity"],
                           f"scheduled action {name} ({action['StartTime']:%Y-%m-%dT%H:%M:%SZ}) "
                           f"set {sizes}")  # fmt: skip

    def _replace_lost(self, groups: dict[str, dict]) -> None:
        members = {
            i["InstanceId"]: name
            for name, g in groups.items()
            for i in g["Instances"]
            if i["LifecycleState"] == "InService"
        }
        if not members:
            return
        pages = self._ec2.get_paginator("describe_instances").paginate(
            Filters=[  # the tag too: an instance that left its group since has lost it
                {"Name": "instance-id", "Values": list(members)},
                {"Name": "tag:aws:autoscaling:groupName", "Values": list(groups)},
            ]
        )
        for page in pages:
            for instance in [i for r in page["Reservations"] for i in r["Instances"]]:
                iid, state = instance["InstanceId"], instance["State"]["Name"]
                if state not in LOST:
                    continue
                self._asg.terminate_instance_in_auto_scaling_group(
                    InstanceId=iid, ShouldDecrementDesiredCapacity=False
                )
                desired = groups[members[iid]]["DesiredCapacity"]
                self._activity(members[iid], None, desired, desired,
                               f"instance {iid} is {state}: replaced (EC2 health check)")  # fmt: skip
