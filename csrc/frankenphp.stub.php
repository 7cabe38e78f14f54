<?php

/** @generate-class-entries */

/**
 * Read-only stream that reaches EOF when the host drains this background worker
 * (shutdown or restart).  The first call marks the worker ready.
 *
 * @return resource
 * @throws RuntimeException outside a background worker
 */
function frankenphp_get_worker_handle() {}

/**
 * Wait for the next HTTP request and run $callback for it with fresh superglobals and output.
 * Returns false once the worker is drained.
 *
 * @throws RuntimeException outside an HTTP worker
 */
function frankenphp_handle_request(callable $callback): bool {}

/** @var int */
const FRANKENPHP_LOG_LEVEL_DEBUG = -4;
/** @var int */
const FRANKENPHP_LOG_LEVEL_INFO = 0;
/** @var int */
const FRANKENPHP_LOG_LEVEL_WARN = 4;
/** @var int */
const FRANKENPHP_LOG_LEVEL_ERROR = 8;

/**
 * A 1xx $status sends an interim response (103 Early Hints) with the headers set so far and
 * keeps the previous status; any other status sends the final status and headers now.
 * Returns 1 (sent) or 2 (the host cannot send it) for 1xx, else 0 (sent or already sent).
 */
function headers_send(int $status = 200): int {}

/**
 * Flush the output and headers and complete the response; the script keeps running and its
 * later output is discarded.  False when the response is already complete.
 */
function frankenphp_finish_request(): bool {}

/** @alias frankenphp_finish_request */
function fastcgi_finish_request(): bool {}

/** The request's headers, "Name" => "value". */
function frankenphp_request_headers(): array {}

/** @alias frankenphp_request_headers */
function apache_request_headers(): array {}

/** @alias frankenphp_request_headers */
function getallheaders(): array {}

/** The response headers set so far, "Name" => "value"; false outside an HTTP request. */
function frankenphp_response_headers(): array|false {}

/** @alias frankenphp_response_headers */
function apache_response_headers(): array|false {}

/** Log $message on the host's logger frankenpy.php; $context becomes the record's extra. */
function frankenphp_log(string $message, int $level = 0, array $context = []): void {}

/**
 * Start the named background workers if they are not running (lazy ones, or names a catch-all
 * serves) and return once each is ready.  $timeout defaults to 30 s.
 *
 * @throws RuntimeException on a timeout, an unknown name, a halted worker or (in an HTTP worker
 *         before its first request) a boot failure
 * @throws ValueError for an empty array, an empty or duplicate name, a timeout <= 0
 * @throws TypeError for a name that is not a string
 */
function frankenphp_ensure_background_worker(string|array $name, ?float $timeout = null): void {}

/**
 * Publish $vars as this background worker's snapshot, replacing the previous one atomically.
 *
 * @throws RuntimeException outside a background worker
 * @throws TypeError for a value other than null, bool, int, float, string or an array of them
 */
function frankenphp_set_vars(array $vars): void {}

/**
 * A copy of the latest snapshot that background worker $name published ([] if none yet),
 * waiting until it has been ready once (starting it if lazy).  Within one request, repeated
 * calls return the same snapshot.
 *
 * @throws RuntimeException on an unknown worker, a timeout (default 30 s) or a wait cycle
 */
function frankenphp_get_vars(string $name, ?float $timeout = null): array {}

/**
 * Hand $payload to background worker $worker and wait for its answer (null: no time limit).
 *
 * @throws RuntimeException when the task fails, times out, or the queue is full
 */
function frankenphp_send_task(string $worker, array $payload, ?float $timeout = 30.0): array {}

/**
 * The next task waiting for this background worker, as ['id' => int, 'payload' => array], or
 * null when none waits.
 *
 * @throws RuntimeException outside a background worker
 */
function frankenphp_receive_task(): ?array {}

/** Answer task $id with $result. */
function frankenphp_complete_task(int $id, ?array $result = null): void {}

/** Fail task $id: its sender raises with $message. */
function frankenphp_fail_task(int $id, string $message): void {}
