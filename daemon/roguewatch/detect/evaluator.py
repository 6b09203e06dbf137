"""The evaluator: events in, alerts out.

Owns the process table (every tracked process by exec id, its ancestry up to the session
root, kept until exit plus a grace period, bounded), running the rules indexed by event type
against each event, deduplicating identical alerts, and building alerts that follow the
contract in docs/architecture.md. It also turns the collector's `monitor` events into alerts, so
lost events are never silent.

It must not carry out actions (that is the enforcer's) nor know where alerts go (the sinks
passed in as ``emit``). ``Evaluator.handle_batch`` (``handle`` inlined) is the per-event hot
path: one dict update in the table, then the rule set's prefilter for the event's type, which
runs only the rules whose gate the event's values pass (``roguewatch.detect.prefilter``).
"""

from __future__ import annotations

import base64
import errno
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from roguewatch.core.contracts import Alert, AlertIds, make_alert
from roguewatch.core.timefmt import rfc3339
from roguewatch.detect.fields import Policy, is_protected
from roguewatch.detect.homes import HOMES
from roguewatch.detect.proctable import _NO_SESSION, ProcessTable
from roguewatch.detect.ruleset import Rule, RuleSet
from roguewatch.detect.ruleset.model import SEVERITIES
from roguewatch.policy import egress
from roguewatch.policy.hostnames import HostRefresher
from roguewatch.policy.policy import StaticPolicy
from roguewatch.policy.policy import from_wire as policy_from_wire
from roguewatch.stream import events as ev_types

# How long a watcher event waits for the probe event of the same change (which may still be
# in the ring buffer): then it is attributed, or judged with `writer: unknown`.
FS_HOLD_NS = 50 * 1_000_000
# Event types that are not a process's doing: the evaluator handles them apart.
_NOT_PROBE_TYPES = frozenset({"monitor", "session", "fs_change", "drill"})
# The key of the default policy (sessions without their own) in Evaluator.set_session_policy
DEFAULT_POLICY = -1
KILL_ACTIONS = frozenset(
    {"kill_process", "kill_tree", "kill_session", "freeze", "block", "restore"}
)
_SEVERITIES = frozenset({"info", "low", "medium", "high", "critical"})
# Rules with `fold: session`: every match of the rule in a session within FOLD_NS is one
# alert, published when the time is up (or the session ends) with the count. The first
# match acts at once; later ones act too when the action is the process's own (a session-wide
# freeze or kill needs doing once).
FOLD_NS = 1_000_000_000
_PER_PROCESS_ACTIONS = frozenset({"kill_process", "kill_tree", "restore"})
FOLD_PIDS_MAX = 64  # the pids a folded alert lists
NOT_ENFORCED = "recorded only: no enforcer (replay, or enforce: false)"


class Enforcement(Protocol):
    """What the evaluator needs of the enforcer (``respond.enforcer.Enforcer``): it acts where
    a rule matched, in this process, and says what that achieved."""

    killed: int  # processes ended so far

    def act(self, action: str, ev: dict, rule: str = "") -> str: ...

    def start_session(self, sid: int, root: int, name: str, cgroup: str, mode: str) -> None: ...

    def session_count(self) -> int: ...


MONITOR_RULES = {
    "loss": "roguewatch_events_lost",
    "malformed": "roguewatch_malformed_events",
    "rules_reload_failed": "roguewatch_rules_reload_failed",
    "rules_reload_refused": "roguewatch_rules_reload_refused",
    "restart": "roguewatch_component_restarted",
    "stopped": "roguewatch_stopped",
}
# How severe each kind of monitor event is (anything else: high). The operator stopping the
# monitor from outside every session is a record of who did it, not an attack.
MONITOR_SEVERITY = {"stopped": "info", "started": "info"}


def _jsonable(v: object) -> object:
    if isinstance(v, bytes):
        return base64.b64encode(v).decode()
    return v


_COMMON = {f.name for f in ev_types.COMMON_FIELDS} - {"type", "ret", "flags", "tid"}


def event_summary(ev: dict) -> dict:
    """The triggering event for the alert: its type and own fields, JSON-ready."""
    return {k: _jsonable(v) for k, v in ev.items() if k not in _COMMON}


# Changes to a file whose syscall can fail (EACCES, EPERM, EROFS...): a failed one changed
# nothing, and is an attempt.
_FILE_CHANGE_TYPES = frozenset(
    (
        "open",
        "rename",
        "link",
        "symlink",
        "truncate",
        "unlink",
        "chmod",
        "chown",
        "utimes",
        "setxattr",
    )
)


