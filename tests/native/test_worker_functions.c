/*
 * The PHP functions of csrc/worker_functions.c on real PHP, with the process-wide state of
 * csrc/worker_state.c behind the fp_host callbacks, as frankenpy._native wires them: values
 * cross as blobs both ways (zval -> encoding -> zval), the errors name their key path, tasks are
 * received and answered.  One interpreter per process (this links libphp directly), so the
 * "other side" of each exchange is C.  Run under ASan/UBSan too (scripts/test.sh).
 *
 *   build/cmake/tests/native/test_worker_functions
 */
#define _GNU_SOURCE
#include "frankenpy.h"
#include "worker_state.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"

/* The Python side: every name used here is declared, nothing starts on demand. */
int fp_py_ws_start(int64_t token, int scope, const char *name, char *err, size_t err_len)
{
    (void)token;
    (void)scope;
    snprintf(err, err_len, "unknown background worker '%s'", name);
    return -1;
}

void fp_py_task_done(int64_t token, int64_t id)
{
    (void)token;
    (void)id;
}

static int on_output(void *handle, const char *data, size_t len)
{
    (void)handle;
    (void)data;
    (void)len;
    return 0;
}

static void on_log(void *handle, int type, const char *file, uint32_t line, const char *message)
{
    (void)handle;
    if (getenv("FP_TEST_VERBOSE")) {
        fprintf(stderr, "PHP [%d] %s (%s:%u)\n", type, message, file ? file : "-", line);
    }
}

static void on_worker_ready(void *handle)
{
    (void)handle;
}

static const fp_host host = {
    .output = on_output,
    .log = on_log,
    .worker_ready = on_worker_ready,
    .ensure_worker = fp_ws_host_ensure,
    .set_vars = fp_ws_host_set_vars,
    .get_vars = fp_ws_host_get_vars,
    .send_task = fp_ws_host_send_task,
    .receive_task = fp_ws_host_receive_task,
    .finish_task = fp_ws_host_finish_task,
    .release_blob = fp_blob_release,
};

/* Domains live as long as the process (worker_state.h): reachable, not leaked. */
static fp_ws_domain *domain;

/* Run `code`; returns its output (static buffer). */
static const char *run(const char *code, fp_ws_ctx *ctx, int background, int *status)
{
    static char out[65536];
    int pipefd[2] = {-1, -1};
    fp_request req;
    memset(&req, 0, sizeof(req));
    req.code = code;
    req.output_mode = FP_OUTPUT_BUFFER;
    req.worker_kind = background ? FP_WORKER_BACKGROUND : FP_WORKER_NONE;
    req.worker_fd = -1;
    req.worker_ctx = ctx;
    req.content_length = -1;
    if (background && pipe(pipefd) == 0) {
        req.worker_fd = pipefd[0];
        fp_ws_attach(ctx, pipefd[1]);
    }
    *status = fp_execute(&req);
    size_t n = req.output_len < sizeof(out) - 1 ? req.output_len : sizeof(out) - 1;
    memcpy(out, req.output ? req.output : "", n);
    out[n] = 0;
    fp_request_clear(&req);
    if (background) {
        fp_ws_run_ended(ctx, "ended");
        close(pipefd[0]);
        close(pipefd[1]);
    }
    return out;
}

