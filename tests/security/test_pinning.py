"""The kernel side outlives the collector (keep-sensors-on-exit): its maps, egress programs
and tracepoint links are pinned in bpffs, so a collector killed with SIGKILL leaves a
session's egress refused in the kernel and its forks followed; the next collector takes the
pinned state over (the session is still tracked, nothing registered again), and a pin removed
or replaced behind its back is alerted and pinned again.

The monitor is wired by hand here (a collector and an evaluator, no roguewatchd): no
supervisor restarts the collector, so the test decides how long it stays dead."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from roguewatch.host import kernelenv
from roguewatch.respond.cgroups import SessionCgroup
from roguewatch.runtime import launcher, readiness
from roguewatch.sensors import pins
from roguewatch.stream.control import ControlClient, ControlError

from tests.conftest import require_root

pytestmark = pytest.mark.kernel

FORBIDDEN = ("127.0.0.9", 9)  # outside the session's allowlist (127.0.0.1/32)


def _wait(cond: Callable[[], object], timeout: float = 30.0, what: str = "") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what or cond}")


class Monitor:
    """A collector and an evaluator on sockets and state of the test's own."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        run = tmp / "run"
        run.mkdir()
        (tmp / "policies.d").mkdir()
        self.control = f"ipc://{run}/control.sock"
        self.alerts_file = tmp / "alerts.jsonl"
        self.state = tmp / "state"
        self.cfg = tmp / "roguewatchd.yaml"
        self.cfg.write_text(
            f"events_endpoint: ipc://{run}/events.sock\ncontrol_endpoint: {self.control}\n"
            f"alerts_endpoint: ipc://{run}/alerts.sock\nalerts_file: {self.alerts_file}\n"
            f"status_file: ''\npolicies_dir: {tmp}/policies.d\nrules_dirs: []\n"
            f"journald: false\nadopt_users: []\nstate_dir: {self.state}\n"
        )
        self.collector: subprocess.Popen | None = None
        self.evaluator: subprocess.Popen | None = None

    def _start(self, module: str, *extra: str) -> subprocess.Popen:
        r, w = os.pipe()
        with open(self.tmp / "stderr", "a") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", module, "--config", str(self.cfg), "--ready-fd", str(w),
                 *extra],
                pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=err,
            )  # fmt: skip
        os.close(w)
        assert readiness.wait(r, proc, 90), (
            f"{module} did not start: " + (self.tmp / "stderr").read_text()[-2000:]
        )
        return proc

    def start_collector(self) -> None:
        self.collector = self._start("roguewatch.runtime.collectord")

    def start_evaluator(self) -> None:
        # (no enforcement: the kernel's refusal is what is tested, and the agent must live)
        self.evaluator = self._start("roguewatch.runtime.evaluatord", "--no-enforce", "--quiet")

    def kill_collector(self) -> None:
        assert self.collector is not None
        self.collector.send_signal(signal.SIGKILL)
        self.collector.wait()
        self.collector = None

    def request(self, op: str, **kw: object) -> dict:
        ctl = ControlClient(self.control, timeout_ms=5000)
        try:
            return ctl.request(op, **kw)
        finally:
            ctl.close()

    def alerts(self, rule: str) -> list[dict]:
        if not self.alerts_file.exists():
            return []
        out = [json.loads(x) for x in self.alerts_file.read_text().splitlines() if x.strip()]
        return [a for a in out if a["rule"] == rule]

    def pins(self) -> pins.PinSet:
        dirname = self.request("stats")["pins"]["dir"]
        assert dirname, "the collector pinned nothing"
        inst, layout = dirname.split("/")[-2:]
        return pins.PinSet(os.path.dirname(os.path.dirname(dirname)), inst, layout)

    def close(self) -> None:
        if self.collector is not None and self.collector.poll() is None:
            try:
                self.request("stopping")  # a clean end: its pins go with it
            except ControlError:
                pass
            self.collector.terminate()
            try:
                self.collector.wait(30)
            except subprocess.TimeoutExpired:
                self.collector.kill()
        if self.evaluator is not None and self.evaluator.poll() is None:
            self.evaluator.terminate()
            self.evaluator.wait(30)
        # whatever a killed one left pinned
        root = pins.pin_root(create=False)
        pins.PinSet(root, pins.instance_name(str(self.state)), "-").remove()


