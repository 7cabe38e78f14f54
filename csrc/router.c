/*
 * The php_server router and the static file decisions: see router.h for the contract.
 *
 * The file-system walk goes one request segment at a time from the resolved document root,
 * lstat()ing each name.  A symlink is resolved with realpath(3) at the hop where it occurs, so
 * the rules can be applied to the link's target (inside or outside the root, hidden name)
 * exactly where the link is; a path without symlinks costs one lstat() per segment and no
 * realpath() at all.  The walked prefix is memoised within a request: the probes of try_files
 * ({path}, {path}/index.php, the redirect check) share it.
 */
#define _GNU_SOURCE
#include "router.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

_Static_assert(FP_PATH_MAX == PATH_MAX, "FP_PATH_MAX must equal PATH_MAX (realpath's buffer)");

/* ---- small string helpers -------------------------------------------------------------- */

static int lower(int c) { return (c >= 'A' && c <= 'Z') ? c + ('a' - 'A') : c; }

static int eq_ci(const char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (lower((unsigned char)a[i]) != lower((unsigned char)b[i]))
            return 0;
    return 1;
}

static int ends_with_ci(const char *s, size_t n, const char *suffix)
{
    size_t m = strlen(suffix);
    return n >= m && eq_ci(s + n - m, suffix, m);
}

static int eq_str(const char *s, size_t n, const char *z)
{
    return strlen(z) == n && memcmp(s, z, n) == 0;
}

/* ---- name rules ------------------------------------------------------------------------- */

static int is_hidden(const fp_router *r, const char *s, size_t n)
{
    if (n == 0 || s[0] != '.')
        return 0;
    for (size_t i = 0; i < r->options.n_allowed_hidden; i++)
        if (eq_str(s, n, r->options.allowed_hidden[i]))
            return 0;
    return 1;
}

static int has_split_extension(const fp_router *r, const char *s, size_t n)
{
    for (size_t i = 0; i < r->options.n_split_extensions; i++)
        if (ends_with_ci(s, n, r->options.split_extensions[i]))
            return 1;
    return 0;
}

/* Files holding PHP source that the router does not execute: disclosed as text otherwise. */
static const char *const php_source_suffixes[] = {
    ".phtml", ".php3", ".php4", ".php5", ".php7", ".php8", ".phps", ".phar", ".inc",
};

/* Editor and deploy copies of PHP source: "index.php~", "config.php.bak", "x.inc.dist~". */
static const char *const backup_suffixes[] = {
    ".bak", ".backup", ".copy", ".dist", ".old", ".orig", ".sav", ".save", ".swo", ".swp", ".tmp",
};

/* ".php", ".php<digit>", ".phtml" or ".inc" at the end of s[0..n). */
static int ends_with_php_name(const char *s, size_t n)
{
    if (ends_with_ci(s, n, ".php") || ends_with_ci(s, n, ".phtml") || ends_with_ci(s, n, ".inc"))
        return 1;
    return n >= 5 && s[n - 1] >= '0' && s[n - 1] <= '9' && ends_with_ci(s, n - 1, ".php");
}

static int is_php_source(const fp_router *r, const char *s, size_t n)
{
    if (has_split_extension(r, s, n))
        return 1;
    for (size_t i = 0; i < sizeof php_source_suffixes / sizeof *php_source_suffixes; i++)
        if (ends_with_ci(s, n, php_source_suffixes[i]))
            return 1;
    size_t m = n;
    int tilde = m > 0 && s[m - 1] == '~';
    if (tilde) {
        m--;
        if (ends_with_php_name(s, m))
            return 1;   /* index.php~ */
    }
    for (size_t i = 0; i < sizeof backup_suffixes / sizeof *backup_suffixes; i++) {
        size_t k = strlen(backup_suffixes[i]);
        if (m >= k && eq_ci(s + m - k, backup_suffixes[i], k) && ends_with_php_name(s, m - k))
            return 1;   /* config.php.bak, config.php.bak~ */
    }
    return 0;
}

/* ---- segments of the request path ------------------------------------------------------ */

/* Next non-empty "/"-separated segment at or after *pos; 0 at the end. */
static int next_segment(const char *path, size_t len, size_t *pos, const char **seg, size_t *seg_len)
{
    size_t i = *pos;
    while (i < len && path[i] == '/')
        i++;
    if (i == len) {
        *pos = i;
        return 0;
    }
    size_t start = i;
    while (i < len && path[i] != '/')
        i++;
    *seg = path + start;
    *seg_len = i - start;
    *pos = i;
    return 1;
}

/* ---- the walk ---------------------------------------------------------------------------- */

enum walk_state { W_UNSET, W_FOUND, W_MISSING, W_REFUSED };

