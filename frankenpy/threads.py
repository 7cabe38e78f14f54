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
from typing import TYPE_CHECKING

from . import _native
from .images import Image, ImageError

if TYPE_CHECKING:
    from .execution import Execution

ffi, lib = _native.ffi, _native.lib

# pthread_kill() of this signal makes a blocking syscall of a PHP thread return EINTR.
INTERRUPT_SIGNAL = lib.fp_interrupt_signal()
if lib.fp_install_interrupt_signal(INTERRUPT_SIGNAL) != 0:  # pragma: no cover - sigaction never fails here
    raise ImageError("cannot install the PHP interrupt signal handler")

STOP_RETRY = 0.05  # re-send the stop while a stopped script is still running (missed EINTR)
MAX_WAIT = 3600.0  # the watchdog looks at least this often (Condition.wait refuses huge timeouts)
_watchdog_logger = logging.getLogger("frankenpy")

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

    def start(self) -> None:
        """Start the interpreter (or take over the one a previous runtime left started with the
        same configuration); raises RuntimeError with what PHP reported."""
        if self.image.running_ini == self.ini:
            self.started = True
            return
        self.image.stop()
        err = ffi.new("char[]", 1024)
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
            if rc == 0:
                lib.fp_image_shutdown(self.image.handle)
            # (the glue's own message names the php.ini line at fault: it comes first)
            detail = (rc != 0 and ffi.string(err).decode()) or "; ".join(problems) or ffi.string(err).decode()
            raise RuntimeError(f"PHP thread {self.name} failed to start: {detail}")
        self.image.running_ini = self.ini
        self.image.share_extension_pages()
        self.started = True

    def detach(self) -> None:
        """Let go of the interpreter, which stays started on its image for the next runtime
        (module shutdown costs ~1 ms per interpreter; see images.Image.running_ini)."""
        if self.started:
            lib.fp_image_request_clear(self.image.handle, self.request)
            self.started = False


class ThreadPool:
    """Idle PHP threads for regular executions; callers wait in FIFO order for a free one."""

    def __init__(self, threads: list[PHPThread]) -> None:
        self._idle = deque(threads)
        self._cond = threading.Condition(threading.Lock())  # not reentrant: cheaper per call
        self._closed = False
        self.size = len(threads)
        self.waiting = 0  # callers queued for a thread (metrics)

    def acquire(self, timeout: float | None = None) -> PHPThread | None:
        """An idle thread, or None after ``timeout`` seconds; RuntimeError once closed."""
        with self._cond:
            if not self._idle and not self._closed:
                self.waiting += 1
                try:
                    self._cond.wait_for(lambda: self._idle or self._closed, timeout)
                finally:
                    self.waiting -= 1
            if self._closed:
                raise RuntimeError("the runtime is shut down")
            return self._idle.popleft() if self._idle else None

    def release(self, thread: PHPThread) -> None:
        with self._cond:
            self._idle.append(thread)
            if self._closed:
                self._cond.notify_all()  # close() waits for every thread to come back
            elif self.waiting:
                self._cond.notify()

    @property
    def busy(self) -> int:
        return self.size - len(self._idle)

    def close(self, timeout: float) -> list[PHPThread]:
        """Refuse new callers, wait up to ``timeout`` for running executions, return idle threads."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            self._cond.wait_for(lambda: len(self._idle) == self.size, timeout)
            return list(self._idle)


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
