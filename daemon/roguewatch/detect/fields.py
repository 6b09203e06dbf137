"""The field table: every name a rule condition or output template can use.

This module owns the mapping from rule field names (Falco's vocabulary where the concept is the
same: ``proc.name``, ``fd.name``, ``evt.type``...) to extractors that read them from an event
dict and a :class:`ProcessView` (the evaluator's process table and the session's policy), the
policy helpers those extractors need (egress allowlist matching, protected paths, virtual
environment detection) and the generated field reference in ``docs/rules.md``.

It must not know how conditions are parsed (``roguewatch.detect.condition``) or how rule files
are loaded (``roguewatch.detect.ruleset``), and it never does I/O beyond the cached
``pyvenv.cfg`` lookup, the existence of a command on PATH (``fd.shadows_on_path``) and the
home directories ``roguewatch.detect.homes`` keeps.
"""

from __future__ import annotations

import argparse
import math
import os
import posixpath
import pwd
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol

from roguewatch.core.cache import HostMemo, memoize
from roguewatch.detect.homes import HOMES
from roguewatch.policy import egress
from roguewatch.policy.policy import StaticPolicy
from roguewatch.stream import events

Extractor = Callable[[dict, Any], Any]

# ---------------------------------------------------------------------------------------------
# The context an extractor may consult
# ---------------------------------------------------------------------------------------------


class Policy(Protocol):
    """What conditions see of a session's policy."""

    egress_allow: Sequence[str]
    protect: Sequence[str]


class ProcessView(Protocol):
    """The evaluator's view of processes and sessions, as extractors use it.

    ``ancestors(event)`` gives the ancestor process records of the event's process, nearest
    first (parent, grandparent, ... up to the session root), each a dict with at least
    ``pid``, ``exe``, ``comm`` and ``cmdline``. ``in_session(pid, session)`` says whether a pid
    belongs to a session (None: unknown). ``venv_root(path)`` gives the virtual environment
    directory holding a path, or None. ``fork_rate(session)`` is the session's recent fork
    rate per second (None: unknown). ``process(event)`` is the process table's record of the
    event's process (``cmdline``, ``argv``, ``cwd``...), consulted when the event itself lacks
    them (only exec events carry them). :class:`BaseProcessView` has defaults for all.
    """

    policy: Policy
    lists: Mapping[str, Sequence[str]]

    def ancestors(self, event: dict) -> list[dict]: ...

    def in_session(self, pid: int, session: int) -> bool | None: ...

    def venv_root(self, path: str) -> str | None: ...

    def fork_rate(self, session: int) -> float | None: ...

    def live_processes(self, session: int) -> int | None: ...

    def search_paths(self, session: int) -> Sequence[tuple[str, ...]]: ...

    def process(self, event: dict) -> dict | None: ...

    def session_cgroup(self, session: int) -> str | None: ...

    def workspace(self, session: int) -> str | None: ...


@lru_cache(maxsize=4096)
def _venv_root_on_disk(directory: str) -> str | None:
    """The nearest directory at or above ``directory`` holding a ``pyvenv.cfg``."""
    d = directory
    while d and d != "/":
        if os.path.isfile(d + "/pyvenv.cfg"):
            return d
        d = posixpath.dirname(d)
    return None


class BaseProcessView:
    """A ProcessView with no process table: subclass it or use it for offline evaluation."""

    def __init__(self, policy: Policy | None = None) -> None:
        self.policy: Policy = policy if policy is not None else StaticPolicy()
        self.lists: Mapping[str, Sequence[str]] = {}

    def ancestors(self, event: dict) -> list[dict]:
        return []

    def in_session(self, pid: int, session: int) -> bool | None:
        return None

    def venv_root(self, path: str) -> str | None:
        """Looks for ``pyvenv.cfg`` in the parents of ``path`` on this host (cached)."""
        return _venv_root_on_disk(posixpath.dirname(path))

    def fork_rate(self, session: int) -> float | None:
        return None

    def live_processes(self, session: int) -> int | None:
        """Processes of the session alive now (None: unknown)."""
        return None

    def search_paths(self, session: int) -> Sequence[tuple[str, ...]]:
        """The PATHs the host and the session run commands by: the system's default, and
        each PATH the session's processes were exec'd with."""
        return (DEFAULT_PATH,)

    def process(self, event: dict) -> dict | None:
        return None

    def session_cgroup(self, session: int) -> str | None:
        """The session's own cgroup, relative to the cgroup v2 root (None: none known)."""
        return None

    def workspace(self, session: int) -> str | None:
        """The session's workspace: its root's working directory at start (None: unknown)."""
        return None


