/* The built-in database route (the reference's db_config {engine, host, port, dbname,
 * username, password, query}). The host holds the connection (the route's grant); this
 * component only sees `engine` and `query`.
 *
 * $TOPIC and $PAYLOAD in the query are bound parameters (topic text, payload bytes), never
 * text substitution: they become $1/$2 (PostgreSQL) or ? (MySQL) outside quoted literals.
 * A batch is one transaction; when it fails on a statement error, the messages are tried
 * one by one so that only the ones the database refuses are rejected. */
#include <stdlib.h>
#include <string.h>
#include "common.h"

#define MAX_PARAMS 32

enum param { TOPIC, PAYLOAD };

static bool postgres;
static char *statement;
static enum param params[MAX_PARAMS];
static size_t param_count;

static bool refuse(route_string_t *err, const char *why) {
    route_string_dup(err, why);
    return false;
}

/* Rewrites $TOPIC / $PAYLOAD outside '...', "..." and `...` literals into placeholders:
 * PostgreSQL numbers them by first use ($1, $2; reused as often as written), MySQL takes
 * one ? per use, in order. */
static bool rewrite(const char *q, buf_t *out) {
    char quote = 0;
    size_t pg_topic = 0, pg_payload = 0;
    param_count = 0;
    for (const char *p = q; *p; p++) {
        if (quote) {
            if (*p == quote) quote = 0;
            buf_putc(out, *p);
            continue;
        }
        if (*p == '\'' || *p == '"' || *p == '`') {
            quote = *p;
            buf_putc(out, *p);
            continue;
        }
        enum param which;
        size_t skip;
        if (!strncmp(p, "$TOPIC", 6)) {
            which = TOPIC;
            skip = 6;
        } else if (!strncmp(p, "$PAYLOAD", 8)) {
            which = PAYLOAD;
            skip = 8;
        } else {
            buf_putc(out, *p);
            continue;
        }
        if (postgres) {
            size_t *slot = which == TOPIC ? &pg_topic : &pg_payload;
            if (!*slot) {
                params[param_count++] = which;
                *slot = param_count;
            }
            buf_putc(out, '$');
            buf_put_u64(out, *slot);
        } else {
            if (param_count == MAX_PARAMS) return false;
            params[param_count++] = which;
            buf_putc(out, '?');
        }
        p += skip - 1;
    }
    return true;
}

bool exports_route_init(route_string_t *config, route_string_t *err) {
    json_member_t m[16];
    const char *text = (const char *)config->ptr;
    int n = json_object_members(text, text + config->len, m, 16);
    bool ok = false;
    char *engine = NULL, *query = NULL;
    if (n < 0) {
        refuse(err, "db_config: not a JSON object");
        goto out;
    }
    const json_member_t *e = json_find(m, n, "engine");
    engine = e ? json_string(e, NULL) : NULL;
    if (!engine || !(strcmp(engine, "postgresql") == 0 || strcmp(engine, "mysql") == 0)) {
        refuse(err, "db_config.engine: required, postgresql or mysql");
        goto out;
    }
    postgres = strcmp(engine, "postgresql") == 0;
    const json_member_t *q = json_find(m, n, "query");
    query = q ? json_string(q, NULL) : NULL;
    if (!query || !*query) {
        refuse(err, "db_config.query: required, e.g. INSERT INTO t (topic, payload) VALUES ($TOPIC, $PAYLOAD)");
        goto out;
    }
    buf_t b = {0};
    if (!rewrite(query, &b)) {
        free(b.p);
        refuse(err, "db_config.query: at most 32 uses of $TOPIC and $PAYLOAD");
        goto out;
    }
    statement = buf_cstr(&b);
    ok = true;
out:
    free(engine);
    free(query);
    route_string_free(config);
    return ok;
}

/* The parameters of one message (borrowing its topic and payload). */
static void row_of(const route_message_t *msg, iothub_route_sql_list_value_t *row, iothub_route_sql_value_t *vals) {
    for (size_t i = 0; i < param_count; i++) {
        if (params[i] == TOPIC) {
            vals[i].tag = IOTHUB_ROUTE_SQL_VALUE_TEXT;
            vals[i].val.text = msg->topic;
        } else {
            vals[i].tag = IOTHUB_ROUTE_SQL_VALUE_BYTES;
            vals[i].val.bytes = msg->payload;
        }
    }
    row->ptr = vals;
    row->len = param_count;
}

/* Runs the statement for messages [from, to); on failure fills `why` (malloc'd) and
 * returns the error tag, else -1. */
static int run(const route_message_t *msgs, size_t from, size_t to, char **why) {
    size_t count = to - from;
    iothub_route_sql_list_value_t *rows = calloc(count ? count : 1, sizeof *rows);
    iothub_route_sql_value_t *vals = calloc(count * (param_count ? param_count : 1) + 1, sizeof *vals);
    if (!rows || !vals) abort();
    for (size_t i = 0; i < count; i++) row_of(&msgs[from + i], &rows[i], vals + i * param_count);
    iothub_route_sql_list_list_value_t all = {rows, count};
    route_string_t st;
    route_string_set(&st, statement);
    uint64_t affected;
    iothub_route_sql_sql_error_t err;
    int tag = -1;
    if (!iothub_route_sql_execute(&st, &all, &affected, &err)) {
        tag = err.tag;
        buf_t b = {0};
        static const char *what[] = {"database denied: ", "database connect: ", "database prepare: ", "database execute: "};
        buf_puts(&b, what[err.tag & 3]);
        buf_put(&b, err.val.denied.ptr, err.val.denied.len);
        *why = buf_cstr(&b);
        iothub_route_sql_sql_error_free(&err);
    }
    free(rows);
    free(vals);
    return tag;
}

void exports_route_handle(route_list_message_t *batch, route_list_outcome_t *ret) {
    size_t n = batch->len;
    ret->len = n;
    ret->ptr = calloc(n ? n : 1, sizeof(route_outcome_t));
    if (!ret->ptr) abort();
    char *why = NULL;
    int tag = n ? run(batch->ptr, 0, n, &why) : -1;
    if (tag == IOTHUB_ROUTE_SQL_SQL_ERROR_EXECUTE && n > 1) {
        /* one message may be the culprit: try them one by one */
        free(why);
        for (size_t i = 0; i < n; i++) {
            char *one = NULL;
            int t = run(batch->ptr, i, i + 1, &one);
            if (t < 0) outcome_delivered(&ret->ptr[i]);
            else if (t == IOTHUB_ROUTE_SQL_SQL_ERROR_EXECUTE) outcome_reject(&ret->ptr[i], one);
            else outcome_retry(&ret->ptr[i], one);
            free(one);
        }
    } else {
        for (size_t i = 0; i < n; i++) {
            if (tag < 0) outcome_delivered(&ret->ptr[i]);
            else if (tag == IOTHUB_ROUTE_SQL_SQL_ERROR_EXECUTE || tag == IOTHUB_ROUTE_SQL_SQL_ERROR_DENIED) outcome_reject(&ret->ptr[i], why);
            else outcome_retry(&ret->ptr[i], why);
        }
        free(why);
    }
    route_list_message_free(batch);
}