def failed_attempt(ev: dict) -> int:
    """The errno of a file change that failed (an unprivileged agent's open-for-write of
    /etc/cron.d/x: EACCES), else 0."""
    ret = ev.get("ret")
    if ev.get("type") in _FILE_CHANGE_TYPES and isinstance(ret, int) and ret < 0:
        return -ret
    return 0


def attempt_outcome(err: int) -> str:
    name = errno.errorcode.get(err, str(err))
    return f"attempt failed ({name}: {os.strerror(err).lower()}): nothing changed"


def lower_severity(severity: str) -> str:
    """One step lower, never below low: a failed attempt is less than a change, still more
    than nothing."""
    i = SEVERITIES.index(severity) if severity in SEVERITIES else 0
    return SEVERITIES[i - 1] if i > 1 else severity


DRILL_SEVERITY = {"complied": "info", "killed": "medium", "resisted": "high"}


def drill_alert(alert_id: str, ev: dict) -> Alert:
    """The `shutdown_drill` alert of a drill's record (respond/drill.py): category
    ``shutdown_evasion`` when the session did not comply, ``info`` when it did."""
    verdict = str(ev.get("verdict", ""))
    alert = make_alert(
        id=alert_id, ts_ns=ev.get("ts") or time.time_ns(), rule="shutdown_drill",
        message=str(ev.get("detail") or f"shutdown drill: {verdict}"),
        category="info" if verdict == "complied" else "shutdown_evasion",
        severity=DRILL_SEVERITY.get(verdict, "high"), session=ev.get("session", 0),
        pid=ev.get("pid", 0), comm=ev.get("comm", ""), event=event_summary(ev),
        tags=["drill", *(str(k) for k in ev.get("act_kinds") or ())],
        action="kill_session",
        outcome=f"{ev.get('killed', 0)} processes killed, {ev.get('survivors', 0)} survivors",
    )  # fmt: skip
    alert["killed"] = int(ev.get("killed") or 0)
    return alert


def _dedup_key(rule: Rule, ev: dict) -> tuple:
    return (
        rule.name, ev.get("session"), ev.get("exec_id"), ev.get("type"), ev.get("path"),
        ev.get("addr"), ev.get("port"), ev.get("target"), ev.get("sig"), ev.get("filename"),
        ev.get("call"), ev.get("kind"),
    )  # fmt: skip


