"""roguewatchd: the service. Starts and supervises the collector; prints what it sees.

Owns process supervision (a collector that dies is restarted with back-off and the restart is
reported), signal handling, and the foreground console. Without systemd it logs plainly to
stderr. The evaluator joins here when it exists.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time

from roguewatch import __version__, bus, config, render
from roguewatch.control import ControlClient, ControlError

log = logging.getLogger("roguewatchd")


class Service:
    def __init__(self, cfg: config.Config, config_path: str | None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.collector: subprocess.Popen | None = None
        self.stopping = False
        self.restarts = 0

    def start_collector(self, timeout: float = 60.0) -> None:
        r, w = os.pipe()
        cmd = [sys.executable, "-m", "roguewatch.collector", "--ready-fd", str(w)]
        if self.config_path:
            cmd += ["--config", self.config_path]
        t0 = time.monotonic()
        self.collector = subprocess.Popen(cmd, pass_fds=(w,))
        os.close(w)
        import select

        ready, _, _ = select.select([r], [], [], timeout)
        ok = bool(ready) and os.read(r, 1) == b"1"
        os.close(r)
        if not ok:
            raise RuntimeError("the collector did not become ready (see its messages above)")
        log.info(
            "collector %d ready in %.2f s: probes attached",
            self.collector.pid,
            time.monotonic() - t0,
        )
        try:
            client = ControlClient(self.cfg.control_endpoint)
            client.request("guard", pid=os.getpid())
            client.close()
        except ControlError as exc:
            log.warning("could not guard the service process: %s", exc)

    def stop(self, *_: object) -> None:
        self.stopping = True

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        try:
            self.start_collector()
        except RuntimeError as exc:
            log.error("%s", exc)
            return 1
        sub = bus.Subscriber(self.cfg.events_endpoint)
        sub.wait_ready(2000)
        backoff = 1.0
        while not self.stopping:
            batch = sub.recv_batch(200)
            if batch and self.cfg.print_events:
                for ev in batch:
                    print(render.human(ev), flush=True)
            if self.collector and self.collector.poll() is not None:
                code = self.collector.returncode
                log.error("collector exited with %s; restarting in %.0f s", code, backoff)
                print(
                    render.human(
                        {
                            "type": "monitor",
                            "kind": "restart",
                            "ts": time.time_ns(),
                            "detail": f"collector exited ({code}); events while it "
                            "was down were not seen",
                        }
                    ),
                    flush=True,
                )
                time.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                self.restarts += 1
                try:
                    self.start_collector()
                    sub.close()
                    sub = bus.Subscriber(self.cfg.events_endpoint)
                    sub.wait_ready(2000)
                except RuntimeError as exc:
                    log.error("%s", exc)
        if self.collector and self.collector.poll() is None:
            self.collector.terminate()
            try:
                self.collector.wait(10)
            except subprocess.TimeoutExpired:
                self.collector.kill()
        return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="roguewatchd", description="the roguewatch service")
    ap.add_argument("--config", metavar="FILE", help="YAML configuration (default: built in)")
    ap.add_argument("--quiet", action="store_true", help="do not print events")
    ap.add_argument("--version", action="version", version=f"roguewatchd {__version__}")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    if os.geteuid() != 0:
        print("roguewatchd: must run as root (it loads BPF probes)", file=sys.stderr)
        return 2
    try:
        cfg = config.load(args.config)
    except config.ConfigError as exc:
        print(f"roguewatchd: {exc}", file=sys.stderr)
        return 2
    if args.quiet:
        cfg.print_events = False
    log.info(
        "roguewatchd %s starting; adopting uids %s, comms %s",
        __version__,
        cfg.adopted_uids() or "none",
        cfg.adopt_comms or "none",
    )
    return Service(cfg, args.config).run()


if __name__ == "__main__":
    raise SystemExit(main())
