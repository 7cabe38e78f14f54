/*
 * FrankenPHP's request functions: headers_send(), frankenphp_finish_request(), the request and
 * response header functions, frankenphp_log(), and the Basic-auth $_SERVER entries.  Signatures
 * in frankenphp.stub.php; what reaches the host goes through the optional ABI 9 callbacks of
 * fp_host, so that every host (the WSGI app, the native server) implements them its own way.
 */
#define _GNU_SOURCE /* memrchr() in PHP headers */
#include "glue_internal.h"

#include <ctype.h>
#include <limits.h>
#include <string.h>

#include <SAPI.h>
#include <php_output.h>
#include <php_variables.h>
#include <ext/json/php_json.h>
#include <zend_smart_str.h>

/* The headers set so far as "Name: value\n" lines (the form of fp_request.headers). */
static void header_lines(smart_str *lines)
{
    zend_llist_position pos;
    for (sapi_header_struct *h = zend_llist_get_first_ex(&SG(sapi_headers).headers, &pos); h;
         h = zend_llist_get_next_ex(&SG(sapi_headers).headers, &pos)) {
        smart_str_appendl(lines, h->header, h->header_len);
        smart_str_appendc(lines, '\n');
    }
    smart_str_0(lines);
}

PHP_FUNCTION(headers_send)
{
    zend_long status = 200;
    ZEND_PARSE_PARAMETERS_START(0, 1)
        Z_PARAM_OPTIONAL
        Z_PARAM_LONG(status)
    ZEND_PARSE_PARAMETERS_END();

    if (status >= 100 && status < 200) {
        /* An interim response goes out beside PHP's header machinery: the final status and
         * headers stay unsent and unchanged (FrankenPHP restores the previous status). */
        fp_request *r = fp_glue_current();
        const fp_host *host = fp_glue_host();
        if (!r || !r->http || r->finished || SG(headers_sent) || !host->interim) {
            RETURN_LONG(SAPI_HEADER_SEND_FAILED);
        }
        smart_str lines = {0};
        header_lines(&lines);
        int rc = host->interim(r->handle, (int)status, lines.s ? ZSTR_VAL(lines.s) : "",
                               lines.s ? ZSTR_LEN(lines.s) : 0);
        smart_str_free(&lines);
        RETURN_LONG(rc == 0 ? SAPI_HEADER_SENT_SUCCESSFULLY : SAPI_HEADER_SEND_FAILED);
    }
    if (!SG(headers_sent)) {
        SG(sapi_headers).http_response_code = (int)status;
    }
    RETURN_LONG(sapi_send_headers());
}

PHP_FUNCTION(frankenphp_finish_request)
{
    ZEND_PARSE_PARAMETERS_NONE();
    fp_request *r = fp_glue_current();
    const fp_host *host = fp_glue_host();
    if (!r || r->finished) {
        RETURN_FALSE;
    }
    php_output_end_all(); /* the script's output buffers reach ub_write (and r->output) now */
    if (r->http && !SG(headers_sent)) {
        sapi_send_headers();
    }
    r->finished = 1; /* from here on fp_ub_write() drops output */
    if (host->finish_request) {
        host->finish_request(r->handle, r);
        if (r->output_mode == FP_OUTPUT_FLUSH) {
            r->output_len = 0; /* the host took it */
        }
    }
    RETURN_TRUE;
}

/* "HTTP_ACCEPT_LANGUAGE" -> "Accept-Language", as CGI SAPIs rebuild header names. */
static zend_string *header_name(const char *var, size_t len)
{
    zend_string *name = zend_string_alloc(len, 0);
    char *out = ZSTR_VAL(name);
    int word_start = 1;
    for (size_t i = 0; i < len; i++) {
        char c = var[i];
        if (c == '_') {
            out[i] = '-';
            word_start = 1;
            continue;
        }
        out[i] = word_start ? (char)toupper((unsigned char)c) : (char)tolower((unsigned char)c);
        word_start = 0;
    }
    out[len] = '\0';
    return name;
}

