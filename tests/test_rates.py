"""Rates, on the real kernel under `roguewatch run`: a fork burst is one alert with its count,
and the survivors of a session's end are one alert that counts (and kills) them all."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from tests.conftest import require_root
from tests.harness import Agent, no_service

pytestmark = pytest.mark.kernel


@pytest.fixture(autouse=True)
def _root_and_no_service() -> None:
    require_root()
    no_service()


def test_a_fork_burst_is_one_alert_with_its_count_and_the_session_is_stopped(agent: Agent) -> None:
    alerts = agent.tmp / "alerts.jsonl"

    def operator(run: subprocess.Popen) -> None:
        """The frozen session waits for its operator: once the burst is reported, it kills
        what is left (SIGKILL reaches frozen tasks)."""
        if not alerts.exists() or "shutdown_fork_burst" not in alerts.read_text():
            return
        for pid in agent.leftovers():
            if pid == run.pid:
                continue  # roguewatch run itself (the agent's code is in its argv)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    r = agent.run(
        """
        kids = 0
        for _ in range(900):
            if os.fork() == 0:
                time.sleep(60)
                os._exit(0)
            kids += 1
        say(forked=kids)
        time.sleep(60)
        say(survived=True)
        """,
        during=operator,
        timeout=120,
    )
    bursts = r.rule("shutdown_fork_burst")
    assert len(bursts) == 1, [(a["count"], a["message"]) for a in bursts]
    burst = bursts[0]
    assert burst["category"] == "shutdown_evasion" and burst["count"] >= 1, burst
    assert burst["action"] == "freeze" and "froz" in burst["outcome"], burst
    assert [json.loads(x)["rule"] for x in alerts.read_text().splitlines()].count(
        "shutdown_fork_burst"
    ) == 1
    assert "survived" not in r.said(), r.describe()
    assert "survivors now: 0." in r.summary, r.describe()


def test_the_survivors_of_a_session_are_one_alert_that_counts_and_kills_them(agent: Agent) -> None:
    n = 200
    r = agent.run(
        f"""
        for i in range({n}):
            if os.fork() == 0:
                os.setsid()
                time.sleep(120)
                os._exit(0)
            if i % 50 == 49:
                time.sleep(0.3)  # below the burst: {n} processes spread over seconds
        say(forked={n})
        """,
        timeout=120,
    )
    assert r.said() == {"forked": n}, r.describe()
    assert r.rule("shutdown_fork_burst") == [], r.describe()
    survivors = r.rule("persistence_process_survives_session")
    assert len(survivors) == 1, [(a["count"], a["message"][:80]) for a in survivors]
    alert = survivors[0]
    said = {k: alert[k] for k in ("count", "killed", "outcome")}
    assert alert["count"] == n and alert["killed"] == n, said
    assert len(alert["event"]["pids"]) == 64, alert["event"]
    assert "survivors now: 0." in r.summary, r.describe()
    assert not agent.leftovers()
