/*
 * The php_server router: what a request path maps to under a document root, and the static
 * file decisions (content type, validators, 304, Range).  One implementation for every
 * server: frankenpy.http.routing wraps it through cffi (frankenpy._native), the native HTTP
 * server calls it directly.
 *
 * Contract
 * - No Python, no global state, no locks: an fp_router is read-only after fp_router_init(),
 *   so any number of threads may route with it at once, without the GIL.
 * - No heap allocation per request: results are written into a caller-provided buffer; the
 *   file-system walk uses about 4 * FP_PATH_MAX (16 KiB) of stack.  The one exception is
 *   realpath(3), called only at a symlink, which may allocate for a target path over 1 KiB.
 * - Errno-style results: functions return 0 or a positive errno value, never set errno.
 * - Bytes in, bytes out: a request path is the already percent-decoded path (decoded exactly
 *   once by the HTTP layer; "%2e%2e" left in it is a literal file name).  Strings carry their
 *   length (fp_str); output strings are also NUL-terminated.
 *
 * Routing (FrankenPHP's php_server):
 *   redir  {path}/ 308       if {path}/index.php is a file and {path} has no trailing "/"
 *   try_files {path} {path}/index.php index.php  (split_path on the split extensions)
 *   php    if the chosen path ends in a split extension (".php", case-insensitive)
 *   file_server              otherwise: the file, a directory's index.html/index.txt, else 404
 * with these rules on top, which win over every fallback (/.env is 403, never the front
 * controller):
 *   - a NUL byte in the path: 400;
 *   - a segment starting with "." ("..", ".", ".env", ".git"): 403, except allowed_hidden
 *     (".well-known", RFC 8615).  The path is never normalised: "a/../b" is refused, not folded;
 *   - symlinks: the walk follows them.  With follow_symlinks (the default, as Caddy, nginx and
 *     apache do) a link may lead out of the document root; the hidden rule then also applies
 *     to the resolved target: to its path below the root when it is inside, and to each link's
 *     final name when it is outside (a link onto ".env" or ".ssh" is 403).  Without
 *     follow_symlinks, any link whose target is outside the root is 403 (roots that hold
 *     untrusted uploads);
 *   - PHP source is never served as a static file: the split extensions, PHP_SOURCE suffixes
 *     (.phtml .php3-.php8 .phps .phar .inc) and editor/deploy copies of them (index.php~,
 *     config.php.bak, settings.inc.dist) are 403, by the request's name and by the resolved
 *     target's name (a link "x.txt" -> "index.php" is 403).
 */
#ifndef FRANKENPY_ROUTER_H
#define FRANKENPY_ROUTER_H

#include <stddef.h>
#include <stdint.h>

/* PATH_MAX on Linux (checked in router.c); a literal so that cffi can size fp_router. */
enum { FP_PATH_MAX = 4096 };

/* A byte string that is not NUL-terminated.  ptr == NULL means "absent" (a missing header). */
typedef struct fp_str {
    const char *ptr;
    size_t len;
} fp_str;

/* Names and suffixes the router compares against.  The arrays and their strings belong to the
 * caller and must outlive the router (fp_router keeps the pointers). */
typedef struct fp_router_options {
    const char *index;                     /* "index.php": directory index, front controller */
    const char *const *split_extensions;   /* {".php"}: compared case-insensitively */
    size_t n_split_extensions;
    const char *const *static_indexes;     /* {"index.html", "index.txt"} */
    size_t n_static_indexes;
    const char *const *allowed_hidden;     /* {".well-known"} */
    size_t n_allowed_hidden;
    int follow_symlinks;                   /* 1: follow links out of the root; 0: 403 */
} fp_router_options;

typedef struct fp_router {
    fp_router_options options;
    size_t root_len;
    char root[FP_PATH_MAX];   /* realpath of the document root, resolved once */
} fp_router;

/* Resolve `document_root` (its symlinks, once, like FrankenPHP's resolve_root_symlink) and
 * check the options.  Returns 0, ENOTDIR (not a directory), EINVAL (an empty name, a name with
 * "/" or a NUL, "." or "..", a split extension not starting with "."), or realpath's errno. */
int fp_router_init(fp_router *router, const char *document_root, const fp_router_options *options);

typedef enum fp_route_kind {
    FP_ROUTE_PHP = 1,      /* execute script_filename (200 until PHP says otherwise) */
    FP_ROUTE_STATIC,       /* send the file real_path (open it with O_NOFOLLOW) */
    FP_ROUTE_REDIRECT,     /* 308 to location */
    FP_ROUTE_FORBIDDEN,    /* 403 */
    FP_ROUTE_NOT_FOUND,    /* 404: nothing matched and there is no front controller */
    FP_ROUTE_BAD_REQUEST   /* 400: NUL byte */
} fp_route_kind;

