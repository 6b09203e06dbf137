"""The harness of the tests that run agents under `roguewatch run`: an agent is a Python
snippet (with ``say(**kw)`` to report what it saw) run as a real session of the real CLI, and
what came out (exit status, the agent's words, every alert, the summary) is a ``Result``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import require

RUN = [sys.executable, "-m", "roguewatch.cli.main", "run"]
AGENT_PYTHON = "/usr/bin/python3"
ALLOW_LOCAL = "mode: enforce\negress:\n  allow: [127.0.0.1/32]\n"
# An agent that may use io_uring (the sandbox refuses it by default: policy refuse:).
ALLOW_LOCAL_IO_URING = ALLOW_LOCAL + (
    "refuse: [bpf, prlimit_other, setpriority_other, sched_other, process_vm_writev,\n"
    "         perf_event_open, kexec, modules]\n"
)
OBSERVE_LOCAL = "mode: observe\negress:\n  allow: [127.0.0.1/32]\n"
EGRESS_RULE = "egress_unauthorized_destination"
DENIED = "denied in kernel"
OBSERVED = "observe mode, not enforced"
MSG_FASTOPEN = 0x20000000
PTRACE_ATTACH = 16

# The prelude of every agent: `say(**kw)` prints one JSON line on stdout.
PRELUDE = """\
import ctypes, errno, json, os, signal, socket, sys, threading, time
def say(**kw):
    print(json.dumps(kw), flush=True)
def attempt(fn):
    try:
        fn()
        return 0
    except OSError as e:
        return e.errno
"""


def no_service() -> None:
    from roguewatch.stream.control import running

    client = running()
    require(client is None, "a roguewatchd runs: these tests exercise run's embedded monitor")


@dataclass
class Result:
    status: int
    stdout: str
    stderr: str
    alerts: list[dict]
    summary: str
    file_alerts: list[dict] = field(default_factory=list)

    def said(self) -> dict:
        """Everything the agent said (its JSON lines on stdout, merged)."""
        out: dict = {}
        for line in self.stdout.splitlines():
            line = line.strip()
            if line.startswith("{"):
                out.update(json.loads(line))
        return out

    def rule(self, name: str) -> list[dict]:
        return [a for a in self.alerts if a["rule"] == name]

    def one(self, name: str, **event: object) -> dict:
        found = [
            a for a in self.rule(name) if all(a["event"].get(k) == v for k, v in event.items())
        ]
        assert found, (
            f"no {name} alert with {event}; alerts: "
            + "; ".join(
                f"{a['rule']} {a['event']} {a['action']}: {a['outcome']}" for a in self.alerts
            )
            + f"\nstderr tail: {self.stderr[-2000:]}"
        )
        return found[0]

    def describe(self) -> str:
        return f"status {self.status}\nstdout: {self.stdout}\nstderr: {self.stderr[-3000:]}"


class Agent:
    """Runs `roguewatch run` around a Python snippet and collects what came out."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.token = f"rwtest-{uuid.uuid4().hex[:12]}"  # in every agent's cmdline

    def run(
        self,
        code: str,
        policy: str | None = ALLOW_LOCAL,
        args: tuple[str, ...] = (),
        during: Callable[[subprocess.Popen], None] | None = None,
        timeout: float = 60.0,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> Result:
        body = PRELUDE + textwrap.dedent(code) + f"\n# {self.token}\n"
        return self.run_argv(
            [AGENT_PYTHON, "-S", "-c", body], policy, args, during, timeout, cwd=cwd, env=env
        )

    def run_argv(
        self,
        argv: list[str],
        policy: str | None = ALLOW_LOCAL,
        args: tuple[str, ...] = (),
        during: Callable[[subprocess.Popen], None] | None = None,
        timeout: float = 60.0,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> Result:
        """``cwd``: where `roguewatch run` (and so the agent) starts; ``env``: variables set
        for it (and so the agent) over ours."""
        cmd = [*RUN, "--json", "--alerts", str(self.tmp / "alerts.jsonl")]
        if policy is not None:
            (self.tmp / "policy.yaml").write_text(policy)
            cmd += ["--policy", str(self.tmp / "policy.yaml")]
        cmd += [*args, "--", *argv]
        out, err = self.tmp / "stdout", self.tmp / "stderr"
        with out.open("w") as o, err.open("w") as e:
            proc = subprocess.Popen(
                cmd, stdout=o, stderr=e, start_new_session=True, cwd=cwd,
                env={**os.environ, **env} if env else None,
            )  # fmt: skip
            deadline = time.monotonic() + timeout
            try:
                while proc.poll() is None:
                    if time.monotonic() > deadline:
                        raise subprocess.TimeoutExpired(cmd, timeout)
                    if during is not None:
                        during(proc)
                    time.sleep(0.02)
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        stderr = err.read_text()
        lines = [x for x in stderr.splitlines() if x.strip()]
        alerts = [json.loads(x) for x in lines if x.startswith("{")]
        fpath = self.tmp / "alerts.jsonl"
        file_alerts = (
            [json.loads(x) for x in fpath.read_text().splitlines() if x.strip()]
            if fpath.exists()
            else []
        )
        return Result(proc.returncode, out.read_text(), stderr, alerts,
                      lines[-1] if lines else "", file_alerts)  # fmt: skip

    def leftovers(self) -> list[int]:
        """Processes anywhere on the host whose command line carries this test's token."""
        found = []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    if self.token.encode() in f.read():
                        found.append(int(d))
            except OSError:
                continue
        return found
