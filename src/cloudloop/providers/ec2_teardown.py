"""Ending a cluster: ``cloudloop down`` and ``cloudloop cleanup``, found by tag.

::

    down     terminate instances (they cost money) -> delete fleets -> cancel spot requests
      purge  + every stored object, the queue and its dead-letter queue, the key, the bucket
    cleanup  down, then the launch template, the role and instance profile, the group

Each step reports its own failure and the next still runs: a fleet that cannot
be deleted must not leave instances running. What ``aws init`` made is found
again by name or by the ``cloudloop:cluster`` tag (checked on each item, not
trusted to the server's filter).
"""

from __future__ import annotations

from botocore.exceptions import ClientError

from ..backends.aws import error_code
from . import ec2_setup as setup
from .ec2_inventory import Ec2Inventory
from .ec2_setup import Ec2Context, aws_errors_in_public_methods

_GONE = ("deleted", "deleted_terminating", "deleted_running")  # fleet states


@aws_errors_in_public_methods
class Ec2Teardown:
    """Removes what the cluster runs and, on request, what it was made of.

    Each method returns ``(lines, ok)``: what it did, and whether every step worked.
    """

    def __init__(self, ctx: Ec2Context, inventory: Ec2Inventory):
        self.ctx, self.inventory = ctx, inventory

    def down(self, purge: bool = False) -> tuple[list[str], bool]:
        """Terminate instances first, then tidy fleets and spot requests (``purge``:
        the backend's data, queues and bucket too)."""
        ec2, inv = self.ctx.aws.ec2, self.inventory
        done, ok = [], True
        ids = inv.terminate()
        if ids:
            done.append(f"terminated {len(ids)} instance(s)")
        fleets = inv.mine(ec2.describe_fleets(Filters=self.ctx.tag_filter()).get("Fleets", []))
        active = [f["FleetId"] for f in fleets if f.get("FleetState") not in _GONE]
        deleted = 0
        for fid in active:  # one at a time: an instant fleet with no instances left may refuse
            try:
                resp = ec2.delete_fleets(FleetIds=[fid], TerminateInstances=True)
            except ClientError as e:
                if "No instances" not in str(e):  # else: its instances are all gone already
                    done.append(f"could not delete fleet {fid}: {error_code(e)}: {e}")
                    ok = False
                continue
            deleted += len(resp.get("SuccessfulFleetDeletions", []))
            for bad in resp.get("UnsuccessfulFleetDeletions", []):
                err = bad.get("Error", {})
                done.append(
                    f"could not delete fleet {fid}: {err.get('Code')}: {err.get('Message')}"
                )
                ok = False
        if deleted:
            done.append(f"deleted {deleted} fleet(s)")
        reqs = ec2.describe_spot_instance_requests(Filters=self.ctx.tag_filter())
        reqs = inv.mine(reqs.get("SpotInstanceRequests", []))
        open_reqs = [r["SpotInstanceRequestId"] for r in reqs if r["State"] in ("open", "active")]
        if open_reqs:
            ec2.cancel_spot_instance_requests(SpotInstanceRequestIds=open_reqs)
            done.append(f"cancelled {len(open_reqs)} spot request(s)")
        if purge:
            done += self._purge()
        return done, ok

    def _purge(self) -> list[str]:
        c = self.ctx
        sqs, s3 = c.aws.sqs, c.aws.s3
        n = c.backend().store.delete("")  # "": every key under the backend's prefix
        for name in (c.queue_name, f"{c.queue_name}-dlq"[:80]):
            try:
                url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
                sqs.delete_queue(QueueUrl=url)
            except ClientError:
                pass
        s3.delete_object(Bucket=c.bucket, Key=(c.prefix + "/" if c.prefix else "") + ".secret.key")
        out = [f"deleted {n} stored object(s) and queue {c.queue_name}"]
        try:
            s3.delete_bucket(Bucket=c.bucket)
            out.append(f"deleted bucket {c.bucket}")
        except ClientError:
            out.append(f"kept bucket {c.bucket} (it holds other data)")
        return out

    def cleanup(self, purge: bool = False) -> tuple[list[str], bool]:
        """``down``, then the launch template, the role and profile, the security group."""
        c = self.ctx
        ec2 = c.aws.ec2
        done, ok = self.down(purge=purge)
        try:
            ec2.delete_launch_template(LaunchTemplateName=c.template_name)
            done.append(f"deleted launch template {c.template_name}")
        except ClientError:
            pass
        done += setup.delete_role(c.aws.iam, c.role)
        groups = ec2.describe_security_groups(Filters=c.tag_filter())["SecurityGroups"]
        for g in self.inventory.mine(groups):
            try:
                ec2.delete_security_group(GroupId=g["GroupId"])
                done.append(f"deleted security group {g['GroupId']}")
            except ClientError as e:
                done.append(f"could not delete security group {g['GroupId']}: {error_code(e)}")
                ok = False
        return done, ok
