"""Rule files: loading, validation, overrides, selection, and the compiled rule set.

This module owns the rule file format (YAML lists of ``- list:``, ``- macro:`` and ``- rule:``
items in Falco's style, with ``append``/``override`` so later files extend earlier ones), its
validation with ``file:line:column`` errors, rule exceptions, output templates, the
:class:`RuleSet` that indexes rules by event type, enabling and disabling by name, glob, tag
or category, and the rule fixtures that ``rules test`` and CI run.

It must not evaluate streams, deduplicate or act: that is the evaluator's and enforcer's job.
"""

from __future__ import annotations

import bisect
import dataclasses
import fnmatch
import importlib.resources
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.abc import Traversable
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from roguewatch.detect import condition as C
from roguewatch.detect import fields as F
from roguewatch.detect.prefilter import TypeFilter
from roguewatch.policy.policy import from_wire as policy_from_wire

SEVERITIES = ("info", "low", "medium", "high", "critical")
CATEGORIES = ("egress", "persistence", "shutdown_evasion", "oversight_tampering", "monitor")
ACTIONS = ("alert", "kill_process", "kill_tree", "kill_session", "freeze", "restore")

_RULE_KEYS = {
    "rule", "desc", "condition", "output", "severity", "category", "tags", "action", "enabled",
    "exceptions", "append", "override",
}  # fmt: skip
_RULE_REQUIRED = ("desc", "condition", "output", "severity", "category")
_RULE_APPENDABLE = {"condition", "exceptions", "tags"}
_RULE_REPLACEABLE = _RULE_KEYS - {"rule", "append", "override"}
_EXC_KEYS = {"name", "fields", "comps", "values"}


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


# ---------------------------------------------------------------------------------------------
# Source positions
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """One rule file's text, for turning YAML marks and condition offsets into line:column."""

    name: str
    text: str
    line_starts: tuple[int, ...]

    @classmethod
    def of(cls, name: str, text: str) -> Source:
        starts = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n"]
        return cls(name, text, tuple(starts))

    def position(self, index: int) -> tuple[int, int]:
        line = bisect.bisect_right(self.line_starts, index) - 1
        return line + 1, index - self.line_starts[line] + 1


@dataclass(frozen=True)
class Loc:
    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


def _loc(src: Source, node: Node) -> Loc:
    return Loc(src.name, node.start_mark.line + 1, node.start_mark.column + 1)


@dataclass(frozen=True)
class Segment:
    """A piece of condition text and the YAML scalar it came from."""

    text: str
    src: Source
    node: ScalarNode

    def locate(self, line: int, column: int) -> Loc:
        """File position of ``line:column`` in ``text``, by aligning non-blank characters."""
        lines = self.text.split("\n")
        line = min(max(line, 1), len(lines))
        offset = sum(len(x) + 1 for x in lines[: line - 1]) + column - 1
        k = sum(1 for ch in self.text[:offset] if not ch.isspace())
        raw_start = self.node.start_mark.index
        raw = self.src.text[raw_start : self.node.end_mark.index]
        skip = 0
        style = self.node.style
        if style in ("|", ">"):
            skip = raw.find("\n") + 1
        elif style in ("'", '"'):
            skip = 1
        seen, last = 0, -1
        for i in range(skip, len(raw)):
            if not raw[i].isspace():
                if seen == k:
                    return Loc(self.src.name, *self.src.position(raw_start + i))
                seen, last = seen + 1, i
        if last >= 0:  # past the last character: the end of the condition
            return Loc(self.src.name, *self.src.position(raw_start + last + 1))
        return _loc(self.src, self.node)


def _join(segments: Sequence[Segment]) -> str:
    return "\n".join(s.text.rstrip("\n") for s in segments)


def _locate(segments: Sequence[Segment], line: int, column: int) -> Loc:
    """Map a position in ``_join(segments)`` back to a file position."""
    for seg in segments:
        n = seg.text.rstrip("\n").count("\n") + 1
        if line <= n:
            return seg.locate(line, column)
        line -= n
    return segments[-1].locate(10**9, 1)


# ---------------------------------------------------------------------------------------------
# Definitions as read from files
# ---------------------------------------------------------------------------------------------


