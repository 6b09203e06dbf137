"""Rule files: loading, append/override across files, selection, errors with positions, index."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from roguewatch.detect import fields as F
from roguewatch.detect import ruleset as R

CTX = F.StaticProcessView(
    default_ancestors=[{"pid": 1, "comm": "bash", "exe": "/usr/bin/bash", "cmdline": "bash"}]
)

BASE = """\
- list: shells
  items: [bash, sh]

- macro: spawned_shell
  condition: evt.type = exec and proc.name in (shells)

- rule: shell_spawned
  desc: a shell started
  condition: spawned_shell
  output: "shell %proc.name (parent %proc.pname, argv %proc.argv) 100%%"
  severity: low
  category: monitor
  tags: [T1059.004, demo]
  exceptions:
    - name: build_dirs
      fields: [proc.cwd, proc.name]
      comps: [startswith, =]
      values:
        - [/srv/build, bash]

- rule: cron_write
  desc: cron written
  condition: >
    evt.type in (open, rename)
    and fd.name pmatch (/etc/cron.d)
  output: cron %fd.name
  severity: critical
  category: persistence
  tags: [T1053.003]
  action: kill_process
"""


def load(*texts: str) -> R.RuleSet:
    return R.load_texts((f"f{i}.yaml", textwrap.dedent(t)) for i, t in enumerate(texts))


def ev(**kw) -> dict:
    return {"pid": 5, "session": 1, "comm": "bash", "flags": [], **kw}


def test_loads_rules_lists_macros_and_indexes_by_event_type() -> None:
    rs = load(BASE)
    assert [r.name for r in rs] == ["shell_spawned", "cron_write"]
    r = rs.get("shell_spawned")
    assert (r.severity, r.category, r.action, r.enabled) == ("low", "monitor", "alert", True)
    assert r.tags == ("T1059.004", "demo") and r.source == "f0.yaml:7"
    assert r.event_types == {"exec"}
    assert rs.rules_for("exec") == (r,)
    assert [x.name for x in rs.rules_for("open")] == ["cron_write"]
    assert rs.rules_for("kill") == ()
    assert rs.lists["shells"] == ("bash", "sh")
    assert rs.macros["spawned_shell"].startswith("evt.type = exec")


def test_rule_matches_renders_and_explains() -> None:
    rs = load(BASE)
    r = rs.get("shell_spawned")
    e = ev(type="exec", argv=["sh", "-c", "x"], cwd="/tmp", comm="sh")
    assert r.matches(e, CTX) and rs.match(e, CTX) == [r]
    assert r.render(e, CTX) == "shell sh (parent bash, argv sh -c x) 100%"
    assert not r.matches(ev(type="exec", cwd="/srv/build/x"), CTX)  # the exception
    assert r.matches(ev(type="exec", cwd="/srv/other"), CTX)
    assert "proc.name in (bash, sh)" in r.explain() and "/srv/build" in r.explain()
    assert r.fields_used >= {"evt.type", "proc.name", "proc.cwd"}
    assert r.render({"type": "exec"}, CTX).startswith("shell <NA>")


def test_malformed_event_matches_nothing() -> None:
    rs = load(BASE)
    assert rs.match({"type": "open", "path": 42}, CTX) == []
    assert not rs.get("cron_write").matches({"type": "open", "path": ["x"]}, CTX)


def test_later_files_append_and_override() -> None:
    rs = load(
        BASE,
        """
        - list: shells
          items: [zsh]
          append: true
        - macro: spawned_shell
          condition: or (evt.type = exec and proc.name = fish)
          append: true
        - rule: shell_spawned
          condition: and not proc.pname = make
          exceptions:
            - name: build_dirs
              values: [[/opt/ci, sh]]
            - name: users
              fields: user.uid
              comps: in
              values: [0, 1001]
          tags: [extra]
          append: true
        - rule: cron_write
          severity: high
          action: alert
          override: {severity: replace, action: replace}
        """,
    )
    r = rs.get("shell_spawned")
    assert rs.lists["shells"] == ("bash", "sh", "zsh")
    assert r.matches(ev(type="exec", comm="zsh"), CTX)
    assert r.matches(ev(type="exec", comm="fish"), CTX)
    assert not r.matches(ev(type="exec", comm="sh", cwd="/opt/ci/1"), CTX)
    assert not r.matches(ev(type="exec", comm="sh", uid=1001), CTX)
    assert r.tags == ("T1059.004", "demo", "extra")
    assert [x.name for x in r.exceptions] == ["build_dirs", "users"]
    assert r.exceptions[0].values == (("/srv/build", "bash"), ("/opt/ci", "sh"))
    c = rs.get("cron_write")
    assert (c.severity, c.action, c.category) == ("high", "alert", "persistence")


def test_override_replace_and_redefinition_and_enable_only() -> None:
    rs = load(
        BASE,
        """
        - list: shells
          items: [ksh]
        - rule: shell_spawned
          condition: evt.type = exec and proc.name = ksh
          override: {condition: replace}
        - rule: cron_write
          enabled: false
        """,
    )
    assert rs.lists["shells"] == ("ksh",)
    assert rs.get("shell_spawned").condition == "evt.type = exec and proc.name = ksh"
    assert not rs.get("cron_write").enabled
    assert rs.rules_for("open") == ()
    rs2 = load(BASE, BASE.replace("severity: low", "severity: medium"))
    assert [r.name for r in rs2] == ["shell_spawned", "cron_write"]
    assert rs2.get("shell_spawned").severity == "medium"


def test_later_list_changes_apply_to_earlier_rules() -> None:
    rs = load(BASE, "- list: shells\n  items: [bash, sh, dash]\n")
    assert rs.get("shell_spawned").matches(ev(type="exec", comm="dash"), CTX)


def test_select_by_name_glob_tag_and_category() -> None:
    rs = load(BASE)
    assert not rs.select(disable=["shell_spawned"]).get("shell_spawned").enabled
    off = rs.select(disable=["*"])
    assert not any(r.enabled for r in off) and off.rules_for("open") == ()
    assert [r.name for r in rs.select(disable=["tag:T1053"]) if r.enabled] == ["shell_spawned"]
    assert [r.name for r in rs.select(disable=["tag:T1059.*"]) if r.enabled] == ["cron_write"]
    assert [r.name for r in rs.select(disable=["category:persistence"]) if r.enabled] == [
        "shell_spawned"
    ]
    both = off.select(enable=["cron_*"])
    assert [r.name for r in both if r.enabled] == ["cron_write"]
    # disable first, then enable: the enable wins
    mixed = rs.select(enable=["cron_write"], disable=["*"])
    assert [r.name for r in mixed if r.enabled] == ["cron_write"]
    assert rs.get("cron_write").enabled  # select returns a copy
    with pytest.raises(R.RuleError, match="no rule matches 'tag:T9999'"):
        rs.select(disable=["tag:T9999"])


def _error(*texts: str) -> str:
    with pytest.raises(R.RuleError) as e:
        load(*texts)
    return str(e.value)


RULE = """\
- rule: r1
  desc: d
  condition: evt.type = open
  output: o
  severity: low
  category: egress
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("- rule: r1\n  desc: [unclosed\n", "f0.yaml:3:1: expected valid YAML"),
        ("rule: r1\n", "f0.yaml:1:1: expected a list of items"),
        ("- rule: r1\n  list: x\n", "f0.yaml:1:3: expected exactly one of the keys"),
        (RULE + "  colour: red\n", "f0.yaml:7:3: rule 'r1': unknown key 'colour'"),
        (RULE.replace("  output: o\n", ""), "f0.yaml:1:3: rule 'r1': expected the key 'output'"),
        (
            RULE.replace("severity: low", "severity: urgent"),
            "f0.yaml:5:13: rule 'r1': expected severity one of info, low",
        ),
        (
            RULE.replace("category: egress", "category: fun"),
            "f0.yaml:6:13: rule 'r1': expected category",
        ),
        (RULE + "  action: nuke\n", "f0.yaml:7:11: rule 'r1': expected action one of alert"),
        (RULE + "  enabled: maybe\n", "f0.yaml:7:12: rule 'r1': expected a bool for 'enabled'"),
        (RULE + "  tags: T1\n", "f0.yaml:7:9: rule 'r1': expected a list for 'tags'"),
        (RULE + "  tags: [[a]]\n", "f0.yaml:7:10: rule 'r1': expected a str for 'tags'"),
        (RULE.replace("desc: d", "desc: [d]"), "f0.yaml:2:9: rule 'r1': expected a str for 'desc'"),
        (
            RULE.replace("evt.type = open", "evt.type = open and fd.nme = x"),
            "f0.yaml:3:34: rule 'r1': unknown field 'fd.nme'",
        ),
        (
            RULE.replace("evt.type = open", "evt.type = open and"),
            "f0.yaml:3:33: rule 'r1': expected",
        ),
        (
            RULE.replace("output: o", "output: at %fd.nam now"),
            "f0.yaml:4:14: rule 'r1': unknown field '%fd.nam'",
        ),
        (
            RULE.replace("evt.type = open", "evt.type = open and nosuch"),
            "f0.yaml:3:34: rule 'r1': unknown macro 'nosuch'",
        ),
        (
            RULE + "  override: {severity: replace}\n",
            "f0.yaml:1:3: rule 'r1': no earlier rule 'r1'",
        ),
        (
            "- rule: r9\n  enabled: false\n",
            "f0.yaml:1:3: rule 'r9': no earlier rule 'r9' to enable",
        ),
        ("- list: l\n  items: [a]\n  append: true\n", "f0.yaml:1:3: list 'l': no earlier list 'l'"),
        ("- macro: m\n  condition: fd.name = \n", "f0.yaml:2:23: macro 'm': expected"),
        (
            "- list: l\n  items: [a, l2]\n- list: l2\n  items: [l]\n",
            "list 'l': list refers to itself",
        ),
        (
            RULE + "  exceptions:\n    - name: e\n      fields: [fd.nope]\n",
            "f0.yaml:9:15: rule 'r1': exception 'e': unknown field 'fd.nope'",
        ),
        (
            RULE
            + "  exceptions:\n    - name: e\n      fields: [fd.name, proc.name]\n"
            + "      values: [[a]]\n",
            "f0.yaml:10:16: rule 'r1': exception 'e': expected a row of 2 values",
        ),
        (
            RULE + "  exceptions:\n    - name: e\n      fields: [fd.name]\n      comps: [like]\n",
            "rule 'r1': exception 'e': unknown comp 'like'",
        ),
        (
            RULE
            + "  exceptions:\n    - name: e\n      fields: proc.pid\n"
            + "      comps: <\n      values: [abc]\n",
            "f0.yaml:8:7: rule 'r1': exception 'e': proc.pid <: expected an integer",
        ),
        (
            RULE + "  append: true\n  override: {}\n",
            "rule 'r1': expected either 'append' or 'override'",
        ),
    ],
)
def test_errors_name_file_line_column_and_rule(text: str, expected: str) -> None:
    assert expected in _error(text)


