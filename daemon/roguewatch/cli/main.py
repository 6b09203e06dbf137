"""The `roguewatch` command: argument parsing and the sub-commands' glue, nothing more.

Each sub-command lives in a small function that calls the module owning the work. Errors a
person can act on end with a message and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from roguewatch import __version__
from roguewatch.outputs import render

EXAMPLES = """\
examples:
  sudo roguewatch doctor                          is this host ready?
  sudo roguewatch events --follow                 every event of every session, live
  sudo roguewatch record --output run.rwrec -- python agent.py
  roguewatch events --from run.rwrec --json       a recording, as JSON lines
  roguewatch tail --follow --severity high        alerts, history then live
  roguewatch rules explain persistence_cron_write
  roguewatch replay run.rwrec --policy p.yaml     new rules over an old recording
"""


def _die(msg: str, code: int = 2) -> int:
    print(f"roguewatch: {msg}", file=sys.stderr)
    return code


def _need_root(what: str) -> int | None:
    if os.geteuid() != 0:
        return _die(
            f"{what} needs root (it loads BPF probes or reads root-only sockets): run it with sudo"
        )
    return None


def cmd_doctor(args: argparse.Namespace) -> int:
    from roguewatch.cli import doctor

    return doctor.main(["--json"] if args.json else [])


def _print_event(ev: dict, as_json: bool) -> None:
    print(render.as_json(ev) if as_json else render.human(ev), flush=True)


def cmd_events(args: argparse.Namespace) -> int:
    session = int(args.session, 16) if args.session else None
    if args.from_file:
        from roguewatch.stream import recording

        try:
            _, events = recording.read(args.from_file)
            for ev in events:
                if session is None or ev.get("session") == session:
                    _print_event(ev, args.json)
        except recording.RecordingError as exc:
            return _die(str(exc))
        return 0
    if (rc := _need_root("events")) is not None:
        return rc
    from roguewatch.stream import bus

    try:
        sub = bus.Subscriber(args.endpoint)
    except bus.BusError as exc:
        return _die(str(exc))
    sub.wait_ready(2000)
    quiet_ms = None if args.follow else 2000
    for ev in sub.events(timeout_ms=quiet_ms):
        if session is None or ev.get("session") == session:
            _print_event(ev, args.json)
    if sub.malformed:
        print(f"roguewatch: {sub.malformed} malformed messages dropped", file=sys.stderr)
    return 0


def cmd_record(args: argparse.Namespace) -> int:
    from roguewatch.runtime import launcher
    from roguewatch.stream import bus, recording

    if not args.command:
        return _die("record: no command given (roguewatch record --output FILE -- CMD...)")
    if (rc := _need_root("record")) is not None:
        return rc
    try:
        watcher = launcher.find_or_start_collector()
    except launcher.SessionError as exc:
        return _die(str(exc))
    writer = None
    try:
        sub = bus.Subscriber(watcher.events)
        if not sub.wait_ready(5000):
            return _die("the event stream did not answer")
        pid, session = launcher.spawn_in_session(
            args.command, launcher.register_with(watcher.control)
        )
        writer = recording.Writer(args.output, args.command, session)
        status = None
        # Forward ^C and termination to the command; the recording ends when it does.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda s, _f: os.kill(pid, s))
        while status is None:
            batch = sub.recv_batch(100)
            for ev in batch or ():
                if ev.get("session") == session:
                    writer.write(ev)
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status = st
        # Events still in flight (the root's own exit, children's last words).
        for ev in sub.events(timeout_ms=300):
            if ev.get("session") == session:
                writer.write(ev)
        print(
            f"roguewatch: {writer.count} events of session {session:x} written to {args.output}",
            file=sys.stderr,
        )
        return launcher.exit_status(status)
    except (launcher.SessionError, OSError) as exc:
        return _die(str(exc))
    finally:
        if writer is not None:
            writer.close()
        watcher.close()


def cmd_status(args: argparse.Namespace) -> int:
    """Is the service up, since when, what it watches, and every loss counter.

    Exit 0 when healthy, 1 when degraded (losses, a stalled evaluator, missing probes),
    3 when not running."""
    import json
    import time

    from roguewatch.policy import config
    from roguewatch.stream.control import running

    if (rc := _need_root("status")) is not None:
        return rc
    try:
        cfg = config.load(args.config)
    except config.ConfigError as exc:
        return _die(str(exc))
    client = running(args.control or cfg.control_endpoint)
    if client is None:
        print("roguewatchd: not running (no answer on the control socket)")
        return 3
    st = client.request("stats")
    sessions = client.request("sessions")["sessions"]
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
    lost = sum(st["lost_ring"].values()) + st["lost_pending"] + st["lost_decode"] + st["lost_bus"]
    if lost:
        degraded.append(f"{lost} events lost")
    if st.get("probes_failed"):
        degraded.append(f"probes not attached: {', '.join(st['probes_failed'])}")
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() - st["uptime"]))
    print(f"roguewatchd: {'DEGRADED' if degraded else 'running'} since {since} "
          f"({st['uptime']:.0f} s)")  # fmt: skip
    print(f"  probes:   {st['probes']} attached")
    print(f"  sessions: {len(sessions)} live, {st['tracked']} processes tracked")
    print(f"  events:   {st['events']} published, {st.get('rate', 0)}/s now")
    if ev is not None:
        sev = ", ".join(f"{n} {s}" for s, n in sorted(ev["alerts_by_severity"].items()))
        print(f"  alerts:   {ev['alerts']} ({sev or 'none'}), {ev['suppressed']} folded as "
              f"duplicates; {ev['kills']} processes killed; {ev['rules']} rules, reloads "
              f"{ev['reloads']['ok']} ok / {ev['reloads']['failed']} failed")  # fmt: skip
    print(f"  losses:   ring buffer {sum(st['lost_ring'].values())} {st['lost_ring'] or ''}, "
          f"pending map {st['lost_pending']}, malformed {st['lost_decode']}"
          f"{' + ' + str(ev['malformed']) if ev else ''}, bus {st['lost_bus']}")  # fmt: skip
    for d in degraded:
        print(f"  degraded: {d}")
    if args.json:
        print(json.dumps({"collector": st, "evaluator": ev, "sessions": sessions,
                          "degraded": degraded}))  # fmt: skip
    return 1 if degraded else 0


# Sub-commands whose parser alone is built when they are the one asked for: the full parser
# imports every sub-command's module (the rule compiler among them: 0.3-0.5 s), and `run`'s
# start-up to the agent's exec has a bar (issue 4).
_LIGHT = {
    "run": "runtime.run",
    "sessions": "cli.sessions",
    "kill": "cli.sessions",
    "thaw": "cli.sessions",
}


def _subcommand(argv: list[str]) -> str | None:
    """The sub-command named in ``argv`` (the first word that is not an option)."""
    for a in argv:
        if a == "--":
            return None
        if not a.startswith("-"):
            return a
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; with ``only`` (a light sub-command), just that sub-command's."""
    ap = argparse.ArgumentParser(
        prog="roguewatch",
        description="Watch AI-agent processes and stop them when they go rogue.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--version", action="version", version=f"roguewatch {__version__}")
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND")
    if only in _LIGHT:
        import importlib

        importlib.import_module(f"roguewatch.{_LIGHT[only]}").add_arguments(sub)
        return ap
    from roguewatch.stream import bus

    p = sub.add_parser("doctor", help="check that this host can run roguewatch")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_doctor)

    p = sub.add_parser("events", help="show the event stream (live, or from a recording)")
    p.add_argument("--json", action="store_true", help="JSON lines instead of one-line text")
    p.add_argument("--follow", "-f", action="store_true", help="keep streaming until ^C")
    p.add_argument("--session", help="only this session (hex id)")
    p.add_argument("--from", dest="from_file", metavar="FILE", help="read a recording")
    p.add_argument("--endpoint", default=bus.EVENTS_ENDPOINT, help=argparse.SUPPRESS)
    p.set_defaults(fn=cmd_events)

    p = sub.add_parser("record", help="run CMD as a new session and write its events to FILE")
    p.add_argument("--output", "-o", required=True, metavar="FILE")
    p.add_argument(
        "--policy", metavar="FILE", help="accepted; enforcement arrives with `roguewatch run`"
    )
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD [ARG...]")
    p.set_defaults(fn=cmd_record)

    from roguewatch.cli import quarantine as quarantine_cli
    from roguewatch.cli import replay, tail
    from roguewatch.cli import rules as rules_cli
    from roguewatch.cli import sessions as session_cli
    from roguewatch.runtime import run as run_mod

    run_mod.add_arguments(sub)
    session_cli.add_arguments(sub)
    quarantine_cli.add_arguments(sub)

    p = sub.add_parser("tail", help="show alerts: history from the file, then live")
    tail.add_arguments(p)
    p.set_defaults(fn=tail.main)
    rules_cli.add_rules_arguments(sub)
    replay.add_replay_arguments(sub)

    p = sub.add_parser("status", help="is roguewatchd up, and what has it lost")
    p.add_argument("--json", action="store_true", help="also print everything as JSON")
    p.add_argument("--config", metavar="FILE", help="the service's configuration file")
    p.add_argument("--control", help=argparse.SUPPRESS)
    p.set_defaults(fn=cmd_status)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = build_parser(only=_subcommand(argv))
    args = ap.parse_args(argv)
    if getattr(args, "command", None) and args.command[:1] == ["--"]:
        args.command = args.command[1:]
    if not getattr(args, "fn", None):
        ap.print_help()
        return 2
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
