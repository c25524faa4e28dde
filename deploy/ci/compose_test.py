#!/usr/bin/env python3
"""End-to-end test of the real docker-compose.yml (or the cluster variant).

Boots the deployment, then through the published gateway port:
  1. submits a job of every kind and sees each succeed;
  2. scales processor-cpu to 3 and sees every replica take work (each replica's
     /metrics counts the jobs it started);
  3. restarts the nats container while jobs are being submitted and sees every job the
     gateway accepted (202) succeed;
  4. checks that the NATS server refuses the gateway user a subject it must not touch
     (pulling jobs) and the processor user a KV job_status write;
and tears everything down (`docker compose down -v`), also on failure.

Only the Python standard library; needs docker with Compose v2. Exits non-zero on the
first failed check. Usage (repository root):
  deploy/ci/compose_test.py                 # docker-compose.yml
  deploy/ci/compose_test.py --cluster       # + docker-compose.cluster.yml
Env: JETJOBS_CI_GATEWAY_PORT (default 18080), JETJOBS_CI_NATS_PORT (default 14222),
     JETJOBS_CI_KEEP=1 leaves the deployment running.
"""

import argparse
import base64
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib

GATEWAY_PORT = int(os.environ.get("JETJOBS_CI_GATEWAY_PORT", "18080"))
NATS_PORT = int(os.environ.get("JETJOBS_CI_NATS_PORT", "14222"))
BASE = f"http://127.0.0.1:{GATEWAY_PORT}"
# Matches the development defaults of docker-compose.yml.
PASSWORDS = {
    "gateway": os.environ.get("JETJOBS_GATEWAY_PASSWORD", "gateway-dev-password"),
    "processor-cpu": os.environ.get("JETJOBS_PROCESSOR_CPU_PASSWORD", "processor-cpu-dev-password"),
}


