/* Disks besides the root, inside the guest: one found by its virtio serial (the tools
 * disk, a volume), and what CONFIG's MOUNT records name: volumes (v4) and host
 * directories shared over virtio-fs or 9p (v5), mounted on directories made for them
 * before the workload starts and unmounted at power-off. The lookup and the directories
 * take a root so that tests can run them in a temporary directory; only PID 1 of a guest
 * mounts. */
#ifndef MM_DISK_H
#define MM_DISK_H

#include <stddef.h>

#include "protocol.h"

#define DISK_DEV_MAX 64                 /* "/dev/vdX" */
#define VOLUME_FS "ext4"
#define VIRTIOFS_FS "virtiofs"
#define P9_FS "9p"
/* 9p over virtio: the Linux dialect, 256 KiB messages, no caching in the guest (the
 * host's directory is the truth, as with a bind mount). */
#define P9_OPTIONS "trans=virtio,version=9p2000.L,msize=262144,cache=none"
#define MOUNT_POINT_MODE 0755

/* mount(2)'s arguments for one MOUNT record, but the target (the record's path). */
struct disk_mount_args {
	const char *source;             /* the block device, or the share's tag */
	const char *fstype;
	unsigned long flags;            /* MS_NOSUID | MS_NODEV, plus MS_RDONLY if asked */
	const char *data;               /* NULL: no options */
};

/* Finds the virtio disk whose root/sys/block/vd<x>/serial holds serial: 0 with its
 * device ("/dev/vd<x>", as seen inside the guest) in dev, or -1 if there is none. */
int disk_find(const char *root, const char *serial, char *dev, size_t devlen);

/* Makes the directory path (absolute, as inside the guest) and its missing parents
 * under root, mode MOUNT_POINT_MODE, following symlinks on the way: 0, or -1 with
 * "MOUNT: path: reason" in err if a component exists and is not a directory or cannot
 * be made. */
int disk_make_mount_point(const char *root, const char *path, char *err, size_t errlen);

/* What a MOUNT record of this kind mounts, for logs: "volume", "virtio-fs share",
 * "9p share". */
const char *disk_mount_what(enum mm_mount_kind kind);

/* The arguments that mount m: dev is the block disk found for it (disk_find), unused
 * for a share. */
void disk_mount_args(const struct mm_mount *m, const char *dev, struct disk_mount_args *out);

/* Mounts the MOUNT records' volumes and shares in the records' order: 0, or -1 with
 * "MOUNT: path: reason" in err at the first that fails. *mounted counts the ones
 * mounted, either way. */
int disk_mount_volumes(const struct mm_mounts *mounts, size_t *mounted, char *err,
		       size_t errlen);

/* At power-off, once every process has ended: unmounts the first `mounted` volumes and
 * shares, the last first, or remounts one read-only if it is busy. Failures are logged. */
void disk_unmount_volumes(const struct mm_mounts *mounts, size_t mounted);

#endif