ACTOR = r"""
import os, socket, sys, time
d, me = sys.argv[1], sys.argv[2]
n = 0
while True:
    cmd_file = os.path.join(d, f"{me}.{n}")
    while not os.path.exists(cmd_file):
        time.sleep(0.01)
    cmd = open(cmd_file).read()
    out = ""
    if cmd == "connect":
        s = socket.socket()
        try:
            s.connect(FORBIDDEN)
            out = "0"
        except OSError as e:
            out = str(e.errno)
        s.close()
    elif cmd == "fork":
        pid = os.fork()
        if pid == 0:
            me, n = "child", -1
        else:
            out = str(pid)
    elif cmd.startswith("cron "):
        with open(cmd[5:], "w") as f:
            f.write("* * * * * root true\n")
        out = "written"
    elif cmd == "exit":
        os._exit(0)
    if out:
        with open(cmd_file + ".tmp", "w") as f:
            f.write(out)
        os.rename(cmd_file + ".tmp", cmd_file + ".out")
    n += 1
""".replace("FORBIDDEN", repr(FORBIDDEN))


class Actor:
    """A process of the session that does what it is told, one command file at a time."""

    def __init__(self, tmp: Path, name: str) -> None:
        self.tmp, self.name, self.n = tmp, name, 0

    def do(self, cmd: str) -> str:
        f = self.tmp / f"{self.name}.{self.n}"
        self.n += 1
        f.write_text(cmd)
        out = Path(f"{f}.out")
        _wait(out.exists, 20, f"{self.name} to {cmd}")
        return out.read_text()


@pytest.fixture
def monitor(tmp_path: Path) -> Iterator[Monitor]:
    require_root()
    m = Monitor(tmp_path)
    try:
        m.start_collector()
        m.start_evaluator()
        yield m
    finally:
        m.close()


@pytest.fixture
def session(monitor: Monitor, tmp_path: Path) -> Iterator[tuple[int, int, Path]]:
    """(root pid, session id, actors' directory): an enforce-mode session of its own cgroup,
    allowed 127.0.0.1/32 only, refused everything else in the kernel."""
    acts = tmp_path / "acts"
    acts.mkdir()
    cg = SessionCgroup.create(f"rwpin-{os.getpid()}")

    def register(pid: int) -> int:
        cg.add(pid)
        reply = monitor.request("register", pid=pid, name="pinned", cgroup=cg.path,
                                mode="enforce", policy={"on_monitor_loss": "continue"})  # fmt: skip
        sid = int(reply["session"])
        monitor.request("attach_egress", session=sid, allow=["127.0.0.1/32"], cgroup=cg.path)
        return sid

    pid, sid = launcher.spawn_in_session(
        ["/usr/bin/python3", "-S", "-c", ACTOR, str(acts), "root"], register
    )
    try:
        yield pid, sid, acts
    finally:
        try:
            cg.kill()
            cg.wait_empty(5)
        except Exception:
            pass
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
        try:
            cg.remove()
        except Exception:
            pass


