"""An instance's boot, piece by piece: the boot agent's S3 signatures, its signed
records, the boot records' checks, the rule that ends launch loops, the image
and wheelhouse an instance gets."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from cloudloop import codec, keys
from cloudloop.backends import open_backend
from cloudloop.errors import ConfigError
from cloudloop.model import WorkerOptions
from cloudloop.providers import bootagent, ec2_setup, userdata, wheelhouse
from cloudloop.providers.boots import BootRecord, Boots

NOW = datetime.datetime(2026, 12, 1, 12, 0, 0, tzinfo=datetime.timezone.utc)


@pytest.mark.parametrize(
    "url",
    [
        "aws://my-bucket/jobs?region=eu-west-1",  # virtual-hosted, as real S3 prefers
        "aws://dotted.bucket/p/q?region=us-east-1",  # dots: path-style
        "aws://bk/jobs?region=us-east-1&endpoint=http://10.0.0.1:5000",  # an endpoint
    ],
)
@pytest.mark.parametrize(
    "method,key,body",
    [
        ("PUT", "clusters/a=b/boots/i-01", b"data"),
        ("GET", "wheelhouse/abc/files/cloudloop-1.0+g1~x-py3-none-any.whl", b""),
        ("GET", ".secret.key", b""),
    ],
)
def test_the_boot_agent_signs_s3_requests_exactly_as_botocore_does(url, method, key, body):
    creds = ("AKIDEXAMPLE", "secret/with+chars", "session=token")
    bucket = bootagent.Bucket(url, None, creds)
    u, headers = bucket.signed(method, key, body, NOW)
    req = AWSRequest(method=method, url=u, data=body,
                     headers={"x-amz-content-sha256": headers["x-amz-content-sha256"]})  # fmt: skip
    auth = S3SigV4Auth(Credentials(*creds), "s3", bucket.region)
    with mock.patch("botocore.auth.get_current_datetime", return_value=NOW.replace(tzinfo=None)):
        auth.add_auth(req)
    assert headers["authorization"] == req.headers["Authorization"]
    assert headers["x-amz-security-token"] == "session=token"


@pytest.mark.parametrize("name", ["plain", "with space", "a/b", "ünï", "..", "x" * 80])
def test_the_boot_agent_spells_keys_and_signs_records_as_cloudloop_does(name):
    assert bootagent.cluster_dir(name) == keys.cluster_dir(name)
    assert bootagent.safe_name(name) == keys.safe_name(name)
    key = b"k" * 32
    blob = bootagent.sign(key, b'{"a":1}', f"clusters/{name}/boots/i-1")
    assert codec.decode_record(key, blob, f"clusters/{name}/boots/i-1") == {"a": 1}
    assert bootagent.verify(key, codec.encode_record(key, "n", {"b": 2}), "n") == b'{"b":2}'
    with pytest.raises(SystemExit, match="signature"):
        bootagent.verify(key, codec.encode_record(key, "n", {"b": 2}), "other")


def test_the_boot_agent_runs_on_the_oldest_python_an_image_may_have(tmp_path):
    """Amazon Linux 2023's python3 is 3.9: the agent must at least compile there."""
    from cloudbox import pyenv_python

    for version in ("3.6", "3.9"):
        py = pyenv_python(version)
        r = subprocess.run([str(py), "-I", "-c", f"import ast; ast.parse(open({str(bootagent.__file__)!r}).read())"],
                           capture_output=True, text=True)  # fmt: skip
        assert r.returncode == 0, (version, r.stderr)
        r = subprocess.run(
            [str(py), "-I", bootagent.__file__, "nonsense"], capture_output=True, text=True
        )
        assert r.returncode == 1 and "usage:" in r.stderr, (version, r.stderr)
        # and as the user-data carries it: without its docstrings and comments
        lean = tmp_path / f"agent-{version}.py"
        lean.write_text(userdata.lean(Path(bootagent.__file__).read_text()))
        r = subprocess.run([str(py), "-I", str(lean), "nonsense"], capture_output=True, text=True)
        assert r.returncode == 1 and "usage:" in r.stderr, (version, r.stderr)


GOOD = {"instance": "i-1", "config": "c", "phases": [["launched", 1.0, ""], ["started", 2.0, ""]]}


