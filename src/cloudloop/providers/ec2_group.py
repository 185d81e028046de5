"""The cluster's EC2 Auto Scaling group: AWS keeps the machines the queue needs.

``cloudloop up`` sets this up and returns; from then on nothing of ours runs.
Everything is named after the cluster (``cloudloop-<cluster>``) and tagged
``cloudloop:cluster``::

    group  cloudloop-<cluster>      min 0, max ceil(max_workers / workers per instance);
                                    a mixed-instances policy over instance_types x subnets:
                                    spot (price-capacity-optimized) above an on-demand base
                                    of on_demand_base (0); capacity rebalancing on
    alarm  cloudloop-<cluster>-work    SQS ApproximateNumberOfMessagesVisible > 0 for a
                                       minute -> policy -out (step scaling): add as many
                                       machines as the waiting tasks need, in steps of
                                       1, 2, 4, ... (warm-up: repeated alarms add nothing)
    alarm  cloudloop-<cluster>-empty   visible + in flight + delayed <= 0 for scale_in_after
                                       -> policy -zero: desired capacity 0
    action cloudloop-max-cost          (with max_cost) at the deadline: min = max = desired = 0

A boot that fails ends itself in the group too; the ``max_failed_boots``-th
failure of one configuration in a row turns off the ``-work`` alarm's
actions (bootagent.py ``hold``), so a broken profile is not a stream of machines that
fail one after another with nobody watching. ``up`` with a changed profile, or
``resume``, turns them on again.

Machines are not taken away while they work: a worker idle for ``idle_exit``
leaves, and its instance ends itself *within the group*
(TerminateInstanceInAutoScalingGroup with the desired capacity decremented:
bootagent.py ``leave``), so the group does not replace it. The ``-empty``
alarm only catches what is left once the queue has been empty for a while. An
instance with a spot interruption notice does not decrement: the group
replaces the capacity AWS took.

``pause`` turns the ``-work`` alarm's actions off and lowers the maximum to the
machines in service, so nothing new starts and nothing working is killed;
each leaves when idle and the group shrinks with it. ``resume`` undoes both.
``down`` deletes the scheduled action, the policies, the alarms and the group
with its instances.

Why step scaling on our own alarms rather than target tracking: a per-instance
backlog metric is undefined at zero instances (no scale-out from zero), and
target tracking scales in by terminating instances that may be mid-task.
"""

from __future__ import annotations

import datetime
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from ..backends.aws import error_code
from ..errors import ConfigError
from ..model import format_seconds
from .ec2_setup import TAG_CLUSTER, Ec2Context, aws_errors_in_public_methods

PERIOD = 60  # s: SQS publishes its queue metrics to CloudWatch once a minute
WARMUP = 300  # s: a new instance's boot; scale-outs meanwhile do not add again
COST_ACTION = "cloudloop-max-cost"
LEAVE_MARGIN = 60.0  # s: workers leave this long before the group is set to zero


@dataclass(frozen=True)
class GroupNames:
    """What the cluster's group and its scaling are called."""

    group: str

    @property
    def out(self) -> str:
        return f"{self.group}-out"

    @property
    def zero(self) -> str:
        return f"{self.group}-zero"

    @property
    def work_alarm(self) -> str:
        return f"{self.group}-work"

    @property
    def empty_alarm(self) -> str:
        return f"{self.group}-empty"

    @property
    def alarms(self) -> list[str]:
        return [self.work_alarm, self.empty_alarm]


def _one_line(text: Any) -> str:
    """AWS's text as one line (its API allows newlines, tabs and other control characters)."""
    return " ".join("".join(c if c.isprintable() else " " for c in str(text)).split())


def _suspended(group: dict[str, Any]) -> bool:
    """Whether the group's Launch process is suspended (by hand: cloudloop never does)."""
    return any(p.get("ProcessName") == "Launch" for p in group.get("SuspendedProcesses", []))


def _usd(x: float | None) -> str:
    return f"${x or 0:.2f}" if (x or 0) >= 1 else f"${x or 0:.4g}"


