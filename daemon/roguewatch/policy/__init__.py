"""What an operator configures: the daemon's configuration, per-session policies and adoption
selectors, egress allowlist specs and the host names in them.

Pure data and its validation: no sensor, stream or rule code."""
