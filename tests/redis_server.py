"""A real ``redis-server`` for tests: its own port, directory and (optionally) TLS and password.

Started and stopped by the tests themselves; persistence is append-only
(``appendfsync always`` when asked) so a restart on the same directory keeps
everything, and no RDB snapshots are written (``--save ''``).
"""

from __future__ import annotations

import datetime
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import pytest


def require() -> None:
    """Skip without redis-server locally; fail in CI, which must have it."""
    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail("CI must have redis-server (scripts/test-deps.sh installs it)")
        pytest.skip("redis-server is not installed (make test-deps)")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _self_signed(dir: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = dir / "tls.crt", dir / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class RedisServer:
    """One redis-server process; ``restart()`` kills it (-9) and starts it on the same data."""

    def __init__(
        self,
        dir: Path,
        bind: str = "127.0.0.1",
        password: str | None = None,
        tls: bool = False,
        fsync_always: bool = False,
        popen=subprocess.Popen,
    ):
        self.dir = Path(dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.bind, self.password, self.tls = bind, password, tls
        self.port = free_port(bind)
        self.fsync_always = fsync_always
        self.popen = popen
        self.proc: subprocess.Popen | None = None
        self.cert: Path | None = None
        self.key: Path | None = None
        if tls:
            self.cert, self.key = _self_signed(self.dir)
        self.start()

    def argv(self) -> list[str]:
        argv = ["redis-server", "--bind", self.bind, "--dir", str(self.dir), "--save", "",
                "--appendonly", "yes", "--protected-mode", "no", "--daemonize", "no",
                "--logfile", str(self.dir / "redis.log")]  # fmt: skip
        if self.fsync_always:
            argv += ["--appendfsync", "always"]
        if self.password:
            argv += ["--requirepass", self.password]
        if self.tls:
            argv += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file",
                     str(self.cert), "--tls-key-file", str(self.key), "--tls-ca-cert-file",
                     str(self.cert), "--tls-auth-clients", "no"]  # fmt: skip
        else:
            argv += ["--port", str(self.port)]
        return argv

    def start(self) -> None:
        self.proc = self.popen(self.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection((self.bind, self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    log = (self.dir / "redis.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"redis-server did not start:\n{log}") from None
                time.sleep(0.05)

    def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        """Pull the plug (SIGKILL), then start again on the same directory."""
        self.stop(kill=True)
        self.start()

    def url(self, prefix: str | None = None, db: int = 0) -> str:
        scheme = "rediss" if self.tls else "redis"
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        query = []
        if prefix:
            query.append(f"prefix={prefix}")
        if self.tls:
            query.append(f"ca_certs={self.cert}")
        q = ("?" + "&".join(query)) if query else ""
        return f"{scheme}://{auth}{self.bind}:{self.port}/{db}{q}"
