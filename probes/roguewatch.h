/* roguewatch.h: what every probe shares.
 *
 * - the record written to the ring buffer (mirrored by probes/layout.py: change both);
 * - the session map (tgid -> session), filled by user space for a session's root and by the
 *   fork probe for every descendant, so filtering happens here, in the kernel;
 * - the adoption selectors (uid, comm) applied at exec, and the guard set (roguewatch's own
 *   tasks) that signals and ptrace must not reach unseen;
 * - the pending map that pairs sys_enter_* with sys_exit_* to carry a syscall's result;
 * - a loss counter per event type for every record that could not be written;
 * - the folding of a thread's identical repeats into one count (rw_output_fold);
 * - a budget per session for the types that give way, and its losses per session
 *   ("Budgets per session").
 *
 * Only tracepoint arguments and BPF helpers are read: never a kernel struct by offset, since
 * the header tree bcc compiles against may not match the running kernel.
 */
#ifndef ROGUEWATCH_H
#define ROGUEWATCH_H

#include <uapi/linux/ptrace.h>
#include <linux/sched.h>

#ifndef RW_RINGBUF_PAGES
#define RW_RINGBUF_PAGES 2048 /* 8 MiB */
#endif
#ifndef RW_MAX_PROCS
#define RW_MAX_PROCS 65536 /* the loader passes another only (layout.py: MAX_PROCS) */
#endif
#ifndef RW_MAX_SESSIONS
#define RW_MAX_SESSIONS 4096 /* sessions with a budget (layout.py: MAX_SESSIONS) */
#endif

#define RW_PATH_MAX 4096
#define RW_DATA_MAX (2 * RW_PATH_MAX)
/* What a mount record's a[1] says it is: mount(2), umount2(2), or move_mount(2) (the new
 * mount API attaching a tree made by fsmount or open_tree: a mount all the same). */
#define RW_MOUNT_ATTACH 0
#define RW_MOUNT_UMOUNT 1
#define RW_MOUNT_MOVE 2
#define RW_ARGV_ARGS 20
#define RW_ARGV_ARG_MAX 256
#define RW_ARGV_MAX 2048
#define RW_DNS_MAX 256
#define RW_AT_FDCWD -100

/* Event types: the order is the contract with probes/layout.py (TYPE_NAMES). RW_REPEATS is
 * not an event: the count of a thread's repeated last record ("Repeats folded", below). */
enum rw_type {
    RW_NONE = 0,
    RW_FORK, RW_EXEC, RW_EXIT,
    RW_CONNECT, RW_SENDTO, RW_SENDMSG, RW_SOCKET, RW_BIND, RW_LISTEN,
    RW_OPEN, RW_RENAME, RW_UNLINK, RW_LINK, RW_SYMLINK, RW_CHMOD, RW_CHOWN, RW_TRUNCATE,
    RW_UTIMES,
    RW_KILL, RW_RT_SIGACTION, RW_SETSID, RW_SETPGID, RW_PRCTL, RW_TASK_RENAME, RW_PTRACE,
    RW_UNSHARE, RW_SETNS, RW_MOUNT, RW_BPF, RW_MODULE_LOAD, RW_MEMFD_CREATE, RW_CHDIR,
    RW_CGROUP_ATTACH, RW_TARGET, RW_SIGPROCMASK, RW_SIGNAL_SENT, RW_SETXATTR,
    RW_REPEATS,
    RW_TYPE_MAX
};

/* What made a kill record (its a[3]; mirrored by probes/layout.py: KILL_CALLS). */
enum rw_kill_call {
    RW_KILL_CALL_KILL = 0, RW_KILL_CALL_TKILL, RW_KILL_CALL_TGKILL,
    RW_KILL_CALL_PIDFD_SEND_SIGNAL,
    RW_KILL_CALL_GENERATE, /* signal:signal_generate, a guard event */
};

/* RW_TARGET records: the call that reached another process's resources or memory (a[1]). */
enum rw_target_call {
    RW_TARGET_PRLIMIT64 = 0, RW_TARGET_SETPRIORITY, RW_TARGET_SCHED_SETATTR,
    RW_TARGET_SCHED_SETSCHEDULER, RW_TARGET_SCHED_SETPARAM, RW_TARGET_SCHED_SETAFFINITY,
    RW_TARGET_PROCESS_VM_WRITEV, RW_TARGET_PROCESS_VM_READV,
};

/* Record flags (bits of rw_hdr.flags; mirrored by probes/layout.py: F_*). */
#define RW_F_GUARD      (1 << 0) /* aimed at roguewatch; the sender may be untracked */
#define RW_F_ADOPTED    (1 << 1) /* the process was adopted at exec by a selector */
#define RW_F_THREAD     (1 << 2) /* fork: the child is a thread */
#define RW_F_TRUNC      (1 << 3) /* a string was cut at its maximum */
#define RW_F_FDPATH     (1 << 4) /* a0 is an fd whose path user space must resolve */
#define RW_F_DENIED     (1 << 5) /* refused in the kernel by the session's egress policy */
#define RW_F_KILLED     (1 << 6) /* the sender was SIGKILLed in the kernel for it */
#define RW_F_UNTRACKED  (1 << 7) /* fork: the session map was full, the child is untracked */

