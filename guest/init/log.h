/* Console logging for mm-init: one line per call on fd 2 (the console when PID 1),
 * written with one write(2) so lines never interleave. errno is preserved. */
#ifndef MM_LOG_H
#define MM_LOG_H

#include <stdbool.h>

extern bool log_verbose;   /* mm.debug=1 */

void log_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
