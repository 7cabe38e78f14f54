"""Workers: long-lived PHP scripts, each thread driven by a Python thread.

Background workers (FrankenPHP PR 2398) are non-HTTP scripts that park on the stream of
``frankenphp_get_worker_handle()``; HTTP workers loop on ``frankenphp_handle_request()``
(``frankenpy.http``).  Both share one lifecycle, the policy of this module:

* every run of the script gets a fresh pipe; the PHP side reads a dup of the read end, the host
  keeps the write end and closes it to drain the worker (shutdown, restart);
* exit status 0 is a cooperative restart: ``restarts`` +1, failures reset, run again at once;
* any other end (``exit(n)``, fatal error, uncaught exception, parse error) is a crash:
  ``crashes`` +1; unless ``failures`` has reached ``max_consecutive_failures`` (-1: never), sleep
  ``min(failures^2 * 100 ms, 1 s)``, then ``failures`` +1 and run again; at the cap the worker halts
  (no respawn, an error log line, state ``halted``) until ``restart_workers()``.  An HTTP worker
  that crashes after it started serving is restarted without backoff;
* once shutdown begins nothing respawns.

Beyond PR 2398: a background worker declared with ``num=0`` starts lazily, the first time
someone asks for it (``frankenphp_ensure_background_worker()``, ``frankenphp_get_vars()``, a task,
or the same calls from Python); one declared without a name is a catch-all, which starts one
instance per requested name (at most ``max_workers``).  Their published vars and task queues
live in C (:mod:`frankenpy.worker_state`); this module tells that state when a worker starts,
becomes ready, fails, and when a run of its script ends (its unanswered tasks then fail).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .execution import Execution, Result, ScriptArgs, env_pairs, script_server_vars
from .scopes import GLOBAL_SCOPE, metric_name, scope_label
from .threads import FORCE_STOP_WAIT, PHPThread, WorkerLogAdapter, php_log_adapter
from .worker_state import Domain, WorkerError, lib

if TYPE_CHECKING:
    from .runtime import Runtime

logger = logging.getLogger("frankenpy.workers")

BACKOFF_STEP = 0.1  # seconds; backoff = min(failures^2 * step, cap)
BACKOFF_CAP = 1.0

BOOTING, READY, RESTARTING, BACKOFF, HALTED, STOPPED, IDLE = (
    "booting", "ready", "restarting", "backoff", "halted", "stopped", "idle",
)


def backoff_delay(failures: int) -> float:
    """Seconds to wait before re-running a worker that crashed ``failures`` times in a row
    (counted before this crash): 0, 0.1, 0.4, 0.9, 1, 1 ..."""
    return min(failures * failures * BACKOFF_STEP, BACKOFF_CAP)


@dataclass(frozen=True)
class Worker:
    """A worker declaration (FrankenPHP's ``WithWorkers`` options).

    ``background=True`` makes a background worker (``WithWorkerBackground()``); otherwise it is
    an HTTP worker, whose script loops on ``frankenphp_handle_request()``.  ``num`` threads run
    it, on top of the runtime's ``num_threads``.  ``scope`` (``WithWorkerScope()``) isolates
    names; ``env`` adds to its ``$_SERVER``.  ``match`` (HTTP only) routes request paths to it;
    ``max_requests`` (HTTP only) restarts a thread after that many requests (0: never).

    Background only: ``num=0`` starts the worker lazily (on first use); ``name=None`` makes a
    catch-all, which starts one instance (of ``max(num, 1)`` threads) per name asked for, with
    ``$_SERVER['FRANKENPHP_WORKER']`` set to that name, at most ``max_workers`` names;
    ``max_queued_tasks`` bounds the worker's task queue (a full queue refuses at once).
    """

    name: str | None
    file: str | os.PathLike[str]
    num: int = 1
    background: bool = False
    env: Mapping[str, str] = field(default_factory=dict)
    scope: int = GLOBAL_SCOPE
    max_consecutive_failures: int = 6
    match: str | None = None
    max_requests: int = 0
    max_threads: int = 0  # HTTP only: autoscale up to this many threads (0: num, no scaling)
    max_workers: int = 16
    max_queued_tasks: int = 1024

    @property
    def catch_all(self) -> bool:
        return self.name is None

    @property
    def lazy(self) -> bool:
        """Started on first use rather than by Runtime.start()."""
        return self.background and (self.num == 0 or self.name is None)

    @property
    def path(self) -> Path:
        return Path(self.file).absolute()

    @property
    def metric_name(self) -> str:
        """Label of this worker's metrics: ``m#<scope-label>:<name>`` for background workers
        (FrankenPHP's format), the name for HTTP workers."""
        name = self.name if self.name is not None else "*"
        return metric_name(self.scope, name) if self.background else name

    def validate(self) -> None:
        """Check the declaration; ValueError/FileNotFoundError naming the worker and the rule."""
        if self.name is None and self.background:
            label = f"catch-all worker {self.file!s}"
        elif not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(
                f"worker for {self.file!s}: a non-empty name is required (only a background worker "
                "may have none: a catch-all)"
            )
        else:
            label = f"worker {self.name!r}"
        for option in ("num", "max_consecutive_failures", "max_requests", "scope", "max_threads",
                       "max_workers", "max_queued_tasks"):
            value = getattr(self, option)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{label}: {option} must be an integer, got {value!r}")
        if self.num < 0 or (self.num < 1 and not self.background):
            least = "0 (0 = lazy start)" if self.background else "1"
            raise ValueError(f"{label}: num must be >= {least}, got {self.num}")
        if self.max_workers < 1:
            raise ValueError(f"{label}: max_workers must be >= 1, got {self.max_workers}")
        if self.max_queued_tasks < 1:
            raise ValueError(f"{label}: max_queued_tasks must be >= 1, got {self.max_queued_tasks}")
        if self.max_consecutive_failures < -1:
            raise ValueError(
                f"{label}: max_consecutive_failures must be >= -1 (-1 = unlimited), "
                f"got {self.max_consecutive_failures}"
            )
        if self.scope < 0:
            raise ValueError(f"{label}: scope must be >= 0, got {self.scope}")
        if self.background and self.match is not None:
            raise ValueError(f"{label}: match is not allowed for background workers")
        if self.background and self.max_requests:
            raise ValueError(f"{label}: max_requests applies to HTTP workers only")
        if self.max_threads and (self.background or self.max_threads < self.num):
            raise ValueError(
                f"{label}: max_threads applies to HTTP workers and must be >= num ({self.num}), "
                f"got {self.max_threads}"
            )
        if self.max_requests < 0:
            raise ValueError(f"{label}: max_requests must be >= 0, got {self.max_requests}")
        if not self.path.is_file():
            raise FileNotFoundError(f"{label}: script not found: {self.path}")


@dataclass(frozen=True)
class WorkerStatus:
    """A snapshot of one worker thread (``Runtime.workers()``)."""

    name: str
    scope: int
    label: str
    metric_name: str
    background: bool
    thread: int
    state: str
    restarts: int
    crashes: int
    failures: int
    last_exit_status: int | None
    last_error: str | None
    requests: int = 0
    busy: bool = False  # HTTP workers: handling a request right now
    request_time: float = 0.0  # HTTP workers: seconds spent handling requests


class WorkerThread:
    """One thread of a worker: a Python thread that runs the script on its own PHP thread,
    again and again, by the rules in this module's docstring."""

    def __init__(self, group: WorkerGroup, worker: Worker, index: int, php: PHPThread | None) -> None:
        self.group = group
        self.worker = worker
        self.index = index
        self.php = php  # None: a lazily started worker's thread gets its PHP thread when it runs
        # Background workers: their slot of vars and tasks, and this thread's C context.
        self.slot = group.slots.get((worker.scope, worker.name), -1) if worker.background else -1
        self.ctx = group.domain.context(worker.scope, self.slot)
        self._ready_this_run = False
        self.log: WorkerLogAdapter = php_log_adapter(worker.name)
        self.lifecycle_log = WorkerLogAdapter(logger, {"worker": worker.name})
        self.state = BOOTING
        self.restarts = self.crashes = self.failures = 0
        self.requests = 0  # HTTP workers: requests served by this thread
        self.request_time = 0.0  # HTTP workers: seconds spent on them (request start to end)
        self.last_result: Result | None = None
        self._execution: Execution | None = None
        self._write_fd = -1
        self._lock = threading.Lock()
        self._wake = threading.Event()  # cuts a backoff sleep short
        self._stopping = False
        self._drain_requested = False
        self._thread: threading.Thread | None = None
        self._loop_running = False  # the loop may still run PHP on self.php
        self._when_php_free: Callable[[PHPThread], None] | None = None
        self.runs = 0  # runs of the script started so far
        script = str(worker.path)
        server = {
            **script_server_vars(script, str(worker.path.parent)),
            "FRANKENPHP_WORKER": worker.name if worker.background else "1",
        }
        # The same script, $_SERVER and $argv for every run: built once, in C form.
        self._script_args = ScriptArgs.build(
            script, env_pairs(group.runtime.env, worker.env, server), [script]
        )

    # --- control (any thread) ----------------------------------------------------------------
    def _started_slot(self) -> None:
        if self.slot >= 0:
            lib.fp_ws_slot_started(self.group.domain.handle, self.slot)

    def launch(self) -> None:
        """Start (or, after a halt, restart) the loop on a new Python thread; nothing once the
        group is closed (shutdown has begun)."""
        with self.group.lifecycle_lock, self._lock:
            if self.group.closed:
                return
            self._loop_running = True
            self._started_slot()
            self._stopping = False
            self._drain_requested = False
            self.failures = 0
            self.state = BOOTING if self.last_result is None else RESTARTING
            self._thread = threading.Thread(
                target=self._run_loop, name=f"worker-{self.worker.name}-{self.index}", daemon=True
            )
            self._thread.start()

    def drain(self, *, stop: bool) -> None:
        """Ask the running script to end (close its handle's pipe); ``stop`` also ends the loop,
        otherwise the script runs again at once."""
        with self._lock:
            if stop:
                self._stopping = True
            else:
                self._drain_requested = True
                self.state = RESTARTING
            self._close_write_end()
        self._wake.set()
        self.on_drain()

    def force_stop(self) -> None:
        """Stop the running script now (it did not react to the drain in time)."""
        with self._lock:
            execution = self._execution
        if execution is not None:
            self.lifecycle_log.warning("did not exit after drain; force-stopping it")
            execution.stop_now()

    def join(self, timeout: float | None) -> bool:
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def when_php_free(self, callback: Callable[[PHPThread], None]) -> bool:
        """Have ``callback(php)`` called once the loop no longer runs PHP on its thread; True
        when deferred (a script survived its force-stop), False when it is free already."""
        with self._lock:
            if self._loop_running:
                self._when_php_free = callback
            return self._loop_running

    @property
    def halted(self) -> bool:
        with self._lock:
            return self.state == HALTED

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def status(self) -> WorkerStatus:
        result = self.last_result
        return WorkerStatus(
            name=self.worker.name,
            scope=self.worker.scope,
            label=scope_label(self.worker.scope),
            metric_name=self.worker.metric_name,
            background=self.worker.background,
            thread=self.index,
            state=self.state,
            restarts=self.restarts,
            crashes=self.crashes,
            failures=self.failures,
            last_exit_status=None if result is None else result.exit_status,
            last_error=None if result is None or result.ok else result.describe(),
            requests=self.requests,
            busy=self.busy,
            request_time=self.request_time,
        )

    @property
    def busy(self) -> bool:
        """Whether the thread is handling a request (HTTP workers override this)."""
        return False

    # --- hooks for the thread kinds (HTTP workers override) ------------------------------------
    def make_execution(self) -> Execution:
        """The execution of one run of the script."""
        return Execution(
            self.php,
            output=self.log_output,
            logger=self.log,
            worker_ready=self.mark_ready,
            honor_initial_time_limit=False,  # set_time_limit(0) semantics for workers
        )

    def on_drain(self) -> None:
        """The worker is being drained (HTTP workers wake their request wait)."""

    def reached_ready_in(self, execution: Execution) -> bool:
        """Whether a crash of this run counts as after start-up (no backoff)."""
        return False

    # --- the loop ----------------------------------------------------------------------------
    def mark_ready(self) -> None:
        with self._lock:
            self.state = READY
            self._ready_this_run = True
        if self.slot >= 0:
            lib.fp_ws_slot_ready(self.group.domain.handle, self.slot)
        self.group.notify()

    def log_output(self, data: bytes) -> None:
        for line in data.decode("utf-8", "replace").splitlines():
            if line.strip():
                self.lifecycle_log.info("output: %s", line)

    def _close_write_end(self) -> None:
        if self._write_fd >= 0:
            lib.fp_ws_attach(self.ctx, -1)  # C stops writing task wake-ups to it first
            os.close(self._write_fd)
            self._write_fd = -1

    def _run_once(self) -> tuple[Result, Execution]:
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        execution = self.make_execution()
        execution.request.apply(self._script_args)
        req = execution.request.struct
        req.worker_kind = 1 if self.worker.background else 2  # FP_WORKER_BACKGROUND / FP_WORKER_HTTP
        req.worker_fd = read_fd
        req.worker_ctx = self.ctx
        req.output_mode = 1  # FP_OUTPUT_STREAM
        with self._lock:
            if self._stopping or self._drain_requested:
                os.close(read_fd)
                os.close(write_fd)
                raise _Drained
            self._write_fd = write_fd
            self._execution = execution
            self._ready_this_run = False
            self.runs += 1
            if self.slot >= 0:
                lib.fp_ws_attach(self.ctx, write_fd)  # a waiting task makes the handle readable
        self.group.notify()
        reason = "was stopped while holding it"
        try:
            result = execution.run()
            reason = "ended (exit status 0) without answering it" if result.ok else (
                f"crashed: {result.describe()}")
            return result, execution
        finally:
            with self._lock:
                self._execution = None
                self._close_write_end()
                if self._stopping or self._drain_requested:
                    reason = "was stopped while holding it"
            if self.slot >= 0:
                lib.fp_ws_run_ended(self.ctx, reason.encode("utf-8", "replace"))  # its tasks in flight fail
            os.close(read_fd)

    def _run_loop(self) -> None:
        try:
            self._loop()
        finally:
            with self._lock:
                self._loop_running = False
                callback, self._when_php_free = self._when_php_free, None
            if callback is not None:
                self.lifecycle_log.warning("its script ended after shutdown; interpreter released")
                callback(self.php)

    def _loop(self) -> None:
        if self.php is None:
            try:
                self.php = self.group.runtime.new_php_thread()
            except Exception as exc:
                self.lifecycle_log.error("halted: no PHP thread: %s", exc)
                self.state = HALTED
                if self.slot >= 0:
                    lib.fp_ws_slot_failed(self.group.domain.handle, self.slot, 1, 255, 1, str(exc).encode())
                self.group.notify()
                return
        cap = self.worker.max_consecutive_failures
        while True:
            try:
                result, execution = self._run_once()
            except _Drained:
                result = execution = None
            with self._lock:
                if result is not None:
                    self.last_result = result
                stopping = self._stopping
                if stopping:
                    self.state = STOPPED
                drained, self._drain_requested = self._drain_requested, False
            if stopping:
                break
            if drained or (result is not None and result.ok):
                # Cooperative restart: the script exited 0, or we drained it (restart_workers).
                self.restarts += 1
                self.failures = 0
                self.state = RESTARTING
                self.group.notify()
                continue
            assert result is not None and execution is not None
            self.crashes += 1
            if self.slot >= 0:
                halting = cap != -1 and self.failures >= cap  # (background: every crash is a boot failure)
                lib.fp_ws_slot_failed(self.group.domain.handle, self.slot, int(halting), result.exit_status,
                                      self.failures + 1, result.describe().encode("utf-8", "replace"))
            if self.reached_ready_in(execution):
                self.lifecycle_log.warning("crashed (%s); restarting", result.describe())
                self.failures = 0
                self.state = RESTARTING
                continue
            if cap != -1 and self.failures >= cap:
                with self._lock:
                    if self._drain_requested:
                        self._started_slot()
                        continue  # restart_workers() arrived meanwhile: it revives the worker
                    self.state = HALTED
                if self.slot >= 0:
                    lib.fp_ws_fail_queued(self.group.domain.handle, self.slot,
                                          f"halted: {result.describe()}".encode("utf-8", "replace"))
                self.lifecycle_log.error(
                    "halted after %d consecutive failures (max_consecutive_failures=%d); last error: %s",
                    self.failures + 1, cap, result.describe(),
                )
                break
            delay = backoff_delay(self.failures)
            self.lifecycle_log.warning(
                "crashed (%s); restarting in %.0f ms (failure %d)", result.describe(), delay * 1000,
                self.failures + 1,
            )
            self.state = BACKOFF
            self.group.notify()
            self._wake.wait(delay)
            self._wake.clear()
            self.failures += 1
            self.state = RESTARTING
        self.group.notify()


class _Drained(Exception):
    """The worker was drained between two runs: do not start another."""


class WorkerGroup:
    """Every worker thread of a runtime, validated at construction."""

    def __init__(self, runtime: Runtime, workers: Sequence[Any]) -> None:
        self.runtime = runtime
        self.workers: list[Worker] = []
        seen: set[tuple[int, str]] = set()
        for worker in workers:
            if not isinstance(worker, Worker):
                raise TypeError(f"workers must be frankenpy.Worker instances, got {type(worker).__name__}")
            worker.validate()
            key = (worker.scope, worker.name)
            if key in seen:
                where = "the global scope" if worker.scope == GLOBAL_SCOPE else f"scope {worker.scope}"
                if worker.catch_all:
                    raise ValueError(f"catch-all worker {worker.file!s}: {where} already has a catch-all")
                raise ValueError(f"worker {worker.name!r}: name already declared in {where}")
            seen.add(key)
            self.workers.append(worker)
        self.threads: list[WorkerThread] = []
        # Closed once shutdown begins: no thread is launched again (restart_workers() racing
        # shutdown() would otherwise run a script on an interpreter being handed back).
        self.closed = False
        self.lifecycle_lock = threading.Lock()
        self.http_queues: dict[tuple[int, str], Any] = {}  # HTTP workers' request queues
        # (scope, name) -> signal to the autoscaler that a request waited for a thread
        self.scaling: dict[tuple[int, str], Any] = {}
        self._cond = threading.Condition()
        # Vars and tasks (C): one slot per background worker, declared or started by a catch-all.
        self.domain = Domain(self.start_on_demand)
        self.slots: dict[tuple[int, str | None], int] = {}
        self.instances: dict[int, list[str]] = {}  # catch-all scope -> names it started
        self._started: set[int] = set()  # slots whose threads exist
        self._start_lock = threading.RLock()

    @property
    def thread_count(self) -> int:
        """PHP threads the eager workers need at start."""
        return sum(worker.num for worker in self.workers if not worker.lazy)

    def _declared(self, scope: int, name: str) -> Worker | None:
        """The background worker ``name`` seen from ``scope`` (-1: any scope, global first)."""
        candidates = [w for w in self.workers if w.background and w.name == name]
        for wanted in (scope, GLOBAL_SCOPE):
            for worker in candidates:
                if worker.scope == wanted:
                    return worker
        return candidates[0] if candidates and scope < 0 else None

    def _catch_all(self, scope: int) -> Worker | None:
        for wanted in (scope, GLOBAL_SCOPE):
            for worker in self.workers:
                if worker.catch_all and worker.scope == wanted:
                    return worker
        if scope < 0:
            return next((w for w in self.workers if w.catch_all), None)
        return None

    def start_on_demand(self, scope: int, name: str) -> int:
        """The slot of background worker ``name`` as seen from ``scope``, starting it if it is
        lazy or a new name for a catch-all (C calls this when a name has no running slot).
        WorkerError naming the problem."""
        with self._start_lock:
            if self.closed or self.runtime.state not in ("starting", "running"):
                raise WorkerError(
                    f"background worker {name!r}: runtime {self.runtime.name} is {self.runtime.state}")
            worker = self._declared(scope, name)
            if worker is None:
                template = self._catch_all(scope)
                if template is None:
                    raise WorkerError(f"unknown background worker {name!r} (no such worker and no catch-all)")
                names = self.instances.setdefault(template.scope, [])
                if len(names) >= template.max_workers:
                    raise WorkerError(
                        f"catch-all worker {template.file!s} cannot start {name!r}: it already runs "
                        f"max_workers={template.max_workers} names ({', '.join(names)})"
                    )
                worker = dataclasses.replace(template, name=name)
                self.workers.append(worker)
                names.append(name)
                self.slots[(worker.scope, name)] = lib.fp_ws_slot_add(
                    self.domain.handle, worker.scope, name.encode("utf-8", "surrogateescape"),
                    worker.max_queued_tasks,
                )
            slot = self.slots[(worker.scope, worker.name)]
            if slot not in self._started:
                self._started.add(slot)
                threads = [WorkerThread(self, worker, index, None) for index in range(max(worker.num, 1))]
                self.threads.extend(threads)
                for thread in threads:
                    thread.launch()
            return slot

    def close(self) -> None:
        """Refuse launches from now on and wake whoever waits for workers to settle."""
        with self.lifecycle_lock:
            self.closed = True
        self.notify()

    def notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def thread_factory(self, worker: Worker) -> type[WorkerThread]:
        if worker.background:
            return WorkerThread
        from .http.workers import HTTPWorkerThread

        return HTTPWorkerThread

    def start(self, php_threads: list[PHPThread]) -> None:
        """Boot every worker thread and wait until each is ready or halted, for at most the
        runtime's start_timeout.  A halt raises RuntimeError (the caller tears everything
        down); threads still booting at the timeout are logged and left booting."""
        php = iter(php_threads)
        for worker in self.workers:
            if worker.background and not worker.catch_all:
                self.slots[(worker.scope, worker.name)] = lib.fp_ws_slot_add(
                    self.domain.handle, worker.scope, str(worker.name).encode("utf-8", "surrogateescape"),
                    worker.max_queued_tasks,
                )
            if worker.lazy:
                continue
            if worker.background:
                self._started.add(self.slots[(worker.scope, worker.name)])
            factory = self.thread_factory(worker)
            for index in range(worker.num):
                self.threads.append(factory(self, worker, index, next(php)))
        for thread in self.threads:
            thread.launch()
        timeout = self.runtime.start_timeout
        halted, booting = self._wait_settled(self.threads, timeout)
        if self.closed:
            raise RuntimeError(f"runtime {self.runtime.name} was shut down during start()")
        if halted:
            details = "; ".join(f"worker {t.worker.name!r}: {t.status().last_error}" for t in halted)
            raise RuntimeError(f"worker(s) halted during start-up: {details}")
        if booting:
            logger.warning(
                "worker(s) still booting after %.1f s (no call to frankenphp_get_worker_handle() or "
                "frankenphp_handle_request() yet): %s", timeout, ", ".join(booting),
                extra={"worker": ",".join(booting)},
            )

    def _wait_settled(
        self, threads: list[WorkerThread], timeout: float
    ) -> tuple[list[WorkerThread], list[str]]:
        """Wait until every thread is ready, or one halted; returns (halted, names still booting)."""
        with self._cond:
            self._cond.wait_for(
                lambda: self.closed
                or all(t.state == READY for t in threads)
                or any(t.state == HALTED for t in threads),
                timeout,
            )
        halted = [t for t in threads if t.state == HALTED]
        booting = sorted({t.worker.name for t in threads if t.state not in (READY, HALTED)})
        return halted, booting

    def stop(self, grace: float) -> None:
        """Drain every thread, force-stop those that have not exited after ``grace`` seconds;
        then fail the tasks still queued."""
        self.close()  # nothing is launched, nor started on demand, any more
        with self._start_lock:
            threads = list(self.threads)
        self._drain_and_wait(threads, grace)
        for thread in threads:
            thread.state = STOPPED
        self.domain.close(f"is stopped: runtime {self.runtime.name} shut down")

    def _drain_and_wait(self, threads: list[WorkerThread], grace: float) -> None:
        for thread in threads:
            thread.drain(stop=True)
        deadline = time.monotonic() + grace
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [t for t in threads if t.alive]
        for thread in stuck:
            thread.force_stop()
        for thread in stuck:
            if not thread.join(FORCE_STOP_WAIT):
                thread.lifecycle_log.error("still running %.0f s after its force-stop", FORCE_STOP_WAIT)

    def restart(self, grace: float) -> list[WorkerStatus]:
        """Drain every thread and boot it again (halted ones too), force-stopping scripts still
        running after ``grace`` seconds; waits (start_timeout) until each is ready or halted.
        RuntimeError once shutdown has begun (before or during the restart)."""
        if self.closed:
            raise RuntimeError(f"runtime {self.runtime.name} is shutting down; no restart")
        draining = []
        with self._start_lock:
            threads = list(self.threads)
        for thread in threads:
            if thread.halted:
                thread.join(FORCE_STOP_WAIT)  # its loop has ended or is logging the halt
            if thread.alive:
                draining.append((thread, thread.runs))
                thread.drain(stop=False)
            else:
                thread.launch()
        with self._cond:
            self._cond.wait_for(
                lambda: self.closed or all(t.runs > runs or not t.alive for t, runs in draining), grace
            )
        for thread, runs in draining:
            if thread.runs == runs and thread.alive:
                thread.force_stop()
        halted, booting = self._wait_settled(threads, self.runtime.start_timeout)
        if self.closed:
            raise RuntimeError(f"runtime {self.runtime.name} shut down during restart_workers()")
        for thread in halted:
            thread.lifecycle_log.error("restart: halted again: %s", thread.status().last_error)
        if booting:
            logger.warning("restart: worker(s) still booting: %s", ", ".join(booting),
                           extra={"worker": ",".join(booting)})
        return self.statuses()

    def statuses(self) -> list[WorkerStatus]:
        """One status per worker thread, and one ``idle`` status per lazy worker not started."""
        with self._start_lock:
            threads = list(self.threads)
            idle = [w for w in self.workers if w.lazy and not w.catch_all
                    and self.slots.get((w.scope, w.name)) not in self._started]
        statuses = [thread.status() for thread in threads]
        for worker in idle:
            statuses.append(WorkerStatus(
                name=str(worker.name), scope=worker.scope, label=scope_label(worker.scope),
                metric_name=worker.metric_name, background=True, thread=0, state=IDLE, restarts=0,
                crashes=0, failures=0, last_exit_status=None, last_error=None,
            ))
        return statuses

    def task_counts(self) -> dict[str, tuple[int, int, int, int]]:
        """Per background worker (metric name): tasks queued now, completed, failed, and vars
        publications."""
        with self._start_lock:
            slots = [(w, self.slots[(w.scope, w.name)]) for w in self.workers
                     if w.background and not w.catch_all and (w.scope, w.name) in self.slots]
        return {worker.metric_name: self.domain.counts(slot) for worker, slot in slots}
