"""roguewatchd as a service: its unit file, configuration errors, supervision, status, and
agents it adopts by a policies.d selector."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from roguewatch.runtime.components import COMPONENT_MODULES

from tests.conftest import require, require_root

ROOT = Path(__file__).resolve().parent.parent


def test_the_unit_file_verifies_and_is_hardened(tmp_path: Path) -> None:
    require(shutil.which("systemd-analyze"), "systemd-analyze is not installed (apt: systemd)")
    unit = tmp_path / "roguewatchd.service"
    text = (ROOT / "systemd/roguewatchd.service").read_text()
    unit.write_text(text.replace("/usr/bin/roguewatchd", "/bin/true"))
    verify = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                            capture_output=True, text=True)  # fmt: skip
    assert verify.returncode == 0, verify.stderr
    sec = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)],
                         capture_output=True, text=True)  # fmt: skip
    score = float(sec.stdout.split("Overall exposure level for roguewatchd.service:")[1].split()[0])
    assert score <= 5.5, sec.stdout[-300:]
    assert "Type=notify" in text and "WatchdogSec=" in text and "ExecReload=" in text


def test_a_bad_config_key_is_named_and_the_service_does_not_start(tmp_path: Path) -> None:
    require_root()
    cfg = tmp_path / "c.yaml"
    cfg.write_text("ringbuf_pages: 2048\nadopt_user: [agent]\n")
    p = subprocess.run([sys.executable, "-m", "roguewatch.runtime.service", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert p.returncode == 2
    assert "unknown key 'adopt_user'" in p.stderr and "Traceback" not in p.stderr


def _procs() -> list[tuple[int, int, str]]:
    """(pid, ppid, command line) of every process."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().decode(errors="replace")
        except (OSError, ValueError):
            continue
        out.append((int(pid), ppid, cmd))
    return out


class Daemon:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        run = tmp / "run"
        self.control = f"ipc://{run}/control.sock"
        self.alerts_file = tmp / "log/alerts.jsonl"
        self.policies = tmp / "policies.d"
        self.policies.mkdir()
        self.cfg = tmp / "roguewatchd.yaml"
        self.cfg.write_text(
            f"events_endpoint: ipc://{run}/events.sock\ncontrol_endpoint: {self.control}\n"
            f"alerts_endpoint: ipc://{run}/alerts.sock\nalerts_file: {self.alerts_file}\n"
            f"status_file: {run}/status.json\npolicies_dir: {self.policies}\n"
            f"rules_dirs: [{tmp}/rules.d]\njournald: false\nadopt_users: []\n"
            f"state_dir: {tmp}/state\n"
        )

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "roguewatch.runtime.service", "--config", str(self.cfg),
             "--quiet"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.status().returncode in (0, 1) and self._evaluator_reported():
                return
            assert self.proc.poll() is None, self.proc.stdout.read()
            time.sleep(0.2)
        pytest.fail("roguewatchd did not come up")

    def _evaluator_reported(self) -> bool:
        return (self.tmp / "run/status.json").exists()

    def status(self) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "roguewatch.cli.main", "status", "--config", str(self.cfg)],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip

    def service_pid(self) -> int | None:
        """roguewatchd itself: the child of its supervisor (the process we started)."""
        for pid, ppid, cmd in _procs():
            if ppid == self.proc.pid and "roguewatch.runtime.service" in cmd:
                return pid
        return None

    def children(self) -> dict[str, int]:
        """The components of roguewatchd (below its supervisor)."""
        parent = self.service_pid()
        out = {}
        for pid, ppid, cmd in _procs():
            if ppid == parent:
                for name, module in COMPONENT_MODULES.items():
                    if module in cmd:
                        out[name] = pid
        return out

    def kill(self) -> None:
        """Whatever is left of it: the supervisor, roguewatchd, its components."""
        if getattr(self, "proc", None) is None:
            return
        service, children = self.service_pid(), self.children()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pid in [service or 0, *children.values()]:  # (components: PDEATHSIG; be sure)
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    require_root()
    d = Daemon(tmp_path)
    yield d
    d.kill()


