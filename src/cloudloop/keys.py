"""Store key layout: the whole state of every job, as the store sees it.

::

    index/<job>                                  JSON {name, created}: lists jobs cheaply
    jobs/<job>/manifest                          signed JSON JobManifest
    jobs/<job>/fn/<ref>                          signed cloudpickle of a function (ref = its digest)
    jobs/<job>/files/<name>                      signed file shipped to command tasks
    jobs/<job>/inputs/<chunk>                    signed chunk payload (too big for a message, or split)
    jobs/<job>/sealed                            JSON {tasks, chunks}: submission finished
    jobs/<job>/cancelled                         the job was cancelled
    jobs/<job>/cancel/<index>                    one task was cancelled (Future.cancel)
    jobs/<job>/results/<lo>-<hi>-<nfail>-<nonce> signed pickled [Outcome] for tasks lo..hi
    jobs/<job>/logs/<lo>-<hi>-<nonce>            JSON {index: [[attempt, part, text], ...]}
    jobs/<job>/checkpoints/<index>               signed pickle from cl.checkpoint()
    jobs/<job>/outputs/<index>/<name>            signed file the task wrote in its output dir
    jobs/<job>/shared/<digest>                   signed pickle of a large argument many tasks
                                                 share (joblib batches), stored once
    jobs/<job>/starts/<index>/<worker>-<nonce>   a re-delivered task was started (poison detection)
    workers/<worker>                             JSON heartbeat
    control/paused                               workers take no new work while it exists
    clusters/<name>/instances/<id>               JSON ledger of an instance's price and life
    deadletter/<time>-<message>-<nonce>          raw bytes of a message that failed verification

Indices are zero-padded to 10 digits so keys sort in task order. A result
part's name says which tasks it holds and how many failed, so progress is
known from a listing alone, without reading a byte of results.
"""

from __future__ import annotations

import secrets

W = 10
PAUSED = "control/paused"


def nonce() -> str:
    return secrets.token_hex(4)


def job_prefix(job: str) -> str:
    return f"jobs/{job}/"


def index_entry(job: str) -> str:
    return f"index/{job}"


def manifest(job: str) -> str:
    return f"jobs/{job}/manifest"


def fn(job: str, ref: str) -> str:
    return f"jobs/{job}/fn/{ref}"


def file(job: str, name: str) -> str:
    return f"jobs/{job}/files/{name}"


def inputs(job: str, chunk: int) -> str:
    return f"jobs/{job}/inputs/{chunk:0{W}d}"


def sealed(job: str) -> str:
    return f"jobs/{job}/sealed"


def cancelled(job: str) -> str:
    return f"jobs/{job}/cancelled"


def cancel_task(job: str, index: int) -> str:
    return f"jobs/{job}/cancel/{index:0{W}d}"


def cancel_prefix(job: str) -> str:
    return f"jobs/{job}/cancel/"


def results_prefix(job: str) -> str:
    return f"jobs/{job}/results/"


def result(job: str, lo: int, hi: int, nfail: int) -> str:
    return f"jobs/{job}/results/{lo:0{W}d}-{hi:0{W}d}-{nfail}-{nonce()}"


def parse_result(key: str) -> tuple[int, int, int]:
    """(lo, hi, failures) from a result part key."""
    lo, hi, nfail, _ = key.rsplit("/", 1)[1].split("-")
    return int(lo), int(hi), int(nfail)


def logs_prefix(job: str) -> str:
    return f"jobs/{job}/logs/"


def logs(job: str, lo: int, hi: int) -> str:
    return f"jobs/{job}/logs/{lo:0{W}d}-{hi:0{W}d}-{nonce()}"


def parse_logs(key: str) -> tuple[int, int]:
    lo, hi, _ = key.rsplit("/", 1)[1].split("-")
    return int(lo), int(hi)


def checkpoint(job: str, index: int) -> str:
    return f"jobs/{job}/checkpoints/{index:0{W}d}"


def output(job: str, index: int, name: str) -> str:
    return f"jobs/{job}/outputs/{index:0{W}d}/{name}"


def outputs_prefix(job: str, index: int | None = None) -> str:
    return f"jobs/{job}/outputs/" + ("" if index is None else f"{index:0{W}d}/")


def parse_output(key: str) -> tuple[int, str]:
    """(task index, file name) from an output key."""
    index, name = key.split("/outputs/", 1)[1].split("/", 1)
    return int(index), name


def shared(job: str, digest: str) -> str:
    return f"jobs/{job}/shared/{digest}"


def starts_prefix(job: str, index: int) -> str:
    return f"jobs/{job}/starts/{index:0{W}d}/"


def start(job: str, index: int, worker: str) -> str:
    return f"{starts_prefix(job, index)}{worker}-{nonce()}"


def worker(wid: str) -> str:
    return f"workers/{wid}"


def deadletter(message_id: str, at: float) -> str:
    return f"deadletter/{int(at)}-{message_id}-{nonce()}"
