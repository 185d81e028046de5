"""Store key layout: the whole state of every job, as the store sees it.

::

    index/<job>                                  signed JSON {name, created, kind}: lists jobs cheaply
    jobs/<job>/manifest                          signed JSON JobManifest
    jobs/<job>/fn/<ref>                          signed cloudpickle of a function (ref = its digest)
    jobs/<job>/files/<name>                      signed file shipped to command tasks
    jobs/<job>/inputs/<chunk>                    signed chunk payload (too big for a message, or split)
    jobs/<job>/chunks/<c0>-<c1>-<lo>-<hi>        signed copies of the queue messages of chunks
                                                 c0..c1 (tasks lo..hi), as sent: what a retry
                                                 sends again (one record per queue batch)
    jobs/<job>/cachekeys/<chunk>                 signed JSON [task cache key, ...] of a cached
                                                 job's chunk, in task order (for its workers)
    jobs/<job>/retry-fn                          signed JSON {ref}: the fixed function the job's
                                                 retries run (Job.retry(fn=...))
    jobs/<job>/sealed                            signed JSON {tasks, chunks}: submission finished
    jobs/<job>/cancelled                         signed JSON {at}: the job was cancelled
    jobs/<job>/finished                          signed JSON {at}: when it finished (first seen)
    jobs/<job>/claims/<index>                    signed "run" or "cancel", created once (if
                                                 absent): a worker about to run a task of an
                                                 Executor's submit() job, or the client
                                                 cancelling it; whoever comes first wins
    jobs/<job>/results/<lo>-<hi>-<nfail>-<nonce> signed outcome rows for tasks lo..hi (a
                                                 nonce "cached..." for rows taken from the cache)
    jobs/<job>/logs/<lo>-<hi>-<nonce>            signed JSON {index: [[attempt, part, text], ...]}
    jobs/<job>/checkpoints/<index>               signed pickle from cl.checkpoint()
    jobs/<job>/outputs/<index>/<name>            signed file the task wrote in its output dir
    jobs/<job>/shared/<digest>                   signed pickle of a large argument many tasks
                                                 share (joblib batches), stored once
    jobs/<job>/starts/<index>/<worker>-<nonce>   signed: a re-delivered task was started
                                                 (poison detection)
    jobs/<job>/aside/<worker>                    signed JSON SetAside {worker, needs, have, at}:
                                                 the worker lacks pins the job requires and
                                                 leaves its tasks alone (written once)
    cache/<fkey>/about                           signed JSON {name, kind, created}: what fkey is
    cache/<fkey>/<at>-<lo>-<hi>-<n>-<nonce>-<job> signed pack of n cached outcomes (tasks lo..hi
                                                 of job) under their task keys (cloudloop.cache)
    workers/<worker>                             signed JSON heartbeat
    control/paused                               signed: workers take no new work while it exists
    control/probe/<who>                          written and removed at once: does the store take writes?
    clusters/<name>/instances/<id>               signed JSON LedgerRecord: an EC2 instance's
                                                 price and life (the cluster's bill)
    clusters/<name>/boots/<id>                   signed JSON BootRecord: an EC2 instance's boot
                                                 phases, or why it failed (providers/boots.py)
    clusters/<name>/boots-reset                  signed JSON {at}: boots that failed before
                                                 this do not hold launches back (resume)
    clusters/<profile>/ssh/<host>/<tag>          signed JSON {host, tag, pids, workers, started,
                                                 by}: workers an ssh profile started there
    wheelhouse/<digest>/files/<wheel>            a wheel, as pip built it (checked against
                                                 the manifest's SHA-256 before use)
    wheelhouse/<digest>/manifest                 signed JSON {files: {wheel: sha256}, install,
                                                 python, arch}: written last
    deadletter/<time>-<message>-<nonce>          raw bytes of a message that failed verification
                                                 or kept breaking its workers (never acted on)
    deadletter/<time>-<message>-<nonce>.why      signed JSON {at, why, worker}: the reason

Indices are zero-padded to 10 digits so keys sort in task order. A result
part's name says which tasks it holds and how many failed, so progress is
known from a listing alone, without reading a byte of results. Every blob a
client or worker acts on is signed for its own key name (see
:mod:`cloudloop.codec`), so none can be copied from one place to another.

Names that come from outside (a job id typed on the command line, a worker's
host name) are checked here before they become part of a key.
"""

