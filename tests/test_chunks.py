"""cl.chunks: line-aligned byte ranges; every line read exactly once, locally and on S3."""

from __future__ import annotations

import random
import secrets

import pytest

import cloudloop as cl
from cloudloop.chunks import chunk_lines, read_chunk


def _random_text(rng: random.Random, lines: int, trailing_newline: bool) -> bytes:
    out = []
    for _ in range(lines):
        n = rng.choice([0, 1, 2, 5, 17, 40, 300, 2000])  # empty lines and lines > a chunk
        out.append(bytes(rng.choice(b"abcdefgh ,;\t\r") for _ in range(rng.randint(0, n))))
    text = b"\n".join(out)
    return text + b"\n" if trailing_newline and out else text


def _lines(data: bytes) -> list[bytes]:
    parts = data.split(b"\n")
    return parts[:-1] if parts and parts[-1] == b"" else parts


@pytest.mark.parametrize("seed", range(6))
def test_every_line_is_read_exactly_once(tmp_path, seed):
    rng = random.Random(seed)
    files = {}
    for i, (lines, trailing) in enumerate(
        [(rng.randint(1, 300), True), (rng.randint(1, 300), False), (0, False), (1, False)]
    ):
        data = _random_text(rng, lines, trailing)
        (tmp_path / f"f{i}.txt").write_bytes(data)
        files[str(tmp_path / f"f{i}.txt")] = data
    for size in [1, 2, 3, 7, 64, 333, 1000, 4096, 10**6]:
        records = cl.chunks(str(tmp_path / "*.txt"), size=size)
        assert [r["path"] for r in records] == sorted(r["path"] for r in records)
        for path, data in files.items():
            mine = [r for r in records if r["path"] == path]
            if not data:
                assert mine == [], "an empty file gives no chunk"
                continue
            # ranges tile the file, each starting at a line start
            assert mine[0]["start"] == 0 and mine[-1]["end"] == len(data)
            assert all(a["end"] == b["start"] for a, b in zip(mine, mine[1:]))
            assert all(r["start"] == 0 or data[r["start"] - 1] == ord("\n") for r in mine)
            assert all(r["end"] - r["start"] >= size for r in mine[:-1]), "no range is short"
            assert b"".join(read_chunk(r) for r in mine) == data
            got = [line for r in mine for line in chunk_lines(r, encoding=None)]
            assert got == _lines(data)


@pytest.mark.parametrize("seed", range(4))
def test_ranges_cut_anywhere_still_read_each_line_once(tmp_path, seed):
    rng = random.Random(100 + seed)
    data = _random_text(rng, rng.randint(1, 200), trailing_newline=bool(seed % 2))
    path = tmp_path / "data.txt"
    path.write_bytes(data)
    for _ in range(20):
        cuts = sorted(
            {0, len(data), *(rng.randrange(len(data) + 1) for _ in range(rng.randint(1, 30)))}
        )
        records = [{"path": str(path), "start": a, "end": b} for a, b in zip(cuts, cuts[1:])]
        assert b"".join(read_chunk(r) for r in records) == data
        assert [x for r in records for x in chunk_lines(r, encoding=None)] == _lines(data)


def test_sources_paths_dirs_and_clear_errors(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.csv").write_text("x\n1\n")
    (tmp_path / "d" / "b.csv").write_text("x\n2\n")
    by_dir = cl.chunks(tmp_path / "d", size="1MB")
    assert [r["path"].rsplit("/", 1)[1] for r in by_dir] == ["a.csv", "b.csv"]
    assert cl.chunks([str(tmp_path / "d" / "b.csv")]) == by_dir[1:]
    with pytest.raises(cl.ConfigError, match="does not exist"):
        cl.chunks(tmp_path / "nope.csv")
    with pytest.raises(cl.ConfigError, match="no file matches"):
        cl.chunks(str(tmp_path / "*.parquet"))
    with pytest.raises(cl.ConfigError, match="not a size"):
        cl.chunks(tmp_path / "d", size="big")


def _count(chunk):
    return sum(1 for _ in cl.chunk_lines(chunk)), cl.task_index()


def test_chunks_as_map_and_command_tasks(tmp_path, make_executor):
    rng = random.Random(7)
    data = _random_text(rng, 400, trailing_newline=True)
    (tmp_path / "big.txt").write_bytes(data)
    records = cl.chunks(tmp_path / "big.txt", size="4KB")
    assert len(records) > 5
    ex = make_executor(workers=2)
    counted = ex.map_job(_count, records).results()
    assert sum(n for n, _ in counted) == len(_lines(data))
    assert all(i is not None for _, i in counted)
    # a command that only knows byte offsets reads exactly the whole lines of its range
    cmd = "tail -c +$(({start} + 1)) {path} | head -c $(({end} - {start})) | wc -l"
    out = ex.command_job(cmd, records).results()
    assert sum(int(r["stdout"]) for r in out) == data.count(b"\n")


def test_s3_objects_listed_and_read_in_ranges(moto_endpoint, make_executor):
    import boto3

    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    bucket = f"cl-chunks-{secrets.token_hex(4)}"
    s3.create_bucket(Bucket=bucket)
    rng = random.Random(3)
    objects = {
        "flights/2007.csv": _random_text(rng, 200, True),
        "flights/2008.csv": _random_text(rng, 150, False),
        "flights/empty.csv": b"",
        "flights/notes.txt": b"not a csv\n",
        "other/2009.csv": b"a\nb\n",
    }
    for key, data in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=data)
    records = cl.chunks(f"s3://{bucket}/flights/*.csv", size="2KB", endpoint=moto_endpoint)
    paths = sorted({r["path"] for r in records})
    assert paths == [f"s3://{bucket}/flights/2007.csv", f"s3://{bucket}/flights/2008.csv"]
    assert all(r["endpoint"] == moto_endpoint for r in records)
    for path in paths:
        data = objects[path.split("/", 3)[3]]
        mine = [r for r in records if r["path"] == path]
        assert len(mine) > 1
        assert b"".join(read_chunk(r) for r in mine) == data
    counted = make_executor(workers=1).map_job(_count, records).results()  # workers read S3
    assert sum(n for n, _ in counted) == sum(
        len(_lines(objects[p.split("/", 3)[3]])) for p in paths
    )
    whole = cl.chunks(f"s3://{bucket}/flights/", size="1MB", endpoint=moto_endpoint)
    assert len(whole) == 3  # three objects with data under the prefix
    long = b"a\n" + b"x" * 10_000 + b"\nb\n" + b"y" * 3000  # lines longer than a chunk
    s3.put_object(Bucket=bucket, Key="long/one.txt", Body=long)
    cut = cl.chunks(f"s3://{bucket}/long/one.txt", size=1024, endpoint=moto_endpoint)
    assert [(r["start"], r["end"]) for r in cut] == [(0, 10_003), (10_003, 13_005)]
    assert b"".join(read_chunk(r) for r in cut) == long
    one = cl.chunks(f"s3://{bucket}/other/2009.csv", endpoint=moto_endpoint)
    assert list(chunk_lines(one[0])) == ["a", "b"]
    with pytest.raises(cl.ConfigError, match="no object matches"):
        cl.chunks(f"s3://{bucket}/nothing/*.csv", endpoint=moto_endpoint)
