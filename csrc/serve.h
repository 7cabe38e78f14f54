/*
 * PHP threads serving the native HTTP server (http_server.h) without Python per request.
 *
 * - Serving threads (started from Python, which calls fp_serve() once with the GIL released)
 *   take classic requests from queue 0 until the queue is closed or their drain flag is set, and
 *   borrow an idle regular PHP thread from the runtime's pool (pool.h) for each request, so
 *   that Python's Runtime.execute_*() callers and HTTP requests share the interpreters FIFO.
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
#include "pool.h"

/* A regular PHP thread as the runtime's pool (pool.h) holds it: its interpreter, the request
 * struct its regular executions reuse (Python's PHPThread.request, whose exec_id a force-stop
 * reads), a Python handle of the PHPThread for frankenphp_log(), and the runtime's context
 * for the workers' vars and tasks (fp_request.worker_ctx of everything run on it).
 * The rest is what the admin API shows of the thread (Python's PHPThread reads and writes it
 * too): written by whoever runs on it, read without a lock (a snapshot may be stale). */
typedef struct fp_slot {
    fp_image *image;
    fp_request *request;
    void *py_handle;
    void *worker_ctx;
    uint64_t executions;
    double since;         /* wall clock (s) when an execution last started or ended on it */
    size_t memory_usage;  /* PHP's, at the end of its last script */
    int busy;             /* an execution in C (fp_fast_execute) runs on it */
} fp_slot;

/* Serve classic requests until queue 0 of `server` is closed or *drain is set (then
 * fp_http_wake(server, 0)), each on an interpreter (an fp_slot * item) borrowed from `pool`
 * for that request only; a request that finds the pool closed is answered 503.  `tag` names
 * the thread in diagnostics.  Returns the number of requests served. */
uint64_t fp_serve(fp_http_server *server, fp_pool *pool, const char *tag, const volatile int *drain);

/* Per-thread (run-to-completion, fp_http_server_per_thread()): run loop `index` of `server` on
 * this thread and the classic requests it parses, each on an interpreter borrowed from `pool` as
 * fp_serve() does, until the server stops.  Returns the number of requests served. */
uint64_t fp_serve_loop(fp_http_server *server, fp_pool *pool, int index, const char *tag);

/* One regular execution in C (Runtime.execute_* without an output callable or a timeout):
 * Python fills the inputs, makes one call (GIL released once), and reads the outputs.  The
 * buffers belong to the call and are reused call after call (fp_fast_call_clear frees them). */
typedef struct fp_fast_call {
    /* in: as in fp_request; must stay valid during the call */
    const char *script_path;
    int check_script;    /* FP_FAST_NOT_FOUND when script_path is not a regular file */
    const char *code;
    const char *env;
    size_t env_pairs;
    char **argv;
    int argc;
    size_t output_limit;
    const char *stdin_data;
    size_t stdin_len;
    /* out */
    int member;          /* the pool member it ran on */
    int given_up;        /* the pool gave up on it meanwhile (closed): the caller owns it now */
    int exit_status;
    int timed_out;       /* the C watcher stopped it at its PHP time limit */
    int64_t time_limit;  /* the last limit PHP reported (seconds, 0 none) */
    size_t memory_usage;
    uint64_t duration_ns;
    char *output;
    size_t output_len, output_cap;
    char *stderr_output;
    size_t stderr_len, stderr_cap;
    /* diag_count diagnostics, each "type\0line\0" + ("F<file>\0" or "N\0") + "message\0" */
    char *diag;
    size_t diag_len, diag_cap;
    int diag_count;
    /* Anything but exit_status, output and duration to look at: given_up, diagnostics,
     * timed_out, time_limit, STDERR, or output buffers too big to keep for the next call. */
    int rare;
    int copy_small_output; /* set by fp_fast_map and the asyncio workers, see fp_fast_execute */
    /* asyncio (fp_async_submit) */
    int async;
    int cancel; /* set by the caller: stop the script (as a timeout does) or never start it */
    /* in: an ASGI request (frankenpy/asgi.py) instead of an execution: the worker hands the
     * member it queued for to Python's fp_py_run_request(run_handle, member), which runs the
     * prepared request there; nothing else of the call is used but member and given_up. */
    void *run_handle;
    fp_pool *async_pool;
    uint64_t async_since; /* monotonic ns, when submitted (fp_async_stalls) */
    struct fp_fast_call *async_next; /* in the fp_async's queue of jobs, then of completions */
} fp_fast_call;

