"""roguewatchd: the service. Starts and supervises its components; prints what it sees.

Owns process supervision: the collector and the evaluator run as processes of their own,
each started and waited for until it says it is ready, then heard on a heartbeat pipe
(``runtime.heartbeat``). One that dies or stops answering is noticed within a second: a
critical alert, and the sessions fail closed per their policy (``respond.failclosed``) until
it is restarted (with back-off), every monitor pid is guarded again, the sessions are back in
the collector and the evaluator has heard of them; then they are released, and the restart
is reported as a `monitor` alert in the alert stream. Without systemd it logs plainly to
stderr, and runs under its own supervisor (``runtime.supervisor``) that restarts it. SIGHUP
is passed to the evaluator (rules reload).
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
from roguewatch.respond.failclosed import FailClosed
from roguewatch.respond.selfdefense import ShutdownGate
from roguewatch.runtime import heartbeat, readiness, supervisor
from roguewatch.runtime.components import COMPONENT_MODULES, component_preexec, popen, python_cmd
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
    backoff: float = 0.0  # the first restart at once: the sessions are frozen meanwhile
    next_start: float = 0.0
    events_at_death: int | None = None
    coverage: bool = True  # the sessions are not watched without it (not the forwarder)
    pulse: heartbeat.Pulse | None = None
    started_at: float = 0.0

    def start(
        self, config_path: str | None, timeout: float = 60.0,
        on_spawn: Callable[[int], None] | None = None,
    ) -> float:  # fmt: skip
        """Start it and wait for its ready byte; returns the seconds that took.

        ``on_spawn(pid)`` runs as soon as the process exists (the service guards the evaluator
        there, so its very first writes are roguewatch's own)."""
        r, w = os.pipe()
        hr, hw = os.pipe()
        cmd = python_cmd(self.module, "--ready-fd", str(w), "--heartbeat-fd", str(hw), *self.args)
        if config_path:
            cmd += ["--config", config_path]
        t0 = time.monotonic()
        # It dies with the service, and runs ahead of the agents it watches (nice -10 in a
        # scheduling group of its own: roguewatch.priority).
        self.proc = popen(cmd, pass_fds=(w, hw), preexec_fn=component_preexec)
        os.close(w)
        os.close(hw)
        if self.pulse is not None:
            self.pulse.close()
        self.pulse = heartbeat.Pulse(hr)
        if on_spawn is not None:
            on_spawn(self.proc.pid)
        if not readiness.wait(r, self.proc, timeout):
            raise RuntimeError(f"the {self.name} did not become ready (see its messages above)")
        self.pulse.arm()
        self.started_at = time.monotonic()
        return time.monotonic() - t0

    def silent_for(self) -> float:
        """Seconds since its loop last beat (0 while it is not running)."""
        return self.pulse.silent_for() if self.pulse is not None and self.alive() else 0.0

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def let_die(self) -> bool:
        """A component on its way out (killed, its memory gone, its files still closing: a
        collector's BPF programs take seconds) counts as dead from now on: it is reaped in
        the background and a new one may start meanwhile. True when it was so."""
        if self.proc is None or not self.alive() or not procfs.exiting(self.proc.pid):
            return False
        _DYING.append(self.proc)
        self.proc = None
        return True

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
            self.forwarder = Component(
                "forwarder", COMPONENT_MODULES["forwarder"], coverage=False
            )  # (alerts wait in the spool)
            self.components = (*self.components, self.forwarder)
        self.stopping = False
        self.stopped_by = ""
        # Under our own supervisor (runtime.supervisor): it restarts us, and says on this
        # pipe who asked it to stop us.
        self.supervised = False
        self.stopped_by_fd: int | None = None
        self.failclosed = FailClosed(cfg.state_dir, cfg.enforce)
        self.lost: dict[str, str] = {}  # coverage components lost now: why
        self.lost_at = 0.0

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
        if not self.collector.alive():
            return None
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
        # Our writes (and our supervisor's) are the monitor's own from the collector's first
        # event: guarded once it runs is too late for what we do while it starts.
        starters = [os.getpid()] + ([os.getppid()] if self.supervised and os.getppid() > 1 else [])
        self.collector.args = [a for p in starters for a in ("--guard-pid", str(p))]
        took = self.collector.start(self.config_path)
        log.info("collector ready in %.2f s: probes attached", took)
        self._guard(os.getpid())
        took = self.evaluator.start(self.config_path, on_spawn=self._guard)
        log.info("evaluator ready in %.2f s: subscribed, rules loaded", took)
        self._guard(self.evaluator.proc.pid)  # type: ignore[union-attr]  # its threads too
        if self.forwarder is not None:
            took = self.forwarder.start(self.config_path, on_spawn=self._guard)
            log.info("forwarder ready in %.2f s: fleet spool open", took)
        self._guard_all()
        self._recovered()  # the sessions a dead roguewatchd left frozen, released
        log.info("roguewatchd ready in %.2f s", time.monotonic() - t0)
        self.notify("READY=1\nSTATUS=probes attached, evaluator subscribed")

    def _guard_all(self) -> None:
        """Every process of the monitor guarded in the (maybe new) collector: this one, our
        supervisor, every component and the threads each has now."""
        pids = [os.getpid(), *(c.proc.pid for c in self.components if c.alive() and c.proc)]
        if self.supervised and os.getppid() > 1:
            pids.append(os.getppid())
        for pid in pids:
            self._guard(pid)

    def _resume(self, rescan: bool = False) -> dict:
        """Once the evaluator hears the collector (a subscriber), the collector announces its
        sessions and judges the gap."""
        try:
            client = ControlClient(self.cfg.control_endpoint, timeout_ms=5000)
            try:
                wait_subscribed(client)
                return client.request("resume", rescan=rescan)
            finally:
                client.close()
        except ControlError as exc:
            log.warning("could not resume the collector: %s", exc)
            return {}

    def _recovered(self) -> None:
        """Coverage is whole again: the collector announces its sessions to the evaluator
        (and judges the gap), and what failed closed is released."""
        lost = bool(self.failclosed.engaged or self.lost)
        # After any loss, the watched paths are compared with the last good baseline: a change
        # the stream carried while the evaluator was gone was never judged either.
        reply = self._resume(rescan=lost)
        if not lost:
            return
        released = self.failclosed.release()
        gap = time.monotonic() - self.lost_at if self.lost_at else 0.0
        what = ", ".join(self.lost) or "roguewatchd"
        detail = (f"coverage is back after the loss of the {what}"
                  + (f" ({gap:.1f} s)" if gap else "")
                  + f": {reply.get('recovered', 0)} sessions taken back by the collector"
                  + (f"; released: {'; '.join(released)}" if released else ""))  # fmt: skip
        log.warning("%s", detail)
        self.lost, self.lost_at = {}, 0.0
        try:
            client = ControlClient(self.cfg.control_endpoint, timeout_ms=2000)
            client.request("announce", kind="coverage_restored", detail=detail,
                           severity="high")  # fmt: skip
            client.close()
        except ControlError as exc:
            log.warning("could not announce the recovery: %s", exc)

    def watch(self) -> None:
        """A coverage component dead or silent past heartbeat.HANG_S: the sessions fail
        closed now (the restart comes after). One silent for HANG_KILL_S is killed, so that
        it is restarted."""
        for c in self.components:
            if not c.coverage or c.name in self.lost or self.stopping:
                continue
            c.let_die()
            if not c.alive():
                code = c.proc.returncode if c.proc else "killed"
                why = f"the {c.name} died (exit {code})"
            else:
                silent = c.silent_for()
                if silent <= heartbeat.HANG_S:
                    continue
                why = f"the {c.name} (pid {c.proc.pid}) stopped answering ({silent:.1f} s)"  # type: ignore[union-attr]
            self.lost[c.name] = why
            self.lost_at = self.lost_at or time.monotonic()
            log.error("%s: sessions fail closed", why)
            own = {p.proc.pid for p in self.components if p.proc is not None}
            if self.supervised:
                own.add(os.getppid())
            self.failclosed.own |= own
            supervisor.fail_closed(self.cfg, why, own)
        for c in self.components:
            if c.alive() and c.name in self.lost and c.silent_for() > HANG_KILL_S:
                log.error("the %s has not answered for %.0f s: killing it to restart it",
                          c.name, HANG_KILL_S)  # fmt: skip
                c.proc.kill()  # type: ignore[union-attr]
                _DYING.append(c.proc)  # type: ignore[arg-type]
                c.proc = None
        _DYING[:] = [p for p in _DYING if p.poll() is None]
        # Back without a restart (it was stopped and continued, or just slow): the collector
        # still has every session.
        answering = all(c.alive() and c.silent_for() <= heartbeat.BEAT_S * 3
                        for c in self.components if c.coverage)  # fmt: skip
        if self.lost and answering and all("stopped answering" in w for w in self.lost.values()):
            self._recovered()

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
                if c.started_at and now - c.started_at >= 60.0:
                    c.backoff = 0.0  # it ran a while: restart it at once again
                c.next_start = now + c.backoff
                c.backoff = min(max(c.backoff * 2, 0.5), 30.0)
            if now >= c.next_start:
                c.next_start = 0.0
                c.restarts += 1
                try:
                    spawned = self._guard if c is not self.collector else None
                    c.start(self.config_path, on_spawn=spawned)
                    self._guard_all()  # a new collector knows nobody: all of us again
                except RuntimeError as exc:
                    log.error("%s", exc)
                    continue
                if all(x.alive() for x in self.components if x.coverage):
                    self._recovered()
                self._announce_restart(c)

    def _from_session(self, pid: int) -> bool:
        """Whether a signal's sender is in a session (its signal is dropped, not obeyed)."""
        return supervisor.sender_in_session(self.cfg.control_endpoint, pid)

    def _obey(self, gate: ShutdownGate) -> None:
        for signo, sender in gate.poll_senders():
            if signo == signal.SIGHUP:
                self.reload()
            elif not self.stopping:
                self.stopping = True
                self.stopped_by = _who(sender, signal.Signals(signo).name)
                if self.supervised and sender == os.getppid() and self.stopped_by_fd:
                    told = _read_line(self.stopped_by_fd)  # who asked our supervisor
                    if told:
                        self.stopped_by = f"{told} (through roguewatchd's supervisor)"

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
                batch = sub.recv_batch(50)
                for ev in batch or ():
                    print(render.human(ev), flush=True)
            else:
                time.sleep(0.05)
            self._obey(gate)
            self.watch()
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
        """A component stopped by SIGSTOP (an agent's, or a debugger's) is continued; one in a
        frozen cgroup (cgroup.freeze, written by whoever moved it there) is thawed, and said."""
        for c in self.components:
            if c.alive() and c.proc is not None and procfs.stopped(c.proc.pid):
                log.warning("%s was stopped (SIGSTOP): continuing it", c.name)
                os.kill(c.proc.pid, signal.SIGCONT)
            if c.alive() and c.proc is not None:
                where = _frozen_cgroup(c.proc.pid)
                if where:
                    try:
                        with open(os.path.join(where, "cgroup.freeze"), "w") as f:
                            f.write("0")
                        done = "thawed"
                    except OSError as exc:
                        done = f"could not thaw it: {exc.strerror}"
                    supervisor.report(self.cfg, "component_frozen",
                                      f"the {c.name} (pid {c.proc.pid}) was in a frozen cgroup "
                                      f"({where}): {done}", outcome=done)  # fmt: skip

    def shutdown(self) -> None:
        if self.collector.alive():  # a stop asked for: the next collector starts afresh
            try:
                client = ControlClient(self.cfg.control_endpoint, timeout_ms=2000)
                client.request("stopping")
                client.close()
            except ControlError as exc:
                log.warning("could not tell the collector it is stopped: %s", exc)
        for c in reversed(self.components):
            c.stop()
        for c in self.components:
            if c.proc is not None:
                try:
                    c.proc.wait(15)
                except subprocess.TimeoutExpired:
                    c.proc.kill()


HANG_KILL_S = 5.0  # a component silent this long is killed (and restarted)
_DYING: list[subprocess.Popen] = []  # components killed, still closing their files


def _frozen_cgroup(pid: int) -> str:
    """The cgroup v2 directory of ``pid`` when it (or an ancestor: one level up is enough for
    a move-and-freeze) is frozen; '' otherwise."""
    from roguewatch.host import kernelenv

    rel, mount = procfs.cgroup_path(pid), kernelenv.cgroup2_mount()
    if not rel or not mount:
        return ""
    path = os.path.join(mount, rel.lstrip("/"))
    try:
        with open(os.path.join(path, "cgroup.events")) as f:
            frozen = "frozen 1" in f.read()
    except OSError:
        return ""
    if not frozen:
        return ""
    # The one that asks for it: this cgroup, or the ancestor whose cgroup.freeze says 1.
    while path.startswith(mount) and path != mount:
        try:
            with open(os.path.join(path, "cgroup.freeze")) as f:
                if f.read().strip() == "1":
                    return path
        except OSError:
            return ""
        path = os.path.dirname(path)
    return ""


def wait_subscribed(client: ControlClient, timeout: float = 5.0) -> bool:
    """Until the collector has a subscriber (its evaluator reconnected after a restart)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.request("ping").get("subscribers", 1) > 0:
            return True
        time.sleep(0.01)
    return False


def _read_line(fd: int) -> str:
    try:
        os.set_blocking(fd, False)
        return os.read(fd, 4096).decode(errors="replace").strip().splitlines()[-1]
    except (OSError, IndexError):
        return ""


def in_session_cgroup(pid: int) -> bool:
    """In a session's cgroup (``core.paths.SESSION_CGROUPS``), whoever's session it is."""
    return (procfs.cgroup_path(pid) or "").startswith(f"/{paths.SESSION_CGROUPS}/")


_who = supervisor.who


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


def _without_config(argv: list[str]) -> list[str]:
    """Our arguments without ``--config FILE`` (``--config=FILE``)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--config":
            skip = True
        elif not a.startswith("--config="):
            out.append(a)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="roguewatchd", description="the roguewatch service")
    ap.add_argument("--config", metavar="FILE", help="YAML configuration (default: built in)")
    ap.add_argument("--events", action="store_true", help="also print every event")
    ap.add_argument("--quiet", action="store_true", help="print neither events nor alerts")
    ap.add_argument("--version", action="version", version=f"roguewatchd {__version__}")
    ap.add_argument(
        "--fail-closed",
        action="store_true",
        help="systemd's ExecStopPost: hold the sessions after the service died",
    )
    ap.add_argument(
        "--no-supervisor",
        action="store_true",
        help="without systemd, run without the supervisor that restarts roguewatchd",
    )
    ap.add_argument(
        "--release-kernel-side",
        action="store_true",
        help="remove what stopped collectors kept in the kernel (pins, egress programs) and "
        "exit; for a host that runs roguewatch no more (the package's prerm)",
    )
    ap.add_argument("--supervised", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--stopped-by-fd", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.config:
        # Our components (and a restarted service) start in "/" (components.popen).
        args.config = os.path.abspath(args.config)
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
    if args.fail_closed:
        return supervisor.stop_post(cfg)
    if args.release_kernel_side:
        from roguewatch.sensors import bpf

        try:
            pinned, egress = bpf.release_kernel_side()
        except bpf.ProbeError as exc:
            print(f"roguewatchd: kernel side not released: {exc}", file=sys.stderr)
            return 1
        print(f"roguewatchd: kernel side released: {pinned} pin instances removed, "
              f"{egress} egress programs detached from the cgroup root")  # fmt: skip
        return 0
    if not (args.supervised or args.no_supervisor or supervisor.under_systemd()):
        # Our own supervisor: it restarts the service (the process below) when it dies.
        own = _without_config(argv if argv is not None else sys.argv[1:])
        if args.config:
            own += ["--config", args.config]
        return supervisor.Supervisor(cfg, own).run()
    log.info("roguewatchd %s starting; adopting uids %s, comms %s", __version__,
             cfg.adopted_uids() or "none", cfg.adopt_comms or "none")  # fmt: skip
    service = Service(cfg, args.config)
    service.supervised, service.stopped_by_fd = args.supervised, args.stopped_by_fd
    return service.run()


if __name__ == "__main__":
    raise SystemExit(main())