/* rw_proc.flags (inherited at fork): RW_F_ADOPTED and this (layout.py: P_OBSERVE). */
#define RW_P_OBSERVE    (1 << 8) /* the session is in observe mode: never kill */
#define RW_P_TAINTED    (1 << 9) /* joined the session by influence: a session process wrote
                                  * into its memory (process_vm_writev, ptrace) */
/* Bits 16-23: the adoption policy the kernel gave an adopted process at exec (the value of
 * its adopt_uids/adopt_comms entry; 0: none); its egress allowlist is owned by
 * RW_EGRESS_POLICY_BASE | that number (layout.py: P_POLICY_*, EGRESS_POLICY_BASE). */
#define RW_P_POLICY_SHIFT 16
#define RW_P_POLICY_MASK 0xff
#define RW_EGRESS_POLICY_BASE 0xFFFF000000000000ULL

struct rw_hdr {
    /* What changes from record to record. */
    u64 ts;        /* bpf_ktime_get_boot_ns() */
    s64 ret;
    u32 tid;
    u16 type;
    u16 flags;
    u64 a[4];      /* type-specific integer arguments */
    u8 addr[28];   /* a sockaddr (in, in6 or the start of un) */
    u16 len1;      /* bytes of data[] used by the first string (NUL included) */
    u16 len2;      /* bytes after it used by the second */
    /* The process's identity: the same bytes in every record of one process image (until
     * an exec, a rename, a setuid). User space keys its per-process cache on these 56 bytes. */
    u64 session;
    u64 start_ns;  /* the process's fork or last exec: with pid, its exec id */
    u64 pstart_ns; /* the parent's, for the parent's exec id */
    u32 pid;       /* tgid */
    u32 ppid;
    u32 uid;
    u32 gid;
    char comm[TASK_COMM_LEN];
};

struct rw_rec {
    struct rw_hdr h;
    char data[RW_DATA_MAX];
};

/* What the kernel knows of a tracked process: the value of `sessions`, which user space
 * writes for a session's root (mirrored by probes/layout.py: PROC). */
struct rw_proc {
    u64 session;
    u64 start_ns;
    u64 pstart_ns;
    u32 ppid;
    u32 flags;
};

struct rw_comm_key {
    char comm[TASK_COMM_LEN];
};

BPF_RINGBUF_OUTPUT(events, RW_RINGBUF_PAGES);
BPF_HASH(sessions, u32, struct rw_proc, RW_MAX_PROCS);
BPF_HASH(adopt_uids, u32, u8, 1024);
BPF_HASH(adopt_comms, struct rw_comm_key, u8, 1024);
BPF_HASH(guarded, u32, u8, 4096);
BPF_PERCPU_ARRAY(lost, u64, RW_TYPE_MAX);
BPF_PERCPU_ARRAY(scratch, struct rw_rec, 1);
/* What each slot of `counters` counts (mirrored by probes/layout.py: Counter). */
enum rw_counter {
    RW_COUNTER_ADOPTED_NEXT = 0, /* the next adopted session number */
    RW_COUNTER_PENDING_OVERFLOW, /* records lost to a full pending map or task storage */
    RW_COUNTER_UNTRACKED_FORKS,  /* forks whose child could not be tracked (map full) */
    RW_COUNTER_FOLDED,           /* records folded into an RW_REPEATS record */
    RW_COUNTER_BUDGET_DROPPED,   /* records dropped over their session's budget */
    RW_COUNTER_MAX
};
BPF_ARRAY(counters, u64, RW_COUNTER_MAX);
/* A syscall's record between its sys_enter and sys_exit, by thread id. Not preallocated:
 * records are 8 KiB and only threads inside a traced syscall of a session hold one. */
BPF_F_TABLE("hash", u32, struct rw_rec, pending, 4096, BPF_F_NO_PREALLOC);
/* The same for records with one path (most file events): a header and one RW_PATH_MAX. */
struct rw_rec1 {
    struct rw_hdr h;
    char data[RW_PATH_MAX];
};
/* Kept in the task's own storage (a pointer from the task, no hash, no lock, no allocation
 * after a thread's first one, freed with the task): the exit marks it used (type 0) instead
 * of deleting it. */
BPF_TASK_STORAGE(pending_path, struct rw_rec1);
/* The same for records with no string (kill, connect, socket...: most of a storm): only the
 * 144-byte header, in the task's storage. */
BPF_TASK_STORAGE(pending_task, struct rw_hdr);
/* Egress refused by the cgroup sock_addr programs (egress.bpf.c), by thread id: the record
 * each wrote. The connect or send that was refused claims it at its sys_exit (and is marked
 * RW_F_DENIED); one that no sys_exit claims (io_uring's connects and sends run without one)
 * is published by the collector once it is older than a few hundred milliseconds. */
BPF_HASH(egress_denied, u32, struct rw_hdr, 1024);

/* Sessions the kernel adopts are numbered from here (layout.py: ADOPTED_BASE; user space's
 * /proc scan numbers its own from a base above, ADOPTED_PROCFS_BASE). */
