/*
 * Fuzz target of the router (csrc/router.h): request paths, query strings and the Range,
 * If-Range, If-None-Match and If-Modified-Since headers, against a real document root with
 * PHP sources, hidden files and symlinks in and out of it.
 *
 * Invariants checked on every input, in both symlink modes:
 *   - no crash, no out-of-bounds access: the result buffer is a heap block of exactly
 *     fp_route_buffer_size() bytes, and one byte less than a result needs gives ERANGE;
 *   - a NUL byte is 400, a ".." segment is 403;
 *   - a static file is never PHP source nor a hidden file (the fixture marks their contents),
 *     and a routed file is inside the root, or (following symlinks) under the one directory the
 *     root links out to on purpose;
 *   - a redirect's Location is one header line, a local path, never "//host";
 *   - the static decision is one of 200/206/304/405/412/416 with a range inside the file.
 *
 * Two builds:
 *   - libFuzzer (clang): clang -fsanitize=fuzzer,address,undefined -DFP_LIBFUZZER -Icsrc
 *     csrc/router.c tests/native/fuzz_router.c -o fuzz_router && ./fuzz_router
 *   - standalone (gcc, ctest): main() below runs a bounded number of mutations of a built-in
 *     seed corpus with a fixed PRNG seed, so that a CI failure reproduces:
 *     fuzz_router [ITERATIONS [SEED]]
 */
#define _GNU_SOURCE
#include "router_site.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PHP_MARK "<?php"
#define HIDDEN_MARK "HIDDEN"

/* [0] follow_symlinks = 0, [1] = 1, [2] = 1 without a front controller (404s) */
static fp_router routers[3];

static void setup(void)
{
    site_create("fp-fuzz");
    atexit(site_remove);
    site_file("secret.txt", "outside the root");
    site_file("outside.php", PHP_MARK " outside");
    site_file(".env", HIDDEN_MARK);
    site_file("shared/tpl/page.css", "tpl{}");
    site_file("shared/tpl/view.php", PHP_MARK);
    site_file("shared/tpl/.secret", HIDDEN_MARK);
    static const char *php[] = {
        "index.php", "info.php", "UPPER.PHP", "blog/index.php", "blog/post.php", "a b/index.php",
        "legacy.phtml", "config.inc", "lib.php5", "index.php~", "wp-config.php.bak", "x.inc.dist~",
        "settings.PHP.orig", "dir.php/inner.php", "static/x.phps", "tool.phar",
    };
    static const char *hidden[] = {".env", ".htaccess", ".git/config", "blog/.env", ".hidden/x.txt"};
    static const char *plain[] = {
        "style.css", "data.bin", "shown.php.txt", ".well-known/security.txt", "static/index.html",
        "static/index.txt", "%2e%2e/literal.txt", "a\\b.txt", "caf\xc3\xa9.txt", "bad\xff.txt",
        "dir.php/inner.txt", "deep/a/b/c/d.txt",
    };
    char rel[PATH_MAX];
    for (size_t i = 0; i < sizeof php / sizeof *php; i++) {
        snprintf(rel, sizeof rel, "public/%s", php[i]);
        site_file(rel, PHP_MARK);
    }
    for (size_t i = 0; i < sizeof hidden / sizeof *hidden; i++) {
        snprintf(rel, sizeof rel, "public/%s", hidden[i]);
        site_file(rel, HIDDEN_MARK);
    }
    for (size_t i = 0; i < sizeof plain / sizeof *plain; i++) {
        snprintf(rel, sizeof rel, "public/%s", plain[i]);
        site_file(rel, "plain");
    }
    site_link("style.css", "public/link_in.css");
    site_link("blog", "public/link_blog");
    site_link("../secret.txt", "public/link_out.txt");   /* out of the root, not under shared/ */
    site_link("../outside.php", "public/link_out.php");
    site_link("../.env", "public/link_env_out.txt");
    site_link(".env", "public/link_env.txt");
    site_link(".git", "public/gitlink");
    site_link("info.php", "public/source.txt");
    site_link("../shared/tpl", "public/tpl");
    site_link("..", "public/up");
    site_link(".", "public/self");
    site_link("nowhere", "public/dangling");
    for (int i = 0; i < 3; i++) {
        fp_router_options o = site_options(i < 2 ? "index.php" : "main.php", i > 0);
        if (fp_router_init(&routers[i], root, &o) != 0)
            site_fail("fp_router_init");
    }
}