@dataclass
class _ListDef:
    name: str
    items: list[str]
    loc: Loc


@dataclass
class _MacroDef:
    name: str
    segments: list[Segment]
    loc: Loc


@dataclass
class _ExceptionDef:
    name: str
    fields: list[str]
    comps: list[str]
    values: list[list[Any]]
    loc: Loc


@dataclass
class _RuleDef:
    name: str
    loc: Loc
    segments: list[Segment]
    props: dict[str, Any]
    prop_locs: dict[str, Loc]
    exceptions: list[_ExceptionDef]


# ---------------------------------------------------------------------------------------------
# The compiled rules
# ---------------------------------------------------------------------------------------------

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

_constructor = yaml.constructor.SafeConstructor()


class _Loader:
    """Reads rule files in order, applying appends and overrides, then compiles."""

    def __init__(self) -> None:
        self.lists: dict[str, _ListDef] = {}
        self.macros: dict[str, _MacroDef] = {}
        self.rules: dict[str, _RuleDef] = {}
        self.files: list[str] = []

    # -- reading ---------------------------------------------------------------------------

    def add(self, name: str, text: str) -> None:
        src = Source.of(name, text)
        self.files.append(name)
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            detail = e.problem or "syntax error"
            if e.context:
                detail += f" ({e.context})"
            raise RuleError(
                f"expected valid YAML: {detail}",
                name,
                mark.line + 1 if mark else 1,
                mark.column + 1 if mark else 1,
            ) from None
        except yaml.YAMLError as e:
            raise RuleError(f"expected valid YAML: {e}", name, 1, 1) from None
        if root is None:
            return
        if not isinstance(root, SequenceNode):
            raise self._err(src, root, "expected a list of items (- list:, - macro:, - rule:)")
        for item in root.value:
            if not isinstance(item, MappingNode):
                raise self._err(src, item, "expected an item (- list:, - macro:, - rule:)")
            keys = self._mapping(src, item, None, None)
            kinds = [k for k in ("list", "macro", "rule") if k in keys]
            if len(kinds) != 1:
                raise self._err(
                    src, item, "expected exactly one of the keys 'list', 'macro' or 'rule'"
                )
            kind = kinds[0]
            name = self._scalar(src, keys[kind][1], str, kind, None, kind)
            if not name:
                raise self._err(src, keys[kind][1], f"expected a {kind} name", kind, name)
            getattr(self, f"_{kind}")(src, item, name, keys)

    def _err(
        self, src: Source, node: Node, msg: str, kind: str | None = None, name: str | None = None
    ) -> RuleError:
        loc = _loc(src, node)
        return RuleError(msg, loc.file, loc.line, loc.column, kind, name)

    def _mapping(
        self, src: Source, node: Node, kind: str | None, name: str | None
    ) -> dict[str, tuple[Node, Node]]:
        if not isinstance(node, MappingNode):
            raise self._err(src, node, "expected a mapping", kind, name)
        out: dict[str, tuple[Node, Node]] = {}
        for k, v in node.value:
            if not isinstance(k, ScalarNode):
                raise self._err(src, k, "expected a plain key", kind, name)
            if k.value in out:
                raise self._err(src, k, f"duplicate key '{k.value}'", kind, name)
            out[k.value] = (k, v)
        return out

    def _scalar(
        self, src: Source, node: Node, typ: type, key: str, name: str | None, kind: str
    ) -> Any:
        if not isinstance(node, ScalarNode):
            raise self._err(src, node, f"expected a {typ.__name__} for '{key}'", kind, name)
        if node.tag.endswith(":value"):  # a bare "=" (YAML's value key tag)
            value: Any = node.value
        else:
            try:
                value = _constructor.construct_object(node, deep=True)
            except yaml.YAMLError as e:
                raise self._err(src, node, f"expected a {typ.__name__}: {e}", kind, name) from None
        if typ is str and isinstance(value, int | float) and not isinstance(value, bool):
            value = node.value
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            raise self._err(
                src, node, f"expected a {typ.__name__} for '{key}', got {node.value!r}", kind, name
            )
        return value

    def _str_list(
        self, src: Source, node: Node, key: str, name: str, kind: str, allow_scalar: bool = False
    ) -> list[str]:
        if allow_scalar and isinstance(node, ScalarNode):
            return [self._scalar(src, node, str, key, name, kind)]
        if isinstance(node, ScalarNode) and node.tag.endswith(":null"):
            return []
        if not isinstance(node, SequenceNode):
            raise self._err(src, node, f"expected a list for '{key}'", kind, name)
        return [self._scalar(src, x, str, key, name, kind) for x in node.value]

    def _check_keys(
        self,
        src: Source,
        keys: Mapping[str, tuple[Node, Node]],
        allowed: set[str],
        kind: str,
        name: str,
    ) -> None:
        for k, (knode, _) in keys.items():
            if k not in allowed:
                near = C._near(k, allowed)
                hint = f" (did you mean '{near}'?)" if near else ""
                raise self._err(
                    src,
                    knode,
                    f"unknown key '{k}'{hint}; expected one of {', '.join(sorted(allowed))}",
                    kind,
                    name,
                )

    def _mode(
        self, src: Source, keys: Mapping[str, tuple[Node, Node]], kind: str, name: str
    ) -> dict[str, str]:
        """``{key: 'append'|'replace'}`` from ``append: true`` or ``override: {...}``."""
        append = (
            self._scalar(src, keys["append"][1], bool, "append", name, kind)
            if "append" in keys
            else False
        )
        if "override" not in keys:
            return {"*": "append"} if append else {}
        if append:
            raise self._err(
                src, keys["override"][0], "expected either 'append' or 'override', not both",
                kind, name,
            )  # fmt: skip
        onode = keys["override"][1]
        modes = {}
        for k, (_knode, vnode) in self._mapping(src, onode, kind, name).items():
            v = self._scalar(src, vnode, str, f"override.{k}", name, kind)
            if v not in ("append", "replace"):
                raise self._err(
                    src, vnode, f"expected 'append' or 'replace' for override.{k}", kind, name
                )
            modes[k] = v
        return modes

    def _list(self, src: Source, item: Node, name: str, keys: dict) -> None:
        self._check_keys(src, keys, {"list", "items", "append", "override"}, "list", name)
        mode = self._mode(src, keys, "list", name)
        if "items" not in keys:
            raise self._err(src, item, "expected the key 'items'", "list", name)
        items = self._str_list(src, keys["items"][1], "items", name, "list")
        how = mode.get("items", mode.get("*", "define"))
        bad = set(mode) - {"items", "*"}
        if bad:
            raise self._err(
                src, keys["override"][1], f"cannot override {sorted(bad)}", "list", name
            )
        if how != "define" and name not in self.lists:
            raise self._err(src, item, f"no earlier list '{name}' to {how}", "list", name)
        if how == "append":
            self.lists[name].items.extend(items)
        else:
            self.lists[name] = _ListDef(name, items, _loc(src, item))

    def _macro(self, src: Source, item: Node, name: str, keys: dict) -> None:
        self._check_keys(src, keys, {"macro", "condition", "append", "override"}, "macro", name)
        mode = self._mode(src, keys, "macro", name)
        if "condition" not in keys:
            raise self._err(src, item, "expected the key 'condition'", "macro", name)
        cnode = keys["condition"][1]
        text = self._scalar(src, cnode, str, "condition", name, "macro")
        seg = Segment(text, src, cnode)
        how = mode.get("condition", mode.get("*", "define"))
        if how != "define" and name not in self.macros:
            raise self._err(src, item, f"no earlier macro '{name}' to {how}", "macro", name)
        if how == "append":
            self.macros[name].segments.append(seg)
        else:
            self.macros[name] = _MacroDef(name, [seg], _loc(src, item))

    def _rule(self, src: Source, item: Node, name: str, keys: dict) -> None:
        self._check_keys(src, keys, _RULE_KEYS, "rule", name)
        mode = self._mode(src, keys, "rule", name)
        props: dict[str, Any] = {}
        prop_locs: dict[str, Loc] = {}
        segments: list[Segment] = []
        exceptions: list[_ExceptionDef] = []
        for k, (_knode, vnode) in keys.items():
            if k in ("rule", "append", "override"):
                continue
            prop_locs[k] = _loc(src, vnode)
            if k == "condition":
                text = self._scalar(src, vnode, str, k, name, "rule")
                segments.append(Segment(text, src, vnode))
            elif k in ("desc", "output"):
                props[k] = self._scalar(src, vnode, str, k, name, "rule").strip()
            elif k in ("severity", "category", "action"):
                v = self._scalar(src, vnode, str, k, name, "rule")
                allowed = {"severity": SEVERITIES, "category": CATEGORIES, "action": ACTIONS}[k]
                if v not in allowed:
                    raise self._err(
                        src, vnode, f"expected {k} one of {', '.join(allowed)}, got {v!r}",
                        "rule", name,
                    )  # fmt: skip
                props[k] = v
            elif k == "enabled":
                props[k] = self._scalar(src, vnode, bool, k, name, "rule")
            elif k == "tags":
                props[k] = self._str_list(src, vnode, k, name, "rule")
            elif k == "exceptions":
                exceptions = self._exceptions(src, vnode, name)
        if "output" in props:
            _template(props["output"], src, keys["output"][1], name)
        present = {k for k in keys if k not in ("rule", "append", "override")}

        existing = self.rules.get(name)
        if not mode:
            if existing is not None and present <= {"enabled"}:
                existing.props.update(props)  # the "enable/disable only" form
                return
            if present == {"enabled"}:
                raise self._err(
                    src, item, f"no earlier rule '{name}' to enable or disable", "rule", name
                )
            for k in _RULE_REQUIRED:
                if k not in present:
                    raise self._err(src, item, f"expected the key '{k}'", "rule", name)
            props.setdefault("tags", [])
            props.setdefault("action", "alert")
            props.setdefault("enabled", True)
            d = _RuleDef(name, _loc(src, item), segments, props, prop_locs, exceptions)
            if existing is not None:
                d.loc = existing.loc  # a redefinition keeps its place and first location
            self.rules[name] = d
            return

        if existing is None:
            raise self._err(
                src, item, f"no earlier rule '{name}' to append to or override", "rule", name
            )
        if "*" in mode:  # append: true
            mode = {k: "append" for k in present}
        for k in present:
            if k not in mode:
                raise self._err(
                    src, keys[k][0], f"expected '{k}' to be listed in 'override'", "rule", name
                )
        for k, how in mode.items():
            if k not in present:
                raise self._err(
                    src, keys["override"][1], f"override of '{k}' expects the key '{k}'",
                    "rule", name,
                )  # fmt: skip
            if how == "append" and k not in _RULE_APPENDABLE:
                raise self._err(
                    src, keys[k][0],
                    f"'{k}' cannot be appended to; expected override: {{{k}: replace}}",
                    "rule", name,
                )  # fmt: skip
            if k not in _RULE_REPLACEABLE:
                raise self._err(src, keys[k][0], f"'{k}' cannot be overridden", "rule", name)
            if k == "condition":
                existing.segments = [*existing.segments, *segments] if how == "append" else segments
            elif k == "exceptions":
                if how == "replace":
                    existing.exceptions = exceptions
                else:
                    self._append_exceptions(existing, exceptions, src, keys[k][1])
            elif k == "tags" and how == "append":
                existing.props["tags"] = [*existing.props.get("tags", []), *props["tags"]]
            else:
                existing.props[k] = props[k]
            existing.prop_locs[k] = prop_locs[k]

    def _append_exceptions(
        self, rule: _RuleDef, new: list[_ExceptionDef], src: Source, node: Node
    ) -> None:
        by_name = {e.name: e for e in rule.exceptions}
        for e in new:
            old = by_name.get(e.name)
            if old is None:
                if not e.fields:
                    raise self._err(
                        src, node, f"exception '{e.name}' is new here: expected its 'fields'",
                        "rule", rule.name,
                    )  # fmt: skip
                rule.exceptions.append(e)
                continue
            if e.fields and e.fields != old.fields:
                raise self._err(
                    src, node, f"exception '{e.name}' has fields {old.fields}; expected the same",
                    "rule", rule.name,
                )  # fmt: skip
            for row in e.values:
                if len(row) != len(old.fields):
                    raise self._err(
                        src, node,
                        f"exception '{e.name}': expected {len(old.fields)} values per row",
                        "rule", rule.name,
                    )  # fmt: skip
            old.values.extend(e.values)

    def _exceptions(self, src: Source, node: Node, rule: str) -> list[_ExceptionDef]:
        if not isinstance(node, SequenceNode):
            raise self._err(src, node, "expected a list of exceptions", "rule", rule)
        out = []
        for enode in node.value:
            keys = self._mapping(src, enode, "rule", rule)
            self._check_keys(src, keys, _EXC_KEYS, "rule", rule)
            if "name" not in keys:
                raise self._err(src, enode, "expected the exception's 'name'", "rule", rule)
            ename = self._scalar(src, keys["name"][1], str, "name", rule, "rule")
            single = "fields" in keys and isinstance(keys["fields"][1], ScalarNode)
            flds = (
                self._str_list(src, keys["fields"][1], "fields", rule, "rule", allow_scalar=True)
                if "fields" in keys
                else []
            )
            for f in flds:
                if F.resolve(f) is None:
                    raise self._err(
                        src, keys["fields"][1], f"exception '{ename}': unknown field '{f}'",
                        "rule", rule,
                    )  # fmt: skip
            comps = (
                self._str_list(src, keys["comps"][1], "comps", rule, "rule", allow_scalar=True)
                if "comps" in keys
                else ["="] * len(flds)
            )
            if len(comps) != len(flds):
                raise self._err(
                    src, keys.get("comps", keys.get("fields", (enode, enode)))[1],
                    f"exception '{ename}': expected one comp per field", "rule", rule,
                )  # fmt: skip
            for cp in comps:
                if cp not in C.OPERATORS or cp == "exists":
                    raise self._err(
                        src, keys["comps"][1],
                        f"exception '{ename}': unknown comp {cp!r}; expected one of "
                        + ", ".join(o for o in C.OPERATORS if o != "exists"),
                        "rule", rule,
                    )  # fmt: skip
            values: list[list[Any]] = []
            if "values" in keys:
                vnode = keys["values"][1]
                if not isinstance(vnode, SequenceNode):
                    raise self._err(
                        src, vnode, f"exception '{ename}': expected a list of values", "rule", rule
                    )
                for row in vnode.value:
                    if single:
                        values.append([self._value(src, row, rule)])
                        continue
                    if not isinstance(row, SequenceNode) or (flds and len(row.value) != len(flds)):
                        raise self._err(
                            src, row,
                            f"exception '{ename}': expected a row of {len(flds)} values "
                            f"(one per field: {', '.join(flds)})",
                            "rule", rule,
                        )  # fmt: skip
                    values.append([self._value(src, x, rule) for x in row.value])
            out.append(_ExceptionDef(ename, flds, comps, values, _loc(src, enode)))
        return out

    def _value(self, src: Source, node: Node, rule: str) -> Any:
        if isinstance(node, SequenceNode):
            return [self._scalar(src, x, str, "values", rule, "rule") for x in node.value]
        return self._scalar(src, node, str, "values", rule, "rule")

    # -- compiling ---------------------------------------------------------------------------

    def build(self) -> RuleSet:
        lists = self._resolve_lists()
        macro_trees: dict[str, C.Node] = {}
        for m in self.macros.values():
            try:
                macro_trees[m.name] = C.parse(_join(m.segments))
            except C.ConditionError as e:
                raise self._cond_err(e, m.segments, "macro", m.name) from None
        rules = []
        for d in self.rules.values():
            rules.append(self._compile_rule(d, lists, macro_trees))
        return RuleSet(
            rules,
            lists,
            {n: _join(m.segments) for n, m in self.macros.items()},
            self.files,
        )

    def _resolve_lists(self) -> dict[str, tuple[str, ...]]:
        out: dict[str, tuple[str, ...]] = {}

        def resolve(name: str, stack: list[str]) -> tuple[str, ...]:
            if name in out:
                return out[name]
            d = self.lists[name]
            if name in stack:
                raise RuleError(
                    f"list refers to itself ({' -> '.join([*stack, name])})",
                    d.loc.file, d.loc.line, d.loc.column, "list", name,
                )  # fmt: skip
            items: list[str] = []
            for it in d.items:
                if it in self.lists and it != name:
                    items.extend(resolve(it, [*stack, name]))
                else:
                    items.append(it)
            out[name] = tuple(dict.fromkeys(items))
            return out[name]

        for n in self.lists:
            resolve(n, [])
        return out

    def _cond_err(
        self, e: C.ConditionError, segments: Sequence[Segment], kind: str, name: str
    ) -> RuleError:
        if e.macro and e.macro in self.macros and (kind, name) != ("macro", e.macro):
            loc = _locate(self.macros[e.macro].segments, e.line, e.column)
            msg = f"{e.message} (in macro '{e.macro}', used by {kind} '{name}')"
            return RuleError(msg, loc.file, loc.line, loc.column, "macro", e.macro)
        loc = _locate(segments, e.line, e.column)
        return RuleError(e.message, loc.file, loc.line, loc.column, kind, name)

    def _compile_rule(
        self, d: _RuleDef, lists: Mapping[str, tuple[str, ...]], macros: Mapping[str, C.Node]
    ) -> Rule:
        if not d.segments:
            raise RuleError("expected a condition", *_split(d.loc), "rule", d.name)
        text = _join(d.segments)
        try:
            tree = C.parse(text)
            C.compile_condition(tree, macros, lists)  # errors located in the condition
        except C.ConditionError as e:
            raise self._cond_err(e, d.segments, "rule", d.name) from None
        exc_trees = []
        excs = []
        for ex in d.exceptions:
            try:
                t = _exception_tree(ex, lists)
                if t is not None:
                    C.compile_condition(t, macros, lists)
                    exc_trees.append(t)
            except C.ConditionError as e:
                raise RuleError(
                    f"exception '{ex.name}': {e.message}", *_split(ex.loc), "rule", d.name
                ) from None
            excs.append(
                RuleException(
                    ex.name,
                    tuple(ex.fields),
                    tuple(ex.comps),
                    tuple(tuple(v) for v in ex.values),
                )
            )
        full: C.Node = tree
        if exc_trees:
            not_exc = C.Not(exc_trees[0] if len(exc_trees) == 1 else C.Or(tuple(exc_trees)))
            full = C.And((*(tree.items if isinstance(tree, C.And) else (tree,)), not_exc))
        compiled = C.compile_condition(full, macros, lists)
        compiled = dataclasses.replace(compiled, source=text)
        p = d.props
        out_loc = d.prop_locs.get("output", d.loc)
        return Rule(
            name=d.name,
            desc=p["desc"],
            condition=text,
            output=p["output"],
            severity=p["severity"],
            category=p["category"],
            tags=tuple(p["tags"]),
            action=p["action"],
            enabled=p["enabled"],
            exceptions=tuple(excs),
            source=f"{d.loc.file}:{d.loc.line}",
            compiled=compiled,
            template=_template(p["output"], None, None, d.name, out_loc),
        )