#define RW_SESSION_ADOPTED_BASE (1ULL << 62)

static __always_inline void rw_count_lost(u32 type)
{
    u64 *n = lost.lookup(&type);
    if (n)
        (*n)++;
}

/* The tracked process of the current task, or NULL: the first thing every probe asks. */
static __always_inline struct rw_proc *rw_current_proc(void)
{
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    return sessions.lookup(&tgid);
}

/* A zeroed record in the per-CPU scratch, with the header of the current task filled. */
static __always_inline void rw_fill(struct rw_rec *r, u16 type, struct rw_proc *p)
{
    u64 id = bpf_get_current_pid_tgid();
    u64 ug = bpf_get_current_uid_gid();
    __builtin_memset(&r->h, 0, sizeof(r->h));
    r->h.ts = bpf_ktime_get_boot_ns();
    r->h.pid = id >> 32;
    r->h.tid = (u32)id;
    r->h.uid = (u32)ug;
    r->h.gid = ug >> 32;
    r->h.type = type;
    if (p) {
        r->h.session = p->session;
        r->h.start_ns = p->start_ns;
        r->h.pstart_ns = p->pstart_ns;
        r->h.ppid = p->ppid;
        if (p->flags & RW_F_ADOPTED)
            r->h.flags |= RW_F_ADOPTED;
    }
    bpf_get_current_comm(&r->h.comm, sizeof(r->h.comm));
}

static __always_inline struct rw_rec *rw_begin(u16 type, struct rw_proc *p)
{
    u32 zero = 0;
    struct rw_rec *r = scratch.lookup(&zero);
    if (!r)
        return 0;
    rw_fill(r, type, p);
    return r;
}

static __always_inline u32 rw_size(struct rw_rec *r)
{
    u32 size = sizeof(struct rw_hdr) + (u32)r->h.len1 + (u32)r->h.len2;
    if (size > sizeof(struct rw_rec))
        size = sizeof(struct rw_rec);
    return size;
}

/* Wake-ups of the collector are rationed: a record wakes it (when it has caught up) only if
 * no record on this CPU did in the last RW_WAKE_NS; the others are written without a
 * wake-up, and the collector, which polls every millisecond while records keep coming, reads
 * them within that millisecond (so a longer RW_WAKE_NS adds no latency: it makes batches
 * bigger, and a tracked storm cheaper: bench/README.md). A wake-up is an irq_work
 * self-interrupt on the writer's CPU (a VM exit in a VM), which every tracked syscall paid
 * when the collector kept up. */
#define RW_WAKE_NS 1000000ULL
BPF_PERCPU_ARRAY(last_wake, u64, 1);

static __always_inline u64 rw_wake_flags(void)
{
    u32 zero = 0;
    u64 *last = last_wake.lookup(&zero);
    if (!last)
        return 0;
    u64 now = bpf_ktime_get_ns();
    if (now - *last < RW_WAKE_NS)
        return BPF_RB_NO_WAKEUP;
    *last = now;
    return 0;
}

/* Room for what matters. When the collector falls behind, the types a loop can make by the
 * hundred thousand a second give way first, so that a flood of them cannot crowd out what
 * says most about an agent. Counted as lost like any loss:
 *   from 3/4 full   opens and file attribute changes, kill with signal 0 (an existence probe)
 *   from 7/8 full   sockets, connects, binds, listens and sends
 *   from 15/16 full signals, signal handlers, sessions and process groups, prctl and renames
 *                   of the task, chdir, renames, unlinks, links, symlinks, memfd_create
 * The last sixteenth (512 KiB: some 3,600 records) is kept for forks, execs, exits, ptrace,
 * namespaces, mounts, bpf() and module loads, and for every guard event. (Watched paths are
 * seen by the filesystem watchers either way; egress outside the allowlist is refused in the
 * kernel either way. Half the ring for the first tier took a third of the throughput
 * benchmark's burst absorption away.) */
#define RW_FILE_BULK ((1ULL << RW_OPEN) | (1ULL << RW_CHMOD) | (1ULL << RW_CHOWN) | \
    (1ULL << RW_TRUNCATE) | (1ULL << RW_UTIMES) | (1ULL << RW_SETXATTR))
#define RW_NET_BULK ((1ULL << RW_CONNECT) | (1ULL << RW_SENDTO) | (1ULL << RW_SENDMSG) | \
    (1ULL << RW_SOCKET) | (1ULL << RW_BIND) | (1ULL << RW_LISTEN))
#define RW_VITAL ((1ULL << RW_FORK) | (1ULL << RW_EXEC) | (1ULL << RW_EXIT) | \
    (1ULL << RW_PTRACE) | (1ULL << RW_UNSHARE) | (1ULL << RW_SETNS) | (1ULL << RW_MOUNT) | \
    (1ULL << RW_BPF) | (1ULL << RW_MODULE_LOAD) | (1ULL << RW_CGROUP_ATTACH) | \
    (1ULL << RW_TARGET))
