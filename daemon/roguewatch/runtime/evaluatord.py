"""The evaluator as a process of its own (`python -m roguewatch.runtime.evaluatord`).

Owns putting the evaluator together and running it: subscribed to the event stream, its
alerts to the sinks (socket, file, journald, console), its enforcer (restores are asked of
the collector, which owns the baselines), rules reloaded on SIGHUP or when a rule directory
changes (a broken file keeps the old set and raises a critical alert), its counters written
for `roguewatch status` and Prometheus once a second. Started by the service with ``--fleet``
(the config's fleet enabled), it is the fleet spool's one writer: every alert and session
summary is appended and fsynced in the loop turn that raised it (``roguewatch.fleet.records``).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable

from roguewatch.core import paths, procfs
from roguewatch.detect import ruleset
from roguewatch.detect.evaluator import DEFAULT_POLICY, Evaluator
from roguewatch.detect.proctable import ProcessTable
from roguewatch.detect.ruleset import RuleSet
from roguewatch.fleet.spool import SpoolError
from roguewatch.outputs import alerts
from roguewatch.policy import policy as policy_mod
from roguewatch.policy.config import Config
from roguewatch.policy.policy import StaticPolicy
from roguewatch.respond.enforcer import Enforcer
from roguewatch.respond.selfdefense import ShutdownGate, block_shutdown_signals
from roguewatch.runtime import heartbeat, readiness
from roguewatch.stream import bus
from roguewatch.stream.bus import Peer

log = logging.getLogger("roguewatch.evaluator")
# A rule file a session wrote within this long is not loaded (EvaluatorProcess.reload).
CONFIG_TAINT_NS = 30 * 1_000_000_000
RELOAD_SETTLE_S = 0.3
# Events the evaluator's loop handles before it looks at anything else (EvaluatorProcess.run)
BURST = 4096


def _by_severity(by_rule_sev: dict[tuple[str, str], int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for (_, sev), n in by_rule_sev.items():
        out[sev] = out.get(sev, 0) + n
    return out


def load_ruleset(cfg: Config) -> RuleSet:
    """Packaged packs, then the configured directories that exist (the fleet's last), then
    enable/disable (``ruleset.load_configured``: the fleet validates with it too)."""
    return ruleset.load_configured(cfg)


def rules_digest(cfg: Config, rules: RuleSet) -> str:
    return ruleset.digest(rules, [*cfg.rules_enable, "!", *cfg.rules_disable])


# At most one "fleet spool full" alert per this many seconds (each says how many were dropped).
SPOOL_FULL_EVERY_S = 10.0


class EvaluatorProcess:
    def __init__(self, cfg: Config, fleet: bool = False) -> None:
        self.cfg = cfg
        pol = policy_mod.load(cfg.policy_file) if cfg.policy_file else policy_mod.default()
        if fleet and cfg.fleet.enabled and cfg.fleet.rules:
            os.makedirs(cfg.fleet.rules_dir, mode=0o700, exist_ok=True)  # watched from now on
        rules = load_ruleset(cfg)  # a bad rule file at start is fatal: the caller says why
        self.rules_hash = rules_digest(cfg, rules)
        table = ProcessTable(pol)
        self._refused: list[Peer | None] = []  # alert subscribers refused, judged in the loop
        self.sinks = self._sinks(cfg, table, self._refused.append)
        # The fleet's spool: every alert and session summary, durable before it leaves.
        self.fleet = None
        if fleet and cfg.fleet.enabled:
            from roguewatch.fleet.records import Recorder

            self.fleet = Recorder(cfg.fleet)
            self.sinks.add(self.fleet, "fleet")
        self._spool_dropped = 0  # not yet reported
        self._spool_reported_at = 0.0
        self.enforcer = Enforcer(table, restorer=self._restore) if cfg.enforce else None
        self._control = None
        self.evaluator = Evaluator(
            rules, table, self.sinks.send, cfg.dedup_window, enforcer=self.enforcer
        )
        if isinstance(pol, StaticPolicy):
            self.evaluator.set_session_policy(DEFAULT_POLICY, pol)  # its host names resolved
        if self.fleet is not None:
            self.evaluator.on_session = self.fleet.session
        # The collector may still be loading its probes (run starts both at once).
        self.sub = bus.Subscriber(cfg.events_endpoint, wait_s=60.0)
        self._reload = False
        self._reload_after = 0.0
        self._stopping = False
        self._malformed_reported = 0
        self._observer = None
        self.reloads = {"ok": 0, "failed": 0}
        self.started = time.time()
        self.metrics = None
        if cfg.metrics_port:
            from roguewatch.outputs.metrics import Metrics

            self.metrics = Metrics(cfg.metrics_port)

    @staticmethod
    def _sinks(
        cfg: Config, table: ProcessTable, refused: Callable[[Peer | None], None]
    ) -> alerts.Sinks:
        # Nothing in a session may listen to the alerts (it would learn what was seen of it).
        def admit(peer: Peer | None) -> bool:
            if peer is None or peer.uid != 0 or table.session_of_tree(peer.pid) is not None:
                return False
            cg = procfs.cgroup_path(peer.pid) or ""
            return not cg.startswith(f"/{paths.SESSION_CGROUPS}/")  # another instance's agent

        out: list = [
            alerts.AlertPublisher(cfg.alerts_endpoint, admit=admit, on_refused=refused),
            alerts.AlertFile(
                cfg.alerts_file, cfg.alerts_file_max_bytes, cfg.alerts_file_keep, chained=True
            ),
        ]
        if cfg.journald:
            out.append(alerts.Journal())
        if cfg.print_alerts:
            color = sys.stdout.isatty()
            out.append(lambda a: print(alerts.human(a, color), flush=True))
        return alerts.Sinks(out)

    def _restore(self, path: str, who: dict) -> str:
        """Restoring is the collector's (it owns the watchers and the baselines)."""
        from roguewatch.stream.control import ControlClient, ControlError

        try:
            if self._control is None:
                self._control = ControlClient(self.cfg.control_endpoint)
            return self._control.request("restore", path=path, who=who)["outcome"]
        except ControlError as exc:
            self._control = None  # a REQ socket that timed out cannot be reused
            return f"not restored: {exc}"

    def _refuse(self, peer: Peer | None) -> None:
        """A refused alert subscriber, judged as the `tamper` event it is."""
        pid = peer.pid if peer else 0
        table = self.evaluator.table
        eid = table.by_pid.get(pid, "")
        rec = table.procs.get(eid, {})
        who = f"pid {pid} (uid {peer.uid})" if peer else "a peer without credentials"
        self.evaluator.handle({
            "type": "tamper", "ts": time.time_ns(), "ret": 0, "flags": [],
            "kind": "subscription_refused", "target": "the alert stream",
            "detail": f"{who} was refused the alert stream",
            "session": table.session_of_tree(pid) or 0, "pid": pid, "tid": pid,
            "ppid": procfs.ppid(pid) if pid else 0, "uid": peer.uid if peer else 0, "gid": 0,
            "comm": rec.get("comm") or procfs.comm(pid) or "", "exec_id": eid,
            "pexec_id": rec.get("pexec_id", ""), "exe": rec.get("exe", ""),
        })  # fmt: skip

    def request_reload(self, *_: object, settle: float = 0.0) -> None:
        """Reload the rules at the next turn of the loop (SIGHUP), or ``settle`` seconds after
        a rule file changed: the probe event of who changed it arrives meanwhile."""
        self._reload = True
        self._reload_after = time.monotonic() + settle

    def stop(self, *_: object) -> None:
        self._stopping = True

    def watch_rule_dirs(self) -> None:
        """Reload when a file in a rule directory changes (watchdog, inotify)."""
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        owner = self

        class _Changed(FileSystemEventHandler):
            def on_any_event(self, event) -> None:
                if str(event.src_path).endswith((".yaml", ".yml")):
                    owner.request_reload(settle=RELOAD_SETTLE_S)

        dirs = self.cfg.rule_dirs_in_effect()
        if not dirs:
            return
        self._observer = Observer()
        for d in dirs:
            self._observer.schedule(_Changed(), d, recursive=False)
        self._observer.daemon = True
        self._observer.start()

    def _changed_by_a_session(self) -> list[str]:
        """Rule files a process in a session changed within the last CONFIG_TAINT_NS (the
        probes' last event on each path, or a watcher change the collector attributed): such
        a change is never loaded. The rule that sees it kills the session and restores the
        file; the reload that follows finds the old content, and loads nothing new."""
        now = time.time_ns()
        dirs = tuple(d.rstrip("/") + "/" for d in self.cfg.rule_dirs_in_effect())
        out = []
        for path, ev in list(self.evaluator.table.recent_paths.items()):
            # (a file made and already removed again counts: what the loader would have read)
            if (path.startswith(dirs) and ev.get("session")
                    and now - ev.get("ts", 0) < CONFIG_TAINT_NS):  # fmt: skip
                out.append(path)
        return sorted(out)

    def reload(self) -> bool:
        """Validate the new rule set first; on failure the old one stays, and says why. A
        rule directory a session wrote to is not loaded at all."""
        self._reload = False
        tainted = self._changed_by_a_session()
        if tainted:
            self.evaluator.monitor(
                {"type": "monitor", "kind": "rules_reload_refused", "ts": time.time_ns(),
                 "detail": "rules not reloaded: a process in a session changed "
                           f"{', '.join(tainted)}; the previous set stays active"},
                severity="critical",
            )  # fmt: skip
            self.reloads["refused"] = self.reloads.get("refused", 0) + 1
            return False
        try:
            new = load_ruleset(self.cfg)
        except ruleset.RuleError as exc:
            self.evaluator.monitor(
                {"type": "monitor", "kind": "rules_reload_failed", "ts": time.time_ns(),
                 "detail": f"rules not reloaded, the previous set stays active: {exc}"},
                severity="critical",
            )  # fmt: skip
            return False
        self.reloads["ok"] += 1
        if self.metrics:
            self.metrics.reloads.labels("ok").inc()
        self.evaluator.swap_rules(new)
        self.rules_hash = rules_digest(self.cfg, new)
        log.info("rules reloaded: %d rules", len(new))
        return True

    def run(
        self, ready: Callable[[], None] | None = None, gate: object = None,
        beat: Callable[[], None] | None = None,
    ) -> None:  # fmt: skip
        self.sub.wait_ready(5000)
        if ready:
            ready()
        next_tick = time.monotonic() + 1.0
        ev = self.evaluator
        while not self._stopping:
            if beat is not None:
                beat()  # the supervisor's heartbeat: a turn is at most ~0.2 s
            batch = self.sub.recv_batch(20 if ev._fs_held else 200)
            # Whatever else is queued goes first (up to BURST events): the housekeeping
            # below runs once per burst, not per batch, when the collector sends many small
            # ones (its wake-ups are frequent when it is busy).
            handled = 0
            while batch:
                ev.handle_batch(batch)
                handled += len(batch)
                batch = self.sub.recv_batch(0) if handled < BURST else None
            ev.flush_fs()
            self.sinks.service()  # greets new alert subscribers (tail --follow)
            while self._refused:
                self._refuse(self._refused.pop(0))
            if gate is not None:
                for signo in gate.poll():
                    if signo == signal.SIGHUP:
                        self.request_reload()
                    else:
                        self.stop()
            bad = self.sub.malformed + ev.malformed
            if bad != self._malformed_reported:
                n = bad - self._malformed_reported
                self._malformed_reported = bad
                ev.monitor({"type": "monitor", "kind": "malformed", "ts": time.time_ns(),
                            "detail": f"{n} malformed messages or events on the event bus were "
                                      f"dropped ({bad} since start)"})  # fmt: skip
            if self._reload and time.monotonic() >= self._reload_after:
                if isinstance(beat, heartbeat.Beat):
                    beat.long()  # (a rule set takes a few tenths of a second to load)
                self.reload()
            if time.monotonic() >= next_tick:
                next_tick = time.monotonic() + 1.0
                ev.tick()
                self.publish_status()
            if self.fleet is not None:
                self.commit_fleet()
        ev.flush_folds(everything=True)  # a fold still open is said before the end

    def commit_fleet(self) -> None:
        """This turn's fleet records made durable (one fsync); what the spool's bound dropped
        is counted and raised as a critical alert (at most every SPOOL_FULL_EVERY_S)."""
        assert self.fleet is not None
        try:
            self._spool_dropped += self.fleet.commit()
        except OSError as exc:  # a full disk: the records wait in memory for the next turn
            log.warning("cannot write the fleet spool: %s", exc)
            return
        now = time.monotonic()
        if self._spool_dropped and now - self._spool_reported_at >= SPOOL_FULL_EVERY_S:
            n, self._spool_dropped = self._spool_dropped, 0
            self._spool_reported_at = now
            total = self.fleet.writer.dropped
            self.evaluator.monitor(
                {"type": "monitor", "kind": "fleet_spool_full", "ts": time.time_ns(),
                 "detail": f"the fleet spool is full ({self.cfg.fleet.spool_max_bytes} bytes, "
                           f"the server has not acknowledged them): {n} records dropped, "
                           f"{total} since start; they will never reach the fleet",
                 "dropped": n, "dropped_total": total},
                severity="critical",
            )  # fmt: skip
            self.fleet.commit()  # the alert itself, in the spool's reserve

    def status(self) -> dict:
        ev = self.evaluator
        return {
            "started": self.started, "events": ev.events, "alerts": ev.alerts,
            "suppressed": ev.suppressed, "malformed": ev.malformed + self.sub.malformed,
            "kills": self.enforcer.killed if self.enforcer else 0, "lost": dict(ev.lost),
            "reloads": dict(self.reloads), "rules": len(ev.rules),
            "sessions": self.enforcer.session_count() if self.enforcer else 0,
            "alerts_by_severity": _by_severity(ev.by_rule_sev),
            "rules_hash": self.rules_hash,
            **({"fleet_spool": {"spooled": self.fleet.spooled,
                                "dropped": self.fleet.writer.dropped}} if self.fleet else {}),
        }  # fmt: skip

    def publish_status(self) -> None:
        """Counters for `roguewatch status` (a root-only file) and Prometheus."""
        st = self.status()
        if self.metrics:
            ev = self.evaluator
            self.metrics.sync(ev.by_type, ev.by_rule_sev, ev.lost, st["sessions"], ev.actions)
        path = self.cfg.status_file
        if not path:
            return
        try:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            tmp = f"{path}.tmp"
            with open(tmp, "w") as f:
                json.dump(st, f)
            os.replace(tmp, path)
        except OSError:
            pass  # status is a convenience: never a reason to stop evaluating

    def close(self) -> None:
        if self._observer is not None:
            self._observer.stop()
        self.sub.close()
        self.sinks.close()  # the fleet recorder commits what it holds


def main(argv: list[str] | None = None) -> int:
    """`python -m roguewatch.runtime.evaluatord`: the evaluator as a process of its own."""
    block_shutdown_signals()  # before any thread exists (ZeroMQ's, the watchers')
    import argparse

    from roguewatch.policy import config as config_mod

    ap = argparse.ArgumentParser(description="roguewatch evaluator")
    ap.add_argument("--config")
    ap.add_argument("--events", help="event stream endpoint to subscribe to")
    ap.add_argument("--control", help="the collector's control endpoint (restores)")
    ap.add_argument("--alerts", help="alert stream endpoint to publish on")
    ap.add_argument("--alerts-file", help="JSON-lines alert file")
    ap.add_argument("--rules", action="append", help="extra rule directory (repeatable)")
    ap.add_argument("--policy", help="policy file for every session")
    ap.add_argument("--no-journal", action="store_true")
    ap.add_argument("--quiet", action="store_true", help="do not print alerts")
    ap.add_argument("--no-enforce", action="store_true", help="record actions, never act")
    ap.add_argument("--status-file", help="where to write live counters ('' for none)")
    ap.add_argument("--ready-fd", type=int, help="write one byte here once subscribed")
    ap.add_argument("--heartbeat-fd", type=int, help="write a byte here every loop turn")
    ap.add_argument(
        "--fleet",
        action="store_true",
        help="spool alerts and sessions for the fleet (the service's evaluator)",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        cfg = config_mod.load(args.config)
        if args.events:
            cfg.events_endpoint = args.events
        if args.alerts:
            cfg.alerts_endpoint = args.alerts
        if args.control:
            cfg.control_endpoint = args.control
        if args.alerts_file:
            cfg.alerts_file = args.alerts_file
        if args.rules:
            cfg.rules_dirs = args.rules
        if args.policy:
            cfg.policy_file = args.policy
        if args.no_journal:
            cfg.journald = False
        if args.quiet:
            cfg.print_alerts = False
        if args.no_enforce:
            cfg.enforce = False
        if args.status_file is not None:
            cfg.status_file = args.status_file
        elif args.events:  # a private evaluator (run, tests) must not overwrite the service's
            cfg.status_file = ""
        proc = EvaluatorProcess(cfg, fleet=args.fleet)
    except (config_mod.ConfigError, ruleset.RuleError, policy_mod.PolicyError,
            bus.BusError, SpoolError) as exc:  # fmt: skip
        print(f"roguewatch evaluator: {exc}", file=sys.stderr)
        return 2

    # Signals from a process in a session are dropped; others are obeyed in the loop.
    table = proc.evaluator.table
    gate = ShutdownGate(lambda pid: table.session_of_tree(pid) is not None)
    proc.watch_rule_dirs()

    try:
        proc.run(lambda: readiness.notify(args.ready_fd), gate, heartbeat.Beat(args.heartbeat_fd))
    finally:
        proc.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
