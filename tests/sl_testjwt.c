/*
 * sl_testjwt: see sl_testjwt.h.
 */
#include "sl_testjwt.h"

#include <jansson.h>
#include <jose/jwk.h>
#include <jose/openssl.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sl_buf.h"

static void b64url(sl_buf_t *b, const void *data, size_t len)
{
    static const char map[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const unsigned char *p = data;
    for (size_t i = 0; i < len; i += 3) {
        unsigned v = (unsigned)p[i] << 16 | (i + 1 < len ? (unsigned)p[i + 1] << 8 : 0) | (i + 2 < len ? p[i + 2] : 0);
        char out[4] = {map[v >> 18 & 63], map[v >> 12 & 63], map[v >> 6 & 63], map[v & 63]};
        sl_buf_append(b, out, i + 2 < len ? 4 : i + 1 < len ? 3 : 2);
    }
}

/* The signature of the signing input in b, into sig (at least 512 bytes); its length, or 0. */
static size_t signature(const sl_buf_t *b, tu_jwt_how_t how, const void *key, size_t keylen, unsigned char *sig)
{
    unsigned char der[512];
    size_t dlen = sizeof(der);
    if (how == TU_JWT_HS256) {
        unsigned int n = 0;
        return HMAC(EVP_sha256(), key, (int)keylen, (const unsigned char *)b->data, b->len, sig, &n) != NULL ? n : 0;
    }
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = ctx != NULL && EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, (EVP_PKEY *)key) == 1 &&
             EVP_DigestSign(ctx, der, &dlen, (const unsigned char *)b->data, b->len) == 1;
    EVP_MD_CTX_free(ctx);
    if (!ok)
        return 0;
    if (how == TU_JWT_RS256) {
        memcpy(sig, der, dlen);
        return dlen;
    }
    /* ES256: JWS wants R || S, 32 bytes each, not OpenSSL's DER */
    const unsigned char *p = der;
    ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)dlen);
    ok = es != NULL && BN_bn2binpad(ECDSA_SIG_get0_r(es), sig, 32) == 32 &&
         BN_bn2binpad(ECDSA_SIG_get0_s(es), sig + 32, 32) == 32;
    ECDSA_SIG_free(es);
    return ok ? 64 : 0;
}

char *tu_jwt_sign(const char *header, const char *claims, tu_jwt_how_t how, const void *key, size_t keylen)
{
    sl_buf_t b = SL_BUF_INIT;
    unsigned char sig[512];
    size_t siglen = 0;
    b64url(&b, header, strlen(header));
    sl_buf_append(&b, ".", 1);
    b64url(&b, claims, strlen(claims));
    if (how != TU_JWT_NONE && (siglen = signature(&b, how, key, keylen, sig)) == 0) {
        sl_buf_free(&b);
        return NULL;
    }
    sl_buf_append(&b, ".", 1);
    b64url(&b, sig, siglen);
    sl_buf_append(&b, "", 1);
    return b.data;
}

char *tu_jwt_hs256(const char *secret, const char *claims)
{
    return tu_jwt_sign("{\"alg\":\"HS256\",\"typ\":\"JWT\"}", claims, TU_JWT_HS256, secret, strlen(secret));
}

json_t *tu_jwt_public_jwk(void *k, const char *kid)
{
    json_t *jwk = jose_openssl_jwk_from_EVP_PKEY(NULL, k);
    if (jwk == NULL || !jose_jwk_pub(NULL, jwk)) {
        json_decref(jwk);
        return NULL;
    }
    if (kid != NULL)
        json_object_set_new(jwk, "kid", json_string(kid));
    return jwk;
}

int tu_jwt_write_jwks(const char *path, ...)
{
    va_list ap;
    char tmp[512];
    int rc = -1;
    json_t *keys = json_array(), *jwk;
    va_start(ap, path);
    for (EVP_PKEY *k; keys != NULL && (k = va_arg(ap, EVP_PKEY *)) != NULL;) {
        const char *kid = va_arg(ap, const char *);
        if ((jwk = tu_jwt_public_jwk(k, kid)) == NULL || json_array_append_new(keys, jwk) != 0) {
            json_decref(keys);
            keys = NULL;
        }
    }
    va_end(ap);
    json_t *root = keys != NULL ? json_pack("{s:o}", "keys", keys) : NULL;
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    if (root != NULL && json_dump_file(root, tmp, JSON_COMPACT) == 0)
        rc = rename(tmp, path);
    json_decref(root);
    return rc;
}
