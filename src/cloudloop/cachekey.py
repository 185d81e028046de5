"""Cache keys: what determines a task's result, as 32 hex digits (cloudloop.cache).

A job with ``cache=True`` has a *function key* (what its tasks compute, apart
from their arguments) and each task a *task key* (that, its arguments and its
seed)::

    function_key(fn, version)  = H("F", SCHEME, Python minor, version, code walk of fn)
    command_key(t, files, ...) = H("C", SCHEME, version, template, files, serve)
    task_key(key, a, kw, seed) = H("T", key, a, kw, seed)
    value_digest(obj)          = H(encoding of obj)          (16 bytes)

``H`` is BLAKE2b with a 16-byte digest, fed incrementally with a canonical
encoding: every item opens with a one-byte type tag, and every variable-length
item carries its length, so ``("ab", "c")`` and ``("a", "bc")``, ``1``,
``1.0``, ``True`` and ``"1"``, ``[1]`` and ``(1,)`` all differ. Dicts and sets
are encoded as the sorted digests of their entries, so insertion order and
the hash seed (``PYTHONHASHSEED``) do not matter.

What is in a function key, and what is not
==========================================

=========================================  ==========================================
in the key                                 not in the key, and why that is safe
=========================================  ==========================================
``SCHEME`` (bumped when this format         the file name, line numbers, line table,
changes); the Python minor version          the function's name and qualname: moving
(bytecode differs between versions          or renaming a function changes nothing it
anyway, so a key could not carry over)      computes
for a function cloudloop ships by value     its ``id()``, memory address and pickle
(``__main__``, a notebook, the user's own   bytes (pickle byte order varies between
modules): ``co_code``, the exception        processes and hash seeds)
table, ``co_consts`` (nested code the
same way), ``co_names``, ``co_varnames``,
free and cell variable names, argument
counts, ``co_flags``
its defaults, keyword defaults, closure     the globals it does not name: another
cells (an empty cell tagged as such) and    notebook cell, a variable renamed there,
attributes set on it, by value              another function added to the module
each name its code (and nested code) uses   an installed library's code: a library is
(``codec.code_names``), in sorted order:    its name and version (``__version__`` of
the global's value; else ("builtin",        the top-level package, else its
name); else tagged missing                  distribution's). An upgrade that keeps the
                                            version string is not seen
a function it reaches: recursively by the   what the function reads at run time from
same rules (self- and mutual recursion      outside its code and arguments: files
end in a back-reference by depth); a        opened by name, databases, the clock,
partial, bound method, ``lru_cache``,       environment variables (the job's ``env=``
staticmethod or classmethod by what it      is added by the Executor)
wraps; a C function by module and name
a module shipped by value: the SHA-256 of   a lock, a logger's handlers, an open file
its source file, plus the value of each     or socket a function names: keyed by type
attribute of it the code names              (their state is not an input)
(``helpers.train`` is keyed as a function)
a class shipped by value: its qualname,     a class's ``__dict__``/``__weakref__``
bases, metaclass and every entry of its     descriptors (the same on every class)
``__dict__`` (``__doc__`` included: code
can read it; a docstring edit is a miss,
never a false hit)
=========================================  ==========================================

Why no false hit (a cached result served though the computation would differ)
for the cases users meet: a changed function body changes ``co_code`` or
``co_consts``; a changed default or closure value is in the key by value; a
global constant the function reads is named in ``co_names`` and its value is
in the key; a helper function is keyed recursively, by its code in memory; a
helper module shipped by value changes its file's digest, and the parts of it
the function names are keyed from memory too (an edited file not yet reloaded
cannot pass for the code that runs); numpy arrays of one shape with other
contents, or another dtype, differ in their bytes or dtype; another seed,
``cache_version`` or Python minor version is in the key. What a key cannot
see (a data file opened by name, a library upgraded in place) is the user's
to mark with ``cache_version=`` (docs/cache-and-retry.md says so).

Values (``value_digest``): builtin scalars and containers have fast paths;
Enums, dataclasses, namedtuples, datetimes, Decimals, Fractions, UUIDs and
paths are keyed by class and fields or ``repr``; numpy arrays by dtype, shape
and C-ordered bytes. Any other object is keyed by its class and its
``__reduce_ex__(5)`` parts, what pickle would send a worker (for a plain
class: ``__getstate__()``, its ``__dict__`` and ``__slots__`` values). One
pickle refuses raises :class:`Uncacheable`, never a key it might share.
"""

