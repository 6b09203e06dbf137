"""Who keeps roguewatchd itself alive, and what is said and done while the monitor is lost.

Owns three things:

- the supervisor process of roguewatchd without systemd (``Supervisor``): `roguewatchd`
  started by hand, by an init script or a container entry point forks the service as its
  child and restarts it when it dies, at once the first time and with back-off after; while
  no service runs, the sessions are failed closed (``respond.failclosed``), and the new
  service releases them once its collector has them again. Its SIGTERM, SIGINT and SIGHUP are
  read with their sender (a session's are dropped) and passed on, with who sent them;
- the same under systemd: ``roguewatchd --fail-closed`` is the unit's ``ExecStopPost=``, run
  by systemd after the service died (not after a stop the operator asked for), before the
  unit's ``Restart=`` starts it again;
- the monitor's own alerts about losing coverage (``report``): written straight to the alert
  file, journald and stderr, because the evaluator that would write them may be the component
  that is gone.

It must not watch sessions or judge events: it only keeps the ones that do alive.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time

from roguewatch.core import paths, procfs
from roguewatch.core.contracts import make_alert
from roguewatch.outputs import alerts
from roguewatch.policy import config
from roguewatch.respond.failclosed import FailClosed
from roguewatch.respond.selfdefense import ShutdownGate
from roguewatch.runtime import components

log = logging.getLogger("roguewatchd")

SERVICE = "roguewatch.runtime.service"
FIRST_RESTART_S = 0.0  # the first restart at once: the sessions wait frozen meanwhile
MAX_BACKOFF_S = 10.0
STABLE_S = 60.0  # a service that ran this long starts its back-off afresh
_seq = 0


def report(cfg: config.Config, kind: str, detail: str, severity: str = "critical",
           outcome: str = "alert") -> dict:  # fmt: skip
    """A `monitor` alert written by whoever is alive (the file, journald, stderr)."""
    global _seq
    _seq += 1
    alert = make_alert(
        id=f"{time.time_ns():x}-s{os.getpid()}-{_seq}", ts_ns=time.time_ns(),
        rule=f"roguewatch_{kind}", message=detail, category="monitor", severity=severity,
        pid=os.getpid(), comm="roguewatch", event={"type": "monitor", "kind": kind},
        action="freeze" if "frozen" in outcome else "alert", outcome=outcome,
    )  # fmt: skip
    alert["origin"] = f"{procfs.comm(os.getpid()) or '?'} (pid {os.getpid()})"
    sinks: list = []
    if cfg.alerts_file:
        with contextlib.suppress(OSError):
            sinks.append(alerts.AlertFile(cfg.alerts_file, cfg.alerts_file_max_bytes,
                                          cfg.alerts_file_keep))  # fmt: skip
    if cfg.journald:
        with contextlib.suppress(OSError):
            sinks.append(alerts.Journal())
    out = alerts.Sinks(sinks)
    out.emit(alert)
    out.close()
    print(alerts.human(alert), file=sys.stderr, flush=True)
    return dict(alert)


def fail_closed(cfg: config.Config, why: str, own: set[int] | None = None) -> list[str]:
    """The sessions held per their policy, and one critical alert that says why and how."""
    done = FailClosed(cfg.state_dir, cfg.enforce, own).engage(why)
    report(cfg, "monitor_lost", f"{why}: sessions fail closed until coverage is back"
           + (f" ({'; '.join(done)})" if done else " (no live session)"),
           outcome="; ".join(done) or "no live session")  # fmt: skip
    return done


def sender_in_session(control_endpoint: str, pid: int) -> bool:
    """Whether a signal's sender is in a session: the collector judges; without an answer, a
    sender in a session's cgroup is one."""
    if pid <= 1:
        return False
    from roguewatch.stream.control import ControlClient, ControlError

    try:
        client = ControlClient(control_endpoint, timeout_ms=1000)
        try:
            return client.request("standing", pid=pid)["standing"] == "SESSION"
        finally:
            client.close()
    except ControlError:
        return (procfs.cgroup_path(pid) or "").startswith(f"/{paths.SESSION_CGROUPS}/")


