/*
 * frankenpy SAPI: runs PHP executions inside one private copy of libphp.
 * The contract (and the threading model) is documented in frankenpy.h.
 */
#define _GNU_SOURCE /* memrchr() in PHP headers, RTLD flags */
#include "frankenpy.h"
#include "sapi_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include <php.h>
#include <SAPI.h>
#include <php_main.h>
#include <php_variables.h>
#include <php_ini.h>
#include <php_output.h>
#include <ext/spl/spl_exceptions.h>
#include <zend_exceptions.h>
#include <zend_ini.h>
#include <zend_signal.h>
#include <zend_smart_str.h>

#include "frankenphp_arginfo.h"

/* ---- per-copy state ------------------------------------------------------------------------
 * All of it belongs to the thread that owns this copy, except the fields under exec_mu, which
 * fp_interrupt() reads from other threads. */
static const fp_host *host;
static fp_request *script_req; /* the execution in progress (the worker script for workers) */
static fp_request *current;    /* where output/headers go: script_req, or an HTTP worker's request */
static zend_long time_limit;   /* max_execution_time as the script sees it */
static int cwd_saved_fd = -1;  /* host's working directory, saved when a script calls chdir() */
static zend_resource *worker_handle; /* stream returned by frankenphp_get_worker_handle() */
static void (*php_error_cb)(int, zend_string *, const uint32_t, zend_string *);
static zif_handler php_chdir;
static int startup_done;
static int worker_looping; /* an HTTP worker called frankenphp_handle_request() in this run */

static pthread_mutex_t exec_mu = PTHREAD_MUTEX_INITIALIZER;
static uint64_t exec_counter; /* under exec_mu */
static uint64_t running_exec; /* under exec_mu: id of the execution in progress, 0 when idle */
static pthread_t running_thread;
static int interrupted;
static int fatal_error; /* a fatal diagnostic was reported during the execution */

static void prepare_request_info(fp_request *req);

