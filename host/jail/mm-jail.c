// mm-jail: the executor of a VMM's jail (docs/adr/0008). It carries out a plan made by
// mm (packages/vmm/src/jail.ts, planJail/jailCommand), given as arguments, then execs the
// VMM: a private mount namespace whose tmpfs root holds only what the plan binds, device
// nodes owned by the VMM's ids, the machine's cgroups, then chroot, no groups, the
// VMM's own uid and gid, no capabilities (bounding, inheritable and ambient sets
// emptied), no_new_privs, rlimits and the parent-death signal — all with system calls,
// so the jail adds no process to a machine's start (an sh script did, ~15 of them).
//
// Usage: mm-jail OP... -- VMM ARGS...
//   root DIR                 the jail's root (an empty directory; a tmpfs is mounted there)
//   dir PATH                 a directory made in the jail (mount points), before any bind
//   file PATH                an empty file made in the jail (a file's mount point)
//   link TARGET NAME         a symlink NAME (relative to the root) → TARGET
//   proc                     a proc of its own at /proc: hidepid=invisible,subset=pid
//   bind ro|rw PATH          PATH of the host at the same path inside, nosuid,nodev(,ro)
//   idmap ro|rw PATH UID GID the same, idmapped: files the host has as UID:GID are the
//                            VMM's own inside, and what it creates lands as UID:GID (a 9p
//                            share served by a VMM that never is the directory's owner)
//   dev PATH MAJOR MINOR MODE UID GID   a character device node
//   cgroup FILE VALUE        written before the chroot; VALUE "self" is this process's pid
//   ids UID GID              what the VMM runs as
//   nofile N | fsize BYTES   rlimits
// Every step that fails ends it with "mm-jail: STEP: reason" on stderr and status 126.

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <stdint.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

// capset(2)'s structures (musl has no <linux/capability.h>): version 3, two data words.
struct cap_header {
  uint32_t version;
  int pid;
};
struct cap_data {
  uint32_t effective, permitted, inheritable;
};
#define CAP_VERSION_3 0x20080522

#ifndef PR_CAP_AMBIENT
#define PR_CAP_AMBIENT 47
#define PR_CAP_AMBIENT_CLEAR_ALL 4
#endif

static void die(const char *step, const char *what) {
  fprintf(stderr, "mm-jail: %s%s%s: %s\n", step, what ? " " : "", what ? what : "", strerror(errno));
  exit(126);
}

static void usage(const char *why) {
  fprintf(stderr, "mm-jail: %s\n", why);
  exit(126);
}

static char root[4096];

/* The jail's view of a host path: ROOT + PATH. */
static const char *in_jail(const char *path) {
  static char buf[8192];
  if (path[0] != '/') usage("paths must be absolute");
  if ((size_t)snprintf(buf, sizeof buf, "%s%s", root, path) >= sizeof buf) usage("path too long");
  return buf;
}

static void mkdir_p(const char *path) {
  char buf[8192];
  if (strlen(path) >= sizeof buf) usage("path too long");
  strcpy(buf, path);
  for (char *p = buf + 1; *p; p++) {
    if (*p != '/') continue;
    *p = 0;
    if (mkdir(buf, 0755) != 0 && errno != EEXIST) die("mkdir", buf);
    *p = '/';
  }
  if (mkdir(buf, 0755) != 0 && errno != EEXIST) die("mkdir", buf);
}

static unsigned long number(const char *s, int base) {
  char *end;
  errno = 0;
  unsigned long v = strtoul(s, &end, base);
  if (errno || *end || end == s) usage("bad number");
  return v;
}

static void write_file(const char *file, const char *value) {
  char pid[32];
  if (strcmp(value, "self") == 0) {
    snprintf(pid, sizeof pid, "%d", (int)getpid());
    value = pid;
  }
  int fd = open(file, O_WRONLY | O_CLOEXEC);
  if (fd < 0) die("cgroup", file);
  size_t n = strlen(value);
  if (write(fd, value, n) != (ssize_t)n) die("cgroup", file);
  close(fd);
}

// Idmapped mounts (Linux 5.12): open_tree, mount_setattr, move_mount. musl has no
// wrappers, so the system calls are made directly (x86_64 numbers).
#ifndef SYS_open_tree
#define SYS_open_tree 428
#endif
#ifndef SYS_move_mount
#define SYS_move_mount 429
#endif
#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif
#define OPEN_TREE_CLONE 1
#define MOVE_MOUNT_F_EMPTY_PATH 0x00000004
#define MOUNT_ATTR_RDONLY 0x00000001
#define MOUNT_ATTR_NOSUID 0x00000002
#define MOUNT_ATTR_NODEV 0x00000004
#define MOUNT_ATTR_IDMAP 0x00100000
struct mount_attr_v0 {
  uint64_t attr_set, attr_clr, propagation, userns_fd;
};

