/* system.bpf.c: reaching past the process: namespaces, mounts, BPF, kernel modules, memfds.
 *
 * unshare, setns                  new or joined namespaces
 * mount, umount (umount2)         target, source, type, flags
 * move_mount                      the new mount API's attach (fsmount, open_tree): target and
 *                                 source paths (relative to their dirfds when not absolute)
 * bpf                             the command (an agent loading BPF is suspicious in itself);
 *                                 a session's caller dies in the kernel (enforce mode): the
 *                                 first call completes, but touching the probes' maps takes
 *                                 two (an fd, then the change), and the second never comes
 * cgroup:cgroup_attach_task       a session's task moved to another cgroup, by anyone, or a
 *                                 roguewatch task moved (a guard event: a session's mover
 *                                 dies in the kernel, before it can freeze what it moved)
 * prlimit64, setpriority, sched_set*, process_vm_writev/readv
 *                                 a session reaching another process's limits, priority,
 *                                 scheduling or memory; aimed at roguewatch, a guard event.
 *                                 A process a session writes into joins the session
 *                                 (RW_P_TAINTED): what the injected code does is the session's
 * init_module, finit_module       absent on kernels without CONFIG_MODULES: the loader skips
 *                                 missing tracepoints and `roguewatch doctor` names them
 * memfd_create                    the start of fileless execution
 */

static __always_inline struct rw_rec *rw_sys_begin(u16 type)
{
    struct rw_proc *p = rw_current_proc();
    if (!p)
        return 0;
    return rw_begin(type, p);
}

