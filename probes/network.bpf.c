/* network.bpf.c: where a session's sockets go.
 *
 * syscalls:sys_enter/exit_connect      destination of every connect (TCP and UDP, v4 and v6)
 * syscalls:sys_enter/exit_sendto       explicit destinations (unconnected UDP, TCP Fast Open)
 * syscalls:sys_enter/exit_sendmsg      the same through a msghdr, and sendmmsg's first message
 * syscalls:sys_enter/exit_sendmmsg
 * syscalls:sys_enter/exit_socket       raw, packet and netlink sockets; every socket's type is
 *                                      remembered by (tgid, fd) to name the protocol later
 * syscalls:sys_enter/exit_bind, listen
 * For port 53 the first bytes sent are copied, so rules can read the DNS query name; a socket
 * connected to port 53 is remembered so its later sends are copied too.
 */

struct rw_sock_key {
    u32 tgid;
    u32 fd;
};
/* (tgid, fd) -> SOCK_* type | protocol << 16 */
/* LRU: entries of exited processes age out instead of filling the map */
BPF_TABLE("lru_hash", struct rw_sock_key, u32, sock_types, 65536);
/* sockets connected to port 53: their destination, so a plain send() still names it */
struct rw_dns_dest {
    u8 addr[28];
};
BPF_TABLE("lru_hash", struct rw_sock_key, struct rw_dns_dest, dns_socks, 4096);
/* type | family << 32 between enter and exit, in the task's storage (0: none) */
BPF_TASK_STORAGE(socket_args, u64);

#define RW_AF_UNIX 1
#define RW_AF_INET 2
#define RW_AF_INET6 10
#define RW_AF_NETLINK 16
#define RW_AF_PACKET 17
#define RW_SOCK_RAW 3
#define RW_MSG_FASTOPEN 0x20000000

static __always_inline u32 rw_sock_type(u32 tgid, u32 fd)
{
    struct rw_sock_key k = {.tgid = tgid, .fd = fd};
    u32 *t = sock_types.lookup(&k);
    return t ? *t : 0;
}

static __always_inline bool rw_is_dns(struct rw_rec *r)
{
    u16 fam = rw_addr_family(r);
    return (fam == RW_AF_INET || fam == RW_AF_INET6) && rw_addr_port(r) == 53;
}

static __always_inline void rw_copy_payload(struct rw_rec *r, const void *buf, u64 len)
{
    u32 n = len > RW_DNS_MAX ? RW_DNS_MAX : len;
    n &= (2 * RW_DNS_MAX - 1);
    if (n > 0 && n <= RW_DNS_MAX && bpf_probe_read_user(r->data, n, buf) == 0)
        r->h.len1 = n;
}

/* The DNS destination a socket was connected to, by (tgid, fd). A socket inherited at fork
 * has its entry under the ancestor that connected it: up to RW_DNS_ANCESTORS generations of
 * the session are looked at. An entry whose address is zero is a tombstone: this process's
 * fd was connected elsewhere since, and the ancestor's entry must not apply to it. */
#define RW_DNS_ANCESTORS 4

static __always_inline struct rw_dns_dest *rw_dns_lookup(u32 tgid, u32 fd, struct rw_proc *p)
{
    struct rw_sock_key k = {.tgid = tgid, .fd = fd};
    struct rw_dns_dest *v = dns_socks.lookup(&k);
    if (v)
        return v;
    /* A socket this process made itself (sock_types knows it) was not inherited: no need to
     * look further (every send on a connected socket comes through here). */
    if (sock_types.lookup(&k))
        return 0;
    u32 anc = p ? p->ppid : 0;
#pragma unroll
    for (int i = 0; i < RW_DNS_ANCESTORS; i++) {
        if (!anc)
            break;
        k.tgid = anc;
        v = dns_socks.lookup(&k);
        if (v)
            return v;
        struct rw_proc *ap = sessions.lookup(&anc);
        if (!ap)
            break;
        anc = ap->ppid;
    }
    return 0;
}

