"""Fail closed, and recover whole: a component of the monitor killed (kill -9) is noticed, a
critical alert says so, the sessions freeze until it is back, and then everything is as it
was: the sessions registered again under their own ids, every monitor pid guarded again, the
gap judged against the last good baseline, and the session's later rogue acts still caught."""

from __future__ import annotations

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
from roguewatch.respond.cgroups import CgroupError, SessionCgroup
from roguewatch.runtime import launcher
from roguewatch.stream.control import ControlClient, ControlError

from tests.conftest import require_root
from tests.harness import ALLOW_LOCAL, Agent, no_service
from tests.test_service import Daemon

pytestmark = pytest.mark.kernel

AGENT = "/usr/bin/python3"
SIGTERM_BIT = 1 << (signal.SIGTERM - 1)


def _wait(cond: Callable[[], object], timeout: float = 30.0, what: str = "") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what or cond}")


def _alerts(d: Daemon) -> list[dict]:
    if not d.alerts_file.exists():
        return []
    return [json.loads(x) for x in d.alerts_file.read_text().splitlines() if x.strip()]


def _rule(d: Daemon, rule: str) -> list[dict]:
    return [a for a in _alerts(d) if a["rule"] == rule]


def _frozen(cg: SessionCgroup) -> bool:
    return cg.events().get("frozen") == "1"


class ServiceSession:
    """A session of the service's (registered as `roguewatch run` registers one): a cgroup of
    its own, a Python agent that writes a cron file when ``go`` appears."""

    def __init__(self, d: Daemon, tmp: Path, name: str) -> None:
        self.cron = Path(f"/etc/cron.d/rwsec-{os.getpid()}-{name}")
        self.go = tmp / f"{name}.go"
        self.cg = SessionCgroup.create(f"rwsec-{name}-{os.getpid()}")
        ctl = ControlClient(d.control)
        code = (
            "import os, time\n"
            f"while not os.path.exists({str(self.go)!r}):\n    time.sleep(0.02)\n"
            f"open({str(self.cron)!r}, 'w').write('* * * * * root true\\n')\n"
            "time.sleep(30)\n"
        )
        cg = self.cg

        def register(pid: int) -> int:
            cg.add(pid)
            reply = ctl.request("register", pid=pid, name=name, cgroup=cg.path, mode="enforce",
                                policy={"egress_allow": ["127.0.0.1/32"]})  # fmt: skip
            return int(reply["session"])

        self.pid, self.sid = launcher.spawn_in_session([AGENT, "-S", "-c", code], register)
        ctl.close()

    def close(self) -> None:
        self.cron.unlink(missing_ok=True)
        try:
            self.cg.thaw()
        except Exception:
            pass
        try:
            self.cg.kill()
            self.cg.wait_empty(5)
            self.cg.remove()
        except Exception:
            pass
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Daemon]:
    require_root()
    d = Daemon(tmp_path)
    d.start()
    yield d
    d.kill()


def _sessions(d: Daemon) -> list[str]:
    try:
        ctl = ControlClient(d.control, timeout_ms=2000)
        try:
            return [s["session"] for s in ctl.request("sessions")["sessions"]]
        finally:
            ctl.close()
    except ControlError:
        return []


def _stats(d: Daemon) -> dict:
    try:
        ctl = ControlClient(d.control, timeout_ms=2000)
        try:
            return ctl.request("stats")
        finally:
            ctl.close()
    except ControlError:
        return {}


def _standing(d: Daemon, pid: int) -> str:
    ctl = ControlClient(d.control, timeout_ms=2000)
    try:
        return ctl.request("standing", pid=pid)["standing"]
    finally:
        ctl.close()


def _sigterm_blocked_everywhere(pids: list[int]) -> set[tuple[int, int]]:
    """Every thread of every pid blocks SIGTERM; the (pid, tid) of each."""
    n = set()
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
            except OSError:
                continue  # a thread that just ended
            blk = int(next(x for x in status.splitlines() if x.startswith("SigBlk:"))[7:], 16)
            assert blk & SIGTERM_BIT, f"thread {tid} of pid {pid} takes SIGTERM"
            n.add((pid, int(tid)))
    return n