def _kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_egress_stays_refused_and_the_session_tracked_across_a_collector_kill(
    monitor: Monitor, session: tuple[int, int, Path], tmp_path: Path
) -> None:
    _, sid, acts = session
    root_actor = Actor(acts, "root")
    assert root_actor.do("connect") == str(errno.EPERM)  # refused in the kernel
    assert monitor.request("stats")["pins"]["links"], "tracepoints are not attached by links"
    monitor.kill_collector()
    # No collector at all now: the pinned egress programs still refuse...
    assert root_actor.do("connect") == str(errno.EPERM)
    # ...and the pinned fork tracepoint still follows the session into a new process, which
    # is moved out of the session's cgroup (nothing a restarted collector could find there).
    child = int(root_actor.do("fork"))
    cron = Path(f"/etc/cron.d/rwpin-{os.getpid()}")
    try:
        cg_root = kernelenv.cgroup2_mount()
        assert cg_root
        with open(os.path.join(cg_root, "cgroup.procs"), "w") as f:
            f.write(str(child))
        child_actor = Actor(acts, "child")
        assert child_actor.do("connect") == str(errno.EPERM)
        monitor.start_collector()
        stats = monitor.request("stats")
        assert stats["pins"]["taken_over"], stats["pins"]
        assert stats["pins"]["processes_kept"] >= 1, stats["pins"]
        listed = {s["session"]: s for s in monitor.request("sessions")["sessions"]}
        assert child in listed[f"{sid:x}"]["pids"], listed
        assert root_actor.do("connect") == str(errno.EPERM)
        assert child_actor.do("connect") == str(errno.EPERM)
        # The gap's refusals were kept in the pinned ring and judged once it was read.
        _wait(lambda: [a for a in monitor.alerts("egress_unauthorized_destination")
                       if a["pid"] == child], what="the gap's egress alert")  # fmt: skip
        # The session's cron write, from the process it started while no collector ran.
        assert child_actor.do(f"cron {cron}") == "written"
        hit = _wait(lambda: [a for a in monitor.alerts("persistence_cron_write")
                             if a["session"] == f"{sid:x}" and a["pid"] == child],
                    what="the cron alert")  # fmt: skip
        assert hit[0]["severity"] == "critical"
        # Nothing had to be put back into the session map.
        assert not [a for a in monitor.alerts("roguewatch_tampered")
                    if "untracked_in_session" in a["message"]]  # fmt: skip
    finally:
        cron.unlink(missing_ok=True)
        _kill_quietly(child)


def test_a_pin_removed_or_replaced_is_alerted_and_pinned_again(
    monitor: Monitor, session: tuple[int, int, Path]
) -> None:
    pinset = monitor.pins()
    sessions = os.path.join(pinset.dir, "map__sessions")
    adopt = os.path.join(pinset.dir, "map__adopt_uids")
    want_sessions, want_adopt = pins.pinned_id(sessions), pins.pinned_id(adopt)
    assert want_sessions and want_adopt
    # What an attacker with bpffs access would do: drop the session map's pin (a collector
    # killed next would leave nothing to take over), and put another map in the place of one.
    os.unlink(sessions)
    os.unlink(adopt)
    other = pins.obj_get(os.path.join(pinset.dir, "map__guarded"))
    try:
        pins.obj_pin(other, adopt)
    finally:
        os.close(other)
    tampered = _wait(
        lambda: (
            {a["event"].get("kind") for a in monitor.alerts("roguewatch_tampered")}
            >= {"pin_removed", "pin_replaced"}
            and monitor.alerts("roguewatch_tampered")
        ),
        what="the pin alerts",
    )
    assert all(a["severity"] == "critical" for a in tampered)
    assert any("map__sessions" in a["message"] for a in tampered), tampered
    _wait(lambda: pins.pinned_id(sessions) == want_sessions, what="the session map pinned again")
    assert pins.pinned_id(adopt) == want_adopt


def test_pins_of_another_layout_are_replaced_and_said(tmp_path: Path) -> None:
    """A pinned set of another layout (an older monitor) is never taken for this one."""
    require_root()
    from roguewatch.sensors import bpf

    root = pins.pin_root()
    inst = pins.instance_name(str(tmp_path))
    stale = pins.PinSet(root, inst, pins.layout_name("0" * 24))
    lib = bpf._libbcc()
    fd = lib.bcc_create_map(1, b"rw_test_stale", 4, 4, 1, 0)  # a hash map
    assert fd >= 0
    try:
        stale.publish({"map__sessions": fd})
    finally:
        os.close(fd)
    current = pins.PinSet(root, inst, pins.layout_name("1" * 24))
    try:
        assert current.load() is None
        assert current.remove_stale() == [stale.layout]
        assert not os.path.exists(stale.dir)
    finally:
        current.remove()
