/*
 * test_glue: native tests of the C glue (csrc/sapi.c) against its contract (csrc/frankenpy.h).
 *
 * The test links libfrankenpy_sapi.so, which links libphp directly: one interpreter per process,
 * no private copies.  fp_startup() runs once per process, so every test group runs in its own
 * process (with its own php.ini text):
 *
 *     test_glue GROUP     run one group (ctest registers one test per group)
 *     test_glue           run every group, each in a forked child
 *     test_glue --list    print the group names
 *
 * Checks:
 *     CHECK(cond, fmt, ...)      must hold; a failure makes the process exit 1
 *     KNOWN_BUG(cond, fmt, ...)  what the contract says, known NOT to hold yet (a bug of the glue,
 *                                described in fmt).  Reported as XFAIL.  If it starts to hold the
 *                                check reports XPASS and fails the run, so that the marker gets
 *                                turned into a CHECK once the bug is fixed.
 * The last line is "N passed, N failed, N known bugs (xfail), N fixed (xpass)".
 */
#define _GNU_SOURCE
#include "frankenpy.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* PHP's E_* values (php headers are not needed by the test). */
#define PHP_E_ERROR 1
#define PHP_E_WARNING 2
#define PHP_E_PARSE 4
#define PHP_E_COMPILE_ERROR 64
#define PHP_E_USER_ERROR 256

/* ---- checks ------------------------------------------------------------------------------- */

static int n_passed, n_failed, n_xfail, n_xpass;

__attribute__((format(printf, 5, 6))) static int check_(int ok, const char *expr, const char *file,
                                                        int line, const char *fmt, ...)
{
    if (ok) {
        n_passed++;
        return 1;
    }
    n_failed++;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stdout, "FAIL %s:%d: %s -- ", file, line, expr);
    vfprintf(stdout, fmt, ap);
    fputc('\n', stdout);
    va_end(ap);
    fflush(stdout);
    return 0;
}

__attribute__((format(printf, 5, 6))) static int known_bug_(int ok, const char *expr, const char *file,
                                                            int line, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (ok) {
        n_xpass++;
        fprintf(stdout, "XPASS %s:%d: %s now holds -- the known bug seems fixed, turn this "
                        "KNOWN_BUG into a CHECK: ", file, line, expr);
    } else {
        n_xfail++;
        fprintf(stdout, "XFAIL %s:%d: known bug: ", file, line);
    }
    vfprintf(stdout, fmt, ap);
    fputc('\n', stdout);
    va_end(ap);
    fflush(stdout);
    return ok;
}

#define CHECK(cond, ...) check_(!!(cond), #cond, __FILE__, __LINE__, __VA_ARGS__)
#define KNOWN_BUG(cond, ...) known_bug_(!!(cond), #cond, __FILE__, __LINE__, __VA_ARGS__)

/* ---- small helpers -------------------------------------------------------------------------- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d) {
        return -1;
    }
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] != '.') {
            n++;
        }
    }
    closedir(d);
    return n - 1; /* the directory stream's own descriptor */
}

static long rss_kb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) {
        return -1;
    }
    char line[256];
    long kb = -1;
    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, "VmRSS:", 6) == 0) {
            kb = strtol(line + 6, NULL, 10);
        }
    }
    fclose(f);
    return kb;
}

static int itimer_prof_armed(void)
{
    struct itimerval it;
    if (getitimer(ITIMER_PROF, &it) != 0) {
        return -1;
    }
    return it.it_value.tv_sec || it.it_value.tv_usec || it.it_interval.tv_sec || it.it_interval.tv_usec;
}

static char tmp_dir[64];

/* Write a PHP file under the group's temporary directory; returns its (static) path. */
static const char *write_php(const char *name, const char *contents)
{
    static char paths[8][128];
    static int next;
    char *path = paths[next++ % 8];
    snprintf(path, sizeof(paths[0]), "%s/%s", tmp_dir, name);
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stdout, "cannot write %s: %s\n", path, strerror(errno));
        exit(2);
    }
    fputs(contents, f);
    fclose(f);
    return path;
}

static void remove_tmp_dir(void)
{
    if (!tmp_dir[0]) {
        return;
    }
    DIR *d = opendir(tmp_dir);
    if (d) {
        struct dirent *e;
        char path[512];
        while ((e = readdir(d)) != NULL) {
            if (e->d_name[0] != '.') {
                snprintf(path, sizeof(path), "%s/%s", tmp_dir, e->d_name);
                unlink(path);
            }
        }
        closedir(d);
    }
    rmdir(tmp_dir);
}

/* ---- the host: callbacks record everything into a `rec` (the fp_request handle) ------------ */

#define MAX_LOGS 64

typedef struct log_entry {
    int type;
    char file[256];
    uint32_t line;
    char message[512];
} log_entry;

typedef struct rec {
    pthread_mutex_t mu;
    /* output() */
    char *out;
    size_t out_len, out_cap;
    int output_calls;
    int itimer_armed_at_output; /* getitimer(ITIMER_PROF) was non-zero in an output() call */
    int php_sigprof_at_output;  /* PHP's SIGPROF handler was installed in an output() call */
    int client_gone_after;      /* > 0: output() accepts that many calls, then returns -1 */
    int rejected_calls;         /* output() calls answered with -1 (their bytes are dropped) */
    /* log() */
    log_entry logs[MAX_LOGS];
    int nlogs;
    /* headers() */
    int headers_calls;
    int status;
    char headers[2048];
    size_t out_len_at_headers; /* output bytes seen before the headers */
    /* read_body() */
    const char *body;
    size_t body_len, body_pos;
    /* time_limit() */
    int64_t limits[16];
    int initial[16]; /* time_limit()'s `initial` flag of each call */
    int nlimits;
    int itimer_armed_at_limit;
    /* worker_ready() */
    int worker_ready_calls;
    /* next_request() / request_done() (HTTP worker) */
    fp_request *queue[8];
    int nqueue, qpos;
    fp_request *done[8];
    int ndone;
    /* interim(), finish_request(), php_log() (csrc/http_functions.c) */
    int interim_calls, interim_status, interim_result;
    char interim_headers[512];
    size_t out_len_at_interim;
    int headers_calls_at_interim;
    int finish_calls, headers_calls_at_finish;
    char finished_output[256]; /* what finish_request() found in req->output */
    int php_log_calls, php_log_level;
    char php_log_message[256], php_log_context[256];
} rec;

/* Diagnostics logged without an execution (handle NULL): startup messages. */
static int null_handle_logs;
static int startup_log_type_seen = -1; /* type of the first one */
static int zend_extension_failure_logged; /* zend_extension's "Failed loading" (libphp's stderr) */

static void rec_init(rec *r)
{
    memset(r, 0, sizeof(*r));
    pthread_mutex_init(&r->mu, NULL);
}

static void rec_free(rec *r)
{
    free(r->out);
    pthread_mutex_destroy(&r->mu);
    memset(r, 0, sizeof(*r));
}

static void rec_reset(rec *r)
{
    rec_free(r);
    rec_init(r);
}

static int sigprof_handler_in_libphp(void);

/* Append to what the host received for `r` (its `out`, kept NUL-terminated); under r->mu. */
static void rec_append(rec *r, const char *data, size_t len)
{
    if (r->out_len + len + 1 > r->out_cap) {
        size_t cap = r->out_cap ? r->out_cap : 256;
        while (cap < r->out_len + len + 1) {
            cap *= 2;
        }
        r->out = realloc(r->out, cap);
        r->out_cap = cap;
    }
    memcpy(r->out + r->out_len, data, len);
    r->out_len += len;
    r->out[r->out_len] = '\0';
}

static int host_output(void *handle, const char *data, size_t len)
{
    rec *r = handle;
    if (!r) {
        return 0;
    }
    pthread_mutex_lock(&r->mu);
    if (r->client_gone_after > 0 && r->output_calls >= r->client_gone_after) {
        r->rejected_calls++; /* the client has gone away */
        pthread_mutex_unlock(&r->mu);
        return -1;
    }
    rec_append(r, data, len);
    r->output_calls++;
    if (itimer_prof_armed() != 0) {
        r->itimer_armed_at_output++;
    }
    if (sigprof_handler_in_libphp()) {
        r->php_sigprof_at_output++;
    }
    pthread_mutex_unlock(&r->mu);
    return 0;
}

static int verbose_logs;

static void host_log(void *handle, int type, const char *file, uint32_t line, const char *message)
{
    rec *r = handle;
    if (verbose_logs) {
        fprintf(stdout, "  [log type=%d %s:%u] %.200s\n", type, file ? file : "-", line, message);
    }
    if (!r) {
        if (__atomic_add_fetch(&null_handle_logs, 1, __ATOMIC_SEQ_CST) == 1 && message &&
            strstr(message, "nonexistent")) {
            startup_log_type_seen = type;
        }
        if (message && strstr(message, "Failed loading /nonexistent/fp_zend_ext.so")) {
            zend_extension_failure_logged = 1;
        }
        return;
    }
    pthread_mutex_lock(&r->mu);
    if (r->nlogs < MAX_LOGS) {
        log_entry *e = &r->logs[r->nlogs];
        e->type = type;
        snprintf(e->file, sizeof(e->file), "%s", file ? file : "");
        e->line = line;
        snprintf(e->message, sizeof(e->message), "%s", message ? message : "");
    }
    r->nlogs++;
    pthread_mutex_unlock(&r->mu);
}

static void host_headers(void *handle, int status, const char *lines, size_t len)
{
    rec *r = handle;
    pthread_mutex_lock(&r->mu);
    r->headers_calls++;
    r->status = status;
    r->out_len_at_headers = r->out_len;
    snprintf(r->headers, sizeof(r->headers), "%.*s", (int)len, lines);
    pthread_mutex_unlock(&r->mu);
}

static size_t host_read_body(void *handle, char *buf, size_t len)
{
    rec *r = handle;
    size_t n = r->body_len - r->body_pos;
    if (n > len) {
        n = len;
    }
    if (n) {   /* no body: r->body is NULL, and memcpy from NULL is undefined even for 0 bytes */
        memcpy(buf, r->body + r->body_pos, n);
    }
    r->body_pos += n;
    return n;
}

static void host_time_limit(void *handle, int64_t seconds, int initial)
{
    rec *r = handle;
    pthread_mutex_lock(&r->mu);
    if (r->nlimits < 16) {
        r->limits[r->nlimits] = seconds;
        r->initial[r->nlimits] = initial;
    }
    r->nlimits++;
    if (itimer_prof_armed() != 0) {
        r->itimer_armed_at_limit++;
    }
    pthread_mutex_unlock(&r->mu);
}

static void host_worker_ready(void *handle)
{
    rec *r = handle;
    __atomic_add_fetch(&r->worker_ready_calls, 1, __ATOMIC_SEQ_CST);
}

static int host_next_request(void *handle, fp_request **next)
{
    rec *r = handle;
    if (r->qpos >= r->nqueue) {
        return 0;
    }
    *next = r->queue[r->qpos++];
    return 1;
}

static void host_request_done(void *handle, fp_request *done)
{
    rec *r = handle;
    if (r->ndone < 8) {
        r->done[r->ndone] = done;
    }
    r->ndone++;
    /* The glue frees the request's collected output when this returns: take it now, after
     * what its flushes delivered, into the request's own record. */
    rec *sub = done->handle;
    if (sub && done->output_len) {
        pthread_mutex_lock(&sub->mu);
        rec_append(sub, done->output, done->output_len);
        pthread_mutex_unlock(&sub->mu);
    }
}

/* libphp's own SIGPROF handler (zend_signal_handler_defer) lies inside libphp: same dli_fbase as
 * php_request_startup.  The glue must never let it be installed. */
static void *libphp_base; /* dli_fbase of libphp, 0 if not found */

static void *sigaction_handler(const struct sigaction *sa)
{
    return (sa->sa_flags & SA_SIGINFO) ? (void *)sa->sa_sigaction : (void *)sa->sa_handler;
}

