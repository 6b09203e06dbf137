"""`roguewatch rules lint|list|explain|test`, run in-process through their argparse glue."""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path

import pytest
from roguewatch.cli import rules as rules_cli
from roguewatch.detect import ruleset as R


@pytest.fixture(autouse=True)
def no_local_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The host's /etc/roguewatch/rules.d must not change what these tests see."""
    monkeypatch.setattr(rules_cli, "LOCAL_RULES_DIR", str(tmp_path / "no-such-dir"))


def cli(*argv: str) -> int:
    ap = argparse.ArgumentParser(prog="roguewatch")
    rules_cli.add_arguments(ap.add_subparsers(dest="cmd"))
    args = ap.parse_args(["rules", *argv])
    return args.fn(args)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


DEFAULTS = R.load_rules()


def test_lint_defaults_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("lint") == 0
    out = capsys.readouterr().out.strip()
    assert (
        out
        == f"{len(DEFAULTS)} rules, {len(DEFAULTS.lists)} lists, {len(DEFAULTS.macros)} macros: ok"
    )


def test_lint_local_dir_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(
        tmp_path / "rules.d" / "local.yaml",
        """\
        - list: build_daemons
          items: [bazel, buildkitd]
        - rule: my_tmp_exec
          desc: something ran from /tmp
          condition: evt.type = exec and proc.exe startswith /tmp/
          output: "%proc.exe ran from /tmp"
          severity: low
          category: persistence
        """,
    )
    assert cli("lint", str(tmp_path / "rules.d")) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{len(DEFAULTS) + 1} rules, {len(DEFAULTS.lists) + 1} lists")


def test_lint_broken_rule_names_file_line_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = write(
        tmp_path / "rules.d" / "local.yaml",
        """\
        - rule: my_rule
          desc: x
          condition: evt.type = open and fd.nme = /tmp/x
          output: "x %fd.name"
          severity: low
          category: persistence
        """,
    )
    assert cli("lint", str(f.parent)) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert err.startswith(f"{f}:3:34: rule 'my_rule': ")
    assert "fd.nme" in err and "fd.name" in err
    assert "Traceback" not in err


def test_lint_yaml_error_and_missing_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = write(tmp_path / "d" / "bad.yaml", "- rule: x\n  desc: [unclosed\n")
    assert cli("lint", str(f.parent)) == 1
    assert capsys.readouterr().err.startswith(f"{f}:")
    assert cli("lint", str(tmp_path / "missing")) == 2
    assert "no such rule directory" in capsys.readouterr().err


def _list_rows(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, dict]:
    assert cli("list", "--json", *argv) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    return {r["name"]: r for r in rows}


def test_list_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "CATEGORY", "SEVERITY", "ACTION", "ENABLED", "SOURCE"]
    assert len(lines) == len(DEFAULTS) + 1
    row = next(x for x in lines if x.startswith("persistence_cron_write "))
    cells = row.split()
    assert cells[1:5] == ["persistence", "critical", "restore", "yes"]
    assert cells[5].endswith(
        "persistence.yaml:" + DEFAULTS.get("persistence_cron_write").source.split(":")[-1]
    )


def test_local_override_changes_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = _list_rows(capsys)
    assert before["persistence_cron_write"]["enabled"] is True
    assert before["egress_unauthorized_destination"]["action"] == "kill_process"
    d = tmp_path / "rules.d"
    write(
        d / "local.yaml",
        """\
        - rule: persistence_cron_write
          enabled: false
        - rule: egress_unauthorized_destination
          action: alert
          severity: medium
          override: {action: replace, severity: replace}
        - rule: egress_unauthorized_destination
          exceptions:
            - name: build_cache
              fields: [proc.exe, fd.sip]
              comps: [=, cidr]
              values: [[/usr/bin/bazel, 10.9.0.0/16]]
          append: true
        """,
    )
    after = _list_rows(capsys, "--rules", str(d))
    assert after["persistence_cron_write"]["enabled"] is False
    egress = after["egress_unauthorized_destination"]
    assert (egress["action"], egress["severity"]) == ("alert", "medium")
    assert "build_cache" in egress["exceptions"]

    assert cli("list", "--rules", str(d)) == 0
    table = capsys.readouterr().out.splitlines()
    cron = next(x for x in table if x.startswith("persistence_cron_write "))
    assert cron.split()[4] == "no"
    egress_row = next(x for x in table if x.startswith("egress_unauthorized_destination "))
    assert egress_row.split()[2:4] == ["medium", "alert"]