@dataclass
class StaticProcessView(BaseProcessView):
    """A ProcessView described by data: rule fixtures and tests use it.

    ``processes`` maps pid to session (for ``in_session``), ``ancestry`` maps pid to its
    ancestor records (``default_ancestors`` for any other pid), ``venvs`` lists virtual
    environment directories.
    """

    policy: Policy = field(default_factory=StaticPolicy)
    default_ancestors: list[dict] = field(default_factory=list)
    ancestry: dict[int, list[dict]] = field(default_factory=dict)
    processes: dict[int, int] = field(default_factory=dict)
    venvs: tuple[str, ...] = ()
    fork_rates: dict[int, float] = field(default_factory=dict)
    live: dict[int, int] = field(default_factory=dict)
    env_paths: dict[int, list[str]] = field(default_factory=dict)
    records: dict[int, dict] = field(default_factory=dict)
    lists: Mapping[str, Sequence[str]] = field(default_factory=dict)
    session_cgroups: dict[int, str] = field(default_factory=dict)
    workspaces: dict[int, str] = field(default_factory=dict)

    def session_cgroup(self, session: int) -> str | None:
        return self.session_cgroups.get(session)

    def workspace(self, session: int) -> str | None:
        return self.workspaces.get(session)

    def process(self, event: dict) -> dict | None:
        return self.records.get(event.get("pid", -1))

    def ancestors(self, event: dict) -> list[dict]:
        return self.ancestry.get(event.get("pid", -1), self.default_ancestors)

    def in_session(self, pid: int, session: int) -> bool | None:
        if pid not in self.processes:
            return None
        return self.processes[pid] == session

    def venv_root(self, path: str) -> str | None:
        for v in self.venvs:
            if path.startswith(v.rstrip("/") + "/"):
                return v
        return None

    def fork_rate(self, session: int) -> float | None:
        return self.fork_rates.get(session)

    def live_processes(self, session: int) -> int | None:
        return self.live.get(session)

    def search_paths(self, session: int) -> Sequence[tuple[str, ...]]:
        return (DEFAULT_PATH, *(split_path(p) for p in self.env_paths.get(session, ())))


# ---------------------------------------------------------------------------------------------
# Policy helpers: egress allowlist and protected paths
# ---------------------------------------------------------------------------------------------


# The PATH a host runs commands by when nothing says otherwise (systemd's, and Debian's
# login default for root): /usr/local comes first, so a tool placed there shadows /usr/bin's.
DEFAULT_PATH: tuple[str, ...] = (
    "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin",
)  # fmt: skip
# Where a login shell's start-up puts a user's own bin directories: ahead of everything
# (Debian's ~/.profile, when they exist at login).
LOGIN_BIN_HOMEPATHS = ("~/.local/bin", "~/bin")


@lru_cache(maxsize=256)
def split_path(value: str) -> tuple[str, ...]:
    """A PATH value as its absolute, normalized directories, in order (relative ones, which
    depend on the cwd, are left out)."""
    return tuple(normalize_prefix(d) for d in value.split(":") if d.startswith("/"))


@lru_cache(maxsize=4096)
def _real_dir(d: str) -> str:
    return os.path.realpath(d)


def shadows_on_path(directory: str, name: str, paths: Sequence[tuple[str, ...]]) -> bool:
    """Whether ``directory/name`` comes, on one of ``paths``, before another directory that
    holds a ``name`` (the one the command meant): a later directory that is the same one
    (``/bin`` is ``/usr/bin`` on a merged /usr) is not another."""
    real = _real_dir(directory)
    for entries in paths:
        try:
            i = entries.index(directory)
        except ValueError:
            continue
        for later in entries[i + 1 :]:
            if _real_dir(later) != real and os.path.lexists(f"{later}/{name}"):
                return True
    return False


def _shadows(e: dict, c: Any) -> bool | None:
    p = _path(e, c)
    if p is None:
        return None
    directory, name = posixpath.dirname(p), posixpath.basename(p)
    paths = list(c.search_paths(e.get("session", 0)))
    if _home_of(directory) in LOGIN_BIN_HOMEPATHS:
        paths.append((directory, *DEFAULT_PATH))
    return shadows_on_path(directory, name, paths)


def egress_allowed(policy: Policy | None, addr: str, port: int, proto: str = "") -> bool | None:
    """Whether the policy allows this destination (None: not an IP destination)."""
    specs = tuple(policy.egress_allow) if policy is not None else ()
    return egress.allowed(specs, addr, port or 0, proto or "")


def normalize_prefix(p: str) -> str:
    p = posixpath.normpath(p) if p else p
    return p if p != "//" else "/"


def under_any(path: str, prefixes: frozenset[str]) -> bool:
    """True if ``path`` equals or lies under one of ``prefixes`` (normalized, no trailing /)."""
    if "/" in prefixes:
        return path.startswith("/")
    p = path
    while p:
        if p in prefixes:
            return True
        i = p.rfind("/")
        if i <= 0:
            return False
        p = p[:i]
    return False


@lru_cache(maxsize=256)
def _prefix_index(paths: tuple[str, ...]) -> tuple[tuple[str, ...], frozenset[str]]:
    prefixes = frozenset(normalize_prefix(p) for p in paths if p)
    return tuple(sorted(prefixes)), prefixes


def is_protected(policy: Policy | None, path: str | None) -> bool | None:
    """Whether ``path`` is, or is under, one of the policy's protected paths."""
    if path is None:
        return None
    protect = policy.protect if policy is not None else None
    if not protect:
        return False
    return _is_protected(protect if isinstance(protect, tuple) else tuple(protect), path)


