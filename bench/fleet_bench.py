"""The fleet on one NATS JetStream server: a fleet simulator, end-to-end latency, the rate the
server and `fleet tail` sustain on this machine, and the drain of a spool after an outage.

    .venv/bin/python bench/fleet_bench.py [--quick] [--hosts 1000] [--per-min 10]

- **latency**: N simulated hosts (one NATS connection each) publish alerts at R a minute
  (staggered, with message ids and acknowledgements, as a forwarder does) and heartbeats every
  10 s; K of them are real hosts: the evaluator's spool writer (one fsync per alert) and the
  forwarder, publishing what they spool. A separate process follows the stream as
  `roguewatch fleet tail --follow` does (``client.tail``) and takes each alert's latency: from
  the moment the host raised it (before the spool, for a real host) to the moment the tail
  printed it. Bar: p99 <= 1 s at 1,000 hosts x 10 alerts a minute.
- **rate**: the same hosts at rising rates until the tail falls behind (p99 > 1 s or fewer
  than 95 % delivered within the step).
- **drain**: a spool of 100,000 alerts written while the server was away, then the forwarder
  started: the rate from its first connection to the last acknowledgement. Bar: >= 5,000/s.

Writes ``bench/out/fleet-<time>.json``; the figures go to bench/README.md by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import log, proc_cpu
from roguewatch.core.contracts import make_alert
from roguewatch.fleet import client, connect, subjects
from roguewatch.fleet.forwarder import Forwarder
from roguewatch.fleet.records import Recorder, dumps
from roguewatch.policy.config import Config
from roguewatch.policy.fleetconfig import FleetConfig

OUT = Path(__file__).resolve().parent / "out"


class Server:
    def __init__(self, tmp: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.dir = tmp
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        conf = self.dir / "server.conf"
        js = f'jetstream {{ store_dir: "{self.dir}/js", max_file_store: 8GB }}'
        conf.write_text(f"listen: 127.0.0.1:{self.port}\nmax_connections: 5000\n{js}\n")
        log_path = self.dir / "server.log"
        log_path.write_bytes(b"")
        self.proc = subprocess.Popen(["nats-server", "-c", str(conf)], stdout=open(log_path, "ab"),  # noqa: SIM115
                                     stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.monotonic() + 20
        while b"Server is ready" not in log_path.read_bytes():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit("nats-server did not start: " + log_path.read_text()[-500:])
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(15)
            self.proc = None


def realistic_alert(host: str, i: int) -> dict:
    """An alert of the size the evaluator makes (lineage, event, command line)."""
    a = make_alert(
        id=f"{host}-{i}", ts_ns=time.time_ns(), rule="egress_unauthorized_destination",
        message="python3 (pid 4242) connected to 203.0.113.9:443, outside the session's "
                "allowlist (model API and package mirror only)",
        category="egress", severity=random.choice(("high", "critical", "medium")),
        tags=["T1041", "egress"], session=0x1A2B3C, pid=4242, ppid=4200, uid=1001,
        comm="python3", exe="/usr/bin/python3.11",
        cmdline="python3 run_agent.py --task eval-17 --model large --max-steps 200",
        exec_id="4242-1731000000000", lineage=[{"pid": 4200, "exe": "/usr/bin/bash"},
                                               {"pid": 4100, "exe": "/usr/bin/python3.11"}],
        event={"type": "connect", "addr": "203.0.113.9", "port": 443, "proto": "tcp"},
        action="kill_process", outcome="1 process killed",
    )  # fmt: skip
    return {**a, "host": host}


# ---------------------------------------------------------------------------------------------
# the tail (a process of its own, as `roguewatch fleet tail --follow` is)


def consumer_main(url: str, out: str) -> None:
    lat: list[tuple[float, bool]] = []  # latency, from a real host
    stop = asyncio.Event()

    def got(alert: dict) -> None:
        lat.append((time.time() - float(alert.get("raised", 0)), alert["host"][:4] == "real"))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        nc = await client.open_connection(connect.Credentials([url]), follow=True)
        flt = client.TailFilter(since_ns=time.time_ns())
        await client.tail(nc, flt, open(os.devnull, "w"), follow=True, stop=stop,  # noqa: SIM115
                          on_alert=got)  # fmt: skip
        await nc.close()

    asyncio.run(main())
    Path(out).write_text(json.dumps(lat))


class Tail:
    def __init__(self, url: str, tmp: Path) -> None:
        self.out = tmp / f"lat-{time.monotonic_ns()}.json"
        self.proc = subprocess.Popen([sys.executable, __file__, "--consumer", url, str(self.out)])
        time.sleep(1.0)  # connected and following

    def stop(self) -> tuple[list[list], float]:
        cpu = proc_cpu(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        return json.loads(self.out.read_text()), cpu


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


# ---------------------------------------------------------------------------------------------
# simulated hosts


class SimHost:
    """A host as the server sees it: its own connection, alerts with message ids and
    acknowledgements, heartbeats."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.seq = 0
        self.acked = 0
        self.nc = None
        self.run = os.urandom(4).hex()  # message ids of one run: never a duplicate of another

    async def connect(self, url: str) -> None:
        import nats

        async def quiet(exc: Exception) -> None:
            pass

        self.nc = await nats.connect(url, error_cb=quiet, name=self.name,
                                     inbox_prefix=subjects.inbox_prefix(self.name))  # fmt: skip
        self.inbox = f"{subjects.inbox_prefix(self.name)}.ack"

        async def ack(msg) -> None:
            self.acked += 1

        await self.nc.subscribe(f"{self.inbox}.*", cb=ack)

    async def alert(self) -> None:
        self.seq += 1
        a = realistic_alert(self.name, self.seq)
        a["raised"] = time.time()
        msg_id = f"{self.name}-{self.run}-{self.seq}"
        await self.nc.publish(subjects.alert(self.name, "egress"), dumps(a),
                              reply=f"{self.inbox}.{self.seq}",
                              headers={subjects.H_MSG_ID: msg_id})  # fmt: skip

    async def heartbeat(self) -> None:
        hb = {"host": self.name, "ts": time.time(), "version": "bench", "interval_s": 10}
        await self.nc.publish(subjects.heartbeat(self.name), json.dumps(hb).encode())