TRACEPOINT_PROBE(syscalls, sys_enter_unshare)
{
    struct rw_rec *r = rw_sys_begin(RW_UNSHARE);
    if (!r)
        return 0;
    r->h.a[0] = args->unshare_flags;
    rw_stash(r);
    return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_unshare) { return rw_finish_hdr(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_setns)
{
    struct rw_rec *r = rw_sys_begin(RW_SETNS);
    if (!r)
        return 0;
    r->h.a[0] = args->fd;
    r->h.a[1] = args->flags;
    rw_stash(r);
    return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_setns) { return rw_finish_hdr(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_mount)
{
    struct rw_rec *r = rw_sys_begin(RW_MOUNT);
    if (!r)
        return 0;
    r->h.a[0] = args->flags;
    rw_str1_user(r, args->dir_name);
    rw_str2_user(r, args->dev_name);
    /* The file system type is short: it rides in the sockaddr bytes, unused here. */
    if (args->type)
        bpf_probe_read_user_str(r->h.addr, sizeof(r->h.addr), args->type);
    rw_stash(r);
    return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_mount) { return rw_finish(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_umount)
{
    struct rw_rec *r = rw_sys_begin(RW_MOUNT);
    if (!r)
        return 0;
    r->h.a[0] = args->flags;
    r->h.a[1] = RW_MOUNT_UMOUNT;
    rw_str1_user(r, args->name);
    rw_stash(r);
    return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_umount) { return rw_finish(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_move_mount)
{
    struct rw_rec *r = rw_sys_begin(RW_MOUNT);
    if (!r)
        return 0;
    r->h.a[0] = args->flags;
    r->h.a[1] = RW_MOUNT_MOVE;
    r->h.a[2] = (u64)(s64)args->to_dfd;
    rw_str1_user(r, args->to_pathname);
    rw_str2_user(r, args->from_pathname);
    rw_stash(r);
    return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_move_mount) { return rw_finish(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_bpf)
{
    struct rw_proc *p = rw_current_proc();
    if (!p)
        return 0;
    struct rw_rec *r = rw_begin(RW_BPF, p);
    if (!r)
        return 0;
    r->h.a[0] = args->cmd;
    rw_kill_current(r, p);
    rw_stash(r);
    return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_bpf) { return rw_finish_hdr(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_memfd_create)
{
    struct rw_rec *r = rw_sys_begin(RW_MEMFD_CREATE);
    if (!r)
        return 0;
    r->h.a[0] = args->flags;
    rw_str1_user(r, args->uname);
    rw_stash(r);
    return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_memfd_create) { return rw_finish(args->ret); }

#ifdef RW_HAVE_MODULE_TRACEPOINTS
TRACEPOINT_PROBE(syscalls, sys_enter_init_module)
{
    struct rw_rec *r = rw_sys_begin(RW_MODULE_LOAD);
    if (!r)
        return 0;
    r->h.a[0] = 0;
    r->h.a[1] = (u64)-1;
    rw_str1_user(r, args->uargs);
    rw_stash(r);
    return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_init_module) { return rw_finish(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_finit_module)
{
    struct rw_rec *r = rw_sys_begin(RW_MODULE_LOAD);
    if (!r)
        return 0;
    r->h.a[0] = 1;
    r->h.a[1] = args->fd;
    rw_str1_user(r, args->uargs);
    rw_stash(r);
    return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_finit_module) { return rw_finish(args->ret); }
#endif

TRACEPOINT_PROBE(cgroup, cgroup_attach_task)
{
    u32 moved = args->pid; /* a task (thread) id: the group leader's is its tgid */
    u32 self = bpf_get_current_pid_tgid() >> 32;
    /* (pointers are tested one by one: the verifier refuses arithmetic on them) */
    u32 guard = 0;
    if (guarded.lookup(&moved)) {
        if (guarded.lookup(&self))
            return 0; /* roguewatch placing its own tasks */
        guard = 1;
    }
    struct rw_proc *p = rw_current_proc();
    struct rw_proc *mp = sessions.lookup(&moved);
    /* Sessions are never 0: values, not pointers, are combined (the verifier refuses
     * arithmetic on pointers, which is what clang makes of `!a && !b`). */
    u64 target_session = mp ? mp->session : 0;
    u64 mover_session = p ? p->session : 0;
    if (!guard && !target_session && !mover_session)
        return 0;
    struct rw_rec *r = rw_begin(RW_CGROUP_ATTACH, p);
    if (!r)
        return 0;
    r->h.a[0] = moved;
    r->h.a[1] = args->dst_id;
    r->h.a[2] = (u32)args->dst_level | ((u64)(u32)args->dst_root << 32);
    r->h.a[3] = target_session;
    unsigned short off = args->data_loc_dst_path & 0xFFFF;
    long n = bpf_probe_read_kernel_str(r->data, RW_PATH_MAX, (void *)args + off);
    if (n > 0)
        r->h.len1 = n;
    if (guard) {
        r->h.flags |= RW_F_GUARD;
        rw_kill_current(r, p);
    }
    rw_emit(r);
    return 0;
}

/* A call that reaches another process (its limits, priority, scheduling, memory): stashed
 * for its result. Aimed at roguewatch: a guard event whoever calls, and the end of a
 * session's caller. A process a session writes into joins that session, now. */
static __always_inline int rw_target(u32 target, u32 call)
{
    u32 self = bpf_get_current_pid_tgid() >> 32;
    if (!target || target == self)
        return 0;
    u32 guard = 0;
    if (guarded.lookup(&target)) {
        if (guarded.lookup(&self))
            return 0;
        guard = 1;
    }
    struct rw_proc *p = rw_current_proc();
    u64 mover_session = p ? p->session : 0;
    if (!guard && !mover_session)
        return 0;
    struct rw_rec *r = rw_begin(RW_TARGET, p);
    if (!r)
        return 0;
    r->h.a[0] = target;
    r->h.a[1] = call;
    if (guard) {
        r->h.flags |= RW_F_GUARD;
        rw_kill_current(r, p);
    } else if (p && call == RW_TARGET_PROCESS_VM_WRITEV && !sessions.lookup(&target)) {
        struct rw_proc t = {};
        t.session = p->session;
        t.start_ns = bpf_ktime_get_boot_ns(); /* when it joined: its exec id from now */
        t.ppid = self;
        t.pstart_ns = p->start_ns;
        t.flags = (p->flags & ~RW_F_ADOPTED) | RW_P_TAINTED;
        if (sessions.insert(&target, &t) == 0) /* BPF_NOEXIST */
            r->h.a[2] = 1; /* tainted */
    }
    rw_stash(r);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_prlimit64)
{
    return rw_target((u32)args->pid, RW_TARGET_PRLIMIT64);
}
TRACEPOINT_PROBE(syscalls, sys_exit_prlimit64) { return rw_finish_hdr(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_setpriority)
{
    if (args->which != 0) /* PRIO_PROCESS only: a group or a user is not one process */
        return 0;
    return rw_target((u32)args->who, RW_TARGET_SETPRIORITY);
}
TRACEPOINT_PROBE(syscalls, sys_exit_setpriority) { return rw_finish_hdr(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_sched_setattr)
{
    return rw_target((u32)args->pid, RW_TARGET_SCHED_SETATTR);
}
TRACEPOINT_PROBE(syscalls, sys_exit_sched_setattr) { return rw_finish_hdr(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_sched_setscheduler)
{
    return rw_target((u32)args->pid, RW_TARGET_SCHED_SETSCHEDULER);
}
TRACEPOINT_PROBE(syscalls, sys_exit_sched_setscheduler) { return rw_finish_hdr(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_sched_setparam)
{
    return rw_target((u32)args->pid, RW_TARGET_SCHED_SETPARAM);
}
TRACEPOINT_PROBE(syscalls, sys_exit_sched_setparam) { return rw_finish_hdr(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_sched_setaffinity)
{
    return rw_target((u32)args->pid, RW_TARGET_SCHED_SETAFFINITY);
}
TRACEPOINT_PROBE(syscalls, sys_exit_sched_setaffinity) { return rw_finish_hdr(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_process_vm_writev)
{
    return rw_target((u32)args->pid, RW_TARGET_PROCESS_VM_WRITEV);
}
TRACEPOINT_PROBE(syscalls, sys_exit_process_vm_writev) { return rw_finish_hdr(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_process_vm_readv)
{
    return rw_target((u32)args->pid, RW_TARGET_PROCESS_VM_READV);
}
TRACEPOINT_PROBE(syscalls, sys_exit_process_vm_readv) { return rw_finish_hdr(args->ret); }
