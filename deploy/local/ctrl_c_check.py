#!/usr/bin/env python3
"""Ctrl-C in a terminal running ./deploy/local/run.sh, as a terminal does it: SIGINT to
the script's whole process group, once (an ordered stop: exit 0) and twice (stop at once:
exit 130). Each time, no process of the system may be left behind.

    BIN_DIR=target/debug python3 deploy/local/ctrl_c_check.py

BIN_DIR names binaries already built (deploy/local/test.sh builds target/debug); without
it run.sh builds its PROFILE first. Uses its own ports and a temp RUN_DIR, so it runs
beside another system.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_ports(n: int) -> list[int]:
    """n distinct free ports: every socket stays bound until all are chosen, so two of
    the system's listeners can never be handed the same port."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def alive(pids: list[int]) -> list[int]:
    """Those still running (a zombie waiting to be reaped by init has exited)."""
    out = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            out.append(pid)
    return out


def processes_of(env: dict) -> list[int]:
    """The system's processes: the ones whose environment has this run's RUN_DIR."""
    run_dir = env["RUN_DIR"].encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if b"RUN_DIR=" + run_dir in f.read().split(b"\0"):
                    pids.append(int(entry))
        except OSError:
            pass
    return [p for p in pids if p != os.getpid()]


def show(script_log: str, run_dir: str) -> None:
    """Prints run.sh's output and the tail of every component's log: the temp dir they
    are in is gone by the time anyone reads CI's output."""
    logs = [script_log]
    logs_dir = os.path.join(run_dir, "logs")
    if os.path.isdir(logs_dir):
        logs += [os.path.join(logs_dir, name) for name in sorted(os.listdir(logs_dir))]
    for path in logs:
        try:
            with open(path, errors="replace") as f:
                lines = f.readlines()[-40:]
        except OSError:
            continue
        print(f"--- {os.path.basename(path)} (last {len(lines)} lines)", file=sys.stderr)
        sys.stderr.writelines(lines)


def once(presses: int, run_dir: str) -> None:
    gateway, nats, monitor, status, io, cpu, notifier = free_ports(7)
    env = dict(
        os.environ,
        NATS_PORT=str(nats),
        NATS_MONITOR_PORT=str(monitor),
        JETJOBS_LISTEN=f"127.0.0.1:{gateway}",
        STATUS_ADMIN_LISTEN=f"127.0.0.1:{status}",
        PROCESSOR_IO_ADMIN_LISTEN=f"127.0.0.1:{io}",
        PROCESSOR_CPU_ADMIN_LISTEN=f"127.0.0.1:{cpu}",
        NOTIFIER_ADMIN_LISTEN=f"127.0.0.1:{notifier}",
        RUN_DIR=run_dir,
        JETJOBS_SHUTDOWN_GRACE_SECS="3",
    )
    log = open(os.path.join(os.path.dirname(run_dir), f"run-{presses}.out"), "w")
    script = subprocess.Popen(
        ["./deploy/local/run.sh"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        # A shell started in the background ignores SIGINT; a terminal's does not.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    base = f"http://127.0.0.1:{gateway}"
    deadline = time.time() + 600
    while True:
        try:
            urllib.request.urlopen(f"{base}/readyz", timeout=1)
            break
        except OSError:
            if script.poll() is not None or time.time() > deadline:
                log.flush()
                show(log.name, run_dir)
                sys.exit(f"run.sh did not start the system (exit {script.poll()})")
            time.sleep(0.2)
    # A job that outlasts the grace period, so the stop has something to hand back.
    request = urllib.request.Request(
        f"{base}/v1/jobs",
        data=json.dumps({"kind": "sleep", "payload": {"ms": 30000}}).encode(),
        headers={"content-type": "application/json"},
    )
    assert urllib.request.urlopen(request).status == 202
    time.sleep(1)
    system = processes_of(env)
    assert len(system) >= 6, f"expected nats-server and 5 services, found {system}"
    started = time.time()
    for _ in range(presses):
        os.killpg(script.pid, signal.SIGINT)
        time.sleep(0.5)
    code = script.wait(timeout=60)
    took = time.time() - started
    # A SIGKILL sent just before the script exited takes effect a moment later.
    for _ in range(20):
        left = alive(system)
        if not left:
            break
        time.sleep(0.1)
    expected = 0 if presses == 1 else 130
    print(f"{presses} × Ctrl-C: run.sh exited {code} after {took:.1f} s; left behind: {left or 'nothing'}")
    if code != expected or left:
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        log.flush()
        show(log.name, run_dir)
        sys.exit(f"expected exit {expected} and nothing left")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="jetjobs-ctrl-c-") as tmp:
        for presses in (1, 2):
            once(presses, os.path.join(tmp, f"run-{presses}"))


if __name__ == "__main__":
    main()
