"""Shared fixtures: a real collector with real probes, and real processes in real sessions.

Kernel tests need root. Outside CI they skip without it; in CI (CI=true) they fail, because a
kernel test that did not run proves nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from roguewatch.runtime import launcher

if TYPE_CHECKING:
    from tests.harness import Agent
from roguewatch.stream import bus

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PYTHON = sys.executable
# Where test sessions write their files (the snippets name it literally).
SCRATCH = "/tmp/rwtest"


def require(ok: object, why: str) -> None:
    """Skip when ``ok`` is false, except in CI (CI=true): there a test that did not run proves
    nothing, so it fails and says why."""
    if ok:
        return
    if IN_CI:
        pytest.fail(f"{why}, and CI=true: this test must run in CI")
    pytest.skip(why)


def require_root(why: str = "needs root to load BPF probes") -> None:
    require(os.geteuid() == 0, why)


@pytest.fixture(scope="session")
def collector() -> Iterator[launcher.Watcher]:
    """One private collector (probes loaded into the kernel) for the whole test run."""
    require_root()
    os.makedirs(SCRATCH, exist_ok=True)
    try:
        watcher = launcher.start_private_collector()
    except launcher.SessionError as exc:
        pytest.fail(f"the collector could not load its probes: {exc}")
    yield watcher
    watcher.close()


@dataclass
class Session:
    id: int
    pid: int
    status: int
    events: list[dict] = field(default_factory=list)

    def of_type(self, type_: str, **match: object) -> list[dict]:
        return [
            e
            for e in self.events
            if e["type"] == type_ and all(e.get(k) == v for k, v in match.items())
        ]

    def one(self, type_: str, **match: object) -> dict:
        found = self.of_type(type_, **match)
        assert found, f"no {type_} event matching {match}; got: " + "; ".join(
            f"{e['type']}:{e.get('path') or e.get('addr') or ''}" for e in self.events
        )
        return found[0]


class Stream:
    """A subscriber on the test collector's event stream."""

    def __init__(self, watcher: launcher.Watcher) -> None:
        self.watcher = watcher
        self.sub = bus.Subscriber(watcher.events)
        assert self.sub.wait_ready(5000), "no welcome from the event stream"

    def collect(self, until: Callable[[list[dict]], bool], timeout: float = 10.0,
                quiet: float = 0.3) -> list[dict]:  # fmt: skip
        """Events until ``until(events)`` holds and then ``quiet`` seconds pass with none."""
        got: list[dict] = []
        deadline = time.monotonic() + timeout
        done_at = None
        while time.monotonic() < deadline:
            batch = self.sub.recv_batch(50)
            if batch:
                got.extend(batch)
                if done_at is not None:
                    done_at = time.monotonic()
            if done_at is None and until(got):
                done_at = time.monotonic()
            if done_at is not None and time.monotonic() - done_at >= quiet:
                break
        return got

    def run(self, argv: list[str], timeout: float = 20.0, wait: bool = True) -> Session:
        """Run argv as a new session; return its events once its root has exited."""
        pid, sid = launcher.spawn_in_session(argv, launcher.register_with(self.watcher.control))
        status = 0
        if wait:
            _, status = os.waitpid(pid, 0)

        def root_exited(evs: list[dict]) -> bool:
            return any(e["type"] == "exit" and e["pid"] == pid for e in evs)

        evs = self.collect(root_exited, timeout)
        mine = [e for e in evs if e.get("session") == sid]
        return Session(sid, pid, launcher.exit_status(status), mine)

    def python(self, code: str, **kw: object) -> Session:
        """Run a Python snippet as a session (Debian's python3: no site import cost)."""
        return self.run(["/usr/bin/python3", "-S", "-c", textwrap.dedent(code)], **kw)

    def shell(self, script: str, **kw: object) -> Session:
        return self.run(["/bin/sh", "-c", script], **kw)

    def close(self) -> None:
        self.sub.close()


@pytest.fixture
def stream(collector: launcher.Watcher) -> Iterator[Stream]:
    s = Stream(collector)
    yield s
    s.close()


def sh(cmd: str) -> str:
    return subprocess.run(cmd, shell=True, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    """An agent run under `roguewatch run` (tests/harness.py); its leftovers are killed."""
    from tests.harness import Agent

    a = Agent(tmp_path)
    yield a
    for pid in a.leftovers():  # never leave a test's process behind, whatever happened
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