static int in_libphp(void *addr)
{
    Dl_info info;
    return libphp_base && addr && dladdr(addr, &info) && info.dli_fbase == libphp_base;
}

static int sigprof_handler_in_libphp(void)
{
    struct sigaction sa;
    return sigaction(SIGPROF, NULL, &sa) == 0 && in_libphp(sigaction_handler(&sa));
}

static void find_libphp(void)
{
    Dl_info info;
    void *startup = dlsym(RTLD_DEFAULT, "php_request_startup");
    libphp_base = startup && dladdr(startup, &info) ? info.dli_fbase : NULL;
}

/* chdir_begin()/chdir_end(): the process's directory keeper of csrc/loader.c. */
static pthread_mutex_t cwd_mu = PTHREAD_MUTEX_INITIALIZER;
static int cwd_saved_fd = -1;
static int cwd_holders;
static int chdir_begin_calls; /* under cwd_mu */

static void host_chdir_begin(void)
{
    pthread_mutex_lock(&cwd_mu);
    chdir_begin_calls++;
    if (cwd_holders++ == 0) {
        cwd_saved_fd = open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    }
    pthread_mutex_unlock(&cwd_mu);
}

static void host_chdir_end(void)
{
    pthread_mutex_lock(&cwd_mu);
    if (--cwd_holders == 0 && cwd_saved_fd >= 0) {
        if (fchdir(cwd_saved_fd) != 0) {
            fprintf(stdout, "host: fchdir failed: %s\n", strerror(errno));
        }
        close(cwd_saved_fd);
        cwd_saved_fd = -1;
    }
    pthread_mutex_unlock(&cwd_mu);
}

static int host_interim(void *handle, int status, const char *lines, size_t len)
{
    rec *r = handle;
    r->interim_calls++;
    r->interim_status = status;
    r->out_len_at_interim = r->out_len;
    r->headers_calls_at_interim = r->headers_calls;
    snprintf(r->interim_headers, sizeof(r->interim_headers), "%.*s", (int)len, lines);
    return r->interim_result;
}

static void host_finish_request(void *handle, fp_request *req)
{
    rec *r = handle;
    r->finish_calls++;
    r->headers_calls_at_finish = r->headers_calls;
    snprintf(r->finished_output, sizeof(r->finished_output), "%.*s", (int)req->output_len,
             req->output ? req->output : "");
}

static void host_php_log(void *handle, int level, const char *message, size_t message_len, const char *context,
                         size_t context_len)
{
    rec *r = handle;
    r->php_log_calls++;
    r->php_log_level = level;
    snprintf(r->php_log_message, sizeof(r->php_log_message), "%.*s", (int)message_len, message);
    if (context) {
        snprintf(r->php_log_context, sizeof(r->php_log_context), "%.*s", (int)context_len, context);
    } else {
        snprintf(r->php_log_context, sizeof(r->php_log_context), "(null)");
    }
}

static const fp_host host = {
    .output = host_output,
    .log = host_log,
    .headers = host_headers,
    .read_body = host_read_body,
    .time_limit = host_time_limit,
    .worker_ready = host_worker_ready,
    .chdir_begin = host_chdir_begin,
    .chdir_end = host_chdir_end,
    .next_request = host_next_request,
    .request_done = host_request_done,
    .interim = host_interim,
    .finish_request = host_finish_request,
    .php_log = host_php_log,
};

static int rec_has_log(rec *r, int type, const char *needle)
{
    for (int i = 0; i < r->nlogs && i < MAX_LOGS; i++) {
        if ((type < 0 || r->logs[i].type == type) && (!needle || strstr(r->logs[i].message, needle))) {
            return 1;
        }
    }
    return 0;
}

static int rec_count_logs(rec *r, int type)
{
    int n = 0;
    for (int i = 0; i < r->nlogs && i < MAX_LOGS; i++) {
        n += r->logs[i].type == type;
    }
    return n;
}

static const char *rec_out(rec *r)
{
    return r->out ? r->out : "";
}

/* ---- requests ------------------------------------------------------------------------------- */

static void req_init(fp_request *q, rec *r, const char *code, int output_mode)
{
    memset(q, 0, sizeof(*q));
    q->code = code;
    q->output_mode = output_mode;
    q->handle = r;
    q->worker_fd = -1;
    q->content_length = -1;
}

/* req.output as a NUL-terminated string (a copy in a static rotating buffer). */
static const char *req_out(const fp_request *q)
{
    static char bufs[4][8192];
    static int next;
    char *b = bufs[next++ % 4];
    size_t n = q->output_len < sizeof(bufs[0]) - 1 ? q->output_len : sizeof(bufs[0]) - 1;
    if (n && q->output) {
        memcpy(b, q->output, n);
    }
    b[n] = '\0';
    return b;
}

/* Run `code` with FP_OUTPUT_BUFFER; returns the exit status.  The caller clears `q`. */
static int run_code(fp_request *q, rec *r, const char *code)
{
    rec_reset(r);
    req_init(q, r, code, FP_OUTPUT_BUFFER);
    return fp_execute(q);
}

/* An execution on a second thread. */
typedef struct runner {
    pthread_t thread;
    fp_request *req;
    int rc;
    pid_t tid;
    int done; /* atomic */
    double ended;
} runner;

static void *runner_main(void *arg)
{
    runner *rn = arg;
    __atomic_store_n(&rn->tid, (pid_t)syscall(SYS_gettid), __ATOMIC_SEQ_CST);
    rn->rc = fp_execute(rn->req);
    rn->ended = now_s();
    __atomic_store_n(&rn->done, 1, __ATOMIC_SEQ_CST);
    return NULL;
}

static void runner_start(runner *rn, fp_request *q)
{
    memset(rn, 0, sizeof(*rn));
    rn->req = q;
    if (pthread_create(&rn->thread, NULL, runner_main, rn) != 0) {
        fprintf(stdout, "pthread_create failed\n");
        exit(2);
    }
}

static int runner_wait(runner *rn, double timeout_s)
{
    double end = now_s() + timeout_s;
    while (!__atomic_load_n(&rn->done, __ATOMIC_SEQ_CST)) {
        if (now_s() > end) {
            return 0;
        }
        sleep_ms(1);
    }
    return 1;
}

/* Wait until an execution is published (fp_current_execution() != 0); returns its id or 0. */
static uint64_t wait_for_execution(double timeout_s)
{
    double end = now_s() + timeout_s;
    uint64_t id;
    while ((id = fp_current_execution()) == 0) {
        if (now_s() > end) {
            return 0;
        }
        sleep_ms(1);
    }
    return id;
}

/* Wait until thread `tid` of this process blocks in a sleep, poll, select, wait4, read or flock
 * syscall; 1 if seen. */
static int wait_in_sleep_syscall(pid_t tid, double timeout_s)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/task/%d/syscall", (int)tid);
    double end = now_s() + timeout_s;
    while (now_s() < end) {
        FILE *f = fopen(path, "r");
        if (!f) {
            break;
        }
        long nr = -1;
        int got = fscanf(f, "%ld", &nr);
        fclose(f);
        if (got == 1 && (nr == SYS_nanosleep || nr == SYS_clock_nanosleep || nr == SYS_poll || nr == SYS_ppoll ||
                         nr == SYS_select || nr == SYS_pselect6 || nr == SYS_wait4 || nr == SYS_read ||
                         nr == SYS_flock)) {
            return 1;
        }
        sleep_ms(1);
    }
    sleep_ms(200); /* /proc not readable: give the script time to reach its sleep() */
    return 0;
}

/* ---- 1. startup ------------------------------------------------------------------------------ */

static void group_startup(void)
{
    fp_request q;
    rec r;
    rec_init(&r);
    char err[256] = "";

    CHECK(fp_abi_version() == FP_ABI_VERSION, "fp_abi_version() = %d", fp_abi_version());
    CHECK(fp_current_execution() == 0, "idle interpreter has execution %llu",
          (unsigned long long)fp_current_execution());
    CHECK(fp_startup(&host, "", err, sizeof(err)) == -1, "a second fp_startup() must fail");
    CHECK(err[0] != '\0', "a second fp_startup() must explain why");

    int rc = run_code(&q, &r,
                      "echo PHP_SAPI, '|', php_sapi_name(), '|', ini_get('memory_limit'), '|', "
                      "ini_get('display_errors'), '|', PHP_MAJOR_VERSION, '.', PHP_MINOR_VERSION;");
    CHECK(rc == 0, "rc = %d", rc);
    CHECK(strcmp(req_out(&q), "frankenphp|frankenphp|32M|0|8.2") == 0, "output '%s'", req_out(&q));
    CHECK(q.output_len == strlen("frankenphp|frankenphp|32M|0|8.2"), "output_len %zu", q.output_len);
    CHECK(q.output_cap >= q.output_len, "output_cap %zu < output_len %zu", q.output_cap, q.output_len);
    CHECK(q.exit_status == 0 && q.end_reason == FP_END_NORMAL, "exit %d end %d", q.exit_status, q.end_reason);
    CHECK(q.exec_id != 0, "exec_id not set");
    CHECK(r.output_calls == 0, "FP_OUTPUT_BUFFER must not call output() (%d calls)", r.output_calls);
    CHECK(r.nlogs == 0, "unexpected diagnostics: %d (first: %s)", r.nlogs, r.nlogs ? r.logs[0].message : "");
    CHECK(r.nlimits == 0, "no max_execution_time: time_limit() must not be called (%d)", r.nlimits);
    CHECK(r.headers_calls == 0, "no HTTP: headers() must not be called");
    CHECK(fp_current_execution() == 0, "execution still published after fp_execute()");
    uint64_t first_id = q.exec_id;

    fp_request_clear(&q);
    CHECK(q.output == NULL && q.output_len == 0 && q.output_cap == 0, "fp_request_clear left output");
    CHECK(q.exec_id == 0 && q.exit_status == 0 && q.end_reason == 0, "fp_request_clear left results");

    /* header() without http: ignored, no headers() call; ids grow. */
    rc = run_code(&q, &r, "header('X-Test: 1'); echo 'x';");
    CHECK(rc == 0 && strcmp(req_out(&q), "x") == 0, "rc %d output '%s'", rc, req_out(&q));
    CHECK(r.headers_calls == 0, "headers() called %d times without http", r.headers_calls);
    CHECK(q.exec_id > first_id, "exec ids must grow: %llu then %llu", (unsigned long long)first_id,
          (unsigned long long)q.exec_id);
    fp_request_clear(&q);

    /* A script file. */
    const char *path = write_php("hello.php", "<?php echo 'file:', basename(__FILE__);");
    rec_reset(&r);
    req_init(&q, &r, NULL, FP_OUTPUT_BUFFER);
    q.script_path = path;
    rc = fp_execute(&q);
    CHECK(rc == 0 && strcmp(req_out(&q), "file:hello.php") == 0, "rc %d output '%s'", rc, req_out(&q));
    fp_request_clear(&q);
    rec_free(&r);
}

/* ---- 2. exit status, end reason, diagnostics ------------------------------------------------- */

