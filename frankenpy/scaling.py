"""Thread autoscaling, as FrankenPHP does it (``max_threads``, ``max_idle_time``).

* **Scale up.**  A request that has waited :data:`STALL_TIME` (5 ms) for a free thread signals
  its :class:`ThreadSource`.  The scaler thread then probes the CPU for :data:`CPU_PROBE_TIME`
  (120 ms) and adds one thread to that source if the process used less than
  :data:`MAX_CPU_USAGE` (80 %) of the machine's CPUs meanwhile (FrankenPHP measures its own
  process the same way: a request that waits because the CPUs are saturated gains nothing from
  one more thread) and no cap is reached: the source's own ``max_threads`` and the runtime's.
* **Scale down.**  Every :data:`DOWNSCALE_INTERVAL` (5 s), threads added by autoscaling that
  have been idle longer than ``max_idle_time`` are stopped, at most :data:`MAX_DOWNSCALE` per
  pass.  The threads a source started with are never stopped.
* ``max_threads = "auto"``: total memory / ``memory_limit`` (:func:`auto_max_threads`).

The policy only talks to a :class:`ThreadSource` (add a thread, take idle ones back, count
them), so it does not care where the threads live: the regular pool (``Runtime``), or an HTTP
worker's threads.

Where requests wait in C (the native server's hand-off queues, its serving threads waiting in
the regular pool), C counts the waits of :data:`STALL_TIME` or more (``fp_handoff_stalls``,
``fp_pool_stalls``) and a :class:`StallWatch` polls those counters every
:data:`STALL_POLL_INTERVAL` to signal the scaler: no Python runs per request.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from .threads import WorkerLogAdapter

logger = WorkerLogAdapter(logging.getLogger("frankenpy.scaling"), {"worker": "-"})

STALL_TIME = 0.005
CPU_PROBE_TIME = 0.12
MAX_CPU_USAGE = 0.8
DOWNSCALE_INTERVAL = 5.0
MAX_DOWNSCALE = 10
DEFAULT_MAX_IDLE_TIME = 5.0
PHP_DEFAULT_MEMORY_LIMIT = 128 * 1024 * 1024
STALL_POLL_INTERVAL = 0.01


class ThreadSource(Protocol):
    """Threads of one kind that can grow and shrink: the regular pool or one HTTP worker."""

    name: str
    max_threads: int  # its own cap (its threads included)

    def thread_count(self) -> int: ...

    def add_thread(self) -> bool:
        """Start one more thread; False if it could not (logged)."""
        ...

    def remove_idle(self, idle_for: float, limit: int) -> int:
        """Stop up to ``limit`` autoscaled threads idle for ``idle_for`` seconds; the count."""
        ...


def parse_size(value: Any) -> int | None:
    """A php.ini size ("128M", "1G", "-1", 134217728) in bytes; None for no limit."""
    text = str(value).strip()
    match = re.fullmatch(r"(-?\d+)\s*([kKmMgG]?)", text)
    if match is None:
        raise ValueError(f"memory_limit: cannot read {value!r} as a size")
    number = int(match.group(1))
    if number < 0:
        return None
    return number * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[match.group(2).lower()]


def total_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - Linux has it
        return os.cpu_count() or 1


def auto_max_threads(php_ini: Mapping[str, Any], num_threads: int) -> int:
    """FrankenPHP's ``max_threads auto``: as many threads as ``memory_limit`` fits in the
    machine's memory (at least ``num_threads``).  Without a memory limit, 4 per CPU."""
    limit = parse_size(php_ini.get("memory_limit", PHP_DEFAULT_MEMORY_LIMIT))
    if limit is None or limit == 0:
        return max(num_threads, 4 * cpu_count())
    return max(num_threads, total_memory() // limit)


def resolve_max_threads(value: int | str | None, php_ini: Mapping[str, Any], num_threads: int) -> int:
    """The cap on regular PHP threads that ``max_threads`` asks for (``num_threads`` when
    None: no autoscaling).  ValueError naming the option."""
    if value is None:
        return num_threads
    if value == "auto":
        return auto_max_threads(php_ini, num_threads)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"max_threads must be an integer or 'auto', got {value!r}")
    if value < num_threads:
        raise ValueError(f"max_threads ({value}) must be >= num_threads ({num_threads})")
    return value


def process_cpu_usage(probe: float = CPU_PROBE_TIME) -> float:
    """Share of the machine's CPUs this process used over ``probe`` seconds (0..1)."""
    cpu, wall = time.process_time(), time.monotonic()
    time.sleep(probe)
    used, elapsed = time.process_time() - cpu, time.monotonic() - wall
    return used / (elapsed * cpu_count()) if elapsed > 0 else 0.0


