/* The native HTTP server on libh2o-evloop; see http_server.h. */
#define _GNU_SOURCE
#include "http_server.h"
#include "clock.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <h2o.h>
#include <h2o/version.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>

/* picohttpparser, as bundled and exported by libh2o-evloop (h2o's own request parser; Debian
 * installs no header for it).  Used only to re-read a request head h2o already accepted. */
struct phr_header {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
};
int phr_parse_request(const char *buf, size_t len, const char **method, size_t *method_len,
                      const char **path, size_t *path_len, int *minor_version,
                      struct phr_header *headers, size_t *num_headers, size_t last_len);

#define MAX_SITES 16
#define MAX_LOOPS 64 /* loop threads, or PHP threads with a loop each (per-thread) */
#define MAX_WORKER_ROUTES 64
#define STATIC_CHUNK (64 * 1024)
#define STATIC_CACHE_SLOTS 256 /* the static file cache: direct-mapped by a hash of the path */
#define EXPIRE_INTERVAL_MS 50
#define STOP_LINGER_NS 2000000000u /* longest wait for connections to close at stop */
#define LOG_QUEUE_MAX (4 * 1024 * 1024) /* bytes of records kept when nobody takes them */
/* Bytes of one record, its message cut to fit: fp_http_server_take_logs() takes whole records
 * into native.py's 256 KiB batch, and one larger than that would never be taken. */
#define LOG_RECORD_MAX (64 * 1024)

typedef struct worker_route {
    const char *pattern; /* NULL: by script file */
    const char *script_filename;
    int queue;
} worker_route;

typedef struct http_loop http_loop;
typedef struct static_entry static_entry;

/* A site as one loop thread serves it: h2o's context and the loop's own listener socket. */
typedef struct site_ctx {
    h2o_context_t ctx;
    h2o_accept_ctx_t accept_ctx;
    h2o_socket_t *listener;
    http_loop *loop;
} site_ctx;

typedef struct site {
    fp_http_server *server;
    fp_http_site conf;
    h2o_globalconf_t globalconf;
    site_ctx per_loop[MAX_LOOPS];
    SSL_CTX *ssl_ctx; /* NULL: plain HTTP */
    int fd;
    int fds[MAX_LOOPS]; /* the listening socket, one descriptor per loop (fd, then dups) */
    worker_route routes[MAX_WORKER_ROUTES];
    int n_routes;
    uint64_t max_wait_ns; /* 0: none */
} site;

typedef struct site_handler {
    h2o_handler_t super;
    site *site;
} site_handler;

/* One loop thread: its h2o loop, the receiver PHP threads wake it through, its thread. */
struct http_loop {
    fp_http_server *server;
    int index;
    h2o_loop_t *loop;
    h2o_multithread_queue_t *mqueue;
    h2o_multithread_receiver_t receiver; /* exchanges with output to send */
    pthread_t thread;
    int ready; /* under server->mu: set up, running */
    /* Per-thread (run-to-completion): the PHP thread that runs this loop took it (entered), and
     * has shut it down (done), written under server->mu (atomic: its PHP thread reads them
     * without, while stop may mark a loop not entered yet both); the classic requests it parsed
     * and runs itself, FIFO (its thread only). */
    atomic_int entered, done;
    int closed_clean; /* its shutdown saw every connection closed, every exchange released */
    atomic_int exchanges; /* allocated and linked to this loop (their PHP side may wake it) */
    int releasing; /* under server->mu: its h2o objects are being freed (wake it no more) */
    fp_http_exchange *local_first, *local_last;
    static_entry *cache[STATIC_CACHE_SLOTS]; /* small static files (loop thread only) */
    size_t cache_bytes;
};

struct fp_http_server {
    site *sites[MAX_SITES];
    int n_sites;
    fp_handoff **queues;
    int n_queues;
    int python_queue;
    int access_log;
    int per_thread; /* run-to-completion: the loops are PHP threads' (fp_http_loop_next) */

    http_loop loops[MAX_LOOPS];
    int n_loops;
    pthread_t expire_thread; /* max_wait_time of the queued requests (expire_main) */
    int expiring;            /* expire_thread runs */
    pthread_cond_t expire_cond; /* (server->mu) wakes expire_thread at stop */
    int started;
    atomic_int stopping;
    atomic_int draining;

    pthread_mutex_t mu; /* in_flight, the idle condition, loops' ready flags, expire_cond */
    pthread_cond_t idle;
    pthread_cond_t ready;
    uint64_t in_flight;
    atomic_uint_fast64_t requests, php_requests, rejected_503, client_gone;
    atomic_int php_busy;

    pthread_mutex_t log_mu;
    pthread_cond_t log_cond;
    char *logs;
    size_t logs_len, logs_cap;
    int logs_woken;
};

/* ---- exchanges ------------------------------------------------------------------------------ */

struct fp_http_exchange {
    fp_handoff_item link; /* first: a queue item is an exchange */
    fp_request req;
    fp_http_server *server;
    site *site;
    http_loop *loop; /* the loop thread that owns the request's connection */

    pthread_mutex_t mu; /* the fields shared between the loop and the PHP thread */
    pthread_cond_t cond;
    int refs;           /* the h2o request, the PHP side, a message in flight */
    h2o_req_t *h2o;     /* NULL once h2o disposed the request (loop thread writes it) */
    int gone;           /* the client went away before the response was complete */
    int broken;         /* output was lost (no memory): the response must not end cleanly */
    int final;          /* the PHP side is done: everything is in `pending` */
    int scheduled;      /* `message` is queued to the loop */
    int status;         /* 0 until the headers are known */
    char *header_lines;
    size_t header_len;
    char *pending;
    size_t pending_len, pending_cap;
    h2o_multithread_message_t message;
    /* headers_send(1xx): the raw interim response the PHP thread asks for, and the outcome the
     * loop thread gives back (0 until known, 1 written, -1 refused or failed) */
    const char *interim;
    size_t interim_len;
    int interim_result;

    /* loop thread only */
    h2o_socket_t *interim_sock; /* our interim write is in flight on this socket */
    struct fp_http_exchange *interim_next; /* in the loop thread's interim_writes */
    h2o_generator_t generator;
    int response_started;
    int sending;        /* an h2o_send() awaits its proceed */
    int final_sent;
    char *inflight;     /* the buffer h2o is writing */
    size_t inflight_cap;
    int head;           /* HEAD: the body is produced, not sent */
    int inline_run;     /* per-thread: PHP runs on the loop's own thread, between its runs */

    _Atomic uint64_t deadline_ns;
    _Atomic int64_t limit_seconds;

    char *data;         /* one block: request strings, $_SERVER pairs, body */
    size_t body_len, body_pos;
    const char *body;
    char tag[64];
};

static const fp_host exchange_host;
static const char *reason_phrase(int status);

static void log_record(fp_http_server *server, const char *kind, const char *tag, const char *message, size_t len);

static void server_request_done(fp_http_server *server)
{
    pthread_mutex_lock(&server->mu);
    server->in_flight--;
    if (server->in_flight == 0) {
        pthread_cond_broadcast(&server->idle);
    }
    pthread_mutex_unlock(&server->mu);
}

static void exchange_unref(fp_http_exchange *ex)
{
    pthread_mutex_lock(&ex->mu);
    int last = --ex->refs == 0;
    pthread_mutex_unlock(&ex->mu);
    if (!last) {
        return;
    }
    atomic_fetch_sub(&ex->loop->exchanges, 1);
    pthread_mutex_destroy(&ex->mu);
    pthread_cond_destroy(&ex->cond);
    free(ex->header_lines);
    free(ex->pending);
    free(ex->inflight);
    free(ex->data);
    free(ex);
}

/* ---- interim responses (headers_send(1xx): 103 Early Hints) ---------------------------------
 * h2o 2.2 has no API for 1xx responses (h2o_send_informational came in 2.3), so for HTTP/1.1
 * the loop thread writes the raw interim response on the connection's socket itself, before
 * the final head.  h2o 2.2's http1 leaves the socket to the request while it is processed: it
 * stops reading when it dispatches the request, and parses a pipelined next request only once
 * this response is completely written, so the socket is idle until h2o_start_response (checked
 * anyway: a socket with a write in flight is refused).  pump() holds the final head back until
 * the interim write completed (h2o_socket_write allows one write at a time).  HTTP/2 would need
 * a HEADERS frame, which h2o 2.2 cannot send for 1xx; HTTP/1.0 has no 1xx: both refused. */

/* Exchanges of this loop thread whose interim write is in flight (each loop is one thread). */
static __thread fp_http_exchange *interim_writes;

static void interim_unlink(fp_http_exchange *ex)
{
    for (fp_http_exchange **p = &interim_writes; *p; p = &(*p)->interim_next) {
        if (*p == ex) {
            *p = ex->interim_next;
            break;
        }
    }
    ex->interim_next = NULL;
    ex->interim_sock = NULL;
}

/* Give the PHP thread waiting in ex_interim() its outcome. */
static void interim_done(fp_http_exchange *ex, int result)
{
    pthread_mutex_lock(&ex->mu);
    ex->interim_result = result;
    pthread_cond_broadcast(&ex->cond);
    pthread_mutex_unlock(&ex->mu);
}

static void pump(fp_http_exchange *ex);

static void on_interim_written(h2o_socket_t *sock, const char *err)
{
    fp_http_exchange *ex = interim_writes;
    while (ex && ex->interim_sock != sock) {
        ex = ex->interim_next;
    }
    if (!ex) {
        return;
    }
    interim_unlink(ex);
    interim_done(ex, err ? -1 : 1);
    pump(ex); /* the final response may be ready and waiting for the socket */
}

/* Loop thread: write the interim response the PHP thread asked for, or refuse it. */
static void interim_start(fp_http_exchange *ex)
{
    pthread_mutex_lock(&ex->mu);
    const char *raw = ex->interim_result ? NULL : ex->interim;
    size_t len = ex->interim_len;
    pthread_mutex_unlock(&ex->mu);
    if (!raw || ex->interim_sock) {
        return;
    }
    h2o_req_t *req = ex->h2o;
    h2o_socket_t *sock = NULL;
    if (req && !ex->response_started && req->version >= 0x101 && req->version < 0x200 &&
        req->conn->callbacks->get_socket) {
        sock = req->conn->callbacks->get_socket(req->conn);
    }
    if (!sock || h2o_socket_is_writing(sock)) {
        interim_done(ex, -1);
        return;
    }
    /* `raw` stays valid: its PHP thread waits for the outcome, or for on_h2o_dispose(), after
     * which h2o closes the socket without writing again. */
    h2o_iovec_t buf = h2o_iovec_init(raw, len);
    ex->interim_sock = sock;
    ex->interim_next = interim_writes;
    interim_writes = ex;
    h2o_socket_write(sock, &buf, 1, on_interim_written);
}

/* h2o disposes the request's pool: the request is over (answered, or its client gone). */
static void on_h2o_dispose(void *slot)
{
    fp_http_exchange *ex = *(fp_http_exchange **)slot;
    fp_http_server *server = ex->server;
    if (ex->interim_sock) {
        interim_unlink(ex); /* the socket closes with its write: no callback will come */
    }
    pthread_mutex_lock(&ex->mu);
    ex->h2o = NULL;
    if (!ex->final_sent) {
        ex->gone = 1;
        atomic_fetch_add(&server->client_gone, 1);
    }
    pthread_cond_broadcast(&ex->cond); /* a PHP thread waiting for the client learns it left */
    pthread_mutex_unlock(&ex->mu);
    server_request_done(server);
    exchange_unref(ex);
}

static void on_generator_stop(h2o_generator_t *generator, h2o_req_t *req)
{
    (void)generator;
    (void)req; /* on_h2o_dispose follows and marks the exchange gone */
}

static void on_generator_proceed(h2o_generator_t *generator, h2o_req_t *req)
{
    (void)req;
    fp_http_exchange *ex = H2O_STRUCT_FROM_MEMBER(fp_http_exchange, generator, generator);
    ex->sending = 0;
    pump(ex);
}

/* Parse PHP's "Name: value\n" lines into the response; hop-by-hop headers are the server's. */
static void add_response_headers(h2o_req_t *req, const char *lines, size_t len)
{
    const char *p = lines, *end = lines + len;
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (!eol) {
            eol = end;
        }
        const char *colon = memchr(p, ':', (size_t)(eol - p));
        if (colon && colon > p) {
            const char *name = p;
            size_t name_len = (size_t)(colon - p);
            while (name_len && (name[name_len - 1] == ' ' || name[name_len - 1] == '\t')) {
                name_len--;
            }
            const char *value = colon + 1;
            const char *value_end = eol;
            while (value < value_end && (*value == ' ' || *value == '\t')) {
                value++;
            }
            while (value_end > value && (value_end[-1] == ' ' || value_end[-1] == '\t' || value_end[-1] == '\r')) {
                value_end--;
            }
            h2o_iovec_t lower = h2o_strdup(&req->pool, name, name_len);
            h2o_strtolower(lower.base, lower.len);
            static const char *const hop[] = {"connection", "keep-alive", "proxy-authenticate",
                                              "proxy-authorization", "proxy-connection", "te",
                                              "trailers", "transfer-encoding", "upgrade"};
            int skip = 0;
            for (size_t i = 0; i < sizeof hop / sizeof hop[0]; i++) {
                skip |= strlen(hop[i]) == lower.len && memcmp(hop[i], lower.base, lower.len) == 0;
            }
            /* The body's framing is the server's: it measures a complete body itself. */
            skip |= lower.len == 14 && memcmp(lower.base, "content-length", 14) == 0;
            if (!skip && name_len) {
                /* h2o compares lower-case names; on the wire each dash-separated part is
                 * capitalised, as waitress does ("Content-type" -> "Content-Type"). */
                h2o_iovec_t wire = h2o_strdup(&req->pool, lower.base, lower.len);
                for (size_t i = 0; i < wire.len; i++) {
                    if ((i == 0 || wire.base[i - 1] == '-') && wire.base[i] >= 'a' && wire.base[i] <= 'z') {
                        wire.base[i] = (char)(wire.base[i] - 32);
                    }
                }
                h2o_add_header_by_str(&req->pool, &req->res.headers, lower.base, lower.len, 1,
                                      wire.base, value, (size_t)(value_end - value));
            }
        }
        p = eol + 1;
    }
}