class RealHost:
    """A host with the real spool writer and forwarder."""

    def __init__(self, name: str, url: str, tmp: Path) -> None:
        cfg = Config()
        cfg.status_file = ""
        cfg.fleet = FleetConfig(enabled=True, servers=[url], host_id=name,
                                state_dir=str(tmp / name), heartbeat_s=10.0)  # fmt: skip
        self.rec = Recorder(cfg.fleet)
        self.fwd = Forwarder(cfg, local=False)
        self.name = name
        self.seq = 0

    async def alert(self) -> None:
        self.seq += 1
        a = realistic_alert(self.name, self.seq)
        a["raised"] = time.time()
        self.rec.send(a)
        self.rec.commit()  # the evaluator commits once per loop turn: here once per alert


async def simulate(url: str, hosts: int, per_min: float, seconds: float, real: int,
                   tmp: Path) -> dict:  # fmt: skip
    sims = [SimHost(f"sim{i:04d}") for i in range(hosts - real)]
    for i in range(0, len(sims), 100):
        await asyncio.gather(*(s.connect(url) for s in sims[i : i + 100]))
    reals = [RealHost(f"real{i:02d}", url, tmp) for i in range(real)]
    stop = asyncio.Event()
    fwd_tasks = [asyncio.ensure_future(r.fwd.run(stop)) for r in reals]
    everyone: list = [*sims, *reals]
    interval = 60.0 / per_min
    # Each host at its own phase (a uniform spread, as a fleet's hosts are); a heap of what is
    # due next: alerts (kind 0) and heartbeats (kind 1).
    due = [(random.uniform(0, interval), 0, k) for k in range(len(everyone))]
    due += [(random.uniform(0, 10), 1, k) for k in range(len(sims))]
    heapq.heapify(due)
    sent = 0
    late = 0.0
    t0 = time.monotonic()
    cpu0 = time.process_time()
    while (now := time.monotonic() - t0) < seconds:
        while due and due[0][0] <= now:
            t, kind, k = heapq.heappop(due)
            if kind == 0:
                await everyone[k].alert()
                sent += 1
                late = max(late, now - t)
                heapq.heappush(due, (t + interval, 0, k))
            else:
                await sims[k].heartbeat()
                heapq.heappush(due, (t + 10.0, 1, k))
        await asyncio.sleep(max(0.0, min(0.005, due[0][0] - (time.monotonic() - t0))))
    sim_cpu = time.process_time() - cpu0
    await asyncio.sleep(2.0)  # the last acknowledgements
    acked = sum(s.acked for s in sims) + sum(r.fwd.reader.acked for r in reals)
    stop.set()
    await asyncio.gather(*fwd_tasks)
    for s in sims:
        await s.nc.close()
    for r in reals:
        r.rec.close()
    return {"sent": sent, "sent_per_s": round(sent / seconds), "acked": acked,
            "scheduler_late_s": round(late, 3), "simulator_cpu_s": round(sim_cpu, 2)}  # fmt: skip


def run_load(url: str, server: Server, hosts: int, per_min: float, seconds: float, real: int,
             tmp: Path) -> dict:  # fmt: skip
    tail = Tail(url, tmp)
    srv_cpu0 = proc_cpu(server.proc.pid)
    res = asyncio.run(simulate(url, hosts, per_min, seconds, real, tmp))
    time.sleep(1.0)
    got, tail_cpu = tail.stop()
    lat = [x for x, _ in got]
    real_lat = [x for x, r in got if r]
    res.update(
        hosts=hosts, per_min=per_min, seconds=seconds, rate_per_s=round(hosts * per_min / 60, 1),
        delivered=len(lat), p50_ms=round(pct(lat, 50) * 1000, 1),
        p99_ms=round(pct(lat, 99) * 1000, 1), max_ms=round(max(lat or [0]) * 1000, 1),
        real_hosts_alerts=len(real_lat), real_p50_ms=round(pct(real_lat, 50) * 1000, 1),
        real_p99_ms=round(pct(real_lat, 99) * 1000, 1),
        server_cpu_s=round(proc_cpu(server.proc.pid) - srv_cpu0, 2),
        tail_cpu_s=round(tail_cpu, 2),
    )  # fmt: skip
    return res


