"""A real roguewatchd (probes in the kernel) in a fleet: a real NATS JetStream server with
per-host NKey users, the host's forwarder as a component, `roguewatch fleet` as the fleet's
people use it. Alerts and session summaries of real sessions reach `fleet tail` with the host;
a pushed policy is applied (a new agent is adopted) and a broken one kept out with a monitor
alert; a remote kill ends a real session only for a named identity, and is recorded; the
daemon killed while its spool holds an alert still delivers it exactly once."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from roguewatch.fleet import client, connect, subjects
from roguewatch.runtime import launcher
from roguewatch.stream.control import ControlClient

from tests.conftest import require_root
from tests.natsfix import NatsServer
from tests.test_fleet import _seed_file, _user_seed
from tests.test_service import Daemon

HOST = "rw-host-1"
AGENT = "rw-fleet-pol"  # the comm a pushed policy adopts
CONNECT_9 = "import socket\ns = socket.socket()\ntry:\n    s.connect(('127.0.0.9', 9))\n" \
            "except OSError:\n    pass\n"  # fmt: skip
LOOPBACK_1 = {"egress_allow": ["127.0.0.1/32"], "mode": "enforce"}  # a session's policy
EGRESS_RULE = "egress_unauthorized_destination"


class Fleet:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        admin_seed, self.admin_pub = _user_seed()
        host_seed, host_pub = _user_seed()
        # Someone else with the run of the server, whom the host does not name.
        other_seed, other_pub = _user_seed()
        conf = subjects.server_conf_users([
            (self.admin_pub, None), (host_pub, subjects.host_permissions(HOST)),
            (other_pub, None),
        ])  # fmt: skip
        self.server = NatsServer(tmp, conf).start()
        self.admin_nk = _seed_file(tmp, "admin", admin_seed)
        self.other_nk = _seed_file(tmp, "other", other_seed)
        host_nk = _seed_file(tmp, "host", host_seed)
        self.daemon = Daemon(tmp)
        with open(self.daemon.cfg, "a") as f:
            f.write(
                f"fleet:\n  enabled: true\n  servers: [{self.server.url}]\n  host_id: {HOST}\n"
                f"  state_dir: {tmp}/fleet\n  nkey_seed_file: {host_nk}\n  heartbeat_s: 1\n"
                f"  reconnect_max_s: 0.5\n  remote_actions: true\n"
                f"  remote_identities: [{self.admin_pub}]\n"
            )
        asyncio.run(self._setup())

    async def _setup(self) -> None:
        nc = await self.connect()
        await client.setup(nc)
        await nc.close()

    async def connect(self):
        creds = connect.Credentials([self.server.url], nkey_seed_file=self.admin_nk)
        return await client.open_connection(creds)

    def cli(self, *args: str, nkey: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "roguewatch.cli.main", "fleet", *args, "--server",
             self.server.url, "--nkey", nkey or self.admin_nk],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    def fleet_alerts(self, **flt: object) -> list[dict]:
        args = ["tail", "--json", "--host", HOST]
        for k, v in flt.items():
            args += [f"--{k}", str(v)]
        p = self.cli(*args)
        assert p.returncode == 0, p.stderr
        return [json.loads(x) for x in p.stdout.splitlines()]

    def local_alerts(self) -> list[dict]:
        f = self.daemon.alerts_file
        lines = f.read_text().splitlines() if f.exists() else []
        # (each line's hash chain link is the log's, not the alert's: outputs/alertchain.py)
        return [{k: v for k, v in json.loads(x).items() if k != "chain"} for x in lines]

    def stream(self, subject: str) -> list[dict]:
        async def read() -> list[dict]:
            nc = await self.connect()
            js = nc.jetstream()
            sub = await js.subscribe(subject, stream=subjects.STREAM, ordered_consumer=True)
            out = []
            try:
                while True:
                    msg = await sub.next_msg(timeout=1)
                    out.append(json.loads(msg.data))
            except Exception:
                pass
            await nc.close()
            return out

        return asyncio.run(read())

    def session(self, code: str, name: str, policy: dict | None = None,
                wait: bool = True) -> tuple[int, int]:  # fmt: skip
        """A registered session (what `roguewatch run` asks of the service), its root running
        ``code``; with ``wait`` its end is announced too, as `run` does."""
        ctl = ControlClient(self.daemon.control)

        def register(pid: int) -> int:
            return int(ctl.request("register", pid=pid, name=name, policy=policy or {})["session"])

        argv = ["/usr/bin/python3", "-S", "-c", textwrap.dedent(code)]
        pid, sid = launcher.spawn_in_session(argv, register)
        if wait:
            os.waitpid(pid, 0)
            ctl.request("session_end", session=sid, root=pid)
        ctl.close()
        return pid, sid


def until(cond: Callable[[], object], timeout: float = 20.0, what: str = "") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    require_root()
    tmp = tmp_path_factory.mktemp("fleet")
    f = Fleet(tmp)
    f.daemon.start()
    yield f
    d = f.daemon
    d.kill()
    f.server.stop()


def test_alerts_and_session_summaries_of_a_real_session_reach_fleet_tail(fleet: Fleet) -> None:
    _, sid = fleet.session(CONNECT_9, "fleet-agent", policy=LOOPBACK_1)
    got = until(lambda: [a for a in fleet.fleet_alerts(category="egress")
                         if a["session"] == f"{sid:x}"],
                what="the egress alert in fleet tail")  # fmt: skip
    a = got[0]
    assert a["host"] == HOST and a["rule"] == "egress_unauthorized_destination"
    assert a["event"]["addr"] == "127.0.0.9" and a["category"] == "egress"
    local = [x for x in fleet.local_alerts() if x["id"] == a["id"]]
    assert local and {k: v for k, v in local[0].items()} == {k: v for k, v in a.items()
                                                             if k != "host"}  # fmt: skip
    # The compact line of `tail`, with the host in front.
    p = fleet.cli("tail", "--host", HOST, "--category", "egress")
    assert any(x.startswith(HOST) and "egress_unauthorized_destination" in x
               for x in p.stdout.splitlines())  # fmt: skip
    summaries = until(lambda: [s for s in fleet.stream(f"roguewatch.session.{HOST}.>")
                               if s["session"] == f"{sid:x}" and s["kind"] == "end"] and
                      [s for s in fleet.stream(f"roguewatch.session.{HOST}.>")
                       if s["session"] == f"{sid:x}"], what="the session's summaries")  # fmt: skip
    kinds = [s["kind"] for s in summaries]
    assert kinds == ["start", "end"]
    assert summaries[0]["name"] == "fleet-agent"
    assert summaries[1]["alerts"].get(a["severity"], 0) >= 1 and summaries[1]["survivors"] == 0
    # The heartbeat says what runs here.
    beats = {hb["host"]: hb for hb in asyncio.run(_beats(fleet))}
    hb = beats[HOST]
    assert hb["rules_hash"] and hb["policy_hash"] and hb["remote_actions"] is True
    assert not client.is_stale(hb)
    # `roguewatch status` tells of the fleet, and nothing secret.
    st = fleet.daemon.status()
    line = next(x for x in st.stdout.splitlines() if x.strip().startswith("fleet:"))
    assert f"host {HOST}, connected to nats://127.0.0.1:{fleet.server.port}" in line
    assert "0 dropped" in line and "SU" not in st.stdout


async def _beats(fleet: Fleet) -> list[dict]:
    nc = await fleet.connect()
    try:
        return await client.heartbeats(nc)
    finally:
        await nc.close()


def _run_agent(tmp: Path) -> None:
    agent = tmp / AGENT
    if not agent.exists():
        shutil.copy("/usr/bin/python3", agent)  # its comm is the file's name
    subprocess.run([str(agent), "-S", "-c", CONNECT_9], timeout=30)


def test_a_pushed_policy_is_applied_and_a_broken_one_is_kept_out(fleet: Fleet) -> None:
    def agent_alerts() -> list[dict]:
        return [a for a in fleet.local_alerts()
                if a["comm"] == AGENT and a["rule"] == EGRESS_RULE]  # fmt: skip

    _run_agent(fleet.tmp)  # not adopted yet: nothing watches it
    time.sleep(1.5)
    assert not agent_alerts()
    pol = fleet.tmp / "pushed.yaml"
    pol.write_text(f"adopt:\n  comms: [{AGENT}]\nmode: enforce\negress:\n  allow: [127.0.0.1/32]\n")
    p = fleet.cli("policy", "push", "agents", str(pol))
    assert p.returncode == 0, p.stderr
    digest = p.stdout.split("hash ")[1].strip()

    def applied() -> dict | None:
        hb = {h["host"]: h for h in asyncio.run(_beats(fleet))}.get(HOST, {})
        e = (hb.get("fleet_entries") or {}).get("policy.agents")
        return hb if e and e["state"] == "applied" and e["hash"] == digest else None

    until(applied, what="the host to apply the pushed policy")
    _run_agent(fleet.tmp)
    until(agent_alerts, what="the newly adopted agent's egress alert")
    listed = fleet.cli("policy", "list", "--json")
    (entry,) = [json.loads(x) for x in listed.stdout.splitlines()]
    assert entry["hash"] == digest and entry["hosts_running"] == [HOST]

    # Forced into the bucket past the pusher's check: the host keeps it out, and says so.
    async def force() -> None:
        nc = await fleet.connect()
        kv = await nc.jetstream().key_value(subjects.DEFAULT_BUCKET)
        await kv.put("policy.agents", b"adopt: {comms: [x]}\nmode: enforce\nprotect: [relative]\n")
        await nc.close()

    asyncio.run(force())
    refused = until(lambda: [a for a in fleet.local_alerts()
                             if a["rule"] == "roguewatch_fleet_policy_refused"],
                    what="the local monitor alert")  # fmt: skip
    assert refused[0]["severity"] == "critical" and refused[0]["category"] == "monitor"
    assert "protect[0]" in refused[0]["message"] and "stay" in refused[0]["message"]
    until(lambda: [a for a in fleet.fleet_alerts(category="monitor")
                   if a["rule"] == "roguewatch_fleet_policy_refused"],
          what="the monitor alert in fleet tail")  # fmt: skip
    # The policy in effect is still the good one.
    assert (fleet.tmp / "fleet/policies.d/agents.yaml").read_text() == pol.read_text()
    until(lambda: {h["host"]: h for h in asyncio.run(_beats(fleet))}[HOST]
          ["fleet_entries"]["policy.agents"]["state"] == "refused",
          what="the heartbeat to report the refusal")  # fmt: skip


def test_a_remote_kill_obeys_only_a_named_identity_and_is_recorded(fleet: Fleet) -> None:
    pid, sid = fleet.session("import time\ntime.sleep(120)\n", "long-agent", wait=False)
    try:
        p = fleet.cli("kill", HOST, f"{sid:x}", "--grace", "1", nkey=fleet.other_nk)
        assert p.returncode == 1 and "refused: identity" in p.stdout, p.stdout + p.stderr
        assert os.waitpid(pid, os.WNOHANG) == (0, 0)  # still running
        p = fleet.cli("kill", HOST, f"{sid:x}", "--grace", "1")
        assert p.returncode == 0, p.stdout + p.stderr
        assert "1 processes ended, 0 survivors" in p.stdout
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status)
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
    recorded = until(lambda: [a for a in fleet.local_alerts()
                              if a["rule"] == "roguewatch_fleet_remote_action"] if len(
                                  [a for a in fleet.local_alerts()
                                   if a["rule"] == "roguewatch_fleet_remote_action"]) >= 2
                     else None, what="both requests recorded")  # fmt: skip
    msgs = [a["message"] for a in recorded]
    assert any("refused" in m and "not allowed" in m for m in msgs)
    assert any(fleet.admin_pub in m and "0 survivors" in m for m in msgs)


def test_the_daemon_killed_while_its_spool_holds_an_alert_delivers_it_exactly_once(
    fleet: Fleet,
) -> None:
    fleet.server.stop()
    _, sid = fleet.session(CONNECT_9, "offline-agent", policy=LOOPBACK_1)
    local = until(lambda: [a for a in fleet.local_alerts() if a["session"] == f"{sid:x}"],
                  what="the alert on the host")  # fmt: skip
    time.sleep(0.3)  # the spool commit follows the alert file's write in the same loop turn
    d = fleet.daemon
    d.kill()
    time.sleep(0.5)
    fleet.server.start()
    d.start()
    got = until(lambda: [a for a in fleet.fleet_alerts() if a["id"] == local[0]["id"]],
                what="the spooled alert after the restart")  # fmt: skip
    assert len(got) == 1
    everything = fleet.fleet_alerts()
    ids = [a["id"] for a in everything]
    assert len(ids) == len(set(ids))  # nothing twice, from this host, ever