def test_explain_expands_macros_and_lists_fields(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("explain", "persistence_cron_write") == 0
    out = capsys.readouterr().out
    rule = DEFAULTS.get("persistence_cron_write")
    assert rule.desc.split()[0] in out
    assert "writes_file and fd.name pmatch (cron_paths)" in out  # as written
    flat = " ".join(out.split())
    # macros and lists expanded
    assert "evt.type in (open, rename, link, symlink, truncate, fs_change)" in flat
    assert "/etc/cron.d" in flat
    for name in ("evt.type", "fd.name", "proc.name"):
        assert any(line.split()[:1] == [name] for line in out.splitlines()), name
    assert "event types: fs_change, link, open, rename, symlink, truncate" in out
    assert "restore" in out and "T1053.003" in out


def test_explain_shows_exceptions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "rules.d"
    write(
        d / "local.yaml",
        """\
        - rule: egress_unauthorized_destination
          exceptions:
            - name: build_cache
              fields: [proc.exe, fd.sip]
              comps: [=, cidr]
              values: [[/usr/bin/bazel, 10.9.0.0/16]]
          append: true
        """,
    )
    assert cli("explain", "egress_unauthorized_destination", "--rules", str(d)) == 0
    out = capsys.readouterr().out
    assert "build_cache: proc.exe =, fd.sip cidr" in out
    assert '"/usr/bin/bazel", "10.9.0.0/16"' in out
    assert "event types: connect, sendmsg, sendto" in out
    assert cli("explain", "egress_unauthorized_destination", "--rules", str(d), "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["exceptions"][-1]["values"] == [["/usr/bin/bazel", "10.9.0.0/16"]]
    assert "fd.sip" in data["fields"] and data["fields"]["fd.sip"]
    assert "egress_candidate" not in data["expanded"]


def test_explain_unknown_rule_suggests(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("explain", "persistence_cron_wrte") == 2
    captured = capsys.readouterr()
    assert "no rule named persistence_cron_wrte (did you mean persistence_cron_write?)" in (
        captured.err
    )
    assert cli("explain", "zzzzzzzz") == 2
    assert "did you mean" not in capsys.readouterr().err


def test_rules_test_packaged_fixtures_pass(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("test") == 0
    n = sum(len(R.load_fixtures(f)) for f in R.default_fixture_files())
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"{n} cases, 0 failed"


FIXTURE = """\
context:
  policy:
    egress_allow: [10.20.0.0/16:443/tcp]
cases:
  - name: cron job dropped
    events:
      - {type: open, path: /etc/cron.d/backdoor, open_flags: 0o1101, mode: 0o644}
    expect: [persistence_cron_write]
  - name: allowed API is quiet
    events:
      - {type: connect, family: inet, addr: 10.20.3.4, port: 443, proto: tcp}
    expect: [%s]
"""


def test_rules_test_dir_passes_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write(tmp_path / "good" / "mine.yaml", FIXTURE % "")
    assert cli("test", str(good.parent)) == 0
    assert capsys.readouterr().out.strip() == "2 cases, 0 failed"

    bad = write(tmp_path / "bad" / "mine.yaml", FIXTURE % "egress_unauthorized_destination")
    assert cli("test", str(bad.parent)) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == "2 cases, 1 failed"
    assert len(lines) == 2
    assert f"{bad}:" in lines[0]
    assert "'allowed API is quiet'" in lines[0]
    assert "expected ['egress_unauthorized_destination'], fired []" in lines[0]


def test_rules_test_with_local_rules(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A local rule disabling a default one makes that default's positive fixture fail."""
    d = write(
        tmp_path / "rules.d" / "local.yaml", "- rule: persistence_cron_write\n  enabled: false\n"
    )
    fx = write(tmp_path / "fx" / "mine.yaml", FIXTURE % "")
    assert cli("test", str(fx.parent), "--rules", str(d.parent)) == 1
    out = capsys.readouterr().out
    assert "'cron job dropped'" in out and "fired []" in out


def test_rules_test_unknown_expectation_and_missing_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fx = write(tmp_path / "fx" / "mine.yaml", FIXTURE % "no_such_rule")
    assert cli("test", str(fx.parent)) == 1
    assert "no such rule: no_such_rule" in capsys.readouterr().out
    assert cli("test", str(tmp_path / "nope")) == 2
    assert "no such fixture" in capsys.readouterr().err
