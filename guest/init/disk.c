/* Disks besides the root: virtio disks found by serial through sysfs, and what MOUNT
 * records name: volumes (CONFIG v4) and shared host directories (v5: virtio-fs, 9p). A
 * mount point is made inside the guest's own root filesystem (or in a volume or share
 * mounted before it): a symlink the image has on the way is followed, as the image is
 * the guest's own world and nothing else of the host's is there. */
#include "disk.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"

#define BLOCK_CLASS "sys/block"         /* under root */
#define SERIAL_READ_MAX 32              /* a virtio-blk serial is at most 20 bytes, then '\n' */
#define DISK_NAME_MAX 16

__attribute__((format(printf, 4, 5)))
static int mount_fail(char *err, size_t errlen, const char *path, const char *fmt, ...)
{
	va_list ap;
	int n = snprintf(err, errlen, "MOUNT: %s: ", path);

	va_start(ap, fmt);
	if (n > 0 && (size_t)n < errlen)
		vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
	va_end(ap);
	return -1;
}

/* True if the disk `name` in the block class directory has this serial. */
static bool has_serial(int block_fd, const char *name, const char *serial)
{
	char path[DISK_NAME_MAX + sizeof "/serial"], got[SERIAL_READ_MAX + 1];
	ssize_t n;
	int fd;

	snprintf(path, sizeof path, "%s/serial", name);
	fd = openat(block_fd, path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	n = read(fd, got, SERIAL_READ_MAX);
	close(fd);
	if (n <= 0)
		return false;
	got[n] = '\0';
	got[strcspn(got, "\n")] = '\0';
	return strcmp(got, serial) == 0;
}

int disk_find(const char *root, const char *serial, char *dev, size_t devlen)
{
	int root_fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC), block_fd;
	DIR *dir;
	struct dirent *de;
	int r = -1;

	if (root_fd < 0)
		return -1;
	block_fd = openat(root_fd, BLOCK_CLASS, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	close(root_fd);
	if (block_fd < 0 || (dir = fdopendir(block_fd)) == NULL) {
		if (block_fd >= 0)
			close(block_fd);
		return -1;
	}
	while ((de = readdir(dir)) != NULL) {
		if (strncmp(de->d_name, "vd", 2) == 0 && strlen(de->d_name) <= DISK_NAME_MAX &&
		    has_serial(dirfd(dir), de->d_name, serial)) {
			snprintf(dev, devlen, "/dev/%s", de->d_name);
			r = 0;
			break;
		}
	}
	closedir(dir);
	return r;
}

/* One directory on a mount point's path, relative to root_fd: made if missing,
 * otherwise it must be a directory or a symlink to one. */
static int make_dir(int root_fd, const char *dir, const char *path, char *err, size_t errlen)
{
	struct stat st;

	if (mkdirat(root_fd, dir, MOUNT_POINT_MODE) == 0) {
		log_debug("made /%s", dir);
		return 0;
	}
	if (errno != EEXIST)
		return mount_fail(err, errlen, path, "mkdir /%s: %s", dir, strerror(errno));
	if (fstatat(root_fd, dir, &st, 0) != 0)
		return mount_fail(err, errlen, path, "/%s: %s", dir, strerror(errno));
	if (!S_ISDIR(st.st_mode))
		return mount_fail(err, errlen, path, "/%s is not a directory", dir);
	return 0;
}

int disk_make_mount_point(const char *root, const char *path, char *err, size_t errlen)
{
	char dir[MM_MAX_STRING + 1];
	const char *rel = path + strspn(path, "/");
	int root_fd, r = 0;

	if (strlen(rel) >= sizeof dir)   /* cannot happen: MOUNT paths are validated */
		return mount_fail(err, errlen, path, "%s", strerror(ENAMETOOLONG));
	memcpy(dir, rel, strlen(rel) + 1);
	root_fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (root_fd < 0)
		return mount_fail(err, errlen, path, "%s: %s", root, strerror(errno));
	/* Each prefix of the path in turn, cut after one more component. */
	for (char *p = dir; r == 0;) {
		char c;

		p += strspn(p, "/");
		if (*p == '\0')
			break;
		p += strcspn(p, "/");
		c = *p;
		*p = '\0';
		r = make_dir(root_fd, dir, path, err, errlen);
		*p = c;
	}
	close(root_fd);
	return r;
}

const char *disk_mount_what(enum mm_mount_kind kind)
{
	switch (kind) {
	case MM_MOUNT_VIRTIOFS: return "virtio-fs share";
	case MM_MOUNT_9P: return "9p share";
	default: return "volume";
	}
}

void disk_mount_args(const struct mm_mount *m, const char *dev, struct disk_mount_args *out)
{
	out->flags = MS_NOSUID | MS_NODEV | (m->read_only ? MS_RDONLY : 0);
	out->data = NULL;
	switch (m->kind) {
	case MM_MOUNT_VIRTIOFS:
		out->source = m->name;
		out->fstype = VIRTIOFS_FS;
		break;
	case MM_MOUNT_9P:
		out->source = m->name;
		out->fstype = P9_FS;
		out->data = P9_OPTIONS;
		break;
	default:
		out->source = dev;
		out->fstype = VOLUME_FS;
		break;
	}
}

/* One MOUNT record: its disk found (a volume), its mount point made, mounted. */
static int mount_one(const struct mm_mount *m, char *err, size_t errlen)
{
	char dev[DISK_DEV_MAX] = "";
	struct disk_mount_args a;

	if (m->kind == MM_MOUNT_BLOCK && disk_find("/", m->name, dev, sizeof dev) != 0)
		return mount_fail(err, errlen, m->path, "no disk with serial %s", m->name);
	if (disk_make_mount_point("/", m->path, err, errlen) != 0)
		return -1;
	disk_mount_args(m, dev, &a);
	if (mount(a.source, m->path, a.fstype, a.flags, a.data) != 0)
		return mount_fail(err, errlen, m->path, "mount %s (%s): %s", a.source, a.fstype,
				  strerror(errno));
	log_debug("%s %s on %s: %s %s%s", disk_mount_what(m->kind), m->name, m->path, a.fstype,
		  a.source, m->read_only ? ", read-only" : "");
	return 0;
}

int disk_mount_volumes(const struct mm_mounts *mounts, size_t *mounted, char *err,
		       size_t errlen)
{
	for (*mounted = 0; *mounted < mounts->count; (*mounted)++)
		if (mount_one(&mounts->list[*mounted], err, errlen) != 0)
			return -1;
	return 0;
}

void disk_unmount_volumes(const struct mm_mounts *mounts, size_t mounted)
{
	while (mounted > 0) {
		const char *path = mounts->list[--mounted].path;

		if (umount2(path, 0) == 0)
			log_debug("unmounted %s", path);
		else if (mount(NULL, path, NULL, MS_REMOUNT | MS_RDONLY, NULL) == 0)
			log_debug("%s busy: remounted read-only", path);
		else
			log_error("unmounting %s: %s", path, strerror(errno));
	}
}
