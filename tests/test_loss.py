"""Nothing is lost silently: a flooded ring buffer is counted and announced on the stream."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from roguewatch.runtime import launcher
from roguewatch.stream import bus

from tests.conftest import require_root

pytestmark = pytest.mark.kernel


@contextlib.contextmanager
def private_collector(*args: str) -> Iterator[launcher.Watcher]:
    """A collector of the test's own. Probes that do not load fail the test (never a skip)."""
    require_root()
    try:
        watcher = launcher.start_private_collector(list(args))
    except launcher.SessionError as exc:
        pytest.fail(f"the collector could not load its probes: {exc}")
    try:
        yield watcher
    finally:
        watcher.close()


@contextlib.contextmanager
def _pulsed(pid: int) -> Iterator[None]:
    """While the block runs, process ``pid`` is stopped 5 ms in every 10 (0: not at all)."""
    done = threading.Event()

    def pulse() -> None:
        while not done.is_set():
            os.kill(pid, signal.SIGSTOP)
            time.sleep(0.005)
            os.kill(pid, signal.SIGCONT)
            time.sleep(0.005)

    thread = threading.Thread(target=pulse, daemon=True)
    if pid:
        thread.start()
    try:
        yield
    finally:
        done.set()
        if pid:
            thread.join()
            os.kill(pid, signal.SIGCONT)


@dataclass
class Run:
    pid: int
    sid: int
    status: int
    events: list[dict]  # everything on the stream until it went quiet

    def of(self, type_: str) -> list[dict]:
        return [e for e in self.events if e.get("session") == self.sid and e["type"] == type_]

    def count(self, *types: str) -> dict[str, int]:
        """How many events of each type the session's process made."""
        c = Counter(e["type"] for e in self.events if e.get("session") == self.sid)
        return {t: c[t] for t in types}

    def loss_report(self) -> dict | None:
        """The last `monitor` event about losses."""
        found = [e for e in self.events if e["type"] == "monitor" and e.get("kind") == "loss"]
        return found[-1] if found else None


def run_python(
    watcher: launcher.Watcher, code: str, quiet_ms: int = 2500, flood: bool = False
) -> Run:
    """Run `code` as a new session of `watcher`; what the stream carried meanwhile.

    ``flood``: the collector is paused for 5 ms in every 10 while the agent runs, so that a
    flood fills the ring however busy the machine is (on a loaded host the agent may be
    slower than the collector, and the ring never fills)."""
    sub = bus.Subscriber(watcher.events)
    assert sub.wait_ready(5000)
    pid, sid = launcher.spawn_in_session(
        ["/usr/bin/python3", "-S", "-c", code], launcher.register_with(watcher.control)
    )
    with _pulsed(watcher.proc.pid if flood and watcher.proc else 0):
        _, status = os.waitpid(pid, 0)
    return Run(pid, sid, status, list(sub.events(timeout_ms=quiet_ms)))


def test_a_flooded_ring_buffer_is_counted_and_raised_as_a_monitor_event() -> None:
    # One page of ring buffer (about 28 records) cannot hold a tight loop of signals.
    with private_collector("--ringbuf-pages", "1") as watcher:
        # two targets in turn: no record is the same as the one before (none is folded)
        run = run_python(
            watcher,
            "import os\nt = (os.getpid(), os.getppid())\n"
            "for i in range(200000): os.kill(t[i & 1], 0)",
        )
        received = len(run.of("kill"))
        monitor = run.loss_report()
        lost = watcher.control.request("stats")["lost_ring"].get("kill", 0)
        assert lost > 0, "the flood did not overflow a one-page ring buffer"
        assert received + lost == 200000, "every event is either delivered or counted as lost"
        assert monitor is not None, "no monitor event announced the loss"
        assert monitor["lost_ring"]["kill"] == lost
        assert "ring buffer" in monitor["detail"]