PHP_FUNCTION(frankenphp_request_headers)
{
    ZEND_PARSE_PARAMETERS_NONE();
    array_init(return_value);
    fp_request *r = fp_glue_current();
    if (!r || !r->http) {
        return;
    }
    /* Every host passes the request's headers as CGI variables (HTTP_*, CONTENT_TYPE,
     * CONTENT_LENGTH): read them back from there. */
    const char *entry = r->env;
    for (size_t i = 0; i < r->env_pairs; i++) {
        size_t key_len = strlen(entry);
        const char *value = entry + key_len + 1;
        size_t value_len = strlen(value);
        zend_string *name = NULL;
        if (key_len > 5 && memcmp(entry, "HTTP_", 5) == 0) {
            name = header_name(entry + 5, key_len - 5);
        } else if (value_len && ((key_len == 12 && memcmp(entry, "CONTENT_TYPE", 12) == 0) ||
                                 (key_len == 14 && memcmp(entry, "CONTENT_LENGTH", 14) == 0))) {
            name = header_name(entry, key_len); /* CGI sets them empty when there is no such header */
        }
        if (name) {
            zval zv;
            ZVAL_STRINGL(&zv, value, value_len);
            zend_symtable_update(Z_ARRVAL_P(return_value), name, &zv);
            zend_string_release(name);
        }
        entry = value + value_len + 1;
    }
}

PHP_FUNCTION(frankenphp_response_headers)
{
    ZEND_PARSE_PARAMETERS_NONE();
    fp_request *r = fp_glue_current();
    if (!r || !r->http) {
        RETURN_FALSE;
    }
    array_init(return_value);
    zend_llist_position pos;
    for (sapi_header_struct *h = zend_llist_get_first_ex(&SG(sapi_headers).headers, &pos); h;
         h = zend_llist_get_next_ex(&SG(sapi_headers).headers, &pos)) {
        const char *colon = memchr(h->header, ':', h->header_len);
        if (!colon || colon == h->header) {
            continue;
        }
        size_t name_len = (size_t)(colon - h->header);
        while (name_len && (h->header[name_len - 1] == ' ' || h->header[name_len - 1] == '\t')) {
            name_len--;
        }
        const char *value = colon + 1;
        const char *end = h->header + h->header_len;
        while (value < end && (*value == ' ' || *value == '\t')) {
            value++;
        }
        if (name_len) {
            /* A repeated header keeps its last value, as apache_response_headers() does. */
            add_assoc_stringl_ex(return_value, h->header, name_len, (char *)value, (size_t)(end - value));
        }
    }
}

PHP_FUNCTION(frankenphp_log)
{
    zend_string *message;
    zend_long level = 0;
    HashTable *context = NULL;
    ZEND_PARSE_PARAMETERS_START(1, 3)
        Z_PARAM_STR(message)
        Z_PARAM_OPTIONAL
        Z_PARAM_LONG(level)
        Z_PARAM_ARRAY_HT(context)
    ZEND_PARSE_PARAMETERS_END();
    (void)return_value; /* void function */

    fp_request *r = fp_glue_current();
    const fp_host *host = fp_glue_host();
    if (!host->php_log) {
        host->log(r ? r->handle : NULL, 0, NULL, 0, ZSTR_VAL(message));
        return;
    }
    smart_str json = {0};
    if (context && zend_hash_num_elements(context)) {
        zval array;
        ZVAL_ARR(&array, context);
        /* Objects, resources and bad UTF-8 must not lose the message: encode what can be. */
        php_json_encode(&json, &array,
                        PHP_JSON_PARTIAL_OUTPUT_ON_ERROR | PHP_JSON_UNESCAPED_SLASHES |
                            PHP_JSON_UNESCAPED_UNICODE | PHP_JSON_INVALID_UTF8_SUBSTITUTE);
        smart_str_0(&json);
    }
    if (level < INT_MIN) {
        level = INT_MIN;
    } else if (level > INT_MAX) {
        level = INT_MAX;
    }
    host->php_log(r ? r->handle : NULL, (int)level, ZSTR_VAL(message), ZSTR_LEN(message),
                  json.s ? ZSTR_VAL(json.s) : NULL, json.s ? ZSTR_LEN(json.s) : 0);
    smart_str_free(&json);
}

void fp_register_auth_variables(zval *track_vars)
{
    /* php_handle_auth_data() parsed the Authorization header; PHP itself registers
     * PHP_AUTH_USER / PHP_AUTH_PW / PHP_AUTH_DIGEST.  A web server adds these two. */
    if (SG(request_info).auth_user) {
        php_register_variable_safe("REMOTE_USER", SG(request_info).auth_user,
                                   strlen(SG(request_info).auth_user), track_vars);
        php_register_variable_safe("AUTH_TYPE", "Basic", 5, track_vars);
    } else if (SG(request_info).auth_digest) {
        php_register_variable_safe("AUTH_TYPE", "Digest", 6, track_vars);
    }
}
