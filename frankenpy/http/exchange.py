"""One HTTP request run by PHP, and how its response reaches the server.

An :class:`Exchange` is an execution whose SAPI callbacks build an HTTP response: PHP's status
and headers arrive once (before the first body byte), body bytes arrive on each ``flush()``,
whenever the glue has collected ``FP_FLUSH_AT`` bytes, and at the end.  :class:`HTTPExchange`
delivers it to a WSGI server (``frankenpy.asgi`` has the ASGI one).  A classic request runs on
the WSGI server's own thread and writes through the WSGI ``write()`` callable as it goes, so
``flush()`` streams.  A request handed to an HTTP worker runs on the worker's thread; the
exchange then carries its response back to the waiting WSGI thread through a bounded queue (the
worker waits while the client is slower than the script), which that thread writes the same
way.  Either way a response's memory stays bounded however much the script prints.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterable, Mapping
from http import HTTPStatus
from typing import Any
from wsgiref.util import is_hop_by_hop

from .. import _native
from ..execution import Execution
from ..scaling import STALL_TIME
from ..threads import PHPThread
from .routing import Route, cgi_environ

StartResponse = Callable[..., Callable[[bytes], Any]]
ffi = _native.ffi
WORKER_CHUNKS_IN_FLIGHT = 16  # flushed chunks (each <= FP_FLUSH_AT bytes) a worker may run ahead

class _End:
    """The worker finished the request; ``rest`` is the body not flushed before."""

    __slots__ = ("rest",)

    def __init__(self, rest: bytes) -> None:
        self.rest = rest


def status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Unknown"


def parse_header_lines(lines: Iterable[str]) -> list[tuple[str, str]]:
    """PHP's ``Name: value`` lines as WSGI header tuples (latin-1 native strings).  Hop-by-hop
    headers (``Connection``, ``Transfer-Encoding`` ...) belong to the server, which PEP 3333
    forbids an application to set: they are dropped."""
    headers = []
    for line in lines:
        name, sep, value = line.partition(":")
        name = name.strip()
        if sep and name and not is_hop_by_hop(name):
            headers.append((name, value.strip()))
    return headers


class Exchange(Execution):
    """An HTTP request for PHP: its ``$_SERVER`` and the response PHP produces, whatever the
    server interface (WSGI: :class:`HTTPExchange`, ASGI: :mod:`frankenpy.asgi`).

    Subclasses deliver the response: :meth:`deliver` a flushed chunk (on the thread that runs
    PHP), :meth:`end` the rest once the response is complete, :meth:`read_body` the body."""

    def __init__(
        self,
        environ: Mapping[str, Any],
        route: Route,
        *,
        content_length: int,
        runtime_env: Mapping[str, str],
        server_env: Mapping[str, str],
        thread: PHPThread | None = None,
    ) -> None:
        # Classic requests run on `thread` and reuse its request struct; the others get their
        # own (a worker's glue fills it; the ASGI app binds a PHP thread later).
        super().__init__(thread, reuse_request=thread is not None)
        self.status = 200
        self.headers: list[tuple[str, str]] = []
        self.claimed = False  # a worker thread took it (set under its RequestQueue's lock)
        self.client_gone = False  # a write to the client failed: PHP aborts the script
        self._have_headers = False
        self._end_sent = False  # the end of the response has been handed to end()
        self._head_length = 0  # HEAD: body bytes the script produced (flushed ones dropped)

        cgi = cgi_environ(environ, route, extra=server_env)
        request = self.request
        req = request.struct
        req.http = 1
        req.output_mode = 2  # FP_OUTPUT_FLUSH: deliver on flush() and at the end
        req.request_method = request.cstr(cgi["REQUEST_METHOD"])
        self.head = cgi["REQUEST_METHOD"] == "HEAD"
        self.method, self.uri = cgi["REQUEST_METHOD"], cgi["REQUEST_URI"]  # for the admin API
        req.request_uri = request.cstr(cgi["REQUEST_URI"])
        req.query_string = request.cstr(cgi["QUERY_STRING"])
        if cgi.get("CONTENT_TYPE"):
            req.content_type = request.cstr(cgi["CONTENT_TYPE"])
        if "HTTP_COOKIE" in cgi:
            req.cookie_data = request.cstr(cgi["HTTP_COOKIE"])
        if "HTTP_AUTHORIZATION" in cgi:
            req.authorization = request.cstr(cgi["HTTP_AUTHORIZATION"])
        req.content_length = content_length  # -1: unknown, PHP reads until the body ends
        # Both layers are valid names already (the runtime's env was checked at construction).
        request.set_env(list({**runtime_env, **cgi}.items()))
        self.script = route.script_filename

    # --- what subclasses provide -------------------------------------------------------------
    def deliver(self, data: bytes) -> bool:
        """A flushed body chunk (not for HEAD); False once the client has gone away."""
        raise NotImplementedError

    def end(self, rest: bytes) -> None:
        """The response is complete; ``rest`` is the body not flushed before.  Called once."""
        raise NotImplementedError

    def handed_to_worker(self) -> None:
        """From now on the response is produced on a worker thread."""

    # --- the response ----------------------------------------------------------------------------
    def complete(self, rest: bytes) -> None:
        """The response is complete (on the thread that runs PHP); once only, as
        frankenphp_finish_request() may have ended it before the script did."""
        if not self._end_sent:
            self._end_sent = True
            self.end(rest)

    def final_headers(self, rest: bytes, started: bool) -> list[tuple[str, str]]:
        """The headers of a response that ends with ``rest``: with a Content-Length (which
        keeps the connection alive) when nothing was sent before.  HEAD sends its headers only
        here, whatever was flushed, with the length of the body the script produced: a HEAD
        response started early would be framed as chunked, and the server would then send a
        chunked terminator as its body and close the connection."""
        bodiless = 100 <= self.status < 200 or self.status in (204, 304)
        if not started and not bodiless:
            if not any(name.lower() == "content-length" for name, _ in self.headers):
                self.headers.append(("Content-Length", str(self._head_length + len(rest))))
        return self.headers

    # --- SAPI callbacks ----------------------------------------------------------------------------
    def collect(self, req: Any) -> None:
        """Take PHP's status and headers from the request once it has sent them (on the thread
        that runs PHP, while the request's C memory is alive)."""
        if not self._have_headers and req.headers_sent:
            self._have_headers = True
            self.status = req.response_code
            text = ffi.buffer(req.headers, req.headers_len)[:].decode("latin-1") if req.headers_len else ""
            self.headers = parse_header_lines(text.split("\n"))

    def on_output(self, data: bytes) -> bool:
        self.collect(self.request.struct)  # a flush: the headers went out first
        if self.client_gone:
            return False
        if self.head:  # the glue produces the body; it is not sent (see final_headers)
            self._head_length += len(data)
            return True
        return self.deliver(data)

    def on_finish(self, req: Any) -> None:
        """frankenphp_finish_request(): end the response now with what PHP produced so far;
        the script goes on, its later output is dropped by the glue."""
        self.collect(req)
        self.complete(bytes(ffi.buffer(req.output, req.output_len)) if req.output_len else b"")

    def output_failed(self, exc: Exception) -> None:
        super().output_failed(exc)
        self.client_gone = True  # nothing more is written; the response is broken off