from __future__ import annotations

import os
import re
from urllib.parse import quote, unquote

from .errors import JobNotFound

W = 10
PAUSED = "control/paused"
INDEX = "index/"
WORKERS = "workers/"
DEADLETTER = "deadletter/"
CLUSTERS = "clusters/"
CACHE = "cache/"


def nonce() -> str:
    # what secrets.token_hex(4) returns; hashlib and secrets (OpenSSL: ~4 MB of RSS
    # and ~3 ms) are not imported here, as a task runner needs neither
    return os.urandom(4).hex()


_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_NAME_PART = re.compile(r"[^A-Za-z0-9_.=+@-]+")
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def check_job_id(job: str) -> str:
    """``job`` if it can be a job id, else JobNotFound saying what one looks like."""
    if not isinstance(job, str) or not _JOB_ID.match(job) or ".." in job:
        shown = repr(job)[:80]
        raise JobNotFound(
            f"{shown} is not a job id (ids look like 20261123-140827-b49288); "
            "`cloudloop status` lists the jobs"
        )
    return job


def safe_name(text: str, limit: int = 64) -> str:
    """``text`` made usable inside a key: other characters become '_'."""
    return _NAME_PART.sub("_", text)[:limit].strip(".") or "_"


def cluster_dir(name: str) -> str:
    """A cluster's name as one path component (its pid files, its start records),
    different for different names: a plain name (``[A-Za-z0-9_.-]``, at most 64,
    not ``.`` or ``..``) as it is, any other as its safe characters, ``=`` (which
    no plain name holds) and a digest of the whole name."""
    if _PLAIN_NAME.fullmatch(name) and name not in (".", ".."):
        return name
    import hashlib

    digest = hashlib.sha256(name.encode(errors="surrogatepass")).hexdigest()[:16]
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)[:40] + "=" + digest


def job_prefix(job: str) -> str:
    return f"jobs/{job}/"


def finished(job: str) -> str:
    return f"jobs/{job}/finished"


def claim(job: str, index: int) -> str:
    return f"jobs/{job}/claims/{index:0{W}d}"


def claims_prefix(job: str) -> str:
    return f"jobs/{job}/claims/"


def index_entry(job: str) -> str:
    return f"index/{job}"


def index_job(key: str) -> str:
    """The job id an ``index/<job>`` key names (as listed: check it before use)."""
    return key.rsplit("/", 1)[1]


def manifest(job: str) -> str:
    return f"jobs/{job}/manifest"


def fn(job: str, ref: str) -> str:
    return f"jobs/{job}/fn/{ref}"


def file(job: str, name: str) -> str:
    """A shipped file's key; ``name`` is a relative path, encoded as output names are."""
    return f"jobs/{job}/files/" + "/".join(map(_encode_part, name.split("/")))


def inputs(job: str, chunk: int) -> str:
    return f"{inputs_prefix(job)}{chunk:0{W}d}"


def inputs_prefix(job: str) -> str:
    return f"jobs/{job}/inputs/"


def sealed(job: str) -> str:
    return f"jobs/{job}/sealed"


def cancelled(job: str) -> str:
    return f"jobs/{job}/cancelled"


def results_prefix(job: str) -> str:
    return f"jobs/{job}/results/"


def result(job: str, lo: int, hi: int, nfail: int, cached: bool = False) -> str:
    tag = "cached" if cached else ""
    return f"jobs/{job}/results/{lo:0{W}d}-{hi:0{W}d}-{nfail}-{tag}{nonce()}"


def is_cached_part(key: str) -> bool:
    """Whether a result part holds outcomes taken from the cache (by its name)."""
    return key.rsplit("-", 1)[-1].startswith("cached")


