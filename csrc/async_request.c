/* HTTP requests of the ASGI app on regular PHP threads, driven from C threads; see async_request.h. */
#include "async_request.h"

#include <pthread.h>
#include <unistd.h>

#include "handoff.h"

/* Python (frankenpy/asgi.py): run the request of `handle` on pool member `member`. */
void fp_py_run_request(void *handle, int member);

/* A queued request looks at its cancel flag and its deadline this often. */
#define POLL_NS 50000000LL

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
    fp_async_request *job = arg;
    int member = queue_for_member(job->pool, job);
    if (member >= 0) {
        fp_py_run_request(job->handle, member);
        job->given_up = fp_pool_release(job->pool, member);
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
    job->pool = pool;
    pthread_t t;
    if (pthread_create(&t, NULL, run_main, job) != 0) {
        return -1;
    }
    pthread_detach(t);
    return 0;
}
