"""Rules as data: the file format and its loader (``loader``), the compiled rule set
(``model``), and the fixtures that test rules (``fixtures``).

It must not evaluate streams, deduplicate or act: that is the evaluator's and enforcer's.
"""

from roguewatch.detect.ruleset.fixtures import (
    EVENT_DEFAULTS,
    FixtureCase,
    FixtureResult,
    default_fixture_files,
    load_fixtures,
    run_fixture,
)
from roguewatch.detect.ruleset.loader import (
    RuleError,
    RuleFile,
    default_rules_dir,
    lists_only,
    load_files,
    load_rules,
    load_texts,
    rule_files,
)
from roguewatch.detect.ruleset.model import (
    ACTIONS,
    CATEGORIES,
    SEVERITIES,
    Rule,
    RuleException,
    RuleSet,
)

__all__ = [
    "ACTIONS", "CATEGORIES", "EVENT_DEFAULTS", "SEVERITIES", "FixtureCase", "FixtureResult",
    "Rule", "RuleError", "RuleException", "RuleFile", "RuleSet", "default_fixture_files",
    "default_rules_dir", "lists_only", "load_files", "load_fixtures", "load_rules",
    "load_texts", "rule_files", "run_fixture",
]  # fmt: skip
