"""`roguewatch doctor`: checks that this host can run roguewatch, one line per fact, each with
a one-line fix.

This module owns the list of checks, what is required versus optional, and how the report is
printed (text or --json). The facts themselves come from roguewatch.kernelenv. Checks that
need tracefs or bpffs mount them when missing and say so ("mounted now"); nothing else on the
host is changed (test cgroups and test programs are removed before each check returns).

Exit status of main(): 0 when every required check passes, else 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from importlib.resources.abc import Traversable

from roguewatch.host import kernelenv as ke

__all__ = ["Check", "main", "run_checks", "tracepoint_checks"]

ProbeDir = str | os.PathLike[str] | Traversable | None


@dataclass
class Check:
    """One fact about the host. `warn` marks an ok check whose detail deserves attention."""

    name: str
    ok: bool
    required: bool
    detail: str
    fix: str = ""
    warn: bool = False

    @property
    def status(self) -> str:
        """ "ok", "warn" (ok with a caveat, or an optional check that failed) or "FAIL"."""
        if self.ok:
            return "warn" if self.warn else "ok"
        return "FAIL" if self.required else "warn"

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "status": self.status}


# --------------------------------------------------------------------------------------------
# the checks, in the order they are printed


def _privileges() -> Check:
    missing = ke.missing_capabilities()
    who = "root (euid 0)" if ke.is_root() else f"euid {os.geteuid()}"
    if not missing:
        return Check("privileges", True, True, f"{who}, effective capabilities sufficient")
    return Check(
        "privileges",
        False,
        True,
        f"{who}, missing {', '.join(missing)}",
        "run as root: sudo roguewatch doctor (the service runs as root)",
    )


def _btf() -> Check:
    if ke.btf_available():
        return Check("BTF", True, True, f"{ke.BTF_VMLINUX} present")
    return Check(
        "BTF",
        False,
        True,
        f"{ke.BTF_VMLINUX} missing",
        "use a kernel built with CONFIG_DEBUG_INFO_BTF=y",
    )


def _mounted(name: str, ensure: Callable[[], tuple[str, bool]]) -> Check:
    try:
        where, now = ensure()
    except ke.KernelEnvError as e:
        return Check(name, False, True, e.msg, e.fix)
    return Check(name, True, True, f"mounted now at {where}" if now else f"mounted at {where}")


def _bcc() -> Check:
    fix = (
        "apt-get install python3-bpfcc, and run /usr/bin/python3 or a venv made with "
        "/usr/bin/python3 -m venv --system-site-packages (PyPI's 'bcc' is unrelated)"
    )
    try:
        version = ke.bcc_version()
    except ImportError as e:
        return Check("bcc", False, True, f"cannot import bcc: {e}", fix)
    return Check("bcc", True, True, f"bcc {version} importable")


def _headers() -> Check:
    fix = (
        "make deps, or apt-get install linux-headers-$(uname -r) "
        "(bcc compiles against /lib/modules/$(uname -r)/build)"
    )
    running = os.uname().release
    info = ke.header_tree()
    if info.path is None:
        return Check(
            "kernel headers", False, True, f"no header tree for {running} (bcc cannot compile)", fix
        )
    where = info.path
    if os.path.islink(where):
        where = f"{where} -> {os.path.realpath(where)}"
    if info.matches_running:
        return Check("kernel headers", True, True, f"{where} ({info.version})")
    version = info.version or "an unknown release"
    return Check(
        "kernel headers",
        True,
        True,
        f"{where} is for {version}, running {running}: struct layouts may differ, "
        "probes must read only tracepoint arguments",
        fix,
        warn=True,
    )


def _tracepoint_fix(category: str, name: str, files: list[str]) -> str:
    used = f" (used in {', '.join(files)})" if files else ""
    if category == "syscalls":
        return f"use a kernel with CONFIG_FTRACE_SYSCALLS=y, or fix the name in the probe{used}"
    return f"use a kernel that has {category}:{name}, or fix the name in the probe{used}"


def tracepoint_checks(source_dir: ProbeDir = None) -> list[Check]:
    """One check per missing tracepoint the probes in `source_dir` use (default: the installed
    BPF sources), plus a summary check "N tracepoints present" when none required is missing."""
    by_file = ke.probe_tracepoints_by_file(source_dir)
    points = ke.probe_tracepoints(source_dir)
    where = str(source_dir) if source_dir is not None else ke.probe_source_dir()
    if not points:
        return [
            Check(
                "tracepoints",
                False,
                True,
                f"no TRACEPOINT_PROBE found in {where}/*.bpf.c",
                "reinstall roguewatch: its BPF sources (roguewatch/probes/*.bpf.c) are missing",
            )
        ]
    try:
        tracefs = ke.tracefs_dir()
    except ke.KernelEnvError as e:
        return [Check("tracepoints", False, True, f"cannot look: {e.msg}", e.fix)]

    try:
        missing = ke.missing_tracepoints(points, tracefs)
    except ke.KernelEnvError as e:
        # Not being able to look is not the same as the tracepoints being absent.
        return [Check("tracepoints", False, True, f"cannot look: {e.msg}", e.fix)]
    checks: list[Check] = []
    required_missing = 0
    for category, name in missing:
        key = f"{category}:{name}"
        if key in ke.OPTIONAL_TRACEPOINTS:
            checks.append(
                Check(
                    f"tracepoint {key}",
                    False,
                    False,
                    "not on this kernel",
                    "nothing to do: the probes attach the rest; this kernel has no such syscall",
                )
            )
        else:
            required_missing += 1
            files = [f for f, tps in by_file.items() if (category, name) in tps]
            checks.append(
                Check(
                    f"tracepoint {key}",
                    False,
                    True,
                    f"{tracefs}/events/{category}/{name} missing",
                    _tracepoint_fix(category, name, files),
                )
            )
    if not required_missing:
        present = len(points) - len(missing)
        detail = f"{present} tracepoints present"
        if missing:
            detail += f" ({len(missing)} optional not on this kernel)"
        checks.insert(0, Check("tracepoints", True, True, detail))
    return checks


def _unprivileged_fix() -> str | None:
    # Without privileges every BPF and cgroup check fails for that reason alone; say so
    # instead of blaming the kernel.
    missing = ke.missing_capabilities()
    return f"run as root (missing {', '.join(missing)})" if missing else None


def _ringbuf() -> Check:
    ok, detail = ke.ringbuf_works()
    fix = _unprivileged_fix() or "needs Linux 5.8+ (BPF ring buffer), bcc and a kernel header tree"
    return Check("ring buffer", ok, True, detail, "" if ok else fix)


def _task_storage() -> Check:
    """The probes keep a syscall's record between its enter and exit in task local storage."""
    from roguewatch.sensors import bpf

    try:
        os.close(bpf.create_task_storage_map("rw_doctor_ts", 144, 1))  # BPF_F_NO_PREALLOC
    except bpf.ProbeError as e:
        fix = _unprivileged_fix() or "needs Linux 5.11+ with BTF (BPF task local storage)"
        return Check("task storage", False, True, str(e), fix)
    return Check("task storage", True, True, "BPF task local storage map created")


