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
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

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
        self.worker_ctx = ffi.NULL  # the runtime's context for vars and tasks (worker_state.py)
        # What the admin API's thread list shows (read without a lock: a snapshot may be stale).
        self.current: Execution | None = None  # the execution running on it
        self.since = time.time()  # when it last started or ended an execution
        self.executions = 0
        self.memory_usage = 0  # PHP's memory usage at the end of its last script or request

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


class _Waiter:
    """A caller queued for a thread: release() hands it one directly and unlocks ``ready``."""

    __slots__ = ("closed", "ready", "thread")

    def __init__(self) -> None:
        self.ready = threading.Lock()
        self.ready.acquire()
        self.thread: PHPThread | None = None
        self.closed = False


class ThreadPool:
    """Idle PHP threads for regular executions; callers are served strictly in arrival order.

    A caller that finds an idle thread (then nobody waits: release() hands a returned thread
    straight to the first waiter, so idle threads and waiters never coexist) takes it at once;
    any other caller queues a :class:`_Waiter` and sleeps on its own lock.
    """

    def __init__(self, threads: list[PHPThread]) -> None:
        self.threads = tuple(threads)
        self._idle = list(threads)
        self._waiters: deque[_Waiter] = deque()
        self._mutex = threading.Lock()  # not reentrant: cheaper per call
        self._all_back = threading.Condition(self._mutex)
        self._closed = False
        self._late: Callable[[PHPThread], None] | None = None  # see close()
        self._abandoned: list[PHPThread] = []
        self.size = len(threads)
        # Autoscaling (frankenpy.scaling): called when a caller has waited `starved_after`
        # seconds for a thread; it must not block.
        self.on_starved: Callable[[], None] | None = None
        self.starved_after = 0.005
        self._idle_at: dict[int, float] = {}  # id(thread) -> when it came back (monotonic)

    def acquire(self, timeout: float | None = None) -> PHPThread | None:
        """An idle thread, or None after ``timeout`` seconds; RuntimeError once closed."""
        with self._mutex:
            if self._closed:
                raise RuntimeError("the runtime is shut down")
            if self._idle:
                return self._idle.pop()  # the most recently used: its memory is warm
            waiter = _Waiter()
            self._waiters.append(waiter)
        try:
            starved = self.on_starved
            if starved is not None and (timeout is None or timeout > self.starved_after):
                served = waiter.ready.acquire(True, self.starved_after)
                if not served:
                    starved()
                    timeout = None if timeout is None else timeout - self.starved_after
            else:
                served = False
            if not served:
                served = waiter.ready.acquire(True, -1 if timeout is None else max(timeout, 0.0))
        except BaseException:  # KeyboardInterrupt while queued
            if not self._withdraw(waiter) and waiter.thread is not None:
                self.release(waiter.thread)  # served meanwhile: pass it on
            raise
        if not served and self._withdraw(waiter):
            return None
        if waiter.closed:
            raise RuntimeError("the runtime is shut down")
        return waiter.thread

    def _withdraw(self, waiter: _Waiter) -> bool:
        """Take ``waiter`` out of the queue; False when it was served (or closed) meanwhile."""
        with self._mutex:
            try:
                self._waiters.remove(waiter)
            except ValueError:
                return False
            return True

    def release(self, thread: PHPThread) -> None:
        with self._mutex:
            if self._waiters:
                waiter = self._waiters.popleft()
                waiter.thread = thread
                waiter.ready.release()
                return
            if self._late is None:
                self._idle.append(thread)
                self._idle_at[id(thread)] = time.monotonic()
                if self._closed:
                    self._all_back.notify_all()  # close() waits for every thread to come back
                return
            self._abandoned.remove(thread)
            late = self._late
        late(thread)  # it came back after close() gave up on it

    @property
    def busy(self) -> int:
        return self.size - len(self._idle)

    def add(self, thread: PHPThread) -> None:
        """One more thread (autoscaling): it goes to the first waiter, or idles."""
        with self._mutex:
            if self._closed:
                raise RuntimeError("the runtime is shut down")
            self.threads += (thread,)
            self.size += 1
        self.release(thread)

    def take_idle(self, candidates: list[PHPThread], idle_for: float, limit: int) -> list[PHPThread]:
        """Take up to ``limit`` of ``candidates`` that have been idle ``idle_for`` seconds or
        more out of the pool, and return them (autoscaling)."""
        cutoff = time.monotonic() - idle_for
        with self._mutex:
            if self._closed:
                return []
            wanted = {id(t) for t in candidates}
            taken = [t for t in self._idle if id(t) in wanted and self._idle_at.get(id(t), 0.0) <= cutoff]
            taken = taken[:limit]
            for thread in taken:
                self._idle.remove(thread)
                self._idle_at.pop(id(thread), None)
            self.threads = tuple(t for t in self.threads if t not in taken)
            self.size -= len(taken)
            return taken

    @property
    def waiting(self) -> int:
        """Callers queued for a thread (metrics)."""
        return len(self._waiters)

    def close(self, grace: float, late: Callable[[PHPThread], None]) -> list[PHPThread]:
        """Refuse new callers, wait up to ``grace`` seconds for running executions, then
        force-stop those still running and wait for them (FORCE_STOP_WAIT).  Returns the threads
        that are back; ``late(thread)`` is called for each other one when (if ever) it comes back,
        since its interpreter is still running a script until then."""
        with self._mutex:
            if self._closed:
                raise RuntimeError("the thread pool is already closed")
            self._closed = True
            for waiter in self._waiters:
                waiter.closed = True
                waiter.ready.release()
            self._waiters.clear()
            self._all_back.wait_for(lambda: len(self._idle) == self.size, grace)
            out = [t for t in self.threads if t not in self._idle]
        if out:
            logger.warning(
                "PHP thread(s) %s still running after the %.1f s grace period; force-stopping",
                ", ".join(t.name for t in out), grace, extra={"worker": "-"},
            )
            deadline = time.monotonic() + FORCE_STOP_WAIT
            with self._mutex:
                while len(self._idle) < self.size and time.monotonic() < deadline:
                    for thread in self.threads:
                        if thread not in self._idle:
                            thread.interrupt()  # again: a stop between two scripts hits nothing
                    self._all_back.wait(STOP_RETRY)
        with self._mutex:
            back, self._idle = self._idle, []
            self._abandoned = [t for t in self.threads if t not in back]
            if self._abandoned:
                self._late = late
        for thread in self._abandoned:
            logger.error(
                "PHP thread %s still running %.0f s after its force-stop; its interpreter is "
                "reused only once the script returns", thread.name, FORCE_STOP_WAIT,
                extra={"worker": thread.name},
            )
        return back


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
