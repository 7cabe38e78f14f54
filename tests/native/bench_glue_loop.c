/*
 * bench_glue_loop: the per-request cost of a PHP execution through frankenpy's C glue.
 *
 * Times N iterations of
 *     fp_execute(req);  (check the output)  fp_request_clear(req);
 * on one thread, with req.script_path = FILE and FP_OUTPUT_BUFFER, i.e. what one classic
 * execution costs below Python: request start-up, the script, request shutdown, collecting the
 * output into a malloc'd buffer and freeing it.  Compare with csrc/bench/bench_embed_loop (the
 * stock embed SAPI on the same libphp); `bench_embed_loop -n` is the like-for-like floor, since
 * fp_startup() reads no php.ini either (only the extensions built into libphp, no opcache).
 *
 * Usage: bench_glue_loop FILE [ITERATIONS]
 *   ITERATIONS  timed executions (default 20000); a few untimed warm-up executions run first
 *
 * Prints one machine-readable line on stdout, e.g.
 *     glue_loop_us_per_request=12.34 iterations=20000 bytes_per_request=13 ini=none
 * Exits 1 if start-up fails, an execution does not exit with 0, or its output is empty or
 * differs from the first execution's.
 */
#define _GNU_SOURCE
#include "frankenpy.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DEFAULT_ITERATIONS 20000L
#define WARMUP_ITERATIONS 100L

static int on_output(void *handle, const char *data, size_t len)
{
    (void)handle; (void)data; (void)len; /* FP_OUTPUT_BUFFER: never called */
    return 0;
}

static void on_log(void *handle, int type, const char *file, uint32_t line, const char *message)
{
    (void)handle;
    fprintf(stderr, "bench_glue_loop: PHP [%d] %s (%s:%u)\n", type, message, file ? file : "-", line);
}

static void on_headers(void *handle, int status, const char *lines, size_t len)
{
    (void)handle; (void)status; (void)lines; (void)len;
}

static size_t on_read_body(void *handle, char *buf, size_t len)
{
    (void)handle; (void)buf; (void)len;
    return 0;
}

static void on_time_limit(void *handle, int64_t seconds, int initial)
{
    (void)handle; (void)seconds; (void)initial;
}

static void on_worker_ready(void *handle)
{
    (void)handle;
}

/* The benchmark's scripts never call chdir(). */
static void on_chdir(void)
{
}

static int on_next_request(void *handle, fp_request **next)
{
    (void)handle; (void)next;
    return 0;
}

static void on_request_done(void *handle, fp_request *done)
{
    (void)handle; (void)done;
}

static const fp_host host = {
    .output = on_output,
    .log = on_log,
    .headers = on_headers,
    .read_body = on_read_body,
    .time_limit = on_time_limit,
    .worker_ready = on_worker_ready,
    .chdir_begin = on_chdir,
    .chdir_end = on_chdir,
    .next_request = on_next_request,
    .request_done = on_request_done,
};

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static char *expected;
static size_t expected_len;
static size_t bytes_total;

/* One execution; returns 0 if it exited with 0 and wrote the expected bytes. */
static int one_execution(fp_request *req)
{
    int rc = fp_execute(req);
    int ok = rc == 0 && req->output_len > 0;
    if (ok && !expected) {
        expected = malloc(req->output_len);
        memcpy(expected, req->output, req->output_len);
        expected_len = req->output_len;
    }
    ok = ok && req->output_len == expected_len && memcmp(req->output, expected, expected_len) == 0;
    if (!ok) {
        fprintf(stderr, "bench_glue_loop: execution failed: exit %d, end_reason %d, %zu output bytes\n", rc,
                req->end_reason, req->output_len);
    }
    bytes_total += req->output_len;
    fp_request_clear(req);
    return ok ? 0 : -1;
}

int main(int argc, char **argv)
{
    char path[PATH_MAX];
    long iterations = DEFAULT_ITERATIONS;

    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: bench_glue_loop FILE [ITERATIONS]\n");
        return 2;
    }
    if (!realpath(argv[1], path)) {
        fprintf(stderr, "bench_glue_loop: %s: %s\n", argv[1], strerror(errno));
        return 2;
    }
    if (argc == 3) {
        char *end;
        errno = 0;
        iterations = strtol(argv[2], &end, 10);
        if (errno || *end || iterations <= 0) {
            fprintf(stderr, "usage: bench_glue_loop FILE [ITERATIONS]\n");
            return 2;
        }
    }

    char err[512];
    if (fp_startup(&host, "", err, sizeof(err)) != 0) {
        fprintf(stderr, "bench_glue_loop: fp_startup: %s\n", err);
        return 1;
    }

    fp_request req;
    memset(&req, 0, sizeof(req));
    req.script_path = path;
    req.output_mode = FP_OUTPUT_BUFFER;
    req.worker_fd = -1;
    req.content_length = -1;

    int rc = 0;
    for (long i = 0; i < WARMUP_ITERATIONS && rc == 0; i++) {
        rc = one_execution(&req);
    }
    size_t bytes_before = bytes_total;
    double t0 = now_us();
    for (long i = 0; i < iterations && rc == 0; i++) {
        rc = one_execution(&req);
    }
    double t1 = now_us();
    fp_shutdown();
    free(expected);
    if (rc != 0) {
        return 1;
    }
    printf("glue_loop_us_per_request=%.2f iterations=%ld bytes_per_request=%zu ini=none\n",
           (t1 - t0) / (double)iterations, iterations, (bytes_total - bytes_before) / (size_t)iterations);
    return 0;
}
