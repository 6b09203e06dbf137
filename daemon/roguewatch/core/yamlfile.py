"""Reading YAML the way every roguewatch file is read: errors that say where and what.

Owns turning PyYAML's errors into ``file:line:column: what was expected`` (rule files,
policies, the daemon's configuration and fixtures alike), so no reader formats them twice.
"""

from __future__ import annotations

from typing import Any

import yaml


def position(exc: yaml.YAMLError) -> tuple[int, int, str]:
    """(line, column, what is wrong) of a YAML error, 1-based; (1, 1, ...) when it has none."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        detail = exc.problem or "syntax error"
        if exc.context:
            detail += f" ({exc.context})"
        if mark is not None:
            return mark.line + 1, mark.column + 1, detail
        return 1, 1, detail
    return 1, 1, str(exc)


def describe(path: str, exc: yaml.YAMLError) -> str:
    """``path:line:column: not valid YAML: problem``."""
    line, column, detail = position(exc)
    return f"{path}:{line}:{column}: not valid YAML: {detail}"


def read(path: str, error: type[Exception]) -> Any:
    """The YAML document of a file; a missing or unreadable file, or bad YAML, raises
    ``error`` with a message a person can act on."""
    try:
        with open(path) as f:
            return yaml.safe_load(f)
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise error(describe(path, exc)) from None
