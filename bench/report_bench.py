"""The session report of a long, busy session: a synthetic 10-minute session of 1,000,000
events (2,000 processes; opens, connects allowed and denied, signals, a drill), written as a
chained recording with its chained alert log, then `report` made of it (the CLI's own
``build`` and ``render_html``): time and page size, against the bars of issue 13 (report of
1 M events ≤ 10 s, page ≤ 5 MB). Also: the same without the alert log (the rules replayed
over the recording), and ``verify`` of the recording.

    .venv/bin/python bench/report_bench.py [--events N] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time

from roguewatch.cli import report as report_cli
from roguewatch.outputs import alerts as alerts_mod
from roguewatch.outputs.report import render_html
from roguewatch.stream import recording

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")

SID = 0x5E55
T0 = 1_790_000_000 * 10**9
SPAN_NS = 600 * 10**9  # ten minutes


def synth(path: str, alerts_path: str, n: int) -> None:
    rnd = random.Random(13)
    w = recording.Writer(path, ["/usr/bin/python3", "agent.py"], SID)
    root = 1000
    w.write({"type": "session", "kind": "start", "ts": T0, "session": SID, "pid": root,
             "root": root, "name": "agent", "cgroup": "/sys/fs/cgroup/roguewatch/agent",
             "mode": "enforce", "policy": {"egress_allow": ["127.0.0.1/32"], "protect": [],
                                            "mode": "enforce", "lists": {}}})  # fmt: skip
    w.write({"type": "exec", "ts": T0 + 1, "session": SID, "pid": root, "ppid": 1, "uid": 1000,
             "comm": "python3", "exe": "/usr/bin/python3.11", "exec_id": f"{root}-1",
             "cmdline": "/usr/bin/python3 agent.py", "cwd": "/srv/work", "flags": []})  # fmt: skip
    alive = [root]
    next_pid = root + 1
    af = alerts_mod.AlertFile(alerts_path, chained=True, max_bytes=1 << 40)
    seq = 0
    for i in range(n - 2):
        ts = T0 + 2 + i * SPAN_NS // n
        r = rnd.random()
        pid = rnd.choice(alive)
        base = {"ts": ts, "session": SID, "pid": pid, "tid": pid, "ppid": root, "uid": 1000,
                "gid": 1000, "comm": "python3", "ret": 0, "flags": [],
                "exec_id": f"{pid}-1", "exe": "/usr/bin/python3.11"}  # fmt: skip
        if r < 0.002 and next_pid < root + 2000:
            child = next_pid
            next_pid += 1
            w.write({**base, "type": "fork", "child_pid": child, "thread": False,
                     "child_exec_id": f"{child}-1"})  # fmt: skip
            w.write({**base, "type": "exec", "pid": child, "exec_id": f"{child}-2",
                     "cmdline": f"/bin/sh -c make -j2 target{child % 50}",
                     "exe": "/bin/sh"})  # fmt: skip
            alive.append(child)
        elif r < 0.004 and len(alive) > 1:
            victim = alive.pop(rnd.randrange(1, len(alive)))
            w.write({**base, "type": "exit", "pid": victim, "code": 0, "signal": 0})
        elif r < 0.70:
            inside = rnd.random() < 0.97
            path_ = (f"/srv/work/build/obj{rnd.randrange(5000)}.o" if inside else
                     f"/tmp/cache/blob{rnd.randrange(300)}")  # fmt: skip
            w.write({**base, "type": "open", "path": path_, "open_flags": 577, "mode": 0o644})
        elif r < 0.95:
            denied = rnd.random() < 0.05
            addr = f"203.0.113.{rnd.randrange(40)}" if denied else "127.0.0.1"
            ev = {**base, "type": "connect", "fd": 3, "family": "inet", "addr": addr,
                  "port": 443 if denied else 8080, "proto": "tcp",
                  "ret": -1 if denied else 0, "flags": ["denied"] if denied else []}  # fmt: skip
            w.write(ev)
            if denied and rnd.random() < 0.02:
                seq += 1
                af.send({"id": f"b-{seq}", "ts": "2026-09-21T12:00:00.000000Z",
                         "rule": "egress_unauthorized_destination", "message": "egress",
                         "category": "egress", "severity": "critical", "tags": [],
                         "session": f"{SID:x}", "pid": pid, "comm": "python3", "exe": "",
                         "cmdline": "", "exec_id": f"{pid}-1", "lineage": [],
                         "event": {k: v for k, v in ev.items() if k not in ("ts", "session")},
                         "action": "block", "outcome": "denied in kernel", "count": 1,
                         "killed": 0})  # fmt: skip
        else:
            w.write({**base, "type": "rt_sigaction", "sig": 2, "handler": "handler"})
        if i % 1000 == 999:
            w.seal()
    w.close()
    af.close()


def measure(events: int) -> dict:
    d = tempfile.mkdtemp(prefix="rw-report-bench-")
    rec, alerts_path = f"{d}/s.rwrec", f"{d}/s.alerts.jsonl"
    t = time.perf_counter()
    synth(rec, alerts_path, events)
    out = {"events": events, "synth_s": round(time.perf_counter() - t, 2),
           "recording_mb": round(os.path.getsize(rec) / 1e6, 1)}  # fmt: skip
    t, cpu = time.perf_counter(), time.process_time()
    rep = report_cli.build(rec, alerts_path)
    html = render_html(rep)
    out["report_s"] = round(time.perf_counter() - t, 2)
    # (CPU time: on a host shared with other work, wall time counts their share too)
    out["report_cpu_s"] = round(time.process_time() - cpu, 2)
    out["load_average"] = os.getloadavg()[0]
    out["html_mb"] = round(len(html.encode()) / 1e6, 2)
    out["json_mb"] = round(len(json.dumps(rep, default=str)) / 1e6, 2)
    out["timeline_rows"] = len(rep["timeline"])
    out["processes"] = rep["summary"]["processes"]
    out["integrity"] = rep["integrity"]["status"]
    t, cpu = time.perf_counter(), time.process_time()
    out["verify"] = recording.verify(rec)["status"]
    out["verify_s"] = round(time.perf_counter() - t, 2)
    out["verify_cpu_s"] = round(time.process_time() - cpu, 2)
    os.unlink(alerts_path)  # now the rules are replayed over it
    t, cpu = time.perf_counter(), time.process_time()
    report_cli.build(rec)
    out["report_with_replay_s"] = round(time.perf_counter() - t, 2)
    out["report_with_replay_cpu_s"] = round(time.process_time() - cpu, 2)
    for f in os.listdir(d):
        os.unlink(os.path.join(d, f))
    os.rmdir(d)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--quick", action="store_true", help="100,000 events")
    args = ap.parse_args()
    res = measure(100_000 if args.quick else args.events)
    print(json.dumps(res, indent=1))
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, f"report-{time.strftime('%Y%m%d-%H%M%S')}.json"), "w") as f:
        json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
