"""Nothing is lost silently: a flooded ring buffer is counted and announced on the stream."""

from __future__ import annotations

import os
import signal

import pytest
from roguewatch import bus, sessions

from tests.conftest import require_root

pytestmark = pytest.mark.kernel


def test_a_flooded_ring_buffer_is_counted_and_raised_as_a_monitor_event() -> None:
    require_root()
    # One page of ring buffer (about 28 records) cannot hold a tight loop of signals.
    try:
        watcher = sessions.start_private_collector(["--ringbuf-pages", "1"])
    except sessions.SessionError as exc:
        pytest.fail(f"the collector could not load its probes: {exc}")
    try:
        sub = bus.Subscriber(watcher.events)
        assert sub.wait_ready(5000)
        flood = "import os\nfor _ in range(200000): os.kill(os.getpid(), 0)"
        pid, sid = sessions.spawn_in_session(
            ["/usr/bin/python3", "-S", "-c", flood], sessions.register_with(watcher.control)
        )
        os.waitpid(pid, 0)
        received = 0
        monitor = None
        for ev in sub.events(timeout_ms=2500):
            if ev.get("session") == sid and ev["type"] == "kill":
                received += 1
            if ev["type"] == "monitor" and ev.get("kind") == "loss":
                monitor = ev
        stats = watcher.control.request("stats")
        lost = stats["lost_ring"].get("kill", 0)
        assert lost > 0, "the flood did not overflow a one-page ring buffer"
        assert received + lost == 200000, "every event is either delivered or counted as lost"
        assert monitor is not None, "no monitor event announced the loss"
        assert monitor["lost_ring"]["kill"] == lost
        assert "ring buffer" in monitor["detail"]
    finally:
        watcher.close()


def test_a_full_session_map_fails_closed_and_is_raised() -> None:
    require_root()
    # A map of 16 tracked processes: a session that forks past it would have children nobody
    # tracks. The parent is killed in the kernel at the first fork that cannot be tracked.
    try:
        watcher = sessions.start_private_collector(["--max-procs", "16", "--no-watch"])
    except sessions.SessionError as exc:
        pytest.fail(f"the collector could not load its probes: {exc}")
    try:
        sub = bus.Subscriber(watcher.events)
        assert sub.wait_ready(5000)
        forker = (
            "import os\n"
            "r, w = os.pipe()\n"
            "for _ in range(40):\n"
            "    if os.fork() == 0:\n"
            "        os.close(w); os.read(r, 1); os._exit(0)  # until the parent is gone\n"
        )
        pid, sid = sessions.spawn_in_session(
            ["/usr/bin/python3", "-S", "-c", forker], sessions.register_with(watcher.control)
        )
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == 9, status
        forks, monitor = [], None
        for ev in sub.events(timeout_ms=2500):
            if ev.get("session") == sid and ev["type"] == "fork" and ev["pid"] == pid:
                forks.append(ev)
            if ev["type"] == "monitor" and ev.get("kind") == "loss":
                monitor = ev
        untracked = [f for f in forks if "untracked" in f["flags"]]
        assert len(forks) < 40 and untracked, "the parent went on forking untracked children"
        assert "killed" in untracked[0]["flags"]
        assert monitor is not None and monitor["untracked_forks"] >= 1
        assert "could not be tracked" in monitor["detail"]
        assert watcher.control.request("stats")["untracked_forks"] >= 1
    finally:
        watcher.close()


def test_a_steady_stream_is_published_in_batches_not_record_by_record() -> None:
    """The ring's fd is readable whenever a record is there: a collector that re-polled it
    after every drain would publish a handful of events per message at any rate, and pay
    the bus (and its subscribers) per message. While records keep coming it drains once a
    millisecond instead."""
    require_root()
    N = 10000
    try:
        watcher = sessions.start_private_collector(["--no-watch"])
    except sessions.SessionError as exc:
        pytest.fail(f"the collector could not load its probes: {exc}")
    try:
        sub = bus.Subscriber(watcher.events)
        assert sub.wait_ready(5000)
        before = watcher.control.request("stats")
        # tens of thousands of tracked connects a second (to a closed loopback port)
        flood = (
            "import socket\nfor _ in range(N):\n    s = socket.socket()\n"
            "    s.connect_ex(('127.0.0.1', 9))\n    s.close()"
        ).replace("N", str(N))
        pid, sid = sessions.spawn_in_session(
            ["/usr/bin/python3", "-S", "-c", flood], sessions.register_with(watcher.control)
        )
        os.waitpid(pid, 0)
        connects = sum(1 for ev in sub.events(timeout_ms=1500)
                       if ev.get("session") == sid and ev["type"] == "connect")  # fmt: skip
        after = watcher.control.request("stats")
        assert connects == N, after
        batches = after["batches"] - before["batches"]
        assert connects / batches >= 20, f"{connects} events in {batches} messages"
    finally:
        watcher.close()


def _flood_in_session(watcher: sessions.Watcher, code: str, types: tuple[str, ...]) -> tuple:
    sub = bus.Subscriber(watcher.events)
    assert sub.wait_ready(5000)
    pid, sid = sessions.spawn_in_session(
        ["/usr/bin/python3", "-S", "-c", code], sessions.register_with(watcher.control)
    )
    os.waitpid(pid, 0)
    got = dict.fromkeys(types, 0)
    for ev in sub.events(timeout_ms=2500):
        if ev.get("session") == sid and ev["type"] in got:
            got[ev["type"]] += 1
    return got, watcher.control.request("stats")["lost_ring"]


