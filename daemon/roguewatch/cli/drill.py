"""`roguewatch drill SESSION`: a shutdown drill of a live session (``respond.drill`` runs it).

Asks the session to stop (SIGTERM to its root, or ``--shutdown CMD`` / the policy's
``shutdown:``), watches until ``--deadline``, kills what is left, verifies zero survivors and
prints the compliance record; the record also goes to the collector, whose evaluator raises
it as the ``shutdown_drill`` alert. Exit status: 0 complied, 1 resisted or had to be killed
(and ended), 3 survivors left, 2 when the drill could not be carried out.
"""

from __future__ import annotations

import argparse
import json
import sys

from roguewatch.cli.common import die
from roguewatch.outputs.render import printable
from roguewatch.stream import bus


def add_arguments(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("drill", help="shutdown drill: ask SESSION to stop, watch, kill, verify")
    p.add_argument("session", help="session id (hex) or name")
    p.add_argument("--deadline", type=float, default=10.0, metavar="SECONDS",
                   help="how long the session has to stop (default 10)")  # fmt: skip
    p.add_argument("--shutdown", metavar="CMD",
                   help="ask with this command (the harness's shutdown script) instead of "
                   "SIGTERM to the root (it gets ROGUEWATCH_SESSION, ROGUEWATCH_ROOT)")  # fmt: skip
    p.add_argument(
        "--policy",
        metavar="FILE",
        help="the session's policy: its shutdown: command and protected paths",
    )
    p.add_argument("--json", action="store_true", help="the record as one JSON object")
    p.add_argument("--control", default=bus.CONTROL_ENDPOINT, help=argparse.SUPPRESS)
    p.set_defaults(fn=cmd_drill)


def cmd_drill(args: argparse.Namespace) -> int:
    from roguewatch.cli.sessions import _all_sessions, _clients
    from roguewatch.respond import drill
    from roguewatch.respond.cgroups import CgroupError
    from roguewatch.respond.sessionkill import find_session
    from roguewatch.stream.control import ControlError

    if args.deadline <= 0:
        return die("drill: --deadline must be more than 0 seconds")
    shutdown: list[str] | str | None = args.shutdown
    protect: tuple[str, ...] = ()
    if args.policy:
        from roguewatch.policy import policy as policy_mod

        try:
            pol = policy_mod.load(args.policy)
        except policy_mod.PolicyError as exc:
            return die(f"bad policy: {exc}")
        shutdown = shutdown or list(pol.shutdown) or None
        protect = pol.protect
    clients = _clients(args.control)
    if clients is None:
        return 2
    found = find_session(_all_sessions(clients), args.session)
    if found is None:
        return die(f"no live session {args.session!r} (see `roguewatch sessions`)")
    client, entry = found
    try:
        record, delivered = drill.drill_session(
            client, entry, deadline=args.deadline, shutdown=shutdown, protect=protect
        )
    except (drill.DrillError, CgroupError, ControlError, ValueError) as exc:
        return die(f"drill of session {entry['session']}: {exc}")
    if args.json:
        print(json.dumps(record.to_dict()))
    else:
        print(printable(record.summary()))
        for p in record.alive_at_deadline:
            print(printable(f"  alive at the deadline: pid {p['pid']} ({', '.join(p['why'])}): "
                            f"{p['cmdline'][:120]}"))  # fmt: skip
    if not delivered:
        print("roguewatch: the collector did not take the drill's record: no shutdown_drill "
              "alert was raised", file=sys.stderr)  # fmt: skip
    if record.survivors:
        return 3
    return 0 if record.verdict == drill.COMPLIED else 1
