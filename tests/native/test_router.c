/*
 * Unit tests of the router (csrc/router.h) on a real document root in a temporary directory:
 * real files, directories, hidden names and symlinks in and out of the root.
 *
 *   build/cmake/tests/native/test_router          # every check; exit status 1 on a failure
 */
#define _GNU_SOURCE
#include "check.h"
#include "router_site.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- fixture ------------------------------------------------------------------------------ */

static void build_site(void)
{
    site_create("fp-router");
    site_file("secret.txt", "TOP SECRET");
    site_file("outside.php", "<?php");
    site_file("private/x.txt", "private");
    site_file("private/index.php", "<?php");
    site_file(".env", "OUTSIDE=1");
    site_file(".ssh/id_rsa", "KEY");
    site_file("shared/tpl/page.css", "tpl{}");
    static const char *files[] = {
        "index.php", "info.php", "UPPER.PHP", "style.css", "legacy.phtml", "config.inc",
        "shown.php.txt", ".env", ".htaccess", ".git/config", ".well-known/security.txt",
        "blog/index.php", "blog/post.php", "blog/.env", "docs/index.html", "static/index.html",
        "static/index.txt", "%2e%2e/literal.txt", "a\\b.txt", "dir.php/inner.txt",
        "index.php~", "wp-config.php.bak", "settings.PHP.orig", "conf.inc.dist", "lib.php5",
        "x.php.swp~", "caf\xc3\xa9.txt", "bad\xff\xfe.txt", "empty/.keep", "nested/a/b/c/d.txt",
    };
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        char rel[PATH_MAX];
        snprintf(rel, sizeof rel, "public/%s", files[i]);
        site_file(rel, "x");
    }
    site_dir("public/nothing");
    site_link("style.css", "public/link_in.css");
    site_link("blog", "public/link_blog");
    site_link("../secret.txt", "public/link_out.txt");
    site_link("../private", "public/link_dir_out");
    site_link("../outside.php", "public/link_out.php");
    site_link("../outside.php", "public/link_out_src.txt");
    site_link("../.env", "public/link_out_env.txt");
    site_link("../.ssh", "public/link_out_ssh");
    site_link("../shared/tpl", "public/tpl");
    site_link(".env", "public/link_env.txt");
    site_link(".git", "public/gitlink");
    site_link("info.php", "public/source.txt");
    site_link("missing", "public/dangling.txt");
    site_link("loop_b", "public/loop_a");
    site_link("loop_a", "public/loop_b");
    site_link("..", "public/up");   /* a link to the parent: out of the root */
    site_link(".", "public/self");  /* a link to the root itself */
}

/* ---- helpers ------------------------------------------------------------------------------ */

static fp_router_options options(int follow)
{
    return site_options("index.php", follow);
}

static fp_router follow_router, strict_router;

typedef struct result {
    fp_route r;
    int rc;
    char buf[3 * PATH_MAX + 65536];
} result;

static result res;   /* the last route_of() */

static const fp_route *route_q(const fp_router *rt, const char *path, size_t len, const char *query)
{
    res.rc = fp_route_resolve(rt, path, len, query, query ? strlen(query) : 0, res.buf, sizeof res.buf, &res.r);
    return &res.r;
}

static const fp_route *route_of(const fp_router *rt, const char *path)
{
    return route_q(rt, path, strlen(path), NULL);
}

static int str_is(fp_str s, const char *expect)
{
    return s.len == strlen(expect) && memcmp(s.ptr, expect, s.len) == 0 && s.ptr[s.len] == '\0';
}

static const char *kind_name(fp_route_kind k)
{
    static const char *names[] = {"?", "php", "static", "redirect", "forbidden", "not_found", "bad_request"};
    return (unsigned)k < 7 ? names[k] : "?";
}

#define EXPECT_KIND(rt, path, k) do { \
        const fp_route *r_ = route_of((rt), (path)); \
        CHECK(res.rc == 0 && r_->kind == (k), "%s -> %s (rc %d), expected %s", (path), \
              kind_name(r_->kind), res.rc, kind_name(k)); \
    } while (0)

/* ---- tests ----------------------------------------------------------------------------------- */

