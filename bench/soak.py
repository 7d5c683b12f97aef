#!/usr/bin/env python3
"""Soak run (not in CI): mixed traffic over many resources and both flavors against a release
sidecar whose tokens live a minute, for an hour by default. Reports failed requests (must be 0),
Entra calls per key per token lifetime (refresh at half-life: about 2), and RSS over time (must be
flat).

usage: bench/soak.py [--minutes 60] [--resources 50] [--lifetime 60] [--clients 8]
"""
import argparse
import http.client
import os
import random
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=60)
    ap.add_argument("--resources", type=int, default=50)
    ap.add_argument("--lifetime", type=int, default=60)
    ap.add_argument("--clients", type=int, default=8)
    a = ap.parse_args()
    import run as bench  # bench/run.py helpers

    subprocess.run(["cargo", "build", "--profile", "dist", "--quiet", "--bin", "identity-sidecar"], cwd=ROOT, check=True)
    tmp = tempfile.mkdtemp(prefix="idsc-soak-")
    tok = os.path.join(tmp, "token")
    with open(tok, "w") as f:
        f.write(bench.fed_token() + "\n")
    ep, sp = bench.free_port(), bench.free_port()
    entra = subprocess.Popen([sys.executable, os.path.join(ROOT, "bench", "fake_entra.py"), str(ep), str(a.lifetime)])
    bench.wait_port(ep)
    env = dict(os.environ, AZURE_CLIENT_ID=bench.CLIENT_ID, AZURE_TENANT_ID=bench.TENANT, AZURE_FEDERATED_TOKEN_FILE=tok,
               AZURE_AUTHORITY_HOST="http://127.0.0.1:%d/" % ep, IDENTITY_HEADER=bench.HEADER,
               IDENTITY_SIDECAR_LISTEN="127.0.0.1:%d" % sp, IDENTITY_SIDECAR_LOG_FORMAT="json", RUST_LOG="warn")
    side = subprocess.Popen([os.path.join(bench.REL, "identity-sidecar"), "serve"], env=env,
                            stderr=open(os.path.join(tmp, "sidecar.log"), "w"))
    bench.wait_port(sp)
    resources = ["https://soak-%03d.example.com" % i for i in range(a.resources)]
    end = time.time() + a.minutes * 60
    counts = {"ok": 0, "failed": 0}
    failures = []
    lock = threading.Lock()

    def client(seed):
        rnd = random.Random(seed)
        conn = http.client.HTTPConnection("127.0.0.1", sp, timeout=10)
        while time.time() < end:
            r = rnd.choice(resources)
            if rnd.random() < 0.5:
                path, headers = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=" + r, {"Metadata": "true"}
            else:
                path, headers = "/msi/token?api-version=2019-08-01&resource=" + r, {"X-IDENTITY-HEADER": bench.HEADER}
            try:
                conn.request("GET", path, headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                ok = resp.status == 200
            except Exception as e:  # count and reconnect
                ok, body = False, repr(e).encode()
                conn = http.client.HTTPConnection("127.0.0.1", sp, timeout=10)
            with lock:
                counts["ok" if ok else "failed"] += 1
                if not ok and len(failures) < 5:
                    failures.append(body[:200])
            time.sleep(rnd.uniform(0, 0.02))

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(a.clients)]
    for t in threads:
        t.start()
    rss = []
    start = time.time()
    while time.time() < end:
        rss.append((int(time.time() - start), bench.rss_kib(side.pid)))
        time.sleep(min(10, max(0.1, end - time.time())))
    for t in threads:
        t.join()
    rss.append((int(time.time() - start), bench.rss_kib(side.pid)))
    stats = {}
    try:
        conn = http.client.HTTPConnection("127.0.0.1", ep, timeout=5)
        conn.request("GET", "/stats")
        import json
        stats = json.loads(conn.getresponse().read())
    finally:
        side.terminate()
        entra.terminate()
    elapsed = time.time() - start
    per_key = [n / (elapsed / a.lifetime) for n in stats.values()]
    print("\n## identity-sidecar soak (%s, %.0f min, %d resources x 2 flavors, token lifetime %ds, %d clients)\n"
          % (time.strftime("%Y-%m-%d"), elapsed / 60, a.resources, a.lifetime, a.clients))
    print("| measure | value |\n|---|---|")
    print("| requests | %d ok, %d failed |" % (counts["ok"], counts["failed"]))
    print("| Entra calls per key per token lifetime | min %.2f, mean %.2f, max %.2f (keys: %d) |"
          % (min(per_key or [0]), sum(per_key) / max(len(per_key), 1), max(per_key or [0]), len(per_key)))
    marks = [rss[0], rss[len(rss) // 4], rss[len(rss) // 2], rss[3 * len(rss) // 4], rss[-1]]
    print("| RSS over time (s: MiB) | %s |" % ", ".join("%d: %.1f" % (t, k / 1024) for t, k in marks))
    if failures:
        print("\nfirst failures: %r" % failures)
    return 0 if counts["failed"] == 0 else 1


sys.exit(main())
