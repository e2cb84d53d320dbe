/*
 * fuzz_auth: the Authorization header (sl_auth.h, sl_http_bearer): which table token a request
 * names (sl_auth_identify: for the api's per-client rate limit and for a POST), whether it may post
 * as an author (sl_auth_may_post), the operators' token (sl_auth_check_token); and the token
 * table's text (SLUICE_API_TOKENS, sl_auth_create). JWTs are fuzz_jwt's. sl_http_header only
 * reads req->headers, so a zeroed h2o_req_t with its pool and that header is a faithful request
 * for them.
 *
 * Input: the author to post as ("" for none) up to the first '\n', then the header's value (any
 * bytes); without a '\n', no Authorization header. The whole input, up to a NUL, is also read as
 * a token table.
 *
 * Invariants:
 * - the header names a token when it is "Bearer" in any case, one or more spaces, then the token
 *   (RFC 6750's b64token, as sluice reads it); anything else is SL_AUTH_MISSING;
 * - a named token is valid exactly when it is one of the table's, byte for byte and as long
 *   (case and padding are not forgiven: SL_AUTH_INVALID);
 * - a valid token may post as its author, or as anyone for "*" (else SL_AUTH_FORBIDDEN);
 * - on SL_AUTH_OK the token given back is the configured text, whatever the header's spelling of
 *   the scheme and spaces: the rate limit keys "bearer  T" and "Bearer T" alike, and a made-up
 *   value (one with two dots too: no JWT verifier here) never gets a key of its own;
 * - the operators' token is checked the same way; an empty one lets everything through;
 * - a token table is taken exactly when each comma-separated entry is token:author with a token
 *   of 8-256 visible ASCII characters and an author of 1-64 code points of UTF-8; each token then
 *   authenticates as its author.
 */
#include <ctype.h>
#include <strings.h>

#include "fuzz_util.h"
#include "sl_auth.h"
#include "sl_message.h"

/* Two tokens that differ in case only, one a prefix of another, one for anyone. */
#define TOKENS "sluice-writer-1:alice,SLUICE-WRITER-1:bob,sluice-writer-11:carol,any-author-token:*"
#define ADMIN "sluice-admin-token"

static const struct {
    const char *token, *author;
} TABLE[] = {
    {"sluice-writer-1", "alice"},
    {"SLUICE-WRITER-1", "bob"},
    {"sluice-writer-11", "carol"},
    {"any-author-token", "*"},
};

/* The token a header value names, or NULL. */
static const char *bearer_ref(const char *v, size_t len, size_t *tlen)
{
    if (len < 7 || strncasecmp(v, "bearer ", 7) != 0)
        return NULL;
    size_t i = 7;
    while (i < len && v[i] == ' ')
        i++;
    *tlen = len - i;
    return v + i;
}

static void request(h2o_req_t *req, const char *value, size_t len)
{
    memset(req, 0, sizeof(*req));
    h2o_mem_init_pool(&req->pool);
    if (value != NULL)
        h2o_add_header_by_str(&req->pool, &req->headers, H2O_STRLIT("authorization"), 1, NULL, value, len);
}

static void check_header(const sl_auth_t *auth, const char *author, const char *value, size_t len)
{
    h2o_req_t req;
    request(&req, value, len);
    size_t tlen = 0;
    const char *t = value != NULL ? bearer_ref(value, len, &tlen) : NULL;
    int found = -1;
    for (size_t i = 0; t != NULL && i < sizeof(TABLE) / sizeof(TABLE[0]); i++) {
        if (strlen(TABLE[i].token) == tlen && memcmp(TABLE[i].token, t, tlen) == 0)
            found = (int)i;
    }
    sl_auth_result_t want = t == NULL ? SL_AUTH_MISSING : found < 0 ? SL_AUTH_INVALID : SL_AUTH_OK;
    if (want == SL_AUTH_OK && author != NULL && strcmp(TABLE[found].author, "*") != 0 &&
        strcmp(TABLE[found].author, author) != 0)
        want = SL_AUTH_FORBIDDEN;

    sl_auth_who_t who;
    sl_auth_result_t id = want == SL_AUTH_FORBIDDEN ? SL_AUTH_OK : want; /* who it is, not what it may */
    sl_auth_result_t r = sl_auth_identify(auth, &req, 1700000000, &who);
    FUZZ_CHECKF(r == id && who.result == r, "identify: %d, expected %d", (int)r, (int)id);
    if (r == SL_AUTH_OK) {
        FUZZ_CHECKF(who.token != NULL && strcmp(who.token, TABLE[found].token) == 0, "token %s for %s",
                    who.token ? who.token : "NULL", TABLE[found].token);
        FUZZ_CHECK(who.author != NULL && strcmp(who.author, TABLE[found].author) == 0 && !who.is_jwt);
    } else {
        FUZZ_CHECK(who.token == NULL && who.author == NULL);
    }
    if (author != NULL) {
        r = sl_auth_may_post(&who, author, "general");
        FUZZ_CHECKF(r == want, "author %s: %d, expected %d", author, (int)r, (int)want);
    }
    sl_auth_who_free(&who);

    sl_auth_result_t admin = sl_auth_check_token(&req, ADMIN);
    FUZZ_CHECK(admin == (t == NULL                                                           ? SL_AUTH_MISSING
                         : tlen == strlen(ADMIN) && memcmp(t, ADMIN, strlen(ADMIN)) == 0 ? SL_AUTH_OK
                                                                                         : SL_AUTH_INVALID));
    FUZZ_CHECK(sl_auth_check_token(&req, "") == SL_AUTH_OK && sl_auth_check_token(&req, NULL) == SL_AUTH_OK);
    h2o_mem_clear_pool(&req.pool);
}

