/*
 * sl_jwt: see sl_jwt.h.
 *
 * libjose verifies the signature (HMAC compared with CRYPTO_memcmp, RSA keys under 2048 bits
 * refused); everything around it is ours, on purpose: the size bound, the strict parse of the
 * compact form (base64url alphabet, canonical lengths, JSON objects without duplicate members),
 * and the choice of key. libjose would take the alg from the header and check it against the key's
 * "alg" with a comparison that only refuses some mismatches (jose_jws_ver_io in lib/jws.c of
 * libjose 11), so sl_jwt never lets the header choose a key: the alg names a kind of key, only
 * keys of that kind are tried, and each is handed to libjose with its "alg" set.
 */
#include "sl_jwt.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <jose/b64.h>
#include <jose/jwk.h>
#include <jose/jws.h>
#include <jose/openssl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "sl_log.h"
#include "sl_metrics.h"

#define SECRET_MIN 32         /* bytes: RFC 7518 3.2, as long as SHA-256's output */
#define SECRET_MAX 1024       /* libjose's largest HMAC key */
#define KEY_FILE_MAX (1 << 20) /* a JWKS or secret file larger than this is a mistake */

enum kind { K_HS256, K_RS256, K_ES256, K__COUNT };
static const char *const kind_alg[K__COUNT] = {"HS256", "RS256", "ES256"};

struct key {
    json_t *jwk; /* public JWK, its "alg" set to the one it verifies */
    enum kind kind;
    char *kid;   /* NULL: none */
};

struct keyset {
    json_t *secret; /* {"kty":"oct","k":…,"alg":"HS256"}, or NULL */
    struct key *keys;
    size_t nkeys;
};

struct sl_jwt {
    sl_jwt_conf_t conf;
    struct keyset ks;
    jose_cfg_t *cfg;     /* libjose's errors land in jose_err, not on stderr */
    char jose_err[256];
    uint64_t results[SL_JWT__COUNT];
    uint64_t reloads_ok, reloads_failed;
};

static int set(const char *s)
{
    return s != NULL && *s != '\0';
}

static void on_jose_error(void *misc, const char *file, int line, uint64_t err, const char *fmt, va_list ap)
{
    sl_jwt_t *j = misc;
    (void)file;
    (void)line;
    (void)err;
    vsnprintf(j->jose_err, sizeof(j->jose_err), fmt, ap);
}

/* ---- keys --------------------------------------------------------------------------------------- */

static void keyset_free(struct keyset *ks)
{
    json_decref(ks->secret);
    for (size_t i = 0; i < ks->nkeys; i++) {
        json_decref(ks->keys[i].jwk);
        free(ks->keys[i].kid);
    }
    free(ks->keys);
    memset(ks, 0, sizeof(*ks));
}