static void group_exit_status(void)
{
    fp_request q;
    rec r;
    rec_init(&r);
    int rc;

    rc = run_code(&q, &r, "echo 'a'; exit(7); echo 'b';");
    CHECK(rc == 7 && q.exit_status == 7, "exit(7): rc %d exit_status %d", rc, q.exit_status);
    CHECK(q.end_reason == FP_END_NORMAL, "exit(7): end_reason %d", q.end_reason);
    CHECK(strcmp(req_out(&q), "a") == 0, "exit(7): output '%s'", req_out(&q));
    fp_request_clear(&q);

    rc = run_code(&q, &r, "echo 'ok';");
    CHECK(rc == 0 && strcmp(req_out(&q), "ok") == 0, "after exit(7): rc %d output '%s'", rc, req_out(&q));
    fp_request_clear(&q);

    rc = run_code(&q, &r, "exit('bye');");
    CHECK(rc == 0 && strcmp(req_out(&q), "bye") == 0, "exit('bye'): rc %d output '%s'", rc, req_out(&q));
    fp_request_clear(&q);

    /* Fatal error: an uncaught Error. */
    rc = run_code(&q, &r, "echo 'before'; fp_undefined_function();");
    CHECK(rc == 255 && q.exit_status == 255, "fatal: rc %d exit_status %d", rc, q.exit_status);
    CHECK(strcmp(req_out(&q), "before") == 0, "fatal: output '%s'", req_out(&q));
    CHECK(rec_has_log(&r, PHP_E_ERROR, "undefined function"), "fatal: no E_ERROR log (%d logs)", r.nlogs);
    /* Reported with E_ERROR|E_DONT_BAIL (zend_exception_error): no bailout, still a fatal error. */
    CHECK(q.end_reason == FP_END_BAILOUT, "fatal (uncaught Error): end_reason %d, expected FP_END_BAILOUT",
          q.end_reason);
    fp_request_clear(&q);

    /* The exit status does not stick. */
    rc = run_code(&q, &r, "echo 'after';");
    CHECK(rc == 0 && q.exit_status == 0, "after fatal: rc %d exit_status %d", rc, q.exit_status);
    CHECK(q.end_reason == FP_END_NORMAL, "after fatal: end_reason %d", q.end_reason);
    CHECK(strcmp(req_out(&q), "after") == 0, "after fatal: output '%s'", req_out(&q));
    CHECK(r.nlogs == 0, "after fatal: %d diagnostics", r.nlogs);
    fp_request_clear(&q);

    /* Fatal errors that do bail out of eval'd code. */
    rc = run_code(&q, &r, "function fp_f() {} function fp_f() {}");
    CHECK(rc == 255 && q.end_reason == FP_END_BAILOUT, "compile error: rc %d end_reason %d", rc, q.end_reason);
    CHECK(rec_has_log(&r, PHP_E_COMPILE_ERROR, "redeclare"), "compile error: no E_COMPILE_ERROR log");
    fp_request_clear(&q);

    rc = run_code(&q, &r, "echo 'u'; trigger_error('boom', E_USER_ERROR); echo 'v';");
    CHECK(rc == 255 && q.end_reason == FP_END_BAILOUT, "E_USER_ERROR: rc %d end_reason %d", rc, q.end_reason);
    CHECK(strcmp(req_out(&q), "u") == 0, "E_USER_ERROR: output '%s'", req_out(&q));
    CHECK(rec_has_log(&r, PHP_E_USER_ERROR, "boom"), "E_USER_ERROR: no log");
    fp_request_clear(&q);

    rc = run_code(&q, &r, "syntax error here");
    CHECK(rc == 255, "parse error: rc %d", rc);
    /* A ParseError exception reported with E_DONT_BAIL: still a fatal diagnostic. */
    CHECK(q.end_reason == FP_END_BAILOUT, "parse error: end_reason %d, expected FP_END_BAILOUT", q.end_reason);
    CHECK(rec_has_log(&r, PHP_E_PARSE, "syntax error"), "parse error: no E_PARSE log (%d logs)", r.nlogs);
    fp_request_clear(&q);

    /* memory_limit (32M in this group's ini).  Not enforced without Zend's allocator (valgrind
     * runs with USE_ZEND_ALLOC=0). */
    const char *zend_alloc = getenv("USE_ZEND_ALLOC");
    if (zend_alloc && strcmp(zend_alloc, "0") == 0) {
        fprintf(stdout, "  USE_ZEND_ALLOC=0: memory_limit checks skipped\n");
        goto after_memory_limit;
    }
    rc = run_code(&q, &r, "$s = str_repeat('x', 64 << 20); echo 'not reached';");
    CHECK(rc == 255 && q.exit_status == 255, "memory_limit: rc %d", rc);
    CHECK(rec_has_log(&r, PHP_E_ERROR, "Allowed memory size"), "memory_limit: no E_ERROR log");
    CHECK(q.output_len == 0, "memory_limit: output '%s'", req_out(&q));
    /* PHP 8.2 handles it as a delayed OOM (zend_handle_delayed_oom catches the bailout and
     * unwinds): the E_ERROR diagnostic is what makes it a bailout. */
    CHECK(q.end_reason == FP_END_BAILOUT, "memory_limit: end_reason %d, expected FP_END_BAILOUT", q.end_reason);
    fp_request_clear(&q);

    rc = run_code(&q, &r, "echo 'recovered';");
    CHECK(rc == 0 && strcmp(req_out(&q), "recovered") == 0, "after OOM: rc %d output '%s'", rc, req_out(&q));
    fp_request_clear(&q);
after_memory_limit:

    /* Fatal errors in a script file (php_execute_script()). */
    const char *path = write_php("fatal.php", "<?php echo 'f'; trigger_error('file boom', E_USER_ERROR);");
    rec_reset(&r);
    req_init(&q, &r, NULL, FP_OUTPUT_BUFFER);
    q.script_path = path;
    rc = fp_execute(&q);
    CHECK(rc == 255 && strcmp(req_out(&q), "f") == 0, "file fatal: rc %d output '%s'", rc, req_out(&q));
    CHECK(rec_has_log(&r, PHP_E_USER_ERROR, "file boom"), "file fatal: no log");
    /* php_execute_script() has its own zend_try and swallows the bailout. */
    CHECK(q.end_reason == FP_END_BAILOUT, "file fatal: end_reason %d, expected FP_END_BAILOUT", q.end_reason);
    fp_request_clear(&q);

    rec_reset(&r);
    req_init(&q, &r, NULL, FP_OUTPUT_BUFFER);
    q.script_path = "/nonexistent/frankenpy/missing.php";
    rc = fp_execute(&q);
    CHECK(rc == 255, "missing script: rc %d", rc);
    CHECK(rec_has_log(&r, PHP_E_ERROR, "Failed opening required"), "missing script: no E_ERROR log");
    fp_request_clear(&q);

    /* Diagnostics: type, file, line, error_reporting, error_log(). */
    rc = run_code(&q, &r, "echo $fp_undefined_variable;");
    CHECK(rc == 0, "warning: rc %d", rc);
    CHECK(r.nlogs == 1 && r.logs[0].type == PHP_E_WARNING, "warning: %d logs, type %d", r.nlogs,
          r.nlogs ? r.logs[0].type : -1);
    CHECK(r.nlogs >= 1 && strstr(r.logs[0].message, "Undefined variable") != NULL, "warning message '%s'",
          r.nlogs ? r.logs[0].message : "");
    CHECK(r.nlogs >= 1 && strcmp(r.logs[0].file, "frankenpy code") == 0 && r.logs[0].line == 1,
          "warning location %s:%u", r.nlogs ? r.logs[0].file : "", r.nlogs ? r.logs[0].line : 0);
    fp_request_clear(&q);

    rc = run_code(&q, &r, "error_reporting(E_ALL & ~E_WARNING); echo $fp_undefined_variable; echo 'x';");
    CHECK(rc == 0 && r.nlogs == 0, "error_reporting must filter: %d logs", r.nlogs);
    fp_request_clear(&q);

    rc = run_code(&q, &r, "error_log('to the host');");
    CHECK(rc == 0 && r.nlogs == 1 && r.logs[0].type == 0 && strcmp(r.logs[0].message, "to the host") == 0,
          "error_log(): %d logs, type %d, '%s'", r.nlogs, r.nlogs ? r.logs[0].type : -1,
          r.nlogs ? r.logs[0].message : "");
    fp_request_clear(&q);

    /* display_errors=0: diagnostics never reach the output. */
    rc = run_code(&q, &r, "echo $fp_undefined_variable; fp_undefined_function();");
    CHECK(q.output_len == 0, "diagnostics leaked into the output: '%s'", req_out(&q));
    fp_request_clear(&q);
    rec_free(&r);
}

/* ---- 3. output modes ------------------------------------------------------------------------- */

static int file_exists(const char *path)
{
    return access(path, F_OK) == 0;
}

static void read_small_file(const char *path, char *buf, size_t len)
{
    buf[0] = '\0';
    FILE *f = fopen(path, "r");
    if (f) {
        size_t n = fread(buf, 1, len - 1, f);
        buf[n] = '\0';
        fclose(f);
    }
}

/* output() returns -1 (the client has gone away): PHP aborts the script, unless it called
 * ignore_user_abort(true); then it runs to its end and connection_aborted() says so. */
static void output_client_gone(void)
{
    fp_request q;
    rec r;
    rec_init(&r);
    int rc;
    char sentinel[128], code[1024], contents[64];
    snprintf(sentinel, sizeof(sentinel), "%s/client_gone_sentinel", tmp_dir);

    for (int ignore = 0; ignore <= 1; ignore++) {
        const char *label = ignore ? "stream, ignore_user_abort(true)" : "stream";
        unlink(sentinel);
        snprintf(code, sizeof(code),
                 "ignore_user_abort(%s);"
                 "for ($i = 0; $i < 10; $i++) { echo \"chunk$i\\n\"; flush(); usleep(20000); }"
                 "file_put_contents('%s', connection_status() . '|' . (int)connection_aborted());",
                 ignore ? "true" : "false", sentinel);
        rec_reset(&r);
        r.client_gone_after = 1; /* the first chunk is delivered, then the client is gone */
        req_init(&q, &r, code, FP_OUTPUT_STREAM);
        double t0 = now_s();
        rc = fp_execute(&q);
        double elapsed = now_s() - t0;
        fprintf(stdout, "  client gone (%s): rc %d, end_reason %d, %.0f ms, %d output() calls answered -1\n",
                label, rc, q.end_reason, elapsed * 1e3, r.rejected_calls);
        CHECK(strcmp(rec_out(&r), "chunk0\n") == 0, "%s: delivered '%s'", label, rec_out(&r));
        CHECK(r.rejected_calls == 1, "%s: output() called %d times after it returned -1", label,
              r.rejected_calls);
        CHECK(fp_current_execution() == 0, "%s: execution still published", label);
        if (!ignore) {
            CHECK(!file_exists(sentinel), "%s: the script was not aborted (it reached its end)", label);
            CHECK(q.end_reason != FP_END_INTERRUPT && q.end_reason != FP_END_STARTUP, "%s: end_reason %d",
                  label, q.end_reason);
            CHECK(r.nlogs == 0, "%s: %d diagnostics (first: %s)", label, r.nlogs,
                  r.nlogs ? r.logs[0].message : "");
        } else {
            read_small_file(sentinel, contents, sizeof(contents));
            CHECK(file_exists(sentinel), "%s: the script was aborted", label);
            CHECK(strcmp(contents, "1|1") == 0, "%s: connection_status()|connection_aborted() '%s', "
                  "expected '1|1' (PHP_CONNECTION_ABORTED)", label, contents);
            CHECK(rc == 0 && q.exit_status == 0 && q.end_reason == FP_END_NORMAL, "%s: rc %d exit %d end %d",
                  label, rc, q.exit_status, q.end_reason);
        }
        fp_request_clear(&q);

        /* The next execution has its client again. */
        rec_reset(&r);
        req_init(&q, &r, "echo 'next', connection_status(), ignore_user_abort() ? 'i' : '';", FP_OUTPUT_STREAM);
        rc = fp_execute(&q);
        CHECK(rc == 0 && q.end_reason == FP_END_NORMAL && strcmp(rec_out(&r), "next0") == 0,
              "%s: next execution: rc %d end %d output '%s'", label, rc, q.end_reason, rec_out(&r));
        fp_request_clear(&q);
    }

    /* FP_OUTPUT_FLUSH: the -1 of the output() call made by flush(). */
    for (int ignore = 0; ignore <= 1; ignore++) {
        const char *label = ignore ? "flush, ignore_user_abort(true)" : "flush";
        unlink(sentinel);
        snprintf(code, sizeof(code),
                 "ignore_user_abort(%s); echo 'a'; flush(); echo 'b'; flush(); echo 'c';"
                 "file_put_contents('%s', connection_status() . '|' . (int)connection_aborted());",
                 ignore ? "true" : "false", sentinel);
        rec_reset(&r);
        r.client_gone_after = 1;
        req_init(&q, &r, code, FP_OUTPUT_FLUSH);
        rc = fp_execute(&q);
        CHECK(strcmp(rec_out(&r), "a") == 0 && r.rejected_calls == 1, "%s: delivered '%s', %d rejected calls",
              label, rec_out(&r), r.rejected_calls);
        if (!ignore) {
            CHECK(!file_exists(sentinel), "%s: the script was not aborted (it reached its end)", label);
        } else {
            read_small_file(sentinel, contents, sizeof(contents));
            CHECK(strcmp(contents, "1|1") == 0, "%s: sentinel '%s', expected '1|1'", label, contents);
            CHECK(rc == 0 && q.end_reason == FP_END_NORMAL, "%s: rc %d end %d", label, rc, q.end_reason);
        }
        fp_request_clear(&q);
    }
    unlink(sentinel);
    rec_free(&r);
}

