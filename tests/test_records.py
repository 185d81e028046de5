"""The small signed records beside a job decode to typed records, or say what is wrong.

They come from other machines (and a store anyone with write access can reach),
so every field is checked on decode; one row per hostile case.
"""

from __future__ import annotations

import dataclasses
import math

import pytest

from cloudloop.model import Cancelled, ClaimedHeader, DeadLetterReason, Finished, Sealed
from cloudloop.providers.prices import LedgerRecord

GOOD = [
    Sealed(12, 3, 100.0),
    Cancelled(5.0, running=False),
    Cancelled(5.0, discarded=True),
    Finished(7.5),
    DeadLetterReason("failed verification: bad MAC", 1.0, "w-1"),
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
