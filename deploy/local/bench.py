#!/usr/bin/env python3
"""jetjobs' benchmark: every workload of issue 11 in one run, on a fresh nats-server.

    ./deploy/local/bench.sh                 # builds release binaries, then runs this
    BIN_DIR=target/debug python3 deploy/local/bench.py --quick

It starts its own nats-server (temporary store, free ports) and the whole system (status,
notifier, both processors, gateway) from BIN_DIR, then measures:

  W0   50 noop jobs, one at a time (idle latency)
  W1   noop, concurrency 64 (throughput)
  W2   sleep 50 ms, concurrency 64, against the 64-slot bound of 1,280 jobs/s
  W3   hash 1 MiB x 20 rounds, against the machine's bound for the same kernel
  W1d  W1 again with `sync_interval: always` (every PubAck after an fsync)
  floor the raw JetStream pipeline of the same shape (jetjobs-floor), both fsync modes

For each workload: jobs/s, submit and submit->done p50/p99, and the CPU time per job of
every process (user + system from /proc/<pid>/stat, before and after). While W3 saturates
the cores, /healthz is polled for the gateway's responsiveness; peak RSS is read from
/proc/<pid>/status. The report is printed and written to --out (markdown) and, with
--write-docs, into docs/performance.md between its bench markers.
"""

import argparse
import datetime
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HZ = os.sysconf("SC_CLK_TCK")
SERVICES = [
    # (name, binary, listens on the API port?)
    ("status", "jetjobs-status", False),
    ("notifier", "jetjobs-notifier", False),
    ("processor-io", "jetjobs-processor-io", False),
    ("processor-cpu", "jetjobs-processor-cpu", False),
    ("gateway", "jetjobs-gateway", True),
]
DEV_SECRET = "whsec_ZGV2ZWxvcG1lbnQtb25seS1zZWNyZXQtMzJieXRlcw=="


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nats_server_bin():
    if os.environ.get("NATS_SERVER_BIN"):
        return os.environ["NATS_SERVER_BIN"]
    out = subprocess.run(
        ["bash", "-c", ". deploy/local/nats-server.sh >&2 && echo $NATS_SERVER_BIN"],
        cwd=ROOT, check=True, text=True, stdout=subprocess.PIPE).stdout.strip()
    return out


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15; after the ")" they are at 11 and 12.
    return int(fields[11]) + int(fields[12])


def peak_rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


class System:
    """nats-server and every service, started fresh; stopped on exit."""

    def __init__(self, bin_dir, sync_always, work, extra_env=None):
        self.extra_env = extra_env or {}
        self.bin_dir = Path(bin_dir)
        self.work = Path(work)
        self.sync_always = sync_always
        self.procs = {}
        self.nats_port = free_port()
        self.gateway = f"127.0.0.1:{free_port()}"
        self.url = f"nats://127.0.0.1:{self.nats_port}"
        self.logs = self.work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def start(self):
        store = self.work / "store"
        shutil.rmtree(store, ignore_errors=True)
        conf = self.work / "nats.conf"
        sync = "\n  sync_interval: always" if self.sync_always else ""
        conf.write_text(
            f'port: {self.nats_port}\nserver_name: bench\n'
            f'jetstream {{\n  store_dir: "{store}"\n  max_file_store: 1TB{sync}\n}}\n')
        self.spawn("nats-server", [nats_server_bin(), "-c", str(conf)])
        self.wait_port(self.nats_port)
        env = self.env()
        subprocess.run([str(self.bin_dir / "jetjobs-admin"), "provision"], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=open(self.logs / "provision.log", "w"))
        for name, binary, api in SERVICES:
            extra = {"JETJOBS_LISTEN": self.gateway} if api else {
                "JETJOBS_ADMIN_LISTEN": f"127.0.0.1:{free_port()}"}
            self.spawn(name, [str(self.bin_dir / binary)], {**env, **extra})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://{self.gateway}/readyz", timeout=1) as r:
                    if r.status == 200 and self.kinds_registered():
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError("the gateway did not become ready")

    def kinds_registered(self):
        """Every kind the workloads use is accepted (processors register at start)."""
        for body in ({"kind": "noop"}, {"kind": "sleep", "payload": {"ms": 1}},
                     {"kind": "hash", "payload": {"size": 1, "rounds": 1}}):
            request = urllib.request.Request(
                f"http://{self.gateway}/v1/jobs", data=json.dumps(body).encode(),
                headers={"content-type": "application/json"}, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=2) as r:
                    if r.status != 202:
                        return False
            except OSError:
                return False
        return True

    def env(self):
        env = dict(os.environ)
        env.update({
            "NATS_URL": self.url,
            "RUST_LOG": os.environ.get("RUST_LOG", "warn"),
            "JETJOBS_WEBHOOK_SECRETS": DEV_SECRET,
        })
        env.update(self.extra_env)
        return env

    def spawn(self, name, argv, env=None):
        out = open(self.logs / f"{name}.log", "w")
        self.procs[name] = subprocess.Popen(argv, env=env or self.env(), stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    @staticmethod
    def wait_port(port):
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"nothing listens on {port}")

    def cpu(self):
        return {name: cpu_ticks(p.pid) for name, p in self.procs.items() if p.poll() is None}

    def rss(self):
        return {name: peak_rss_mb(p.pid) for name, p in self.procs.items() if p.poll() is None}

    def stop(self):
        for name in [s[0] for s in reversed(SERVICES)] + ["nats-server"]:
            p = self.procs.get(name)
            if p and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.procs.clear()


