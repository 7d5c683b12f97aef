#!/usr/bin/env python3
"""Benchmark: identity-sidecar against a minimal hyper server returning the same bytes, side by
side in one run, with the same load generator (wrk) on the same machine.

The sidecar measured is the binary the image ships: the static (musl) build of
scripts/build-static, found in target/static-out/ (or the image test's output) when it has been
built, or pointed at with --binary; --build-static builds it first. Without one it falls back to
the glibc build (`dist` profile) and says so. The minimal server is the glibc `dist` build of
examples/minimal_server.rs with the same worker count (serve's default: one).

Measures warm-cache requests/s and latency p50/p99/p99.9 at 1 and 64 keep-alive connections (IMDS
and App Service flavors, default logging), a new connection per request, with --access-log, and a
normal client while four others send the 15 KB many-parameter query, with --audit-log (64 keep-alive
connections, and a new connection per request, which pays the caller's /proc lookup each time); server CPU time per request,
RSS idle / peak / after a million requests, the stripped binary size, and the time from process
start to /readyz 200. Prints a Markdown table; checks the targets of issue 10 and exits 1 if one is
missed.

Each row is run as --repeat pairs (sidecar, then minimal; default 3) and the pair with the median
CPU ratio is printed with the range of the ratios beside it: on a shared 2-core machine one pair
can be off by 20 %.

usage: bench/run.py [--duration SECONDS] [--repeat N] [--smoke] [--binary PATH | --build-static]
  --smoke         1-second runs, one pair, no targets: what CI runs, to keep the script working.
  --binary PATH   the sidecar binary to measure (default: the static build, when built).
  --build-static  run scripts/build-static target/static-out first, and measure its output.
"""
import argparse
import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The minimal server (and the glibc fallback) in the profile the shipped binary uses (`dist`:
# fat LTO, one codegen unit), so the comparison is like for like.
REL = os.path.join(ROOT, "target", "dist")
CLIENT_ID = "11111111-1111-1111-1111-111111111111"
TENANT = "44444444-4444-4444-4444-444444444444"
HEADER = "bench-identity-header-0123456789"
RES = "https://management.azure.com"
IMDS_PATH = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=" + RES
AS_PATH = "/msi/token?api-version=2019-08-01&resource=" + RES
# The hostile query of tests/hostile.rs: about 15 KB, 1,600 distinct parameters.
HOSTILE_PATH = IMDS_PATH + "".join("&p%04d=vv" % i for i in range(1600))
STATIC_OUT = os.path.join(ROOT, "target", "static-out")
STATIC_CANDIDATES = [os.path.join(STATIC_OUT, "identity-sidecar"),
                     os.path.join(ROOT, "target", "image-test", "builder", "out", "identity-sidecar")]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def http_get(port, path, headers=None, timeout=2.0):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    h = "".join("%s: %s\r\n" % kv for kv in (headers or {}).items())
    s.sendall(("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n%s\r\n" % (path, h)).encode())
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1]) if head else 0
    return status, body


def wait_port(port, timeout=10):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.01)
    raise SystemExit("port %d did not open" % port)


def fed_token():
    b = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()
    return "%s.%s.sig" % (b({"alg": "RS256"}), b({"iss": "https://bench", "sub": "system:serviceaccount:b:b",
                                                   "aud": ["api://AzureADTokenExchange"], "exp": int(time.time()) + 86400}))


def proc_cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid, key="VmRSS"):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def parse_ms(s):
    m = re.match(r"([\d.]+)(us|ms|s)", s)
    return float(m.group(1)) * UNITS[m.group(2)] if m else float("nan")


def is_static(path):
    out = subprocess.run(["file", "-L", path], capture_output=True, text=True).stdout \
        if shutil.which("file") else ""
    return "statically linked" in out or "static-pie" in out


