"""Cluster commands: ``aws init``, ``up``, ``ls``, ``down``, ``pause``, ``resume``, ``cleanup``.

They act on the workers of a profile's provider. ``ec2`` manages instances;
``ssh`` bootstraps its hosts and starts workers there (``down`` stops them from
any client); ``local`` starts detached worker processes on this machine
(stopped by ``down``).
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import time

from .backends import open_backend
from .config import Profile, load_profile, parse_duration
from .errors import CloudloopError
from .model import format_seconds
from .providers.local import worker_command


def _profile(args) -> Profile:
    return load_profile(args.profile)


def _cluster(profile: Profile):
    if profile.provider != "ec2":
        raise CloudloopError(
            f"profile {profile.name!r} uses provider {profile.provider!r}, not ec2"
        )
    from .providers.ec2 import Ec2Provider

    return Ec2Provider(profile.provider_options, profile.name).cluster(
        profile.backend, profile.worker
    )


def _ssh(profile: Profile):
    from .providers.ssh import SshProvider

    return SshProvider(profile.provider_options, profile.name).cluster(
        profile.backend, profile.worker
    )


def _ssh_up(profile: Profile, n: int | None) -> int:
    reports = _ssh(profile).up(total=n)
    for r in reports:
        print(r, flush=True)
    ok = [r for r in reports if not r.error]
    print(f"{sum(r.workers for r in ok)} worker(s) on {len(ok)} of {len(reports)} host(s) "
          f"(`cloudloop down --profile {profile.name}` stops them)")  # fmt: skip
    return 0 if ok else 1


def _ssh_down(profile: Profile) -> int:
    lines = _ssh(profile).stop()
    for line in lines:
        print(line)
    return 1 if any("FAILED" in line for line in lines) else 0


def _heartbeats(backend) -> list[dict]:
    from .heartbeat import worker_records

    return [r.as_dict() for r in worker_records(backend)]


def _is_local_worker(pid: int) -> bool:
    """The process is a ``cloudloop worker`` (a record's pid is checked before it is signalled)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return b"cloudloop" in b" ".join(argv) and b"worker" in argv


def cmd_aws_init(args) -> int:
    for line in _cluster(_profile(args)).init():
        print(line)
    return 0


def cmd_up(args) -> int:
    profile = _profile(args)
    if profile.provider == "ssh":
        return _ssh_up(profile, args.n)
    if profile.provider == "local":
        n = args.n or os.cpu_count() or 1
        backend = open_backend(profile.backend)
        cmd = worker_command(profile.worker)
        env = {
            **os.environ,
            "CLOUDLOOP_BACKEND": backend.connect_url,
            "CLOUDLOOP_PROVIDER": "local",
        }
        for _ in range(n):
            subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True, env=env)  # fmt: skip
        print(f"started {n} local workers for {backend.url} (`cloudloop down` stops them)")
        return 0
    cluster = _cluster(profile)
    if args.n:
        print(cluster.launch(math.ceil(args.n / cluster.workers_per_instance())))
        return 0
    return _scale_to_queue(cluster, args)


def _scale_to_queue(cluster, args) -> int:
    """Keep enough instances for the waiting work; stop at max_cost; workers leave when idle."""
    s = cluster.settings
    wpi = cluster.workers_per_instance()
    every = parse_duration(args.every) or 15.0
    print(f"scaling cluster {s.cluster!r} to its queue every {every:g} s (Ctrl-C stops scaling; "
          "workers still leave by themselves when idle)", flush=True)  # fmt: skip
    quiet_since = None
    while True:
        stats = cluster.backend.queue.stats()
        live = cluster.instances()
        spent, burn = cluster.cost()
        if s.max_cost is not None and spent >= s.max_cost:
            ids = cluster.terminate()
            print(
                f"max_cost ${s.max_cost:.2f} reached (${spent:.2f} spent): terminated {len(ids)} instance(s)"
            )
            return 3
        want = min(math.ceil(s.max_workers / wpi), math.ceil(stats.total / wpi))
        if stats.total and want > len(live) and not cluster.paused():
            print(cluster.launch(want - len(live)), flush=True)
        if stats.total or live:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif args.until_idle and time.monotonic() - quiet_since > every:
            print(f"queue empty and no instances left; spent ${spent:.2f}")
            return 0
        time.sleep(every)


