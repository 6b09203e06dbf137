"""The enforcer: carries out a rule's action and says what it achieved.

Owns killing (a process, its tracked descendants, a whole session through `cgroup.kill`),
freezing a session (`cgroup.freeze`) and the safety rules around them: only processes of the
session the alert is about, never roguewatch itself, never pid 1, nothing in observe mode.
It runs inside the evaluator process, right where a rule matches, so a kill costs one
syscall and no message. It must not decide *whether* to act: that is the rule's.

Restoring files is the filesystem watchers' (not built yet); egress is refused by the kernel
before the evaluator ever sees the event (`block`).

A kill goes through a pidfd (``pidfd_open`` + ``pidfd_send_signal``): the signal reaches the
process that was opened, or nobody. And the process that rule matched is killed only if it
had started when its event happened: a process whose pid was freed and reused since (a new
process with the same pid) started later, and is left alone ("already gone").

Before a restore, the writer's death is awaited on its pidfd (at most RESTORE_WAIT_S): a
SIGKILL lets a write that is already in a syscall finish, and that write must not land on
the restored file; and the restore's own work (quarantine, copy, fsync, in the collector)
then does not compete with the dying process for the CPUs.
"""

from __future__ import annotations

import os
import select
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from roguewatch.core import procfs
from roguewatch.core.contracts import ProcessRecord
from roguewatch.respond.cgroups import CgroupError, SessionCgroup

OBSERVE = "observe mode, not enforced"
# How much later than its event the offender may seem to have started: /proc start times
# have clock-tick resolution (10 ms), and event times are wall-clock times converted from boot
# time by the collector, whose offset follows a step of the wall clock within a second. A
# step within that second smaller than this still kills; and a pid is not reused this soon
# (pid_max 32768 would take more than 100,000 forks a second).
START_SLACK_NS = 250_000_000
_HAS_PIDFD = hasattr(os, "pidfd_open") and hasattr(signal, "pidfd_send_signal")
# How long a restore waits for the killed writer to be gone (it usually is far sooner).
RESTORE_WAIT_S = 0.05


def send_kill(pid: int, not_after_ns: int = 0, wait_s: float = 0.0) -> bool:
    """SIGKILL to ``pid`` through a pidfd; False when it is gone. With ``not_after_ns`` (the
    offending event's time) a process that started after it is not the offender: the pid was
    reused, the offender is gone. With ``wait_s``, until the process has exited (its pidfd
    readable) or that long."""
    try:
        fd = os.pidfd_open(pid) if _HAS_PIDFD else -1
    except ProcessLookupError:
        return False
    except OSError:  # no pidfd for it (EMFILE, or a thread id on an older kernel): plain kill
        fd = -1
    if fd < 0:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return False
        return True
    try:
        if not_after_ns:
            start = procfs.started_wall_ns(pid)  # the pidfd's process while it is not reaped
            if start is None or start > not_after_ns + START_SLACK_NS:
                return False
        signal.pidfd_send_signal(fd, signal.SIGKILL)
        if wait_s > 0:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            poller.poll(int(wait_s * 1000))
    except ProcessLookupError:
        return False
    finally:
        os.close(fd)
    return True


@dataclass
class SessionInfo:
    """What the enforcer knows of a session (from its `session` start event)."""

    session: int
    root: int = 0
    name: str = ""
    cgroup: str = ""
    mode: str = "enforce"
    killed: int = 0
    actions: dict[str, int] = field(default_factory=dict)


class ProcessLookup(Protocol):
    """What the enforcer needs of the evaluator's process table (``detect.proctable``)."""

    procs: Mapping[str, ProcessRecord]

    def in_session(self, pid: int, session: int) -> bool | None: ...


