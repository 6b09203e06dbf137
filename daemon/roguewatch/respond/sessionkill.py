"""Ending a live session for good, verified: SIGTERM, a grace period, then `cgroup.kill` (or
SIGKILL to every tracked task, again and again until none is left), and a count of the
survivors found at the end, which must be zero; freezing and thawing one by its cgroup.

Owns the shutdown sequence that `roguewatch kill` and a remote kill from the fleet both run.
It asks the collector (its control client) which processes the session has; it must not
decide whether a kill is allowed: its callers do.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable

import zmq

from roguewatch.stream.control import ControlClient, ControlError


def find_session(
    sessions: Iterable[tuple[ControlClient, dict]], key: str
) -> tuple[ControlClient, dict] | None:
    """The live session whose id (hex, with or without 0x and leading zeros) or name is
    ``key``, with the collector that has it."""
    for c, s in sessions:
        if key in (s["session"], s["name"]) or key.lower().removeprefix("0x").lstrip("0") == (
            s["session"].lstrip("0")
        ):
            return c, s
    return None


_gone: set[int] = set()  # clients whose collector stopped answering


def _pids(client: ControlClient, sid: str) -> list[int]:
    """The session's tracked pids; none once its collector is gone (a `run` whose agent
    ended stops its own collector: what is left of the session is in its cgroup)."""
    if id(client) in _gone:
        return []
    try:
        for s in client.request("sessions")["sessions"]:
            if s["session"] == sid:
                return s["pids"]
    except (ControlError, zmq.ZMQError):
        _gone.add(id(client))  # (a REQ socket that timed out cannot be used again)
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


def freeze_session(s: dict, frozen: bool = True) -> str:
    """Freeze (or thaw) the session's cgroup; what that achieved."""
    cgroup = s.get("cgroup") or ""
    if not cgroup:
        return "not done: the session has no cgroup of its own (an adopted agent)"
    with open(os.path.join(cgroup, "cgroup.freeze"), "w") as f:
        f.write("1" if frozen else "0")
    return "frozen" if frozen else "thawed"