def _split(loc: Loc) -> tuple[str, int, int]:
    return loc.file, loc.line, loc.column


def _exception_tree(ex: _ExceptionDef, lists: Mapping[str, Sequence[str]]) -> C.Node | None:
    rows: list[C.Node] = []
    for row in ex.values:
        parts: list[C.Node] = []
        for f, comp, v in zip(ex.fields, ex.comps, row, strict=True):
            parts.append(C.comparison(f, comp, v))
        rows.append(parts[0] if len(parts) == 1 else C.And(tuple(parts)))
    if not rows:
        return None
    return rows[0] if len(rows) == 1 else C.Or(tuple(rows))


def _template(
    output: str,
    src: Source | None,
    node: Node | None,
    rule: str,
    loc: Loc | None = None,
) -> tuple[str | F.ResolvedField, ...]:
    parts: list[str | F.ResolvedField] = []
    last = 0
    for m in _FIELD_REF.finditer(output):
        parts.append(output[last : m.start()])
        last = m.end()
        if m.group(0) == "%%":
            parts.append("%")
            continue
        rf = F.resolve(m.group(1))
        if rf is None:
            if src is not None and node is not None:
                seg = Segment(output, src, node)  # type: ignore[arg-type]
                line = output.count("\n", 0, m.start()) + 1
                col = m.start() - (output.rfind("\n", 0, m.start()) + 1) + 1
                where = seg.locate(line, col)
            else:
                where = loc or Loc("<output>", 1, 1)
            raise RuleError(
                f"unknown field '%{m.group(1)}' in output; expected a field name",
                *_split(where),
                "rule",
                rule,
            )
        parts.append(rf)
    parts.append(output[last:])
    return tuple(p for p in parts if p != "")