def loadgen(system, bin_dir, kind, payload, jobs, concurrency, waiters=0):
    argv = [str(Path(bin_dir) / "jetjobs-loadgen"), "--url", f"http://{system.gateway}",
            "--kind", kind, "--payload", json.dumps(payload), "-n", str(jobs),
            "-c", str(concurrency), "--json", "--timeout-secs", "600",
            "--waiters", str(waiters)]
    before = system.cpu()
    out = subprocess.run(argv, env=system.env(), text=True, stdout=subprocess.PIPE)
    after = system.cpu()
    summary = json.loads(out.stdout)
    done = max(summary["done"], 1)
    summary["cpu_us_per_job"] = {
        name: round((after[name] - before[name]) * 1e6 / HZ / done, 1)
        for name in after if name in before
    }
    return summary


def floor(system, bin_dir, jobs, concurrency):
    argv = [str(Path(bin_dir) / "jetjobs-floor"), "pipeline", "-n", str(jobs),
            "-c", str(concurrency), "--json"]
    before = system.cpu().get("nats-server", 0)
    out = subprocess.run(argv, env=system.env(), text=True, stdout=subprocess.PIPE, check=True)
    after = system.cpu().get("nats-server", 0)
    summary = json.loads(out.stdout)
    summary["cpu_us_per_job"] = {"nats-server": round((after - before) * 1e6 / HZ / jobs, 1)}
    return summary


