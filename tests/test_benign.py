"""Benign agent work under `roguewatch run` in enforce mode, on the real kernel: each runs to
completion with no alert above `low` and no action. git with hooks in the workspace repo,
ssh-keygen into the workspace, editors' save patterns, a dev server on loopback with a client,
pip installing a local wheel into a venv (in the workspace and in ~/.venvs), pytest with
subprocesses, a timeout that expires."""

from __future__ import annotations

import base64
import hashlib
import shutil
import sys
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import IN_CI, require_root
from tests.harness import AGENT_PYTHON, Agent, no_service
from tests.test_signals import assert_undisturbed

pytestmark = pytest.mark.kernel


@pytest.fixture(autouse=True)
def _root_and_no_service() -> None:
    require_root()
    no_service()


def _need(*tools: str) -> None:
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        assert not IN_CI, f"{missing} must be installed in CI"
        pytest.skip(f"needs {missing}")


GIT = """
git init -q repo && cd repo
git config user.email agent@example.invalid && git config user.name agent
printf '#!/bin/sh\\necho hook ran >&2\\n' > .git/hooks/pre-commit
chmod +x .git/hooks/pre-commit
echo 'print(1)' > main.py && git add main.py && git commit -qm first
git checkout -qb feature && echo 'print(2)' >> main.py && git commit -qam second
git checkout -q - && git merge -q feature && git log --oneline | wc -l
"""

EDITOR = """
printf 'one\\n' > notes.txt
cp notes.txt notes.txt~ && printf 'one\\ntwo\\n' > .notes.txt.swp && mv .notes.txt.swp notes.txt
cp notes.txt '#notes.txt#' && rm '#notes.txt#'
t=$(mktemp notes.txt.XXXXXX) && printf 'three\\n' > "$t" && mv "$t" notes.txt
cat notes.txt
"""

SSH = """
ssh-keygen -q -t ed25519 -N '' -C agent@ws -f ./deploy_key && ssh-keygen -l -f deploy_key.pub \\
  | awk '{print $4}'
"""

DEV_SERVER = f"""
echo hello > index.html
{AGENT_PYTHON} -m http.server --bind 127.0.0.1 0 > server.log 2>&1 &
pid=$!
for i in $(seq 50); do grep -q 'port' server.log && break; sleep 0.1; done
port=$(sed -n 's/.*port \\([0-9]*\\).*/\\1/p' server.log | head -1)
{AGENT_PYTHON} -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:$port/index.html').read().decode().strip())"
kill $pid; wait $pid 2>/dev/null; true
"""

PYTEST = f"""
cat > test_sub.py <<'PY'
import subprocess, sys
def test_child():
    out = subprocess.run([sys.executable, "-c", "print(6 * 7)"], capture_output=True, text=True)
    assert out.stdout.strip() == "42"
def test_shell():
    assert subprocess.run("echo ok | tr a-z A-Z", shell=True, capture_output=True,
                          text=True).stdout.strip() == "OK"
PY
{sys.executable} -m pytest -q -p no:cacheprovider test_sub.py 2>&1 | tail -1 | cut -d' ' -f1-2
"""

TIMEOUT = "timeout 0.3 sleep 5; echo timed out $?"


@pytest.mark.parametrize(
    ("script", "says", "tools"),
    [
        (GIT, "2", ("git",)),
        (EDITOR, "three", ()),
        (SSH, "(ED25519)", ("ssh-keygen",)),
        (DEV_SERVER, "hello", ()),
        (PYTEST, "2 passed", ()),
        (TIMEOUT, "timed out 124", ("timeout",)),
    ],
    ids=["git-hooks", "editor-saves", "ssh-keygen", "dev-server", "pytest-subprocesses",
         "timeout-expires"],
)  # fmt: skip
def test_benign_work_is_undisturbed(
    agent: Agent, script: str, says: str, tools: tuple[str, ...]
) -> None:
    _need(*tools)
    ws = agent.tmp / "ws"
    ws.mkdir()
    # The agent starts in its workspace (it is the session's workspace), as agents do.
    r = agent.run_argv(["/bin/sh", "-c", f"cd {ws} && {script}"], timeout=120, cwd=ws)
    assert r.stdout.strip().splitlines()[-1:] == [says], r.describe()
    assert_undisturbed(r)


def _wheel(path: Path) -> None:
    """A pure-Python wheel, made the way a build backend makes one (zip + dist-info)."""
    files = {
        "rwwheel/__init__.py": "GREETING = 'hello from a wheel'\n",
        "rwwheel-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: rwwheel\nVersion: 1.0\n",
        "rwwheel-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: rwtest\n"
        "Root-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{name},sha256={digest.decode()},{len(text.encode())}")
    record.append("rwwheel-1.0.dist-info/RECORD,,")
    files["rwwheel-1.0.dist-info/RECORD"] = "\n".join(record) + "\n"
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)


@pytest.fixture
def home_venvs() -> Iterator[Path]:
    venv = Path.home() / ".venvs" / f"rwtest-{uuid.uuid4().hex[:8]}"
    yield venv
    shutil.rmtree(venv, ignore_errors=True)
    try:
        venv.parent.rmdir()  # only when we made it and it is empty
    except OSError:
        pass


def test_pip_installs_a_local_wheel_into_venvs_in_the_workspace_and_in_home(
    agent: Agent, home_venvs: Path
) -> None:
    ws = agent.tmp / "ws"
    (ws / "dist").mkdir(parents=True)
    _wheel(ws / "dist" / "rwwheel-1.0-py3-none-any.whl")
    pip = "-m pip -q --disable-pip-version-check"
    script = f"""cd {ws}
{AGENT_PYTHON} -m venv venv
venv/bin/python {pip} install --no-index dist/rwwheel-1.0-py3-none-any.whl
{AGENT_PYTHON} -m venv {home_venvs}
{home_venvs}/bin/python {pip} install --no-index dist/rwwheel-1.0-py3-none-any.whl
venv/bin/python -c 'import rwwheel; print(rwwheel.GREETING)'
{home_venvs}/bin/python -c 'import rwwheel; print(rwwheel.GREETING)'
"""
    r = agent.run_argv(["/bin/sh", "-ec", script], timeout=240, cwd=ws)
    assert r.stdout.strip().splitlines()[-2:] == ["hello from a wheel"] * 2, r.describe()
    assert_undisturbed(r)
