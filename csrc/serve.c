/* PHP threads serving the native HTTP server; see serve.h. */
#include "serve.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>
#include <sched.h>

/* Python's callbacks (frankenpy/execution.py), for what a worker reports once per run. */
int fp_py_output(void *handle, const char *data, size_t len);
void fp_py_log(void *handle, int type, const char *file, uint32_t line, const char *message);
void fp_py_time_limit(void *handle, int64_t seconds, int initial);
void fp_py_worker_ready(void *handle);
void fp_py_stderr_output(void *handle, const char *data, size_t len);
void fp_py_php_log(void *handle, int level, const char *message, size_t message_len, const char *context,
                   size_t context_len);
/* frankenpy/asgi.py: run the ASGI request of `handle` on pool member `member`. */
void fp_py_run_request(void *handle, int member);

/* ---- the deadline watcher ----------------------------------------------------------------------
 * One thread for the process: every WATCH_INTERVAL it looks at the executions that serve an
 * exchange and interrupts those past their deadline (again at each tick until they end, in case
 * the signal arrived outside a syscall).  Polling keeps the PHP threads free of any wake-up. */
#define WATCH_INTERVAL_NS 50000000L

typedef struct watch_slot {
    struct watch_slot *next, *prev;
    fp_image *image;
    fp_request *script;   /* whose exec_id is interrupted */
    fp_http_exchange *ex; /* the request in progress, NULL between requests (under watch_mu) */
    /* Without an exchange (a regular execution, fp_fast_execute): its own deadline (monotonic
     * ns, 0 none), the limit in seconds that set it, and whether an interrupt reached it. */
    uint64_t deadline;
    int64_t seconds;
    int stopped;
    const int *cancel; /* when set and not 0: stop it now (a cancelled asyncio task) */
} watch_slot;

static pthread_mutex_t watch_mu = PTHREAD_MUTEX_INITIALIZER;
static watch_slot watched = {&watched, &watched, NULL, NULL, NULL, 0, 0, 0, NULL};
static int watcher_started;

static void *watcher_main(void *arg)
{
    (void)arg;
    struct timespec tick = {0, WATCH_INTERVAL_NS};
    for (;;) {
        nanosleep(&tick, NULL);
        uint64_t now = fp_monotonic_ns();
        pthread_mutex_lock(&watch_mu);
        for (watch_slot *s = watched.next; s != &watched; s = s->next) {
            int64_t seconds = s->seconds;
            uint64_t deadline = s->deadline;
            if (s->ex) {
                deadline = fp_http_exchange_deadline(s->ex, &seconds);
            } else if (!s->script) {
                continue;
            }
            if (s->cancel && __atomic_load_n(s->cancel, __ATOMIC_RELAXED)) {
                deadline = now, seconds = 0;
            }
            uint64_t exec_id = __atomic_load_n(&s->script->exec_id, __ATOMIC_RELAXED);
            if (deadline && now >= deadline && exec_id &&
                fp_image_interrupt(s->image, exec_id, seconds, fp_interrupt_signal())) {
                s->stopped = 1;
            }
        }
        pthread_mutex_unlock(&watch_mu);
    }
    return NULL;
}

static void watch(watch_slot *s)
{
    pthread_mutex_lock(&watch_mu);
    if (!watcher_started) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        watcher_started = pthread_create(&t, &attr, watcher_main, NULL) == 0;
        pthread_attr_destroy(&attr);
    }
    s->next = &watched;
    s->prev = watched.prev;
    watched.prev->next = s;
    watched.prev = s;
    pthread_mutex_unlock(&watch_mu);
}

static void unwatch(watch_slot *s)
{
    pthread_mutex_lock(&watch_mu);
    s->prev->next = s->next;
    s->next->prev = s->prev;
    s->next = s->prev = NULL;
    pthread_mutex_unlock(&watch_mu);
}

static void set_watched_exchange(watch_slot *s, fp_http_exchange *ex)
{
    pthread_mutex_lock(&watch_mu);
    s->ex = ex;
    pthread_mutex_unlock(&watch_mu);
}

/* A classic request's slot: its interpreter changes with every request. */
static void set_watched(watch_slot *s, fp_image *image, fp_request *script, fp_http_exchange *ex)
{
    pthread_mutex_lock(&watch_mu);
    s->image = image;
    s->script = script;
    s->ex = ex;
    pthread_mutex_unlock(&watch_mu);
}

/* ---- classic requests ------------------------------------------------------------------------ */

