"""The default rule packs of roguewatch (YAML, one file per category), read as package data."""