/* Run `call` on member `member` of `pool` (which the caller acquired), or with member < 0 on an
 * idle one (FP_POOL_TIMEOUT when none is idle: nothing ran, queue for one and call again;
 * FP_POOL_CLOSED; FP_FAST_NOT_FOUND, see check_script: found as PHP fails to open the script, so
 * that a present script costs no system call of ours; nothing of the script ran, its fatal
 * diagnostic is dropped, and member/given_up are set as for a run).  PHP time limits
 * are enforced by the C watcher.  The member goes back to the pool before this returns. */
#define FP_FAST_NOT_FOUND -5
int fp_fast_execute(fp_pool *pool, int member, fp_fast_call *call);
void fp_fast_call_clear(fp_fast_call *call);
/* fp_fast_execute() for a Python thread, which takes the GIL when this returns: if another
 * Python caller of this function is still in its Python turn, wait (spin, up to 20 us) for it to
 * come back into C, so that the GIL is free to take without sleeping (see serve.c). */
int fp_fast_execute_for_python(fp_pool *pool, int member, fp_fast_call *call);

/* The inputs of `proto` (script, code, env, argv, limits, stdin) into each of `calls` whose
 * argv is still NULL: a batch's items without env/argv of their own, filled without Python. */
void fp_fast_calls_fill(fp_fast_call *calls, size_t n, const fp_fast_call *proto);
/* A batch: run every call of `calls` (results in place; `member` < 0 when the pool closed
 * first) on up to `threads` PHP threads at once: the calling thread and threads - 1 C helper
 * threads each claim the next calls a chunk at a time, wait for a member in the pool's FIFO
 * line, and keep it from call to call until somebody else waits in that line or the pool
 * closes (fp_pool_wanted); a member given up meanwhile is marked on the last call it ran.
 * Returns when all are done: how many calls Python must look at (member < 0, given up, or with
 * diagnostics to log), so that a clean batch costs Python nothing per item. */
size_t fp_fast_map(fp_pool *pool, fp_fast_call *calls, size_t n, int threads);
/* asyncio: `call` goes to a queue served by the C worker threads of `a` (started on demand, as
 * many as `pool` has PHP threads; an idle one exits after a while), no Python thread.  A worker
 * queues for a PHP thread in the pool's FIFO line, runs the call with fp_fast_execute (or an
 * ASGI request, see run_handle), puts it on the completion queue (fp_async_take), then adds 1
 * to the eventfd of `a` (fp_async_fd), which the event loop reads (loop.add_reader).  Setting
 * call->cancel stops the script through the C watcher (within its 50 ms tick; an ASGI request
 * is stopped by Python), or leaves the line if it waits: member is then FP_FAST_CANCELLED.
 * The call and what it points to must live until taken back.  Returns 0, or -1 when no worker
 * could be started. */
typedef struct fp_async fp_async;
#define FP_FAST_CANCELLED -4
fp_async *fp_async_new(void);
int fp_async_fd(fp_async *a);
/* Drop the caller's reference: the workers finish the calls already submitted (which must live
 * until then), then exit; the eventfd is closed once the last one has. */
void fp_async_release(fp_async *a);
int fp_async_submit(fp_async *a, fp_pool *pool, fp_fast_call *call);
/* Start workers for the calls still queued, up to the PHP threads `pool` has now (autoscaling
 * added some while every worker was busy: nothing else would start one for them). */
void fp_async_kick(fp_async *a, fp_pool *pool);
/* Autoscaling, as fp_pool_stalls() for the calls queued in `a` (before a worker takes them and
 * waits in the pool's line): how many waited 5 ms or more (a running count), and how long the
 * oldest queued one has waited by now (0: none). */
uint64_t fp_async_stalls(fp_async *a, uint64_t *oldest_wait_ns);
/* Up to `max` completed calls, oldest first, into `out`; returns how many. */
size_t fp_async_take(fp_async *a, fp_fast_call **out, size_t max);

/* fp_fast_call_clear of each of `calls`. */
void fp_fast_calls_clear(fp_fast_call *calls, size_t n);

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
/* Nanoseconds its requests took, from take to done (frankenphp_worker_request_time). */
uint64_t fp_native_worker_request_ns(fp_native_worker *w);

#endif
