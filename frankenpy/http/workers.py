"""HTTP workers: scripts that boot once and loop on ``frankenphp_handle_request()``.

Requests for a worker wait in its :class:`RequestQueue` until one of its threads takes them.
The ready point of an HTTP worker thread is its first call of ``frankenphp_handle_request()``;
a crash before it is a boot failure (backoff, cap), a crash after it restarts at once.  After
``max_requests`` requests a thread leaves its loop (``frankenphp_handle_request()`` returns
false) and its script runs again on a fresh request cycle, which is a cooperative restart.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

from .. import _native
from ..execution import Execution
from ..workers import WorkerGroup, WorkerThread
from .exchange import Exchange


class RequestQueue:
    """Requests waiting for a thread of one HTTP worker (FIFO).  Under the native server the
    requests wait in a C queue instead; ``native`` is then (server, queue index), for len()."""

    def __init__(self) -> None:
        self._items: deque[Exchange] = deque()
        self._cond = threading.Condition()
        self.native: tuple[Any, int] | None = None

    def submit(self, exchange: Exchange) -> None:
        """Queue ``exchange`` for the next free thread of the worker."""
        exchange.handed_to_worker()
        with self._cond:
            self._items.append(exchange)
            self._cond.notify()  # one idle worker thread is enough

    def withdraw(self, exchange: Exchange) -> bool:
        """Take ``exchange`` back if no thread has claimed it yet (its client gets a 503)."""
        with self._cond:
            if exchange.claimed:
                return False
            self._items.remove(exchange)
            return True

    def take(self, thread: HTTPWorkerThread) -> Exchange | None:
        """The next request for ``thread``, waiting for one; None once the thread drains."""
        with self._cond:
            self._cond.wait_for(lambda: self._items or thread.draining)
            if thread.draining:
                if self._items:
                    self._cond.notify()  # leave the request to another thread of the worker
                return None
            exchange = self._items.popleft()
            exchange.claimed = True
            return exchange

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def __len__(self) -> int:
        native = self.native
        waiting = _native.lib.fp_http_server_queue_length(*native) if native is not None else 0
        return len(self._items) + waiting


def request_queue(group: WorkerGroup, scope: int, name: str) -> RequestQueue:
    """The request queue of HTTP worker ``name`` in ``scope`` (one per worker, shared by its
    threads)."""
    return group.http_queues.setdefault((scope, name), RequestQueue())


class HTTPWorkerExecution(Execution):
    """One run of an HTTP worker's script: hands requests to ``frankenphp_handle_request()``."""

    def __init__(self, thread: HTTPWorkerThread) -> None:
        super().__init__(
            thread.php, output=thread.log_output, logger=thread.log, honor_initial_time_limit=False
        )
        self.worker_thread = thread
        self.reached_loop = False  # called frankenphp_handle_request(): booted
        self.handled = 0
        self.in_flight: Exchange | None = None
        self.retired: Exchange | None = None  # answered, but its struct still in C's hands
        self.idle_since = time.time()  # waiting for a request since (admin API)

    def next_request(self) -> Execution | None:
        self.retired = None  # the glue is done with the previous request by now
        self.set_deadline(None)  # no limit while waiting, even one the script set (set_time_limit)
        thread = self.worker_thread
        if not self.reached_loop:
            self.reached_loop = True
            thread.mark_ready()
        max_requests = thread.worker.max_requests
        if max_requests and self.handled >= max_requests:
            return None  # recycle: the script ends and runs again
        exchange = thread.queue.take(thread)
        if exchange is not None:
            exchange.logger = thread.log
            self.in_flight = exchange
            if self.initial_limit:
                # max_execution_time counts per request, as in FrankenPHP's worker mode: past
                # it the script is stopped, the request gets a 500, the worker restarts.
                self.set_deadline(self.initial_limit)
        return exchange

    def request_done(self, request: Execution) -> None:
        assert isinstance(request, Exchange)
        req = request.request.struct
        request.collect(req)  # the glue frees the request's memory when we return
        rest = bytes(_native.ffi.buffer(req.output, req.output_len)) if req.output_len else b""
        self.handled += 1
        self.worker_thread.requests += 1
        self.worker_thread.request_time += time.monotonic() - request.started
        self.worker_thread.php.memory_usage = req.memory_usage
        self.in_flight = None
        self.idle_since = time.time()
        self.set_deadline(None)  # no time limit while waiting for the next request
        # The glue still clears the request's struct after this returns, and the WSGI thread
        # may drop the exchange (and the struct's memory) as soon as it has the rest: keep it.
        self.retired = request
        request.complete(rest)