/* Loop thread: output was lost, so end the response as broken (h2o closes the connection
 * without the last chunk, or a 500 if nothing was sent yet): never a clean, shorter body. */
static void cut_response(fp_http_exchange *ex, h2o_req_t *req)
{
    if (!ex->response_started) {
        ex->response_started = 2;
        req->res.status = 500;
        req->res.reason = reason_phrase(500);
        req->res.content_length = SIZE_MAX;
        h2o_start_response(req, &ex->generator);
    } else if (ex->response_started == 1) {
        ex->response_started = 2;
        h2o_start_response(req, &ex->generator);
    }
    ex->final_sent = 1;
    h2o_send(req, NULL, 0, H2O_SEND_STATE_ERROR);
}

/* Loop thread: start the response once the headers are known, and send what is pending
 * whenever h2o is not busy with the previous send. */
static void pump(fp_http_exchange *ex)
{
    h2o_req_t *req = ex->h2o;
    if (!req || ex->sending || ex->final_sent || ex->interim_sock) {
        return;
    }
    pthread_mutex_lock(&ex->mu);
    int final = ex->final, status = ex->status;
    if (ex->broken) {
        pthread_mutex_unlock(&ex->mu);
        cut_response(ex, req);
        return;
    }
    if (!status && !final) {
        pthread_mutex_unlock(&ex->mu);
        return;
    }
    if (!ex->response_started) {
        ex->response_started = 1;
        req->res.status = status ? status : 200;
        req->res.reason = reason_phrase(req->res.status);
        if (ex->header_lines) {
            add_response_headers(req, ex->header_lines, ex->header_len);
        }
        int bodiless = (status >= 100 && status < 200) || status == 204 || status == 304;
        /* Complete: a Content-Length (the connection stays alive); streamed or bodiless: none
         * (h2o chunks a streamed body). */
        req->res.content_length = final && !bodiless ? ex->pending_len : SIZE_MAX;
    }
    /* Swap the pending bytes into the in-flight buffer h2o writes from. */
    char *buf = ex->pending;
    size_t len = ex->pending_len, cap = ex->pending_cap;
    ex->pending = ex->inflight;
    ex->pending_cap = ex->inflight_cap;
    ex->pending_len = 0;
    ex->inflight = buf;
    ex->inflight_cap = cap;
    pthread_cond_broadcast(&ex->cond); /* back-pressure: the PHP thread may write again */
    pthread_mutex_unlock(&ex->mu);

    if (ex->response_started == 1) {
        ex->response_started = 2;
        h2o_start_response(req, &ex->generator);
    }
    if (!len && !final) {
        return;
    }
    h2o_iovec_t body = h2o_iovec_init(buf, ex->head ? 0 : len);
    ex->sending = 1;
    if (final) {
        ex->final_sent = 1;
    }
    h2o_send(req, &body, 1, final ? H2O_SEND_STATE_FINAL : H2O_SEND_STATE_IN_PROGRESS);
}

static void on_messages(h2o_multithread_receiver_t *receiver, h2o_linklist_t *messages)
{
    (void)receiver;
    while (!h2o_linklist_is_empty(messages)) {
        h2o_multithread_message_t *message = H2O_STRUCT_FROM_MEMBER(h2o_multithread_message_t, link, messages->next);
        h2o_linklist_unlink(&message->link);
        fp_http_exchange *ex = H2O_STRUCT_FROM_MEMBER(fp_http_exchange, message, message);
        pthread_mutex_lock(&ex->mu);
        ex->scheduled = 0;
        pthread_mutex_unlock(&ex->mu);
        interim_start(ex);
        pump(ex);
        exchange_unref(ex);
    }
}

/* PHP thread (under ex->mu): make sure the loop thread looks at the exchange soon. */
static int schedule_locked(fp_http_exchange *ex)
{
    if (ex->scheduled || ex->gone) {
        return 0;
    }
    ex->scheduled = 1;
    ex->refs++;
    return 1;
}

static void send_scheduled(fp_http_exchange *ex)
{
    h2o_multithread_send_message(&ex->loop->receiver, &ex->message);
}

/* Under ex->mu.  Returns -1 when the bytes could not be kept (out of memory): the exchange is
 * then broken, so that the client sees a cut response rather than a clean, shorter one. */
static int append_pending(fp_http_exchange *ex, const char *data, size_t len)
{
    if (ex->pending_len + len > ex->pending_cap) {
        size_t cap = ex->pending_cap ? ex->pending_cap : 4096;
        while (cap < ex->pending_len + len) {
            cap *= 2;
        }
        char *grown = realloc(ex->pending, cap);
        if (!grown) {
            ex->broken = 1;
            return -1;
        }
        ex->pending = grown;
        ex->pending_cap = cap;
    }
    memcpy(ex->pending + ex->pending_len, data, len);
    ex->pending_len += len;
    return 0;
}

/* ---- the exchange's host callbacks (PHP thread) --------------------------------------------- */

/* Per-thread: the PHP thread is the loop's own thread, outside any h2o callback, so it sends
 * its output itself and runs its loop (which runs no PHP: requests parsed meanwhile queue on
 * the loop) until the client has taken all but FP_HTTP_HIGH_WATER bytes. */
static int inline_output(fp_http_exchange *ex, const char *data, size_t len)
{
    pthread_mutex_lock(&ex->mu);
    int failed = ex->gone || ex->broken || append_pending(ex, data, len) != 0;
    if (!failed && !ex->status) {
        ex->status = ex->req.response_code ? ex->req.response_code : 200;
    }
    pthread_mutex_unlock(&ex->mu);
    pump(ex); /* also cuts the response of a broken exchange */
    h2o_loop_t *loop = ex->loop->loop;
    h2o_evloop_run(loop, 0); /* completions of earlier writes (h2o's proceed sends the rest) */
    while (!failed && ex->h2o && ex->pending_len > FP_HTTP_HIGH_WATER) {
        h2o_evloop_run(loop, 100);
    }
    return failed || ex->gone ? -1 : 0;
}

static int ex_output(void *handle, const char *data, size_t len)
{
    fp_http_exchange *ex = handle;
    if (ex->inline_run) {
        return inline_output(ex, data, len);
    }
    pthread_mutex_lock(&ex->mu);
    if (ex->gone || ex->broken || append_pending(ex, data, len) != 0) {
        /* Gone, or the output could not be kept: PHP aborts the script (unless it ignores
         * user aborts, and then its output goes nowhere). */
        int send = ex->broken ? schedule_locked(ex) : 0;
        pthread_mutex_unlock(&ex->mu);
        if (send) {
            send_scheduled(ex);
        }
        return -1;
    }
    if (!ex->status) {
        ex->status = ex->req.response_code ? ex->req.response_code : 200;
    }
    int send = schedule_locked(ex);
    pthread_mutex_unlock(&ex->mu);
    if (send) {
        send_scheduled(ex);
    }
    pthread_mutex_lock(&ex->mu);
    while (ex->pending_len > FP_HTTP_HIGH_WATER && !ex->gone) {
        pthread_cond_wait(&ex->cond, &ex->mu);
    }
    int gone = ex->gone;
    pthread_mutex_unlock(&ex->mu);
    return gone ? -1 : 0;
}

static void ex_headers(void *handle, int status, const char *lines, size_t len)
{
    fp_http_exchange *ex = handle;
    char *copy = malloc(len + 1);
    if (copy) {
        memcpy(copy, lines, len);
        copy[len] = '\0';
    }
    pthread_mutex_lock(&ex->mu);
    free(ex->header_lines);
    ex->header_lines = copy;
    ex->header_len = copy ? len : 0;
    ex->status = status ? status : 200;
    pthread_mutex_unlock(&ex->mu);
}

static void ex_log(void *handle, int type, const char *file, uint32_t line, const char *message)
{
    fp_http_exchange *ex = handle;
    char kind[16];
    snprintf(kind, sizeof kind, "%d", type);
    if (file) {
        size_t n = strlen(message) + strlen(file) + 32;
        char *text = malloc(n);
        if (text) {
            int len = snprintf(text, n, "%s\x1f%s\x1f%u", message, file, line);
            log_record(ex->server, kind, ex->tag, text, len > 0 ? (size_t)len : 0);
            free(text);
            return;
        }
    }
    log_record(ex->server, kind, ex->tag, message, strlen(message));
}

/* frankenphp_log(): queued as kind "L<level>", message "<text>\x1f<context JSON>" (JSON escapes
 * control characters, so the last \x1f is the separator; the text may hold any byte, NUL too:
 * records carry their length); native.py logs it with the level and the context as the
 * record's extra, as php_functions.fp_py_php_log() does. */
static void ex_php_log(void *handle, int level, const char *message, size_t message_len, const char *context,
                       size_t context_len)
{
    fp_http_exchange *ex = handle;
    /* What log_record() would cut is cut here, so that the separator stays: a context that does
     * not fit whole is dropped (cut, it would be no JSON), then the message is cut. */
    if (message_len + context_len + 256 > LOG_RECORD_MAX) {
        context_len = 0;
        if (message_len + 256 > LOG_RECORD_MAX) {
            message_len = LOG_RECORD_MAX - 256;
        }
    }
    char kind[16];
    snprintf(kind, sizeof kind, "L%d", level);
    char *text = malloc(message_len + context_len + 1);
    if (!text) {
        return;
    }
    memcpy(text, message, message_len);
    text[message_len] = '\x1f';
    if (context_len) {
        memcpy(text + message_len + 1, context, context_len);
    }
    log_record(ex->server, kind, ex->tag, text, message_len + 1 + context_len);
    free(text);
}

static size_t ex_read_body(void *handle, char *buf, size_t len)
{
    fp_http_exchange *ex = handle;
    size_t n = ex->body_len - ex->body_pos;
    if (n > len) {
        n = len;
    }
    memcpy(buf, ex->body + ex->body_pos, n);
    ex->body_pos += n;
    return n;
}

static void ex_time_limit(void *handle, int64_t seconds, int initial)
{
    (void)initial; /* max_execution_time at start, or set_time_limit(): both count from now */
    fp_http_exchange_set_deadline(handle, seconds);
}

/* php://stderr (and php://stdout, which would corrupt the response) of a request: logged as
 * error_log() lines are. */
static void ex_stderr(void *handle, const char *data, size_t len)
{
    fp_http_exchange *ex = handle;
    while (len && (data[len - 1] == '\n' || data[len - 1] == '\r')) {
        len--;
    }
    if (len) {
        log_record(ex->server, "0", ex->tag, data, len);
    }
}

/* headers_send(1xx): the loop thread writes "HTTP/1.1 <status> <reason>" and `lines` (the
 * headers set so far, "Name: value\n") before the final response; see interim_start(). */
static int ex_interim(void *handle, int status, const char *lines, size_t len)
{
    fp_http_exchange *ex = handle;
    if (status < 100 || status > 199 || status == 101) {
        return -1; /* 101 switches protocols: not an interim response */
    }
    /* Each "\n" becomes "\r\n": at most len more bytes, plus the status line and the blank line. */
    char *raw = malloc(64 + 2 * len + 2);
    if (!raw) {
        return -1;
    }
    size_t n = (size_t)sprintf(raw, "HTTP/1.1 %d %s\r\n", status, reason_phrase(status));
    for (const char *p = lines, *end = lines + len; p < end;) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        size_t line_len = (size_t)((eol ? eol : end) - p);
        if (line_len && p[line_len - 1] == '\r') {
            line_len--;
        }
        if (line_len && memchr(p, ':', line_len)) {
            memcpy(raw + n, p, line_len);
            n += line_len;
            raw[n++] = '\r';
            raw[n++] = '\n';
        }
        p = eol ? eol + 1 : end;
    }
    raw[n++] = '\r';
    raw[n++] = '\n';

    pthread_mutex_lock(&ex->mu);
    int result = -1;
    /* Only before the final response: no status known yet (headers sent, or output). */
    if (!ex->gone && !ex->final && !ex->status && !ex->interim) {
        ex->interim = raw;
        ex->interim_len = n;
        ex->interim_result = 0;
        if (ex->inline_run) {
            /* Per-thread: this PHP thread is the loop thread, so it writes the interim response
             * itself and runs its loop until the write completed (waiting on the condition would
             * wait for itself). */
            pthread_mutex_unlock(&ex->mu);
            interim_start(ex);
            while (!ex->interim_result && !ex->gone) {
                h2o_evloop_run(ex->loop->loop, 100);
            }
            pthread_mutex_lock(&ex->mu);
        } else {
            int send = schedule_locked(ex);
            pthread_mutex_unlock(&ex->mu);
            if (send) {
                send_scheduled(ex);
            }
            pthread_mutex_lock(&ex->mu);
            while (!ex->interim_result && !ex->gone) {
                pthread_cond_wait(&ex->cond, &ex->mu);
            }
        }
        result = ex->interim_result == 1 ? 0 : -1;
        ex->interim = NULL;
    }
    pthread_mutex_unlock(&ex->mu);
    free(raw);
    return result;
}

