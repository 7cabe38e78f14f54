/* Process-wide state of background workers; see worker_state.h. */
#define _GNU_SOURCE
#include "worker_state.h"
#include "clock.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { T_QUEUED, T_INFLIGHT, T_DONE, T_FAILED };

typedef struct task {
    int64_t id;
    int slot;
    int state;
    int notify;    /* a Python future waits: call fp_py_task_done() */
    int abandoned; /* the sender gave up: free it when the worker answers */
    fp_ws_ctx *taker;
    fp_blob *payload;
    fp_blob *result;
    char *error;
    struct task *qnext; /* the slot's queue (T_QUEUED) */
    struct task *next;  /* every task of the domain */
} task;

typedef struct slot {
    int scope;
    char *name;
    int max_queued;
    int started, ready_once, halted, boot_failures, exit_status, attempts;
    char *last_error;
    fp_blob *vars;
    task *head, *tail; /* queued tasks, FIFO */
    int64_t queued, completed, failed, publications;
} slot;

struct fp_ws_ctx {
    fp_ws_domain *domain;
    int scope;
    int slot; /* -1 unless the context is a thread of a background worker */
    int wake_fd;
    fp_ws_ctx *next; /* the domain's contexts */
};

/* A thread of worker `from` waiting for worker `to` to be ready (cycle detection). */
typedef struct wait_edge {
    int from, to;
    struct wait_edge *next;
} wait_edge;

struct fp_ws_domain {
    pthread_mutex_t mu;
    pthread_cond_t cond; /* CLOCK_MONOTONIC; broadcast on every change waiters look at */
    int64_t token;
    slot **slots;
    int nslots, cap;
    task *tasks;
    int64_t next_id;
    fp_ws_ctx *ctxs;
    wait_edge *waits;
    char *closed; /* reason, once closed */
};

/* ---- blobs ---------------------------------------------------------------------------------- */

fp_blob *fp_blob_new(const char *data, size_t len)
{
    fp_blob *blob = malloc(sizeof(*blob) + len); /* data[1] holds the final NUL */
    if (!blob) {
        return NULL;
    }
    blob->refs = 1;
    blob->len = len;
    if (data) {
        memcpy(blob->data, data, len);
    }
    blob->data[len] = 0;
    return blob;
}

static fp_blob *blob_ref(fp_blob *blob)
{
    if (blob) {
        __atomic_add_fetch(&blob->refs, 1, __ATOMIC_RELAXED);
    }
    return blob;
}

void fp_blob_release(fp_blob *blob)
{
    if (blob && __atomic_sub_fetch(&blob->refs, 1, __ATOMIC_ACQ_REL) == 0) {
        free(blob);
    }
}

/* ---- helpers -------------------------------------------------------------------------------- */

static void fail(char *err, size_t err_len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, err_len, fmt, ap);
    va_end(ap);
}

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

/* Wait on the domain's condition; returns ETIMEDOUT past the deadline (NULL: none), EINTR once
 * *stop is set.  A condition wait does not return for a signal, so a waiter that can be stopped
 * (a PHP thread: fp_interrupt() sets its flag) waits in slices of STOP_SLICE seconds. */
#define STOP_SLICE 0.02
static int domain_wait(fp_ws_domain *d, const struct timespec *deadline, const int *stop)
{
    if (stop && __atomic_load_n(stop, __ATOMIC_ACQUIRE)) {
        return EINTR;
    }
    if (!stop) {
        return deadline ? pthread_cond_timedwait(&d->cond, &d->mu, deadline) : pthread_cond_wait(&d->cond, &d->mu);
    }
    struct timespec slice = fp_clock_after(CLOCK_MONOTONIC, STOP_SLICE);
    int last = !deadline || slice.tv_sec < deadline->tv_sec ||
               (slice.tv_sec == deadline->tv_sec && slice.tv_nsec < deadline->tv_nsec);
    int rc = pthread_cond_timedwait(&d->cond, &d->mu, last ? &slice : deadline);
    return rc == ETIMEDOUT && last ? 0 : rc; /* a slice ended: not the deadline */
}