static void group_output(void)
{
    fp_request q;
    rec r;
    rec_init(&r);
    int rc;

    req_init(&q, &r, "echo 'hello'; echo ' world'; flush(); echo '!';", FP_OUTPUT_STREAM);
    rc = fp_execute(&q);
    CHECK(rc == 0, "stream: rc %d", rc);
    CHECK(strcmp(rec_out(&r), "hello world!") == 0, "stream: callback got '%s'", rec_out(&r));
    CHECK(r.output_calls >= 2, "stream: %d output() calls", r.output_calls);
    CHECK(q.output_len == 0 && q.output == NULL, "stream: output_len %zu", q.output_len);
    fp_request_clear(&q);

    /* Output buffering inside the script still works in stream mode. */
    rec_reset(&r);
    req_init(&q, &r, "ob_start(); echo 'hidden'; ob_end_clean(); echo 'shown';", FP_OUTPUT_STREAM);
    rc = fp_execute(&q);
    CHECK(rc == 0 && strcmp(rec_out(&r), "shown") == 0, "stream+ob: '%s'", rec_out(&r));
    fp_request_clear(&q);

    /* Binary output with NUL bytes. */
    rec_reset(&r);
    req_init(&q, &r, "echo \"a\\0b\";", FP_OUTPUT_STREAM);
    rc = fp_execute(&q);
    CHECK(rc == 0 && r.out_len == 3 && memcmp(r.out, "a\0b", 3) == 0, "stream NUL: %zu bytes", r.out_len);
    fp_request_clear(&q);

    /* Buffer mode, large output. */
    rc = run_code(&q, &r, "echo str_repeat('y', 1 << 20);");
    CHECK(rc == 0 && q.output_len == (1u << 20), "buffer 1 MiB: rc %d len %zu", rc, q.output_len);
    CHECK(r.output_calls == 0, "buffer: %d output() calls", r.output_calls);
    int all_y = q.output != NULL;
    for (size_t i = 0; all_y && i < q.output_len; i++) {
        all_y = q.output[i] == 'y';
    }
    CHECK(all_y, "buffer 1 MiB: wrong bytes");
    fp_request_clear(&q);

    /* php://stdout and php://stderr are the execution's streams, and bytes echoed after the
     * output layer is shut down (a user stream wrapper's stream_close()) reach the execution:
     * nothing reaches the test's own fd 1 and 2. */
    rec_reset(&r);
    req_init(&q, &r,
             "class W { public $context; function stream_open($p, $m, $o, &$op) { return true; }"
             " function stream_close() { echo '|closed'; } }"
             "stream_wrapper_register('wrap', 'W'); $GLOBALS['f'] = fopen('wrap://x', 'r');"
             "file_put_contents('php://stdout', 'raw'); file_put_contents('php://stderr', \"err\\n\");",
             FP_OUTPUT_BUFFER);
    rc = fp_execute(&q);
    CHECK(rc == 0 && strcmp(req_out(&q), "raw|closed") == 0, "raw stdout: rc %d output '%s'", rc, req_out(&q));
    CHECK(r.nlogs == 0 && q.stderr_len == 4 && memcmp(q.stderr_output, "err\n", 4) == 0,
          "php://stderr: %d logs, %zu bytes of stderr", r.nlogs, q.stderr_len);
    fp_request_clear(&q);

    /* Flush mode: the collected bytes go to output() on flush(), the rest stays in req.output. */
    rec_reset(&r);
    req_init(&q, &r, "echo 'a'; flush(); echo 'b';", FP_OUTPUT_FLUSH);
    rc = fp_execute(&q);
    CHECK(rc == 0, "flush: rc %d", rc);
    CHECK(strcmp(rec_out(&r), "a") == 0, "flush: callback got '%s'", rec_out(&r));
    CHECK(strcmp(req_out(&q), "b") == 0, "flush: remaining req.output '%s'", req_out(&q));
    fp_request_clear(&q);
    rec_free(&r);

    output_client_gone();
}

/* ---- 4. environment, $_SERVER, argv ---------------------------------------------------------- */

static void group_env(void)
{
    fp_request q;
    rec r;
    rec_init(&r);
    int rc;

    unsetenv("FOO");
    setenv("FP_NATIVE_PROCESS_ONLY", "proc", 1);

    /* NAME\0VALUE\0... (split literals: "\0" followed by a digit would be an octal escape) */
    static const char env[] = "FOO\0" "bar\0" "EMPTY\0" "\0" "WITH_EQ\0" "a=b c";
    rec_reset(&r);
    req_init(&q, &r, "echo $_SERVER['FOO'], getenv('FOO');", FP_OUTPUT_BUFFER);
    q.env = env;
    q.env_pairs = 3;
    rc = fp_execute(&q);
    CHECK(rc == 0 && strcmp(req_out(&q), "barbar") == 0, "env: rc %d output '%s'", rc, req_out(&q));
    fp_request_clear(&q);

    rec_reset(&r);
    req_init(&q, &r,
             "echo json_encode([getenv('EMPTY'), $_SERVER['EMPTY'], getenv('WITH_EQ'), $_SERVER['WITH_EQ'], "
             "getenv('FP_NATIVE_PROCESS_ONLY'), getenv('FP_NATIVE_NOWHERE'), "
             "isset($_SERVER['FRANKENPHP_WORKER_BACKGROUND'])]);",
             FP_OUTPUT_BUFFER);
    q.env = env;
    q.env_pairs = 3;
    rc = fp_execute(&q);
    CHECK(rc == 0 && strcmp(req_out(&q), "[\"\",\"\",\"a=b c\",\"a=b c\",\"proc\",false,false]") == 0,
          "env details: '%s'", req_out(&q));
    fp_request_clear(&q);

    /* The next execution does not see the previous one's environment. */
    rc = run_code(&q, &r, "echo json_encode([isset($_SERVER['FOO']), getenv('FOO')]);");
    CHECK(rc == 0 && strcmp(req_out(&q), "[false,false]") == 0, "env leaked: '%s'", req_out(&q));
    fp_request_clear(&q);

    /* argv / argc. */
    char *argv[] = {"script.php", "one", "two", NULL};
    rec_reset(&r);
    req_init(&q, &r, "echo $argc, ' ', implode(',', $argv), ' ', $_SERVER['argc'];", FP_OUTPUT_BUFFER);
    q.argv = argv;
    q.argc = 3;
    rc = fp_execute(&q);
    CHECK(rc == 0 && strcmp(req_out(&q), "3 script.php,one,two 3") == 0, "argv: '%s'", req_out(&q));
    fp_request_clear(&q);
    rec_free(&r);
}

/* ---- 5. time limits -------------------------------------------------------------------------- */

static void group_time_limit(void)
{
    fp_request q;
    rec r;
    rec_init(&r);
    int rc;

    req_init(&q, &r,
             "echo ini_get('max_execution_time'); set_time_limit(3); echo '|', "
             "ini_get('max_execution_time'); ini_set('max_execution_time', '0'); echo '|';",
             FP_OUTPUT_STREAM);
    rc = fp_execute(&q);
    CHECK(rc == 0 && strcmp(rec_out(&r), "5|3|") == 0, "rc %d output '%s'", rc, rec_out(&r));
    CHECK(r.nlimits == 3, "time_limit() called %d times, expected 3 (5, 3, 0)", r.nlimits);
    CHECK(r.nlimits >= 1 && r.limits[0] == 5, "first limit %lld, expected 5 (script start)",
          (long long)r.limits[0]);
    CHECK(r.nlimits >= 2 && r.limits[1] == 3, "second limit %lld, expected 3 (set_time_limit)",
          (long long)r.limits[1]);
    CHECK(r.nlimits >= 3 && r.limits[2] == 0, "third limit %lld, expected 0 (ini_set)", (long long)r.limits[2]);
    /* The start-up limit is told apart from the script's changes (workers skip only that one). */
    CHECK(r.nlimits >= 3 && r.initial[0] == 1 && r.initial[1] == 0 && r.initial[2] == 0,
          "initial flags %d %d %d, expected 1 0 0", r.initial[0], r.initial[1], r.initial[2]);
    CHECK(r.itimer_armed_at_limit == 0, "ITIMER_PROF armed in %d time_limit() calls", r.itimer_armed_at_limit);
    CHECK(r.output_calls >= 2 && r.itimer_armed_at_output == 0, "ITIMER_PROF armed in %d of %d output() calls",
          r.itimer_armed_at_output, r.output_calls);
    fp_request_clear(&q);

    /* The script's changes end with it: the next execution starts with 5 again. */
    rec_reset(&r);
    req_init(&q, &r, "echo ini_get('max_execution_time');", FP_OUTPUT_STREAM);
    rc = fp_execute(&q);
    CHECK(rc == 0 && strcmp(rec_out(&r), "5") == 0, "next: output '%s'", rec_out(&r));
    CHECK(r.nlimits == 1 && r.limits[0] == 5, "next: %d calls, first %lld", r.nlimits, (long long)r.limits[0]);
    CHECK(r.itimer_armed_at_limit == 0 && r.itimer_armed_at_output == 0, "next: ITIMER_PROF armed");
    fp_request_clear(&q);

    /* PHP itself never enforces the limit (the host does): 1.3 s of CPU under a 1 s limit. */
    rec_reset(&r);
    req_init(&q, &r,
             "set_time_limit(1); $t = microtime(true); while (microtime(true) - $t < 1.3) {} echo 'survived';",
             FP_OUTPUT_STREAM);
    rc = fp_execute(&q);
    CHECK(rc == 0 && strcmp(rec_out(&r), "survived") == 0, "CPU loop: rc %d output '%s'", rc, rec_out(&r));
    CHECK(r.nlimits == 2 && r.limits[1] == 1 && !r.initial[1], "CPU loop: %d limit calls", r.nlimits);
    CHECK(r.itimer_armed_at_output == 0, "CPU loop: ITIMER_PROF armed");
    fp_request_clear(&q);

    CHECK(itimer_prof_armed() == 0, "ITIMER_PROF armed after the executions");
    rec_free(&r);
}

/* ---- 6. fp_interrupt ------------------------------------------------------------------------- */

/* Atomic, not volatile sig_atomic_t: the handler runs on the PHP thread and the main thread
 * reads the count (sig_atomic_t is only safe within one thread; TSan reports the race). */
static atomic_int usr2_count;

static void on_usr2(int signo)
{
    (void)signo;
    atomic_fetch_add(&usr2_count, 1);
}

