/*
 * Process-wide state of background workers: published vars, task queues, readiness waits.
 *
 * It cannot live in the glue (csrc/sapi.c): every PHP thread has a private copy of that library
 * and of its statics.  It lives in frankenpy._native instead (one copy per process), and the
 * glue reaches it through the fp_host callbacks of frankenpy.h, implemented in C by the loader:
 * no Python runs on the common paths (a read of vars, a task handed over and answered).  Python
 * is called back only to start a worker that is not running yet (lazy or catch-all) and to
 * complete the futures of tasks that Python sent.
 *
 * Values cross interpreters as blobs of a small tagged encoding, never as zvals; a blob is
 * immutable and reference-counted, so a reader copies a snapshot out of it without holding any
 * lock while a writer publishes the next one:
 *
 *   value := 'N' | 'F' | 'T' | 'I' int64 | 'D' float64 | 'S' u32 bytes
 *          | 'L' u32 value* | 'M' u32 (key value)*       (all numbers little-endian)
 *   key   := 'I' int64 | 'S' u32 bytes
 *
 * A domain is one Runtime; a slot is one background worker of it (a declared worker, or one
 * name a catch-all started; Python adds them); a context is who asks (a worker thread, or the regular executions
 * of one scope), passed by the glue from fp_request.worker_ctx.  Every function is thread-safe.
 */
#ifndef FRANKENPY_WORKER_STATE_H
#define FRANKENPY_WORKER_STATE_H

#include "frankenpy.h"

typedef struct fp_ws_domain fp_ws_domain;
typedef struct fp_ws_ctx fp_ws_ctx;

/* Flags of fp_ws_acquire() and friends. */
#define FP_WS_FAIL_FAST 1 /* a boot failure of the target fails the wait at once */
#define FP_WS_RUNNING 2   /* a halted target fails the wait even if it was ready once (ensure) */

/* Task states as fp_ws_task_result() reports them. */
#define FP_TASK_PENDING 0
#define FP_TASK_DONE 1
#define FP_TASK_FAILED 2

/* --- blobs ----------------------------------------------------------------------------------- */
fp_blob *fp_blob_new(const char *data, size_t len); /* NULL when out of memory */
void fp_blob_release(fp_blob *blob);                /* NULL is fine */

/* --- domains, slots, contexts (called by Python) ---------------------------------------------
 * `start` is called (without any lock held, on the asking thread) when a name has no started
 * slot: it must start the worker and return its slot, or return -1 with a message in err. */
fp_ws_domain *fp_ws_domain_new(int64_t token);
void fp_ws_domain_close(fp_ws_domain *domain, const char *reason); /* fails every task; never freed */
int fp_ws_slot_add(fp_ws_domain *domain, int scope, const char *name, int max_queued);
void fp_ws_slot_started(fp_ws_domain *domain, int slot);
/* The worker reached its ready point (first frankenphp_get_worker_handle()). */
void fp_ws_slot_ready(fp_ws_domain *domain, int slot);
/* A run of the script ended before its ready point (boot failure), or the worker halted. */
void fp_ws_slot_failed(fp_ws_domain *domain, int slot, int halted, int exit_status, int attempts,
                       const char *error);
/* A run of the worker script on `ctx`'s thread begins (`wake_fd`: the write end of its handle's
 * pipe, made non-blocking; -1 to detach) or ends (in-flight tasks it took fail with `reason`). */
void fp_ws_attach(fp_ws_ctx *ctx, int wake_fd);
void fp_ws_run_ended(fp_ws_ctx *ctx, const char *reason);
/* Fail the queued tasks of a slot (the worker halted or stops for good). */
void fp_ws_fail_queued(fp_ws_domain *domain, int slot, const char *reason);
/* Counters: what the metrics show. */
void fp_ws_slot_counts(fp_ws_domain *domain, int slot, int64_t counts[4]); /* queued, completed, failed, publications */