# ---------------------------------------------------------------------------------------------
# the drain


def drain(tmp: Path, n: int) -> dict:
    server = Server(tmp / "drain-server")
    server.dir.mkdir()
    cfg = Config()
    cfg.status_file = ""
    cfg.fleet = FleetConfig(enabled=True, servers=[server.url], host_id="drainer",
                            state_dir=str(tmp / "drainer"), spool_max_bytes=1 << 30)  # fmt: skip
    rec = Recorder(cfg.fleet)
    t = time.monotonic()
    for i in range(n):  # written while the server is away, committed in evaluator-sized turns
        rec.send(realistic_alert("drainer", i))
        if i % 64 == 63:
            rec.commit()
    rec.commit()
    spool_s = time.monotonic() - t
    spool_bytes = sum(p.stat().st_size for p in Path(cfg.fleet.spool_dir).glob("*.seg"))
    rec.close()
    server.start()

    async def main() -> dict:
        nc = await client.open_connection(connect.Credentials([server.url]))
        await client.setup(nc)
        fwd = Forwarder(cfg, local=False)
        stop = asyncio.Event()
        task = asyncio.ensure_future(fwd.run(stop))
        while not fwd.connected_to:
            await asyncio.sleep(0.001)
        t0 = time.monotonic()
        cpu0 = time.process_time()
        while fwd.reader.acked < n:
            await asyncio.sleep(0.01)
        took = time.monotonic() - t0
        cpu = time.process_time() - cpu0
        stop.set()
        await task
        info = await nc.jetstream().stream_info(subjects.STREAM)
        await nc.close()
        return {"drain_s": round(took, 2), "rate_per_s": round(n / took),
                "forwarder_cpu_s": round(cpu, 2), "stored": info.state.messages,
                "duplicates": fwd.counters["duplicates"]}  # fmt: skip

    srv_cpu0 = 0.0
    try:
        res = asyncio.run(main())
        res["server_cpu_s"] = round(proc_cpu(server.proc.pid) - srv_cpu0, 2)
    finally:
        server.stop()
    res.update(records=n, spool_bytes=spool_bytes, bytes_per_record=spool_bytes // n,
               spool_write_rate_per_s=round(n / spool_s))  # fmt: skip
    return res


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--consumer":
        consumer_main(sys.argv[2], sys.argv[3])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--hosts", type=int, default=1000)
    ap.add_argument("--per-min", type=float, default=10.0)
    ap.add_argument("--real", type=int, default=10, help="hosts with the real spool+forwarder")
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("--drain", type=int, default=100_000)
    args = ap.parse_args()
    if not shutil.which("nats-server"):
        print("fleet_bench: nats-server is not installed (apt: nats-server)", file=sys.stderr)
        return 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    seconds = args.seconds or (20.0 if args.quick else 60.0)
    tmp = Path(tempfile.mkdtemp(prefix="rw-fleet-bench-"))
    report: dict = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "nproc": os.cpu_count()}
    try:
        server = Server(tmp / "server")
        server.dir.mkdir()
        server.start()

        async def setup() -> None:
            nc = await client.open_connection(connect.Credentials([server.url]))
            await client.setup(nc)
            await nc.close()

        asyncio.run(setup())
        log(f"latency: {args.hosts} hosts x {args.per_min:g} alerts/min for {seconds:g} s "
            f"({args.real} with the real spool and forwarder)")  # fmt: skip
        r = run_load(server.url, server, args.hosts, args.per_min, seconds, args.real, tmp)
        log(f"  {r}")
        report["latency"] = r
        report["rate"] = []
        steps = [60, 240, 600] if args.quick else [60, 120, 180, 240, 360, 480]
        for per_min in steps:
            r = run_load(server.url, server, args.hosts, per_min, 10.0 if args.quick else 15.0,
                         0, tmp)  # fmt: skip
            log(f"rate: asked {r['rate_per_s']}/s, sent {r['sent_per_s']}/s ({r['sent']}), "
                f"delivered {r['delivered']}, p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms; "
                f"CPU s: server {r['server_cpu_s']}, tail {r['tail_cpu_s']}, "
                f"simulator {r['simulator_cpu_s']}")  # fmt: skip
            report["rate"].append(r)
            if r["p99_ms"] > 1000 or r["delivered"] < 0.95 * r["sent"]:
                break
        server.stop()
        n = 20_000 if args.quick else args.drain
        log(f"drain: a spool of {n} alerts after an outage")
        r = drain(tmp, n)
        log(f"  {r}")
        report["drain"] = r
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    OUT.mkdir(exist_ok=True)
    out = OUT / f"fleet-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2))
    log(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
