"""All serialisation: pickling with diagnosis, signing, messages, outcomes.

Every pickle that crosses the queue or the store is signed with the backend's
key (HMAC-SHA256) and verified before it is unpickled. A blob's signature
covers its store key as well as its bytes, so a signed blob copied to another
key (another job, another task, another kind of record) fails verification
instead of being taken for what lives there::

    signed blob  = b"CLS2" | hmac(key, "blob" 0 name 0 data)(32) | data
    message body = b"CLM2" | hmac(key, "message" 0 rest)(32) | rest
    rest         = u32 header length | header JSON | payload

The message header is JSON so a worker can say which job and tasks a message
claims to carry without unpickling anything; the payload is opaque pickled
bytes that only the task runner unpickles.

Plain data that a less trusted process hands over (the task runner's outcome
rows, a result part's row lists) is read with :func:`loads_data`, an
unpickler that refuses every class and function: only str, bytes, numbers,
None, bool, tuples, lists, dicts and sets come back. Only the values a task
returned (and its exception) are unpickled in full, by the client that
submitted the task's code.
"""

from __future__ import annotations

import collections
import functools
import io
import json
import pickle
import struct
import sys
import traceback
import types
from collections.abc import Iterator, Sequence
from typing import Any

import cloudpickle

from .errors import RemoteError, RemoteTraceback, SerializationError, TamperedError
from .model import ClaimedHeader, ErrorInfo, Outcome, OutcomeRow

_BLOB = b"CLS2"
_MSG = b"CLM2"
_OLD = (b"CLS1", b"CLM1")
_MAC = 32
_PEEK_MAX = 4096  # bytes of an unverified header looked at, for an error report


# ---------------------------------------------------------------- signing


def _mac(key: bytes, domain: bytes, name: str, data: bytes) -> bytes:
    import hmac  # here, not at the top: a task runner never signs or verifies

    h = hmac.new(key, domain + b"\0" + name.encode() + b"\0", "sha256")
    h.update(data)
    return h.digest()


def sign(key: bytes, data: bytes, name: str) -> bytes:
    """Wrap ``data`` stored under ``name`` so :func:`verify` can detect tampering."""
    return _BLOB + _mac(key, b"blob", name, data) + data


def verify(key: bytes, blob: bytes, name: str, what: str | None = None) -> bytes:
    """The data inside a :func:`sign` envelope made for ``name``, or TamperedError."""
    what = what or name
    if blob[:4] in _OLD:
        raise TamperedError(
            f"{what} was written by an older cloudloop (its signature does not cover "
            "its name); re-run the job with this version"
        )
    if len(blob) < 4 + _MAC or blob[:4] != _BLOB:
        raise TamperedError(f"{what} is not a signed cloudloop blob (wrong header)")
    mac, data = blob[4 : 4 + _MAC], blob[4 + _MAC :]
    import hmac

    if not hmac.compare_digest(mac, _mac(key, b"blob", name, data)):
        raise TamperedError(
            f"{what} failed its signature check: it was modified, copied from another "
            "key, or signed with another backend's secret; refusing to use it"
        )
    return data


def encode_record(key: bytes, name: str, obj: Any) -> bytes:
    """A small JSON record stored under ``name``, signed."""
    return sign(key, encode_json(obj), name)


def decode_record(key: bytes, blob: bytes, name: str, what: str | None = None) -> Any:
    """The JSON record :func:`encode_record` stored under ``name`` (TamperedError if not)."""
    data = verify(key, blob, name, what)
    try:
        return json.loads(data)
    except ValueError as e:  # signed but unreadable: a bug, not tampering
        raise TamperedError(f"{what or name} is not JSON: {e}") from None


def encode_message(key: bytes, header: dict[str, Any], payload: bytes = b"") -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    body = struct.pack(">I", len(head)) + head + payload
    return _MSG + _mac(key, b"message", "", body) + body


def peek_header(body: bytes) -> ClaimedHeader:
    """What a message claims to be, unverified: for error reports only, never acted on
    (a message too damaged to claim anything claims job "?" and no tasks)."""
    try:
        (n,) = struct.unpack(">I", body[4 + _MAC : 8 + _MAC])
        if n > _PEEK_MAX:
            return ClaimedHeader()
        return ClaimedHeader.from_dict(json.loads(body[8 + _MAC : 8 + _MAC + n]))
    except Exception:
        return ClaimedHeader()


