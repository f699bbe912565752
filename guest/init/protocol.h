/* The host<->guest channel protocol (docs/PROTOCOL.md): frame, record and session
 * limits, a bounded frame receiver and the CONFIG, EXEC and IDENTITY parsers.
 * Pure: no I/O. */
#ifndef MM_PROTOCOL_H
#define MM_PROTOCOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MM_PROTOCOL_MIN 1                        /* offered in HELLO */
#define MM_PROTOCOL_MAX 5
#define MM_AGENT_NAME "mm-init/0.5"
#define MM_MAX_AGENT_NAME 64

#define MM_LEN_FIELD 4                          /* the u32 `len` */
#define MM_LEN_MIN 5                            /* type + stream */
#define MM_FRAME_HEADER (MM_LEN_FIELD + MM_LEN_MIN)
#define MM_MAX_PAYLOAD 65536
#define MM_LEN_MAX (MM_LEN_MIN + MM_MAX_PAYLOAD)
#define MM_FRAME_MAX (MM_LEN_FIELD + MM_LEN_MAX)

#define MM_MAX_ARGS 256
#define MM_MAX_ENV 256
#define MM_MAX_STRING 4096
#define MM_MAX_HOSTNAME 64
#define MM_MAX_ERROR 1024
#define MM_CONFIG_RECORD_HEADER 3               /* u8 tag + u16 length */

/* Version 2 */
#define MM_MAX_SESSIONS 64                      /* exec sessions alive at once */
#define MM_INITIAL_WINDOW (256 * 1024)          /* credit per session and direction */
#define MM_MAX_DNS 3
#define MM_MAX_HOSTS 16
#define MM_MAX_HOST_NAME 253                    /* one name in a HOSTS line */
#define MM_IPV6_TEXT_MAX 46                     /* INET6_ADDRSTRLEN */
#define MM_DRAIN_AFTER_EXIT_MS 500              /* output still read after a process exits */

/* Version 3 */
#define MM_MAC_LEN 6                            /* bytes of an Ethernet address */
#define MM_MAC_TEXT_LEN 17                      /* "aa:bb:cc:dd:ee:ff" */
#define MM_CLOCK_LEN 8                          /* CLOCK: u64 nanoseconds */
#define MM_MIN_SEED 16                          /* SEED: bytes of entropy */
#define MM_MAX_SEED 512

/* Version 4 */
#define MM_MAX_MOUNTS 16                        /* MOUNT records in one CONFIG */
#define MM_MAX_SERIAL 20                        /* a virtio-blk serial (VIRTIO_BLK_ID_BYTES) */
#define MM_MOUNT_READ_ONLY 0x1u                 /* MOUNT flags: bit 0 */

/* Version 5 */
#define MM_MOUNT_KIND_MASK 0x6u                 /* MOUNT flags: bits 1-2, the kind */
#define MM_MOUNT_KIND_SHIFT 1
#define MM_MAX_MOUNT_TAG MM_MAX_SERIAL          /* a share's tag: as long as a serial */

#define MM_STREAM_CONTROL 0

enum mm_frame_type {
	MM_HELLO = 0x01,
	MM_CONFIG = 0x02,
	MM_READY = 0x03,
	MM_STDOUT = 0x04,
	MM_STDERR = 0x05,
	MM_EXIT = 0x06,
	MM_STDIN = 0x07,
	MM_SIGNAL = 0x08,
	MM_POWEROFF = 0x09,
	MM_ERROR = 0x0A,
	MM_EXEC = 0x0B,       /* v2 */
	MM_RESIZE = 0x0C,
	MM_WINDOW = 0x0D,
	MM_QUIESCE = 0x0E,    /* v3 */
	MM_QUIESCED = 0x0F,
	MM_RESUME = 0x10,
	MM_IDENTITY = 0x11,
	MM_IDENTITY_RESULT = 0x12,
};