/* Run classic request `ex` on an interpreter borrowed from `pool`; 1 when it ran. */
static int serve_one(fp_http_server *server, fp_pool *pool, const char *tag, watch_slot *slot,
                     fp_http_exchange *ex)
{
    /* max_wait_time covers the wait for an interpreter too: execute_*() callers share the pool,
     * so a request taken off its queue may still wait here. */
    void *item = NULL;
    int64_t left = fp_http_exchange_wait_left(ex);
    int id = left == 0 ? FP_POOL_TIMEOUT : fp_pool_acquire(pool, left, &item);
    fp_slot *php = item;
    if (id == FP_POOL_TIMEOUT) {
        fp_http_exchange_reject(ex);
        return 0;
    }
    if (id < 0) {
        static const char body[] = "Service Unavailable\n";
        fp_http_exchange_respond(ex, 503, "Content-Type: text/plain\n", body, sizeof body - 1);
        return 0;
    }
    fp_image *image = php->image;
    fp_request *req = fp_http_exchange_request(ex, tag);
    req->worker_ctx = php->worker_ctx;
    set_watched(slot, image, req, ex);
    fp_http_server_busy(server, 1);
    fp_image_execute(image, req);
    fp_http_server_busy(server, -1);
    set_watched(slot, NULL, NULL, NULL);
    /* The exchange copies what it needs, then the glue's buffers go; only then may the loop
     * thread free the exchange (and `req` inside it) once the response is out. */
    fp_http_exchange_finish_keep(ex);
    fp_image_request_clear(image, req);
    fp_pool_release(pool, id); /* the pool is closed only after the server has stopped */
    fp_http_exchange_release(ex);
    return 1;
}

uint64_t fp_serve(fp_http_server *server, fp_pool *pool, const char *tag, const volatile int *drain)
{
    uint64_t served = 0;
    watch_slot slot = {0};
    fp_http_exchange *ex;
    watch(&slot);
    while ((ex = fp_http_take(server, 0, drain))) {
        served += (uint64_t)serve_one(server, pool, tag, &slot, ex);
    }
    unwatch(&slot);
    return served;
}

uint64_t fp_serve_loop(fp_http_server *server, fp_pool *pool, int index, const char *tag)
{
    uint64_t served = 0;
    watch_slot slot = {0};
    fp_http_exchange *ex;
    watch(&slot);
    while ((ex = fp_http_loop_next(server, index))) {
        served += (uint64_t)serve_one(server, pool, tag, &slot, ex);
    }
    unwatch(&slot);
    return served;
}

/* ---- HTTP workers ------------------------------------------------------------------------------ */

struct fp_native_worker {
    fp_http_server *server;
    int queue;
    int max_requests;
    char tag[64];
    void *py_handle;
    volatile int drain;
    int reached_loop;
    int run_requests;     /* handled in this run (max_requests) */
    int64_t request_limit;  /* max_execution_time per request (0: none) */
    _Atomic uint64_t requests;
    _Atomic uint64_t request_ns; /* time from take to done, summed (frankenphp_worker_request_time) */
    uint64_t taken_ns;
    _Atomic int busy;
    fp_http_exchange *current;  /* handed out, not yet done */
    fp_http_exchange *retired;  /* done, its struct still being cleared by the glue */
    watch_slot slot;
};

fp_native_worker *fp_native_worker_new(fp_http_server *server, int queue, fp_image *image,
                                       const char *tag, int max_requests)
{
    fp_native_worker *w = calloc(1, sizeof(*w));
    if (!w) {
        return NULL;
    }
    w->server = server;
    w->queue = queue;
    w->max_requests = max_requests;
    snprintf(w->tag, sizeof w->tag, "%s", tag);
    w->slot.image = image;
    return w;
}

void fp_native_worker_free(fp_native_worker *w)
{
    free(w);
}

void fp_native_worker_begin(fp_native_worker *w, fp_request *script, void *py_handle)
{
    w->py_handle = py_handle;
    fp_native_worker_undrain(w); /* a drain was for the previous run */
    w->reached_loop = 0;
    w->run_requests = 0;
    w->request_limit = 0;
    w->slot.script = script;
    watch(&w->slot);
}

static void release_retired(fp_native_worker *w)
{
    if (w->retired) {
        fp_http_exchange_release(w->retired);
        w->retired = NULL;
    }
}

void fp_native_worker_end(fp_native_worker *w)
{
    unwatch(&w->slot);
    w->slot.ex = NULL;
    if (w->current) {
        /* The glue answers a request cut short by exit() or a fatal error through
         * request_done; never leave a client waiting if it could not. */
        fp_http_exchange_finish(w->current);
        w->current = NULL;
        atomic_store(&w->busy, 0);
    }
    release_retired(w);
}

static int w_output(void *handle, const char *data, size_t len)
{
    return fp_py_output(((fp_native_worker *)handle)->py_handle, data, len);
}

static void w_log(void *handle, int type, const char *file, uint32_t line, const char *message)
{
    fp_py_log(((fp_native_worker *)handle)->py_handle, type, file, line, message);
}

static size_t w_read_body(void *handle, char *buf, size_t len)
{
    (void)handle; (void)buf; (void)len;
    return 0; /* the worker script itself has no request body */
}