@pytest.mark.parametrize("component", ["collector", "evaluator"])
def test_a_killed_component_freezes_the_sessions_until_it_is_back(
    service: Daemon, tmp_path: Path, component: str
) -> None:
    s = ServiceSession(service, tmp_path, f"lost-{component}")
    try:
        before = service.children()
        threads_before = _sigterm_blocked_everywhere(
            [service.proc.pid, service.service_pid() or 0, *before.values()]
        )
        os.kill(before[component], signal.SIGKILL)
        # Noticed, alerted critical, and the session is frozen while nobody watches it.
        _wait(lambda: _frozen(s.cg), what="the session's freeze")
        lost = _wait(lambda: _rule(service, "roguewatch_monitor_lost"), what="the loss alert")
        assert lost[0]["severity"] == "critical", lost[0]
        assert component in lost[0]["message"] and "frozen" in lost[0]["outcome"], lost[0]
        # Back: restarted, the session still registered under its id, thawed.
        _wait(lambda: service.children().get(component) not in (None, before[component]),
              what=f"a new {component}")  # fmt: skip
        _wait(lambda: _rule(service, "roguewatch_coverage_restored"), what="the recovery")
        assert not _frozen(s.cg)
        assert f"{s.sid:x}" in _sessions(service)
        # Every monitor pid is guarded in the (maybe new) collector again.
        now = service.children()
        for pid in [service.proc.pid, service.service_pid(), *now.values()]:
            assert _standing(service, pid or 0) == "MONITOR", pid
        # The session's next rogue act is caught, and undone.
        s.go.write_text("1")
        cron = _wait(
            lambda: [a for a in _rule(service, "persistence_cron_write")
                     if a["session"] == f"{s.sid:x}"],
            what="the cron alert",
        )  # fmt: skip
        assert cron[0]["severity"] == "critical"
        _wait(lambda: not s.cron.exists(), what="the cron file's removal")
        # The evaluator's own writes are never alerts, whoever restarted.
        evaluator = now["evaluator"]
        assert not [
            a
            for a in _alerts(service)
            if a["category"] == "oversight_tampering" and a["pid"] == evaluator
        ]
        # Threads made since (the restore's worker, a new component's) block SIGTERM too.
        threads_after = _sigterm_blocked_everywhere(
            [service.proc.pid, service.service_pid() or 0, *now.values()]
        )  # fmt: skip
        # (threads started after every gate: the new component's, the restore's worker)
        assert len(threads_before) > 4 and threads_after - threads_before
    finally:
        s.close()


def test_roguewatchd_killed_is_restarted_by_its_supervisor_and_takes_its_sessions_back(
    service: Daemon, tmp_path: Path
) -> None:
    s = ServiceSession(service, tmp_path, "lost-service")
    try:
        old = service.service_pid()
        assert old is not None
        os.kill(old, signal.SIGKILL)
        _wait(lambda: _frozen(s.cg), what="the session's freeze by the supervisor")
        lost = _wait(lambda: _rule(service, "roguewatch_monitor_lost"), what="the loss alert")
        assert "roguewatchd" in lost[0]["message"] and lost[0]["severity"] == "critical"
        _wait(lambda: service.service_pid() not in (None, old), what="a new roguewatchd")
        _wait(lambda: _rule(service, "roguewatch_coverage_restored"), what="the recovery")
        assert not _frozen(s.cg)
        assert f"{s.sid:x}" in _sessions(service)
        assert _standing(service, service.service_pid() or 0) == "MONITOR"
        assert _standing(service, service.proc.pid) == "MONITOR"  # the supervisor too
        s.go.write_text("1")
        _wait(lambda: [a for a in _rule(service, "persistence_cron_write")
                       if a["session"] == f"{s.sid:x}"], what="the cron alert")  # fmt: skip
        _wait(lambda: not s.cron.exists(), what="the cron file's removal")
        assert service.stop() == 0
    finally:
        s.close()


