"""One PHP execution: its request struct, the host callbacks it receives, and its result.

The C glue reports through callbacks (``fp_py_*``, cffi ``extern "Python+C"``) that carry the
``handle`` of the execution in progress; the handle maps back to an :class:`Execution`, which
collects diagnostics, forwards output and tells the watchdog about time limits.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import _fastcall, _native
from .threads import INTERRUPT_SIGNAL, php_log_adapter, startup_diagnostics

if TYPE_CHECKING:
    from .threads import PHPThread

ffi, lib = _native.ffi, _native.lib

php_logger = logging.getLogger("frankenpy.php")
php_logger_adapter = php_log_adapter("-")

# A time limit longer than this never ends anything a runtime runs: no deadline at all (PHP
# accepts set_time_limit(PHP_INT_MAX); Python's waits refuse timeouts that large).
NO_LIMIT_BEYOND = 366 * 24 * 3600.0


def _limit(seconds: float | None) -> float | None:
    """``seconds`` as a deadline length, None for no deadline (0, negative, huge or infinite)."""
    if seconds is None or not 0 < seconds <= NO_LIMIT_BEYOND:
        return None
    return seconds


def check_timeout(timeout: float | None) -> float | None:
    """A ``timeout=`` argument as a deadline length; ValueError naming it unless it is None or
    a number > 0 (``float('inf')`` and anything beyond a year mean no deadline)."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise ValueError(f"timeout must be a number of seconds > 0 (or None), got {timeout!r}")
    return _limit(float(timeout))

# E_* constants (Zend/zend_errors.h) and the label PHP prints for each.
_ERROR_LABELS = {
    1: "Fatal error",
    2: "Warning",
    4: "Parse error",
    8: "Notice",
    16: "Fatal error",  # E_CORE_ERROR
    32: "Warning",  # E_CORE_WARNING
    64: "Fatal error",  # E_COMPILE_ERROR
    128: "Warning",  # E_COMPILE_WARNING
    256: "Fatal error",  # E_USER_ERROR
    512: "Warning",  # E_USER_WARNING
    1024: "Notice",  # E_USER_NOTICE
    4096: "Recoverable fatal error",
    8192: "Deprecated",
    16384: "Deprecated",  # E_USER_DEPRECATED
}
_FATAL = 1 | 4 | 16 | 64 | 256 | 4096
_WARNING = 2 | 32 | 128 | 512


@dataclass(frozen=True)
class Diagnostic:
    """A PHP error, warning or notice, or an ``error_log()`` line (``type`` 0)."""

    type: int
    message: str
    file: str | None = None
    line: int = 0

    @property
    def label(self) -> str:
        return _ERROR_LABELS.get(self.type, "Log") if self.type else "Log"

    def __str__(self) -> str:
        if not self.type:
            return self.message
        where = f" in {self.file} on line {self.line}" if self.file else ""
        return f"PHP {self.label}:  {self.message}{where}"


@dataclass(frozen=True, slots=True)
class Result:
    """What an execution did.

    ``exit_status`` is PHP's: ``exit(n)``'s ``n``, 255 after a fatal error, parse error,
    uncaught exception, exhausted ``memory_limit`` or a time limit.  ``output`` is empty when it
    was streamed to a callable.  ``errors`` holds every diagnostic as PHP would print it.
    ``stderr`` holds what the script wrote to ``STDERR`` / ``php://stderr``.
    """

    exit_status: int
    output: bytes
    diagnostics: tuple[Diagnostic, ...]
    timed_out: bool = False
    duration: float = 0.0
    time_limit: float | None = field(default=None, repr=False)
    stderr: bytes = b""

    @property
    def errors(self) -> list[str]:
        return [str(d) for d in self.diagnostics]

    @property
    def ok(self) -> bool:
        return self.exit_status == 0 and not self.timed_out

    @property
    def fatal_error(self) -> Diagnostic | None:
        """The diagnostic that ended the script, if one did."""
        return next((d for d in reversed(self.diagnostics) if d.type & _FATAL), None)

    def describe(self) -> str:
        """One line on how the execution ended (for logs and exceptions)."""
        if self.timed_out:
            return f"timed out after {self.time_limit:g} s" if self.time_limit else "was stopped"
        fatal = self.fatal_error
        if fatal is not None:
            return str(fatal)
        return f"exit status {self.exit_status}"

    def raise_for_status(self) -> Result:
        """This result if the script ended with exit status 0 in time; :class:`PHPError`
        otherwise (its message shows the fatal error with its file and line, if one ended the
        script)."""
        __tracebackhide__ = True  # pytest: the failure shows the caller's line, not this one
        if self.exit_status == 0 and not self.timed_out:
            return self
        raise PHPError(self)


