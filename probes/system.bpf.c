/* system.bpf.c: reaching past the process: namespaces, mounts, BPF, kernel modules, memfds.
 *
 * unshare, setns                  new or joined namespaces
 * mount, umount (umount2)         target, source, type, flags
 * bpf                             the command (an agent loading BPF is suspicious in itself)
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
    r->h.a[1] = 1; /* umount */
    rw_str1_user(r, args->name);
    rw_stash(r);
    return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_umount) { return rw_finish(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_bpf)
{
    struct rw_rec *r = rw_sys_begin(RW_BPF);
    if (!r)
        return 0;
    r->h.a[0] = args->cmd;
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
