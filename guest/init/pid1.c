/* PID 1 duties of mm-init inside the guest: the mounts a container expects
 * (as Docker provides them), console stdio, loopback up, hostname, power off. */
#include "pid1.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "disk.h"
#include "log.h"
#include "protocol.h"

#define CMDLINE_MAX 4096
#define CONSOLE_PATH "/dev/console"

/* Creates the mount point if missing and mounts; a failure is logged with mm.debug=1. */
static int mount_at(const char *source, const char *target, const char *type,
		    unsigned long flags, const char *data)
{
	if (mkdir(target, 0755) != 0 && errno != EEXIST)
		log_debug("mkdir %s: %s", target, strerror(errno));
	if (mount(source, target, type, flags, data) != 0) {
		log_debug("mount %s on %s: %s", type, target, strerror(errno));
		return -1;
	}
	log_debug("mounted %s on %s", type, target);
	return 0;
}

/* True if something is already mounted on path (it sits on another device than /). */
static bool is_mount_point(const char *path)
{
	struct stat root, st;

	return stat("/", &root) == 0 && stat(path, &st) == 0 && st.st_dev != root.st_dev;
}

static void console_as_stdio(void)
{
	int fd = open(CONSOLE_PATH, O_RDWR | O_NOCTTY);

	if (fd < 0)
		return;   /* nowhere to say so */
	for (int i = STDIN_FILENO; i <= STDERR_FILENO; i++)
		if (fd != i)
			dup2(fd, i);
	if (fd > STDERR_FILENO)
		close(fd);
}

void pid1_setup_early(void)
{
	int dev_err = 0;

	umask(022);
	if (!is_mount_point("/dev") &&
	    mount_at("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755") != 0)
		dev_err = errno;
	console_as_stdio();
	if (dev_err != 0)
		log_error("mount devtmpfs on /dev: %s", strerror(dev_err));
	if (mount_at("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0)
		log_error("mount proc on /proc: %s", strerror(errno));
}

/* /tmp keeps the image's content when it has any (as Docker does). */
static bool dir_empty_or_absent(const char *path)
{
	DIR *dir = opendir(path);
	struct dirent *de;
	bool empty = true;

	if (dir == NULL)
		return errno == ENOENT;
	while ((de = readdir(dir)) != NULL) {
		if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0) {
			empty = false;
			break;
		}
	}
	closedir(dir);
	return empty;
}

static void link_if_missing(const char *target, const char *path)
{
	if (symlink(target, path) != 0 && errno != EEXIST)
		log_debug("symlink %s -> %s: %s", path, target, strerror(errno));
}

static void loopback_up(void)
{
	struct ifreq ifr;
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);

	if (fd < 0) {
		log_debug("lo: socket: %s", strerror(errno));
		return;
	}
	memset(&ifr, 0, sizeof ifr);
	memcpy(ifr.ifr_name, "lo", sizeof "lo");
	if (ioctl(fd, SIOCGIFFLAGS, &ifr) != 0) {
		log_debug("lo: SIOCGIFFLAGS: %s", strerror(errno));
	} else {
		ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
		if (ioctl(fd, SIOCSIFFLAGS, &ifr) != 0)
			log_debug("lo: SIOCSIFFLAGS: %s", strerror(errno));
		else
			log_debug("lo: up");
	}
	close(fd);
}

/* mm's guest tools (busybox, the SSH server) come on a shared read-only disk whose
 * virtio serial is TOOLS_SERIAL; it is mounted at TOOLS_DIR when present. */
#define TOOLS_SERIAL "mm-tools"
#define TOOLS_DIR "/.mm/tools"

static void mount_tools(void)
{
	char dev[DISK_DEV_MAX];

	if (disk_find("/", TOOLS_SERIAL, dev, sizeof dev) != 0)
		return;
	if (mkdir(TOOLS_DIR, 0755) != 0 && errno != EEXIST)
		log_debug("%s: %s", TOOLS_DIR, strerror(errno));
	if (mount(dev, TOOLS_DIR, "ext4", MS_RDONLY | MS_NODEV | MS_NOSUID, NULL) != 0)
		log_error("mounting the tools disk %s: %s", dev, strerror(errno));
	else
		log_debug("tools disk %s on %s", dev, TOOLS_DIR);
}

void pid1_setup(void)
{
	const unsigned long nosuid_nodev = MS_NOSUID | MS_NODEV;

	mount_at("sysfs", "/sys", "sysfs", nosuid_nodev | MS_NOEXEC, NULL);
	mount_at("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
		 "newinstance,ptmxmode=0666,mode=0620,gid=5");
	link_if_missing("pts/ptmx", "/dev/ptmx");
	link_if_missing("/proc/self/fd", "/dev/fd");
	link_if_missing("/proc/self/fd/0", "/dev/stdin");
	link_if_missing("/proc/self/fd/1", "/dev/stdout");
	link_if_missing("/proc/self/fd/2", "/dev/stderr");
	mount_at("shm", "/dev/shm", "tmpfs", nosuid_nodev, "mode=1777");
	mount_at("tmpfs", "/run", "tmpfs", nosuid_nodev, "mode=0755");
	if (dir_empty_or_absent("/tmp"))
		mount_at("tmpfs", "/tmp", "tmpfs", nosuid_nodev, "mode=1777");
	else
		log_debug("/tmp has content: not mounting tmpfs over it");
	mount_at("cgroup2", "/sys/fs/cgroup", "cgroup2", nosuid_nodev | MS_NOEXEC, NULL);
	mount_tools();
	loopback_up();
}

/* From linux/ext4.h, which is not a UAPI header in every kernel-headers package. */
#ifndef EXT4_IOC_RESIZE_FS
#define EXT4_IOC_RESIZE_FS _IOW('f', 16, uint64_t)
#endif
#define ROOT_DEVICE "/dev/vda"

