/*
 * The native HTTP server (csrc/http_server.h) without PHP: a real listener on 127.0.0.1, raw
 * requests over real sockets.  Checks the boundaries of what the adapter adds to h2o's parser
 * (the largest request head, framing headers, NUL bytes in the path), static files through the
 * router, the 503 of max_wait_time answered by the loop thread, and a request answered from
 * another thread through the python queue (fp_http_take / fp_http_exchange_respond), which
 * scripts/test.sh also runs under TSan.
 *
 *   build/cmake/tests/native/test_http_server     # exit status 1 on a failure
 */
#define _GNU_SOURCE
#include "http_server.h"

#include <arpa/inet.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

static int failures, checks;
#define CHECK(cond, what)                                                                      \
    do {                                                                                       \
        checks++;                                                                              \
        if (!(cond)) {                                                                         \
            failures++;                                                                        \
            fprintf(stderr, "%s:%d: FAILED %s: %s\n", __FILE__, __LINE__, #cond, what);         \
        }                                                                                      \
    } while (0)

static int port;

/* Send `req` (len bytes), read until the server closes or 10 s pass.  Returns the bytes read
 * (malloc'd, NUL-terminated) and whether the server closed the connection. */
static char *exchange(const char *req, size_t len, int *closed)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(0x7f000001)};
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        perror("connect");
        exit(2);
    }
    for (size_t off = 0; off < len;) {
        ssize_t n = send(fd, req + off, len - off, MSG_NOSIGNAL);
        if (n <= 0) {
            break; /* the server may close before reading everything */
        }
        off += (size_t)n;
    }
    size_t cap = 1 << 16, got = 0;
    char *buf = malloc(cap + 1);
    *closed = 0;
    for (;;) {
        if (got == cap) {
            cap *= 2;
            buf = realloc(buf, cap + 1);
        }
        ssize_t n = recv(fd, buf + got, cap - got, 0);
        if (n == 0) {
            *closed = 1;
            break;
        }
        if (n < 0) {
            break;
        }
        got += (size_t)n;
    }
    buf[got] = '\0';
    close(fd);
    return buf;
}

