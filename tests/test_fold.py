"""Repeats folded in the kernel (roguewatch.h, "Repeats folded"): identical records of one
thread become one event carrying `repeats`; nothing is lost, nothing vital is folded, and the
rules, the alerts and the console see the count."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from roguewatch.detect import ruleset
from roguewatch.detect.evaluator import Evaluator
from roguewatch.detect.proctable import ProcessTable
from roguewatch.outputs import render
from roguewatch.policy.policy import StaticPolicy

from tests.test_loss import Run, private_collector, run_python

pytestmark = pytest.mark.kernel


def opens(run: Run, path: str) -> list[dict]:
    return [e for e in run.of("open") if e.get("path") == path]


def calls(events: list[dict]) -> int:
    """The calls a list of events stands for: a folded one for its `repeats`, others for 1."""
    return sum(e.get("repeats", 1) for e in events)


def test_a_thread_that_opens_one_file_a_thousand_times_makes_one_event_and_its_count(
    tmp_path: Path,
) -> None:
    target = tmp_path / "same"
    code = (
        "import os\n"
        "for _ in range(1000):\n"
        f"    os.close(os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))\n"
    )
    with private_collector("--no-watch") as watcher:
        run = run_python(watcher, code)
        stats = watcher.control.request("stats")
    got = opens(run, str(target))
    assert calls(got) == 1000, [(e.get("repeats"), e["ts"]) for e in got]
    # the first occurrence came as itself, at once: an ordinary event, before any fold
    assert "repeats" not in got[0] and got[0]["ret"] >= 0
    folded = [e for e in got if "repeats" in e]
    assert folded, "nothing was folded"
    assert len(got) < 100, f"{len(got)} events for 1000 identical opens"
    for e in folded:
        # a copy of the event it repeats, with when the repeats were made
        assert e["open_flags"] == got[0]["open_flags"] and e["pid"] == run.pid
        assert e["first_ts"] <= e["last_ts"] == e["ts"]
        assert e["exec_id"] == got[0]["exec_id"]
    assert stats["folded"] >= sum(e["repeats"] for e in folded)
    assert sum(stats["lost_ring"].values()) == 0 and stats["lost_decode"] == 0, stats
    assert "repeated x" in render.human(folded[0])


def test_distinct_paths_are_never_folded(tmp_path: Path) -> None:
    # the same length and the same flags: only the strings differ
    code = (
        "import os\n"
        "for i in range(1000):\n"
        f"    os.close(os.open({str(tmp_path)!r} + f'/f{{i:04d}}', os.O_WRONLY | os.O_CREAT))\n"
    )
    with private_collector("--no-watch") as watcher:
        run = run_python(watcher, code)
    got = [e for e in run.of("open") if e.get("path", "").startswith(f"{tmp_path}/f")]
    assert len(got) == 1000 and not [e for e in got if "repeats" in e]
    assert len({e["path"] for e in got}) == 1000


def test_vital_and_unfoldable_types_are_never_folded() -> None:
    # fork/exec/exit in a loop, and setsid, whose failing records are identical
    code = (
        "import os, subprocess\n"
        "for _ in range(30):\n"
        "    subprocess.run(['/bin/true'])\n"
        "for _ in range(300):\n"
        "    try:\n"
        "        os.setsid()\n"
        "    except OSError:\n"
        "        pass\n"
    )
    with private_collector("--no-watch") as watcher:
        run = run_python(watcher, code)
    mine = [e for e in run.events if e.get("session") == run.sid]
    assert not [e for e in mine if "repeats" in e]
    execs = [e for e in run.of("exec") if e.get("filename") == "/bin/true"]
    assert len(execs) == 30
    assert len([e for e in run.of("fork") if e["pid"] == run.pid]) >= 30
    assert len([e for e in run.of("setsid") if e["pid"] == run.pid]) == 300


def test_a_different_record_flushes_the_fold_before_it(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    code = (
        "import os\n"
        "W = os.O_WRONLY | os.O_CREAT\n"
        f"for _ in range(50): os.close(os.open({str(a)!r}, W))\n"
        f"os.close(os.open({str(b)!r}, W))\n"
        f"for _ in range(50): os.close(os.open({str(a)!r}, W))\n"
    )
    with private_collector("--no-watch") as watcher:
        run = run_python(watcher, code)
    seq = [(e["path"], e.get("repeats", 1)) for e in run.of("open")
           if e.get("path") in (str(a), str(b))]  # fmt: skip
    i = seq.index((str(b), 1))
    before, after = seq[:i], seq[i + 1 :]
    # every repeat of the first run of opens came before the open of b, the rest after it
    assert [p for p, _ in before] == [str(a)] * len(before) and sum(n for _, n in before) == 50
    assert [p for p, _ in after] == [str(a)] * len(after) and sum(n for _, n in after) == 50
    assert len(before) < 50 and len(after) < 50, seq


def test_a_process_or_thread_that_exits_mid_fold_flushes_it(tmp_path: Path) -> None:
    main, side = tmp_path / "main", tmp_path / "side"
    code = (
        "import os, threading\n"
        "W = os.O_WRONLY | os.O_CREAT\n"
        "def side():\n"
        f"    for _ in range(200): os.close(os.open({str(side)!r}, W))\n"
        "t = threading.Thread(target=side)\n"
        "t.start(); t.join()\n"
        f"for _ in range(200): os.close(os.open({str(main)!r}, W))\n"
        "os._exit(0)\n"
    )
    with private_collector("--no-watch") as watcher:
        run = run_python(watcher, code)
    assert calls(opens(run, str(side))) == 200  # the thread ended, its process went on
    got = opens(run, str(main))
    assert calls(got) == 200
    mine = [e for e in run.events if e.get("session") == run.sid and e["pid"] == run.pid]
    exit_at = next(i for i, e in enumerate(mine) if e["type"] == "exit")
    assert all(mine.index(e) < exit_at for e in got), "repeats after the exit"


def test_a_rule_on_evt_repeats_matches_a_folded_event_and_its_alert_carries_the_count(
    tmp_path: Path,
) -> None:
    target = tmp_path / "loop"
    code = (
        "import os\n"
        f"for _ in range(500): os.close(os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT))\n"
    )
    with private_collector("--no-watch") as watcher:
        run = run_python(watcher, code)
    rules = ruleset.load_texts([("repeats.yaml", (
        "- rule: write_loop\n"
        "  desc: the same file opened for write again and again\n"
        "  condition: evt.type = open and evt.repeats > 10\n"
        "  output: '%fd.name opened %evt.repeats times'\n"
        "  severity: low\n"
        "  category: persistence\n"
    ))])  # fmt: skip
    out: list[dict] = []
    e = Evaluator(rules, ProcessTable(StaticPolicy()), out.append)
    got = opens(run, str(target))
    for ev in got:
        e.handle(ev)
    alerts = [a for a in out if a["rule"] == "write_loop"]
    big = [ev for ev in got if ev.get("repeats", 1) > 10]
    assert big and alerts, got
    assert alerts[0]["count"] == big[0]["repeats"] > 10
    assert alerts[0]["event"]["repeats"] == big[0]["repeats"]
    assert f"opened {big[0]['repeats']} times" in alerts[0]["message"]
    assert os.path.exists(target)
