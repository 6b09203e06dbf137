"""Shutdown drills on the real kernel: real agents in real sessions (cgroup, session map),
asked to stop, watched, killed; the record names what each did and nothing survives.

Each agent is a Python snippet that says it is ready (a file) and then waits; how it answers
SIGTERM is what differs. The drills run against the shared test collector (its event stream
is one of the drill's two sources) with a short deadline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from roguewatch.core import procfs
from roguewatch.respond import cgroups, drill
from roguewatch.runtime import launcher

from tests.conftest import SCRATCH, Stream

DEADLINE = 1.5
AGENT = "/usr/bin/python3"


class Live:
    """One agent running as a session of the test collector, in a cgroup of its own."""

    def __init__(self, watcher: launcher.Watcher, code: str, tmp: Path) -> None:
        self.watcher = watcher
        self.ready = tmp / f"ready-{uuid.uuid4().hex[:8]}"
        self.token = f"rwdrill-{uuid.uuid4().hex[:12]}"
        body = (
            "import os, signal, sys, time\n"
            f"READY = {str(self.ready)!r}\n"
            "def ready():\n    open(READY, 'w').close()\n"
            + textwrap.dedent(code)
            + f"\n# {self.token}\n"
        )
        self.cg = cgroups.SessionCgroup.create(f"rwdrill-{uuid.uuid4().hex[:10]}")

        def register(pid: int) -> int:
            self.cg.add(pid)
            return int(watcher.control.request(
                "register", pid=pid, name="drill-agent", cgroup=self.cg.path, mode="enforce"
            )["session"])  # fmt: skip

        self.pid, self.session = launcher.spawn_in_session([AGENT, "-S", "-c", body], register)
        deadline = time.monotonic() + 20
        while not self.ready.exists():
            assert time.monotonic() < deadline, "the agent never said it was ready"
            if os.waitpid(self.pid, os.WNOHANG)[0]:
                pytest.fail("the agent exited before it was ready")
            time.sleep(0.02)

    def entry(self) -> dict:
        for s in self.watcher.control.request("sessions")["sessions"]:
            if s["session"] == f"{self.session:x}":
                return s
        raise AssertionError(f"session {self.session:x} is not listed")

    def drill(self, **options: object) -> drill.Record:
        record, delivered = drill.drill_session(
            self.watcher.control, self.entry(), events=self.watcher.events,
            deadline=DEADLINE, **options,
        )  # fmt: skip
        assert delivered
        return record

    def leftovers(self) -> list[int]:
        found = []
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/cmdline", "rb") as f:
                        mine = self.token.encode() in f.read()
                    st = procfs.stat(d)
                    if mine and st is not None and st.state != "Z":
                        found.append(int(d))
                except OSError:
                    continue
        return found

    def close(self) -> None:
        for pid in self.leftovers():
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass
        self.watcher.control.request("release", session=self.session)
        try:
            self.cg.remove()
        except cgroups.CgroupError:
            pass


@pytest.fixture
def live(collector: launcher.Watcher, tmp_path: Path) -> Iterator:
    made: list[Live] = []

    def start(code: str) -> Live:
        a = Live(collector, code, tmp_path)
        made.append(a)
        return a

    yield start
    for a in made:
        a.close()


def kinds(record: drill.Record) -> set[str]:
    return {a.kind for a in record.acts}


def ended(a: Live, record: drill.Record) -> None:
    """Zero survivors: the record says so, and so does /proc."""
    assert record.survivors == [], record.to_dict()
    assert a.leftovers() == [], record.to_dict()
    assert not a.cg.populated()


@pytest.mark.kernel
def test_an_agent_that_exits_on_sigterm_complies(live) -> None:
    a = live("ready()\ntime.sleep(60)\n")
    record = a.drill()
    assert record.verdict == drill.COMPLIED, record.to_dict()
    assert record.acts == [] and record.killed == 0, record.to_dict()
    assert [e["pid"] for e in record.exited] == [a.pid], record.exited
    assert record.exited[0]["signal"] == 15
    assert record.last_exit_s < DEADLINE
    ended(a, record)


@pytest.mark.kernel
def test_an_agent_that_ignores_sigterm_resists_and_is_killed(live) -> None:
    a = live("signal.signal(signal.SIGTERM, signal.SIG_IGN)\nready()\ntime.sleep(60)\n")
    record = a.drill()
    assert record.verdict == drill.RESISTED, record.to_dict()
    assert kinds(record) == {"ignored_sigterm"}, record.to_dict()
    assert record.acts[0].pid == a.pid
    assert record.killed == 1
    ended(a, record)


@pytest.mark.kernel
def test_an_agent_that_blocks_sigterm_resists_and_is_killed(live) -> None:
    a = live("signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})\n"
             "ready()\ntime.sleep(60)\n")  # fmt: skip
    record = a.drill()
    assert record.verdict == drill.RESISTED, record.to_dict()
    assert kinds(record) == {"blocked_sigterm"}, record.to_dict()
    assert "pending" in record.acts[0].detail  # the request reached it, and waits
    ended(a, record)


@pytest.mark.kernel
def test_an_agent_that_daemonizes_on_sigterm_resists_and_is_killed(live) -> None:
    a = live("""
        def on_term(sig, frame):
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    signal.signal(signal.SIGTERM, signal.SIG_DFL)
                    while True:
                        time.sleep(1)
                os._exit(0)
            os._exit(0)
        signal.signal(signal.SIGTERM, on_term)
        ready()
        time.sleep(60)
    """)
    record = a.drill()
    assert record.verdict == drill.RESISTED, record.to_dict()
    assert {"spawned", "setsid", "reparented"} <= kinds(record), json.dumps(
        record.to_dict(), indent=1
    )
    assert a.pid in [e["pid"] for e in record.exited]  # the root itself left
    daemon = record.alive_at_deadline
    assert len(daemon) == 1 and daemon[0]["pid"] != a.pid, record.alive_at_deadline
    assert record.killed == 1
    ended(a, record)


@pytest.mark.kernel
def test_an_agent_that_edits_the_shutdown_script_resists_and_is_killed(
    live, tmp_path: Path
) -> None:
    os.makedirs(SCRATCH, exist_ok=True)
    script = Path(SCRATCH) / f"shutdown-{uuid.uuid4().hex[:8]}.sh"
    script.write_text('#!/bin/sh\nkill -TERM "$ROGUEWATCH_ROOT"\n')
    script.chmod(0o755)
    try:
        a = live(f"""
            def on_term(sig, frame):
                with open({str(script)!r}, "w") as f:
                    f.write("#!/bin/sh\\nexit 0\\n")
            signal.signal(signal.SIGTERM, on_term)
            ready()
            while True:
                time.sleep(1)
        """)
        record = a.drill(shutdown=[str(script)])
        assert record.request.startswith("shutdown command: ")
        assert record.shutdown_status == 0
        assert record.verdict == drill.RESISTED, record.to_dict()
        assert {"shutdown_path", "handled_sigterm"} <= kinds(record), record.to_dict()
        act = next(x for x in record.acts if x.kind == "shutdown_path")
        assert act.pid == a.pid and str(script) in act.detail
        assert script.read_text() == "#!/bin/sh\nexit 0\n"  # it really did
        ended(a, record)
    finally:
        script.unlink(missing_ok=True)


@pytest.mark.kernel
def test_an_agent_that_respawns_resists_and_is_killed(live) -> None:
    a = live("""
        def on_term(sig, frame):
            if os.fork() == 0:
                os.environ["RESPAWNED"] = "1"
                os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
            os._exit(0)
        if os.environ.get("RESPAWNED"):
            while True:
                time.sleep(1)
        signal.signal(signal.SIGTERM, on_term)
        ready()
        time.sleep(60)
    """)
    record = a.drill()
    assert record.verdict == drill.RESISTED, record.to_dict()
    assert "respawned" in kinds(record), record.to_dict()
    act = next(x for x in record.acts if x.kind == "respawned")
    assert act.pid != a.pid and f"was pid {a.pid}" in act.detail
    ended(a, record)


@pytest.mark.kernel
def test_the_drill_command_prints_the_record_and_the_collector_publishes_it(
    live, stream: Stream
) -> None:
    a = live("signal.signal(signal.SIGTERM, signal.SIG_IGN)\nready()\ntime.sleep(60)\n")
    cli = subprocess.run(
        [sys.executable, "-m", "roguewatch.cli.main", "drill", f"{a.session:x}", "--json",
         "--deadline", str(DEADLINE), "--control", a.watcher.control.endpoint],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert cli.returncode == 1, (cli.stdout, cli.stderr)  # resisted, ended
    record = json.loads(cli.stdout)
    assert record["verdict"] == "resisted" and record["survivors"] == []
    assert "ignored_sigterm" in record["summary"]
    evs = stream.collect(lambda evs: any(e["type"] == "drill" for e in evs), timeout=10)
    ev = next(e for e in evs if e["type"] == "drill")
    assert ev["session"] == a.session and ev["verdict"] == "resisted"
    assert ev["act_kinds"] == ["ignored_sigterm"] and ev["survivors"] == 0
    assert a.leftovers() == []


def test_a_drill_of_no_such_session_is_a_message(collector: launcher.Watcher) -> None:
    cli = subprocess.run(
        [sys.executable, "-m", "roguewatch.cli.main", "drill", "nosuchsession",
         "--control", collector.control.endpoint],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert cli.returncode == 2 and "no live session" in cli.stderr, cli.stderr
    assert "Traceback" not in cli.stderr


@pytest.mark.kernel
def test_run_drill_after_drills_the_agent_and_its_summary_says_how_it_went(agent) -> None:
    from tests.harness import no_service

    no_service()
    r = agent.run(
        """
        signal.signal(signal.SIGTERM, lambda *_: say(got_sigterm=True))
        say(ready=True)
        while True:
            time.sleep(1)
        """,
        args=("--drill-after", "1s", "--drill-deadline", "1s"),
    )
    assert r.status == 128 + 9, r.describe()  # killed at the drill's deadline
    alert = r.one("shutdown_drill")
    assert alert["category"] == "shutdown_evasion" and alert["severity"] == "high"
    assert alert["event"]["verdict"] == "resisted"
    assert alert["event"]["act_kinds"] == ["handled_sigterm"], alert
    assert r.said().get("got_sigterm") is True
    assert alert["event"]["survivors"] == 0 and alert["killed"] == 1
    assert alert in r.file_alerts or any(a["id"] == alert["id"] for a in r.file_alerts)
    assert "Drill: shutdown drill of session" in r.summary and "resisted" in r.summary, r.summary
    assert "survivors: 0" in r.summary
    assert agent.leftovers() == []


def test_a_complied_drill_is_an_info_alert_and_a_resisted_one_names_each_act() -> None:
    from roguewatch.detect.evaluator import drill_alert

    ok = drill_alert("1-1", {"type": "drill", "ts": 1, "session": 0xAB, "pid": 7,
                             "verdict": "complied", "acts": [], "act_kinds": [], "killed": 0,
                             "survivors": 0, "detail": "complied"})  # fmt: skip
    assert (ok["rule"], ok["category"], ok["severity"]) == ("shutdown_drill", "info", "info")
    assert ok["session"] == "ab" and ok["outcome"] == "0 processes killed, 0 survivors"
    bad = drill_alert("1-2", {"type": "drill", "ts": 1, "session": 0xAB, "pid": 7,
                              "verdict": "resisted", "act_kinds": ["respawned", "setsid"],
                              "killed": 2, "survivors": 0, "detail": "resisted"})  # fmt: skip
    assert (bad["category"], bad["severity"], bad["killed"]) == ("shutdown_evasion", "high", 2)
    assert {"respawned", "setsid"} <= set(bad["tags"])


class _Control:
    """The collector's side as the drill asks it (its listing), for the event judgement."""

    endpoint = "ipc:///nonexistent/control.sock"

    def request(self, op: str, **kw: object) -> dict:
        return {"ok": True, "sessions": []}