def count_fsyncs(system, bin_dir, jobs):
    """fsync + fdatasync calls of nats-server per noop job (strace attached for the run;
    it slows the server, so this run's throughput is not reported)."""
    if not shutil.which("strace"):
        return None
    out = system.work / f"strace-{time.monotonic_ns()}.txt"
    pid = system.procs["nats-server"].pid
    tracer = subprocess.Popen(["strace", "-f", "-c", "-e", "trace=fsync,fdatasync",
                               "-o", str(out), "-p", str(pid)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    loadgen(system, bin_dir, "noop", {}, jobs, 64)
    tracer.send_signal(signal.SIGINT)
    tracer.wait(timeout=30)
    calls = 0
    for line in out.read_text().splitlines():
        parts = line.split()
        if parts and parts[-1] in ("fsync", "fdatasync"):
            # % time, seconds, usecs/call, calls, [errors,] syscall
            calls += int(parts[3])
    return round(calls / jobs, 2)


def loadgen_ceiling(system, bin_dir, jobs):
    """jetjobs-loadgen against a gateway that does nothing (jetjobs-floor
    trivial-gateway): the most it can measure, so it never hides the real gateway's limit."""
    server = subprocess.Popen([str(Path(bin_dir) / "jetjobs-floor"), "trivial-gateway"],
                              text=True, stdout=subprocess.PIPE)
    try:
        addr = server.stdout.readline().strip()
        argv = [str(Path(bin_dir) / "jetjobs-loadgen"), "--url", f"http://{addr}",
                "-n", str(jobs), "-c", "64", "--json", "--timeout-secs", "120"]
        out = subprocess.run(argv, env=system.env(), text=True, stdout=subprocess.PIPE)
        summary = json.loads(out.stdout)
        return {"jobs": jobs, "submit_throughput": summary["submit_throughput"]}
    finally:
        server.terminate()
        server.wait()


def poll_health(system, stop, latencies):
    """`GET /healthz` every 2 ms on one keep-alive connection (as a load balancer's
    health check would), so a run of a few seconds gives enough probes for a p99 that is
    not simply the worst probe, and no probe pays for a TCP handshake."""
    host, port = system.gateway.rsplit(":", 1)
    conn = None
    while not stop.is_set():
        started = time.perf_counter()
        try:
            if conn is None:
                conn = http.client.HTTPConnection(host, int(port), timeout=5)
            conn.request("GET", "/healthz")
            response = conn.getresponse()
            response.read()
            latencies.append((time.perf_counter() - started) * 1000)
        except (OSError, http.client.HTTPException):
            latencies.append(5000.0)
            if conn is not None:
                conn.close()
            conn = None
        time.sleep(0.002)
    if conn is not None:
        conn.close()


def pct(values, q):
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def machine():
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} vCPU ({cpu}), {mem:.0f} GiB, Linux {platform.release()}"


def run(args):
    bin_dir = args.bin_dir
    scale = 0.2 if args.quick else 1.0
    n = lambda x: max(int(x * scale), 10)  # noqa: E731
    results = {}
    work = tempfile.mkdtemp(prefix="jetjobs-bench-")
    log(f"work dir {work}, binaries {bin_dir}")

    out = subprocess.run([str(Path(bin_dir) / "jetjobs-floor"), "hash-bound", "--json",
                          "--secs", "3" if args.quick else "6"],
                         text=True, stdout=subprocess.PIPE, check=True)
    results["hash_bound"] = json.loads(out.stdout)
    log(f"hash bound: {results['hash_bound']['jobs_per_sec']} jobs/s")

    system = System(bin_dir, sync_always=False, work=Path(work) / "default")
    try:
        system.start()
        loadgen(system, bin_dir, "noop", {}, 500, 64)  # warm-up: connections, caches
        results["W0"] = loadgen(system, bin_dir, "noop", {}, 50, 1)
        results["W1"] = loadgen(system, bin_dir, "noop", {}, n(20000), 64)
        results["W1w"] = loadgen(system, bin_dir, "noop", {}, n(20000), 64,
                                 waiters=args.waiters)
        results["W2"] = loadgen(system, bin_dir, "sleep", {"ms": 50}, n(6400), 64)
        stop, health = threading.Event(), []
        poller = threading.Thread(target=poll_health, args=(system, stop, health))
        poller.start()
        results["W3"] = loadgen(system, bin_dir, "hash", {"size": 1 << 20, "rounds": 20},
                                n(400), 16)
        stop.set()
        poller.join()
        results["healthz_under_W3_ms"] = {"count": len(health), "p50": pct(health, 0.5),
                                          "p99": pct(health, 0.99)}
        results["floor_W0"] = floor(system, bin_dir, 50, 1)
        results["floor_W1"] = floor(system, bin_dir, n(20000), 64)
        results["loadgen_ceiling"] = loadgen_ceiling(system, bin_dir, n(50000))
        results["rss_mb"] = system.rss()
        for name, summary in results.items():
            if name.startswith("W"):
                log(f"{name}: {summary.get('e2e_throughput', 0):.0f} jobs/s")
    finally:
        system.stop()

    # Group commit (off by default) switched on: what it buys, in the same run.
    on = {"JETJOBS_GROUP_COMMIT": "true"}
    system = System(bin_dir, sync_always=False, work=Path(work) / "plain-gc", extra_env=on)
    try:
        system.start()
        loadgen(system, bin_dir, "noop", {}, 500, 64)
        results["W1_gc"] = loadgen(system, bin_dir, "noop", {}, n(20000), 64)
    finally:
        system.stop()

    system = System(bin_dir, sync_always=True, work=Path(work) / "durable")
    try:
        system.start()
        loadgen(system, bin_dir, "noop", {}, 500, 64)
        results["W1d"] = loadgen(system, bin_dir, "noop", {}, n(10000), 64)
        results["floor_W1d"] = floor(system, bin_dir, n(10000), 64)
        results["fsyncs_per_job"] = count_fsyncs(system, bin_dir, n(2000))
    finally:
        system.stop()

    system = System(bin_dir, sync_always=True, work=Path(work) / "durable-gc", extra_env=on)
    try:
        system.start()
        loadgen(system, bin_dir, "noop", {}, 500, 64)
        results["W1d_gc"] = loadgen(system, bin_dir, "noop", {}, n(10000), 64)
        results["fsyncs_per_job_gc"] = count_fsyncs(system, bin_dir, n(2000))
    finally:
        system.stop()
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    results["machine"] = machine()
    results["waiters"] = args.waiters
    results["bin_dir"] = str(bin_dir)
    results["date"] = datetime.date.today().isoformat()
    return results


def report(r):
    def row(name, what, s, floor_s=None, bound=None):
        p = s["submit_latency_ms"]
        e = s["e2e_latency_ms"]
        ratio = ""
        if floor_s:
            ratio = f"{100 * s['e2e_throughput'] / max(floor_s['e2e_throughput'], 1e-9):.0f} %"
        if bound:
            ratio = f"{100 * s['e2e_throughput'] / bound:.0f} % of {bound:.0f}"
        return (f"| {name} | {what} | {s['done']} | {s['e2e_throughput']:,.0f} | "
                f"{p['p50']:.2f} / {p['p99']:.2f} | {e['p50']:.2f} / {e['p99']:.2f} | {ratio} |")

    lines = [
        f"Run {r['date']} on {r['machine']}; binaries `{r['bin_dir']}`; "
        f"nats-server from nats-server-bin. Command: `deploy/local/bench.sh`.",
        "",
        "| workload | what | jobs | jobs/s | submit p50 / p99 ms | submit→done p50 / p99 ms "
        "| of floor / bound |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        row("W0", "noop, one at a time", r["W0"], r["floor_W0"]),
        row("W1", "noop, c=64", r["W1"], r["floor_W1"]),
        row("W2", "sleep 50 ms, c=64", r["W2"], bound=1280.0),
        row("W3", "hash 1 MiB × 20, c=16", r["W3"], bound=r["hash_bound"]["jobs_per_sec"]),
        row("W1", "… with group commit", r["W1_gc"], r["floor_W1"]),
        row("W1w", f"noop, c=64, {r.get('waiters', 0)} idle waiters", r["W1w"], r["floor_W1"]),
        row("W1d", "noop, c=64, sync always", r["W1d"], r["floor_W1d"]),
        row("W1d", "… with group commit", r["W1d_gc"], r["floor_W1d"]),
        row("floor", "raw pipeline, one at a time", {**r["floor_W0"], "done": r["floor_W0"]["jobs"]}),
        row("floor", "raw pipeline, c=64", {**r["floor_W1"], "done": r["floor_W1"]["jobs"]}),
        row("floor d", "raw pipeline, c=64, sync always",
            {**r["floor_W1d"], "done": r["floor_W1d"]["jobs"]}),
        "",
        "CPU time per job (µs, user + system, from /proc/<pid>/stat):",
        "",
    ]
    procs = ["gateway", "status", "processor-io", "processor-cpu", "notifier", "nats-server"]
    lines.append("| workload | " + " | ".join(procs) + " | total |")
    lines.append("| --- |" + " ---: |" * (len(procs) + 1))
    for w in ["W0", "W1", "W1_gc", "W1w", "W2", "W3", "W1d", "W1d_gc"]:
        cpu = r[w]["cpu_us_per_job"]
        lines.append(f"| {w} | " + " | ".join(f"{cpu.get(p, 0):,.0f}" for p in procs)
                     + f" | {sum(cpu.values()):,.0f} |")
    for w in ["floor_W1", "floor_W1d"]:
        lines.append(f"| {w} (nats-server only) | " + " | ".join(
            f"{r[w]['cpu_us_per_job'].get(p, 0):,.0f}" if p == "nats-server" else "—"
            for p in procs) + " | |")
    h = r["healthz_under_W3_ms"]
    rss = r["rss_mb"]
    lines += [
        "",
        f"`/healthz` while W3 saturates the cores: {h['count']} probes, "
        f"p50 {h['p50']:.2f} ms, p99 {h['p99']:.2f} ms. "
        f"Hash bound (same kernel on every core, nothing else): "
        f"{r['hash_bound']['jobs_per_sec']:.1f} jobs/s.",
        "",
        f"fsync calls of nats-server per noop job with `sync_interval: always` (strace, "
        f"c=64): {r.get('fsyncs_per_job')} as shipped, "
        f"{r.get('fsyncs_per_job_gc')} with group commit.",
        "",
        f"`jetjobs-loadgen`'s own ceiling (against `jetjobs-floor trivial-gateway`, c=64): "
        f"{r['loadgen_ceiling']['submit_throughput']:,.0f} requests/s.",
        "",
        "Peak RSS after the default-fsync runs (MB): "
        + ", ".join(f"{k} {v:.0f}" for k, v in sorted(rss.items())) + ".",
    ]
    return "\n".join(lines) + "\n"


def write_docs(text):
    path = ROOT / "docs" / "performance.md"
    doc = path.read_text()
    begin, end = "<!-- bench:begin -->", "<!-- bench:end -->"
    if begin in doc and end in doc:
        head, rest = doc.split(begin, 1)
        _, tail = rest.split(end, 1)
        doc = f"{head}{begin}\n{text}{end}{tail}"
    else:
        doc += f"\n## Latest benchmark\n\n{begin}\n{text}{end}\n"
    path.write_text(doc)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bin-dir", default=os.environ.get("BIN_DIR", "target/release"))
    parser.add_argument("--quick", action="store_true", help="a fifth of the jobs")
    parser.add_argument("--keep", action="store_true", help="keep the work dir and logs")
    parser.add_argument("--waiters", type=int, default=1000,
                        help="idle long-polling clients during W1w")
    parser.add_argument("--out", default="target/bench/report.md")
    parser.add_argument("--json-out", default="target/bench/report.json")
    parser.add_argument("--write-docs", action="store_true",
                        help="put the table into docs/performance.md")
    args = parser.parse_args()
    os.chdir(ROOT)
    results = run(args)
    text = report(results)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    Path(args.json_out).write_text(json.dumps(results, indent=2))
    if args.write_docs:
        write_docs(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
