"""The evaluator on hand-made events: process table, alerts per the contract, dedup, monitor."""

from __future__ import annotations

import pytest
from roguewatch.core.timefmt import rfc3339
from roguewatch.detect import ruleset
from roguewatch.detect.evaluator import Evaluator
from roguewatch.detect.proctable import ProcessTable
from roguewatch.policy.policy import StaticPolicy

CONTRACT = {"ts", "rule", "message", "category", "severity", "session", "pid", "ppid", "uid",
            "comm", "exe", "cmdline", "lineage", "event", "action", "outcome", "count"}  # fmt: skip
S = 0x5E55
T0 = 1_800_000_000_000_000_000


def ev(type_: str, pid: int, ts: int = T0, **kw: object) -> dict:
    base = {"type": type_, "ts": ts, "session": S, "pid": pid, "tid": pid, "ppid": 1,
            "uid": 1000, "gid": 1000, "comm": "agent", "ret": 0, "flags": [],
            "exec_id": f"{pid}-1", "pexec_id": "", "exe": "/usr/bin/python3"}  # fmt: skip
    base.update(kw)
    return base


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def rules() -> ruleset.RuleSet:
    return ruleset.load_rules()


def make(rules: ruleset.RuleSet, **policy: object) -> tuple[Evaluator, list[dict], Clock]:
    out: list[dict] = []
    clock = Clock()
    table = ProcessTable(StaticPolicy(**policy))
    return Evaluator(rules, table, out.append, dedup_window_s=10, clock=clock), out, clock


def session_tree(e: Evaluator) -> None:
    """agent (100) forks 101, which execs curl."""
    e.handle(ev("exec", 100, filename="/usr/bin/python3", argv=["python3", "agent.py"],
                cmdline="python3 agent.py", cwd="/work"))  # fmt: skip
    e.handle(ev("fork", 100, child_pid=101, thread=False, child_exec_id="101-2",
                clone_flags=17))  # fmt: skip
    e.handle(ev("exec", 101, exec_id="101-3", pexec_id="100-1", ppid=100, exe="/usr/bin/curl",
                filename="/usr/bin/curl", argv=["curl", "http://10.9.9.9/"],
                cmdline="curl http://10.9.9.9/", cwd="/work"))  # fmt: skip


def test_an_unauthorized_connect_is_an_alert_with_every_contract_field(rules) -> None:
    e, out, _ = make(rules, egress_allow=("127.0.0.1/32",))
    session_tree(e)
    e.handle(ev("connect", 101, exec_id="101-3", pexec_id="100-1", ppid=100,
                exe="/usr/bin/curl", comm="curl", fd=3, family="inet", addr="10.9.9.9",
                port=80, proto="tcp", ret=-115))  # fmt: skip
    [alert] = [a for a in out if a["rule"] == "egress_unauthorized_destination"]
    assert alert.keys() >= CONTRACT
    assert alert["ts"] == rfc3339(T0) and alert["ts"].endswith("Z") and len(alert["ts"]) == 27
    assert alert["category"] == "egress" and alert["severity"] == "critical"
    assert alert["session"] == f"{S:x}" and alert["pid"] == 101
    assert alert["cmdline"] == "curl http://10.9.9.9/"
    assert alert["lineage"] == [{"pid": 100, "exe": "/usr/bin/python3"}]
    assert alert["event"]["type"] == "connect" and alert["event"]["addr"] == "10.9.9.9"
    assert alert["action"] == "kill_process" and alert["count"] == 1
    assert "10.9.9.9" in alert["message"]


def test_an_allowed_destination_is_quiet(rules) -> None:
    e, out, _ = make(rules, egress_allow=("10.0.0.0/8:80/tcp",))
    session_tree(e)
    e.handle(ev("connect", 101, exec_id="101-3", fd=3, family="inet", addr="10.9.9.9",
                port=80, proto="tcp"))  # fmt: skip
    assert [a for a in out if a["category"] == "egress"] == []


def test_identical_alerts_in_the_window_become_one_with_a_count(rules) -> None:
    e, out, clock = make(rules)
    session_tree(e)
    for _ in range(5):
        e.handle(ev("setsid", 101, exec_id="101-3", ret=101))
    first = [a for a in out if a["category"] == "shutdown_evasion"]
    assert len(first) == 1 and first[0]["count"] == 1
    clock.now += 11_000_000_000
    e.tick()
    later = [a for a in out if a["category"] == "shutdown_evasion"]
    assert len(later) == 2
    assert later[1]["count"] == 4 and "4 more times" in later[1]["message"]
    assert later[1]["id"] != later[0]["id"]


