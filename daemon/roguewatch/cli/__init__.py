"""The `roguewatch` command: one module per sub-command, argument parsing and glue only."""