/* The whole of a small file, NUL-terminated, in a malloc'd buffer; NULL with err filled. */
static char *read_small_file(const char *path, const char *what, size_t *len, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t n = 0;
    if (f == NULL) {
        snprintf(err, errlen, "%s %s: %s", what, path, strerror(errno));
        return NULL;
    }
    if ((buf = malloc(KEY_FILE_MAX + 1)) == NULL) {
        snprintf(err, errlen, "out of memory");
        fclose(f);
        return NULL;
    }
    n = fread(buf, 1, KEY_FILE_MAX + 1, f);
    int bad = ferror(f);
    fclose(f);
    if (bad || n > KEY_FILE_MAX) {
        snprintf(err, errlen, "%s %s: %s", what, path, bad ? "read error" : "larger than 1 MiB");
        OPENSSL_cleanse(buf, n);
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

static int load_secret(const sl_jwt_conf_t *c, struct keyset *ks, char *err, size_t errlen)
{
    char *file = NULL;
    const char *s = c->secret;
    size_t len = set(s) ? strlen(s) : 0;
    if (set(c->secret) && set(c->secret_file)) {
        snprintf(err, errlen, "SLUICE_JWT_SECRET and SLUICE_JWT_SECRET_FILE are both set: keep one");
        return -1;
    }
    if (set(c->secret_file)) {
        if ((file = read_small_file(c->secret_file, "SLUICE_JWT_SECRET_FILE", &len, err, errlen)) == NULL)
            return -1;
        if (len > 0 && file[len - 1] == '\n')
            len--;
        if (len > 0 && file[len - 1] == '\r')
            len--;
        s = file;
    }
    if (s == NULL || (len == 0 && file == NULL))
        return 0;
    int ret = -1;
    if (len < SECRET_MIN || len > SECRET_MAX) {
        snprintf(err, errlen, "the JWT secret (%s) must be %d to %d bytes, not %zu",
                 file != NULL ? "SLUICE_JWT_SECRET_FILE" : "SLUICE_JWT_SECRET", SECRET_MIN, SECRET_MAX, len);
    } else if ((ks->secret = json_pack("{s:s,s:o,s:s}", "kty", "oct", "k", jose_b64_enc(s, len), "alg", "HS256")) ==
               NULL) {
        snprintf(err, errlen, "out of memory");
    } else {
        ret = 0;
    }
    if (file != NULL) {
        OPENSSL_cleanse(file, len);
        free(file);
    }
    return ret;
}

/* Why a JWKS entry cannot verify RS256 or ES256 (NULL: it can, *kind says which). */
static const char *unusable(sl_jwt_t *j, json_t *k, enum kind *kind)
{
    const char *kty = NULL, *alg = NULL, *use = NULL, *crv = NULL;
    json_t *ops = NULL;
    if (!json_is_object(k) || json_unpack(k, "{s:s,s?s,s?s,s?s,s?o}", "kty", &kty, "alg", &alg, "use", &use, "crv",
                                          &crv, "key_ops", &ops) != 0)
        return "not a JWK (kty, and alg, use, crv as strings)";
    if (use != NULL && strcmp(use, "sig") != 0)
        return "not a signature key (use)";
    if (ops != NULL) {
        size_t i;
        json_t *op;
        int verify = 0;
        if (!json_is_array(ops))
            return "key_ops is not an array";
        json_array_foreach(ops, i, op) verify |= json_is_string(op) && strcmp(json_string_value(op), "verify") == 0;
        if (!verify)
            return "not a verification key (key_ops)";
    }
    if (strcmp(kty, "RSA") == 0)
        *kind = K_RS256;
    else if (strcmp(kty, "EC") == 0)
        *kind = K_ES256;
    else
        return strcmp(kty, "oct") == 0 ? "a symmetric key (HS256 takes only SLUICE_JWT_SECRET)"
                                       : "neither an RSA nor an EC key";
    if (alg != NULL && strcmp(alg, kind_alg[*kind]) != 0)
        return *kind == K_RS256 ? "an RSA key for another alg than RS256" : "an EC key for another alg than ES256";
    if (*kind == K_ES256 && (crv == NULL || strcmp(crv, "P-256") != 0))
        return "an EC key on another curve than P-256 (ES256)";
    j->jose_err[0] = '\0';
    EVP_PKEY *pk = jose_openssl_jwk_to_EVP_PKEY(j->cfg, k);
    if (pk == NULL)
        return j->jose_err[0] != '\0' ? j->jose_err : "its key material does not decode";
    int bits = EVP_PKEY_get_bits(pk);
    EVP_PKEY_free(pk);
    if (*kind == K_RS256 && bits < 2048)
        return "an RSA key under 2048 bits";
    return NULL;
}

static int load_jwks(sl_jwt_t *j, struct keyset *ks, char *err, size_t errlen)
{
    const char *path = j->conf.jwks_file;
    size_t len = 0, i;
    json_error_t je;
    json_t *root = NULL, *keys, *k;
    int ret = -1;
    char *text;
    if (!set(path))
        return 0;
    if ((text = read_small_file(path, "SLUICE_JWT_JWKS_FILE", &len, err, errlen)) == NULL)
        return -1;
    root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    free(text);
    if (root == NULL) {
        snprintf(err, errlen, "SLUICE_JWT_JWKS_FILE %s: not JSON (line %d: %s)", path, je.line, je.text);
        return -1;
    }
    if (!json_is_array(keys = json_object_get(root, "keys"))) {
        snprintf(err, errlen, "SLUICE_JWT_JWKS_FILE %s: not a JWKS (an object with a \"keys\" array)", path);
        goto Exit;
    }
    if ((ks->keys = calloc(json_array_size(keys) + 1, sizeof(*ks->keys))) == NULL) {
        snprintf(err, errlen, "out of memory");
        goto Exit;
    }
    json_array_foreach(keys, i, k)
    {
        enum kind kind = K_RS256;
        const char *why = unusable(j, k, &kind), *kid = NULL;
        json_unpack(k, "{s?s}", "kid", &kid);
        if (why != NULL) {
            char q[300], qk[80];
            SL_WARN("event=jwks_key_skipped file=%s index=%zu kid=%s reason=%s", path, i,
                    sl_log_quote(qk, sizeof(qk), kid != NULL ? kid : ""), sl_log_quote(q, sizeof(q), why));
            continue;
        }
        if (ks->nkeys == SL_JWT_MAX_KEYS) {
            snprintf(err, errlen, "SLUICE_JWT_JWKS_FILE %s: more than %d usable keys", path, SL_JWT_MAX_KEYS);
            goto Exit;
        }
        struct key *key = &ks->keys[ks->nkeys];
        /* only the public part, and the one alg this key verifies */
        if ((key->jwk = json_deep_copy(k)) == NULL || !jose_jwk_pub(j->cfg, key->jwk) ||
            json_object_set_new(key->jwk, "alg", json_string(kind_alg[kind])) != 0 ||
            (kid != NULL && (key->kid = strdup(kid)) == NULL)) {
            json_decref(key->jwk);
            key->jwk = NULL;
            snprintf(err, errlen, "out of memory");
            goto Exit;
        }
        key->kind = kind;
        ks->nkeys++;
    }
    if (ks->nkeys == 0) {
        snprintf(err, errlen, "SLUICE_JWT_JWKS_FILE %s: no RS256 or ES256 (P-256) signature key", path);
        goto Exit;
    }
    ret = 0;
Exit:
    json_decref(root);
    return ret;
}

static int load(sl_jwt_t *j, struct keyset *ks, char *err, size_t errlen)
{
    memset(ks, 0, sizeof(*ks));
    if (load_secret(&j->conf, ks, err, errlen) != 0 || load_jwks(j, ks, err, errlen) != 0) {
        keyset_free(ks);
        return -1;
    }
    return 0;
}

sl_jwt_t *sl_jwt_create(const sl_jwt_conf_t *conf, char *err, size_t errlen)
{
    sl_jwt_t *j = calloc(1, sizeof(*j));
    if (j == NULL || (j->cfg = jose_cfg()) == NULL) {
        free(j);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    j->conf = *conf;
    jose_cfg_set_err_func(j->cfg, on_jose_error, j);
    if (load(j, &j->ks, err, errlen) != 0) {
        sl_jwt_destroy(j);
        return NULL;
    }
    return j;
}

void sl_jwt_destroy(sl_jwt_t *j)
{
    if (j == NULL)
        return;
    keyset_free(&j->ks);
    jose_cfg_decref(j->cfg);
    free(j);
}

int sl_jwt_enabled(const sl_jwt_t *j)
{
    return j != NULL && (j->ks.secret != NULL || j->ks.nkeys > 0);
}

int sl_jwt_reload(sl_jwt_t *j, char *err, size_t errlen)
{
    struct keyset ks;
    if (load(j, &ks, err, errlen) != 0) {
        j->reloads_failed++;
        return -1;
    }
    keyset_free(&j->ks);
    j->ks = ks;
    j->reloads_ok++;
    return 0;
}

void sl_jwt_on_sighup(void *jwt)
{
    sl_jwt_t *j = jwt;
    char err[512], q[600];
    if (j == NULL)
        return;
    if (sl_jwt_reload(j, err, sizeof(err)) != 0) {
        SL_ERROR("event=jwt_keys_reload_failed error=%s keeping=old_keys", sl_log_quote(q, sizeof(q), err));
        return;
    }
    SL_INFO("event=jwt_keys_reloaded hs256=%d jwks_keys=%zu", j->ks.secret != NULL, j->ks.nkeys);
}

/* ---- tokens ------------------------------------------------------------------------------------- */

static int b64url_char(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
}

/* A base64url segment without padding (a length of 1 modulo 4 is never one), empty only when
 * allowed. */
static int b64url_ok(const char *s, size_t len, int may_be_empty)
{
    if ((len == 0 && !may_be_empty) || len % 4 == 1)
        return 0;
    for (size_t i = 0; i < len; i++) {
        if (!b64url_char((unsigned char)s[i]))
            return 0;
    }
    return 1;
}

/* The JSON object a base64url segment (NUL-terminated) encodes, duplicate members refused. */
static json_t *decode_object(const char *seg, size_t len)
{
    char buf[SL_JWT_MAX_BYTES];
    size_t n = jose_b64_dec_buf(seg, len, buf, sizeof(buf));
    if (n == SIZE_MAX)
        return NULL;
    json_t *o = json_loadb(buf, n, JSON_REJECT_DUPLICATES, NULL);
    if (o != NULL && !json_is_object(o)) {
        json_decref(o);
        return NULL;
    }
    return o;
}

static int verifies(sl_jwt_t *j, const json_t *jws, const json_t *jwk)
{
    return jose_jws_ver(j->cfg, jws, NULL, jwk, false);
}

static sl_jwt_result_t check_signature(sl_jwt_t *j, const json_t *hdr, const json_t *jws)
{
    const char *alg = NULL, *kid = NULL;
    enum kind kind;
    if (json_unpack((json_t *)hdr, "{s:s,s?s}", "alg", &alg, "kid", &kid) != 0)
        return SL_JWT_MALFORMED;
    /* crit names extensions the token needs understood (we understand none); b64=false would
     * sign the payload unencoded (RFC 7797) */
    if (json_object_get(hdr, "crit") != NULL || json_object_get(hdr, "b64") != NULL)
        return SL_JWT_UNSUPPORTED_ALG;
    for (kind = 0; kind < K__COUNT && strcmp(alg, kind_alg[kind]) != 0; kind++)
        ;
    if (kind == K__COUNT)
        return SL_JWT_UNSUPPORTED_ALG; /* "none", "HS384", "PS256", anything else */
    if (kind == K_HS256) {
        if (j->ks.secret == NULL)
            return SL_JWT_UNSUPPORTED_ALG;
        return verifies(j, jws, j->ks.secret) ? SL_JWT_OK : SL_JWT_BAD_SIGNATURE;
    }
    size_t of_kind = 0, tried = 0;
    for (size_t i = 0; i < j->ks.nkeys; i++) {
        const struct key *k = &j->ks.keys[i];
        if (k->kind != kind)
            continue;
        of_kind++;
        if (kid != NULL && (k->kid == NULL || strcmp(k->kid, kid) != 0))
            continue;
        tried++;
        if (verifies(j, jws, k->jwk))
            return SL_JWT_OK;
    }
    return tried > 0 ? SL_JWT_BAD_SIGNATURE : of_kind > 0 ? SL_JWT_UNKNOWN_KEY : SL_JWT_UNSUPPORTED_ALG;
}

/* A NumericDate claim: 1 with *v when present as a number, 0 when absent, -1 otherwise. */
static int date_claim(const json_t *claims, const char *name, double *v)
{
    const json_t *c = json_object_get(claims, name);
    if (c == NULL)
        return 0;
    if (!json_is_number(c) || !isfinite(json_number_value(c)))
        return -1;
    *v = json_number_value(c);
    return 1;
}

/* 1 when s (len bytes) holds no C0, DEL or C1 control character (jansson gave valid UTF-8). */
static int no_controls(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f || (c == 0xc2 && i + 1 < len && (unsigned char)s[i + 1] < 0xa0))
            return 0;
    }
    return 1;
}

/* A string claim of 1 to max bytes without control characters: 1 with *out (strdup'd), 0 when
 * absent (or null), -1 when not such a string or out of memory. */
static int text_claim(const json_t *claims, const char *name, size_t max, char **out)
{
    const json_t *c = json_object_get(claims, name);
    if (c == NULL || json_is_null(c))
        return 0;
    if (!json_is_string(c))
        return -1;
    const char *s = json_string_value(c);
    size_t len = json_string_length(c);
    if (len == 0 || len > max || strlen(s) != len || !no_controls(s, len))
        return -1;
    return (*out = strdup(s)) != NULL ? 1 : -1;
}

static int audience_has(const json_t *aud, const char *want)
{
    size_t i;
    json_t *a;
    if (json_is_string(aud))
        return strcmp(json_string_value(aud), want) == 0;
    if (!json_is_array(aud))
        return 0;
    json_array_foreach(aud, i, a)
    {
        if (json_is_string(a) && strcmp(json_string_value(a), want) == 0)
            return 1;
    }
    return 0;
}

static sl_jwt_result_t check_claims(const sl_jwt_t *j, const json_t *claims, int64_t now, const char *audience,
                                    sl_jwt_claims_t *out)
{
    double exp = 0, nbf = 0, iat = 0, leeway = (double)j->conf.leeway_s, t = (double)now;
    int r;
    if ((r = date_claim(claims, "exp", &exp)) <= 0)
        return SL_JWT_INVALID_CLAIMS; /* a token without exp would be good forever */
    if (t >= exp + leeway)
        return SL_JWT_EXPIRED;
    if ((r = date_claim(claims, "nbf", &nbf)) < 0)
        return SL_JWT_INVALID_CLAIMS;
    if (r == 1 && nbf > t + leeway)
        return SL_JWT_NOT_YET_VALID;
    if ((r = date_claim(claims, "iat", &iat)) < 0)
        return SL_JWT_INVALID_CLAIMS;
    if (r == 1 && iat > t + leeway)
        return SL_JWT_NOT_YET_VALID;
    if (set(j->conf.issuer)) {
        const json_t *iss = json_object_get(claims, "iss");
        if (!json_is_string(iss) || strcmp(json_string_value(iss), j->conf.issuer) != 0)
            return SL_JWT_WRONG_ISSUER;
    }
    if (set(audience) && !audience_has(json_object_get(claims, "aud"), audience))
        return SL_JWT_WRONG_AUDIENCE;
    if (text_claim(claims, "sub", SL_JWT_SUB_MAX, &out->sub) != 1 ||
        text_claim(claims, "name", SL_JWT_NAME_MAX, &out->name) < 0)
        return SL_JWT_INVALID_CLAIMS;
    const json_t *chans = json_object_get(claims, "channels");
    if (chans != NULL) {
        size_t i;
        json_t *c;
        if (!json_is_array(chans))
            return SL_JWT_INVALID_CLAIMS;
        out->has_channels = 1;
        json_array_foreach(chans, i, c)
        {
            if (!json_is_string(c) ||
                sl_chanset_add(&out->channels, json_string_value(c), json_string_length(c)) != 0)
                return SL_JWT_INVALID_CLAIMS;
        }
    }
    out->exp = exp >= 9e18 ? INT64_MAX : (int64_t)exp;
    return SL_JWT_OK;
}

static sl_jwt_result_t verify(sl_jwt_t *j, const char *token, size_t len, int64_t now, const char *audience,
                              sl_jwt_claims_t *out)
{
    char buf[SL_JWT_MAX_BYTES + 1];
    const char *dot1, *dot2;
    json_t *hdr = NULL, *jws = NULL, *claims = NULL;
    sl_jwt_result_t r = SL_JWT_MALFORMED;

    if (!sl_jwt_enabled(j))
        return SL_JWT_UNSUPPORTED_ALG;
    if (len > SL_JWT_MAX_BYTES)
        return SL_JWT_TOO_LARGE;
    if ((dot1 = memchr(token, '.', len)) == NULL ||
        (dot2 = memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - token))) == NULL)
        return SL_JWT_MALFORMED;
    size_t hlen = (size_t)(dot1 - token), plen = (size_t)(dot2 - dot1 - 1), slen = len - (size_t)(dot2 + 1 - token);
    /* an empty signature is an alg "none" token's: refused for its alg below, so it says why */
    if (!b64url_ok(token, hlen, 0) || !b64url_ok(dot1 + 1, plen, 0) || !b64url_ok(dot2 + 1, slen, 1))
        return SL_JWT_MALFORMED;
    /* NUL-terminated segments, for libjose's decoder (which reads one byte past its input) */
    memcpy(buf, token, len);
    buf[hlen] = buf[hlen + 1 + plen] = buf[len] = '\0';
    const char *hseg = buf, *pseg = buf + hlen + 1, *sseg = buf + hlen + 1 + plen + 1;
    if ((hdr = decode_object(hseg, hlen)) == NULL)
        goto Exit;
    if ((jws = json_pack("{s:s,s:s,s:s}", "protected", hseg, "payload", pseg, "signature", sseg)) == NULL)
        goto Exit;
    if ((r = check_signature(j, hdr, jws)) != SL_JWT_OK)
        goto Exit;
    r = SL_JWT_MALFORMED;
    if ((claims = decode_object(pseg, plen)) == NULL)
        goto Exit;
    r = check_claims(j, claims, now, audience != NULL ? audience : j->conf.audience, out);
