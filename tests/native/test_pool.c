/*
 * Unit tests of the pool of idle PHP threads (csrc/pool.h) with real threads: waiters served
 * in arrival order, exact timeouts, withdraw racing a release, close waking waiters, given-up
 * members after take_all, take_idle, and many threads at once (run under TSan by
 * scripts/test.sh: members move between threads through the pool).
 *
 *   build/cmake/tests/native/test_pool         # exit status 1 on a failure
 */
#define _GNU_SOURCE
#include "pool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#include "check.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void wait_waiting(fp_pool *pool, int n)
{
    for (int i = 0; i < 5000 && fp_pool_waiting(pool) < n; i++) {
        usleep(1000);
    }
}

typedef struct {
    fp_pool *pool;
    int order;       /* when it was queued */
    _Atomic int *served_seq;
    int served_at;   /* its place among those served */
    int id;
} waiter_arg;

static void *queued_acquire(void *p)
{
    waiter_arg *a = p;
    a->id = fp_pool_acquire(a->pool, -1, NULL);
    a->served_at = atomic_fetch_add(a->served_seq, 1);
    return NULL;
}

static void test_fifo(void)
{
    fp_pool *pool = fp_pool_new();
    static int items[2];
    int a = fp_pool_add(pool, &items[0]);
    int b = fp_pool_add(pool, &items[1]);
    CHECK(a == 0 && b == 1, "ids in order");
    void *item;
    int first = fp_pool_acquire(pool, 0, &item);
    CHECK(first == b && item == &items[1], "the most recently returned idle member first");
    int second = fp_pool_acquire(pool, 0, NULL);
    CHECK(second == a, "the other one");
    CHECK(fp_pool_busy(pool) == 2 && fp_pool_size(pool) == 2, "counters");
    enum { N = 6 };
    pthread_t threads[N];
    waiter_arg args[N];
    _Atomic int seq = 0;
    for (int i = 0; i < N; i++) {
        args[i] = (waiter_arg){pool, i, &seq, -1, -1};
        pthread_create(&threads[i], NULL, queued_acquire, &args[i]);
        wait_waiting(pool, i + 1); /* queued one after the other */
    }
    CHECK(fp_pool_waiting(pool) == N, "all queued");
    /* Each release serves the head of the line: a greedy acquire in between cannot cut in. */
    int held = first;
    for (int i = 0; i < N; i++) {
        int got;
        fp_pool_waiter *w = fp_pool_enqueue(pool, &got);
        CHECK(w && got == FP_POOL_TIMEOUT, "a newcomer queues behind the waiters");
        CHECK(fp_pool_withdraw(pool, w) == FP_POOL_TIMEOUT, "and can leave");
        fp_pool_waiter_free(w);
        CHECK(fp_pool_release(pool, held) == 0, "released");
        pthread_join(threads[i], NULL);
        CHECK(args[i].id == held, "the first waiter got it");
        held = args[i].id;
    }
    for (int i = 0; i < N; i++) {
        CHECK(args[i].served_at == i, "served in arrival order");
    }
    fp_pool_release(pool, held);
    fp_pool_release(pool, second);
    CHECK(fp_pool_busy(pool) == 0 && fp_pool_waiting(pool) == 0, "all back");
    fp_pool_close(pool);
    fp_pool_free(pool);
}

static void test_timeout_and_withdraw(void)
{
    fp_pool *pool = fp_pool_new();
    static int item;
    int id = fp_pool_add(pool, &item);
    CHECK(fp_pool_acquire(pool, 0, NULL) == id, "idle");
    double t0 = now_s();
    CHECK(fp_pool_acquire(pool, 200000000, NULL) == FP_POOL_TIMEOUT, "times out");
    double waited = now_s() - t0;
    CHECK(waited >= 0.19 && waited < 5.0, "after the timeout, not before");
    CHECK(fp_pool_waiting(pool) == 0, "a timed-out waiter leaves the line");
    /* Served between its timeout and its withdraw: the waiter keeps what it was given. */
    int got;
    fp_pool_waiter *w = fp_pool_enqueue(pool, &got);
    CHECK(fp_pool_wait(pool, w, 1000000) == FP_POOL_TIMEOUT, "not yet");
    fp_pool_release(pool, id);
    CHECK(fp_pool_withdraw(pool, w) == id, "withdraw reports what it was served");
    CHECK(fp_pool_withdraw(pool, w) == FP_POOL_TIMEOUT, "once");
    fp_pool_waiter_free(w);
    CHECK(fp_pool_busy(pool) == 1, "the member is the caller's");
    fp_pool_release(pool, id);
    fp_pool_close(pool);
    fp_pool_free(pool);
}

