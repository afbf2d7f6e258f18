#!/usr/bin/env python3
"""The race: tenant-edge against nginx, HAProxy and a bare pingora passthrough, side by side.

`make bench` (about 13 minutes: hot, tls, h2, cold, churn) or `make bench-quick` (about 1.5 minutes: hot). Every proxy runs with
one worker in front of the same nginx backend, with the same tenant map (10 000 hosts); the
proxies take turns within one run, so a noisy neighbour hits them all alike. For each proxy:

- saturation throughput: wrk, 1 thread, 32 keep-alive connections, a random tenant host per
  request (median over the rounds);
- CPU per request: the proxy's user + system time from /proc over the wrk run, divided by the
  requests served;
- peak RSS (VmHWM) of the proxy's processes;
- latency at fixed rates: oha with latency correction (coordinated omission accounted for),
  p50 / p99 / p99.9, also going direct to the backend, so the latency each proxy adds is seen.

Scenarios (`--scenarios`, default all): hot (HTTP/1.1, the headline, with the latency runs),
tls (HTTPS keep-alive, wrk), h2 (HTTP/2 over TLS, oha), cold (tenant-edge alone: 1 000 000
tenants, a bounded cache, misses to TCS) and churn (tenant-edge alone: the hot load with 100
catalogue writes/s, write-to-edge delay). Writes bench/results/<date>.json
and .png (latency against offered rate), and prints a markdown table per scenario with ratios
against nginx. It installs what it lacks (wrk, nginx, haproxy and
matplotlib from apt, oha with cargo) and builds tenant-edge and the passthrough in release.
Standard library only, apart from matplotlib for the plot.
"""

import argparse
import datetime
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")
STARTED = time.monotonic()


def log(message):
    print(f"[race {time.monotonic() - STARTED:6.1f}s] {message}", flush=True)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


# ---------------------------------------------------------------------------------------------
# Tools


def cargo_bin(name):
    found = shutil.which(name)
    if found:
        return found
    home = Path(os.environ.get("CARGO_HOME", Path.home() / ".cargo")) / "bin" / name
    return str(home) if home.exists() else None


def ensure_tools():
    missing = [p for p, exe in (("wrk", "wrk"), ("nginx", "nginx"), ("haproxy", "haproxy")) if not shutil.which(exe)]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log("installing matplotlib with pip (for the plot)")
        pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "matplotlib"], check=False)
        if pip.returncode != 0:
            log("pip could not install matplotlib: the run goes on without a plot")
    if missing:
        log(f"installing {', '.join(missing)} with apt-get")
        if os.geteuid() != 0:
            sys.exit(f"race: need {', '.join(missing)}; run as root or install them first")
        run(["apt-get", "update", "-qq"])
        run(["apt-get", "install", "-y", "-qq", *missing], stdout=subprocess.DEVNULL)
    if not cargo_bin("oha"):
        log("installing oha with cargo (a few minutes, once)")
        run(["cargo", "install", "oha", "--locked", "--quiet"])
    return cargo_bin("oha")


def build():
    log("building tenant-edge and the passthrough (release)")
    run(["cargo", "build", "--release", "--quiet", "--bin", "tenant-edge", "--example", "passthrough"], cwd=ROOT)
    return ROOT / "target" / "release" / "tenant-edge", ROOT / "target" / "release" / "examples" / "passthrough"


