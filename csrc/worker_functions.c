/*
 * PHP functions of background workers beyond PR 2398: ensure, shared vars, tasks.
 *
 * The state they act on is process-wide and lives in the host (csrc/worker_state.h); this file
 * only converts between zvals and the neutral encoding described there, and calls the fp_host
 * callbacks.  Zvals never leave this interpreter: a snapshot or a task payload is decoded into
 * a fresh array of the reader's heap.
 */
#define _GNU_SOURCE
#include "sapi_internal.h"

#include <string.h>
#include <time.h>

#include <poll.h>

#include <php.h>
#include <ext/spl/spl_exceptions.h>
#include <zend_exceptions.h>
#include <zend_smart_str.h>

#include "worker_handle_arginfo.h"

#define MAX_DEPTH 64   /* nesting of arrays accepted (and a bound on decoding recursion) */
#define ERR_LEN 1024
#define DEFAULT_TIMEOUT 30.0

/* ---- encoding ------------------------------------------------------------------------------ */

static void put_u32(smart_str *out, uint32_t v)
{
    smart_str_appendl(out, (const char *)&v, 4); /* little-endian hosts only (x86-64, arm64) */
}

static void put_i64(smart_str *out, int64_t v)
{
    smart_str_appendl(out, (const char *)&v, 8);
}

/* Append the PHP spelling of one key to `path` ($vars['db'][0]). */
static void path_push(smart_str *path, zend_string *key, zend_ulong index)
{
    if (key) {
        smart_str_appends(path, "['");
        smart_str_append(path, key);
        smart_str_appends(path, "']");
    } else {
        smart_str_appendc(path, '[');
        smart_str_append_long(path, (zend_long)index);
        smart_str_appendc(path, ']');
    }
}

/* Encode `value`; on a value that cannot cross, throw TypeError naming its key path and
 * return -1. */
static int encode(smart_str *out, zval *value, smart_str *path, int depth, const char *function)
{
    ZVAL_DEREF(value);
    switch (Z_TYPE_P(value)) {
    case IS_NULL:
        smart_str_appendc(out, 'N');
        return 0;
    case IS_FALSE:
        smart_str_appendc(out, 'F');
        return 0;
    case IS_TRUE:
        smart_str_appendc(out, 'T');
        return 0;
    case IS_LONG:
        smart_str_appendc(out, 'I');
        put_i64(out, Z_LVAL_P(value));
        return 0;
    case IS_DOUBLE: {
        double d = Z_DVAL_P(value);
        smart_str_appendc(out, 'D');
        smart_str_appendl(out, (const char *)&d, 8);
        return 0;
    }
    case IS_STRING:
        smart_str_appendc(out, 'S');
        put_u32(out, (uint32_t)Z_STRLEN_P(value));
        smart_str_appendl(out, Z_STRVAL_P(value), Z_STRLEN_P(value));
        return 0;
    case IS_ARRAY: {
        HashTable *ht = Z_ARRVAL_P(value);
        if (depth >= MAX_DEPTH) {
            smart_str_0(path);
            zend_type_error("%s(): %s is nested deeper than %d levels", function, ZSTR_VAL(path->s), MAX_DEPTH);
            return -1;
        }
        int list = zend_array_is_list(ht);
        smart_str_appendc(out, list ? 'L' : 'M');
        put_u32(out, zend_hash_num_elements(ht));
        zend_string *key;
        zend_ulong index;
        zval *item;
        ZEND_HASH_FOREACH_KEY_VAL(ht, index, key, item) {
            if (!list) {
                if (key) {
                    smart_str_appendc(out, 'S');
                    put_u32(out, (uint32_t)ZSTR_LEN(key));
                    smart_str_append(out, key);
                } else {
                    smart_str_appendc(out, 'I');
                    put_i64(out, (int64_t)index);
                }
            }
            size_t mark = ZSTR_LEN(path->s);
            path_push(path, key, index);
            if (encode(out, item, path, depth + 1, function) != 0) {
                return -1;
            }
            ZSTR_LEN(path->s) = mark;
        } ZEND_HASH_FOREACH_END();
        return 0;
    }
    default:
        smart_str_0(path);
        zend_type_error("%s(): %s is of type %s; only null, bool, int, float, string and arrays of them "
                        "are allowed", function, ZSTR_VAL(path->s), zend_zval_type_name(value));
        return -1;
    }
}

