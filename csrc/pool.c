/* The pool of idle regular PHP threads; see pool.h. */
#include "pool.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { QUEUED, SERVED, CLOSED, WITHDRAWN };

struct fp_pool_waiter {
    fp_pool_waiter *next, *prev;
    pthread_cond_t cond;
    int state; /* under the pool's mutex */
    int id;    /* when SERVED */
    uint64_t since; /* monotonic ns, when it queued */
};

typedef struct {
    void *item;
    uint64_t idle_since; /* monotonic ns, when it last came back */
    int in_pool;         /* 0 once taken out (take_idle, take_all) */
} member;

struct fp_pool {
    pthread_mutex_t mu;
    pthread_cond_t all_idle; /* signalled when a member comes back after close */
    member *members;
    int n_members, cap;
    int *idle; /* a stack of ids: the last one came back most recently */
    int n_idle;
    int size;  /* members in the pool */
    /* Both written under mu, atomically: fp_pool_wanted() reads them without it. */
    int waiting;
    int closed;
    uint64_t stalled; /* waiters served after STALL_NS or more (fp_pool_stalls) */
    fp_pool_waiter queue; /* sentinel of the FIFO list */
};

#define STALL_NS 5000000u /* as FP_HANDOFF_STALL_NS: FrankenPHP's 5 ms */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void init_cond(pthread_cond_t *cond)
{
    /* CLOCK_MONOTONIC: a wall-clock step must not stretch or cut a timeout. */
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(cond, &attr);
    pthread_condattr_destroy(&attr);
}

/* pthread_cond_timedwait until `deadline` (monotonic ns; 0: forever). */
static int cond_wait(pthread_cond_t *cond, pthread_mutex_t *mu, uint64_t deadline)
{
    if (!deadline) {
        return pthread_cond_wait(cond, mu);
    }
    struct timespec ts = {(time_t)(deadline / 1000000000u), (long)(deadline % 1000000000u)};
    return pthread_cond_timedwait(cond, mu, &ts);
}

static uint64_t deadline_after(int64_t timeout_ns)
{
    return timeout_ns < 0 ? 0 : now_ns() + (uint64_t)timeout_ns + 1; /* +1: never 0 */
}

fp_pool *fp_pool_new(void)
{
    fp_pool *pool = calloc(1, sizeof(*pool));
    if (!pool) {
        return NULL;
    }
    pthread_mutex_init(&pool->mu, NULL);
    init_cond(&pool->all_idle);
    pool->queue.next = pool->queue.prev = &pool->queue;
    return pool;
}

void fp_pool_free(fp_pool *pool)
{
    if (!pool) {
        return;
    }
    pthread_mutex_destroy(&pool->mu);
    pthread_cond_destroy(&pool->all_idle);
    free(pool->members);
    free(pool->idle);
    free(pool);
}

/* Under mu: hand member `id` to the first waiter, or make it idle. */
static void give_back(fp_pool *pool, int id)
{
    fp_pool_waiter *w = pool->queue.next;
    if (w != &pool->queue) {
        w->prev->next = w->next;
        w->next->prev = w->prev;
        w->next = w->prev = NULL;
        __atomic_store_n(&pool->waiting, pool->waiting - 1, __ATOMIC_RELAXED);
        w->state = SERVED;
        w->id = id;
        if (now_ns() - w->since >= STALL_NS) {
            pool->stalled++;
        }
        pthread_cond_signal(&w->cond);
        return;
    }
    pool->members[id].idle_since = now_ns();
    pool->idle[pool->n_idle++] = id;
    if (pool->closed && pool->n_idle == pool->size) {
        pthread_cond_broadcast(&pool->all_idle);
    }
}

int fp_pool_add(fp_pool *pool, void *item)
{
    pthread_mutex_lock(&pool->mu);
    int id = FP_POOL_CLOSED;
    if (pool->closed) {
        goto out;
    }
    if (pool->n_members == pool->cap) {
        int cap = pool->cap ? pool->cap * 2 : 8;
        member *members = realloc(pool->members, (size_t)cap * sizeof(*members));
        if (members) {
            pool->members = members;
        }
        int *idle = members ? realloc(pool->idle, (size_t)cap * sizeof(*idle)) : NULL;
        if (!idle) {
            id = -3;
            goto out;
        }
        pool->idle = idle;
        pool->cap = cap;
    }
    id = pool->n_members++;
    pool->members[id] = (member){item, 0, 1};
    pool->size++;
    give_back(pool, id);
out:
    pthread_mutex_unlock(&pool->mu);
    return id;
}

