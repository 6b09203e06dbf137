"""The `roguewatch` command: argument parsing and the sub-commands' glue, nothing more.

Each sub-command lives in a module of its own (``COMMANDS``) that parses its options and calls
the module owning the work. Errors a person can act on end with a message and exit status 2,
never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from roguewatch import __version__

EXAMPLES = """\
examples:
  sudo roguewatch doctor                          is this host ready?
  sudo roguewatch events --follow                 every event of every session, live
  sudo roguewatch record --output run.rwrec -- python agent.py
  roguewatch events --from run.rwrec --json       a recording, as JSON lines
  roguewatch tail --follow --severity high        alerts, history then live
  roguewatch rules explain persistence_cron_write
  roguewatch replay run.rwrec --policy p.yaml     new rules over an old recording
  roguewatch report run.rwrec --html run.html     one self-contained page of a session
  sudo roguewatch drill SESSION                   a shutdown drill: ask, watch, kill, verify
  roguewatch fleet tail --follow --severity high  alerts of every host (NATS JetStream)
"""


# One module per sub-command, in the order `--help` lists them; each registers its parser(s)
# with add_arguments(sub). Several names may share a module (sessions, kill, thaw).
COMMANDS = {
    "run": "run",
    "sessions": "sessions", "kill": "sessions", "thaw": "sessions",
    "drill": "drill",
    "tail": "tail",
    "events": "events",
    "record": "record",
    "replay": "replay",
    "report": "report",
    "verify": "verify",
    "rules": "rules",
    "quarantine": "quarantine",
    "status": "status",
    "doctor": "doctor",
    "fleet": "fleet",
}  # fmt: skip
# Sub-commands whose parser alone is built when they are the one asked for: the full parser
# imports every sub-command's module (the rule compiler among them, the slowest import),
# and `run`'s start-up to the agent's exec has a bar (bench/README.md).
_LIGHT = frozenset({"run", "sessions", "kill", "thaw"})


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
    modules = [COMMANDS[only]] if only in _LIGHT else list(dict.fromkeys(COMMANDS.values()))
    for name in modules:
        importlib.import_module(f"roguewatch.cli.{name}").add_arguments(sub)
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