def test_a_flood_of_opens_leaves_room_for_connects_and_signals() -> None:
    """An agent that floods the ring with opens must not crowd out what matters: from three
    quarters full the file bulk types are dropped and counted, and the connects and kills
    between them all arrive (without the shedding, 20 connects and 11 kills of 100 did)."""
    require_root()
    try:
        watcher = sessions.start_private_collector(["--ringbuf-pages", "4", "--no-watch"])
    except sessions.SessionError as exc:
        pytest.fail(f"the collector could not load its probes: {exc}")
    try:
        rounds = 100
        got, lost = _flood_in_session(
            watcher,
            "import os, signal, socket\n"
            f"for _ in range({rounds}):\n"
            "    for _ in range(300):\n"
            "        os.close(os.open('/dev/null', os.O_WRONLY))\n"
            "    s = socket.socket()\n"
            "    s.connect_ex(('127.0.0.1', 9))\n"
            "    s.close()\n"
            "    os.kill(os.getpid(), signal.SIGCONT)  # harmless, not a probe\n",
            ("open", "connect", "kill"),
        )
        assert lost.get("open", 0) > 0, "the flood did not fill a 16 KiB ring"
        assert got["open"] + lost["open"] == rounds * 300, (got, lost)
        assert got["connect"] == rounds and "connect" not in lost, (got, lost)
        assert got["kill"] == rounds and "kill" not in lost, (got, lost)
    finally:
        watcher.close()


def test_a_flood_of_connects_leaves_room_for_signals() -> None:
    """The network bulk types give way from seven eighths full: the last eighth is kept for
    processes and signals."""
    require_root()
    try:
        watcher = sessions.start_private_collector(["--ringbuf-pages", "4", "--no-watch"])
    except sessions.SessionError as exc:
        pytest.fail(f"the collector could not load its probes: {exc}")
    try:
        rounds = 100
        got, lost = _flood_in_session(
            watcher,
            "import os, signal, socket\n"
            f"for _ in range({rounds}):\n"
            "    for _ in range(100):\n"
            "        s = socket.socket()\n"
            "        s.connect_ex(('127.0.0.1', 9))\n"
            "        s.close()\n"
            "    os.kill(os.getpid(), signal.SIGCONT)  # harmless, not a probe\n",
            ("connect", "kill"),
        )
        assert lost.get("connect", 0) > 0, "the flood did not fill a 16 KiB ring"
        assert got["connect"] + lost["connect"] == rounds * 100, (got, lost)
        assert got["kill"] == rounds and "kill" not in lost, (got, lost)
    finally:
        watcher.close()


def test_a_flood_of_existence_probes_leaves_room_for_real_signals() -> None:
    """kill(pid, 0) only asks whether a process exists; a loop of them gives way with the file
    types, and the real signals between them all arrive."""
    require_root()
    try:
        watcher = sessions.start_private_collector(["--ringbuf-pages", "4", "--no-watch"])
    except sessions.SessionError as exc:
        pytest.fail(f"the collector could not load its probes: {exc}")
    try:
        sub = bus.Subscriber(watcher.events)
        assert sub.wait_ready(5000)
        rounds, probes = 100, 2000
        code = (
            "import os, signal\n"
            f"for _ in range({rounds}):\n"
            f"    for _ in range({probes}):\n"
            "        os.kill(os.getpid(), 0)\n"
            "    os.kill(os.getpid(), signal.SIGCONT)\n"
        )
        pid, sid = sessions.spawn_in_session(
            ["/usr/bin/python3", "-S", "-c", code], sessions.register_with(watcher.control)
        )
        os.waitpid(pid, 0)
        by_signal = {0: 0, int(signal.SIGCONT): 0}
        for ev in sub.events(timeout_ms=2500):
            if ev.get("session") == sid and ev["type"] == "kill":
                by_signal[ev["sig"]] += 1
        lost = watcher.control.request("stats")["lost_ring"].get("kill", 0)
        assert lost > 0, "the flood did not fill a 16 KiB ring"
        assert by_signal[0] + lost == rounds * probes, (by_signal, lost)
        assert by_signal[signal.SIGCONT] == rounds, (by_signal, lost)
    finally:
        watcher.close()


def test_a_flood_of_signals_leaves_room_for_forks_and_exits() -> None:
    """Any type but the vital ones gives way from fifteen sixteenths full: a loop of signals
    cannot hide the processes an agent starts."""
    require_root()
    try:
        watcher = sessions.start_private_collector(["--ringbuf-pages", "8", "--no-watch"])
    except sessions.SessionError as exc:
        pytest.fail(f"the collector could not load its probes: {exc}")
    try:
        sub = bus.Subscriber(watcher.events)
        assert sub.wait_ready(5000)
        rounds = 50
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
        pid, sid = sessions.spawn_in_session(
            ["/usr/bin/python3", "-S", "-c", code], sessions.register_with(watcher.control)
        )
        os.waitpid(pid, 0)
        got = {"fork": 0, "exit": 0, "kill": 0}
        for ev in sub.events(timeout_ms=2500):
            if ev.get("session") == sid and ev["type"] in got:
                got[ev["type"]] += 1
        lost = watcher.control.request("stats")["lost_ring"]
        assert lost.get("kill", 0) > 0, "the flood did not fill a 32 KiB ring"
        assert got["kill"] + lost["kill"] == rounds * 3000, (got, lost)
        assert got["fork"] == rounds and "fork" not in lost, (got, lost)
        assert got["exit"] >= rounds and "exit" not in lost, (got, lost)  # the root's too
    finally:
        watcher.close()