/* Encode array `value` (its PHP name `name`, e.g. "$vars"); NULL after a TypeError. */
static zend_string *encode_array(zval *value, const char *name, const char *function)
{
    smart_str out = {0}, path = {0};
    smart_str_appends(&path, name);
    int rc = encode(&out, value, &path, 0, function);
    smart_str_free(&path);
    if (rc != 0) {
        smart_str_free(&out);
        return NULL;
    }
    smart_str_0(&out);
    return out.s;
}

/* ---- decoding ------------------------------------------------------------------------------ */

typedef struct {
    const char *p, *end;
} reader;

static int take(reader *r, void *dst, size_t n)
{
    if ((size_t)(r->end - r->p) < n) {
        return -1;
    }
    memcpy(dst, r->p, n);
    r->p += n;
    return 0;
}

static int decode(reader *r, zval *out, int depth)
{
    char tag;
    uint32_t n;
    if (depth > MAX_DEPTH || take(r, &tag, 1) != 0) {
        return -1;
    }
    switch (tag) {
    case 'N':
        ZVAL_NULL(out);
        return 0;
    case 'F':
        ZVAL_FALSE(out);
        return 0;
    case 'T':
        ZVAL_TRUE(out);
        return 0;
    case 'I': {
        int64_t v;
        if (take(r, &v, 8) != 0) {
            return -1;
        }
        ZVAL_LONG(out, (zend_long)v);
        return 0;
    }
    case 'D': {
        double v;
        if (take(r, &v, 8) != 0) {
            return -1;
        }
        ZVAL_DOUBLE(out, v);
        return 0;
    }
    case 'S':
        if (take(r, &n, 4) != 0 || (size_t)(r->end - r->p) < n) {
            return -1;
        }
        ZVAL_STRINGL_FAST(out, r->p, n);
        r->p += n;
        return 0;
    case 'L':
    case 'M': {
        if (take(r, &n, 4) != 0 || n > (size_t)(r->end - r->p)) {
            return -1;
        }
        array_init_size(out, n);
        HashTable *ht = Z_ARRVAL_P(out);
        if (tag == 'L') {
            zend_hash_real_init_packed(ht);
        }
        for (uint32_t i = 0; i < n; i++) {
            zval item;
            if (tag == 'L') {
                if (decode(r, &item, depth + 1) != 0) {
                    return -1;
                }
                zend_hash_next_index_insert_new(ht, &item);
                continue;
            }
            char key_tag;
            if (take(r, &key_tag, 1) != 0) {
                return -1;
            }
            if (key_tag == 'I') {
                int64_t key;
                if (take(r, &key, 8) != 0 || decode(r, &item, depth + 1) != 0) {
                    return -1;
                }
                zend_hash_index_update(ht, (zend_ulong)key, &item);
            } else if (key_tag == 'S') {
                uint32_t len;
                if (take(r, &len, 4) != 0 || (size_t)(r->end - r->p) < len) {
                    return -1;
                }
                const char *key = r->p;
                r->p += len;
                if (decode(r, &item, depth + 1) != 0) {
                    return -1;
                }
                zend_ulong numeric;
                if (ZEND_HANDLE_NUMERIC_STR(key, len, numeric)) {
                    /* "1" from a Python dict becomes the int key 1, as PHP would store it */
                    zend_hash_index_update(ht, numeric, &item);
                } else {
                    /* A map's other string keys are unique (they come from a PHP array or a
                     * Python dict): no lookup needed. */
                    zend_hash_str_add_new(ht, key, len, &item);
                }
            } else {
                return -1;
            }
        }
        return 0;
    }
    default:
        return -1;
    }
}

/* Decode `blob` into `out` (an array; a top-level null becomes []).  Throws on bad data. */
static int decode_blob(const fp_blob *blob, zval *out)
{
    reader r = {blob->data, blob->data + blob->len};
    ZVAL_UNDEF(out);
    if (decode(&r, out, 0) != 0 || r.p != r.end) {
        zval_ptr_dtor(out);
        ZVAL_UNDEF(out);
        zend_throw_exception(spl_ce_RuntimeException, "frankenpy: malformed value from another interpreter", 0);
        return -1;
    }
    if (Z_TYPE_P(out) != IS_ARRAY) {
        zval_ptr_dtor(out);
        array_init(out);
    }
    return 0;
}