static void test_init(void)
{
    fp_router r;
    fp_router_options o = options(1);
    CHECK(fp_router_init(&r, at("public"), &o) == 0, "init");
    CHECK(strcmp(r.root, root) == 0 && r.root_len == strlen(root), "root %s", r.root);
    CHECK(fp_router_init(&r, at("nope"), &o) == ENOENT, "missing root");
    CHECK(fp_router_init(&r, at("secret.txt"), &o) == ENOTDIR, "file as root");
    o.index = "a/b.php";
    CHECK(fp_router_init(&r, root, &o) == EINVAL, "index with a slash");
    o.index = "..";
    CHECK(fp_router_init(&r, root, &o) == EINVAL, "index ..");
    o = options(1);
    const char *bad_ext[] = {"php"};
    o.split_extensions = bad_ext;
    CHECK(fp_router_init(&r, root, &o) == EINVAL, "extension without a dot");
    o = options(1);
    CHECK(fp_route_resolve(NULL, "/", 1, NULL, 0, res.buf, 10, &res.r) == EINVAL, "NULL router");
    CHECK(fp_route_resolve(&follow_router, NULL, 3, NULL, 0, res.buf, 10, &res.r) == EINVAL, "NULL path");
}

static void test_php(void)
{
    const fp_route *r = route_of(&follow_router, "/info.php");
    CHECK(r->kind == FP_ROUTE_PHP && r->status == 200 && !r->front_controller, "info.php");
    CHECK(str_is(r->script_name, "/info.php"), "script_name");
    CHECK(str_is(r->script_filename, at("public/info.php")), "script_filename");
    CHECK(str_is(r->real_path, at("public/info.php")), "real_path");
    CHECK(r->path_info.len == 0, "no path_info");

    static const struct { const char *path, *script, *info; } split[] = {
        {"/index.php/foo/bar", "/index.php", "/foo/bar"},
        {"/index.php/", "/index.php", "/"},
        {"/blog/post.php/a//b/", "/blog/post.php", "/a//b/"},
        {"//blog//post.php/x", "/blog/post.php", "/x"},
        {"/info.php/with.php/inside", "/info.php", "/with.php/inside"},
        {"/UPPER.PHP/x", "/UPPER.PHP", "/x"},
        {"index.php/no-leading-slash", "/index.php", "/no-leading-slash"},
    };
    for (size_t i = 0; i < sizeof split / sizeof *split; i++) {
        r = route_of(&follow_router, split[i].path);
        CHECK(r->kind == FP_ROUTE_PHP && str_is(r->script_name, split[i].script)
                  && r->path_info.len == strlen(split[i].info)
                  && memcmp(r->path_info.ptr, split[i].info, r->path_info.len) == 0,
              "%s", split[i].path);
    }
    r = route_of(&follow_router, "/blog/");
    CHECK(r->kind == FP_ROUTE_PHP && str_is(r->script_name, "/blog/index.php") && !r->front_controller, "/blog/");
    static const char *roots[] = {"/", "", "//"};
    for (size_t i = 0; i < 3; i++) {
        r = route_q(&follow_router, roots[i], strlen(roots[i]), NULL);
        CHECK(res.rc == 0 && r->kind == FP_ROUTE_PHP && str_is(r->script_name, "/index.php") && !r->front_controller,
              "root '%s'", roots[i]);
    }
}

static void test_front_controller(void)
{
    static const char *paths[] = {
        "/some/route", "/missing.php", "/missing.php/foo", "/assets/", "/nothing/here/",
        "/docs/", "/dir.php/inner", "/%2e%2e/secret.txt", "/%252e%252e/secret.txt",
        "/sub\\..\\..\\secret.txt", "/dangling.txt", "/loop_a", "/empty",
    };
    for (size_t i = 0; i < sizeof paths / sizeof *paths; i++) {
        const fp_route *r = route_of(&follow_router, paths[i]);
        CHECK(r->kind == FP_ROUTE_PHP && r->front_controller && str_is(r->script_name, "/index.php")
                  && r->path_info.len == 0 && str_is(r->script_filename, at("public/index.php")),
              "%s -> %s", paths[i], kind_name(r->kind));
    }
}