int main(void)
{
    char err[1024];
    if (fp_startup(&host, "", err, sizeof(err)) != 0) {
        fprintf(stderr, "fp_startup: %s\n", err);
        return 1;
    }
    domain = fp_ws_domain_new(1);
    int slot = fp_ws_slot_add(domain, 0, "cfg", 4);
    fp_ws_slot_started(domain, slot);
    fp_ws_slot_ready(domain, slot);
    fp_ws_ctx *worker = fp_ws_ctx_new(domain, 0, slot);
    fp_ws_ctx *anyone = fp_ws_ctx_new(domain, -1, -1);
    int status;
    const char *out;

    /* vars: published by the "worker", read back by a regular execution */
    out = run("frankenphp_set_vars(['list' => [1, 2.5, null, true, false], 'map' => ['a' => 'x', 7 => ['deep' => "
              "'y']], 'empty' => [], '12' => 'numeric key']); echo 'ok';",
              worker, 1, &status);
    CHECK(status == 0 && strcmp(out, "ok") == 0, "set_vars: %d %s", status, out);
    out = run("$v = frankenphp_get_vars('cfg'); $w = frankenphp_get_vars('cfg');"
              "echo json_encode($v), '|', var_export($v === $w, true), '|', var_export(array_key_first($v['map']['7'] ?? []), true),"
              "'|', var_export(isset($v[12]), true);",
              anyone, 0, &status);
    CHECK(status == 0 && strcmp(out, "{\"list\":[1,2.5,null,true,false],\"map\":{\"a\":\"x\",\"7\":{\"deep\":\"y\"}},"
                                     "\"empty\":[],\"12\":\"numeric key\"}|true|'deep'|true") == 0,
          "get_vars: %s", out);

    /* the TypeError names the key path; nothing is published */
    out = run("try { frankenphp_set_vars(['db' => ['conn' => fopen('php://memory', 'r')]]); }"
              "catch (TypeError $e) { echo $e->getMessage(); }",
              worker, 1, &status);
    CHECK(strstr(out, "$vars['db']['conn'] is of type resource") != NULL, "type error: %s", out);
    out = run("$a = [1]; $a[] = &$a; try { frankenphp_set_vars($a); } catch (TypeError $e) { echo $e->getMessage(); }",
              worker, 1, &status);
    CHECK(strstr(out, "nested deeper than 64 levels") != NULL, "recursion: %s", out);
    out = run("echo count(frankenphp_get_vars('cfg'));", anyone, 0, &status);
    CHECK(strcmp(out, "4") == 0, "still the first snapshot: %s", out);

    /* outside a background worker, and unknown workers */
    out = run("try { frankenphp_set_vars([]); } catch (RuntimeException $e) { echo $e->getMessage(); }", anyone, 0,
              &status);
    CHECK(strcmp(out, "frankenphp_set_vars() can only be called from a background worker") == 0, "%s", out);
    out = run("try { frankenphp_get_vars('ghost'); } catch (RuntimeException $e) { echo $e->getMessage(); }", anyone,
              0, &status);
    CHECK(strstr(out, "unknown background worker 'ghost'") != NULL, "%s", out);
    out = run("try { frankenphp_get_vars('cfg'); } catch (RuntimeException $e) { echo $e->getMessage(); }", NULL, 0,
              &status);
    CHECK(strstr(out, "not available in this host") != NULL, "no context: %s", out);

    /* tasks: a payload queued from C is received, answered, failed */
    const char payload[] = "M\x01\x00\x00\x00S\x01\x00\x00\x00nI\x05\x00\x00\x00\x00\x00\x00\x00";
    int64_t first = fp_ws_task_submit(domain, slot, fp_blob_new(payload, sizeof(payload) - 1), 0, err, sizeof(err));
    int64_t second = fp_ws_task_submit(domain, slot, fp_blob_new(payload, sizeof(payload) - 1), 0, err, sizeof(err));
    out = run("$t = frankenphp_receive_task(); frankenphp_complete_task($t['id'], ['twice' => $t['payload']['n'] * 2]);"
              "$u = frankenphp_receive_task(); frankenphp_fail_task($u['id'], 'no: ' . $u['id']);"
              "var_export(frankenphp_receive_task());"
              "try { frankenphp_complete_task($u['id']); } catch (RuntimeException $e) { echo '|', $e->getMessage(); }",
              worker, 1, &status);
    CHECK(status == 0 && strstr(out, "NULL|frankenphp_complete_task(): no task") != NULL, "worker: %s", out);
    fp_blob *result = NULL;
    CHECK(fp_ws_task_wait(domain, first, 1.0, NULL, &result, err, sizeof(err)) == FP_TASK_DONE && result &&
              result->len == 24 && memcmp(result->data, "M\x01\x00\x00\x00S\x05\x00\x00\x00twiceI\x0a", 16) == 0,
          "completed: %s", err);
    fp_blob_release(result);
    char expected[64];
    snprintf(expected, sizeof(expected), "no: %lld", (long long)second);
    CHECK(fp_ws_task_wait(domain, second, 1.0, NULL, &result, err, sizeof(err)) == FP_TASK_FAILED &&
              strcmp(err, expected) == 0,
          "failed: %s", err);

    fp_shutdown();
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("worker_functions: all checks passed\n");
    return 0;
}