static void finish(fp_http_exchange *ex, int release);

/* frankenphp_finish_request(): the response ends now, the script runs on (its output dropped). */
static void ex_finish_request(void *handle, fp_request *req)
{
    (void)req; /* the exchange's own request */
    finish(handle, 0);
}

static const fp_host exchange_host = {
    .output = ex_output,
    .log = ex_log,
    .headers = ex_headers,
    .read_body = ex_read_body,
    .time_limit = ex_time_limit,
    .stderr_output = ex_stderr,
    .finish_request = ex_finish_request,
    .interim = ex_interim, /* HTTP/1.1 only: see interim_start() */
    .php_log = ex_php_log,
};

void fp_http_exchange_set_deadline(fp_http_exchange *ex, int64_t seconds)
{
    atomic_store(&ex->limit_seconds, seconds);
    atomic_store(&ex->deadline_ns, seconds > 0 ? fp_monotonic_ns() + (uint64_t)seconds * 1000000000u : 0);
}

uint64_t fp_http_exchange_deadline(fp_http_exchange *ex, int64_t *seconds)
{
    if (seconds) {
        *seconds = atomic_load(&ex->limit_seconds);
    }
    return atomic_load(&ex->deadline_ns);
}

fp_request *fp_http_exchange_request(fp_http_exchange *ex, const char *tag)
{
    snprintf(ex->tag, sizeof ex->tag, "%s", tag ? tag : "-");
    return &ex->req;
}

static void finish(fp_http_exchange *ex, int release)
{
    fp_request *r = &ex->req;
    pthread_mutex_lock(&ex->mu);
    if (ex->final) {
        /* frankenphp_finish_request() ended the response already; the script ran on. */
        pthread_mutex_unlock(&ex->mu);
        if (release) {
            exchange_unref(ex);
        }
        return;
    }
    if (!ex->status) {
        ex->status = r->response_code ? r->response_code : 200;
    }
    if (!ex->header_lines && r->headers_sent && r->headers) {
        ex->header_lines = strndup(r->headers, r->headers_len);
        ex->header_len = ex->header_lines ? r->headers_len : 0;
    }
    if (r->output_len && !ex->gone) {
        (void)append_pending(ex, r->output, r->output_len); /* a failure: pump() cuts the response */
    }
    r->output_len = 0;
    ex->final = 1;
    int send = !ex->inline_run && schedule_locked(ex);
    pthread_mutex_unlock(&ex->mu);
    if (ex->inline_run) {
        pump(ex); /* on the loop's thread, between its runs */
    } else if (send) {
        send_scheduled(ex);
    }
    atomic_store(&ex->deadline_ns, 0);
    if (release) {
        exchange_unref(ex);
    }
}

void fp_http_exchange_finish(fp_http_exchange *ex)
{
    finish(ex, 1);
}

void fp_http_exchange_finish_keep(fp_http_exchange *ex)
{
    finish(ex, 0);
}

void fp_http_exchange_release(fp_http_exchange *ex)
{
    exchange_unref(ex);
}

void fp_http_exchange_respond(fp_http_exchange *ex, int status, const char *headers,
                              const char *body, size_t body_len)
{
    pthread_mutex_lock(&ex->mu);
    ex->status = status;
    free(ex->header_lines);
    ex->header_lines = headers ? strdup(headers) : NULL;
    ex->header_len = ex->header_lines ? strlen(ex->header_lines) : 0;
    if (!ex->gone) {
        (void)append_pending(ex, body, body_len); /* a failure: pump() cuts the response */
    }
    pthread_mutex_unlock(&ex->mu);
    finish(ex, 1);
}

/* ---- the log queue ---------------------------------------------------------------------------- */

/* A record is "kind\0tag\0<length in decimal>\0" and `len` bytes of message: the message is
 * bytes (frankenphp_log() and php://stderr may write NUL), the rest short text. */
static void log_record(fp_http_server *server, const char *kind, const char *tag, const char *message, size_t len)
{
    size_t k = strlen(kind) + 1, t = strlen(tag) + 1; /* short: a number or letter, a thread name */
    if (len > LOG_RECORD_MAX - k - t - 8) {
        len = LOG_RECORD_MAX - k - t - 8;
    }
    char length[8];
    size_t l = (size_t)snprintf(length, sizeof length, "%zu", len) + 1; /* < 64 KiB: 5 digits */
    size_t rec = k + t + l + len;
    pthread_mutex_lock(&server->log_mu);
    if (server->logs_len + rec > server->logs_cap && server->logs_len + rec <= LOG_QUEUE_MAX) {
        size_t cap = server->logs_cap ? server->logs_cap : 16384;
        while (cap < server->logs_len + rec) {
            cap *= 2;
        }
        char *grown = realloc(server->logs, cap);
        if (grown) {
            server->logs = grown;
            server->logs_cap = cap;
        }
    }
    if (server->logs_len + rec <= server->logs_cap) {
        char *p = server->logs + server->logs_len;
        memcpy(p, kind, k);
        memcpy(p + k, tag, t);
        memcpy(p + k + t, length, l);
        memcpy(p + k + t + l, message, len);
        server->logs_len += rec;
        pthread_cond_signal(&server->log_cond);
    }
    pthread_mutex_unlock(&server->log_mu);
}

/* The instant `ms` milliseconds from now, on the clock of this file's default condition variables. */
static struct timespec realtime_after_ms(int ms)
{
    return fp_clock_after(CLOCK_REALTIME, ms / 1000.0);
}

size_t fp_http_server_take_logs(fp_http_server *server, char *buf, size_t len, int timeout_ms)
{
    pthread_mutex_lock(&server->log_mu);
    if (!server->logs_len && !server->logs_woken && timeout_ms > 0) {
        struct timespec ts = realtime_after_ms(timeout_ms);
        pthread_cond_timedwait(&server->log_cond, &server->log_mu, &ts);
    }
    server->logs_woken = 0;
    /* Whole records only. */
    size_t taken = 0, pos = 0;
    while (pos < server->logs_len) {
        const char *p = server->logs + pos;
        size_t rec = strlen(p) + 1;
        rec += strlen(p + rec) + 1;
        size_t message_len = strtoul(p + rec, NULL, 10);
        rec += strlen(p + rec) + 1 + message_len;
        if (taken + rec > len) {
            break;
        }
        memcpy(buf + taken, server->logs + pos, rec);
        taken += rec;
        pos += rec;
    }
    memmove(server->logs, server->logs + pos, server->logs_len - pos);
    server->logs_len -= pos;
    pthread_mutex_unlock(&server->log_mu);
    return taken;
}

void fp_http_server_wake_logs(fp_http_server *server)
{
    pthread_mutex_lock(&server->log_mu);
    server->logs_woken = 1;
    pthread_cond_broadcast(&server->log_cond);
    pthread_mutex_unlock(&server->log_mu);
}

/* ---- answering without PHP (loop thread) --------------------------------------------------------- */

static const char *reason_phrase(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 102: return "Processing";
    case 103: return "Early Hints";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 412: return "Precondition Failed";
    case 413: return "Request Entity Too Large";
    case 416: return "Range Not Satisfiable";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    default: return "Unknown";
    }
}

static void send_simple(h2o_req_t *req, int status, const char *message, int close)
{
    char body[128];
    if (!message) {
        snprintf(body, sizeof body, "%d %s\n", status, reason_phrase(status));
        message = body;
    }
    req->res.status = status;
    req->res.reason = reason_phrase(status);
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, "Content-Type",
                   H2O_STRLIT("text/plain; charset=utf-8"));
    if (close) {
        req->http1_is_persistent = 0;
    }
    req->res.content_length = strlen(message);
    h2o_send_inline(req, message, strlen(message));
}

typedef struct static_sender {
    h2o_generator_t super;
    int fd;
    uint64_t offset, remaining;
    char *buf;
} static_sender;

static void static_close(static_sender *s)
{
    if (s->fd >= 0) {
        close(s->fd);
        s->fd = -1;
    }
}

static void static_dispose(void *p)
{
    static_sender *s = p;
    static_close(s);
    free(s->buf);
}

static void static_proceed(h2o_generator_t *generator, h2o_req_t *req)
{
    static_sender *s = (static_sender *)generator;
    size_t want = s->remaining < STATIC_CHUNK ? (size_t)s->remaining : STATIC_CHUNK;
    ssize_t n = pread(s->fd, s->buf, want, (off_t)s->offset);
    if (n <= 0) {
        static_close(s);
        h2o_send(req, NULL, 0, H2O_SEND_STATE_ERROR); /* the file shrank: cut the response */
        return;
    }
    s->offset += (uint64_t)n;
    s->remaining -= (uint64_t)n;
    h2o_iovec_t body = h2o_iovec_init(s->buf, (size_t)n);
    int final = s->remaining == 0;
    if (final) {
        static_close(s);
    }
    h2o_send(req, &body, 1, final ? H2O_SEND_STATE_FINAL : H2O_SEND_STATE_IN_PROGRESS);
}

static void static_stop(h2o_generator_t *generator, h2o_req_t *req)
{
    (void)req;
    static_close((static_sender *)generator);
}

static fp_str header_str(h2o_req_t *req, const h2o_token_t *token)
{
    ssize_t i = h2o_find_header(&req->headers, token, -1);
    fp_str s = {NULL, 0};
    if (i != -1) {
        s.ptr = req->headers.entries[i].value.base;
        s.len = req->headers.entries[i].value.len;
    }
    return s;
}

/* ---- the static file cache (one per loop, loop thread only) ----------------------------------
 * Small files are kept in memory, keyed by their resolved path, and revalidated on every request
 * with one lstat: an entry serves only while the file's identity (device, inode, size, mtime and
 * ctime, which chmod/chown/rename change) is the one it was read with, so a changed, replaced or
 * no longer readable file is read again (or refused) at once.  A hit costs one syscall instead
 * of open, fstat, pread and close, and the headers of a plain GET are computed once. */
#define STATIC_CACHE_FILE_MAX (64 * 1024)
#define STATIC_CACHE_BYTES (4 * 1024 * 1024) /* per loop */

struct static_entry {
    int refs;            /* the cache's, and one per response sending its bytes */
    struct stat id;      /* the identity it was read with */
    char *path;
    int plain_ok;        /* `plain` holds the decision for a GET without validators */
    fp_static_response plain;
    size_t size;
    char data[];         /* then the path */
};

static int same_file(const struct stat *a, const struct stat *b)
{
    return a->st_dev == b->st_dev && a->st_ino == b->st_ino && a->st_size == b->st_size &&
           a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec &&
           a->st_ctim.tv_sec == b->st_ctim.tv_sec && a->st_ctim.tv_nsec == b->st_ctim.tv_nsec;
}

static void entry_unref(http_loop *lp, static_entry *e)
{
    if (--e->refs == 0) {
        lp->cache_bytes -= e->size;
        free(e);
    }
}

static void static_cache_clear(http_loop *lp)
{
    for (size_t i = 0; i < STATIC_CACHE_SLOTS; i++) {
        if (lp->cache[i]) {
            entry_unref(lp, lp->cache[i]);
            lp->cache[i] = NULL;
        }
    }
}

static size_t path_slot(const char *path, size_t len)
{
    uint64_t h = 1469598103934665603u; /* FNV-1a */
    for (size_t i = 0; i < len; i++) {
        h = (h ^ (unsigned char)path[i]) * 1099511628211u;
    }
    return (size_t)(h % STATIC_CACHE_SLOTS);
}

/* The entry for `path`, whose lstat is `st` (a regular file of at most STATIC_CACHE_FILE_MAX
 * bytes), read now if the cache has no valid one; NULL when it cannot be cached (the caller
 * then serves from the file).  The caller gets a reference. */
