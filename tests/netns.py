"""Several "machines" on one machine: network namespaces on a private bridge.

::

    root namespace (the test, the client)        hub namespace "<lab>-hub"
      veth <lab>-r  10.X.Y.254/24  ──────────────  br0  10.X.Y.1/24
                                                    │
    host namespace "<lab>-h1"  eth0 10.X.Y.11 ──────┤
    host namespace "<lab>-h2"  eth0 10.X.Y.12 ──────┘

The bridge lives in its own namespace, so nothing is left in the root
namespace when the lab is removed (deleting a namespace deletes its ends of
the veth pairs, and with them the other ends). Every address is on the lab's
own /24; traffic never leaves the namespaces the test made. The filesystem
is shared: give each host its own directories.

Requires root and iproute2. ``available()`` says whether this machine can;
tests skip locally without it but fail in CI (``CI=true``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field

import pytest

_PREFIX = "cl"


def available() -> str | None:
    """None if namespaces can be made here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if subprocess.run(["which", "ip"], capture_output=True).returncode:
        return "iproute2 (`ip`) is not installed"
    return None


def require() -> None:
    """Skip a test that needs namespaces where they cannot be made; fail in CI."""
    why = available()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"CI must be able to run namespace tests: {why}")
        pytest.skip(why)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and r.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")
    return r


def _ns_pids(ns: str) -> list[int]:
    r = _ip("netns", "pids", ns, check=False)
    return [int(x) for x in r.stdout.split()]


def _kill_ns(ns: str, timeout: float = 5.0) -> None:
    """SIGKILL every process in a namespace (a power cut) and wait for them to go."""
    deadline = time.monotonic() + timeout
    while True:
        pids = _ns_pids(ns)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            return
        time.sleep(0.05)


def remove_stale() -> None:
    """Delete labs left by test runs that died (their creator's pid is gone)."""
    r = _ip("netns", "list", check=False)
    for line in r.stdout.splitlines():
        ns = line.split()[0] if line.strip() else ""
        parts = ns.split("-")
        if len(parts) < 3 or parts[0] != _PREFIX or not parts[1].isdigit():
            continue
        if not os.path.exists(f"/proc/{parts[1]}"):
            _kill_ns(ns, timeout=1)
            _ip("netns", "delete", ns, check=False)


@dataclass
class Host:
    """One namespace with one address on the lab network."""

    lab: Lab
    name: str
    ns: str
    address: str
    procs: list[subprocess.Popen] = field(default_factory=list)

    def argv(self, argv: list[str]) -> list[str]:
        # `ip` by its full path: the process may get a PATH of its own (a machine's image)
        return [shutil.which("ip") or "ip", "netns", "exec", self.ns, *argv]

    def popen(self, argv: list[str], **kw) -> subprocess.Popen:
        """Start a process inside this host, in its own session (process group)."""
        kw.setdefault("start_new_session", True)
        kw.setdefault("stdin", subprocess.DEVNULL)
        p = subprocess.Popen(self.argv(argv), **kw)
        self.procs.append(p)
        return p

    def run(self, argv: list[str], timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        return subprocess.run(self.argv(argv), timeout=timeout, **kw)

    def pids(self) -> list[int]:
        return _ns_pids(self.ns)

    def kill_all(self) -> None:
        """Pull the plug: every process in the host dies at once."""
        _kill_ns(self.ns)
        for p in self.procs:
            try:
                p.wait(2)
            except subprocess.TimeoutExpired:
                pass

    def shut_down(self, grace: float = 5.0) -> None:
        """An operating system's shutdown: SIGTERM to every process, then, after
        ``grace`` seconds, the plug for whatever is left."""
        for pid in _ns_pids(self.ns):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while _ns_pids(self.ns) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.kill_all()

    def remove(self, grace: float = 0.0) -> None:
        """Remove the host (``grace`` > 0: shut it down first, else pull the plug)."""
        if grace > 0:
            self.shut_down(grace)
        self.kill_all()
        _ip("netns", "delete", self.ns, check=False)
        self.lab.hosts.pop(self.name, None)


class Lab:
    """A private /24 with a bridge; the root namespace has ``.254`` on it."""

    _made = 0

    def __init__(self, tag: str = "lab"):
        remove_stale()
        pid = os.getpid()
        self.name = f"{_PREFIX}-{pid}-{tag}"[:12]
        # a /24 in 10.200-249.x chosen from the pid, so parallel runs do not collide
        Lab._made += 1
        self.net = f"10.{200 + pid % 50}.{(pid // 50 + Lab._made) % 250}"
        self.address = f"{self.net}.254"
        self.hub = f"{_PREFIX}-{pid}-{tag}-hub"
        self.hosts: dict[str, Host] = {}
        self._next = 11
        self._veth = 0
        _ip("netns", "add", self.hub)
        try:
            _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.hub, "link", "set", "br0", "up")
            root_end = f"cl{pid % 100000}x{Lab._made}"[:15]
            _ip("link", "add", root_end, "type", "veth", "peer", "name", "up0", "netns", self.hub)
            _ip("-n", self.hub, "link", "set", "up0", "master", "br0", "up")
            _ip("addr", "add", f"{self.address}/24", "dev", root_end)
            _ip("link", "set", root_end, "up")
        except Exception:
            self.close()
            raise

    def add_host(self, name: str) -> Host:
        """A new namespace on the lab network, with loopback up."""
        ns = f"{_PREFIX}-{os.getpid()}-{name}"
        address = f"{self.net}.{self._next}"
        self._next += 1
        self._veth += 1
        port = f"p{self._veth}"
        _ip("netns", "add", ns)
        _ip("link", "add", port, "netns", self.hub, "type", "veth", "peer", "name", "eth0",
            "netns", ns)  # fmt: skip
        _ip("-n", self.hub, "link", "set", port, "master", "br0", "up")
        _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        host = Host(self, name, ns, address)
        self.hosts[name] = host
        return host

    def close(self) -> None:
        for host in list(self.hosts.values()):
            host.remove()
        _kill_ns(self.hub, timeout=1)
        _ip("netns", "delete", self.hub, check=False)


def wait_port_in(host: Host, port: int, timeout: float = 30.0) -> None:
    """Wait until a process in ``host`` listens on TCP ``port`` (any address).

    Reads the namespace's socket table through /proc, so it costs no process.
    """
    want = f":{port:04X} "
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in host.pids()[:1]:
            try:
                with open(f"/proc/{pid}/net/tcp") as f:
                    if any(want in line and line.split()[3] == "0A" for line in f):
                        return
            except OSError:
                pass
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} in {host.name} after {timeout:g} s")


def wait_port(host: str, port: int, timeout: float = 30.0) -> None:
    """Wait until something accepts TCP connections on host:port."""
    import socket

    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"nothing listens on {host}:{port} after {timeout:g} s"
                ) from None
            time.sleep(0.1)
