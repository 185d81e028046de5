"""Profiles and settings: where a job runs is decided here, never in the loop.

``cloudloop.toml`` (looked up in ``$CLOUDLOOP_CONFIG``, then the current
directory and its parents, then ``~/.config/cloudloop/``)::

    default_profile = "local"          # optional

    [profiles.lab]
    backend  = "sqlite:///scratch/cl"  # where the job lives
    provider = "local"                 # what starts workers
    workers  = 8
    retries  = 1                       # job defaults: retries, timeout, memory, ...
    lease    = "60s"                   # worker settings: lease, idle_exit, ...

The profile is chosen by ``profile=``, else ``$CLOUDLOOP_PROFILE``, else
``default_profile``, else the built-in ``local`` profile: an SQLite queue and a
file store under ``./.cloudloop`` with one local worker per core.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .model import JOB_OPTION_NAMES, WORKER_OPTION_NAMES, JobOptions, WorkerOptions

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

_UNITS_S = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "ms": 0.001}
_UNITS_B = {
    "": 1,
    "b": 1,
    "k": 1e3,
    "kb": 1e3,
    "kib": 1024,
    "m": 1e6,
    "mb": 1e6,
    "mib": 1024**2,
    "g": 1e9,
    "gb": 1e9,
    "gib": 1024**3,
    "t": 1e12,
    "tb": 1e12,
    "tib": 1024**4,
}


def parse_duration(value: Any, what: str = "duration") -> float | None:
    """Seconds from ``90``, ``"90s"``, ``"10m"``, ``"1.5h"``, ``"2d"`` (None stays None)."""
    if value is None or isinstance(value, (int, float)) and not isinstance(value, bool):
        return None if value is None else float(value)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-z]*)\s*", str(value).lower())
    if not m or m.group(2) not in _UNITS_S:
        raise ConfigError(f"{what} {value!r} is not a duration; use e.g. 30, '30s', '10m', '2h'")
    return float(m.group(1)) * _UNITS_S[m.group(2)]


def parse_size(value: Any, what: str = "size") -> int | None:
    """Bytes from ``1024``, ``"512MB"``, ``"2GiB"``, ``"64M"`` (None stays None)."""
    if value is None or isinstance(value, int) and not isinstance(value, bool):
        return value
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-z]*)\s*", str(value).lower())
    if not m or m.group(2) not in _UNITS_B:
        raise ConfigError(f"{what} {value!r} is not a size; use e.g. '512MB', '2GiB', 10**9")
    return int(float(m.group(1)) * _UNITS_B[m.group(2)])


def job_options(base: JobOptions | None = None, **values: Any) -> JobOptions:
    """Build JobOptions from user values, converting units and checking names."""
    unknown = set(values) - JOB_OPTION_NAMES
    if unknown:
        raise ConfigError(
            f"unknown job option(s) {sorted(unknown)}; known: {sorted(JOB_OPTION_NAMES)}"
        )
    changes: dict[str, Any] = {}
    for k, v in values.items():
        if k == "timeout":
            v = parse_duration(v, "timeout")
        elif k == "memory":
            v = parse_size(v, "memory")
        elif k in ("retries", "max_deliveries"):
            if not isinstance(v, int) or v < 0:
                raise ConfigError(f"{k} must be a whole number >= 0, not {v!r}")
        elif k == "chunksize" and v is not None and (not isinstance(v, int) or v < 1):
            raise ConfigError(f"chunksize must be a whole number >= 1, not {v!r}")
        elif k == "seed_globals" and not isinstance(v, bool):
            raise ConfigError(f"seed_globals must be true or false, not {v!r}")
        elif k == "env":
            v = {str(a): str(b) for a, b in (v or {}).items()}
        changes[k] = v
    return (base or JobOptions()).replace(**changes)


def worker_options(base: WorkerOptions | None = None, **values: Any) -> WorkerOptions:
    unknown = set(values) - WORKER_OPTION_NAMES
    if unknown:
        raise ConfigError(
            f"unknown worker option(s) {sorted(unknown)}; known: {sorted(WORKER_OPTION_NAMES)}"
        )
    as_is = ("exit_when_orphaned", "metadata_url", "stop_at")
    changes = {k: (v if k in as_is else parse_duration(v, k)) for k, v in values.items()}
    return (base or WorkerOptions()).replace(**changes)


def default_backend() -> str:
    """``$CLOUDLOOP_BACKEND``, else an SQLite backend in ``./.cloudloop``."""
    env = os.environ.get("CLOUDLOOP_BACKEND")
    if env:
        return env
    return "sqlite://" + str(Path.cwd() / ".cloudloop")


@dataclass(frozen=True)
class Profile:
    """A named place to run: a backend URL, a provider and their settings."""

    name: str
    backend: str
    provider: str = "local"
    workers: int | None = None
    job: JobOptions = field(default_factory=JobOptions)
    worker: WorkerOptions = field(default_factory=WorkerOptions)
    provider_options: dict[str, Any] = field(default_factory=dict)
    source: str = "built-in"


def find_config_file(start: Path | None = None) -> Path | None:
    env = os.environ.get("CLOUDLOOP_CONFIG")
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise ConfigError(f"CLOUDLOOP_CONFIG={env} does not name a file")
        return path
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / "cloudloop.toml").is_file():
            return d / "cloudloop.toml"
    home = Path.home() / ".config" / "cloudloop" / "cloudloop.toml"
    return home if home.is_file() else None


def _read_config(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None


def _profile_from_table(name: str, table: dict[str, Any], source: str) -> Profile:
    table = dict(table)
    backend = table.pop("backend", None) or default_backend()
    provider = table.pop("provider", "local")
    workers = table.pop("workers", None)
    if workers is not None and (not isinstance(workers, int) or workers < 0):
        raise ConfigError(f"profile {name!r} in {source}: workers must be a whole number >= 0")
    job = {k: table.pop(k) for k in list(table) if k in JOB_OPTION_NAMES}
    wrk = {k: table.pop(k) for k in list(table) if k in WORKER_OPTION_NAMES}
    try:
        return Profile(
            name=name,
            backend=str(backend),
            provider=str(provider),
            workers=workers,
            job=job_options(**job),
            worker=worker_options(**wrk),
            provider_options=table,
            source=source,
        )
    except ConfigError as e:
        raise ConfigError(f"profile {name!r} in {source}: {e}") from None


def load_profile(name: str | None = None, config_path: Path | None = None) -> Profile:
    """Resolve a profile by name (see the module docstring for the order)."""
    path = config_path or find_config_file()
    data = _read_config(path)
    profiles = data.get("profiles", {})
    if not isinstance(profiles, dict):
        raise ConfigError(f"{path}: [profiles] must be a table of tables")
    chosen = name or os.environ.get("CLOUDLOOP_PROFILE") or data.get("default_profile")
    if not chosen or (chosen == "local" and "local" not in profiles):
        return Profile(name="local", backend=default_backend())
    if chosen not in profiles:
        where = str(path) if path else "no cloudloop.toml was found"
        known = sorted(set(profiles) | {"local"})
        raise ConfigError(f"profile {chosen!r} is not defined ({where}); known: {known}")
    return _profile_from_table(chosen, profiles[chosen], str(path))