#define ASSERT(cond, ...) do { \
        if (!(cond)) { \
            fprintf(stderr, "fuzz_router: invariant failed: %s: ", #cond); \
            fprintf(stderr, __VA_ARGS__); \
            fputc('\n', stderr); \
            abort(); \
        } \
    } while (0)

static int under(const char *dir, fp_str p)
{
    size_t n = strlen(dir);
    return p.len > n && memcmp(p.ptr, dir, n) == 0 && p.ptr[n] == '/';
}

static int file_has(fp_str path, const char *mark)
{
    int fd = open(path.ptr, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return 0;
    char buf[64];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    return strstr(buf, mark) != NULL;
}

static int has_dotdot_segment(const char *p, size_t n)
{
    for (size_t i = 0; i + 1 < n; i++)
        if (p[i] == '.' && p[i + 1] == '.' && (i == 0 || p[i - 1] == '/') && (i + 2 == n || p[i + 2] == '/'))
            return 1;
    return 0;
}

static void check_string(fp_str s, const char *buf, size_t cap)
{
    if (!s.ptr)
        return;
    ASSERT(s.ptr >= buf && s.ptr + s.len < buf + cap && s.ptr[s.len] == '\0', "string outside the buffer");
}

static long kinds_seen[FP_ROUTE_BAD_REQUEST + 1];

static void fuzz_route(const fp_router *r, const char *path, size_t len, const char *query, size_t qlen)
{
    int follow = r->options.follow_symlinks;
    size_t cap = fp_route_buffer_size(r, len, qlen);
    char *buf = malloc(cap);
    fp_route out;
    int rc = fp_route_resolve(r, path, len, query, qlen, buf, cap, &out);
    ASSERT(rc == 0, "rc %d", rc);
    check_string(out.script_name, buf, cap);
    check_string(out.script_filename, buf, cap);
    check_string(out.real_path, buf, cap);
    check_string(out.location, buf, cap);

    if (memchr(path, '\0', len))
        ASSERT(out.kind == FP_ROUTE_BAD_REQUEST && out.status == 400, "NUL byte not refused");
    else if (has_dotdot_segment(path, len))
        ASSERT(out.kind == FP_ROUTE_FORBIDDEN && out.status == 403, "\"..\" not refused");

    size_t need = 0;
    if ((unsigned)out.kind <= FP_ROUTE_BAD_REQUEST)
        kinds_seen[out.kind]++;
    switch (out.kind) {
    case FP_ROUTE_STATIC:
    case FP_ROUTE_PHP:
        ASSERT(out.status == 200 && out.real_path.len > 0, "no real path");
        /* The fixture's links out of the root all lead into `base`: nothing else is reachable. */
        ASSERT(under(follow ? base : root, out.real_path), "left the %s: %s", follow ? "fixture" : "root",
               out.real_path.ptr);
        ASSERT(!file_has(out.real_path, HIDDEN_MARK), "a hidden file is routed: %s", out.real_path.ptr);
        if (out.kind == FP_ROUTE_STATIC)
            ASSERT(!file_has(out.real_path, PHP_MARK), "PHP source served as static: %s", out.real_path.ptr);
        else
            ASSERT(out.script_filename.len == strlen(root) + out.script_name.len
                       && memcmp(out.script_filename.ptr, root, strlen(root)) == 0
                       && memcmp(out.script_filename.ptr + strlen(root), out.script_name.ptr, out.script_name.len) == 0,
                   "SCRIPT_FILENAME is not root + SCRIPT_NAME");
        need = out.script_name.len + 1 + out.real_path.len + 1
             + (out.kind == FP_ROUTE_PHP ? out.script_filename.len + 1 : 0);
        if (out.kind == FP_ROUTE_PHP && out.path_info.len)
            ASSERT(out.path_info.ptr >= path && out.path_info.ptr + out.path_info.len == path + len,
                   "PATH_INFO is not a suffix of the path");
        break;
    case FP_ROUTE_REDIRECT:
        ASSERT(out.status == 308 && out.location.len >= 1 && out.location.ptr[0] == '/', "location");
        ASSERT(out.location.len < 2 || out.location.ptr[1] != '/', "protocol-relative location");
        for (size_t i = 0; i < out.location.len; i++)
            ASSERT((unsigned char)out.location.ptr[i] > ' ' && out.location.ptr[i] != 0x7f, "control byte in location");
        need = out.location.len + 1;
        break;
    case FP_ROUTE_FORBIDDEN:
        ASSERT(out.status == 403 && out.reason, "403");
        break;
    case FP_ROUTE_NOT_FOUND:
        ASSERT(out.status == 404, "404");
        break;
    case FP_ROUTE_BAD_REQUEST:
        ASSERT(out.status == 400, "400");
        break;
    default:
        ASSERT(0, "kind %d", (int)out.kind);
    }
    free(buf);
    if (need) {   /* one byte short of this result: ERANGE, and nothing written past the block */
        char *small = malloc(need - 1);
        fp_route o2;
        ASSERT(fp_route_resolve(r, path, len, query, qlen, small, need - 1, &o2) == ERANGE, "no ERANGE");
        free(small);
    }
}

static void fuzz_static(const uint8_t *data, size_t size, fp_str range, fp_str if_range, fp_str inm, fp_str ims)
{
    uint64_t file_size = 0;
    int64_t mtime = 0;
    for (size_t i = 0; i < size && i < 8; i++)
        file_size = file_size << 8 | data[i];
    file_size %= size & 1 ? 20000 : UINT64_MAX;
    for (size_t i = 8; i < size && i < 16; i++)
        mtime = (int64_t)((uint64_t)mtime << 8 | data[i]);
    static const char *methods[] = {"GET", "HEAD", "POST"};
    fp_file_info f = {file_size, mtime, size % 1000000000};
    fp_static_request q = {.method = {methods[size % 3], strlen(methods[size % 3])},
                           .range = range, .if_range = if_range, .if_none_match = inm,
                           .if_modified_since = ims, .if_match = (size % 5 == 0) ? inm : (fp_str){0},
                           .if_unmodified_since = (size % 7 == 0) ? ims : (fp_str){0}};
    fp_static_response out;
    ASSERT(fp_static_decide(&f, (const char *)data, size < 40 ? size : 40, &q, &out) == 0, "decide");
    ASSERT(out.content_type && out.etag[0] == '"' && out.etag[strlen(out.etag) - 1] == '"', "validators");
    switch (out.status) {
    case 200:
        ASSERT(out.offset == 0 && out.length == file_size, "200 length");
        break;
    case 206:
        ASSERT(out.length >= 1 && out.offset < file_size && out.length <= file_size - out.offset, "206 range");
        ASSERT(q.method.len == 3 && memcmp(q.method.ptr, "GET", 3) == 0, "206 for HEAD");
        break;
    case 304: case 405: case 412: case 416:
        ASSERT(!out.send_body, "body on %d", out.status);
        break;
    default:
        ASSERT(0, "status %d", out.status);
    }
    ASSERT(!out.send_body || (out.length > 0 && q.method.ptr[0] == 'G'), "send_body");
    int64_t t;
    char date[FP_HTTP_DATE_LEN + 1];
    if (fp_http_date_parse(ims.ptr, ims.len, &t) == 0 && fp_http_date_format(t, date) == 0) {
        int64_t back;
        ASSERT(fp_http_date_parse(date, strlen(date), &back) == 0 && back == t, "date round trip");
    }
}

/* Input: path \n query \n Range \n If-Range \n If-None-Match \n If-Modified-Since (any bytes,
 * NUL included; missing fields are absent headers). */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    if (!ready) {
        setup();
        ready = 1;
    }
    fp_str field[6] = {{0}};
    const char *p = (const char *)data, *end = p + size;
    for (int i = 0; i < 6 && p <= end; i++) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        field[i].ptr = p;
        field[i].len = nl ? (size_t)(nl - p) : (size_t)(end - p);
        if (!nl)
            break;
        p = nl + 1;
    }
    /* Copies on the heap of exactly their size: a read past them is an ASan error. */
    char *path = malloc(field[0].len ? field[0].len : 1);
    memcpy(path, field[0].ptr ? field[0].ptr : "", field[0].len);
    char *query = malloc(field[1].len ? field[1].len : 1);
    memcpy(query, field[1].ptr ? field[1].ptr : "", field[1].len);
    for (int i = 0; i < 3; i++)
        fuzz_route(&routers[i], path, field[0].len, query, field[1].len);
    fuzz_static(data, size, field[2], field[3], field[4], field[5]);
    free(query);
    free(path);
    return 0;
}

