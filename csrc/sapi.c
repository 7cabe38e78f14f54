/*
 * frankenpy SAPI: runs PHP executions inside one private copy of libphp.
 * The contract (and the threading model) is documented in frankenpy.h.
 */
#define _GNU_SOURCE /* memrchr() in PHP headers, RTLD flags */
#include "frankenpy.h"
#include "glue_internal.h"
#include "sapi_internal.h"

#include <dlfcn.h>
#include <errno.h>
#include <link.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <syslog.h>
#include <unistd.h>

#include <php.h>
#include <SAPI.h>
#include <php_main.h>
#include <php_variables.h>
#include <php_ini.h>
#include <php_output.h>
#include <php_streams.h>
#include <ext/spl/spl_exceptions.h>
#include <zend_exceptions.h>
#include <zend_extensions.h>
#include <zend_ini.h>
#include <zend_ini_scanner.h>
#include <zend_signal.h>
#include <zend_smart_str.h>

#include "frankenphp_arginfo.h"
#include "interpose.h"

/* ---- per-copy state ------------------------------------------------------------------------
 * All of it belongs to the thread that owns this copy, except the fields under exec_mu, which
 * fp_interrupt() reads from other threads. */
static const fp_host *host;
static fp_request *script_req; /* the execution in progress (the worker script for workers) */
static fp_request *current;    /* where output/headers go: script_req, or an HTTP worker's request */
static zend_long time_limit;   /* max_execution_time as the script sees it */
static int cwd_held;           /* this execution called chdir(): host->chdir_end() at its end */
static zend_resource *worker_handle; /* stream returned by frankenphp_get_worker_handle() */
static void (*php_error_cb)(int, zend_string *, const uint32_t, zend_string *);
static zif_handler php_chdir;
static int startup_done;
static int worker_looping; /* an HTTP worker called frankenphp_handle_request() in this run */

static pthread_mutex_t exec_mu = PTHREAD_MUTEX_INITIALIZER;
static uint64_t exec_counter; /* under exec_mu */
static uint64_t running_exec; /* under exec_mu: id of the execution in progress, 0 when idle */
static pthread_t running_thread;
static int interrupted; /* written under exec_mu, read by the libc hooks without it (atomics) */
static int fatal_error; /* a fatal diagnostic was reported during the execution */
/* The primary script is being compiled: still set after run_script() when its compilation
 * bailed out (see fp_compile_file). */
static int compiling_primary;
static size_t stdin_pos; /* read position in script_req->stdin_data, shared by every STDIN stream */
static bool register_argc_argv; /* the ini setting (each execution sets PG(register_argc_argv)) */

static void prepare_request_info(fp_request *req);

/* The callbacks of request `r`: its own table, else the interpreter's. */
static inline const fp_host *host_of(const fp_request *r)
{
    return r && r->host ? r->host : host;
}

/* What sapi_activate() decided that we decide otherwise. */
static void after_sapi_activate(fp_request *req)
{
    (void)req;
    /* HEAD runs like GET and the host drops the body, so that it can announce the body's
     * Content-Length (RFC 9110 9.3.2) instead of none. */
    SG(request_info).headers_only = 0;
}

static const char builtin_ini[] =
    /* The host owns output, errors, time limits and the working directory. */
    "html_errors=0\n"
    "display_errors=0\n"
    "log_errors=0\n"
    "implicit_flush=0\n"
    "output_buffering=0\n"
    "max_execution_time=0\n"
    "max_input_time=-1\n"
    "hard_timeout=0\n" /* never arm ITIMER_PROF after a timeout either */
    "register_argc_argv=1\n"
    "variables_order=EGPCS\n";

/* ---- output ---------------------------------------------------------------------------- */

static int output_failed; /* the collected output hit its limit or memory: drop the rest */

/* Hand `data` to the host as flush() does: the status and headers go out first. */
static void deliver(fp_request *r, const char *data, size_t len)
{
    if (!SG(headers_sent)) {
        sapi_send_headers();
    }
    if (len && host_of(r)->output(r->handle, data, len) != 0) {
        php_handle_aborted_connection(); /* bails out unless ignore_user_abort(true) */
    }
}

static void deliver_collected(fp_request *r)
{
    size_t len = r->output_len;
    r->output_len = 0; /* before deliver(), which may bail out */
    deliver(r, r->output, len);
}

/* Output that cannot be collected ends the script with a fatal error (exit status 255, the
 * message in the host's diagnostics) rather than silently going missing. */
static void output_failure(const char *format, size_t bytes)
{
    output_failed = 1; /* output written while PHP unwinds is dropped, not reported again */
    zend_error(E_ERROR, format, bytes);
}

static void append_output(fp_request *r, const char *data, size_t len)
{
    if (output_failed) {
        return;
    }
    if (r->output_mode == FP_OUTPUT_FLUSH && len > FP_FLUSH_AT - r->output_len) {
        deliver_collected(r);
        if (len > FP_FLUSH_AT) {
            deliver(r, data, len);
            return;
        }
    } else if (r->output_mode == FP_OUTPUT_BUFFER && r->output_limit &&
               len > r->output_limit - r->output_len) {
        output_failure("Output exceeds the limit of %zu bytes (max_output_size)", r->output_limit);
        return;
    }
    if (len > r->output_cap - r->output_len) {
        size_t cap = r->output_cap ? r->output_cap : 4096;
        while (cap < r->output_len + len) {
            cap *= 2;
        }
        /* Plain malloc, not emalloc: the buffer outlives the request. */
        char *grown = realloc(r->output, cap);
        if (!grown) {
            if (r->output_mode == FP_OUTPUT_FLUSH) {
                deliver_collected(r); /* no copy needed: nothing is lost */
                deliver(r, data, len);
                return;
            }
            output_failure("Out of memory collecting the output (%zu bytes)", cap);
            return;
        }
        r->output = grown;
        r->output_cap = cap;
    }
    memcpy(r->output + r->output_len, data, len);
    r->output_len += len;
}

static size_t fp_ub_write(const char *str, size_t len)
{
    fp_request *r = current;
    if (!r || r->finished) {
        return len; /* after frankenphp_finish_request(): dropped */
    }
    if (r->output_mode == FP_OUTPUT_STREAM) {
        if (host_of(r)->output(r->handle, str, len) != 0) {
            php_handle_aborted_connection(); /* bails out unless ignore_user_abort(true) */
        }
    } else {
        append_output(r, str, len);
    }
    return len;
}

static void fp_flush(void *server_context)
{
    (void)server_context;
    fp_request *r = current;
    if (r && r->output_mode == FP_OUTPUT_FLUSH) {
        deliver_collected(r);
    }
}

/* ---- standard streams ------------------------------------------------------------------------
 * The host's fds 0, 1 and 2 are not the script's.  STDIN, STDOUT, STDERR (CLI-style executions)
 * and php://stdin, php://stdout, php://stderr, php://fd/0-2 (every execution) are streams of
 * the execution instead: stdin reads fp_request.stdin_data, stdout is the execution's output
 * (written past PHP's output buffers, as the CLI writes to fd 1), stderr is collected or handed
 * to the host.  In an HTTP request stdout would corrupt the response: it goes where stderr goes. */
enum { FP_STDIN, FP_STDOUT, FP_STDERR };

static void append_stderr(fp_request *r, const char *data, size_t len)
{
    if (r->stderr_len + len > r->stderr_cap) {
        size_t cap = r->stderr_cap ? r->stderr_cap : 1024;
        while (cap < r->stderr_len + len) {
            cap *= 2;
        }
        char *grown = realloc(r->stderr_output, cap); /* outlives the request, like output */
        if (!grown) {
            return;
        }
        r->stderr_output = grown;
        r->stderr_cap = cap;
    }
    memcpy(r->stderr_output + r->stderr_len, data, len);
    r->stderr_len += len;
}

static ssize_t fp_std_write(php_stream *stream, const char *buf, size_t count)
{
    fp_request *r = script_req;
    if (!r) {
        return (ssize_t)count;
    }
    if ((uintptr_t)stream->abstract == FP_STDOUT && current && !current->http) {
        fp_ub_write(buf, count);
    } else if (!r->http && r->worker_kind == FP_WORKER_NONE) {
        append_stderr(r, buf, count);
    } else if (host_of(r)->stderr_output) {
        host_of(r)->stderr_output(r->handle, buf, count);
    }
    return (ssize_t)count;
}

static ssize_t fp_std_read(php_stream *stream, char *buf, size_t count)
{
    fp_request *r = script_req;
    size_t left = r && r->stdin_data && stdin_pos < r->stdin_len ? r->stdin_len - stdin_pos : 0;
    if ((uintptr_t)stream->abstract != FP_STDIN || left == 0) {
        stream->eof = 1;
        return 0;
    }
    size_t n = count < left ? count : left;
    memcpy(buf, r->stdin_data + stdin_pos, n);
    stdin_pos += n;
    return (ssize_t)n;
}