static void interrupt_sleeping(const char *label, fp_request *q, rec *r)
{
    runner rn;
    runner_start(&rn, q);
    uint64_t id = wait_for_execution(5);
    CHECK(id != 0, "%s: no execution published", label);
    if (!id) {
        pthread_join(rn.thread, NULL);
        return;
    }
    pid_t tid;
    while ((tid = __atomic_load_n(&rn.tid, __ATOMIC_SEQ_CST)) == 0) {
        sleep_ms(1);
    }
    wait_in_sleep_syscall(tid, 2);
    int signals_before = atomic_load(&usr2_count);
    double t0 = now_s();
    CHECK(fp_interrupt(id, 1, SIGUSR2) == 1, "%s: fp_interrupt() of the running execution returned 0", label);
    int ended = runner_wait(&rn, 2.0);
    CHECK(ended, "%s: still running 2 s after fp_interrupt()", label);
    for (int i = 0; !ended && i < 100; i++) { /* do not hang the test: keep trying */
        fp_interrupt(id, 1, SIGUSR2);
        ended = runner_wait(&rn, 0.5);
    }
    if (!ended) {
        fprintf(stdout, "FATAL: %s: the execution cannot be stopped\n", label);
        exit(1);
    }
    pthread_join(rn.thread, NULL);
    double elapsed = rn.ended - t0;
    fprintf(stdout, "  %s: returned %.2f ms after fp_interrupt()\n", label, elapsed * 1e3);
    CHECK(elapsed < 2.0, "%s: took %.3f s", label, elapsed);
    CHECK(atomic_load(&usr2_count) > signals_before, "%s: the host's SIGUSR2 handler did not run", label);
    CHECK(q->end_reason == FP_END_INTERRUPT, "%s: end_reason %d", label, q->end_reason);
    CHECK(q->exit_status == 255 && rn.rc == 255, "%s: exit_status %d", label, q->exit_status);
    CHECK(q->exec_id == id, "%s: exec_id %llu != %llu", label, (unsigned long long)q->exec_id,
          (unsigned long long)id);
    CHECK(rec_has_log(r, PHP_E_ERROR, "Maximum execution time of 1 second exceeded"),
          "%s: no 'Maximum execution time' E_ERROR", label);
    CHECK(fp_current_execution() == 0, "%s: still published", label);
    CHECK(fp_interrupt(id + 1000, 1, SIGUSR2) == 0, "%s: a stale id (id+1000) must return 0", label);
    CHECK(fp_interrupt(id, 1, SIGUSR2) == 0, "%s: an ended id must return 0", label);
}

static void group_interrupt(void)
{
    struct sigaction sa, old;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_usr2;
    sa.sa_flags = 0; /* no SA_RESTART: a blocking syscall returns EINTR */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR2, &sa, NULL);

    fp_request q;
    rec r;
    rec_init(&r);

    CHECK(fp_interrupt(0, 1, SIGUSR2) == 0, "fp_interrupt(0) must return 0");
    CHECK(fp_interrupt(12345, 1, SIGUSR2) == 0, "fp_interrupt() while idle must return 0");

    req_init(&q, &r, "echo 'start'; sleep(30); echo 'not reached';", FP_OUTPUT_BUFFER);
    interrupt_sleeping("sleep(30) in code", &q, &r);
    CHECK(strcmp(req_out(&q), "start") == 0, "output '%s'", req_out(&q));
    fp_request_clear(&q);

    sigaction(SIGUSR2, NULL, &old);
    CHECK(old.sa_handler == on_usr2, "the host's SIGUSR2 handler was replaced");

    /* The interpreter runs the next script normally (here on the main thread). */
    int rc = run_code(&q, &r, "echo 'next';");
    CHECK(rc == 0 && q.end_reason == FP_END_NORMAL && strcmp(req_out(&q), "next") == 0,
          "next: rc %d end %d output '%s'", rc, q.end_reason, req_out(&q));
    CHECK(r.nlogs == 0, "next: %d diagnostics", r.nlogs);
    fp_request_clear(&q);

    /* A script file. */
    const char *path = write_php("sleep.php", "<?php echo 'file'; sleep(30);");
    rec_reset(&r);
    req_init(&q, &r, NULL, FP_OUTPUT_BUFFER);
    q.script_path = path;
    interrupt_sleeping("sleep(30) in a file", &q, &r);
    fp_request_clear(&q);

    /* Waits that PHP restarts after EINTR (php_sock_stream_wait_for_data() polls again with its
     * full timeout, proc_close() loops on waitpid()): libphp's poll()/waitpid() give up once the
     * execution is interrupted. */
    static const char *const waits[][2] = {
        {"socket read", "ini_set('default_socket_timeout', '30');"
                        "$p = stream_socket_pair(STREAM_PF_UNIX, STREAM_SOCK_STREAM, 0); fread($p[0], 1);"},
        {"stream_select", "$p = stream_socket_pair(STREAM_PF_UNIX, STREAM_SOCK_STREAM, 0);"
                          "$r = [$p[0]]; $w = $e = null; stream_select($r, $w, $e, 30);"},
        {"proc_close", "$p = proc_open('sleep 3', [], $pipes); proc_close($p);"},
        {"exec", "exec('sleep 3');"},
    };
    for (size_t i = 0; i < sizeof(waits) / sizeof(waits[0]); i++) {
        rec_reset(&r);
        req_init(&q, &r, waits[i][1], FP_OUTPUT_BUFFER);
        interrupt_sleeping(waits[i][0], &q, &r);
        fp_request_clear(&q);
    }

    /* A CPU loop, no signal: the VM interrupt flag alone stops it. */
    rec_reset(&r);
    req_init(&q, &r, "for (;;) {}", FP_OUTPUT_BUFFER);
    runner rn;
    runner_start(&rn, &q);
    uint64_t id = wait_for_execution(5);
    sleep_ms(50);
    CHECK(id != 0 && fp_interrupt(id, 2, 0) == 1, "CPU loop: fp_interrupt() failed");
    int ended = runner_wait(&rn, 2.0);
    CHECK(ended, "CPU loop: still running 2 s after fp_interrupt()");
    if (!ended) {
        fprintf(stdout, "FATAL: CPU loop cannot be stopped\n");
        exit(1);
    }
    pthread_join(rn.thread, NULL);
    CHECK(q.end_reason == FP_END_INTERRUPT && q.exit_status == 255, "CPU loop: end %d exit %d", q.end_reason,
          q.exit_status);
    CHECK(rec_has_log(&r, PHP_E_ERROR, "Maximum execution time of 2 seconds exceeded"), "CPU loop: message");
    fp_request_clear(&q);

    rc = run_code(&q, &r, "echo 'still fine';");
    CHECK(rc == 0 && q.end_reason == FP_END_NORMAL && strcmp(req_out(&q), "still fine") == 0,
          "after CPU loop: rc %d end %d output '%s'", rc, q.end_reason, req_out(&q));
    fp_request_clear(&q);
    rec_free(&r);
}

/* ---- 7. background worker handle ------------------------------------------------------------- */

typedef struct closer_arg {
    rec *r;
    int fd;
} closer_arg;

static void *closer_main(void *arg)
{
    closer_arg *c = arg;
    double end = now_s() + 10;
    while (__atomic_load_n(&c->r->worker_ready_calls, __ATOMIC_SEQ_CST) == 0 && now_s() < end) {
        sleep_ms(1);
    }
    sleep_ms(100);
    close(c->fd);
    return NULL;
}

static const char worker_script[] =
    "$h = frankenphp_get_worker_handle();\n"
    "$h2 = frankenphp_get_worker_handle();\n"
    "echo get_resource_id($h) === get_resource_id($h2) ? 'same' : 'different', '|';\n"
    "echo !empty($_SERVER['FRANKENPHP_WORKER_BACKGROUND']) ? 'bg' : 'nobg', '|';\n"
    "$n = 0;\n"
    "while (true) {\n"
    "    if (++$n > 20) { echo 'timeout'; break; }\n"
    "    $r = [$h]; $w = null; $e = null;\n"
    "    if (stream_select($r, $w, $e, 1) > 0 && fread($h, 8192) === '') { echo 'eof'; break; }\n"
    "}\n";

static void group_worker(void)
{
    fp_request q;
    rec r;
    rec_init(&r);
    int rc;

    int fds_before = count_fds();
    int p[2];
    CHECK(pipe(p) == 0, "pipe: %s", strerror(errno));
    req_init(&q, &r, worker_script, FP_OUTPUT_BUFFER);
    q.worker_kind = FP_WORKER_BACKGROUND;
    q.worker_fd = p[0];
    closer_arg c = {&r, p[1]};
    pthread_t closer;
    pthread_create(&closer, NULL, closer_main, &c);
    double t0 = now_s();
    rc = fp_execute(&q);
    double elapsed = now_s() - t0;
    pthread_join(closer, NULL);
    CHECK(rc == 0 && q.end_reason == FP_END_NORMAL, "worker: rc %d end %d", rc, q.end_reason);
    CHECK(strcmp(req_out(&q), "same|bg|eof") == 0, "worker: output '%s'", req_out(&q));
    CHECK(r.worker_ready_calls == 1, "worker_ready() called %d times", r.worker_ready_calls);
    CHECK(elapsed >= 0.09 && elapsed < 5, "worker: ran %.3f s, expected about 0.1 s", elapsed);
    CHECK(r.nlogs == 0, "worker: %d diagnostics (first: %s)", r.nlogs, r.nlogs ? r.logs[0].message : "");
    CHECK(fcntl(p[0], F_GETFD) != -1, "worker_fd must stay open (the glue does not own it)");
    close(p[0]);
    CHECK(count_fds() == fds_before, "worker: fds %d before, %d after (the dup'd handle leaked?)", fds_before,
          count_fds());
    fp_request_clear(&q);

    /* A second worker execution: its own ready notification; fclose() then a new handle. */
    CHECK(pipe(p) == 0, "pipe: %s", strerror(errno));
    rec_reset(&r);
    req_init(&q, &r,
             "$h = frankenphp_get_worker_handle(); fclose($h); $h2 = frankenphp_get_worker_handle();"
             "echo is_resource($h2) ? 'open' : 'closed', '|', feof($h2) ? 'eof' : 'waiting';",
             FP_OUTPUT_BUFFER);
    q.worker_kind = FP_WORKER_BACKGROUND;
    q.worker_fd = p[0];
    rc = fp_execute(&q);
    CHECK(rc == 0 && strcmp(req_out(&q), "open|waiting") == 0, "reopen: rc %d output '%s'", rc, req_out(&q));
    CHECK(r.worker_ready_calls == 1, "reopen: worker_ready() called %d times", r.worker_ready_calls);
    close(p[0]);
    close(p[1]);
    CHECK(count_fds() == fds_before, "reopen: fds %d before, %d after", fds_before, count_fds());
    fp_request_clear(&q);

    /* Outside a background worker. */
    static const char outside[] =
        "try { frankenphp_get_worker_handle(); echo 'no exception'; }"
        "catch (RuntimeException $e) { echo get_class($e), ': ', $e->getMessage(); }";
    rc = run_code(&q, &r, outside);
    CHECK(rc == 0 && strcmp(req_out(&q), "RuntimeException: frankenphp_get_worker_handle() can only be "
                                         "called from a background worker") == 0,
          "outside: '%s'", req_out(&q));
    CHECK(r.worker_ready_calls == 0, "outside: worker_ready() called");
    fp_request_clear(&q);

    rec_reset(&r);
    req_init(&q, &r, outside, FP_OUTPUT_BUFFER);
    q.worker_kind = FP_WORKER_BACKGROUND; /* but no worker_fd */
    rc = fp_execute(&q);
    CHECK(rc == 0 && strncmp(req_out(&q), "RuntimeException: ", 18) == 0, "no worker_fd: '%s'", req_out(&q));
    fp_request_clear(&q);

    rc = run_code(&q, &r,
                  "try { frankenphp_handle_request(function () {}); echo 'no exception'; }"
                  "catch (RuntimeException $e) { echo $e->getMessage(); }");
    CHECK(rc == 0 && strcmp(req_out(&q), "frankenphp_handle_request() called while not in worker mode") == 0,
          "handle_request outside: '%s'", req_out(&q));
    fp_request_clear(&q);

    /* Uncaught: exit status 255. */
    rc = run_code(&q, &r, "frankenphp_get_worker_handle();");
    CHECK(rc == 255 && rec_has_log(&r, PHP_E_ERROR, "RuntimeException"), "uncaught: rc %d", rc);
    fp_request_clear(&q);
    rec_free(&r);
}

/* ---- 8. chdir() ------------------------------------------------------------------------------ */

