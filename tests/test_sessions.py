"""Sessions from the outside: the launcher's components (their stderr never fills up and
blocks them), and the operator's `sessions`, `kill` and `thaw` when things go wrong."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator

import msgpack
import pytest
import zmq
from roguewatch.core import paths
from roguewatch.respond import cgroups
from roguewatch.runtime import components, launcher

from tests.conftest import require_root


def test_a_component_that_logs_a_lot_after_start_is_never_blocked(capfd) -> None:
    # 1 MiB of log lines through a pipe of 64 KiB: without a reader the writer would block
    # for good (a private collector or evaluator that an agent made log would stop).
    code = (
        "import sys\n"
        "for i in range(16384): sys.stderr.write('x' * 63 + '\\n')\n"
        "sys.stderr.flush(); print('done', flush=True)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    components.forward_stderr(proc, "component")
    assert proc.wait(timeout=30) == 0  # it could exit: its stderr was drained
    assert proc.stdout is not None and proc.stdout.read() == b"done\n"
    assert "roguewatch component: " + "x" * 63 in capfd.readouterr().err


# --- `roguewatch sessions`, `kill`, `thaw`: every failure a message and exit status 2 -------

CLI = [sys.executable, "-m", "roguewatch.cli.main"]
NO_SERVICE = "ipc:///nonexistent/roguewatch-test/control.sock"  # only private collectors


def cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *argv], capture_output=True, text=True, timeout=60)


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


@pytest.mark.kernel
def test_thaw_and_kill_of_a_session_whose_cgroup_vanished(
    collector: launcher.Watcher, sleeper: subprocess.Popen
) -> None:
    cg = cgroups.SessionCgroup.create(f"rwtest-vanished-{os.getpid()}")
    sid = collector.control.request("register", pid=sleeper.pid, name="vanishing",
                                    cgroup=cg.path, mode="observe")["session"]  # fmt: skip
    cg.remove()  # gone, as after a crash or a cleanup that came too early
    try:
        thaw = cli("thaw", f"{sid:x}", "--control", collector.control.endpoint)
        assert thaw.returncode == 2, (thaw.stdout, thaw.stderr)
        assert f"{cg.path}" in thaw.stderr and "Traceback" not in thaw.stderr, thaw.stderr
        # kill still ends what the collector tracks, and verifies it
        kill = cli("kill", f"{sid:x}", "--grace", "1", "--control", collector.control.endpoint)
        assert kill.returncode == 0, (kill.stdout, kill.stderr)
        assert kill.stdout.strip().endswith("1 processes ended, 0 survivors"), kill.stdout
        assert sleeper.wait(timeout=5) == -signal.SIGTERM
    finally:
        collector.control.request("release", session=sid)


class SilentCollector:
    """A collector's control socket (among the private ones) that answers `ping` and one
    `sessions`, then never again: a collector hung in the middle of a command."""

    def __init__(self, session: dict) -> None:
        self.dir = tempfile.mkdtemp(prefix="roguewatch-rwtest-", dir=paths.PRIVATE_RUN)
        self.endpoint = f"ipc://{self.dir}/control.sock"
        self.sock = zmq.Context.instance().socket(zmq.REP)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(self.endpoint)
        self.session = session
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        listings = 0
        while not self.stop.is_set():
            if not self.sock.poll(50):
                continue
            op = msgpack.unpackb(self.sock.recv(), raw=False)["op"]
            if op == "sessions":
                listings += 1
                if listings > 1:
                    self.stop.wait()  # hung: never answers again
                    return
                self.sock.send(msgpack.packb({"ok": True, "sessions": [self.session]}))
            else:
                self.sock.send(msgpack.packb({"ok": True}))

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close(0)
        shutil.rmtree(self.dir, ignore_errors=True)


def test_kill_when_the_collector_stops_answering_mid_command(sleeper: subprocess.Popen) -> None:
    require_root()
    silent = SilentCollector({"session": "5eed", "name": "hung", "root": sleeper.pid,
                              "pids": [sleeper.pid], "cgroup": "", "mode": "enforce"})  # fmt: skip
    try:
        kill = cli("kill", "5eed", "--grace", "1", "--control", NO_SERVICE)
    finally:
        silent.close()
    assert kill.returncode == 2, (kill.stdout, kill.stderr)
    assert "stopped answering" in kill.stderr and "Traceback" not in kill.stderr, kill.stderr
    assert sleeper.wait(timeout=5) == -signal.SIGTERM  # what was known was still ended