static static_entry *static_cache_get(http_loop *lp, const char *path, size_t path_len, const struct stat *st)
{
    size_t slot = path_slot(path, path_len);
    static_entry *e = lp->cache[slot];
    if (e && strcmp(e->path, path) == 0 && same_file(&e->id, st)) {
        e->refs++;
        return e;
    }
    size_t size = (size_t)st->st_size;
    size_t old = e ? e->size : 0;
    if (lp->cache_bytes - old + size > STATIC_CACHE_BYTES) {
        return NULL;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOFOLLOW);
    if (fd < 0) {
        return NULL;
    }
    static_entry *fresh = malloc(sizeof(*fresh) + size + path_len + 1);
    struct stat before, after;
    size_t got = 0;
    if (fresh && fstat(fd, &before) == 0 && same_file(&before, st)) {
        while (got < size) {
            ssize_t n = pread(fd, fresh->data + got, size - got, (off_t)got);
            if (n <= 0) {
                break;
            }
            got += (size_t)n;
        }
    }
    /* Only what was read from one unchanged version of the file is kept. */
    int ok = fresh && got == size && fstat(fd, &after) == 0 && same_file(&after, st);
    close(fd);
    if (!ok) {
        free(fresh);
        return NULL;
    }
    fresh->refs = 2; /* the cache's and the caller's */
    fresh->id = *st;
    fresh->size = size;
    fresh->path = fresh->data + size;
    memcpy(fresh->path, path, path_len + 1);
    fp_file_info info = {(uint64_t)size, st->st_mtim.tv_sec, st->st_mtim.tv_nsec};
    fp_static_request plain = {.method = {"GET", 3}};
    fresh->plain_ok = fp_static_decide(&info, path, path_len, &plain, &fresh->plain) == 0 &&
                      fresh->plain.status == 200;
    lp->cache_bytes += size;
    if (e) {
        entry_unref(lp, e);
    }
    lp->cache[slot] = fresh;
    return fresh;
}

/* A response sending an entry's bytes holds a reference until h2o disposes the request. */
typedef struct entry_hold {
    http_loop *loop;
    static_entry *entry;
} entry_hold;

static void entry_hold_dispose(void *p)
{
    entry_hold *hold = p;
    entry_unref(hold->loop, hold->entry);
}

static void add_pool_header(h2o_req_t *req, const h2o_token_t *token, const char *name, const char *value)
{
    h2o_add_header(&req->pool, &req->res.headers, token, name, h2o_strdup(&req->pool, value, SIZE_MAX).base,
                   strlen(value));
}

/* The router's decision for `path` (fp_static_decide; `pre`: already made, for a plain GET),
 * with its headers.  Returns 1 when the body (d->offset, d->length) is to be sent, 0 when the
 * response is complete (refusals, 304, 416, HEAD, an empty file). */
static int static_respond(h2o_req_t *req, const char *path, size_t path_len, const fp_file_info *info,
                          const fp_static_response *pre, fp_static_response *d)
{
    if (pre) {
        *d = *pre;
    } else {
        fp_static_request sreq = {
            .method = {req->method.base, req->method.len},
            .if_match = header_str(req, H2O_TOKEN_IF_MATCH),
            .if_unmodified_since = header_str(req, H2O_TOKEN_IF_UNMODIFIED_SINCE),
            .if_none_match = header_str(req, H2O_TOKEN_IF_NONE_MATCH),
            .if_modified_since = header_str(req, H2O_TOKEN_IF_MODIFIED_SINCE),
            .range = header_str(req, H2O_TOKEN_RANGE),
            .if_range = header_str(req, H2O_TOKEN_IF_RANGE),
        };
        if (fp_static_decide(info, path, path_len, &sreq, d) != 0) {
            send_simple(req, 500, NULL, 0);
            return 0;
        }
    }
    if (d->status == 405 || d->status == 412) {
        if (d->status == 405) {
            h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_ALLOW, "Allow", H2O_STRLIT("GET, HEAD"));
        }
        send_simple(req, d->status, NULL, 0);
        return 0;
    }
    if (d->last_modified[0]) {
        add_pool_header(req, H2O_TOKEN_LAST_MODIFIED, "Last-Modified", d->last_modified);
    }
    add_pool_header(req, H2O_TOKEN_ETAG, "ETag", d->etag);
    req->res.status = d->status;
    req->res.reason = reason_phrase(d->status);
    static h2o_generator_t nothing = {NULL, NULL};
    if (d->status == 304 || d->status == 416) {
        if (d->status == 416) {
            char *range = h2o_mem_alloc_pool(&req->pool, 64);
            int n = snprintf(range, 64, "bytes */%llu", (unsigned long long)d->size);
            h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_RANGE, "Content-Range", range, (size_t)n);
            req->res.content_length = 0;
        }
        h2o_start_response(req, &nothing);
        h2o_send(req, NULL, 0, H2O_SEND_STATE_FINAL);
        return 0;
    }
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, "Content-Type", d->content_type,
                   strlen(d->content_type));
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_ACCEPT_RANGES, "Accept-Ranges", H2O_STRLIT("bytes"));
    if (d->status == 206) {
        char *range = h2o_mem_alloc_pool(&req->pool, 96);
        int n = snprintf(range, 96, "bytes %llu-%llu/%llu", (unsigned long long)d->offset,
                         (unsigned long long)(d->offset + d->length - 1), (unsigned long long)d->size);
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_RANGE, "Content-Range", range, (size_t)n);
    }
    req->res.content_length = d->length;
    if (!d->send_body) {
        h2o_start_response(req, &nothing);
        h2o_send(req, NULL, 0, H2O_SEND_STATE_FINAL);
        return 0;
    }
    return 1;
}

static int has_validators(h2o_req_t *req)
{
    static const h2o_token_t *const tokens[] = {H2O_TOKEN_IF_MATCH, H2O_TOKEN_IF_UNMODIFIED_SINCE,
                                                H2O_TOKEN_IF_NONE_MATCH, H2O_TOKEN_IF_MODIFIED_SINCE,
                                                H2O_TOKEN_RANGE, H2O_TOKEN_IF_RANGE};
    for (size_t i = 0; i < sizeof tokens / sizeof tokens[0]; i++) {
        if (h2o_find_header(&req->headers, tokens[i], -1) != -1) {
            return 1;
        }
    }
    return 0;
}

/* The router's decisions (fp_static_decide), h2o for the bytes: from the loop's cache for small
 * files, else read from the file as h2o asks for more. */
