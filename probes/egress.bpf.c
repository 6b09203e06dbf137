/* egress.bpf.c: egress outside a session's allowlist is refused in the kernel.
 *
 * cgroup/connect4, connect6, sendmsg4, sendmsg6 (BPF_PROG_TYPE_CGROUP_SOCK_ADDR), attached by
 * user space to the cgroup of a session in enforce mode. They run inside connect(),
 * sendto() and sendmsg() (io_uring's and TCP Fast Open's too) before any packet is built:
 * returning 0 makes the call fail with EPERM, so nothing leaves. The allowlist lives in two
 * LPM tries keyed by (cgroup id, address), whose values hold the allowed port ranges and
 * protocols. A denial writes its record in egress_denied (roguewatch.h), for the refused
 * syscall's sys_exit to claim (its record is then flagged RW_F_DENIED), or, with no
 * sys_exit to claim it (io_uring), for the collector to publish.
 */

/* The allowlist's keys and values are written by user space (mirrored by probes/layout.py:
 * EGRESS_RANGES, EGRESS_KEY, EGRESS_ALLOW). */
#define RW_EGRESS_RANGES 8

struct rw_egress_key4 {
    u32 prefixlen; /* 64 bits of cgroup id + the address prefix */
    u64 cgid;
    u32 addr;
} __attribute__((packed));

struct rw_egress_key6 {
    u32 prefixlen;
    u64 cgid;
    u8 addr[16];
} __attribute__((packed));

struct rw_egress_allow {
    u16 port_lo[RW_EGRESS_RANGES];
    u16 port_hi[RW_EGRESS_RANGES];
    u8 proto[RW_EGRESS_RANGES]; /* 0 any, 6 tcp, 17 udp */
    u32 n;
};

struct rw_egress_cg {
    u64 session;
};

BPF_F_TABLE("lpm_trie", struct rw_egress_key4, struct rw_egress_allow, egress_allow4, 16384,
            BPF_F_NO_PREALLOC);
BPF_F_TABLE("lpm_trie", struct rw_egress_key6, struct rw_egress_allow, egress_allow6, 16384,
            BPF_F_NO_PREALLOC);
BPF_HASH(egress_cgroups, u64, struct rw_egress_cg, 1024);

static __always_inline bool rw_ports_allow(struct rw_egress_allow *a, u16 port, u8 proto)
{
#pragma unroll
    for (int i = 0; i < RW_EGRESS_RANGES; i++) {
        if (i >= a->n)
            break;
        if (port >= a->port_lo[i] && port <= a->port_hi[i] &&
            (a->proto[i] == 0 || a->proto[i] == proto))
            return true;
    }
    return false;
}

/* v6 is a constant at each call: a v4 program must not even read user_ip6 (the verifier
 * refuses the access), so the dead branch has to be folded away at compile time. */
static __always_inline int rw_egress_deny(struct bpf_sock_addr *ctx, u16 type, u16 port,
                                          u8 proto, const bool v6)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct rw_rec *r = rw_begin(type, rw_current_proc());
    if (!r)
        return 0;
    r->h.flags |= RW_F_DENIED;
    r->h.ret = -1; /* EPERM */
    r->h.a[0] = (u64)-1; /* no fd known here */
    r->h.a[1] = proto == 6 ? 1 : (proto == 17 ? 2 : 0); /* SOCK_STREAM / SOCK_DGRAM */
    u16 fam = v6 ? 10 : 2;
    __builtin_memcpy(r->h.addr, &fam, 2);
    u16 be = (port >> 8) | ((port & 0xff) << 8);
    __builtin_memcpy(r->h.addr + 2, &be, 2);
    if (!v6) {
        u32 a4 = ctx->user_ip4;
        __builtin_memcpy(r->h.addr + 4, &a4, 4);
    } else {
        u32 w0 = ctx->user_ip6[0], w1 = ctx->user_ip6[1], w2 = ctx->user_ip6[2],
            w3 = ctx->user_ip6[3];
        __builtin_memcpy(r->h.addr + 8, &w0, 4);
        __builtin_memcpy(r->h.addr + 12, &w1, 4);
        __builtin_memcpy(r->h.addr + 16, &w2, 4);
        __builtin_memcpy(r->h.addr + 20, &w3, 4);
    }
    /* An entry this thread left before can no longer be claimed (a thread makes one
     * syscall at a time): an io_uring denial the collector has not swept yet. Said now
     * rather than overwritten. */
    struct rw_hdr *old = egress_denied.lookup(&tid);
    if (old)
        rw_output(old, sizeof(*old), old->type);
    /* For the refused syscall's sys_exit to claim. With the map full, said now: the
     * syscall's own record then comes too, unflagged (twice, never lost). */
    if (egress_denied.update(&tid, &r->h) != 0)
        rw_emit(r);
    return 0;
}

static __always_inline int rw_egress4(struct bpf_sock_addr *ctx, u16 type)
{
    u64 cgid = bpf_get_current_cgroup_id();
    if (!egress_cgroups.lookup(&cgid))
        return 1;
    u16 port = bpf_ntohs((u16)ctx->user_port);
    u8 proto = ctx->protocol;
    struct rw_egress_key4 k = {};
    k.prefixlen = 64 + 32;
    k.cgid = cgid;
    k.addr = ctx->user_ip4;
    struct rw_egress_allow *a = egress_allow4.lookup(&k);
    if (a && rw_ports_allow(a, port, proto))
        return 1;
    return rw_egress_deny(ctx, type, port, proto, false);
}

static __always_inline int rw_egress6(struct bpf_sock_addr *ctx, u16 type)
{
    u64 cgid = bpf_get_current_cgroup_id();
    if (!egress_cgroups.lookup(&cgid))
        return 1;
    u16 port = bpf_ntohs((u16)ctx->user_port);
    u8 proto = ctx->protocol;
    struct rw_egress_key6 k = {};
    k.prefixlen = 64 + 128;
    k.cgid = cgid;
    u32 w0 = ctx->user_ip6[0], w1 = ctx->user_ip6[1], w2 = ctx->user_ip6[2],
        w3 = ctx->user_ip6[3];
    __builtin_memcpy(k.addr, &w0, 4);
    __builtin_memcpy(k.addr + 4, &w1, 4);
    __builtin_memcpy(k.addr + 8, &w2, 4);
    __builtin_memcpy(k.addr + 12, &w3, 4);
    struct rw_egress_allow *a = egress_allow6.lookup(&k);
    if (a && rw_ports_allow(a, port, proto))
        return 1;
    return rw_egress_deny(ctx, type, port, proto, true);
}

int rw_egress_connect4(struct bpf_sock_addr *ctx) { return rw_egress4(ctx, RW_CONNECT); }
int rw_egress_connect6(struct bpf_sock_addr *ctx) { return rw_egress6(ctx, RW_CONNECT); }
int rw_egress_sendmsg4(struct bpf_sock_addr *ctx) { return rw_egress4(ctx, RW_SENDMSG); }
int rw_egress_sendmsg6(struct bpf_sock_addr *ctx) { return rw_egress6(ctx, RW_SENDMSG); }
