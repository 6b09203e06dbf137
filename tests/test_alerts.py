"""The alert sinks: time format, the JSON-lines file, the PUB socket, journald, the human form."""

from __future__ import annotations

import io
import json
import os
import stat
import threading
import time

import msgpack
import pytest
import zmq
from roguewatch.core import timefmt
from roguewatch.core.contracts import AlertIds
from roguewatch.outputs import alerts

NS = 1_000_000_000


def make_alert(seq: int = 1, **over: object) -> dict:
    alert = {
        "id": f"18a2b3c4d5e6f708-{seq}",
        "ts": timefmt.rfc3339(time.time_ns()),
        "rule": "egress_outside_allowlist",
        "message": "curl connected to 203.0.113.9:443, outside the session's allowlist",
        "category": "egress",
        "severity": "high",
        "tags": ["T1041"],
        "session": "1a2b",
        "pid": 4242,
        "ppid": 4200,
        "uid": 1000,
        "comm": "curl",
        "exe": "/usr/bin/curl",
        "cmdline": "curl https://203.0.113.9/",
        "exec_id": "abc:4242",
        "lineage": [{"pid": 4200, "exe": "/usr/bin/bash"}],
        "event": {"type": "connect", "proto": "tcp", "addr": "203.0.113.9", "port": 443},
        "action": "kill_session",
        "outcome": "3 processes killed",
        "count": 1,
    }
    alert.update(over)
    return alert


# -- time -------------------------------------------------------------------------------------


def test_rfc3339_has_microseconds_and_utc() -> None:
    ts = 1_795_473_001 * NS + 123_456_789
    assert timefmt.rfc3339(ts) == "2026-11-23T22:30:01.123456Z"
    assert timefmt.rfc3339(0) == "1970-01-01T00:00:00.000000Z"
    assert timefmt.parse_rfc3339("2026-11-23T22:30:01.123456Z") == ts - 789


def test_parse_rfc3339_offsets_and_precision() -> None:
    base = timefmt.parse_rfc3339("2026-11-23T22:30:01Z")
    assert timefmt.parse_rfc3339("2026-11-23T23:30:01+01:00") == base
    assert timefmt.parse_rfc3339("2026-11-23T22:30:01.000000001Z") == base + 1
    assert timefmt.parse_rfc3339("2026-11-23 22:30:01.5z") == base + NS // 2


def test_parse_since_durations_and_times() -> None:
    now = 1_000_000 * NS
    assert timefmt.parse_since("30s", now) == now - 30 * NS
    assert timefmt.parse_since("10m", now) == now - 600 * NS
    assert timefmt.parse_since("2h", now) == now - 7200 * NS
    assert timefmt.parse_since("1d", now) == now - 86400 * NS
    assert timefmt.parse_since("1h30m", now) == now - 5400 * NS
    assert timefmt.parse_since("2026-11-23T22:30:01Z") == 1_795_473_001 * NS
    before = time.time_ns()
    assert before - 60 * NS <= timefmt.parse_since("1m") <= time.time_ns() - 60 * NS


@pytest.mark.parametrize("bad", ["", "yesterday", "10x", "-5m", "2026-13-45T00:00:00Z"])
def test_parse_since_rejects_with_a_helpful_message(bad: str) -> None:
    with pytest.raises(ValueError, match=r"RFC 3339 time .* duration"):
        timefmt.parse_since(bad)


def test_severity_rank_orders_severities() -> None:
    ranks = [alerts.severity_rank(s) for s in alerts.SEVERITIES]
    assert ranks == sorted(ranks) == list(range(5))
    assert alerts.severity_rank("bogus") == -1


def test_alert_ids_are_unique_and_carry_the_start_time() -> None:
    ids = AlertIds(start_ns=0x18A2)
    assert [ids.next(), ids.next()] == ["18a2-1", "18a2-2"]


# -- the JSON-lines file ----------------------------------------------------------------------