/* What sapi_activate() decided that we decide otherwise. */
static void after_sapi_activate(fp_request *req)
{
    if (!req->http) {
        SG(headers_sent) = 1; /* like the CLI: header() is a no-op without an HTTP response */
    }
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

static void append_output(fp_request *r, const char *data, size_t len)
{
    if (r->output_len + len > r->output_cap) {
        size_t cap = r->output_cap ? r->output_cap : 4096;
        while (cap < r->output_len + len) {
            cap *= 2;
        }
        /* Plain malloc, not emalloc: the buffer outlives the request. */
        char *grown = realloc(r->output, cap);
        if (!grown) {
            return; /* out of host memory: drop output rather than crash */
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
    if (!r) {
        return len;
    }
    if (r->output_mode == FP_OUTPUT_STREAM) {
        if (host->output(r->handle, str, len) != 0) {
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
    if (!r || r->output_mode != FP_OUTPUT_FLUSH) {
        return;
    }
    if (!SG(headers_sent)) {
        sapi_send_headers();
    }
    if (r->output_len) {
        int gone = host->output(r->handle, r->output, r->output_len) != 0;
        r->output_len = 0;
        if (gone) {
            php_handle_aborted_connection();
        }
    }
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
    if (host->headers) {
        host->headers(r->handle, r->response_code, r->headers ? r->headers : "", r->headers_len);
    }
    return SAPI_HEADER_SENT_SUCCESSFULLY;
}

static size_t fp_read_post(char *buf, size_t len)
{
    fp_request *r = current;
    return r && r->http ? host->read_body(r->handle, buf, len) : 0;
}

static char *fp_read_cookies(void)
{
    fp_request *r = current;
    return r ? (char *)r->cookie_data : NULL;
}

static void fp_register_variables(zval *track_vars)
{
    fp_request *r = current;
    if (!r) {
        return;
    }
    const char *entry = r->env;
    for (size_t i = 0; i < r->env_pairs; i++) {
        const char *name = entry;
        const char *value = name + strlen(name) + 1;
        size_t value_len = strlen(value);
        php_register_variable_safe((char *)name, (char *)value, value_len, track_vars);
        entry = value + value_len + 1;
    }
    if (script_req && script_req->worker_kind == FP_WORKER_BACKGROUND) {
        add_assoc_bool(track_vars, "FRANKENPHP_WORKER_BACKGROUND", 1);
    }
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
    host->log(current ? current->handle : NULL, 0, NULL, 0, message);
}

/* Every diagnostic passes through here before PHP's own handler (which may bail out). */
static void fp_error_cb(int type, zend_string *file, const uint32_t line, zend_string *message)
{
    int kind = type & E_ALL;
    if (kind & (E_ERROR | E_CORE_ERROR | E_COMPILE_ERROR | E_USER_ERROR | E_RECOVERABLE_ERROR | E_PARSE)) {
        fatal_error = 1; /* not every fatal error bails out (uncaught exceptions, OOM unwind) */
    }
    if ((EG(error_reporting) & kind) || (kind & E_CORE)) {
        host->log(current ? current->handle : NULL, kind, file ? ZSTR_VAL(file) : NULL, line,
                  ZSTR_VAL(message));
    }
    php_error_cb(type, file, line, message);
}

/* ---- time limits ----------------------------------------------------------------------------
 * NTS PHP enforces max_execution_time with setitimer(ITIMER_PROF): one timer for the whole
 * process, shared by every copy.  We keep EG(timeout_seconds) at 0 so PHP never arms it and hand
 * the limit to the host, which stops the script with fp_interrupt(). */
static ZEND_INI_MH(fp_on_update_timeout)
{
    (void)entry; (void)mh_arg1; (void)mh_arg2; (void)mh_arg3;
    time_limit = ZEND_STRTOL(ZSTR_VAL(new_value), NULL, 10);
    EG(timeout_seconds) = 0;
    if (stage == ZEND_INI_STAGE_RUNTIME && script_req) {
        host->time_limit(script_req->handle, time_limit);
    }
    return SUCCESS;
}

/* ---- chdir() --------------------------------------------------------------------------------
 * The working directory belongs to the whole process.  chdir() still works for the script, but
 * is reported, and the host's directory is put back when the execution ends. */
static ZEND_NAMED_FUNCTION(fp_chdir)
{
    if (cwd_saved_fd < 0) {
        cwd_saved_fd = open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    }
    php_error_docref(NULL, E_WARNING,
                     "chdir() changes the working directory of the whole host process; "
                     "frankenpy restores it when this execution ends");
    php_chdir(execute_data, return_value);
}

static void restore_cwd(void)
{
    if (cwd_saved_fd >= 0) {
        if (fchdir(cwd_saved_fd) != 0) {
            host->log(NULL, E_WARNING, NULL, 0, "could not restore the working directory");
        }
        close(cwd_saved_fd);
        cwd_saved_fd = -1;
    }
}

/* ---- frankenphp_* functions ----------------------------------------------------------------- */

/* For worker_functions.c (sapi_internal.h). */
const fp_host *fp_glue_host(void)
{
    return host;
}

fp_request *fp_glue_script_request(void)
{
    return script_req;
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
        host->worker_ready(r->handle);
    }
}

/* ---- HTTP worker requests ---------------------------------------------------------------------
 * An HTTP worker's script runs as one PHP request; each HTTP request it handles gets fresh
 * output, SAPI and superglobal layers inside it (after FrankenPHP's worker request cycle).  The
 * layers are always active while PHP code runs: between requests they belong to the worker
 * script itself, whose output goes to the worker's own fp_request. */

/* Extensions whose per-request state must be cycled with each HTTP request. */
static const char *const reloaded_modules[] = {"filter", "session", NULL};

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
        if (current && current->http && !SG(headers_sent)) {
            sapi_send_headers(); /* an empty body still gets its status and headers */
        }
        php_output_deactivate();
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
    layers_shutdown();
    layers_startup(script_req, 0);
    host->request_done(script_req->handle, done);
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
    fp_wf_reset_views(); /* each request gets its own view of the workers' vars */
    if (!host->next_request(worker->handle, &req) || !req) {
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

static zend_module_entry frankenphp_module = {
    STANDARD_MODULE_HEADER,
    "frankenphp",
    ext_functions,
    NULL, NULL, NULL, NULL, NULL,
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
    NULL,           /* header_handler */
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
        *original = fn->internal_function.handler;
        fn->internal_function.handler = handler;
    }
}

int fp_startup(const fp_host *callbacks, const char *ini, char *err, size_t err_len)
{
    if (startup_done) {
        snprintf(err, err_len, "this interpreter is already started");
        return -1;
    }
    host = callbacks;
    /* zend_signal would install PHP's handlers for SIGINT, SIGTERM... process-wide at every
     * request start: keep the host's handlers by never letting this copy reset them. */
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
    /* php_module_startup() installs PHP's error callback: wrap it now. */
    php_error_cb = zend_error_cb;
    zend_error_cb = fp_error_cb;
    SG(options) |= SAPI_OPTION_NO_CHDIR;

    zend_ini_entry *timeout = zend_hash_str_find_ptr(EG(ini_directives), ZEND_STRL("max_execution_time"));
    if (timeout) {
        timeout->on_modify = fp_on_update_timeout;
        fp_on_update_timeout(timeout, timeout->value, NULL, NULL, NULL, ZEND_INI_STAGE_STARTUP);
    }
    replace_function("chdir", fp_chdir, &php_chdir);
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
    SG(sapi_headers).http_response_code = 200;
    if (req->http && req->authorization) {
        php_handle_auth_data(req->authorization); /* freed by sapi_deactivate() */
    }
    PG(register_argc_argv) = req->argv != NULL;
}

static void run_script(fp_request *req)
{
    if (req->script_path) {
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
    req->headers_sent = 0;
    req->end_reason = FP_END_NORMAL;
    req->response_code = 200;
    script_req = current = req;
    prepare_request_info(req);
    worker_looping = 0;

    fatal_error = 0;
    host->restore_signals(); /* first learn the host's current SIGPROF disposition */
    int started = php_request_startup();
    host->restore_signals();
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
    interrupted = 0;
    pthread_mutex_unlock(&exec_mu);

    if (time_limit > 0) {
        host->time_limit(req->handle, time_limit);
    }
    zend_first_try {
        run_script(req);
    } zend_catch {
        req->end_reason = FP_END_BAILOUT;
    } zend_end_try();

    if (current != req) {
        /* exit() or a fatal error inside an HTTP worker's request: answer it first. */
        zend_try {
            finish_http_request();
        } zend_end_try();
    }
    req->exit_status = EG(exit_status);
    if (req->http && !SG(headers_sent)) {
        sapi_send_headers(); /* an empty body still gets its status and headers */
    }
    fp_wf_reset_views(); /* they live in the request's heap */
    php_request_shutdown(NULL);

    pthread_mutex_lock(&exec_mu);
    running_exec = 0;
    if (interrupted) {
        req->end_reason = FP_END_INTERRUPT;
    } else if (fatal_error) {
        req->end_reason = FP_END_BAILOUT;
    }
    EG(timeout_seconds) = 0;
    pthread_mutex_unlock(&exec_mu);

    restore_cwd();
    host->restore_signals(); /* zend_timeout() re-registers PHP's SIGPROF handler */
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
    req->headers_sent = 0;
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
        interrupted = 1;
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
