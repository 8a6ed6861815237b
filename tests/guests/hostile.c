/* A hostile native guest for the process backend's tests: each mode attempts one escape or
 * abuse and prints what happened, so the test can check the outcome.
 * Built by the tests with the system C compiler: cc -O1 -o hostile hostile.c */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/msg.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <termios.h>
#include <unistd.h>

static void report(const char *what, long rc) {
    if (rc < 0)
        printf("%s: err %d %s\n", what, errno, strerror(errno));
    else
        printf("%s: ok %ld\n", what, rc);
    fflush(stdout);
}

static int forkbomb(void) {
    /* Fork until the kernel refuses; children sleep. Prints how many forks succeeded. */
    int n = 0;
    for (;;) {
        pid_t p = fork();
        if (p == 0) {
            pause();
            _exit(0);
        }
        if (p < 0) {
            printf("forked %d then err %d\n", n, errno);
            fflush(stdout);
            return 0;
        }
        n++;
        if (n > 100000) {
            printf("forked %d without limit\n", n);
            return 0;
        }
    }
}

static int daemonize(const char *marker) {
    /* Double fork + setsid: the grandchild keeps touching `marker` for 5 s. */
    pid_t p = fork();
    if (p == 0) {
        setsid();
        if (fork() == 0) {
            for (int i = 0; i < 50; i++) {
                int fd = open(marker, O_WRONLY | O_CREAT | O_APPEND, 0644);
                if (fd >= 0) {
                    write(fd, "x", 1);
                    close(fd);
                }
                usleep(100000);
            }
            _exit(0);
        }
        _exit(0);
    }
    waitpid(p, NULL, 0);
    printf("daemon started\n");
    return 0;
}

static int connect_tcp(const char *addr, int port, int v6) {
    int s = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM, 0);
    if (s < 0) {
        report("socket", -1);
        return 0;
    }
    int rc;
    if (v6) {
        struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = htons(port)};
        inet_pton(AF_INET6, addr, &a.sin6_addr);
        rc = connect(s, (struct sockaddr *)&a, sizeof a);
    } else {
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
        inet_pton(AF_INET, addr, &a.sin_addr);
        rc = connect(s, (struct sockaddr *)&a, sizeof a);
    }
    report("connect", rc);
    return 0;
}

static int connect_abstract(const char *name) {
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    size_t len = strlen(name);
    memcpy(a.sun_path + 1, name, len);
    int rc = connect(s, (struct sockaddr *)&a, offsetof(struct sockaddr_un, sun_path) + 1 + len);
    report("connect", rc);
    return 0;
}

/* Tries every way to leave a file with privilege bits in DIR (a read-write mount). */
static int privilege(const char *dir) {
    char path[512];
    snprintf(path, sizeof path, "%s/plain", dir);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0755);
    report("create_plain", fd);
    if (fd >= 0) {
        static const char elf[] = "\x7f" "ELF not really";
        report("write", write(fd, elf, sizeof elf));
        report("fchmod_setuid", fchmod(fd, 04755));
        report("fchmod_setgid", fchmod(fd, 02755));
        close(fd);
    }
    report("chmod_setuid", chmod(path, 06755));
    report("fchmodat_setuid", fchmodat(AT_FDCWD, path, 04755, 0));
    report("fchmodat2_setuid", syscall(452, AT_FDCWD, path, 04755, 0));
    char cap[20] = {0};
    cap[0] = 1; /* magic_etc, little-endian: VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE */
    cap[3] = 2;
    cap[4] = 0xff; /* every permitted capability of the first word */
    report("setxattr_capability", setxattr(path, "security.capability", cap, sizeof cap, 0));
    snprintf(path, sizeof path, "%s/created_setuid", dir);
    report("open_creat_setuid", open(path, O_WRONLY | O_CREAT, 04755));
    snprintf(path, sizeof path, "%s/creat_setgid", dir);
    report("creat_setgid", creat(path, 02755));
    snprintf(path, sizeof path, "%s/mknod_setuid", dir);
    report("mknod_setuid", mknod(path, S_IFREG | 04755, 0));
    snprintf(path, sizeof path, "%s/dir_setgid", dir);
    report("mkdir_setgid", mkdir(path, 02755));
    report("openat_tmpfile_setuid", open(dir, O_TMPFILE | O_WRONLY, 04755));
    struct { unsigned long long flags, mode, resolve; } how = {O_WRONLY | O_CREAT, 04755, 0};
    snprintf(path, sizeof path, "%s/openat2_setuid", dir);
    report("openat2_setuid", syscall(SYS_openat2, AT_FDCWD, path, &how, sizeof how));
    return 0;
}

