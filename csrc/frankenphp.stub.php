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