@lru_cache(maxsize=65536)
def _is_protected(protect: tuple[str, ...], path: str) -> bool:
    """Cached by (protected paths, path): the same paths come back event after event."""
    starts, prefixes = _prefix_index(protect)
    path = clean_path(path)
    if "/" not in prefixes and not path.startswith(starts):
        return False
    return under_any(path, prefixes)


# ---------------------------------------------------------------------------------------------
# Value helpers
# ---------------------------------------------------------------------------------------------


def clean_path(p: str) -> str:
    """Collapse ``//``, ``/./`` and ``/../`` so a path cannot dodge a prefix match."""
    if p.startswith("/") and ("//" in p or "/./" in p or "/../" in p or p.endswith(("/.", "/.."))):
        return "/" + posixpath.normpath(p).lstrip("/")
    return p


def home_relative(p: str) -> str | None:
    """``/home/u/.bashrc``, ``/root/.bashrc``, an account's ``/var/lib/svc/.bashrc`` and a
    session's ``$HOME/.bashrc`` become ``~/.bashrc``; None outside every home
    (``roguewatch.detect.homes``)."""
    return HOMES.relative(p)


def label_entropy(label: str) -> float:
    """Shannon entropy of a string in bits per character."""
    if not label:
        return 0.0
    counts: dict[str, int] = {}
    for ch in label.lower():
        counts[ch] = counts.get(ch, 0) + 1
    n = len(label)
    return 0.0 - sum(c / n * math.log2(c / n) for c in counts.values())


def _labels(name: str | None) -> list[str]:
    return [x for x in name.rstrip(".").split(".") if x] if name else []


SIGNALS = {
    1: "SIGHUP", 2: "SIGINT", 3: "SIGQUIT", 4: "SIGILL", 5: "SIGTRAP", 6: "SIGABRT",
    7: "SIGBUS", 8: "SIGFPE", 9: "SIGKILL", 10: "SIGUSR1", 11: "SIGSEGV", 12: "SIGUSR2",
    13: "SIGPIPE", 14: "SIGALRM", 15: "SIGTERM", 16: "SIGSTKFLT", 17: "SIGCHLD", 18: "SIGCONT",
    19: "SIGSTOP", 20: "SIGTSTP", 21: "SIGTTIN", 22: "SIGTTOU", 23: "SIGURG", 24: "SIGXCPU",
    25: "SIGXFSZ", 26: "SIGVTALRM", 27: "SIGPROF", 28: "SIGWINCH", 29: "SIGIO", 30: "SIGPWR",
    31: "SIGSYS",
}  # fmt: skip

OPEN_FLAGS = (
    (0o1, "O_WRONLY"), (0o2, "O_RDWR"), (0o100, "O_CREAT"), (0o200, "O_EXCL"),
    (0o1000, "O_TRUNC"), (0o2000, "O_APPEND"), (0o20000000, "O_TMPFILE"),
)  # fmt: skip

NAMESPACE_FLAGS = (
    (0x00020000, "mnt"), (0x02000000, "cgroup"), (0x04000000, "uts"), (0x08000000, "ipc"),
    (0x10000000, "user"), (0x20000000, "pid"), (0x40000000, "net"), (0x00000080, "time"),
)  # fmt: skip


@lru_cache(maxsize=4096)
def _flag_names(value: int | None, table: tuple[tuple[int, str], ...]) -> tuple[str, ...] | None:
    """Names of the bits set (cached: flag values repeat, and this is on the fork path)."""
    if value is None:
        return None
    return tuple(name for bit, name in table if value & bit)


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """A rule field. ``key`` is set when the value is ``event.get(key)`` (the fast path).

    ``indexed`` fields take ``[n]`` (``proc.aname[2]``); ``index_extract(n)`` builds the
    extractor for one index and ``extract`` serves the name without an index.
    """

    name: str
    type: str
    doc: str
    extract: Extractor
    key: str | None = None
    group: str = "evt"
    index_extract: Callable[[int], Extractor] | None = None
    # A value that is a pure function of one event key: derive(event[source]). Conditions
    # memoize comparisons on such fields by the raw value.
    source: str | None = None
    derive: Callable[[Any], Any] | None = None
    # A field computed by ``extract`` that reads nothing but these event keys (present or
    # absent) and policy attributes (``policy.NAME``), whose values are hashable: its value
    # is a pure function of them, so rule prefilters may cache a comparison on it by them.
    inputs: tuple[str, ...] | None = None

    @property
    def indexed(self) -> bool:
        return self.index_extract is not None


FIELDS: dict[str, Field] = {}

_GROUP_DOCS = {
    "evt": "The event itself.",
    "proc": "The process that acted, and its ancestors (from the process table).",
    "user": "Who the process runs as.",
    "session": "The agent session the process belongs to.",
    "fd": "The file or socket acted on.",
    "dns": "DNS queries (sendto/sendmsg to port 53 whose payload the collector decoded).",
    "policy": "The session's policy.",
    "evt.arg": "Event-specific arguments, as listed per event type in docs/events.md.",
}