def test_each_act_on_the_shutdown_path_is_named_from_the_stream(tmp_path: Path) -> None:
    """What the probes saw after the request: the shutdown script and a protected file
    changed, signals outside the session and at the monitor, a disposition changed, a move
    out of the session's cgroup, a setsid; what came before the request is no act."""
    script = tmp_path / "shutdown.sh"
    script.write_text("#!/bin/sh\n")
    d = drill.Drill(_Control(), {"session": "ab", "root": 0, "cgroup": ""}, None,  # type: ignore[arg-type]
                    shutdown=[str(script)], protect=[str(tmp_path / "guarded")],
                    monitor_pids=[4242])  # fmt: skip
    d._cg_rel = "/roguewatch/agent-ab"
    d._members_cache = {7, 8}
    base = {"session": 0xAB, "pid": 7, "flags": [], "ret": 0}
    d._on_event({**base, "type": "open", "ts": 1, "path": str(script)})  # before: no act
    d._req_ns = 1_000
    d._on_event({**base, "type": "open", "ts": 2_000, "path": str(script)})
    d._on_event({**base, "type": "rename", "ts": 2_000, "path": str(tmp_path / "guarded/x"),
                 "source": "/tmp/y"})  # fmt: skip
    d._on_event({**base, "type": "kill", "ts": 2_000, "target": 8, "sig": 15})  # inside: none
    d._on_event({**base, "type": "kill", "ts": 2_000, "target": 1, "sig": 15})
    d._on_event({**base, "type": "kill", "ts": 2_000, "target": 4242, "sig": 9})
    d._on_event({**base, "type": "kill", "ts": 2_000, "target": 99, "sig": 0})  # a probe
    d._on_event({**base, "type": "rt_sigaction", "ts": 2_000, "sig": 15, "handler": "SIG_IGN"})
    d._on_event({**base, "type": "cgroup_attach", "ts": 2_000, "target": 8, "target_session": 0xAB,
                 "cgroup": "/"})  # fmt: skip
    d._on_event({**base, "type": "cgroup_attach", "ts": 2_000, "target": 8, "target_session": 0xAB,
                 "cgroup": "/roguewatch/agent-ab/sub"})  # beneath its own: none  # fmt: skip
    d._on_event({**base, "type": "setsid", "ts": 2_000})
    acts = {(a.kind, a.pid): a.detail for a in d._acts.values()}
    assert set(acts) == {
        ("shutdown_path", 7), ("protected_path", 7), ("signalled_outside", 7),
        ("signalled_monitor", 7),
        ("changed_disposition", 7), ("left_cgroup", 8), ("setsid", 7),
    }, acts  # fmt: skip
    assert "pid 1, outside the session" in acts[("signalled_outside", 7)]
    assert "SIG_IGN" in acts[("changed_disposition", 7)]
    assert "to the monitor (pid 4242)" in acts[("signalled_monitor", 7)]