static void group_chdir(void)
{
    fp_request q;
    rec r;
    rec_init(&r);
    int rc;
    char before[4096], after[4096];

    if (getcwd(before, sizeof(before)) && strcmp(before, "/tmp") == 0) {
        CHECK(chdir("/") == 0, "chdir /");
    }
    CHECK(getcwd(before, sizeof(before)) != NULL, "getcwd: %s", strerror(errno));
    int fds_before = count_fds();

    rc = run_code(&q, &r, "var_dump(chdir('/tmp')); echo getcwd();");
    CHECK(rc == 0 && strcmp(req_out(&q), "bool(true)\n/tmp") == 0, "chdir: rc %d output '%s'", rc, req_out(&q));
    CHECK(getcwd(after, sizeof(after)) != NULL && strcmp(before, after) == 0, "cwd '%s' became '%s'", before,
          after);
    CHECK(rec_has_log(&r, PHP_E_WARNING, "chdir"), "no warning mentioning chdir (%d logs)", r.nlogs);
    CHECK(count_fds() == fds_before, "chdir: fds %d before, %d after", fds_before, count_fds());
    fp_request_clear(&q);

    int begins = chdir_begin_calls;
    rc = run_code(&q, &r, "chdir('/tmp'); chdir('/'); chdir('/tmp'); echo getcwd();");
    CHECK(rc == 0 && strcmp(req_out(&q), "/tmp") == 0, "chdir x3: '%s'", req_out(&q));
    CHECK(chdir_begin_calls - begins == 1 && cwd_holders == 0,
          "chdir x3: chdir_begin() called %d times (expected once per execution), %d holders left",
          chdir_begin_calls - begins, cwd_holders);
    CHECK(getcwd(after, sizeof(after)) != NULL && strcmp(before, after) == 0, "chdir x3: cwd '%s'", after);
    CHECK(rec_count_logs(&r, PHP_E_WARNING) == 3, "chdir x3: %d warnings", rec_count_logs(&r, PHP_E_WARNING));
    CHECK(count_fds() == fds_before, "chdir x3: fds %d before, %d after", fds_before, count_fds());
    fp_request_clear(&q);

    rc = run_code(&q, &r, "var_dump(@chdir('/nonexistent/frankenpy')); echo getcwd();");
    CHECK(rc == 0 && strncmp(req_out(&q), "bool(false)\n", 12) == 0, "failed chdir: '%s'", req_out(&q));
    CHECK(getcwd(after, sizeof(after)) != NULL && strcmp(before, after) == 0, "failed chdir: cwd '%s'", after);
    fp_request_clear(&q);

    /* A fatal error after chdir(): the directory is still restored. */
    rc = run_code(&q, &r, "chdir('/tmp'); fp_undefined_function();");
    CHECK(rc == 255, "chdir+fatal: rc %d", rc);
    CHECK(getcwd(after, sizeof(after)) != NULL && strcmp(before, after) == 0, "chdir+fatal: cwd '%s'", after);
    fp_request_clear(&q);

    /* The directory is the process's: while another execution (here: the host itself) still
     * holds it, the end of this one leaves it alone; the last holder puts it back. */
    host_chdir_begin();
    rc = run_code(&q, &r, "chdir('/tmp'); echo getcwd();");
    CHECK(rc == 0 && getcwd(after, sizeof(after)) && strcmp(after, "/tmp") == 0,
          "another holder left: cwd '%s', expected /tmp until it ends", after);
    host_chdir_end();
    CHECK(getcwd(after, sizeof(after)) != NULL && strcmp(before, after) == 0, "last holder: cwd '%s'", after);
    fp_request_clear(&q);

    /* Executions without chdir() see the host's directory. */
    begins = chdir_begin_calls;
    rc = run_code(&q, &r, "echo getcwd();");
    CHECK(chdir_begin_calls == begins, "no chdir: chdir_begin() called");
    CHECK(rc == 0 && strcmp(req_out(&q), before) == 0, "no chdir: '%s'", req_out(&q));
    CHECK(r.nlogs == 0, "no chdir: %d diagnostics", r.nlogs);
    fp_request_clear(&q);
    rec_free(&r);
}

/* ---- 9. resource leaks over many executions ------------------------------------------------- */

static void group_fds(void)
{
    fp_request q;
    rec r;
    rec_init(&r);
    int p[2];
    CHECK(pipe(p) == 0, "pipe");
    (void)!write(p[1], "x", 1);
    static const char env[] = "A\0" "1\0" "B\0" "2";

    /* Warm-up (first-time allocations, file stat caches). */
    for (int i = 0; i < 20; i++) {
        run_code(&q, &r, "echo 'x';");
        fp_request_clear(&q);
    }
    int fds_before = count_fds();
    long rss_before = rss_kb();
    int bad = 0;
    const int iterations = 2000;
    for (int i = 0; i < iterations; i++) {
        rec_reset(&r);
        switch (i % 5) {
        case 0:
            req_init(&q, &r, "echo 'hello';", FP_OUTPUT_BUFFER);
            break;
        case 1: /* files left open by the script */
            req_init(&q, &r, "$a = fopen('php://memory', 'r+'); $b = tmpfile(); $c = fopen('/proc/self/stat', 'r');"
                             "echo 'hello';", FP_OUTPUT_BUFFER);
            break;
        case 2: /* chdir() */
            req_init(&q, &r, "chdir('/'); echo 'hello';", FP_OUTPUT_BUFFER);
            break;
        case 3: /* a worker handle left open */
            req_init(&q, &r, "$h = frankenphp_get_worker_handle(); echo 'hello';", FP_OUTPUT_BUFFER);
            q.worker_kind = FP_WORKER_BACKGROUND;
            q.worker_fd = p[0];
            break;
        case 4: /* env and a fatal error */
            req_init(&q, &r, "echo 'hello'; fp_undefined_function();", FP_OUTPUT_STREAM);
            q.env = env;
            q.env_pairs = 2;
            break;
        }
        int rc = fp_execute(&q);
        const char *out = q.output_mode == FP_OUTPUT_STREAM ? rec_out(&r) : req_out(&q);
        if (rc != (i % 5 == 4 ? 255 : 0) || strcmp(out, "hello") != 0) {
            if (bad++ < 5) {
                fprintf(stdout, "  iteration %d: rc %d output '%s'\n", i, rc, out);
            }
        }
        fp_request_clear(&q);
    }
    int fds_after = count_fds();
    long rss_after = rss_kb();
    close(p[0]);
    close(p[1]);
    CHECK(bad == 0, "%d of %d executions went wrong", bad, iterations);
    CHECK(fds_after == fds_before, "%d fds before %d executions, %d after", fds_before, iterations, fds_after);
    fprintf(stdout, "  %d executions: fds %d -> %d, VmRSS %ld kB -> %ld kB\n", iterations, fds_before,
            fds_after, rss_before, rss_after);
    CHECK(rss_after - rss_before < 16 * 1024, "VmRSS grew by %ld kB over %d executions",
          rss_after - rss_before, iterations);
    rec_free(&r);
}

/* ---- signals: the host's handlers survive executions ---------------------------------------- */

static volatile sig_atomic_t host_signal_count[65];

static void host_signal_handler(int signo)
{
    host_signal_count[signo]++;
}

static void install_host_handler(int signo)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = host_signal_handler;
    sigemptyset(&sa.sa_mask);
    sigaction(signo, &sa, NULL);
}

static int host_handler_installed(int signo)
{
    struct sigaction sa;
    sigaction(signo, NULL, &sa);
    return !(sa.sa_flags & SA_SIGINFO) && sa.sa_handler == host_signal_handler;
}

typedef struct prof_arg {
    int interrupt_first;
} prof_arg;

static void *send_sigprof(void *arg)
{
    prof_arg *a = arg;
    uint64_t id = wait_for_execution(5);
    sleep_ms(100);
    if (a->interrupt_first && id) {
        fp_interrupt(id, 1, 0); /* flags only: as if the signal had not reached a syscall yet */
    }
    kill(getpid(), SIGPROF);
    return NULL;
}

static void group_signals(void)
{
    static const int sigs[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGALRM};
    static const char *const names[] = {"SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM"};
    for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++) {
        install_host_handler(sigs[i]);
    }
    install_host_handler(SIGPROF);
    /* A host profiler's timer, long enough never to fire during the group. */
    struct itimerval prof = {{100, 0}, {100, 0}};
    setitimer(ITIMER_PROF, &prof, NULL);

    fp_request q;
    rec r;
    rec_init(&r);
    req_init(&q, &r, "echo ini_get('hard_timeout'), '|'; set_time_limit(3); echo 'x';", FP_OUTPUT_STREAM);
    int rc = fp_execute(&q);
    CHECK(rc == 0 && strcmp(rec_out(&r), "0|x") == 0, "rc %d output '%s' (hard_timeout must be 0)", rc,
          rec_out(&r));
    fp_request_clear(&q);
    for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++) {
        CHECK(host_handler_installed(sigs[i]), "the host's %s handler was replaced", names[i]);
    }
    /* php_request_startup() -> zend_set_timeout() -> zend_signal(SIGPROF, ...) would install
     * PHP's handler process-wide: libphp's sigaction() is redirected to a no-op. */
    CHECK(r.output_calls >= 1 && r.php_sigprof_at_output == 0,
          "PHP's SIGPROF handler was installed while the script ran (%d of %d output() calls)",
          r.php_sigprof_at_output, r.output_calls);
    CHECK(host_handler_installed(SIGPROF), "the host's SIGPROF handler was replaced by the execution");
    CHECK(itimer_prof_armed() == 1, "the host's ITIMER_PROF was disarmed by an execution");

    /* A timed-out execution: zend_timeout() re-registers the SIGPROF handler
     * (zend_set_timeout_ex(0, 1)) and zend_unset_timeout() disarms ITIMER_PROF because
     * fp_interrupt() set EG(timeout_seconds).  Neither may reach the process. */
    rec_reset(&r);
    req_init(&q, &r, "for (;;) {}", FP_OUTPUT_BUFFER);
    runner rn;
    runner_start(&rn, &q);
    uint64_t id = wait_for_execution(5);
    sleep_ms(50);
    CHECK(id != 0 && fp_interrupt(id, 1, 0) == 1, "busy loop: fp_interrupt() failed");
    CHECK(runner_wait(&rn, 5.0), "busy loop: not stopped");
    pthread_join(rn.thread, NULL);
    CHECK(q.end_reason == FP_END_INTERRUPT, "busy loop: end_reason %d", q.end_reason);
    fp_request_clear(&q);
    CHECK(!sigprof_handler_in_libphp() && host_handler_installed(SIGPROF),
          "after a timeout: the host's SIGPROF handler was replaced");
    CHECK(itimer_prof_armed() == 1, "after a timeout: the host's ITIMER_PROF was disarmed");
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_PROF, &off, NULL);

    /* A script's own handlers and alarms would be process-wide: refused. */
    rec_reset(&r);
    req_init(&q, &r,
             "var_dump(pcntl_signal(SIGTERM, function () {}));"
             "var_dump(pcntl_signal(SIGINT, SIG_IGN)); pcntl_alarm(30); echo 'end';",
             FP_OUTPUT_BUFFER);
    rc = fp_execute(&q);
    CHECK(rc == 0 && strcmp(req_out(&q), "bool(false)\nbool(false)\nend") == 0, "pcntl: rc %d output '%s'", rc,
          req_out(&q));
    CHECK(rec_count_logs(&r, PHP_E_WARNING) == 2 && rec_has_log(&r, PHP_E_WARNING, "whole host process"),
          "pcntl_signal(): %d warnings", rec_count_logs(&r, PHP_E_WARNING));
    CHECK(host_handler_installed(SIGTERM) && host_handler_installed(SIGINT), "pcntl_signal() took a handler");
    CHECK(alarm(0) == 0, "pcntl_alarm() armed the process's alarm");
    fp_request_clear(&q);

    /* A SIGPROF during a script (any profiler using ITIMER_PROF, kill -PROF). */
    install_host_handler(SIGPROF);
    host_signal_count[SIGPROF] = 0;
    rec_reset(&r);
    req_init(&q, &r, "$t = microtime(true); while (microtime(true) - $t < 1.5) {} echo 'done';", FP_OUTPUT_BUFFER);
    prof_arg a = {0};
    pthread_t t;
    pthread_create(&t, NULL, send_sigprof, &a);
    rc = fp_execute(&q);
    pthread_join(t, NULL);
    CHECK(rc == 0 && strcmp(req_out(&q), "done") == 0 && q.end_reason == FP_END_NORMAL,
          "a process-wide SIGPROF must not stop the running script: rc %d, end_reason %d, output '%s', "
          "log '%s' (PHP's zend_timeout_handler treats it as max_execution_time)", rc, q.end_reason,
          req_out(&q), r.nlogs ? r.logs[0].message : "");
    CHECK(host_signal_count[SIGPROF] == 1, "the host's SIGPROF handler ran %d times, expected 1",
          (int)host_signal_count[SIGPROF]);
    fp_request_clear(&q);
    /* PHP's zend_timeout_handler would re-arm ITIMER_PROF (hard_timeout), and zend_unset_timeout()
     * does not disarm it while EG(timeout_seconds) is 0. */
    CHECK(itimer_prof_armed() == 0, "after that SIGPROF, ITIMER_PROF is armed process-wide");
    CHECK(host_handler_installed(SIGPROF), "after that SIGPROF: the host's handler was replaced");
    setitimer(ITIMER_PROF, &off, NULL); /* for the rest of this group */

    rc = run_code(&q, &r, "echo 'x';");
    CHECK(rc == 0 && strcmp(req_out(&q), "x") == 0, "after SIGPROF: rc %d '%s'", rc, req_out(&q));
    fp_request_clear(&q);

    /* SIGPROF after fp_interrupt() but before PHP acted on it: with PHP's handler in place this
     * takes its "hard timeout" path, _exit(124) of the whole host process.  Run it in a child. */
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        dup2(devnull, 2);
        fp_request cq;
        rec cr;
        rec_init(&cr);
        req_init(&cq, &cr, "sleep(2); echo 'done';", FP_OUTPUT_BUFFER);
        prof_arg ca = {1};
        pthread_t ct;
        pthread_create(&ct, NULL, send_sigprof, &ca);
        fp_execute(&cq);
        pthread_join(ct, NULL);
        _exit(cq.end_reason == FP_END_INTERRUPT ? 0 : 3);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "a SIGPROF that arrives while an fp_interrupt() is pending (EG(timed_out) set): the child "
          "must end the execution with FP_END_INTERRUPT (exit 0; 3 = other end_reason; PHP's "
          "zend_timeout_handler would _exit(124) the whole host) -- child %s %d",
          WIFEXITED(status) ? "exited with" : "killed by signal",
          WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));

    /* Two SIGPROFs while no script runs: with PHP's handler in place the first sets
     * EG(timed_out) in the idle interpreter, the second takes the hard-timeout path, _exit(124).
     * Run it in a child (one thread: kill() delivers before it returns). */
    fflush(stdout);
    pid = fork();
    if (pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        dup2(devnull, 2);
        host_signal_count[SIGPROF] = 0;
        kill(getpid(), SIGPROF);
        kill(getpid(), SIGPROF);
        _exit(host_signal_count[SIGPROF] == 2 ? 0 : 4);
    }
    status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "two SIGPROFs while the interpreter is idle must reach the host's handler, twice (exit 0; "
          "4 = not twice; PHP's handler would _exit(124) the host process) -- child %s %d",
          WIFEXITED(status) ? "exited with" : "killed by signal",
          WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
    rec_free(&r);
}

