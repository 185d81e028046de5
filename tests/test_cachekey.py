"""Cache keys (cloudloop.cachekey): what must miss misses, what must hit hits, and
random argument structures: equal values give equal keys, different ones different."""

from __future__ import annotations

import copy
import functools
import importlib
import pickle
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from cloudloop import cachekey as ck

SRC = """
RATE = {rate}
def helper(x):
    return x + {bump}
def fit(x, k={default}):
    y = helper(x) * RATE
    return y + k
"""


def make(rate=2, bump=1, default=0, pad=0, name="fit", extra=""):
    ns: dict = {"__name__": "__main__"}
    exec(
        compile(
            "\n" * pad + SRC.format(rate=rate, bump=bump, default=default) + extra, "<cell>", "exec"
        ),
        ns,
    )
    fn = ns["fit"]
    if name != "fit":
        fn.__name__ = fn.__qualname__ = name
    return fn


BASE = ck.function_key(make())


@pytest.mark.parametrize(
    "other",
    [
        pytest.param(lambda: make(rate=3), id="a-global-constant-it-reads"),
        pytest.param(lambda: make(bump=2), id="a-helper-it-calls"),
        pytest.param(lambda: make(default=1), id="a-default"),
        pytest.param(
            lambda: make(extra="\ndef fit(x, k=0):\n    return helper(x) * RATE - k\n"),
            id="its-body",
        ),
    ],
)
def test_what_the_function_depends_on_changes_its_key(other):
    assert ck.function_key(other()) != BASE


@pytest.mark.parametrize(
    "same",
    [
        pytest.param(lambda: make(), id="the-same-source-again"),
        pytest.param(lambda: make(pad=7), id="moved-down-seven-lines"),
        pytest.param(lambda: make(name="fit2"), id="renamed"),
        pytest.param(
            lambda: make(extra="\nUNRELATED = 5\ndef other():\n    return 1\n"),
            id="unrelated-globals",
        ),
    ],
)
def test_what_it_does_not_depend_on_keeps_its_key(same):
    assert ck.function_key(same()) == BASE


def test_closures_versions_and_seeds():
    def outer(v):
        def inner(x):
            return x + v

        return inner

    assert ck.function_key(outer(1)) != ck.function_key(outer(2))
    assert ck.function_key(outer(1)) == ck.function_key(outer(1))
    assert ck.function_key(outer(1), version="2") != ck.function_key(outer(1))
    assert ck.task_key(BASE, (1,), {}, 1) != ck.task_key(BASE, (1,), {}, 2)
    assert ck.task_key(BASE, (1,), {}, 1) == ck.task_key(BASE, (1,), {}, 1)


def test_recursion_ends():
    ns: dict = {"__name__": "__main__"}
    exec("def a(n):\n    return b(n - 1) if n else 0\ndef b(n):\n    return a(n)\n"
         "def f(n):\n    return f(n - 1) if n else 0\n", ns)  # fmt: skip
    assert ck.function_key(ns["a"]) == ck.function_key(ns["a"])
    assert ck.function_key(ns["f"]) == ck.function_key(ns["f"])


def test_a_helper_module_shipped_by_value_is_keyed_by_its_source(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "ckhelp.py").write_text("def train(x):\n    return x + 1\n")
    mod = importlib.import_module("ckhelp")
    ns: dict = {"__name__": "__main__", "ckhelp": mod}
    exec("def fit(x):\n    return ckhelp.train(x)\n", ns)
    before = ck.function_key(ns["fit"])
    (tmp_path / "ckhelp.py").write_text("def train(x):\n    return x + 2\n")
    importlib.reload(mod)
    assert ck.function_key(ns["fit"]) != before
    sys.modules.pop("ckhelp", None)


class Point:
    def __init__(self, x):
        self.x = x

    def scaled(self, k):
        return self.x * k


@pytest.mark.parametrize(
    "a, b",
    [
        (1, 1.0), (1, True), (1, "1"), ([1], (1,)), (("ab", "c"), ("a", "bc")), (0.0, -0.0),
        (np.zeros(3), np.ones(3)), (np.zeros(3, "f8"), np.zeros(3, "i8")),
        (np.zeros((2, 3)), np.zeros((3, 2))), ({"a": 1}, {"a": 2}), ({1, 2}, {1, 3}),
        (functools.partial(max, 1), functools.partial(max, 2)),
        (Point(1).scaled, Point(2).scaled), (Point(1), Point(2)), (b"x", "x"), (None, 0),
    ],
)  # fmt: skip
def test_different_values_have_different_keys(a, b):
    assert ck.task_key(BASE, (a,), {}, 0) != ck.task_key(BASE, (b,), {}, 0)


