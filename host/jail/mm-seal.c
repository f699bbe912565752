// mm-seal: holds a fork's RAM capture as a sealed memfd for its clones (docs/adr/0008).
//
// Usage: mm-seal CAPTURE
// Copies CAPTURE (a sparse file in shared memory) into a memfd, keeping its holes, seals
// it against writes, shrinking and growing (F_SEAL_WRITE|SHRINK|GROW, then SEAL so the
// seals stay), prints "/proc/PID/fd/N" of it on stdout, and then holds it until its
// stdin closes. Each clone's supervisor opens that path and hands the descriptor to its
// VMM, which maps it copy-on-write (QEMU's mem-path=/proc/self/fd/N, share=off).
//
// Why: QEMU 7.2 opens a RAM file read-write even for a private mapping (`rom=on` came in
// 8.2), and punches holes in it when the guest's balloon reports free pages. A plain
// file would have to be writable by every clone's VMM, and one clone's free-page report
// (or an escaped VMM) would zero memory its siblings still map from the file. A sealed
// memfd refuses write(2), fallocate(2) and shared writable mappings to everyone, root
// included; private copy-on-write mappings still work. Node cannot make a memfd, hence
// this small C program.

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

#define CHUNK (1 << 20)
#define PAGE 4096

static void die(const char *step) {
  fprintf(stderr, "mm-seal: %s: %s\n", step, strerror(errno));
  exit(1);
}

// Whether a page holds only zero bytes (word by word: musl's memcmp goes byte by byte).
static int all_zero(const char *p, size_t n) {
  size_t i = 0;
  for (; i + sizeof(uint64_t) <= n; i += sizeof(uint64_t)) {
    uint64_t w;
    memcpy(&w, p + i, sizeof w);
    if (w) return 0;
  }
  for (; i < n; i++)
    if (p[i]) return 0;
  return 1;
}

static void write_all(int fd, const char *p, size_t n, off_t at) {
  while (n > 0) {
    ssize_t w = pwrite(fd, p, n, at);
    if (w < 0) {
      if (errno == EINTR) continue;
      die("writing the memfd");
    }
    p += w;
    n -= (size_t)w;
    at += w;
  }
}

// Copies [from, to) of src into dst, leaving pages that are all zero as holes: each run
// of pages with data is one write.
static void copy_range(int src, int dst, off_t from, off_t to, char *buf) {
  while (from < to) {
    size_t want = (size_t)(to - from) < CHUNK ? (size_t)(to - from) : CHUNK;
    ssize_t got = pread(src, buf, want, from);
    if (got < 0) {
      if (errno == EINTR) continue;
      die("reading the capture");
    }
    if (got == 0) return;
    ssize_t run = -1;  // start of the current run of pages with data
    for (ssize_t off = 0; off < got; off += PAGE) {
      size_t n = (size_t)(got - off) < PAGE ? (size_t)(got - off) : PAGE;
      if (all_zero(buf + off, n)) {
        if (run >= 0) write_all(dst, buf + run, (size_t)(off - run), from + run);
        run = -1;
      } else if (run < 0) {
        run = off;
      }
    }
    if (run >= 0) write_all(dst, buf + run, (size_t)(got - run), from + run);
    from += got;
  }
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: mm-seal CAPTURE\n");
    return 2;
  }
  // Ends with its parent (the fork), even if that is killed.
  if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) die("prctl");
  if (getppid() == 1) return 1;
  int src = open(argv[1], O_RDONLY | O_CLOEXEC);
  if (src < 0) die("opening the capture");
  struct stat st;
  if (fstat(src, &st) != 0) die("stat");
  int fd = memfd_create("mm-fork-ram", MFD_ALLOW_SEALING | MFD_CLOEXEC);
  if (fd < 0) die("memfd_create");
  if (ftruncate(fd, st.st_size) != 0) die("sizing the memfd");
  char *buf = malloc(CHUNK);
  if (!buf) die("malloc");
  for (off_t data = 0; data < st.st_size;) {
    data = lseek(src, data, SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) break;  // no data after this: the rest is a hole
      die("seeking data");
    }
    off_t hole = lseek(src, data, SEEK_HOLE);
    if (hole < 0) die("seeking a hole");
    copy_range(src, fd, data, hole, buf);
    data = hole;
  }
  free(buf);
  close(src);
  if (fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) die("sealing");
  printf("/proc/%d/fd/%d\n", (int)getpid(), fd);
  if (fflush(stdout) != 0) die("writing the path");
  for (;;) {
    char c;
    ssize_t n = read(0, &c, 1);
    if (n == 0 || (n < 0 && errno != EINTR)) return 0;
  }
}
