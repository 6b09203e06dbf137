"""Policy files: what loads, and how a bad one is reported (file, entry, what was expected)."""

from __future__ import annotations

from pathlib import Path

import pytest
from roguewatch.policy import policy
from roguewatch.policy.policy import PolicyError


def write(tmp_path: Path, text: str, name: str = "policy.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# --- writable: -----------------------------------------------------------------------------


def test_writable_roots_load_normalized_and_absent_means_no_restriction(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    loaded = policy.load(write(tmp_path, f"writable: [{ws}/, /tmp]\n"))
    assert loaded.writable == (str(ws), "/tmp")
    assert policy.load(write(tmp_path, "mode: enforce\n")).writable is None
    assert policy.load(write(tmp_path, "writable: []\n")).writable == ()
    assert policy.as_dict(loaded)["writable"] == [str(ws), "/tmp"]


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ("[/tmp, work]", "writable[1]: expected an absolute path, got 'work'"),
        ("[/tmp, 7]", "writable[1]: expected an absolute path, got 7"),
        ("/tmp", "writable: expected a list of absolute paths"),
        ("[/nonexistent/rwtest]", "writable[0]: '/nonexistent/rwtest' does not exist"),
    ],
)
def test_a_bad_writable_entry_is_named(tmp_path: Path, entry: str, says: str) -> None:
    path = write(tmp_path, f"writable: {entry}\n")
    with pytest.raises(PolicyError) as exc:
        policy.load(path)
    assert str(exc.value) == f"{path}: {says}"
