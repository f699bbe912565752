/* Frame framing and CONFIG validation for mm-init. Every length read from the peer
 * is checked against a named limit before it is used; nothing here does I/O. */
#include "protocol.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static void rx_drop_consumed(struct mm_rx *rx)
{
	if (rx->consumed == 0)
		return;
	memmove(rx->buf, rx->buf + rx->consumed, rx->used - rx->consumed);
	rx->used -= rx->consumed;
	rx->consumed = 0;
}

uint8_t *mm_rx_space(struct mm_rx *rx, size_t *avail)
{
	rx_drop_consumed(rx);
	*avail = sizeof rx->buf - rx->used;
	return rx->buf + rx->used;
}

void mm_rx_commit(struct mm_rx *rx, size_t n)
{
	if (n > sizeof rx->buf - rx->used)   /* cannot happen with mm_rx_space() */
		n = sizeof rx->buf - rx->used;
	rx->used += n;
}

int mm_rx_next(struct mm_rx *rx, struct mm_frame *out, uint32_t *bad_len)
{
	uint32_t len;

	rx_drop_consumed(rx);
	if (rx->used < MM_LEN_FIELD)
		return 0;
	len = mm_get_u32(rx->buf);
	if (len < MM_LEN_MIN || len > MM_LEN_MAX) {
		*bad_len = len;
		return -1;
	}
	if (rx->used < MM_LEN_FIELD + (size_t)len)
		return 0;
	out->type = rx->buf[MM_LEN_FIELD];
	out->stream = mm_get_u32(rx->buf + MM_LEN_FIELD + 1);
	out->payload = rx->buf + MM_FRAME_HEADER;
	out->payload_len = len - MM_LEN_MIN;
	rx->consumed = MM_LEN_FIELD + (size_t)len;
	return 1;
}

size_t mm_frame_encode(uint8_t *out, size_t cap, uint8_t type, uint32_t stream,
		       const void *payload, size_t payload_len)
{
	if (payload_len > MM_MAX_PAYLOAD || cap < MM_FRAME_HEADER + payload_len)
		return 0;
	mm_put_u32(out, (uint32_t)(MM_LEN_MIN + payload_len));
	out[MM_LEN_FIELD] = type;
	mm_put_u32(out + MM_LEN_FIELD + 1, stream);
	if (payload_len > 0)
		memcpy(out + MM_FRAME_HEADER, payload, payload_len);
	return MM_FRAME_HEADER + payload_len;
}

size_t mm_utf8_whole_len(const char *s, size_t len)
{
	size_t i = len, cont = 0, need;
	unsigned char lead;

	while (i > 0 && cont < 3 && ((unsigned char)s[i - 1] & 0xC0) == 0x80) {
		i--;
		cont++;
	}
	if (i == 0)
		return len;
	lead = (unsigned char)s[i - 1];
	if ((lead & 0xC0) != 0xC0)
		return len;   /* ends in ASCII or stray continuation bytes: nothing was cut */
	need = (lead & 0xE0) == 0xC0 ? 1 : (lead & 0xF0) == 0xE0 ? 2 : 3;
	return cont < need ? i - 1 : len;
}

__attribute__((format(printf, 3, 4)))
static int fail(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	return -1;
}

static const char *tag_name(uint8_t tag)
{
	switch (tag) {
	case MM_TAG_ARG: return "ARG";
	case MM_TAG_ENV: return "ENV";
	case MM_TAG_CWD: return "CWD";
	case MM_TAG_USER: return "USER";
	case MM_TAG_HOSTNAME: return "HOSTNAME";
	case MM_TAG_FLAGS: return "FLAGS";
	default: return "?";
	}
}

/* Copies a string record into cfg->strings; NULL with err set if it breaks a rule. */
static char *copy_string(struct mm_config *cfg, uint8_t tag, const uint8_t *value,
			 size_t len, char *err, size_t errlen)
{
	char *s;

	if (len > MM_MAX_STRING) {
		fail(err, errlen, "%s record is %zu bytes (max %d)", tag_name(tag), len,
		     MM_MAX_STRING);
		return NULL;
	}
	if (memchr(value, '\0', len) != NULL) {
		fail(err, errlen, "%s record contains a NUL byte", tag_name(tag));
		return NULL;
	}
	if (len + 1 > sizeof cfg->strings - cfg->strings_used) {
		fail(err, errlen, "strings exceed %zu bytes", sizeof cfg->strings);
		return NULL;
	}
	s = cfg->strings + cfg->strings_used;
	memcpy(s, value, len);
	s[len] = '\0';
	cfg->strings_used += len + 1;
	return s;
}

