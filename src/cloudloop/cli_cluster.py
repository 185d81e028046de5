"""Cluster commands: ``aws init``, ``up``, ``ls``, ``down``, ``pause``, ``resume``, ``cleanup``.

They act on a profile's :class:`~cloudloop.providers.base.Cluster` (whatever
its provider: this module names none) and print what it reports; a capability
the provider lacks (``aws init`` on a local profile) is one line saying so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .backends import open_backend
from .config import load_profile, parse_duration
from .errors import CloudloopError

if TYPE_CHECKING:  # the providers are imported by the commands that use them, not by
    from .providers import Cluster, Report  # `cloudloop worker`, which builds this parser


def _cluster(args) -> Cluster:
    from .providers import cluster_for

    return cluster_for(load_profile(args.profile), args.backend)


def _say(report: Report) -> int:
    for line in report.lines:
        print(line, flush=True)
    return 0 if report.ok else 1


def cmd_aws_init(args) -> int:
    return _say(_cluster(args).init())


def cmd_up(args) -> int:
    cluster = _cluster(args)
    if not args.foreground and (args.every is not None or args.until_idle):
        raise CloudloopError("--every and --until-idle go with --foreground (scaling from this "
                             "terminal)")  # fmt: skip
    if args.foreground:
        if args.n is not None:
            raise CloudloopError("-n starts workers now; --foreground follows the queue: "
                                 "choose one")  # fmt: skip
        every = parse_duration(args.every) or 15.0
        return cluster.follow(every, args.until_idle, lambda line: print(line, flush=True))
    return _say(cluster.up(args.n))


def cmd_ls(args) -> int:
    return _say(_cluster(args).ls())


def cmd_down(args) -> int:
    from .providers import Report

    report = _cluster(args).down(purge=args.purge)
    return _say(report if report.lines else Report(("nothing was running",), report.ok))


def cmd_pause(args) -> int:
    cluster = _cluster(args)
    report = cluster.pause()
    print(
        f"cluster {cluster.name!r} paused: no new machines, and every worker of its backend "
        "takes no new tasks, finishes what it holds and leaves when idle "
        "(`cloudloop resume` to go on)"
    )
    return _say(report)


def cmd_resume(args) -> int:
    cluster = _cluster(args)
    report = cluster.resume()
    print(f"cluster {cluster.name!r} resumed" + ("" if report.lines else
          " (`cloudloop up` starts workers again)"))  # fmt: skip
    return _say(report)


def cmd_cleanup(args) -> int:
    from .providers import Report

    report = _cluster(args).cleanup(purge=args.purge)
    return _say(report if report.lines else Report(("nothing to clean up",), report.ok))


def cmd_instance_ended(args) -> int:
    """Run by an EC2 instance's bootstrap once its workers have left: close its bill."""
    from .providers.prices import Ledger, read_ledger_record
    from .spot import Imds

    try:
        iid = Imds(args.metadata_url).get("instance-id")
    except OSError as e:
        raise CloudloopError(f"cannot read this instance's id from {args.metadata_url}: {e}") from e
    if not iid:
        raise CloudloopError(f"{args.metadata_url} gave no instance id: not an EC2 instance?")
    ledger = Ledger(open_backend(args.backend), args.cluster)
    n = ledger.close([iid], by="instance")
    if not n and read_ledger_record(ledger.backend, ledger.key(iid)) is None:
        # launched by its Auto Scaling group, and no client looked meanwhile: the instance
        # writes its own record (this machine has no price API: list price, or its spot share)
        n = _record_self(ledger, Imds(args.metadata_url), iid, args.booted)
    print(
        f"instance {iid}: {'closed its record' if n else 'no open record'} in cluster "
        f"{args.cluster!r}"
    )
    return 0


def _record_self(ledger, imds, iid: str, booted: float | None) -> int:
    import time

    from .providers import prices

    if booted is None or not 0 < booted <= time.time():
        return 0
    try:
        launched = booted
        itype = imds.get("instance-type") or "?"
        zone = imds.get("placement/availability-zone")
        market = "spot" if imds.get("instance-life-cycle") == "spot" else "on-demand"
    except (OSError, ValueError, IndexError):
        return 0
    price = prices.hourly(None, itype, zone, market == "spot")
    ledger.open({"id": iid, "type": itype, "zone": zone, "market": market}, price, launched)
    return ledger.close([iid], by="instance")


def add_commands(sub, common) -> None:
    ended = sub.add_parser(
        "instance-ended", help="(run by EC2 instances as they shut down) close this one's bill"
    )
    ended.add_argument("--backend", required=True)
    ended.add_argument("--cluster", required=True)
    ended.add_argument("--metadata-url", default="http://169.254.169.254")
    ended.add_argument("--booted", type=float, help="when its bootstrap began (unix time)")
    ended.set_defaults(fn=cmd_instance_ended)
    aws = sub.add_parser("aws", help="AWS set-up for an ec2 profile")
    aws_sub = aws.add_subparsers(dest="aws_cmd", required=True, metavar="COMMAND")
    init = common(
        aws_sub.add_parser(
            "init", help="create bucket, queue, IAM role + instance profile, security group"
        )
    )
    init.set_defaults(fn=cmd_aws_init)

    up = common(sub.add_parser(
        "up", help="start workers for a profile (ec2: an Auto Scaling group that follows the queue)"
    ))  # fmt: skip
    up.add_argument("-n", type=int, help="workers to start now")
    up.add_argument(
        "--foreground",
        action="store_true",
        help="ec2: follow the queue from this terminal instead of an Auto Scaling group",
    )
    up.add_argument("--every", help="with --foreground: how often to look at the queue (15s)")
    up.add_argument(
        "--until-idle",
        action="store_true",
        help="with --foreground: return once the queue is empty and no instance is left",
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
