"""Enforcement benchmark (issue 4, "Performance"): in-kernel denial, match -> dead, start-up.

Run as root from the repository: ``.venv/bin/python bench/enforcement_bench.py [--quick]
[--only deny,kill,startup] [--json FILE]``. Every figure comes from real `roguewatch run`
sessions (embedded mode when no roguewatchd answers on its control socket: said in the output).

deny     an agent under ``roguewatch run --policy P`` (P allows 127.0.0.1/32 only) connects to a
         listener on 127.0.0.9 in a loop (200 trials in one session, plus a few short sessions);
         the listener counts what it accepted (bar: 0 in every trial), and the agent times
         connect() -> EPERM with time.perf_counter_ns around the call.
kill     an agent forks children one after the other; each writes time.time_ns() to a pipe and
         creates /etc/cron.d/roguewatch-bench-kill-<n> (rule persistence_cron_write, action
         kill_process), then sleeps; the parent waits for its death (os.waitpid) and takes
         time.time_ns(). Match -> dead ~ death - action. Quiet, and with a generator in the same
         session doing 50,000 kill(getpid(), 0) per second. Bars: p99 <= 5 ms quiet, <= 20 ms
         loaded.
startup  ``roguewatch run -- python3 -S -c 'print(time.time_ns())'``: invocation -> the agent's
         first instruction (bar: <= 1.5 s, median of >= 10 runs), and the wall time of
         ``run -- true`` against plain ``true``.

``--trace`` (kill): where the time of each trial goes, from timestamps taken in the session's
own processes (``bench/killtrace/sitecustomize.py`` on their PYTHONPATH): agent (its time_ns
-> the event's kernel time), collector (-> the batch holding it published), bus (-> the
evaluator received that batch), evaluator (-> the SIGKILL syscall), death (the syscall -> the
parent's waitpid returned: the victim's exit and the parent's wake-up).
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchlib import cleanup_cron, log

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RW = str(ROOT / ".venv" / "bin" / "roguewatch")
AGENT_PY = "/usr/bin/python3"
KILL_PREFIX = "/etc/cron.d/roguewatch-bench-kill-"
DENY_ADDR = "127.0.0.9"

BAR_KILL_QUIET_MS = 5.0
BAR_KILL_LOADED_MS = 20.0
BAR_START_S = 1.5

DENY_AGENT = r"""
import errno, json, socket, sys, time
addr, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
times, errs = [], {}
for _ in range(n):
    s = socket.socket()
    t0 = time.perf_counter_ns()
    try:
        s.connect((addr, port))
        e = 0
    except OSError as exc:
        e = exc.errno
    t1 = time.perf_counter_ns()
    s.close()
    name = errno.errorcode.get(e, str(e)) if e else "connected"
    errs[name] = errs.get(name, 0) + 1
    if e == errno.EPERM:
        times.append(t1 - t0)
