"""The runtime: PHP threads in one process, regular executions, and the workers beside them."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import os
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, TypeVar

from . import _fastcall, _native
from .execution import (
    KEPT_OUTPUT_BUFFER,
    Diagnostic,
    Execution,
    Result,
    ScriptArgs,
    check_timeout,
    env_pairs,
    log_diagnostic,
    new_result,
    script_server_vars,
    unpack_diagnostics,
)
from .images import POOL, Image, extension_load_order
from .scaling import Autoscaler, RegularThreads, StallWatch, ThreadSource, WorkerThreads, resolve_max_threads
from .threads import POOL_TIMEOUT, PHPThread, ThreadPool, Watchdog
from .worker_state import RUNNING, wrap
from .workers import WorkerGroup, WorkerStatus

logger = logging.getLogger("frankenpy")
ffi, lib = _native.ffi, _native.lib
_calls = threading.local()  # each Python thread's fp_fast_call (its buffers are reused)
FAST_NOT_FOUND = -5  # csrc/serve.h FP_FAST_NOT_FOUND
_fast_execute, _unpack = lib.fp_fast_execute_for_python, ffi.unpack
_Method = TypeVar("_Method", bound=Callable[..., Any])

# php_ini keys frankenpy sets itself or that would load code behind its back.
_RESERVED_INI = {"extension": "extensions=[...]", "zend_extension": "extensions=[...] / opcache=True"}
_INI_KEY = re.compile(r"^[A-Za-z0-9_.\-]+$")
# What php.ini takes unquoted: words (paths, numbers, bare words such as On), and expressions of
# constants and numbers with the ini operators and parentheses (E_ALL & ~E_DEPRECATED); an
# operator alone ("&") is a string.
_INI_WORDS = re.compile(r"^[A-Za-z0-9_.\-+/:,@]+( [A-Za-z0-9_.\-+/:,@]+)*$")
_INI_EXPRESSION = re.compile(r"^(?=.*\w)(?=.*[|&^~!()])[\w\s|&^~!()]+$")
# Every PHP thread has its own opcache segment: keep the defaults small (PHP's are 128 MB and an
# 8 MB interned-strings buffer, which alone costs each thread ~2 MB of resident memory).
OPCACHE_DEFAULTS = {
    "opcache.enable": "1",
    "opcache.memory_consumption": "32",
    "opcache.interned_strings_buffer": "2",
    "opcache.jit": "off",
}

PHPValue = str | int | float | bool
DEFAULT_MAX_OUTPUT_SIZE = 64 * 1024 * 1024  # bytes an execution may collect in Result.output
PREPARED_SCRIPTS = 256  # execute_file() calls without env/argv reuse their C arguments per script


def _fast_method(kind: int) -> Callable[[_Method], _Method]:
    """The method as written, with its common case (one positional str: an absolute path for
    execute_file, code for execute_code; the runtime running) run in C by csrc/fastcall.c, from
    the arguments the method prepared on an earlier call; any other call runs the method."""

    def wrap(method: _Method) -> _Method:
        return functools.update_wrapper(_fastcall.fast_method(method, kind), method)  # type: ignore[return-value]

    return wrap


def _positive(timeout: float) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise ValueError(f"timeout must be a number > 0 (seconds), got {timeout!r}")
    return float(timeout)


def _ini_quote(text: str) -> str:
    """``text`` as a literal php.ini value: single-quoted pieces (no escapes, no ${} expansion
    inside), with each ``'`` as a double-quoted piece; PHP joins adjacent pieces."""
    pieces = text.split("'")
    return '"\'"'.join(f"'{piece}'" if piece else "" for piece in pieces)


def ini_text(settings: Mapping[str, PHPValue]) -> str:
    """php.ini lines for ``settings``, each value as the same line of a php.ini file would read
    (words, constants and expressions bare, anything else quoted); ValueError naming the option
    at fault.  A value PHP's parser then refuses fails the runtime's start, naming its line."""
    lines = []
    for key, value in settings.items():
        if not isinstance(key, str) or not _INI_KEY.match(key):
            raise ValueError(f"php_ini: invalid option name {key!r}")
        if key in _RESERVED_INI:
            raise ValueError(f"php_ini: {key!r} is not allowed here; use {_RESERVED_INI[key]}")
        if isinstance(value, bool):
            text = "1" if value else "0"
        elif isinstance(value, int | float | str):
            text = str(value)
        else:
            raise ValueError(f"php_ini: option {key!r} has a {type(value).__name__} value")
        if "\n" in text or "\r" in text or "\0" in text:
            raise ValueError(f"php_ini: option {key!r} has a value PHP's ini syntax cannot hold")
        if text and not _INI_WORDS.match(text) and not _INI_EXPRESSION.match(text):
            text = _ini_quote(text)
        lines.append(f"{key}={text}\n")
    return "".join(lines)


