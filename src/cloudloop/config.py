"""Profiles and settings: where a job runs is decided here, never in the loop.

``cloudloop.toml`` (looked up in ``$CLOUDLOOP_CONFIG``, then the current
directory and its parents up to the home directory or the repository root,
then ``~/.config/cloudloop/``; see :func:`find_config_file`)::

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

import logging
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .model import JOB_OPTION_NAMES, WORKER_OPTION_NAMES, JobOptions, WorkerOptions

log = logging.getLogger("cloudloop")

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
    """Seconds from ``90``, ``"90s"``, ``"10m"``, ``"1.5h"``, ``"2d"`` (None stays None).

    Any finite number >= 0; whether zero makes sense is the caller's to say.
    """
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-z]*)\s*", str(value).lower())
        if not m or m.group(2) not in _UNITS_S:
            raise ConfigError(
                f"{what} {value!r} is not a duration; use e.g. 30, '30s', '10m', '2h'"
            )
        seconds = float(m.group(1)) * _UNITS_S[m.group(2)]
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigError(f"{what} must be a duration >= 0 such as 30 or '10m', not {value!r}")
    return seconds


def parse_size(value: Any, what: str = "size") -> int | None:
    """Bytes from ``1024``, ``"512MB"``, ``"2GiB"``, ``"64M"`` (None stays None)."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ConfigError(f"{what} must be a size such as '512MB', not {value!r}")
        size = int(value)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-z]*)\s*", str(value).lower())
        if not m or m.group(2) not in _UNITS_B:
            raise ConfigError(f"{what} {value!r} is not a size; use e.g. '512MB', '2GiB', 10**9")
        size = int(float(m.group(1)) * _UNITS_B[m.group(2)])
    if size <= 0:
        raise ConfigError(f"{what} must be more than 0 bytes, not {value!r}")
    return size


def check_known(
    given: Iterable[str], known: Iterable[str], what: str = "", kind: str = "option"
) -> None:
    """Refuse names a user gave that are not ``known``, listing the known ones.

    The one wording for this everywhere names come from a user (profile and
    provider options, keyword arguments, URL parameters)::

        ec2 provider: unknown option(s) ['instance_type']; known: ['cluster', ...]

    Args:
        given: the names given.
        known: the names accepted.
        what: who is refusing, first on the line ("ec2 provider", "backend 'x'").
        kind: what the names are ("option", "job option", "parameter").

    Raises:
        ConfigError: if any name is not known.
    """
    unknown = sorted(set(given) - set(known))
    if unknown:
        where = f"{what}: " if what else ""
        raise ConfigError(f"{where}unknown {kind}(s) {unknown}; known: {sorted(known)}")


def _whole(value: Any, what: str, least: int) -> int:
    if type(value) is not int or value < least:
        raise ConfigError(f"{what} must be a whole number >= {least}, not {value!r}")
    return value


def check_workers(value: Any, what: str = "workers") -> int | None:
    """A worker count: None (the default) or a whole number >= 0 (0: start none)."""
    return None if value is None else _whole(value, what, 0)


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _job_value(k: str, v: Any) -> Any:
    if k == "timeout":
        v = parse_duration(v, "timeout")
        if v == 0:
            raise ConfigError("timeout must be more than 0 s (None: no limit)")
        return v
    if k == "memory":
        return parse_size(v, "memory")
    if k == "retries":
        return _whole(v, k, 0)
    if k == "max_deliveries":
        return _whole(v, k, 1)
    if k == "chunksize":
        return None if v is None else _whole(v, k, 1)
    if k == "seed":
        return None if v is None else _whole(v, k, 0)
    if k == "seed_globals":
        if not isinstance(v, bool):
            raise ConfigError(f"seed_globals must be true or false, not {v!r}")
        return v
    if k == "cache":
        if v not in (True, False, "all") or type(v) not in (bool, str):
            raise ConfigError(f'cache must be true, false or "all", not {v!r}')
        return v
    if k == "cache_version":
        if v is not None and (type(v) not in (str, int) or len(str(v)) > 200):
            raise ConfigError(f"cache_version must be text or a number, not {v!r:.80}")
        return None if v is None else str(v)
    if k == "retry_memory":
        ok = v is None or (type(v) in (int, float) and math.isfinite(v) and v > 1)
        if not ok:
            raise ConfigError(f"retry_memory must be a factor above 1 (e.g. 2.0), not {v!r}")
        return None if v is None else float(v)
    if k == "name":
        if v is not None and not isinstance(v, str):
            raise ConfigError(f"name must be text, not {v!r}")
        return v
    if k == "env":
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise ConfigError(f"env must be a table of NAME = value, not {v!r}")
        bad = [a for a in v if not isinstance(a, str) or not _ENV_NAME.match(a)]
        if bad:
            raise ConfigError(f"env: {bad[0]!r} is not an environment variable name")
        return {a: str(b) for a, b in v.items()}
    return v


def job_options(base: JobOptions | None = None, **values: Any) -> JobOptions:
    """Build JobOptions from user values, converting units and checking each one."""
    check_known(values, JOB_OPTION_NAMES, kind="job option")
    changes = {k: _job_value(k, v) for k, v in values.items()}
    return (base or JobOptions()).replace(**changes)


_MORE_THAN_ZERO = ("lease", "heartbeat", "split_after")


