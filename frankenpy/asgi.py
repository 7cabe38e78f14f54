"""The ASGI 3 application that serves a document root with PHP, beside the WSGI one.

``PHPApp(runtime, document_root, ...)`` takes the WSGI :class:`frankenpy.http.app.PHPApp`'s
arguments and makes the same decisions (:class:`~frankenpy.http.app.PHPSite`: the C router,
static files, refusals, HTTP workers); only the I/O differs:

* A classic PHP request runs on one of the runtime's regular PHP threads, driven by one of the
  event loop's long-lived C workers, those of ``Runtime.aexecute_*`` (csrc/serve.h fp_async: at
  most one per PHP thread, started on demand, gone when idle): the worker queues for the thread
  in the pool's FIFO line and runs the request there.  The event loop never runs PHP nor waits
  for it, and no thread is started per request.  Completion reaches the loop through the
  loop's eventfd.  A request for an HTTP worker goes to the worker's queue, whose thread runs it.
* The request body streams in: PHP's ``php://input`` (and form parsing) asks for the next chunk
  when it needs one; the PHP thread blocks (without the GIL) while the loop awaits ``receive()``.
* The response streams out: each chunk PHP flushes is sent with ``more_body=True``.  At most
  CHUNKS_IN_FLIGHT chunks (each at most FP_FLUSH_AT bytes) wait for the client: past that the
  PHP thread waits, so a response's memory stays bounded however much a script prints.
* ``http.disconnect`` marks the client gone: the script's next output aborts it, unless it
  called ``ignore_user_abort(true)`` (PHP's own rule).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any

from . import _native
from .execution import php_logger
from .http.app import PHPSite
from .http.exchange import Exchange, parse_header_lines
from .http.routing import Route, StaticResponse
from .runtime import _AsyncCompletions
from .scaling import STALL_TIME
from .threads import ThreadPool

__all__ = ["PHPApp", "asgi_environ"]

ffi, lib = _native.ffi, _native.lib
logger = logging.getLogger("frankenpy.http")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

CHUNKS_IN_FLIGHT = 16  # flushed chunks a PHP thread may run ahead of the client
CANCELLED = -4  # csrc/serve.h FP_FAST_CANCELLED (cffi sees no #define)
POLL = 1.0  # a blocked PHP thread looks this often whether the response was abandoned
STARVED_POLL = 0.05  # s: a queued request asks autoscaling (and for a worker) again this often


def _native_str(text: str) -> str:
    """ASGI's decoded text as a WSGI native string (its UTF-8 bytes as latin-1)."""
    return text.encode("utf-8", "surrogateescape").decode("latin-1")


def asgi_environ(scope: Mapping[str, Any]) -> dict[str, Any]:
    """The WSGI environ (PEP 3333 native strings) of an ASGI ``http`` scope: what the routing,
    static files and ``$_SERVER`` code shared with the WSGI app read.  ``SCRIPT_NAME`` is the
    mount point (``root_path``), ``PATH_INFO`` the path below it."""
    root_path = scope.get("root_path", "") or ""
    path = scope.get("path", "/") or "/"
    if root_path and (path == root_path or path.startswith(root_path.rstrip("/") + "/")):
        path = path[len(root_path.rstrip("/")):] or "/"
    query = bytes(scope.get("query_string", b"")).decode("latin-1")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope.get("method", "GET"),
        "SCRIPT_NAME": _native_str(root_path),
        "PATH_INFO": _native_str(path),
        "QUERY_STRING": query,
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "wsgi.url_scheme": scope.get("scheme", "http"),
    }
    raw_path = scope.get("raw_path")
    if raw_path:
        environ["REQUEST_URI"] = bytes(raw_path).decode("latin-1") + (f"?{query}" if query else "")
    server = scope.get("server")
    if server:
        environ["SERVER_NAME"] = str(server[0])
        environ["SERVER_PORT"] = "" if server[1] is None else str(server[1])
    client = scope.get("client")
    if client:
        environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = str(client[0]), str(client[1])
    for raw_name, raw_value in scope.get("headers", ()):
        name = bytes(raw_name).decode("latin-1").upper().replace("-", "_")
        value = bytes(raw_value).decode("latin-1")
        key = name if name in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{name}"
        if key in environ:  # repeated header: one value, as a WSGI server gives it
            value = environ[key] + ("; " if key == "HTTP_COOKIE" else ",") + value
        environ[key] = value
    return environ


def _headers(headers: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]