def step_adjustments(per_instance: int, cap: int) -> list[dict[str, Any]]:
    """Steps over the waiting tasks (the alarm's value above its threshold 0): ``k``
    machines for up to ``k * per_instance`` tasks, k = 1, 2, 4, ... until ``cap``.

    The bounds sit half-way between whole numbers of tasks, so 1 to
    ``per_instance`` tasks add one machine, not two."""
    steps: list[dict[str, Any]] = []
    lower, k = 0.0, 1
    while True:
        if k >= cap:
            steps.append({"MetricIntervalLowerBound": lower, "ScalingAdjustment": cap})
            return steps
        upper = k * per_instance + 0.5
        steps.append({"MetricIntervalLowerBound": lower, "MetricIntervalUpperBound": upper,
                      "ScalingAdjustment": k})  # fmt: skip
        lower, k = upper, k * 2


def _sqs(metric: str, queue: str, ident: str) -> dict[str, Any]:
    return {
        "Id": ident,
        "MetricStat": {
            "Metric": {
                "Namespace": "AWS/SQS",
                "MetricName": metric,
                "Dimensions": [{"Name": "QueueName", "Value": queue}],
            },  # fmt: skip
            "Period": PERIOD,
            "Stat": "Maximum",
        },
        "ReturnData": False,
    }