class NativeHTTPWorkerExecution(Execution):
    """One run of an HTTP worker's script under the native server: the script takes its
    requests from the worker's C queue (csrc/serve.h); Python only sees the run's readiness,
    its own output and diagnostics outside requests, and its end."""

    def __init__(self, thread: HTTPWorkerThread, native: Any) -> None:
        super().__init__(thread.php, output=thread.log_output, logger=thread.log)
        self.worker_thread = thread
        self.native = native

    def run(self) -> Any:
        req = self.request.struct
        req.host = _native.lib.fp_native_worker_host()
        req.handle = self.native  # the C callbacks forward to self.handle
        _native.lib.fp_native_worker_begin(self.native, req, self.handle)
        try:
            return super().run()
        finally:
            _native.lib.fp_native_worker_end(self.native)

    def on_ready(self) -> None:
        self.worker_thread.mark_ready()


class HTTPWorkerThread(WorkerThread):
    """A thread of an HTTP worker (see the module docstring)."""

    native: Any = None  # fp_native_worker under the native server (see attach_native)
    _python_requests = 0
    _python_request_time = 0.0

    def __init__(self, group: WorkerGroup, worker, index, php) -> None:  # type: ignore[no-untyped-def]
        super().__init__(group, worker, index, php)
        self.queue = request_queue(group, worker.scope, worker.name)
        self.current_run: HTTPWorkerExecution | None = None

    def attach_native(self, native: Any) -> None:
        """From its next run on, the script takes requests from the native server's C queue."""
        self.native = native

    @property  # type: ignore[override]
    def requests(self) -> int:
        native = self.native
        return self._python_requests + (int(_native.lib.fp_native_worker_requests(native)) if native else 0)

    @requests.setter
    def requests(self, value: int) -> None:
        native = self.native
        self._python_requests = value - (int(_native.lib.fp_native_worker_requests(native)) if native else 0)

    def _native_request_time(self) -> float:
        native = self.native
        return _native.lib.fp_native_worker_request_ns(native) / 1e9 if native else 0.0

    @property  # type: ignore[override]
    def request_time(self) -> float:
        return self._python_request_time + self._native_request_time()

    @request_time.setter
    def request_time(self, value: float) -> None:
        self._python_request_time = value - self._native_request_time()

    @property
    def draining(self) -> bool:
        return self._stopping or self._drain_requested

    def make_execution(self) -> Execution:
        if self.native is not None:
            self.current_run = None
            return NativeHTTPWorkerExecution(self, self.native)
        execution = HTTPWorkerExecution(self)
        self.current_run = execution
        return execution

    @property
    def busy(self) -> bool:
        if self.native is not None:
            return bool(_native.lib.fp_native_worker_busy(self.native))
        run = self.current_run
        return run is not None and run.in_flight is not None

    def on_drain(self) -> None:
        self.queue.wake()
        if self.native is not None:
            _native.lib.fp_native_worker_drain(self.native)

    def reached_ready_in(self, execution: Execution) -> bool:
        if isinstance(execution, NativeHTTPWorkerExecution):
            return bool(_native.lib.fp_native_worker_reached_loop(self.native))
        assert isinstance(execution, HTTPWorkerExecution)
        if execution.in_flight is not None:
            # The glue answers a request cut short by exit() or a fatal error; never leave the
            # client waiting if it could not.
            execution.in_flight.complete(b"")
            execution.in_flight = None
        return execution.reached_loop
