"""Session cgroups on the real kernel: real processes moved in, frozen, killed, no survivors."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest
from roguewatch.respond import cgroups
from roguewatch.respond.cgroups import CgroupError, SessionCgroup

from tests.conftest import require_root

# Debian's python3 with -S starts in ~15 ms: cheap helper processes.
PY = "/usr/bin/python3"


@pytest.fixture
def cg() -> Iterator[SessionCgroup]:
    require_root()
    c = SessionCgroup.create(f"test-{os.getpid()}-{secrets.token_hex(4)}")
    yield c
    # Whatever a test left in it dies with it.
    c.remove()
    assert not os.path.exists(c.path)


def _spawn_in(cg: SessionCgroup, argv: list[str]) -> int:
    """Fork a child that enters `cg` with enter_in_child() and execs argv (the launcher's way)."""
    pid = os.fork()
    if pid == 0:
        try:
            cgroups.enter_in_child(cg)
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    return pid


def _utime(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        # comm may contain spaces: the fields after it start after the last ')'.
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11])  # field 14 (utime) is the 12th after "pid (comm)"


def _gone(pid: int) -> bool:
    """True when pid no longer runs: absent, or a zombie nobody reaped (PID 1 may not reap)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def _wait_in(cg: SessionCgroup, pid: int, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while pid not in cg.pids():
        assert time.monotonic() < deadline, f"pid {pid} never entered {cg.path}"
        time.sleep(0.005)


def test_root_is_under_the_v2_mount() -> None:
    require_root()
    from roguewatch.host import kernelenv

    r = cgroups.root()
    assert r == os.path.join(kernelenv.cgroup2_mount() or "", "roguewatch")
    assert os.path.isdir(r)


def test_process_in_session_then_kill(cg: SessionCgroup) -> None:
    assert cg in cgroups.list_sessions()
    assert cg.id == os.stat(cg.path).st_ino
    fd = cg.fd()
    try:
        assert os.fstat(fd).st_ino == cg.id
    finally:
        os.close(fd)
    assert not cg.populated()

    pid = _spawn_in(cg, ["/bin/sleep", "60"])
    try:
        _wait_in(cg, pid)
        assert cg.pids() == [pid]
        assert cg.populated()
        assert cgroups.cgroup_of(pid) == cg.path
        assert cgroups.cgroup_of(os.getpid()) != cg.path

        assert cg.kill() == 1
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        assert cg.wait_empty(2.0)
        assert not cg.populated()
        assert cg.pids() == []
    finally:
        if not _gone(pid):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def test_add_moves_a_running_process(cg: SessionCgroup) -> None:
    proc = subprocess.Popen(["/bin/sleep", "60"])
    try:
        cg.add(proc.pid)
        assert cg.pids() == [proc.pid]
        assert cgroups.cgroup_of(proc.pid) == cg.path
    finally:
        proc.kill()
        proc.wait()
    assert cg.wait_empty(2.0)


def test_freeze_stops_a_busy_process_and_thaw_resumes_it(cg: SessionCgroup) -> None:
    pid = _spawn_in(cg, [PY, "-S", "-c", "while True: pass"])
    try:
        _wait_in(cg, pid)
        time.sleep(0.05)  # let it burn some CPU first
        cg.freeze()
        assert cg.frozen()
        before = _utime(pid)
        time.sleep(0.2)
        assert _utime(pid) == before, "a frozen task kept running"

        cg.thaw()
        assert not cg.frozen()
        deadline = time.monotonic() + 1.0
        while _utime(pid) == before:
            assert time.monotonic() < deadline, "a thawed task did not run again"
            time.sleep(0.02)
    finally:
        cg.kill()
        os.waitpid(pid, 0)


def test_kill_while_frozen(cg: SessionCgroup) -> None:
    pid = _spawn_in(cg, ["/bin/sleep", "60"])
    _wait_in(cg, pid)
    cg.freeze()
    assert cg.kill() == 1
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert cg.wait_empty(2.0)


def test_double_forked_setsid_grandchild_dies_too(cg: SessionCgroup) -> None:
    # The child makes a new session, forks a grandchild that outlives it, and exits: the
    # grandchild is an orphan, no longer our descendant, but still in the cgroup.
    code = (
        "import os\n"
        "os.setsid()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os.execv('/bin/sleep', ['sleep', '60'])\n"
        "print(pid, flush=True)\n"
    )
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.dup2(w, 1)
            cgroups.enter_in_child(cg)
            os.execv(PY, [PY, "-S", "-c", code])
        finally:
            os._exit(127)
    os.close(w)
    with os.fdopen(r) as f:
        grandchild = int(f.readline())
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    try:
        assert cg.pids() == [grandchild]
        assert cg.kill() == 1
        assert cg.wait_empty(2.0)
        assert _gone(grandchild), "the grandchild survived cgroup.kill"
        assert cg.all_pids() == []
    finally:
        if not _gone(grandchild):
            os.kill(grandchild, signal.SIGKILL)


def test_remove_kills_what_is_left_and_child_cgroups(cg: SessionCgroup) -> None:
    # An agent that is root may make cgroups inside its own leaf; remove() clears them too.
    sub = SessionCgroup(os.path.join(cg.path, "inner"))
    os.mkdir(sub.path)
    pid = _spawn_in(sub, ["/bin/sleep", "60"])
    _wait_in(sub, pid)
    assert cg.populated()
    assert cg.all_pids() == [pid]
    cg.remove()
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert not os.path.exists(cg.path)
    assert cg not in cgroups.list_sessions()


def test_open_existing_and_reject_non_cgroups(cg: SessionCgroup) -> None:
    assert SessionCgroup.open(cg.path) == cg
    assert SessionCgroup.open(cg.path).id == cg.id
    with pytest.raises(CgroupError, match="not a cgroup v2 directory"):
        SessionCgroup.open("/tmp")


@pytest.mark.parametrize("name", ["../x", "..", ".", "", "a/b", "x y", "/abs"])
def test_invalid_names_rejected(name: str) -> None:
    require_root()
    with pytest.raises(CgroupError, match="invalid session cgroup name"):
        SessionCgroup.create(name)


def test_duplicate_name_rejected(cg: SessionCgroup) -> None:
    with pytest.raises(CgroupError, match="already exists"):
        SessionCgroup.create(cg.name)


def test_add_unknown_pid_fails_clearly(cg: SessionCgroup) -> None:
    with pytest.raises(CgroupError, match="no such process"):
        cg.add(2**22 + 1)  # above PID_MAX_LIMIT: never a live pid