static task *find_task(fp_ws_domain *d, int64_t id, task ***link)
{
    for (task **p = &d->tasks; *p; p = &(*p)->next) {
        if ((*p)->id == id) {
            if (link) {
                *link = p;
            }
            return *p;
        }
    }
    return NULL;
}

static void free_task(fp_ws_domain *d, task *t)
{
    task **link = NULL;
    if (find_task(d, t->id, &link)) {
        *link = t->next;
    }
    fp_blob_release(t->payload);
    fp_blob_release(t->result);
    free(t->error);
    free(t);
}

/* Take queued task t out of its slot's queue (under the lock). */
static void unqueue(slot *s, task *t)
{
    task **q = &s->head;
    while (*q && *q != t) {
        q = &(*q)->qnext;
    }
    if (*q) {
        *q = t->qnext;
    }
    s->tail = NULL;
    for (task *u = s->head; u; u = u->qnext) {
        s->tail = u;
    }
    s->queued--;
}

/* Finish task t (under the lock).  Returns its id if a Python future must be told, else 0. */
static int64_t settle(fp_ws_domain *d, task *t, fp_blob *result, const char *error)
{
    slot *s = d->slots[t->slot];
    if (error) {
        s->failed++;
    } else {
        s->completed++;
    }
    if (t->abandoned) {
        fp_blob_release(result);
        free_task(d, t);
        return 0;
    }
    t->state = error ? T_FAILED : T_DONE;
    t->result = result;
    t->error = dup_or_null(error);
    fp_blob_release(t->payload);
    t->payload = NULL;
    return t->notify ? t->id : 0;
}

static void notify_python(int64_t token, const int64_t *ids, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        fp_py_task_done(token, ids[i]);
    }
}

/* Fail every task matching (slot, state, taker) with "<prefix>: <reason>"; the ids that Python
 * waits for are returned in a malloc'd array (count in *n).  Under the lock. */
static int64_t *fail_tasks(fp_ws_domain *d, int slot_index, int state, fp_ws_ctx *taker,
                           const char *reason, size_t *n)
{
    int64_t *ids = NULL;
    size_t count = 0, cap = 0;
    task *t = d->tasks;
    while (t) {
        task *next = t->next;
        if ((slot_index < 0 || t->slot == slot_index) && t->state == state && (!taker || t->taker == taker)) {
            slot *s = d->slots[t->slot];
            if (state == T_QUEUED) {
                unqueue(s, t);
            }
            char message[1024];
            snprintf(message, sizeof(message), "task %lld: background worker '%s' %s", (long long)t->id,
                     s->name, reason);
            int64_t id = settle(d, t, NULL, message);
            if (id) {
                if (count == cap) {
                    cap = cap ? cap * 2 : 8;
                    int64_t *grown = realloc(ids, cap * sizeof(*ids));
                    if (!grown) {
                        t = next;
                        continue; /* the future then only learns it at its own timeout */
                    }
                    ids = grown;
                }
                ids[count++] = id;
            }
        }
        t = next;
    }
    *n = count;
    return ids;
}

/* ---- domains and slots ---------------------------------------------------------------------- */

fp_ws_domain *fp_ws_domain_new(int64_t token)
{
    fp_ws_domain *d = calloc(1, sizeof(*d));
    if (!d) {
        return NULL;
    }
    pthread_mutex_init(&d->mu, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&d->cond, &attr);
    pthread_condattr_destroy(&attr);
    d->token = token;
    d->next_id = 1;
    return d;
}

void fp_ws_domain_close(fp_ws_domain *d, const char *reason)
{
    pthread_mutex_lock(&d->mu);
    if (!d->closed) {
        d->closed = strdup(reason ? reason : "runtime stopped");
    }
    size_t nq = 0, ni = 0;
    int64_t *queued = fail_tasks(d, -1, T_QUEUED, NULL, d->closed, &nq);
    int64_t *inflight = fail_tasks(d, -1, T_INFLIGHT, NULL, d->closed, &ni);
    pthread_cond_broadcast(&d->cond);
    int64_t token = d->token;
    pthread_mutex_unlock(&d->mu);
    notify_python(token, queued, nq);
    notify_python(token, inflight, ni);
    free(queued);
    free(inflight);
    /* The domain itself stays allocated: contexts of leaked threads may still point at it. */
}

