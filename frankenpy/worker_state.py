"""Shared vars and tasks of background workers, from Python (the state itself is in C).

The process-wide state lives in ``frankenpy._native`` (``csrc/worker_state.h``): PHP threads
reach it through the glue without running Python.  This module holds the Python half:

* the neutral encoding (:func:`encode` / :func:`decode`) in which values cross interpreters:
  null, bool, int, float, string, and lists/maps of them (a PHP list becomes a Python list, any
  other array a dict; a Python str is sent as UTF-8, a PHP string that is not UTF-8 comes back
  as bytes);
* :class:`Domain`, one per runtime: the C domain, the callback that starts lazy and catch-all
  workers, and the futures of tasks sent from Python (completed from the thread that answers
  the task, with no Python thread per task).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import heapq
import itertools
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from . import _native

ffi, lib = _native.ffi, _native.lib

FAIL_FAST = 1  # FP_WS_FAIL_FAST
RUNNING = 2  # FP_WS_RUNNING
TASK_PENDING, TASK_DONE, TASK_FAILED = 0, 1, 2
ERR_LEN = 1024
MAX_DEPTH = 64
# Python waits in C in slices this long, so that signal handlers (Ctrl-C) run in between: a
# C wait holds no GIL but the main thread's handlers only run between bytecodes.
WAIT_SLICE = 0.1


class WorkerError(RuntimeError):
    """A background worker could not be reached: unknown, halted, failed to boot, a timeout
    waiting for it to be ready, a wait cycle, a full task queue (PHP's RuntimeException)."""


class TaskError(WorkerError):
    """A task failed: ``frankenphp_fail_task()``, or its worker crashed or stopped holding it."""


class TaskTimeout(TaskError, TimeoutError):
    """No answer to a task within its timeout."""


# --- the encoding (csrc/worker_state.h) ----------------------------------------------------------
_I64 = struct.Struct("<q")
_F64 = struct.Struct("<d")
_U32 = struct.Struct("<I")


def encode(value: Any, path: str = "value") -> bytes:
    """``value`` in the neutral encoding; TypeError naming the key path of a value that cannot
    cross (e.g. ``payload['db']['conn']``)."""
    out = bytearray()
    _encode(value, path, out, 0)
    return bytes(out)


def _encode(value: Any, path: str, out: bytearray, depth: int) -> None:
    if value is None:
        out += b"N"
    elif value is True:
        out += b"T"
    elif value is False:
        out += b"F"
    elif isinstance(value, int):
        if not -(1 << 63) <= value < (1 << 63):
            raise TypeError(f"{path} does not fit in a PHP int: {value}")
        out += b"I" + _I64.pack(value)
    elif isinstance(value, float):
        out += b"D" + _F64.pack(value)
    elif isinstance(value, str | bytes):
        data = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
        out += b"S" + _U32.pack(len(data)) + data
    elif isinstance(value, list | tuple | dict):
        if depth >= MAX_DEPTH:
            raise TypeError(f"{path} is nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            out += b"M" + _U32.pack(len(value))
            for key, item in value.items():
                if isinstance(key, bool) or not isinstance(key, int | str):
                    raise TypeError(f"{path} has a key of type {type(key).__name__}; keys must be int or str")
                _encode(key, path, out, depth)
                _encode(item, f"{path}[{key!r}]", out, depth + 1)
        else:
            out += b"L" + _U32.pack(len(value))
            for index, item in enumerate(value):
                _encode(item, f"{path}[{index}]", out, depth + 1)
    else:
        raise TypeError(
            f"{path} is of type {type(value).__name__}; only None, bool, int, float, str, bytes, "
            "lists and dicts of them are allowed"
        )


def decode(data: bytes) -> Any:
    """The value encoded in ``data``; ValueError if malformed."""
    try:
        value, end = _decode(data, 0)
    except (struct.error, IndexError) as exc:
        raise ValueError(f"malformed value: {exc}") from None
    if end != len(data):
        raise ValueError("malformed value: trailing bytes")
    return value


def _decode(data: bytes, pos: int) -> tuple[Any, int]:
    tag = data[pos]
    pos += 1
    if tag == 0x4E:  # N
        return None, pos
    if tag == 0x54:  # T
        return True, pos
    if tag == 0x46:  # F
        return False, pos
    if tag == 0x49:  # I
        return _I64.unpack_from(data, pos)[0], pos + 8
    if tag == 0x44:  # D
        return _F64.unpack_from(data, pos)[0], pos + 8
    if tag == 0x53:  # S
        (length,) = _U32.unpack_from(data, pos)
        pos += 4
        raw = data[pos:pos + length]
        if len(raw) != length:
            raise IndexError("string past the end")
        try:
            return raw.decode("utf-8"), pos + length
        except UnicodeDecodeError:
            return raw, pos + length
    if tag == 0x4C:  # L
        (count,) = _U32.unpack_from(data, pos)
        pos += 4
        items = []
        for _ in range(count):
            item, pos = _decode(data, pos)
            items.append(item)
        return items, pos
    if tag == 0x4D:  # M
        (count,) = _U32.unpack_from(data, pos)
        pos += 4
        mapping = {}
        for _ in range(count):
            key, pos = _decode(data, pos)
            mapping[key], pos = _decode(data, pos)
        return mapping, pos
    raise IndexError(f"unknown tag {tag:#x}")


def blob(value: Any, path: str) -> Any:
    """A new C blob holding ``value`` (the caller passes its reference on)."""
    data = encode(value, path)
    handle = lib.fp_blob_new(data, len(data))
    if handle == ffi.NULL:
        raise MemoryError("cannot allocate a task payload")
    return handle


def take_blob(handle: Any) -> Any:
    """Decode a C blob and release the reference."""
    try:
        return decode(ffi.unpack(handle.data, handle.len))
    finally:
        lib.fp_blob_release(handle)


def _array(value: Any) -> Any:
    """A PHP array-shaped result: null (complete_task() without a result) becomes {}."""
    return {} if value is None else value


# --- domains ------------------------------------------------------------------------------------
_DOMAINS: dict[int, Domain] = {}
_tokens = itertools.count(1)


class Domain:
    """The vars/tasks state of one runtime.  ``start(scope, name)`` starts a lazy or catch-all
    worker and returns its slot (raising WorkerError naming what is wrong)."""

    def __init__(self, start: Callable[[int, str], int]) -> None:
        self.token = next(_tokens)
        self.handle = lib.fp_ws_domain_new(self.token)
        self.start = start
        self._contexts: dict[int, Any] = {}
        self._futures: dict[int, concurrent.futures.Future[Any]] = {}
        self._early: set[int] = set()  # ids answered before their future was stored
        self._lock = threading.Lock()
        _DOMAINS[self.token] = self

    def context(self, scope: int, slot: int = -1) -> Any:
        """A C context: a background worker thread's (its slot), or anyone's of ``scope``
        (-1: look names up in every scope).  Contexts of the same (scope, -1) are shared."""
        if slot >= 0:
            return lib.fp_ws_ctx_new(self.handle, scope, slot)
        with self._lock:
            ctx = self._contexts.get(scope)
            if ctx is None:
                ctx = self._contexts[scope] = lib.fp_ws_ctx_new(self.handle, scope, -1)
            return ctx

    def close(self, reason: str) -> None:
        lib.fp_ws_domain_close(self.handle, reason.encode())
        _DOMAINS.pop(self.token, None)

    # --- calls from Python ---------------------------------------------------------------------
    def acquire(self, scope: int, name: str, timeout: float, flags: int = 0) -> int:
        """The slot of worker ``name``, started if needed and ready once (WorkerError)."""
        err = ffi.new("char[]", ERR_LEN)
        data = name.encode("utf-8", "surrogateescape")
        ctx = self.context(scope)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            slot = lib.fp_ws_acquire(ctx, data, len(data), max(min(left, WAIT_SLICE), 0.0), flags, ffi.NULL,
                                     err, ERR_LEN)
            if slot >= 0:
                return slot
            message = ffi.string(err).decode("utf-8", "replace")
            if not message.startswith("timed out"):
                raise WorkerError(message)
            if left <= WAIT_SLICE:
                raise WorkerError(f"timed out after {timeout:g} s waiting for background worker {name!r} "
                                  "to be ready")

    def get_vars(self, slot: int) -> Any:
        handle = lib.fp_ws_get_vars(self.handle, slot)
        return {} if handle == ffi.NULL else _array(take_blob(handle))

    def submit(self, slot: int, payload: Any, notify: bool) -> int:
        err = ffi.new("char[]", ERR_LEN)
        payload_blob = blob(payload, "payload")
        task_id = lib.fp_ws_task_submit(self.handle, slot, payload_blob, int(notify), err, ERR_LEN)
        if not task_id:
            raise WorkerError(ffi.string(err).decode("utf-8", "replace"))
        return task_id

    def wait(self, task_id: int, timeout: float) -> Any:
        """The answer of task ``task_id`` (timeout < 0: no limit; 0: withdraw it unless done).
        Waits in slices; an exception between them (KeyboardInterrupt) withdraws the task."""
        err = ffi.new("char[]", ERR_LEN)
        result = ffi.new("fp_blob **")
        deadline = None if timeout < 0 else time.monotonic() + timeout
        state = TASK_PENDING
        try:
            while state == TASK_PENDING:
                left = WAIT_SLICE if deadline is None else min(deadline - time.monotonic(), WAIT_SLICE)
                if left <= 0:
                    break
                state = lib.fp_ws_task_poll(self.handle, task_id, left, result, err, ERR_LEN)
        except BaseException:
            leftover = result[0]  # an answer collected just before the exception
            lib.fp_ws_task_wait(self.handle, task_id, 0, ffi.NULL, result, err, ERR_LEN)  # withdraw
            for handle in (leftover, result[0]):
                if handle != ffi.NULL:
                    lib.fp_blob_release(handle)
            raise
        if state == TASK_PENDING:
            state = lib.fp_ws_task_wait(self.handle, task_id, 0, ffi.NULL, result, err, ERR_LEN)
            if state == TASK_PENDING and timeout > 0:
                raise TaskTimeout(f"timed out after {timeout:g} s waiting for task {task_id}")
        return self._outcome(state, result, err)

    @staticmethod
    def _outcome(state: int, result: Any, err: Any) -> Any:
        message = ffi.string(err).decode("utf-8", "replace")
        if state == TASK_DONE:
            return _array(take_blob(result[0]) if result[0] != ffi.NULL else None)
        if state == TASK_FAILED:
            raise TaskError(message)
        raise TaskTimeout(message)

    def future(self, slot: int, payload: Any, timeout: float | None) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        future.set_running_or_notify_cancel()
        task_id = self.submit(slot, payload, notify=True)
        with self._lock:
            early = task_id in self._early
            self._early.discard(task_id)
            if not early:
                self._futures[task_id] = future
        if early:
            self._settle(task_id, future)
        elif timeout is not None:
            _TIMER.add(time.monotonic() + timeout, self, task_id, timeout)
        return future

    def expire(self, task_id: int, timeout: float) -> None:
        """A future's timeout: withdraw the task unless it was answered meanwhile."""
        with self._lock:
            future = self._futures.pop(task_id, None)
        if future is not None:
            self._settle(task_id, future, timeout)

    def _settle(self, task_id: int, future: concurrent.futures.Future[Any], timeout: float = 0.0) -> None:
        try:
            value = self.wait(task_id, 0)
        except TaskTimeout:
            future.set_exception(TaskTimeout(f"timed out after {timeout:g} s waiting for task {task_id}"))
        except BaseException as exc:
            future.set_exception(exc)
        else:
            future.set_result(value)

    def task_done(self, task_id: int) -> None:
        with self._lock:
            future = self._futures.pop(task_id, None)
            if future is None:
                self._early.add(task_id)
                return
        self._settle(task_id, future)

    def counts(self, slot: int) -> tuple[int, int, int, int]:
        """(queued now, completed, failed, vars publications) of a slot."""
        out = ffi.new("int64_t[4]")
        lib.fp_ws_slot_counts(self.handle, slot, out)
        return out[0], out[1], out[2], out[3]


async def wrap(future: concurrent.futures.Future[Any]) -> Any:
    """Await a task future: completed through ``loop.call_soon_threadsafe`` by the thread that
    answers the task (asyncio.wrap_future), no thread per task."""
    return await asyncio.wrap_future(future)


class _Timer:
    """Timeouts of task futures: one thread for all of them, started on first use."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Domain, int, float]] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def add(self, deadline: float, domain: Domain, task_id: int, timeout: float) -> None:
        with self._cond:
            heapq.heappush(self._heap, (deadline, next(self._seq), domain, task_id, timeout))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="frankenpy-task-timer", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    self._cond.wait(self._heap[0][0] - time.monotonic() if self._heap else None)
                _, _, domain, task_id, timeout = heapq.heappop(self._heap)
            domain.expire(task_id, timeout)


_TIMER = _Timer()


def _write_error(err: Any, size: int, message: str) -> None:
    data = message.encode("utf-8", "replace")[: size - 1]
    ffi.memmove(err, data + b"\0", len(data) + 1)


def _start_failed(exc_type: Any, exc: Any, tb: Any) -> int:
    import logging

    logging.getLogger("frankenpy.workers").error("starting a worker failed", exc_info=(exc_type, exc, tb))
    return -1


@ffi.def_extern(onerror=_start_failed)
def fp_py_ws_start(token: int, scope: int, name: Any, err: Any, size: int) -> int:
    domain = _DOMAINS.get(token)
    if domain is None:
        _write_error(err, size, "the runtime is shut down")
        return -1
    try:
        return domain.start(scope, ffi.string(name).decode("utf-8", "surrogateescape"))
    except (WorkerError, ValueError, OSError) as exc:
        _write_error(err, size, str(exc))
        return -1


@ffi.def_extern(onerror=lambda *exc: None)
def fp_py_task_done(token: int, task_id: int) -> None:
    domain = _DOMAINS.get(token)
    if domain is not None:
        domain.task_done(task_id)
