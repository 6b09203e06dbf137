"""Where roguewatch lives on a host: every directory, socket and file of its own, named once.

Everything here is the monitor's own and root's only. `roguewatch run` keeps agents from
writing to it (``MONITOR_PATHS``: Landlock), and the watchers guard it: whoever can change
these paths can reconfigure or blind the monitor.
"""

from __future__ import annotations

RUN_DIR = "/run/roguewatch"  # the service's sockets and status (0700)
EVENTS_ENDPOINT = f"ipc://{RUN_DIR}/events.sock"
CONTROL_ENDPOINT = f"ipc://{RUN_DIR}/control.sock"
ALERTS_ENDPOINT = f"ipc://{RUN_DIR}/alerts.sock"
STATUS_FILE = f"{RUN_DIR}/status.json"
# The sockets of private collectors (run, record): root-only, one directory per collector, so
# `roguewatch sessions` and `roguewatch kill` find sessions that no roguewatchd runs.
PRIVATE_RUN = "/run/roguewatch-private"

CONFIG_DIR = "/etc/roguewatch"
CONFIG_FILE = f"{CONFIG_DIR}/roguewatchd.yaml"
RULES_DIR = f"{CONFIG_DIR}/rules.d"
POLICIES_DIR = f"{CONFIG_DIR}/policies.d"

STATE_DIR = "/var/lib/roguewatch"  # baselines, quarantine, the shared blob store
PRIVATE_STATE = f"{STATE_DIR}/private"  # a private collector's baselines and quarantine
KEYS_DIR = f"{STATE_DIR}/keys"  # the monitor's keys: no session may read them (Landlock)
CHAIN_KEY = f"{KEYS_DIR}/chain.key"  # the HMAC key of the records' hash chains (0600)
SESSION_RECORDS = f"{STATE_DIR}/sessions"  # the record `run` keeps of each session (bounded)
CACHE_DIR = "/var/cache/roguewatch"  # compiled probe images
LOG_DIR = "/var/log/roguewatch"
ALERTS_FILE = f"{LOG_DIR}/alerts.jsonl"

# The cgroup v2 subtree of every session's own cgroup (below the cgroup2 mount): a process in
# it is an agent's, whichever roguewatch instance started it.
SESSION_CGROUPS = "roguewatch"

# Which live collector attached which egress programs to the cgroup v2 root (one file per
# collector: its pid, start time, program ids), so the next one detaches those a dead one left.
EGRESS_REGISTRY = "/run/roguewatch-egress"

# The monitor's runtime directories: sockets, status and registry files made anew by every
# start. Watched (whoever else touches them is seen), never baselined: a baseline of them is
# of a monitor that is gone, and putting it back would take the live sockets away.
RUNTIME_DIRS = (RUN_DIR, PRIVATE_RUN, EGRESS_REGISTRY)

# What an agent must never write to: the monitor's configuration, state, logs and sockets.
MONITOR_PATHS = (RUN_DIR, PRIVATE_RUN, EGRESS_REGISTRY, CONFIG_DIR, STATE_DIR, CACHE_DIR, LOG_DIR)