int fp_ws_slot_add(fp_ws_domain *d, int scope, const char *name, int max_queued)
{
    slot *s = calloc(1, sizeof(*s));
    if (!s || !(s->name = strdup(name))) {
        free(s);
        return -1;
    }
    s->scope = scope;
    s->max_queued = max_queued;
    pthread_mutex_lock(&d->mu);
    if (d->nslots == d->cap) {
        int cap = d->cap ? d->cap * 2 : 16;
        slot **grown = realloc(d->slots, (size_t)cap * sizeof(*grown));
        if (!grown) {
            pthread_mutex_unlock(&d->mu);
            free(s->name);
            free(s);
            return -1;
        }
        d->slots = grown;
        d->cap = cap;
    }
    int index = d->nslots++;
    d->slots[index] = s;
    pthread_mutex_unlock(&d->mu);
    return index;
}

void fp_ws_slot_started(fp_ws_domain *d, int index)
{
    pthread_mutex_lock(&d->mu);
    slot *s = d->slots[index];
    s->started = 1;
    s->halted = 0;
    s->boot_failures = 0;
    pthread_cond_broadcast(&d->cond);
    pthread_mutex_unlock(&d->mu);
}

void fp_ws_slot_ready(fp_ws_domain *d, int index)
{
    pthread_mutex_lock(&d->mu);
    d->slots[index]->ready_once = 1;
    d->slots[index]->boot_failures = 0;
    pthread_cond_broadcast(&d->cond);
    pthread_mutex_unlock(&d->mu);
}

void fp_ws_slot_failed(fp_ws_domain *d, int index, int halted, int exit_status, int attempts, const char *error)
{
    pthread_mutex_lock(&d->mu);
    slot *s = d->slots[index];
    s->halted = s->halted || halted;
    s->boot_failures++;
    s->exit_status = exit_status;
    s->attempts = attempts;
    free(s->last_error);
    s->last_error = dup_or_null(error);
    pthread_cond_broadcast(&d->cond);
    pthread_mutex_unlock(&d->mu);
}

void fp_ws_fail_queued(fp_ws_domain *d, int index, const char *reason)
{
    pthread_mutex_lock(&d->mu);
    size_t n = 0;
    int64_t *ids = fail_tasks(d, index, T_QUEUED, NULL, reason, &n);
    pthread_cond_broadcast(&d->cond);
    int64_t token = d->token;
    pthread_mutex_unlock(&d->mu);
    notify_python(token, ids, n);
    free(ids);
}

void fp_ws_slot_counts(fp_ws_domain *d, int index, int64_t counts[4])
{
    pthread_mutex_lock(&d->mu);
    slot *s = d->slots[index];
    counts[0] = s->queued;
    counts[1] = s->completed;
    counts[2] = s->failed;
    counts[3] = s->publications;
    pthread_mutex_unlock(&d->mu);
}

fp_ws_ctx *fp_ws_ctx_new(fp_ws_domain *d, int scope, int slot_index)
{
    fp_ws_ctx *ctx = calloc(1, sizeof(*ctx));
    if (!ctx) {
        return NULL;
    }
    ctx->domain = d;
    ctx->scope = scope;
    ctx->slot = slot_index;
    ctx->wake_fd = -1;
    pthread_mutex_lock(&d->mu);
    ctx->next = d->ctxs;
    d->ctxs = ctx; /* contexts live as long as the domain */
    pthread_mutex_unlock(&d->mu);
    return ctx;
}

/* Make every running thread of worker `index` see a readable handle (one byte per task: a
 * script that handles one task per wake-up never misses one).  The pipes are non-blocking: a
 * full pipe already wakes its reader. */
static void wake_slot(fp_ws_domain *d, int index)
{
    for (fp_ws_ctx *c = d->ctxs; c; c = c->next) {
        if (c->slot == index && c->wake_fd >= 0) {
            ssize_t unused = write(c->wake_fd, "t", 1);
            (void)unused;
        }
    }
}

