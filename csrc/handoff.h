/*
 * Hand-off queues: how the native HTTP server (http_server.h) gives requests to PHP threads.
 *
 * One queue holds the classic requests, shared by the regular PHP threads; each HTTP worker has
 * its own, shared by that worker's threads.  A queue is FIFO.  Items are intrusive (an
 * fp_handoff_item inside the caller's struct): no allocation per request.
 *
 * Threads
 * - fp_handoff_put() and fp_handoff_expire() are called by the HTTP loop thread(s);
 * - fp_handoff_take() is called by PHP threads, which block in it on a condition variable.  It
 *   never touches Python: a PHP thread's Python thread calls into C once and releases the GIL.
 * - Drain: a taker passes a flag of its own; fp_handoff_wake() (after setting such a flag) wakes
 *   every taker so that the one whose flag is set returns NULL, the others sleep on.
 *   fp_handoff_close() ends the queue for everybody: takes return NULL, puts are refused.
 * - An item waits at most max_wait: fp_handoff_expire(), called periodically by the loop
 *   thread, removes the items that waited longer and gives them back (the loop answers 503).
 */
#ifndef FRANKENPY_HANDOFF_H
#define FRANKENPY_HANDOFF_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

typedef struct fp_handoff_item {
    struct fp_handoff_item *next;
    struct fp_handoff_item *prev;
    uint64_t enqueued_ns; /* CLOCK_MONOTONIC, set by fp_handoff_put() */
} fp_handoff_item;

typedef struct fp_handoff {
    pthread_mutex_t mu;
    pthread_cond_t cond;
    fp_handoff_item head; /* sentinel of a circular list: head.next is the oldest item */
    size_t length;
    size_t idle_takers; /* threads blocked in fp_handoff_take() */
    int closed;
    uint64_t total_put;   /* counters, for metrics */
    uint64_t total_taken;
    uint64_t total_expired;
    uint64_t total_stalled; /* taken after waiting FP_HANDOFF_STALL_NS or more (autoscaling) */
} fp_handoff;

/* A request that waits this long for a free PHP thread asks for one more (FrankenPHP's 5 ms;
 * frankenpy.scaling.STALL_TIME). */
#define FP_HANDOFF_STALL_NS 5000000u

/* Initialise an empty, open queue.  Returns 0 or an errno value. */
int fp_handoff_init(fp_handoff *q);

/* Free the queue's resources.  No thread may use it any more; items still queued are the
 * caller's (take them back with fp_handoff_expire(q, UINT64_MAX, 0) first). */
void fp_handoff_destroy(fp_handoff *q);

/* Append `item`; returns 0, or -1 when the queue is closed (the item is not queued). */
int fp_handoff_put(fp_handoff *q, fp_handoff_item *item);

/* The oldest item, waiting for one while the queue is empty; NULL once the queue is closed or
 * `*drain` (may be NULL) is non-zero when the taker wakes up.  A taker that drains leaves the
 * items to the others. */
fp_handoff_item *fp_handoff_take(fp_handoff *q, const volatile int *drain);

/* Remove the items queued for more than `max_wait_ns` by `now_ns` (CLOCK_MONOTONIC) and return
 * them as a NULL-terminated list linked through `next`, oldest first. */
fp_handoff_item *fp_handoff_expire(fp_handoff *q, uint64_t now_ns, uint64_t max_wait_ns);

/* Wake every blocked taker (so that a drain flag set before is seen). */
void fp_handoff_wake(fp_handoff *q);

/* Close the queue: every taker returns NULL, puts fail.  Queued items stay (expire them). */
void fp_handoff_close(fp_handoff *q);

/* Queued items and blocked takers right now (for metrics and for the loop's decisions). */
size_t fp_handoff_length(fp_handoff *q);
size_t fp_handoff_idle_takers(fp_handoff *q);

/* Autoscaling, without Python per request: the items taken after waiting FP_HANDOFF_STALL_NS
 * or more so far (a running count), and how long the oldest queued item has waited by now (0:
 * none queued). */
uint64_t fp_handoff_stalls(fp_handoff *q, uint64_t *oldest_wait_ns);

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t fp_monotonic_ns(void);

#endif