Exit:
    json_decref(hdr);
    json_decref(jws);
    json_decref(claims);
    if (r != SL_JWT_OK)
        sl_jwt_claims_free(out);
    return r;
}

sl_jwt_result_t sl_jwt_verify(sl_jwt_t *j, const char *token, size_t len, int64_t now, sl_jwt_claims_t *out)
{
    return sl_jwt_verify_as(j, token, len, now, NULL, out);
}

sl_jwt_result_t sl_jwt_verify_as(sl_jwt_t *j, const char *token, size_t len, int64_t now, const char *audience,
                                 sl_jwt_claims_t *out)
{
    memset(out, 0, sizeof(*out));
    sl_jwt_result_t r = verify(j, token, len, now, audience, out);
    if (j != NULL)
        j->results[r]++;
    return r;
}

void sl_jwt_claims_free(sl_jwt_claims_t *c)
{
    free(c->sub);
    free(c->name);
    sl_chanset_free(&c->channels);
    memset(c, 0, sizeof(*c));
}

int64_t sl_jwt_valid_until(const sl_jwt_t *j, const sl_jwt_claims_t *c)
{
    long long leeway = j != NULL ? j->conf.leeway_s : 0;
    return c->exp > INT64_MAX - leeway ? INT64_MAX : c->exp + leeway;
}

