"""`roguewatch run`'s sandbox against a root agent: syscalls it refuses (seccomp) fail with
EPERM and are reported, one alert each; what seccomp cannot refuse is seen and undone."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from tests.conftest import require_root
from tests.harness import ALLOW_LOCAL, Agent, no_service

pytestmark = pytest.mark.kernel


@pytest.fixture(autouse=True)
def _root_and_no_service() -> None:
    require_root()
    no_service()


FIND_COLLECTOR = """
def collector():
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            cmd = open(f"/proc/{d}/cmdline", "rb").read()
            ppid = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        if b"roguewatch.runtime.collectord" in cmd and ppid == os.getppid():
            return int(d)
"""


def test_refused_syscalls_fail_with_eperm_and_each_is_an_alert(agent: Agent) -> None:
    """bpf(), io_uring_setup and prlimit64 of the collector: refused, reported, and the
    collector keeps its limits (a limit of 4 open files would have ended it)."""
    r = agent.run(
        FIND_COLLECTOR
        + """
libc = ctypes.CDLL(None, use_errno=True)
def call(*a):
    libc.syscall.restype = ctypes.c_long
    rc = libc.syscall(*a)
    return ctypes.get_errno() if rc < 0 else 0
c = collector()
class rlimit(ctypes.Structure):
    _fields_ = [("cur", ctypes.c_ulong), ("max", ctypes.c_ulong)]
four = rlimit(4, 4)
say(bpf=call(321, 0, 0, 0), uring=call(425, 8, 0),
    prlimit=call(302, c, 7, ctypes.byref(four), 0), own=call(302, 0, 7, 0, 0), collector=c)
time.sleep(1)
say(nofile=open(f"/proc/{c}/limits").read().split("Max open files")[1].split()[0])
""",
        policy=ALLOW_LOCAL,
    )
    said = r.said()
    assert said["bpf"] == said["uring"] == said["prlimit"] == errno.EPERM, r.describe()
    assert said["own"] == 0, said  # its own limits stay the agent's to change
    assert int(said["nofile"]) > 4, said  # the collector's limit is untouched
    refused = {a["event"]["call"] for a in r.rule("sandbox_syscall_refused")}
    assert {"bpf", "io_uring_setup", "prlimit64"} <= refused, r.describe()
    alert = r.rule("sandbox_syscall_refused")[0]
    assert alert["severity"] == "high" and alert["exe"].startswith("/usr/bin/python")
    assert r.status == 0, r.describe()  # the agent keeps running: EPERM, not a kill
    assert "survivors now: 0." in r.summary


def test_an_empty_refuse_list_refuses_nothing(agent: Agent, tmp_path: Path) -> None:
    r = agent.run(
        """
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
rc = libc.syscall(425, 8, 0)  # io_uring_setup(8, NULL): EFAULT, not EPERM
say(uring=ctypes.get_errno() if rc < 0 else 0)
""",
        policy=ALLOW_LOCAL + "refuse: []\n",
    )
    assert r.said()["uring"] == errno.EFAULT, r.describe()
    assert not r.rule("sandbox_syscall_refused")
    assert os.path.exists("/proc/self")  # (nothing to clean up)