def log(msg):
    print(f"[compose-test {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Failed(Exception):
    pass


class Compose:
    def __init__(self, files, project):
        self.base = ["docker", "compose", "-p", project]
        for f in files:
            self.base += ["-f", f]
        self.env = dict(os.environ, GATEWAY_PORT=str(GATEWAY_PORT), NATS_PORT=str(NATS_PORT),
                        NATS_MONITOR_PORT=os.environ.get("JETJOBS_CI_NATS_MONITOR_PORT", "18222"))

    def run(self, *args, check=True, capture=False, timeout=1800):
        cmd = self.base + list(args)
        log("$ " + " ".join(cmd[2:]))
        result = subprocess.run(cmd, env=self.env, text=True, timeout=timeout,
                                stdout=subprocess.PIPE if capture else None)
        if check and result.returncode != 0:
            raise Failed(f"{' '.join(cmd)} exited {result.returncode}")
        return result.stdout if capture else result.returncode


def http(method, path, body=None, timeout=10):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(BASE + path, data=data, method=method,
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw or b"null")
        except ValueError:
            return e.code, raw.decode(errors="replace")
    except (urllib.error.URLError, OSError, ValueError) as e:
        return None, str(e)


def wait_until(what, timeout, probe, interval=0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise Failed(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def tiny_png(width=8, height=8):
    """A valid RGB PNG, made here so the test needs no image files."""
    def chunk(tag, data):
        body = tag + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
    rows = b"".join(
        b"\x00" + b"".join(bytes([(x * 30) % 256, (y * 30) % 256, 128]) for x in range(width))
        for y in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


JOBS = {
    "noop": {},
    "sleep": {"ms": 100},
    "flaky": {"fail": "retryable", "times": 1},
    "hash": {"data_b64": base64.b64encode(b"jetjobs").decode(), "rounds": 3},
    "thumbnail": {"image_b64": base64.b64encode(tiny_png()).decode(), "width": 4, "height": 4},
}


def submit(kind, payload, timeout=10):
    status, body = http("POST", "/v1/jobs", {"kind": kind, "payload": payload}, timeout=timeout)
    if status == 202 and isinstance(body, dict) and body.get("id"):
        return body["id"]
    return None


def wait_succeeded(ids, timeout):
    pending = set(ids)
    states = {}

    def probe():
        for job_id in list(pending):
            status, body = http("GET", f"/v1/jobs/{job_id}")
            if status == 200 and isinstance(body, dict):
                states[job_id] = body.get("state")
                if body.get("state") == "succeeded":
                    pending.discard(job_id)
                elif body.get("state") in ("failed", "cancelled"):
                    raise Failed(f"job {job_id} ended {body.get('state')}: {body}")
        return not pending

    wait_until(f"{len(ids)} jobs to succeed", timeout, probe, interval=1)


def gateway_ready():
    status, _ = http("GET", "/readyz", timeout=3)
    return status == 200


def check_every_kind(compose):
    ids = {}
    for kind, payload in JOBS.items():
        # Right after start a processor may not have registered its kinds yet (the
        # gateway answers 422 for an unknown kind): retry for a while.
        job_id = wait_until(f"the gateway to accept a {kind} job", 60,
                            lambda: submit(kind, payload), interval=1)
        ids[job_id] = kind
    wait_succeeded(list(ids), 90)
    log(f"every kind succeeded: {sorted(ids.values())}")


def metric_total(text, name):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            try:
                total += float(line.rsplit(" ", 1)[1])
            except (IndexError, ValueError):
                pass
    return total


def check_scale_out(compose):
    compose.run("up", "-d", "--no-recreate", "--scale", "processor-cpu=3", "processor-cpu")
    containers = compose.run("ps", "-q", "processor-cpu", capture=True).split()
    if len(containers) != 3:
        raise Failed(f"expected 3 processor-cpu containers, got {containers}")
    # Let the new replicas connect and start pulling, then submit jobs one at a time:
    # idle replicas each keep a pull request waiting on the durable consumer, and the
    # server hands each new job to the oldest waiting request, so paced jobs spread over
    # all replicas (a burst could go to one replica with room for 64).
    wait_until("3 healthy processor-cpu replicas", 60, lambda: all(
        subprocess.run(["docker", "inspect", "-f", "{{.State.Health.Status}}", c], text=True,
                       stdout=subprocess.PIPE, check=False).stdout.strip() == "healthy"
        for c in containers), interval=1)
    time.sleep(2)
    ids = []
    for i in range(45):
        job_id = submit("hash", {"size": 64 * 1024, "rounds": 50})
        if not isinstance(job_id, str):
            raise Failed(f"hash job {i} not accepted: {job_id!r}")
        ids.append(job_id)
        time.sleep(0.1)
    wait_succeeded(ids, 180)
    started = {}
    for c in containers:
        out = subprocess.run(["docker", "exec", c, "curl", "-fsS", "http://127.0.0.1:9464/metrics"],
                             text=True, stdout=subprocess.PIPE, check=False).stdout
        started[c[:12]] = metric_total(out, "jetjobs_jobs_started_total")
    log(f"jobs started per processor-cpu replica: {started}")
    if len([n for n in started.values() if n > 0]) != 3:
        raise Failed(f"not every replica took work: {started}")


def check_nats_restart(compose):
    accepted = []
    refused = [0]
    stop = threading.Event()

    def submitter():
        i = 0
        while not stop.is_set():
            kind = ("sleep", "noop", "hash")[i % 3]
            payload = {"ms": 50} if kind == "sleep" else JOBS[kind]
            job_id = submit(kind, payload, timeout=35)
            if isinstance(job_id, str):
                accepted.append(job_id)
            else:
                refused[0] += 1
            i += 1
            time.sleep(0.02)

    thread = threading.Thread(target=submitter, daemon=True)
    thread.start()
    time.sleep(3)
    before = len(accepted)
    compose.run("restart", "nats")
    time.sleep(5)
    wait_until("gateway ready after the NATS restart", 60, gateway_ready)
    time.sleep(3)
    stop.set()
    thread.join(60)
    log(f"accepted {len(accepted)} jobs ({before} before the restart), "
        f"{refused[0]} submissions refused while NATS was away")
    if len(accepted) <= before:
        raise Failed("no job was accepted after the NATS restart")
    wait_succeeded(accepted, 240)
    log("no accepted job lost across the NATS restart")


def nats_refuses(user, subject):
    """Publishes to `subject` as `user` over the raw NATS protocol; True when the server
    answers with a permissions violation."""
    with socket.create_connection(("127.0.0.1", NATS_PORT), timeout=10) as s:
        f = s.makefile("rwb")
        info = f.readline()
        if not info.startswith(b"INFO"):
            raise Failed(f"unexpected NATS greeting {info!r}")
        connect = {"user": user, "pass": PASSWORDS[user], "verbose": False, "pedantic": False,
                   "name": "compose-test", "lang": "python", "version": "0", "protocol": 1}
        f.write(b"CONNECT " + json.dumps(connect).encode() + b"\r\n")
        f.write(f"PUB {subject} 0\r\n\r\nPING\r\n".encode())
        f.flush()
        answer = b""
        while True:
            line = f.readline()
            if not line:
                break
            answer += line
            if line.startswith(b"PONG"):
                break
            if line.startswith(b"-ERR") and b"Authorization" in line:
                raise Failed(f"{user} could not log in: {line!r}")
        return b"Permissions Violation" in answer, answer


def check_permissions():
    for user, subject in [
        ("gateway", "$JS.API.CONSUMER.MSG.NEXT.JOBS.processor-cpu"),
        ("gateway", "$JS.API.STREAM.DELETE.JOBS"),
        ("processor-cpu", "$KV.job_status.someone-elses-job"),
        ("processor-cpu", "jobs.submit.noop.x"),
    ]:
        refused, answer = nats_refuses(user, subject)
        if not refused:
            raise Failed(f"NATS let {user} publish to {subject}: {answer!r}")
        log(f"NATS refuses {user} -> {subject}")
    # And the same connection method works for an allowed subject.
    refused, answer = nats_refuses("gateway", "jobs.cancel.noop.x")
    if refused:
        raise Failed(f"gateway refused an allowed subject: {answer!r}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cluster", action="store_true")
    parser.add_argument("--no-build", action="store_true")
    args = parser.parse_args()
    files = ["docker-compose.yml"] + (["docker-compose.cluster.yml"] if args.cluster else [])
    compose = Compose(files, "jetjobs-ci-cluster" if args.cluster else "jetjobs-ci")
    started = time.monotonic()
    ok = False
    try:
        compose.run("down", "-v", "--remove-orphans", check=False)
        up = ["up", "-d"] + ([] if args.no_build else ["--build"])
        compose.run(*up)
        wait_until("gateway /readyz", 180, gateway_ready)
        log(f"deployment up in {time.monotonic() - started:.0f}s")
        check_every_kind(compose)
        check_permissions()
        check_scale_out(compose)
        check_nats_restart(compose)
        ok = True
    except Failed as e:
        log(f"FAILED: {e}")
        compose.run("ps", "-a", check=False)
        compose.run("logs", "--no-color", "--tail", "60", check=False)
    finally:
        if os.environ.get("JETJOBS_CI_KEEP") != "1":
            compose.run("down", "-v", "--remove-orphans", check=False)
    log(f"{'passed' if ok else 'FAILED'} in {time.monotonic() - started:.0f}s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