static void w_time_limit(void *handle, int64_t seconds, int initial)
{
    fp_native_worker *w = handle;
    if (initial) {
        /* max_execution_time at start counts per request, as in FrankenPHP's worker mode. */
        w->request_limit = seconds;
        return;
    }
    if (w->current) {
        fp_http_exchange_set_deadline(w->current, seconds);
    } else {
        fp_py_time_limit(w->py_handle, seconds, 0); /* boot or between requests: Python's watchdog */
    }
}

static void w_stderr(void *handle, const char *data, size_t len)
{
    fp_py_stderr_output(((fp_native_worker *)handle)->py_handle, data, len);
}

/* frankenphp_log() in the worker script outside a request (a request's go to its exchange):
 * rare, straight to Python with the run's handle, as the WSGI path does. */
static void w_php_log(void *handle, int level, const char *message, size_t message_len, const char *context,
                      size_t context_len)
{
    fp_py_php_log(((fp_native_worker *)handle)->py_handle, level, message, message_len, context, context_len);
}

static void w_worker_ready(void *handle)
{
    fp_py_worker_ready(((fp_native_worker *)handle)->py_handle);
}

static int w_next_request(void *handle, fp_request **next)
{
    fp_native_worker *w = handle;
    release_retired(w); /* the glue is done with the previous request by now */
    if (!w->reached_loop) {
        w->reached_loop = 1;
        fp_py_worker_ready(w->py_handle); /* booted: once per run */
    }
    if (w->max_requests && w->run_requests >= w->max_requests) {
        return 0; /* recycle: the script ends and runs again */
    }
    fp_http_exchange *ex = fp_http_take(w->server, w->queue, &w->drain);
    if (!ex) {
        return 0;
    }
    w->current = ex;
    w->taken_ns = fp_monotonic_ns();
    atomic_store(&w->busy, 1);
    if (w->request_limit > 0) {
        fp_http_exchange_set_deadline(ex, w->request_limit);
    }
    set_watched_exchange(&w->slot, ex);
    *next = fp_http_exchange_request(ex, w->tag);
    return 1;
}

static void w_request_done(void *handle, fp_request *done)
{
    fp_native_worker *w = handle;
    (void)done;
    fp_http_exchange *ex = w->current;
    if (!ex) {
        return;
    }
    set_watched_exchange(&w->slot, NULL);
    /* Counted before the response leaves: a client that has it sees the counters moved. */
    w->current = NULL;
    w->retired = ex;
    w->run_requests++;
    atomic_fetch_add(&w->request_ns, fp_monotonic_ns() - w->taken_ns);
    atomic_fetch_add(&w->requests, 1);
    atomic_store(&w->busy, 0);
    /* The glue clears `done` after this returns: keep the exchange until the next take. */
    fp_http_exchange_finish_keep(ex);
}

static const fp_host worker_host = {
    .output = w_output,
    .log = w_log,
    .read_body = w_read_body,
    .time_limit = w_time_limit,
    .worker_ready = w_worker_ready,
    .next_request = w_next_request,
    .request_done = w_request_done,
    .stderr_output = w_stderr,
    .php_log = w_php_log,
};

const fp_host *fp_native_worker_host(void)
{
    return &worker_host;
}

void fp_native_worker_drain(fp_native_worker *w)
{
    __atomic_store_n(&w->drain, 1, __ATOMIC_SEQ_CST);
    fp_http_wake(w->server, w->queue);
}

void fp_native_worker_undrain(fp_native_worker *w)
{
    __atomic_store_n(&w->drain, 0, __ATOMIC_SEQ_CST);
}

int fp_native_worker_reached_loop(fp_native_worker *w)
{
    return w->reached_loop;
}

int fp_native_worker_busy(fp_native_worker *w)
{
    return atomic_load(&w->busy);
}

uint64_t fp_native_worker_requests(fp_native_worker *w)
{
    return atomic_load(&w->requests);
}

uint64_t fp_native_worker_request_ns(fp_native_worker *w)
{
    return atomic_load(&w->request_ns);
}

/* ---- regular executions in C (the fast path) ------------------------------------------------ */

typedef struct {
    fp_fast_call *call;
    fp_slot *php;
    watch_slot ws;
    int watched;
} fast_ctx;

static int grow(char **buf, size_t *cap, size_t need)
{
    if (need <= *cap) {
        return 0;
    }
    size_t cap2 = *cap ? *cap : 256;
    while (cap2 < need) {
        cap2 *= 2;
    }
    char *grown = realloc(*buf, cap2);
    if (!grown) {
        return -1;
    }
    *buf = grown;
    *cap = cap2;
    return 0;
}

static int f_output(void *handle, const char *data, size_t len)
{
    (void)handle; (void)data; (void)len;
    return 0; /* FP_OUTPUT_BUFFER: the glue collects; never called */
}

/* Diagnostics are packed for Python to read after the call: "type\0line\0" then the file
 * ("F<file>\0", or "N\0" without one) and "message\0".  One dropped only when out of memory. */
