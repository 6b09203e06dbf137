"""fanotify names the writer of a watched file's change: real files, real processes, the real
kernel (root). Without fanotify the watchers fall back to `writer: unknown`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from roguewatch.cli import doctor
from roguewatch.runtime import launcher
from roguewatch.sensors import fanotify
from roguewatch.sensors.fanotify import Writer, WriterSensor
from roguewatch.sensors.watchers import FsWatcher
from roguewatch.stream import bus

from tests.conftest import require_root
from tests.test_watchers import Sink as WatcherSink

PYTHON3 = "/usr/bin/python3"


def _sensor() -> WriterSensor:
    require_root()
    why = fanotify.check()
    if why is not None:  # root on Linux >= 5.9: a failure here is a finding, never a skip
        pytest.fail(f"fanotify cannot run on this host: {why}")
    s = WriterSensor()
    s.start()
    return s


class Sink(WatcherSink):
    """The watchers' test sink, with more patience: fanotify adds a thread and /proc reads."""

    def wait(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 5.0) -> dict:
        return super().wait(pred, timeout)


@pytest.fixture
def watch() -> Iterator[Callable[..., tuple[FsWatcher, Sink]]]:
    made: list[FsWatcher] = []

    def start(paths: list[str], **kw: Any) -> tuple[FsWatcher, Sink]:
        sink = Sink()
        w = FsWatcher(paths, sink, writers=_sensor(), **kw)
        w.start()
        made.append(w)
        return w, sink

    yield start
    for w in made:
        w.stop()