def _add(
    name: str,
    type_: str,
    doc: str,
    extract: Extractor | None = None,
    *,
    key: str | None = None,
    index_extract: Callable[[int], Extractor] | None = None,
    inputs: tuple[str, ...] | None = None,
) -> None:
    if extract is None:
        assert key is not None
        k = key

        def extract(e: dict, ctx: Any, _k: str = k) -> Any:
            return e.get(_k)

    group = "evt.arg" if name.startswith("evt.arg.") else name.split(".", 1)[0]
    FIELDS[name] = Field(name, type_, doc, extract, key, group, index_extract, key, None, inputs)


def _add_derived(
    name: str, type_: str, doc: str, source: str, derive: Callable[[Any], Any], extract=None
) -> None:
    """A field computed from one event key alone (``derive`` never sees None)."""
    if extract is None:

        def extract(e: dict, ctx: Any) -> Any:
            raw = e.get(source)
            return derive(raw) if raw is not None else None

    group = name.split(".", 1)[0]
    FIELDS[name] = Field(name, type_, doc, extract, None, group, None, source, derive)


# Derived path values, cached by the raw path: many rules ask about the same event's path and
# paths repeat (rule comparisons derive through these too: a new path is cleaned once, not
# once per rule). Each cache is cleared when it grows past _CACHE_MAX entries.
_CACHE_MAX = 65536
_cleaned = memoize(clean_path, _CACHE_MAX)
_dir_of = memoize(lambda p: posixpath.dirname(_cleaned(p)), _CACHE_MAX)
_base_of = memoize(lambda p: posixpath.basename(_cleaned(p)), _CACHE_MAX)
_home: HostMemo[str, str | None] = HostMemo(_CACHE_MAX)  # None is an answer here


def _home_of(p: str) -> str | None:
    try:
        return _home[p]
    except KeyError:
        return _home.put(p, home_relative(_cleaned(p)))


def _path(e: dict, ctx: Any) -> str | None:
    p = e.get("path")
    return None if p is None else _cleaned(p)


def _dirname(e: dict, ctx: Any) -> str | None:
    p = e.get("path")
    return None if p is None else _dir_of(p)


def _basename(e: dict, ctx: Any) -> str | None:
    p = e.get("path")
    return None if p is None else _base_of(p)


def _homepath(e: dict, ctx: Any) -> str | None:
    p = e.get("path")
    return None if p is None else _home_of(p)


def _own(key: str) -> Extractor:
    """An attribute of the process: from the event, else from the process table."""

    def extract(e: dict, ctx: Any) -> Any:
        v = e.get(key)
        if v is None:
            rec = ctx.process(e)
            if rec is not None:
                return rec.get(key)
        return v

    return extract


def _argv0(e: dict, ctx: Any) -> str | None:
    argv = _own_argv(e, ctx)
    return argv[0] if argv else None


def _args(e: dict, ctx: Any) -> str | None:
    argv = _own_argv(e, ctx)
    if argv is not None:
        return " ".join(argv[1:])
    cmdline = _own_cmdline(e, ctx)
    if cmdline is None:
        return None
    parts = cmdline.split(" ", 1)
    return parts[1] if len(parts) > 1 else ""


# systemd unit types: a unit is named ``NAME[@INSTANCE].TYPE``; its drop-ins live in
# ``NAME.TYPE.d/`` and its enablement links in ``*.wants/`` and ``*.requires/``.
_UNIT_SUFFIX = re.compile(
    r"(@[^/]*)?\.(service|socket|timer|path|mount|automount|target|slice|scope|swap|device)$"
)


def unit_stem(word: str) -> str | None:
    """``auditd`` for ``auditd.service``, ``getty`` for ``getty@tty1.service``; None when
    ``word`` is no unit name."""
    m = _UNIT_SUFFIX.search(word)
    return word[: m.start()] if m and m.start() > 0 else None


def _unit_of_path(p: str) -> str | None:
    """The unit a path under a unit directory configures: the file's own name
    (``/etc/systemd/system/auditd.service``, a ``*.wants/`` link) or its drop-in
    directory's (``/etc/systemd/system/auditd.service.d/override.conf``)."""
    c = _cleaned(p)
    stem = unit_stem(_base_of(c))
    if stem is None:
        d = _base_of(_dir_of(c))
        if d.endswith(".d"):
            stem = unit_stem(d[:-2])
    return stem


def _argv_units(e: dict, ctx: Any) -> list[str] | None:
    """The arguments after argv[0], each with a unit suffix (``.service``...) removed."""
    argv = _own_argv(e, ctx)
    if argv is None:
        return None
    return [unit_stem(a) or a for a in argv[1:]]


def _sets_id(mode: int) -> bool:
    return bool(mode & 0o6000)


def _argv0_differs(e: dict, ctx: Any) -> bool | None:
    argv, filename = _own_argv(e, ctx), e.get("filename") or e.get("exe")
    if not argv or filename is None:
        return None
    a0 = posixpath.basename(argv[0]).lstrip("-")
    return a0 != posixpath.basename(filename)