static int fp_std_close(php_stream *stream, int close_handle)
{
    (void)stream; (void)close_handle;
    return 0;
}

static int fp_std_flush(php_stream *stream)
{
    (void)stream;
    return 0;
}

static const php_stream_ops fp_std_ops = {
    fp_std_write, fp_std_read, fp_std_close, fp_std_flush, "STDIO", NULL, NULL, NULL, NULL,
};

/* php:// with the std streams answered here, everything else by PHP's own wrapper. */
static const php_stream_wrapper *php_wrapper;
static php_stream_wrapper_ops fp_php_wrapper_ops;
static php_stream_wrapper fp_php_wrapper;

static php_stream *open_std_stream(int which)
{
    php_stream *stream = php_stream_alloc(&fp_std_ops, (void *)(uintptr_t)which, NULL, which == FP_STDIN ? "rb" : "wb");
    stream->wrapper = &fp_php_wrapper; /* stream_get_meta_data(): "wrapper_type" PHP, as the CLI's */
    return stream;
}

static php_stream *fp_php_opener(php_stream_wrapper *wrapper, const char *path, const char *mode, int options,
                                 zend_string **opened_path, php_stream_context *context STREAMS_DC)
{
    static const char *const names[][2] = {{"stdin", "fd/0"}, {"stdout", "fd/1"}, {"stderr", "fd/2"}};
    if (!strncasecmp(path, "php://", 6)) {
        for (int which = FP_STDIN; which <= FP_STDERR; which++) {
            if (!strcasecmp(path + 6, names[which][0]) || !strcmp(path + 6, names[which][1])) {
                return open_std_stream(which);
            }
        }
    }
    return php_wrapper->wops->stream_opener(wrapper, path, mode, options, opened_path, context STREAMS_REL_CC);
}

static void replace_php_wrapper(void)
{
    HashTable *wrappers = php_stream_get_url_stream_wrappers_hash_global();
    php_stream_wrapper *found = zend_hash_str_find_ptr(wrappers, ZEND_STRL("php"));
    if (!found || found == &fp_php_wrapper) {
        return; /* (module start-up registers PHP's own again: keep that one as the fallback) */
    }
    php_wrapper = found;
    fp_php_wrapper_ops = *php_wrapper->wops;
    fp_php_wrapper_ops.stream_opener = fp_php_opener;
    fp_php_wrapper = *php_wrapper;
    fp_php_wrapper.wops = &fp_php_wrapper_ops;
    zend_hash_str_update_ptr(wrappers, ZEND_STRL("php"), &fp_php_wrapper);
}

/* The constants' names, made once: interning them at every execution costs more than the rest.
 * Persistent strings with a reference of ours, so that no request end frees them. */
static zend_string *std_names[3];

static void make_std_names(void)
{
    static const char *const names[] = {"STDIN", "STDOUT", "STDERR"};
    for (int which = FP_STDIN; which <= FP_STDERR; which++) {
        std_names[which] = zend_string_init(names[which], strlen(names[which]), 1);
        zend_string_hash_val(std_names[which]);
    }
}

/* What the CLI gives a script beyond php_request_startup() (sapi/cli/php_cli.c do_cli). */
static void cli_request_startup(void)
{
    for (int which = FP_STDIN; which <= FP_STDERR; which++) {
        zend_constant c;
        php_stream *stream = open_std_stream(which); /* (a macro argument is evaluated twice) */
        php_stream_to_zval(stream, &c.value);
        ZEND_CONSTANT_SET_FLAGS(&c, CONST_CS, 0);
        c.name = zend_string_copy(std_names[which]); /* the constant's reference, released at request end */
        zend_register_constant(&c);
    }
    zend_is_auto_global(ZSTR_KNOWN(ZEND_STR_AUTOGLOBAL_SERVER)); /* $_SERVER even when jit */
}

/* ---- headers, body, cookies, variables ------------------------------------------------------ */

static int fp_send_headers(sapi_headers_struct *headers)
{
    fp_request *r = current;
    if (!r || !r->http) {
        return SAPI_HEADER_SENT_SUCCESSFULLY;
    }
    smart_str lines = {0};
    zend_llist_position pos;
    for (sapi_header_struct *h = zend_llist_get_first_ex(&headers->headers, &pos); h;
         h = zend_llist_get_next_ex(&headers->headers, &pos)) {
        smart_str_appendl(&lines, h->header, h->header_len);
        smart_str_appendc(&lines, '\n');
    }
    smart_str_0(&lines);
    size_t len = lines.s ? ZSTR_LEN(lines.s) : 0;
    char *copy = malloc(len + 1); /* outlives the request, like the output buffer */
    if (copy) {
        memcpy(copy, lines.s ? ZSTR_VAL(lines.s) : "", len + 1);
    }
    smart_str_free(&lines);
    free(r->headers);
    r->headers = copy;
    r->headers_len = copy ? len : 0;
    r->response_code = headers->http_response_code ? headers->http_response_code : 200;
    r->headers_sent = 1;
    if (host_of(r)->headers) {
        host_of(r)->headers(r->handle, r->response_code, r->headers ? r->headers : "", r->headers_len);
    }
    return SAPI_HEADER_SENT_SUCCESSFULLY;
}

static size_t fp_read_post(char *buf, size_t len)
{
    fp_request *r = current;
    return r && r->http ? host_of(r)->read_body(r->handle, buf, len) : 0;
}

static char *fp_read_cookies(void)
{
    fp_request *r = current;
    return r ? (char *)r->cookie_data : NULL;
}

/* Register one $_SERVER / $_ENV entry through the input filter, as CGI and FPM do: ext/filter
 * keeps the raw value for filter_input() and registers the value filter.default makes of it (it
 * then returns 0: nothing is left for us to register).  filter_arg -1: no filter. */
static void register_filtered(const char *name, const char *value, size_t value_len, zval *track_vars,
                              int filter_arg)
{
    char *filtered = (char *)value; /* only PARSE_STRING lets the filter replace it */
    size_t filtered_len = value_len;
    if (filter_arg < 0 || sapi_module.input_filter(filter_arg, name, &filtered, value_len, &filtered_len)) {
        php_register_variable_safe((char *)name, filtered, filtered_len, track_vars);
    }
}

/* The execution's NAME/VALUE pairs (fp_request.env) into `track_vars`. */
static void register_env_pairs(const fp_request *r, zval *track_vars, int filter_arg)
{
    const char *entry = r->env;
    for (size_t i = 0; i < r->env_pairs; i++) {
        const char *name = entry;
        const char *value = name + strlen(name) + 1;
        size_t value_len = strlen(value);
        register_filtered(name, value, value_len, track_vars, filter_arg);
        entry = value + value_len + 1;
    }
}

static void fp_register_variables(zval *track_vars)
{
    fp_request *r = current;
    if (!r) {
        return;
    }
    register_env_pairs(r, track_vars, PARSE_SERVER);
    if (script_req && script_req->worker_kind == FP_WORKER_BACKGROUND) {
        add_assoc_bool(track_vars, "FRANKENPHP_WORKER_BACKGROUND", 1);
    }
    if (r->http) {
        fp_register_auth_variables(track_vars);
    }
}

/* $_ENV: the process environment (PHP's own importer), then the execution's pairs over it, so
 * that $_ENV agrees with getenv().  PHP builds $_ENV only when a script uses it (jit). */
static void (*php_import_env)(zval *array_ptr);

static void fp_import_environment_variables(zval *array_ptr)
{
    php_import_env(array_ptr);
    if (!current) {
        return;
    }
    zval *env = &PG(http_globals)[TRACK_VARS_ENV];
    if (Z_TYPE_P(env) == IS_ARRAY && Z_ARR_P(array_ptr) == Z_ARR_P(env)) {
        register_env_pairs(current, array_ptr, PARSE_ENV);
    } else { /* getenv() without arguments: the filter would register into $_ENV instead */
        register_env_pairs(current, array_ptr, -1);
    }
}

/* Like the CLI's: header() works and headers_sent() turns true at the first output, but outside
 * HTTP no header is kept (headers_list() stays empty, as under php-cli). */
static int fp_header_handler(sapi_header_struct *header, sapi_header_op_enum op, sapi_headers_struct *headers)
{
    (void)header; (void)op; (void)headers;
    return current && current->http ? SAPI_HEADER_ADD : 0;
}

