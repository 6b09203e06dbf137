"""Turning events into alerts: the field table, the rule language and rule files, the
prefilters, the process table and the evaluator.

Detection decides what is an alert; it never carries out actions (`respond`) nor knows where
alerts go (`outputs`)."""
