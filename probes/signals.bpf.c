/* signals.bpf.c: signals, process control, and the guard around roguewatch itself.
 *
 * kill, tkill, tgkill, pidfd_send_signal   target and signal, with the result
 * rt_sigaction                             SIG_IGN or a handler for SIGHUP, SIGINT, SIGTERM
 *                                          (SIG_DFL is filtered out here)
 * rt_sigprocmask                           blocking SIGHUP, SIGINT or SIGTERM: one record per
 *                                          process per RW_SIGMASK_NS (see below)
 * signal:signal_generate                   also: SIGHUP, SIGINT or SIGTERM sent by a user task
 *                                          to a tracked process (a shutdown attempted), with
 *                                          the kernel's result (`ignored`...)
 * setsid, setpgid, prctl, ptrace           detaching, renaming, tracing
 * task:task_rename                         comm changes, /proc/PID/comm writes included
 * signal:signal_generate                   guard: a user signal that reaches a roguewatch
 *                                          task, from ANY process (tracked or not); and the
 *                                          comm of a tracked process's kill's target
 * ptrace aimed at a roguewatch task is also a guard event from any process.
 */

#define RW_SIGCHLD 17

/* pidfds a session opened: (tgid, fd) -> pid, so pidfd_send_signal names its target here,
 * not later in user space when the fd may be closed or reused. */
struct rw_pidfd_key {
    u32 tgid;
    u32 fd;
};
/* LRU: entries of exited processes age out instead of filling the map */
BPF_TABLE("lru_hash", struct rw_pidfd_key, u32, pidfds, 16384);
BPF_HASH(pidfd_open_args, u32, u32, 1024);

TRACEPOINT_PROBE(syscalls, sys_enter_pidfd_open)
{
    if (!rw_current_proc())
        return 0;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    u32 pid = args->pid;
    pidfd_open_args.update(&tid, &pid);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_pidfd_open)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id;
    u32 *pid = pidfd_open_args.lookup(&tid);
    if (!pid)
        return 0;
    if (args->ret >= 0) {
        struct rw_pidfd_key k = {.tgid = id >> 32, .fd = args->ret};
        pidfds.update(&k, pid);
    }
    pidfd_open_args.delete(&tid);
    return 0;
}

