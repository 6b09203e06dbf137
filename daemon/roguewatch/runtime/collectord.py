"""The collector as a process of its own (`python -m roguewatch.runtime.collectord`).

Owns putting the collector together and running it: the configuration and its command-line
overrides, the filesystem sensor (started first, so its baseline snapshot overlaps the
loading of the probes), the collector, its shutdown gate, the readiness byte, and, for a
private collector (`run`, `record`), dropping its baselines when it ends.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from collections import deque

from roguewatch.core import procfs, sessionstate
from roguewatch.core.paths import PRIVATE_STATE
from roguewatch.detect import ruleset
from roguewatch.policy import config as config_mod
from roguewatch.policy import policy as policy_mod
from roguewatch.respond.selfdefense import ShutdownGate, block_shutdown_signals
from roguewatch.runtime import heartbeat, readiness
from roguewatch.runtime.fileguard import FileGuard
from roguewatch.sensors import bpf, watchers
from roguewatch.stream import bus
from roguewatch.stream.collector import Collector


def watch_paths(cfg: config_mod.Config, extra: list[str] | None = None) -> list[str]:
    """The persistence and oversight paths the rule packs name, with every home expanded."""
    lists = ruleset.lists_only(d for d in cfg.rules_dirs if os.path.isdir(d))
    return watchers.watch_paths(
        lists, [*cfg.watch_extra, *cfg.monitor_config_paths(), *(extra or [])]
    )


def workspace_files(cfg: config_mod.Config) -> list[str]:
    """Files a session's working directory may hold that rules name by glob (an agent's own
    permission configuration: ``*/.claude/settings.json`` is ``.claude/settings.json``)."""
    lists = ruleset.lists_only(d for d in cfg.rules_dirs if os.path.isdir(d))
    out = []
    for item in lists.get("agent_permission_globs", ()):
        rel = str(item)
        if rel.startswith("*/") and not any(c in rel[2:] for c in "*?["):
            out.append(rel[2:])
    return out


def sysctls(cfg: config_mod.Config) -> list[str]:
    """The kernel settings rules name (lists ``*_sysctls``): read as a session starts, so a
    restore can write them back."""
    lists = ruleset.lists_only(d for d in cfg.rules_dirs if os.path.isdir(d))
    return [str(i) for n, items in lists.items() if n.endswith("_sysctls") for i in items]


def log_dirs(cfg: config_mod.Config) -> list[str]:
    """Where logs are (lists ``log_dirs``, ``login_record_dirs``): their small files are
    baselined as a session starts, so a truncated or removed one can be put back."""
    lists = ruleset.lists_only(d for d in cfg.rules_dirs if os.path.isdir(d))
    own = ("/var/log/roguewatch",)
    return [str(i) for n in ("log_dirs", "login_record_dirs") for i in lists.get(n, ())
            if not any(str(i).startswith(o) for o in own)]  # fmt: skip


def build(
    cfg: config_mod.Config, max_procs: int = 65536, guard_pids: list[int] | None = None
) -> Collector:
    """A collector with its filesystem sensor (when ``cfg.watch_files``), started.

    What the collector before it pinned is read first: after an unclean end (killed, crashed)
    the baselines of the paths it watched are kept, not snapshotted again over the gap (a
    cron file written meanwhile is judged against the last good baseline, not taken for it)."""
    previous = sessionstate.read(cfg.state_dir)
    queue: deque[dict] = deque()
    col: Collector | None = None

    def on_change(ev: dict) -> None:  # watchdog's thread
        if col is not None:
            col.fs_event(ev)
        else:  # (the collector is being built: it publishes what is queued once it runs)
            queue.append(ev)

    # pid -> start time: a starter's pid, once it is gone and reused, is no longer ours
    starters = {p: procfs.start_ns(p) for p in guard_pids or ()}

    def is_own(pid: int) -> bool:
        if pid in starters and procfs.start_ns(pid) == starters[pid]:
            return True  # (also before the probes exist: its writes while we start)
        try:
            return col is not None and col.probes.is_guarded(pid)
        except (KeyError, OSError):
            return False

    files = None
    if cfg.watch_files:
        lists = ruleset.lists_only(d for d in cfg.rules_dirs if os.path.isdir(d))

        def home_paths(home: str, means: str) -> list[str]:
            return watchers.home_paths(lists, home, means)

        files = FileGuard(cfg, watch_paths(cfg), on_change, is_own,
                          workspace_files=workspace_files(cfg), sysctls=sysctls(cfg),
                          home_paths=home_paths, log_dirs=log_dirs(cfg))  # fmt: skip
        files.start(keep_baselines=not previous.clean)
    try:
        col = Collector(cfg, max_procs=max_procs, files=files, fs_queue=queue, previous=previous,
                        pin=cfg.keep_sensors_on_exit, guard_pids=guard_pids)  # fmt: skip
    except BaseException:
        if files is not None:
            files.close()
        raise
    return col


def drop_private_state(state_dir: str) -> None:
    """A private collector's baselines go with it; its quarantine (if any) stays."""
    state = os.path.realpath(state_dir)
    if not state.startswith(PRIVATE_STATE + "/"):
        return
    quarantine = os.path.join(state, "quarantine")
    if os.path.isdir(quarantine) and os.listdir(quarantine):
        shutil.rmtree(os.path.join(state, "baseline"), ignore_errors=True)
    else:
        shutil.rmtree(state, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    block_shutdown_signals()  # before any thread exists (ZeroMQ's, the watchers')
    ap = argparse.ArgumentParser(description="roguewatch collector")
    ap.add_argument("--config")
    ap.add_argument("--events", help="event stream endpoint")
    ap.add_argument("--control", help="control endpoint")
    ap.add_argument("--ringbuf-pages", type=int)
    ap.add_argument("--max-procs", type=int, help=argparse.SUPPRESS)  # tests: a small map
    ap.add_argument("--no-adopt", action="store_true", help="ignore adoption selectors")
    ap.add_argument("--state-dir", help="baselines and quarantine (default from the config)")
    ap.add_argument("--no-watch", action="store_true", help="no filesystem watchers")
    ap.add_argument(
        "--egress-refresh",
        type=float,
        metavar="S",
        help="re-resolve allowlisted host names DNS gives no TTL for every S s",
    )
    ap.add_argument("--ready-fd", type=int, help="write one byte here once probes are attached")
    ap.add_argument("--heartbeat-fd", type=int, help="write a byte here every loop turn")
    ap.add_argument("--guard-pid", type=int, action="append", default=[], metavar="PID",
                    help="a process of the monitor that started us (roguewatchd, its "
                    "supervisor): guarded from the first event, its writes our own")  # fmt: skip
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        cfg = config_mod.load(args.config)
    except config_mod.ConfigError as exc:
        print(f"roguewatch collector: {exc}", file=sys.stderr)
        return 2
    if args.events:
        cfg.events_endpoint = args.events
    if args.control:
        cfg.control_endpoint = args.control
    if args.ringbuf_pages:
        cfg.ringbuf_pages = args.ringbuf_pages
    if args.no_adopt:
        cfg.adopt_users, cfg.adopt_uids, cfg.adopt_comms = [], [], []
        cfg.policies_dir = ""
    if args.state_dir:
        cfg.state_dir = args.state_dir
    if args.no_watch:
        cfg.watch_files = False
    if args.egress_refresh:
        cfg.egress_refresh_s = args.egress_refresh
    try:
        col = build(cfg, max_procs=args.max_procs or 65536, guard_pids=args.guard_pid)
    except (bpf.ProbeError, bus.BusError) as exc:
        print(f"roguewatch collector: {exc}", file=sys.stderr)
        return 1
    # SIGTERM from a watched process is dropped (its sender dies in the kernel); from anyone
    # else it stops the collector, at the next loop turn (at most one second).
    gate = ShutdownGate(col.in_any_session)
    try:
        col.setup()
    except policy_mod.PolicyError as exc:
        print(f"roguewatch collector: {exc}", file=sys.stderr)
        col.close()
        drop_private_state(cfg.state_dir)
        return 2
    try:
        beat = heartbeat.Beat(args.heartbeat_fd) if args.heartbeat_fd is not None else None
        col.run(lambda: readiness.notify(args.ready_fd), gate, beat)
    finally:
        # A stop announced by who started us (the `stopping` operation) is a clean end;
        # anything else (its death's PDEATHSIG, a kill) leaves a gap the next one judges.
        col.close(clean=col.planned_stop)
        drop_private_state(cfg.state_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
