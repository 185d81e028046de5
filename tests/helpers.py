"""Helpers shared by tests (imported as ``helpers``)."""

from __future__ import annotations

import os
import signal
import time

import cloudloop as cl


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill(pid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def long_training(steps, delay):
    """A task that checkpoints every step and hands its work back on a spot notice."""
    state = cl.restore({"step": 0, "resumed_at": None, "runs": 0})
    if state["step"]:
        state["resumed_at"] = state["step"]
    state["runs"] += 1
    while state["step"] < steps:
        time.sleep(delay)
        state["step"] += 1
        cl.checkpoint(state)
        if cl.preempted():
            raise cl.Preempted()  # state is saved: let another machine carry on now
    return state


def worker_records(backend) -> list[dict]:
    """Every worker's heartbeat record (verified), as dicts."""
    from cloudloop.heartbeat import worker_records as records

    return [r.as_dict() for r in records(backend)]
