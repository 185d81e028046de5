"""An instance metadata service (IMDSv2) for tests: real HTTP on a test address.

One server answers for many "machines", told apart by the caller's address,
or for one default machine. Tests post spot interruption notices to a machine
with :meth:`MetadataServer.notify`.

Run as a script (``python imds.py --port P --state FILE``) it serves one
machine described by a JSON file that is re-read on every request, the way the
cloud-in-a-box runs one metadata service inside each instance's namespace (as
EC2 does at 169.254.169.254); writing ``notice`` into the file posts a spot
interruption notice.
"""

from __future__ import annotations

import json
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Machine:
    instance_id: str = "i-0000000000000000"
    instance_type: str = "c7a.large"
    market: str = "spot"
    notice: dict | None = None
    role: str | None = None  # an instance profile role: serves credentials like EC2 does
    image: str = "ami-00000000000000000"
    region: str = "us-east-1"
    tokens: set[str] = field(default_factory=set)


class MetadataServer:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, state: str | None = None):
        self.machines: dict[str, Machine] = {}
        self.default = Machine()
        self.state = state
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def machine(self) -> Machine:
                if server.state:
                    with open(server.state) as f:
                        fields = json.load(f)
                    m = server.default
                    for k in (
                        "instance_id",
                        "instance_type",
                        "market",
                        "notice",
                        "role",
                        "image",
                        "region",
                    ):
                        if k in fields:
                            setattr(m, k, fields[k])
                    return m
                return server.machines.get(self.client_address[0], server.default)

            def reply(self, code: int, body: str = "", ctype: str = "text/plain") -> None:
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self):
                if self.path != "/latest/api/token":
                    return self.reply(404)
                token = secrets.token_hex(16)
                self.machine().tokens.add(token)
                self.reply(200, token)

            def do_GET(self):
                m = self.machine()
                if self.headers.get("X-aws-ec2-metadata-token") not in m.tokens:
                    return self.reply(401, "IMDSv2 token required")
                path = self.path.removeprefix("/latest/meta-data/")
                if path == "spot/instance-action":
                    if m.notice is None:
                        return self.reply(404, "Not Found")
                    return self.reply(200, json.dumps(m.notice), "application/json")
                if path == "instance-id":
                    return self.reply(200, m.instance_id)
                if path == "ami-id":
                    return self.reply(200, m.image)
                if path == "placement/region":
                    return self.reply(200, m.region)
                if path == "instance-type":
                    return self.reply(200, m.instance_type)
                if path == "instance-life-cycle":
                    return self.reply(200, m.market)
                if path == "iam/security-credentials/" and m.role:
                    return self.reply(200, m.role)
                if m.role and path == f"iam/security-credentials/{m.role}":
                    creds = {
                        "Code": "Success",
                        "Type": "AWS-HMAC",
                        "AccessKeyId": "ASIAINSTANCEPROFILE",
                        "SecretAccessKey": "instance-profile-secret",
                        "Token": "instance-profile-token",
                        "Expiration": "2099-01-01T00:00:00Z",
                        "LastUpdated": "2026-01-01T00:00:00Z",
                    }
                    return self.reply(200, json.dumps(creds), "application/json")
                self.reply(404, "Not Found")

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://{host}:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def notify(self, address: str | None = None, action: str = "terminate") -> None:
        """Post a spot interruption notice, as EC2 does two minutes before reclaiming."""
        m = self.machines[address] if address else self.default
        m.notice = {"action": action, "time": "2026-11-23T12:00:00Z"}

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="serve one machine's instance metadata")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--state", required=True, help="JSON file describing the machine")
    a = ap.parse_args()
    MetadataServer(a.host, a.port, a.state)._thread.join()
