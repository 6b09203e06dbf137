"""The enforcer's kills on real processes: through a pidfd, only the offender as of its event,
never roguewatch itself. (No probes: the process table is a stand-in.)"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest
from roguewatch.core import procfs
from roguewatch.respond import enforcer
from roguewatch.respond.enforcer import Enforcer, SessionInfo, send_kill

started_ns = procfs.started_wall_ns

SID = 0x5E55


class Table:
    """Every pid is in session SID, the way the evaluator's table answers for its own."""

    procs: dict = {}

    def in_session(self, pid: int, sid: int) -> bool:
        return sid == SID


@pytest.fixture
def victim() -> Iterator[subprocess.Popen]:
    p = subprocess.Popen(["sleep", "60"])
    yield p
    if p.poll() is None:
        p.kill()
    p.wait()


def dead_by_sigkill(p: subprocess.Popen) -> bool:
    return p.wait(10) == -signal.SIGKILL


def test_started_ns_is_when_the_process_started(victim: subprocess.Popen) -> None:
    before = time.time_ns()
    p = subprocess.Popen(["sleep", "60"])
    try:
        start = started_ns(p.pid)
        assert start is not None
        assert before - 2 * enforcer.START_SLACK_NS < start < time.time_ns() + procfs.TICK_NS
    finally:
        p.kill()
        p.wait()
    assert started_ns(p.pid) is None  # reaped


def test_send_kill_kills_and_says_when_the_process_is_gone(victim: subprocess.Popen) -> None:
    assert send_kill(victim.pid, time.time_ns())
    assert dead_by_sigkill(victim)
    assert not send_kill(victim.pid)  # reaped: nobody to kill


def test_a_process_started_after_the_event_is_not_the_offender(victim: subprocess.Popen) -> None:
    event_ts = started_ns(victim.pid) - 10 * enforcer.START_SLACK_NS
    assert not send_kill(victim.pid, event_ts)  # the pid was reused since: leave it alone
    time.sleep(0.05)
    assert victim.poll() is None


def test_kill_process_kills_the_offender_of_a_real_event(victim: subprocess.Popen) -> None:
    enf = Enforcer(Table())
    enf.sessions[SID] = SessionInfo(SID)
    ev = {"type": "open", "session": SID, "pid": victim.pid, "ts": time.time_ns()}
    assert enf.act("kill_process", ev) == f"process {victim.pid} killed"
    assert dead_by_sigkill(victim) and enf.killed == 1
    assert enf.act("kill_process", ev) == f"process {victim.pid} already gone"


def test_a_reused_pid_is_reported_gone_and_left_alive(victim: subprocess.Popen) -> None:
    enf = Enforcer(Table())
    ts = started_ns(victim.pid) - 10 * enforcer.START_SLACK_NS
    ev = {"type": "open", "session": SID, "pid": victim.pid, "ts": ts}
    assert enf.act("kill_process", ev) == f"process {victim.pid} already gone"
    assert enf.act("kill_tree", ev) == "0 processes killed, 1 already gone"
    time.sleep(0.05)
    assert victim.poll() is None and enf.killed == 0


def test_never_itself_nor_pid_1_nor_in_observe_mode(victim: subprocess.Popen) -> None:
    enf = Enforcer(Table(), own_pids={victim.pid})
    now = time.time_ns()
    for pid in (os.getpid(), 1, victim.pid):
        ev = {"type": "open", "session": SID, "pid": pid, "ts": now}
        assert enf.act("kill_process", ev) == f"process {pid} already gone"
    enf2 = Enforcer(Table())
    enf2.sessions[SID] = SessionInfo(SID, mode="observe")
    ev = {"type": "open", "session": SID, "pid": victim.pid, "ts": now}
    assert enf2.act("kill_process", ev) == enforcer.OBSERVE
    time.sleep(0.05)
    assert victim.poll() is None


def test_an_event_without_a_time_still_kills(victim: subprocess.Popen) -> None:
    enf = Enforcer(Table())
    ev = {"type": "session_end", "session": SID, "pid": victim.pid}
    assert enf.act("kill_process", ev) == f"process {victim.pid} killed"
    assert dead_by_sigkill(victim)


def test_a_restore_starts_once_the_killed_writer_is_gone(victim: subprocess.Popen) -> None:
    seen: list[str] = []

    def restorer(path: str, who: dict) -> str:
        with open(f"/proc/{victim.pid}/stat") as f:  # our child: a zombie until we reap it
            seen.append(f.read().rsplit(")", 1)[1].split()[0])
        return f"restored {path}"

    enf = Enforcer(Table(), restorer=restorer)
    ev = {"type": "open", "session": SID, "pid": victim.pid, "ts": time.time_ns(),
          "path": "/etc/cron.d/x"}  # fmt: skip
    out = enf.act("restore", ev)
    assert out == f"writer {victim.pid} killed; restored /etc/cron.d/x", out
    assert seen == ["Z"] and dead_by_sigkill(victim)


def test_without_a_pidfd_the_kill_still_happens(
    victim: subprocess.Popen, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_pidfd(pid: int) -> int:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    assert send_kill(victim.pid, time.time_ns())
    assert dead_by_sigkill(victim)
