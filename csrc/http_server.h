/*
 * The native HTTP server: libh2o-evloop does accept, HTTP/1.1 parsing, keep-alive, chunked
 * output and connection timeouts; this adapter routes each request with the php_server router
 * (router.h), serves static files and refusals itself, and hands PHP requests to PHP threads
 * through hand-off queues (handoff.h).  No Python: Python configures, starts and stops it.
 *
 * TLS (a site with tls_cert/tls_key): h2o does the handshake on the loop thread and picks
 * HTTP/2 or HTTP/1.1 by ALPN.  An HTTP/2 connection carries several requests at once: every
 * h2o_req_t is a stream and gets its own exchange; nothing of an exchange is per connection
 * (a reset stream is disposed by h2o like a closed HTTP/1 connection: that exchange is gone).
 *
 * Threads
 * - Loop threads (one or more) each run an h2o loop and accept on the same listening sockets;
 *   the loop that accepted a connection owns it and every h2o object of its requests: h2o is
 *   single-threaded, a response must be sent from the thread that owns its connection.
 * - PHP threads take exchanges (one HTTP request each) from a queue, run PHP with the
 *   exchange's fp_request (whose `host` table is the exchange's own C callbacks), and produce
 *   the response from their thread: output is appended to the exchange under its mutex and the
 *   loop thread is woken with an h2o_multithread message; it sends what is pending when h2o
 *   asks for more (the generator's proceed).  A PHP thread whose pending output passes
 *   FP_HTTP_HIGH_WATER bytes waits (back-pressure) until the loop has taken it.
 * - A client that goes away while PHP runs: h2o disposes the request (on the loop thread), the
 *   exchange is marked gone, and the next output of the script returns -1 so that PHP aborts it
 *   unless ignore_user_abort.
 * - Diagnostics of the scripts and the access log are queued in C and taken in batches by one
 *   Python thread (fp_http_server_take_logs); counters are read with fp_http_server_counters.
 *
 * Queues: queue 0 holds classic requests (regular PHP threads serve it with fp_serve(),
 * serve.h); fp_http_server_add_queue() makes one per HTTP worker; the "python" queue holds the
 * requests only Python answers (/metrics), taken with fp_http_take().  Each request waits at most
 * its site's max_wait_time in a queue, then the server's expiry thread answers it 503 (a thread
 * of its own: per-thread, every loop is a PHP thread's, busy while its request runs).
 */
#ifndef FRANKENPY_HTTP_SERVER_H
#define FRANKENPY_HTTP_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "frankenpy.h"
#include "handoff.h"
#include "router.h"

/* Pending output above which a PHP thread waits for the client (back-pressure); the largest
 * request head (request line and headers) accepted, larger ones get 400. */
enum { FP_HTTP_HIGH_WATER = 256 * 1024, FP_HTTP_MAX_HEAD = 64 * 1024 };

typedef struct fp_http_server fp_http_server;
typedef struct fp_http_exchange fp_http_exchange;

/* One listener and what it serves.  Strings and the router belong to the caller and must
 * outlive the server. */
typedef struct fp_http_site {
    const char *host;           /* address to listen on: "127.0.0.1", "0.0.0.0", "::" */
    int port;                   /* 0: a free port (see bound_port) */
    const fp_router *router;    /* the document root and the routing options */
    uint64_t max_body_size;     /* larger bodies get 413 before anything reaches PHP */
    double max_wait_time;       /* seconds a request may wait for a PHP thread; <= 0: no limit */
    int metrics;                /* GET /metrics goes to the python queue */
    const char *tls_cert;       /* PEM certificate chain: HTTPS, HTTP/2 or HTTP/1.1 by ALPN; NULL: HTTP */
    const char *tls_key;        /* PEM private key of tls_cert */
    const char *env_before;     /* $_SERVER pairs before the CGI variables (the runtime's env) */
    size_t env_before_pairs;
    const char *env_after;      /* $_SERVER pairs after them, overriding (the app's env) */
    size_t env_after_pairs;
    int bound_port;             /* written by fp_http_server_add_site() */
} fp_http_site;

