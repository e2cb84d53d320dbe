/*
 * sl_auth: see sl_auth.h.
 */
#include "sl_auth.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include "sl_http.h"
#include "sl_log.h"
#include "sl_message.h"

struct entry {
    char *token, *author;
    unsigned char digest[SHA256_DIGEST_LENGTH]; /* of token: what a presented token is compared with */
};

struct sl_auth {
    struct entry *e;
    size_t n, cap;
    sl_jwt_t *jwt; /* the caller's; NULL: no JWT writers */
};

static int add(sl_auth_t *a, const char *token, size_t tlen, const char *author, size_t alen)
{
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 8;
        struct entry *e = realloc(a->e, cap * sizeof(*e));
        if (e == NULL)
            return -1;
        a->e = e;
        a->cap = cap;
    }
    struct entry *e = &a->e[a->n];
    if ((e->token = strndup(token, tlen)) == NULL || (e->author = strndup(author, alen)) == NULL) {
        free(e->token);
        return -1;
    }
    SHA256((const unsigned char *)token, tlen, e->digest);
    a->n++;
    return 0;
}

static int token_ok(const char *t, size_t len)
{
    if (len < 8 || len > 256)
        return 0;
    for (size_t i = 0; i < len; i++) {
        if (!isgraph((unsigned char)t[i]))
            return 0;
    }
    return 1;
}

