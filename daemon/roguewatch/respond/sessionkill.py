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

from roguewatch.core import procfs
from roguewatch.respond.cgroups import CgroupError, SessionCgroup
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


def _alive(pids: set[int]) -> set[int]:
    """Those of ``pids`` still running (a zombie has ended: only its parent's wait is left)."""
    out = set()
    for p in pids:
        st = procfs.stat(p)
        if st is not None and st.state != "Z":
            out.add(p)
    return out


def _cgroup(path: str) -> SessionCgroup | None:
    """The session's cgroup, or None when it has none or it is gone (nothing left in it)."""
    if not path:
        return None
    try:
        return SessionCgroup.open(path)
    except CgroupError:
        if os.path.exists(path):
            raise  # there, but no cgroup v2 directory
        return None


class Unverified(Exception):
    """The kill was carried out as far as it could be, but its end cannot be verified."""


def kill_session(client: ControlClient, s: dict, grace: float) -> tuple[int, int]:
    """(processes ended, survivors). SIGTERM, grace, then cgroup.kill or SIGKILL rounds.

    Raises CgroupError when the cgroup refuses, Unverified (after the kill) when the
    collector stopped answering and the session has no cgroup to count its processes in."""
    sid = s["session"]
    cg = _cgroup(s["cgroup"])

    def members() -> set[int]:
        return set(_pids(client, sid)) | set(cg.all_pids() if cg is not None else ())

    # What the listing said counts too: the collector may be gone by now.
    first = members() | set(s["pids"]) | ({s["root"]} if s["root"] > 1 else set())
    first = _alive(first)
    if cg is not None:
        cg.set_frozen(False)  # a frozen session cannot handle SIGTERM: thaw it first
    _signal_all(sorted(first), signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and (members() or _alive(first)):
        time.sleep(0.05)
    if cg is not None and cg.all_pids():
        try:
            cg.kill()
        except CgroupError:
            if os.path.isdir(cg.path):
                raise  # (else: removed meanwhile, so empty)
    for _ in range(100):  # without a cgroup: again and again, forks included
        left = members() | _alive(first)
        if not left:
            break
        _signal_all(sorted(left), signal.SIGKILL)
        time.sleep(0.02)
    survivors = members() | _alive(first)
    if id(client) in _gone and cg is None:
        raise Unverified(
            f"session {sid}: its collector ({client.endpoint}) stopped answering during the "
            f"kill and the session has no cgroup: {len(first)} processes it had listed were "
            f"ended ({len(survivors)} left), but children it had not listed cannot be found"
        )
    return len(first), len(survivors)


def freeze_session(s: dict, frozen: bool = True) -> str:
    """Freeze (or thaw) the session's cgroup; what that achieved."""
    cg = _cgroup(s.get("cgroup") or "")
    if cg is None:
        return "not done: the session has no cgroup of its own (an adopted agent)"
    cg.set_frozen(frozen)
    return "frozen" if frozen else "thawed"