def chunk_record(job: str, first: int, last: int, lo: int, hi: int) -> str:
    return f"jobs/{job}/chunks/{first:0{W}d}-{last:0{W}d}-{lo:0{W}d}-{hi:0{W}d}"


def chunks_prefix(job: str) -> str:
    return f"jobs/{job}/chunks/"


def parse_chunk_record(key: str) -> tuple[int, int, int, int]:
    """(first chunk, last chunk, lo, hi) from a chunk record's key (ValueError if it
    is not one)."""
    first, last, lo, hi = (int(x) for x in key.rsplit("/", 1)[1].split("-"))
    if not (0 <= first <= last and 0 <= lo <= hi):
        raise ValueError(f"{key!r} is not a chunk record key")
    return first, last, lo, hi


def cachekeys(job: str, chunk: int) -> str:
    return f"jobs/{job}/cachekeys/{chunk:0{W}d}"


_CACHE_KEY = re.compile(r"[0-9a-f]{32}")


def check_cache_key(key: str) -> str:
    if not isinstance(key, str) or not _CACHE_KEY.fullmatch(key):
        raise ValueError(f"{str(key)[:80]!r} is not a cache key (32 hex digits)")
    return key


def cache_prefix(fkey: str | None = None) -> str:
    return CACHE + ("" if fkey is None else f"{check_cache_key(fkey)}/")


def cache_about(fkey: str) -> str:
    return f"{cache_prefix(fkey)}about"


def cache_pack(fkey: str, at: float, lo: int, hi: int, n: int, job: str) -> str:
    return f"{cache_prefix(fkey)}{int(at):0{W}d}-{lo:0{W}d}-{hi:0{W}d}-{n}-{nonce()}-{job}"


def parse_cache_pack(key: str) -> tuple[str, float, int, int, int, str] | None:
    """(fkey, at, lo, hi, n, job) of a cache pack's key as listed, else None (the
    ``about`` record, or a name no worker wrote). The job is as listed: text only."""
    parts = key.split("/")
    if len(parts) != 3 or parts[0] + "/" != CACHE or not _CACHE_KEY.fullmatch(parts[1]):
        return None
    fields = parts[2].split("-", 5)
    if len(fields) != 6 or not all(f.isdigit() for f in fields[:4]) or not fields[5]:
        return None
    at, lo, hi, n = (int(f) for f in fields[:4])
    return (parts[1], float(at), lo, hi, n, fields[5]) if lo <= hi else None


def parse_result(key: str) -> tuple[int, int, int]:
    """(lo, hi, failures) from a result part key (ValueError if it is not one)."""
    lo, hi, nfail, _ = key.rsplit("/", 1)[1].split("-")
    span = int(lo), int(hi), int(nfail)
    if not 0 <= span[0] <= span[1] or span[2] < 0:
        raise ValueError(f"{key!r} is not a result part key")
    return span


def logs_prefix(job: str) -> str:
    return f"jobs/{job}/logs/"


def logs(job: str, lo: int, hi: int) -> str:
    return f"jobs/{job}/logs/{lo:0{W}d}-{hi:0{W}d}-{nonce()}"


def parse_logs(key: str) -> tuple[int, int]:
    """(lo, hi) from a log part key (ValueError if it is not one)."""
    lo, hi, _ = key.rsplit("/", 1)[1].split("-")
    if not 0 <= int(lo) <= int(hi):
        raise ValueError(f"{key!r} is not a log part key")
    return int(lo), int(hi)


def checkpoint(job: str, index: int) -> str:
    return f"jobs/{job}/checkpoints/{index:0{W}d}"


def output(job: str, index: int, name: str) -> str:
    """The key of an output file; ``name`` (a relative path, any characters) is
    percent-encoded part by part, so ``my results.csv`` or ``.hidden`` are fine."""
    return f"jobs/{job}/outputs/{index:0{W}d}/" + "/".join(map(_encode_part, name.split("/")))


def outputs_prefix(job: str, index: int | None = None) -> str:
    return f"jobs/{job}/outputs/" + ("" if index is None else f"{index:0{W}d}/")


