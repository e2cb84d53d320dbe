/*
 * sl_jwt: JSON Web Tokens (RFC 7519) in compact form, verified with libjose (Debian's
 * libjose-dev, see docs/architecture.md for why). One verifier holds the keys of a service:
 *
 * - an HS256 shared secret (SLUICE_JWT_SECRET, or the file SLUICE_JWT_SECRET_FILE), at least 32
 *   bytes (RFC 7518 3.2);
 * - RS256 and ES256 (P-256) public keys from a JWKS file (SLUICE_JWT_JWKS_FILE), read again by
 *   sl_jwt_reload (the services call it on SIGHUP).
 *
 * A token's "alg" picks the kind of key and nothing else: HS256 only ever uses the secret (never a
 * public key's bytes), RS256 only RSA keys, ES256 only P-256 keys; "none" and every other alg are
 * refused. With a "kid", only the keys with that kid are tried; without, every key of the kind.
 * The token is at most SL_JWT_MAX_BYTES, checked before anything is decoded. After the signature
 * come the claims: "exp" (required) not past, "nbf" and "iat" not in the future, each with the
 * configured leeway; "iss" and "aud" equal to the configured ones when they are set; "sub"
 * required; "name" and "channels" optional.
 *
 * Threading: sl_jwt_verify and sl_jwt_reload run on one thread (a service's event loop), so a
 * reload swaps the keys between two verifications, never during one. Nothing here blocks except
 * sl_jwt_create and sl_jwt_reload, which read small local files.
 */
#ifndef SL_JWT_H
#define SL_JWT_H

#include <stddef.h>
#include <stdint.h>

#include "sl_buf.h"
#include "sl_chanpolicy.h"
#include "sl_config.h"

#define SL_JWT_MAX_BYTES 8192  /* a longer token is refused unread (token_too_large) */
#define SL_JWT_SUB_MAX 255     /* bytes of "sub" */
#define SL_JWT_NAME_MAX 255    /* bytes of "name" */
#define SL_JWT_MAX_KEYS 64     /* usable keys in a JWKS file */

typedef struct sl_jwt sl_jwt_t;

typedef struct sl_jwt_conf {
    const char *secret;      /* HS256 secret (NULL or "": none) */
    const char *secret_file; /* a file holding it (one trailing newline is dropped); not with secret */
    const char *jwks_file;   /* JWKS of RS256/ES256 public keys (NULL or "": none) */
    const char *issuer;      /* required "iss" (NULL or "": not checked) */
    const char *audience;    /* required in "aud" (NULL or "": not checked) */
    long long leeway_s;      /* clock skew allowed on exp, nbf and iat */
} sl_jwt_conf_t;

/* Their entries in a service's table of options (sl_config.h), filling *c. */
#define SL_JWT_OPTIONS(c)                                                                                     \
    {"jwt-secret", "SLUICE_JWT_SECRET", SL_OPT_STR, &(c)->secret, "", 0, 0,                                    \
     "HS256 secret for JWTs, at least 32 bytes (empty: no HS256)"},                                           \
    {"jwt-secret-file", "SLUICE_JWT_SECRET_FILE", SL_OPT_STR, &(c)->secret_file, "", 0, 0,                     \
     "file holding the HS256 secret (read again on SIGHUP)"},                                                  \
    {"jwt-jwks-file", "SLUICE_JWT_JWKS_FILE", SL_OPT_STR, &(c)->jwks_file, "", 0, 0,                           \
     "JWKS file of RS256/ES256 public keys (read again on SIGHUP; empty: none)"},                              \
    {"jwt-issuer", "SLUICE_JWT_ISSUER", SL_OPT_STR, &(c)->issuer, "", 0, 0,                                    \
     "required iss of JWTs (empty: not checked)"},                                                             \
    {"jwt-audience", "SLUICE_JWT_AUDIENCE", SL_OPT_STR, &(c)->audience, "", 0, 0,                              \
     "required aud of JWTs (empty: not checked)"},                                                             \
    {"jwt-leeway-s", "SLUICE_JWT_LEEWAY_S", SL_OPT_INT, &(c)->leeway_s, "30", 0, 3600,                         \
     "clock skew allowed on a JWT's exp, nbf and iat, in seconds"}

