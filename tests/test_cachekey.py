"""Cache keys (cloudloop.cachekey): what must miss misses, what must hit hits.

Table-driven: each row of MUST_DIFFER / MUST_BE_EQUAL builds two keys (or
digests) from scratch; property tests draw random nested argument structures
and check that equal values give equal task keys and unequal values unequal
ones, by a comparison that tells 1 from 1.0 from True and [1] from (1,).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import decimal
import enum
import fractions
import functools
import importlib.util
import logging
import pathlib
import pickle
import struct
import subprocess
import sys
import textwrap
import threading
import uuid
from collections import namedtuple

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cloudloop import cachekey as ck

SRC = """
RATE = {rate}
def helper(x):
    return x + {bump}
def fit(x, k={default}):
    y = helper(x) * RATE
    return y + k
"""


def make(rate=2, bump=1, default=0, pad=0, name="fit", extra="", body=None):
    """``fit`` from SRC, exec'd in a fresh ``__main__``-like namespace."""
    src = "\n" * pad + SRC.format(rate=rate, bump=bump, default=default) + extra
    if body is not None:
        src += f"\ndef fit(x, k={default}):\n    {body}\n"
    ns: dict = {"__name__": "__main__"}
    exec(compile(src, "<cell>", "exec"), ns)
    fn = ns["fit"]
    if name != "fit":
        fn.__name__ = fn.__qualname__ = name
    return fn


def fkey(**kw):
    return ck.function_key(make(**kw))


BASE = fkey()


def tkey(*args, seed=0, **kwargs):
    return ck.task_key(BASE, args, kwargs, seed)


def outer(v):
    def inner(x):
        return x + v

    return inner


class Point:
    def __init__(self, x):
        self.x = x

    def scaled(self, k):
        return self.x * k


class Scale:
    def __init__(self, k):
        self.k = k

    def __call__(self, x):
        return x * self.k


class Color(enum.Enum):
    RED = 1
    BLUE = 2


@dataclasses.dataclass
class Config:
    lr: float
    depth: int = 3


Pair = namedtuple("Pair", "a b")


def _load(monkeypatch, name, path):
    """Import ``path`` as module ``name`` (the user's own code: shipped by value)."""
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, mod)
    spec.loader.exec_module(mod)
    return mod


def module_keys(tmp_path, monkeypatch, a, b, uses, a2="", b2=""):
    """The key of a ``__main__`` function ``uses`` (its source) with helper module
    ``ckhelp`` written as ``a``, then as ``b`` (and ``ckhelp2`` as a2, b2)."""
    keys = []
    for tag, src, src2 in (("a", a, a2), ("b", b, b2)):
        d = tmp_path / tag
        d.mkdir()
        (d / "ckhelp2.py").write_text(src2 or "def g(x):\n    return x\n")
        (d / "ckhelp.py").write_text(src)
        _load(monkeypatch, "ckhelp2", d / "ckhelp2.py")
        _load(monkeypatch, "ckhelp", d / "ckhelp.py")
        ns: dict = {"__name__": "__main__"}
        exec(uses, ns)
        keys.append(ck.function_key(ns["fit"]))
    return keys


TRAIN1 = "def train(x):\n    return x + 1\n"
TRAIN2 = "def train(x):\n    return x + 22\n"
USE_MODULE = "import ckhelp\ndef fit(x):\n    return ckhelp.train(x)\n"
USE_NAME = "from ckhelp import train\ndef fit(x):\n    return train(x)\n"
VIA2 = "import ckhelp2\ndef train(x):\n    return ckhelp2.g(x)\n"


CLASSES = "class A:\n    def k(self):\n        return {}\nclass B(A):\n    pass\n"


def class_user(k):
    """A function that uses a class ``B`` whose base's method returns ``k``."""
    ns: dict = {"__name__": "__main__"}
    exec(CLASSES.format(k) + "def fit(x):\n    return B().k() + x\n", ns)
    return ck.function_key(ns["fit"])