/* ---- diagnostics during fp_startup() ------------------------------------------------------ */

static void group_startup_errors(void)
{
    /* This group's ini loads an extension that does not exist: fp_startup() still succeeds and
     * reports the problem through log() with a NULL handle. */
    CHECK(null_handle_logs >= 1, "no startup diagnostic for the missing extension");
    /* zend_extension loading reports with fprintf(stderr): the host's log gets it instead. */
    CHECK(zend_extension_failure_logged, "zend_extension's 'Failed loading' did not reach log()");
    CHECK(startup_log_type_seen >= 0, "no startup diagnostic recorded");
    KNOWN_BUG(startup_log_type_seen == 32 /* E_CORE_WARNING */,
              "startup diagnostics reach log() with type %d and a preformatted 'PHP Warning:  ...' "
              "message, not their E_* type: fp_error_cb is installed only after "
              "php_module_startup(), so PHP logs them through sapi log_message (fp_log_message, "
              "type 0)", startup_log_type_seen);
    fp_request q;
    rec r;
    rec_init(&r);
    int rc = run_code(&q, &r, "echo extension_loaded('json') ? 'ok' : 'no json';");
    CHECK(rc == 0 && strcmp(req_out(&q), "ok") == 0, "after a startup warning: rc %d '%s'", rc, req_out(&q));
    fp_request_clear(&q);
    rec_free(&r);
}

/* ---- HTTP requests (classic) ----------------------------------------------------------------- */

/* `q` as an HTTP request `method` that runs `code` (NULL: a worker's request), recorded in `r`. */
static void http_init(fp_request *q, rec *r, const char *code, int output_mode, const char *method)
{
    req_init(q, r, code, output_mode);
    q->http = 1;
    q->request_method = method;
}

static void group_http(void)
{
    fp_request q;
    rec r;
    rec_init(&r);
    int rc;

    http_init(&q, &r,
              "header('X-Test: yes'); http_response_code(201);"
              "echo $_GET['x'], '|', $_COOKIE['c'], '|', $_SERVER['REQUEST_METHOD'], '|', $_SERVER['REQUEST_URI'];",
              FP_OUTPUT_STREAM, "GET");
    q.request_uri = "/p?x=1";
    q.query_string = "x=1";
    q.cookie_data = "c=v";
    static const char env[] = "REQUEST_METHOD\0" "GET\0" "REQUEST_URI\0" "/p?x=1";
    q.env = env;
    q.env_pairs = 2;
    rc = fp_execute(&q);
    CHECK(rc == 0 && strcmp(rec_out(&r), "1|v|GET|/p?x=1") == 0, "GET: rc %d '%s'", rc, rec_out(&r));
    CHECK(r.headers_calls == 1, "GET: headers() called %d times", r.headers_calls);
    CHECK(r.status == 201 && q.response_code == 201, "GET: status %d response_code %d", r.status, q.response_code);
    CHECK(strstr(r.headers, "X-Test: yes\n") != NULL, "GET: headers '%s'", r.headers);
    CHECK(r.out_len_at_headers == 0, "GET: %zu output bytes before the headers", r.out_len_at_headers);
    fp_request_clear(&q);

    /* Empty body: headers are still sent. */
    rec_reset(&r);
    http_init(&q, &r, "http_response_code(404);", FP_OUTPUT_STREAM, "GET");
    rc = fp_execute(&q);
    CHECK(rc == 0 && r.headers_calls == 1 && r.status == 404, "empty: %d calls, status %d", r.headers_calls,
          r.status);
    fp_request_clear(&q);

    /* POST form and raw body. */
    static const char form[] = "a=1&b=2";
    rec_reset(&r);
    r.body = form;
    r.body_len = strlen(form);
    http_init(&q, &r, "echo $_POST['a'] + $_POST['b'], '|', file_get_contents('php://input');", FP_OUTPUT_BUFFER,
              "POST");
    q.content_type = "application/x-www-form-urlencoded";
    q.content_length = (int64_t)strlen(form);
    rc = fp_execute(&q);
    CHECK(rc == 0 && strcmp(req_out(&q), "3|a=1&b=2") == 0, "POST: rc %d '%s'", rc, req_out(&q));
    fp_request_clear(&q);

    /* Authorization. */
    rec_reset(&r);
    http_init(&q, &r, "echo $_SERVER['PHP_AUTH_USER'], ':', $_SERVER['PHP_AUTH_PW'];", FP_OUTPUT_BUFFER, "GET");
    q.authorization = "Basic dXNlcjpwYXNz"; /* user:pass */
    rc = fp_execute(&q);
    CHECK(rc == 0 && strcmp(req_out(&q), "user:pass") == 0, "auth: '%s'", req_out(&q));
    fp_request_clear(&q);

    /* A fatal error answers 500. */
    rec_reset(&r);
    http_init(&q, &r, "fp_undefined_function();", FP_OUTPUT_BUFFER, "GET");
    rc = fp_execute(&q);
    CHECK(rc == 255 && r.headers_calls == 1 && r.status == 500, "fatal: rc %d, %d calls, status %d", rc,
          r.headers_calls, r.status);
    fp_request_clear(&q);
    rec_free(&r);
}

/* ---- HTTP worker ------------------------------------------------------------------------------ */

/* `sub` as a GET request with query `query` for an HTTP worker, recorded in `r`. */
static void http_get(fp_request *sub, rec *r, const char *query)
{
    http_init(sub, r, NULL, FP_OUTPUT_BUFFER, "GET");
    sub->query_string = query;
}

/* Run `code` as an HTTP worker (recorded in `wr`) that is handed the `n` requests `subs`. */
static int run_http_worker(fp_request *worker, rec *wr, const char *code, fp_request *subs, int n)
{
    req_init(worker, wr, code, FP_OUTPUT_BUFFER);
    worker->worker_kind = FP_WORKER_HTTP;
    for (int i = 0; i < n; i++) {
        wr->queue[i] = &subs[i];
    }
    wr->nqueue = n;
    return fp_execute(worker);
}

