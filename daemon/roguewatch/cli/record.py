"""`roguewatch record`: run a command as a new session and write every event of it to a file.

The session is registered in observe mode (a recording never enforces: no kill, no denial, no
restore) and with the policy given, so its `session` start event (the first of the recording)
carries that policy and `roguewatch replay` judges the recording by it."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from roguewatch.cli.common import die, need_root


def add_arguments(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("record", help="run CMD as a new session and write its events to FILE")
    p.add_argument("--output", "-o", required=True, metavar="FILE")
    p.add_argument(
        "--policy",
        metavar="FILE",
        help="the session's policy (egress allowlist, protected paths, lists), recorded with "
        "it for `replay`; never enforced: a recording runs in observe mode",
    )
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD [ARG...]")
    p.set_defaults(fn=cmd_record)


def _loss(ev: dict) -> bool:
    """The monitor's own loss reports (session 0): a recording says what it may be missing."""
    return ev.get("type") == "monitor" and ev.get("kind") == "loss"


def cmd_record(args: argparse.Namespace) -> int:
    from roguewatch.runtime import launcher
    from roguewatch.stream import bus, recording

    if not args.command:
        return die("record: no command given (roguewatch record --output FILE -- CMD...)")
    if (rc := need_root("record")) is not None:
        return rc
    from roguewatch.policy import policy as policy_mod

    try:
        pol = policy_mod.as_dict(policy_mod.load(args.policy)) if args.policy else {}
    except policy_mod.PolicyError as exc:
        return die(f"bad policy: {exc}")
    if pol:
        pol["mode"] = "observe"  # what the session runs under, as `run` says it
    try:
        watcher = launcher.find_or_start_collector()
    except launcher.SessionError as exc:
        return die(str(exc))
    writer = None
    try:
        sub = bus.Subscriber(watcher.events)
        if not sub.wait_ready(5000):
            return die("the event stream did not answer")
        register = launcher.register_with(
            watcher.control, name=os.path.basename(args.command[0]), mode="observe", policy=pol
        )
        pid, session = launcher.spawn_in_session(args.command, register)
        writer = recording.Writer(args.output, args.command, session)
        status = None
        # Forward ^C and termination to the command; the recording ends when it does.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda s, _f: os.kill(pid, s))
        while status is None:
            batch = sub.recv_batch(100)
            for ev in batch or ():
                if ev.get("session") == session or _loss(ev):
                    writer.write(ev)
            writer.seal()  # each batch chained as it is written (stream/recording.py)
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status = st
        # Events still in flight (the root's own exit, children's last words).
        for ev in sub.events(timeout_ms=300):
            if ev.get("session") == session or _loss(ev):
                writer.write(ev)
        print(
            f"roguewatch: {writer.count} events of session {session:x} written to {args.output}",
            file=sys.stderr,
        )
        return launcher.exit_status(status)
    except (launcher.SessionError, OSError) as exc:
        return die(str(exc))
    finally:
        if writer is not None:
            writer.close()
        watcher.close()
