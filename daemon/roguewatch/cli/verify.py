"""`roguewatch verify FILE...`: whether a recording or an alert log is intact, truncated or
altered, and where (their hash chains: ``stream.recording``, ``outputs.alertchain``).

As root the MACs are checked with the monitor's key; without it only the digests (which
show truncation and careless edits, not a careful forger's). Exit status: 0 when every file
is intact, 1 when one is not (or has no chain), 2 when one cannot be read.
"""

from __future__ import annotations

import argparse
import json

from roguewatch.cli.common import die
from roguewatch.outputs.render import printable


def add_arguments(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="is a recording or alert log intact, truncated, altered?")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--json", action="store_true", help="one JSON object per file")
    p.set_defaults(fn=cmd_verify)


def check(path: str) -> dict:
    """The verdict on one file (a recording when it starts as one, else an alert log)."""
    from roguewatch.outputs import alertchain
    from roguewatch.stream import recording

    with open(path, "rb") as f:
        first = f.read(1)
    if first and first not in b"{ \n":  # msgpack: a recording (its errors name the problem)
        return {"kind": "recording", **recording.verify(path)}
    return {"kind": "alert log", **alertchain.verify(path)}


def cmd_verify(args: argparse.Namespace) -> int:
    from roguewatch.stream.recording import RecordingError

    worst = 0
    for path in args.files:
        try:
            result = check(path)
        except RecordingError as exc:
            die(str(exc))
            worst = 2
            continue
        except OSError as exc:
            die(f"verify: {path}: {exc.strerror}")
            worst = 2
            continue
        if args.json:
            print(json.dumps({"file": path, **result}))
        else:
            print(printable(f"{path}: {result['kind']} {result['status']}: {result['detail']}"))
        if result["status"] != "intact":
            worst = max(worst, 1)
    return worst