static void test_static(void)
{
    static const struct { const char *path, *rel; } files[] = {
        {"/style.css", "public/style.css"},
        {"/style.css/", "public/style.css"},
        {"/shown.php.txt", "public/shown.php.txt"},
        {"/link_in.css", "public/style.css"},
        {"/.well-known/security.txt", "public/.well-known/security.txt"},
        {"/%2e%2e/literal.txt", "public/%2e%2e/literal.txt"},   /* decoded once: a literal name */
        {"/a\\b.txt", "public/a\\b.txt"},
        {"/caf\xc3\xa9.txt", "public/caf\xc3\xa9.txt"},          /* UTF-8 */
        {"/bad\xff\xfe.txt", "public/bad\xff\xfe.txt"},          /* invalid UTF-8: bytes are bytes */
        {"/nested/a/b/c/d.txt", "public/nested/a/b/c/d.txt"},
        {"/self/style.css", "public/style.css"},                 /* a link to the root itself */
    };
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        const fp_route *r = route_of(&follow_router, files[i].path);
        CHECK(r->kind == FP_ROUTE_STATIC && str_is(r->real_path, at(files[i].rel)), "%s -> %s", files[i].path,
              kind_name(r->kind));
    }
    /* no front controller: the file server's index.html, else 404 */
    fp_router bare;
    fp_router_options o = options(1);
    o.index = "nope.php";
    CHECK(fp_router_init(&bare, root, &o) == 0, "bare");
    const fp_route *r = route_of(&bare, "/static/");
    CHECK(r->kind == FP_ROUTE_STATIC && str_is(r->script_name, "/static/index.html")
              && str_is(r->real_path, at("public/static/index.html")), "static index");
    r = route_q(&bare, "/static", 7, "a=1");
    CHECK(r->kind == FP_ROUTE_REDIRECT && str_is(r->location, "/static/?a=1"), "static index redirect");
    EXPECT_KIND(&follow_router, "/static/", FP_ROUTE_PHP);   /* try_files reaches index.php first */
    EXPECT_KIND(&bare, "/missing", FP_ROUTE_NOT_FOUND);
    EXPECT_KIND(&bare, "/nothing/", FP_ROUTE_NOT_FOUND);
    EXPECT_KIND(&bare, "/style.css", FP_ROUTE_STATIC);
}

static void test_redirects(void)
{
    static const struct { const char *path, *query, *location; } cases[] = {
        {"/blog", "", "/blog/"},
        {"/blog", "a=1&b=%2F", "/blog/?a=1&b=%2F"},
        {"//blog", "", "/blog/"},
        {"/link_blog", "", "/link_blog/"},
        {"/link_dir_out", "", "/link_dir_out/"},
        {"/blog", "x=a b\r\nSet-Cookie:1", "/blog/?x=a%20b%0D%0ASet-Cookie:1"},   /* one header line */
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const fp_route *r = route_q(&follow_router, cases[i].path, strlen(cases[i].path), cases[i].query);
        CHECK(r->kind == FP_ROUTE_REDIRECT && r->status == 308 && str_is(r->location, cases[i].location),
              "%s?%s -> %.*s", cases[i].path, cases[i].query, (int)r->location.len, r->location.ptr);
    }
}

static void test_refusals(void)
{
    static const char *forbidden[] = {
        "/.env", "/.htaccess", "/.git", "/.git/", "/.git/config", "/blog/.env", "/.env.php",
        "/.nonexistent", "/index.php/.git/config", "/.well-known/../.env", "/./index.php", "/.",
        "/..", "/../secret.txt", "/blog/../../secret.txt", "/..%2f..%2fsecret.txt",
        "/link_env.txt", "/gitlink/config", "/gitlink/missing", "/link_out_env.txt", "/link_out_ssh/id_rsa",
        "/link_out_src.txt", "/legacy.phtml", "/config.inc", "/lib.php5", "/index.php~",
        "/wp-config.php.bak", "/settings.PHP.orig", "/conf.inc.dist", "/x.php.swp~", "/source.txt",
        "/a/./b", "/a/../b", "/empty/.keep",
    };
    for (int follow = 0; follow < 2; follow++)
        for (size_t i = 0; i < sizeof forbidden / sizeof *forbidden; i++) {
            const fp_route *r = route_of(follow ? &follow_router : &strict_router, forbidden[i]);
            CHECK(r->kind == FP_ROUTE_FORBIDDEN && r->status == 403 && r->reason && r->real_path.len == 0,
                  "%s (follow %d) -> %s", forbidden[i], follow, kind_name(r->kind));
        }
    static const char nul[][16] = {"/\0", "/index.php\0.txt", "/style.css\0"};
    static const size_t nul_len[] = {2, 15, 11};
    for (size_t i = 0; i < 3; i++) {
        const fp_route *r = route_q(&follow_router, nul[i], nul_len[i], NULL);
        CHECK(r->kind == FP_ROUTE_BAD_REQUEST && r->status == 400, "NUL %zu", i);
    }
}

