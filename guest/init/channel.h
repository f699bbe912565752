/* The byte stream to the host: the virtio-serial port named mm.agent in a guest, or
 * the path in MM_INIT_CHANNEL (unix socket or file) in host-test mode. */
#ifndef MM_CHANNEL_H
#define MM_CHANNEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "protocol.h"

#define MM_PORT_NAME "mm.agent"

struct mm_channel {
	int fd;
	/* A virtio port reads EOF while no host is connected, and the host may come
	 * back; a socket's EOF is final. */
	bool eof_is_final;
	struct mm_rx rx;
};

/* 0, or -1 after logging why. */
int channel_open(struct mm_channel *ch, bool host_mode);
/* Writes one whole frame on stream, blocking; 0, or -1 after logging why. */
int channel_send(struct mm_channel *ch, uint8_t type, uint32_t stream, const void *payload,
		 size_t len);
/* One read(2) into the receive buffer: >0 bytes, 0 at EOF (a frame cut short by it
 * is dropped: the next host starts a new one), -1 with errno. */
ssize_t channel_fill(struct mm_channel *ch);
void channel_close(struct mm_channel *ch);

#endif
