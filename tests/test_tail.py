"""``roguewatch tail``: filters over the file, and following the socket or the file itself."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from roguewatch.cli import tail
from roguewatch.core import timefmt
from roguewatch.outputs import alerts

NS = 1_000_000_000
MIN = 60 * NS


def make_alert(seq: int, *, age_ns: int = 0, **over: object) -> dict:
    alert = {
        "id": f"5eed-{seq}",
        "ts": timefmt.rfc3339(time.time_ns() - age_ns),
        "rule": f"rule_{seq}",
        "message": f"alert number {seq}",
        "category": "egress",
        "severity": "high",
        "tags": [],
        "session": "1a2b",
        "pid": 100 + seq,
        "ppid": 1,
        "uid": 0,
        "comm": "agent",
        "exe": "/usr/bin/agent",
        "cmdline": "agent",
        "exec_id": f"x:{100 + seq}",
        "lineage": [],
        "event": {"type": "openat", "path": f"/etc/cron.d/job{seq}"},
        "action": "alert",
        "outcome": "",
        "count": 1,
    }
    alert.update(over)
    return alert


def write(path: Path, *items: dict | str) -> None:
    with open(path, "a") as fh:
        for item in items:
            fh.write((item if isinstance(item, str) else alerts.to_json(item)) + "\n")


class Output(io.TextIOBase):
    """A stdout that the test thread can read while tail's thread writes."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._buf = ""
        self._lock = threading.Lock()

    def write(self, s: str) -> int:
        with self._lock:
            self._buf += s
            *done, self._buf = self._buf.split("\n")
            self._lines.extend(done)
        return len(s)

    def isatty(self) -> bool:
        return False

    @property
    def lines(self) -> list[str]:
        with self._lock:
            return list(self._lines)

    def ids(self) -> list[str]:
        return [json.loads(line)["id"] for line in self.lines]


def args_for(path: Path, *argv: str, endpoint: str | None = None) -> object:
    return tail.build_parser().parse_args(
        [*argv, "--file", str(path), "--endpoint", endpoint or f"ipc://{path}.nosock"]
    )


def run_tail(path: Path, *argv: str) -> tuple[int, list[str], str]:
    out, err = Output(), io.StringIO()
    rc = tail.main(args_for(path, *argv), out=out, err=err)
    return rc, out.lines, err.getvalue()


def ids_of(lines: list[str]) -> list[str]:
    return [json.loads(line)["id"] for line in lines]


def wait_for(cond: Callable[[], bool], timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


class Following:
    """``roguewatch tail --follow`` running in a thread until stopped."""

    def __init__(self, args: object) -> None:
        self.out, self.err = Output(), io.StringIO()
        self.stop = threading.Event()
        self.rc: int | None = None
        self.thread = threading.Thread(target=self._run, args=(args,), daemon=True)
        self.thread.start()

    def _run(self, args: object) -> None:
        self.rc = tail.main(args, stop=self.stop, out=self.out, err=self.err)

    def finish(self) -> int | None:
        self.stop.set()
        self.thread.join(3)
        assert not self.thread.is_alive(), "tail did not stop"
        return self.rc


@pytest.fixture
def following() -> Iterator[Callable[[object], Following]]:
    started: list[Following] = []

    def start(args: object) -> Following:
        f = Following(args)
        started.append(f)
        return f

    yield start
    for f in started:
        f.stop.set()
        f.thread.join(3)


# -- history and filters ----------------------------------------------------------------------


@pytest.fixture
def history(tmp_path: Path) -> Path:
    path = tmp_path / "alerts.jsonl"
    write(
        path,
        make_alert(1, age_ns=60 * MIN, severity="info", category="monitor", session=""),
        make_alert(2, age_ns=30 * MIN, severity="low", category="persistence", session="ff"),
        make_alert(3, age_ns=5 * MIN, severity="medium", category="egress", session="1a2b"),
        make_alert(4, age_ns=2 * MIN, severity="high", category="persistence", session="1A2B"),
        make_alert(5, age_ns=1 * MIN, severity="critical", category="shutdown_evasion"),
    )
    return path


def test_all_alerts_in_order_as_json(history: Path) -> None:
    rc, lines, err = run_tail(history, "--json")
    assert rc == 0 and err == ""
    assert ids_of(lines) == [f"5eed-{n}" for n in range(1, 6)]
    assert json.loads(lines[0]) == json.loads(history.read_text().splitlines()[0])


def test_human_lines_by_default(history: Path) -> None:
    rc, lines, _ = run_tail(history)
    assert rc == 0 and len(lines) == 5
    assert "rule_4" in lines[3] and "/etc/cron.d/job4" in lines[3] and "\033" not in lines[3]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--severity", "medium"], [3, 4, 5]),
        (["--severity", "critical"], [5]),
        (["--severity", "info"], [1, 2, 3, 4, 5]),
        (["--category", "persistence"], [2, 4]),
        (["--session", "1a2b"], [3, 4, 5]),
        (["--session", "0x00001A2B"], [3, 4, 5]),
        (["--session", "ff"], [2]),
        (["--since", "10m"], [3, 4, 5]),
        (["--since", "45m", "--category", "persistence", "--severity", "high"], [4]),
    ],
)
def test_filters(history: Path, argv: list[str], expected: list[int]) -> None:
    rc, lines, _ = run_tail(history, "--json", *argv)
    assert rc == 0
    assert ids_of(lines) == [f"5eed-{n}" for n in expected]