enum mm_config_tag {
	MM_TAG_ARG = 1,
	MM_TAG_ENV = 2,
	MM_TAG_CWD = 3,
	MM_TAG_USER = 4,
	MM_TAG_HOSTNAME = 5,
	MM_TAG_FLAGS = 6,
	MM_TAG_TTY = 7,          /* v2, EXEC only */
	MM_TAG_STDIN = 8,
	MM_TAG_NET_ADDR = 9,     /* v2, CONFIG only */
	MM_TAG_NET_GATEWAY = 10,
	MM_TAG_DNS = 11,
	MM_TAG_HOSTS = 12,
	MM_TAG_NET_MAC = 13,     /* v3, CONFIG and IDENTITY */
	MM_TAG_CLOCK = 14,
	MM_TAG_SEED = 15,
	MM_TAG_MOUNT = 16,       /* v4 (kinds: v5), CONFIG only */
};

/* What a parser reports; the ERROR code the guest answers with follows from it. */
enum mm_parse_result {
	MM_PARSE_OK = 0,
	MM_PARSE_CONFIG = -1,   /* ERROR "CONFIG: ..." */
	MM_PARSE_NET = -2,      /* ERROR "NET: ..." */
};

#define MM_FLAG_STAY_UP 0x1u

struct mm_frame {
	uint8_t type;
	uint32_t stream;
	const uint8_t *payload;   /* valid until the next mm_rx_* call */
	size_t payload_len;
};

/* Bytes read from the channel; holds at most one whole frame of the largest size. */
struct mm_rx {
	uint8_t buf[MM_FRAME_MAX];
	size_t used;      /* bytes in buf */
	size_t consumed;  /* bytes of the frame last returned, dropped on the next call */
};

/* Space to read into; never empty while mm_rx_next() asks for more bytes. */
uint8_t *mm_rx_space(struct mm_rx *rx, size_t *avail);
void mm_rx_commit(struct mm_rx *rx, size_t n);
/* 1: *out holds a frame; 0: need more bytes; -1: `len` out of range (*bad_len set). */
int mm_rx_next(struct mm_rx *rx, struct mm_frame *out, uint32_t *bad_len);

/* Writes one frame into out; returns its size, or 0 if payload_len > MM_MAX_PAYLOAD
 * or cap is too small. */
size_t mm_frame_encode(uint8_t *out, size_t cap, uint8_t type, uint32_t stream,
		       const void *payload, size_t payload_len);

struct mm_winsize {
	uint16_t rows;
	uint16_t cols;
};

/* A process to start: the workload (CONFIG) or an exec session (EXEC). */
struct mm_process {
	size_t argc;
	char *argv[MM_MAX_ARGS + 1];    /* NULL-terminated */
	size_t envc;
	char *envp[MM_MAX_ENV + 1];     /* NULL-terminated */
	char *cwd;                      /* NULL if absent */
	char *user;
	bool tty;                       /* EXEC's TTY record: run on a new pty */
	struct mm_winsize winsize;
	bool stdin_open;                /* EXEC's STDIN record: the host sends STDIN */
};

/* The machine's network identity (CONFIG v2, IDENTITY v3), already validated. */
struct mm_net {
	bool has_mac;                   /* v3 NET_MAC */
	uint8_t mac[MM_MAC_LEN];
	bool has_addr;
	uint32_t addr;                  /* host byte order */
	unsigned prefix;                /* 1..32 */
	bool has_gateway;
	uint32_t gateway;
	size_t dns_count;
	char *dns[MM_MAX_DNS];          /* IPv4 or IPv6 addresses */
	size_t hosts_count;
	char *hosts[MM_MAX_HOSTS];      /* "address name..." */
};

/* What makes one machine not another: CONFIG sets it, IDENTITY (v3) renews it after
 * a restore or a fork. Already validated. */
struct mm_identity {
	bool has_clock;                 /* v3 CLOCK */
	uint64_t clock_ns;              /* since the Unix epoch */
	size_t seed_len;                /* v3 SEED: 0 if absent, else MM_MIN_SEED..MM_MAX_SEED */
	uint8_t seed[MM_MAX_SEED];
	char *hostname;                 /* NULL if absent */
	struct mm_net net;
};

/* What a MOUNT record mounts: its kind, bits 1-2 of its flags (v5; always a block disk
 * under v4). Kind 3 is not defined. */
