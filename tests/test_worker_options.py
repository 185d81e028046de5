"""Worker options cross the wire once: WorkerOptions.to_args / from_args.

Every provider starts workers with ``cloudloop worker`` flags written by
``to_args``; the worker reads them with ``from_args``. These tests walk every
field of the record, so a field added later cannot miss the command line.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys

import pytest

from cloudloop import cli
from cloudloop.errors import ConfigError
from cloudloop.model import WorkerOptions
from cloudloop.providers.base import worker_argv
from cloudloop.providers.local import worker_command
from cloudloop.providers.userdata import Bootstrap, render

FIELDS = dataclasses.fields(WorkerOptions)


def _other_value(f: dataclasses.Field):
    """A value of field ``f`` that is not its default (a new field's type must be known here)."""
    if f.default is False:
        return True
    if f.name == "metadata_url":
        return "http://169.254.169.254"
    if f.name == "stop_at":
        return 1764000123.25  # a unix time with a fraction: written exactly
    if f.name == "worker_memory":
        return 3 << 30  # bytes: written as a whole number, read back by parse_size
    if "float" in str(f.type):
        return (f.default or 0.0) + 7.25
    raise AssertionError(f"test_worker_options does not know how to set field {f.name!r}")


def _everything_set() -> WorkerOptions:
    return WorkerOptions(**{f.name: _other_value(f) for f in FIELDS})


def test_defaults_need_no_flags():
    assert WorkerOptions().to_args() == []
    assert WorkerOptions.from_args([]) == WorkerOptions()


@pytest.mark.parametrize("name", [f.name for f in FIELDS])
def test_each_field_round_trips_alone(name):
    f = next(f for f in FIELDS if f.name == name)
    opts = WorkerOptions(**{name: _other_value(f)})
    args = opts.to_args()
    assert args[0] == WorkerOptions.flag(name) == "--" + name.replace("_", "-")
    assert WorkerOptions.from_args(args) == opts


def test_every_field_round_trips_together_and_through_the_worker_command_line():
    opts = _everything_set()
    args = opts.to_args()
    assert {a for a in args if a.startswith("--")} == {WorkerOptions.flag(f.name) for f in FIELDS}
    assert WorkerOptions.from_args(args) == opts
    # the `cloudloop worker` parser knows every flag and hands them to from_args as written
    parsed = cli._parser().parse_args(worker_argv(opts))
    assert parsed.no_profile and WorkerOptions.from_args(parsed.worker_flags) == opts
    # over a base: given flags win, the rest stay the base's
    base = WorkerOptions(lease=99.0, heartbeat=3.0)
    assert WorkerOptions.from_args(["--heartbeat", "1"], base=base) == base.replace(heartbeat=1.0)
    assert WorkerOptions.from_args([], base=opts) == opts


def test_people_may_type_durations_with_units():
    got = WorkerOptions.from_args(["--lease", "1m", "--idle-exit=2h", "--split-after", "500ms"])
    assert (got.lease, got.idle_exit, got.split_after) == (60.0, 7200.0, 0.5)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--colour", "red"], "'--colour' is not a worker option; known: --exit-when-orphaned"),
        (["--lease"], "--lease needs a value"),
        (["--lease", "--heartbeat", "1"], "--lease needs a value"),
        (["--exit-when-orphaned=yes"], "--exit-when-orphaned takes no value"),
        (["--lease", "soon"], "lease 'soon' is not a duration"),
        (["--lease", "0.5"], "lease must be at least 1 s"),
        (["--stop-at", "tomorrow"], "stop_at must be a unix time, not 'tomorrow'"),
        (["--metadata-url", "file:///etc/passwd"], "metadata_url must be an http:// URL"),
    ],
)
def test_bad_flags_say_what_is_wrong(argv, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        WorkerOptions.from_args(argv)


def test_flush_is_no_option_any_more():
    """The flush interval is the backend's (Backend.flush_interval), not the worker's."""
    assert "flush" not in {f.name for f in FIELDS}
    with pytest.raises(ConfigError, match="not a worker option"):
        WorkerOptions.from_args(["--flush", "1"])


def test_local_ssh_and_ec2_workers_get_the_same_flags():
    opts = _everything_set().replace(exit_when_orphaned=False, metadata_url=None)
    flags = opts.to_args()
    assert worker_command(opts) == [sys.executable, "-m", "cloudloop", "worker", "--no-profile",
                                    *flags]  # fmt: skip
    script = render(
        Bootstrap(
            backend="aws://b/p", version="1.0", worker=opts, python="3.11", stop_at=opts.stop_at
        )
    )
    assert " ".join(shlex.quote(a) for a in worker_argv(opts)) in script
    assert "--split-after" in script  # the bootstrap used to drop it
    (line,) = [x for x in script.splitlines() if "--no-profile" in x]
    assert "aws://b/p" not in line  # the URL is in the environment, not on a command line


def test_ec2_workers_leave_after_an_explicit_idle_default():
    """ec2 fills in Ec2Settings.IDLE_EXIT (an idle instance costs money) when a profile
    sets no idle_exit, and uses the profile's when it does, 0 included."""
    from cloudloop.providers.ec2 import Ec2Provider, Ec2Settings

    provider = Ec2Provider({"cluster": "t"}, "t")
    aws_url = "aws://bucket/p?region=us-east-1&endpoint=http://127.0.0.1:9"  # never called
    assert provider.cluster(aws_url, WorkerOptions()).worker.idle_exit == Ec2Settings.IDLE_EXIT
    assert provider.cluster(aws_url, WorkerOptions(idle_exit=0.0)).worker.idle_exit == 0.0
