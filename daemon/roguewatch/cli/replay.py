"""`roguewatch replay FILE`: the rules run offline over a recording made by `roguewatch record`.

Every event goes through a fresh :class:`~roguewatch.evaluator.Evaluator` exactly as the live
evaluator would see it, except that time is the recording's own: the evaluator's clock is the
timestamp of the event being handled, its once-a-second ``tick`` is driven by recorded time,
and at the end the clock moves one deduplication window past the last event so every open
window is closed (its "N more times" alert printed). Alerts go to stdout (one line each, or
JSON lines with ``--json``); a summary goes to stderr.

The policy is the one given with ``--policy``; without it, the one the session was recorded
with (`record --policy`: its `session` start event carries it), else none (an empty
allowlist).

Exit status: 0 when the recording was read to its end (whatever it fired), 2 for a bad
recording, policy or rule file.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from roguewatch.cli import rules as rules_cli
from roguewatch.detect import ruleset as R
from roguewatch.detect.evaluator import Evaluator
from roguewatch.detect.proctable import ProcessTable
from roguewatch.outputs import alerts, render
from roguewatch.policy import policy as policy_mod
from roguewatch.policy.policy import StaticPolicy
from roguewatch.stream import recording

TICK_NS = 1_000_000_000
DEFAULT_DEDUP_WINDOW_S = 10.0


@dataclass
class ReplayStats:
    events: int = 0
    alerts: int = 0
    suppressed: int = 0
    malformed: int = 0
    by_category: dict[str, int] = field(default_factory=dict)
    by_rule: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        text = f"{self.events} events, {self.alerts} alerts"
        if self.by_category:
            cats = ", ".join(f"{c} {n}" for c, n in sorted(self.by_category.items()))
            text += f": by category {cats}"
        if self.suppressed:
            text += f"; {self.suppressed} duplicates folded into counts"
        if self.malformed:
            text += f"; {self.malformed} malformed events skipped"
        return text


class RecordedClock:
    """Recorded time: the newest event timestamp seen so far (never goes back)."""

    def __init__(self, start_ns: int) -> None:
        self.now = start_ns
        self._seen = False

    def __call__(self) -> int:
        return self.now

    def advance(self, ts: object) -> None:
        if isinstance(ts, int) and not isinstance(ts, bool) and ts > 0:
            if not self._seen or ts > self.now:
                self.now = ts
            self._seen = True


def run(
    events: Iterable[dict],
    rules: R.RuleSet,
    policy: StaticPolicy,
    emit: Callable[[dict], None],
    dedup_window_s: float = DEFAULT_DEDUP_WINDOW_S,
    start_ns: int = 0,
) -> ReplayStats:
    """Run ``events`` through a fresh evaluator, calling ``emit`` for each alert.

    A RecordingError raised by ``events`` propagates (the alerts before it were emitted).
    """
    stats = ReplayStats()

    def count(alert: dict) -> None:
        stats.by_category[alert["category"]] = stats.by_category.get(alert["category"], 0) + 1
        stats.by_rule[alert["rule"]] = stats.by_rule.get(alert["rule"], 0) + 1
        emit(alert)

    clock = RecordedClock(start_ns)
    evaluator = Evaluator(rules, ProcessTable(policy), count, dedup_window_s, clock=clock)
    last_tick: int | None = None
    try:
        for ev in events:
            before = clock.now
            clock.advance(ev.get("ts"))
            if last_tick is None:
                last_tick = clock.now
            elif clock.now - last_tick >= TICK_NS:
                last_tick = _tick_until(evaluator, clock, before, last_tick)
            try:
                evaluator.handle(ev)
            except (KeyError, TypeError, ValueError, AttributeError):
                stats.malformed += 1  # an event without the fields its type needs
    finally:
        # Close every open dedup window, as the live evaluator would once time passes.
        clock.now += evaluator.window_ns
        evaluator.tick()
        evaluator.flush_folds(everything=True)
        stats.events = evaluator.events
        stats.alerts = evaluator.alerts
        stats.suppressed = evaluator.suppressed
    return stats


def _tick_until(evaluator: Evaluator, clock: RecordedClock, before: int, last_tick: int) -> int:
    """Tick once per recorded second from ``last_tick`` up to ``clock.now``, as the live
    evaluator would have, so a window's summary alert carries the time it closed. Once every
    window open at ``before`` (the previous event's time) has closed, one tick at ``clock.now``
    stands for the rest of a long quiet gap. Returns the time of the last tick."""
    target = clock.now
    quiet_from = before + evaluator.window_ns + TICK_NS
    t = last_tick
    while target - t >= TICK_NS:
        t += TICK_NS
        if t > quiet_from:
            t = target
        clock.now = t
        evaluator.tick()
    clock.now = target
    return t


def _policy_chosen(
    events: Iterable[dict], given: bool, say: Callable[[str], None]
) -> Iterator[dict]:
    """The events, with the recorded session policy taken out when a policy was given (the
    given one is then every session's); otherwise ``say`` names the recorded one in use."""
    for ev in events:
        if ev.get("type") == "session" and ev.get("kind") == "start" and ev.get("policy"):
            if given:
                ev = {**ev, "policy": {}}
            else:
                say(f"roguewatch: replaying under the policy recorded with session "
                    f"{ev.get('session', 0):x}")  # fmt: skip
        yield ev


def _die(msg: str) -> int:
    print(f"roguewatch: {msg}", file=sys.stderr)
    return 2


def cmd_replay(args: argparse.Namespace) -> int:
    try:
        pol = policy_mod.load(args.policy) if args.policy else StaticPolicy()
    except policy_mod.PolicyError as exc:
        return _die(f"bad policy: {exc}")
    for d in rules_cli.rule_dirs(args.rules):
        if not os.path.isdir(d):
            return _die(f"no such rule directory: {d}")
    try:
        rules = rules_cli.load(args.rules)
    except R.RuleError as exc:
        return _die(f"bad rules: {exc}")
    try:
        header, events = recording.read(args.file)
    except recording.RecordingError as exc:
        return _die(str(exc))

    color = not args.json and sys.stdout.isatty()

    def emit(alert: dict) -> None:
        print(render.as_json(alert) if args.json else alerts.human(alert, color), flush=args.json)

    started = header.get("started")
    start_ns = started if isinstance(started, int) else 0
    try:
        events = _policy_chosen(
            events, bool(args.policy), lambda m: print(m, file=sys.stderr, flush=True)
        )
        stats = run(events, rules, pol, emit, args.dedup_window, start_ns)
    except recording.RecordingError as exc:
        return _die(f"{exc} (alerts above are from the events before it)")
    print(stats.summary(), file=sys.stderr)
    return 0


def add_arguments(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``replay FILE [--rules DIR] [--policy FILE] [--json]`` on the CLI."""
    p = subparsers.add_parser("replay", help="run the rules over a recording, offline")
    p.add_argument("file", metavar="FILE", help="a recording made by `roguewatch record`")
    p.add_argument(
        "--rules",
        action="append",
        metavar="DIR",
        help="local rule directory, after the default packs (repeatable; default "
        "/etc/roguewatch/rules.d when it exists)",
    )
    p.add_argument(
        "--policy",
        metavar="FILE",
        help="the session policy (egress allowlist...); default: the one recorded with it",
    )
    p.add_argument("--json", action="store_true", help="alerts as JSON lines")
    p.add_argument(
        "--dedup-window",
        type=float,
        default=DEFAULT_DEDUP_WINDOW_S,
        metavar="S",
        help="seconds of recorded time identical alerts are folded into one (default 10)",
    )
    p.set_defaults(fn=cmd_replay)
    return p


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="roguewatch")
    add_arguments(ap.add_subparsers(dest="cmd"))
    args = ap.parse_args(["replay", *(argv if argv is not None else sys.argv[1:])])
    return args.fn(args)


if __name__ == "__main__":
    raise SystemExit(main())
