"""What every part of an ec2 cluster shares, and the AWS resources it needs besides instances.

:class:`Ec2Context` is the cluster as its parts see it (its settings, its
names, its AWS clients, its backend); :func:`aws_errors_in_public_methods`
makes each part report AWS trouble as a cloudloop error. :class:`Ec2Setup`
(``cloudloop aws init``) creates, once per cluster (all tagged
``cloudloop:cluster=<name>``)::

    IAM role cloudloop-<cluster>-worker   trusted by ec2.amazonaws.com; inline policy:
                                          the job queue (receive/delete/visibility/send),
                                          s3 get/put/delete under bucket/prefix/*, list of
                                          that prefix only. Nothing else.
    instance profile (same name)          what instances run as; boto3 on the instance
                                          reads its credentials from instance metadata
    security group cloudloop-<cluster>    no inbound rules: workers only call out
    launch template cloudloop-<cluster>   image, user-data, profile, group, IMDSv2 only,
                                          InstanceInitiatedShutdownBehavior=terminate
                                          (a new version per launch: ec2_launch.py)

plus the backend's bucket and queue. Everything is found again by name or tag,
so init is idempotent and ``cleanup`` (ec2_teardown.py) can remove all of it.
"""

from __future__ import annotations

import base64
import functools
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

import boto3
from botocore.exceptions import ClientError

from ..backends.aws import AwsBackend, SqsQueue, aws_errors, clients, error_code, parse_aws_url
from ..errors import ConfigError
from ..model import WorkerOptions
from . import prices

if TYPE_CHECKING:
    from .ec2 import Ec2Settings

TAG_CLUSTER = "cloudloop:cluster"
TAG_PROFILE = "cloudloop:profile"
# the image `image = "auto"` gets, per architecture: Amazon Linux 2023 as AWS publishes it
AL2023 = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-{arch}"
ARCHS = ("x86_64", "arm64")


@dataclass(frozen=True)
class AwsClients:
    """The boto3 clients a cluster calls (one region and endpoint: the backend's)."""

    ec2: Any
    iam: Any
    ssm: Any
    sqs: Any
    s3: Any
    autoscaling: Any = None
    cloudwatch: Any = None

    @classmethod
    def for_backend(cls, backend_url: str) -> AwsClients:
        p = parse_aws_url(backend_url)
        session = boto3.session.Session(region_name=p.get("region"))
        kw = {"endpoint_url": p.get("endpoint")}
        sqs, s3 = clients(p.get("region"), p.get("endpoint"))
        return cls(session.client("ec2", **kw), session.client("iam", **kw),
                   session.client("ssm", **kw), sqs, s3, session.client("autoscaling", **kw),
                   session.client("cloudwatch", **kw))  # fmt: skip


@dataclass(frozen=True)
class Ec2Context:
    """One ec2 cluster as its parts (setup, launching, inventory, billing, teardown) see it.

    Args:
        url: the ``aws://`` backend its workers serve.
        settings: the profile's ec2 options.
        worker: the options its workers run with (ec2's idle_exit default filled in).
        profile: the profile's name (a tag on everything it makes).
        aws: the AWS clients.
        backend: the backend, opened on first use (by the cluster that owns it).
    """

    url: str
    settings: Ec2Settings
    worker: WorkerOptions
    profile: str
    aws: AwsClients
    backend: Callable[[], AwsBackend]

    @property
    def cluster(self) -> str:
        return self.settings.cluster

    @functools.cached_property
    def _where(self) -> dict[str, Any]:
        return parse_aws_url(self.url)

    @property
    def bucket(self) -> str:
        return str(self._where["bucket"])

    @property
    def prefix(self) -> str:
        return str(self._where["prefix"])

    @property
    def queue_name(self) -> str:
        return str(self._where["queue"])

    @property
    def role(self) -> str:
        """The workers' IAM role and instance profile."""
        return f"cloudloop-{self.cluster}-worker"[:64]

    @property
    def group_name(self) -> str:
        """The security group's name (also the launch template's: :attr:`template_name`)."""
        return f"cloudloop-{self.cluster}"

    template_name = group_name

    @property
    def tags(self) -> list[dict[str, str]]:
        return tags(self.cluster, self.profile)

    def tag_filter(self) -> list[dict[str, Any]]:
        """The server-side filter for this cluster's resources (check with ``mine`` too)."""
        return [{"Name": f"tag:{TAG_CLUSTER}", "Values": [self.cluster]}]

    def bill(self) -> prices.Ledger:
        """The cluster's ledger in the store."""
        return prices.Ledger(self.backend(), self.cluster)


