"""Path spellings the filesystem sensor and the baselines agree on.

Owns ``canonical`` (absolute, parent directories resolved, the last component kept as it
is, so a symlink is watched and baselined as itself) and ``is_under``.
"""

from __future__ import annotations

import os


def canonical(path: str) -> str:
    """``path`` absolute, with its parent directories resolved and its last component kept."""
    path = os.path.abspath(path)
    if path == "/":
        return path
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def is_under(path: str, root: str) -> bool:
    """``path`` is ``root`` or lies beneath it (both canonical)."""
    return path == root or path.startswith(root.rstrip("/") + "/")