/* bcc has no method for bpf_ringbuf_query: the ring's map is named by this placeholder fd,
 * which the loader relocates to `events` (sensors/bpf.py; layout.py: EVENTS_FD). */
#define RW_EVENTS_FD 0x7eadbee

/* How many bytes the ring holds that the collector has not read yet. */
static __always_inline u64 rw_ring_backlog(void)
{
    return bpf_ringbuf_query((void *)bpf_pseudo_fd(1, RW_EVENTS_FD), BPF_RB_AVAIL_DATA);
}

/* Whether a record of this type, flags and a[2] (a kill's signal) gives way with this
 * backlog in the ring. */
static __always_inline bool rw_shed_at(u16 type, u16 flags, u64 a2, u64 backlog)
{
    u64 bit = type < 64 ? 1ULL << type : 0;
    if ((bit & RW_VITAL) || (flags & RW_F_GUARD))
        return false;
    u64 size = (u64)RW_RINGBUF_PAGES * 4096, limit = size / 16 * 15;
    if ((bit & RW_FILE_BULK) || (type == RW_KILL && a2 == 0))
        limit = size / 4 * 3;
    else if (bit & RW_NET_BULK)
        limit = size / 8 * 7;
    return backlog > limit;
}

static __always_inline bool rw_shed_as(u16 type, u16 flags, u64 a2)
{
    return rw_shed_at(type, flags, a2, rw_ring_backlog());
}

/* Budgets per session. One session's flood must not take the ring from the others: for
 * each session, each of the two tiers that give way first (RW_BUDGET_FILES: the file tier
 * of rw_shed, with kill(pid, 0); RW_BUDGET_SOCKETS: the socket tier) has a token bucket of
 * `rate` records a second and `burst` records at most (the loader writes both, in
 * budget_conf: ns per token and burst * that; an interval of 0 turns budgets off). A
 * session whose bucket is empty is over its budget: its records of that tier are dropped
 * here while the ring holds a backlog (more than RW_BUDGET_BACKLOG of it: the collector
 * is behind), and counted, as lost of their type and in budget_lost by session and tier.
 * While the collector keeps up nobody is crowded out, and nothing is dropped: a lone storm
 * loses nothing to its budget. Within budget, a session's records give way only with the
 * tiers, from three quarters full: so a flood of one session leaves the other sessions
 * their records of the same kinds, and the session its own records of the other tier.
 * Never budgeted: the vital types, every type of the third tier (signals, renames...),
 * guard events, denials, records whose sender was killed, and RW_REPEATS records (one
 * stands for many and follows a record that was within budget).
 *
 * The bucket is kept as the time it is full again minus its burst (GCRA's theoretical
 * arrival time, `tat`, boot-time ns): a record conforms when tat + interval - now <= the
 * burst's time, and moves tat on by one interval. Updated without a lock (tracing programs
 * may not take BPF spin locks): two CPUs of one session at the same instant may both take
 * the last token, which lets a record more through, never fewer. The buckets are an LRU:
 * a session evicted from it starts again with a full bucket. (layout.py: BUDGET_*.) */
#define RW_BUDGET_FILES 0
#define RW_BUDGET_SOCKETS 1
#define RW_BUDGET_TIERS 2
#define RW_BUDGET_BACKLOG ((u64)RW_RINGBUF_PAGES * 4096 / 4)

struct rw_budget_key {
    u64 session;
    u32 tier;
    u32 pad;
};
struct rw_budget_conf {
    u64 interval_ns; /* ns per token (0: no budgets) */
    u64 burst_ns;    /* the burst's tokens times interval_ns */
};
BPF_ARRAY(budget_conf, struct rw_budget_conf, 1);
BPF_TABLE("lru_hash", struct rw_budget_key, u64, budgets, RW_MAX_SESSIONS * RW_BUDGET_TIERS);
BPF_HASH(budget_lost, struct rw_budget_key, u64, RW_MAX_SESSIONS * RW_BUDGET_TIERS);

/* The budget tier of a record, or -1 when it has none. */
static __always_inline int rw_budget_tier(struct rw_hdr *h, u16 type)
{
    u64 bit = type < 64 ? 1ULL << type : 0;
    if (!h->session || (h->flags & (RW_F_GUARD | RW_F_DENIED | RW_F_KILLED)))
        return -1;
    if ((bit & RW_FILE_BULK) || (type == RW_KILL && h->a[2] == 0))
        return RW_BUDGET_FILES;
    if (bit & RW_NET_BULK)
        return RW_BUDGET_SOCKETS;
    return -1;
}

static __always_inline void rw_count_budget_lost(struct rw_budget_key *k)
{
    u64 *n = budget_lost.lookup(k);
    if (!n) {
        u64 zero = 0;
        budget_lost.insert(k, &zero); /* (fails when another CPU did it first, or full) */
        n = budget_lost.lookup(k);
    }
    if (n)
        __sync_fetch_and_add(n, 1);
    u32 c = RW_COUNTER_BUDGET_DROPPED;
    u64 *total = counters.lookup(&c);
    if (total)
        __sync_fetch_and_add(total, 1);
}