async def send_static(send: Send, response: StaticResponse) -> None:
    """Send a complete response (static file, redirect, refusal): the file in chunks."""
    await send({"type": "http.response.start", "status": response.status,
                "headers": _headers(response.headers)})
    body = response.body
    try:
        for chunk in body:
            if chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()
    await send({"type": "http.response.body", "body": b"", "more_body": False})


class ASGIExchange(Exchange):
    """One PHP request of the ASGI app: the PHP side (any thread) hands events to the loop
    through an asyncio queue, at most CHUNKS_IN_FLIGHT of them unsent; :meth:`respond` (on
    the loop) sends them."""

    def __init__(
        self,
        environ: Mapping[str, Any],
        route: Route,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        content_length: int | None,
        max_body_size: int,
        runtime_env: Mapping[str, str],
        server_env: Mapping[str, str],
    ) -> None:
        super().__init__(environ, route, content_length=-1 if content_length is None else content_length,
                         runtime_env=runtime_env, server_env=server_env)
        self._loop = asyncio.get_running_loop()
        self._receive, self._asgi_send = receive, send
        self._events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._credits = threading.Semaphore(CHUNKS_IN_FLIGHT)
        self._abandoned = False  # respond() has returned: nothing reads the events any more
        self._buffer = memoryview(b"")
        self._received = 0
        self._max_body_size = max_body_size
        self.too_large = False  # a body without Content-Length grew past max_body_size
        chunked = "chunked" in str(environ.get("HTTP_TRANSFER_ENCODING", "")).lower()
        self._body_done = content_length == 0 or (content_length is None and not chunked)
        self._received_end = False  # receive() gave the body's last message
        self._early_hints = "http.response.early_hint" in (scope.get("extensions") or {})
        self._response_started = False
        self._listener: asyncio.Task[None] | None = None
        self.cancelled = False  # the ASGI task was cancelled: do not start the script
        self.pool: ThreadPool | None = None  # the regular PHP threads of a classic request

    # --- PHP side: the thread that runs the script -------------------------------------------
    def run_on(self, member: int) -> None:
        """Run the script on pool member ``member`` (on the C thread that acquired it)."""
        assert self.pool is not None
        thread = self.pool.thread(member)
        self.thread, self.logger = thread, thread.logger
        req = self.request.struct
        req.worker_ctx = thread.worker_ctx
        req.script_path = self.request.cstr(self.script)
        rest = b""
        try:
            if not self.cancelled:
                rest = self.run().output
        except BaseException as exc:  # never leave the client waiting
            self.output_failed(exc)
            raise
        finally:
            self.complete(rest)

    def _post(self, kind: str, payload: Any) -> bool:
        """Hand an event to the loop, first waiting while CHUNKS_IN_FLIGHT are unsent."""
        while not self._credits.acquire(timeout=POLL):
            if self._abandoned:
                return False
        if self._abandoned:
            return False
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, (kind, payload))
        except RuntimeError:  # the loop is closed
            self._abandoned = True
            return False
        return True

    def deliver(self, data: bytes) -> bool:
        return self._post("body", data) and not self.client_gone

    def end(self, rest: bytes) -> None:
        self._post("end", rest)

    def on_interim(self, status: int, lines: list[str]) -> bool:
        """headers_send(103): the ``http.response.early_hint`` extension, when the server
        offers it, carries the Link headers; ASGI has no other interim response."""
        if not self._early_hints or status != 103 or self.client_gone:
            return False
        links = [value for name, value in parse_header_lines(lines) if name.lower() == "link"]
        return bool(links) and self._post("hint", links)

    def read_body(self, size: int) -> bytes:
        """Up to ``size`` bytes, fewer only at the body's end (PHP takes a short read for the
        end), waiting for the client's chunks as they arrive."""
        out = bytearray()
        while len(out) < size:
            if not self._buffer:
                if self._body_done or self._abandoned:
                    break
                self._buffer = memoryview(self._wait_for_chunk())
            take = min(size - len(out), len(self._buffer))
            out += self._buffer[:take]
            self._buffer = self._buffer[take:]
        return bytes(out)

    def _wait_for_chunk(self) -> bytes:
        """The client's next body chunk, awaited by the loop (this thread waits without the GIL)."""
        future = asyncio.run_coroutine_threadsafe(self._next_chunk(), self._loop)
        while True:
            try:
                return future.result(timeout=POLL)
            except TimeoutError:
                if self._abandoned:
                    future.cancel()
                    return b""

    # --- loop side -----------------------------------------------------------------------------
    async def _next_chunk(self) -> bytes:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.client_gone = True
                self._body_done = True
                return b""
            body = bytes(message.get("body", b""))
            self._received += len(body)
            if self._received > self._max_body_size:
                # Too late for a 413 before PHP: the body ends here and the script's next
                # output aborts it; the client gets the 413 if nothing was sent yet.
                self.too_large = self.client_gone = self._body_done = True
                return b""
            if not message.get("more_body", False):
                self._body_done = self._received_end = True
                self._listen()
            if body or self._body_done:
                return body

    def _listen(self) -> None:
        """Once the body is read, receive() only says when the client goes away."""
        if self._listener is None:
            self._listener = self._loop.create_task(self._watch_disconnect())

    async def _watch_disconnect(self) -> None:
        # An unread body (a GET's empty one) is skipped up to its end; after the end comes
        # http.disconnect only (ASGI): anything else stops the watch, so that a receive()
        # answering at once cannot spin the loop.
        ended = self._received_end
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.client_gone = True
                return
            if ended or message["type"] != "http.request":
                return
            ended = not message.get("more_body", False)

    def refuse(self, status: int) -> None:
        """(On the loop) no PHP thread ran the request: respond() returns ``status``."""
        self._events.put_nowait(("refused", status))

    async def respond(
        self,
        withdraw: Callable[[], bool] | None = None,
        max_wait: float | None = None,
        starved: Callable[[], None] | None = None,
    ) -> int | None:
        """Send the response as PHP produces it.  Returns None once it is sent, or the status
        of a refusal to send instead (503: no PHP thread, 413: body too large).  For a request
        queued for a worker, ``withdraw()`` takes it back when no worker thread has taken it
        within ``max_wait`` seconds (503); ``starved()`` (autoscaling) is called if none took
        it within STALL_TIME."""
        if self._body_done:
            self._listen()
        try:
            event = None
            if withdraw is not None:
                event = await self._first_event(withdraw, max_wait, starved)
                if event is None:
                    return 503
            while True:
                kind, payload = event or await self._events.get()
                event = None
                try:
                    if kind == "body":
                        await self._send_body(payload)
                    elif kind == "hint":
                        await self._send({"type": "http.response.early_hint",
                                          "links": [link.encode("latin-1") for link in payload]})
                    elif kind == "refused":
                        return int(payload)
                    else:
                        return await self._send_end(payload)
                finally:
                    self._credits.release()
        finally:
            self._abandoned = True
            self._credits.release(CHUNKS_IN_FLIGHT)  # a PHP thread waiting for one sees it
            if self._listener is not None:
                self._listener.cancel()

    async def _first_event(
        self, withdraw: Callable[[], bool], max_wait: float | None, starved: Callable[[], None] | None
    ) -> tuple[str, Any] | None:
        get = asyncio.ensure_future(self._events.get())
        try:
            if starved is not None:
                stall = STALL_TIME if max_wait is None else min(max_wait, STALL_TIME)
                done, _ = await asyncio.wait({get}, timeout=stall)
                if not done and not self.claimed:
                    starved()
                max_wait = None if max_wait is None else max(0.0, max_wait - stall)
            done, _ = await asyncio.wait({get}, timeout=max_wait)
            if not done and withdraw():
                return None
            return await get  # claimed meanwhile: its response is coming
        finally:
            get.cancel()

    async def _send(self, message: Message) -> None:
        if self.client_gone:
            return
        try:
            await self._asgi_send(message)
        except Exception as exc:  # each server has its own "client disconnected" error
            self.logger.info("client gone while streaming the response: %r", exc)
            self.client_gone = True

    async def _start(self) -> None:
        self._response_started = True
        await self._send({"type": "http.response.start", "status": self.status,
                          "headers": _headers(self.headers)})

    async def _send_body(self, data: bytes) -> None:
        if not self._response_started:
            await self._start()
        if data:
            await self._send({"type": "http.response.body", "body": data, "more_body": True})

    async def _send_end(self, rest: bytes) -> int | None:
        if self.too_large and not self._response_started:
            return 413
        if self.output_error is not None:
            if not self._response_started:
                return 500
            # Part of the body is lost: break the response off (the server closes the
            # connection) instead of ending it as if complete.
            raise RuntimeError("PHP output lost") from self.output_error
        self.final_headers(rest, self._response_started)
        if not self._response_started:
            await self._start()
        body = b"" if self.head else rest
        await self._send({"type": "http.response.body", "body": body, "more_body": False})
        return None


