"""Failing closed: what happens to the sessions while no collector or evaluator watches them.

Owns carrying out each session's ``on_monitor_loss`` (its policy: ``freeze``, the default in
enforce mode, ``kill`` or ``continue``; observe mode always continues) on the sessions the
last collector pinned (``core.sessionstate``), and undoing it once coverage is back. A freeze
is ``cgroup.freeze`` of the session's cgroup, and SIGSTOP for its processes outside it (moved
out, or an adopted session without a cgroup of its own) and their children. A kill is
``cgroup.kill`` and SIGKILL the same way.

What it froze is written down (``<state dir>/failclosed.json``) before it returns, so that
whoever restores coverage releases exactly that, even when it is another process than the one
that froze (the supervisor freezes when roguewatchd dies; the new roguewatchd thaws). A
session that was frozen already (by a rule, by the operator) is left as it is, and is not
thawed by the release.

It must not decide *when* the monitor is lost or back: the service, its supervisor and `run`'s
launcher do (they are the ones alive when a component dies).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from dataclasses import asdict, dataclass, field

from roguewatch.core import procfs, sessionstate
from roguewatch.respond.cgroups import CgroupError, SessionCgroup

LEDGER_FILE = "failclosed.json"


@dataclass
class Held:
    """One session held while the monitor was lost."""

    session: int
    cgroup: str = ""  # frozen by us (thawed on release)
    stopped: list[tuple[int, int]] = field(default_factory=list)  # (pid, start ns): SIGSTOPped
    reason: str = ""


def _descendants(roots: set[int]) -> set[int]:
    """``roots`` and every live process below them (by /proc's ppid)."""
    children: dict[int, list[int]] = {}
    for pid in procfs.pids():
        children.setdefault(procfs.ppid(pid), []).append(pid)
    out, todo = set(), list(roots)
    while todo:
        p = todo.pop()
        if p in out or p <= 1:
            continue
        out.add(p)
        todo.extend(children.get(p, ()))
    return out


class FailClosed:
    """The sessions of one collector's state directory, held and released."""

    def __init__(self, state_dir: str, enforce: bool = True, own: set[int] | None = None) -> None:
        self.state_dir = state_dir
        self.enforce = enforce
        self.own = {os.getpid(), 1, 0, *(own or set())}
        self.ledger = os.path.join(state_dir, LEDGER_FILE)

    # -- the ledger -----------------------------------------------------------------------

    def held(self) -> dict[int, Held]:
        try:
            with open(self.ledger) as f:
                data = json.load(f)
            return {int(h["session"]): Held(int(h["session"]), str(h.get("cgroup", "")),
                                            [(int(p), int(s)) for p, s in h.get("stopped", [])],
                                            str(h.get("reason", "")))
                    for h in data}  # fmt: skip
        except (OSError, ValueError, TypeError, KeyError):
            return {}

    def _write(self, held: dict[int, Held]) -> None:
        if not held:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.ledger)
            return
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        tmp = f"{self.ledger}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump([asdict(h) for h in held.values()], f)
        os.replace(tmp, self.ledger)

    @property
    def engaged(self) -> bool:
        return bool(self.held())

    # -- hold and release -------------------------------------------------------------------

    def engage(self, reason: str) -> list[str]:
        """Every pinned session per its ``on_monitor_loss``; what was done, one line each."""
        pinned = sessionstate.read(self.state_dir)
        held = self.held()
        out = []
        for s in pinned.sessions:
            if s.session in held:
                continue  # held already (a second loss before the release)
            how = s.on_monitor_loss if self.enforce else "continue"
            if how == "continue":
                out.append(f"session {s.session:x} left running ({s.mode} mode, "
                           f"on_monitor_loss: {how})")  # fmt: skip
                continue
            try:
                if how == "kill":
                    out.append(f"session {s.session:x} killed: {self._kill(s)} processes")
                else:
                    h = self._freeze(s, reason)
                    if h is not None:
                        held[s.session] = h
                        self._write(held)  # before the next one: a crash keeps the record
                        n = len(h.stopped)
                        what = (f"cgroup frozen{f', {n} processes stopped' if n else ''}"
                                if h.cgroup else f"{n} processes stopped")  # fmt: skip
                        out.append(f"session {s.session:x} frozen: {what}")
                    else:
                        out.append(f"session {s.session:x} was frozen already: left frozen")
            except (CgroupError, OSError) as exc:
                out.append(f"session {s.session:x}: could not {how}: {exc}")
        return out

    def _outside(self, s: sessionstate.PinnedSession, in_cgroup: set[int]) -> set[int]:
        """The session's processes (as last pinned) outside its cgroup, and their children."""
        roots = {p for p in s.pids if p not in in_cgroup and p not in self.own}
        return {p for p in _descendants(roots) if p not in in_cgroup and p not in self.own}

    def _freeze(self, s: sessionstate.PinnedSession, reason: str) -> Held | None:
        h = Held(s.session, reason=reason)
        in_cgroup: set[int] = set()
        if s.cgroup and os.path.isdir(s.cgroup):
            cg = SessionCgroup(s.cgroup)
            in_cgroup = set(cg.all_pids())
            if cg.events().get("frozen") == "1" or _read_freeze(s.cgroup):
                return None  # a rule or the operator froze it: not ours to thaw
            cg.set_frozen(True)
            h.cgroup = s.cgroup
        for pid in sorted(self._outside(s, in_cgroup)):
            start = procfs.start_ns(pid)
            if start is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
                h.stopped.append((pid, start))
        if not h.cgroup and not h.stopped:
            return Held(s.session, reason=reason)  # nothing alive: recorded all the same
        return h

    def _kill(self, s: sessionstate.PinnedSession) -> int:
        n = 0
        in_cgroup: set[int] = set()
        if s.cgroup and os.path.isdir(s.cgroup):
            cg = SessionCgroup(s.cgroup)
            in_cgroup = set(cg.all_pids())
            n += cg.kill()
        for pid in self._outside(s, in_cgroup):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                n += 1
        return n

    def release(self) -> list[str]:
        """Thaw what ``engage`` froze (and only that); the ledger is cleared."""
        held = self.held()
        out = []
        for h in held.values():
            parts = []
            if h.cgroup and os.path.isdir(h.cgroup):
                try:
                    SessionCgroup(h.cgroup).set_frozen(False)
                    parts.append("cgroup thawed")
                except CgroupError as exc:
                    parts.append(f"cgroup not thawed: {exc}")
            n = 0
            for pid, start in h.stopped:
                if procfs.start_ns(pid) == start:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGCONT)
                        n += 1
            if n:
                parts.append(f"{n} processes continued")
            out.append(f"session {h.session:x}: {', '.join(parts) or 'nothing left to thaw'}")
        self._write({})
        return out


def _read_freeze(cgroup: str) -> bool:
    """cgroup.freeze already asks for a freeze (the kernel may not have finished it)."""
    try:
        with open(os.path.join(cgroup, "cgroup.freeze")) as f:
            return f.read().strip() == "1"
    except OSError:
        return False
