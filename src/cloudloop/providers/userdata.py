"""The cloud-init user-data that turns a fresh instance into cloudloop workers.

It holds no credentials: the instance profile grants the queue and the bucket
prefix, and boto3 finds those credentials in instance metadata. The script
installs the client's exact cloudloop version (plus the profile's declared
requirements) into a venv, starts one worker per vCPU (or
``workers_per_instance``), waits for them to leave (idle, preempted, past the
cost deadline, or stopped) and shuts the machine down, which terminates it
(``InstanceInitiatedShutdownBehavior=terminate``). Its workers get the
backend URL (``CLOUDLOOP_BACKEND``) and the cluster's name (``CLOUDLOOP_CLUSTER``,
into their heartbeat records) from the environment, never on a command line.

Environment overrides (for images with another layout, and for tests):
``CLOUDLOOP_HOME`` (default /opt/cloudloop), ``CLOUDLOOP_PYTHON`` (python3),
``CLOUDLOOP_METADATA_URL`` (http://169.254.169.254); pip honours its own
``PIP_INDEX_URL``/``PIP_FIND_LINKS``.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from ..model import WorkerOptions
from .base import CLUSTER_ENV, worker_argv


@dataclass(frozen=True)
class Bootstrap:
    backend: str
    version: str
    worker: WorkerOptions  # exactly what its workers get (ec2 fills in its idle_exit default)
    requirements: tuple[str, ...] = ()
    install: str | None = None  # pip spec for cloudloop itself (default: cloudloop[aws]==version)
    pip_args: tuple[str, ...] = ()
    workers_per_instance: int | None = None
    stop_at: float | None = None  # unix time: workers leave then (max_cost)
    cluster: str | None = None  # its workers' cluster; closes this instance's bill record
    env: dict[str, str] = field(default_factory=dict)


def render(b: Bootstrap) -> str:
    q = shlex.quote
    spec = b.install or f"cloudloop[aws]=={b.version}"
    pip = " ".join(q(x) for x in (*b.pip_args, spec, *b.requirements))
    # the metadata URL is the script's own $META; the workers outlive nothing but the script
    w = b.worker.replace(stop_at=b.stop_at, metadata_url=None, exit_when_orphaned=False)
    worker_args = " ".join(q(a) for a in worker_argv(w))
    count = str(b.workers_per_instance) if b.workers_per_instance else "$(nproc)"
    close_bill = ""
    if b.cluster:
        close_bill = (
            f'"$HOME_DIR/venv/bin/cloudloop" instance-ended --backend {q(b.backend)} '
            f'--cluster {q(b.cluster)} --metadata-url "$META" || true\n'
        )
    env = {**b.env, "CLOUDLOOP_BACKEND": b.backend}  # the workers' backend: never on a command line
    if b.cluster:
        env[CLUSTER_ENV] = b.cluster  # into their heartbeat records: `ls` and workers() find them
    exports = "".join(f"export {k}={q(v)}\n" for k, v in sorted(env.items()))
    return f"""#!/bin/bash
# cloudloop {b.version} worker bootstrap. No credentials here: the instance
# profile grants this machine the job queue and its bucket prefix only.
set -uo pipefail
HOME_DIR="${{CLOUDLOOP_HOME:-/opt/cloudloop}}"
PY="${{CLOUDLOOP_PYTHON:-python3}}"
META="${{CLOUDLOOP_METADATA_URL:-http://169.254.169.254}}"
mkdir -p "$HOME_DIR"
exec >>"$HOME_DIR/bootstrap.log" 2>&1
{exports}echo "cloudloop bootstrap $(date -u +%FT%TZ)"
if ! command -v "$PY" >/dev/null; then
  (command -v dnf && dnf install -y python3 python3-pip) || (apt-get update && apt-get install -y python3-venv)
fi
if [ ! -x "$HOME_DIR/venv/bin/cloudloop" ]; then
  "$PY" -m venv "$HOME_DIR/venv" || {{ echo "cannot create a venv"; shutdown -h now; exit 1; }}
  "$HOME_DIR/venv/bin/pip" install --quiet --disable-pip-version-check {pip} \\
    || {{ echo "installing cloudloop failed"; shutdown -h now; exit 1; }}
fi
export CLOUDLOOP_PROVIDER=ec2
for i in $(seq 1 {count}); do
  "$HOME_DIR/venv/bin/cloudloop" {worker_args} --metadata-url "$META" >>"$HOME_DIR/worker-$i.log" 2>&1 &
done
wait
echo "workers left $(date -u +%FT%TZ); shutting down"
{close_bill}shutdown -h now
"""