class Enforcer:
    def __init__(
        self, table: ProcessLookup, own_pids: set[int] | None = None,
        restorer: Callable[[str, dict], str] | None = None,
    ) -> None:  # fmt: skip
        self.table = table
        self.restorer = restorer
        self.own = {os.getpid(), os.getppid(), 1, 0} | (own_pids or set())
        self.sessions: dict[int, SessionInfo] = {}
        self.killed = 0

    def session(self, sid: int) -> SessionInfo | None:
        return self.sessions.get(sid)

    def start_session(self, sid: int, root: int, name: str, cgroup: str, mode: str) -> None:
        self.sessions[sid] = SessionInfo(sid, root, name, cgroup, mode)

    def session_count(self) -> int:
        return len(self.sessions)

    def _kill(self, pid: int, not_after_ns: int = 0, wait_s: float = 0.0) -> bool:
        if pid in self.own or pid <= 1:
            return False
        if not send_kill(pid, not_after_ns, wait_s):
            return False
        self.killed += 1
        return True

    def _in_session(self, pid: int, sid: int) -> bool:
        return self.table.in_session(pid, sid) is not False  # unknown: the kernel said so

    def act(self, action: str, ev: dict, rule: str = "") -> str:
        """Do ``action`` for the event (for ``rule``); the outcome, in words, for the alert."""
        if action == "alert":
            return "alert"
        sid = ev.get("session", 0)
        info = self.sessions.get(sid)
        if info is not None and info.mode == "observe":
            return OBSERVE
        if action == "restore":
            return self.restore(ev, info, rule)
        if sid == 0:
            return "not enforced: the process is in no session"
        if info is not None:
            info.actions[action] = info.actions.get(action, 0) + 1
        pid = ev.get("pid", 0)
        if action == "kill_process":
            if not self._in_session(pid, sid):
                return f"not enforced: pid {pid} is not in session {sid:x}"
            killed = self._kill(pid, ev.get("ts", 0))
            return f"process {pid} killed" if killed else f"process {pid} already gone"
        if action == "kill_tree":
            # The offender as of its event; descendants as the table knows them now.
            ts = ev.get("ts", 0)
            pids = [pid, *self.descendants(ev.get("exec_id", ""))]
            killed = sum(
                self._kill(p, ts if p == pid else 0) for p in pids if self._in_session(p, sid)
            )
            return f"{killed} processes killed" + (
                f", {len(pids) - killed} already gone" if killed < len(pids) else ""
            )
        if action == "kill_session":
            return self.kill_session(sid)
        if action == "freeze":
            return self.freeze(sid)
        return f"not enforced: unknown action {action!r}"

    def restore(self, ev: dict, info: SessionInfo | None, rule: str = "") -> str:
        """Kill the writer first and let it be gone (it cannot race the restore), then put
        the file back."""
        sid, pid, path = ev.get("session", 0), ev.get("pid", 0), ev.get("path", "")
        parts = []
        if sid and pid:
            killed = self._in_session(pid, sid) and self._kill(pid, ev.get("ts", 0), RESTORE_WAIT_S)
            parts.append(f"writer {pid} killed" if killed else f"writer {pid} already gone")
        if not path:
            return "; ".join([*parts, "no path to restore"])
        if self.restorer is None:
            return "; ".join([*parts, "not restored: no restorer (watchers off)"])
        who = {"session": f"{sid:x}", "pid": pid, "exe": ev.get("exe", ""),
               "comm": ev.get("comm", ""), "event": ev.get("type", ""), "rule": rule,
               "source": ev.get("source", "") or "", "mode": ev.get("mode", 0) or 0,
               "xattr": ev.get("name", "") if ev.get("type") == "setxattr" else "",
               "open_flags": ev.get("open_flags", 0) or 0}  # fmt: skip
        parts.append(self.restorer(path, who))
        return "; ".join(parts)

    def descendants(self, exec_id: str) -> list[int]:
        procs = self.table.procs
        children: dict[str, list[str]] = {}
        for eid, rec in procs.items():
            if not rec["exited"]:
                children.setdefault(rec["pexec_id"], []).append(eid)
        out, todo = [], list(children.get(exec_id, ()))
        while todo:
            eid = todo.pop()
            out.append(procs[eid]["pid"])
            todo.extend(children.get(eid, ()))
        return out

    def kill_session(self, sid: int) -> str:
        """``cgroup.kill`` of the session's cgroup (atomic, forks included), then every live
        process the table knows in the session that is not in it: the kill follows the
        process, not the cgroup (a task moved out of it is no less the session's)."""
        info = self.sessions.get(sid)
        in_cgroup: set[int] = set()
        n = -1
        if info is not None and info.cgroup:
            cg = SessionCgroup(info.cgroup)
            try:
                in_cgroup = set(cg.all_pids())
                n = cg.kill()
            except CgroupError:
                n = -1  # gone, or not a cgroup we can kill: every process the table knows
        pids = [r["pid"] for r in self.table.procs.values()
                if r["session"] == sid and not r["exited"]
                and r["pid"] not in in_cgroup]  # fmt: skip
        outside = sum(self._kill(p) for p in pids)
        if n >= 0:
            self.killed += n
            info.killed += n + outside  # type: ignore[union-attr]
            extra = f", and {outside} outside it" if outside else ""
            return f"session killed (cgroup.kill): {n} processes{extra}"
        if info is not None:
            info.killed += outside
        return f"session killed: {outside} processes"

    def freeze(self, sid: int) -> str:
        info = self.sessions.get(sid)
        if info is None or not info.cgroup:
            return "not enforced: the session has no cgroup to freeze"
        cg = SessionCgroup(info.cgroup)
        try:
            n = len(cg.all_pids())
            cg.set_frozen(True)
        except CgroupError as exc:
            return f"not enforced: {exc}"
        return f"session frozen: {n} processes (roguewatch kill or thaw to end it)"
