"""Rule prefilters (roguewatch.prefilter): the memo on pure event values gives exactly what
running every rule's condition gives, whatever the events, policies or malformed values."""

from __future__ import annotations

import pytest
from roguewatch.detect import condition as C
from roguewatch.detect import fields as F
from roguewatch.detect import prefilter
from roguewatch.detect import ruleset as R
from roguewatch.detect.evaluator import Evaluator
from roguewatch.detect.proctable import ProcessTable
from roguewatch.policy.policy import StaticPolicy

PROTECTED = F.StaticProcessView(policy=StaticPolicy(protect=("/srv/data",)))
OPEN_VIEW = F.StaticProcessView(policy=StaticPolicy())


@pytest.fixture(scope="module")
def rules() -> R.RuleSet:
    return R.load_rules()


def reference(rs: R.RuleSet, event: dict, ctx: object) -> list[str]:
    """What the rule set matched before prefilters: every rule of the type, condition run."""
    return [r.name for r in rs.rules_for(event.get("type")) if r.matches(event, ctx)]


def fixture_events() -> list[tuple[dict, F.StaticProcessView]]:
    out = []
    for f in R.default_fixture_files():
        for case in R.load_fixtures(f):
            out += [(e, case.view) for e in case.events]
    return out


def variants(e: dict) -> list[dict]:
    """The event, and the same with values that rules test changed or made malformed."""
    out = [e, dict(e)]
    for key, values in (
        ("path", ["/etc/cron.d/x", "/srv/data/db", "/home/u/.bashrc", 42, None, ["/etc"]]),
        ("source", ["/srv/data/old", "/var/log/syslog", 7]),
        ("comm", ["git", "nohup", "bash", None, ["x"]]),
        ("sig", [1, 2, 15, True, "15"]),
        ("handler", ["SIG_IGN", "SIG_DFL"]),
        ("addr", ["10.9.9.9", "127.0.0.1", "not-an-ip"]),
        ("port", [53, 443, None]),
        ("open_flags", [0o1001, 0, None, "O_TRUNC"]),
        ("newcomm", ["kworker/0:1", "python3"]),
        ("ns_flags", [None, 0x20000000, 0]),
        ("clone_flags", [None, 0x10000000, 17]),
    ):
        if key in e:
            out += [{**e, key: v} for v in values]
            out.append({k: v for k, v in e.items() if k != key})  # absent is not None
    if e.get("type") == "fork":
        out += [{**e, "ns_flags": None}, {**e, "ns_flags": 0x20000000}]
    return out


def test_every_fixture_event_and_variant_matches_as_every_condition_would(rules) -> None:
    seen = 0
    for event, view in fixture_events():
        for ctx in (view, PROTECTED, OPEN_VIEW):
            for e in variants(event):
                for _ in range(2):  # the second time from the memo
                    assert [r.name for r in rules.match(e, ctx)] == reference(rules, e, ctx), e
                    seen += 1
    assert seen > 1000


def test_the_memo_is_keyed_by_the_policy_values_a_rule_reads(rules) -> None:
    e = {**R.EVENT_DEFAULTS, "type": "open", "path": "/srv/data/db", "open_flags": 0o1}
    for _ in range(2):
        assert "shutdown_protected_file_tampering" in [r.name for r in rules.match(e, PROTECTED)]
        assert "shutdown_protected_file_tampering" not in [
            r.name for r in rules.match(e, OPEN_VIEW)
        ]


def test_a_context_without_a_policy_runs_every_matcher(rules) -> None:
    e = {**R.EVENT_DEFAULTS, "type": "open", "path": "/etc/cron.d/job", "open_flags": 0o1}
    assert [r.name for r in rules.match(e, object())] == reference(rules, e, object())


def test_the_memo_stays_bounded_and_right(rules, monkeypatch) -> None:
    monkeypatch.setattr(prefilter, "MEMO_MAX", 8)
    rs = R.load_rules()  # filters built after the patch are bounded by it
    f = rs._filters["open"]
    planned: list[str] = []
    plan_for = f._plan_for
    f._plan_for = lambda e, ctx: planned.append(e["path"]) or plan_for(e, ctx)
    for i in range(40):
        e = {**R.EVENT_DEFAULTS, "type": "open", "path": f"/etc/cron.d/j{i % 3}/{i}"}
        assert [r.name for r in rs.match(e, OPEN_VIEW)] == reference(rs, e, OPEN_VIEW)
    assert len(f._memo) <= 8 and len(planned) == 40


def test_a_rule_decided_by_its_gate_alone_runs_no_matcher() -> None:
    rs = R.load_texts([("t.yaml", """\
- rule: cron
  desc: d
  condition: evt.type = open and fd.name pmatch (/etc/cron.d) and not proc.name = cron
  output: o
  severity: low
  category: persistence
- rule: cron_by_a_child_of_bash
  desc: d
  condition: evt.type = open and fd.name pmatch (/etc/cron.d) and proc.pname = bash
  output: o
  severity: low
  category: persistence
""")])  # fmt: skip
    f = rs._filters["open"]
    assert set(f.inputs) == {"path", "comm"}
    ctx = F.StaticProcessView(default_ancestors=[{"pid": 1, "comm": "bash"}])
    e = {**R.EVENT_DEFAULTS, "type": "open", "path": "/etc/cron.d/x"}
    steps = f.steps(e, ctx)
    assert [(r.name, m is None) for r, m in steps] == [
        ("cron", True),  # decided by the memo
        ("cron_by_a_child_of_bash", False),  # the gate holds: the ancestry is still asked
    ]
    assert f.steps({**e, "path": "/tmp/x"}, ctx) == ()
    assert [r.name for r in rs.match(e, ctx)] == ["cron", "cron_by_a_child_of_bash"]


