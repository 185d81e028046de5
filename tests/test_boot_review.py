"""An instance's boot against what other machines, the store and real AWS may do to it:
hostile boot records and manifests, credentials that must not travel, a store that
does not answer, the oldest Pythons an image may have, and the client's rules for
failed and late boots.

The boot agent runs here as it does on an instance: a real interpreter of another
version (pyenv's 3.6 and 3.9), the standard library only, against a real S3 API
(moto_server) and an IMDSv2 server (imds.py) that serves instance-profile credentials.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from imds import MetadataServer

from cloudloop import codec, keys
from cloudloop.backends import open_backend
from cloudloop.errors import ConfigError
from cloudloop.model import WorkerOptions
from cloudloop.providers import bootagent, userdata, wheelhouse
from cloudloop.providers.boots import BootRecord, Boots

AGENT = bootagent.__file__


def _python(version: str) -> str:
    from cloudbox import pyenv_python

    return str(pyenv_python(version))


@pytest.fixture
def imds():
    server = MetadataServer()
    server.default.role = "cloudloop-worker"
    server.default.instance_id = f"i-0{time.time_ns() % 10**15:015d}"
    yield server
    server.close()


@pytest.fixture
def store(aws_url):
    from cloudloop.backends.aws import open_aws

    backend = open_aws(aws_url)
    yield aws_url, backend
    backend.close()


def _agent(version, args, url, home, imds, cluster="c1", timeout=120, **extra):
    env = {
        "PATH": "/usr/bin:/bin",
        "LANG": extra.pop("LANG", "C.UTF-8"),
        "CLOUDLOOP_BACKEND": url,
        "CLOUDLOOP_CLUSTER": cluster,
        "CLOUDLOOP_HOME": str(home),
        "CLOUDLOOP_METADATA_URL": imds.url,
        "CLOUDLOOP_BOOT_CONFIG": "cfg",
        **extra,
    }
    Path(home).mkdir(parents=True, exist_ok=True)
    return subprocess.run([_python(version), "-I", AGENT, *args], env=env, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


# ---------------------------------------------------------------- hostile boot records

BASE = {"instance": "i-1", "config": "c", "phases": [["launched", 1000.0, ""]]}


@pytest.mark.parametrize(
    "change",
    [
        {"failed": "bad \udc80 byte", "phases": [["launched", 1.0, ""], ["failed", 2.0, "x"]]},
        {"instance": "i-\udcff"},
        {"phases": [["launched", 1.0, ""], ["python", 2.0, "py \ud800"]]},
        {"failed": "x", "log": "line \udc80\nfine"},
        {"phases": [["launched", -1.7e308, ""], ["failed", 1.7e308, "x"]]},
        {"phases": [["launched", 0.0, ""], ["workers", 1e300, "x"]]},
        {"phases": [["launched", 1e300, ""]]},
        {"failed": "exe.\u202etxt", "phases": [["launched", 1.0, ""], ["failed", 2.0, "\u2066x"]]},
        {"failed": "x", "log": "a\u202eb\nc\u200fd"},
    ],
)
def test_a_hostile_boot_record_is_shown_as_bounded_printable_text_or_not_at_all(change):
    """A machine writes these records: whatever it wrote, ls, up and status print
    UTF-8 text of a bounded length with no control or bidirectional characters."""
    try:
        r = BootRecord.from_dict({**BASE, **change})
    except ValueError:
        return  # refused: left out of every listing
    shown = [r.line(set(), 2000.0), r.line({r.instance}, 2000.0), *r.log]
    for text in shown:
        text.encode("utf-8")  # printable at all (a lone surrogate is not)
        assert len(text) < 1000, text[:200]
        assert not any(
            c in text for c in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f"
        )


@pytest.fixture
def boots(tmp_path):
    b = open_backend(f"sqlite://{tmp_path / 'b'}")
    yield b, Boots(b, "c1")
    b.close()


def test_a_boot_record_speaks_only_for_the_instance_whose_key_it_has(boots):
    """Any instance holds the backend's key; one must not make the client terminate
    another, healthy one by writing a late record in its name under its own key."""
    backend, b = boots
    now = time.time()
    good = {"instance": "i-good", "config": "c", "phases": [["launched", now - 2000, ""],
                                                            ["workers", now - 1900, ""]]}  # fmt: skip
    forged = {"instance": "i-good", "config": "c", "phases": [["launched", now - 3000, ""]]}
    backend.put_record(keys.boot("c1", "i-good"), good)
    backend.put_record(keys.boot("c1", "i-evil"), forged)
    assert b.overdue({"i-good", "i-evil"}, deadline=900, now=now) == []
    assert [r.instance for r in b.records()] == ["i-good"]


# ---------------------------------------------------------------- the agent on old Pythons


@pytest.mark.parametrize("version", ["3.6", "3.9"])
@pytest.mark.parametrize("cluster", ["plain", "ünï x"])
def test_the_boot_agent_reports_and_fetches_on_old_pythons_in_any_locale(
    store, imds, tmp_path, version, cluster
):
    """cloud-init may run user-data in the C locale: Python 3.6 then reads the
    environment as ASCII, and a cluster's name must still give the client's key."""
    url, backend = store
    r = _agent(version, ["report", "started"], url, tmp_path / "h", imds, cluster, LANG="C")
    assert r.returncode == 0, r.stderr
    (rec,) = Boots(backend, cluster).records()
    assert rec.instance == imds.default.instance_id and rec.phases[-1][0] == "started"
    # the wheelhouse: keys with '+' and '=' (local versions), as S3 spells them
    dig = "0123456789abcdef"
    files = {}
    for name in ("pkg-1.0+local.1-py3-none-any.whl", "a_b-2.0-py3-none-any.whl"):
        data = name.encode() * 1000
        backend.store.put(keys.wheelhouse_file(dig, name), data)
        files[name] = hashlib.sha256(data).hexdigest()
    backend.put_record(keys.wheelhouse_manifest(dig), {"files": files, "install": ["pkg"]})
    dest = tmp_path / "wheels"
    r = _agent(version, ["fetch", str(dest)], url, tmp_path / "h", imds, cluster, LANG="C",
               CLOUDLOOP_WHEELHOUSE=dig)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "fetched 2 wheels" in r.stdout
    for name, sha in files.items():
        assert hashlib.sha256((dest / name).read_bytes()).hexdigest() == sha


def _manifest_rows():
    good = b"wheel" * 100
    sha = hashlib.sha256(good).hexdigest()
    return [
        ("files is a list", {"files": ["a-1-py3-none-any.whl"], "install": []}, "manifest"),
        ("a digest is a number", {"files": {"a-1-py3-none-any.whl": 5}, "install": []}, "digest"),
        ("install is a number", {"files": {"a-1-py3-none-any.whl": sha}, "install": 5}, "manifest"),
        ("a name ends in a newline", {"files": {"a-1-py3-none-any.whl\n": sha}, "install": []},
         "not a wheel"),
        ("a name climbs out", {"files": {"../a-1-py3-none-any.whl": sha}, "install": []},
         "not a wheel"),
        ("a name is a path", {"files": {"/tmp/a-1-py3-none-any.whl": sha}, "install": []},
         "not a wheel"),
        ("a wrong digest", {"files": {"a-1-py3-none-any.whl": "0" * 64}, "install": []},
         "does not match"),
        ("signed with another key", "other-key", "signature"),
        ("garbage", b"not a record at all", "signature"),
        ("absent", None, "wheelhouse/0123456789abcdef/manifest"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    "what,manifest,said", _manifest_rows(), ids=[r[0] for r in _manifest_rows()]
)
def test_a_hostile_or_missing_manifest_fails_the_fetch_in_one_line(
    store, imds, tmp_path, what, manifest, said
):
    url, backend = store
    dig = "0123456789abcdef"
    backend.store.put(keys.wheelhouse_file(dig, "a-1-py3-none-any.whl"), b"wheel" * 100)
    name = keys.wheelhouse_manifest(dig)
    if manifest == "other-key":
        backend.store.put(name, codec.encode_record(b"k" * 32, name, {"files": {}, "install": []}))
    elif isinstance(manifest, bytes):
        backend.store.put(name, manifest)
    elif manifest is not None:
        backend.put_record(name, manifest)
    dest = tmp_path / "box" / "wheels"
    r = _agent("3.9", ["fetch", str(dest)], url, tmp_path / "h", imds, CLOUDLOOP_WHEELHOUSE=dig)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("bootagent: ") and said in line, line
    assert sorted(p.name for p in (tmp_path / "box").rglob("*")) in ([], ["wheels"]), what


@pytest.mark.parametrize(
    "launched",
    [
        {"phases": [5]},
        {"phases": "launched"},
        [1, 2],
        {"instance": "i-x", "phases": [["launched", 1.0, ""]], "failed": "forged", "log": "x"},
    ],
)
def test_the_agent_reports_whatever_the_launchers_record_holds(store, imds, tmp_path, launched):
    url, backend = store
    iid = imds.default.instance_id
    backend.put_record(keys.boot("c1", iid), launched)
    r = _agent("3.9", ["report", "started"], url, tmp_path / "h", imds)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    (rec,) = Boots(backend, "c1").records()
    assert rec.instance == iid and rec.has("started") and rec.failed is None and not rec.log


def test_credentials_in_the_instance_profile_appear_late_and_the_agent_waits(store, imds, tmp_path):
    """A new instance profile's credentials can be missing from metadata for a few
    seconds after launch (right after `aws init`, IAM is eventually consistent)."""
    url, backend = store
    role, imds.default.role = imds.default.role, None
    threading.Timer(3.0, lambda: setattr(imds.default, "role", role)).start()
    r = _agent("3.9", ["report", "started"], url, tmp_path / "h", imds)
    assert r.returncode == 0, r.stderr
    assert [x.instance for x in Boots(backend, "c1").records()] == [imds.default.instance_id]


class _RegionalS3:
    """In front of moto_server, S3 as it answers a request signed for another region than
    its bucket's: 400 AuthorizationHeaderMalformed, naming the region in x-amz-bucket-region
    (botocore follows that; moto itself accepts any region)."""

    def __init__(self, upstream: str, region: str):
        import http.client
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import urlsplit

        up = urlsplit(upstream)

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _any(self):
                size = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(size) if size else None
                scope = re.search(r"Credential=[^/]+/\d+/([^/]+)/", self.headers["authorization"])
                if scope is None or scope.group(1) != region:
                    said = scope.group(1) if scope else "?"
                    out = (f"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>"
                           "AuthorizationHeaderMalformed</Code><Message>The authorization header "
                           f"is malformed; the region '{said}' is wrong; expecting '{region}'"
                           f"</Message><Region>{region}</Region></Error>").encode()  # fmt: skip
                    self.send_response(400)
                    self.send_header("x-amz-bucket-region", region)
                    self.send_header("content-type", "application/xml")
                    self.send_header("content-length", str(len(out)))
                    self.end_headers()
                    self.wfile.write(out)
                    return
                c = http.client.HTTPConnection(up.hostname, up.port, timeout=30)
                c.request(self.command, self.path, body=body, headers=dict(self.headers))
                r = c.getresponse()
                data = r.read()
                self.send_response(r.status)
                for k, v in r.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                c.close()

            do_GET = do_PUT = do_HEAD = _any

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_the_agent_follows_its_bucket_to_the_region_s3_names(store, imds, tmp_path):
    """A backend URL without ?region=: the agent signs for the instance's region (from
    instance metadata); a bucket elsewhere makes S3 say which region is its own."""
    url, backend = store
    from urllib.parse import parse_qs, urlsplit

    moto = parse_qs(urlsplit(url).query)["endpoint"][0]
    front = _RegionalS3(moto, "eu-west-1")
    try:
        bucket, prefix = backend.store.bucket, backend.store.prefix.strip("/")
        bare = f"aws://{bucket}/{prefix}?endpoint={front.endpoint}"
        for version in ("3.6", "3.9"):
            r = _agent(version, ["report", "started"], bare, tmp_path / version, imds)
            assert r.returncode == 0, (version, r.stderr)
    finally:
        front.close()
    (rec,) = Boots(backend, "c1").records()
    assert rec.has("started")


# ---------------------------------------------------------------- credentials stay home

SECRETS = ("tok3n", "pa55word", "ghp_abcdef123")
NOISY = (
    "installing: pip install git+https://user:tok3n@git.example.com/x.git\n"
    "Looking in indexes: https://me:pa55word@pypi.example.com/simple\n"
    "fatal: could not read from https://ghp_abcdef123@github.com/o/r\n"
)


def test_credentials_in_urls_never_leave_the_machine_in_a_boot_record(store, imds, tmp_path):
    url, backend = store
    log = tmp_path / "bootstrap.log"
    log.write_text(NOISY)
    detail = "installing private @ git+https://user:tok3n@git.example.com/x.git failed"
    r = _agent("3.9", ["report", "failed", "--detail", detail, "--log", str(log)], url,
               tmp_path / "h", imds)  # fmt: skip
    assert r.returncode == 0, r.stderr
    raw = backend.store.get(keys.boot("c1", imds.default.instance_id))
    local = (tmp_path / "h" / "boot.json").read_bytes()
    for s in SECRETS:
        assert s.encode() not in raw and s.encode() not in local, s
    (rec,) = Boots(backend, "c1").records()
    assert "git.example.com" in rec.failed and "pypi.example.com" in " ".join(rec.log)


def test_a_boot_record_from_an_older_agent_shows_no_credentials():
    r = BootRecord.from_dict({**BASE, "failed": NOISY.splitlines()[0], "log": NOISY})
    shown = " ".join([r.line(set(), 2000.0), *r.log])
    assert not any(s in shown for s in SECRETS), shown
    assert "git.example.com" in shown


def _tiny_project(root: Path, name: str = "tinypkg") -> Path:
    (root / name).mkdir(parents=True)
    (root / "pyproject.toml").write_text(
        f'[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n'
        f'[project]\nname = "{name}"\nversion = "1.2"\n'
        f'[tool.hatch.build.targets.wheel]\npackages = ["{name}"]\n'
    )
    (root / name / "__init__.py").write_text("X = 1\n")
    return root


def test_a_requirement_given_by_url_installs_from_the_wheelhouse_by_name(store, tmp_path):
    """Instances install with --no-index from the wheels: a URL or a path of the client's
    is nothing they can reach, and a URL's credentials would sit in the user-data."""
    url, backend = store
    project = _tiny_project(tmp_path / "proj")
    req = f"tinypkg @ {project.as_uri()}"
    pub = wheelhouse.publish(backend, ("aws",), (req,))
    manifest = backend.get_record(keys.wheelhouse_manifest(pub.digest))
    assert any(w.startswith("tinypkg-1.2-") for w in manifest["files"])
    assert "tinypkg" in pub.install and manifest["install"] == list(pub.install)
    script = userdata.render(userdata.Bootstrap(
        backend=url, version="1", worker=WorkerOptions(), python="3.11",
        wheelhouse=pub.digest, install=pub.install,
    ))  # fmt: skip
    assert str(project) not in script and "file:" not in script