def _ancestor(n: int, key: str) -> Extractor:
    """Ancestor ``n`` (1: parent) attribute; n == 0 is the process itself."""
    own = {"comm": "comm", "pid": "pid", "exe": "exe", "cmdline": "cmdline"}[key]

    def extract(e: dict, ctx: Any) -> Any:
        if n == 0:
            return e.get(own)
        anc = ctx.ancestors(e)
        return anc[n - 1].get(key) if len(anc) >= n else None

    return extract


def _ancestors_all(key: str) -> Extractor:
    def extract(e: dict, ctx: Any) -> list | None:
        return [a.get(key) for a in ctx.ancestors(e)]

    return extract


def _parent(key: str) -> Extractor:
    def extract(e: dict, ctx: Any) -> Any:
        anc = ctx.ancestors(e)
        return anc[0].get(key) if anc else None

    return extract


def _remote_ip(e: dict, ctx: Any) -> str | None:
    return e.get("addr") if e.get("type") in _REMOTE_TYPES else None


def _remote_port(e: dict, ctx: Any) -> int | None:
    return e.get("port") if e.get("type") in _REMOTE_TYPES else None


def _local_ip(e: dict, ctx: Any) -> str | None:
    return e.get("addr") if e.get("type") in _LOCAL_TYPES else None


def _local_port(e: dict, ctx: Any) -> int | None:
    return e.get("port") if e.get("type") in _LOCAL_TYPES else None


_REMOTE_TYPES = frozenset({"connect", "sendto", "sendmsg"})
_LOCAL_TYPES = frozenset({"bind", "listen"})
_INET = frozenset({"inet", "inet6"})


def _egress_allowed_field(e: dict, ctx: Any) -> bool | None:
    addr = e.get("addr")
    if addr is None or e.get("family") not in _INET:
        return None
    return egress_allowed(ctx.policy, addr, e.get("port") or 0, e.get("proto") or "")


def _target_in_session(e: dict, ctx: Any) -> bool | None:
    target, session = e.get("target"), e.get("session")
    if not isinstance(target, int) or session is None:
        return None
    if target == 0:
        return True  # the caller's own process group
    if target == -1:
        return False  # every process the caller may signal
    return ctx.in_session(abs(target), session)


def _cgroup_in_session(e: dict, ctx: Any) -> bool | None:
    """A cgroup_attach's new cgroup is the moved task's session's own, or beneath it."""
    cg, session = e.get("cgroup"), e.get("target_session")
    if not isinstance(cg, str) or not session:
        return None
    own = ctx.session_cgroup(session)
    if not own:
        return None  # a session with no cgroup of its own (adopted): unknown
    return cg == own or cg.startswith(own.rstrip("/") + "/")


def _in_venv(e: dict, ctx: Any) -> bool | None:
    p = _path(e, ctx)
    if p is None:
        return None
    return ctx.venv_root(p) is not None


def _in_workspace(e: dict, ctx: Any) -> bool | None:
    p = _path(e, ctx)
    ws = ctx.workspace(e.get("session", 0)) if p is not None else None
    if ws is None:
        return None
    ws = ws.rstrip("/")
    if not ws:
        return None  # started in /: no workspace to speak of
    return p == ws or p.startswith(ws + "/")


def _first_of(*keys: str) -> Extractor:
    def extract(e: dict, ctx: Any) -> Any:
        for k in keys:
            v = e.get(k)
            if v is not None:
                return v
        return None

    return extract


@lru_cache(maxsize=1024)
def _user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return None


# evt
_add("evt.type", "str", "event type (`open`, `connect`, `exec`...; see docs/events.md)", key="type")
_add("evt.res", "int", "the syscall's result: negative errno on failure", key="ret")
_add(
    "evt.failed",
    "bool",
    "the syscall failed (`evt.res < 0`)",
    lambda e, c: (e["ret"] < 0) if e.get("ret") is not None else None,
    inputs=("ret",),
)
_add("evt.ts", "int", "event time, nanoseconds since the Unix epoch", key="ts")
_add(
    "evt.repeats",
    "int",
    "how many identical calls the event stands for: more than 1 on an event the kernel folded "
    "(the repeats of the event before it; see docs/events.md), else 1",
    lambda e, c: e.get("repeats", 1),
    inputs=("repeats",),
)
_add("evt.flags", "list[str]", "the event's markers: `guard`, `procfs`, `adopted`...", key="flags")
_add(
    "evt.guard",
    "bool",
    "the event is aimed at roguewatch itself (`guard` marker; from any process)",
    lambda e, c: "guard" in (e.get("flags") or ()),
)
_add_derived(
    "evt.signame",
    "str",
    "the signal's name (`SIGTERM`), for kill and rt_sigaction",
    "sig",
    lambda sig: SIGNALS.get(sig, str(sig)),
)
_add(
    "evt.target_in_session",
    "bool",
    "the kill/ptrace target is in the caller's session (target 0: own group, yes; -1: every "
    "process, no; -PGID: the group leader); unknown when the process table does not know it",
    _target_in_session,
)
_add(
    "evt.cgroup_in_session",
    "bool",
    "a cgroup_attach's new cgroup is the moved task's session's own cgroup or beneath it "
    "(unknown for a session without a cgroup of its own)",
    _cgroup_in_session,
)
_add(
    "evt.target_is_self",
    "bool",
    "the kill/ptrace target is the caller itself",
    lambda e, c: e.get("target") == e.get("pid") if e.get("target") is not None else None,
    inputs=("target", "pid"),
)
_add(
    "evt.namespaces",
    "list[str]",
    "namespaces a fork, unshare or setns creates or enters (`mnt`, `pid`, `user`, `net`...)",
    lambda e, c: _flag_names(e.get("ns_flags", e.get("clone_flags")), NAMESPACE_FLAGS),
    inputs=("ns_flags", "clone_flags"),
)
_add(
    "evt.arg.flags",
    "int",
    "the call's own flags: open, rename, message, mount, clone, memfd or namespace flags",
    _first_of(
        "open_flags",
        "rename_flags",
        "msg_flags",
        "mount_flags",
        "clone_flags",
        "memfd_flags",
        "ns_flags",
    ),
)

