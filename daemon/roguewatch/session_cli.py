"""`roguewatch sessions`, `kill SESSION` and `thaw SESSION`: the operator's view of sessions.

Owns listing live sessions and the verified shutdown: SIGTERM, a grace period, then
`cgroup.kill` (or SIGKILL to every tracked task, again and again until none is left), and a
count of the survivors found at the end, which must be zero.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections import Counter

from roguewatch import bus
from roguewatch.control import ControlClient, ControlError, running

ALERTS_FILE = "/var/log/roguewatch/alerts.jsonl"


def add_arguments(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sessions", help="list live agent sessions")
    p.add_argument("--json", action="store_true")
    p.add_argument("--control", default=bus.CONTROL_ENDPOINT, help=argparse.SUPPRESS)
    p.set_defaults(fn=cmd_sessions)
    p = sub.add_parser("kill", help="end a session: SIGTERM, grace, then kill all; verified")
    p.add_argument("session", help="session id (hex) or name")
    p.add_argument("--grace", type=float, default=5.0, metavar="SECONDS")
    p.add_argument("--control", default=bus.CONTROL_ENDPOINT, help=argparse.SUPPRESS)
    p.set_defaults(fn=cmd_kill)
    p = sub.add_parser("thaw", help="thaw a frozen session")
    p.add_argument("session", help="session id (hex) or name")
    p.add_argument("--control", default=bus.CONTROL_ENDPOINT, help=argparse.SUPPRESS)
    p.set_defaults(fn=cmd_thaw)


def _client(endpoint: str) -> ControlClient | None:
    if os.geteuid() != 0:
        print("roguewatch: needs root (the control socket is root-only): use sudo",
              file=sys.stderr)  # fmt: skip
        return None
    client = running(endpoint)
    if client is None:
        print("roguewatch: roguewatchd is not running (no answer on the control socket)",
              file=sys.stderr)  # fmt: skip
    return client


def _alert_counts() -> Counter:
    counts: Counter = Counter()
    try:
        with open(ALERTS_FILE) as f:
            for line in f:
                try:
                    counts[json.loads(line).get("session", "")] += 1
                except ValueError:
                    continue
    except OSError:
        pass
    return counts


def cmd_sessions(args: argparse.Namespace) -> int:
    client = _client(args.control)
    if client is None:
        return 2
    sessions = client.request("sessions")["sessions"]
    counts = _alert_counts()
    for s in sessions:
        s["alerts"] = counts.get(s["session"], 0)
    if args.json:
        for s in sessions:
            print(json.dumps(s))
        return 0
    print(f"{'SESSION':<17} {'NAME':<16} {'ROOT':>7} {'PROCS':>5} {'ALERTS':>6} {'MODE':<8} CGROUP")
    for s in sessions:
        cg = s["cgroup"] or "-"
        print(f"{s['session']:<17} {(s['name'] or '-')[:16]:<16} {s['root']:>7} "
              f"{len(s['pids']):>5} {s['alerts']:>6} {s['mode']:<8} {cg}")  # fmt: skip
    return 0


def _find(client: ControlClient, key: str) -> dict | None:
    for s in client.request("sessions")["sessions"]:
        if key in (s["session"], s["name"]) or key.lower().lstrip("0x") == s["session"]:
            return s
    return None


def _pids(client: ControlClient, sid: str) -> list[int]:
    for s in client.request("sessions")["sessions"]:
        if s["session"] == sid:
            return s["pids"]
    return []


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        if pid > 1 and pid != os.getpid():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


def _cgroup_pids(cgroup: str) -> list[int]:
    try:
        with open(os.path.join(cgroup, "cgroup.procs")) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def kill_session(client: ControlClient, s: dict, grace: float) -> tuple[int, int]:
    """(processes ended, survivors). SIGTERM, grace, then cgroup.kill or SIGKILL rounds."""
    sid, cgroup = s["session"], s["cgroup"]
    first = set(_pids(client, sid)) | set(_cgroup_pids(cgroup) if cgroup else [])
    if cgroup:
        try:  # a frozen session cannot handle SIGTERM: thaw it first
            with open(os.path.join(cgroup, "cgroup.freeze"), "w") as f:
                f.write("0")
        except OSError:
            pass
    _signal_all(sorted(first), signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and (_pids(client, sid) or _cgroup_pids(cgroup)):
        time.sleep(0.05)
    if cgroup and _cgroup_pids(cgroup):
        with open(os.path.join(cgroup, "cgroup.kill"), "w") as f:
            f.write("1")
    for _ in range(100):  # without a cgroup: again and again, forks included
        left = _pids(client, sid) + (_cgroup_pids(cgroup) if cgroup else [])
        if not left:
            break
        _signal_all(left, signal.SIGKILL)
        time.sleep(0.02)
    survivors = _pids(client, sid) + (_cgroup_pids(cgroup) if cgroup else [])
    return len(first), len(set(survivors))


def cmd_kill(args: argparse.Namespace) -> int:
    client = _client(args.control)
    if client is None:
        return 2
    s = _find(client, args.session)
    if s is None:
        print(f"roguewatch: no live session {args.session!r} (see `roguewatch sessions`)",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        ended, survivors = kill_session(client, s, args.grace)
    except ControlError as exc:
        print(f"roguewatch: {exc}", file=sys.stderr)
        return 2
    print(f"session {s['session']} ({s['name'] or 'unnamed'}): {ended} processes ended, "
          f"{survivors} survivors")  # fmt: skip
    return 0 if survivors == 0 else 1


def cmd_thaw(args: argparse.Namespace) -> int:
    client = _client(args.control)
    if client is None:
        return 2
    s = _find(client, args.session)
    if s is None or not s["cgroup"]:
        print(f"roguewatch: no live session {args.session!r} with a cgroup", file=sys.stderr)
        return 2
    with open(os.path.join(s["cgroup"], "cgroup.freeze"), "w") as f:
        f.write("0")
    print(f"session {s['session']} thawed")
    return 0