class Autoscaler:
    """Grows and shrinks ``sources`` by the rules in the module docstring, on its own thread.
    ``max_total`` caps the threads of every source together (None: each source's cap only)."""

    def __init__(
        self,
        sources: Sequence[ThreadSource],
        *,
        max_idle_time: float = DEFAULT_MAX_IDLE_TIME,
        max_total: int | None = None,
        cpu_usage: Callable[[], float] | None = None,
        downscale_interval: float | None = None,
    ) -> None:
        if max_idle_time <= 0:
            raise ValueError(f"max_idle_time must be > 0 seconds, got {max_idle_time!r}")
        self.sources = list(sources)
        self.max_idle_time = max_idle_time
        self.max_total = max_total
        # (module attributes read here, so that tests can shorten or pin them)
        self.cpu_usage = cpu_usage or process_cpu_usage
        self.downscale_interval = DOWNSCALE_INTERVAL if downscale_interval is None else downscale_interval
        self._cond = threading.Condition()
        self._starved: list[ThreadSource] = []
        self._running = False
        self._thread = threading.Thread(target=self._loop, name="frankenpy-scaling", daemon=True)
        self.added = self.removed = 0

    def start(self) -> Autoscaler:
        self._running = True
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._running = False
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(10.0)

    def starved(self, source: ThreadSource) -> None:
        """A request of ``source`` waited STALL_TIME for a thread.  Never blocks (it may be
        called under the lock of the pool or queue the request waits in)."""
        if not self._cond.acquire(blocking=False):
            return  # the scaler is busy with a decision already: the next stall asks again
        try:
            if source not in self._starved:
                self._starved.append(source)
                self._cond.notify()
        finally:
            self._cond.release()

    def _total(self) -> int:
        return sum(source.thread_count() for source in self.sources)

    def _loop(self) -> None:
        next_downscale = time.monotonic() + self.downscale_interval
        while True:
            with self._cond:
                self._cond.wait_for(
                    lambda: self._starved or not self._running, max(0.0, next_downscale - time.monotonic())
                )
                if not self._running:
                    return
                starved, self._starved = self._starved, []
            for source in starved:
                try:
                    self._scale_up(source)
                except Exception:  # e.g. the runtime began to shut down meanwhile
                    logger.exception("%s: scaling up failed", source.name)
            if time.monotonic() >= next_downscale:
                next_downscale = time.monotonic() + self.downscale_interval
                for source in self.sources:
                    self._scale_down(source)

    def _scale_up(self, source: ThreadSource) -> None:
        if source.thread_count() >= source.max_threads:
            return
        if self.max_total is not None and self._total() >= self.max_total:
            return
        usage = self.cpu_usage()
        if usage >= MAX_CPU_USAGE:
            logger.debug("%s: not scaling up, the process uses %.0f %% of the CPUs", source.name, usage * 100)
            return
        if source.add_thread():
            self.added += 1
            logger.debug("%s: scaled up to %d threads", source.name, source.thread_count())

    def _scale_down(self, source: ThreadSource) -> None:
        try:
            removed = source.remove_idle(self.max_idle_time, MAX_DOWNSCALE)
        except Exception:
            logger.exception("%s: scaling down failed", source.name)
            return
        if removed:
            self.removed += removed
            logger.debug("%s: scaled down to %d threads", source.name, source.thread_count())


Stalls = Callable[[], tuple[int, int]]  # () -> (waits of STALL_TIME so far, oldest wait now in ns)


class StallWatch:
    """Polls C wait counters and tells ``scaler`` which sources have a request that waited
    :data:`STALL_TIME` for a thread (a new counted wait, or one still waiting that long)."""

    def __init__(self, scaler: Autoscaler, probes: Sequence[tuple[ThreadSource, Stalls]],
                 interval: float = STALL_POLL_INTERVAL) -> None:
        self.scaler = scaler
        self.probes = list(probes)
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="frankenpy-stalls", daemon=True)

    def start(self) -> StallWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)

    def _loop(self) -> None:
        seen = [probe()[0] for _, probe in self.probes]
        stall_ns = STALL_TIME * 1e9
        while not self._stop.wait(self.interval):
            for i, (source, probe) in enumerate(self.probes):
                try:
                    count, oldest_ns = probe()
                except Exception:
                    logger.exception("%s: reading the waits failed", source.name)
                    continue
                if count > seen[i] or oldest_ns >= stall_ns:
                    self.scaler.starved(source)
                seen[i] = count