def _pinning() -> Check:
    """Keep-sensors-on-exit: the collector's maps, egress programs and tracepoint links
    pinned in bpffs (``roguewatch.sensors.pins``), so a killed collector drops nothing."""
    from roguewatch.sensors import bpf, pins

    try:
        root = pins.pin_root(create=False)
    except pins.PinError as e:
        return Check("pinning", False, False,
                     f"{e}: a killed collector takes tracking and egress denial with it",
                     "mount -t bpf -o mode=700 bpf /sys/fs/bpf")  # fmt: skip
    try:
        links = bpf.link_create_supported()
    except (bpf.ProbeError, OSError) as e:
        return Check("pinning", False, False, f"cannot try a tracepoint link: {e}", "")
    held = len(pins.instances(root))
    where = f"{root} ({held} collector instance{'s' if held != 1 else ''} pinned now)"
    if not links:
        return Check("pinning", True, False,
                     f"maps and egress programs pinned in {where}; this kernel makes no BPF "
                     "link for a tracepoint, so forks are not followed while no collector "
                     "runs", "needs Linux 5.15+ (BPF_LINK_CREATE for perf events)",
                     warn=True)  # fmt: skip
    return Check(
        "pinning",
        True,
        False,
        f"maps, egress programs and tracepoint links kept "
        f"in {where}: a killed collector leaves tracking and egress denial in force",
    )


def _cgroup2() -> tuple[Check, str | None]:
    cg2 = ke.cgroup2_mount()
    if cg2 is None:
        return (
            Check(
                "cgroup v2",
                False,
                True,
                "no cgroup2 mount in /proc/self/mountinfo",
                "mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified (or boot a systemd host "
                "with the unified hierarchy)",
            ),
            None,
        )
    return Check("cgroup v2", True, True, f"mounted at {cg2}"), cg2