from __future__ import annotations

import copyreg
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
_I64 = 1 << 63
_q = struct.Struct("<q").pack
_Q = struct.Struct("<Q").pack
_d = struct.Struct("!d").pack
_dd = struct.Struct("!dd").pack
_LRU = type(functools.lru_cache(maxsize=None)(lambda: None))
_C_CALLABLES = (types.BuiltinFunctionType, types.MethodDescriptorType, types.MethodWrapperType,
                 types.WrapperDescriptorType, types.ClassMethodDescriptorType)  # fmt: skip
_CALLABLES = (types.FunctionType, types.MethodType, functools.partial, _LRU) + _C_CALLABLES
_BUILTIN_BASES = (tuple, list, dict, set, frozenset, str, int, float, bytes)
_STDLIB_VALUES = ("datetime", "decimal", "_decimal", "fractions", "uuid", "pathlib")
# modules whose objects a function may name for their side effects, whose state is
# not an input: keyed by type when they cannot be keyed by value (inside code only)
_RESOURCES = {
    "_thread", "threading", "_abc", "abc", "logging", "io", "_io", "socket", "ssl",
    "sqlite3", "selectors", "weakref", "_weakrefset", "multiprocessing.synchronize",
    "concurrent.futures.thread", "concurrent.futures.process", "asyncio.locks",
}  # fmt: skip
_SKIP_CLASS_ATTRS = ("__dict__", "__weakref__", "__module__")
_EMPTY_DICT = b"{" + _Q(0)


def _imported_inside(name: str) -> types.ModuleType | str | None:
    """What a name of a function's code may import inside it (``import helpers``,
    ``from helpers import g``: the name is among the code's names, not its globals):
    the module if it is imported here, else the path of the user's own file it would
    import, else None (an attribute's name, say)."""
    if not all(p.isidentifier() for p in name.split(".")):
        return None
    module = sys.modules.get(name)
    if module is not None:
        return module
    return _local_spec(name)


@functools.lru_cache(maxsize=1024)
def _local_spec(name: str) -> str | None:
    """The file ``name`` would import, if it is the user's own (not installed)."""
    import importlib.util

    if "." in name:  # finding a submodule imports its package: only top-level names
        return None
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    origin = getattr(spec, "origin", None) or ""
    return origin if origin.endswith(".py") and not codec._is_installed(origin) else None


def _module_name(obj: Any) -> str:
    """``obj.__module__`` as text ("" when it is none: some C types on Python 3.10
    have a descriptor there)."""
    name = getattr(obj, "__module__", "")
    return name if isinstance(name, str) else ""


class Uncacheable(CloudloopError):
    """A function or value that cannot be keyed; the message says which, why, what to do."""


def function_key(fn: Any, version: Any = None) -> str:
    """The key of what ``fn`` computes (32 lowercase hex digits).

    Args:
        fn: a function, partial, bound method, callable object or class.
        version: the user's ``cache_version=`` (None, a str or an int).
    Raises:
        Uncacheable: ``fn`` or a value it uses cannot be keyed.
    """
    enc = _Encoder()
    enc.up(b"F" + _Q(SCHEME))
    enc.value(_PY)
    enc.value(version)
    enc.callable(fn)
    return enc.h.hexdigest()


def task_key(fkey: str, args: tuple[Any, ...], kwargs: dict[str, Any], seed: int) -> str:
    """The key of one task: its function (or command) key, arguments and seed."""
    enc = _Encoder()
    enc.up(b"T" + fkey.encode("ascii"))
    enc.value(tuple(args))
    if kwargs:
        enc.value(dict(kwargs))
    else:
        enc.up(_EMPTY_DICT)
    enc.value(int(seed))
    return enc.h.hexdigest()


