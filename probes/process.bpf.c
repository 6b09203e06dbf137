/* process.bpf.c: process lifecycle and session inheritance.
 *
 * sched:sched_process_fork   a child of a tracked task joins its session before it first runs
 *                            (clone/clone3 flags stashed at sys_enter say thread or process,
 *                            and which namespaces are new)
 * sched:sched_process_exec   exec events (argv stashed at sys_enter_execve*), and adoption of
 *                            untracked processes by uid or comm selectors
 * sched:sched_process_exit   exit events when the last thread goes (group_dead); the session
 *                            entry is removed
 * syscalls:sys_enter_exit_group, signal:signal_deliver  the exit code or fatal signal
 */

BPF_HASH(clone_flags, u32, u64, 16384);
BPF_HASH(exit_status, u32, u64, 16384); /* tgid -> (signal << 32) | code */

struct rw_argv {
    u32 len;
    u32 truncated;
    char buf[RW_ARGV_MAX + RW_ARGV_ARG_MAX];
};
BPF_F_TABLE("hash", u32, struct rw_argv, argv_stash, 1024, BPF_F_NO_PREALLOC);
BPF_PERCPU_ARRAY(argv_scratch, struct rw_argv, 1);

static __always_inline int rw_stash_clone(u64 flags)
{
    if (!rw_current_proc())
        return 0;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    clone_flags.update(&tid, &flags);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_clone)
{
    return rw_stash_clone(args->clone_flags);
}

TRACEPOINT_PROBE(syscalls, sys_enter_clone3)
{
    u64 flags = 0;
    if (!rw_current_proc())
        return 0;
    /* struct clone_args starts with its u64 flags (user ABI, stable). */
    bpf_probe_read_user(&flags, sizeof(flags), args->uargs);
    return rw_stash_clone(flags);
}

TRACEPOINT_PROBE(sched, sched_process_fork)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 ptgid = id >> 32, tid = (u32)id;
    struct rw_proc *p = sessions.lookup(&ptgid);
    if (!p)
        return 0;
    u64 flags = 0;
    u64 *cf = clone_flags.lookup(&tid);
    if (cf) {
        flags = *cf;
        clone_flags.delete(&tid);
    }
    u32 child = args->child_pid;
    struct rw_rec *r = rw_begin(RW_FORK, p);
    if (!r)
        return 0;
    if (flags & CLONE_THREAD) {
        r->h.flags |= RW_F_THREAD;
    } else {
        struct rw_proc c = {};
        c.session = p->session;
        c.start_ns = r->h.ts;
        c.pstart_ns = p->start_ns;
        c.ppid = ptgid;
        c.flags = p->flags;
        if (sessions.update(&child, &c) != 0) {
            /* The session map is full: the child would run untracked. Fail closed: in
             * enforce mode the parent dies before it returns from fork (the child, already
             * made, is in the session's cgroup, which the session end kills whole). */
            u32 k = RW_COUNTER_UNTRACKED_FORKS;
            u64 *n = counters.lookup(&k);
            if (n)
                __sync_fetch_and_add(n, 1);
            r->h.flags |= RW_F_UNTRACKED;
            rw_kill_current(r, p);
        }
    }
    r->h.a[0] = child;
    r->h.a[1] = flags;
    r->h.a[2] = r->h.ts; /* the child's start_ns: its exec id */
    rw_emit(r);
    return 0;
}

