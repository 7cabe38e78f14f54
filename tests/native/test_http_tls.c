/*
 * HTTPS and HTTP/2 on the native HTTP server (csrc/http_server.h) without PHP: a TLS site with a
 * certificate made by the `openssl` command, and `curl` (nghttp2) as the client.  Checks
 * fp_http_tls_check()'s messages, HTTP/2 streams of one connection answered from another thread
 * through the python queue (the hand-off per stream, which scripts/test.sh runs under TSan and
 * ASan), HTTPS/1.1, and a client that speaks no TLS.  Exit status 77 (skipped) without openssl
 * or curl.
 *
 *   build/cmake/tests/native/test_http_tls
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
#include <sys/time.h>
#include <unistd.h>

#include "check.h"

#define STREAMS 8

static char base[] = "/tmp/fp-tls-test-XXXXXX";

static void *answer_python_queue(void *arg)
{
    fp_http_server *server = arg;
    fp_http_exchange *ex;
    while ((ex = fp_http_take(server, fp_http_server_python_queue(server), NULL)) != NULL) {
        fp_http_exchange_respond(ex, 200, "Content-Type: text/plain\n", "metrics here\n", 13);
    }
    return NULL; /* the queue closed: the server stopped */
}

/* Run `command`; its stdout (malloc'd, NUL-terminated). */
static char *run(const char *command)
{
    FILE *p = popen(command, "r");
    size_t cap = 1 << 16, got = 0;
    char *out = malloc(cap + 1);
    if (p) {
        size_t n;
        while (got < cap && (n = fread(out + got, 1, cap - got, p)) > 0) {
            got += n;
        }
        pclose(p);
    }
    out[got] = '\0';
    return out;
}

static void check_messages(const char *cert, const char *key, const char *other_key)
{
    char err[512], path[PATH_MAX], want[PATH_MAX + 64];
    CHECK(fp_http_tls_check(cert, key, err, sizeof err) == 0, "a good pair: %s", err);
    snprintf(path, sizeof path, "%s/missing.pem", base);
    snprintf(want, sizeof want, "tls_cert %s: No such file or directory", path);
    CHECK(fp_http_tls_check(path, key, err, sizeof err) == -1 && strcmp(err, want) == 0, "%s", err);
    snprintf(want, sizeof want, "tls_cert %s: not a PEM certificate chain", key);
    CHECK(fp_http_tls_check(key, key, err, sizeof err) == -1 && strncmp(err, want, strlen(want)) == 0, "%s", err);
    snprintf(want, sizeof want, "tls_key %s: not a PEM private key", cert);
    CHECK(fp_http_tls_check(cert, cert, err, sizeof err) == -1 && strncmp(err, want, strlen(want)) == 0, "%s", err);
    snprintf(want, sizeof want, "tls_key %s: not the private key of the certificate in tls_cert", other_key);
    CHECK(fp_http_tls_check(cert, other_key, err, sizeof err) == -1 && strncmp(err, want, strlen(want)) == 0,
          "%s", err);
    CHECK(fp_http_tls_check(cert, NULL, err, sizeof err) == -1 && strstr(err, "tls_key: missing"), "%s", err);
}

/* Plain HTTP on the TLS port: closed without an HTTP answer. */
static void check_no_tls_client(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(0x7f000001)};
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    CHECK(connect(fd, (struct sockaddr *)&a, sizeof a) == 0, "connect");
    const char *req = "GET /s.txt HTTP/1.1\r\nHost: x\r\n\r\n";
    (void)send(fd, req, strlen(req), MSG_NOSIGNAL);
    char buf[4096];
    ssize_t n, total = 0;
    int http = 0;
    while ((n = recv(fd, buf, sizeof buf, 0)) > 0) {
        http |= total == 0 && n >= 5 && memcmp(buf, "HTTP/", 5) == 0;
        total += n;
    }
    CHECK(n == 0 || n < 0, "closed");
    CHECK(!http, "no HTTP answer without TLS");
    close(fd);
}

