/*
 * The native HTTP server (csrc/http_server.h) without PHP: a real listener on 127.0.0.1, raw
 * requests over real sockets.  Checks the boundaries of what the adapter adds to h2o's parser
 * (the largest request head, framing headers, NUL bytes in the path), static files through the
 * router, the 503 of max_wait_time answered by the loop thread, and a request answered from
 * another thread through the python queue (fp_http_take / fp_http_exchange_respond), which
 * scripts/test.sh also runs under TSan.  Then a bounded fuzz run: mutated request heads (bytes
 * flipped, CR/LF/NUL/colon/space inserted, framing headers with odd values), each on its own
 * connection; every answer must be a well-formed status line of an expected code, and the server
 * must answer a valid request afterwards (under ASan: no memory error on the way).  Last, the
 * per-thread I/O model (run-to-completion): two threads each run a loop of their own and answer
 * the classic requests it parsed, inline; then the server is freed (under ASan, LeakSanitizer
 * checks that h2o's loops, contexts and configuration went with it).
 *
 *   build/cmake/tests/native/test_http_server [FUZZ_ITERATIONS]   # exit status 1 on a failure
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

#include "check.h"

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

typedef struct loop_arg {
    fp_http_server *server;
    int index;
    int answered;
} loop_arg;

/* A per-thread loop: what a PHP thread does in fp_serve_loop(), with a fixed answer for PHP. */
static void *run_loop(void *p)
{
    loop_arg *a = p;
    fp_http_exchange *ex;
    while ((ex = fp_http_loop_next(a->server, a->index))) {
        fp_http_exchange_respond(ex, 200, "Content-Type: text/plain\n", "inline\n", 7);
        a->answered++;
    }
    return NULL;
}

static void per_thread(const fp_router *router)
{
    char err[256];
    fp_http_server *server = fp_http_server_new(1, 0, err, sizeof err);
    CHECK(server != NULL, err);
    CHECK(fp_http_server_per_thread(server, 2, err, sizeof err) == 0, err);
    fp_http_site site = {.host = "127.0.0.1", .port = 0, .router = router, .max_body_size = 1000};
    CHECK(fp_http_server_add_site(server, &site, err, sizeof err) == 0, err);
    port = site.bound_port;
    CHECK(fp_http_server_start(server, err, sizeof err) == 0, err);
    loop_arg args[2] = {{server, 0, 0}, {server, 1, 0}};
    pthread_t threads[2];
    for (int i = 0; i < 2; i++) {
        pthread_create(&threads[i], NULL, run_loop, &args[i]);
    }
    int closed;
    for (int i = 0; i < 20; i++) {
        char *r = exchange("GET /index.php HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 55, &closed);
        CHECK(starts_with(r, "HTTP/1.1 200 ") && strstr(r, "\r\n\r\ninline\n"), r);
        free(r);
        r = exchange("GET /s.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 51, &closed);
        CHECK(starts_with(r, "HTTP/1.1 200 ") && strstr(r, "\r\n\r\nstatic text\n"), "per-thread: static");
        free(r);
    }
    CHECK(fp_http_server_wait_idle(server, 5000) == 0, "per-thread: nothing left in flight");
    fp_http_server_stop(server);
    for (int i = 0; i < 2; i++) {
        pthread_join(threads[i], NULL);
    }
    CHECK(args[0].answered + args[1].answered == 20, "per-thread: every PHP request ran on a loop's thread");
    fp_http_server_free(server);
}

static const char *const seeds[] = {
    "GET /s.txt HTTP/1.1\r\nHost: x\r\n\r\n",
    "GET /s.txt?a=b HTTP/1.0\r\nHost: x\r\nRange: bytes=1-3\r\nIf-None-Match: \"x\"\r\n\r\n",
    "POST /s.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    "POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "HEAD /dir/../s.txt HTTP/1.1\r\nHost: [::1]:80\r\nCookie: a=b\r\n\r\n",
    "GET /%2e%2e/%00/s.txt HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nX-A: 2\r\n\r\n",
};
static const char inserts[] = {'\r', '\n', '\0', ':', ' ', '%', '/', '.', '\t', 0x7f, (char)0xff};

static int fuzz_status_ok(const char *r)
{
    if (!*r) {
        return 1; /* closed without an answer: acceptable for garbage */
    }
    static const char *const allowed[] = {"100", "200", "206", "304", "400", "403", "404", "405", "412",
                                          "413", "416", "417", "503"};
    if (!starts_with(r, "HTTP/1.1 ")) {
        return 0;
    }
    for (size_t i = 0; i < sizeof allowed / sizeof allowed[0]; i++) {
        if (strncmp(r + 9, allowed[i], 3) == 0) {
            return 1;
        }
    }
    return 0;
}

/* One mutated request on its own connection, the client's side half-closed after sending so
 * that an incomplete head ends at once. */
static int fuzz_answered;

static void fuzz_one(unsigned *seed)
{
    char req[1024];
    const char *base = seeds[rand_r(seed) % (sizeof seeds / sizeof seeds[0])];
    size_t len = strlen(base);
    memcpy(req, base, len);
    int mutations = 1 + rand_r(seed) % 4;
    for (int m = 0; m < mutations; m++) {
        size_t at = len ? (size_t)rand_r(seed) % len : 0;
        switch (rand_r(seed) % 4) {
        case 0: /* flip a byte */
            req[at] = (char)(rand_r(seed) & 0xff);
            break;
        case 1: /* insert a delimiter */
            if (len < sizeof req - 1) {
                memmove(req + at + 1, req + at, len - at);
                req[at] = inserts[rand_r(seed) % sizeof inserts];
                len++;
            }
            break;
        case 2: /* cut */
            len = at;
            break;
        default: { /* add a framing header with an odd value */
            static const char *const extra[] = {"Content-Length: 99999999999999999999\r\n",
                                                "Content-Length: 0x10\r\n", "Transfer-Encoding: chunked\r\n",
                                                "Content-Length: 3\r\n", "Transfer-Encoding: chunked, gzip\r\n",
                                                "Expect: 100-continue\r\n", "Connection: close\r\n"};
            const char *e = extra[rand_r(seed) % (sizeof extra / sizeof extra[0])];
            char *line_end = memmem(req, len, "\r\n", 2);
            size_t el = strlen(e);
            if (line_end && len + el < sizeof req) {
                size_t pos = (size_t)(line_end - req) + 2;
                memmove(req + pos + el, req + pos, len - pos);
                memcpy(req + pos, e, el);
                len += el;
            }
        }
        }
    }
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(0x7f000001)};
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        CHECK(0, "the server stopped accepting connections");
        close(fd);
        return;
    }
    if (send(fd, req, len, MSG_NOSIGNAL) < 0) {
        close(fd);
        return; /* the server may already have closed */
    }
    shutdown(fd, SHUT_WR);
    char buf[4096];
    ssize_t n = recv(fd, buf, sizeof buf - 1, 0);
    buf[n > 0 ? n : 0] = '\0';
    fuzz_answered += n > 0;
    if (!fuzz_status_ok(buf)) {
        req[len < 200 ? len : 200] = '\0';
        fprintf(stderr, "fuzz: unexpected answer %.40s to %s\n", buf, req);
        CHECK(0, "a mutated request got an unexpected answer");
    }
    close(fd);
}

