"""The embedded default: an SQLite queue and a file store in one directory.

``sqlite:///path/dir`` (``sqlite://rel/dir`` and a bare path are accepted too)::

    dir/
      queue.db        SQLite, WAL, synchronous=FULL
      queue.bell      empty; touched whenever messages become visible (put,
                      release), so idle workers wake at once (inotify)
      secret.key      32 random bytes (mode 0600) that sign messages and blobs
      store/<key>     one file per store key; written to a temporary name,
                      fsynced and renamed (or hard-linked for if_absent), so a
                      reader never sees half a blob

    CREATE TABLE messages (
      id          INTEGER PRIMARY KEY AUTOINCREMENT,
      body        BLOB    NOT NULL,
      visible_at  REAL    NOT NULL,   -- unix time; > now while leased
      token       TEXT,               -- current lease token (NULL: never leased/released)
      attempts    INTEGER NOT NULL,   -- deliveries so far
      enqueued_at REAL    NOT NULL)

``lease`` selects visible rows and stamps a fresh token and expiry inside one
``BEGIN IMMEDIATE`` transaction, so two workers can never take the same
message, and an expired lease is reclaimed simply by becoming visible again.
``ack`` and ``extend`` match on ``(id, token)``: a late worker whose lease was
reclaimed gets ``LeaseLost`` instead of deleting someone else's message.
Safe for many worker processes on one machine (not over NFS).

SQLite cannot block until a row appears, so a ``lease`` that waits does not
poll it: on Linux it sleeps on an inotify watch of ``queue.bell`` (which
``put`` and ``release`` touch after they commit) until the bell rings, the
next lease it saw expires, or its wait ends; an idle worker costs nothing and
still takes a new message within milliseconds. Without inotify it polls,
backing off from 20 ms to 1 s.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import math
import os
import secrets
import select
import sqlite3
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

from ..errors import BackendError, ConfigError, LeaseLost
from ..model import Lease, QueueStats
from .base import Backend, Queue, Store, check_key, secret_from_env

log = logging.getLogger("cloudloop")
_F = TypeVar("_F", bound=Callable[..., Any])

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  body BLOB NOT NULL,
  visible_at REAL NOT NULL,
  token TEXT,
  attempts INTEGER NOT NULL DEFAULT 0,
  enqueued_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_visible ON messages(visible_at);
"""


def _unusable(path: Path, e: Exception) -> BackendError:
    if not path.parent.is_dir():
        return BackendError(
            f"the backend directory {path.parent} no longer exists (was it deleted while "
            "jobs ran?); their queued tasks and results are gone"
        )
    return BackendError(
        f"the queue {path} cannot be used ({e}): it is damaged or not an SQLite database. "
        f"Results, logs and outputs already in {path.parent / 'store'} can still be read "
        f"(cloudloop status / results); to queue work again, move {path.name} aside"
    )


def _queue_errors(method: _F) -> _F:
    """A damaged or vanished queue.db is a BackendError saying so, not sqlite's words."""

    @functools.wraps(method)
    def wrapper(self: SqliteQueue, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as e:
            raise _unusable(self.path, e) from None

    return cast(_F, wrapper)


_IN_MODIFY, _IN_ATTRIB, _IN_CLOSE_WRITE = 0x2, 0x4, 0x8
_IN_DELETE_SELF, _IN_MOVE_SELF, _IN_IGNORED = 0x400, 0x800, 0x8000
_IN_NONBLOCK, _IN_CLOEXEC = os.O_NONBLOCK, 0o2000000
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name)
_POLL_FIRST, _POLL_MAX = 0.02, 1.0  # polling without inotify: 20 ms, doubling to 1 s


def _inotify_libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.inotify_init1, libc.inotify_add_watch  # noqa: B018 - present?
    except (OSError, AttributeError):
        return None
    return libc


