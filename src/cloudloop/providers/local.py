"""Workers as subprocesses of this machine (the default provider).

Each worker is ``python -m cloudloop worker`` in its own session, started in
the client's working directory with the client's environment. Workers started
for a client exit by themselves a few seconds after they run out of work once
that client is gone, so killing the client neither stops the job nor leaves
processes behind for long.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..errors import ConfigError
from ..model import WorkerOptions
from .base import Provider, WorkerPool


def worker_command(backend_url: str, worker: WorkerOptions) -> list[str]:
    cmd = [sys.executable, "-m", "cloudloop", "worker", "--backend", backend_url]
    cmd += ["--lease", str(worker.lease), "--heartbeat", str(worker.heartbeat)]
    cmd += ["--split-after", str(worker.split_after)]
    if worker.idle_exit is not None:
        cmd += ["--idle-exit", str(worker.idle_exit)]
    if worker.exit_when_orphaned:
        cmd.append("--exit-when-orphaned")
    return cmd


class LocalPool(WorkerPool):
    def __init__(self, procs: list[subprocess.Popen], log_dir: Path):
        self.procs = procs
        self.log_dir = log_dir

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def alive(self) -> int:
        return sum(1 for p in self.procs if p.poll() is None)

    def stop(self, timeout: float = 10.0) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in self.procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


class LocalProvider(Provider):
    name = "local"

    def __init__(self, options=None):
        super().__init__(options)
        unknown = set(self.options) - {"python"}
        if unknown:
            raise ConfigError(
                f"local provider: unknown option(s) {sorted(unknown)}; known: ['python']"
            )

    def start(self, backend_url: str, n: int, worker: WorkerOptions) -> LocalPool:
        log_dir = Path(tempfile.gettempdir()) / f"cloudloop-{os.getuid()}" / "workers"
        log_dir.mkdir(parents=True, exist_ok=True)
        cmd = worker_command(backend_url, worker.replace(exit_when_orphaned=True))
        if "python" in self.options:
            cmd[0] = str(self.options["python"])
        env = {**os.environ, "CLOUDLOOP_PROVIDER": "local"}
        procs = []
        for _ in range(n):
            log_path = log_dir / f"worker-{os.getpid()}-{time.time_ns()}.log"
            with open(log_path, "ab") as logf:
                procs.append(
                    subprocess.Popen(
                        cmd,
                        stdin=subprocess.DEVNULL,
                        stdout=logf,
                        stderr=logf,
                        start_new_session=True,
                        env=env,
                    )
                )
        return LocalPool(procs, log_dir)
