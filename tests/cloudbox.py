"""Cloud-in-a-box: an AWS API server and EC2 instances that really boot.

::

    root namespace: the test = the client          lab network 10.X.Y.0/24
      boto3 ──────────────────────────────────────► "aws" namespace: moto_server :5000
                                                     (S3, SQS, EC2, IAM)
      Simulator thread: every 0.3 s DescribeInstances (tag cloudloop:cluster)
        new pending/running instance ──► boot a "machine" from its *image*:
            a fresh namespace with its own address on the lab network,
            its own directory (HOME, /opt/cloudloop), an IMDSv2 server on its
            own 127.0.0.1 (instance id, type, image, region, spot notices, and
            instance-profile credentials, as EC2 serves them), and the
            instance's actual user-data run by bash with the image's PATH only,
            a `shutdown` that tells the simulator

An :class:`Image` is what an AMI gives a machine, no kinder than AWS: its own
PATH of tools (nothing else of this machine's is looked up), the Pythons it
has (real interpreters of other versions, from pyenv) or none, a package
manager that can install some Pythons or none, no view of the client's
site-packages, and no package index (the lab network reaches only the API
server). By default the region's Amazon Linux 2023 AMIs (as SSM publishes them
in moto) are :data:`AL2023`: ``python3`` is 3.9 and ``dnf`` installs 3.11 and
3.12, as on AWS. :meth:`CloudBox.register` adds an image of a test's own.
        terminated in the API (or the machine ran `shutdown`) ──► the machine
            shuts down as EC2's do (SIGTERM to every process, the plug 5 s
            later) and its namespace is removed

Workers on a machine have no AWS keys in their environment: boto3 finds the
instance-profile credentials through the metadata service, as on EC2. A test
posts a spot interruption notice with :meth:`CloudBox.notice` and pulls a
machine's plug with :meth:`CloudBox.kill`.

What moto stores but never runs is done by :class:`asgbox.AutoScalingStandIn`
(``box.autoscaling``), a thread beside the simulator that stands in for that part
of AWS: it evaluates CloudWatch alarms on the SQS queue's attributes with their
thresholds and periods (compressed: ``scale`` 1/20 makes a minute 3 s), runs the
step and simple scaling policies they name and the one-time scheduled actions
(``max_cost``: in real time), and replaces a group's instances that EC2 ended,
as the group's health check does. asgbox.py says where it is simpler than AWS.
In the box a group's instances are on-demand of the launch template's first
type (moto launches no spot for a group): spot notices are still served.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import netns
from asgbox import AutoScalingStandIn

HERE = Path(__file__).resolve().parent
MOTO_PORT = 5000
IMDS_PORT = 8169
TAG = "cloudloop:cluster"
FAKE_KEYS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


PYENV = Path(
    subprocess.run(["pyenv", "root"], capture_output=True, text=True).stdout.strip()
    or Path.home() / ".pyenv"
)
TOOLS = (
    "bash", "sh", "cat", "chmod", "cp", "date", "env", "gzip", "base64", "grep", "head", "id",
    "kill", "ln", "ls", "mkdir", "mv", "nproc", "rm", "sed", "seq", "sleep", "sort", "tail",
    "tee", "touch", "tr", "uname", "wc", "xargs",
)  # fmt: skip
AL2023_SSM = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-{arch}"


def pyenv_python(version: str) -> Path:
    """A real interpreter of ``version`` ("3.9" or "3.9.18"), from this machine's pyenv."""
    found = sorted((PYENV / "versions").glob(f"{version}*"))
    if not found:
        raise RuntimeError(f"no Python {version} under {PYENV}/versions")
    return found[-1] / "bin" / "python"


@dataclass(frozen=True)
class Image:
    """What an AMI gives a machine.

    Attributes:
        pythons: command name -> the version it runs ("python3": "3.9").
        installable: what the package manager (``dnf``) can install: package -> version
            ("python3.11": "3.11"; "hang": it never finishes); empty and ``dnf`` is absent.
        tools: the commands on its PATH besides the Pythons.
    """

    name: str
    pythons: dict[str, str] = field(default_factory=dict)
    installable: dict[str, str] = field(default_factory=dict)
    tools: tuple[str, ...] = TOOLS


AL2023 = Image(
    "al2023",
    pythons={"python3": "3.9"},
    installable={"python3.11": "3.11", "python3.12": "3.12"},
)


@dataclass
class Machine:
    instance_id: str
    host: netns.Host
    root: Path
    instance_type: str
    market: str
    booted: float
    ended: float | None = None

    @property
    def state_file(self) -> Path:
        return self.root / "imds.json"

    def log(self, name: str = "bootstrap.log") -> str:
        path = self.root / "opt" / name
        return path.read_text(errors="replace") if path.exists() else ""

    def worker_logs(self) -> str:
        return "".join(
            p.read_text(errors="replace") for p in sorted((self.root / "opt").glob("worker-*.log"))
        )