static void *closed_acquire(void *p)
{
    waiter_arg *a = p;
    a->id = fp_pool_acquire(a->pool, -1, NULL);
    return NULL;
}

static void test_close(void)
{
    fp_pool *pool = fp_pool_new();
    static int items[2];
    int a = fp_pool_add(pool, &items[0]);
    int b = fp_pool_add(pool, &items[1]);
    CHECK(fp_pool_acquire(pool, 0, NULL) == b && fp_pool_acquire(pool, 0, NULL) == a, "both busy");
    _Atomic int seq = 0;
    waiter_arg arg = {pool, 0, &seq, -1, -1};
    pthread_t t;
    pthread_create(&t, NULL, closed_acquire, &arg);
    wait_waiting(pool, 1);
    CHECK(fp_pool_close(pool) == 0, "closed");
    pthread_join(t, NULL);
    CHECK(arg.id == FP_POOL_CLOSED, "a queued caller is woken with CLOSED");
    CHECK(fp_pool_close(pool) == -1, "twice");
    CHECK(fp_pool_acquire(pool, 0, NULL) == FP_POOL_CLOSED, "no new callers");
    CHECK(fp_pool_add(pool, NULL) == FP_POOL_CLOSED, "no new members");
    CHECK(fp_pool_wait_idle(pool, 50000000) == 2, "both still busy after the grace");
    CHECK(fp_pool_release(pool, a) == 0, "back before the pool gives up");
    CHECK(fp_pool_wait_idle(pool, 0) == 1, "one busy");
    int ids[4];
    CHECK(fp_pool_take_all(pool, ids, 4) == 1 && ids[0] == a, "the idle one is taken out");
    CHECK(fp_pool_release(pool, b) == 1, "a given-up member stays the caller's");
    CHECK(fp_pool_size(pool) == 0, "empty");
    fp_pool_free(pool);
}

static void test_take_idle(void)
{
    fp_pool *pool = fp_pool_new();
    static int items[2];
    int a = fp_pool_add(pool, &items[0]);
    int b = fp_pool_add(pool, &items[1]);
    CHECK(!fp_pool_take_idle(pool, a, 10000000000LL), "not idle long enough");
    CHECK(fp_pool_take_idle(pool, a, 0), "taken");
    CHECK(fp_pool_size(pool) == 1, "one left");
    CHECK(fp_pool_acquire(pool, 0, NULL) == b, "the other one");
    CHECK(!fp_pool_take_idle(pool, b, 0), "a busy member stays");
    CHECK(fp_pool_acquire(pool, 0, NULL) == FP_POOL_TIMEOUT, "the taken one is gone");
    fp_pool_release(pool, b);
    fp_pool_close(pool);
    fp_pool_free(pool);
}

typedef struct {
    fp_pool *pool;
    _Atomic int *inside;
    int overlap;
} stress_arg;

static void *stress(void *p)
{
    stress_arg *a = p;
    for (int i = 0; i < 2000; i++) {
        void *item;
        int id = fp_pool_acquire(a->pool, i % 3 ? -1 : 1000000, &item);
        if (id < 0) {
            continue;
        }
        int *owner = item;
        if (atomic_fetch_add((_Atomic int *)owner, 1) != 0) {
            a->overlap++; /* two holders of one member */
        }
        atomic_fetch_sub((_Atomic int *)owner, 1);
        fp_pool_release(a->pool, id);
    }
    return NULL;
}

static void test_many_threads(void)
{
    fp_pool *pool = fp_pool_new();
    static _Atomic int owners[3];
    for (int i = 0; i < 3; i++) {
        fp_pool_add(pool, (void *)&owners[i]);
    }
    enum { T = 8 };
    pthread_t threads[T];
    stress_arg args[T];
    for (int i = 0; i < T; i++) {
        args[i] = (stress_arg){pool, NULL, 0};
        pthread_create(&threads[i], NULL, stress, &args[i]);
    }
    int overlap = 0;
    for (int i = 0; i < T; i++) {
        pthread_join(threads[i], NULL);
        overlap += args[i].overlap;
    }
    CHECK(overlap == 0, "a member is held by one caller at a time");
    CHECK(fp_pool_busy(pool) == 0 && fp_pool_waiting(pool) == 0, "all back");
    fp_pool_close(pool);
    CHECK(fp_pool_wait_idle(pool, 0) == 0, "idle");
    fp_pool_free(pool);
}