class RegularThreads:
    """The runtime's regular PHP threads as a :class:`ThreadSource`.  ``on_resize`` (if set)
    is called after threads were added or removed: the native server keeps one serving thread
    per regular PHP thread."""

    name = "regular PHP threads"

    def __init__(self, runtime: Any, max_threads: int) -> None:
        self.runtime = runtime
        self.max_threads = max_threads
        self.added: list[Any] = []  # PHPThreads started by autoscaling
        self.on_resize: Callable[[], None] | None = None

    def thread_count(self) -> int:
        return self.runtime._running_pool().size

    def add_thread(self) -> bool:
        try:
            thread = self.runtime._start_php_thread()
        except Exception:
            logger.exception("could not start one more PHP thread")
            return False
        self.added.append(thread)
        self.runtime._running_pool().add(thread)
        self._resized()
        return True

    def _resized(self) -> None:
        callback = self.on_resize  # (the server may unhook it meanwhile)
        if callback is not None:
            callback()

    def remove_idle(self, idle_for: float, limit: int) -> int:
        taken = self.runtime._running_pool().take_idle(self.added, idle_for, limit)
        for thread in taken:
            self.added.remove(thread)
            self.runtime._stop_php_thread(thread)
        if taken:
            self._resized()
        return len(taken)


class WorkerThreads:
    """The threads of one HTTP worker as a :class:`ThreadSource` (its ``max_threads``).
    Under the native server, ``prepare`` gives a new thread its C queue before it starts and
    ``release`` frees that once the thread has stopped."""

    DRAIN_WAIT = 1.0  # how long a pass waits for the threads it drained before it goes on

    def __init__(self, runtime: Any, worker: Any) -> None:
        self.runtime = runtime
        self.worker = worker
        self.name = f"worker {worker.name!r}"
        self.max_threads = worker.max_threads
        self.added: list[Any] = []  # WorkerThreads started by autoscaling
        self.prepare: Callable[[Any], None] | None = None
        self.release: Callable[[Any], None] | None = None
        # Native threads serve in C: idle since when their request count last moved (or they
        # were busy), as seen by the scale-down passes.
        self._last_seen: dict[Any, tuple[int, float]] = {}
        self._draining: set[Any] = set()  # asked to stop, not stopped yet

    def thread_count(self) -> int:
        return sum(1 for t in self.runtime.workers_group.threads if t.worker is self.worker)

    def add_thread(self) -> bool:
        group = self.runtime.workers_group
        try:
            php = self.runtime._start_php_thread()
        except Exception:
            logger.exception("%s: could not start one more PHP thread", self.name)
            return False
        index = max((t.index for t in group.threads if t.worker is self.worker), default=-1) + 1
        thread = group.thread_factory(self.worker)(group, self.worker, index, php)
        prepare = self.prepare  # (the server may unhook it meanwhile)
        if prepare is not None:
            try:
                prepare(thread)
            except Exception:
                logger.exception("%s: could not give the new thread its queue", self.name)
                self.runtime._stop_php_thread(php)
                return False
        group.threads.append(thread)
        self.added.append(thread)
        thread.launch()
        return True

    def _idle_since(self, thread: Any) -> float | None:
        """When ``thread`` last served (epoch seconds); None while it is busy or not ready."""
        if thread.state != "ready":
            return None
        if getattr(thread, "native", None) is None:
            run = getattr(thread, "current_run", None)
            return None if run is None or run.in_flight is not None else run.idle_since
        now, count = time.time(), thread.requests
        last = self._last_seen.get(thread)
        if thread.busy or last is None or last[0] != count:
            self._last_seen[thread] = (count, now)
            return None
        return last[1]

    def remove_idle(self, idle_for: float, limit: int) -> int:
        removed = self._reap(0.0)
        cutoff = time.time() - idle_for
        drained = 0
        for thread in list(self.added):
            if drained >= limit:
                break
            if thread in self._draining:
                continue
            idle_since = self._idle_since(thread)
            if idle_since is None or idle_since > cutoff:
                continue
            # A drained thread ends its request in progress first (a native one takes no new
            # one from its C queue once drained): none is lost.  One that takes longer than
            # DRAIN_WAIT is reaped by a later pass: the scaler never blocks on it.
            thread.drain(stop=True)
            self._draining.add(thread)
            drained += 1
        return removed + self._reap(self.DRAIN_WAIT)

    def _reap(self, wait: float) -> int:
        """Finish removing the drained threads that have stopped, waiting up to ``wait``
        seconds in all for them; how many."""
        deadline = time.monotonic() + wait
        reaped = 0
        for thread in list(self._draining):
            if not thread.join(max(0.0, deadline - time.monotonic())):
                continue
            self._draining.discard(thread)
            self.added.remove(thread)
            self._last_seen.pop(thread, None)
            self.runtime.workers_group.threads.remove(thread)
            self.runtime._stop_php_thread(thread.php)
            release = self.release
            if release is not None:
                release(thread)
            reaped += 1
        return reaped
