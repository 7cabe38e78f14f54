"""Host side of FrankenPHP's request functions (csrc/http_functions.c, fp_host ABI 9).

* ``headers_send(1xx)`` -> :func:`fp_py_interim` -> ``execution.on_interim(status, headers)``;
* ``frankenphp_finish_request()`` -> :func:`fp_py_finish_request` -> ``execution.on_finish(req)``;
* ``frankenphp_log()`` -> :func:`fp_py_php_log` -> the ``frankenpy.php`` logger, with the
  context array in the record's ``extra`` (each key as an attribute, and the whole as
  ``record.context``) and the worker (or PHP thread) name as ``record.worker``.

Executions that have no use for a hook simply do not define it (regular executions cannot send
an interim response; their finish only stops further output).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from . import _native
from .execution import _execution, php_logger, php_logger_adapter

ffi = _native.ffi

# frankenphp_log() levels are slog's (FrankenPHP is written in Go): DEBUG -4, INFO 0, WARN 4,
# ERROR 8; values in between round down, as slog does.
DEBUG, INFO, WARN, ERROR = -4, 0, 4, 8

# Names a LogRecord already has: a context key among them would make logging raise.
_RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "context", "worker"}


def python_level(level: int) -> int:
    """The ``logging`` level of a ``frankenphp_log()`` level."""
    if level < INFO:
        return logging.DEBUG
    if level < WARN:
        return logging.INFO
    if level < ERROR:
        return logging.WARNING
    return logging.ERROR


def decode_context(data: bytes) -> dict[str, Any]:
    """The JSON the glue made of the context array, as a dict (a PHP list gets "0", "1" ...)."""
    if not data:
        return {}
    value = json.loads(data)
    if isinstance(value, list):
        return {str(index): item for index, item in enumerate(value)}
    return value if isinstance(value, dict) else {"0": value}


def log_extra(context: bytes) -> dict[str, Any]:
    """The ``extra`` of a ``frankenphp_log()`` record: each context key that is not a
    LogRecord attribute, and the whole context as ``context``."""
    fields = decode_context(context)
    extra: dict[str, Any] = {key: value for key, value in fields.items() if key not in _RESERVED}
    extra["context"] = fields
    return extra


@ffi.def_extern(onerror=lambda *exc: php_logger.error("interim response callback failed", exc_info=exc))
def fp_py_interim(handle: Any, status: int, lines: Any, length: int) -> int:
    execution = _execution(handle)
    on_interim = getattr(execution, "on_interim", None)
    if on_interim is None:
        return -1
    text = ffi.buffer(lines, length)[:].decode("latin-1") if length else ""
    return 0 if on_interim(status, text.split("\n")) else -1


@ffi.def_extern(onerror=lambda *exc: php_logger.error("finish request callback failed", exc_info=exc))
def fp_py_finish_request(handle: Any, req: Any) -> None:
    execution = _execution(handle)
    on_finish = getattr(execution, "on_finish", None)
    if on_finish is not None:
        on_finish(req)


@ffi.def_extern(onerror=lambda *exc: php_logger.error("frankenphp_log callback failed", exc_info=exc))
def fp_py_php_log(
    handle: Any, level: int, message: Any, message_len: int, context: Any, context_len: int
) -> None:
    execution = _execution(handle)
    adapter = execution.logger if execution is not None else php_logger_adapter
    text = ffi.buffer(message, message_len)[:].decode("utf-8", "replace")
    extra = log_extra(ffi.buffer(context, context_len)[:] if context != ffi.NULL else b"")
    adapter.log(python_level(level), "%s", text, extra=extra)
