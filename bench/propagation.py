#!/usr/bin/env python3
"""Write-to-edge propagation delay: how long after a catalogue write an edge holds the new version.

Runs against a live stack (`make run`): each round replaces a tenant in the catalogue, then polls
the edge's admin API until its cached context carries the version the catalogue returned.
Prints p50/p99/max over the rounds. Standard library only.

    python3 bench/propagation.py --writes 200
"""
import argparse
import http.client
import json
import statistics
import time


TOKEN = None


def request(conn, method, path, body=None):
    headers = {"content-type": "application/json"} if body is not None else {}
    if TOKEN:
        headers["authorization"] = f"Bearer {TOKEN}"
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    return resp.status, (json.loads(data) if data else None)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--catalogue", default="127.0.0.1:7000")
    ap.add_argument("--token-file", default="data/dev/operator.token", help="the catalogue token (the dev stack's operator token)")
    ap.add_argument("--edge-admin", default="127.0.0.1:9900")
    ap.add_argument("--edge", default="127.0.0.1:8080", help="the edge's plain HTTP listener")
    ap.add_argument("--tenant", default="initech")
    ap.add_argument("--writes", type=int, default=200)
    args = ap.parse_args()
    global TOKEN
    with open(args.token_file) as f:
        TOKEN = f.readline().strip()

    cat = http.client.HTTPConnection(args.catalogue, timeout=5)
    edge = http.client.HTTPConnection(args.edge_admin, timeout=5)
    status, doc = request(cat, "GET", f"/v1/tenants/{args.tenant}")
    if status != 200:
        raise SystemExit(f"tenant {args.tenant}: catalogue answered {status}")
    host = doc["hosts"][0]
    # Make sure this edge caches the tenant (a request through it fills the cache; the admin API
    # only looks), so it is the push that updates it.
    proxy = http.client.HTTPConnection(args.edge, timeout=5)
    proxy.request("GET", "/", headers={"host": host})
    proxy.getresponse().read()
    delays = []
    for i in range(args.writes):
        doc.pop("version", None)
        doc.setdefault("hosts", [host])
        # Timed from sending the write, so the catalogue's own commit is included.
        started = time.perf_counter()
        status, stored = request(cat, "PUT", f"/v1/tenants/{args.tenant}", doc)
        if status not in (200, 201):
            raise SystemExit(f"write {i}: catalogue answered {status}: {stored}")
        want = stored["version"]
        while True:
            status, seen = request(edge, "GET", f"/admin/tenants/{host}")
            if status == 200 and seen["version"] >= want:
                break
            if time.perf_counter() - started > 10:
                raise SystemExit(f"write {i}: version {want} did not reach the edge within 10 s")
        delays.append((time.perf_counter() - started) * 1000)
        if (i + 1) % 50 == 0:
            print(f"  {i + 1}/{args.writes} writes", flush=True)
    delays.sort()
    p = lambda q: delays[min(len(delays) - 1, int(q * len(delays)))]
    print(f"write -> edge over {len(delays)} writes: p50 {p(0.50):.2f} ms, p99 {p(0.99):.2f} ms, "
          f"max {delays[-1]:.2f} ms, mean {statistics.mean(delays):.2f} ms")


if __name__ == "__main__":
    main()