def wrk(port, path, conns, duration, headers, threads=None, close=False):
    threads = threads or min(conns, 2)
    args = ["wrk", "-t%d" % threads, "-c%d" % conns, "-d%ds" % duration, "--latency",
            "-s", os.path.join(ROOT, "bench", "percentiles.lua")]
    for k, v in headers.items():
        args += ["-H", "%s: %s" % (k, v)]
    if close:
        args += ["-H", "Connection: close"]
    args.append("http://127.0.0.1:%d%s" % (port, path))
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    errs = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: (.*)", out)
    lat = {p: parse_ms(re.search(r"\s%s%%\s+(\S+)" % p, out).group(1)) for p in ("50", "99")}
    p999 = int(re.search(r"P999_US (\d+)", out).group(1)) / 1000.0
    return {"rps": rps, "total": total, "p50": lat["50"], "p99": lat["99"], "p999": p999,
            "non2xx": int(errs.group(1)) if errs else 0, "sockerr": sock.group(1) if sock else ""}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--binary")
    ap.add_argument("--build-static", action="store_true")
    a = ap.parse_args()
    dur = 1 if a.smoke else a.duration
    repeat = 1 if a.smoke else max(1, a.repeat)
    if not shutil.which("wrk"):
        raise SystemExit("bench: wrk not found (apt-get install wrk)")
    if a.build_static:
        subprocess.run([os.path.join(ROOT, "scripts", "build-static"), STATIC_OUT], cwd=ROOT, check=True)
    build = ["--example", "minimal_server"]
    binary = a.binary or next((c for c in STATIC_CANDIDATES if os.path.exists(c)), None)
    if binary is None:
        print("bench: no static build (scripts/build-static target/static-out, or --build-static): "
              "measuring the glibc release build instead, which is not what the image ships", file=sys.stderr)
        binary = os.path.join(REL, "identity-sidecar")
        build = ["--bin", "identity-sidecar"] + build
    subprocess.run(["cargo", "build", "--profile", "dist", "--quiet"] + build, cwd=ROOT, check=True)
    kind = "static musl" if is_static(binary) else "glibc"
    minimal = os.path.join(REL, "examples", "minimal_server")
    tmp = tempfile.mkdtemp(prefix="idsc-bench-")
    tok = os.path.join(tmp, "token")
    with open(tok, "w") as f:
        f.write(fed_token() + "\n")
    procs = []
    try:
        ep = free_port()
        procs.append(subprocess.Popen([sys.executable, os.path.join(ROOT, "bench", "fake_entra.py"), str(ep), "86400"]))
        wait_port(ep)
        sp = free_port()
        env = dict(os.environ, AZURE_CLIENT_ID=CLIENT_ID, AZURE_TENANT_ID=TENANT, AZURE_FEDERATED_TOKEN_FILE=tok,
                   AZURE_AUTHORITY_HOST="http://127.0.0.1:%d/" % ep, IDENTITY_HEADER=HEADER,
                   IDENTITY_SIDECAR_LISTEN="127.0.0.1:%d" % sp, IDENTITY_SIDECAR_LOG_FORMAT="json")
        env.pop("RUST_LOG", None)
        env.pop("IDENTITY_SIDECAR_ACCESS_LOG", None)
        log = open(os.path.join(tmp, "sidecar.log"), "w")
        # Time to ready: from spawn to the first /readyz 200.
        t0 = time.monotonic()
        side = subprocess.Popen([binary, "serve"], env=env, stderr=log)
        procs.append(side)
        ready_ms = None
        while time.monotonic() - t0 < 10:
            try:
                if http_get(sp, "/readyz", timeout=0.5)[0] == 200:
                    ready_ms = (time.monotonic() - t0) * 1000
                    break
            except OSError:
                time.sleep(0.0005)
        time.sleep(0.5)  # settled: the watch and the log writer are up
        idle_rss = rss_kib(side.pid)
        idle_threads = len(os.listdir("/proc/%d/task" % side.pid))
        st, body = http_get(sp, IMDS_PATH, {"Metadata": "true"})
        assert st == 200, (st, body)
        size = len(body)
        st, _ = http_get(sp, HOSTILE_PATH, {"Metadata": "true"})
        assert st == 400, st
        # A second sidecar with the per-request access log on (--access-log), to show its cost.
        qp = free_port()
        loud = subprocess.Popen([binary, "serve", "--access-log"],
                                env=dict(env, IDENTITY_SIDECAR_LISTEN="127.0.0.1:%d" % qp),
                                stderr=subprocess.DEVNULL)
        procs.append(loud)
        wait_port(qp)
        assert http_get(qp, IMDS_PATH, {"Metadata": "true"})[0] == 200
        # A third with the audit line on (--audit-log): a JSON line and the caller's uid per request.
        ap_ = free_port()
        audited = subprocess.Popen([binary, "serve", "--audit-log"],
                                   env=dict(env, IDENTITY_SIDECAR_LISTEN="127.0.0.1:%d" % ap_),
                                   stderr=subprocess.DEVNULL)
        procs.append(audited)
        wait_port(ap_)
        assert http_get(ap_, IMDS_PATH, {"Metadata": "true"})[0] == 200
        pids = {sp: side.pid, qp: loud.pid, ap_: audited.pid}
        mp = free_port()
        mini = subprocess.Popen([minimal, "127.0.0.1:%d" % mp, str(size)], stderr=subprocess.DEVNULL)
        procs.append(mini)
        wait_port(mp)
        _, mbody = http_get(mp, "/")
        rows = []
        runs = [
            ("IMDS, 1 conn", sp, IMDS_PATH, 1, {"Metadata": "true"}, False),
            ("IMDS, 64 conns", sp, IMDS_PATH, 64, {"Metadata": "true"}, False),
            ("App Service, 1 conn", sp, AS_PATH, 1, {"X-IDENTITY-HEADER": HEADER}, False),
            ("App Service, 64 conns", sp, AS_PATH, 64, {"X-IDENTITY-HEADER": HEADER}, False),
            ("IMDS, new connection per request (8 clients)", sp, IMDS_PATH, 8, {"Metadata": "true"}, True),
            ("IMDS, 64 conns, --access-log", qp, IMDS_PATH, 64, {"Metadata": "true"}, False),
            ("IMDS, 64 conns, --audit-log", ap_, IMDS_PATH, 64, {"Metadata": "true"}, False),
            ("IMDS, new connection per request (8 clients), --audit-log", ap_, IMDS_PATH, 8,
             {"Metadata": "true"}, True),
        ]
        results = {}
        served_all = 0
        for name, port, path, conns, headers, close in runs:
            spid = pids[port]
            pairs = []
            for _ in range(repeat):
                pair = {}
                for who, pid, p, pth in (("sidecar", spid, port, path), ("minimal", mini.pid, mp, "/")):
                    c0 = proc_cpu_seconds(pid)
                    r = wrk(p, pth, conns, dur, headers, close=close)
                    r["cpu_us"] = (proc_cpu_seconds(pid) - c0) / max(r["total"], 1) * 1e6
                    pair[who] = r
                pair["cpu_ratio"] = pair["sidecar"]["cpu_us"] / max(pair["minimal"]["cpu_us"], 1e-9)
                pair["rps_ratio"] = pair["sidecar"]["rps"] / max(pair["minimal"]["rps"], 1e-9)
                if port == sp:
                    served_all += pair["sidecar"]["total"]
                pairs.append(pair)
            pairs.sort(key=lambda x: x["cpu_ratio"])
            med = pairs[len(pairs) // 2]
            results[(name, "sidecar")], results[(name, "minimal")] = med["sidecar"], med["minimal"]
            spread = "" if repeat == 1 else " (%d pairs: req/s ratio %.2f-%.2f, CPU ratio %.2f-%.2f)" % (
                repeat, min(x["rps_ratio"] for x in pairs), max(x["rps_ratio"] for x in pairs),
                pairs[0]["cpu_ratio"], pairs[-1]["cpu_ratio"])
            rows.append((name + spread, med["sidecar"], med["minimal"]))
        # A normal client (1 conn) while 4 connections send the many-parameter query: the
        # normal client's latency and the flood's rate, beside the same client alone (row 1).
        flood = subprocess.Popen(
            ["wrk", "-t2", "-c4", "-d%ds" % dur, "http://127.0.0.1:%d%s" % (sp, HOSTILE_PATH), "-H", "Metadata: true"],
            stdout=subprocess.PIPE, text=True)
        c0 = proc_cpu_seconds(side.pid)
        during = wrk(sp, IMDS_PATH, 1, dur, {"Metadata": "true"}, threads=1)
        flood_out = flood.communicate()[0]
        flood_cpu = proc_cpu_seconds(side.pid) - c0
        flood_total = int(re.search(r"(\d+) requests in", flood_out).group(1))
        flood_rps = float(re.search(r"Requests/sec:\s+([\d.]+)", flood_out).group(1))
        # Up to a million requests in all, then RSS.
        served = served_all + during["total"] + flood_total
        extra = 0
        while not a.smoke and served + extra < 1_000_000:
            extra += wrk(sp, IMDS_PATH, 64, 5, {"Metadata": "true"})["total"]
        after_rss = rss_kib(side.pid)
        peak_rss = rss_kib(side.pid, "VmHWM")
        binsize = os.path.getsize(binary)
        print("\n## identity-sidecar benchmark (%s, %d cores, wrk, %ds runs, body %d B vs %d B)\n"
              % (time.strftime("%Y-%m-%d"), os.cpu_count(), dur, size, len(mbody)))
        print("sidecar: %s (%s build), default logging unless noted; minimal: %s (glibc release); "
              "one worker thread each\n" % (os.path.relpath(binary, ROOT), kind, os.path.relpath(minimal, ROOT)))
        print("| run | sidecar req/s | minimal req/s | ratio | sidecar p50 / p99 / p99.9 ms | minimal p50 / p99 / p99.9 ms | p99 ratio | CPU µs/req sidecar / minimal | CPU ratio |")
        print("|---|---|---|---|---|---|---|---|---|")
        failures = []
        for name, s, m in rows:
            ratio = s["rps"] / m["rps"] if m["rps"] else 0
            p99r = s["p99"] / m["p99"] if m["p99"] else 0
            cpur = s["cpu_us"] / m["cpu_us"] if m["cpu_us"] else 0
            print("| %s | %.0f | %.0f | %.2f | %.2f / %.2f / %.2f | %.2f / %.2f / %.2f | %.2f | %.1f / %.1f | %.2f |"
                  % (name, s["rps"], m["rps"], ratio, s["p50"], s["p99"], s["p999"], m["p50"], m["p99"], m["p999"], p99r,
                     s["cpu_us"], m["cpu_us"], cpur))
            if s["non2xx"] or s["sockerr"]:
                failures.append("%s: %d non-2xx, socket errors %s" % (name, s["non2xx"], s["sockerr"] or "none"))
            if name.split(" (")[0].endswith("64 conns"):  # default logging; the logged rows are informative
                if ratio < 0.85:
                    failures.append("%s: throughput ratio %.2f < 0.85" % (name, ratio))
                if p99r > 1.5:
                    failures.append("%s: p99 ratio %.2f > 1.5" % (name, p99r))
                if cpur > 1.3:
                    failures.append("%s: CPU ratio %.2f > 1.3" % (name, cpur))
        alone = results[("IMDS, 1 conn", "sidecar")]
        print("\n| normal client (IMDS, 1 conn) | req/s | p50 / p99 / p99.9 ms |\n|---|---|---|")
        print("| alone | %.0f | %.2f / %.2f / %.2f |" % (alone["rps"], alone["p50"], alone["p99"], alone["p999"]))
        print("| while 4 conns send the 15 KB, 1,600-parameter query (%.0f/s refused with 400, %.1f µs CPU each incl. the normal client's share) | %.0f | %.2f / %.2f / %.2f |"
              % (flood_rps, flood_cpu / max(flood_total + during["total"], 1) * 1e6, during["rps"], during["p50"], during["p99"], during["p999"]))
        mib = 1048576
        print("\n| measure | value | target |\n|---|---|---|")
        print("| time from start to /readyz 200 | %.1f ms | ≤ 10 ms |" % (ready_ms or -1))
        print("| RSS idle (%d threads) | %.1f MiB | ≤ 4 MiB |" % (idle_threads, idle_rss / 1024))
        print("| RSS after %d requests | %.1f MiB (peak %.1f MiB) | ≤ 8 MiB |" % (served + extra, after_rss / 1024, peak_rss / 1024))
        print("| binary (stripped, %s) | %.2f MiB | ≤ 6 MiB |" % (kind, binsize / mib))
        if ready_ms is None or ready_ms > 10:
            failures.append("ready in %s ms" % ready_ms)
        if idle_rss / 1024 > 4:
            failures.append("idle RSS %.1f MiB" % (idle_rss / 1024))
        if after_rss / 1024 > 8:
            failures.append("RSS %.1f MiB" % (after_rss / 1024))
        if binsize > 6 * mib:
            failures.append("binary %.2f MiB" % (binsize / mib))
        if during["non2xx"] or during["p99"] > 10 * max(alone["p99"], 0.1):
            failures.append("normal client during the flood: p99 %.2f ms, %d non-2xx" % (during["p99"], during["non2xx"]))
        if a.smoke:
            print("\n(smoke mode: targets not checked)")
            return 0
        if failures:
            print("\nMISSED: " + "; ".join(failures))
            return 1
        print("\nall targets met")
        return 0
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