class BatchResults(Sequence[Result]):
    """The results of :meth:`Runtime.map_file` / :meth:`Runtime.map_code`, in the order of the
    items: a sequence whose Results are built from the C batch when first read (and kept), so
    that the batch itself runs without Python per item.  Compares equal to a list of the same
    Results."""

    __slots__ = ("_calls", "_pool", "_results")

    def __init__(self, pool: ThreadPool, calls: Any, n: int) -> None:
        self._pool = pool
        self._calls = calls
        self._results: list[Result | None] = [None] * n

    def __del__(self) -> None:
        calls = getattr(self, "_calls", None)
        if calls is not None:
            lib.fp_fast_calls_clear(calls, len(self._results))

    def settle(self) -> None:
        """After the batch, what cannot wait for a read: a closed pool raises, a PHP thread
        given up goes back, and diagnostics are logged (their Results are built now)."""
        calls, pool = self._calls, self._pool
        closed = False
        for i in range(len(self._results)):
            call = calls[i]
            if call.member < 0:
                closed = True  # (after the loop: a later item may hold a thread given up)
            elif call.given_up or call.diag_count:
                self._results[i] = Runtime._fast_result(pool, call)
        if closed:
            raise RuntimeError("the runtime is shut down")

    def __len__(self) -> int:
        return len(self._results)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self._results)))]
        result = self._results[index]  # (IndexError, negative indices)
        if result is None:
            i = index + len(self._results) if index < 0 else index
            call = self._calls[i]
            length, limit, err = call.output_len, call.time_limit, call.stderr_len
            result = self._results[i] = new_result(
                call.exit_status,
                ffi.unpack(call.output, length) if length else b"",
                (),  # (calls with diagnostics were settled)
                call.timed_out != 0,
                call.duration_ns / 1e9,
                float(limit) if limit else None,
                ffi.unpack(call.stderr_output, err) if err else b"",
            )
        return result

    def __iter__(self) -> Iterator[Result]:
        for i in range(len(self._results)):
            yield self[i]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, BatchResults | list | tuple):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"BatchResults({list(self)!r})"


ASYNC_BATCH = 64  # completions handled per event-loop callback (the loop is never held long)
ASYNC_IDLE_CLOSE = 2.0  # s: an idle loop's eventfd and C workers go after this long
_orphans: list[Any] = []  # calls C may still run after their loop went away (never freed)


def _release_async(handle: Any, pending: dict[int, Any]) -> None:
    with _AsyncCompletions.lock:  # never while a StallWatch reads the counters of `handle`
        lib.fp_async_release(handle)
    if pending:  # a C worker may still write into them: never free their memory
        _orphans.append(pending)


class _AsyncCompletions:
    """One event loop's eventfd (csrc/serve.h fp_async), its C workers, and the calls in flight,
    for one runtime's pool: two runtimes used from one loop have a queue and workers each, so
    that a call never waits behind another runtime's calls (nor for its PHP threads)."""

    _by_loop: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop,
                                                 dict[ThreadPool, _AsyncCompletions]]] = (
        weakref.WeakKeyDictionary())
    # Those with a C handle, for the runtimes' autoscaling (stalls): read from a StallWatch
    # thread, so a handle is created, read and released under `lock` (an RLock: the garbage
    # collector may run _release_async in the reading thread).
    _live: ClassVar[weakref.WeakSet[_AsyncCompletions]] = weakref.WeakSet()
    lock: ClassVar[threading.RLock] = threading.RLock()

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop, pool: ThreadPool) -> _AsyncCompletions:
        per_pool = cls._by_loop.get(loop)
        if per_pool is None:
            per_pool = cls._by_loop[loop] = {}
        completions = per_pool.get(pool)
        if completions is None:
            completions = per_pool[pool] = cls(loop, pool)
        return completions

    @classmethod
    def stalls(cls, pool: ThreadPool) -> tuple[dict[int, int], int]:
        """For autoscaling: the stall counts (fp_async_stalls) of the queues of `pool`, one per
        loop (by id), and the longest wait (ns) of a call still queued in one of them.  Also
        starts workers for the PHP threads added since (fp_async_kick)."""
        counts: dict[int, int] = {}
        longest = 0
        oldest = ffi.new("uint64_t *")
        with cls.lock:
            for completions in list(cls._live):
                if completions.pool is pool and completions.handle is not None:
                    counts[id(completions)] = int(lib.fp_async_stalls(completions.handle, oldest))
                    longest = max(longest, int(oldest[0]))
                    lib.fp_async_kick(completions.handle, pool.handle)
        return counts, longest

    def __init__(self, loop: asyncio.AbstractEventLoop, pool: ThreadPool) -> None:
        self._loop = weakref.ref(loop)  # (a strong one would keep the loop's entry forever)
        self.pool = pool
        self.handle: Any = None
        self._release: weakref.finalize | None = None
        self.pending: dict[int, tuple[asyncio.Future[None], Any, Any]] = {}
        self._out = ffi.new("fp_fast_call *[]", ASYNC_BATCH)
        self._close_timer: asyncio.TimerHandle | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop()
        assert loop is not None
        return loop

    def submit(self, call: Any, keep: Any) -> asyncio.Future[None]:
        loop = self.loop
        if self.handle is None:
            with self.lock:
                handle = lib.fp_async_new()
                if handle == ffi.NULL:
                    raise OSError("cannot create an eventfd")
                self.handle = handle
                self._live.add(self)
            # Also when the loop goes away unclosed (the pending calls are kept alive then).
            self._release = weakref.finalize(self, _release_async, handle, self.pending)
            loop.add_reader(lib.fp_async_fd(handle), self._ready)
        future = loop.create_future()
        if lib.fp_async_submit(self.handle, self.pool.handle, call) != 0:
            raise RuntimeError("cannot start a thread for the execution")
        self.pending[int(ffi.cast("uintptr_t", call))] = (future, call, keep)
        return future

    def _ready(self) -> None:
        try:
            os.eventfd_read(lib.fp_async_fd(self.handle))
        except BlockingIOError:
            pass
        self._drain()

    def _drain(self) -> None:
        """Up to ASYNC_BATCH completions; more in a later callback (read before taking: a
        completion that comes after the take writes the eventfd again)."""
        if self.handle is None:
            return
        out = self._out
        taken = lib.fp_async_take(self.handle, out, len(out))
        pending, pool = self.pending, self.pool
        for i in range(taken):
            future, call, _ = pending.pop(int(ffi.cast("uintptr_t", out[i])))
            if not future.cancelled():
                future.set_result(None)  # the task builds the Result
            elif call.given_up and call.member >= 0:
                pool.given_up(pool.thread(call.member))
        loop = self.loop
        if taken == len(out):
            loop.call_soon(self._drain)
        elif not pending and self._close_timer is None:
            self._close_timer = loop.call_later(ASYNC_IDLE_CLOSE, self._close_if_idle)

    def _close_if_idle(self) -> None:
        self._close_timer = None
        if not self.pending and self.handle is not None:
            loop = self.loop
            loop.remove_reader(lib.fp_async_fd(self.handle))
            with self.lock:
                self._live.discard(self)
                assert self._release is not None
                self._release()
                self.handle = self._release = None
            per_pool = self._by_loop.get(loop)
            if per_pool is not None and per_pool.get(self.pool) is self:
                del per_pool[self.pool]