static __always_inline int rw_kill(u64 target, u64 tid, u64 sig, u64 call)
{
    struct rw_proc *p = rw_current_proc();
    if (!p)
        return 0;
    struct rw_rec *r = rw_begin(RW_KILL, p);
    if (!r)
        return 0;
    r->h.a[0] = target;
    r->h.a[1] = tid;
    r->h.a[2] = sig;
    r->h.a[3] = call;
    /* Aimed at roguewatch (even if Landlock will refuse it): a guard event, and the end of
     * the sender. Signal 0 only asks whether the target exists. */
    u32 t = call == RW_KILL_CALL_TKILL ? (u32)tid : (u32)target;
    if (sig != 0 && guarded.lookup(&t)) {
        r->h.flags |= RW_F_GUARD;
        rw_kill_current(r, p);
    }
    rw_stash(r);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_kill)
{
    return rw_kill((u32)args->pid, 0, args->sig, RW_KILL_CALL_KILL);
}
TRACEPOINT_PROBE(syscalls, sys_exit_kill) { return rw_finish_hdr(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_tkill)
{
    return rw_kill(0, (u32)args->pid, args->sig, RW_KILL_CALL_TKILL);
}
TRACEPOINT_PROBE(syscalls, sys_exit_tkill) { return rw_finish_hdr(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_tgkill)
{
    return rw_kill((u32)args->tgid, (u32)args->pid, args->sig, RW_KILL_CALL_TGKILL);
}
TRACEPOINT_PROBE(syscalls, sys_exit_tgkill) { return rw_finish_hdr(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_pidfd_send_signal)
{
    /* The target is an fd: resolved here when the session opened it with pidfd_open, else
     * (target_tid 0) by user space through /proc/PID/fdinfo. */
    struct rw_pidfd_key k = {.tgid = bpf_get_current_pid_tgid() >> 32, .fd = args->pidfd};
    u32 *pid = pidfds.lookup(&k);
    return rw_kill((u32)args->pidfd, pid ? *pid : 0, args->sig,
                   RW_KILL_CALL_PIDFD_SEND_SIGNAL);
}
TRACEPOINT_PROBE(syscalls, sys_exit_pidfd_send_signal) { return rw_finish_hdr(args->ret); }

/* A termination signal sent to a tracked process: user space confirms from /proc what its
 * dispositions are now (stream/sigstate.py). The sender may be untracked (the harness, the
 * operator): the record names the target's session. */
static __always_inline void rw_signal_sent(u32 target, int sig, int result)
{
    struct rw_proc *tp = sessions.lookup(&target);
    if (!tp)
        return;
    u64 session = tp->session;
    struct rw_rec *r = rw_begin(RW_SIGNAL_SENT, rw_current_proc());
    if (!r)
        return;
    r->h.a[0] = target;
    r->h.a[1] = sig;
    r->h.a[2] = (u32)result;
    r->h.a[3] = session;
    rw_emit(r);
}

TRACEPOINT_PROBE(signal, signal_generate)
{
    /* A fatal signal to a tracked process: what its exit will say (process.bpf.c). */
    rw_note_fatal_sent(args->pid, args->sig, args->code, args->result);
    /* Only signals sent by a user task (SI_USER, SI_QUEUE, SI_TKILL...: code <= 0), never
     * SIGCHLD, and only when the target is one of ours. */
    if (args->code > 0 || args->sig == RW_SIGCHLD || args->sig <= 0)
        return 0;
    /* Inside a tracked process's kill syscall (its record is pending): the target's comm, in
     * the record's unused address bytes, while the target surely exists (a SIGKILLed auditd
     * is gone before user space could look it up). The first target of a group kill. */
    struct rw_hdr *pend = rw_pending_hdr();
    if (pend && pend->type == RW_KILL && !pend->addr[0])
        bpf_probe_read_kernel(pend->addr, TASK_COMM_LEN, args->comm);
    u32 target = args->pid;
    if (args->sig == 1 || args->sig == 2 || args->sig == 15)
        rw_signal_sent(target, args->sig, args->result);
    if (!guarded.lookup(&target))
        return 0;
    u32 self = bpf_get_current_pid_tgid() >> 32;
    if (guarded.lookup(&self))
        return 0; /* roguewatch signalling itself */
    struct rw_proc *p = rw_current_proc();
    struct rw_rec *r = rw_begin(RW_KILL, p);
    if (!r)
        return 0;
    r->h.flags |= RW_F_GUARD;
    r->h.ret = 0; /* the tracepoint's result is a delivery code, not the syscall's result */
    rw_kill_current(r, p);
    r->h.a[0] = target;
    r->h.a[1] = target;
    r->h.a[2] = args->sig;
    r->h.a[3] = RW_KILL_CALL_GENERATE;
    rw_emit(r);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_rt_sigaction)
{
    int sig = args->sig;
    if (sig != 1 && sig != 2 && sig != 15)
        return 0;
    if (!args->act)
        return 0;
    struct rw_proc *p = rw_current_proc();
    if (!p)
        return 0;
    u64 handler = 0; /* struct sigaction starts with sa_handler (user ABI) */
    bpf_probe_read_user(&handler, sizeof(handler), args->act);
    if (handler == 0)
        return 0; /* restoring the default is never a way to survive a shutdown */
    struct rw_rec *r = rw_begin(RW_RT_SIGACTION, p);
    if (!r)
        return 0;
    r->h.a[0] = sig;
    r->h.a[1] = handler;
    rw_stash(r);
    return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_rt_sigaction) { return rw_finish_hdr(args->ret); }

/* Blocking SIGHUP (bit 0), SIGINT (bit 1) or SIGTERM (bit 14). Spawning a child blocks
 * every signal for an instant (glibc's posix_spawn, CPython's subprocess, make, timeout):
 * only what still stands a moment later counts, and user space reads that from /proc after
 * a delay longer than RW_SIGMASK_NS (stream/sigstate.py). So one record per process per
 * RW_SIGMASK_NS (and image) is enough: a block that stands was either recorded, or fell
 * within RW_SIGMASK_NS of a record whose check comes after it. */
#define RW_TERM_SIGMASK ((1ULL << 0) | (1ULL << 1) | (1ULL << 14))
#define RW_SIGMASK_NS 250000000ULL
/* tgid -> the last record's time and the image it was of (a new image records at once) */
struct rw_sigmask_last {
    u64 ts;
    u64 start_ns;
};
BPF_TABLE("lru_hash", u32, struct rw_sigmask_last, sigmask_last, 16384);

TRACEPOINT_PROBE(syscalls, sys_enter_rt_sigprocmask)
{
    if (args->how == 1 /* SIG_UNBLOCK */ || !args->nset)
        return 0;
    struct rw_proc *p = rw_current_proc();
    if (!p)
        return 0;
    u64 set = 0; /* sigset_t starts with the word of signals 1-64 (user ABI) */
    bpf_probe_read_user(&set, sizeof(set), args->nset);
    if (!(set & RW_TERM_SIGMASK))
        return 0;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    u64 now = bpf_ktime_get_boot_ns();
    struct rw_sigmask_last *last = sigmask_last.lookup(&tgid);
    if (last && last->start_ns == p->start_ns && now - last->ts < RW_SIGMASK_NS)
        return 0;
    struct rw_sigmask_last mark = {.ts = now, .start_ns = p->start_ns};
    sigmask_last.update(&tgid, &mark);
    struct rw_rec *r = rw_begin(RW_SIGPROCMASK, p);
    if (!r)
        return 0;
    r->h.a[0] = args->how;
    r->h.a[1] = set;
    rw_emit(r);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_setsid)
{
    struct rw_proc *p = rw_current_proc();
    if (!p)
        return 0;
    struct rw_rec *r = rw_begin(RW_SETSID, p);
    if (r)
        rw_stash(r);
    return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_setsid) { return rw_finish_hdr(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_setpgid)
{
    struct rw_proc *p = rw_current_proc();
    if (!p)
        return 0;
    struct rw_rec *r = rw_begin(RW_SETPGID, p);
    if (!r)
        return 0;
    r->h.a[0] = (u32)args->pid;
    r->h.a[1] = (u32)args->pgid;
    rw_stash(r);
    return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_setpgid) { return rw_finish_hdr(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_prctl)
{
    struct rw_proc *p = rw_current_proc();
    if (!p)
        return 0;
    struct rw_rec *r = rw_begin(RW_PRCTL, p);
    if (!r)
        return 0;
    r->h.a[0] = args->option;
    r->h.a[1] = args->arg2;
    if (args->option == 15 /* PR_SET_NAME */) {
        long n = bpf_probe_read_user_str(r->data, TASK_COMM_LEN, (void *)args->arg2);
        if (n > 0)
            r->h.len1 = n;
    }
    rw_stash(r);
    return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_prctl) { return rw_finish(args->ret); }

TRACEPOINT_PROBE(task, task_rename)
{
    struct rw_proc *p = rw_current_proc();
    if (!p)
        return 0;
    struct rw_rec *r = rw_begin(RW_TASK_RENAME, p);
    if (!r)
        return 0;
    bpf_probe_read_kernel(r->data, TASK_COMM_LEN, args->oldcomm);
    bpf_probe_read_kernel(r->data + TASK_COMM_LEN, TASK_COMM_LEN, args->newcomm);
    r->h.len1 = TASK_COMM_LEN;
    r->h.len2 = TASK_COMM_LEN;
    rw_emit(r);
    return 0;
}

static __always_inline int rw_ptrace(struct rw_proc *p, u16 flags, long request, u32 target)
{
    struct rw_rec *r = rw_begin(RW_PTRACE, p);
    if (!r)
        return 0;
    r->h.flags |= flags;
    if (flags & RW_F_GUARD)
        rw_kill_current(r, p);
    r->h.a[0] = request;
    r->h.a[1] = target;
    rw_stash(r);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_ptrace)
{
    u32 target = (u32)args->pid;
    /* Separate paths: the verifier refuses the OR of two map pointers clang makes of
     * `!p && !guard`. */
    if (guarded.lookup(&target))
        return rw_ptrace(rw_current_proc(), RW_F_GUARD, args->request, target);
    struct rw_proc *p = rw_current_proc();
    if (!p)
        return 0;
    return rw_ptrace(p, 0, args->request, target);
}
TRACEPOINT_PROBE(syscalls, sys_exit_ptrace) { return rw_finish_hdr(args->ret); }
