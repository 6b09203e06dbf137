/* loadgen.c: the syscall load of roguewatch's benchmark (compiled by bench/run.py at bench time).
 *
 *   loadgen [-w] rate KIND RATE COUNT [spin|sleep]
 *       COUNT calls of a cheap tracked syscall at RATE calls/s, paced in batches of 0.5 ms:
 *       KIND kill    kill(child, 0)           one "kill" event each, to KILL_TARGETS children
 *                                             in turn: distinct records, which the kernel
 *                                             never folds (see probes/roguewatch.h)
 *            setpgid setpgid(0, 0)            one "setpgid" event each
 *            prctl   prctl(PR_GET_NAME, buf)  one "prctl" event each
 *       sleep pacing (the default) sleeps when ahead of schedule; spin busy-waits instead.
 *   loadgen [-w] micro NAME ITERS TRIALS
 *       ns per call of one syscall in a tight loop, the best of TRIALS runs of ITERS calls:
 *       getppid (not traced), kill, openat (O_WRONLY /dev/null, plus its close), connect
 *       (a UDP socket to a closed loopback port), rt_sigaction (a SIGTERM handler).
 *   loadgen [-w] storm NAME ITERS [PATH]
 *       wall time of a syscall storm: connect (TCP socket+connect to a closed loopback port
 *       +close), open (openat O_WRONLY|O_CREAT|O_TRUNC of PATH + close), create (a new file
 *       PATH/fN each time: openat O_WRONLY|O_CREAT|O_EXCL, a 64-byte write, close; PATH is a
 *       directory, best a tmpfs), forkexec (fork, exec /bin/true, wait).
 *
 * -w: read one byte from stdin before starting, so the caller can first put this process
 * in a session. Every mode prints one JSON object on stdout: the count of calls that
 * succeeded is exact (each one is one event when tracked), times are CLOCK_MONOTONIC ns.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CLOSED_PORT 1 /* tcpmux: nothing listens there */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static void sleep_until(uint64_t t)
{
    struct timespec ts = {.tv_sec = t / 1000000000ull, .tv_nsec = t % 1000000000ull};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

static double tv_s(struct timeval tv) { return tv.tv_sec + tv.tv_usec / 1e6; }

static void die(const char *what)
{
    fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void usage(void)
{
    fprintf(stderr, "usage: loadgen [-w] rate KIND RATE COUNT [spin|sleep]\n"
                    "       loadgen [-w] micro NAME ITERS TRIALS\n"
                    "       loadgen [-w] storm NAME ITERS [PATH]\n");
    exit(2);
}

static struct sockaddr_in loopback(int port)
{
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

static void print_rusage(void)
{
    struct rusage ru, ch;
    getrusage(RUSAGE_SELF, &ru);
    getrusage(RUSAGE_CHILDREN, &ch);
    printf("\"utime_s\": %.6f, \"stime_s\": %.6f, \"children_cpu_s\": %.6f",
           tv_s(ru.ru_utime), tv_s(ru.ru_stime), tv_s(ch.ru_utime) + tv_s(ch.ru_stime));
}

/* -- rate ------------------------------------------------------------------------------ */

#define KILL_TARGETS 16

static int rate_mode(const char *kind, double rate, long count, int spin)
{
    pid_t targets[KILL_TARGETS];
    char name[16];
    int k;
    if (!strcmp(kind, "kill"))
        k = 0;
    else if (!strcmp(kind, "setpgid"))
        k = 1;
    else if (!strcmp(kind, "prctl"))
        k = 2;
    else
        usage();
    /* The targets live until the parent closes the pipe's end (no signal: a kill would
     * be one more "kill" event than the calls counted). */
    int alive[2] = {-1, -1};
    if (k == 0) {
        if (pipe(alive) != 0)
            die("pipe");
        for (int j = 0; j < KILL_TARGETS; j++) {
            targets[j] = fork();
            if (targets[j] < 0)
                die("fork");
            if (targets[j] == 0) {
                char c;
                close(alive[1]);
                while (read(alive[0], &c, 1) < 0 && errno == EINTR)
                    ;
                _exit(0);
            }
        }
        close(alive[0]);
    }
    /* Batches of 0.5 ms of load: a wake-up per batch, the schedule is kept across them. */
    long batch = (long)(rate / 2000.0);
    if (batch < 1)
        batch = 1;
    double ns_per = 1e9 / rate;
    long ok = 0, failed = 0, done = 0;
    uint64_t behind_ns = 0, t0 = now_ns();
    while (done < count) {
        long n = count - done < batch ? count - done : batch;
        for (long i = 0; i < n; i++) {
            int r;
            if (k == 0)
                r = kill(targets[(done + i) % KILL_TARGETS], 0);
            else if (k == 1)
                r = setpgid(0, 0);
            else
                r = prctl(PR_GET_NAME, name, 0, 0, 0);
            if (r == 0)
                ok++;
            else
                failed++;
        }
        done += n;
        uint64_t target = t0 + (uint64_t)(done * ns_per), t = now_ns();
        if (t < target) {
            if (spin)
                while (now_ns() < target)
                    ;
            else
                sleep_until(target);
        } else {
            behind_ns = t - target; /* how late the last batch ended */
        }
    }
    uint64_t t1 = now_ns();
    if (k == 0) {
        close(alive[1]);
        for (int j = 0; j < KILL_TARGETS; j++)
            waitpid(targets[j], NULL, 0);
    }
    printf("{\"mode\": \"rate\", \"kind\": \"%s\", \"target\": %.0f, \"count\": %ld, "
           "\"ok\": %ld, \"failed\": %ld, \"t0_ns\": %llu, \"t1_ns\": %llu, "
           "\"elapsed_s\": %.6f, \"rate\": %.1f, \"behind_ns\": %llu, ",
           kind, rate, done, ok, failed, (unsigned long long)t0, (unsigned long long)t1,
           (t1 - t0) / 1e9, done / ((t1 - t0) / 1e9), (unsigned long long)behind_ns);
    print_rusage();
    printf("}\n");
    return 0;
}

/* -- micro ----------------------------------------------------------------------------- */

static void on_term(int sig) { (void)sig; }

static int micro_mode(const char *what, long iters, int trials)
{
    pid_t pid = getpid();
    struct sockaddr_in dst = loopback(CLOSED_PORT);
    int udp = -1;
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_term;
    if (!strcmp(what, "connect")) {
        udp = socket(AF_INET, SOCK_DGRAM, 0);
        if (udp < 0)
            die("socket");
    }
    double best = 1e18;
    long errors = 0;
    for (int t = 0; t < trials; t++) {
        uint64_t t0 = now_ns();
        if (!strcmp(what, "getppid")) {
            for (long i = 0; i < iters; i++)
                getppid();
        } else if (!strcmp(what, "kill")) {
            for (long i = 0; i < iters; i++)
                errors += kill(pid, 0) != 0;
        } else if (!strcmp(what, "openat")) {
            for (long i = 0; i < iters; i++) {
                int fd = openat(AT_FDCWD, "/dev/null", O_WRONLY);
                if (fd < 0)
                    errors++;
                else
                    close(fd);
            }
        } else if (!strcmp(what, "connect")) {
            for (long i = 0; i < iters; i++)
                errors += connect(udp, (struct sockaddr *)&dst, sizeof(dst)) != 0;
        } else if (!strcmp(what, "rt_sigaction")) {
            for (long i = 0; i < iters; i++)
                errors += sigaction(SIGTERM, &sa, NULL) != 0;
        } else {
            usage();
        }
        double ns = (double)(now_ns() - t0) / iters;
        if (ns < best)
            best = ns;
    }
    printf("{\"mode\": \"micro\", \"name\": \"%s\", \"iters\": %ld, \"trials\": %d, "
           "\"ns_per_call\": %.2f, \"errors\": %ld}\n",
           what, iters, trials, best, errors);
    return 0;
}

/* -- storm ----------------------------------------------------------------------------- */

static int storm_mode(const char *what, long iters, const char *path)
{
    struct sockaddr_in dst = loopback(CLOSED_PORT);
    long ok = 0, failed = 0;
    uint64_t t0 = now_ns();
    if (!strcmp(what, "connect")) {
        for (long i = 0; i < iters; i++) {
            int s = socket(AF_INET, SOCK_STREAM, 0);
            if (s < 0)
                die("socket");
            if (connect(s, (struct sockaddr *)&dst, sizeof(dst)) == 0 || errno == ECONNREFUSED)
                ok++;
            else
                failed++;
            close(s);
        }
    } else if (!strcmp(what, "open")) {
        if (!path)
            usage();
        for (long i = 0; i < iters; i++) {
            int fd = openat(AT_FDCWD, path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
            if (fd < 0) {
                failed++;
                continue;
            }
            ok++;
            close(fd);
        }
    } else if (!strcmp(what, "create")) {
        if (!path)
            usage();
        char name[4096];
        static const char line[64] = "loadgen create storm: sixty-four bytes of file content.....\n";
        for (long i = 0; i < iters; i++) {
            snprintf(name, sizeof(name), "%s/f%ld", path, i);
            int fd = openat(AT_FDCWD, name, O_WRONLY | O_CREAT | O_EXCL, 0644);
            if (fd < 0) {
                failed++;
                continue;
            }
            if (write(fd, line, sizeof(line)) == (ssize_t)sizeof(line))
                ok++;
            else
                failed++;
            close(fd);
        }
    } else if (!strcmp(what, "forkexec")) {
        for (long i = 0; i < iters; i++) {
            pid_t c = fork();
            if (c < 0)
                die("fork");
            if (c == 0) {
                execl("/bin/true", "true", (char *)NULL);
                _exit(127);
            }
            int st;
            if (waitpid(c, &st, 0) == c && WIFEXITED(st) && WEXITSTATUS(st) == 0)
                ok++;
            else
                failed++;
        }
    } else {
        usage();
    }
    uint64_t t1 = now_ns();
    printf("{\"mode\": \"storm\", \"name\": \"%s\", \"iters\": %ld, \"ok\": %ld, "
           "\"failed\": %ld, \"t0_ns\": %llu, \"t1_ns\": %llu, \"elapsed_s\": %.6f, ",
           what, iters, ok, failed, (unsigned long long)t0, (unsigned long long)t1,
           (t1 - t0) / 1e9);
    print_rusage();
    printf("}\n");
    return 0;
}

int main(int argc, char **argv)
{
    int a = 1;
    if (a < argc && !strcmp(argv[a], "-w")) {
        char c;
        if (read(0, &c, 1) != 1)
            return 3; /* the caller went away before saying go */
        a++;
    }
    if (a >= argc)
        usage();
    const char *mode = argv[a];
    if (!strcmp(mode, "rate") && argc - a >= 4)
        return rate_mode(argv[a + 1], atof(argv[a + 2]), atol(argv[a + 3]),
                         argc - a >= 5 && !strcmp(argv[a + 4], "spin"));
    if (!strcmp(mode, "micro") && argc - a >= 4)
        return micro_mode(argv[a + 1], atol(argv[a + 2]), atoi(argv[a + 3]));
    if (!strcmp(mode, "storm") && argc - a >= 3)
        return storm_mode(argv[a + 1], atol(argv[a + 2]), argc - a >= 4 ? argv[a + 3] : NULL);
    usage();
    return 2;
}
