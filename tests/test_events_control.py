"""Signals, process control, the guard around roguewatch itself, and system-level events
(namespaces, mounts, bpf, modules, memfds), from real processes on the real kernel."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from roguewatch.runtime import launcher
from roguewatch.sensors import bpf

from tests.conftest import SCRATCH, Stream

pytestmark = pytest.mark.kernel

SYSTEM_PYTHON = "/usr/bin/python3"
CLONE_NEWUTS = 0x04000000
SIGWINCH = 28
PTRACE_PEEKDATA, PTRACE_ATTACH, PTRACE_DETACH = 2, 16, 17
PR_SET_CHILD_SUBREAPER = 36
SYS_BPF = 321
TRACING = "/sys/kernel/tracing/events/syscalls"

LIBC = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.ptrace.restype = ctypes.c_long
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
"""


def untracked(code: str) -> int:
    """Run a snippet in a plain child of this (untracked) test process; its pid."""
    proc = subprocess.run([SYSTEM_PYTHON, "-S", "-c", LIBC + code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.split()[-1])


def guard_events(stream: Stream, type_: str, sender: int | None = None) -> list[dict]:
    """Guard events of a type on the raw stream (they are in no session), from sender if given."""

    def match(e: dict) -> bool:
        return (
            e["type"] == type_
            and "guard" in e.get("flags", ())
            and (sender is None or e["pid"] == sender)
        )

    evs = stream.collect(lambda evs: any(match(e) for e in evs), timeout=5)
    return [e for e in evs if match(e)]


# -- signals --------------------------------------------------------------------------------


def test_kill_of_a_child_with_sigterm(stream: Stream) -> None:
    s = stream.python(
        """
        import os, signal, time
        pid = os.fork()
        if pid == 0:
            time.sleep(5)
            os._exit(0)
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
        """
    )
    child = s.one("fork", pid=s.pid)["child_pid"]
    kill = s.one("kill", pid=s.pid, call="kill")
    assert (kill["target"], kill["target_tid"], kill["sig"], kill["ret"]) == (
        child,
        0,
        signal.SIGTERM,
        0,
    )


def test_exit_of_a_child_killed_by_sigterm_reports_sigterm(stream: Stream) -> None:
    # The kernel turns a fatal SIG_DFL signal into a group SIGKILL when it is sent: the
    # probes remember what was sent (signal_generate) to report it at the exit.
    s = stream.python(
        """
        import os, signal, time
        pid = os.fork()
        if pid == 0:
            time.sleep(5)
            os._exit(0)
        os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
        assert os.WTERMSIG(status) == signal.SIGTERM
        """
    )
    assert s.status == 0
    child = s.one("fork", pid=s.pid)["child_pid"]
    assert s.one("exit", pid=child)["signal"] == signal.SIGTERM


def test_a_caught_sigterm_then_a_sigkill_reports_sigkill(stream: Stream) -> None:
    s = stream.python(
        """
        import os, signal, time
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, lambda *_: os.write(w, b"t"))
            os.write(w, b"r")
            while True:
                time.sleep(1)
        assert os.read(r, 1) == b"r"
        os.kill(pid, signal.SIGTERM)
        assert os.read(r, 1) == b"t"  # handled: not a death
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WTERMSIG(status) == signal.SIGKILL
        """
    )
    assert s.status == 0
    child = s.one("fork", pid=s.pid)["child_pid"]
    assert s.one("exit", pid=child)["signal"] == signal.SIGKILL


def test_kill_of_a_process_group_keeps_the_negative_target(stream: Stream) -> None:
    s = stream.python(
        """
        import os, signal
        os.setpgid(0, 0)
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        os.kill(-os.getpid(), signal.SIGUSR1)
        """
    )
    kill = s.one("kill", call="kill")
    assert (kill["target"], kill["sig"], kill["ret"]) == (-s.pid, signal.SIGUSR1, 0)


def test_tgkill_through_pthread_kill(stream: Stream) -> None:
    s = stream.python(
        """
        import signal, threading
        signal.signal(signal.SIGUSR1, lambda *a: None)
        signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)
        """
    )
    kill = s.one("kill", call="tgkill")
    assert (kill["target"], kill["target_tid"], kill["sig"], kill["ret"]) == (
        s.pid,
        s.pid,
        signal.SIGUSR1,
        0,
    )


def test_tkill_names_the_thread(stream: Stream) -> None:
    s = stream.python(
        LIBC
        + """
import os, signal
signal.signal(signal.SIGUSR2, lambda *a: None)
assert libc.syscall(200, os.getpid(), signal.SIGUSR2) == 0  # tkill
"""
    )
    kill = s.one("kill", call="tkill")
    assert (kill["target_tid"], kill["sig"], kill["ret"]) == (s.pid, signal.SIGUSR2, 0)


def test_pidfd_send_signal_target_is_resolved_to_the_pid(stream: Stream) -> None:
    s = stream.python(
        """
        import os, signal, time
        pid = os.fork()
        if pid == 0:
            time.sleep(5)
            os._exit(0)
        fd = os.pidfd_open(pid)
        signal.pidfd_send_signal(fd, signal.SIGTERM)
        os.waitpid(pid, 0)
        time.sleep(0.3)  # the fd is still open: the collector can read its fdinfo
        os.close(fd)
        """
    )
    child = s.one("fork", pid=s.pid)["child_pid"]
    kill = s.one("kill", call="pidfd_send_signal")
    assert (kill["target"], kill["sig"], kill["ret"]) == (child, signal.SIGTERM, 0)


def test_pidfd_send_signal_target_survives_a_lagging_collector(
    stream: Stream, collector: launcher.Watcher
) -> None:
    cpid = collector.proc.pid
    register = launcher.register_with(collector.control)

    def register_then_pause(pid: int) -> int:
        sid = register(pid)
        os.kill(cpid, signal.SIGSTOP)  # the collector lags: records wait in the ring buffer
        return sid

    code = """
import os, signal, time
pid = os.fork()
if pid == 0:
    time.sleep(5)
    os._exit(0)
fd = os.pidfd_open(pid)
signal.pidfd_send_signal(fd, signal.SIGTERM)
os.close(fd)
os.waitpid(pid, 0)
"""
    try:
        pid, sid = launcher.spawn_in_session([SYSTEM_PYTHON, "-S", "-c", code], register_then_pause)
        _, status = os.waitpid(pid, 0)
    finally:
        os.kill(cpid, signal.SIGCONT)
    assert status == 0
    evs = stream.collect(lambda evs: any(e["type"] == "exit" and e["pid"] == pid for e in evs), 5)
    mine = [e for e in evs if e.get("session") == sid]
    child = next(e["child_pid"] for e in mine if e["type"] == "fork" and e["pid"] == pid)
    kill = next(e for e in mine if e["type"] == "kill" and e["call"] == "pidfd_send_signal")
    assert kill["target"] == child


def test_rt_sigaction_reports_ignore_and_handlers_but_not_the_default(stream: Stream) -> None:
    s = stream.python(
        """
        import signal
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, lambda *a: None)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # not one of HUP, INT, TERM: filtered
        """
    )
    assert [(e["handler"], e["ret"]) for e in s.of_type("rt_sigaction", sig=15)] == [("SIG_IGN", 0)]
    assert [(e["handler"], e["ret"]) for e in s.of_type("rt_sigaction", sig=1)] == [("handler", 0)]
    assert s.of_type("rt_sigaction", handler="SIG_DFL") == []
    assert {e["sig"] for e in s.of_type("rt_sigaction")} <= {1, 2, 15}


# -- process control ------------------------------------------------------------------------


def test_setsid_returns_the_new_session_id(stream: Stream) -> None:
    s = stream.python(
        """
        import os
        pid = os.fork()
        if pid == 0:
            os.setsid()
            os._exit(0)
        os.waitpid(pid, 0)
        """
    )
    child = s.one("fork", pid=s.pid)["child_pid"]
    ev = s.one("setsid")
    assert (ev["pid"], ev["ret"]) == (child, child)


def test_setpgid_of_a_child(stream: Stream) -> None:
    s = stream.python(
        """
        import os
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.read(r, 1)
            os._exit(0)
        os.setpgid(pid, pid)
        os.write(w, b"x")
        os.waitpid(pid, 0)
        """
    )
    child = s.one("fork", pid=s.pid)["child_pid"]
    ev = s.one("setpgid", pid=s.pid)
    assert (ev["target"], ev["pgid"], ev["ret"]) == (child, child, 0)


def test_prctl_set_child_subreaper(stream: Stream) -> None:
    s = stream.python(LIBC + "assert libc.prctl(36, 1, 0, 0, 0) == 0\n")
    ev = s.one("prctl", option=PR_SET_CHILD_SUBREAPER)
    assert (ev["arg2"], ev["ret"], ev["pid"]) == (1, 0, s.pid)
    assert "name" not in ev


def test_ptrace_attach_to_a_child(stream: Stream) -> None:
    s = stream.python(
        LIBC
        + """
import os, signal, time
pid = os.fork()
if pid == 0:
    time.sleep(5)
    os._exit(0)
assert libc.ptrace(16, pid, None, None) == 0, ctypes.get_errno()
os.waitpid(pid, 0)
libc.ptrace(17, pid, None, None)
os.kill(pid, signal.SIGKILL)
os.waitpid(pid, 0)
"""
    )
    assert s.status == 0
    child = s.one("fork", pid=s.pid)["child_pid"]
    att = s.one("ptrace", request=PTRACE_ATTACH)
    assert (att["target"], att["ret"], att["pid"], att["flags"]) == (child, 0, s.pid, [])
    assert s.one("ptrace", request=PTRACE_DETACH)["target"] == child


# -- the guard ------------------------------------------------------------------------------


def test_signal_to_the_collector_from_an_untracked_process_is_a_guard_event(
    stream: Stream, collector: launcher.Watcher
) -> None:
    cpid = collector.proc.pid
    # An untracked sender's ppid is read from /proc when the record is decoded: it stays
    # alive a moment so that is possible (one that exits at once gets ppid 0, documented).
    sender = untracked(
        f"import os, time; os.kill({cpid}, {SIGWINCH}); print(os.getpid()); time.sleep(0.5)"
    )
    evs = guard_events(stream, "kill", sender)
    assert collector.proc.poll() is None
    assert len(evs) == 1, evs
    ev = evs[0]
    assert (ev["session"], ev["target"], ev["sig"], ev["call"]) == (0, cpid, SIGWINCH, "generate")
    assert ev["flags"] == ["guard"]
    assert ev["comm"] == "python3"
    assert ev["ppid"] == os.getpid()


def test_guard_signal_event_ret_is_the_result_of_the_kill(
    stream: Stream, collector: launcher.Watcher
) -> None:
    cpid = collector.proc.pid
    sender = untracked(f"import os; os.kill({cpid}, {SIGWINCH}); print(os.getpid())")
    (ev,) = guard_events(stream, "kill", sender)
    assert ev["ret"] == 0


def test_ptrace_of_the_collector_from_an_untracked_process_is_a_guard_event(
    stream: Stream, collector: launcher.Watcher
) -> None:
    cpid = collector.proc.pid
    sender = untracked(
        f"r = libc.ptrace({PTRACE_PEEKDATA}, {cpid}, None, None)\nimport os; print(os.getpid())"
    )
    evs = guard_events(stream, "ptrace", sender)
    assert collector.proc.poll() is None
    assert len(evs) == 1, evs
    ev = evs[0]
    assert (ev["session"], ev["request"], ev["target"]) == (0, PTRACE_PEEKDATA, cpid)
    assert ev["ret"] < 0  # not a tracer of the collector: -ESRCH
    assert ev["flags"] == ["guard"]


def test_a_session_process_signalling_the_collector_is_killed_in_the_kernel(
    stream: Stream, collector: launcher.Watcher
) -> None:
    cpid = collector.proc.pid
    s = stream.python(f"import os, time\nos.kill({cpid}, {SIGWINCH})\ntime.sleep(5)")
    assert collector.proc.poll() is None
    assert s.status == 128 + 9, "the sender died of SIGKILL sent from the probe"
    kill = s.one("kill", call="kill")
    assert (kill["target"], kill["sig"], kill["ret"]) == (cpid, SIGWINCH, 0)
    assert set(kill["flags"]) == {"guard", "killed"}
    guard = s.one("kill", call="generate")
    assert (guard["session"], guard["pid"], guard["target"], guard["sig"]) == (
        s.id,
        s.pid,
        cpid,
        SIGWINCH,
    )
    assert "guard" in guard["flags"]
    assert s.one("exit", pid=s.pid)["signal"] == 9


# -- namespaces, mounts ---------------------------------------------------------------------


def test_unshare_of_the_uts_namespace(stream: Stream) -> None:
    s = stream.python(LIBC + f"assert libc.unshare({CLONE_NEWUTS}) == 0\n")
    ev = s.one("unshare", pid=s.pid)
    assert (ev["ns_flags"], ev["ret"]) == (CLONE_NEWUTS, 0)


def test_unshare_command_forking_into_a_new_uts_namespace(stream: Stream) -> None:
    s = stream.run(["/usr/bin/unshare", "--fork", "--uts", "/bin/true"])
    assert s.status == 0
    ev = s.one("unshare", pid=s.pid)
    assert ev["ns_flags"] & CLONE_NEWUTS
    assert ev["ret"] == 0
    child = s.one("fork", pid=s.pid)["child_pid"]
    assert s.one("exec", pid=child)["filename"] == "/bin/true"


def test_setns_into_a_uts_namespace(stream: Stream) -> None:
    s = stream.python(
        LIBC
        + f"""
import os
fd = os.open("/proc/self/ns/uts", os.O_RDONLY)
assert libc.setns(fd, 0) == 0
assert libc.setns(fd, {CLONE_NEWUTS}) == 0
print(fd)
"""
    )
    evs = s.of_type("setns")
    assert [(e["nstype"], e["ret"]) for e in evs] == [(0, 0), (CLONE_NEWUTS, 0)]
    assert evs[0]["fd"] == evs[1]["fd"] >= 3


def test_mount_and_umount_of_a_tmpfs_in_a_private_namespace(stream: Stream) -> None:
    os.makedirs(f"{SCRATCH}/mnt", exist_ok=True)
    s = stream.shell(
        "unshare -m --propagation private sh -c "
        f"'mount -t tmpfs rwtest {SCRATCH}/mnt && umount {SCRATCH}/mnt'"
    )
    assert s.status == 0
    mnt = s.one("mount", target=f"{SCRATCH}/mnt", umount=False)
    assert (mnt["source"], mnt["fstype"], mnt["ret"]) == ("rwtest", "tmpfs", 0)
    umnt = s.one("mount", target=f"{SCRATCH}/mnt", umount=True)
    assert (umnt["ret"], umnt["mount_flags"]) == (0, 0)
    assert s.one("unshare")["ns_flags"] & 0x00020000  # CLONE_NEWNS


# -- bpf, memfd, modules ---------------------------------------------------------------------


def test_bpf_syscall_with_an_invalid_command(stream: Stream) -> None:
    s = stream.python(LIBC + f"print(libc.syscall({SYS_BPF}, 9999, None, 0))\n")
    ev = s.one("bpf", pid=s.pid)
    assert ev["cmd"] == 9999
    assert ev["ret"] == -22  # EINVAL


def test_memfd_create(stream: Stream) -> None:
    s = stream.python(
        """
        import os
        fd = os.memfd_create("payload")
        os.write(fd, b"\\x7fELF")
        """
    )
    ev = s.one("memfd_create", pid=s.pid)
    assert ev["name"] == "payload"
    assert ev["memfd_flags"] == os.MFD_CLOEXEC
    assert ev["ret"] >= 3


def test_finit_module_attempt(stream: Stream) -> None:
    if not os.path.exists(f"{TRACING}/sys_enter_finit_module"):
        # This kernel cannot load modules (CONFIG_MODULES unset): there is nothing to trace,
        # and the probe image must have been built without those programs, saying so.
        _, missing = bpf.optional_macros()
        assert "syscalls:sys_enter_finit_module" in missing, missing
        return
    s = stream.python(
        LIBC
        + """
import os
fd = os.open("/dev/null", os.O_RDONLY)
print(libc.syscall(313, fd, b"opt=1", 0))  # finit_module
"""
    )
    ev = s.one("module_load", pid=s.pid)
    assert (ev["call"], ev["params"]) == ("finit_module", "opt=1")
    assert ev["fd"] >= 3
    assert ev["ret"] < 0


def test_collector_survived_the_guard_tests(collector: launcher.Watcher) -> None:
    time.sleep(0.1)
    assert collector.proc.poll() is None


def test_a_guarded_pid_reused_by_an_ordinary_process_is_not_guarded(stream: Stream) -> None:
    # A guarded task that exits leaves no mark: its pid, handed out again, is an ordinary
    # process that a session may signal (and whose writes are not taken for roguewatch's).
    old = subprocess.Popen(["/bin/sleep", "30"])
    stream.watcher.control.request("guard", pid=old.pid)
    old.kill()
    old.wait()
    for _ in range(50):
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(old.pid - 1))
        new = subprocess.Popen(["/bin/sleep", "30"])
        if new.pid == old.pid:
            break
        new.kill()
        new.wait()
    else:
        pytest.fail("could not get the guarded pid back")
    try:
        s = stream.python(f"import os, signal\nos.kill({new.pid}, signal.SIGUSR1)")
        assert s.status == 0, "the session was killed for signalling an ordinary process"
        assert not [e for e in s.of_type("kill") if "guard" in e["flags"]]
    finally:
        new.kill()
        new.wait()