# ---------------------------------------------------------------------------------------------
# Processes


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Procs:
    """Every process the race started; all are stopped on exit, whatever happens."""

    def __init__(self, logs):
        self.logs = logs
        self.running = []

    def start(self, name, cmd):
        out = open(self.logs / f"{name}.log", "wb")
        p = subprocess.Popen([str(c) for c in cmd], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.running.append((name, p))
        return p

    def stop(self):
        for _, p in reversed(self.running):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for _, p in self.running:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


def wait_http(url, host=None, timeout=60, want=200, proc=None):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            sys.exit(f"race: {proc.args[0]} exited with {proc.returncode} before {url} answered (see its log)")
        try:
            req = urllib.request.Request(url, headers={"Host": host} if host else {})
            with urllib.request.urlopen(req, timeout=2) as r:
                if r.status == want:
                    return r.read()
                last = r.status
        except Exception as e:  # noqa: BLE001 (anything: it is not up yet)
            last = e
        time.sleep(0.1)
    sys.exit(f"race: {url} not ready within {timeout}s: {last}")


def tree(pid):
    """`pid` and its children (nginx's workers)."""
    pids = [pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                pids.append(int(entry.name))
    return pids


def cpu_seconds(pid):
    total = 0
    for p in tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def peak_rss_mib(pid):
    total = 0
    for p in tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


# ---------------------------------------------------------------------------------------------
# The contestants


def tenant_docs(n):
    for i in range(n):
        yield {
            "id": f"t{i}",
            "hosts": [f"t{i}.bench.test"],
            "realm": "us",
            "placements": {"jira": {"shard": "bench-jira"}},
        }


def start_backend(procs, work):
    port = free_port()
    (work / "backend").mkdir()
    conf = work / "backend" / "nginx.conf"
    conf.write_text(
        f"""worker_processes 1;
daemon off;
pid {work}/backend/nginx.pid;
error_log stderr warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    client_body_temp_path {work}/backend/body;
    proxy_temp_path {work}/backend/proxy;
    fastcgi_temp_path {work}/backend/fastcgi;
    uwsgi_temp_path {work}/backend/uwsgi;
    scgi_temp_path {work}/backend/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""
    )
    p = procs.start("backend", ["nginx", "-p", work / "backend", "-c", conf, "-e", "stderr"])
    wait_http(f"http://127.0.0.1:{port}/", proc=p)
    return port


CERT, KEY = ROOT / "certs" / "dev.crt", ROOT / "certs" / "dev.key"


def start_tenant_edge(procs, work, exe, backend, tenants, name="tenant-edge", max_entries=None):
    """A whole tenant-edge stack through `tenant-edge stack` (each role a child process on free
    loopback ports): the catalogue with `tenants` tenants (bulk import, before TCS starts), one
    TCS region, the edge. Without `max_entries` the edge prewarms every tenant; with it the
    cache is bounded and starts cold, so misses go to TCS."""
    d = work / name
    d.mkdir()
    docs = d / "tenants.jsonl"
    with docs.open("w") as f:
        for doc in tenant_docs(tenants):
            f.write(json.dumps(doc) + "\n")
    (d / "routes.toml").write_text(
        f"""version = "bench"

[[products]]
name = "jira"
prefixes = ["/"]

[[products]]
name = "confluence"
prefixes = ["/wiki"]

[[shards]]
id = "bench-jira"
product = "jira"
region = "us-east-1"
backends = ["127.0.0.1:{backend}"]
"""
    )
    cache = f"[cache]\nmax_entries = {max_entries}\n" if max_entries else ""
    (d / "edge-overrides.toml").write_text(
        f"""threads = 1
access_log = false
prewarm = {"false" if max_entries else "true"}
{cache}
[lookup]
canaries = ["t1.bench.test"]
"""
    )
    log(f"{name}: starting the stack and importing {tenants:,} tenants into its catalogue")
    log_file = procs.logs / f"{name}.log"
    p = procs.start(name, [
        exe, "stack", "--dir", d / "stack", "--routes", d / "routes.toml", "--regions", "us-east-1",
        "--no-shards", "--no-demo-tenants", "--import", docs, "--certs", ROOT / "certs",
        "--edge-overrides", d / "edge-overrides.toml",
    ])
    started = wait_started(p, log_file, timeout=900)
    edge, tcs = started["edges"][0], started["tcs"][0]
    port = lambda addr: int(addr.rsplit(":", 1)[1])  # noqa: E731
    http, admin = port(edge["http"]), port(edge["admin"])
    wait_http(f"http://127.0.0.1:{http}/", host="t1.bench.test")
    cached = json.loads(wait_http(f"http://127.0.0.1:{admin}/readyz"))["cached_tenants"]
    log(f"{name} ready, {cached} tenants cached")
    token = Path(started["operator_token_file"]).read_text().strip()
    return {
        "http": http, "https": port(edge["https"]), "admin": admin,
        "catalogue": started["catalogue"]["url"], "catalogue_token": token,
        "proc": Pid(edge["pid"]), "tcs_proc": Pid(tcs["pid"]),
    }


class Pid:
    """A process of a stack, measured through /proc like the processes the race started."""

    def __init__(self, pid):
        self.pid = pid


def wait_started(proc, log_file, timeout):
    """The JSON line `tenant-edge stack` prints once every part is ready."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"race: tenant-edge stack exited with {proc.returncode} (see {log_file})")
        for line in log_file.read_text(errors="replace").splitlines():
            if line.startswith("{") and '"edges"' in line:
                return json.loads(line)
        time.sleep(0.2)
    sys.exit(f"race: the stack was not ready within {timeout}s (see {log_file})")


def start_passthrough(procs, exe, backend):
    port, tls = free_port(), free_port()
    # The edge's runtime settings: one thread, no work stealing; TLS with HTTP/2 as the edge's.
    p = procs.start(
        "passthrough",
        [exe, f"127.0.0.1:{port}", f"127.0.0.1:{backend}", "1", "nosteal", f"127.0.0.1:{tls}", CERT, KEY],
    )
    wait_http(f"http://127.0.0.1:{port}/", proc=p)
    return {"http": port, "https": tls, "proc": p}


def start_nginx(procs, work, backend, tenants):
    d = work / "nginx"
    d.mkdir()
    port, tls = free_port(), free_port()
    with (d / "tenants.map").open("w") as f:
        for i in range(tenants):
            f.write(f"t{i}.bench.test t{i};\n")
    (d / "nginx.conf").write_text(
        f"""worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    map_hash_max_size 65536;
    map_hash_bucket_size 128;
    map $host $tenant {{
        hostnames;
        default "";
        include {d}/tenants.map;
    }}
    upstream bench_jira {{
        server 127.0.0.1:{backend};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        listen 127.0.0.1:{tls} ssl http2;
        ssl_certificate {CERT};
        ssl_certificate_key {KEY};
        location / {{
            if ($tenant = "") {{ return 404; }}
            proxy_pass http://bench_jira;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header x-tenant-id $tenant;
            proxy_set_header x-forwarded-host $host;
        }}
    }}
}}
"""
    )
    p = procs.start("nginx", ["nginx", "-p", d, "-c", d / "nginx.conf", "-e", "stderr"])
    wait_http(f"http://127.0.0.1:{port}/", host="t1.bench.test", proc=p)
    return {"http": port, "https": tls, "proc": p}


def start_haproxy(procs, work, backend, tenants):
    d = work / "haproxy"
    d.mkdir()
    port, tls = free_port(), free_port()
    (d / "cert.pem").write_bytes(CERT.read_bytes() + KEY.read_bytes())
    with (d / "tenants.map").open("w") as f:
        for i in range(tenants):
            f.write(f"t{i}.bench.test t{i}\n")
    (d / "haproxy.cfg").write_text(
        f"""global
    nbthread 1
    maxconn 4096

defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    http-reuse always

frontend edge
    bind 127.0.0.1:{port}
    bind 127.0.0.1:{tls} ssl crt {d}/cert.pem alpn h2,http/1.1
    http-request set-var(txn.tenant) req.hdr(host),lower,map({d}/tenants.map)
    http-request return status 404 if !{{ var(txn.tenant) -m found }}
    http-request set-header x-tenant-id %[var(txn.tenant)]
    http-request set-header x-forwarded-host %[req.hdr(host)]
    default_backend bench_jira

backend bench_jira
    server b1 127.0.0.1:{backend}
"""
    )
    p = procs.start("haproxy", ["haproxy", "-db", "-f", d / "haproxy.cfg"])
    wait_http(f"http://127.0.0.1:{port}/", host="t1.bench.test", proc=p)
    return {"http": port, "https": tls, "proc": p}


# ---------------------------------------------------------------------------------------------
# Load


def wrk_script(work, tenants, name="hosts"):
    """A wrk script sending each request to a random one of `tenants` hosts (`t{i}.bench.test`).
    The host is formatted per request rather than drawn from a table: a table of a million
    strings made wrk's own garbage collector stall every connection for ~100 ms at a time
    (p99 ~100 ms instead of ~10 ms, and ~10% of the cold run's throughput lost to the load
    generator)."""
    script = work / f"{name}.lua"
    script.write_text(
        f"""-- A new sequence every run: a cold run must not replay the hosts its warm-up cached.
math.randomseed(os.time())
local tenants = {tenants}
request = function()
  return wrk.format("GET", "/", {{ ["Host"] = string.format("t%d.bench.test", math.random(tenants) - 1) }})
end
"""
    )
    return script


def saturate(url, pid, script, seconds):
    before = cpu_seconds(pid)
    out = subprocess.run(
        ["wrk", "-t1", "-c32", f"-d{seconds}s", "-s", script, url],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    cpu = cpu_seconds(pid) - before
    requests = errors = 0
    for line in out.splitlines():
        parts = line.split()
        if "requests in" in line:
            requests = int(parts[0])
        if line.strip().startswith("Non-2xx or 3xx responses:"):
            errors += int(parts[-1])
        if line.strip().startswith("Socket errors:"):
            errors += sum(int(x.rstrip(",")) for x in parts if x.rstrip(",").isdigit())
    return {
        "rps": requests / seconds,
        "requests": requests,
        "errors": errors,
        "cpu_us_per_req": cpu * 1e6 / max(requests, 1),
    }


def saturate_h2(oha, port, pid, seconds):
    """HTTP/2 over TLS, 32 connections with up to 8 streams each, one host: oha as fast as it can.
    The tenant host goes in the URL (oha would send a `Host` header that disagrees with
    `:authority`), connected to the proxy's port."""
    before = cpu_seconds(pid)
    out = subprocess.run(
        [
            oha, "-z", f"{seconds}s", "-c", "32", "-p", "8", "--http2", "--insecure", "--no-tui",
            "--output-format", "json", "--connect-to", f"t1.bench.test:443:127.0.0.1:{port}",
            "https://t1.bench.test/",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    cpu = cpu_seconds(pid) - before
    data = json.loads(out)
    dist = data.get("statusCodeDistribution", {})
    requests = sum(dist.values())
    ok = sum(n for code, n in dist.items() if code.startswith("2"))
    return {
        "rps": requests / seconds,
        "requests": requests,
        "errors": requests - ok,
        "cpu_us_per_req": cpu * 1e6 / max(requests, 1),
    }


def edge_metrics(admin):
    """The edge's cache counters and fill-latency histogram (cumulative buckets)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5).read().decode()
    out = {"buckets": {}}
    for line in text.splitlines():
        line = line.removeprefix("tenant_edge_")
        if line.startswith("tenant_cache_hits_total "):
            out["hits"] = float(line.split()[-1])
        elif line.startswith("tenant_cache_misses_total "):
            out["misses"] = float(line.split()[-1])
        elif line.startswith("tenant_cache_fill_seconds_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out["buckets"][le] = float(line.split()[-1])
    return out


def quantile_bound(before, after, q):
    """The upper bound of the histogram bucket holding quantile `q` of what happened between."""
    deltas = [(float("inf") if le == "+Inf" else float(le), after[le] - before.get(le, 0)) for le in after]
    deltas.sort()
    total = deltas[-1][1] if deltas else 0
    for le, n in deltas:
        if total and n >= q * total:
            return le
    return None


def cold(edge, script, seconds):
    """Random hosts over every tenant into a bounded cache: throughput, miss share, fill latency."""
    url = f"http://127.0.0.1:{edge['http']}/"
    saturate(url, edge["proc"].pid, script, max(seconds // 3, 3))  # fill the cache to its bound
    before = edge_metrics(edge["admin"])
    tcs_before = cpu_seconds(edge["tcs_proc"].pid)
    s = saturate(url, edge["proc"].pid, script, seconds)
    # TCS answers the misses on the same cores: its CPU is part of what a cold request costs.
    s["tcs_cpu_us_per_req"] = (cpu_seconds(edge["tcs_proc"].pid) - tcs_before) * 1e6 / max(s["requests"], 1)
    after = edge_metrics(edge["admin"])
    misses = after["misses"] - before["misses"]
    hits = after["hits"] - before["hits"]
    s["miss_share"] = misses / max(hits + misses, 1)
    s["fill_p50_le_s"] = quantile_bound(before["buckets"], after["buckets"], 0.5)
    s["fill_p99_le_s"] = quantile_bound(before["buckets"], after["buckets"], 0.99)
    return s


def churn(edge, script, tenants, seconds, rate=100):
    """The hot wrk load on the edge while a writer replaces random tenants in the catalogue at
    `rate` per second; each write is timed from sending it until the edge's admin API shows the
    version the catalogue returned (watched by a second thread, so writes keep their pace)."""
    import http.client
    import threading

    pending, delays, failures = [], [], []
    lock = threading.Lock()
    stop = threading.Event()

    def call(conn, method, path, body=None, token=None):
        headers = {"content-type": "application/json"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
        r = conn.getresponse()
        return r.status, json.loads(r.read() or b"null")

    def writer():
        cat = http.client.HTTPConnection(edge["catalogue"].removeprefix("http://"), timeout=5)
        rng = random.Random(7)
        next_at = time.monotonic()
        while not stop.is_set():
            i = rng.randrange(tenants)
            # The same document again: the catalogue bumps the version, and the change travels.
            doc = {"id": f"t{i}", "hosts": [f"t{i}.bench.test"], "realm": "us",
                   "placements": {"jira": {"shard": "bench-jira"}}}
            started = time.monotonic()
            status, stored = call(cat, "PUT", f"/v1/tenants/t{i}", doc, edge["catalogue_token"])
            if status in (200, 201):
                with lock:
                    pending.append((f"t{i}.bench.test", stored["version"], started))
            else:
                failures.append(status)
            next_at += 1 / rate
            time.sleep(max(0.0, next_at - time.monotonic()))

    def watcher():
        adm = http.client.HTTPConnection(f"127.0.0.1:{edge['admin']}", timeout=5)
        while not stop.is_set() or pending:
            with lock:
                todo = list(pending)
            if not todo:
                time.sleep(0.001)
                continue
            for host, version, started in todo:
                status, seen = call(adm, "GET", f"/admin/tenants/{host}")
                now = time.monotonic()
                if (status == 200 and seen.get("version", 0) >= version) or now - started > 10:
                    with lock:
                        pending.remove((host, version, started))
                    if now - started > 10:
                        failures.append("late")
                    else:
                        delays.append((now - started) * 1000)

    threads = [threading.Thread(target=writer), threading.Thread(target=watcher)]
    for t in threads:
        t.start()
    try:
        s = saturate(f"http://127.0.0.1:{edge['http']}/", edge["proc"].pid, script, seconds)
    finally:
        stop.set()
        for t in threads:
            t.join()
    delays.sort()
    pick = lambda q: delays[min(len(delays) - 1, int(q * len(delays)))] if delays else None  # noqa: E731
    s.update(writes=len(delays), write_failures=len(failures), delay_p50_ms=pick(0.5), delay_p99_ms=pick(0.99),
             delay_max_ms=delays[-1] if delays else None)
    return s


def fixed_rate(oha, port, rate, seconds):
    out = subprocess.run(
        [
            oha, "-z", f"{seconds}s", "-q", str(rate), "-c", "32", "--latency-correction", "--no-tui",
            "--output-format", "json", "-H", "Host: t1.bench.test", f"http://127.0.0.1:{port}/",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    data = json.loads(out)
    pct = data["latencyPercentiles"]
    ok = sum(n for code, n in data.get("statusCodeDistribution", {}).items() if code.startswith("2"))
    return {
        "rate": rate,
        "achieved": data["summary"]["requestsPerSec"],
        "ok": ok,
        "p50_us": pct["p50"] * 1e6,
        "p99_us": pct["p99"] * 1e6,
        "p999_us": pct["p99.9"] * 1e6,
    }


# ---------------------------------------------------------------------------------------------
# Report


def table(results, scenario="hot"):
    sat = results["scenarios"][scenario]["saturation"]
    base = sat.get("nginx")
    lines = [
        "| proxy | req/s | vs nginx | CPU µs/req | vs nginx | peak RSS MiB | p50 / p99 / p99.9 µs at 5 000 req/s | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in results["proxies"]:
        s = sat[name]
        at5k = next((r for r in results["latency"].get(name, []) if r["rate"] == 5000), None)
        at5k = at5k if scenario == "hot" else None
        lat = f"{at5k['p50_us']:.0f} / {at5k['p99_us']:.0f} / {at5k['p999_us']:.0f}" if at5k else "-"
        rps_ratio = f"{s['rps'] / base['rps']:.2f}x" if base else "-"
        cpu_ratio = f"{s['cpu_us_per_req'] / base['cpu_us_per_req']:.2f}x" if base else "-"
        lines.append(
            f"| {name} | {s['rps']:,.0f} | {rps_ratio} | {s['cpu_us_per_req']:.1f} | {cpu_ratio} | "
            f"{results['rss_mib'][name]:.0f} | {lat} | {s['errors']} |"
        )
    direct = next((r for r in results["latency"].get("direct", []) if r["rate"] == 5000), None)
    if direct and scenario == "hot":
        lines.append(
            f"| direct to the backend | | | | | | {direct['p50_us']:.0f} / {direct['p99_us']:.0f} / "
            f"{direct['p999_us']:.0f} | |"
        )
    return "\n".join(lines)


def plot(results, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib missing: no plot")
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for name, runs in results["latency"].items():
        rates = [r["rate"] for r in runs]
        for ax, key in zip(axes, ("p50_us", "p99_us")):
            ax.plot(rates, [r[key] for r in runs], marker="o", label=name)
    for ax, title in zip(axes, ("p50", "p99")):
        ax.set_title(f"{title} latency against offered rate")
        ax.set_xlabel("offered rate (req/s)")
        ax.set_ylabel("µs")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"hot scenario, {results['tenants']} tenants, one worker each ({results['date']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    log(f"wrote {path}")


SCENARIOS = {
    "hot": "HTTP/1.1 keep-alive, a random cached tenant per request (wrk)",
    "tls": "HTTPS (TLS 1.3) keep-alive, a random cached tenant per request (wrk)",
    "h2": "HTTP/2 over TLS, 32 connections x 8 streams, one tenant (oha)",
    "cold": "tenant-edge alone: a big catalogue, random hosts over all of it, a bounded cache (misses go to TCS)",
    "churn": "tenant-edge alone: the hot load while the catalogue takes 100 writes/s (write-to-edge delay)",
}


def run_scenario(scenario, contestants, script, oha, rounds, seconds):
    """Saturation of every contestant in shuffled rounds; the medians."""
    log(f"scenario {scenario}: {SCENARIOS[scenario]}")
    runs = {name: [] for name in contestants}
    for r in range(rounds):
        order = list(contestants)
        random.Random(r).shuffle(order)
        for name in order:
            c = contestants[name]
            pid = c["proc"].pid
            if scenario == "hot":
                s = saturate(f"http://127.0.0.1:{c['http']}/", pid, script, seconds)
            elif scenario == "tls":
                s = saturate(f"https://127.0.0.1:{c['https']}/", pid, script, seconds)
            else:
                s = saturate_h2(oha, c["https"], pid, seconds)
            runs[name].append(s)
            log(
                f"{scenario} round {r + 1}/{rounds} {name:<12} {s['rps']:>9,.0f} req/s  "
                f"{s['cpu_us_per_req']:5.1f} µs CPU/req  {s['errors']} errors"
            )
    return {
        name: {
            "rps": statistics.median(x["rps"] for x in rs),
            "cpu_us_per_req": statistics.median(x["cpu_us_per_req"] for x in rs),
            "errors": sum(x["errors"] for x in rs),
            "runs": rs,
        }
        for name, rs in runs.items()
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="about a minute and a half: hot only, one round, short runs")
    ap.add_argument(
        "--scenarios",
        default=None,
        help=f"comma-separated, of {', '.join(SCENARIOS)} (default: all; hot with --quick)",
    )
    ap.add_argument("--tenants", type=int, default=10_000)
    ap.add_argument("--cold-tenants", type=int, default=1_000_000, help="tenants in the cold scenario's catalogue")
    ap.add_argument("--cold-cache", type=int, default=100_000, help="the cold edge's max_entries")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs)")
    args = ap.parse_args()
    scenarios = (args.scenarios or ("hot" if args.quick else ",".join(SCENARIOS))).split(",")
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        sys.exit(f"race: unknown scenario {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    rounds, wrk_s, oha_s, rates = (1, 5, 4, [1000, 5000]) if args.quick else (3, 15, 10, [1000, 5000, 10000])

    oha = ensure_tools()
    edge_exe, passthrough_exe = build()
    work = Path(tempfile.mkdtemp(prefix="race-"))
    logs = work / "logs"
    logs.mkdir()
    procs = Procs(logs)
    results_by_scenario = {}
    latency = {}
    try:
        backend = start_backend(procs, work)
        contestants = {}
        contestants["tenant-edge"] = start_tenant_edge(procs, work, edge_exe, backend, args.tenants)
        contestants["passthrough"] = start_passthrough(procs, passthrough_exe, backend)
        contestants["nginx"] = start_nginx(procs, work, backend, args.tenants)
        contestants["haproxy"] = start_haproxy(procs, work, backend, args.tenants)
        script = wrk_script(work, args.tenants)
        log("warming every proxy up (2 s of wrk each)")
        for c in contestants.values():
            saturate(f"http://127.0.0.1:{c['http']}/", c["proc"].pid, script, 2)

        for scenario in [s for s in scenarios if s not in ("cold", "churn")]:
            # TLS and HTTP/2 runs are shorter: they add a comparison, not the headline.
            seconds = wrk_s if scenario == "hot" else max(wrk_s // 2, 4)
            results_by_scenario[scenario] = {
                "what": SCENARIOS[scenario],
                "saturation": run_scenario(scenario, contestants, script, oha, rounds, seconds),
            }
        if "hot" in scenarios:
            targets = {**{n: c["http"] for n, c in contestants.items()}, "direct": backend}
            for rate in rates:
                for name, port in targets.items():
                    res = fixed_rate(oha, port, rate, oha_s)
                    latency.setdefault(name, []).append(res)
                    log(
                        f"{rate:>6} req/s {name:<12} p50 {res['p50_us']:7.0f} µs  p99 {res['p99_us']:7.0f} µs  "
                        f"p99.9 {res['p999_us']:7.0f} µs"
                    )
        if "churn" in scenarios:
            s = churn(contestants["tenant-edge"], script, args.tenants, wrk_s)
            hot = results_by_scenario.get("hot", {}).get("saturation", {}).get("tenant-edge")
            s["vs_hot"] = s["rps"] / hot["rps"] if hot else None
            results_by_scenario["churn"] = {"what": SCENARIOS["churn"], "tenant-edge": s}
            log(
                f"churn {s['rps']:,.0f} req/s, {s['cpu_us_per_req']:.1f} µs CPU/req; {s['writes']} writes, "
                f"write -> edge p50 {s['delay_p50_ms']} ms, p99 {s['delay_p99_ms']} ms, "
                f"{s['write_failures']} failed or late, {s['errors']} request errors"
            )
        rss = {name: peak_rss_mib(c["proc"].pid) for name, c in contestants.items()}
        if "cold" in scenarios:
            edge = start_tenant_edge(
                procs, work, edge_exe, backend, args.cold_tenants, name="cold-edge", max_entries=args.cold_cache
            )
            script = wrk_script(work, args.cold_tenants, "cold-hosts")
            s = cold(edge, script, wrk_s)
            hot = results_by_scenario.get("hot", {}).get("saturation", {}).get("tenant-edge")
            s["vs_hot"] = s["rps"] / hot["rps"] if hot else None
            s["peak_rss_mib"] = peak_rss_mib(edge["proc"].pid)
            results_by_scenario["cold"] = {
                "what": SCENARIOS["cold"],
                "tenants": args.cold_tenants,
                "max_entries": args.cold_cache,
                "tenant-edge": s,
            }
            share = f"{s['vs_hot']:.0%} of hot" if s["vs_hot"] else "no hot run to compare"
            log(
                f"cold {s['rps']:,.0f} req/s ({share}), "
                f"{s['cpu_us_per_req']:.1f} µs CPU/req (TCS {s['tcs_cpu_us_per_req']:.1f}), "
                f"{s['miss_share']:.0%} misses, fill p50 <= {s['fill_p50_le_s']} s, p99 <= {s['fill_p99_le_s']} s, "
                f"{s['errors']} errors"
            )
    finally:
        procs.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"kept {work}")

    date = datetime.date.today().isoformat()
    results = {
        "date": date,
        "quick": args.quick,
        "tenants": args.tenants,
        "machine": {"cpus": os.cpu_count(), "kernel": os.uname().release},
        "settings": {"rounds": rounds, "wrk_seconds": wrk_s, "oha_seconds": oha_s, "connections": 32},
        "proxies": list(contestants),
        "scenarios": results_by_scenario,
        "latency": latency,
        "rss_mib": rss,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / (date + ("-quick" if args.quick else ""))
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    log(f"wrote {stem.with_suffix('.json')}")
    if latency:
        plot(results, stem.with_suffix(".png"))
    for scenario in scenarios:
        print(f"\n{scenario}: {SCENARIOS[scenario]}\n")
        if scenario == "churn":
            s = results_by_scenario["churn"]["tenant-edge"]
            print("| req/s | vs hot | CPU µs/req | writes | write -> edge p50 | p99 | max | failed or late | errors |")
            print("|---|---|---|---|---|---|---|---|---|")
            vs_hot = f"{s['vs_hot']:.0%}" if s["vs_hot"] else "-"
            ms = lambda v: f"{v:.1f} ms" if v is not None else "-"  # noqa: E731
            print(
                f"| {s['rps']:,.0f} | {vs_hot} | {s['cpu_us_per_req']:.1f} | {s['writes']} | {ms(s['delay_p50_ms'])} | "
                f"{ms(s['delay_p99_ms'])} | {ms(s['delay_max_ms'])} | {s['write_failures']} | {s['errors']} |"
            )
        elif scenario == "cold":
            c = results_by_scenario["cold"]
            s = c["tenant-edge"]
            print("| tenants | cache | req/s | vs hot | CPU µs/req | TCS CPU µs/req | misses | fill p50 | fill p99 | errors |")
            print("|---|---|---|---|---|---|---|---|---|---|")
            vs_hot = f"{s['vs_hot']:.0%}" if s["vs_hot"] else "-"
            print(
                f"| {c['tenants']:,} | {c['max_entries']:,} | {s['rps']:,.0f} | {vs_hot} | {s['cpu_us_per_req']:.1f} | "
                f"{s['tcs_cpu_us_per_req']:.1f} | "
                f"{s['miss_share']:.0%} | <= {s['fill_p50_le_s'] * 1e6:.0f} µs | <= {s['fill_p99_le_s'] * 1e6:.0f} µs | "
                f"{s['errors']} |"
            )
        else:
            print(table(results, scenario))


if __name__ == "__main__":
    main()