/* A user namespace whose only mapping is host id `disk` ↔ `vmm`: a mount idmapped with
   it shows files `disk` owns as `vmm`'s. Made by a child that unshares and waits. */
static int idmap_userns(unsigned long disk_uid, unsigned long disk_gid, long vmm_uid, long vmm_gid) {
  int ready[2], go[2];
  if (pipe(ready) != 0 || pipe(go) != 0) die("pipe", NULL);
  pid_t pid = fork();
  if (pid < 0) die("fork", NULL);
  if (pid == 0) {
    char c = 0;
    if (unshare(CLONE_NEWUSER) != 0) _exit(1);
    if (write(ready[1], &c, 1) != 1) _exit(1);
    if (read(go[0], &c, 1) < 0) _exit(1);
    _exit(0);
  }
  char c;
  if (read(ready[0], &c, 1) != 1) die("userns child", NULL);
  char path[64], map[128];
  int n;
  snprintf(path, sizeof path, "/proc/%d/uid_map", (int)pid);
  n = snprintf(map, sizeof map, "%lu %ld 1\n", disk_uid, vmm_uid);
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0 || write(fd, map, (size_t)n) != n) die("uid_map", path);
  close(fd);
  snprintf(path, sizeof path, "/proc/%d/gid_map", (int)pid);
  n = snprintf(map, sizeof map, "%lu %ld 1\n", disk_gid, vmm_gid);
  fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0 || write(fd, map, (size_t)n) != n) die("gid_map", path);
  close(fd);
  snprintf(path, sizeof path, "/proc/%d/ns/user", (int)pid);
  int ns = open(path, O_RDONLY | O_CLOEXEC);
  if (ns < 0) die("userns", path);
  if (write(go[1], &c, 1) != 1) die("userns child", NULL);
  waitpid(pid, NULL, 0);
  close(ready[0]);
  close(ready[1]);
  close(go[0]);
  close(go[1]);
  return ns;
}

static void idmapped_bind(const char *src, const char *dst, int ro, int userns) {
  int tree = (int)syscall(SYS_open_tree, AT_FDCWD, src, OPEN_TREE_CLONE | O_CLOEXEC);
  if (tree < 0) die("open_tree", src);
  struct mount_attr_v0 attr = {MOUNT_ATTR_IDMAP | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | (ro ? MOUNT_ATTR_RDONLY : 0), 0, 0,
                               (uint64_t)userns};
  if (syscall(SYS_mount_setattr, tree, "", AT_EMPTY_PATH, &attr, sizeof attr) != 0) die("mount_setattr", src);
  if (syscall(SYS_move_mount, tree, "", AT_FDCWD, dst, MOVE_MOUNT_F_EMPTY_PATH) != 0) die("move_mount", src);
  close(tree);
}