static int starts_with(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* A GET whose head (request line, headers, blank line) is exactly `head_len` bytes. */
static char *head_of_size(size_t head_len)
{
    const char *start = "GET /s.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Pad: ";
    const char *end = "\r\n\r\n";
    size_t pad = head_len - strlen(start) - strlen(end);
    char *req = malloc(head_len + 1);
    strcpy(req, start);
    memset(req + strlen(start), 'a', pad);
    strcpy(req + strlen(start) + pad, end);
    return req;
}

static void *answer_python_queue(void *arg)
{
    fp_http_server *server = arg;
    fp_http_exchange *ex = fp_http_take(server, fp_http_server_python_queue(server), NULL);
    if (ex) {
        fp_http_exchange_respond(ex, 200, "Content-Type: text/plain\n", "metrics here\n", 13);
    }
    return NULL;
}

int main(void)
{
    char base[] = "/tmp/fp-http-test-XXXXXX";
    if (!mkdtemp(base)) {
        perror("mkdtemp");
        return 2;
    }
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/s.txt", base);
    FILE *f = fopen(path, "w");
    fputs("static text\n", f);
    fclose(f);
    snprintf(path, sizeof path, "%s/index.php", base);
    f = fopen(path, "w");
    fputs("<?php echo 'never runs here';\n", f);
    fclose(f);

    static const char *const split[] = {".php"}, *const indexes[] = {"index.html"}, *const hidden[] = {".well-known"};
    fp_router_options options = {"index.php", split, 1, indexes, 1, hidden, 1, 1};
    static fp_router router;
    CHECK(fp_router_init(&router, base, &options) == 0, "router");

    char err[256];
    fp_http_server *server = fp_http_server_new(0, err, sizeof err);
    CHECK(server != NULL, err);
    fp_http_site site = {.host = "127.0.0.1", .port = 0, .router = &router, .max_body_size = 1000,
                         .max_wait_time = 0.3, .metrics = 1};
    CHECK(fp_http_server_add_site(server, &site, err, sizeof err) == 0, err);
    port = site.bound_port;
    CHECK(fp_http_server_start(server, err, sizeof err) == 0, err);

    int closed;
    char *r = exchange("GET /s.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 51, &closed);
    CHECK(starts_with(r, "HTTP/1.1 200 ") && strstr(r, "\r\n\r\nstatic text\n"), r);
    CHECK(strstr(r, "ETag: \"") && strstr(r, "Accept-Ranges: bytes"), "validators of a static file");
    free(r);

    /* The largest head accepted, and one byte more. */
    char *req = head_of_size(FP_HTTP_MAX_HEAD);
    r = exchange(req, FP_HTTP_MAX_HEAD, &closed);
    CHECK(starts_with(r, "HTTP/1.1 200 "), "a head of exactly FP_HTTP_MAX_HEAD bytes is served");
    free(r);
    free(req);
    req = head_of_size(FP_HTTP_MAX_HEAD + 1);
    r = exchange(req, FP_HTTP_MAX_HEAD + 1, &closed);
    CHECK(starts_with(r, "HTTP/1.1 400 ") && closed, "one byte more: 400, connection closed");
    free(r);
    free(req);

    const char *framing[] = {
        "POST /s.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        "3\r\nabc\r\n0\r\n\r\nGET /s.txt HTTP/1.1\r\nHost: x\r\n\r\n",
        "POST /s.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc"
        "GET /s.txt HTTP/1.1\r\nHost: x\r\n\r\n",
        "POST /s.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 3x\r\n\r\nabc",
    };
    for (size_t i = 0; i < sizeof framing / sizeof framing[0]; i++) {
        r = exchange(framing[i], strlen(framing[i]), &closed);
        CHECK(starts_with(r, "HTTP/1.1 400 ") && closed, framing[i]);
        CHECK(strstr(r + 1, "HTTP/1.1") == NULL, "the request behind it is never answered");
        free(r);
    }
    const char *ok_body = "POST /s.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabc";
    r = exchange(ok_body, strlen(ok_body), &closed);
    CHECK(starts_with(r, "HTTP/1.1 405 "), "one Content-Length is fine (POST to a static file: 405)");
    free(r);

    r = exchange("GET /a%00b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 52, &closed);
    CHECK(starts_with(r, "HTTP/1.1 400 "), "a NUL byte in the decoded path");
    free(r);
    r = exchange("GET /%2e%2e/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 55, &closed);
    CHECK(starts_with(r, "HTTP/1.1 403 "), "%2e%2e is decoded once, then refused by the router");
    free(r);

    /* No PHP thread takes classic requests here: max_wait_time (0.3 s) answers 503. */
    r = exchange("GET /index.php HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 55, &closed);
    CHECK(starts_with(r, "HTTP/1.1 503 "), "max_wait_time without a PHP thread");
    free(r);

    /* /metrics goes to the python queue; another thread answers it. */
    pthread_t t;
    pthread_create(&t, NULL, answer_python_queue, server);
    r = exchange("GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 53, &closed);
    CHECK(starts_with(r, "HTTP/1.1 200 ") && strstr(r, "\r\n\r\nmetrics here\n"), r);
    free(r);
    pthread_join(t, NULL);

    fp_http_counters c;
    fp_http_server_counters(server, &c);
    CHECK(c.rejected_503 == 1, "one 503 counted");
    CHECK(fp_http_server_wait_idle(server, 5000) == 0, "nothing left in flight");

    fp_http_server_drain(server);
    r = exchange("GET /s.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 51, &closed);
    CHECK(starts_with(r, "HTTP/1.1 503 "), "draining: 503");
    free(r);
    fp_http_server_stop(server);
    fp_http_server_free(server);

    snprintf(path, sizeof path, "rm -rf '%s'", base);
    if (system(path) != 0) {
        fprintf(stderr, "could not remove %s\n", base);
    }
    printf("%d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
