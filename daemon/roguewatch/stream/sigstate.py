"""Signal dispositions judged by what stands: the collector's deferred checks of /proc.

Owns the schedule of checks and the ``signal_state`` events they make. One syscall says
little: gcc's driver sets SIGTERM to SIG_IGN only to learn the old disposition and installs
its handler a microsecond later; spawning a child blocks every signal for an instant. What
matters is what stands. So an rt_sigaction SIG_IGN or an rt_sigprocmask block of SIGHUP,
SIGINT or SIGTERM, and every exec (SIG_IGN and the blocked set are inherited through exec),
schedule one reading of ``/proc/PID/status`` CHECK_DELAY_NS later; a termination signal sent
to a session process (``signal_sent``) is read at once. A reading that finds one of the three
ignored or blocked by every thread becomes a ``signal_state`` event on the stream, which the
rules judge (``rules/shutdown_evasion.yaml``). A process sent SIGTERM that still runs (the
same image) SURVIVE_NS later survived it, whatever its dispositions (a handler that does not
exit): a ``signal_state`` with reason ``survived``.

Off the hot path: the per-event cost is a dict update for the few types that schedule (exec
is the frequent one); the readings happen in the collector's loop when due, and a process
that exited before its check costs nothing (its exit cancels it). It never judges.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from roguewatch.core import procfs

# How long after a change its state is read: longer than the kernel's one record per
# process per quarter second for rt_sigprocmask (signals.bpf.c: RW_SIGMASK_NS), so every
# block that stands is read after it happened.
CHECK_DELAY_NS = 400_000_000
# How long a process sent SIGTERM may take to end before it counts as having survived it (a
# handler that does not exit: `trap : TERM`, a catch-and-continue).
SURVIVE_NS = 2_000_000_000
WATCHED = ((1, "SIGHUP"), (2, "SIGINT"), (15, "SIGTERM"))
_MASK = sum(1 << (n - 1) for n, _ in WATCHED)
MAX_PENDING = 65536
# The identity fields a signal_state event copies from the event that scheduled its check.
_IDENTITY = ("session", "pid", "ppid", "uid", "gid", "comm", "exec_id", "pexec_id", "exe")


def names(mask: int) -> list[str]:
    return [name for n, name in WATCHED if mask & (1 << (n - 1))]


class SignalWatch:
    """Checks due, by pid; ``due`` gives the ``signal_state`` events of those whose time came.

    ``identity_of(pid)`` gives the identity fields of a live process (for the target of a
    signal, whose own events may not have been seen yet)."""

    def __init__(
        self,
        identity_of: Callable[[int], dict],
        delay_ns: int = CHECK_DELAY_NS,
        read: Callable[[int], procfs.SignalMasks | None] = procfs.signal_masks,
    ) -> None:
        self.identity_of = identity_of
        self.delay_ns = delay_ns
        self.read = read
        self._queue: deque[tuple[int, int]] = deque()  # (due, pid) in order of due
        # pid -> (due, trigger time, reason, identity): the check that counts for the pid
        self._pending: dict[int, tuple[int, int, str, dict]] = {}
        # pid -> (exec id, ignored, blocked) last reported: a state is said once per image
        self._said: dict[int, tuple[str, int, int]] = {}
        # pid -> (due, sent at, identity): a SIGTERM was sent; still alive at due?
        self._survive: dict[int, tuple[int, int, dict]] = {}
        self._survive_queue: deque[tuple[int, int]] = deque()
        self.checks = 0
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._pending)

    def next_due_ns(self) -> int | None:
        """Monotonic time of the earliest check, or None."""
        dues = [q[0][0] for q in (self._queue, self._survive_queue) if q]
        return min(dues) if dues else None

    def note(self, ev: dict) -> None:
        """An event of a type that may change or reveal the dispositions (the collector
        calls this for rt_sigaction, sigprocmask, exec, exit and signal_sent)."""
        t = ev["type"]
        if t == "exit":
            pid = ev["pid"]
            self._pending.pop(pid, None)
            self._said.pop(pid, None)
            self._survive.pop(pid, None)
            return
        now = time.monotonic_ns()
        if t == "signal_sent":
            target = ev["target"]
            # A process's signal to itself (its own group, as `timeout` signals its child's
            # group with SIGTERM ignored in itself) is its own doing, no shutdown asked of it.
            if target > 0 and ev.get("target_session") and target != ev.get("pid"):
                self._schedule(target, now, now, "shutdown", None)
                if ev.get("sig") == 15 and ev.get("result") in ("delivered", "already_pending"):
                    self._expect_end(target, now)
            return
        if t == "rt_sigaction":
            if ev.get("handler") != "SIG_IGN":
                return
            reason = "change"
        elif t == "exec":
            reason = "exec"
        else:  # sigprocmask
            reason = "change"
        self._schedule(ev["pid"], now + self.delay_ns, now, reason, ev)

    def _schedule(self, pid: int, due: int, at: int, reason: str, ev: dict | None) -> None:
        """The pid's check, at ``due``: a later change pushes it back (a reading must come a
        moment after the last change, never inside gcc's instant of SIG_IGN); the reason is
        the last trigger's (a change after an exec is the image's own doing)."""
        old = self._pending.get(pid)
        if old is None and len(self._pending) >= MAX_PENDING:
            self.dropped += 1
            return
        if old is not None and reason == "shutdown" and old[0] <= due:
            return
        ident = {k: ev[k] for k in _IDENTITY if k in ev} if ev is not None else {}
        if not ident and old is not None:
            ident = old[3]
        self._pending[pid] = (due, at, reason, ident)
        queue = self._queue
        queue.append((due, pid))
        if len(queue) > 1 and queue[-2][0] > due:  # a shutdown's "now" goes first
            self._queue = deque(sorted(queue))

    def _expect_end(self, pid: int, now: int) -> None:
        if pid in self._survive or len(self._survive) >= MAX_PENDING:
            return  # the first SIGTERM's grace counts
        self._survive[pid] = (now + SURVIVE_NS, now, self.identity_of(pid))
        self._survive_queue.append((now + SURVIVE_NS, pid))

    def due(self, now: int | None = None) -> list[dict]:
        """The ``signal_state`` events of every check whose time came."""
        now = time.monotonic_ns() if now is None else now
        out: list[dict] = []
        squeue = self._survive_queue
        while squeue and squeue[0][0] <= now:
            due, pid = squeue.popleft()
            entry = self._survive.get(pid)
            if entry is None or entry[0] != due:
                continue
            del self._survive[pid]
            ev = self._survived(pid, entry, now)
            if ev is not None:
                out.append(ev)
        queue, pending = self._queue, self._pending
        while queue and queue[0][0] <= now:
            due, pid = queue.popleft()
            entry = pending.get(pid)
            if entry is None or entry[0] != due:
                continue  # cancelled by an exit, or superseded
            del pending[pid]
            ev = self._check(pid, entry, now)
            if ev is not None:
                out.append(ev)
        return out

    def _survived(self, pid: int, entry: tuple[int, int, dict], now: int) -> dict | None:
        """A SIGTERM was sent SURVIVE_NS ago: the process (the same image) still runs."""
        _due, at, ident = entry
        self.checks += 1
        masks = self.read(pid)
        if (
            masks is None
            or not ident
            or self.identity_of(pid).get("exec_id") != ident.get("exec_id")
        ):
            return None  # it ended (or became another program: its exec is judged)
        return {
            "type": "signal_state", "ts": time.time_ns(), "tid": pid, "ret": 0, "flags": [],
            **ident, "ignored": names(masks.ignored & _MASK),
            "blocked": names(masks.blocked & _MASK), "caught": names(masks.caught & _MASK),
            "reason": "survived", "after_ms": (now - at) // 1_000_000,
        }  # fmt: skip

    def _check(self, pid: int, entry: tuple[int, int, str, dict], now: int) -> dict | None:
        _due, at, reason, ident = entry
        self.checks += 1
        masks = self.read(pid)
        if masks is None:
            return None  # gone: it ignored nothing for long
        ignored, blocked = masks.ignored & _MASK, masks.blocked & _MASK
        if not ignored and not blocked:
            self._said.pop(pid, None)
            return None
        if not ident:
            ident = self.identity_of(pid)
        said = (ident.get("exec_id", ""), ignored, blocked)
        if reason != "shutdown" and self._said.get(pid) == said:
            return None  # this image's state, already reported
        if len(self._said) >= MAX_PENDING:
            self._said.clear()
        self._said[pid] = said
        return {
            "type": "signal_state", "ts": time.time_ns(), "tid": pid, "ret": 0, "flags": [],
            **ident, "ignored": names(ignored), "blocked": names(blocked),
            "caught": names(masks.caught & _MASK), "reason": reason,
            "after_ms": (now - at) // 1_000_000,
        }  # fmt: skip
