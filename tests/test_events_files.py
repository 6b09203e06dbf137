"""File events: the writes, renames, links and mode changes persistence goes through."""

from __future__ import annotations

import os
import shutil
import signal
import time

import pytest
from roguewatch.runtime import launcher

from tests.conftest import SCRATCH, Stream

pytestmark = pytest.mark.kernel


@pytest.fixture(autouse=True)
def scratch() -> None:
    shutil.rmtree(f"{SCRATCH}/f", ignore_errors=True)
    os.makedirs(f"{SCRATCH}/f/sub")


def test_writing_opens_are_events_and_read_only_opens_are_not(stream: Stream) -> None:
    s = stream.python(
        """
        import os
        d = "/tmp/rwtest/f/"
        os.close(os.open(d + "created", os.O_WRONLY | os.O_CREAT, 0o640))
        os.close(os.open(d + "created", os.O_RDWR | os.O_TRUNC))
        os.close(os.open(d + "created", os.O_RDONLY))
        os.close(os.open("/etc/hostname", os.O_RDONLY))
        """
    )
    opens = s.of_type("open", path=f"{SCRATCH}/f/created")
    assert len(opens) == 2
    assert opens[0]["open_flags"] & os.O_CREAT and opens[0]["mode"] == 0o640
    assert opens[1]["open_flags"] & os.O_TRUNC
    assert all(e["ret"] >= 0 for e in opens)
    assert not s.of_type("open", path="/etc/hostname")


def test_relative_paths_resolve_against_the_followed_cwd_and_dirfd(stream: Stream) -> None:
    s = stream.python(
        """
        import os
        os.chdir("/tmp/rwtest/f/sub")
        os.close(os.open("evil", os.O_WRONLY | os.O_CREAT))
        dfd = os.open("/tmp/rwtest/f", os.O_RDONLY | os.O_DIRECTORY)
        os.close(os.open("viadirfd", os.O_WRONLY | os.O_CREAT, dir_fd=dfd))
        os.close(os.open("../up", os.O_WRONLY | os.O_CREAT))
        import time; time.sleep(0.5)  # dirfds are read through /proc while we live
        """
    )
    assert s.one("chdir")["path"] == f"{SCRATCH}/f/sub"
    s.one("open", path=f"{SCRATCH}/f/sub/evil")
    s.one("open", path=f"{SCRATCH}/f/viadirfd")
    s.one("open", path=f"{SCRATCH}/f/up")
    assert not [e for e in s.events if "unresolved" in e["flags"]]


def test_a_child_inherits_the_cwd_it_was_forked_with(stream: Stream) -> None:
    s = stream.shell("cd /tmp/rwtest/f/sub && (echo x > child-file)")
    op = s.one("open", path=f"{SCRATCH}/f/sub/child-file")
    assert op["ret"] >= 0


def test_rename_link_symlink_unlink(stream: Stream) -> None:
    s = stream.python(
        """
        import os
        d = "/tmp/rwtest/f/"
        open(d + "a", "w").close()
        os.rename(d + "a", d + "b")
        os.link(d + "b", d + "hard")
        os.symlink("/etc/shadow", d + "soft")
        os.unlink(d + "hard")
        os.rmdir(d + "sub")
        """
    )
    ren = s.one("rename")
    assert (ren["source"], ren["path"], ren["ret"]) == (f"{SCRATCH}/f/a", f"{SCRATCH}/f/b", 0)
    link = s.one("link")
    assert (link["source"], link["path"]) == (f"{SCRATCH}/f/b", f"{SCRATCH}/f/hard")
    sym = s.one("symlink")
    assert (sym["source"], sym["path"]) == ("/etc/shadow", f"{SCRATCH}/f/soft")
    assert s.one("unlink", path=f"{SCRATCH}/f/hard")["rmdir"] is False
    assert s.one("unlink", path=f"{SCRATCH}/f/sub")["rmdir"] is True


