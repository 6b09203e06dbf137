"""Budgets per session: one session's flood leaves the ring to the others.

While the collector is behind, a session over its budget of file (or socket) records has
the excess dropped in the kernel and counted as its own losses; the other sessions' records,
of the same kinds included, still arrive (probes/roguewatch.h, "Budgets per session")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from roguewatch.detect import ruleset
from roguewatch.detect.evaluator import Evaluator
from roguewatch.detect.proctable import ProcessTable
from roguewatch.runtime import launcher
from roguewatch.stream import bus

from tests.test_loss import _pulsed, private_collector

pytestmark = pytest.mark.kernel

RATE, BURST = 1000, 1000  # records a second per session and tier; the test's own budget
ROUNDS = 100


class Stream:
    """Everything the event stream carries, read on a thread of its own (a subscriber that
    stops reading for seconds would have its queue overflow, and miss events)."""

    def __init__(self, endpoint: str) -> None:
        self.sub = bus.Subscriber(endpoint)
        assert self.sub.wait_ready(5000), "the event stream did not answer"
        self.events: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.events += self.sub.recv_batch(100) or []

    def until_quiet(self, quiet_s: float = 2.0) -> list[dict]:
        n = -1
        while n != len(self.events):
            n = len(self.events)
            time.sleep(quiet_s)
        self._stop.set()
        self._thread.join()
        self.sub.close()
        return self.events


def _flooder(stop: Path, work: Path) -> str:
    """Session A: distinct write-opens (a path of 64 in turn: none folded) until told."""
    return (
        "import os\n"
        f"stop, d = {str(stop)!r}, {str(work)!r}\n"
        "i = 0\n"
        "while not (i % 2000 == 0 and os.path.exists(stop)):\n"
        "    os.close(os.open(f'{d}/a{i % 64}', os.O_WRONLY | os.O_CREAT, 0o600))\n"
        "    i += 1\n"
    )


def _quiet_session(work: Path) -> str:
    """Session B: 100 rounds of a write-open, a connect to a closed loopback port and a
    fork, each distinct from the one before (other paths, other addresses)."""
    return (
        "import os, socket, time\n"
        f"d = {str(work)!r}\n"
        f"for i in range({ROUNDS}):\n"
        "    os.close(os.open(f'{d}/b{i}', os.O_WRONLY | os.O_CREAT, 0o600))\n"
        "    s = socket.socket()\n"
        "    s.connect_ex((f'127.0.{i // 250}.{1 + i % 250}', 9))\n"
        "    s.close()\n"
        "    child = os.fork()\n"
        "    if child == 0:\n"
        "        os._exit(0)\n"
        "    os.waitpid(child, 0)\n"
        "    time.sleep(0.001)\n"
    )


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "roguewatch.cli.main", *args],
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_a_sessions_flood_is_dropped_over_its_budget_and_the_others_records_all_arrive(
    tmp_path: Path,
) -> None:
    cfg = tmp_path / "roguewatchd.yaml"
    cfg.write_text(f"session_budget_rate: {RATE}\nsession_budget_burst: {BURST}\n"
                   f"status_file: {tmp_path}/status.json\n")  # fmt: skip
    work = tmp_path / "work"
    work.mkdir()
    stop = tmp_path / "stop"
    # A ring of 8 pages, and the collector stopped 5 ms in every 10: the ring holds a
    # backlog however fast the machine is, as it does when a flood outruns the collector.
    with private_collector("--config", str(cfg), "--ringbuf-pages", "8", "--no-watch") as w:
        stream = Stream(w.events)
        register = launcher.register_with(w.control)
        with _pulsed(w.proc.pid if w.proc else 0):
            a_pid, a = launcher.spawn_in_session(
                ["/usr/bin/python3", "-S", "-c", _flooder(stop, work)], register
            )
            try:
                deadline = time.monotonic() + 60
                while not w.control.request("stats")["lost_budget"].get(f"{a:x}"):
                    assert time.monotonic() < deadline, "session A never went over its budget"
                    time.sleep(0.05)
                b_pid, b = launcher.spawn_in_session(
                    ["/usr/bin/python3", "-S", "-c", _quiet_session(work)], register
                )
                _, b_status = os.waitpid(b_pid, 0)
                # while A still floods: `sessions` and `status` show its losses
                listed = _cli("sessions", "--json", "--control", w.control.endpoint)
                status = _cli("status", "--config", str(cfg), "--control", w.control.endpoint)
            finally:
                stop.touch()
                os.waitpid(a_pid, 0)
        events = stream.until_quiet()
        stats = w.control.request("stats")

    assert b_status == 0
    mine = [e for e in events if e.get("session") == b]
    b_opens = [e for e in mine if e["type"] == "open" and e["path"].startswith(f"{work}/b")]
    assert len(b_opens) == ROUNDS, "B's opens were crowded out by A's flood"
    assert len([e for e in mine if e["type"] == "connect"]) == ROUNDS
    assert len([e for e in mine if e["type"] == "fork" and e["pid"] == b_pid]) == ROUNDS
    assert not any(e.get("repeats") for e in mine), "B's records are distinct: none folded"

    # A's excess was dropped in the kernel and counted as A's, never as B's
    over = stats["lost_budget"]
    assert over[f"{a:x}"]["files"] > 0 and f"{b:x}" not in over, over
    a_opens = len([e for e in events if e.get("session") == a and e["type"] == "open"])
    assert a_opens > 0, "A's records within its budget still arrive"
    assert stats["lost_ring"]["open"] >= over[f"{a:x}"]["files"], "counted among the losses"

    # announced with A's session id, and alerted with it
    reports = [e for e in events if e["type"] == "monitor" and e.get("kind") == "loss"
               and e.get("session") == a]  # fmt: skip
    assert reports and reports[-1]["lost_budget"] == over[f"{a:x}"]["files"], reports[-1:]
    assert "over its budget" in reports[-1]["detail"]
    alerts: list[dict] = []
    Evaluator(ruleset.load_rules(), ProcessTable(), alerts.append).handle(reports[-1])
    assert [(x["rule"], x["session"], x["category"]) for x in alerts] == [
        ("roguewatch_events_lost", f"{a:x}", "monitor")
    ]

    # `roguewatch sessions` and `roguewatch status` show A's losses
    assert listed.returncode == 0, listed.stderr
    by_id = {s["session"]: s for s in map(json.loads, listed.stdout.splitlines())}
    assert by_id[f"{a:x}"]["lost"] > 0 and by_id[f"{b:x}"]["lost"] == 0, by_id
    assert status.returncode == 1, (status.stdout, status.stderr)  # degraded: losses
    assert f"session {a:x}: " in status.stdout and "budgets:  1000 records/s" in status.stdout
