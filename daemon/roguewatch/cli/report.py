"""`roguewatch report SESSION|RECORDING [--html FILE] [--json]`: the session report
(``outputs.report`` builds it).

From a recording (`roguewatch record`, or the per-session record `run` keeps), in one pass:
every event goes to the report, and to the rules (as `replay` runs them) unless the
session's real alerts are given (``--alerts FILE``, an alert log): then the report shows what
was really done. The recording's integrity (its hash chain) is checked and said at the top.
``--html FILE`` writes the page, ``--json`` prints the same content; with neither, a few
lines of summary.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from roguewatch.cli.common import die


def add_arguments(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="one page of a session: tree, timeline, alerts, drill")
    p.add_argument(
        "target",
        metavar="SESSION|RECORDING",
        help="a recording file, or the id of a session `run` kept a record of",
    )
    p.add_argument("--html", metavar="FILE", help="write the self-contained HTML page here")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--alerts", metavar="FILE",
                   help="the session's alerts from this alert log (JSON lines) instead of "
                   "running the rules over the recording")  # fmt: skip
    p.add_argument("--rules", action="append", metavar="DIR", help=argparse.SUPPRESS)
    p.set_defaults(fn=cmd_report)


def _read_alerts(path: str, session: str) -> list[dict]:
    out = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                a = json.loads(line)
            except ValueError:
                raise ValueError(f"{path}:{n}: not a JSON alert line") from None
            if isinstance(a, dict) and a.get("session") == session and a.get("id"):
                out.append(a)
    return out


def build(path: str, alerts_file: str | None = None, rules_dirs: list[str] | None = None) -> dict:
    """The report of the recording at ``path`` (RecordingError, RuleError, OSError, ValueError
    for what is wrong)."""
    from roguewatch.outputs import alertchain
    from roguewatch.outputs.report import ReportBuilder
    from roguewatch.stream import recording, sessionstore

    reader = recording.Reader(path)  # one pass: the events, and the chain checked
    header, events = reader.header, reader.events()
    builder = ReportBuilder(header, {"kind": "recording", "path": os.path.abspath(path)})
    sid = f"{int(header.get('session') or 0):x}"
    alerts_file = alerts_file or sessionstore.alerts_of(path)
    found: list[dict] = []
    if alerts_file:
        log = alertchain.verify(alerts_file)
        found = _read_alerts(alerts_file, sid)
        add = builder.add
        for ev in events:
            add(ev)
    else:
        from roguewatch.cli import replay
        from roguewatch.cli import rules as rules_cli
        from roguewatch.policy.policy import StaticPolicy

        rules = rules_cli.load(rules_dirs)

        def tee():
            for ev in events:
                builder.add(ev)
                yield ev

        started = header.get("started")
        replay.run(tee(), rules, StaticPolicy(), found.append,
                   start_ns=started if isinstance(started, int) else 0)  # fmt: skip
        for a in found:
            if a.get("outcome") == "alert":
                a["outcome"] = "found by replaying the rules over the recording"
    assert reader.integrity is not None
    integrity = reader.integrity.as_dict()
    if alerts_file:
        integrity["alert_log"] = {"path": alerts_file, **log}
        if log["status"] != "intact" and integrity["status"] == "intact":
            integrity["status"] = log["status"]
            integrity["detail"] = f"the alert log {alerts_file}: {log['detail']}"
    return builder.finish(found, integrity)


def _resolve(target: str) -> str | None:
    """A recording file, or the kept record of the session with that id."""
    if os.path.isfile(target):
        return target
    from roguewatch.stream import sessionstore

    return sessionstore.find(target)


def cmd_report(args: argparse.Namespace) -> int:
    from roguewatch.detect.ruleset import RuleError
    from roguewatch.outputs.report import render_html
    from roguewatch.stream import recording

    path = _resolve(args.target)
    if path is None:
        from roguewatch.stream import sessionstore

        kept = sessionstore.newest(5)
        hint = f"; the newest kept: {', '.join(kept)}" if kept else ""
        return die(f"report: {args.target!r} is neither a recording file nor a session with a "
                   f"kept record (in {sessionstore.SESSION_RECORDS}){hint}")  # fmt: skip
    try:
        report = build(path, args.alerts, args.rules)
    except (recording.RecordingError, RuleError, ValueError) as exc:
        return die(f"report: {exc}")
    except OSError as exc:
        return die(f"report: {exc.filename or path}: {exc.strerror}")
    if args.html:
        html = render_html(report)
        try:
            with open(args.html, "w", encoding="utf-8") as f:
                f.write(html)
        except OSError as exc:
            return die(f"report: cannot write {args.html}: {exc.strerror}")
    if args.json:
        print(json.dumps(report, default=str))
    elif not args.html or sys.stderr.isatty():
        s = report["summary"]
        for p in report["problems"]:
            print(f"roguewatch: {p}", file=sys.stderr)
        drill = s["drill"]["verdict"] if s["drill"] else "none"
        written = f"; page written to {args.html}" if args.html else ""
        print(f"session {s['session']}: {s['events']} events, {s['processes']} processes, "
              f"{s['alerts']} alerts, {len(report['timeline'])} actions outside the workspace, "
              f"drill: {drill}; record {report['integrity']['status']}{written}",
              file=sys.stderr)  # fmt: skip
    return 0