/* Memory outside any address space: N MiB in a memfd, in System V shared memory, and pipes
 * grown past their default size. */
static int shared_memory(const char *arg) {
    size_t mib = (size_t)atoi(arg);
    static char chunk[1 << 20];
    memset(chunk, 'm', sizeof chunk);
    int fd = memfd_create("hoard", 0);
    report("memfd_create", fd);
    if (fd >= 0) {
        size_t done = 0;
        for (; done < mib; done++)
            if (write(fd, chunk, sizeof chunk) != (ssize_t)sizeof chunk) break;
        printf("memfd_mib: %zu\n", done);
    }
    int shm = shmget(IPC_PRIVATE, mib << 20, IPC_CREAT | 0600);
    report("shmget", shm);
    report("msgget", msgget(IPC_PRIVATE, IPC_CREAT | 0600));
    int p[2];
    if (pipe(p) == 0) report("setpipe_sz", fcntl(p[1], F_SETPIPE_SZ, 1 << 20));
    return 0;
}

/* Connects to the Unix socket at PATH and says what it read. */
static int unix_connect(const char *path) {
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    report("socket", s);
    if (s < 0) return 0;
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    strncpy(a.sun_path, path, sizeof a.sun_path - 1);
    report("connect", connect(s, (struct sockaddr *)&a, sizeof a));
    return 0;
}

