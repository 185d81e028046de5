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
    python3 bootagent.py leave
        end this instance within its Auto Scaling group (CLOUDLOOP_GROUP), the
        group's desired capacity decremented; after a spot notice, nothing
        (the group replaces what AWS takes back)
    python3 bootagent.py hold
        after a failed boot: if the last CLOUDLOOP_MAX_FAILED_BOOTS boots of this
        configuration failed (as the client counts them, since the last
        `cloudloop resume`), turn off the group's scale-out alarm's actions

Both records are signed with the backend's key (read from the bucket, as
workers do), in the format of :func:`cloudloop.codec.sign`. Environment:
``CLOUDLOOP_BACKEND`` (the aws:// URL), ``CLOUDLOOP_CLUSTER``,
``CLOUDLOOP_BOOT_CONFIG`` (the digest of what the instance was told to
install, so a failure counts against that profile only),
``CLOUDLOOP_WHEELHOUSE``, ``CLOUDLOOP_BOOT_TIMEOUT`` (into the record, for readers
that do not know the profile), ``CLOUDLOOP_HOME`` and ``CLOUDLOOP_METADATA_URL``.

This file is plain text in the user-data: it holds no secret and trusts
nothing it fetches without checking it. What it sends has the credentials of
any URL (``https://user:token@host``) taken out. A report is worth less than
the boot it describes: it gives up after :data:`REPORT_SECONDS` (the phase
stays in ``boot.json`` on the machine, so the next report that gets through
carries it), while fetching the wheelhouse retries for as long as the boot's
watchdog lets it.
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
WHEEL = re.compile(r"[A-Za-z0-9_.+-]+\.whl")  # a wheel's file name (fullmatch), no path
SHA256 = re.compile(r"[0-9a-f]{64}")
REPORT_SECONDS = 20.0  # a report that cannot reach the store by then gives up
CREDENTIALS_SECONDS = 30.0  # a new instance profile's credentials may show up late
MAX_PHASES = 50  # what a reader accepts (providers/boots.py)
USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]{0,30}://)[^/?#@\s]*@")


class Refused(Exception):
    """The store or instance metadata would not do what was asked (said in one line)."""


def text(value):
    """A str from the environment or argv as the bytes were (Python 3.6 in the C locale
    reads them as ASCII with surrogates; 3.7+ coerces the locale to UTF-8)."""
    return os.fsencode(value).decode("utf-8", "replace")


def redact(value):
    """``value`` with the credentials of every URL in it replaced by ``***``."""
    return USERINFO.sub(r"\1***@", value)


def env(name, default=None):
    value = os.environ.get(name, default)
    if value is None:
        raise SystemExit(f"bootagent: {name} is not set")
    return text(value)


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


def credentials(token):
    """The instance profile's credentials; waits a while for them to appear (IMDS
    answers 404 until EC2 has them, which can take seconds for a new profile)."""
    deadline = time.monotonic() + CREDENTIALS_SECONDS
    while True:
        try:
            role = metadata("iam/security-credentials/", token)[0].strip().splitlines()
            if role:
                return json.loads(metadata("iam/security-credentials/" + role[0], token)[0])
        except urllib.error.HTTPError as e:
            if e.code != 404:
                raise
        if time.monotonic() > deadline:
            raise Refused("instance metadata has no instance-profile credentials "
                          "(does the launch template name the instance profile?)")  # fmt: skip
        time.sleep(1)


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
    creds = credentials(token)
    out["creds"] = (creds["AccessKeyId"], creds["SecretAccessKey"], creds.get("Token"))
    return out


# ---------------------------------------------------------------- Signature V4


def sigv4(method, url, body, region, service, creds, now=None, extra=None):
    """The headers of a Signature V4 request (as botocore signs it), ``host`` left out:
    urllib sends its own, the same."""
    p = urllib.parse.urlsplit(url)
    now = now or datetime.datetime.now(datetime.timezone.utc)
    amzdate, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    access, secret, token = creds
    headers = {"host": p.netloc, "x-amz-date": amzdate, **(extra or {})}
    if token:
        headers["x-amz-security-token"] = token
    names = sorted(headers)
    payload = headers.get("x-amz-content-sha256") or hashlib.sha256(body).hexdigest()
    canonical = "\n".join([
        method, p.path or "/", p.query,
        "".join(f"{n}:{headers[n]}\n" for n in names),
        ";".join(names), payload,
    ])  # fmt: skip
    scope = f"{day}/{region}/{service}/aws4_request"
    to_sign = "\n".join([
        "AWS4-HMAC-SHA256", amzdate, scope, hashlib.sha256(canonical.encode()).hexdigest(),
    ])  # fmt: skip
    k = ("AWS4" + secret).encode()
    for part in (day, region, service, "aws4_request"):
        k = hmac.new(k, part.encode(), "sha256").digest()
    signature = hmac.new(k, to_sign.encode(), "sha256").hexdigest()
    headers["authorization"] = (
        "AWS4-HMAC-SHA256 Credential={}/{}, SignedHeaders={}, Signature={}".format(
            access, scope, ";".join(names), signature
        )
    )
    del headers["host"]
    return headers


# ---------------------------------------------------------------- S3


class Bucket:
    def __init__(self, url, region, creds):
        p = urllib.parse.urlsplit(url)
        query = dict(urllib.parse.parse_qsl(p.query))
        self.bucket = p.netloc
        self.prefix = p.path.strip("/") + "/" if p.path.strip("/") else ""
        self.region = query.get("region") or region or "us-east-1"
        self.endpoint = query.get("endpoint")
        self.creds = creds
        self.deadline = None  # time.monotonic() by which requests give up (None: retries only)

    def _url(self, key, query=""):
        """The object's URL; with ``query`` (canonical: sorted, encoded), the bucket's."""
        if query:
            if self.endpoint:
                return self.endpoint.rstrip("/") + "/" + self.bucket + "?" + query
            if "." not in self.bucket:
                return f"https://{self.bucket}.s3.{self.region}.amazonaws.com/?{query}"
            return f"https://s3.{self.region}.amazonaws.com/{self.bucket}?{query}"
        path = urllib.parse.quote(self.prefix + key, safe="/-_.~")
        if self.endpoint:
            return self.endpoint.rstrip("/") + "/" + self.bucket + "/" + path
        if "." not in self.bucket:
            return f"https://{self.bucket}.s3.{self.region}.amazonaws.com/{path}"
        return f"https://s3.{self.region}.amazonaws.com/{self.bucket}/{path}"

    def signed(self, method, key, body=b"", now=None, query=""):
        """(url, headers) of a Signature V4 request for ``key`` (as botocore signs it)."""
        url = self._url(key, query)
        payload = hashlib.sha256(body).hexdigest()
        headers = sigv4(method, url, body, self.region, "s3", self.creds, now,
                        {"x-amz-content-sha256": payload})  # fmt: skip
        return url, headers

    def listing(self, prefix):
        """[(key below the backend's prefix, LastModified)] under ``prefix``: the first 1000."""
        query = urllib.parse.urlencode(
            [("list-type", "2"), ("prefix", self.prefix + prefix)],
            quote_via=urllib.parse.quote, safe="-_.~",
        )  # fmt: skip
        body = self.request("GET", prefix, query=query)
        out = []
        for item in re.findall(rb"<Contents>(.*?)</Contents>", body, re.S):
            key = re.search(rb"<Key>([^<]{1,1024})</Key>", item)
            when = re.search(rb"<LastModified>([^<]{1,64})</LastModified>", item)
            if key and when:
                name = key.group(1).decode("utf-8", "replace").replace("&amp;", "&")
                if name.startswith(self.prefix):
                    out.append((name[len(self.prefix) :], when.group(1).decode()))
        return out

    def request(self, method, key, body=b"", query=""):
        """The response's body; :class:`Refused` naming the request and S3's reason.

        A bucket in another region than the one signed for (the backend URL names
        none, and the instance's is not the bucket's) makes S3 answer 301 or 400 with
        its region in ``x-amz-bucket-region``: the request is signed again for that
        one, as botocore does."""
        for attempt in range(5):
            timeout = 60.0
            if self.deadline is not None:
                timeout = min(timeout, self.deadline - time.monotonic())
                if timeout <= 0:
                    raise Refused(f"{method} {key}: no answer from the store in time")
            url, headers = self.signed(method, key, body, query=query)  # now: a retry is fresh
            if method == "PUT":  # not urllib's default, a form (which a server may parse as one)
                headers["content-type"] = "application/octet-stream"
            req = urllib.request.Request(url, data=body if method == "PUT" else None,
                                         method=method, headers=headers)  # fmt: skip
            try:
                with urllib.request.urlopen(req, timeout=timeout) as r:
                    return r.read()
            except urllib.error.HTTPError as e:
                moved = e.headers.get("x-amz-bucket-region") if e.headers else None
                if (
                    e.code in (301, 307, 400) and moved and moved != self.region
                    and re.fullmatch(r"[a-z]{2}(-[a-z0-9]+){1,3}", moved)  # it becomes a host
                ):  # fmt: skip
                    self.region = moved  # re-signed (and re-addressed) for the bucket's own
                    continue
                if e.code < 500 or attempt == 4:
                    why = f"{e.code} {s3_code(e)}{hint(method, e.code)}"
                    raise Refused(f"{method} {key}: {why}") from None
                why = f"{e.code} {s3_code(e)}"
            except (OSError, urllib.error.URLError) as e:
                why = str(getattr(e, "reason", e))
                if attempt == 4:
                    raise Refused(f"{method} {key}: {why}") from None
            pause = 1 + 2 * attempt
            if self.deadline is not None and time.monotonic() + pause >= self.deadline:
                raise Refused(f"{method} {key}: {why}; no answer from the store in time")
            time.sleep(pause)
        raise AssertionError("unreachable")


def s3_code(error):
    """S3's error code (``NoSuchKey``, ``AccessDenied``) from an error response, or its reason."""
    try:
        found = re.search(rb"<Code>([A-Za-z0-9.]{1,64})</Code>", error.read(4096))
    except (OSError, ValueError):
        found = None
    return found.group(1).decode() if found else str(error.reason)


def hint(method, code):
    if method == "GET" and code in (403, 404):
        # S3 answers 403, not 404, for a missing object to a role that may not list it
        return " (not in the store, or this instance's role may not read it)"
    return ""


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


def boot_key(cluster, instance):
    """As cloudloop.keys.boot (this file cannot import cloudloop: it runs before it is installed)."""
    return f"clusters/{cluster_dir(cluster)}/boots/{safe_name(instance)}"


def wheelhouse_key(digest, rest):
    """As cloudloop.keys.wheelhouse_manifest ("manifest") and wheelhouse_file ("files/<wheel>")."""
    return f"wheelhouse/{digest}/{rest}"


def deadline():
    """``{"deadline": seconds}``: the boot_timeout the user-data was given, if it is one."""
    try:
        seconds = float(os.environ.get("CLOUDLOOP_BOOT_TIMEOUT", ""))
    except ValueError:
        return {}
    return {"deadline": seconds} if 0 < seconds < 1e6 else {}


class Agent:
    def __init__(self):
        self.home = env("CLOUDLOOP_HOME", "/opt/cloudloop")
        self.me = identity()
        self.bucket = Bucket(env("CLOUDLOOP_BACKEND"), self.me["region"], self.me["creds"])
        self._key = None

    @property
    def key(self):
        if isinstance(self._key, Refused):  # asked once already: no second wait
            raise self._key
        if self._key is None:
            try:
                self._key = self.bucket.request("GET", ".secret.key")
            except Refused as e:
                self._key = e
                raise
        return self._key

    def record_name(self):
        return boot_key(env("CLOUDLOOP_CLUSTER"), self.me["instance"])

    def fresh(self):
        """A record of this boot with nothing in it yet."""
        return {
            "instance": self.me["instance"], "image": self.me["image"], "type": self.me["type"],
            "market": self.me["market"], "config": os.environ.get("CLOUDLOOP_BOOT_CONFIG", ""),
            "by": "instance", "phases": [], **deadline(),
        }  # fmt: skip

    def launched(self, record):
        """``record`` with the launcher's word on this instance (its launch time, its image,
        type and market as EC2 described them) where the store has it, signed and sound."""
        name = self.record_name()
        try:
            found = json.loads(verify(self.key, self.bucket.request("GET", name), name))
        except (Refused, ValueError, SystemExit):
            return record
        if not isinstance(found, dict):
            return record
        for field in ("image", "type", "market", "config"):
            if isinstance(found.get(field), str):
                record[field] = found[field][:200]
        first = found.get("phases")
        first = first[0] if isinstance(first, list) and first else None
        if (
            isinstance(first, list) and len(first) == 3 and first[0] == "launched"
            and type(first[1]) in (int, float) and 0 < first[1] < 2**33
        ):  # fmt: skip
            record["phases"] = [["launched", first[1], ""]]
        return record

    def report(self, phase, detail="", log=None):
        import fcntl  # here: the client imports this module (redact) on any platform

        state_file = os.path.join(self.home, "boot.json")
        with open(state_file + ".lock", "a") as lock:  # the watchdog may report meanwhile
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.bucket.deadline = time.monotonic() + REPORT_SECONDS
            try:
                with open(state_file, encoding="utf-8") as f:
                    record = json.load(f)
            except (OSError, ValueError):
                record = self.launched(self.fresh())
            detail = redact(detail)[:400]
            if "failed" in record:  # the first failure is the cause; what follows, its echo
                print(f"bootagent: this boot failed already ({record['failed']}); not {detail!r}")
            elif len(record["phases"]) < MAX_PHASES:
                record["phases"].append([phase, time.time(), detail])
                if phase == "failed":
                    record["failed"] = detail
                    if log:
                        try:
                            with open(log, "rb") as f:
                                f.seek(0, 2)
                                cut = f.tell() > TAIL
                                f.seek(max(0, f.tell() - TAIL))
                                tail = f.read().decode("utf-8", "replace")
                            if cut:  # its first line is a part of one (of a URL, say)
                                tail = tail.partition("\n")[2]
                            record["log"] = redact(tail)
                        except OSError:
                            pass
            record["by"] = "instance"
            with open(state_file + ".tmp", "w", encoding="utf-8") as f:
                json.dump(record, f)
            os.replace(state_file + ".tmp", state_file)
            name = self.record_name()
            data = json.dumps(record, separators=(",", ":")).encode()
            self.bucket.request("PUT", name, sign(self.key, data, name))

    def fetch(self, dest):
        digest = env("CLOUDLOOP_WHEELHOUSE")
        if not re.fullmatch(r"[0-9a-f]{16,64}", digest):
            raise SystemExit(f"bootagent: {digest!r} is not a wheelhouse digest")
        name = wheelhouse_key(digest, "manifest")
        manifest = json.loads(verify(self.key, self.bucket.request("GET", name), name))
        files = manifest.get("files") if isinstance(manifest, dict) else None
        install = manifest.get("install") if isinstance(manifest, dict) else None
        if not isinstance(files, dict) or not isinstance(install, list):
            raise SystemExit(f"bootagent: {name} is not a wheelhouse manifest")
        for wheel, sha in sorted(files.items()):  # all of it checked before anything is kept
            if not WHEEL.fullmatch(wheel) or wheel.startswith("."):
                raise SystemExit(f"bootagent: the manifest names {wheel!r}, which is not a wheel")
            if not isinstance(sha, str) or not SHA256.fullmatch(sha):
                raise SystemExit(f"bootagent: the manifest's digest of {wheel} is not a SHA-256")
        if not all(isinstance(x, str) for x in install):
            raise SystemExit(f"bootagent: {name} is not a wheelhouse manifest")
        os.makedirs(dest, exist_ok=True)
        total = 0
        for wheel, sha in sorted(files.items()):
            data = self.bucket.request("GET", wheelhouse_key(digest, "files/" + wheel))
            if hashlib.sha256(data).hexdigest() != sha:
                raise SystemExit(f"bootagent: {wheel} does not match its manifest's digest")
            with open(os.path.join(dest, wheel), "wb") as f:
                f.write(data)
            total += len(data)
        print(f"fetched {len(files)} wheels ({total / 1e6:.1f} MB) from wheelhouse {digest}")
        with open(os.path.join(dest, "install.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(install) + "\n")


QUERY_APIS = {"autoscaling": "2011-01-01", "monitoring": "2010-08-01"}  # service -> Version


def group_call(endpoint, region, creds, params, now=None, service="autoscaling"):
    """(url, body, headers) of a Query API call (EC2 Auto Scaling, or CloudWatch:
    ``monitoring``), signed."""
    url = (endpoint.rstrip("/") + "/") if endpoint else f"https://{service}.{region}.amazonaws.com/"
    params = {**params, "Version": QUERY_APIS[service]}
    body = urllib.parse.urlencode(sorted(params.items())).encode()
    extra = {"content-type": "application/x-www-form-urlencoded; charset=utf-8"}
    return url, body, sigv4("POST", url, body, region, service, creds, now, extra)


def group_post(params, service="autoscaling"):
    """One EC2 Auto Scaling (or CloudWatch) call for this instance, with its instance-profile
    credentials: None if it was done, else why not (AWS's refusal, or no answer in time).
    Throttling is retried; any other refusal is final."""
    iid, token = metadata("instance-id")
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(env("CLOUDLOOP_BACKEND")).query))
    try:
        region = metadata("placement/region", token)[0]
    except (OSError, urllib.error.URLError):
        region = query.get("region") or "us-east-1"
    creds = credentials(token)
    creds = (creds["AccessKeyId"], creds["SecretAccessKey"], creds.get("Token"))
    params = {k: (iid if v is None else v) for k, v in params.items()}  # None: this instance
    deadline = time.monotonic() + REPORT_SECONDS
    why = "no answer"
    for attempt in range(4):
        url, body, headers = group_call(query.get("endpoint"), region, creds, params,
                                        service=service)  # fmt: skip
        req = urllib.request.Request(url, data=body, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=max(1.0, deadline - time.monotonic())):
                return None
        except urllib.error.HTTPError as e:
            answer = e.read(4096) or b""
            found = re.search(rb"<Message>([^<]{1,300})</Message>", answer)
            why = f"{e.code} {found.group(1).decode('utf-8', 'replace') if found else e.reason}"
            throttled = re.search(rb"<Code>(Throttling|RequestLimitExceeded)</Code>", answer)
            if e.code < 500 and not throttled:
                return redact(why)
        except (OSError, urllib.error.URLError) as e:
            why = str(getattr(e, "reason", e))
        if time.monotonic() + 1 + attempt >= deadline:
            break
        time.sleep(1 + attempt)
    return redact(why) + " (no answer in time)"


def leave():
    """End this instance within its Auto Scaling group, the desired capacity decremented
    (else the group launches another in its place); after a spot interruption notice,
    leave the capacity as it is (AWS takes the machine back; the group replaces it)."""
    group = env("CLOUDLOOP_GROUP")
    iid, token = metadata("instance-id")
    try:
        notice = metadata("spot/instance-action", token)[0]
    except (OSError, urllib.error.URLError):  # 404: no notice; metadata away: none either
        notice = ""  # (leaving with the capacity is the cheaper mistake)
    if notice.strip():
        print(f"bootagent: spot interruption notice ({redact(notice)[:200]}): "
              f"group {group} replaces this machine")  # fmt: skip
        return
    why = group_post({"Action": "TerminateInstanceInAutoScalingGroup", "InstanceId": None,
                      "ShouldDecrementDesiredCapacity": "true"})  # fmt: skip
    if why is None:
        print(f"bootagent: {iid} ends within group {group}, its capacity with it")
    else:  # not in the group, or it is at its minimum: the machine just shuts down
        print(f"bootagent: group {group} would not end {iid}: {why}")


def failed_in_a_row(records, config, since):
    """How many boots of ``config`` launched since ``since`` failed, newest first, up to
    the first that served (boots under way, stopped by a client or of another config are
    passed over), as the client counts them (providers/boots.py)."""
    run = 0
    for launched, rec in sorted(records, key=lambda x: x[0], reverse=True):
        if rec.get("config") != config or launched < since or rec.get("stopped"):
            continue
        if rec.get("failed"):
            run += 1
        elif any(isinstance(p, list) and p[:1] == ["workers"] for p in rec.get("phases", [])):
            break
    return run


def launched_at(rec):
    first = rec.get("phases")
    first = first[0] if isinstance(first, list) and first else None
    ok = isinstance(first, list) and len(first) == 3 and type(first[1]) in (int, float)
    return float(first[1]) if ok and 0 < first[1] < 2**33 else 0.0


def reset_key(cluster):
    """As cloudloop.keys.boots_reset."""
    return "clusters/" + cluster_dir(cluster) + "/boots-reset"


def hold(agent):
    """After this boot failed: if it is the ``CLOUDLOOP_MAX_FAILED_BOOTS``-th of its
    configuration in a row, turn off the actions of the group's scale-out alarm (the one
    right the instance has besides leaving: that alarm only), so a broken profile does not
    become machines failing one after another with nobody watching (``cloudloop up``
    with a changed profile, or ``cloudloop resume``, turns them on again)."""
    group, cluster = env("CLOUDLOOP_GROUP"), env("CLOUDLOOP_CLUSTER")
    try:
        limit = max(1, int(os.environ.get("CLOUDLOOP_MAX_FAILED_BOOTS", "3")))
    except ValueError:
        limit = 3
    config = os.environ.get("CLOUDLOOP_BOOT_CONFIG", "")
    agent.bucket.deadline = time.monotonic() + 2 * REPORT_SECONDS
    since = 0.0
    try:
        name = reset_key(cluster)
        at = json.loads(verify(agent.key, agent.bucket.request("GET", name), name)).get("at")
        since = float(at) if type(at) in (int, float) else 0.0
    except (Refused, ValueError, SystemExit, AttributeError):
        pass
    prefix = "clusters/" + cluster_dir(cluster) + "/boots/"  # as boot_key's
    listed = sorted(agent.bucket.listing(prefix), key=lambda x: x[1], reverse=True)
    records = []
    for key, _ in listed[: 4 * limit]:  # the latest boots are enough to count a run
        try:
            rec = json.loads(verify(agent.key, agent.bucket.request("GET", key), key))
        except (Refused, ValueError, SystemExit):
            continue
        if isinstance(rec, dict):
            records.append((launched_at(rec), rec))
    run = failed_in_a_row(records, config, since)
    if run < limit:
        print(f"bootagent: {run} boot(s) of this configuration failed in a row (stop at {limit})")
        return
    alarm = group + "-work"  # ec2_group.py's GroupNames.work_alarm
    why = group_post({"Action": "DisableAlarmActions", "AlarmNames.member.1": alarm},
                     service="monitoring")  # fmt: skip
    said = "starts no more machines" if why is None else f"could not be stopped: {why}"
    print(f"bootagent: {run} boots in a row failed; group {group} {said} (alarm {alarm} off)")


def main(argv):
    argv = [text(a) for a in argv]
    if len(argv) >= 2 and argv[0] == "report":
        detail = argv[argv.index("--detail") + 1] if "--detail" in argv else ""
        log = argv[argv.index("--log") + 1] if "--log" in argv else None
        Agent().report(argv[1], detail, log)
    elif argv == ["image"]:
        print(metadata("ami-id")[0])
    elif len(argv) == 2 and argv[0] == "fetch":
        Agent().fetch(argv[1])
    elif argv == ["leave"]:
        leave()
    elif argv == ["hold"]:
        hold(Agent())
    else:
        raise SystemExit(
            "usage: bootagent.py report PHASE [--detail TEXT] [--log FILE] | fetch DEST | leave | hold"
        )


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except Refused as e:
        raise SystemExit(f"bootagent: {e}") from None
    except (OSError, ValueError, KeyError, urllib.error.URLError) as e:
        raise SystemExit(f"bootagent: {type(e).__name__}: {e}") from None
