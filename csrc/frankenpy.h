/*
 * frankenpy C glue: the SAPI that runs PHP inside one private copy of libphp.
 *
 * Build model (see frankenpy/images.py): this file's library, libfrankenpy_sapi.so, is linked
 * against libphp.so.  At run time every PHP thread gets a private byte copy of libphp (its SONAME
 * rewritten) and a private copy of this library (its DT_NEEDED rewritten to match), loaded with
 * RTLD_LOCAL | RTLD_DEEPBIND.  Every static and every PHP global below therefore exists once per
 * PHP thread: one copy is driven by one OS thread at a time, which is all NTS PHP asks for.
 *
 * Signal handlers, interval timers, stdout/stderr and the working directory belong to the whole
 * process: fp_startup() redirects this copy of libphp's calls that would change them (its GOT,
 * see interpose.h and the hooks in sapi.c), and chdir() goes through the host.
 *
 * The layer owns no policy: it starts an interpreter, runs one execution as told by an
 * fp_request, reports what happened through the fp_host callbacks and result fields, and can be
 * interrupted from another thread.  Threads, time limits, restarts and backoff live in Python.
 *
 * Every fp_* function except fp_interrupt() must be called from the thread that currently owns
 * the copy.  fp_interrupt() may be called from any thread.
 */
#ifndef FRANKENPY_H
#define FRANKENPY_H

#include <stddef.h>
#include <stdint.h>

#define FP_ABI_VERSION 12

/* How an execution's output reaches the host. */
enum fp_output_mode {
    FP_OUTPUT_BUFFER = 0, /* collect everything in fp_request.output; no callback */
    FP_OUTPUT_STREAM = 1, /* host->output() for every write, nothing collected */
    FP_OUTPUT_FLUSH = 2,  /* collect; host->output() with the collected bytes on each flush(),
                           * and whenever more than FP_FLUSH_AT bytes are collected */
};

/* FP_OUTPUT_FLUSH never collects more than this: past it, the collected bytes go to the host as
 * on flush() (headers first), so that memory stays flat however much a script prints. */
#define FP_FLUSH_AT (256 * 1024)

/* What kind of thread runs the script: decides which frankenphp_* functions work. */
enum fp_worker_kind {
    FP_WORKER_NONE = 0,       /* regular execution or classic HTTP request */
    FP_WORKER_BACKGROUND = 1, /* frankenphp_get_worker_handle() works */
    FP_WORKER_HTTP = 2,       /* frankenphp_handle_request() works */
};

/* Why an execution ended, besides its exit status. */
enum fp_end_reason {
    FP_END_NORMAL = 0,    /* ran to its end or called exit() */
    FP_END_BAILOUT = 1,   /* fatal error, parse error, uncaught exception, memory_limit ... */
    FP_END_INTERRUPT = 2, /* stopped by fp_interrupt() */
    FP_END_STARTUP = 3,   /* php_request_startup() failed; nothing ran */
    /* the script file does not exist or is not a regular file: PHP failed to open it (with its
     * fatal "Failed opening required" diagnostic); nothing of it ran */
    FP_END_NOT_FOUND = 4,
};

typedef struct fp_request fp_request;

/* An immutable, reference-counted value in the neutral encoding of csrc/worker_state.h: how
 * vars and task payloads cross from one interpreter's heap to another's (zvals never do). */
typedef struct fp_blob {
    int refs; /* atomic */
    size_t len;
    char data[1]; /* len bytes, then a NUL */
} fp_blob;