@pytest.mark.parametrize(
    "change,error",
    [
        ({"phases": "x"}, "phases"),
        ({"phases": []}, "phases"),
        ({"phases": [["rebooted", 1.0, ""]]}, "known name"),
        ({"phases": [["started", float("nan"), ""]]}, "known name"),
        ({"phases": [["started", "1", ""]]}, "known name"),
        ({"phases": [["started", 1.0, ""]] * 51}, "phases"),
        ({"instance": 5}, "instance"),
        ({"failed": ["x"]}, "failed"),
        ({"log": 3}, "log"),
    ],
)
def test_hostile_boot_records_are_refused(change, error):
    with pytest.raises(ValueError, match=error):
        BootRecord.from_dict({**GOOD, **change})


def test_boot_records_lose_control_characters_and_keep_a_bounded_log():
    r = BootRecord.from_dict({**GOOD, "failed": "bad\x1b[31m red", "type": "c7a\nlarge",
                              "log": "line 1\n\x1b]0;title\x07\n" + "x\n" * 100})  # fmt: skip
    assert r.failed == "bad?[31m red" and r.type == "c7a?large"
    assert len(r.log) == 20 and all("\x1b" not in x and "\x07" not in x for x in r.log)


def _record(i: str, t: float, *phases: str, config="c", failed=None):
    out = {"instance": i, "config": config, "phases": [["launched", t, ""]]}
    out["phases"] += [[p, t + 1 + n, ""] for n, p in enumerate(phases)]
    if failed:
        out["phases"].append(["failed", t + 9, failed])
        out["failed"] = failed
    return out


@pytest.fixture
def boots(tmp_path):
    b = open_backend(f"sqlite://{tmp_path / 'b'}")
    yield b, Boots(b, "c1")
    b.close()


def test_launches_stop_after_failed_boots_in_a_row_of_one_config(boots):
    backend, b = boots
    t = time.time() - 1000
    put = lambda rec: backend.put_record(keys.boot("c1", rec["instance"]), rec)  # noqa: E731
    put(_record("i-ok", t, "started", "python", "environment", "workers", "ended"))
    put(_record("i-f1", t + 10, "started", failed="no python3.11 on ami-1"))
    put(_record("i-f2", t + 20))  # never said a word, and is gone: failed too
    put(_record("i-other", t + 25, "started", failed="x", config="older"))  # another profile
    put(_record("i-boot", t + 990, "started"))  # still booting: passed over
    assert b.hold("c", live={"i-boot"}, limit=3) is None
    put(_record("i-f3", t + 30, "started", "python", failed="installing cloudloop failed"))
    held = b.hold("c", live={"i-boot"}, limit=3)
    assert held and "3 boots in a row failed" in held and "installing cloudloop failed" in held
    assert b.hold("changed-profile", live={"i-boot"}, limit=3) is None
    f = {r.instance: w for r, w in b.failed_in_a_row("c", live={"i-boot"})}
    assert "without a word" in f["i-f2"] and "get-console-output" in f["i-f2"]
    b.reset()  # `cloudloop resume`
    assert b.hold("c", live={"i-boot"}, limit=3) is None
    # a forged record (not signed with the backend's key) counts for nothing
    backend.store.put(
        keys.boot("c1", "i-forged"), json.dumps(_record("i-x", t + 40, failed="x")).encode()
    )
    assert "i-x" not in {r.instance for r in b.records()}


def test_instances_past_the_boot_deadline_are_named(boots):
    backend, b = boots
    now = time.time()
    backend.put_record(keys.boot("c1", "i-slow"), _record("i-slow", now - 1000, "started"))
    backend.put_record(keys.boot("c1", "i-new"), _record("i-new", now - 10, "started"))
    backend.put_record(keys.boot("c1", "i-up"), _record("i-up", now - 1000, "workers"))
    assert b.overdue({"i-slow", "i-new", "i-up"}, deadline=900, now=now) == ["i-slow"]


