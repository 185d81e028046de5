"""What a job's function needs installed, what a worker has, what a provider installs.

::

    client   pins_for(fn) ── fn's globals, closure, defaults, imports in its code, the
               │              classes and objects they reach, followed as cloudpickle
               │              pickles them (by value: look inside; by reference: note
               │              the module)
               ▼
             modules a worker must import ─► their distributions ─► "scikit-learn==1.5.2"
               ▼
             JobManifest.requires                 (profile or job: requirements = "auto")

    worker   missing(requires), once per job ─► lacks one? ─► set the job's messages aside
             (never run, failed or dead-lettered) and write jobs/<job>/aside/<worker>
             (SetAside: what it lacks, what it has) once ─► job.status() names it

    provider waiting_requirements(backend) ─► the pins of the unfinished jobs, to install
             before it starts workers (the ssh provider, the ec2 provider)

A pin names the distribution and the exact version installed here: whatever
is pickled by reference (a module, a function or class of an installed
package, a fitted estimator in a closure) is imported by the worker, and a
pickle made with one version of a package can fail, or worse, load wrong
with another. What cloudpickle ships by value (``__main__``, the user's own
modules: :func:`cloudloop.codec.ships_by_value`) is looked into, not pinned;
the standard library, cloudloop and cloudpickle are never pinned (whoever
installs workers installs those). The task's items are not looked at.

Looking costs a few milliseconds per function (the owner of each module is
found once per process: a distribution named like the module, else a scan of
the dist-info records of the module's own site directory) and never fails a
submission: an object that cannot be looked into, or a module no installed
distribution owns, is skipped.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import re
import sys
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import codec

if TYPE_CHECKING:
    from importlib import metadata

    from .backends import Backend

# importlib.metadata, dis and importlib.util are imported where they are used: a
# worker imports this module for missing() only, and most workers never call it

log = logging.getLogger("cloudloop")

_MAX_OBJECTS = 5_000  # objects looked at per pins_for call
_MAX_ITEMS = 64  # elements of one container (or attributes of one object) looked at
_MAX_DEPTH = 12  # links followed from the function
_NEVER = frozenset({"cloudloop", "cloudpickle", "__main__", "__mp_main__", "builtins"})
_STDLIB = frozenset(getattr(sys, "stdlib_module_names", ())) | {"_distutils_hack"}
_ATOMS = (str, bytes, bytearray, int, float, complex, bool, type(None), range, memoryview)


def pins_for(*objs: Any) -> tuple[str, ...]:
    """The distributions a worker needs to unpickle and run ``objs`` (a task function,
    and whatever else is pickled with it), as ``name==version`` of what is installed
    here, sorted. Never raises: what cannot be looked into is skipped."""
    modules: set[str] = set()
    try:
        _walk(objs, modules)
    except Exception as e:  # pragma: no cover - each step already guards itself
        log.debug("pins_for stopped early: %s: %s", type(e).__name__, e)
    pins = set()
    for name in modules:
        try:
            pin = _module_pin(name)
        except Exception as e:
            log.debug("no pin for module %s: %s: %s", name, type(e).__name__, e)
            continue
        if pin:
            pins.add(pin)
    return tuple(sorted(pins, key=str.lower))


# ---------------------------------------------------------------- what a function reaches


def _walk(roots: tuple[Any, ...], modules: set[str]) -> None:
    """Follow ``roots`` as cloudpickle would pickle them, noting into ``modules`` every
    module a worker must import (bounded: :data:`_MAX_OBJECTS`, :data:`_MAX_DEPTH`)."""
    seen: dict[int, Any] = {}  # id -> object (kept: an id is not reused meanwhile)
    todo: list[tuple[Any, int]] = [(r, 0) for r in roots]
    while todo and len(seen) < _MAX_OBJECTS:
        obj, depth = todo.pop()
        if id(obj) in seen:
            continue
        seen[id(obj)] = obj
        try:
            reached = [] if isinstance(obj, _ATOMS) else _reaches(obj, modules)
        except Exception:  # an object that will not be looked into: skipped
            continue
        if depth < _MAX_DEPTH:
            todo += [(x, depth + 1) for x in reached]


def _reaches(obj: Any, modules: set[str]) -> list[Any]:
    """What pickling ``obj`` pickles too; modules it refers to by name go to ``modules``."""
    if isinstance(obj, types.ModuleType):
        if not codec.ships_by_value(obj.__name__):
            _note(obj.__name__, modules)
            return []
        # the user's own module travels whole: what it holds is pickled too
        names = (v for k, v in vars(obj).items() if not k.startswith("__"))
        return list(itertools.islice(names, 4 * _MAX_ITEMS))
    if isinstance(obj, types.MethodType):  # a bound method: its function and its object
        return [obj.__func__, obj.__self__]
    if isinstance(obj, functools.partial):
        return [obj.func, *obj.args, *obj.keywords.values()]
    if isinstance(obj, (staticmethod, classmethod)):
        return [obj.__func__]
    if isinstance(obj, property):
        return [obj.fget, obj.fset, obj.fdel]
    if isinstance(obj, (types.FunctionType, type)):
        if _by_reference(obj):
            _note(obj.__module__, modules)
            return []
        if isinstance(obj, types.FunctionType):  # what its code imports when it runs
            for name in _imports(obj.__code__):
                _note(name, modules)
        return _inside(obj)
    if isinstance(obj, (types.BuiltinFunctionType, types.MethodWrapperType)):
        owner = getattr(obj, "__self__", None)
        module = getattr(obj, "__module__", None)
        if module:
            _note(module, modules)
        return [] if owner is None or isinstance(owner, types.ModuleType) else [owner]
    if isinstance(obj, dict):
        pairs = itertools.islice(obj.items(), _MAX_ITEMS)
        return [x for kv in pairs for x in kv]
    if isinstance(obj, (list, tuple, set, frozenset)):
        return list(itertools.islice(obj, _MAX_ITEMS))
    # any other object: its class, and the state pickled with it (its attributes)
    out: list[Any] = [type(obj)]
    state = getattr(obj, "__dict__", None)
    if isinstance(state, dict):
        out += itertools.islice(state.values(), _MAX_ITEMS)
    return out


def _inside(obj: types.FunctionType | type) -> list[Any]:
    """What a function or class shipped by value carries with it."""
    if isinstance(obj, type):
        return [*obj.__bases__, *itertools.islice(vars(obj).values(), 4 * _MAX_ITEMS)]
    g = obj.__globals__
    out: list[Any] = [g[n] for n in codec.code_names(obj.__code__) if n in g]
    for cell in obj.__closure__ or ():
        try:
            out.append(cell.cell_contents)
        except ValueError:  # an empty cell
            pass
    out += obj.__defaults__ or ()
    out += (obj.__kwdefaults__ or {}).values()
    out += vars(obj).values()  # attributes, a decorator's __wrapped__
    return out


@functools.lru_cache(maxsize=1024)
def _imports(code: types.CodeType) -> frozenset[str]:
    """Modules ``code`` (and the code nested in it) imports by absolute name."""
    out: set[str] = set()
    import dis

    recent: list[Any] = [None, None]  # the arguments of the last two instructions
    for ins in dis.get_instructions(code):
        # IMPORT_NAME follows LOAD_CONST level, LOAD_CONST fromlist: level 0 is absolute
        if ins.opname == "IMPORT_NAME" and recent[0] == 0 and ins.argval:
            out.add(ins.argval)
        recent = [recent[1], ins.argval if ins.opname == "LOAD_CONST" else None]
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            out |= _imports(const)
    return frozenset(out)


def _by_reference(obj: types.FunctionType | type) -> bool:
    """Whether cloudpickle pickles ``obj`` as ``module.name`` (so a worker imports the
    module), as it decides: the module is importable and not shipped by value, and the
    object is found there under its qualified name."""
    module = obj.__module__
    if not module or codec.ships_by_value(module):
        return False
    target: Any = sys.modules.get(module)
    for part in obj.__qualname__.split("."):
        if target is None or part == "<locals>":
            return False
        target = getattr(target, part, None)
    return target is obj


def _note(module: str, modules: set[str]) -> None:
    top = module.partition(".")[0]
    if top and top not in _NEVER and top not in _STDLIB and not codec.ships_by_value(module):
        modules.add(module)


# ---------------------------------------------------------------- module -> distribution


@functools.lru_cache(maxsize=4096)
def _module_pin(module: str) -> str | None:
    """``name==version`` of the distribution that installed ``module`` (None: none did)."""
    dist = _owner(module)
    if dist is None:
        return None
    name, version = dist.metadata["Name"], dist.version
    if not name or not version:
        return None
    return f"{name}=={version}"


def _owner(module: str) -> metadata.Distribution | None:
    from importlib import metadata

    top = module.partition(".")[0]
    dist = _named(top)  # most are named as the package they install (numpy, scipy)
    if dist is not None:
        return dist
    path = getattr(sys.modules.get(module), "__file__", None) or _origin(top)
    if not path:
        return None
    path = os.path.realpath(path)
    sites = {os.path.realpath(entry or ".") for entry in sys.path}
    # the innermost sys.path entry that holds the module's file (not '' above a venv)
    for site in sorted((s for s in sites if path.startswith(s + os.sep)), key=len, reverse=True):
        owners = _site_index(site).get(top, ())
        if len(owners) > 1:  # a namespace package (google.*): whose files hold it
            rel = os.path.relpath(path, site).replace(os.sep, "/")
            owners = tuple(d for d in owners if _holds(d, rel))
        if owners:
            return metadata.Distribution.at(owners[0])
    return None


def _origin(top: str) -> str | None:
    """Where the top-level module ``top`` would be imported from (not importing it: a
    function may import it only when it runs)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    return spec.origin if spec is not None and spec.has_location else None


