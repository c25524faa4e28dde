#!/usr/bin/env python3
"""Large payloads and listing (issue 13), measured on a fresh system:

    BIN_DIR=target/perf python3 deploy/local/bench_large.py [--jobs 1000000] [--blob-mib 1024]

  upload   one blob of --blob-mib MiB, streamed (POST /v1/blobs): MB/s, and the
           gateway's peak RSS growth over its RSS before
  hash     `hash` over that blob (1 round): seconds, MB/s, processor-cpu's peak RSS growth
  list     GET /v1/jobs?limit=50, the first page and a deep one (500,000 jobs down, or half
           of --jobs), p50/p99 over 200 requests each, at 10,000 jobs and again at --jobs
  bytes    a page of 1,000 snapshots, plain and gzip / br / zstd

The deep page's cursor is made by hand from the first page's (a cursor is base64 of
`v1.<sequence>.<filters>`): walking 10,000 pages to get there would measure the walk.
Uses bench.py's System (its own nats-server and every service from BIN_DIR).
"""

import argparse
import base64
import http.client
import json
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def reset_peak(pid):
    """Resets VmHWM to the current RSS (Linux >= 4.0), so the peak is this run's."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def upload(system, mib):
    pid = system.procs["gateway"].pid
    reset_peak(pid)
    before = rss_mb(pid)
    host, port = system.gateway.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=600)
    size = mib << 20
    chunk = os.urandom(1 << 20)
    started = time.perf_counter()
    conn.putrequest("POST", "/v1/blobs")
    conn.putheader("Content-Type", "application/octet-stream")
    conn.putheader("Content-Length", str(size))
    conn.endheaders()
    for _ in range(mib):
        conn.send(chunk)
    response = conn.getresponse()
    body = json.loads(response.read())
    took = time.perf_counter() - started
    assert response.status == 201, body
    peak = bench.peak_rss_mb(pid)
    return body["id"], {
        "mib": mib,
        "seconds": round(took, 2),
        "mb_per_s": round(size / took / 1e6, 1),
        "gateway_rss_before_mb": round(before, 1),
        "gateway_peak_rss_growth_mb": round(peak - before, 1),
    }


def post_json(system, path, body):
    request = urllib.request.Request(
        f"http://{system.gateway}{path}", data=json.dumps(body).encode(),
        headers={"content-type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as r:
        return json.loads(r.read())


def get_json(system, path, headers=None):
    request = urllib.request.Request(f"http://{system.gateway}{path}", headers=headers or {})
    with urllib.request.urlopen(request, timeout=60) as r:
        return json.loads(r.read())


def hash_blob(system, blob, mib):
    pid = system.procs["processor-cpu"].pid
    reset_peak(pid)
    before = rss_mb(pid)
    started = time.perf_counter()
    job = post_json(system, "/v1/jobs", {"kind": "hash", "payload": {"data_blob": blob, "rounds": 1}})
    while True:
        snapshot = get_json(system, f"/v1/jobs/{job['id']}?wait=15")
        if snapshot["state"] in ("succeeded", "failed", "cancelled"):
            break
    took = time.perf_counter() - started
    assert snapshot["state"] == "succeeded", snapshot
    peak = bench.peak_rss_mb(pid)
    return {
        "seconds": round(took, 2),
        "mb_per_s": round((mib << 20) / took / 1e6, 1),
        "processor_rss_before_mb": round(before, 1),
        "processor_peak_rss_growth_mb": round(peak - before, 1),
    }


def fill(system, bin_dir, jobs):
    """Adds `jobs` noop jobs through the gateway (the real path: index entry, job, snapshot)."""
    if jobs <= 0:
        return
    started = time.perf_counter()
    summary = bench.loadgen(system, bin_dir, "noop", {}, jobs, 64)
    bench.log(f"added {jobs} jobs in {time.perf_counter() - started:.0f} s "
              f"({summary.get('done')} done)")
    # Listing is measured on a quiet system: the status service and the notifier may
    # still be working through the last events.
    time.sleep(10)


def latencies(system, path, n=200):
    host, port = system.gateway.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    out = []
    for _ in range(n):
        started = time.perf_counter()
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        out.append((time.perf_counter() - started) * 1000)
        assert response.status == 200, body[:200]
    out.sort()
    return {"p50_ms": round(bench.pct(out, 0.5), 2), "p99_ms": round(bench.pct(out, 0.99), 2)}


def deep_cursor(first_cursor, depth):
    text = base64.urlsafe_b64decode(first_cursor + "=" * (-len(first_cursor) % 4)).decode()
    version, seq, filters = text.split(".")
    deep = max(int(seq) - depth, 2)
    return base64.urlsafe_b64encode(f"{version}.{deep}.{filters}".encode()).decode().rstrip("=")


def listing(system, total):
    first = get_json(system, "/v1/jobs?limit=50")
    cursor = deep_cursor(first["next_cursor"], min(500_000, total // 2))
    return {
        "jobs": total,
        "first_page": latencies(system, "/v1/jobs?limit=50"),
        "deep_page": latencies(system, f"/v1/jobs?limit=50&cursor={cursor}"),
    }


def page_bytes(system):
    host, port = system.gateway.split(":")
    sizes = {}
    for encoding in ("identity", "gzip", "br", "zstd"):
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("GET", "/v1/jobs?limit=1000", headers={"Accept-Encoding": encoding})
        response = conn.getresponse()
        sizes[encoding] = len(response.read())
    return sizes


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--blob-mib", type=int, default=1024)
    parser.add_argument("--out", default="target/bench-large.json")
    args = parser.parse_args()
    bin_dir = os.environ.get("BIN_DIR", "target/perf")
    with tempfile.TemporaryDirectory(prefix="jetjobs-bench-large-") as work:
        system = bench.System(bin_dir, False, work, extra_env={
            "JETJOBS_MAX_BLOB_BYTES": str((args.blob_mib + 1) << 20),
            # The hash of a large blob outlasts the default per-attempt timeout.
            "JETJOBS_REQUEST_TIMEOUT_SECS": "60",
        })
        system.start()
        try:
            result = {"machine": bench.machine()}
            bench.log(f"uploading {args.blob_mib} MiB")
            blob, result["upload"] = upload(system, args.blob_mib)
            bench.log(f"upload: {result['upload']}")
            result["hash"] = hash_blob(system, blob, args.blob_mib)
            bench.log(f"hash: {result['hash']}")
            small = min(10_000, args.jobs)
            fill(system, bin_dir, small)
            result["list_small"] = listing(system, small)
            result["page_bytes"] = page_bytes(system)
            bench.log(f"list at {small}: {result['list_small']}; bytes: {result['page_bytes']}")
            if args.jobs > small:
                fill(system, bin_dir, args.jobs - small)
                result["list_large"] = listing(system, args.jobs)
                bench.log(f"list at {args.jobs}: {result['list_large']}")
        finally:
            system.stop()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