void fp_ws_attach(fp_ws_ctx *ctx, int wake_fd)
{
    if (wake_fd >= 0) {
        fcntl(wake_fd, F_SETFL, fcntl(wake_fd, F_GETFL) | O_NONBLOCK);
    }
    fp_ws_domain *d = ctx->domain;
    pthread_mutex_lock(&d->mu);
    ctx->wake_fd = wake_fd;
    if (wake_fd >= 0 && ctx->slot >= 0) {
        /* tasks queued while no run was attached: one byte each */
        for (task *t = d->slots[ctx->slot]->head; t; t = t->qnext) {
            ssize_t unused = write(wake_fd, "t", 1);
            (void)unused;
        }
    }
    pthread_mutex_unlock(&d->mu);
}

void fp_ws_run_ended(fp_ws_ctx *ctx, const char *reason)
{
    fp_ws_domain *d = ctx->domain;
    pthread_mutex_lock(&d->mu);
    ctx->wake_fd = -1;
    size_t n = 0;
    int64_t *ids = ctx->slot >= 0 ? fail_tasks(d, ctx->slot, T_INFLIGHT, ctx, reason, &n) : NULL;
    pthread_cond_broadcast(&d->cond);
    int64_t token = d->token;
    pthread_mutex_unlock(&d->mu);
    notify_python(token, ids, n);
    free(ids);
}

/* ---- lookup, start, readiness ----------------------------------------------------------------- */

/* `name` in `scope`, else in the global scope; scope -1 (Python, classic requests) also takes
 * it from any scope. */
static int lookup(fp_ws_domain *d, int scope, const char *name, size_t name_len)
{
    for (int pass = 0; pass < 3; pass++) {
        int want = pass == 0 ? scope : 0;
        if (pass == 2 && scope >= 0) {
            break;
        }
        for (int i = 0; i < d->nslots; i++) {
            slot *s = d->slots[i];
            if ((s->scope == want || pass == 2) && strlen(s->name) == name_len &&
                memcmp(s->name, name, name_len) == 0) {
                return i;
            }
        }
    }
    return -1;
}

/* Whether worker `from` (not ready yet) waiting for `to` closes a cycle of booting workers. */
static int closes_cycle(fp_ws_domain *d, int from, int to, int depth)
{
    if (to == from) {
        return 1;
    }
    if (depth > d->nslots || d->slots[to]->ready_once) {
        return 0;
    }
    for (wait_edge *w = d->waits; w; w = w->next) {
        if (w->from == to && closes_cycle(d, from, w->to, depth + 1)) {
            return 1;
        }
    }
    return 0;
}

static void describe_failure(slot *s, const char *what, char *err, size_t err_len)
{
    fail(err, err_len, "background worker '%s' %s: exit status %d after %d attempt%s; last error: %s",
         s->name, what, s->exit_status, s->attempts, s->attempts == 1 ? "" : "s",
         s->last_error ? s->last_error : "(none)");
}

