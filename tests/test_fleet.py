"""The fleet through a real NATS JetStream server (``nats-server -js`` on a loopback port with
a temporary store, started by the tests): the spool and the forwarder deliver every alert
exactly once and in order across a server outage and a forwarder killed mid-drain; the
spool's bound counts what it drops and raises a critical alert; several hosts are seen and a
silent one is flagged stale; per-host permissions and TLS are enforced by the server; remote
actions are obeyed only when signed by a named identity; the configuration is checked."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from roguewatch.core.contracts import make_alert
from roguewatch.fleet import client, connect, remote, spool, subjects
from roguewatch.fleet.forwarder import Forwarder
from roguewatch.fleet.records import Recorder
from roguewatch.policy import config
from roguewatch.policy.fleetconfig import FleetConfig

from tests.natsfix import NatsServer

ROOT = Path(__file__).resolve().parent.parent


def fleet_cfg(tmp: Path, url: str, host: str, **fleet: object) -> config.Config:
    cfg = config.Config()
    cfg.status_file = ""
    cfg.control_endpoint = f"ipc://{tmp}/no-collector/control.sock"
    fc = {"enabled": True, "servers": [url], "host_id": host, "state_dir": str(tmp / host),
          "heartbeat_s": 1.0, "reconnect_max_s": 0.5, **fleet}  # fmt: skip
    cfg.fleet = FleetConfig(**fc)  # type: ignore[arg-type]
    return cfg


def an_alert(i: int, **kw: object) -> dict:
    a = make_alert(id=f"a{i}", ts_ns=time.time_ns(), rule="egress_unauthorized_destination",
                   message=f"alert number {i}", category="egress", severity="high",
                   session=0x1A2B, pid=4242, comm="curl",
                   event={"type": "connect", "addr": "127.0.0.9", "port": 443})  # fmt: skip
    a.update(kw)  # type: ignore[typeddict-item]
    return dict(a)


async def until(cond: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await asyncio.sleep(0.02)


async def admin(server: NatsServer, **kw: object):
    return await client.open_connection(connect.Credentials([server.url], **kw))  # type: ignore[arg-type]


async def stream_alerts(nc, host: str | None = None) -> list[dict]:
    out: list[dict] = []
    await client.tail(nc, client.TailFilter(host=host), open(os.devnull, "w"),  # noqa: SIM115
                      on_alert=out.append)  # fmt: skip
    return out


def run(coro: Awaitable) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


@pytest.fixture
def server(tmp_path: Path) -> NatsServer:
    srv = NatsServer(tmp_path).start()
    yield srv
    srv.stop()


# ---------------------------------------------------------------------------------------------
# delivery


def test_alerts_arrive_exactly_once_and_in_order_across_a_server_outage(
    tmp_path: Path, server: NatsServer
) -> None:
    cfg = fleet_cfg(tmp_path, server.url, "h1")

    async def main() -> None:
        nc = await admin(server)
        await client.setup(nc)
        rec = Recorder(cfg.fleet)
        fwd = Forwarder(cfg, local=False)
        stop = asyncio.Event()
        task = asyncio.ensure_future(fwd.run(stop))
        for i in range(30):
            rec.send(an_alert(i))
        rec.commit()
        await until(lambda: fwd.reader.acked == 30, what="the first 30 acknowledged")
        await nc.close()

        server.stop()  # mid-stream: the next alerts wait in the spool
        await until(lambda: not fwd.connected_to, what="the forwarder to see the outage")
        for i in range(30, 60):
            rec.send(an_alert(i))
        rec.commit()
        await asyncio.sleep(0.5)
        assert fwd.reader.acked == 30 and fwd.reader.backlog()[1] > 0

        # Some of them reached the server before the outage but their acknowledgement did not
        # reach the host: the same records, the same message ids, stored already.
        stored_early = [r for seg in spool.segments(cfg.fleet.spool_dir)
                        for _, r in spool.scan(Path(seg[1]).read_bytes())
                        if 31 <= r.seq <= 35]  # fmt: skip
        server.start()
        nc = await admin(server)
        js = nc.jetstream()
        dup_acks = 0
        for r in stored_early:
            ack = await js.publish(r.subject, r.payload, headers={subjects.H_MSG_ID: r.msg_id})
            dup_acks += bool(ack.duplicate)
        await until(lambda: fwd.reader.acked == 60, what="all 60 acknowledged")
        # Each of the 5 was stored once: whichever copy came second was a duplicate.
        assert fwd.counters["duplicates"] + dup_acks == 5
        got = await stream_alerts(nc, "h1")
        assert [a["id"] for a in got] == [f"a{i}" for i in range(60)]  # once each, in order
        assert {a["host"] for a in got} == {"h1"}
        assert got[0]["event"] == {"type": "connect", "addr": "127.0.0.9", "port": 443}
        assert got[0]["session"] == "1a2b" and got[0]["comm"] == "curl"
        stop.set()
        await task
        rec.close()
        await nc.close()

    run(main())


def _forwarderd(cfg_path: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "roguewatch.runtime.forwarderd", "--config",
                             str(cfg_path)], stderr=subprocess.PIPE, text=True)  # fmt: skip


def test_a_forwarder_killed_mid_drain_loses_nothing_and_duplicates_nothing(
    tmp_path: Path, server: NatsServer
) -> None:
    n = 20_000
    cfg = fleet_cfg(tmp_path, server.url, "h2")
    rec = Recorder(cfg.fleet)
    for i in range(n):
        rec.send(an_alert(i))
    rec.commit()
    rec.close()
    cfg_path = tmp_path / "roguewatchd.yaml"
    cfg_path.write_text(
        f"control_endpoint: {cfg.control_endpoint}\nstatus_file: {tmp_path}/run/status.json\n"
        f"fleet:\n  enabled: true\n  servers: [{server.url}]\n  host_id: h2\n"
        f"  state_dir: {cfg.fleet.state_dir}\n  reconnect_max_s: 0.5\n"
    )
    run(_setup(server))
    acked_file = Path(cfg.fleet.spool_dir) / "acked"

    def acked() -> int:
        try:
            return int(acked_file.read_text() or 0)
        except (OSError, ValueError):
            return 0

    proc = _forwarderd(cfg_path)
    deadline = time.monotonic() + 30
    while acked() < 1000 and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.kill()  # SIGKILL mid-drain: published records whose acknowledgement was not saved
    proc.wait()
    at_kill = acked()
    assert 0 < at_kill < n, f"the drain was not interrupted ({at_kill} of {n} acknowledged)"

    proc = _forwarderd(cfg_path)
    try:
        deadline = time.monotonic() + 60
        while acked() < n and time.monotonic() < deadline:
            time.sleep(0.05)
        assert acked() == n
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err

    async def check() -> None:
        nc = await admin(server)
        info = await nc.jetstream().stream_info(subjects.STREAM, subjects_filter="roguewatch.>")
        assert info.state.messages == n  # nothing twice, nothing lost
        got = await stream_alerts(nc, "h2")
        assert [a["id"] for a in got] == [f"a{i}" for i in range(n)]
        await nc.close()

    run(check())


async def _setup_async(server: NatsServer) -> None:
    nc = await admin(server)
    await client.setup(nc)
    await nc.close()


def _setup(server: NatsServer):
    return _setup_async(server)


def test_the_spool_bound_counts_what_it_drops_and_raises_a_critical_alert(
    tmp_path: Path,
) -> None:
    from roguewatch.runtime.evaluatord import EvaluatorProcess
    from roguewatch.stream import bus

    cfg = fleet_cfg(tmp_path, "nats://127.0.0.1:1", "h3", spool_max_bytes=1024 * 1024)
    run_dir = tmp_path / "run"
    cfg.events_endpoint = f"ipc://{run_dir}/events.sock"
    cfg.alerts_endpoint = f"ipc://{run_dir}/alerts.sock"
    cfg.alerts_file = str(tmp_path / "alerts.jsonl")
    cfg.journald = cfg.print_alerts = False
    cfg.rules_dirs = []
    pub = bus.Publisher(cfg.events_endpoint)
    proc = EvaluatorProcess(cfg, fleet=True)
    try:
        big = "x" * 1000
        for i in range(2000):  # ~2.5 MB of alerts into a 1 MiB spool, the server away
            proc.sinks.send(an_alert(i, message=big))
        proc.commit_fleet()
        dropped = proc.fleet.writer.dropped
        assert dropped > 0 and proc.status()["fleet_spool"]["dropped"] == dropped
        local = [json.loads(x) for x in Path(cfg.alerts_file).read_text().splitlines()]
        full = [a for a in local if a["rule"] == "roguewatch_fleet_spool_full"]
        assert len(full) == 1 and full[0]["severity"] == "critical"
        assert (
            full[0]["category"] == "monitor"
            and f"{dropped} records dropped" in (full[0]["message"])
        )
        # The fleet learns of the loss too: the alert is the last record, in the reserve.
        proc.close()
        reader = spool.Reader(cfg.fleet.spool_dir)
        records = []
        while batch := reader.read(1000):
            records += batch
        assert json.loads(records[-1].payload)["rule"] == "roguewatch_fleet_spool_full"
        assert len(records) == 2000 - dropped + 1
        assert sum(os.path.getsize(p) for _, p in spool.segments(cfg.fleet.spool_dir)) <= (
            cfg.fleet.spool_max_bytes
        )
    finally:
        pub.close()


def test_a_torn_record_at_the_end_of_the_spool_is_cut_off_by_the_next_writer(
    tmp_path: Path,
) -> None:
    w = spool.Writer(str(tmp_path), 4 * 1024 * 1024)
    for _ in range(3):
        w.append("roguewatch.alert.h.egress", "h-b-", "high", b"{}")
    w.commit()
    w.close()
    seg = spool.segments(str(tmp_path))[-1][1]
    with open(seg, "ab") as f:  # a crash in the middle of a write
        f.write(spool.encode(spool.Record(4, "s", "h-b-4", "high", b"{}"))[:9])
    w = spool.Writer(str(tmp_path), 4 * 1024 * 1024)
    assert w.torn == 9 and w.next_seq == 4
    w.append("roguewatch.alert.h.egress", "h-b-", "high", b"{}")
    w.commit()
    r = spool.Reader(str(tmp_path))
    assert [rec.seq for rec in r.read()] == [1, 2, 3, 4]
    with pytest.raises(spool.SpoolError, match="another writer"):
        spool.Writer(str(tmp_path), 4 * 1024 * 1024)


# ---------------------------------------------------------------------------------------------
# hosts


def test_several_hosts_are_seen_and_a_host_that_stops_is_flagged_stale(
    tmp_path: Path, server: NatsServer
) -> None:
    async def main() -> None:
        nc = await admin(server)
        await client.setup(nc)
        stops, tasks = {}, {}
        for h in ("ha", "hb", "hc"):
            fwd = Forwarder(fleet_cfg(tmp_path, server.url, h), local=False)
            stops[h] = asyncio.Event()
            tasks[h] = asyncio.ensure_future(fwd.run(stops[h]))

        async def beats() -> dict[str, dict]:
            return {hb["host"]: hb for hb in await client.heartbeats(nc)}

        deadline = time.monotonic() + 10
        while len(await beats()) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        seen = await beats()
        assert set(seen) == {"ha", "hb", "hc"}
        assert not any(client.is_stale(hb) for hb in seen.values())
        assert seen["ha"]["version"] and "spool_dropped" in seen["ha"]["losses"]
        stops["hc"].set()  # the host goes silent
        await tasks["hc"]
        await asyncio.sleep(3.5)  # three heartbeat intervals
        seen = await beats()
        assert client.is_stale(seen["hc"]) and not client.is_stale(seen["ha"])
        table = client.hosts_table(list(seen.values()))
        assert next(r for r in table if r.startswith("hc ")).endswith("STALE")
        # The command says the same, and exits 1 because a host is stale.
        p = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "roguewatch.cli.main", "fleet", "hosts", "--server",
            server.url, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await p.communicate()
        assert p.returncode == 1, err
        lines = out.decode().splitlines()
        assert any(x.startswith("hc ") and "STALE" in x for x in lines)
        assert any(x.startswith("ha ") and x.rstrip().endswith("ok") for x in lines)
        for h in ("ha", "hb"):
            stops[h].set()
        await asyncio.gather(*tasks.values())
        await nc.close()

    run(main())


# ---------------------------------------------------------------------------------------------
# security: per-host permissions, TLS, secret files, remote actions


def _user_seed() -> tuple[bytes, str]:
    import nkeys

    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    return bytes(seed), nkeys.from_seed(bytearray(seed)).public_key.decode()


def _seed_file(tmp: Path, name: str, seed: bytes, mode: int = 0o600) -> str:
    p = tmp / f"{name}.nk"
    p.write_bytes(seed + b"\n")
    os.chmod(p, mode)
    return str(p)


def test_a_host_publishes_only_under_its_own_subject(tmp_path: Path) -> None:
    admin_seed, admin_pub = _user_seed()
    h1_seed, h1_pub = _user_seed()
    _h2_seed, h2_pub = _user_seed()
    conf = subjects.server_conf_users([
        (admin_pub, None),
        (h1_pub, subjects.host_permissions("h1")),
        (h2_pub, subjects.host_permissions("h2")),
    ])  # fmt: skip
    server = NatsServer(tmp_path, conf).start()
    admin_nk, h1_nk = _seed_file(tmp_path, "admin", admin_seed), _seed_file(tmp_path, "h1", h1_seed)

    async def main() -> None:
        nc = await admin(server, nkey_seed_file=admin_nk)
        await client.setup(nc)
        await client.push(nc, "policy", "agents",
                          b"adopt: {comms: [rw-agent]}\nmode: enforce\n")  # fmt: skip
        # Host h1 with its own credentials: alerts, heartbeats and the bucket all work.
        cfg1 = fleet_cfg(tmp_path, server.url, "h1", nkey_seed_file=h1_nk, policies=[],
                         rules=False)  # fmt: skip
        rec = Recorder(cfg1.fleet)
        rec.send(an_alert(1))
        rec.commit()
        fwd = Forwarder(cfg1, local=False, watch_bucket=True)
        stop = asyncio.Event()
        task = asyncio.ensure_future(fwd.run(stop))
        await until(lambda: fwd.reader.acked == 1, what="h1's own alert acknowledged")
        await until(lambda: "policy.agents" in fwd.store.applied, what="h1 to watch the bucket")
        assert fwd.store.applied["policy.agents"].state == "ignored"  # it takes no policies
        hb = {h["host"]: h for h in await client.heartbeats(nc)}
        assert "h1" in hb

        # With h1's credentials, nothing can be published under h2's subject.
        cfg2 = fleet_cfg(tmp_path, server.url, "h2", nkey_seed_file=h1_nk)
        rec2 = Recorder(cfg2.fleet)
        rec2.send(an_alert(2))
        rec2.commit()
        impostor = Forwarder(cfg2, local=False)
        stop2 = asyncio.Event()
        task2 = asyncio.ensure_future(impostor.run(stop2))
        await until(lambda: "permissions violation" in impostor.last_error.lower(),
                    what="a refusal")  # fmt: skip
        assert impostor.reader.acked == 0  # the record stays in h2's spool
        # A raw client with h1's seed is refused the same way.
        raw = await nats_connect(server.url, h1_nk)
        with pytest.raises(Exception):  # noqa: B017  (a timeout: the server never stores it)
            await raw.jetstream().publish("roguewatch.alert.h2.egress", b"{}", timeout=1)
        await raw.close()
        # Without credentials there is no connection at all.
        anon = Forwarder(fleet_cfg(tmp_path, server.url, "h9"), local=False)
        stop3 = asyncio.Event()
        task3 = asyncio.ensure_future(anon.run(stop3))
        await until(lambda: "uthorization" in anon.last_error, what="an authorization error")
        info = await nc.jetstream().stream_info(subjects.STREAM, subjects_filter="roguewatch.>")
        assert info.state.messages == 1  # h1's alert, nothing else
        # Nothing secret in what a forwarder says about itself.
        for f in (fwd, impostor, anon):
            said = json.dumps(f.status()) + json.dumps(f.heartbeat()) + f.last_error
            assert h1_seed.decode() not in said and "SU" not in said
        for s in (stop, stop2, stop3):
            s.set()
        await asyncio.gather(task, task2, task3)
        await nc.close()

    try:
        run(main())
    finally:
        server.stop()


async def nats_connect(url: str, seed_file: str):
    import nats

    async def quiet(exc: Exception) -> None:
        pass

    return await nats.connect(url, nkeys_seed=seed_file, error_cb=quiet, allow_reconnect=False)


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def test_tls_with_client_certificates_and_root_only_key_files(tmp_path: Path) -> None:
    d = tmp_path / "pki"
    d.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
             "/CN=rw-test-ca", "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.pem")  # fmt: skip
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"),
                      ("client", "extendedKeyUsage=clientAuth")):  # fmt: skip
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout",
                 f"{d}/{name}.key", "-out", f"{d}/{name}.csr")  # fmt: skip
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl("x509", "-req", "-in", f"{d}/{name}.csr", "-CA", f"{d}/ca.pem", "-CAkey",
                 f"{d}/ca.key", "-CAcreateserial", "-days", "1", "-out", f"{d}/{name}.pem",
                 "-extfile", f"{d}/{name}.ext")  # fmt: skip
        os.chmod(d / f"{name}.key", 0o600)
    conf = (f'tls {{ cert_file: "{d}/server.pem", key_file: "{d}/server.key", '
            f'ca_file: "{d}/ca.pem", verify: true }}')  # fmt: skip
    server = NatsServer(tmp_path, conf, scheme="tls").start()
    tls = {"tls_ca": f"{d}/ca.pem", "tls_cert": f"{d}/client.pem", "tls_key": f"{d}/client.key"}

    async def main() -> None:
        nc = await admin(server, **tls)
        await client.setup(nc)
        cfg = fleet_cfg(tmp_path, server.url, "ht", **tls)
        rec = Recorder(cfg.fleet)
        rec.send(an_alert(1))
        rec.commit()
        fwd = Forwarder(cfg, local=False)
        stop = asyncio.Event()
        task = asyncio.ensure_future(fwd.run(stop))
        await until(lambda: fwd.reader.acked == 1, what="the alert over TLS")
        # No client certificate: the server refuses the handshake; the record waits.
        bare = Forwarder(fleet_cfg(tmp_path, server.url, "hu", tls_ca=f"{d}/ca.pem"),
                         local=False)  # fmt: skip
        rec2 = Recorder(bare.fc)
        rec2.send(an_alert(2))
        rec2.commit()
        stop2 = asyncio.Event()
        task2 = asyncio.ensure_future(bare.run(stop2))
        await until(lambda: bool(bare.last_error), what="a refused handshake")
        assert bare.reader.acked == 0 and not bare.connected_to
        stop.set()
        stop2.set()
        await asyncio.gather(task, task2)
        await nc.close()

    try:
        run(main())
    finally:
        server.stop()
    # A key that others can read is refused before anything connects, and says how to fix it.
    os.chmod(d / "client.key", 0o644)
    with pytest.raises(connect.CredentialError, match=r"readable by root only.*chmod 0600"):
        Forwarder(fleet_cfg(tmp_path, server.url, "hv", **tls), local=False)


def test_remote_actions_need_them_enabled_and_a_signature_of_a_named_identity() -> None:
    asker_seed, asker_pub = _user_seed()
    other_seed, _ = _user_seed()
    on = FleetConfig(remote_actions=True, remote_identities=[asker_pub])
    now = [time.time()]
    gate = remote.Gate(on, "h1", clock=lambda: now[0])
    good = remote.sign(asker_seed, "kill", "h1", "1a2b")
    assert gate.check(good).ok
    assert gate.check(good).why == "the request was replayed"
    assert "not allowed" in gate.check(remote.sign(other_seed, "kill", "h1", "1a2b")).why
    assert "for host 'h2'" in gate.check(remote.sign(asker_seed, "kill", "h2", "1a2b")).why
    msg = json.loads(remote.sign(asker_seed, "kill", "h1", "1a2b"))
    msg["request"]["session"] = "ffff"  # tampered with on the way
    assert gate.check(json.dumps(msg).encode()).why == "the signature is not that identity's"
    stale = remote.sign(asker_seed, "freeze", "h1", "1a2b")
    now[0] += remote.MAX_AGE_S + 1
    assert "stale" in gate.check(stale).why
    off = remote.Gate(FleetConfig(), "h1")
    assert off.check(remote.sign(asker_seed, "kill", "h1", "1a2b")).why == (
        "remote actions are off on this host"
    )
    assert gate.check(b"not json").why == "malformed request"


# ---------------------------------------------------------------------------------------------
# policies pushed, and the configuration


def test_a_broken_policy_is_refused_by_the_pusher_with_its_line(
    tmp_path: Path, server: NatsServer
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("adopt: {comms: [x]}\nmode: enforce\negress:\n  allow: [not-an-address]\n")
    p = subprocess.run([sys.executable, "-m", "roguewatch.cli.main", "fleet", "policy", "push",
                        "agents", str(bad), "--server", server.url],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "refused, not stored" in p.stderr and "agents.yaml: egress.allow[0]" in p.stderr
    good = tmp_path / "good.yaml"
    good.write_text("adopt: {comms: [x]}\nmode: observe\n")
    p = subprocess.run([sys.executable, "-m", "roguewatch.cli.main", "fleet", "policy", "push",
                        "agents", str(good), "--server", server.url],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "policy agents: stored as revision 1" in p.stdout
    p = subprocess.run([sys.executable, "-m", "roguewatch.cli.main", "fleet", "policy", "list",
                        "--json", "--server", server.url],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert p.returncode == 0, p.stderr
    (entry,) = [json.loads(x) for x in p.stdout.splitlines()]
    assert entry["key"] == "policy.agents" and entry["revision"] == 1


def test_fleet_configuration_errors_name_the_key(tmp_path: Path) -> None:
    cases = {
        "fleet: [x]\n": "key 'fleet': expected a mapping",
        "fleet:\n  enable: true\n": "unknown key 'fleet.enable'",
        "fleet:\n  heartbeat_s: fast\n": "key 'fleet.heartbeat_s': expected float",
        "fleet:\n  servers: [http://x]\n": "key 'fleet.servers': expected nats://",
        "fleet:\n  servers: ['nats://u:pw@x:4222']\n": "credentials do not belong in a server URL",
        "fleet:\n  host_id: a.b\n": "key 'fleet.host_id'",
        "fleet:\n  remote_actions: true\n": "key 'fleet.remote_actions': remote actions need",
        "fleet:\n  tls_cert: /c.pem\n": "key 'fleet.tls_key'",
    }
    for text, expected in cases.items():
        f = tmp_path / "c.yaml"
        f.write_text(text)
        with pytest.raises(config.ConfigError, match=expected.replace("[", r"\[")):
            config.load(str(f))
    f.write_text("fleet:\n  enabled: true\n  heartbeat_s: 5\n")
    assert config.load(str(f)).fleet.heartbeat_s == 5.0


def test_every_fleet_key_is_documented_with_its_default() -> None:
    text = (ROOT / "packaging/roguewatchd.yaml.example").read_text()
    block = text[text.index("#fleet:") :]
    lines = [x[1:] for x in block.splitlines() if x.startswith("#")]
    documented = {x.split(":", 1)[0].strip() for x in lines[1:]}
    assert documented == set(FleetConfig.__dataclass_fields__)
    path = Path("/tmp") / f"rw-fleet-example-{os.getpid()}.yaml"
    path.write_text("\n".join(lines) + "\n")
    try:
        assert config.load(str(path)).fleet == FleetConfig()
    finally:
        path.unlink()
