"""Amazon SQS as the queue and S3 as the store: the cloud at any scale.

``aws://BUCKET/PREFIX?region=R`` (``endpoint=URL`` for S3/SQS-compatible
services and tests, ``queue=NAME`` to pick the queue)::

    s3://BUCKET/PREFIX/<store key>       every store key (see cloudloop.keys)
    s3://BUCKET/PREFIX/.secret.key       the HMAC key (created once, if absent)
    sqs: cloudloop-<bucket>-<prefix>     task messages, base64; visibility timeout = lease
    sqs: ...-dlq                         redrive target after 100 receives (a backstop:
                                         workers dead-letter poison tasks themselves)

Lease = ReceiveMessage (long polling, up to 10 per call); the receipt handle is
the lease token and ApproximateReceiveCount the attempt. extend =
ChangeMessageVisibilityBatch, ack = DeleteMessageBatch, release = visibility 0.
SQS cannot tell a stale receipt handle from a current one, so
``reports_lease_lost`` is False: correctness rests on results being stored,
idempotently and keyed by task, before the ack.

Credentials come from the usual boto3 chain (environment, profile, or an EC2
instance profile); cloudloop never writes them anywhere.
"""

from __future__ import annotations

import base64
import contextlib
import math
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
)
from botocore.parsers import ResponseParserError

from ..config import check_known
from ..errors import BackendError, ConfigError, ConnectionFailed, LeaseLost
from ..model import Lease, QueueStats
from .base import Backend, Queue, Store, check_key, secret_from_env

_DLQ_AFTER = 100
_SQS_MAX_WAIT = 20


def error_code(e: ClientError) -> str:
    """The AWS error code of a ClientError (e.g. ``NoSuchKey``)."""
    return str(e.response.get("Error", {}).get("Code", ""))


_GONE_CODES = {
    "ReceiptHandleIsInvalid",
    "MessageNotInflight",
    "AWS.SimpleQueueService.MessageNotInflight",
}


def _gone(failure: dict[str, Any]) -> bool:
    """A batch entry failed because its message is gone or no longer leased by us.

    moto answers ``ReceiptHandleIsInvalid``; LocalStack
    ``InvalidParameterValueException`` and, users report, SQS itself
    ``InvalidParameterValue``, both with "Message does not exist or is not
    available for visibility timeout change".
    """
    code, message = failure.get("Code", ""), str(failure.get("Message", "")).lower()
    return code in _GONE_CODES or (
        code in ("InvalidParameterValue", "InvalidParameterValueException")
        and ("does not exist" in message or "not available" in message)
    )


