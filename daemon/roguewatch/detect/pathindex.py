"""Shared path index: many ``pmatch`` comparisons on one field answered by one walk.

The rules of an event type compare the same few fields (``fd.name``, ``fd.homepath``,
``evt.arg.source``) with ``pmatch`` against a dozen prefix lists. This module owns
:class:`PathIndex`: for each such field, one dict from every prefix of every list to the
comparisons that list belongs to (a bit each). A path's answer for all of them is one walk
up its ancestors, a dict lookup per level, remembered per raw value; each comparison is then
a bit test (``leaf``, for ``condition.build_matcher``). A new path thus costs one walk, not
one prefix test per rule: what keeps rule prefilters cheap when paths rarely repeat
(builds, package installs).

A leaf returns what the comparison's usual matcher returns: the same value derived from
the same event key, the same ancestors tested against the same normalized prefixes
(``fields.under_any``). Comparisons this does not cover (a ``/`` or empty prefix, list
fields, fields not derived from one key) keep their usual matcher.

It must not know rules, events or policies beyond the field table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from roguewatch.core.cache import HostMemo
from roguewatch.detect import condition as C
from roguewatch.detect import fields as F

MEMO_MAX = 8192  # distinct raw values remembered per field (then all forgotten)


class _FieldIndex:
    """Every indexed ``pmatch`` on one field: prefix -> bits of the comparisons it serves."""

    def __init__(self, source: str, derive: Callable[[Any], Any] | None) -> None:
        self.source, self.derive = source, derive
        self.prefixes: dict[str, int] = {}
        self.bits = 0
        self.memo: HostMemo[Any, int] = HostMemo(MEMO_MAX)

    def add(self, prefixes: frozenset[str]) -> int:
        bit = 1 << self.bits
        self.bits += 1
        for p in prefixes:
            self.prefixes[p] = self.prefixes.get(p, 0) | bit
        return bit

    def hits(self, raw: Any) -> int:
        """The bits of every comparison that ``raw`` (the event's value of ``source``)
        satisfies. Raises where the usual matchers raise (a value of the wrong type)."""
        if raw is None:
            return 0
        v = self.derive(raw) if self.derive is not None else raw
        if v is None:
            return 0
        p = F.clean_path(v)
        index, mask = self.prefixes, 0
        while p:  # fields.under_any's walk, for every prefix list at once
            mask |= index.get(p, 0)
            i = p.rfind("/")
            if i <= 0:
                break
            p = p[:i]
        return mask

    def leaf(self, bit: int) -> C.Matcher:
        source, memo, hits = self.source, self.memo, self.hits

        def indexed_pmatch(e: dict, c: Any) -> bool:
            raw = e.get(source)
            mask = memo.get(raw)
            if mask is None:
                mask = memo.put(raw, hits(raw))
            return bool(mask & bit)

        return indexed_pmatch


class PathIndex:
    """The ``pmatch`` comparisons of some condition trees, indexed by field."""

    def __init__(self, cmps: Iterable[C.Cmp]) -> None:
        self._fields: dict[tuple[str, Any], _FieldIndex] = {}
        self._leaves: dict[tuple[str, frozenset[str]], C.Matcher] = {}
        for cmp in cmps:
            key = self._key(cmp)
            if key is None or key in self._leaves:
                continue
            src = C.memoized_source(cmp)
            assert src is not None
            fi = self._fields.get(src)
            if fi is None:
                fi = self._fields[src] = _FieldIndex(*src)
            self._leaves[key] = fi.leaf(fi.add(key[1]))

    @staticmethod
    def _key(cmp: C.Cmp) -> tuple[str, frozenset[str]] | None:
        """``(field, normalized prefixes)`` of a comparison this index can answer."""
        if cmp.op != "pmatch" or C.memoized_source(cmp) is None:
            return None
        rf = F.resolve(cmp.field)
        if rf is None or rf.type != "str":
            return None
        # As condition._string_predicate normalizes them; "/" (everything absolute) and ""
        # follow other rules in fields.under_any, so such lists keep their usual matcher.
        prefixes = frozenset(F.normalize_prefix(str(v)) for v in cmp.values)
        if not prefixes or "/" in prefixes or "" in prefixes:
            return None
        return cmp.field, prefixes

    def __len__(self) -> int:
        return len(self._leaves)

    def leaf(self, cmp: C.Cmp) -> C.Matcher | None:
        """The indexed matcher of a comparison (None: not indexed, use the usual one)."""
        key = self._key(cmp)
        return self._leaves.get(key) if key is not None else None