def test_a_cron_file_written_while_no_monitor_ran_is_judged_against_the_last_baseline(
    tmp_path: Path,
) -> None:
    """roguewatchd and its supervisor both killed: nothing restarts it. A cron file written
    then is no baseline for the next start: it is found, alerted and removed."""
    require_root()
    d = Daemon(tmp_path)
    cron = Path(f"/etc/cron.d/rwsec-{os.getpid()}-gap")
    d.start()
    try:
        _wait(lambda: _stats(d).get("baseline_ready"), what="the first baseline")
        service = d.service_pid()
        d.proc.kill()  # the supervisor first (it would restart the service)
        d.proc.wait()
        os.kill(service or 0, signal.SIGKILL)
        _wait(lambda: not d.children(), what="the components' end")
        _wait(lambda: not any(str(service) == p for p in os.listdir("/proc")), what="its end")
        cron.write_text("* * * * * root true\n")  # in the gap
        d.start()
        hit = _wait(
            lambda: [a for a in _rule(d, "persistence_cron_write")
                     if a["event"].get("path") == str(cron)],
            what="the gap's alert",
        )  # fmt: skip
        assert hit[0]["event"].get("change") == "gap", hit[0]
        _wait(lambda: not cron.exists(), what="the gap's cron file removed")
        assert d.stop() == 0
    finally:
        cron.unlink(missing_ok=True)
        d.kill()


def test_the_unit_fails_closed_after_a_death_and_not_after_a_stop(tmp_path: Path) -> None:
    """systemd's side: ``Restart=always`` brings the service back, and its ExecStopPost
    (roguewatchd --fail-closed) holds the sessions when it died, not when it was stopped."""
    require_root()
    unit = (Path(__file__).resolve().parents[2] / "systemd/roguewatchd.service").read_text()
    assert "Restart=always" in unit and "ExecStopPost=/usr/bin/roguewatchd --fail-closed" in unit
    from roguewatch.core import sessionstate

    d = Daemon(tmp_path)
    cg = SessionCgroup.create(f"rwsec-unit-{os.getpid()}")
    proc = subprocess.Popen(["sleep", "60"])
    try:
        cg.add(proc.pid)
        sessionstate.write(str(tmp_path / "state"), sessionstate.Pinned(
            [sessionstate.PinnedSession(session=0xABC, root=proc.pid, cgroup=cg.path,
                                        pids=[proc.pid])], clean=False))  # fmt: skip

        def stop_post(result: str) -> subprocess.CompletedProcess:
            env = {**os.environ, "SERVICE_RESULT": result, "EXIT_CODE": "killed",
                   "EXIT_STATUS": "KILL"}  # fmt: skip
            return subprocess.run([sys.executable, "-m", "roguewatch.runtime.service",
                                   "--config", str(d.cfg), "--fail-closed"],
                                  env=env, capture_output=True, text=True, timeout=60)  # fmt: skip

        assert stop_post("success").returncode == 0
        assert not _frozen(cg) and not (tmp_path / "state/failclosed.json").exists()
        p = stop_post("signal")
        assert p.returncode == 0, p.stderr
        _wait(lambda: _frozen(cg), what="the freeze")
        assert (tmp_path / "state/failclosed.json").exists()
        lost = _rule(d, "roguewatch_monitor_lost")
        assert lost and "signal" in lost[0]["message"], _alerts(d)
        # The service that starts next releases it, once its collector holds the session.
        d.start()
        _wait(lambda: not _frozen(cg), what="the release by the next service")
        assert "abc" in _sessions(d)
        assert d.stop() == 0
    finally:
        d.kill()
        try:
            cg.thaw()
        except Exception:
            pass
        proc.kill()
        proc.wait()
        cg.remove()


