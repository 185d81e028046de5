"""The aws:// backend end to end, against a real S3/SQS API server on loopback."""

from __future__ import annotations

import pytest

import cloudloop as cl
from cloudloop.backends import open_backend


def square(x):
    print("square", x)
    if x == 7:
        raise ValueError("seven")
    return x * x


def test_the_same_loop_runs_on_sqs_and_s3(aws_url):
    with cl.Executor(backend=aws_url, workers=2, lease=5) as ex:
        job = ex.map_job(square, range(60))
        out = job.results(return_exceptions=True)
        assert out[:7] == [x * x for x in range(7)] and isinstance(out[7], ValueError)
        assert "square 3" in job.logs(3)
        assert ex.submit(square, 5).result(timeout=60) == 25
        assert list(ex.map(square, [1, 2])) == [1, 4]
    again = cl.attach(job.id, backend=aws_url)
    assert again.status().state is cl.JobState.FAILED


# A worker killed with kill -9 on SQS (every result once), inputs that spill to S3
# and a fresh client attaching: tests/test_aws_emulators.py, on moto and LocalStack.


@pytest.mark.parametrize(
    "url, message",
    [
        ("aws://Bad_Bucket/x?region=us-east-1", "not an S3 bucket name"),
        ("aws://good-bucket/x?regoin=us-east-1", "unknown parameter"),
    ],
)
def test_bad_urls_say_what_is_wrong(url, message):
    with pytest.raises(cl.ConfigError, match=message):
        open_backend(url)


def test_missing_credentials_are_explained(moto_endpoint, monkeypatch, tmp_path):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(cl.ConfigError, match="no AWS credentials"):
        open_backend(f"aws://nocreds-bucket/x?region=ap-south-1&endpoint={moto_endpoint}")


def test_unreachable_endpoint_is_a_connection_error(moto_endpoint):
    with pytest.raises(cl.CloudloopError, match="cannot reach AWS|cannot use"):
        open_backend("aws://some-bucket/x?region=us-east-1&endpoint=http://127.0.0.1:9")


class _FakeSqs:
    """An SQS client answering batch calls the way a given service does for a message
    that is gone (deleted by the worker that took it over)."""

    def __init__(self, code: str, message: str):
        self.code, self.message = code, message

    def get_queue_attributes(self, **kw):
        return {"Attributes": {"MaximumMessageSize": "1048576"}}

    def _fail(self, QueueUrl, Entries):
        failed = [{"Id": e["Id"], "Code": self.code, "Message": self.message, "SenderFault": True}
                  for e in Entries]  # fmt: skip
        return {"Successful": [], "Failed": failed}

    change_message_visibility_batch = delete_message_batch = _fail


GONE = [
    ("moto", "ReceiptHandleIsInvalid", "The input receipt handle is invalid."),
    (
        "localstack",
        "InvalidParameterValueException",
        "Value x for parameter ReceiptHandle is invalid. Reason: Message does not exist or is "
        "not available for visibility timeout change.",
    ),  # fmt: skip
    (
        "sqs-as-users-report",
        "InvalidParameterValue",
        "Value x for parameter ReceiptHandle is invalid. Reason: Message does not exist or is "
        "not available for visibility timeout change.",
    ),  # fmt: skip
    ("sqs-not-inflight", "AWS.SimpleQueueService.MessageNotInflight", "Message not inflight"),
]


@pytest.mark.parametrize("service,code,message", GONE, ids=[g[0] for g in GONE])
def test_a_gone_message_is_gone_whatever_the_service_calls_it(service, code, message):
    from cloudloop.backends.aws import SqsQueue
    from cloudloop.errors import LeaseLost
    from cloudloop.model import Lease

    q = SqsQueue(_FakeSqs(code, message), "https://sqs/q")
    lease = Lease("m1", "handle", b"", 2)
    q.release([lease])  # handing back a message that is gone: done, not an error
    q.ack([lease])
    with pytest.raises(LeaseLost):  # extending it proves the lease is gone
        q.extend([lease], 30)


def test_other_batch_failures_are_errors():
    from cloudloop.backends.aws import SqsQueue
    from cloudloop.errors import BackendError
    from cloudloop.model import Lease

    q = SqsQueue(_FakeSqs("InvalidParameterValue", "VisibilityTimeout is out of range"), "u")
    with pytest.raises(BackendError, match="out of range"):
        q.release([Lease("m1", "handle", b"", 1)])


def test_a_reply_that_is_not_aws_is_one_line_not_a_traceback():
    """A proxy or captive portal answering in HTML: botocore cannot parse it."""
    from botocore.parsers import ResponseParserError

    from cloudloop.backends.aws import aws_errors
    from cloudloop.errors import ConnectionFailed

    with (
        pytest.raises(ConnectionFailed, match="is not AWS .*check the endpoint") as e,
        aws_errors("launch for cluster 'c'"),
    ):
        raise ResponseParserError("Unable to parse response (syntax error), invalid XML:\n<html>")
    assert "\n" not in str(e.value)