/* Whether a record is over its session's budget and must be dropped (counted here). */
static __always_inline bool rw_over_budget(struct rw_hdr *h, u16 type, u64 backlog)
{
    int tier = rw_budget_tier(h, type);
    if (tier < 0)
        return false;
    u32 zero = 0;
    struct rw_budget_conf *c = budget_conf.lookup(&zero);
    if (!c || !c->interval_ns)
        return false;
    u64 interval = c->interval_ns, burst = c->burst_ns;
    struct rw_budget_key k = {.session = h->session, .tier = tier};
    u64 now = h->ts;
    u64 *tat = budgets.lookup(&k);
    if (!tat) {
        u64 first = now + interval; /* a full bucket, less this record's token */
        budgets.update(&k, &first);
        return false;
    }
    u64 t = *tat > now ? *tat : now;
    if (t + interval - now <= burst) {
        *tat = t + interval;
        return false;
    }
    if (backlog <= RW_BUDGET_BACKLOG)
        return false; /* over budget, but the collector keeps up: crowds nobody out */
    rw_count_budget_lost(&k);
    return true;
}

/* One write into the ring buffer; a failed (or shed, or over budget) write is counted per
 * event type. */
static __always_inline bool rw_write(void *rec, u32 size, u16 type)
{
    struct rw_hdr *h = rec;
    u64 backlog = rw_ring_backlog();
    if (rw_shed_at(type, h->flags, h->a[2], backlog) || rw_over_budget(h, type, backlog) ||
        events.ringbuf_output(rec, size, rw_wake_flags()) != 0) {
        rw_count_lost(type);
        return false;
    }
    return true;
}

/* Repeats folded in the kernel. A loop that makes the same call again and again (the same
 * path opened for write, the same closed port connected to, kill(pid, 0)) would write the
 * same record by the hundred thousand a second: more than the collector decodes, and the
 * records that give way first when the ring fills. So each thread keeps (in its task
 * storage) what its last record was; an identical record of a foldable type within
 * RW_FOLD_NS of the one that was sent is only counted, and the count goes out as one small
 * RW_REPEATS record, which the collector turns into a copy of the repeated event with its
 * `repeats`. The first occurrence is always sent at once.
 *
 * Identical: the same type, flags, result, a[0..3], sockaddr, string lengths, uid and gid,
 * and the same strings, compared by a SipHash-1-3 keyed with 128 random bits the loader
 * writes at each load (fold_key), so that no agent can make two different paths look alike.
 * Foldable: the types that give way first (the file and socket tiers of rw_shed, kill with
 * signal 0); never a vital type, a guard event, a denial or a record whose sender was killed.
 *
 * The fold is flushed (its RW_REPEATS written, before the record that ends it) at the
 * thread's next record of any kind that is not one more repeat: a different one, or the same
 * after the window; and when the thread exits (sched_process_exit). A thread that stops
 * making records keeps its count until it makes one or exits. RW_REPEATS (header only):
 * ts = the last repeat's; a[0] the folded type, a[1] the count, a[2] the ts of the record
 * repeated (the collector finds it by it), a[3] the first repeat's ts. Lost (shed, or the
 * ring full), it is counted as a[1] records of the folded type lost. (layout.py: FOLD_*.) */
#define RW_FOLD_NS 200000000ULL
#define RW_FOLDABLE (RW_FILE_BULK | RW_NET_BULK | (1ULL << RW_KILL))
#define RW_NOFOLD_FLAGS (RW_F_GUARD | RW_F_DENIED | RW_F_KILLED)

struct rw_fold {
    u64 ts;      /* ts of the record sent that the repeats repeat (0: nothing to repeat) */
    u64 first;   /* the first repeat's ts */
    u64 last;    /* the last repeat's ts */
    u64 count;   /* repeats folded and not yet written (0: none) */
    u64 hash;    /* of the strings */
    s64 ret;
    u64 a[4];
    u8 addr[28];
    u16 type;
    u16 flags;
    u64 ugid;    /* uid | gid << 32 */
    u16 len1;
    u16 len2;
    u32 pad;
};
BPF_TASK_STORAGE(fold, struct rw_fold);
/* The SipHash key (written by the loader before any program is attached; layout.py:
 * FOLD_KEY). */
struct rw_fold_key {
    u64 k0;
    u64 k1;
};
BPF_ARRAY(fold_key, struct rw_fold_key, 1);

#define RW_ROTL(x, b) (((x) << (b)) | ((x) >> (64 - (b))))
#define RW_SIPROUND                                                                   \
    do {                                                                              \
        v0 += v1; v1 = RW_ROTL(v1, 13); v1 ^= v0; v0 = RW_ROTL(v0, 32);             \
        v2 += v3; v3 = RW_ROTL(v3, 16); v3 ^= v2;                                    \
        v0 += v3; v3 = RW_ROTL(v3, 21); v3 ^= v0;                                    \
        v2 += v1; v1 = RW_ROTL(v1, 17); v1 ^= v2; v2 = RW_ROTL(v2, 32);             \
    } while (0)

/* The length of a record's strings, read from the record (volatile: a value of its own to
 * clang and the verifier, apart from any other copy), at most RW_PATH_MAX. */
