/* The built-in S3 route (the reference's s3_config {bucket_region, bucket_name,
 * object_prefix, strategy}). The host holds the bucket and its credentials (the route's
 * grant); this component names the objects:
 *   per_topic:   <object_prefix>/<topic>             (each message replaces the last)
 *   per_message: <object_prefix>/<topic>/<RFC3339Nano time the hub accepted it>
 * (without a prefix, the key starts at the topic). The object's body is the payload, its
 * content type the message's when it has one. Within one instance, keys of per_message
 * are made unique: a message accepted in the same millisecond as the previous one is
 * given the next nanosecond. Topics with empty levels ("a//b", "/a") make no valid key
 * and are rejected. */
#include <stdlib.h>
#include <string.h>
#include "common.h"

static char *prefix;
static bool per_message;
static uint64_t last_ms;
static uint32_t same_ms;

static bool refuse(route_string_t *err, const char *why) {
    route_string_dup(err, why);
    return false;
}

bool exports_route_init(route_string_t *config, route_string_t *err) {
    json_member_t m[16];
    const char *text = (const char *)config->ptr;
    int n = json_object_members(text, text + config->len, m, 16);
    bool ok = false;
    char *bucket = NULL, *strategy = NULL, *pre = NULL;
    if (n < 0) {
        refuse(err, "s3_config: not a JSON object");
        goto out;
    }
    const json_member_t *b = json_find(m, n, "bucket_name");
    bucket = b ? json_string(b, NULL) : NULL;
    if (!bucket || !*bucket) {
        refuse(err, "s3_config.bucket_name: required");
        goto out;
    }
    const json_member_t *s = json_find(m, n, "strategy");
    strategy = s ? json_string(s, NULL) : NULL;
    if (!strategy || !(strcmp(strategy, "per_topic") == 0 || strcmp(strategy, "per_message") == 0)) {
        refuse(err, "s3_config.strategy: required, per_topic or per_message");
        goto out;
    }
    per_message = strcmp(strategy, "per_message") == 0;
    const json_member_t *p = json_find(m, n, "object_prefix");
    if (p && !(p->val_end - p->val == 4 && !memcmp(p->val, "null", 4))) {
        pre = json_string(p, NULL);
        if (!pre) {
            refuse(err, "s3_config.object_prefix: must be a string");
            goto out;
        }
        size_t l = strlen(pre);
        while (l && pre[l - 1] == '/') pre[--l] = 0;
    }
    prefix = pre ? pre : calloc(1, 1);
    pre = NULL;
    ok = true;
out:
    free(bucket);
    free(strategy);
    free(pre);
    route_string_free(config);
    return ok;
}

static bool valid_levels(const route_string_t *topic) {
    if (topic->len == 0 || topic->ptr[0] == '/' || topic->ptr[topic->len - 1] == '/') return false;
    for (size_t i = 0; i + 1 < topic->len; i++) {
        if (topic->ptr[i] == '/' && topic->ptr[i + 1] == '/') return false;
    }
    return true;
}

static void deliver(const route_message_t *msg, route_outcome_t *out) {
    if (!valid_levels(&msg->topic)) {
        outcome_reject(out, "S3: a topic with empty levels makes no object key");
        return;
    }
    buf_t key = {0};
    if (*prefix) {
        buf_puts(&key, prefix);
        buf_putc(&key, '/');
    }
    buf_put(&key, msg->topic.ptr, msg->topic.len);
    if (per_message) {
        uint32_t extra = 0;
        if (msg->timestamp_ms == last_ms) {
            extra = ++same_ms;
        } else if (msg->timestamp_ms > last_ms) {
            last_ms = msg->timestamp_ms;
            same_ms = 0;
        }
        buf_putc(&key, '/');
        rfc3339_nano(&key, msg->timestamp_ms, extra);
    }
    route_string_t k = {(uint8_t *)key.p, key.len};
    route_list_u8_t body = msg->payload;
    route_string_t ct;
    route_string_t *ctp = NULL;
    if (msg->content_type.is_some) {
        ct = msg->content_type.val;
        ctp = &ct;
    }
    iothub_route_objects_object_error_t err;
    if (iothub_route_objects_put(&k, &body, ctp, &err)) {
        outcome_delivered(out);
    } else {
        buf_t why = {0};
        buf_puts(&why, err.tag == IOTHUB_ROUTE_OBJECTS_OBJECT_ERROR_DENIED ? "S3 denied: " : "S3 write: ");
        buf_put(&why, err.val.write.ptr, err.val.write.len);
        if (err.tag == IOTHUB_ROUTE_OBJECTS_OBJECT_ERROR_DENIED) outcome_reject(out, buf_cstr(&why));
        else outcome_retry(out, buf_cstr(&why));
        free(why.p);
        iothub_route_objects_object_error_free(&err);
    }
    free(key.p);
}

void exports_route_handle(route_list_message_t *batch, route_list_outcome_t *ret) {
    ret->len = batch->len;
    ret->ptr = calloc(batch->len ? batch->len : 1, sizeof(route_outcome_t));
    if (!ret->ptr) abort();
    for (size_t i = 0; i < batch->len; i++) deliver(&batch->ptr[i], &ret->ptr[i]);
    route_list_message_free(batch);
}