C = TypeVar("C", bound=type)


def aws_errors_in_public_methods(cls: C) -> C:
    """Every public method reports AWS trouble as a cloudloop error, not a boto traceback.

    The class's instances have a ``ctx`` (:class:`Ec2Context`); the error names
    the method and the cluster (``AWS refused launch for cluster 'x': ...``).
    """
    for name, fn in list(vars(cls).items()):
        if callable(fn) and not name.startswith("_"):

            def wrapped(self: Any, *a: Any, __fn: Any = fn, __name: str = name, **kw: Any) -> Any:
                with aws_errors(f"{__name.replace('_', ' ')} for cluster {self.ctx.cluster!r}"):
                    return __fn(self, *a, **kw)

            functools.update_wrapper(wrapped, fn)
            setattr(cls, name, wrapped)
    return cls


@aws_errors_in_public_methods
class Ec2Setup:
    """``cloudloop aws init``: the backend, the workers' identity and their network."""

    def __init__(self, ctx: Ec2Context):
        self.ctx = ctx

    def init(self) -> list[str]:
        """Create the bucket, queue, role, instance profile and security group (idempotent)."""
        c = self.ctx
        queue = cast(SqsQueue, c.backend().queue)  # open_aws's
        arn = c.aws.sqs.get_queue_attributes(QueueUrl=queue.url, AttributeNames=["QueueArn"])
        arn = arn["Attributes"]["QueueArn"]
        policy = worker_policy(arn, c.bucket, c.prefix, c.group_name, c.cluster)
        ensure_role(c.aws.iam, c.role, policy, c.tags)
        vpc = self.vpc()
        group = ensure_security_group(c.aws.ec2, c.group_name, vpc, c.tags)
        return [
            f"bucket s3://{c.bucket}/{c.prefix} and queue {c.queue_name}",
            f"IAM role and instance profile {c.role} (that queue and that prefix only; "
            f"ending its own machines in group {c.group_name})",
            f"security group {group} ({c.group_name}, no inbound rules) in {vpc}",
        ]

    def vpc(self) -> str:
        """The VPC of the profile's first subnet, else the region's default VPC."""
        c = self.ctx
        if c.settings.subnets:
            found = c.aws.ec2.describe_subnets(SubnetIds=[c.settings.subnets[0]])["Subnets"]
            return str(found[0]["VpcId"])
        return default_vpc(c.aws.ec2)

    def security_group(self) -> str:
        """The cluster's security group's id (created if missing)."""
        c = self.ctx
        return ensure_security_group(c.aws.ec2, c.group_name, self.vpc(), c.tags)


def tags(cluster: str, profile: str) -> list[dict[str, str]]:
    return [
        {"Key": TAG_CLUSTER, "Value": cluster},
        {"Key": TAG_PROFILE, "Value": profile},
        {"Key": "Name", "Value": f"cloudloop-{cluster}"},
    ]