# proc
_add("proc.pid", "int", "process id", key="pid")
_add("proc.tid", "int", "thread id", key="tid")
_add("proc.ppid", "int", "parent process id", key="ppid")
_add("proc.name", "str", "the comm (at most 15 characters; set by exec or PR_SET_NAME)", key="comm")
_add(
    "proc.exe",
    "str",
    "executable path (unlike Falco, not argv[0]: that is `proc.argv0`)",
    key="exe",
)
_add("proc.exepath", "str", "executable path (same as `proc.exe`; Falco's name)", key="exe")
_add_derived("proc.exe_name", "str", "basename of the executable path", "exe", posixpath.basename)
_own_argv = _own("argv")
_own_cmdline = _own("cmdline")
_add("proc.cmdline", "str", "full command line, arguments joined by spaces", _own_cmdline)
_add("proc.argv", "list[str]", "the arguments, argv[0] first (up to 20)", _own_argv)
_add("proc.argv0", "str", "argv[0] as passed to execve (`exec -a` changes it)", _argv0)
_add(
    "proc.argv0_differs",
    "bool",
    "basename of argv[0] (without a login shell's `-`) is not the executed file's basename",
    _argv0_differs,
)
_add("proc.args", "str", "the arguments after argv[0], joined by spaces", _args)
_add(
    "proc.argv_units",
    "list[str]",
    "the arguments after argv[0] with a systemd unit suffix removed (`auditd.service`, "
    "`auditd`, `getty@tty1.service`: `auditd`, `auditd`, `getty`)",
    _argv_units,
)
_add("proc.cwd", "str", "working directory (at exec)", _own("cwd"))
_add("proc.exec_id", "str", "stable process identity (`pid-start`)", key="exec_id")
_add("proc.pexec_id", "str", "exec id of the parent", key="pexec_id")
_add("proc.filename", "str", "the program path given to execve (exec events)", key="filename")
_add("proc.pname", "str", "parent's comm", _parent("comm"))
_add("proc.pexe", "str", "parent's executable path", _parent("exe"))
_add("proc.pcmdline", "str", "parent's command line", _parent("cmdline"))
_add(
    "proc.aname",
    "list[str]",
    "comm of ancestor n (`proc.aname[1]` is the parent, `[0]` the process itself); without "
    "an index, the list of every ancestor's comm, so `proc.aname = bash` matches any ancestor",
    _ancestors_all("comm"),
    index_extract=lambda n: _ancestor(n, "comm"),
)
_add(
    "proc.apid",
    "list[int]",
    "pid of ancestor n; without an index, every ancestor's pid",
    _ancestors_all("pid"),
    index_extract=lambda n: _ancestor(n, "pid"),
)
_add(
    "proc.aexe",
    "list[str]",
    "executable path of ancestor n; without an index, every ancestor's",
    _ancestors_all("exe"),
    index_extract=lambda n: _ancestor(n, "exe"),
)
_add(
    "proc.acmdline",
    "list[str]",
    "command line of ancestor n; without an index, every ancestor's",
    _ancestors_all("cmdline"),
    index_extract=lambda n: _ancestor(n, "cmdline"),
)

# user, session
_add("user.uid", "int", "real user id", key="uid")
_add(
    "user.name",
    "str",
    "user name of the uid on this host",
    lambda e, c: _user_name(e["uid"]) if e.get("uid") is not None else None,
)
_add("group.gid", "int", "real group id", key="gid")
_add("session.id", "int", "the agent session id (0: not in a session)", key="session")
_add(
    "session.fork_rate",
    "float",
    "forks per second in the session recently (from the evaluator's counters)",
    lambda e, c: c.fork_rate(e["session"]) if e.get("session") is not None else None,
)
_add(
    "session.processes",
    "int",
    "processes of the session alive now (from the evaluator's process table)",
    lambda e, c: c.live_processes(e["session"]) if e.get("session") is not None else None,
)