def decode_message(key: bytes, body: bytes) -> tuple[dict[str, Any], bytes]:
    """Verify a message and return its header and payload."""
    if body[:4] in _OLD:
        raise TamperedError("queue message was written by an older cloudloop; it was not run")
    if len(body) < 8 + _MAC or body[:4] != _MSG:
        raise TamperedError("queue message is not a cloudloop message (wrong header)")
    mac, rest = body[4 : 4 + _MAC], body[4 + _MAC :]
    import hmac

    if not hmac.compare_digest(mac, _mac(key, b"message", "", rest)):
        raise TamperedError("queue message failed its signature check; it was not run")
    (n,) = struct.unpack(">I", rest[:4])
    try:
        header = json.loads(rest[4 : 4 + n])
    except ValueError as e:  # signed but unreadable: a bug, not tampering
        raise TamperedError(f"queue message header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise TamperedError("queue message header is not a JSON object")
    return header, rest[4 + n :]


def digest(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()[:24]


class _DataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise TamperedError(
            f"refusing to load {module}.{name}: only plain data (str, bytes, numbers, "
            "lists, tuples, dicts) is accepted here"
        )


def loads_data(data: bytes) -> Any:
    """Unpickle plain data only: any class, function or global is refused (TamperedError)."""
    try:
        return _DataUnpickler(io.BytesIO(data)).load()
    except TamperedError:
        raise
    except Exception as e:
        raise TamperedError(f"unreadable data ({type(e).__name__}: {e})") from None


# ---------------------------------------------------------------- pickling


@functools.lru_cache(maxsize=1)
def _install_roots() -> tuple[str, ...]:
    """Where installed code lives (sysconfig takes ~2 ms to say: asked once)."""
    import sysconfig

    paths = sysconfig.get_paths()
    roots = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    roots |= {sys.prefix, sys.base_prefix, sys.exec_prefix}
    return tuple(r + "/" for r in roots if r)


def _is_installed(path: str) -> bool:
    return path.startswith(_install_roots()) or "site-packages" in path


def _local_module(name: str) -> types.ModuleType | None:
    """The top-level module of ``name`` if it is the user's own code (not installed)."""
    if not name or name == "__main__" or name.startswith("cloudloop"):
        return None
    module = sys.modules.get(name.split(".")[0])
    path = getattr(module, "__file__", None)
    if module is None or not path or _is_installed(path):
        return None
    return module


def code_names(code: types.CodeType) -> set[str]:
    """The global and attribute names ``code`` and the code nested in it use."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= code_names(const)
    return names


def ships_by_value(module: str) -> bool:
    """Whether cloudpickle ships what ``module`` defines by value (``__main__``, the
    user's own modules), not as a reference a worker must be able to import."""
    return _by_value(module) or _local_module(module) is not None


def ship_user_modules(fn: Any) -> None:
    """Pickle the user's own modules by value so workers need not import them.

    A function from ``__main__`` is already pickled by value; one from a module
    in the user's project (not installed, not the standard library) would be
    pickled by reference and fail on a worker that lacks the file. Registering
    its top-level package makes cloudpickle ship its code instead. The same
    goes for the project modules whose functions, classes or submodules the
    function uses (``from helpers import train``), followed through their own
    functions, so a worker on another machine needs none of the files.
    """
    seen: set[int] = set()
    todo = [fn]
    while todo and len(seen) < 10_000:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        module = _local_module(getattr(obj, "__module__", None) or "")
        if isinstance(obj, types.ModuleType):
            module = _local_module(obj.__name__)
        if module is not None and module.__name__ not in _registered():
            try:
                cloudpickle.register_pickle_by_value(module)
            except ValueError:
                pass
        code = getattr(obj, "__code__", None)
        if isinstance(code, types.CodeType) and (
            module is not None or getattr(obj, "__module__", None) == "__main__"
        ):
            g = getattr(obj, "__globals__", {})
            todo += [g[n] for n in code_names(code) if n in g]
            for cell in getattr(obj, "__closure__", None) or ():
                try:
                    todo.append(cell.cell_contents)
                except ValueError:  # an empty cell
                    pass
        elif isinstance(obj, type) and module is not None:
            todo += [v for v in vars(obj).values() if callable(v)]
        if isinstance(obj, types.MethodType):  # a bound or class method: its object too
            todo += [obj.__func__, obj.__self__]
        elif not isinstance(obj, (type, types.ModuleType, types.FunctionType)):
            todo.append(type(obj))  # an instance (a callable object): its class's module


def _rebuild_cached(fn: Any, maxsize: int | None, typed: bool) -> Any:
    return functools.lru_cache(maxsize=maxsize, typed=typed)(fn)


def _code_reduce(code: types.CodeType) -> Any:
    """cloudpickle's reduction of a code object, keeping its real file name.

    cloudpickle >= 3.1.3 renames every by-value code object's file to
    ``<dynamic-code>``, which empties remote tracebacks: no file, no source
    line. Keeping the name lets a worker's traceback show the user's file and
    line (and the line's text wherever that file exists).
    """
    fn, args = cloudpickle.cloudpickle._code_reduce(code)
    args = tuple(code.co_filename if a == "<dynamic-code>" else a for a in args)
    return fn, args


class _Pickler(cloudpickle.Pickler):  # type: ignore[misc]  # cloudpickle has no types
    """cloudpickle, plus ``functools.lru_cache``/``cache`` wrappers defined in
    ``__main__`` or a notebook, which plain cloudpickle pickles by a reference
    that workers cannot resolve, and code objects that keep their file names."""

    dispatch_table = collections.ChainMap(
        {types.CodeType: _code_reduce}, cloudpickle.Pickler.dispatch_table
    )

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, _LRU) and _by_value(getattr(obj, "__module__", "")):
            params = obj.cache_parameters()
            return _rebuild_cached, (obj.__wrapped__, params["maxsize"], params["typed"])
        return super().reducer_override(obj)


_LRU = type(functools.lru_cache(maxsize=None)(lambda: None))


def _by_value(module: str) -> bool:
    return module == "__main__" or module.split(".")[0] in _registered()


def _registered() -> set[str]:
    return set(getattr(cloudpickle.cloudpickle, "_PICKLE_BY_VALUE_MODULES", ()))


def _cloudpickle(obj: Any) -> bytes:
    buf = io.BytesIO()
    _Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buf.getvalue()


def dumps(obj: Any, what: str) -> bytes:
    """cloudpickle ``obj``, or raise SerializationError naming the culprit."""
    try:
        return _cloudpickle(obj)
    except Exception as e:
        culprit = find_unpicklable(obj, what)
        raise SerializationError(
            f"cannot serialise {culprit or what}: {type(e).__name__}: {e}. "
            "Objects holding open resources (connections, locks, files, threads) "
            "cannot travel to workers: create them inside the task instead."
        ) from e


def _pickles(obj: Any) -> bool:
    try:
        _cloudpickle(obj)
        return True
    except Exception:
        return False


def _describe(obj: Any) -> str:
    t = type(obj)
    return f"{t.__module__}.{t.__qualname__}" if t.__module__ != "builtins" else t.__qualname__


def _children(obj: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(obj, types.FunctionType):
        code = obj.__code__
        for name, cell in zip(code.co_freevars, obj.__closure__ or ()):
            try:
                yield f"closure variable {name!r}", cell.cell_contents
            except ValueError:
                continue
        for name in code.co_names:
            if name in obj.__globals__:
                yield f"global {name!r}", obj.__globals__[name]
        for i, d in enumerate(obj.__defaults__ or ()):
            yield f"default #{i}", d
        for name, d in (obj.__kwdefaults__ or {}).items():
            yield f"default {name!r}", d
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for i, item in enumerate(obj):
            yield f"item {i}", item
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield f"key {k!r}", v
    elif isinstance(obj, types.MethodType):
        yield "bound instance", obj.__self__
    elif hasattr(obj, "__dict__") and not isinstance(obj, (type, types.ModuleType)):
        for k, v in vars(obj).items():
            yield f"attribute {k!r}", v


def find_unpicklable(obj: Any, what: str, depth: int = 0) -> str | None:
    """A readable path to the innermost object that cannot be pickled."""
    label = f"{what} ({_describe(obj)})"
    if depth > 6 or _pickles(obj):
        return None
    for name, child in _children(obj):
        if not _pickles(child):
            inner = find_unpicklable(child, f"{what} -> {name}", depth + 1)
            return inner or f"{what} -> {name} ({_describe(child)})"
    return label


def dumps_fast(obj: Any, what: str, n: int | None = None) -> bytes:
    """Plain pickle when it works (results are usually plain data), else cloudpickle.

    A class that plain pickle can only name but the other side cannot import
    (one rebuilt from a shipped ``__main__``) fails the name lookup here and
    falls back to cloudpickle, which ships it by value. ``what`` (followed by
    ``n`` if given) names the object in an error; nothing is formatted unless
    one is raised.
    """
    try:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return dumps(obj, what if n is None else f"{what} {n}")


def loads(data: bytes) -> Any:
    return pickle.loads(data)


# ---------------------------------------------------------------- errors


def error_info(exc: BaseException, tb: str | None = None) -> ErrorInfo:
    """Capture an exception for the store (pickled if it round-trips)."""
    if tb is None:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    t = type(exc)
    blob: bytes | None
    try:
        blob = cloudpickle.dumps(exc.with_traceback(None))
        pickle.loads(blob)
    except BaseException:  # an exception that will not round-trip (its unpickling may
        blob = None  # even raise SystemExit): it travels as its type name and text
    try:
        message = str(exc)
    except BaseException as e:
        message = f"(its message could not be read: {type(e).__name__})"
    return ErrorInfo(f"{t.__module__}.{t.__qualname__}", message, tb, blob)


def rebuild_exception(info: ErrorInfo) -> BaseException:
    """The original exception (or a RemoteError), with the remote traceback as cause."""
    exc: BaseException | None = None
    if info.exc is not None:
        try:
            exc = pickle.loads(info.exc)
        except Exception:  # a BaseException (SystemExit) reaches the caller: see read_outcome
            exc = None
    if not isinstance(exc, BaseException):
        exc = RemoteError(info.type_name, info.message)
    exc.__cause__ = RemoteTraceback(f'\n"""\n{info.traceback.rstrip()}\n"""')
    return exc


# ---------------------------------------------------------------- outcomes


def pack_rows(rows: Sequence[tuple[Any, ...]]) -> bytes:
    """:class:`OutcomeRow` s (or tuples of its fields) as bytes: plain tuples, so a worker can read the rows its
    task runner sends with :func:`loads_data` (a NamedTuple would pickle its class)."""
    return pickle.dumps([tuple(r) for r in rows], protocol=pickle.HIGHEST_PROTOCOL)


def unpack_rows(data: bytes, where: str) -> list[OutcomeRow]:
    """The rows :func:`pack_rows` packed (TamperedError if they are not rows)."""
    rows = loads_data(data)
    row_indices(rows, where)
    return [OutcomeRow._make(r) for r in rows]


def encode_part(key: bytes, name: str, worker: str, host: str, blobs: list[bytes]) -> bytes:
    """A result part stored under ``name``: blobs of packed rows (as the runner sent them)."""
    body = pickle.dumps((1, worker, host, blobs), protocol=pickle.HIGHEST_PROTOCOL)
    return sign(key, body, name)


def part_rows(
    key: bytes, blob: bytes, name: str, span: tuple[int, int] | None = None
) -> tuple[str, str, list[tuple[Any, ...]]]:
    """(worker, host, rows) of a result part, verified; ``span``: the (lo, hi) its
    key claims, which every row's index must lie in.

    The rows were checked by the worker that signed the part (see
    :func:`row_indices`); here only their shape and span are, since a part
    can only come from a holder of the key.
    """
    data = verify(key, blob, name, f"result part {name}")
    part = loads_data(data)
    if not (isinstance(part, tuple) and len(part) == 4 and part[0] == 1):
        raise TamperedError(f"result part {name} has an unknown layout")
    _, worker, host, blobs = part
    if not (isinstance(worker, str) and isinstance(host, str) and isinstance(blobs, list)):
        raise TamperedError(f"result part {name} has an unknown layout")
    rows = []
    for b in blobs:
        chunk = loads_data(b) if isinstance(b, bytes) else None
        if not isinstance(chunk, list):
            raise TamperedError(f"result part {name} holds a malformed batch")
        rows += chunk
    indices = row_indices(rows, name)
    if span is not None and indices and not (span[0] <= min(indices) and max(indices) <= span[1]):
        raise TamperedError(f"result part {name} holds tasks outside {span[0]}..{span[1]}")
    return worker, host, rows


def row_indices(rows: Any, where: str) -> list[int]:
    """The task index of each outcome row, if every row has the row's shape (a tuple
    of 7 whose first item is a whole number), else TamperedError. A task runner's
    rows are plain data (:func:`loads_data`), so this is all a worker must check
    before it stores them: which tasks they are for."""
    try:
        indices = [r[0] for r in rows if type(r) is tuple and len(r) == 7 and type(r[0]) is int]
    except TypeError:
        indices = []
    if not isinstance(rows, list) or len(indices) != len(rows):
        raise TamperedError(f"{where} holds a malformed outcome row")
    return indices


def decode_part(
    key: bytes, blob: bytes, name: str, span: tuple[int, int] | None = None
) -> list[Outcome]:
    worker, host, rows = part_rows(key, blob, name, span)
    return outcomes(rows, worker, host, name)


def outcomes(rows: list[tuple[Any, ...]], worker: str, host: str, name: str) -> list[Outcome]:
    """A verified part's rows (:func:`part_rows`) as :class:`Outcome` s."""
    try:
        return [
            Outcome(i, a, v, None if e is None else ErrorInfo(*e), s, t, worker, host, c)
            for i, a, v, e, s, t, c in rows
        ]
    except TypeError:  # an error that is not (type, message, traceback, exc)
        raise TamperedError(f"result part {name} holds a malformed outcome row") from None


def encode_json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=str).encode()


def decode_json(data: bytes) -> Any:
    return json.loads(data)
