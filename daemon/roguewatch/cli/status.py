"""`roguewatch status`: is roguewatchd up, since when, what it watches, and every loss."""

from __future__ import annotations

import argparse
import os

from roguewatch.cli.common import die, need_root


def add_arguments(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="is roguewatchd up, and what has it lost")
    p.add_argument("--json", action="store_true", help="also print everything as JSON")
    p.add_argument("--config", metavar="FILE", help="the service's configuration file")
    p.add_argument("--control", help=argparse.SUPPRESS)
    p.set_defaults(fn=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    """Is the service up, since when, what it watches, and every loss counter.

    Exit 0 when healthy, 1 when degraded (losses, a stalled evaluator, missing probes),
    3 when not running."""
    import json
    import time

    from roguewatch.policy import config
    from roguewatch.stream.control import ControlError, running

    if (rc := need_root("status")) is not None:
        return rc
    try:
        cfg = config.load(args.config)
    except config.ConfigError as exc:
        return die(str(exc))
    client = running(args.control or cfg.control_endpoint)
    if client is None:
        print("roguewatchd: not running (no answer on the control socket)")
        return 3
    try:
        st = client.request("stats")
        sessions = client.request("sessions")["sessions"]
    except ControlError as exc:
        return die(f"roguewatchd stopped answering: {exc}")
    finally:
        client.close()
    degraded: list[str] = []
    status_file = cfg.status_file
    try:
        with open(status_file) as f:
            ev = json.load(f)
        if time.time() - os.stat(status_file).st_mtime > 5:
            degraded.append("the evaluator has not reported for more than 5 s")
    except (OSError, ValueError):
        ev = None
        degraded.append("no evaluator status (is the evaluator running?)")
    untracked = st.get("untracked_forks", 0)
    lost = (
        sum(st["lost_ring"].values())
        + st["lost_pending"]
        + st["lost_decode"]
        + st["lost_bus"]
        + untracked
    )
    if lost:
        degraded.append(f"{lost} lost (events and untracked forks)")
    if st.get("probes_failed"):
        degraded.append(f"probes not attached: {', '.join(st['probes_failed'])}")
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() - st["uptime"]))
    print(f"roguewatchd: {'DEGRADED' if degraded else 'running'} since {since} "
          f"({st['uptime']:.0f} s)")  # fmt: skip
    print(f"  probes:   {st['probes']} attached")
    print(f"  sessions: {len(sessions)} live, {st['tracked']} processes tracked")
    print(
        f"  events:   {st['events']} published, {st.get('rate', 0)}/s now; "
        f"{st.get('folded', 0)} repeats folded in the kernel"
    )
    if ev is not None:
        sev = ", ".join(f"{n} {s}" for s, n in sorted(ev["alerts_by_severity"].items()))
        print(f"  alerts:   {ev['alerts']} ({sev or 'none'}), {ev['suppressed']} folded as "
              f"duplicates; {ev['kills']} processes killed; {ev['rules']} rules, reloads "
              f"{ev['reloads']['ok']} ok / {ev['reloads']['failed']} failed")  # fmt: skip
    print(f"  losses:   ring buffer {sum(st['lost_ring'].values())} {st['lost_ring'] or ''}, "
          f"pending map {st['lost_pending']}, malformed {st['lost_decode']}"
          f"{' + ' + str(ev['malformed']) if ev else ''}, bus {st['lost_bus']}, "
          f"untracked forks {untracked}")  # fmt: skip
    _budget_lines(st)
    fleet = _fleet_line(cfg, ev, degraded)
    for d in degraded:
        print(f"  degraded: {d}")
    if args.json:
        print(json.dumps({"collector": st, "evaluator": ev, "sessions": sessions,
                          "fleet": fleet, "degraded": degraded}))  # fmt: skip
    return 1 if degraded else 0


def _budget_lines(st: dict) -> None:
    """Each session's records dropped over its budget (already among the ring's losses)."""
    budget = st.get("budget") or {}
    if not budget:
        return
    rate = budget.get("rate", 0)
    over = st.get("lost_budget") or {}
    said = (f"{rate} records/s of files and of sockets per session, burst {budget.get('burst')}"
            if rate else "off")  # fmt: skip
    print(
        f"  budgets:  {said}; {len(over)} sessions went over theirs"
        + (" (records dropped in the kernel, counted in the ring's losses):" if over else "")
    )
    for sid, by in sorted(over.items(), key=lambda kv: -sum(kv[1].values()))[:20]:
        what = ", ".join(f"{tier} {n}" for tier, n in sorted(by.items()))
        print(f"    session {sid}: {sum(by.values())} lost ({what})")


def _fleet_line(cfg, ev: dict | None, degraded: list[str]) -> dict | None:
    """The forwarder's state (no secret in it: it writes none), printed; degraded when the
    spool's bound dropped records or the forwarder has not reported."""
    import json
    import time

    if not cfg.fleet.enabled:
        return None
    from roguewatch.fleet.forwarder import status_path

    path = status_path(cfg)
    try:
        with open(path or "") as f:
            fl = json.load(f)
    except (OSError, ValueError):
        degraded.append("fleet: no forwarder status (is the forwarder running?)")
        return None
    dropped = int(((ev or {}).get("fleet_spool") or {}).get("dropped", 0))
    state = f"connected to {fl['server']}" if fl.get("connected") else "NOT CONNECTED"
    print(f"  fleet:    host {fl['host']}, {state}; {fl['acked']} records acknowledged, "
          f"{fl['spool_bytes']} bytes in the spool, {dropped} dropped by its bound"
          + (f"; last error: {fl['last_error']}" if fl.get("last_error") else ""))  # fmt: skip
    if dropped:
        degraded.append(f"fleet: {dropped} records dropped by the spool's bound")
    if time.time() - float(fl.get("ts", 0)) > 5:
        degraded.append("fleet: the forwarder has not reported for more than 5 s")
    return fl