static void test_symlinks(void)
{
    /* followed by default, out of the root too */
    const fp_route *r = route_of(&follow_router, "/link_out.txt");
    CHECK(r->kind == FP_ROUTE_STATIC && str_is(r->real_path, at("secret.txt")), "link_out.txt");
    r = route_of(&follow_router, "/tpl/page.css");
    CHECK(r->kind == FP_ROUTE_STATIC && str_is(r->real_path, at("shared/tpl/page.css"))
              && str_is(r->script_name, "/tpl/page.css"), "tpl");
    r = route_of(&follow_router, "/link_dir_out/");
    CHECK(r->kind == FP_ROUTE_PHP && str_is(r->real_path, at("private/index.php"))
              && str_is(r->script_filename, at("public/link_dir_out/index.php")), "link_dir_out/");
    r = route_of(&follow_router, "/link_out.php/p");
    CHECK(r->kind == FP_ROUTE_PHP && str_is(r->real_path, at("outside.php")) && r->path_info.len == 2, "link_out.php");
    r = route_of(&follow_router, "/up/secret.txt");   /* the request path has no "..": the link does */
    CHECK(r->kind == FP_ROUTE_STATIC && str_is(r->real_path, at("secret.txt")), "up/secret.txt");
    EXPECT_KIND(&follow_router, "/up/.env", FP_ROUTE_FORBIDDEN);   /* hidden request segment */

    /* follow_symlinks = 0: anything out of the root is 403, even when missing; inside is fine */
    static const char *out[] = {
        "/link_out.txt", "/tpl/page.css", "/link_dir_out/", "/link_dir_out", "/link_dir_out/nope",
        "/link_out.php", "/link_out.php/p", "/up/secret.txt", "/up",
    };
    for (size_t i = 0; i < sizeof out / sizeof *out; i++)
        EXPECT_KIND(&strict_router, out[i], FP_ROUTE_FORBIDDEN);
    EXPECT_KIND(&strict_router, "/link_in.css", FP_ROUTE_STATIC);
    EXPECT_KIND(&strict_router, "/self/style.css", FP_ROUTE_STATIC);
    EXPECT_KIND(&strict_router, "/link_blog", FP_ROUTE_REDIRECT);
    r = route_of(&strict_router, "/link_blog/post.php");
    CHECK(r->kind == FP_ROUTE_PHP && str_is(r->real_path, at("public/blog/post.php"))
              && str_is(r->script_filename, at("public/link_blog/post.php")), "link_blog/post.php");
}

static void test_long_paths(void)
{
    /* Longer than PATH_MAX: no file can match, the front controller takes it. */
    size_t n = 3 * PATH_MAX;
    char *p = malloc(n + 1);
    for (size_t i = 0; i < n; i++)
        p[i] = i % 8 == 0 ? '/' : 'a';
    p[n] = '\0';
    size_t need = fp_route_buffer_size(&follow_router, n, 0);
    char *buf = malloc(need);
    fp_route r;
    CHECK(fp_route_resolve(&follow_router, p, n, NULL, 0, buf, need, &r) == 0 && r.kind == FP_ROUTE_PHP
              && r.front_controller, "very long path");
    /* one segment longer than NAME_MAX */
    memset(p + 1, 'b', n - 1);
    CHECK(fp_route_resolve(&follow_router, p, n, NULL, 0, buf, need, &r) == 0 && r.front_controller, "long name");
    /* a long existing directory chain with a redirect: its Location is 3x the path */
    memcpy(p, "/blog", 6);
    CHECK(fp_route_resolve(&follow_router, p, 5, "q=1", 3, buf, need, &r) == 0 && r.kind == FP_ROUTE_REDIRECT, "short");
    free(buf);
    free(p);
}

/* Exactly the bytes a result needs succeed, one less is ERANGE, and nothing is written past
 * the buffer (a heap buffer of exactly that size: ASan would see an overflow). */