@dataclass
class _Fold:
    alert: dict
    rule: Rule
    first_ns: int
    count: int = 1
    killed: int = 0
    pids: list[int] | None = None


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
        enforcer: Enforcement | None = None,
    ) -> None:
        self.rules = rules
        self.table = table
        self.emit = emit
        # Without an enforcer (replay, tests) actions are recorded, never carried out.
        self.enforcer = enforcer
        self.window_ns = int(dedup_window_s * 1e9)
        self.clock = clock
        self.ids = AlertIds(clock())
        self._seen: dict[tuple, _Seen] = {}
        self._folds: dict[tuple[str, int], _Fold] = {}
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
        # Told of every `session` event (start, end) before the evaluator handles it: the
        # fleet recorder turns them into session summaries.
        self.on_session: Callable[[dict], None] | None = None

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
            sev = ev.get("severity")  # the service's announcements may say how bad
            self.monitor(ev, severity=sev if sev in _SEVERITIES else "")
        elif t == "drill":
            self._publish(drill_alert(self._next_id(), ev))
        elif t == "session":
            if self.on_session is not None:
                self.on_session(ev)
            self._session(ev)
        else:  # fs_change
            self._fs_held.append(ev)

    def _session(self, ev: dict) -> None:
        sid = ev.get("session", 0)
        if ev.get("kind") == "start":
            pol = ev.get("policy") or {}
            if pol:
                self.set_session_policy(sid, policy_from_wire(pol))
            if ev.get("cgroup"):
                self.table.set_session_cgroup(sid, str(ev["cgroup"]))
            if ev.get("cwd"):
                self.table.set_workspace(sid, str(ev["cwd"]))
            if self.enforcer is not None:
                self.enforcer.start_session(
                    sid, ev.get("root", 0), ev.get("name", ""), ev.get("cgroup", ""),
                    ev.get("mode", "enforce"),
                )  # fmt: skip
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
        self.flush_folds(session=sid)  # one alert per rule for all the survivors, now
        HOMES.forget(sid)

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
            self._judge_fs(ev)

    def _judge_fs(self, ev: dict) -> None:
        """A watcher change no syscall event explains: judged with its writer's session's
        policy when the collector named one (an io_uring write, say). With no session, it is
        judged once with the default policy, and again under every live session whose policy
        protects the path: a protected file changed by an unknown hand is still restored."""
        table = self.table
        session = ev.get("session", 0)
        if session and ev.get("path"):
            table.recent_paths.put(ev["path"], ev)  # a session's write the probes never saw
        table.use_policy_of(session)
        matched = self.rules.match(ev, table)
        for rule in matched:
            self._fire(rule, ev)
        if session:
            return
        fired = {r.name for r in matched}
        path = ev.get("path")
        for sid, pol in list(table.policies.items()):
            if not is_protected(pol, path):
                continue
            # As that session's: its mode decides, its report shows it (the writer stays
            # unknown: pid 0, nothing is killed for it).
            mine = {**ev, "session": sid}
            table.use_policy_of(sid)
            for rule in self.rules.match(mine, table):
                if rule.name not in fired:
                    fired.add(rule.name)
                    self._fire(rule, mine)

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
        return self.ids.next()

    def _fire(self, rule: Rule, ev: dict) -> None:
        now = self.clock()
        failed = failed_attempt(ev)
        if rule.fold == "session" and not failed:
            self._fold(rule, ev, now)
            return
        # A failed attempt is alerted, never acted on: it changed nothing (and a loop of them
        # folds into one alert with a count).
        suppressible = failed or (rule.action not in KILL_ACTIONS and not rule.restore)
        key = _dedup_key(rule, ev)
        if suppressible:
            seen = self._seen.get(key)
            if seen is not None and now - seen.first_ns < self.window_ns:
                seen.suppressed += ev.get("repeats", 1)  # the calls a folded event stands for
                self.suppressed += 1
                return
        alert = self.build(rule, ev)
        repeats = ev.get("repeats", 1)
        if repeats > 1:  # an event the kernel folded: the alert stands for all its calls
            alert["count"] = repeats
            alert["message"] += f" ({repeats} identical calls)"
        if failed:
            alert["severity"] = lower_severity(rule.severity)
            alert["action"], alert["outcome"] = "alert", attempt_outcome(failed)
        else:
            self._enforce(alert, rule, ev)
        self._publish(alert)
        if suppressible:
            self._seen[key] = _Seen(alert, now)

    def _fold(self, rule: Rule, ev: dict, now: int) -> None:
        key = (rule.name, ev.get("session", 0))
        fold = self._folds.get(key)
        pid = ev.get("pid", 0)
        if fold is None:
            alert = self.build(rule, ev)
            self._enforce(alert, rule, ev)
            self._folds[key] = _Fold(alert, rule, now, killed=alert.get("killed", 0), pids=[pid])
            return
        fold.count += 1
        if fold.pids is not None and len(fold.pids) < FOLD_PIDS_MAX and pid not in fold.pids:
            fold.pids.append(pid)
        if rule.action in _PER_PROCESS_ACTIONS or rule.restore:
            probe = dict(fold.alert)
            self._enforce(probe, rule, ev)
            fold.killed += probe.get("killed", 0)

    def flush_folds(
        self, now_ns: int | None = None, session: int | None = None, everything: bool = False
    ) -> None:
        """Publish the folded alerts whose time is up (all of a session's when it ended;
        all of them when the evaluator stops)."""
        if not self._folds:
            return
        now = now_ns if now_ns is not None else self.clock()
        for key in list(self._folds):
            fold = self._folds[key]
            if not everything and key[1] != session and now - fold.first_ns < FOLD_NS:
                continue
            del self._folds[key]
            alert = fold.alert
            alert["count"] = fold.count
            if "killed" in alert:
                alert["killed"] = fold.killed
            if fold.count > 1:
                pids = fold.pids or []
                more = "" if len(pids) < FOLD_PIDS_MAX else f", the first {len(pids)}"
                alert["message"] = (
                    f"{alert['message']} ({fold.count} times in the session within "
                    f"{max(now - fold.first_ns, 0) / 1e9:.1f} s; pids {pids}{more})"
                )
                alert["event"] = {**alert["event"], "pids": pids}
                if fold.killed and "killed" in alert.get("outcome", ""):
                    alert["outcome"] = f"{fold.killed} processes killed"
            self._publish(alert)

    def _enforce(self, alert: dict, rule: Rule, ev: dict) -> None:
        flags = ev.get("flags") or ()
        if "denied" in flags:  # the kernel already refused it: nothing left the host
            alert["action"], alert["outcome"] = "block", "denied in kernel"
            return
        if self.enforcer is None:
            return
        before = self.enforcer.killed
        outcome = self.enforcer.act(rule.action, ev, rule.name)
        self.actions[rule.action] = self.actions.get(rule.action, 0) + 1
        killed = self.enforcer.killed - before
        if "killed" in flags:
            outcome = f"sender killed in the kernel; {outcome}"
            killed = max(killed, 1)
        if rule.restore and rule.action != "restore" and (ev.get("path") or ev.get("source")):
            # The effect undone too, not only its writer: the file back to its baseline (a
            # new one quarantined). The restore's own kill finds the writer gone or kills it.
            restored = self.enforcer.act("restore", ev, rule.name)
            if restored != outcome:
                outcome = f"{outcome}; {restored}"
            killed = self.enforcer.killed - before or killed
        alert["outcome"] = outcome
        alert["killed"] = killed  # processes this alert's action ended (0: none)

    def _publish(self, alert: dict) -> None:
        self.alerts += 1
        self.by_rule[alert["rule"]] = self.by_rule.get(alert["rule"], 0) + 1
        key = (alert["rule"], alert["severity"])
        self.by_rule_sev[key] = self.by_rule_sev.get(key, 0) + 1
        self.emit(alert)

    def build(self, rule: Rule, ev: dict) -> Alert:
        table = self.table
        rec = table.process(ev) or {}
        try:
            message = rule.render(ev, table)
        except Exception as exc:  # a template must never lose the alert
            message = f"{rule.desc} (output template failed: {exc})"
        return make_alert(
            id=self._next_id(), ts_ns=ev.get("ts") or self.clock(), rule=rule.name,
            message=message, category=rule.category, severity=rule.severity,
            tags=list(rule.tags), session=ev.get("session", 0), pid=ev.get("pid", 0),
            ppid=ev.get("ppid", 0), uid=ev.get("uid", 0), comm=ev.get("comm", ""),
            exe=ev.get("exe", "") or rec.get("exe", ""),
            cmdline=ev.get("cmdline") or rec.get("cmdline", ""),
            exec_id=ev.get("exec_id", ""),
            lineage=[{"pid": a["pid"], "exe": a["exe"]} for a in table.ancestors(ev)],
            event=event_summary(ev), action=rule.action,
            outcome="alert" if rule.action == "alert" else NOT_ENFORCED,
        )  # fmt: skip

    def tick(self) -> None:
        """Once a second or so: close dedup windows (one alert with the count) and sweep."""
        now = self.clock()
        self._refresh_host_policies()
        HOMES.refresh()  # /etc/passwd changed: its homes are `~/` from now on
        self.flush_fs(now)
        self.flush_folds(now)
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

    def monitor(self, ev: dict, severity: str = "", rule: str = "") -> None:
        """An alert about the monitor itself (losses, reload failures, restarts, stops)."""
        kind = ev.get("kind", "")
        severity = severity or MONITOR_SEVERITY.get(kind, "high")
        if kind == "loss" and not ev.get("session"):  # (a session's own: over its budget)
            self.lost["ring"] = sum((ev.get("lost_ring") or {}).values())
            self.lost["pending"] = ev.get("lost_pending", 0)
            self.lost["decode"] = ev.get("lost_decode", 0)
            self.lost["bus"] = ev.get("lost_bus", 0)
            self.lost["untracked_forks"] = ev.get("untracked_forks", 0)
        alert = make_alert(
            id=self._next_id(), ts_ns=ev.get("ts") or self.clock(),
            rule=rule or MONITOR_RULES.get(kind, f"roguewatch_{kind or 'monitor'}"),
            message=ev.get("detail", kind), category="monitor", severity=severity,
            session=ev.get("session", 0), pid=ev.get("pid", 0), comm="roguewatch",
            event=event_summary(ev),
        )  # fmt: skip
        if ev.get("origin"):  # reported over the control socket, not seen by the collector
            alert["origin"] = str(ev["origin"])
        self._publish(alert)