void *fp_pool_item(fp_pool *pool, int id)
{
    pthread_mutex_lock(&pool->mu);
    void *item = id >= 0 && id < pool->n_members ? pool->members[id].item : NULL;
    pthread_mutex_unlock(&pool->mu);
    return item;
}

fp_pool_waiter *fp_pool_enqueue(fp_pool *pool, int *id)
{
    fp_pool_waiter *w = NULL;
    pthread_mutex_lock(&pool->mu);
    if (pool->closed) {
        *id = FP_POOL_CLOSED;
    } else if (pool->n_idle) {
        *id = pool->idle[--pool->n_idle];
    } else if (!(w = malloc(sizeof(*w)))) {
        *id = -3;
    } else {
        init_cond(&w->cond);
        w->state = QUEUED;
        w->id = FP_POOL_TIMEOUT;
        w->since = now_ns();
        w->next = &pool->queue;
        w->prev = pool->queue.prev;
        pool->queue.prev->next = w;
        pool->queue.prev = w;
        __atomic_store_n(&pool->waiting, pool->waiting + 1, __ATOMIC_RELAXED);
        *id = FP_POOL_TIMEOUT;
    }
    pthread_mutex_unlock(&pool->mu);
    return w;
}

static int outcome(const fp_pool_waiter *w)
{
    return w->state == SERVED ? w->id : w->state == CLOSED ? FP_POOL_CLOSED : FP_POOL_TIMEOUT;
}

int fp_pool_wait(fp_pool *pool, fp_pool_waiter *w, int64_t timeout_ns)
{
    uint64_t deadline = deadline_after(timeout_ns);
    pthread_mutex_lock(&pool->mu);
    while (w->state == QUEUED) {
        if (cond_wait(&w->cond, &pool->mu, deadline) == ETIMEDOUT) {
            break;
        }
    }
    int r = outcome(w);
    pthread_mutex_unlock(&pool->mu);
    return r;
}

int fp_pool_withdraw(fp_pool *pool, fp_pool_waiter *w)
{
    pthread_mutex_lock(&pool->mu);
    if (w->state == QUEUED) {
        w->prev->next = w->next;
        w->next->prev = w->prev;
        w->next = w->prev = NULL;
        __atomic_store_n(&pool->waiting, pool->waiting - 1, __ATOMIC_RELAXED);
        w->state = WITHDRAWN;
    }
    int r = outcome(w);
    w->state = WITHDRAWN; /* what it was served now belongs to the caller: report it once */
    pthread_mutex_unlock(&pool->mu);
    return r;
}

void fp_pool_waiter_free(fp_pool_waiter *w)
{
    if (w) {
        pthread_cond_destroy(&w->cond);
        free(w);
    }
}

int fp_pool_acquire(fp_pool *pool, int64_t timeout_ns, void **item)
{
    int id;
    fp_pool_waiter *w = fp_pool_enqueue(pool, &id);
    if (w) {
        id = fp_pool_wait(pool, w, timeout_ns);
        if (id == FP_POOL_TIMEOUT) {
            id = fp_pool_withdraw(pool, w); /* served in between: keep it */
        }
        fp_pool_waiter_free(w);
    }
    if (item) {
        *item = id >= 0 ? fp_pool_item(pool, id) : NULL;
    }
    return id;
}

int fp_pool_try_acquire(fp_pool *pool, int prefer, void **item)
{
    pthread_mutex_lock(&pool->mu);
    int id = pool->closed ? FP_POOL_CLOSED : FP_POOL_TIMEOUT;
    if (!pool->closed && pool->n_idle) {
        int at = pool->n_idle - 1;
        for (int i = at; prefer >= 0 && i >= 0; i--) {
            if (pool->idle[i] == prefer) {
                at = i;
                break;
            }
        }
        id = pool->idle[at];
        memmove(&pool->idle[at], &pool->idle[at + 1], (size_t)(pool->n_idle - 1 - at) * sizeof(int));
        pool->n_idle--;
    }
    if (item) {
        *item = id >= 0 ? pool->members[id].item : NULL;
    }
    pthread_mutex_unlock(&pool->mu);
    return id;
}

