/*
 * Unit tests of the hand-off queues (csrc/handoff.h) with real threads: FIFO order, blocking
 * takes woken by puts, drain flags, close, expiry (max_wait_time), and many producers and
 * takers at once (run under TSan by scripts/test.sh: the queue hands data between threads).
 *
 *   build/cmake/tests/native/test_handoff         # exit status 1 on a failure
 */
#define _GNU_SOURCE
#include "handoff.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"

typedef struct {
    fp_handoff_item link; /* first: an item pointer is a job pointer */
    int value;
} job;

static void wait_idle_takers(fp_handoff *q, size_t n)
{
    for (int i = 0; i < 5000 && fp_handoff_idle_takers(q) < n; i++) {
        usleep(1000);
    }
}

static void test_fifo(void)
{
    fp_handoff q;
    CHECK(fp_handoff_init(&q) == 0, "init");
    job jobs[5];
    for (int i = 0; i < 5; i++) {
        jobs[i].value = i;
        CHECK(fp_handoff_put(&q, &jobs[i].link) == 0, "put");
    }
    CHECK(fp_handoff_length(&q) == 5, "length after 5 puts");
    for (int i = 0; i < 5; i++) {
        job *j = (job *)fp_handoff_take(&q, NULL);
        CHECK(j && j->value == i, "items come out in the order they went in");
    }
    CHECK(fp_handoff_length(&q) == 0, "empty");
    fp_handoff_destroy(&q);
}

typedef struct {
    fp_handoff *q;
    volatile int drain;
    atomic_int result; /* value taken, -1 for NULL, -2 while blocked */
} taker;

static void *take_one(void *arg)
{
    taker *t = arg;
    job *j = (job *)fp_handoff_take(t->q, &t->drain);
    atomic_store(&t->result, j ? j->value : -1);
    return NULL;
}

static void test_blocking_take_drain_and_close(void)
{
    fp_handoff q;
    fp_handoff_init(&q);
    taker a = {&q, 0, -2}, b = {&q, 0, -2};
    pthread_t ta, tb;
    pthread_create(&ta, NULL, take_one, &a);
    pthread_create(&tb, NULL, take_one, &b);
    wait_idle_takers(&q, 2);
    CHECK(fp_handoff_idle_takers(&q) == 2, "both takers block on the empty queue");

    /* Drain one: only that taker returns (NULL); the other keeps waiting and gets the item. */
    __atomic_store_n(&a.drain, 1, __ATOMIC_SEQ_CST);
    fp_handoff_wake(&q);
    pthread_join(ta, NULL);
    CHECK(atomic_load(&a.result) == -1, "a draining taker returns NULL");
    usleep(20000);
    CHECK(atomic_load(&b.result) == -2, "the other taker still waits");
    job j = {.value = 42};
    fp_handoff_put(&q, &j.link);
    pthread_join(tb, NULL);
    CHECK(atomic_load(&b.result) == 42, "a put wakes a blocked taker");

    /* A draining taker leaves a queued item to the others. */
    job k = {.value = 7};
    fp_handoff_put(&q, &k.link);
    volatile int drained = 1;
    CHECK(fp_handoff_take(&q, &drained) == NULL, "drain wins over a queued item");
    CHECK(fp_handoff_length(&q) == 1, "the item stays queued");
    CHECK(fp_handoff_take(&q, NULL) == &k.link, "and goes to the next taker");

    /* Close wakes every taker and refuses puts. */
    taker c = {&q, 0, -2};
    pthread_t tc;
    pthread_create(&tc, NULL, take_one, &c);
    wait_idle_takers(&q, 1);
    fp_handoff_close(&q);
    pthread_join(tc, NULL);
    CHECK(atomic_load(&c.result) == -1, "close ends a blocked take");
    CHECK(fp_handoff_put(&q, &j.link) == -1, "put after close fails");
    CHECK(fp_handoff_take(&q, NULL) == NULL, "take after close returns NULL at once");
    fp_handoff_destroy(&q);
}

