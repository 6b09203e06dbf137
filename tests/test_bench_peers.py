"""bench/peers.py's counting and arithmetic, and loadgen's create storm (no figures: the
bench measures; these check that what it counts and divides is what it says)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import peers  # noqa: E402


def test_loadgen_create_storm_makes_one_new_file_per_call(tmp_path: Path) -> None:
    if not shutil.which("gcc"):
        pytest.skip("no C compiler")
    exe = tmp_path / "loadgen"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(BENCH / "loadgen.c")], check=True)
    d = tmp_path / "files"
    d.mkdir()
    run = subprocess.run([str(exe), "storm", "create", "250", str(d)], capture_output=True)
    out = json.loads(run.stdout)
    assert (out["ok"], out["failed"]) == (250, 0)
    files = sorted(d.iterdir())
    assert len(files) == 250
    assert {f.stat().st_size for f in files} == {64}
    # O_EXCL: a second storm into the same directory creates nothing and says so.
    again = json.loads(subprocess.run([str(exe), "storm", "create", "10", str(d)],
                                      capture_output=True).stdout)  # fmt: skip
    assert (again["ok"], again["failed"]) == (0, 10)


def test_audit_log_events_are_our_keys_syscall_records(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_text(
        'type=SYSCALL msg=audit(1.0:1): syscall=59 comm="true" key="rwbench_exec"\n'
        "type=EXECVE msg=audit(1.0:1): argc=1 a0=true\n"
        'type=SYSCALL msg=audit(1.0:2): syscall=42 key="rwbench_connect"\x1dARCH=x86_64\n'
        "type=SOCKADDR msg=audit(1.0:2): saddr=0200\n"
        'type=SYSCALL msg=audit(1.0:3): syscall=257 key="rwbench_open"\n'
        'type=SYSCALL msg=audit(1.0:4): syscall=257 key="someone_elses"\n'
        "type=DAEMON_START msg=audit(1.0:5): op=start\n"
    )
    records, by_type = peers.count_audit_log(log)
    assert records == 7
    assert by_type == {"exec": 1, "connect": 1, "open": 1}
    assert peers.count_audit_log(tmp_path / "missing") == (0, dict.fromkeys(by_type, 0))


def test_bpftrace_lines_and_lost_events_are_counted(tmp_path: Path) -> None:
    bt = peers.Bpftrace(tmp_path)
    bt.out.write_text(
        "Attaching 5 probes...\n"
        "exec 10 sh /bin/true\nconnect 11 loadgen 127.0.0.1:1\nopen 12 sh /tmp/x\n"
        "open 12 sh /tmp/y\n\nLost 7 events\n"
    )
    bt.err.write_text("Lost 3 events\n")
    got = bt.stop()
    assert got == {"seen": 4, "seen_by_type": {"exec": 1, "connect": 1, "open": 2}, "lost": 10}


def _block(i: int, cfg: str, wall: float, seen: int, lost: int) -> dict:
    runs = {w: {"wall_s": wall, "cpu_s": wall / 2, "other_pct": 5.0} for w in peers.WORKLOADS}
    return {"block": i, "config": cfg, "runs": runs, "monitor_cpu_s": 1.0,
            "events": {"seen": seen, "lost": lost}}  # fmt: skip


def test_ratios_are_medians_over_blocks_and_losses_add_up() -> None:
    blocks = []
    for i, (base, audited) in enumerate([(1.0, 3.0), (1.2, 9.0), (0.8, 2.0)]):
        blocks += [_block(i, "unmonitored", base, 0, 0), _block(i, "auditd", audited, 10, i)]
        blocks += [_block(i, c, base, 0, 0) for c in peers.CONFIGS[2:]]
    s = peers.summarise({"blocks": blocks})
    # medians 1.0 and 3.0: an outlier block (9.0) does not move the ratio
    assert s["auditd"]["ratio"]["connect"] == 3.0
    assert s["auditd"]["cpu_ratio"]["create"] == 3.0
    assert s["auditd"]["events_lost_all_blocks"] == 0 + 1 + 2
    assert s["auditd"]["events_seen_per_block_median"] == 10
    md = peers.table(s, 3)
    assert "| auditd | every process" in md and "3.00x" in md