# ``Result(...)`` (positional arguments in field order) at a fraction of the cost: built in C
# (csrc/fastcall.c) with its slots set directly, without the frozen dataclass's __init__, which
# sets each field through ``object.__setattr__``.  For the fast paths, which build one per
# execution.
_fastcall.set_result_type(Result)
new_result: Callable[[int, bytes, tuple[Diagnostic, ...], bool, float, float | None, bytes], Result] = (
    _fastcall.new_result)


class PHPError(RuntimeError):
    """A PHP execution that failed (:meth:`Result.raise_for_status`); ``result`` is its Result."""

    def __init__(self, result: Result) -> None:
        self.result = result
        how = result.describe()
        status = f"exit status {result.exit_status}"
        where = "" if how == status else f" ({status})"
        super().__init__(f"PHP execution failed{where}: {how}")


def _encode(value: str | bytes | int | float | bool) -> bytes:
    if isinstance(value, bytes):
        data = value
    elif isinstance(value, bool):
        data = b"1" if value else b""
    else:
        data = str(value).encode("utf-8", "surrogateescape")
    if b"\0" in data:
        raise ValueError(f"NUL byte in {value!r}")
    return data


def pack_strings(items: Sequence[str]) -> bytes:
    """``items`` as one block of NUL-terminated strings (the form of ``fp_request.env``);
    ValueError if one holds a NUL byte."""
    block = "\0".join(items).encode("utf-8", "surrogateescape")
    if block.count(b"\0") != max(len(items) - 1, 0):
        raise ValueError(f"NUL byte in one of {list(items)!r}")
    return block  # ffi.new("char[]", block) adds the last NUL


def env_block(pairs: Sequence[tuple[str, str]]) -> Any:
    """The C block of ``$_SERVER``/``getenv()`` pairs for ``fp_request.env``."""
    return ffi.new("char[]", pack_strings([item for pair in pairs for item in pair]))


class CArgv:
    """A NULL-terminated ``char *argv[]`` and the strings it points into."""

    def __init__(self, argv: Sequence[str]) -> None:
        block = pack_strings(argv)
        self.buffer = ffi.new("char[]", block)
        pointers, offset = [], 0
        for _ in argv:
            pointers.append(self.buffer + offset)
            offset = block.find(b"\0", offset) + 1
        self.array = ffi.new("char *[]", [*pointers, ffi.NULL])
        self.count = len(argv)


@dataclass(frozen=True)
class ScriptArgs:
    """The C form of a script path, its ``$_SERVER``/``getenv()`` pairs and its ``$argv``:
    built once per distinct call and reusable (the runtime caches them per script)."""

    script: Any
    env: Any
    env_pairs: int
    argv: CArgv

    @classmethod
    def build(cls, script: str | None, pairs: Sequence[tuple[str, str]], argv: Sequence[str]) -> ScriptArgs:
        return cls(
            script=ffi.new("char[]", _encode(script)) if script is not None else ffi.NULL,
            env=env_block(pairs),
            env_pairs=len(pairs),
            argv=CArgv(argv),
        )


_REQUEST_SIZE = ffi.sizeof("fp_request")
_ZERO_REQUEST = bytes(_REQUEST_SIZE)
KEPT_OUTPUT_BUFFER = 1 << 20  # a reused request keeps an output buffer up to this size


