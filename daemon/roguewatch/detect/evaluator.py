"""The evaluator: events in, alerts out.

Owns the process table (every tracked process by exec id, its ancestry up to the session
root, kept until exit plus a grace period, bounded), running the rules indexed by event type
against each event, deduplicating identical alerts, and building alerts that follow the
contract in architecture.md. It also turns the collector's `monitor` events into alerts, so
lost events are never silent.

It must not carry out actions (that is the enforcer's) nor know where alerts go (the sinks
passed in as ``emit``). ``Evaluator.handle_batch`` (``handle`` inlined) is the per-event hot
path: one dict update in the table, then the rule set's prefilter for the event's type, which
runs only the rules whose gate the event's values pass (``roguewatch.detect.prefilter``).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

from roguewatch.detect import ruleset
from roguewatch.detect.fields import BaseProcessView, Policy
from roguewatch.detect.ruleset import Rule, RuleSet
from roguewatch.outputs import alerts
from roguewatch.policy import egress
from roguewatch.policy import policy as policy_mod
from roguewatch.policy.config import Config
from roguewatch.policy.hostnames import HostRefresher
from roguewatch.policy.policy import StaticPolicy
from roguewatch.respond.enforcer import Enforcer, SessionInfo
from roguewatch.runtime import readiness
from roguewatch.stream import bus
from roguewatch.stream import events as ev_types

log = logging.getLogger("roguewatch.detect.evaluator")

GRACE_NS = 30 * 1_000_000_000
# A watcher event this close to a probe event on the same path is that event's doing.
ATTRIBUTION_NS = 2 * 1_000_000_000
# How long a watcher event waits for the probe event of the same change (which may still be
# in the ring buffer): then it is attributed, or judged with `writer: unknown`.
FS_HOLD_NS = 50 * 1_000_000
_PATH_TYPES = frozenset({"open", "rename", "unlink", "link", "symlink", "chmod", "chown",
                         "truncate", "utimes"})  # fmt: skip
# Event types that change a process record beyond creating it (ProcessTable.update).
_PROC_TYPES = frozenset({"exec", "fork", "exit", "chdir", "task_rename"})
# Event types that are not a process's doing: the evaluator handles them apart.
_NOT_PROBE_TYPES = frozenset({"monitor", "session", "fs_change"})
RECENT_PATHS_MAX = 16384
# Events the evaluator's loop handles before it looks at anything else (EvaluatorProcess.run)
BURST = 4096
# The key of the default policy (sessions without their own) in Evaluator.set_session_policy
DEFAULT_POLICY = -1
_NO_SESSION = object()  # ProcessTable.policy_session before any pick (and after set_policy)
MAX_PROCS = 65536
MAX_LINEAGE = 64
KILL_ACTIONS = frozenset(
    {"kill_process", "kill_tree", "kill_session", "freeze", "block", "restore"}
)
NOT_ENFORCED = "recorded only: no enforcer (replay, or enforce: false)"
MONITOR_RULES = {
    "loss": "roguewatch_events_lost",
    "malformed": "roguewatch_malformed_events",
    "rules_reload_failed": "roguewatch_rules_reload_failed",
    "restart": "roguewatch_component_restarted",
}


def rfc3339(ts_ns: int) -> str:
    secs, ns = divmod(ts_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{ns // 1000:06d}Z"


class ProcessTable(BaseProcessView):
    """Processes by exec id, with what rules ask of them (a ``fields.ProcessView``)."""

    def __init__(self, policy: Policy | None = None, grace_ns: int = GRACE_NS) -> None:
        super().__init__(policy or StaticPolicy())
        self.lists = getattr(self.policy, "lists", {}) or {}
        self.procs: dict[str, dict] = {}
        self.by_pid: dict[int, str] = {}
        self._exited: deque[tuple[int, str]] = deque()
        self._forks: dict[int, deque[int]] = {}
        self.grace_ns = grace_ns
        self.evicted = 0
        self.default_policy = self.policy
        # Policies by session; change them with set_policy (use_policy_of caches its pick).
        self._policies: dict[int, Policy] = {}
        self.policies: Mapping[int, Policy] = MappingProxyType(self._policies)
        self.policy_session: object = _NO_SESSION  # the session use_policy_of last picked for
        # The last probe event that touched each path: a watcher's fs_change on the same path
        # within ATTRIBUTION_NS names that event's session and process as the writer.
        self.recent_paths: dict[str, dict] = {}

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

    def _new(self, ev: dict, exec_id: str, pid: int, pexec_id: str, base: dict | None) -> dict:
        """A record made from an event, and from ``base`` (a fork's parent) when given."""
        if base:
            get = base.get
            exe, comm = get("exe", ""), get("comm", "")
            cmdline, argv, cwd = get("cmdline", ""), get("argv", []), get("cwd", "")
        else:
            exe, comm, cmdline, argv, cwd = ev.get("exe", ""), ev.get("comm", ""), "", [], ""
        rec = {
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
                if len(recent) >= RECENT_PATHS_MAX:
                    recent.clear()
                recent[path] = ev
                if t == "rename":
                    src = ev.get("source")
                    if src:
                        recent[src] = ev
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

    def in_session(self, pid: int, session: int) -> bool | None:
        eid = self.by_pid.get(pid)
        if eid is None:
            # Every process of a session is in the table from its fork on: a live process
            # the table does not know is outside every session. Groups (pid <= 0): unknown.
            if pid > 0 and os.path.exists(f"/proc/{pid}"):
                return False
            return None
        return self.procs[eid]["session"] == session

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


def _jsonable(v: object) -> object:
    if isinstance(v, bytes):
        return base64.b64encode(v).decode()
    return v


_COMMON = {f.name for f in ev_types.COMMON_FIELDS} - {"type", "ret", "flags", "tid"}


def event_summary(ev: dict) -> dict:
    """The triggering event for the alert: its type and own fields, JSON-ready."""
    return {k: _jsonable(v) for k, v in ev.items() if k not in _COMMON}


def _dedup_key(rule: Rule, ev: dict) -> tuple:
    return (
        rule.name, ev.get("session"), ev.get("exec_id"), ev.get("type"), ev.get("path"),
        ev.get("addr"), ev.get("port"), ev.get("target"), ev.get("sig"), ev.get("filename"),
    )  # fmt: skip


@dataclass
class _Seen:
    alert: dict
    first_ns: int
    suppressed: int = 0


class Evaluator:
    def __init__(
        self,
        rules: RuleSet,
        table: ProcessTable,
        emit: Callable[[dict], None],
        dedup_window_s: float = 10.0,
        clock: Callable[[], int] = time.time_ns,
        enforcer: Enforcer | None = None,
    ) -> None:
        self.rules = rules
        self.table = table
        self.emit = emit
        # Without an enforcer (replay, tests) actions are recorded, never carried out.
        self.enforcer = enforcer
        self.window_ns = int(dedup_window_s * 1e9)
        self.clock = clock
        self._prefix = f"{clock():x}"
        self._seq = 0
        self._seen: dict[tuple, _Seen] = {}
        self.events = 0
        self.alerts = 0
        self.suppressed = 0
        self.malformed = 0
        self.by_rule: dict[str, int] = {}
        self.by_rule_sev: dict[tuple[str, str], int] = {}
        self.by_type: dict[str, int] = {}
        self.actions: dict[str, int] = {}
        self._fs_held: deque[dict] = deque()
        self.fs_attributed = 0
        self.hosts: HostRefresher | None = None  # made when a policy names a host
        self._host_policies: dict[int, StaticPolicy] = {}  # as given, hosts unexpanded
        self._host_changes = 0
        self.lost: dict[str, int] = {}
        self.latencies: list[float] = []

    def handle(self, ev: dict) -> None:
        """One event: the table learns from it, then the rules of its type meet it. Raises
        on a malformed event (``handle_batch`` counts those)."""
        self.events += 1
        t = ev.get("type")
        by_type = self.by_type
        by_type[t] = by_type.get(t, 0) + 1
        if t in _NOT_PROBE_TYPES:
            self._not_probe(t, ev)
            return
        table = self.table
        table.update(ev)
        table.use_policy_of(ev.get("session", 0))
        matched = self.rules.match(ev, table)
        if matched:
            for rule in matched:
                self._fire(rule, ev)

    def _not_probe(self, t: str, ev: dict) -> None:
        if t == "monitor":
            self.monitor(ev)
        elif t == "session":
            self._session(ev)
        else:  # fs_change
            self._fs_held.append(ev)

    def _session(self, ev: dict) -> None:
        sid = ev.get("session", 0)
        if ev.get("kind") == "start":
            pol = ev.get("policy") or {}
            if pol:
                self.set_session_policy(
                    sid,
                    StaticPolicy(
                        egress_allow=tuple(pol.get("egress_allow", ())),
                        protect=tuple(pol.get("protect", ())),
                        mode=pol.get("mode", "enforce"),
                        lists=dict(pol.get("lists", {})),
                    ),
                )
            if self.enforcer is not None:
                self.enforcer.sessions[sid] = SessionInfo(
                    sid,
                    ev.get("root", 0),
                    ev.get("name", ""),
                    ev.get("cgroup", ""),
                    ev.get("mode", "enforce"),
                )
            return
        # The session's root exited: its host names need no more refreshing (its policy, as
        # last expanded, stays for late events). Every process still alive in it meets the
        # rules as a `session_end` event (its own fields from the process table).
        if self.hosts is not None and self._host_policies.pop(sid, None) is not None:
            self.hosts.untrack(sid)
        for pid in ev.get("survivors", ()):
            eid = self.table.by_pid.get(pid)
            rec = self.table.procs.get(eid, {}) if eid else {}
            synth = {
                "type": "session_end", "ts": ev.get("ts", 0), "session": sid, "pid": pid,
                "tid": pid, "ppid": 0, "uid": rec.get("uid", 0), "gid": 0,
                "comm": rec.get("comm", ""), "ret": 0, "flags": [], "exec_id": eid or "",
                "pexec_id": rec.get("pexec_id", ""), "exe": rec.get("exe", ""),
                "cmdline": rec.get("cmdline", ""),
            }  # fmt: skip
            self.table.use_policy_of(sid)
            for rule in self.rules.match(synth, self.table):
                self._fire(rule, synth)

    # -- host names in egress allowlists ------------------------------------------------------

    def set_session_policy(self, sid: int, pol: StaticPolicy) -> None:
        """A session's policy (DEFAULT_POLICY: the default one), its HOST:PORT entries
        expanded to their current addresses and kept current on their TTL (as the collector
        does for the kernel's egress maps), so that a connect the kernel allows is not taken
        for unauthorized egress here."""
        hosts = egress.egress_hosts(pol.egress_allow)
        if not hosts:
            self._host_policies.pop(sid, None)
            self._apply_policy(sid, pol)
            return
        if self.hosts is None:
            self.hosts = HostRefresher(lambda _key: None)  # tick() looks at .changes
        self.hosts.track(sid, hosts)
        self._host_policies[sid] = pol
        self._apply_policy(sid, self._expanded(pol))

    def _apply_policy(self, sid: int, pol: Policy) -> None:
        if sid == DEFAULT_POLICY:
            self.table.default_policy = pol
            self.table.policy_session = _NO_SESSION  # use_policy_of picks again
        else:
            self.table.set_policy(sid, pol)

    def _expanded(self, pol: StaticPolicy) -> StaticPolicy:
        assert self.hosts is not None
        allow = egress.expand_hosts(pol.egress_allow, self.hosts.addresses)
        return replace(pol, egress_allow=allow)

    def _refresh_host_policies(self) -> None:
        if self.hosts is None or self.hosts.changes == self._host_changes:
            return
        self._host_changes = self.hosts.changes
        for sid, pol in self._host_policies.items():
            self._apply_policy(sid, self._expanded(pol))

    def flush_fs(self, now_ns: int | None = None, everything: bool = False) -> None:
        """Judge watcher events whose probe event had its chance to arrive (FS_HOLD_NS)."""
        held = self._fs_held
        if not held:
            return
        now = now_ns if now_ns is not None else time.time_ns()
        while held and (everything or now - held[0].get("ts", 0) >= FS_HOLD_NS):
            ev = held.popleft()
            writer = self.table.writer_of(ev)
            if writer is not None:
                # The syscall event of the same change already met the rules with its
                # session and process: this sensor confirms it and adds nothing.
                self.fs_attributed += 1
                continue
            self.table.use_policy_of(0)
            for rule in self.rules.match(ev, self.table):
                self._fire(rule, ev)

    def handle_batch(self, batch: list[dict]) -> None:
        """Each event as ``handle`` does it, inlined (this loop is the evaluator's hot path:
        keep the two alike). A malformed event is counted, never fatal."""
        table = self.table
        by_type = self.by_type
        for ev in batch:
            try:
                self.events += 1
                t = ev.get("type")
                by_type[t] = by_type.get(t, 0) + 1
                if t in _NOT_PROBE_TYPES:
                    self._not_probe(t, ev)
                    continue
                table.update(ev)
                session = ev.get("session", 0)
                if session != table.policy_session:  # use_policy_of's own test, a call less
                    table.use_policy_of(session)
                rules = self.rules
                match = rules.match_by_type.get(t)  # RuleSet.match, a call less
                matched = match(ev, table) if match is not None else rules.match(ev, table)
                if matched:
                    for rule in matched:
                        self._fire(rule, ev)
            except (KeyError, TypeError, ValueError, AttributeError):
                # A well-formed message with a malformed event: counted, never fatal.
                self.malformed += 1

    def swap_rules(self, rules: RuleSet) -> None:
        """Between two events: no event ever meets a half-loaded rule set."""
        self.rules = rules
        self._seen.clear()

    # -- alerts ----------------------------------------------------------------------------

    def _next_id(self) -> str:
        self._seq += 1
        return f"{self._prefix}-{self._seq}"

    def _fire(self, rule: Rule, ev: dict) -> None:
        now = self.clock()
        suppressible = rule.action not in KILL_ACTIONS
        key = _dedup_key(rule, ev)
        if suppressible:
            seen = self._seen.get(key)
            if seen is not None and now - seen.first_ns < self.window_ns:
                seen.suppressed += 1
                self.suppressed += 1
                return
        alert = self.build(rule, ev)
        self._enforce(alert, rule, ev)
        self._publish(alert)
        if suppressible:
            self._seen[key] = _Seen(alert, now)

    def _enforce(self, alert: dict, rule: Rule, ev: dict) -> None:
        flags = ev.get("flags") or ()
        if "denied" in flags:  # the kernel already refused it: nothing left the host
            alert["action"], alert["outcome"] = "block", "denied in kernel"
            return
        if self.enforcer is None:
            return
        before = self.enforcer.killed
        outcome = self.enforcer.act(rule.action, ev)
        self.actions[rule.action] = self.actions.get(rule.action, 0) + 1
        killed = self.enforcer.killed - before
        if "killed" in flags:
            outcome = f"sender killed in the kernel; {outcome}"
            killed = max(killed, 1)
        alert["outcome"] = outcome
        alert["killed"] = killed  # processes this alert's action ended (0: none)

    def _publish(self, alert: dict) -> None:
        self.alerts += 1
        self.by_rule[alert["rule"]] = self.by_rule.get(alert["rule"], 0) + 1
        key = (alert["rule"], alert["severity"])
        self.by_rule_sev[key] = self.by_rule_sev.get(key, 0) + 1
        self.emit(alert)

    def build(self, rule: Rule, ev: dict) -> dict:
        table = self.table
        rec = table.process(ev) or {}
        try:
            message = rule.render(ev, table)
        except Exception as exc:  # a template must never lose the alert
            message = f"{rule.desc} (output template failed: {exc})"
        return {
            "id": self._next_id(),
            "ts": rfc3339(ev.get("ts") or self.clock()),
            "rule": rule.name,
            "message": message,
            "category": rule.category,
            "severity": rule.severity,
            "tags": list(rule.tags),
            "session": f"{ev.get('session', 0):x}",
            "pid": ev.get("pid", 0),
            "ppid": ev.get("ppid", 0),
            "uid": ev.get("uid", 0),
            "comm": ev.get("comm", ""),
            "exe": ev.get("exe", "") or rec.get("exe", ""),
            "cmdline": ev.get("cmdline") or rec.get("cmdline", ""),
            "exec_id": ev.get("exec_id", ""),
            "lineage": [{"pid": a["pid"], "exe": a["exe"]} for a in table.ancestors(ev)],
            "event": event_summary(ev),
            "action": rule.action,
            "outcome": "alert" if rule.action == "alert" else NOT_ENFORCED,
            "count": 1,
            "killed": 0,
        }

    def tick(self) -> None:
        """Once a second or so: close dedup windows (one alert with the count) and sweep."""
        now = self.clock()
        self._refresh_host_policies()
        self.flush_fs(now)
        expired = [k for k, s in self._seen.items() if now - s.first_ns >= self.window_ns]
        for k in expired:
            seen = self._seen.pop(k)
            if seen.suppressed:
                alert = dict(seen.alert)
                alert["id"] = self._next_id()
                alert["ts"] = rfc3339(now)
                alert["count"] = seen.suppressed
                alert["message"] = (
                    f"{seen.alert['message']} ({seen.suppressed} more times within "
                    f"{self.window_ns / 1e9:g} s)"
                )
                self._publish(alert)
        self.table.sweep(now)

    def monitor(self, ev: dict, severity: str = "high", rule: str = "") -> None:
        """An alert about the monitor itself (losses, reload failures, restarts)."""
        kind = ev.get("kind", "")
        if kind == "loss":
            self.lost["ring"] = sum((ev.get("lost_ring") or {}).values())
            self.lost["pending"] = ev.get("lost_pending", 0)
            self.lost["decode"] = ev.get("lost_decode", 0)
            self.lost["bus"] = ev.get("lost_bus", 0)
        alert = {
            "id": self._next_id(),
            "ts": rfc3339(ev.get("ts") or self.clock()),
            "rule": rule or MONITOR_RULES.get(kind, f"roguewatch_{kind or 'monitor'}"),
            "message": ev.get("detail", kind),
            "category": "monitor",
            "severity": severity,
            "tags": [],
            "session": f"{ev.get('session', 0):x}",
            "pid": ev.get("pid", 0),
            "ppid": 0,
            "uid": 0,
            "comm": "roguewatch",
            "exe": "",
            "cmdline": "",
            "exec_id": "",
            "lineage": [],
            "event": event_summary(ev),
            "action": "alert",
            "outcome": "alert",
            "count": 1,
            "killed": 0,
        }
        self._publish(alert)


# ---------------------------------------------------------------------------------------------
# The evaluator as a process of its own: subscribed to the event stream, writing the alert
# stream, reloading rules on SIGHUP or when a rule directory changes.


def _by_severity(by_rule_sev: dict[tuple[str, str], int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for (_, sev), n in by_rule_sev.items():
        out[sev] = out.get(sev, 0) + n
    return out


def load_ruleset(cfg: Config) -> RuleSet:
    """Packaged packs, then the configured directories that exist, then enable/disable."""
    dirs = [d for d in cfg.rules_dirs if os.path.isdir(d)]
    return ruleset.load_rules(dirs).select(enable=cfg.rules_enable, disable=cfg.rules_disable)


class EvaluatorProcess:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        pol = policy_mod.load(cfg.policy_file) if cfg.policy_file else policy_mod.default()
        rules = load_ruleset(cfg)  # a bad rule file at start is fatal: the caller says why
        self.sinks = self._sinks(cfg)
        table = ProcessTable(pol)
        self.enforcer = Enforcer(table, restorer=self._restore) if cfg.enforce else None
        self._control = None
        self.evaluator = Evaluator(
            rules, table, self.sinks.send, cfg.dedup_window, enforcer=self.enforcer
        )
        if isinstance(pol, StaticPolicy):
            self.evaluator.set_session_policy(DEFAULT_POLICY, pol)  # its host names resolved
        # The collector may still be loading its probes (run starts both at once).
        self.sub = bus.Subscriber(cfg.events_endpoint, wait_s=60.0)
        self._reload = False
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
    def _sinks(cfg: Config) -> alerts.Sinks:
        out: list = [
            alerts.AlertPublisher(cfg.alerts_endpoint),
            alerts.AlertFile(cfg.alerts_file, cfg.alerts_file_max_bytes, cfg.alerts_file_keep),
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

    def request_reload(self, *_: object) -> None:
        self._reload = True

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
                    owner._reload = True

        dirs = [d for d in self.cfg.rules_dirs if os.path.isdir(d)]
        if not dirs:
            return
        self._observer = Observer()
        for d in dirs:
            self._observer.schedule(_Changed(), d, recursive=False)
        self._observer.daemon = True
        self._observer.start()

    def reload(self) -> bool:
        """Validate the new rule set first; on failure the old one stays, and says why."""
        self._reload = False
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
        log.info("rules reloaded: %d rules", len(new))
        return True

    def run(self, ready: Callable[[], None] | None = None, gate: object = None) -> None:
        self.sub.wait_ready(5000)
        if ready:
            ready()
        next_tick = time.monotonic() + 1.0
        ev = self.evaluator
        while not self._stopping:
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
            if gate is not None:
                for signo in gate.poll():
                    if signo == signal.SIGHUP:
                        self._reload = True
                    else:
                        self._stopping = True
            bad = self.sub.malformed + ev.malformed
            if bad != self._malformed_reported:
                n = bad - self._malformed_reported
                self._malformed_reported = bad
                ev.monitor({"type": "monitor", "kind": "malformed", "ts": time.time_ns(),
                            "detail": f"{n} malformed messages or events on the event bus were "
                                      f"dropped ({bad} since start)"})  # fmt: skip
            if self._reload:
                self.reload()
            if time.monotonic() >= next_tick:
                next_tick = time.monotonic() + 1.0
                ev.tick()
                self.publish_status()

    def status(self) -> dict:
        ev = self.evaluator
        return {
            "started": self.started, "events": ev.events, "alerts": ev.alerts,
            "suppressed": ev.suppressed, "malformed": ev.malformed + self.sub.malformed,
            "kills": self.enforcer.killed if self.enforcer else 0, "lost": dict(ev.lost),
            "reloads": dict(self.reloads), "rules": len(ev.rules),
            "sessions": len(self.enforcer.sessions) if self.enforcer else 0,
            "alerts_by_severity": _by_severity(ev.by_rule_sev),
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
        self.sinks.close()


def main(argv: list[str] | None = None) -> int:
    """`python -m roguewatch.evaluator`: the evaluator as a process of its own."""
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
        proc = EvaluatorProcess(cfg)
    except (config_mod.ConfigError, ruleset.RuleError, policy_mod.PolicyError,
            bus.BusError) as exc:  # fmt: skip
        print(f"roguewatch evaluator: {exc}", file=sys.stderr)
        return 2
    from roguewatch.respond.selfdefense import ShutdownGate

    # Signals from a process in a session are dropped; others are obeyed in the loop.
    table = proc.evaluator.table
    gate = ShutdownGate(lambda pid: bool(table.procs.get(table.by_pid.get(pid, ""), {}).get(
        "session")))  # fmt: skip
    proc.watch_rule_dirs()

    try:
        proc.run(lambda: readiness.notify(args.ready_fd), gate)
    finally:
        proc.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
