"""`roguewatch run`: the command line of one watched agent session (``runtime.run`` runs it).

Light on purpose: `run`'s start-up to the agent's exec has a bar, so this module imports only
what parsing needs; the launcher is imported when the command runs.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run CMD as a watched agent session (enforce by default)")
    p.add_argument("--policy", metavar="FILE", help="egress allowlist, protected paths, mode")
    p.add_argument("--observe", action="store_true", help="alert only: never kill or block")
    p.add_argument("--alerts", metavar="FILE", help="also append the session's alerts here")
    p.add_argument("--json", action="store_true", help="alerts as JSON lines on stderr")
    p.add_argument("--name", help="the session's name (default: the command's name)")
    p.add_argument("--user", help="run the agent as this user (after set-up as root)")
    p.add_argument(
        "--drill-after",
        type=duration,
        metavar="DURATION",
        help="a shutdown drill this long into the session (60s, 2m, 500ms): the "
        "policy's shutdown: command or SIGTERM to the agent, then kill, verified",
    )
    p.add_argument(
        "--drill-deadline",
        type=duration,
        default=10.0,
        metavar="DURATION",
        help="how long the drill gives the agent to stop (default 10s)",
    )
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD [ARG...]")
    p.set_defaults(fn=main)


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration(text: str) -> float:
    """Seconds from ``60s``, ``2m``, ``500ms``, ``1h`` or a plain number of seconds."""
    t = text.strip().lower()
    for unit in ("ms", "s", "m", "h"):
        if t.endswith(unit):
            num, scale = t[: -len(unit)], _UNITS[unit]
            break
    else:
        num, scale = t, 1.0
    try:
        value = float(num) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected a duration such as 60s, 2m, 500ms or a number of seconds"
        ) from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: a duration must be more than 0")
    return value


def main(args: argparse.Namespace) -> int:
    if getattr(args, "command", None) and args.command[:1] == ["--"]:
        args.command = args.command[1:]
    from roguewatch.respond import cgroups, landlock
    from roguewatch.runtime import launcher, run

    try:
        return run.Run(args).execute()
    except (
        run.RunError,
        launcher.SessionError,
        cgroups.CgroupError,
        landlock.LandlockError,
    ) as exc:
        print(f"roguewatch run: {exc}", file=sys.stderr)
        return 2
