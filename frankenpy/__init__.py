"""frankenpy: FrankenPHP's worker model inside CPython.

Real PHP (Debian's NTS libphp 8.2) on many threads of one Python process: regular executions,
background workers (``frankenphp_get_worker_handle()``), HTTP workers
(``frankenphp_handle_request()``) and classic per-request PHP behind a WSGI app.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .execution import Diagnostic, PHPError, Result
    from .images import ImageError
    from .runtime import Runtime
    from .scopes import GLOBAL_SCOPE, next_scope, scope_label, set_scope_label
    from .worker_state import TaskError, TaskTimeout, WorkerError
    from .workers import Worker, WorkerStatus, backoff_delay

# The public names, by the submodule that defines them.  They are imported on first use
# (PEP 562): importing the package, or a light submodule of it (frankenpy.config, the pytest
# plugin that pytest loads in every session of an environment with frankenpy installed), must
# not load the cffi extension and its C glue.
_EXPORTS = {
    "execution": ("Diagnostic", "PHPError", "Result"),
    "images": ("ImageError",),
    "runtime": ("Runtime",),
    "scopes": ("GLOBAL_SCOPE", "next_scope", "scope_label", "set_scope_label"),
    "worker_state": ("TaskError", "TaskTimeout", "WorkerError"),
    "workers": ("Worker", "WorkerStatus", "backoff_delay"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        # A submodule used as an attribute (frankenpy.images.extension_path) after a plain
        # `import frankenpy`, as when every submodule was imported with the package.
        if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
            return importlib.import_module(f".{name}", __name__)
        raise AttributeError(f"module 'frankenpy' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # the next lookup does not come here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODULE_OF))


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