class _Doorbell:
    """``queue.bell``: rung (touched) when messages become visible; an inotify watch
    on it lets a waiting lease sleep until then. A self-pipe ends a wait early
    (:meth:`SqliteQueue.wakeup`)."""

    _libc: Any = False  # looked up once per process

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None  # the inotify instance (None: not watching)
        self.wake_r, self.wake_w = os.pipe()
        for fd in (self.wake_r, self.wake_w):
            os.set_blocking(fd, False)

    def _make(self) -> None:
        with contextlib.suppress(OSError):
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))

    def watch(self) -> bool:
        """Watching the bell (inotify on this machine); False: the caller polls."""
        if self.fd is not None:
            return True
        if _Doorbell._libc is False:
            _Doorbell._libc = _inotify_libc()
        libc = _Doorbell._libc
        if libc is None:
            return False
        if not self.path.exists():
            self._make()
        fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            return False
        mask = _IN_MODIFY | _IN_ATTRIB | _IN_CLOSE_WRITE | _IN_DELETE_SELF | _IN_MOVE_SELF
        if libc.inotify_add_watch(fd, os.fsencode(self.path), mask) < 0:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def drain(self) -> None:
        """Forget the rings so far (the caller is about to look at the queue)."""
        if self.fd is None:
            return
        gone = False
        try:
            while True:
                buf = os.read(self.fd, 4096)
                if not buf:
                    break
                at = 0
                while at + _EVENT.size <= len(buf):
                    _, mask, _, n = _EVENT.unpack_from(buf, at)
                    gone |= bool(mask & (_IN_DELETE_SELF | _IN_MOVE_SELF | _IN_IGNORED))
                    at += _EVENT.size + n
        except OSError:
            pass
        if gone:  # the bell was removed or replaced: watch the new one next time
            self.close_watch()

    def wait(self, timeout: float) -> None:
        """Sleep until the bell rings, :meth:`interrupt`, or ``timeout`` seconds."""
        poller = select.poll()
        poller.register(self.wake_r, select.POLLIN)
        if self.fd is not None:
            poller.register(self.fd, select.POLLIN)
        poller.poll(max(0.0, timeout) * 1000)
        try:
            while os.read(self.wake_r, 4096):
                pass
        except OSError:
            pass

    def interrupt(self) -> None:
        try:
            os.write(self.wake_w, b"!")
        except OSError:
            pass

    def close_watch(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None

    def close(self) -> None:
        self.close_watch()
        for fd in (self.wake_r, self.wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)


class SqliteQueue(Queue):
    """A lease queue in one SQLite file."""

    reports_lease_lost = True
    max_message_bytes = 64 << 20

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._durable = True
        self._conn: sqlite3.Connection | None = None
        self._bell: _Doorbell | None = None  # made by the first lease that waits
        self._interrupted = False
        self._bell_path = path.with_name("queue.bell")
        try:
            self._conn = self._connect()
        except sqlite3.DatabaseError as e:
            # the store may be fine: status, results and logs still read it; every
            # queue operation says what is wrong (see _unusable)
            log.error("%s", _unusable(path, e))

    def _connect(self) -> sqlite3.Connection:
        if not self.path.exists():  # sqlite would make it (and its -wal, -shm) world-readable
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        conn = sqlite3.connect(
            str(self.path), timeout=60, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA busy_timeout = 60000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        self._durable = True
        with self._write(conn, durable=True):
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    conn.execute(stmt)
        return conn

    @contextlib.contextmanager
    def _write(
        self, conn: sqlite3.Connection | None = None, durable: bool = False
    ) -> Iterator[sqlite3.Connection]:
        conn = conn or self._db()
        # Only put must reach the disk before returning; a lease, extension,
        # release or ack lost to a power cut merely makes a task run again
        # (results are stored, fsynced, before the ack), so those skip the fsync.
        if durable != self._durable:
            conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
            self._durable = durable
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _db(self) -> sqlite3.Connection:
        if os.getpid() != self._pid or self._conn is None:  # forked: never share a connection
            self._pid = os.getpid()
            self._conn = self._connect()
        return self._conn

    @_queue_errors
    def put(self, bodies: Sequence[bytes]) -> list[str]:
        now = time.time()
        with self._lock, self._write(durable=True) as db:
            ids = []
            for body in bodies:
                cur = db.execute(
                    "INSERT INTO messages (body, visible_at, attempts, enqueued_at) "
                    "VALUES (?, ?, 0, ?)",
                    (sqlite3.Binary(body), now, now),
                )
                ids.append(str(cur.lastrowid))
        self._ring()
        return ids

    def _ring(self) -> None:
        """Messages became visible: wake the workers waiting for one."""
        try:
            os.utime(self._bell_path)
        except FileNotFoundError:
            with contextlib.suppress(OSError):
                os.close(os.open(self._bell_path, os.O_WRONLY | os.O_CREAT, 0o600))
        except OSError:
            pass

    def _try_lease(self, max_n: int, lease_s: float) -> tuple[list[Lease], float]:
        """The leases taken, and (when none) the seconds until a message becomes
        visible by itself (the earliest lease to expire; inf: none is leased)."""
        now = time.time()
        with self._lock:
            db = self._db()
            (first,) = db.execute("SELECT MIN(visible_at) FROM messages").fetchone()
            if first is None:
                return [], math.inf
            if first > now:
                return [], first - now
            with self._write(db):
                rows = db.execute(
                    "SELECT id, body, attempts FROM messages WHERE visible_at <= ? "
                    "ORDER BY id LIMIT ?",
                    (now, max_n),
                ).fetchall()
                leases = []
                for mid, body, attempts in rows:
                    token = secrets.token_hex(8)
                    db.execute(
                        "UPDATE messages SET token = ?, visible_at = ?, attempts = ? WHERE id = ?",
                        (token, now + lease_s, attempts + 1, mid),
                    )
                    leases.append(Lease(str(mid), token, bytes(body), attempts + 1))
                return leases, 0.0

    @_queue_errors
    def lease(self, max_n: int = 1, lease_s: float = 30.0, wait_s: float = 0.0) -> list[Lease]:
        if wait_s <= 0:
            return self._try_lease(max_n, lease_s)[0]
        bell = self._bell
        if bell is None:
            bell = self._bell = _Doorbell(self._bell_path)
        watching = bell.watch()
        deadline = time.monotonic() + wait_s
        pause = _POLL_FIRST
        while True:
            bell.drain()  # rings from now on wake the wait below
            leases, until = self._try_lease(max_n, lease_s)
            left = deadline - time.monotonic()
            if leases or left <= 0:
                return leases
            if self._interrupted:
                self._interrupted = False
                return []
            if watching:
                bell.wait(min(left, until + 0.001))
                watching = bell.watch()  # (again, if the bell was replaced)
            else:
                bell.wait(min(left, until + 0.001, pause))
                pause = min(pause * 2, _POLL_MAX)

    def wakeup(self) -> None:
        self._interrupted = True
        if self._bell is not None:
            self._bell.interrupt()

    def _match(
        self, sql: str, params: list[tuple[Any, ...]], leases: Sequence[Lease], what: str
    ) -> None:
        lost = []
        with self._lock, self._write() as db:
            for lease, p in zip(leases, params):
                if db.execute(sql, p).rowcount == 0:
                    lost.append(lease.id)
        if lost:
            raise LeaseLost(
                f"{what} failed for message(s) {lost}: the lease expired and the message "
                "was leased again or deleted"
            )

    @_queue_errors
    def extend(self, leases: Sequence[Lease], lease_s: float) -> None:
        until = time.time() + lease_s
        self._match(
            "UPDATE messages SET visible_at = ? WHERE id = ? AND token = ?",
            [(until, int(x.id), x.token) for x in leases],
            leases,
            "extend",
        )

    @_queue_errors
    def ack(self, leases: Sequence[Lease]) -> None:
        self._match(
            "DELETE FROM messages WHERE id = ? AND token = ?",
            [(int(x.id), x.token) for x in leases],
            leases,
            "ack",
        )

    @_queue_errors
    def release(self, leases: Sequence[Lease]) -> None:
        now = time.time()
        with self._lock, self._write() as db:
            for x in leases:
                db.execute(
                    "UPDATE messages SET visible_at = ?, token = NULL WHERE id = ? AND token = ?",
                    (now, int(x.id), x.token),
                )
        if leases:
            self._ring()

    @_queue_errors
    def stats(self) -> QueueStats:
        with self._lock:
            visible, leased = (
                self._db()
                .execute(
                    "SELECT COALESCE(SUM(visible_at <= ?), 0), COALESCE(SUM(visible_at > ?), 0) "
                    "FROM messages",
                    (time.time(), time.time()),
                )
                .fetchone()
            )
        return QueueStats(int(visible), int(leased))

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
            if self._bell is not None:
                self._bell.close()
                self._bell = None


class FileStore(Store):
    """Blobs as files under a directory; atomic puts, crash-safe."""

    def __init__(self, root: Path, fsync: bool = True):
        self.root = root
        self.fsync = fsync
        root.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: bytes, if_absent: bool = False) -> bool:
        path = self._path(key)
        _mkdirs(self.root, path.parent)
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
                f.write(data)
                if self.fsync:
                    os.fsync(f.fileno())
            if not if_absent:
                os.replace(tmp, path)
                return True
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            return True
        finally:  # a full disk, a lost race: no half-written or spare file stays behind
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def get(self, key: str) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise KeyError(key) from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def _walk(self, base: Path, rel: str, out: list[str]) -> None:
        try:
            entries = list(os.scandir(base))
        except (FileNotFoundError, NotADirectoryError):
            return
        for e in entries:
            if e.name.startswith("."):
                continue
            key = f"{rel}{e.name}"
            if e.is_dir(follow_symlinks=False):
                self._walk(Path(e.path), key + "/", out)
            else:
                out.append(key)

    def list(self, prefix: str) -> list[str]:
        if not self.root.is_dir():
            raise BackendError(
                f"the store directory {self.root} no longer exists (was the backend "
                "directory deleted while jobs ran?)"
            )
        head, _, name = prefix.rpartition("/")
        base = self.root / head if head else self.root
        out: list[str] = []
        rel = f"{head}/" if head else ""
        try:
            entries = list(os.scandir(base))
        except (FileNotFoundError, NotADirectoryError):
            return []
        for e in entries:
            if e.name.startswith(".") or not e.name.startswith(name):
                continue
            if e.is_dir(follow_symlinks=False):
                self._walk(Path(e.path), f"{rel}{e.name}/", out)
            else:
                out.append(f"{rel}{e.name}")
        out.sort()
        return out

    def remove(self, key: str) -> bool:
        path = self._path(key)
        if path.is_dir():
            return False  # a "directory" of other keys, not a key
        try:
            os.unlink(path)
        except (FileNotFoundError, NotADirectoryError):
            return False
        return True

    def sizes(self, prefix: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for key in self.list(prefix):
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                out[key] = os.stat(self.root / key).st_size
        return out

    def delete(self, prefix: str) -> int:
        keys = self.list(prefix)
        for key in keys:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.root / key)
        dirs = sorted({str(Path(k).parent) for k in keys}, key=len, reverse=True)
        for d in dirs:
            p = self.root / d
            while p != self.root:
                try:
                    p.rmdir()
                except OSError:
                    break
                p = p.parent
        return len(keys)


def _secret(path: Path) -> bytes:
    outside = secret_from_env()
    if outside is not None:
        return outside
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    tmp = path.with_name(f".secret.{secrets.token_hex(6)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(32))
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)  # first writer wins; everyone reads the winner's key
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    return path.read_bytes()


def _mkdirs(root: Path, d: Path) -> None:
    """``d`` and every missing directory between ``root`` and it, each mode 0700
    (``mkdir(parents=True)`` would give the intermediate ones the umask's mode)."""
    if d.is_dir():
        return
    missing = []
    while d != root and not d.exists():
        missing.append(d)
        d = d.parent
    for p in reversed(missing):
        with contextlib.suppress(FileExistsError):
            p.mkdir(mode=0o700)


def _private_dir(root: Path) -> None:
    """The backend's directory, made (or kept) readable by its owner only: it holds
    the key, every job's inputs, results and logs."""
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = root.stat()
    if st.st_uid == os.getuid() and st.st_mode & 0o077:
        os.chmod(root, 0o700)


def sqlite_dir(url: str) -> Path:
    rest = url.split("://", 1)[1]
    rest = rest.split("?", 1)[0]
    if not rest:
        raise ConfigError(f"backend {url!r} names no directory; use 'sqlite:///path/to/dir'")
    return Path(rest).expanduser().resolve()


class SqliteBackend(Backend):
    poll_interval = 0.01  # a directory listing on this machine: polling is cheap
    poll_max = 0.05
    flush_interval = 0.5
    idle_wait = 2.0  # a waiting lease sleeps on the doorbell: a new message wakes it


def open_sqlite(url: str) -> SqliteBackend:
    """Open (creating if needed) the SQLite backend in the URL's directory."""
    root = sqlite_dir(url)
    try:
        _private_dir(root)
        key = _secret(root / "secret.key")
        queue = SqliteQueue(root / "queue.db")
    except OSError as e:
        raise ConfigError(
            f"cannot use {root} for the SQLite backend: {e.strerror}; "
            "choose a writable directory with backend='sqlite:///path'"
        ) from None
    except sqlite3.DatabaseError as e:
        raise BackendError(f"{root / 'queue.db'} is not a usable SQLite database: {e}") from None
    return SqliteBackend("sqlite://" + str(root), queue, FileStore(root / "store"), key)
