"""The Auto Scaling group's parts that need no AWS: its steps, what `ls` says of its
activities, the profile's options, the boot agent's signed `leave`, the user-data."""

from __future__ import annotations

import datetime
import urllib.parse
from types import SimpleNamespace
from unittest import mock

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from cloudloop.errors import ConfigError
from cloudloop.model import WorkerOptions
from cloudloop.providers import bootagent, userdata
from cloudloop.providers.ec2 import Ec2Settings
from cloudloop.providers.ec2_group import Ec2Group, step_adjustments

NOW = datetime.datetime(2026, 12, 1, 12, 0, 0, tzinfo=datetime.timezone.utc)


def _machines(steps, tasks: int) -> int:
    """What the step scaling policy adds for ``tasks`` waiting (AWS's interval rule)."""
    for st in steps:
        lo = st["MetricIntervalLowerBound"]
        hi = st.get("MetricIntervalUpperBound", float("inf"))
        if lo <= tasks < hi:
            return st["ScalingAdjustment"]
    raise AssertionError(f"no step for {tasks}")


@pytest.mark.parametrize(
    ("per_instance", "cap", "tasks", "machines"),
    [
        (2, 10, 1, 1), (2, 10, 2, 1), (2, 10, 3, 2), (2, 10, 4, 2), (2, 10, 5, 4),
        (2, 10, 8, 4), (2, 10, 9, 8), (2, 10, 17, 10), (2, 10, 10_000, 10),
        (1, 1, 1, 1), (1, 1, 500, 1), (4, 3, 9, 3), (8, 50, 64, 8), (8, 50, 65, 16),
    ],
)  # fmt: skip
def test_the_scale_out_steps_add_the_machines_the_waiting_tasks_need(
    per_instance, cap, tasks, machines
):
    steps = step_adjustments(per_instance, cap)
    assert _machines(steps, tasks) == machines
    assert len(steps) <= 20  # AWS's limit of step adjustments per policy
    assert "MetricIntervalUpperBound" not in steps[-1] and steps[0]["MetricIntervalLowerBound"] == 0


def test_a_large_cap_stays_within_awss_step_limit():
    assert len(step_adjustments(1, 100_000)) <= 20


def _group_with(activities):
    asg = mock.Mock()
    asg.describe_scaling_activities.return_value = {"Activities": activities}
    ctx = SimpleNamespace(group_name="cloudloop-x", cluster="x",
                          aws=SimpleNamespace(autoscaling=asg))  # fmt: skip
    return Ec2Group(ctx)  # type: ignore[arg-type]


def test_ls_shows_awss_own_reason_for_a_failed_launch():
    at = datetime.datetime(2026, 12, 1, 10, 31, 2, tzinfo=datetime.timezone.utc)
    why = ("Could not launch Spot Instances. InsufficientInstanceCapacity - There is no Spot "
           "capacity available that matches your request. Launching EC2 instance failed.")  # fmt: skip
    lines = _group_with([
        {"StartTime": at, "StatusCode": "Failed", "StatusMessage": why,
         "Description": "Launching a new EC2 instance.  Status Reason: ..."},
        {"StartTime": at, "StatusCode": "Successful",
         "Description": "Launching a new EC2 instance: i-0abc"},
    ]).activity_lines()  # fmt: skip
    assert lines[0].startswith("  10:31:02 Failed") and lines[1] == f"    | {why}"
    assert lines[2] == "  10:31:02 Successful  Launching a new EC2 instance: i-0abc"


def test_activities_that_cannot_be_read_are_one_line():
    from botocore.exceptions import ClientError

    g = _group_with([])
    g.ctx.aws.autoscaling.describe_scaling_activities.side_effect = ClientError(
        {"Error": {"Code": "AccessDenied", "Message": "no"}}, "DescribeScalingActivities"
    )
    assert g.activity_lines() == ["  (no scaling activities: AccessDenied)"]


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"on_demand_base": -1}, "on_demand_base must be a whole number >= 0"),
        ({"on_demand_base": True}, "on_demand_base must be a whole number >= 0"),
        ({"on_demand_base": 2, "on_demand_fallback": False}, "on_demand_fallback = false forbids"),
        ({"scale_in_after": "30s"}, "scale_in_after must be between 1m and 24h"),
        ({"scale_in_after": "2d"}, "scale_in_after must be between 1m and 24h"),
        ({"scale_in_after": "soon"}, "is not a duration"),
    ],
)
def test_bad_group_options_are_one_clear_error(options, error):
    with pytest.raises(ConfigError, match=error):
        Ec2Settings.from_options("x", options)


def test_good_group_options():
    s = Ec2Settings.from_options("x", {"on_demand_base": 1, "scale_in_after": "15m"})
    assert (s.on_demand_base, s.scale_in_after) == (1, 900.0)


@pytest.mark.parametrize("endpoint", [None, "http://10.0.0.1:5000"])
def test_the_boot_agent_signs_its_leave_exactly_as_botocore_does(endpoint):
    creds = ("AKIDEXAMPLE", "secret/with+chars", "session=token")
    params = {"Action": "TerminateInstanceInAutoScalingGroup", "InstanceId": "i-0abc",
              "ShouldDecrementDesiredCapacity": "true"}  # fmt: skip
    url, body, headers = bootagent.group_call(endpoint, "eu-west-1", creds, params, NOW)
    assert url == (endpoint + "/" if endpoint else "https://autoscaling.eu-west-1.amazonaws.com/")
    assert urllib.parse.parse_qs(body.decode())["Version"] == ["2011-01-01"]
    req = AWSRequest(method="POST", url=url, data=body,
                     headers={"content-type": headers["content-type"]})  # fmt: skip
    auth = SigV4Auth(Credentials(*creds), "autoscaling", "eu-west-1")
    with mock.patch("botocore.auth.get_current_datetime", return_value=NOW.replace(tzinfo=None)):
        auth.add_auth(req)
    assert headers["authorization"] == req.headers["Authorization"]


