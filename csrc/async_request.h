/*
 * HTTP requests of the ASGI app (frankenpy/asgi.py) run on the runtime's regular PHP threads
 * from a C thread: the event loop neither waits for a PHP thread nor runs PHP, and no Python
 * thread is started per request.
 *
 * The C thread queues in the pool's FIFO line (pool.h) like every other caller, then hands the
 * member it got to Python's fp_py_run_request(handle, member), which runs the prepared request
 * there with Python's SAPI callbacks (cffi takes the GIL for each; PHP runs without it), gives
 * the member back, and adds 1 to the request's own eventfd, which the loop reads.
 */
#ifndef FRANKENPY_ASYNC_REQUEST_H
#define FRANKENPY_ASYNC_REQUEST_H

#include <stdint.h>

#include "pool.h"

#define FP_ASYNC_REQUEST_CANCELLED -4

typedef struct fp_async_request {
    /* in */
    void *handle;     /* passed to fp_py_run_request */
    int64_t wait_ns;  /* queue at most this long for a PHP thread (< 0: no limit) */
    int fd;           /* eventfd written once done; the job is not touched after that write */
    int cancel;       /* set by the caller: leave the line if still queued */
    fp_pool *pool;    /* set by fp_async_request_submit */
    /* out, readable once the eventfd has fired */
    int member;       /* the member it ran on, or FP_POOL_TIMEOUT, FP_POOL_CLOSED,
                       * FP_ASYNC_REQUEST_CANCELLED (left the line) */
    int given_up;     /* the pool gave up on the member meanwhile: the caller owns it now */
} fp_async_request;

/* Start `job` on a C thread of its own; 0, or -1 when no thread could be started. */
int fp_async_request_submit(fp_pool *pool, fp_async_request *job);

#endif
