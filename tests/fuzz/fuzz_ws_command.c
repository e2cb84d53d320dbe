/*
 * fuzz_ws_command: the parser of the commands a client sends on GET /v1/ws
 * (sl_stream_ws_parse, sl_stream.h), against a reference written from the protocol the README
 * documents.
 *
 * What the socket then does with a well-formed command (already_subscribed, not_subscribed,
 * too_many_channels, history and live delivery) needs the hub and the database, and is tested
 * on a real server by check_sse (test_websocket_subscriptions, test_websocket_limits).
 *
 * Input: frames separated by '\n' (a frame is one text message, any bytes but '\n').
 *
 * Invariants, for each frame and for two history limits (the default 1000, and 0):
 * - the parser accepts exactly what the reference accepts, and refuses the rest with the code the
 *   reference names: invalid_json, missing_command, unknown_command, invalid_token,
 *   invalid_channel, invalid_history, invalid_since, invalid_presence (status 400, no field);
 * - an accepted command has the reference's verb, channel (canonical: "#general" is general),
 *   history (the default when absent), since (-1 when absent), presence (a boolean, false when
 *   absent) and token (auth: always;
 *   subscribe: when given and not null; the exact string, its length, NUL-terminated); the
 *   channel is valid and NUL-terminated; a refused command holds no token (nothing to free, which
 *   LeakSanitizer checks);
 * - the error frame the socket sends for a refusal ({"type":"error","code","message"}, built
 *   the way the stream builds it) is valid JSON: the message is UTF-8 and not empty;
 * - no out-of-bounds access (each frame is a buffer of exactly its bytes).
 */
#include <jansson.h>

#include "fuzz_util.h"
#include "sl_buf.h"
#include "sl_stream.h"

#define HISTORY_DEFAULT 20

/* The reference: 0 and the expected command, or the expected error code. */
static const char *expect(const char *text, size_t len, long long history_max, sl_ws_command_t *want,
                          char *token, size_t token_size)
{
    json_t *root = json_loadb(text, len, 0, NULL), *v;
    const char *cmd, *code = NULL;
    memset(want, 0, sizeof(*want));
    token[0] = '\0';
    want->history = HISTORY_DEFAULT;
    want->since = -1;
    if (!json_is_object(root)) {
        code = "invalid_json";
        goto Done;
    }
    if (!json_is_string(v = json_object_get(root, "command"))) {
        code = "missing_command";
        goto Done;
    }
    cmd = json_string_value(v);
    if (strcmp(cmd, "ping") == 0) {
        want->verb = SL_WS_PING;
        goto Done;
    }
    if (strcmp(cmd, "auth") == 0 || strcmp(cmd, "subscribe") == 0) {
        /* the token comes first: auth's is required, a subscribe's optional (null: none) */
        v = json_object_get(root, "token");
        if (strcmp(cmd, "auth") == 0 || (v != NULL && !json_is_null(v))) {
            if (!json_is_string(v) || json_string_length(v) == 0) {
                code = "invalid_token";
                goto Done;
            }
            want->token = token;
            want->token_len = json_string_length(v);
            snprintf(token, token_size, "%s", json_string_value(v));
        }
    }
    if (strcmp(cmd, "auth") == 0) {
        want->verb = SL_WS_AUTH;
        goto Done;
    }
    if (strcmp(cmd, "subscribe") == 0) {
        want->verb = SL_WS_SUBSCRIBE;
    } else if (strcmp(cmd, "unsubscribe") == 0) {
        want->verb = SL_WS_UNSUBSCRIBE;
    } else {
        code = "unknown_command";
        goto Done;
    }
    v = json_object_get(root, "channel");
    /* "#general" is general */
    size_t hash = json_is_string(v) && json_string_length(v) > 0 && json_string_value(v)[0] == '#';
    if (!json_is_string(v) || !fuzz_channel_ok(json_string_value(v) + hash, json_string_length(v) - hash)) {
        code = "invalid_channel";
        goto Done;
    }
    strcpy(want->channel, json_string_value(v) + hash);
    if (want->verb == SL_WS_UNSUBSCRIBE)
        goto Done;
    if ((v = json_object_get(root, "history")) != NULL) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > history_max) {
            code = "invalid_history";
            goto Done;
        }
        want->history = json_integer_value(v);
    }
    if ((v = json_object_get(root, "since")) != NULL) {
        if (!json_is_integer(v) || json_integer_value(v) < 0) {
            code = "invalid_since";
            goto Done;
        }
        want->since = json_integer_value(v);
    }
    if ((v = json_object_get(root, "presence")) != NULL) {
        if (!json_is_boolean(v)) {
            code = "invalid_presence";
            goto Done;
        }
        want->presence = json_is_true(v);
    }
