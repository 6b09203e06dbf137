"""roguewatch: watch autonomous AI agents on a Linux host and stop them when they go rogue."""

__version__ = "0.1.0"
