#!/usr/bin/env python3
"""Small HTTP fakes for the pod network-namespace test (tests/pod_netns.rs).

  fakes.py entra  --host H --port P --token-file F --log L   fake Entra ID token endpoint
  fakes.py imds   --host H --port P --log L                  fake "real IMDS" (/metadata/instance)
  fakes.py standin --host H --port P --log L                 stand-in sidecar: answers every GET

Each writes one JSON line per request to --log and prints "ready" once listening.
"""
import argparse
import json
import sys
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ACCESS_TOKEN = "fake-entra-access-token-for-pod-test"
IMDS_MARKER = {"compute": {"name": "fake-real-imds-vm", "location": "nowhere"}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("role", choices=["entra", "imds", "standin"])
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--token-file")
    args = ap.parse_args()
    log = open(args.log, "a", buffering=1)

    class Handler(BaseHTTPRequestHandler):
        def record(self, **extra):
            entry = {"method": self.command, "path": self.path, "peer": self.client_address[0],
                     "headers": {k.lower(): v for k, v in self.headers.items()}}
            entry.update(extra)
            log.write(json.dumps(entry) + "\n")

        def reply(self, code, obj):
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            n = int(self.headers.get("Content-Length") or 0)
            form = urllib.parse.parse_qs(self.rfile.read(n).decode())
            form = {k: v[0] for k, v in form.items()}
            self.record(form=form)
            if args.role != "entra" or not self.path.endswith("/oauth2/v2.0/token"):
                return self.reply(404, {"error": "not_found"})
            with open(args.token_file) as f:
                assertion = f.read().strip()
            problems = []
            if form.get("grant_type") != "client_credentials":
                problems.append("grant_type")
            if form.get("client_assertion_type") != \
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer":
                problems.append("client_assertion_type")
            if form.get("client_assertion", "").strip() != assertion:
                problems.append("client_assertion")
            if not form.get("scope", "").endswith("/.default"):
                problems.append("scope")
            if problems:
                return self.reply(400, {"error": "invalid_request",
                                        "error_description": "bad " + ",".join(problems)})
            self.reply(200, {"token_type": "Bearer", "expires_in": 3599,
                             "ext_expires_in": 3599, "access_token": ACCESS_TOKEN})

        def do_GET(self):
            self.record()
            if args.role == "standin":
                return self.reply(200, {"standin": True})
            if args.role == "imds" and self.path.split("?")[0] == "/metadata/instance":
                if self.headers.get("Metadata", "").lower() != "true":
                    return self.reply(400, {"error": "Bad request. Required metadata header not specified"})
                return self.reply(200, IMDS_MARKER)
            self.reply(404, {"error": "not_found"})

        def log_message(self, fmt, *a):
            pass

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print("ready", flush=True)
    sys.stdout.close()
    server.serve_forever()


if __name__ == "__main__":
    main()