static void serve_static(h2o_req_t *req, const char *path, size_t path_len)
{
    int is_get = h2o_memis(req->method.base, req->method.len, H2O_STRLIT("GET"));
    int is_head = h2o_memis(req->method.base, req->method.len, H2O_STRLIT("HEAD"));
    if (!is_get && !is_head) {
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_ALLOW, "Allow", H2O_STRLIT("GET, HEAD"));
        send_simple(req, 405, NULL, 0);
        return;
    }
    fp_static_response d;
    http_loop *lp = H2O_STRUCT_FROM_MEMBER(site_ctx, ctx, req->conn->ctx)->loop;
    struct stat lst;
    /* lstat: the router resolved the path; a link that appeared since is served from the file,
     * which O_NOFOLLOW then refuses. */
    if (fstatat(AT_FDCWD, path, &lst, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(lst.st_mode) &&
        lst.st_size <= STATIC_CACHE_FILE_MAX) {
        static_entry *e = static_cache_get(lp, path, path_len, &lst);
        if (e) {
            fp_file_info info = {(uint64_t)e->size, e->id.st_mtim.tv_sec, e->id.st_mtim.tv_nsec};
            const fp_static_response *pre = is_get && e->plain_ok && !has_validators(req) ? &e->plain : NULL;
            if (!static_respond(req, path, path_len, &info, pre, &d)) {
                entry_unref(lp, e);
                return;
            }
            entry_hold *hold = h2o_mem_alloc_shared(&req->pool, sizeof(*hold), entry_hold_dispose);
            hold->loop = lp;
            hold->entry = e;
            static h2o_generator_t whole = {NULL, NULL};
            h2o_start_response(req, &whole);
            h2o_iovec_t body = h2o_iovec_init(e->data + d.offset, (size_t)d.length);
            h2o_send(req, &body, 1, H2O_SEND_STATE_FINAL);
            return;
        }
    }
    /* O_NONBLOCK: a FIFO must not block the loop; O_NOFOLLOW: the router resolved the path. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOFOLLOW);
    if (fd < 0) {
        send_simple(req, errno == ENOENT || errno == ENOTDIR ? 404 : 403, NULL, 0);
        return;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        send_simple(req, 404, NULL, 0);
        return;
    }
    fp_file_info info = {(uint64_t)st.st_size, st.st_mtim.tv_sec, st.st_mtim.tv_nsec};
    if (!static_respond(req, path, path_len, &info, NULL, &d)) {
        close(fd);
        return;
    }
    static_sender *s = h2o_mem_alloc_shared(&req->pool, sizeof(*s), static_dispose);
    s->super.proceed = static_proceed;
    s->super.stop = static_stop;
    s->fd = fd;
    s->offset = d.offset;
    s->remaining = d.length;
    s->buf = malloc(STATIC_CHUNK);
    if (!s->buf) {
        static_close(s);
        send_simple(req, 500, NULL, 0);
        return;
    }
    h2o_start_response(req, &s->super);
    static_proceed(&s->super, req);
}

/* ---- building the request for PHP (loop thread) ---------------------------------------------------- */

typedef struct strbuf {
    char *p;
    size_t len, cap;
    int failed;
} strbuf;

static void sb_add(strbuf *b, const char *s, size_t n)
{
    if (b->failed) {
        return;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 2048;
        while (cap < b->len + n + 1) {
            cap *= 2;
        }
        char *grown = realloc(b->p, cap);
        if (!grown) {
            b->failed = 1;
            return;
        }
        b->p = grown;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

/* Append NAME\0VALUE\0; values with a NUL byte are cut there (PHP's strings are C strings here). */
static void sb_pair(strbuf *b, size_t *pairs, const char *name, const char *value, size_t value_len)
{
    const char *nul = memchr(value, '\0', value_len);
    if (nul) {
        value_len = (size_t)(nul - value);
    }
    sb_add(b, name, strlen(name) + 1);
    sb_add(b, value, value_len);
    sb_add(b, "", 1);
    (*pairs)++;
}

static void sb_pairs(strbuf *b, size_t *pairs, const char *block, size_t n)
{
    if (!block) {
        return;
    }
    const char *p = block;
    for (size_t i = 0; i < n; i++) {
        size_t name_len = strlen(p);
        const char *value = p + name_len + 1;
        size_t value_len = strlen(value);
        sb_add(b, p, name_len + 1);
        sb_add(b, value, value_len + 1);
        (*pairs)++;
        p = value + value_len + 1;
    }
}

static void split_host(const char *host, size_t len, fp_str *name, fp_str *port)
{
    name->ptr = host;
    name->len = len;
    port->ptr = "";
    port->len = 0;
    if (len && host[0] == '[') {
        const char *end = memchr(host, ']', len);
        if (end) {
            name->ptr = host + 1;
            name->len = (size_t)(end - host - 1);
            const char *rest = end + 1;
            size_t rest_len = len - (size_t)(rest - host);
            if (rest_len && rest[0] == ':') {
                port->ptr = rest + 1;
                port->len = rest_len - 1;
            }
        }
        return;
    }
    const char *colon = memchr(host, ':', len);
    if (colon && !memchr(colon + 1, ':', len - (size_t)(colon + 1 - host))) {
        name->len = (size_t)(colon - host);
        port->ptr = colon + 1;
        port->len = len - name->len - 1;
    }
}

static void sockaddr_text(struct sockaddr *sa, char *addr, size_t addr_len, char *port, size_t port_len)
{
    addr[0] = port[0] = '\0';
    if (getnameinfo(sa, sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in),
                    addr, (socklen_t)addr_len, port, (socklen_t)port_len, NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
        addr[0] = port[0] = '\0';
    }
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Percent-decode once (an invalid escape stays as it is, as urllib's unquote does). */
static size_t percent_decode(const char *in, size_t len, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        int hi, lo;
        if (in[i] == '%' && i + 2 < len + 0 && (hi = hexval((unsigned char)in[i + 1])) >= 0 &&
            (lo = hexval((unsigned char)in[i + 2])) >= 0) {
            out[o++] = (char)(hi * 16 + lo);
            i += 2;
        } else {
            out[o++] = in[i];
        }
    }
    return o;
}

typedef struct php_target {
    const char *script_filename;
    fp_str script_name, path_info;
    int worker;
} php_target;

/* A header value without the optional whitespace around it (RFC 9112 5.1): h2o's parser drops
 * only the leading one. */
static fp_str trim_ows(const char *p, size_t len)
{
    while (len && (*p == ' ' || *p == '\t')) {
        p++;
        len--;
    }
    while (len && (p[len - 1] == ' ' || p[len - 1] == '\t')) {
        len--;
    }
    return (fp_str){p, len};
}

/* Build the exchange for `req` to run `target`.  NULL when out of memory. */
static fp_http_exchange *make_exchange(site *st, h2o_req_t *req, const php_target *target)
{
    fp_http_exchange *ex = calloc(1, sizeof(*ex));
    if (!ex) {
        return NULL;
    }
    strbuf b = {0};
    size_t pairs = 0;
    sb_pairs(&b, &pairs, st->conf.env_before, st->conf.env_before_pairs);

    /* HTTP_* from the request headers (h2o keeps their names lower-case): a repeated header is
     * one variable, its values joined by ", " as waitress and Go's net/http do, except Cookie,
     * joined by "; " (RFC 9113 8.2.3) so that PHP parses every cookie.  Content-Type and
     * Content-Length are CGI's own variables; Proxy is dropped (httpoxy).  h2o keeps Host out of
     * req->headers (req->input.authority; a request without Host gets the hostconf's name
     * there, which is no header).  Expect and Upgrade stay out: h2o takes them out (it answers
     * Expect, Go's net/http, hence FrankenPHP, drops it too; an Upgrade offer is ignored). */
    fp_str content_type = {NULL, 0}, host = {NULL, 0};
    int default_authority = req->hostconf && req->input.authority.base == req->hostconf->authority.hostport.base;
    if (req->input.authority.len && !default_authority) {
        host = trim_ows(req->input.authority.base, req->input.authority.len);
        sb_pair(&b, &pairs, "HTTP_HOST", host.ptr, host.len);
    }
    size_t off_cookie = SIZE_MAX, off_auth = SIZE_MAX;
    for (size_t i = 0; i < req->headers.size; i++) {
        h2o_header_t *h = req->headers.entries + i;
        const char *name = h->name->base;
        size_t name_len = h->name->len;
        if (h2o_memis(name, name_len, H2O_STRLIT("content-type"))) {
            content_type = trim_ows(h->value.base, h->value.len);
            continue;
        }
        /* A name with "_" would pose as its "-" twin (X_Forwarded_For as X-Forwarded-For):
         * dropped, as waitress, nginx and Apache do. */
        if (h2o_memis(name, name_len, H2O_STRLIT("content-length")) ||
            h2o_memis(name, name_len, H2O_STRLIT("proxy")) || memchr(name, '_', name_len) || name_len + 6 > 256) {
            continue;
        }
        int seen = 0;
        for (size_t j = 0; j < i && !seen; j++) {
            seen = h2o_memis(req->headers.entries[j].name->base, req->headers.entries[j].name->len, name, name_len);
        }
        if (seen) {
            continue; /* joined into the first one's variable */
        }
        char key[256];
        memcpy(key, "HTTP_", 5);
        for (size_t j = 0; j < name_len; j++) {
            char c = name[j];
            key[5 + j] = c == '-' ? '_' : (char)(c >= 'a' && c <= 'z' ? c - 32 : c);
        }
        key[5 + name_len] = '\0';
        sb_add(&b, key, 5 + name_len + 1);
        int is_cookie = h2o_memis(name, name_len, H2O_STRLIT("cookie"));
        if (is_cookie) {
            off_cookie = b.len;
        } else if (h2o_memis(name, name_len, H2O_STRLIT("authorization"))) {
            off_auth = b.len;
        }
        const char *separator = is_cookie ? "; " : ", ";
        for (size_t j = i; j < req->headers.size; j++) {
            h2o_header_t *same = req->headers.entries + j;
            if (j == i || h2o_memis(same->name->base, same->name->len, name, name_len)) {
                fp_str value = trim_ows(same->value.base, same->value.len);
                const char *nul = memchr(value.ptr, '\0', value.len); /* cut, as sb_pair */
                if (j != i) {
                    sb_add(&b, separator, 2);
                }
                sb_add(&b, value.ptr, nul ? (size_t)(nul - value.ptr) : value.len);
            }
        }
        sb_add(&b, "", 1);
        pairs++;
    }
    int tls = st->ssl_ctx != NULL;

    struct sockaddr_storage ss;
    char peer[64], peer_port[16], local[64], local_port[16];
    socklen_t sl = req->conn->callbacks->get_peername(req->conn, (struct sockaddr *)&ss);
    if (sl) {
        sockaddr_text((struct sockaddr *)&ss, peer, sizeof peer, peer_port, sizeof peer_port);
    } else {
        peer[0] = peer_port[0] = '\0';
    }
    sl = req->conn->callbacks->get_sockname(req->conn, (struct sockaddr *)&ss);
    if (sl) {
        sockaddr_text((struct sockaddr *)&ss, local, sizeof local, local_port, sizeof local_port);
    } else {
        local[0] = local_port[0] = '\0';
    }
    fp_str server_name = {local, strlen(local)}, server_port = {local_port, strlen(local_port)};
    if (host.ptr && host.len) {
        split_host(host.ptr, host.len, &server_name, &server_port);
        if (!server_port.len) {
            server_port = tls ? (fp_str){"443", 3} : (fp_str){"80", 2};
        }
    }
    const char *target_uri = req->path.base; /* origin-form: see origin_form() */
    size_t target_len = req->path.len;
    const char *qmark = memchr(target_uri, '?', target_len);
    size_t q = qmark ? (size_t)(qmark - target_uri) : SIZE_MAX;
    const char *query = q != SIZE_MAX ? target_uri + q + 1 : "";
    size_t query_len = q != SIZE_MAX ? target_len - q - 1 : 0;
    char method[32];
    size_t method_len = req->method.len < sizeof method - 1 ? req->method.len : sizeof method - 1;
    for (size_t i = 0; i < method_len; i++) {
        char c = req->method.base[i];
        method[i] = c >= 'a' && c <= 'z' ? (char)(c - 32) : c;
    }
    method[method_len] = '\0';

    sb_pair(&b, &pairs, "GATEWAY_INTERFACE", "CGI/1.1", 7);
    sb_pair(&b, &pairs, "SERVER_SOFTWARE", "frankenpy", 9);
    const char *protocol = req->version >= 0x200 ? "HTTP/2.0" : req->version >= 0x101 ? "HTTP/1.1" : "HTTP/1.0";
    sb_pair(&b, &pairs, "SERVER_PROTOCOL", protocol, 8);
    sb_pair(&b, &pairs, "SERVER_NAME", server_name.ptr, server_name.len);
    sb_pair(&b, &pairs, "SERVER_PORT", server_port.ptr, server_port.len);
    sb_pair(&b, &pairs, "REQUEST_METHOD", method, method_len);
    sb_pair(&b, &pairs, "REQUEST_URI", target_uri, target_len);
    sb_pair(&b, &pairs, "REQUEST_SCHEME", tls ? "https" : "http", tls ? 5 : 4);
    if (tls) {
        sb_pair(&b, &pairs, "HTTPS", "on", 2);
    }
    sb_pair(&b, &pairs, "QUERY_STRING", query, query_len);
    sb_pair(&b, &pairs, "DOCUMENT_ROOT", st->conf.router->root, st->conf.router->root_len);
    sb_pair(&b, &pairs, "DOCUMENT_URI", target->script_name.ptr, target->script_name.len);
    sb_pair(&b, &pairs, "SCRIPT_NAME", target->script_name.ptr, target->script_name.len);
    sb_pair(&b, &pairs, "SCRIPT_FILENAME", target->script_filename, strlen(target->script_filename));
    sb_pair(&b, &pairs, "PATH_INFO", target->path_info.ptr ? target->path_info.ptr : "", target->path_info.len);
    sb_add(&b, "PHP_SELF", 9);
    sb_add(&b, target->script_name.ptr, target->script_name.len);
    sb_add(&b, target->path_info.ptr ? target->path_info.ptr : "", target->path_info.len);
    sb_add(&b, "", 1);
    pairs++;
    sb_pair(&b, &pairs, "REMOTE_ADDR", peer, strlen(peer));
    sb_pair(&b, &pairs, "REMOTE_HOST", peer, strlen(peer));
    sb_pair(&b, &pairs, "REMOTE_PORT", peer_port, strlen(peer_port));
    sb_pair(&b, &pairs, "CONTENT_TYPE", content_type.ptr ? content_type.ptr : "", content_type.len);
    char length[24] = "";
    if (req->entity.base) {
        snprintf(length, sizeof length, "%zu", req->entity.len);
    }
    sb_pair(&b, &pairs, "CONTENT_LENGTH", length, strlen(length));
    sb_pairs(&b, &pairs, st->conf.env_after, st->conf.env_after_pairs);
    if (target->worker) {
        sb_pair(&b, &pairs, "FRANKENPHP_WORKER", "1", 1); /* as FrankenPHP marks worker requests */
    }
    /* The strings the request points to, after the pairs (offsets: the block may move). */
    size_t off_method = b.len; sb_add(&b, method, method_len + 1);
    size_t off_uri = b.len; sb_add(&b, target_uri, target_len); sb_add(&b, "", 1);
    size_t off_query = b.len; sb_add(&b, query, query_len); sb_add(&b, "", 1);
    size_t off_script = b.len; sb_add(&b, target->script_filename, strlen(target->script_filename) + 1);
    size_t off_ctype = b.len; sb_add(&b, content_type.ptr ? content_type.ptr : "", content_type.len); sb_add(&b, "", 1);
    size_t off_body = b.len;
    if (req->entity.len) {
        sb_add(&b, req->entity.base, req->entity.len);
    }
    if (b.failed) {
        free(b.p);
        free(ex);
        return NULL;
    }
    ex->data = b.p;
    fp_request *r = &ex->req;
    r->env = b.p;
    r->env_pairs = pairs;
    r->script_path = b.p + off_script;
    r->output_mode = FP_OUTPUT_FLUSH;
    r->handle = ex;
    r->host = &exchange_host;
    r->worker_fd = -1;
    r->http = 1;
    r->request_method = b.p + off_method;
    r->request_uri = b.p + off_uri;
    r->query_string = b.p + off_query;
    r->content_type = content_type.ptr ? b.p + off_ctype : NULL;
    r->cookie_data = off_cookie != SIZE_MAX ? b.p + off_cookie : NULL; /* the joined HTTP_COOKIE */
    r->authorization = off_auth != SIZE_MAX ? b.p + off_auth : NULL;
    r->content_length = (int64_t)req->entity.len;
    ex->body = b.p + off_body;
    ex->body_len = req->entity.len;
    ex->head = h2o_memis(req->method.base, req->method.len, H2O_STRLIT("HEAD"));
    return ex;
}

/* Queue `ex` (already linked to `req`) or answer 503 when the queue is closed. */
static void hand_off(site *st, h2o_req_t *req, fp_http_exchange *ex, int queue)
{
    fp_http_server *server = st->server;
    ex->loop = H2O_STRUCT_FROM_MEMBER(site_ctx, ctx, req->conn->ctx)->loop;
    pthread_mutex_init(&ex->mu, NULL);
    pthread_cond_init(&ex->cond, NULL);
    ex->server = server;
    atomic_fetch_add(&ex->loop->exchanges, 1);
    ex->site = st;
    ex->h2o = req;
    ex->refs = 2; /* the h2o request, the PHP side */
    ex->generator.proceed = on_generator_proceed;
    ex->generator.stop = on_generator_stop;
    fp_http_exchange **slot = h2o_mem_alloc_shared(&req->pool, sizeof(*slot), on_h2o_dispose);
    *slot = ex;
    pthread_mutex_lock(&server->mu);
    server->in_flight++;
    pthread_mutex_unlock(&server->mu);
    if (queue == 0 && server->per_thread) {
        /* Run-to-completion: the PHP thread that runs this loop runs it, once the loop returns
         * (fp_http_loop_next). */
        http_loop *lp = ex->loop;
        ex->inline_run = 1;
        ex->link.enqueued_ns = fp_monotonic_ns();
        ex->link.next = NULL;
        if (lp->local_last) {
            lp->local_last->link.next = &ex->link;
        } else {
            lp->local_first = ex;
        }
        lp->local_last = ex;
        atomic_fetch_add(&server->php_requests, 1);
        return;
    }
    if (fp_handoff_put(server->queues[queue], &ex->link) != 0) {
        /* Stopping: answer here; the PHP side never sees it. */
        atomic_fetch_add(&server->rejected_503, 1);
        fp_http_exchange_respond(ex, 503, "Content-Type: text/plain; charset=utf-8\n",
                                 "503 Service Unavailable\n", 24);
        return;
    }
    atomic_fetch_add(&server->php_requests, 1);
}

static int name_is(const struct phr_header *h, const char *name)
{
    size_t n = strlen(name);
    return h->name_len == n && strncasecmp(h->name, name, n) == 0;
}

/* What h2o lets through and we refuse (400, connection closed; RFC 9112 6.1 and 6.3): a body
 * framed both by Content-Length and Transfer-Encoding, or by several Content-Length headers
 * (request smuggling: h2o takes one and ignores the others), and a head larger than
 * FP_HTTP_MAX_HEAD (h2o alone accepts about 400 KiB).  h2o keeps neither framing header in
 * req->headers, but the head is still at the start of the connection's input buffer until the
 * response is sent (h2o 2.2 consumes it then), so it is parsed again here, with h2o's parser.
 * Returns NULL, or the reason for the refusal. */
static const char *check_request_head(h2o_req_t *req)
{
    if (req->version >= 0x200) {
        /* HTTP/2 frames its bodies itself (no Content-Length/Transfer-Encoding smuggling), and h2o
         * refuses a stream whose decoded head passes 64 KiB (REFUSED_STREAM).  The connection's
         * input buffer holds frames of any stream, not this request's head. */
        return NULL;
    }
    h2o_socket_t *sock = req->conn->callbacks->get_socket ? req->conn->callbacks->get_socket(req->conn) : NULL;
    if (!sock || !sock->input) {
        return NULL;
    }
    const char *method, *path;
    size_t method_len, path_len, num_headers = H2O_MAX_HEADERS;
    int minor;
    struct phr_header headers[H2O_MAX_HEADERS];
    int head_len = phr_parse_request(sock->input->bytes, sock->input->size, &method, &method_len, &path,
                                     &path_len, &minor, headers, &num_headers, 0);
    if (head_len < 0) {
        return NULL; /* not at the start of the buffer: nothing to re-check */
    }
    if ((size_t)head_len > FP_HTTP_MAX_HEAD) {
        return "request head too large";
    }
    int lengths = 0, encodings = 0, hosts = 0;
    for (size_t i = 0; i < num_headers; i++) {
        lengths += name_is(&headers[i], "content-length");
        encodings += name_is(&headers[i], "transfer-encoding");
        hosts += name_is(&headers[i], "host");
    }
    if (minor >= 1 && hosts != 1) {
        return "an HTTP/1.1 request needs exactly one Host header"; /* RFC 9112 3.2; h2o keeps the last */
    }
    if (lengths && encodings) {
        return "both Content-Length and Transfer-Encoding";
    }
    if (lengths > 1 || encodings > 1) {
        return "repeated Content-Length or Transfer-Encoding";
    }
    return NULL;
}

/* The request target as origin-form ("/path?query") in req->path and req->query_at, which h2o
 * 2.2 fills with whatever the request line holds.  An absolute-form target ("http://host/p?q",
 * RFC 9112 3.2.2: what clients send to a proxy) would route as the path "http://host/p": it
 * becomes "/p?q", as nginx makes it (REQUEST_URI "/p?q"; HTTP_HOST stays the Host header, as
 * nginx passes it to PHP-FPM and waitress to a WSGI app).  Returns -1 for the forms only a proxy
 * or the server as a whole answers, authority-form ("host:443", CONNECT's) and asterisk-form
 * ("*", OPTIONS about the server): 400, as nginx answers them. */
static int origin_form(h2o_req_t *req)
{
    const char *p = req->path.base, *end = p + req->path.len;
    if (p < end && *p == '/') {
        return 0;
    }
    /* scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ), then "//" authority (RFC 3986 3) */
    const char *s = p;
    while (s < end) {
        char c = *s;
        int alpha = (c | 0x20) >= 'a' && (c | 0x20) <= 'z';
        if (!alpha && (s == p || !((c >= '0' && c <= '9') || c == '+' || c == '-' || c == '.'))) {
            break;
        }
        s++;
    }
    if (s == p || end - s < 3 || memcmp(s, "://", 3) != 0) {
        return -1;
    }
    s += 3;
    while (s < end && *s != '/' && *s != '?') {
        s++;
    }
    size_t n = (size_t)(end - s);
    if (n && *s == '/') {
        req->path = h2o_iovec_init(s, n);
    } else { /* no path ("http://host", "http://host?q"): "/" */
        char *path = h2o_mem_alloc_pool(&req->pool, n + 1);
        path[0] = '/';
        memcpy(path + 1, s, n);
        req->path = h2o_iovec_init(path, n + 1);
    }
    const char *query = memchr(req->path.base, '?', req->path.len);
    req->query_at = query ? (size_t)(query - req->path.base) : SIZE_MAX;
    return 0;
}

/* h2o 2.2 keeps an HTTP/1.1 connection open only when the request has no Connection header or
 * one with "keep-alive": "Connection: Upgrade" (a WebSocket or h2c offer, which this server
 * ignores, RFC 9110 7.8) would close it after the response.  HTTP/1.1 connections persist
 * unless a Connection header says "close" (RFC 9112 9.3); h2o's other reasons to close (shutdown,
 * an error, send_simple(close)) set the flag to 0 after this. */
static void keep_alive_by_default(h2o_req_t *req)
{
    if (req->version != 0x101 || req->http1_is_persistent || req->conn->ctx->shutdown_requested) {
        return;
    }
    for (ssize_t i = -1; (i = h2o_find_header(&req->headers, H2O_TOKEN_CONNECTION, i)) != -1;) {
        h2o_iovec_t v = req->headers.entries[i].value;
        if (h2o_contains_token(v.base, v.len, H2O_STRLIT("close"), ',')) {
            return;
        }
    }
    req->http1_is_persistent = 1;
}

/* The opt-in access log: one line per request when h2o disposes it (answered or abandoned). */
typedef struct access_entry {
    fp_http_server *server;
    h2o_req_t *req;
    uint64_t started_ns;
} access_entry;

static void on_access_dispose(void *p)
{
    access_entry *a = p;
    h2o_req_t *req = a->req;
    char msg[512];
    snprintf(msg, sizeof msg, "%.*s %.*s %d %.1f ms", (int)req->input.method.len, req->input.method.base,
             (int)(req->input.path.len < 400 ? req->input.path.len : 400), req->input.path.base,
             req->res.status, (double)(fp_monotonic_ns() - a->started_ns) / 1e6);
    log_record(a->server, "A", "-", msg, strlen(msg));
}

static int on_req(h2o_handler_t *self, h2o_req_t *req)
{
    site *st = ((site_handler *)self)->site;
    fp_http_server *server = st->server;
    atomic_fetch_add(&server->requests, 1);
    if (server->access_log) {
        access_entry *a = h2o_mem_alloc_shared(&req->pool, sizeof(*a), on_access_dispose);
        *a = (access_entry){server, req, fp_monotonic_ns()};
    }

    keep_alive_by_default(req);
    const char *bad = check_request_head(req);
    if (!bad && origin_form(req) != 0) {
        bad = "request target neither origin-form nor absolute-form";
    }
    if (bad) {
        log_record(server, "S", "-", bad, strlen(bad));
        send_simple(req, 400, NULL, 1);
        return 0;
    }
    if (req->entity.base && req->entity.len > st->conf.max_body_size) {
        send_simple(req, 413, NULL, 1);
        return 0;
    }
    if (atomic_load(&server->draining)) {
        atomic_fetch_add(&server->rejected_503, 1);
        send_simple(req, 503, "server shutting down\n", 0);
        return 0;
    }

    /* The path part of the target, percent-decoded once. */
    const char *raw = req->path.base;
    size_t raw_len = req->query_at != SIZE_MAX ? req->query_at : req->path.len;
    const char *query = req->query_at != SIZE_MAX ? req->path.base + req->query_at + 1 : "";
    size_t query_len = req->query_at != SIZE_MAX ? req->path.len - req->query_at - 1 : 0;
    char *path = h2o_mem_alloc_pool(&req->pool, raw_len + 2);
    size_t path_len = percent_decode(raw, raw_len, path);
    if (path_len == 0) {
        path[path_len++] = '/';
    }
    path[path_len] = '\0';

    if (memchr(path, '\0', path_len)) {
        send_simple(req, 400, NULL, 0);
        return 0;
    }
    if (st->conf.metrics && path_len == 8 && memcmp(path, "/metrics", 8) == 0) {
        php_target t = {"", {"/metrics", 8}, {"", 0}, 0};
        fp_http_exchange *ex = make_exchange(st, req, &t);
        if (!ex) {
            send_simple(req, 500, NULL, 0);
            return 0;
        }
        hand_off(st, req, ex, server->python_queue);
        return 0;
    }

    php_target target = {NULL, {NULL, 0}, {NULL, 0}, 0};
    int queue = 0;
    for (int i = 0; i < st->n_routes; i++) {
        worker_route *w = &st->routes[i];
        if (w->pattern && fnmatch(w->pattern, path, 0) == 0) {
            target.script_filename = w->script_filename;
            target.script_name = (fp_str){path, path_len};
            target.path_info = (fp_str){"", 0};
            target.worker = 1;
            queue = w->queue;
            break;
        }
    }
    if (!target.worker) {
        size_t buf_len = fp_route_buffer_size(st->conf.router, path_len, query_len);
        char *buf = h2o_mem_alloc_pool(&req->pool, buf_len);
        fp_route route;
        if (fp_route_resolve(st->conf.router, path, path_len, query, query_len, buf, buf_len, &route) != 0) {
            send_simple(req, 500, NULL, 0);
            return 0;
        }
        switch (route.kind) {
        case FP_ROUTE_STATIC:
            serve_static(req, route.real_path.ptr, route.real_path.len);
            return 0;
        case FP_ROUTE_REDIRECT: {
            char *body = h2o_mem_alloc_pool(&req->pool, route.location.len + 32);
            snprintf(body, route.location.len + 32, "Redirecting to %s\n", route.location.ptr);
            h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_LOCATION, "Location", route.location.ptr,
                           route.location.len);
            send_simple(req, 308, body, 0);
            return 0;
        }
        case FP_ROUTE_PHP:
            break;
        default:
            send_simple(req, route.status, NULL, 0);
            return 0;
        }
        target.script_filename = route.script_filename.ptr;
        target.script_name = route.script_name;
        target.path_info = route.path_info;
        for (int i = 0; i < st->n_routes; i++) {
            worker_route *w = &st->routes[i];
            if (!w->pattern && (strcmp(w->script_filename, route.real_path.ptr) == 0 ||
                                strcmp(w->script_filename, route.script_filename.ptr) == 0)) {
                target.script_filename = w->script_filename;
                target.worker = 1;
                queue = w->queue;
                break;
            }
        }
    }
    fp_http_exchange *ex = make_exchange(st, req, &target);
    if (!ex) {
        send_simple(req, 500, NULL, 0);
        return 0;
    }
    hand_off(st, req, ex, queue);
    return 0;
}

/* ---- the loop thread ----------------------------------------------------------------------------- */

void fp_http_exchange_reject(fp_http_exchange *ex)
{
    atomic_fetch_add(&ex->server->rejected_503, 1);
    static const char why[] = "503: no free PHP thread within max_wait_time";
    log_record(ex->server, "S", "-", why, sizeof why - 1);
    fp_http_exchange_respond(ex, 503, "Content-Type: text/plain; charset=utf-8\n",
                             "503 Service Unavailable\n", 24);
}

int64_t fp_http_exchange_wait_left(fp_http_exchange *ex)
{
    uint64_t max_wait = ex->site->max_wait_ns, waited = fp_monotonic_ns() - ex->link.enqueued_ns;
    if (!max_wait) {
        return -1;
    }
    return waited >= max_wait ? 0 : (int64_t)(max_wait - waited);
}

static void answer_expired(fp_handoff_item *item)
{
    while (item) {
        fp_handoff_item *next = item->next;
        fp_http_exchange_reject((fp_http_exchange *)item);
        item = next;
    }
}

/* The queues serve the requests of every loop, and their waiters' max_wait_time runs out on a
 * thread of its own, not on a loop: per-thread, every loop is a PHP thread's, and a long request
 * on it would hold back the 503s of every queue.  At stop, the requests still queued get 503 at
 * once (each answer goes out through the loop of its request, which lingers while it has
 * connections). */
static void *expire_main(void *arg)
{
    fp_http_server *server = arg;
    /* A queue serves the requests of every site: the shortest max_wait_time of the sites
     * applies to it (sites usually share one). */
    uint64_t max_wait = 0;
    for (int i = 0; i < server->n_sites; i++) {
        uint64_t w = server->sites[i]->max_wait_ns;
        if (w && (!max_wait || w < max_wait)) {
            max_wait = w;
        }
    }
    pthread_mutex_lock(&server->mu);
    while (!atomic_load(&server->stopping)) {
        struct timespec ts = realtime_after_ms(EXPIRE_INTERVAL_MS);
        pthread_cond_timedwait(&server->expire_cond, &server->mu, &ts);
        pthread_mutex_unlock(&server->mu); /* answering takes the exchanges' locks, then mu */
        if (max_wait && !atomic_load(&server->stopping)) {
            uint64_t now = fp_monotonic_ns();
            for (int q = 0; q < server->n_queues; q++) {
                answer_expired(fp_handoff_expire(server->queues[q], now, max_wait));
            }
        }
        pthread_mutex_lock(&server->mu);
    }
    pthread_mutex_unlock(&server->mu);
    for (int q = 0; q < server->n_queues; q++) {
        answer_expired(fp_handoff_expire(server->queues[q], UINT64_MAX, 0));
    }
    return NULL;
}

static void on_accept(h2o_socket_t *listener, const char *err)
{
    if (err) {
        return;
    }
    site_ctx *sc = listener->data;
    h2o_socket_t *sock = h2o_evloop_socket_accept(listener);
    if (sock) {
        h2o_accept(&sc->accept_ctx, sock);
    }
}

/* Close the listener sockets of loop `index` (on that loop's thread once it runs). */
static void close_listeners(fp_http_server *server, int index)
{
    for (int i = 0; i < server->n_sites; i++) {
        site_ctx *sc = &server->sites[i]->per_loop[index];
        if (sc->listener) {
            h2o_socket_read_stop(sc->listener);
            h2o_socket_close(sc->listener);
            sc->listener = NULL;
        }
    }
}

/* Set up loop `lp` on its own thread: h2o keeps per-thread state (its buffer recycling is
 * thread-local, and a socket takes the allocator of the thread that creates it), so every h2o
 * object a loop uses (the loop, its wake-up pipe, contexts, listener sockets) is created by the
 * loop's thread. */
static void loop_setup(http_loop *lp)
{
    fp_http_server *server = lp->server;
    lp->loop = h2o_evloop_create();
    lp->mqueue = h2o_multithread_create_queue(lp->loop);
    h2o_multithread_register_receiver(lp->mqueue, &lp->receiver, on_messages);
    for (int i = 0; i < server->n_sites; i++) {
        site *st = server->sites[i];
        site_ctx *sc = &st->per_loop[lp->index];
        sc->loop = lp;
        h2o_context_init(&sc->ctx, lp->loop, &st->globalconf);
        sc->accept_ctx.ctx = &sc->ctx;
        sc->accept_ctx.hosts = st->globalconf.hosts;
        sc->accept_ctx.ssl_ctx = st->ssl_ctx;
        sc->listener = h2o_evloop_socket_create(lp->loop, st->fds[lp->index], H2O_SOCKET_FLAG_DONT_READ);
        sc->listener->data = sc;
        h2o_socket_read_start(sc->listener, on_accept);
    }
    pthread_mutex_lock(&server->mu);
    lp->ready = 1;
    pthread_cond_broadcast(&server->ready);
    pthread_mutex_unlock(&server->mu);
}

/* The next exchange queued on per-thread loop `lp`, taken off its list. */
static fp_http_exchange *local_take(http_loop *lp)
{
    fp_http_exchange *ex = lp->local_first;
    if (ex) {
        lp->local_first = (fp_http_exchange *)ex->link.next;
        if (!lp->local_first) {
            lp->local_last = NULL;
        }
        ex->link.next = NULL;
    }
    return ex;
}

static void loop_shutdown(http_loop *lp);
static void loop_release(http_loop *lp);
static void wake_loop_locked(http_loop *lp);

static void *loop_main(void *arg)
{
    http_loop *lp = arg;
    fp_http_server *server = lp->server;
    loop_setup(lp);
    while (!atomic_load(&server->stopping)) {
        h2o_evloop_run(lp->loop, 100);
    }
    loop_shutdown(lp);
    loop_release(lp);
    return NULL;
}

static void loop_shutdown(http_loop *lp)
{
    fp_http_server *server = lp->server;
    /* Stop: close the listeners first (a connection the kernel would accept now would never be
     * served), answer the requests this loop would run itself with 503 (expire_main answers the
     * queued ones), then let h2o close the connections: those
     * waiting for their next request time out at once (req_timeout 0), the others once their
     * response is out, and the PHP side releases their exchanges.  At most STOP_LINGER_NS. */
    close_listeners(server, lp->index);
    for (fp_http_exchange *ex; (ex = local_take(lp));) { /* per-thread: never run */
        atomic_fetch_add(&server->rejected_503, 1);
        fp_http_exchange_respond(ex, 503, "Content-Type: text/plain; charset=utf-8\n",
                                 "503 Service Unavailable\n", 24);
    }
    uint64_t until = fp_monotonic_ns() + STOP_LINGER_NS;
    for (;;) {
        int open = 0;
        for (int i = 0; i < server->n_sites; i++) {
            h2o_context_t *ctx = &server->sites[i]->per_loop[lp->index].ctx;
            ctx->http1.req_timeout.timeout = 0;
            ctx->http2.idle_timeout.timeout = 0; /* an HTTP/2 connection closes once it has no stream */
            open |= !h2o_linklist_is_empty(&ctx->http1._conns) || !h2o_linklist_is_empty(&ctx->http2._conns);
        }
        /* A PHP thread that answered may not have released its exchange yet when the
         * connection closes: wait for that too, or loop_release would keep h2o by a race. */
        open |= atomic_load(&lp->exchanges) != 0;
        if (!open || fp_monotonic_ns() >= until) {
            lp->closed_clean = !open;
            break;
        }
        h2o_evloop_run(lp->loop, 10);
    }
    static_cache_clear(lp); /* responses still sending an entry hold it */
}

/* ---- TLS ---------------------------------------------------------------------------------------- */

/* "OPTION FILE: what" with OpenSSL's reason for the first error (its queue is per thread and
 * cleared here). */
static void tls_error(char *err, size_t err_len, const char *option, const char *file, const char *what)
{
    unsigned long code = ERR_peek_error(); /* the first: the cause */
    const char *reason = code ? ERR_reason_error_string(code) : NULL;
    snprintf(err, err_len, "%s %s: %s%s%s", option, file, what, reason ? ": " : "", reason ? reason : "");
    ERR_clear_error();
}

static int tls_readable(const char *option, const char *file, char *err, size_t err_len)
{
    if (!file || !*file) {
        snprintf(err, err_len, "%s: missing (tls_cert and tls_key go together)", option);
        return -1;
    }
    FILE *f = fopen(file, "r");
    if (!f) {
        snprintf(err, err_len, "%s %s: %s", option, file, strerror(errno));
        return -1;
    }
    fclose(f);
    return 0;
}

/* An encrypted key is refused: without a callback OpenSSL would ask for its passphrase on the
 * terminal. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    (void)buf, (void)size, (void)rwflag, (void)u;
    return 0;
}

/* The server's TLS context for a site: certificate chain and key checked against each other;
 * TLS 1.2 or later (HTTP/2 needs it); ALPN offers h2 then http/1.1. */
static SSL_CTX *tls_context_new(const char *cert, const char *key, char *err, size_t err_len)
{
    if (tls_readable("tls_cert", cert, err, err_len) != 0 || tls_readable("tls_key", key, err, err_len) != 0) {
        return NULL;
    }
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        tls_error(err, err_len, "tls_cert", cert, "cannot create a TLS context");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        tls_error(err, err_len, "tls_cert", cert, "not a PEM certificate chain");
        SSL_CTX_free(ctx);
        return NULL;
    }
    /* The key is read apart from the context, so that an unreadable key and a key of another
     * certificate get different messages. */
    EVP_PKEY *pkey = NULL;
    FILE *f = fopen(key, "r");
    if (f) {
        pkey = PEM_read_PrivateKey(f, NULL, no_passphrase, NULL);
        fclose(f);
    }
    if (!pkey) {
        tls_error(err, err_len, "tls_key", key, "not a PEM private key (or an encrypted one)");
    } else if (SSL_CTX_use_PrivateKey(ctx, pkey) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
        tls_error(err, err_len, "tls_key", key, "not the private key of the certificate in tls_cert");
    } else {
        EVP_PKEY_free(pkey);
        h2o_ssl_register_alpn_protocols(ctx, h2o_alpn_protocols);
        return ctx;
    }
    EVP_PKEY_free(pkey);
    SSL_CTX_free(ctx);
    return NULL;
}

int fp_http_tls_check(const char *cert, const char *key, char *err, size_t err_len)
{
    SSL_CTX *ctx = tls_context_new(cert, key, err, err_len);
    SSL_CTX_free(ctx);
    return ctx ? 0 : -1;
}

/* ---- the public API -------------------------------------------------------------------------------- */

fp_http_server *fp_http_server_new(int loop_threads, int access_log, char *err, size_t err_len)
{
    if (loop_threads < 1 || loop_threads > MAX_LOOPS) {
        snprintf(err, err_len, "loop_threads must be 1..%d, not %d", MAX_LOOPS, loop_threads);
        return NULL;
    }
    fp_http_server *server = calloc(1, sizeof(*server));
    if (!server) {
        snprintf(err, err_len, "out of memory");
        return NULL;
    }
    server->access_log = access_log;
    pthread_mutex_init(&server->mu, NULL);
    pthread_cond_init(&server->idle, NULL);
    pthread_cond_init(&server->ready, NULL);
    pthread_cond_init(&server->expire_cond, NULL);
    pthread_mutex_init(&server->log_mu, NULL);
    pthread_cond_init(&server->log_cond, NULL);
    server->n_loops = loop_threads;
    for (int i = 0; i < loop_threads; i++) {
        server->loops[i].server = server;
        server->loops[i].index = i; /* the rest is set up by the loop's thread (loop_setup) */
    }
    if (fp_http_server_add_queue(server) != 0) { /* classic: 0 */
        snprintf(err, err_len, "out of memory");
        return NULL;
    }
    server->python_queue = fp_http_server_add_queue(server);
    return server;
}

int fp_http_server_per_thread(fp_http_server *server, int threads, char *err, size_t err_len)
{
    if (threads < 1 || threads > MAX_LOOPS) {
        snprintf(err, err_len, "the per-thread I/O model serves with 1..%d PHP threads, not %d", MAX_LOOPS, threads);
        return -1;
    }
    if (server->n_sites) {
        snprintf(err, err_len, "choose the I/O model before adding sites");
        return -1;
    }
    server->per_thread = 1;
    server->n_loops = threads;
    for (int i = 0; i < threads; i++) {
        server->loops[i].server = server;
        server->loops[i].index = i;
    }
    return 0;
}

fp_http_exchange *fp_http_loop_next(fp_http_server *server, int index)
{
    if (!server->per_thread || index < 0 || index >= server->n_loops) {
        return NULL;
    }
    http_loop *lp = &server->loops[index];
    if (!lp->entered) {
        pthread_mutex_lock(&server->mu);
        int refused = atomic_load(&server->stopping) || lp->entered;
        lp->entered = 1;
        pthread_mutex_unlock(&server->mu);
        if (refused) {
            return NULL;
        }
        loop_setup(lp);
    }
    for (;;) {
        if (lp->done) {
            return NULL;
        }
        if (atomic_load(&server->stopping)) {
            loop_shutdown(lp);
            loop_release(lp);
            pthread_mutex_lock(&server->mu);
            lp->done = 1;
            pthread_cond_broadcast(&server->ready);
            pthread_mutex_unlock(&server->mu);
            return NULL;
        }
        fp_http_exchange *ex = local_take(lp);
        if (ex) {
            return ex;
        }
        h2o_evloop_run(lp->loop, 100);
    }
}

int fp_http_server_add_queue(fp_http_server *server)
{
    fp_handoff **grown = realloc(server->queues, sizeof(*grown) * (size_t)(server->n_queues + 1));
    if (!grown) {
        return -1;
    }
    server->queues = grown;
    fp_handoff *q = malloc(sizeof(*q));
    if (!q || fp_handoff_init(q) != 0) {
        free(q);
        return -1;
    }
    server->queues[server->n_queues] = q;
    return server->n_queues++;
}

int fp_http_server_python_queue(fp_http_server *server)
{
    return server->python_queue;
}

/* reuseport: 0 a plain socket; 1 one more of a SO_REUSEPORT group; 2 the first of a group. */
static int listen_on(const char *host, int port, int reuseport, char *err, size_t err_len, int *bound_port)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV}, *res;
    char port_text[16];
    snprintf(port_text, sizeof port_text, "%d", port);
    int rc = getaddrinfo(host, port_text, &hints, &res);
    if (rc != 0) {
        snprintf(err, err_len, "%s: %s", host, gai_strerror(rc));
        return -1;
    }
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), on = 1;
    if (fd < 0) {
        snprintf(err, err_len, "socket: %s", strerror(errno));
        freeaddrinfo(res);
        return -1;
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    if (reuseport == 2 && port != 0) {
        /* The first socket of a SO_REUSEPORT group: a plain bind first, so that a port another
         * SO_REUSEPORT listener of this user holds (a second server) is "in use", not joined. */
        int probe = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int taken = probe < 0 || setsockopt(probe, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) != 0 ||
                    bind(probe, res->ai_addr, res->ai_addrlen) != 0;
        int saved = errno;
        if (probe >= 0) {
            close(probe);
        }
        if (taken) {
            snprintf(err, err_len, "cannot listen on %s:%d: %s", host, port, strerror(saved));
            close(fd);
            freeaddrinfo(res);
            return -1;
        }
    }
    if (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof on) != 0) {
        snprintf(err, err_len, "SO_REUSEPORT: %s", strerror(errno));
        close(fd);
        freeaddrinfo(res);
        return -1;
    }
    if (bind(fd, res->ai_addr, res->ai_addrlen) != 0 || listen(fd, 1024) != 0) {
        snprintf(err, err_len, "cannot listen on %s:%d: %s", host, port, strerror(errno));
        close(fd);
        freeaddrinfo(res);
        return -1;
    }
    freeaddrinfo(res);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    getsockname(fd, (struct sockaddr *)&ss, &sl);
    *bound_port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                 : ((struct sockaddr_in *)&ss)->sin_port);
    return fd;
}

