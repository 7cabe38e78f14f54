/* HTTP requests of the ASGI app on regular PHP threads, driven from C threads; see async_request.h. */
#include "async_request.h"

#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "handoff.h"

/* Python (frankenpy/asgi.py): run the request of `handle` on pool member `member`. */
void fp_py_run_request(void *handle, int member);

/* A queued request looks at its cancel flag and its deadline this often. */
#define POLL_NS 50000000LL

typedef struct {
    fp_pool *pool;
    fp_async_request *job;
} run_args;

static int queue_for_member(fp_pool *pool, fp_async_request *job)
{
    int member;
    fp_pool_waiter *w = fp_pool_enqueue(pool, &member);
    uint64_t deadline = job->wait_ns >= 0 ? fp_monotonic_ns() + (uint64_t)job->wait_ns : 0;
    while (w && member == FP_POOL_TIMEOUT) {
        uint64_t now = fp_monotonic_ns();
        int cancelled = __atomic_load_n(&job->cancel, __ATOMIC_RELAXED);
        if (cancelled || (deadline && now >= deadline)) {
            member = fp_pool_withdraw(pool, w); /* served in between: keep it */
            if (member == FP_POOL_TIMEOUT && cancelled) {
                member = FP_ASYNC_REQUEST_CANCELLED;
            }
            break;
        }
        int64_t slice = POLL_NS;
        if (deadline && (int64_t)(deadline - now) < slice) {
            slice = (int64_t)(deadline - now);
        }
        member = fp_pool_wait(pool, w, slice);
    }
    if (w) {
        fp_pool_waiter_free(w);
    }
    return member;
}

static void *run_main(void *arg)
{
    run_args a = *(run_args *)arg;
    free(arg);
    fp_async_request *job = a.job;
    int member = queue_for_member(a.pool, job);
    if (member >= 0) {
        fp_py_run_request(job->handle, member);
        job->given_up = fp_pool_release(a.pool, member);
    }
    job->member = member;
    int fd = job->fd;
    uint64_t one = 1;
    /* The write publishes the results (a syscall is a full barrier); the loop may free the job
     * as soon as it sees it. */
    ssize_t written = write(fd, &one, sizeof one);
    (void)written; /* an eventfd written once cannot overflow */
    return NULL;
}

int fp_async_request_submit(fp_pool *pool, fp_async_request *job)
{
    run_args *a = malloc(sizeof(*a));
    if (!a) {
        return -1;
    }
    a->pool = pool;
    a->job = job;
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&t, &attr, run_main, a);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        free(a);
        return -1;
    }
    return 0;
}