void pid1_grow_root(void)
{
	/* musl's ioctl() takes an int request; these request numbers exceed INT_MAX. */
	const unsigned long get_size = BLKGETSIZE64, resize = EXT4_IOC_RESIZE_FS;
	uint64_t bytes = 0, blocks;
	struct statvfs sv;
	int dev, root;

	dev = open(ROOT_DEVICE, O_RDONLY | O_CLOEXEC);
	if (dev < 0 || ioctl(dev, (int)get_size, &bytes) != 0 || statvfs("/", &sv) != 0 || sv.f_frsize == 0) {
		log_error("growfs: cannot size %s: %s", ROOT_DEVICE, strerror(errno));
		if (dev >= 0)
			close(dev);
		return;
	}
	close(dev);
	blocks = bytes / sv.f_frsize;
	if (blocks <= (uint64_t)sv.f_blocks) {
		log_debug("growfs: root already fills %s", ROOT_DEVICE);
		return;
	}
	root = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (root < 0 || ioctl(root, (int)resize, &blocks) != 0)
		log_error("growfs: resize to %llu blocks: %s", (unsigned long long)blocks, strerror(errno));
	else
		log_debug("growfs: root grown to %llu blocks", (unsigned long long)blocks);
	if (root >= 0)
		close(root);
}

void pid1_set_hostname(const char *name)
{
	if (sethostname(name, strlen(name)) != 0)
		log_error("sethostname %s: %s", name, strerror(errno));
	else
		log_debug("hostname %s", name);
}

void pid1_set_clock(uint64_t ns)
{
	struct timespec ts = { (time_t)(ns / 1000000000u), (long)(ns % 1000000000u) };

	if (clock_settime(CLOCK_REALTIME, &ts) != 0)
		log_error("clock_settime %llu ns: %s", (unsigned long long)ns, strerror(errno));
	else
		log_debug("clock set to %llu.%09ld", (unsigned long long)ts.tv_sec, ts.tv_nsec);
}

/* From linux/random.h, which musl's headers do not include. */
#ifndef RNDADDENTROPY
#define RNDADDENTROPY _IOW('R', 0x03, int[2])
#endif
#ifndef RNDRESEEDCRNG
#define RNDRESEEDCRNG _IO('R', 0x07)
#endif
#define RANDOM_DEVICE "/dev/urandom"
#define BITS_PER_BYTE 8

/* RNDADDENTROPY's argument: struct rand_pool_info with room for the largest seed. */
struct entropy_request {
	int entropy_count;   /* bits credited */
	int buf_size;        /* bytes in buf */
	uint32_t buf[MM_MAX_SEED / sizeof(uint32_t)];
};

void pid1_add_entropy(const uint8_t *seed, size_t len)
{
	static struct entropy_request req;
	int fd;

	if (len > sizeof req.buf)
		len = sizeof req.buf;   /* cannot happen: SEED is validated */
	req.entropy_count = (int)(len * BITS_PER_BYTE);
	req.buf_size = (int)len;
	memcpy(req.buf, seed, len);
	fd = open(RANDOM_DEVICE, O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		log_error(RANDOM_DEVICE ": %s", strerror(errno));
		return;
	}
	if (ioctl(fd, RNDADDENTROPY, &req) != 0)
		log_error("RNDADDENTROPY: %s", strerror(errno));
	else if (ioctl(fd, RNDRESEEDCRNG) != 0 && errno != EINVAL && errno != ENOTTY)
		log_error("RNDRESEEDCRNG: %s", strerror(errno));   /* before 4.17: no such ioctl */
	else
		log_debug("added %zu bytes of entropy", len);
	close(fd);
	explicit_bzero(&req, sizeof req);
}

void boot_options_parse(const char *cmdline, struct boot_options *opts)
{
	const char *p = cmdline;

	opts->probe = false;
	opts->debug = false;
	opts->growfs = false;
	while (*p != '\0') {
		size_t n;

		while (*p == ' ' || *p == '\n' || *p == '\t')
			p++;
		n = strcspn(p, " \n\t");
		if (n == sizeof "mm.probe=1" - 1 && memcmp(p, "mm.probe=1", n) == 0)
			opts->probe = true;
		if (n == sizeof "mm.debug=1" - 1 && memcmp(p, "mm.debug=1", n) == 0)
			opts->debug = true;
		if (n == sizeof "mm.growfs=1" - 1 && memcmp(p, "mm.growfs=1", n) == 0)
			opts->growfs = true;
		p += n;
	}
}

void boot_options_read(bool host_mode, struct boot_options *opts)
{
	char cmdline[CMDLINE_MAX];
	ssize_t n = 0;

	cmdline[0] = '\0';
	if (host_mode) {
		const char *env = getenv("MM_INIT_CMDLINE");

		if (env != NULL) {
			n = (ssize_t)strnlen(env, sizeof cmdline - 1);
			memcpy(cmdline, env, (size_t)n);
		}
	} else {
		int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);

		if (fd >= 0) {
			do
				n = read(fd, cmdline, sizeof cmdline - 1);
			while (n < 0 && errno == EINTR);
			close(fd);
		}
		if (n < 0)
			n = 0;
	}
	cmdline[n] = '\0';
	boot_options_parse(cmdline, opts);
}

void pid1_power_off(void)
{
	sync();
	reboot(RB_POWER_OFF);
	log_error("power off: %s; resetting instead", strerror(errno));
	reboot(RB_AUTOBOOT);
	log_error("reset: %s; halting here", strerror(errno));
	for (;;)
		pause();   /* PID 1 must never exit: the kernel would panic */
}
