/* The machine's network identity inside the guest (CONFIG v2, IDENTITY v3): eth0's
 * MAC, address and default route, /etc/resolv.conf and /etc/hosts. */
#ifndef MM_NET_H
#define MM_NET_H

#include <stddef.h>

#include "protocol.h"

#define NET_IFACE "eth0"

/* Configures eth0 (when NET_ADDR is given; NET_MAC is part of that) and writes the
 * files under "/": 0, or -1 with an ERROR payload ("NET: ...") in err. */
int net_apply(const struct mm_net *net, char *err, size_t errlen);

/* Writes root/etc/resolv.conf (DNS records given) and root/etc/hosts (HOSTS records
 * given). Each file is replaced by rename, never written through a symlink; etc must
 * be a directory, not a symlink, and is created if missing. 0, or -1 with err set. */
int net_write_files(const struct mm_net *net, const char *root, char *err, size_t errlen);

#endif
