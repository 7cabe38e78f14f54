/* Hand-off queues; see handoff.h. */
#include "handoff.h"

#include <time.h>

uint64_t fp_monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int fp_handoff_init(fp_handoff *q)
{
    int rc = pthread_mutex_init(&q->mu, NULL);
    if (rc != 0) {
        return rc;
    }
    rc = pthread_cond_init(&q->cond, NULL);
    if (rc != 0) {
        pthread_mutex_destroy(&q->mu);
        return rc;
    }
    q->head.next = q->head.prev = &q->head;
    q->length = q->idle_takers = 0;
    q->closed = 0;
    q->total_put = q->total_taken = q->total_expired = q->total_stalled = 0;
    return 0;
}

void fp_handoff_destroy(fp_handoff *q)
{
    pthread_cond_destroy(&q->cond);
    pthread_mutex_destroy(&q->mu);
}

static void unlink_item(fp_handoff *q, fp_handoff_item *item)
{
    item->prev->next = item->next;
    item->next->prev = item->prev;
    item->next = item->prev = NULL;
    q->length--;
}

int fp_handoff_put(fp_handoff *q, fp_handoff_item *item)
{
    item->enqueued_ns = fp_monotonic_ns();
    pthread_mutex_lock(&q->mu);
    if (q->closed) {
        pthread_mutex_unlock(&q->mu);
        return -1;
    }
    item->prev = q->head.prev;
    item->next = &q->head;
    q->head.prev->next = item;
    q->head.prev = item;
    q->length++;
    q->total_put++;
    /* One idle taker is enough; a woken taker that drains passes the signal on. */
    int wake = q->idle_takers > 0;
    pthread_mutex_unlock(&q->mu);
    if (wake) {
        pthread_cond_signal(&q->cond);
    }
    return 0;
}

fp_handoff_item *fp_handoff_take(fp_handoff *q, const volatile int *drain)
{
    fp_handoff_item *item = NULL;
    pthread_mutex_lock(&q->mu);
    for (;;) {
        if (q->closed || (drain && *drain)) {
            if (q->length && !q->closed) {
                pthread_cond_signal(&q->cond); /* leave the item to another taker */
            }
            break;
        }
        if (q->length) {
            item = q->head.next;
            unlink_item(q, item);
            q->total_taken++;
            if (fp_monotonic_ns() - item->enqueued_ns >= FP_HANDOFF_STALL_NS) {
                q->total_stalled++;
            }
            break;
        }
        q->idle_takers++;
        pthread_cond_wait(&q->cond, &q->mu);
        q->idle_takers--;
    }
    pthread_mutex_unlock(&q->mu);
    return item;
}

fp_handoff_item *fp_handoff_expire(fp_handoff *q, uint64_t now_ns, uint64_t max_wait_ns)
{
    fp_handoff_item *first = NULL, **tail = &first;
    pthread_mutex_lock(&q->mu);
    /* FIFO: the items are in enqueue order, so the expired ones are a prefix. */
    while (q->length) {
        fp_handoff_item *item = q->head.next;
        if (now_ns < item->enqueued_ns || now_ns - item->enqueued_ns <= max_wait_ns) {
            break;
        }
        unlink_item(q, item);
        q->total_expired++;
        *tail = item;
        tail = &item->next;
    }
    pthread_mutex_unlock(&q->mu);
    *tail = NULL;
    return first;
}

void fp_handoff_wake(fp_handoff *q)
{
    pthread_mutex_lock(&q->mu);
    pthread_cond_broadcast(&q->cond);
    pthread_mutex_unlock(&q->mu);
}

void fp_handoff_close(fp_handoff *q)
{
    pthread_mutex_lock(&q->mu);
    q->closed = 1;
    pthread_cond_broadcast(&q->cond);
    pthread_mutex_unlock(&q->mu);
}

size_t fp_handoff_length(fp_handoff *q)
{
    pthread_mutex_lock(&q->mu);
    size_t n = q->length;
    pthread_mutex_unlock(&q->mu);
    return n;
}

size_t fp_handoff_idle_takers(fp_handoff *q)
{
    pthread_mutex_lock(&q->mu);
    size_t n = q->idle_takers;
    pthread_mutex_unlock(&q->mu);
    return n;
}

uint64_t fp_handoff_stalls(fp_handoff *q, uint64_t *oldest_wait_ns)
{
    uint64_t now = fp_monotonic_ns();
    pthread_mutex_lock(&q->mu);
    uint64_t stalled = q->total_stalled;
    uint64_t enqueued = q->length ? q->head.next->enqueued_ns : now;
    pthread_mutex_unlock(&q->mu);
    *oldest_wait_ns = now > enqueued ? now - enqueued : 0;
    return stalled;
}