def test_condition_error_positions_in_block_scalars_and_appends() -> None:
    text = RULE.replace(
        "  condition: evt.type = open\n",
        "  condition: |\n    evt.type = open\n      and fd.nme = x\n",
    )
    assert _error(text).startswith("f0.yaml:5:11: rule 'r1': unknown field 'fd.nme'")
    folded = RULE.replace(
        "  condition: evt.type = open\n",
        "  condition: >\n    evt.type = open\n    and proc.pid < abc\n",
    )
    assert _error(folded).startswith("f0.yaml:5:20: rule 'r1': proc.pid <: expected an integer")
    appended = "- rule: r1\n  condition: and proc.nme = x\n  append: true\n"
    assert _error(RULE, appended).startswith("f1.yaml:2:18: rule 'r1': unknown field 'proc.nme'")


def test_error_inside_a_macro_points_at_the_macro() -> None:
    macro = "- macro: m\n  condition: proc.pid < x\n"
    rule = RULE.replace("evt.type = open", "evt.type = open and m")
    msg = _error(macro, rule)
    assert msg.startswith("f0.yaml:2:25: macro 'm': proc.pid <: expected an integer")
    assert "used by rule 'r1'" in msg
    cyclic = "- macro: a\n  condition: b\n- macro: b\n  condition: a\n"
    assert "refers to itself" in _error(cyclic, RULE.replace("evt.type = open", "a"))