static void f_log(void *handle, int type, const char *file, uint32_t line, const char *message)
{
    fp_fast_call *call = ((fast_ctx *)handle)->call;
    char head[48];
    int n = snprintf(head, sizeof head, "%d%c%u%c%c", type, 0, (unsigned)line, 0, file ? 'F' : 'N');
    size_t flen = file ? strlen(file) : 0, mlen = strlen(message);
    size_t need = call->diag_len + (size_t)n + flen + 1 + mlen + 1;
    if (grow(&call->diag, &call->diag_cap, need) != 0) {
        return;
    }
    char *p = call->diag + call->diag_len;
    memcpy(p, head, (size_t)n);
    p += n;
    memcpy(p, file ? file : "", flen + 1);
    p += flen + 1;
    memcpy(p, message, mlen + 1);
    call->diag_len = need;
    call->diag_count++;
}

static size_t f_read_body(void *handle, char *buf, size_t len)
{
    (void)handle; (void)buf; (void)len;
    return 0;
}

/* Longer limits mean none (frankenpy/execution.py NO_LIMIT_BEYOND: a year). */
#define NO_LIMIT_BEYOND (365LL * 24 * 3600)

/* max_execution_time at start, set_time_limit(): the deadline the C watcher enforces. */
static void f_time_limit(void *handle, int64_t seconds, int initial)
{
    fast_ctx *ctx = handle;
    (void)initial;
    if (seconds > NO_LIMIT_BEYOND) {
        seconds = 0; /* set_time_limit(PHP_INT_MAX): no deadline, not an overflowed one */
    }
    pthread_mutex_lock(&watch_mu);
    ctx->ws.deadline = seconds > 0 ? fp_monotonic_ns() + (uint64_t)seconds * 1000000000u : 0;
    ctx->ws.seconds = seconds;
    pthread_mutex_unlock(&watch_mu);
    if (seconds > 0 && !ctx->watched) {
        ctx->watched = 1;
        watch(&ctx->ws);
    }
}

static void f_worker_ready(void *handle)
{
    (void)handle;
}

static int f_next_request(void *handle, fp_request **next)
{
    (void)handle; (void)next;
    return 0;
}

static void f_request_done(void *handle, fp_request *done)
{
    (void)handle; (void)done;
}

static void f_stderr(void *handle, const char *data, size_t len)
{
    (void)handle; (void)data; (void)len; /* a plain execution collects STDERR in the request */
}

static int f_interim(void *handle, int status, const char *lines, size_t len)
{
    (void)handle; (void)status; (void)lines; (void)len;
    return -1; /* a regular execution has no response to precede */
}

static void f_finish_request(void *handle, fp_request *req)
{
    (void)handle; (void)req; /* only stops further output, which the glue does */
}

static void f_php_log(void *handle, int level, const char *message, size_t message_len, const char *context,
                      size_t context_len)
{
    /* Rare: straight to Python (cffi takes the GIL), with the PHP thread's handle. */
    fp_py_php_log(((fast_ctx *)handle)->php->py_handle, level, message, message_len, context, context_len);
}

/* chdir_begin/chdir_end are always the interpreter's (the glue calls its start-up table). */
static const fp_host fast_host = {
    .output = f_output,
    .log = f_log,
    .read_body = f_read_body,
    .time_limit = f_time_limit,
    .worker_ready = f_worker_ready,
    .next_request = f_next_request,
    .request_done = f_request_done,
    .stderr_output = f_stderr,
    .interim = f_interim,
    .finish_request = f_finish_request,
    .php_log = f_php_log,
};

#define KEPT_BUFFER (1u << 20) /* a reused request keeps an output buffer up to this size */
#define SMALL_OUTPUT 4096       /* copied rather than handed over, see copy_small_output */

static void swap_buffer(char **a, size_t *a_cap, char **b, size_t *b_cap)
{
    char *p = *a;
    size_t cap = *a_cap;
    *a = *b;
    *a_cap = *b_cap;
    *b = p;
    *b_cap = cap;
}

static double wall_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The interpreter this thread ran an execution on last (fp_fast_execute). */
static __thread const fp_pool *last_pool;
static __thread int last_member = -1;

