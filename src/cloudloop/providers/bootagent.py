"""The part of an instance's boot that runs before cloudloop is installed.

The user-data (userdata.py) carries this file and runs it with whatever
Python the image has (the standard library only; any Python 3.6 or later,
e.g. Amazon Linux 2023's 3.9), so that even a boot that finds no usable
Python for the workers can say why. It talks to S3 itself, with the instance
profile's credentials from instance metadata (IMDSv2) and Signature V4, so it
needs no AWS keys, no boto3 and no package index: a private subnet with an S3
gateway endpoint is enough.

::

    python3 bootagent.py report PHASE [--detail TEXT] [--log FILE]
        rewrite this instance's boot record, clusters/<cluster>/boots/<instance>,
        with PHASE appended (started, python, environment, workers, failed,
        ended); --log adds the tail of FILE (failed boots)
    python3 bootagent.py fetch DEST
        the wheelhouse the record CLOUDLOOP_WHEELHOUSE names, from
        wheelhouse/<digest>/: its signed manifest, then every wheel, each
        checked against the manifest's SHA-256 before it is kept

Both records are signed with the backend's key (read from the bucket, as
workers do), in the format of :func:`cloudloop.codec.sign`. Environment:
``CLOUDLOOP_BACKEND`` (the aws:// URL), ``CLOUDLOOP_CLUSTER``,
``CLOUDLOOP_BOOT_CONFIG`` (the digest of what the instance was told to
install, so a failure counts against that profile only),
``CLOUDLOOP_WHEELHOUSE``, ``CLOUDLOOP_HOME`` and ``CLOUDLOOP_METADATA_URL``.

This file is plain text in the user-data: it holds no secret and trusts
nothing it fetches without checking it.
"""

import datetime
import hashlib
import hmac
import json
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

TAIL = 4000  # bytes of the bootstrap log a failed boot carries
WHEEL = re.compile(r"^[A-Za-z0-9_.+-]+\.whl$")


def env(name, default=None):
    value = os.environ.get(name, default)
    if value is None:
        raise SystemExit(f"bootagent: {name} is not set")
    return value


# ---------------------------------------------------------------- instance metadata


def metadata(path, token=None):
    base = env("CLOUDLOOP_METADATA_URL", "http://169.254.169.254").rstrip("/")
    if token is None:
        req = urllib.request.Request(
            base + "/latest/api/token",
            method="PUT",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": "21600"},
        )
        token = urllib.request.urlopen(req, timeout=5).read().decode()
    req = urllib.request.Request(
        base + "/latest/meta-data/" + path, headers={"X-aws-ec2-metadata-token": token}
    )
    return urllib.request.urlopen(req, timeout=5).read().decode(), token


def identity():
    """(instance id, image id, region, credentials) from instance metadata."""
    iid, token = metadata("instance-id")
    out = {"instance": iid}
    for name, path in (
        ("image", "ami-id"),
        ("region", "placement/region"),
        ("type", "instance-type"),
        ("market", "instance-life-cycle"),
    ):
        try:
            out[name] = metadata(path, token)[0]
        except (OSError, urllib.error.URLError):
            out[name] = None
    role = metadata("iam/security-credentials/", token)[0].strip().splitlines()[0]
    creds = json.loads(metadata("iam/security-credentials/" + role, token)[0])
    out["creds"] = (creds["AccessKeyId"], creds["SecretAccessKey"], creds.get("Token"))
    return out


# ---------------------------------------------------------------- S3 with Signature V4