int main(void)
{
    if (system("command -v openssl >/dev/null && command -v curl >/dev/null") != 0) {
        fprintf(stderr, "skipped: needs the openssl and curl commands\n");
        return 77;
    }
    if (!mkdtemp(base)) {
        perror("mkdtemp");
        return 2;
    }
    char cert[PATH_MAX], key[PATH_MAX], other_key[PATH_MAX], command[4 * PATH_MAX], path[PATH_MAX];
    snprintf(cert, sizeof cert, "%s/cert.pem", base);
    snprintf(key, sizeof key, "%s/key.pem", base);
    snprintf(other_key, sizeof other_key, "%s/other.pem", base);
    snprintf(command, sizeof command,
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout '%s' -out '%s' "
             "-days 2 -subj /CN=localhost -addext subjectAltName=IP:127.0.0.1 2>/dev/null && "
             "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out '%s' 2>/dev/null",
             key, cert, other_key);
    CHECK(system(command) == 0, "openssl made the certificate");
    snprintf(path, sizeof path, "%s/s.txt", base);
    FILE *f = fopen(path, "w");
    fputs("static text\n", f);
    fclose(f);

    check_messages(cert, key, other_key);

    static const char *const split[] = {".php"}, *const indexes[] = {"index.html"}, *const hidden[] = {".well-known"};
    fp_router_options options = {"index.php", split, 1, indexes, 1, hidden, 1, 1};
    static fp_router router;
    CHECK(fp_router_init(&router, base, &options) == 0, "router");
    char err[512];
    fp_http_server *server = fp_http_server_new(2, 0, err, sizeof err);
    CHECK(server != NULL, "%s", err);
    fp_http_site site = {.host = "127.0.0.1", .port = 0, .router = &router, .max_body_size = 1000,
                         .metrics = 1, .tls_cert = cert, .tls_key = key};
    CHECK(fp_http_server_add_site(server, &site, err, sizeof err) == 0, "%s", err);
    CHECK(fp_http_server_start(server, err, sizeof err) == 0, "%s", err);
    pthread_t answerer;
    pthread_create(&answerer, NULL, answer_python_queue, server);

    /* STREAMS requests multiplexed on one HTTP/2 connection (curl -Z), each answered from the
     * answerer thread; one line per transfer: protocol, new connections, status, body size. */
    int len = snprintf(command, sizeof command, "curl -s -Z --http2 --cacert '%s' 2>/dev/null "
                       "-w '%%{http_version} %%{num_connects} %%{response_code} %%{size_download}\\n'", cert);
    for (int i = 0; i < STREAMS; i++) {
        len += snprintf(command + len, sizeof command - (size_t)len, " -o /dev/null https://127.0.0.1:%d/metrics?%d",
                        site.bound_port, i);
    }
    char *out = run(command);
    int streams = 0, connects = 0;
    for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n")) {
        int connected = 0;
        CHECK(sscanf(line, "2 %d 200 13", &connected) == 1, "an HTTP/2 200 of 13 bytes: %s", line);
        connects += connected;
        streams++;
    }
    CHECK(streams == STREAMS && connects == 1, "%d streams on %d connections", streams, connects);
    free(out);

    snprintf(command, sizeof command, "curl -s --http1.1 --cacert '%s' -w ' %%{http_version}' https://127.0.0.1:%d/s.txt",
             cert, site.bound_port);
    out = run(command);
    CHECK(strcmp(out, "static text\n 1.1") == 0, "HTTPS/1.1: %s", out);
    free(out);

    check_no_tls_client(site.bound_port);

    fp_http_counters c;
    fp_http_server_counters(server, &c);
    CHECK(c.requests == STREAMS + 1 && c.client_gone == 0, "%llu requests", (unsigned long long)c.requests);
    CHECK(fp_http_server_wait_idle(server, 5000) == 0, "nothing left in flight");
    fp_http_server_stop(server);
    pthread_join(answerer, NULL);
    fp_http_server_free(server);

    snprintf(command, sizeof command, "rm -rf '%s'", base);
    if (system(command) != 0) {
        fprintf(stderr, "could not remove %s\n", base);
    }
    printf("%d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
