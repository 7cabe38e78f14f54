"""PHP threads (started interpreters), the pool that lends them out, and the watchdog.

A PHP thread is an interpreter image that has been started: one NTS interpreter, which one OS
thread at a time may drive.  Regular executions borrow an idle one from the :class:`ThreadPool`
and run on the calling thread (so the hand-off costs no thread switch); worker threads own theirs
for their whole life.  The :class:`Watchdog` enforces time limits from its own thread, since NTS
PHP's own timer (``setitimer(ITIMER_PROF)``) is one for the whole process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _native
from .images import Image, ImageError

if TYPE_CHECKING:
    from .execution import Execution

ffi, lib = _native.ffi, _native.lib
logger = logging.getLogger("frankenpy")

# pthread_kill() of this signal makes a blocking syscall of a PHP thread return EINTR.
INTERRUPT_SIGNAL = lib.fp_interrupt_signal()
if lib.fp_install_interrupt_signal(INTERRUPT_SIGNAL) != 0:  # pragma: no cover - sigaction never fails here
    raise ImageError("cannot install the PHP interrupt signal handler")

STOP_RETRY = 0.05  # re-send the stop while a stopped script is still running (missed EINTR)
MAX_WAIT = 3600.0  # the watchdog looks at least this often (Condition.wait refuses huge timeouts)
_watchdog_logger = logging.getLogger("frankenpy")
FORCE_STOP_WAIT = 5.0  # after a force-stop, how long to wait for the script to end

# Startup diagnostics have no execution to go to: the thread starting an interpreter collects
# them here.
_startup = threading.local()


class WorkerLogAdapter(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Puts the worker (or thread) name into every record, as ``record.worker``."""

    def process(self, msg, kwargs):  # type: ignore[no-untyped-def]
        kwargs.setdefault("extra", {})["worker"] = self.extra["worker"]  # type: ignore[index]
        return f"[{self.extra['worker']}] {msg}", kwargs  # type: ignore[index]


def php_log_adapter(name: str) -> WorkerLogAdapter:
    return WorkerLogAdapter(logging.getLogger("frankenpy.php"), {"worker": name})


def startup_diagnostics() -> list | None:
    """The list collecting diagnostics of the interpreter starting on this thread, if any."""
    return getattr(_startup, "diagnostics", None)


