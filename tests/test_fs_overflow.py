"""An inotify queue overflow is a monitor event, and the rescan against the baselines
finds the change the overflow hid."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import pytest
from roguewatch.respond.baseline import Baselines
from roguewatch.runtime import launcher
from roguewatch.runtime.fileguard import FileGuard
from roguewatch.sensors.watchers import FsWatcher
from roguewatch.stream import bus, collector

from tests.conftest import require_root

QUEUED = "/proc/sys/fs/inotify/max_queued_events"


@pytest.mark.kernel
def test_an_inotify_overflow_is_raised_and_the_rescan_finds_the_change(tmp_path: Path) -> None:
    require_root()
    # A watched directory of this test's own (configuration `watch_extra`): a flood in
    # /etc/cron.d would be baselined, and then "restored" after our clean-up, by any other
    # roguewatch running on the host meanwhile.
    spool = tmp_path / "spool"
    spool.mkdir()
    cfg = tmp_path / "roguewatchd.yaml"
    cfg.write_text(f"watch_extra: [{spool}]\n")
    old = Path(QUEUED).read_text()
    Path(QUEUED).write_text("16")  # the limit is taken when the watcher's inotify is made
    try:
        watcher = launcher.start_private_collector(["--config", str(cfg)])
    finally:
        Path(QUEUED).write_text(old)
    flood = [str(spool / f"flood-{i}") for i in range(200)]
    try:
        while not watcher.control.request("stats")["baseline_ready"]:
            time.sleep(0.05)
        sub = bus.Subscriber(watcher.events)
        assert sub.wait_ready(5000)
        # The collector paused: nobody reads its inotify queue of 16 while we write 200
        # files, so the kernel must drop events and say so (IN_Q_OVERFLOW).
        os.kill(watcher.proc.pid, signal.SIGSTOP)
        try:
            for p in flood:
                with open(p, "w") as f:
                    f.write("x\n")
        finally:
            os.kill(watcher.proc.pid, signal.SIGCONT)
        overflow, rescanned = None, set()
        deadline = time.monotonic() + 15
        # Batch by batch, so the deadline holds even while events keep coming.
        while time.monotonic() < deadline and not (overflow and set(flood) & rescanned):
            for ev in sub.recv_batch(200) or ():
                if ev["type"] == "monitor" and ev.get("kind") == "fs_overflow":
                    overflow = ev
                if ev["type"] == "fs_change" and ev.get("change") == "rescan":
                    rescanned.add(ev["path"])
        assert overflow is not None, "no fs_overflow monitor event"
        assert "rescan" in overflow["detail"]
        assert set(flood) & rescanned, "the rescan did not report the files the overflow hid"
    finally:
        for p in flood:
            Path(p).unlink(missing_ok=True)
        watcher.close()


class SlowBaselines(Baselines):
    """Real baselines whose rescan takes a second (as ~1,300 files do)."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.starts: list[float] = []
        self.threads: set[str] = set()

    def rescan(self) -> list[str]:
        self.starts.append(time.monotonic())
        self.threads.add(threading.current_thread().name)
        time.sleep(1.0)
        return super().rescan()


def _bare_collector(tmp_path: Path, skip: tuple[str, ...]) -> tuple[Any, FsWatcher, Path]:
    """A Collector with only what _drain_fs uses (no probes): a real watcher, real baselines."""
    watched = tmp_path / "cron.d"
    watched.mkdir()
    (watched / "job").write_text("ok\n")
    (watched / "logs").mkdir()
    c = collector.Collector.__new__(collector.Collector)
    c.fs_queue = deque()
    c._wake_r, c._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    c.batch = []
    c.published = []
    c._stopping = False
    c._fs_rescanner = None

    def flush() -> None:
        c.published += c.batch
        c.batch = []

    c.flush = flush
    files = FileGuard.__new__(FileGuard)  # its watcher and baselines, without fanotify
    files.watcher = FsWatcher([str(watched)], c.fs_event)
    files.baselines = SlowBaselines(str(tmp_path / "state"))
    files.baselines.snapshot([str(watched)])
    files._rescan_skip = skip
    files._log_times = {}  # no logs baselined here
    c.files = files
    files.watcher.start()
    return c, files.watcher, watched


