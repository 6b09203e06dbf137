/* files.bpf.c: file changes by a session (the paths persistence and tampering go through).
 *
 * open, openat, openat2, creat    only opens that write, create or truncate (filtered here)
 * rename, renameat, renameat2     source and destination
 * unlink, unlinkat, rmdir
 * link, linkat, symlink, symlinkat
 * chmod, fchmod, fchmodat, fchmodat2, chown, fchown, lchown, fchownat
 * truncate, ftruncate, utimensat, utimes, futimesat
 * chdir, fchdir                   so user space can follow the cwd and resolve relative paths
 * Each sys_enter_* copies the paths (user memory may change later) and stashes the record
 * (a one-path record in pending_path, the task's own storage); the matching
 * sys_exit_* adds the result and emits it. Relative paths and dirfds are
 * resolved in user space: a0 carries the dirfd (or the fd, with RW_F_FDPATH).
 */

#define RW_O_WRITE_MASK (01 | 02 | 0100 | 01000) /* O_WRONLY O_RDWR O_CREAT O_TRUNC */

static __always_inline struct rw_rec *rw_file_begin(u16 type)
{
    struct rw_proc *p = rw_current_proc();
    if (!p)
        return 0;
    return rw_begin(type, p);
}

/* A one-path record, begun in place in the task's pending_path (no rw_stash needed). */
static __always_inline struct rw_rec *rw_file_begin_path(u16 type)
{
    struct rw_proc *p = rw_current_proc();
    if (!p)
        return 0;
    return rw_begin_path(type, p);
}