int fp_http_server_add_site(fp_http_server *server, fp_http_site *conf, char *err, size_t err_len)
{
    if (server->n_sites == MAX_SITES) {
        snprintf(err, err_len, "at most %d sites", MAX_SITES);
        return -1;
    }
    site *st = calloc(1, sizeof(*st));
    if (!st) {
        snprintf(err, err_len, "out of memory");
        return -1;
    }
    st->fd = listen_on(conf->host, conf->port, server->per_thread ? 2 : 0, err, err_len, &conf->bound_port);
    if (st->fd < 0) {
        free(st);
        return -1;
    }
    if (conf->tls_cert || conf->tls_key) {
        st->ssl_ctx = tls_context_new(conf->tls_cert, conf->tls_key, err, err_len);
        if (!st->ssl_ctx) {
            close(st->fd);
            free(st);
            return -1;
        }
    }
    st->server = server;
    st->conf = *conf;
    st->max_wait_ns = conf->max_wait_time > 0 ? (uint64_t)(conf->max_wait_time * 1e9) : 0;
    h2o_config_init(&st->globalconf);
    st->globalconf.server_name = h2o_iovec_init(H2O_STRLIT("frankenpy"));
    /* One more byte than allowed: a body just over the limit reaches on_req, which answers
     * 413 (h2o answers larger ones itself, with 413 too, and closes). */
    st->globalconf.max_request_entity_size = conf->max_body_size + 1;
    /* "Upgrade: h2c" is ignored (RFC 9110 7.8; RFC 9113 deprecates it): h2o would answer 101 and
     * speak HTTP/2 to a client that may only have offered it.  HTTP/2 stays on over TLS (ALPN). */
    st->globalconf.http1.upgrade_to_http2 = 0;
    h2o_hostconf_t *host = h2o_config_register_host(&st->globalconf, h2o_iovec_init(H2O_STRLIT("default")), 65535);
    h2o_pathconf_t *path = h2o_config_register_path(host, "/", 0);
    site_handler *handler = (site_handler *)h2o_create_handler(path, sizeof(*handler));
    handler->super.on_req = on_req;
    handler->site = st;
    /* Every loop thread accepts on the same listening socket (a dup of it each): the kernel
     * wakes the loops, the first to accept takes the connection.  Per-thread, each loop has a
     * socket of its own on the same port (SO_REUSEPORT): the kernel spreads the connections
     * over them by a hash, whether their PHP thread is busy or not, as over apache's processes. */
    for (int i = 0; i < server->n_loops; i++) {
        int ignored;
        st->fds[i] = i == 0 ? st->fd
                     : server->per_thread ? listen_on(conf->host, conf->bound_port, 1, err, err_len, &ignored)
                                          : fcntl(st->fd, F_DUPFD_CLOEXEC, 0);
        if (st->fds[i] < 0) {
            if (!server->per_thread) {
                snprintf(err, err_len, "dup: %s", strerror(errno));
            }
            for (int j = 0; j < i; j++) {
                close(st->fds[j]);
            }
            SSL_CTX_free(st->ssl_ctx);
            free(st);
            return -1;
        }
    }
    server->sites[server->n_sites] = st;
    return server->n_sites++;
}

