"""Micro-benchmark: RuleSet evaluation throughput with every default rule, one core.

Not a test. Times ``RuleSet.match`` over a synthetic mix of mostly benign events shaped like
an agent's work (file writes in a workspace, execs, loopback and allowed connections, DNS,
forks, signals) and prints events per second. The evaluator's target is 200,000 events/s.

    .venv/bin/python bench/rules_micro.py [--events N] [--rounds R]
"""

from __future__ import annotations

import argparse
import random
import time

from roguewatch.detect import fields as F
from roguewatch.detect import ruleset as R
from roguewatch.policy.policy import StaticPolicy

ANCESTORS = [{"pid": 4200, "comm": "bash", "exe": "/usr/bin/bash", "cmdline": "bash -c x"}]


class View(F.BaseProcessView):
    def ancestors(self, event: dict) -> list[dict]:
        return ANCESTORS

    def in_session(self, pid: int, session: int) -> bool | None:
        return pid >= 4242

    def venv_root(self, path: str) -> str | None:
        return "/home/u/proj/.venv" if path.startswith("/home/u/proj/.venv/") else None

    def fork_rate(self, session: int) -> float | None:
        return 40.0


def synthetic_events(n: int, seed: int = 1) -> list[dict]:
    rnd = random.Random(seed)
    base = {"session": 7, "pid": 4242, "tid": 4242, "ppid": 4200, "uid": 1000, "gid": 1000,
            "comm": "python3", "exe": "/usr/bin/python3", "exec_id": "4242-1", "ret": 0,
            "flags": [], "ts": 0}  # fmt: skip
    files = ["/home/u/proj/src/main.py", "/home/u/proj/.git/index.lock", "/tmp/pytest-1/x",
             "/home/u/proj/.venv/lib/python3.11/site-packages/a/b.py",
             "/home/u/proj/build/x.o", "/home/u/.cache/pip/http/abc", "/home/u/proj/etc/cron.d/x",
             "/etc/cron.d/job"]  # fmt: skip
    mix = [
        (40, lambda: {"type": "open", "path": rnd.choice(files), "open_flags": 0o1101}),
        (6, lambda: {"type": "rename", "source": "/home/u/proj/a~", "path": rnd.choice(files)}),
        (4, lambda: {"type": "unlink", "path": rnd.choice(files)}),
        (
            10,
            lambda: {
                "type": "exec",
                "filename": "/usr/bin/git",
                "comm": "git",
                "argv": ["git", "status"],
                "cmdline": "git status",
                "cwd": "/home/u/proj",
            },
        ),
        (
            12,
            lambda: {
                "type": "connect",
                "family": "inet",
                "proto": "tcp",
                "port": 443,
                "addr": rnd.choice(["127.0.0.1", "10.20.1.2", "93.184.216.34"]),
            },
        ),
        (
            8,
            lambda: {
                "type": "sendto",
                "family": "inet",
                "proto": "udp",
                "port": 53,
                "addr": "127.0.0.53",
                "dns_name": rnd.choice(["pypi.org", "files.pythonhosted.org", "github.com"]),
            },
        ),
        (10, lambda: {"type": "fork", "child_pid": 5000, "clone_flags": 17, "thread": False}),
        (4, lambda: {"type": "kill", "target": 4243, "sig": 15, "call": "kill"}),
        (3, lambda: {"type": "rt_sigaction", "sig": 15, "handler": "handler"}),
        (3, lambda: {"type": "exit", "code": 0, "signal": 0}),
    ]
    weights = [w for w, _ in mix]
    makers = [m for _, m in mix]
    return [{**base, **rnd.choices(makers, weights)[0]()} for _ in range(n)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    rules = R.load_rules()
    ctx = View(StaticPolicy(egress_allow=("10.20.0.0/16:443/tcp",)))
    evs = synthetic_events(args.events)
    best, alerts = 0.0, 0
    for _ in range(args.rounds):
        alerts = 0
        t0 = time.perf_counter()
        match = rules.match
        for e in evs:
            if match(e, ctx):
                alerts += 1
        dt = time.perf_counter() - t0
        best = max(best, len(evs) / dt)
    # The cost of one trivial Python call on this machine, to compare runs across hosts.
    f = lambda e, c: False  # noqa: E731
    t0 = time.perf_counter()
    for e in evs:
        f(e, ctx)
    call_ns = (time.perf_counter() - t0) / len(evs) * 1e9
    print(f"{len(rules)} rules, {len(evs)} events, {alerts} matched per round")
    print(f"best of {args.rounds}: {best:,.0f} events/s (a trivial Python call: {call_ns:.0f} ns)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