def test_an_instance_of_a_group_leaves_it_on_every_way_out():
    b = userdata.Bootstrap(backend="aws://b/p?region=us-east-1", version="1", worker=WorkerOptions(),
                           python="3.11", cluster="c", group="cloudloop-c")  # fmt: skip
    script = userdata.render(b)
    assert "export CLOUDLOOP_GROUP=cloudloop-c" in script
    body = script.split("fail() {", 1)[1].split("\n}", 1)[0]
    assert "\n  leave\n" in body  # a failed boot leaves too, after counting the failures
    assert body.index('"$AGENT" hold') < body.index("\n  leave\n")
    assert "export CLOUDLOOP_MAX_FAILED_BOOTS=3" in script
    assert script.rstrip().endswith("leave")  # and the end of the workers
    assert "shutdown -h now" in script.split("leave() {", 1)[1].split("\n}", 1)[0]
    plain = userdata.render(userdata.Bootstrap(backend="aws://b/p", version="1",
                                               worker=WorkerOptions(), python="3.11"))  # fmt: skip
    assert "CLOUDLOOP_GROUP=" not in plain  # a fleet's instance just shuts down


def _rec(config, launched, failed=False, served=False, stopped=False):
    phases = [["launched", launched, ""]]
    if served:
        phases.append(["workers", launched + 30, ""])
    rec = {"config": config, "phases": phases}
    if failed:
        rec["failed"] = "no python3.11"
    if stopped:
        rec["stopped"] = "cloudloop down"
    return (launched, rec)


@pytest.mark.parametrize(
    ("records", "since", "run"),
    [
        ([_rec("a", 1, failed=True), _rec("a", 2, failed=True)], 0, 2),
        ([_rec("a", 1, failed=True), _rec("a", 2, served=True), _rec("a", 3, failed=True)], 0, 1),
        ([_rec("a", 1, failed=True), _rec("b", 2, failed=True), _rec("a", 3, failed=True)], 0, 2),
        ([_rec("a", 1, failed=True), _rec("a", 2), _rec("a", 3, failed=True)], 0, 2),  # under way
        ([_rec("a", 1, failed=True), _rec("a", 2, failed=True, stopped=True)], 0, 1),
        ([_rec("a", 1, failed=True), _rec("a", 5, failed=True)], 3, 1),  # a resume at 3
        ([_rec("b", 1, failed=True)], 0, 0),
        ([], 0, 0),
    ],
)
def test_the_instance_counts_failed_boots_in_a_row_as_the_client_does(records, since, run):
    assert bootagent.failed_in_a_row(records, "a", since) == run


def test_the_boot_agents_reset_key_is_the_clients():
    from cloudloop import keys

    for name in ("plain", "with space", "ünï", "x" * 80):
        assert bootagent.reset_key(name) == keys.boots_reset(name)


def test_the_boot_agent_signs_a_listing_exactly_as_botocore_does():
    from botocore.auth import S3SigV4Auth

    creds = ("AKIDEXAMPLE", "secret/with+chars", "session=token")
    for url in ("aws://my-bucket/jobs?region=eu-west-1",
                "aws://bk/jobs?region=us-east-1&endpoint=http://10.0.0.1:5000"):  # fmt: skip
        bucket = bootagent.Bucket(url, None, creds)
        query = "list-type=2&prefix=jobs%2Fclusters%2Fa%3Db%2Fboots%2F"
        u, headers = bucket.signed("GET", "", b"", NOW, query=query)
        assert u.endswith("?" + query)
        req = AWSRequest(method="GET", url=u, data=b"",
                         headers={"x-amz-content-sha256": headers["x-amz-content-sha256"]})  # fmt: skip
        auth = S3SigV4Auth(Credentials(*creds), "s3", bucket.region)
        with mock.patch(
            "botocore.auth.get_current_datetime", return_value=NOW.replace(tzinfo=None)
        ):
            auth.add_auth(req)
        assert headers["authorization"] == req.headers["Authorization"]


def test_the_dashboard_asks_aws_for_the_group_at_most_every_30_s(tmp_path):
    from cloudloop.backends import open_backend
    from cloudloop.dashboard import DashboardServer

    calls = []

    def snapshot():
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("AWS refused DescribeAutoScalingGroups")
        return [{"group": "cloudloop-x", "desired": 1}]

    server = DashboardServer(open_backend(f"sqlite://{tmp_path}/b"), port=0, groups=snapshot)
    try:
        for _ in range(20):  # however many browsers poll
            assert server.groups() == [{"group": "cloudloop-x", "desired": 1}]
        assert len(calls) == 1
        server._groups_every = 0.0
        assert server.groups() == [{"error": "RuntimeError: AWS refused DescribeAutoScalingGroups"}]
    finally:
        server.server_close()
    plain = DashboardServer(open_backend(f"sqlite://{tmp_path}/b"), port=0)
    assert plain.groups() == []
    plain.server_close()
