"""Landlock domains on the real kernel, applied in forked children (never in the test process)."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
from roguewatch.respond import landlock
from roguewatch.respond.landlock import LandlockError

from tests.conftest import require_root

_PTRACE_ATTACH = 16
_PTRACE_DETACH = 17
_libc = ctypes.CDLL(None, use_errno=True)


def in_child(body: Callable[[], dict]) -> dict:
    """Run body() in a forked child and return the dict it produced (sent back as JSON)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(r)
            out = body()
        except BaseException:
            out = {"error": traceback.format_exc()}
            code = 1
        try:
            os.write(w, json.dumps(out).encode())
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    result = json.loads(data) if data else {"error": f"child died, status {status}"}
    assert "error" not in result, result["error"]
    return result


def _errno_of(fn: Callable[[], object]) -> int:
    try:
        fn()
    except OSError as e:
        return e.errno or -1
    return 0


def _ptrace_attach(pid: int) -> int:
    ctypes.set_errno(0)
    if _libc.ptrace(_PTRACE_ATTACH, pid, None, None) == 0:
        _libc.ptrace(_PTRACE_DETACH, pid, None, None)
        return 0
    return ctypes.get_errno()


def test_abi_has_scoping() -> None:
    # kernel.md: ABI 7 on the development and CI kernels; scoping needs 6.
    assert landlock.abi() >= 6


def test_scoped_agent_cannot_signal_or_ptrace_outside_but_can_its_children() -> None:
    require_root()
    outside = subprocess.Popen(["/bin/sleep", "30"])
    try:

        def body() -> dict:
            parent = os.getppid()
            landlock.restrict_self()
            out: dict = {
                "kill_parent_0": _errno_of(lambda: os.kill(parent, 0)),
                "term_outside": _errno_of(lambda: os.kill(outside.pid, signal.SIGTERM)),
                "ptrace_outside": _ptrace_attach(outside.pid),
                "ptrace_parent": _ptrace_attach(parent),
            }
            # A child forked after restrict_self is inside the domain: it can be signalled.
            gc = os.fork()
            if gc == 0:
                time.sleep(30)
                os._exit(0)
            out["term_own_child"] = _errno_of(lambda: os.kill(gc, signal.SIGTERM))
            _, st = os.waitpid(gc, 0)
            out["own_child_signal"] = os.WTERMSIG(st) if os.WIFSIGNALED(st) else None
            return out

        res = in_child(body)
        assert res["kill_parent_0"] == errno.EPERM
        assert res["term_outside"] == errno.EPERM
        assert res["ptrace_outside"] == errno.EPERM
        assert res["ptrace_parent"] == errno.EPERM
        assert res["term_own_child"] == 0
        assert res["own_child_signal"] == signal.SIGTERM
        assert outside.poll() is None, "the process outside the domain was signalled"
    finally:
        outside.kill()
        outside.wait()


def test_scoped_agent_cannot_reach_an_outside_abstract_socket() -> None:
    require_root()
    name = f"\0roguewatch-test-{os.getpid()}"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        srv.bind(name)
        srv.listen(1)

        def connect() -> None:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
                c.connect(name)

        def body() -> dict:
            before = _errno_of(connect)
            landlock.restrict_self(scope_signals=False)
            return {"before": before, "after": _errno_of(connect)}

        res = in_child(body)
        assert res == {"before": 0, "after": errno.EPERM}
    finally:
        srv.close()


def test_writable_roots_confine_writes_not_reads() -> None:
    require_root()
    with tempfile.TemporaryDirectory() as allowed, tempfile.TemporaryDirectory() as other:

        def write(path: str) -> None:
            with open(path, "w") as f:
                f.write("x")

        def body() -> dict:
            landlock.restrict_self(writable=[allowed])
            out: dict = {
                "write_allowed": _errno_of(lambda: write(os.path.join(allowed, "ok"))),
                "mkdir_allowed": _errno_of(lambda: os.mkdir(os.path.join(allowed, "d"))),
                "write_other": _errno_of(lambda: write(os.path.join(other, "no"))),
                "mkdir_other": _errno_of(lambda: os.mkdir(os.path.join(other, "d"))),
                "dev_null": _errno_of(lambda: write("/dev/null")),
            }
            try:
                with open("/etc/hostname") as f:
                    f.read()
                out["read_etc"] = 0
            except OSError as e:
                out["read_etc"] = e.errno
            return out

        res = in_child(body)
        assert res["write_allowed"] == 0
        assert res["mkdir_allowed"] == 0
        assert res["write_other"] == errno.EACCES  # PermissionError
        assert res["mkdir_other"] == errno.EACCES
        assert res["dev_null"] == 0
        assert res["read_etc"] == 0
        assert os.path.exists(os.path.join(allowed, "ok"))
        assert os.listdir(other) == []


