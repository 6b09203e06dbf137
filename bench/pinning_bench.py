"""Collector restart with and without its kernel side pinned in bpffs (keep-sensors-on-exit).

One collector (no roguewatchd: this script restarts it, at once) on sockets and state of its
own, one session (its own cgroup, a process that forks a child every 250 ms). Each trial kills
the collector with SIGKILL and starts it again; it measures the time from the kill to the new
collector's ready byte (its probes in force, the session taken back), and whether a child the
session forked while no collector ran is in the session map afterwards (a fork followed by the
pinned tracepoints; without pins only the cgroup scan can find it). Alternates pinned and
unpinned trials so that the host's load falls on both alike.

    sudo .venv/bin/python bench/pinning_bench.py [--trials 10] [--json FILE]
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

from roguewatch.host import kernelenv
from roguewatch.respond.cgroups import SessionCgroup
from roguewatch.runtime import launcher, readiness
from roguewatch.sensors import pins
from roguewatch.stream.control import ControlClient

FORKER = r"""
import os, sys, time
d = sys.argv[1]
while True:
    pid = os.fork()
    if pid == 0:
        open(os.path.join(d, "last"), "w").write(str(os.getpid()))
        time.sleep(30)
        os._exit(0)
    time.sleep(0.25)
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass
"""


def _start(cfg: str, errlog) -> tuple[subprocess.Popen, float]:
    r, w = os.pipe()
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "roguewatch.runtime.collectord", "--config", cfg,
         "--ready-fd", str(w), "--no-watch"],
        pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=errlog,
    )  # fmt: skip
    os.close(w)
    if not readiness.wait(r, proc, 120):
        raise SystemExit("the collector did not start")
    return proc, time.monotonic() - t0


def trial_set(tmp: str, pinned: bool, trials: int) -> dict:
    cfg = os.path.join(tmp, f"c-{pinned}.yaml")
    run = os.path.join(tmp, f"run-{pinned}")
    state = os.path.join(tmp, f"state-{pinned}")
    os.makedirs(run)
    with open(cfg, "w") as f:
        f.write(
            f"events_endpoint: ipc://{run}/events.sock\ncontrol_endpoint: ipc://{run}/c.sock\n"
            f"policies_dir: ''\nadopt_users: []\nstate_dir: {state}\n"
            f"keep_sensors_on_exit: {'true' if pinned else 'false'}\n"
        )
    errlog = open(os.path.join(tmp, "stderr"), "a")  # noqa: SIM115 (lives for the trials)
    proc, first = _start(cfg, errlog)
    cg = SessionCgroup.create(f"rwbench-pin-{os.getpid()}-{int(pinned)}")
    ctl = ControlClient(f"ipc://{run}/c.sock")
    work = os.path.join(tmp, f"w-{pinned}")
    os.makedirs(work)

    def register(pid: int) -> int:
        cg.add(pid)
        return int(ctl.request("register", pid=pid, name="bench", cgroup=cg.path,
                               mode="enforce")["session"])  # fmt: skip

    root, sid = launcher.spawn_in_session(["/usr/bin/python3", "-S", "-c", FORKER, work],
                                          register)  # fmt: skip
    ctl.close()
    back, exited, ready, followed = [], [], [], 0
    cg2 = kernelenv.cgroup2_mount() or ""
    try:
        for _ in range(trials):
            time.sleep(0.5)
            proc.send_signal(signal.SIGKILL)
            t_kill = time.monotonic()
            proc.wait()
            exited.append(time.monotonic() - t_kill)
            time.sleep(0.3)  # a fork while no collector runs
            with open(os.path.join(work, "last")) as f:
                gap_child = int(f.read())
            # out of the cgroup, so that only the kernel's own tracking can know it
            with open(os.path.join(cg2, "cgroup.procs"), "w") as f:
                f.write(str(gap_child))
            proc, took = _start(cfg, errlog)
            back.append(time.monotonic() - t_kill - 0.3)
            ready.append(took)
            c = ControlClient(f"ipc://{run}/c.sock")
            tracked = {int(p) for s in c.request("sessions")["sessions"]
                       if s["session"] == f"{sid:x}" for p in s["pids"]}  # fmt: skip
            c.close()
            followed += gap_child in tracked
    finally:
        os.kill(root, signal.SIGKILL)
        os.waitpid(root, 0)
        try:
            cg.kill()
            cg.wait_empty(5)
            cg.remove()
        except Exception:
            pass
        c = ControlClient(f"ipc://{run}/c.sock")
        c.request("stopping")
        c.close()
        proc.terminate()
        proc.wait(30)
        pins.PinSet(pins.pin_root(create=False), pins.instance_name(state), "-").remove()
    back.sort()

    def ms(xs: list[float]) -> dict:
        xs = sorted(xs)
        return {"median": round(statistics.median(xs) * 1000),
                "max": round(xs[-1] * 1000)}  # fmt: skip

    return {
        "exit_ms": ms(exited), "start_ms": ms(ready),
        "pinned": pinned, "first_start_s": round(first, 3), "trials": trials,
        "back_ms": {"median": round(statistics.median(back) * 1000),
                    "p90": round(back[int(0.9 * (len(back) - 1))] * 1000),
                    "max": round(back[-1] * 1000)},
        "gap_fork_tracked": followed,
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="rwbench-pin-") as tmp:
        out = [trial_set(tmp, True, args.trials), trial_set(tmp, False, args.trials)]
    for r in out:
        b = r["back_ms"]
        print(f"{'pinned  ' if r['pinned'] else 'unpinned'} first start {r['first_start_s']} s; "
              f"kill -9 -> exited: {r['exit_ms']}; start -> ready: {r['start_ms']}; "
              f"kill -9 -> collector back: median {b['median']} ms, p90 {b['p90']} ms, max "
              f"{b['max']} ms; a fork made in the gap tracked after: "
              f"{r['gap_fork_tracked']}/{r['trials']}")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