/* getenv() answers from the execution's environment first; PHP falls back to the process's. */
static char *fp_getenv(const char *name, size_t name_len)
{
    fp_request *r = current;
    if (!r) {
        return NULL;
    }
    const char *entry = r->env;
    for (size_t i = 0; i < r->env_pairs; i++) {
        size_t key_len = strlen(entry);
        const char *value = entry + key_len + 1;
        if (key_len == name_len && memcmp(entry, name, name_len) == 0) {
            return (char *)value;
        }
        entry = value + strlen(value) + 1;
    }
    return NULL;
}

/* error_log() without an error_log ini setting, and startup messages. */
static void fp_log_message(const char *message, int syslog_type)
{
    (void)syslog_type;
    host_of(current)->log(current ? current->handle : NULL, 0, NULL, 0, message);
}

/* Every diagnostic passes through here before PHP's own handler (which may bail out). */
static void fp_error_cb(int type, zend_string *file, const uint32_t line, zend_string *message)
{
    int kind = type & E_ALL;
    if (kind & (E_ERROR | E_CORE_ERROR | E_COMPILE_ERROR | E_USER_ERROR | E_RECOVERABLE_ERROR | E_PARSE)) {
        fatal_error = 1; /* not every fatal error bails out (uncaught exceptions, OOM unwind) */
    }
    if ((EG(error_reporting) & kind) || (kind & E_CORE)) {
        host_of(current)->log(current ? current->handle : NULL, kind, file ? ZSTR_VAL(file) : NULL, line,
                  ZSTR_VAL(message));
    }
    php_error_cb(type, file, line, message);
}

/* ---- a missing primary script ----------------------------------------------------------------
 * Callers want "no such script" as its own answer (Python raises FileNotFoundError), not as a
 * fatal error.  A stat() before every execution would cost a system call PHP does not make when
 * opcache has the script, so the check is made only after a failure: PHP's failure to open the
 * primary script is an E_COMPILE_ERROR that bails out of zend_compile_file (opcache's or the
 * engine's), and the flag below is still set when that happens. */
static zend_op_array *(*php_compile_file)(zend_file_handle *file_handle, int type);

static zend_op_array *fp_compile_file(zend_file_handle *file_handle, int type)
{
    if (!file_handle->primary_script) {
        return php_compile_file(file_handle, type);
    }
    compiling_primary = 1;
    zend_op_array *op_array = php_compile_file(file_handle, type);
    compiling_primary = 0;
    return op_array;
}

/* As PHP's opening of a script refuses it: missing, or not a regular file (a directory). */
static int script_missing(const char *path)
{
    struct stat st;
    return stat(path, &st) != 0 || !S_ISREG(st.st_mode);
}

/* ---- time limits ----------------------------------------------------------------------------
 * NTS PHP enforces max_execution_time with setitimer(ITIMER_PROF): one timer for the whole
 * process, shared by every copy.  We keep EG(timeout_seconds) at 0 (and libphp's setitimer() is a
 * no-op, see the hooks below) and hand the limit to the host, which stops the script with
 * fp_interrupt(). */
static ZEND_INI_MH(fp_on_update_timeout)
{
    (void)entry; (void)mh_arg1; (void)mh_arg2; (void)mh_arg3;
    time_limit = ZEND_STRTOL(ZSTR_VAL(new_value), NULL, 10);
    EG(timeout_seconds) = 0;
    if (stage == ZEND_INI_STAGE_RUNTIME && script_req) {
        host_of(script_req)->time_limit(script_req->handle, time_limit, 0);
    }
    return SUCCESS;
}

/* ---- chdir() --------------------------------------------------------------------------------
 * The working directory belongs to the whole process.  chdir() still works for the script, but
 * is reported, and the host puts its directory back once no execution that changed it is left
 * running (one saved directory for the whole process, kept by the host: a copy of its own would
 * race with the other copies' chdir()s). */
static ZEND_NAMED_FUNCTION(fp_chdir)
{
    if (!cwd_held) {
        host->chdir_begin();
        cwd_held = 1;
    }
    php_error_docref(NULL, E_WARNING,
                     "chdir() changes the working directory of the whole host process; "
                     "frankenpy restores it when this execution ends");
    php_chdir(execute_data, return_value);
}

/* ---- pcntl_fork() ---------------------------------------------------------------------------
 * fork() would copy the whole host process with only the calling thread in it: the child would
 * return into the host's (Python's) code with every other thread gone and their locks held for
 * ever.  Refused the way a failed fork is reported: a warning and -1, no child. */
static ZEND_NAMED_FUNCTION(fp_pcntl_fork)
{
    ZEND_PARSE_PARAMETERS_NONE();
    php_error_docref(NULL, E_WARNING,
                     "it would fork the whole host process; frankenpy refuses it");
    RETURN_LONG(-1);
}

static void release_cwd(void)
{
    if (cwd_held) {
        cwd_held = 0;
        host->chdir_end();
    }
}

/* ---- signal handlers ---------------------------------------------------------------------------
 * pcntl (built into Debian's libphp) would install a script's handler for the whole process,
 * taking SIGINT/SIGTERM from the host, and reset it to SIG_DFL at request end.  Refused with a
 * warning; libphp's sigaction() is a no-op anyway (see the hooks below). */
static ZEND_NAMED_FUNCTION(fp_pcntl_signal)
{
    (void)execute_data;
    php_error_docref(NULL, E_WARNING,
                     "signal handlers belong to the whole host process; frankenpy does not let a "
                     "script install one");
    RETURN_FALSE;
}

/* ---- what this copy of libphp may do to the process -------------------------------------------
 * Signal dispositions, interval timers and the process's stdout/stderr are shared by every copy
 * and by the host.  fp_startup() redirects this copy's imports of the libc functions that touch
 * them to the hooks below (csrc/interpose.h), so that each copy:
 *  - never installs a signal handler: zend_signal() would install its SIGPROF handler at every
 *    request start-up and after every timeout (zend_timeout -> zend_set_timeout_ex(0, 1)); a
 *    host profiler's SIGPROF would then reach zend_timeout_handler, which _exit()s the process
 *    when EG(timed_out) is set.  zend_sigaction() turns a failure into a fatal error, so the hook
 *    "succeeds" without changing anything; queries pass through;
 *  - never arms or disarms ITIMER_PROF (zend_unset_timeout() would disarm a host profiler's
 *    timer) nor alarm() (a script cannot handle SIGALRM here, whose default kills the host);
 *  - stops waiting once its execution is interrupted: PHP's stream layer restarts poll() with its
 *    full timeout after EINTR (php_sock_stream_wait_for_data), reads a pipe again after EINTR,
 *    and proc_close() loops on waitpid() EINTR, so the interrupt's EINTR alone does not end
 *    those waits;
 *  - writes nothing to the host's stdout/stderr: output written around PHP's output layer (after
 *    php_output_deactivate(), by start-up code, by zend_extension loading) goes to the execution
 *    or to host->log().
 * Each hook lives in this copy of the glue, so it sees this copy's execution. */
static int (*real_sigaction)(int, const struct sigaction *, struct sigaction *);
static int (*real_setitimer)(__itimer_which_t, const struct itimerval *, struct itimerval *);
static int (*real_poll)(struct pollfd *, nfds_t, int);
static int (*real_select)(int, fd_set *, fd_set *, fd_set *, struct timeval *);
static pid_t (*real_wait4)(pid_t, int *, int, struct rusage *);
static int (*real_flock)(int, int);
static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_read)(int, void *, size_t);
static size_t (*real_fwrite)(const void *, size_t, size_t, FILE *);
static int (*real_fputs)(const char *, FILE *);
static int (*real_fputc)(int, FILE *);
static int (*real_dup)(int);
static int (*real_close)(int);

static int stop_requested(void)
{
    return __atomic_load_n(&interrupted, __ATOMIC_ACQUIRE);
}

/* The signal whose handler hook_sigaction() just left alone (0: none).  A copy runs on one
 * thread at a time, so a plain static holds it between the two calls of zend_sigaction(). */
static int handler_left_alone;

static int hook_sigaction(int signo, const struct sigaction *act, struct sigaction *old)
{
    if (act) {
        handler_left_alone = signo;
    }
    return old ? real_sigaction(signo, NULL, old) : 0;
}

/* Whether `signo` is the one signal of `set`, in the part of it the kernel reads (_NSIG bits:
 * the bits past them may hold anything). */
static int only_member(const sigset_t *set, int signo)
{
    sigset_t only;
    sigemptyset(&only);
    sigaddset(&only, signo);
    return memcmp(set, &only, _NSIG / 8) == 0;
}

/* zend_sigaction() unblocks the signal whose handler it has just installed: at every request
 * start for SIGPROF (zend_set_timeout()), a system call.  The handler was not installed
 * (hook_sigaction), so that unblocking is skipped too; any other sigprocmask() (pcntl's) is
 * libc's. */
