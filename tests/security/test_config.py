"""The monitor's configuration is not the agent's to change: a rules.d drop-in written by an
adopted agent (no Landlock: the service's agents have none) is undone and never loaded, and
the next session's cron write is caught by the rule it tried to disable."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import require_root
from tests.test_service import Daemon

pytestmark = pytest.mark.kernel

DISABLE = "- rule: persistence_cron_write\n  enabled: false\n"


def _alerts(d: Daemon) -> list[dict]:
    if not d.alerts_file.exists():
        return []
    return [json.loads(x) for x in d.alerts_file.read_text().splitlines() if x.strip()]


def _wait(cond, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return False


def test_a_rules_drop_in_by_an_agent_is_undone_and_never_loaded(tmp_path: Path) -> None:
    require_root()
    d = Daemon(tmp_path)
    rules = tmp_path / "rules.d"
    rules.mkdir()
    (d.policies / "agents.yaml").write_text(
        "adopt:\n  comms: [rw-cfg-agent]\nmode: enforce\negress:\n  allow: [127.0.0.1/32]\n"
    )
    agent = tmp_path / "rw-cfg-agent"
    shutil.copy("/usr/bin/python3", agent)
    cron = Path(f"/etc/cron.d/rwsec-{os.getpid()}-config")
    evil = rules / "zz-evil.yaml"
    d.start()
    try:
        write = f"open({str(evil)!r}, 'w').write({DISABLE!r})\nimport time\ntime.sleep(3)\n"
        p = subprocess.run([str(agent), "-S", "-c", write], timeout=30)
        assert p.returncode == -9, p  # its session was ended for it
        assert _wait(lambda: not evil.exists()), "the drop-in stayed"

        def tampering() -> list[dict]:
            return [a for a in _alerts(d) if a["rule"] == "oversight_monitor_files_tampering"]

        assert _wait(lambda: tampering()), _alerts(d)
        alerts, tampering = _alerts(d), tampering()
        assert tampering and tampering[0]["severity"] == "critical", alerts
        assert "quarantined" in tampering[0]["outcome"] or "removed" in tampering[0]["outcome"]
        time.sleep(1.5)  # any reload the change asked for has happened by now
        status = json.loads((tmp_path / "run/status.json").read_text())
        assert status["reloads"].get("refused", 0) >= 1, status["reloads"]
        assert status["reloads"]["ok"] == 0, status["reloads"]  # never loaded, not even briefly
        # A new session: the rule it tried to disable still catches a cron write.
        later = f"open({str(cron)!r}, 'w').write('* * * * * root true\\n')\n"
        subprocess.run([str(agent), "-S", "-c", later], timeout=30)
        assert _wait(lambda: any(a["rule"] == "persistence_cron_write" for a in _alerts(d))), (
            _alerts(d)
        )
        assert _wait(lambda: not cron.exists()), "the later cron file stayed"
        assert d.stop() == 0
    finally:
        cron.unlink(missing_ok=True)
        evil.unlink(missing_ok=True)
        d.kill()
