/* Mechanism probes for the launch benchmark (diagnosis helper, root only).
 *
 *   cc -O2 -o /tmp/probes benches/launch/probes.c
 *   /tmp/probes seccomp N PROGRAM.bpf...       time prctl(PR_SET_SECCOMP) of each program
 *   /tmp/probes attach N GAP_US CGROUP_DIR...  cgroup v1: place a fresh child in a new
 *        cgroup under each DIR (one per hierarchy), (1) the parent writing the child's pid
 *        to cgroup.procs, as cella-shim does, (2) the child writing "0" to `tasks` itself
 *        (moves only the calling thread: no global threadgroup lock, no RCU grace period);
 *        GAP_US between launches (a benchmark spaces launches by ~10-30 ms).
 * Programs are in build.rs's format: little-endian u64 code<<48 | jt<<40 | jf<<32 | k.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}
static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}
static void report(const char *what, double *xs, int n) {
    double s = 0;
    qsort(xs, n, sizeof *xs, cmp);
    for (int i = 0; i < n; i++) s += xs[i];
    printf("%-62s median %.3f  mean %.3f  p90 %.3f  max %.3f ms (n=%d)\n", what, xs[n / 2], s / n,
           xs[n * 9 / 10], xs[n - 1], n);
}
static void die(const char *what) { perror(what); exit(1); }

static struct sock_fprog load_program(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) die(path);
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    rewind(f);
    uint64_t *w = malloc(size);
    if (fread(w, 1, size, f) != (size_t)size) die("fread");
    fclose(f);
    int n = size / 8;
    struct sock_filter *p = malloc(n * sizeof *p);
    for (int i = 0; i < n; i++) {
        p[i].code = w[i] >> 48;
        p[i].jt = (w[i] >> 40) & 0xff;
        p[i].jf = (w[i] >> 32) & 0xff;
        p[i].k = w[i] & 0xffffffff;
    }
    return (struct sock_fprog){.len = n, .filter = p};
}

static void seccomp_probe(const char *path, int n) {
    struct sock_fprog prog = load_program(path);
    double *xs = malloc(n * sizeof *xs);
    for (int i = 0; i < n; i++) {
        int p[2];
        if (pipe(p)) die("pipe");
        pid_t c = fork();
        if (c == 0) {
            prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
            double t0 = now_ms();
            int r = prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog);
            double d = r ? -1 : now_ms() - t0;
            if (write(p[1], &d, sizeof d) < 0) _exit(1);
            _exit(0);
        }
        if (read(p[0], &xs[i], sizeof xs[i]) != sizeof xs[i]) die("read");
        waitpid(c, 0, 0);
        close(p[0]);
        close(p[1]);
    }
    char what[300];
    snprintf(what, sizeof what, "seccomp load, %u instructions (%s)", prog.len, strrchr(path, '/') ? strrchr(path, '/') + 1 : path);
    report(what, xs, n);
}

static void write_file(const char *path, const char *s) {
    int fd = open(path, O_WRONLY);
    if (fd < 0 || write(fd, s, strlen(s)) < 0) die(path);
    close(fd);
}

static void attach_probe(char **dirs, int ndirs, int n, int gap_us, int self) {
    double *xs = malloc(n * sizeof *xs);
    char path[1024], pid[32];
    for (int i = 0; i < n; i++) {
        for (int h = 0; h < ndirs; h++) {
            snprintf(path, sizeof path, "%s/launch-probe-%d", dirs[h], getpid());
            if (mkdir(path, 0755)) die(path);
        }
        int go[2], res[2];
        if (pipe(go) || pipe(res)) die("pipe");
        pid_t c = fork();
        if (c == 0) {
            char b;
            double d = 0;
            if (read(go[0], &b, 1) != 1) _exit(1);
            if (self) {
                double t0 = now_ms();
                for (int h = 0; h < ndirs; h++) {
                    snprintf(path, sizeof path, "%s/launch-probe-%d/tasks", dirs[h], getppid());
                    write_file(path, "0");
                }
                d = now_ms() - t0;
            }
            if (write(res[1], &d, sizeof d) < 0) _exit(1);
            _exit(0);
        }
        double d = 0;
        if (!self) {
            snprintf(pid, sizeof pid, "%d", c);
            double t0 = now_ms();
            for (int h = 0; h < ndirs; h++) {
                snprintf(path, sizeof path, "%s/launch-probe-%d/cgroup.procs", dirs[h], getpid());
                write_file(path, pid);
            }
            d = now_ms() - t0;
        }
        if (write(go[1], "g", 1) != 1) die("write");
        double dc;
        if (read(res[0], &dc, sizeof dc) != sizeof dc) die("read");
        waitpid(c, 0, 0);
        xs[i] = self ? dc : d;
        close(go[0]); close(go[1]); close(res[0]); close(res[1]);
        for (int h = 0; h < ndirs; h++) {
            snprintf(path, sizeof path, "%s/launch-probe-%d", dirs[h], getpid());
            rmdir(path);
        }
        if (gap_us) usleep(gap_us);
    }
    char what[200];
    snprintf(what, sizeof what, self ? "cgroup v1 attach, child writes 0 to tasks (%d hierarchies)"
                                     : "cgroup v1 attach, parent writes pid to cgroup.procs (%d)", ndirs);
    report(what, xs, n);
}

int main(int argc, char **argv) {
    if (argc >= 4 && !strcmp(argv[1], "seccomp")) {
        for (int i = 3; i < argc; i++) seccomp_probe(argv[i], atoi(argv[2]));
        return 0;
    }
    if (argc >= 5 && !strcmp(argv[1], "attach")) {
        int n = atoi(argv[2]), gap = atoi(argv[3]);
        for (int round = 0; round < 2; round++) {
            attach_probe(argv + 4, argc - 4, n, gap, 0);
            attach_probe(argv + 4, argc - 4, n, gap, 1);
        }
        return 0;
    }
    fprintf(stderr, "usage: probes seccomp N PROGRAM.bpf... | probes attach N GAP_US CGROUP_DIR...\n");
    return 2;
}
