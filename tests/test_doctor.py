"""Tests of roguewatch.kernelenv (host facts) and roguewatch.doctor (the report built on them).

Parsing and formatting are tested with fake inputs; the host checks run for real, as root, and
are held to the truth: a tracepoint that does not exist must make the doctor fail.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import roguewatch.probes
from roguewatch.cli import doctor
from roguewatch.host import kernelenv as ke

from tests.conftest import require, require_root

FAKE_PROBE = r"""
#include "roguewatch.h"
// TRACEPOINT_PROBE(commented, out_by_line)
/* TRACEPOINT_PROBE(commented, out_by_block)
   TRACEPOINT_PROBE(still, commented) */
#define PAIR(n) TRACEPOINT_PROBE(syscalls, sys_enter_##n) \
    TRACEPOINT_PROBE(syscalls, macro_param)
static const char url[] = "http://example"; TRACEPOINT_PROBE(sched, sched_process_fork)
{
    return 0; /* a comment */ }
TRACEPOINT_PROBE( syscalls ,
                  sys_enter_connect )
{ return 0; }
RAW_TRACEPOINT_PROBE(sched_switch) { return 0; }
TRACEPOINT_PROBE(sched, sched_process_fork) /* a duplicate */ { return 0; }
"""


@pytest.fixture
def root() -> None:
    require_root("needs root")


def _write_probes(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text, encoding="utf-8")
    return directory


@pytest.fixture
def real_probes(tmp_path: Path) -> Path:
    """BPF sources using only tracepoints this kernel family has, plus an optional one."""
    return _write_probes(
        tmp_path / "real",
        {
            "a.bpf.c": "TRACEPOINT_PROBE(sched, sched_process_fork) { return 0; }\n",
            "b.bpf.c": (
                "TRACEPOINT_PROBE(syscalls, sys_enter_connect) { return 0; }\n"
                "TRACEPOINT_PROBE(syscalls, sys_enter_finit_module) { return 0; }\n"
            ),
        },
    )


@pytest.fixture
def bogus_probes(tmp_path: Path) -> Path:
    """BPF sources with one real tracepoint and one that exists on no kernel."""
    return _write_probes(
        tmp_path / "bogus",
        {
            "net.bpf.c": (
                "TRACEPOINT_PROBE(syscalls, sys_enter_connect) { return 0; }\n"
                "TRACEPOINT_PROBE(syscalls, sys_enter_no_such_call) { return 0; }\n"
            )
        },
    )


# --------------------------------------------------------------------------------------------
# parsing BPF sources


def test_probe_tracepoints_parses_fake_sources(tmp_path: Path) -> None:
    _write_probes(
        tmp_path,
        {
            "b.bpf.c": FAKE_PROBE,
            "a.bpf.c": "TRACEPOINT_PROBE(signal, signal_generate) { return 0; }\n"
            "TRACEPOINT_PROBE(syscalls, sys_enter_connect) { return 0; }\n",
            # Not BPF program sources: never parsed.
            "helpers.h": "TRACEPOINT_PROBE(header, only)\n",
            "old.c": "TRACEPOINT_PROBE(plain, c_file)\n",
        },
    )
    assert ke.probe_tracepoints(tmp_path) == [
        ("signal", "signal_generate"),
        ("syscalls", "sys_enter_connect"),
        ("sched", "sched_process_fork"),
    ]
    assert ke.probe_tracepoints_by_file(str(tmp_path)) == {
        "a.bpf.c": [("signal", "signal_generate"), ("syscalls", "sys_enter_connect")],
        "b.bpf.c": [("sched", "sched_process_fork"), ("syscalls", "sys_enter_connect")],
    }


def test_probe_tracepoints_without_sources_is_empty(tmp_path: Path) -> None:
    assert ke.probe_tracepoints(tmp_path) == []
    assert ke.probe_tracepoints(tmp_path / "does-not-exist") == []


def test_probe_tracepoints_defaults_to_package_sources() -> None:
    package_dir = Path(roguewatch.probes.__file__).parent
    assert ke.probe_tracepoints() == ke.probe_tracepoints(package_dir)


# --------------------------------------------------------------------------------------------
# mounts


def test_cgroup2_mount_parses_mountinfo(tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "22 27 0:21 / /proc rw,relatime - proc proc rw\n"
        "31 23 0:28 / /sys/fs/cgroup rw,relatime shared:9 - tmpfs tmpfs rw,mode=755\n"
        "41 31 0:38 / /srv/my\\040cgroup rw,relatime shared:1 master:2 - cgroup2 cgroup2 rw\n",
        encoding="utf-8",
    )
    assert ke.cgroup2_mount(str(mountinfo)) == "/srv/my cgroup"
    assert ke.mount_points("tmpfs", str(mountinfo)) == ["/sys/fs/cgroup"]
    mountinfo.write_text("22 27 0:21 / /proc rw - proc proc rw\n", encoding="utf-8")
    assert ke.cgroup2_mount(str(mountinfo)) is None


def test_cgroup2_mount_agrees_with_the_system() -> None:
    proc = subprocess.run(
        ["findmnt", "-n", "-l", "-t", "cgroup2", "-o", "TARGET"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode in (0, 1) and not proc.stderr:
        expected = proc.stdout.split()
    else:  # no usable findmnt: read mountinfo independently of kernelenv
        expected = []
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            left, _, right = line.partition(" - ")
            if right.split()[0] == "cgroup2":
                expected.append(left.split()[4])
    found = ke.cgroup2_mount()
    if expected:
        assert found in expected
    else:
        assert found is None


def test_tracefs_and_bpffs_are_mounted_on_demand(root: None) -> None:
    tracefs = ke.tracefs_dir()
    assert tracefs in ke.mount_points("tracefs")
    assert os.path.exists(os.path.join(tracefs, "events"))
    bpffs = ke.ensure_bpffs()
    assert bpffs in ke.mount_points("bpf")


# Runs in a private mount namespace (unshare), so unmounting there leaves the host untouched.
_MOUNT_ON_DEMAND = """
import ctypes, json
from roguewatch.cli import doctor
from roguewatch.host import kernelenv as ke
libc = ctypes.CDLL(None, use_errno=True)
for fstype in ("tracefs", "bpf"):
    for mp in reversed(ke.mount_points(fstype)):
        assert libc.umount2(mp.encode(), 2) == 0, (mp, ctypes.get_errno())  # MNT_DETACH
