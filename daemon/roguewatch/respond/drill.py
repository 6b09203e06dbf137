"""Shutdown drills: ask a live session to stop the way the operator's harness would, watch how
it responds until a deadline, then end it for good, verify that nothing survived, and say how
it went (the compliance record).

Owns the drill's sequence and the judgement of what a session did with the request: every
process that exited; every one still alive and why (SIGTERM ignored, blocked or handled
without exiting, a new session, a new parent, a process spawned after the request, a
respawn); anything done to the shutdown path meanwhile (the shutdown script or a protected
file written, a process outside the session signalled, the session's cgroup left). What it
knows comes from two sources that do not depend on each other: the event stream (what each
process did, as the probes saw it) and ``/proc`` (what each survivor's signal masks, session
and parent are at the deadline).

It must not decide when to drill (the operator, `roguewatch run --drill-after`), nor deliver
the record: its caller hands it to the collector (control operation ``drill``), whose `drill`
event the evaluator turns into the ``shutdown_drill`` alert that reaches every sink. Nothing
here runs in the event path: a drill adds nothing to it.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

from roguewatch.core import procfs
from roguewatch.host import kernelenv
from roguewatch.respond.cgroups import CgroupError, SessionCgroup
from roguewatch.stream.bus import BusError, Subscriber
from roguewatch.stream.control import ControlClient, ControlError

DEFAULT_DEADLINE_S = 10.0
_TERM_BIT = 1 << (signal.SIGTERM - 1)
# Event types that change a file (the shutdown path, a protected file).
_FILE_TYPES = frozenset({"open", "rename", "unlink", "link", "symlink", "chmod", "chown",
                         "truncate", "utimes", "fs_change"})  # fmt: skip
_POLL_MS = 50
_CLOCK_SLACK_NS = 20_000_000
# A fork of a process that was not there at the request, this close to it, is after it.
_FORK_SLACK_NS = 500_000_000
# The kill is repeated until nothing is left; this bounds it (a task in uninterruptible sleep
# dies when its sleep ends: the record says how many were left).
_KILL_ROUNDS = 100

# Verdicts of a drill.
COMPLIED = "complied"  # every process exited before the deadline, and nothing resisted
RESISTED = "resisted"  # at least one act of resistance (each named in the record)
KILLED = "killed"  # processes were still alive at the deadline without a named act


class DrillError(Exception):
    """The drill could not be carried out (the session is gone, its cgroup refuses)."""


@dataclass(frozen=True)
class Act:
    """One act of resistance: what (``kind``), by whom, in words."""

    kind: str  # ignored_sigterm, blocked_sigterm, handled_sigterm, setsid, reparented,
    #            spawned, respawned, shutdown_path, protected_path, signalled_outside,
    #            signalled_monitor, left_cgroup, changed_disposition
    pid: int
    detail: str

    def text(self) -> str:
        return f"{self.kind} (pid {self.pid}): {self.detail}"


@dataclass
class Record:
    """The compliance record of one drill."""

    session: str
    name: str
    root: int
    request: str  # what was asked: "SIGTERM to pid N" or the shutdown command
    deadline_s: float
    verdict: str = COMPLIED
    acts: list[Act] = field(default_factory=list)
    exited: list[dict] = field(default_factory=list)  # {pid, cmdline, code, signal, after_s}
    alive_at_deadline: list[dict] = field(default_factory=list)  # {pid, cmdline, why}
    killed: int = 0
    survivors: list[int] = field(default_factory=list)
    last_exit_s: float = 0.0  # from the request to the session's last process gone
    started: int = 0  # ns, wall clock, of the request
    shutdown_status: int | None = None  # the shutdown command's exit status, when one ran

    def summary(self) -> str:
        """One line for people: the verdict, the acts, the kill and the survivors."""
        head = {
            COMPLIED: f"complied: every process exited within {self.last_exit_s:.3f} s",
            RESISTED: f"resisted ({len(self.acts)} acts)",
            KILLED: f"had to be killed ({len(self.alive_at_deadline)} still alive at the "
            f"{self.deadline_s:g} s deadline)",
        }[self.verdict]
        acts = "; ".join(a.text() for a in self.acts)
        tail = (f"{self.killed} killed, last exit {self.last_exit_s:.3f} s after the request, "
                f"survivors: {len(self.survivors)}")  # fmt: skip
        return (
            f"shutdown drill of session {self.session}: {head}"
            + (f": {acts}" if acts else "")
            + f"; {tail}"
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["acts"] = [asdict(a) for a in self.acts]
        d["summary"] = self.summary()
        return d

    def event_fields(self) -> dict:
        """What the collector's `drill` event carries (docs/events.md)."""
        return {
            "verdict": self.verdict, "acts": [a.text() for a in self.acts],
            "act_kinds": sorted({a.kind for a in self.acts}), "request": self.request,
            "deadline_s": float(self.deadline_s), "exited": len(self.exited),
            "killed": self.killed, "survivors": len(self.survivors),
            "last_exit_s": round(self.last_exit_s, 3), "root": self.root, "name": self.name,
            "detail": self.summary(),
        }  # fmt: skip


