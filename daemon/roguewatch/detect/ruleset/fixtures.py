"""Rule fixtures: events and contexts a rule must (or must not) match, as `rules test` and CI
run them.

Owns the fixture file format (``docs/rules.md``), building a static process view from a
case's context, and running a case against a rule set.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.abc import Traversable
from pathlib import Path
from typing import Any

import yaml

from roguewatch.core import yamlfile
from roguewatch.detect import fields as F
from roguewatch.detect.ruleset.loader import RuleFile, default_rules_dir, read_source, rule_files
from roguewatch.detect.ruleset.model import RuleError, RuleSet
from roguewatch.policy.policy import from_wire as policy_from_wire

EVENT_DEFAULTS: dict[str, Any] = {
    "ts": 1_700_000_000_000_000_000,
    "session": 7,
    "pid": 4242,
    "tid": 4242,
    "ppid": 4200,
    "uid": 1000,
    "gid": 1000,
    "comm": "python3",
    "exe": "/usr/bin/python3",
    "exec_id": "4242-1000",
    "pexec_id": "4200-900",
    "ret": 0,
    "flags": [],
}


@dataclass
class FixtureCase:
    """One case of a fixture file: events in order and the exact set of rules they fire."""

    name: str
    file: str
    line: int
    events: list[dict]
    expect: list[str]
    view: F.StaticProcessView


@dataclass
class FixtureResult:
    case: FixtureCase
    fired: list[str]
    rendered: list[str]

    @property
    def ok(self) -> bool:
        return sorted(set(self.fired)) == sorted(set(self.case.expect))

    def __str__(self) -> str:
        c = self.case
        return (
            f"{c.file}:{c.line}: case '{c.name}': expected {sorted(set(c.expect))}, "
            f"fired {sorted(set(self.fired))}"
        )


def _view(spec: Mapping[str, Any]) -> F.StaticProcessView:
    return F.StaticProcessView(
        policy=policy_from_wire(spec.get("policy") or {}),
        default_ancestors=list(spec.get("ancestors", [])),
        processes={int(k): int(v) for k, v in (spec.get("processes") or {}).items()},
        venvs=tuple(spec.get("venvs", ())),
        fork_rates={int(k): float(v) for k, v in (spec.get("fork_rates") or {}).items()},
        live={int(k): int(v) for k, v in (spec.get("live") or {}).items()},
        env_paths={int(k): list(v) for k, v in (spec.get("env_paths") or {}).items()},
        session_cgroups={int(k): str(v) for k, v in (spec.get("session_cgroups") or {}).items()},
        workspaces={int(k): str(v) for k, v in (spec.get("workspaces") or {}).items()},
    )


class _Loader(yaml.SafeLoader):
    """YAML with the 1.2 spellings of octal and hexadecimal integers (``0o644``, ``0x20``),
    as the rules' values allow: PyYAML's 1.1 resolver would read ``0o1101`` as a string, and
    a flag test on a string matches nothing (a fixture that could not fail)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^[-+]?0[oO][0-7_]+$"), list("-+0")
)
_Loader.add_constructor(
    "tag:yaml.org,2002:int",
    lambda loader, node: (
        int(v.replace("_", ""), 8 if v.lstrip("+-")[1:2] in "oO" else 0)
        if (v := loader.construct_scalar(node)).lstrip("+-")[:2].lower() == "0o"
        else yaml.SafeLoader.construct_yaml_int(loader, node)
    ),
)


def load_fixtures(path: RuleFile) -> list[FixtureCase]:
    """Cases of a fixture file (format in docs/rules.md)."""
    name, text = read_source(path)
    try:
        root = yaml.compose(text, Loader=_Loader)
        data = yaml.load(text, Loader=_Loader) or {}
    except yaml.YAMLError as e:
        line, column, detail = yamlfile.position(e)
        raise RuleError(f"expected valid YAML: {detail}", name, line, column) from None
    if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
        raise RuleError("expected a mapping with 'cases' (a list)", name, 1, 1)
    case_nodes = next(v for k, v in root.value if k.value == "cases").value
    defaults = {**EVENT_DEFAULTS, **(data.get("defaults") or {})}
    base_ctx = data.get("context") or {}
    out = []
    for node, case in zip(case_nodes, data["cases"], strict=True):
        line = node.start_mark.line + 1
        if not isinstance(case, dict) or "events" not in case or "expect" not in case:
            raise RuleError("expected a case with 'name', 'events' and 'expect'", name, line, 1)
        evs = []
        for ev in case["events"]:
            merged = {**defaults, **(case.get("defaults") or {}), **ev}
            evs.append(merged)
        ctx = {**base_ctx, **(case.get("context") or {})}
        out.append(
            FixtureCase(
                str(case.get("name", f"case at line {line}")),
                name,
                line,
                evs,
                list(case["expect"] or []),
                _view(ctx),
            )
        )
    return out


def run_fixture(ruleset: RuleSet, case: FixtureCase) -> FixtureResult:
    fired: list[str] = []
    rendered: list[str] = []
    for ev in case.events:
        for rule in ruleset.match(ev, case.view):
            fired.append(rule.name)
            rendered.append(rule.render(ev, case.view))
    return FixtureResult(case, fired, rendered)


def default_fixture_files() -> list[Traversable | Path]:
    return rule_files(default_rules_dir() / "fixtures")
