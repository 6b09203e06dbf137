"""The syscalls a policy's ``refuse:`` may name, and what each name stands for.

Data only: ``respond.seccomp`` builds the filter from it, ``policy.policy`` validates policies
against it. Each name maps to (syscall, argument) pairs: the argument's index when the call is
refused only while that argument names another process (is not 0), None when always.
"""

from __future__ import annotations

# What a policy may name in `refuse:`, and how each one is matched (syscalls with an argument
# test are refused only when it holds: the pid or `who` argument names another process).
REFUSALS: dict[str, tuple[tuple[str, int | None], ...]] = {
    "bpf": (("bpf", None),),
    "io_uring": (("io_uring_setup", None), ("io_uring_enter", None),
                 ("io_uring_register", None)),
    "prlimit_other": (("prlimit64", 0),),
    "setpriority_other": (("setpriority", 1),),
    "sched_other": (("sched_setattr", 0), ("sched_setscheduler", 0), ("sched_setparam", 0),
                    ("sched_setaffinity", 0)),
    "process_vm_writev": (("process_vm_writev", None),),
    "perf_event_open": (("perf_event_open", None),),
    "kexec": (("kexec_load", None), ("kexec_file_load", None)),
    "modules": (("init_module", None), ("finit_module", None), ("delete_module", None)),
}  # fmt: skip
# setpriority and sched_set* on a pid other than 0 stay out of the defaults: a thread library
# names its own threads by their ids (libzmq's pthread_setschedparam), which seccomp cannot
# tell from another process's. They are seen by the probes (`target` events) instead.
DEFAULT_REFUSALS = tuple(n for n in REFUSALS if n not in ("setpriority_other", "sched_other"))