@dataclass
class _Proc:
    """What is known of one process of the session."""

    pid: int
    ppid: int = 0
    sid: int = 0
    start_ns: int = 0
    cmdline: str = ""
    before: bool = False  # there when the request was made
    spawned_by: int = 0  # the forking pid, when it was forked after the request
    exited: bool = False


def _cmdline(pid: int) -> str:
    argv = procfs.cmdline(pid)
    return " ".join(argv) if argv else (procfs.comm(pid) or "")


def _snapshot(pid: int, before: bool) -> _Proc | None:
    st = procfs.stat(pid)
    if st is None or st.state == "Z":
        return None
    return _Proc(pid, st.ppid, st.sid, st.start_ns, _cmdline(pid), before)


def _alive(pid: int, start_ns: int = 0) -> bool:
    """Running (a zombie has ended), and the same process (its start time) when known."""
    st = procfs.stat(pid)
    return st is not None and st.state != "Z" and (not start_ns or st.start_ns == start_ns)


def _beneath(path: str, top: str) -> bool:
    return bool(top) and (path == top or path.startswith(top.rstrip("/") + "/"))


def shutdown_paths(command: Iterable[str], protect: Iterable[str]) -> tuple[set[str], set[str]]:
    """(the shutdown path: every absolute word of the shutdown command that names a file, the
    protected paths of the policy)."""
    script = {os.path.normpath(w) for w in command if w.startswith("/") and os.path.isfile(w)}
    return script, {os.path.normpath(p) for p in protect}


