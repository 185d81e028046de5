"""AWS API requests per task on the aws:// backend (SQS + S3), and what they cost.

    python benchmarks/bench_aws.py [--tiny 10000] [--slow 200,40] [--quick] [--out benchmarks/RESULTS.md]

Starts ``moto_server`` on loopback (fake credentials), runs each workload with
an ``Executor(backend="aws://...", workers=2)`` (local worker subprocesses,
default lease 30 s and the aws backend's defaults: heartbeat 30 s, result flush 15 s, checks 10 s), and counts every AWS API request made by
the client and by the workers, by operation, with botocore events:

* workers: a ``sitecustomize.py`` in a temporary directory on ``PYTHONPATH``
  patches ``botocore.session.Session`` the moment it is imported, so every
  boto3 session of every worker (and task) process registers handlers on
  ``before-parameter-build`` (the operation and the S3 key it touches),
  ``before-send`` (one per HTTP request, retries included) and
  ``after-call.sqs.ReceiveMessage`` (payload size); each process writes its
  counts to a JSON file (every second and at exit);
* client: the same handlers, installed in this process.

Counts become dollars at us-east-1 list prices (see ``price``); two reference
designs are priced by the same function from formulas (``MODELS``), not runs.
Workload (a) is a 10,000-item map of a tiny function; (b) is 1 s tasks, run at
two sizes (1,000 x 1 s would take 500 s on 2 workers) and extrapolated
linearly to 1,000 tasks (marked "derived").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from results_md import write_section

WORKERS = 2
SECTION = "## AWS requests per task (issue 3)"
FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}

# --------------------------------------------------------------------------- prices
# us-east-1 list prices (no free tier): SQS standard $0.40 per million requests, each
# 64 KiB chunk of a payload billed as one request; S3 Standard PUT, COPY, POST and LIST
# $0.005 per 1,000, GET and all other requests $0.0004 per 1,000, DELETE free.
SQS_PER_REQUEST = 0.40 / 1e6
S3_PUT_CLASS = 0.005 / 1e3
S3_GET_CLASS = 0.0004 / 1e3
_S3_FREE = {"DeleteObject", "DeleteBucket", "AbortMultipartUpload"}
# DeleteObjects is an HTTP POST: priced as one, conservatively.
_S3_PUT_PREFIXES = ("Put", "Copy", "List", "Create", "Upload", "Complete", "Post", "DeleteObjects")


def billing_class(op: str) -> str:
    """'sqs', 's3-put' (PUT/COPY/POST/LIST), 's3-get' (GET, HEAD, others) or 's3-free'."""
    service, name = op.split(" ", 1)
    if service == "sqs":
        return "sqs"
    if name in _S3_FREE:
        return "s3-free"
    return "s3-put" if name.startswith(_S3_PUT_PREFIXES) else "s3-get"


_CLASS_PRICE = {"sqs": SQS_PER_REQUEST, "s3-put": S3_PUT_CLASS, "s3-get": S3_GET_CLASS}


def price(billed: dict[str, float]) -> float:
    """Dollars for billed requests by operation ("sqs SendMessageBatch": n, ...)."""
    return sum(n * _CLASS_PRICE.get(billing_class(op), 0.0) for op, n in billed.items())


def by_class(billed: dict[str, float]) -> dict[str, float]:
    out: Counter[str] = Counter()
    for op, n in billed.items():
        out[billing_class(op)] += n
    return dict(out)


# Reference designs: billed requests per task (formulas, not measurements).
MODELS = {
    "Lithops-style (model)": (
        "per task: client PUTs fn+args, worker GETs them, worker PUTs a status object and "
        "the result, client GETs the result; the client LISTs the status prefix (1,000 "
        "keys a page) about 10 times over each task's life (0.01 LIST/task); function "
        "upload, runtime and Lambda invocation not counted",
        {"s3 PutObject": 3, "s3 GetObject": 2, "s3 ListObjectsV2": 0.01},
    ),
    "naive SQS, one message per task (model)": (
        "per task: SendMessage, ReceiveMessage (long polling, no empty receives), "
        "DeleteMessage, result PutObject + GetObject; no heartbeats, no polling counted",
        {
            "sqs SendMessage": 1,
            "sqs ReceiveMessage": 1,
            "sqs DeleteMessage": 1,
            "s3 PutObject": 1,
            "s3 GetObject": 1,
        },
    ),
}

# --------------------------------------------------------------------------- counting
COUNTER_SRC = r'''
"""Counts botocore API requests in this process (written by benchmarks/bench_aws.py)."""
import atexit, importlib.machinery, json, math, os, re, sys, threading, time
from collections import Counter

calls = Counter()  # "service Operation category" -> API calls
sends = Counter()  # "service Operation" -> HTTP requests sent (retries included)
extra = Counter()  # "service Operation" -> extra billed 64 KiB chunks
_lock = threading.Lock()
_state = {"last": 0.0, "auto": False}
_JOB_KEY = re.compile(r"(?:^|/)jobs/[^/]+/([a-z]+)")
_TOP_KEY = re.compile(r"(?:^|/)(workers|index|control|deadletter|clusters)/")


def _category(params):
    key = params.get("Key") or params.get("Prefix")
    if not isinstance(key, str):
        return ""
    m = _JOB_KEY.search(key) or _TOP_KEY.search(key)
    if m:
        return m.group(1)
    return "secret" if key.endswith(".secret.key") else "other"


def _chunks(n):
    return max(0, math.ceil(n / 65536) - 1)


def _on_params(params, model, **_):
    svc, op = model.service_model.service_id.hyphenize(), model.name
    cat = _category(params) if svc == "s3" else ""
    more = 0
    if svc == "sqs" and op.startswith("SendMessage"):
        n = len(params.get("MessageBody", ""))
        n += sum(len(e.get("MessageBody", "")) for e in params.get("Entries", []))
        more = _chunks(n)
    with _lock:
        calls[f"{svc} {op} {cat}".rstrip()] += 1
        extra[f"{svc} {op}"] += more


def _on_send(event_name, **_):
    _, svc, op = event_name.split(".", 2)
    with _lock:
        sends[f"{svc} {op}"] += 1
    _maybe_dump()


def _on_receive(parsed, **_):
    n = sum(len(m.get("Body", "")) for m in parsed.get("Messages", []))
    with _lock:
        extra["sqs ReceiveMessage"] += _chunks(n)


def _patch(Session):
    if getattr(Session, "_cl_counted", False):
        return
    init = Session.__init__

    def __init__(self, *a, **k):
        init(self, *a, **k)
        self.register("before-parameter-build", _on_params)
        self.register("before-send", _on_send)
        self.register("after-call.sqs.ReceiveMessage", _on_receive)

    Session.__init__ = __init__
    Session._cl_counted = True


class _Finder:
    """Patches botocore.session as it is imported (processes that never use AWS pay nothing)."""

    def find_spec(self, name, path=None, target=None):
        if name != "botocore.session":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _patch(module.Session)

        spec.loader.exec_module = exec_module
        return spec


def snapshot():
    with _lock:
        return {"pid": os.getpid(), "argv": sys.argv[:4], "calls": dict(calls),
                "sends": dict(sends), "extra": {k: v for k, v in extra.items() if v}}


def reset():
    with _lock:
        calls.clear(); sends.clear(); extra.clear()


def dump(path=None):
    d = os.environ.get("CL_BENCH_COUNTS")
    path = path or (os.path.join(d, f"{os.getpid()}.json") if d else None)
    data = snapshot()
    if path and data["sends"]:
        tmp = f"{path}.{threading.get_ident()}.tmp"
        with open(tmp, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)


def _maybe_dump():
    if _state["auto"] and time.monotonic() - _state["last"] > 1.0:
        _state["last"] = time.monotonic()
        try:
            dump()
        except OSError:
            pass


def install(auto_dump=True):
    _state["auto"] = auto_dump
    if auto_dump:
        atexit.register(dump)
    if "botocore.session" in sys.modules:
        _patch(sys.modules["botocore.session"].Session)
    else:
        sys.meta_path.insert(0, _Finder())
'''

SITECUSTOMIZE_SRC = """import os
if os.environ.get("CL_BENCH_COUNTS"):
    import _cl_count
    _cl_count.install()