static __always_inline int rw_open(int dfd, const char *path, u64 flags, u64 mode)
{
    if (!(flags & RW_O_WRITE_MASK))
        return 0;
    struct rw_rec *r = rw_file_begin_path(RW_OPEN);
    if (!r)
        return 0;
    r->h.a[0] = (u32)dfd;
    r->h.a[1] = flags;
    r->h.a[2] = mode;
    rw_str1_user(r, path);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_open)
{
    return rw_open(RW_AT_FDCWD, args->filename, args->flags, args->mode);
}
TRACEPOINT_PROBE(syscalls, sys_exit_open) { return rw_finish_path(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_openat)
{
    return rw_open(args->dfd, args->filename, args->flags, args->mode);
}
TRACEPOINT_PROBE(syscalls, sys_exit_openat) { return rw_finish_path(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_openat2)
{
    u64 how[2] = {}; /* struct open_how: u64 flags, u64 mode (user ABI) */
    bpf_probe_read_user(how, sizeof(how), args->how);
    return rw_open(args->dfd, args->filename, how[0], how[1]);
}
TRACEPOINT_PROBE(syscalls, sys_exit_openat2) { return rw_finish_path(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_creat)
{
    return rw_open(RW_AT_FDCWD, args->pathname, 01 | 0100 | 01000, args->mode);
}
TRACEPOINT_PROBE(syscalls, sys_exit_creat) { return rw_finish_path(args->ret); }

static __always_inline int rw_two_paths(u16 type, int olddfd, const char *old, int newdfd,
                                        const char *new, u64 flags)
{
    struct rw_rec *r = rw_file_begin(type);
    if (!r)
        return 0;
    r->h.a[0] = (u32)newdfd;
    r->h.a[1] = (u32)olddfd;
    r->h.a[2] = flags;
    rw_str1_user(r, new);
    rw_str2_user(r, old);
    rw_stash_big(r);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_rename)
{
    return rw_two_paths(RW_RENAME, RW_AT_FDCWD, args->oldname, RW_AT_FDCWD, args->newname, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_rename) { return rw_finish_big(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_renameat)
{
    return rw_two_paths(RW_RENAME, args->olddfd, args->oldname, args->newdfd, args->newname, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_renameat) { return rw_finish_big(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_renameat2)
{
    return rw_two_paths(RW_RENAME, args->olddfd, args->oldname, args->newdfd, args->newname,
                        args->flags);
}
TRACEPOINT_PROBE(syscalls, sys_exit_renameat2) { return rw_finish_big(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_link)
{
    return rw_two_paths(RW_LINK, RW_AT_FDCWD, args->oldname, RW_AT_FDCWD, args->newname, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_link) { return rw_finish_big(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_linkat)
{
    return rw_two_paths(RW_LINK, args->olddfd, args->oldname, args->newdfd, args->newname,
                        args->flags);
}
TRACEPOINT_PROBE(syscalls, sys_exit_linkat) { return rw_finish_big(args->ret); }

/* A symlink's target is text, never resolved: olddfd is meaningless for it. */
TRACEPOINT_PROBE(syscalls, sys_enter_symlink)
{
    return rw_two_paths(RW_SYMLINK, RW_AT_FDCWD, args->oldname, RW_AT_FDCWD, args->newname, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_symlink) { return rw_finish_big(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_symlinkat)
{
    return rw_two_paths(RW_SYMLINK, RW_AT_FDCWD, args->oldname, args->newdfd, args->newname, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_symlinkat) { return rw_finish_big(args->ret); }

static __always_inline int rw_path_op(u16 type, int dfd, const char *path, u64 a1, u64 a2,
                                      u64 a3)
{
    struct rw_rec *r = rw_file_begin_path(type);
    if (!r)
        return 0;
    r->h.a[0] = (u32)dfd;
    r->h.a[1] = a1;
    r->h.a[2] = a2;
    r->h.a[3] = a3;
    rw_str1_user(r, path);
    return 0;
}

static __always_inline int rw_fd_op(u16 type, u32 fd, u64 a1, u64 a2)
{
    struct rw_rec *r = rw_file_begin_path(type);
    if (!r)
        return 0;
    r->h.flags |= RW_F_FDPATH;
    r->h.a[0] = fd;
    r->h.a[1] = a1;
    r->h.a[2] = a2;
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_unlink)
{
    return rw_path_op(RW_UNLINK, RW_AT_FDCWD, args->pathname, 0, 0, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_unlink) { return rw_finish_path(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_unlinkat)
{
    return rw_path_op(RW_UNLINK, args->dfd, args->pathname, args->flag, 0, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_unlinkat) { return rw_finish_path(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_rmdir)
{
    return rw_path_op(RW_UNLINK, RW_AT_FDCWD, args->pathname, 0x200 /* AT_REMOVEDIR */, 0, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_rmdir) { return rw_finish_path(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_chmod)
{
    return rw_path_op(RW_CHMOD, RW_AT_FDCWD, args->filename, args->mode, 0, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_chmod) { return rw_finish_path(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_fchmod)
{
    return rw_fd_op(RW_CHMOD, args->fd, args->mode, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_fchmod) { return rw_finish_path(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_fchmodat)
{
    return rw_path_op(RW_CHMOD, args->dfd, args->filename, args->mode, 0, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_fchmodat) { return rw_finish_path(args->ret); }

#ifdef RW_HAVE_FCHMODAT2
TRACEPOINT_PROBE(syscalls, sys_enter_fchmodat2)
{
    return rw_path_op(RW_CHMOD, args->dfd, args->filename, args->mode, args->flags, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_fchmodat2) { return rw_finish_path(args->ret); }
#endif

TRACEPOINT_PROBE(syscalls, sys_enter_chown)
{
    return rw_path_op(RW_CHOWN, RW_AT_FDCWD, args->filename, (u32)args->user, (u32)args->group,
                      0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_chown) { return rw_finish_path(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_lchown)
{
    return rw_path_op(RW_CHOWN, RW_AT_FDCWD, args->filename, (u32)args->user, (u32)args->group,
                      0x100 /* AT_SYMLINK_NOFOLLOW */);
}
TRACEPOINT_PROBE(syscalls, sys_exit_lchown) { return rw_finish_path(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_fchown)
{
    return rw_fd_op(RW_CHOWN, args->fd, (u32)args->user, (u32)args->group);
}
TRACEPOINT_PROBE(syscalls, sys_exit_fchown) { return rw_finish_path(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_fchownat)
{
    return rw_path_op(RW_CHOWN, args->dfd, args->filename, (u32)args->user, (u32)args->group,
                      args->flag);
}
TRACEPOINT_PROBE(syscalls, sys_exit_fchownat) { return rw_finish_path(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_truncate)
{
    return rw_path_op(RW_TRUNCATE, RW_AT_FDCWD, args->path, args->length, 0, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_truncate) { return rw_finish_path(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_ftruncate)
{
    return rw_fd_op(RW_TRUNCATE, args->fd, args->length, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_ftruncate) { return rw_finish_path(args->ret); }

/* The time a utimes call sets, when it is given (not the current time, as `touch` without
 * -d asks: a NULL array or UTIME_NOW): 1 and its seconds in *secs (the mtime's, else the
 * atime's); 0 when it is now or nothing. Both structs are two 16-byte {seconds, fraction}
 * pairs on 64-bit; only timespec's fraction can say UTIME_NOW or UTIME_OMIT. */
#define RW_UTIME_NOW ((1LL << 30) - 1)
#define RW_UTIME_OMIT ((1LL << 30) - 2)
static __always_inline u64 rw_given_time(const void *p, int timespec, u64 *secs)
{
    s64 t[4] = {};
    if (!p || bpf_probe_read_user(t, sizeof(t), p))
        return 0;
    if (!timespec) {
        *secs = t[2];
        return 1;
    }
    if (t[3] != RW_UTIME_NOW && t[3] != RW_UTIME_OMIT) {
        *secs = t[2];
        return 1;
    }
    if (t[1] != RW_UTIME_NOW && t[1] != RW_UTIME_OMIT) {
        *secs = t[0];
        return 1;
    }
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_utimensat)
{
    u64 secs = 0;
    u64 given = rw_given_time(args->utimes, 1, &secs);
    /* utimensat(fd, NULL, ...) is futimens(): the fd itself is the file. */
    if (!args->filename)
        return rw_fd_op(RW_UTIMES, args->dfd, given, secs);
    return rw_path_op(RW_UTIMES, args->dfd, args->filename, given, secs, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_utimensat) { return rw_finish_path(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_utimes)
{
    u64 secs = 0;
    u64 given = rw_given_time(args->utimes, 0, &secs);
    return rw_path_op(RW_UTIMES, RW_AT_FDCWD, args->filename, given, secs, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_utimes) { return rw_finish_path(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_futimesat)
{
    u64 secs = 0;
    u64 given = rw_given_time(args->utimes, 0, &secs);
    return rw_path_op(RW_UTIMES, args->dfd, args->filename, given, secs, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_futimesat) { return rw_finish_path(args->ret); }

/* Extended attributes: the path (or fd) and the attribute's name (security.capability is a
 * file capability, set by setcap), never the value. */
static __always_inline int rw_setxattr(int dfd, const char *path, int fd, const char *name,
                                       u64 flags)
{
    struct rw_rec *r = rw_file_begin(RW_SETXATTR);
    if (!r)
        return 0;
    if (path) {
        r->h.a[0] = (u32)dfd;
        rw_str1_user(r, path);
    } else {
        r->h.flags |= RW_F_FDPATH;
        r->h.a[0] = (u32)fd;
    }
    r->h.a[1] = flags;
    rw_str2_user(r, name);
    rw_stash_big(r);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_setxattr)
{
    return rw_setxattr(RW_AT_FDCWD, args->pathname, 0, args->name, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_setxattr) { return rw_finish_big(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_lsetxattr)
{
    return rw_setxattr(RW_AT_FDCWD, args->pathname, 0, args->name, 0x100);
}
TRACEPOINT_PROBE(syscalls, sys_exit_lsetxattr) { return rw_finish_big(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_fsetxattr)
{
    return rw_setxattr(0, 0, args->fd, args->name, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_fsetxattr) { return rw_finish_big(args->ret); }

#ifdef RW_HAVE_SETXATTRAT
TRACEPOINT_PROBE(syscalls, sys_enter_setxattrat)
{
    /* An empty path with AT_EMPTY_PATH is the dfd itself: resolved like an fd. */
    return rw_setxattr(args->dfd, args->pathname, 0, args->name, args->at_flags);
}
TRACEPOINT_PROBE(syscalls, sys_exit_setxattrat) { return rw_finish_big(args->ret); }
#endif

TRACEPOINT_PROBE(syscalls, sys_enter_chdir)
{
    return rw_path_op(RW_CHDIR, RW_AT_FDCWD, args->filename, 0, 0, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_chdir) { return rw_finish_path(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_fchdir)
{
    return rw_fd_op(RW_CHDIR, args->fd, 0, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_fchdir) { return rw_finish_path(args->ret); }