@pytest.mark.parametrize(
    "req,said",
    [
        ("private @ git+https://user:tok3n@127.0.0.1:9/x.git", "could not build"),
        ("git+https://user:tok3n@127.0.0.1:9/x.git", "names no distribution"),
        ("./somewhere", "names no distribution"),
    ],
)
def test_a_requirement_the_wheelhouse_cannot_hold_fails_on_the_client_without_credentials(
    store, tmp_path, monkeypatch, req, said
):
    url, backend = store
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(ConfigError) as e:
        wheelhouse.publish(backend, ("aws",), (req,))
    assert said in str(e.value) and "tok3n" not in str(e.value), str(e.value)
    assert not list((tmp_path / "cache").rglob("*.whl"))  # nothing half-made is kept
    assert not backend.store.list("wheelhouse/")


# ---------------------------------------------------------------- a store that does not answer


@pytest.fixture
def silent_endpoint():
    """An S3 endpoint that accepts connections and never answers (a blackholed route,
    a private subnet without its S3 endpoint, a firewall that drops)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    held = []

    def accept():
        while True:
            try:
                held.append(srv.accept())
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    srv.close()
    for c, _ in held:
        c.close()


def test_a_report_the_store_never_answers_gives_up_soon(silent_endpoint, imds, tmp_path):
    url = f"aws://b/p?region=us-east-1&endpoint={silent_endpoint}"
    t0 = time.monotonic()
    try:
        r = _agent("3.9", ["report", "started"], url, tmp_path / "h", imds, timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail("one report to a silent store took more than 90 s")
    took = time.monotonic() - t0
    assert r.returncode == 1 and r.stderr.startswith("bootagent: "), r.stderr
    assert took < 45, took
    # the phase is kept on the machine: the next report that gets through carries it
    assert json.loads((tmp_path / "h" / "boot.json").read_text())["phases"][-1][0] == "started"


def _sandbox_bin(tmp_path: Path, pythons: dict[str, str]) -> Path:
    """A PATH of its own (as an image has): the box's tools, the given Pythons, and a
    `shutdown` that only says so."""
    from cloudbox import TOOLS

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    for name, version in pythons.items():
        (bin_dir / name).symlink_to(_python(version))
    (bin_dir / "shutdown").write_text(f'#!/bin/sh\ntouch "{tmp_path}/halted"\n')
    (bin_dir / "shutdown").chmod(0o755)
    return bin_dir


def _run_user_data(tmp_path, script, imds, path):
    (tmp_path / "user-data.sh").write_text(script)
    env = {"PATH": str(path), "HOME": str(tmp_path), "LANG": "C.UTF-8",
           "CLOUDLOOP_HOME": str(tmp_path / "opt"), "CLOUDLOOP_METADATA_URL": imds.url}  # fmt: skip
    return subprocess.Popen(["bash", str(tmp_path / "user-data.sh")], env=env,
                            cwd=tmp_path, start_new_session=True)  # fmt: skip


def test_a_boot_whose_store_never_answers_still_ends_at_its_deadline(
    silent_endpoint, imds, tmp_path
):
    """The watchdog must run from the first second, and a report it sends must not
    hold the machine (billed) up for minutes."""
    boot = userdata.Bootstrap(
        backend=f"aws://b/p?region=us-east-1&endpoint={silent_endpoint}", version="1",
        worker=WorkerOptions(), python="3.9", wheelhouse="0123456789abcdef",
        install=("cloudloop==1",), boot_timeout=5, cluster="c1",
    )  # fmt: skip
    bin_dir = _sandbox_bin(tmp_path, {"python3": "3.9"})
    proc = _run_user_data(tmp_path, userdata.render(boot), imds, bin_dir)
    try:
        t0 = time.monotonic()
        while not (tmp_path / "halted").exists() and time.monotonic() - t0 < 75:
            time.sleep(0.5)
        log = (tmp_path / "opt" / "bootstrap.log").read_text(errors="replace")
        assert (tmp_path / "halted").exists(), log
        assert time.monotonic() - t0 < 60, log
        assert "no worker served within 5 s of boot (boot_timeout)" in log
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_a_boot_reports_with_the_python_its_package_manager_installed(store, imds, tmp_path):
    """An image whose python3 is too old for the boot agent (2.7 stands in for 3.5):
    once dnf has installed the workers' Python, the boot reports with that one."""
    url, backend = store
    bin_dir = _sandbox_bin(tmp_path, {"python3": "2.7"})
    installed = tmp_path / "usr-bin"
    installed.mkdir()
    (bin_dir / "dnf").write_text(
        '#!/bin/bash\n[ "$1" = install ] || exit 1\nshift\nfor p in "$@"; do case $p in\n'
        f"  -y|python3.9-pip) ;;\n  python3.9) ln -sf {_python('3.9')} {installed}/python3.9 ;;\n"
        '  *) echo "Error: Unable to find a match: $p" >&2; exit 1 ;;\nesac; done\n'
    )
    (bin_dir / "dnf").chmod(0o755)
    iid = imds.default.instance_id
    boot = userdata.Bootstrap(
        backend=url, version="1", worker=WorkerOptions(), python="3.9",
        wheelhouse="0123456789abcdef", install=("cloudloop==1",), boot_timeout=600, cluster="c1",
    )  # fmt: skip
    Boots(backend, "c1").launched(iid, boot.config(), "ami-1", "c7a.large", "spot")
    proc = _run_user_data(tmp_path, userdata.render(boot), imds, f"{bin_dir}:{installed}")
    try:
        t0 = time.monotonic()
        while not (tmp_path / "halted").exists() and time.monotonic() - t0 < 120:
            time.sleep(0.5)
        log = (tmp_path / "opt" / "bootstrap.log").read_text(errors="replace")
        assert (tmp_path / "halted").exists(), log
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    (rec,) = Boots(backend, "c1").records()
    assert [p for p, _, _ in rec.phases] == ["launched", "python", "failed"], (rec, log)
    assert rec.detail("python").endswith("python3.9 (Python 3.9)")
    assert "fetching the wheelhouse from the store failed" in (rec.failed or ""), log
    assert "NoSuchKey" in " ".join(rec.log) and "could not report" not in log, log


