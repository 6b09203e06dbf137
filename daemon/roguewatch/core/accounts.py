"""The accounts of this host as far as home directories go: what `~/` can mean.

Owns reading the home directories of the passwd database (NSS: files, LDAP, whatever the host
uses) and the directories that an account may name as its home but that are no one's home
(daemon's /usr/sbin, sync's /bin, nobody's /nonexistent, /). Both the filesystem sensor
(what to watch for `~/` items) and the evaluator (what `fd.homepath` means) use it.
"""

from __future__ import annotations

import os
import pwd

NOT_HOMES = frozenset({"/", "/bin", "/sbin", "/usr/bin", "/usr/sbin", "/dev", "/proc", "/sys",
                       "/nonexistent", "/usr", "/etc", "/run", "/tmp", "/var", "/boot",
                       "/lib", "/usr/lib", "/var/run"})  # fmt: skip


def clean_home(d: str | None) -> str | None:
    """A home directory as compared everywhere (absolute, normalized), or None when it is
    none (relative, empty, or a system directory an account merely names)."""
    if not d or not d.startswith("/"):
        return None
    d = os.path.normpath(d)
    return None if d in NOT_HOMES or d.startswith("//") else d


def passwd_homes() -> list[str]:
    """Every account's home directory, cleaned, without duplicates, /root first."""
    out: dict[str, None] = {"/root": None}
    try:
        entries = pwd.getpwall()
    except (OSError, KeyError):
        entries = []
    for pw in entries:
        h = clean_home(pw.pw_dir)
        if h:
            out.setdefault(h, None)
    return list(out)