def test_denied_subtrees_stay_out_of_reach_and_everything_around_them_writable(
    tmp_path: Path,
) -> None:
    """The construction of "everything but": a tree like /, /etc, /run with a denied
    directory two levels down, a link to it, and files beside it."""
    require_root()
    top = tmp_path / "root"
    etc = top / "etc"
    for d in (etc / "roguewatch", etc / "cron.d", top / "home" / "agent", top / "run"):
        d.mkdir(parents=True)
    (etc / "hostname").write_text("old\n")
    (etc / "roguewatch" / "config").write_text("monitor's\n")
    (top / "run" / "roguewatch").symlink_to(etc / "roguewatch")  # like /var/run -> /run

    def write(path: Path, mode: str = "w") -> None:
        with open(path, mode) as f:
            f.write("x")

    def body() -> dict:
        landlock.restrict_self(writable=[str(top)], deny_writes=[str(etc / "roguewatch")])
        return {
            "denied file": _errno_of(lambda: write(etc / "roguewatch" / "config", "a")),
            "denied new file": _errno_of(lambda: write(etc / "roguewatch" / "new")),
            "denied through a link": _errno_of(lambda: write(top / "run" / "roguewatch" / "n")),
            "sibling directory": _errno_of(lambda: write(etc / "cron.d" / "job")),
            "elsewhere": _errno_of(lambda: write(top / "home" / "agent" / "notes")),
            "existing file beside it": _errno_of(lambda: write(etc / "hostname", "a")),
            # documented: an entry made or removed directly in a parent of a denied path
            # would need a right that holds in the denied subtree too
            "new file beside it": _errno_of(lambda: write(etc / "new.conf")),
            "unlink beside it": _errno_of(lambda: os.unlink(etc / "hostname")),
            "rename the denied directory": _errno_of(
                lambda: os.rename(etc / "roguewatch", top / "home" / "moved")
            ),
            "outside the writable root": _errno_of(lambda: write(tmp_path / "outside")),
        }

    assert in_child(body) == {
        "denied file": errno.EACCES,
        "denied new file": errno.EACCES,
        "denied through a link": errno.EACCES,
        "sibling directory": 0,
        "elsewhere": 0,
        "existing file beside it": 0,
        "new file beside it": errno.EACCES,
        "unlink beside it": errno.EACCES,
        "rename the denied directory": errno.EACCES,
        "outside the writable root": errno.EACCES,
    }
    assert (etc / "roguewatch" / "config").read_text() == "monitor's\n"
    assert not (etc / "roguewatch" / "new").exists() and (etc / "roguewatch").is_dir()


def test_a_writable_root_inside_a_denied_path_is_refused(tmp_path: Path) -> None:
    (tmp_path / "monitor" / "logs").mkdir(parents=True)
    with pytest.raises(LandlockError, match=r"writable root '.*/monitor/logs' is inside"):
        landlock.Ruleset.build(
            writable=[str(tmp_path / "monitor" / "logs")], deny_writes=[str(tmp_path / "monitor")]
        )


def test_root_keeps_setuid_working_no_new_privs_only_when_needed() -> None:
    require_root()

    def nnp() -> int:
        with open("/proc/self/status") as f:
            return next(int(ln.split()[1]) for ln in f if ln.startswith("NoNewPrivs:"))

    def body() -> dict:
        landlock.restrict_self()
        return {"nnp": nnp()}

    assert in_child(body) == {"nnp": 0}


def test_unprivileged_agent_gets_no_new_privs_and_the_same_scoping() -> None:
    # The launcher's --user path: drop to an unprivileged user first, then restrict.
    require_root()
    outside = subprocess.Popen(["/bin/sleep", "30"])
    try:

        def body() -> dict:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            landlock.restrict_self()
            with open("/proc/self/status") as f:
                nnp = next(int(ln.split()[1]) for ln in f if ln.startswith("NoNewPrivs:"))
            return {"nnp": nnp, "ptrace": _ptrace_attach(outside.pid)}

        res = in_child(body)
        assert res["nnp"] == 1
        assert res["ptrace"] == errno.EPERM
    finally:
        outside.kill()
        outside.wait()


def test_old_abi_or_bad_root_fail_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(LandlockError, match="nothing to restrict"):
        landlock.restrict_self(scope_signals=False, scope_abstract_unix=False)
    monkeypatch.setattr(landlock, "abi", lambda: 5)
    with pytest.raises(LandlockError, match="need Landlock ABI 6"):
        landlock.restrict_self()
    monkeypatch.setattr(landlock, "abi", lambda: 0)
    with pytest.raises(LandlockError, match="not available"):
        landlock.restrict_self(writable=["/tmp"])
    monkeypatch.undo()

    # A missing writable root is reported before anything is enforced (in a child all the same,
    # so that a bug here could never sandbox the test process).
    def body() -> dict:
        try:
            landlock.restrict_self(writable=["/nonexistent/roguewatch"])
        except LandlockError as e:
            return {"msg": str(e)}
        return {"msg": ""}

    assert "cannot be opened" in in_child(body)["msg"]


def test_write_accesses_grow_with_the_abi() -> None:
    assert not landlock.write_accesses(1) & landlock.ACCESS_FS_REFER
    assert landlock.write_accesses(2) & landlock.ACCESS_FS_REFER
    assert landlock.write_accesses(3) & landlock.ACCESS_FS_TRUNCATE
    assert not landlock.write_accesses(4) & landlock.ACCESS_FS_IOCTL_DEV
    assert landlock.write_accesses(7) & landlock.ACCESS_FS_IOCTL_DEV
    assert landlock.write_accesses(7) & landlock.ACCESS_FS_WRITE_FILE
