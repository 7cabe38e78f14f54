/*
 * Unit tests of csrc/worker_state.c (vars, tasks, readiness waits), with real threads and pipes
 * and no PHP or Python: the two callbacks into Python are defined here.  Also built under ASan,
 * UBSan and TSan (scripts/test.sh), which is where the locking is checked.
 *
 *   build/cmake/tests/native/test_worker_state
 */
#define _GNU_SOURCE
#include "worker_state.h"

#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "check.h"

/* ---- the Python side, stubbed ---------------------------------------------------------------- */
static fp_ws_domain *domain;
static int lazy_slot = -1;
static int start_calls; /* atomic */
static int64_t done_ids[64];
static int done_count; /* atomic */

int fp_py_ws_start(int64_t token, int scope, const char *name, char *err, size_t err_len)
{
    (void)token;
    (void)scope;
    __atomic_add_fetch(&start_calls, 1, __ATOMIC_SEQ_CST);
    if (strcmp(name, "lazy") == 0 && lazy_slot >= 0) {
        fp_ws_slot_started(domain, lazy_slot);
        return lazy_slot;
    }
    snprintf(err, err_len, "unknown background worker '%s'", name);
    return -1;
}

void fp_py_task_done(int64_t token, int64_t id)
{
    (void)token;
    int i = __atomic_fetch_add(&done_count, 1, __ATOMIC_SEQ_CST);
    if (i < 64) {
        done_ids[i] = id;
    }
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- readiness, lazy start, cycles ------------------------------------------------------------ */
typedef struct {
    fp_ws_ctx *ctx;
    const char *name;
    double timeout;
    int rc;
    char err[256];
} acquire_call;

static void *acquire_thread(void *arg)
{
    acquire_call *c = arg;
    c->rc = fp_ws_acquire(c->ctx, c->name, strlen(c->name), c->timeout, 0, NULL, c->err, sizeof(c->err));
    return NULL;
}

static void *set_flag_later(void *flag)
{
    usleep(50000);
    __atomic_store_n((int *)flag, 1, __ATOMIC_RELEASE);
    return NULL;
}

static void test_readiness(void)
{
    int a = fp_ws_slot_add(domain, 0, "alpha", 4);
    int b = fp_ws_slot_add(domain, 0, "beta", 4);
    lazy_slot = fp_ws_slot_add(domain, 0, "lazy", 4);
    fp_ws_slot_started(domain, a);
    fp_ws_slot_started(domain, b);
    fp_ws_ctx *anyone = fp_ws_ctx_new(domain, -1, -1);
    fp_ws_ctx *in_alpha = fp_ws_ctx_new(domain, 0, a);
    fp_ws_ctx *in_beta = fp_ws_ctx_new(domain, 0, b);
    char err[256];

    /* not ready: times out */
    double t0 = now_s();
    CHECK(fp_ws_acquire(anyone, "alpha", 5, 0.2, 0, NULL, err, sizeof(err)) == -1, "acquire of a booting worker");
    CHECK(strstr(err, "timed out") != NULL, "message: %s", err);
    CHECK(now_s() - t0 >= 0.19 && now_s() - t0 < 2.0, "waited %.3f s", now_s() - t0);

    /* an interrupted PHP thread stops waiting (its stop flag), long before the timeout */
    static int stop_flag;
    t0 = now_s();
    pthread_t stopper;
    pthread_create(&stopper, NULL, set_flag_later, &stop_flag);
    CHECK(fp_ws_acquire(anyone, "alpha", 5, 10.0, 0, &stop_flag, err, sizeof(err)) == -1 &&
              strstr(err, "stopped while waiting"),
          "stopped: %s", err);
    CHECK(now_s() - t0 < 2.0, "stopped after %.3f s", now_s() - t0);
    pthread_join(stopper, NULL);

    /* a waiter wakes when the worker becomes ready */
    acquire_call waiter = {anyone, "alpha", 10.0, 0, ""};
    pthread_t thread;
    pthread_create(&thread, NULL, acquire_thread, &waiter);
    usleep(50000);
    fp_ws_slot_ready(domain, a);
    pthread_join(thread, NULL);
    CHECK(waiter.rc == a, "waiter got %d (%s)", waiter.rc, waiter.err);

    /* unknown names go to Python, which refuses; lazy ones are started by it */
    CHECK(fp_ws_acquire(anyone, "ghost", 5, 1.0, 0, NULL, err, sizeof(err)) == -1 && strstr(err, "unknown"),
          "ghost: %s", err);
    acquire_call lazy = {anyone, "lazy", 10.0, 0, ""};
    pthread_create(&thread, NULL, acquire_thread, &lazy);
    usleep(50000);
    fp_ws_slot_ready(domain, lazy_slot);
    pthread_join(thread, NULL);
    CHECK(lazy.rc == lazy_slot, "lazy: %d (%s)", lazy.rc, lazy.err);
    int calls = __atomic_load_n(&start_calls, __ATOMIC_SEQ_CST);
    CHECK(fp_ws_acquire(anyone, "lazy", 4, 1.0, 0, NULL, err, sizeof(err)) == lazy_slot, "lazy again");
    CHECK(__atomic_load_n(&start_calls, __ATOMIC_SEQ_CST) == calls, "a started slot needs no Python");

    /* boot failures: fail fast only when asked; a halt always fails a wait */
    int c = fp_ws_slot_add(domain, 0, "gamma", 4);
    fp_ws_slot_started(domain, c);
    fp_ws_slot_failed(domain, c, 0, 3, 1, "exit status 3");
    CHECK(fp_ws_acquire(anyone, "gamma", 5, 10.0, FP_WS_FAIL_FAST, NULL, err, sizeof(err)) == -1 &&
              strstr(err, "failed to boot: exit status 3 after 1 attempt;"),
          "fail fast: %s", err);
    fp_ws_slot_failed(domain, c, 1, 3, 2, "exit status 3");
    CHECK(fp_ws_acquire(anyone, "gamma", 5, 10.0, 0, NULL, err, sizeof(err)) == -1 && strstr(err, "halted"),
          "halted: %s", err);

    /* a cycle: booting beta waits for delta, then booting delta asks for beta */
    int d = fp_ws_slot_add(domain, 0, "delta", 4);
    fp_ws_slot_started(domain, d);
    fp_ws_ctx *in_delta = fp_ws_ctx_new(domain, 0, d);
    acquire_call beta_waits = {in_beta, "delta", 10.0, 0, ""};
    pthread_create(&thread, NULL, acquire_thread, &beta_waits);
    usleep(50000);
    t0 = now_s();
    CHECK(fp_ws_acquire(in_delta, "beta", 4, 10.0, 0, NULL, err, sizeof(err)) == -1 && strstr(err, "wait cycle"),
          "cycle: %s", err);
    CHECK(now_s() - t0 < 1.0, "the cycle was detected at once");
    fp_ws_slot_ready(domain, d);
    pthread_join(thread, NULL);
    CHECK(beta_waits.rc == d, "beta's wait ended with delta ready");
    CHECK(fp_ws_acquire(in_alpha, "alpha", 5, 1.0, 0, NULL, err, sizeof(err)) == a, "a ready worker may ask for itself");
    fp_ws_ctx *in_gamma = fp_ws_ctx_new(domain, 0, c);
    fp_ws_slot_started(domain, c);
    CHECK(fp_ws_acquire(in_gamma, "gamma", 5, 10.0, 0, NULL, err, sizeof(err)) == -1 && strstr(err, "wait cycle"),
          "waiting for itself: %s", err);
}

/* ---- vars: never torn ---------------------------------------------------------------------------- */
#define BLOB_LEN 4096
static int vars_slot;
static volatile int writing;

static void *reader_thread(void *arg)
{
    int *torn = arg;
    while (__atomic_load_n(&writing, __ATOMIC_SEQ_CST)) {
        fp_blob *blob = fp_ws_get_vars(domain, vars_slot);
        if (blob) {
            for (size_t i = 1; i < blob->len; i++) {
                if (blob->data[i] != blob->data[0]) {
                    (*torn)++;
                    break;
                }
            }
            fp_blob_release(blob);
        }
    }
    return NULL;
}

static void test_vars(void)
{
    vars_slot = fp_ws_slot_add(domain, 0, "vars", 4);
    fp_ws_ctx *worker = fp_ws_ctx_new(domain, 0, vars_slot);
    fp_ws_ctx *outsider = fp_ws_ctx_new(domain, 0, -1);
    char err[256], data[BLOB_LEN];
    CHECK(fp_ws_get_vars(domain, vars_slot) == NULL, "nothing published yet");
    CHECK(fp_ws_set_vars(outsider, fp_blob_new("x", 1), err, sizeof(err)) == -1, "outside a worker");

    int torn[8] = {0};
    pthread_t readers[8];
    writing = 1;
    for (int i = 0; i < 8; i++) {
        pthread_create(&readers[i], NULL, reader_thread, &torn[i]);
    }
    for (int v = 0; v < 2000; v++) {
        memset(data, 'a' + v % 26, sizeof(data));
        CHECK(fp_ws_set_vars(worker, fp_blob_new(data, sizeof(data)), err, sizeof(err)) == 0, "publish");
    }
    __atomic_store_n(&writing, 0, __ATOMIC_SEQ_CST);
    for (int i = 0; i < 8; i++) {
        pthread_join(readers[i], NULL);
        CHECK(torn[i] == 0, "reader %d saw %d torn snapshots", i, torn[i]);
    }
    int64_t counts[4];
    fp_ws_slot_counts(domain, vars_slot, counts);
    CHECK(counts[3] == 2000, "publications: %lld", (long long)counts[3]);
}

/* ---- tasks ------------------------------------------------------------------------------------------ */
static int task_slot;
static fp_ws_ctx *task_workers[2];
static volatile int serving;

static void *worker_thread(void *arg)
{
    fp_ws_ctx *ctx = arg;
    char err[256];
    while (__atomic_load_n(&serving, __ATOMIC_SEQ_CST)) {
        fp_blob *payload = NULL;
        int64_t id = fp_ws_task_receive(ctx, &payload);
        if (!id) {
            usleep(100);
            continue;
        }
        /* answer with the payload doubled; "fail" fails it */
        if (payload->len == 4 && memcmp(payload->data, "fail", 4) == 0) {
            fp_ws_task_finish(ctx, id, NULL, "refused", err, sizeof(err));
        } else {
            char answer[64];
            int n = snprintf(answer, sizeof(answer), "%.*s%.*s", (int)payload->len, payload->data, (int)payload->len,
                             payload->data);
            fp_ws_task_finish(ctx, id, fp_blob_new(answer, (size_t)n), NULL, err, sizeof(err));
        }
        fp_blob_release(payload);
    }
    return NULL;
}

static void *sender_thread(void *arg)
{
    int *bad = arg;
    char err[256], text[32];
    for (int i = 0; i < 200; i++) {
        int n = snprintf(text, sizeof(text), "%d", i);
        int64_t id = fp_ws_task_submit(domain, task_slot, fp_blob_new(text, (size_t)n), 0, err, sizeof(err));
        fp_blob *result = NULL;
        if (!id || fp_ws_task_wait(domain, id, 10.0, NULL, &result, err, sizeof(err)) != FP_TASK_DONE ||
            result->len != (size_t)(2 * n) || memcmp(result->data, text, (size_t)n) != 0) {
            (*bad)++;
        }
        fp_blob_release(result);
    }
    return NULL;
}

static void test_tasks(void)
{
    task_slot = fp_ws_slot_add(domain, 0, "tasks", 8);
    char err[256];
    int pipefd[2];
    CHECK(pipe(pipefd) == 0, "pipe");
    task_workers[0] = fp_ws_ctx_new(domain, 0, task_slot);
    task_workers[1] = fp_ws_ctx_new(domain, 0, task_slot);

    /* the handle becomes readable when a task waits; a full queue refuses at once */
    fp_ws_attach(task_workers[0], pipefd[1]);
    int64_t first = fp_ws_task_submit(domain, task_slot, fp_blob_new("x", 1), 1, err, sizeof(err));
    struct pollfd pfd = {pipefd[0], POLLIN, 0};
    CHECK(first > 0 && poll(&pfd, 1, 1000) == 1, "readable after a submit");
    for (int i = 1; i < 8; i++) {
        fp_ws_task_submit(domain, task_slot, fp_blob_new("y", 1), 1, err, sizeof(err));
    }
    CHECK(fp_ws_task_submit(domain, task_slot, fp_blob_new("z", 1), 0, err, sizeof(err)) == 0 &&
              strstr(err, "max_queued_tasks=8"),
          "full queue: %s", err);

    /* in flight when the run ends: fails, naming the worker; the queued ones wait */
    fp_blob *payload = NULL;
    int64_t taken = fp_ws_task_receive(task_workers[0], &payload);
    fp_blob_release(payload);
    CHECK(taken == first, "FIFO");
    int before = __atomic_load_n(&done_count, __ATOMIC_SEQ_CST);
    fp_ws_run_ended(task_workers[0], "crashed: exit status 1");
    CHECK(__atomic_load_n(&done_count, __ATOMIC_SEQ_CST) == before + 1, "Python told once");
    fp_blob *result = NULL;
    CHECK(fp_ws_task_wait(domain, first, 0, NULL, &result, err, sizeof(err)) == FP_TASK_FAILED &&
              strstr(err, "background worker 'tasks' crashed: exit status 1"),
          "crashed: %s", err);
    int64_t counts[4];
    fp_ws_slot_counts(domain, task_slot, counts);
    CHECK(counts[0] == 7 && counts[2] == 1, "queued %lld failed %lld", (long long)counts[0], (long long)counts[2]);
    /* a new run is told about every queued task */
    int fresh[2];
    CHECK(pipe(fresh) == 0, "pipe");
    fp_ws_attach(task_workers[0], fresh[1]);
    char bytes[16];
    CHECK(read(fresh[0], bytes, sizeof(bytes)) == 7, "one wake-up byte per queued task");
    fp_ws_fail_queued(domain, task_slot, "halted: exit status 2");
    for (int i = 0; i < 7; i++) {
        CHECK(fp_ws_task_wait(domain, first + 1 + i, 0, NULL, &result, err, sizeof(err)) == FP_TASK_FAILED &&
                  strstr(err, "'tasks' halted"),
              "queued task failed: %s", err);
    }
    fp_ws_attach(task_workers[0], -1);

    /* many senders, two worker threads */
    serving = 1;
    pthread_t workers[2], senders[4];
    int bad[4] = {0};
    for (int i = 0; i < 2; i++) {
        pthread_create(&workers[i], NULL, worker_thread, task_workers[i]);
    }
    for (int i = 0; i < 4; i++) {
        pthread_create(&senders[i], NULL, sender_thread, &bad[i]);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(senders[i], NULL);
        CHECK(bad[i] == 0, "sender %d got %d wrong answers", i, bad[i]);
    }
    int64_t refused = fp_ws_task_submit(domain, task_slot, fp_blob_new("fail", 4), 0, err, sizeof(err));
    CHECK(fp_ws_task_wait(domain, refused, 10.0, NULL, &result, err, sizeof(err)) == FP_TASK_FAILED &&
              strcmp(err, "refused") == 0,
          "fail_task message: %s", err);
    __atomic_store_n(&serving, 0, __ATOMIC_SEQ_CST);
    for (int i = 0; i < 2; i++) {
        pthread_join(workers[i], NULL);
    }
    fp_ws_slot_counts(domain, task_slot, counts);
    CHECK(counts[1] == 800 && counts[0] == 0, "completed %lld queued %lld", (long long)counts[1],
          (long long)counts[0]);

    /* a timeout withdraws a queued task; close fails what is left */
    int64_t late = fp_ws_task_submit(domain, task_slot, fp_blob_new("q", 1), 0, err, sizeof(err));
    CHECK(fp_ws_task_wait(domain, late, 0.05, NULL, &result, err, sizeof(err)) == FP_TASK_PENDING &&
              strstr(err, "timed out"),
          "timeout: %s", err);
    fp_ws_slot_counts(domain, task_slot, counts);
    CHECK(counts[0] == 0, "withdrawn");
    int64_t orphan = fp_ws_task_submit(domain, task_slot, fp_blob_new("q", 1), 0, err, sizeof(err));
    fp_ws_domain_close(domain, "is stopped: runtime shut down");
    CHECK(fp_ws_task_wait(domain, orphan, 0, NULL, &result, err, sizeof(err)) == FP_TASK_FAILED &&
              strstr(err, "'tasks' is stopped"),
          "closed: %s", err);
    CHECK(fp_ws_task_submit(domain, task_slot, fp_blob_new("q", 1), 0, err, sizeof(err)) == 0, "closed domain");
    for (int fd = 0; fd < 2; fd++) {
        close(pipefd[fd]);
        close(fresh[fd]);
    }
}

int main(void)
{
    domain = fp_ws_domain_new(1);
    test_readiness();
    test_vars();
    test_tasks();
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("worker_state: all checks passed\n");
    return 0;
}