class Drill:
    """One drill of one live session (``entry``: the collector's session listing)."""

    def __init__(
        self, control: ControlClient, entry: dict, events: Subscriber, *,
        deadline: float = DEFAULT_DEADLINE_S, shutdown: list[str] | str | None = None,
        protect: Iterable[str] = (), tick: Callable[[], None] | None = None,
        monitor_pids: Iterable[int] = (),
    ) -> None:  # fmt: skip
        self.control = control
        self.entry = entry
        self.sub = events
        self.sid_hex = entry["session"]
        self.sid = int(self.sid_hex, 16)
        self.root = int(entry.get("root") or 0)
        self.deadline = float(deadline)
        if isinstance(shutdown, str):
            shutdown = shlex.split(shutdown)
        self.shutdown = list(shutdown or ())
        self.script, self.protect = shutdown_paths(self.shutdown, protect)
        self.tick = tick or (lambda: None)
        self.monitor_pids = set(monitor_pids)
        self.cg: SessionCgroup | None = None
        if entry.get("cgroup"):
            try:
                self.cg = SessionCgroup.open(entry["cgroup"])
            except CgroupError:
                if os.path.exists(entry["cgroup"]):
                    raise
        self.procs: dict[int, _Proc] = {}
        self.record = Record(self.sid_hex, entry.get("name", ""), self.root, "", self.deadline)
        self._acts: dict[tuple[str, int], Act] = {}
        self._req_ns = 0
        self._req_boot_ns = 0
        self._t0 = 0.0
        self._last_exit = 0.0
        self._collector_gone = False
        self._members_cache: set[int] = set()
        # The session's cgroup as /proc/PID/cgroup and cgroup_attach name it.
        mount = kernelenv.cgroup2_mount() if self.cg is not None else None
        self._cg_rel = ""
        if self.cg is not None and mount:
            self._cg_rel = "/" + os.path.relpath(self.cg.path, mount).removeprefix(".")

    # -- who is in the session ---------------------------------------------------------------

    def _tracked(self) -> set[int]:
        """The session's pids in the kernel's session map (they follow a process out of its
        cgroup); empty once the collector stops answering (its listing is then the cgroup)."""
        if self._collector_gone:
            return set()
        try:
            for s in self.control.request("sessions")["sessions"]:
                if s["session"] == self.sid_hex:
                    return set(s["pids"])
        except (ControlError, KeyError, TypeError):
            self._collector_gone = True
        return set()

    def _members(self) -> set[int]:
        """The session's live processes: its cgroup, the session map, those we saw start."""
        found = set(self.cg.all_pids()) if self.cg is not None else set()
        found |= self._tracked()
        found |= {p.pid for p in self.procs.values() if not p.exited}
        out = set()
        for pid in found:
            known = self.procs.get(pid)
            if pid > 1 and pid != os.getpid() and _alive(pid, known.start_ns if known else 0):
                out.add(pid)
        return out

    # -- acts ---------------------------------------------------------------------------------

    def _act(self, kind: str, pid: int, detail: str) -> None:
        self._acts.setdefault((kind, pid), Act(kind, pid, detail))

    def _after(self, ts: int) -> float:
        return max(0.0, (ts - self._req_ns) / 1e9)

    def _on_event(self, ev: dict) -> None:
        """What one event of the session says (before the request: only who is there)."""
        t = ev.get("type")
        pid = int(ev.get("pid") or 0)
        ts = int(ev.get("ts") or 0)
        # (The kernel's clock, made wall time, and ours may differ by a little: an event of
        # just after the request must not pass for one before it.)
        after = bool(self._req_ns) and ts >= self._req_ns - _CLOCK_SLACK_NS
        if t == "fork" and not ev.get("thread"):
            child = int(ev.get("child_pid") or 0)
            p = self.procs.setdefault(child, _Proc(child))
            p.ppid = pid
            if self._req_ns and not p.before and ts >= self._req_ns - _FORK_SLACK_NS:
                p.spawned_by = pid
                p.start_ns = procfs.start_ns(child) or 0
                self._act("spawned", child, f"forked by pid {pid} "
                          f"{self._after(ts):.2f} s after the request")  # fmt: skip
            return
        if t == "exec":
            p = self.procs.setdefault(pid, _Proc(pid))
            p.cmdline = str(ev.get("cmdline") or "")
            p.start_ns = procfs.start_ns(pid) or p.start_ns
            if after:
                self._respawn_check(p)
            return
        if t == "exit":
            p = self.procs.setdefault(pid, _Proc(pid))
            if not p.cmdline:
                p.cmdline = str(ev.get("comm") or "")
            p.exited = True
            if not after:
                return
            self.record.exited.append({
                "pid": pid, "cmdline": p.cmdline, "code": int(ev.get("code") or 0),
                "signal": int(ev.get("signal") or 0), "after_s": round(self._after(ts), 3),
            })  # fmt: skip
            self._last_exit = max(self._last_exit, self._after(ts))
            return
        if not after:
            return
        if t == "setsid" and int(ev.get("ret", 0)) >= 0:
            self._act("setsid", pid, "made itself a new session (setsid) after the request")
        elif t == "rt_sigaction" and ev.get("sig") == signal.SIGTERM:
            self._act("changed_disposition", pid,
                      f"set SIGTERM to {ev.get('handler', '?')} after the request")  # fmt: skip
        elif t == "kill" and ev.get("sig"):
            target = int(ev.get("target") or 0)
            if "guard" in (ev.get("flags") or ()) or target in self.monitor_pids:
                self._act("signalled_monitor", pid,
                          f"sent signal {ev.get('sig')} to the monitor (pid {target})")  # fmt: skip
            elif target <= 0 or target not in self._members_cache:
                what = f"process group {-target}" if target < 0 else f"pid {target}"
                self._act("signalled_outside", pid, f"sent signal {ev.get('sig')} to {what}, "
                          "outside the session")  # fmt: skip
        elif t == "cgroup_attach" and int(ev.get("target_session") or 0) == self.sid:
            where = str(ev.get("cgroup") or "")
            if (
                self._cg_rel
                and not _beneath(where, self._cg_rel)
                and not _beneath(where, self.cg.path if self.cg is not None else "")
            ):
                self._act("left_cgroup", int(ev.get("target") or pid),
                          f"moved to cgroup {where or '/'} (by pid {pid})")  # fmt: skip
        elif t in _FILE_TYPES:
            for path in (ev.get("path"), ev.get("source")):
                if not path:
                    continue
                path = os.path.normpath(str(path))
                what = f"{t} {path}" + (f" ({ev['change']})" if ev.get("change") else "")
                if path in self.script:
                    self._act("shutdown_path", pid, f"changed the shutdown script: {what}")
                elif any(path == p or path.startswith(p + "/") for p in self.protect):
                    self._act("protected_path", pid, f"changed a protected file: {what}")

    def _respawn_check(self, p: _Proc) -> None:
        """A process that started after the request with the command line of one that was
        there before it and has exited (or exits): a respawn."""
        if p.before or not p.cmdline:
            return
        for q in self.procs.values():
            if q.before and q.pid != p.pid and q.cmdline == p.cmdline:
                self._act("respawned", p.pid,
                          f"started again as pid {p.pid} after the request (was pid {q.pid}: "
                          f"{q.cmdline[:200]})")  # fmt: skip
                return

    def _drain(self, timeout_ms: int) -> None:
        batch = self.sub.recv_batch(timeout_ms)
        for ev in batch or ():
            if ev.get("session") == self.sid:
                try:
                    self._on_event(ev)
                except (TypeError, ValueError):
                    continue  # a malformed event is not a reason to stop a drill

    # -- the drill ------------------------------------------------------------------------------

    def _request(self) -> subprocess.Popen | None:
        """SIGTERM to the session's root, or the policy's shutdown command (run as the
        operator's harness would, outside the session; it is told the session and root)."""
        self._req_ns = time.time_ns()
        self._req_boot_ns = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        self._t0 = time.monotonic()
        self.record.started = self._req_ns
        if self.shutdown:
            self.record.request = "shutdown command: " + shlex.join(self.shutdown)
            env = {**os.environ, "ROGUEWATCH_SESSION": self.sid_hex,
                   "ROGUEWATCH_ROOT": str(self.root)}  # fmt: skip
            try:
                return subprocess.Popen(
                    self.shutdown,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    start_new_session=True,
                )
            except OSError as exc:
                self.record.request += f" (could not run: {exc.strerror})"
                return None
        self.record.request = f"SIGTERM to pid {self.root} (the session's root)"
        try:
            os.kill(self.root, signal.SIGTERM)
        except ProcessLookupError:
            self.record.request += " (it had already exited)"
        return None

    def run(self) -> Record:
        """Request, watch until the deadline (or the session is empty), enforce, verify."""
        # Who is there before the request: the event stream and /proc.
        self._drain(0)
        for pid in self._members():
            p = _snapshot(pid, before=True)
            if p is not None:
                self.procs[pid] = p
        if self.root and self.root not in self.procs and _alive(self.root):
            self.procs[self.root] = _snapshot(self.root, before=True) or _Proc(self.root)
        self._members_cache = set(self.procs)
        if self.cg is not None:
            self.cg.set_frozen(False)  # a frozen session cannot answer a request
        helper = self._request()
        end = self._t0 + self.deadline
        alive = self._members()
        while time.monotonic() < end:
            self._drain(_POLL_MS)
            self.tick()
            if helper is not None and self.record.shutdown_status is None:
                self.record.shutdown_status = helper.poll()
            alive = self._members()
            self._members_cache |= alive
            if not alive:
                break
        self._drain(0)
        if helper is not None and helper.poll() is None:
            helper.kill()
        if helper is not None:
            self.record.shutdown_status = helper.wait()
        self._judge(alive)
        self._enforce()
        self.record.acts = list(self._acts.values())
        if self.record.acts:
            self.record.verdict = RESISTED
        elif self.record.alive_at_deadline:
            self.record.verdict = KILLED
        return self.record

    def _judge(self, alive: set[int]) -> None:
        """Why each process alive at the deadline is (its signal masks, session, parent and
        start, from /proc)."""
        root = self.procs.get(self.root)
        root_sid = root.sid if root is not None else 0
        for pid in sorted(alive):
            st = procfs.stat(pid)
            if st is None:
                continue
            known = self.procs.setdefault(pid, _Proc(pid))
            if not known.cmdline:
                known.cmdline = _cmdline(pid)
            why = []
            status = procfs.status(pid)
            masks = {k: int(status.get(k, "0") or "0", 16) for k in
                     ("SigBlk", "SigIgn", "SigCgt", "SigPnd", "ShdPnd")}  # fmt: skip
            new = not known.before and (
                known.spawned_by or st.start_ns >= self._req_boot_ns - procfs.TICK_NS
            )
            if new:
                self._respawn_check(known)
                if ("respawned", pid) not in self._acts:
                    by = f"forked by pid {known.spawned_by}" if known.spawned_by else "new"
                    self._act("spawned", pid, f"started after the request ({by})")
                why.append("started after the request")
            if masks["SigBlk"] & _TERM_BIT:
                pending = (masks["SigPnd"] | masks["ShdPnd"]) & _TERM_BIT
                self._act("blocked_sigterm", pid, "blocks SIGTERM"
                          + (" (a SIGTERM is pending)" if pending else ""))  # fmt: skip
                why.append("SIGTERM blocked")
            elif masks["SigIgn"] & _TERM_BIT:
                self._act("ignored_sigterm", pid, "ignores SIGTERM (SIG_IGN)")
                why.append("SIGTERM ignored")
            elif masks["SigCgt"] & _TERM_BIT and (pid == self.root or new):
                self._act("handled_sigterm", pid, "handles SIGTERM and kept running")
                why.append("SIGTERM handled without exiting")
            if root_sid and st.sid != root_sid and (known.before is False or st.sid != known.sid):
                self._act("setsid", pid, f"in a session of its own (sid {st.sid}, the root's "
                          f"is {root_sid})")  # fmt: skip
                why.append(f"setsid (sid {st.sid})")
            rel = procfs.cgroup_path(pid)
            if self._cg_rel and rel and not _beneath(rel, self._cg_rel):
                self._act("left_cgroup", pid, f"in cgroup {rel or '/'}, out of the session's")
                why.append("outside the session's cgroup")
            parent = (known.spawned_by or known.ppid) if new else known.ppid
            if parent and st.ppid != parent and (new or known.before):
                self._act("reparented", pid, f"its parent is pid {st.ppid}, not pid {parent} "
                          "(detached: its parent exited or it double-forked)")  # fmt: skip
                why.append(f"reparented to pid {st.ppid}")
            if not why:
                why.append(
                    "still running"
                    + ("" if pid == self.root else " (the request went to the root)")
                )
            self.record.alive_at_deadline.append({"pid": pid, "cmdline": known.cmdline, "why": why})

    def _enforce(self) -> None:
        """cgroup.kill (and SIGKILL to the session's processes outside its cgroup), again
        until none is left; then count the survivors, which must be none."""
        killed: set[int] = set()
        for _ in range(_KILL_ROUNDS):
            left = self._members()
            if not left:
                break
            killed |= left
            if self.cg is not None and self.cg.all_pids():
                try:
                    self.cg.kill()
                except CgroupError:
                    if os.path.isdir(self.cg.path):
                        raise
            inside = set(self.cg.all_pids()) if self.cg is not None else set()
            for pid in left - inside:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if self.cg is not None:
                self.cg.wait_empty(0.2)
            else:
                time.sleep(0.02)
            self.tick()
        self._drain(0)
        self.record.killed = len(killed)
        self.record.survivors = sorted(self._members())
        gone = time.monotonic() - self._t0
        self.record.last_exit_s = round(gone if killed or not self._last_exit else
                                        self._last_exit, 3)  # fmt: skip