# each row: (tmp_path, monkeypatch) -> two keys or digests that must differ
MUST_DIFFER = {
    "method-of-a-base-class-of-a-class-it-uses": lambda t, m: (class_user(1), class_user(2)),
    "function-body": lambda t, m: (BASE, fkey(body="return helper(x) * RATE - k")),
    "default": lambda t, m: (BASE, fkey(default=1)),
    "global-constant-it-reads": lambda t, m: (BASE, fkey(rate=3)),
    "helper-function-it-calls": lambda t, m: (BASE, fkey(bump=2)),
    "helper-module-by-value (import ckhelp)": lambda t, m: module_keys(
        t, m, TRAIN1, TRAIN2, USE_MODULE
    ),
    "helper-module-by-value (from ckhelp import train)": lambda t, m: module_keys(
        t, m, TRAIN1, TRAIN2, USE_NAME
    ),
    "second-helper-module-reached-through-the-first": lambda t, m: module_keys(
        t, m, VIA2, VIA2, USE_MODULE, "def g(x):\n    return x\n", "def g(x):\n    return -x\n"
    ),
    "closure-value": lambda t, m: (ck.function_key(outer(1)), ck.function_key(outer(2))),
    "numpy-contents-same-shape": lambda t, m: (tkey(np.zeros(3)), tkey(np.array([0.0, 0, 1]))),
    "numpy-dtype-same-bytes": lambda t, m: (tkey(np.zeros(3, "f8")), tkey(np.zeros(3, "i8"))),
    "numpy-shape-same-bytes": lambda t, m: (tkey(np.zeros((2, 3))), tkey(np.zeros((3, 2)))),
    "numpy-structured-dtype-fields": lambda t, m: (
        tkey(np.zeros(2, [("a", "i4"), ("b", "f4")])),
        tkey(np.zeros(2, [("b", "f4"), ("a", "i4")])),
    ),
    "numpy-masked-array-mask": lambda t, m: (
        tkey(np.ma.array([1, 2], mask=[0, 1])),
        tkey(np.ma.array([1, 2], mask=[1, 0])),
    ),
    "seed": lambda t, m: (tkey(1, seed=1), tkey(1, seed=2)),
    "cache-version": lambda t, m: (
        ck.function_key(make(), version="1"),
        ck.function_key(make(), version="2"),
    ),
    "cache-version-none-vs-set": lambda t, m: (BASE, ck.function_key(make(), version="")),
    "cache-version-1-vs-'1'": lambda t, m: (
        ck.function_key(make(), version=1),
        ck.function_key(make(), version="1"),
    ),
    "1-vs-1.0": lambda t, m: (tkey(1), tkey(1.0)),
    "1-vs-True": lambda t, m: (tkey(1), tkey(True)),
    "1.0-vs-True": lambda t, m: (tkey(1.0), tkey(True)),
    "1-vs-'1'": lambda t, m: (tkey(1), tkey("1")),
    "0.0-vs--0.0": lambda t, m: (tkey(0.0), tkey(-0.0)),
    "[1]-vs-(1,)": lambda t, m: (tkey([1]), tkey((1,))),
    "set-vs-frozenset": lambda t, m: (tkey({1}), tkey(frozenset({1}))),
    "'ab','c'-vs-'a','bc'": lambda t, m: (tkey("ab", "c"), tkey("a", "bc")),
    "b'x'-vs-'x'-vs-bytearray": lambda t, m: (tkey(b"x"), tkey("x")),
    "bytes-vs-bytearray": lambda t, m: (tkey(b"x"), tkey(bytearray(b"x"))),
    "None-vs-0": lambda t, m: (tkey(None), tkey(0)),
    "args-vs-kwargs": lambda t, m: (tkey(1), tkey(x=1)),
    "huge-ints": lambda t, m: (tkey(10**5000), tkey(10**5000 + 1)),
    "partial-args": lambda t, m: (
        ck.function_key(functools.partial(make(), k=1)),
        ck.function_key(functools.partial(make(), k=2)),
    ),
    "partial-as-argument": lambda t, m: (
        tkey(functools.partial(max, 1)),
        tkey(functools.partial(max, 2)),
    ),
    "bound-methods-of-different-state": lambda t, m: (
        ck.function_key(Point(1).scaled),
        ck.function_key(Point(2).scaled),
    ),
    "callable-instances-of-different-state": lambda t, m: (
        ck.function_key(Scale(2)),
        ck.function_key(Scale(3)),
    ),
    "objects-of-different-state": lambda t, m: (tkey(Point(1)), tkey(Point(2))),
    "enum-members": lambda t, m: (tkey(Color.RED), tkey(Color.BLUE)),
    "dataclass-fields": lambda t, m: (tkey(Config(0.1)), tkey(Config(0.1, 4))),
    "namedtuple-vs-tuple": lambda t, m: (tkey(Pair(1, 2)), tkey((1, 2))),
    "dates": lambda t, m: (tkey(datetime.date(2024, 1, 1)), tkey(datetime.date(2024, 1, 2))),
    "decimals": lambda t, m: (tkey(decimal.Decimal("1.0")), tkey(decimal.Decimal("1.00"))),
    "paths": lambda t, m: (tkey(pathlib.Path("a/b")), tkey(pathlib.Path("a/c"))),
    "dict-values": lambda t, m: (tkey({"a": 1}), tkey({"a": 2})),
    "a-cycle-vs-its-unrolling": lambda t, m: (ck.value_digest(_cycle()), ck.value_digest([1, [1]])),
    "command-template": lambda t, m: (
        ck.command_key("echo {x}", {}, False),
        ck.command_key("echo  {x}", {}, False),
    ),
    "command-file-contents": lambda t, m: (
        ck.command_key("sh a.sh", {"a.sh": b"1"}, False),
        ck.command_key("sh a.sh", {"a.sh": b"2"}, False),
    ),
    "command-served": lambda t, m: (
        ck.command_key("r.R", {}, False),
        ck.command_key("r.R", {}, True),
    ),
}