@aws_errors_in_public_methods
class Ec2Group:
    """The cluster's Auto Scaling group and what scales it."""

    def __init__(self, ctx: Ec2Context):
        self.ctx = ctx
        self.names = GroupNames(ctx.group_name)

    @property
    def _asg(self) -> Any:
        return self.ctx.aws.autoscaling

    @property
    def _cw(self) -> Any:
        return self.ctx.aws.cloudwatch

    denied: str | None = None  # why these credentials may not describe groups, if so
    _had = 0  # the group's instances when delete() began

    def describe(self) -> dict[str, Any] | None:
        """The group as AWS describes it, if it exists and is the cluster's (tagged); None
        also when these credentials may not describe groups (``denied`` says so: an
        account without Auto Scaling, used with ``up --foreground``)."""
        try:
            found = self._asg.describe_auto_scaling_groups(AutoScalingGroupNames=[self.names.group])
        except ClientError as e:
            if error_code(e) not in ("AccessDenied", "AccessDeniedException",
                                     "UnauthorizedOperation"):  # fmt: skip
                raise
            self.denied = error_code(e)
            return None
        for g in found.get("AutoScalingGroups", []):
            tags = {t.get("Key"): t.get("Value") for t in g.get("Tags", [])}
            if g.get("AutoScalingGroupName") == self.names.group and (
                tags.get(TAG_CLUSTER) == self.ctx.cluster
            ):
                return dict(g)
        return None

    def cap(self, per_instance: int) -> int:
        """The group's maximum: max_workers in machines of ``per_instance`` workers."""
        return max(1, math.ceil(self.ctx.settings.max_workers / per_instance))

    # ------------------------------------------------------------------ up

    def set_up(
        self,
        overrides: list[dict[str, Any]],
        template: dict[str, str],
        subnets: list[str],
        per_instance: int,
        deadline: float | None,
        paused: bool,
    ) -> list[str]:
        """Create or update the group, its policies and alarms, and the max_cost action.

        Args:
            overrides: the mixed-instances policy's overrides (a type each, and its own
                launch template version where architectures differ).
            template: the launch template version the group launches by default.
            subnets: where it may launch.
            per_instance: workers per machine (the steps are in machines).
            deadline: when max_cost is reached (None: no max_cost).
            paused: the backend is paused (the group is kept from growing).

        Raises:
            ConfigError: these credentials may not use Auto Scaling or CloudWatch alarms
                (what to allow, or to scale from a terminal instead).
        """
        try:
            return self._set_up(overrides, template, subnets, per_instance, deadline, paused)
        except ClientError as e:
            code = error_code(e)
            if code not in ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation"):
                raise
            op = e.operation_name
            msg = e.response.get("Error", {}).get("Message", "")
            raise ConfigError(
                f"AWS refused {op} ({code}): {msg}; let these credentials manage Auto Scaling "
                "groups and CloudWatch alarms named cloudloop-* (docs/providers/ec2.md), or "
                "follow the queue from a terminal: `cloudloop up --foreground`"
            ) from None

    def _set_up(
        self,
        overrides: list[dict[str, Any]],
        template: dict[str, str],
        subnets: list[str],
        per_instance: int,
        deadline: float | None,
        paused: bool,
    ) -> list[str]:
        s, n = self.ctx.settings, self.names
        cap = self.cap(per_instance)
        existing = self.describe()
        if existing and existing.get("Status"):  # "Delete in progress"
            raise ConfigError(f"group {n.group} is being deleted ({existing['Status']}): "
                              "try `cloudloop up` again in a minute")  # fmt: skip
        spot = s.spot
        policy = {
            "LaunchTemplate": {"LaunchTemplateSpecification": template, "Overrides": overrides},
            "InstancesDistribution": {
                "OnDemandAllocationStrategy": "lowest-price",
                "OnDemandBaseCapacity": s.on_demand_base if spot else 0,
                "OnDemandPercentageAboveBaseCapacity": 0 if spot else 100,
                "SpotAllocationStrategy": "price-capacity-optimized",
            },
        }
        top = int(existing["MaxSize"]) if paused and existing is not None else cap
        size = {"MinSize": 0, "MaxSize": top}
        common = {
            "AutoScalingGroupName": n.group,
            "MixedInstancesPolicy": policy,
            "VPCZoneIdentifier": ",".join(subnets),
            "CapacityRebalance": True,
            "DefaultInstanceWarmup": WARMUP,
            **size,
        }
        lines = []
        if existing is None:
            tags = [{**t, "PropagateAtLaunch": False, "ResourceId": n.group,
                     "ResourceType": "auto-scaling-group"} for t in self.ctx.tags]  # fmt: skip
            self._asg.create_auto_scaling_group(DesiredCapacity=0, Tags=tags, **common)
            lines.append(f"created Auto Scaling group {n.group}")
        else:
            self._asg.update_auto_scaling_group(**common)
            lines.append(f"updated Auto Scaling group {n.group}")
        # zones fall out of balance as idle machines leave: AWS must not end busy ones for it
        self._asg.suspend_processes(AutoScalingGroupName=n.group, ScalingProcesses=["AZRebalance"])
        self._scaling(per_instance, cap, paused)
        if existing is not None and _suspended(existing):  # a group that cannot launch
            self._asg.resume_processes(AutoScalingGroupName=n.group, ScalingProcesses=["Launch"])
            lines.append("  its Launch process was suspended: resumed")
        lines.append(self._cost_action(deadline))
        kind = (f"spot (price-capacity-optimized) above {s.on_demand_base} on-demand"
                if spot and s.on_demand_base else "spot (price-capacity-optimized)"
                if spot else "on-demand")  # fmt: skip
        lines.insert(1, f"  {kind} over {len(overrides)} instance type(s) x {len(subnets)} "
                        f"subnet(s); min 0, max {size['MaxSize']} machine(s) of "
                        f"{per_instance} worker(s)")  # fmt: skip
        lines.insert(2, f"  follows queue {self.ctx.queue_name}: machines start when tasks wait; "
                        f"back to zero once it has been empty for "
                        f"{format_seconds(s.scale_in_after)}; idle workers leave after "
                        f"{format_seconds(self.ctx.worker.idle_exit or 0)}")  # fmt: skip
        if paused:
            lines.append("  the backend is paused: the group starts nothing until "
                         "`cloudloop resume`")  # fmt: skip
        return lines

    def _scaling(self, per_instance: int, cap: int, paused: bool) -> None:
        """The two policies and their alarms (put again on every ``up``: idempotent)."""
        s, n, q = self.ctx.settings, self.names, self.ctx.queue_name
        out = self._asg.put_scaling_policy(
            AutoScalingGroupName=n.group, PolicyName=n.out, PolicyType="StepScaling",
            AdjustmentType="ChangeInCapacity", MetricAggregationType="Maximum",
            EstimatedInstanceWarmup=WARMUP, StepAdjustments=step_adjustments(per_instance, cap),
        )  # fmt: skip
        zero = self._asg.put_scaling_policy(
            AutoScalingGroupName=n.group, PolicyName=n.zero, PolicyType="SimpleScaling",
            AdjustmentType="ExactCapacity", ScalingAdjustment=0, Cooldown=PERIOD,
        )  # fmt: skip
        tags = [{"Key": t["Key"], "Value": t["Value"]} for t in self.ctx.tags]
        self._cw.put_metric_alarm(
            AlarmName=n.work_alarm,
            AlarmDescription=f"cloudloop: tasks wait in {q}; start machines in {n.group}",
            Metrics=[{**_sqs("ApproximateNumberOfMessagesVisible", q, "visible"),
                      "ReturnData": True}],  # fmt: skip
            ComparisonOperator="GreaterThanThreshold", Threshold=0.0,
            EvaluationPeriods=1, DatapointsToAlarm=1, TreatMissingData="notBreaching",
            AlarmActions=[self._arn(out, n.out)], ActionsEnabled=not paused, Tags=tags,
        )  # fmt: skip
        periods = max(1, round(s.scale_in_after / PERIOD))
        self._cw.put_metric_alarm(
            AlarmName=n.empty_alarm,
            AlarmDescription=f"cloudloop: {q} has been empty; {n.group} back to zero",
            Metrics=[
                _sqs("ApproximateNumberOfMessagesVisible", q, "visible"),
                _sqs("ApproximateNumberOfMessagesNotVisible", q, "inflight"),
                _sqs("ApproximateNumberOfMessagesDelayed", q, "delayed"),
                {"Id": "tasks", "Expression": "visible + inflight + delayed",
                 "Label": "tasks in the queue", "ReturnData": True},
            ],
            ComparisonOperator="LessThanOrEqualToThreshold", Threshold=0.0,
            EvaluationPeriods=periods, DatapointsToAlarm=periods,
            TreatMissingData="notBreaching", AlarmActions=[self._arn(zero, n.zero)], Tags=tags,
        )  # fmt: skip

    def _arn(self, put: dict[str, Any], name: str) -> str:
        """A policy's ARN from PutScalingPolicy's answer (or, if it has none, its description)."""
        if put.get("PolicyARN"):
            return str(put["PolicyARN"])
        found = self._asg.describe_policies(AutoScalingGroupName=self.names.group,
                                            PolicyNames=[name])["ScalingPolicies"]  # fmt: skip
        return str(found[0]["PolicyARN"])

    def _cost_action(self, deadline: float | None) -> str:
        """The max_cost deadline as a scheduled action that sets the group to zero."""
        n = self.names.group
        if deadline is None:
            self._delete_actions()
            return "  no max_cost: the group runs until `cloudloop down`"
        if deadline <= time.time() + 5:  # AWS takes no StartTime in the past
            self._delete_actions()
            self._asg.update_auto_scaling_group(AutoScalingGroupName=n, MinSize=0, MaxSize=0,
                                                DesiredCapacity=0)  # fmt: skip
            return f"  max_cost {_usd(self.ctx.settings.max_cost)} is spent: the group is at zero"
        at = datetime.datetime.fromtimestamp(deadline, datetime.timezone.utc)
        self._asg.put_scheduled_update_group_action(
            AutoScalingGroupName=n, ScheduledActionName=COST_ACTION, StartTime=at,
            MinSize=0, MaxSize=0, DesiredCapacity=0,
        )  # fmt: skip
        return (f"  max_cost {_usd(self.ctx.settings.max_cost)}: AWS sets the group to zero at "
                f"{at:%Y-%m-%d %H:%M} UTC (in {format_seconds(deadline - time.time())}); "
                "workers leave a minute before")  # fmt: skip

    def _actions(self) -> list[str]:
        found = self._asg.describe_scheduled_actions(AutoScalingGroupName=self.names.group)
        return [a["ScheduledActionName"] for a in found.get("ScheduledUpdateGroupActions", [])]

    def _delete_actions(self) -> int:
        names = self._actions()
        for name in names:
            self._asg.delete_scheduled_action(AutoScalingGroupName=self.names.group,
                                              ScheduledActionName=name)  # fmt: skip
        return len(names)

    def raise_desired(self, machines: int) -> str:
        """``up -n``: at least ``machines`` now (never fewer than it has: that would end
        machines at work; they leave by themselves when idle)."""
        g = self.describe()
        if g is None:
            raise ConfigError(f"no group {self.names.group}: `cloudloop up` first")
        have, top = int(g["DesiredCapacity"]), int(g["MaxSize"])
        want = min(machines, top)
        if want <= have:
            return (f"the group has {have} machine(s) already (max {top}); it shrinks as their "
                    "workers go idle")  # fmt: skip
        self._asg.set_desired_capacity(AutoScalingGroupName=self.names.group,
                                       DesiredCapacity=want)  # fmt: skip
        note = f" (max_workers allows {top})" if want < machines else ""
        return f"desired capacity {have} -> {want} machine(s){note}"

    # ------------------------------------------------------------------ pause, resume

    def pause(self) -> str | None:
        """Nothing new starts (scale-out off, max = what is in service); nothing at work ends."""
        g = self.describe()
        if g is None:
            return None
        serving = sum(1 for i in g.get("Instances", []) if i.get("LifecycleState") == "InService")
        self._cw.disable_alarm_actions(AlarmNames=[self.names.work_alarm])
        # (the desired capacity follows the maximum down by itself; set from this look it
        # could raise it again for a machine that left since)
        self._asg.update_auto_scaling_group(AutoScalingGroupName=self.names.group, MaxSize=serving)
        return (f"group {self.names.group}: starts nothing more (max {serving}, its machines in "
                "service; each leaves when idle)")  # fmt: skip

    def resume(self, per_instance: int) -> str | None:
        """Max back and the scale-out alarm on; not past the max_cost deadline (the scheduled
        action has run: `cloudloop up` recomputes the budget and the workers' deadline)."""
        g = self.describe()
        if g is None:
            return None
        if self.ctx.settings.max_cost is not None and not self._actions():
            return (f"group {self.names.group}: stays at zero, its max_cost deadline has passed; "
                    "raise max_cost and `cloudloop up`")  # fmt: skip
        cap = self.cap(per_instance)
        self._asg.update_auto_scaling_group(AutoScalingGroupName=self.names.group, MaxSize=cap)
        self._cw.enable_alarm_actions(AlarmNames=[self.names.work_alarm])
        if _suspended(g):
            self._asg.resume_processes(AutoScalingGroupName=self.names.group,
                                       ScalingProcesses=["Launch"])  # fmt: skip
        return f"group {self.names.group}: max {cap} again; it follows the queue"

    # ------------------------------------------------------------------ down

    def delete(self) -> tuple[list[str], bool]:
        """The scheduled action, policies, alarms, then the group and its instances;
        each step runs even if one before it failed."""
        n, done, ok = self.names, [], True
        g = self.describe()
        self._had = len(g.get("Instances", [])) if g else 0  # before _to_zero ends them
        steps: tuple[tuple[str, Callable[[], int | str]], ...] = (
            ("its alarms", self._delete_alarms),
        )  # a group of that name that is not the cluster's (untagged): only our alarms go
        if g is not None and not g.get("Status"):
            steps = (
                ("its machines", self._to_zero),  # first: no scaling without its safety net
                ("its scheduled actions", self._delete_actions),
                ("its scaling policies", self._delete_policies),
                *steps,
                ("the group", self._delete_group),
            )
        for what, fn in steps:
            try:
                said = fn()
            except ClientError as e:
                done.append(f"could not delete {what} of {n.group}: {error_code(e)}: {e}")
                ok = False
                continue
            if said:
                done.append(said if isinstance(said, str) else f"deleted {what} ({said})")
        return done, ok

    def _to_zero(self) -> int:
        self._asg.update_auto_scaling_group(AutoScalingGroupName=self.names.group, MinSize=0,
                                            MaxSize=0, DesiredCapacity=0)  # fmt: skip
        return 0

    def _delete_policies(self) -> int:
        found = self._asg.describe_policies(AutoScalingGroupName=self.names.group)
        names = [p["PolicyName"] for p in found.get("ScalingPolicies", [])
                 if p.get("AutoScalingGroupName") == self.names.group]  # fmt: skip
        for name in names:
            self._asg.delete_policy(AutoScalingGroupName=self.names.group, PolicyName=name)
        return len(names)

    def _ours(self, alarms: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Only the alarms tagged with this cluster (not one of the same name of another's)."""
        out = []
        for a in alarms:
            tags = self._cw.list_tags_for_resource(ResourceARN=a["AlarmArn"]).get("Tags", [])
            if any(t.get("Key") == TAG_CLUSTER and t.get("Value") == self.ctx.cluster
                   for t in tags):  # fmt: skip
                out.append(a)
        return out

    def _delete_alarms(self) -> int:
        found = self._cw.describe_alarms(AlarmNames=self.names.alarms).get("MetricAlarms", [])
        names = [a["AlarmName"] for a in self._ours(found)]
        if names:
            self._cw.delete_alarms(AlarmNames=names)
        return len(names)

    def _delete_group(self) -> str:
        g = self.describe()
        if g is None:
            return ""
        n = max(self._had, len(g.get("Instances", [])))
        try:
            self._asg.delete_auto_scaling_group(AutoScalingGroupName=self.names.group,
                                                ForceDelete=True)  # fmt: skip
        except ClientError as e:
            if "not found" not in str(e).lower() and "in progress" not in str(e).lower():
                raise
        return f"deleted Auto Scaling group {self.names.group} and its {n} instance(s)"

    def leftovers(self) -> list[str]:
        """What of the group's scaling is still there (after ``down``: nothing)."""
        n, left = self.names, []
        g = self.describe()
        if g is not None and not g.get("Status"):
            left.append(f"group {n.group}")
            pols = self._asg.describe_policies(AutoScalingGroupName=n.group)
            left += [f"policy {p['PolicyName']}" for p in pols.get("ScalingPolicies", [])
                     if p.get("AutoScalingGroupName") == n.group]  # fmt: skip
            left += [f"scheduled action {a}" for a in self._actions()]
        if self.denied:
            return left
        alarms = self._cw.describe_alarms(AlarmNames=n.alarms).get("MetricAlarms", [])
        left += [f"alarm {a['AlarmName']}" for a in self._ours(alarms)]
        return left

    # ------------------------------------------------------------------ ls

    def lines(self, activities: int = 5, paused: bool = False) -> list[str]:
        """The group's counts, its alarms' states, the max_cost action and the latest
        scaling activities with AWS's own words (why a launch failed); [] if no group."""
        g = self.describe()
        if g is None:
            return [f"(cannot see Auto Scaling groups: {self.denied})"] if self.denied else []
        n = self.names
        states: dict[str, int] = {}
        for i in g.get("Instances", []):
            states[i.get("LifecycleState", "?")] = states.get(i.get("LifecycleState", "?"), 0) + 1
        where = ", ".join(f"{k} {v}" for k, v in sorted(states.items()) if k != "InService")
        alarms = {a["AlarmName"]: a for a in
                  self._cw.describe_alarms(AlarmNames=n.alarms).get("MetricAlarms", [])}  # fmt: skip
        work, empty = alarms.get(n.work_alarm), alarms.get(n.empty_alarm)
        says = []
        held = False
        if work is not None:
            off = "" if work.get("ActionsEnabled", True) else ", its actions off"
            says.append(f"tasks-waiting alarm {work.get('StateValue', '?')}{off}")
            held = not work.get("ActionsEnabled", True) and not paused
        if empty is not None:
            says.append(f"queue-empty alarm {empty.get('StateValue', '?')}")
        missing = [a for a in n.alarms if a not in alarms]
        if missing:
            says.append(f"missing {', '.join(missing)}: run `cloudloop up` again")
        lines = [
            f"group {n.group}: desired {g.get('DesiredCapacity')}, in service "
            f"{states.get('InService', 0)}{f' ({where})' if where else ''}, "
            f"min {g.get('MinSize')}, max {g.get('MaxSize')}; " + "; ".join(says)
        ]
        if held or _suspended(g):
            lines.append("  launching stopped: boots kept failing (below); fix the profile and "
                         "`cloudloop up`, or `cloudloop resume`")  # fmt: skip
        acts = self._asg.describe_scheduled_actions(AutoScalingGroupName=n.group)
        for a in acts.get("ScheduledUpdateGroupActions", []):
            at = a.get("StartTime")
            when = f"{at:%Y-%m-%d %H:%M} UTC" if isinstance(at, datetime.datetime) else "?"
            lines.append(f"  scheduled {a.get('ScheduledActionName')}: max {a.get('MaxSize')} "
                         f"at {when}")  # fmt: skip
        lines += self.activity_lines(activities)
        return lines

    def snapshot(self, activities: int = 5) -> dict[str, Any] | None:
        """The group as the dashboard shows it (plain values; the page escapes them all)."""
        g = self.describe()
        if g is None:
            return None
        n = self.names
        states: dict[str, int] = {}
        for i in g.get("Instances", []):
            k = str(i.get("LifecycleState", "?"))
            states[k] = states.get(k, 0) + 1
        alarms = self._cw.describe_alarms(AlarmNames=n.alarms).get("MetricAlarms", [])
        acts = self._asg.describe_scheduled_actions(AutoScalingGroupName=n.group)
        try:
            found = self._asg.describe_scaling_activities(
                AutoScalingGroupName=n.group, MaxRecords=activities
            ).get("Activities", [])
        except ClientError:
            found = []

        def at(v: Any) -> float | None:
            return v.timestamp() if isinstance(v, datetime.datetime) else None

        return {
            "group": n.group, "cluster": self.ctx.cluster,
            "desired": g.get("DesiredCapacity"), "min": g.get("MinSize"),
            "max": g.get("MaxSize"), "in_service": states.get("InService", 0), "states": states,
            "suspended": _suspended(g) or any(
                a.get("AlarmName") == n.work_alarm and not a.get("ActionsEnabled", True)
                for a in alarms
            ),
            "alarms": [{"name": a.get("AlarmName"), "state": a.get("StateValue"),
                        "actions": bool(a.get("ActionsEnabled", True))} for a in alarms],
            "scheduled": [{"name": a.get("ScheduledActionName"), "max": a.get("MaxSize"),
                           "at": at(a.get("StartTime"))}
                          for a in acts.get("ScheduledUpdateGroupActions", [])],
            "activities": [{"at": at(a.get("StartTime")), "status": a.get("StatusCode"),
                            "text": str(a.get("Description", ""))[:300],
                            "why": str(a.get("StatusMessage") or "")[:400]}
                           for a in found[:activities]],
        }  # fmt: skip

    def activity_lines(self, limit: int = 5) -> list[str]:
        """The latest scaling activities, newest first, each with its status and cause."""
        try:
            found = self._asg.describe_scaling_activities(
                AutoScalingGroupName=self.names.group, MaxRecords=limit
            ).get("Activities", [])
        except ClientError as e:
            return [f"  (no scaling activities: {error_code(e)})"]
        out = []
        for a in found[:limit]:
            at = a.get("StartTime")
            when = f"{at:%H:%M:%S}" if isinstance(at, datetime.datetime) else "?"
            status = a.get("StatusCode", "?")
            text = a.get("Description", "")
            why = a.get("StatusMessage") if status in ("Failed", "Cancelled") else None
            out.append(f"  {when} {_one_line(status):11s} {_one_line(text)}"[:300])
            if why:
                out.append(f"    | {_one_line(why)}"[:400])
        return out


def overrides_for(
    plans: list[tuple[str, str, tuple[str, ...]]],
) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """(the default launch template version, the overrides): one per instance type; where
    there is more than one architecture, each type names its own architecture's version.

    ``plans``: (template id, version, instance types) per architecture."""
    tid, version, _ = plans[0]
    default = {"LaunchTemplateId": tid, "Version": version}
    out = []
    for ptid, pversion, types in plans:
        for t in types:
            o: dict[str, Any] = {"InstanceType": t}
            if len(plans) > 1:
                o["LaunchTemplateSpecification"] = {"LaunchTemplateId": ptid, "Version": pversion}
            out.append(o)
    return default, out