int fp_ws_acquire(fp_ws_ctx *ctx, const char *name, size_t name_len, double timeout, int flags, const int *stop,
                  char *err, size_t err_len)
{
    fp_ws_domain *d = ctx->domain;
    pthread_mutex_lock(&d->mu);
    int index = lookup(d, ctx->scope, name, name_len);
    int started = index >= 0 && d->slots[index]->started;
    pthread_mutex_unlock(&d->mu);
    if (!started) {
        /* Python starts it (lazy worker, or a new name for a catch-all): no lock held, since it
         * takes the GIL and may call back into this file. */
        char *copy = strndup(name, name_len);
        if (!copy) {
            fail(err, err_len, "out of memory");
            return -1;
        }
        index = fp_py_ws_start(d->token, ctx->scope, copy, err, err_len);
        free(copy);
        if (index < 0) {
            return -1;
        }
    }
    struct timespec deadline;
    if (timeout >= 0) {
        deadline = fp_clock_after(CLOCK_MONOTONIC, timeout);
    }
    pthread_mutex_lock(&d->mu);
    slot *s = d->slots[index];
    wait_edge edge = {ctx->slot, index, NULL};
    int waiting = 0, rc = 0;
    for (;;) {
        if (d->closed) {
            fail(err, err_len, "background worker '%s': %s", s->name, d->closed);
            rc = -1;
            break;
        }
        if (s->halted && (!s->ready_once || (flags & FP_WS_RUNNING))) {
            describe_failure(s, "halted", err, err_len);
            rc = -1;
            break;
        }
        if (s->ready_once) {
            break;
        }
        if ((flags & FP_WS_FAIL_FAST) && s->boot_failures > 0) {
            describe_failure(s, "failed to boot", err, err_len);
            rc = -1;
            break;
        }
        if (!waiting && ctx->slot >= 0 && !d->slots[ctx->slot]->ready_once) {
            if (closes_cycle(d, ctx->slot, index, 0)) {
                fail(err, err_len,
                     "wait cycle: background worker '%s' waits for '%s', which (indirectly) waits for it "
                     "before being ready", d->slots[ctx->slot]->name, s->name);
                rc = -1;
                break;
            }
            edge.next = d->waits;
            d->waits = &edge;
            waiting = 1;
        }
        int waited = domain_wait(d, timeout >= 0 ? &deadline : NULL, stop);
        if (waited == EINTR) {
            fail(err, err_len, "stopped while waiting for background worker '%s' to be ready", s->name);
            rc = -1;
            break;
        }
        if (waited == ETIMEDOUT && !s->ready_once && !s->halted) {
            fail(err, err_len, "timed out after %g s waiting for background worker '%s' to be ready", timeout,
                 s->name);
            rc = -1;
            break;
        }
    }
    if (waiting) {
        for (wait_edge **p = &d->waits; *p; p = &(*p)->next) {
            if (*p == &edge) {
                *p = edge.next;
                break;
            }
        }
    }
    pthread_mutex_unlock(&d->mu);
    return rc < 0 ? -1 : index;
}

/* ---- vars ----------------------------------------------------------------------------------- */

int fp_ws_set_vars(fp_ws_ctx *ctx, fp_blob *vars, char *err, size_t err_len)
{
    fp_ws_domain *d = ctx->domain;
    if (ctx->slot < 0) {
        fp_blob_release(vars);
        fail(err, err_len, "frankenphp_set_vars() can only be called from a background worker");
        return -1;
    }
    pthread_mutex_lock(&d->mu);
    slot *s = d->slots[ctx->slot];
    fp_blob *old = s->vars;
    s->vars = vars;
    s->publications++;
    pthread_mutex_unlock(&d->mu);
    fp_blob_release(old);
    return 0;
}

fp_blob *fp_ws_get_vars(fp_ws_domain *d, int index)
{
    pthread_mutex_lock(&d->mu);
    fp_blob *blob = blob_ref(d->slots[index]->vars);
    pthread_mutex_unlock(&d->mu);
    return blob;
}

/* ---- tasks ---------------------------------------------------------------------------------- */

int64_t fp_ws_task_submit(fp_ws_domain *d, int index, fp_blob *payload, int notify, char *err, size_t err_len)
{
    task *t = calloc(1, sizeof(*t));
    if (!t) {
        fp_blob_release(payload);
        fail(err, err_len, "out of memory");
        return 0;
    }
    pthread_mutex_lock(&d->mu);
    slot *s = d->slots[index];
    const char *refused = NULL;
    if (d->closed) {
        refused = d->closed;
    } else if (s->halted) {
        refused = "halted";
    } else if (s->queued >= s->max_queued) {
        fail(err, err_len, "the task queue of background worker '%s' is full (max_queued_tasks=%d)", s->name,
             s->max_queued);
    }
    if (refused || s->queued >= s->max_queued) {
        if (refused) {
            fail(err, err_len, "background worker '%s' takes no tasks: %s", s->name, refused);
        }
        pthread_mutex_unlock(&d->mu);
        fp_blob_release(payload);
        free(t);
        return 0;
    }
    t->id = d->next_id++;
    t->slot = index;
    t->state = T_QUEUED;
    t->notify = notify;
    t->payload = payload;
    t->next = d->tasks;
    d->tasks = t;
    if (s->tail) {
        s->tail->qnext = t;
    } else {
        s->head = t;
    }
    s->tail = t;
    s->queued++;
    wake_slot(d, index);
    int64_t id = t->id;
    pthread_mutex_unlock(&d->mu);
    return id;
}