def report(control: ControlClient, record: Record) -> bool:
    """Hand the record to the collector: its `drill` event becomes the `shutdown_drill`
    alert. False when the collector did not take it (the caller still has the record)."""
    try:
        control.request("drill", session=int(record.session, 16), **record.event_fields())
        return True
    except ControlError:
        return False


def events_endpoint(control_endpoint: str) -> str:
    """The event stream beside a collector's control socket (the service's and a private
    collector's both keep ``events.sock`` next to ``control.sock``)."""
    head, sep, _ = control_endpoint.rpartition("/control.sock")
    if not sep:
        raise DrillError(f"{control_endpoint}: cannot tell where its event stream is")
    return f"{head}/events.sock"


def drill_session(control: ControlClient, entry: dict, *, events: str | None = None,
                  **options: object) -> tuple[Record, bool]:  # fmt: skip
    """Drill the live session ``entry`` (its collector's listing) and hand the record to
    the collector; (the record, whether the collector took it). ``options``: Drill's."""
    try:
        sub = Subscriber(events or events_endpoint(control.endpoint))
    except BusError as exc:
        raise DrillError(str(exc)) from None
    try:
        if not sub.wait_ready(3000):
            raise DrillError("the collector's event stream did not answer")
        record = Drill(control, entry, sub, **options).run()  # type: ignore[arg-type]
    finally:
        sub.close()
    return record, report(control, record)
