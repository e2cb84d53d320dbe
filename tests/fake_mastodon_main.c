/*
 * fake-mastodon: the fake Mastodon instance of fake_mastodon.h as a program of its own, for tests
 * that are not written in C (tests/browser feeds sluice-ingest with it). It prints its URL
 * (http://127.0.0.1:<port>) as the first line of stdout, then reads one command per line on stdin
 * and answers each with one line, "ok" or "error: <why>":
 *   {"post": <status>}                      fm_post: the timelines, and "update" to every stream
 *   {"event": "<name>", "data": <payload>}  fm_event, e.g. "status.update" with the edited status,
 *                                           "delete" with the status id (a JSON string is sent
 *                                           as its value, anything else as compact JSON)
 *   {"wait_streams": <n>, "timeout_ms": <t>} fm_wait_streams (error when the time is up)
 * It stops at the end of stdin, or on SIGTERM.
 *
 *   fake-mastodon [TOKEN]   streaming wants "Authorization: Bearer TOKEN" (none: always 401, so
 *                           a reader polls the timeline)
 */
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fake_mastodon.h"

/* Runs one command line; NULL on success, else why not. */
static const char *run(fm_t *f, const char *line, char *why, size_t whylen)
{
    json_error_t jerr;
    json_t *cmd = json_loads(line, 0, &jerr), *v;
    const char *err = NULL;
    char *text = NULL;
    if (!json_is_object(cmd)) {
        snprintf(why, whylen, "not a JSON object (%s)", cmd == NULL ? jerr.text : "another type");
        err = why;
    } else if ((v = json_object_get(cmd, "post")) != NULL) {
        if (!json_is_object(v) || (text = json_dumps(v, JSON_COMPACT)) == NULL)
            err = "post: not a status object";
        else
            fm_post(f, text);
    } else if ((v = json_object_get(cmd, "event")) != NULL) {
        json_t *data = json_object_get(cmd, "data");
        if (!json_is_string(v) || data == NULL)
            err = "event: a name (string) and data are needed";
        else if (json_is_string(data))
            fm_event(f, json_string_value(v), json_string_value(data));
        else if ((text = json_dumps(data, JSON_COMPACT | JSON_ENCODE_ANY)) == NULL)
            err = "event: data cannot be written";
        else
            fm_event(f, json_string_value(v), text);
    } else if ((v = json_object_get(cmd, "wait_streams")) != NULL) {
        json_int_t ms = json_integer_value(json_object_get(cmd, "timeout_ms"));
        if (!json_is_integer(v) || json_integer_value(v) < 0)
            err = "wait_streams: a count is needed";
        else if (!fm_wait_streams(f, (int)json_integer_value(v), ms > 0 ? (int)ms : 10000))
            err = "wait_streams: not that many streams within the time";
    } else {
        err = "unknown command (post, event, wait_streams)";
    }
    free(text);
    json_decref(cmd);
    return err;
}

int main(int argc, char **argv)
{
    if (argc > 2 || (argc == 2 && (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0))) {
        fprintf(stderr, "usage: %s [TOKEN]  (commands on stdin: see tests/fake_mastodon_main.c)\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    fm_conf_t conf = {.token = argc == 2 ? argv[1] : NULL};
    fm_t *f = fm_start(&conf);
    if (f == NULL) {
        fprintf(stderr, "fake-mastodon: could not listen\n");
        return 1;
    }
    printf("%s\n", fm_url(f));
    fflush(stdout);
    char *line = NULL, why[256];
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, stdin)) >= 0) {
        if (n == 0 || strspn(line, " \t\r\n") == (size_t)n)
            continue;
        const char *err = run(f, line, why, sizeof(why));
        if (err != NULL)
            printf("error: %s\n", err);
        else
            printf("ok\n");
        fflush(stdout);
    }
    free(line);
    fm_stop(f);
    return 0;
}