def test_file_appends_one_line_per_alert_and_flushes_each(tmp_path) -> None:
    path = tmp_path / "log" / "alerts.jsonl"
    f = alerts.AlertFile(str(path))
    try:
        assert f.send(make_alert(1))
        # Read back before closing: each alert must already be in the file.
        lines = path.read_text().splitlines()
        assert len(lines) == 1
        assert json.loads(lines[0]) == make_alert(1) | {"ts": json.loads(lines[0])["ts"]}
        assert " " not in lines[0].split('"message"')[0]  # compact separators
        f.send(make_alert(2))
        assert [json.loads(x)["id"] for x in path.read_text().splitlines()] == [
            "18a2b3c4d5e6f708-1",
            "18a2b3c4d5e6f708-2",
        ]
    finally:
        f.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o750
    assert f.written == 2 and f.failed == 0


def test_file_is_opened_for_append(tmp_path) -> None:
    path = tmp_path / "alerts.jsonl"
    path.write_text('{"id":"old"}\n')
    with_old = alerts.AlertFile(str(path))
    with_old.send(make_alert(1))
    with_old.close()
    assert [json.loads(x)["id"] for x in path.read_text().splitlines()][:1] == ["old"]


def test_file_rotates_by_size_keeping_keep_files(tmp_path) -> None:
    path = tmp_path / "alerts.jsonl"
    line_len = len(alerts.to_json(make_alert(10))) + 1
    # Room for exactly two alerts per file.
    f = alerts.AlertFile(str(path), max_bytes=2 * line_len, keep=2)
    try:
        for seq in range(10, 20):
            assert f.send(make_alert(seq))
            assert path.stat().st_size <= 2 * line_len
    finally:
        f.close()
    ids = {
        name: [
            json.loads(x)["id"].split("-")[1] for x in (tmp_path / name).read_text().splitlines()
        ]
        for name in sorted(os.listdir(tmp_path))
    }
    # Ten alerts, two per file: 18-19 current, 16-17 in .1, 14-15 in .2; older ones dropped.
    assert ids == {
        "alerts.jsonl": ["18", "19"],
        "alerts.jsonl.1": ["16", "17"],
        "alerts.jsonl.2": ["14", "15"],
    }
    assert f.rotations == 4


def test_rotation_never_drops_an_alert_another_sink_did_not_deliver(tmp_path) -> None:
    """A sink that failed on alert 12 (a full subscriber queue, say): the file that holds it
    leaves the numbered chain at its rotation and is kept; the others rotate as before."""
    path = tmp_path / "alerts.jsonl"
    line_len = len(alerts.to_json(make_alert(10))) + 1
    f = alerts.AlertFile(str(path), max_bytes=2 * line_len, keep=1)

    def flaky(alert: dict) -> bool:
        return alert["id"].split("-")[1] != "12"

    sinks = alerts.Sinks([f, flaky])
    try:
        for seq in range(10, 20):
            sinks.emit(make_alert(seq))
    finally:
        sinks.close()
    kept = [n for n in os.listdir(tmp_path) if ".undelivered-" in n]
    assert len(kept) == 1 and f.kept == 1, os.listdir(tmp_path)
    ids = [json.loads(x)["id"].split("-")[1] for x in (tmp_path / kept[0]).read_text().splitlines()]
    assert "12" in ids
    assert (tmp_path / "alerts.jsonl.1").exists() and not (tmp_path / "alerts.jsonl.2").exists()


def test_file_write_failure_is_counted_not_raised(tmp_path) -> None:
    path = tmp_path / "alerts.jsonl"
    f = alerts.AlertFile(str(path))
    os.close(f._fd)  # the disk went away under us
    f._fd = os.open(os.devnull, os.O_RDONLY)
    try:
        assert f.send(make_alert(1)) is False
        assert f.failed == 1
        assert f.send(make_alert(2)) is True  # reopened
    finally:
        f.close()


# -- the PUB socket ---------------------------------------------------------------------------