static __always_inline int rw_stash_argv(const char *const *argv)
{
    if (!rw_current_proc())
        return 0;
    u32 zero = 0;
    struct rw_argv *a = argv_scratch.lookup(&zero);
    if (!a)
        return 0;
    a->len = 0;
    a->truncated = 0;
    u32 off = 0;
#pragma unroll
    for (int i = 0; i < RW_ARGV_ARGS; i++) {
        const char *arg = 0;
        if (bpf_probe_read_user(&arg, sizeof(arg), &argv[i]) != 0) {
            a->truncated = 1; /* unreadable here: user space reads /proc/PID/cmdline */
            goto done;
        }
        if (!arg)
            goto done;
        if (off >= RW_ARGV_MAX) {
            a->truncated = 1;
            goto done;
        }
        long n = bpf_probe_read_user_str(a->buf + (off & (RW_ARGV_MAX - 1)), RW_ARGV_ARG_MAX,
                                         arg);
        if (n <= 0) {
            /* A string in a page not present (file-backed memory a fresh fork has not
             * touched: literals of the binary, a mapped file): no fault can be taken here.
             * Say so, or an agent could hide its arguments there. */
            a->truncated = 1;
            goto done;
        }
        if (n == RW_ARGV_ARG_MAX)
            a->truncated = 1;
        off += n;
    }
    /* All RW_ARGV_ARGS copied: truncated only if there is one more (a NULL here is the end
     * of an argv of exactly RW_ARGV_ARGS; an unreadable slot is left to /proc). */
    {
        const char *more = 0;
        if (bpf_probe_read_user(&more, sizeof(more), &argv[RW_ARGV_ARGS]) != 0 || more)
            a->truncated = 1;
    }
done:
    a->len = off > RW_ARGV_MAX ? RW_ARGV_MAX : off;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    argv_stash.update(&tid, a);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_execve)
{
    return rw_stash_argv((const char *const *)args->argv);
}

TRACEPOINT_PROBE(syscalls, sys_enter_execveat)
{
    return rw_stash_argv((const char *const *)args->argv);
}

static __always_inline int rw_drop_argv(void)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    argv_stash.delete(&tid);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_execve)
{
    return rw_drop_argv();
}

TRACEPOINT_PROBE(syscalls, sys_exit_execveat)
{
    return rw_drop_argv();
}

/* Adoption: an untracked process whose uid or new comm is selected starts a session. */
static __always_inline struct rw_proc *rw_adopt(u32 tgid, u64 now)
{
    u32 uid = (u32)bpf_get_current_uid_gid();
    struct rw_comm_key key = {};
    bpf_get_current_comm(&key.comm, sizeof(key.comm));
    u8 *policy = adopt_uids.lookup(&uid);
    if (!policy)
        policy = adopt_comms.lookup(&key);
    if (!policy)
        return 0;
    u32 policy_id = *policy;
    u32 k = RW_COUNTER_ADOPTED_NEXT;
    u64 *next = counters.lookup(&k);
    if (!next)
        return 0;
    struct rw_proc p = {};
    p.session = RW_SESSION_ADOPTED_BASE | __sync_fetch_and_add(next, 1);
    p.start_ns = now;
    p.flags = RW_F_ADOPTED | (policy_id << RW_P_POLICY_SHIFT);
    if (sessions.update(&tgid, &p) != 0)
        return 0;
    return sessions.lookup(&tgid);
}

TRACEPOINT_PROBE(sched, sched_process_exec)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32, tid = (u32)id;
    u64 now = bpf_ktime_get_boot_ns();
    struct rw_proc *p = sessions.lookup(&tgid);
    if (p)
        p->start_ns = now; /* a new program: a new exec id */
    else
        p = rw_adopt(tgid, now);
    if (!p)
        return 0;
    struct rw_rec *r = rw_begin(RW_EXEC, p);
    if (!r)
        return 0;
    r->h.ts = now;
    r->h.a[0] = args->old_pid;
    unsigned short loc = args->data_loc_filename & 0xFFFF;
    long n = bpf_probe_read_kernel_str(r->data, RW_PATH_MAX, (void *)args + loc);
    if (n > 0)
        r->h.len1 = n;
    /* argv was stashed by the thread that called execve: after a multi-threaded exec the
     * caller's tid became the tgid, so look under both. */
    u32 old = args->old_pid;
    struct rw_argv *a = argv_stash.lookup(&old);
    if (!a)
        a = argv_stash.lookup(&tid);
    if (a) {
        u32 off = r->h.len1;
        if (off > RW_PATH_MAX - 1)
            off = RW_PATH_MAX - 1;
        off &= RW_PATH_MAX - 1;
        u32 len = a->len;
        if (len > RW_ARGV_MAX)
            len = RW_ARGV_MAX;
        len &= (2 * RW_ARGV_MAX - 1);
        if (len > 0 && len <= RW_ARGV_MAX &&
            bpf_probe_read_kernel(r->data + off, len, a->buf) == 0) {
            r->h.len1 = off;
            r->h.len2 = len;
        }
        if (a->truncated)
            r->h.flags |= RW_F_TRUNC;
        argv_stash.delete(&old);
    }
    rw_emit(r);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_exit_group)
{
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (!sessions.lookup(&tgid))
        return 0;
    u64 status = (u32)(args->error_code & 0xff);
    exit_status.update(&tgid, &status);
    return 0;
}

