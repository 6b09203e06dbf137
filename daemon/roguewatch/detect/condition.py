"""The rule condition language: parsing (lark, LALR) and compilation into matcher closures.

This module owns the grammar, the syntax tree, macro expansion, list expansion, literal
typing against the field table and the compilation of a tree into a closure
``(event, ctx) -> bool``. Nothing is ever passed to ``eval``: a condition can only compare
fields with literals through the operators below.

    cond    := cond "or" cond | cond "and" cond | "not" cond | "(" cond ")" | MACRO | BOOLFIELD
             | FIELD OP value | FIELD OP "(" [item ("," item)*] ")" | FIELD "exists"
    OP      := = == != < <= > >= in startswith endswith contains icontains glob pmatch cidr regex
    value   := "quoted" | 'quoted' | bare-word (a path, a number, an identifier...)

Precedence: ``not`` binds tighter than ``and``, which binds tighter than ``or``. Inside
parentheses, a bare item that names a list is replaced by the list's items. Errors raise
:class:`ConditionError` with a line and column relative to the condition's text.

It must not know about rule files (``roguewatch.detect.ruleset``) or how fields are extracted
(``roguewatch.detect.fields``, which it consults for names and types).
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import lark
import re2

from roguewatch.core.cache import BoundedDict, HostMemo
from roguewatch.detect import fields as F
from roguewatch.policy.egress import parse_ip

Matcher = Callable[[dict, Any], bool]

GRAMMAR = r"""
?start: expr
?expr: expr OR term -> or_
     | term
?term: term AND factor -> and_
     | factor
?factor: NOT factor -> not_
     | LPAR expr RPAR -> group
     | WORD op value -> cmp
     | WORD op LPAR [value (COMMA value)*] RPAR -> cmp_list
     | WORD EXISTS -> exists
     | WORD -> ref
op: EQ | EQ2 | NE | LT | LE | GT | GE | IN | STARTSWITH | ENDSWITH | CONTAINS | ICONTAINS
  | GLOB | PMATCH | CIDR | REGEX