def test_the_user_data_holds_no_secret_and_finds_python_before_installing(tmp_path):
    boot = userdata.Bootstrap(
        backend="aws://b/p?region=us-east-1", version="1.0", worker=WorkerOptions(),
        python="3.11", wheelhouse="0123456789abcdef", install=("cloudloop[aws]==1.0", "idna"),
        cluster="c1",
    )  # fmt: skip
    script = userdata.render(boot)
    assert len(script.encode()) < 16 * 1024  # EC2's user-data limit
    pos = script.index
    assert (
        pos("\nif ! find_python")
        < pos("-m venv")
        < pos('pip" install')
        < pos('bin/cloudloop" worker')
    )
    assert "AKIA" not in script and "secret" not in script.lower().replace("no secret", "")
    assert "--no-index" in script and "CLOUDLOOP_WHEELHOUSE=0123456789abcdef" in script
    assert boot.config() == userdata.Bootstrap(**{**boot.__dict__, "stop_at": 5.0}).config()
    assert boot.config() != userdata.Bootstrap(**{**boot.__dict__, "python": "3.12"}).config()
    r = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(
    "types,arch",
    [
        (("c7a.large", "c6i.large"), {"x86_64"}),
        (("c7g.large", "t4g.micro", "m6gd.large"), {"arm64"}),
        (("c7g.large", "c7a.large"), {"arm64", "x86_64"}),
    ],
)
def test_graviton_types_get_an_arm64_image_from_ssm(moto_endpoint, types, arch):
    import boto3

    kw = dict(endpoint_url=moto_endpoint, region_name="us-east-1",
              aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip
    ec2, ssm = boto3.client("ec2", **kw), boto3.client("ssm", **kw)
    found = ec2_setup.architectures(ec2, types)
    assert set(found.values()) == arch
    images = ec2_setup.images(ec2, ssm, "auto", set(found.values()))
    for a in arch:
        name = ec2_setup.AL2023.format(arch=a)
        assert images[a] == ssm.get_parameter(Name=name)["Parameter"]["Value"]
    # an image of one architecture for types of the other is refused before launching
    with pytest.raises(ConfigError, match="is x86_64, but the profile's instance_types are arm64"):
        ec2_setup.images(
            ec2,
            ssm,
            images.get("x86_64") or ec2_setup.images(ec2, ssm, "auto", {"x86_64"})["x86_64"],
            {"arm64"},
        )
    with pytest.raises(ConfigError, match="does not exist"):
        ec2_setup.images(ec2, ssm, "ami-0123456789abcdef0", {"x86_64"})


def test_names_say_graviton_where_ec2_does_not():
    class Silent:
        def describe_instance_types(self, **kw):
            return {"InstanceTypes": []}

    got = ec2_setup.architectures(
        Silent(), ("c7gn.large", "a1.large", "g5g.xlarge", "m7i-flex.large", "g4dn.xlarge")
    )
    assert got == {"c7gn.large": "arm64", "a1.large": "arm64", "g5g.xlarge": "arm64",
                   "m7i-flex.large": "x86_64", "g4dn.xlarge": "x86_64"}  # fmt: skip


def test_a_wheelhouse_is_uploaded_once_and_its_manifest_last(aws_url):
    from cloudloop.backends.aws import open_aws

    backend = open_aws(aws_url)
    first = wheelhouse.publish(backend, ("aws",))
    assert first.uploaded >= 5 and first.install[0].startswith("cloudloop[aws]==")
    listed = backend.store.list(keys.wheelhouse_prefix(first.digest))
    manifest = backend.get_record(keys.wheelhouse_manifest(first.digest))
    assert set(manifest["files"]) == {k.rsplit("/", 1)[1] for k in listed if "/files/" in k}
    again = wheelhouse.publish(backend, ("aws",))
    assert again.digest == first.digest and again.uploaded == 0


def test_a_wheelhouse_for_another_python_or_architecture_holds_its_wheels(tmp_path, monkeypatch):
    """The instances' own platform: binary wheels for it, cloudloop's own pure wheel."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    other = "3.12" if sys.version_info[:2] != (3, 12) else "3.11"
    path = wheelhouse.build(("aws",), target=wheelhouse.Target(other, "arm64"))
    names = [w.name for w in wheelhouse.wheels(path)]
    assert any(n.startswith("cloudloop-") and n.endswith("-py3-none-any.whl") for n in names)
    assert any(n.startswith("boto3-") for n in names)
    assert all("x86_64" not in n for n in names)


def test_a_cluster_of_graviton_and_x86_types_launches_each_with_its_own_image(aws_url, tmp_path):
    from cloudloop.providers.ec2 import Ec2Provider

    options = {"instance_types": ["c7g.large", "c7a.large"], "workers_per_instance": 1,
               "cluster": f"arch-{time.time_ns() % 10**8}", "prices": {"c7g.large": 0.07, "c7a.large": 0.1}}  # fmt: skip
    cluster = Ec2Provider(options, "arch").cluster(aws_url, WorkerOptions(idle_exit=60.0))
    report = cluster.launcher.launch(2)
    assert len(report.started) == 2, str(report)
    text = str(report)
    assert "environment for arm64" in text and "environment for x86_64" in text
    ec2 = cluster.ctx.aws.ec2
    arch_of = ec2_setup.architectures(ec2, ("c7g.large", "c7a.large"))
    images = ec2_setup.images(ec2, cluster.ctx.aws.ssm, "auto", {"arm64", "x86_64"})
    ids = [s["id"] for s in report.started]
    for r in ec2.describe_instances(InstanceIds=ids)["Reservations"]:
        for i in r["Instances"]:
            assert i["ImageId"] == images[arch_of[i["InstanceType"]]]
    boots = {b.instance: b for b in cluster.launcher.boots.records()}
    assert set(ids) <= set(boots) and all(boots[i].phases[0][0] == "launched" for i in ids)
    cluster.down()


def _uses_idna(x):
    import idna

    return idna.encode(x)


def test_requirements_auto_installs_what_the_waiting_jobs_pinned(aws_url):
    from importlib import metadata

    import cloudloop as cl
    from cloudloop.providers.ec2 import Ec2Provider

    job = cl.Executor(backend=aws_url, workers=0).map_job(_uses_idna, ["a"], requirements="auto")
    pin = f"idna=={metadata.version('idna')}"
    assert pin in job.manifest.requires
    options = {"instance_types": ["c7a.large"], "workers_per_instance": 1, "requirements": "auto",
               "cluster": f"auto-{time.time_ns() % 10**8}", "prices": {"c7a.large": 0.1}}  # fmt: skip
    cluster = Ec2Provider(options, "auto").cluster(aws_url, WorkerOptions(idle_exit=60.0))
    report = cluster.launcher.launch(1)
    assert len(report.started) == 1, str(report)
    digest = str(report).split("wheelhouse ")[1].split()[0]
    manifest = cluster.backend.get_record(keys.wheelhouse_manifest(digest))
    assert pin in manifest["install"] and any(w.startswith("idna-") for w in manifest["files"])
    cluster.down()


@pytest.mark.parametrize("value", ["60", True, -1, 0, float("inf"), 1e7, [60]])
def test_a_boot_records_deadline_must_be_seconds(value):
    with pytest.raises(ValueError, match="deadline"):
        BootRecord.from_dict({**GOOD, "deadline": value})


def test_a_boot_record_carries_its_profiles_boot_timeout(monkeypatch):
    """The dashboard knows no profile: the record says how long its boot may take."""
    from cloudloop.dashboard.boots import outcome

    monkeypatch.setenv("CLOUDLOOP_BOOT_TIMEOUT", "60")
    assert bootagent.deadline() == {"deadline": 60.0}
    for bad in ("", "soon", "-5", "1e9"):
        monkeypatch.setenv("CLOUDLOOP_BOOT_TIMEOUT", bad)
        assert bootagent.deadline() == {}
    boot = userdata.Bootstrap(backend="aws://b/p", version="1", worker=WorkerOptions(),
                              python="3.11", boot_timeout=60.0)  # fmt: skip
    assert "CLOUDLOOP_BOOT_TIMEOUT=60\n" in userdata.render(boot)
    now = time.time()
    quiet = {**GOOD, "phases": [["launched", now - 300, ""], ["started", now - 120, ""]]}
    assert outcome(BootRecord.from_dict({**quiet, "deadline": 60.0}), set(), now)[0] == "failed"
    assert outcome(BootRecord.from_dict(quiet), set(), now)[0] == "booting"  # 15 min default


@pytest.mark.parametrize(
    "cluster,instance", [("c1", "i-0abc"), ("with space", "i-1/../x"), ("ünï", "i 2")]
)
def test_the_boot_agent_spells_its_keys_as_keys_py_does(cluster, instance):
    assert bootagent.boot_key(cluster, instance) == keys.boot(cluster, instance)
    assert bootagent.wheelhouse_key("ab" * 8, "manifest") == keys.wheelhouse_manifest("ab" * 8)
    whl = "cloudloop-1.0+g1-py3-none-any.whl"
    assert bootagent.wheelhouse_key("ab" * 8, "files/" + whl) == keys.wheelhouse_file("ab" * 8, whl)