class PHPThread:
    """A started interpreter.  Not thread-safe: one user at a time (the pool sees to it)."""

    def __init__(self, image: Image, ini: str, watchdog: Watchdog, name: str) -> None:
        self.image = image
        self.ini = ini
        self.watchdog = watchdog
        self.name = name
        self.logger = php_log_adapter(name)
        self.started = False
        self.request = ffi.new("fp_request *")  # reused by regular executions (execution.Request)
        # What the C pool holds (csrc/serve.h fp_slot): the image, that request, and a handle of
        # this thread for frankenphp_log() in executions run in C (its logger).
        self._handle = ffi.new_handle(self)
        self.slot = ffi.new("fp_slot *", {"image": image.handle, "request": self.request,
                                          "py_handle": self._handle})
        self._worker_ctx: Any = ffi.NULL
        # What the admin API's thread list shows (read without a lock: a snapshot may be stale).
        # Executions run in C (fp_fast_execute) update the slot's counters themselves.
        self.current: Execution | None = None  # the execution running on it, run from Python
        self.since = time.time()

    @property
    def since(self) -> float:
        """When it last started or ended an execution (wall clock)."""
        return float(self.slot.since)

    @since.setter
    def since(self, when: float) -> None:
        self.slot.since = when

    @property
    def executions(self) -> int:
        return int(self.slot.executions)

    @executions.setter
    def executions(self, count: int) -> None:
        self.slot.executions = count

    @property
    def memory_usage(self) -> int:
        """PHP's memory usage at the end of its last script or request."""
        return int(self.slot.memory_usage)

    @memory_usage.setter
    def memory_usage(self, usage: int) -> None:
        self.slot.memory_usage = usage

    @property
    def busy(self) -> bool:
        """An execution runs on it (from Python, or in C)."""
        return self.current is not None or bool(self.slot.busy)

    @property
    def worker_ctx(self) -> Any:
        """The runtime's context for vars and tasks (worker_state.py), in the C pool's slot."""
        return self._worker_ctx

    @worker_ctx.setter
    def worker_ctx(self, ctx: Any) -> None:
        self._worker_ctx = ctx
        self.slot.worker_ctx = ctx

    def start(self) -> None:
        """Start the interpreter (or take over the one a previous runtime left started with the
        same configuration); raises RuntimeError with what PHP reported."""
        if self.image.running_ini == self.ini:
            self.started = True
            return
        self.image.stop()
        err = ffi.new("char[]", 1024)
        # Until start-up has fully succeeded the image counts as started with an unknown
        # configuration: an exception (KeyboardInterrupt) anywhere below then leaves it to be
        # shut down before its next start (fp_shutdown() of an interpreter that is not started
        # is a no-op), never started but marked as stopped.
        self.image.running_ini = STARTING
        _startup.diagnostics = diagnostics = []
        try:
            rc = lib.fp_image_startup(self.image.handle, self.ini.encode(), err, len(err))
        finally:
            _startup.diagnostics = None
        # During module start-up PHP reports through its log (type 0: "PHP Warning:  PHP
        # Startup: Unable to load dynamic library ..."); anything but a deprecation is fatal here.
        problems = [
            str(d) for d in diagnostics
            if d.type & (1 | 2 | 16 | 32) or (d.type == 0 and not d.message.startswith("PHP Deprecated"))
        ]
        if rc != 0 or problems:
            self.image.stop()
            # (the glue's own message names the php.ini line at fault: it comes first)
            detail = (rc != 0 and ffi.string(err).decode()) or "; ".join(problems) or ffi.string(err).decode()
            raise RuntimeError(f"PHP thread {self.name} failed to start: {detail}")
        self.image.running_ini = self.ini
        self.image.share_extension_pages()
        self.started = True

    def interrupt(self) -> None:
        """Force-stop the regular execution running on this thread, if any (from any thread).
        Every execution of a pooled thread uses the thread's own request struct, whose
        ``exec_id`` names the script running now (0 before it starts and after it ends)."""
        exec_id = self.request.exec_id
        if exec_id:
            lib.fp_image_interrupt(self.image.handle, exec_id, 0, INTERRUPT_SIGNAL)

    def detach(self) -> None:
        """Let go of the interpreter, which stays started on its image for the next runtime
        (module shutdown costs ~1 ms per interpreter; see images.Image.running_ini)."""
        if self.started:
            lib.fp_image_request_clear(self.image.handle, self.request)
            self.started = False


STARTING = "\0starting"  # Image.running_ini while start-up is under way (matches no ini)


POOL_TIMEOUT, POOL_CLOSED = -1, -2  # csrc/pool.h
WAIT_SLICE = 0.2  # a queued caller returns to Python this often: SIGINT must reach it


