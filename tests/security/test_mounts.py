"""Mounts over what the monitor watches, by a root agent the service adopted (no Landlock: a
`run` agent cannot mount at all): a tmpfs over /etc/cron.d or over the alert log's directory,
a bind mount onto a protected file (with mount(2), and with the new mount API's open_tree +
move_mount). Each is seen, alerted critical, unmounted in the agent's namespace, and the
session is killed."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from roguewatch.respond import mounts
from roguewatch.respond.cgroups import SessionCgroup
from roguewatch.runtime import launcher
from roguewatch.stream.control import ControlClient

from tests.conftest import require_root
from tests.test_service import Daemon

pytestmark = pytest.mark.kernel

RULE = "oversight_mount_over_watched_path"
MOUNTER = """
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
how, src, target = sys.argv[1], sys.argv[2].encode(), sys.argv[3].encode()
if how == "tmpfs":
    rc = libc.mount(b"none", target, b"tmpfs", 0, None)
elif how == "bind":
    rc = libc.mount(src, target, None, 4096, None)  # MS_BIND
else:  # the new mount API: open_tree(OPEN_TREE_CLONE) + move_mount(F_EMPTY_PATH)
    fd = libc.syscall(428, -100, src, 1)
    rc = -1 if fd < 0 else libc.syscall(429, fd, b"", -100, target, 4)
print(rc, ctypes.get_errno(), flush=True)
time.sleep(20)
"""


def _alerts(d: Daemon) -> list[dict]:
    if not d.alerts_file.exists():
        return []
    return [json.loads(x) for x in d.alerts_file.read_text().splitlines() if x.strip()]


def _mounted(point: str) -> bool:
    return any(m.point == point for m in mounts.mounts(os.getpid()))


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Daemon]:
    require_root()
    d = Daemon(tmp_path)
    d.start()
    yield d
    d.kill()


def _attack(d: Daemon, how: str, src: str, target: str, protect: list[str]) -> tuple[int, str]:
    """The mounter as a session of the service's; its exit status and what it printed."""
    cg = SessionCgroup.create(f"rwsec-mount-{how}-{os.getpid()}")
    ctl = ControlClient(d.control)
    out = Path(d.tmp) / f"mounter-{how}.out"

    def register(pid: int) -> int:
        cg.add(pid)
        reply = ctl.request("register", pid=pid, name="mounter", cgroup=cg.path,
                            mode="enforce", policy={"protect": protect})  # fmt: skip
        return int(reply["session"])

    with out.open("w") as f:
        # (stdout to the file: the child inherits it before the exec)
        saved = os.dup(1)
        os.dup2(f.fileno(), 1)
        try:
            pid, _ = launcher.spawn_in_session(
                ["/usr/bin/python3", "-S", "-c", textwrap.dedent(MOUNTER), how, src, target],
                register,
            )
        finally:
            os.dup2(saved, 1)
            os.close(saved)
    ctl.close()
    deadline = time.monotonic() + 30
    status = None
    while time.monotonic() < deadline:
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = launcher.exit_status(st)
            break
        time.sleep(0.05)
    if status is None:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    try:
        cg.remove()
    except Exception:
        pass
    return status if status is not None else -1, out.read_text()


def _cleanup(point: str) -> None:
    while _mounted(point):
        subprocess.run(["umount", "-l", point], check=False)


@pytest.mark.parametrize("where", ["cron", "alert_log"])
def test_a_tmpfs_over_a_watched_directory_is_unmounted_and_the_session_killed(
    service: Daemon, where: str
) -> None:
    target = "/etc/cron.d" if where == "cron" else str(service.alerts_file.parent)
    assert not _mounted(target)
    try:
        status, said = _attack(service, "tmpfs", "", target, [])
        # (the mount itself works: root, no Landlock; the alert says it was there)
        assert status == 137, (status, said)  # the session was killed
        assert not _mounted(target), "the tmpfs is still mounted"
        deadline = time.monotonic() + 10
        hits: list[dict] = []
        while time.monotonic() < deadline and not hits:
            hits = [a for a in _alerts(service) if a["rule"] == RULE]
            time.sleep(0.1)
        assert hits, _alerts(service)
        assert hits[0]["severity"] == "critical" and target in hits[0]["message"], hits[0]
        assert "unmounted" in hits[0]["message"], hits[0]
        assert "session killed" in hits[0]["outcome"], hits[0]
    finally:
        _cleanup(target)


@pytest.mark.parametrize("how", ["bind", "move_mount"])
def test_a_bind_mount_onto_a_protected_file_is_unmounted_and_the_session_killed(
    service: Daemon, tmp_path: Path, how: str
) -> None:
    protected = tmp_path / "shutdown.sh"
    protected.write_text("#!/bin/sh\nexit 0\n")
    evil = tmp_path / "evil.sh"
    evil.write_text("#!/bin/sh\nsleep infinity\n")
    try:
        status, said = _attack(service, how, str(evil), str(protected), [str(protected)])
        assert status == 137, (status, said)
        assert not _mounted(str(protected))
        assert protected.read_text() == "#!/bin/sh\nexit 0\n"  # its own content again
        deadline = time.monotonic() + 10
        hits: list[dict] = []
        while time.monotonic() < deadline and not hits:
            hits = [a for a in _alerts(service) if a["rule"] == RULE]
            time.sleep(0.1)
        assert hits and hits[0]["severity"] == "critical", _alerts(service)
        assert str(protected) in hits[0]["message"], hits[0]
    finally:
        _cleanup(str(protected))


@pytest.mark.parametrize(
    ("ev", "new"),
    [
        ({"mount_flags": 0, "fstype": "tmpfs"}, True),
        ({"mount_flags": 4096}, True),  # MS_BIND
        ({"mount_flags": 8192}, True),  # MS_MOVE
        ({"move": True, "mount_flags": 4}, True),  # move_mount
        ({"mount_flags": (1 << 14) | (1 << 18)}, False),  # MS_REC|MS_PRIVATE: unshare -m
        ({"mount_flags": 32 | 1}, False),  # MS_REMOUNT|MS_RDONLY
        ({"umount": True, "mount_flags": 2}, False),
    ],
)
def test_only_a_mount_that_attaches_something_is_looked_at(ev: dict, new: bool) -> None:
    assert mounts.makes_a_mount(ev) is new


def test_what_a_mount_point_covers_and_never_the_root() -> None:
    watched = ["/etc/cron.d", "/srv/eval/shutdown.sh", "/var/log/roguewatch"]
    assert mounts.covers("/etc/cron.d", watched) == "/etc/cron.d"
    assert mounts.covers("/etc", watched) == "/etc/cron.d"  # hides it
    assert mounts.covers("/srv/eval/shutdown.sh", watched) == "/srv/eval/shutdown.sh"
    assert mounts.covers("/etc/cron.d/job", watched) == "/etc/cron.d"  # inside it
    assert mounts.covers("/etc/cron.daily", watched) is None
    assert mounts.covers("/", watched) is None
    assert mounts.mount_point({"target": "cron.d", "pid": 1}, "/etc") == "/etc/cron.d"