static __always_inline bool rw_dns_sock(u32 tgid, u32 fd, struct rw_proc *p)
{
    /* Read through the pointer: clang would otherwise OR it with other conditions, and the
     * verifier refuses arithmetic on a map pointer that may be NULL. */
    struct rw_dns_dest *v = rw_dns_lookup(tgid, fd, p);
    return v ? v->addr[0] != 0 : 0;
}

/* A send with no destination on a DNS socket: name the destination it was connected to. */
static __always_inline void rw_dns_dest_of(struct rw_rec *r, u32 tgid, u32 fd, struct rw_proc *p)
{
    struct rw_dns_dest *v = rw_dns_lookup(tgid, fd, p);
    if (v)
        __builtin_memcpy(r->h.addr, v->addr, sizeof(r->h.addr));
}

TRACEPOINT_PROBE(syscalls, sys_enter_connect)
{
    struct rw_proc *p = rw_current_proc();
    if (!p)
        return 0;
    struct rw_rec *r = rw_begin(RW_CONNECT, p);
    if (!r)
        return 0;
    r->h.a[0] = args->fd;
    r->h.a[1] = rw_sock_type(r->h.pid, args->fd);
    rw_sockaddr(r, args->uservaddr, args->addrlen);
    struct rw_sock_key k = {.tgid = r->h.pid, .fd = args->fd};
    if (rw_is_dns(r)) {
        struct rw_dns_dest d = {};
        __builtin_memcpy(d.addr, r->h.addr, sizeof(d.addr));
        dns_socks.update(&k, &d);
    } else if (r->h.a[1]) {
        /* its own socket, reconnected elsewhere (looked up first: a delete takes the
         * bucket's lock, and nearly every connect has nothing to delete) */
        if (dns_socks.lookup(&k))
            dns_socks.delete(&k);
    } else if (rw_dns_sock(r->h.pid, args->fd, p)) {
        struct rw_dns_dest none = {}; /* reconnected elsewhere: a tombstone hides the */
        dns_socks.update(&k, &none);  /* entry of the ancestor this fd came from */
    }
    rw_stash(r);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_connect)
{
    return rw_finish_hdr(args->ret);
}

TRACEPOINT_PROBE(syscalls, sys_enter_sendto)
{
    struct rw_proc *p = rw_current_proc();
    if (!p)
        return 0;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    bool fastopen = args->flags & RW_MSG_FASTOPEN;
    /* A send on a connected socket has no destination of its own: skip it, unless it is a
     * DNS socket (the query is the interesting part) or TCP Fast Open. */
    if (!args->addr && !fastopen && !rw_dns_sock(tgid, args->fd, p))
        return 0;
    struct rw_rec *r = rw_begin(RW_SENDTO, p);
    if (!r)
        return 0;
    r->h.a[0] = args->fd;
    r->h.a[1] = rw_sock_type(tgid, args->fd);
    r->h.a[2] = args->len;
    r->h.a[3] = args->flags;
    if (args->addr)
        rw_sockaddr(r, args->addr, args->addr_len);
    else
        rw_dns_dest_of(r, tgid, args->fd, p);
    if (rw_is_dns(r))
        rw_copy_payload(r, args->buff, args->len);
    rw_stash(r);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_sendto)
{
    return rw_finish(args->ret);
}

/* struct user_msghdr and struct iovec are user ABI, read from user memory. */
struct rw_umsghdr {
    void *name;
    int namelen;
    void *iov;
    u64 iovlen;
    void *control;
    u64 controllen;
    u32 flags;
};
struct rw_iovec {
    void *base;
    u64 len;
};