/* ---- helpers ---------------------------------------------------------------------------------- */

static int in_background_worker(const char *function)
{
    fp_request *req = fp_glue_script_request();
    if (!req || req->worker_kind != FP_WORKER_BACKGROUND) {
        zend_throw_exception_ex(spl_ce_RuntimeException, 0, "%s() can only be called from a background worker",
                                function);
        return 0;
    }
    return 1;
}

enum { ANYWHERE, BACKGROUND_ONLY };

/* This script's context for the host callbacks `function` calls (`has_callback`: the host
 * provides them), checked in the order PHP code sees the errors: where it may be called
 * (`where`), then whether this host supports it.  NULL after throwing RuntimeException. */
static void *worker_ctx(const char *function, int where, int has_callback)
{
    if (where == BACKGROUND_ONLY && !in_background_worker(function)) {
        return NULL;
    }
    fp_request *req = fp_glue_script_request();
    if (!req || !req->worker_ctx || !has_callback) {
        zend_throw_exception_ex(spl_ce_RuntimeException, 0, "%s() is not available in this host", function);
        return NULL;
    }
    return req->worker_ctx;
}

/* The optional timeout argument number `arg` into *out: null -> `if_null`; <= 0 throws
 * ValueError (returns -1). */
static int timeout_arg(zend_bool is_null, double value, double if_null, uint32_t arg, double *out)
{
    if (is_null) {
        *out = if_null;
        return 0;
    }
    if (!(value > 0)) {
        zend_argument_value_error(arg, "must be greater than 0");
        return -1;
    }
    *out = value;
    return 0;
}

