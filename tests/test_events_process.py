"""Process lifecycle events and session inheritance, from real processes on the real kernel."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from roguewatch.core import procfs
from roguewatch.core.identity import exec_id
from roguewatch.policy.config import Config
from roguewatch.probes import layout
from roguewatch.stream import bus
from roguewatch.stream.collector import Collector

from tests.conftest import Stream, require_root

pytestmark = pytest.mark.kernel


def test_exec_and_exit_of_the_session_root(stream: Stream) -> None:
    s = stream.shell("exit 7")
    ex = s.one("exec", pid=s.pid)
    assert ex["filename"] == "/bin/sh"
    assert ex["argv"] == ["/bin/sh", "-c", "exit 7"]
    assert ex["cmdline"] == "/bin/sh -c exit 7"
    assert ex["exe"] in ("/usr/bin/dash", "/bin/dash")
    assert ex["cwd"] == os.getcwd()
    for key in ("ts", "tid", "ppid", "uid", "gid", "comm", "exec_id", "pexec_id"):
        assert key in ex
    assert ex["ppid"] == os.getpid()
    assert ex["exec_id"] == f"{s.pid}-{ex['exec_id'].split('-')[1]}"
    out = s.one("exit", pid=s.pid)
    assert (out["code"], out["signal"]) == (7, 0)
    assert s.status == 7


def test_fork_child_inherits_the_session_and_exit_reports_a_fatal_signal(stream: Stream) -> None:
    s = stream.python(
        """
        import os, signal, time
        pid = os.fork()
        if pid == 0:
            time.sleep(5)
            os._exit(0)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        """
    )
    fork = s.one("fork", pid=s.pid)
    child = fork["child_pid"]
    assert fork["thread"] is False
    assert fork["child_exec_id"].startswith(f"{child}-")
    died = s.one("exit", pid=child)
    assert died["signal"] == signal.SIGKILL
    assert died["exec_id"] == fork["child_exec_id"]
    assert died["pexec_id"] == fork["exec_id"]
    kill = s.one("kill", pid=s.pid)
    assert (kill["target"], kill["sig"], kill["ret"]) == (child, signal.SIGKILL, 0)
    # Named in the kernel as the signal was generated: the child was gone right after.
    assert kill["target_comm"] == "python3"


def test_a_kill_names_its_target_as_the_kernel_saw_it(stream: Stream, tmp_path: Path) -> None:
    """The target's comm is taken at signal_generate, inside the sender's kill: a target
    renamed just before (auditd, say) is named as it was then, though it is gone at once."""
    s = stream.python(
        """
        import ctypes, os, signal, time
        pid = os.fork()
        if pid == 0:
            ctypes.CDLL(None).prctl(15, b"auditd", 0, 0, 0)  # PR_SET_NAME
            time.sleep(5)
            os._exit(0)
        time.sleep(0.2)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        """
    )
    kill = s.one("kill", pid=s.pid, sig=signal.SIGKILL)
    assert kill["target_comm"] == "auditd", kill


def test_grandchild_after_double_fork_and_setsid_is_still_tracked(stream: Stream) -> None:
    s = stream.python(
        """
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                fd = os.open("/tmp/rwtest/rw-daemon-%d" % os.getpid(), os.O_WRONLY | os.O_CREAT)
                os.close(fd)
                os.unlink("/tmp/rwtest/rw-daemon-%d" % os.getpid())
                os._exit(0)
            os._exit(0)
        time.sleep(0.3)
        """
    )
    setsid = s.one("setsid")
    assert setsid["ret"] == setsid["pid"]  # the new session id is the caller's pid
    grandchild = next(
        e for e in s.of_type("open") if e["path"].startswith("/tmp/rwtest/rw-daemon-")
    )
    assert grandchild["pid"] not in (s.pid, setsid["pid"])
    assert grandchild["ppid"] == setsid["pid"]
    assert grandchild["session"] == s.id


def test_a_thread_is_tracked_and_its_creation_is_a_fork_event(stream: Stream) -> None:
    s = stream.python(
        """
        import os, threading
        def work():
            fd = os.open("/tmp/rwtest/rw-thread", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.close(fd)
        t = threading.Thread(target=work)
        t.start(); t.join()
        """
    )
    thread_fork = next(e for e in s.of_type("fork") if e["thread"])
    op = s.one("open", path="/tmp/rwtest/rw-thread")
    assert op["pid"] == s.pid
    assert op["tid"] == thread_fork["child_pid"] != s.pid


def test_renamed_process_is_still_tracked(stream: Stream) -> None:
    s = stream.python(
        """
        import ctypes, os
        ctypes.CDLL(None).prctl(15, b"kworker/0:1", 0, 0, 0)
        with open("/proc/self/comm", "w") as f:
            f.write("systemd-journal")
        fd = os.open("/tmp/rwtest/rw-renamed", os.O_WRONLY | os.O_CREAT)
        os.close(fd)
        """
    )
    pr = s.one("prctl", option=15)
    assert pr["name"] == "kworker/0:1"
    renames = [e["newcomm"] for e in s.of_type("task_rename")]
    assert "kworker/0:1" in renames and "systemd-journal" in renames
    op = s.one("open", path="/tmp/rwtest/rw-renamed")
    assert op["comm"] == "systemd-journal"
    assert op["session"] == s.id


def test_exec_dash_a_changes_argv0_only(stream: Stream) -> None:
    s = stream.run(["/bin/bash", "-c", "exec -a innocent /bin/true"])
    ex = next(e for e in s.of_type("exec") if e["filename"] == "/bin/true")
    assert ex["argv"][0] == "innocent"
    assert ex["exe"] in ("/usr/bin/true", "/bin/true")


def test_pid_reuse_gives_a_new_exec_id(stream: Stream) -> None:
    first = stream.run(["/bin/true"])
    first_id = first.one("exec", pid=first.pid)["exec_id"]
    # Ask the kernel to hand out the same pid again: the next fork gets last_pid + 1.
    for _ in range(50):
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(first.pid - 1))
        second = stream.run(["/bin/true"])
        if second.pid == first.pid:
            break
    else:
        pytest.fail("could not get the same pid back to test reuse")
    second_id = second.one("exec", pid=second.pid)["exec_id"]
    assert second_id != first_id
    assert second_id.startswith(f"{first.pid}-")


def test_an_untracked_process_produces_no_events(stream: Stream) -> None:
    # This test process is in no session: its own actions must not be on the stream.
    fd = os.open("/tmp/rwtest/rw-untracked", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.close(fd)
    os.rename("/tmp/rwtest/rw-untracked", "/tmp/rwtest/rw-untracked2")
    os.unlink("/tmp/rwtest/rw-untracked2")
    pid = os.fork()
    if pid == 0:
        os.execv("/bin/true", ["/bin/true"])
    os.waitpid(pid, 0)
    seen = stream.collect(lambda evs: False, timeout=1.0)
    assert [e for e in seen if e.get("pid") in (os.getpid(), pid)] == []


def test_exec_arguments_the_kernel_cannot_read_are_taken_from_proc(stream: Stream) -> None:
    # An argument in file-backed memory that the fresh child has not touched cannot be read
    # by the probe (no page fault there): argv once stopped silently before it, hiding it.
    s = stream.python(
        """
        import ctypes, os, tempfile
        f = tempfile.NamedTemporaryFile()
        f.write(b"3\\0")
        f.flush()
        pid = os.fork()
        if pid == 0:
            libc = ctypes.CDLL(None)
            libc.mmap.restype = ctypes.c_void_p
            libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                                  ctypes.c_int, ctypes.c_long]
            page = libc.mmap(None, 4096, 1, 2, f.fileno(), 0)  # PROT_READ, MAP_PRIVATE
            argv = (ctypes.c_char_p * 3)(b"/bin/sleep", ctypes.cast(page, ctypes.c_char_p), None)
            libc.execv(b"/bin/sleep", argv)
            os._exit(127)
        os.waitpid(pid, 0)
        """
    )
    child = s.one("fork", pid=s.pid)["child_pid"]
    ev = s.one("exec", pid=child)
    assert ev["argv"] == ["/bin/sleep", "3"], ev
    assert "truncated" in ev["flags"]


# The probe copies RW_ARGV_ARGS arguments (argv[0] included) and looks one further to know
# whether there were more: only then is the exec `truncated` (and its argv completed from
# /proc/PID/cmdline). /bin/sleep sums its arguments: it lives a fifth of a second, so /proc
# still has it when the collector reads the record.
def test_an_exec_with_exactly_as_many_arguments_as_the_probe_copies_is_whole(
    stream: Stream,
) -> None:
    argv = ["/bin/sleep", *["0.01"] * (layout.ARGV_ARGS - 1)]
    s = stream.run(argv)
    ev = s.one("exec", pid=s.pid)
    assert ev["argv"] == argv
    assert "truncated" not in ev["flags"], ev["flags"]


def test_an_exec_with_one_argument_more_is_truncated_and_completed_from_proc(
    stream: Stream,
) -> None:
    argv = ["/bin/sleep", *["0.01"] * layout.ARGV_ARGS]
    s = stream.run(argv)
    ev = s.one("exec", pid=s.pid)
    assert "truncated" in ev["flags"], ev["flags"]
    assert ev["argv"] == argv


def test_a_running_process_a_selector_matches_is_adopted_by_the_proc_scan(tmp_path: Path) -> None:
    # A collector that starts after the agent finds it in /proc: registered in the kernel,
    # and announced with an exec event that says where it came from. Beside it runs a
    # process whose comm is not UTF-8 (any task may name itself so): it must not stop the scan.
    require_root()
    name = f"rw-scan-{os.getpid()}"[:15]
    agent_exe = tmp_path / name
    shutil.copy("/bin/sleep", agent_exe)  # its comm is the file's name
    agent = subprocess.Popen([str(agent_exe), "30"], cwd=tmp_path)
    odd = subprocess.Popen(["/usr/bin/python3", "-S", "-c",
                            "import ctypes, time\n"
                            "ctypes.CDLL(None).prctl(15, b'rw-\\xff\\xfe-odd', 0, 0, 0)\n"
                            "time.sleep(30)\n"])  # fmt: skip
    cfg = Config(events_endpoint=f"ipc://{tmp_path}/events.sock", control_endpoint="",
                 adopt_comms=[name], policies_dir=str(tmp_path / "policies.d"))  # fmt: skip
    col = None
    try:
        deadline = time.monotonic() + 10
        while procfs.comm(odd.pid) != "rw-\ufffd\ufffd-odd" or procfs.comm(agent.pid) != name:
            assert time.monotonic() < deadline, "the test's processes did not start"
            time.sleep(0.01)
        try:
            col = Collector(cfg)
        except Exception as exc:
            pytest.fail(f"the collector could not load its probes: {exc}")
        sub = bus.Subscriber(cfg.events_endpoint)
        for _ in range(100):
            col.pub.drain_subscriptions()
            if sub.wait_ready(20):
                break
        col.setup()
        events = list(sub.events(timeout_ms=500))
        sub.close()
        found = [e for e in events if e["type"] == "exec" and e["pid"] == agent.pid]
        assert len(found) == 1, events
        ev = found[0]
        assert ev["flags"] == ["procfs", "adopted"]
        assert ev["session"] >= layout.ADOPTED_PROCFS_BASE
        assert col.probes.session_of(agent.pid) == ev["session"]
        assert ev["comm"] == name and ev["uid"] == 0
        assert ev["exec_id"] == exec_id(agent.pid, procfs.start_ns(agent.pid))
        assert ev["ppid"] == os.getpid()
        assert ev["pexec_id"] == exec_id(os.getpid(), procfs.start_ns(os.getpid()))
        assert ev["argv"] == [str(agent_exe), "30"] and ev["cmdline"] == f"{agent_exe} 30"
        assert ev["exe"] == ev["filename"] == str(agent_exe)
        assert ev["cwd"] == str(tmp_path)
        start = [e for e in events if e["type"] == "session" and e["session"] == ev["session"]]
        assert start and start[0]["kind"] == "start" and start[0]["root"] == agent.pid
        assert col.probes.session_of(odd.pid) is None
    finally:
        for p in (agent, odd):
            p.kill()
            p.wait()
        if col is not None:
            col.close()
