"""Tasks run in a child process group: timeouts, memory limits, log capture.

::

    worker (RunnerProcess)                        runner child (own session = process group)
    ──────────────────────                        ───────────────────────────────────────────
    load(chunk payload, fns) ──── ctl pipe ────►  unpickle the chunk (user code lives only here)
    run([(index, attempt)...]) ── ctl pipe ────►  for each task: status <- index, attempt, t0, log offset
                                                    seed random/numpy, call fn, retry user errors
    poll() ◄───────────────────── result pipe ──   outcomes, batched (every 20 ms and at batch end)
    serve a call ◄──────────────── result pipe ──   cl.checkpoint / restore / output files / shared
      reply ───────────────────────── ctl pipe ──►    arguments: the worker does the store call
    status() ◄──────────────────── mmap file ───   which task runs since when; its cl.progress()
    rss(), kill() ── /proc ────────────────────►   timeout / memory / cancel end every descendant
    log file ◄──────────────────── fds 1 and 2 ──  everything the task and its children print

The child is reused across the tasks of one job (starting an interpreter per
task would cost more than a tiny task), and replaced after it is killed or
dies, and whenever the worker turns to another job, so nothing one job's code
leaves behind in the interpreter can touch another job's tasks. Because its
stdout and stderr are one ``O_APPEND`` file, output from subprocesses of a task
is captured too; each task's log is the byte range written while it ran.

The child never holds the backend's key or a connection to the store: what a
task stores (checkpoints, output files) it asks the worker to store, over the
pipes, and the worker signs it under that task's own keys. Everything the
child sends is plain data, read with :func:`codec.loads_data`, so even a task
that sets out to subvert its runner cannot run code in the worker.

The child is a child subreaper (``PR_SET_CHILD_SUBREAPER``): processes a task
starts and forgets (``setsid``, a daemonising server, ``cmd &``) are
re-parented to it instead of to init, and it ends all of them when the task
ends. When the worker kills the child (timeout, memory, cancellation), it
first freezes and then kills every descendant, wherever it has moved to.
"""

from __future__ import annotations

import _random
import inspect
import logging
import mmap
import os
import pickle
import random
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from . import codec, commands, context, outputs, procs
from .errors import (
    BackendError,
    CommandFailed,
    ConfigError,
    Preempted,
    SerializationError,
    TamperedError,
    TaskCrashed,
)
from .model import RunnerJob

_FMT = "<QqidQd"  # seq, index, attempt, started, log offset, progress
_pack_rec = struct.Struct(_FMT).pack_into
_pack_seq = struct.Struct("<Q").pack_into
_MSG_AT, _MSG_MAX, _SIZE = 64, 400, 512
_PREEMPT_AT = 480  # one byte the worker sets when a spot interruption notice arrives
_FLUSH_EVERY = 0.02
log = logging.getLogger("cloudloop.worker")
_seed_random = _random.Random.seed
_global_random = random._inst  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Status:
    index: int  # -1 when idle
    attempt: int
    started: float
    log_offset: int
    progress: float  # -1: never reported
    message: str