/* Decode a blob the host handed over into `out`, then give it back; -1 after throwing. */
static int take_blob(const fp_host *host, fp_blob *blob, zval *out)
{
    int rc = decode_blob(blob, out);
    host->release_blob(blob);
    return rc;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int flags(void)
{
    return fp_glue_worker_booting() ? 1 : 0;
}

/* ---- ensure ----------------------------------------------------------------------------------- */

PHP_FUNCTION(frankenphp_ensure_background_worker)
{
    zend_string *name = NULL;
    HashTable *names = NULL;
    double timeout = 0;
    zend_bool timeout_null = 1;
    ZEND_PARSE_PARAMETERS_START(1, 2)
        Z_PARAM_ARRAY_HT_OR_STR(names, name)
        Z_PARAM_OPTIONAL
        Z_PARAM_DOUBLE_OR_NULL(timeout, timeout_null)
    ZEND_PARSE_PARAMETERS_END();

    if (timeout_arg(timeout_null, timeout, DEFAULT_TIMEOUT, 2, &timeout) != 0) {
        RETURN_THROWS();
    }
    HashTable seen;
    zend_hash_init(&seen, 8, NULL, NULL, 0);
    zval single;
    if (name) {
        ZVAL_STR(&single, name);
    }
    int bad = 0;
    if (names && zend_hash_num_elements(names) == 0) {
        zend_argument_value_error(1, "must not be an empty array");
        bad = 1;
    }
    zval *item;
    uint32_t position = 0;
    /* validate everything first: nothing starts when one name is wrong */
    if (names && !bad) {
        ZEND_HASH_FOREACH_VAL(names, item) {
            ZVAL_DEREF(item);
            position++;
            if (Z_TYPE_P(item) != IS_STRING) {
                zend_argument_type_error(1, "must contain only strings, %s given at position %u",
                                         zend_zval_type_name(item), position);
                bad = 1;
                break;
            }
            if (Z_STRLEN_P(item) == 0 || memchr(Z_STRVAL_P(item), 0, Z_STRLEN_P(item))) {
                zend_argument_value_error(1, "must not contain an empty name");
                bad = 1;
                break;
            }
            if (!zend_hash_add_empty_element(&seen, Z_STR_P(item))) {
                zend_argument_value_error(1, "contains \"%s\" twice", Z_STRVAL_P(item));
                bad = 1;
                break;
            }
        } ZEND_HASH_FOREACH_END();
    } else if (name && (ZSTR_LEN(name) == 0 || memchr(ZSTR_VAL(name), 0, ZSTR_LEN(name)))) {
        zend_argument_value_error(1, "must not be empty");
        bad = 1;
    }
    zend_hash_destroy(&seen);
    if (bad) {
        RETURN_THROWS();
    }
    const fp_host *host = fp_glue_process_host();
    void *ctx = worker_ctx("frankenphp_ensure_background_worker", ANYWHERE, host->ensure_worker != NULL);
    if (!ctx) {
        RETURN_THROWS();
    }
    double deadline = now_s() + timeout; /* each name gets what is left */
    char err[ERR_LEN];
    HashTable one;
    if (name) {
        zend_hash_init(&one, 1, NULL, NULL, 0);
        zend_hash_next_index_insert(&one, &single);
        names = &one;
    }
    int failed = 0;
    ZEND_HASH_FOREACH_VAL(names, item) {
        ZVAL_DEREF(item);
        double left = deadline - now_s();
        if (host->ensure_worker(ctx, Z_STRVAL_P(item), Z_STRLEN_P(item), left > 0 ? left : 0.001, flags(),
                                fp_glue_stop_flag(), err, sizeof(err)) != 0) {
            if (strncmp(err, "timed out", 9) == 0) { /* name the caller's timeout, not what was left */
                snprintf(err, sizeof(err), "timed out after %g s waiting for background worker '%s' to be ready",
                         timeout, Z_STRVAL_P(item));
            }
            zend_throw_exception(spl_ce_RuntimeException, err, 0);
            failed = 1;
            break;
        }
    } ZEND_HASH_FOREACH_END();
    if (name) {
        zend_hash_destroy(&one);
    }
    if (failed) {
        RETURN_THROWS();
    }
}

/* ---- vars --------------------------------------------------------------------------------------- */

PHP_FUNCTION(frankenphp_set_vars)
{
    zval *vars;
    ZEND_PARSE_PARAMETERS_START(1, 1)
        Z_PARAM_ARRAY(vars)
    ZEND_PARSE_PARAMETERS_END();

    const fp_host *host = fp_glue_process_host();
    void *ctx = worker_ctx("frankenphp_set_vars", BACKGROUND_ONLY, host->set_vars != NULL);
    if (!ctx) {
        RETURN_THROWS();
    }
    zend_string *data = encode_array(vars, "$vars", "frankenphp_set_vars");
    if (!data) {
        RETURN_THROWS();
    }
    char err[ERR_LEN];
    int rc = host->set_vars(ctx, ZSTR_VAL(data), ZSTR_LEN(data), err, sizeof(err));
    zend_string_release(data);
    if (rc != 0) {
        zend_throw_exception(spl_ce_RuntimeException, err, 0);
        RETURN_THROWS();
    }
}

/* Snapshots this request has read, by worker name: one consistent view per request. */
static HashTable *views;

void fp_wf_reset_views(int heap_gone)
{
    if (views && !heap_gone) {
        zend_hash_destroy(views);
        FREE_HASHTABLE(views);
    }
    views = NULL;
}

PHP_FUNCTION(frankenphp_get_vars)
{
    zend_string *name;
    double timeout = 0;
    zend_bool timeout_null = 1;
    ZEND_PARSE_PARAMETERS_START(1, 2)
        Z_PARAM_STR(name)
        Z_PARAM_OPTIONAL
        Z_PARAM_DOUBLE_OR_NULL(timeout, timeout_null)
    ZEND_PARSE_PARAMETERS_END();

    if (timeout_arg(timeout_null, timeout, DEFAULT_TIMEOUT, 2, &timeout) != 0) {
        RETURN_THROWS();
    }
    if (views) {
        zval *seen = zend_hash_find(views, name);
        if (seen) {
            RETURN_COPY(seen);
        }
    }
    const fp_host *host = fp_glue_process_host();
    void *ctx = worker_ctx("frankenphp_get_vars", ANYWHERE, host->get_vars != NULL);
    if (!ctx) {
        RETURN_THROWS();
    }
    char err[ERR_LEN];
    fp_blob *blob = host->get_vars(ctx, ZSTR_VAL(name), ZSTR_LEN(name), timeout, flags(), fp_glue_stop_flag(), err,
                                   sizeof(err));
    if (!blob && err[0]) {
        zend_throw_exception(spl_ce_RuntimeException, err, 0);
        RETURN_THROWS();
    }
    if (!blob) {
        array_init(return_value); /* ready, never published */
    } else if (take_blob(host, blob, return_value) != 0) {
        RETURN_THROWS();
    }
    if (!views) {
        ALLOC_HASHTABLE(views);
        zend_hash_init(views, 4, NULL, ZVAL_PTR_DTOR, 0);
    }
    Z_TRY_ADDREF_P(return_value);
    zend_hash_update(views, name, return_value);
}

/* ---- tasks ------------------------------------------------------------------------------------ */

PHP_FUNCTION(frankenphp_send_task)
{
    zend_string *worker;
    zval *payload;
    double timeout = DEFAULT_TIMEOUT;
    zend_bool timeout_null = 0;
    ZEND_PARSE_PARAMETERS_START(2, 3)
        Z_PARAM_STR(worker)
        Z_PARAM_ARRAY(payload)
        Z_PARAM_OPTIONAL
        Z_PARAM_DOUBLE_OR_NULL(timeout, timeout_null)
    ZEND_PARSE_PARAMETERS_END();

    if (timeout_arg(timeout_null, timeout, -1.0 /* no limit */, 3, &timeout) != 0) {
        RETURN_THROWS();
    }
    const fp_host *host = fp_glue_process_host();
    void *ctx = worker_ctx("frankenphp_send_task", ANYWHERE, host->send_task != NULL);
    if (!ctx) {
        RETURN_THROWS();
    }
    zend_string *data = encode_array(payload, "$payload", "frankenphp_send_task");
    if (!data) {
        RETURN_THROWS();
    }
    char err[ERR_LEN];
    fp_blob *result = host->send_task(ctx, ZSTR_VAL(worker), ZSTR_LEN(worker), ZSTR_VAL(data), ZSTR_LEN(data),
                                      timeout, flags(), fp_glue_stop_flag(), err, sizeof(err));
    zend_string_release(data);
    if (!result) {
        zend_throw_exception(spl_ce_RuntimeException, err, 0);
        RETURN_THROWS();
    }
    if (take_blob(host, result, return_value) != 0) {
        RETURN_THROWS();
    }
}

PHP_FUNCTION(frankenphp_receive_task)
{
    ZEND_PARSE_PARAMETERS_NONE();
    const fp_host *host = fp_glue_process_host();
    void *ctx = worker_ctx("frankenphp_receive_task", BACKGROUND_ONLY, host->receive_task != NULL);
    if (!ctx) {
        RETURN_THROWS();
    }
    fp_wf_reset_views(0); /* a background worker's unit of work: a fresh view of others' vars */
    fp_blob *payload = NULL;
    int64_t id = host->receive_task(ctx, &payload);
    if (id <= 0) {
        RETURN_NULL();
    }
    zval decoded;
    if (take_blob(host, payload, &decoded) != 0) {
        RETURN_THROWS();
    }
    array_init_size(return_value, 2);
    add_assoc_long(return_value, "id", (zend_long)id);
    add_assoc_zval(return_value, "payload", &decoded);
}

/* complete/fail: answer task `id`; throws (and returns) on failure. */
static void finish(zend_long id, zval *result, zend_string *message, const char *function)
{
    const fp_host *host = fp_glue_process_host();
    void *ctx = worker_ctx(function, BACKGROUND_ONLY, host->finish_task != NULL);
    if (!ctx) {
        return;
    }
    zend_string *data = NULL;
    if (result && !(data = encode_array(result, "$result", function))) {
        return;
    }
    char err[ERR_LEN];
    int rc = host->finish_task(ctx, (int64_t)id, data ? ZSTR_VAL(data) : NULL, data ? ZSTR_LEN(data) : 0,
                               message ? ZSTR_VAL(message) : NULL, err, sizeof(err));
    if (data) {
        zend_string_release(data);
    }
    if (rc != 0) {
        zend_throw_exception_ex(spl_ce_RuntimeException, 0, "%s(): %s", function, err);
    }
}

PHP_FUNCTION(frankenphp_complete_task)
{
    zend_long id;
    zval *result = NULL;
    ZEND_PARSE_PARAMETERS_START(1, 2)
        Z_PARAM_LONG(id)
        Z_PARAM_OPTIONAL
        Z_PARAM_ARRAY_OR_NULL(result)
    ZEND_PARSE_PARAMETERS_END();
    (void)return_value; /* void function */
    finish(id, result, NULL, "frankenphp_complete_task");
}

PHP_FUNCTION(frankenphp_fail_task)
{
    zend_long id;
    zend_string *message;
    ZEND_PARSE_PARAMETERS_START(2, 2)
        Z_PARAM_LONG(id)
        Z_PARAM_STR(message)
    ZEND_PARSE_PARAMETERS_END();
    (void)return_value;
    finish(id, NULL, message, "frankenphp_fail_task");
}

/* ---- FrankenPHP\WorkerHandle: thin aliases (FrankenPHP PR #2617) ------------------------------ */

ZEND_FUNCTION(frankenphp_get_worker_handle); /* sapi.c */

zend_result fp_wf_minit(INIT_FUNC_ARGS)
{
    (void)type;
    (void)module_number;
    register_class_FrankenPHP_WorkerHandle();
    return SUCCESS;
}

ZEND_METHOD(FrankenPHP_WorkerHandle, __construct)
{
    ZEND_PARSE_PARAMETERS_NONE();
    if (!in_background_worker("FrankenPHP\\WorkerHandle::__construct")) {
        RETURN_THROWS();
    }
}

/* The methods below take the same parameters as the functions they alias, which parse them
 * from execute_data themselves. */
ZEND_METHOD(FrankenPHP_WorkerHandle, getStream)
{
    ZEND_FN(frankenphp_get_worker_handle)(INTERNAL_FUNCTION_PARAM_PASSTHRU);
}

ZEND_METHOD(FrankenPHP_WorkerHandle, setVars)
{
    ZEND_FN(frankenphp_set_vars)(INTERNAL_FUNCTION_PARAM_PASSTHRU);
}

ZEND_METHOD(FrankenPHP_WorkerHandle, receive)
{
    ZEND_FN(frankenphp_receive_task)(INTERNAL_FUNCTION_PARAM_PASSTHRU);
}

ZEND_METHOD(FrankenPHP_WorkerHandle, tick)
{
    double timeout = 0;
    zend_bool timeout_null = 1;
    ZEND_PARSE_PARAMETERS_START(0, 1)
        Z_PARAM_OPTIONAL
        Z_PARAM_DOUBLE_OR_NULL(timeout, timeout_null)
    ZEND_PARSE_PARAMETERS_END();

    zval handle, function;
    ZVAL_UNDEF(&handle);
    ZVAL_STRING(&function, "frankenphp_get_worker_handle"); /* the same stream every call */
    call_user_function(NULL, NULL, &function, &handle, 0, NULL);
    zval_ptr_dtor(&function);
    if (EG(exception)) {
        zval_ptr_dtor(&handle);
        RETURN_THROWS();
    }
    php_stream *stream;
    php_stream_from_zval_no_verify(stream, &handle);
    int fd = -1;
    int buffered = stream && stream->writepos > stream->readpos;
    if (!stream || (!buffered && php_stream_cast(stream, PHP_STREAM_AS_FD_FOR_SELECT | PHP_STREAM_CAST_INTERNAL,
                                                 (void **)&fd, 0) != SUCCESS)) {
        zval_ptr_dtor(&handle);
        zend_throw_exception(spl_ce_RuntimeException, "FrankenPHP\\WorkerHandle::tick(): no stream", 0);
        RETURN_THROWS();
    }
    int ready = buffered;
    /* In slices, so that an interrupt (a time limit, a force-stop) that lands just before poll()
     * still ends the wait; the VM then handles it at the next opcode. */
    double deadline = now_s() + (timeout_null ? 1e9 : (timeout > 0 ? timeout : 0));
    const int *stop = fp_glue_stop_flag();
    while (!ready && !__atomic_load_n(stop, __ATOMIC_ACQUIRE)) {
        double left = deadline - now_s();
        struct pollfd pfd = {fd, POLLIN, 0};
        int rc = poll(&pfd, 1, left <= 0 ? 0 : (left > 0.05 ? 50 : (int)(left * 1000) + 1));
        ready = rc > 0;
        if (rc < 0 || left <= 0) {
            break;
        }
    }
    char byte;
    /* readable: a task's wake-up byte, or EOF once drained */
    int drained = ready && php_stream_read(stream, &byte, 1) == 0;
    zval_ptr_dtor(&handle);
    RETURN_BOOL(!drained);
}
