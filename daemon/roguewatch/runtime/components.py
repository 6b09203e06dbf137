"""The monitor's component processes (collector, evaluator): which module each runs, and how
one is started so that it dies with its starter and runs ahead of the agents it watches.

Owns the one table of component entry modules (the service, `run`, `record` and the tests
find components by it) and the ``preexec_fn`` every component is started with. It must stay
light: `run` imports it on its start-up path.
"""

from __future__ import annotations

import subprocess
import sys
import threading

from roguewatch.respond.selfdefense import block_shutdown_signals, die_with_parent
from roguewatch.runtime import priority

# `python -m MODULE` for each component.
COLLECTOR = "roguewatch.runtime.collectord"
EVALUATOR = "roguewatch.runtime.evaluatord"
COMPONENT_MODULES = {"collector": COLLECTOR, "evaluator": EVALUATOR}


def component_preexec() -> None:
    """``preexec_fn`` of a collector or evaluator: it dies with its starter, runs ahead of
    the agent it watches (``roguewatch.runtime.priority``), and starts with the shutdown
    signals blocked, so every thread it will ever have inherits the block (a thread started
    before its ShutdownGate would otherwise take a SIGTERM and end the process)."""
    block_shutdown_signals()
    die_with_parent()
    priority.raise_self()


def forward_stderr(proc: subprocess.Popen, name: str) -> None:
    """From now on, copy what a component writes on its stderr pipe to ours, in a thread.

    The pipe is read at start-up for the error of a component that did not start; after
    that, a pipe nobody reads fills up (64 KiB), and the component's next log line would
    block it for good: a monitor that an agent could stop by making it log."""
    pipe = proc.stderr
    if pipe is None:
        return

    def copy() -> None:
        for line in iter(pipe.readline, b""):
            try:
                sys.stderr.write(f"roguewatch {name}: {line.decode(errors='replace')}")
                sys.stderr.flush()
            except (OSError, ValueError):
                pass  # our stderr is gone: keep reading, so the component never blocks

    threading.Thread(target=copy, daemon=True, name=f"{name}-stderr").start()
