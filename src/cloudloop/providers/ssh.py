"""Workers on machines you own, started over SSH.

::

    up / Executor(workers=N)            every host at once (one thread each), with the system ``ssh``
      │                                 (so ~/.ssh/config: User, Port, IdentityFile, ProxyJump, ...)
      ├─ probe     python found? same minor version as here? cores? venv already there?
      ├─ install   (only when the venv for this exact cloudloop is missing)
      │    ├─ pip install cloudloop==VERSION from the host's index (released versions only)
      │    └─ else: wheelhouse.build() here ─tar over ssh─► ~/.cloudloop/wheels/<digest>/
      │             pip install --no-index --find-links there
      ├─ start     N x ``nohup setsid python -m cloudloop worker`` (pid files, logs)
      └─ record    store: clusters/<profile>/ssh/<host>/<tag> {pids, workers, started}

    down / pool.stop()                  every host at once: SIGTERM the recorded workers'
                                        process groups, SIGKILL what is left after 10 s

On each host, under ``$HOME/.cloudloop`` (``dir`` option)::

    venvs/<digest>/          a venv with this client's exact cloudloop (and requirements;
                             with requirements = "auto", the pins of the waiting jobs)
    wheels/<digest>/         the wheels it was installed from, when the host had no index
    run/<profile>/<tag>/     <n>.pid per worker, ``backend`` (the URL, mode 0600: a Redis
                             password never appears on a command line)
    logs/<profile>-<tag>-<n>.log

A host that fails (unreachable, auth refused, no Python, an install error) is
reported in one line with the reason and the others go on. Workers only
connect out to the backend; nothing listens on the hosts but their own sshd.
"""

from __future__ import annotations

import base64
import concurrent.futures as cf
import io
import logging
import math
import platform
import re
import secrets
import shlex
import socket
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__, environment, keys
from ..backends.base import secret_from_env
from ..config import check_known
from ..errors import ConfigError, TamperedError
from ..model import WorkerOptions
from . import wheelhouse
from .base import CLUSTER_ENV, Cluster, Provider, Report, WorkerPool, worker_argv

# run on a host before its workers start: can it open the backend? (one clear line if not)
_CHECK = """import os, sys
from cloudloop.backends import open_backend
try:
    open_backend(os.environ["CLOUDLOOP_BACKEND"]).close()
except Exception as e:
    print(type(e).__name__ + ": " + str(e))
    sys.exit(1)
"""
log = logging.getLogger("cloudloop.ssh")
_SPEC = re.compile(r"^([^\s*]+)(?:\*(\d+))?$")
_ALIAS = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,252}$")  # never an option (-o...)
_EXTRAS = {"redis": ("redis",), "rediss": ("redis",), "aws": ("aws",)}


@dataclass(frozen=True)
class HostSpec:
    """``"n2*8"``: ssh alias ``n2`` with 8 workers (None: one per core)."""

    alias: str
    workers: int | None = None