def test_alerts_with_a_kill_action_are_never_suppressed(rules) -> None:
    e, out, _ = make(rules)
    session_tree(e)
    for _ in range(3):
        e.handle(ev("open", 101, exec_id="101-3", path="/etc/cron.d/evil", dirfd=-100,
                    open_flags=0o101, mode=0o644))  # fmt: skip
    cron = [a for a in out if a["rule"] == "persistence_cron_write"]
    assert len(cron) == 3 and cron[0]["action"] != "alert"


def test_a_loss_reported_by_the_collector_is_a_monitor_alert(rules) -> None:
    e, out, _ = make(rules)
    e.handle({"type": "monitor", "kind": "loss", "ts": T0, "session": 0, "pid": 1, "flags": [],
              "lost_ring": {"kill": 12}, "lost_bus": 0, "lost_decode": 0, "lost_pending": 0,
              "detail": "events lost: 12 in the kernel ring buffer"})  # fmt: skip
    [alert] = out
    assert alert["category"] == "monitor" and alert["rule"] == "roguewatch_events_lost"
    assert alert["severity"] == "high" and "12" in alert["message"]
    assert alert.keys() >= CONTRACT


def test_a_sessions_loss_over_its_budget_is_alerted_with_its_id_not_as_the_hosts(rules) -> None:
    e, out, _ = make(rules)
    e.handle({"type": "monitor", "kind": "loss", "ts": T0, "session": 0, "pid": 1, "flags": [],
              "lost_ring": {"open": 500}, "lost_bus": 0, "lost_decode": 0, "lost_pending": 0,
              "lost_budget": 500, "detail": "events lost: 500 in the ring"})  # fmt: skip
    e.handle({"type": "monitor", "kind": "loss", "ts": T0, "session": S, "pid": 1,
              "flags": ["budget"], "lost_budget": 500, "lost_budget_by_tier": {"files": 500},
              "detail": f"session {S:x} went over its budget"})  # fmt: skip
    assert [(a["rule"], a["session"]) for a in out] == [
        ("roguewatch_events_lost", "0"),
        ("roguewatch_events_lost", f"{S:x}"),
    ]
    assert e.lost["ring"] == 500, "a session's report is not the host's totals"


def test_the_table_keeps_exited_processes_for_the_grace_period_only(rules) -> None:
    e, _, clock = make(rules)
    session_tree(e)
    e.handle(ev("exit", 101, exec_id="101-3", code=0, signal=0))
    assert e.table.process({"exec_id": "101-3"}) is not None  # late events still resolve
    assert e.table.in_session(101, S) is True
    clock.now += 31_000_000_000
    e.tick()
    assert e.table.process({"exec_id": "101-3"}) is None
    assert e.table.in_session(101, S) is None
    assert e.table.process({"exec_id": "100-1"}) is not None  # still running


def test_lineage_stops_at_the_session_root(rules) -> None:
    e, _, _ = make(rules)
    e.handle(ev("exec", 50, session=0, exec_id="50-1"))  # not in the session
    e.handle(ev("exec", 100, pexec_id="50-1"))
    e.handle(ev("fork", 100, child_pid=101, thread=False, child_exec_id="101-2"))
    lineage = e.table.ancestors({"exec_id": "101-2", "session": S})
    assert [p["pid"] for p in lineage] == [100]


def test_a_rule_swap_happens_between_events(rules, tmp_path) -> None:
    """A local file that turns a default rule off (an override, as an operator writes it):
    it must load, and the evaluator swapped onto it must stay quiet where the defaults fire."""
    cron = ev("open", 101, exec_id="101-3", path="/etc/cron.d/evil", dirfd=-100,
              open_flags=0o101, mode=0o644)  # fmt: skip
    before, fired, _ = make(rules)
    session_tree(before)
    before.handle(dict(cron))
    assert [a for a in fired if a["rule"] == "persistence_cron_write"]  # the defaults fire

    (tmp_path / "local.yaml").write_text(
        "- rule: persistence_cron_write\n  enabled: false\n  override: {enabled: replace}\n"
    )
    quieter = ruleset.load_rules([str(tmp_path)])  # a RuleError here fails the test
    assert not quieter.get("persistence_cron_write").enabled
    e, out, _ = make(rules)
    session_tree(e)
    e.swap_rules(quieter)
    e.handle(dict(cron))
    assert not [a for a in out if a["rule"] == "persistence_cron_write"]
