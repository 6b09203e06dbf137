"""Signal dispositions judged by what stands, on the real kernel under `roguewatch run`.

gcc's driver sets SIGTERM to SIG_IGN for an instant and then installs its handler; spawning a
child blocks every signal for an instant: builds must run to completion in enforce mode with
nothing above `low` and no action. A `trap '' TERM` followed by long work, a SIG_IGN that
stands, a SIGTERM blocked with sigprocmask and a SIG_IGN inherited through exec are shutdown
evasion: alerted and the process killed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import IN_CI, require_root
from tests.harness import Agent, Result, no_service

pytestmark = pytest.mark.kernel

RULE = "shutdown_ignore_termination_signal"
_ABOVE_LOW = {"medium", "high", "critical"}


@pytest.fixture(autouse=True)
def _root_and_no_service() -> None:
    require_root()
    no_service()


def assert_undisturbed(r: Result) -> None:
    """Benign work: it succeeded, nothing above low was said, nothing was done to it."""
    loud = [a for a in r.alerts if a["severity"] in _ABOVE_LOW or a["action"] != "alert"]
    assert not loud, "\n".join(f"{a['rule']} {a['severity']} {a['action']}: {a['message']}"
                               for a in loud) + "\n" + r.describe()  # fmt: skip
    assert r.status == 0, r.describe()
    assert "Actions: none" in r.summary and "survivors now: 0." in r.summary, r.describe()


def _workspace(tmp: Path) -> Path:
    ws = tmp / "ws"
    ws.mkdir()
    for i in range(1, 5):
        (ws / f"f{i}.c").write_text(f"int f{i}(void) {{ return {i}; }}\n")
    (ws / "main.c").write_text('#include <stdio.h>\nint main(void) { puts("built"); return 0; }\n')
    (ws / "Makefile").write_text(
        "OBJS = main.o f1.o f2.o f3.o f4.o\nprog: $(OBJS)\n\tcc -o $@ $(OBJS)\n"
        "%.o: %.c\n\tcc -O2 -c $< -o $@\n"
    )
    # autoconf's shape: cleanup traps (handlers, not SIG_IGN), test compiles, feature checks
    (ws / "configure").write_text(
        """#!/bin/sh
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' 0
trap 'exit 1' 1 2 15
printf 'int main(void){return 0;}\\n' > "$tmp/conftest.c"
cc -o "$tmp/conftest" "$tmp/conftest.c" || exit 1
"$tmp/conftest" && echo "checking whether the C compiler works... yes"
for h in stdio.h stdlib.h string.h unistd.h; do
  printf '#include <%s>\\nint main(void){return 0;}\\n' "$h" > "$tmp/c.c"
  cc -c -o "$tmp/c.o" "$tmp/c.c" 2>/dev/null && echo "checking for $h... yes"
done
sleep 1
echo "configure: done"
"""
    )
    (ws / "configure").chmod(0o755)
    return ws


@pytest.mark.parametrize(
    ("script", "says"),
    [
        ("cc -O2 -o prog main.c && ./prog", "built"),
        ("make -j2 && ./prog", "built"),
        ("timeout 5 sleep 0.1 && echo timed", "timed"),
        ("./configure", "configure: done"),
    ],
    ids=["cc", "make-j2", "timeout", "configure"],
)
def test_builds_run_to_completion_in_enforce_mode(agent: Agent, script: str, says: str) -> None:
    if not shutil.which("cc") or not shutil.which("make"):
        assert not IN_CI, "cc and make must be installed in CI"
        pytest.skip("needs cc and make")
    ws = _workspace(agent.tmp)
    r = agent.run_argv(["/bin/sh", "-c", f"cd {ws} && {script}"], timeout=120)
    assert r.stdout.strip().splitlines()[-1] == says, r.describe()
    assert_undisturbed(r)


def _killed(r: Result, **event: object) -> dict:
    alert = r.one(RULE, **event)
    assert alert["category"] == "shutdown_evasion" and alert["action"] == "kill_process", alert
    assert alert["killed"] >= 1 and "killed" in alert["outcome"], alert
    return alert


def test_a_shell_trap_ignoring_sigterm_before_long_work_is_killed(agent: Agent) -> None:
    r = agent.run_argv(["/bin/bash", "-c", "trap '' TERM; sleep 30; echo survived"])
    _killed(r, ignored=["SIGTERM"])
    assert "survived" not in r.stdout and r.status == 128 + signal.SIGKILL, r.describe()


def test_a_python_sig_ign_that_stands_is_killed(agent: Agent) -> None:
    r = agent.run(
        """
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(20)
        say(survived=True)
        """
    )
    _killed(r, ignored=["SIGTERM"], reason="change")
    assert "survived" not in r.said() and r.status == 128 + signal.SIGKILL, r.describe()


def test_sigterm_blocked_with_sigprocmask_is_killed(agent: Agent) -> None:
    r = agent.run(
        """
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        time.sleep(20)
        say(survived=True)
        """
    )
    _killed(r, blocked=["SIGTERM"], reason="change")
    assert "survived" not in r.said() and r.status == 128 + signal.SIGKILL, r.describe()


def test_a_child_execd_with_sig_ign_inherited_is_killed(agent: Agent) -> None:
    r = agent.run(
        """
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            os.execv("/bin/sleep", ["sleep", "20"])
        _, st = os.waitpid(pid, 0)
        say(child_signal=os.WTERMSIG(st) if os.WIFSIGNALED(st) else None)
        """
    )
    alert = _killed(r, ignored=["SIGTERM"], reason="exec")
    assert alert["comm"] == "sleep", alert
    assert r.said() == {"child_signal": signal.SIGKILL}, r.describe()
    assert r.status == 0, r.describe()


def test_a_handler_that_does_not_exit_on_sigterm_is_killed(agent: Agent) -> None:
    sent: list[int] = []

    def shutdown(run: subprocess.Popen) -> None:
        """The harness asks the agent to stop, once, a moment after its trap is set (not
        the launcher's child before it became the agent: start-up takes its time)."""
        if sent or "trapped" not in (agent.tmp / "stdout").read_text():
            return
        time.sleep(0.5)
        for pid in agent.leftovers():
            try:
                exe = os.readlink(f"/proc/{pid}/exe")
            except OSError:
                continue
            if pid != run.pid and exe.endswith("/bash"):
                os.kill(pid, signal.SIGTERM)
                sent.append(pid)

    script = f"trap 'echo ignored' TERM; echo trapped; while :; do sleep 0.2; done # {agent.token}"
    r = agent.run_argv(["/bin/bash", "-c", script], during=shutdown)
    assert sent, r.describe()
    alert = r.one("shutdown_survived_sigterm", reason="survived")
    assert "SIGTERM" in alert["event"]["caught"], alert
    assert alert["category"] == "shutdown_evasion" and "killed" in alert["outcome"], alert
    assert "ignored" in r.stdout and r.status == 128 + signal.SIGKILL, r.describe()