def test_since_as_an_rfc3339_time(history: Path) -> None:
    since = timefmt.rfc3339(time.time_ns() - 3 * MIN)
    _, lines, _ = run_tail(history, "--json", "--since", since)
    assert ids_of(lines) == ["5eed-4", "5eed-5"]


def test_since_reaches_into_rotated_files_oldest_first(tmp_path: Path) -> None:
    path = tmp_path / "alerts.jsonl"
    old, older, oldest = (Path(f"{path}.{n}") for n in (1, 2, 3))
    write(oldest, make_alert(1, age_ns=300 * MIN))
    write(older, make_alert(2, age_ns=50 * MIN))
    write(old, make_alert(3, age_ns=20 * MIN))
    write(path, make_alert(4, age_ns=1 * MIN))
    now = time.time()
    os.utime(oldest, (now - 290 * 60, now - 290 * 60))  # its last write: long ago
    os.utime(older, (now - 40 * 60, now - 40 * 60))
    os.utime(old, (now - 10 * 60, now - 10 * 60))
    _, lines, _ = run_tail(path, "--json")
    assert ids_of(lines) == ["5eed-4"]  # no --since: the current file only
    _, lines, _ = run_tail(path, "--json", "--since", "1h")
    assert ids_of(lines) == ["5eed-2", "5eed-3", "5eed-4"]  # .3 is older than an hour: unread


def test_missing_file_is_not_an_error(tmp_path: Path) -> None:
    rc, lines, err = run_tail(tmp_path / "none.jsonl")
    assert rc == 0 and lines == []
    assert f"no alerts yet ({tmp_path / 'none.jsonl'} does not exist)" in err


def test_malformed_lines_are_counted_and_reported(tmp_path: Path) -> None:
    path = tmp_path / "alerts.jsonl"
    write(path, make_alert(1), "{not json", "[1, 2]", "", make_alert(2))
    with open(path, "ab") as fh:
        fh.write(b"\xff\xfe garbage\n")
    rc, lines, err = run_tail(path, "--json")
    assert rc == 0
    assert ids_of(lines) == ["5eed-1", "5eed-2"]
    assert "3 malformed lines skipped" in err and "Traceback" not in err


def test_bad_since_is_a_usage_error(history: Path) -> None:
    rc, lines, err = run_tail(history, "--since", "last tuesday")
    assert rc == 2 and lines == []
    assert "--since" in err and "10m" in err


# -- following the live socket ----------------------------------------------------------------


def test_follow_joins_file_history_and_live_stream_without_gap_or_duplicate(
    tmp_path: Path, following: Callable[[object], Following]
) -> None:
    path = tmp_path / "alerts.jsonl"
    endpoint = f"ipc://{tmp_path}/run/alerts.sock"
    pub = alerts.AlertPublisher(endpoint)
    file = alerts.AlertFile(str(path))
    try:
        file.send(make_alert(1))
        file.send(make_alert(2))  # also published after tail subscribed: one copy only
        f = following(args_for(path, "--json", "--follow", endpoint=endpoint))
        # Service the publisher as the evaluator does: the welcome goes out, tail is subscribed.
        assert wait_for(lambda: pub.drain_subscriptions(timeout_ms=50) > 0)
        pub.send(make_alert(2))
        file.send(make_alert(3))  # the evaluator's order: file, then socket
        pub.send(make_alert(3))
        pub.send(make_alert(4, severity="low"))
        assert wait_for(lambda: len(f.out.lines) >= 4), f.out.lines
        time.sleep(0.3)  # anything extra (a duplicate) would arrive now
        assert f.finish() == 0
    finally:
        pub.close()
        file.close()
    assert f.out.ids() == ["5eed-1", "5eed-2", "5eed-3", "5eed-4"]
    assert f.err.getvalue() == ""


