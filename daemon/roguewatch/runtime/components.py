"""The monitor's component processes (collector, evaluator): which module each runs, and how
one is started so that it dies with its starter and runs ahead of the agents it watches.

Owns the one table of component entry modules (the service, `run`, `record` and the tests
find components by it), how a component's command line and environment are made, and the
``preexec_fn`` every component is started with. It must stay light: `run` imports it on its
start-up path.

A component starts isolated from whoever started it: ``python -I`` (no ``PYTHON*`` variable,
no user site directory, not the current directory on ``sys.path``), in ``/``, with an
environment of its own (``component_env``). `roguewatch run` is started from the operator's
shell, often in the agent's workspace and with the agent's environment: a ``PYTHONPATH``, a
``PYTHONSTARTUP``, a ``roguewatch/`` directory in the workspace or a ``LD_PRELOAD`` there
must not run code in the monitor, and the monitor's processes must not carry the agent's
variables (tools that find an agent's processes by them would take the monitor for one).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

from roguewatch.respond.selfdefense import block_shutdown_signals, die_with_parent
from roguewatch.runtime import priority

# `python -m MODULE` for each component.
COLLECTOR = "roguewatch.runtime.collectord"
EVALUATOR = "roguewatch.runtime.evaluatord"
FORWARDER = "roguewatch.runtime.forwarderd"  # only when the config's fleet is enabled
COMPONENT_MODULES = {"collector": COLLECTOR, "evaluator": EVALUATOR, "forwarder": FORWARDER}

# The PATH a component runs with: the system's, never the caller's (a `kill` or `nft` earlier
# on an agent's PATH must not be the one the monitor runs).
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Variables of the caller's environment a component keeps: the operator's switches for the
# monitor itself (``sensors.fanotify.ENV_SWITCH``, where bcc finds the kernel's headers), and
# the locale. Nothing else: a list to extend, never a prefix an agent could also use.
KEPT_NAMES = ("ROGUEWATCH_FANOTIFY", "BCC_KERNEL_SOURCE", "LANG", "LC_ALL", "TZ")
# The service's own start under systemd (the supervisor passes them to roguewatchd only).
SYSTEMD_NAMES = ("NOTIFY_SOCKET", "INVOCATION_ID", "JOURNAL_STREAM", "WATCHDOG_USEC",
                 "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID")  # fmt: skip


def component_env(base: dict[str, str] | None = None, keep: tuple[str, ...] = ()) -> dict[str, str]:
    """The environment a component starts with: the system PATH, ``HOME=/root``, and of
    ``base`` (our own environment by default) only the monitor's own switches, the locale and
    the names in ``keep``."""
    src = os.environ if base is None else base
    env = {"PATH": SYSTEM_PATH, "HOME": "/root"}
    for k, v in src.items():
        if k in KEPT_NAMES or k in keep:
            env[k] = v
    return env


def python_cmd(module: str, *args: str) -> list[str]:
    """``python -I -m MODULE ARGS``: our interpreter, isolated (see the module's text)."""
    return [sys.executable, "-I", "-m", module, *args]


def popen(cmd: list[str], keep_env: tuple[str, ...] = (), **kw) -> subprocess.Popen:
    """A component's process: ``cmd`` (from ``python_cmd``) in ``/``, with
    ``component_env``; the rest as ``subprocess.Popen``."""
    return subprocess.Popen(cmd, cwd="/", env=component_env(keep=keep_env), **kw)


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