# ---------------------------------------------------------------------------------------------
# Public loading API
# ---------------------------------------------------------------------------------------------

RuleFile = str | Path | Traversable


def default_rules_dir() -> Traversable:
    """The packaged default rule packs (``rules/`` in the source tree)."""
    return importlib.resources.files("roguewatch.rulepacks")


def rule_files(directory: RuleFile) -> list[Traversable | Path]:
    """The ``*.yaml`` and ``*.yml`` files of a directory, sorted by file name."""
    d: Traversable | Path = directory if isinstance(directory, Traversable) else Path(directory)
    files = [f for f in d.iterdir() if f.is_file() and f.name.endswith((".yaml", ".yml"))]
    return sorted(files, key=lambda f: f.name)


def load_texts(sources: Iterable[tuple[str, str]]) -> RuleSet:
    """A RuleSet from ``(file name, YAML text)`` pairs, later ones overriding earlier ones."""
    loader = _Loader()
    for name, text in sources:
        loader.add(name, text)
    return loader.build()


def _read(f: RuleFile) -> tuple[str, str]:
    p: Traversable | Path = f if isinstance(f, Traversable) else Path(f)
    try:
        return str(p), p.read_text(encoding="utf-8")
    except OSError as e:
        raise RuleError(f"cannot read: {e.strerror}", str(p), 1, 1) from None
    except UnicodeDecodeError:
        raise RuleError("expected UTF-8 text", str(p), 1, 1) from None