class SqsQueue(Queue):
    """A lease queue on one SQS standard queue."""

    reports_lease_lost = False
    may_duplicate = True

    def __init__(self, client: Any, url: str):
        self.sqs, self.url = client, url
        attrs = client.get_queue_attributes(QueueUrl=url, AttributeNames=["MaximumMessageSize"])
        self.limit = int(attrs["Attributes"]["MaximumMessageSize"])
        # bodies travel as base64 (4/3 larger); keep room for the encoding
        self.max_message_bytes = (self.limit - 64) * 3 // 4

    def put(self, bodies: Sequence[bytes]) -> list[str]:
        ids: list[str] = []
        batch: list[str] = []
        size = 0
        for body in bodies:
            text = base64.b64encode(body).decode()
            if len(text) > self.limit:
                raise BackendError(f"message of {len(body)} bytes is over the queue's limit")
            if batch and (len(batch) == 10 or size + len(text) > self.limit):
                ids += self._send(batch)
                batch, size = [], 0
            batch.append(text)
            size += len(text)
        if batch:
            ids += self._send(batch)
        return ids

    def _send(self, texts: list[str]) -> list[str]:
        entries = [{"Id": str(i), "MessageBody": t} for i, t in enumerate(texts)]
        out: dict[str, str] = {}
        for attempt in range(5):
            resp = self.sqs.send_message_batch(QueueUrl=self.url, Entries=entries)
            for ok in resp.get("Successful", []):
                out[ok["Id"]] = ok["MessageId"]
            failed = resp.get("Failed", [])
            if not failed:
                return [out[str(i)] for i in range(len(texts))]
            if any(f.get("SenderFault") for f in failed):
                raise BackendError(f"SQS refused messages: {failed[0].get('Message')}")
            retry = {f["Id"] for f in failed}
            entries = [e for e in entries if e["Id"] in retry]
            time.sleep(0.2 * 2**attempt)
        raise BackendError(f"SQS kept failing to accept {len(entries)} messages")

    def lease(self, max_n: int = 1, lease_s: float = 30.0, wait_s: float = 0.0) -> list[Lease]:
        resp = self.sqs.receive_message(
            QueueUrl=self.url,
            MaxNumberOfMessages=max(1, min(10, max_n)),
            WaitTimeSeconds=min(_SQS_MAX_WAIT, math.ceil(wait_s)),
            VisibilityTimeout=max(0, math.ceil(lease_s)),
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
        return [
            Lease(
                m["MessageId"],
                m["ReceiptHandle"],
                base64.b64decode(m["Body"]),
                int(m.get("Attributes", {}).get("ApproximateReceiveCount", 1)),
            )
            for m in resp.get("Messages", [])
        ]

    def _batch(self, op: str, leases: Sequence[Lease], **extra: Any) -> list[str]:
        """Run a batch call; returns the ids of messages that are gone (deleted, or
        their receipt handle is no longer current), whatever code the service uses."""
        gone: list[str] = []
        for s in range(0, len(leases), 10):
            part = leases[s : s + 10]
            entries = [
                {"Id": str(i), "ReceiptHandle": x.token, **extra} for i, x in enumerate(part)
            ]
            resp = getattr(self.sqs, op)(QueueUrl=self.url, Entries=entries)
            failed = []
            for f in resp.get("Failed", []):
                if _gone(f):
                    gone.append(part[int(f["Id"])].id)
                else:
                    failed.append(f)
            if failed:
                raise BackendError(f"SQS {op} failed: {failed[0].get('Message')}")
        return gone

    def extend(self, leases: Sequence[Lease], lease_s: float) -> None:
        gone = self._batch(
            "change_message_visibility_batch", leases, VisibilityTimeout=math.ceil(lease_s)
        )
        if gone:  # a success proves nothing on SQS; a refusal does prove the lease is gone
            raise LeaseLost(f"extend failed for message(s) {gone}: they are no longer held")

    def ack(self, leases: Sequence[Lease]) -> None:
        self._batch("delete_message_batch", leases)

    def release(self, leases: Sequence[Lease]) -> None:
        self._batch("change_message_visibility_batch", leases, VisibilityTimeout=0)

    def stats(self) -> QueueStats:
        a = self.sqs.get_queue_attributes(
            QueueUrl=self.url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return QueueStats(
            int(a["ApproximateNumberOfMessages"]), int(a["ApproximateNumberOfMessagesNotVisible"])
        )


class S3Store(Store):
    """Blobs as objects under ``s3://bucket/prefix/``."""

    def __init__(self, client: Any, bucket: str, prefix: str):
        self.s3, self.bucket = client, bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def put(self, key: str, data: bytes, if_absent: bool = False) -> bool:
        kw: dict[str, Any] = {"IfNoneMatch": "*"} if if_absent else {}
        try:
            self.s3.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **kw)
        except ClientError as e:
            if if_absent and error_code(e) in (
                "PreconditionFailed",
                "412",
                "ConditionalRequestConflict",
            ):
                return False
            raise
        if if_absent:
            # S3 makes the conditional put atomic; some S3-compatible services and
            # emulators check then set, so two racing writers can both succeed.
            # The later write is the one that stays: only its writer has won.
            try:
                return self.get(key) == data
            except KeyError:
                return False
        return True

    def get(self, key: str) -> bytes:
        try:
            body: bytes = self.s3.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
            return body
        except ClientError as e:
            if error_code(e) in ("NoSuchKey", "404"):
                raise KeyError(key) from None
            raise

    def exists(self, key: str) -> bool:
        try:
            self.s3.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as e:
            if error_code(e) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def list(self, prefix: str) -> list[str]:
        out: list[str] = []
        kw: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix + prefix}
        while True:
            resp = self.s3.list_objects_v2(**kw)
            out += [o["Key"][len(self.prefix) :] for o in resp.get("Contents", [])]
            if not resp.get("IsTruncated"):
                break
            kw["ContinuationToken"] = resp["NextContinuationToken"]
        return sorted(k for k in out if not k.startswith("."))

    def remove(self, key: str) -> bool:
        there = self.exists(key)
        self.s3.delete_object(Bucket=self.bucket, Key=self.prefix + check_key(key))
        return there

    def sizes(self, prefix: str) -> dict[str, int]:
        out: dict[str, int] = {}
        kw: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix + prefix}
        while True:  # the listing gives each object's size: no request per object
            resp = self.s3.list_objects_v2(**kw)
            for o in resp.get("Contents", []):
                key = o["Key"][len(self.prefix) :]
                if not key.startswith("."):
                    out[key] = int(o["Size"])
            if not resp.get("IsTruncated"):
                break
            kw["ContinuationToken"] = resp["NextContinuationToken"]
        return dict(sorted(out.items()))

    def delete(self, prefix: str) -> int:
        keys = self.list(prefix)
        for s in range(0, len(keys), 1000):
            objs = [{"Key": self.prefix + k} for k in keys[s : s + 1000]]
            self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": objs, "Quiet": True})
        return len(keys)