class Bucket:
    def __init__(self, url, region, creds):
        p = urllib.parse.urlsplit(url)
        query = dict(urllib.parse.parse_qsl(p.query))
        self.bucket = p.netloc
        self.prefix = p.path.strip("/") + "/" if p.path.strip("/") else ""
        self.region = query.get("region") or region or "us-east-1"
        self.endpoint = query.get("endpoint")
        self.creds = creds

    def _url(self, key):
        path = urllib.parse.quote(self.prefix + key, safe="/-_.~")
        if self.endpoint:
            return self.endpoint.rstrip("/") + "/" + self.bucket + "/" + path
        if "." not in self.bucket:
            return f"https://{self.bucket}.s3.{self.region}.amazonaws.com/{path}"
        return f"https://s3.{self.region}.amazonaws.com/{self.bucket}/{path}"

    def signed(self, method, key, body=b"", now=None):
        """(url, headers) of a Signature V4 request for ``key`` (as botocore signs it)."""
        url = self._url(key)
        p = urllib.parse.urlsplit(url)
        now = now or datetime.datetime.now(datetime.timezone.utc)
        amzdate, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        payload = hashlib.sha256(body).hexdigest()
        access, secret, token = self.creds
        headers = {"host": p.netloc, "x-amz-content-sha256": payload, "x-amz-date": amzdate}
        if token:
            headers["x-amz-security-token"] = token
        names = sorted(headers)
        canonical = "\n".join([
            method, p.path, "",
            "".join(f"{n}:{headers[n]}\n" for n in names),
            ";".join(names), payload,
        ])  # fmt: skip
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = "\n".join([
            "AWS4-HMAC-SHA256", amzdate, scope, hashlib.sha256(canonical.encode()).hexdigest(),
        ])  # fmt: skip
        k = ("AWS4" + secret).encode()
        for part in (day, self.region, "s3", "aws4_request"):
            k = hmac.new(k, part.encode(), "sha256").digest()
        signature = hmac.new(k, to_sign.encode(), "sha256").hexdigest()
        headers["authorization"] = (
            "AWS4-HMAC-SHA256 Credential={}/{}, SignedHeaders={}, Signature={}".format(
                access, scope, ";".join(names), signature
            )
        )
        del headers["host"]
        return url, headers

    def request(self, method, key, body=b""):
        url, headers = self.signed(method, key, body)
        if method == "PUT":  # not urllib's default, a form (which a server may parse as one)
            headers["content-type"] = "application/octet-stream"
        req = urllib.request.Request(url, data=body if method == "PUT" else None,
                                     method=method, headers=headers)  # fmt: skip
        for attempt in range(5):
            try:
                return urllib.request.urlopen(req, timeout=60).read()
            except urllib.error.HTTPError as e:
                if e.code < 500 or attempt == 4:
                    raise
            except (OSError, urllib.error.URLError):
                if attempt == 4:
                    raise
            time.sleep(1 + 2 * attempt)
        raise AssertionError("unreachable")


# ---------------------------------------------------------------- signed records


def sign(key, data, name):
    """As cloudloop.codec.sign: header, HMAC over the domain, the name and the data."""
    h = hmac.new(key, b"blob\0" + name.encode() + b"\0", "sha256")
    h.update(data)
    return b"CLS2" + h.digest() + data


def verify(key, blob, name):
    data = blob[36:]
    if blob[:4] != b"CLS2" or not hmac.compare_digest(blob[4:36], sign(key, data, name)[4:36]):
        raise SystemExit(f"bootagent: {name} failed its signature check; refusing to use it")
    return data


def cluster_dir(name):
    """As cloudloop.keys.cluster_dir."""
    if re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name) and name not in (".", ".."):
        return name
    digest = hashlib.sha256(name.encode(errors="surrogatepass")).hexdigest()[:16]
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)[:40] + "=" + digest


def safe_name(text, limit=64):
    """As cloudloop.keys.safe_name."""
    return re.sub(r"[^A-Za-z0-9_.=+@-]+", "_", text)[:limit].strip(".") or "_"


