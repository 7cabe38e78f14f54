"""frankenpy: FrankenPHP's worker model inside CPython.

Real PHP (Debian's NTS libphp 8.2) on many threads of one Python process: regular executions,
background workers (``frankenphp_get_worker_handle()``), HTTP workers
(``frankenphp_handle_request()``) and classic per-request PHP behind a WSGI app.
"""

from .execution import Diagnostic, PHPError, Result
from .images import ImageError
from .runtime import Runtime
from .scopes import GLOBAL_SCOPE, next_scope, scope_label, set_scope_label
from .worker_state import TaskError, TaskTimeout, WorkerError
from .workers import Worker, WorkerStatus, backoff_delay

__all__ = [
    "GLOBAL_SCOPE",
    "Diagnostic",
    "ImageError",
    "PHPError",
    "Result",
    "Runtime",
    "TaskError",
    "TaskTimeout",
    "Worker",
    "WorkerError",
    "WorkerStatus",
    "backoff_delay",
    "next_scope",
    "scope_label",
    "set_scope_label",
]
