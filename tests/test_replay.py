"""`roguewatch replay FILE`: rules over a hand-built recording, in-process."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from roguewatch.cli import replay
from roguewatch.cli import rules as rules_cli
from roguewatch.stream import recording

T0 = 1_700_000_000_000_000_000
SEC = 1_000_000_000
BASE = {
    "session": 7, "pid": 4242, "tid": 4242, "ppid": 4200, "uid": 1000, "gid": 1000,
    "comm": "python3", "exe": "/usr/bin/python3", "exec_id": "4242-1000",
    "pexec_id": "4200-900", "ret": 0, "flags": [],
}  # fmt: skip


@pytest.fixture(autouse=True)
def no_local_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rules_cli, "LOCAL_RULES_DIR", str(tmp_path / "no-such-dir"))


def cli(*argv: str) -> int:
    ap = argparse.ArgumentParser(prog="roguewatch")
    replay.add_arguments(ap.add_subparsers(dest="cmd"))
    args = ap.parse_args(["replay", *argv])
    return args.fn(args)


def exec_ev(ts: int) -> dict:
    return {
        **BASE, "type": "exec", "ts": ts, "filename": "/usr/bin/python3",
        "argv": ["python3", "agent.py"], "cmdline": "python3 agent.py", "cwd": "/home/u",
    }  # fmt: skip


def connect_ev(ts: int, addr: str = "10.1.2.3", port: int = 443) -> dict:
    return {**BASE, "type": "connect", "ts": ts, "family": "inet", "addr": addr, "port": port,
            "proto": "tcp"}  # fmt: skip


def make_recording(path: Path, events: list[dict]) -> Path:
    w = recording.Writer(str(path), ["python3", "agent.py"], 7)
    for ev in events:
        w.write(ev)
    w.close()
    return path


@pytest.fixture
def rec(tmp_path: Path) -> Path:
    return make_recording(
        tmp_path / "run.rwrec",
        [
            exec_ev(T0),
            {
                **BASE,
                "type": "open",
                "ts": T0 + 1000,
                "path": "/etc/cron.d/evil",
                "open_flags": 0o1101,
                "mode": 0o644,
            },
            connect_ev(T0 + 2000),
        ],
    )


def policy(tmp_path: Path, allow: str) -> Path:
    p = tmp_path / f"policy-{allow.replace('/', '_')}.yaml"
    p.write_text(f"mode: enforce\negress:\n  allow:\n    - {allow}\n")
    return p


def test_replay_json_alerts(rec: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(str(rec), "--policy", str(policy(tmp_path, "127.0.0.1/32")), "--json") == 0
    captured = capsys.readouterr()
    alerts = [json.loads(x) for x in captured.out.splitlines()]
    by_rule = {a["rule"]: a for a in alerts}
    assert set(by_rule) == {"persistence_cron_write", "egress_unauthorized_destination"}
    cron = by_rule["persistence_cron_write"]
    assert cron["category"] == "persistence"
    assert cron["event"]["path"] == "/etc/cron.d/evil"
    assert cron["cmdline"] == "python3 agent.py"  # from the exec, through the process table
    assert cron["ts"] == "2023-11-14T22:13:20.000001Z"  # recorded time, not now
    egress = by_rule["egress_unauthorized_destination"]
    assert egress["category"] == "egress"
    assert (egress["event"]["addr"], egress["event"]["port"]) == ("10.1.2.3", 443)
    assert "10.1.2.3" in egress["message"]
    assert captured.err.strip() == "3 events, 2 alerts: by category egress 1, persistence 1"


def test_replay_human(rec: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(str(rec), "--policy", str(policy(tmp_path, "127.0.0.1/32"))) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert "persistence_cron_write" in lines[0] and "/etc/cron.d/evil" in lines[0]
    assert "egress_unauthorized_destination" in lines[1] and "10.1.2.3" in lines[1]
    assert not any(line.lstrip().startswith("{") for line in lines)


def test_replay_allowed_destination_is_quiet(
    rec: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(str(rec), "--policy", str(policy(tmp_path, "10.1.0.0/16:443")), "--json") == 0
    rules = [json.loads(x)["rule"] for x in capsys.readouterr().out.splitlines()]
    assert rules == ["persistence_cron_write"]


def test_replay_follows_recorded_time_for_dedup(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With an alert-only rule, repeats within the window (in recorded time) fold into a count;
    a repeat after the window is a new alert."""
    d = tmp_path / "rules.d"
    d.mkdir()
    (d / "local.yaml").write_text(
        "- rule: egress_unauthorized_destination\n  action: alert\n  override: {action: replace}\n"
    )
    events = [exec_ev(T0)] + [connect_ev(T0 + i * SEC) for i in (1, 2, 3)]
    events.append(connect_ev(T0 + 30 * SEC))  # long after the first window closed
    rec = make_recording(tmp_path / "dup.rwrec", events)
    assert cli(str(rec), "--rules", str(d), "--json") == 0
    captured = capsys.readouterr()
    alerts = [json.loads(x) for x in captured.out.splitlines()]
    assert [(a["rule"], a["count"]) for a in alerts] == [
        ("egress_unauthorized_destination", 1),
        ("egress_unauthorized_destination", 2),  # the window's summary: 2 more times
        ("egress_unauthorized_destination", 1),
    ]
    assert "2 more times within 10 s" in alerts[1]["message"]
    # the summary was emitted when recorded time passed the window, before the late repeat
    assert alerts[1]["ts"] == "2023-11-14T22:13:31.000000Z"  # first + window, at a tick
    assert alerts[2]["ts"] == "2023-11-14T22:13:50.000000Z"
    assert "2 duplicates folded" in captured.err