class ThreadPool:
    """Idle PHP threads for regular executions; callers are served strictly in arrival order.

    A thin wrapper over the C pool (csrc/pool.h), which the native server's serving threads
    also borrow from, per request: a caller that finds an idle thread takes it at once; any
    other one queues in C and is handed a returned thread directly (idle threads and waiters
    never coexist).  Python maps the pool's member ids to :class:`PHPThread` objects.
    """

    def __init__(self, threads: list[PHPThread]) -> None:
        self._c = ffi.gc(lib.fp_pool_new(), lib.fp_pool_free)
        if self._c == ffi.NULL:  # pragma: no cover - out of memory
            raise MemoryError("fp_pool_new")
        self.handle = self._c  # the C pool (``fp_pool *``), for C callers (fp_serve, fp_fast_*)
        self.threads: tuple[PHPThread, ...] = ()
        self._by_id: dict[int, PHPThread] = {}
        self._ids: dict[int, int] = {}  # id(thread) -> member id
        self._closed = False
        self._late: Callable[[PHPThread], None] | None = None  # see close()
        # Autoscaling (frankenpy.scaling): called when a caller has waited `starved_after`
        # seconds for a thread; it must not block.
        self.on_starved: Callable[[], None] | None = None
        self.starved_after = 0.005
        for thread in threads:
            self._add(thread)

    def _add(self, thread: PHPThread) -> None:
        # Registered before the C pool hands it out: another caller may take it at once.
        self.threads += (thread,)
        member = len(self._by_id)
        self._by_id[member] = thread
        self._ids[id(thread)] = member
        got = lib.fp_pool_add(self._c, thread.slot)
        if got != member:
            self.threads = self.threads[:-1]
            del self._by_id[member], self._ids[id(thread)]
            if got == POOL_CLOSED:
                raise RuntimeError("the runtime is shut down")
            raise MemoryError("fp_pool_add")  # pragma: no cover

    def member_id(self, thread: PHPThread) -> int:
        return self._ids[id(thread)]

    def thread(self, member: int) -> PHPThread:
        return self._by_id[member]

    def acquire(self, timeout: float | None = None) -> PHPThread | None:
        """An idle thread, or None after ``timeout`` seconds; RuntimeError once closed."""
        out = ffi.new("int *")
        waiter = lib.fp_pool_enqueue(self._c, out)
        if waiter == ffi.NULL:
            if out[0] >= 0:
                return self._by_id[out[0]]
            if out[0] == POOL_CLOSED:
                raise RuntimeError("the runtime is shut down")
            raise MemoryError("fp_pool_enqueue")  # pragma: no cover
        try:
            got = self._wait(waiter, timeout)
        except BaseException:  # KeyboardInterrupt while queued
            got = lib.fp_pool_withdraw(self._c, waiter)
            lib.fp_pool_waiter_free(waiter)
            if got >= 0:
                self.release(self._by_id[got])  # served meanwhile: pass it on
            raise
        if got == POOL_TIMEOUT:
            got = lib.fp_pool_withdraw(self._c, waiter)  # served in between: keep it
        lib.fp_pool_waiter_free(waiter)
        if got == POOL_CLOSED:
            raise RuntimeError("the runtime is shut down")
        return None if got == POOL_TIMEOUT else self._by_id[got]

    def _wait(self, waiter: Any, timeout: float | None) -> int:
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        starved = self.on_starved
        if starved is not None and (timeout is None or timeout > self.starved_after):
            got = lib.fp_pool_wait(self._c, waiter, int(self.starved_after * 1e9))
            if got != POOL_TIMEOUT:
                return got
            starved()
        while True:
            left = WAIT_SLICE if deadline is None else min(WAIT_SLICE, deadline - time.monotonic())
            got = lib.fp_pool_wait(self._c, waiter, max(int(left * 1e9), 0))
            if got != POOL_TIMEOUT or (deadline is not None and time.monotonic() >= deadline):
                return got

    def release(self, thread: PHPThread) -> None:
        if lib.fp_pool_release(self._c, self._ids[id(thread)]):
            self.given_up(thread)

    def given_up(self, thread: PHPThread) -> None:
        """``thread`` came back after close() gave up on it."""
        late = self._late
        assert late is not None
        late(thread)

    @property
    def size(self) -> int:
        return int(lib.fp_pool_size(self._c))

    @property
    def busy(self) -> int:
        return int(lib.fp_pool_busy(self._c))

    def add(self, thread: PHPThread) -> None:
        """One more thread (autoscaling): it goes to the first waiter, or idles."""
        self._add(thread)

    def take_idle(self, candidates: list[PHPThread], idle_for: float, limit: int) -> list[PHPThread]:
        """Take up to ``limit`` of ``candidates`` that have been idle ``idle_for`` seconds or
        more out of the pool, and return them (autoscaling)."""
        taken = []
        for thread in candidates:
            if len(taken) >= limit:
                break
            member = self._ids.get(id(thread))
            if member is not None and lib.fp_pool_take_idle(self._c, member, int(idle_for * 1e9)):
                taken.append(thread)
        if taken:
            self.threads = tuple(t for t in self.threads if t not in taken)
        return taken

    @property
    def waiting(self) -> int:
        """Callers queued for a thread (metrics)."""
        return int(lib.fp_pool_waiting(self._c))

    def close(self, grace: float, late: Callable[[PHPThread], None]) -> list[PHPThread]:
        """Refuse new callers, wait up to ``grace`` seconds for running executions, then
        force-stop those still running and wait for them (FORCE_STOP_WAIT).  Returns the threads
        that are back; ``late(thread)`` is called for each other one when (if ever) it comes back,
        since its interpreter is still running a script until then."""
        if lib.fp_pool_close(self._c) != 0:
            raise RuntimeError("the thread pool is already closed")
        self._closed = True
        self._late = late
        if lib.fp_pool_wait_idle(self._c, int(grace * 1e9)):  # GIL released
            busy = self._busy_threads()
            logger.warning(
                "PHP thread(s) %s still running after the %.1f s grace period; force-stopping",
                ", ".join(t.name for t in busy), grace, extra={"worker": "-"},
            )
            deadline = time.monotonic() + FORCE_STOP_WAIT
            while time.monotonic() < deadline:
                for thread in self._busy_threads():
                    thread.interrupt()  # again: a stop between two scripts hits nothing
                if not lib.fp_pool_wait_idle(self._c, int(STOP_RETRY * 1e9)):
                    break
        ids = ffi.new("int[]", max(len(self._by_id), 1))
        n = lib.fp_pool_take_all(self._c, ids, len(ids))
        back = [self._by_id[ids[i]] for i in range(n)]
        for thread in self.threads:
            if thread not in back:
                logger.error(
                    "PHP thread %s still running %.0f s after its force-stop; its interpreter is "
                    "reused only once the script returns", thread.name, FORCE_STOP_WAIT,
                    extra={"worker": thread.name},
                )
        return back

    def _busy_threads(self) -> list[PHPThread]:
        return [t for t in self.threads if not lib.fp_pool_is_idle(self._c, self._ids[id(t)])]