class AwsBackend(Backend):
    # Every call is billed: a PUT costs $5 per million, so a worker writing a
    # record every 5 s would spend a fifth of a small spot instance's price on
    # bookkeeping. Records, flushes and checks are spaced out accordingly
    # (benchmarks/RESULTS.md counts the requests).
    poll_interval = 1.0
    poll_max = 5.0
    flush_interval = 15.0
    idle_wait = 5.0  # a worker's long poll when idle: cheap, and stops within 5 s
    heartbeat_default = 30.0
    check_interval = 10.0
    workers_cache = 15.0


def parse_aws_url(url: str) -> dict[str, str]:
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    check_known(query, {"region", "endpoint", "queue"}, f"backend {url!r}", "parameter")
    bucket = parts.netloc
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket or ""):
        raise ConfigError(
            f"backend {url!r}: {bucket!r} is not an S3 bucket name; use aws://bucket/prefix"
        )
    prefix = parts.path.strip("/")
    name = (
        query.get("queue")
        or re.sub(r"[^A-Za-z0-9_-]", "-", f"cloudloop-{bucket}-{prefix}".rstrip("-"))[:75]
    )
    return {"bucket": bucket, "prefix": prefix, "queue": name, **query}


_clients: dict[tuple[str | None, str | None, int], tuple[Any, Any]] = {}
_lock = threading.Lock()


@contextlib.contextmanager
def aws_errors(what: str, url: str = "") -> Iterator[None]:
    """Turn boto's errors into cloudloop's: what was wrong and what to do."""
    where = f" for {url!r}" if url else ""
    try:
        yield
    except NoCredentialsError:
        raise ConfigError(
            "no AWS credentials found: set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
            "(workers on EC2 get them from their instance profile)"
        ) from None
    except NoRegionError:
        raise ConfigError(
            f"{url or 'the profile'!r} names no region: add ?region=eu-west-1 to the backend URL "
            "(or set AWS_REGION)"
        ) from None
    except EndpointConnectionError as e:
        raise ConnectionFailed(f"cannot reach AWS{where}: {e}") from None
    except ClientError as e:
        code = error_code(e)
        hint = ""
        if code in (
            "AuthFailure",
            "UnauthorizedOperation",
            "AccessDenied",
            "InvalidClientTokenId",
            "SignatureDoesNotMatch",
            "ExpiredToken",
            "AccessDeniedException",
        ):
            hint = " (check the credentials and that their policy allows this call)"
        raise BackendError(f"AWS refused {what}: {code}: {e}{hint}") from None
    except BotoCoreError as e:
        raise ConnectionFailed(f"cannot use AWS{where} ({what}): {e}") from None
    except ResponseParserError as e:  # a proxy's or captive portal's page, not AWS's answer
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
        raise ConnectionFailed(
            f"what answered {what}{where} is not AWS (its reply cannot be read: {first}); "
            "check the endpoint and any proxy in between"
        ) from None


