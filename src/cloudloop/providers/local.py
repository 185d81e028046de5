"""Workers as subprocesses of this machine (the default provider).

Each worker is ``python -m cloudloop worker`` in its own session, started in
the client's working directory with the client's environment. A worker that
dies (killed, out of memory) is replaced, as a Dask nanny would; one that
keeps dying at start-up is reported with the tail of its log instead.
Workers started for a client exit by themselves a few seconds after they run
out of work once that client is gone, so killing the client neither stops the
job nor leaves processes behind for long.

``cloudloop up`` on a local profile starts :class:`LocalCluster` workers
instead: the same command and thread caps, detached, kept until ``cloudloop
down`` (or their ``idle_exit``), which stops that profile's workers only.
"""

from __future__ import annotations

import logging
import os
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from .. import keys
from ..config import check_known
from ..errors import ConfigError
from ..model import WorkerOptions
from .base import CLUSTER_ENV, Cluster, Provider, Report, WorkerPool, worker_argv

log = logging.getLogger("cloudloop.local")
_CRASH_LOOP = 5  # consecutive deaths within _QUICK seconds of start
_QUICK = 3.0


def worker_command(worker: WorkerOptions) -> list[str]:
    """``python -m cloudloop worker`` with these settings (see :func:`worker_argv`)."""
    return [sys.executable, "-m", "cloudloop", *worker_argv(worker)]


def private_dir(path: Path) -> Path:
    """``path`` as a directory only its owner can enter (made if missing). In a
    shared directory such as /tmp, a name someone else made first (or a symbolic
    link) is refused rather than used: worker logs hold the tasks' output."""
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise ConfigError(
            f"{path} exists but is not a directory of yours; remove it, or set TMPDIR "
            "to a private directory"
        )
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


class LocalPool(WorkerPool):
    """N worker processes, kept at N until stopped."""

    def __init__(self, cmd: list[str], env: dict[str, str], n: int, log_dir: Path):
        self.cmd, self.env, self.log_dir = cmd, env, log_dir
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self.procs: list[subprocess.Popen] = []
        self._started: dict[int, float] = {}
        self._logs: dict[int, Path] = {}
        self.restarts = 0
        self._quick_deaths = 0
        self.failed: str | None = None
        for _ in range(n):
            self.procs.append(self._spawn())
        self._monitor = threading.Thread(
            target=self._watch, name="cloudloop-local-pool", daemon=True
        )
        self._monitor.start()

    def _spawn(self) -> subprocess.Popen:
        path = self.log_dir / f"worker-{os.getpid()}-{time.time_ns()}.log"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        with open(fd, "ab") as logf:
            p = subprocess.Popen(
                self.cmd,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=logf,
                start_new_session=True,
                env=self.env,
            )
        self._started[p.pid], self._logs[p.pid] = time.monotonic(), path
        return p

    def _watch(self) -> None:
        while not self._stopping.wait(1.0):
            with self._lock:
                for n, p in enumerate(self.procs):
                    if p.poll() is None or self._stopping.is_set():
                        continue
                    quick = time.monotonic() - self._started[p.pid] < _QUICK
                    self._quick_deaths = self._quick_deaths + 1 if quick else 0
                    tail = self._tail(p.pid)
                    if self._quick_deaths >= _CRASH_LOOP:
                        self.failed = f"local workers keep dying at start-up; last log:\n{tail}"
                        log.error("%s", self.failed)
                        return
                    log.warning(
                        "local worker %d exited with %s; starting another", p.pid, p.returncode
                    )
                    self.procs[n] = self._spawn()
                    self.restarts += 1

    def _tail(self, pid: int, n: int = 2000) -> str:
        try:
            return self._logs[pid].read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""

    @property
    def pids(self) -> list[int]:
        with self._lock:
            return [p.pid for p in self.procs]

    def alive(self) -> int:
        with self._lock:
            return sum(1 for p in self.procs if p.poll() is None)

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        with self._lock:
            procs = list(self.procs)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.send_signal(signal.SIGUSR1)  # its log shows where it was stuck
                time.sleep(0.5)
                log.warning(
                    "local worker %d ignored SIGTERM; killing it:\n%s",
                    p.pid,
                    self._tail(p.pid, 4000),
                )
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


