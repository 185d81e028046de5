"""LocalStack's S3 and SQS, without Docker, in a network namespace of their own.

::

    root namespace: the test = the client         lab network 10.X.Y.0/24
      boto3 ────────────────────────────────────► "localstack" namespace: LocalStack :4566
                                                    (S3 and SQS: its own implementations,
                                                     not moto's)

LocalStack is a second, independent implementation of the SQS and S3 APIs, so
the aws backend is tested against two: what passes only on moto is moto's
reading of AWS, not AWS's. It needs Python 3.13 and runs from its own venv
(``make localstack`` makes ``.venv-localstack``). Its gateway listens on
0.0.0.0 whatever it is told, hence the namespace: nothing outside the test can
reach it. It is Ready in about 9 s, so a test session starts one and shares it
(every test makes its own bucket and queue).

``available()`` says whether this machine can run it; tests skip locally
without it but fail in CI (``CI=true``), as the other namespace tests do.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import netns
import pytest

ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = ROOT / ".venv-localstack" / "bin" / "python"
PORT = 4566


def python() -> Path:
    """LocalStack's interpreter (``CLOUDLOOP_LOCALSTACK_PYTHON`` overrides the venv's)."""
    return Path(os.environ.get("CLOUDLOOP_LOCALSTACK_PYTHON") or VENV_PYTHON)


def available() -> str | None:
    """None if LocalStack can be run here, else the reason it cannot."""
    why = netns.available()
    if why:
        return f"LocalStack runs in a network namespace: {why}"
    if not python().exists():
        return f"no LocalStack at {python()}: run `make localstack` (it needs Python 3.13)"
    return None


def require() -> None:
    """Skip a test that needs LocalStack where it cannot run; fail in CI."""
    why = available()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"CI must be able to run LocalStack: {why}")
        pytest.skip(why)


class LocalStack:
    """One LocalStack (S3 and SQS) on its own lab address; ``endpoint`` is its URL."""

    def __init__(self, root: Path, timeout: float = 90.0):
        self.root = root
        self.lab = netns.Lab("ls")
        self.proc: subprocess.Popen | None = None
        self.log_path = root / "localstack.log"
        try:
            self.host = self.lab.add_host("localstack")
            where = f"{self.host.address}:{PORT}"
            self.endpoint = f"http://{where}"
            env = {
                "PATH": "/usr/local/bin:/usr/bin:/bin",
                "HOME": str(root),
                "LANG": "C.UTF-8",
                "SERVICES": "s3,sqs",
                "EAGER_SERVICE_LOADING": "1",
                "GATEWAY_LISTEN": where,
                "LOCALSTACK_HOST": where,
                "OVERRIDE_IN_DOCKER": "0",  # this machine has /.dockerenv
                "SKIP_SSL_CERT_DOWNLOAD": "1",
                "DISABLE_EVENTS": "1",
                "DNS_ADDRESS": "0",
                "PERSISTENCE": "0",
                "FILESYSTEM_ROOT": str(root / "fs"),
                "LOCALSTACK_VOLUME_DIR": str(root / "volume"),
            }
            with open(self.log_path, "wb") as log:
                self.proc = self.host.popen(
                    [str(python()), "-m", "localstack.runtime.main"],
                    env=env,
                    cwd=str(root),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            t = time.monotonic()
            self._wait_ready(timeout)
            self.start_s = time.monotonic() - t
        except Exception:
            self.close()
            raise

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _health(self) -> dict:
        with urllib.request.urlopen(f"{self.endpoint}/_localstack/health", timeout=2) as r:
            return dict(json.load(r).get("services", {}))

    def _wait_ready(self, timeout: float) -> None:
        """Until the log says Ready and S3 and SQS both answer as running."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"LocalStack exited ({self.proc.returncode}) before it was ready:\n"
                    + self.log()[-3000:]
                )
            if "Ready." in self.log():
                try:
                    services = self._health()
                except OSError:
                    services = {}
                if all(services.get(s) in ("running", "available") for s in ("s3", "sqs")):
                    return
            time.sleep(0.1)
        raise TimeoutError(f"LocalStack not ready after {timeout:g} s:\n" + self.log()[-3000:])

    def close(self, grace: float = 2.0) -> None:
        """Stop LocalStack: SIGTERM to its process group, SIGKILL after ``grace``
        seconds (it keeps nothing, and a clean stop takes 3-6 s), then its lab."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
            except ProcessLookupError:
                pass
        self.lab.close()  # and whatever is left in the namespace