def test_a_full_session_map_fails_closed_and_is_raised(tmp_path: Path) -> None:
    # A map of 16 tracked processes: a session that forks past it would have children nobody
    # tracks. The parent is killed in the kernel at the first fork that cannot be tracked.
    with private_collector("--max-procs", "16", "--no-watch") as watcher:
        forker = (
            "import os\n"
            "r, w = os.pipe()\n"
            "for _ in range(40):\n"
            "    if os.fork() == 0:\n"
            "        os.close(w); os.read(r, 1); os._exit(0)  # until the parent is gone\n"
        )
        run = run_python(watcher, forker)
        status = run.status
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == 9, status
        forks = [e for e in run.of("fork") if e["pid"] == run.pid]
        monitor = run.loss_report()
        untracked = [f for f in forks if "untracked" in f["flags"]]
        assert len(forks) < 40 and untracked, "the parent went on forking untracked children"
        assert "killed" in untracked[0]["flags"]
        assert monitor is not None and monitor["untracked_forks"] >= 1
        assert "could not be tracked" in monitor["detail"]
        stats = watcher.control.request("stats")
        assert stats["untracked_forks"] >= 1
        # `roguewatch status` counts them among the losses, in its total and its losses line
        cfg = tmp_path / "roguewatchd.yaml"
        cfg.write_text(f"status_file: {tmp_path}/status.json\n")
        shown = subprocess.run(
            [sys.executable, "-m", "roguewatch.cli.main", "status", "--config", str(cfg),
             "--control", watcher.control.endpoint],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert shown.returncode == 1, (shown.stdout, shown.stderr)
        lost = sum(stats["lost_ring"].values()) + stats["lost_pending"] + stats["lost_decode"]
        lost += stats["lost_bus"] + stats["untracked_forks"]
        lines = shown.stdout.splitlines()
        losses = next(x for x in lines if x.strip().startswith("losses:"))
        assert f"untracked forks {stats['untracked_forks']}" in losses, losses
        assert f"  degraded: {lost} lost (events and untracked forks)" in lines, shown.stdout


def test_a_steady_stream_is_published_in_batches_not_record_by_record() -> None:
    """The ring's fd is readable whenever a record is there: a collector that re-polled it
    after every drain would publish a handful of events per message at any rate, and pay
    the bus (and its subscribers) per message. While records keep coming it drains once a
    millisecond instead."""
    N = 10000
    with private_collector("--no-watch") as watcher:
        before = watcher.control.request("stats")
        # tens of thousands of tracked connects a second (to a closed loopback port)
        flood = (
            "import socket\nfor i in range(N):\n    s = socket.socket()\n"
            "    s.connect_ex((f'127.0.0.{1 + (i & 1)}', 9))\n    s.close()"
        ).replace("N", str(N))  # two destinations in turn: none is folded
        connects = len(run_python(watcher, flood, quiet_ms=1500).of("connect"))
        after = watcher.control.request("stats")
        assert connects == N, after
        batches = after["batches"] - before["batches"]
        assert connects / batches >= 20, f"{connects} events in {batches} messages"


def test_a_flood_of_opens_leaves_room_for_connects_and_signals() -> None:
    """An agent that floods the ring with opens must not crowd out what matters: from three
    quarters full the file bulk types are dropped and counted, and the connects and kills
    between them all arrive (without the shedding, 20 connects and 11 kills of 100 did)."""
    rounds = 100
    with private_collector("--ringbuf-pages", "4", "--no-watch") as watcher:
        run = run_python(
            watcher,
            flood=True,
            code="import os, signal, socket\n"
            f"for _ in range({rounds}):\n"
            "    for i in range(300):  # two flags in turn: none is folded\n"
            "        os.close(os.open('/dev/null', os.O_WRONLY | (i & 1) * os.O_APPEND))\n"
            "    s = socket.socket()\n"
            "    s.connect_ex(('127.0.0.1', 9))\n"
            "    s.close()\n"
            "    os.kill(os.getpid(), signal.SIGCONT)  # harmless, not a probe\n",
        )
        got = run.count("open", "connect", "kill")
        lost = watcher.control.request("stats")["lost_ring"]
        assert lost.get("open", 0) > 0, "the flood did not fill a 16 KiB ring"
        assert got["open"] + lost["open"] == rounds * 300, (got, lost)
        assert got["connect"] == rounds and "connect" not in lost, (got, lost)
        assert got["kill"] == rounds and "kill" not in lost, (got, lost)


def test_a_flood_of_connects_leaves_room_for_signals() -> None:
    """The network bulk types give way from seven eighths full: the last eighth is kept for
    processes and signals."""
    rounds = 100
    with private_collector("--ringbuf-pages", "4", "--no-watch") as watcher:
        run = run_python(
            watcher,
            flood=True,
            code="import os, signal, socket\n"
            f"for _ in range({rounds}):\n"
            "    for i in range(100):  # two destinations in turn: none is folded\n"
            "        s = socket.socket()\n"
            "        s.connect_ex((f'127.0.0.{1 + (i & 1)}', 9))\n"
            "        s.close()\n"
            "    os.kill(os.getpid(), signal.SIGCONT)  # harmless, not a probe\n",
        )
        got = run.count("connect", "kill")
        lost = watcher.control.request("stats")["lost_ring"]
        assert lost.get("connect", 0) > 0, "the flood did not fill a 16 KiB ring"
        assert got["connect"] + lost["connect"] == rounds * 100, (got, lost)
        assert got["kill"] == rounds and "kill" not in lost, (got, lost)


def test_a_flood_of_existence_probes_leaves_room_for_real_signals() -> None:
    """kill(pid, 0) only asks whether a process exists; a loop of them gives way with the file
    types, and the real signals between them all arrive."""
    rounds, probes = 100, 2000
    with private_collector("--ringbuf-pages", "4", "--no-watch") as watcher:
        code = (
            "import os, signal\n"
            "t = (os.getpid(), os.getppid())\n"
            f"for _ in range({rounds}):\n"
            f"    for i in range({probes}):  # two targets in turn: none is folded\n"
            "        os.kill(t[i & 1], 0)\n"
            "    os.kill(os.getpid(), signal.SIGCONT)\n"
        )
        by_signal = {0: 0, int(signal.SIGCONT): 0}
        for ev in run_python(watcher, code, flood=True).of("kill"):
            by_signal[ev["sig"]] += 1
        lost = watcher.control.request("stats")["lost_ring"].get("kill", 0)
        assert lost > 0, "the flood did not fill a 16 KiB ring"
        assert by_signal[0] + lost == rounds * probes, (by_signal, lost)
        assert by_signal[signal.SIGCONT] == rounds, (by_signal, lost)


def test_a_flood_of_signals_leaves_room_for_forks_and_exits() -> None:
    """Any type but the vital ones gives way from fifteen sixteenths full: a loop of signals
    cannot hide the processes an agent starts."""
    rounds = 50
    with private_collector("--ringbuf-pages", "8", "--no-watch") as watcher:
        code = (
            "import os, signal\n"
            f"for _ in range({rounds}):\n"
            "    for _ in range(3000):\n"
            "        os.kill(os.getpid(), signal.SIGCONT)\n"
            "    child = os.fork()\n"
            "    if child == 0:\n"
            "        os._exit(0)\n"
            "    os.waitpid(child, 0)\n"
        )
        got = run_python(watcher, code, flood=True).count("fork", "exit", "kill")
        lost = watcher.control.request("stats")["lost_ring"]
        assert lost.get("kill", 0) > 0, "the flood did not fill a 32 KiB ring"
        assert got["kill"] + lost["kill"] == rounds * 3000, (got, lost)
        assert got["fork"] == rounds and "fork" not in lost, (got, lost)
        assert got["exit"] >= rounds and "exit" not in lost, (got, lost)  # the root's too
