<?php

/** @generate-class-entries */

namespace FrankenPHP;

/**
 * A background worker's handle as an object, the API FrankenPHP is moving to (PR #2617): thin
 * aliases of the frankenphp_* functions.
 */
final class WorkerHandle
{
    /** @throws \RuntimeException outside a background worker */
    public function __construct() {}

    /**
     * The stream frankenphp_get_worker_handle() returns (the first call marks the worker ready).
     *
     * @return resource
     */
    public function getStream() {}

    /**
     * Wait up to $timeout seconds (null: no limit) until a task waits or the worker is drained.
     * Returns false once drained (leave the loop), true otherwise.  Marks the worker ready.
     */
    public function tick(?float $timeout = null): bool {}

    /** frankenphp_set_vars() */
    public function setVars(array $vars): void {}

    /** frankenphp_receive_task() */
    public function receive(): ?array {}
}