def _worker_value(k: str, v: Any) -> Any:
    default = WorkerOptions.__dataclass_fields__[k].default
    if v is None and default is not None:  # no flag can say "unset": the worker needs one
        raise ConfigError(f"{k} must have a value (default {default!r}), not None")
    if k == "exit_when_orphaned":
        if not isinstance(v, bool):
            raise ConfigError(f"{k} must be true or false, not {v!r}")
        return v
    if k == "metadata_url":
        if v is not None and not (isinstance(v, str) and v.startswith(("http://", "https://"))):
            raise ConfigError(f"metadata_url must be an http:// URL, not {v!r}")
        return v
    if k == "worker_memory":
        return None if v is None else parse_size(v, "worker_memory")
    if k == "stop_at":
        if v is not None and (
            isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
        ):
            raise ConfigError(f"stop_at must be a unix time, not {v!r}")
        return v
    seconds = parse_duration(v, k)
    if k in _MORE_THAN_ZERO and seconds == 0:
        raise ConfigError(f"{k} must be more than 0 s, not {v!r}")
    return seconds


def worker_options(base: WorkerOptions | None = None, **values: Any) -> WorkerOptions:
    check_known(values, WORKER_OPTION_NAMES, kind="worker option")
    out = (base or WorkerOptions()).replace(**{k: _worker_value(k, v) for k, v in values.items()})
    if out.lease < 1.0:
        raise ConfigError(
            f"lease must be at least 1 s (a worker extends it every third of it), not {out.lease:g}"
        )
    return out


def auto_requirements(value: Any) -> bool:
    """A job's ``requirements`` option: ``"auto"`` (it records the pins of what its
    function imports, and workers that lack one leave it alone) or None (it does not)."""
    if value is None or value == "auto":
        return value == "auto"
    raise ConfigError(
        f'requirements for a job is "auto" (pin what its function imports) or None, not '
        f"{value!r}; a list of packages to install belongs in the profile of a provider "
        "that installs them (ssh, ec2)"
    )


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

    @property
    def auto_requirements(self) -> bool:
        """``requirements = "auto"``: its jobs record the pins of what their functions
        import, and its provider installs those of the waiting jobs on the workers it
        starts (see :mod:`cloudloop.environment`)."""
        return self.provider_options.get("requirements") == "auto"


def find_config_file(start: Path | None = None) -> Path | None:
    """The ``cloudloop.toml`` to read, or None.

    ``$CLOUDLOOP_CONFIG`` if set; else the nearest one from the working
    directory up to the home directory or the repository root (a directory
    holding ``.git``), whichever comes first, looking only in directories of
    this user that nobody else can write to (never ``/tmp`` or another user's
    directory, where anyone could leave a file naming a backend); else
    ``~/.config/cloudloop/cloudloop.toml``. A file that others can write to is
    refused: it decides what runs where.
    """
    env = os.environ.get("CLOUDLOOP_CONFIG")
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise ConfigError(f"CLOUDLOOP_CONFIG={env} does not name a file")
        return _checked(path)
    home = Path.home().resolve()
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if not _private_to_us(d):
            if (d / "cloudloop.toml").is_file():
                log.warning(
                    "ignoring %s: %s is not a directory only you can write to",
                    d / "cloudloop.toml",
                    d,
                )
            break
        if (d / "cloudloop.toml").is_file():
            return _checked(d / "cloudloop.toml")
        if d == home or (d / ".git").exists():
            break
    path = home / ".config" / "cloudloop" / "cloudloop.toml"
    return _checked(path) if path.is_file() else None


def _private_to_us(d: Path) -> bool:
    try:
        st = d.stat()
    except OSError:
        return False
    return st.st_uid in (os.getuid(), 0) and not st.st_mode & 0o022


def _checked(path: Path) -> Path:
    st = path.stat()
    if st.st_uid not in (os.getuid(), 0):
        raise ConfigError(
            f"{path} belongs to another user (uid {st.st_uid}); cloudloop reads only "
            "your own cloudloop.toml: move it, or set CLOUDLOOP_CONFIG to your file"
        )
    if st.st_mode & 0o022:
        raise ConfigError(
            f"{path} can be changed by other users (mode {st.st_mode & 0o777:o}), and it "
            f"decides what runs where; run: chmod go-w {path}"
        )
    return path


def _read_config(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:  # imported here: most processes (a worker, a task runner) have no file to read
        import tomllib
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None


def _profile_from_table(name: str, table: dict[str, Any], source: str) -> Profile:
    if not isinstance(table, dict):
        raise ConfigError(f"profile {name!r} in {source} must be a table ([profiles.{name}])")
    table = dict(table)
    backend = table.pop("backend", None) or default_backend()
    provider = table.pop("provider", "local")
    workers = table.pop("workers", None)
    for what, value in (("backend", backend), ("provider", provider)):
        if not isinstance(value, str):
            raise ConfigError(
                f"profile {name!r} in {source}: {what} must be text "
                f'(e.g. backend = "sqlite:///path"), not {value!r}'
            )
    job = {k: table.pop(k) for k in list(table) if k in JOB_OPTION_NAMES}
    wrk = {k: table.pop(k) for k in list(table) if k in WORKER_OPTION_NAMES}
    try:
        return Profile(
            name=name,
            backend=backend,
            provider=provider,
            workers=check_workers(workers),
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