class _StatusFile:
    """A seqlock-protected record in a shared mmap (written by the child only)."""

    def __init__(self, path: Path, create: bool = False):
        if create:
            path.write_bytes(b"\0" * _SIZE)
        self._f = open(path, "r+b")
        self._m = mmap.mmap(self._f.fileno(), _SIZE)
        self._seq = 0
        self._msg = True

    def write(self, index: int, attempt: int, started: float, off: int, prog: float, msg: str):
        m, seq = self._m, self._seq + 1
        _pack_seq(m, 0, seq)  # odd: a reader retries until the write is done
        _pack_rec(m, 0, seq, index, attempt, started, off, prog)
        if msg or self._msg:
            raw = msg.encode()[:_MSG_MAX]
            struct.pack_into("<H", m, _MSG_AT, len(raw))
            m[_MSG_AT + 2 : _MSG_AT + 2 + len(raw)] = raw
            self._msg = bool(msg)
        self._seq = seq + 1
        _pack_seq(m, 0, seq + 1)

    def set_preempt(self) -> None:
        self._m[_PREEMPT_AT] = 1

    def preempted(self) -> bool:
        return self._m[_PREEMPT_AT] == 1

    def read(self) -> Status:
        for _ in range(100):
            s1 = struct.unpack_from("<Q", self._m, 0)[0]
            _, index, attempt, started, off, prog = struct.unpack_from(_FMT, self._m, 0)
            (n,) = struct.unpack_from("<H", self._m, _MSG_AT)
            msg = bytes(self._m[_MSG_AT + 2 : _MSG_AT + 2 + min(n, _MSG_MAX)])
            if s1 % 2 == 0 and struct.unpack_from("<Q", self._m, 0)[0] == s1:
                return Status(index, attempt, started, off, prog, msg.decode(errors="replace"))
            time.sleep(0.0001)
        return Status(-1, 0, 0.0, 0, -1.0, "")

    def close(self) -> None:
        self._m.close()
        self._f.close()


# ---------------------------------------------------------------- parent side


class RunnerDied(Exception):
    def __init__(self, returncode: int | None):
        super().__init__(returncode)
        self.returncode = returncode


class RunnerProcess:
    """The worker's handle on its task runner child."""

    def __init__(self, scratch: Path, env: dict[str, str] | None = None):
        self.scratch = scratch
        self.log_path = scratch / "tasks.log"
        self.env = env
        self.proc: subprocess.Popen | None = None
        self._shm = scratch / "status"
        self._status = _StatusFile(self._shm, create=True)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        ctl_r, ctl_w = os.pipe()
        res_r, res_w = os.pipe()
        shm = self._shm
        self._status.write(-1, 0, 0.0, 0, -1.0, "")
        log = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cloudloop.runner", str(ctl_r), str(res_w), str(shm)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                pass_fds=(ctl_r, res_w),
                start_new_session=True,
                env=self.env,
            )
        finally:
            for fd in (ctl_r, res_w, log):
                os.close(fd)
        self._ctl = Connection(ctl_w, readable=False)
        self._res = Connection(res_r, writable=False)

    def send(self, kind: str, data: Any) -> None:
        try:
            self._ctl.send_bytes(pickle.dumps((kind, data), protocol=pickle.HIGHEST_PROTOCOL))
        except OSError:
            raise RunnerDied(self.proc.poll() if self.proc else None) from None

    def recv(self, timeout: float) -> Any | None:
        """The next message from the child (plain data only), None on timeout;
        RunnerDied if it is gone or sent something that is not plain data."""
        try:
            if self._res.poll(timeout):
                return codec.loads_data(self._res.recv_bytes())
        except (EOFError, OSError):
            pass
        except TamperedError as e:
            log.error("the task runner sent something other than plain data: %s", e)
            self.kill()
            raise RunnerDied(None) from e
        else:
            if self.proc is not None and self.proc.poll() is None:
                return None
        returncode = self.proc.wait() if self.proc else None
        raise RunnerDied(returncode)

    def fileno(self) -> int | None:
        """The pipe the child's messages arrive on (to wait on with select/poll), or
        None when no child runs."""
        res = getattr(self, "_res", None)
        return None if res is None else res.fileno()

    def status(self) -> Status:
        return self._status.read()

    def preempt(self) -> None:
        """Tell the task (``cl.preempted()``) and the runner that the machine is going away."""
        self._status.set_preempt()

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def read_log(self, start: int, end: int) -> bytes:
        if end <= start:
            return b""
        with open(self.log_path, "rb") as f:
            f.seek(start)
            return f.read(end - start)

    def reply(self, ok: bool, value: Any) -> None:
        """Answer a call the child made (see :meth:`_Child.call_worker`)."""
        self.send("reply", (ok, value))

    def rss(self) -> int:
        """Resident memory of the child and every descendant, in bytes."""
        proc = self.proc
        if proc is None:
            return 0
        table = procs.proc_table()
        page = os.sysconf("SC_PAGE_SIZE")
        return (
            sum(table[p][1] for p in [proc.pid, *procs.descendants(proc.pid, table)] if p in table)
            * page
        )

    def kill(self) -> int | None:
        """Kill the child and every process it started (wherever it moved); its exit status."""
        if self.proc is None:
            return None
        procs.kill_tree(self.proc.pid)
        rc = self.proc.wait()
        self.close()
        return rc

    def close(self) -> None:
        for conn in (getattr(self, "_ctl", None), getattr(self, "_res", None)):
            if conn is not None:
                conn.close()
        self._ctl = self._res = None  # type: ignore[assignment]
        if self.proc is not None and self.proc.poll() is None:
            procs.kill_tree(self.proc.pid)
            self.proc.wait()
        self.proc = None

    def truncate_log(self) -> None:
        """Empty the log file (only between chunks, when no task is writing)."""
        with open(self.log_path, "r+b") as f:
            f.truncate(0)