# fd: files
_add_derived(
    "fd.name",
    "str",
    "path acted on (the destination of a rename or link), with `//`, `.` and `..` collapsed",
    "path",
    _cleaned,
    _path,
)
_add_derived(
    "fd.directory",
    "str",
    "directory of `fd.name`",
    "path",
    _dir_of,
    _dirname,
)
_add_derived(
    "fd.filename",
    "str",
    "last component of `fd.name`",
    "path",
    _base_of,
    _basename,
)
_add_derived(
    "fd.homepath",
    "str",
    "`fd.name` relative to a home directory as `~/...`: `/root`, `/home/USER`, every "
    "account's home in the passwd database, and the `$HOME` (and `$XDG_CONFIG_HOME`, as "
    "`~/.config`) the session's processes were exec'd with; absent elsewhere, so `~/.bashrc` "
    "matches `/home/u/.bashrc` but not `/home/u/proj/.bashrc`",
    "path",
    _home_of,
    _homepath,
)
_add_derived(
    "fd.source_homepath",
    "str",
    "`evt.arg.source` relative to a home directory, like `fd.homepath`",
    "source",
    _home_of,
)
_add(
    "fd.shadows_on_path",
    "bool",
    "`fd.name` comes, on the system's default PATH, on a PATH the session's processes were "
    "exec'd with, or in a home's `~/.local/bin` or `~/bin` (which login shells put first), "
    "before another directory holding a file of the same name: it shadows that command",
    _shadows,
)
_add(
    "fd.in_venv",
    "bool",
    "`fd.name` lies inside a Python virtual environment (a parent holds `pyvenv.cfg`)",
    _in_venv,
)
_add(
    "fd.in_workspace",
    "bool",
    "`fd.name` lies in the session's workspace (its root's working directory when it "
    "started); absent when the session's is unknown",
    _in_workspace,
)
_add(
    "fd.protected",
    "bool",
    "`fd.name` is, or is under, a path in the policy's `protect` list",
    lambda e, c: is_protected(c.policy, _path(e, c)),
    inputs=("path", "policy.protect"),
)
_add(
    "fd.source_protected",
    "bool",
    "`evt.arg.source` (a rename's old path) is, or is under, a protected path",
    lambda e, c: is_protected(c.policy, e.get("source")),
    inputs=("source", "policy.protect"),
)
_add_derived(
    "fd.open_flags",
    "list[str]",
    "names of the open's flags: `O_WRONLY`, `O_RDWR`, `O_CREAT`, `O_EXCL`, `O_TRUNC`, "
    "`O_APPEND`, `O_TMPFILE`",
    "open_flags",
    lambda v: _flag_names(v, OPEN_FLAGS),
)

_add_derived(
    "fd.unit",
    "str",
    "the systemd unit a path configures, without its suffix: `auditd` for "
    "`/etc/systemd/system/auditd.service`, its drop-ins (`auditd.service.d/x.conf`) and its "
    "`*.wants/` links; absent for other paths",
    "path",
    _unit_of_path,
)
_add_derived(
    "fd.sets_id",
    "bool",
    "the mode a chmod sets, or a creating open gives, has the setuid or setgid bit",
    "mode",
    _sets_id,
)

# fd: sockets
_add(
    "fd.sockfamily",
    "str",
    "socket family: `inet`, `inet6`, `unix`, `netlink`, `packet`",
    key="family",
)
_add("fd.l4proto", "str", "`tcp`, `udp`, `raw` or empty", key="proto")
_add(
    "fd.rip",
    "str",
    "remote address of a connect, sendto or sendmsg",
    _remote_ip,
    inputs=("type", "addr"),
)
_add(
    "fd.rport",
    "int",
    "remote port of a connect, sendto or sendmsg",
    _remote_port,
    inputs=("type", "port"),
)
_add("fd.lip", "str", "local address of a bind or listen", _local_ip, inputs=("type", "addr"))
_add("fd.lport", "int", "local port of a bind or listen", _local_port, inputs=("type", "port"))
_add(
    "fd.sip",
    "str",
    "server address: the remote end of a connect/send, the local end of a bind/listen",
    key="addr",
)
_add("fd.sport", "int", "server port, like `fd.sip`", key="port")

# dns
_add("dns.name", "str", "the query name", key="dns_name")
_add_derived("dns.name_len", "int", "length of the query name", "dns_name", len)
_add_derived(
    "dns.max_label_len",
    "int",
    "length of the longest label of the query name",
    "dns_name",
    lambda n: max(map(len, ls)) if (ls := _labels(n)) else None,
)
_add_derived(
    "dns.label_entropy",
    "float",
    "highest Shannon entropy (bits per character) among the query name's labels",
    "dns_name",
    lambda n: max(label_entropy(x) for x in ls) if (ls := _labels(n)) else None,
)

