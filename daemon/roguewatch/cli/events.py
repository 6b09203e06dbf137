"""`roguewatch events`: the event stream, live or from a recording, as text or JSON lines."""

from __future__ import annotations

import argparse
import sys

from roguewatch.cli.common import die, need_root
from roguewatch.core.paths import EVENTS_ENDPOINT
from roguewatch.outputs import render


def add_arguments(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("events", help="show the event stream (live, or from a recording)")
    p.add_argument("--json", action="store_true", help="JSON lines instead of one-line text")
    p.add_argument("--follow", "-f", action="store_true", help="keep streaming until ^C")
    p.add_argument("--session", help="only this session (hex id)")
    p.add_argument("--from", dest="from_file", metavar="FILE", help="read a recording")
    p.add_argument("--endpoint", default=EVENTS_ENDPOINT, help=argparse.SUPPRESS)
    p.set_defaults(fn=cmd_events)


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
            return die(str(exc))
        return 0
    if (rc := need_root("events")) is not None:
        return rc
    from roguewatch.stream import bus

    try:
        sub = bus.Subscriber(args.endpoint)
    except bus.BusError as exc:
        return die(str(exc))
    sub.wait_ready(2000)
    quiet_ms = None if args.follow else 2000
    for ev in sub.events(timeout_ms=quiet_ms):
        if session is None or ev.get("session") == session:
            _print_event(ev, args.json)
    if sub.malformed:
        print(f"roguewatch: {sub.malformed} malformed messages dropped", file=sys.stderr)
    return 0