class CloudBox:
    """moto_server in its own namespace plus an EC2 instance simulator."""

    def __init__(self, root: Path, region: str = "us-east-1", scale: float = 1 / 20):
        self.root = root
        self.region = region
        self.images: dict[str, Image] = {}
        self.lab = netns.Lab("box")
        self.machines: dict[str, Machine] = {}
        self.history: list[str] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            self.aws = self.lab.add_host("aws")
            self.moto_log = open(root / "moto.log", "wb")
            self.aws.popen(
                [
                    sys.executable,
                    str(HERE / "motoserver.py"),
                    "-H",
                    self.aws.address,
                    "-p",
                    str(MOTO_PORT),
                ],  # fmt: skip
                stdout=self.moto_log,
                stderr=subprocess.STDOUT,
            )
            self.endpoint = f"http://{self.aws.address}:{MOTO_PORT}"
            netns.wait_port(self.aws.address, MOTO_PORT, timeout=60)
            self.ec2 = boto3.client(
                "ec2",
                endpoint_url=self.endpoint,
                region_name=region,
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
            )
            ssm = boto3.client("ssm", endpoint_url=self.endpoint, region_name=region,
                               aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip
            for arch in ("x86_64", "arm64"):
                ami = ssm.get_parameter(Name=AL2023_SSM.format(arch=arch))["Parameter"]["Value"]
                self.images[ami] = AL2023
            # what moto stores but never runs: alarms, scaling policies, scheduled actions,
            # replacing a group's lost instances (asgbox.py); time runs `scale` times as fast
            self.autoscaling = AutoScalingStandIn(self.endpoint, region, scale=scale)
        except Exception:
            self.close()
            raise

    def register(self, image: Image) -> str:
        """An AMI of ``image`` in the API (``image = "ami-…"`` in a profile); its id."""
        ami = self.ec2.register_image(Name=f"box-{image.name}", RootDeviceName="/dev/xvda")
        self.images[ami["ImageId"]] = image
        return str(ami["ImageId"])

    def _image_bin(self, image: Image) -> Path:
        """The image's PATH: its tools and its Pythons, nothing else."""
        bin_dir = self.root / "images" / image.name / "bin"
        if not bin_dir.exists():
            tmp = bin_dir.with_name("bin.tmp")
            tmp.mkdir(parents=True)
            for tool in image.tools:
                found = shutil.which(tool)
                if found:
                    (tmp / tool).symlink_to(found)
            for name, version in image.pythons.items():
                (tmp / name).symlink_to(pyenv_python(version))
            tmp.rename(bin_dir)
        return bin_dir

    def _package_manager(self, image: Image, machine_bin: Path, installed: Path) -> None:
        """``dnf install -y PKG...``: links the Pythons it can install into the machine's
        own /usr/bin (``installed``); anything else fails as dnf does."""
        if not image.installable:
            return
        cases = "".join(
            (f"    {pkg}) sleep 100000 ;;\n" if v == "hang"  # a mirror that never answers
             else f'    {pkg}) ln -sf {pyenv_python(v)} "{installed}/{pkg}" ;;\n')
            + f"    {pkg}-pip) ;;\n"
            for pkg, v in image.installable.items()
        )  # fmt: skip
        script = f"""#!/bin/bash
# dnf as the image has it: installs what its repositories hold
[ "$1" = install ] || {{ echo "dnf: only install is simulated" >&2; exit 1; }}
shift
for pkg in "$@"; do
  case "$pkg" in
    -y) ;;
{cases}    *) echo "Error: Unable to find a match: $pkg" >&2; exit 1 ;;
  esac
done
sleep 1
echo "Complete!"
"""
        dnf = machine_bin / "dnf"
        dnf.write_text(script)
        dnf.chmod(0o755)

    # ---------------------------------------------------------------- the simulator

    def start(self) -> CloudBox:
        self._thread = threading.Thread(target=self._run, name="cloudbox", daemon=True)
        self._thread.start()
        self.autoscaling.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception as e:  # keep simulating; the test sees the errors
                self.errors.append(f"{type(e).__name__}: {e}")
            self._stop.wait(0.3)

    def step(self) -> None:
        """Boot what the API says is running; kill what it says is gone or has halted."""
        states: dict[str, dict] = {}
        pages = self.ec2.get_paginator("describe_instances").paginate(
            Filters=[{"Name": "tag-key", "Values": [TAG]}]
        )
        for page in pages:
            for r in page["Reservations"]:
                for i in r["Instances"]:
                    states[i["InstanceId"]] = i
        for iid, inst in states.items():
            state = inst["State"]["Name"]
            with self._lock:
                m = self.machines.get(iid)
            if state in ("pending", "running") and m is None and iid not in self.history:
                self._boot(inst)
            elif m is not None and m.ended is None:
                if state not in ("pending", "running"):
                    self._halt(m)
                elif (m.root / "halted").exists():  # `shutdown -h now` on the machine
                    self.ec2.terminate_instances(InstanceIds=[iid])
                    self._halt(m)

    def _boot(self, inst: dict) -> None:
        iid = inst["InstanceId"]
        self.history.append(iid)
        user_data = self.ec2.describe_instance_attribute(InstanceId=iid, Attribute="userData")
        script = base64.b64decode(user_data["UserData"]["Value"]).decode()
        root = self.root / iid
        (root / "bin").mkdir(parents=True)
        (root / "home").mkdir()
        (root / "user-data.sh").write_text(script)
        shutdown = root / "bin" / "shutdown"
        shutdown.write_text(f'#!/bin/sh\necho "shutdown $*" >&2\ntouch {root}/halted\n')
        shutdown.chmod(0o755)
        market = "spot" if inst.get("InstanceLifecycle") == "spot" else "on-demand"
        image = self.images.get(inst.get("ImageId", ""), Image("unknown", tools=("bash",)))
        installed = root / "usr" / "bin"  # the machine's own: what its package manager adds
        installed.mkdir(parents=True)
        self._package_manager(image, root / "bin", installed)
        host = self.lab.add_host(f"m{len(self.history)}")
        m = Machine(iid, host, root, inst["InstanceType"], market, time.time())
        m.state_file.write_text(
            json.dumps(
                {
                    "instance_id": iid,
                    "instance_type": m.instance_type,
                    "market": market,
                    "role": "cloudloop-worker",
                    "image": inst.get("ImageId"),
                    "region": self.region,
                }
            )
        )
        imds = f"http://127.0.0.1:{IMDS_PORT}"
        host.popen(
            [sys.executable, str(HERE / "imds.py"), "--port", str(IMDS_PORT),
             "--state", str(m.state_file)],
            stdout=subprocess.DEVNULL, stderr=open(root / "imds.log", "wb"),
        )  # fmt: skip
        env = {
            "PATH": f"{root / 'bin'}:{installed}:{self._image_bin(image)}",
            "HOME": str(root / "home"),
            "LANG": "C.UTF-8",
            "CLOUDLOOP_HOME": str(root / "opt"),
            "CLOUDLOOP_METADATA_URL": imds,
            "CLOUDLOOP_HOST": iid,
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds + "/",
            "PIP_NO_CACHE_DIR": "1",
            "TMPDIR": str(root / "tmp"),
        }
        (root / "tmp").mkdir()
        netns.wait_port_in(host, IMDS_PORT)
        bash = shutil.which("bash") or "/bin/bash"  # what cloud-init runs user-data with
        host.popen([bash, str(root / "user-data.sh")], env=env, cwd=str(root / "home"))
        with self._lock:
            self.machines[iid] = m

    def _halt(self, m: Machine) -> None:
        """Terminated in the API, or halted: EC2 shuts the OS down (SIGTERM, then the
        plug after a grace), unlike :meth:`kill`, a machine that just dies."""
        m.ended = time.time()
        m.host.remove(grace=5.0)

    # ---------------------------------------------------------------- what tests do

    def running(self) -> list[Machine]:
        with self._lock:
            return [m for m in self.machines.values() if m.ended is None]

    def notice(self, iid: str, action: str = "terminate") -> None:
        """Post a spot interruption notice to one machine (two minutes' warning on EC2)."""
        m = self.machines[iid]
        state = json.loads(m.state_file.read_text())
        state["notice"] = {"action": action, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ")}
        m.state_file.write_text(json.dumps(state))

    def kill(self, iid: str) -> None:
        """The machine is gone at once (hardware failure, or a reclaim without notice)."""
        m = self.machines[iid]
        m.host.kill_all()
        self.ec2.terminate_instances(InstanceIds=[iid])

    def processes(self) -> int:
        """Processes still alive in any machine's namespace."""
        return sum(len(m.host.pids()) for m in self.running())

    def close(self) -> None:
        self._stop.set()
        if getattr(self, "autoscaling", None) is not None:
            self.autoscaling.close()
        if self._thread is not None:
            self._thread.join(10)
        for m in list(self.machines.values()):
            if m.ended is None:
                self._halt(m)
        self.lab.close()
        if getattr(self, "moto_log", None):
            self.moto_log.close()
