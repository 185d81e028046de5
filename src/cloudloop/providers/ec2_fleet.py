"""One EC2 Fleet request, and AWS's everyday refusals of it, each said in one line.

::

    request(ec2, configs, subnets, market, want, tags, failed)
      ├─ failed already holds a Refusal (nothing this launch asks can get past it)? ask nothing
      ├─ CreateFleet, type instant: one LaunchTemplateConfigs entry per config,
      │  its Overrides = its instance types x the subnets (spot: price-capacity-optimized)
      ├─ raised, worth waiting for: throttling (RequestLimitExceeded, Throttling, 503
      │  Unavailable, 5xx) and an instance profile EC2 does not accept yet (it lags
      │  IAM for a while after `aws init`) -> jittered backoff from FIRST_WAIT, the
      │  last try BOUND seconds after the start, then one Refusal line
      ├─ raised, anything else: one line with AWS's reason and what to do; no retry
      └─ answered:
           Instances  the ones started; any that already ended are said (a stopped
                      one is terminated, so nothing is left behind)
           Errors     the same profile lag: waited for as above; when the fleet came
                      short, one line per refused pool (type x zone, zones of one type
                      and reason together) or per quota; never for a pool that
                      delivered, nor when nothing is missing; other refusals one line
                      each, always
           short with no reason given: said

Every line reads after "could not get " (``LaunchReport`` prints them so)::

    spot c7a.large in us-east-1a: no spot capacity (InsufficientInstanceCapacity)
    any instance: EC2 throttled the launch (RequestLimitExceeded); retried for 62 s
      (24 requests); try again later

botocore retries throttling and 5xx answers itself, inside each ``create_fleet``
call: ``AwsClients`` gives the EC2 client no retry settings, so botocore's
default applies (its "standard" mode in botocore 1.36 and later: 3 attempts,
jittered backoff of up to 20 s; ``AWS_RETRY_MODE``/``AWS_MAX_ATTEMPTS`` or
``~/.aws/config`` change it). The bound here is measured around those calls,
so it counts their time too; no wait goes past it, so the whole request takes
at most BOUND plus one call. The lines count every request EC2
refused, botocore's retries included (``RetryAttempts``).

A request whose refusal no other market can get past either (throttling past the
bound, the profile, permissions, a missing image) appends a :class:`Refusal`:
the launch's next request (its on-demand fallback, another architecture's
fleet) then asks nothing, so a launch says it once and waits BOUND at most.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from ..backends.aws import error_code

BOUND = 60.0  # seconds a request waits in all for throttling or the profile to pass
FIRST_WAIT = 1.0  # seconds before the first retry; each wait doubles, up to 20 s
_LATE = ("shutting-down", "terminated")
_STOPPED = ("stopping", "stopped")

_THROTTLED = {
    "RequestLimitExceeded", "Throttling", "ThrottlingException", "RequestThrottled",
    "RequestThrottledException", "EC2ThrottledException", "TooManyRequestsException",
}  # fmt: skip
_UNAVAILABLE = {"Unavailable", "ServiceUnavailable", "InternalError", "InternalFailure"}

# a pool without room now: the fleet has tried the others already
_NO_ROOM = {
    "InsufficientInstanceCapacity": "no {market} capacity",
    "InsufficientCapacity": "no {market} capacity",
    "InsufficientHostCapacity": "no {market} capacity",
    "UnfulfillableCapacity": "no {market} capacity",
    "SpotMaxPriceTooLow": "its spot price is above the maximum price",
    "InsufficientFreeAddressesInSubnet": "no free IP address in subnet {subnet}",
    "Unsupported": "not offered there",
}

# the account's limit for one market: said once for the market, whatever the pool
_QUOTA = {
    "MaxSpotInstanceCountExceeded": "ask AWS for a higher 'All Standard Spot Instance "
    "Requests' vCPU quota (Service Quotas) or lower max_workers",
    "VcpuLimitExceeded": "ask AWS for a higher 'Running On-Demand Standard instances' "
    "vCPU quota (Service Quotas) or lower max_workers",
    "InstanceLimitExceeded": "ask AWS for a higher instance quota (Service Quotas) or lower "
    "max_workers",
}

_IMAGE = "check the profile's image (it must exist in this region); unset it for Amazon Linux"
_HINTS = {
    "UnauthorizedOperation": "let these credentials call ec2:CreateFleet, ec2:RunInstances, "
    "ec2:CreateTags and iam:PassRole on the workers' role",
    "AuthFailure": "check the credentials (`aws sts get-caller-identity`)",
    "AuthFailure.ServiceLinkedRoleCreationNotPermitted": "spot needs the AWSServiceRoleForEC2Spot "
    "role: `aws iam create-service-linked-role --aws-service-name spot.amazonaws.com`",
    "InvalidAMIID.NotFound": _IMAGE,
    "InvalidAMIID.Malformed": _IMAGE,
    "InvalidAMIID.Unavailable": _IMAGE,
    "InvalidLaunchTemplateId.NotFound": "the launch template is gone: `cloudloop up` makes "
    "a new one",
    "InvalidLaunchTemplateName.NotFoundException": "the launch template is gone: "
    "`cloudloop up` makes a new one",
    "InvalidSubnetID.NotFound": "check the profile's subnets",
    "OptInRequired": "the account (or the image's Marketplace product) needs a subscription",
    "PendingVerification": "AWS is still verifying the account: try again later",
}
_NOTHING_RETRIED = "not retried: fix that, then `cloudloop up` again"


class Refusal(str):
    """A line of ``failed`` that nothing else this launch asks could get past."""


@dataclass(frozen=True)
class FleetConfig:
    """One launch template version and the instance types it is launched as."""

    template_id: str
    version: str
    instance_types: tuple[str, ...]


def request(
    ec2: Any,
    configs: list[FleetConfig],
    subnets: list[dict[str, str]],
    market: str,
    want: int,
    tags: list[dict[str, str]],
    failed: list[str],
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> list[dict[str, Any]]:
    """Start up to ``want`` instances in one instant EC2 Fleet.

    Args:
        ec2: a boto3 EC2 client.
        configs: launch template versions, one LaunchTemplateConfigs entry each.
        subnets: ``[{SubnetId, AvailabilityZone}]``; each type is offered in each.
        market: ``"spot"`` or ``"on-demand"``.
        want: how many instances.
        tags: for the fleet and its instances.
        failed: gets one line per refusal (see the module's docstring).
        sleep, clock: for waiting out throttling and the profile.

    Returns:
        ``[{"id", "type", "subnet", "market"}]`` for each instance started and not
        ended; fewer than ``want`` (or none) when AWS refused the rest.
    """
    if want <= 0 or any(isinstance(f, Refusal) for f in failed):
        return []
    kw = _fleet_args(configs, subnets, market, want, tags)
    zone_of = {s["SubnetId"]: s["AvailabilityZone"] for s in subnets}
    start, waits, asked = clock(), 0, 0
    token = uuid.uuid4().hex  # the same for a retry of a request EC2 refused outright
    while True:
        try:
            resp = ec2.create_fleet(ClientToken=token, **kw)
        except ClientError as e:
            asked += 1 + _retries(e.response)
            code, message = error_code(e), _message(e)
            wait = _worth_waiting(code, message, e.response)
            if wait is None:
                _say(failed, _refused(code, message, market))
                return []
        else:
            asked += 1 + _retries(resp)
            refusal = _profile_refusal(resp)
            if refusal is None:
                return _usable(ec2, resp, market, want, zone_of, failed)
            (code, message), wait = refusal, "profile"
            token = uuid.uuid4().hex  # EC2 would answer the same token with the same refusal
        left = BOUND - (clock() - start)
        if left <= 0:
            _say(failed, _waited(wait, code, message, clock() - start, asked))
            return []
        sleep(min(_delay(waits), left))  # the last try comes at the bound
        waits += 1


def _fleet_args(
    configs: list[FleetConfig],
    subnets: list[dict[str, str]],
    market: str,
    want: int,
    tags: list[dict[str, str]],
) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "Type": "instant",
        "LaunchTemplateConfigs": [
            {
                "LaunchTemplateSpecification": {
                    "LaunchTemplateId": c.template_id,
                    "Version": c.version,
                },
                "Overrides": [
                    {"InstanceType": t, "SubnetId": s["SubnetId"]}
                    for t in c.instance_types
                    for s in subnets
                ],
            }
            for c in configs
        ],
        "TargetCapacitySpecification": {
            "TotalTargetCapacity": want,
            "DefaultTargetCapacityType": market,
        },
    }
    if tags:  # EC2 refuses a tag specification without tags
        kw["TagSpecifications"] = [
            {"ResourceType": "fleet", "Tags": tags},
            {"ResourceType": "instance", "Tags": tags},
        ]
    if market == "spot":
        kw["SpotOptions"] = {"AllocationStrategy": "price-capacity-optimized"}
    else:
        kw["OnDemandOptions"] = {"AllocationStrategy": "lowest-price"}
    return kw


# ---------------------------------------------------------------- refused outright


def _retries(response: dict[str, Any]) -> int:
    """How many times botocore retried the call itself."""
    return int(response.get("ResponseMetadata", {}).get("RetryAttempts", 0) or 0)


def _message(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Message", "")) or str(e)


def _is_profile(code: str, message: str) -> bool:
    m = message.lower()
    return code == "InvalidParameterValue" and (
        "iaminstanceprofile" in m or "instance profile" in m
    )


def _worth_waiting(code: str, message: str, response: dict[str, Any]) -> str | None:
    """Whether a refusal passes by itself: "throttled", "profile", or None."""
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    if code in _THROTTLED or code in _UNAVAILABLE:
        return "throttled"
    if status >= 500 and code not in _NO_ROOM and code not in _QUOTA:
        return "throttled"
    if _is_profile(code, message):
        return "profile"
    return None


def _waited(wait: str, code: str, message: str, waited: float, asked: int) -> Refusal:
    """The line said once waiting is over: no other request of the launch tries again."""
    if wait == "profile":
        return Refusal(
            f"any instance: EC2 does not accept the instance profile {_profile_name(message)} "
            f"yet ({code}: {_clip(message)}); waited {waited:.0f} s; try again in a minute, "
            "or run `cloudloop aws init` if the profile was deleted"
        )
    what = "throttled the launch" if code in _THROTTLED else "was unavailable"
    return Refusal(
        f"any instance: EC2 {what} ({code or 'HTTP 5xx'}); retried for {waited:.0f} s "
        f"({asked} requests); try again later"
    )


def _profile_name(message: str) -> str:
    # "Value (cloudloop-x-worker) for parameter iamInstanceProfile.name is invalid. ..."
    if message.startswith("Value (") and ")" in message:
        return repr(message[len("Value (") : message.index(")")])
    return "of the workers' role"


def _delay(waits: int) -> float:
    """Exponential backoff with jitter: half of it fixed, half random, at most 20 s."""
    d = min(20.0, FIRST_WAIT * 2**waits)
    return d / 2 + random.uniform(0, d / 2)


def _refused(code: str, message: str, market: str) -> str:
    """The line for a refusal not worth waiting for."""
    if code in _QUOTA:
        return f"{market} instances: {_clip(message)} ({code}); {_QUOTA[code]}"
    line = f"EC2 refused the launch: {_clip(message)} ({code}); "
    line += _HINTS.get(code, _NOTHING_RETRIED)
    if code in _NO_ROOM or "Spot" in code or "ServiceLinkedRole" in code:
        return f"{market} instances: {line}"  # this market's: the other may do
    return Refusal(f"any instance: {line}")


def _clip(message: str) -> str:
    # UnauthorizedOperation carries a long encoded blob after its reason
    message = message.split(" Encoded authorization failure message:")[0].strip()
    return message if len(message) <= 300 else message[:297] + "..."


def _say(failed: list[str], line: str) -> None:
    if line not in failed:
        failed.append(line)


# ---------------------------------------------------------------- answered


def _profile_refusal(resp: dict[str, Any]) -> tuple[str, str] | None:
    """(code, message) when the fleet started nothing because of the instance profile."""
    if any(g.get("InstanceIds") for g in resp.get("Instances", [])):
        return None
    for err in resp.get("Errors", []):
        code, message = str(err.get("ErrorCode", "")), str(err.get("ErrorMessage", ""))
        if _is_profile(code, message):
            return code, message
    return None


def _pool(item: dict[str, Any]) -> tuple[str, str]:
    o = item.get("LaunchTemplateAndOverrides", {}).get("Overrides", {})
    kind = item.get("InstanceType") or o.get("InstanceType") or "?"
    return str(kind), str(item.get("SubnetId") or o.get("SubnetId") or "?")


def _usable(
    ec2: Any,
    resp: dict[str, Any],
    market: str,
    want: int,
    zone_of: dict[str, str],
    failed: list[str],
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for group in resp.get("Instances", []):
        kind, subnet = _pool(group)
        for iid in group.get("InstanceIds", []):
            out.append({"id": iid, "type": kind, "subnet": subnet,
                        "market": group.get("Lifecycle") or market})  # fmt: skip
    delivered = {(i["type"], i["subnet"]) for i in out}
    lines = list(_error_lines(resp.get("Errors", []), market, delivered, len(out) < want, zone_of))
    for line in lines:
        _say(failed, line)
    if len(out) < want and not lines:
        _say(failed, f"{want - len(out)} more {market} instance(s): EC2 started "
                     f"{len(out)} of {want} and gave no reason")  # fmt: skip
    gone = _ended(ec2, [i["id"] for i in out], failed, zone_of, {i["id"]: i for i in out})
    return [i for i in out if i["id"] not in gone]


def _error_lines(
    errors: list[dict[str, Any]],
    market: str,
    delivered: set[tuple[str, str]],
    short: bool,
    zone_of: dict[str, str],
) -> Iterable[str]:
    """One line per refused pool group or quota (when short), per other refusal (always)."""
    zones: dict[tuple[str, str, str], list[str]] = {}  # (market, type, reason) -> zones
    other: dict[tuple[str, str, str], list[str]] = {}  # (market, code, message) -> types
    for err in errors:
        code, message = str(err.get("ErrorCode", "")), str(err.get("ErrorMessage", ""))
        kind, subnet = _pool(err)
        lifecycle = str(err.get("Lifecycle") or market)
        if (kind, subnet) in delivered:
            continue  # that pool delivered anyway
        if code in _NO_ROOM:
            reason = _NO_ROOM[code].format(market=lifecycle, subnet=subnet) + f" ({code})"
            if "{subnet}" in _NO_ROOM[code]:
                kind = "instances"  # the subnet's trouble, whatever the type
            where = zones.setdefault((lifecycle, kind, reason), [])
            zone = zone_of.get(subnet, subnet)
            if zone not in where:
                where.append(zone)
        elif code in _QUOTA:
            other.setdefault((lifecycle, code, message), [])
        else:
            kinds = other.setdefault((lifecycle, code, message), [])
            if kind not in kinds:
                kinds.append(kind)
    if short:
        for (m, kind, reason), where in zones.items():
            yield f"{m} {kind} in {', '.join(sorted(where))}: {reason}"
    for (m, code, message), kinds in other.items():
        if code in _QUOTA:
            if short:
                yield f"{m} instances: {_clip(message)} ({code}); {_QUOTA[code]}"
            continue
        yield (f"{m} {', '.join(kinds) or 'instances'}: EC2 refused them: {_clip(message)} "
               f"({code}); {_HINTS.get(code, _NOTHING_RETRIED)}")  # fmt: skip


def _ended(
    ec2: Any,
    ids: list[str],
    failed: list[str],
    zone_of: dict[str, str],
    info: dict[str, dict[str, Any]],
) -> set[str]:
    """The instances among ``ids`` that ended already (each said; a stopped one is
    terminated). One that cannot be described yet is kept: EC2 is eventually
    consistent, and one that never boots is the boot deadline's to end."""
    if not ids:
        return set()
    try:
        found = ec2.describe_instances(InstanceIds=ids)["Reservations"]
    except ClientError:
        return set()
    gone: set[str] = set()
    stopped: list[str] = []
    for inst in (i for r in found for i in r.get("Instances", [])):
        iid, state = inst["InstanceId"], inst.get("State", {}).get("Name", "")
        if state not in _LATE + _STOPPED or iid not in info:
            continue
        i = info[iid]
        why = inst.get("StateReason", {}).get("Message") or inst.get("StateReason", {}).get("Code")
        where = f"{i['market']} {i['type']} in {zone_of.get(i['subnet'], i['subnet'])}"
        if state in _STOPPED:
            stopped.append(iid)
            _say(failed, f"{where}: {iid} stopped at once ({why or state}); terminated it")
        else:
            _say(failed, f"{where}: {iid} ended at once ({why or state})")
        gone.add(iid)
    if stopped:
        try:
            ec2.terminate_instances(InstanceIds=stopped)
        except ClientError as e:
            _say(failed, f"{', '.join(stopped)}: could not terminate them ({error_code(e)}: "
                         f"{_clip(_message(e))}); `cloudloop down` ends them")  # fmt: skip
    return gone