class Runtime:
    """PHP threads in this process, and the workers declared on them.

    ``num_threads`` interpreters serve regular executions (``execute_file``/``execute_code``)
    and classic HTTP requests; each worker thread gets an interpreter of its own on top.
    ``php_ini`` applies to every interpreter (no system php.ini or scan dir is read),
    ``extensions`` names Debian shared extensions (``"ctype"``) or paths, ``opcache=True`` gives
    each interpreter its own opcode cache.  ``env`` is added to every execution's ``$_SERVER``.
    ``max_output_size`` bounds the output an execution collects into ``Result.output`` (bytes,
    None for no bound): past it the script ends with a fatal error (exit status 255).
    """

    def __init__(
        self,
        num_threads: int = 2,
        *,
        php_ini: Mapping[str, PHPValue] | None = None,
        extensions: Iterable[str] = (),
        opcache: bool = False,
        env: Mapping[str, str] | None = None,
        workers: Sequence[Any] = (),
        start_timeout: float = 10.0,
        name: str = "frankenpy",
        max_output_size: int | None = DEFAULT_MAX_OUTPUT_SIZE,
        max_threads: int | str | None = None,
        max_idle_time: float = 5.0,
    ) -> None:
        if not isinstance(num_threads, int) or isinstance(num_threads, bool) or num_threads < 1:
            raise ValueError(f"num_threads must be an integer >= 1, got {num_threads!r}")
        if max_output_size is not None and (
            not isinstance(max_output_size, int) or isinstance(max_output_size, bool) or max_output_size < 1
        ):
            raise ValueError(f"max_output_size must be an integer >= 1 or None, got {max_output_size!r}")
        self.max_output_size = max_output_size
        self.num_threads = num_threads
        # Autoscaling (frankenpy.scaling): regular threads grow up to max_threads under load.
        self.max_threads = resolve_max_threads(max_threads, php_ini or {}, num_threads)
        number = isinstance(max_idle_time, int | float) and not isinstance(max_idle_time, bool)
        if not number or max_idle_time <= 0:
            raise ValueError(f"max_idle_time must be a number of seconds > 0, got {max_idle_time!r}")
        self.max_idle_time = float(max_idle_time)
        self._scaler: Autoscaler | None = None
        self._regular: RegularThreads | None = None
        # aexecute_* calls queue in C, where Python's on_starved never sees them: polled.
        self._async_stall_watch: StallWatch | None = None
        self.php_ini = dict(php_ini or {})
        self._user_ini = ini_text(self.php_ini)
        self.extensions = extension_load_order([str(e) for e in extensions])
        self.opcache = bool(opcache)
        if self.opcache:
            self._check_opcache_sizes()
        self.env = dict(env or {})
        self._base_env = env_pairs(self.env)
        self._prepared: dict[str | None, _fastcall.Prepared] = {}  # per script; None: code
        self._fast: _fastcall.Running | None = None  # while running: what the C path needs
        self.start_timeout = start_timeout
        self.name = name
        self.workers_group = WorkerGroup(self, workers)
        self._images: list[Image] = []
        self._threads: list[PHPThread] = []
        self._pool: ThreadPool | None = None
        self._watchdog = Watchdog(name)
        self._state_lock = threading.Lock()
        self._start_done = threading.Event()  # set when start() has returned or raised
        self._stop_grace = 1.0  # shutdown()'s grace, for a shutdown that arrives during start()
        self.state = "new"

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> Runtime:
        """Start the interpreters, then the workers (see :meth:`WorkerGroup.start`)."""
        with self._state_lock:
            if self.state != "new":
                raise RuntimeError(f"runtime {self.name} is {self.state}; a Runtime starts once")
            self.state = "starting"
        started = time.monotonic()
        try:
            self._watchdog.start()
            self._images = POOL.acquire(self.num_threads + self.workers_group.thread_count)
            any_scope = self.workers_group.domain.context(-1)
            for image in self._images:
                self._check_not_stopped()
                thread = PHPThread(image, self.ini_for(image), self._watchdog, f"php-{image.index}")
                thread.start()
                thread.worker_ctx = any_scope
                self._threads.append(thread)
            self._pool = ThreadPool(self._threads[: self.num_threads])
            self.workers_group.start(self._threads[self.num_threads :])
            self._start_scaling()
            with self._state_lock:
                self._check_not_stopped()
                self.state = "running"
                pool = self._pool
                self._fast = _fastcall.Running(pool, int(ffi.cast("uintptr_t", pool.handle)), self._prepared)
        except BaseException:
            if self._scaler is not None:
                self._scaler.stop()
            self.workers_group.stop(self._stop_grace)
            self._teardown(self._stop_grace)
            self.state = "stopped"
            raise
        finally:
            self._start_done.set()
        logger.info(
            "runtime %s started %d PHP threads (%d for workers) in %.1f ms",
            self.name, len(self._threads), len(self._threads) - self.num_threads,
            (time.monotonic() - started) * 1000, extra={"worker": "-"},
        )
        return self

    def shutdown(self, grace: float = 30.0) -> None:
        """Drain workers and wait for running executions; force-stop scripts still running
        after ``grace`` seconds (waiting up to FORCE_STOP_WAIT more for them), then let go of
        every interpreter.  From another thread during start(), makes start() raise
        RuntimeError and returns once it has.  Idempotent."""
        with self._state_lock:
            state = self.state
            if state == "new":
                self.state = "stopped"
            elif state in ("starting", "running"):
                self.state = "stopping"
                self._fast = None  # new calls take the Python path, which raises
                self._stop_grace = grace
        if state == "starting":
            self.workers_group.close()  # cuts start()'s wait for the workers short
            self._start_done.wait()  # start() sees the state and tears everything down
            return
        if state != "running":
            return
        if self._async_stall_watch is not None:
            self._async_stall_watch.stop()
        if self._scaler is not None:
            self._scaler.stop()  # before the threads it adds and removes go away
        self.workers_group.stop(grace)
        self._teardown(grace)
        self.state = "stopped"

    def _check_not_stopped(self) -> None:
        if self.state != "starting":
            raise RuntimeError(f"runtime {self.name} was shut down during start()")

    def _teardown(self, grace: float) -> None:
        """Give every interpreter back to the image pool, each once no script runs on it:
        a regular execution or a worker script still running (force-stopped, but not back yet)
        keeps its interpreter until it returns; only then is its image released."""
        pool, self._pool = self._pool, None
        back = set(pool.close(grace, self._release_thread) if pool is not None else ())
        pooled = set(pool.threads) if pool is not None else set()
        by_php = {id(t.php): t for t in self.workers_group.threads}
        owned = {id(t.image) for t in self._threads}
        for thread in self._threads:
            if thread in pooled and thread not in back:
                continue  # ThreadPool.close() calls _release_thread when it is back
            worker = by_php.get(id(thread))
            if worker is not None and worker.when_php_free(self._release_thread):
                logger.error("PHP thread %s is still running a worker script; its interpreter "
                             "is released when the script ends", thread.name,
                             extra={"worker": thread.name})
                continue
            self._release_thread(thread)
        # Images whose PHP thread never started (start() failed before it).
        POOL.release([image for image in self._images if id(image) not in owned])
        self._watchdog.stop()
        self._threads, self._images = [], []

    # --- autoscaling (policy in frankenpy.scaling) -----------------------------------------------
    def _start_scaling(self) -> None:
        assert self._pool is not None
        sources: list[ThreadSource] = []
        regular = None
        if self.max_threads > self.num_threads:
            regular = RegularThreads(self, self.max_threads)
            sources.append(regular)
        workers = [WorkerThreads(self, w) for w in self.workers_group.workers
                   if not w.background and w.max_threads > w.num]
        sources.extend(workers)
        if not sources:
            return
        scaler = Autoscaler(sources, max_idle_time=self.max_idle_time)
        if regular is not None:
            self._pool.on_starved = lambda: scaler.starved(regular)
            self._regular = regular
        for source in workers:  # HTTP requests that wait for a worker thread signal it
            key = (source.worker.scope, source.worker.name)
            self.workers_group.scaling[key] = lambda source=source: scaler.starved(source)
        self._scaler = scaler.start()

    def _start_php_thread(self) -> PHPThread:
        """One more started PHP thread (autoscaling); the caller puts it to use."""
        image = POOL.acquire(1)[0]
        thread = PHPThread(image, self.ini_for(image), self._watchdog, f"php-{image.index}")
        try:
            thread.start()
        except BaseException:
            POOL.release([image])
            raise
        thread.worker_ctx = self.workers_group.domain.context(-1)  # frankenphp_get_vars() & co.
        self._threads.append(thread)
        return thread

    def _stop_php_thread(self, thread: PHPThread) -> None:
        """Give back a PHP thread no code runs on any more (autoscaling)."""
        self._threads.remove(thread)
        self._release_thread(thread)

    @staticmethod
    def _release_thread(thread: PHPThread) -> None:
        thread.detach()
        POOL.release([thread.image])

    def __enter__(self) -> Runtime:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def _check_opcache_sizes(self) -> None:
        """Opcache calls exit() on a segment too small for its interned strings: refuse it here."""
        sizes = {**OPCACHE_DEFAULTS, **{k: str(v) for k, v in self.php_ini.items()}}
        try:
            memory = int(sizes["opcache.memory_consumption"])
            interned = int(sizes["opcache.interned_strings_buffer"])
        except ValueError as exc:
            raise ValueError(f"php_ini: opcache sizes must be whole megabytes: {exc}") from None
        if memory < 8:
            raise ValueError(f"php_ini: opcache.memory_consumption must be >= 8 (MB), got {memory}")
        if not 0 <= interned < memory:
            raise ValueError(
                f"php_ini: opcache.interned_strings_buffer ({interned} MB) must be smaller than "
                f"opcache.memory_consumption ({memory} MB)"
            )

    def ini_for(self, image: Image) -> str:
        """The php.ini text of ``image``'s interpreter: extensions (its own copies), opcache,
        then the user's settings, which win."""
        lines = [f"extension={image.extension(name)}\n" for name in self.extensions]
        if self.opcache:
            lines.append(f"zend_extension={image.extension('opcache')}\n")
            lines.append(ini_text({k: v for k, v in OPCACHE_DEFAULTS.items() if k not in self.php_ini}))
        return "".join(lines) + self._user_ini

    # --- executions -----------------------------------------------------------------------------
    @_fast_method(_fastcall.FILE)
    def execute_file(
        self,
        path: str | os.PathLike[str],
        *,
        env: Mapping[str, str] | None = None,
        argv: Sequence[str] | None = None,
        timeout: float | None = None,
        output: Callable[[bytes], Any] | None = None,
        stdin: bytes | None = None,
    ) -> Result:
        """Run a PHP file on an idle PHP thread (waiting for one) and return its result.

        ``env`` adds to ``$_SERVER``, ``$_ENV`` and ``getenv()``; ``argv`` sets
        ``$argv``/``$argc`` (default: ``[path]``); ``timeout`` stops the script after that many
        seconds; ``output`` receives the output as it is written instead of collecting it (if it
        raises, the script is stopped and this method raises that exception); ``stdin`` is what
        ``STDIN`` / ``php://stdin`` read (default: nothing)."""
        # (an absolute str is taken as is: abspath() costs more than the rest of this method)
        script = path if isinstance(path, str) and path[:1] == "/" else os.path.abspath(os.fspath(path))
        args = self._prepare(script, env, argv)
        if timeout is None and output is None:
            # fp_fast_execute checks that the file exists, without the GIL (FP_FAST_NOT_FOUND)
            pool = self._pool
            if pool is None or self.state != "running":
                pool = self._running_pool()
            return self._execute_fast(pool, args, None, stdin)
        if not os.path.isfile(script):
            raise FileNotFoundError(f"PHP script not found: {script}")
        return self._execute(args, None, timeout, output, stdin)

    @_fast_method(_fastcall.CODE)
    def execute_code(
        self,
        code: str,
        *,
        env: Mapping[str, str] | None = None,
        argv: Sequence[str] | None = None,
        timeout: float | None = None,
        output: Callable[[bytes], Any] | None = None,
        stdin: bytes | None = None,
    ) -> Result:
        """Run PHP code given without its ``<?php`` tag; otherwise like :meth:`execute_file`."""
        if not isinstance(code, str):
            raise TypeError(f"code must be str, not {type(code).__name__}")
        return self._execute(self._prepare(None, env, argv), code, timeout, output, stdin)

    def _prepare(
        self, script: str | None, env: Mapping[str, str] | None, argv: Sequence[str] | None
    ) -> ScriptArgs:
        """The C arguments of running ``script`` (None: code).  Without env and argv, built once
        per script (up to PREPARED_SCRIPTS), with the fp_fast_call inputs that the C path of
        execute_file/execute_code (csrc/fastcall.c) copies."""
        if env or argv:
            return self._build_args(script, env, argv)
        prepared = self._prepared.get(script)
        if prepared is None:
            args = self._build_args(script, None, None)
            proto = ffi.new("fp_fast_call *")
            self._fill(proto, args, ffi.NULL, ffi.NULL, 0, check_script=script is not None)
            if len(self._prepared) >= PREPARED_SCRIPTS:
                self._prepared.clear()
            prepared = self._prepared[script] = _fastcall.Prepared(
                args, proto, int(ffi.cast("uintptr_t", proto)))
        return prepared.args

    def _build_args(
        self, script: str | None, env: Mapping[str, str] | None, argv: Sequence[str] | None
    ) -> ScriptArgs:
        server = script_server_vars(script) if script is not None else None
        pairs = env_pairs(self.env, server, env) if (env or server) else self._base_env
        return ScriptArgs.build(script, pairs, argv or [script or "Standard input code"])

    def _execute(
        self,
        args: ScriptArgs,
        code: str | None,
        timeout: float | None,
        output: Callable[[bytes], Any] | None,
        stdin: bytes | None = None,
    ) -> Result:
        check_timeout(timeout)  # before waiting for a thread
        if stdin is not None and not isinstance(stdin, bytes):
            raise TypeError(f"stdin must be bytes, not {type(stdin).__name__}")
        pool = self._running_pool()
        if output is None and timeout is None:
            return self._execute_fast(pool, args, code, stdin)
        thread = pool.acquire()
        assert thread is not None
        try:
            execution = Execution(thread, output=output, timeout=timeout, reuse_request=True)
            request = execution.request
            request.apply(args)
            if code is not None:
                request.struct.code = request.cstr(code)
            request.struct.output_mode = 1 if output is not None else 0  # FP_OUTPUT_STREAM / BUFFER
            request.struct.output_limit = self.max_output_size or 0
            if stdin:
                request.set_stdin(stdin)
            result = execution.run()
            if execution.output_error is not None:
                raise execution.output_error  # the script was stopped: its output is incomplete
            return result
        finally:
            pool.release(thread)

    def _execute_fast(
        self, pool: ThreadPool, args: ScriptArgs, code: str | None, stdin: bytes | None
    ) -> Result:
        """Acquire, set up, run and collect in C, the GIL released once (csrc/serve.h
        fp_fast_execute); PHP's own time limits are enforced by the C watcher.  Each Python
        thread reuses one fp_fast_call, filled again only when its arguments change."""
        caller = _calls.__dict__
        call = caller.get("call")
        if call is None:
            call = caller["call"] = ffi.gc(ffi.new("fp_fast_call *"), lib.fp_fast_call_clear)
        if code is not None or stdin is not None:
            if stdin is not None and not isinstance(stdin, bytes):
                raise TypeError(f"stdin must be bytes, not {type(stdin).__name__}")
            code_c = ffi.new("char[]", code.encode()) if code is not None else ffi.NULL
            stdin_c = ffi.from_buffer(stdin) if stdin else ffi.NULL
            self._fill(call, args, code_c, stdin_c, len(stdin) if stdin else 0, check_script=True)
            caller["args"] = (code_c, stdin_c)  # alive during the call; the next one fills again
        elif caller.get("args") is not args:
            self._fill(call, args, ffi.NULL, ffi.NULL, 0, check_script=True)
            caller["args"] = args  # (keeps the C strings the call points to alive)
        member = _fast_execute(pool.handle, -1, call)
        if member < 0:
            self._fast_retry(pool, call, member, args)
        if call.rare:
            return self._rare_result(pool, call)
        length = call.output_len  # the common case (csrc/fastcall.c common_result() in C)
        return new_result(call.exit_status, _unpack(call.output, length) if length else b"", (),
                          False, call.duration_ns / 1e9, None, b"")

    @staticmethod
    def _rare_result(pool: ThreadPool, call: Any) -> Result:
        """The Result of a finished call with something rare to look at (``call.rare``); output
        buffers grown past KEPT_OUTPUT_BUFFER are not kept for the next call."""
        result = Runtime._fast_result(pool, call)
        if call.output_cap > KEPT_OUTPUT_BUFFER or call.stderr_cap > KEPT_OUTPUT_BUFFER:
            lib.fp_fast_call_clear(call)
        return result

    @staticmethod
    def _fast_retry(pool: ThreadPool, call: Any, member: int, args: ScriptArgs) -> None:
        """fp_fast_execute found no idle PHP thread, no script, or the pool closed: queue for a
        thread and run, or raise."""
        if member == POOL_TIMEOUT:  # every PHP thread is busy: queue in line (from Python)
            thread = pool.acquire()
            assert thread is not None
            member = _fast_execute(pool.handle, pool.member_id(thread), call)
        if member == FAST_NOT_FOUND:
            if call.given_up:  # (it had the thread from the queue above)
                pool.given_up(pool.thread(call.member))
            script = ffi.string(args.script).decode("utf-8", "surrogateescape")
            raise FileNotFoundError(f"PHP script not found: {script}")
        if member < 0:
            raise RuntimeError("the runtime is shut down")

    def _fill(self, call: Any, args: ScriptArgs, code_c: Any, stdin_c: Any, stdin_len: int,
              check_script: bool = False) -> None:
        """Point ``call`` at its inputs.  ``check_script``: fp_fast_execute returns
        FP_FAST_NOT_FOUND unless the script is a file (only _execute_fast handles that)."""
        call.script_path = args.script
        call.check_script = check_script and code_c is ffi.NULL
        call.code = code_c
        call.env, call.env_pairs = args.env, args.env_pairs
        call.argv, call.argc = args.argv.array, args.argv.count
        call.output_limit = self.max_output_size or 0
        call.stdin_data, call.stdin_len = stdin_c, stdin_len

    @staticmethod
    def _fast_result(pool: ThreadPool, call: Any) -> Result:
        """The Result of a finished fp_fast_call (the PHP thread's counters are kept in C)."""
        if call.given_up:
            pool.given_up(pool.thread(call.member))
        diagnostics: tuple[Diagnostic, ...] = ()
        if call.diag_count:  # logged in a batch after the call, never dropped
            diagnostics = unpack_diagnostics(ffi.unpack(call.diag, call.diag_len), call.diag_count)
            log = pool.thread(call.member).logger
            for diagnostic in diagnostics:
                log_diagnostic(log, diagnostic)
        length, limit, err = call.output_len, call.time_limit, call.stderr_len
        return new_result(
            call.exit_status,
            ffi.unpack(call.output, length) if length else b"",
            diagnostics,
            call.timed_out != 0,
            call.duration_ns / 1e9,
            float(limit) if limit else None,
            ffi.unpack(call.stderr_output, err) if err else b"",
        )

    # --- asyncio ------------------------------------------------------------------------------
    async def aexecute_file(
        self,
        path: str | os.PathLike[str],
        *,
        env: Mapping[str, str] | None = None,
        argv: Sequence[str] | None = None,
        stdin: bytes | None = None,
    ) -> Result:
        """:meth:`execute_file` for asyncio: the script runs on a PHP thread (from a C thread,
        no Python thread) while the event loop goes on; completion reaches the loop through an
        eventfd.  Cancelling the task stops the script as a timeout does."""
        script = os.path.abspath(os.fspath(path))
        if not os.path.isfile(script):  # (before a thread is involved: the loop's own check)
            raise FileNotFoundError(f"PHP script not found: {script}")
        return await self._aexecute(self._prepare(script, env, argv), None, stdin)

    async def aexecute_code(
        self,
        code: str,
        *,
        env: Mapping[str, str] | None = None,
        argv: Sequence[str] | None = None,
        stdin: bytes | None = None,
    ) -> Result:
        """:meth:`execute_code` for asyncio; see :meth:`aexecute_file`."""
        if not isinstance(code, str):
            raise TypeError(f"code must be str, not {type(code).__name__}")
        return await self._aexecute(self._prepare(None, env, argv), code, stdin)

    async def _aexecute(self, args: ScriptArgs, code: str | None, stdin: bytes | None) -> Result:
        if stdin is not None and not isinstance(stdin, bytes):
            raise TypeError(f"stdin must be bytes, not {type(stdin).__name__}")
        pool = self._running_pool()
        call = ffi.gc(ffi.new("fp_fast_call *"), lib.fp_fast_call_clear)
        code_c = ffi.new("char[]", code.encode()) if code is not None else ffi.NULL
        stdin_c = ffi.from_buffer(stdin) if stdin else ffi.NULL
        self._fill(call, args, code_c, stdin_c, len(stdin) if stdin else 0)
        if self._regular is not None and self._async_stall_watch is None:
            self._watch_async_stalls()
        future = _AsyncCompletions.of(asyncio.get_running_loop(), pool).submit(
            call, (args, code_c, stdin_c, stdin))
        try:
            # Not shielded: cancelling us cancels `future`, while the loop's `pending` keeps the
            # C call's memory until C is done with it (_drain); a shield cost ~3 us per call.
            await future
        except asyncio.CancelledError:
            call.cancel = 1  # the C watcher stops the script (or it leaves the line)
            raise
        if call.member < 0:
            raise RuntimeError("the runtime is shut down")
        return self._fast_result(pool, call)

    def _watch_async_stalls(self) -> None:
        """From the first aexecute_* call of an autoscaled runtime on: a call that waits in C
        (every PHP thread busy) counts as a stall, as the native server's requests do."""
        pool, regular, scaler = self._pool, self._regular, self._scaler
        if regular is None or scaler is None or pool is None:
            return
        seen: dict[int, int] = {}  # per queue: its count so far
        total = [0]

        def probe() -> tuple[int, int]:
            counts, oldest = _AsyncCompletions.stalls(pool)
            # Queues come and go (closed when idle), with their counts: a running total of
            # the increases is what StallWatch compares.
            total[0] += sum(1 for key, count in counts.items() if count > seen.get(key, 0))
            seen.clear()
            seen.update(counts)
            return total[0], oldest

        with self._state_lock:
            if self._async_stall_watch is None and self.state == "running":
                self._async_stall_watch = StallWatch(scaler, [(regular, probe)]).start()

    # --- batches ------------------------------------------------------------------------------
    def map_file(self, path: str | os.PathLike[str], items: Iterable[Mapping[str, Any]]) -> BatchResults:
        """Run the PHP file once per item, across every regular PHP thread, with the GIL
        released once for the whole batch; the results in the order of ``items``.

        Each item is a mapping with optional ``env`` and ``argv`` keys (as :meth:`execute_file`'s
        arguments).  A failing item (fatal error, exit(n), time limit) does not stop the others:
        its Result says what happened.  The results are a sequence whose Results are built from
        the C batch as they are read (Python does nothing per item while the batch runs)."""
        script = os.path.abspath(os.fspath(path))
        if not os.path.isfile(script):
            raise FileNotFoundError(f"PHP script not found: {script}")
        return self._map(script, None, items)

    def map_code(self, code: str, items: Iterable[Mapping[str, Any]]) -> BatchResults:
        """Run PHP code (without its ``<?php`` tag) once per item; otherwise like :meth:`map_file`."""
        if not isinstance(code, str):
            raise TypeError(f"code must be str, not {type(code).__name__}")
        return self._map(None, code, items)

    def _map(self, script: str | None, code: str | None, items: Iterable[Mapping[str, Any]]) -> BatchResults:
        items = list(items)
        pool = self._running_pool()
        n = len(items)
        code_c = ffi.new("char[]", code.encode()) if code is not None else ffi.NULL
        calls = ffi.new("fp_fast_call[]", n)
        batch = BatchResults(pool, calls, n)  # frees the calls' buffers when it goes
        keep = []
        for index, item in enumerate(items):
            if type(item) is dict and not item:
                continue  # filled in C below (argv NULL: not filled yet)
            if not isinstance(item, Mapping):
                raise TypeError(f"map item {index} must be a mapping, not {type(item).__name__}")
            unknown = set(item) - {"env", "argv"}
            if unknown:
                raise ValueError(f"map item {index}: unknown key(s) {sorted(unknown)} (use env, argv)")
            env, argv = item.get("env"), item.get("argv")
            if env or argv:
                args = self._prepare(script, env, argv)
                keep.append(args)
                self._fill(calls[index], args, code_c, ffi.NULL, 0)
        plain = self._prepare(script, None, None)
        proto = ffi.new("fp_fast_call *")
        self._fill(proto, plain, code_c, ffi.NULL, 0)
        lib.fp_fast_calls_fill(calls, n, proto)
        # GIL released for the whole batch; only calls C flags are looked at here
        if lib.fp_fast_map(pool.handle, calls, n, max(pool.size, 1)):
            batch.settle()
        return batch

    @contextmanager
    def borrow_thread(self, timeout: float | None = None) -> Iterator[PHPThread | None]:
        """An idle regular PHP thread for the duration of the block (None after ``timeout``
        seconds without one).  RuntimeError unless the runtime is running."""
        pool = self._running_pool()
        thread = pool.acquire(timeout)
        try:
            yield thread
        finally:
            if thread is not None:
                pool.release(thread)

    def _running_pool(self) -> ThreadPool:
        if self.state != "running" or self._pool is None:
            raise RuntimeError(f"runtime {self.name} is {self.state}: call start() first")
        return self._pool

    def new_php_thread(self) -> PHPThread:
        """A PHP thread started now for a worker started on demand (lazy, catch-all), given back
        with the others at shutdown; RuntimeError once shutdown has begun."""
        with self._state_lock:  # (shutdown() cannot begin meanwhile: it would miss the thread)
            if self.state not in ("starting", "running"):
                raise RuntimeError(f"runtime {self.name} is {self.state}")
            return self._start_php_thread()

    # --- workers ------------------------------------------------------------------------------
    def ensure_background_worker(self, names: str | Sequence[str], timeout: float = 30.0, *,
                                 scope: int = -1) -> None:
        """Start the named background workers if they are not running and return once each is
        ready (``frankenphp_ensure_background_worker()``).  ``scope`` -1 finds names in any
        scope (global first).  RuntimeError (frankenpy.WorkerError) on a timeout, an unknown
        name without a catch-all, or a halted worker; ValueError for an empty list, an empty or
        duplicate name, or a timeout <= 0; TypeError for a name that is not a str."""
        listed = [names] if isinstance(names, str) else names
        if not isinstance(listed, list | tuple):
            raise TypeError(f"names must be a str or a list of str, not {type(names).__name__}")
        if not listed:
            raise ValueError("names must not be empty")
        seen: set[str] = set()
        for name in listed:
            if not isinstance(name, str):
                raise TypeError(f"worker names must be str, got {type(name).__name__}")
            if not name or "\0" in name:
                raise ValueError("worker names must not be empty")
            if name in seen:
                raise ValueError(f"worker name {name!r} given twice")
            seen.add(name)
        deadline = time.monotonic() + _positive(timeout)
        self._running_pool()
        for name in listed:
            self.workers_group.domain.acquire(scope, name, max(deadline - time.monotonic(), 0.001), RUNNING)

    def get_vars(self, name: str, timeout: float | None = None, *, scope: int = -1) -> Any:
        """A copy of the vars background worker ``name`` last published with
        ``frankenphp_set_vars()`` (a PHP list is a list, any other array a dict; {} before the
        first publication), waiting (``timeout``, default 30 s) until it has been ready once and
        starting it if lazy.  RuntimeError (WorkerError) on an unknown worker or a timeout."""
        if not isinstance(name, str):
            raise TypeError(f"name must be str, not {type(name).__name__}")
        self._running_pool()
        domain = self.workers_group.domain
        return domain.get_vars(domain.acquire(scope, name, _positive(30.0 if timeout is None else timeout)))

    def send_task(self, worker: str, payload: Any, timeout: float | None = 30.0, *, scope: int = -1) -> Any:
        """Hand ``payload`` (a dict or list) to background worker ``worker`` and return its answer
        (``frankenphp_complete_task()``'s result; {} for none).  TaskError when the worker fails
        the task or stops holding it, TaskTimeout (also a TimeoutError) after ``timeout``
        seconds (None: no limit), WorkerError when the worker cannot take it (unknown, halted,
        full queue)."""
        limit = -1.0 if timeout is None else _positive(timeout)
        started = time.monotonic()
        domain = self.workers_group.domain
        slot = self._task_slot(worker, payload, limit, scope)
        task_id = domain.submit(slot, payload, notify=False)
        left = -1.0 if limit < 0 else max(limit - (time.monotonic() - started), 0.001)
        return domain.wait(task_id, left)

    def submit_task(self, worker: str, payload: Any, timeout: float | None = 30.0, *,
                    scope: int = -1) -> concurrent.futures.Future[Any]:
        """Like :meth:`send_task`, but returns a Future at once (completed by the thread that
        answers the task).  Starting a lazy worker is waited for here."""
        limit = -1.0 if timeout is None else _positive(timeout)
        slot = self._task_slot(worker, payload, limit, scope)
        return self.workers_group.domain.future(slot, payload, None if limit < 0 else limit)

    async def asend_task(self, worker: str, payload: Any, timeout: float | None = 30.0, *,
                         scope: int = -1) -> Any:
        """The asyncio form of :meth:`send_task`: no thread per call, the answer reaches the
        event loop through ``call_soon_threadsafe``."""
        domain = self.workers_group.domain
        limit = -1.0 if timeout is None else _positive(timeout)
        try:
            slot = domain.acquire(scope, worker, 0.0, 0)  # already running: no wait
        except RuntimeError:
            loop = asyncio.get_running_loop()
            slot = await loop.run_in_executor(None, self._task_slot, worker, payload, limit, scope)
        return await wrap(domain.future(slot, payload, None if limit < 0 else limit))

    def _task_slot(self, worker: str, payload: Any, limit: float, scope: int) -> int:
        if not isinstance(worker, str):
            raise TypeError(f"worker must be str, not {type(worker).__name__}")
        if not isinstance(payload, dict | list | tuple):
            raise TypeError(f"payload must be a dict or a list, not {type(payload).__name__}")
        self._running_pool()
        return self.workers_group.domain.acquire(scope, worker, 30.0 if limit < 0 else limit, 0)

    def workers(self) -> list[WorkerStatus]:
        """One status per worker thread."""
        return self.workers_group.statuses()

    def restart_workers(self, grace: float = 6.0) -> list[WorkerStatus]:
        """Drain every worker and boot it again, halted ones included (FrankenPHP's
        RestartWorkers); regular executions keep being served meanwhile."""
        self._running_pool()
        return self.workers_group.restart(grace)

    def metrics_text(self) -> str:
        """Prometheus text exposition of FrankenPHP's metrics for this runtime."""
        from .metrics import exposition

        return exposition(self)

    # --- introspection ---------------------------------------------------------------------------
    @property
    def busy_threads(self) -> int:
        return self._pool.busy if self._pool else 0

    @property
    def queue_depth(self) -> int:
        return self._pool.waiting if self._pool else 0

    @property
    def total_threads(self) -> int:
        return len(self._threads)

    @property
    def php_threads(self) -> list[PHPThread]:
        """Every started PHP thread: the regular ones, then the workers' (admin API)."""
        return list(self._threads)

    @property
    def reserved_threads(self) -> int:
        """Regular PHP threads autoscaling may still add (FrankenPHP's reserved threads)."""
        return max(0, self.max_threads - (self._pool.size if self._pool else self.num_threads))


# The C path's hooks into frankenpy._native (the same fp_fast_call layout: one build).
_fastcall.setup(
    int(ffi.cast("uintptr_t", ffi.addressof(lib, "fp_fast_execute_for_python"))),
    int(ffi.cast("uintptr_t", ffi.addressof(lib, "fp_fast_call_clear"))),
    lambda pool, address: Runtime._rare_result(pool, ffi.cast("fp_fast_call *", address)),
    ffi.sizeof("fp_fast_call"),
    ffi.offsetof("fp_fast_call", "member"),
)
