"""The event stream as a product: its wire format, bad input, recordings, and its docs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest
import zmq
from roguewatch.policy import config
from roguewatch.probes import layout
from roguewatch.stream import bus, events, recording

ROOT = Path(__file__).resolve().parent.parent


def connected(pub: bus.Publisher, sub: bus.Subscriber) -> bool:
    """Pump the publisher (ZeroMQ attaches pipes when a socket is used) until the welcome."""
    for _ in range(100):
        pub.drain_subscriptions()
        if sub.wait_ready(20):
            return True
    return False


def test_docs_events_md_is_generated_from_the_event_module() -> None:
    assert (ROOT / "docs/events.md").read_text() == events.markdown(), "run `make docs`"


def test_every_kernel_record_type_is_a_documented_event_type_in_the_c_order() -> None:
    header = (ROOT / "probes/roguewatch.h").read_text()
    enum = re.search(r"enum rw_type \{(.*?)\};", header, re.S).group(1)
    c_names = [n.split("=")[0].strip()[3:].lower() for n in enum.split(",") if n.strip()]
    assert c_names[0] == "none" and c_names[-1] == "type_max"
    assert tuple(["", *c_names[1:-1]]) == layout.TYPE_NAMES
    assert set(layout.TYPE_NAMES[1:]) - layout.INTERNAL_TYPES_NAMES <= set(events.NAMES)
    # a record type that is not an event is never one by mistake
    assert not layout.INTERNAL_TYPES_NAMES & set(events.NAMES)


def test_record_header_matches_the_c_struct(tmp_path: Path) -> None:
    prog = tmp_path / "size.c"
    prog.write_text(
        "#include <stdio.h>\n#include <stdint.h>\n#include <stddef.h>\n"
        "typedef uint64_t u64; typedef int64_t s64; typedef uint32_t u32;"
        "typedef uint16_t u16; typedef uint8_t u8;\n#define TASK_COMM_LEN 16\n"
        + re.search(
            r"struct rw_hdr \{.*?\};", (ROOT / "probes/roguewatch.h").read_text(), re.S
        ).group(0)
        + '\nint main(void){printf("%zu %zu %zu %zu", sizeof(struct rw_hdr),'
        " offsetof(struct rw_hdr, type), offsetof(struct rw_hdr, len1),"
        " offsetof(struct rw_hdr, session)); return 0;}\n"
    )
    subprocess.run(["gcc", "-o", str(tmp_path / "size"), str(prog)], check=True)
    out = subprocess.check_output([str(tmp_path / "size")]).split()
    size, type_off, len1, session = map(int, out)
    assert size == layout.HEADER.size
    assert type_off == layout.TYPE_OFF
    assert len1 == layout.VAR.size - 4
    assert session == layout.IDENT_OFF  # the identity block the collector caches on


def test_a_truncated_or_unknown_record_is_refused_not_misread() -> None:
    with pytest.raises(layout.RecordError):
        layout.parse(b"\0" * 20, 0, 20)
    bogus = bytearray(layout.HEADER.size)
    bogus[layout.TYPE_OFF] = 200  # type number
    with pytest.raises(layout.RecordError, match="unknown event type"):
        layout.parse(bytes(bogus), 0, len(bogus))


def test_dns_names_are_read_from_queries() -> None:
    q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    q += b"\x05exfil\x07example\x03com\x00\x00\x01\x00\x01"
    assert layout.dns_name(q) == "exfil.example.com"
    assert layout.dns_name(len(q).to_bytes(2, "big") + q) == "exfil.example.com"  # over TCP
    assert layout.dns_name(b"garbage") == ""


def test_malformed_messages_on_the_bus_are_counted_and_dropped(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/ev.sock"
    pub = bus.Publisher(endpoint)
    sub = bus.Subscriber(endpoint)
    assert connected(pub, sub)
    raw = pub.socket
    raw.send(b"\xc1 not msgpack")
    raw.send(msgpack.packb({"not": "a list"}))
    raw.send(msgpack.packb([1, 2]))
    pub.publish([{"type": "exec", "pid": 1}])
    got = [sub.recv_batch(1000) for _ in range(4)]
    assert got[:3] == [[], [], []]
    assert got[3] == [{"type": "exec", "pid": 1}]
    assert sub.malformed == 3
    sub.close()
    pub.close()


def test_a_publisher_never_blocks_and_counts_what_a_slow_subscriber_missed(
    tmp_path: Path,
) -> None:
    endpoint = f"ipc://{tmp_path}/ev.sock"
    pub = bus.Publisher(endpoint)
    sub = bus.Subscriber(endpoint)
    sub.socket.setsockopt(zmq.RCVHWM, 1)
    assert connected(pub, sub)
    big = [{"type": "open", "path": "x" * 4000}] * 10
    for _ in range(20000):  # the subscriber reads nothing meanwhile
        pub.publish(big)
    assert pub.lost_events > 0
    assert pub.sent_events + pub.lost_events == 20000 * 10
    sub.close()
    pub.close()


def test_an_endpoint_in_a_shared_directory_is_refused_and_the_directory_left_alone(
    tmp_path: Path,
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)  # like /tmp
    with pytest.raises(bus.BusError, match="shared directory"):
        bus.Publisher(f"ipc://{shared}/ev.sock")
    assert os.stat(shared).st_mode & 0o7777 == 0o1777


def test_ipc_endpoints_are_root_only(tmp_path: Path) -> None:
    d = tmp_path / "run"
    pub = bus.Publisher(f"ipc://{d}/ev.sock")
    assert os.stat(d).st_mode & 0o777 == 0o700
    assert os.stat(d / "ev.sock").st_mode & 0o777 == 0o600
    pub.close()


def test_a_recording_round_trips_and_a_bad_one_is_named(tmp_path: Path) -> None:
    path = str(tmp_path / "r.rwrec")
    w = recording.Writer(path, ["agent"], 5)
    w.write({"type": "exec", "session": 5, "dns_query": b"\x00\x01"})
    w.close()
    header, evs = recording.read(path)
    assert header["command"] == ["agent"] and header["kernel"] == os.uname().release
    assert list(evs) == [{"type": "exec", "session": 5, "dns_query": b"\x00\x01"}]
    (tmp_path / "bad").write_bytes(b"hello")
    with pytest.raises(recording.RecordingError, match="not a roguewatch recording"):
        recording.read(str(tmp_path / "bad"))


def test_a_bad_config_names_the_key(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("ringbuf_pages: 3\n")
    with pytest.raises(config.ConfigError, match=r"ringbuf_pages.*power of two"):
        config.load(str(p))
    p.write_text("adopt_user: [agent]\n")
    with pytest.raises(config.ConfigError, match="unknown key 'adopt_user'"):
        config.load(str(p))
    p.write_text("batch_max: [\n")
    with pytest.raises(config.ConfigError, match=r"c.yaml:2:1: not valid YAML"):
        config.load(str(p))
    p.write_text("session_budget_rate: -1\n")
    with pytest.raises(config.ConfigError, match=r"session_budget_rate.*0 \(off\)"):
        config.load(str(p))
    p.write_text("session_budget_rate: 500\nsession_budget_burst: 0\n")
    with pytest.raises(config.ConfigError, match=r"session_budget_burst.*at least 1"):
        config.load(str(p))
    p.write_text("session_budget_rate: 0\nsession_budget_burst: 0\n")  # budgets off
    assert config.load(str(p)).session_budget_rate == 0


@pytest.mark.kernel
def test_record_writes_the_session_and_exits_with_the_commands_status(
    tmp_path: Path, collector: object
) -> None:
    out = tmp_path / "run.rwrec"
    proc = subprocess.run(
        [sys.executable, "-m", "roguewatch.cli.main", "record", "--output", str(out), "--",
         "/bin/sh", "-c", "echo hi > /tmp/rwtest/recorded; exit 3"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    header, evs = recording.read(str(out))
    evs = list(evs)
    assert header["format"] == "roguewatch-recording"
    assert {e["session"] for e in evs} == {header["session"]}
    assert any(e["type"] == "open" and e["path"] == "/tmp/rwtest/recorded" for e in evs)
    shown = subprocess.run(
        [sys.executable, "-m", "roguewatch.cli.main", "events", "--from", str(out), "--json"],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    assert len(shown) == len(evs)


@pytest.mark.kernel
def test_record_registers_the_session_with_its_policy_and_never_enforces(
    tmp_path: Path, collector: object
) -> None:
    pol = tmp_path / "policy.yaml"
    pol.write_text("mode: enforce\negress:\n  allow: [127.0.0.1/32]\nlists: {tools: [curl]}\n")
    out = tmp_path / "run.rwrec"
    proc = subprocess.run(
        [sys.executable, "-m", "roguewatch.cli.main", "record", "--output", str(out),
         "--policy", str(pol), "--", "/bin/sh", "-c", "exit 0"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    _, evs = recording.read(str(out))
    start = [e for e in evs if e["type"] == "session" and e.get("kind") == "start"]
    assert len(start) == 1, start
    assert start[0]["mode"] == "observe"
    assert start[0]["policy"]["egress_allow"] == ["127.0.0.1/32"]
    assert start[0]["policy"]["lists"] == {"tools": ["curl"]}
    assert start[0]["policy"]["mode"] == "observe"  # a recording never enforces


def test_record_with_a_bad_policy_is_a_clear_error_and_runs_nothing(tmp_path: Path) -> None:
    pol = tmp_path / "policy.yaml"
    pol.write_text("egress:\n  allow: [not-a-cidr]\n")
    marker = tmp_path / "ran"
    proc = subprocess.run(
        [sys.executable, "-m", "roguewatch.cli.main", "record", "--output",
         str(tmp_path / "run.rwrec"), "--policy", str(pol), "--", "/bin/sh", "-c",
         f"touch {marker}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert f"bad policy: {pol}: egress.allow[0]" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not marker.exists() and not (tmp_path / "run.rwrec").exists()


def test_events_shows_agent_controlled_text_escaped_on_one_line(tmp_path: Path) -> None:
    """comm, paths and command lines are the agent's: they must not drive the terminal."""
    out = tmp_path / "hostile.rwrec"
    w = recording.Writer(str(out), ["agent"], 0x1A)
    w.write({"type": "open", "ts": 1, "session": 0x1A, "pid": 7, "flags": [],
             "comm": "ev\x1b[2Jil", "path": "/tmp/a\nfake 00:00:00 line\x1b[2J"})  # fmt: skip
    w.write({"type": "exec", "ts": 2, "session": 0x1A, "pid": 7, "flags": [], "comm": "sh",
             "cmdline": "sh -c \x9b31m\r"})  # fmt: skip
    w.close()
    shown = subprocess.run(
        [sys.executable, "-m", "roguewatch.cli.main", "events", "--from", str(out)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    lines = shown.splitlines()
    assert len(lines) == 2, shown
    assert "\x1b" not in shown and "\x9b" not in shown and "\r" not in shown, repr(shown)
    assert "ev\\x1b[2Jil" in lines[0], lines[0]
    assert "/tmp/a\\x0afake 00:00:00 line\\x1b[2J" in lines[0], lines[0]
    assert "sh -c \\x9b31m\\x0d" in lines[1], lines[1]


def test_record_of_a_missing_command_is_a_clear_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "roguewatch.cli.main", "events", "--from", str(tmp_path / "nope")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "cannot open" in proc.stderr and "Traceback" not in proc.stderr
