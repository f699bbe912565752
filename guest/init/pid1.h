/* What only PID 1 of a guest does: console, mounts, loopback, hostname, clock,
 * entropy, power off. None of it runs in host-test mode. */
#ifndef MM_PID1_H
#define MM_PID1_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct boot_options {
	bool probe;   /* mm.probe=1 */
	bool debug;   /* mm.debug=1 */
	bool growfs;  /* mm.growfs=1: grow the root ext4 to fill its disk */
};

/* devtmpfs on /dev, /dev/console as stdio, proc on /proc: enough to log and read
 * the kernel command line. */
void pid1_setup_early(void);
/* The remaining mounts and the loopback interface; failures are logged with mm.debug=1. */
void pid1_setup(void);
void pid1_set_hostname(const char *name);
/* Sets the wall clock (CLOCK_REALTIME) to ns since the Unix epoch. A failure is
 * logged, never fatal. */
void pid1_set_clock(uint64_t ns);
/* Mixes seed into the kernel's entropy pool, credited in full, and reseeds the RNG so
 * that no two restores of one snapshot share random numbers. A failure is logged,
 * never fatal. */
void pid1_add_entropy(const uint8_t *seed, size_t len);
/* Grows the root ext4 online to the size of its block device (mm run --disk-size). */
void pid1_grow_root(void);
/* Pure: reads mm.* options from a kernel command line. */
void boot_options_parse(const char *cmdline, struct boot_options *opts);
/* Reads /proc/cmdline (PID 1) or $MM_INIT_CMDLINE (host-test mode). */
void boot_options_read(bool host_mode, struct boot_options *opts);
/* sync, then power off; falls back to a reset (QEMU runs with -no-reboot). */
__attribute__((noreturn)) void pid1_power_off(void);

#endif
