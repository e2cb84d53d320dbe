/*
 * fuzz_jwt: the JWT verifier (sl_jwt_verify, sl_jwt.h) on anyone's bytes, as a bearer token or a
 * ?token= brings them. A fuzzer cannot forge a signature, so the target also signs what it is
 * given (HS256 with the verifier's secret, by tests/sl_testjwt.c, which does not use libjose):
 * that way the header parse, the key choice and every claim check after the signature are
 * reached too.
 *
 * Input: a first byte, then the rest. The first byte's value modulo 3 is the mode, and its bit 3
 * picks the verifier (0: secret and JWKS, iss and aud not checked; 1: the same with iss
 * "https://id.example" and aud "sluice" required):
 * - 0: the rest is the token, verified as it is;
 * - 1: the rest is the claims, signed under {"alg":"HS256"};
 * - 2: the rest is a header, '\n', then the claims, signed with HS256 whatever the header says.
 *
 * Invariants:
 * - no crash, leak, out-of-bounds access or undefined arithmetic, whatever the bytes;
 * - the result is one of sl_jwt_result_t; on anything but SL_JWT_OK the claims are zeroed;
 * - a token over SL_JWT_MAX_BYTES is SL_JWT_TOO_LARGE, and a token without two dots (or with a
 *   byte outside base64url and the two dots) is SL_JWT_MALFORMED;
 * - a token signed with the secret under {"alg":"HS256"} never fails for its signature, its alg
 *   or its key (mode 1);
 * - an accepted token: its claims are a JSON object whose "sub" is the claims' sub (1-255 bytes,
 *   no control character), "name" the name (or absent/null), every "channels" entry covered by
 *   the channels (a leading '#' dropped), exp not past the leeway; alg is HS256, RS256 or ES256 (never none); with the
 *   second verifier iss and aud are the required ones.
 */
#include <jansson.h>
#include <jose/b64.h>
#include <jose/jwk.h>
#include <jose/openssl.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <unistd.h>

#include "fuzz_util.h"
#include "sl_jwt.h"
#include "sl_testjwt.h"

#define NOW 1800000000LL
#define LEEWAY 30
static const char SECRET[] = "the-fuzzing-secret-0123456789abcdef";

static sl_jwt_t *plain, *strict;

static void make_verifiers(void)
{
    char path[] = "/tmp/fuzz-jwks-XXXXXX";
    int fd = mkstemp(path);
    FUZZ_CHECK(fd >= 0);
    close(fd);
    EVP_PKEY *rsa = EVP_RSA_gen(2048), *ec = EVP_EC_gen("P-256");
    FUZZ_CHECK(rsa != NULL && ec != NULL);
    json_t *keys = json_array();
    EVP_PKEY *k[] = {rsa, ec};
    const char *kid[] = {"r1", "e1"};
    for (int i = 0; i < 2; i++) {
        json_t *jwk = jose_openssl_jwk_from_EVP_PKEY(NULL, k[i]);
        FUZZ_CHECK(jwk != NULL && jose_jwk_pub(NULL, jwk));
        json_object_set_new(jwk, "kid", json_string(kid[i]));
        json_array_append_new(keys, jwk);
    }
    json_t *root = json_pack("{s:o}", "keys", keys);
    FUZZ_CHECK(json_dump_file(root, path, 0) == 0);
    json_decref(root);
    EVP_PKEY_free(rsa);
    EVP_PKEY_free(ec);
    char err[512];
    sl_jwt_conf_t c = {.secret = SECRET, .jwks_file = path, .leeway_s = LEEWAY};
    FUZZ_CHECKF((plain = sl_jwt_create(&c, err, sizeof(err))) != NULL, "%s", err);
    c.issuer = "https://id.example";
    c.audience = "sluice";
    FUZZ_CHECKF((strict = sl_jwt_create(&c, err, sizeof(err))) != NULL, "%s", err);
    unlink(path);
}

static int b64url_or_dot(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
           c == '.';
}

static int all_zero(const sl_jwt_claims_t *c)
{
    static const sl_jwt_claims_t zero;
    return memcmp(c, &zero, sizeof(zero)) == 0;
}

