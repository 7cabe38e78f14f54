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