static int hook_sigprocmask(int how, const sigset_t *set, sigset_t *old)
{
    int signo = handler_left_alone;
    handler_left_alone = 0;
    if (how == SIG_UNBLOCK && signo && set && !old && only_member(set, signo)) {
        return 0;
    }
    return sigprocmask(how, set, old);
}

/* syslog: glibc keeps one connection for the whole process, under one lock.  PHP closes it at
 * the end of every request (ext/standard's RSHUTDOWN), which takes that lock: two PHP threads
 * contend on it at every request, and the host's own syslog connection is closed under it.
 * Only a copy that opened the log (openlog(), from PHP's openlog() or syslog()) closes it. */
static int log_opened;

static void hook_openlog(const char *ident, int option, int facility)
{
    log_opened = 1;
    openlog(ident, option, facility);
}

static void hook_closelog(void)
{
    if (log_opened) {
        log_opened = 0;
        closelog();
    }
}

/* opcache takes a POSIX record lock on its lock file as a request first uses the cache and
 * releases it as the request ends (two system calls per request), so that another process can
 * tell whether the shared memory is in use before it restarts it; and one around writes to it.
 * Each interpreter copy has opcache memory and a lock file of its own (unlinked, so no other
 * process has it), used by one thread at a time; and record locks belong to the process: they
 * never exclude nor reveal another thread of it.  So they are no-ops here: without the calls. */
static int hook_opcache_fcntl(int fd, int cmd, ...)
{
    va_list ap;
    va_start(ap, cmd);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    switch (cmd) {
    case F_SETLK:
    case F_SETLKW:
        return 0;
    case F_GETLK:
        ((struct flock *)arg)->l_type = F_UNLCK; /* what it reports of its own process's locks */
        return 0;
    default:
        return fcntl(fd, cmd, arg);
    }
}

static __sighandler_t hook_signal(int signo, __sighandler_t handler)
{
    (void)handler;
    struct sigaction old;
    return real_sigaction(signo, NULL, &old) == 0 ? old.sa_handler : SIG_ERR;
}

static int hook_setitimer(__itimer_which_t which, const struct itimerval *value, struct itimerval *old)
{
    if (which != ITIMER_PROF) {
        return real_setitimer(which, value, old);
    }
    return old ? getitimer(which, old) : 0;
}

static unsigned hook_alarm(unsigned seconds)
{
    (void)seconds;
    return 0;
}

static int hook_poll(struct pollfd *fds, nfds_t n, int timeout)
{
    int rc = timeout != 0 && stop_requested() ? -2 : real_poll(fds, n, timeout);
    if (rc == -2 || (rc < 0 && errno == EINTR && stop_requested())) {
        for (nfds_t i = 0; i < n; i++) {
            fds[i].revents = 0;
        }
        return 0; /* "timed out": the VM interrupt ends the script right after */
    }
    return rc;
}

static int hook_select(int nfds, fd_set *r, fd_set *w, fd_set *e, struct timeval *timeout)
{
    int blocking = !timeout || timeout->tv_sec || timeout->tv_usec;
    int rc = blocking && stop_requested() ? -2 : real_select(nfds, r, w, e, timeout);
    if (rc == -2 || (rc < 0 && errno == EINTR && stop_requested())) {
        if (r) FD_ZERO(r);
        if (w) FD_ZERO(w);
        if (e) FD_ZERO(e);
        return 0;
    }
    return rc;
}

/* A child whose wait was abandoned: reaped in the background so that it leaves no zombie. */
static void *reap_child(void *arg)
{
    pid_t pid = (pid_t)(intptr_t)arg;
    while (real_wait4(pid, NULL, 0, NULL) < 0 && errno == EINTR) {
    }
    return NULL;
}

/* The execution is stopped while waiting for `pid`: report "still running" (as WNOHANG does),
 * which ends proc_close()'s EINTR loop, unless the child has exited meanwhile. */
static pid_t abandon_wait(pid_t pid, int *status, int options, struct rusage *usage)
{
    pid_t rc = real_wait4(pid, status, options | WNOHANG, usage);
    if (rc == 0 && pid > 0) {
        pthread_t reaper;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_create(&reaper, &attr, reap_child, (void *)(intptr_t)pid);
        pthread_attr_destroy(&attr);
    }
    return rc;
}

static pid_t hook_wait4(pid_t pid, int *status, int options, struct rusage *usage)
{
    if (!(options & WNOHANG) && stop_requested()) {
        return abandon_wait(pid, status, options, usage);
    }
    pid_t rc = real_wait4(pid, status, options, usage);
    if (rc < 0 && errno == EINTR && stop_requested()) {
        return abandon_wait(pid, status, options, usage);
    }
    return rc;
}

static pid_t hook_waitpid(pid_t pid, int *status, int options)
{
    return hook_wait4(pid, status, options, NULL);
}

/* popen()/pclose(): glibc's pclose() retries its own waitpid() after EINTR, inside libc where no
 * hook reaches, and exec(), shell_exec(), system(), passthru() and popen() end with it.  This
 * popen() (glibc's way: posix_spawn of /bin/sh -c) keeps the child's pid, so that pclose() can
 * wait through hook_wait4().  Its pipe end is always close-on-exec, so no other child inherits
 * it (what POSIX asks of popen()).  More streams at once than the table holds use libc's. */
static FILE *(*real_popen)(const char *, const char *);
static int (*real_pclose)(FILE *);
typedef struct popen_child {
    FILE *stream;
    pid_t pid;
} popen_child;
static popen_child popen_children[8];

static FILE *hook_popen(const char *command, const char *mode)
{
    popen_child *slot = NULL;
    for (size_t i = 0; i < sizeof(popen_children) / sizeof(popen_children[0]) && !slot; i++) {
        slot = popen_children[i].stream ? NULL : &popen_children[i];
    }
    int reading = mode[0] == 'r';
    if (!slot || (mode[0] != 'r' && mode[0] != 'w')) {
        return real_popen(command, mode);
    }
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) {
        return NULL;
    }
    int child_end = reading ? fds[1] : fds[0], parent_end = reading ? fds[0] : fds[1];
    int target = reading ? STDOUT_FILENO : STDIN_FILENO;
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    if (child_end == target) {
        /* dup2() onto itself would keep close-on-exec: move it out of the way first. */
        posix_spawn_file_actions_adddup2(&actions, child_end, parent_end);
        child_end = parent_end;
    }
    posix_spawn_file_actions_adddup2(&actions, child_end, target);
    if (child_end == parent_end) {
        posix_spawn_file_actions_addclose(&actions, parent_end);
    }
    char *argv[] = {"sh", "-c", (char *)command, NULL};
    pid_t pid;
    int rc = posix_spawn(&pid, "/bin/sh", &actions, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&actions);
    close(reading ? fds[1] : fds[0]);
    FILE *stream = rc == 0 ? fdopen(parent_end, reading ? "r" : "w") : NULL;
    if (!stream) {
        close(parent_end);
        if (rc == 0) {
            while (real_wait4(pid, NULL, 0, NULL) < 0 && errno == EINTR) {
            }
        }
        errno = rc ? rc : errno;
        return NULL;
    }
    slot->stream = stream;
    slot->pid = pid;
    return stream;
}

static int hook_pclose(FILE *stream)
{
    popen_child *child = NULL;
    for (size_t i = 0; i < sizeof(popen_children) / sizeof(popen_children[0]) && !child; i++) {
        child = popen_children[i].stream == stream ? &popen_children[i] : NULL;
    }
    if (!child) {
        return real_pclose(stream);
    }
    pid_t pid = child->pid;
    child->stream = NULL;
    fclose(stream);
    int status = 0;
    pid_t rc;
    while ((rc = hook_wait4(pid, &status, 0, NULL)) < 0 && errno == EINTR) {
    }
    return rc == pid ? status : -1; /* 0: given up (the execution is being stopped) */
}

/* PHP's plain-file streams read a pipe again after EINTR (exec()'s output, proc_open() pipes):
 * once stopped, a read that could block returns EINTR at once.  Regular files never block, and
 * shutdown functions and destructors still include and read them. */
static ssize_t hook_read(int fd, void *buf, size_t len)
{
    struct stat st;
    if (stop_requested() && fstat(fd, &st) == 0 && (S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode) ||
                                                    S_ISCHR(st.st_mode))) {
        errno = EINTR;
        return -1;
    }
    return real_read(fd, buf, len);
}

static int hook_flock(int fd, int operation)
{
    if (!(operation & LOCK_NB) && stop_requested()) {
        errno = EINTR;
        return -1;
    }
    return real_flock(fd, operation);
}

/* Bytes libphp writes to fd 1 or 2 itself.  stdout goes to the execution's output (as
 * fp_ub_write() would, minus aborting on a gone client: this can run in request shutdown);
 * stderr, and stdout without an execution, to host->log() as type-0 lines. */
