"""roguewatch.runtime.priority: a component runs ahead of what it watches, in a group of its own."""

from __future__ import annotations

import os
import subprocess
import sys

from roguewatch.runtime import priority

from tests.conftest import require_root


def test_a_component_gets_its_own_session_and_autogroup_at_monitor_nice() -> None:
    require_root()
    p = subprocess.Popen(["sleep", "30"], preexec_fn=priority.raise_self)
    try:
        assert os.getpriority(os.PRIO_PROCESS, p.pid) == priority.MONITOR_NICE
        assert os.getsid(p.pid) == p.pid != os.getsid(0)
        if os.path.exists(f"/proc/{p.pid}/autogroup"):
            with open(f"/proc/{p.pid}/autogroup") as f:
                group = f.read()
            with open("/proc/self/autogroup") as f:
                ours = f.read()
            # The kernel prints nothing for a task in the root group (no autogroup of its
            # own: a process started outside any login session, as CI is), so compare names
            # only when there is one; the component's own group must always be named.
            assert group.startswith("/autogroup-"), group
            assert group.split()[0] != (ours.split() or [""])[0], (group, ours)
            assert group.split()[-1] == str(priority.MONITOR_NICE), group
        assert priority.current() == os.getpriority(os.PRIO_PROCESS, 0)  # we are unchanged
    finally:
        p.kill()
        p.wait()


def test_without_privilege_it_runs_at_normal_priority_and_does_not_fail() -> None:
    require_root()
    code = ("import os\nos.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
            "from roguewatch.runtime import priority\npriority.raise_self()\n"
            "print(os.getpriority(os.PRIO_PROCESS, 0), os.getsid(0) == os.getpid())")  # fmt: skip
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == [str(os.getpriority(os.PRIO_PROCESS, 0)), "True"], p.stdout