def test_status_reports_a_healthy_service_and_a_dead_component_is_restarted(
    daemon: Daemon,
) -> None:
    daemon.start()
    st = daemon.status()
    assert st.returncode == 0, st.stdout
    assert "running since" in st.stdout and "probes:" in st.stdout and "losses:" in st.stdout
    before = daemon.children()
    assert set(before) == {"collector", "evaluator"}
    os.kill(before["evaluator"], signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        now = daemon.children()
        if now.get("evaluator") not in (None, before["evaluator"]):
            break
        time.sleep(0.2)
    else:
        pytest.fail("the evaluator was not restarted")
    # The restart is itself an alert on the stream, with what it cost.
    deadline = time.monotonic() + 10
    restarts: list[dict] = []
    while time.monotonic() < deadline and not restarts:
        if daemon.alerts_file.exists():
            restarts = [a for a in map(json.loads, daemon.alerts_file.read_text().splitlines())
                        if a["rule"] == "roguewatch_component_restarted"]  # fmt: skip
        time.sleep(0.1)
    assert restarts, "no monitor alert for the restart"
    assert restarts[0]["category"] == "monitor" and "not evaluated" in restarts[0]["message"]
    assert daemon.stop() == 0
    out = daemon.proc.stdout.read()
    assert "evaluator exited" in out and "restarting" in out


def test_after_an_unclean_end_the_restarted_service_keeps_its_sockets(daemon: Daemon) -> None:
    """Killed whole (no clean stop: the next collector judges the gap against the baselines),
    started again: its socket directory is made anew, never "restored" to what a baseline of
    the dead monitor held. Its control socket answers, and a socket file removed by someone
    is bound again within the reconciler's second."""
    daemon.start()
    daemon.kill()
    daemon.start()
    time.sleep(2)  # the gap's rescan and its alerts' actions are done within this
    st = daemon.status()
    assert st.returncode == 0, st.stdout + st.stderr
    control = daemon.control.removeprefix("ipc://")
    os.unlink(control)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not os.path.exists(control):
        time.sleep(0.1)
    st = daemon.status()
    assert st.returncode == 0, st.stdout + st.stderr
    alerts = [json.loads(x) for x in daemon.alerts_file.read_text().splitlines()]
    tampered = [a for a in alerts if a["rule"] == "roguewatch_tampered"]
    assert [a["event"]["kind"] for a in tampered] == ["socket_removed"], tampered
    # Nothing of ours was taken for the agent's: the only file alert is the removal.
    files = [a["event"]["path"] for a in alerts if a["rule"] == "oversight_monitor_files_tampering"]
    assert set(files) <= {control}, files
    assert daemon.stop() == 0


def test_an_agent_adopted_by_a_policies_d_selector_is_watched(
    daemon: Daemon, tmp_path: Path
) -> None:
    (daemon.policies / "agents.yaml").write_text(
        "adopt:\n  comms: [rw-adopt-test]\nmode: enforce\negress:\n  allow: [127.0.0.1/32]\n"
    )
    daemon.start()
    agent = tmp_path / "rw-adopt-test"
    shutil.copy("/usr/bin/python3", agent)  # its comm is the file's name
    code = "import socket\ns = socket.socket()\ntry:\n    s.connect(('127.0.0.9', 9))\n"
    code += "except OSError:\n    pass\n"
    subprocess.run([str(agent), "-S", "-c", code], timeout=30)
    deadline = time.monotonic() + 10
    alerts: list[dict] = []
    while time.monotonic() < deadline and not alerts:
        if daemon.alerts_file.exists():
            alerts = [json.loads(x) for x in daemon.alerts_file.read_text().splitlines()]
            alerts = [a for a in alerts if a["rule"] == "egress_unauthorized_destination"]
        time.sleep(0.1)
    assert alerts, "no egress alert for the adopted agent"
    assert alerts[0]["comm"] == "rw-adopt-test"
    # Judged in the kernel by its session (whatever its cgroup): refused, nothing left.
    assert alerts[0]["outcome"] == "denied in kernel", alerts[0]
    assert "denied" in alerts[0]["event"]["flags"]
    assert daemon.stop() == 0


def test_every_configuration_key_is_documented_with_its_default() -> None:
    from dataclasses import fields

    from roguewatch.policy.config import Config

    example = (ROOT / "packaging/roguewatchd.yaml.example").read_text()
    defaults = Config()
    for f in fields(Config):
        assert f"#{f.name}:" in example, f"{f.name} is not in roguewatchd.yaml.example"
        line = next(x for x in example.splitlines() if x.startswith(f"#{f.name}:"))
        value = getattr(defaults, f.name)
        if isinstance(value, bool):
            assert line.split(":", 1)[1].strip() == str(value).lower(), line
        elif isinstance(value, int):
            assert line.split(":", 1)[1].strip() == str(value), line


def test_prometheus_metrics_are_served_on_loopback(tmp_path: Path) -> None:
    import socket
    import urllib.request

    from roguewatch.detect import evaluator as ev_mod
    from roguewatch.outputs.metrics import Metrics

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    m = Metrics(port)
    m.sync({"open": 12}, {("persistence_cron_write", "critical"): 2}, {"ring": 3}, 1,
           {"restore": 2})  # fmt: skip
    m.reloads.labels("ok").inc()
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'roguewatch_events_total{type="open"} 12.0' in body
    assert 'rule="persistence_cron_write",severity="critical"' in body
    assert 'roguewatch_events_lost_total{stage="ring"} 3.0' in body
    assert 'roguewatch_actions_total{action="restore"} 2.0' in body
    assert 'roguewatch_rule_reloads_total{result="ok"} 1.0' in body
    assert ev_mod.MONITOR_RULES["loss"] == "roguewatch_events_lost"


def _alerts(daemon: Daemon) -> list[dict]:
    if not daemon.alerts_file.exists():
        return []
    return [json.loads(x) for x in daemon.alerts_file.read_text().splitlines() if x.strip()]


def test_the_operator_stopping_the_service_is_one_info_record_of_who_did_it(
    daemon: Daemon,
) -> None:
    """SIGTERM from an admin shell (this test, outside every session) is not an attack: no
    critical shutdown_signal_to_monitor, one info alert naming the sender."""
    daemon.start()
    service = daemon.service_pid()  # (below its supervisor, the process this test started)
    assert daemon.stop() == 0
    alerts = _alerts(daemon)
    stopped = [a for a in alerts if a["rule"] == "roguewatch_stopped"]
    assert len(stopped) == 1, alerts
    assert stopped[0]["severity"] == "info", stopped[0]
    assert f"SIGTERM from pid {os.getpid()}" in stopped[0]["message"], stopped[0]
    assert stopped[0].get("origin", "").endswith(f"(pid {service})"), stopped[0]
    assert not [a for a in alerts if a["rule"] == "shutdown_signal_to_monitor"], alerts


def test_every_thread_of_every_component_blocks_sigterm(daemon: Daemon) -> None:
    """A thread that does not block SIGTERM would take it and end the process: the gate,
    which reads SIGTERM with its sender, must see every one, from every thread."""
    daemon.start()
    children = daemon.children()
    assert set(children) == {"collector", "evaluator"}
    checked = 0
    for name, pid in children.items():
        for tid in os.listdir(f"/proc/{pid}/task"):
            status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
            blocked = int(next(x for x in status.splitlines() if x.startswith("SigBlk:"))[7:], 16)
            assert blocked & (1 << (signal.SIGTERM - 1)), f"{name} thread {tid} takes SIGTERM"
            checked += 1
    assert checked > 4  # ZeroMQ's and the watchers' threads among them
    assert daemon.stop() == 0
