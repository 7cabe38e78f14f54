"""One HTTP request run by PHP, and how its response reaches the WSGI server.

An :class:`HTTPExchange` is an execution whose SAPI callbacks build an HTTP response: PHP's
status and headers arrive once (before the first body byte), body bytes arrive on each
``flush()`` and at the end.  A classic request runs on the WSGI server's own thread and writes
through the WSGI ``write()`` callable as it goes, so ``flush()`` streams.  A request handed to an
HTTP worker runs on the worker's thread; the exchange then carries its response back to the
waiting WSGI thread through a queue, which that thread writes the same way.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Mapping
from http import HTTPStatus
from typing import Any

from ..execution import Execution, env_pairs
from ..threads import PHPThread
from .routing import Route, cgi_environ

StartResponse = Callable[..., Callable[[bytes], Any]]

_END = object()


def status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Unknown"


def parse_header_lines(lines: Iterable[str]) -> list[tuple[str, str]]:
    """PHP's ``Name: value`` lines as WSGI header tuples (latin-1 native strings)."""
    headers = []
    for line in lines:
        name, sep, value = line.partition(":")
        if sep and name.strip():
            headers.append((name.strip(), value.strip()))
    return headers


class HTTPExchange(Execution):
    """An HTTP request for PHP: its ``$_SERVER``, body, and the response PHP produces."""

    def __init__(
        self,
        environ: Mapping[str, Any],
        route: Route,
        start_response: StartResponse,
        *,
        body: bytes,
        runtime_env: Mapping[str, str],
        server_env: Mapping[str, str],
        thread: PHPThread | None = None,
        logger: Any = None,
    ) -> None:
        super().__init__(thread, logger=logger)
        self.start_response = start_response
        self.status = 200
        self.headers: list[tuple[str, str]] = []
        self._write: Callable[[bytes], Any] | None = None
        self._body = memoryview(body)
        self._events: queue.SimpleQueue[Any] | None = None  # set when a worker runs it
        self.claimed = threading.Event()  # a worker thread took it
        self.cancelled = False  # the client stopped waiting for a worker (503)
        self.worker_crashed = False

        cgi = cgi_environ(environ, route, extra=server_env)
        request = self.request
        req = request.struct
        req.http = 1
        req.output_mode = 2  # FP_OUTPUT_FLUSH: deliver on flush() and at the end
        req.request_method = request.cstr(cgi["REQUEST_METHOD"])
        req.request_uri = request.cstr(cgi["REQUEST_URI"])
        req.query_string = request.cstr(cgi["QUERY_STRING"])
        if cgi.get("CONTENT_TYPE"):
            req.content_type = request.cstr(cgi["CONTENT_TYPE"])
        if "HTTP_COOKIE" in cgi:
            req.cookie_data = request.cstr(cgi["HTTP_COOKIE"])
        if "HTTP_AUTHORIZATION" in cgi:
            req.authorization = request.cstr(cgi["HTTP_AUTHORIZATION"])
        req.content_length = len(body)
        request.set_env(env_pairs(runtime_env, cgi))
        self.script = route.script_filename

    # --- running it ------------------------------------------------------------------------------
    def run_classic(self) -> list[bytes]:
        """Run the script on this (the WSGI) thread; returns the rest of the body."""
        self.request.struct.script_path = self.request.cstr(self.script)
        result = self.run()
        self._start()
        return [result.output] if result.output else []

    def wait_for_worker(self) -> list[bytes]:
        """Called on the WSGI thread after a worker claimed the request: write what the worker
        produces until the request is done; returns nothing left to send."""
        assert self._events is not None
        while True:
            event = self._events.get()
            if event is _END:
                self._start()
                return []
            self._emit(event)

    def handed_to_worker(self) -> None:
        """From now on the response is produced on a worker thread."""
        self._events = queue.SimpleQueue()

    def finish_from_worker(self, rest: bytes, crashed: bool = False) -> None:
        """The worker is done with this request (on the worker thread)."""
        assert self._events is not None
        self.worker_crashed = crashed
        if rest:
            self._events.put(rest)
        self._events.put(_END)

    # --- SAPI callbacks ----------------------------------------------------------------------------
    def on_headers(self, status: int, lines: list[str]) -> None:
        self.status = status
        self.headers = parse_header_lines(lines)

    def on_output(self, data: bytes) -> None:
        if self._events is not None:
            self._events.put(data)  # worker thread -> WSGI thread
        else:
            self._emit(data)

    def read_body(self, size: int) -> bytes:
        chunk, self._body = self._body[:size], self._body[size:]
        return bytes(chunk)

    # --- WSGI delivery -----------------------------------------------------------------------------
    def _start(self) -> None:
        if self._write is None:
            self._write = self.start_response(status_line(self.status), self.headers)

    def _emit(self, data: bytes) -> None:
        self._start()
        if data:
            assert self._write is not None
            self._write(data)