def clients(region: str | None, endpoint: str | None) -> tuple[Any, Any]:
    """(sqs, s3) boto3 clients, shared per process (they are thread-safe)."""
    key = (region, endpoint, os.getpid())
    with _lock:
        if key not in _clients:
            cfg = Config(
                retries={"max_attempts": 6, "mode": "standard"},
                connect_timeout=5,
                read_timeout=_SQS_MAX_WAIT + 10,
                max_pool_connections=32,
            )
            session = boto3.session.Session(region_name=region)
            kw = {"endpoint_url": endpoint, "config": cfg}
            _clients[key] = (session.client("sqs", **kw), session.client("s3", **kw))
        return _clients[key]


def ensure_queue(sqs: Any, name: str) -> str:
    """The queue's URL, creating it (and its dead-letter queue) if it does not exist."""
    try:
        return str(sqs.get_queue_url(QueueName=name)["QueueUrl"])
    except ClientError as e:
        if "NonExistentQueue" not in error_code(e) and error_code(e) != "QueueDoesNotExist":
            raise
    dlq = sqs.create_queue(
        QueueName=f"{name}-dlq"[:80], Attributes={"MessageRetentionPeriod": "1209600"}
    )
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq["QueueUrl"], AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    attrs = {
        "VisibilityTimeout": "60",
        "MessageRetentionPeriod": "1209600",
        "MaximumMessageSize": "1048576",
        "RedrivePolicy": f'{{"deadLetterTargetArn":"{dlq_arn}","maxReceiveCount":"{_DLQ_AFTER}"}}',
    }
    try:
        return str(sqs.create_queue(QueueName=name, Attributes=attrs)["QueueUrl"])
    except ClientError as e:
        if error_code(e) not in ("InvalidAttributeValue", "InvalidParameterValue"):
            raise
        attrs["MaximumMessageSize"] = "262144"  # an SQS that predates 1 MiB messages
        return str(sqs.create_queue(QueueName=name, Attributes=attrs)["QueueUrl"])


def ensure_bucket(s3: Any, bucket: str, region: str | None) -> None:
    try:
        s3.head_bucket(Bucket=bucket)
        return
    except ClientError as e:
        if error_code(e) in ("403", "AccessDenied", "Forbidden"):
            raise ConfigError(
                f"bucket {bucket!r} exists but these credentials cannot use it; "
                "pick another name or grant access"
            ) from None
        if error_code(e) not in ("404", "NoSuchBucket", "NotFound"):
            raise
    kw: dict[str, Any] = {"Bucket": bucket}
    if region and region != "us-east-1":
        kw["CreateBucketConfiguration"] = {"LocationConstraint": region}
    s3.create_bucket(**kw)


def _secret(store: S3Store) -> bytes:
    outside = secret_from_env()
    if outside is not None:
        return outside
    key = store.prefix + ".secret.key"
    try:
        return bytes(store.s3.get_object(Bucket=store.bucket, Key=key)["Body"].read())
    except ClientError as e:
        if error_code(e) not in ("NoSuchKey", "404"):
            raise
    try:
        store.s3.put_object(
            Bucket=store.bucket, Key=key, Body=secrets.token_bytes(32), IfNoneMatch="*"
        )
    except ClientError as e:
        if error_code(e) not in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
            raise
    return bytes(store.s3.get_object(Bucket=store.bucket, Key=key)["Body"].read())


def open_aws(url: str, create: bool = True) -> AwsBackend:
    """Open an ``aws://`` backend, creating its bucket and queue if missing (``create``)."""
    p = parse_aws_url(url)
    with aws_errors(f"opening {url!r}", url):
        sqs, s3 = clients(p.get("region"), p.get("endpoint"))
        store = S3Store(s3, p["bucket"], p["prefix"])
        try:  # an existing backend needs no bucket or queue calls (workers may not make them)
            queue_url = sqs.get_queue_url(QueueName=p["queue"])["QueueUrl"]
        except ClientError as e:
            if not create or (
                "NonExistentQueue" not in error_code(e) and error_code(e) != "QueueDoesNotExist"
            ):
                raise
            ensure_bucket(s3, p["bucket"], p.get("region"))
            queue_url = ensure_queue(sqs, p["queue"])
        queue = SqsQueue(sqs, queue_url)
        key = _secret(store)
    return AwsBackend(url, queue, store, key)
