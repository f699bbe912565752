/* Unit tests for disk.c without disks: finding a disk by serial in a fake sysfs, making
 * mount points (parents, symlinks followed, files in the way) under a temporary root,
 * and the mount(2) arguments of each MOUNT kind (v5). Mounting itself needs a guest.
 * Built and run by `make check`. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "disk.h"

#define ROOT_CAP 256
#define PATH_CAP 512

static int failures;
static char err[MM_MAX_ERROR + 1];
static char root[ROOT_CAP];

#define CHECK(cond) do { \
	if (!(cond)) { failures++; fprintf(stderr, "%s:%d: %s (err: %s)\n", __FILE__, __LINE__, #cond, err); } \
} while (0)

static const char *at(const char *rel)
{
	static char path[4][PATH_CAP];
	static int next;
	char *p = path[next++ % 4];

	snprintf(p, PATH_CAP, "%s/%s", root, rel);
	return p;
}

static void put(const char *rel, const char *content)
{
	int fd = open(at(rel), O_WRONLY | O_CREAT | O_TRUNC, 0644);

	if (fd < 0 || write(fd, content, strlen(content)) < 0)
		failures++;
	if (fd >= 0)
		close(fd);
}

static void dir(const char *rel)
{
	if (mkdir(at(rel), 0755) != 0)
		failures++;
}

/* A directory of mode 0755 (the mount points' mode). */
static bool is_dir_0755(const char *rel)
{
	struct stat st;

	return lstat(at(rel), &st) == 0 && S_ISDIR(st.st_mode) && (st.st_mode & 07777) == 0755;
}

static bool exists(const char *rel)
{
	struct stat st;

	return lstat(at(rel), &st) == 0;
}

static void fresh_root(void)
{
	char cmd[ROOT_CAP + 16];

	if (root[0] != '\0') {
		snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
		if (system(cmd) != 0)
			failures++;
	}
	snprintf(root, sizeof root, "%s/mm-disk-test-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	if (mkdtemp(root) == NULL) {
		perror("mkdtemp");
		exit(1);
	}
}

static void test_find(void)
{
	char dev[DISK_DEV_MAX];

	fresh_root();
	dev[0] = '\0';
	CHECK(disk_find(root, "vol1", dev, sizeof dev) != 0);   /* no sys/block at all */
	dir("sys");
	dir("sys/block");
	dir("sys/block/vda");
	put("sys/block/vda/serial", "mm-tools\n");
	dir("sys/block/vdb");
	put("sys/block/vdb/serial", "vol1\n");
	dir("sys/block/vdc");                        /* no serial */
	dir("sys/block/vdd");
	put("sys/block/vdd/serial", "vol10");       /* no newline */
	dir("sys/block/vde");
	put("sys/block/vde/serial", "");
	dir("sys/block/sda");                        /* not a virtio disk */
	put("sys/block/sda/serial", "vol2\n");

	CHECK(disk_find(root, "vol1", dev, sizeof dev) == 0 && strcmp(dev, "/dev/vdb") == 0);
	CHECK(disk_find(root, "vol10", dev, sizeof dev) == 0 && strcmp(dev, "/dev/vdd") == 0);
	CHECK(disk_find(root, "mm-tools", dev, sizeof dev) == 0 && strcmp(dev, "/dev/vda") == 0);
	CHECK(disk_find(root, "vol", dev, sizeof dev) != 0);     /* whole serials only */
	CHECK(disk_find(root, "VOL1", dev, sizeof dev) != 0);
	CHECK(disk_find(root, "vol2", dev, sizeof dev) != 0);
}

