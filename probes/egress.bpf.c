/* egress.bpf.c: egress outside a session's allowlist is refused in the kernel.
 *
 * cgroup/connect4, connect6, sendmsg4, sendmsg6 (BPF_PROG_TYPE_CGROUP_SOCK_ADDR), attached by
 * user space once, to the root of the cgroup v2 hierarchy, so they run for every process of
 * the host: inside connect(), sendto() and sendmsg() (io_uring's and TCP Fast Open's too)
 * before any packet is built; returning 0 makes the call fail with EPERM, so nothing leaves.
 * A socket is judged by the *session* of the calling process (the session map, set at fork
 * in the kernel), never by its cgroup: an agent that moves itself to another cgroup, or an
 * adopted agent that never had one, is judged the same. Untracked processes pass at the cost
 * of one hash lookup. The allowlist lives in two LPM tries keyed by (owner, address): the
 * owner is the session when it has an allowlist of its own (`roguewatch run`), else the
 * adoption policy the kernel gave the process at exec (RW_P_POLICY); the values hold the
 * allowed port ranges and protocols. A denial writes its record in egress_denied (roguewatch.h), for the refused
 * syscall's sys_exit to claim (its record is then flagged RW_F_DENIED), or, with no
 * sys_exit to claim it (io_uring), for the collector to publish.
 */

/* The allowlist's keys and values are written by user space (mirrored by probes/layout.py:
 * EGRESS_RANGES, EGRESS_KEY, EGRESS_ALLOW). */
#define RW_EGRESS_RANGES 8

struct rw_egress_key4 {
    u32 prefixlen; /* 64 bits of owner + the address prefix */
    u64 owner;     /* a session, or RW_EGRESS_POLICY_BASE | an adoption policy */
    u32 addr;
} __attribute__((packed));

struct rw_egress_key6 {
    u32 prefixlen;
    u64 owner;
    u8 addr[16];
} __attribute__((packed));

struct rw_egress_allow {
    u16 port_lo[RW_EGRESS_RANGES];
    u16 port_hi[RW_EGRESS_RANGES];
    u8 proto[RW_EGRESS_RANGES]; /* 0 any, 6 tcp, 17 udp */
    u32 n;
};


BPF_F_TABLE("lpm_trie", struct rw_egress_key4, struct rw_egress_allow, egress_allow4, 16384,
            BPF_F_NO_PREALLOC);
BPF_F_TABLE("lpm_trie", struct rw_egress_key6, struct rw_egress_allow, egress_allow6, 16384,
            BPF_F_NO_PREALLOC);
/* Owners whose allowlist is in force (sessions of `run`, adoption policies): value unused. */
BPF_HASH(egress_owners, u64, u8, 4096);

/* Whose allowlist judges the calling process: 0 for none (untracked, observed, or a session
 * whose allowlist nobody put in force: not enforced in the kernel). User space puts every
 * adoption policy's allowlist in force before it sets the selectors that use it. */
static __always_inline u64 rw_egress_owner(void)
{
    struct rw_proc *p = rw_current_proc();
    if (!p || (p->flags & RW_P_OBSERVE))
        return 0;
    u64 owner = p->session;
    if (egress_owners.lookup(&owner))
        return owner;
    u32 policy = (p->flags >> RW_P_POLICY_SHIFT) & RW_P_POLICY_MASK;
    if (!policy)
        return 0;
    owner = RW_EGRESS_POLICY_BASE | policy;
    return egress_owners.lookup(&owner) ? owner : 0;
}

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
        rw_write(old, sizeof(*old), old->type);
    /* For the refused syscall's sys_exit to claim. With the map full, said now: the
     * syscall's own record then comes too, unflagged (twice, never lost). */
    if (egress_denied.update(&tid, &r->h) != 0)
        rw_emit_nofold(r);
    return 0;
}

static __always_inline int rw_egress4(struct bpf_sock_addr *ctx, u16 type)
{
    u64 owner = rw_egress_owner();
    if (!owner)
        return 1;
    u16 port = bpf_ntohs((u16)ctx->user_port);
    u8 proto = ctx->protocol;
    struct rw_egress_key4 k = {};
    k.prefixlen = 64 + 32;
    k.owner = owner;
    k.addr = ctx->user_ip4;
    struct rw_egress_allow *a = egress_allow4.lookup(&k);
    if (a && rw_ports_allow(a, port, proto))
        return 1;
    return rw_egress_deny(ctx, type, port, proto, false);
}

static __always_inline int rw_egress6(struct bpf_sock_addr *ctx, u16 type)
{
    u64 owner = rw_egress_owner();
    if (!owner)
        return 1;
    u16 port = bpf_ntohs((u16)ctx->user_port);
    u8 proto = ctx->protocol;
    struct rw_egress_key6 k = {};
    k.prefixlen = 64 + 128;
    k.owner = owner;
    u32 w0 = ctx->user_ip6[0], w1 = ctx->user_ip6[1], w2 = ctx->user_ip6[2],
        w3 = ctx->user_ip6[3];
    __builtin_memcpy(k.addr, &w0, 4);
    __builtin_memcpy(k.addr + 4, &w1, 4);
    __builtin_memcpy(k.addr + 8, &w2, 4);
    __builtin_memcpy(k.addr + 12, &w3, 4);
    struct rw_egress_allow *a = egress_allow6.lookup(&k);
    if (a && rw_ports_allow(a, port, proto))
        return 1;
    /* An IPv4-mapped address (::ffff:a.b.c.d, a dual-stack socket reaching an IPv4 host) is
     * that IPv4 host: judged by the IPv4 allowlist, as the rules judge it. (The words are in
     * network order: bytes 00 00 ff ff read as a little-endian u32.) */
    if (w0 == 0 && w1 == 0 && w2 == 0xffff0000) {
        struct rw_egress_key4 k4 = {};
        k4.prefixlen = 64 + 32;
        k4.owner = owner;
        k4.addr = w3;
        a = egress_allow4.lookup(&k4);
        if (a && rw_ports_allow(a, port, proto))
            return 1;
    }
    return rw_egress_deny(ctx, type, port, proto, true);
}

int rw_egress_connect4(struct bpf_sock_addr *ctx) { return rw_egress4(ctx, RW_CONNECT); }
int rw_egress_connect6(struct bpf_sock_addr *ctx) { return rw_egress6(ctx, RW_CONNECT); }
int rw_egress_sendmsg4(struct bpf_sock_addr *ctx) { return rw_egress4(ctx, RW_SENDMSG); }
int rw_egress_sendmsg6(struct bpf_sock_addr *ctx) { return rw_egress6(ctx, RW_SENDMSG); }