#ifndef FP_LIBFUZZER
/* ---- standalone driver: bounded, deterministic mutation of a seed corpus ------------------- */

static const char *const seeds[] = {
    "/", "/index.php/foo/bar", "/blog", "/blog/", "/blog/post.php/a//b", "/style.css\n\nbytes=0-9",
    "/data.bin\n\nbytes=-5\n\"x\"\n\"a\", W/\"b\"\nSun, 06 Nov 1994 08:49:37 GMT",
    "/link_out.txt", "/link_out.php/x", "/tpl/page.css", "/tpl/view.php", "/tpl/.secret",
    "/link_env.txt", "/link_env_out.txt", "/gitlink/config", "/source.txt", "/up/secret.txt",
    "/self/index.php~", "/.well-known/security.txt", "/%2e%2e/literal.txt", "/../secret.txt",
    "/a b\na=1&b=2\r\n", "/static/\n\nbytes=100-\nSun, 06 Nov 1994 08:49:37 GMT",
    "/caf\xc3\xa9.txt", "/bad\xff.txt", "/dir.php/inner.txt", "/deep/a/b/c/d.txt",
    "/wp-config.php.bak", "/x.inc.dist~", "/UPPER.PHP/x", "/index.php\0.txt", "//evil.com",
    "/link_blog\nq", "/dangling", "/static/x.phps\n\nbytes=0-0,1-1\nSunday, 06-Nov-94 08:49:37 GMT",
};

