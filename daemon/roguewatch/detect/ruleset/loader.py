"""Rule files: the format, its validation with ``file:line:column`` errors, and loading.

Owns the rule file format (YAML lists of ``- list:``, ``- macro:`` and ``- rule:`` items in
Falco's style, with ``append``/``override`` so later files extend earlier ones), exceptions and
output templates as written, the packaged packs and local directories in their order, and
compiling all of it into a :class:`~roguewatch.detect.ruleset.model.RuleSet`.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import importlib.resources
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib.abc import Traversable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from roguewatch.core import yamlfile
from roguewatch.detect import condition as C
from roguewatch.detect import fields as F
from roguewatch.detect.ruleset.model import (
    _FIELD_REF,
    ACTIONS,
    CATEGORIES,
    FOLDS,
    SEVERITIES,
    Rule,
    RuleError,
    RuleException,
    RuleSet,
)

if TYPE_CHECKING:
    from roguewatch.policy.config import Config

_RULE_KEYS = {
    "rule", "desc", "condition", "output", "severity", "category", "tags", "action", "enabled",
    "exceptions", "append", "override", "restore", "fold",
}  # fmt: skip
_RULE_REQUIRED = ("desc", "condition", "output", "severity", "category")
_RULE_APPENDABLE = {"condition", "exceptions", "tags"}
_RULE_REPLACEABLE = _RULE_KEYS - {"rule", "append", "override"}
_EXC_KEYS = {"name", "fields", "comps", "values"}


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
        except yaml.YAMLError as e:
            line, column, detail = yamlfile.position(e)
            raise RuleError(f"expected valid YAML: {detail}", name, line, column) from None
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
            elif k in ("severity", "category", "action", "fold"):
                v = self._scalar(src, vnode, str, k, name, "rule")
                allowed = {"severity": SEVERITIES, "category": CATEGORIES, "action": ACTIONS,
                           "fold": FOLDS}[k]  # fmt: skip
                if v not in allowed:
                    raise self._err(
                        src, vnode, f"expected {k} one of {', '.join(allowed)}, got {v!r}",
                        "rule", name,
                    )  # fmt: skip
                props[k] = v
            elif k in ("enabled", "restore"):
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
            props.setdefault("restore", False)
            props.setdefault("fold", "event")
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
            restore=p.get("restore", False),
            fold=p.get("fold", "event"),
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


def read_source(f: RuleFile) -> tuple[str, str]:
    p: Traversable | Path = f if isinstance(f, Traversable) else Path(f)
    try:
        return str(p), p.read_text(encoding="utf-8")
    except OSError as e:
        raise RuleError(f"cannot read: {e.strerror}", str(p), 1, 1) from None
    except UnicodeDecodeError:
        raise RuleError("expected UTF-8 text", str(p), 1, 1) from None


def load_files(files: Iterable[RuleFile]) -> RuleSet:
    """A RuleSet from rule files, in the order given."""
    return load_texts(read_source(f) for f in files)


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


def load_configured(cfg: Config, extra_dirs: Sequence[str] = ()) -> RuleSet:
    """The rule set a daemon with this configuration runs: the packaged packs, the configured
    directories that exist (the fleet's last, when the fleet is on), ``extra_dirs``, then the
    configured enable and disable patterns. The evaluator loads and reloads with it, and the
    fleet validates an incoming rule file with it (``extra_dirs``), so both judge alike."""
    dirs = [*cfg.rule_dirs_in_effect(), *extra_dirs]
    files = rule_files(default_rules_dir())
    for d in dirs:
        files += rule_files(d)
    # The monitor's own files where this configuration puts them: the rules' roguewatch_paths
    # name the default places only.
    own = [p for p in cfg.monitor_config_paths() if p]
    sources = [read_source(f) for f in files]
    if own:
        items = ", ".join(json.dumps(p) for p in own)
        text = f"- list: roguewatch_paths\n  append: true\n  items: [{items}]\n"
        sources.append(("<configuration>", text))
    return load_texts(sources).select(enable=cfg.rules_enable, disable=cfg.rules_disable)


def digest(rules: RuleSet, selection: Sequence[str] = ()) -> str:
    """A short hash of the rule files a set was loaded from (names and contents) and the
    selection patterns: what a host reports running in its heartbeat."""
    h = hashlib.sha256()
    for f in rules.files:
        h.update(os.path.basename(f).encode() + b"\0")
        try:
            h.update(Path(f).read_bytes())
        except OSError:
            h.update(b"?")
        h.update(b"\0")
    for pattern in selection:
        h.update(pattern.encode() + b"\0")
    return h.hexdigest()[:16]