int fp_pool_release(fp_pool *pool, int id)
{
    pthread_mutex_lock(&pool->mu);
    int given_up = !pool->members[id].in_pool;
    if (!given_up) {
        give_back(pool, id);
    }
    pthread_mutex_unlock(&pool->mu);
    return given_up;
}

int fp_pool_take_idle(fp_pool *pool, int id, int64_t idle_ns)
{
    int taken = 0;
    pthread_mutex_lock(&pool->mu);
    uint64_t now = now_ns();
    for (int i = 0; !pool->closed && i < pool->n_idle; i++) {
        if (pool->idle[i] == id && now - pool->members[id].idle_since >= (uint64_t)idle_ns) {
            pool->idle[i] = pool->idle[--pool->n_idle]; /* order among idle members is a preference */
            pool->members[id].in_pool = 0;
            pool->size--;
            taken = 1;
            break;
        }
    }
    pthread_mutex_unlock(&pool->mu);
    return taken;
}

int fp_pool_close(fp_pool *pool)
{
    pthread_mutex_lock(&pool->mu);
    int was = pool->closed;
    __atomic_store_n(&pool->closed, 1, __ATOMIC_RELAXED);
    while (pool->queue.next != &pool->queue) {
        fp_pool_waiter *w = pool->queue.next;
        w->prev->next = w->next;
        w->next->prev = w->prev;
        w->next = w->prev = NULL;
        w->state = CLOSED;
        pthread_cond_signal(&w->cond);
    }
    __atomic_store_n(&pool->waiting, 0, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&pool->mu);
    return was ? -1 : 0;
}

int fp_pool_wait_idle(fp_pool *pool, int64_t timeout_ns)
{
    uint64_t deadline = deadline_after(timeout_ns);
    pthread_mutex_lock(&pool->mu);
    /* Only after close does give_back() signal all_idle; before it, members keep moving. */
    while (pool->n_idle < pool->size && pool->closed) {
        if (cond_wait(&pool->all_idle, &pool->mu, deadline) == ETIMEDOUT) {
            break;
        }
    }
    int busy = pool->size - pool->n_idle;
    pthread_mutex_unlock(&pool->mu);
    return busy;
}

int fp_pool_take_all(fp_pool *pool, int *ids, int cap)
{
    pthread_mutex_lock(&pool->mu);
    int n = 0;
    for (int i = 0; i < pool->n_idle && n < cap; i++) {
        ids[n++] = pool->idle[i];
    }
    for (int id = 0; id < pool->n_members; id++) {
        pool->members[id].in_pool = 0; /* busy ones are given up: see fp_pool_release() */
    }
    pool->n_idle = 0;
    pool->size = 0;
    pthread_mutex_unlock(&pool->mu);
    return n;
}

int fp_pool_size(fp_pool *pool)
{
    pthread_mutex_lock(&pool->mu);
    int n = pool->size;
    pthread_mutex_unlock(&pool->mu);
    return n;
}

int fp_pool_busy(fp_pool *pool)
{
    pthread_mutex_lock(&pool->mu);
    int n = pool->size - pool->n_idle;
    pthread_mutex_unlock(&pool->mu);
    return n;
}

uint64_t fp_pool_stalls(fp_pool *pool, uint64_t *oldest_wait_ns)
{
    uint64_t now = now_ns();
    pthread_mutex_lock(&pool->mu);
    uint64_t stalled = pool->stalled;
    uint64_t since = pool->queue.next != &pool->queue ? pool->queue.next->since : now;
    pthread_mutex_unlock(&pool->mu);
    *oldest_wait_ns = now > since ? now - since : 0;
    return stalled;
}

int fp_pool_waiting(fp_pool *pool)
{
    pthread_mutex_lock(&pool->mu);
    int n = pool->waiting;
    pthread_mutex_unlock(&pool->mu);
    return n;
}

int fp_pool_wanted(fp_pool *pool)
{
    return __atomic_load_n(&pool->waiting, __ATOMIC_RELAXED) > 0 ||
           __atomic_load_n(&pool->closed, __ATOMIC_RELAXED);
}

int fp_pool_is_idle(fp_pool *pool, int id)
{
    pthread_mutex_lock(&pool->mu);
    int idle = 0;
    for (int i = 0; i < pool->n_idle && !idle; i++) {
        idle = pool->idle[i] == id;
    }
    pthread_mutex_unlock(&pool->mu);
    return idle;
}