typedef struct fp_http_counters {
    uint64_t requests;          /* complete requests received (h2o refuses malformed ones itself) */
    uint64_t php_requests;      /* handed to a PHP thread */
    uint64_t in_flight;         /* handed to a queue and not yet answered completely */
    uint64_t rejected_503;      /* max_wait_time passed, or refused while stopping */
    uint64_t client_gone;       /* clients that left before their response was complete */
    uint64_t php_busy;          /* classic PHP threads running a request now */
} fp_http_counters;

/* A new server with `loop_threads` loop threads (1..16), its classic queue (0) and its python
 * queue; `access_log` queues one log record per request.  NULL with a message. */
fp_http_server *fp_http_server_new(int loop_threads, int access_log, char *err, size_t err_len);

/* Check that `cert` (PEM chain) and `key` (PEM private key) make a usable TLS server identity:
 * 0, or -1 with a message naming the option (tls_cert, tls_key) and the file at fault. */
int fp_http_tls_check(const char *cert, const char *key, char *err, size_t err_len);

/* Run-to-completion (the "per-thread" I/O model), instead of loop threads: `threads` PHP
 * threads each run an h2o loop of their own, on a listening socket of their own (SO_REUSEPORT,
 * so the kernel spreads connections over them), and run the classic requests that loop parsed
 * themselves, between runs of the loop (fp_http_loop_next), as apache prefork does per process.
 * Static files, refusals and redirects are answered by the loop; requests for HTTP workers and
 * /metrics are still handed to their queues (a loop whose thread runs PHP sends their responses
 * once that PHP is done).  Call before adding sites.  Returns 0 or -1 with a message. */
int fp_http_server_per_thread(fp_http_server *server, int threads, char *err, size_t err_len);

/* Per-thread: run loop `index` (0..threads-1) on the calling thread, always the same one, until
 * a classic request it parsed is ready to run (returned: run it as one from fp_http_take(); its
 * output is sent from this thread), or NULL once the server stops (the loop is then closed).  The
 * first call sets the loop up. */
fp_http_exchange *fp_http_loop_next(fp_http_server *server, int index);

/* A new queue for an HTTP worker; returns its index, or -1 (out of memory). */
int fp_http_server_add_queue(fp_http_server *server);

/* The index of the python queue. */
int fp_http_server_python_queue(fp_http_server *server);

/* Bind a listener for `site` (before fp_http_server_start).  Returns its index, or -1 with a
 * message (address in use ...). */
int fp_http_server_add_site(fp_http_server *server, fp_http_site *site, char *err, size_t err_len);

/* Requests of `site` whose decoded path fnmatch()es `pattern` (flags 0, as Python's
 * fnmatchcase: "*" also matches "/") go to `queue`; with pattern NULL, the PHP routes whose
 * script is `script_filename` do.  Patterns are tried in the order added; the script of the
 * request is `script_filename`.  Returns 0 or -1. */
int fp_http_server_add_worker_route(fp_http_server *server, int site, const char *pattern,
                                    const char *script_filename, int queue);

/* Start the loop threads.  Returns 0 or -1 with a message. */
int fp_http_server_start(fp_http_server *server, char *err, size_t err_len);

/* From now on new requests get 503 (a graceful stop); in-flight ones go on. */
void fp_http_server_drain(fp_http_server *server);

/* Wait until no request is in flight, at most timeout_ms.  Returns the number still in flight. */
uint64_t fp_http_server_wait_idle(fp_http_server *server, int timeout_ms);

/* Answer every queued request with 503, close the listeners and the connections, stop the loop
 * threads (per-thread: wait a bounded time for the PHP threads' loops to end, after the request
 * each runs) and close every queue (takers return NULL).  The server stays allocated (its queues may
 * still be referenced by PHP threads finishing); free it with fp_http_server_free(). */
void fp_http_server_stop(fp_http_server *server);