"""


class Counts:
    """Requests of one run, by operation, split into client and workers."""

    def __init__(self, records: list[tuple[str, dict]]):
        self.sends: dict[str, Counter] = {"client": Counter(), "workers": Counter()}
        self.calls: dict[str, Counter] = {"client": Counter(), "workers": Counter()}
        self.billed: Counter[str] = Counter()
        for role, rec in records:
            self.sends[role].update(rec["sends"])
            self.calls[role].update(rec["calls"])
            self.billed.update(rec["sends"])
            self.billed.update(rec["extra"])

    @property
    def requests(self) -> int:
        return sum(self.sends["client"].values()) + sum(self.sends["workers"].values())


# --------------------------------------------------------------------------- workloads


def square(x):
    return x * x


def sleep_1s(x):
    time.sleep(1.0)
    return x


def start_moto() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CL_BENCH_COUNTS")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**env, **FAKE_AWS},
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("moto_server did not start") from None
            time.sleep(0.1)


def run(url: str, fn, n: int, tmp: Path, label: str, counter) -> tuple[Counts, float]:
    """One job of ``n`` tasks on fresh local workers; every request from start to shutdown."""
    import cloudloop as cl

    out = tmp / label
    out.mkdir()
    os.environ["CL_BENCH_COUNTS"] = str(out)  # inherited by the workers the Executor starts
    counter.reset()
    t0 = time.perf_counter()
    with cl.Executor(backend=url, workers=WORKERS) as ex:
        results = ex.map_job(fn, range(n)).results()
    wall = time.perf_counter() - t0
    counter.dump(str(out / "client.json"))
    assert results == [fn(i) if fn is square else i for i in range(n)]
    records = []
    for f in sorted(out.glob("*.json")):
        rec = json.loads(f.read_text())
        records.append(("client" if f.name == "client.json" else "workers", rec))
    print(f"  {label}: {n} tasks in {wall:.1f} s, {len(records) - 1} worker-side processes")
    return Counts(records), wall


# --------------------------------------------------------------------------- report


def fmt(x: float, digits: int = 3) -> str:
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}" if abs(x) < 1 else f"{x:.{digits - 1}f}"


def row(design: str, ran: str, source: str, billed: dict[str, float], per: float) -> str:
    """A table row from billed requests; ``per`` = tasks they cover."""
    per_task = {op: v / per for op, v in billed.items()}
    c = by_class(per_task)
    total = c.get("sqs", 0) + c.get("s3-put", 0) + c.get("s3-get", 0) + c.get("s3-free", 0)
    dollars = price(per_task) * 1e6
    cells = [design, ran, source, fmt(total), fmt(c.get("sqs", 0)), fmt(c.get("s3-put", 0))]
    cells += [fmt(c.get("s3-get", 0)), f"${dollars:,.2f}"]
    return "| " + " | ".join(cells) + " |"


def op_table(counts: Counts, n: int) -> list[str]:
    lines = [
        "| operation | S3 key kind | client | workers | per task | billing class | $ per M tasks |",
        "|---|---|---:|---:|---:|---|---:|",
    ]
    rows: Counter[tuple[str, str]] = Counter()
    for role in ("client", "workers"):
        for key, v in counts.calls[role].items():
            svc, op, *cat = key.split(" ")
            rows[(f"{svc} {op}", cat[0] if cat else "")] += v
    for (op, cat), total in sorted(rows.items(), key=lambda kv: -kv[1]):
        key = f"{op} {cat}".rstrip()
        c, w = counts.calls["client"].get(key, 0), counts.calls["workers"].get(key, 0)
        lines.append(
            f"| {op.split(' ', 1)[1]} | {cat or '-'} | {c} | {w} | {fmt(total / n)} "
            f"| {billing_class(op)} | {fmt(price({op: total / n}) * 1e6)} |"
        )
    return lines


_TIME_DRIVEN = {
    "ChangeMessageVisibilityBatch": "lease extension (every lease/3 = 10 s per held message)",
    "PutObject workers": "worker heartbeat record (every 30 s on aws)",
    "HeadObject cancelled": "cancellation checks (worker every 10 s while busy; client each poll)",
    "GetQueueAttributes": "queue stats (chunk split check, at most every 10 s per chunk on aws)",
    "ListObjectsV2 results": "client progress polls (every 1-5 s)",
    "ListObjectsV2 workers": "client live-worker listing (every 15 s on aws)",
    "GetObject workers": "client reads each worker record (every 15 s on aws)",
}


def rates_table(small: tuple[int, Counts], large: tuple[int, Counts]) -> list[str]:
    """Time-driven calls per second of task time: the slope between two 1 s runs
    (so start-up and shutdown calls, the same in both, drop out)."""
    (n1, c1), (n2, c2) = small, large
    lines = [
        "| call | what | client per task-s | workers per task-s |",
        "|---|---|---:|---:|",
    ]
    for key, what in _TIME_DRIVEN.items():
        per_role = []
        for role in ("client", "workers"):
            v = [
                sum(n for k, n in c.calls[role].items() if k.split(" ", 1)[1] == key)
                for c in (c1, c2)
            ]
            per_role.append(fmt(max(0.0, (v[1] - v[0]) / (n2 - n1))))
        lines.append(f"| {key} | {what} | {per_role[0]} | {per_role[1]} |")
    return lines


def msgs(counts: Counts) -> int:
    """Messages acked (one DeleteMessageBatch per message: workers ack each on its own)."""
    return sum(v for k, v in counts.calls["workers"].items() if k == "sqs DeleteMessageBatch")


def chunk_count(n: int) -> int:
    from cloudloop.submit import chunk_sizes

    sizes, left = chunk_sizes(n, WORKERS), n
    count = 0
    while left > 0:
        left -= next(sizes)
        count += 1
    return count


def derive(small: tuple[int, Counts], large: tuple[int, Counts], n: int) -> dict[str, float]:
    """Billed requests for ``n`` tasks, per operation, from a line through two runs."""
    (n1, c1), (n2, c2) = small, large
    out = {}
    for op in set(c1.billed) | set(c2.billed):
        slope = (c2.billed[op] - c1.billed[op]) / (n2 - n1)
        fixed = c1.billed[op] - slope * n1
        out[op] = max(0.0, fixed + slope * n)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", type=int, default=10_000, help="tasks in workload (a)")
    ap.add_argument("--slow", default="200,100", help="two sizes of workload (b), 1 s tasks")
    ap.add_argument("--derive", type=int, default=1_000, help="(b) size to extrapolate to")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, to try the script")
    ap.add_argument("--out", default=str(Path(__file__).with_name("RESULTS.md")))
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args()
    if args.quick:
        args.tiny, args.slow = 500, "6,2"
    large, small = sorted((int(x) for x in args.slow.split(",")), reverse=True)
    argv = " ".join(["python", "benchmarks/bench_aws.py", *sys.argv[1:]])

    tmp = Path(tempfile.mkdtemp(prefix="cl-bench-aws-"))
    (tmp / "_cl_count.py").write_text(COUNTER_SRC)
    (tmp / "sitecustomize.py").write_text(SITECUSTOMIZE_SRC)
    moto, endpoint = start_moto()
    try:
        os.environ.update(FAKE_AWS)
        sys.path.insert(0, str(tmp))
        import _cl_count as counter  # before any boto3 session exists

        counter.install(auto_dump=False)
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(tmp), os.environ.get("PYTHONPATH")) if p
        )
        from cloudloop.backends import open_backend

        url = f"aws://cl-bench-{os.getpid()}/bench?region=us-east-1&endpoint={endpoint}"
        open_backend(url)  # bucket, queue and key once, as `cloudloop` does on first use
        print(f"moto_server at {endpoint}; backend {url}")
        a, wall_a = run(url, square, args.tiny, tmp, "a", counter)
        b_large, wall_bl = run(url, sleep_1s, large, tmp, "b-large", counter)
        b_small, wall_bs = run(url, sleep_1s, small, tmp, "b-small", counter)
    finally:
        moto.terminate()
        moto.wait(10)
    derived = derive((small, b_small), (large, b_large), args.derive)

    per_a = a.requests / args.tiny
    met = per_a <= 0.5
    head = (
        "| design | what ran | source | billed AWS requests / task | SQS / task | S3 PUT-class / task "
        "| S3 GET-class / task | $ per million tasks |"
    )
    table = [
        head,
        "|---|---|---|---:|---:|---:|---:|---:|",
        row("cloudloop", f"(a) {args.tiny:,} x tiny (`x*x`)", "measured", a.billed, args.tiny),
        row("cloudloop", f"(b) {large:,} x 1 s sleep", "measured", b_large.billed, large),
        row("cloudloop", f"(b) {small:,} x 1 s sleep", "measured", b_small.billed, small),
        row(
            "cloudloop",
            f"(b) {args.derive:,} x 1 s sleep",
            f"derived (line through the {small} and {large} runs)",
            derived,
            args.derive,
        ),
    ]
    for name, (_, per_task) in MODELS.items():
        table.append(row(name, "any", "model (formula)", per_task, 1))
    lines = [
        SECTION,
        "",
        f"Produced by `{argv}` (`make bench-aws`) on {time.strftime('%Y-%m-%d')}, "
        f"CPython {platform.python_version()}, {os.cpu_count()} cores, against moto_server "
        f"on loopback; {WORKERS} local workers, default lease 30 s; heartbeat 30 s, result flush 15 s, checks 10 s (the aws backend's defaults). Every "
        "request of the client and of the workers is counted (botocore `before-send` "
        "events, retries included), from `Executor(...)` to the end of its shutdown, so "
        "worker start-up and idle long polls are in. A billed SQS request is each 64 KiB "
        "of payload.",
        "",
        *table,
        "",
        f"**Target: <= 0.5 AWS requests per task on (a): {fmt(per_a)} - "
        f"{'met' if met else 'NOT met'}** ({a.requests} HTTP requests for {args.tiny:,} tasks; "
        f"the table counts billed requests, i.e. each 64 KiB of an SQS payload). Wall times: (a) {wall_a:.1f} s, "
        f"(b) {large} tasks {wall_bl:.1f} s, {small} tasks {wall_bs:.1f} s.",
        "",
        "Prices (us-east-1 list, no free tier): SQS standard $0.40 per million requests; S3 "
        "PUT/COPY/POST/LIST $0.005 per 1,000 (DeleteObjects counted as a POST), GET/HEAD and "
        "others $0.0004 per 1,000, DELETE free. The same `price()` prices every row. "
        f"1,000 x 1 s on {WORKERS} workers would take 500 s, so that row is derived, not run: "
        "each operation's count is a straight line through the two measured 1 s runs "
        f"(fixed start-up/shutdown cost + per-task cost), evaluated at {args.derive:,}. The "
        "line also extrapolates per-message costs (receive, ack, result part, cancel check), "
        f"but messages grow with the job only up to ~30 (guided chunking: {msgs(b_small)} and "
        f"{msgs(b_large)} messages acked in the two runs, {chunk_count(args.derive)} chunks at "
        f"{args.derive:,} tasks, plus tail splits), so the derived row overstates them: an "
        "upper bound.",
        "",
        "Models (not measured):",
        "",
        *(f"* {name}: {what}." for name, (what, _) in MODELS.items()),
        "",
        f"### Where (a)'s requests go ({args.tiny:,} tiny tasks, {a.requests} requests)",
        "",
        *op_table(a, args.tiny),
        "",
        f"### Where (b)'s requests go ({large} x 1 s, {b_large.requests} requests)",
        "",
        *op_table(b_large, large),
        "",
        "### Time-driven calls per second of task time ((b): slope between the "
        f"{small}- and {large}-task runs of 1 s tasks)",
        "",
        *rates_table((small, b_small), (large, b_large)),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section(Path(args.out), SECTION, text)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