class Agent:
    def __init__(self):
        self.home = env("CLOUDLOOP_HOME", "/opt/cloudloop")
        self.me = identity()
        self.bucket = Bucket(env("CLOUDLOOP_BACKEND"), self.me["region"], self.me["creds"])
        self._key = None

    @property
    def key(self):
        if self._key is None:
            self._key = self.bucket.request("GET", ".secret.key")
        return self._key

    def record_name(self):
        return "clusters/{}/boots/{}".format(cluster_dir(env("CLOUDLOOP_CLUSTER")),
                                             safe_name(self.me["instance"]))  # fmt: skip

    def launched(self):
        """The launcher's record of this instance (its launch time), checked, or None."""
        name = self.record_name()
        try:
            record = json.loads(verify(self.key, self.bucket.request("GET", name), name))
        except (OSError, ValueError, SystemExit, urllib.error.URLError):
            return None
        if not isinstance(record, dict) or not isinstance(record.get("phases"), list):
            return None
        record["phases"] = [p for p in record["phases"][:1] if p and p[0] == "launched"]
        return record

    def report(self, phase, detail="", log=None):
        state_file = os.path.join(self.home, "boot.json")
        try:
            with open(state_file) as f:
                record = json.load(f)
        except (OSError, ValueError):
            record = self.launched() or {
                "instance": self.me["instance"], "image": self.me["image"],
                "type": self.me["type"], "market": self.me["market"],
                "config": os.environ.get("CLOUDLOOP_BOOT_CONFIG", ""), "by": "instance",
                "phases": [],
            }  # fmt: skip
        record["phases"].append([phase, time.time(), detail[:400]])
        record["by"] = "instance"
        if phase == "failed":
            record["failed"] = detail[:400]
            if log:
                try:
                    with open(log, "rb") as f:
                        f.seek(0, 2)
                        f.seek(max(0, f.tell() - TAIL))
                        record["log"] = f.read().decode("utf-8", "replace")
                except OSError:
                    pass
        with open(state_file + ".tmp", "w") as f:
            json.dump(record, f)
        os.replace(state_file + ".tmp", state_file)
        name = self.record_name()
        data = json.dumps(record, separators=(",", ":")).encode()
        self.bucket.request("PUT", name, sign(self.key, data, name))

    def fetch(self, dest):
        digest = env("CLOUDLOOP_WHEELHOUSE")
        if not re.fullmatch(r"[0-9a-f]{16,64}", digest):
            raise SystemExit(f"bootagent: {digest!r} is not a wheelhouse digest")
        name = f"wheelhouse/{digest}/manifest"
        manifest = json.loads(verify(self.key, self.bucket.request("GET", name), name))
        os.makedirs(dest, exist_ok=True)
        total = 0
        for wheel, sha in sorted(manifest["files"].items()):
            if not WHEEL.match(wheel):
                raise SystemExit(f"bootagent: the manifest names {wheel!r}, which is not a wheel")
            data = self.bucket.request("GET", f"wheelhouse/{digest}/files/{wheel}")
            if hashlib.sha256(data).hexdigest() != sha:
                raise SystemExit(f"bootagent: {wheel} does not match its manifest's digest")
            with open(os.path.join(dest, wheel), "wb") as f:
                f.write(data)
            total += len(data)
        n = len(manifest["files"])
        print(f"fetched {n} wheels ({total / 1e6:.1f} MB) from wheelhouse {digest}")
        with open(os.path.join(dest, "install.txt"), "w") as f:
            f.write("\n".join(manifest["install"]) + "\n")


def main(argv):
    if len(argv) >= 2 and argv[0] == "report":
        detail = argv[argv.index("--detail") + 1] if "--detail" in argv else ""
        log = argv[argv.index("--log") + 1] if "--log" in argv else None
        Agent().report(argv[1], detail, log)
    elif argv == ["image"]:
        print(metadata("ami-id")[0])
    elif len(argv) == 2 and argv[0] == "fetch":
        Agent().fetch(argv[1])
    else:
        raise SystemExit(
            "usage: bootagent.py report PHASE [--detail TEXT] [--log FILE] | fetch DEST"
        )


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (OSError, ValueError, KeyError, urllib.error.URLError) as e:
        raise SystemExit(f"bootagent: {type(e).__name__}: {e}") from None
