"""Cache keys: what determines a task's result, as 32 hex digits (cloudloop.cache).

A job with ``cache=True`` has a *function key* (what its tasks compute, apart
from their arguments) and each task a *task key* (that, its arguments and its
seed). Keys are BLAKE2b digests (128 bits) of a canonical, type-tagged,
length-prefixed encoding, so ``("ab", "c")`` and ``("a", "bc")``, ``1``,
``1.0``, ``True`` and ``"1"``, ``[1]`` and ``(1,)`` all differ.

What is in a key, and what is not
=================================

======================================  ===========================================
in the key                              not in the key, and why that is safe
======================================  ===========================================
``SCHEME`` (bumped when this changes),  where the function is defined (file, line,
the Python minor version (bytecode      line table), its name and qualname: moving
differs between versions anyway)        or renaming it changes nothing it computes
a function of ``__main__``, a notebook  its memory address, ``id()``, pickle bytes
or the user's own modules (those        (pickle order varies between processes and
cloudloop ships by value): ``co_code``, hash seeds)
``co_consts`` (nested code the same
way), ``co_names``, ``co_varnames``,
free and cell variable names, argument
counts, flags
its defaults, keyword defaults, and     the globals it does not name: another cell
closure cells, by value                 of the notebook, a variable renamed there,
                                        another function added to the module
each global it names (``co_names`` of   an installed library's code: a library is
its code and its nested code) that its  its name and version (``__version__``, or
globals hold, by value; a builtin by    the distribution's). An upgrade that keeps
name; a name bound nowhere as missing   its version string is not seen
a function it calls, recursively (the   the state a function reads at run time from
same rules; self- and mutual recursion  outside its code and arguments: files,
end in a back-reference)                databases, the clock, environment variables
                                        (the job's ``env=`` is in the function key
                                        the Executor makes)
a helper module shipped by value: the   a module imported by reference: its name
SHA-256 of its source file              and version, as for a library
the arguments, by value (``value_       objects' identity: two equal arguments are
digest``): numpy arrays by dtype, shape one key
and contents; dicts and sets by their
entries, whatever their order
the task's seed and ``cache_version``
======================================  ===========================================

A global that cannot be keyed by value (a lock, a logger, a connection) is
keyed by its type only: like a file the function opens, its state is outside
what the key sees.

Why no false hit (a result served though the computation would differ) for
the cases users meet: a changed function body changes ``co_code`` or
``co_consts``; a changed default or closure value is in the key by value; a
changed global constant the function reads is named in ``co_names`` and its
value is in the key; a changed helper function is keyed recursively; a
changed helper module shipped by value changes its source file's digest;
numpy arrays of the same shape with other contents (or another dtype) differ
in their bytes (or dtype); another seed, another ``cache_version``, another
Python minor version are each in the key. What the key cannot see (a file
the function opens by name, a library upgraded in place) is the user's to
mark with ``cache_version=``: ``docs/cache-and-retry.md`` says so.

An object the encoder has no rule for is keyed by its class and its state
(``__getstate__``, ``__dict__``, ``__slots__`` or ``__reduce_ex__``); one
with none of them raises :class:`Uncacheable` instead of getting a key that
might be shared with a different value.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import struct
import sys
import types
from typing import Any

from . import codec
from .errors import CloudloopError

SCHEME = 1
_PY = "{}.{}".format(*sys.version_info[:2])
_MAX_DEPTH = 200


class Uncacheable(CloudloopError):
    """A function or an argument that cannot be keyed: say what, and what to do."""


def _hasher() -> Any:
    return hashlib.blake2b(digest_size=16)


def function_key(fn: Any, version: Any = None) -> str:
    """The key of what ``fn`` computes (32 hex digits), with ``cache_version``."""
    h = _hasher()
    enc = _Encoder(h)
    enc.tag(b"F", f"{SCHEME}|{_PY}|{'' if version is None else str(version)}".encode())
    enc.callable(fn)
    return h.hexdigest()


def task_key(fkey: str, args: tuple, kwargs: dict, seed: int) -> str:
    """The key of one task: its function key, its arguments and its seed."""
    h = _hasher()
    h.update(b"T" + fkey.encode() + b"\0")
    enc = _Encoder(h)
    enc.value(tuple(args))
    enc.value(dict(kwargs))
    enc.value(int(seed))
    return h.hexdigest()


def command_key(template: str, files: dict[str, bytes], serve: bool, version: Any = None) -> str:
    """The key of a command job: its template, its shipped files' contents, whether
    it is served, ``cache_version`` (each row then keys as a task argument)."""
    h = _hasher()
    enc = _Encoder(h)
    enc.tag(b"C", f"{SCHEME}|{'' if version is None else str(version)}".encode())
    enc.value(template)
    enc.value({str(k): bytes(v) for k, v in files.items()})
    enc.value(bool(serve))
    return h.hexdigest()


def value_digest(obj: Any) -> bytes:
    """A canonical digest of a value (16 bytes): equal values, equal digests."""
    h = _hasher()
    _Encoder(h).value(obj)
    return h.digest()


def _version_of(module_name: str) -> str:
    top = module_name.split(".")[0]
    mod = sys.modules.get(top)
    version = getattr(mod, "__version__", None)
    if isinstance(version, str):
        return version
    return _dist_version(top)


@functools.lru_cache(maxsize=512)
def _dist_version(top: str) -> str:
    try:
        from importlib.metadata import PackageNotFoundError, packages_distributions, version

        for dist in packages_distributions().get(top, [])[:1]:
            return version(dist)
    except (ImportError, PackageNotFoundError, ValueError):
        pass
    return ""


@functools.lru_cache(maxsize=256)
def _file_digest(path: str, mtime_ns: int, size: int) -> bytes:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).digest()


class _Encoder:
    """Feeds one canonical encoding into a hash; keeps a stack against cycles."""

    def __init__(self, h: Any):
        self.h = h
        self.stack: list[int] = []  # ids of containers and functions being encoded

    def tag(self, t: bytes, data: bytes) -> None:
        self.h.update(t + struct.pack("<Q", len(data)) + data)

    # ------------------------------------------------------------ values

    def value(self, obj: Any) -> None:
        t = type(obj)
        if obj is None:
            self.h.update(b"N")
        elif t is bool:
            self.h.update(b"B1" if obj else b"B0")
        elif t is int:
            self.tag(b"I", str(obj).encode())
        elif t is float:
            self.h.update(b"D" + struct.pack("<d", obj))
        elif t is str:
            self.tag(b"S", obj.encode("utf-8", "surrogatepass"))
        elif t is bytes:
            self.tag(b"Y", obj)
        elif t is tuple or t is list:
            self._sequence(b"(" if t is tuple else b"[", obj)
        elif t is dict:
            self._mapping(b"{", obj)
        else:
            self._other(obj)

    def _enter(self, obj: Any) -> bool:
        """False (and a back-reference written) if ``obj`` is being encoded already."""
        if id(obj) in self.stack:
            self.tag(b"^", str(len(self.stack) - self.stack.index(id(obj))).encode())
            return False
        if len(self.stack) >= _MAX_DEPTH:
            raise Uncacheable(f"a value nested more than {_MAX_DEPTH} deep cannot be keyed")
        self.stack.append(id(obj))
        return True

    def _sequence(self, t: bytes, items: Any) -> None:
        if not self._enter(items):
            return
        self.h.update(t + struct.pack("<Q", len(items)))
        for x in items:
            self.value(x)
        self.stack.pop()

    def _sorted_digests(self, t: bytes, parts: list[bytes], obj: Any) -> None:
        self.h.update(t + struct.pack("<Q", len(parts)) + b"".join(sorted(parts)))

    def _sub(self, obj: Any) -> bytes:
        """The digest of ``obj`` alone (for order-free containers), cycles still seen."""
        sub = _Encoder(_hasher())
        sub.stack = self.stack
        sub.value(obj)
        return sub.h.digest()

    def _mapping(self, t: bytes, d: Any) -> None:
        if not self._enter(d):
            return
        parts = [self._sub(k) + self._sub(v) for k, v in d.items()]
        self.stack.pop()
        self._sorted_digests(t, parts, d)

    def _set(self, s: Any) -> None:
        if not self._enter(s):
            return
        parts = [self._sub(x) for x in s]
        self.stack.pop()
        self._sorted_digests(b"<" if type(s) is set else b">", parts, s)

    def _other(self, obj: Any) -> None:
        t = type(obj)
        mod = getattr(t, "__module__", "") or ""
        if isinstance(obj, (set, frozenset)) and t in (set, frozenset):
            self._set(obj)
        elif t is complex:
            self.h.update(b"J" + struct.pack("<dd", obj.real, obj.imag))
        elif t in (bytearray, memoryview):
            self.tag(b"Y", bytes(obj))
        elif t is range or t is slice:
            self.tag(b"R" if t is range else b"L", repr(obj).encode())
        elif mod.startswith("numpy"):
            self._numpy(obj)
        elif isinstance(obj, enum.Enum):
            self._class(t)
            self.tag(b"E", obj.name.encode())
        elif isinstance(
            obj,
            (types.FunctionType, types.BuiltinFunctionType, types.MethodType, functools.partial),
        ):
            self.callable(obj)
        elif isinstance(obj, type):
            self._class(obj)
        elif isinstance(obj, types.ModuleType):
            self._module(obj)
        elif isinstance(obj, types.CodeType):
            self._code(obj)
        elif dataclasses.is_dataclass(obj):
            self._class(t)
            self._sequence(b"(", tuple(getattr(obj, f.name) for f in dataclasses.fields(obj)))
        elif isinstance(obj, tuple) and hasattr(t, "_fields"):  # a namedtuple
            self._class(t)
            self._sequence(b"(", tuple(obj))
        elif isinstance(obj, (tuple, list, dict, set, frozenset, str, int, float, bytes)):
            self._class(t)  # a subclass of a builtin: its class, then its builtin value
            base: Any = next(b for b in (tuple, list, dict, set, frozenset, str, int, float, bytes)
                             if isinstance(obj, b))  # fmt: skip
            self.value(base(obj))
            if getattr(obj, "__dict__", None):
                self._mapping(b"{", vars(obj))
        elif mod in ("datetime", "decimal", "fractions", "uuid", "pathlib") or mod.startswith(
            "pathlib"
        ):
            self._class(t)
            self.tag(b"V", repr(obj).encode())
        else:
            self._state(obj)

    def _numpy(self, obj: Any) -> None:
        import numpy as np

        if isinstance(obj, np.ndarray):
            self.tag(b"A", f"{obj.dtype.str}|{obj.shape}".encode())
            if obj.dtype.hasobject:
                self._sequence(b"[", obj.ravel(order="C").tolist())
            else:
                self.tag(b"a", np.ascontiguousarray(obj).tobytes())
        elif isinstance(obj, np.generic):
            self.tag(b"G", obj.dtype.str.encode())
            if obj.dtype.hasobject:
                self.value(obj.item())
            else:
                self.tag(b"g", obj.tobytes())
        elif isinstance(obj, np.dtype):
            self.tag(b"T", obj.str.encode())
        else:
            self._state(obj)

    def _state(self, obj: Any) -> None:
        """An object with no rule of its own: its class and its state."""
        if not self._enter(obj):
            return
        self._class(type(obj))
        state: Any = None
        getstate = getattr(obj, "__getstate__", None)
        try:
            state = getstate() if getstate is not None else None
        except TypeError:
            state = None
        if state is None and hasattr(obj, "__dict__"):
            state = vars(obj)
        slots = [s for c in type(obj).__mro__ for s in getattr(c, "__slots__", ())]
        if state is None and slots:
            state = {s: getattr(obj, s) for s in slots if hasattr(obj, s)}
        if state is None:
            try:
                reduced = obj.__reduce_ex__(5)
            except Exception as e:
                self.stack.pop()
                raise Uncacheable(
                    f"an argument of type {type(obj).__qualname__} cannot be keyed for the "
                    f"cache ({e}): pass plain data, or leave cache off"
                ) from None
            if isinstance(reduced, str):  # a global: its name says it
                state = reduced
            else:
                state = tuple(reduced[1:]) if len(reduced) > 1 else ()
                self.callable(reduced[0])
        self.value(state)
        self.stack.pop()

    # ------------------------------------------------------------ code

    def callable(self, fn: Any) -> None:
        if isinstance(fn, functools.partial):
            self.h.update(b"P")
            self.callable(fn.func)
            self.value(tuple(fn.args))
            self.value(dict(fn.keywords))
            return
        if isinstance(fn, (staticmethod, classmethod)):
            fn = fn.__func__
        if isinstance(fn, types.MethodType):
            self.h.update(b"M")
            self.callable(fn.__func__)
            self.value(fn.__self__)
            return
        wrapped = getattr(fn, "__wrapped__", None)
        if wrapped is not None and type(fn).__name__ == "_lru_cache_wrapper":
            fn = wrapped
        if isinstance(fn, types.FunctionType):
            self._function(fn)
        elif isinstance(fn, type):
            self._class(fn)
        elif isinstance(fn, (types.BuiltinFunctionType, types.BuiltinMethodType)):
            mod = getattr(fn, "__module__", None) or type(getattr(fn, "__self__", None)).__module__
            self.tag(b"b", f"{mod}.{fn.__qualname__}|{_version_of(mod or '')}".encode())
        elif callable(fn):  # a callable object: its class and its state
            self.h.update(b"O")
            self._state(fn)
        else:
            raise Uncacheable(f"{fn!r:.80} is not a function cloudloop can key")

    def _function(self, fn: types.FunctionType) -> None:
        module = getattr(fn, "__module__", "") or ""
        if not codec.ships_by_value(module):  # an installed library's: name and version
            self.tag(b"r", f"{module}.{fn.__qualname__}|{_version_of(module)}".encode())
            return
        if not self._enter(fn):
            return
        self.h.update(b"f")
        self._code(fn.__code__)
        self.value(fn.__defaults__)
        self.value(fn.__kwdefaults__)
        cells = []
        for cell in fn.__closure__ or ():
            try:
                cells.append(cell.cell_contents)
            except ValueError:
                cells.append(_EMPTY)
        self.value(tuple(cells))
        g = fn.__globals__
        found = g.get("__builtins__")
        builtins: Any = found if isinstance(found, dict) else getattr(found, "__dict__", {})
        for name in sorted(codec.code_names(fn.__code__)):
            if name in g:
                self.tag(b"n", name.encode())
                try:
                    self.h.update(self._sub(g[name]))
                except Uncacheable:  # a lock, a logger, a connection: by its type only
                    self.tag(b"t", _type_name(type(g[name])).encode())
            elif name in builtins:
                self.tag(b"u", name.encode())
            # a name bound nowhere (an attribute's name, say): its name is in co_names
        self.stack.pop()

    def _code(self, code: types.CodeType) -> None:
        self.tag(b"c", code.co_code)
        self.h.update(
            struct.pack(
                "<5Q",
                code.co_argcount,
                code.co_posonlyargcount,
                code.co_kwonlyargcount,
                code.co_flags,
                len(code.co_consts),
            )
        )
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                self._code(const)
            else:
                self.value(const)
        for names in (code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars):
            self.value(tuple(names))

    def _class(self, cls: type) -> None:
        module = getattr(cls, "__module__", "") or ""
        if not codec.ships_by_value(module) or module == "builtins":
            self.tag(b"k", f"{module}.{cls.__qualname__}|{_version_of(module)}".encode())
            return
        if not self._enter(cls):
            return
        self.tag(b"K", cls.__qualname__.encode())
        for name in sorted(vars(cls)):
            if name in ("__dict__", "__weakref__", "__module__", "__doc__", "__qualname__"):
                continue
            v = vars(cls)[name]
            self.tag(b"n", name.encode())
            if isinstance(v, (types.FunctionType, staticmethod, classmethod, property)):
                if isinstance(v, property):
                    for f in (v.fget, v.fset, v.fdel):
                        self.value(f)
                else:
                    self.callable(v)
            else:
                try:
                    self.value(v)
                except Uncacheable:
                    self.tag(b"?", type(v).__qualname__.encode())
        self.stack.pop()

    def _module(self, mod: types.ModuleType) -> None:
        name = mod.__name__
        path = getattr(mod, "__file__", None)
        if codec.ships_by_value(name) and path:
            import os

            st = os.stat(path)
            self.tag(b"m", name.encode() + b"|" + _file_digest(path, st.st_mtime_ns, st.st_size))
        else:
            self.tag(b"m", f"{name}|{_version_of(name)}".encode())


def _type_name(t: type) -> str:
    return f"{getattr(t, '__module__', '')}.{t.__qualname__}"


_EMPTY = ("<empty cell>", SCHEME)