value: WORD | STRING
OR: "or"
AND: "and"
NOT: "not"
EXISTS: "exists"
IN: "in"
STARTSWITH: "startswith"
ENDSWITH: "endswith"
CONTAINS: "contains"
ICONTAINS: "icontains"
GLOB: "glob"
PMATCH: "pmatch"
CIDR: "cidr"
REGEX: "regex"
EQ: "="
EQ2: "=="
NE: "!="
LE: "<="
GE: ">="
LT: "<"
GT: ">"
LPAR: "("
RPAR: ")"
COMMA: ","
WORD: /[^\s(),"'=<>!]+/
STRING: /"(?:[^"\\\n]|\\.)*"/ | /'[^'\n]*'/
%ignore /\s+/
"""

_PARSER = lark.Lark(GRAMMAR, parser="lalr", lexer="basic", maybe_placeholders=True)

_EXPECTED_NAMES = {
    "WORD": "a field, value or macro name",
    "STRING": "a quoted string",
    "LPAR": "'('",
    "RPAR": "')'",
    "COMMA": "','",
    "AND": "'and'",
    "OR": "'or'",
    "NOT": "'not'",
    "EXISTS": "'exists'",
    "$END": "the end of the condition",
}
_OP_TERMINALS = {
    "EQ", "EQ2", "NE", "LT", "LE", "GT", "GE", "IN", "STARTSWITH", "ENDSWITH", "CONTAINS",
    "ICONTAINS", "GLOB", "PMATCH", "CIDR", "REGEX",
}  # fmt: skip

OPERATORS = (
    "=", "!=", "<", "<=", ">", ">=", "in", "startswith", "endswith", "contains", "icontains",
    "glob", "pmatch", "cidr", "regex", "exists",
)  # fmt: skip
_STRING_OPS = frozenset({"startswith", "endswith", "contains", "icontains", "glob", "pmatch"})
_NUMERIC_OPS = frozenset({"<", "<=", ">", ">="})
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # errors are raised as ConditionError, not logged to stderr
_MACRO_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ConditionError(ValueError):
    """A condition that cannot be compiled. ``line``/``column`` are 1-based in its text.

    ``macro`` names the macro whose text holds the error (None: the condition's own text).
    """

    def __init__(self, message: str, line: int = 1, column: int = 1, macro: str | None = None):
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column
        self.macro = macro

    def __str__(self) -> str:
        where = f"macro '{self.macro}' " if self.macro else ""
        return f"{where}{self.line}:{self.column}: {self.message}"


# ---------------------------------------------------------------------------------------------
# Syntax tree
# ---------------------------------------------------------------------------------------------

Pos = tuple[int, int]


@dataclass(frozen=True)
class Item:
    """A literal in a condition; ``bare`` words inside parentheses may name lists."""

    text: str
    bare: bool
    pos: Pos


@dataclass(frozen=True)
class Cmp:
    field: str
    op: str
    items: tuple[Item, ...]
    paren: bool  # the right-hand side was a parenthesized list
    pos: Pos
    values: tuple[Any, ...] = ()  # typed values after list expansion (set by compile)


@dataclass(frozen=True)
class And:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    item: Node


@dataclass(frozen=True)
class Ref:
    """A macro reference (before expansion)."""

    name: str
    pos: Pos


@dataclass(frozen=True)
class Macro:
    """An expanded macro: its name and its body (kept for explaining a rule)."""

    name: str
    body: Node


Node = Cmp | And | Or | Not | Ref | Macro


def _pos(tok: lark.Token) -> Pos:
    return (tok.line or 1, tok.column or 1)


def _unquote(tok: lark.Token) -> str:
    s = str(tok)
    if s[0] == "'":
        return s[1:-1]
    # Only \\ \" \n \t are escapes: any other backslash stays (regex escapes like \. work).
    escapes = {"\\": "\\", '"': '"', "n": "\n", "t": "\t"}
    return re.sub(r"\\(.)", lambda m: escapes.get(m.group(1), m.group(0)), s[1:-1])


def _item(tree: lark.Tree) -> Item:
    tok = tree.children[0]
    if tok.type == "STRING":
        return Item(_unquote(tok), False, _pos(tok))
    return Item(str(tok), True, _pos(tok))


def _check_field(tok: lark.Token) -> F.ResolvedField:
    rf = F.resolve(str(tok))
    if rf is None:
        near = _near(str(tok), list(F.FIELDS))
        hint = f" (did you mean '{near}'?)" if near else ""
        raise ConditionError(f"unknown field '{tok}'{hint}; expected a field name", *_pos(tok))
    return rf


def _near(name: str, names: Iterable[str]) -> str | None:
    import difflib

    m = difflib.get_close_matches(name, list(names), n=1, cutoff=0.75)
    return m[0] if m else None


def _to_node(t: lark.Tree | lark.Token) -> Node:
    if isinstance(t, lark.Token):  # a lone WORD collapsed by ?factor
        return _ref(t)
    kind = t.data
    c = t.children
    if kind == "or_":
        return Or(_flat(Or, _to_node(c[0]), _to_node(c[2])))
    if kind == "and_":
        return And(_flat(And, _to_node(c[0]), _to_node(c[2])))
    if kind == "not_":
        return Not(_to_node(c[1]))
    if kind == "group":
        return _to_node(c[1])
    if kind == "ref":
        return _ref(c[0])
    if kind == "exists":
        _check_field(c[0])
        return Cmp(str(c[0]), "exists", (), False, _pos(c[0]))
    if kind in ("cmp", "cmp_list"):
        ftok, optree = c[0], c[1]
        rf = _check_field(ftok)
        op = str(optree.children[0])
        op = "=" if op == "==" else op
        if kind == "cmp":
            items: tuple[Item, ...] = (_item(c[2]),)
        else:
            items = tuple(_item(v) for v in c[3:-1] if isinstance(v, lark.Tree))
        _check_op(rf, op, kind == "cmp_list", _pos(optree.children[0]))
        return Cmp(str(ftok), op, items, kind == "cmp_list", _pos(ftok))
    raise ConditionError(f"unexpected {kind}")  # pragma: no cover - grammar and code agree


def _ref(tok: lark.Token) -> Node:
    name = str(tok)
    rf = F.resolve(name)
    if rf is not None:
        if rf.type == "bool":
            return Cmp(name, "=", (Item("true", True, _pos(tok)),), False, _pos(tok))
        raise ConditionError(
            f"expected an operator after field '{name}' (one of {', '.join(OPERATORS)})",
            *_pos(tok),
        )
    if not _MACRO_RE.match(name):
        raise ConditionError(
            f"'{name}' is neither a field nor a macro name; expected a field, a macro or '('",
            *_pos(tok),
        )
    return Ref(name, _pos(tok))


def _flat(kind: type, a: Node, b: Node) -> tuple[Node, ...]:
    out: list[Node] = []
    for x in (a, b):
        out.extend(x.items if isinstance(x, kind) else (x,))  # type: ignore[attr-defined]
    return tuple(out)


def _check_op(rf: F.ResolvedField, op: str, paren: bool, pos: Pos) -> None:
    t = rf.type
    base = t[5:-1] if t.startswith("list[") else t
    if op in _NUMERIC_OPS and base not in ("int", "float", "any"):
        raise ConditionError(f"operator '{op}' needs a numeric field; '{rf.name}' is {t}", *pos)
    if (op in _STRING_OPS or op in ("regex", "cidr")) and base not in ("str", "any"):
        raise ConditionError(f"operator '{op}' needs a string field; '{rf.name}' is {t}", *pos)
    if op == "in" and not paren:
        raise ConditionError(f"expected '(' after 'in' (a list: {rf.name} in (a, b))", *pos)
    if op in _NUMERIC_OPS and paren:
        raise ConditionError(f"operator '{op}' takes one value, not a list", *pos)


def comparison(field_name: str, op: str, value: str | Sequence[str]) -> Cmp:
    """A comparison node built from data (rule exceptions): ``field op value``.

    A sequence value is a list (``=`` becomes ``in``); a string names a list when one exists.
    """
    pos = (1, 1)
    rf = F.resolve(field_name)
    if rf is None:
        raise ConditionError(f"unknown field '{field_name}'; expected a field name")
    if op == "==":
        op = "="
    if op not in OPERATORS or op == "exists":
        raise ConditionError(f"unknown operator '{op}'")
    if isinstance(value, str):
        items: tuple[Item, ...] = (Item(value, True, pos),)
        paren = op not in _NUMERIC_OPS and op not in ("=", "!=")
    else:
        items = tuple(Item(str(v), True, pos) for v in value)
        paren = True
        if op == "=":
            op = "in"
        elif op in ("!=", *_NUMERIC_OPS):
            raise ConditionError(f"operator '{op}' takes one value, not a list")
    _check_op(rf, op, paren, pos)
    return Cmp(field_name, op, items, paren, pos)


def parse(text: str) -> Node:
    """The syntax tree of a condition (macro references not yet expanded)."""
    if not text.strip():
        raise ConditionError("empty condition; expected a field comparison or a macro", 1, 1)
    try:
        tree = _PARSER.parse(text)
    except lark.UnexpectedToken as e:
        tok = e.token
        line, col = e.line or 1, e.column or 1
        if tok.type == "$END":
            got = "the end of the condition"
            end = text.rstrip()
            line = end.count("\n") + 1
            col = len(end) - (end.rfind("\n") + 1) + 1
        else:
            got = f"'{tok}'"
        msg = f"expected {_expected(e.expected)}, found {got}"
        if tok.type in _OP_TERMINALS and not set(e.expected) & _OP_TERMINALS:
            msg += " (quote values that hold = < > ! or spaces)"
        raise ConditionError(msg, line, col) from None
    except lark.UnexpectedCharacters as e:
        ch = text[e.pos_in_stream] if e.pos_in_stream < len(text) else "?"
        if ch in "\"'":
            msg = f"expected a closing {ch} for the string that starts here"
        else:
            msg = f"expected {_expected(e.allowed)}, found {ch!r}"
            if ch in "=<>!":
                msg += " (quote values that hold = < > or !)"
        raise ConditionError(msg, e.line, e.column) from None
    return _to_node(tree)


def _expected(names: Iterable[str]) -> str:
    names = set(names or ())
    parts = []
    if names & _OP_TERMINALS:
        parts.append("an operator")
    parts += sorted(_EXPECTED_NAMES.get(n, n) for n in names - _OP_TERMINALS)
    return " or ".join(parts) if parts else "something else"


# ---------------------------------------------------------------------------------------------
# Compilation
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompiledCondition:
    """A condition ready to run: ``match(event, ctx) -> bool``."""

    source: str
    tree: Node  # macros expanded (wrapped in Macro nodes), lists expanded into values
    match: Matcher
    event_types: frozenset[str] | None
    fields: frozenset[str]
    macros: frozenset[str] = field(default_factory=frozenset)
    _by_type: dict[str, Matcher | None] = field(default_factory=dict, repr=False, compare=False)

    def for_event_type(self, event_type: str) -> Matcher | None:
        """A matcher for events of one type, with every ``evt.type`` test decided in advance
        and the tree simplified; None when no event of that type can match."""
        if event_type not in self._by_type:
            node = specialize(self.tree, event_type)
            if node is True:
                m: Matcher | None = _always
            elif node is False:
                m = None
            else:
                m = _build(node)
            self._by_type[event_type] = m
        return self._by_type[event_type]


MacroSource = str | Node


def compile_condition(
    text: str | Node,
    macros: Mapping[str, MacroSource] | None = None,
    lists: Mapping[str, Sequence[str]] | None = None,
) -> CompiledCondition:
    """Parse (unless given a tree), expand macros and lists, type literals and build a matcher.

    ``macros`` maps names to condition text or parsed trees; ``lists`` maps names to items.
    """
    macros = macros or {}
    lists = lists or {}
    tree = parse(text) if isinstance(text, str) else text
    used_macros: set[str] = set()
    expanded = _expand(tree, macros, lists, [], {}, used_macros)
    match = _build(expanded)
    types = required_event_types(expanded)
    return CompiledCondition(
        source=text if isinstance(text, str) else to_text(tree),
        tree=expanded,
        match=match,
        event_types=types,
        fields=frozenset(fields_used(expanded)),
        macros=frozenset(used_macros),
    )


def _expand(
    node: Node,
    macros: Mapping[str, MacroSource],
    lists: Mapping[str, Sequence[str]],
    stack: list[str],
    cache: dict[str, Node],
    used: set[str],
) -> Node:
    where = stack[-1] if stack else None
    if isinstance(node, Ref):
        name = node.name
        if name in stack:
            cycle = " -> ".join([*stack[stack.index(name) :], name])
            raise ConditionError(f"macro '{name}' refers to itself ({cycle})", *node.pos, where)
        if name not in macros:
            near = _near(name, macros)
            hint = f" (did you mean '{near}'?)" if near else ""
            raise ConditionError(
                f"unknown macro '{name}'{hint}; expected a macro name or a field comparison",
                *node.pos,
                where,
            )
        used.add(name)
        if name not in cache:
            src = macros[name]
            try:
                body = parse(src) if isinstance(src, str) else src
            except ConditionError as e:
                e.macro = e.macro or name
                raise
            cache[name] = Macro(name, _expand(body, macros, lists, [*stack, name], cache, used))
        return cache[name]
    if isinstance(node, And):
        return And(tuple(_expand(x, macros, lists, stack, cache, used) for x in node.items))
    if isinstance(node, Or):
        return Or(tuple(_expand(x, macros, lists, stack, cache, used) for x in node.items))
    if isinstance(node, Not):
        return Not(_expand(node.item, macros, lists, stack, cache, used))
    if isinstance(node, Macro):
        return node
    assert isinstance(node, Cmp)
    return _type_values(node, lists, where)


def _type_values(node: Cmp, lists: Mapping[str, Sequence[str]], where: str | None) -> Cmp:
    if node.op == "exists":
        return node
    rf = F.resolve(node.field)
    assert rf is not None
    base = rf.type[5:-1] if rf.type.startswith("list[") else rf.type
    values: list[Any] = []
    for it in node.items:
        if node.paren and it.bare and it.text in lists:
            raw: Sequence[str] = [str(x) for x in lists[it.text]]
        else:
            raw = [it.text]
        for text in raw:
            try:
                values.append(_literal(text, base, node.op))
            except ValueError as e:
                raise ConditionError(f"{node.field} {node.op}: {e}", *it.pos, where) from None
    if node.field == "evt.type":
        for v in values:
            if node.op in ("=", "!=", "in") and v not in F.EVENT_TYPE_NAMES:
                near = _near(v, F.EVENT_TYPE_NAMES)
                hint = f" (did you mean '{near}'?)" if near else ""
                raise ConditionError(
                    f"unknown event type '{v}'{hint}; expected one of docs/events.md's types",
                    *node.pos,
                    where,
                )
    if node.op == "regex":
        for it, v in zip(node.items, values, strict=False):
            try:
                re2.compile(v, _RE2_OPTIONS)
            except re2.error as e:
                why = e.args[0].decode() if e.args and isinstance(e.args[0], bytes) else str(e)
                raise ConditionError(
                    f"expected a valid RE2 regular expression, got {v!r}: {why}", *it.pos, where
                ) from None
    if node.op == "cidr":
        for it, v in zip(node.items, values, strict=False):
            try:
                ipaddress.ip_network(v, strict=False)
            except ValueError:
                raise ConditionError(
                    f"expected a CIDR (10.0.0.0/8, ::1/128), got {v!r}", *it.pos, where
                ) from None
    return Cmp(node.field, node.op, node.items, node.paren, node.pos, tuple(values))


def _literal(text: str, base: str, op: str) -> Any:
    if op in _STRING_OPS or op in ("regex", "cidr"):
        return text
    if base == "int":
        try:
            return int(text, 0)
        except ValueError:
            raise ValueError(f"expected an integer, got {text!r}") from None
    if base == "float":
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None
    if base == "bool":
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        raise ValueError(f"expected true or false, got {text!r}")
    if base == "any":
        try:
            return int(text, 0)
        except ValueError:
            return text
    return text


def required_event_types(node: Node | CompiledCondition) -> frozenset[str] | None:
    """The ``evt.type`` values a condition can match (None: any event type)."""
    if isinstance(node, CompiledCondition):
        return node.event_types
    if isinstance(node, Macro):
        return required_event_types(node.body)
    if isinstance(node, Cmp):
        if node.field == "evt.type" and node.op in ("=", "in"):
            return frozenset(node.values)
        return None
    if isinstance(node, And):
        out: frozenset[str] | None = None
        for x in node.items:
            t = required_event_types(x)
            if t is not None:
                out = t if out is None else out & t
        return out
    if isinstance(node, Or):
        acc: set[str] = set()
        for x in node.items:
            t = required_event_types(x)
            if t is None:
                return None
            acc |= t
        return frozenset(acc)
    return None  # Not, Ref


def fields_used(node: Node | CompiledCondition) -> set[str]:
    """Every field name a condition reads."""
    if isinstance(node, CompiledCondition):
        return set(node.fields)
    if isinstance(node, Cmp):
        return {node.field}
    if isinstance(node, Macro):
        return fields_used(node.body)
    if isinstance(node, Not):
        return fields_used(node.item)
    if isinstance(node, And | Or):
        out: set[str] = set()
        for x in node.items:
            out |= fields_used(x)
        return out
    return set()


def _quote(v: Any) -> str:
    s = str(v).lower() if isinstance(v, bool) else str(v)
    if s and re.fullmatch(r"[^\s(),\"'=<>!]+", s) and s not in _KEYWORDS:
        return s
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


_KEYWORDS = frozenset({"and", "or", "not", "exists", *OPERATORS})


def to_text(node: Node, expand_macros: bool = False) -> str:
    """A condition's text from its tree (macros by name unless ``expand_macros``)."""
    if isinstance(node, Cmp):
        if node.op == "exists":
            return f"{node.field} exists"
        vals = node.values if node.values or not node.items else [i.text for i in node.items]
        if node.paren:
            return f"{node.field} {node.op} ({', '.join(_quote(v) for v in vals)})"
        return f"{node.field} {node.op} {_quote(vals[0])}"
    if isinstance(node, Ref):
        return node.name
    if isinstance(node, Macro):
        return f"({to_text(node.body, True)})" if expand_macros else node.name
    if isinstance(node, Not):
        inner = to_text(node.item, expand_macros)
        return f"not {inner}" if isinstance(node.item, Cmp | Ref | Macro) else f"not ({inner})"
    sep = " and " if isinstance(node, And) else " or "
    parts = []
    for x in node.items:
        s = to_text(x, expand_macros)
        parts.append(f"({s})" if isinstance(x, And | Or) else s)
    return sep.join(parts)


# --- matchers --------------------------------------------------------------------------------


LeafBuilder = Callable[["Cmp"], "Matcher | None"]


def _build(node: Node, leaf: LeafBuilder | None = None) -> Matcher:
    """The matcher of a tree; ``leaf`` may build a comparison's matcher instead (None: the
    usual one)."""
    if isinstance(node, Macro):
        return _build(node.body, leaf)
    if isinstance(node, Not):
        inner = _build(node.item, leaf)
        return lambda e, c: not inner(e, c)
    if isinstance(node, And):
        ms = tuple(_build(x, leaf) for x in _flatten(node))
        if len(ms) == 1:
            return ms[0]
        if len(ms) == 2:
            a, b = ms
            return lambda e, c: a(e, c) and b(e, c)
        if len(ms) == 3:
            a, b, d = ms
            return lambda e, c: a(e, c) and b(e, c) and d(e, c)

        def all_of(e: dict, c: Any) -> bool:
            for m in ms:  # noqa: SIM110 - a loop is faster than all() over a generator
                if not m(e, c):
                    return False
            return True

        return all_of
    if isinstance(node, Or):
        ms = tuple(_build(x, leaf) for x in _flatten(node))
        if len(ms) == 1:
            return ms[0]
        if len(ms) == 2:
            a, b = ms
            return lambda e, c: a(e, c) or b(e, c)

        def any_of(e: dict, c: Any) -> bool:
            for m in ms:  # noqa: SIM110 - a loop is faster than any() over a generator
                if m(e, c):
                    return True
            return False

        return any_of
    if isinstance(node, Cmp):
        return (leaf(node) if leaf is not None else None) or _build_cmp(node)
    raise ConditionError(f"unexpanded macro reference {node}")  # Ref: compile() expands them


def _flatten(node: And | Or) -> list[Node]:
    """Items of an And (Or), with nested Ands (Ors) and macro bodies spliced in: fewer calls."""
    kind = type(node)
    out: list[Node] = []
    for x in node.items:
        while isinstance(x, Macro):
            x = x.body
        if isinstance(x, kind):
            out.extend(_flatten(x))
        else:
            out.append(x)
    return out


def _always(e: dict, c: Any) -> bool:
    return True


def build_matcher(node: Node, leaf: LeafBuilder | None = None) -> Matcher:
    """A matcher for a tree that is already expanded and typed (``specialize``'s output, or
    ``necessary``'s). ``leaf(cmp)`` may give a comparison's matcher, one that returns what
    the usual one would (or raises where it would); None leaves it to the usual one."""
    return _build(node, leaf)


def necessary(node: Node, keep: Callable[[Cmp], bool]) -> Node | bool:
    """A condition made only of the comparisons ``keep`` accepts that holds whenever
    ``node`` holds (True: nothing is known). The others are replaced by what cannot wrongly
    exclude: True where they count for the condition, False under an odd number of ``not``.
    When ``keep`` accepts every comparison, the result is ``node`` itself, simplified."""
    return _bound(node, keep, True)


def _bound(node: Node, keep: Callable[[Cmp], bool], upper: bool) -> Node | bool:
    """An upper bound of ``node`` (implied by it) or a lower bound (implying it)."""
    if isinstance(node, Macro):
        return _bound(node.body, keep, upper)
    if isinstance(node, Cmp):
        return node if keep(node) else upper
    if isinstance(node, Not):
        inner = _bound(node.item, keep, not upper)
        return (not inner) if isinstance(inner, bool) else Not(inner)
    if isinstance(node, And | Or):
        return _simplified(type(node), [_bound(x, keep, upper) for x in node.items])
    raise ConditionError(f"unexpanded macro reference {node}")  # Ref: compile() expands them


def _simplified(kind: type, parts: list[Node | bool]) -> Node | bool:
    """``kind(parts)`` with constant parts folded away."""
    is_and = kind is And
    items: list[Node] = []
    for r in parts:
        if isinstance(r, bool):
            if r is not is_and:  # False in an And, True in an Or: decided
                return r
            continue
        items.append(r)
    if not items:
        return is_and
    if len(items) == 1:
        return items[0]
    return And(tuple(items)) if is_and else Or(tuple(items))


def comparisons(node: Node) -> Iterable[Cmp]:
    """Every comparison of an expanded tree, macro bodies included."""
    if isinstance(node, Cmp):
        yield node
    elif isinstance(node, Macro):
        yield from comparisons(node.body)
    elif isinstance(node, Not):
        yield from comparisons(node.item)
    elif isinstance(node, And | Or):
        for x in node.items:
            yield from comparisons(x)


def specialize(node: Node, event_type: str) -> Node | bool:
    """``node`` for events of ``event_type``: ``evt.type`` tests become constants and the
    tree is simplified (True/False when the whole condition is decided)."""
    if isinstance(node, Macro):
        return specialize(node.body, event_type)
    if isinstance(node, Cmp):
        if node.field == "evt.type" and node.op in ("=", "in", "!="):
            hit = event_type in node.values
            return not hit if node.op == "!=" else hit
        return node
    if isinstance(node, Not):
        inner = specialize(node.item, event_type)
        return (not inner) if isinstance(inner, bool) else Not(inner)
    if isinstance(node, And | Or):
        # Items in order up to the first deciding constant: the same short-circuit as before.
        is_and = isinstance(node, And)
        parts: list[Node | bool] = []
        for x in node.items:
            r = specialize(x, event_type)
            parts.append(r)
            if isinstance(r, bool) and r is not is_and:
                break
        return _simplified(type(node), parts)
    return node


def _string_predicate(op: str, values: tuple[str, ...]) -> Callable[[str], bool]:
    """One string test against any of ``values``."""
    if op == "startswith":
        t = tuple(values)
        return lambda v: v.startswith(t)
    if op == "endswith":
        t = tuple(values)
        return lambda v: v.endswith(t)
    if op == "contains":
        if len(values) == 1:
            (s,) = values
            return lambda v: s in v
        return lambda v: any(s in v for s in values)
    if op == "icontains":
        low = tuple(s.lower() for s in values)
        return lambda v: any(s in v.lower() for s in low)
    if op == "pmatch":
        prefixes = frozenset(F.normalize_prefix(p) for p in values)
        if "/" in prefixes or "" in prefixes or not prefixes:
            return lambda v: F.under_any(F.clean_path(v), prefixes)
        starts = tuple(sorted(prefixes))

        def pmatch(v: str) -> bool:
            v = F.clean_path(v)
            # str.startswith(tuple) rejects most paths in C; then check component bounds
            return v.startswith(starts) and F.under_any(v, prefixes)

        return pmatch
    if op == "regex":
        rx = re2.compile("|".join(f"(?:{p})" for p in values), _RE2_OPTIONS) if values else None
        return (lambda v: rx.search(v) is not None) if rx else (lambda v: False)
    if op == "glob":
        return _glob_predicate(values)
    if op == "cidr":
        return _cidr_predicate(values)
    raise AssertionError(op)


def _glob_predicate(patterns: tuple[str, ...]) -> Callable[[str], bool]:
    exact: set[str] = set()
    starts: list[str] = []
    ends: list[str] = []
    regexes: list[str] = []
    magic = re.compile(r"[*?\[]")
    for p in patterns:
        if not magic.search(p):
            exact.add(p)
        elif p.endswith("*") and not magic.search(p[:-1]):
            starts.append(p[:-1])
        elif p.startswith("*") and not magic.search(p[1:]):
            ends.append(p[1:])
        else:
            regexes.append(fnmatch.translate(p))
    st, en = tuple(starts), tuple(ends)
    rx = re.compile("|".join(regexes), re.DOTALL) if regexes else None

    def glob(v: str) -> bool:
        return (
            v in exact
            or (bool(st) and v.startswith(st))
            or (bool(en) and v.endswith(en))
            or (rx is not None and rx.match(v) is not None)
        )

    return glob


def _cidr_predicate(cidrs: tuple[str, ...]) -> Callable[[str], bool]:
    nets = tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)
    memo: BoundedDict[str, bool] = BoundedDict(8192)

    def cidr(v: str) -> bool:
        r = memo.get(v)
        if r is None:
            ip = parse_ip(v)
            r = memo.put(
                v, ip is not None and any(ip.version == n.version and ip in n for n in nets)
            )
        return r

    return cidr


