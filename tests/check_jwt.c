/*
 * Unit tests of sl_jwt: real tokens signed here, with keys made at test time (RSA 2048 and EC
 * P-256 with OpenSSL, an HS256 secret), by code that does not go through libjose (sl_testjwt:
 * OpenSSL's HMAC and EVP_DigestSign, our own base64url), so a mistake shared by signer and
 * verifier cannot hide.
 * Every refusal has its row: bad signatures, alg none, alg confusion (an RSA public key's PEM or
 * JWK bytes used as an HS256 secret), exp/nbf/iat against the leeway, iss and aud, the size
 * bound, garbage, bad claims, unknown kids; then the JWKS reload and the configurations refused.
 */
#include <check.h>
#include <jansson.h>
#include <jose/jwk.h>
#include <jose/openssl.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sl_buf.h"
#include "sl_chanpolicy.h"
#include "sl_jwt.h"
#include "sl_testjwt.h"
#include "sl_testsuite.h"

#define NOW 1800000000LL /* a fixed clock: 2027-01-15 */
#define LEEWAY 30

static const char SECRET[] = "an-hs256-secret-of-more-than-32-bytes";

/* Keys made once for the whole run (RSA generation is the slow part). */
static EVP_PKEY *rsa1, *rsa2, *rsa_stranger, *ec1;
static char dir[64], jwks_path[128], jwks2_path[128];
static char *rsa1_pem, *rsa1_jwk_text; /* rsa1's public key as PEM and as its JWKS entry */

/* ---- signing (sl_testjwt, independently of libjose) --------------------------------------------- */

enum how { HS = TU_JWT_HS256, RS = TU_JWT_RS256, ES = TU_JWT_ES256, NONE = TU_JWT_NONE };

static char *sign(const char *hdr, const char *claims, enum how how, const void *key, size_t len)
{
    char *t = tu_jwt_sign(hdr, claims, (tu_jwt_how_t)how, key, len);
    ck_assert_ptr_nonnull(t);
    return t;
}

static char *hs(const char *hdr, const char *claims)
{
    return sign(hdr, claims, HS, SECRET, strlen(SECRET));
}

/* Standard claims: sub alice, exp NOW+exp_off, then extra (",\"k\":v..." or ""). */
static const char *claims(long exp_off, const char *extra)
{
    static char buf[4][2 * SL_JWT_MAX_BYTES];
    static int next;
    char *b = buf[next++ % 4];
    snprintf(b, sizeof(buf[0]), "{\"sub\":\"alice\",\"exp\":%lld%s}", NOW + exp_off, extra);
    return b;
}

/* ---- keys and files ----------------------------------------------------------------------------- */

static json_t *public_jwk(EVP_PKEY *k, const char *kid)
{
    json_t *jwk = tu_jwt_public_jwk(k, kid);
    ck_assert_ptr_nonnull(jwk);
    return jwk;
}

/* Writes {"keys":[...]} of the NULL-terminated list of (key, kid) pairs to path. */
#define write_jwks(path, ...) ck_assert_int_eq(tu_jwt_write_jwks(path, __VA_ARGS__), 0)

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