def test_load_rules_from_directories_sorted_by_name(tmp_path: Path) -> None:
    d1, d2 = tmp_path / "d1", tmp_path / "d2"
    d1.mkdir()
    d2.mkdir()
    (d1 / "b.yaml").write_text("- rule: r1\n  severity: high\n  override: {severity: replace}\n")
    (d1 / "a.yaml").write_text(RULE)
    (d1 / "notes.txt").write_text("ignored")
    (d2 / "z.yml").write_text("- rule: r1\n  enabled: false\n")
    rs = R.load_rules([d1, d2], defaults=False)
    assert rs.get("r1").severity == "high" and not rs.get("r1").enabled
    assert [Path(f).name for f in rs.files] == ["a.yaml", "b.yaml", "z.yml"]
    (d2 / "bad.yaml").write_text("- rule: r1\n  severity: bogus\n  override: {severity: replace}\n")
    with pytest.raises(R.RuleError, match=r"bad\.yaml:2:13: rule 'r1': expected severity"):
        R.load_rules([d1, d2], defaults=False)


def test_default_packs_load_and_extra_dirs_extend_them(tmp_path: Path) -> None:
    (tmp_path / "local.yaml").write_text(
        "- rule: persistence_cron_write\n"
        "  exceptions:\n"
        "    - name: build_daemon\n"
        "      fields: proc.name\n"
        "      values: [cron-builder]\n"
        "  append: true\n"
    )
    rs = R.load_rules([tmp_path])
    assert {r.category for r in rs} == {
        "egress", "persistence", "shutdown_evasion", "oversight_tampering"
    }  # fmt: skip
    e = {"type": "open", "path": "/etc/cron.d/x", "comm": "cron-builder", "session": 1}
    assert rs.match(e, CTX) == []
    assert [r.name for r in rs.match({**e, "comm": "sh"}, CTX)] == ["persistence_cron_write"]
    for r in rs:
        assert r.desc and r.output and r.tags, r.name
        assert all(t.startswith("T") for t in r.tags), r.name
        assert r.event_types is not None, f"{r.name} is evaluated for every event type"