static void test_mount_point(void)
{
	static char long_name[300];

	/* Missing parents are made, mode 0755; doing it again changes nothing. */
	fresh_root();
	CHECK(disk_make_mount_point(root, "/var/lib/data", err, sizeof err) == 0);
	CHECK(is_dir_0755("var") && is_dir_0755("var/lib") && is_dir_0755("var/lib/data"));
	CHECK(disk_make_mount_point(root, "/var/lib/data", err, sizeof err) == 0);
	CHECK(disk_make_mount_point(root, "//srv//./x/", err, sizeof err) == 0);
	CHECK(is_dir_0755("srv") && is_dir_0755("srv/x"));

	/* An existing directory keeps its mode. */
	CHECK(mkdir(at("open"), 0777) == 0 && chmod(at("open"), 01777) == 0);
	CHECK(disk_make_mount_point(root, "/open/v", err, sizeof err) == 0 && is_dir_0755("open/v"));
	{
		struct stat st;

		CHECK(stat(at("open"), &st) == 0 && (st.st_mode & 07777) == 01777);
	}

	/* A symlink the image has on the way is followed. */
	dir("real");
	CHECK(symlink("real", at("link")) == 0);
	CHECK(symlink("../real", at("srv/up")) == 0);
	CHECK(disk_make_mount_point(root, "/link/sub", err, sizeof err) == 0 && is_dir_0755("real/sub"));
	CHECK(disk_make_mount_point(root, "/srv/up/two/three", err, sizeof err) == 0 &&
	      is_dir_0755("real/two/three"));
	CHECK(disk_make_mount_point(root, "/link", err, sizeof err) == 0);   /* a link to a directory */

	/* A file in the way, or at the end, is a failure, and nothing is made beyond it. */
	put("file", "x\n");
	CHECK(disk_make_mount_point(root, "/file/x", err, sizeof err) != 0);
	CHECK(strcmp(err, "MOUNT: /file/x: /file is not a directory") == 0);
	CHECK(disk_make_mount_point(root, "/file", err, sizeof err) != 0);
	CHECK(strcmp(err, "MOUNT: /file: /file is not a directory") == 0);
	put("var/lib/data/f", "");
	CHECK(disk_make_mount_point(root, "/var/lib/data/f/g/h", err, sizeof err) != 0);
	CHECK(strcmp(err, "MOUNT: /var/lib/data/f/g/h: /var/lib/data/f is not a directory") == 0);
	CHECK(symlink("file", at("filelink")) == 0);
	CHECK(disk_make_mount_point(root, "/filelink/x", err, sizeof err) != 0);
	CHECK(strcmp(err, "MOUNT: /filelink/x: /filelink is not a directory") == 0);

	/* A dangling symlink, and a name mkdir refuses. */
	CHECK(symlink("nowhere", at("dangling")) == 0);
	CHECK(disk_make_mount_point(root, "/dangling/x", err, sizeof err) != 0);
	CHECK(strcmp(err, "MOUNT: /dangling/x: /dangling: No such file or directory") == 0);
	CHECK(!exists("nowhere"));
	memset(long_name, 'n', sizeof long_name - 1);
	long_name[0] = '/';
	CHECK(disk_make_mount_point(root, long_name, err, sizeof err) != 0);
	CHECK(strncmp(err, "MOUNT: /nnn", 11) == 0 && strstr(err, ": mkdir /nnn") != NULL &&
	      strstr(err, strerror(ENAMETOOLONG)) != NULL);

	/* No root: a failure, not a crash. */
	CHECK(disk_make_mount_point(at("no-such-root"), "/a", err, sizeof err) != 0);
	CHECK(strncmp(err, "MOUNT: /a: ", 11) == 0);
}

/* mount(2)'s arguments for a MOUNT record: a volume is its ext4 device, a share its tag
 * with the filesystem's type (and, for 9p, its options); nosuid and nodev always. */
static void test_mount_args(void)
{
	static const struct {
		struct mm_mount m;
		const char *source, *fstype, *data;
		unsigned long flags;
		const char *what;
	} cases[] = {
		{ { false, MM_MOUNT_BLOCK, "vol", "/data" }, "/dev/vdb", "ext4", NULL,
		  MS_NOSUID | MS_NODEV, "volume" },
		{ { true, MM_MOUNT_BLOCK, "vol", "/data" }, "/dev/vdb", "ext4", NULL,
		  MS_NOSUID | MS_NODEV | MS_RDONLY, "volume" },
		{ { false, MM_MOUNT_VIRTIOFS, "src", "/src" }, "src", "virtiofs", NULL,
		  MS_NOSUID | MS_NODEV, "virtio-fs share" },
		{ { true, MM_MOUNT_VIRTIOFS, "conf", "/etc/app" }, "conf", "virtiofs", NULL,
		  MS_NOSUID | MS_NODEV | MS_RDONLY, "virtio-fs share" },
		{ { false, MM_MOUNT_9P, "share", "/mnt" }, "share", "9p",
		  "trans=virtio,version=9p2000.L,msize=262144,cache=none", MS_NOSUID | MS_NODEV,
		  "9p share" },
		{ { true, MM_MOUNT_9P, "ro", "/ro" }, "ro", "9p",
		  "trans=virtio,version=9p2000.L,msize=262144,cache=none",
		  MS_NOSUID | MS_NODEV | MS_RDONLY, "9p share" },
	};

	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		struct disk_mount_args a;
		bool data_ok;

		disk_mount_args(&cases[i].m, "/dev/vdb", &a);
		data_ok = cases[i].data == NULL ? a.data == NULL :
			  a.data != NULL && strcmp(a.data, cases[i].data) == 0;
		CHECK(strcmp(a.source, cases[i].source) == 0 && strcmp(a.fstype, cases[i].fstype) == 0 &&
		      data_ok && a.flags == cases[i].flags);
		CHECK(strcmp(disk_mount_what(cases[i].m.kind), cases[i].what) == 0);
	}
}

int main(void)
{
	umask(022);   /* as PID 1 sets it */
	test_find();
	test_mount_point();
	test_mount_args();
	fresh_root();   /* removes the last one */
	rmdir(root);
	if (failures != 0) {
		fprintf(stderr, "disk-test: %d failure(s)\n", failures);
		return 1;
	}
	printf("disk-test: ok\n");
	return 0;
}