fp_ws_ctx *fp_ws_ctx_new(fp_ws_domain *domain, int scope, int slot);

/* Look `name` up for `ctx` (its scope, then the global scope; scope -1: any), have Python start
 * it if needed, and wait until it has been ready once.  Returns the slot, or -1 with err filled.
 * Waits end early once *stop is set (NULL: never), with "stopped while waiting" in err. */
int fp_ws_acquire(fp_ws_ctx *ctx, const char *name, size_t name_len, double timeout, int flags,
                  const int *stop, char *err, size_t err_len);

/* --- vars ------------------------------------------------------------------------------------ */
int fp_ws_set_vars(fp_ws_ctx *ctx, fp_blob *vars, char *err, size_t err_len); /* takes the ref */
fp_blob *fp_ws_get_vars(fp_ws_domain *domain, int slot); /* a new reference; NULL: never published */

/* --- tasks ------------------------------------------------------------------------------------
 * fp_ws_task_submit() queues a task (taking the payload's reference) and returns its id (> 0),
 * or 0 with err (full queue, halted worker).  `notify` != 0 calls fp_py_task_done(token, id)
 * when it completes or fails (Python senders), instead of a waiter on fp_ws_task_wait(). */
int64_t fp_ws_task_submit(fp_ws_domain *domain, int slot, fp_blob *payload, int notify,
                          char *err, size_t err_len);
/* Wait up to `timeout` seconds (< 0: forever; ended early by *stop, as a timeout) for the task;
 * returns FP_TASK_* and forgets a finished task.  On DONE *result is a new reference; on FAILED err holds the message.  A task
 * still pending at the timeout is withdrawn (dropped if queued, its answer ignored if taken). */
int fp_ws_task_wait(fp_ws_domain *domain, int64_t id, double timeout, const int *stop, fp_blob **result,
                    char *err, size_t err_len);
/* The same without withdrawing: a task still pending after `timeout` stays (FP_TASK_PENDING,
 * err empty).  Python waits in slices of it, so that its signal handlers run in between. */
int fp_ws_task_poll(fp_ws_domain *domain, int64_t id, double timeout, fp_blob **result, char *err,
                    size_t err_len);
/* Take the next task of ctx's worker: its id (0: none waiting), payload as a new reference. */
int64_t fp_ws_task_receive(fp_ws_ctx *ctx, fp_blob **payload);
/* Answer task `id` taken by ctx's worker: `result` (reference taken; NULL for null), or fail it
 * with `message` when message != NULL.  -1 with err when no such task is in flight there. */
int fp_ws_task_finish(fp_ws_ctx *ctx, int64_t id, fp_blob *result, const char *message, char *err,
                      size_t err_len);

/* The fp_host callbacks of frankenpy.h for vars and tasks (loader.c puts them in its table). */
int fp_ws_host_ensure(void *ctx, const char *name, size_t name_len, double timeout, int flags, const int *stop,
                      char *err, size_t err_len);
int fp_ws_host_set_vars(void *ctx, const char *data, size_t len, char *err, size_t err_len);
fp_blob *fp_ws_host_get_vars(void *ctx, const char *name, size_t name_len, double timeout, int flags,
                             const int *stop, char *err, size_t err_len);
fp_blob *fp_ws_host_send_task(void *ctx, const char *name, size_t name_len, const char *payload, size_t len,
                              double timeout, int flags, const int *stop, char *err, size_t err_len);
int64_t fp_ws_host_receive_task(void *ctx, fp_blob **payload);
int fp_ws_host_finish_task(void *ctx, int64_t id, const char *result, size_t len, const char *message, char *err,
                           size_t err_len);

/* @cdef-end */
/* Callbacks into Python (cffi extern "Python+C", frankenpy/worker_state.py). */
int fp_py_ws_start(int64_t token, int scope, const char *name, char *err, size_t err_len);
void fp_py_task_done(int64_t token, int64_t id);

#endif