# ---------------------------------------------------------------- child side


def _own_frame(tb) -> bool:
    return tb.tb_frame.f_code.co_filename == __file__


def _format_tb(exc: BaseException) -> str:
    tb = exc.__traceback__
    while tb is not None and _own_frame(tb):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


class _Child:
    """State of the runner child: the current chunk and cached functions."""

    def __init__(self, res: Connection, ctl: Connection, status: _StatusFile):
        self.res = res
        self.ctl = ctl
        self.status = status
        self._call_lock = threading.Lock()
        self._leftovers = procs.Leftovers()
        self.fns: dict[str, Any] = {}
        self.wants_rng: dict[str, bool] = {}
        self.job: RunnerJob | None = None
        self.tasks: list[Any] = []
        self.load_error: BaseException | None = None
        self.lo = 0
        self.rows: list[tuple] = []  # OutcomeRow's fields, not yet sent
        self.indices: list[int] = []
        self.side: list[tuple] = []  # (index, log segments, checkpointed, failed), when any
        self.last_send = 0.0
        self.cur = (-1, 0, 0.0, 0)
        self.log_end = 0
        self.saved_env: dict[str, str | None] = {}
        self.ctx: context.TaskContext | None = None
        self.pid = os.getpid()
        self.out_prefix, self.out_suffix = "", ""  # a function task's output directory
        self.server: commands.Server | None = None  # a served command job's process

    def load(self, data: dict[str, Any]) -> None:
        job: RunnerJob = data["job"]
        if self.server is not None and (self.job is None or self.job.id != job.id):
            self.close_server()  # another job now: the served command has no more rows
        self.job = job
        self.lo = data["lo"]
        self.load_error = None
        for k, v in self.saved_env.items():  # undo the previous job's environment
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        self.out_prefix, self.out_suffix = f"{job.workroot}/out-{job.id}-", f"-{self.pid}"
        self.saved_env = {k: os.environ.get(k) for k in job.env}
        os.environ.update(job.env)
        self.ctx = context.TaskContext(
            job_id=job.id,
            index=-1,
            attempt=0,
            job_seed=job.seed,
            call=self.call_worker,
            report_progress=self.progress,
            is_preempted=self.status.preempted,
        )
        try:
            for ref, blob in data["fns"].items():
                if ref not in self.fns:
                    if len(self.fns) >= 256:
                        old = next(iter(self.fns))
                        del self.fns[old], self.wants_rng[old]
                    fn = codec.loads(blob)
                    self.fns[ref] = fn
                    self.wants_rng[ref] = _accepts_rng(fn)
            tasks = codec.loads(data["payload"])
            if data.get("nested"):  # submit()'s tasks, pickled one by one: one bad one
                tasks = [_load_one(t) for t in tasks]  # fails alone, not its neighbours
            swap = data.get("swap")
            if swap:  # a retry with a fixed function (the worker checked the references)
                tasks = [_swapped(t, swap) for t in tasks]
            self.tasks = tasks
        except BaseException as e:
            self.tasks = []
            self.load_error = _explain_load_error(e)

    def call_worker(self, op: str, *args: Any) -> Any:
        """Ask the worker to do a store operation for the running task (it signs,
        under this task's keys only); blocks until it answers."""
        index = self.cur[0]
        with self._call_lock:
            msg = ("call", (op, index, args))
            self.res.send_bytes(pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL))
            try:
                kind, (ok, value) = pickle.loads(self.ctl.recv_bytes())
            except (EOFError, OSError):
                raise BackendError("the worker went away during a store call") from None
        if kind != "reply" or not ok:
            raise BackendError(f"cl.{op}: {value}")
        return value

    def progress(self, fraction: float, message: str) -> None:
        index, attempt, started, off = self.cur
        self.status.write(index, attempt, started, off, fraction, message)

    def run(self, todo: list[tuple[int, int]]) -> None:
        self.log_end = _log_start()
        preempted, monotonic = self.status.preempted, time.monotonic
        run_one = self.run_one
        for index, attempt in todo:
            if preempted():  # start nothing new on a machine about to vanish
                break
            if not run_one(index, attempt):
                break
            if monotonic() - self.last_send > _FLUSH_EVERY:
                self.send()
        self.cur = (-1, 0, 0.0, 0)
        self.status.write(-1, 0, 0.0, 0, -1.0, "")
        self.send()
        self.res.send_bytes(pickle.dumps(("end", None)))

    def send(self) -> None:
        """Outcome rows go pre-packed, so the worker stores them without unpickling."""
        if self.rows:
            msg = ("outcomes", (codec.pack_rows(self.rows), self.indices, self.side))
            self.res.send_bytes(pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL))
            self.rows, self.indices, self.side = [], [], []
        self.last_send = time.monotonic()

    def run_one(self, index: int, attempt: int) -> bool:
        """Run a task (its retries too) and keep its outcome row. The usual case (it
        returns at once, prints nothing, stores nothing) costs a few microseconds."""
        job = self.job
        assert job is not None
        segments = None
        while True:
            started, off = time.time(), self.log_end
            self.cur = (index, attempt, started, off)
            self.status.write(index, attempt, started, off, -1.0, "")
            ok, payload, checkpointed = self.call(index, attempt)
            if ok is None:  # the task handed itself back (cl.Preempted): no outcome
                self.log_end = _log_end()
                return False
            if not ok:  # the attempt's log ends with why it failed
                sys.stderr.write(payload.traceback)
                if job.retry_after(attempt):
                    left = job.retries - attempt + 1
                    sys.stderr.write(
                        f"cloudloop: task {index} attempt {attempt} failed; retrying ({left} left)\n"
                    )
            end = self.log_end = _log_end()
            if end > off:
                if segments is None:
                    segments = []
                segments.append((attempt, off, end))
            if ok or not job.retry_after(attempt):
                break
            attempt += 1
        # a plain tuple in OutcomeRow's order: what codec.pack_rows sends
        if ok:
            self.rows.append((index, attempt, payload, None, started, time.time(), False))
        else:
            self.rows.append((index, attempt, None, payload.to_wire(), started, time.time(), False))
        self.indices.append(index)
        if segments or checkpointed or not ok:
            self.side.append((index, segments or [], checkpointed, not ok))
        return True

    def call(self, index: int, attempt: int) -> tuple[bool | None, Any, bool]:
        """Run one attempt: (True, pickled value) or (False, ErrorInfo), and whether it
        checkpointed; (None, None, ...) when the task handed itself back (cl.Preempted)."""
        job, ctx = self.job, self.ctx
        assert job is not None and ctx is not None, "a task runs only after load"
        ctx.index, ctx.attempt, ctx.checkpointed = index, attempt, False
        context._set(ctx)
        try:
            if self.load_error is not None:
                raise self.load_error
            if job.seed_globals:
                seed = ctx.seed
                _seed_random(_global_random, seed)  # random.seed(seed) minus its Python wrapper
                _global_random.gauss_next = None  # type: ignore[attr-defined]
                if "numpy" in sys.modules:
                    sys.modules["numpy"].random.seed(seed % 2**32)
            task = self.tasks[index - self.lo]
            if type(task) is _Unloadable:
                raise task.error
            fn_ref, args, kwargs = task
            if job.kind == "command":
                value = self.command(index, ctx.seed, args[0])
            else:
                outputs.begin_lazy((self.out_prefix, index, self.out_suffix))
                if self.wants_rng[fn_ref] and "rng" not in kwargs:
                    kwargs = {**kwargs, "rng": context.task_rng()}
                value = self.fns[fn_ref](*args, **kwargs)
                if outputs.current_dir() is not None:  # the task called cl.output_dir()
                    self.upload_outputs()
            try:
                return True, codec.dumps_fast(value, "the result of task", index), ctx.checkpointed
            except SerializationError as e:
                return False, codec.error_info(e, f"SerializationError: {e}\n"), ctx.checkpointed
        except Preempted:
            if self.status.preempted():
                return None, None, ctx.checkpointed
            wrong = RuntimeError("cl.Preempted was raised but no spot interruption notice arrived")
            return False, codec.error_info(wrong, _format_tb(wrong)), ctx.checkpointed
        except (CommandFailed, TaskCrashed, ConfigError) as e:
            if job.kind != "command":
                return False, codec.error_info(e, _format_tb(e)), ctx.checkpointed
            # a command's failure is its reason, not cloudloop's frames; its output
            # is already in the log above, so the log ends with the reason alone
            reason = str(e).split("\n--- end of its stderr ---", 1)[0]
            return False, codec.error_info(e, f"cloudloop: {reason}\n"), ctx.checkpointed
        except BaseException as e:
            return False, codec.error_info(e, _format_tb(e)), ctx.checkpointed
        finally:
            context._set(None)
            outputs.end()
            keep = self.server.pid if self.server is not None else 0
            if self._leftovers.any(keep):
                n = procs.end_leftovers(keep=keep)
                sys.stderr.write(
                    f"cloudloop: task {index} left {n} process(es) running; they were ended\n"
                )

    def upload_outputs(self) -> None:
        """Hand the task's output directory, if it made one, to the worker to store."""
        d = outputs.current_dir()
        if d is not None and d.is_dir() and any(d.iterdir()):
            self.call_worker("outputs", str(d))

    def close_server(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            server.close()
            if server.workdir.name.startswith("serve-"):
                shutil.rmtree(server.workdir, ignore_errors=True)

    def serve(self, index: int, seed: int, item: Any) -> Any:
        """One row of a served command job: a line to the process that serves them."""
        job = self.job
        assert job is not None
        if self.server is None:
            cmd = commands.prepare(job.command or "", {}, -1, job.seed, job.id)
            workdir = Path(job.workroot) / f"serve-{job.id}-{os.getpid()}"
            workdir.mkdir(parents=True, exist_ok=True)
            for name, path in job.files.items():
                target = workdir / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
            env = {"CLOUDLOOP_WORKDIR": str(workdir), "CLOUDLOOP_JOB_ID": job.id, **cmd.env}
            self.server = commands.Server(cmd.script, workdir, env, cmd.shown)
        if self.server.proc is None or self.server.proc.poll() is not None:
            print(f"$ {self.server.shown}   (serving rows)", file=sys.stderr, flush=True)
        out = outputs.begin(self.server.workdir / f"out-{index}", create=True)
        message = {
            "row": item,
            "index": index,
            "row_number": index + 1,
            "seed": seed,
            "output": str(out),
        }
        try:
            value = self.server.ask(message, row_name(index))
        finally:
            self.upload_outputs()
            shutil.rmtree(out, ignore_errors=True)
        return value

    def command(self, index: int, seed: int, item: Any) -> Any:
        job = self.job
        assert job is not None
        if job.serve:
            return self.serve(index, seed, item)
        cmd = commands.prepare(  # values as data
            job.command or "", item, index, seed, job.id, where=row_name(index)
        )
        workdir = Path(job.workroot) / f"{job.id}-{index}-{os.getpid()}"
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            for name, path in job.files.items():
                target = workdir / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
            print(f"$ {cmd.shown}", file=sys.stderr, flush=True)
            env = {
                "CLOUDLOOP_WORKDIR": str(workdir),
                "CLOUDLOOP_TASK_INDEX": str(index),
                "CLOUDLOOP_TASK_SEED": str(seed),
                "CLOUDLOOP_JOB_ID": job.id,
                "CLOUDLOOP_OUTPUT": str(outputs.begin(workdir / "out", create=True)),
                **cmd.env,
            }
            try:
                done = commands.run_command(cmd.script, workdir, env, cmd.shown)
            except CommandFailed as e:
                raise CommandFailed(f"{row_name(index)}: {e}", e.returncode, e.stderr) from None
            except TaskCrashed as e:
                raise TaskCrashed(f"{row_name(index)}: {e}") from None
            self.upload_outputs()  # out/
            return done
        finally:
            if not os.environ.get("CLOUDLOOP_KEEP_WORKDIRS"):
                shutil.rmtree(workdir, ignore_errors=True)


def row_name(index: int) -> str:
    """How messages name a command task: the row of the user's file, counted from 1."""
    return f"row {index + 1} (task {index})"


class _Unloadable:
    """A task whose arguments could not be rebuilt here; running it raises why."""

    def __init__(self, error: BaseException):
        self.error = error


def _swapped(task: Any, swap: dict[str, str]) -> Any:
    if type(task) is tuple and len(task) == 3 and task[0] in swap:
        return (swap[task[0]], task[1], task[2])
    return task


def _load_one(blob: bytes) -> Any:
    try:
        return codec.loads(blob)
    except BaseException as e:  # SystemExit from a __setstate__ too: this task's problem
        return _Unloadable(_explain_load_error(e))


def _explain_load_error(e: BaseException) -> BaseException:
    """Say why a function or argument could not be rebuilt on this worker."""
    if isinstance(e, ImportError):
        hint = (
            f"{e}. The task's function or arguments need a module this worker cannot "
            "import: install it where workers run (the profile's requirements), or "
            "define the code in your script or project so cloudloop ships it by value."
        )
    elif isinstance(e, AttributeError) and "cloudloop.runner" in str(e):
        hint = (
            f"{e}. An object defined in your __main__ script was pickled by name "
            "(a decorated function or class whose wrapper cloudpickle cannot ship by "
            "value); move it into a module of your project or define it undecorated."
        )
    else:
        return e
    try:
        new = type(e)(hint)
    except Exception:
        return e
    new.__cause__ = e
    return new


def _accepts_rng(fn: Any) -> bool:
    try:
        return "rng" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


def _log_start() -> int:
    """The log's end as a run starts: the file may have been emptied since the
    last write, so the shared offset is moved to its end (see :func:`_log_end`)."""
    _flush()
    try:
        return os.lseek(1, 0, os.SEEK_END)
    except OSError:
        return _log_size()


def _log_end() -> int:
    """Where the log ends now. Fds 1 and 2 of this process and of everything it
    starts share one ``O_APPEND`` open file, whose offset every write moves to
    the end: reading that offset is cheaper than an ``fstat`` per task."""
    _flush()
    try:
        return os.lseek(1, 0, os.SEEK_CUR)
    except OSError:
        return _log_size()


def _log_size() -> int:
    try:
        return os.fstat(1).st_size
    except OSError:
        return 0


def main(argv: list[str]) -> None:
    ctl_fd, res_fd, shm = int(argv[0]), int(argv[1]), Path(argv[2])
    os.set_inheritable(ctl_fd, False)
    os.set_inheritable(res_fd, False)
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    procs.become_subreaper()
    ctl = Connection(ctl_fd, writable=False)
    child = _Child(Connection(res_fd, readable=False), ctl, _StatusFile(shm))
    while True:
        try:
            kind, data = pickle.loads(ctl.recv_bytes())
        except (EOFError, OSError):
            child.close_server()
            return
        if kind == "load":
            child.load(data)
        elif kind == "run":
            child.run(data)
        elif kind == "exit":
            child.close_server()
            return


if __name__ == "__main__":
    main(sys.argv[1:])