static void group_http_worker(void)
{
    fp_request worker, sub[3];
    rec wr, sr[3];
    rec_init(&wr);
    static const char *const queries[] = {"i=1", "i=2", "i=3"};
    for (int i = 0; i < 3; i++) {
        rec_init(&sr[i]);
        http_get(&sub[i], &sr[i], queries[i]);
    }
    int rc = run_http_worker(&worker, &wr,
                             "echo 'boot|'; $n = 0;"
                             "while (frankenphp_handle_request(function () use (&$n) {"
                             "    $n++;"
                             "    if ($n == 2) { header('X-Two: 2'); }"
                             "    echo 'req', $n, ':', $_GET['i'];"
                             "})) {}"
                             "echo 'drained', $n;",
                             sub, 2);
    CHECK(rc == 0 && strcmp(req_out(&worker), "boot|drained2") == 0, "worker: rc %d '%s'", rc, req_out(&worker));
    CHECK(sr[0].out && strcmp(sr[0].out, "req1:1") == 0, "request 1: '%s'", sr[0].out);
    CHECK(sr[1].out && strcmp(sr[1].out, "req2:2") == 0, "request 2: '%s'", sr[1].out);
    CHECK(wr.ndone == 2 && wr.done[0] == &sub[0] && wr.done[1] == &sub[1], "request_done() calls: %d", wr.ndone);
    CHECK(sr[0].headers_calls == 1 && sr[1].headers_calls == 1, "headers() calls %d %d", sr[0].headers_calls,
          sr[1].headers_calls);
    CHECK(strstr(sr[1].headers, "X-Two: 2") != NULL && strstr(sr[0].headers, "X-Two") == NULL,
          "headers leaked between requests: '%s' / '%s'", sr[0].headers, sr[1].headers);
    CHECK(wr.headers_calls == 0, "the worker itself got headers()");
    for (int i = 0; i < 2; i++) {
        fp_request_clear(&sub[i]);
    }
    fp_request_clear(&worker);

    /* exit() inside the handler: the request is answered, the worker ends with the status. */
    rec_reset(&wr);
    rec_reset(&sr[2]);
    http_get(&sub[2], &sr[2], queries[2]);
    rc = run_http_worker(&worker, &wr,
                         "while (frankenphp_handle_request(function () { echo 'bye', $_GET['i']; exit(3); })) {}"
                         "echo 'not reached';",
                         &sub[2], 1);
    CHECK(rc == 3 && worker.output_len == 0, "exit in handler: rc %d worker output '%s'", rc, req_out(&worker));
    CHECK(sr[2].out && strcmp(sr[2].out, "bye3") == 0 && wr.ndone == 1, "exit in handler: '%s', %d done",
          sr[2].out, wr.ndone);
    fp_request_clear(&sub[2]);
    fp_request_clear(&worker);

    /* An uncaught exception in a request: logged, answered, and the worker script goes on
     * (as in tests/test_http.py); here the script then leaves its loop by itself after two
     * requests, as a max-requests loop does. */
    rec_reset(&wr);
    for (int i = 0; i < 2; i++) {
        rec_reset(&sr[i]);
        http_get(&sub[i], &sr[i], queries[i]);
    }
    rc = run_http_worker(&worker, &wr,
                         "for ($n = 0; $n < 2; $n++) {"
                         "    frankenphp_handle_request(function () use ($n) {"
                         "        if ($n == 0) { throw new Exception('in request'); }"
                         "        echo 'req', $_GET['i'];"
                         "    });"
                         "}"
                         "echo 'left the loop';",
                         sub, 2);
    CHECK(strcmp(req_out(&worker), "left the loop") == 0, "exception: worker output '%s'", req_out(&worker));
    CHECK(sr[0].headers_calls == 1 && sr[0].status == 500, "exception: request 1 status %d", sr[0].status);
    CHECK(rec_has_log(&sr[0], PHP_E_ERROR, "Uncaught Exception: in request"), "exception: not logged");
    CHECK(sr[1].out && strcmp(sr[1].out, "req2") == 0 && sr[1].status == 200,
          "exception: request 2 '%s' status %d", sr[1].out, sr[1].status);
    CHECK(wr.ndone == 2, "exception: %d request_done() calls", wr.ndone);
    /* The request's EG(exit_status) = 255 (php_error_cb) must not stick to the worker: a normal
     * end must not count as a crash. */
    CHECK(rc == 0 && worker.exit_status == 0,
          "exception: a worker that survived an uncaught exception in a request and ended normally: "
          "rc %d exit_status %d", rc, worker.exit_status);
    for (int i = 0; i < 2; i++) {
        fp_request_clear(&sub[i]);
    }
    fp_request_clear(&worker);

    fp_request q;
    int rc2 = run_code(&q, &wr, "echo 'plain';");
    CHECK(rc2 == 0 && strcmp(req_out(&q), "plain") == 0, "after worker: '%s'", req_out(&q));
    fp_request_clear(&q);
    for (int i = 0; i < 3; i++) {
        rec_free(&sr[i]);
    }
    rec_free(&wr);
}

/* ---- request functions (csrc/http_functions.c) ---------------------------------------------------- */

static void group_request_functions(void)
{
    fp_request q;
    rec r;
    rec_init(&r);
    int rc;
    static const char env[] = "HTTP_X_FOO_BAR\0" "v1\0" "CONTENT_TYPE\0" "text/plain\0" "OTHER\0" "x";

    /* headers_send(103): an interim response with the headers so far, before the final ones,
     * and the status set before it is kept.  finish_request(): the host gets the final headers
     * first, then the output so far; later output never reaches it. */
    req_init(&q, &r,
             "http_response_code(202); header('Link: </a.css>; rel=preload');"
             "echo headers_send(103), '|', http_response_code(), '|';"
             "var_export(frankenphp_finish_request()); echo 'late'; flush();"
             "echo var_export(fastcgi_finish_request(), true);",
             FP_OUTPUT_FLUSH);
    q.http = 1;
    q.request_method = "GET";
    rc = fp_execute(&q);
    CHECK(rc == 0, "finish: rc %d", rc);
    CHECK(r.interim_calls == 1 && r.interim_status == 103, "interim: %d calls, status %d", r.interim_calls,
          r.interim_status);
    CHECK(strstr(r.interim_headers, "Link: </a.css>; rel=preload\n") != NULL, "interim headers '%s'",
          r.interim_headers);
    CHECK(r.headers_calls_at_interim == 0 && r.out_len_at_interim == 0, "interim after the final headers");
    CHECK(r.finish_calls == 1 && r.headers_calls_at_finish == 1, "finish: %d calls, %d headers calls before",
          r.finish_calls, r.headers_calls_at_finish);
    CHECK(r.status == 202, "final status %d", r.status);
    CHECK(strcmp(r.finished_output, "1|202|") == 0, "finish took '%s'", r.finished_output);
    CHECK(strcmp(rec_out(&r), "") == 0 && q.output_len == 0 && q.finished, "after the finish: '%s' / '%s'",
          rec_out(&r), req_out(&q));
    fp_request_clear(&q);
    CHECK(q.finished == 0, "fp_request_clear() leaves finished set");

    /* The host cannot send an interim response: 3 (SAPI_HEADER_SEND_FAILED); final headers
     * stay unsent.  headers_send(404) sends them now. */
    rec_reset(&r);
    r.interim_result = -1;
    req_init(&q, &r, "$a = headers_send(103); $b = (int)headers_sent(); $c = headers_send(404);"
                     "echo $a, '|', $b, '|', $c, '|', (int)headers_sent();", FP_OUTPUT_BUFFER);
    q.http = 1;
    q.request_method = "GET";
    rc = fp_execute(&q);
    CHECK(rc == 0 && strcmp(req_out(&q), "3|0|0|1") == 0 && r.status == 404, "send: '%s' status %d",
          req_out(&q), r.status);
    fp_request_clear(&q);

    /* Header functions and the Basic-auth variables. */
    rec_reset(&r);
    req_init(&q, &r,
             "header('X-A: 1'); header('X-B:two');"
             "echo json_encode([getallheaders(), apache_response_headers(), $_SERVER['REMOTE_USER'],"
             "$_SERVER['AUTH_TYPE'], $_SERVER['PHP_AUTH_PW']]);",
             FP_OUTPUT_BUFFER);
    q.http = 1;
    q.request_method = "GET";
    q.env = env;
    q.env_pairs = 3;
    q.authorization = "Basic dXNlcjpwYXNz"; /* user:pass */
    rc = fp_execute(&q);
    const char *expected = "[{\"X-Foo-Bar\":\"v1\",\"Content-Type\":\"text\\/plain\"},"
                           "{\"X-Powered-By\":\"PHP\\/";
    CHECK(rc == 0 && strncmp(req_out(&q), expected, strlen(expected)) == 0, "headers: '%s'", req_out(&q));
    CHECK(strstr(req_out(&q), "\"X-A\":\"1\",\"X-B\":\"two\"},\"user\",\"Basic\",\"pass\"]") != NULL,
          "headers: '%s'", req_out(&q));
    fp_request_clear(&q);

    /* frankenphp_log(): level, message and the context as JSON; no context: NULL. */
    rec_reset(&r);
    rc = run_code(&q, &r, "frankenphp_log('hello', FRANKENPHP_LOG_LEVEL_WARN, ['a' => 1, 'b' => 'x/y']);");
    CHECK(rc == 0 && r.php_log_calls == 1 && r.php_log_level == 4 && strcmp(r.php_log_message, "hello") == 0 &&
              strcmp(r.php_log_context, "{\"a\":1,\"b\":\"x/y\"}") == 0,
          "log: %d calls, level %d, '%s' '%s'", r.php_log_calls, r.php_log_level, r.php_log_message,
          r.php_log_context);
    fp_request_clear(&q);
    rec_reset(&r);
    rc = run_code(&q, &r, "frankenphp_log('bare'); echo FRANKENPHP_LOG_LEVEL_DEBUG, FRANKENPHP_LOG_LEVEL_ERROR;");
    CHECK(rc == 0 && r.php_log_level == 0 && strcmp(r.php_log_context, "(null)") == 0 &&
              strcmp(req_out(&q), "-48") == 0, "bare log: level %d '%s' '%s'", r.php_log_level,
          r.php_log_context, req_out(&q));
    fp_request_clear(&q);

    /* Outside HTTP: no interim response, no response headers, no request headers. */
    rec_reset(&r);
    rc = run_code(&q, &r, "echo headers_send(103), '|', json_encode([frankenphp_response_headers(), getallheaders()]);");
    CHECK(rc == 0 && strcmp(req_out(&q), "3|[false,[]]") == 0 && r.interim_calls == 0, "cli: '%s'", req_out(&q));
    fp_request_clear(&q);
    rec_free(&r);
}

/* ---- runner ------------------------------------------------------------------------------------ */

typedef struct group {
    const char *name;
    const char *ini;
    void (*fn)(void);
} group;

static const group groups[] = {
    {"startup", "memory_limit=32M\n", group_startup},
    {"exit_status", "memory_limit=32M\n", group_exit_status},
    {"output", "memory_limit=32M\n", group_output},
    {"env", "memory_limit=32M\n", group_env},
    {"time_limit", "memory_limit=32M\nmax_execution_time=5\n", group_time_limit},
    {"interrupt", "memory_limit=32M\n", group_interrupt},
    {"worker", "memory_limit=32M\n", group_worker},
    {"chdir", "memory_limit=32M\n", group_chdir},
    {"fds", "memory_limit=32M\n", group_fds},
    {"signals", "memory_limit=32M\n", group_signals},
    {"startup_errors",
     "memory_limit=32M\nextension=/nonexistent/frankenpy_native_test.so\nzend_extension=/nonexistent/fp_zend_ext.so\n",
     group_startup_errors},
    {"http", "memory_limit=32M\n", group_http},
    {"http_worker", "memory_limit=32M\n", group_http_worker},
    {"request_functions", "memory_limit=32M\n", group_request_functions},
};
#define NGROUPS (sizeof(groups) / sizeof(groups[0]))

static int run_group(const group *g)
{
    fprintf(stdout, "== %s\n", g->name);
    snprintf(tmp_dir, sizeof(tmp_dir), "%s/fp_native_XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(tmp_dir)) {
        fprintf(stdout, "mkdtemp: %s\n", strerror(errno));
        return 2;
    }
    char err[512] = "";
    find_libphp();
    CHECK(libphp_base != NULL, "libphp not found (dlsym/dladdr of php_request_startup)");
    int rc = fp_startup(&host, g->ini, err, sizeof(err));
    CHECK(rc == 0, "fp_startup(\"%s\"): %s", g->ini, err);
    if (rc == 0) {
        if (g->fn != group_startup_errors) {
            CHECK(null_handle_logs == 0, "%d startup diagnostics", null_handle_logs);
        }
        g->fn();
        fp_shutdown();
    }
    remove_tmp_dir();
    fprintf(stdout, "%s: %d passed, %d failed, %d known bugs (xfail), %d fixed (xpass)\n", g->name, n_passed,
            n_failed, n_xfail, n_xpass);
    return n_failed || n_xpass ? 1 : 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    verbose_logs = getenv("FP_TEST_VERBOSE") != NULL;
    if (argc == 2 && strcmp(argv[1], "--list") == 0) {
        for (size_t i = 0; i < NGROUPS; i++) {
            printf("%s\n", groups[i].name);
        }
        return 0;
    }
    if (argc == 2) {
        for (size_t i = 0; i < NGROUPS; i++) {
            if (strcmp(groups[i].name, argv[1]) == 0) {
                return run_group(&groups[i]);
            }
        }
        fprintf(stderr, "test_glue: no group '%s' (see --list)\n", argv[1]);
        return 2;
    }
    if (argc > 2) {
        fprintf(stderr, "usage: test_glue [GROUP | --list]\n");
        return 2;
    }
    /* Every group in its own process: one interpreter start-up each. */
    int failed_groups = 0;
    for (size_t i = 0; i < NGROUPS; i++) {
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {
            _exit(run_group(&groups[i]));
        }
        int status = 0;
        waitpid(pid, &status, 0);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            failed_groups++;
            printf("group %s FAILED (%s %d)\n", groups[i].name, WIFEXITED(status) ? "exit" : "signal",
                   WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
        }
    }
    printf("%zu groups, %d failed\n", NGROUPS, failed_groups);
    return failed_groups ? 1 : 0;
}