class Request:
    """The ``fp_request`` struct of one execution and the C memory it points to.

    ``shared`` is a PHP thread's own struct, reused execution after execution: it keeps its
    output buffer (C reallocates it as it grows), which saves an allocation and a C call, and
    the previous response's header block, which the glue frees (both belong to the glue)."""

    def __init__(self, shared: Any = None) -> None:
        self.shared = shared is not None
        if shared is None:
            self.struct = ffi.new("fp_request *")
        else:
            output, capacity, headers = shared.output, shared.output_cap, shared.headers
            ffi.memmove(shared, _ZERO_REQUEST, _REQUEST_SIZE)
            shared.output, shared.output_cap, shared.headers = output, capacity, headers
            self.struct = shared
        self._keep: list[Any] = []

    def cstr(self, value: str | bytes | int | float | bool) -> Any:
        buf = ffi.new("char[]", _encode(value))
        self._keep.append(buf)
        return buf

    def set_env(self, pairs: Sequence[tuple[str, str]]) -> None:
        block = env_block(pairs)
        self._keep.append(block)
        self.struct.env = block
        self.struct.env_pairs = len(pairs)

    def set_stdin(self, data: bytes) -> None:
        """What STDIN reads (the glue reads it in place: kept alive with the request)."""
        buf = ffi.from_buffer(data)
        self._keep.append(buf)
        self.struct.stdin_data = buf
        self.struct.stdin_len = len(data)

    def apply(self, args: ScriptArgs) -> None:
        """Point the struct at prepared script, environment and argv."""
        self._keep.append(args)
        self.struct.script_path = args.script
        self.struct.env = args.env
        self.struct.env_pairs = args.env_pairs
        self.struct.argv = args.argv.array
        self.struct.argc = args.argv.count


def script_server_vars(script: str, document_root: str = "") -> dict[str, str]:
    """``$_SERVER`` entries that name the script being run outside HTTP (as the CLI sets them)."""
    return {
        "SCRIPT_FILENAME": script,
        "SCRIPT_NAME": script,
        "PHP_SELF": script,
        "PATH_TRANSLATED": script,
        "DOCUMENT_ROOT": document_root,
    }


