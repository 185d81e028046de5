"""An ec2 boot in the cloud-in-a-box, phase by phase, and the wheelhouse behind it.

    sudo .venv/bin/python benchmarks/bench_boot.py [--repeat 3] [--write] [--out benchmarks/RESULTS.md]

Runs as root: it starts tests/cloudbox.py (moto_server in a network namespace
and the EC2 instance simulator that boots each instance as a namespace
"machine" from an AL2023-like image: ``python3`` is 3.9, a fake ``dnf``
installs python3.11/3.12, no package index) and measures, in one run:

1. the client's wheelhouse for cloudloop (this development tree, extras
   ``aws``) + ``scikit-learn==<the version in this venv>``:
   ``wheelhouse.build`` with an empty cache (``XDG_CACHE_HOME`` a fresh
   directory, which also holds pip's cache, and ``PIP_NO_CACHE_DIR=1``), then
   again (cached); ``wheelhouse.publish`` to a fresh bucket in the box's moto,
   first (uploads every wheel) and second (one listing). The same is built,
   cold, for cloudloop alone, which the comparison boots use;
2. from ``up`` to the first task started on a fresh machine, for a profile with
   ``requirements = ["scikit-learn==X"]``: the client's ``Ec2Cluster.up(1)``
   (IAM/security group set-up, publish to the cluster's fresh bucket, launch
   template, fleet request), then the instance's boot record
   (``Boots(backend, cluster).records()``: launched, started, python,
   environment, workers, each a unix time) and the first task's own
   ``time.time()`` when it starts (it then imports sklearn and returns its
   version). python -> environment is split further by the mtimes of files the
   boot writes on the machine (the venv's pip RECORD, the fetched wheelhouse's
   install.txt);
3. the same with ``requirements = []`` (cloudloop alone).

Each boot is a fresh cluster on a fresh bucket (so every ``up`` uploads its
wheelhouse: the client's build cache is warm, the store is empty) and a
fresh machine; the job (one task) is queued before ``up``. Boots run one
after another, the two profiles alternating, ``--repeat`` times each; the
tables give the median and the range. The machine is terminated (and its
bucket purged) before the next boot starts.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from results_md import write_section

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TESTS = ROOT / "tests"
SECTION = "## Boot: up → first task (cloud-in-a-box)"
INSTANCE_TYPE = "c7a.large"  # 2 vCPUs: two workers per machine, as on EC2

PROFILE = """
[profiles.{name}]
backend = "aws://{bucket}/jobs?region=us-east-1&endpoint={endpoint}"
provider = "ec2"
instance_types = ["{itype}"]
max_workers = 2
prices = {{ "{itype}" = 0.10 }}
requirements = {requirements}
"""


def first_task(x):
    """The benchmark's task: when it started, then sklearn imported (or not)."""
    import sys
    import time

    started = time.time()
    try:
        import sklearn

        version = sklearn.__version__
    except ImportError:
        version = None
    return {"started": started, "imported": time.time(), "sklearn": version,
            "prefix": sys.prefix, "x": x}  # fmt: skip


# --------------------------------------------------------------------------- helpers


def snapshot_tree(dest: Path) -> tuple[str, bool]:
    """Copy this development tree (src/, pyproject.toml, README.md) to ``dest`` and make
    it the cloudloop this process runs and the wheelhouse builds from, so files edited
    in the working tree while the benchmark runs change neither the code nor the
    wheelhouse digest mid-run. Returns (HEAD commit, whether the tree had changes)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "src", dest / "src", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    sys.path.insert(0, str(dest / "src"))
    from cloudloop.providers import wheelhouse

    assert Path(wheelhouse.__file__).is_relative_to(dest), wheelhouse.__file__
    wheelhouse.source_tree = lambda: dest
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()  # fmt: skip
    dirty = bool(subprocess.run([*git, "status", "--porcelain", "--", "src", "pyproject.toml"],
                                capture_output=True, text=True).stdout.strip())  # fmt: skip
    return head, dirty


def pip_indexes() -> list[str]:
    """pip's index URLs and find-links as configured here (`pip config list`)."""
    r = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                       text=True)  # fmt: skip
    out, keys = [], set()
    for line in r.stdout.splitlines():
        key, _, value = line.partition("=")
        key = key.rsplit(".", 1)[-1]
        if key in ("index-url", "extra-index-url", "find-links"):
            keys.add(key)
            out += [x for x in value.strip("'\"").split() if x not in out]
    return out if "index-url" in keys else ["https://pypi.org/simple", *out]


