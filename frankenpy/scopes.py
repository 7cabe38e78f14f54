"""Worker scopes: FrankenPHP's ``NextScope()`` / ``SetScopeLabel()``.

A scope isolates worker names: two scopes may each declare a worker called ``"shared"`` and get
two distinct workers.  Scope 0 is the global scope.  A label names a scope in metrics: a
background worker's metric name is ``m#<label>:<name>`` (``m#:<name>`` without a label).
"""

from __future__ import annotations

import itertools
import threading

GLOBAL_SCOPE = 0

_lock = threading.Lock()
_counter = itertools.count(1)
_labels: dict[int, str] = {}


def next_scope() -> int:
    """A new scope, distinct from every scope handed out before in this process (never 0)."""
    with _lock:
        return next(_counter)


def set_scope_label(scope: int, label: str) -> None:
    """Name ``scope`` (for metrics).  The global scope may be labelled too."""
    if not isinstance(scope, int) or scope < 0:
        raise ValueError(f"scope must be an integer >= 0, got {scope!r}")
    if not isinstance(label, str):
        raise TypeError(f"scope label must be str, not {type(label).__name__}")
    with _lock:
        _labels[scope] = label


def scope_label(scope: int) -> str:
    """The label of ``scope``, "" when it has none."""
    with _lock:
        return _labels.get(scope, "")


def metric_name(scope: int, name: str) -> str:
    """FrankenPHP's metric name of a background worker: ``m#<scope-label>:<name>``."""
    return f"m#{scope_label(scope)}:{name}"