def _cycle():
    a: list = [1]
    a.append(a)
    return a


def _twice(src):
    """The named function of ``src`` exec'd in two fresh namespaces."""
    out = []
    for _ in range(2):
        ns: dict = {"__name__": "__main__"}
        exec(src, ns)
        out.append(ck.function_key(ns["f"]))
    return out


SELF_REC = "def f(n):\n    return f(n - 1) if n else 0\n"
MUTUAL = "def f(n):\n    return g(n - 1) if n else 0\ndef g(n):\n    return f(n)\n"

# each row: (tmp_path, monkeypatch) -> two keys or digests that must be equal
MUST_BE_EQUAL = {
    "same-source-in-two-namespaces": lambda t, m: (BASE, fkey()),
    "moved-down-seven-lines": lambda t, m: (BASE, fkey(pad=7)),
    "renamed": lambda t, m: (BASE, fkey(name="fit2")),
    "unrelated-global-added": lambda t, m: (BASE, fkey(extra="\nUNRELATED = 5\n")),
    "unrelated-global-renamed": lambda t, m: (
        fkey(extra="\nUNRELATED = 5\n"),
        fkey(extra="\nOTHER_NAME = 5\n"),
    ),
    "another-function-added": lambda t, m: (BASE, fkey(extra="\ndef other():\n    return 1\n")),
    "helper-module-rewritten-identically": lambda t, m: module_keys(
        t, m, TRAIN1, TRAIN1, USE_MODULE
    ),
    "dict-insertion-order": lambda t, m: (tkey({"a": 1, "b": 2}), tkey({"b": 2, "a": 1})),
    "kwargs-order": lambda t, m: (tkey(a=1, b=2), tkey(b=2, a=1)),
    "set-build-order": lambda t, m: (tkey({3, 1, 2}), tkey({2, 3, 1})),
    "string-set-build-order": lambda t, m: (
        tkey(set(["x", "yy", "zzz", "w"])),
        tkey(set(["w", "zzz", "yy", "x"])),
    ),
    "fortran-vs-c-ordered": lambda t, m: (
        tkey(np.arange(12.0).reshape(3, 4)),
        tkey(np.asfortranarray(np.arange(12.0).reshape(3, 4))),
    ),
    "sliced-view-vs-copy": lambda t, m: (tkey(np.arange(10)[::2]), tkey(np.array([0, 2, 4, 6, 8]))),
    "numpy-scalar-again": lambda t, m: (tkey(np.float32(1.5)), tkey(np.float32(1.5))),
    "equal-objects": lambda t, m: (tkey(Point(3)), tkey(Point(3))),
    "equal-dataclasses": lambda t, m: (tkey(Config(0.1)), tkey(Config(0.1, 3))),
    "same-classes-again": lambda t, m: (class_user(1), class_user(1)),
    "self-recursive-terminates-and-is-stable": lambda t, m: _twice(SELF_REC),
    "mutually-recursive-terminates-and-is-stable": lambda t, m: _twice(MUTUAL),
    "cycles-of-the-same-shape": lambda t, m: (ck.value_digest(_cycle()), ck.value_digest(_cycle())),
    "lru-cache-is-its-function": lambda t, m: (
        ck.function_key(functools.lru_cache(maxsize=None)(make())),
        BASE,
    ),
    "staticmethod-is-its-function": lambda t, m: (ck.function_key(staticmethod(make())), BASE),
}


@pytest.mark.parametrize("build", MUST_DIFFER.values(), ids=MUST_DIFFER.keys())
def test_must_differ(build, tmp_path, monkeypatch):
    a, b = build(tmp_path, monkeypatch)
    assert a != b


@pytest.mark.parametrize("build", MUST_BE_EQUAL.values(), ids=MUST_BE_EQUAL.keys())
def test_must_be_equal(build, tmp_path, monkeypatch):
    a, b = build(tmp_path, monkeypatch)
    assert a == b


def test_the_api_shapes():
    for key in (BASE, tkey(1), ck.command_key("x", {}, False), ck.function_key(len)):
        assert len(key) == 32 and set(key) <= set("0123456789abcdef")
    assert len(ck.value_digest((1, "x"))) == 16
    assert isinstance(ck.SCHEME, int)
    assert issubclass(ck.Uncacheable, ck.CloudloopError)


