/*
 * The document root of the router tests (test_router.c, fuzz_router.c): a temporary directory
 * `base` whose `public` subdirectory is the root, filled by the test with files, directories and
 * symlinks in and out of the root, and the router options both tests start from.
 *
 * A fixture step that fails ends the run with status 2: no check means anything on a half-built
 * root.
 */
#ifndef FRANKENPY_TEST_ROUTER_SITE_H
#define FRANKENPY_TEST_ROUTER_SITE_H

#include "router.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char base[PATH_MAX];        /* realpath of the temporary directory */
static char root[PATH_MAX + 16];   /* base/public */

static inline void site_fail(const char *what)
{
    perror(what);
    exit(2);
}

/* base + "/" + rel (a static buffer: the next call overwrites it) */
static inline const char *at(const char *rel)
{
    static char p[PATH_MAX * 2];
    snprintf(p, sizeof p, "%s/%s", base, rel);
    return p;
}

/* A file at base/rel, with its missing parent directories. */
static inline void site_file(const char *rel, const char *content)
{
    char p[PATH_MAX * 2];
    snprintf(p, sizeof p, "%s", at(rel));
    for (char *s = p + strlen(base) + 1; (s = strchr(s, '/')); s++) {
        *s = '\0';
        mkdir(p, 0755);
        *s = '/';
    }
    FILE *f = fopen(p, "w");
    if (!f) {
        site_fail(p);
    }
    fputs(content, f);
    fclose(f);
}

static inline void site_dir(const char *rel)
{
    if (mkdir(at(rel), 0755) != 0) {
        site_fail(at(rel));
    }
}

/* A symlink at base/rel to `target` (relative to the link's directory, or absolute). */
static inline void site_link(const char *target, const char *rel)
{
    if (symlink(target, at(rel)) != 0) {
        site_fail(at(rel));
    }
}

/* A fresh /tmp/<prefix>-XXXXXX as `base`, with an empty root. */
static inline void site_create(const char *prefix)
{
    char tmpl[64];
    snprintf(tmpl, sizeof tmpl, "/tmp/%s-XXXXXX", prefix);
    if (!mkdtemp(tmpl) || !realpath(tmpl, base)) {
        site_fail("mkdtemp");
    }
    snprintf(root, sizeof root, "%s/public", base);
    site_dir("public");
}

static inline void site_remove(void)
{
    char cmd[PATH_MAX + 16];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", base);
    if (system(cmd) != 0) {
        fprintf(stderr, "could not remove %s\n", base);
    }
}

static const char *const site_split_ext[] = {".php"};
static const char *const site_static_indexes[] = {"index.html", "index.txt"};
static const char *const site_allowed_hidden[] = {".well-known"};

/* php_server's defaults for this root, with front controller `index`. */
static inline fp_router_options site_options(const char *index, int follow_symlinks)
{
    return (fp_router_options){
        .index = index,
        .split_extensions = site_split_ext, .n_split_extensions = 1,
        .static_indexes = site_static_indexes, .n_static_indexes = 2,
        .allowed_hidden = site_allowed_hidden, .n_allowed_hidden = 1,
        .follow_symlinks = follow_symlinks,
    };
}

#endif