static int task_wait(fp_ws_domain *d, int64_t id, double timeout, const int *stop, int withdraw, fp_blob **result,
                     char *err, size_t err_len);

int fp_ws_task_wait(fp_ws_domain *d, int64_t id, double timeout, const int *stop, fp_blob **result, char *err,
                    size_t err_len)
{
    return task_wait(d, id, timeout, stop, 1, result, err, err_len);
}

int fp_ws_task_poll(fp_ws_domain *d, int64_t id, double timeout, fp_blob **result, char *err, size_t err_len)
{
    return task_wait(d, id, timeout, NULL, 0, result, err, err_len);
}

static int task_wait(fp_ws_domain *d, int64_t id, double timeout, const int *stop, int withdraw, fp_blob **result,
                     char *err, size_t err_len)
{
    struct timespec deadline;
    if (timeout >= 0) {
        deadline = fp_clock_after(CLOCK_MONOTONIC, timeout);
    }
    *result = NULL;
    pthread_mutex_lock(&d->mu);
    task *t = find_task(d, id, NULL);
    int stopped = 0;
    while (t && (t->state == T_QUEUED || t->state == T_INFLIGHT) && !t->abandoned) {
        int waited = timeout == 0 ? ETIMEDOUT : domain_wait(d, timeout > 0 ? &deadline : NULL, stop);
        if (waited == ETIMEDOUT || waited == EINTR) {
            stopped = waited == EINTR;
            break;
        }
        t = find_task(d, id, NULL);
    }
    int rc;
    if (!t || t->abandoned) {
        fail(err, err_len, "task %lld is unknown (already collected or withdrawn)", (long long)id);
        rc = FP_TASK_FAILED;
    } else if (t->state == T_DONE) {
        *result = t->result;
        t->result = NULL;
        free_task(d, t);
        rc = FP_TASK_DONE;
    } else if (t->state == T_FAILED) {
        fail(err, err_len, "%s", t->error ? t->error : "task failed");
        free_task(d, t);
        rc = FP_TASK_FAILED;
    } else if (!withdraw) {
        err[0] = 0; /* still pending: the caller waits again */
        rc = FP_TASK_PENDING;
    } else {
        slot *s = d->slots[t->slot];
        if (stopped) {
            fail(err, err_len, "stopped while waiting for task %lld of background worker '%s'", (long long)id,
                 s->name);
        } else {
            fail(err, err_len, "timed out after %g s waiting for task %lld of background worker '%s'", timeout,
                 (long long)id, s->name);
        }
        if (t->state == T_QUEUED) {
            unqueue(s, t); /* withdrawn: nobody will ever want its answer */
            free_task(d, t);
        } else {
            t->abandoned = 1;
        }
        rc = FP_TASK_PENDING;
    }
    pthread_mutex_unlock(&d->mu);
    return rc;
}

int64_t fp_ws_task_receive(fp_ws_ctx *ctx, fp_blob **payload)
{
    fp_ws_domain *d = ctx->domain;
    *payload = NULL;
    if (ctx->slot < 0) {
        return -1;
    }
    pthread_mutex_lock(&d->mu);
    slot *s = d->slots[ctx->slot];
    task *t = s->head;
    int64_t id = 0;
    if (t) {
        s->head = t->qnext;
        if (!s->head) {
            s->tail = NULL;
        }
        s->queued--;
        t->qnext = NULL;
        t->state = T_INFLIGHT;
        t->taker = ctx;
        *payload = blob_ref(t->payload);
        id = t->id;
    }
    pthread_mutex_unlock(&d->mu);
    return id;
}