def test_the_rescan_after_an_overflow_runs_beside_the_loop(tmp_path: Path) -> None:
    """_drain_fs never runs the rescan itself (the loop must drain the ring every millisecond):
    a thread of its own does, one at a time and at most one start a second, and an overflow
    during a rescan is followed by exactly one more."""
    c, w, watched = _bare_collector(tmp_path, (str(tmp_path / "cron.d" / "logs"),))
    try:
        (watched / "job").write_text("evil\n")  # a change the overflow "hid"
        (watched / "logs" / "ours.log").write_text("x\n")  # skipped: our own logs
        w._kernel_overflow()
        t0 = time.monotonic()
        c._drain_fs()
        assert time.monotonic() - t0 < 0.2, "_drain_fs waited for the rescan"
        assert _until(lambda: c.files.baselines.starts, 1.0)
        # During the rescan: overflows, and the loop keeps draining (events still published).
        w._kernel_overflow()
        w._kernel_overflow()
        for _ in range(20):
            t0 = time.monotonic()
            c._drain_fs()
            assert time.monotonic() - t0 < 0.1
            time.sleep(0.02)
        assert any(e["type"] == "monitor" and e["kind"] == "fs_overflow" for e in c.published)

        def rescans() -> list[dict]:
            c._drain_fs()
            return [e for e in c.published if e.get("change") == "rescan"]

        assert _until(lambda: len(rescans()) >= 2, 5.0), c.published
        assert _until(lambda: len(c.files.baselines.starts) == 2, 3.0)
        time.sleep(2.5)
        c._drain_fs()
        starts = c.files.baselines.starts
        assert len(starts) == 2, "three overflows, two of them during a rescan: two rescans"
        assert starts[1] - starts[0] >= 1.0
        assert c.files.baselines.threads == {"fs-rescan"}
        ev = rescans()[0]
        assert ev == {
            "type": "fs_change", "ts": ev["ts"], "session": 0, "pid": 0, "tid": 0, "ppid": 0,
            "uid": 0, "gid": 0, "comm": "", "ret": 0, "flags": [], "exec_id": "",
            "pexec_id": "", "exe": "", "path": str(watched / "job"), "source": "",
            "change": "rescan", "writer": "unknown",
        }  # fmt: skip
        assert {e["path"] for e in rescans()} == {str(watched / "job")}
        assert not w.rescan_needed
    finally:
        c._stopping = True
        w.stop()
        os.close(c._wake_r)
        os.close(c._wake_w)


def test_a_restore_is_not_held_up_by_a_rescan(tmp_path: Path) -> None:
    """Baselines.rescan takes its lock entry by entry: a restore asked for meanwhile is done
    while the rescan goes on."""
    d = tmp_path / "cron.d"
    d.mkdir()
    for i in range(50):
        (d / f"job{i}").write_text("ok\n")
    b = Baselines(str(tmp_path / "state"))
    b.snapshot([str(d)])
    (d / "job0").write_text("evil\n")
    slow = b._state

    def slow_state(*a: Any, **kw: Any) -> dict:
        time.sleep(0.04)
        return slow(*a, **kw)

    b._state = slow_state  # a 2 s rescan
    found: list[list[str]] = []
    t = threading.Thread(target=lambda: found.append(b.rescan()))
    t.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    assert b.restore(str(d / "job0")).startswith("restored")
    assert time.monotonic() - t0 < 0.5, "the restore waited for the rescan"
    assert t.is_alive()
    t.join(10)
    assert (d / "job0").read_text() == "ok\n"


def _until(pred: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return bool(pred())