static void test_buffer_boundaries(void)
{
    static const char *paths[] = {"/info.php/x/y", "/style.css", "/blog", "/some/route", "/.env", "/static/"};
    for (size_t i = 0; i < sizeof paths / sizeof *paths; i++) {
        const char *q = "a=%20&b";
        const fp_route *r = route_q(&follow_router, paths[i], strlen(paths[i]), q);
        CHECK(res.rc == 0, "%s", paths[i]);
        size_t need = 0;
        const fp_str *strs[] = {&r->script_name, &r->script_filename, &r->real_path, &r->location};
        for (size_t k = 0; k < 4; k++)
            if (strs[k]->ptr)
                need += strs[k]->len + 1;
        CHECK(need <= fp_route_buffer_size(&follow_router, strlen(paths[i]), strlen(q)), "bound %s", paths[i]);
        fp_route_kind kind = r->kind;
        char *exact = malloc(need ? need : 1);
        fp_route out;
        CHECK(fp_route_resolve(&follow_router, paths[i], strlen(paths[i]), q, strlen(q), exact, need, &out) == 0
                  && out.kind == kind, "exact size %s (%zu)", paths[i], need);
        free(exact);
        if (need) {
            char *small = malloc(need - 1 ? need - 1 : 1);
            CHECK(fp_route_resolve(&follow_router, paths[i], strlen(paths[i]), q, strlen(q), small, need - 1, &out)
                      == ERANGE && out.script_name.ptr == NULL && out.location.ptr == NULL,
                  "one byte less %s", paths[i]);
            free(small);
        }
    }
}

/* ---- static decisions ------------------------------------------------------------------------ */

static fp_str S(const char *s) { return (fp_str){s, s ? strlen(s) : 0}; }

static fp_static_response decide(uint64_t size, int64_t mtime, const char *method, const char *range,
                                 const char *if_range, const char *inm, const char *ims)
{
    fp_file_info f = {size, mtime, 123};
    fp_static_request q = {.method = S(method), .range = S(range), .if_range = S(if_range),
                           .if_none_match = S(inm), .if_modified_since = S(ims)};
    fp_static_response out;
    int rc = fp_static_decide(&f, "data.bin", 8, &q, &out);
    CHECK(rc == 0, "decide rc %d", rc);
    return out;
}

