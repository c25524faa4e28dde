#!/usr/bin/env python3
"""Costs that must not grow with the wrong thing (issue 11), on one fresh system:

    BIN_DIR=target/perf python3 deploy/local/bench_million.py [--jobs 1000000] [--w1 20000]

  empty     W1 (noop, c=64, --w1 jobs) on the empty system: jobs/s, CPU µs per job of
            each process
  fill      --jobs noop jobs through the gateway, run to completion, so `job_status`
            holds that many snapshots (and JOB_EVENTS / JOBS_INDEX that many jobs); the
            peak RSS of the gateway and of the status service while it runs
  full      W1 again beside those snapshots: its ratio to `empty`
  waiting   the processors stopped (SIGTERM), --jobs noop jobs submitted
            (`jetjobs-loadgen --submit-only`): they wait in `JOBS`. The peak RSS of the
            gateway and the status service while they are submitted and wait, the
            gateway's `/healthz` and `GET /v1/stats` latency beside them, and what
            `/v1/stats` counts as waiting

Peak RSS is `VmHWM`, reset through `/proc/<pid>/clear_refs` before each step. Uses
bench.py's System (its own nats-server and every service from BIN_DIR). Prints JSON and
writes it to --out.
"""

import argparse
import json
import os
import signal
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402
from bench_large import reset_peak, rss_mb  # noqa: E402

WATCHED = ("gateway", "status", "nats-server")


def peaks(system):
    return {name: round(bench.peak_rss_mb(system.procs[name].pid), 1)
            for name in WATCHED if name in system.procs}


def reset_peaks(system):
    for name in WATCHED:
        if name in system.procs:
            reset_peak(system.procs[name].pid)


def w1(system, bin_dir, jobs):
    summary = bench.loadgen(system, bin_dir, "noop", {}, jobs, 64)
    if not summary.get("complete"):
        raise RuntimeError(f"W1 did not complete: {summary}")
    return {
        "jobs_per_s": round(summary["e2e_throughput"]),
        "submit_ms": summary["submit_latency_ms"],
        "cpu_us_per_job": summary["cpu_us_per_job"],
    }


def submit_only(system, bin_dir, jobs):
    argv = [str(Path(bin_dir) / "jetjobs-loadgen"), "--url", f"http://{system.gateway}",
            "--kind", "noop", "-n", str(jobs), "-c", "64", "--json", "--submit-only",
            "--no-progress", "--timeout-secs", "3600"]
    out = bench.subprocess.run(argv, env=system.env(), text=True,
                               stdout=bench.subprocess.PIPE)
    summary = json.loads(out.stdout)
    if not summary.get("complete"):
        raise RuntimeError(f"the submissions were not all accepted: {summary}")
    return round(summary["submit_throughput"])


def probe(system, path, n=200):
    """p50 / p99 in ms of `n` sequential GETs of `path`."""
    times = []
    for _ in range(n):
        start = time.perf_counter()
        with urllib.request.urlopen(f"http://{system.gateway}{path}", timeout=10) as r:
            r.read()
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return {"p50_ms": round(times[len(times) // 2], 2),
            "p99_ms": round(times[int(len(times) * 0.99) - 1], 2)}


def waiting_jobs(system):
    with urllib.request.urlopen(f"http://{system.gateway}/v1/stats", timeout=10) as r:
        stats = json.loads(r.read())
    return sum(kind["waiting"] for kind in stats["kinds"])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--w1", type=int, default=20_000)
    parser.add_argument("--out", default="target/bench-million.json")
    args = parser.parse_args()
    bin_dir = os.environ.get("BIN_DIR", "target/perf")
    with tempfile.TemporaryDirectory(prefix="jetjobs-bench-million-") as work:
        system = bench.System(bin_dir, False, work)
        system.start()
        result = {"machine": bench.machine(), "jobs": args.jobs, "w1_jobs": args.w1}
        try:
            bench.log(f"W1 on an empty system ({args.w1} jobs)")
            result["empty"] = w1(system, bin_dir, args.w1)
            bench.log(f"empty: {result['empty']}")

            bench.log(f"filling job_status with {args.jobs} finished jobs")
            reset_peaks(system)
            started = time.monotonic()
            fill = bench.loadgen(system, bin_dir, "noop", {}, args.jobs, 64)
            result["fill"] = {
                "jobs_per_s": round(fill["e2e_throughput"]),
                "secs": round(time.monotonic() - started),
                "peak_rss_mb": peaks(system),
            }
            bench.log(f"fill: {result['fill']}")

            bench.log(f"W1 beside {args.jobs} snapshots")
            result["full"] = w1(system, bin_dir, args.w1)
            result["full"]["of_empty"] = round(
                result["full"]["jobs_per_s"] / max(result["empty"]["jobs_per_s"], 1), 3)
            bench.log(f"full: {result['full']}")

            bench.log(f"processors stopped; {args.jobs} jobs left waiting in JOBS")
            for name in ("processor-io", "processor-cpu"):
                proc = system.procs.pop(name)
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)
            reset_peaks(system)
            rate = submit_only(system, bin_dir, args.jobs)
            time.sleep(5)
            result["waiting"] = {
                "submitted_per_s": rate,
                "peak_rss_mb": peaks(system),
                "rss_after_mb": {name: round(rss_mb(system.procs[name].pid), 1)
                                 for name in WATCHED},
                "healthz": probe(system, "/healthz"),
                "stats": probe(system, "/v1/stats", n=50),
                "stats_waiting": waiting_jobs(system),
            }
            bench.log(f"waiting: {result['waiting']}")
        finally:
            system.stop()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
