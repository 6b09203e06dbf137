"""`run`'s launcher watching the monitor of its own session.

Owns noticing, from the launcher (the one process of the session's monitor that an agent in
the session cannot reach: Landlock scopes its signals, and it is guarded), that the session is
no longer watched: its private collector or evaluator died, or the control connection to the
service's collector broke. Then, within the loop turn that sees it: a critical alert in the
session's report, and its ``on_monitor_loss`` on the session's cgroup (``freeze``, the default
in enforce mode: ``cgroup.freeze``; ``kill``: ``cgroup.kill``; ``continue``). A private
component is started again on the same sockets and state (the collector takes the session
back from what it pinned); the service restarts its own. Once the collector answers and holds
the session again, the cgroup is thawed and the recovery is said.

It must not judge events, nor free a session it did not freeze (a rule's freeze stays).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from roguewatch.core import procfs
from roguewatch.core.contracts import make_alert

if TYPE_CHECKING:
    from roguewatch.respond.cgroups import SessionCgroup
    from roguewatch.runtime.run import Monitor

PING_EVERY_S = 0.1
PING_TIMEOUT_MS = 300
PINGS_LOST = 2  # this many unanswered pings in a row: the connection is broken


def _gone(proc: subprocess.Popen) -> bool:
    """Exited, or on its way out (a killed collector closes its BPF programs for seconds)."""
    return proc.poll() is not None or procfs.exiting(proc.pid)


class RunCoverage:
    def __init__(
        self, monitor: Monitor, session: int, cg: SessionCgroup, mode: str, on_loss: str,
        emit: Callable[[dict], None], guard: Callable[[], None],
    ) -> None:  # fmt: skip
        self.monitor = monitor
        self.session = session
        self.cg = cg
        self.how = on_loss if mode == "enforce" else "continue"
        self.emit = emit
        self.guard = guard  # the launcher's pids guarded again in a new collector
        self.lost = ""
        self.lost_at = 0.0
        self.froze = False
        self.killed = False
        self._ping = None
        self._next_ping = 0.0
        self._unanswered = 0
        self._seq = 0
        self._said_restart = False

    # -- alerts ---------------------------------------------------------------------------

    def _alert(self, kind: str, detail: str, severity: str, action: str, outcome: str) -> None:
        self._seq += 1
        self.emit(dict(make_alert(
            id=f"{time.time_ns():x}-run{os.getpid()}-{self._seq}", ts_ns=time.time_ns(),
            rule=f"roguewatch_{kind}", message=detail, category="monitor", severity=severity,
            session=self.session, pid=os.getpid(), comm="roguewatch",
            event={"type": "monitor", "kind": kind}, action=action, outcome=outcome,
        )))  # fmt: skip

    # -- the check, every loop turn -------------------------------------------------------

    def _private_dead(self) -> list[str]:
        m = self.monitor
        out = []
        col = m.watcher.proc if m.watcher is not None else None
        for name, proc in (("collector", col), ("evaluator", m.evaluator)):
            if proc is not None and _gone(proc):
                code = proc.returncode
                out.append(f"{name} (exit {'killed' if code is None else code})")
        return out

    def _answers(self) -> bool | None:
        """The control connection: True answered, False broken, None not asked this turn."""
        from roguewatch.stream.control import ControlClient, ControlError

        now = time.monotonic()
        if now < self._next_ping:
            return None
        self._next_ping = now + PING_EVERY_S
        endpoint = self.monitor.watcher.control.endpoint  # type: ignore[union-attr]
        try:
            if self._ping is None:
                self._ping = ControlClient(endpoint, timeout_ms=PING_TIMEOUT_MS)
            reply = self._ping.request("ping")
            self._unanswered = 0
            return bool(reply.get("resumed", True))
        except ControlError:
            if self._ping is not None:
                self._ping.close()
                self._ping = None  # (a REQ socket that timed out cannot be used again)
            self._unanswered += 1
            return False if self._unanswered >= PINGS_LOST else None

    def check(self) -> None:
        private = self.monitor.evaluator is not None
        dead = self._private_dead() if private else []
        answers = None if private else self._answers()
        if not self.lost and (dead or answers is False):
            self._engage(
                f"our {', '.join(dead)} died"
                if dead
                else "the control connection to roguewatchd's collector broke"
            )
        if not self.lost:
            return
        if private:
            if self._restart(dead) and self._holds_session():
                self._release()
        elif answers and self._holds_session():
            self._release()

    def _engage(self, why: str) -> None:
        from roguewatch.respond.cgroups import CgroupError

        self.lost, self.lost_at = why, time.monotonic()
        outcome = "left running (on_monitor_loss: continue)"
        try:
            if self.how == "kill":
                n = self.cg.kill()
                self.killed = True
                outcome = f"session killed (cgroup.kill): {n} processes"
            elif self.how == "freeze":
                if self.cg.frozen():
                    outcome = "the session was frozen already"
                else:
                    self.cg.set_frozen(True)
                    self.froze = True
                    outcome = "session frozen until the monitor is back"
        except CgroupError as exc:
            outcome = f"could not {self.how}: {exc}"
        action = {"kill": "kill_session", "freeze": "freeze"}.get(self.how, "alert")
        self._alert("monitor_lost", f"{why}: the session is not watched ({outcome})",
                    "critical", action, outcome)  # fmt: skip

    def _restart(self, dead: list[str]) -> bool:
        """Our dead components started again as they were; True once all run."""
        from roguewatch.runtime import launcher
        from roguewatch.stream.control import ControlClient, ControlError

        m = self.monitor
        w = m.watcher
        assert w is not None
        try:
            if w.proc is not None and _gone(w.proc) and w.cmd:
                w.proc = launcher.respawn(w.cmd)
                w.control.close()
                w.control = ControlClient(w.control.endpoint)
                self.guard()
            if m.evaluator is not None and _gone(m.evaluator) and m.evaluator_cmd:
                m.evaluator = launcher.respawn(m.evaluator_cmd)
                self.guard()
            from roguewatch.runtime.service import wait_subscribed

            wait_subscribed(w.control)
            w.control.request("resume", rescan=True)
        except (launcher.SessionError, ControlError) as exc:
            if not self._said_restart:
                self._said_restart = True
                print(f"roguewatch run: the monitor could not be started again: {exc}",
                      flush=True, file=sys.stderr)  # fmt: skip
            return False
        return not self._private_dead()

    def _holds_session(self) -> bool:
        from roguewatch.stream.control import ControlClient, ControlError

        w = self.monitor.watcher
        assert w is not None
        try:
            client = ControlClient(w.control.endpoint, timeout_ms=1000)
            try:
                sessions = client.request("sessions")["sessions"]
            finally:
                client.close()
        except ControlError:
            return False
        return any(s.get("session") == f"{self.session:x}" for s in sessions)

    def _release(self) -> None:
        from roguewatch.respond.cgroups import CgroupError

        gap = time.monotonic() - self.lost_at
        outcome = "coverage back"
        if self.froze:
            try:
                self.cg.set_frozen(False)
                outcome = "session thawed"
            except CgroupError as exc:
                outcome = f"not thawed: {exc}"
        self.froze = False
        self.guard()
        self._alert(
            "coverage_restored",
            f"the monitor is back after {gap:.1f} s ({self.lost}): the session is watched again",
            "high",
            "alert",
            outcome,
        )
        self.lost = ""