# --- classic requests: the loop's C workers run them on a regular PHP thread ---------------------


@ffi.def_extern(onerror=lambda *exc: php_logger.error("ASGI request failed", exc_info=exc))
def fp_py_run_request(handle: Any, member: int) -> None:
    exchange = ffi.from_handle(handle)
    exchange.run_on(member)


def _submit(exchange: ASGIExchange, pool: ThreadPool, max_wait: float | None) -> Any:
    """Queue the request for the running loop's C workers; returns its fp_fast_call."""
    loop = asyncio.get_running_loop()
    call = ffi.new("fp_fast_call *")
    call.run_handle = exchange.handle
    exchange.pool = pool
    completions = _AsyncCompletions.of(loop, pool)
    future = completions.submit(call, exchange)

    def done(_: asyncio.Future[None]) -> None:
        if call.member < 0 and call.member != CANCELLED:
            exchange.refuse(503)
        if call.given_up:
            pool.given_up(pool.thread(call.member))

    future.add_done_callback(done)
    if max_wait is not None:
        # No PHP thread took it in time (it may wait for a worker or in the pool's line): 503.
        # run_on() sets the thread before it looks at `cancelled`, both under the GIL, so the
        # request either runs or is refused, never both.
        def expire() -> None:
            if exchange.thread is None and not future.done():
                exchange.cancelled = True
                call.cancel = 1  # it leaves the line, or gives the thread back at once
                exchange.refuse(503)
        timer = loop.call_later(max_wait, expire)
        # Cancelled (it drops the exchange) once done: thousands of requests a second would
        # otherwise keep max_wait seconds of them alive.
        future.add_done_callback(lambda _: timer.cancel())
    starved = pool.on_starved
    if starved is not None:
        # Autoscaling: a request still queued after starved_after asks for a thread, and again
        # until it runs; the workers grow with the threads added (every worker may be busy).
        def check() -> None:
            if exchange.thread is None and not future.done():
                starved()
                if completions.handle is not None:
                    lib.fp_async_kick(completions.handle, pool.handle)
                loop.call_later(STARVED_POLL, check)
        loop.call_later(pool.starved_after, check)
    return call