def parse_hosts(value: Any) -> tuple[HostSpec, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
        raise ConfigError('ssh provider: hosts must be a list like ["n1", "n2*8"]')
    out = []
    for item in value:
        m = _SPEC.match(str(item).strip()) if isinstance(item, str) else None
        if not m or m.group(1).startswith("-") or (m.group(2) is not None and int(m.group(2)) < 1):
            raise ConfigError(
                f"ssh provider: host {item!r} is not 'alias' or 'alias*N' (N workers, N >= 1)"
            )
        out.append(HostSpec(m.group(1), int(m.group(2)) if m.group(2) else None))
    if len({h.alias for h in out}) != len(out):
        raise ConfigError("ssh provider: a host is listed twice")
    return tuple(out)


@dataclass(frozen=True)
class SshSettings:
    """The ``ssh`` provider's options from a profile (see the README)."""

    hosts: tuple[HostSpec, ...]
    python: str = "python3"
    ssh_config: str | None = None  # None: ssh's own default, ~/.ssh/config
    dir: str = ".cloudloop"  # relative to the remote $HOME
    # pip requirements installed beside cloudloop, or "auto": what the waiting jobs pin
    requirements: tuple[str, ...] | str = ()
    connect_timeout: float = 10.0
    index: bool = True  # try the hosts' package index for released versions

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> SshSettings:
        opts = dict(options)
        check_known(opts, cls.__dataclass_fields__, "ssh provider")
        if "hosts" not in opts:
            raise ConfigError('ssh provider: give hosts = ["n1", "n2*8"] (~/.ssh/config aliases)')
        opts["hosts"] = parse_hosts(opts["hosts"])
        reqs = opts.get("requirements", ())
        if reqs != "auto":
            if isinstance(reqs, str) or not all(isinstance(r, str) for r in reqs):
                raise ConfigError('ssh provider: requirements must be a list of strings or "auto"')
            opts["requirements"] = tuple(reqs)
        for k in ("python", "dir"):
            if k in opts and (not isinstance(opts[k], str) or not opts[k]):
                raise ConfigError(f"ssh provider: {k} must be a non-empty string")
        if opts.get("ssh_config") is not None:
            path = Path(str(opts["ssh_config"])).expanduser()
            if not path.is_file():
                raise ConfigError(f"ssh provider: ssh_config {str(path)!r} is not a file")
            opts["ssh_config"] = str(path)
        t = opts.get("connect_timeout", 10.0)
        if not isinstance(t, (int, float)) or t <= 0:
            raise ConfigError("ssh provider: connect_timeout must be a positive number of seconds")
        return cls(**opts)


class HostFailed(Exception):
    """One host could not be used; the message is the one-line reason."""


@dataclass
class HostReport:
    alias: str
    workers: int = 0
    pids: list[int] = field(default_factory=list)
    note: str = ""
    error: str = ""
    already: bool = False

    def __str__(self) -> str:
        if self.error:
            return f"{self.alias}: FAILED: {self.error}"
        if self.already:
            return f"{self.alias}: {self.workers} worker(s) already running (`down` stops them)"
        return f"{self.alias}: {self.workers} worker(s) started{self.note}"


def _remote_path(path: str) -> str:
    """A shell word for a path on the host (relative paths and ~/ are under $HOME)."""
    if path.startswith("~/"):
        path = path[2:]
    if path.startswith("/"):
        return shlex.quote(path)
    return '"$HOME"/' + shlex.quote(path)


def _why(stderr: str, rc: int) -> str:
    lines = [x.strip() for x in stderr.strip().splitlines() if x.strip()]
    last = lines[-1] if lines else f"exit status {rc}"
    text = stderr.lower()
    if rc == 255:
        if "permission denied" in text or "too many authentication failures" in text:
            return f"auth refused: {last}"
        if "host key verification failed" in text:
            return f"host key not trusted (ssh it once by hand, or fix known_hosts): {last}"
        if any(
            w in text
            for w in (
                "connection refused",
                "no route to host",
                "timed out",
                "could not resolve",
                "network is unreachable",
                "connection closed",
                "connection reset",
            )
        ):
            return f"unreachable: {last}"
        return f"ssh failed: {last}"
    return last


class SshHosts:
    """Runs shell scripts on the profile's hosts with the system ``ssh``."""

    def __init__(self, settings: SshSettings, profile: str):
        self.s = settings
        self.profile = profile
        self.dir = _remote_path(settings.dir)

    def ssh(
        self, alias: str, script: str, stdin: bytes = b"", timeout: float = 600.0
    ) -> subprocess.CompletedProcess:
        cmd = ["ssh"]
        if self.s.ssh_config:
            cmd += ["-F", self.s.ssh_config]
        # the script travels base64-encoded in one quoted word: whatever the login shell
        # (bash, zsh, csh, fish), it reaches sh unchanged, and stdin stays free for data
        b64 = base64.b64encode(script.encode()).decode()
        remote = f"""sh -c 'eval "$(echo {b64} | base64 -d)"'"""
        timeout_s = max(1, math.ceil(self.s.connect_timeout))
        cmd += [
            "-o",
            "BatchMode=yes",
            "-o",
            f"ConnectTimeout={timeout_s}",
            "-o",
            "ServerAliveInterval=15",
            "-T",
            alias,
            remote,
        ]
        try:
            r = subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise HostFailed(f"no answer within {timeout:g} s") from None
        except FileNotFoundError:
            raise HostFailed("the ssh client is not installed here") from None
        return subprocess.CompletedProcess(
            cmd, r.returncode, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")
        )

    def run(self, alias: str, script: str, stdin: bytes = b"", timeout: float = 600.0) -> str:
        """stdout of ``script`` on the host; HostFailed with the reason if it failed."""
        r = self.ssh(alias, script, stdin, timeout)
        if r.returncode:
            raise HostFailed(_why(r.stderr, r.returncode))
        return r.stdout

    def each(self, aliases: list[str], fn) -> dict[str, Any]:
        """``fn(alias)`` on every host at once; a HostFailed becomes that host's value."""
        out: dict[str, Any] = {}
        with cf.ThreadPoolExecutor(max(1, min(32, len(aliases)))) as pool:
            futs = {pool.submit(fn, a): a for a in aliases}
            for fut in cf.as_completed(futs):
                try:
                    out[futs[fut]] = fut.result()
                except HostFailed as e:
                    out[futs[fut]] = e
                except ConfigError:
                    raise  # the same for every host (e.g. the wheels cannot be built)
                except Exception as e:  # one host's surprise must not stop the others
                    out[futs[fut]] = HostFailed(f"{type(e).__name__}: {e}")
        return out


def _kv(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


class SshCluster(Cluster):
    """One profile's workers on its SSH hosts: bootstrap, start, record, stop."""

    provider = "ssh"

    def __init__(
        self, settings: SshSettings, backend_url: str, worker: WorkerOptions, profile: str
    ):
        super().__init__(profile, backend_url, worker)
        self.s = settings
        # the name goes into remote paths and store keys: safe characters, one per name
        self.profile = keys.cluster_dir(profile or "default")
        self.hosts = SshHosts(settings, self.profile)
        scheme = backend_url.split("://", 1)[0].lower()
        self.extras = _EXTRAS.get(scheme, ())
        self.tree = wheelhouse.source_tree()
        # a source tree's code is not on any index: it always ships as wheels
        self.released = self.tree is None
        self.auto = settings.requirements == "auto"
        self.requirements: tuple[str, ...] = () if self.auto else tuple(settings.requirements)
        self.notes: list[str] = []  # what choosing the requirements had to say
        self.digest = wheelhouse.digest(self.tree, self.extras, self.requirements)
        self._wheels: Path | None = None
        self._lock = threading.Lock()

    def _record_prefix(self, alias: str | None = None) -> str:
        return keys.ssh_starts(self.profile, alias)

    # ---------------------------------------------------------------- bootstrap

    def _probe(self, alias: str) -> dict[str, str]:
        py = shlex.quote(self.s.python)
        script = f"""
D={self.hosts.dir}
if ! command -v {py} >/dev/null 2>&1; then echo "python=missing"; exit 0; fi
echo "python=$(command -v {py})"
echo "pyver=$({py} -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>&1)"
echo "pyfull=$({py} -c 'import platform; print(platform.python_version())' 2>&1)"
echo "cores=$(getconf _NPROCESSORS_ONLN 2>/dev/null || nproc 2>/dev/null || echo 1)"
if [ -f "$D/venvs/{self.digest}/.complete" ]; then echo "venv=ready"; fi
n=0
for f in "$D/run/{self.profile}"/*/*.pid; do
  case "$f" in */ex-*) continue ;; esac
  [ -f "$f" ] && ps -o args= -p "$(cat "$f")" 2>/dev/null | grep -q 'cloudloop worker' && n=$((n + 1))
done
echo "running=$n"
"""
        info = _kv(self.hosts.run(alias, script, timeout=self.s.connect_timeout + 60))
        if info.get("python") == "missing":
            raise HostFailed(
                f"no Python: {self.s.python!r} is not on the host's PATH (set python = a path)"
            )
        here = "{}.{}".format(*sys.version_info[:2])
        if info.get("pyver") != here:
            raise HostFailed(
                f"{self.s.python} there is Python {info.get('pyver', '?')}, here {here} "
                "(pickled tasks need the same version): set python = a matching interpreter"
            )
        return info

    def wheels(self) -> Path:
        with self._lock:  # built once, however many hosts need it at the same moment
            if self._wheels is None:
                self._wheels = wheelhouse.build(self.extras, self.requirements)
            return self._wheels

    def choose_requirements(self) -> tuple[str, ...]:
        """With ``requirements = "auto"``: what the backend's unfinished jobs pin (read
        now, before hosts are set up: a new pin means a new venv); else the profile's."""
        if self.auto:
            pins, warnings = environment.waiting_requirements(self.backend)
            with self._lock:
                if pins != self.requirements:
                    self.requirements, self._wheels = pins, None
                    self.digest = wheelhouse.digest(self.tree, self.extras, pins)
            what = ", ".join(pins) if pins else "nothing (no waiting job pins a package)"
            self.notes = [f'requirements = "auto": installing {what}', *warnings]
        return self.requirements

    def _install(self, alias: str, pyfull: str = "") -> str:
        """Create the venv for this exact cloudloop on the host; returns how it was installed."""
        d, venv = self.hosts.dir, f'"$D/venvs/{self.digest}"'
        spec = "cloudloop" + (f"[{','.join(self.extras)}]" if self.extras else "")
        pkgs = " ".join(shlex.quote(p) for p in (f"{spec}=={__version__}", *self.requirements))
        pip = f"{venv}/bin/python -m pip install -q --disable-pip-version-check"
        head = f"""set -e
D={d}
mkdir -p "$D/venvs"
rm -rf {venv}
{shlex.quote(self.s.python)} -m venv {venv} 2>&1 || {{ echo "venv_failed"; exit 3; }}
"""
        here = f'"$D/wheels/{self.digest}"'
        # after a failed index attempt the venv is there already: keep it
        unpack = f"""set -e
D={d}
mkdir -p {here}
tar -xzf - -C {here}
if [ ! -x {venv}/bin/python ]; then
  {shlex.quote(self.s.python)} -m venv {venv} 2>&1 || {{ echo "venv_failed"; exit 3; }}
fi
"""
        done = f'touch {venv}/.complete; echo "installed"\n'
        if self.released and self.s.index:
            r = self.hosts.ssh(alias, head + f"{pip} --timeout 15 --retries 1 {pkgs} 2>&1\n" + done)
            if r.returncode == 0:
                return "from the package index"
            if r.returncode == 255:
                raise HostFailed(_why(r.stderr, 255))
            if "venv_failed" in r.stdout:
                raise HostFailed(f"could not create a venv: {_tail(r.stdout)}")
        wheels = self.wheels()
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for whl in wheelhouse.wheels(wheels):
                tar.add(whl, arcname=whl.name)
        script = unpack + f"{pip} --no-index --find-links {here} {pkgs} 2>&1\n" + done
        r = self.hosts.ssh(alias, script, buf.getvalue())
        if r.returncode == 255:
            raise HostFailed(_why(r.stderr, 255))
        if r.returncode:
            what = "create a venv" if "venv_failed" in r.stdout else "install cloudloop"
            hint = ""
            here_py = platform.python_version()
            if "No matching distribution" in r.stdout and pyfull and pyfull != here_py:
                hint = (
                    f" (the wheels were chosen for Python {here_py} here, the host has "
                    f"{pyfull}: set python = a {here_py} interpreter there, or let the "
                    "host reach a package index)"
                )
            raise HostFailed(f"could not {what}: {_tail(r.stdout or r.stderr)}{hint}")
        return "from wheels copied over"

    # ---------------------------------------------------------------- start / stop

    def _start_script(self, alias: str, n: int, tag: str) -> str:
        # detached on purpose: they outlive the ssh session that starts them
        args = worker_argv(self.worker.replace(exit_when_orphaned=False))
        argv = " ".join(shlex.quote(a) for a in args)
        run = f'"$D/run/{self.profile}/{tag}"'
        log = f'"$D/logs/{self.profile}-{tag}-$i.log"'
        # the workers `up` starts carry the cluster's name into their heartbeats (not a client's)
        cluster = "" if tag.startswith("ex-") else f"{CLUSTER_ENV}={shlex.quote(self.name)} "
        return f"""set -e
D={self.hosts.dir}
mkdir -p {run} "$D/logs"
umask 077
IFS= read -r url
IFS= read -r secret || true
printf '%s' "$url" > {run}/backend
if [ -n "$secret" ]; then printf '%s' "$secret" > {run}/secret; export CLOUDLOOP_SECRET_FILE={run}/secret; fi
: > {run}/empty.toml
cd "$D"
export CLOUDLOOP_CONFIG={run}/empty.toml CLOUDLOOP_PROFILE=
if ! err=$(CLOUDLOOP_BACKEND="$(cat {run}/backend)" "$D/venvs/{self.digest}/bin/python" \\
           -c {shlex.quote(_CHECK)} 2>&1); then
  rm -rf {run}
  echo "backend_error=$(echo "$err" | tr '\\n' ' ')"
  exit 0
fi
i=0
while [ $i -lt {n} ]; do
  i=$((i + 1))
  CLOUDLOOP_BACKEND="$(cat {run}/backend)" \\
  CLOUDLOOP_HOST={shlex.quote(alias)} CLOUDLOOP_PROVIDER=ssh {cluster}\\
    nohup setsid "$D/venvs/{self.digest}/bin/python" -m cloudloop {argv} \\
    > {log} 2>&1 < /dev/null &
  echo $! > {run}/$i.pid
done
sleep 1
alive=0
for f in {run}/*.pid; do kill -0 "$(cat "$f")" 2>/dev/null && alive=$((alive + 1)); done
echo "alive=$alive"
echo "pids=$(cat {run}/*.pid | tr '\\n' ' ')"
if [ "$alive" = 0 ]; then echo "log=$(tail -n 1 "$D/logs/{self.profile}-{tag}-1.log")"; fi
"""

    def _stop_script(self, tag: str | None) -> str:
        where = f'"$D/run/{self.profile}"' + (f"/{tag}" if tag else "")
        return f"""D={self.hosts.dir}
pids=""
for f in $(find {where} -name '*.pid' 2>/dev/null); do
  p=$(cat "$f")
  if ps -o args= -p "$p" 2>/dev/null | grep -q 'cloudloop worker'; then pids="$pids $p"; fi
done
kids=""
for p in $pids; do kids="$kids $(ps -o pid= --ppid "$p" 2>/dev/null)"; done
for p in $pids; do kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null; done
n=0
alive="$pids"
while [ -n "$alive" ] && [ $n -lt 100 ]; do
  sleep 0.1; n=$((n + 1)); left=""
  for p in $alive; do kill -0 "$p" 2>/dev/null && left="$left $p"; done
  alive="$left"
done
for p in $alive $kids; do kill -KILL -- "-$p" 2>/dev/null || kill -KILL "$p" 2>/dev/null; done
rm -rf {where}
echo "stopped=$(echo $pids | wc -w)"
echo "killed=$(echo $alive | wc -w)"
"""

    def _up_host(self, spec: HostSpec, n: int | None, tag: str) -> HostReport:
        info = self._probe(spec.alias)
        running = int(info.get("running") or 0)
        if running and not tag.startswith("ex-"):  # `up` twice does not double the workers
            return HostReport(spec.alias, running, already=True)
        note = ""
        if info.get("venv") != "ready":
            note = f" (cloudloop {__version__} installed {self._install(spec.alias, info.get('pyfull', ''))})"
        count = n if n is not None else spec.workers or max(1, int(info.get("cores") or 1))
        # the URL (it may hold a password) and a key kept outside the store travel on
        # stdin into files only this user can read, never on a command line
        outside = secret_from_env()
        stdin = f"{self.url}\n{outside.hex() if outside else ''}\n".encode()
        out = _kv(self.hosts.run(spec.alias, self._start_script(spec.alias, count, tag), stdin))
        if "backend_error" in out:
            raise HostFailed(f"cannot use the backend from there: {out['backend_error'].strip()}")
        pids = [int(p) for p in out.get("pids", "").split()]
        if int(out.get("alive", "0")) == 0:
            raise HostFailed(f"workers exited at start: {out.get('log', '').strip() or '?'}")
        report = HostReport(spec.alias, len(pids), pids, note)
        record = {
            "host": spec.alias,
            "tag": tag,
            "pids": pids,
            "workers": len(pids),
            "started": time.time(),
            "by": socket.gethostname(),
        }
        self.backend.put_record(self._record_prefix(spec.alias) + tag, record)
        return report

    def up(self, n: int | None = None) -> Report:
        """Workers on every host (``n`` spread over them, else each host's own count)."""
        reports = self.start_workers(total=n)
        ok = [r for r in reports if not r.error]
        lines = [*self.notes, *(str(r) for r in reports)]
        lines.append(
            f"{sum(r.workers for r in ok)} worker(s) on {len(ok)} of {len(reports)} "
            f"host(s) (`cloudloop down --profile {self.name}` stops them)"
        )
        return Report((*lines, *self._paused_note()), ok=bool(ok))

    def down(self, purge: bool = False) -> Report:
        lines = self.stop()
        if purge:
            lines.append(
                "--purge: the backend's data stays where it is (only workers were started)"
            )
        return Report(tuple(lines), ok=not any("FAILED" in line for line in lines))

    def start_workers(self, total: int | None = None, tag: str | None = None) -> list[HostReport]:
        """Bootstrap every host and start workers (``total`` spread over hosts, else per spec)."""
        tag = tag or time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)
        shares = _shares([h.workers for h in self.s.hosts], total)
        specs = {h.alias: (h, k) for h, k in zip(self.s.hosts, shares)}
        if total is not None:
            specs = {a: v for a, v in specs.items() if v[1]}
        _ = self.backend.store  # a wrong URL fails here, once, not once per host
        self.choose_requirements()
        got = self.hosts.each(list(specs), lambda a: self._up_host(specs[a][0], specs[a][1], tag))
        out = []
        for alias in specs:
            r = got[alias]
            out.append(r if isinstance(r, HostReport) else HostReport(alias, error=str(r)))
        return out

    def stop(self, tag: str | None = None, aliases: list[str] | None = None) -> list[str]:
        """Stop this profile's workers (one start's ``tag``, else all); one line per host."""
        records: dict[str, list[str]] = {}
        for key in self.backend.store.list(self._record_prefix()):
            alias, rec_tag = key.rsplit("/", 2)[-2:]
            if tag is None or rec_tag == tag:
                real = self._recorded_host(key, alias)
                if real is not None:
                    records.setdefault(real, []).append(key)
        targets = aliases if aliases is not None else [h.alias for h in self.s.hosts]
        targets = list(dict.fromkeys([*targets, *records]))
        got = self.hosts.each(
            targets, lambda a: _kv(self.hosts.run(a, self._stop_script(tag), timeout=60))
        )
        lines = []
        for alias in targets:
            r = got[alias]
            if isinstance(r, HostFailed):
                lines.append(f"{alias}: FAILED: {r}")
                continue
            for key in records.get(alias, []):
                self.backend.store.delete(key)
            killed = int(r.get("killed", 0))
            extra = f" ({killed} did not stop in 10 s and were killed)" if killed else ""
            lines.append(f"{alias}: stopped {r.get('stopped', 0)} worker(s){extra}")
        return lines

    def _recorded_host(self, key: str, alias: str) -> str | None:
        """The host a start record names, if the record verifies and names a host
        this profile could have started workers on (a record decides where `down`
        connects: a forged one must not send it anywhere)."""
        try:
            rec = self.backend.get_record(key)
        except TamperedError as e:
            log.warning("ignoring %s: %s", key, e)
            return None
        host = rec.get("host") if isinstance(rec, dict) else alias
        known = {h.alias for h in self.s.hosts}
        if isinstance(host, str) and (host in known or _ALIAS.match(host)):
            return host
        log.warning("ignoring %s: it names no usable host", key)
        return None

    def alive(self, tag: str, aliases: list[str]) -> int:
        script = f"""D={self.hosts.dir}
n=0
for f in "$D/run/{self.profile}/{tag}"/*.pid; do
  [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null && n=$((n + 1))
done
echo "alive=$n"
"""
        got = self.hosts.each(aliases, lambda a: _kv(self.hosts.run(a, script, timeout=60)))
        return sum(int(v.get("alive", 0)) for v in got.values() if isinstance(v, dict))


def _tail(text: str, n: int = 1) -> str:
    lines = [x.strip() for x in text.strip().splitlines() if x.strip()]
    return " | ".join(lines[-n:]) if lines else "(no output)"


def _shares(capacity: list[int | None], total: int | None) -> list[int | None]:
    """``total`` workers over hosts in proportion to their ``*N`` (unknown counts as 1)."""
    if total is None:
        return list(capacity)
    weights = [c or 1 for c in capacity]
    out = [total * w // sum(weights) for w in weights]
    for i in sorted(range(len(out)), key=lambda i: -weights[i])[: total - sum(out)]:
        out[i] += 1
    return list[int | None](out)


class SshPool(WorkerPool):
    """Workers one client started on the hosts; ``stop`` ends exactly those."""

    def __init__(self, cluster: SshCluster, tag: str, reports: list[HostReport]):
        self.cluster, self.tag, self.reports = cluster, tag, reports
        self.aliases = [r.alias for r in reports if not r.error]
        self._stopped = False

    def alive(self) -> int:
        return self.cluster.alive(self.tag, self.aliases) if self.aliases else 0

    def stop(self, timeout: float = 10.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self.aliases:
            for line in self.cluster.stop(self.tag, self.aliases):
                if "FAILED" in line:
                    print(f"cloudloop ssh: {line}", file=sys.stderr)


class SshProvider(Provider):
    name = "ssh"

    def __init__(self, options: dict[str, Any] | None = None, profile: str = ""):
        super().__init__(options, profile)
        self.settings = SshSettings.from_options(self.options)

    def cluster(self, backend_url: str, worker: WorkerOptions) -> SshCluster:
        return SshCluster(self.settings, backend_url, worker, self.profile or "default")

    def start(self, backend_url: str, n: int, worker: WorkerOptions) -> SshPool:
        """Start ``n`` workers spread over the hosts; failed hosts are reported on stderr."""
        cluster = self.cluster(backend_url, worker)
        tag = "ex-" + time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)
        reports = cluster.start_workers(total=n, tag=tag)
        for line in cluster.notes[1:]:  # what "auto" warns of (the first line: what it chose)
            print(f"cloudloop ssh: {line}", file=sys.stderr)
        for r in reports:
            if r.error:
                print(f"cloudloop ssh: {r}", file=sys.stderr)
        if all(r.error for r in reports):
            raise ConfigError(
                "ssh provider: no host could start workers:\n" + "\n".join(str(r) for r in reports)
            )
        return SshPool(cluster, tag, reports)


__all__ = ["HostSpec", "SshCluster", "SshPool", "SshProvider", "SshSettings", "parse_hosts"]
