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


# --- YAML errors: file:line:column ---------------------------------------------------------

BROKEN = "adopt:\n  users: [agent\nmode: enforce\n"  # the flow list is never closed
BROKEN_SAYS = (
    ":3:5: not valid YAML: expected ',' or ']', but got ':' (while parsing a flow sequence)"
)


def test_a_policies_d_file_with_a_yaml_syntax_error_says_where(tmp_path: Path) -> None:
    d = tmp_path / "policies.d"
    d.mkdir()
    (d / "10-ok.yaml").write_text("adopt: {users: [agent]}\nmode: observe\n")
    (d / "20-broken.yaml").write_text(BROKEN)
    with pytest.raises(PolicyError) as exc:
        policy.load_adoptions(str(d))
    assert str(exc.value) == f"{d / '20-broken.yaml'}{BROKEN_SAYS}"


def test_a_policies_d_file_that_cannot_be_read_says_so(tmp_path: Path) -> None:
    d = tmp_path / "policies.d"
    (d / "agents.yaml").mkdir(parents=True)  # a directory where a file should be
    with pytest.raises(PolicyError) as exc:
        policy.load_adoptions(str(d))
    assert str(exc.value) == f"{d / 'agents.yaml'}: cannot read: Is a directory"


def test_a_policy_file_with_a_yaml_syntax_error_says_where(tmp_path: Path) -> None:
    path = write(tmp_path, "mode: enforce\negress:\n  allow: [127.0.0.1/32\n")
    with pytest.raises(PolicyError) as exc:
        policy.load(path)
    assert str(exc.value) == (
        f"{path}:4:1: not valid YAML: expected ',' or ']', but got '<stream end>' "
        "(while parsing a flow sequence)"
    )


def test_the_daemon_config_with_a_yaml_syntax_error_says_where(tmp_path: Path) -> None:
    from roguewatch.policy import config

    path = write(tmp_path, "adopt_users:\n  [agent\nenforce: true\n", "roguewatchd.yaml")
    with pytest.raises(config.ConfigError) as exc:
        config.load(path)
    assert str(exc.value).startswith(f"{path}:3:8: not valid YAML: expected ',' or ']'")
    assert str(exc.value).endswith("(while parsing a flow sequence)")


# --- on_monitor_loss: ----------------------------------------------------------------------


def test_on_monitor_loss_defaults_to_freeze_and_travels_with_the_session(tmp_path: Path) -> None:
    assert policy.load(write(tmp_path, "mode: enforce\n")).on_monitor_loss == "freeze"
    loaded = policy.load(write(tmp_path, "on_monitor_loss: kill\n"))
    assert loaded.on_monitor_loss == "kill"
    assert policy.from_wire(policy.as_dict(loaded)).on_monitor_loss == "kill"


def test_a_bad_on_monitor_loss_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "on_monitor_loss: pause\n")
    with pytest.raises(PolicyError) as exc:
        policy.load(path)
    assert str(exc.value) == (
        f"{path}: on_monitor_loss: expected one of freeze, kill, continue, got 'pause'"
    )