def test_a_second_failure_keeps_the_first_reason(store, imds, tmp_path):
    """The watchdog and the boot itself may both fail the boot (a hung package manager
    killed by the shutdown the watchdog started): the record keeps the cause."""
    url, backend = store
    for why in ("no worker served within 900 s of boot (boot_timeout)", "dnf failed"):
        r = _agent("3.9", ["report", "failed", "--detail", why], url, tmp_path / "h", imds)
        assert r.returncode == 0, r.stderr
    (rec,) = Boots(backend, "c1").records()
    assert rec.failed == "no worker served within 900 s of boot (boot_timeout)"
    assert [p for p, _, _ in rec.phases].count("failed") == 1


# ---------------------------------------------------------------- the client's rules


def _cluster(aws_url, **options):
    from cloudloop.providers.ec2 import Ec2Provider

    options = {"instance_types": ["c7a.large"], "workers_per_instance": 1,
               "cluster": f"rv-{time.time_ns() % 10**8}", "prices": {"c7a.large": 0.1}, **options}  # fmt: skip
    return Ec2Provider(options, "rv").cluster(aws_url, WorkerOptions(idle_exit=60.0))


def _failed(i, t, config="c"):
    return {"instance": i, "config": config, "phases": [["launched", t, ""],
            ["failed", t + 5, "no python3.11"]], "failed": "no python3.11"}  # fmt: skip