def worker_policy(
    queue_arn: str, bucket: str, prefix: str, group: str | None = None, cluster: str | None = None
) -> dict[str, Any]:
    """Least privilege for a worker: its queue and its bucket prefix, nothing else; with
    ``group``, also leaving that Auto Scaling group (and only that one, by name and by
    its ``cloudloop:cluster`` tag) with its desired capacity taken down, and turning off
    the actions of that group's scale-out alarm, that alarm only (after failed boots:
    bootagent.py ``hold``).

    IAM has no condition key for the instance a TerminateInstanceInAutoScalingGroup
    call names, so "only itself" cannot be a policy: an instance of the group could
    end another instance of the same group (whose task then runs again elsewhere),
    never anything outside it, and never start one."""
    objects = f"arn:aws:s3:::{bucket}/{prefix}/*" if prefix else f"arn:aws:s3:::{bucket}/*"
    listing = f"{prefix}/*" if prefix else "*"
    policy: dict[str, Any] = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": [
                    "sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:DeleteMessageBatch",
                    "sqs:ChangeMessageVisibility", "sqs:ChangeMessageVisibilityBatch",
                    "sqs:SendMessage", "sqs:SendMessageBatch", "sqs:GetQueueAttributes",
                    "sqs:GetQueueUrl",
                ],
                "Resource": [queue_arn],
            },
            {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"], "Resource": [objects]},
            {
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": [f"arn:aws:s3:::{bucket}"],
                "Condition": {"StringLike": {"s3:prefix": [listing]}},
            },
        ],
    }  # fmt: skip
    if group:
        policy["Statement"].append({
            "Effect": "Allow",
            "Action": ["autoscaling:TerminateInstanceInAutoScalingGroup"],
            "Resource": [f"arn:aws:autoscaling:*:*:autoScalingGroup:*:autoScalingGroupName/{group}"],
            "Condition": {"StringEquals": {f"autoscaling:ResourceTag/{TAG_CLUSTER}": cluster or ""}},
        })  # fmt: skip
        policy["Statement"].append({
            "Effect": "Allow",
            "Action": ["cloudwatch:DisableAlarmActions"],
            "Resource": [f"arn:aws:cloudwatch:*:*:alarm:{group}-work"],
        })  # fmt: skip
    return policy


_TRUST = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "ec2.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ],
}


def ensure_role(iam: Any, name: str, policy: dict[str, Any], tag_list: list[dict]) -> str:
    """Role + inline policy + instance profile ``name``; returns the profile's name."""
    try:
        iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(_TRUST), Tags=tag_list)
    except ClientError as e:
        if error_code(e) != "EntityAlreadyExists":
            raise
    iam.put_role_policy(
        RoleName=name, PolicyName="cloudloop-worker", PolicyDocument=json.dumps(policy)
    )
    try:
        iam.create_instance_profile(InstanceProfileName=name, Tags=tag_list)
    except ClientError as e:
        if error_code(e) != "EntityAlreadyExists":
            raise
    roles = iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]["Roles"]
    if not any(r["RoleName"] == name for r in roles):
        iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
    return name


def delete_role(iam: Any, name: str) -> list[str]:
    done = []
    try:
        for r in iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]["Roles"]:
            iam.remove_role_from_instance_profile(InstanceProfileName=name, RoleName=r["RoleName"])
        iam.delete_instance_profile(InstanceProfileName=name)
        done.append(f"instance profile {name}")
    except ClientError as e:
        if error_code(e) != "NoSuchEntity":
            raise
    try:
        for p in iam.list_role_policies(RoleName=name)["PolicyNames"]:
            iam.delete_role_policy(RoleName=name, PolicyName=p)
        iam.delete_role(RoleName=name)
        done.append(f"IAM role {name}")
    except ClientError as e:
        if error_code(e) != "NoSuchEntity":
            raise
    return done


def default_vpc(ec2: Any) -> str:
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
    if not vpcs:
        raise RuntimeError("this region has no default VPC: give the profile subnets = [...]")
    return vpcs[0]["VpcId"]


def subnets(ec2: Any, given: tuple[str, ...]) -> list[dict[str, str]]:
    """[{SubnetId, AvailabilityZone}] — the given ones, else every default-VPC subnet."""
    if given:
        found = ec2.describe_subnets(SubnetIds=list(given))["Subnets"]
    else:
        vpc = default_vpc(ec2)
        found = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"]
    return [{"SubnetId": s["SubnetId"], "AvailabilityZone": s["AvailabilityZone"]} for s in found]


def ensure_security_group(ec2: Any, name: str, vpc: str, tag_list: list[dict]) -> str:
    found = ec2.describe_security_groups(
        Filters=[{"Name": "group-name", "Values": [name]}, {"Name": "vpc-id", "Values": [vpc]}]
    )["SecurityGroups"]
    if found:
        return found[0]["GroupId"]
    sg = ec2.create_security_group(
        GroupName=name,
        Description="cloudloop workers: no inbound traffic, they only call out",
        VpcId=vpc,
        TagSpecifications=[{"ResourceType": "security-group", "Tags": tag_list}],
    )
    return sg["GroupId"]