class PHPApp(PHPSite):
    """Serve ``document_root`` with PHP on the started runtime ``runtime``, as an ASGI 3
    application (``http`` and ``lifespan`` scopes); the arguments are the WSGI app's (see
    :class:`frankenpy.http.app.PHPSite`)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            return await self._lifespan(receive, send)
        if kind != "http":
            raise ValueError(f"frankenpy.asgi.PHPApp serves http scopes, not {kind!r}")
        environ = asgi_environ(scope)
        decision = self.dispatch(environ)
        if isinstance(decision, StaticResponse):
            return await send_static(send, decision)
        route, worker = decision
        length = self.declared_length(environ)
        if length is not None and length < 0:
            return await send_static(send, self.refusal(413, "request body too large"))
        exchange = ASGIExchange(
            environ, route, scope, receive, send, content_length=length,
            max_body_size=self.max_body_size, runtime_env=self.runtime.env,
            server_env=self.server_env(worker),
        )
        if worker is not None:
            queue, starved = self.worker_queue(worker)
            queue.submit(exchange)
            status = await self._respond(exchange, lambda: queue.withdraw(exchange), starved)
            why = f"no free thread of worker {worker.name!r}"
        else:
            call = _submit(exchange, self.runtime._running_pool(), self.max_wait_time)
            try:
                status = await self._respond(exchange, None, None)
            except asyncio.CancelledError:
                call.cancel = 1  # still queued: it leaves the line
                raise
            why = "no free PHP thread"
        if status is not None:
            await send_static(send, self.refusal(status, why if status == 503 else "request body too large"))

    async def _respond(
        self, exchange: ASGIExchange, withdraw: Callable[[], bool] | None, starved: Callable[[], None] | None
    ) -> int | None:
        try:
            return await exchange.respond(withdraw, self.max_wait_time, starved)
        except asyncio.CancelledError:
            exchange.cancelled = exchange.client_gone = True  # its next output aborts it
            if exchange.thread is not None:
                exchange.stop_now()
            raise

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self.runtime.state == "running":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.startup.failed",
                                "message": f"runtime {self.runtime.name} is {self.runtime.state}"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
