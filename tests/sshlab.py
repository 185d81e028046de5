"""A lab of SSH "hosts": network namespaces, each running a real sshd.

::

    root namespace: the test (client), redis-server on the lab address
      │ lab bridge
      ├── n1  sshd :2222, HOME=<tmp>/n1
      ├── n2  sshd :2222, HOME=<tmp>/n2
      ├── n3  sshd :2222, HOME=<tmp>/n3
      └── "dead" (an address nobody has) and "badkey" (n1 with a key it refuses)

Each host gets its own HOME (``SetEnv`` in its sshd_config) because the
namespaces share one filesystem. Used by the ssh provider's tests and the
provider contract suite.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import netns
import pytest
import redis_server as rs

PORT = 2222
HOSTS = ("n1", "n2", "n3")


def _sshd(host, d: Path, home: Path) -> None:
    cfg = d / f"sshd-{host.name}.conf"
    cfg.write_text(
        f"Port {PORT}\nListenAddress {host.address}\nHostKey {d / 'hostkey'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        f"PidFile {d / f'sshd-{host.name}.pid'}\nPermitRootLogin prohibit-password\n"
        f"SetEnv HOME={home}\n"
    )
    host.popen(["/usr/sbin/sshd", "-D", "-f", str(cfg), "-E", str(d / f"sshd-{host.name}.log")])
    netns.wait_port(host.address, PORT, 15)


class LabRig:
    def __init__(self, d: Path):
        self.d = d
        for name in ("id", "hostkey", "other"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)],
                           check=True)  # fmt: skip
        (d / "authorized_keys").write_text((d / "id.pub").read_text())
        os.makedirs("/run/sshd", exist_ok=True)
        self.lab = netns.Lab("ssh")
        self.hosts = {}
        try:
            for name in HOSTS:
                host = self.lab.add_host(name)
                (d / "home" / name).mkdir(parents=True)
                _sshd(host, d, d / "home" / name)
                self.hosts[name] = host
            self.redis = rs.RedisServer(d / "redis", bind=self.lab.address)
        except BaseException:
            self.lab.close()
            raise
        entries = [(n, h.address, "id") for n, h in self.hosts.items()]
        entries += [
            ("dead", f"{self.lab.net}.99", "id"),
            ("badkey", self.hosts["n1"].address, "other"),
        ]
        self.ssh_config = d / "ssh_config"
        self.ssh_config.write_text(
            "".join(
                f"Host {alias}\n  HostName {addr}\n  Port {PORT}\n  User root\n"
                f"  IdentityFile {d / key}\n  IdentitiesOnly yes\n  StrictHostKeyChecking no\n"
                "  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n"
                for alias, addr, key in entries
            )
        )

    def restart_sshd(self, name: str) -> None:
        _sshd(self.hosts[name], self.d, self.d / "home" / name)

    def profile(self, where: Path, name: str, hosts: list[str], url: str = "", **extra) -> str:
        """Write cloudloop.toml with an ssh profile on its own Redis prefix; returns the URL."""
        url = url or self.redis.url(prefix=f"{name}{secrets.token_hex(3)}")
        # the hosts' interpreter: this one's base, so the wheels built here fit it exactly
        extra.setdefault("python", os.path.realpath(sys._base_executable))
        lines = [f"[profiles.{name}]", f'backend = "{url}"', 'provider = "ssh"',
                 f"hosts = {json.dumps(hosts)}", f'ssh_config = "{self.ssh_config}"',
                 "connect_timeout = 3", 'lease = "3s"', 'heartbeat = "0.5s"']  # fmt: skip
        lines += [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
        (where / "cloudloop.toml").write_text("\n".join(lines) + "\n")
        return url

    def workers_on(self, name: str) -> list[str]:
        """Command lines of cloudloop processes inside a host's namespace."""
        out = []
        for pid in self.hosts[name].pids():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "cloudloop" in cmd:
                out.append(cmd)
        return out

    def close(self) -> None:
        try:
            self.redis.stop()
        finally:
            self.lab.close()


def require() -> None:
    """Skip (fail in CI) unless namespaces, redis-server and OpenSSH are all here."""
    netns.require()
    rs.require()
    for tool in ("/usr/sbin/sshd", "ssh", "ssh-keygen"):
        if not shutil.which(tool):
            if os.environ.get("CI"):
                pytest.fail(f"CI must have {tool} (scripts/test-deps.sh installs it)")
            pytest.skip(f"{tool} is not installed")


def host_python() -> str:
    """The hosts' interpreter: this one's base, so the wheels built here fit it exactly."""
    return os.path.realpath(sys._base_executable)
