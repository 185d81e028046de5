"""The cloud-init user-data that turns a fresh instance into cloudloop workers.

It holds no credentials: the instance profile grants the queue and the bucket
prefix, and the boot agent (bootagent.py, carried inside) and boto3 find
those credentials in instance metadata. In order, each phase reported to the
store (``clusters/<cluster>/boots/<instance>``) so ``cloudloop ls`` shows it::

    started       the script runs; a watchdog ends the machine if no worker
                  serves within the boot deadline (it is billed while it sits)
    python        the Python the workers need: ``pythonX.Y``, else ``python3``
                  if it is X.Y, else installed with the image's package manager
                  (dnf, yum, apt-get) and checked again; none: the boot fails
                  here, before anything is installed, saying what the image has
    environment   a venv with the wheelhouse the client published to the store
                  (``pip install --no-index``: no package index is needed), or,
                  with ``install =`` in the profile, that spec from the index
    workers       one worker per vCPU (or ``workers_per_instance``)
    ended         the workers left (idle, preempted, past the cost deadline,
                  stopped); the machine shuts down, which terminates it
                  (``InstanceInitiatedShutdownBehavior=terminate``). One of an
                  Auto Scaling group (``CLOUDLOOP_GROUP``) first ends itself in
                  the group, its desired capacity decremented (bootagent.py
                  ``leave``), so the group does not start another in its place;
                  after a spot notice it leaves the capacity for the group to
                  replace. A failed boot that is the ``max_failed_boots``-th of its
                  configuration in a row suspends the group's launches first
                  (bootagent.py ``hold``)

A failed phase reports ``failed`` with the reason and the tail of the
bootstrap log, then shuts the machine down. Its workers get the backend URL
(``CLOUDLOOP_BACKEND``) and the cluster's name (``CLOUDLOOP_CLUSTER``, into
their heartbeat records) from the environment, never on a command line.

Environment overrides (for images with another layout, and for tests):
``CLOUDLOOP_HOME`` (default /opt/cloudloop), ``CLOUDLOOP_METADATA_URL``
(http://169.254.169.254).
"""

from __future__ import annotations

import ast
import base64
import gzip
import hashlib
import shlex
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..model import WorkerOptions
from .base import CLUSTER_ENV, worker_argv

AGENT = Path(__file__).with_name("bootagent.py")


@dataclass(frozen=True)
class Bootstrap:
    backend: str
    version: str
    worker: WorkerOptions  # exactly what its workers get (ec2 fills in its idle_exit default)
    python: str  # the minor version the workers need ("3.11")
    wheelhouse: str | None = None  # its digest in the store; None: install from the index
    install: tuple[str, ...] = ()  # pip specs installed from the wheelhouse (or the index)
    pip_args: tuple[str, ...] = ()
    workers_per_instance: int | None = None
    boot_timeout: float = 900.0  # no worker by then: the machine ends itself
    stop_at: float | None = None  # unix time: workers leave then (max_cost)
    cluster: str | None = None  # its workers' cluster; closes this instance's bill record
    group: str | None = None  # the Auto Scaling group it leaves (decrementing) as it ends
    max_failed_boots: int = 3  # failed boots in a row (this config) that suspend its launches
    env: dict[str, str] = field(default_factory=dict)

    def config(self) -> str:
        """A digest of what the instance is told to do, but not when to stop: boots
        that failed with the same config count against it (launches stop)."""
        parts = [f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.name != "stop_at"]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def lean(source: str) -> str:
    """``source`` without its docstrings and comment lines (the same program, smaller):
    the user-data, agent included, must stay within EC2's 16 KB."""
    tree = ast.parse(source)
    drop: dict[int, str | None] = {}  # line -> None (dropped) or what replaces it
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) or not body:
            continue
        doc = body[0]
        if not (isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant)
                and isinstance(doc.value.value, str)):  # fmt: skip
            continue
        end = doc.end_lineno or doc.lineno
        for line in range(doc.lineno, end + 1):
            drop[line] = None
        if len(body) == 1:  # the docstring was the whole body: it needs a statement
            drop[doc.lineno] = " " * doc.col_offset + "pass"
    kept: list[str] = []
    for i, text in enumerate(source.splitlines(), 1):
        if i in drop:
            said = drop[i]
            if said is not None:
                kept.append(said)
        elif not text.lstrip().startswith("#") or i == 1:
            kept.append(text)
    out = "\n".join(kept) + "\n"
    # the same program: what was dropped was docstrings and comments, nothing else
    if _code(ast.parse(out)) != _code(tree):
        raise AssertionError("lean() changed more than docstrings and comments")
    return out


