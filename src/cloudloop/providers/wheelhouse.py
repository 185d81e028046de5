"""Wheels of this very cloudloop and its dependencies, for machines without an index.

Workers must run the client's exact cloudloop. Machines get a directory of
wheels built here and install with ``pip install --no-index --find-links DIR``,
so they need no package index (a lab behind a firewall, an air-gapped
cluster, a private subnet): the ssh provider copies the directory over, the
ec2 provider :func:`publish` es it to the backend's store, whence instances
fetch it (bootagent.py).

A :class:`Target` is the machines' Python minor version and architecture.
For this machine's own, wheels are built by ``pip wheel`` (sdists too); for
another (an arm64 instance, another Python), cloudloop's own pure wheel is
built here and everything else is downloaded as binary wheels for that
platform (``pip download --only-binary=:all: --platform ...``).

A cloudloop installed from a source tree (``pip install -e .`` or ``pip
install .``) is built from that tree, so a development version ships as it is
on the client. Wheelhouses are cached under ``~/.cache/cloudloop/wheelhouse``
by version, extras, requirements and (for a source tree) a digest of the
source, so repeated ``up`` calls cost nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from .. import __version__, keys
from ..errors import ConfigError, TamperedError
from .bootagent import redact

if TYPE_CHECKING:
    from ..backends import Backend

# glibc manylinux tags a current Linux image accepts (Amazon Linux 2023 has glibc 2.34)
_MANYLINUX = ("manylinux_2_34", "manylinux_2_28", "manylinux_2_17", "manylinux2014",
              "manylinux2010", "manylinux1")  # fmt: skip


@dataclass(frozen=True)
class Target:
    """The machines a wheelhouse is for: their Python minor version and architecture."""

    python: str = f"{sys.version_info[0]}.{sys.version_info[1]}"
    arch: str = "x86_64"  # or "arm64"

    @classmethod
    def here(cls) -> Target:
        m = platform.machine().lower()
        return cls(arch="arm64" if m in ("aarch64", "arm64") else "x86_64")

    @property
    def native(self) -> bool:
        return self == Target.here() and sys.platform.startswith("linux")

    def pip_flags(self) -> list[str]:
        m = "aarch64" if self.arch == "arm64" else "x86_64"
        flags = ["--only-binary=:all:", "--python-version", self.python, "--implementation", "cp"]
        for tag in _MANYLINUX:
            flags += ["--platform", f"{tag}_{m}"]
        return flags


def source_tree() -> Path | None:
    """The project directory cloudloop was installed from, if it was a local tree."""
    try:
        text = metadata.distribution("cloudloop").read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        text = None
    if text:
        info = json.loads(text)
        url = info.get("url", "")
        if url.startswith("file://") and "dir_info" in info:
            path = Path(unquote(urlsplit(url).path))
            if (path / "pyproject.toml").exists():
                return path
    here = Path(__file__).resolve().parents[3]  # src/cloudloop/providers -> project
    return here if (here / "pyproject.toml").exists() and (here / "src").is_dir() else None


def digest(
    tree: Path | None,
    extras: tuple[str, ...],
    requirements: tuple[str, ...],
    target: Target | None = None,
) -> str:
    where = f"{target.python}|{target.arch}" if target else str(sys.version_info[:2])
    h = hashlib.sha256(f"{__version__}|{where}|{extras}|{requirements}".encode())
    if tree is not None:  # every file its wheel holds (the dashboard's .js and .css too)
        files = [
            p for p in (tree / "src").rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
        ]  # fmt: skip
        for path in sorted(files) + [tree / "pyproject.toml"]:
            h.update(str(path.relative_to(tree)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cloudloop" / "wheelhouse"


def build(
    extras: tuple[str, ...] = (),
    requirements: tuple[str, ...] = (),
    dest: Path | None = None,
    target: Target | None = None,
) -> Path:
    """A directory of wheels: cloudloop (with ``extras``), its dependencies, ``requirements``,
    for ``target`` (default: this machine's Python and architecture); cached by digest.

    Raises:
        ConfigError: pip could not build or fetch a wheel (its output says which).
    """
    tree = source_tree()
    if target is not None and target.native:
        target = None  # this machine's own: pip wheel, as without a target
    dest = dest or cache_root() / digest(tree, tuple(extras), tuple(requirements), target)
    done = dest / ".complete"
    if done.exists():
        return dest
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _build(tree, extras, requirements, target, tmp)
    except BaseException:  # a failure, or ^C: nothing half-made stays in the cache
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if dest.exists():
        shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def _build(
    tree: Path | None,
    extras: tuple[str, ...],
    requirements: tuple[str, ...],
    target: Target | None,
    tmp: Path,
) -> None:
    spec = str(tree) if tree else f"cloudloop=={__version__}"
    pip = [sys.executable, "-m", "pip"]
    quiet = ["--quiet", "--disable-pip-version-check"]
    if target is None:
        cmds = [
            [*pip, "wheel", *quiet, "--wheel-dir", str(tmp), _extras(spec, extras), *requirements]
        ]
    elif tree:  # cloudloop is pure: build it here, download the rest for the target
        cmds = [[*pip, "wheel", *quiet, "--no-deps", "--wheel-dir", str(tmp), spec],
                [*pip, "download", *quiet, *target.pip_flags(), "--dest", str(tmp),
                 "{own}", *requirements]]  # fmt: skip
    else:
        cmds = [[*pip, "download", *quiet, *target.pip_flags(), "--dest", str(tmp),
                 _extras(spec, extras), *requirements]]  # fmt: skip
    for cmd in cmds:
        if "{own}" in cmd:
            own = next(tmp.glob("cloudloop-*.whl"))
            cmd[cmd.index("{own}")] = _extras(str(own), extras)
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            tail = redact("\n".join((r.stderr or r.stdout).strip().splitlines()[-15:]))
            shown = ", ".join(redact(x) for x in (_extras(spec, extras), *requirements))
            raise ConfigError(f"could not build the wheels workers install from ({shown}):\n{tail}")
    (tmp / ".complete").write_text(spec + "\n")


def _extras(spec: str, extras: tuple[str, ...]) -> str:
    return spec + (f"[{','.join(extras)}]" if extras else "")


_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_PLAIN = re.compile(_NAME + r"\s*(?:\[[^\]]*\])?\s*(?:[(<>=!~;].*)?", re.S)
_BY_URL = re.compile(r"(" + _NAME + r"\s*(?:\[[^\]]*\])?)\s*@\s*\S+\s*(;.*)?", re.S)


def install_specs(requirements: tuple[str, ...]) -> tuple[str, ...]:
    """What instances ``pip install --no-index`` from the wheelhouse for ``requirements``:
    a requirement by name as it is; one by URL or path (``name @ git+https://…``) by its
    name, since the wheel built here is what they install (the URL may be out of their
    reach, and its credentials would sit in the user-data).

    Raises:
        ConfigError: a URL or path without a name (``./pkg``, ``git+https://…``).
    """
    out = []
    for req in requirements:
        req = req.strip()
        if _PLAIN.fullmatch(req):
            out.append(req)
            continue
        m = _BY_URL.fullmatch(req)
        if not m:
            raise ConfigError(
                f"requirement {redact(req)!r} names no distribution, so instances cannot "
                "install it from the wheelhouse: write it as 'NAME @ URL' (a path as "
                "'NAME @ file:///absolute/path')"
            )
        out.append(
            re.sub(r"\s+", "", m.group(1)) + (f"; {m.group(2)[1:].strip()}" if m.group(2) else "")
        )
    return tuple(out)


def wheels(path: Path) -> list[Path]:
    return sorted(path.glob("*.whl"))


def own_version(path: Path) -> str:
    """The version of the cloudloop wheel in a wheelhouse (a development tree's own)."""
    for whl in wheels(path):
        name, version = whl.name.split("-")[:2]
        if name == "cloudloop":
            return version
    raise ConfigError(f"the wheelhouse {path} holds no cloudloop wheel")


@dataclass(frozen=True)
class Published:
    """A wheelhouse in a backend's store (``wheelhouse/<digest>/``)."""

    digest: str
    install: tuple[str, ...]  # what instances pip install from it
    uploaded: int  # wheels uploaded now (0: it was there already)
    bytes: int
    seconds: float


def publish(
    backend: Backend,
    extras: tuple[str, ...] = (),
    requirements: tuple[str, ...] = (),
    target: Target | None = None,
) -> Published:
    """Build (or reuse) the wheelhouse for ``target`` and upload what the store lacks.

    The wheels go to ``wheelhouse/<digest>/files/<name>`` as they are; the
    manifest (signed: each wheel's SHA-256, and the pip specs to install) is
    written last, so a half-finished upload is never used. A wheelhouse the
    store holds already (its manifest verifies) costs one listing and one read;
    without one, every wheel is uploaded again: what an upload cut short left
    (or another client's, built from an sdist to other bytes) is not trusted.

    Raises:
        ConfigError: a requirement the wheelhouse cannot hold (:func:`install_specs`), or
            one pip could not build or fetch; nothing is uploaded then.
    """
    t0 = time.monotonic()
    specs = install_specs(tuple(requirements))
    path = build(extras, requirements, target=target)
    dig = path.name  # build's cache directory is named by its digest
    have = set(backend.store.list(keys.wheelhouse_prefix(dig)))
    spec = _extras("cloudloop", extras) + f"=={own_version(path)}"
    install = (spec, *specs)
    manifest_key = keys.wheelhouse_manifest(dig)
    if manifest_key in have:
        try:
            if isinstance(backend.get_record(manifest_key, "a wheelhouse manifest"), dict):
                return Published(dig, install, 0, 0, time.monotonic() - t0)
        except TamperedError:
            pass  # not of this backend's key: no instance would use it; written again
    files, sent, size = {}, 0, 0
    for whl in wheels(path):
        data = whl.read_bytes()
        files[whl.name] = hashlib.sha256(data).hexdigest()
        backend.store.put(keys.wheelhouse_file(dig, whl.name), data)
        sent, size = sent + 1, size + len(data)
    target = target or Target.here()
    backend.put_record(manifest_key, {"files": files, "install": list(install),
                                      "python": target.python, "arch": target.arch})  # fmt: skip
    return Published(dig, install, sent, size, time.monotonic() - t0)
