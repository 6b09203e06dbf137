"""`roguewatch sessions`, `kill SESSION` and `thaw SESSION`: the operator's view of sessions.

Owns listing live sessions and the verified shutdown: SIGTERM, a grace period, then
`cgroup.kill` (or SIGKILL to every tracked task, again and again until none is left), and a
count of the survivors found at the end, which must be zero.

Sessions are asked of every collector that answers: roguewatchd's, and the private one of
each `roguewatch run` (or `record`) started without a service (``launcher.PRIVATE_RUN``).
A session's cgroup is written only through ``respond.cgroups.SessionCgroup``. Every failure
(a cgroup that vanished, a collector that stops answering) is a message and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter

from roguewatch.core.paths import ALERTS_FILE
from roguewatch.outputs.render import printable
from roguewatch.respond.cgroups import CgroupError, SessionCgroup
from roguewatch.respond.sessionkill import Unverified, find_session, kill_session
from roguewatch.runtime import launcher
from roguewatch.stream import bus
from roguewatch.stream.control import ControlClient, ControlError, running


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


def _listening(endpoint: str) -> bool:
    """Whether something accepts connections on an ipc:// socket (a stale one refuses at
    once, where a ZeroMQ request would wait for its timeout)."""
    import socket

    path = bus.ipc_path(endpoint)
    if path is None:
        return True
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(0.5)
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def _clients(endpoint: str) -> list[ControlClient] | None:
    """Every collector that answers: the service's at ``endpoint``, then the private ones of
    `roguewatch run` sessions. None (with a message) when not root or when none answers."""
    if os.geteuid() != 0:
        print("roguewatch: needs root (the control socket is root-only): use sudo",
              file=sys.stderr)  # fmt: skip
        return None
    out = []
    client = running(endpoint)
    if client is not None:
        out.append(client)
    for ep in launcher.private_control_endpoints():
        if ep == endpoint or not _listening(ep):
            continue
        try:
            c = ControlClient(ep, timeout_ms=2000)
            c.request("ping")
        except ControlError:
            continue
        out.append(c)
    if not out:
        print("roguewatch: roguewatchd is not running (no answer on the control socket) and "
              "no `roguewatch run` session is live", file=sys.stderr)  # fmt: skip
        return None
    return out


_FIELDS = {"session": str, "name": str, "root": int, "pids": list, "cgroup": str, "mode": str}


def _all_sessions(clients: list[ControlClient]) -> list[tuple[ControlClient, dict]]:
    out = []
    for c in clients:
        try:
            listed = c.request("sessions").get("sessions")
        except ControlError:
            continue  # a `run` that ended meanwhile
        for s in listed if isinstance(listed, list) else ():
            if isinstance(s, dict) and all(isinstance(s.get(k), t) for k, t in _FIELDS.items()):
                out.append((c, s))
            else:
                print(f"roguewatch: {c.endpoint}: a malformed session entry skipped",
                      file=sys.stderr)  # fmt: skip
    return out


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
    clients = _clients(args.control)
    if clients is None:
        return 2
    sessions = [s for _, s in _all_sessions(clients)]
    counts = _alert_counts()
    for s in sessions:
        s["alerts"] = counts.get(s["session"], 0)
    if args.json:
        for s in sessions:
            print(json.dumps(s))
        return 0
    print(f"{'SESSION':<17} {'NAME':<16} {'ROOT':>7} {'PROCS':>5} {'ALERTS':>6} {'LOST':>7} "
          f"{'MODE':<8} CGROUP")  # fmt: skip
    for s in sessions:
        cg = s["cgroup"] or "-"
        lost = s.get("lost", 0) if isinstance(s.get("lost", 0), int) else 0
        print(printable(f"{s['session']:<17} {(s['name'] or '-')[:16]:<16} {s['root']:>7} "
                        f"{len(s['pids']):>5} {s['alerts']:>6} {lost:>7} {s['mode']:<8} "
                        f"{cg}"))  # fmt: skip
    if any(s.get("lost") for s in sessions):
        print(
            "LOST: records of the session dropped in the kernel over its budget (files and "
            "sockets, while the collector was behind: `roguewatch status`)"
        )
    return 0


def cmd_kill(args: argparse.Namespace) -> int:
    clients = _clients(args.control)
    if clients is None:
        return 2
    found = find_session(_all_sessions(clients), args.session)
    if found is None:
        print(f"roguewatch: no live session {args.session!r} (see `roguewatch sessions`)",
              file=sys.stderr)  # fmt: skip
        return 2
    client, s = found
    try:
        ended, survivors = kill_session(client, s, args.grace)
    except (ControlError, CgroupError, Unverified) as exc:
        print(f"roguewatch: {exc}", file=sys.stderr)
        return 2
    print(f"session {s['session']} ({s['name'] or 'unnamed'}): {ended} processes ended, "
          f"{survivors} survivors")  # fmt: skip
    return 0 if survivors == 0 else 1


def cmd_thaw(args: argparse.Namespace) -> int:
    clients = _clients(args.control)
    if clients is None:
        return 2
    found = find_session(_all_sessions(clients), args.session)
    s = found[1] if found else None
    if s is None or not s["cgroup"]:
        print(f"roguewatch: no live session {args.session!r} with a cgroup", file=sys.stderr)
        return 2
    try:
        SessionCgroup.open(s["cgroup"]).thaw()
    except CgroupError as exc:
        gone = "" if os.path.isdir(s["cgroup"]) else " (it is gone: did the session end?)"
        print(f"roguewatch: cannot thaw session {s['session']}: {exc}{gone}", file=sys.stderr)
        return 2
    print(f"session {s['session']} thawed")
    return 0