def tree(text: str) -> C.Node:
    return C.compile_condition(text).tree


def kept(text: str) -> str | bool:
    g = C.necessary(tree(text), lambda c: C.inputs(c) is not None)
    return g if isinstance(g, bool) else C.to_text(g)


def test_necessary_keeps_what_must_hold_and_drops_the_rest() -> None:
    assert kept("fd.name startswith /etc and proc.aname = bash") == "fd.name startswith /etc"
    assert kept("fd.name startswith /etc or proc.aname = bash") is True
    assert kept("not (fd.name startswith /etc and proc.aname = bash)") is True
    assert kept("not (fd.name startswith /etc or proc.aname = bash)") == (
        "not fd.name startswith /etc"
    )
    assert kept("proc.name = git and not proc.name in (a, b)") == (
        "proc.name = git and not proc.name in (a, b)"
    )


def test_inputs_name_what_a_comparison_reads() -> None:
    def inputs(text: str) -> tuple[str, ...] | None:
        (cmp,) = C.comparisons(tree(text))
        return C.inputs(cmp)

    assert inputs("fd.name pmatch (/etc)") == ("path",)
    assert inputs("proc.name = git") == ("comm",)
    assert inputs("fd.protected = true") == ("path", "policy.protect")
    assert inputs("fd.rport = 53") == ("type", "port")
    assert inputs("proc.pname = bash") is None  # the process table
    assert inputs("proc.cmdline contains x") is None  # the event, else the process table
    assert inputs("evt.flags contains guard") is None  # a list: no memo key
    assert inputs("session.fork_rate > 10") is None  # changes with time


def test_a_policy_set_after_a_pick_is_the_one_used() -> None:
    table = ProcessTable(StaticPolicy())
    table.use_policy_of(5)
    assert table.policy.protect == ()
    table.set_policy(5, StaticPolicy(protect=("/srv",)))
    table.use_policy_of(5)
    assert table.policy.protect == ("/srv",)
    with pytest.raises(TypeError):
        table.policies[6] = StaticPolicy()  # type: ignore[index]


def test_handle_batch_does_what_handle_does(rules) -> None:
    def event(t: str, **kw: object) -> dict:
        return {**R.EVENT_DEFAULTS, "type": t, **kw}

    batch = [
        event("exec", filename="/usr/bin/crontab", argv=["crontab", "x"], comm="crontab"),
        event("open", path="/etc/cron.d/evil", open_flags=0o101),
        "not an event",
        event("open", path=["/etc/cron.d/x"]),
        {"type": ["open"]},
        event("rename", source="/tmp/a", path="/etc/sudoers.d/x"),
        event("fork", child_pid=5000, child_exec_id="5000-1", clone_flags=0x20000000),
    ]
    outs = []
    for one_by_one in (False, True):
        out: list[dict] = []
        e = Evaluator(rules, ProcessTable(StaticPolicy()), out.append, clock=lambda: 1)
        if one_by_one:
            for x in batch:
                try:
                    e.handle(x)  # type: ignore[arg-type]
                except (KeyError, TypeError, ValueError, AttributeError):
                    e.malformed += 1
        else:
            e.handle_batch(batch)  # type: ignore[arg-type]
        outs.append(([a["rule"] for a in out], e.events, e.malformed, dict(e.by_type)))
    assert outs[0] == outs[1]
    assert outs[0][0] == [
        "persistence_tool_exec", "persistence_cron_write", "persistence_privilege_config_write",
        "shutdown_new_namespace",
    ]  # fmt: skip


PREFIX_LISTS = [
    "(/etc/cron.d, /etc/crontab, /var/spool/cron)",
    "(/etc/cron.d/, /etc//profile.d, /etc/./ssh/sshd_config)",
    "(/etc, /etc/cron.d)",
    "(relative/dir, /srv/a/b/c)",
    "(/)",
]
PATHS = [
    "/etc/cron.d", "/etc/cron.d/job", "/etc/cron.dx", "/etc/crontab", "/etc/crontab.bak",
    "/etc//cron.d/../cron.d/x", "/etc/./cron.d/y", "/etc/cron.d/.", "/etc/cron.d/..",
    "/var/spool/cron/crontabs/root", "/etc/profile.d/x.sh", "/etc/ssh/sshd_config",
    "/etc/ssh/sshd_config.d/a", "relative/dir/x", "relative", "/srv/a/b/c/d", "/srv/a/b",
    "/", "", "etc/cron.d/x", "/home/u/.bashrc", None, 42,
]  # fmt: skip


@pytest.mark.parametrize("field", ["fd.name", "evt.arg.source", "fd.homepath"])
def test_the_path_index_answers_as_each_pmatch_would(field) -> None:
    from roguewatch.detect.pathindex import PathIndex

    trees = [tree(f"{field} pmatch {lists}") for lists in PREFIX_LISTS]
    index = PathIndex(c for t in trees for c in C.comparisons(t))
    assert len(index) == len(PREFIX_LISTS) - 1  # "/" keeps its usual matcher
    key = "source" if field == "evt.arg.source" else "path"
    for t in trees:
        indexed, usual = C.build_matcher(t, index.leaf), C.build_matcher(t)
        for p in PATHS:
            e = {"type": "open", key: p}
            try:
                want: object = usual(e, None)
            except Exception as exc:  # compared with what the index does
                want = type(exc)
            try:
                got: object = indexed(e, None)
            except Exception as exc:
                got = type(exc)
            assert got == want, (C.to_text(t), p)
