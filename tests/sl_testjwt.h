/*
 * JWTs for tests, signed without libjose (OpenSSL's HMAC and EVP_DigestSign, our own base64url),
 * so that a mistake shared by signer and verifier cannot hide. Nothing here calls Check: a NULL
 * answer is for the caller to assert.
 */
#ifndef SL_TESTJWT_H
#define SL_TESTJWT_H

#include <stddef.h>

typedef enum { TU_JWT_HS256, TU_JWT_RS256, TU_JWT_ES256, TU_JWT_NONE } tu_jwt_how_t;

/* base64url(header).base64url(claims).signature, malloc'd. how says how to sign: HS256 with key
 * (keylen bytes of secret), RS256 or ES256 (P-256, R||S) with key an EVP_PKEY *, NONE: an empty
 * signature. The header and claims are taken as they are (any bytes). NULL when signing fails. */
char *tu_jwt_sign(const char *header, const char *claims, tu_jwt_how_t how, const void *key, size_t keylen);

/* An HS256 token ({"alg":"HS256","typ":"JWT"}) of claims with secret. */
char *tu_jwt_hs256(const char *secret, const char *claims);

/* The public JWK (libjose's reading of an EVP_PKEY *) of key k, with "kid" when kid is not NULL;
 * NULL on failure. The caller owns it (json_decref). */
struct json_t *tu_jwt_public_jwk(void *k, const char *kid);

/* Writes {"keys":[...]} of the NULL-terminated list of (EVP_PKEY *key, const char *kid) pairs to
 * path, whole or not at all (a temporary file renamed: a service reading it never sees half).
 * 0, or -1 on failure. */
int tu_jwt_write_jwks(const char *path, ...);

#endif