def test_ls_stops_saying_launching_stopped_once_resume_clears_the_count(aws_url):
    cluster = _cluster(aws_url)
    backend, name = cluster.backend, cluster.settings.cluster
    t = time.time() - 1000
    for n in range(3):
        backend.put_record(keys.boot(name, f"i-f{n}"), _failed(f"i-f{n}", t + n))
    assert any("launching stopped" in x for x in cluster.boot_problems(live=set()))
    cluster.resume()
    assert cluster.launcher.boots.hold("c", set(), 3) is None
    said = cluster.boot_problems(live=set())
    assert not any("launching stopped" in x for x in said), said


def test_boots_cut_short_by_down_are_not_failed_boots(aws_url):
    """`cloudloop down` while instances boot (or an Executor's pool that stops them,
    or max_cost): they did not fail, and the next `up` launches."""
    cluster = _cluster(aws_url)
    ec2, name = cluster.ctx.aws.ec2, cluster.settings.cluster
    ami = ec2.describe_images()["Images"][0]["ImageId"]
    ids = [i["InstanceId"] for i in ec2.run_instances(
        ImageId=ami, MinCount=3, MaxCount=3, InstanceType="c7a.large",
        TagSpecifications=[{"ResourceType": "instance", "Tags": cluster.ctx.tags}],
    )["Instances"]]  # fmt: skip
    t = time.time() - 300
    for n, iid in enumerate(ids):
        cluster.backend.put_record(keys.boot(name, iid), {"instance": iid, "config": "c",
            "phases": [["launched", t + n, ""], ["started", t + n + 5, ""],
                       ["python", t + n + 9, "/usr/bin/python3.11 (Python 3.11)"]]})  # fmt: skip
    assert cluster.launcher.boots.hold("c", set(ids), 3) is None  # booting
    cluster.down()
    assert cluster.launcher.boots.hold("c", set(), 3) is None
    said = cluster.ls().lines
    assert not any("boot failed" in x or "launching stopped" in x for x in said), said