static __always_inline u32 rw_strings_len(struct rw_hdr *h)
{
    u32 len = (u32)*(volatile u16 *)&h->len1 + (u32)*(volatile u16 *)&h->len2;
    return len > RW_PATH_MAX ? RW_PATH_MAX : len;
}

/* SipHash-1-3 of a record's strings (data: room for RW_PATH_MAX bytes; at most that many
 * are hashed). The loop runs over the bytes used only. Its exit bounds the loop's values to
 * the iteration it left at: the code after it reads the length afresh, or every exit would
 * be a state of its own to the verifier (512 of them, each with the rest of the program). */
static __always_inline u64 rw_fold_hash(struct rw_hdr *h, const char *data)
{
    u32 zero = 0;
    struct rw_fold_key *k = fold_key.lookup(&zero);
    u64 k0 = k ? k->k0 : 0, k1 = k ? k->k1 : 0;
    u64 v0 = k0 ^ 0x736f6d6570736575ULL, v1 = k1 ^ 0x646f72616e646f6dULL;
    u64 v2 = k0 ^ 0x6c7967656e657261ULL, v3 = k1 ^ 0x7465646279746573ULL;
    u32 words = rw_strings_len(h) / 8;
#pragma clang loop unroll(disable)
    for (u32 i = 0; i < RW_PATH_MAX / 8; i++) {
        /* A copy opaque to clang, which would otherwise fold the two exits into one trip
         * count the verifier cannot bound (and walk a pointer instead of the index). */
        u32 j = i;
        asm volatile("" : "+r"(j));
        if (j >= words)
            break;
        u64 m = *(u64 *)(data + ((j * 8) & (RW_PATH_MAX - 8)));
        v3 ^= m;
        RW_SIPROUND;
        v0 ^= m;
    }
    u32 len = rw_strings_len(h);
    u64 b = (u64)len << 56;
    u32 rem = len & 7;
    if (rem) {
        u64 m = *(u64 *)(data + (len & (RW_PATH_MAX - 8)));
        b |= m & ((1ULL << (rem * 8)) - 1);
    }
    v3 ^= b;
    RW_SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    RW_SIPROUND;
    RW_SIPROUND;
    RW_SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

static __always_inline bool rw_foldable(struct rw_hdr *h, u16 type)
{
    u64 bit = type < 64 ? 1ULL << type : 0;
    if (!(bit & RW_FOLDABLE) || (h->flags & RW_NOFOLD_FLAGS))
        return false;
    return type != RW_KILL || h->a[2] == 0;
}

static __always_inline bool rw_fold_same(struct rw_fold *f, struct rw_hdr *h, u16 type,
                                         u64 hash)
{
    return f->type == type && f->flags == h->flags && f->ret == h->ret &&
           f->a[0] == h->a[0] && f->a[1] == h->a[1] && f->a[2] == h->a[2] &&
           f->a[3] == h->a[3] && f->len1 == h->len1 && f->len2 == h->len2 &&
           f->hash == hash && f->ugid == ((u64)h->uid | ((u64)h->gid << 32)) &&
           *(u64 *)f->addr == *(u64 *)h->addr && *(u64 *)(f->addr + 8) == *(u64 *)(h->addr + 8) &&
           *(u64 *)(f->addr + 16) == *(u64 *)(h->addr + 16) &&
           *(u32 *)(f->addr + 24) == *(u32 *)(h->addr + 24);
}

/* Write the thread's folded repeats, if any, as their RW_REPEATS record. */
static __always_inline void rw_fold_flush(struct rw_fold *f)
{
    u64 n = f->count;
    if (!n)
        return;
    f->count = 0;
    u32 type = f->type;
    if (type >= RW_TYPE_MAX)
        return;
    struct rw_hdr *s = 0;
    if (!rw_shed_as(type, f->flags, f->a[2]))
        s = events.ringbuf_reserve(sizeof(struct rw_hdr));
    if (!s) {
        u64 *lostn = lost.lookup(&type);
        if (lostn)
            *lostn += n;
        return;
    }
    u64 id = bpf_get_current_pid_tgid();
    __builtin_memset(s, 0, sizeof(*s));
    s->ts = f->last;
    s->tid = (u32)id;
    s->pid = id >> 32;
    s->type = RW_REPEATS;
    s->a[0] = type;
    s->a[1] = n;
    s->a[2] = f->ts;
    s->a[3] = f->first;
    events.ringbuf_submit(s, rw_wake_flags());
    u32 k = RW_COUNTER_FOLDED;
    u64 *c = counters.lookup(&k);
    if (c)
        __sync_fetch_and_add(c, n);
}

/* The thread's fold ends (it exits): its repeats are written. */
static __always_inline void rw_fold_end(void)
{
    struct task_struct *t = (struct task_struct *)bpf_get_current_task_btf();
    struct rw_fold *f = fold.task_storage_get(t, 0, 0);
    if (f) {
        rw_fold_flush(f);
        f->ts = 0;
    }
}

/* A record of a tracepoint program: folded, or written (after the repeats it ends).
 * str: its strings (len1 + len2 bytes at most RW_PATH_MAX of which are hashed: data with
 * room for RW_PATH_MAX), or NULL for a header-only record. */
static __always_inline void rw_output_fold(void *rec, u32 size, u16 type, const char *str)
{
    struct rw_hdr *h = rec;
    bool foldable = rw_foldable(h, type);
    struct task_struct *t = (struct task_struct *)bpf_get_current_task_btf();
    struct rw_fold *f =
        fold.task_storage_get(t, 0, foldable ? BPF_LOCAL_STORAGE_GET_F_CREATE : 0);
    if (!f) {
        rw_write(rec, size, type);
        return;
    }
    u64 hash = 0;
    if (foldable && str && (h->len1 || h->len2))
        hash = rw_fold_hash(h, str);
    if (f->ts) {
        if (foldable && h->ts - f->ts < RW_FOLD_NS && rw_fold_same(f, h, type, hash)) {
            if (!f->count)
                f->first = h->ts;
            f->count++;
            f->last = h->ts;
            return;
        }
        rw_fold_flush(f);
        f->ts = 0;
    }
    if (!rw_write(rec, size, type) || !foldable)
        return; /* (a record lost is never repeated: the collector would not have it) */
    f->ts = h->ts;
    f->count = 0;
    f->type = type;
    f->flags = h->flags;
    f->ret = h->ret;
    f->a[0] = h->a[0];
    f->a[1] = h->a[1];
    f->a[2] = h->a[2];
    f->a[3] = h->a[3];
    __builtin_memcpy(f->addr, h->addr, sizeof(f->addr));
    f->len1 = h->len1;
    f->len2 = h->len2;
    f->hash = hash;
    f->ugid = (u64)h->uid | ((u64)h->gid << 32);
}

static __always_inline void rw_output(void *rec, u32 size, u16 type)
{
    rw_output_fold(rec, size, type, (const char *)rec + sizeof(struct rw_hdr));
}

static __always_inline void rw_output_hdr(struct rw_hdr *h)
{
    rw_output_fold(h, sizeof(*h), h->type, 0);
}

static __always_inline void rw_emit(struct rw_rec *r)
{
    u32 size = rw_size(r);
    /* Bound it again for the verifier, which may not keep the clamp across the call. */
    size &= 0x3fff;
    if (size > sizeof(struct rw_rec))
        return;
    rw_output(r, size, r->h.type);
}

/* The same for the cgroup sock_addr programs (egress.bpf.c), which have no task storage and
 * whose records (denials) are never folded. */
static __always_inline void rw_emit_nofold(struct rw_rec *r)
{
    u32 size = rw_size(r);
    size &= 0x3fff;
    if (size > sizeof(struct rw_rec))
        return;
    rw_write(r, size, r->h.type);
}

static __always_inline void rw_count_pending_overflow(u16 type)
{
    rw_count_lost(type);
    u32 k = RW_COUNTER_PENDING_OVERFLOW;
    u64 *n = counters.lookup(&k);
    if (n)
        __sync_fetch_and_add(n, 1);
}

/* Keep the record until sys_exit_* supplies the result: the whole record when it carries a
 * string, else only its header. */
static __always_inline void rw_stash_big(struct rw_rec *r)
{
    u32 tid = r->h.tid;
    if (pending.update(&tid, r) != 0)
        rw_count_pending_overflow(r->h.type);
}

/* A record whose only string is the first (len2 is 0), begun where it waits for its
 * sys_exit (the task's pending_path), so nothing is copied. Only rw_str1_user may write its
 * string: the element ends after RW_PATH_MAX bytes of data. */
static __always_inline struct rw_rec *rw_begin_path(u16 type, struct rw_proc *p)
{
    struct task_struct *t = (struct task_struct *)bpf_get_current_task_btf();
    struct rw_rec1 *s = pending_path.task_storage_get(t, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
    if (!s) {
        rw_count_pending_overflow(type);
        return 0;
    }
    rw_fill((struct rw_rec *)s, type, p);
    return (struct rw_rec *)s;
}

static __always_inline void rw_stash(struct rw_rec *r)
{
    if (r->h.len1 || r->h.len2) {
        rw_stash_big(r);
        return;
    }
    struct task_struct *t = (struct task_struct *)bpf_get_current_task_btf();
    struct rw_hdr *s = pending_task.task_storage_get(t, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
    if (!s) {
        rw_count_pending_overflow(r->h.type);
        return;
    }
    *s = r->h;
}

/* A connect or send that failed with EPERM: if the egress programs refused it, the denial
 * they noted for this thread is this call's: claimed, it marks the record. */
static __always_inline void rw_claim_denial(struct rw_hdr *h)
{
    if (h->ret != -1 || (h->type != RW_CONNECT && h->type != RW_SENDTO && h->type != RW_SENDMSG))
        return;
    u32 tid = h->tid;
    struct rw_hdr *d = egress_denied.lookup(&tid);
    if (!d)
        return;
    /* The same destination (family and port, then the v4 or v6 address, where both
     * sockaddrs keep it): not an io_uring denial of this thread's that waits for the
     * collector. */
    bool same = *(u32 *)d->addr == *(u32 *)h->addr;
    if (same && *(u16 *)h->addr == 10) /* AF_INET6 */
        same = *(u64 *)(d->addr + 8) == *(u64 *)(h->addr + 8) &&
               *(u64 *)(d->addr + 16) == *(u64 *)(h->addr + 16);
    else if (same)
        same = *(u32 *)(d->addr + 4) == *(u32 *)(h->addr + 4);
    if (same) {
        h->flags |= RW_F_DENIED;
        egress_denied.delete(&tid);
    }
}

/* A tracked task that attacks roguewatch (a signal, ptrace) dies before user space could
 * react: bpf_send_signal makes SIGKILL pending for the current task. The syscall itself
 * still completes (Landlock scoping is what refuses it for `roguewatch run` sessions). */
static __always_inline void rw_kill_current(struct rw_rec *r, struct rw_proc *p)
{
    if (!p || (p->flags & RW_P_OBSERVE))
        return;
    if (bpf_send_signal(9) == 0)
        r->h.flags |= RW_F_KILLED;
}

/* sys_exit_*: emit the stashed record with the syscall's result. Each exit looks only where
 * its enter can have stashed: an untracked task (which has no task storage) pays one
 * pointer test here. */
static __always_inline struct rw_hdr *rw_pending_hdr(void)
{
    struct task_struct *t = (struct task_struct *)bpf_get_current_task_btf();
    struct rw_hdr *h = pending_task.task_storage_get(t, 0, 0);
    return h && h->type ? h : 0;
}

/* The header-only record with its result, then marked used. */
static __always_inline int rw_emit_pending_hdr(struct rw_hdr *h, long ret)
{
    h->ret = ret;
    rw_claim_denial(h);
    rw_output_hdr(h);
    h->type = 0; /* used */
    return 0;
}

static __always_inline int rw_finish_hdr(long ret)
{
    struct rw_hdr *h = rw_pending_hdr();
    return h ? rw_emit_pending_hdr(h, ret) : 0;
}

static __always_inline int rw_finish_big(long ret)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct rw_rec *r = pending.lookup(&tid);
    if (!r)
        return 0;
    r->h.ret = ret;
    rw_claim_denial(&r->h);
    rw_emit(r);
    pending.delete(&tid);
    return 0;
}

static __always_inline int rw_finish_path(long ret)
{
    struct task_struct *t = (struct task_struct *)bpf_get_current_task_btf();
    struct rw_rec1 *r = pending_path.task_storage_get(t, 0, 0);
    if (!r || !r->h.type)
        return 0;
    r->h.ret = ret;
    u32 size = sizeof(struct rw_hdr) + (u32)r->h.len1;
    if (size > sizeof(struct rw_rec1))
        size = sizeof(struct rw_rec1);
    size &= 0x1fff;
    if (size <= sizeof(struct rw_rec1))
        rw_output(r, size, r->h.type);
    r->h.type = 0; /* used */
    return 0;
}

/* For syscalls whose record may or may not carry a string (sendto with a DNS query...). */
static __always_inline int rw_finish(long ret)
{
    struct rw_hdr *h = rw_pending_hdr();
    return h ? rw_emit_pending_hdr(h, ret) : rw_finish_big(ret);
}

/* Strings: the first at data[0], the second right after it. */
static __always_inline void rw_str1_user(struct rw_rec *r, const char *s)
{
    if (!s)
        return;
    long n = bpf_probe_read_user_str(r->data, RW_PATH_MAX, s);
    if (n > 0) {
        r->h.len1 = n;
        if (n == RW_PATH_MAX)
            r->h.flags |= RW_F_TRUNC;
    }
}

static __always_inline void rw_str2_user(struct rw_rec *r, const char *s)
{
    if (!s)
        return;
    u32 off = r->h.len1;
    if (off > RW_PATH_MAX - 1)
        off = RW_PATH_MAX - 1;
    off &= RW_PATH_MAX - 1;
    long n = bpf_probe_read_user_str(r->data + off, RW_PATH_MAX, s);
    if (n > 0) {
        r->h.len1 = off;
        r->h.len2 = n;
        if (n == RW_PATH_MAX)
            r->h.flags |= RW_F_TRUNC;
    }
}

/* Up to 28 bytes of a user sockaddr. */
static __always_inline void rw_sockaddr(struct rw_rec *r, const void *uaddr, long len)
{
    if (!uaddr)
        return;
    u32 n = len;
    if (len <= 0 || n > sizeof(r->h.addr))
        n = sizeof(r->h.addr);
    /* Read no more than the caller gave: a sockaddr_in may end at a page boundary. */
    bpf_probe_read_user(r->h.addr, n & 0x1f, uaddr);
}

static __always_inline u16 rw_addr_family(struct rw_rec *r)
{
    return *(u16 *)r->h.addr;
}

static __always_inline u16 rw_addr_port(struct rw_rec *r)
{
    u16 be = *(u16 *)(r->h.addr + 2);
    return (be >> 8) | ((be & 0xff) << 8);
}

#endif
