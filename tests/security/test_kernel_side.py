"""Attacks on the kernel side of the monitor from inside a session: leaving the session's
cgroup, touching the probes' maps with bpf(), writing into another process's memory. Each is
refused or seen, a critical alert names it, and the session's later rogue acts are caught."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from roguewatch.host import kernelenv

from tests.conftest import require_root
from tests.harness import ALLOW_LOCAL, Agent, no_service

pytestmark = pytest.mark.kernel


@pytest.fixture(autouse=True)
def _root_and_no_service() -> None:
    require_root()
    no_service()


def test_a_session_task_moved_out_of_its_cgroup_is_still_judged_and_killed(
    agent: Agent, tmp_path: Path
) -> None:
    """The agent cannot write the cgroup filesystem (Landlock), so the move is made for it
    from outside (as a helper process it talked into it would): its egress is still denied
    in the kernel (judged by session, not cgroup), the move is alerted, and the session's
    end kills it wherever it went."""
    flag = tmp_path / "moved"
    root = kernelenv.cgroup2_mount()
    assert root
    moved: dict[str, int] = {}

    def move_it(proc: subprocess.Popen) -> None:
        pid_file = tmp_path / "pid"
        if "pid" in moved or not pid_file.exists():
            return
        pid = int(pid_file.read_text())
        with open(os.path.join(root, "cgroup.procs"), "w") as f:
            f.write(str(pid))
        moved["pid"] = pid
        flag.write_text("1")

    r = agent.run(
        f"""
        with open({str(tmp_path / "pid.tmp")!r}, "w") as f:
            f.write(str(os.getpid()))
        os.rename({str(tmp_path / "pid.tmp")!r}, {str(tmp_path / "pid")!r})  # seen whole
        deadline = time.time() + 10
        while not os.path.exists({str(flag)!r}) and time.time() < deadline:
            time.sleep(0.02)
        cg = [x for x in open("/proc/self/cgroup").read().split() if x.startswith("0::")][0]
        s = socket.socket()
        say(cgroup=cg, connect=attempt(lambda: s.connect(("127.0.0.9", 9))))
        time.sleep(1)
        """,
        policy=ALLOW_LOCAL,
        during=move_it,
    )
    said = r.said()
    assert said.get("cgroup") == "0::/", r.describe()  # it really left its cgroup
    assert said["connect"] == 1, r.describe()  # EPERM: refused in the kernel all the same
    denied = r.one("egress_unauthorized_destination", addr="127.0.0.9")
    assert denied["outcome"] == "denied in kernel"
    # The move is seen (by an untracked mover: recorded, not an escape by the session)...
    assert "survivors now: 0." in r.summary, r.describe()
    assert not os.path.exists(f"/proc/{moved['pid']}"), "the moved task outlived its session"


BPF_ATTACK = r"""
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
# bpf(BPF_MAP_GET_NEXT_ID): the first step to any map of the probes
attr = (ctypes.c_uint32 * 4)(0, 0, 0, 0)
rc = libc.syscall(321, 12, ctypes.byref(attr), 16)
print("after", rc, flush=True)
"""


def test_bpf_from_an_adopted_style_session_is_killed_in_the_kernel(agent: Agent) -> None:
    """With the sandbox off (`refuse: []`, as an adopted agent has no seccomp), the first
    bpf() call completes and its caller dies before a second: no map is ever touched."""
    r = agent.run(
        f"""
        import subprocess
        p = subprocess.run(["/usr/bin/python3", "-S", "-c", {BPF_ATTACK!r}],
                           capture_output=True, text=True)
        say(status=p.returncode, out=p.stdout)
        """,
        policy=ALLOW_LOCAL + "refuse: []\n",
    )
    said = r.said()
    assert said["status"] == -9, r.describe()  # SIGKILL, in the kernel
    assert "after" not in said["out"], said  # it never ran past the call
    alerts = [a for a in r.alerts if a["event"].get("type") == "bpf"]
    assert alerts and "killed" in alerts[0]["event"]["flags"], r.describe()


INJECT = r"""
import ctypes, os, sys
victim = int(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
buf = ctypes.create_string_buffer(8)
local = iovec(ctypes.addressof(buf), 8)
remote = iovec(0x1000, 8)  # an address the victim does not map: EFAULT, nothing written
rc = libc.process_vm_writev(victim, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
print(rc, ctypes.get_errno(), flush=True)
"""


def test_a_process_the_session_writes_into_joins_the_session(agent: Agent, tmp_path: Path) -> None:
    """process_vm_writev into a process outside the session (refuse: [] as an adopted agent
    has it): the target joins the session in the kernel, the write is a critical alert, and
    the session's kill takes the target with it."""
    victim = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        r = agent.run(
            f"""
            import subprocess
            p = subprocess.run(["/usr/bin/python3", "-S", "-c", {INJECT!r},
                                "{victim.pid}"], capture_output=True, text=True)
            say(out=p.stdout, err=p.stderr)
            time.sleep(1)
            """,
            policy=ALLOW_LOCAL + "refuse: []\n",
        )
        alert = r.one("process_memory_injection", target=victim.pid)
        assert alert["severity"] == "critical" and alert["event"]["tainted"] is True, alert
        assert alert["action"] == "kill_session", alert
        deadline = time.monotonic() + 5
        while victim.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert victim.poll() is not None, "the injected process outlived the session"
    finally:
        if victim.poll() is None:
            victim.kill()
        victim.wait()


def _private_control(run: subprocess.Popen):
    """A client of the collector this `roguewatch run` started (its --control argument)."""
    from roguewatch.core import procfs
    from roguewatch.stream.control import ControlClient

    for pid in procfs.pids():
        argv = procfs.cmdline(pid) or []
        if procfs.ppid(pid) == run.pid and "--control" in argv:
            return ControlClient(argv[argv.index("--control") + 1], timeout_ms=5000)
    raise AssertionError("the run's collector was not found")


def test_what_is_undone_in_the_kernel_is_repaired_and_said(agent: Agent, tmp_path: Path) -> None:
    """The agent's entry deleted from the session map and the egress programs detached from
    the cgroup root (done here, from outside, as a root process the agent reached could):
    within a second both are back, each a critical alert, and the agent's next forbidden
    connect is refused in the kernel again."""
    from roguewatch.sensors import bpf

    go = tmp_path / "go"
    done: dict[str, bool] = {}

    def undo(proc: subprocess.Popen) -> None:
        pid_file = tmp_path / "pid"
        if done or not pid_file.exists():
            return
        pid = int(pid_file.read_text())
        client = _private_control(proc)
        try:
            client.request("unregister", pid=pid)
        finally:
            client.close()
        root = os.open(kernelenv.cgroup2_mount() or "/", os.O_RDONLY | os.O_DIRECTORY)
        try:
            assert bpf._detach_all_egress(root) >= 4
        finally:
            os.close(root)
        done["yes"] = True
        go.write_text("1")

    r = agent.run(
        f"""
        with open({str(tmp_path / "pid.tmp")!r}, "w") as f:
            f.write(str(os.getpid()))
        os.rename({str(tmp_path / "pid.tmp")!r}, {str(tmp_path / "pid")!r})  # seen whole
        deadline = time.time() + 10
        while not os.path.exists({str(go)!r}) and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(2.5)  # the reconciler runs once a second
        s = socket.socket()
        say(connect=attempt(lambda: s.connect(("127.0.0.9", 9))))
        """,
        policy=ALLOW_LOCAL,
        during=undo,
    )
    said = r.said()
    kinds = {a["event"]["kind"] for a in r.rule("roguewatch_tampered")}
    assert {"untracked_in_session", "egress_detached"} <= kinds, r.describe()
    assert all(a["severity"] == "critical" for a in r.rule("roguewatch_tampered"))
    assert said["connect"] == 1, r.describe()  # refused in the kernel again
    assert r.one("egress_unauthorized_destination", addr="127.0.0.9")["outcome"] == (
        "denied in kernel"
    )


def test_the_collectors_sockets_removed_or_replaced_are_bound_again_and_said(
    agent: Agent, tmp_path: Path
) -> None:
    """The control socket's file removed and the event socket's replaced by a listener of
    the attacker's (from outside, as a root process the agent reached could): within a
    second the collector binds both again, each a critical alert, and a new client reaches
    the collector, not the impostor."""
    import socket as socketlib

    from roguewatch.core import procfs
    from roguewatch.stream.control import ControlClient

    go = tmp_path / "go"
    done: dict[str, object] = {}

    def undo(proc: subprocess.Popen) -> None:
        if "pinged" in done or not (tmp_path / "ready").exists():
            return
        if done:  # undone: once the reconciler ran, a new client must reach the collector
            if time.monotonic() - done["at"] > 1.8:  # type: ignore[operator]
                client = ControlClient(f"ipc://{done['control']}", timeout_ms=3000)
                try:
                    done["pinged"] = client.request("ping")["pid"]
                finally:
                    client.close()
            return
        for pid in procfs.pids():
            argv = procfs.cmdline(pid) or []
            if procfs.ppid(pid) == proc.pid and "--control" in argv:
                control = argv[argv.index("--control") + 1].removeprefix("ipc://")
                events = argv[argv.index("--events") + 1].removeprefix("ipc://")
                break
        else:
            raise AssertionError("the run's collector was not found")
        os.unlink(control)
        os.unlink(events)
        impostor = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
        impostor.bind(events)
        impostor.listen()
        done.update(control=control, events=events, impostor=impostor, at=time.monotonic(),
                    collector=pid)  # fmt: skip
        go.write_text("1")

    r = agent.run(
        f"""
        open({str(tmp_path / "ready")!r}, "w").close()
        deadline = time.time() + 10
        while not os.path.exists({str(go)!r}) and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(2.5)  # the reconciler runs once a second
        say(ok=1)
        """,
        policy=ALLOW_LOCAL,
        during=undo,
    )
    assert done, r.describe()
    tampered = {a["event"]["kind"]: a for a in r.rule("roguewatch_tampered")}
    assert "socket_removed" in tampered, r.describe()
    assert "socket_replaced" in tampered, r.describe()
    assert tampered["socket_removed"]["event"]["target"] == done["control"]
    assert tampered["socket_replaced"]["event"]["target"] == done["events"]
    assert all(a["severity"] == "critical" for a in tampered.values())
    done["impostor"].close()  # type: ignore[attr-defined]
    assert done.get("pinged") == done["collector"], r.describe()  # the collector answered
    assert "session ended" in r.summary, r.describe()