def inputs(node: Cmp) -> tuple[str, ...] | None:
    """What a comparison's matcher reads, when it is a pure function of a few event keys
    and policy attributes (``policy.NAME``) whose values are hashable scalars: its result
    may then be cached by their values (``roguewatch.detect.prefilter``). None for a comparison
    that reads anything else (the process table, the clock, a list). Mirrors ``_build_cmp``."""
    rf = F.resolve(node.field)
    if rf is None:
        return None
    is_list = rf.type.startswith("list[")
    if node.op == "exists":
        if rf.key is not None:
            return None if is_list else (rf.key,)
        if rf.source is not None and rf.derive is not None:
            return (rf.source,)
        return rf.inputs
    if _is_memoized(rf, node.op):
        assert rf.source is not None
        return (rf.source,)
    if not is_list and rf.key is not None:
        return (rf.key,)
    if rf.key is None:  # read through the field's extractor
        return rf.inputs
    return None


def memoized_source(node: Cmp) -> tuple[str, Callable[[Any], Any] | None] | None:
    """``(source key, derive)`` when a comparison's matcher is ``_memoized``: its value is
    ``derive(event[source])`` (or the raw value without derive), None and absent meaning
    false. None for any other comparison."""
    rf = F.resolve(node.field)
    if rf is None or node.op == "exists" or not _is_memoized(rf, node.op):
        return None
    assert rf.source is not None
    return rf.source, rf.derive