int fp_http_server_add_worker_route(fp_http_server *server, int site_index, const char *pattern,
                                    const char *script_filename, int queue)
{
    if (site_index < 0 || site_index >= server->n_sites || queue < 0 || queue >= server->n_queues) {
        return -1;
    }
    site *st = server->sites[site_index];
    if (st->n_routes == MAX_WORKER_ROUTES) {
        return -1;
    }
    st->routes[st->n_routes++] = (worker_route){pattern, script_filename, queue};
    return 0;
}

int fp_http_server_start(fp_http_server *server, char *err, size_t err_len)
{
    int rc = pthread_create(&server->expire_thread, NULL, expire_main, server);
    if (rc != 0) {
        snprintf(err, err_len, "pthread_create: %s", strerror(rc));
        return -1;
    }
    server->expiring = 1; /* fp_http_server_stop() ends it, started or not */
    if (server->per_thread) {
        server->started = 1; /* the PHP threads run the loops (fp_http_loop_next) */
        return 0;
    }
    for (int l = 0; l < server->n_loops; l++) {
        rc = pthread_create(&server->loops[l].thread, NULL, loop_main, &server->loops[l]);
        if (rc != 0) {
            snprintf(err, err_len, "pthread_create: %s", strerror(rc));
            server->n_loops = l; /* the ones started stop with the server */
            if (l == 0) {
                return -1;
            }
            break;
        }
    }
    /* Requests may be handed to PHP threads (and their output posted to a loop) only once
     * every loop exists. */
    pthread_mutex_lock(&server->mu);
    for (int l = 0; l < server->n_loops; l++) {
        while (!server->loops[l].ready) {
            pthread_cond_wait(&server->ready, &server->mu);
        }
    }
    pthread_mutex_unlock(&server->mu);
    server->started = 1;
    return 0;
}