def test_follow_socket_applies_filters_to_live_alerts(
    tmp_path: Path, following: Callable[[object], Following]
) -> None:
    path = tmp_path / "alerts.jsonl"
    endpoint = f"ipc://{tmp_path}/alerts.sock"
    pub = alerts.AlertPublisher(endpoint)
    try:
        f = following(args_for(path, "--json", "-f", "--severity", "high", endpoint=endpoint))
        assert wait_for(lambda: pub.drain_subscriptions(timeout_ms=50) > 0)
        pub.send(make_alert(1, severity="low"))
        pub.send(make_alert(2, severity="critical"))
        assert wait_for(lambda: len(f.out.lines) >= 1)
        time.sleep(0.1)
        f.finish()
    finally:
        pub.close()
    assert f.out.ids() == ["5eed-2"]


def test_follow_with_a_dead_socket_falls_back_to_the_file(
    tmp_path: Path, following: Callable[[object], Following], monkeypatch
) -> None:
    monkeypatch.setattr(tail, "WELCOME_TIMEOUT_MS", 100)
    path = tmp_path / "alerts.jsonl"
    stale = tmp_path / "alerts.sock"
    stale.touch()  # left over from a daemon that died: nobody answers
    write(path, make_alert(1))
    f = following(args_for(path, "--json", "-f", endpoint=f"ipc://{stale}"))
    assert wait_for(lambda: len(f.out.lines) >= 1)
    write(path, make_alert(2))
    assert wait_for(lambda: len(f.out.lines) >= 2)
    f.finish()
    assert f.out.ids() == ["5eed-1", "5eed-2"]
    assert "no answer from" in f.err.getvalue()


# -- following the file -----------------------------------------------------------------------


def test_follow_file_across_rotation(
    tmp_path: Path, following: Callable[[object], Following]
) -> None:
    path = tmp_path / "alerts.jsonl"
    line_len = len(alerts.to_json(make_alert(10))) + 1
    writer = alerts.AlertFile(str(path), max_bytes=2 * line_len, keep=3)
    try:
        writer.send(make_alert(10))
        f = following(args_for(path, "--json", "--follow"))
        assert wait_for(lambda: len(f.out.lines) >= 1)
        writer.send(make_alert(11))
        writer.send(make_alert(12))  # rotates: 10 and 11 move to .1
        assert writer.rotations == 1
        writer.send(make_alert(13))
        assert wait_for(lambda: len(f.out.lines) >= 4), f.out.lines
        time.sleep(0.25)  # one more poll: no duplicates after the rotation
        writer.send(make_alert(14))  # rotates again
        writer.send(make_alert(15))
        assert wait_for(lambda: len(f.out.lines) >= 6), f.out.lines
        f.finish()
    finally:
        writer.close()
    assert f.out.ids() == [f"5eed-{n}" for n in range(10, 16)]


def test_follow_file_after_truncation_and_before_it_exists(
    tmp_path: Path, following: Callable[[object], Following]
) -> None:
    path = tmp_path / "alerts.jsonl"
    f = following(args_for(path, "--json", "-f"))
    time.sleep(0.1)
    write(path, make_alert(1), make_alert(2))
    assert wait_for(lambda: len(f.out.lines) >= 2)
    with open(path, "w"):
        pass  # truncated in place
    time.sleep(0.25)
    write(path, make_alert(3))
    assert wait_for(lambda: len(f.out.lines) >= 3)
    f.finish()
    assert f.out.ids() == ["5eed-1", "5eed-2", "5eed-3"]
    assert "waiting for it" in f.err.getvalue()


def test_ctrl_c_exits_130_quietly(tmp_path: Path) -> None:
    path = tmp_path / "alerts.jsonl"
    write(path, make_alert(1))
    code = textwrap.dedent(
        f"""
        import sys
        from roguewatch.cli import tail
        args = tail.build_parser().parse_args(
            ["--follow", "--file", {str(path)!r}, "--endpoint", "ipc://{tmp_path}/none.sock"]
        )
        sys.exit(tail.main(args))
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # history printed: it is in its follow loop
        assert "rule_1" in first
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=3)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
