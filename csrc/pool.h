/*
 * The pool of idle regular PHP threads: one per runtime, shared by every caller in the process
 * (Python's Runtime.execute_*, via frankenpy/threads.py's ThreadPool, and the native server's
 * serving threads, csrc/serve.c), so that all of them are served by one FIFO queue.
 *
 * - A member is a started interpreter, named by the id fp_pool_add() returned (ids are never
 *   reused); `item` is what the caller attached to it (an fp_image * for the loader).
 * - Strict arrival order: a caller that finds no idle member queues a waiter, and a returned
 *   member goes straight to the first waiter (idle members and waiters never coexist).  Idle
 *   members are handed out most recently used first (warm caches).
 * - No Python: every function is a mutex operation; the waits release no lock of the caller's
 *   (cffi releases the GIL around them).
 *
 * The split fp_pool_enqueue / fp_pool_wait / fp_pool_withdraw lets Python wait in slices (a
 * signal such as SIGINT must be able to interrupt a waiting caller) and run its autoscaling hook
 * once a caller has waited a while, without losing its place in the queue.
 */
#ifndef FRANKENPY_POOL_H
#define FRANKENPY_POOL_H

#include <stdint.h>

typedef struct fp_pool fp_pool;
typedef struct fp_pool_waiter fp_pool_waiter;

/* fp_pool_wait / fp_pool_acquire results (ids are >= 0). */
#define FP_POOL_TIMEOUT -1
#define FP_POOL_CLOSED -2

fp_pool *fp_pool_new(void);
/* Only once nobody uses the pool any more (members and waiters gone). */
void fp_pool_free(fp_pool *pool);

/* One more member, idle (or handed to the first waiter).  Returns its id, FP_POOL_CLOSED once
 * closed, or -3 when out of memory. */
int fp_pool_add(fp_pool *pool, void *item);
/* What fp_pool_add() attached to member `id` (NULL for an unknown id). */
void *fp_pool_item(fp_pool *pool, int id);

/* Take an idle member: returns NULL with its id in *id; or NULL with *id = FP_POOL_CLOSED once
 * closed; or else a waiter queued at the end of the line (*id = FP_POOL_TIMEOUT), which the
 * caller waits on and must give to fp_pool_waiter_free() in the end.  NULL with *id = -3 when
 * out of memory. */
fp_pool_waiter *fp_pool_enqueue(fp_pool *pool, int *id);
/* Wait up to `timeout_ns` (< 0: forever) for `w` to be served: its member's id, FP_POOL_TIMEOUT
 * (still queued: wait again or withdraw) or FP_POOL_CLOSED. */
int fp_pool_wait(fp_pool *pool, fp_pool_waiter *w, int64_t timeout_ns);
/* Leave the queue: FP_POOL_TIMEOUT when `w` was still queued, else what it was served (an id
 * the caller now owns, or FP_POOL_CLOSED) even if fp_pool_wait() already returned it. */
int fp_pool_withdraw(fp_pool *pool, fp_pool_waiter *w);
void fp_pool_waiter_free(fp_pool_waiter *w);

/* enqueue + wait in one call (C callers): an id, FP_POOL_TIMEOUT or FP_POOL_CLOSED; *item (if
 * not NULL) receives the member's item. */
int fp_pool_acquire(fp_pool *pool, int64_t timeout_ns, void **item);

/* An idle member now, without queueing: `prefer` if it is idle (the one the caller used last:
 * its interpreter's memory is likely still in this CPU's caches), else the most recently used;
 * FP_POOL_TIMEOUT when none is idle (nobody is jumped: idle members and waiters never coexist),
 * FP_POOL_CLOSED.  *item (if not NULL) receives the member's item. */
int fp_pool_try_acquire(fp_pool *pool, int prefer, void **item);

/* Give member `id` back: to the first waiter, else idle.  Returns 1 instead when the pool has
 * given up on its busy members (fp_pool_take_all()): the caller then owns the member for good. */
int fp_pool_release(fp_pool *pool, int id);

/* Take member `id` out of the pool if it has been idle for `idle_ns` or more (autoscaling):
 * 1 when taken, else 0. */
int fp_pool_take_idle(fp_pool *pool, int id, int64_t idle_ns);

/* Refuse new callers (FP_POOL_CLOSED) and wake every queued one with FP_POOL_CLOSED.
 * Returns -1 when it was already closed. */
int fp_pool_close(fp_pool *pool);
/* Wait up to `timeout_ns` until every member is idle; returns how many are still busy. */
int fp_pool_wait_idle(fp_pool *pool, int64_t timeout_ns);
/* After close: take every idle member out (their ids go to `ids`, `cap` at most; returns how
 * many); members still busy are given up: their fp_pool_release() returns 1. */
int fp_pool_take_all(fp_pool *pool, int *ids, int cap);

/* Autoscaling, without Python per request: the callers served after waiting 5 ms or more so
 * far (a running count), and how long the first caller in line has waited by now (0: none). */
uint64_t fp_pool_stalls(fp_pool *pool, uint64_t *oldest_wait_ns);

/* Counters (metrics; a snapshot). */
int fp_pool_size(fp_pool *pool);
int fp_pool_busy(fp_pool *pool);
int fp_pool_waiting(fp_pool *pool);
/* 1 when a busy member should come back now: somebody waits in line, or the pool is closed.
 * Read without the mutex (no cache line written): a caller that keeps a member across several
 * short executions (fp_fast_map) looks before each one and gives the member back only then.  A
 * waiter that queues just after the look waits for one execution. */
int fp_pool_wanted(fp_pool *pool);
/* 1 when member `id` is idle in the pool. */
int fp_pool_is_idle(fp_pool *pool, int id);

#endif