HASHSEED_SCRIPT = textwrap.dedent("""
    import sys
    from cloudloop import cachekey as ck
    ns = {"__name__": "__main__"}
    exec(sys.argv[1], ns)
    print(ck.function_key(ns["f"]), ck.value_digest({"x", "yy", "zzz", "w", "v"}).hex())
""")
USES_A_STRING_SET = (
    "WORDS = {'alpha', 'beta', 'gamma', 'delta'}\ndef f(x):\n    return x in WORDS\n"
)


def test_keys_are_the_same_under_every_hash_seed():
    ns: dict = {"__name__": "__main__"}
    # not inheriting this file's `from __future__ import annotations` (a co_flags bit)
    exec(compile(USES_A_STRING_SET, "<cell>", "exec", dont_inherit=True), ns)
    here = f"{ck.function_key(ns['f'])} {ck.value_digest({'x', 'yy', 'zzz', 'w', 'v'}).hex()}\n"
    for hashseed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", HASHSEED_SCRIPT, USES_A_STRING_SET],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": hashseed, "PATH": "/usr/bin:/bin"},
        ).stdout
        assert out == here


def test_an_argument_with_no_state_is_refused_in_words():
    with pytest.raises(ck.Uncacheable, match=r"_thread\.lock cannot be keyed.*leave cache off"):
        tkey(threading.Lock())


def test_a_lock_or_logger_a_function_names_is_keyed_by_type():
    ns: dict = {"__name__": "__main__", "LOCK": threading.Lock(), "log": logging.getLogger("x")}
    exec("def f(x):\n    with LOCK:\n        log.info(x)\n    return x\n", ns)
    assert ck.function_key(ns["f"]) == ck.function_key(ns["f"])


def test_an_unkeyable_global_is_named_in_the_error():
    ns: dict = {"__name__": "__main__", "GEN": (i for i in range(3))}
    exec("def f(x):\n    return next(GEN) + x\n", ns)
    with pytest.raises(ck.Uncacheable, match="the global 'GEN' of f cannot be keyed"):
        ck.function_key(ns["f"])


def test_too_deep_a_value_is_refused_not_truncated():
    v: list = []
    for _ in range(500):
        v = [v]
    with pytest.raises(ck.Uncacheable, match="nested more than"):
        ck.value_digest(v)


def test_values_of_many_kinds_have_keys():
    values = [
        1 + 2j, range(3), slice(1, 2), memoryview(b"ab"), datetime.datetime(2024, 1, 1),
        datetime.timedelta(3), fractions.Fraction(1, 3), uuid.UUID(int=5), Color.RED,
        Pair(1, 2), np.int64(3), np.dtype("f4"), np.array([None, 1], dtype=object),
        np.random.default_rng(1), np.sqrt, len, [].append, str.upper, Point, threading,
    ]  # fmt: skip
    digests = [ck.value_digest(v) for v in values]
    assert len(set(digests)) == len(values)
    assert digests == [ck.value_digest(v) for v in values]


# ---------------------------------------------------------------- properties

scalars = (
    st.integers()
    | st.floats()
    | st.text(max_size=6)
    | st.binary(max_size=6)
    | st.none()
    | st.booleans()
)
structures = st.recursive(
    scalars | st.sets(st.integers() | st.text(max_size=3), max_size=4),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.lists(inner, max_size=3).map(tuple)
        | st.dictionaries(st.text(max_size=3) | st.integers(), inner, max_size=4)
    ),
    max_leaves=12,
)
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def strict(v):
    """``v`` with every type explicit: 1, 1.0 and True differ, as do [1] and (1,);
    floats compare by their bits (so 0.0 is not -0.0 and a NaN equals itself)."""
    if isinstance(v, dict):
        return ("dict", frozenset((strict(k), strict(x)) for k, x in v.items()))
    if isinstance(v, (set, frozenset)):
        return (type(v).__name__, frozenset(strict(x) for x in v))
    if isinstance(v, (list, tuple)):
        return (type(v).__name__, tuple(strict(x) for x in v))
    if isinstance(v, float):
        return ("float", struct.pack("!d", v))
    return (type(v).__name__, v)


def reversed_dicts(v):
    if isinstance(v, dict):
        return {k: reversed_dicts(v[k]) for k in reversed(list(v))}
    if isinstance(v, (list, tuple)):
        return type(v)(reversed_dicts(x) for x in v)
    return v


@SETTINGS
@given(structures)
def test_equal_structures_have_equal_keys(v):
    key = tkey(v, seed=5)
    for same in (copy.deepcopy(v), pickle.loads(pickle.dumps(v)), reversed_dicts(v)):
        assert tkey(same, seed=5) == key


@SETTINGS
@given(structures, structures)
def test_different_structures_have_different_keys(a, b):
    assume(strict(a) != strict(b))
    assert tkey(a, seed=5) != tkey(b, seed=5)
    assert ck.value_digest(a) != ck.value_digest(b)