FILE_EVENT_TYPES = {"open", "rename", "link", "symlink", "truncate", "unlink", "chmod", "chown",
                    "fs_change"}  # fmt: skip


def test_every_persistence_and_oversight_rule_on_a_file_undoes_the_change() -> None:
    """Containment means the effect is gone: a persistence or oversight rule that can match a
    change to a file restores it (``action: restore``, or ``restore: true`` beside a kill).
    Timestamps (``utimes``) only are exempt: the forged times are what is alerted, a log's
    content is not what changed."""
    rs = R.load_rules()
    missing = [
        r.name for r in rs
        if r.category in ("persistence", "oversight_tampering")
        and (r.event_types or frozenset()) & FILE_EVENT_TYPES
        and not (r.action == "restore" or r.restore)
    ]  # fmt: skip
    assert missing == []


def test_the_coverage_table_in_docs_names_real_rules_and_their_techniques() -> None:
    """docs/rules.md's coverage table (hand-written, kept by `make docs`): every rule it
    names exists, and every technique of a row is a tag of one of that row's rules."""
    import re

    doc = (Path(__file__).parent.parent / "docs" / "rules.md").read_text()
    table = doc.split("## Coverage", 1)[1].split("\n## ", 1)[0].split("<!--", 1)[0]
    rows = [r for r in table.splitlines() if r.startswith("| T")]
    assert len(rows) >= 20
    rs = R.load_rules()
    names = {r.name for r in rs}
    for row in rows:
        technique, _, rules = (c.strip() for c in row.strip("|").split(" | "))
        listed = [n.strip() for n in rules.split(",")]
        assert set(listed) <= names, (row, set(listed) - names)
        tags = {t for n in listed for t in rs.get(n).tags}
        ids = re.findall(r"T\d{4}(?:\.\d{3})?", technique)
        assert ids and set(ids) <= tags, (technique, set(ids) - tags)


def test_a_site_adds_its_own_security_service_in_a_local_file(tmp_path: Path) -> None:
    (tmp_path / "local.yaml").write_text(
        "- list: security_services\n  append: true\n  items: [my-edr]\n"
        "- list: security_service_comms\n  append: true\n  items: [my-edr-agent]\n"
    )
    rs = R.load_rules([tmp_path])
    stop = {"type": "exec", "comm": "systemctl", "session": 1,
            "argv": ["systemctl", "stop", "my-edr.service"]}  # fmt: skip
    kill = {"type": "kill", "comm": "sh", "session": 1, "target": 99, "target_tid": 0,
            "sig": 9, "call": "kill", "target_comm": "my-edr-agent", "flags": []}  # fmt: skip
    assert [r.name for r in rs.match(stop, CTX)] == ["oversight_security_service_stop"]
    assert [r.name for r in rs.match(kill, CTX)] == ["oversight_security_service_kill"]
    assert R.load_rules().match(stop, CTX) == []