static const char *const tokens[] = {
    "/", "//", ".", "..", "/..", "/.", ".php", ".PHP", "index.php", "~", ".bak", ".env", ".git",
    ".well-known", "link_out.txt", "link_out.php", "tpl", "up", "self", "gitlink", "source.txt",
    "%2e", "\\", "\0", "\n", "\r", " ", "?", "bytes=", "-", ",", "W/", "\"", "*", "GMT",
    "Sun, 06 Nov 1994 08:49:37 GMT", "Sun Nov  6 08:49:37 1994", "18446744073709551616", "\xff",
    "\xc3\xa9",
};

static uint64_t rng_state;

static uint64_t rnd(void)   /* xorshift64*: deterministic for a seed */
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ULL;
}

enum { FUZZ_MAX_INPUT = 6000, FUZZ_POOL = 64 };

static size_t mutate(uint8_t *buf, size_t len)
{
    int rounds = 1 + (int)(rnd() % 4);
    for (int k = 0; k < rounds; k++) {
        size_t pos = len ? rnd() % (len + 1) : 0;
        switch (rnd() % 7) {
        case 0:   /* flip a byte */
            if (len)
                buf[rnd() % len] ^= (uint8_t)(1u << (rnd() % 8));
            break;
        case 1:   /* set a byte */
            if (len)
                buf[rnd() % len] = (uint8_t)rnd();
            break;
        case 2: { /* delete a range */
            if (!len)
                break;
            size_t at = rnd() % len, n = 1 + rnd() % (len - at);
            memmove(buf + at, buf + at + n, len - at - n);
            len -= n;
            break;
        }
        case 3:
        case 4: { /* insert a token */
            const char *t = tokens[rnd() % (sizeof tokens / sizeof *tokens)];
            size_t n = t[0] ? strlen(t) : 1;   /* the "\0" token is one NUL byte */
            if (len + n > FUZZ_MAX_INPUT)
                break;
            memmove(buf + pos + n, buf + pos, len - pos);
            memcpy(buf + pos, t, n);
            len += n;
            break;
        }
        case 5: { /* repeat a chunk (long paths, many segments) */
            if (!len)
                break;
            uint8_t chunk[256];
            size_t at = rnd() % len, n = 1 + rnd() % (len - at);
            if (n > sizeof chunk)
                n = sizeof chunk;
            memcpy(chunk, buf + at, n);
            for (size_t i = 1 + rnd() % 64; i > 0 && len + n <= FUZZ_MAX_INPUT; i--) {
                memmove(buf + pos + n, buf + pos, len - pos);
                memcpy(buf + pos, chunk, n);
                len += n;
            }
            break;
        }
        default: { /* splice in a seed */
            const char *s = seeds[rnd() % (sizeof seeds / sizeof *seeds)];
            size_t n = strlen(s);
            if (len + n > FUZZ_MAX_INPUT)
                break;
            memmove(buf + pos + n, buf + pos, len - pos);
            memcpy(buf + pos, s, n);
            len += n;
            break;
        }
        }
    }
    return len;
}

