"""A threaded HTTP proxy in front of an AWS API server that refuses what it is told to.

::

    boto3 (endpoint = proxy.endpoint) ──HTTP──► AwsFaults ──HTTP──► moto_server
                                                  │
                                                  ├─ every request forwarded unchanged, any
                                                  │  method, bodies streamed both ways (S3
                                                  │  objects, SQS, EC2, IAM)
                                                  ├─ fail(action, code, message, status, times):
                                                  │  answer that action with the service's own
                                                  │  error body instead (EC2's <Response><Errors>,
                                                  │  IAM's <ErrorResponse>, JSON's __type)
                                                  └─ CreateFleet only:
                                                     refuse_pools: take pools out of the request
                                                       and add EC2's errorSet entries for them
                                                     deliver_at_most: lower the target capacity
                                                     end_at_once: terminate (or stop) what the
                                                       fleet just started, as a reclaimed spot
                                                       instance would be

The action is the query protocol's form field ``Action`` (EC2, IAM, and SQS's
older protocol) or the suffix of ``X-Amz-Target`` (JSON protocols); S3
requests have none and are only forwarded. ``seen`` lists the actions in the
order they arrived.

The errorSet entries are what botocore's ec2 model reads (``CreateFleetResult``:
``errorSet``/``item`` with ``launchTemplateAndOverrides`` (``launchTemplateSpecification``,
``overrides`` with ``instanceType`` and ``subnetId``), ``lifecycle``, ``errorCode``,
``errorMessage``); moto's own CreateFleet answer has no errorSet, so it is added
before the closing tag.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit, urlunsplit
from xml.sax.saxutils import escape

import boto3

NO_SPOT = "There is no Spot capacity available that matches your request."
_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
        "upgrade", "expect", "content-length"}  # fmt: skip
_BUFFER_AT_MOST = 1 << 20  # form bodies this small are read whole (to find their Action)


@dataclass
class _Fail:
    code: str
    message: str
    status: int
    times: int | None  # None: every time


@dataclass
class _Pools:
    pools: list[tuple[str, str | None]] | None  # None: every pool
    market: str | None
    code: str
    message: str
    times: int | None


class AwsFaults:
    """The proxy; ``with AwsFaults(upstream) as faults:`` starts and stops it.

    Args:
        upstream: the AWS API server, e.g. ``http://127.0.0.1:5000``.
    """

    def __init__(self, upstream: str):
        u = urlsplit(upstream)
        self.upstream = upstream.rstrip("/")
        self._host, self._port = u.hostname or "127.0.0.1", u.port or 80
        self._lock = threading.Lock()
        self.seen: list[str] = []
        self.clear()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def url(self, aws_url: str) -> str:
        """``aws_url`` (an ``aws://`` backend) with its ``endpoint`` set to this proxy."""
        parts = urlsplit(aws_url)
        query = dict(parse_qsl(parts.query))
        query["endpoint"] = self.endpoint
        return urlunsplit(parts._replace(query=urlencode(query, safe=":/")))

    # ---------------------------------------------------------------- what to refuse

    def fail(
        self, action: str, code: str, message: str, status: int = 400, times: int | None = 1
    ) -> None:
        """Answer the next ``times`` requests for ``action`` with this error (None: all)."""
        with self._lock:
            self._fails.setdefault(action, []).append(_Fail(code, message, status, times))

    def refuse_pools(
        self,
        pools: list[str | tuple[str, str]] | None = None,
        market: str | None = "spot",
        code: str = "InsufficientInstanceCapacity",
        message: str = NO_SPOT,
        times: int | None = None,
    ) -> None:
        """CreateFleet (of ``market``; None: any) gets none of these pools, and says why.

        A pool is an instance type, or (instance type, subnet id); None: every pool.
        """
        listed: list[tuple[str, str | None]] | None = None
        if pools is not None:
            listed = [(p, None) if isinstance(p, str) else (p[0], p[1]) for p in pools]
        with self._lock:
            self._pools.append(_Pools(listed, market, code, message, times))

    def deliver_at_most(self, n: int, times: int | None = 1) -> None:
        """The next ``times`` CreateFleet start at most ``n`` instances, saying nothing."""
        with self._lock:
            self._at_most = (n, times)

    def end_at_once(self, n: int = 1, how: str = "terminate") -> None:
        """The next CreateFleet not yet told sees ``n`` of its instances ended (``how``:
        "terminate" or "stop") before its answer comes back; one call per fleet."""
        with self._lock:
            self._end.append((n, how))

    def clear(self) -> None:
        """Forward everything unchanged again; forget what was seen."""
        with self._lock:
            self._fails: dict[str, list[_Fail]] = {}
            self._pools: list[_Pools] = []
            self._at_most: tuple[int, int | None] | None = None
            self._end: list[tuple[int, str]] = []
            self.seen.clear()

    def count(self, action: str) -> int:
        with self._lock:
            return self.seen.count(action)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> AwsFaults:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- used by the handler

    def _take_fail(self, action: str) -> _Fail | None:
        with self._lock:
            self.seen.append(action)
            for f in self._fails.get(action, []):
                if f.times is None or f.times > 0:
                    if f.times is not None:
                        f.times -= 1
                    return f
        return None

    def _fleet_faults(self, market: str) -> tuple[list[_Pools], int | None, tuple[int, str] | None]:
        with self._lock:
            pools = []
            for p in self._pools:
                if (p.market is None or p.market == market) and (p.times is None or p.times > 0):
                    if p.times is not None:
                        p.times -= 1
                    pools.append(p)
            at_most = None
            if self._at_most and (self._at_most[1] is None or self._at_most[1] > 0):
                n, t = self._at_most
                self._at_most = (n, None if t is None else t - 1)
                at_most = n
            end = self._end.pop(0) if self._end else None
            return pools, at_most, end


# ---------------------------------------------------------------- HTTP


def _handler(faults: AwsFaults) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        pass

    Handler.faults = faults
    return Handler


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    faults: AwsFaults

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def __getattr__(self, name: str) -> Any:
        if name.startswith("do_"):  # any method: GET, PUT, POST, HEAD, DELETE, ...
            return self._any
        raise AttributeError(name)

    def _any(self) -> None:
        length = self.headers.get("Content-Length")
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        ctype = self.headers.get("Content-Type", "")
        body: bytes | None = None
        if (
            length is not None
            and int(length) <= _BUFFER_AT_MOST
            and ("x-www-form-urlencoded" in ctype or "json" in ctype)
        ):
            body = self.rfile.read(int(length))
        action = _action(self.path, self.headers, body)
        fail = self.faults._take_fail(action) if action else None
        if fail is not None:
            if body is None:
                self._drain(length, chunked)
            return self._error(fail)
        if action == "CreateFleet" and body is not None:
            return self._create_fleet(body)
        if body is not None:
            return self._forward(body, None)
        if length is not None:
            return self._forward(_Exactly(self.rfile, int(length)), int(length))
        if chunked:
            return self._forward(_chunks(self.rfile), None, chunked=True)
        return self._forward(None, None)

    def _drain(self, length: str | None, chunked: bool) -> None:
        if length is not None:
            self.rfile.read(int(length))
        elif chunked:
            for _ in _chunks(self.rfile):
                pass

    def _headers_out(self, size: int | None) -> dict[str, str]:
        out = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
        if size is not None:
            out["Content-Length"] = str(size)
        return out

    def _upstream(self, body: Any, size: int | None, chunked: bool = False) -> Any:
        conn = http.client.HTTPConnection(self.faults._host, self.faults._port, timeout=120)
        headers = self._headers_out(len(body) if isinstance(body, bytes) else size)
        if chunked:
            headers["Transfer-Encoding"] = "chunked"
        conn.request(self.command, self.path, body=body, headers=headers,
                     encode_chunked=chunked)  # fmt: skip
        return conn, conn.getresponse()

    def _forward(self, body: Any, size: int | None, chunked: bool = False) -> None:
        try:
            conn, resp = self._upstream(body, size, chunked)
        except OSError as e:
            return self._reply(502, {"Content-Type": "text/plain"}, f"proxy: {e}".encode())
        try:
            self.send_response(resp.status, resp.reason)
            for k, v in resp.getheaders():
                if k.lower() not in _HOP:
                    self.send_header(k, v)
            no_body = self.command == "HEAD" or resp.status in (204, 304) or resp.status < 200
            if no_body:
                if resp.getheader("Content-Length") is not None:
                    self.send_header("Content-Length", resp.getheader("Content-Length"))
                self.end_headers()
                return
            if resp.length is not None:
                self.send_header("Content-Length", str(resp.length))
                self.end_headers()
                while piece := resp.read(64 * 1024):
                    self.wfile.write(piece)
            else:
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                while piece := resp.read1(64 * 1024):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.write(b"0\r\n\r\n")
        finally:
            conn.close()

    def _reply(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, fail: _Fail) -> None:
        rid = str(uuid.uuid4())
        code, message = escape(fail.code), escape(fail.message)
        if self.headers.get("X-Amz-Target"):
            body = json.dumps({"__type": fail.code, "message": fail.message}).encode()
            headers = {"Content-Type": "application/x-amz-json-1.0", "x-amzn-RequestId": rid}
        elif _service(self.headers) == "ec2":
            body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
                    f"<Code>{code}</Code><Message>{message}</Message></Error></Errors>"
                    f"<RequestID>{rid}</RequestID></Response>").encode()  # fmt: skip
            headers = {"Content-Type": "text/xml;charset=UTF-8"}
        else:
            body = (f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code>"
                    f"<Message>{message}</Message></Error><RequestId>{rid}</RequestId>"
                    "</ErrorResponse>").encode()  # fmt: skip
            headers = {"Content-Type": "text/xml"}
        self._reply(fail.status, headers, body)

    # ---------------------------------------------------------------- CreateFleet

    def _create_fleet(self, body: bytes) -> None:
        form = parse_qsl(body.decode(), keep_blank_values=True)
        params = dict(form)
        market = params.get("TargetCapacitySpecification.DefaultTargetCapacityType", "on-demand")
        pools, at_most, end = self.faults._fleet_faults(market)
        if not (pools or at_most is not None or end):
            return self._forward(body, None)
        configs, rest = _configs(form)
        refused: list[tuple[dict[str, str], dict[str, str], _Pools]] = []
        for spec, overrides in configs:
            kept = []
            for o in overrides:
                p = next((p for p in pools if _matches(p, o)), None)
                if p is None:
                    kept.append(o)
                else:
                    refused.append((spec, o, p))
            overrides[:] = kept
        target = int(params.get("TargetCapacitySpecification.TotalTargetCapacity", "0"))
        if at_most is not None:
            target = min(target, at_most)
        left = [(s, o) for s, o in configs if o]
        if not left:  # nothing to launch from: a fleet that starts nothing
            left, target = [(refused[0][0], [refused[0][1]])], 0
        rest = [(k, str(target) if k.endswith("TotalTargetCapacity") else v) for k, v in rest]
        sent = urlencode(rest + _encode(left)).encode()
        try:
            conn, resp = self._upstream(sent, None)
            answer = resp.read()
            headers = {k: v for k, v in resp.getheaders() if k.lower() not in _HOP}
            conn.close()
        except OSError as e:
            return self._reply(502, {"Content-Type": "text/plain"}, f"proxy: {e}".encode())
        if resp.status == 200:
            if end:
                self._end_instances(answer, *end)
            if refused:
                answer = _with_errors(answer, market, refused)
        self._reply(resp.status, headers, answer)

    def _end_instances(self, answer: bytes, n: int, how: str) -> None:
        ids = re.findall(rb"<instanceIds>\s*<item>(i-[0-9a-f]+)</item>", answer)[:n]
        if not ids:
            return
        ec2 = boto3.client(
            "ec2", endpoint_url=self.faults.upstream, region_name=_region(self.headers),
            aws_access_key_id="testing", aws_secret_access_key="testing",
        )  # fmt: skip
        names = [i.decode() for i in ids]
        if how == "stop":
            ec2.stop_instances(InstanceIds=names)
        else:
            ec2.terminate_instances(InstanceIds=names)