static void raw_output(int fd, const char *data, size_t len)
{
    fp_request *r = current;
    if (fd == 1 && r) {
        if (r->output_mode == FP_OUTPUT_STREAM) {
            host_of(r)->output(r->handle, data, len);
        } else {
            append_output(r, data, len);
        }
        return;
    }
    while (len && (data[len - 1] == '\n' || data[len - 1] == '\r')) {
        len--;
    }
    char *line = len ? malloc(len + 1) : NULL;
    if (line) {
        memcpy(line, data, len);
        line[len] = '\0';
        host_of(r)->log(r ? r->handle : NULL, 0, NULL, 0, line);
        free(line);
    }
}

static int std_fd(FILE *f)
{
    return f == stdout ? 1 : f == stderr ? 2 : 0;
}

/* php://stdout and php://stderr write to a dup() of fd 1 or 2: those copies are remembered (with
 * the file they refer to, in case one is closed behind our back and its number reused). */
typedef struct std_dup {
    int fd, std;
    dev_t dev;
    ino_t ino;
} std_dup;
static std_dup std_dups[8];
static int std_dup_count;

static int hook_dup(int fd)
{
    int copy = real_dup(fd);
    struct stat st;
    if (copy >= 0 && (fd == 1 || fd == 2) && std_dup_count < 8 && fstat(copy, &st) == 0) {
        std_dups[std_dup_count++] = (std_dup){copy, fd, st.st_dev, st.st_ino};
    }
    return copy;
}

static void forget_dup(int i)
{
    std_dups[i] = std_dups[--std_dup_count];
}

static int hook_close(int fd)
{
    for (int i = 0; i < std_dup_count; i++) {
        if (std_dups[i].fd == fd) {
            forget_dup(i);
            break;
        }
    }
    return real_close(fd);
}

/* 1 or 2 if `fd` is the process's stdout/stderr or a remembered copy of it, else 0. */
static int std_target(int fd)
{
    if (fd == 1 || fd == 2) {
        return fd;
    }
    for (int i = 0; i < std_dup_count; i++) {
        if (std_dups[i].fd == fd) {
            struct stat st;
            if (fstat(fd, &st) == 0 && st.st_dev == std_dups[i].dev && st.st_ino == std_dups[i].ino) {
                return std_dups[i].std;
            }
            forget_dup(i);
            break;
        }
    }
    return 0;
}

static ssize_t hook_write(int fd, const void *data, size_t len)
{
    int target = std_target(fd);
    if (!target) {
        return real_write(fd, data, len);
    }
    raw_output(target, data, len);
    return (ssize_t)len;
}

static size_t hook_fwrite(const void *data, size_t size, size_t n, FILE *f)
{
    int fd = std_fd(f);
    if (!fd) {
        return real_fwrite(data, size, n, f);
    }
    raw_output(fd, data, size * n);
    return n;
}

static int hook_fputs(const char *s, FILE *f)
{
    int fd = std_fd(f);
    if (!fd) {
        return real_fputs(s, f);
    }
    raw_output(fd, s, strlen(s));
    return 1;
}

static int hook_fputc(int c, FILE *f)
{
    int fd = std_fd(f);
    if (!fd) {
        return real_fputc(c, f);
    }
    char ch = (char)c;
    raw_output(fd, &ch, 1);
    return (unsigned char)c;
}

static int hook_puts(const char *s)
{
    raw_output(1, s, strlen(s));
    raw_output(1, "\n", 1);
    return 1;
}

static int hook_putchar(int c)
{
    return hook_fputc(c, stdout);
}

static int vprintf_to(int fd, const char *format, va_list ap)
{
    char *text = NULL;
    int len = vasprintf(&text, format, ap);
    if (len >= 0) {
        raw_output(fd, text, (size_t)len);
        free(text);
    }
    return len;
}

int __vfprintf_chk(FILE *, int, const char *, va_list); /* glibc; declared only under _FORTIFY_SOURCE */

static int hook_fprintf_chk(FILE *f, int flag, const char *format, ...)
{
    va_list ap;
    va_start(ap, format);
    int fd = std_fd(f);
    int rc = fd ? vprintf_to(fd, format, ap) : __vfprintf_chk(f, flag, format, ap);
    va_end(ap);
    return rc;
}

static int hook_vfprintf_chk(FILE *f, int flag, const char *format, va_list ap)
{
    int fd = std_fd(f);
    return fd ? vprintf_to(fd, format, ap) : __vfprintf_chk(f, flag, format, ap);
}

static int hook_printf_chk(int flag, const char *format, ...)
{
    (void)flag;
    va_list ap;
    va_start(ap, format);
    int rc = vprintf_to(1, format, ap);
    va_end(ap);
    return rc;
}

/* What the hooks replace, in libphp and in every shared extension this copy loads (Debian's
 * ftp.so and redis.so call poll() themselves, ftp's my_poll() restarting it after EINTR;
 * opcache.so and fileinfo.so write to stderr/stdout). */
static fp_interposition hooks[] = {
    {"sigaction", (void *)hook_sigaction, (void **)&real_sigaction},
    {"signal", (void *)hook_signal, NULL},
    {"sigprocmask", (void *)hook_sigprocmask, NULL},
    {"openlog", (void *)hook_openlog, NULL},
    {"closelog", (void *)hook_closelog, NULL},
    {"setitimer", (void *)hook_setitimer, (void **)&real_setitimer},
    {"alarm", (void *)hook_alarm, NULL},
    {"poll", (void *)hook_poll, (void **)&real_poll},
    {"select", (void *)hook_select, (void **)&real_select},
    {"waitpid", (void *)hook_waitpid, NULL},
    {"wait4", (void *)hook_wait4, (void **)&real_wait4},
    {"flock", (void *)hook_flock, (void **)&real_flock},
    {"popen", (void *)hook_popen, (void **)&real_popen},
    {"pclose", (void *)hook_pclose, (void **)&real_pclose},
    {"write", (void *)hook_write, (void **)&real_write},
    {"read", (void *)hook_read, (void **)&real_read},
    {"dup", (void *)hook_dup, (void **)&real_dup},
    {"close", (void *)hook_close, (void **)&real_close},
    {"fwrite", (void *)hook_fwrite, (void **)&real_fwrite},
    {"fputs", (void *)hook_fputs, (void **)&real_fputs},
    {"fputc", (void *)hook_fputc, (void **)&real_fputc},
    {"puts", (void *)hook_puts, NULL},
    {"putchar", (void *)hook_putchar, NULL},
    {"__fprintf_chk", (void *)hook_fprintf_chk, NULL},
    {"__printf_chk", (void *)hook_printf_chk, NULL},
    {"__vfprintf_chk", (void *)hook_vfprintf_chk, NULL},
};
#define FP_HOOKS (sizeof(hooks) / sizeof(hooks[0]))

/* Redirect this copy of libphp's imports to the hooks above. */
static int interpose_libphp(void)
{
    int patched = fp_interpose((const void *)php_request_startup, hooks, FP_HOOKS);
    /* What libphp does not import, the hooks still call: libc's own. */
#define FP_REAL(name) if (!real_##name) real_##name = name
    FP_REAL(sigaction);
    FP_REAL(setitimer);
    FP_REAL(poll);
    FP_REAL(select);
    FP_REAL(wait4);
    FP_REAL(flock);
    FP_REAL(popen);
    FP_REAL(pclose);
    FP_REAL(write);
    FP_REAL(read);
    FP_REAL(dup);
    FP_REAL(close);
    FP_REAL(fwrite);
    FP_REAL(fputs);
    FP_REAL(fputc);
#undef FP_REAL
    return patched;
}

/* The same for the shared extensions php_module_startup() loaded into this copy (each image
 * has copies of its own, bound to its libphp). */
static int interpose_extensions(void)
{
    zend_module_entry *module;
    ZEND_HASH_MAP_FOREACH_PTR(&module_registry, module) {
        if (module->handle && fp_interpose_handle(module->handle, hooks, FP_HOOKS) < 0) {
            return -1;
        }
    } ZEND_HASH_FOREACH_END();
    static fp_interposition opcache_hooks[] = {
        {"fcntl", (void *)hook_opcache_fcntl, NULL},
    };
    for (zend_llist_element *e = zend_extensions.head; e; e = e->next) {
        zend_extension *ext = (zend_extension *)e->data;
        /* (opcache clears its handle, so that it is never unloaded: found by a function of it) */
        const void *inside = (const void *)ext->startup;
        if (ext->handle ? fp_interpose_handle(ext->handle, hooks, FP_HOOKS) < 0
                        : inside && fp_interpose(inside, hooks, FP_HOOKS) < 0) {
            return -1;
        }
        if (inside && ext->name && strcmp(ext->name, "Zend OPcache") == 0 &&
            fp_interpose(inside, opcache_hooks, 1) < 0) {
            return -1;
        }
    }
    return 0;
}