static void test_expire(void)
{
    fp_handoff q;
    fp_handoff_init(&q);
    job jobs[3];
    for (int i = 0; i < 3; i++) {
        jobs[i].value = i;
        fp_handoff_put(&q, &jobs[i].link);
    }
    /* Make the first two old. */
    jobs[0].link.enqueued_ns -= 3000000000u;
    jobs[1].link.enqueued_ns -= 2000000000u;
    uint64_t now = fp_monotonic_ns();
    fp_handoff_item *expired = fp_handoff_expire(&q, now, 1000000000u);
    CHECK(expired == &jobs[0].link, "the oldest expires first");
    CHECK(expired && expired->next == &jobs[1].link, "then the next one");
    CHECK(expired && expired->next && expired->next->next == NULL, "and only those");
    CHECK(fp_handoff_length(&q) == 1, "the young item stays");
    CHECK(fp_handoff_expire(&q, now, 1000000000u) == NULL, "nothing more to expire");
    CHECK(fp_handoff_expire(&q, UINT64_MAX, 0) == &jobs[2].link, "everything expires at the end of time");
    CHECK(q.total_expired == 3, "expired counter");
    fp_handoff_destroy(&q);
}

/* Many producers and takers: every item is taken exactly once, none is lost. */
enum { PRODUCERS = 4, TAKERS = 4, PER_PRODUCER = 20000 };
static fp_handoff stress_q;
static job stress_jobs[PRODUCERS * PER_PRODUCER];
static atomic_int seen[PRODUCERS * PER_PRODUCER];
static atomic_long taken_total;

static void *producer(void *arg)
{
    int base = (int)(intptr_t)arg * PER_PRODUCER;
    for (int i = 0; i < PER_PRODUCER; i++) {
        stress_jobs[base + i].value = base + i;
        fp_handoff_put(&stress_q, &stress_jobs[base + i].link);
    }
    return NULL;
}

static void *consumer(void *arg)
{
    (void)arg;
    job *j;
    while ((j = (job *)fp_handoff_take(&stress_q, NULL))) {
        atomic_fetch_add(&seen[j->value], 1);
        atomic_fetch_add(&taken_total, 1);
    }
    return NULL;
}

static void test_stress(void)
{
    fp_handoff_init(&stress_q);
    pthread_t p[PRODUCERS], c[TAKERS];
    for (int i = 0; i < TAKERS; i++) {
        pthread_create(&c[i], NULL, consumer, NULL);
    }
    for (int i = 0; i < PRODUCERS; i++) {
        pthread_create(&p[i], NULL, producer, (void *)(intptr_t)i);
    }
    for (int i = 0; i < PRODUCERS; i++) {
        pthread_join(p[i], NULL);
    }
    for (int i = 0; i < 10000 && atomic_load(&taken_total) < PRODUCERS * PER_PRODUCER; i++) {
        usleep(1000);
    }
    fp_handoff_close(&stress_q);
    for (int i = 0; i < TAKERS; i++) {
        pthread_join(c[i], NULL);
    }
    int once = 1;
    for (int i = 0; i < PRODUCERS * PER_PRODUCER; i++) {
        once &= atomic_load(&seen[i]) == 1;
    }
    CHECK(once, "every item taken exactly once");
    CHECK(stress_q.total_taken == PRODUCERS * PER_PRODUCER, "taken counter");
    fp_handoff_destroy(&stress_q);
}

/* Autoscaling's input: takes after a wait of 5 ms or more are counted, quick ones are not, and
 * the oldest queued item's wait is readable while it waits. */
static void test_stalls(void)
{
    fp_handoff q;
    CHECK(fp_handoff_init(&q) == 0, "init");
    uint64_t oldest = 1;
    CHECK(fp_handoff_stalls(&q, &oldest) == 0 && oldest == 0, "nothing queued: no stall, no wait");
    job a = {.value = 1}, b = {.value = 2};
    fp_handoff_put(&q, &a.link);
    CHECK(fp_handoff_take(&q, NULL) == &a.link, "quick take");
    CHECK(fp_handoff_stalls(&q, &oldest) == 0, "a quick take is no stall");
    fp_handoff_put(&q, &b.link);
    usleep(20000);
    fp_handoff_stalls(&q, &oldest);
    CHECK(oldest >= 20000000u, "the queued item's wait so far");
    CHECK(fp_handoff_take(&q, NULL) == &b.link, "late take");
    CHECK(fp_handoff_stalls(&q, &oldest) == 1 && oldest == 0, "a take after 20 ms counts once");
    fp_handoff_destroy(&q);
}

int main(void)
{
    test_fifo();
    test_stalls();
    test_blocking_take_drain_and_close();
    test_expire();
    test_stress();
    printf("%d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