/* Signals whose default action ends the process (so a SIG_DFL delivery is a death). */
#define RW_FATAL_DEFAULT ((1ULL << 1) | (1ULL << 2) | (1ULL << 3) | (1ULL << 4) | (1ULL << 5) | \
    (1ULL << 6) | (1ULL << 7) | (1ULL << 8) | (1ULL << 9) | (1ULL << 10) | (1ULL << 11) | \
    (1ULL << 12) | (1ULL << 13) | (1ULL << 14) | (1ULL << 15) | (1ULL << 16) | (1ULL << 24) | \
    (1ULL << 25) | (1ULL << 26) | (1ULL << 27) | (1ULL << 29) | (1ULL << 30) | (1ULL << 31))

/* tgid -> a fatal signal a user task sent it, not since delivered to a handler. A fatal
 * SIG_DFL signal is turned into a group exit when it is sent (complete_signal): the dying
 * task only ever dequeues SIGKILL, so signal_deliver alone would say 9. Noted at
 * signal_generate (signals.bpf.c), used when the SIGKILL arrives. */
BPF_HASH(fatal_sent, u32, u32, 16384);

static __always_inline void rw_note_fatal_sent(u32 target, int sig, int code, int result)
{
    if (code > 0 || result != 0 || sig <= 0 || sig >= 32 || sig == 9 ||
        !((1ULL << sig) & RW_FATAL_DEFAULT))
        return;
    if (!sessions.lookup(&target))
        return;
    u32 s = sig;
    fatal_sent.update(&target, &s);
}

TRACEPOINT_PROBE(signal, signal_deliver)
{
    int sig = args->sig;
    if (sig <= 0 || sig >= 32 || !((1ULL << sig) & RW_FATAL_DEFAULT))
        return 0;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (!sessions.lookup(&tgid))
        return 0;
    if (sig != 9 && args->sa_handler != 0) {
        fatal_sent.delete(&tgid); /* caught: what was sent is not a death */
        return 0;
    }
    /* The group exit SIGKILLs the other threads too: keep the signal that started it. */
    u64 *old = exit_status.lookup(&tgid);
    if (sig == 9 && old && (*old >> 32))
        return 0;
    if (sig == 9) {
        u32 *sent = fatal_sent.lookup(&tgid);
        if (sent)
            sig = *sent;
    }
    u64 status = (u64)sig << 32;
    exit_status.update(&tgid, &status);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32, tid = (u32)id;
    rw_fold_end(); /* this thread's folded repeats, before its exit */
    guarded.delete(&tid); /* a pid that roguewatch had will be someone else's next */
    pending.delete(&tid);
    clone_flags.delete(&tid);
    argv_stash.delete(&tid);
    if (!args->group_dead) {
        /* A thread: drop the entry a fork without clone flags may have made for it. */
        if (tid != tgid)
            sessions.delete(&tid);
        return 0;
    }
    struct rw_proc *p = sessions.lookup(&tgid);
    if (!p)
        return 0;
    struct rw_rec *r = rw_begin(RW_EXIT, p);
    if (r) {
        u64 *st = exit_status.lookup(&tgid);
        if (st) {
            r->h.a[0] = (u32)*st;
            r->h.a[1] = *st >> 32;
        }
        rw_emit(r);
    }
    exit_status.delete(&tgid);
    fatal_sent.delete(&tgid);
    sessions.delete(&tgid);
    if (tid != tgid)
        sessions.delete(&tid);
    return 0;
}