def unmemoized(node: Cmp) -> Matcher | None:
    """A comparison that ``_build_cmp`` memoizes by its raw source value, without that memo:
    for a caller that remembers results itself (a prefilter plans once per distinct value,
    so a memo per comparison would only ever miss). None for any other comparison."""
    src = memoized_source(node)
    if src is None:
        return None
    source, derive = src
    rf = F.resolve(node.field)
    assert rf is not None
    pred = _value_predicate(node.op, node.values, rf.type.startswith("list["))

    def plain(e: dict, c: Any) -> bool:  # _memoized's compute, on the event's raw value
        raw = e.get(source)
        if raw is None:
            return False
        v = derive(raw) if derive is not None else raw
        return v is not None and pred(v)

    return plain


def _is_memoized(rf: F.ResolvedField, op: str) -> bool:
    """Whether ``_build_cmp`` memoizes a comparison on this field by its raw source value."""
    if rf.source is None:
        return False
    return rf.derive is not None or (not rf.type.startswith("list[") and op in _MEMO_OPS)


def _build_cmp(node: Cmp) -> Matcher:
    rf = F.resolve(node.field)
    assert rf is not None
    key, get, op, vals = rf.key, rf.extract, node.op, node.values
    is_list = rf.type.startswith("list[")

    if op == "exists":
        if key is not None:
            return lambda e, c: e.get(key) is not None
        if rf.source is not None and rf.derive is not None:
            return _memoized(rf.source, rf.derive, lambda v: True)
        return lambda e, c: get(e, c) is not None

    pred = _value_predicate(op, vals, is_list)
    src, derive = rf.source, rf.derive
    if _is_memoized(rf, op):
        assert src is not None
        return _memoized(src, derive, pred)
    if not is_list and key is not None:
        if op == "=":
            (val,) = vals
            return lambda e, c: e.get(key) == val
        if op == "in":
            s = frozenset(vals)
            return lambda e, c: e.get(key) in s

        def keyed(e: dict, c: Any) -> bool:
            v = e.get(key)
            return v is not None and pred(v)

        return keyed

    def extracted(e: dict, c: Any) -> bool:
        v = get(e, c)
        return v is not None and pred(v)

    return extracted