/* Free a stopped server once no thread uses it any more, with h2o's loops, contexts and
 * configuration.  When a connection outlived the stop's linger or a PHP thread still holds an
 * exchange, the h2o objects and the server struct are left allocated instead (h2o 2.2 cannot
 * close a busy connection from outside): a bounded leak, once per server. */
void fp_http_server_free(fp_http_server *server);

void fp_http_server_counters(fp_http_server *server, fp_http_counters *out);

/* A classic PHP thread starts (+1) or ends (-1) a request (for php_busy). */
void fp_http_server_busy(fp_http_server *server, int delta);

/* fp_handoff_stalls() of `queue` (autoscaling): requests taken after waiting 5 ms or more so
 * far, and the wait of its oldest queued request by now. */
uint64_t fp_http_server_queue_stalls(fp_http_server *server, int queue, uint64_t *oldest_wait_ns);

/* Queued requests of `queue` right now. */
size_t fp_http_server_queue_length(fp_http_server *server, int queue);

/* Take log records (diagnostics of scripts, access log lines), waiting up to timeout_ms for the
 * first one.  Records are packed in `buf` as "kind\0tag\0<n>\0" followed by the n bytes of the
 * message (any bytes, NUL included; n in decimal): kind is the E_* type in decimal, "0" for
 * error_log() and php://stderr, "L<level>" for frankenphp_log() (message "text\x1f<context
 * JSON>"), "A" for an access log line, "S" for the server's own warnings (refused requests).
 * Returns the bytes written; a record that does not fit stays for the next call (records are
 * cut to 64 KiB when queued: `len` must be at least that). */
size_t fp_http_server_take_logs(fp_http_server *server, char *buf, size_t len, int timeout_ms);

/* Wake a thread blocked in fp_http_server_take_logs() (at stop). */
void fp_http_server_wake_logs(fp_http_server *server);

/* ---- the PHP thread side -------------------------------------------------------------------- */

/* The next exchange of `queue`, blocking (no GIL: call it from C, or from Python through cffi,
 * which releases the GIL); NULL once the queue is closed or *drain is set and the queue woken. */
fp_http_exchange *fp_http_take(fp_http_server *server, int queue, const volatile int *drain);

/* Wake the takers of `queue` (after setting a drain flag). */
void fp_http_wake(fp_http_server *server, int queue);

/* The request to execute for `ex` (its host table, handle and $_SERVER are set).  `tag` names
 * the PHP thread in its diagnostics (copied). */
fp_request *fp_http_exchange_request(fp_http_exchange *ex, const char *tag);

/* The execution of `ex` ended (fp_execute returned, or the worker's request_done): send what is
 * left and the end of the response, take the rest of the output out of `req` (req->output is
 * left to its owner) and release the PHP thread's hold on the exchange. */
void fp_http_exchange_finish(fp_http_exchange *ex);

/* Like finish, but the worker's glue still clears the request's struct after request_done
 * returns: the exchange stays allocated until fp_http_exchange_release(). */
void fp_http_exchange_finish_keep(fp_http_exchange *ex);
void fp_http_exchange_release(fp_http_exchange *ex);

/* Answer `ex` without PHP (the python queue): status, "Name: value\n" lines, body. */
void fp_http_exchange_respond(fp_http_exchange *ex, int status, const char *headers,
                              const char *body, size_t body_len);

/* Nanoseconds `ex` may still wait for a PHP thread: its site's max_wait_time counts from the
 * moment it was queued, through the hand-off queue and the wait for a pool interpreter.
 * -1: no limit; 0: the time is up. */
int64_t fp_http_exchange_wait_left(fp_http_exchange *ex);

/* Answer `ex` 503 because it waited longer than max_wait_time (counted and logged). */
void fp_http_exchange_reject(fp_http_exchange *ex);

/* Deadline (CLOCK_MONOTONIC ns, 0 none) and the limit in seconds that set it; any thread. */
void fp_http_exchange_set_deadline(fp_http_exchange *ex, int64_t seconds);
uint64_t fp_http_exchange_deadline(fp_http_exchange *ex, int64_t *seconds);

#endif