class Watchdog:
    """Stops executions that pass their deadline: one thread, woken when a deadline changes."""

    def __init__(self, name: str) -> None:
        self._cond = threading.Condition()
        self._watched: set[Execution] = set()
        self._running = False
        self._thread = threading.Thread(target=self._loop, name=f"{name}-watchdog", daemon=True)

    def start(self) -> None:
        self._running = True
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._running = False
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join()

    def watch(self, execution: Execution) -> None:
        with self._cond:
            self._watched.add(execution)
            self._cond.notify()

    def unwatch(self, execution: Execution) -> None:
        with self._cond:
            self._watched.discard(execution)

    def wake(self) -> None:
        with self._cond:
            self._cond.notify()

    def _loop(self) -> None:
        with self._cond:
            while self._running:
                try:
                    timeout = self._check()
                except Exception:
                    # A watchdog that dies takes every later time limit and force-stop of its
                    # runtime with it: log, and look again soon.
                    _watchdog_logger.exception("watchdog %s: check failed", self._thread.name,
                                               extra={"worker": self._thread.name})
                    timeout = STOP_RETRY
                self._cond.wait(timeout)

    def _check(self) -> float | None:
        """Interrupt the executions past their deadline; seconds until the next deadline."""
        now = time.monotonic()
        next_check: float | None = None
        for execution in list(self._watched):
            with execution.lock:
                deadline, limit = execution.deadline, execution.limit
            if deadline is None:
                continue
            if now >= deadline:
                try:
                    execution.interrupt(limit or 0)
                except Exception:  # one bad execution must not keep the others running
                    worker = execution.logger.extra.get("worker", "-") if execution.logger.extra else "-"
                    _watchdog_logger.exception("watchdog %s: stopping %s failed", self._thread.name, worker,
                                               extra={"worker": worker})
                deadline = now + STOP_RETRY
            next_check = deadline if next_check is None else min(next_check, deadline)
        if next_check is None:
            return None
        return min(max(0.0, next_check - now), MAX_WAIT)