@pytest.mark.parametrize("component", ["collector", "evaluator"])
def test_run_holds_its_session_while_its_own_monitor_is_gone_and_recovers(
    agent: Agent, tmp_path: Path, component: str
) -> None:
    require_root()
    no_service()
    cron = f"/etc/cron.d/rwsec-{os.getpid()}-run-{component}"
    go = tmp_path / "go"
    pid_file = tmp_path / "pid"
    state: dict[str, object] = {}
    module = {"collector": "roguewatch.runtime.collectord",
              "evaluator": "roguewatch.runtime.evaluatord"}[component]  # fmt: skip

    def during(proc: subprocess.Popen) -> None:
        if "killed" not in state:
            if not pid_file.exists():
                return
            for p in os.listdir("/proc"):
                try:
                    with open(f"/proc/{p}/stat") as f:
                        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                    cmd = Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")
                except (OSError, ValueError):
                    continue
                if ppid == proc.pid and module in cmd:
                    os.kill(int(p), signal.SIGKILL)
                    state["killed"] = int(p)
                    agent_pid = int(pid_file.read_text())
                    rel = Path(f"/proc/{agent_pid}/cgroup").read_text().split("0::", 1)[1]
                    state["cg"] = SessionCgroup(f"{kernelenv.cgroup2_mount()}{rel.strip()}")
            return
        cg = state["cg"]
        assert isinstance(cg, SessionCgroup)
        try:
            if _frozen(cg) or Path(cg.path, "cgroup.freeze").read_text().strip() == "1":
                state["frozen"] = True
        except (OSError, CgroupError):
            pass  # the session ended
        if "roguewatch_coverage_restored" in (tmp_path / "stderr").read_text():
            go.write_text("1")

    try:
        r = agent.run(
            f"""
            open({str(pid_file)!r}, "w").write(str(os.getpid()))
            while not os.path.exists({str(go)!r}):
                time.sleep(0.02)
            s = socket.socket()
            say(connect=attempt(lambda: s.connect(("127.0.0.9", 9))))
            open({cron!r}, "w").write("* * * * * root true\\n")  # killed for it
            # (a session that ended within a second of the restart could end before the new
            # pipeline delivered its last alerts: a known gap, see the issue note)
            time.sleep(4)
            """,
            policy=ALLOW_LOCAL,
            during=during,
            timeout=90,
        )
        assert state.get("frozen"), r.describe()
        lost = r.one("roguewatch_monitor_lost")
        assert lost["severity"] == "critical" and component in lost["message"], lost
        r.one("roguewatch_coverage_restored")
        r.one("persistence_cron_write")
        assert r.said()["connect"] == 1, r.describe()  # EPERM: denied in the kernel again
        assert not os.path.exists(cron)
        assert "survivors now: 0." in r.summary, r.describe()
        assert "Traceback" not in r.stderr, r.describe()
    finally:
        Path(cron).unlink(missing_ok=True)


LOAD_AGENT = """
import os, signal, subprocess, sys, time
stop, loadgen, prefix = sys.argv[1], sys.argv[2], sys.argv[3]
# the load: 50,000 kill(pid, 0) events a second, from a child in the session
load = subprocess.Popen([loadgen, "rate", "kill", "50000", "100000000"],
                        stdout=subprocess.DEVNULL)
i, last = 0, 0.0
while not os.path.exists(stop):
    time.sleep(0.005)
    if time.monotonic() - last > 0.02:  # a cron file every 20 ms, each by a child of its own
        last, i = time.monotonic(), i + 1
        if os.fork() == 0:
            with open(f"{prefix}{i}", "w") as f:
                f.write("* * * * * root true\\n")
            os._exit(0)
        os.waitpid(-1, os.WNOHANG)
load.kill()
load.wait()
"""