@pytest.mark.parametrize(
    "a, b",
    [
        ({"a": 1, "b": 2}, {"b": 2, "a": 1}), ({3, 1, 2}, {2, 3, 1}),
        (np.arange(12.0).reshape(3, 4), np.asfortranarray(np.arange(12.0).reshape(3, 4))),
        (np.arange(10)[::2], np.array([0, 2, 4, 6, 8])), (Point(3), Point(3)),
    ],
)  # fmt: skip
def test_equal_values_have_equal_keys(a, b):
    assert ck.task_key(BASE, (a,), {}, 0) == ck.task_key(BASE, (b,), {}, 0)


def test_keys_do_not_depend_on_the_hash_seed():
    code = textwrap.dedent("""
        from cloudloop import cachekey as ck
        WORDS = {"alpha", "beta", "gamma", "delta"}
        def f(x):
            return x in WORDS
        print(ck.function_key(f), ck.task_key("0" * 32, ({"x", "y", "z"},), {}, 1))
    """)
    outs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={"PYTHONHASHSEED": str(s), "PATH": "/usr/bin:/bin"}).stdout
        for s in (1, 2, 3)
    }  # fmt: skip
    assert len(outs) == 1


def test_a_value_with_no_state_to_key_is_refused_in_words():
    import threading

    with pytest.raises(ck.Uncacheable, match="cannot be keyed"):
        ck.task_key(BASE, (threading.Lock(),), {}, 0)


def test_a_cycle_ends():
    a: list = [1]
    a.append(a)
    b: list = [1]
    b.append(b)
    assert ck.value_digest(a) == ck.value_digest(b)
    assert ck.value_digest(a) != ck.value_digest([1, [1]])


# ---------------------------------------------------------------- properties


def _random_value(rng: random.Random, depth: int = 0):
    kinds = ["int", "float", "str", "bytes", "none", "bool"]
    if depth < 3:
        kinds += ["list", "tuple", "dict", "set"] * 2
    kind = rng.choice(kinds)
    if kind == "int":
        return rng.choice([0, 1, -1, rng.randint(-(10**20), 10**20)])
    if kind == "float":
        return rng.choice([0.0, -0.0, 1.0, 0.1, rng.uniform(-1e9, 1e9), float("inf")])
    if kind == "str":
        return "".join(rng.choice("ab\u00e9\u4e2d\n") for _ in range(rng.randint(0, 4)))
    if kind == "bytes":
        return bytes(rng.randint(0, 255) for _ in range(rng.randint(0, 4)))
    if kind == "none":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    n = rng.randint(0, 4)
    if kind == "list":
        return [_random_value(rng, depth + 1) for _ in range(n)]
    if kind == "tuple":
        return tuple(_random_value(rng, depth + 1) for _ in range(n))
    if kind == "set":
        return {rng.choice([rng.randint(-5, 5), "s" * rng.randint(0, 3)]) for _ in range(n)}
    return {rng.choice([rng.randint(-5, 5), "k" * rng.randint(1, 3)]): _random_value(rng, depth + 1)
            for _ in range(n)}  # fmt: skip


def _strict(v):
    """A value with every type made explicit, for a comparison that tells 1 from True."""
    if isinstance(v, dict):
        return ("dict", frozenset((_strict(k), _strict(x)) for k, x in v.items()))
    if isinstance(v, (set, frozenset)):
        return ("set", frozenset(_strict(x) for x in v))
    if isinstance(v, (list, tuple)):
        return (type(v).__name__, tuple(_strict(x) for x in v))
    if isinstance(v, float):
        return ("float", v.hex())
    return (type(v).__name__, v)


def _reversed_dicts(v):
    if isinstance(v, dict):
        return {k: _reversed_dicts(v[k]) for k in reversed(list(v))}
    if isinstance(v, list):
        return [_reversed_dicts(x) for x in v]
    if isinstance(v, tuple):
        return tuple(_reversed_dicts(x) for x in v)
    return v


def test_equal_structures_have_equal_keys():
    rng = random.Random(16)
    for _ in range(400):
        v = _random_value(rng)
        key = ck.task_key(BASE, (v,), {}, 5)
        for same in (copy.deepcopy(v), pickle.loads(pickle.dumps(v)), _reversed_dicts(v)):
            assert ck.task_key(BASE, (same,), {}, 5) == key, v


def test_different_structures_have_different_keys():
    rng = random.Random(61)
    seen: dict[str, object] = {}
    for _ in range(3000):
        v = _random_value(rng)
        key = ck.task_key(BASE, (v,), {}, 5)
        if key in seen:
            assert _strict(seen[key]) == _strict(v), (seen[key], v)
        seen[key] = v
    assert len(seen) > 1000
