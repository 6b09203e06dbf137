"""Carrying out what a rule decided, and keeping the monitor alive while it does: kills and
freezes (`enforcer`, `cgroups`), the agent's sandbox (`landlock`), file baselines, restore and
quarantine (`baseline`, `blobstore`), and the monitor's own defences (`selfdefense`)."""
