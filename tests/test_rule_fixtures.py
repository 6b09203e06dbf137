"""Every default rule fires on its positive fixtures, benign work stays quiet, docs are current."""

from __future__ import annotations

from pathlib import Path

import pytest
from roguewatch.detect import fields as F
from roguewatch.detect import ruleset as R

RULES = R.load_rules()
FIXTURE_FILES = R.default_fixture_files()
CASES = [c for f in FIXTURE_FILES for c in R.load_fixtures(f)]
QUIET = ("info", "low")


def test_there_is_a_fixture_file_per_category() -> None:
    names = {Path(str(f)).stem for f in FIXTURE_FILES}
    assert names >= {"egress", "persistence", "shutdown_evasion", "oversight_tampering"}


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{Path(c.file).stem}:{c.name}")
def test_fixture(case: R.FixtureCase) -> None:
    result = R.run_fixture(RULES, case)
    assert result.ok, str(result)
    for name in case.expect:
        assert name in RULES, f"{case.file}:{case.line}: unknown rule {name!r}"
    if not any(RULES.get(n).severity not in QUIET for n in case.expect):
        # a benign case: nothing above low, and no action beyond an alert
        for name in result.fired:
            assert RULES.get(name).action == "alert", name
    for text in result.rendered:
        assert "%" not in text


def test_every_default_rule_has_a_positive_fixture() -> None:
    covered = {n for c in CASES for n in c.expect}
    missing = [r.name for r in RULES if r.name not in covered]
    assert not missing, f"default rules without a positive fixture: {missing}"


def test_every_category_has_benign_cases() -> None:
    benign = {Path(c.file).stem for c in CASES if not c.expect}
    assert benign >= {"egress", "persistence", "shutdown_evasion", "oversight_tampering"}


def test_docs_rules_md_is_generated_from_the_field_table() -> None:
    doc = Path(__file__).resolve().parent.parent / "docs" / "rules.md"
    text = doc.read_text(encoding="utf-8")
    assert F.GENERATED_MARKER in text
    assert text == F.update_doc(text), (
        "docs/rules.md is out of date: run "
        "`.venv/bin/python -m roguewatch.fields --update docs/rules.md`"
    )