static void test_static_decisions(void)
{
    const int64_t t = 784111777;   /* Sun, 06 Nov 1994 08:49:37 GMT */
    fp_static_response d = decide(10240, t, "GET", NULL, NULL, NULL, NULL);
    CHECK(d.status == 200 && d.send_body && d.offset == 0 && d.length == 10240, "full");
    CHECK(strcmp(d.last_modified, "Sun, 06 Nov 1994 08:49:37 GMT") == 0, "%s", d.last_modified);
    CHECK(d.etag[0] == '"' && d.etag[strlen(d.etag) - 1] == '"', "etag %s", d.etag);
    CHECK(strcmp(d.content_type, "application/octet-stream") == 0, "type");
    char etag[FP_ETAG_MAX];
    strcpy(etag, d.etag);

    static const struct { const char *range; int status; uint64_t first, length; } ranges[] = {
        {"bytes=0-9", 206, 0, 10}, {"bytes=100-", 206, 100, 10140}, {"bytes=-5", 206, 10235, 5},
        {"bytes=-99999", 206, 0, 10240}, {"bytes=0-99999999999999999999999", 206, 0, 10240},
        {"bytes=10239-10239", 206, 10239, 1}, {"bytes = 5 - 6", 206, 5, 2}, {"BYTES=5-6", 206, 5, 2},
        {"bytes=10240-", 416, 0, 0}, {"bytes=-0", 416, 0, 0}, {"bytes=99999999999999999999-", 416, 0, 0},
        {"bytes=9-5", 200, 0, 10240}, {"bytes=0-1,5-6", 200, 0, 10240}, {"items=0-5", 200, 0, 10240},
        {"bytes=", 200, 0, 10240}, {"bytes=-", 200, 0, 10240}, {"bytes=a-b", 200, 0, 10240},
        {"", 200, 0, 10240},
    };
    for (size_t i = 0; i < sizeof ranges / sizeof *ranges; i++) {
        d = decide(10240, t, "GET", ranges[i].range, NULL, NULL, NULL);
        CHECK(d.status == ranges[i].status && d.offset == ranges[i].first && d.length == ranges[i].length,
              "%s -> %d %llu+%llu", ranges[i].range, d.status, (unsigned long long)d.offset,
              (unsigned long long)d.length);
    }
    d = decide(0, t, "GET", "bytes=0-", NULL, NULL, NULL);
    CHECK(d.status == 416, "empty file range");
    d = decide(0, t, "GET", NULL, NULL, NULL, NULL);
    CHECK(d.status == 200 && !d.send_body && d.length == 0, "empty file");
    d = decide(10240, t, "HEAD", "bytes=0-9", NULL, NULL, NULL);
    CHECK(d.status == 200 && !d.send_body && d.length == 10240, "HEAD ignores Range");
    d = decide(10240, t, "POST", NULL, NULL, NULL, NULL);
    CHECK(d.status == 405, "POST");
    d = decide(10240, t, "get", NULL, NULL, NULL, NULL);
    CHECK(d.status == 405, "methods are case-sensitive");

    /* If-Range */
    CHECK(decide(10240, t, "GET", "bytes=0-9", etag, NULL, NULL).status == 206, "If-Range etag");
    CHECK(decide(10240, t, "GET", "bytes=0-9", "Sun, 06 Nov 1994 08:49:37 GMT", NULL, NULL).status == 206, "date");
    CHECK(decide(10240, t, "GET", "bytes=0-9", "Sun, 06 Nov 1994 08:49:36 GMT", NULL, NULL).status == 200, "old");
    CHECK(decide(10240, t, "GET", "bytes=0-9", "\"stale\"", NULL, NULL).status == 200, "stale");
    char weak[FP_ETAG_MAX + 2];
    snprintf(weak, sizeof weak, "W/%s", etag);
    CHECK(decide(10240, t, "GET", "bytes=0-9", weak, NULL, NULL).status == 200, "weak If-Range");
    CHECK(decide(10240, t, "GET", "bytes=0-9", "", NULL, NULL).status == 200, "empty If-Range");

    /* If-None-Match / If-Modified-Since */
    CHECK(decide(10240, t, "GET", NULL, NULL, etag, NULL).status == 304, "inm");
    CHECK(decide(10240, t, "GET", NULL, NULL, weak, NULL).status == 304, "inm weak");
    CHECK(decide(10240, t, "GET", NULL, NULL, "*", NULL).status == 304, "inm *");
    char list[128];
    snprintf(list, sizeof list, "\"a\" , %s", etag);
    CHECK(decide(10240, t, "HEAD", NULL, NULL, list, NULL).status == 304, "inm list");
    CHECK(decide(10240, t, "GET", NULL, NULL, "\"no\"", NULL).status == 200, "inm other");
    CHECK(decide(10240, t, "GET", NULL, NULL, NULL, "Sun, 06 Nov 1994 08:49:37 GMT").status == 304, "ims =");
    CHECK(decide(10240, t, "GET", NULL, NULL, NULL, "Sunday, 06-Nov-94 08:49:38 GMT").status == 304, "ims 850");
    CHECK(decide(10240, t, "GET", NULL, NULL, NULL, "Sun Nov  6 08:49:36 1994").status == 200, "ims older");
    CHECK(decide(10240, t, "GET", NULL, NULL, NULL, "not a date").status == 200, "ims garbage");
    CHECK(decide(10240, t, "GET", NULL, NULL, "\"no\"", "Sun, 06 Nov 1994 08:49:37 GMT").status == 200,
          "inm wins over ims");

    /* If-Match / If-Unmodified-Since */
    fp_file_info f = {10, t, 0};
    fp_static_request q = {.method = S("GET"), .if_match = S("\"other\"")};
    fp_static_response out;
    fp_static_decide(&f, "x", 1, &q, &out);
    CHECK(out.status == 412, "if-match");
    q.if_match = S("*");
    fp_static_decide(&f, "x", 1, &q, &out);
    CHECK(out.status == 200, "if-match *");
    q.if_match = S(NULL);
    q.if_unmodified_since = S("Sat, 05 Nov 1994 08:49:37 GMT");
    fp_static_decide(&f, "x", 1, &q, &out);
    CHECK(out.status == 412, "ius");

    /* content types */
    static const struct { const char *name, *type; } types[] = {
        {"a.css", "text/css; charset=utf-8"}, {"A.HTML", "text/html; charset=utf-8"},
        {"x.tar.gz", "application/gzip"}, {"x.png", "image/png"}, {"x.svg", "image/svg+xml; charset=utf-8"},
        {"x.unknownext", "application/octet-stream"}, {"noext", "application/octet-stream"},
        {"x.", "application/octet-stream"}, {".css", "text/css; charset=utf-8"},
    };
    for (size_t i = 0; i < sizeof types / sizeof *types; i++)
        CHECK(strcmp(fp_content_type(types[i].name, strlen(types[i].name)), types[i].type) == 0, "%s", types[i].name);

    /* dates */
    char buf[FP_HTTP_DATE_LEN + 1];
    int64_t back;
    static const int64_t times[] = {0, -1, 951782400 /* 2000-02-29 */, 253402300799LL, -62167219200LL};
    for (size_t i = 0; i < sizeof times / sizeof *times; i++) {
        CHECK(fp_http_date_format(times[i], buf) == 0 && strlen(buf) == FP_HTTP_DATE_LEN
                  && fp_http_date_parse(buf, strlen(buf), &back) == 0 && back == times[i],
              "date round trip %lld: %s", (long long)times[i], buf);
    }
    CHECK(fp_http_date_format(0, buf) == 0 && strcmp(buf, "Thu, 01 Jan 1970 00:00:00 GMT") == 0, "%s", buf);
    CHECK(fp_http_date_format(253402300800LL, buf) == ERANGE, "year 10000");
    static const char *bad_dates[] = {"", "Sun, 06 Nov 1994 08:49:37", "Sun, 06 Nov 1994 25:49:37 GMT",
                                      "Sun, 6 Nov 1994 08:49:37 GMT", "Sun, 06 Foo 1994 08:49:37 GMT",
                                      "Sun, 06 Nov 1994 08:49:37 GMTx", "x, 06 Nov 1994 08:49:37 GMT"};
    for (size_t i = 0; i < sizeof bad_dates / sizeof *bad_dates; i++)
        CHECK(fp_http_date_parse(bad_dates[i], strlen(bad_dates[i]), &back) == EINVAL, "bad date '%s'", bad_dates[i]);

    /* an mtime out of the ns range and a pre-1970 one still give a quoted validator */
    fp_file_info far = {1, INT64_MAX, 999999999};
    q = (fp_static_request){.method = S("GET")};
    CHECK(fp_static_decide(&far, "x", 1, &q, &out) == 0 && out.etag[0] == '"' && out.last_modified[0] == '\0',
          "far future");
    fp_file_info past = {1, -5, 0};
    CHECK(fp_static_decide(&past, "x", 1, &q, &out) == 0 && strchr(out.etag, '-'), "before 1970: %s", out.etag);
}