def _code(tree: ast.AST) -> str:
    """The program without its docstrings, for comparing two spellings of it."""
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and body:
            doc = body[0]
            if (isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant)
                    and isinstance(doc.value.value, str)):  # fmt: skip
                node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def _agent() -> str:
    packed = base64.b64encode(gzip.compress(lean(AGENT.read_text()).encode(), mtime=0)).decode()
    return "\n".join(packed[i : i + 76] for i in range(0, len(packed), 76))


def render(b: Bootstrap) -> str:
    q = shlex.quote
    pip = " ".join(q(x) for x in (*b.pip_args, *b.install))
    # the metadata URL is the script's own $META; the workers outlive nothing but the script
    w = b.worker.replace(stop_at=b.stop_at, metadata_url=None, exit_when_orphaned=False)
    worker_args = " ".join(q(a) for a in worker_argv(w))
    count = str(b.workers_per_instance) if b.workers_per_instance else "$(nproc)"
    close_bill = ""
    if b.cluster:
        close_bill = (
            f'"$HOME_DIR/venv/bin/cloudloop" instance-ended --backend {q(b.backend)} '
            f'--cluster {q(b.cluster)} --metadata-url "$META" --booted "$T0" || true\n'
        )
    env = {**b.env, "CLOUDLOOP_BACKEND": b.backend, "CLOUDLOOP_BOOT_CONFIG": b.config(),
           "CLOUDLOOP_BOOT_TIMEOUT": f"{b.boot_timeout:g}"}  # fmt: skip
    if b.cluster:
        env[CLUSTER_ENV] = b.cluster  # into their heartbeat records: `ls` and workers() find them
    if b.wheelhouse:
        env["CLOUDLOOP_WHEELHOUSE"] = b.wheelhouse
    if b.group:
        env["CLOUDLOOP_GROUP"] = b.group
        env["CLOUDLOOP_MAX_FAILED_BOOTS"] = str(b.max_failed_boots)
    exports = "".join(f"export {k}={q(v)}\n" for k, v in sorted(env.items()))
    if b.wheelhouse:
        fetch = (
            'step "fetching the wheelhouse from the store" "$ANYPY" -I "$AGENT" fetch "$HOME_DIR/wheels"\n'
            f'step "installing cloudloop from the wheelhouse" "$HOME_DIR/venv/bin/pip" install '
            f'--quiet --disable-pip-version-check --no-index --find-links "$HOME_DIR/wheels" {pip}\n'
        )
    else:
        fetch = (
            f'step "installing cloudloop from the package index" "$HOME_DIR/venv/bin/pip" '
            f"install --quiet --disable-pip-version-check {pip}\n"
        )
    return f"""#!/bin/bash
# cloudloop {b.version} worker bootstrap. No credentials here: the instance
# profile grants this machine the job queue and its bucket prefix only.
set -uo pipefail
HOME_DIR="${{CLOUDLOOP_HOME:-/opt/cloudloop}}"
META="${{CLOUDLOOP_METADATA_URL:-http://169.254.169.254}}"
WANT={q(b.python)}
AGENT="$HOME_DIR/bootagent.py"
LOG="$HOME_DIR/bootstrap.log"
mkdir -p "$HOME_DIR"
exec >>"$LOG" 2>&1
{exports}echo "cloudloop bootstrap $(date -u +%FT%TZ)"
T0=$(date +%s)
base64 -d >"$AGENT.gz" <<'AGENT_EOF'
{_agent()}
AGENT_EOF
gzip -dc "$AGENT.gz" >"$AGENT" && rm -f "$AGENT.gz"
# the boot agent needs Python 3.6 or later (any of the image's, standard library only)
find_anypy() {{
  local p path
  for p in "python$WANT" python3 python; do
    path=$(command -v "$p") || continue
    if "$path" -I -c 'import sys; sys.exit(sys.version_info < (3, 6))' 2>/dev/null; then
      ANYPY=$path; return 0
    fi
  done
  return 1
}}
ANYPY=""
find_anypy
report() {{
  if [ -n "$ANYPY" ]; then "$ANYPY" -I "$AGENT" report "$@" || echo "could not report: $*"; fi
}}
# an instance of an Auto Scaling group ends itself within it, taking the desired capacity
# down (else the group replaces it); after a spot notice it leaves that to AWS
leave() {{
  if [ -n "${{CLOUDLOOP_GROUP:-}}" ] && [ -n "$ANYPY" ]; then
    "$ANYPY" -I "$AGENT" leave || echo "could not leave group $CLOUDLOOP_GROUP"
  fi
  shutdown -h now
}}
fail() {{
  echo "boot failed: $1"
  # the first failure (the watchdog's or the boot's own) is the one reported
  if mkdir "$HOME_DIR/failed" 2>/dev/null; then
    report failed --detail "$1" --log "$LOG"
    if [ -w /dev/console ]; then echo "cloudloop boot failed: $1" >/dev/console; fi
    # the last boots of this configuration failed too: the group launches no more
    if [ -n "${{CLOUDLOOP_GROUP:-}}" ] && [ -n "$ANYPY" ]; then "$ANYPY" -I "$AGENT" hold || true; fi
  fi
  leave
  exit 1
}}
step() {{
  local what=$1; shift
  echo "$what: $*"
  "$@" || fail "$what failed (exit $?; the log's tail is below)"
}}
( sleep {int(b.boot_timeout)}
  if [ ! -e "$HOME_DIR/serving" ]; then
    fail "no worker served within {int(b.boot_timeout)} s of boot (boot_timeout)"
  fi ) &
if [ -z "$ANYPY" ]; then
  echo "no python 3.6 or later on this image: cannot report to the store"
  if [ -w /dev/console ]; then echo "cloudloop boot failed: no python3 on this image" >/dev/console; fi
fi
report started
version_of() {{ "$1" -I -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null; }}
SEEN=""
find_python() {{
  PY=""
  SEEN=""
  for p in "python$WANT" python3; do
    local path v
    path=$(command -v "$p") || continue
    v=$(version_of "$path")
    if [ "$v" = "$WANT" ]; then PY=$path; return 0; fi
    SEEN="${{SEEN:+$SEEN, }}$p is ${{v:-unusable}}"
  done
  return 1
}}
if ! find_python; then
  echo "no python$WANT here (${{SEEN:-no python3 either}}); trying the package manager"
  if command -v dnf >/dev/null; then dnf install -y "python$WANT" "python$WANT-pip"
  elif command -v yum >/dev/null; then yum install -y "python$WANT" "python$WANT-pip"
  elif command -v apt-get >/dev/null; then
    apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "python$WANT" "python$WANT-venv"
  fi
  [ -n "$ANYPY" ] || find_anypy
  IMAGE=$([ -n "$ANYPY" ] && "$ANYPY" -I "$AGENT" image || echo "this image")
  find_python || fail "no python$WANT on $IMAGE (${{SEEN:-no python3 either}}) and its package manager could not install it: set image = or python = in the profile"
fi
report python --detail "$PY (Python $WANT)"
T1=$(date +%s)
step "creating a venv with $PY" "$PY" -m venv "$HOME_DIR/venv"
{fetch}report environment --detail "installed in $(( $(date +%s) - T1 )) s"
export CLOUDLOOP_PROVIDER=ec2
PIDS=""
for i in $(seq 1 {count}); do
  "$HOME_DIR/venv/bin/cloudloop" {worker_args} --metadata-url "$META" >>"$HOME_DIR/worker-$i.log" 2>&1 &
  PIDS="$PIDS $!"
done
sleep 1
for pid in $PIDS; do
  kill -0 "$pid" 2>/dev/null || fail "a worker exited at once: $(tail -n 5 "$HOME_DIR"/worker-*.log | tr '\\n' ' ')"
done
touch "$HOME_DIR/serving"
report workers --detail "{count} worker(s) started $(( $(date +%s) - T0 )) s after boot"
for pid in $PIDS; do wait "$pid"; done
echo "workers left $(date -u +%FT%TZ); shutting down"
report ended --detail "the workers left"
{close_bill}leave
"""