def _cgroup_kill(cg2: str | None) -> Check:
    fix = "needs Linux 5.14+ (cgroup.kill) and a writable cgroup v2 hierarchy, as root"
    if cg2 is None:
        return Check("cgroup.kill", False, True, "no cgroup v2 mount", fix)
    try:
        kill = ke.cgroup_kill_supported(cg2)
        freeze = ke.cgroup_freeze_supported(cg2)
    except ke.KernelEnvError as e:
        return Check("cgroup.kill", False, True, e.msg, _unprivileged_fix() or e.fix)
    if not kill:
        return Check("cgroup.kill", False, True, f"child cgroups of {cg2} have no cgroup.kill", fix)
    if not freeze:
        return Check(
            "cgroup.kill",
            True,
            True,
            "cgroup.kill present, but no cgroup.freeze (sessions cannot be frozen)",
            "needs Linux 5.2+ for cgroup.freeze",
            warn=True,
        )
    return Check("cgroup.kill", True, True, "cgroup.kill and cgroup.freeze present")


def _sock_addr(cg2: str | None) -> Check:
    fix = _unprivileged_fix() or "needs CONFIG_CGROUP_BPF=y, bcc and a writable cgroup v2 hierarchy"
    if cg2 is None:
        return Check("sock_addr", False, True, "no cgroup v2 mount", fix)
    ok, detail = ke.sock_addr_attach_works(cg2)
    return Check("sock_addr", ok, True, detail, "" if ok else fix)


def _seccomp() -> Check:
    """`run`'s sandbox refuses syscalls with seccomp user notifications (each one reported)."""
    from roguewatch.respond import seccomp

    why = seccomp.available()
    if why is None:
        return Check("seccomp", True, True, "user notifications available: run refuses and "
                     "reports bpf, io_uring, other processes' limits and memory...")  # fmt: skip
    return Check("seccomp", False, True, why,
                 "Linux 5.0+ with seccomp filters, and libseccomp2 (apt-get install libseccomp2);"
                 " or a policy with `refuse: []`")  # fmt: skip


def _landlock() -> Check:
    from roguewatch.respond import landlock

    abi = ke.landlock_abi()
    if abi >= 1:
        # A real ruleset that handles every write right of this ABI, with a rule on /: built,
        # never enforced.
        try:
            landlock.Ruleset.build(False, False, writable=["/"]).close()
            fs, fs_ok = "filesystem rules available", True
        except landlock.LandlockError as e:
            fs, fs_ok = f"filesystem rules unavailable ({e})", False
        scoping = "signal and abstract-socket scoping" if abi >= 6 else "no scoping"
        detail = f"ABI {abi}: {fs}, {scoping}"
        if abi < 6 or not fs_ok:
            return Check("Landlock", True, True, detail,
                         "`roguewatch run` needs ABI 6 (Linux 6.12+) with filesystem rules",
                         warn=True)  # fmt: skip
        return Check("Landlock", True, True, detail)
    return Check(
        "Landlock",
        False,
        True,
        "not available (ABI 0)",
        "use Linux 5.13+ with CONFIG_SECURITY_LANDLOCK=y and 'landlock' in the lsm= boot list",
    )


def _bpf_lsm() -> Check:
    # Optional: roguewatch works without it, so a failure here is a warning, never a FAIL.
    lsms = ke.lsm_list()
    if lsms is None:
        return Check(
            "BPF LSM",
            False,
            False,
            "cannot read the active LSM list (securityfs)",
            "optional; to check: mount -t securityfs securityfs /sys/kernel/security",
        )
    if "bpf" not in lsms:
        return Check(
            "BPF LSM",
            False,
            False,
            f"not active (LSMs: {','.join(lsms)})",
            "optional; enable with CONFIG_BPF_LSM=y and 'bpf' in the lsm= boot list",
        )
    ok, detail = ke.bpf_lsm_loads()
    if ok:
        return Check("BPF LSM", True, False, f"active and {detail}")
    return Check(
        "BPF LSM",
        False,
        False,
        f"listed as active, but a program does not load: {detail}",
        "optional; nothing to do, roguewatch does not depend on it",
    )