def command_key(template: str, files: dict[str, bytes], serve: bool, version: Any = None) -> str:
    """The key of a command job: its template, the contents of its shipped files,
    whether it is served and ``cache_version`` (each row is then a task argument)."""
    enc = _Encoder()
    enc.up(b"C" + _Q(SCHEME))
    enc.value(version)
    enc.value(str(template))
    enc.value({str(k): bytes(v) for k, v in files.items()})
    enc.value(bool(serve))
    return enc.h.hexdigest()


def value_digest(obj: Any) -> bytes:
    """A canonical digest of a value (16 bytes): equal values, equal digests."""
    enc = _Encoder()
    enc.value(obj)
    return enc.h.digest()


# ---------------------------------------------------------------- names and versions


def _version_of(module_name: str) -> str:
    """An installed module's version: its top-level package's, or its distribution's."""
    top = module_name.partition(".")[0]
    version = getattr(sys.modules.get(top), "__version__", None)
    if isinstance(version, str):
        return version
    if top in sys.builtin_module_names or top in getattr(sys, "stdlib_module_names", ()):
        return ""  # the standard library: the Python minor version is in the key
    return _dist_version(top)


@functools.lru_cache(maxsize=512)
def _dist_version(top: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    for dist in _distributions().get(top, [])[:1]:
        try:
            return version(dist)
        except (PackageNotFoundError, ValueError):
            pass
    return ""


@functools.lru_cache(maxsize=1)
def _distributions() -> dict[str, list[str]]:
    """Top-level package → distributions (a scan of site-packages: done once)."""
    from importlib.metadata import packages_distributions

    try:
        return dict(packages_distributions())
    except Exception:  # a broken distribution's metadata: versions are then ""
        return {}


def _ref(obj: Any, module: str) -> str:
    """An installed object's reference: module, qualified name, version."""
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", "?")
    return f"{module}.{name}|{_version_of(module)}"


def _type_name(t: type) -> str:
    return f"{getattr(t, '__module__', '')}.{t.__qualname__}"


def _file_digest(path: str) -> bytes:
    # not cached by mtime: an edit within one timestamp tick would be a false hit
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).digest()
    except OSError:
        return b"<unreadable>"


# ---------------------------------------------------------------- the encoder