def wheel_origins(
    path: Path, indexes: list[str]
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(wheels a file:// index or find-links directory on this disk holds, the others):
    the cold build copied the first kind and downloaded or built the second."""
    local, other = [], []
    for whl in sorted(path.glob("*.whl")):
        project = re.sub(r"[-_.]+", "-", whl.name.split("-")[0]).lower()
        found = False
        for ix in indexes:
            d = Path(ix[len("file://") :] if ix.startswith("file://") else ix)
            if not ix.startswith("file://") and not d.is_absolute():
                continue
            page = d / project / "index.html"
            if (d / whl.name).is_file() or (page.is_file() and whl.name in page.read_text()):
                found = True
        (local if found else other).append((whl.name.split("-")[0], whl.stat().st_size))
    return local, other


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def wheel_stats(path: Path) -> tuple[int, float]:
    whl = sorted(path.glob("*.whl"))
    return len(whl), sum(p.stat().st_size for p in whl) / 1e6


def med(xs: list[float]) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    m = statistics.median(xs)
    if len(xs) == 1:
        return f"{m:.1f}"
    return f"{m:.1f} ({min(xs):.1f}–{max(xs):.1f})"


def wait(pred, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


# --------------------------------------------------------------------------- part 1


def wheelhouses(sk_pin: str, box, tmp: Path) -> dict:
    """Cold and cached builds, first and second publish (one run each)."""
    from cloudloop.backends import open_backend
    from cloudloop.providers import wheelhouse
    from cloudloop.providers.wheelhouse import Target

    target = Target(f"{sys.version_info[0]}.{sys.version_info[1]}", Target.here().arch)
    out: dict = {"target": target}
    os.environ["PIP_NO_CACHE_DIR"] = "1"  # pip's own cache off, as well as empty
    try:
        for label, reqs in (("sk", (sk_pin,)), ("bare", ())):
            pip_cache = wheelhouse.cache_root().parents[1] / "pip"
            before = dir_size(pip_cache) if pip_cache.exists() else 0
            t0 = time.perf_counter()
            path = wheelhouse.build(("aws",), reqs, target=target)
            cold = time.perf_counter() - t0
            after = dir_size(pip_cache) if pip_cache.exists() else 0
            n, mb = wheel_stats(path)
            print(f"  build {label}: cold {cold:.1f} s, {n} wheels, {mb:.1f} MB "
                  f"(pip cache {before} -> {after} bytes)")  # fmt: skip
            out[label] = {"cold": cold, "wheels": n, "mb": mb, "path": path,
                          "pip_cache": (before, after),
                          "origins": wheel_origins(path, pip_indexes())}  # fmt: skip
    finally:
        del os.environ["PIP_NO_CACHE_DIR"]
    cached = []
    for _ in range(3):
        t0 = time.perf_counter()
        again = wheelhouse.build(("aws",), (sk_pin,), target=target)
        cached.append(time.perf_counter() - t0)
    assert again == out["sk"]["path"]
    out["sk"]["cached"] = statistics.median(cached)
    print(f"  build sk: cached {out['sk']['cached'] * 1000:.0f} ms (median of 3)")

    url = f"aws://cl-bench-wh-{os.getpid()}/wh?region=us-east-1&endpoint={box.endpoint}"
    backend = open_backend(url)
    t0 = time.perf_counter()
    first = wheelhouse.publish(backend, ("aws",), (sk_pin,), target)
    first_wall = time.perf_counter() - t0
    t0 = time.perf_counter()
    second = wheelhouse.publish(backend, ("aws",), (sk_pin,), target)
    second_wall = time.perf_counter() - t0
    print(f"  publish sk: first {first_wall:.1f} s ({first.uploaded} wheels, "
          f"{first.bytes / 1e6:.1f} MB), second {second_wall * 1000:.0f} ms "
          f"({second.uploaded} uploaded)")  # fmt: skip
    out["publish"] = (first, first_wall, second, second_wall)
    return out


# --------------------------------------------------------------------------- part 2


def one_boot(box, name: str, kind: str) -> dict:
    """Queue one task, ``up`` one instance, wait for the task; the boot's phases."""
    import cloudloop as cl
    from cloudloop.config import load_profile
    from cloudloop.providers import cluster_for
    from cloudloop.providers.boots import Boots

    t0 = time.time()
    ex = cl.Executor(profile=name)  # opens the backend: bucket, queue, key
    job = ex.map_job(first_task, [0])
    submitted = time.time()
    cluster = cluster_for(load_profile(name))
    before = set(box.history)
    up0 = time.time()
    report = cluster.up(1)
    up1 = time.time()
    lines = list(report.lines)
    if not report.ok or not any("started 1 of 1" in x for x in lines):
        raise RuntimeError(f"{name}: up did not start an instance:\n" + "\n".join(lines))
    pub = next((x for x in lines if "wheelhouse" in x), "")
    m = re.search(r"uploaded (\d+) wheels \(([\d.]+) MB\) \(([\d.]+) s\)", pub)
    publish = (int(m.group(1)), float(m.group(2)), float(m.group(3))) if m else None
    try:
        (result,) = job.results(timeout=600)
    except Exception:
        for mach in box.machines.values():
            if mach.instance_id not in before:
                print(mach.log()[-3000:], mach.worker_logs()[-3000:], sep="\n")
        raise
    done = time.time()
    boots = Boots(cluster.backend, cluster.name)

    def record():
        recs = [r for r in boots.records() if r.instance not in before]
        return recs[0] if recs and recs[0].has("workers") else None

    rec = wait(record, 60, f"{name}'s boot record to say 'workers'")
    at = {p: t for p, t, _ in rec.phases}
    mach = box.machines[rec.instance]
    opt = mach.root / "opt"
    venv_done = max(
        (p.stat().st_mtime for p in (opt / "venv" / "lib").glob("python*/site-packages/pip-*.dist-info/RECORD")),
        default=None,
    )  # fmt: skip
    fetched = opt / "wheels" / "install.txt"
    fetch_done = fetched.stat().st_mtime if fetched.exists() else None
    log = mach.log()
    fm = re.search(r"fetched (\d+) wheels \(([\d.]+) MB\)", log)
    assert result["prefix"].startswith(str(mach.root)), result  # ran on the machine
    if kind == "sk":
        assert result["sklearn"] is not None, result
    row = {
        "name": name,
        "instance": rec.instance,
        "submit": submitted - t0,
        "up": up1 - up0,
        "publish": publish,
        "up_to_launched": at["launched"] - up0,
        "launched_to_started": at["started"] - at["launched"],
        "started_to_python": at["python"] - at["started"],
        "python_to_environment": at["environment"] - at["python"],
        "venv": (venv_done - at["python"]) if venv_done else None,
        "fetch": (fetch_done - venv_done) if venv_done and fetch_done else None,
        "pip": (at["environment"] - fetch_done) if fetch_done else None,
        "fetched": (int(fm.group(1)), float(fm.group(2))) if fm else None,
        "environment_to_workers": at["workers"] - at["environment"],
        "workers_to_task": result["started"] - at["workers"],
        "environment_to_task": result["started"] - at["environment"],
        "launched_to_task": result["started"] - at["launched"],
        "up_to_task": result["started"] - up0,
        "import": result["imported"] - result["started"],
        "result_seen": done - result["started"],
        "sklearn": result["sklearn"],
        "python_detail": rec.detail("python"),
        "dnf": "trying the package manager" in log,
    }
    print(f"  {name}: up {row['up']:.1f} s, launch->task {row['launched_to_task']:.1f} s "
          f"(started +{row['launched_to_started']:.1f}, python +{row['started_to_python']:.1f}, "
          f"environment +{row['python_to_environment']:.1f}, workers "
          f"+{row['environment_to_workers']:.1f}, task +{row['workers_to_task']:.1f})")  # fmt: skip
    ex.shutdown()
    t_down = time.monotonic()
    cluster.down(purge=True)
    wait(lambda: mach.ended and not mach.host.pids(), 60, f"{rec.instance} to shut down")
    row["down"] = time.monotonic() - t_down
    return row


# --------------------------------------------------------------------------- report


def boot_table(rows: dict[str, list[dict]], labels: dict[str, str]) -> list[str]:
    kinds = list(rows)
    head = "| phase | " + " | ".join(labels[k] for k in kinds) + " |"
    lines = [head, "|---|" + "---:|" * len(kinds)]

    def line(title: str, key, fmt=med):
        cells = []
        for k in kinds:
            vals = [key(r) if callable(key) else r[key] for r in rows[k]]
            cells.append(fmt([v for v in vals if v is not None]))
        lines.append(f"| {title} | " + " | ".join(cells) + " |")

    line("client: `up` call (IAM/SG, publish, template, fleet request)", "up")
    line("&nbsp;&nbsp;of which publish to the cluster's empty store",
         lambda r: r["publish"][2] if r["publish"] else None)  # fmt: skip
    line("&nbsp;&nbsp;wheels uploaded (MB)",
         lambda r: r["publish"][1] if r["publish"] else None)  # fmt: skip
    line("`up` called → launched (client's record)", "up_to_launched")
    line("launched → started (simulator poll + namespace + IMDS + first report)",
         "launched_to_started")  # fmt: skip
    line("started → python (none on the image: fake `dnf install python3.11`)",
         "started_to_python")  # fmt: skip
    line("python → environment (venv + fetch + `pip install --no-index`)",
         "python_to_environment")  # fmt: skip
    line("&nbsp;&nbsp;venv created (with its pip)", "venv")
    line("&nbsp;&nbsp;wheels fetched from the store", "fetch")
    line("&nbsp;&nbsp;MB fetched", lambda r: r["fetched"][1] if r["fetched"] else None)
    line("&nbsp;&nbsp;`pip install --no-index`", "pip")
    line("environment → workers (2 started, 1 s liveness check, report)",
         "environment_to_workers")  # fmt: skip
    line("workers → first task started", "workers_to_task")
    line("environment → first task started (workers spawn, start up, first lease)",
         "environment_to_task")  # fmt: skip
    line("**launched → first task started**", "launched_to_task")
    line("**`up` called → first task started**", "up_to_task")
    line("in the task: `import sklearn`", "import")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3, help="fresh machines per profile")
    ap.add_argument("--write", action="store_true", help="update the section in --out")
    ap.add_argument("--out", default=str(HERE / "RESULTS.md"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_boot.py needs root (network namespaces)")
    sys.path.insert(0, str(TESTS))
    import netns

    why = netns.available()
    if why:
        raise SystemExit(f"bench_boot.py: {why}")
    from cloudbox import FAKE_KEYS, CloudBox

    argv = " ".join([".venv/bin/python", "benchmarks/bench_boot.py", *sys.argv[1:]])
    when = subprocess.run(["date", "-u"], capture_output=True, text=True).stdout.strip()
    sk_version = metadata.version("scikit-learn")
    sk_pin = f"scikit-learn=={sk_version}"
    os.environ.update(FAKE_KEYS)  # the client's keys; machines get none
    tmp = Path(tempfile.mkdtemp(prefix="cl-bench-boot-"))
    head, dirty = snapshot_tree(tmp / "tree")  # before cloudloop is imported
    os.environ["XDG_CACHE_HOME"] = str(tmp / "cache")  # cloudloop's and pip's caches: empty
    load = [os.getloadavg()[0]]
    t_start = time.monotonic()
    (tmp / "box").mkdir()
    box = CloudBox(tmp / "box").start()
    rows: dict[str, list[dict]] = {"sk": [], "bare": []}
    try:
        print(f"box: moto at {box.endpoint}; caches under {tmp / 'cache'}")
        print("wheelhouse:")
        wh = wheelhouses(sk_pin, box, tmp)
        client = tmp / "client"
        client.mkdir()
        toml = []
        for i in range(args.repeat):
            for kind, reqs in (("sk", f'["{sk_pin}"]'), ("bare", "[]")):
                name = f"boot-{kind}-{i + 1}"
                toml.append(PROFILE.format(name=name, bucket=f"cl-bench-{os.getpid()}-{kind}-{i + 1}",
                                           endpoint=box.endpoint, itype=INSTANCE_TYPE,
                                           requirements=reqs))  # fmt: skip
        (client / "cloudloop.toml").write_text("".join(toml))
        os.chdir(client)
        print("boots:")
        for i in range(args.repeat):
            for kind in ("sk", "bare"):
                load.append(os.getloadavg()[0])
                rows[kind].append(one_boot(box, f"boot-{kind}-{i + 1}", kind))
        if box.errors:
            print("simulator errors:", *box.errors[-5:], sep="\n  ")
    finally:
        os.chdir(ROOT)
        box.close()
        shutil.rmtree(tmp, ignore_errors=True)
    load.append(os.getloadavg()[0])
    total = time.monotonic() - t_start

    sk, bare = wh["sk"], wh["bare"]
    first, first_wall, second, second_wall = wh["publish"]
    target = wh["target"]
    n = args.repeat
    pip_note = (
        "pip's cache empty and off (`PIP_NO_CACHE_DIR=1`; "
        f"{sk['pip_cache'][0]} bytes before, {sk['pip_cache'][1]} after)"
    )
    wh_table = [
        "| step | environment | s | wheels | MB | cache state |",
        "|---|---|---:|---:|---:|---|",
        f"| `wheelhouse.build` cold | cloudloop[aws] + {sk_pin} | {sk['cold']:.1f} | "
        f"{sk['wheels']} | {sk['mb']:.1f} | no cloudloop cache; {pip_note} |",
        f"| `wheelhouse.build` cached | cloudloop[aws] + {sk_pin} | {sk['cached']:.3f} | "
        f"{sk['wheels']} | {sk['mb']:.1f} | the cold build's (a source digest + one stat) |",
        f"| `wheelhouse.build` cold | cloudloop[aws] alone | {bare['cold']:.1f} | "
        f"{bare['wheels']} | {bare['mb']:.1f} | as the first row, run after it (OS file cache warm) |",
        f"| `wheelhouse.publish` first | cloudloop[aws] + {sk_pin} | {first_wall:.1f} | "
        f"{first.uploaded} uploaded | {first.bytes / 1e6:.1f} | fresh bucket, build cached |",
        f"| `wheelhouse.publish` second | cloudloop[aws] + {sk_pin} | {second_wall:.3f} | "
        f"{second.uploaded} uploaded | 0 | manifest in the store: one listing |",
    ]
    labels = {
        "sk": f'`requirements = ["{sk_pin}"]`',
        "bare": "`requirements = []` (cloudloop alone)",
    }
    table = boot_table(rows, labels)
    every = rows["sk"] + rows["bare"]
    pythons = {re.sub(r"^\S*/", "", r["python_detail"]) for r in every}
    dnf = sum(r["dnf"] for r in every)
    local, other = sk["origins"]
    local_mb = sum(size for _, size in local) / 1e6
    indexes = ", ".join(f"`{x}`" for x in pip_indexes())
    lines = [
        SECTION,
        "",
        f"Produced by `{argv}` (`make bench-boot`, as root) on {when}; CPython "
        f"{platform.python_version()} on the client and on the machines, {os.cpu_count()} "
        f"cores, whole run {total / 60:.1f} min; 1-minute load average "
        f"{min(load):.1f}–{max(load):.1f} during the run. Cloud-in-a-box (tests/cloudbox.py): the "
        "box's S3, SQS, EC2 and IAM are moto_server in a network namespace on this machine, so "
        "every transfer (publish, fetch) goes over loopback and is faster than real S3. The box "
        "has no EC2 boot of its own: launched → started is the simulator's 0.3 s poll of "
        "DescribeInstances, making the namespace, starting its IMDS server and the boot "
        "agent's first report, not a real instance boot (on EC2 that phase is the instance's "
        "own boot, which this box does not measure). The image is AL2023-like: `python3` is "
        "3.9, so every boot installs python3.11 with the image's fake `dnf` (about 1 s); no "
        "machine reaches a package index. cloudloop is this development tree at "
        f"{head}{' with uncommitted changes' if dirty else ''}, copied at the start of the "
        "run (the client ran and the wheelhouses were built from that copy).",
        "",
        f"### Wheelhouse on the client ({target.python}, {target.arch}; one run each)",
        "",
        *wh_table,
        "",
        f"### Phases, median (range) of {n} fresh machine(s) per profile, seconds",
        "",
        *table,
        "",
        "How it was measured: each boot is a fresh cluster (profile) on a fresh bucket with "
        f"one `{INSTANCE_TYPE}` instance (2 vCPUs: 2 workers); its one-task job is queued "
        "before `up`, so the first task starts at the first lease. The client's wheelhouse "
        "cache is warm (the builds above) and the cluster's store is empty, so each `up` "
        "uploads the wheelhouse. Phase times are the boot record's (`Boots(backend, "
        "cluster).records()`: launched is written by the client after the fleet request, the "
        "others by the instance's boot agent when each phase ends) and the task's own "
        "`time.time()` when it starts; the machines share this machine's clock. The split of "
        "python → environment comes from file mtimes on the machine (the venv's pip RECORD, "
        "then the fetched wheelhouse's install.txt). The workers record is written after a "
        "1 s check that the workers are alive and the agent's report, while the workers "
        "already start: a negative workers → first task means the first task started "
        "before that record was written, so environment → first task is the row that "
        "times the workers' start-up and first lease. Boots ran one at a time, "
        "the two profiles alternating; the machine was terminated before the next began. "
        f"The python phase found {'; '.join(sorted(pythons))}, installed by the image's "
        f"`dnf` in {dnf} of {len(every)} boots.",
        "",
        f"pip's indexes here (its default, then `pip config list`): {indexes}. Of the cold "
        f"build's {sk['wheels']} wheels, {len(local)} ({local_mb:.1f} of {sk['mb']:.1f} MB: "
        f"{', '.join(n for n, _ in local) or 'none'}) lie on this machine's disk in those "
        "local indexes, so pip need not download them; the other "
        f"{len(other)} ({', '.join(n for n, _ in other)}) were downloaded from PyPI or "
        "built here (cloudloop, from the tree): a client that downloads every wheel "
        "builds its cold wheelhouse more slowly than the first row.",
        "",
    ]
    text = "\n".join(lines)
    print()
    print(text)
    if args.write:
        write_section(Path(args.out), SECTION, text)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