int fp_fast_execute(fp_pool *pool, int member, fp_fast_call *call)
{
    fp_slot *php;
    if (member < 0) {
        /* Only an idle interpreter: a caller that must queue does it from Python (signals,
         * autoscaling), then comes back with the member it was given.  The one this thread
         * ran on last, if idle: its heap and its copy's data may still be in this CPU's caches
         * (most-recently-used order alone gives that only while the callers' turns do not
         * interleave). */
        member = fp_pool_try_acquire(pool, last_pool == pool ? last_member : -1, (void **)&php);
        if (member < 0) {
            return member;
        }
    } else {
        php = fp_pool_item(pool, member);
    }
    last_pool = pool;
    last_member = member;
    fp_request *req = php->request;
    /* The reused struct keeps its output buffer; the previous response's header block is the
     * glue's to free (none for a plain execution, but never leak one). */
    char *output = req->output, *headers = req->headers;
    size_t output_cap = req->output_cap;
    memset(req, 0, sizeof *req);
    req->output = output;
    req->output_cap = output_cap;
    req->headers = headers;
    req->script_path = call->script_path;
    req->code = call->code;
    req->env = call->env;
    req->env_pairs = call->env_pairs;
    req->argv = call->argv;
    req->argc = call->argc;
    req->output_mode = FP_OUTPUT_BUFFER;
    req->output_limit = call->output_limit;
    req->stdin_data = call->stdin_data;
    req->stdin_len = call->stdin_len;
    req->worker_fd = -1;
    req->content_length = -1;
    req->host = &fast_host;
    req->worker_ctx = php->worker_ctx;
    fast_ctx ctx = {call, php, {0}, 0};
    ctx.ws.image = php->image;
    ctx.ws.script = req;
    req->handle = &ctx;
    if (call->async) {
        ctx.ws.cancel = &call->cancel; /* the watcher stops it once cancelled */
        ctx.watched = 1;
        watch(&ctx.ws);
    }
    call->diag_len = 0;
    call->diag_count = 0;
    php->since = wall_now();
    __atomic_store_n(&php->busy, 1, __ATOMIC_RELAXED);
    uint64_t started = fp_monotonic_ns();

    fp_image_execute(php->image, req);

    call->duration_ns = fp_monotonic_ns() - started;
    if (ctx.watched) {
        unwatch(&ctx.ws);
    }
    call->member = member;
    call->exit_status = req->exit_status;
    call->timed_out = ctx.ws.stopped;
    call->time_limit = ctx.ws.seconds;
    call->memory_usage = req->memory_usage;
    /* Hand the collected output and STDERR over without a copy: both are malloc()ed blocks the
     * glue reallocates or frees; the request takes the call's previous buffers in exchange.
     * A call that keeps its output (a batch item, an asyncio call) and has no buffer of its own
     * takes a copy of a small output instead: handing it the request's buffer would leave the
     * request none, and each execution would grow the heap by a fresh one (mprotect() under
     * the process's mmap lock, page faults: two threads then contend). */
    size_t len = req->output_len;
    int small = call->copy_small_output && !call->output_cap && len && len <= SMALL_OUTPUT;
    char *copy = small ? malloc(len) : NULL;
    if (copy) {
        memcpy(copy, req->output, len);
        call->output = copy;
        call->output_cap = len;
    } else {
        swap_buffer(&call->output, &call->output_cap, &req->output, &req->output_cap);
    }
    call->output_len = len;
    swap_buffer(&call->stderr_output, &call->stderr_cap, &req->stderr_output, &req->stderr_cap);
    call->stderr_len = req->stderr_len;
    req->output_len = req->stderr_len = 0;
    if (req->output_cap > KEPT_BUFFER || req->stderr_cap) {
        fp_image_request_clear(php->image, req);
    }
    req->handle = NULL;
    req->host = NULL;
    php->executions++;
    php->memory_usage = req->memory_usage;
    php->since = wall_now();
    __atomic_store_n(&php->busy, 0, __ATOMIC_RELAXED);
    call->given_up = fp_pool_release(pool, member);
    if (call->check_script && req->end_reason == FP_END_NOT_FOUND) {
        /* (found by the glue without a stat() of its own, see csrc/frankenpy.h: the fatal
         * "Failed opening required" it reported is not a diagnostic of a script that ran) */
        call->diag_len = 0;
        call->diag_count = 0;
        return FP_FAST_NOT_FOUND;
    }
    call->rare = call->given_up || call->diag_count || call->timed_out || call->time_limit ||
                 call->stderr_len || call->output_cap > KEPT_BUFFER || call->stderr_cap > KEPT_BUFFER;
    return member;
}

/* ---- handing the GIL over between Python callers --------------------------------------------
 * Two Python threads calling execute_* in a loop take turns on the GIL: each holds it for a few
 * us between calls of ~10 us of PHP.  A caller whose PHP ends while the other holds the GIL
 * sleeps in CPython's take_gil() until a futex wakes it: on a VM, waking an idle vCPU costs tens
 * of us, more than the PHP run (two callers measured 0.8-1.0x one).  So a caller about to go
 * back to Python first waits, spinning, for the caller that went back last to come into C again
 * (it drops the GIL before it does): take_gil() then finds the GIL free.  The wait is bounded: a
 * thread that stays in Python longer than a fast caller's turn is not waited for. */
#define GIL_TURN_NS 20000

static _Atomic(const void *) python_turn; /* the caller that went back to Python last, or NULL */
static _Atomic uint64_t python_turn_since;
static __thread char caller_token; /* its address names the calling thread */
static int spin_worthwhile = -1;   /* more than one CPU: the caller we wait for can run meanwhile */