void fp_http_server_drain(fp_http_server *server)
{
    atomic_store(&server->draining, 1);
}

uint64_t fp_http_server_wait_idle(fp_http_server *server, int timeout_ms)
{
    struct timespec ts = realtime_after_ms(timeout_ms);
    pthread_mutex_lock(&server->mu);
    while (server->in_flight > 0) {
        if (pthread_cond_timedwait(&server->idle, &server->mu, &ts) == ETIMEDOUT) {
            break;
        }
    }
    uint64_t left = server->in_flight;
    pthread_mutex_unlock(&server->mu);
    return left;
}

/* Stop expire_main (`stopping` is set): it answers the requests still queued as it ends. */
static void expire_join(fp_http_server *server)
{
    if (!server->expiring) {
        return;
    }
    pthread_mutex_lock(&server->mu);
    pthread_cond_broadcast(&server->expire_cond);
    pthread_mutex_unlock(&server->mu);
    pthread_join(server->expire_thread, NULL);
    server->expiring = 0;
}

/* Per-thread: the loops end on their PHP threads, once the request each runs (if any) is over;
 * wait for them STOP_LINGER_NS at most beyond their own linger (fp_http_server_free waits for
 * the rest).  Loops no PHP thread took are closed here. */
static void stop_per_thread(fp_http_server *server)
{
    pthread_mutex_lock(&server->mu);
    atomic_store(&server->draining, 1);
    atomic_store(&server->stopping, 1);
    for (int l = 0; l < server->n_loops; l++) {
        http_loop *lp = &server->loops[l];
        if (lp->ready) {
            wake_loop_locked(lp);
        } else if (!lp->entered) {
            lp->entered = lp->done = 1;
            for (int i = 0; i < server->n_sites; i++) {
                close(server->sites[i]->fds[l]); /* never handed to h2o */
            }
        }
    }
    pthread_mutex_unlock(&server->mu);
    expire_join(server);
    pthread_mutex_lock(&server->mu);
    struct timespec until = realtime_after_ms((int)(2 * STOP_LINGER_NS / 1000000));
    for (int l = 0; l < server->n_loops; l++) {
        while (!server->loops[l].done &&
               pthread_cond_timedwait(&server->ready, &server->mu, &until) != ETIMEDOUT) {
        }
    }
    pthread_mutex_unlock(&server->mu);
}

void fp_http_server_stop(fp_http_server *server)
{
    if (server->per_thread) {
        stop_per_thread(server);
    } else if (server->started) {
        atomic_store(&server->draining, 1);
        atomic_store(&server->stopping, 1);
        pthread_mutex_lock(&server->mu); /* a loop that saw `stopping` may be freeing itself */
        for (int l = 0; l < server->n_loops; l++) {
            wake_loop_locked(&server->loops[l]);
        }
        pthread_mutex_unlock(&server->mu);
        expire_join(server);
        for (int l = 0; l < server->n_loops; l++) {
            pthread_join(server->loops[l].thread, NULL);
        }
        server->started = 0;
    } else {
        atomic_store(&server->stopping, 1);
        expire_join(server); /* a start that failed after it began */
        for (int i = 0; i < server->n_sites; i++) {
            for (int l = 0; l < server->n_loops; l++) {
                close(server->sites[i]->fds[l]); /* never handed to h2o */
            }
        }
    }
    for (int q = 0; q < server->n_queues; q++) {
        fp_handoff_close(server->queues[q]);
    }
    fp_http_server_wake_logs(server);
}

/* h2o 2.2 (Debian 12's 2.2.5) leaves two things to the caller when it tears a loop down: its
 * h2o_multithread_destroy_queue() closes the queue's pipe but does not free the queue (nor the
 * one h2o_context_init() makes for each context), and h2o_evloop_destroy() frees the loop but
 * leaves its epoll descriptor open.  Later versions do both themselves. */
#define H2O_LEAVES_QUEUE_AND_EPOLL (H2O_VERSION_MAJOR == 2 && H2O_VERSION_MINOR == 2)

#if H2O_LEAVES_QUEUE_AND_EPOLL
/* The epoll backend's loop is struct st_h2o_evloop_epoll_t {h2o_evloop_t super; int ep;}
 * (lib/common/socket/evloop/epoll.c.h), so the descriptor follows the public struct.  It is
 * closed only if it is an epoll instance indeed (a layout that differs leaks it, no more). */
static void close_epoll_of(h2o_evloop_t *loop)
{
    struct evloop_epoll {
        h2o_evloop_t super;
        int ep;
    } *e = (struct evloop_epoll *)loop;
    char link[64], target[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", e->ep);
    ssize_t n = e->ep > 2 ? readlink(link, target, sizeof target - 1) : -1;
    if (n > 0) {
        target[n] = '\0';
        if (strcmp(target, "anon_inode:[eventpoll]") == 0) {
            close(e->ep);
        }
    }
}
#endif

/* Tear down the h2o objects of loop `lp` (its thread has ended, its connections are closed). */
static void loop_free(fp_http_server *server, http_loop *lp)
{
    for (int i = 0; i < server->n_sites; i++) {
        h2o_context_t *ctx = &server->sites[i]->per_loop[lp->index].ctx;
        h2o_context_dispose(ctx);
#if H2O_LEAVES_QUEUE_AND_EPOLL
        free(ctx->queue);
#endif
    }
    h2o_multithread_unregister_receiver(lp->mqueue, &lp->receiver);
    h2o_multithread_destroy_queue(lp->mqueue);
#if H2O_LEAVES_QUEUE_AND_EPOLL
    free(lp->mqueue);
    close_epoll_of(lp->loop);
#endif
    h2o_evloop_destroy(lp->loop);
}

/* The loop's own thread, as the loop ends: h2o's socket buffers point at the __thread buffer
 * prototype of the thread that made them (h2o_socket_buffer_prototype), which goes away with that
 * thread, so a loop's h2o objects are freed here or never.  Only when the loop closed every
 * connection and no exchange of it is left: a PHP thread still holding one may wake the loop's
 * queue.  (No exchange can appear meanwhile: only this thread makes this loop's exchanges.) */
static void loop_release(http_loop *lp)
{
    fp_http_server *server = lp->server;
    if (!lp->closed_clean || atomic_load(&lp->exchanges) != 0) {
        return;
    }
    pthread_mutex_lock(&server->mu);
    lp->releasing = 1;
    pthread_mutex_unlock(&server->mu);
    loop_free(server, lp);
    pthread_mutex_lock(&server->mu);
    lp->loop = NULL;
    pthread_mutex_unlock(&server->mu);
}

/* Wake loop `lp` (it checks whether the server stops) unless it is gone: under server->mu. */
static void wake_loop_locked(http_loop *lp)
{
    if (lp->loop && !lp->releasing) {
        h2o_multithread_send_message(&lp->receiver, NULL);
    }
}

void fp_http_server_free(fp_http_server *server)
{
    /* Each loop frees its h2o objects on its own thread as it ends (loop_release).  A loop that
     * could not (a connection still open after the linger, an exchange a PHP thread that never
     * came back still holds, a per-thread loop still running) keeps them, and the sites and the
     * server stay allocated with it: a bounded leak, once per server. */
    int clean = 1;
    pthread_mutex_lock(&server->mu);
    for (int l = 0; l < server->n_loops; l++) {
        if (server->loops[l].loop) {
            clean = 0;
        }
    }
    pthread_mutex_unlock(&server->mu);
    for (int q = 0; q < server->n_queues; q++) {
        fp_handoff_destroy(server->queues[q]);
        free(server->queues[q]);
    }
    for (int i = 0; i < server->n_sites; i++) {
        SSL_CTX_free(server->sites[i]->ssl_ctx); /* connections h2o still holds keep a reference */
    }
    free(server->queues);
    free(server->logs);
    server->queues = NULL;
    server->n_queues = 0;
    server->logs = NULL;
    if (!clean) {
        return;
    }
    for (int i = 0; i < server->n_sites; i++) {
        h2o_config_dispose(&server->sites[i]->globalconf);
        free(server->sites[i]);
    }
    pthread_mutex_destroy(&server->log_mu);
    pthread_cond_destroy(&server->log_cond);
    pthread_mutex_destroy(&server->mu);
    pthread_cond_destroy(&server->idle);
    pthread_cond_destroy(&server->ready);
    pthread_cond_destroy(&server->expire_cond);
    free(server);
}

void fp_http_server_counters(fp_http_server *server, fp_http_counters *out)
{
    out->requests = atomic_load(&server->requests);
    out->php_requests = atomic_load(&server->php_requests);
    out->rejected_503 = atomic_load(&server->rejected_503);
    out->client_gone = atomic_load(&server->client_gone);
    out->php_busy = (uint64_t)atomic_load(&server->php_busy);
    pthread_mutex_lock(&server->mu);
    out->in_flight = server->in_flight;
    pthread_mutex_unlock(&server->mu);
}

void fp_http_server_busy(fp_http_server *server, int delta)
{
    atomic_fetch_add(&server->php_busy, delta);
}

uint64_t fp_http_server_queue_stalls(fp_http_server *server, int queue, uint64_t *oldest_wait_ns)
{
    if (queue < 0 || queue >= server->n_queues) {
        *oldest_wait_ns = 0;
        return 0;
    }
    return fp_handoff_stalls(server->queues[queue], oldest_wait_ns);
}

size_t fp_http_server_queue_length(fp_http_server *server, int queue)
{
    return queue >= 0 && queue < server->n_queues ? fp_handoff_length(server->queues[queue]) : 0;
}

fp_http_exchange *fp_http_take(fp_http_server *server, int queue, const volatile int *drain)
{
    if (queue < 0 || queue >= server->n_queues) {
        return NULL;
    }
    return (fp_http_exchange *)fp_handoff_take(server->queues[queue], drain);
}

void fp_http_wake(fp_http_server *server, int queue)
{
    if (queue >= 0 && queue < server->n_queues) {
        fp_handoff_wake(server->queues[queue]);
    }
}