def parse_output(key: str) -> tuple[int, str]:
    """(task index, file name) from an output key."""
    index, name = key.split("/outputs/", 1)[1].split("/", 1)
    return int(index), "/".join(unquote(p) for p in name.split("/"))


def _encode_part(part: str) -> str:
    if part in ("", ".", ".."):
        raise ValueError(f"{part!r} cannot be part of a file name")
    text = quote(part, safe="_=+@-.")
    return "%2E" + text[1:] if text.startswith(".") else text


def shared(job: str, digest: str) -> str:
    return f"jobs/{job}/shared/{digest}"


def starts_prefix(job: str, index: int) -> str:
    return f"jobs/{job}/starts/{index:0{W}d}/"


def starts_all(job: str) -> str:
    return f"jobs/{job}/starts/"


def retry_fn(job: str) -> str:
    """Which function the job's last retry with a fixed function ran (signed JSON)."""
    return f"jobs/{job}/retry-fn"


def start(job: str, index: int, worker: str) -> str:
    return f"{starts_prefix(job, index)}{worker}-{nonce()}"


def aside_prefix(job: str) -> str:
    return f"jobs/{job}/aside/"


def aside(job: str, worker: str) -> str:
    """Where ``worker`` says why it leaves the job's tasks alone."""
    return f"{aside_prefix(job)}{safe_name(worker, 200)}"


def probe(who: str) -> str:
    """A throwaway key a worker or client writes to learn whether the store takes writes."""
    return f"control/probe/{safe_name(who)}"


def worker(wid: str) -> str:
    return f"workers/{wid}"


def deadletter(message_id: str, at: float) -> str:
    return f"deadletter/{int(at)}-{message_id}-{nonce()}"


def boots_prefix(cluster: str) -> str:
    return f"{CLUSTERS}{cluster_dir(cluster)}/boots/"


def boot(cluster: str, instance: str) -> str:
    return boots_prefix(cluster) + safe_name(instance)


def parse_boot(key: str) -> tuple[str, str] | None:
    """(cluster dir, instance) if ``key``, as listed under ``clusters/``, is a boot record's
    (``clusters/<dir>/boots/<instance>``), else None: not a ledger, an SSH start record
    or the boots' reset record. Both parts are as listed: show them only as text."""
    parts = key.split("/")
    if len(parts) != 4 or parts[0] + "/" != CLUSTERS or parts[2] != "boots":
        return None
    return (parts[1], parts[3]) if parts[1] and parts[3] else None


def boots_reset(cluster: str) -> str:
    return f"{CLUSTERS}{cluster_dir(cluster)}/boots-reset"


def wheelhouse_prefix(digest: str) -> str:
    return f"wheelhouse/{digest}/"


def wheelhouse_manifest(digest: str) -> str:
    return f"wheelhouse/{digest}/manifest"


def wheelhouse_file(digest: str, wheel: str) -> str:
    return f"wheelhouse/{digest}/files/{wheel}"


def deadletter_reason(name: str) -> str:
    """The key of the reason record kept beside the dead-lettered message ``name``."""
    return f"{name}.why"


def is_deadletter_reason(name: str) -> bool:
    return name.endswith(".why")


def ssh_starts(profile: str, host: str | None = None) -> str:
    """Where an ssh profile records the workers it started (per host, per start)."""
    base = f"clusters/{profile}/ssh/"
    return base + (re.sub(r"[^A-Za-z0-9_.=+@-]", "_", host) + "/" if host else "")


def ledger(cluster: str, instance: str) -> str:
    """An instance's bill record in a cluster's ledger."""
    return f"clusters/{cluster}/instances/{instance}"


def ledger_prefix(cluster: str) -> str:
    return f"clusters/{cluster}/instances/"


def is_ledger(key: str) -> bool:
    """Whether a key listed under ``clusters/`` is an instance's bill record (not, say,
    an SSH start record)."""
    return key.startswith(CLUSTERS) and "/instances/" in key
