"""The Store contract: every backend's store behaves like a blob store (S3 semantics)."""

from __future__ import annotations

import threading

import pytest


def test_put_get_round_trip_binary(backend):
    data = bytes(range(256)) * 10
    backend.store.put("a/b/c", data)
    assert backend.store.get("a/b/c") == data


def test_get_missing_raises_keyerror(backend):
    with pytest.raises(KeyError):
        backend.store.get("nope/nothing")
    assert backend.store.get_or_none("nope/nothing") is None


def test_exists(backend):
    assert not backend.store.exists("k")
    backend.store.put("k", b"")
    assert backend.store.exists("k")


def test_put_overwrites(backend):
    backend.store.put("k", b"1")
    backend.store.put("k", b"2")
    assert backend.store.get("k") == b"2"


def test_put_if_absent(backend):
    assert backend.store.put("k", b"first", if_absent=True) is True
    assert backend.store.put("k", b"second", if_absent=True) is False
    assert backend.store.get("k") == b"first"


def test_if_absent_has_one_winner_under_contention(backend):
    wins = []

    def race(i):
        if backend.store.put("race", str(i).encode(), if_absent=True):
            wins.append(i)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert backend.store.get("race") == str(wins[0]).encode()


def test_list_by_prefix_sorted(backend):
    s = backend.store
    for k in [
        "jobs/1/results/002",
        "jobs/1/results/001",
        "jobs/1/logs/x",
        "jobs/2/manifest",
        "other",
    ]:
        s.put(k, b"")
    assert s.list("jobs/1/results/") == ["jobs/1/results/001", "jobs/1/results/002"]
    assert s.list("jobs/1/") == ["jobs/1/logs/x", "jobs/1/results/001", "jobs/1/results/002"]
    assert s.list("jobs/1/res") == ["jobs/1/results/001", "jobs/1/results/002"]
    assert s.list("jobs/") == [
        "jobs/1/logs/x",
        "jobs/1/results/001",
        "jobs/1/results/002",
        "jobs/2/manifest",
    ]
    assert s.list("missing/") == []


def test_delete_prefix(backend):
    s = backend.store
    for k in ["d/1", "d/2", "d/sub/3", "keep/1"]:
        s.put(k, b"x")
    assert s.delete("d/") == 3
    assert s.list("d/") == []
    assert s.list("keep/") == ["keep/1"]
    assert s.delete("d/") == 0


def test_delete_single_key(backend):
    backend.store.put("a/one", b"1")
    backend.store.put("a/one-two", b"2")
    backend.store.delete("a/one-two")
    assert backend.store.list("a/") == ["a/one"]


@pytest.mark.parametrize("bad", ["", "/abs", "a//b", "../x", "a/../b", "sp ace"])
def test_invalid_keys_are_refused(backend, bad):
    with pytest.raises(ValueError):
        backend.store.put(bad, b"")


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("jobs/abc/", {"jobs/abc/a": 3, "jobs/abc/sub/b": 0, "jobs/abc/sub/c": 1000}),
        (
            "jobs/abc",
            {"jobs/abc/a": 3, "jobs/abc/sub/b": 0, "jobs/abc/sub/c": 1000, "jobs/abc2/x": 7},
        ),  # fmt: skip
        ("jobs/abc2/", {"jobs/abc2/x": 7}),
        ("nothing/", {}),
    ],
)
def test_sizes_lists_each_key_with_its_length(backend, prefix, expected):
    for key, n in [("jobs/abc/a", 3), ("jobs/abc/sub/b", 0), ("jobs/abc/sub/c", 1000),
                   ("jobs/abc2/x", 7), ("other", 5)]:  # fmt: skip
        backend.store.put(key, b"x" * n)
    got = backend.store.sizes(prefix)
    assert got == expected
    assert list(got) == backend.store.list(prefix)


@pytest.mark.parametrize(
    ("key", "removed", "left"),
    [
        ("index/abc", True, ["index/abc2", "index/abc3/x"]),
        ("index/abc2", True, ["index/abc", "index/abc3/x"]),
        ("index/nope", False, ["index/abc", "index/abc2", "index/abc3/x"]),
        ("index/abc3", False, ["index/abc", "index/abc2", "index/abc3/x"]),  # a "directory"
    ],
)
def test_remove_deletes_one_key_not_those_it_prefixes(backend, key, removed, left):
    for k in ("index/abc", "index/abc2", "index/abc3/x"):
        backend.store.put(k, b"v")
    assert backend.store.remove(key) is removed
    assert backend.store.list("index/") == left
    assert backend.store.get_or_none(key) is None
