"""The fleet forwarder as a process of its own (`python -m roguewatch.runtime.forwarderd`),
a component of roguewatchd when the config's `fleet:` is enabled.

Owns putting the forwarder together (``roguewatch.fleet.forwarder``) and running its asyncio
loop until it is told to stop. It is ready once its spool is open and its credentials pass
their checks, not once a server answers: the point of the spool is that the server may be
away. SIGTERM from a process of a watched session is dropped (``ShutdownGate``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from roguewatch.fleet.connect import CredentialError
from roguewatch.fleet.spool import SpoolError
from roguewatch.policy import config as config_mod
from roguewatch.respond.selfdefense import ShutdownGate
from roguewatch.runtime import heartbeat, readiness

log = logging.getLogger("roguewatch.forwarder")


def _in_a_session(control_endpoint: str, pid: int) -> bool:
    from roguewatch.stream.control import ControlClient, ControlError

    try:
        client = ControlClient(control_endpoint, timeout_ms=2000)
        try:
            sessions = client.request("sessions")["sessions"]
        finally:
            client.close()
    except ControlError:
        return False
    return any(pid in s.get("pids", ()) for s in sessions)


async def _run(fwd, gate: ShutdownGate, beat: heartbeat.Beat) -> None:
    stop = asyncio.Event()

    async def watch_signals() -> None:
        while not stop.is_set():
            beat()  # the event loop turns: the supervisor's heartbeat
            if gate.poll():  # never blocks; asks the collector only when a signal came
                stop.set()
            await asyncio.sleep(heartbeat.BEAT_S)

    watcher = asyncio.ensure_future(watch_signals())
    try:
        await fwd.run(stop)
    finally:
        watcher.cancel()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="roguewatch fleet forwarder")
    ap.add_argument("--config")
    ap.add_argument("--ready-fd", type=int, help="write one byte here once the spool is open")
    ap.add_argument("--heartbeat-fd", type=int, help="write a byte here every loop turn")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        cfg = config_mod.load(args.config)
    except config_mod.ConfigError as exc:
        print(f"roguewatch forwarder: {exc}", file=sys.stderr)
        return 2
    if not cfg.fleet.enabled:
        print("roguewatch forwarder: the fleet is off in the configuration (fleet.enabled)",
              file=sys.stderr)  # fmt: skip
        return 2
    from roguewatch.fleet.forwarder import Forwarder, status_path

    # Signals are read by the gate (blocked here, before any thread starts).
    gate = ShutdownGate(lambda pid: _in_a_session(cfg.control_endpoint, pid))
    try:
        fwd = Forwarder(cfg, status_path=status_path(cfg))
    except (CredentialError, SpoolError) as exc:
        print(f"roguewatch forwarder: {exc}", file=sys.stderr)
        return 2
    log.info("forwarding host %s to %s; spool %s", fwd.host, ", ".join(cfg.fleet.servers),
             cfg.fleet.spool_dir)  # fmt: skip
    readiness.notify(args.ready_fd)
    try:
        asyncio.run(_run(fwd, gate, heartbeat.Beat(args.heartbeat_fd)))
    finally:
        fwd.reader.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