def env_pairs(*layers: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """Merge environment layers (later ones win) into validated NAME/VALUE pairs."""
    merged: dict[str, Any] = {}
    for layer in layers:
        if layer:
            merged.update(layer)
    pairs = []
    for name, value in merged.items():
        if not isinstance(name, str) or not name or "=" in name:
            raise ValueError(f"invalid environment variable name {name!r}")
        pairs.append((name, value if isinstance(value, str) else str(value)))
    return pairs


class Execution:
    """Host side of one execution in progress: receives the glue's callbacks."""

    def __init__(
        self,
        thread: PHPThread | None,
        *,
        output: Callable[[bytes], Any] | None = None,
        timeout: float | None = None,
        logger: logging.LoggerAdapter[logging.Logger] | None = None,
        worker_ready: Callable[[], None] | None = None,
        honor_initial_time_limit: bool = True,
        reuse_request: bool = False,
    ) -> None:
        timeout = check_timeout(timeout)
        self.thread = thread
        self.request = Request(thread.request if thread is not None and reuse_request else None)
        self.output = output
        self.timeout = timeout
        self.logger = logger or (thread.logger if thread is not None else php_logger_adapter)
        self.worker_ready = worker_ready
        self.honor_initial_time_limit = honor_initial_time_limit
        self.initial_limit: float | None = None  # max_execution_time at start, when not applied
        self.diagnostics: list[Diagnostic] = []
        self.started = time.monotonic()
        self.deadline: float | None = None
        self.limit: float | None = None  # the limit that set the deadline, for messages
        self.stopped = False  # fp_interrupt() reached it
        self.output_error: Exception | None = None  # output that could not be delivered
        self.watched = False  # registered with the watchdog (only once it has a deadline)
        self.lock = threading.Lock()
        self.handle = ffi.new_handle(self)
        self.request.struct.handle = self.handle
        self.request.struct.worker_fd = -1
        if thread is not None:
            self.request.struct.worker_ctx = thread.worker_ctx
        self.request.struct.content_length = -1

    # --- time limits (the watchdog reads deadline/limit under self.lock) ---------------------
    def set_deadline(self, seconds: float | None) -> None:
        """Arm (or with None, disarm) the stop ``seconds`` from now; the tighter of the
        execution's ``timeout`` and PHP's own limit wins."""
        now = time.monotonic()
        candidates = []
        seconds = _limit(seconds)
        if seconds is not None:
            candidates.append((now + seconds, seconds))
        if self.timeout is not None:
            candidates.append((self.started + self.timeout, self.timeout))
        self._arm(*(min(candidates) if candidates else (None, None)))

    def stop_now(self) -> None:
        """Force-stop the script (the watchdog interrupts it, and again until it ends)."""
        self._arm(time.monotonic(), self.limit)

    def _arm(self, deadline: float | None, limit: float | None) -> None:
        # Executions without a deadline never touch the watchdog: waking its thread costs the
        # caller the GIL on every call.
        with self.lock:
            self.deadline, self.limit = deadline, limit
            first = deadline is not None and not self.watched
            self.watched = self.watched or first
        if self.thread is None:
            return
        if first:
            self.thread.watchdog.watch(self)
        elif self.watched:
            self.thread.watchdog.wake()

    def interrupt(self, seconds: float) -> None:
        """Called by the watchdog at the deadline: stop the script if it is still running."""
        if self.thread is None:
            return
        exec_id = self.request.struct.exec_id  # 0 until the script has started
        # PHP's message ("Maximum execution time of N seconds") takes whole seconds.
        whole = math.ceil(seconds)
        if exec_id and lib.fp_image_interrupt(self.thread.image.handle, exec_id, whole, INTERRUPT_SIGNAL):
            self.stopped = True

    def run(self) -> Result:
        """Execute the prepared request on the calling thread (GIL released while PHP runs)."""
        assert self.thread is not None, "an execution needs a PHP thread to run on"
        self.started = time.monotonic()
        if self.timeout is not None:
            self.set_deadline(None)
        req = self.request.struct
        thread = self.thread
        thread.current, thread.since = self, time.time()
        thread.executions += 1
        try:
            lib.fp_image_execute(thread.image.handle, req)
        finally:
            thread.current, thread.since = None, time.time()
            thread.memory_usage = req.memory_usage
            if self.watched:
                thread.watchdog.unwatch(self)
        try:
            self.collect(req)
            output = bytes(ffi.buffer(req.output, req.output_len)) if req.output_len else b""
            return Result(
                exit_status=req.exit_status,
                output=output,
                diagnostics=tuple(self.diagnostics),
                timed_out=self.stopped,
                duration=time.monotonic() - self.started,
                time_limit=self.limit,
                stderr=bytes(ffi.buffer(req.stderr_output, req.stderr_len)) if req.stderr_len else b"",
            )
        finally:
            # (a shared struct is zeroed for its next execution: its STDERR buffer goes now)
            if not self.request.shared or req.output_cap > KEPT_OUTPUT_BUFFER or req.stderr_cap:
                lib.fp_image_request_clear(self.thread.image.handle, req)

    # --- callbacks ------------------------------------------------------------------------------
    def on_log(self, diagnostic: Diagnostic) -> None:
        self.diagnostics.append(diagnostic)
        log_diagnostic(self.logger, diagnostic)

    def collect(self, req: Any) -> None:
        """Take what is needed from the finished request before its C memory goes (HTTP
        executions read their response headers here)."""

    def on_output(self, data: bytes) -> bool:
        """Deliver output; False when its reader has gone away (the script is then aborted)."""
        if self.output is not None:
            self.output(data)
        return True

    def output_failed(self, exc: Exception) -> None:
        """Output could not be delivered (``exc``): the glue stops the script; the caller
        learns it from :attr:`output_error` (the runtime raises it)."""
        if self.output_error is None:
            self.output_error = exc
        self.logger.error("output lost, script stopped: %r", exc)

    def on_stderr(self, data: bytes) -> None:
        """STDERR of a worker or an HTTP request: to the log, a line at a time (a plain
        execution collects it in ``Result.stderr`` instead)."""
        for line in data.decode("utf-8", "replace").splitlines():
            if line:
                self.logger.warning("stderr: %s", line)

    def read_body(self, size: int) -> bytes:
        """Up to ``size`` bytes of the request body (HTTP executions override this)."""
        return b""

    def next_request(self) -> Execution | None:
        """The next request of an HTTP worker, or None once drained (HTTP workers override)."""
        return None

    def request_done(self, request: Execution) -> None:
        """The request handed out by next_request() is complete (HTTP workers override)."""

    def on_ready(self) -> None:
        if self.worker_ready is not None:
            self.worker_ready()

    def on_time_limit(self, seconds: int, initial: bool = False) -> None:
        if initial and not self.honor_initial_time_limit:
            # Workers do not run under the max_execution_time in force at start
            # (set_time_limit(0) semantics); HTTP workers apply it to each request instead.
            self.initial_limit = _limit(float(seconds))
            return
        self.set_deadline(float(seconds))


def log_diagnostic(logger: logging.LoggerAdapter[logging.Logger], diagnostic: Diagnostic) -> None:
    if diagnostic.type & _FATAL:
        level = logging.ERROR
    elif diagnostic.type & _WARNING or not diagnostic.type:
        level = logging.WARNING
    else:
        level = logging.INFO
    logger.log(level, "%s", diagnostic)


def unpack_diagnostics(data: bytes, count: int) -> tuple[Diagnostic, ...]:
    """The diagnostics fp_fast_execute() packed (csrc/serve.h, fp_fast_call.diag)."""
    fields = data.split(b"\0")
    out = []
    for i in range(0, 4 * count, 4):
        type_, line, file, message = fields[i:i + 4]
        out.append(Diagnostic(
            type=int(type_), message=message.decode("utf-8", "replace"),
            file=file[1:].decode("utf-8", "replace") if file[:1] == b"F" else None, line=int(line),
        ))
    return tuple(out)


def _execution(handle: Any) -> Execution | None:
    return ffi.from_handle(handle) if handle != ffi.NULL else None


def _output_failed(exc_type: Any, exc: Any, tb: Any) -> int:
    php_logger.error("output callback failed", exc_info=(exc_type, exc, tb))
    return -1  # never lose output silently: PHP stops the script as if its reader had gone


@ffi.def_extern(onerror=_output_failed)
def fp_py_output(handle: Any, data: Any, length: int) -> int:
    execution = _execution(handle)
    if execution is None:
        return 0
    try:
        delivered = execution.on_output(bytes(ffi.buffer(data, length)))
    except Exception as exc:  # the output is lost (MemoryError, the caller's callable ...)
        execution.output_failed(exc)
        return -1  # PHP stops the script as if its reader had gone
    return 0 if delivered else -1  # -1: the client is gone


@ffi.def_extern(onerror=lambda *exc: php_logger.error("log callback failed", exc_info=exc))
def fp_py_log(handle: Any, type_: int, file: Any, line: int, message: Any) -> None:
    diagnostic = Diagnostic(
        type=type_,
        message=ffi.string(message).decode("utf-8", "replace"),
        file=ffi.string(file).decode("utf-8", "replace") if file != ffi.NULL else None,
        line=line,
    )
    execution = _execution(handle)
    if execution is not None:
        execution.on_log(diagnostic)
        return
    collected = startup_diagnostics()
    if collected is not None:
        collected.append(diagnostic)
    php_logger.warning("%s", diagnostic, extra={"worker": "-"})


@ffi.def_extern(onerror=lambda *exc: php_logger.error("time limit callback failed", exc_info=exc))
def fp_py_time_limit(handle: Any, seconds: int, initial: int) -> None:
    execution = _execution(handle)
    if execution is not None:
        execution.on_time_limit(seconds, bool(initial))


@ffi.def_extern(onerror=lambda *exc: php_logger.error("worker callback failed", exc_info=exc))
def fp_py_worker_ready(handle: Any) -> None:
    execution = _execution(handle)
    if execution is not None:
        execution.on_ready()


@ffi.def_extern(onerror=lambda *exc: php_logger.error("body callback failed", exc_info=exc))
def fp_py_read_body(handle: Any, buf: Any, size: int) -> int:
    execution = _execution(handle)
    if execution is None:
        return 0
    data = execution.read_body(size)[:size]
    ffi.memmove(buf, data, len(data))
    return len(data)


@ffi.def_extern(onerror=lambda *exc: php_logger.error("next request callback failed", exc_info=exc))
def fp_py_next_request(handle: Any, next_request: Any) -> int:
    execution = _execution(handle)
    request = execution.next_request() if execution is not None else None
    if request is None:
        return 0
    next_request[0] = request.request.struct
    return 1


@ffi.def_extern(onerror=lambda *exc: php_logger.error("request done callback failed", exc_info=exc))
def fp_py_request_done(handle: Any, done: Any) -> None:
    execution = _execution(handle)
    if execution is not None:
        request = _execution(done.handle)
        if request is not None:
            execution.request_done(request)


@ffi.def_extern(onerror=lambda *exc: php_logger.error("stderr callback failed", exc_info=exc))
def fp_py_stderr_output(handle: Any, data: Any, length: int) -> None:
    execution = _execution(handle)
    if execution is not None:
        execution.on_stderr(bytes(ffi.buffer(data, length)))


from . import php_functions  # noqa: E402, F401  (defines the ABI 9 callbacks the loader calls)
