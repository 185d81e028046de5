"""The ec2 provider's world for the cluster contract: a cloud-in-a-box (see cloudbox.py).

::

    ec2_world(tmp)
      ├─ netns.require()              skip where namespaces cannot be made (fail in CI)
      ├─ FAKE_KEYS into os.environ    the client's own keys (machines get none); restored after
      ├─ wheelhouse of this cloudloop what the machines' user-data installs, with no index
      ├─ CloudBox(tmp/"box")          moto_server in its namespace + the instance simulator
      └─ yield Ec2Cluster             on aws://box-<hex>/jobs at the box's endpoint: one
                                      worker per instance, heartbeat 1 s, lease 12 s,
                                      idle_exit 2 min, max_workers 4, listed prices
    afterwards: down() (whatever the test left), then the box closes: every machine's
    processes killed and its namespace removed, moto_server stopped

It runs module-scoped (one world serves a module's tests), so it sets the
environment itself rather than through monkeypatch. Imported from the
contract suite, where ``tests/`` is on ``sys.path`` (netns, cloudbox).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from cloudloop.model import WorkerOptions
from cloudloop.providers import get_provider
from cloudloop.providers.ec2 import Ec2Cluster

log = logging.getLogger(__name__)

OPTIONS = {
    "instance_types": ["c7a.large", "c6a.large"],
    "spot": True,
    "max_workers": 4,
    "workers_per_instance": 1,
    "prices": {"c7a.large": 0.10, "c6a.large": 0.08},
}
WORKER = WorkerOptions(lease=12.0, heartbeat=1.0, idle_exit=120.0)


@contextlib.contextmanager
def ec2_world(tmp: Path) -> Iterator[Ec2Cluster]:
    """An :class:`Ec2Cluster` whose instances boot in a cloud-in-a-box under ``tmp``."""
    import netns

    netns.require()
    from cloudbox import FAKE_KEYS, CloudBox

    saved = {k: os.environ.get(k) for k in FAKE_KEYS}
    os.environ.update(FAKE_KEYS)
    box = None
    try:
        (tmp / "box").mkdir(parents=True, exist_ok=True)
        box = CloudBox(tmp / "box").start()
        tag = secrets.token_hex(3)
        url = f"aws://box-{tag}/jobs?region=us-east-1&endpoint={box.endpoint}"
        options = {**OPTIONS, "cluster": f"contract-{tag}"}
        cluster = get_provider("ec2", options, "contract").cluster(url, WORKER)
        assert isinstance(cluster, Ec2Cluster)
        try:
            yield cluster
        finally:
            try:
                cluster.down()
            except Exception as e:  # the box is closed next: its machines go anyway
                log.warning("ec2 world: down() failed: %s", e)
    finally:
        if box is not None:
            box.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
