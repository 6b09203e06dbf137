"""`roguewatch rules lint|list|explain|test`: the rule tuning workflow.

Glue over :mod:`roguewatch.detect.ruleset`: load the default packs plus local directories, and
report on them for a person (or, with ``--json``, for a script). A rule file problem is one line,
``file:line:column: rule 'NAME': what was expected``, never a traceback.

Exit status: 0 fine, 1 lint or fixture failures, 2 usage errors (unknown rule, unreadable
directory).
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

from roguewatch.core.paths import RULES_DIR as LOCAL_RULES_DIR
from roguewatch.detect import fields as F
from roguewatch.detect import ruleset as R

# The local rule directory read when no directory is named (tests point it elsewhere).


def _err(msg: str, code: int) -> int:
    print(f"roguewatch: {msg}", file=sys.stderr)
    return code


def rule_dirs(named: Sequence[str] | None) -> list[str]:
    """The directories named, or the local rule directory when it exists and none is."""
    if named:
        return list(named)
    return [LOCAL_RULES_DIR] if os.path.isdir(LOCAL_RULES_DIR) else []


def load(named: Sequence[str] | None) -> R.RuleSet:
    """Default packs plus ``rule_dirs(named)``. RuleError names a bad file."""
    return R.load_rules(rule_dirs(named))


def _load_or_report(named: Sequence[str] | None) -> tuple[R.RuleSet | None, int]:
    """The rule set, or None and the exit status: 1 for a bad rule file, 2 for a bad path."""
    for d in rule_dirs(named):
        if not os.path.isdir(d):
            return None, _err(f"no such rule directory: {d}", 2)
    try:
        return load(named), 0
    except R.RuleError as exc:
        print(str(exc), file=sys.stderr)
        return None, 1
    except OSError as exc:
        return None, _err(f"cannot read rules: {exc}", 2)


# ---------------------------------------------------------------------------------------------
# lint


def cmd_lint(args: argparse.Namespace) -> int:
    rs, rc = _load_or_report(args.dirs)
    if rs is None:
        return rc
    print(f"{len(rs)} rules, {len(rs.lists)} lists, {len(rs.macros)} macros: ok")
    return 0


# ---------------------------------------------------------------------------------------------
# list


def _rule_record(rule: R.Rule) -> dict:
    return {
        "name": rule.name,
        "category": rule.category,
        "severity": rule.severity,
        "action": rule.action,
        "enabled": rule.enabled,
        "source": rule.source,
        "tags": list(rule.tags),
        "exceptions": [e.name for e in rule.exceptions],
        "desc": rule.desc,
    }


def cmd_list(args: argparse.Namespace) -> int:
    rs, rc = _load_or_report(args.rules)
    if rs is None:
        return rc
    rows = [_rule_record(r) for r in rs]
    if args.json:
        for row in rows:
            print(json.dumps(row, separators=(",", ":")))
        return 0
    head = ("NAME", "CATEGORY", "SEVERITY", "ACTION", "ENABLED", "SOURCE")
    table = [head] + [
        (
            r["name"],
            r["category"],
            r["severity"],
            r["action"],
            "yes" if r["enabled"] else "no",
            r["source"],
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(head) - 1)]
    for row in table:
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]))
    disabled = sum(1 for r in rows if not r["enabled"])
    print(f"{len(rows)} rules ({disabled} disabled)", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------------
# explain


def indexed_event_types(rs: R.RuleSet, rule: R.Rule) -> list[str]:
    """The event types the rule set runs ``rule`` for (as its index would, even if disabled)."""
    types = rule.event_types
    return [
        t
        for t in sorted(F.EVENT_TYPE_NAMES)
        if (types is None or t in types) and rule.compiled.for_event_type(t) is not None
    ]


def _field_doc(name: str) -> str:
    rf = F.resolve(name)
    return rf.field.doc if rf is not None else "(unknown field)"


def _wrap(text: str, indent: str) -> list[str]:
    return textwrap.wrap(
        " ".join(text.split()), 100, initial_indent=indent, subsequent_indent=indent
    ) or [indent]


def explain_text(rs: R.RuleSet, rule: R.Rule) -> str:
    wrap = textwrap.TextWrapper(width=100, initial_indent="  ", subsequent_indent="    ")
    out = [
        f"rule {rule.name}  ({rule.source})",
        *_wrap(rule.desc, "  "),
        "",
        f"category {rule.category}, severity {rule.severity}, action {rule.action}, "
        f"{'enabled' if rule.enabled else 'DISABLED'}",
        f"tags: {', '.join(rule.tags) if rule.tags else '(none)'}",
        "",
        "condition as written:",
        *(f"  {line}" for line in rule.condition.strip().splitlines()),
        "",
        "condition with macros and lists expanded (exceptions included):",
        *wrap.wrap(rule.explain()),
        "",
        "fields used:",
    ]
    names = sorted(rule.fields_used)
    width = max((len(n) for n in names), default=0)
    out += [f"  {n.ljust(width)}  {_field_doc(n)}" for n in names]
    out += ["", "exceptions:"]
    if not rule.exceptions:
        out.append("  (none)")
    for ex in rule.exceptions:
        tests = ", ".join(f"{f} {c}" for f, c in zip(ex.fields, ex.comps, strict=False))
        out.append(f"  {ex.name}: {tests}")
        if not ex.values:
            out.append("    (no values: never applies)")
        for row in ex.values:
            out.append(f"    {', '.join(json.dumps(v) for v in row)}")
    types = indexed_event_types(rs, rule)
    out += ["", f"event types: {', '.join(types) if types else '(none: the rule never matches)'}"]
    out += ["", "output:", *_wrap(rule.output, "  ")]
    return "\n".join(out)


def suggest(rs: R.RuleSet, name: str) -> str | None:
    near = difflib.get_close_matches(name, [r.name for r in rs], n=1, cutoff=0.5)
    return near[0] if near else None


def cmd_explain(args: argparse.Namespace) -> int:
    rs, rc = _load_or_report(args.rules)
    if rs is None:
        return rc
    if args.rule not in rs:
        near = suggest(rs, args.rule)
        hint = f" (did you mean {near}?)" if near else ""
        return _err(f"no rule named {args.rule}{hint}", 2)
    rule = rs.get(args.rule)
    if args.json:
        rec = _rule_record(rule)
        rec.update(
            condition=rule.condition,
            expanded=rule.explain(),
            fields={n: _field_doc(n) for n in sorted(rule.fields_used)},
            exceptions=[
                {
                    "name": e.name,
                    "fields": list(e.fields),
                    "comps": list(e.comps),
                    "values": [list(v) for v in e.values],
                }
                for e in rule.exceptions
            ],
            event_types=indexed_event_types(rs, rule),
            output=rule.output,
        )
        print(json.dumps(rec, indent=2))
        return 0
    print(explain_text(rs, rule))
    return 0


# ---------------------------------------------------------------------------------------------
# test


def fixture_files(paths: Sequence[str]) -> list:
    """Fixture files: each path a ``*.yaml`` file or a directory of them."""
    out: list = []
    for p in paths:
        if os.path.isdir(p):
            out += R.rule_files(p)
        elif os.path.isfile(p):
            out.append(Path(p))
        else:
            raise FileNotFoundError(p)
    return out


def cmd_test(args: argparse.Namespace) -> int:
    rs, rc = _load_or_report(args.rules)
    if rs is None:
        return rc
    try:
        files = fixture_files(args.dirs) if args.dirs else R.default_fixture_files()
    except FileNotFoundError as exc:
        return _err(f"no such fixture file or directory: {exc}", 2)
    if not files:
        return _err(f"no fixture files (*.yaml) in {', '.join(args.dirs)}", 2)
    cases = failed = 0
    for f in files:
        try:
            file_cases = R.load_fixtures(f)
        except R.RuleError as exc:
            print(str(exc))
            failed += 1
            continue
        for case in file_cases:
            cases += 1
            result = R.run_fixture(rs, case)
            unknown = sorted({n for n in case.expect if n not in rs})
            if result.ok and not unknown:
                if args.verbose:
                    print(f"ok   {case.file}:{case.line}: case '{case.name}'")
                continue
            failed += 1
            line = f"FAIL {result}"
            if unknown:
                line += f" (no such rule: {', '.join(unknown)})"
            print(line)
    print(f"{cases} cases, {failed} failed")
    return 1 if failed else 0


# ---------------------------------------------------------------------------------------------
# argument parsing


def _add_rules_opt(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--rules",
        action="append",
        metavar="DIR",
        help=f"local rule directory, after the default packs (repeatable; default "
        f"{LOCAL_RULES_DIR} when it exists)",
    )


def add_arguments(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``rules lint|list|explain|test`` on the CLI's sub-parsers."""
    top = subparsers.add_parser("rules", help="lint, list, explain and test detection rules")
    sub = top.add_subparsers(dest="rules_cmd", metavar="lint|list|explain|test")
    top.set_defaults(fn=lambda _a: (top.print_help(), 2)[1])

    p = sub.add_parser("lint", help="load the default packs and DIRs, report the first error")
    p.add_argument(
        "dirs",
        nargs="*",
        metavar="DIR",
        help=f"rule directories (default {LOCAL_RULES_DIR} when it exists)",
    )
    p.set_defaults(fn=cmd_lint)

    p = sub.add_parser("list", help="every rule: category, severity, action, enabled, source")
    _add_rules_opt(p)
    p.add_argument("--json", action="store_true", help="one JSON object per rule")
    p.set_defaults(fn=cmd_list)

    p = sub.add_parser("explain", help="a rule's expanded condition, fields and exceptions")
    p.add_argument("rule", metavar="RULE")
    _add_rules_opt(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_explain)

    p = sub.add_parser("test", help="run fixture files (default: the packaged fixtures)")
    p.add_argument("dirs", nargs="*", metavar="DIR", help="fixture directories or files")
    _add_rules_opt(p)
    p.add_argument("--verbose", "-v", action="store_true", help="also list passing cases")
    p.set_defaults(fn=cmd_test)
    return top


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="roguewatch")
    add_arguments(ap.add_subparsers(dest="cmd"))
    args = ap.parse_args(["rules", *(argv if argv is not None else sys.argv[1:])])
    return args.fn(args)


if __name__ == "__main__":
    raise SystemExit(main())
