/* The built-in REST route (the reference's rest_config {verb, uri, headers}).
 *
 * Each message becomes one request: the configured verb and URI, the configured headers
 * plus X-Mqtt-Topic and X-Mqtt-Retain, the payload as body. A 2xx answer delivers the
 * message; when it carries X-Mqtt-Topic, its body is published back on the hub at that
 * topic (retained if its X-Mqtt-Retain is "true"). 408, 429 and 5xx answers and network
 * errors are retried; other answers reject the message. */
#include <stdlib.h>
#include <string.h>
#include "common.h"

#define MAX_HEADERS 64

static char *verb;  /* upper case */
static char *uri;
static iothub_route_http_header_t headers[MAX_HEADERS + 2];
static size_t header_count;

static const char *VERBS[] = {"get", "post", "put", "patch", "delete"};

static bool refuse(route_string_t *err, const char *why) {
    route_string_dup(err, why);
    return false;
}

bool exports_route_init(route_string_t *config, route_string_t *err) {
    json_member_t m[16];
    const char *text = (const char *)config->ptr;
    int n = json_object_members(text, text + config->len, m, 16);
    bool ok = false;
    if (n < 0) {
        refuse(err, "rest_config: not a JSON object");
        goto out;
    }
    const json_member_t *v = json_find(m, n, "verb");
    char *vs = v ? json_string(v, NULL) : NULL;
    if (!vs) {
        refuse(err, "rest_config.verb: required, one of get, post, put, patch, delete");
        goto out;
    }
    bool known = false;
    for (size_t i = 0; i < sizeof VERBS / sizeof *VERBS; i++) {
        if (ieq(VERBS[i], (const uint8_t *)vs, strlen(vs))) known = true;
    }
    if (!known) {
        free(vs);
        refuse(err, "rest_config.verb: must be one of get, post, put, patch, delete");
        goto out;
    }
    for (char *c = vs; *c; c++) {
        if (*c >= 'a' && *c <= 'z') *c = (char)(*c - 32);
    }
    const json_member_t *u = json_find(m, n, "uri");
    char *us = u ? json_string(u, NULL) : NULL;
    if (!us || !(strncmp(us, "http://", 7) == 0 || strncmp(us, "https://", 8) == 0)) {
        free(vs);
        free(us);
        refuse(err, "rest_config.uri: required, an absolute http:// or https:// URI");
        goto out;
    }
    size_t count = 0;
    const json_member_t *h = json_find(m, n, "headers");
    if (h && !(h->val_end - h->val == 4 && !memcmp(h->val, "null", 4))) {
        json_member_t hm[MAX_HEADERS];
        int hn = json_object_members(h->val, h->val_end, hm, MAX_HEADERS);
        if (hn < 0 || hn > MAX_HEADERS) {
            free(vs);
            free(us);
            refuse(err, "rest_config.headers: an object of at most 64 string values");
            goto out;
        }
        for (int i = 0; i < hn; i++) {
            size_t vl;
            char *val = json_string(&hm[i], &vl);
            if (!val || hm[i].key_len == 0) {
                free(val);
                free(vs);
                free(us);
                refuse(err, "rest_config.headers: every value must be a string");
                goto out;
            }
            route_string_dup_n(&headers[count].name, hm[i].key, hm[i].key_len);
            headers[count].value.ptr = (uint8_t *)val;
            headers[count].value.len = vl;
            count++;
        }
    }
    header_count = count;
    verb = vs;
    uri = us;
    ok = true;
out:
    route_string_free(config);
    return ok;
}

static const route_string_t *find_header(const iothub_route_http_list_header_t *hs, const char *name) {
    for (size_t i = 0; i < hs->len; i++) {
        if (ieq(name, hs->ptr[i].name.ptr, hs->ptr[i].name.len)) return &hs->ptr[i].value;
    }
    return NULL;
}

static void deliver(const route_message_t *msg, route_outcome_t *out) {
    iothub_route_http_header_t *hs = headers;
    route_string_set(&hs[header_count].name, "X-Mqtt-Topic");
    hs[header_count].value = msg->topic;
    route_string_set(&hs[header_count + 1].name, "X-Mqtt-Retain");
    route_string_set(&hs[header_count + 1].value, msg->retain ? "true" : "false");

    iothub_route_http_request_t req;
    route_string_set(&req.method, verb);
    route_string_set(&req.uri, uri);
    req.headers.ptr = hs;
    req.headers.len = header_count + 2;
    req.body = msg->payload;

    iothub_route_http_response_t resp;
    iothub_route_http_http_error_t err;
    if (!iothub_route_http_send(&req, &resp, &err)) {
        switch (err.tag) {
        case IOTHUB_ROUTE_HTTP_HTTP_ERROR_CONNECT:
        case IOTHUB_ROUTE_HTTP_HTTP_ERROR_TIMEOUT:
            outcome_retry(out, err.tag == IOTHUB_ROUTE_HTTP_HTTP_ERROR_TIMEOUT ? "HTTP: no answer in time" : "HTTP: could not connect");
            break;
        default:
            outcome_reject(out, err.tag == IOTHUB_ROUTE_HTTP_HTTP_ERROR_DENIED ? "HTTP: denied by the host" : "HTTP: invalid request");
            break;
        }
        iothub_route_http_http_error_free(&err);
        return;
    }
    uint16_t s = resp.status;
    if (s >= 200 && s < 300) {
        outcome_delivered(out);
        const route_string_t *topic = find_header(&resp.headers, "X-Mqtt-Topic");
        if (topic && topic->len > 0) {
            const route_string_t *r = find_header(&resp.headers, "X-Mqtt-Retain");
            bool retain = r && ieq("true", r->ptr, r->len);
            route_string_t t = *topic;
            route_string_t perr;
            if (!iothub_route_hub_publish(&t, &resp.body, 1, retain, &perr)) {
                buf_t b = {0};
                buf_puts(&b, "REST reply not published back: ");
                buf_put(&b, perr.ptr, perr.len);
                log_text(IOTHUB_ROUTE_LOG_LEVEL_WARN, buf_cstr(&b));
                free(b.p);
                route_string_free(&perr);
            }
        }
    } else {
        buf_t b = {0};
        buf_puts(&b, "HTTP ");
        buf_put_u64(&b, s);
        if (s == 408 || s == 429 || s >= 500) {
            outcome_retry(out, buf_cstr(&b));
        } else {
            outcome_reject(out, buf_cstr(&b));
        }
        free(b.p);
    }
    iothub_route_http_response_free(&resp);
}

void exports_route_handle(route_list_message_t *batch, route_list_outcome_t *ret) {
    ret->len = batch->len;
    ret->ptr = calloc(batch->len ? batch->len : 1, sizeof(route_outcome_t));
    if (!ret->ptr) abort();
    for (size_t i = 0; i < batch->len; i++) deliver(&batch->ptr[i], &ret->ptr[i]);
    route_list_message_free(batch);
}