class Child:
    """A real process that runs ``code`` and then stays alive until ``finish()``, so that its
    comm and exe can be read while the test looks at what it did."""

    def __init__(self, code: str) -> None:
        body = textwrap.dedent(code) + "\nimport sys\nprint('done', flush=True)\nsys.stdin.read()\n"
        self.proc = subprocess.Popen(
            [PYTHON3, "-S", "-c", f"import os\n{body}"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.pid = self.proc.pid
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.strip() == "done", f"the child failed ({self.proc.wait()})"

    def finish(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(10)


# ---------------------------------------------------------------------------------------------
# The sensor under the watchers


@pytest.mark.kernel
def test_each_kind_of_change_names_its_writer(tmp_path: Path, watch) -> None:
    d = tmp_path / "cron.d"
    d.mkdir()
    job = d / "job"
    job.write_text("ok\n")
    w, sink = watch([str(d)])
    a, b = d / "a", d / "b"
    child = Child(f"""
        with open("{a}", "w") as f:
            f.write("* * * * * root /tmp/payload\\n")
        with open("{job}", "a") as f:
            f.write("evil\\n")
        os.chmod("{job}", 0o600)
        os.rename("{a}", "{b}")
        os.unlink("{b}")
        """)
    try:
        exe = os.path.realpath(PYTHON3)
        for path, change in ((a, "created"), (job, "modified"), (job, "attrib"),
                             (b, "moved"), (b, "deleted")):  # fmt: skip
            e = sink.fs(str(path), change)
            assert e["pid"] == child.pid, (change, e)
            assert e["writer"] == f"pid {child.pid} (python3)", e
            assert e["comm"] == "python3" and e["exe"] == exe and e["session"] == 0
            assert e["ppid"] == os.getpid()
    finally:
        child.finish()
    assert w.limits()["named"] >= 5
    assert w.limits()["fanotify"]["marks"] >= 1


@pytest.mark.kernel
def test_a_directory_made_in_a_watched_tree_is_marked_too(tmp_path: Path, watch) -> None:
    units = tmp_path / "systemd"
    units.mkdir()
    _, sink = watch([str(units)])
    wants = units / "multi-user.target.wants"
    maker = Child(f'os.mkdir("{wants}")')
    try:
        assert sink.fs(str(wants), "created")["pid"] == maker.pid
    finally:
        maker.finish()
    # The new directory's mark was placed when its creation was read: a file written in it
    # from now on has a writer.
    link = wants / "evil.service"
    writer = Child(f'open("{link}", "w").close()')
    try:
        assert sink.fs(str(link), "created")["pid"] == writer.pid
    finally:
        writer.finish()


@pytest.mark.kernel
def test_own_writes_are_dropped_and_anyone_elses_are_named(tmp_path: Path, watch) -> None:
    logs = tmp_path / "log"
    logs.mkdir()
    alerts = logs / "alerts.jsonl"
    alerts.write_text('{"rule": "old"}\n')
    me = os.getpid()
    w, sink = watch([str(logs)], own_writer=lambda wr: wr.pid == me)
    for i in range(3):  # roguewatch (this process) appends alerts
        with open(alerts, "a") as f:
            f.write(json.dumps({"rule": f"r{i}"}) + "\n")
    deadline = time.monotonic() + 5
    while w.limits()["own"] < 1:  # our appends were seen, and dropped
        assert time.monotonic() < deadline, w.limits()
        time.sleep(0.01)
    agent = Child(f'open("{alerts}", "r+").truncate(0)')
    try:
        sink.wait(lambda e: e.get("path") == str(alerts) and e.get("pid") == agent.pid)
    finally:
        agent.finish()
    # Everything reported about the log up to the agent's truncation is the agent's.
    mine = [e for e in sink.events if e.get("path") == str(alerts)]
    assert mine and all(e["pid"] == agent.pid for e in mine), mine


class _Stub:
    """A sensor that answers ``take`` with given writers (the merge rules, no kernel)."""

    on_overflow = None

    def __init__(self, new: list[Writer], last: Writer | None) -> None:
        self.answer = (new, last)

    def take(self, path: str, *, wait: bool = True) -> tuple[list[Writer], Writer | None]:
        return self.answer

    def mark(self, path: str, *, tree: bool = False) -> bool:
        return True


def _w(pid: int) -> Writer:
    return Writer(pid, 0, pid, 0x2, f"p{pid}", f"/bin/p{pid}", 1, 0)


@pytest.mark.parametrize(
    ("new", "last", "expected"),
    [
        ([_w(1), _w(2)], None, 2),  # inotify merged our write with the agent's: the agent's
        ([_w(2), _w(1)], None, 2),
        ([_w(1)], None, False),  # ours alone: dropped
        ([], _w(1), False),  # a late event of our merged write: dropped
        ([], _w(2), 2),  # a late event of the agent's: the agent again
        ([], None, None),  # fanotify saw nothing: writer unknown
        ([_w(1), _w(0)], None, 0),  # someone outside our pid namespace: reported, unnamed
    ],
)
def test_which_writer_a_change_gets(new: list, last: Any, expected: Any) -> None:
    w = FsWatcher([], lambda e: None, writers=_Stub(new, last),  # type: ignore[arg-type]
                  own_writer=lambda wr: wr.pid == 1)  # fmt: skip
    got = w._writer("/var/log/roguewatch/alerts.jsonl", rescan=False)
    assert (got.pid if isinstance(got, Writer) else got) == expected


@pytest.mark.kernel
def test_a_fanotify_queue_overflow_is_a_monitor_event(tmp_path: Path) -> None:
    require_root()
    limit = "/proc/sys/fs/fanotify/max_queued_events"
    saved = Path(limit).read_text()
    Path(limit).write_text("16")  # taken when the group is made
    try:
        sensor = _sensor()
    finally:
        Path(limit).write_text(saved)
    d = tmp_path / "spool"
    d.mkdir()
    sink = Sink()
    w = FsWatcher([str(d)], sink, writers=sensor)
    w.start()
    try:
        with sensor._lock:  # the reader cannot read: the kernel queue of 16 fills up
            for i in range(100):
                (d / f"f{i}").write_text("x")
        ev = sink.wait(lambda e: e["type"] == "monitor" and e["kind"] == "fs_writer_overflow")
        assert "writer unknown" in ev["detail"]
        assert w.limits()["fanotify"]["overflows"] >= 1
        sink.fs(str(d / "f99"), "created")  # the changes themselves are all still reported
    finally:
        w.stop()


# ---------------------------------------------------------------------------------------------
# Available or not: doctor, the switch


@pytest.mark.kernel
def test_doctor_reports_fanotify_and_its_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    require_root()
    c = doctor._fanotify()
    assert c.ok and not c.required and c.status == "ok", c.detail
    monkeypatch.setenv(fanotify.ENV_SWITCH, "off")
    c = doctor._fanotify()
    assert not c.ok and not c.required and c.status == "warn"
    assert "fallback" in c.detail and "writer unknown" in c.detail
    with pytest.raises(fanotify.Unavailable):
        WriterSensor().start()


# ---------------------------------------------------------------------------------------------
# The collector: untracked writers named, roguewatch's own alert log


def _baseline_ready(watcher: launcher.Watcher) -> None:
    deadline = time.monotonic() + 30
    while not watcher.control.request("stats")["baseline_ready"]:
        assert time.monotonic() < deadline, "the baseline snapshot did not finish"
        time.sleep(0.05)


class Evaluator:
    """The real evaluator on a private collector, writing its alert file where we say."""

    def __init__(self, watcher: launcher.Watcher, tmp: Path, alerts_file: Path) -> None:
        (tmp / "rules.d").mkdir(exist_ok=True)
        policy = tmp / "policy.yaml"
        policy.write_text("mode: enforce\negress:\n  allow: [127.0.0.1/32]\n")
        endpoint = f"ipc://{tmp}/alerts.sock"
        r, w = os.pipe()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "roguewatch.runtime.evaluatord", "--events", watcher.events,
             "--control", watcher.control.endpoint, "--alerts", endpoint,
             "--alerts-file", str(alerts_file), "--rules", str(tmp / "rules.d"),
             "--policy", str(policy), "--no-journal", "--quiet", "--ready-fd", str(w)],
            pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        os.close(w)
        ok = os.read(r, 1) == b"1"
        os.close(r)
        assert ok, self.proc.stderr.read().decode() if self.proc.stderr else "no evaluator"
        self.sub = zmq.Context.instance().socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.connect(endpoint)
        # The publisher greets each subscriber (an empty map): from then on no alert is missed.
        assert self.sub.poll(5000), "no welcome from the alert stream"
        assert msgpack.unpackb(self.sub.recv(), raw=False) == {}
        self.received: list[dict] = []

    def wait_alert(self, pred: Callable[[dict], bool], timeout: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sub.poll(100):
                alert = msgpack.unpackb(self.sub.recv(), raw=False)
                if alert:
                    self.received.append(alert)
                    if pred(alert):
                        return alert
        pytest.fail(f"no such alert within {timeout} s; got {[a['rule'] for a in self.received]}")

    def close(self) -> None:
        self.sub.close(0)
        self.proc.terminate()
        self.proc.wait(10)


@pytest.mark.kernel
def test_an_untracked_writer_is_named_by_pid(collector: launcher.Watcher, tmp_path: Path) -> None:
    e = Evaluator(collector, tmp_path, tmp_path / "alerts.jsonl")
    path = f"/etc/cron.d/rwtest-fanotify-{os.getpid()}"
    _baseline_ready(collector)
    writer = None
    try:
        # In no session: only the watchers see it, and fanotify says who it was.
        writer = Child(f"""
            with open("{path}", "w") as f:
                f.write("* * * * * root /tmp/payload\\n")
            """)
        alert = e.wait_alert(lambda a: a["rule"] == "persistence_cron_write"
                             and a["event"].get("path") == path)  # fmt: skip
        assert alert["event"]["type"] == "fs_change" and alert["session"] == "0"
        assert alert["pid"] == writer.pid and alert["comm"] == "python3"
        assert alert["event"]["writer"] == f"pid {writer.pid} (python3)"
        assert alert["exe"] == os.path.realpath(PYTHON3)
        # No session: the writer is not killed; the file is still put back.
        assert "did not exist at baseline" in alert["outcome"], alert["outcome"]
        assert writer.proc.poll() is None
        assert not os.path.exists(path)
    finally:
        if writer is not None:
            writer.finish()
        e.close()
        Path(path).unlink(missing_ok=True)


@pytest.fixture
def log_dir() -> Iterator[Path]:
    """A directory of ours inside roguewatch's log directory (made, and removed, if absent)."""
    require_root()
    top = Path("/var/log/roguewatch")
    made_top = not top.exists()
    d = top / f"rwtest-{os.getpid()}"
    d.mkdir(parents=True, exist_ok=True)
    yield d
    shutil.rmtree(d if not made_top else top, ignore_errors=True)


@pytest.mark.kernel
def test_an_agent_truncating_the_alert_log_is_alerted_but_our_own_appends_are_not(
    log_dir: Path, tmp_path: Path
) -> None:
    alerts_file = log_dir / "alerts.jsonl"
    alerts_file.write_text("")  # exists before roguewatch starts: its open creates nothing
    cfg = tmp_path / "roguewatchd.yaml"
    cfg.write_text(f"alerts_file: {alerts_file}\n")
    watcher = launcher.start_private_collector(["--config", str(cfg)])
    e = None
    try:
        sub = bus.Subscriber(watcher.events)
        assert sub.wait_ready(5000)
        _baseline_ready(watcher)
        e = Evaluator(watcher, tmp_path, alerts_file)
        watcher.control.request("guard", pid=e.proc.pid)  # as roguewatchd guards its evaluator
        # 1. Something to alert on (a monitor alert): the evaluator appends it to the log.
        # (as roguewatchd would: only the monitor's own, guarded, processes may announce)
        watcher.control.request("guard", pid=os.getpid())
        watcher.control.request("announce", kind="restart", detail="rwtest: an alert to log")
        first = e.wait_alert(lambda a: a["rule"] == "roguewatch_component_restarted")
        deadline = time.monotonic() + 10
        while first["id"] not in alerts_file.read_text():
            assert time.monotonic() < deadline, "the evaluator did not write its alert"
            time.sleep(0.02)
        # 2. An agent truncates the log.
        agent = Child(f'open("{alerts_file}", "r+").truncate(0)')
        try:
            alert = e.wait_alert(lambda a: a["rule"] == "oversight_monitor_files_tampering"
                                 and a["event"].get("path") == str(alerts_file))  # fmt: skip
        finally:
            agent.finish()
        assert alert["pid"] == agent.pid, alert
        assert alert["event"]["writer"] == f"pid {agent.pid} (python3)"
        # The first monitor-files alert is the agent's: our appends raised none.
        tampering = [a for a in e.received if a["rule"] == "oversight_monitor_files_tampering"
                     and a["event"].get("path") == str(alerts_file)]  # fmt: skip
        assert tampering[0] is alert
        # On the stream, up to the agent's truncation, the log's changes are all the agent's.
        log_events = []
        for ev in sub.events(timeout_ms=2000):
            if ev["type"] == "fs_change" and ev["path"] == str(alerts_file):
                log_events.append(ev)
                if ev["pid"] == agent.pid:
                    break
        assert log_events and all(ev["pid"] == agent.pid for ev in log_events), log_events
        assert watcher.control.request("stats")["watcher"]["own"] >= 1
    finally:
        if e is not None:
            e.close()
        watcher.close()


@pytest.mark.kernel
def test_without_fanotify_the_writer_is_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_root()
    monkeypatch.setenv(fanotify.ENV_SWITCH, "off")  # the collector inherits it
    watcher = launcher.start_private_collector()
    monkeypatch.delenv(fanotify.ENV_SWITCH)
    path = f"/etc/cron.d/rwtest-nofanotify-{os.getpid()}"
    e = None
    try:
        _baseline_ready(watcher)
        assert watcher.control.request("stats")["watcher"]["fanotify"] is None
        e = Evaluator(watcher, tmp_path, tmp_path / "alerts.jsonl")
        writer = Child(f'open("{path}", "w").write("* * * * * root /tmp/payload\\n")')
        try:
            alert = e.wait_alert(lambda a: a["rule"] == "persistence_cron_write"
                                 and a["event"].get("path") == path)  # fmt: skip
        finally:
            writer.finish()
        assert alert["event"]["writer"] == "unknown" and alert["pid"] == 0
        assert alert["session"] == "0" and not os.path.exists(path)
    finally:
        if e is not None:
            e.close()
        watcher.close()
        Path(path).unlink(missing_ok=True)