typedef struct walk {
    enum walk_state state;
    size_t nseg;          /* request segments this walk covers */
    const char *reason;   /* W_REFUSED */
    mode_t mode;          /* W_FOUND: the target's type (symlinks followed) */
    size_t len;
    char path[FP_PATH_MAX];   /* W_FOUND: the resolved path, no symlinks in it */
} walk;

static int inside_root(const fp_router *r, const char *p, size_t n)
{
    if (r->root_len == 1)
        return 1;   /* the root is "/" */
    return n >= r->root_len && memcmp(p, r->root, r->root_len) == 0
        && (n == r->root_len || p[r->root_len] == '/');
}

/* A hidden component in the part of p below the root. */
static int hidden_below_root(const fp_router *r, const char *p, size_t n)
{
    size_t pos = r->root_len == 1 ? 0 : r->root_len;
    const char *seg;
    size_t seg_len;
    while (next_segment(p, n, &pos, &seg, &seg_len))
        if (is_hidden(r, seg, seg_len))
            return 1;
    return 0;
}

static void walk_reset(const fp_router *r, walk *w)
{
    memcpy(w->path, r->root, r->root_len + 1);
    w->len = r->root_len;
    w->nseg = 0;
    w->mode = S_IFDIR;
    w->state = W_FOUND;
    w->reason = NULL;
}

static void refuse(walk *w, const char *reason)
{
    w->state = W_REFUSED;
    w->reason = reason;
}

/* Move a W_FOUND walk one name down: lstat it, and resolve and check it if it is a symlink. */
static void step(const fp_router *r, walk *w, const char *name, size_t n)
{
    if (!S_ISDIR(w->mode)) {
        w->state = W_MISSING;   /* what lstat() would say: ENOTDIR */
        return;
    }
    size_t base = w->len == 1 ? 0 : w->len;
    if (base + 1 + n >= FP_PATH_MAX) {
        w->state = W_MISSING;   /* ENAMETOOLONG: no such file can exist */
        return;
    }
    w->path[base] = '/';
    memcpy(w->path + base + 1, name, n);
    w->len = base + 1 + n;
    w->path[w->len] = '\0';

    struct stat st;
    if (lstat(w->path, &st) != 0) {
        w->state = W_MISSING;
        return;
    }
    if (S_ISLNK(st.st_mode)) {
        char target[FP_PATH_MAX];
        if (realpath(w->path, target) == NULL || stat(target, &st) != 0) {
            w->state = W_MISSING;   /* dangling, a loop, or gone meanwhile */
            return;
        }
        size_t tlen = strlen(target);
        if (inside_root(r, target, tlen)) {
            if (hidden_below_root(r, target, tlen)) {
                refuse(w, "a symlink resolves to a hidden path");
                return;
            }
        } else {
            if (!r->options.follow_symlinks) {
                refuse(w, "a symlink resolves outside the document root");
                return;
            }
            const char *slash = strrchr(target, '/');
            const char *base_name = slash ? slash + 1 : target;
            if (is_hidden(r, base_name, tlen - (size_t)(base_name - target))) {
                refuse(w, "a symlink resolves to a hidden name");
                return;
            }
        }
        memcpy(w->path, target, tlen + 1);
        w->len = tlen;
    }
    w->mode = st.st_mode;
}

/* Walk the first nseg segments of the request path from the root. */
static void walk_segments(const fp_router *r, walk *w, const char *path, size_t len, size_t nseg)
{
    walk_reset(r, w);
    size_t pos = 0;
    const char *seg;
    size_t seg_len;
    while (w->nseg < nseg && w->state == W_FOUND && next_segment(path, len, &pos, &seg, &seg_len)) {
        step(r, w, seg, seg_len);
        w->nseg++;
    }
    w->nseg = nseg;
}

/* `base` plus one more name, into `out`. */
static void walk_extra(const fp_router *r, const walk *base, const char *name, walk *out)
{
    out->state = base->state;
    out->reason = base->reason;
    out->nseg = base->nseg;
    if (base->state != W_FOUND)
        return;
    out->mode = base->mode;
    out->len = base->len;
    memcpy(out->path, base->path, base->len + 1);
    step(r, out, name, strlen(name));
}

static const char *base_name(const walk *w, size_t *n)
{
    const char *slash = memrchr(w->path, '/', w->len);
    const char *name = slash ? slash + 1 : w->path;
    *n = w->len - (size_t)(name - w->path);
    return name;
}

/* ---- output ------------------------------------------------------------------------------ */

typedef struct out_buf {
    char *buf;
    size_t cap, used;
    int overflow;
} out_buf;

static void put(out_buf *o, const char *s, size_t n)
{
    if (o->overflow || o->cap - o->used < n) {
        o->overflow = 1;
        return;
    }
    memcpy(o->buf + o->used, s, n);
    o->used += n;
}

