"""cl.chunks(..., header=True): every range of a CSV knows its columns, none holds the header."""

from __future__ import annotations

import csv
import io
import random
import secrets

import pytest

import cloudloop as cl
from cloudloop.errors import ConfigError


def _csv(rng: random.Random, rows: int, newline: str = "\n", trailing: bool = True) -> bytes:
    out = io.StringIO()
    w = csv.writer(out, lineterminator=newline)
    w.writerow(["id", "carrier, name", "delay"])  # a quoted column name holds a comma
    for i in range(rows):
        w.writerow([i, rng.choice(["AA", "UA", "DL"]), rng.randint(-10, 300)])
    text = out.getvalue()
    return (text if trailing else text.rstrip("\r\n")).encode()


CASES = [
    # (name, rows, newline, trailing newline, BOM, chunk size)
    ("lf", 500, "\n", True, False, "1KB"),
    ("crlf", 500, "\r\n", True, False, "700"),
    ("no trailing newline", 300, "\n", False, False, "512"),
    ("utf-8 BOM", 200, "\n", True, True, "256"),
    ("chunk of one byte", 40, "\n", True, False, 1),
    ("one chunk", 100, "\n", True, False, "1MB"),
    ("header only", 0, "\n", True, False, "1KB"),
]


@pytest.mark.parametrize("name,rows,newline,trailing,bom,size", CASES, ids=[c[0] for c in CASES])
def test_every_row_once_with_its_columns_and_no_header_row(
    tmp_path, name, rows, newline, trailing, bom, size
):
    data = (b"\xef\xbb\xbf" if bom else b"") + _csv(random.Random(rows), rows, newline, trailing)
    path = tmp_path / "flights.csv"
    path.write_bytes(data)
    records = cl.chunks(path, size=size, header=True)
    if rows == 0:
        assert records == [], "a file holding only its header has no rows to give"
        return
    assert all(r["columns"] == ["id", "carrier, name", "delay"] for r in records)
    assert all(b"carrier" not in cl.read_chunk(r) for r in records), "no range holds the header"
    got = [row for r in records for row in cl.chunk_rows(r)]
    expected = list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))
    assert got == expected
    assert [int(g["id"]) for g in got] == list(range(rows))
    # the ranges tile everything after the header line
    first = data.index(b"\n") + 1
    assert records[0]["start"] == first and records[-1]["end"] == len(data)
    assert all(a["end"] == b["start"] for a, b in zip(records, records[1:]))


def test_header_ranges_as_tasks_and_plain_ranges_unchanged(tmp_path, make_executor):
    data = _csv(random.Random(1), 400)
    path = tmp_path / "f.csv"
    path.write_bytes(data)
    plain = cl.chunks(path, size="1KB")
    assert plain[0]["start"] == 0 and "columns" not in plain[0], "header=False is as before"
    records = cl.chunks(path, size="1KB", header=True)
    ex = make_executor(workers=1)
    delays = ex.map_job(_total_delay, records).results()
    assert sum(delays) == sum(int(r["delay"]) for r in csv.DictReader(io.StringIO(data.decode())))


def _total_delay(chunk):
    return sum(int(row["delay"]) for row in cl.chunk_rows(chunk))


BAD = [
    ("a range without columns", {"path": "/x", "start": 0, "end": 1}, "header=True"),
    ("columns not a list", {"path": "/x", "start": 0, "end": 1, "columns": "a,b"}, "header=True"),
]


@pytest.mark.parametrize("name,chunk,says", BAD, ids=[b[0] for b in BAD])
def test_chunk_rows_refuses_a_range_without_column_names(name, chunk, says):
    with pytest.raises(ConfigError, match=says):
        list(cl.chunk_rows(chunk))


def test_a_blank_header_line_is_a_clear_error(tmp_path):
    path = tmp_path / "blank.csv"
    path.write_bytes(b"\n1,2\n")
    with pytest.raises(ConfigError, match="first line names no columns"):
        cl.chunks(path, header=True)


def test_s3_objects_with_a_header(moto_endpoint):
    import boto3

    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    bucket = f"cl-header-{secrets.token_hex(4)}"
    s3.create_bucket(Bucket=bucket)
    data = _csv(random.Random(2), 300)
    s3.put_object(Bucket=bucket, Key="f/2008.csv", Body=data)
    records = cl.chunks(f"s3://{bucket}/f/*.csv", size="1KB", endpoint=moto_endpoint, header=True)
    assert len(records) > 2 and records[0]["start"] == data.index(b"\n") + 1
    got = [row for r in records for row in cl.chunk_rows(r)]
    assert got == list(csv.DictReader(io.StringIO(data.decode())))