def _action(path: str, headers: Any, body: bytes | None) -> str:
    target = headers.get("X-Amz-Target")
    if target:
        return str(target).rsplit(".", 1)[-1]
    query = parse_qs(urlsplit(path).query)
    if "Action" in query:
        return query["Action"][0]
    if body and b"Action=" in body:
        return parse_qs(body.decode(errors="replace")).get("Action", [""])[0]
    return ""


def _credential_scope(headers: Any) -> list[str]:
    # Authorization: AWS4-HMAC-SHA256 Credential=AKID/20261201/us-east-1/ec2/aws4_request, ...
    m = re.search(r"Credential=[^/]+/\d+/([^/]+)/([^/]+)/", headers.get("Authorization", ""))
    return [m.group(1), m.group(2)] if m else ["us-east-1", ""]


def _service(headers: Any) -> str:
    return _credential_scope(headers)[1]


def _region(headers: Any) -> str:
    return _credential_scope(headers)[0]


_CONFIG = re.compile(r"LaunchTemplateConfigs\.(\d+)\.(.*)")
_OVERRIDE = re.compile(r"Overrides\.(\d+)\.(.*)")


def _configs(
    form: list[tuple[str, str]],
) -> tuple[list[tuple[dict[str, str], list[dict[str, str]]]], list[tuple[str, str]]]:
    """The request's launch template configs as (spec fields, [override fields]), and
    every other parameter."""
    specs: dict[int, dict[str, str]] = {}
    overrides: dict[int, dict[int, dict[str, str]]] = {}
    rest = []
    for k, v in form:
        m = _CONFIG.fullmatch(k)
        if not m:
            rest.append((k, v))
            continue
        i, field = int(m.group(1)), m.group(2)
        o = _OVERRIDE.fullmatch(field)
        if o:
            overrides.setdefault(i, {}).setdefault(int(o.group(1)), {})[o.group(2)] = v
        else:
            specs.setdefault(i, {})[field] = v
    out = [
        (specs.get(i, {}), [overrides[i][j] for j in sorted(overrides.get(i, {}))])
        for i in sorted(set(specs) | set(overrides))
    ]
    return out, rest