/* ---- frankenphp_* functions ----------------------------------------------------------------- */

/* For worker_functions.c (sapi_internal.h). */
fp_request *fp_glue_script_request(void)
{
    return script_req;
}

const int *fp_glue_stop_flag(void)
{
    return &interrupted;
}

int fp_glue_worker_booting(void)
{
    return script_req && script_req->worker_kind == FP_WORKER_HTTP && !worker_looping;
}

PHP_FUNCTION(frankenphp_get_worker_handle)
{
    ZEND_PARSE_PARAMETERS_NONE();
    fp_request *r = script_req;
    if (!r || r->worker_kind != FP_WORKER_BACKGROUND || r->worker_fd < 0) {
        zend_throw_exception(spl_ce_RuntimeException,
                             "frankenphp_get_worker_handle() can only be called from a background worker", 0);
        RETURN_THROWS();
    }
    /* A repeated call returns the same stream while the script keeps it open. */
    if (worker_handle && worker_handle->type == php_file_le_stream()) {
        GC_ADDREF(worker_handle);
        RETURN_RES(worker_handle);
    }
    int fd = fcntl(r->worker_fd, F_DUPFD_CLOEXEC, 0);
    if (fd < 0) {
        zend_throw_exception_ex(spl_ce_RuntimeException, 0, "frankenphp_get_worker_handle(): dup failed: %s",
                                strerror(errno));
        RETURN_THROWS();
    }
    php_stream *stream = php_stream_fopen_from_fd(fd, "rb", NULL);
    if (!stream) {
        close(fd);
        zend_throw_exception(spl_ce_RuntimeException, "frankenphp_get_worker_handle(): cannot open stream", 0);
        RETURN_THROWS();
    }
    int first = worker_handle == NULL;
    worker_handle = stream->res;
    GC_ADDREF(worker_handle); /* our reference; the resource list frees it at request end anyway */
    php_stream_to_zval(stream, return_value);
    if (first) {
        host_of(r)->worker_ready(r->handle);
    }
}

/* ---- HTTP worker requests ---------------------------------------------------------------------
 * An HTTP worker's script runs as one PHP request; each HTTP request it handles gets fresh
 * output, SAPI and superglobal layers inside it (after FrankenPHP's worker request cycle).  The
 * layers are always active while PHP code runs: between requests they belong to the worker
 * script itself, whose output goes to the worker's own fp_request. */

/* Extensions whose per-request state must be cycled with each HTTP request (zlib: the encoding
 * ob_gzhandler negotiated from the previous request's Accept-Encoding). */
static const char *const reloaded_modules[] = {"filter", "session", "zlib", NULL};

static void call_module_hooks(int startup)
{
    for (const char *const *name = reloaded_modules; *name; name++) {
        zend_module_entry *module = zend_hash_str_find_ptr(&module_registry, *name, strlen(*name));
        if (!module) {
            continue;
        }
        if (startup && module->request_startup_func) {
            module->request_startup_func(module->type, module->module_number);
        } else if (!startup && module->request_shutdown_func) {
            module->request_shutdown_func(module->type, module->module_number);
        }
    }
}

/* Re-import $_GET, $_POST, $_COOKIE, $_FILES, $_SERVER (and $_REQUEST if used) for `current`. */
static void reset_superglobals(void)
{
    zend_try {
        zval *files = &PG(http_globals)[TRACK_VARS_FILES];
        zval_ptr_dtor_nogc(files);
        ZVAL_UNDEF(files);
        zend_hash_str_del(&EG(symbol_table), ZEND_STRL("_SESSION"));
    } zend_end_try();

    zend_auto_global *global;
    ZEND_HASH_MAP_FOREACH_PTR(CG(auto_globals), global) {
        if (global->name == ZSTR_KNOWN(ZEND_STR_AUTOGLOBAL_ENV)) {
            continue; /* the process environment does not change per request */
        }
        if (global->name == ZSTR_KNOWN(ZEND_STR_AUTOGLOBAL_SERVER)) {
            global->armed = global->auto_global_callback(global->name);
        } else if (global->jit) {
            if (global->name == ZSTR_KNOWN(ZEND_STR_AUTOGLOBAL_REQUEST) &&
                zend_hash_exists(&EG(symbol_table), global->name)) {
                global->armed = global->auto_global_callback(global->name);
            }
        } else if (global->auto_global_callback) {
            global->armed = global->auto_global_callback(global->name);
        } else {
            global->armed = 0;
        }
    } ZEND_HASH_FOREACH_END();
}

/* Make `req` the target of output, headers and variables, and start its layers (after
 * php_request_startup(), minus what must survive: the engine and the script's state). */
static void layers_startup(fp_request *req, int fresh_superglobals)
{
    current = req;
    prepare_request_info(req);
    zend_try {
        php_output_activate();
        PG(header_is_being_sent) = 0;
        PG(connection_status) = PHP_CONNECTION_NORMAL;
        sapi_activate();
        after_sapi_activate(req);
        if (req->http && PG(expose_php)) {
            sapi_add_header(SAPI_PHP_VERSION_HEADER, sizeof(SAPI_PHP_VERSION_HEADER) - 1, 1);
        }
        if (PG(output_handler) && PG(output_handler)[0]) {
            zval handler;
            ZVAL_STRING(&handler, PG(output_handler));
            php_output_start_user(&handler, 0, PHP_OUTPUT_HANDLER_STDFLAGS);
            zval_ptr_dtor(&handler);
        } else if (PG(output_buffering)) {
            php_output_start_user(NULL, PG(output_buffering) > 1 ? PG(output_buffering) : 0,
                                  PHP_OUTPUT_HANDLER_STDFLAGS);
        } else if (PG(implicit_flush)) {
            php_output_set_implicit_flush(1);
        }
        if (fresh_superglobals) {
            reset_superglobals();
        }
        call_module_hooks(1);
    } zend_end_try();
}

/* Flush and end the layers of `current` (after php_request_shutdown()). */
static void layers_shutdown(void)
{
    zend_try {
        php_output_end_all();
    } zend_end_try();
    call_module_hooks(0);
    zend_try {
        php_output_deactivate(); /* sends the status and headers if no output did */
    } zend_end_try();
    zend_try {
        sapi_deactivate();
    } zend_end_try();
    SG(rfc1867_uploaded_files) = NULL; /* freed (and its files removed) by sapi_deactivate() */
    zend_set_memory_limit(PG(memory_limit));
}

/* End the HTTP request in progress and hand the layers back to the worker script. */
static void finish_http_request(void)
{
    fp_request *done = current;
    done->memory_usage = zend_memory_usage(0); /* the worker script's, request included */
    layers_shutdown();
    layers_startup(script_req, 0);
    host_of(script_req)->request_done(script_req->handle, done);
    fp_request_clear(done); /* the host copied what it needed in request_done() */
}

PHP_FUNCTION(frankenphp_handle_request)
{
    zend_fcall_info fci;
    zend_fcall_info_cache fcc;
    ZEND_PARSE_PARAMETERS_START(1, 1)
        Z_PARAM_FUNC(fci, fcc)
    ZEND_PARSE_PARAMETERS_END();

    fp_request *worker = script_req;
    if (!worker || worker->worker_kind != FP_WORKER_HTTP) {
        zend_throw_exception(spl_ce_RuntimeException,
                             "frankenphp_handle_request() called while not in worker mode", 0);
        RETURN_THROWS();
    }
    if (current != worker) {
        zend_throw_exception(spl_ce_RuntimeException,
                             "frankenphp_handle_request() cannot be called while handling a request", 0);
        RETURN_THROWS();
    }
    worker_looping = 1;
    fp_request *req = NULL;
    fp_wf_reset_views(0); /* each request gets its own view of the workers' vars */
    if (!host_of(worker)->next_request(worker->handle, &req) || !req) {
        RETURN_FALSE; /* drained: the script leaves its loop */
    }
    layers_shutdown();
    layers_startup(req, 1);

    zval retval;
    ZVAL_UNDEF(&retval);
    fci.retval = &retval;
    fci.params = NULL;
    fci.param_count = 0;
    zend_call_function(&fci, &fcc);
    zval_ptr_dtor(&retval);
    if (EG(exception)) {
        if (zend_is_unwind_exit(EG(exception)) || zend_is_graceful_exit(EG(exception))) {
            zend_bailout(); /* exit(): the script ends; fp_execute() finishes the request */
        }
        /* The request fails (500), the worker lives on: keep its exit status clean. */
        int exit_status = EG(exit_status), was_fatal = fatal_error;
        zend_exception_error(EG(exception), E_ERROR);
        EG(exit_status) = exit_status;
        fatal_error = was_fatal;
    }
    finish_http_request();
    RETURN_TRUE;
}