class _Encoder:
    """Feeds one canonical encoding into a hash.

    ``stack`` holds the ids of the containers, objects, functions and classes
    being encoded: meeting one again writes a back-reference (how many levels
    up it is) instead of recursing, so cycles end and stay canonical.
    """

    __slots__ = ("h", "up", "stack", "in_code")

    def __init__(self, stack: list[int] | None = None, in_code: int = 0) -> None:
        self.h = hashlib.blake2b(digest_size=16)
        self.up = self.h.update
        self.stack: list[int] = [] if stack is None else stack
        self.in_code = in_code  # > 0 while keying a function's or a class's contents

    def tag(self, t: bytes, data: bytes) -> None:
        self.up(t + _Q(len(data)) + data)

    def value(self, obj: Any) -> None:
        t = type(obj)
        if t is int:
            if -_I64 <= obj < _I64:
                self.up(b"i" + _q(obj))
            else:  # to_bytes, not str(): no digit limit, no quadratic conversion
                self.tag(b"I", obj.to_bytes(obj.bit_length() // 8 + 1, "little", signed=True))
        elif t is str:
            self.tag(b"s", obj.encode("utf-8", "surrogatepass"))
        elif t is float:
            self.up(b"d" + _d(obj))
        elif t is tuple:
            self._sequence(b"(", obj)
        elif obj is None:
            self.up(b"N")
        elif t is bool:
            self.up(b"B1" if obj else b"B0")
        elif t is bytes:
            self.tag(b"y", obj)
        elif t is list:
            self._sequence(b"[", obj)
        elif t is dict:
            self._mapping(b"{", obj)
        else:
            self._other(obj, t)

    def _enter(self, obj: Any) -> bool:
        """False (with a back-reference written) if ``obj`` is being encoded already."""
        stack = self.stack
        if id(obj) in stack:
            self.tag(b"^", _Q(len(stack) - stack.index(id(obj))))
            return False
        if len(stack) >= _MAX_DEPTH:
            raise Uncacheable(
                f"a value nested more than {_MAX_DEPTH} levels deep cannot be keyed for the "
                f"cache: flatten it, or leave cache off for this job"
            )
        stack.append(id(obj))
        return True

    def _sequence(self, t: bytes, items: Any) -> None:
        stack = self.stack
        if id(items) in stack or len(stack) >= _MAX_DEPTH:
            self._enter(items)  # writes the back-reference, or raises
            return
        stack.append(id(items))
        up, value = self.up, self.value
        up(t + _Q(len(items)))
        for x in items:  # the scalars of a task's arguments inline: this runs per task
            tx = type(x)
            if tx is int and -_I64 <= x < _I64:
                up(b"i" + _q(x))
            elif tx is str:
                b = x.encode("utf-8", "surrogatepass")
                up(b"s" + _Q(len(b)) + b)
            elif tx is float:
                up(b"d" + _d(x))
            else:
                value(x)
        stack.pop()

    def _sub(self, obj: Any) -> bytes:
        """The digest of ``obj`` alone (an entry of an order-free container)."""
        sub = _Encoder(self.stack, self.in_code)
        sub.value(obj)
        return sub.h.digest()

    def _mapping(self, t: bytes, d: Any) -> None:
        if not self._enter(d):
            return
        parts = sorted(self._sub(k) + self._sub(v) for k, v in d.items())
        self.stack.pop()
        self.up(t + _Q(len(parts)) + b"".join(parts))

    def _set(self, t: bytes, s: Any) -> None:
        if not self._enter(s):
            return
        parts = sorted(self._sub(x) for x in s)
        self.stack.pop()
        self.up(t + _Q(len(parts)) + b"".join(parts))

    def _other(self, obj: Any, t: type) -> None:
        mod = _module_name(t)
        if t is set or t is frozenset:
            self._set(b"<" if t is set else b">", obj)
        elif t is complex:
            self.up(b"j" + _dd(obj.real, obj.imag))
        elif t is bytearray:
            self.tag(b"Y", bytes(obj))
        elif t is memoryview:
            self.tag(b"v", f"{obj.format}|{obj.shape}".encode())
            self.tag(b"y", obj.tobytes())
        elif t is types.MappingProxyType:  # a class's __dict__, dataclass metadata
            self._mapping(b"p", obj)
        elif t is range:
            self.up(b"r" + _q(obj.start) + _q(obj.stop) + _q(obj.step))
        elif t is slice:
            self.up(b"l")
            self.value((obj.start, obj.stop, obj.step))
        elif mod.startswith("numpy"):
            self._numpy(obj)
        elif isinstance(obj, enum.Enum):
            self.up(b"E")
            self._class(t)
            self.value(obj.name)
        elif isinstance(obj, _CALLABLES):
            self.callable(obj)
        elif isinstance(obj, type):
            self._class(obj)
        elif isinstance(obj, types.ModuleType):
            self._module(obj, ())
        elif isinstance(obj, types.CodeType):
            self._code(obj)
        elif dataclasses.is_dataclass(obj):
            self.up(b"D")
            self._class(t)
            self.value(tuple((f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj)))
        elif isinstance(obj, tuple) and hasattr(t, "_fields"):  # a namedtuple
            self.up(b"U")
            self._class(t)
            self.value(tuple(obj))
        elif isinstance(obj, _BUILTIN_BASES):
            self._builtin_subclass(obj, t)
        elif mod in _STDLIB_VALUES or mod.startswith("pathlib"):
            self.up(b"V")
            self._class(t)
            self.value(repr(obj))
        else:
            self._state(obj)

    def _builtin_subclass(self, obj: Any, t: type) -> None:
        """A subclass of a builtin (OrderedDict, Counter, a str subclass): its class,
        its builtin value, and what its instance dict holds."""
        self.up(b"S")
        self._class(t)
        base = next(b for b in _BUILTIN_BASES if isinstance(obj, b))
        self.value(base(obj))
        self.value(dict(getattr(obj, "__dict__", {})))

    def _numpy(self, obj: Any) -> None:
        import numpy as np

        if type(obj) is np.ndarray:
            self._dtype(obj.dtype)
            self.up(b"A" + _Q(obj.ndim) + b"".join(_Q(n) for n in obj.shape))
            if obj.dtype.hasobject:
                self._sequence(b"[", obj.ravel(order="C").tolist())
            else:
                self.tag(b"a", np.ascontiguousarray(obj).tobytes())
        elif isinstance(obj, np.generic):
            self._dtype(obj.dtype)
            if obj.dtype.hasobject:
                self.value(obj.item())
            else:
                self.tag(b"g", obj.tobytes())
        elif isinstance(obj, np.dtype):
            self._dtype(obj)
        else:  # an ndarray subclass (a masked array: its mask too), a Generator, a ufunc
            self._state(obj)

    def _dtype(self, dtype: Any) -> None:
        # a structured dtype's .str is only its size ("|V16"): its fields say the rest
        desc = dtype.str if dtype.fields is None and dtype.subdtype is None else repr(dtype.descr)
        self.tag(b"T", desc.encode())

    def _state(self, obj: Any) -> None:
        """An object with no rule of its own: its class and what pickle would send."""
        if not self._enter(obj):
            return
        self.up(b"O")
        self._class(type(obj))
        reducer = copyreg.dispatch_table.get(type(obj))  # as pickle asks (numpy ufuncs)
        try:
            reduced = reducer(obj) if reducer is not None else obj.__reduce_ex__(5)
        except Exception as e:
            self.stack.pop()
            if self.in_code and type(obj).__module__ in _RESOURCES:
                self.tag(b"t", _type_name(type(obj)).encode())
                return
            raise Uncacheable(
                f"a {_type_name(type(obj))} cannot be keyed for the cache: it cannot be "
                f"pickled ({e}), so it has no state to key; pass plain data (numbers, "
                f"strings, arrays, dicts) instead, or leave cache off for this job"
            ) from None
        if isinstance(reduced, str):  # a module-level singleton: its name says it
            self.value(reduced)
        else:
            self.callable(reduced[0])
            parts = list(reduced[1:])
            for i in (2, 3):  # listitems, dictitems: iterators
                if len(parts) > i and parts[i] is not None:
                    parts[i] = list(parts[i])
            self.value(tuple(parts))
        self.stack.pop()

    # ---------------------------------------------------------------- code

    def callable(self, fn: Any) -> None:
        if isinstance(fn, (staticmethod, classmethod)):
            fn = fn.__func__
        if isinstance(fn, _LRU):
            fn = fn.__wrapped__
        if isinstance(fn, functools.partial):
            self.up(b"P")
            self.callable(fn.func)
            self.value(tuple(fn.args))
            self.value(dict(fn.keywords))
        elif isinstance(fn, types.MethodType):
            self.up(b"M")
            self.callable(fn.__func__)
            self.value(fn.__self__)
        elif isinstance(fn, types.FunctionType):
            self._function(fn)
        elif isinstance(fn, type):
            self._class(fn)
        elif isinstance(fn, _C_CALLABLES):
            self._c_callable(fn)
        elif callable(fn):  # a callable object: its class, then its state
            self.up(b"o")
            self._class(type(fn))
            self._state(fn)
        else:
            raise Uncacheable(
                f"{fn!r:.80} is not a function, so cloudloop cannot key it for the cache: "
                f"pass a function, or leave cache off"
            )

    def _c_callable(self, fn: Any) -> None:
        owner = getattr(fn, "__self__", None)
        if owner is None or isinstance(owner, (types.ModuleType, type)):
            mod = _module_name(fn) or _module_name(owner)
            if isinstance(owner, type):  # str.maketrans, dict.fromkeys
                self._class(owner)
            self.tag(b"b", _ref(fn, mod).encode())
        else:  # a C method bound to an object ([].append): which object matters
            self.tag(b"b", _type_name(type(owner)).encode() + b"." + fn.__name__.encode())
            self.value(owner)

    def _function(self, fn: types.FunctionType) -> None:
        module = _module_name(fn)
        if not codec.ships_by_value(module):  # an installed library's: name and version
            self.tag(b"R", _ref(fn, module).encode())
            return
        if not self._enter(fn):
            return
        self.in_code += 1
        self.up(b"f")
        self._code(fn.__code__)
        self.value(fn.__defaults__)
        self.value(fn.__kwdefaults__)
        self.up(b"c" + _Q(len(fn.__closure__ or ())))
        for cell in fn.__closure__ or ():
            try:
                contents = cell.cell_contents
            except ValueError:  # a cell not yet filled (a name assigned later)
                self.up(b"e")
                continue
            self._code_value(contents, "a closure variable", fn)
        self.value(dict(vars(fn)))  # attributes set on it; functools.wraps' __wrapped__
        self._globals(fn)
        self.in_code -= 1
        self.stack.pop()

    def _globals(self, fn: types.FunctionType) -> None:
        g = fn.__globals__
        found = g.get("__builtins__")
        builtins: Any = found if isinstance(found, dict) else getattr(found, "__dict__", {})
        names = codec.code_names(fn.__code__)
        for name in sorted(names):
            self.tag(b"n", name.encode())
            if name in g:
                value = g[name]
                if isinstance(value, types.ModuleType):
                    self._module(value, names)
                else:
                    self._code_value(value, f"the global {name!r}", fn)
            elif name in builtins:
                self.tag(b"u", name.encode())  # ("builtin", name)
            elif isinstance(module := _imported_inside(name), types.ModuleType):
                self._module(module, names)  # ``import helpers`` inside the function
            elif module is not None:  # not imported here: the file it would import
                self.tag(b"F", _file_digest(module))
            else:  # an attribute's name (x.append), or a global not yet bound
                self.up(b"x")

    def _code_value(self, value: Any, what: str, owner: Any) -> None:
        """A value a function or class uses: an unkeyable one is named in the error."""
        try:
            self.up(self._sub(value))
        except Uncacheable as e:
            name = getattr(owner, "__qualname__", repr(owner))
            raise Uncacheable(
                f"{what} of {name} cannot be keyed for the cache: {e}. Pass it as an "
                f"argument, make it picklable, or leave cache off for this job"
            ) from None

    def _code(self, code: types.CodeType) -> None:
        self.tag(b"C", code.co_code)
        self.tag(b"X", getattr(code, "co_exceptiontable", b""))
        self.up(
            _Q(code.co_argcount)
            + _Q(code.co_posonlyargcount)
            + _Q(code.co_kwonlyargcount)
            + _Q(code.co_flags)
            + _Q(len(code.co_consts))
        )
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                self._code(const)
            else:
                self.value(const)
        for names in (code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars):
            self.value(tuple(names))

    def _class(self, cls: type) -> None:
        module = _module_name(cls)
        if module == "builtins" or not codec.ships_by_value(module):
            self.tag(b"k", _ref(cls, module).encode())
            return
        if not self._enter(cls):
            return
        self.in_code += 1
        self.tag(b"K", cls.__qualname__.encode())
        self.value(tuple(cls.__bases__))
        self.value(type(cls))  # a metaclass
        attrs = vars(cls)
        for name in sorted(attrs):
            if name in _SKIP_CLASS_ATTRS:
                continue
            self.tag(b"n", name.encode())
            v = attrs[name]
            if isinstance(v, property):
                self.value((v.fget, v.fset, v.fdel))
            elif isinstance(v, (staticmethod, classmethod)):
                self.callable(v)
            else:
                self._code_value(v, f"the class attribute {name!r}", cls)
        self.in_code -= 1
        self.stack.pop()

    def _module(self, mod: types.ModuleType, names: Any) -> None:
        """A module: by value, its file's digest and the attributes ``names`` picks
        (from memory, so an edited file not yet reloaded is not taken for its code);
        installed, its name and version."""
        name = mod.__name__
        path = getattr(mod, "__file__", None)
        if not codec.ships_by_value(name):
            self.tag(b"m", f"{name}|{_version_of(name)}".encode())
            return
        if not self._enter(mod):
            return
        self.tag(b"M", name.encode() + b"|" + (_file_digest(path) if path else b"<no file>"))
        attrs = vars(mod)
        for attr in sorted(n for n in names if n in attrs):
            self.tag(b"n", attr.encode())
            value = attrs[attr]
            if isinstance(value, types.ModuleType):
                self._module(value, names)
            else:
                self._code_value(value, f"{name}.{attr}", mod)
        self.stack.pop()