print("RESULT " + json.dumps({"times": times, "errs": errs}), flush=True)
"""

KILL_AGENT = r"""
import json, os, subprocess, sys, time
n, prefix, gap, gen = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), sys.argv[4:]
bg = None
if gen:  # background load in this same session, through the same collector and evaluator
    bg = subprocess.Popen(gen, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    bg.stdin.write(b"1")
    bg.stdin.close()
    time.sleep(1.0)
out = []
for i in range(n):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.write(w, str(time.time_ns()).encode())
        with open(f"{prefix}{i}", "w"):
            pass
        time.sleep(5)
        os._exit(0)
    os.close(w)
    t_act = int(os.read(r, 64))
    os.close(r)
    _, st = os.waitpid(pid, 0)
    t_dead = time.time_ns()
    sig = os.WTERMSIG(st) if os.WIFSIGNALED(st) else 0
    out.append([t_dead - t_act, sig, t_act])
    time.sleep(gap)
if bg is not None:
    bg.kill()
    bg.wait()
print("RESULT " + json.dumps(out), flush=True)
"""


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def daemon_running() -> bool:
    from roguewatch.stream.control import running

    client = running()
    if client is None:
        return False
    client.close()
    return True


def run_session(argv: list[str], policy: str | None, timeout: float,
                env: dict | None = None) -> tuple[int, str, str]:  # fmt: skip
    cmd = [RW, "run", "--json", *(["--policy", policy] if policy else []), "--", *argv]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    return r.returncode, r.stdout, r.stderr


def result_of(stdout: str) -> object:
    for ln in stdout.splitlines():
        if ln.startswith("RESULT "):
            return json.loads(ln[7:])
    raise SystemExit(f"the agent printed no result:\n{stdout}")


# -- a: in-kernel denial ---------------------------------------------------------------------


class Listener(threading.Thread):
    """A TCP listener on 127.0.0.9 that counts every connection it accepts."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((DENY_ADDR, 0))
        self.sock.listen(512)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.stopping = False

    def run(self) -> None:
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.stopping = True
        self.join(1)
        self.sock.close()


def run_deny(args: argparse.Namespace, results: dict) -> None:
    log("== a. in-kernel egress denial (agent -> 127.0.0.9, policy allows 127.0.0.1/32)")
    policy = os.path.join(args.tmp, "policy.yaml")
    with open(policy, "w") as f:
        f.write("mode: enforce\negress:\n  allow: [127.0.0.1/32]\n")
    lst = Listener()
    lst.start()
    # Reference: the same connect() to the listener without roguewatch (it is accepted).
    ref = subprocess.run([AGENT_PY, "-S", "-c", DENY_AGENT, DENY_ADDR, str(lst.port), "50"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    ref_res = result_of(ref.stdout)
    time.sleep(0.3)
    ref_accepted = lst.accepted
    lst.accepted = 0
    n_main = 100 if args.quick else 250
    sessions = [n_main] + [20] * (1 if args.quick else 3)
    times: list[int] = []
    per_session = []
    for n in sessions:
        before = lst.accepted
        rc, out, err = run_session(
            [AGENT_PY, "-S", "-c", DENY_AGENT, DENY_ADDR, str(lst.port), str(n)], policy, 120
        )
        res = result_of(out)
        time.sleep(0.2)
        accepted = lst.accepted - before
        alerts = [json.loads(ln) for ln in err.splitlines() if ln.startswith("{")]
        blocks = sum(1 for a in alerts if a.get("outcome") == "denied in kernel")
        per_session.append({"trials": n, "accepted": accepted, "errors": res["errs"],
                            "block_alerts": blocks, "exit": rc})  # fmt: skip
        times += res["times"]
        log(f"   session of {n:>3} trials: accepted by the listener {accepted}, agent saw "
            f"{res['errs']}, alerts 'denied in kernel': {blocks}, exit {rc}")  # fmt: skip
    lst.close()
    trials = sum(sessions)
    accepted_total = sum(s["accepted"] for s in per_session)
    eperm = sum(s["errors"].get("EPERM", 0) for s in per_session)
    us = [t / 1000 for t in times]
    ref_us = [t / 1000 for t in ref_res["times"]] or [0.0]
    log(f"   {trials} trials in {len(sessions)} sessions: {accepted_total} accepted, "
        f"{eperm} EPERM; "
        f"connect() -> EPERM median {statistics.median(us):.1f} us, p99 {pct(us, 99):.1f} us "
        f"(max {max(us):.1f} us)")  # fmt: skip
    log(f"   reference without roguewatch: {ref_res['errs']}, listener accepted {ref_accepted}")
    results["deny"] = {
        "trials": trials, "sessions": per_session, "accepted": accepted_total, "eperm": eperm,
        "median_us": statistics.median(us), "p99_us": pct(us, 99), "max_us": max(us),
        "reference": {"errs": ref_res["errs"], "accepted": ref_accepted, "median_us": ref_us},
        "met": accepted_total == 0 and eperm == trials,
    }  # fmt: skip


# -- b: rule match -> process dead -----------------------------------------------------------


def build_generator(tmp: str) -> str:
    sys.path.insert(0, str(BENCH))
    from evaluator_bench import GEN_C

    src, exe = os.path.join(tmp, "gen.c"), os.path.join(tmp, "gen")
    with open(src, "w") as f:
        f.write(GEN_C)
    subprocess.run(["gcc", "-O2", "-o", exe, src], check=True)
    return exe


PHASES = ("agent", "collector", "bus", "evaluator", "death")


def trace_phases(samples: list, trace_dir: str) -> dict:
    """Per trial, the milliseconds of each phase (see --trace), from the session's traces."""
    recs: dict[str, list[list[int]]] = {}
    for name in os.listdir(trace_dir):
        with open(os.path.join(trace_dir, name)) as f:
            for line in f:
                kind, *vals = line.split()
                recs.setdefault(kind, []).append([int(v) for v in vals])
    pub = {r[0]: r[1] for r in recs.get("pub", [])}
    recv = {r[0]: r[1] for r in recs.get("recv", [])}
    act = {r[0]: r[1] for r in recs.get("act", [])}
    kills = sorted(r[1:] for r in recs.get("kill", []))
    starts = [k[0] for k in kills]
    events = sorted(act)
    out: dict[str, list[float]] = {p: [] for p in PHASES}
    for dt, _sig, t_act in samples:
        i = bisect.bisect_left(events, t_act)
        if i == len(events) or events[i] not in recv:
            continue
        ts = events[i]
        j = bisect.bisect_left(starts, act[ts])
        if j == len(kills):
            continue
        k0 = kills[j][0]
        p = pub.get(ts)
        out["agent"].append((ts - t_act) / 1e6)
        if p is not None:
            out["collector"].append((p - ts) / 1e6)
            out["bus"].append((recv[ts] - p) / 1e6)
        out["evaluator"].append((k0 - recv[ts]) / 1e6)
        out["death"].append((t_act + dt - k0) / 1e6)
    return {
        ph: {"n": len(v), "p50_ms": statistics.median(v), "p90_ms": pct(v, 90),
             "p99_ms": pct(v, 99), "max_ms": max(v)}
        for ph, v in out.items() if v
    }  # fmt: skip


def kill_trials(args: argparse.Namespace, n: int, load: int) -> dict:
    gen = []
    if load:
        gen = [args.gen, str(load), "600", "0", os.path.join(args.tmp, "never-")]
    prefix = f"{KILL_PREFIX}{load}-"
    env = trace_dir = None
    if args.trace:
        trace_dir = os.path.join(args.tmp, f"trace-{load}")
        os.makedirs(trace_dir)
        path = [str(BENCH / "killtrace"), *filter(None, [os.environ.get("PYTHONPATH")])]
        env = dict(os.environ, RW_TRACE=trace_dir, PYTHONPATH=os.pathsep.join(path))
    rc, out, err = run_session([AGENT_PY, "-S", "-c", KILL_AGENT, str(n), prefix, "0.01", *gen],
                               None, 300, env)  # fmt: skip
    res = result_of(out)
    ms = [r[0] / 1e6 for r in res]
    killed = sum(1 for r in res if r[1] == 9)
    alerts = [json.loads(ln) for ln in err.splitlines() if ln.startswith("{")]
    kills = [a for a in alerts if a.get("rule") == "persistence_cron_write"]
    lost = [a.get("message", "") for a in alerts if a.get("rule") == "roguewatch_events_lost"]
    return {"trials": len(res), "killed": killed, "p50_ms": statistics.median(ms),
            "p90_ms": pct(ms, 90), "p99_ms": pct(ms, 99), "max_ms": max(ms), "alerts": len(kills),
            "outcomes": sorted({a.get("outcome", "") for a in kills})[:3], "exit": rc,
            "load": load, "loadavg": os.getloadavg()[0],
            "loss_alerts": len(lost), "last_loss": lost[-1] if lost else "",
            "samples": res,
            "phases": trace_phases(res, trace_dir) if trace_dir else {}}  # fmt: skip


def run_kill(args: argparse.Namespace, results: dict) -> None:
    log("== b. rule match -> offending process dead (kill_process on a cron write)")
    n = 100 if args.quick else 220
    out = {}
    for name, load, bar in (("quiet", 0, BAR_KILL_QUIET_MS),
                            ("loaded", 50_000, BAR_KILL_LOADED_MS)):  # fmt: skip
        r = kill_trials(args, n, load)
        r["bar_p99_ms"] = bar
        r["met"] = r["p99_ms"] <= bar and r["killed"] == r["trials"]
        out[name] = r
        log(f"   {name:6s} ({load:,} background events/s): {r['killed']}/{r['trials']} killed "
            f"by SIGKILL; action -> dead p50 {r['p50_ms']:.2f} ms, p90 {r['p90_ms']:.2f} ms, "
            f"p99 {r['p99_ms']:.2f} ms, max {r['max_ms']:.2f} ms (load avg {r['loadavg']:.1f}); "
            f"{r['alerts']} alerts, outcomes {r['outcomes']}")  # fmt: skip
        if r["loss_alerts"]:
            log(f"     loss alerts: {r['loss_alerts']}, last: {r['last_loss']}")
        for ph, v in r["phases"].items():
            log(f"     {ph:9s} p50 {v['p50_ms']:7.2f} ms, p90 {v['p90_ms']:7.2f}, "
                f"p99 {v['p99_ms']:7.2f}, max {v['max_ms']:7.2f} ({v['n']} trials)")  # fmt: skip
    results["kill"] = out


# -- c: start-up -----------------------------------------------------------------------------


def timed(argv: list[str]) -> tuple[float, float | None]:
    """(wall seconds, seconds from invocation to the agent's first printed time_ns)."""
    t0 = time.time_ns()
    m0 = time.monotonic()
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    wall = time.monotonic() - m0
    first = None
    for ln in r.stdout.splitlines():
        if ln.strip().isdigit():
            first = (int(ln) - t0) / 1e9
            break
    return wall, first


def run_startup(args: argparse.Namespace, results: dict) -> None:
    log("== c. start-up: roguewatch run -> the agent's first instruction")
    embedded = not daemon_running()
    log(f"   mode: {'embedded (no roguewatchd answering)' if embedded else 'roguewatchd running'}")
    runs = 5 if args.quick else 10
    agent = [AGENT_PY, "-S", "-c", "import time; print(time.time_ns())"]
    to_agent, run_agent, run_true, plain_true, plain_agent = [], [], [], [], []
    for _ in range(runs):
        w, first = timed([RW, "run", "--", *agent])
        run_agent.append(w)
        if first is not None:
            to_agent.append(first)
        run_true.append(timed([RW, "run", "--", "/bin/true"])[0])
        plain_true.append(timed(["/bin/true"])[0])
        plain_agent.append(timed(agent)[0])
    med = statistics.median(to_agent)
    log(
        f"   invocation -> agent's first instruction: median {med:.3f} s, "
        f"min {min(to_agent):.3f} s, max {max(to_agent):.3f} s ({len(to_agent)} runs)"
    )
    log(
        f"   wall: run -- true {statistics.median(run_true):.3f} s vs true "
        f"{statistics.median(plain_true) * 1000:.1f} ms; run -- python3 -S "
        f"{statistics.median(run_agent):.3f} s vs {statistics.median(plain_agent) * 1000:.1f} ms"
    )
    results["startup"] = {
        "embedded": embedded, "runs": runs, "to_agent_median_s": med,
        "to_agent_min_s": min(to_agent), "to_agent_max_s": max(to_agent),
        "run_true_median_s": statistics.median(run_true),
        "true_median_s": statistics.median(plain_true),
        "run_agent_median_s": statistics.median(run_agent),
        "agent_median_s": statistics.median(plain_agent),
        "bar_s": BAR_START_S, "met": med <= BAR_START_S,
    }  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer trials and runs")
    ap.add_argument("--only", default="deny,kill,startup", help="comma-separated sections")
    ap.add_argument("--json", help="write the results here as JSON")
    ap.add_argument("--trace", action="store_true", help="kill: where each trial's time goes")
    args = ap.parse_args()
    only = set(args.only.split(","))
    if os.geteuid() != 0:
        print("enforcement_bench: needs root (roguewatch run)", file=sys.stderr)
        return 2
    t_start = time.monotonic()
    results: dict = {"date": time.strftime("%Y-%m-%d"), "kernel": os.uname().release,
                     "cpus": os.cpu_count(), "quick": args.quick,
                     "roguewatchd_running": daemon_running()}  # fmt: skip
    args.tmp = tempfile.mkdtemp(prefix="rw-enfbench-")
    try:
        if "deny" in only:
            run_deny(args, results)
        if "kill" in only:
            args.gen = build_generator(args.tmp)
            run_kill(args, results)
        if "startup" in only:
            run_startup(args, results)
    finally:
        cleanup_cron()
        shutil.rmtree(args.tmp, ignore_errors=True)
    results["runtime_s"] = time.monotonic() - t_start
    log(f"== done in {results['runtime_s']:.0f} s")
    verdicts = {"deny": results.get("deny", {}).get("met"),
                "kill quiet": results.get("kill", {}).get("quiet", {}).get("met"),
                "kill loaded": results.get("kill", {}).get("loaded", {}).get("met"),
                "startup": results.get("startup", {}).get("met")}  # fmt: skip
    for k, v in verdicts.items():
        if v is not None:
            log(f"   {k:12s} {'met' if v else 'NOT MET'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