@functools.lru_cache(maxsize=1024)
def _named(top: str) -> metadata.Distribution | None:
    """The distribution named ``top``, if it installs the module ``top``."""
    from importlib import metadata

    try:
        dist = metadata.distribution(top)
    except metadata.PackageNotFoundError:
        return None
    return dist if top in _tops(dist) else None


def _tops(dist: metadata.Distribution) -> set[str]:
    """The top-level modules a distribution installs (top_level.txt, else its RECORD)."""
    text = dist.read_text("top_level.txt")
    if text:
        return set(text.split())
    return _record_tops(dist.read_text("RECORD") or "")


def _record_tops(record: str) -> set[str]:
    out = set()
    for line in record.splitlines():
        first = line.split(",", 1)[0].split("/", 1)[0]
        top = first.split(".", 1)[0]
        if top and not first.endswith((".dist-info", ".egg-info")):
            out.add(top)
    return out


@functools.lru_cache(maxsize=64)
def _site_index(site: str) -> dict[str, tuple[Path, ...]]:
    """top-level module -> the dist-info directories in ``site`` that install it."""
    out: dict[str, list[Path]] = {}
    try:
        names = sorted(os.listdir(site))
    except OSError:
        return {}
    for name in names:
        if not name.endswith((".dist-info", ".egg-info")):
            continue
        d = Path(site) / name
        try:
            top_level = d / "top_level.txt"
            if top_level.is_file():
                tops = set(top_level.read_text(errors="replace").split())
            else:
                tops = _record_tops((d / "RECORD").read_text(errors="replace"))
        except OSError:
            continue
        for top in tops:
            out.setdefault(top, []).append(d)
    return {k: tuple(v) for k, v in out.items()}


