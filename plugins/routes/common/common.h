/* Helpers shared by the built-in route components: a small JSON reader for the route's
 * configuration, a growable byte buffer, number and time formatting. No stdio: the
 * components import nothing but the route world. */
#ifndef IOTHUB_ROUTE_COMMON_H
#define IOTHUB_ROUTE_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>
#include "route.h"

/* One member of a JSON object: the raw key (between its quotes) and the value's extent. */
typedef struct {
    const char *key;
    size_t key_len;
    const char *val;
    const char *val_end;
} json_member_t;

/* Members of the JSON object spanning [s, end) (leading/trailing whitespace allowed).
 * Returns the number of members (at most max are stored) or -1 if it is not valid JSON
 * object text. */
int json_object_members(const char *s, const char *end, json_member_t *out, int max);

/* Finds the member `key`; NULL when absent. */
const json_member_t *json_find(const json_member_t *m, int n, const char *key);

/* The decoded value of a JSON string (malloc'd, NUL-terminated; `len` set when not NULL),
 * or NULL when the value is not a string. */
char *json_string(const json_member_t *m, size_t *len);

/* A growable buffer. */
typedef struct {
    char *p;
    size_t len;
    size_t cap;
} buf_t;

void buf_put(buf_t *b, const void *data, size_t len);
void buf_puts(buf_t *b, const char *s);
void buf_putc(buf_t *b, char c);
void buf_put_u64(buf_t *b, uint64_t v);
/* Ends the text with a NUL (not counted in len) and returns it. */
char *buf_cstr(buf_t *b);

/* Case-insensitive ASCII comparison of a NUL-terminated string and a counted one. */
bool ieq(const char *a, const uint8_t *b, size_t blen);

/* A malloc'd copy of a counted string, NUL-terminated. */
char *dup_n(const uint8_t *s, size_t len);

/* `ms` since the epoch plus `extra_ns` as RFC 3339 with nanoseconds, the way Go's
 * time.RFC3339Nano prints UTC (trailing zeros of the fraction dropped, "Z"). */
void rfc3339_nano(buf_t *b, uint64_t ms, uint32_t extra_ns);

/* Sets an outcome. The text is copied. */
void outcome_delivered(route_outcome_t *o);
void outcome_retry(route_outcome_t *o, const char *why);
void outcome_reject(route_outcome_t *o, const char *why);

/* Logs through the host. */
void log_text(iothub_route_log_level_t level, const char *text);

#endif
