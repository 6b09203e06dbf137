"""Nothing in a session can speak for the monitor or listen to it: the control socket refuses
a session's requests, and the event and alert streams refuse a session's subscriptions.

The attacker is a child of a root agent under `roguewatch run`; it uses the project's own
client code (the venv's interpreter has pyzmq and msgpack) against the collector's real
sockets, found where a root process finds them: /run/roguewatch-private/*/.
"""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import require_root
from tests.harness import ALLOW_LOCAL, Agent, no_service

pytestmark = pytest.mark.kernel

VENV_PYTHON = sys.executable  # has pyzmq and msgpack, as an attacker could install them


@pytest.fixture(autouse=True)
def _root_and_no_service() -> None:
    require_root()
    no_service()


# Run by the agent as a child process: the attack, then what it learned, as one JSON line.
ATTACK_CONTROL = r"""
import glob, json, os, zmq, msgpack
sock = glob.glob("/run/roguewatch-private/*/control.sock")
print(json.dumps({"found": len(sock), "pid": os.getpid()}), flush=True)
out = {}
ctx = zmq.Context()
for path in sock:
    s = ctx.socket(zmq.REQ); s.setsockopt(zmq.RCVTIMEO, 3000); s.setsockopt(zmq.LINGER, 0)
    s.connect("ipc://" + path)
    for op, kw in (("guard", {"pid": os.getpid()}), ("release", {"session": 1}),
                   ("sessions", {}), ("restore", {"path": "/etc/passwd"})):
        s.send(msgpack.packb({"op": op, **kw}))
        try:
            out[op] = msgpack.unpackb(s.recv())
        except zmq.Again:
            out[op] = "no answer"
            break
print(json.dumps(out), flush=True)
"""

ATTACK_STREAMS = r"""
import glob, json, os, time, zmq, msgpack, ormsgpack
ctx = zmq.Context()
print(json.dumps({"pid": os.getpid()}), flush=True)
out = {"events": 0, "alerts": 0, "welcomed": 0}
subs = []
for kind in KINDS:
    for path in glob.glob(f"/run/roguewatch-private/*/{kind}.sock"):
        s = ctx.socket(zmq.SUB); s.setsockopt(zmq.SUBSCRIBE, b""); s.setsockopt(zmq.LINGER, 0)
        s.connect("ipc://" + path)
        subs.append((kind, s))
deadline = time.time() + 3
while time.time() < deadline:
    os.close(os.open("/dev/null", os.O_RDONLY))  # events of our own session, to be seen
    for kind, s in subs:
        while s.poll(0):
            frame = s.recv()
            body = ormsgpack.unpackb(frame) if kind == "events" else msgpack.unpackb(frame)
            if body in ([], {}):
                out["welcomed"] += 1
            else:
                out[kind] += 1
    time.sleep(0.05)
print(json.dumps(out), flush=True)
"""


def _agent_code(attack: str, cron: str) -> str:
    """The root agent: the attacker child, then a cron write and a forbidden connect of its
    own (the session must still be caught after the attack)."""
    return textwrap.dedent(f"""
        import subprocess
        p = subprocess.run([{VENV_PYTHON!r}, "-c", {attack!r}], capture_output=True, text=True)
        said = {{}}
        for line in p.stdout.splitlines():
            said.update(json.loads(line))
        say(attacker_status=p.returncode, attacker=said, attacker_err=p.stderr[-500:])
        time.sleep(0.5)
        s = socket.socket()
        say(connect=attempt(lambda: s.connect(("127.0.0.9", 9))))
        with open({cron!r}, "w") as f:
            f.write("* * * * * root /bin/true\\n")
        time.sleep(2)
        say(after=True)
    """)


def _assert_still_caught(r, cron: str) -> None:
    assert r.one("egress_unauthorized_destination", addr="127.0.0.9")["outcome"] == (
        "denied in kernel"
    )
    assert r.one("persistence_cron_write", path=cron)
    assert not os.path.exists(cron), "the cron file written after the attack was not undone"


def test_the_control_socket_refuses_a_session_and_names_it(agent: Agent, tmp_path: Path) -> None:
    cron = f"/etc/cron.d/rwsec-{os.getpid()}-control"
    try:
        r = agent.run(_agent_code(ATTACK_CONTROL, cron), policy=ALLOW_LOCAL)
    finally:
        Path(cron).unlink(missing_ok=True)
    said = r.said()
    seen = said["attacker"]
    assert seen.get("found", 0) >= 1, said  # ours, and any other `run`'s on this host
    # Every answer it lived to read is a refusal; it is killed for the first one.
    for op in ("guard", "release", "sessions", "restore"):
        assert seen.get(op, {"ok": False, "error": "refused"}) == {"ok": False, "error": "refused"}
    alert = r.one("roguewatch_tampered", kind="control_refused")
    assert alert["severity"] == "critical" and alert["pid"] == seen["pid"], alert
    assert "op 'guard'" in alert["message"], alert
    assert said["attacker_status"] == -9, said  # killed (kill_process) right after
    _assert_still_caught(r, cron)


@pytest.mark.parametrize("stream", ["events", "alerts"])
def test_the_event_and_alert_streams_refuse_a_session_subscriber(agent: Agent, stream: str) -> None:
    cron = f"/etc/cron.d/rwsec-{os.getpid()}-{stream}"
    attack = ATTACK_STREAMS.replace("KINDS", repr((stream,)))
    try:
        r = agent.run(_agent_code(attack, cron), policy=ALLOW_LOCAL)
    finally:
        Path(cron).unlink(missing_ok=True)
    said = r.said()
    refused = r.rule("roguewatch_tampered")
    assert refused, r.describe()
    assert refused[0]["event"]["kind"] == "subscription_refused", refused[0]
    assert (
        refused[0]["event"]["target"] == f"the {'event' if stream == 'events' else 'alert'} stream"
    )
    assert refused[0]["severity"] == "critical"
    seen = said["attacker"]
    assert refused[0]["pid"] == seen["pid"], (refused[0], seen)
    # Killed at its first subscription, or alive and told nothing: never a single event.
    assert seen.get("events", 0) == 0 and seen.get("alerts", 0) == 0, seen
    _assert_still_caught(r, cron)