/* A record that may appear once: rejects a second one. */
static int set_once(char **slot, char *value, uint8_t tag, char *err, size_t errlen)
{
	if (*slot != NULL)
		return fail(err, errlen, "more than one %s record", tag_name(tag));
	*slot = value;
	return 0;
}

int mm_config_parse(struct mm_config *cfg, const uint8_t *payload, size_t len,
		    char *err, size_t errlen)
{
	size_t off = 2;
	bool has_flags = false;

	memset(cfg, 0, offsetof(struct mm_config, strings));
	cfg->strings_used = 0;
	if (len < 2)
		return fail(err, errlen, "payload of %zu bytes has no version", len);
	cfg->version = mm_get_u16(payload);
	if (cfg->version != MM_PROTOCOL_VERSION)
		return fail(err, errlen, "version %u is not supported (this agent speaks %d..%d)",
			    cfg->version, MM_PROTOCOL_VERSION, MM_PROTOCOL_VERSION);

	while (off < len) {
		uint8_t tag;
		size_t rlen;
		const uint8_t *value;
		char *s = NULL;

		if (len - off < MM_CONFIG_RECORD_HEADER)
			return fail(err, errlen, "truncated record header at byte %zu", off);
		tag = payload[off];
		rlen = mm_get_u16(payload + off + 1);
		off += MM_CONFIG_RECORD_HEADER;
		if (rlen > len - off)
			return fail(err, errlen, "record with tag %u at byte %zu runs past the end",
				    tag, off - MM_CONFIG_RECORD_HEADER);
		value = payload + off;
		off += rlen;

		switch (tag) {
		case MM_TAG_ARG:
			if (cfg->argc == MM_MAX_ARGS)
				return fail(err, errlen, "more than %d ARG records", MM_MAX_ARGS);
			if ((s = copy_string(cfg, tag, value, rlen, err, errlen)) == NULL)
				return -1;
			cfg->argv[cfg->argc++] = s;
			break;
		case MM_TAG_ENV:
			if (cfg->envc == MM_MAX_ENV)
				return fail(err, errlen, "more than %d ENV records", MM_MAX_ENV);
			if ((s = copy_string(cfg, tag, value, rlen, err, errlen)) == NULL)
				return -1;
			if (s[0] == '=' || strchr(s, '=') == NULL)
				return fail(err, errlen, "ENV record %zu is not KEY=VALUE", cfg->envc + 1);
			cfg->envp[cfg->envc++] = s;
			break;
		case MM_TAG_CWD:
			if ((s = copy_string(cfg, tag, value, rlen, err, errlen)) == NULL ||
			    set_once(&cfg->cwd, s, tag, err, errlen) != 0)
				return -1;
			if (s[0] != '/')
				return fail(err, errlen, "CWD \"%.64s\" is not absolute", s);
			break;
		case MM_TAG_USER:
			if ((s = copy_string(cfg, tag, value, rlen, err, errlen)) == NULL ||
			    set_once(&cfg->user, s, tag, err, errlen) != 0)
				return -1;
			if (s[0] == '\0')
				return fail(err, errlen, "USER is empty");
			break;
		case MM_TAG_HOSTNAME:
			if (rlen > MM_MAX_HOSTNAME)
				return fail(err, errlen, "HOSTNAME is %zu bytes (max %d)", rlen,
					    MM_MAX_HOSTNAME);
			if ((s = copy_string(cfg, tag, value, rlen, err, errlen)) == NULL ||
			    set_once(&cfg->hostname, s, tag, err, errlen) != 0)
				return -1;
			if (s[0] == '\0')
				return fail(err, errlen, "HOSTNAME is empty");
			break;
		case MM_TAG_FLAGS:
			if (has_flags)
				return fail(err, errlen, "more than one FLAGS record");
			if (rlen != 4)
				return fail(err, errlen, "FLAGS record is %zu bytes (must be 4)", rlen);
			cfg->flags = mm_get_u32(value);
			has_flags = true;
			break;
		default:
			break;  /* unknown tags are ignored: the host may be newer */
		}
	}
	if (cfg->argc == 0)
		return fail(err, errlen, "no ARG record (argv[0] is required)");
	cfg->argv[cfg->argc] = NULL;
	cfg->envp[cfg->envc] = NULL;
	return 0;
}
