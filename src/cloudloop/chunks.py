"""Big files as many tasks: line-aligned byte ranges of files and S3 objects.

::

    cl.chunks("s3://bucket/flights/*.csv", size="64MB")
      │ list the objects (or glob local paths), then for each one:
      │   cut at every `size` bytes, move each cut to the start of the next line
      ▼
    [{"path": "s3://bucket/flights/2008.csv", "start": 0,        "end": 67108901},
     {"path": "s3://bucket/flights/2008.csv", "start": 67108901, "end": 134217800}, ...]
      │ one task per record: ex.map_job(fn, chunks) or a command template
      ▼                      ("python count.py {path} {start} {end}")
    task: cl.read_chunk(c) / cl.chunk_lines(c) read only bytes [start, end)

Every range starts at the start of a line and ends just after a newline (or
at the end of the object), so concatenating the ranges gives the object back
and every line is in exactly one range. A tool that only knows byte offsets
(``tail -c +$((start+1)) | head -c $((end-start))``, R's ``seek``) reads whole
lines. The readers also accept ranges cut anywhere: a range then holds the
lines that *start* inside it (a line running past ``end`` is read to its end,
and a partial line at ``start`` belongs to the range before), which again
reads every line exactly once.

Local paths are made absolute (workers on this machine, or on a shared file
system, read them in place). ``s3://`` URLs are listed and read with boto3;
``endpoint=`` (kept in each record, so workers use it too) points at an
S3-compatible service, and boto3's own settings (``AWS_ENDPOINT_URL_S3``,
profiles, instance roles) apply otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor

# The package imports this module eagerly (``cl.chunks`` is its function), so
# what only planning needs (glob, fnmatch, threads, the size parser) is
# imported there.

_SCAN = 64 << 10  # bytes read at a time while looking for the end of a line
_GLOB = "*?["


class _Local:
    def __init__(self, path: str):
        self.path = path

    def size(self) -> int:
        return os.path.getsize(self.path)

    def read(self, offset: int, n: int) -> bytes:
        with open(self.path, "rb") as f:
            return os.pread(f.fileno(), n, offset)


class _S3:
    def __init__(self, url: str, endpoint: str | None = None, client: Any = None, size: int = -1):
        self.bucket, _, self.key = url[len("s3://") :].partition("/")
        self.client = client or _s3_client(endpoint)
        self._size = size

    def size(self) -> int:
        if self._size < 0:
            head = self.client.head_object(Bucket=self.bucket, Key=self.key)
            self._size = int(head["ContentLength"])
        return self._size

    def read(self, offset: int, n: int) -> bytes:
        stop = min(offset + n, self.size())
        if stop <= offset:
            return b""
        rng = f"bytes={offset}-{stop - 1}"
        return self.client.get_object(Bucket=self.bucket, Key=self.key, Range=rng)["Body"].read()


def _s3_client(endpoint: str | None) -> Any:
    try:
        import boto3
    except ImportError as e:
        raise ImportError("s3:// chunks need boto3: pip install 'cloudloop[aws]'") from e
    return boto3.client("s3", endpoint_url=endpoint)


def _source(chunk: dict[str, Any]) -> _Local | _S3:
    path = chunk["path"]
    if str(path).startswith("s3://"):
        return _S3(path, chunk.get("endpoint"))
    return _Local(path)


def _next_line_start(src: _Local | _S3 | _Shifted, pos: int, size: int) -> int:
    """The first line start at or after ``pos`` (``size`` when there is none)."""
    if pos <= 0:
        return 0
    at, step = pos - 1, _SCAN  # a line starts at pos when the byte before it is a newline
    while at < size:
        block = src.read(at, step)
        if not block:
            break
        i = block.find(b"\n")
        if i >= 0:
            return at + i + 1
        at += len(block)
        step = min(step * 2, 16 << 20)
    return size


# ---------------------------------------------------------------- planning


def _expand_local(pattern: str) -> list[str]:
    import glob

    path = Path(pattern).expanduser()
    if any(c in pattern for c in _GLOB):
        found = sorted(glob.glob(str(path), recursive=True))
        files = [os.path.abspath(p) for p in found if os.path.isfile(p)]
    elif path.is_dir():
        files = sorted(str(p.absolute()) for p in path.rglob("*") if p.is_file())
    elif path.is_file():
        files = [str(path.absolute())]
    else:
        raise ConfigError(f"{pattern!r} does not exist (expected a file, a directory or a glob)")
    if not files:
        raise ConfigError(f"no file matches {pattern!r}")
    return files


def _expand_s3(url: str, client: Any) -> list[tuple[str, int]]:
    import fnmatch

    bucket, _, key = url[len("s3://") :].partition("/")
    if not bucket:
        raise ConfigError(
            f"{url!r} has no bucket; expected s3://bucket/key or s3://bucket/prefix/*"
        )
    glob_at = min((key.find(c) for c in _GLOB if c in key), default=-1)
    prefix = key if glob_at < 0 else key[:glob_at]
    whole = not key or key.endswith("/")  # a "folder": every object under it
    out = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            k = obj["Key"]
            if glob_at >= 0:
                hit = fnmatch.fnmatchcase(k, key)
            else:
                hit = whole or k == key or k.startswith(key + "/")
            if hit and not k.endswith("/"):
                out.append((f"s3://{bucket}/{k}", int(obj["Size"])))
    if not out:
        raise ConfigError(f"no object matches {url!r}")
    return out


def _ranges(src: _Local | _S3 | _Shifted, size: int, step: int) -> Iterator[tuple[int, int]]:
    """Cut at ``pos + step`` moved to the next line start, then go on from there."""
    pos = 0
    while pos < size:
        end = _next_line_start(src, pos + step, size) if pos + step < size else size
        yield pos, end
        pos = end


class _Shifted:
    """A source read from ``offset`` on: the ranges of what follows a header line."""

    def __init__(self, src: _Local, offset: int):
        self.src, self.offset = src, offset

    def read(self, offset: int, n: int) -> bytes:
        return self.src.read(offset + self.offset, n)


def _cuts(pool: ThreadPoolExecutor, src: _S3, size: int, step: int) -> list[Future]:
    """Every multiple of ``step`` moved to the next line start, all looked up at once:
    on S3 each is a small ranged GET, and 16 at a time hide their latency."""
    return [pool.submit(_next_line_start, src, at, size) for at in range(step, size, step)]


def _header(src: _Local | _S3, size: int, where: str) -> tuple[int, list[str]]:
    """Where a CSV file's first line ends, and its column names (read as CSV, so a
    quoted name may hold a comma)."""
    import csv

    end = _next_line_start(src, 1, size)
    line = src.read(0, end).decode("utf-8-sig", errors="strict").rstrip("\r\n")
    columns = next(csv.reader([line]), [])
    if not columns or not any(c.strip() for c in columns):
        raise ConfigError(f"{where}: header=True, but its first line names no columns")
    return end, columns


def chunks(
    sources: str | os.PathLike | Iterable[str | os.PathLike],
    size: int | str = "64MB",
    endpoint: str | None = None,
    header: bool = False,
) -> list[dict[str, Any]]:
    """Line-aligned byte ranges of files or S3 objects, about ``size`` bytes each.

    Args:
        sources: a path, directory, glob (``data/**/*.jsonl``) or ``s3://bucket/key``
            URL (globs allowed in the key), or a list of them.
        size: bytes per range (``"64MB"``, ``"512KB"``, an int): each cut is moved
            to the next line start, so a range is about that long (a line longer
            than that makes its range longer; lines are never split).
        endpoint: an S3-compatible endpoint URL for ``s3://`` sources.
        header: the files are CSV with a header line: no range holds that line
            (the first starts after it), and every record carries the file's
            column names as ``"columns"``; :func:`chunk_rows` reads a range as
            dicts by them. A file holding only its header gives no range.

    Returns:
        A list of ``{"path", "start", "end"}`` records (plus ``"endpoint"`` when
        given, ``"columns"`` with ``header=True``), in file order; empty files give none. Pass them to
        ``map``/``map_job``, or to a command template (``{path} {start} {end}``).

    Raises:
        ConfigError: a source matches nothing, or ``size`` is not a size.
    """
    from concurrent.futures import ThreadPoolExecutor

    from .config import parse_size

    step = parse_size(size, "chunk size")
    if not step or step <= 0:
        raise ConfigError(f"chunk size must be positive, not {size!r}")
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    client = None
    files: list[_Local | _S3] = []
    for s in map(str, sources):
        if s.startswith("s3://"):
            client = client or _s3_client(endpoint)
            files += [_S3(u, client=client, size=n) for u, n in _expand_s3(s, client)]
        else:
            files += [_Local(p) for p in _expand_local(s)]

    out: list[dict[str, Any]] = []
    with ThreadPoolExecutor(16) as pool:
        planned = [(src, src.size()) for src in files]
        cuts = [_cuts(pool, src, n, step) if isinstance(src, _S3) else [] for src, n in planned]
        for (src, n), found in zip(planned, cuts):
            name = src.path if isinstance(src, _Local) else f"s3://{src.bucket}/{src.key}"
            first, extra = 0, dict[str, Any]()
            if header and n:
                first, columns = _header(src, n, name)
                extra["columns"] = columns
            if isinstance(src, _Local):
                ranges = [
                    (a + first, b + first)
                    for a, b in _ranges(_Shifted(src, first), n - first, step)
                ]
            else:  # a line longer than step can swallow a cut: equal cuts make one range
                bounds = sorted({first, n, *(c for c in (f.result() for f in found) if c > first)})
                ranges = [(a, b) for a, b in zip(bounds, bounds[1:]) if a < b]
                if endpoint:
                    extra["endpoint"] = endpoint
            out += [{"path": name, "start": a, "end": b, **extra} for a, b in ranges]
    return out


# ---------------------------------------------------------------- reading


def read_chunk(chunk: dict[str, Any]) -> bytes:
    """The bytes of every line that starts in ``[start, end)`` of ``chunk["path"]``.

    For records from :func:`chunks` that is exactly bytes ``[start, end)``.
    """
    src = _source(chunk)
    start, end = int(chunk["start"]), int(chunk["end"])
    size = src.size()
    end = min(end, size)
    start = _next_line_start(src, start, size)
    if start >= end:
        return b""
    data = src.read(start, end - start)
    if data and not data.endswith(b"\n") and end < size:  # the last line runs past end
        data += src.read(end, _next_line_start(src, end + 1, size) - end)
    return data


def chunk_lines(chunk: dict[str, Any], encoding: str | None = "utf-8") -> Iterator[Any]:
    """The lines of a chunk (see :func:`read_chunk`), without their newlines.

    ``encoding=None`` yields ``bytes``.
    """
    data = read_chunk(chunk)
    if not data:
        return
    lines = data.split(b"\n")
    if lines[-1] == b"":  # the chunk ended with a newline
        lines.pop()
    for line in lines:
        yield line if encoding is None else line.decode(encoding)


def chunk_rows(chunk: dict[str, Any], encoding: str = "utf-8") -> Iterator[dict[str, str]]:
    """The CSV rows of a range from ``cl.chunks(..., header=True)``, as dicts keyed by
    the file's column names (``csv.DictReader`` on the range's lines).

    A record without ``"columns"`` (made without ``header=True``) is refused rather
    than read with its first row taken as the header.
    """
    import csv

    columns = chunk.get("columns")
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise ConfigError(
            "chunk_rows needs a range from cl.chunks(..., header=True): it carries the "
            "column names; for other ranges read cl.chunk_lines(chunk)"
        )
    yield from csv.DictReader(chunk_lines(chunk, encoding), fieldnames=columns)


__all__ = ["chunk_lines", "chunk_rows", "chunks", "read_chunk"]