typedef enum {
    SL_JWT_OK = 0,
    SL_JWT_TOO_LARGE,       /* over SL_JWT_MAX_BYTES */
    SL_JWT_MALFORMED,       /* not three base64url parts, a header or payload that is no JSON object */
    SL_JWT_UNSUPPORTED_ALG, /* "none", an alg other than HS256/RS256/ES256, or one with no key here */
    SL_JWT_UNKNOWN_KEY,     /* a "kid" that names no key of the alg's kind */
    SL_JWT_BAD_SIGNATURE,
    SL_JWT_EXPIRED,         /* exp + leeway is past */
    SL_JWT_NOT_YET_VALID,   /* nbf or iat - leeway is still to come */
    SL_JWT_WRONG_ISSUER,
    SL_JWT_WRONG_AUDIENCE,
    SL_JWT_INVALID_CLAIMS,  /* sub or exp missing, a claim of the wrong type, a bad channels entry */
    SL_JWT__COUNT
} sl_jwt_result_t;

/* What a verified token says. Owned by the caller: sl_jwt_claims_free. */
typedef struct sl_jwt_claims {
    char *sub;             /* 1 to SL_JWT_SUB_MAX bytes, no control characters */
    char *name;            /* the "name" claim, or NULL */
    int has_channels;      /* the token has a "channels" claim */
    sl_chanset_t channels; /* its names and prefix* patterns (empty without the claim) */
    int64_t exp;           /* seconds since the epoch */
} sl_jwt_claims_t;

/* Reads the keys. Returns NULL with err filled when a setting is wrong (secret and secret file
 * both set, a secret under 32 bytes, an unreadable file, a JWKS without a usable key) or memory
 * ran out. With neither secret nor JWKS the verifier is disabled (sl_jwt_enabled is 0). The conf's
 * strings must outlive the verifier. */
sl_jwt_t *sl_jwt_create(const sl_jwt_conf_t *conf, char *err, size_t errlen);
void sl_jwt_destroy(sl_jwt_t *j);

/* 1 when some key is configured: tokens may be verified. A NULL verifier is disabled. */
int sl_jwt_enabled(const sl_jwt_t *j);

/* Verifies token (len bytes, not NUL-terminated) at time now (seconds since the epoch). On
 * SL_JWT_OK *out holds the claims (free them with sl_jwt_claims_free); on any other result *out is
 * zeroed and owns nothing. Counts the result for sl_jwt_metrics. */
sl_jwt_result_t sl_jwt_verify(sl_jwt_t *j, const char *token, size_t len, int64_t now, sl_jwt_claims_t *out);
/* The same with another required "aud": audience (NULL: the configured one; "": not checked). For
 * a service that takes two kinds of token with the same keys (the api: writers' tokens of its
 * audience, readers' of theirs). */
sl_jwt_result_t sl_jwt_verify_as(sl_jwt_t *j, const char *token, size_t len, int64_t now, const char *audience,
                                 sl_jwt_claims_t *out);

void sl_jwt_claims_free(sl_jwt_claims_t *c);

/* The first second (since the epoch) at which sl_jwt_verify refuses a token of these claims as
 * expired: exp + the leeway. Whatever a token opened ends then (a reader's stream). */
int64_t sl_jwt_valid_until(const sl_jwt_t *j, const sl_jwt_claims_t *c);

/* Reads the secret file and the JWKS file again and, when both are good, uses their keys from
 * now on; otherwise keeps the keys it had. Returns 0, or -1 with err filled. */
int sl_jwt_reload(sl_jwt_t *j, char *err, size_t errlen);

/* For sl_http_on_sighup: sl_jwt_reload with a log line saying how it went. */
void sl_jwt_on_sighup(void *jwt);

/* The JSON error code of a refusal ("token_expired", "token_bad_signature", ...; "ok" for
 * SL_JWT_OK) and a sentence for its message. */
const char *sl_jwt_code(sl_jwt_result_t r);
const char *sl_jwt_message(sl_jwt_result_t r);

/* Appends the verifier's metrics (Prometheus text): verifications by result, keys in use,
 * reloads by outcome. Nothing when the verifier is disabled. */
void sl_jwt_metrics(const sl_jwt_t *j, sl_buf_t *b);

#endif
