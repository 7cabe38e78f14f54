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

from .. import _native
from ..execution import Execution
from ..workers import WorkerGroup, WorkerThread
from .exchange import HTTPExchange


class RequestQueue:
    """Requests waiting for a thread of one HTTP worker (FIFO)."""

    def __init__(self) -> None:
        self._items: deque[HTTPExchange] = deque()
        self._cond = threading.Condition()

    def submit(self, exchange: HTTPExchange) -> None:
        """Queue ``exchange`` for the next free thread of the worker."""
        exchange.handed_to_worker()
        with self._cond:
            self._items.append(exchange)
            self._cond.notify()  # one idle worker thread is enough

    def withdraw(self, exchange: HTTPExchange) -> bool:
        """Take ``exchange`` back if no thread has claimed it yet (its client gets a 503)."""
        with self._cond:
            if exchange.claimed:
                return False
            self._items.remove(exchange)
            return True

    def take(self, thread: HTTPWorkerThread) -> HTTPExchange | None:
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
        return len(self._items)


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
        self.in_flight: HTTPExchange | None = None
        self.retired: HTTPExchange | None = None  # answered, but its struct still in C's hands
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
        assert isinstance(request, HTTPExchange)
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
        request.finish_from_worker(rest)


class HTTPWorkerThread(WorkerThread):
    """A thread of an HTTP worker (see the module docstring)."""

    def __init__(self, group: WorkerGroup, worker, index, php) -> None:  # type: ignore[no-untyped-def]
        super().__init__(group, worker, index, php)
        self.queue = request_queue(group, worker.scope, worker.name)
        self.current_run: HTTPWorkerExecution | None = None

    @property
    def draining(self) -> bool:
        return self._stopping or self._drain_requested

    def make_execution(self) -> Execution:
        execution = HTTPWorkerExecution(self)
        self.current_run = execution
        return execution

    @property
    def busy(self) -> bool:
        run = self.current_run
        return run is not None and run.in_flight is not None

    def on_drain(self) -> None:
        self.queue.wake()

    def reached_ready_in(self, execution: Execution) -> bool:
        assert isinstance(execution, HTTPWorkerExecution)
        if execution.in_flight is not None:
            # The glue answers a request cut short by exit() or a fatal error; never leave the
            # client waiting if it could not.
            execution.in_flight.finish_from_worker(b"")
            execution.in_flight = None
        return execution.reached_loop
