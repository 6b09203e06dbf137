"""The service at idle: start → READY, CPU and memory of all its processes when nothing happens.

Run as root from the repository: ``.venv/bin/python bench/idle_bench.py [--seconds N]``.
roguewatchd runs on private endpoints and a private state directory (so a running service
is not disturbed), with its default watchers and probes. READY is read the way systemd reads
it: a NOTIFY_SOCKET datagram socket of our own. Then, after a few seconds to settle, the CPU
time of the service and its children is read from /proc over N seconds.
Bars (the service issue): READY ≤ 2 s, idle CPU ≤ 1 % of one core, memory ≤ 250 MB.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DAEMON = str(ROOT / ".venv" / "bin" / "roguewatchd")
TICK = os.sysconf("SC_CLK_TCK")


def tree(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [pid, *(int(x) for x in out.split())]


def cpu_and_rss(pids: list[int]) -> tuple[float, int]:
    cpu, rss = 0.0, 0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / TICK
            rss += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * os.sysconf("SC_PAGESIZE")
        except (OSError, IndexError, ValueError):
            pass
    return cpu, rss


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="idle measurement length")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("idle_bench: needs root (roguewatchd loads BPF probes)", file=sys.stderr)
        return 2
    d = tempfile.mkdtemp(prefix="rw-idle-", dir="/run" if os.path.isdir("/run") else None)
    os.chmod(d, 0o700)
    cfg = Path(d) / "roguewatchd.yaml"
    cfg.write_text(
        f"events_endpoint: ipc://{d}/run/events.sock\n"
        f"control_endpoint: ipc://{d}/run/control.sock\n"
        f"alerts_endpoint: ipc://{d}/run/alerts.sock\n"
        f"alerts_file: {d}/log/alerts.jsonl\nstatus_file: {d}/run/status.json\n"
        f"state_dir: {d}/state\njournald: false\nprint_alerts: false\n"
    )
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(f"{d}/notify.sock")
    env = {**os.environ, "NOTIFY_SOCKET": f"{d}/notify.sock"}
    t0 = time.monotonic()
    proc = subprocess.Popen([DAEMON, "--config", str(cfg)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        ready = None
        notify.settimeout(1.0)
        while ready is None and time.monotonic() - t0 < 90 and proc.poll() is None:
            try:
                msg = notify.recv(4096).decode(errors="replace")
            except TimeoutError:
                continue
            if "READY=1" in msg.split("\n"):
                ready = time.monotonic() - t0
        if ready is None:
            print("roguewatchd never said READY=1", file=sys.stderr)
            return 1
        time.sleep(5)  # settle: the baseline snapshot, the first ticks
        pids = tree(proc.pid)
        c0, _ = cpu_and_rss(pids)
        time.sleep(args.seconds)
        c1, rss = cpu_and_rss(pids)
        idle = (c1 - c0) / args.seconds * 100
        print(f"start -> READY {ready:.2f} s (bar 2 s); idle CPU {idle:.2f} % of one core over "
              f"{args.seconds:.0f} s (bar 1 %); memory {rss / 1e6:.0f} MB in {len(pids)} "
              f"processes (bar 250 MB)")  # fmt: skip
        return 0 if ready <= 2 and idle <= 1 and rss <= 250e6 else 1
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        notify.close()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