class HTTPExchange(Exchange):
    """An HTTP request from a WSGI server.

    A classic request runs on the WSGI server's own thread and writes through the WSGI
    ``write()`` callable as it goes.  A request handed to an HTTP worker runs on the worker's
    thread; the exchange then carries its response back to the waiting WSGI thread through a
    bounded queue (the worker waits while the client is slower than the script)."""

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
    ) -> None:
        super().__init__(environ, route, content_length=len(body), runtime_env=runtime_env,
                         server_env=server_env, thread=thread)
        self.start_response = start_response
        self._write: Callable[[bytes], Any] | None = None
        self._body = memoryview(body)
        self._events: queue.Queue[Any] | None = None  # set when a worker runs it
        self._completed = False  # the WSGI response has been started for good (its body given)
        # Interim (1xx) responses: only a server that offers them (frankenpy's, see server.py);
        # WSGI itself has no way to send one.
        self._interim: Callable[[int, list[tuple[str, str]]], bool] | None = environ.get("frankenpy.interim")

    # --- running it ------------------------------------------------------------------------------
    def run_classic(self) -> list[bytes]:
        """Run the script on this (the WSGI) thread; returns the rest of the body."""
        self.request.struct.script_path = self.request.cstr(self.script)
        return self._finish(self.run().output)

    def wait_for_worker(
        self,
        withdraw: Callable[[], bool],
        max_wait: float | None,
        starved: Callable[[], None] | None = None,
    ) -> list[bytes] | None:
        """On the WSGI thread, once the request is queued for a worker: write what the worker
        flushes as it comes and return the rest of the body.  None when no worker thread took
        the request within ``max_wait`` seconds and ``withdraw()`` took it back (503).
        ``starved()`` (autoscaling) is called if no thread took it within STALL_TIME."""
        assert self._events is not None
        timeout = max_wait
        event: Any = None
        if starved is not None:
            stall = STALL_TIME if max_wait is None else min(max_wait, STALL_TIME)
            try:
                event = self._events.get(timeout=stall)
            except queue.Empty:
                if not self.claimed:
                    starved()
                timeout = None if max_wait is None else max(0.0, max_wait - stall)
        while True:
            if event is None:
                try:
                    event = self._events.get(timeout=timeout)
                except queue.Empty:
                    if withdraw():
                        return None
                    timeout = None  # claimed meanwhile: its response is coming
                    continue
            timeout = None
            if isinstance(event, _End):
                return self._finish(event.rest)
            self._emit(event)
            event = None

    def handed_to_worker(self) -> None:
        self._events = queue.Queue(WORKER_CHUNKS_IN_FLIGHT)

    def deliver(self, data: bytes) -> bool:
        if self._events is not None:
            self._events.put(data)  # worker thread -> WSGI thread
            return not self.client_gone
        return self._emit(data)

    def end(self, rest: bytes) -> None:
        if self._events is not None:
            self._events.put(_End(rest))  # the WSGI thread ends the response at once
            return
        # A classic request runs on the WSGI thread, which returns the body only when the
        # script ends: write it now.  The response is complete for the client when it carries
        # a Content-Length, i.e. when nothing was flushed before (see README).
        for chunk in self._finish(rest):
            self._emit(chunk)

    def on_interim(self, status: int, lines: list[str]) -> bool:
        """headers_send(1xx): an interim response with these headers, if the server can."""
        if self._interim is None or self.client_gone:
            return False
        return bool(self._interim(status, parse_header_lines(lines)))

    def read_body(self, size: int) -> bytes:
        chunk, self._body = self._body[:size], self._body[size:]
        return bytes(chunk)

    # --- WSGI delivery -----------------------------------------------------------------------------
    def _start(self) -> None:
        if self._write is None:
            self._write = self.start_response(status_line(self.status), self.headers)

    def _finish(self, rest: bytes) -> list[bytes]:
        """Start the response if nothing was flushed and return the rest of the body."""
        if self._completed:
            return []  # frankenphp_finish_request() already ended it
        self._completed = True
        if self.output_error is not None:
            # Part of the body is lost: the server answers 500 if nothing was sent yet, and
            # otherwise closes the connection without the response's end (the client sees
            # the truncation instead of a complete-looking short body).
            raise RuntimeError("PHP output lost") from self.output_error
        self.final_headers(rest, self._write is not None)
        self._start()
        return [rest] if rest and not self.head else []

    def _emit(self, data: bytes) -> bool:
        """Write a flushed chunk to the client; False once the client has gone away."""
        if self.client_gone:
            return False
        try:
            self._start()
            if data:
                assert self._write is not None
                self._write(data)
        except Exception as exc:  # each WSGI server has its own "client disconnected" error
            self.logger.info("client gone while streaming the response: %r", exc)
            self.client_gone = True
        return not self.client_gone