static void wait_for_python_turn(void)
{
    const void *me = &caller_token;
    if (spin_worthwhile < 0) {
        spin_worthwhile = sysconf(_SC_NPROCESSORS_ONLN) > 1; /* (benign race: same value) */
    }
    const void *other = atomic_load_explicit(&python_turn, memory_order_acquire);
    if (spin_worthwhile && other && other != me) {
        uint64_t until = atomic_load_explicit(&python_turn_since, memory_order_relaxed) + GIL_TURN_NS;
        while (atomic_load_explicit(&python_turn, memory_order_acquire) == other && fp_monotonic_ns() < until) {
#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#endif
        }
    }
    atomic_store_explicit(&python_turn_since, fp_monotonic_ns(), memory_order_relaxed);
    atomic_store_explicit(&python_turn, me, memory_order_release);
}

int fp_fast_execute_for_python(fp_pool *pool, int member, fp_fast_call *call)
{
    const void *me = &caller_token;
    /* Back in C (the GIL dropped): a caller waiting for this thread's turn may go on. */
    atomic_compare_exchange_strong(&python_turn, &me, NULL);
    int result = fp_fast_execute(pool, member, call);
    wait_for_python_turn();
    return result;
}

void fp_fast_call_clear(fp_fast_call *call)
{
    free(call->output);
    free(call->stderr_output);
    free(call->diag);
    call->output = call->stderr_output = call->diag = NULL;
    call->output_len = call->output_cap = call->stderr_len = call->stderr_cap = 0;
    call->diag_len = call->diag_cap = 0;
}

void fp_fast_calls_fill(fp_fast_call *calls, size_t n, const fp_fast_call *proto)
{
    for (size_t i = 0; i < n; i++) {
        fp_fast_call *call = &calls[i];
        if (call->argv) {
            continue;
        }
        call->script_path = proto->script_path;
        call->code = proto->code;
        call->env = proto->env;
        call->env_pairs = proto->env_pairs;
        call->argv = proto->argv;
        call->argc = proto->argc;
        call->output_limit = proto->output_limit;
        call->stdin_data = proto->stdin_data;
        call->stdin_len = proto->stdin_len;
    }
}

typedef struct {
    fp_pool *pool;
    fp_fast_call *calls;
    size_t n, chunk;
    _Atomic size_t attention;
    _Alignas(64) _Atomic size_t next; /* the one line the workers write: alone on it */
} fast_map;

/* A PHP thread a batch worker keeps between items.  fp_fast_execute() gives its member back
 * to the pool it is handed: a worker hands it `own`, a private pool whose only member is the
 * runtime pool's member `id`, so that an item costs no operation on the shared pool (its mutex
 * and cache lines were the batch's contention point).  The member goes back to the runtime's
 * pool when fp_pool_wanted() says so (a waiter in line, a close), and at the end. */
typedef struct {
    fp_pool *own;
    int id;     /* in the runtime's pool, < 0: none */
    int own_id; /* the same interpreter's id in `own` */
} kept_member;

/* Returns 1 when `last` (the item that ran last on it) needs Python's attention now. */
static int map_give_back(fast_map *m, kept_member *k, fp_fast_call *last)
{
    int given_up = fp_pool_release(m->pool, k->id);
    fp_pool_free(k->own);
    k->own = NULL;
    k->id = -1;
    if (!given_up) {
        return 0;
    }
    last->given_up = 1; /* shut down meanwhile: Python settles the thread with this item */
    return !last->diag_count;
}

static int map_take(fast_map *m, kept_member *k)
{
    void *item;
    int id = fp_pool_acquire(m->pool, -1, &item);
    if (id < 0) {
        return id;
    }
    k->own = fp_pool_new();
    k->own_id = k->own ? fp_pool_add(k->own, item) : -3;
    if (k->own_id < 0) {
        fp_pool_free(k->own);
        fp_pool_release(m->pool, id); /* out of memory: never given up before it ran */
        return FP_POOL_CLOSED;
    }
    k->id = id;
    return id;
}

static void *map_worker(void *arg)
{
    fast_map *m = arg;
    kept_member k = {NULL, -1, -1};
    fp_fast_call *last = NULL;
    size_t start, attention = 0;
    /* Items are claimed a chunk at a time (one shared write per chunk), in order within it. */
    while ((start = atomic_fetch_add(&m->next, m->chunk)) < m->n) {
        size_t end = start + m->chunk < m->n ? start + m->chunk : m->n;
        for (size_t i = start; i < end; i++) {
            fp_fast_call *call = &m->calls[i];
            call->copy_small_output = 1;
            if (k.id >= 0 && fp_pool_wanted(m->pool)) {
                attention += map_give_back(m, &k, last); /* FIFO: to the first in line */
            }
            int member = k.id >= 0 ? k.id : map_take(m, &k);
            if (member >= 0) {
                /* Out of `own` (uncontended), as fp_fast_execute puts it back there. */
                fp_pool_acquire(k.own, 0, NULL);
                member = fp_fast_execute(k.own, k.own_id, call);
                if (member >= 0) {
                    member = k.id;
                }
                last = call;
            }
            call->member = member;
            attention += call->member < 0 || call->diag_count;
        }
    }
    if (k.id >= 0) {
        attention += map_give_back(m, &k, last);
    }
    atomic_fetch_add(&m->attention, attention);
    return NULL;
}

