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
#include "sl_message.h"

struct entry {
    char *token, *author;
    unsigned char digest[SHA256_DIGEST_LENGTH]; /* of token: what a presented token is compared with */
};

struct sl_auth {
    struct entry *e;
    size_t n, cap;
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

sl_auth_t *sl_auth_create(const char *tokens, const char *file, char *err, size_t errlen)
{
    sl_auth_t *a = calloc(1, sizeof(*a));
    if (a == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
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

static const char *bearer(h2o_req_t *req, size_t *len)
{
    size_t hl = 0;
    const char *h = sl_http_header(req, "authorization", &hl);
    if (h == NULL || hl < 7 || strncasecmp(h, "Bearer ", 7) != 0)
        return NULL;
    h += 7;
    hl -= 7;
    while (hl > 0 && *h == ' ') {
        h++;
        hl--;
    }
    *len = hl;
    return h;
}

sl_auth_result_t sl_auth_check_author(const sl_auth_t *a, h2o_req_t *req, const char *author, const char **token)
{
    size_t len = 0;
    const char *t;
    const struct entry *found = NULL;
    if (a == NULL || a->n == 0)
        return SL_AUTH_OK;
    if ((t = bearer(req, &len)) == NULL)
        return SL_AUTH_MISSING;
    unsigned char d[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)t, len, d);
    for (size_t i = 0; i < a->n; i++) { /* no early exit: the time says nothing of the tokens */
        if (same(a->e[i].digest, d) && found == NULL)
            found = &a->e[i];
    }
    if (found == NULL)
        return SL_AUTH_INVALID;
    if (author != NULL && strcmp(found->author, "*") != 0 && strcmp(found->author, author) != 0)
        return SL_AUTH_FORBIDDEN;
    if (token != NULL)
        *token = found->token;
    return SL_AUTH_OK;
}

sl_auth_result_t sl_auth_check_token(h2o_req_t *req, const char *token)
{
    size_t len = 0;
    const char *t;
    if (token == NULL || *token == '\0')
        return SL_AUTH_OK;
    if ((t = bearer(req, &len)) == NULL)
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