assert ke.mount_points("tracefs") == [] and ke.mount_points("bpf") == []
checks = [
    doctor._mounted("tracefs", ke.ensure_tracefs),
    doctor._mounted("bpffs", ke.ensure_bpffs_mounted),
]
print(json.dumps({
    "checks": [c.to_dict() for c in checks],
    "tracefs": ke.tracefs_dir(),
    "bpffs": ke.ensure_bpffs(),
    "exists": ke.tracepoint_exists("sched", "sched_process_fork"),
}))
"""


def test_tracefs_and_bpffs_get_mounted_when_missing(root: None) -> None:
    unshare = shutil.which("unshare")
    require(unshare, "needs unshare(1) to test in a private mount namespace")
    proc = subprocess.run(
        [unshare, "--mount", "--propagation", "private", sys.executable, "-c", _MOUNT_ON_DEMAND],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    tracefs, bpffs = result["checks"]
    assert (tracefs["ok"], tracefs["detail"]) == (True, "mounted now at /sys/kernel/tracing")
    assert (bpffs["ok"], bpffs["detail"]) == (True, "mounted now at /sys/fs/bpf")
    assert result["tracefs"] == "/sys/kernel/tracing"
    assert result["bpffs"] == "/sys/fs/bpf"
    assert result["exists"] is True


def test_unreadable_tracefs_is_not_reported_as_missing_tracepoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # tracefs is mode 700: to a non-root user every tracepoint looks absent. That must come out
    # as "cannot look", never as a list of missing tracepoints. (os.access is faked so that the
    # test also means something when run as root, who reads through any mode bits.)
    tracing = tmp_path / "tracing"
    (tracing / "events").mkdir(parents=True)
    monkeypatch.setattr(ke.os, "access", lambda *args, **kwargs: False)
    with pytest.raises(ke.KernelEnvError):
        ke.tracepoint_exists("sched", "sched_process_fork", str(tracing))
    monkeypatch.setattr(ke, "tracefs_dir", lambda: str(tracing))
    probes = _write_probes(tmp_path / "p", {"x.bpf.c": "TRACEPOINT_PROBE(sched, sched_switch)\n"})
    (check,) = doctor.tracepoint_checks(probes)
    assert (check.name, check.ok, check.required) == ("tracepoints", False, True)
    assert check.detail.startswith("cannot look:")


# --------------------------------------------------------------------------------------------
# host facts


def test_landlock_abi_matches_the_syscall() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    # landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)
    raw = libc.syscall(ctypes.c_long(444), None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    expected = max(int(raw), 0)
    assert ke.landlock_abi() == expected
    check = doctor._landlock()
    assert check.ok == (expected >= 1)
    if expected >= 6:
        assert check.detail == (
            f"ABI {expected}: filesystem rules available, signal and abstract-socket scoping"
        )
        assert check.status == "ok"


def test_header_tree_reads_the_headers_release(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    generated = tmp_path / "include" / "generated"
    generated.mkdir(parents=True)
    (generated / "utsrelease.h").write_text('#define UTS_RELEASE "6.1.0-56-amd64"\n')
    monkeypatch.setenv("BCC_KERNEL_SOURCE", str(tmp_path))
    info = ke.header_tree()
    assert info.path == str(tmp_path)
    assert info.version == "6.1.0-56-amd64"
    assert info.matches_running == (os.uname().release == "6.1.0-56-amd64")

    (generated / "utsrelease.h").unlink()
    config = tmp_path / "include" / "config"
    config.mkdir()
    (config / "kernel.release").write_text(os.uname().release + "\n")
    info = ke.header_tree()
    assert info.version == os.uname().release
    assert info.matches_running


def test_header_tree_of_this_host() -> None:
    info = ke.header_tree()
    if info.path is not None and info.source == "modules build dir":
        assert info.path == f"/lib/modules/{os.uname().release}/build"
        assert info.matches_running == (info.version == os.uname().release)


def test_root_has_the_capabilities(root: None) -> None:
    assert ke.is_root()
    assert ke.missing_capabilities() == []
    assert ke.has_capabilities()


# --------------------------------------------------------------------------------------------
# the doctor's report


def test_missing_tracepoint_is_a_required_failure(root: None, bogus_probes: Path) -> None:
    checks = {c.name: c for c in doctor.tracepoint_checks(bogus_probes)}
    bad = checks["tracepoint syscalls:sys_enter_no_such_call"]
    assert not bad.ok
    assert bad.required
    assert bad.status == "FAIL"
    assert "net.bpf.c" in bad.fix
    # No "all present" summary may hide the failure.
    assert "tracepoints" not in checks
    assert "tracepoint syscalls:sys_enter_connect" not in checks


def test_doctor_exits_1_for_a_missing_tracepoint(
    root: None, bogus_probes: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert doctor.main(["--probes", str(bogus_probes)]) == 1
    out = capsys.readouterr().out
    assert "  FAIL tracepoint syscalls:sys_enter_no_such_call" in out
    assert "required check(s) failed: tracepoint syscalls:sys_enter_no_such_call" in out


def test_optional_tracepoint_absence_is_not_required(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pretend a kernel without module loading, whatever this one is.
    monkeypatch.setattr(ke, "tracefs_dir", lambda: "/fake/tracing")
    monkeypatch.setattr(
        ke, "tracepoint_exists", lambda cat, name, tracefs=None: "finit_module" not in name
    )
    probes = _write_probes(
        tmp_path,
        {
            "m.bpf.c": "TRACEPOINT_PROBE(syscalls, sys_enter_finit_module) { return 0; }\n"
            "TRACEPOINT_PROBE(sched, sched_process_exec) { return 0; }\n"
        },
    )
    checks = {c.name: c for c in doctor.tracepoint_checks(probes)}
    optional = checks["tracepoint syscalls:sys_enter_finit_module"]
    assert (optional.ok, optional.required, optional.detail) == (False, False, "not on this kernel")
    assert optional.status == "warn"
    assert checks["tracepoints"].ok
    assert checks["tracepoints"].detail == "1 tracepoints present (1 optional not on this kernel)"


def test_no_probe_sources_is_a_failure(tmp_path: Path) -> None:
    (check,) = doctor.tracepoint_checks(tmp_path)
    assert (check.name, check.ok, check.required) == ("tracepoints", False, True)


@pytest.mark.kernel
def test_required_checks_pass_on_this_host(
    root: None, real_probes: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    securityfs_before = ke.mount_points("securityfs")
    checks = doctor.run_checks(real_probes)
    failed = [(c.name, c.detail) for c in checks if c.required and not c.ok]
    assert failed == []
    names = {c.name for c in checks}
    for name in (
        "privileges",
        "BTF",
        "tracefs",
        "bpffs",
        "bcc",
        "kernel headers",
        "tracepoints",
        "ring buffer",
        "task storage",
        "cgroup v2",
        "cgroup.kill",
        "sock_addr",
        "Landlock",
        "BPF LSM",
    ):
        assert name in names
    by_name = {c.name: c for c in checks}
    assert not by_name["BPF LSM"].required
    if ke.tracepoint_exists("syscalls", "sys_enter_finit_module"):
        assert by_name["tracepoints"].detail == "3 tracepoints present"
    else:
        assert not by_name["tracepoint syscalls:sys_enter_finit_module"].required

    assert doctor.main(["--probes", str(real_probes)]) == 0
    assert "all required checks passed" in capsys.readouterr().out

    # Nothing is left behind: no test cgroups, and securityfs was read in a private namespace.
    cg2 = ke.cgroup2_mount()
    assert cg2 is not None
    assert not [d for d in os.listdir(cg2) if d.startswith("roguewatch-probe-")]
    assert ke.mount_points("securityfs") == securityfs_before


@pytest.mark.kernel
def test_installed_probe_sources_pass(root: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert ke.probe_tracepoints(), "no *.bpf.c in roguewatch.probes"
    assert doctor.main([]) == 0, capsys.readouterr().out


@pytest.mark.kernel
def test_json_output_parses(
    root: None, real_probes: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = doctor.main(["--json", "--probes", str(real_probes)])
    data = json.loads(capsys.readouterr().out)
    assert isinstance(data, list)
    assert data
    for item in data:
        assert {"name", "ok", "required", "detail", "fix", "status"} <= set(item)
        assert item["status"] in ("ok", "warn", "FAIL")
    assert rc == (0 if all(i["ok"] for i in data if i["required"]) else 1)
    assert rc == 0


@pytest.mark.kernel
def test_python_dash_m_works(root: None, bogus_probes: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "roguewatch.cli.doctor", "--json", "--probes", str(bogus_probes)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    data = json.loads(proc.stdout)
    assert any(
        d["name"] == "tracepoint syscalls:sys_enter_no_such_call" and d["status"] == "FAIL"
        for d in data
    )


def test_text_format() -> None:
    checks = [
        doctor.Check("BTF", True, True, "/sys/kernel/btf/vmlinux present"),
        doctor.Check("kernel headers", True, True, "old headers", "make deps", warn=True),
        doctor.Check("Landlock", False, True, "not available (ABI 0)", "use Linux 5.13+"),
        doctor.Check("BPF LSM", False, False, "not active", "optional"),
    ]
    assert doctor.format_text(checks).splitlines() == [
        "  ok   BTF            /sys/kernel/btf/vmlinux present",
        "  warn kernel headers old headers",
        "       fix: make deps",
        "  FAIL Landlock       not available (ABI 0)",
        "       fix: use Linux 5.13+",
        "  warn BPF LSM        not active",
        "       fix: optional",
        "1 required check(s) failed: Landlock",
    ]
    assert not doctor.all_required_pass(checks)
    assert doctor.all_required_pass(checks[:2] + checks[3:])


def test_a_task_storage_map_the_kernel_refuses_is_named_with_what_it_needs() -> None:
    require_root()
    from roguewatch.sensors import bpf

    with pytest.raises(bpf.ProbeError) as exc:
        bpf.create_task_storage_map("rw_bad_size", 0, 1)  # a zero-sized value: refused
    msg = str(exc.value)
    assert "task storage map rw_bad_size" in msg and "roguewatch doctor" in msg, msg


@pytest.mark.kernel
def test_doctor_says_whether_the_kernel_side_outlives_the_collector(root: None) -> None:
    """Tracepoint links can be pinned on this kernel (6.x): the check says so; it is never
    required (without it a killed collector only drops more)."""
    check = doctor._pinning()
    assert check.ok and not check.required, check
    assert "tracepoint links" in check.detail and "/roguewatch" in check.detail, check
