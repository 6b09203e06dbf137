"""Bounded memo tables for the hot paths: a dict that forgets everything when it is full.

Owns the one eviction policy the per-event caches use (path clean-ups, prefilter answers,
identities, socket bindings...). Forgetting everything at once costs one ``clear()`` and
keeps a hit at the price of a plain ``dict.get``; an LRU would charge every hit for the
bookkeeping. The values are cheap to recompute, so a miss after a clear only costs time.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedDict(dict[K, V]):
    """``put`` clears the table before it would grow past ``max_entries``. Reads are dict's."""

    __slots__ = ("max_entries",)

    def __init__(self, max_entries: int) -> None:
        super().__init__()
        self.max_entries = max_entries

    def put(self, key: K, value: V) -> V:
        if len(self) >= self.max_entries:
            self.clear()
        self[key] = value
        return value


def memoize(fn: Callable[[K], V], max_entries: int) -> Callable[[K], V]:
    """``fn`` with its answers kept in a BoundedDict (``fn`` must not return None)."""
    table: BoundedDict[K, V] = BoundedDict(max_entries)
    get, put = table.get, table.put

    def cached(key: K) -> V:
        v = get(key)
        return v if v is not None else put(key, fn(key))

    cached.cache = table  # type: ignore[attr-defined]
    return cached


class HostMemo(BoundedDict[K, V]):
    """A BoundedDict of answers that depend on slow-changing host facts too (the home
    directories of the passwd database and of the sessions): every one is forgotten at once
    by ``forget_host_memos`` when such a fact changes."""

    __slots__ = ("__weakref__",)

    def __init__(self, max_entries: int) -> None:
        super().__init__(max_entries)
        _HOST_MEMOS[id(self)] = self


# By identity (a dict is unhashable, and two equal dicts are not the same memo).
_HOST_MEMOS: weakref.WeakValueDictionary[int, HostMemo] = weakref.WeakValueDictionary()


def forget_host_memos() -> int:
    """Clear every HostMemo (the host changed under them); how many there were."""
    memos = list(_HOST_MEMOS.values())
    for m in memos:
        m.clear()
    return len(memos)
