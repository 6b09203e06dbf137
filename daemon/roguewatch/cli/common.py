"""What every sub-command shares: how it fails (a message and exit status 2, never a
traceback) and how it says it needs root."""

from __future__ import annotations

import os
import sys


def die(msg: str, code: int = 2) -> int:
    print(f"roguewatch: {msg}", file=sys.stderr)
    return code


def need_root(what: str) -> int | None:
    """None as root; otherwise the exit status after saying why root is needed."""
    if os.geteuid() != 0:
        return die(
            f"{what} needs root (it loads BPF probes or reads root-only sockets): run it with sudo"
        )
    return None