def _encode(configs: list[tuple[dict[str, str], list[dict[str, str]]]]) -> list[tuple[str, str]]:
    out = []
    for i, (spec, overrides) in enumerate(configs, 1):
        out += [(f"LaunchTemplateConfigs.{i}.{k}", v) for k, v in spec.items()]
        for j, o in enumerate(overrides, 1):
            out += [(f"LaunchTemplateConfigs.{i}.Overrides.{j}.{k}", v) for k, v in o.items()]
    return out


def _matches(p: _Pools, override: dict[str, str]) -> bool:
    if p.pools is None:
        return True
    kind, subnet = override.get("InstanceType"), override.get("SubnetId")
    return any(t == kind and (s is None or s == subnet) for t, s in p.pools)


def _with_errors(
    answer: bytes, market: str, refused: list[tuple[dict[str, str], dict[str, str], _Pools]]
) -> bytes:
    items = []
    for spec, o, p in refused:
        lt = "".join(
            f"<{tag}>{escape(spec[k])}</{tag}>"
            for k, tag in (
                ("LaunchTemplateSpecification.LaunchTemplateId", "launchTemplateId"),
                ("LaunchTemplateSpecification.Version", "version"),
            )
            if k in spec
        )
        ov = "".join(
            f"<{tag}>{escape(o[k])}</{tag}>"
            for k, tag in (("InstanceType", "instanceType"), ("SubnetId", "subnetId"))
            if k in o
        )
        items.append(
            "<item><launchTemplateAndOverrides>"
            f"<launchTemplateSpecification>{lt}</launchTemplateSpecification>"
            f"<overrides>{ov}</overrides></launchTemplateAndOverrides>"
            f"<lifecycle>{escape(market)}</lifecycle><errorCode>{escape(p.code)}</errorCode>"
            f"<errorMessage>{escape(p.message)}</errorMessage></item>"
        )
    block = f"<errorSet>{''.join(items)}</errorSet>".encode()
    return answer.replace(b"</CreateFleetResponse>", block + b"</CreateFleetResponse>", 1)


class _Exactly:
    """The next ``n`` bytes of a stream, read as http.client sends a body."""

    def __init__(self, stream: Any, n: int):
        self.stream, self.left = stream, n

    def read(self, size: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        size = self.left if size < 0 else min(size, self.left)
        data: bytes = self.stream.read(size)
        self.left -= len(data)
        return data


def _chunks(stream: Any) -> Iterator[bytes]:
    """The data of an HTTP/1.1 chunked body (trailers read and dropped)."""
    while True:
        size = int(stream.readline().split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while stream.readline() not in (b"\r\n", b"\n", b""):
                pass
            return
        yield stream.read(size)
        stream.readline()