def load_files(files: Iterable[RuleFile]) -> RuleSet:
    """A RuleSet from rule files, in the order given."""
    return load_texts(_read(f) for f in files)


def load_rules(extra_dirs: Iterable[RuleFile] = (), *, defaults: bool = True) -> RuleSet:
    """The default rule packs (unless ``defaults`` is false), then each extra directory's
    files sorted by name; a later definition appends to or overrides an earlier one."""
    files: list[RuleFile] = []
    if defaults:
        files += rule_files(default_rules_dir())
    for d in extra_dirs:
        files += rule_files(d)
    return load_files(files)


# ---------------------------------------------------------------------------------------------
# Fixtures: events and the rules they must (or must not) fire
# ---------------------------------------------------------------------------------------------

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
    )


def load_fixtures(path: RuleFile) -> list[FixtureCase]:
    """Cases of a fixture file (format in docs/rules.md)."""
    name, text = _read(path)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise RuleError(f"expected valid YAML: {e}", name, 1, 1) from None
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


def lists_only(extra_dirs: Iterable[RuleFile] = ()) -> dict[str, tuple[str, ...]]:
    """Just the lists of the rule files (append honoured), without compiling any condition:
    what the filesystem watchers need at start-up, in a few milliseconds instead of the
    whole rule set's compile. Files are assumed valid (the evaluator validates them)."""
    files = rule_files(default_rules_dir())
    for d in extra_dirs:
        files += rule_files(d)
    lists: dict[str, list[str]] = {}
    for f in files:
        try:
            items = yaml.safe_load(f.read_text()) or []
        except yaml.YAMLError:
            continue
        for item in items if isinstance(items, list) else []:
            if not isinstance(item, dict) or "list" not in item:
                continue
            values = [str(v) for v in item.get("items") or []]
            if item.get("append"):
                lists.setdefault(item["list"], []).extend(values)
            else:
                lists[item["list"]] = values
    return {k: tuple(v) for k, v in lists.items()}