/* What an accepted token's claims must be, read again from its payload by jansson. */
static void check_accepted(const sl_jwt_t *j, const char *token, size_t len, const sl_jwt_claims_t *c)
{
    const char *d1 = memchr(token, '.', len), *d2 = d1 != NULL ? memchr(d1 + 1, '.', len - (size_t)(d1 + 1 - token)) : NULL;
    FUZZ_CHECK(d1 != NULL && d2 != NULL);
    json_t *hs = json_stringn(token, (size_t)(d1 - token)), *ps = json_stringn(d1 + 1, (size_t)(d2 - d1 - 1));
    json_t *hdr = jose_b64_dec_load(hs), *claims = jose_b64_dec_load(ps);
    json_decref(hs);
    json_decref(ps);
    FUZZ_CHECK(json_is_object(hdr) && json_is_object(claims));
    const char *alg = json_string_value(json_object_get(hdr, "alg"));
    FUZZ_CHECK(alg != NULL && (strcmp(alg, "HS256") == 0 || strcmp(alg, "RS256") == 0 || strcmp(alg, "ES256") == 0));

    const char *sub = json_string_value(json_object_get(claims, "sub"));
    size_t sublen = strlen(c->sub);
    FUZZ_CHECKF(sub != NULL && strcmp(sub, c->sub) == 0, "sub '%s'", c->sub);
    FUZZ_CHECK(sublen >= 1 && sublen <= SL_JWT_SUB_MAX && fuzz_utf8_clean(c->sub, sublen, ""));
    json_t *name = json_object_get(claims, "name");
    if (c->name == NULL)
        FUZZ_CHECK(name == NULL || json_is_null(name));
    else
        FUZZ_CHECK(json_is_string(name) && strcmp(json_string_value(name), c->name) == 0 &&
                   fuzz_utf8_clean(c->name, strlen(c->name), "") && strlen(c->name) <= SL_JWT_NAME_MAX);
    json_t *chans = json_object_get(claims, "channels"), *ch;
    size_t i;
    FUZZ_CHECK(c->has_channels == (chans != NULL));
    FUZZ_CHECK(c->has_channels || c->channels.n == 0);
    json_array_foreach(chans, i, ch)
    {
        const char *p = json_string_value(ch);
        size_t plen = json_string_length(ch);
        FUZZ_CHECK(p != NULL);
        if (plen > 0 && p[0] == '#') { /* "#general" is general */
            p++;
            plen--;
        }
        if (plen > 0 && p[plen - 1] != '*') /* a name covers itself */
            FUZZ_CHECK(fuzz_channel_ok(p, plen) && sl_chanset_covers(&c->channels, p, plen));
    }
    FUZZ_CHECK(c->channels.n <= json_array_size(chans));
    json_t *exp = json_object_get(claims, "exp");
    FUZZ_CHECK(json_is_number(exp) && json_number_value(exp) + LEEWAY > (double)NOW);
    if (j == strict) {
        const char *iss = json_string_value(json_object_get(claims, "iss"));
        FUZZ_CHECK(iss != NULL && strcmp(iss, "https://id.example") == 0);
        json_t *aud = json_object_get(claims, "aud"), *a;
        int found = json_is_string(aud) && strcmp(json_string_value(aud), "sluice") == 0;
        json_array_foreach(aud, i, a) found |= json_is_string(a) && strcmp(json_string_value(a), "sluice") == 0;
        FUZZ_CHECK(found);
    }
    json_decref(hdr);
    json_decref(claims);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (plain == NULL)
        make_verifiers();
    if (size < 1)
        return 0;
    int mode = data[0] % 3;
    sl_jwt_t *j = data[0] & 8 ? strict : plain;
    char *rest = fuzz_strndup(data + 1, size - 1), *token;
    size_t rlen = size - 1;
    if (mode == 0) {
        token = malloc(rlen > 0 ? rlen : 1); /* exactly its bytes: ASan sees an overread */
        FUZZ_CHECK(token != NULL);
        memcpy(token, data + 1, rlen);
    } else if (mode == 1) {
        token = tu_jwt_sign("{\"alg\":\"HS256\"}", rest, TU_JWT_HS256, SECRET, strlen(SECRET));
        rlen = strlen(token);
    } else {
        char *nl = strchr(rest, '\n');
        const char *claims = "";
        if (nl != NULL) {
            *nl = '\0';
            claims = nl + 1;
        }
        token = tu_jwt_sign(rest, claims, TU_JWT_HS256, SECRET, strlen(SECRET));
        rlen = strlen(token);
    }
    FUZZ_CHECK(token != NULL);

    sl_jwt_claims_t c;
    sl_jwt_result_t r = sl_jwt_verify(j, token, rlen, NOW, &c);
    FUZZ_CHECK((unsigned)r < SL_JWT__COUNT);
    FUZZ_CHECK(sl_jwt_code(r) != NULL && sl_jwt_message(r) != NULL);
    if (r != SL_JWT_OK)
        FUZZ_CHECK(all_zero(&c));
    if (rlen > SL_JWT_MAX_BYTES)
        FUZZ_CHECKF(r == SL_JWT_TOO_LARGE, "%zu bytes: %s", rlen, sl_jwt_code(r));
    else {
        size_t dots = 0, other = 0;
        for (size_t i = 0; i < rlen; i++) {
            dots += token[i] == '.';
            other += !b64url_or_dot((unsigned char)token[i]);
        }
        if (dots != 2 || other > 0)
            FUZZ_CHECKF(r == SL_JWT_MALFORMED, "%s", sl_jwt_code(r));
        if (mode == 1)
            FUZZ_CHECKF(r != SL_JWT_BAD_SIGNATURE && r != SL_JWT_UNSUPPORTED_ALG && r != SL_JWT_UNKNOWN_KEY &&
                            r != SL_JWT_TOO_LARGE,
                        "signed claims: %s", sl_jwt_code(r));
    }
    if (r == SL_JWT_OK)
        check_accepted(j, token, rlen, &c);
    sl_jwt_claims_free(&c);
    free(token);
    free(rest);
    return 0;
}
