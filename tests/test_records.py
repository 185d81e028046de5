"""The small signed records beside a job decode to typed records, or say what is wrong.

They come from other machines (and a store anyone with write access can reach),
so every field is checked on decode; one row per hostile case.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re

import pytest

from cloudloop.model import (
    MAX_PINS,
    Cancelled,
    ClaimedHeader,
    DeadLetterReason,
    Finished,
    JobManifest,
    JobOptions,
    Sealed,
    SetAside,
)
from cloudloop.providers.prices import LedgerRecord

GOOD = [
    Sealed(12, 3, 100.0),
    Cancelled(5.0, running=False),
    Cancelled(5.0, discarded=True),
    Finished(7.5),
    DeadLetterReason("failed verification: bad MAC", 1.0, "w-1"),
    SetAside("w-1", ("scikit-learn==1.5.2", "numpy==2.0.1"), ("1.4.0", ""), 3.0),
    LedgerRecord("i-1", "c7a.large", 0.1, 50.0, "us-east-1a", "spot", 60.0, "client"),
]


@pytest.mark.parametrize("record", GOOD, ids=lambda r: type(r).__name__)
def test_each_record_round_trips(record):
    assert type(record).from_dict(dataclasses.asdict(record)) == record


@pytest.mark.parametrize(
    ("cls", "data", "message"),
    [
        (Sealed, None, "not a JSON object"),
        (Sealed, [], "not a JSON object"),
        (Sealed, {}, "has no 'tasks'"),
        (Sealed, {"tasks": "5"}, "field 'tasks' is str"),
        (Sealed, {"tasks": -1}, "field 'tasks'"),
        (Sealed, {"tasks": True}, "field 'tasks' is bool"),
        (Sealed, {"tasks": 2.0}, "field 'tasks' is float"),
        (Cancelled, {"running": "no"}, "field 'running' is str"),
        (Cancelled, {"at": math.nan}, "field 'at'"),
        (Cancelled, {"at": math.inf}, "field 'at'"),
        (Finished, {}, "has no 'at'"),
        (Finished, {"at": "yesterday"}, "field 'at' is str"),
        (DeadLetterReason, {"why": 3}, "field 'why' is int"),
        (SetAside, {"worker": "w", "needs": "a==1", "have": ["1"]}, "field 'needs' is str"),
        (SetAside, {"worker": "w", "needs": [1], "have": ["1"]}, "field 'needs' is list"),
        (SetAside, {"worker": "w", "needs": ["a>=1"], "have": ["1"]}, "'a>=1' is not a name==ver"),
        (SetAside, {"worker": "w", "needs": ["a==1"], "have": []}, "1 pins"),
        (SetAside, {"worker": "w", "needs": ["a==1"], "have": ["1\x1b[2J"]}, "is not a version"),
        (SetAside, {"worker": "w", "needs": ["a==1"] * (MAX_PINS + 1), "have": ["1"] * (MAX_PINS + 1)},
         "at most 256"),
        (LedgerRecord, {"id": "i-1", "type": "t", "price": -1, "launched": 0}, "'price'"),
        (LedgerRecord, {"id": "i-1", "type": "t", "price": 1, "launched": 0, "ended": "x"},
         "'ended'"),
    ],
)  # fmt: skip
def test_a_malformed_record_is_a_clear_value_error(cls, data, message):
    with pytest.raises(ValueError, match=message):
        cls.from_dict(data)


def test_fields_a_newer_cloudloop_adds_are_ignored():
    assert Finished.from_dict({"at": 1, "by": "someone"}) == Finished(1.0)
    assert Sealed.from_dict({"tasks": 1, "chunks": None}) == Sealed(1)


@pytest.mark.parametrize(
    ("data", "claimed"),
    [
        ({"job": "j1", "runs": [[0, 9], [20, 20]]}, ClaimedHeader("j1", ((0, 9), (20, 20)))),
        ({"job": "j1", "runs": [[0, "9"]]}, ClaimedHeader("j1", ())),
        ({"job": "j1", "runs": "all"}, ClaimedHeader("j1", ())),
        ({"job": 5}, ClaimedHeader("?", ())),
        ({"job": "x" * 500}, ClaimedHeader("x" * 80, ())),
        ("not a dict", ClaimedHeader()),
    ],
)
def test_what_a_forged_message_claims_is_shown_never_trusted(data, claimed):
    assert ClaimedHeader.from_dict(data) == claimed


def _manifest(**changes):
    m = JobManifest("j1", "job", "python", 1.0, JobOptions(), 7, "host:1", "0.1.0", python="3.11")
    return {**json.loads(json.dumps(m.to_dict())), **changes}


def test_a_manifest_records_its_pins_and_an_old_one_has_none():
    pins = ("numpy==2.0.1", "scikit-learn==1.5.2", "torch==2.3.0+cpu", "pkg.name_x==1!2.0rc1")
    assert JobManifest.from_dict(_manifest(requires=list(pins))).requires == pins
    old = _manifest()
    del old["requires"]
    assert JobManifest.from_dict(old).requires == ()


@pytest.mark.parametrize(
    ("requires", "message"),
    [
        ("numpy==2.0.1", "requires must be a list of name==version pins, not str"),
        ({"numpy": "2.0.1"}, "not dict"),
        ([3], "a pin is int, not text"),
        (["numpy"], "'numpy' is not a name==version pin"),
        (["numpy>=2"], "is not a name==version pin"),
        (["numpy==2.0; os_name=='nt'"], "is not a name==version pin"),
        (["numpy==2.0\n"], "is not a name==version pin"),
        (["-e==1"], "is not a name==version pin"),
        (["numpy==2 --index-url=http://x"], "is not a name==version pin"),
        ([f"a{'b' * 300}==1"], "longer than 200 characters"),
        ([f"p{i}==1" for i in range(MAX_PINS + 1)], f"holds {MAX_PINS + 1} pins, at most"),
    ],
)
def test_a_manifest_with_hostile_pins_is_a_clear_value_error(requires, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        JobManifest.from_dict(_manifest(requires=requires))
