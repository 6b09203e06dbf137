"""The process table: every tracked process by exec id, with what rules ask of it.

Owns the evaluator's memory of processes (by exec id, and the current exec id of each pid),
their ancestry up to the session's root, fork rates per session, the session policies that
conditions see (``use_policy_of``), and the recent probe events per path that let a watcher
change be attributed to the session that made it. An exited process is kept for a grace
period (late events, lineage of its children), and the table stays under MAX_PROCS.

It is the evaluator's ``fields.ProcessView``; it never judges or acts.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Mapping
from types import MappingProxyType

from roguewatch.core import procfs
from roguewatch.core.cache import BoundedDict
from roguewatch.core.contracts import ProcessRecord
from roguewatch.detect.fields import DEFAULT_PATH, BaseProcessView, Policy, split_path
from roguewatch.detect.homes import HOMES
from roguewatch.host import kernelenv
from roguewatch.policy.policy import StaticPolicy

GRACE_NS = 30 * 1_000_000_000
# A watcher event this close to a probe event on the same path is that event's doing.
ATTRIBUTION_NS = 2 * 1_000_000_000
_PATH_TYPES = frozenset({"open", "rename", "unlink", "link", "symlink", "chmod", "chown",
                         "truncate", "utimes", "setxattr"})  # fmt: skip
# Event types that change a process record beyond creating it (ProcessTable.update).
_PROC_TYPES = frozenset({"exec", "fork", "exit", "chdir", "task_rename"})
RECENT_PATHS_MAX = 16384
_NO_SESSION = object()  # ProcessTable.policy_session before any pick (and after set_policy)
MAX_PROCS = 65536
MAX_LINEAGE = 64
MAX_SESSION_PATHS = 32  # distinct PATH values remembered per session


class ProcessTable(BaseProcessView):
    """Processes by exec id, with what rules ask of them (a ``fields.ProcessView``)."""

    def __init__(self, policy: Policy | None = None, grace_ns: int = GRACE_NS) -> None:
        super().__init__(policy or StaticPolicy())
        self.lists = getattr(self.policy, "lists", {}) or {}
        self.procs: dict[str, ProcessRecord] = {}
        self.by_pid: dict[int, str] = {}
        self._exited: deque[tuple[int, str]] = deque()
        self._forks: dict[int, deque[int]] = {}
        self._live: dict[int, int] = {}  # session -> processes alive in it (by the table)
        # session -> the PATHs its processes were exec'd with (the system default first)
        self._paths: dict[int, list[tuple[str, ...]]] = {}
        self.grace_ns = grace_ns
        self.evicted = 0
        self.default_policy = self.policy
        # Policies by session; change them with set_policy (use_policy_of caches its pick).
        self._policies: dict[int, Policy] = {}
        self.policies: Mapping[int, Policy] = MappingProxyType(self._policies)
        self.policy_session: object = _NO_SESSION  # the session use_policy_of last picked for
        # The last probe event that touched each path: a watcher's fs_change on the same path
        # within ATTRIBUTION_NS names that event's session and process as the writer.
        self.recent_paths: BoundedDict[str, dict] = BoundedDict(RECENT_PATHS_MAX)
        self._session_cgroups: dict[int, str] = {}  # session -> its cgroup, from the v2 root
        self._workspaces: dict[int, str] = {}  # session -> its root's cwd at start

    def writer_of(self, fs_ev: dict) -> dict | None:
        """The probe event (of a session) that made this watcher change, if one did."""
        ts = fs_ev.get("ts", 0)
        for key in (fs_ev.get("path"), fs_ev.get("source")):
            ev = self.recent_paths.get(key) if key else None
            if ev is not None and abs(ts - ev.get("ts", 0)) < ATTRIBUTION_NS:
                return ev
        return None

    def use_policy_of(self, session: int) -> None:
        """Conditions read ``ctx.policy``: point it at the event's session before matching.
        Nothing to do when the session is the one of the last call (the usual case)."""
        if session == self.policy_session:
            return
        self.policy = self._policies.get(session, self.default_policy)
        self.lists = getattr(self.policy, "lists", {}) or {}
        self.policy_session = session

    def set_policy(self, session: int, policy: Policy) -> None:
        """The policy of a session's events from now on."""
        self._policies[session] = policy
        self.policy_session = _NO_SESSION

    def _new(
        self, ev: dict, exec_id: str, pid: int, pexec_id: str, base: ProcessRecord | None
    ) -> ProcessRecord:
        """A record made from an event, and from ``base`` (a fork's parent) when given."""
        if base:
            get = base.get
            exe, comm = get("exe", ""), get("comm", "")
            cmdline, argv, cwd = get("cmdline", ""), get("argv", []), get("cwd", "")
        else:
            exe, comm, cmdline, argv, cwd = ev.get("exe", ""), ev.get("comm", ""), "", [], ""
        rec: ProcessRecord = {
            "pid": pid,
            "exec_id": exec_id,
            "pexec_id": pexec_id,
            "session": ev.get("session", 0),
            "exe": exe,
            "comm": comm,
            "cmdline": cmdline,
            "argv": argv,
            "cwd": cwd,
            "uid": ev.get("uid", 0),
            "start": ev.get("ts", 0),
            "exited": 0,
        }
        if exec_id not in self.procs:
            session = rec["session"]
            self._live[session] = self._live.get(session, 0) + 1
        self.procs[exec_id] = rec
        self.by_pid[pid] = exec_id
        return rec

    def update(self, ev: dict) -> None:
        """Record what a probe event says about its process (once per event: keep it lean)."""
        eid = ev.get("exec_id")
        if not eid:
            return
        t = ev["type"]
        if t in _PATH_TYPES:
            path = ev.get("path")
            if path:
                recent = self.recent_paths
                recent.put(path, ev)
                if t == "rename":
                    src = ev.get("source")
                    if src:
                        recent.put(src, ev)
        if t not in _PROC_TYPES:  # most events: the process is known already
            if eid not in self.procs:
                self._new(ev, eid, ev["pid"], ev.get("pexec_id", ""), None)
            return
        rec = self.procs.get(eid)
        if t == "exec":
            old = self.by_pid.get(ev["pid"])
            rec = self._new(ev, eid, ev["pid"], ev.get("pexec_id", ""), None)
            rec["cmdline"] = ev.get("cmdline", "")
            rec["argv"] = ev.get("argv", [])
            rec["cwd"] = ev.get("cwd", "")
            env_path = ev.get("env_path")
            if env_path:
                self._learn_path(rec["session"], env_path)
            home = ev.get("home")
            if home or ev.get("xdg_config_home"):
                HOMES.learn(rec["session"], home, ev.get("xdg_config_home"))
            if old and old != eid and old in self.procs:  # the pre-exec image is gone
                self._mark_exited(old, ev.get("ts", 0))
            return
        if rec is None:
            rec = self._new(ev, eid, ev["pid"], ev.get("pexec_id", ""), None)
        if t == "fork":
            if not ev.get("thread"):
                self._new(ev, ev["child_exec_id"], ev["child_pid"], eid, rec)  # the child
                session = ev.get("session", 0)
                forks = self._forks.get(session)
                if forks is None:
                    forks = self._forks[session] = deque(maxlen=65536)
                forks.append(ev.get("ts", 0))
        elif t == "exit":
            self._mark_exited(eid, ev.get("ts", 0))
        elif t == "chdir" and ev.get("ret") == 0 and ev.get("path"):
            rec["cwd"] = ev["path"]
        elif t == "task_rename":
            rec["comm"] = ev.get("newcomm", rec["comm"])

    def _mark_exited(self, eid: str, ts: int) -> None:
        rec = self.procs.get(eid)
        if rec is not None and not rec["exited"]:
            rec["exited"] = ts or 1
            self._exited.append((ts, eid))
            self._gone(rec)

    def _gone(self, rec: ProcessRecord) -> None:
        session = rec["session"]
        n = self._live.get(session, 0) - 1
        if n > 0:
            self._live[session] = n
        else:
            self._live.pop(session, None)

    def sweep(self, now_ns: int) -> None:
        """Forget exited processes after the grace period; stay under MAX_PROCS."""
        while self._exited and (
            self._exited[0][0] < now_ns - self.grace_ns or len(self.procs) > MAX_PROCS
        ):
            _, eid = self._exited.popleft()
            rec = self.procs.pop(eid, None)
            if rec is not None and self.by_pid.get(rec["pid"]) == eid:
                del self.by_pid[rec["pid"]]
        while len(self.procs) > MAX_PROCS:  # live processes we never saw exit
            eid = next(iter(self.procs))
            rec = self.procs.pop(eid)
            self.evicted += 1
            if not rec["exited"]:
                self._gone(rec)
            if self.by_pid.get(rec["pid"]) == eid:
                del self.by_pid[rec["pid"]]

    # -- fields.ProcessView ---------------------------------------------------------------

    def process(self, event: dict) -> dict | None:
        return self.procs.get(event.get("exec_id", ""))

    def ancestors(self, event: dict) -> list[dict]:
        out = []
        rec = self.procs.get(event.get("exec_id", ""))
        session = event.get("session")
        pe = rec["pexec_id"] if rec else event.get("pexec_id", "")
        while pe and len(out) < MAX_LINEAGE:
            parent = self.procs.get(pe)
            if parent is None or parent["session"] != session:
                break
            out.append(parent)
            pe = parent["pexec_id"]
        return out

    def set_session_cgroup(self, session: int, path: str) -> None:
        """A session's own cgroup (absolute, as the session start event gives it)."""
        rel = path
        mount = kernelenv.cgroup2_mount()
        if mount and (path == mount or path.startswith(mount.rstrip("/") + "/")):
            rel = "/" + path[len(mount) :].lstrip("/")
        self._session_cgroups[session] = rel

    def session_cgroup(self, session: int) -> str | None:
        return self._session_cgroups.get(session)

    def set_workspace(self, session: int, cwd: str) -> None:
        if cwd.startswith("/"):
            self._workspaces[session] = cwd

    def workspace(self, session: int) -> str | None:
        return self._workspaces.get(session)

    def session_of_tree(self, pid: int) -> int | None:
        """The session of a live process or of its nearest ancestor in one (None: none)."""
        for _ in range(64):
            if pid <= 1:
                return None
            eid = self.by_pid.get(pid)
            rec = self.procs.get(eid) if eid else None
            if rec is not None and rec["session"] and not rec["exited"]:
                return rec["session"]
            pid = procfs.ppid(pid)
        return None

    def in_session(self, pid: int, session: int) -> bool | None:
        eid = self.by_pid.get(pid)
        if eid is None:
            # Every process of a session is in the table from its fork on: a live process
            # the table does not know is outside every session. Groups (pid <= 0): unknown.
            if pid > 0 and os.path.exists(f"/proc/{pid}"):
                return False
            return None
        return self.procs[eid]["session"] == session

    def _learn_path(self, session: int, value: str) -> None:
        paths = self._paths.get(session)
        if paths is None:
            paths = self._paths[session] = [DEFAULT_PATH]
        entries = split_path(value)
        if entries not in paths and len(paths) < MAX_SESSION_PATHS:
            paths.append(entries)

    def search_paths(self, session: int) -> list[tuple[str, ...]] | tuple[tuple[str, ...], ...]:
        return self._paths.get(session) or (DEFAULT_PATH,)

    def live_processes(self, session: int) -> int | None:
        """Processes of the session alive now, as far as the table saw them start and end."""
        return self._live.get(session, 0)

    def fork_rate(self, session: int) -> float | None:
        """Forks in the session's last second (of event time). Old entries are dropped as
        we go, so this is O(1) amortized on the hot path of every fork event."""
        forks = self._forks.get(session)
        if not forks:
            return 0.0
        horizon = forks[-1] - 1_000_000_000
        while forks and forks[0] <= horizon:
            forks.popleft()
        return float(len(forks))
