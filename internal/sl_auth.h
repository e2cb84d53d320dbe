/*
 * sl_auth: bearer tokens. A token table maps each writer token to the one author it may post as
 * ("*": any author), and an optional admin token guards operators' endpoints. Beside the table,
 * a JWT verifier (sl_jwt.h) may identify writers: a valid JWT posts as its "sub", only to the
 * channels its "channels" claim covers when it has one.
 *
 * Tokens come from SLUICE_API_TOKENS ("token:author,token:author") and/or a file named by
 * SLUICE_API_TOKENS_FILE (one "token author" pair per line, '#' comments). With no token
 * configured and no JWT key, writing is open to anyone who can reach the api. Comparisons take
 * the same time whatever the token (no early exit on the first differing byte).
 */
#ifndef SL_AUTH_H
#define SL_AUTH_H

#define H2O_USE_LIBUV 0
#include <h2o.h>
#include <stddef.h>
#include <stdint.h>

#include "sl_jwt.h"

typedef struct sl_auth sl_auth_t;

typedef enum {
    SL_AUTH_OK = 0,            /* allowed (or writing is open) */
    SL_AUTH_MISSING,           /* 401: no bearer token */
    SL_AUTH_INVALID,           /* 401: unknown token, or a JWT refused (sl_auth_who_t.jwt says why) */
    SL_AUTH_FORBIDDEN,         /* 403: a valid token, for another author */
    SL_AUTH_CHANNEL_FORBIDDEN, /* 403: a JWT whose channels do not cover the post's channel */
} sl_auth_result_t;

/* Who a request's bearer is (sl_auth_identify). */
typedef struct sl_auth_who {
    sl_auth_result_t result;
    sl_jwt_result_t jwt;    /* with SL_AUTH_INVALID: the JWT's refusal (SL_JWT_OK: it was no JWT) */
    const char *token;      /* a table token: its text (points into the table); else NULL */
    const char *author;     /* who it posts as: a table token's author ("*": anyone) or a JWT's sub;
                               NULL when writing is open or the bearer is refused */
    int is_jwt;
    sl_jwt_claims_t claims; /* a JWT's claims */
} sl_auth_who_t;

/* Reads the table from tokens (may be NULL or "") and file (may be NULL or ""). jwt (may be NULL
 * or disabled) verifies JWT writers; it stays the caller's and must outlive the table. Returns
 * NULL with err filled when the text or the file is malformed or unreadable. */
sl_auth_t *sl_auth_create(const char *tokens, const char *file, sl_jwt_t *jwt, char *err, size_t errlen);
void sl_auth_destroy(sl_auth_t *a);

/* Number of writer tokens in the table. */
size_t sl_auth_count(const sl_auth_t *a);

/* 1 when writing is open: no table token and no JWT key (a NULL table is open). */
int sl_auth_open(const sl_auth_t *a);

/* The JWT verifier given to sl_auth_create (NULL if none). */
sl_jwt_t *sl_auth_jwt(const sl_auth_t *a);

/* Identifies the request's bearer token at time now (seconds since the epoch): a table token
 * (compared in constant time), else, with a JWT verifier, a JWT (one with two dots). Fills *who
 * (result included) and returns who->result: SL_AUTH_OK (writing open, or a valid token),
 * SL_AUTH_MISSING or SL_AUTH_INVALID. Always call sl_auth_who_free afterwards. Loop thread. */
sl_auth_result_t sl_auth_identify(const sl_auth_t *a, h2o_req_t *req, int64_t now, sl_auth_who_t *who);

/* Who a reader (a GET of history) is: a table token (it reads what no token is needed for), else,
 * with a JWT key, a JWT verified for audience (NULL: the configured one) from Authorization:
 * Bearer, else from ?token= (as sse takes it: EventSource sets no header); whatever it presents is
 * verified as a JWT, so a refusal says why as sse says it (token_malformed, token_expired, ...).
 * Without a JWT key a reader's token is ignored (SL_AUTH_MISSING), as sse ignores it. Fills *who
 * and returns who->result; always call sl_auth_who_free afterwards. Loop thread. */
sl_auth_result_t sl_auth_identify_reader(const sl_auth_t *a, h2o_req_t *req, int64_t now, const char *audience,
                                         sl_auth_who_t *who);

/* May an identified bearer (who->result SL_AUTH_OK) post as author to channel? SL_AUTH_OK,
 * SL_AUTH_FORBIDDEN (another author than its own) or SL_AUTH_CHANNEL_FORBIDDEN. */
sl_auth_result_t sl_auth_may_post(const sl_auth_who_t *who, const char *author, const char *channel);

void sl_auth_who_free(sl_auth_who_t *who);

/* Does the request carry exactly this token ("Authorization: Bearer <token>")? An empty or NULL
 * token means no check (SL_AUTH_OK); else SL_AUTH_MISSING or SL_AUTH_INVALID. For operators'
 * endpoints. */
sl_auth_result_t sl_auth_check_token(h2o_req_t *req, const char *token);

/* Answers 401 (with WWW-Authenticate) or 403 for a refusal, as JSON. */
void sl_auth_refuse(h2o_req_t *req, sl_auth_result_t r);

/* The same for a writer: a refused JWT gets its own code (token_expired, ...), a post to a
 * channel the JWT does not cover 403 channel_forbidden. */
void sl_auth_refuse_who(h2o_req_t *req, const sl_auth_who_t *who, sl_auth_result_t r);

/* Answers 401 for a JWT that sl_jwt_verify refused (r != SL_JWT_OK): its code (token_expired, ...)
 * and message as JSON, and WWW-Authenticate with error="invalid_token" and the code (RFC 6750
 * 3.1). For writers (sl_auth_refuse_who) and readers (sl_stream) alike. */
void sl_auth_refuse_jwt(h2o_req_t *req, sl_jwt_result_t r);

/* Answers a reader refused a private channel (r != SL_CHAN_READ_OK, sl_chanpolicy_read): 401
 * token_required (WWW-Authenticate: Bearer) or 403 channel_forbidden (error="insufficient_scope"),
 * with field (may be NULL) and a message naming channel. */
void sl_auth_refuse_read(h2o_req_t *req, sl_chan_read_t r, const char *field, const char *channel);

#endif