/* ---- codes and metrics -------------------------------------------------------------------------- */

static const struct {
    const char *code, *message;
} texts[SL_JWT__COUNT] = {
    [SL_JWT_OK] = {"ok", "the token is valid"},
    [SL_JWT_TOO_LARGE] = {"token_too_large", "the token is longer than 8192 bytes"},
    [SL_JWT_MALFORMED] = {"token_malformed", "the token is not a well-formed JWT (three base64url parts, JSON objects)"},
    [SL_JWT_UNSUPPORTED_ALG] = {"token_unsupported_alg",
                                "the token's alg is not accepted here (HS256 with the secret, RS256 or ES256 with the "
                                "JWKS; never none)"},
    [SL_JWT_UNKNOWN_KEY] = {"token_unknown_key", "the token's kid names no key of its alg"},
    [SL_JWT_BAD_SIGNATURE] = {"token_bad_signature", "the token's signature does not verify"},
    [SL_JWT_EXPIRED] = {"token_expired", "the token has expired (exp)"},
    [SL_JWT_NOT_YET_VALID] = {"token_not_yet_valid", "the token is not valid yet (nbf or iat in the future)"},
    [SL_JWT_WRONG_ISSUER] = {"token_wrong_issuer", "the token's iss is not the one this service accepts"},
    [SL_JWT_WRONG_AUDIENCE] = {"token_wrong_audience", "the token's aud does not name this service"},
    [SL_JWT_INVALID_CLAIMS] = {"token_invalid_claims",
                               "the token's claims are wrong: sub and exp are required, channels is an array of "
                               "channel names and prefix* patterns"},
};