/* Callbacks into the host.  `handle` is fp_request.handle of the execution in progress. */
typedef struct fp_host {
    /* Output bytes (see fp_output_mode).  Returns 0, or -1 when the client has gone away: PHP
     * then aborts the script unless it called ignore_user_abort(true). */
    int (*output)(void *handle, const char *data, size_t len);
    /* A PHP diagnostic (warning, notice, fatal error ...) or an error_log() line.
     * `type` is the E_* constant (0 for error_log()), file/line may be NULL/0. */
    void (*log)(void *handle, int type, const char *file, uint32_t line, const char *message);
    /* Optional (may be NULL): the response's status and headers were just sent, before its
     * first output byte (only when fp_request.http is set).  They are also left in the
     * request's `response_code` and `headers` fields, where a host can read them without a
     * callback. */
    void (*headers)(void *handle, int status, const char *lines, size_t len);
    /* Read up to `len` bytes of the request body into `buf`; returns 0 at its end. */
    size_t (*read_body)(void *handle, char *buf, size_t len);
    /* The execution's time limit, counting from now; 0 means no limit.  `initial` is 1 for the
     * max_execution_time in force when the script starts (reported only when not 0), 0 when the
     * script changes it (set_time_limit(), ini_set('max_execution_time')). */
    void (*time_limit)(void *handle, int64_t seconds, int initial);
    /* A background worker called frankenphp_get_worker_handle() for the first time: ready. */
    void (*worker_ready)(void *handle);
    /* The working directory is the process's: the first chdir() of an execution calls
     * chdir_begin() before it changes directory, and the end of that execution chdir_end().
     * The host saves its directory when no execution holds it yet and puts it back when the
     * last one ends (one saved directory for every copy).  Any thread. */
    void (*chdir_begin)(void);
    void (*chdir_end)(void);
    /* An HTTP worker waits for its next request: fill `next` and return 1, or return 0 when the
     * worker is drained.  Blocks as long as the host wants. */
    int (*next_request)(void *handle, fp_request **next);
    /* The request that next_request() handed out is complete: take what is left of its output
     * (`output`, `output_len`) now, the glue frees it when this returns. */
    void (*request_done)(void *handle, fp_request *done);
    /* Bytes the script wrote to STDERR / php://stderr (or, in HTTP requests, php://stdout),
     * except in a plain execution, which collects them in `stderr_output` instead. */
    void (*stderr_output)(void *handle, const char *data, size_t len);
    /* --- ABI 9, each optional (NULL: the feature is off, see http_functions.c) --------------
     * headers_send(1xx): send an interim response (103 Early Hints) with these header lines
     * ("Name: value\n"), before the final one.  Returns 0 when sent, -1 when it cannot be (the
     * host or the protocol has no interim responses, HTTP/1.0 client, client gone). */
    int (*interim)(void *handle, int status, const char *lines, size_t len);
    /* frankenphp_finish_request(): the response of `req` is complete.  Its status and headers
     * are final (req->headers); take the rest of its output (req->output, output_len) now and
     * end the response: the glue drops that output when this returns, and discards everything
     * the script writes afterwards (req->finished). */
    void (*finish_request)(void *handle, fp_request *req);
    /* frankenphp_log(): `level` as FrankenPHP's (slog): -4 debug, 0 info, 4 warn, 8 error;
     * `context` is the context array as JSON (an object, or a list for a list array), NULL
     * when empty. */
    void (*php_log)(void *handle, int level, const char *message, size_t message_len,
                    const char *context, size_t context_len);
    /* --- background workers: readiness, shared vars, tasks (process-wide state, so the host
     * keeps it: csrc/worker_state.h).  `ctx` is the script's fp_request.worker_ctx; the glue
     * never calls these without one.  Failures return -1 / NULL / 0 with a message in err;
     * `timeout` < 0 waits without limit; `flags`: 1 = a boot failure of the target fails at once
     * (the caller is an HTTP worker before its first request); a wait also ends (an error) once
     * *stop is set: the execution was interrupted (a time limit, a force-stop).  May be NULL: the
     * functions then throw. */
    int (*ensure_worker)(void *ctx, const char *name, size_t name_len, double timeout, int flags,
                         const int *stop, char *err, size_t err_len);
    int (*set_vars)(void *ctx, const char *data, size_t len, char *err, size_t err_len);
    /* A reference to the worker's latest snapshot; NULL with err[0] == 0 if it never published. */
    fp_blob *(*get_vars)(void *ctx, const char *name, size_t name_len, double timeout, int flags,
                         const int *stop, char *err, size_t err_len);
    /* Queue a task and wait for its answer (a reference; NULL with err on failure). */
    fp_blob *(*send_task)(void *ctx, const char *name, size_t name_len, const char *payload, size_t len,
                          double timeout, int flags, const int *stop, char *err, size_t err_len);
    /* The next task of the calling background worker: its id (0: none) and payload reference. */
    int64_t (*receive_task)(void *ctx, fp_blob **payload);
    /* Answer a task taken by this worker with `result` (NULL: null) or fail it with `message`. */
    int (*finish_task)(void *ctx, int64_t id, const char *result, size_t len, const char *message, char *err,
                       size_t err_len);
    void (*release_blob)(fp_blob *blob);
} fp_host;