def test_publisher_sends_msgpack_alerts_to_a_subscriber(tmp_path) -> None:
    endpoint = f"ipc://{tmp_path}/run/alerts.sock"
    pub = alerts.AlertPublisher(endpoint)
    sock_path = tmp_path / "run" / "alerts.sock"
    assert stat.S_IMODE(sock_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(sock_path.parent.stat().st_mode) == 0o700
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoint)
    try:
        # The evaluator's loop does this: the welcome goes out when the XPUB is serviced.
        assert pub.drain_subscriptions(timeout_ms=2000) == 1
        assert sub.poll(2000), "no welcome"
        assert msgpack.unpackb(sub.recv()) == {}  # the welcome: an empty map
        assert pub.send(make_alert(1))
        assert sub.poll(2000)
        got = alerts.unpack(sub.recv())
        assert got is not None and got["id"] == "18a2b3c4d5e6f708-1"
        assert got["event"]["addr"] == "203.0.113.9"
        assert pub.sent == 1 and pub.lost == 0 and pub.subscriptions == 1
    finally:
        sub.close(0)
        pub.close()
    assert not sock_path.exists()


def test_publisher_without_subscriber_never_blocks(tmp_path) -> None:
    pub = alerts.AlertPublisher(f"ipc://{tmp_path}/alerts.sock")
    try:
        # A send that blocked would hang the sender for good: the thread would never end
        # (the generous join is a hang detector, not a figure; speed is bench/'s).
        sender = threading.Thread(target=lambda: [pub.send(make_alert(s)) for s in range(20_000)])
        sender.start()
        sender.join(60)
        assert not sender.is_alive(), "a send blocked with no subscriber"
    finally:
        pub.close()


def test_publisher_counts_what_a_stalled_subscriber_could_not_take(tmp_path) -> None:
    endpoint = f"ipc://{tmp_path}/alerts.sock"
    pub = alerts.AlertPublisher(endpoint, send_hwm=10)
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, 10)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoint)
    try:
        assert pub.drain_subscriptions(timeout_ms=2000) == 1
        assert sub.poll(2000)
        big = make_alert(0, message="x" * 100_000)  # beyond the kernel's socket buffers
        for _ in range(200):  # never read: the queues fill up
            pub.send(big)
        assert pub.lost > 0
        assert pub.sent + pub.lost == 200
    finally:
        sub.close(0)
        pub.close()


def test_unpack_skips_the_welcome_and_rejects_garbage() -> None:
    assert alerts.unpack(alerts.pack({})) is None
    with pytest.raises(ValueError):
        alerts.unpack(msgpack.packb([1, 2]))
    with pytest.raises(ValueError):
        alerts.unpack(b"\xc1")


# -- journald ---------------------------------------------------------------------------------


def test_journal_unavailable_is_a_quiet_no_op(tmp_path, caplog) -> None:
    j = alerts.Journal(socket_path=str(tmp_path / "no-journal-socket"))
    assert j.available is False
    assert "does not exist" in j.reason
    with caplog.at_level("INFO", logger="roguewatch.outputs.alerts"):
        assert j.send(make_alert(1)) is False
        assert j.send(make_alert(2)) is False
    assert len([r for r in caplog.records if "journald" in r.getMessage()]) == 1  # reported once


def test_journal_fields_are_structured() -> None:
    fields = alerts.Journal.fields(make_alert(7, severity="critical"))
    assert fields["PRIORITY"] == "2"
    assert fields["SYSLOG_IDENTIFIER"] == "roguewatch"
    assert fields["ROGUEWATCH_RULE"] == "egress_outside_allowlist"
    assert fields["ROGUEWATCH_SESSION"] == "1a2b"
    assert fields["ROGUEWATCH_PID"] == "4242"
    assert fields["ROGUEWATCH_ALERT_ID"] == "18a2b3c4d5e6f708-7"
    assert json.loads(fields["ROGUEWATCH_ALERT"])["severity"] == "critical"
    assert [alerts.JOURNAL_PRIORITY[s] for s in alerts.SEVERITIES] == [6, 5, 4, 3, 2]


def test_journal_sends_through_systemd_when_available(tmp_path, monkeypatch) -> None:
    sock = tmp_path / "journal.socket"
    sock.touch()
    j = alerts.Journal(socket_path=str(sock))
    assert j.available
    sent: list[dict] = []
    monkeypatch.setattr(j, "_send", lambda **kw: sent.append(kw))
    assert j.send(make_alert(1, severity="medium"))
    assert sent[0]["PRIORITY"] == "4" and sent[0]["ROGUEWATCH_ACTION"] == "kill_session"