static PHP_MINIT_FUNCTION(frankenphp)
{
    (void)type;
    register_frankenphp_symbols(module_number); /* FRANKENPHP_LOG_LEVEL_* */
    return fp_wf_minit(INIT_FUNC_ARGS_PASSTHRU); /* FrankenPHP\\WorkerHandle (worker_functions.c) */
}

static zend_module_entry frankenphp_module = {
    STANDARD_MODULE_HEADER,
    "frankenphp",
    ext_functions,
    PHP_MINIT(frankenphp), NULL, NULL, NULL, NULL,
    "frankenpy",
    STANDARD_MODULE_PROPERTIES,
};

/* ---- SAPI ------------------------------------------------------------------------------------ */

static int fp_sapi_startup(sapi_module_struct *module)
{
    return php_module_startup(module, &frankenphp_module);
}

static int fp_deactivate(void)
{
    return SUCCESS;
}

static sapi_module_struct fp_sapi = {
    /* Debian's opcache enables itself only for SAPI names it knows; FrankenPHP's is one. */
    "frankenphp",
    "frankenpy (FrankenPHP-compatible embedded SAPI)",
    fp_sapi_startup,
    php_module_shutdown_wrapper,
    NULL,           /* activate */
    fp_deactivate,
    fp_ub_write,
    fp_flush,
    NULL,           /* get_stat */
    fp_getenv,
    php_error,
    fp_header_handler,
    fp_send_headers,
    NULL,           /* send_header */
    fp_read_post,
    fp_read_cookies,
    fp_register_variables,
    fp_log_message,
    NULL,           /* get_request_time */
    NULL,           /* terminate_process */
    STANDARD_SAPI_MODULE_PROPERTIES
};

static void replace_function(const char *name, zif_handler handler, zif_handler *original)
{
    zend_function *fn = zend_hash_str_find_ptr(CG(function_table), name, strlen(name));
    if (fn && fn->type == ZEND_INTERNAL_FUNCTION) {
        if (original) {
            *original = fn->internal_function.handler;
        }
        fn->internal_function.handler = handler;
    }
}

/* ---- GC threshold --------------------------------------------------------------------------------
 * php_request_startup() empties the cycle collector's root buffer (gc_reset()) but keeps its
 * threshold, which grows by 10,000 roots after each collection that frees little
 * (gc_adjust_threshold() in Zend/zend_gc.c): one script's garbage would tune the collector of the
 * next.  The threshold lives in zend_gc.c's static gc_globals, which Debian's stripped libphp does
 * not export, so the word is found once per copy: among this copy's writable words that hold the
 * threshold, the one zend_gc_get_status() reads back after a change.  Found exactly once, or the
 * reset is left out (a missed reset only changes when collections run). */
static uint32_t *gc_threshold_word;
static uint32_t gc_threshold_default;

struct gc_search {
    const void *base; /* this copy's libphp */
    uint32_t *found;
    int matches;
};

static void gc_probe_range(struct gc_search *search, uintptr_t start, uintptr_t end)
{
    for (uint32_t *word = (uint32_t *)((start + 3) & ~(uintptr_t)3); (uintptr_t)(word + 1) <= end; word++) {
        if (*word != gc_threshold_default) {
            continue;
        }
        zend_gc_status status;
        *word = gc_threshold_default + 7; /* this thread alone runs this copy: nobody else reads it */
        zend_gc_get_status(&status);
        *word = gc_threshold_default;
        if (status.threshold == gc_threshold_default + 7) {
            search->found = word;
            search->matches++;
        }
    }
}

static int gc_search_object(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    struct gc_search *search = data;
    int mine = 0;
    uintptr_t relro_start = 0, relro_end = 0;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type == PT_LOAD && info->dlpi_addr + ph->p_vaddr == (uintptr_t)search->base) {
            mine = 1;
        } else if (ph->p_type == PT_GNU_RELRO) { /* read-only once relocated: never written */
            relro_start = info->dlpi_addr + ph->p_vaddr;
            relro_end = relro_start + ph->p_memsz;
        }
    }
    if (!mine) {
        return 0;
    }
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_LOAD || !(ph->p_flags & PF_W)) {
            continue;
        }
        uintptr_t start = info->dlpi_addr + ph->p_vaddr, end = start + ph->p_memsz;
        if (relro_end > start && relro_start < end) {
            gc_probe_range(search, start, relro_start > start ? relro_start : start);
            start = relro_end > start ? relro_end : start;
        }
        if (start < end) {
            gc_probe_range(search, start, end);
        }
    }
    return 1;
}

static void find_gc_threshold(void)
{
    zend_gc_status status;
    zend_gc_get_status(&status);
    Dl_info info;
    if (status.threshold == 0 || !dladdr((void *)zend_gc_get_status, &info)) {
        return; /* zend.enable_gc=0: the collector has no buffer, nor threshold, yet */
    }
    gc_threshold_default = status.threshold;
    struct gc_search search = {info.dli_fbase, NULL, 0};
    dl_iterate_phdr(gc_search_object, &search);
    gc_threshold_word = search.matches == 1 ? search.found : NULL;
}

/* Before each request start-up. */
static void reset_gc_threshold(void)
{
    if (gc_threshold_word && *gc_threshold_word != gc_threshold_default) {
        *gc_threshold_word = gc_threshold_default;
    }
}

/* ---- ini check -------------------------------------------------------------------------------
 * PHP's parser stops at the first bad line of the ini entries and only warns about it: parse each
 * line of the host's ini on its own, so that the one at fault can be named. */
static char ini_error[256];

static void capture_ini_error(int type, zend_string *file, const uint32_t line, zend_string *message)
{
    (void)type; (void)file; (void)line;
    snprintf(ini_error, sizeof(ini_error), "%s", ZSTR_VAL(message));
}

static void ignore_ini_entry(zval *arg1, zval *arg2, zval *arg3, int callback_type, void *arg)
{
    (void)arg1; (void)arg2; (void)arg3; (void)callback_type; (void)arg;
}

static int check_ini_lines(const char *ini, char *err, size_t err_len)
{
    void (*error_cb)(int, zend_string *, const uint32_t, zend_string *) = zend_error_cb;
    zend_error_cb = capture_ini_error;
    int failed = 0;
    for (const char *line = ini; *line && !failed;) {
        const char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) : strlen(line);
        char *copy = estrndup(line, len);
        ini_error[0] = '\0';
        if (zend_parse_ini_string(copy, 0, ZEND_INI_SCANNER_NORMAL, ignore_ini_entry, NULL) == FAILURE) {
            size_t msg_len = strcspn(ini_error, "\n");
            snprintf(err, err_len, "php.ini line '%s' cannot be parsed: %.*s", copy, (int)msg_len, ini_error);
            failed = 1;
        }
        efree(copy);
        line = end ? end + 1 : line + len;
    }
    zend_error_cb = error_cb;
    return failed ? -1 : 0;
}