enum mm_mount_kind {
	MM_MOUNT_BLOCK = 0,             /* a virtio-blk disk holding ext4 (a volume): v4 */
	MM_MOUNT_VIRTIOFS = 1,          /* a host directory shared over virtio-fs */
	MM_MOUNT_9P = 2,                /* a host directory shared over 9p (virtio transport) */
};

/* A volume or a shared host directory to mount before the workload starts (CONFIG v4,
 * v5), already validated. */
struct mm_mount {
	bool read_only;
	enum mm_mount_kind kind;
	char *name;                     /* the disk's virtio serial, or the share's tag: 1-20 of
					 * A-Z a-z 0-9 _ . - */
	char *path;                     /* absolute, no "..", not "/", not in /proc /sys /dev /.mm */
};

struct mm_mounts {
	size_t count;
	struct mm_mount list[MM_MAX_MOUNTS];   /* in the records' order */
};

struct mm_config {
	uint16_t version;
	struct mm_process proc;
	uint32_t flags;
	struct mm_identity id;
	struct mm_mounts mounts;        /* v4, v5 */
	/* Every string, NUL-terminated. A record costs 3 header bytes and its copy one
	 * NUL (a MOUNT's two copies, name and path, take its flags byte's place too), so
	 * the copies of one payload always fit in MM_MAX_PAYLOAD bytes. */
	char strings[MM_MAX_PAYLOAD];
	size_t strings_used;
};

struct mm_exec {
	struct mm_process proc;
	char strings[MM_MAX_PAYLOAD];   /* as in mm_config */
	size_t strings_used;
};

/* An IDENTITY payload (v3). */
struct mm_identity_msg {
	struct mm_identity id;
	char strings[MM_MAX_PAYLOAD];   /* as in mm_config */
	size_t strings_used;
};

/* The length of s[0..len) without a UTF-8 character cut short at its end, so that a
 * message truncated to fit a frame is still UTF-8 if it was before. */
size_t mm_utf8_whole_len(const char *s, size_t len);

/* Parses and validates a CONFIG payload: MM_PARSE_OK, or MM_PARSE_CONFIG or
 * MM_PARSE_NET with a reason in err. Only the records of cfg->version count. */
int mm_config_parse(struct mm_config *cfg, const uint8_t *payload, size_t len,
		    char *err, size_t errlen);

/* Parses and validates an EXEC payload (CONFIG's shape: u16 version, records) under
 * the version agreed in CONFIG: MM_PARSE_OK, or MM_PARSE_CONFIG with a reason. */
int mm_exec_parse(struct mm_exec *ex, uint16_t version, const uint8_t *payload, size_t len,
		  char *err, size_t errlen);

/* Parses and validates an IDENTITY payload (CONFIG's shape; HOSTNAME, the NET records,
 * CLOCK and SEED count) under the version agreed in CONFIG: MM_PARSE_OK, or
 * MM_PARSE_CONFIG or MM_PARSE_NET with a reason in err. */
int mm_identity_parse(struct mm_identity_msg *msg, uint16_t version, const uint8_t *payload,
		      size_t len, char *err, size_t errlen);

/* Strict dotted quad ("10.0.0.1": four decimal parts 0-255, no leading zeros). */
bool mm_parse_ipv4(const char *s, uint32_t *out);
/* An IPv4 or IPv6 address in text form. */
bool mm_is_ip_address(const char *s);
/* "aa:bb:cc:dd:ee:ff" exactly: six pairs of hex digits (either case) joined by ':'. */
bool mm_parse_mac(const char *s, uint8_t out[MM_MAC_LEN]);
/* An address a NIC may have: unicast (bit 0 of the first octet clear), not all zero. */
bool mm_mac_assignable(const uint8_t mac[MM_MAC_LEN]);

static inline uint16_t mm_get_u16(const uint8_t *p)
{
	return (uint16_t)((unsigned)p[0] << 8 | p[1]);
}

static inline uint32_t mm_get_u32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline uint64_t mm_get_u64(const uint8_t *p)
{
	return (uint64_t)mm_get_u32(p) << 32 | mm_get_u32(p + 4);
}

static inline void mm_put_u16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

static inline void mm_put_u32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

#endif
