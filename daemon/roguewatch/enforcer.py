"""The enforcer: carries out a rule's action and says what it achieved.

Owns killing (a process, its tracked descendants, a whole session through `cgroup.kill`),
freezing a session (`cgroup.freeze`) and the safety rules around them: only processes of the
session the alert is about, never roguewatch itself, never pid 1, nothing in observe mode.
It runs inside the evaluator process, right where a rule matches, so a kill costs one
syscall and no message. It must not decide *whether* to act: that is the rule's.

Restoring files is the filesystem watchers' (not built yet); egress is refused by the kernel
before the evaluator ever sees the event (`block`).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field

OBSERVE = "observe mode, not enforced"


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


def _cgroup_pids(path: str) -> list[int]:
    try:
        with open(os.path.join(path, "cgroup.procs")) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def _write(path: str, value: str) -> bool:
    try:
        with open(path, "w") as f:
            f.write(value)
        return True
    except OSError:
        return False


class Enforcer:
    def __init__(
        self, table: object, own_pids: set[int] | None = None,
        restorer: Callable[[str, dict], str] | None = None,
    ) -> None:  # fmt: skip
        self.table = table  # evaluator.ProcessTable
        self.restorer = restorer
        self.own = {os.getpid(), os.getppid(), 1, 0} | (own_pids or set())
        self.sessions: dict[int, SessionInfo] = {}
        self.killed = 0

    def session(self, sid: int) -> SessionInfo | None:
        return self.sessions.get(sid)

    def _kill(self, pid: int) -> bool:
        if pid in self.own or pid <= 1:
            return False
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return False
        self.killed += 1
        return True

    def _in_session(self, pid: int, sid: int) -> bool:
        return self.table.in_session(pid, sid) is not False  # unknown: the kernel said so

    def act(self, action: str, ev: dict) -> str:
        """Do ``action`` for the event; the outcome, in words, for the alert."""
        if action == "alert":
            return "alert"
        sid = ev.get("session", 0)
        info = self.sessions.get(sid)
        if info is not None and info.mode == "observe":
            return OBSERVE
        if action == "restore":
            return self.restore(ev, info)
        if sid == 0:
            return "not enforced: the process is in no session"
        if info is not None:
            info.actions[action] = info.actions.get(action, 0) + 1
        pid = ev.get("pid", 0)
        if action == "kill_process":
            if not self._in_session(pid, sid):
                return f"not enforced: pid {pid} is not in session {sid:x}"
            return f"process {pid} killed" if self._kill(pid) else f"process {pid} already gone"
        if action == "kill_tree":
            pids = [pid, *self.descendants(ev.get("exec_id", ""))]
            killed = sum(self._kill(p) for p in pids if self._in_session(p, sid))
            return f"{killed} processes killed" + (
                f", {len(pids) - killed} already gone" if killed < len(pids) else ""
            )
        if action == "kill_session":
            return self.kill_session(sid)
        if action == "freeze":
            return self.freeze(sid)
        return f"not enforced: unknown action {action!r}"

    def restore(self, ev: dict, info: SessionInfo | None) -> str:
        """Kill the writer first (it cannot race the restore), then put the file back."""
        sid, pid, path = ev.get("session", 0), ev.get("pid", 0), ev.get("path", "")
        parts = []
        if sid and pid:
            killed = self._in_session(pid, sid) and self._kill(pid)
            parts.append(f"writer {pid} killed" if killed else f"writer {pid} already gone")
        if not path:
            return "; ".join([*parts, "no path to restore"])
        if self.restorer is None:
            return "; ".join([*parts, "not restored: no restorer (watchers off)"])
        who = {"session": f"{sid:x}", "pid": pid, "exe": ev.get("exe", ""),
               "comm": ev.get("comm", ""), "event": ev.get("type", "")}  # fmt: skip
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
        info = self.sessions.get(sid)
        if info is not None and info.cgroup:
            pids = _cgroup_pids(info.cgroup)
            if _write(os.path.join(info.cgroup, "cgroup.kill"), "1"):
                self.killed += len(pids)
                info.killed += len(pids)
                return f"session killed (cgroup.kill): {len(pids)} processes"
        # No cgroup of its own (an adopted session): every process the table knows in it.
        pids = [r["pid"] for r in self.table.procs.values()
                if r["session"] == sid and not r["exited"]]  # fmt: skip
        killed = sum(self._kill(p) for p in pids)
        if info is not None:
            info.killed += killed
        return f"session killed: {killed} processes"

    def freeze(self, sid: int) -> str:
        info = self.sessions.get(sid)
        if info is None or not info.cgroup:
            return "not enforced: the session has no cgroup to freeze"
        n = len(_cgroup_pids(info.cgroup))
        if _write(os.path.join(info.cgroup, "cgroup.freeze"), "1"):
            return f"session frozen: {n} processes (roguewatch kill or thaw to end it)"
        return "not enforced: cgroup.freeze failed"
