"""roguewatchd: the service. Starts and supervises its components; prints what it sees.

Owns process supervision: the collector and the evaluator run as processes of their own,
each started and waited for until it says it is ready; one that dies is restarted with
back-off and the restart is reported as a `monitor` alert on stderr and in the alert stream.
Without systemd it logs plainly to stderr. SIGHUP is passed to the evaluator (rules reload).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from roguewatch import __version__
from roguewatch.core import paths, procfs
from roguewatch.outputs import render
from roguewatch.policy import config
from roguewatch.respond.selfdefense import ShutdownGate
from roguewatch.runtime import readiness
from roguewatch.runtime.components import COMPONENT_MODULES, component_preexec
from roguewatch.stream import bus
from roguewatch.stream.control import ControlClient, ControlError

log = logging.getLogger("roguewatchd")


@dataclass
class Component:
    name: str
    module: str
    args: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    restarts: int = 0
    backoff: float = 1.0
    next_start: float = 0.0
    events_at_death: int | None = None

    def start(
        self, config_path: str | None, timeout: float = 60.0,
        on_spawn: Callable[[int], None] | None = None,
    ) -> float:  # fmt: skip
        """Start it and wait for its ready byte; returns the seconds that took.

        ``on_spawn(pid)`` runs as soon as the process exists (the service guards the evaluator
        there, so its very first writes are roguewatch's own)."""
        r, w = os.pipe()
        cmd = [sys.executable, "-m", self.module, "--ready-fd", str(w), *self.args]
        if config_path:
            cmd += ["--config", config_path]
        t0 = time.monotonic()
        # It dies with the service, and runs ahead of the agents it watches (nice -10 in a
        # scheduling group of its own: roguewatch.priority).
        self.proc = subprocess.Popen(cmd, pass_fds=(w,), preexec_fn=component_preexec)
        os.close(w)
        if on_spawn is not None:
            on_spawn(self.proc.pid)
        if not readiness.wait(r, self.proc, timeout):
            raise RuntimeError(f"the {self.name} did not become ready (see its messages above)")
        return time.monotonic() - t0

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.terminate()


class Service:
    def __init__(self, cfg: config.Config, config_path: str | None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.collector = Component("collector", COMPONENT_MODULES["collector"])
        self.evaluator = Component(
            "evaluator", COMPONENT_MODULES["evaluator"], [] if cfg.print_alerts else ["--quiet"]
        )
        self.components: tuple[Component, ...] = (self.collector, self.evaluator)
        # The fleet: the evaluator spools alerts and sessions, the forwarder publishes them.
        self.forwarder: Component | None = None
        if cfg.fleet.enabled:
            self.evaluator.args.append("--fleet")
            self.forwarder = Component("forwarder", COMPONENT_MODULES["forwarder"])
            self.components = (*self.components, self.forwarder)
        self.stopping = False
        self.stopped_by = ""

    def stop(self, *_: object) -> None:
        self.stopping = True

    def reload(self, *_: object) -> None:
        self.notify("RELOADING=1")
        if self.evaluator.alive():
            assert self.evaluator.proc is not None
            self.evaluator.proc.send_signal(signal.SIGHUP)
        self.notify("READY=1")  # a broken rule file keeps the old set: still ready

    def _guard(self, pid: int) -> None:
        try:
            client = ControlClient(self.cfg.control_endpoint)
            client.request("guard", pid=pid)
            client.close()
        except ControlError as exc:
            log.warning("could not guard pid %d: %s", pid, exc)

    def notify(self, state: str) -> None:
        """sd_notify when systemd started us (NOTIFY_SOCKET); nothing otherwise."""
        if os.environ.get("NOTIFY_SOCKET"):
            try:
                from systemd import daemon

                daemon.notify(state)
            except (ImportError, OSError):
                pass

    def status_line(self) -> str:
        try:
            import json

            with open(self.cfg.status_file) as f:
                st = json.load(f)
            lost = sum(st["lost"].values())
            return (f"{st['sessions']} sessions, {st['events']} events, {st['alerts']} alerts, "
                    f"{st['kills']} kills, {lost} lost")  # fmt: skip
        except (OSError, ValueError, KeyError):
            return "running"

    def _published(self) -> int | None:
        try:
            client = ControlClient(self.cfg.control_endpoint, timeout_ms=2000)
            n = int(client.request("stats")["events"])
            client.close()
            return n
        except (ControlError, KeyError, ValueError):
            return None

    def _announce_restart(self, c: Component) -> None:
        """A monitor alert on the stream for every restart, with what it cost."""
        if c is self.evaluator:
            now, then = self._published(), c.events_at_death
            missed = now - then if now is not None and then is not None else 0
            detail = (f"evaluator restarted ({c.restarts} restarts): {missed} events published "
                      "while it was down were not evaluated")  # fmt: skip
        elif c is self.forwarder:
            missed = 0
            detail = (f"forwarder restarted ({c.restarts} restarts): alerts waited in the fleet "
                      "spool meanwhile and are published now")  # fmt: skip
        else:
            missed = 0
            detail = (f"collector restarted ({c.restarts} restarts): kernel events while it was "
                      "down were not recorded; sessions must be registered again")  # fmt: skip
        try:
            client = ControlClient(self.cfg.control_endpoint, timeout_ms=2000)
            client.request("announce", kind="restart", detail=detail, missed=missed)
            client.close()
        except ControlError as exc:
            log.warning("could not announce the restart: %s", exc)

    def start(self) -> None:
        t0 = time.monotonic()
        took = self.collector.start(self.config_path)
        log.info("collector ready in %.2f s: probes attached", took)
        self._guard(os.getpid())
        took = self.evaluator.start(self.config_path, on_spawn=self._guard)
        log.info("evaluator ready in %.2f s: subscribed, rules loaded", took)
        self._guard(self.evaluator.proc.pid)  # type: ignore[union-attr]  # its threads too
        if self.forwarder is not None:
            took = self.forwarder.start(self.config_path, on_spawn=self._guard)
            log.info("forwarder ready in %.2f s: fleet spool open", took)
        log.info("roguewatchd ready in %.2f s", time.monotonic() - t0)
        self.notify("READY=1\nSTATUS=probes attached, evaluator subscribed")

    def supervise(self) -> None:
        """Restart a component that died, with back-off; the restart is itself reported."""
        for c in self.components:
            if c.alive() or self.stopping:
                continue
            now = time.monotonic()
            if c.next_start == 0.0:
                code = c.proc.returncode if c.proc else None
                c.events_at_death = self._published()
                log.error("%s exited (%s); restarting in %.0f s", c.name, code, c.backoff)
                detail = f"{c.name} exited ({code}); events while it was down were not seen"
                print(render.human({"type": "monitor", "kind": "restart", "ts": time.time_ns(),
                                    "detail": detail}), file=sys.stderr, flush=True)  # fmt: skip
                c.next_start = now + c.backoff
                c.backoff = min(c.backoff * 2, 30.0)
            if now >= c.next_start:
                c.next_start = 0.0
                c.restarts += 1
                try:
                    spawned = self._guard if c is not self.collector else None
                    c.start(self.config_path, on_spawn=spawned)
                    if c is not self.collector and c.proc is not None:
                        self._guard(c.proc.pid)  # the threads it made since
                    self._announce_restart(c)
                except RuntimeError as exc:
                    log.error("%s", exc)

    def _from_session(self, pid: int) -> bool:
        """Whether a signal's sender is in a session (its signal is dropped, not obeyed): the
        collector judges; without an answer, a sender in a session's cgroup is one."""
        if pid <= 1:
            return False
        try:
            client = ControlClient(self.cfg.control_endpoint, timeout_ms=1000)
            try:
                return client.request("standing", pid=pid)["standing"] == "SESSION"
            finally:
                client.close()
        except ControlError:
            return in_session_cgroup(pid)

    def _obey(self, gate: ShutdownGate) -> None:
        for signo, sender in gate.poll_senders():
            if signo == signal.SIGHUP:
                self.reload()
            elif not self.stopping:
                self.stopping = True
                self.stopped_by = _who(sender, signal.Signals(signo).name)

    def run(self) -> int:
        # Before any thread: TERM, INT and HUP are read by the loop with their sender, so a
        # session's signal is dropped and the operator's is recorded.
        gate = ShutdownGate(self._from_session)
        try:
            self.start()
        except RuntimeError as exc:
            log.error("%s", exc)
            self.shutdown()
            return 1
        sub = bus.Subscriber(self.cfg.events_endpoint) if self.cfg.print_events else None
        if sub is not None:
            sub.wait_ready(2000)
        next_ping = 0.0
        while not self.stopping:
            now = time.monotonic()
            if now >= next_ping:  # the watchdog ping only while every component is alive
                next_ping = now + 5.0
                if all(c.alive() for c in self.components):
                    self.notify(f"WATCHDOG=1\nSTATUS={self.status_line()}")
            if sub is not None:
                batch = sub.recv_batch(200)
                for ev in batch or ():
                    print(render.human(ev), flush=True)
            else:
                time.sleep(0.2)
            self._obey(gate)
            self.supervise()
            self.unstop()
        self._announce_stop()
        self.shutdown()
        return 0

    def _announce_stop(self) -> None:
        """One record of who stopped the monitor, before its components go."""
        detail = f"roguewatchd stopped by {self.stopped_by or 'its own exit'}"
        log.info("%s", detail)
        try:
            client = ControlClient(self.cfg.control_endpoint, timeout_ms=2000)
            client.request("announce", kind="stopped", detail=detail)
            client.close()
            time.sleep(0.3)  # for the evaluator to write it before it is stopped
        except ControlError as exc:
            log.warning("could not announce the stop: %s", exc)

    def unstop(self) -> None:
        """A component stopped by SIGSTOP (an agent's, or a debugger's) is continued."""
        for c in self.components:
            if c.alive() and c.proc is not None and procfs.stopped(c.proc.pid):
                log.warning("%s was stopped (SIGSTOP): continuing it", c.name)
                os.kill(c.proc.pid, signal.SIGCONT)

    def shutdown(self) -> None:
        for c in reversed(self.components):
            c.stop()
        for c in self.components:
            if c.proc is not None:
                try:
                    c.proc.wait(15)
                except subprocess.TimeoutExpired:
                    c.proc.kill()


def in_session_cgroup(pid: int) -> bool:
    """In a session's cgroup (``core.paths.SESSION_CGROUPS``), whoever's session it is."""
    return (procfs.cgroup_path(pid) or "").startswith(f"/{paths.SESSION_CGROUPS}/")


def _who(pid: int, signame: str) -> str:
    """``SIGTERM from pid 123 (systemctl, /usr/bin/systemctl)``; the kernel or a terminal
    when there is no sender pid."""
    if not pid:
        return f"{signame} from the kernel or a terminal (^C)"
    return (f"{signame} from pid {pid} ({procfs.comm(pid) or '?'}, "
            f"{procfs.readlink(pid, 'exe') or '?'})")  # fmt: skip


def _setup_logging() -> None:
    """journald with structured fields under systemd; plain stderr everywhere else."""
    if os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"):
        try:
            from systemd.journal import JournalHandler

            logging.basicConfig(level=logging.INFO, handlers=[
                JournalHandler(SYSLOG_IDENTIFIER="roguewatchd")
            ])  # fmt: skip
            return
        except (ImportError, OSError):
            pass
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="roguewatchd", description="the roguewatch service")
    ap.add_argument("--config", metavar="FILE", help="YAML configuration (default: built in)")
    ap.add_argument("--events", action="store_true", help="also print every event")
    ap.add_argument("--quiet", action="store_true", help="print neither events nor alerts")
    ap.add_argument("--version", action="version", version=f"roguewatchd {__version__}")
    args = ap.parse_args(argv)
    _setup_logging()
    if os.geteuid() != 0:
        print("roguewatchd: must run as root (it loads BPF probes)", file=sys.stderr)
        return 2
    try:
        cfg = config.load(args.config)
    except config.ConfigError as exc:
        print(f"roguewatchd: {exc}", file=sys.stderr)
        return 2
    if args.events:
        cfg.print_events = True
    if args.quiet:
        cfg.print_events = False
        cfg.print_alerts = False
    log.info("roguewatchd %s starting; adopting uids %s, comms %s", __version__,
             cfg.adopted_uids() or "none", cfg.adopt_comms or "none")  # fmt: skip
    return Service(cfg, args.config).run()


if __name__ == "__main__":
    raise SystemExit(main())
