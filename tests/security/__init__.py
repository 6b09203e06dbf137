"""Attacks on the monitor by the root agent it watches, one test per attack: the attack is
refused (or seen and undone), a critical alert names it, and the same session's later rogue
acts are still caught."""
