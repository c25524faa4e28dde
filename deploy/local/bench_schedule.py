#!/usr/bin/env python3
"""Scheduling (issue 16), measured on a fresh system:

    BIN_DIR=target/perf python3 deploy/local/bench_schedule.py [--due 10000] [--pending 100000]

  precision  100, then --due noop jobs submitted with the same `run_at` (one second, --lead seconds
             ahead); when each ended (its snapshot's updated_at) minus run_at, p50 / p99 /
             max. A noop job ends about a millisecond after it starts, so this bounds
             start − run_at from above.
  rate       200 noop jobs with `max_per_second: 20`: how long they take (about 10 s)
  pending    --pending jobs delayed by an hour: what they cost nats-server (RSS growth,
             JOBS_SCHEDULES on disk) and the gateway (RSS growth), and the submit rate.

Uses bench.py's System (its own nats-server and every service from BIN_DIR). Clients are
threads with keep-alive connections; the numbers that matter are the server's.
"""

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402
from bench_large import rss_mb  # noqa: E402

CLIENTS = 32


def parallel(system, n, request):
    """Runs request(conn, i) for i in 0..n on CLIENTS keep-alive connections."""
    host, port = system.gateway.split(":")
    results = [None] * n
    counter = iter(range(n))
    lock = threading.Lock()

    def worker():
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            results[i] = request(conn, i)

    threads = [threading.Thread(target=worker) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def submit(body):
    encoded = json.dumps(body).encode()

    def request(conn, _i):
        conn.request("POST", "/v1/jobs", body=encoded,
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        data = json.loads(response.read())
        assert response.status == 202, data
        return data["id"]
    return request


def get_snapshot(conn, job_id):
    conn.request("GET", f"/v1/jobs/{job_id}")
    response = conn.getresponse()
    return json.loads(response.read())


def parse_time(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def precision(system, due, lead):
    run_at = (datetime.now(timezone.utc) + timedelta(seconds=lead)).replace(microsecond=0)
    stamp = run_at.isoformat().replace("+00:00", "Z")
    started = time.perf_counter()
    ids = parallel(system, due, submit({"kind": "noop", "payload": {}, "run_at": stamp}))
    submitted = time.perf_counter() - started
    left = (run_at - datetime.now(timezone.utc)).total_seconds()
    assert left > 0, f"submitting {due} jobs took longer than the lead ({lead} s)"
    bench.log(f"{due} jobs due at {stamp} submitted in {submitted:.1f} s; waiting {left:.1f} s")
    time.sleep(left + 5)
    deadline = time.monotonic() + 300
    lags = []
    pending = list(ids)
    while pending and time.monotonic() < deadline:
        snapshots = parallel(system, len(pending), lambda conn, i: get_snapshot(conn, pending[i]))
        still = []
        for job_id, snapshot in zip(pending, snapshots):
            if snapshot.get("state") == "succeeded":
                lags.append((parse_time(snapshot["updated_at"]) - run_at).total_seconds() * 1000)
            else:
                still.append(job_id)
        pending = still
        if pending:
            time.sleep(1)
    early = [lag for lag in lags if lag < 0]
    return {
        "jobs": due,
        "done": len(lags),
        "submit_seconds": round(submitted, 1),
        "ended_minus_run_at_ms": {
            "p50": round(percentile(lags, 0.50), 1),
            "p99": round(percentile(lags, 0.99), 1),
            "max": round(max(lags), 1),
        },
        "ended_before_run_at": len(early),
    }


def du_bytes(path):
    out = subprocess.run(["du", "-sb", str(path)], text=True, stdout=subprocess.PIPE, check=True)
    return int(out.stdout.split()[0])


def pending_cost(system, work, n):
    nats, gateway = system.procs["nats-server"].pid, system.procs["gateway"].pid
    streams = Path(work) / "store" / "jetstream" / "$G" / "streams" / "JOBS_SCHEDULES"
    before = {"nats": rss_mb(nats), "gateway": rss_mb(gateway), "disk": du_bytes(streams)}
    started = time.perf_counter()
    parallel(system, n, submit({"kind": "noop", "payload": {}, "delay_secs": 3600}))
    took = time.perf_counter() - started
    time.sleep(5)
    after = {"nats": rss_mb(nats), "gateway": rss_mb(gateway), "disk": du_bytes(streams)}
    return {
        "jobs": n,
        "submit_per_s": round(n / took),
        "nats_rss_growth_mb": round(after["nats"] - before["nats"], 1),
        "gateway_rss_growth_mb": round(after["gateway"] - before["gateway"], 1),
        "schedules_on_disk_mb": round((after["disk"] - before["disk"]) / 1e6, 1),
        "bytes_per_job_on_disk": round((after["disk"] - before["disk"]) / n),
    }


def rate_limited(system, jobs, per_second):
    """`jobs` noop jobs with the kind limited to `per_second` starts: how long they take."""
    host, port = system.gateway.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("PUT", "/v1/kinds/noop/limits", body=json.dumps({"max_per_second": per_second}),
                 headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200, response.read()
    response.read()
    time.sleep(1)
    started = time.perf_counter()
    ids = parallel(system, jobs, submit({"kind": "noop", "payload": {}}))
    pending = list(ids)
    while pending:
        snapshots = parallel(system, len(pending), lambda c, i: get_snapshot(c, pending[i]))
        pending = [j for j, s in zip(pending, snapshots) if s.get("state") != "succeeded"]
        time.sleep(0.2)
    took = time.perf_counter() - started
    conn.request("PUT", "/v1/kinds/noop/limits", body="{}",
                 headers={"Content-Type": "application/json"})
    conn.getresponse().read()
    return {"jobs": jobs, "max_per_second": per_second, "seconds": round(took, 1),
            "expected_seconds": round(jobs / per_second, 1)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--due", type=int, default=10_000)
    parser.add_argument("--lead", type=int, default=40)
    parser.add_argument("--pending", type=int, default=100_000)
    parser.add_argument("--out", default="target/bench-schedule.json")
    args = parser.parse_args()
    bin_dir = os.environ.get("BIN_DIR", "target/perf")
    with tempfile.TemporaryDirectory(prefix="jetjobs-bench-schedule-") as work:
        system = bench.System(bin_dir, False, work)
        system.start()
        try:
            result = {"machine": bench.machine()}
            # Under no load first: what the scheduler alone adds.
            result["precision_100"] = precision(system, 100, 10)
            bench.log(f"precision, 100 jobs: {result['precision_100']}")
            result["precision"] = precision(system, args.due, args.lead)
            bench.log(f"precision: {result['precision']}")
            result["rate_limited"] = rate_limited(system, 200, 20)
            bench.log(f"rate limited: {result['rate_limited']}")
            result["pending"] = pending_cost(system, work, args.pending)
            bench.log(f"pending: {result['pending']}")
        finally:
            system.stop()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
