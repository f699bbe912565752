/* Disks besides the root, inside the guest: one found by its virtio serial (the tools
 * disk, a volume) and the volumes of CONFIG v4's MOUNT records, mounted on directories
 * made for them before the workload starts and unmounted at power-off. The lookup and
 * the directories take a root so that tests can run them in a temporary directory;
 * only PID 1 of a guest mounts. */
#ifndef MM_DISK_H
#define MM_DISK_H

#include <stddef.h>

#include "protocol.h"

#define DISK_DEV_MAX 64                 /* "/dev/vdX" */
#define VOLUME_FS "ext4"
#define MOUNT_POINT_MODE 0755

/* Finds the virtio disk whose root/sys/block/vd<x>/serial holds serial: 0 with its
 * device ("/dev/vd<x>", as seen inside the guest) in dev, or -1 if there is none. */
int disk_find(const char *root, const char *serial, char *dev, size_t devlen);

/* Makes the directory path (absolute, as inside the guest) and its missing parents
 * under root, mode MOUNT_POINT_MODE, following symlinks on the way: 0, or -1 with
 * "MOUNT: path: reason" in err if a component exists and is not a directory or cannot
 * be made. */
int disk_make_mount_point(const char *root, const char *path, char *err, size_t errlen);

/* Mounts the volumes in their records' order (ext4, nosuid, nodev, read-only if asked):
 * 0, or -1 with "MOUNT: path: reason" in err at the first that fails. *mounted counts
 * the volumes mounted, either way. */
int disk_mount_volumes(const struct mm_mounts *mounts, size_t *mounted, char *err,
		       size_t errlen);

/* At power-off, once every process has ended: unmounts the first `mounted` volumes,
 * the last first, or remounts one read-only if it is busy. Failures are logged. */
void disk_unmount_volumes(const struct mm_mounts *mounts, size_t mounted);

#endif