const char *sl_jwt_code(sl_jwt_result_t r)
{
    return (unsigned)r < SL_JWT__COUNT ? texts[r].code : "token_invalid";
}

const char *sl_jwt_message(sl_jwt_result_t r)
{
    return (unsigned)r < SL_JWT__COUNT ? texts[r].message : "the token is not valid";
}

void sl_jwt_metrics(const sl_jwt_t *j, sl_buf_t *b)
{
    char labels[64];
    if (!sl_jwt_enabled(j))
        return;
    sl_metrics_header(b, "sluice_jwt_verifications_total", "counter", "JWTs verified, by result (ok or the refusal code).");
    for (int r = 0; r < SL_JWT__COUNT; r++) {
        snprintf(labels, sizeof(labels), "result=\"%s\"", sl_jwt_code((sl_jwt_result_t)r));
        sl_metrics_sample(b, "sluice_jwt_verifications_total", labels, (double)j->results[r]);
    }
    size_t per[K__COUNT] = {j->ks.secret != NULL, 0, 0};
    for (size_t i = 0; i < j->ks.nkeys; i++)
        per[j->ks.keys[i].kind]++;
    sl_metrics_header(b, "sluice_jwt_keys", "gauge", "Keys JWTs are verified with, by alg.");
    for (int k = 0; k < K__COUNT; k++) {
        snprintf(labels, sizeof(labels), "alg=\"%s\"", kind_alg[k]);
        sl_metrics_sample(b, "sluice_jwt_keys", labels, (double)per[k]);
    }
    sl_metrics_header(b, "sluice_jwt_reloads_total", "counter", "Key reloads (SIGHUP), by outcome.");
    sl_metrics_sample(b, "sluice_jwt_reloads_total", "outcome=\"ok\"", (double)j->reloads_ok);
    sl_metrics_sample(b, "sluice_jwt_reloads_total", "outcome=\"failed\"", (double)j->reloads_failed);
}