static __always_inline int rw_sendmsg(int fd, const void *umsg, u32 vlen)
{
    struct rw_proc *p = rw_current_proc();
    if (!p)
        return 0;
    struct rw_umsghdr m = {};
    if (bpf_probe_read_user(&m, sizeof(m), umsg) != 0)
        return 0;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    bool dns_sock = rw_dns_sock(tgid, fd, p);
    if (!m.name && !dns_sock)
        return 0;
    struct rw_rec *r = rw_begin(RW_SENDMSG, p);
    if (!r)
        return 0;
    r->h.a[0] = fd;
    r->h.a[1] = rw_sock_type(tgid, fd);
    r->h.a[2] = vlen;
    if (m.name)
        rw_sockaddr(r, m.name, m.namelen);
    else
        rw_dns_dest_of(r, tgid, fd, p);
    if (rw_is_dns(r) && m.iov && m.iovlen > 0) {
        struct rw_iovec iov = {};
        if (bpf_probe_read_user(&iov, sizeof(iov), m.iov) == 0 && iov.base)
            rw_copy_payload(r, iov.base, iov.len);
    }
    rw_stash(r);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_sendmsg)
{
    return rw_sendmsg(args->fd, args->msg, 1);
}

TRACEPOINT_PROBE(syscalls, sys_exit_sendmsg)
{
    return rw_finish(args->ret);
}

TRACEPOINT_PROBE(syscalls, sys_enter_sendmmsg)
{
    /* struct mmsghdr begins with its msghdr: the first message names the destination. */
    return rw_sendmsg(args->fd, args->mmsg, args->vlen);
}

TRACEPOINT_PROBE(syscalls, sys_exit_sendmmsg)
{
    return rw_finish(args->ret);
}

TRACEPOINT_PROBE(syscalls, sys_enter_socket)
{
    struct rw_proc *p = rw_current_proc();
    if (!p)
        return 0;
    struct task_struct *task = (struct task_struct *)bpf_get_current_task_btf();
    u64 *sa = socket_args.task_storage_get(task, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
    if (sa)
        *sa = (u32)args->type | ((u64)(u32)args->family << 32); /* type is never 0 */
    int family = args->family, type = args->type & 0xf;
    if (family == RW_AF_PACKET || family == RW_AF_NETLINK || type == RW_SOCK_RAW) {
        struct rw_rec *r = rw_begin(RW_SOCKET, p);
        if (!r)
            return 0;
        r->h.a[0] = family;
        r->h.a[1] = args->type;
        r->h.a[2] = args->protocol;
        rw_stash(r);
    }
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_socket)
{
    struct task_struct *task = (struct task_struct *)bpf_get_current_task_btf();
    u64 *v = socket_args.task_storage_get(task, 0, 0);
    if (v && *v) {
        if (args->ret >= 0) {
            /* A new socket on this fd: forget whatever the fd's previous socket was. */
            struct rw_sock_key k = {.tgid = bpf_get_current_pid_tgid() >> 32, .fd = args->ret};
            u32 t = (u32)*v & 0xf;
            /* Written only when it differs (an fd number is mostly reused for the same kind
             * of socket): an LRU update and a delete take locks, lookups do not. */
            u32 *old = sock_types.lookup(&k);
            if (!old || *old != t)
                sock_types.update(&k, &t);
            if (dns_socks.lookup(&k))
                dns_socks.delete(&k);
        }
        *v = 0;
    }
    return rw_finish_hdr(args->ret);
}

TRACEPOINT_PROBE(syscalls, sys_enter_bind)
{
    struct rw_proc *p = rw_current_proc();
    if (!p)
        return 0;
    struct rw_rec *r = rw_begin(RW_BIND, p);
    if (!r)
        return 0;
    r->h.a[0] = args->fd;
    r->h.a[1] = rw_sock_type(r->h.pid, args->fd);
    rw_sockaddr(r, args->umyaddr, args->addrlen);
    rw_stash(r);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_bind)
{
    return rw_finish_hdr(args->ret);
}

TRACEPOINT_PROBE(syscalls, sys_enter_listen)
{
    struct rw_proc *p = rw_current_proc();
    if (!p)
        return 0;
    struct rw_rec *r = rw_begin(RW_LISTEN, p);
    if (!r)
        return 0;
    r->h.a[0] = args->fd;
    r->h.a[1] = args->backlog;
    r->h.a[2] = rw_sock_type(r->h.pid, args->fd);
    rw_stash(r);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_listen)
{
    return rw_finish_hdr(args->ret);
}