# -- the human form ---------------------------------------------------------------------------


def test_human_has_rule_severity_process_detail_action() -> None:
    line = alerts.human(make_alert(1, count=3), color=False)
    assert "\n" not in line and "\033" not in line
    for part in (
        "high",
        "egress_outside_allowlist",
        "1a2b",
        "curl[4242]",
        "tcp 203.0.113.9:443",
        "kill_session",
        "3 processes killed",
        "(x3)",
    ):
        assert part in line, (part, line)
    assert line[:8].count(":") == 2  # HH:MM:SS first


def test_human_colors_severity_only_when_asked() -> None:
    colored = alerts.human(make_alert(1, severity="critical"), color=True)
    assert "\033[" in colored and "critical" in colored
    assert "(x" not in colored  # count 1 is not shown


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ({"type": "openat", "path": "/etc/cron.d/evil"}, "/etc/cron.d/evil"),
        ({"type": "connect", "addr": "2001:db8::1", "port": 53}, "[2001:db8::1]:53"),
        ({"type": "kill", "target": 1, "sig": 15}, "target=1 sig=15"),
        ({"type": "exec", "filename": "/usr/bin/crontab"}, "/usr/bin/crontab"),
        ({"type": "rename", "source": "/tmp/x", "path": "/etc/rc.local"}, "/tmp/x -> /etc/rc"),
    ],
)
def test_human_key_detail(event: dict, expected: str) -> None:
    assert expected in alerts.human(make_alert(1, event=event))


def test_the_types_detail_names_are_event_types() -> None:
    from roguewatch.stream import events

    named = {*alerts.DETAIL_NETWORK_TYPES, *alerts.DETAIL_SIGNAL_TYPES,
             *alerts.DETAIL_TWO_PATH_TYPES, "exec", "monitor"}  # fmt: skip
    assert named <= set(events.NAMES), named - set(events.NAMES)


def test_human_escapes_terminal_control_from_the_agent() -> None:
    line = alerts.human(make_alert(1, comm="x\033]0;pwned\007", event={"type": "x"}))
    assert "\033" not in line and "\007" not in line and "\\x1b" in line


def test_console_sink_writes_human_lines() -> None:
    buf = io.StringIO()
    alerts.Console(buf).send(make_alert(1))
    assert buf.getvalue().count("\n") == 1 and "egress_outside_allowlist" in buf.getvalue()


# -- fan-out ----------------------------------------------------------------------------------


def test_sinks_isolate_a_failing_sink(tmp_path) -> None:
    got: list[str] = []

    def broken(alert: dict) -> None:
        raise RuntimeError("disk on fire")

    def console(alert: dict) -> None:
        got.append(alert["id"])

    file = alerts.AlertFile(str(tmp_path / "alerts.jsonl"))
    sinks = alerts.Sinks([broken, file, console])
    try:
        sinks.emit(make_alert(1))
        sinks.emit(make_alert(2))
    finally:
        sinks.close()
    assert got == ["18a2b3c4d5e6f708-1", "18a2b3c4d5e6f708-2"]
    assert len((tmp_path / "alerts.jsonl").read_text().splitlines()) == 2
    assert sinks.failures == {"broken": 2, "AlertFile": 0, "console": 0}


def test_sinks_service_welcomes_subscribers_of_the_publisher(tmp_path) -> None:
    endpoint = f"ipc://{tmp_path}/alerts.sock"
    pub = alerts.AlertPublisher(endpoint)
    sinks = alerts.Sinks([pub])
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoint)
    try:
        deadline = time.monotonic() + 2
        while not sub.poll(20) and time.monotonic() < deadline:
            sinks.service()  # what the evaluator's loop does
        assert alerts.unpack(sub.recv()) is None  # the welcome
        sinks.send(make_alert(1))
        assert sub.poll(2000)
        assert alerts.unpack(sub.recv())["id"] == "18a2b3c4d5e6f708-1"
    finally:
        sub.close(0)
        sinks.close()