def test_following_the_queue_says_a_held_launch_once(aws_url, monkeypatch):
    """A held launch's report also names the environment, whose seconds vary from
    round to round (one listing of the store): still said once."""
    from cloudloop.providers import boots as boots_mod
    from cloudloop.providers import ec2 as ec2_mod
    from cloudloop.providers import ec2_launch

    cluster = _cluster(aws_url)
    rounds = iter(range(100))

    def publish(backend, extras, requirements, target):
        return wheelhouse.Published("0123456789abcdef", ("cloudloop[aws]==1",), 0, 0,
                                    next(rounds) / 10)  # fmt: skip

    class Done(Exception):
        pass

    def sleep(_):
        if next(slept) >= 4:
            raise Done

    slept = iter(range(100))
    monkeypatch.setattr(ec2_launch.wheelhouse_mod, "publish", publish)
    monkeypatch.setattr(boots_mod.Boots, "hold", lambda self, config, live, limit: (
        "3 boots in a row failed, so the cluster launches no more until the profile changes "
        "or `cloudloop resume`; the last: i-1 c7a.large spot: boot failed after 0:05: x"))  # fmt: skip
    monkeypatch.setattr(cluster.launcher, "wanted", lambda *a: 1)
    monkeypatch.setattr(ec2_mod.time, "sleep", sleep)
    said: list[str] = []
    with pytest.raises(Done):
        cluster.follow(0.0, False, said.append)
    assert sum("boots in a row failed" in x for x in said) == 1, said


