"""Atomic Red Team adapter: the Linux tests of the host persistence, defense-evasion and
exfiltration techniques, read from a local copy of redcanaryco/atomic-red-team's ``atomics/``
directory (``--atomics DIR``; none of its content is in this repository), as scenarios.

Each test runs with its input defaults, as the agent, through its own executor (sh or bash).
Its effect is whatever it changed in the snapshotted trees, processes it left behind, and
anything that reached the listeners. Tests that cannot run here are skipped with the reason:
another executor (manual, PowerShell), prerequisites that are not met and would need the
Internet to fetch, commands that reach the Internet, or commands that would change
kernel-wide state other users of a shared host depend on (audit rules, the firewall, sysctl).
"""

from __future__ import annotations

import glob
import os
import re
import subprocess

import yaml
from scenario import Scenario

TECHNIQUES = ("T1037", "T1053", "T1098.004", "T1136", "T1543.002", "T1546", "T1547.006",
              "T1548", "T1556", "T1574.006", "T1070", "T1562", "T1685", "T1686", "T1048",
              "T1041")  # fmt: skip
# T1562's Linux tests were renumbered: T1685 (disable or modify tools), T1686 (firewall).
PERSISTENCE = ("T1037", "T1053", "T1098", "T1136", "T1543", "T1546", "T1547", "T1548",
               "T1556", "T1574")  # fmt: skip
CATEGORY = [
    (("T1070", "T1562", "T1685", "T1686"), "oversight_tampering"),
    (("T1048", "T1041"), "egress"),
    (PERSISTENCE, "persistence"),
]
NETWORK = re.compile(r"\b(curl|wget|git clone|pip3? install|apt(-get)? install|yum|dnf|"
                     r"https?://|ftp://)", re.I)  # fmt: skip
INSTALLS = re.compile(r"\b(apt|apt-get|yum|dnf|zypper|pkg|pip3?|make install|npm)\b")
LOCAL_URL = re.compile(r"https?://(127\.|localhost|\[::1\])")
# Kernel- or host-wide state shared with everyone else on this host: not changed by a bench.
HOST_WIDE = re.compile(
    r"\b(auditctl|iptables|ip6tables|nft|ufw\s+[a-z-]+|firewall-cmd|setenforce|sysctl|modprobe|"
    r"insmod|rmmod|swapoff|reboot|poweroff|halt|shutdown|init [06]|kill -9 -1|pkill|killall|"
    r"mount|umount|dd if=|mkfs|/dev/[sv]d|timedatectl|hostnamectl|passwd\s+root|"
    r"chattr|docker|stratus|aws|az|gcloud|kubectl)\b|--no-preserve-root|rm -rf / |"
    # (a preload every process on a shared host would load, printing into their output)
    r"/etc/ld\.so\.preload|"
    # (the kernel's own switches: reboot through sysrq, dropping caches, /proc/sys)
    r"sysrq|drop_caches|/proc/sys/|/sys/kernel|/sys/module"
)


def category(tid: str) -> str:
    for prefixes, cat in CATEGORY:
        if tid.startswith(prefixes):
            return cat
    return "persistence"


def fill(text: str, args: dict, atomics: str) -> str:
    for k, spec in (args or {}).items():
        text = text.replace("#{" + k + "}", str((spec or {}).get("default", "")))
    return text.replace("PathToAtomicsFolder", atomics).replace("$PathToAtomicsFolder", atomics)


def prereqs(test: dict, args: dict, atomics: str) -> tuple[str, str]:
    """The test's prerequisites: ("", why-not) when they cannot be met here, else the
    set-up to run (as root, before the session, undone by the restore after it): the
    ``get_prereq_command`` of each check that fails, when it needs no network and installs
    no package."""
    shell = test.get("dependency_executor_name") or test["executor"]["name"]
    if shell not in ("sh", "bash"):
        return "", f"prerequisites need the {shell} executor"
    setup = []
    for dep in test.get("dependencies") or []:
        check = fill(dep.get("prereq_command", ""), args, atomics)
        if _ok(shell, check):
            continue
        get = fill(dep.get("get_prereq_command", ""), args, atomics)
        why = f"prerequisite not met ({dep.get('description', '').strip()[:90]})"
        if not get.strip() or (NETWORK.search(get) and not LOCAL_URL.search(get)):
            return "", why
        if re.match(r"\s*echo\b[^>|]*$", get.strip()) or "exit 1" in get:
            return "", why  # (a get_prereq_command that only says what to install)
        if INSTALLS.search(get):
            return "", why + ": it installs packages"
        setup.append(get)
    return "\n".join(setup) or ":", ""


def _ok(shell: str, cmd: str, timeout: float = 30) -> bool:
    try:
        r = subprocess.run([f"/bin/{shell}", "-c", cmd], capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False
    return r.returncode == 0


def load(atomics: str, check_prereqs: bool = True) -> tuple[list[Scenario], list[dict]]:
    atomics = os.path.abspath(atomics)
    if not os.path.isdir(atomics):
        raise SystemExit(f"attacks: --atomics {atomics}: no such directory")
    tests: list[Scenario] = []
    skipped: list[dict] = []
    for path in sorted(glob.glob(os.path.join(atomics, "T*", "T*.yaml"))):
        tid = os.path.basename(os.path.dirname(path))
        if not tid.startswith(TECHNIQUES):
            continue
        with open(path) as f:
            doc = yaml.safe_load(f) or {}
        for n, test in enumerate(doc.get("atomic_tests") or [], 1):
            if "linux" not in (test.get("supported_platforms") or []):
                continue
            ident, name = f"{tid}#{n}", test.get("name", "?")
            ex = test.get("executor") or {}
            args = test.get("input_arguments") or {}
            cmd = fill(ex.get("command") or "", args, atomics)

            def skip(why: str, ident=ident, name=name) -> None:
                skipped.append({"id": ident, "name": name, "why": why})

            if "freebsd" in name.lower() and "linux" not in name.lower():
                skip("FreeBSD-only")
                continue
            if ex.get("name") not in ("sh", "bash"):
                skip(f"executor {ex.get('name')}")
                continue
            if not cmd.strip():
                skip("no command")
                continue
            if NETWORK.search(cmd) and not LOCAL_URL.search(cmd):
                skip("reaches the Internet (this host has none)")
                continue
            m = HOST_WIDE.search(cmd)
            if m:
                skip(f"changes host-wide state others here depend on ({m.group(0)})")
                continue
            setup = ""
            if check_prereqs:
                setup, why = prereqs(test, args, atomics)
                if why:
                    skip(why)
                    continue
            cleanup = fill(ex.get("cleanup_command") or "", args, atomics)
            # Files the test names in its inputs are effects too when they existed before it
            # (it deletes, overwrites or timestomps them; many are in /tmp, outside the
            # snapshotted trees). New ones are its staging, not an effect.
            files = tuple(
                str(spec.get("default"))
                for spec in args.values()
                if isinstance(spec, dict)
                and spec.get("type", "").lower() == "path"
                and str(spec.get("default", "")).startswith("/")
                and not str(spec.get("default")).startswith(atomics)
                and not re.search(r"[*?#{}$]", str(spec.get("default")))
            )
            slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40]
            tests.append(Scenario(
                name=f"art-{tid}-{n}-{slug}", category=category(tid), script=cmd,
                shell=ex["name"], trees=True, files=files, existing=True, mtime=True,
                survive=True, packet=tid.startswith(("T1048", "T1041")), setup=setup,
                cleanup=cleanup, source=f"art:{ident}", technique=tid, timeout=30.0,
            ))  # fmt: skip
    return tests, skipped