struct fp_request {
    /* --- what to run ------------------------------------------------------------------ */
    const char *script_path; /* file to execute; NULL to evaluate `code` instead */
    const char *code;        /* PHP code without the opening tag, when script_path is NULL */
    /* $_SERVER entries, also answered by getenv(): env_pairs pairs packed in one block,
     * "NAME\0VALUE\0NAME\0VALUE\0..." (one allocation for the host, none per string). */
    const char *env;
    size_t env_pairs;
    char **argv; /* $argv / $argc; may be NULL */
    int argc;
    int output_mode; /* enum fp_output_mode */
    /* FP_OUTPUT_BUFFER: past this many collected bytes the script ends with a fatal error
     * (0: no limit other than memory) */
    size_t output_limit;
    void *handle;    /* passed back to every fp_host callback */
    /* Callbacks for this execution; NULL: the interpreter's (fp_startup's).  The native HTTP
     * server (http_server.h) gives its requests C callbacks, so that no request enters Python.
     * An HTTP worker's requests use their own table for output, headers, body and diagnostics;
     * the worker script's table serves time_limit, worker_ready, next_request and request_done. */
    const struct fp_host *host;
    /* What STDIN / php://stdin read (CLI-style executions); NULL/0: empty.  Not copied: it
     * must stay valid until fp_execute() returns. */
    const char *stdin_data;
    size_t stdin_len;
    /* --- worker identity ----------------------------------------------------------------- */
    int worker_kind;         /* enum fp_worker_kind */
    int worker_fd;           /* background: read end of the stop pipe (not owned), else -1 */
    void *worker_ctx;        /* who asks, for the host's vars/task callbacks; NULL: none */
    /* --- HTTP request (http = 0 for a CLI-like execution without headers) ----------------
     * A HEAD request runs like a GET: its body reaches the host, which must not send it. */
    int http;
    const char *request_method;
    const char *request_uri;
    const char *query_string;
    const char *content_type;
    const char *cookie_data;
    const char *authorization; /* Authorization header: PHP_AUTH_USER / PHP_AUTH_PW / AUTH_TYPE */
    int64_t content_length; /* -1 when unknown */
    /* --- results, written by the glue ----------------------------------------------------- */
    uint64_t exec_id;  /* set once the script starts: the id fp_interrupt() takes */
    int exit_status;   /* EG(exit_status): exit(n), 255 after a fatal error */
    int end_reason;    /* enum fp_end_reason */
    int response_code; /* HTTP status PHP settled on (200 unless changed) */
    char *output;      /* collected output (FP_OUTPUT_BUFFER / FLUSH); freed by fp_request_clear */
    size_t output_len;
    size_t output_cap;
    int headers_sent;  /* HTTP: status and headers are final (sent before the first output byte) */
    char *headers;     /* HTTP: "Name: value\n" lines once headers_sent; freed by fp_request_clear */
    size_t headers_len;
    /* STDERR of a plain execution (worker_kind FP_WORKER_NONE, http 0); freed by
     * fp_request_clear.  Other executions hand their STDERR to host->stderr_output(). */
    char *stderr_output;
    size_t stderr_len;
    size_t stderr_cap;
    int finished;      /* frankenphp_finish_request() completed the response: output is dropped */
    size_t memory_usage; /* zend_memory_usage() as the script (or the worker's request) ended */
};

/* Everything above is also fed to cffi by csrc/build_native.py; the functions below live in the
 * per-image copies of the glue and are reached through the loader (loader.h). */
/* @cdef-types-end */

/* Start this copy's interpreter.  `ini` holds php.ini text ("key=value\n" lines, extensions
 * named by absolute path) applied over the built-in defaults; no php.ini file and no scan dir is
 * read.  Returns 0, or -1 with a message in err. */
int fp_startup(const fp_host *host, const char *ini, char *err, size_t err_len);

/* Shut this copy's interpreter down (module shutdown).  No execution may be running. */
void fp_shutdown(void);

/* Run one execution (request start-up, the script, request shutdown).  Fills the result fields
 * of `req`; returns its exit status.  Never longjmps out: PHP bailouts end here. */
int fp_execute(fp_request *req);

/* Free what the glue allocated for `req` (its output buffer) and zero the result fields. */
void fp_request_clear(fp_request *req);

/* Stop the execution `exec_id` (as returned by fp_current_execution()) if it still runs:
 * "Maximum execution time of <seconds> seconds exceeded", exit status 255.  Sets the VM interrupt
 * flags and sends `signo` to the executing thread so that a blocking syscall returns EINTR (the
 * host installs a no-op handler without SA_RESTART for it).  Returns 1 if the execution was
 * running, 0 if it had already ended.  Any thread. */
int fp_interrupt(uint64_t exec_id, int64_t seconds, int signo);

/* Id of the execution now running in this copy, 0 when idle.  Any thread. */
uint64_t fp_current_execution(void);

/* Version of this header the library was built from (FP_ABI_VERSION). */
int fp_abi_version(void);

#endif