def cmd_ls(args) -> int:
    profile = _profile(args)
    if profile.provider != "ec2":
        backend = open_backend(profile.backend)
        now = time.time()
        for w in _heartbeats(backend):
            seen = format_seconds(now - w.get("last_seen", 0))
            print(f"{w['id']:32s} {w.get('provider', '?'):8s} {w.get('state', '?'):9s} "
                  f"tasks {w.get('tasks_done', 0):6d}  seen {seen} ago")  # fmt: skip
        return 0
    cluster = _cluster(profile)
    spent, burn = cluster.cost()
    ledger = {r["id"]: r for r in cluster.ledger()}
    now = time.time()
    rows = cluster.instances(["pending", "running", "stopping", "stopped", "shutting-down"])
    for i in rows:
        r = ledger.get(i["id"], {})
        up = format_seconds(now - i["launched"])
        price = r.get("price", 0.0)
        print(f"{i['id']:20s} {i['type']:11s} {i['market']:9s} {i['zone']:11s} {i['state']:13s} "
              f"up {up:>8s}  ${price:.4f}/h")  # fmt: skip
    budget = f" of max ${cluster.settings.max_cost:.2f}" if cluster.settings.max_cost else ""
    print(f"{len(rows)} instance(s) in cluster {cluster.settings.cluster!r}; "
          f"spent ${spent:.2f}{budget}, burning ${burn:.3f}/h")  # fmt: skip
    return 0


def cmd_down(args) -> int:
    profile = _profile(args)
    if profile.provider == "ssh":
        return _ssh_down(profile)
    if profile.provider != "ec2":
        backend = open_backend(profile.backend)
        host, n = socket.gethostname(), 0
        for w in _heartbeats(backend):
            if w.get("host") == host and _is_local_worker(w["pid"]):
                try:
                    os.kill(w["pid"], signal.SIGTERM)
                    n += 1
                except (ProcessLookupError, PermissionError):
                    pass
        print(f"asked {n} worker(s) on this machine to stop")
        return 0
    for line in _cluster(profile).down(purge=args.purge) or ["nothing was running"]:
        print(line)
    return 0


def cmd_pause(args) -> int:
    cluster = _cluster(_profile(args))
    cluster.pause()
    print(f"cluster {cluster.settings.cluster!r} paused: no new instances, workers take no new "
          "tasks, finish what they hold and leave when idle (`cloudloop resume` to go on)")  # fmt: skip
    return 0


def cmd_resume(args) -> int:
    cluster = _cluster(_profile(args))
    cluster.resume()
    print(f"cluster {cluster.settings.cluster!r} resumed (`cloudloop up` starts workers again)")
    return 0


def cmd_cleanup(args) -> int:
    for line in _cluster(_profile(args)).cleanup(purge=args.purge) or ["nothing to clean up"]:
        print(line)
    return 0


def cmd_instance_ended(args) -> int:
    """Run by an EC2 instance's bootstrap once its workers have left: close its bill."""
    from .providers.prices import Ledger
    from .spot import Imds

    try:
        iid = Imds(args.metadata_url).get("instance-id")
    except OSError as e:
        raise CloudloopError(f"cannot read this instance's id from {args.metadata_url}: {e}") from e
    if not iid:
        raise CloudloopError(f"{args.metadata_url} gave no instance id: not an EC2 instance?")
    n = Ledger(open_backend(args.backend), args.cluster).close([iid], by="instance")
    print(f"instance {iid}: {'closed its record' if n else 'no open record'} in cluster "
          f"{args.cluster!r}")  # fmt: skip
    return 0


def add_commands(sub, common) -> None:
    ended = sub.add_parser(
        "instance-ended", help="(run by EC2 instances as they shut down) close this one's bill"
    )
    ended.add_argument("--backend", required=True)
    ended.add_argument("--cluster", required=True)
    ended.add_argument("--metadata-url", default="http://169.254.169.254")
    ended.set_defaults(fn=cmd_instance_ended)
    aws = sub.add_parser("aws", help="AWS set-up for an ec2 profile")
    aws_sub = aws.add_subparsers(dest="aws_cmd", required=True, metavar="COMMAND")
    init = common(
        aws_sub.add_parser(
            "init", help="create bucket, queue, IAM role + instance profile, security group"
        )
    )
    init.set_defaults(fn=cmd_aws_init)

    up = common(sub.add_parser("up", help="start workers for a profile (ec2: scale to the queue)"))
    up.add_argument("-n", type=int, help="workers to start now (default: follow the queue)")
    up.add_argument("--every", default="15s", help="how often to look at the queue when scaling")
    up.add_argument(
        "--until-idle",
        action="store_true",
        help="return once the queue is empty and no instance is left",
    )
    up.set_defaults(fn=cmd_up)

    ls = common(sub.add_parser("ls", help="list a profile's workers or instances and their cost"))
    ls.set_defaults(fn=cmd_ls)

    down = common(sub.add_parser("down", help="stop every worker/instance the profile started"))
    down.add_argument(
        "--purge", action="store_true", help="also delete the queue and the stored data"
    )
    down.set_defaults(fn=cmd_down)

    for name, fn, text in (
        ("pause", cmd_pause, "stop starting instances; running workers drain and leave"),
        ("resume", cmd_resume, "undo pause"),
    ):
        common(sub.add_parser(name, help=text)).set_defaults(fn=fn)

    cl = common(
        sub.add_parser(
            "cleanup", help="remove everything cloudloop created for a profile (found by tag)"
        )
    )
    cl.add_argument("--purge", action="store_true", help="queues and buckets too")
    cl.set_defaults(fn=cmd_cleanup)