/* ---- threads: one router, several threads, the same answers ------------------------------------ */

static const char *thread_paths[] = {"/style.css", "/info.php/a", "/blog", "/.env", "/some/route",
                                     "/tpl/page.css", "/link_out.txt", "/static/"};

typedef struct thread_arg {
    const fp_router *router;
    int mismatches;
    fp_route_kind expected[8];
} thread_arg;

static void *router_thread(void *p)
{
    thread_arg *a = p;
    char *buf = malloc(3 * PATH_MAX);
    for (int i = 0; i < 2000; i++) {
        size_t k = (size_t)i % 8;
        fp_route r;
        if (fp_route_resolve(a->router, thread_paths[k], strlen(thread_paths[k]), "q", 1, buf, 3 * PATH_MAX, &r)
                != 0 || r.kind != a->expected[k])
            a->mismatches++;
    }
    free(buf);
    return NULL;
}

static void test_threads(void)
{
    thread_arg args[4];
    pthread_t th[4];
    for (int t = 0; t < 4; t++) {
        args[t].router = t % 2 ? &strict_router : &follow_router;
        args[t].mismatches = 0;
        for (size_t k = 0; k < 8; k++)
            args[t].expected[k] = route_of(args[t].router, thread_paths[k])->kind;
    }
    for (int t = 0; t < 4; t++)
        pthread_create(&th[t], NULL, router_thread, &args[t]);
    for (int t = 0; t < 4; t++) {
        pthread_join(th[t], NULL);
        CHECK(args[t].mismatches == 0, "thread %d: %d mismatches", t, args[t].mismatches);
    }
}

int main(void)
{
    build_site();
    fp_router_options fo = options(1), so = options(0);
    if (fp_router_init(&follow_router, root, &fo) != 0 || fp_router_init(&strict_router, root, &so) != 0) {
        fprintf(stderr, "router init failed\n");
        return 2;
    }
    test_init();
    test_php();
    test_front_controller();
    test_static();
    test_redirects();
    test_refusals();
    test_symlinks();
    test_long_paths();
    test_buffer_boundaries();
    test_static_decisions();
    test_threads();
    site_remove();
    printf("test_router: %d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
