"""Prometheus metrics with FrankenPHP's names.

Values are read from the runtime when scraped (nothing is counted twice, and gauges are derived
from thread states, so they cannot go negative).  :func:`exposition` renders the text format
without any dependency; :func:`register` adds a collector to a ``prometheus_client`` registry
when that package is installed (``pip install frankenpy[metrics]``); that library exposes
counters with a ``_total`` suffix (``frankenphp_worker_crashes_total``), the text exposition here
keeps FrankenPHP's names exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .runtime import Runtime


@dataclass(frozen=True)
class Family:
    name: str
    kind: str  # "gauge" or "counter"
    help: str
    samples: list[tuple[dict[str, str], float]]


def collect(runtime: Runtime) -> list[Family]:
    """Every metric family of ``runtime`` as it is now."""
    statuses = runtime.workers()
    per_worker: dict[str, list[Any]] = {}
    for status in statuses:
        per_worker.setdefault(status.metric_name, []).append(status)

    def by_worker(value: Any) -> list[tuple[dict[str, str], float]]:
        return [({"worker": name}, float(value(group))) for name, group in sorted(per_worker.items())]

    families = [
        Family("frankenphp_total_threads", "gauge", "PHP threads (regular and worker)",
               [({}, runtime.total_threads)]),
        Family("frankenphp_busy_threads", "gauge", "PHP threads running a script",
               [({}, runtime.busy_threads + sum(s.state not in ("halted", "stopped", "idle")
                                                for s in statuses))]),
        Family("frankenphp_queue_depth", "gauge", "Regular executions waiting for a PHP thread",
               [({}, runtime.queue_depth)]),
        Family("frankenphp_total_workers", "gauge", "Worker threads (a lazy worker not started yet: 0)",
               by_worker(lambda group: sum(s.state != "idle" for s in group))),
        Family("frankenphp_ready_workers", "gauge", "Worker threads that reached their ready point",
               by_worker(lambda group: sum(s.state == "ready" for s in group))),
        Family("frankenphp_worker_crashes", "counter", "Worker script exits other than 0",
               by_worker(lambda group: sum(s.crashes for s in group))),
        Family("frankenphp_worker_restarts", "counter", "Cooperative worker restarts (exit 0, drain)",
               by_worker(lambda group: sum(s.restarts for s in group))),
    ]
    tasks = runtime.workers_group.task_counts()
    if tasks:
        for index, (name, kind, text) in enumerate((
            ("frankenphp_worker_tasks_queued", "gauge", "Tasks waiting for the background worker"),
            ("frankenphp_worker_tasks_completed", "counter", "Tasks the background worker answered"),
            ("frankenphp_worker_tasks_failed", "counter",
             "Tasks that failed (frankenphp_fail_task, or the worker stopped holding them)"),
            ("frankenphp_worker_vars_publications", "counter", "frankenphp_set_vars() calls of the worker"),
        )):
            families.append(Family(name, kind, text, [
                ({"worker": worker}, float(counts[index])) for worker, counts in sorted(tasks.items())
            ]))
    http = {name: group for name, group in per_worker.items() if not group[0].background}
    if http:
        samples = [
            ({"worker": name}, float(sum(s.requests for s in group))) for name, group in sorted(http.items())
        ]
        families.append(Family(
            "frankenphp_worker_request_count", "counter", "Requests served by HTTP workers", samples
        ))
        families.append(Family(
            "frankenphp_worker_request_time", "counter", "Seconds HTTP workers spent handling requests",
            [({"worker": name}, sum(s.request_time for s in group)) for name, group in sorted(http.items())],
        ))
        families.append(Family(
            "frankenphp_busy_workers", "gauge", "HTTP worker threads handling a request",
            [({"worker": name}, float(sum(s.busy for s in group))) for name, group in sorted(http.items())],
        ))
        queues = runtime.workers_group.http_queues
        families.append(Family(
            "frankenphp_worker_queue_depth", "gauge", "Requests waiting for a thread of the HTTP worker",
            [({"worker": name}, float(len(queues.get((group[0].scope, group[0].name), ()))))
             for name, group in sorted(http.items())],
        ))
    return families


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def exposition(runtime: Runtime) -> str:
    """The Prometheus text exposition format (version 0.0.4) of :func:`collect`."""
    lines: list[str] = []
    for family in collect(runtime):
        name = family.name  # FrankenPHP's names as they are (its counters carry no _total)
        lines.append(f"# HELP {name} {family.help}")
        lines.append(f"# TYPE {name} {family.kind}")
        for labels, value in family.samples:
            rendered = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            lines.append(f"{name}{{{rendered}}} {value:g}" if rendered else f"{name} {value:g}")
    return "\n".join(lines) + "\n"


class _Collector:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        for family in collect(self.runtime):
            cls = CounterMetricFamily if family.kind == "counter" else GaugeMetricFamily
            labels = sorted({key for sample_labels, _ in family.samples for key in sample_labels})
            metric = cls(family.name, family.help, labels=labels)
            for sample_labels, value in family.samples:
                metric.add_metric([sample_labels[key] for key in labels], value)
            yield metric


def register(runtime: Runtime, registry: Any = None) -> Any:
    """Register ``runtime``'s metrics with ``prometheus_client`` (default registry); returns the
    collector (pass it to ``registry.unregister`` when the runtime is gone).  ImportError when
    prometheus_client is not installed."""
    from prometheus_client import REGISTRY

    collector = _Collector(runtime)
    (registry or REGISTRY).register(collector)
    return collector
