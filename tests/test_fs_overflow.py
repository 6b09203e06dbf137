"""An inotify queue overflow is a monitor event, and the rescan against the baselines
finds the change the overflow hid."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from roguewatch import bus, sessions

from tests.conftest import require_root

pytestmark = pytest.mark.kernel

QUEUED = "/proc/sys/fs/inotify/max_queued_events"


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
        watcher = sessions.start_private_collector(["--config", str(cfg)])
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
