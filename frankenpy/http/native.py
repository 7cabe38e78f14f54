"""The native HTTP server: requests are parsed, routed and answered in C; Python supervises.

:class:`NativeServer` has the role of :class:`frankenpy.http.server.Server` (same
:class:`~frankenpy.http.server.Site` list, ``start``/``stop(grace)``/``serve_forever``), but no
request enters Python: libh2o-evloop parses HTTP on one C loop thread (csrc/http_server.h), the
php_server router decides there, static files are sent from there, and PHP requests are handed
through C queues (csrc/handoff.h) to PHP threads that never come back to Python per request:

- ``num_threads`` serving threads call ``fp_serve()`` once (GIL released) and serve classic
  requests in C until the server stops, each request on a regular PHP thread borrowed from the
  runtime's C pool (csrc/pool.h) for that request only: ``Runtime.execute_*`` callers queue in
  the same FIFO line as HTTP requests;
- HTTP worker threads keep their Python lifecycle (boot, restart, backoff, halt), but their
  script takes its requests from the worker's C queue (``fp_native_worker_host()``).

With ``io_model="per-thread"`` (run-to-completion) there are no loop threads and no classic
queue: each serving thread runs an h2o loop of its own on a ``SO_REUSEPORT`` socket of its own
(``fp_serve_loop()``), parses its connections' requests, answers static files, and runs the
classic requests it parsed itself, one after the other, as apache prefork does per process.
HTTP workers and ``/metrics`` still get their requests through their queues.  README, "How a
request runs", compares the two.

Python runs for lifecycle events, for ``/metrics`` (a C queue of its own), and for diagnostics
and the access log, which C queues and one Python thread logs in batches.

Autoscaling (``max_threads``, frankenpy.scaling) uses the runtime's scaler: C counts the
requests that waited 5 ms for a thread (in queue 0 or the pool, in a worker's queue) and a
:class:`~frankenpy.scaling.StallWatch` polls the counts.  There is one serving thread per
regular PHP thread: when the scaler adds one, a serving thread is started; when it stops idle
ones, as many serving threads are drained (each finishes its request in progress first, then
takes no other).  Worker threads it adds get their C queue before they start.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from typing import Any

from .. import _native
from ..execution import Diagnostic, log_diagnostic, pack_strings
from ..php_functions import log_extra, python_level
from ..runtime import Runtime
from ..scaling import RegularThreads, StallWatch, WorkerThreads
from ..threads import WorkerLogAdapter, php_log_adapter
from .app import PHPApp
from .server import ServerBase, Site, access_logger
from .workers import HTTPWorkerThread, request_queue

ffi, lib = _native.ffi, _native.lib
logger = WorkerLogAdapter(logging.getLogger("frankenpy.http"), {"worker": "-"})

LOG_BATCH = 256 * 1024  # bytes of log records taken per call
DEFAULT_LOOP_THREADS = 1
IO_MODELS = ("handoff", "per-thread")  # loop threads hand requests to PHP threads; run-to-completion
MAX_PER_THREAD_LOOPS = 64  # MAX_LOOPS in csrc/http_server.c
LOG_WAIT_MS = 200


def check_tls(cert: str | None, key: str | None) -> None:
    """ValueError naming the option and the file unless ``cert`` (PEM chain) and ``key`` (its
    PEM private key) make a TLS server identity, as the server loads it (both None: no TLS)."""
    if cert is None and key is None:
        return
    if not cert or not key:
        raise ValueError(f"{'tls_key' if cert else 'tls_cert'}: missing (tls_cert and tls_key go together)")
    err = ffi.new("char[]", 512)
    if lib.fp_http_tls_check(os.fsencode(cert), os.fsencode(key), err, len(err)) != 0:
        raise ValueError(ffi.string(err).decode("utf-8", "replace"))


def _block(pairs: dict[str, str]) -> tuple[Any, int]:
    if not pairs:
        return ffi.NULL, 0
    return ffi.new("char[]", pack_strings([item for pair in pairs.items() for item in pair])), len(pairs)


class NativeServer(ServerBase):
    """Serves ``sites`` (whose apps must be :class:`PHPApp`) with the native server until
    :meth:`stop`.  ``access_log`` logs one line per request on ``frankenpy.access``;
    ``loop_threads`` C threads parse and answer HTTP (PHP runs on the runtime's threads);
    ``io_model="per-thread"`` has each of the runtime's ``num_threads`` serving threads parse
    and answer its own connections instead (``loop_threads`` does not apply).
    ``tls_cert`` (PEM certificate chain) and ``tls_key`` (PEM private key) serve HTTPS, with
    HTTP/2 and HTTP/1.1 by ALPN, on every site that has no ``Site.tls_cert`` of its own."""

    def __init__(self, runtime: Runtime, sites: list[Site], *, access_log: bool = False,
                 loop_threads: int = DEFAULT_LOOP_THREADS, io_model: str = "handoff",
                 tls_cert: str | os.PathLike[str] | None = None,
                 tls_key: str | os.PathLike[str] | None = None) -> None:
        for site in sites:
            if not isinstance(site.app, PHPApp):
                raise TypeError("the native server serves PHPApp sites only; mount other WSGI apps "
                                "with frankenpy.http.server.Server")
        self.runtime = runtime
        self.sites = sites
        self.access_log = access_log
        if not 1 <= loop_threads <= 16:
            raise ValueError(f"loop_threads must be 1..16, got {loop_threads}")
        self.loop_threads = loop_threads
        self.tls_cert = os.fspath(tls_cert) if tls_cert is not None else None
        self.tls_key = os.fspath(tls_key) if tls_key is not None else None
        for site in sites:
            check_tls(*self._tls(site))
        if io_model not in IO_MODELS:
            raise ValueError(f"io_model must be one of {', '.join(IO_MODELS)}, not {io_model!r}")
        if io_model == "per-thread" and not 1 <= runtime.num_threads <= MAX_PER_THREAD_LOOPS:
            raise ValueError(f"io_model 'per-thread' serves with 1..{MAX_PER_THREAD_LOOPS} threads "
                             f"(num_threads), not {runtime.num_threads}")
        self.io_model = io_model
        self._server: Any = None
        self._keep: list[Any] = []
        self._ports: list[int] = []
        self._threads: list[threading.Thread] = []
        self._stop_flag = ffi.new("int *")
        self._log_thread: threading.Thread | None = None
        self._logging = True
        self._stopped = threading.Event()
        self._php_loggers: dict[str, WorkerLogAdapter] = {}
        # serving threads (fp_serve) and their drain flags, one per regular PHP thread
        self._serving: list[tuple[threading.Thread, Any]] = []
        self._serving_lock = threading.Lock()
        self._serving_index = 0
        self._stall_watch: StallWatch | None = None
        self._scaled: list[Any] = []  # the scaler's sources this server hooked into
        self._final_counters: dict[str, int] = {}

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Bind every listener, hand HTTP workers their C queues, start serving."""
        err = ffi.new("char[]", 512)
        server = lib.fp_http_server_new(self.loop_threads, 1 if self.access_log else 0, err, len(err))
        if server == ffi.NULL:
            raise RuntimeError(f"native HTTP server: {ffi.string(err).decode()}")
        self._server = server
        if self.io_model == "per-thread" and lib.fp_http_server_per_thread(
                server, self.runtime.num_threads, err, len(err)) != 0:
            lib.fp_http_server_stop(server)
            raise RuntimeError(f"native HTTP server: {ffi.string(err).decode()}")
        group = self.runtime.workers_group
        workers = [t for t in group.threads if isinstance(t, HTTPWorkerThread)]
        queues: dict[tuple[int, str], int] = {}
        for thread in workers:
            key = (thread.worker.scope, thread.worker.name)
            if key not in queues:
                queues[key] = lib.fp_http_server_add_queue(server)
                request_queue(group, *key).native = (server, queues[key])
        try:
            for site in self.sites:
                self._add_site(site, queues, err)
        except BaseException:
            lib.fp_http_server_stop(server)
            raise
        self._rebind_workers(workers, queues)
        self._resize_serving()
        self._start_scaling(queues)
        self._spawn(self._serve_python, "http-python")
        self._log_thread = self._spawn(self._drain_logs, "http-logs")
        if lib.fp_http_server_start(server, err, len(err)) != 0:
            self.stop(0)
            raise RuntimeError(f"native HTTP server: {ffi.string(err).decode()}")
        for site, port in zip(self.sites, self._ports, strict=True):
            scheme = "https" if self._tls(site)[0] else "http"
            logger.info("serving on %s://%s:%s/ (native%s)", scheme, site.host, port,
                        ", per-thread" if self.io_model == "per-thread" else "")

    def _add_site(self, site: Site, queues: dict[tuple[int, str], int], err: Any) -> None:
        app = site.app
        assert isinstance(app, PHPApp)
        conf = ffi.new("fp_http_site *")
        host = ffi.new("char[]", site.host.encode())
        before, n_before = _block(dict(self.runtime.env))
        after, n_after = _block(app.env)
        self._keep += [conf, host, before, after, app.router]
        conf.host = host
        conf.port = site.port
        conf.router = app.router._router
        conf.max_body_size = min(site.max_body_size, app.max_body_size)
        conf.max_wait_time = app.max_wait_time or 0.0
        conf.metrics = 1 if site.metrics else 0
        cert, key = self._tls(site)
        if cert is not None and key is not None:
            cert_c, key_c = ffi.new("char[]", os.fsencode(cert)), ffi.new("char[]", os.fsencode(key))
            self._keep += [cert_c, key_c]
            conf.tls_cert, conf.tls_key = cert_c, key_c
        conf.env_before, conf.env_before_pairs = before, n_before
        conf.env_after, conf.env_after_pairs = after, n_after
        index = lib.fp_http_server_add_site(self._server, conf, err, len(err))
        if index < 0:
            raise OSError(f"{site.host}:{site.port}: {ffi.string(err).decode()}")
        self._ports.append(int(conf.bound_port))
        routes = [(pattern, worker) for pattern, worker in app._matched]
        routes += [(None, worker) for worker in app._by_file.values()]
        for pattern, worker in routes:
            pattern_c = ffi.new("char[]", pattern.encode()) if pattern else ffi.NULL
            script = ffi.new("char[]", str(worker.path).encode())
            self._keep += [pattern_c, script]
            lib.fp_http_server_add_worker_route(self._server, index, pattern_c, script,
                                                queues[(worker.scope, worker.name)])

    def _tls(self, site: Site) -> tuple[str | None, str | None]:
        """The certificate and key files ``site`` is served with (both None: plain HTTP)."""
        if site.tls_cert or site.tls_key:
            return site.tls_cert, site.tls_key
        return self.tls_cert, self.tls_key

    def _rebind_workers(self, workers: list[HTTPWorkerThread], queues: dict[tuple[int, str], int]) -> None:
        """Give each HTTP worker thread its C queue and run its script again, so that its next
        run takes requests in C; waits until each is ready again (or halted)."""
        if not workers:
            return
        runs = []
        for thread in workers:
            tag = ffi.new("char[]", thread.worker.name.encode())
            self._keep.append(tag)
            native = lib.fp_native_worker_new(
                self._server, queues[(thread.worker.scope, thread.worker.name)], thread.php.image.handle,
                tag, thread.worker.max_requests or 0,
            )
            thread.attach_native(native)
            runs.append((thread, thread.runs))
            if thread.alive:
                thread.drain(stop=False)
            else:
                thread.launch()
        group = self.runtime.workers_group
        group._wait_settled(workers, self.runtime.start_timeout)

    def _spawn(self, target: Any, name: str, *args: Any) -> threading.Thread:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)
        return thread

    def _serve_classic(self, index: int, drain: Any) -> None:
        tag = ffi.new("char[]", f"php-{index}".encode())
        try:
            pool = self.runtime._running_pool()
        except RuntimeError:
            return  # the runtime shut down first
        server = self._server
        if server is None:
            return  # stopped already
        if self.io_model == "per-thread":
            lib.fp_serve_loop(server, pool.handle, index, tag)  # GIL released: runs its own loop
        else:
            lib.fp_serve(server, pool.handle, tag, drain)  # GIL released

    def _resize_serving(self) -> None:
        """As many serving threads as regular PHP threads (autoscaling changes their number):
        start the missing ones, drain the extra ones (a drained one ends its request first)."""
        try:
            target = self.runtime._running_pool().size
        except RuntimeError:
            return  # shutting down
        if self.io_model == "per-thread":
            target = self.runtime.num_threads  # one loop each, set up by fp_http_server_per_thread
        with self._serving_lock:
            if self._stop_flag[0]:
                return
            while len(self._serving) < target:
                drain = ffi.new("int *")
                index, self._serving_index = self._serving_index, self._serving_index + 1
                thread = self._spawn(self._serve_classic, f"php-http-{index}", index, drain)
                self._serving.append((thread, drain))
            drained = False
            while len(self._serving) > target:
                _, drain = self._serving.pop()
                drain[0] = 1
                drained = True
            if drained:
                lib.fp_http_wake(self._server, 0)

    @property
    def serving_threads(self) -> int:
        """Threads serving classic requests now (one per regular PHP thread)."""
        with self._serving_lock:
            return len(self._serving)

    def _start_scaling(self, queues: dict[tuple[int, str], int]) -> None:
        """Hook the runtime's autoscaler (if max_threads asks for one) into this server."""
        scaler = self.runtime._scaler
        if scaler is None:
            return
        probes = []
        for source in scaler.sources:
            if isinstance(source, RegularThreads):
                if self.io_model == "per-thread":
                    logger.warning("io_model 'per-thread' serves with num_threads loops: regular "
                                   "threads added by max_threads serve execute_* callers only")
                    continue
                source.on_resize = self._resize_serving
                probes.append((source, self._classic_stalls))
            elif isinstance(source, WorkerThreads):
                queue = queues.get((source.worker.scope, source.worker.name))
                if queue is None:
                    continue  # no site routes to this worker
                source.prepare = functools.partial(self._attach_native, queue)
                source.release = self._release_native
                probes.append((source, functools.partial(self._queue_stalls, queue)))
            else:
                continue
            self._scaled.append(source)
        self._stall_watch = StallWatch(scaler, probes).start()

    def _queue_stalls(self, queue: int) -> tuple[int, int]:
        oldest = ffi.new("uint64_t *")
        count = lib.fp_http_server_queue_stalls(self._server, queue, oldest)
        return int(count), int(oldest[0])

    def _classic_stalls(self) -> tuple[int, int]:
        """Classic requests wait in queue 0 for a serving thread, then in the regular pool for
        an interpreter (Python's execute_* callers in the same line)."""
        count, oldest = self._queue_stalls(0)
        pool_oldest = ffi.new("uint64_t *")
        pool_count = lib.fp_pool_stalls(self.runtime._running_pool().handle, pool_oldest)
        return count + int(pool_count), max(oldest, int(pool_oldest[0]))

    def _attach_native(self, queue: int, thread: HTTPWorkerThread) -> None:
        tag = ffi.new("char[]", thread.worker.name.encode())
        native = lib.fp_native_worker_new(self._server, queue, thread.php.image.handle, tag,
                                          thread.worker.max_requests or 0)
        if native == ffi.NULL:
            raise MemoryError("fp_native_worker_new")
        self._keep.append(tag)
        thread.attach_native(native)

    @staticmethod
    def _release_native(thread: HTTPWorkerThread) -> None:
        native, thread.native = thread.native, None
        if native is not None:
            lib.fp_native_worker_free(native)

    def _stop_scaling(self) -> None:
        if self._stall_watch is not None:
            self._stall_watch.stop()
        for source in self._scaled:
            if isinstance(source, RegularThreads):
                source.on_resize = None
            else:
                source.prepare = source.release = None

    def _serve_python(self) -> None:
        server = self._server  # (stop() clears the attribute once this thread has ended)
        queue = lib.fp_http_server_python_queue(server)
        while True:
            exchange = lib.fp_http_take(server, queue, self._stop_flag)
            if exchange == ffi.NULL:
                return
            try:
                body = (self.runtime.metrics_text() + self.metrics_text()).encode()
                lib.fp_http_exchange_respond(exchange, 200, b"Content-Type: text/plain; version=0.0.4\n",
                                             body, len(body))
            except Exception:
                logger.exception("/metrics failed")
                lib.fp_http_exchange_respond(exchange, 500, b"Content-Type: text/plain\n", b"error\n", 6)

    def _drain_logs(self) -> None:
        buf = ffi.new("char[]", LOG_BATCH)
        server = self._server
        while True:
            n = lib.fp_http_server_take_logs(server, buf, LOG_BATCH, LOG_WAIT_MS)
            if n:
                self._emit_logs(ffi.buffer(buf, n)[:])
            elif not self._logging:
                return

    def _emit_logs(self, data: bytes) -> None:
        pos = 0
        while pos < len(data):
            # "kind\0tag\0<n>\0" and n bytes of message (see fp_http_server_take_logs)
            kind_end = data.index(b"\0", pos)
            tag_end = data.index(b"\0", kind_end + 1)
            length_end = data.index(b"\0", tag_end + 1)
            end = length_end + 1 + int(data[tag_end + 1:length_end])
            kind, tag, message = (data[a:b].decode("utf-8", "replace") for a, b in (
                (pos, kind_end), (kind_end + 1, tag_end), (length_end + 1, end)))
            pos = end
            if kind == "A":
                access_logger.info("%s", message)
                continue
            if kind == "S":
                logger.warning("%s", message)
                continue
            adapter = self._php_loggers.get(tag)
            if adapter is None:
                adapter = self._php_loggers[tag] = php_log_adapter(tag)
            if kind[0] == "L":  # frankenphp_log(): the record php_functions.fp_py_php_log makes
                text, _, context = message.rpartition("\x1f")
                try:
                    extra = log_extra(context.encode())
                except ValueError:  # not expected (C drops a context it would cut): keep the text
                    extra = {"context": {}}
                adapter.log(python_level(int(kind[1:])), "%s", text, extra=extra)
                continue
            text, _, where = message.partition("\x1f")
            file, _, line = where.partition("\x1f")
            diagnostic = Diagnostic(type=int(kind), message=text, file=file or None,
                                    line=int(line) if line.isdigit() else 0)
            log_diagnostic(adapter, diagnostic)

    @property
    def ports(self) -> list[int]:
        return list(self._ports)

    def counters(self) -> dict[str, int]:
        """The server's own counters (requests, php_requests, in_flight, rejected_503,
        client_gone, php_busy), read from C; after :meth:`stop`, their last values."""
        if self._server is None:
            return dict(self._final_counters)
        out = ffi.new("fp_http_counters *")
        lib.fp_http_server_counters(self._server, out)
        return {name: int(getattr(out, name)) for name in
                ("requests", "php_requests", "in_flight", "rejected_503", "client_gone", "php_busy")}

    def metrics_text(self) -> str:
        """The server's counters in Prometheus text format (added to ``/metrics``)."""
        counters = self.counters()
        families = [
            ("frankenpy_http_requests_total", "counter", "Requests received by the native server",
             counters["requests"]),
            ("frankenpy_http_php_requests_total", "counter", "Requests handed to PHP threads",
             counters["php_requests"]),
            ("frankenpy_http_requests_in_flight", "gauge", "Requests handed to PHP and not yet answered",
             counters["in_flight"]),
            ("frankenpy_http_rejected_total", "counter",
             "Requests answered 503 (max_wait_time passed, or stopping)", counters["rejected_503"]),
            ("frankenpy_http_client_gone_total", "counter",
             "Clients that left before their response was complete", counters["client_gone"]),
            ("frankenpy_http_serving_threads", "gauge",
             "Threads serving classic requests (one per regular PHP thread, autoscaled with them)",
             self.serving_threads),
        ]
        return "".join(f"# HELP {name} {help_}\n# TYPE {name} {kind}\n{name} {value}\n"
                       for name, kind, help_, value in families)

    def stop(self, grace: float = 30.0) -> None:
        """Refuse new requests (503), let in-flight ones finish (``grace`` seconds at most),
        close the listeners, then shut the runtime down (draining its workers)."""
        server = self._server
        if server is None or self._stopped.is_set():
            return
        self._stop_scaling()
        lib.fp_http_server_drain(server)
        left = lib.fp_http_server_wait_idle(server, int(grace * 1000))  # GIL released
        if left:
            logger.warning("%d request(s) still running after %.1f s", left, grace)
        lib.fp_http_server_stop(server)  # closes the queues: every serving thread returns
        with self._serving_lock:
            self._stop_flag[0] = 1
        lib.fp_http_wake(server, 0)
        for thread in list(self._threads):
            if thread is not self._log_thread:
                thread.join(max(grace, 5.0))
        for queue in self.runtime.workers_group.http_queues.values():
            queue.native = None
        self.runtime.shutdown(grace)
        self._logging = False
        lib.fp_http_server_wake_logs(server)
        if self._log_thread is not None:
            self._log_thread.join(5.0)
        self._final_counters = self.counters()
        self._server = None
        lib.fp_http_server_free(server)  # h2o's loops, contexts and configuration too
        self._stopped.set()
