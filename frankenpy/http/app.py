"""The WSGI application (PEP 3333) that serves a document root with PHP, like ``php_server``.

Per request: HTTP workers whose ``match`` pattern fits the path take it; otherwise the path is
resolved under the document root (:mod:`frankenpy.http.routing`): static files are served, a
script that is an HTTP worker's file goes to that worker, any other PHP script runs classically
on a regular PHP thread.  Bodies larger than ``max_body_size`` get 413 without reaching PHP;
requests that find no free PHP thread (or worker thread) within ``max_wait_time`` get 503.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from ..runtime import Runtime
from ..scopes import GLOBAL_SCOPE
from ..threads import WorkerLogAdapter
from ..workers import Worker
from .exchange import HTTPExchange, StartResponse
from .routing import Route, RouteKind, Router, StaticResponse, respond, simple_response, wsgi_to_text
from .workers import RequestQueue, request_queue

logger = logging.getLogger("frankenpy.http")

DEFAULT_MAX_BODY_SIZE = 8 * 1024 * 1024
ROUTE_TTL = 2.0  # seconds a PHP route is reused before the file system is asked again
ROUTE_CACHE_SIZE = 4096


class PHPSite:
    """The request decisions that the WSGI :class:`PHPApp` and the ASGI one
    (:class:`frankenpy.asgi.PHPApp`) share; each does its own I/O.

    ``scope`` selects which HTTP workers of the runtime this app routes to (one app per server
    block, as FrankenPHP's ``php_server`` scopes).  ``env`` is added to ``$_SERVER``.
    ``follow_symlinks=False`` refuses (403) every symlink whose target is outside the document
    root, for roots that hold untrusted uploads; by default they are followed, as Caddy, nginx
    and apache do.  The document root's own symlinks are resolved once, here.
    """

    def __init__(
        self,
        runtime: Runtime,
        document_root: str | os.PathLike[str],
        *,
        scope: int = GLOBAL_SCOPE,
        env: Mapping[str, str] | None = None,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
        max_wait_time: float | None = 30.0,
        follow_symlinks: bool = True,
    ) -> None:
        root = Path(document_root).absolute()
        if not root.is_dir():
            raise FileNotFoundError(f"document root not found: {root}")
        if max_body_size < 0:
            raise ValueError(f"max_body_size must be >= 0, got {max_body_size}")
        self.runtime = runtime
        self.document_root = root
        self.env = dict(env or {})
        self.max_body_size = max_body_size
        self.max_wait_time = max_wait_time
        self.router = Router(root, follow_symlinks=follow_symlinks)
        http_workers = [w for w in runtime.workers_group.workers if not w.background and w.scope == scope]
        self._matched = [(w.match, w) for w in http_workers if w.match]
        self._by_file = {str(w.path): w for w in http_workers if not w.match}
        self._log = WorkerLogAdapter(logger, {"worker": "-"})
        self._routes: dict[str, tuple[float, Route]] = {}

    def dispatch(self, environ: Mapping[str, Any]) -> StaticResponse | tuple[Route, Worker | None]:
        """What the request ``environ`` (a WSGI environ) gets: a complete response (a static
        file, a redirect, a refusal), or the PHP route to run, with the HTTP worker that runs
        it (None: a classic request)."""
        raw_path = environ.get("PATH_INFO", "") or "/"
        path = wsgi_to_text(raw_path)
        if "\0" in path:
            return self.refusal(400, "NUL byte in the request path")
        if not path.startswith("/"):  # "OPTIONS *", "CONNECT host:443": for a proxy, not a site
            return self.refusal(400, "request target neither origin-form nor absolute-form")
        worker = next((w for pattern, w in self._matched if fnmatch.fnmatchcase(path, pattern)), None)
        if worker is not None:
            return Route(
                RouteKind.PHP, 200, str(self.document_root), script_name=path,
                script_filename=str(worker.path), real_path=str(worker.path),
            ), worker
        route = self._route(raw_path, environ.get("QUERY_STRING", ""))
        if route.kind is not RouteKind.PHP:
            return respond(route, environ)
        return route, self._by_file.get(route.real_path) or self._by_file.get(route.script_filename)

    def server_env(self, worker: Worker | None) -> dict[str, str]:
        """``env`` for a request, with FRANKENPHP_WORKER=1 when a worker serves it (as in
        FrankenPHP)."""
        return {**self.env, "FRANKENPHP_WORKER": "1"} if worker is not None else self.env

    def worker_queue(self, worker: Worker) -> tuple[RequestQueue, Callable[[], None] | None]:
        """The queue of ``worker``'s requests, and its autoscaling hook (called when a request
        has waited STALL_TIME for a thread of the worker)."""
        queue = request_queue(self.runtime.workers_group, worker.scope, worker.name)
        return queue, self.runtime.workers_group.scaling.get((worker.scope, worker.name))

    def declared_length(self, environ: Mapping[str, Any]) -> int | None:
        """The request's Content-Length; None without one; -1 when it is invalid or larger
        than ``max_body_size`` (413)."""
        length_header = environ.get("CONTENT_LENGTH") or ""
        if not length_header.strip():
            return None
        try:
            length = int(length_header)
        except ValueError:
            return -1
        return -1 if length < 0 or length > self.max_body_size else length

    def _route(self, raw_path: str, query_string: str) -> Route:
        """The router's decision, with PHP routes cached for ROUTE_TTL seconds (as PHP's
        realpath cache does): resolving costs an lstat() per path segment and probe."""
        now = time.monotonic()
        cached = self._routes.get(raw_path)
        if cached is not None and cached[0] > now:
            return cached[1]
        route = self.router.resolve(raw_path, query_string)
        if route.kind is RouteKind.PHP:
            if len(self._routes) >= ROUTE_CACHE_SIZE:
                self._routes.clear()
            self._routes[raw_path] = (now + ROUTE_TTL, route)
        return route

    def refusal(self, status: int, why: str) -> StaticResponse:
        """The response refusing a request (logged with ``why``)."""
        self._log.warning("%d: %s", status, why)
        return simple_response(status)


class PHPApp(PHPSite):
    """Serve ``document_root`` with PHP on the started runtime ``runtime`` (WSGI); the
    arguments are :class:`PHPSite`'s."""

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        decision = self.dispatch(environ)
        if isinstance(decision, StaticResponse):
            return self._answer(start_response, decision)
        route, worker = decision
        body = self._read_body(environ)
        if body is None:
            return self._answer(start_response, self.refusal(413, "request body too large"))
        if worker is not None:
            exchange = HTTPExchange(
                environ, route, start_response, body=body, runtime_env=self.runtime.env,
                server_env=self.server_env(worker),
            )
            return self._via_worker(exchange, worker, start_response)
        with self.runtime.borrow_thread(self.max_wait_time) as thread:
            if thread is None:
                return self._answer(start_response, self.refusal(503, "no free PHP thread"))
            exchange = HTTPExchange(
                environ, route, start_response, body=body, runtime_env=self.runtime.env,
                server_env=self.env, thread=thread,
            )
            return exchange.run_classic()

    def _via_worker(
        self, exchange: HTTPExchange, worker: Worker, start_response: StartResponse
    ) -> Iterable[bytes]:
        queue, starved = self.worker_queue(worker)
        queue.submit(exchange)
        body = exchange.wait_for_worker(lambda: queue.withdraw(exchange), self.max_wait_time, starved)
        if body is None:
            refusal = self.refusal(503, f"no free thread of worker {worker.name!r}")
            return self._answer(start_response, refusal)
        return body

    def _read_body(self, environ: Mapping[str, Any]) -> bytes | None:
        """The whole request body, or None when it exceeds ``max_body_size``."""
        stream = environ.get("wsgi.input")
        if stream is None:
            return b""
        length = self.declared_length(environ)
        if length is not None:
            if length < 0:
                return None
            return stream.read(length) if length else b""
        chunked = "chunked" in str(environ.get("HTTP_TRANSFER_ENCODING", "")).lower()
        if not (chunked or environ.get("wsgi.input_terminated")):
            return b""  # no Content-Length and no chunked body: HTTP/1.1 says there is none
        data = stream.read(self.max_body_size + 1)  # the server de-chunks and ends the stream
        return None if len(data) > self.max_body_size else data

    @staticmethod
    def _answer(start_response: StartResponse, response: StaticResponse) -> Iterable[bytes]:
        start_response(response.status_line, response.headers)
        return response.body
