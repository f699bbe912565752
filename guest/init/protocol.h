/* The host<->guest channel protocol (docs/PROTOCOL.md): frame and CONFIG limits,
 * a bounded frame receiver and the CONFIG parser. Pure: no I/O, no allocation. */
#ifndef MM_PROTOCOL_H
#define MM_PROTOCOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MM_PROTOCOL_VERSION 1
#define MM_AGENT_NAME "mm-init/0.1"
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
};

enum mm_config_tag {
	MM_TAG_ARG = 1,
	MM_TAG_ENV = 2,
	MM_TAG_CWD = 3,
	MM_TAG_USER = 4,
	MM_TAG_HOSTNAME = 5,
	MM_TAG_FLAGS = 6,
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

struct mm_config {
	uint16_t version;
	size_t argc;
	char *argv[MM_MAX_ARGS + 1];    /* NULL-terminated */
	size_t envc;
	char *envp[MM_MAX_ENV + 1];     /* NULL-terminated */
	char *cwd;                      /* NULL if absent */
	char *user;
	char *hostname;
	uint32_t flags;
	/* Every string, NUL-terminated. A record costs 3 header bytes and its copy one
	 * NUL, so the copies of one payload always fit in MM_MAX_PAYLOAD bytes. */
	char strings[MM_MAX_PAYLOAD];
	size_t strings_used;
};

/* The length of s[0..len) without a UTF-8 character cut short at its end, so that a
 * message truncated to fit a frame is still UTF-8 if it was before. */
size_t mm_utf8_whole_len(const char *s, size_t len);

/* Parses and validates a CONFIG payload. 0 on success; -1 with a reason in err. */
int mm_config_parse(struct mm_config *cfg, const uint8_t *payload, size_t len,
		    char *err, size_t errlen);

static inline uint16_t mm_get_u16(const uint8_t *p)
{
	return (uint16_t)((unsigned)p[0] << 8 | p[1]);
}

static inline uint32_t mm_get_u32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
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
