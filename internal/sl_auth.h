/*
 * sl_auth: bearer tokens. A token table maps each writer token to the one author it may post as
 * ("*": any author), and an optional admin token guards operators' endpoints.
 *
 * Tokens come from SLUICE_API_TOKENS ("token:author,token:author") and/or a file named by
 * SLUICE_API_TOKENS_FILE (one "token author" pair per line, '#' comments). With no token
 * configured, writing is open to anyone who can reach the api. Comparisons take the same time
 * whatever the token (no early exit on the first differing byte).
 */
#ifndef SL_AUTH_H
#define SL_AUTH_H

#define H2O_USE_LIBUV 0
#include <h2o.h>
#include <stddef.h>

typedef struct sl_auth sl_auth_t;

typedef enum {
    SL_AUTH_OK = 0,          /* allowed (or no tokens configured) */
    SL_AUTH_MISSING,         /* 401: no bearer token */
    SL_AUTH_INVALID,         /* 401: unknown token */
    SL_AUTH_FORBIDDEN,       /* 403: a valid token, for another author */
} sl_auth_result_t;

/* Reads the table from tokens (may be NULL or "") and file (may be NULL or ""). Returns NULL with
 * err filled when the text or the file is malformed or unreadable. */
sl_auth_t *sl_auth_create(const char *tokens, const char *file, char *err, size_t errlen);
void sl_auth_destroy(sl_auth_t *a);

/* Number of writer tokens (0: writing is open). */
size_t sl_auth_count(const sl_auth_t *a);

/* May the request's bearer token post as author (NULL: as anyone its token allows, i.e. is the
 * token valid at all)? On SL_AUTH_OK with tokens configured, *token
 * (if not NULL) points at the token's text (for per-client rate limits). */
sl_auth_result_t sl_auth_check_author(const sl_auth_t *a, h2o_req_t *req, const char *author, const char **token);

/* Does the request carry exactly this token ("Authorization: Bearer <token>")? An empty or NULL
 * token means no check (SL_AUTH_OK); else SL_AUTH_MISSING or SL_AUTH_INVALID. For operators'
 * endpoints. */
sl_auth_result_t sl_auth_check_token(h2o_req_t *req, const char *token);

/* Answers 401 (with WWW-Authenticate) or 403 for a refusal, as JSON. */
void sl_auth_refuse(h2o_req_t *req, sl_auth_result_t r);

#endif