static void put_c(out_buf *o, char c) { put(o, &c, 1); }

/* Start a string; end_str() NUL-terminates it and fills `s`. */
static size_t begin_str(const out_buf *o) { return o->used; }

static void end_str(out_buf *o, size_t start, fp_str *s)
{
    put_c(o, '\0');
    if (o->overflow) {
        s->ptr = NULL;
        s->len = 0;
        return;
    }
    s->ptr = o->buf + start;
    s->len = o->used - start - 1;
}

/* "/" + the first nseg segments joined by "/" (+ "/" + extra). */
static void put_url_path(out_buf *o, const char *path, size_t len, size_t nseg, const char *extra)
{
    size_t pos = 0, k = 0;
    const char *seg;
    size_t seg_len;
    int any = 0;
    while (k < nseg && next_segment(path, len, &pos, &seg, &seg_len)) {
        put_c(o, '/');
        put(o, seg, seg_len);
        k++;
        any = 1;
    }
    if (extra) {
        put_c(o, '/');
        put(o, extra, strlen(extra));
        any = 1;
    }
    if (!any)
        put_c(o, '/');
}

static void put_pct(out_buf *o, unsigned char c)
{
    static const char hex[] = "0123456789ABCDEF";
    char e[3] = {'%', hex[c >> 4], hex[c & 15]};
    put(o, e, 3);
}

/* Python's urllib.parse.quote(path, safe="/!$&'()*+,;=:@-._~"). */
static void put_quoted(out_buf *o, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
            || (c && strchr("/!$&'()*+,;=:@-._~", c)))
            put_c(o, (char)c);
        else
            put_pct(o, c);
    }
}

/* ---- the router ---------------------------------------------------------------------------- */

