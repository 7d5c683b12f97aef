"""A minimal Entra ID token endpoint for the benchmark and soak runs: issues a fixed-size token
with a chosen lifetime and counts requests per scope (GET /stats). Loopback only.

usage: fake_entra.py PORT LIFETIME_SECONDS
"""
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

PORT, LIFETIME = int(sys.argv[1]), int(sys.argv[2])
TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9." + "x" * 1100 + ".sig"
stats = {}
lock = threading.Lock()
serial = [0]


class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def _send(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        form = parse_qs(self.rfile.read(n).decode())
        scope = form.get("scope", [""])[0]
        with lock:
            stats[scope] = stats.get(scope, 0) + 1
            serial[0] += 1
            s = serial[0]
        tok = TOKEN[:-4] + "%04d" % (s % 10000)
        self._send(200, {"token_type": "Bearer", "expires_in": LIFETIME, "ext_expires_in": LIFETIME, "access_token": tok})

    def do_GET(self):
        with lock:
            self._send(200, dict(stats))


ThreadingHTTPServer(("127.0.0.1", PORT), H).serve_forever()
