/*
 * A test client of GET /v1/messages; see sl_pullclient.h.
 */
#include "sl_pullclient.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sl_testutil.h"

void tu_page_free(tu_page_t *pg)
{
    free(pg->seqs);
    free(pg->ids);
    free(pg->texts);
    memset(pg, 0, sizeof(*pg));
}

static int read_items(tu_page_t *pg, json_t *msgs)
{
    pg->n = json_array_size(msgs);
    pg->seqs = calloc(pg->n + 1, sizeof(*pg->seqs));
    pg->ids = calloc(pg->n + 1, sizeof(*pg->ids));
    pg->texts = calloc(pg->n + 1, sizeof(*pg->texts));
    if (pg->seqs == NULL || pg->ids == NULL || pg->texts == NULL)
        return -1;
    for (size_t i = 0; i < pg->n; i++) {
        json_t *m = json_array_get(msgs, i);
        const char *id = json_string_value(json_object_get(m, "id"));
        const char *text = json_string_value(json_object_get(m, "text"));
        pg->seqs[i] = json_integer_value(json_object_get(m, "seq"));
        if (json_object_get(m, "type") == NULL && id != NULL)
            snprintf(pg->ids[i], sizeof(pg->ids[i]), "%s", id);
        snprintf(pg->texts[i], sizeof(pg->texts[i]), "%s", text != NULL ? text : "");
    }
    return 0;
}

int tu_pull(const char *base, const char *query, tu_page_t *pg)
{
    char url[512];
    tu_resp_t r;
    json_error_t e;
    int rc = -1;
    memset(pg, 0, sizeof(*pg));
    pg->next = pg->reset_since = -1;
    snprintf(url, sizeof(url), "%s/v1/messages?%s", base, query);
    if (tu_http("GET", url, NULL, NULL, NULL, 0, &r) != 0) {
        tu_resp_free(&r);
        return -1;
    }
    pg->status = r.status;
    pg->seconds = r.seconds;
    snprintf(pg->retry_after, sizeof(pg->retry_after), "%s", r.retry_after);
    json_t *root = json_loads(r.body, 0, &e), *v, *msgs;
    tu_resp_free(&r);
    if (!json_is_object(root))
        goto Exit;
    if ((v = json_object_get(root, "error")) != NULL) {
        const char *code = json_string_value(json_object_get(v, "code"));
        const char *field = json_string_value(json_object_get(v, "field"));
        snprintf(pg->code, sizeof(pg->code), "%s", code != NULL ? code : "");
        snprintf(pg->field, sizeof(pg->field), "%s", field != NULL ? field : "");
        rc = 0;
        goto Exit;
    }
    msgs = json_object_get(root, "messages");
    v = json_object_get(root, "next");
    if (!json_is_array(msgs) || !(json_is_string(v) || json_is_null(v)))
        goto Exit;
    if (json_is_string(v))
        pg->next = strtoll(json_string_value(v), NULL, 10);
    if ((v = json_object_get(root, "reset")) != NULL) {
        const char *reason = json_string_value(json_object_get(v, "reason"));
        snprintf(pg->reset, sizeof(pg->reset), "%s", reason != NULL ? reason : "?");
        if (json_is_integer(json_object_get(v, "since")))
            pg->reset_since = json_integer_value(json_object_get(v, "since"));
    }
    rc = read_items(pg, msgs);
Exit:
    json_decref(root);
    return rc;
}