/* Autoscaling's input: a caller served after waiting 5 ms or more counts once; the first
 * waiter's wait is readable while it waits. */
static void test_stalls(void)
{
    fp_pool *pool = fp_pool_new();
    int a = fp_pool_add(pool, NULL);
    uint64_t oldest = 1;
    CHECK(fp_pool_stalls(pool, &oldest) == 0 && oldest == 0, "nobody waits");
    CHECK(fp_pool_acquire(pool, -1, NULL) == a, "idle member at once");
    fp_pool_release(pool, a);
    CHECK(fp_pool_stalls(pool, &oldest) == 0, "taking an idle member is no stall");
    CHECK(fp_pool_acquire(pool, -1, NULL) == a, "busy now");
    int id;
    fp_pool_waiter *w = fp_pool_enqueue(pool, &id);
    CHECK(w && id == FP_POOL_TIMEOUT, "queued");
    usleep(20000);
    fp_pool_stalls(pool, &oldest);
    CHECK(oldest >= 20000000u, "the waiter's wait so far");
    fp_pool_release(pool, a);
    CHECK(fp_pool_wait(pool, w, -1) == a, "served");
    fp_pool_waiter_free(w);
    CHECK(fp_pool_stalls(pool, &oldest) == 1 && oldest == 0, "served after 20 ms: one stall");
    fp_pool_release(pool, a);
    fp_pool_close(pool);
    int ids[1];
    fp_pool_take_all(pool, ids, 1);
    fp_pool_free(pool);
}

/* fp_pool_try_acquire: the preferred idle member, else the most recently returned; never a
 * member while somebody waits (there is none idle then), and nothing once closed. */
static void test_try_acquire(void)
{
    fp_pool *pool = fp_pool_new();
    static int items[3];
    for (int i = 0; i < 3; i++) {
        fp_pool_add(pool, &items[i]);
    }
    void *item = NULL;
    int id = fp_pool_try_acquire(pool, 0, &item);
    CHECK(id == 0 && item == &items[0], "the preferred member, from the bottom of the idle stack");
    fp_pool_release(pool, id);
    CHECK(fp_pool_try_acquire(pool, -1, NULL) == 0, "no preference: the most recently returned");
    CHECK(fp_pool_try_acquire(pool, 0, NULL) == 2, "a preferred member that is busy: the most recent idle one");
    CHECK(fp_pool_try_acquire(pool, 1, &item) == 1 && item == &items[1], "the last idle one");
    CHECK(fp_pool_try_acquire(pool, 1, &item) == FP_POOL_TIMEOUT && item == NULL, "none idle: no queueing");
    CHECK(fp_pool_waiting(pool) == 0, "nobody queued by it");
    _Atomic int seq = 0;
    waiter_arg arg = {pool, 0, &seq, -1, -1};
    pthread_t waiter;
    pthread_create(&waiter, NULL, queued_acquire, &arg);
    wait_waiting(pool, 1);
    fp_pool_release(pool, 1);
    CHECK(fp_pool_try_acquire(pool, 1, NULL) == FP_POOL_TIMEOUT, "a returned member goes to the waiter first");
    pthread_join(waiter, NULL);
    CHECK(arg.id == 1, "the waiter got it");
    fp_pool_release(pool, 0);
    fp_pool_release(pool, 1);
    fp_pool_release(pool, 2);
    fp_pool_close(pool);
    CHECK(fp_pool_try_acquire(pool, 0, NULL) == FP_POOL_CLOSED, "closed");
    int ids[3];
    fp_pool_take_all(pool, ids, 3);
    fp_pool_free(pool);
}

int main(void)
{
    test_fifo();
    test_try_acquire();
    test_stalls();
    test_timeout_and_withdraw();
    test_close();
    test_take_idle();
    test_many_threads();
    printf("test_pool: %d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