def _holds(dist_info: Path, rel: str) -> bool:
    try:
        record = (dist_info / "RECORD").read_text(errors="replace")
    except OSError:
        return False
    return f"\n{rel}," in f"\n{record}"


# ---------------------------------------------------------------- on a worker


def missing(requires: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """The pins of ``requires`` this interpreter does not satisfy, each with the
    version it has ("" when it has none). A local version label (``+cpu``) is not
    compared: builds of one release read each other's pickles."""
    from importlib import metadata

    out = []
    for pin in requires:
        name, _, want = pin.partition("==")
        try:
            have = metadata.version(name) or ""
        except metadata.PackageNotFoundError:
            have = ""
        except Exception as e:  # metadata that cannot be read: as if it were not there
            log.warning("cannot read the version of %s installed here: %s", name, e)
            have = ""
        if not have or _public(have) != _public(want):
            out.append((pin, re.sub(r"[^A-Za-z0-9.+!_-]", "_", have)[:100].lstrip(".+!_-")))
    return tuple(out)


def _public(version: str) -> str:
    return version.partition("+")[0].strip().lower()


# ---------------------------------------------------------------- for a provider


def waiting_requirements(backend: Backend) -> tuple[tuple[str, ...], list[str]]:
    """What workers for ``backend`` should have installed: the ``requires`` of its
    unfinished jobs, and a warning line for each conflict.

    Returns:
        ``(pins, warnings)``: ``pins`` sorted, one per distribution; where two jobs
        pin different versions of one distribution the newest job's pin wins and
        ``warnings`` says so in one line (the older job's tasks will be set aside by
        workers installed this way, and its status will say why).

    A job that cannot be read (its manifest missing, malformed or failing
    verification) is skipped; reading costs one GET per job, and a listing of
    the results of jobs that pin something and have no finished mark.
    """
    from .errors import CloudloopError
    from .job import list_jobs

    jobs = []
    for job in list_jobs(backend):
        try:
            if job.manifest.requires and not job.done():
                jobs.append(job)
        except CloudloopError as e:
            log.warning("job %s: %s (its requirements are not installed)", job.id, e)
    chosen: dict[str, tuple[str, str]] = {}  # distribution -> (pin, job id)
    warnings = []
    for job in sorted(jobs, key=lambda j: j.manifest.created, reverse=True):
        for pin in job.manifest.requires:
            key = _dist_key(pin)
            if key not in chosen:
                chosen[key] = (pin, job.id)
            elif _public(chosen[key][0]) != _public(pin):
                newer, newer_job = chosen[key]
                warnings.append(
                    f"jobs {newer_job} and {job.id} pin different versions of "
                    f"{pin.partition('==')[0]}: installing {newer} (the newer job's); "
                    f"workers will leave job {job.id}'s tasks alone (it needs {pin})"
                )
    return tuple(sorted((p for p, _ in chosen.values()), key=str.lower)), warnings


def _dist_key(pin: str) -> str:
    """A distribution's name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", pin.partition("==")[0]).lower()


__all__ = ["missing", "pins_for", "waiting_requirements"]