Done:
    json_decref(root);
    return code;
}

static void check_frame(const char *frame, size_t len, long long history_max)
{
    sl_ws_command_t got, want;
    sl_error_t err;
    char *token = malloc(len + 1); /* a token is at most as long as its frame */
    FUZZ_CHECK(token != NULL);
    const char *code = expect(frame, len, history_max, &want, token, len + 1);
    int r = sl_stream_ws_parse(frame, len, HISTORY_DEFAULT, history_max, &got, &err);
    if (r == 0 && (got.token != NULL || want.token != NULL)) {
        FUZZ_CHECKF(got.token != NULL && want.token != NULL && got.token_len == want.token_len &&
                        memcmp(got.token, want.token, got.token_len) == 0 && got.token[got.token_len] == '\0',
                    "frame '%.*s': token '%s', expected '%s'", (int)len, frame, got.token ? got.token : "(none)",
                    want.token ? want.token : "(none)");
    }
    if (r == 0)
        free(got.token);
    else
        FUZZ_CHECK(got.token == NULL);
    free(token);
    if (code != NULL) {
        FUZZ_CHECKF(r == -1 && strcmp(err.code, code) == 0, "frame '%.*s' (history max %lld): %d %s, expected %s",
                    (int)len, frame, history_max, r, r == 0 ? "" : err.code, code);
        FUZZ_CHECK(err.status == 400 && err.field == NULL && err.message[0] != '\0');
        /* the error frame, as ws_error builds it */
        json_t *o = json_pack("{s:s, s:s, s:s}", "type", "error", "code", err.code, "message", err.message);
        FUZZ_CHECKF(o != NULL, "no error frame for '%s': %s", err.code, err.message);
        json_decref(o);
        return;
    }
    FUZZ_CHECKF(r == 0, "frame '%.*s' (history max %lld): refused with %s", (int)len, frame, history_max, err.code);
    FUZZ_CHECK(got.verb == want.verb);
    if (got.verb == SL_WS_PING || got.verb == SL_WS_AUTH)
        return;
    FUZZ_CHECK(memchr(got.channel, '\0', sizeof(got.channel)) != NULL);
    FUZZ_CHECKF(strcmp(got.channel, want.channel) == 0, "channel '%s', expected '%s'", got.channel, want.channel);
    FUZZ_CHECK(fuzz_channel_ok(got.channel, strlen(got.channel)));
    if (got.verb == SL_WS_SUBSCRIBE) {
        FUZZ_CHECKF(got.history == want.history && got.since == want.since, "history %lld since %lld, expected %lld %lld",
                    got.history, got.since, want.history, want.since);
        FUZZ_CHECK(got.presence == want.presence);
        FUZZ_CHECK(got.history >= 0 && got.history <= (history_max > HISTORY_DEFAULT ? history_max : HISTORY_DEFAULT));
        FUZZ_CHECK(got.since >= -1);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data, *end = s + size;
    for (const char *p = s; p <= end;) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *fend = nl != NULL ? nl : end;
        size_t len = (size_t)(fend - p);
        char *frame = malloc(len > 0 ? len : 1); /* exactly the frame: ASan sees overreads */
        FUZZ_CHECK(frame != NULL);
        memcpy(frame, p, len);
        check_frame(frame, len, 1000);
        check_frame(frame, len, 0);
        free(frame);
        if (nl == NULL)
            break;
        p = nl + 1;
    }
    return 0;
}