static void make_keys(void)
{
    rsa1 = EVP_RSA_gen(2048);
    rsa2 = EVP_RSA_gen(2048);
    rsa_stranger = EVP_RSA_gen(2048);
    ec1 = EVP_EC_gen("P-256");
    ck_assert(rsa1 && rsa2 && rsa_stranger && ec1);
    snprintf(dir, sizeof(dir), "/tmp/sluice-jwt-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(jwks_path, sizeof(jwks_path), "%s/jwks.json", dir);
    snprintf(jwks2_path, sizeof(jwks2_path), "%s/jwks2.json", dir);
    /* two RSA keys and an EC key: a kid is then needed to pick, or each key of the kind is tried */
    write_jwks(jwks_path, rsa1, "rsa1", rsa2, "rsa2", ec1, "ec1", NULL);

    BIO *bio = BIO_new(BIO_s_mem());
    char *p;
    ck_assert_int_eq(PEM_write_bio_PUBKEY(bio, rsa1), 1);
    long n = BIO_get_mem_data(bio, &p);
    rsa1_pem = strndup(p, (size_t)n);
    BIO_free(bio);
    json_t *jwk = public_jwk(rsa1, "rsa1");
    rsa1_jwk_text = json_dumps(jwk, JSON_COMPACT);
    json_decref(jwk);
}

static void free_keys(void)
{
    EVP_PKEY_free(rsa1);
    EVP_PKEY_free(rsa2);
    EVP_PKEY_free(rsa_stranger);
    EVP_PKEY_free(ec1);
    free(rsa1_pem);
    free(rsa1_jwk_text);
    unlink(jwks_path);
    unlink(jwks2_path);
    rmdir(dir);
}

static sl_jwt_t *verifier(const char *secret, const char *jwks, const char *iss, const char *aud)
{
    sl_jwt_conf_t c = {.secret = secret, .jwks_file = jwks, .issuer = iss, .audience = aud, .leeway_s = LEEWAY};
    char err[512] = "";
    sl_jwt_t *j = sl_jwt_create(&c, err, sizeof(err));
    ck_assert_msg(j != NULL, "sl_jwt_create: %s", err);
    return j;
}

static sl_jwt_result_t check(sl_jwt_t *j, const char *token, sl_jwt_claims_t *c)
{
    return sl_jwt_verify(j, token, strlen(token), NOW, c);
}

/* ---- tests -------------------------------------------------------------------------------------- */

START_TEST(test_valid_tokens_and_claims)
{
    sl_jwt_t *j = verifier(SECRET, jwks_path, NULL, NULL);
    sl_jwt_claims_t c;
    ck_assert(sl_jwt_enabled(j));

    char *t = hs("{\"alg\":\"HS256\",\"typ\":\"JWT\"}",
                 claims(600, ",\"name\":\"Alice A.\",\"channels\":[\"general\",\"team-*\"],\"iat\":1799999990"));
    ck_assert_int_eq(check(j, t, &c), SL_JWT_OK);
    ck_assert_str_eq(c.sub, "alice");
    ck_assert_str_eq(c.name, "Alice A.");
    ck_assert_int_eq(c.exp, NOW + 600);
    ck_assert_int_eq(c.has_channels, 1);
    ck_assert_uint_eq(c.channels.n, 2);
    ck_assert(sl_chanset_covers(&c.channels, "general", 7));
    ck_assert(sl_chanset_covers(&c.channels, "team-blue", 9));
    ck_assert(!sl_chanset_covers(&c.channels, "random", 6));
    /* what it opened ends when it would be refused: verified a second before, refused then */
    int64_t until = sl_jwt_valid_until(j, &c);
    ck_assert_int_eq(until, NOW + 600 + LEEWAY);
    sl_jwt_claims_free(&c);
    ck_assert_ptr_null(c.sub);
    sl_jwt_claims_t c2;
    ck_assert_int_eq(sl_jwt_verify(j, t, strlen(t), until - 1, &c2), SL_JWT_OK);
    sl_jwt_claims_free(&c2);
    ck_assert_int_eq(sl_jwt_verify(j, t, strlen(t), until, &c2), SL_JWT_EXPIRED);
    free(t);

    /* RS256 with the kid of each RSA key; ES256 */
    struct {
        const char *hdr;
        enum how how;
        EVP_PKEY *key;
    } ok[] = {
        {"{\"alg\":\"RS256\",\"kid\":\"rsa1\"}", RS, rsa1},
        {"{\"alg\":\"RS256\",\"kid\":\"rsa2\"}", RS, rsa2},
        {"{\"alg\":\"RS256\"}", RS, rsa2}, /* no kid: each RSA key is tried */
        {"{\"alg\":\"ES256\",\"kid\":\"ec1\"}", ES, ec1},
        {"{\"alg\":\"ES256\"}", ES, ec1},
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        t = sign(ok[i].hdr, claims(60, ""), ok[i].how, ok[i].key, 0);
        ck_assert_msg(check(j, t, &c) == SL_JWT_OK, "%s: %s", ok[i].hdr, sl_jwt_code(check(j, t, &c)));
        ck_assert_str_eq(c.sub, "alice");
        ck_assert_ptr_null(c.name);
        ck_assert_int_eq(c.has_channels, 0);
        ck_assert_uint_eq(c.channels.n, 0);
        sl_jwt_claims_free(&c);
        free(t);
    }
    /* within the leeway: expired 10 s ago, valid from 10 s on, issued 10 s ahead */
    const char *lenient[] = {claims(-10, ""), claims(60, ",\"nbf\":1800000010"), claims(60, ",\"iat\":1800000010"),
                             claims(60, ",\"name\":null"),
                             "{\"sub\":\"alice\",\"exp\":1800000060.5}"}; /* a fractional NumericDate */
    for (size_t i = 0; i < sizeof(lenient) / sizeof(lenient[0]); i++) {
        t = hs("{\"alg\":\"HS256\"}", lenient[i]);
        ck_assert_msg(check(j, t, &c) == SL_JWT_OK, "%s: %s", lenient[i], sl_jwt_code(check(j, t, &c)));
        sl_jwt_claims_free(&c);
        free(t);
    }
    sl_jwt_destroy(j);
}
END_TEST

enum keyref { K_SECRET, K_WRONG_SECRET, K_RSA1, K_RSA_STRANGER, K_EC1, K_RSA1_PEM, K_RSA1_JWK };

struct refusal {
    const char *name;
    const char *hdr;
    const char *claims; /* NULL: claims(60, "") */
    enum how how;
    enum keyref key;
    sl_jwt_result_t want;
};

static char *make(const struct refusal *r)
{
    const char *cl = r->claims != NULL ? r->claims : claims(60, "");
    switch (r->key) {
    case K_SECRET:
        return sign(r->hdr, cl, r->how, SECRET, strlen(SECRET));
    case K_WRONG_SECRET:
        return sign(r->hdr, cl, r->how, "another-secret-of-more-than-32-bytes", 36);
    case K_RSA1:
        return sign(r->hdr, cl, r->how, rsa1, 0);
    case K_RSA_STRANGER:
        return sign(r->hdr, cl, r->how, rsa_stranger, 0);
    case K_EC1:
        return sign(r->hdr, cl, r->how, ec1, 0);
    case K_RSA1_PEM:
        return sign(r->hdr, cl, HS, rsa1_pem, strlen(rsa1_pem));
    default:
        return sign(r->hdr, cl, HS, rsa1_jwk_text, strlen(rsa1_jwk_text));
    }
}

static const char *const HS_HDR = "{\"alg\":\"HS256\"}";

static const struct refusal refusals[] = {
    /* signatures */
    {"hs256 wrong secret", "{\"alg\":\"HS256\"}", NULL, HS, K_WRONG_SECRET, SL_JWT_BAD_SIGNATURE},
    {"rs256 by a stranger, kid rsa1", "{\"alg\":\"RS256\",\"kid\":\"rsa1\"}", NULL, RS, K_RSA_STRANGER,
     SL_JWT_BAD_SIGNATURE},
    {"rs256 by a stranger, no kid", "{\"alg\":\"RS256\"}", NULL, RS, K_RSA_STRANGER, SL_JWT_BAD_SIGNATURE},
    {"rs256 signed by rsa1 under kid rsa2", "{\"alg\":\"RS256\",\"kid\":\"rsa2\"}", NULL, RS, K_RSA1,
     SL_JWT_BAD_SIGNATURE},
    {"alg none, empty signature", "{\"alg\":\"none\"}", NULL, NONE, K_SECRET, SL_JWT_UNSUPPORTED_ALG},
    {"alg None", "{\"alg\":\"None\"}", NULL, NONE, K_SECRET, SL_JWT_UNSUPPORTED_ALG},
    {"alg none with a signature", "{\"alg\":\"none\"}", NULL, HS, K_SECRET, SL_JWT_UNSUPPORTED_ALG},
    {"hs256 empty signature", "{\"alg\":\"HS256\"}", NULL, NONE, K_SECRET, SL_JWT_BAD_SIGNATURE},
    {"rs256 empty signature", "{\"alg\":\"RS256\"}", NULL, NONE, K_SECRET, SL_JWT_BAD_SIGNATURE},
    {"hs384", "{\"alg\":\"HS384\"}", NULL, HS, K_SECRET, SL_JWT_UNSUPPORTED_ALG},
    {"ps256", "{\"alg\":\"PS256\"}", NULL, RS, K_RSA1, SL_JWT_UNSUPPORTED_ALG},
    {"no alg", "{\"typ\":\"JWT\"}", NULL, HS, K_SECRET, SL_JWT_MALFORMED},
    {"alg not a string", "{\"alg\":256}", NULL, HS, K_SECRET, SL_JWT_MALFORMED},
    {"crit", "{\"alg\":\"HS256\",\"crit\":[\"exp\"]}", NULL, HS, K_SECRET, SL_JWT_UNSUPPORTED_ALG},
    {"b64 false", "{\"alg\":\"HS256\",\"b64\":false}", NULL, HS, K_SECRET, SL_JWT_UNSUPPORTED_ALG},
    /* alg confusion: the RSA public key's bytes as an HMAC secret, with and without its kid */
    {"confusion: rsa1 PEM as hs256 secret", "{\"alg\":\"HS256\"}", NULL, HS, K_RSA1_PEM, SL_JWT_BAD_SIGNATURE},
    {"confusion: rsa1 PEM as hs256 secret, kid", "{\"alg\":\"HS256\",\"kid\":\"rsa1\"}", NULL, HS, K_RSA1_PEM,
     SL_JWT_BAD_SIGNATURE},
    {"confusion: rsa1 JWK as hs256 secret, kid", "{\"alg\":\"HS256\",\"kid\":\"rsa1\"}", NULL, HS, K_RSA1_JWK,
     SL_JWT_BAD_SIGNATURE},
    /* a key of another kind than the alg */
    {"rs256 naming the ec key", "{\"alg\":\"RS256\",\"kid\":\"ec1\"}", NULL, RS, K_RSA1, SL_JWT_UNKNOWN_KEY},
    {"es256 naming an rsa key", "{\"alg\":\"ES256\",\"kid\":\"rsa1\"}", NULL, ES, K_EC1, SL_JWT_UNKNOWN_KEY},
    {"es256 signed with rsa", "{\"alg\":\"ES256\",\"kid\":\"ec1\"}", NULL, RS, K_RSA1, SL_JWT_BAD_SIGNATURE},
    {"unknown kid", "{\"alg\":\"RS256\",\"kid\":\"nobody\"}", NULL, RS, K_RSA1, SL_JWT_UNKNOWN_KEY},
    {"kid not a string", "{\"alg\":\"RS256\",\"kid\":7}", NULL, RS, K_RSA1, SL_JWT_MALFORMED},
    {"duplicate alg", "{\"alg\":\"HS256\",\"alg\":\"none\"}", NULL, HS, K_SECRET, SL_JWT_MALFORMED},
    {"header an array", "[\"HS256\"]", NULL, HS, K_SECRET, SL_JWT_MALFORMED},
    {"header not json", "{alg:HS256}", NULL, HS, K_SECRET, SL_JWT_MALFORMED},
    /* time */
    {"expired beyond the leeway", "{\"alg\":\"HS256\"}", "{\"sub\":\"alice\",\"exp\":1799999969}", HS, K_SECRET,
     SL_JWT_EXPIRED},
    {"expired long ago", "{\"alg\":\"HS256\"}", "{\"sub\":\"alice\",\"exp\":0}", HS, K_SECRET, SL_JWT_EXPIRED},
    {"expired at exactly the leeway", "{\"alg\":\"HS256\"}", "{\"sub\":\"alice\",\"exp\":1799999970}", HS, K_SECRET,
     SL_JWT_EXPIRED},
    {"nbf in the future", "{\"alg\":\"HS256\"}", "{\"sub\":\"alice\",\"exp\":1800000600,\"nbf\":1800000031}", HS,
     K_SECRET, SL_JWT_NOT_YET_VALID},
    {"iat in the future", "{\"alg\":\"HS256\"}", "{\"sub\":\"alice\",\"exp\":1800000600,\"iat\":1800000100}", HS,
     K_SECRET, SL_JWT_NOT_YET_VALID},
    {"no exp", "{\"alg\":\"HS256\"}", "{\"sub\":\"alice\"}", HS, K_SECRET, SL_JWT_INVALID_CLAIMS},
    {"exp a string", "{\"alg\":\"HS256\"}", "{\"sub\":\"alice\",\"exp\":\"1800000600\"}", HS, K_SECRET,
     SL_JWT_INVALID_CLAIMS},
    {"nbf a string", "{\"alg\":\"HS256\"}", "{\"sub\":\"alice\",\"exp\":1800000600,\"nbf\":\"0\"}", HS, K_SECRET,
     SL_JWT_INVALID_CLAIMS},
    {"duplicate exp", "{\"alg\":\"HS256\"}", "{\"sub\":\"alice\",\"exp\":1,\"exp\":1800000600}", HS, K_SECRET,
     SL_JWT_MALFORMED},
    /* claims */
    {"no sub", "{\"alg\":\"HS256\"}", "{\"exp\":1800000600}", HS, K_SECRET, SL_JWT_INVALID_CLAIMS},
    {"empty sub", "{\"alg\":\"HS256\"}", "{\"sub\":\"\",\"exp\":1800000600}", HS, K_SECRET, SL_JWT_INVALID_CLAIMS},
    {"sub a number", "{\"alg\":\"HS256\"}", "{\"sub\":42,\"exp\":1800000600}", HS, K_SECRET, SL_JWT_INVALID_CLAIMS},
    {"sub with a newline", "{\"alg\":\"HS256\"}", "{\"sub\":\"al\\nice\",\"exp\":1800000600}", HS, K_SECRET,
     SL_JWT_INVALID_CLAIMS},
    {"sub with a NUL (no JSON to jansson)", "{\"alg\":\"HS256\"}", "{\"sub\":\"al\\u0000ice\",\"exp\":1800000600}", HS,
     K_SECRET, SL_JWT_MALFORMED},
    {"sub with a C1 control", "{\"alg\":\"HS256\"}", "{\"sub\":\"al\\u0085ice\",\"exp\":1800000600}", HS, K_SECRET,
     SL_JWT_INVALID_CLAIMS},
    {"name a number", "{\"alg\":\"HS256\"}", "{\"sub\":\"a\",\"name\":1,\"exp\":1800000600}", HS, K_SECRET,
     SL_JWT_INVALID_CLAIMS},
    {"channels a string", "{\"alg\":\"HS256\"}", "{\"sub\":\"a\",\"channels\":\"general\",\"exp\":1800000600}", HS,
     K_SECRET, SL_JWT_INVALID_CLAIMS},
    {"channels with a bad name", "{\"alg\":\"HS256\"}",
     "{\"sub\":\"a\",\"channels\":[\"general\",\"Bad!\"],\"exp\":1800000600}", HS, K_SECRET, SL_JWT_INVALID_CLAIMS},
    {"channels with a star inside", "{\"alg\":\"HS256\"}", "{\"sub\":\"a\",\"channels\":[\"a*b\"],\"exp\":1800000600}",
     HS, K_SECRET, SL_JWT_INVALID_CLAIMS},
    {"channels with a number", "{\"alg\":\"HS256\"}", "{\"sub\":\"a\",\"channels\":[1],\"exp\":1800000600}", HS,
     K_SECRET, SL_JWT_INVALID_CLAIMS},
    {"payload an array", "{\"alg\":\"HS256\"}", "[1,2]", HS, K_SECRET, SL_JWT_MALFORMED},
    {"payload not json", "{\"alg\":\"HS256\"}", "sub=alice", HS, K_SECRET, SL_JWT_MALFORMED},
};

START_TEST(test_refusals)
{
    sl_jwt_t *j = verifier(SECRET, jwks_path, NULL, NULL);
    sl_jwt_claims_t c;
    const struct refusal *r = &refusals[_i];
    char *t = make(r);
    sl_jwt_result_t got = check(j, t, &c);
    ck_assert_msg(got == r->want, "%s: %s, want %s (%s)", r->name, sl_jwt_code(got), sl_jwt_code(r->want), t);
    /* a refusal leaves nothing to free */
    ck_assert_ptr_null(c.sub);
    ck_assert_ptr_null(c.channels.pats);
    free(t);
    sl_jwt_destroy(j);
}
END_TEST

/* The alg picks the kind of key: without a secret, HS256 is refused whatever bytes signed it;
 * without a JWKS, RS256 is. */
START_TEST(test_alg_needs_its_kind_of_key)
{
    sl_jwt_t *only_jwks = verifier(NULL, jwks_path, NULL, NULL), *only_secret = verifier(SECRET, NULL, NULL, NULL);
    sl_jwt_claims_t c;
    const char *hdrs[] = {"{\"alg\":\"HS256\"}", "{\"alg\":\"HS256\",\"kid\":\"rsa1\"}"};
    for (size_t i = 0; i < 2; i++) {
        char *pem = sign(hdrs[i], claims(60, ""), HS, rsa1_pem, strlen(rsa1_pem));
        char *jwk = sign(hdrs[i], claims(60, ""), HS, rsa1_jwk_text, strlen(rsa1_jwk_text));
        char *good = hs(hdrs[i], claims(60, ""));
        ck_assert_int_eq(check(only_jwks, pem, &c), SL_JWT_UNSUPPORTED_ALG);
        ck_assert_int_eq(check(only_jwks, jwk, &c), SL_JWT_UNSUPPORTED_ALG);
        ck_assert_int_eq(check(only_jwks, good, &c), SL_JWT_UNSUPPORTED_ALG);
        free(pem);
        free(jwk);
        free(good);
    }
    char *rs = sign("{\"alg\":\"RS256\",\"kid\":\"rsa1\"}", claims(60, ""), RS, rsa1, 0);
    ck_assert_int_eq(check(only_secret, rs, &c), SL_JWT_UNSUPPORTED_ALG);
    free(rs);
    rs = sign("{\"alg\":\"RS256\"}", claims(60, ""), RS, rsa1, 0);
    ck_assert_int_eq(check(only_secret, rs, &c), SL_JWT_UNSUPPORTED_ALG);
    ck_assert_int_eq(check(only_jwks, rs, &c), SL_JWT_OK);
    sl_jwt_claims_free(&c);
    free(rs);
    sl_jwt_destroy(only_jwks);
    sl_jwt_destroy(only_secret);
    /* and a disabled verifier takes nothing */
    sl_jwt_t *none = verifier(NULL, NULL, NULL, NULL);
    ck_assert(!sl_jwt_enabled(none));
    char *t = hs(HS_HDR, claims(60, ""));
    ck_assert_int_eq(check(none, t, &c), SL_JWT_UNSUPPORTED_ALG);
    ck_assert_int_eq(check(NULL, t, &c), SL_JWT_UNSUPPORTED_ALG);
    free(t);
    sl_jwt_destroy(none);
}
END_TEST

START_TEST(test_issuer_and_audience)
{
    sl_jwt_t *j = verifier(SECRET, NULL, "https://id.example", "sluice-sse");
    sl_jwt_claims_t c;
    struct {
        const char *extra;
        sl_jwt_result_t want;
    } rows[] = {
        {",\"iss\":\"https://id.example\",\"aud\":\"sluice-sse\"", SL_JWT_OK},
        {",\"iss\":\"https://id.example\",\"aud\":[\"other\",\"sluice-sse\"]", SL_JWT_OK},
        {",\"aud\":\"sluice-sse\"", SL_JWT_WRONG_ISSUER},
        {",\"iss\":\"https://evil.example\",\"aud\":\"sluice-sse\"", SL_JWT_WRONG_ISSUER},
        {",\"iss\":[\"https://id.example\"],\"aud\":\"sluice-sse\"", SL_JWT_WRONG_ISSUER},
        {",\"iss\":\"https://id.example\"", SL_JWT_WRONG_AUDIENCE},
        {",\"iss\":\"https://id.example\",\"aud\":\"sluice-api\"", SL_JWT_WRONG_AUDIENCE},
        {",\"iss\":\"https://id.example\",\"aud\":[\"sluice-api\"]", SL_JWT_WRONG_AUDIENCE},
        {",\"iss\":\"https://id.example\",\"aud\":[]", SL_JWT_WRONG_AUDIENCE},
        {",\"iss\":\"https://id.example\",\"aud\":5", SL_JWT_WRONG_AUDIENCE},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        char *t = hs(HS_HDR, claims(60, rows[i].extra));
        sl_jwt_result_t got = check(j, t, &c);
        ck_assert_msg(got == rows[i].want, "%s: %s", rows[i].extra, sl_jwt_code(got));
        sl_jwt_claims_free(&c);
        free(t);
    }
    sl_jwt_destroy(j);
    /* without the settings, iss and aud are not looked at */
    j = verifier(SECRET, NULL, NULL, NULL);
    char *t = hs(HS_HDR, claims(60, ",\"iss\":\"anyone\",\"aud\":5"));
    ck_assert_int_eq(check(j, t, &c), SL_JWT_OK);
    sl_jwt_claims_free(&c);
    free(t);
    sl_jwt_destroy(j);
}
END_TEST

START_TEST(test_size_and_garbage)
{
    sl_jwt_t *j = verifier(SECRET, jwks_path, NULL, NULL);
    sl_jwt_claims_t c;
    static char big[SL_JWT_MAX_BYTES + 2];
    /* a real token, padded past the bound inside a claim: refused before any decoding */
    char pad[SL_JWT_MAX_BYTES];
    memset(pad, 'x', sizeof(pad) - 1);
    pad[sizeof(pad) - 1] = '\0';
    char extra[SL_JWT_MAX_BYTES + 32];
    snprintf(extra, sizeof(extra), ",\"pad\":\"%.6100s\"", pad);
    char *t = hs(HS_HDR, claims(60, extra));
    ck_assert_uint_gt(strlen(t), SL_JWT_MAX_BYTES);
    ck_assert_int_eq(check(j, t, &c), SL_JWT_TOO_LARGE);
    free(t);
    /* just under it, the same token is good */
    snprintf(extra, sizeof(extra), ",\"pad\":\"%.5900s\"", pad);
    t = hs(HS_HDR, claims(60, extra));
    ck_assert_uint_le(strlen(t), SL_JWT_MAX_BYTES);
    ck_assert_int_eq(check(j, t, &c), SL_JWT_OK);
    sl_jwt_claims_free(&c);
    free(t);
    memset(big, 'a', SL_JWT_MAX_BYTES + 1);
    ck_assert_int_eq(sl_jwt_verify(j, big, SL_JWT_MAX_BYTES + 1, NOW, &c), SL_JWT_TOO_LARGE);
    ck_assert_int_eq(sl_jwt_verify(j, big, SL_JWT_MAX_BYTES, NOW, &c), SL_JWT_MALFORMED);

    char *good = hs(HS_HDR, claims(60, ""));
    const char *dot = strchr(good, '.');
    const char *garbage[] = {
        "",
        ".",
        "..",
        "abc",
        "abc.def",
        "abc.def.ghi.jkl",
        "eyJhbGciOiJIUzI1NiJ9..sig",      /* empty payload */
        ".eyJzdWIiOiJhIn0.sig",            /* empty header */
        "eyJhbGciOiJIUzI1NiJ9+.eyJ9.abc",  /* '+' is base64, not base64url */
        "eyJhbGciOiJIUzI1NiJ9.eyJ9/.abc",  /* '/' likewise */
        "eyJhbGciOiJIUzI1NiJ9=.eyJ9.abc",  /* padding */
        "eyJhbGciOiJIUzI1NiJ9.e.abc",      /* a length of 1 modulo 4 */
        "eyJhbGciOiJIUzI1NiJ9.eyJ9.a b",   /* a space */
        "eyJhbGciOiJIUzI1NiJ9.eyJ9.abc\n", /* a newline */
        "e31.eyJ9.abc",                    /* "{}" with stray low bits in its last character */
        "AAAA.AAAA.AAAA",                  /* NULs */
    };
    for (size_t i = 0; i < sizeof(garbage) / sizeof(garbage[0]); i++) {
        sl_jwt_result_t got = check(j, garbage[i], &c);
        ck_assert_msg(got == SL_JWT_MALFORMED, "'%s': %s", garbage[i], sl_jwt_code(got));
    }
    /* a NUL inside the token is garbage too (the length, not the NUL, ends it) */
    size_t len = strlen(good);
    char *nul = strdup(good);
    nul[dot - good + 2] = '\0';
    ck_assert_int_eq(sl_jwt_verify(j, nul, len, NOW, &c), SL_JWT_MALFORMED);
    free(nul);
    /* a cut-off token, at every length */
    for (size_t n = 0; n < len; n++) {
        sl_jwt_result_t got = sl_jwt_verify(j, good, n, NOW, &c);
        ck_assert_msg(got != SL_JWT_OK, "the first %zu bytes of a token verified", n);
    }
    ck_assert_int_eq(sl_jwt_verify(j, good, len, NOW, &c), SL_JWT_OK);
    sl_jwt_claims_free(&c);
    /* one flipped character anywhere in the signature */
    char *bad = strdup(good);
    char *sig = strrchr(bad, '.') + 1;
    for (size_t i = 0; sig[i] != '\0'; i++) {
        char was = sig[i];
        sig[i] = was == 'A' ? 'B' : 'A';
        sl_jwt_result_t got = check(j, bad, &c);
        ck_assert_msg(got == SL_JWT_BAD_SIGNATURE || got == SL_JWT_MALFORMED, "flip at %zu: %s", i, sl_jwt_code(got));
        sig[i] = was;
    }
    free(bad);
    free(good);
    sl_jwt_destroy(j);
}
END_TEST

/* sl_jwt_reload picks the new keys and drops the old; a broken file keeps the keys in use. */
START_TEST(test_jwks_reload)
{
    sl_jwt_claims_t c;
    write_jwks(jwks2_path, rsa1, "k1", NULL);
    sl_jwt_t *j = verifier(NULL, jwks2_path, NULL, NULL);
    char *old_kid = sign("{\"alg\":\"RS256\",\"kid\":\"k1\"}", claims(60, ""), RS, rsa1, 0);
    char *old_nokid = sign("{\"alg\":\"RS256\"}", claims(60, ""), RS, rsa1, 0);
    char *new_kid = sign("{\"alg\":\"RS256\",\"kid\":\"k2\"}", claims(60, ""), RS, rsa2, 0);
    char *new_es = sign("{\"alg\":\"ES256\",\"kid\":\"k3\"}", claims(60, ""), ES, ec1, 0);
    char err[512];
    ck_assert_int_eq(check(j, old_kid, &c), SL_JWT_OK);
    sl_jwt_claims_free(&c);
    ck_assert_int_eq(check(j, new_kid, &c), SL_JWT_UNKNOWN_KEY);
    ck_assert_int_eq(check(j, new_es, &c), SL_JWT_UNSUPPORTED_ALG);

    /* the key is rotated: k2 and k3 in, k1 out */
    write_jwks(jwks2_path, rsa2, "k2", ec1, "k3", NULL);
    ck_assert_int_eq(sl_jwt_reload(j, err, sizeof(err)), 0);
    ck_assert_int_eq(check(j, new_kid, &c), SL_JWT_OK);
    sl_jwt_claims_free(&c);
    ck_assert_int_eq(check(j, new_es, &c), SL_JWT_OK);
    sl_jwt_claims_free(&c);
    ck_assert_int_eq(check(j, old_kid, &c), SL_JWT_UNKNOWN_KEY);
    ck_assert_int_eq(check(j, old_nokid, &c), SL_JWT_BAD_SIGNATURE);

    /* a broken file (or one gone) keeps k2 and k3 */
    write_text(jwks2_path, "{\"keys\":[");
    ck_assert_int_eq(sl_jwt_reload(j, err, sizeof(err)), -1);
    ck_assert_ptr_nonnull(strstr(err, "not JSON"));
    write_text(jwks2_path, "{\"keys\":[{\"kty\":\"oct\",\"k\":\"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA\"}]}");
    ck_assert_int_eq(sl_jwt_reload(j, err, sizeof(err)), -1);
    ck_assert_ptr_nonnull(strstr(err, "no RS256 or ES256"));
    unlink(jwks2_path);
    ck_assert_int_eq(sl_jwt_reload(j, err, sizeof(err)), -1);
    ck_assert_int_eq(check(j, new_kid, &c), SL_JWT_OK);
    sl_jwt_claims_free(&c);

    /* counted for /metrics */
    sl_buf_t m = SL_BUF_INIT;
    sl_jwt_metrics(j, &m);
    ck_assert_ptr_nonnull(strstr(m.data, "sluice_jwt_reloads_total{outcome=\"ok\"} 1\n"));
    ck_assert_ptr_nonnull(strstr(m.data, "sluice_jwt_reloads_total{outcome=\"failed\"} 3\n"));
    ck_assert_ptr_nonnull(strstr(m.data, "sluice_jwt_keys{alg=\"RS256\"} 1\n"));
    ck_assert_ptr_nonnull(strstr(m.data, "sluice_jwt_keys{alg=\"ES256\"} 1\n"));
    ck_assert_ptr_nonnull(strstr(m.data, "sluice_jwt_verifications_total{result=\"ok\"} 4\n"));
    ck_assert_ptr_nonnull(strstr(m.data, "sluice_jwt_verifications_total{result=\"token_unknown_key\"} 2\n"));
    sl_buf_free(&m);
    free(old_kid);
    free(old_nokid);
    free(new_kid);
    free(new_es);
    sl_jwt_destroy(j);
}
END_TEST

/* The secret from a file (its trailing newline dropped), also read again on reload. */
START_TEST(test_secret_file)
{
    char path[160];
    sl_jwt_claims_t c;
    char err[512];
    snprintf(path, sizeof(path), "%s/secret", dir);
    write_text(path, "a-secret-from-a-file-32-bytes-long!!\n");
    sl_jwt_conf_t conf = {.secret_file = path, .leeway_s = LEEWAY};
    sl_jwt_t *j = sl_jwt_create(&conf, err, sizeof(err));
    ck_assert_msg(j != NULL, "%s", err);
    const char *s1 = "a-secret-from-a-file-32-bytes-long!!", *s2 = "the-next-secret-after-a-rotation-xyz";
    char *t1 = sign(HS_HDR, claims(60, ""), HS, s1, strlen(s1)), *t2 = sign(HS_HDR, claims(60, ""), HS, s2, strlen(s2));
    ck_assert_int_eq(check(j, t1, &c), SL_JWT_OK);
    sl_jwt_claims_free(&c);
    ck_assert_int_eq(check(j, t2, &c), SL_JWT_BAD_SIGNATURE);
    write_text(path, "the-next-secret-after-a-rotation-xyz\r\n");
    ck_assert_int_eq(sl_jwt_reload(j, err, sizeof(err)), 0);
    ck_assert_int_eq(check(j, t1, &c), SL_JWT_BAD_SIGNATURE);
    ck_assert_int_eq(check(j, t2, &c), SL_JWT_OK);
    sl_jwt_claims_free(&c);
    write_text(path, "too-short\n");
    ck_assert_int_eq(sl_jwt_reload(j, err, sizeof(err)), -1);
    ck_assert_int_eq(check(j, t2, &c), SL_JWT_OK);
    sl_jwt_claims_free(&c);
    free(t1);
    free(t2);
    sl_jwt_destroy(j);
    unlink(path);
}
END_TEST

START_TEST(test_bad_configurations)
{
    char small[160], mixed[160], priv[160], notjson[160], err[512];
    snprintf(notjson, sizeof(notjson), "%s/notjson", dir);
    write_text(notjson, "keys: none\n");
    snprintf(small, sizeof(small), "%s/small.json", dir);
    snprintf(mixed, sizeof(mixed), "%s/mixed.json", dir);
    snprintf(priv, sizeof(priv), "%s/private.json", dir);
    EVP_PKEY *rsa1024 = EVP_RSA_gen(1024), *p384 = EVP_EC_gen("P-384");
    write_jwks(small, rsa1024, "small", p384, "p384", NULL);
    struct {
        sl_jwt_conf_t conf;
        const char *why;
    } bad[] = {
        {{.secret = "short-secret"}, "32 to 1024 bytes"},
        {{.secret = SECRET, .secret_file = notjson}, "both set"},
        {{.secret_file = "/nonexistent/secret"}, "No such file"},
        {{.jwks_file = "/nonexistent/jwks.json"}, "No such file"},
        {{.jwks_file = small}, "no RS256 or ES256"}, /* RSA under 2048 bits, a P-384 key: skipped */
        {{.jwks_file = notjson}, "not JSON"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        ck_assert_ptr_null(sl_jwt_create(&bad[i].conf, err, sizeof(err)));
        ck_assert_msg(strstr(err, bad[i].why) != NULL, "case %zu: '%s' lacks '%s'", i, err, bad[i].why);
    }
    write_text(mixed, "{\"keys\":[{\"kty\":\"RSA\",\"use\":\"enc\",\"n\":\"AQAB\",\"e\":\"AQAB\"},"
                      "{\"kty\":\"oct\",\"k\":\"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA\"}]}");
    sl_jwt_conf_t conf = {.jwks_file = mixed};
    ck_assert_ptr_null(sl_jwt_create(&conf, err, sizeof(err)));
    /* keys the JWKS may hold beside usable ones are skipped; private parts are dropped */
    json_t *jwk = jose_openssl_jwk_from_EVP_PKEY(NULL, rsa2); /* with "d": a private key */
    json_object_set_new(jwk, "kid", json_string("with-private-part"));
    json_t *enc = public_jwk(rsa1, "for-encryption");
    json_object_set_new(enc, "use", json_string("enc"));
    json_t *root = json_pack("{s:[o,o,o]}", "keys", jwk, enc, public_jwk(rsa1024, "small"));
    ck_assert_int_eq(json_dump_file(root, priv, 0), 0);
    json_decref(root);
    conf.jwks_file = priv;
    sl_jwt_t *j = sl_jwt_create(&conf, err, sizeof(err));
    ck_assert_msg(j != NULL, "%s", err);
    sl_jwt_claims_t c;
    char *t = sign("{\"alg\":\"RS256\",\"kid\":\"with-private-part\"}", claims(60, ""), RS, rsa2, 0);
    ck_assert_int_eq(check(j, t, &c), SL_JWT_OK);
    sl_jwt_claims_free(&c);
    free(t);
    t = sign("{\"alg\":\"RS256\",\"kid\":\"for-encryption\"}", claims(60, ""), RS, rsa1, 0);
    ck_assert_int_eq(check(j, t, &c), SL_JWT_UNKNOWN_KEY);
    free(t);
    sl_jwt_destroy(j);
    EVP_PKEY_free(rsa1024);
    EVP_PKEY_free(p384);
    unlink(notjson);
    unlink(small);
    unlink(mixed);
    unlink(priv);
}
END_TEST

/* What a reader's claims mean to the channel policy. */
START_TEST(test_claims_with_policy)
{
    char err[256];
    sl_jwt_t *j = verifier(SECRET, NULL, NULL, NULL);
    sl_chanpolicy_t *p = sl_chanpolicy_create("staff,team-*", err, sizeof(err));
    ck_assert_ptr_nonnull(p);
    sl_jwt_claims_t c;
    char *t = hs(HS_HDR, claims(60, ",\"channels\":[\"team-red\"]"));
    ck_assert_int_eq(check(j, t, &c), SL_JWT_OK);
    ck_assert_int_eq(sl_chanpolicy_read(p, &c.channels, "team-red", 8), SL_CHAN_READ_OK);
    ck_assert_int_eq(sl_chanpolicy_read(p, &c.channels, "team-blue", 9), SL_CHAN_READ_FORBIDDEN);
    ck_assert_int_eq(sl_chanpolicy_read(p, &c.channels, "staff", 5), SL_CHAN_READ_FORBIDDEN);
    ck_assert_int_eq(sl_chanpolicy_read(p, &c.channels, "general", 7), SL_CHAN_READ_OK);
    ck_assert_int_eq(sl_chanpolicy_read(p, NULL, "team-red", 8), SL_CHAN_READ_NEED_TOKEN);
    sl_jwt_claims_free(&c);
    free(t);
    /* a token without channels reads the public channels only */
    t = hs(HS_HDR, claims(60, ""));
    ck_assert_int_eq(check(j, t, &c), SL_JWT_OK);
    ck_assert_int_eq(sl_chanpolicy_read(p, &c.channels, "team-red", 8), SL_CHAN_READ_FORBIDDEN);
    ck_assert_int_eq(sl_chanpolicy_read(p, &c.channels, "general", 7), SL_CHAN_READ_OK);
    sl_jwt_claims_free(&c);
    free(t);
    sl_chanpolicy_destroy(p);
    sl_jwt_destroy(j);
}
END_TEST

START_TEST(test_codes)
{
    /* every result has its own code and a message */
    for (int a = 0; a < SL_JWT__COUNT; a++) {
        ck_assert_ptr_nonnull(sl_jwt_message((sl_jwt_result_t)a));
        ck_assert(a == SL_JWT_OK || strncmp(sl_jwt_code((sl_jwt_result_t)a), "token_", 6) == 0);
        for (int b = a + 1; b < SL_JWT__COUNT; b++)
            ck_assert_str_ne(sl_jwt_code((sl_jwt_result_t)a), sl_jwt_code((sl_jwt_result_t)b));
    }
    ck_assert_str_eq(sl_jwt_code(SL_JWT_EXPIRED), "token_expired");
    ck_assert_str_eq(sl_jwt_code(SL_JWT_BAD_SIGNATURE), "token_bad_signature");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("jwt");
    TCase *tc = tcase_create("unit");
    tcase_set_timeout(tc, 60);
    tcase_add_unchecked_fixture(tc, make_keys, free_keys);
    tcase_add_test(tc, test_valid_tokens_and_claims);
    tcase_add_loop_test(tc, test_refusals, 0, (int)(sizeof(refusals) / sizeof(refusals[0])));
    tcase_add_test(tc, test_alg_needs_its_kind_of_key);
    tcase_add_test(tc, test_issuer_and_audience);
    tcase_add_test(tc, test_size_and_garbage);
    tcase_add_test(tc, test_jwks_reload);
    tcase_add_test(tc, test_secret_file);
    tcase_add_test(tc, test_bad_configurations);
    tcase_add_test(tc, test_claims_with_policy);
    tcase_add_test(tc, test_codes);
    suite_add_tcase(s, tc);
    return tu_run_suite(s);
}