static int token_ok_ref(const char *t, size_t len)
{
    if (len < 8 || len > 256)
        return 0;
    for (size_t i = 0; i < len; i++) {
        if (t[i] < 0x21 || t[i] > 0x7e)
            return 0;
    }
    return 1;
}

static void check_table(const char *text)
{
    char err[256] = "";
    size_t entries = 0;
    int valid = 1;
    for (const char *p = text; *p != '\0';) {
        const char *comma = strchr(p, ','), *end = comma ? comma : p + strlen(p);
        const char *colon = memchr(p, ':', (size_t)(end - p));
        long au = colon != NULL ? fuzz_utf8_count(colon + 1, (size_t)(end - colon - 1)) : -1;
        if (colon == NULL || !token_ok_ref(p, (size_t)(colon - p)) || au < 1 || au > SL_AUTHOR_MAX_CHARS) {
            valid = 0;
            break;
        }
        entries++;
        p = comma ? comma + 1 : end;
    }
    sl_auth_t *a = sl_auth_create(text, NULL, NULL, err, sizeof(err));
    FUZZ_CHECKF((a != NULL) == valid, "'%s': %s, expected %s", text, a ? "taken" : err, valid ? "taken" : "refused");
    if (a == NULL) {
        FUZZ_CHECK(err[0] != '\0');
        return;
    }
    FUZZ_CHECK(sl_auth_count(a) == entries);
    for (const char *p = text; *p != '\0';) {
        const char *comma = strchr(p, ','), *end = comma ? comma : p + strlen(p);
        const char *colon = memchr(p, ':', (size_t)(end - p));
        char header[300], author[SL_AUTHOR_MAX_CHARS * 4 + 1];
        int hl = snprintf(header, sizeof(header), "Bearer %.*s", (int)(colon - p), p);
        snprintf(author, sizeof(author), "%.*s", (int)(end - colon - 1), colon + 1);
        h2o_req_t req;
        request(&req, header, (size_t)hl);
        sl_auth_who_t who;
        FUZZ_CHECKF(sl_auth_identify(a, &req, 1700000000, &who) == SL_AUTH_OK, "%s", header);
        FUZZ_CHECK(strlen(who.token) == (size_t)(colon - p) && memcmp(who.token, p, strlen(who.token)) == 0);
        /* the same token listed again for someone else: the first entry wins */
        sl_auth_result_t r = sl_auth_may_post(&who, author, "general");
        FUZZ_CHECKF(r == SL_AUTH_OK || r == SL_AUTH_FORBIDDEN, "%s as %s: %d", header, author, (int)r);
        sl_auth_who_free(&who);
        h2o_mem_clear_pool(&req.pool);
        p = comma ? comma + 1 : end;
    }
    sl_auth_destroy(a);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static sl_auth_t *auth;
    if (auth == NULL) {
        char err[256];
        FUZZ_CHECKF((auth = sl_auth_create(TOKENS, NULL, NULL, err, sizeof(err))) != NULL, "%s", err);
    }
    const char *nl = memchr(data, '\n', size);
    size_t alen = nl != NULL ? (size_t)(nl - (const char *)data) : size;
    char *author = fuzz_strndup(data, alen);
    char *value = NULL;
    size_t vlen = 0;
    if (nl != NULL) { /* exactly its bytes: ASan sees an overread */
        vlen = size - alen - 1;
        value = malloc(vlen > 0 ? vlen : 1);
        FUZZ_CHECK(value != NULL);
        memcpy(value, nl + 1, vlen);
    }
    check_header(auth, alen > 0 ? author : NULL, value, vlen);
    free(value);
    free(author);

    char *text = fuzz_strndup(data, size);
    check_table(text);
    free(text);
    return 0;
}