# policy
_add(
    "policy.egress_allowed",
    "bool",
    "the destination (`fd.sip`, port, protocol) is in the session policy's egress allowlist; "
    "absent for non-IP sockets",
    _egress_allowed_field,
    inputs=("addr", "family", "port", "proto", "policy.egress_allow"),
)
_add(
    "policy.mode",
    "str",
    "the session policy's mode: `enforce` or `observe`",
    lambda e, c: getattr(c.policy, "mode", "enforce"),
    inputs=("policy.mode",),
)


def _add_event_args() -> None:
    """``evt.arg.NAME`` for every event-specific field of roguewatch.events."""
    seen: dict[str, tuple[set[str], list[str], list[str]]] = {}
    for t in events.EVENT_TYPES:
        for f in t.fields:
            types, docs, evts = seen.setdefault(f.name, (set(), [], []))
            types.add(f.type)
            if f.doc not in docs:
                docs.append(f.doc)
            evts.append(t.name)
    for name, (types, docs, evts) in sorted(seen.items()):
        if types <= {"int", "str", "bool", "list[str]"}:
            type_ = types.pop() if len(types) == 1 else "any"
        else:
            continue  # bytes and dicts are not comparable
        full = f"evt.arg.{name}"
        if full in FIELDS:
            continue
        doc = "; ".join(docs) + " (" + ", ".join(f"`{x}`" for x in evts) + ")"
        _add(full, type_, doc, key=name)


_add_event_args()

# Event types that rules may name besides the kernel's (the evaluator synthesises them).
SYNTHETIC_EVENT_TYPES: dict[str, str] = {
    "session_end": "a session ended; the evaluator emits it once per process still alive "
    "(with that process's fields), so rules can act on survivors",
}

EVENT_TYPE_NAMES: frozenset[str] = frozenset(events.NAMES) | frozenset(SYNTHETIC_EVENT_TYPES)

_INDEX_RE = re.compile(r"^([a-z][a-z0-9_.]*)\[(\d+)\]$")


@dataclass(frozen=True)
class ResolvedField:
    """A field name as used in a rule (perhaps with an index), ready to extract."""

    name: str
    field: Field
    extract: Extractor
    key: str | None
    type: str
    source: str | None = None
    derive: Callable[[Any], Any] | None = None
    inputs: tuple[str, ...] | None = None


def resolve(name: str) -> ResolvedField | None:
    """The field for ``name`` (``proc.aname[2]`` included), or None if there is none."""
    f = FIELDS.get(name)
    if f is not None:
        return ResolvedField(name, f, f.extract, f.key, f.type, f.source, f.derive, f.inputs)
    m = _INDEX_RE.match(name)
    if m is None:
        return None
    f = FIELDS.get(m.group(1))
    if f is None or f.index_extract is None:
        return None
    item_type = f.type[5:-1] if f.type.startswith("list[") else f.type
    return ResolvedField(name, f, f.index_extract(int(m.group(2))), None, item_type)


# ---------------------------------------------------------------------------------------------
# docs/rules.md
# ---------------------------------------------------------------------------------------------

GENERATED_MARKER = "<!-- generated from daemon/roguewatch/fields.py: edit the table there -->"


def markdown() -> str:
    """The field reference: the part of docs/rules.md after ``GENERATED_MARKER``."""
    out = [GENERATED_MARKER, "", "## Field reference", ""]
    out.append(
        "A field an event does not have is absent: every comparison on it is false (and `not` "
        "of that comparison true); test for it with `exists`."
    )
    groups: dict[str, list[Field]] = {}
    for f in FIELDS.values():
        groups.setdefault(f.group, []).append(f)
    for g in ("evt", "proc", "user", "group", "session", "fd", "dns", "policy", "evt.arg"):
        if g not in groups:
            continue
        out += ["", f"### `{g}.*`", ""]
        if g in _GROUP_DOCS:
            out += [_GROUP_DOCS[g], ""]
        out += ["| field | type | meaning |", "| --- | --- | --- |"]
        for f in groups[g]:
            name = f"{f.name}[n]" if f.indexed else f.name
            doc = f.doc.replace("|", "\\|")
            out.append(f"| `{name}` | {f.type} | {doc} |")
    out += ["", "### Event types beyond docs/events.md", ""]
    out += ["| `evt.type` | meaning |", "| --- | --- |"]
    out += [f"| `{k}` | {v} |" for k, v in SYNTHETIC_EVENT_TYPES.items()]
    return "\n".join(out) + "\n"


def update_doc(text: str) -> str:
    """``text`` (docs/rules.md) with everything from ``GENERATED_MARKER`` on regenerated."""
    head = text.split(GENERATED_MARKER, 1)[0]
    return head.rstrip("\n") + "\n\n" + markdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="print the rule field reference")
    parser.add_argument("--markdown", action="store_true", help="markdown (docs/rules.md)")
    parser.add_argument("--update", metavar="FILE", help="regenerate the reference in FILE")
    args = parser.parse_args(argv)
    if args.update:
        with open(args.update, encoding="utf-8") as f:
            text = update_doc(f.read())
        with open(args.update, "w", encoding="utf-8") as f:
            f.write(text)
        return 0
    sys.stdout.write(markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