size_t fp_fast_map(fp_pool *pool, fp_fast_call *calls, size_t n, int threads)
{
    pthread_t helpers[64];
    int started = 0;
    if (threads > 64) {
        threads = 64;
    }
    /* Chunks of 1/16 of a worker's share, at most 16 items: the last chunks even out the
     * workers' ends (16 hello.php are ~0.15 ms), and claims stay rare. */
    size_t chunk = n / ((size_t)(threads > 0 ? threads : 1) * 16);
    fast_map m = {pool, calls, n, chunk < 1 ? 1 : chunk > 16 ? 16 : chunk, 0, 0};
    for (int t = 1; t < threads && (size_t)t < n; t++) {
        if (pthread_create(&helpers[started], NULL, map_worker, &m) == 0) {
            started++;
        }
    }
    map_worker(&m); /* the calling thread is one of the workers */
    for (int t = 0; t < started; t++) {
        pthread_join(helpers[t], NULL);
    }
    return atomic_load(&m.attention);
}

void fp_fast_calls_clear(fp_fast_call *calls, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        fp_fast_call_clear(&calls[i]);
    }
}

/* ---- asyncio: a worker pool, completion through an eventfd -------------------------------- */

/* An idle worker exits after this long: a loop that stops submitting leaves no thread behind. */
#define WORKER_IDLE_NS 2000000000LL
#define CANCEL_POLL_NS 50000000LL
#define ASYNC_STALL_NS 5000000u /* as pool.c's STALL_NS: FrankenPHP's 5 ms */

struct fp_async {
    _Atomic int refs; /* the Python side's, and one per worker thread */
    int fd;
    pthread_mutex_t mu;
    pthread_cond_t work;
    fp_fast_call *jobs, *jobs_tail; /* submitted, not taken by a worker yet (queued of them) */
    fp_fast_call *done, *done_tail; /* completed, not taken by Python yet */
    int queued, workers, idle, closed;
    int starting; /* workers started that have not looked at the queue yet */
    uint64_t stalled; /* jobs a worker took after ASYNC_STALL_NS or more in the queue */
};

fp_async *fp_async_new(void)
{
    fp_async *a = calloc(1, sizeof(*a));
    if (!a) {
        return NULL;
    }
    a->fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (a->fd < 0) {
        free(a);
        return NULL;
    }
    pthread_mutex_init(&a->mu, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&a->work, &attr);
    pthread_condattr_destroy(&attr);
    atomic_init(&a->refs, 1);
    return a;
}

int fp_async_fd(fp_async *a)
{
    return a->fd;
}

static void async_unref(fp_async *a)
{
    /* The last reference closes the eventfd: never while a worker could still write to it (a
     * closed fd's number may be reused by then). */
    if (atomic_fetch_sub(&a->refs, 1) == 1) {
        close(a->fd);
        pthread_mutex_destroy(&a->mu);
        pthread_cond_destroy(&a->work);
        free(a);
    }
}

void fp_async_release(fp_async *a)
{
    pthread_mutex_lock(&a->mu);
    a->closed = 1;
    pthread_cond_broadcast(&a->work);
    pthread_mutex_unlock(&a->mu);
    async_unref(a);
}

/* Queue for a PHP thread (looking at the cancel flag between slices of the wait), then run. */
static int async_run(fp_fast_call *call)
{
    fp_pool *pool = call->async_pool;
    call->copy_small_output = 1;
    int member;
    fp_pool_waiter *w = fp_pool_enqueue(pool, &member);
    while (w && member == FP_POOL_TIMEOUT) {
        if (__atomic_load_n(&call->cancel, __ATOMIC_RELAXED)) {
            member = fp_pool_withdraw(pool, w);
            if (member == FP_POOL_TIMEOUT) {
                member = FP_FAST_CANCELLED;
            }
            break;
        }
        member = fp_pool_wait(pool, w, CANCEL_POLL_NS);
    }
    fp_pool_waiter_free(w);
    if (member >= 0 && __atomic_load_n(&call->cancel, __ATOMIC_RELAXED)) {
        call->given_up = fp_pool_release(pool, member);
        return call->given_up ? member : FP_FAST_CANCELLED;
    }
    if (member < 0) {
        return member;
    }
    if (call->run_handle) {
        /* Python runs the request here (cffi takes the GIL per callback; PHP runs without it).
         * A long-lived worker keeps the Python thread state cffi made for it. */
        fp_py_run_request(call->run_handle, member);
        call->given_up = fp_pool_release(pool, member);
        return member;
    }
    return fp_fast_execute(pool, member, call);
}

