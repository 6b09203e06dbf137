"""Primitives every stage shares: the typed contracts (event, alert, process record, session),
time formats, the /proc reader, process identity, bounded caches, YAML errors.

Imports nothing else of roguewatch."""