static int valid_name(const char *s)
{
    return s && s[0] && !strchr(s, '/') && strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

int fp_router_init(fp_router *router, const char *document_root, const fp_router_options *options)
{
    if (!router || !document_root || !options || !valid_name(options->index))
        return EINVAL;
    if (options->n_split_extensions && !options->split_extensions)
        return EINVAL;
    for (size_t i = 0; i < options->n_split_extensions; i++) {
        const char *e = options->split_extensions[i];
        if (!e || e[0] != '.' || !e[1] || strchr(e, '/'))
            return EINVAL;
    }
    if (options->n_static_indexes && !options->static_indexes)
        return EINVAL;
    for (size_t i = 0; i < options->n_static_indexes; i++)
        if (!valid_name(options->static_indexes[i]))
            return EINVAL;
    if (options->n_allowed_hidden && !options->allowed_hidden)
        return EINVAL;
    for (size_t i = 0; i < options->n_allowed_hidden; i++)
        if (!valid_name(options->allowed_hidden[i]))
            return EINVAL;
    if (realpath(document_root, router->root) == NULL)
        return errno;
    struct stat st;
    if (stat(router->root, &st) != 0)
        return errno;
    if (!S_ISDIR(st.st_mode))
        return ENOTDIR;
    router->root_len = strlen(router->root);
    router->options = *options;
    return 0;
}

size_t fp_route_buffer_size(const fp_router *router, size_t path_len, size_t query_len)
{
    size_t name = strlen(router->options.index);
    for (size_t i = 0; i < router->options.n_static_indexes; i++) {
        size_t n = strlen(router->options.static_indexes[i]);
        if (n > name)
            name = n;
    }
    size_t url = 1 + path_len + 1 + name + 1;   /* "/" segments "/" name NUL */
    size_t location = 3 * (path_len + 1) + 1 + 3 * query_len + 1;
    return url + router->root_len + url + FP_PATH_MAX + location;
}

typedef struct ctx {
    const fp_router *r;
    const char *path;
    size_t len;
    out_buf o;
    fp_route *route;
} ctx;

static void set_refusal(ctx *c, fp_route_kind kind, int status, const char *reason)
{
    c->route->kind = kind;
    c->route->status = status;
    c->route->reason = reason;
}

static void set_php(ctx *c, size_t nseg, const char *extra, const walk *found, size_t info_from, int front)
{
    fp_route *rt = c->route;
    rt->kind = FP_ROUTE_PHP;
    rt->status = 200;
    rt->front_controller = front;
    size_t s = begin_str(&c->o);
    put_url_path(&c->o, c->path, c->len, nseg, extra);
    end_str(&c->o, s, &rt->script_name);
    s = begin_str(&c->o);
    if (c->r->root_len > 1)
        put(&c->o, c->r->root, c->r->root_len);
    put_url_path(&c->o, c->path, c->len, nseg, extra);
    end_str(&c->o, s, &rt->script_filename);
    s = begin_str(&c->o);
    put(&c->o, found->path, found->len);
    end_str(&c->o, s, &rt->real_path);
    rt->path_info.ptr = c->path + info_from;
    rt->path_info.len = c->len - info_from;
}

static void set_static(ctx *c, size_t nseg, const char *extra, const walk *found)
{
    fp_route *rt = c->route;
    rt->kind = FP_ROUTE_STATIC;
    rt->status = 200;
    size_t s = begin_str(&c->o);
    put_url_path(&c->o, c->path, c->len, nseg, extra);
    end_str(&c->o, s, &rt->script_name);
    s = begin_str(&c->o);
    put(&c->o, found->path, found->len);
    end_str(&c->o, s, &rt->real_path);
}

static void set_redirect(ctx *c, size_t nseg, const char *query, size_t query_len)
{
    fp_route *rt = c->route;
    rt->kind = FP_ROUTE_REDIRECT;
    rt->status = 308;
    rt->reason = "directory without trailing slash";
    size_t s = begin_str(&c->o);
    size_t pos = 0, k = 0;
    const char *seg;
    size_t seg_len;
    /* Segments re-joined with single slashes: "//evil.com" never becomes "//evil.com/", a
     * protocol-relative URL. */
    while (k < nseg && next_segment(c->path, c->len, &pos, &seg, &seg_len)) {
        put_c(&c->o, '/');
        put_quoted(&c->o, seg, seg_len);
        k++;
    }
    put_c(&c->o, '/');
    if (query_len) {
        put_c(&c->o, '?');
        for (size_t i = 0; i < query_len; i++) {
            unsigned char q = (unsigned char)query[i];
            if (q <= ' ' || q == 0x7f)
                put_pct(&c->o, q);
            else
                put_c(&c->o, (char)q);
        }
    }
    end_str(&c->o, s, &rt->location);
}

static int is_file(const walk *w) { return w->state == W_FOUND && S_ISREG(w->mode); }

static void route(ctx *c, const char *query, size_t query_len)
{
    const fp_router *r = c->r;
    const char *path = c->path;
    size_t len = c->len;

    if (memchr(path, '\0', len)) {
        set_refusal(c, FP_ROUTE_BAD_REQUEST, 400, "NUL byte in the request path");
        return;
    }
    int trailing_slash = path[len - 1] == '/';
    size_t nseg = 0, split_at = SIZE_MAX, split_end = 0, pos = 0;
    const char *seg, *last = NULL;
    size_t seg_len, last_len = 0;
    while (next_segment(path, len, &pos, &seg, &seg_len)) {
        if (seg_len == 2 && seg[0] == '.' && seg[1] == '.') {
            set_refusal(c, FP_ROUTE_FORBIDDEN, 403, "parent directory reference in the request path");
            return;
        }
        if (is_hidden(r, seg, seg_len)) {
            set_refusal(c, FP_ROUTE_FORBIDDEN, 403, "hidden path segment in the request path");
            return;
        }
        if (split_at == SIZE_MAX && has_split_extension(r, seg, seg_len)) {
            split_at = nseg;
            split_end = pos;
        }
        last = seg;
        last_len = seg_len;
        nseg++;
    }
    int split = split_at != SIZE_MAX;
    const char *index = r->options.index;

    /* The walks are memoised: `all` covers every segment, `script` the split prefix. */
    walk all, script, extra;
    walk_segments(r, &all, path, len, nseg);

    /* (1) canonical directory URL: /dir -> /dir/ when /dir/index.php is a file. */
    if (nseg && !trailing_slash) {
        walk_extra(r, &all, index, &extra);
        if (extra.state == W_REFUSED) {
            set_refusal(c, FP_ROUTE_FORBIDDEN, 403, extra.reason);
            return;
        }
        if (is_file(&extra)) {
            set_redirect(c, nseg, query, query_len);
            return;
        }
    }

    /* (2) the path itself, split after the first segment with a split extension. */
    if (split) {
        const walk *w = &all;
        if (split_at + 1 != nseg) {
            walk_segments(r, &script, path, len, split_at + 1);
            w = &script;
        }
        if (w->state == W_REFUSED) {
            set_refusal(c, FP_ROUTE_FORBIDDEN, 403, w->reason);
            return;
        }
        if (is_file(w)) {
            set_php(c, split_at + 1, NULL, w, split_end, 0);
            return;
        }
    } else {
        if (all.state == W_REFUSED) {
            set_refusal(c, FP_ROUTE_FORBIDDEN, 403, all.reason);
            return;
        }
        if (is_file(&all) && nseg) {
            size_t bn;
            const char *b = base_name(&all, &bn);
            if (is_php_source(r, last, last_len) || is_php_source(r, b, bn)) {
                set_refusal(c, FP_ROUTE_FORBIDDEN, 403, "PHP source is not served as a static file");
                return;
            }
            set_static(c, nseg, NULL, &all);
            return;
        }
    }

    /* (3) the directory's index.php (reached with a trailing slash, see (1)). */
    walk_extra(r, &all, index, &extra);
    if (extra.state == W_REFUSED) {
        set_refusal(c, FP_ROUTE_FORBIDDEN, 403, extra.reason);
        return;
    }
    if (is_file(&extra)) {
        set_php(c, nseg, index, &extra, len, 0);
        return;
    }

    /* (4) the front controller. */
    walk_reset(r, &script);
    walk_extra(r, &script, index, &extra);
    if (extra.state == W_REFUSED) {
        set_refusal(c, FP_ROUTE_FORBIDDEN, 403, extra.reason);
        return;
    }
    if (is_file(&extra)) {
        set_php(c, 0, index, &extra, len, 1);
        return;
    }

    /* (5) file server for directories: index.html, index.txt. */
    if (!split && all.state == W_FOUND && S_ISDIR(all.mode)) {
        for (size_t i = 0; i < r->options.n_static_indexes; i++) {
            const char *name = r->options.static_indexes[i];
            walk_extra(r, &all, name, &extra);
            if (extra.state == W_REFUSED) {
                set_refusal(c, FP_ROUTE_FORBIDDEN, 403, extra.reason);
                return;
            }
            if (!is_file(&extra))
                continue;
            size_t bn;
            const char *b = base_name(&extra, &bn);
            if (is_php_source(r, name, strlen(name)) || is_php_source(r, b, bn)) {
                set_refusal(c, FP_ROUTE_FORBIDDEN, 403, "PHP source is not served as a static file");
                return;
            }
            if (nseg && !trailing_slash) {
                set_redirect(c, nseg, query, query_len);
                return;
            }
            set_static(c, nseg, name, &extra);
            return;
        }
    }
    set_refusal(c, FP_ROUTE_NOT_FOUND, 404, "no file matched and no front controller");
}

int fp_route_resolve(const fp_router *router, const char *path, size_t path_len,
                     const char *query, size_t query_len, char *buf, size_t buf_len,
                     fp_route *out)
{
    if (!router || !out || (!buf && buf_len) || (!path && path_len) || (!query && query_len))
        return EINVAL;
    if (path_len == 0)
        path = "/", path_len = 1;
    memset(out, 0, sizeof *out);
    ctx c = {.r = router, .path = path, .len = path_len, .o = {buf, buf_len, 0, 0}, .route = out};
    route(&c, query, query_len);
    if (c.o.overflow) {
        fp_route_kind kind = out->kind;
        memset(out, 0, sizeof *out);
        out->kind = kind;
        return ERANGE;
    }
    return 0;
}

/* ---- HTTP dates ---------------------------------------------------------------------------- */

static const char wday_names[7][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
static const char month_names[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                        "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil). */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, int *m, int *d)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    *d = (int)(doy - (153 * mp + 2) / 5 + 1);
    *m = (int)(mp < 10 ? mp + 3 : mp - 9);
    *y = yoe + era * 400 + (*m <= 2);
}

static void put2(char *p, int v) { p[0] = (char)('0' + v / 10); p[1] = (char)('0' + v % 10); }

int fp_http_date_format(int64_t t, char *out)
{
    /* Years 0..9999: about +-2.5e11 s; beyond that the 4-digit field does not fit. */
    if (t < -62167219200LL || t > 253402300799LL)
        return ERANGE;
    int64_t days = t >= 0 ? t / 86400 : -((-t + 86399) / 86400);
    int64_t secs = t - days * 86400;
    int64_t y;
    int m, d;
    civil_from_days(days, &y, &m, &d);
    int wd = (int)(((days % 7) + 7 + 4) % 7);   /* 1970-01-01 was a Thursday */
    memcpy(out, wday_names[wd], 3);
    memcpy(out + 3, ", ", 2);
    put2(out + 5, d);
    out[7] = ' ';
    memcpy(out + 8, month_names[m - 1], 3);
    out[11] = ' ';
    put2(out + 12, (int)(y / 100));
    put2(out + 14, (int)(y % 100));
    out[16] = ' ';
    put2(out + 17, (int)(secs / 3600));
    out[19] = ':';
    put2(out + 20, (int)(secs / 60 % 60));
    out[22] = ':';
    put2(out + 23, (int)(secs % 60));
    memcpy(out + 25, " GMT", 5);   /* with the NUL */
    return 0;
}

typedef struct cursor {
    const char *p, *end;
} cursor;

static int take_char(cursor *c, char ch)
{
    if (c->p < c->end && *c->p == ch) {
        c->p++;
        return 1;
    }
    return 0;
}

static int take_digits(cursor *c, int n, int *v)
{
    int x = 0;
    for (int i = 0; i < n; i++) {
        if (c->p >= c->end || *c->p < '0' || *c->p > '9')
            return 0;
        x = x * 10 + (*c->p++ - '0');
    }
    *v = x;
    return 1;
}

static int take_month(cursor *c, int *m)
{
    if (c->end - c->p < 3)
        return 0;
    for (int i = 0; i < 12; i++)
        if (memcmp(c->p, month_names[i], 3) == 0) {
            c->p += 3;
            *m = i + 1;
            return 1;
        }
    return 0;
}

static int take_time(cursor *c, int *h, int *mi, int *s)
{
    return take_digits(c, 2, h) && take_char(c, ':') && take_digits(c, 2, mi) && take_char(c, ':')
        && take_digits(c, 2, s);
}

static int take_word(cursor *c, const char *w)
{
    size_t n = strlen(w);
    if ((size_t)(c->end - c->p) >= n && memcmp(c->p, w, n) == 0) {
        c->p += n;
        return 1;
    }
    return 0;
}

static int is_ows(char ch) { return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n' || ch == '\v' || ch == '\f'; }

static void trim(const char **p, size_t *n)
{
    while (*n && is_ows(**p))
        (*p)++, (*n)--;
    while (*n && is_ows((*p)[*n - 1]))
        (*n)--;
}

int fp_http_date_parse(const char *text, size_t len, int64_t *unix_time)
{
    if (!text || !unix_time)
        return EINVAL;
    trim(&text, &len);
    cursor c = {text, text + len};
    /* The day name: three letters (IMF-fixdate, asctime) or a full name (RFC 850); it is not
     * checked against the date, as in most servers. */
    const char *name = c.p;
    while (c.p < c.end && ((*c.p >= 'a' && *c.p <= 'z') || (*c.p >= 'A' && *c.p <= 'Z')))
        c.p++;
    if (c.p - name < 3)
        return EINVAL;
    int y, m, d, h, mi, s;
    if (take_char(&c, ',')) {
        if (!take_char(&c, ' ') || !take_digits(&c, 2, &d))
            return EINVAL;
        if (take_char(&c, ' ')) {   /* IMF-fixdate: 06 Nov 1994 08:49:37 GMT */
            if (!take_month(&c, &m) || !take_char(&c, ' ') || !take_digits(&c, 4, &y))
                return EINVAL;
        } else {                    /* RFC 850: 06-Nov-94 08:49:37 GMT */
            if (!take_char(&c, '-') || !take_month(&c, &m) || !take_char(&c, '-')
                || !take_digits(&c, 2, &y))
                return EINVAL;
            y += y < 70 ? 2000 : 1900;
        }
        if (!take_char(&c, ' ') || !take_time(&c, &h, &mi, &s) || !take_word(&c, " GMT"))
            return EINVAL;
    } else {                        /* asctime: Nov  6 08:49:37 1994 */
        if (!take_char(&c, ' ') || !take_month(&c, &m) || !take_char(&c, ' '))
            return EINVAL;
        if (take_char(&c, ' ')) {
            if (!take_digits(&c, 1, &d))
                return EINVAL;
        } else if (!take_digits(&c, 2, &d)) {
            return EINVAL;
        }
        if (!take_char(&c, ' ') || !take_time(&c, &h, &mi, &s) || !take_char(&c, ' ')
            || !take_digits(&c, 4, &y))
            return EINVAL;
    }
    if (c.p != c.end || d < 1 || d > 31 || h > 23 || mi > 59 || s > 60)
        return EINVAL;
    *unix_time = days_from_civil(y, m, d) * 86400 + h * 3600 + mi * 60 + s;
    return 0;
}

/* ---- content types ------------------------------------------------------------------------ */

static const struct {
    const char *ext;
    const char *type;
} content_types[] = {
    {"html", "text/html; charset=utf-8"}, {"htm", "text/html; charset=utf-8"},
    {"css", "text/css; charset=utf-8"}, {"js", "text/javascript; charset=utf-8"},
    {"mjs", "text/javascript; charset=utf-8"}, {"json", "application/json; charset=utf-8"},
    {"map", "application/json; charset=utf-8"},
    {"webmanifest", "application/manifest+json; charset=utf-8"},
    {"xml", "application/xml; charset=utf-8"}, {"txt", "text/plain; charset=utf-8"},
    {"csv", "text/csv; charset=utf-8"}, {"md", "text/markdown; charset=utf-8"},
    {"ics", "text/calendar; charset=utf-8"}, {"vtt", "text/vtt; charset=utf-8"},
    {"atom", "application/atom+xml; charset=utf-8"}, {"rss", "application/rss+xml; charset=utf-8"},
    {"svg", "image/svg+xml; charset=utf-8"}, {"png", "image/png"}, {"apng", "image/apng"},
    {"jpg", "image/jpeg"}, {"jpeg", "image/jpeg"}, {"gif", "image/gif"}, {"webp", "image/webp"},
    {"avif", "image/avif"}, {"ico", "image/vnd.microsoft.icon"}, {"bmp", "image/bmp"},
    {"tif", "image/tiff"}, {"tiff", "image/tiff"}, {"woff", "font/woff"}, {"woff2", "font/woff2"},
    {"ttf", "font/ttf"}, {"otf", "font/otf"}, {"eot", "application/vnd.ms-fontobject"},
    {"pdf", "application/pdf"}, {"wasm", "application/wasm"}, {"zip", "application/zip"},
    {"tar", "application/x-tar"}, {"7z", "application/x-7z-compressed"},
    {"gz", "application/gzip"}, {"tgz", "application/gzip"}, {"svgz", "application/gzip"},
    {"bz2", "application/x-bzip2"}, {"xz", "application/x-xz"}, {"br", "application/x-brotli"},
    {"z", "application/x-compress"}, {"mp3", "audio/mpeg"}, {"ogg", "audio/ogg"},
    {"oga", "audio/ogg"}, {"wav", "audio/wav"}, {"flac", "audio/flac"}, {"m4a", "audio/mp4"},
    {"mp4", "video/mp4"}, {"webm", "video/webm"}, {"ogv", "video/ogg"},
    {"mov", "video/quicktime"}, {"avi", "video/x-msvideo"}, {"epub", "application/epub+zip"},
    {"rtf", "application/rtf"},
};

const char *fp_content_type(const char *name, size_t len)
{
    const char *dot = name ? memrchr(name, '.', len) : NULL;
    if (dot) {
        const char *ext = dot + 1;
        size_t n = len - (size_t)(ext - name);
        for (size_t i = 0; i < sizeof content_types / sizeof *content_types; i++)
            if (strlen(content_types[i].ext) == n && eq_ci(ext, content_types[i].ext, n))
                return content_types[i].type;
    }
    return "application/octet-stream";
}

/* ---- static responses ----------------------------------------------------------------------- */

static int present(fp_str s) { return s.ptr != NULL; }

/* Is `etag` in the comma-separated list `h` ("*" matches anything)?  weak: W/ prefixes are
 * ignored on both sides (If-None-Match); strong: they never match (If-Match, If-Range). */
static int etag_matches(fp_str h, const char *etag, int weak)
{
    const char *p = h.ptr;
    size_t n = h.len;
    trim(&p, &n);
    if (n == 1 && p[0] == '*')
        return 1;
    size_t elen = strlen(etag);
    while (n) {
        const char *comma = memchr(p, ',', n);
        size_t item_len = comma ? (size_t)(comma - p) : n;
        const char *item = p;
        size_t il = item_len;
        trim(&item, &il);
        if (weak && il >= 2 && item[0] == 'W' && item[1] == '/')
            item += 2, il -= 2;
        if (il == elen && memcmp(item, etag, elen) == 0)
            return 1;
        if (!comma)
            break;
        p = comma + 1;
        n -= item_len + 1;
    }
    return 0;
}

static int date_of(fp_str h, int64_t *t)
{
    return present(h) && fp_http_date_parse(h.ptr, h.len, t) == 0;
}

static void skip_ows(cursor *c)
{
    while (c->p < c->end && is_ows(*c->p))
        c->p++;
}

/* Digits, saturating at UINT64_MAX; *any = 0 when there are none. */
static uint64_t take_number(cursor *c, int *any)
{
    uint64_t v = 0;
    *any = 0;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
        unsigned d = (unsigned)(*c->p++ - '0');
        v = v > (UINT64_MAX - d) / 10 ? UINT64_MAX : v * 10 + d;
        *any = 1;
    }
    return v;
}

enum range_result { RANGE_IGNORE, RANGE_UNSATISFIABLE, RANGE_OK };

/* A single "bytes=first-last" range against `size`: [*first, *last] inclusive. */
static enum range_result parse_range(fp_str h, uint64_t size, uint64_t *first, uint64_t *last)
{
    const char *p = h.ptr;
    size_t n = h.len;
    trim(&p, &n);
    if (n < 5 || !eq_ci(p, "bytes", 5))
        return RANGE_IGNORE;
    cursor c = {p + 5, p + n};
    skip_ows(&c);
    if (!take_char(&c, '='))
        return RANGE_IGNORE;
    skip_ows(&c);
    int has_first, has_last;
    uint64_t a = take_number(&c, &has_first);
    skip_ows(&c);
    if (!take_char(&c, '-'))
        return RANGE_IGNORE;
    skip_ows(&c);
    uint64_t b = take_number(&c, &has_last);
    skip_ows(&c);
    if (c.p != c.end || (!has_first && !has_last))
        return RANGE_IGNORE;   /* several ranges, garbage, "bytes=-" */
    if (!has_first) {          /* the last b bytes */
        if (b == 0 || size == 0)
            return RANGE_UNSATISFIABLE;
        *first = b >= size ? 0 : size - b;
        *last = size - 1;
        return RANGE_OK;
    }
    if (has_last && b < a)
        return RANGE_IGNORE;   /* an invalid range-spec: the header is ignored */
    if (a >= size)
        return RANGE_UNSATISFIABLE;
    *first = a;
    *last = has_last && b < size - 1 ? b : size - 1;
    return RANGE_OK;
}

static void format_etag(const fp_file_info *f, char *out)
{
    /* mtime in ns, like Caddy's validator; clamped outside the int64 range (year 1677..2262). */
    int64_t ns;
    if (f->mtime_sec > INT64_MAX / 1000000000 - 1)
        ns = INT64_MAX;
    else if (f->mtime_sec < INT64_MIN / 1000000000 + 1)
        ns = INT64_MIN;
    else
        ns = f->mtime_sec * 1000000000 + f->mtime_nsec;
    static const char hex[] = "0123456789abcdef";
    char tmp[FP_ETAG_MAX];
    size_t k = 0;
    uint64_t u = ns < 0 ? (uint64_t)0 - (uint64_t)ns : (uint64_t)ns;
    uint64_t size = f->size;
    tmp[k++] = '"';
    do tmp[k++] = hex[size & 15]; while (size >>= 4);
    tmp[k++] = '-';
    do tmp[k++] = hex[u & 15]; while (u >>= 4);
    if (ns < 0)
        tmp[k++] = '-';
    tmp[k++] = '"';
    for (size_t i = 0; i < k; i++)   /* built backwards */
        out[i] = tmp[k - 1 - i];
    out[k] = '\0';
}

int fp_static_decide(const fp_file_info *file, const char *name, size_t name_len,
                     const fp_static_request *req, fp_static_response *out)
{
    if (!file || !req || !out || (!name && name_len))
        return EINVAL;
    memset(out, 0, sizeof *out);
    out->size = file->size;
    out->content_type = fp_content_type(name, name_len);
    format_etag(file, out->etag);
    int64_t mtime = file->mtime_sec;
    if (fp_http_date_format(mtime, out->last_modified) != 0)
        out->last_modified[0] = '\0';   /* no Last-Modified for a year outside 0..9999 */

    fp_str method = present(req->method) ? req->method : (fp_str){"GET", 3};
    int get = eq_str(method.ptr, method.len, "GET");
    int head = eq_str(method.ptr, method.len, "HEAD");
    if (!get && !head) {
        out->status = 405;
        return 0;
    }

    /* RFC 9110 section 13.2.2: the order in which the preconditions are evaluated. */
    int64_t t;
    if (present(req->if_match)) {
        if (!etag_matches(req->if_match, out->etag, 0)) {
            out->status = 412;
            return 0;
        }
    } else if (date_of(req->if_unmodified_since, &t) && mtime > t) {
        out->status = 412;
        return 0;
    }
    if (present(req->if_none_match)) {
        if (etag_matches(req->if_none_match, out->etag, 1)) {
            out->status = 304;
            return 0;
        }
    } else if (date_of(req->if_modified_since, &t) && mtime <= t) {
        out->status = 304;
        return 0;
    }

    uint64_t first = 0, last = 0;
    out->status = 200;
    out->offset = 0;
    out->length = file->size;
    if (get && present(req->range) && req->range.len) {
        int use_range = 1;
        if (present(req->if_range)) {
            const char *p = req->if_range.ptr;
            size_t n = req->if_range.len;
            trim(&p, &n);
            if (n && (p[0] == '"' || (n >= 2 && p[0] == 'W' && p[1] == '/')))
                use_range = etag_matches((fp_str){p, n}, out->etag, 0) && !(n == 1 && p[0] == '*');
            else
                use_range = date_of(req->if_range, &t) && t == mtime;
        }
        if (use_range) {
            switch (parse_range(req->range, file->size, &first, &last)) {
            case RANGE_UNSATISFIABLE:
                out->status = 416;
                out->length = 0;
                return 0;
            case RANGE_OK:
                out->status = 206;
                out->offset = first;
                out->length = last - first + 1;
                break;
            case RANGE_IGNORE:
                break;
            }
        }
    }
    out->send_body = get && out->length > 0;
    return 0;
}
