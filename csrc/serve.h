/*
 * PHP threads serving the native HTTP server (http_server.h) without Python per request.
 *
 * - A regular PHP thread's Python thread calls fp_serve() once (cffi releases the GIL) and
 *   serves classic requests from queue 0 until the queue is closed or its drain flag is set.
 * - An HTTP worker's script runs as usual (Python starts, restarts and backs it off), but its
 *   fp_request carries fp_native_worker_host(): frankenphp_handle_request() then takes requests
 *   from the worker's queue in C, and answers them in C.  The worker's own output, diagnostics
 *   between requests and readiness still reach Python (fp_py_* callbacks, once per script run).
 * - Time limits: max_execution_time of a classic request, and per request in worker mode, are
 *   enforced by one C watcher thread that interrupts the execution (fp_image_interrupt()).
 *
 * Compiled into frankenpy._native only (it calls the loader and the Python callbacks).
 */
#ifndef FRANKENPY_SERVE_H
#define FRANKENPY_SERVE_H

#include "http_server.h"
#include "loader.h"

/* Serve classic requests on `image` (a started interpreter the caller owns) until queue 0 of
 * `server` is closed or *drain is set (then fp_http_wake(server, 0)).  `tag` names the thread
 * in diagnostics; `worker_ctx` is the runtime's context for the workers' vars and tasks
 * (fp_request.worker_ctx of every request served, as a Python-driven execution gets it).
 * Returns the number of requests served. */
uint64_t fp_serve(fp_http_server *server, fp_image *image, const char *tag, void *worker_ctx,
                  const volatile int *drain);

typedef struct fp_native_worker fp_native_worker;

/* A thread of an HTTP worker served from `queue`; `max_requests` 0 means no limit. */
fp_native_worker *fp_native_worker_new(fp_http_server *server, int queue, fp_image *image,
                                       const char *tag, int max_requests);
void fp_native_worker_free(fp_native_worker *w);

/* Before each run of the script: `script` is its request (give it host fp_native_worker_host()
 * and handle `w`), `py_handle` the Python execution's handle for the forwarded callbacks. */
void fp_native_worker_begin(fp_native_worker *w, fp_request *script, void *py_handle);
/* After the run (fp_execute returned): let go of the last request. */
void fp_native_worker_end(fp_native_worker *w);
const fp_host *fp_native_worker_host(void);

/* Drain this thread: its next take returns NULL (also wakes it). */
void fp_native_worker_drain(fp_native_worker *w);
/* Reset the drain flag (a new run after restart_workers). */
void fp_native_worker_undrain(fp_native_worker *w);
int fp_native_worker_reached_loop(fp_native_worker *w);
int fp_native_worker_busy(fp_native_worker *w);
uint64_t fp_native_worker_requests(fp_native_worker *w);

#endif