typedef struct fp_route {
    fp_route_kind kind;
    int status;               /* 200, 308, 400, 403, 404 */
    int front_controller;     /* PHP: the root index.php took a path that matched nothing */
    const char *reason;       /* refusals: a static English sentence, for logs */
    fp_str script_name;       /* PHP: URL path of the script ("/blog/index.php");
                                 STATIC: URL path of the file */
    fp_str script_filename;   /* PHP: root + script_name, symlinks below the root kept */
    fp_str path_info;         /* PHP: what followed the script, raw ("/a//b/"); a suffix of
                                 the request path (not in the buffer), or empty */
    fp_str real_path;         /* PHP, STATIC: the resolved file (may be outside the root
                                 when follow_symlinks let a link lead there) */
    fp_str location;          /* REDIRECT: percent-encoded path + "/" + "?" + query */
} fp_route;

/* A buffer of this size always holds fp_route_resolve()'s strings for this path and query. */
size_t fp_route_buffer_size(const fp_router *router, size_t path_len, size_t query_len);

/* Route `path` (decoded request path; "" means "/") under the router's root.  `query` (the raw
 * query string, may be NULL/0) only goes into the redirect's Location, with control bytes and
 * spaces percent-encoded so the header stays one line.  The strings of `out` point into
 * `buf` (and path_info into `path`).  Returns 0, ERANGE when `buf` is too small for this
 * result (fp_route_buffer_size() is always enough), EINVAL for NULL arguments. */
int fp_route_resolve(const fp_router *router, const char *path, size_t path_len,
                     const char *query, size_t query_len, char *buf, size_t buf_len,
                     fp_route *out);

/* ---- static files ----------------------------------------------------------------------- */

/* What the server knows about the open file (from fstat). */
typedef struct fp_file_info {
    uint64_t size;
    int64_t mtime_sec;
    int64_t mtime_nsec;
} fp_file_info;

/* The request's method and validator headers; an absent header has ptr == NULL. */
typedef struct fp_static_request {
    fp_str method;            /* case-sensitive ("GET", "HEAD"); absent means GET */
    fp_str if_match;
    fp_str if_unmodified_since;
    fp_str if_none_match;
    fp_str if_modified_since;
    fp_str range;
    fp_str if_range;
} fp_static_request;

enum { FP_ETAG_MAX = 48, FP_HTTP_DATE_LEN = 29 };

typedef struct fp_static_response {
    int status;               /* 200, 206, 304, 405 (Allow: GET, HEAD), 412, 416 */
    int send_body;            /* 1: send `length` bytes from `offset` (GET, 200/206, non-empty) */
    uint64_t offset;          /* 206: first byte */
    uint64_t length;          /* Content-Length of a 200/206 (also for HEAD) */
    uint64_t size;            /* the file size (Content-Range: bytes offset-(offset+length-1)/size
                                 on 206, bytes * /size on 416) */
    const char *content_type; /* static string, "; charset=utf-8" on textual types */
    char etag[FP_ETAG_MAX];   /* strong: "<mtime ns hex>-<size hex>" with the quotes */
    char last_modified[FP_HTTP_DATE_LEN + 1];
} fp_static_response;

/* Decide the response for a regular file: RFC 9110 preconditions in their order (If-Match,
 * else If-Unmodified-Since: 412; If-None-Match, else If-Modified-Since: 304), then for GET a
 * single byte range ("bytes=a-b", "bytes=a-", "bytes=-n"; If-Range must match the strong
 * ETag or equal Last-Modified): 206, or 416 when unsatisfiable.  Several ranges, another unit
 * or a malformed header are ignored (200).  Other methods than GET and HEAD get 405.
 * `name` is the file name the content type is taken from.  Returns 0 or EINVAL. */
int fp_static_decide(const fp_file_info *file, const char *name, size_t name_len,
                     const fp_static_request *request, fp_static_response *out);

/* Content type from the file name's suffix (a compact built-in table, case-insensitive);
 * compressed files (.gz, .bz2, .xz, .br, .Z) are their compressed type; unknown:
 * application/octet-stream.  Returns a static string. */
const char *fp_content_type(const char *name, size_t name_len);

/* IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT") of a Unix time, NUL-terminated, into
 * out[FP_HTTP_DATE_LEN + 1].  Returns 0, or ERANGE for a year outside 0..9999. */
int fp_http_date_format(int64_t unix_time, char *out);

/* Parse an HTTP date in any of RFC 9110's three formats (IMF-fixdate, RFC 850, asctime).
 * Returns 0 with *unix_time set, or EINVAL. */
int fp_http_date_parse(const char *text, size_t len, int64_t *unix_time);

#endif