_MEMO_OPS = _STRING_OPS | {"regex", "cidr"}
_MEMO_MAX = 4096


def _memoized(
    source: str, derive: Callable[[Any], Any] | None, pred: Callable[[Any], bool]
) -> Matcher:
    """A comparison on a pure function of one event key, memoized by the key's raw value:
    rules that ask about the same path (or name, address...) pay once per distinct value."""
    memo: HostMemo[Any, bool] = HostMemo(_MEMO_MAX)

    def compute(raw: Any) -> bool:
        if raw is None:
            return False
        v = derive(raw) if derive is not None else raw
        return v is not None and pred(v)

    def memoized(e: dict, c: Any) -> bool:
        raw = e.get(source)
        r = memo.get(raw)
        if r is None:
            r = memo.put(raw, compute(raw))
        return r

    return memoized


def _value_predicate(op: str, vals: tuple[Any, ...], is_list: bool) -> Callable[[Any], bool]:
    if is_list:
        if op == "contains":
            s = frozenset(vals)
            return lambda v: any(x in s for x in v)
        item = _value_predicate(op, vals, False)
        return lambda v: any(x is not None and item(x) for x in v)
    if op == "=":
        (val,) = vals
        return lambda v: v == val
    if op == "!=":
        (val,) = vals
        return lambda v: v != val
    if op == "in":
        s = frozenset(vals)
        return lambda v: v in s
    if op in _NUMERIC_OPS:
        (val,) = vals
        return {
            "<": lambda v: v < val,
            "<=": lambda v: v <= val,
            ">": lambda v: v > val,
            ">=": lambda v: v >= val,
        }[op]
    return _string_predicate(op, tuple(str(v) for v in vals))
