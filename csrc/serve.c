/* PHP threads serving the native HTTP server; see serve.h. */
#include "serve.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Python's callbacks (frankenpy/execution.py), for what a worker reports once per run. */
int fp_py_output(void *handle, const char *data, size_t len);
void fp_py_log(void *handle, int type, const char *file, uint32_t line, const char *message);
void fp_py_time_limit(void *handle, int64_t seconds, int initial);
void fp_py_worker_ready(void *handle);
void fp_py_stderr_output(void *handle, const char *data, size_t len);

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
} watch_slot;

static pthread_mutex_t watch_mu = PTHREAD_MUTEX_INITIALIZER;
static watch_slot watched = {&watched, &watched, NULL, NULL, NULL};
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
            if (!s->ex) {
                continue;
            }
            int64_t seconds;
            uint64_t deadline = fp_http_exchange_deadline(s->ex, &seconds);
            uint64_t exec_id = __atomic_load_n(&s->script->exec_id, __ATOMIC_RELAXED);
            if (deadline && now >= deadline && exec_id) {
                fp_image_interrupt(s->image, exec_id, seconds, fp_interrupt_signal());
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

/* ---- classic requests ------------------------------------------------------------------------ */

uint64_t fp_serve(fp_http_server *server, fp_image *image, const char *tag, void *worker_ctx,
                  const volatile int *drain)
{
    uint64_t served = 0;
    watch_slot slot = {NULL, NULL, image, NULL, NULL};
    fp_http_exchange *ex;
    while ((ex = fp_http_take(server, 0, drain))) {
        fp_request *req = fp_http_exchange_request(ex, tag);
        req->worker_ctx = worker_ctx;
        slot.script = req;
        if (!slot.next) {
            watch(&slot);
        }
        set_watched_exchange(&slot, ex);
        fp_http_server_busy(server, 1);
        fp_image_execute(image, req);
        fp_http_server_busy(server, -1);
        set_watched_exchange(&slot, NULL);
        /* The exchange copies what it needs, then the glue's buffers go; only then may the loop
         * thread free the exchange (and `req` inside it) once the response is out. */
        fp_http_exchange_finish_keep(ex);
        fp_image_request_clear(image, req);
        fp_http_exchange_release(ex);
        served++;
    }
    if (slot.next) {
        unwatch(&slot);
    }
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