static int add_checked(sl_auth_t *a, const char *t, size_t tl, const char *au, size_t al, const char *where,
                       char *err, size_t errlen)
{
    if (!token_ok(t, tl)) {
        snprintf(err, errlen, "%s: a token must be 8 to 256 visible characters", where);
        return -1;
    }
    if (al == 0 || sl_utf8_count(au, al) < 1 || sl_utf8_count(au, al) > SL_AUTHOR_MAX_CHARS) {
        snprintf(err, errlen, "%s: an author must be 1 to %d characters (or *)", where, SL_AUTHOR_MAX_CHARS);
        return -1;
    }
    if (add(a, t, tl, au, al) != 0) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

sl_auth_t *sl_auth_create(const char *tokens, const char *file, sl_jwt_t *jwt, char *err, size_t errlen)
{
    sl_auth_t *a = calloc(1, sizeof(*a));
    if (a == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    a->jwt = jwt;
    for (const char *p = tokens; p != NULL && *p != '\0';) {
        const char *comma = strchr(p, ','), *end = comma ? comma : p + strlen(p);
        const char *colon = memchr(p, ':', (size_t)(end - p));
        if (colon == NULL) {
            snprintf(err, errlen, "SLUICE_API_TOKENS: each entry is token:author");
            goto Fail;
        }
        if (add_checked(a, p, (size_t)(colon - p), colon + 1, (size_t)(end - colon - 1), "SLUICE_API_TOKENS", err,
                        errlen) != 0)
            goto Fail;
        p = comma ? comma + 1 : end;
    }
    if (file != NULL && *file != '\0') {
        FILE *f = fopen(file, "r");
        char line[1024], where[300];
        int lineno = 0;
        if (f == NULL) {
            snprintf(err, errlen, "SLUICE_API_TOKENS_FILE %s: %s", file, strerror(errno));
            goto Fail;
        }
        while (fgets(line, sizeof(line), f) != NULL) {
            char *s = line, *t, *au;
            lineno++;
            s[strcspn(s, "\r\n")] = '\0';
            while (isspace((unsigned char)*s))
                s++;
            if (*s == '\0' || *s == '#')
                continue;
            t = s;
            while (*s != '\0' && !isspace((unsigned char)*s))
                s++;
            size_t tl = (size_t)(s - t);
            while (isspace((unsigned char)*s))
                s++;
            au = s;
            size_t al = strlen(au);
            while (al > 0 && isspace((unsigned char)au[al - 1]))
                al--;
            snprintf(where, sizeof(where), "%s line %d", file, lineno);
            if (add_checked(a, t, tl, au, al, where, err, errlen) != 0) {
                fclose(f);
                goto Fail;
            }
        }
        fclose(f);
    }
    return a;
Fail:
    sl_auth_destroy(a);
    return NULL;
}

void sl_auth_destroy(sl_auth_t *a)
{
    if (a == NULL)
        return;
    for (size_t i = 0; i < a->n; i++) {
        free(a->e[i].token);
        free(a->e[i].author);
    }
    free(a->e);
    free(a);
}

size_t sl_auth_count(const sl_auth_t *a)
{
    return a != NULL ? a->n : 0;
}

/* A presented token matches a digest: both are fixed-length SHA-256 digests compared in constant
 * time, so the time taken says nothing of the configured token's length or bytes (comparing the
 * tokens themselves showed their length). */
static int same(const unsigned char *digest, const unsigned char *presented)
{
    return CRYPTO_memcmp(digest, presented, SHA256_DIGEST_LENGTH) == 0;
}

int sl_auth_open(const sl_auth_t *a)
{
    return a == NULL || (a->n == 0 && !sl_jwt_enabled(a->jwt));
}

sl_jwt_t *sl_auth_jwt(const sl_auth_t *a)
{
    return a != NULL ? a->jwt : NULL;
}

/* Two dots: the compact form of a JWS (a table token never needs that shape to be told apart: it
 * is looked up first). */
static int looks_like_jwt(const char *t, size_t len)
{
    const char *d = memchr(t, '.', len);
    return d != NULL && memchr(d + 1, '.', len - (size_t)(d + 1 - t)) != NULL;
}

/* The table's entry of token t, compared in constant time (NULL: none). */
static const struct entry *find(const sl_auth_t *a, const char *t, size_t len)
{
    unsigned char d[SHA256_DIGEST_LENGTH];
    const struct entry *found = NULL;
    SHA256((const unsigned char *)t, len, d);
    for (size_t i = 0; i < a->n; i++) { /* no early exit: the time says nothing of the tokens */
        if (same(a->e[i].digest, d) && found == NULL)
            found = &a->e[i];
    }
    return found;
}

/* who is t, a table token? Fills who and returns 1 when it is. */
static int table_token(const sl_auth_t *a, const char *t, size_t len, sl_auth_who_t *who)
{
    const struct entry *found = find(a, t, len);
    if (found == NULL)
        return 0;
    who->token = found->token;
    who->author = found->author;
    who->result = SL_AUTH_OK;
    return 1;
}

/* who is the JWT t, verified for audience (NULL: the configured one)? */
static sl_auth_result_t jwt_token(const sl_auth_t *a, const char *t, size_t len, int64_t now, const char *audience,
                                  sl_auth_who_t *who)
{
    if ((who->jwt = sl_jwt_verify_as(a->jwt, t, len, now, audience, &who->claims)) != SL_JWT_OK) {
        SL_DEBUG("event=jwt_refused code=%s", sl_jwt_code(who->jwt));
        return who->result = SL_AUTH_INVALID;
    }
    who->is_jwt = 1;
    who->author = who->claims.sub;
    return who->result = SL_AUTH_OK;
}

sl_auth_result_t sl_auth_identify(const sl_auth_t *a, h2o_req_t *req, int64_t now, sl_auth_who_t *who)
{
    size_t len = 0;
    const char *t;
    memset(who, 0, sizeof(*who));
    if (sl_auth_open(a))
        return who->result = SL_AUTH_OK;
    if ((t = sl_http_bearer(req, &len)) == NULL)
        return who->result = SL_AUTH_MISSING;
    if (table_token(a, t, len, who))
        return SL_AUTH_OK;
    if (!sl_jwt_enabled(a->jwt) || !looks_like_jwt(t, len))
        return who->result = SL_AUTH_INVALID;
    return jwt_token(a, t, len, now, NULL, who);
}

sl_auth_result_t sl_auth_identify_reader(const sl_auth_t *a, h2o_req_t *req, int64_t now, const char *audience,
                                         sl_auth_who_t *who)
{
    size_t len = 0;
    h2o_iovec_t v;
    const char *t;
    int q;
    memset(who, 0, sizeof(*who));
    who->result = SL_AUTH_MISSING;
    if (sl_auth_open(a))
        return who->result = SL_AUTH_OK;
    if ((t = sl_http_bearer(req, &len)) != NULL && table_token(a, t, len, who))
        return SL_AUTH_OK;
    if (!sl_jwt_enabled(a->jwt)) /* nothing to verify a reader's token with: ignored */
        return SL_AUTH_MISSING;
    if (t == NULL && (q = sl_http_query(req, "token", &v)) != 0) {
        t = q > 0 ? v.base : "";
        len = q > 0 ? v.len : 0;
    }
    return t != NULL ? jwt_token(a, t, len, now, audience, who) : SL_AUTH_MISSING;
}

sl_auth_result_t sl_auth_may_post(const sl_auth_who_t *who, const char *author, const char *channel)
{
    if (who->result != SL_AUTH_OK)
        return who->result;
    if (who->author == NULL) /* writing is open */
        return SL_AUTH_OK;
    if (strcmp(who->author, "*") != 0 || who->is_jwt) {
        if (strcmp(who->author, author) != 0)
            return SL_AUTH_FORBIDDEN;
    }
    if (who->is_jwt && who->claims.has_channels && !sl_chanset_covers(&who->claims.channels, channel, strlen(channel)))
        return SL_AUTH_CHANNEL_FORBIDDEN;
    return SL_AUTH_OK;
}

void sl_auth_who_free(sl_auth_who_t *who)
{
    sl_jwt_claims_free(&who->claims);
}

sl_auth_result_t sl_auth_check_token(h2o_req_t *req, const char *token)
{
    size_t len = 0;
    const char *t;
    if (token == NULL || *token == '\0')
        return SL_AUTH_OK;
    if ((t = sl_http_bearer(req, &len)) == NULL)
        return SL_AUTH_MISSING;
    unsigned char want[SHA256_DIGEST_LENGTH], got[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)token, strlen(token), want);
    SHA256((const unsigned char *)t, len, got);
    return same(want, got) ? SL_AUTH_OK : SL_AUTH_INVALID;
}

void sl_auth_refuse(h2o_req_t *req, sl_auth_result_t r)
{
    if (r == SL_AUTH_FORBIDDEN) {
        sl_http_fail(req, 403, "forbidden", NULL, "this token may not post as this author", 0);
        return;
    }
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_WWW_AUTHENTICATE, NULL, H2O_STRLIT("Bearer realm=\"sluice\""));
    sl_http_fail(req, 401, r == SL_AUTH_MISSING ? "unauthorized" : "invalid_token", NULL,
                 r == SL_AUTH_MISSING ? "an Authorization: Bearer token is required" : "the token is not valid", 0);
}

