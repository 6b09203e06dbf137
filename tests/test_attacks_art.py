"""The Atomic Red Team adapter (bench/attacks/art.py) on a small atomics tree of our own: the
Linux sh/bash tests of the chosen techniques become scenarios with their input defaults
filled in; every other test is skipped with its reason (executor, FreeBSD, the Internet,
host-wide state, an unmet prerequisite)."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench" / "attacks"))

import art


def test_tests_become_scenarios_or_are_skipped_with_a_reason(tmp_path: Path) -> None:
    def test(name, command, executor="sh", platforms=("linux",), **extra):
        return {"name": name, "supported_platforms": list(platforms),
                "executor": {"name": executor, "command": command}, **extra}  # fmt: skip

    docs = {
        "T1053.003": [
            test(
                "cron file",
                "echo '#{line}' > /etc/cron.d/#{name}",
                input_arguments={
                    "line": {"default": "* * * * * root true"},
                    "name": {"default": "evil"},
                },
            ),
            test("powershell one", "Get-Thing", executor="powershell"),
            test("windows only", "x", platforms=("windows",)),
            test("cron on FreeBSD", "echo x > /etc/cron.d/y"),
            test("fetch it", "curl -o /tmp/x http://example.com/x"),
        ],
        "T1685.004": [test("audit off", "auditctl -e 0")],
        "T1070.006": [
            test(
                "needs a tool",
                "frob /tmp/x",
                dependencies=[
                    {
                        "description": "frob is installed",
                        "prereq_command": "false",
                        "get_prereq_command": "apt-get install frob",
                    }
                ],
            ),
            test(
                "stomp",
                "touch -d 2020-01-01 #{file}",
                input_arguments={"file": {"type": "path", "default": "/var/log/x.log"}},
            ),
        ],
        "T1003": [test("credential dumping, not chosen", "cat /etc/shadow")],
    }
    for tid, tests in docs.items():
        (tmp_path / tid).mkdir()
        (tmp_path / tid / f"{tid}.yaml").write_text(
            yaml.safe_dump({"attack_technique": tid, "atomic_tests": tests})
        )
    scenarios, skipped = art.load(str(tmp_path))
    by_name = {s.source: s for s in scenarios}
    assert sorted(by_name) == ["art:T1053.003#1", "art:T1070.006#2"]
    cron = by_name["art:T1053.003#1"]
    assert cron.script == "echo '* * * * * root true' > /etc/cron.d/evil"
    assert cron.category == "persistence" and cron.shell == "sh" and cron.trees
    stomp = by_name["art:T1070.006#2"]
    assert stomp.category == "oversight_tampering" and stomp.files == ("/var/log/x.log",)
    why = {s["id"]: s["why"] for s in skipped}
    assert why["T1053.003#2"] == "executor powershell"
    assert why["T1053.003#4"] == "FreeBSD-only"
    assert "Internet" in why["T1053.003#5"]
    assert "auditctl" in why["T1685.004#1"]
    assert why["T1070.006#1"].startswith("prerequisite not met (frob is installed)")
    assert "T1053.003#3" not in why  # (not a Linux test: not listed at all)