def test_replay_carries_the_repeats_the_kernel_folded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folded event (the kernel's count of identical calls) is recorded and replayed as it
    came: the alert on it carries the count, and the dedup window's summary counts its calls."""
    d = tmp_path / "rules.d"
    d.mkdir()
    (d / "local.yaml").write_text(
        "- rule: egress_unauthorized_destination\n  action: alert\n  override: {action: replace}\n"
    )
    first = connect_ev(T0 + SEC)
    folded = {**first, "ts": T0 + SEC + 200_000_000, "repeats": 40,
              "first_ts": T0 + SEC + 1_000, "last_ts": T0 + SEC + 200_000_000}  # fmt: skip
    late = {**folded, "ts": T0 + 30 * SEC, "first_ts": T0 + 29 * SEC, "last_ts": T0 + 30 * SEC}
    rec = make_recording(tmp_path / "fold.rwrec", [exec_ev(T0), first, folded, late])
    _, back = recording.read(str(rec))
    assert [e.get("repeats") for e in back] == [None, None, 40, 40]
    assert cli(str(rec), "--rules", str(d), "--json") == 0
    alerts = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(a["rule"], a["count"]) for a in alerts] == [
        ("egress_unauthorized_destination", 1),
        ("egress_unauthorized_destination", 40),  # the window's summary: the 40 calls folded
        ("egress_unauthorized_destination", 40),  # a folded event alone: its own count
    ]
    assert alerts[2]["event"]["repeats"] == 40 and "40 identical calls" in alerts[2]["message"]


def test_replay_run_api(rec: Path) -> None:
    header, events = recording.read(str(rec))
    out: list[dict] = []
    rules = rules_cli.load(None)
    stats = replay.run(events, rules, replay.StaticPolicy(), out.append, start_ns=header["started"])
    assert stats.events == 3 and stats.alerts == 2 == len(out)
    assert stats.by_rule == {"persistence_cron_write": 1, "egress_unauthorized_destination": 1}


def test_replay_not_a_recording(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "notes.txt"
    f.write_text("hello\n")
    assert cli(str(f)) == 2
    err = capsys.readouterr().err
    assert "not a roguewatch recording" in err and str(f) in err
    assert cli(str(tmp_path / "missing.rwrec")) == 2
    assert "cannot open" in capsys.readouterr().err


def test_replay_truncated_recording(
    rec: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = rec.read_bytes()
    cut = tmp_path / "cut.rwrec"
    cut.write_bytes(data + b"\xc1")  # 0xc1 is never valid msgpack
    assert cli(str(cut), "--json") == 2
    captured = capsys.readouterr()
    assert "corrupt" in captured.err
    assert len(captured.out.splitlines()) == 2  # the alerts before the damage still print


def test_replay_bad_policy_and_bad_rules(
    rec: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "policy.yaml"
    bad.write_text("egress:\n  allow:\n    - 10.0.0.0/33\n")
    assert cli(str(rec), "--policy", str(bad)) == 2
    err = capsys.readouterr().err
    assert "bad policy" in err and "egress.allow[0]" in err

    d = tmp_path / "rules.d"
    d.mkdir()
    (d / "x.yaml").write_text("- rule: x\n  desc: x\n  condition: fd.nme = 1\n")
    assert cli(str(rec), "--rules", str(d)) == 2
    err = capsys.readouterr().err
    assert "bad rules" in err and f"{d / 'x.yaml'}:1:3: rule 'x': expected the key" in err


def session_start(policy: dict) -> dict:
    """The collector's `session` start event, as `record --policy` has it registered."""
    return {**BASE, "type": "session", "kind": "start", "ts": T0 - 1, "name": "agent",
            "root": 4242, "cgroup": "", "mode": "observe", "policy": policy}  # fmt: skip


def test_replay_uses_the_policy_recorded_with_the_session_unless_given_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recorded = {"egress_allow": ["10.1.0.0/16:443"], "protect": [], "mode": "observe",
                "lists": {}, "writable": None}  # fmt: skip
    rec = make_recording(
        tmp_path / "p.rwrec", [session_start(recorded), exec_ev(T0), connect_ev(T0 + 1000)]
    )
    assert cli(str(rec), "--json") == 0
    captured = capsys.readouterr()
    assert captured.out == ""  # 10.1.2.3:443 is in the recorded allowlist
    assert "the policy recorded with session 7" in captured.err

    assert cli(str(rec), "--policy", str(policy(tmp_path, "127.0.0.1/32")), "--json") == 0
    captured = capsys.readouterr()
    rules = [json.loads(x)["rule"] for x in captured.out.splitlines()]
    assert rules == ["egress_unauthorized_destination"]  # the given policy, not the recorded
    assert "recorded with" not in captured.err


def test_replay_of_a_recording_without_a_policy_uses_the_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rec = make_recording(tmp_path / "np.rwrec", [exec_ev(T0), connect_ev(T0 + 1000)])
    assert cli(str(rec), "--json") == 0
    captured = capsys.readouterr()
    rules = [json.loads(x)["rule"] for x in captured.out.splitlines()]
    assert rules == ["egress_unauthorized_destination"]
    assert "recorded with" not in captured.err