def architectures(ec2: Any, types: tuple[str, ...]) -> dict[str, str]:
    """Each instance type's architecture ("x86_64" or "arm64"), as EC2 describes it;
    by its name where EC2 does not say (a ``g`` after the generation is Graviton)."""
    out: dict[str, str] = {}
    try:
        for t in ec2.describe_instance_types(InstanceTypes=list(types))["InstanceTypes"]:
            have = t.get("ProcessorInfo", {}).get("SupportedArchitectures", [])
            out[t["InstanceType"]] = "x86_64" if "x86_64" in have or not have else "arm64"
    except ClientError as e:
        if error_code(e) in ("UnauthorizedOperation", "AccessDenied"):
            raise
    for t in types:
        if t not in out:
            m = re.match(r"^[a-z]+(\d+)([a-z-]*)\.", t)
            out[t] = "arm64" if t.startswith("a1.") or (m and "g" in m.group(2)) else "x86_64"
    return out


def images(ec2: Any, ssm: Any, image: str, archs: set[str]) -> dict[str, str]:
    """The AMI for each architecture wanted: ``auto`` is AWS's Amazon Linux 2023 for each
    (its SSM parameter), ``ssm:NAME`` or ``ami-…`` one image, for its own architecture only.

    Raises:
        ConfigError: the image does not exist, or is for none of the architectures.
    """
    if image == "auto":
        return {a: str(ssm.get_parameter(Name=AL2023.format(arch=a))["Parameter"]["Value"])
                for a in sorted(archs)}  # fmt: skip
    ami = image
    if image.startswith("ssm:"):
        ami = str(ssm.get_parameter(Name=image[4:])["Parameter"]["Value"])
    try:
        found = ec2.describe_images(ImageIds=[ami])["Images"]
    except ClientError as e:
        if "NotFound" not in error_code(e) and "Malformed" not in error_code(e):
            raise
        found = []
    if not found:
        raise ConfigError(f"image {image!r} ({ami}) does not exist in this region: "
                          'check the profile\'s image = (or leave it out: "auto")')  # fmt: skip
    arch = found[0].get("Architecture", "x86_64")
    if arch not in archs:
        raise ConfigError(f"image {ami} is {arch}, but the profile's instance_types are "
                          f"{' and '.join(sorted(archs))}: choose an image or types that match")  # fmt: skip
    return {arch: ami}


def template_version(
    ec2: Any,
    name: str,
    image: str,
    user_data: str,
    profile: str,
    group: str,
    tag_list: list[dict],
    key_name: str | None = None,
    instance_type: str | None = None,
) -> tuple[str, str]:
    """A launch template version with this user-data; returns (template id, version).

    ``instance_type`` is the template's own (an Auto Scaling group's overrides
    and a fleet's take precedence over it; a template with none cannot be launched
    on its own)."""
    data: dict[str, Any] = {
        "ImageId": image,
        "UserData": base64.b64encode(user_data.encode()).decode(),
        "IamInstanceProfile": {"Name": profile},
        "SecurityGroupIds": [group],
        "InstanceInitiatedShutdownBehavior": "terminate",
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
        "TagSpecifications": [
            {"ResourceType": "instance", "Tags": tag_list},
            {"ResourceType": "volume", "Tags": tag_list},
        ],
    }
    if key_name:
        data["KeyName"] = key_name
    if instance_type:
        data["InstanceType"] = instance_type
    try:
        found = ec2.describe_launch_templates(LaunchTemplateNames=[name])["LaunchTemplates"]
    except ClientError as e:
        if (
            "NotFound" not in error_code(e)
            and error_code(e) != "InvalidLaunchTemplateName.NotFoundException"
        ):
            raise
        found = []
    if not found:
        t = ec2.create_launch_template(
            LaunchTemplateName=name,
            LaunchTemplateData=data,
            TagSpecifications=[{"ResourceType": "launch-template", "Tags": tag_list}],
        )["LaunchTemplate"]
        return t["LaunchTemplateId"], str(t["LatestVersionNumber"])
    tid = found[0]["LaunchTemplateId"]
    v = ec2.create_launch_template_version(LaunchTemplateId=tid, LaunchTemplateData=data)
    return tid, str(v["LaunchTemplateVersion"]["VersionNumber"])


def wait_for_profile(iam: Any, name: str, timeout: float = 30.0) -> None:
    """New instance profiles take a few seconds to be usable by EC2."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]["Roles"]:
                return
        except ClientError:
            pass
        time.sleep(1)