int fp_ws_task_finish(fp_ws_ctx *ctx, int64_t id, fp_blob *result, const char *message, char *err, size_t err_len)
{
    fp_ws_domain *d = ctx->domain;
    pthread_mutex_lock(&d->mu);
    task *t = find_task(d, id, NULL);
    if (ctx->slot < 0 || !t || t->state != T_INFLIGHT || t->slot != ctx->slot) {
        pthread_mutex_unlock(&d->mu);
        fp_blob_release(result);
        fail(err, err_len, "no task %lld is in progress in this background worker", (long long)id);
        return -1;
    }
    int64_t notify = settle(d, t, message ? NULL : result, message);
    if (message) {
        fp_blob_release(result);
    }
    pthread_cond_broadcast(&d->cond);
    int64_t token = d->token;
    pthread_mutex_unlock(&d->mu);
    if (notify) {
        fp_py_task_done(token, notify);
    }
    return 0;
}

/* ---- the fp_host callbacks ------------------------------------------------------------------ */

int fp_ws_host_ensure(void *ctx, const char *name, size_t name_len, double timeout, int flags, const int *stop,
                      char *err, size_t err_len)
{
    return fp_ws_acquire(ctx, name, name_len, timeout, flags | FP_WS_RUNNING, stop, err, err_len) < 0 ? -1 : 0;
}

int fp_ws_host_set_vars(void *ctx, const char *data, size_t len, char *err, size_t err_len)
{
    fp_blob *blob = fp_blob_new(data, len);
    if (!blob) {
        fail(err, err_len, "out of memory");
        return -1;
    }
    return fp_ws_set_vars(ctx, blob, err, err_len);
}

fp_blob *fp_ws_host_get_vars(void *ctx, const char *name, size_t name_len, double timeout, int flags,
                             const int *stop, char *err, size_t err_len)
{
    err[0] = 0;
    int index = fp_ws_acquire(ctx, name, name_len, timeout, flags, stop, err, err_len);
    return index < 0 ? NULL : fp_ws_get_vars(((fp_ws_ctx *)ctx)->domain, index);
}

fp_blob *fp_ws_host_send_task(void *ctx, const char *name, size_t name_len, const char *payload, size_t len,
                              double timeout, int flags, const int *stop, char *err, size_t err_len)
{
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    fp_ws_domain *d = ((fp_ws_ctx *)ctx)->domain;
    double total = timeout;
    int index = fp_ws_acquire(ctx, name, name_len, timeout, flags, stop, err, err_len);
    if (index < 0) {
        return NULL;
    }
    fp_blob *blob = fp_blob_new(payload, len);
    if (!blob) {
        fail(err, err_len, "out of memory");
        return NULL;
    }
    int64_t id = fp_ws_task_submit(d, index, blob, 0, err, err_len);
    if (!id) {
        return NULL;
    }
    if (timeout >= 0) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        double spent = (double)(now.tv_sec - start.tv_sec) + (double)(now.tv_nsec - start.tv_nsec) / 1e9;
        timeout = timeout > spent ? timeout - spent : 0.001;
    }
    fp_blob *result = NULL;
    if (fp_ws_task_wait(d, id, timeout, stop, &result, err, err_len) != FP_TASK_DONE) {
        if (strncmp(err, "timed out", 9) == 0) { /* the caller's timeout, not what was left of it */
            fail(err, err_len, "timed out after %g s waiting for task %lld of background worker '%.*s'", total,
                 (long long)id, (int)name_len, name);
        }
        return NULL;
    }
    if (!result && !(result = fp_blob_new("N", 1))) {
        fail(err, err_len, "out of memory");
    }
    return result;
}

int64_t fp_ws_host_receive_task(void *ctx, fp_blob **payload)
{
    return fp_ws_task_receive(ctx, payload);
}

int fp_ws_host_finish_task(void *ctx, int64_t id, const char *result, size_t len, const char *message, char *err,
                           size_t err_len)
{
    fp_blob *blob = NULL;
    if (result && !message && !(blob = fp_blob_new(result, len))) {
        fail(err, err_len, "out of memory");
        return -1;
    }
    return fp_ws_task_finish(ctx, id, blob, message, err, err_len);
}