def test_mode_owner_size_and_time_changes(stream: Stream) -> None:
    s = stream.python(
        """
        import os, time
        p = "/tmp/rwtest/f/script.sh"
        open(p, "w").close()
        os.chmod(p, 0o755)
        fd = os.open(p, os.O_RDONLY)
        os.fchmod(fd, 0o700)
        os.chown(p, 1, 2)
        os.truncate(p, 10)
        os.utime(p, (0, 0))
        os.utime(p, ns=(1_600_000_000_000_000_000, 1_500_000_000_000_000_000))
        os.utime(p)  # now: what plain `touch` does
        wfd = os.open(p, os.O_WRONLY)
        os.ftruncate(wfd, 0)
        time.sleep(0.5)  # fd-based changes are resolved through /proc while we live
        """
    )
    path = f"{SCRATCH}/f/script.sh"
    modes = [e["mode"] for e in s.of_type("chmod", path=path)]
    assert modes == [0o755, 0o700]  # the fchmod's fd was resolved to the path
    own = s.one("chown", path=path)
    assert (own["owner"], own["group"]) == (1, 2)
    lengths = [e["length"] for e in s.of_type("truncate", path=path)]
    assert lengths == [10, 0]
    # The time given, from the call's own argument (the mtime's), or none for "now".
    given = [(e["given"], e["time"]) for e in s.of_type("utimes", path=path)]
    assert given == [(True, 0), (True, 1_500_000_000), (False, 0)], given


def test_extended_attributes_set_by_path_and_by_fd(stream: Stream) -> None:
    s = stream.python(
        """
        import os, time
        p = "/tmp/rwtest/f/xattr"
        open(p, "w").close()
        os.setxattr(p, "user.rwtest", b"1")
        fd = os.open(p, os.O_RDONLY)
        os.setxattr(fd, "user.rwtest_fd", b"2")
        time.sleep(0.5)  # the fd is resolved through /proc while we live
        """
    )
    path = f"{SCRATCH}/f/xattr"
    names = [e["name"] for e in s.of_type("setxattr", path=path)]
    assert names == ["user.rwtest", "user.rwtest_fd"], s.of_type("setxattr")


def test_a_failed_operation_carries_its_errno(stream: Stream) -> None:
    s = stream.python(
        """
        import os
        try:
            os.unlink("/tmp/rwtest/f/does-not-exist")
        except FileNotFoundError:
            pass
        """
    )
    assert s.one("unlink", path=f"{SCRATCH}/f/does-not-exist")["ret"] == -2  # ENOENT


def test_an_fd_change_by_a_process_already_gone_is_flagged_unresolved(stream: Stream) -> None:
    # The kernel gives only the fd; if the process is gone before the collector reads
    # /proc/PID/fd, the event must say so rather than guess. Pause the collector to force it.
    collector = stream.watcher.proc
    assert collector is not None
    register = launcher.register_with(stream.watcher.control)

    def register_then_pause(pid: int) -> int:
        sid = register(pid)
        os.kill(collector.pid, signal.SIGSTOP)
        return sid

    code = "import os\nfd = os.open('/tmp/rwtest/f/gone', os.O_WRONLY | os.O_CREAT)\n"
    code += "os.fchmod(fd, 0o600)"
    try:
        pid, _ = launcher.spawn_in_session(
            ["/usr/bin/python3", "-S", "-c", code], register_then_pause
        )
        os.waitpid(pid, 0)
        time.sleep(0.2)
    finally:
        os.kill(collector.pid, signal.SIGCONT)
    evs = stream.collect(lambda e: any(x["type"] == "exit" and x["pid"] == pid for x in e))
    chmod = next(e for e in evs if e["type"] == "chmod" and e["pid"] == pid)
    assert "unresolved" in chmod["flags"]
    assert chmod["path"] == ""


def test_a_name_that_is_not_utf8_does_not_stop_the_stream(stream: Stream) -> None:
    # msgpack strings are UTF-8: such a name once made the collector's publish raise, so an
    # agent could blind the monitor with one file. Its bytes arrive as \xNN escapes.
    s = stream.python(
        """
        import os
        os.close(os.open(b"/tmp/rwtest/f/bad\\xff\\xfename", os.O_WRONLY | os.O_CREAT))
        os.close(os.open("/tmp/rwtest/f/after", os.O_WRONLY | os.O_CREAT))
        """
    )
    s.one("open", path=f"{SCRATCH}/f/bad\\xff\\xfename")
    s.one("open", path=f"{SCRATCH}/f/after")