static void *async_worker(void *arg)
{
    fp_async *a = arg;
    pthread_mutex_lock(&a->mu);
    a->starting--;
    for (;;) {
        if (!a->jobs && !a->closed) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            uint64_t deadline = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec + WORKER_IDLE_NS;
            ts.tv_sec = (time_t)(deadline / 1000000000u);
            ts.tv_nsec = (long)(deadline % 1000000000u);
            a->idle++;
            while (!a->jobs && !a->closed && pthread_cond_timedwait(&a->work, &a->mu, &ts) == 0) {
            }
            a->idle--;
        }
        fp_fast_call *call = a->jobs;
        if (!call) {
            break; /* idle for WORKER_IDLE_NS, or released */
        }
        a->jobs = call->async_next;
        a->queued--;
        if (fp_monotonic_ns() - call->async_since >= ASYNC_STALL_NS) {
            a->stalled++;
        }
        pthread_mutex_unlock(&a->mu);

        call->member = async_run(call);

        pthread_mutex_lock(&a->mu);
        call->async_next = NULL;
        if (a->done_tail) {
            a->done_tail->async_next = call;
        } else {
            a->done = call;
        }
        a->done_tail = call;
        pthread_mutex_unlock(&a->mu);
        uint64_t one = 1;
        ssize_t written = write(a->fd, &one, sizeof one);
        (void)written; /* an eventfd counter cannot overflow by ones here */
        /* The write wakes the loop thread, often onto this CPU (wake-affine), where it would
         * wait up to a time slice behind this worker's next PHP run while the other core runs
         * PHP too.  Yielding moves our EEVDF deadline on, so a runnable loop thread goes first
         * (with nobody else runnable this returns at once, ~1 us).  Measured (work.php, 8 in
         * flight, 2 threads): the loop's longest block ~1-2 ms without, mostly < 1 ms with;
         * yielding only when the loop had taken every earlier completion helped less (it may
         * be awake and still waiting for a core). */
        sched_yield();
        pthread_mutex_lock(&a->mu);
    }
    a->workers--;
    pthread_mutex_unlock(&a->mu);
    async_unref(a);
    return NULL;
}

/* Under a->mu: start workers while the queued jobs outnumber the idle and starting workers (a
 * signalled one has not taken its job yet) and the workers are fewer than PHP threads.
 * -1 when none could be started and none runs (nobody would ever take the jobs). */
static int start_workers(fp_async *a, fp_pool *pool)
{
    int limit = fp_pool_size(pool);
    while (a->queued > a->idle + a->starting && a->workers < (limit > 0 ? limit : 1)) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        atomic_fetch_add(&a->refs, 1);
        int started = pthread_create(&t, &attr, async_worker, a) == 0;
        pthread_attr_destroy(&attr);
        if (!started) {
            atomic_fetch_sub(&a->refs, 1);
            return a->workers ? 0 : -1;
        }
        a->workers++;
        a->starting++;
    }
    return 0;
}

int fp_async_submit(fp_async *a, fp_pool *pool, fp_fast_call *call)
{
    call->async = 1;
    call->async_pool = pool;
    call->async_next = NULL;
    call->async_since = fp_monotonic_ns();
    pthread_mutex_lock(&a->mu);
    if (a->jobs) {
        a->jobs_tail->async_next = call;
    } else {
        a->jobs = call;
    }
    a->jobs_tail = call;
    a->queued++;
    if (a->idle > 0) {
        pthread_cond_signal(&a->work);
    }
    int rc = start_workers(a, pool);
    if (rc < 0) { /* the only job (see start_workers): take it back */
        a->jobs = NULL;
        a->queued = 0;
    }
    pthread_mutex_unlock(&a->mu);
    return rc;
}

void fp_async_kick(fp_async *a, fp_pool *pool)
{
    pthread_mutex_lock(&a->mu);
    start_workers(a, pool);
    pthread_mutex_unlock(&a->mu);
}

uint64_t fp_async_stalls(fp_async *a, uint64_t *oldest_wait_ns)
{
    uint64_t now = fp_monotonic_ns();
    pthread_mutex_lock(&a->mu);
    uint64_t stalled = a->stalled;
    uint64_t since = a->jobs ? a->jobs->async_since : now;
    pthread_mutex_unlock(&a->mu);
    *oldest_wait_ns = now > since ? now - since : 0;
    return stalled;
}

size_t fp_async_take(fp_async *a, fp_fast_call **out, size_t max)
{
    size_t n = 0;
    pthread_mutex_lock(&a->mu);
    while (n < max && a->done) {
        out[n++] = a->done;
        a->done = a->done->async_next;
    }
    if (!a->done) {
        a->done_tail = NULL;
    }
    pthread_mutex_unlock(&a->mu);
    return n;
}