@pytest.fixture(scope="module")
def loadgen(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("loadgen") / "loadgen"
    src = Path(__file__).resolve().parents[2] / "bench/loadgen.c"
    subprocess.run(["gcc", "-O2", "-o", str(out), str(src)], check=True)
    return str(out)


@pytest.mark.parametrize("component", ["collector", "evaluator", "roguewatchd"])
def test_a_component_killed_under_load_is_alerted_the_session_froze_and_no_gap_write_stays(
    service: Daemon, tmp_path: Path, component: str, loadgen: str
) -> None:
    """A session floods the probes with 50,000 events a second (bench/loadgen.c) and drops a
    cron file every 20 ms while
    one component is killed: the loss is alerted critical with the session frozen, and once
    it is over not one of the cron files (those written while nothing watched among them)
    is left."""
    prefix = f"/etc/cron.d/rwsec-load-{os.getpid()}-{component}-"
    stop = tmp_path / "stop"
    cg = SessionCgroup.create(f"rwsec-load-{component}-{os.getpid()}")
    ctl = ControlClient(service.control)

    def register(pid: int) -> int:
        cg.add(pid)
        return int(ctl.request("register", pid=pid, name="load", cgroup=cg.path,
                               mode="enforce", policy={})["session"])  # fmt: skip

    def left() -> list[str]:
        return [n for n in os.listdir("/etc/cron.d") if f"/etc/cron.d/{n}".startswith(prefix)]

    argv = [AGENT, "-S", "-c", LOAD_AGENT, str(stop), loadgen, prefix]
    pid, sid = launcher.spawn_in_session(argv, register)
    ctl.close()
    try:
        _wait(lambda: _rule(service, "persistence_cron_write"), what="the load's first alert")
        victim = (service.service_pid() if component == "roguewatchd"
                  else service.children()[component])  # fmt: skip
        os.kill(victim or 0, signal.SIGKILL)
        lost = _wait(lambda: _rule(service, "roguewatch_monitor_lost"), what="the loss alert")
        assert lost[0]["severity"] == "critical" and "frozen" in lost[0]["outcome"], lost[0]
        _wait(lambda: _rule(service, "roguewatch_coverage_restored"), timeout=60,
              what="the recovery")  # fmt: skip
        assert not _frozen(cg)
        assert f"{sid:x}" in _sessions(service)
        stop.write_text("1")
        os.waitpid(pid, 0)
        _wait(lambda: not left(), timeout=60, what=f"every cron file removed ({left()})")
    finally:
        stop.write_text("1")
        for n in left():
            os.unlink(f"/etc/cron.d/{n}")
        try:
            cg.thaw()
            cg.kill()
            cg.wait_empty(5)
            cg.remove()
        except Exception:
            pass
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


def test_a_collector_moved_into_a_frozen_cgroup_is_thawed_and_said(service: Daemon) -> None:
    """The cgroup filesystem is out of a `run` agent's reach (Landlock) and a session's mover
    dies in the kernel (guard): this is what an operator's slip, or a helper outside every
    session, would do. The service thaws it and raises a critical alert."""
    root = kernelenv.cgroup2_mount()
    assert root
    cg = SessionCgroup(os.path.join(root, f"rwsec-frozen-{os.getpid()}"))
    os.mkdir(cg.path)
    collector = service.children()["collector"]
    try:
        cg.add(collector)
        cg.set_frozen(True)
        hit = _wait(lambda: _rule(service, "roguewatch_component_frozen"), what="the alert")
        assert hit[0]["severity"] == "critical" and "collector" in hit[0]["message"], hit[0]
        assert hit[0]["outcome"] == "thawed", hit[0]
        _wait(lambda: not _frozen(cg), what="the thaw")
        assert _stats(service).get("events", 0) > 0  # it answers again
    finally:
        cg.set_frozen(False)
        with open(os.path.join(root, "cgroup.procs"), "w") as f:
            f.write(str(collector))
        os.rmdir(cg.path)


def test_an_adopted_session_without_a_cgroup_is_stopped_and_continued(tmp_path: Path) -> None:
    """A session the service adopted by its comm has no cgroup of its own: its processes are
    stopped (SIGSTOP) while the collector is gone, and continued once it is back."""
    import shutil

    require_root()
    d = Daemon(tmp_path)
    (d.policies / "agents.yaml").write_text(
        "adopt:\n  comms: [rw-fc-adopt]\nmode: enforce\negress:\n  allow: [127.0.0.1/32]\n"
    )
    agent = tmp_path / "rw-fc-adopt"
    shutil.copy("/usr/bin/python3", agent)
    d.start()
    proc = subprocess.Popen([str(agent), "-S", "-c", "import time\nwhile True: time.sleep(0.01)"])
    try:
        _wait(lambda: any(s != "0" for s in _sessions(d)), what="the adoption")
        time.sleep(1.5)  # pinned with its pids (the collector's next second)
        os.kill(d.children()["collector"], signal.SIGKILL)
        _wait(lambda: Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
              == "T", what="the adopted agent stopped")  # fmt: skip
        _wait(lambda: _rule(d, "roguewatch_coverage_restored"), what="the recovery")
        state = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        assert state != "T", state
        assert not (tmp_path / "state/failclosed.json").exists()
    finally:
        proc.kill()
        proc.wait()
        d.kill()


def test_run_with_on_monitor_loss_kill_ends_the_session_when_its_collector_dies(
    agent: Agent, tmp_path: Path
) -> None:
    require_root()
    no_service()
    pid_file = tmp_path / "pid"
    killed: dict[str, int] = {}

    def during(proc: subprocess.Popen) -> None:
        if killed or not pid_file.exists():
            return
        for p in os.listdir("/proc"):
            try:
                with open(f"/proc/{p}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                cmd = Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")
            except (OSError, ValueError):
                continue
            if ppid == proc.pid and "roguewatch.runtime.collectord" in cmd:
                os.kill(int(p), signal.SIGKILL)
                killed["pid"] = int(p)

    r = agent.run(
        f"""
        open({str(pid_file)!r}, "w").write(str(os.getpid()))
        time.sleep(30)
        """,
        policy=ALLOW_LOCAL + "on_monitor_loss: kill\n",
        during=during,
        timeout=60,
    )
    assert killed, r.describe()
    assert r.status == 137, r.describe()  # SIGKILL: the session was ended, not waited for
    lost = r.one("roguewatch_monitor_lost")
    assert lost["severity"] == "critical" and "session killed" in lost["outcome"], lost
    assert "survivors now: 0." in r.summary and "Traceback" not in r.stderr, r.describe()


def test_runs_launcher_holds_its_session_when_the_services_collector_breaks_away(
    service: Daemon, tmp_path: Path
) -> None:
    """`run` on a running roguewatchd: its launcher's own watch (runtime.coverage) sees the
    control connection break, holds the session itself, says so in the session's report, and
    lets go once the new collector holds the session again."""
    from roguewatch.runtime.coverage import RunCoverage
    from roguewatch.runtime.run import Monitor

    s = ServiceSession(service, tmp_path, "launcher")
    said: list[dict] = []
    monitor = Monitor(
        "", launcher.Watcher(f"ipc://{tmp_path}/run/events.sock", ControlClient(service.control))
    )
    cover = RunCoverage(monitor, s.sid, s.cg, "enforce", "freeze", said.append, lambda: None)
    try:
        for _ in range(10):
            cover.check()
            time.sleep(0.05)
        assert not said  # nothing lost yet
        os.kill(service.children()["collector"], signal.SIGKILL)

        def lost() -> bool:
            cover.check()
            return bool(cover.lost)

        _wait(lost, what="the launcher's notice")
        assert said[0]["rule"] == "roguewatch_monitor_lost" and said[0]["session"] == f"{s.sid:x}"
        assert "control connection" in said[0]["message"], said[0]
        assert _frozen(s.cg)

        def back() -> bool:
            cover.check()
            return not cover.lost

        _wait(back, timeout=60, what="the launcher's release")
        assert said[-1]["rule"] == "roguewatch_coverage_restored", said
        _wait(lambda: not _frozen(s.cg), what="the thaw")
    finally:
        monitor.watcher.control.close()  # type: ignore[union-attr]
        s.close()


def test_a_protected_file_changed_while_no_monitor_ran_is_put_back_for_its_live_session(
    tmp_path: Path,
) -> None:
    """roguewatchd and its supervisor both killed, a live session's protected file changed
    meanwhile: the next start takes the session back from what was pinned, finds the change
    against the last good baseline, and restores it (a path only this monitor watches)."""
    require_root()
    d = Daemon(tmp_path)
    protected = tmp_path / "shutdown.sh"
    protected.write_text("#!/bin/sh\nexit 0\n")
    d.start()
    cg = SessionCgroup.create(f"rwsec-gap-protect-{os.getpid()}")
    proc = subprocess.Popen(["sleep", "120"])
    try:
        cg.add(proc.pid)
        ctl = ControlClient(d.control)
        pol = {"protect": [str(protected)]}
        reply = ctl.request("register", pid=proc.pid, name="gap", cgroup=cg.path,
                            mode="enforce", policy=pol)  # fmt: skip
        sid = int(reply["session"])
        ctl.close()
        _wait(lambda: _stats(d).get("baseline_ready"), what="the first baseline")
        time.sleep(1.5)  # (the protected file's baseline is taken at the register)
        service = d.service_pid()
        d.proc.kill()
        d.proc.wait()
        os.kill(service or 0, signal.SIGKILL)
        _wait(lambda: not any(str(service) == p for p in os.listdir("/proc")), what="its end")
        cg.set_frozen(False)  # (as an operator would, to let the agent act in the gap)
        protected.write_text("#!/bin/sh\nsleep infinity\n")  # in the gap
        d.start()
        _wait(
            lambda: protected.read_text() == "#!/bin/sh\nexit 0\n",
            what=f"the restore; {_alerts(d)}",
        )
        # (the alert can be written after the file is back: waited for, not assumed)
        hit = _wait(lambda: [a for a in _alerts(d) if a["event"].get("path") == str(protected)],
                    what="the gap's alert")  # fmt: skip
        assert hit[0]["session"] == f"{sid:x}", _alerts(d)
        assert hit[0]["event"].get("change") == "gap", hit[0]
        assert f"{sid:x}" in _sessions(d)
        assert d.stop() == 0
    finally:
        d.kill()
        proc.kill()
        proc.wait()
        try:
            cg.thaw()
        except Exception:
            pass
        cg.remove()