int main(int argc, char **argv) {
  // Dies with its supervisor from the first moment (set again after the uid change,
  // which clears it).
  if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) die("pdeathsig", NULL);
  int sep = 1;
  while (sep < argc && strcmp(argv[sep], "--") != 0) sep++;
  if (sep >= argc - 1) usage("usage: mm-jail OP... -- VMM ARGS...");

  // Pass 1: the root and the ids (everything else refers to them).
  long uid = -1, gid = -1;
  for (int i = 1; i < sep; i++) {
    if (strcmp(argv[i], "root") == 0 && i + 1 < sep) {
      if (strlen(argv[i + 1]) >= sizeof root) usage("root too long");
      strcpy(root, argv[++i]);
    } else if (strcmp(argv[i], "ids") == 0 && i + 2 < sep) {
      uid = (long)number(argv[i + 1], 10);
      gid = (long)number(argv[i + 2], 10);
      i += 2;
    }
  }
  if (!root[0] || uid <= 0 || gid <= 0) usage("a root and non-root ids are required");

  if (unshare(CLONE_NEWNS) != 0) die("unshare", NULL);
  if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) die("mount private", NULL);
  if (mount("mm-jail", root, "tmpfs", MS_NOSUID, "mode=0755,size=1m") != 0) die("mount tmpfs", root);

  struct rlimit nofile = {4096, 4096}, fsize = {RLIM_INFINITY, RLIM_INFINITY};
  // Pass 2: the steps, in the order given (mm puts mount points before binds, parents first).
  for (int i = 1; i < sep; i++) {
    const char *op = argv[i];
    if (strcmp(op, "root") == 0) {
      i++;
    } else if (strcmp(op, "ids") == 0) {
      i += 2;
    } else if (strcmp(op, "dir") == 0 && i + 1 < sep) {
      mkdir_p(in_jail(argv[++i]));
    } else if (strcmp(op, "file") == 0 && i + 1 < sep) {
      const char *p = in_jail(argv[++i]);
      int fd = open(p, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
      if (fd < 0 && errno != EEXIST) die("file", p);
      if (fd >= 0) close(fd);
    } else if (strcmp(op, "link") == 0 && i + 2 < sep) {
      if (symlink(argv[i + 1], in_jail(argv[i + 2])) != 0) die("symlink", argv[i + 2]);
      i += 2;
    } else if (strcmp(op, "proc") == 0) {
      const char *p = in_jail("/proc");
      mkdir_p(p);
      if (mount("mm-proc", p, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=invisible,subset=pid") != 0)
        die("mount proc", p);
    } else if (strcmp(op, "bind") == 0 && i + 2 < sep) {
      int ro = strcmp(argv[i + 1], "ro") == 0;
      const char *src = argv[i + 2];
      const char *dst = in_jail(src);
      i += 2;
      if (mount(src, dst, NULL, MS_BIND, NULL) != 0) die("bind", src);
      unsigned long flags = MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV | (ro ? MS_RDONLY : 0);
      if (mount(NULL, dst, NULL, flags, NULL) != 0) die("remount", src);
    } else if (strcmp(op, "idmap") == 0 && i + 4 < sep) {
      int ro = strcmp(argv[i + 1], "ro") == 0;
      const char *src = argv[i + 2];
      int ns = idmap_userns(number(argv[i + 3], 10), number(argv[i + 4], 10), uid, gid);
      idmapped_bind(src, in_jail(src), ro, ns);
      close(ns);
      i += 4;
    } else if (strcmp(op, "dev") == 0 && i + 6 < sep) {
      const char *p = in_jail(argv[i + 1]);
      unsigned maj = (unsigned)number(argv[i + 2], 10), min = (unsigned)number(argv[i + 3], 10);
      mode_t mode = (mode_t)number(argv[i + 4], 8);
      if (mknod(p, S_IFCHR | mode, makedev(maj, min)) != 0) die("mknod", p);
      if (chown(p, (uid_t)number(argv[i + 5], 10), (gid_t)number(argv[i + 6], 10)) != 0) die("chown", p);
      if (chmod(p, mode) != 0) die("chmod", p);
      i += 6;
    } else if (strcmp(op, "cgroup") == 0 && i + 2 < sep) {
      write_file(argv[i + 1], argv[i + 2]);
      i += 2;
    } else if (strcmp(op, "nofile") == 0 && i + 1 < sep) {
      nofile.rlim_cur = nofile.rlim_max = number(argv[++i], 10);
    } else if (strcmp(op, "fsize") == 0 && i + 1 < sep) {
      fsize.rlim_cur = fsize.rlim_max = number(argv[++i], 10);
    } else {
      fprintf(stderr, "mm-jail: unknown or incomplete step \"%s\"\n", op);
      exit(126);
    }
  }

  if (chroot(root) != 0) die("chroot", root);
  if (chdir("/") != 0) die("chdir", "/");
  // The bounding set goes while there is still CAP_SETPCAP to drop it.
  for (int cap = 0; cap <= 63; cap++) {
    if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EINVAL) die("capbset drop", NULL);
  }
  if (setgroups(0, NULL) != 0) die("setgroups", NULL);
  if (setresgid((gid_t)gid, (gid_t)gid, (gid_t)gid) != 0) die("setresgid", NULL);
  if (setresuid((uid_t)uid, (uid_t)uid, (uid_t)uid) != 0) die("setresuid", NULL);
  // A uid change from 0 clears the permitted and effective sets; the inheritable and
  // ambient ones are cleared here.
  struct cap_header hdr = {CAP_VERSION_3, 0};
  struct cap_data data[2];
  memset(data, 0, sizeof data);
  if (syscall(SYS_capset, &hdr, data) != 0) die("capset", NULL);
  if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL) die("ambient", NULL);
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) die("no_new_privs", NULL);
  if (setrlimit(RLIMIT_NOFILE, &nofile) != 0) die("rlimit nofile", NULL);
  if (setrlimit(RLIMIT_FSIZE, &fsize) != 0) die("rlimit fsize", NULL);
  if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) die("pdeathsig", NULL);
  // The supervisor may have died between the fork and here: then do not start at all.
  if (getppid() == 1) usage("the supervisor is gone");
  execv(argv[sep + 1], argv + sep + 1);
  die("exec", argv[sep + 1]);
  return 126;
}