class LocalProvider(Provider):
    name = "local"

    def __init__(self, options: dict[str, Any] | None = None, profile: str = ""):
        super().__init__(options, profile)
        check_known(self.options, {"python"}, "local provider")

    def default_workers(self) -> int:
        return os.cpu_count() or 1  # one per core, started and stopped with the client

    def command(self, worker: WorkerOptions, n: int, cluster: str | None = None):
        """The command and environment of ``n`` workers (of ``cluster``, if one started them)."""
        cmd = worker_command(worker)
        if "python" in self.options:
            cmd[0] = str(self.options["python"])
        env = {**os.environ, "CLOUDLOOP_PROVIDER": "local"}
        env.pop(CLUSTER_ENV, None)  # a task that starts workers: they are not its worker's
        if cluster is not None:
            env[CLUSTER_ENV] = cluster
        # n workers each running numerical code with a thread per core would
        # oversubscribe the machine; share the cores unless the user chose.
        threads = str(max(1, (os.cpu_count() or 1) // max(n, 1)))
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(var, threads)
        return cmd, env

    def start(self, backend_url: str, n: int, worker: WorkerOptions) -> LocalPool:
        cmd, env = self.command(worker, n)
        cmd += ["--parent-pid", str(os.getpid())]
        env["CLOUDLOOP_BACKEND"] = backend_url
        return LocalPool(cmd, env, n, _log_dir())

    def cluster(self, backend_url: str, worker: WorkerOptions) -> LocalCluster:
        return LocalCluster(self, backend_url, worker, self.profile or "local")


def _log_dir() -> Path:
    log_dir = _private_root() / "workers"
    log_dir.mkdir(mode=0o700, exist_ok=True)
    return log_dir


def _private_root() -> Path:
    return private_dir(Path(tempfile.gettempdir()) / f"cloudloop-{os.getuid()}")


def _started_at(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot; None if there is none):
    with its pid, what tells it from a later process that got the same pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat_line = f.read()
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may hold spaces or ')'
    fields = stat_line[stat_line.rindex(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


class LocalCluster(Cluster):
    """Detached workers on this machine for one profile (``cloudloop up``).

    They outlive the command that starts them and stop with ``cloudloop
    down`` (or their ``idle_exit``). Each start leaves a file per worker under
    ``$TMPDIR/cloudloop-<uid>/clusters/<name>/`` naming its pid and the moment
    it started, so ``down`` stops exactly this profile's workers, not a
    process that later got the same pid, nor workers of other profiles or
    clients on the same machine.
    """

    provider = "local"

    def __init__(self, owner: LocalProvider, backend_url: str, worker: WorkerOptions, name: str):
        super().__init__(name, backend_url, worker)
        self.owner = owner

    def _run_dir(self) -> Path:
        clusters = _private_root() / "clusters"
        clusters.mkdir(mode=0o700, exist_ok=True)
        return private_dir(clusters / keys.cluster_dir(self.name))

    def up(self, n: int | None = None) -> Report:
        n = n if n is not None else self.owner.default_workers()
        if n < 1:
            return Report((f"no workers to start (-n {n})",), ok=False)
        backend = self.backend  # a wrong URL fails here, before anything starts
        cmd, env = self.owner.command(self.worker, n, cluster=self.name)
        env["CLOUDLOOP_BACKEND"] = backend.connect_url
        run, logs = self._run_dir(), _log_dir()
        for i in range(n):
            path = logs / f"{keys.safe_name(self.name)}-{time.time_ns()}.log"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
            try:
                with open(fd, "ab") as logf:
                    p = subprocess.Popen(
                        cmd,
                        stdin=subprocess.DEVNULL,
                        stdout=logf,
                        stderr=logf,
                        start_new_session=True,
                        env=env,
                    )
            except OSError as e:  # e.g. the profile's python is not there
                why = f"cannot start {cmd[0]}: {e.strerror or e}"
                return Report((f"{why} ({i} of {n} local workers started)",), ok=i > 0)
            (run / str(p.pid)).write_text(f"{_started_at(p.pid) or ''}\n")
        started = (
            f"started {n} local workers for {backend.url} "
            f"(`cloudloop down --profile {self.name}` stops them)"
        )
        return Report((started, *self._paused_note()))

    def _started(self) -> list[tuple[Path, int]]:
        """(pid file, pid) of this cluster's workers still running (stale files removed)."""
        out = []
        for path in sorted(self._run_dir().iterdir()):
            try:
                pid, started = int(path.name), path.read_text().strip()
            except (ValueError, OSError):
                continue
            if started and _started_at(pid) == started and _is_worker(pid):
                out.append((path, pid))
            else:
                path.unlink(missing_ok=True)
        return out

    def down(self, purge: bool = False) -> Report:
        procs, n = self._started(), 0
        for path, pid in procs:
            try:
                os.kill(pid, signal.SIGTERM)
                n += 1
            except ProcessLookupError:
                pass
            path.unlink(missing_ok=True)
        lines = [f"asked {n} worker(s) of cluster {self.name!r} on this machine to stop"]
        if purge:
            lines.append(
                "--purge: the backend's data stays where it is (only workers were started)"
            )
        return Report(tuple(lines))


def _is_worker(pid: int) -> bool:
    """The process is a ``cloudloop worker`` (checked before it is signalled)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return b"cloudloop" in b" ".join(argv) and b"worker" in argv