def test_a_late_boot_record_does_not_end_an_instance_whose_workers_serve(aws_url, monkeypatch):
    """The instance's report of its workers may not have reached the store (the agent
    gives up on a slow store): its workers' heartbeats say they serve."""
    cluster = _cluster(aws_url)
    backend, name = cluster.backend, cluster.settings.cluster
    now = time.time()
    backend.put_record(keys.boot(name, "i-x"), {"instance": "i-x", "config": "c", "phases": [
        ["launched", now - 2000, ""], ["started", now - 1990, ""]]})  # fmt: skip
    backend.put_record(keys.worker("w-1"), {"id": "w-1", "host": "ip-10-0-0-1", "started": now - 1900,
                                            "last_seen": now, "every": 5.0, "state": "idle",
                                            "instance": "i-x", "cluster": name})  # fmt: skip
    ended: list[list[str]] = []
    monkeypatch.setattr(cluster.inventory, "terminate", lambda ids=None: ended.append(ids) or ids)
    cluster.watch_boots({"i-x"}, {})
    assert ended == []


# ---------------------------------------------------------------- the wheelhouse in the store


@pytest.mark.parametrize("left", ["a wheel of other bytes", "a manifest of another key"])
def test_a_wheelhouse_left_half_made_in_the_store_is_completed_right(store, left):
    """An upload cut short (or another client's, whose wheels built from sdists differ
    byte for byte), or a manifest no instance can verify: the next publish leaves a
    wheelhouse whose manifest matches what the store holds."""
    url, backend = store
    path = wheelhouse.build(("aws",))
    dig = path.name
    first = wheelhouse.wheels(path)[0].name
    if left == "a wheel of other bytes":
        backend.store.put(keys.wheelhouse_file(dig, first), b"other bytes")
    else:
        for whl in wheelhouse.wheels(path):
            backend.store.put(keys.wheelhouse_file(dig, whl.name), whl.read_bytes())
        name = keys.wheelhouse_manifest(dig)
        backend.store.put(name, codec.encode_record(b"k" * 32, name, {"files": {}, "install": []}))
    pub = wheelhouse.publish(backend, ("aws",))
    assert pub.digest == dig
    manifest = backend.get_record(keys.wheelhouse_manifest(dig))
    assert set(manifest["files"]) == {w.name for w in wheelhouse.wheels(path)}
    for whl, sha in manifest["files"].items():
        assert hashlib.sha256(backend.store.get(keys.wheelhouse_file(dig, whl))).hexdigest() == sha


def test_the_wheelhouse_digest_covers_every_file_a_wheel_of_the_tree_holds(tmp_path):
    """The dashboard's page is app.js and style.css: a tree whose change is only there
    is another wheel, not the cached one."""
    tree = tmp_path / "t"
    (tree / "src" / "pkg" / "static").mkdir(parents=True)
    (tree / "pyproject.toml").write_text("[project]\nname='pkg'\n")
    (tree / "src" / "pkg" / "__init__.py").write_text("")
    (tree / "src" / "pkg" / "static" / "app.js").write_text("one();")
    before = wheelhouse.digest(tree, (), ())
    (tree / "src" / "pkg" / "static" / "app.js").write_text("two();")
    assert wheelhouse.digest(tree, (), ()) != before
    # bytecode caches are not the tree
    after = wheelhouse.digest(tree, (), ())
    (tree / "src" / "pkg" / "__pycache__").mkdir()
    (tree / "src" / "pkg" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    assert wheelhouse.digest(tree, (), ()) == after
