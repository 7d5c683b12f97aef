#!/usr/bin/env python3
"""HTTP probes run inside the pod namespace by tests/pod_netns.rs (stdlib only).

  client.py get URL [--metadata]      print "STATUS BODY" (or "ERR <reason>"), exit 0
  client.py wait URL SECONDS          exit 0 once URL answers 200, else 1
"""
import sys
import time
import urllib.error
import urllib.request


def get(url, metadata=False, timeout=5):
    req = urllib.request.Request(url, headers={"Metadata": "true"} if metadata else {})
    # No proxies: the test runs with an empty environment, but be explicit.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def main():
    cmd, url = sys.argv[1], sys.argv[2]
    if cmd == "get":
        try:
            status, body = get(url, metadata="--metadata" in sys.argv[3:])
            print(status, body)
        except Exception as e:  # connection refused, timeout: reported, judged by the test
            print("ERR", repr(e))
        return 0
    if cmd == "wait":
        deadline = time.time() + float(sys.argv[3])
        last = None
        while time.time() < deadline:
            try:
                status, body = get(url, timeout=2)
                if status == 200:
                    return 0
                last = f"{status} {body}"
            except Exception as e:
                last = repr(e)
            time.sleep(0.2)
        print(f"not ready: {last}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