def who(pid: int, signame: str) -> str:
    """``SIGTERM from pid 123 (systemctl, /usr/bin/systemctl)``; the kernel or a terminal
    when there is no sender pid."""
    if not pid:
        return f"{signame} from the kernel or a terminal (^C)"
    return (f"{signame} from pid {pid} ({procfs.comm(pid) or '?'}, "
            f"{procfs.readlink(pid, 'exe') or '?'})")  # fmt: skip


class Supervisor:
    """roguewatchd's parent without systemd: restart it, and hold the sessions meanwhile."""

    def __init__(self, cfg: config.Config, argv: list[str]) -> None:
        self.cfg = cfg
        self.argv = argv  # the service's own arguments
        self.proc: subprocess.Popen | None = None
        self.stop_w = -1  # the pipe that tells the service who stopped it
        self.backoff = FIRST_RESTART_S
        self.restarts = 0

    def spawn(self) -> None:
        r, w = os.pipe()
        self.stop_w = w
        cmd = components.python_cmd(SERVICE, "--supervised", "--stopped-by-fd", str(r),
                                    *self.argv)  # fmt: skip
        # What systemd told us is for roguewatchd (its readiness and watchdog, its journal).
        self.proc = components.popen(cmd, keep_env=components.SYSTEMD_NAMES, pass_fds=(r,))
        os.close(r)
        self.started = time.monotonic()

    def run(self) -> int:
        gate = ShutdownGate(lambda pid: sender_in_session(self.cfg.control_endpoint, pid))
        self.spawn()
        assert self.proc is not None
        next_start = 0.0
        while True:
            for signo, sender in gate.poll_senders():
                if self.proc is None:
                    if signo != signal.SIGHUP:
                        return 0  # stopped while no service ran
                    continue
                if signo != signal.SIGHUP:
                    with contextlib.suppress(OSError):
                        os.write(self.stop_w, (who(sender, signal.Signals(signo).name)
                                               + "\n").encode())  # fmt: skip
                    self.proc.send_signal(signo)
                    return self._wait_stop()
                self.proc.send_signal(signo)
            if self.proc is not None:
                code = self.proc.poll()
                if code is None:
                    time.sleep(0.02)
                    continue
                if code in (0, 2):  # stopped as asked, or a configuration it cannot run
                    return code
                next_start = time.monotonic() + self._died(code)
                continue
            if time.monotonic() >= next_start:
                self.restarts += 1
                self.spawn()
            else:
                time.sleep(0.02)

    def _died(self, code: int) -> float:
        """Hold the sessions, and say in how many seconds the service starts again."""
        assert self.proc is not None
        what = f"signal {-code}" if code < 0 else f"status {code}"
        pid = self.proc.pid
        with contextlib.suppress(OSError):
            os.close(self.stop_w)
        fail_closed(self.cfg, f"roguewatchd (pid {pid}) died ({what})", own={os.getpid()})
        if time.monotonic() - self.started >= STABLE_S:
            self.backoff = FIRST_RESTART_S
        delay = self.backoff
        log.error("roguewatchd died (%s); restarting it in %.1f s", what, delay)
        self.proc = None
        self.backoff = min(max(self.backoff * 2, 0.5), MAX_BACKOFF_S)
        return delay

    def _wait_stop(self) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def under_systemd() -> bool:
    return bool(os.environ.get("INVOCATION_ID") or os.environ.get("NOTIFY_SOCKET"))


def stop_post(cfg: config.Config) -> int:
    """``ExecStopPost=roguewatchd --fail-closed``: after a death, not after a stop asked for
    (systemd says which in $SERVICE_RESULT), the sessions are held until the restarted service
    has them again."""
    result = os.environ.get("SERVICE_RESULT", "")
    if result in ("", "success"):
        return 0
    code = os.environ.get("EXIT_STATUS", "?")
    fail_closed(cfg, f"roguewatchd died ({result}, {os.environ.get('EXIT_CODE', '')} {code})")
    return 0
