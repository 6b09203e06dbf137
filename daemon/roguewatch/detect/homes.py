"""The home directories `~/` means in rules: every account's, and every session's own.

Owns the set of home directories and how a path is written relative to them. A rule's
``~/.bashrc`` must match wherever a shell would read it: the home of every account in the
passwd database (service accounts live in ``/var/lib/...``, ``/srv/...``), re-read when
``/etc/passwd`` changes, and the ``$HOME`` and ``$XDG_CONFIG_HOME`` the session's processes
were exec'd with (an agent given a scratch HOME reads its shell start-up, git and ssh
configuration there; exec events carry both, from /proc/PID/environ). ``/root`` and
``/home/USER`` are homes whether an account names them or not.

A change of the set makes every memo of path answers forget (``core.cache.HostMemo``):
``fd.homepath`` is memoized by raw path. It never judges.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterable

from roguewatch.core.accounts import clean_home as _clean
from roguewatch.core.accounts import passwd_homes as _passwd_homes
from roguewatch.core.cache import forget_host_memos

PASSWD = "/etc/passwd"
_HOME_RE = re.compile(r"^(?:/root|/home/[^/]+)(/.*)?$")
MAX_SESSION_HOMES = 64  # per session


class Homes:
    """Home directories and ``relative(path)``: ``/var/lib/svc/.bashrc`` is ``~/.bashrc``
    when /var/lib/svc is an account's home; a session's XDG_CONFIG_HOME stands for
    ``~/.config``."""

    def __init__(
        self,
        passwd_path: str = PASSWD,
        passwd_homes: Callable[[], Iterable[str]] = _passwd_homes,
    ) -> None:
        self.passwd_path = passwd_path
        self._passwd_homes = passwd_homes
        self._stamp: tuple[int, int] | None = None
        self._passwd: frozenset[str] = frozenset()
        self._sessions: dict[int, dict[str, str]] = {}  # session -> directory -> "~"...
        self._lock = threading.Lock()
        self.generation = 0
        self._table: dict[str, str] = {}  # directory -> what it stands for ("~", "~/.config")
        self.refresh()

    # -- what is known ------------------------------------------------------------------------

    def refresh(self) -> bool:
        """Re-read the passwd database when its file changed (a stat otherwise)."""
        try:
            st = os.stat(self.passwd_path)
            stamp = (st.st_mtime_ns, st.st_ino)
        except OSError:
            stamp = (0, 0)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            homes = frozenset(h for h in map(_clean, self._passwd_homes()) if h)
        except (OSError, KeyError):
            homes = self._passwd
        if homes == self._passwd:
            return False
        self._passwd = homes
        self._rebuild()
        return True

    def learn(self, session: int, home: str | None, config_home: str | None = None) -> bool:
        """A session process was exec'd with this HOME (and XDG_CONFIG_HOME)."""
        mine = self._sessions.get(session)
        new: dict[str, str] = {}
        for d, means in ((home, "~"), (config_home, "~/.config")):
            c = _clean(d) if d else None
            if c and (mine is None or mine.get(c) != means):
                new[c] = means
        if not new:
            return False
        if mine is None:
            mine = self._sessions[session] = {}
        if len(mine) >= MAX_SESSION_HOMES:
            return False
        mine.update(new)
        self._rebuild()
        return True

    def forget(self, session: int) -> None:
        """The session ended: its own homes are no longer anyone's."""
        if self._sessions.pop(session, None):
            self._rebuild()

    def _rebuild(self) -> None:
        table = {h: "~" for h in self._passwd}
        for mine in self._sessions.values():
            table.update(mine)
        with self._lock:
            if table != self._table:
                self._table = table
                self.generation += 1
                forget_host_memos()

    # -- the answer ---------------------------------------------------------------------------

    def relative(self, p: str) -> str | None:
        """``p`` as ``~/...`` relative to the deepest home holding it; None outside every
        home. (``p`` is clean: no ``//``, ``.`` or ``..``.)"""
        table = self._table
        d = p
        while d:
            means = table.get(d)
            if means is not None:
                return means + p[len(d) :]
            i = d.rfind("/")
            if i <= 0:
                break
            d = d[:i]
        m = _HOME_RE.match(p)
        if m is None:
            return None
        return "~" + (m.group(1) or "")

    def directories(self) -> dict[str, str]:
        return dict(self._table)


HOMES = Homes()
