"""Rule prefilters: for one event type, the rules an event can match, decided once per
distinct tuple of the few values that the rules' conditions test.

Most rules look first at values that depend on one event key alone: ``fd.name pmatch
(...)`` on the path, ``proc.name in (...)`` on the comm, ``evt.arg.sig = 15``. This module
owns, for one event type:

- each rule's *gate*: its condition with only the comparisons that are pure functions of a
  few event keys and policy attributes (``condition.inputs``), weakened so that it holds
  whenever the whole condition holds (``condition.necessary``). A rule whose every
  comparison is pure has its whole condition as gate (it is *exact*);
- a memo from an event's values of every key the gates read to the *steps* left for it: a
  gate that fails drops its rule, an exact rule whose gate holds matches without running
  anything, any other rule whose gate holds runs its matcher.

So one dict lookup per event replaces a prefix, glob or set test per rule, and the many
rules about paths cost nothing for a path that none of them is about.

Results are exactly those of running every matcher: a gate that raises (a malformed value)
keeps its rule's matcher, which raises again and is ignored as it always was; an event with
a value that cannot be hashed, or a context without the policy a gate reads, runs every
matcher.

It must not know rule files, alerts or the process table (``roguewatch.detect.ruleset``, the
evaluator): it sees rules as opaque objects, and the context only through ``ctx.policy``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from roguewatch.core.cache import HostMemo
from roguewatch.detect import condition as C
from roguewatch.detect.pathindex import PathIndex

R = TypeVar("R")

MEMO_MAX = 8192  # distinct value tuples remembered per event type (then all forgotten)
# What RuleSet.match has always ignored from a matcher: a field of the wrong type.
MATCH_ERRORS = (TypeError, AttributeError, ValueError, KeyError, IndexError)

# A step: the rule, and the matcher still to run (None: the memo already knows it matches).
Step = tuple[Any, "C.Matcher | None"]


class TypeFilter(Generic[R]):
    """The rules of one event type, gated by a memo on the values their conditions read.

    ``entries`` are ``(rule, matcher, tree)`` in definition order: the matcher and the
    condition tree both specialized to this event type (``CompiledCondition.for_event_type``
    and ``condition.specialize``). ``match(event, ctx)`` gives the rules the event matches,
    in that order, exactly as running every matcher would.
    """

    def __init__(self, entries: Sequence[tuple[R, C.Matcher, C.Node | bool]]) -> None:
        self.all: tuple[tuple[R, C.Matcher], ...] = tuple((r, m) for r, m, _ in entries)
        inputs: dict[str, None] = {}  # every key and policy attribute a gate reads, in order
        gates: list[tuple[R, C.Matcher, C.Node | None, bool]] = []
        for rule, m, tree in entries:
            gate = C.necessary(tree, _cacheable) if not isinstance(tree, bool) else True
            if isinstance(gate, bool):  # nothing known (a False tree is never here)
                gates.append((rule, m, None, False))
                continue
            for cmp in C.comparisons(gate):
                inputs.update(dict.fromkeys(C.inputs(cmp) or ()))
            exact = all(_cacheable(cmp) for cmp in C.comparisons(tree))
            gates.append((rule, m, gate, exact))
        # Gates run once per distinct tuple of values: their path prefix tests share one walk
        # per new path (roguewatch.pathindex), their other tests keep no memo of their own.
        self.paths = PathIndex(c for _, _, g, _ in gates if g is not None for c in C.comparisons(g))

        def leaf(cmp: C.Cmp) -> C.Matcher | None:
            return self.paths.leaf(cmp) or C.unmemoized(cmp)

        # (rule, matcher, gate matcher or None when nothing is known, exact: gate == cond)
        plan = [
            (rule, m, C.build_matcher(g, leaf) if g is not None else None, exact)
            for rule, m, g, exact in gates
        ]
        # Every event met here has this filter's type: its "type" is no part of the key.
        inputs.pop("type", None)
        self.inputs: tuple[str, ...] = tuple(inputs)
        self._plan = tuple(plan)
        self._memo: HostMemo[Any, tuple[Step, ...]] = HostMemo(MEMO_MAX)
        self._key = _key_function(self.inputs)
        # With no gate at all there is nothing to remember: every event runs every matcher.
        self.match: Callable[[dict, Any], list[R]] = (
            self._match_gated if self.inputs else self._match_all if self.all else _no_rules
        )

    def steps(self, event: dict, ctx: Any) -> tuple[Step, ...]:
        """The steps for the event's values of ``inputs``, planned once per distinct tuple.
        Raises TypeError when a value cannot be hashed, AttributeError when ``ctx`` has no
        policy attribute that a gate reads."""
        k = self._key(event, ctx)
        try:
            return self._memo[k]
        except KeyError:
            pass
        return self._memo.put(k, self._plan_for(event, ctx))

    def _plan_for(self, event: dict, ctx: Any) -> tuple[Step, ...]:
        out: list[Step] = []
        for rule, m, gate, exact in self._plan:
            if gate is None:
                out.append((rule, m))
                continue
            try:
                holds = gate(event, ctx)
            except Exception:  # the matcher will meet it again, and handle it as it always has
                out.append((rule, m))
                continue
            if holds:
                out.append((rule, None if exact else m))
        return tuple(out)

    def _match_gated(self, event: dict, ctx: Any) -> list[R]:
        try:
            steps = self._memo[self._key(event, ctx)]  # steps() inlined: the hot path
        except KeyError:
            steps = self.steps(event, ctx)
        except (TypeError, AttributeError):  # an unhashable value, a context without policy
            return self._match_all(event, ctx)
        if not steps:
            return []
        out = []
        for rule, m in steps:
            if m is None:
                out.append(rule)
                continue
            try:
                if m(event, ctx):
                    out.append(rule)
            except MATCH_ERRORS:
                pass
        return out

    def _match_all(self, event: dict, ctx: Any) -> list[R]:
        out = []
        for rule, m in self.all:
            try:
                if m(event, ctx):
                    out.append(rule)
            except MATCH_ERRORS:
                pass
        return out


def _no_rules(event: dict, ctx: Any) -> list:
    return []


def _cacheable(cmp: C.Cmp) -> bool:
    return C.inputs(cmp) is not None


_ABSENT = object()  # a key's value in a memo key when the event lacks the key


def _key_function(inputs: tuple[str, ...]) -> Callable[[dict, Any], Any]:
    """The memo key of an event: its values of ``inputs`` (event keys, absent ones told
    apart from None, and ``policy.NAME`` read from ``ctx.policy``); a lone event key is its
    value, not a 1-tuple. Spelled out for the usual sizes (padded with a key no event has):
    half the cost of a generic loop."""
    keys = tuple(i for i in inputs if not i.startswith("policy."))
    attrs = tuple(i[len("policy.") :] for i in inputs if i.startswith("policy."))
    z = _ABSENT
    if len(attrs) > 1 or len(keys) > 5:
        return lambda e, c: (
            *(getattr(c.policy, x) for x in attrs),
            *(e.get(k, z) for k in keys),
        )
    if not attrs and len(keys) == 1:
        (a,) = keys
        return lambda e, c: e.get(a, z)
    a, b, d, f, g = keys + ("",) * (5 - len(keys))
    if not attrs:
        if len(keys) <= 3:
            return lambda e, c: (e.get(a, z), e.get(b, z), e.get(d, z))
        return lambda e, c: (e.get(a, z), e.get(b, z), e.get(d, z), e.get(f, z), e.get(g, z))
    (x,) = attrs
    if len(keys) <= 3:
        return lambda e, c: (getattr(c.policy, x), e.get(a, z), e.get(b, z), e.get(d, z))
    return lambda e, c: (
        getattr(c.policy, x),
        e.get(a, z),
        e.get(b, z),
        e.get(d, z),
        e.get(f, z),
        e.get(g, z),
    )
