"""Time from a component's death (kill -9) to the fail-closed freeze of a live session
(issue 11's bar: p99 <= 1 s), and from the death to the session's release.

roguewatchd runs under its own supervisor, on sockets and state of its own (a temporary
directory). One session (its own cgroup, a sleeping process, registered as `roguewatch run`
registers one) lives through every trial. Each trial kills one of the collector, the evaluator
and roguewatchd itself (in turn) with SIGKILL; the clock runs from the kill until the
session's cgroup reports frozen (cgroup.events), then on until it is thawed again (coverage
back: the component restarted, the session taken back).

    sudo .venv/bin/python bench/failclosed_bench.py [--trials 30] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from roguewatch.respond.cgroups import SessionCgroup
from roguewatch.runtime.components import COMPONENT_MODULES
from roguewatch.stream.control import ControlClient, ControlError

KINDS = ("collector", "evaluator", "roguewatchd")


def _procs() -> list[tuple[int, int, str]]:
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().decode(errors="replace")
        except (OSError, ValueError):
            continue
        out.append((int(pid), ppid, cmd))
    return out


def _pids(supervisor: int) -> dict[str, int]:
    procs = _procs()
    service = next((p for p, pp, c in procs if pp == supervisor
                    and "roguewatch.runtime.service" in c), None)  # fmt: skip
    out = {"roguewatchd": service} if service else {}
    for p, pp, c in procs:
        for name in ("collector", "evaluator"):
            if pp == service and COMPONENT_MODULES[name] in c:
                out[name] = p
    return out


def _frozen(cg: SessionCgroup) -> bool:
    return cg.events().get("frozen") == "1"


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return round(s[min(len(s) - 1, max(0, round(q * len(s)) - 1))], 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("failclosed_bench: needs root", file=sys.stderr)
        return 2
    tmp = tempfile.mkdtemp(prefix="rw-failclosed-bench-")
    control = f"ipc://{tmp}/run/control.sock"
    cfg = f"{tmp}/roguewatchd.yaml"
    with open(cfg, "w") as f:
        f.write(f"events_endpoint: ipc://{tmp}/run/events.sock\ncontrol_endpoint: {control}\n"
                f"alerts_endpoint: ipc://{tmp}/run/alerts.sock\n"
                f"alerts_file: {tmp}/log/alerts.jsonl\nstatus_file: {tmp}/run/status.json\n"
                f"policies_dir: {tmp}/policies.d\nrules_dirs: [{tmp}/rules.d]\n"
                f"journald: false\nadopt_users: []\nstate_dir: {tmp}/state\n")  # fmt: skip
    sup = subprocess.Popen(
        [sys.executable, "-m", "roguewatch.runtime.service", "--config", cfg, "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    cg = SessionCgroup.create(f"rwbench-failclosed-{os.getpid()}")
    agent = subprocess.Popen(["sleep", "100000"])
    freeze: dict[str, list[float]] = {k: [] for k in KINDS}
    back: dict[str, list[float]] = {k: [] for k in KINDS}
    missed = 0
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                ctl = ControlClient(control, timeout_ms=2000)
                ctl.request("ping")
                if ctl.request("stats")["baseline_ready"] and len(_pids(sup.pid)) == 3:
                    break
                ctl.close()
            except ControlError:
                pass
            time.sleep(0.2)
        else:
            print("failclosed_bench: roguewatchd did not come up", file=sys.stderr)
            return 1
        cg.add(agent.pid)
        ctl.request("register", pid=agent.pid, name="bench", cgroup=cg.path, mode="enforce",
                    policy={"egress_allow": ["127.0.0.1/32"]})  # fmt: skip
        ctl.close()
        time.sleep(1.5)  # pinned (the reconcile of the next second)
        for i in range(args.trials):
            kind = KINDS[i % len(KINDS)]
            before = _pids(sup.pid)
            victim = before[kind]
            t0 = time.perf_counter()
            os.kill(victim, signal.SIGKILL)
            while not _frozen(cg):
                if time.perf_counter() - t0 > 10:
                    break
                time.sleep(0.0005)
            else:
                freeze[kind].append((time.perf_counter() - t0) * 1000)
                while _frozen(cg) and time.perf_counter() - t0 < 60:
                    time.sleep(0.005)
                back[kind].append((time.perf_counter() - t0) * 1000)
                # settled: a new process of that kind, the others there, the session thawed
                end = time.monotonic() + 30
                while time.monotonic() < end:
                    now = _pids(sup.pid)
                    if len(now) == 3 and now.get(kind) != victim:
                        break
                    time.sleep(0.05)
                time.sleep(2.5)  # its start-up grace (heartbeat.GRACE_S) is over
                continue
            missed += 1
            print(f"trial {i} ({kind}): no freeze within 10 s", file=sys.stderr)
    finally:
        agent.kill()
        agent.wait()
        sup.send_signal(signal.SIGTERM)
        try:
            sup.wait(30)
        except subprocess.TimeoutExpired:
            sup.kill()
        try:
            cg.thaw()
        except Exception:
            pass
        cg.remove()
    every = [x for k in KINDS for x in freeze[k]]
    res: dict = {"trials": args.trials, "missed": missed}
    for k in KINDS:
        if freeze[k]:
            f = freeze[k]
            res[k] = {"n": len(f), "freeze_p50_ms": round(statistics.median(f), 1),
                      "freeze_p99_ms": _pct(f, 0.99), "freeze_max_ms": round(max(f), 1),
                      "back_p50_ms": round(statistics.median(back[k]), 1),
                      "back_max_ms": round(max(back[k]), 1)}  # fmt: skip
            print(
                f"{k:12s} killed -> session frozen: p50 {res[k]['freeze_p50_ms']} ms, "
                f"p99 {res[k]['freeze_p99_ms']} ms, max {res[k]['freeze_max_ms']} ms; "
                f"-> thawed again: p50 {res[k]['back_p50_ms']} ms ({len(freeze[k])} trials)"
            )
    if every:
        res["all"] = {"n": len(every), "freeze_p50_ms": round(statistics.median(every), 1),
                      "freeze_p99_ms": _pct(every, 0.99),
                      "freeze_max_ms": round(max(every), 1)}  # fmt: skip
        print(
            f"every kill -> session frozen: p50 {res['all']['freeze_p50_ms']} ms, p99 "
            f"{res['all']['freeze_p99_ms']} ms over {len(every)} trials (bar: p99 <= 1000 ms)"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0 if missed == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