void sl_auth_refuse_who(h2o_req_t *req, const sl_auth_who_t *who, sl_auth_result_t r)
{
    if (r == SL_AUTH_CHANNEL_FORBIDDEN) {
        sl_http_fail(req, 403, "channel_forbidden", "channel", "this token's channels do not cover this channel", 0);
        return;
    }
    if (r != SL_AUTH_INVALID || who->jwt == SL_JWT_OK) {
        sl_auth_refuse(req, r);
        return;
    }
    sl_auth_refuse_jwt(req, who->jwt);
}

void sl_auth_refuse_jwt(h2o_req_t *req, sl_jwt_result_t r)
{
    /* RFC 6750 3.1: the scheme's error, and which check failed */
    char *v = h2o_mem_alloc_pool(&req->pool, 128);
    int n = snprintf(v, 128, "Bearer realm=\"sluice\", error=\"invalid_token\", error_description=\"%s\"",
                     sl_jwt_code(r));
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_WWW_AUTHENTICATE, NULL, v, (size_t)n);
    sl_http_fail(req, 401, sl_jwt_code(r), NULL, sl_jwt_message(r), 0);
}

void sl_auth_refuse_read(h2o_req_t *req, sl_chan_read_t r, const char *field, const char *channel)
{
    char msg[200];
    int forbidden = r == SL_CHAN_READ_FORBIDDEN;
    snprintf(msg, sizeof(msg), "%s: %s", channel, sl_chan_read_message(r));
    if (forbidden)
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_WWW_AUTHENTICATE, NULL,
                       H2O_STRLIT("Bearer realm=\"sluice\", error=\"insufficient_scope\""));
    else
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_WWW_AUTHENTICATE, NULL,
                       H2O_STRLIT("Bearer realm=\"sluice\""));
    sl_http_fail(req, sl_chan_read_status(r), sl_chan_read_code(r), field, msg, 0);
}