int main(int argc, char **argv)
{
    int fuzz_iterations = argc > 1 ? atoi(argv[1]) : 2000;
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
    fp_http_server *server = fp_http_server_new(2, 0, err, sizeof err); /* two loops: the hand-off to each */
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
    CHECK(starts_with(r, "HTTP/1.1 403 "), "%%2e%%2e is decoded once, then refused by the router");
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

    /* Fuzz: the classic queue has no taker, so requests that route to PHP would each wait for
     * max_wait_time; the document root has no PHP script left for the fuzz. */
    snprintf(path, sizeof path, "%s/index.php", base);
    unlink(path);
    unsigned seed = 12345; /* fixed: a failure reproduces with the same iterations */
    for (int i = 0; i < fuzz_iterations; i++) {
        fuzz_one(&seed);
    }
    printf("fuzz: %d mutated requests, %d answered\n", fuzz_iterations, fuzz_answered);
    CHECK(fuzz_answered > fuzz_iterations / 2, "most mutated requests get an answer");
    r = exchange("GET /s.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 51, &closed);
    CHECK(starts_with(r, "HTTP/1.1 200 ") && strstr(r, "\r\n\r\nstatic text\n"), "serving after the fuzz");
    free(r);

    fp_http_server_drain(server);
    r = exchange("GET /s.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 51, &closed);
    CHECK(starts_with(r, "HTTP/1.1 503 "), "draining: 503");
    free(r);
    fp_http_server_stop(server);
    fp_http_server_free(server);

    snprintf(path, sizeof path, "%s/index.php", base);
    f = fopen(path, "w");
    fputs("<?php echo 'never runs here';\n", f);
    fclose(f);
    per_thread(&router);

    snprintf(path, sizeof path, "rm -rf '%s'", base);
    if (system(path) != 0) {
        fprintf(stderr, "could not remove %s\n", base);
    }
    printf("%d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