def _fanotify() -> Check:
    """The filesystem watchers' writer pids (optional: without it, inotify alone)."""
    from roguewatch.sensors import fanotify

    why = fanotify.check()
    if why is None:
        return Check(
            "fanotify",
            True,
            False,
            "FAN_REPORT_DFID_NAME marks work: filesystem changes name their writer's pid, and "
            "roguewatch's log directory is watched with only its own writes ignored",
        )
    return Check(
        "fanotify",
        False,
        False,
        f"unavailable ({why}); fallback: inotify only, changes not seen by the probes have "
        "writer unknown, and roguewatch's whole log directory is ignored",
        "optional; needs Linux >= 5.9 with CONFIG_FANOTIFY, CAP_SYS_ADMIN, and "
        f"{fanotify.ENV_SWITCH} unset",
    )


def _guard(name: str, required: bool, fn: Callable[[], Check]) -> Check:
    # The doctor must report, never crash: an unexpected error is itself a finding.
    try:
        return fn()
    except Exception as e:
        return Check(
            name, False, required, f"check crashed: {type(e).__name__}: {e}", "report a bug"
        )


def run_checks(source_dir: ProbeDir = None) -> list[Check]:
    """Run every check, in print order. `source_dir`: the BPF sources whose tracepoints to
    check (default: the installed package's)."""
    checks = [
        _guard("privileges", True, _privileges),
        _guard("BTF", True, _btf),
        # tracefs before bcc: bcc picks its tracefs path once, when first imported.
        _guard("tracefs", True, lambda: _mounted("tracefs", ke.ensure_tracefs)),
        _guard("bpffs", True, lambda: _mounted("bpffs", ke.ensure_bpffs_mounted)),
        _guard("pinning", False, _pinning),
        _guard("bcc", True, _bcc),
        _guard("kernel headers", True, _headers),
    ]
    try:
        checks += tracepoint_checks(source_dir)
    except Exception as e:
        checks.append(
            Check("tracepoints", False, True, f"check crashed: {type(e).__name__}: {e}", "")
        )
    checks.append(_guard("ring buffer", True, _ringbuf))
    checks.append(_guard("task storage", True, _task_storage))
    try:
        cg2_check, cg2 = _cgroup2()
    except Exception as e:
        cg2_check, cg2 = Check("cgroup v2", False, True, f"check crashed: {e}", ""), None
    checks += [
        cg2_check,
        _guard("cgroup.kill", True, lambda: _cgroup_kill(cg2)),
        _guard("sock_addr", True, lambda: _sock_addr(cg2)),
        _guard("Landlock", True, _landlock),
        _guard("seccomp", True, _seccomp),
        _guard("BPF LSM", False, _bpf_lsm),
        _guard("fanotify", False, _fanotify),
    ]
    return checks


def all_required_pass(checks: Sequence[Check]) -> bool:
    """True when no required check failed."""
    return all(c.ok for c in checks if c.required)


def format_text(checks: Sequence[Check]) -> str:
    """The human report: one line per check, a fix line under failures and warnings."""
    # Fixed name column: long names (missing tracepoints) overflow it rather than push every
    # line's detail far to the right.
    width = 14
    lines: list[str] = []
    for c in checks:
        lines.append(f"  {c.status:<4} {c.name:<{width}} {c.detail}".rstrip())
        if c.status != "ok" and c.fix:
            lines.append(f"       fix: {c.fix}")
    failed = [c.name for c in checks if c.required and not c.ok]
    if failed:
        shown = ", ".join(failed[:5]) + (f" and {len(failed) - 5} more" if len(failed) > 5 else "")
        lines.append(f"{len(failed)} required check(s) failed: {shown}")
    else:
        lines.append("all required checks passed")
    return "\n".join(lines)


def add_arguments(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="check that this host can run roguewatch")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=lambda args: main(["--json"] if args.json else []))


def main(argv: Sequence[str] | None = None) -> int:
    """`roguewatch doctor [--json] [--probes DIR]`; 0 when every required check passes."""
    parser = argparse.ArgumentParser(
        prog="roguewatch doctor",
        description="Check that this host can run roguewatch.",
    )
    parser.add_argument("--json", action="store_true", help="print the checks as a JSON list")
    parser.add_argument(
        "--probes",
        metavar="DIR",
        help="directory of *.bpf.c sources whose tracepoints to check "
        "(default: the installed roguewatch probes)",
    )
    args = parser.parse_args(list(argv) if argv is not None else None)

    checks = run_checks(args.probes)
    if args.json:
        print(json.dumps([c.to_dict() for c in checks], indent=2))
    else:
        print(format_text(checks))
    return 0 if all_required_pass(checks) else 1


if __name__ == "__main__":
    sys.exit(main())
