/*
 * Unit tests of sl_http's per-client key (sl_http_addr_key), the one key of every per-client
 * limit: the connections per client (sl_http) and the history caps (sl_stream). No server:
 * check_access tests the limits themselves.
 */
#include <arpa/inet.h>
#include <check.h>
#include <string.h>
#include <sys/un.h>

#include "sl_http.h"
#include "sl_testsuite.h"

/* The key of a textual address (IPv4 or IPv6), its length returned; addr pre-filled with junk so
 * that the zeroing of the rest shows. */
static socklen_t key_of(const char *text, unsigned char addr[16])
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    memset(addr, 0xA5, 16);
    if (strchr(text, ':') != NULL) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons(443);
        ck_assert_int_eq(inet_pton(AF_INET6, text, &a->sin6_addr), 1);
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        a->sin_family = AF_INET;
        a->sin_port = htons(443);
        ck_assert_int_eq(inet_pton(AF_INET, text, &a->sin_addr), 1);
    }
    return sl_http_addr_key(&ss, addr);
}

/* 1 when a and b are the same client (same key). */
static int same_client(const char *a, const char *b)
{
    unsigned char ka[16], kb[16];
    socklen_t la = key_of(a, ka), lb = key_of(b, kb);
    return la == lb && memcmp(ka, kb, la) == 0;
}

static void assert_zero_after(const unsigned char addr[16], socklen_t len)
{
    for (socklen_t i = len; i < 16; i++)
        ck_assert_msg(addr[i] == 0, "byte %u of the key is %u, not zeroed", (unsigned)i, addr[i]);
}

START_TEST(test_ipv4_is_the_full_address)
{
    unsigned char k[16];
    const unsigned char want[4] = {192, 0, 2, 7};
    ck_assert_int_eq(key_of("192.0.2.7", k), 4);
    ck_assert_mem_eq(k, want, 4);
    assert_zero_after(k, 4);
    ck_assert(!same_client("192.0.2.7", "192.0.2.8"));
    ck_assert(!same_client("10.0.0.1", "10.0.1.1"));
}
END_TEST

START_TEST(test_ipv6_is_its_slash_64)
{
    unsigned char k[16];
    const unsigned char want[8] = {0x20, 0x01, 0x0d, 0xb8, 0x00, 0x01, 0x00, 0x02};
    ck_assert_int_eq(key_of("2001:db8:1:2:aaaa:bbbb:cccc:dddd", k), 8);
    ck_assert_mem_eq(k, want, 8);
    assert_zero_after(k, 8);
    /* any address of one /64 is one client */
    ck_assert(same_client("2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:ffff"));
    ck_assert(same_client("2001:db8:1:2::1", "2001:db8:1:2:1234:5678:9abc:def0"));
    /* the next /64, and one that differs in its first bits, are others */
    ck_assert(!same_client("2001:db8:1:2::1", "2001:db8:1:3::1"));
    ck_assert(!same_client("2001:db8:1:2::1", "3001:db8:1:2::1"));
    ck_assert(!same_client("2001:db8:1:2::1", "2001:db9:1:2::1"));
    /* loopback is an IPv6 address like any other */
    ck_assert_int_eq(key_of("::1", k), 8);
}
END_TEST

START_TEST(test_ipv4_mapped_is_its_ipv4_address)
{
    unsigned char k[16];
    const unsigned char want[4] = {192, 0, 2, 7};
    ck_assert_int_eq(key_of("::ffff:192.0.2.7", k), 4);
    ck_assert_mem_eq(k, want, 4);
    assert_zero_after(k, 4);
    ck_assert(same_client("::ffff:192.0.2.7", "192.0.2.7"));
    /* mapped addresses do not share one /64 key: each is its own IPv4 client */
    ck_assert(!same_client("::ffff:192.0.2.7", "::ffff:192.0.2.8"));
    /* not mapped (::fffe:…, ::ffff:0:…): plain IPv6 */
    ck_assert_int_eq(key_of("::fffe:c000:207", k), 8);
    ck_assert_int_eq(key_of("0:0:0:0:1:ffff:c000:207", k), 8);
}
END_TEST

START_TEST(test_other_families_have_no_key)
{
    struct sockaddr_storage ss;
    unsigned char k[16];
    memset(&ss, 0, sizeof(ss));
    ss.ss_family = AF_UNIX;
    ck_assert_int_eq(sl_http_addr_key(&ss, k), 0);
    ss.ss_family = AF_UNSPEC;
    ck_assert_int_eq(sl_http_addr_key(&ss, k), 0);
}
END_TEST

START_TEST(test_key_text)
{
    unsigned char k[16];
    char buf[INET6_ADDRSTRLEN + 4];
    socklen_t l = key_of("2001:db8:1:2:aaaa::1", k);
    ck_assert_str_eq(sl_http_addr_key_text(k, l, buf, sizeof(buf)), "2001:db8:1:2::/64");
    l = key_of("::ffff:192.0.2.7", k);
    ck_assert_str_eq(sl_http_addr_key_text(k, l, buf, sizeof(buf)), "192.0.2.7");
    ck_assert_str_eq(sl_http_addr_key_text(k, 0, buf, sizeof(buf)), "");
    ck_assert_str_eq(sl_http_addr_key_text(k, 16, buf, sizeof(buf)), "");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("http");
    TCase *tc = tcase_create("addr_key");
    tcase_add_test(tc, test_ipv4_is_the_full_address);
    tcase_add_test(tc, test_ipv6_is_its_slash_64);
    tcase_add_test(tc, test_ipv4_mapped_is_its_ipv4_address);
    tcase_add_test(tc, test_other_families_have_no_key);
    tcase_add_test(tc, test_key_text);
    suite_add_tcase(s, tc);
    return tu_run_suite(s);
}