int fp_startup(const fp_host *callbacks, const char *ini, char *err, size_t err_len)
{
    if (startup_done) {
        snprintf(err, err_len, "this interpreter is already started");
        return -1;
    }
    host = callbacks;
    if (interpose_libphp() < 0) {
        snprintf(err, err_len, "cannot redirect libphp's imports: %s", strerror(errno));
        return -1;
    }
    /* zend_signal would save and re-install the handlers of SIGINT, SIGTERM... at every request
     * start and end (as no-ops now): not even that. */
    zend_signal_startup();
    SIGG(reset) = 0;

    sapi_startup(&fp_sapi);
    size_t ini_len = strlen(ini);
    char *entries = malloc(sizeof(builtin_ini) + ini_len + 1);
    if (!entries) {
        snprintf(err, err_len, "out of memory");
        return -1;
    }
    memcpy(entries, builtin_ini, sizeof(builtin_ini) - 1);
    memcpy(entries + sizeof(builtin_ini) - 1, ini, ini_len + 1);
    fp_sapi.ini_entries = entries; /* kept for the life of the interpreter */
    fp_sapi.php_ini_ignore = 1;
    fp_sapi.php_ini_ignore_cwd = 1;
    fp_sapi.phpinfo_as_text = 1;

    php_error_cb = zend_error_cb;
    if (fp_sapi.startup(&fp_sapi) == FAILURE) {
        snprintf(err, err_len, "php_module_startup() failed (see the logged PHP errors)");
        sapi_shutdown();
        return -1;
    }
    if (check_ini_lines(ini, err, err_len) != 0) {
        php_module_shutdown();
        sapi_shutdown();
        free(fp_sapi.ini_entries);
        fp_sapi.ini_entries = NULL;
        return -1;
    }
    replace_php_wrapper();
    make_std_names();
    find_gc_threshold();
    register_argc_argv = PG(register_argc_argv); /* php_ini may turn it off */
    if (php_import_environment_variables != fp_import_environment_variables) {
        /* (a plain variable of libphp: a restarted interpreter still has ours in it) */
        php_import_env = php_import_environment_variables;
        php_import_environment_variables = fp_import_environment_variables;
    }
    /* php_module_startup() installs PHP's error callback: wrap it now. */
    php_error_cb = zend_error_cb;
    zend_error_cb = fp_error_cb;
    if (interpose_extensions() < 0) {
        snprintf(err, err_len, "cannot redirect an extension's imports: %s", strerror(errno));
        startup_done = 1;
        fp_shutdown();
        return -1;
    }
    SG(options) |= SAPI_OPTION_NO_CHDIR;

    zend_ini_entry *timeout = zend_hash_str_find_ptr(EG(ini_directives), ZEND_STRL("max_execution_time"));
    if (timeout) {
        timeout->on_modify = fp_on_update_timeout;
        fp_on_update_timeout(timeout, timeout->value, NULL, NULL, NULL, ZEND_INI_STAGE_STARTUP);
    }
    replace_function("chdir", fp_chdir, &php_chdir);
    replace_function("pcntl_signal", fp_pcntl_signal, NULL);
    replace_function("pcntl_fork", fp_pcntl_fork, NULL);
    if (zend_compile_file != fp_compile_file) { /* (opcache's, when loaded, is wrapped too) */
        php_compile_file = zend_compile_file;
        zend_compile_file = fp_compile_file;
    }
    startup_done = 1;
    return 0;
}

void fp_shutdown(void)
{
    if (!startup_done) {
        return;
    }
    php_module_shutdown();
    sapi_shutdown();
    free(fp_sapi.ini_entries);
    fp_sapi.ini_entries = NULL;
    for (int which = FP_STDIN; which <= FP_STDERR; which++) {
        zend_string_release_ex(std_names[which], 1);
    }
    startup_done = 0;
}

/* ---- executions ------------------------------------------------------------------------------ */

static void prepare_request_info(fp_request *req)
{
    SG(server_context) = req;
    SG(request_info).argc = req->argc;
    SG(request_info).argv = req->argv;
    SG(request_info).path_translated = (char *)req->script_path;
    SG(request_info).request_method = req->request_method;
    SG(request_info).request_uri = (char *)req->request_uri;
    SG(request_info).query_string = (char *)req->query_string;
    SG(request_info).content_type = req->content_type;
    SG(request_info).content_length = req->content_length;
    SG(request_info).no_headers = !req->http;
    SG(sapi_headers).http_response_code = req->http ? 200 : 0; /* http_response_code(): false, as the CLI */
    if (req->http && req->authorization) {
        php_handle_auth_data(req->authorization); /* freed by sapi_deactivate() */
    }
    PG(register_argc_argv) = register_argc_argv && req->argv != NULL;
}

static void run_script(fp_request *req)
{
    if (!req->http && req->worker_kind != FP_WORKER_HTTP) {
        cli_request_startup();
    }
    CG(skip_shebang) = 1; /* a "#!" first line is not output, in included files too (CLI, CGI) */
    if (req->script_path) {
        if (PG(auto_prepend_file) && PG(auto_prepend_file)[0] && script_missing(req->script_path)) {
            /* (not even the prepended file runs for a script that is not there) */
            req->end_reason = FP_END_NOT_FOUND;
            EG(exit_status) = 255;
            return;
        }
        zend_file_handle file;
        zend_stream_init_filename(&file, req->script_path);
        file.primary_script = 1;
        php_execute_script(&file);
        zend_destroy_file_handle(&file);
    } else {
        PG(during_request_startup) = 0; /* php_execute_script() does this for files */
        zend_eval_stringl_ex((char *)req->code, strlen(req->code), NULL, "frankenpy code", 1);
    }
}

int fp_execute(fp_request *req)
{
    req->exit_status = 0;
    req->exec_id = 0;
    req->output_len = 0; /* a reused request keeps its buffer */
    output_failed = 0;
    free(req->headers); /* a reused request's previous header block */
    req->headers = NULL;
    req->headers_len = 0;
    req->stderr_len = 0;
    stdin_pos = 0;
    req->headers_sent = 0;
    req->finished = 0;
    req->end_reason = FP_END_NORMAL;
    req->response_code = 200;
    script_req = current = req;
    prepare_request_info(req);
    worker_looping = 0;

    fatal_error = 0;
    reset_gc_threshold();
    int started = php_request_startup();
    if (started == FAILURE) {
        req->end_reason = FP_END_STARTUP;
        req->exit_status = 255;
        script_req = current = NULL;
        return req->exit_status;
    }
    after_sapi_activate(req);
    EG(exit_status) = 0; /* not reset by request start-up: the previous script's would stick */

    pthread_mutex_lock(&exec_mu);
    running_exec = req->exec_id = ++exec_counter;
    running_thread = pthread_self();
    pthread_mutex_unlock(&exec_mu);

    if (time_limit > 0) {
        host_of(req)->time_limit(req->handle, time_limit, 1);
    }
    zend_first_try {
        run_script(req);
    } zend_catch {
        req->end_reason = FP_END_BAILOUT;
    } zend_end_try();
    if (compiling_primary) {
        compiling_primary = 0;
        if (script_missing(req->script_path)) {
            req->end_reason = FP_END_NOT_FOUND;
        }
    }

    if (current != req) {
        /* exit() or a fatal error inside an HTTP worker's request: answer it first. */
        zend_try {
            finish_http_request();
        } zend_end_try();
    }
    fp_wf_reset_views(0); /* they live in the request's heap */
    /* Shutdown functions, destructors and output handlers may still set the status and headers:
     * PHP sends them after those, in php_output_deactivate(), also for an empty body.  `current`
     * (req) receives them there.  A fatal error among those steps sets the exit status too (as
     * php-cli, read it afterwards). */
    req->memory_usage = zend_memory_usage(0);
    php_request_shutdown(NULL);
    fp_wf_reset_views(1); /* any that shutdown functions read went with the heap */
    req->exit_status = EG(exit_status);

    pthread_mutex_lock(&exec_mu);
    running_exec = 0;
    if (interrupted) {
        req->end_reason = FP_END_INTERRUPT;
    } else if (fatal_error && req->end_reason != FP_END_NOT_FOUND) {
        req->end_reason = FP_END_BAILOUT;
    }
    __atomic_store_n(&interrupted, 0, __ATOMIC_RELEASE);
    EG(timeout_seconds) = 0;
    pthread_mutex_unlock(&exec_mu);

    release_cwd();
    worker_handle = NULL; /* freed with the request's resource list */
    SG(server_context) = NULL;
    script_req = current = NULL;
    return req->exit_status;
}

void fp_request_clear(fp_request *req)
{
    free(req->output);
    req->output = NULL;
    req->output_len = req->output_cap = 0;
    free(req->headers);
    req->headers = NULL;
    req->headers_len = 0;
    free(req->stderr_output);
    req->stderr_output = NULL;
    req->stderr_len = req->stderr_cap = 0;
    req->headers_sent = req->finished = 0;
    req->exit_status = req->end_reason = 0;
    req->exec_id = 0;
}

int fp_interrupt(uint64_t exec_id, int64_t seconds, int signo)
{
    int hit = 0;
    pthread_mutex_lock(&exec_mu);
    if (exec_id != 0 && running_exec == exec_id) {
        /* Only for the message "Maximum execution time of N seconds exceeded". */
        EG(timeout_seconds) = seconds;
        zend_atomic_bool_store(&EG(timed_out), true);
        zend_atomic_bool_store(&EG(vm_interrupt), true);
        __atomic_store_n(&interrupted, 1, __ATOMIC_RELEASE);
        if (signo > 0) {
            pthread_kill(running_thread, signo);
        }
        hit = 1;
    }
    pthread_mutex_unlock(&exec_mu);
    return hit;
}

uint64_t fp_current_execution(void)
{
    pthread_mutex_lock(&exec_mu);
    uint64_t id = running_exec;
    pthread_mutex_unlock(&exec_mu);
    return id;
}

int fp_abi_version(void)
{
    return FP_ABI_VERSION;
}

/* ---- for http_functions.c (glue_internal.h) -------------------------------------------------- */

const fp_host *fp_glue_host(void)
{
    return host_of(current); /* a request's own table (the native server's) when it has one */
}

const fp_host *fp_glue_process_host(void)
{
    return host;
}

fp_request *fp_glue_current(void)
{
    return current;
}