int main(int argc, char **argv)
{
    long iterations = argc > 1 ? atol(argv[1]) : 200000;
    rng_state = argc > 2 ? strtoull(argv[2], NULL, 0) : 0x9e3779b97f4a7c15ULL;
    if (!rng_state)
        rng_state = 1;
    static uint8_t pool[FUZZ_POOL][FUZZ_MAX_INPUT];
    static size_t pool_len[FUZZ_POOL];
    static uint8_t buf[FUZZ_MAX_INPUT];
    size_t nseeds = sizeof seeds / sizeof *seeds;
    for (size_t i = 0; i < nseeds; i++)   /* the seeds themselves */
        LLVMFuzzerTestOneInput((const uint8_t *)seeds[i], strlen(seeds[i]));
    LLVMFuzzerTestOneInput((const uint8_t *)"/index.php\0.txt", 15);   /* a NUL inside */
    for (long it = 0; it < iterations; it++) {
        size_t len;
        size_t slot = rnd() % FUZZ_POOL;
        if (pool_len[slot] && rnd() % 4) {
            len = pool_len[slot];
            memcpy(buf, pool[slot], len);
        } else {
            const char *s = seeds[rnd() % nseeds];
            len = strlen(s);
            memcpy(buf, s, len);
        }
        len = mutate(buf, len);
        LLVMFuzzerTestOneInput(buf, len);
        memcpy(pool[slot], buf, len);   /* keep mutants to grow long, deep inputs */
        pool_len[slot] = len;
    }
    printf("fuzz_router: %ld iterations, no invariant broken; routes: php %ld, static %ld, redirect %ld,"
           " 403 %ld, 404 %ld, 400 %ld\n", iterations, kinds_seen[FP_ROUTE_PHP], kinds_seen[FP_ROUTE_STATIC],
           kinds_seen[FP_ROUTE_REDIRECT], kinds_seen[FP_ROUTE_FORBIDDEN], kinds_seen[FP_ROUTE_NOT_FOUND],
           kinds_seen[FP_ROUTE_BAD_REQUEST]);
    return 0;
}
#endif
