"""A Redis the head node runs: a stream as the queue, keys as the store.

``redis://[[USER]:PASSWORD@]HOST:PORT/DB`` (``rediss://`` for TLS;
``?prefix=NAME`` to keep several backends in one database, default
``cloudloop``; ``?ca_certs=PATH`` and ``?cert_reqs=none`` for TLS)::

    <prefix>:q              stream of task messages, one field "b" = the body
                            consumer group "workers"; its pending-entries
                            list (PEL) is the set of leases
    <prefix>:bell           stream of one entry, renewed when a release makes
                            messages visible again (wakes waiting workers)
    <prefix>:keys           sorted set of every store key (score 0: ordered by
                            name, so list(prefix) is one ZRANGEBYLEX)
    <prefix>:b:<key>        one string per store key (the blob)
    <prefix>:secret         32 random bytes that sign messages and blobs (SET NX)

Leases live entirely in the PEL. Redis only knows how long ago an entry was
delivered (its idle time), so a lease of ``L`` seconds is a delivery whose
idle time is set (``XCLAIM ... IDLE``) to ``EXPIRY - L``: it expires when its
idle time reaches ``EXPIRY`` (30 days), and ``lease`` reclaims expired entries
with ``XAUTOCLAIM`` at min-idle ``EXPIRY`` before reading new ones with
``XREADGROUP``. Leases of different lengths therefore share one reclaim
rule. ``extend`` sets the idle time again, ``release`` sets it to ``EXPIRY``
under a neutral consumer, ``ack`` is ``XACK`` + ``XDEL``.

A ``lease`` that finds nothing waits blocked in ``XREAD BLOCK`` on the
stream (from its newest entry) and the bell, in slices of a second, so an
idle worker costs one cheap call a second and takes a new message as soon as
it is added; it never blocks inside the group (``XREADGROUP BLOCK``
would deliver a message before its lease is set, and a worker dying then would
hide it for 30 days). Expired leases are reclaimed when its wait ends.

Every queue operation is one Lua script, so it is atomic. A lease token is
``<consumer>:<delivery count>``; ``ack``/``extend`` first compare it with the
PEL entry (``XPENDING``), and a reclaim always bumps the delivery count, so a
late worker whose message was leased again gets :class:`LeaseLost` and can
never delete or extend a message someone else holds.

Store puts are scripts too (SET + ZADD together; ``if_absent`` is SET NX).
With ``appendonly yes`` (and ``appendfsync always`` for the strictest
durability) a Redis restart loses no message, lease or result; clients retry
for about 30 s while it is away. ``store=`` (an S3-compatible store beside the
Redis queue) is not supported yet: blobs are Redis keys, so Redis must have
the memory for every job's inputs, results and logs.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Sequence
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from ..config import check_known
from ..errors import BackendError, ConfigError, ConnectionFailed, LeaseLost
from ..model import Lease, QueueStats
from .base import Backend, Queue, Store, check_key, redact_url, secret_from_env

GROUP = "workers"
_BLOCK_SLICE = 1.0  # seconds a waiting lease blocks at a time (a stop is seen within it)
EXPIRY_MS = 30 * 86400 * 1000  # idle time at which every lease has expired
_RELEASED = "released"  # consumer that holds released messages until someone leases them

# Reclaim expired leases, then read new messages; give each the lease's idle time.
# KEYS: stream. ARGV: group, consumer, max_n, idle (EXPIRY - lease), EXPIRY, cursor.
# The reclaim scan resumes where this caller's last one stopped, so a pending
# list of any length is covered over successive calls.
# Returns {cursor, {id, body, delivery count}..., newest id of the stream, of the bell}.
_LEASE = """
local s, g, c = KEYS[1], ARGV[1], ARGV[2]
local n, idle, expiry = tonumber(ARGV[3]), ARGV[4], ARGV[5]
redis.pcall('XGROUP', 'CREATE', s, g, '0', 'MKSTREAM')
local got = {}
local cursor = ARGV[6]
for _ = 1, 20 do
  if #got >= n then break end
  local r = redis.call('XAUTOCLAIM', s, g, c, expiry, cursor, 'COUNT', n - #got)
  for _, e in ipairs(r[2]) do
    if e and e[2] then got[#got + 1] = e end
  end
  cursor = r[1]
  if cursor == '0-0' then break end
end
if #got < n then
  local r = redis.call('XREADGROUP', 'GROUP', g, c, 'COUNT', n - #got, 'STREAMS', s, '>')
  if r then
    for _, e in ipairs(r[1][2]) do got[#got + 1] = e end
  end
end
local out = {}
for _, e in ipairs(got) do
  redis.call('XCLAIM', s, g, c, 0, e[1], 'IDLE', idle, 'JUSTID')
  local p = redis.call('XPENDING', s, g, e[1], e[1], 1)
  local body = ''
  for i = 1, #e[2], 2 do
    if e[2][i] == 'b' then body = e[2][i + 1] end
  end
  out[#out + 1] = {e[1], body, p[1][4]}
end
local newest, bell = '0-0', '0-0'
if #out == 0 then
  local last = redis.call('XREVRANGE', s, '+', '-', 'COUNT', 1)
  if last[1] then newest = last[1][1] end
  last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
  if last[1] then bell = last[1][1] end
end
return {cursor, out, newest, bell}
"""

# The caller still holds the lease: the PEL entry's consumer and delivery count
# match its token. KEYS: stream, bell. ARGV: group, op, idle, then id, token pairs.
# Returns the ids whose lease was lost. A release rings the bell.
_HOLDING = (
    """
local s, g, op, idle = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local lost = {}
local released = 0
for i = 4, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local p = redis.call('XPENDING', s, g, id, id, 1)
  if #p == 0 or (p[1][2] .. ':' .. p[1][4]) ~= token then
    lost[#lost + 1] = id
  elseif op == 'ack' then
    redis.call('XACK', s, g, id)
    redis.call('XDEL', s, id)
  elseif op == 'extend' then
    redis.call('XCLAIM', s, g, p[1][2], 0, id, 'IDLE', idle, 'JUSTID')
  else
    redis.call('XCLAIM', s, g, '"""
    + _RELEASED
    + """', 0, id, 'IDLE', idle, 'JUSTID')
    released = released + 1
  end
end
if released > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', '1', '*', 'r', '1')
end
return lost
"""
)

# KEYS: stream. ARGV: group, EXPIRY. Returns {entries, pending, expired}.
_STATS = """
local s, g = KEYS[1], ARGV[1]
redis.pcall('XGROUP', 'CREATE', s, g, '0', 'MKSTREAM')
local total = redis.call('XLEN', s)
local pending = redis.call('XPENDING', s, g)[1]
local expired = #redis.call('XPENDING', s, g, 'IDLE', ARGV[2], '-', '+', 100000)
return {total, pending, expired}
"""

# Forget a consumer once it holds nothing (deleting one that holds entries would drop them).
_FORGET = """
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) == 0 then
  redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
end
return 0
"""

# KEYS: index, blob. ARGV: key, data, if_absent ('1'/'0').
_PUT = """
if ARGV[3] == '1' then
  if not redis.call('SET', KEYS[2], ARGV[2], 'NX') then return 0 end
else
  redis.call('SET', KEYS[2], ARGV[2])
end
redis.call('ZADD', KEYS[1], 0, ARGV[1])
return 1
"""

# KEYS: index. ARGV: blob key prefix, store key prefix. Returns how many were deleted.
_DELETE = """
local lo = '[' .. ARGV[2]
local hi = '(' .. ARGV[2] .. '\\255'
local n = 0
while true do
  local ks = redis.call('ZRANGEBYLEX', KEYS[1], lo, hi, 'LIMIT', 0, 1000)
  if #ks == 0 then break end
  for _, k in ipairs(ks) do
    redis.call('DEL', ARGV[1] .. k)
    redis.call('ZREM', KEYS[1], k)
  end
  n = n + #ks
end
return n
"""


class RedisQueue(Queue):
    """A lease queue on one Redis stream and its consumer group."""

    reports_lease_lost = True
    max_message_bytes = 16 << 20

    def __init__(self, client: redis.Redis, prefix: str):
        self.r = client
        self.stream = f"{prefix}:q"
        self.bell = f"{prefix}:bell"
        self._interrupted = False
        self._lease = client.register_script(_LEASE)
        self._holding = client.register_script(_HOLDING)
        self._stats = client.register_script(_STATS)
        self._forget = client.register_script(_FORGET)
        self._pid = 0
        self._consumer = ""
        self._cursor = "0-0"  # where the next reclaim scan of the pending list starts
        try:
            client.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    @property
    def consumer(self) -> str:
        """This process's consumer name (a fork gets its own)."""
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._consumer = f"c-{os.getpid()}-{secrets.token_hex(6)}"
        return self._consumer

    def put(self, bodies: Sequence[bytes]) -> list[str]:
        for body in bodies:
            if len(body) > self.max_message_bytes:
                raise BackendError(f"message of {len(body)} bytes is over the queue's limit")
        ids: list[str] = []
        for s in range(0, len(bodies), 500):
            pipe = self.r.pipeline(transaction=False)
            for body in bodies[s : s + 500]:
                pipe.xadd(self.stream, {"b": body})
            ids += [i.decode() for i in pipe.execute()]
        return ids

    def _try_lease(self, max_n: int, lease_s: float) -> tuple[list[Lease], list[Any]]:
        """The leases taken and (when none) the newest ids of the stream and the bell,
        to wait from."""
        idle = max(0, EXPIRY_MS - int(lease_s * 1000))
        consumer = self.consumer
        cursor, rows, newest, bell = self._lease(
            keys=[self.stream, self.bell],
            args=[GROUP, consumer, max_n, idle, EXPIRY_MS, self._cursor],
            client=self.r,
        )
        self._cursor = cursor.decode() if isinstance(cursor, bytes) else str(cursor)
        leases = [
            Lease(mid.decode(), f"{consumer}:{count}", bytes(body), int(count))
            for mid, body, count in rows
        ]
        return leases, [newest, bell]

    def lease(self, max_n: int = 1, lease_s: float = 30.0, wait_s: float = 0.0) -> list[Lease]:
        if lease_s * 1000 > EXPIRY_MS:
            raise ConfigError(f"lease of {lease_s:g} s is over the Redis queue's 30-day limit")
        deadline = time.monotonic() + wait_s
        while True:
            leases, since = self._try_lease(max_n, lease_s)
            if leases or time.monotonic() >= deadline:
                return leases
            if self._cursor != "0-0":  # the reclaim scan is not through the pending list
                continue
            if not self._wait(since, deadline):
                return leases

    def _wait(self, since: list[Any], deadline: float) -> bool:
        """Blocked until an entry newer than ``since`` is added to the stream or the
        bell (True: look again) or until ``deadline`` or :meth:`wakeup` (False)."""
        while True:
            if self._interrupted:
                self._interrupted = False
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            block = max(1, int(min(left, _BLOCK_SLICE) * 1000))
            got = self.r.xread({self.stream: since[0], self.bell: since[1]}, count=1, block=block)
            if got:
                return True

    def wakeup(self) -> None:
        self._interrupted = True  # seen within _BLOCK_SLICE

    def _apply(self, op: str, leases: Sequence[Lease], idle: int) -> list[str]:
        args: list[Any] = [GROUP, op, idle]
        for x in leases:
            args += [x.id, x.token]
        lost = self._holding(keys=[self.stream, self.bell], args=args, client=self.r)
        return [i.decode() for i in lost]

    def _check(self, op: str, leases: Sequence[Lease], idle: int) -> None:
        if not leases:
            return
        lost = self._apply(op, leases, idle)
        if lost:
            raise LeaseLost(
                f"{op} failed for message(s) {lost}: the lease expired and the message "
                "was leased again or deleted"
            )

    def extend(self, leases: Sequence[Lease], lease_s: float) -> None:
        self._check("extend", leases, max(0, EXPIRY_MS - int(lease_s * 1000)))

    def ack(self, leases: Sequence[Lease]) -> None:
        self._check("ack", leases, 0)

    def release(self, leases: Sequence[Lease]) -> None:
        if leases:
            self._apply("release", leases, EXPIRY_MS)  # stale tokens are ignored

    def stats(self) -> QueueStats:
        total, pending, expired = self._stats(
            keys=[self.stream], args=[GROUP, EXPIRY_MS], client=self.r
        )
        leased = max(0, int(pending) - int(expired))
        return QueueStats(max(0, int(total) - leased), leased)

    def close(self) -> None:
        if self._consumer and self._pid == os.getpid():
            try:
                self._forget(keys=[self.stream], args=[GROUP, self._consumer], client=self.r)
            except redis.RedisError:
                pass  # an unreachable Redis at exit: the consumer entry is harmless


class RedisStore(Store):
    """Blobs as Redis strings, with a sorted index of their names for listing."""

    def __init__(self, client: redis.Redis, prefix: str):
        self.r = client
        self.index = f"{prefix}:keys"
        self.blob = f"{prefix}:b:"
        self._put = client.register_script(_PUT)
        self._delete = client.register_script(_DELETE)

    def put(self, key: str, data: bytes, if_absent: bool = False) -> bool:
        check_key(key)
        done = self._put(
            keys=[self.index, self.blob + key],
            args=[key, data, "1" if if_absent else "0"],
            client=self.r,
        )
        return bool(done)

    def get(self, key: str) -> bytes:
        data = cast("bytes | None", self.r.get(self.blob + check_key(key)))
        if data is None:
            raise KeyError(key)
        return bytes(data)

    def exists(self, key: str) -> bool:
        return bool(self.r.exists(self.blob + check_key(key)))

    def list(self, prefix: str) -> list[str]:
        out: list[str] = []
        lo = b"[" + prefix.encode()
        hi = b"(" + prefix.encode() + b"\xff"
        while True:
            part = cast("list[bytes]", self.r.zrangebylex(self.index, lo, hi, start=0, num=10000))
            out += [k.decode() for k in part]
            if len(part) < 10000:
                return out
            lo = b"(" + part[-1]

    def remove(self, key: str) -> bool:
        pipe = self.r.pipeline(transaction=True)
        pipe.zrem(self.index, check_key(key))
        pipe.delete(self.blob + key)
        return bool(pipe.execute()[1])

    def sizes(self, prefix: str) -> dict[str, int]:
        names = self.list(prefix)
        out: dict[str, int] = {}
        for s in range(0, len(names), 1000):  # STRLEN in pipelined batches: one round trip each
            part = names[s : s + 1000]
            pipe = self.r.pipeline(transaction=False)
            for name in part:
                pipe.exists(self.blob + name)
                pipe.strlen(self.blob + name)
            got = pipe.execute()
            for name, there, n in zip(part, got[0::2], got[1::2], strict=True):
                if there:  # not deleted between the listing and now
                    out[name] = int(n)
        return out

    def delete(self, prefix: str) -> int:
        return int(self._delete(keys=[self.index], args=[self.blob, prefix], client=self.r))


class RedisBackend(Backend):
    poll_interval = 0.02
    poll_max = 0.25
    flush_interval = 0.5
    idle_wait = 2.0  # a waiting lease blocks on the stream: a new message wakes it


def _masked(url: str) -> str:
    """The URL without its password (for error messages)."""
    return redact_url(url)


def parse_redis_url(url: str) -> dict[str, Any]:
    """Connection settings from a ``redis://`` or ``rediss://`` URL (ConfigError if wrong)."""
    shown = _masked(url)
    example = "use redis://[:password@]host:port/db, e.g. redis://head.lab:6379/0"
    try:
        parts = urlsplit(url)
        port = parts.port or 6379
    except ValueError:
        raise ConfigError(
            f"backend {shown!r} is not a valid Redis URL ({example}; percent-encode "
            "'/', '@', ':' and '#' in a password, e.g. '/' as %2F)"
        ) from None
    if parts.scheme not in ("redis", "rediss"):
        raise ConfigError(f"backend {shown!r} is not a Redis URL; {example}")
    if not parts.hostname:
        raise ConfigError(f"backend {shown!r} names no host; {example}")
    path = parts.path.strip("/") or "0"
    if not path.isdigit():
        raise ConfigError(f"backend {shown!r}: {path!r} is not a database number; {example}")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    check_known(
        query, {"prefix", "ca_certs", "cert_reqs", "store"}, f"backend {shown!r}", "parameter"
    )
    if "store" in query:
        raise ConfigError(
            f"backend {shown!r}: store= is not supported yet; the Redis backend keeps blobs "
            "in Redis itself (drop the store= parameter)"
        )
    prefix = query.get("prefix", "cloudloop")
    if not prefix or not all(ch.isalnum() or ch in "_.-" for ch in prefix):
        raise ConfigError(f"backend {shown!r}: prefix must be letters, digits, '_', '.' or '-'")
    kw: dict[str, Any] = {
        "host": parts.hostname,
        "port": port,
        "db": int(path),
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else None,
    }
    if parts.scheme == "rediss":
        kw["ssl"] = True
        if "ca_certs" in query:
            kw["ssl_ca_certs"] = query["ca_certs"]
        if query.get("cert_reqs"):
            kw["ssl_cert_reqs"] = query["cert_reqs"]
    return {"connection": kw, "prefix": prefix}


def _where(kw: dict[str, Any]) -> str:
    return f"{kw['host']}:{kw['port']}/{kw['db']}"


def _client(kw: dict[str, Any], patient: bool) -> redis.Redis:
    # A patient client rides out a Redis restart (about 30 s of retries); the
    # first contact is made impatiently so a wrong address fails at once.
    retry = Retry(ExponentialBackoff(cap=2.0, base=0.05), 20 if patient else 0)
    return redis.Redis(
        **kw,
        socket_connect_timeout=5,
        socket_timeout=60,
        socket_keepalive=True,
        health_check_interval=30,
        retry=retry,
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )


_secret_lock = threading.Lock()


def _secret(client: redis.Redis, prefix: str) -> bytes:
    outside = secret_from_env()
    if outside is not None:
        return outside
    with _secret_lock:
        client.set(f"{prefix}:secret", secrets.token_bytes(32), nx=True)
        return bytes(cast(bytes, client.get(f"{prefix}:secret")))


def open_redis(url: str) -> RedisBackend:
    """Open a ``redis://`` backend (nothing to create: the stream and group appear on use)."""
    p = parse_redis_url(url)
    kw, prefix = p["connection"], p["prefix"]
    where = _where(kw)
    probe = _client(kw, patient=False)
    try:
        probe.ping()
    except redis.AuthenticationError:
        if not kw["password"]:
            raise ConfigError(
                f"Redis at {where} needs a password: put it in the URL "
                "(redis://:PASSWORD@host:port/db)"
            ) from None
        raise ConfigError(
            f"Redis at {where} refused the credentials in the URL: check the password "
            "(and user, for an ACL user: redis://USER:PASSWORD@host:port/db)"
        ) from None
    except redis.ResponseError as e:
        if "NOAUTH" in str(e) or "WRONGPASS" in str(e) or "AUTH" in str(e):
            raise ConfigError(
                f"Redis at {where} needs a password: use redis://:PASSWORD@host:port/db ({e})"
            ) from None
        raise BackendError(f"Redis at {where} refused a PING: {e}") from None
    except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
        raise ConnectionFailed(
            f"cannot reach Redis at {where} ({e}); is redis-server running there and "
            "listening on that address (its bind/protected-mode settings), and does a "
            "firewall let this machine reach it?"
        ) from None
    finally:
        probe.close()
    client = _client(kw, patient=True)
    try:
        key = _secret(client, prefix)
        queue = RedisQueue(client, prefix)
    except redis.RedisError as e:
        raise BackendError(f"Redis at {where} failed while opening {_masked(url)!r}: {e}") from None
    return RedisBackend(url, queue, RedisStore(client, prefix), key)