/* What the sandbox shows of its own init (pid 1) and of the process list. */
static int proc_one(void) {
    const char *files[] = {"/proc/1/cmdline", "/proc/1/environ", "/proc/1/status", "/proc/1/maps"};
    for (int i = 0; i < 4; i++) {
        int fd = open(files[i], O_RDONLY);
        if (fd < 0) { printf("%s: err %d\n", files[i], errno); continue; }
        char buf[4096];
        ssize_t n = read(fd, buf, sizeof buf - 1);
        if (n < 0) { printf("%s: read err %d\n", files[i], errno); close(fd); continue; }
        for (ssize_t k = 0; k < n; k++) if (buf[k] == 0) buf[k] = ' ';
        buf[n] = 0;
        printf("%s: %s\n", files[i], buf);
        close(fd);
    }
    fflush(stdout);
    execl("/bin/ls", "ls", "/proc", (char *)NULL);
    return 1;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "";
    const char *arg = argc > 2 ? argv[2] : "";
    if (!strcmp(mode, "forkbomb")) return forkbomb();
    if (!strcmp(mode, "daemon")) return daemonize(arg);
    if (!strcmp(mode, "ptrace")) { report("ptrace", ptrace(PTRACE_ATTACH, getppid() > 0 ? getppid() : 1, 0, 0)); return 0; }
    if (!strcmp(mode, "kill")) {
        /* kill(-1) hits only our own namespace; a host pid is not even visible. */
        report("kill_host_pid", kill(atoi(arg), SIGKILL));
        report("kill_all", kill(-1, SIGKILL));
        return 0;
    }
    if (!strcmp(mode, "tcp4")) return connect_tcp("127.0.0.1", atoi(arg), 0);
    if (!strcmp(mode, "tcp6")) return connect_tcp("::1", atoi(arg), 1);
    if (!strcmp(mode, "abstract")) return connect_abstract(arg);
    if (!strcmp(mode, "socket_inet")) { report("socket", socket(AF_INET, SOCK_DGRAM, 0)); return 0; }
    if (!strcmp(mode, "socket_unix")) { report("socket", socket(AF_UNIX, SOCK_STREAM, 0)); return 0; }
    if (!strcmp(mode, "tiocsti")) {
        char c = 'x';
        /* TIOCSTI with bits set above 32: the kernel compares the command as 32 bits. */
        report("tiocsti", syscall(SYS_ioctl, 0, 0x100005412UL, &c));
        return 0;
    }
    if (!strcmp(mode, "tioclinux")) { char c = 2; report("tioclinux", ioctl(0, TIOCLINUX, &c)); return 0; }
    if (!strcmp(mode, "int80")) {
        long ret;
        __asm__ volatile("int $0x80" : "=a"(ret) : "a"(20) : "memory"); /* i386 getpid */
        printf("int80 returned %ld\n", ret);
        return 0;
    }
    if (!strcmp(mode, "x32")) { report("x32", syscall(0x40000000 | SYS_getpid)); return 0; }
    if (!strcmp(mode, "io_uring")) {
        struct io_uring_params p;
        memset(&p, 0, sizeof p);
        report("io_uring_setup", syscall(SYS_io_uring_setup, 4, &p));
        return 0;
    }
    if (!strcmp(mode, "unshare")) { report("unshare", unshare(CLONE_NEWUSER)); return 0; }
    if (!strcmp(mode, "mount")) { report("mount", mount("none", "/tmp", "tmpfs", 0, NULL)); return 0; }
    if (!strcmp(mode, "clone_newuser")) {
        /* clone with a namespace flag through the raw syscall. */
        report("clone", syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0));
        return 0;
    }
    if (!strcmp(mode, "clone3")) { report("clone3", syscall(SYS_clone3, NULL, 0)); return 0; }
    if (!strcmp(mode, "fds")) {
        /* Any descriptor beyond stdio left open by the host? */
        int found = 0;
        for (int fd = 3; fd < 1024; fd++) {
            struct stat st;
            if (fstat(fd, &st) == 0) {
                printf("open fd %d\n", fd);
                found++;
            }
        }
        printf("extra fds: %d\n", found);
        return 0;
    }
    if (!strcmp(mode, "caps")) {
        /* Effective, permitted and bounding capabilities, and no_new_privs. */
        FILE *f = fopen("/proc/self/status", "r");
        char line[256];
        while (f && fgets(line, sizeof line, f))
            if (!strncmp(line, "Cap", 3) || !strncmp(line, "NoNewPrivs", 10) || !strncmp(line, "Uid", 3) || !strncmp(line, "Seccomp:", 8))
                fputs(line, stdout);
        return 0;
    }
    if (!strcmp(mode, "exec")) {
        /* Execute argv[2..]. */
        execv(argv[2], argv + 2);
        report("exec", -1);
        return 1;
    }
    if (!strcmp(mode, "read")) {
        int fd = open(arg, O_RDONLY);
        if (fd < 0) { report("open", -1); return 0; }
        char buf[256];
        ssize_t n = read(fd, buf, sizeof buf - 1);
        if (n < 0) { report("read", -1); return 0; }
        buf[n] = 0;
        printf("read ok: %s\n", buf);
        return 0;
    }
    if (!strcmp(mode, "write")) {
        int fd = open(arg, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        report("open_for_write", fd);
        return 0;
    }
    if (!strcmp(mode, "privilege")) return privilege(arg);
    if (!strcmp(mode, "shared_memory")) return shared_memory(arg);
    if (!strcmp(mode, "unix_connect")) return unix_connect(arg);
    if (!strcmp(mode, "proc1")) return proc_one();
    if (!strcmp(mode, "fdescape")) {
        /* Reach the host through /proc/self/fd of a directory descriptor, then `..`. */
        int d = open("/", O_RDONLY | O_DIRECTORY);
        char path[64];
        snprintf(path, sizeof path, "/proc/self/fd/%d/../../../etc/shadow", d);
        int fd = open(path, O_RDONLY);
        report("open_via_proc_fd", fd);
        report("open_via_proc_1_root", open("/proc/1/root/etc/shadow", O_RDONLY));
        report("open_via_proc_1_cwd", open("/proc/1/cwd/../../../etc/shadow", O_RDONLY));
        return 0;
    }
    fprintf(stderr, "hostile: unknown mode %s\n", mode);
    return 2;
}
