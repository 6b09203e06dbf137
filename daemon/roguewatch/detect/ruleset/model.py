"""The compiled rule set: rules, their exceptions and output templates, indexed by event type.

Owns what a loaded rule *is* (:class:`Rule`: name, condition matcher, exceptions, severity,
category, action, tags, its output template) and :class:`RuleSet`: rules indexed by event
type behind each type's prefilter, enabling and disabling by name, glob, tag or category.
Built only by ``loader``; it never reads files.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from roguewatch.detect import condition as C
from roguewatch.detect import fields as F
from roguewatch.detect.prefilter import TypeFilter

SEVERITIES = ("info", "low", "medium", "high", "critical")
CATEGORIES = ("egress", "persistence", "shutdown_evasion", "oversight_tampering", "monitor")
ACTIONS = ("alert", "kill_process", "kill_tree", "kill_session", "freeze", "restore")
# How alerts of a rule are folded: `event` (identical events within the dedup window, for
# rules without an action), `session` (every match in a session within FOLD_NS is one alert
# with the count: a fork burst, the survivors of a session's end).
FOLDS = ("event", "session")


class RuleError(Exception):
    """A rule file problem. ``str()`` is ``file:line:column: KIND 'NAME': message``."""

    def __init__(
        self,
        message: str,
        file: str | None = None,
        line: int | None = None,
        column: int | None = None,
        kind: str | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message, self.file, self.line, self.column = message, file, line, column
        self.kind, self.name = kind, name

    def __str__(self) -> str:
        where = ""
        if self.file is not None:
            where = f"{self.file}:{self.line or 1}:{self.column or 1}: "
        what = f"{self.kind} '{self.name}': " if self.kind else ""
        return f"{where}{what}{self.message}"


_FIELD_REF = re.compile(r"%%|%([a-z][a-z0-9_]*(?:\.[a-z0-9_]+)+(?:\[\d+\])?)")


@dataclass(frozen=True)
class RuleException:
    """A named exception: the rule does not fire when, for any row of ``values``, every
    ``fields[i] comps[i] values[row][i]`` holds."""

    name: str
    fields: tuple[str, ...]
    comps: tuple[str, ...]
    values: tuple[tuple[Any, ...], ...]


@dataclass(frozen=True)
class Rule:
    name: str
    desc: str
    condition: str
    output: str
    severity: str
    category: str
    tags: tuple[str, ...]
    action: str
    enabled: bool
    restore: bool  # after the action: the file of the event back to its baseline (enforce)
    fold: str  # `event` or `session` (FOLDS)
    exceptions: tuple[RuleException, ...]
    source: str  # file:line of the first definition
    compiled: C.CompiledCondition = field(repr=False, compare=False)
    template: tuple[str | F.ResolvedField, ...] = field(repr=False, compare=False)

    @property
    def event_types(self) -> frozenset[str] | None:
        return self.compiled.event_types

    def matches(self, event: dict, ctx: Any) -> bool:
        """True when the condition holds and no exception does."""
        try:
            return self.compiled.match(event, ctx)
        except (TypeError, AttributeError, ValueError, KeyError, IndexError):
            return False  # a malformed event (a field of the wrong type) matches nothing

    def render(self, event: dict, ctx: Any) -> str:
        """The output template with every ``%field`` replaced by its value."""
        out = []
        for part in self.template:
            if isinstance(part, str):
                out.append(part)
                continue
            try:
                v = part.extract(event, ctx)
            except (TypeError, AttributeError, ValueError, KeyError, IndexError):
                v = None
            out.append(_render_value(v))
        return "".join(out)

    def explain(self) -> str:
        """The condition with macros and lists expanded (exceptions included)."""
        return C.to_text(self.compiled.tree, expand_macros=True)

    @property
    def fields_used(self) -> frozenset[str]:
        return self.compiled.fields


def _render_value(v: Any) -> str:
    if v is None:
        return "<NA>"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.2f}"
    if isinstance(v, list | tuple):
        return " ".join(_render_value(x) for x in v)
    return str(v)


class RuleSet:
    """The compiled, immutable set of rules; ``rules_for(type)`` gives the enabled rules an
    event of that type can match, in definition order. ``match`` runs them behind one
    prefilter per type (``roguewatch.detect.prefilter``): same result, far fewer matchers run."""

    def __init__(
        self,
        rules: Sequence[Rule],
        lists: Mapping[str, tuple[str, ...]] | None = None,
        macros: Mapping[str, str] | None = None,
        files: Sequence[str] = (),
    ) -> None:
        self.rules: tuple[Rule, ...] = tuple(rules)
        self.lists = dict(lists or {})
        self.macros = dict(macros or {})
        self.files = tuple(files)
        self._by_name = {r.name: r for r in self.rules}
        enabled = [r for r in self.rules if r.enabled]
        self._any: tuple[Rule, ...] = tuple(r for r in enabled if r.event_types is None)
        self._any_matchers = tuple((r, r.compiled.match) for r in self._any)
        index: dict[str, list[Rule]] = {}
        filters: dict[str, TypeFilter[Rule]] = {}
        for t in sorted(F.EVENT_TYPE_NAMES):
            index[t] = []
            entries = []
            for r in enabled:
                if r.event_types is not None and t not in r.event_types:
                    continue
                m = r.compiled.for_event_type(t)
                if m is None:  # its condition cannot hold for this type
                    continue
                index[t].append(r)
                entries.append((r, m, C.specialize(r.compiled.tree, t)))
            filters[t] = TypeFilter(entries)
        self._index = {t: tuple(rs) for t, rs in index.items()}
        # Per event type, the rules gated by the values of the keys they test (the path...).
        self._filters = filters
        self._any_filter: TypeFilter[Rule] = TypeFilter(
            [(r, m, True) for r, m in self._any_matchers]
        )
        # match() for each event type: the evaluator calls these directly, a call less.
        self.match_by_type: Mapping[str, Callable[[dict, Any], list[Rule]]] = {
            t: f.match for t, f in filters.items()
        }

    def __iter__(self) -> Iterator[Rule]:
        return iter(self.rules)

    def __len__(self) -> int:
        return len(self.rules)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def get(self, name: str) -> Rule:
        return self._by_name[name]

    def rules_for(self, event_type: str) -> tuple[Rule, ...]:
        """Enabled rules that can match an event of ``event_type`` (a tuple, do not copy)."""
        return self._index.get(event_type, self._any)

    def match(self, event: dict, ctx: Any) -> list[Rule]:
        """Every enabled rule the event matches, in definition order (a rule whose matcher
        raises on a malformed event does not match)."""
        return self.match_by_type.get(event.get("type"), self._any_filter.match)(event, ctx)

    def select(self, enable: Iterable[str] = (), disable: Iterable[str] = ()) -> RuleSet:
        """A copy with rules disabled, then enabled, by pattern: ``name``, a glob
        (``persistence_*``), ``tag:T1053`` (also matches ``T1053.003``; globs allowed) or
        ``category:egress``. A pattern that matches no rule is a RuleError."""
        state = {r.name: r.enabled for r in self.rules}
        for value, patterns in ((False, disable), (True, enable)):
            for pat in patterns:
                hits = [r.name for r in self.rules if _selects(pat, r)]
                if not hits:
                    raise RuleError(f"no rule matches {pat!r}", kind="select", name=pat)
                for n in hits:
                    state[n] = value
        rules = [
            r if r.enabled == state[r.name] else dataclasses.replace(r, enabled=state[r.name])
            for r in self.rules
        ]
        return RuleSet(rules, self.lists, self.macros, self.files)


def _selects(pattern: str, rule: Rule) -> bool:
    if pattern.startswith("tag:"):
        p = pattern[4:]
        return any(
            fnmatch.fnmatchcase(t, p) or t.startswith(p + ".") or fnmatch.fnmatchcase(t, p + ".*")
            for t in rule.tags
        )
    if pattern.startswith("category:"):
        return fnmatch.fnmatchcase(rule.category, pattern[9:])
    return fnmatch.fnmatchcase(rule.name, pattern)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------
