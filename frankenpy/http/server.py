"""The HTTP server: PHP apps served by waitress, in this process.

waitress was chosen by measurement (``scripts/bench_wsgi_servers.py``, docs/benchmarks.md):
among the servers that run a WSGI app *in the calling process* on threads (a pre-forking server
would leave the PHP interpreters behind), it had the best throughput and tail latency, streams
each chunk as it is produced (PHP ``flush()``), keeps idle keep-alive connections without a thread,
and stops on request.  granian was faster but only runs WSGI in a child process; gunicorn
forks; cheroot had 300+ ms p99; uvicorn with a2wsgi was slower.

A graceful stop: new requests get 503, in-flight ones finish (up to the grace period), the
listeners close, then the runtime drains its workers.

Malformed requests never reach the app: waitress answers them (400, 413, 431, 501) and closes
the connection; :class:`StrictRequestParser` removes two of its leniencies.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any

from waitress import wasyncore
from waitress.channel import ClientDisconnected, HTTPChannel
from waitress.parser import HTTPRequestParser, ParsingError
from waitress.server import create_server
from waitress.task import WSGITask

from ..runtime import Runtime
from ..threads import WorkerLogAdapter
from .routing import simple_response

logger = logging.getLogger("frankenpy.http")
access_logger = WorkerLogAdapter(logging.getLogger("frankenpy.access"), {"worker": "-"})

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


@dataclass
class Site:
    """One listener: ``host:port`` serving ``app``; ``metrics`` adds ``GET /metrics``;
    ``tls_cert``/``tls_key`` (PEM files): HTTPS and HTTP/2 (native server only)."""

    host: str
    port: int
    app: WSGIApp
    metrics: bool = False
    max_body_size: int = 8 * 1024 * 1024
    tls_cert: str | None = None
    tls_key: str | None = None


class StrictRequestParser(HTTPRequestParser):  # type: ignore[misc]
    """waitress's request parser, refusing (400, connection closed) what waitress would serve:

    - a request line without an HTTP version (HTTP/0.9 form), which waitress runs as HTTP/1.0;
    - both Content-Length and Transfer-Encoding (RFC 9112 section 6.3: an error, or at least the
      connection MUST close after the response).  waitress decodes the chunked body and keeps
      the connection open, which smuggles a request past any front proxy that framed the
      message by its Content-Length instead;
    - Transfer-Encoding in an HTTP/1.0 request (RFC 9112 section 6.1: faulty framing, close the
      connection).  waitress ignores the header there and reads the chunked body that follows
      as the next request on a kept-alive connection;
    - an HTTP/1.1 request without a Host header or with several (RFC 9112 section 3.2: 400).
      waitress joins repeated ones into "a, b", which then reaches ``$_SERVER['HTTP_HOST']``.
    """

    def parse_header(self, header_plus: bytes) -> None:
        super().parse_header(header_plus)
        if not self.version:
            raise ParsingError("request line without an HTTP version")
        if self.chunked and "CONTENT_LENGTH" in self.headers:
            raise ParsingError("both Content-Length and Transfer-Encoding")
        if self.version == "1.0" and "TRANSFER_ENCODING" in self.headers:
            raise ParsingError("Transfer-Encoding in an HTTP/1.0 request")
        if self.version == "1.1" and "," in self.headers.get("HOST", ","):
            raise ParsingError("an HTTP/1.1 request needs exactly one Host header")


class _InterimTask(WSGITask):
    """A waitress task whose environ offers ``frankenpy.interim(status, headers) -> bool``:
    an interim (1xx) response written on the connection before the final one, which PEP 3333
    has no way to express (PHP's ``headers_send(103)``, Early Hints)."""

    def get_environment(self) -> dict[str, Any]:
        environ: dict[str, Any] = super().get_environment()
        environ.setdefault("frankenpy.interim", self.send_interim)
        return environ

    def send_interim(self, status: int, headers: list[tuple[str, str]]) -> bool:
        # RFC 9110 15.2: never to an HTTP/1.0 client, and only before the final response.
        if self.wrote_header or self.version != "1.1" or not 100 <= status < 200 or status == 101:
            return False
        from .exchange import status_line

        lines = [f"HTTP/1.1 {status_line(status)}", *(f"{name}: {value}" for name, value in headers)]
        head = "\r\n".join(lines) + "\r\n\r\n"
        try:
            self.channel.write_soon(head.encode("latin-1"))
        except (ClientDisconnected, UnicodeEncodeError):
            return False
        self.channel.server.pull_trigger()  # the loop sends it now, not with the final response
        return True


class _Channel(HTTPChannel):  # type: ignore[misc]
    parser_class = StrictRequestParser
    task_class = _InterimTask


OUTPUT_FLUSH_WAIT = 2.0  # seconds a stop waits for finished responses to leave waitress's buffers


def _pending_output(server: Any) -> bool:
    return any(getattr(channel, "total_outbufs_len", 0) for channel in list(server._map.values()))


def _close_everything(server: Any, force: bool) -> None:
    """Close the listener and every idle connection of a waitress server, and the others once
    their response is out (``force``: now); its loop then ends.  Runs on the loop thread."""
    for channel in list(server._map.values()):
        if channel is server.trigger:
            channel.del_channel()  # out of the loop; closed once no task can pull it any more
        elif channel is server:
            # The listener; waitress's own close() would close the trigger too, under the feet
            # of a stop() or a task thread still pulling it.
            wasyncore.dispatcher.close(server)
        elif getattr(channel, "requests", None) or getattr(channel, "total_outbufs_len", 0):
            if force:
                channel.handle_close()  # see _close_stalled()
            else:
                channel.close_when_flushed = True  # a response is on its way: let it finish
        else:
            channel.close()  # idle keep-alive connections


def _close_stalled(server: Any) -> None:
    """Extend waitress's periodic clean-up (on its loop thread) to connections whose client
    stopped reading a response.  waitress closes idle connections after ``channel_timeout``,
    but not those: their unsent output stays, and once 16 MiB of it wait
    (``outbuf_high_watermark``) waitress blocks the task thread writing it, and the PHP thread
    behind it, for as long as the client keeps the connection open.  handle_close() wakes that
    writer, which then sees a client that went away (the script is aborted)."""
    maintenance = server.maintenance

    def close_stalled(now: float) -> None:
        maintenance(now)
        cutoff = now - server.adj.channel_timeout
        stalled = [
            channel for channel in server.active_channels.values()
            if channel.total_outbufs_len and channel.last_activity < cutoff
        ]
        if stalled:
            # Not now: this runs while the loop collects the sockets to select() on.
            server.trigger.pull_trigger(lambda: [channel.handle_close() for channel in stalled])

    server.maintenance = close_stalled


class _Response:
    """Wraps a response iterable to log the request and count it as in flight until closed."""

    def __init__(self, server: Server, body: Iterable[bytes], started: float, line: str, status: list[str]):
        self.server, self.body, self.started, self.line, self.status = server, body, started, line, status

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.body)

    def close(self) -> None:
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            status = self.status[0].split(" ", 1)[0] if self.status else "-"
            access_logger.info("%s %s %.1f ms", self.line, status, (time.monotonic() - self.started) * 1000)
            self.server._request_done()


class ServerBase:
    """What both servers (:class:`Server`, :class:`~frankenpy.http.native.NativeServer`) do
    the same way around their own ``stop(grace)``."""

    def stop(self, grace: float = 30.0) -> None:
        raise NotImplementedError

    def serve_forever(self, grace: float = 30.0) -> None:
        """Serve until SIGTERM or SIGINT (main thread only), then :meth:`stop`."""
        with StopSignals() as stop:
            try:
                stop.wait()
            finally:
                self.stop(grace)


class Server(ServerBase):
    """Serves ``sites`` over HTTP with waitress until :meth:`stop`.

    ``client_timeout``: a connection that neither sends nor takes a byte for that many seconds
    is closed, also in the middle of a response (its script is then aborted).
    """

    def __init__(
        self, runtime: Runtime, sites: list[Site], *, threads: int | None = None, client_timeout: int = 120
    ) -> None:
        if not isinstance(client_timeout, int) or isinstance(client_timeout, bool) or client_timeout < 1:
            raise ValueError(f"client_timeout must be an integer >= 1 (seconds), got {client_timeout!r}")
        for site in sites:
            if site.tls_cert or site.tls_key:
                raise ValueError(f"{site.host}:{site.port}: TLS (tls_cert/tls_key) needs the native server; "
                                 "waitress serves plain HTTP only")
        self.runtime = runtime
        self.sites = sites
        self.client_timeout = client_timeout
        # (with autoscaling, as many as the PHP threads may grow to)
        http_threads = sum(
            max(w.num, w.max_threads) for w in runtime.workers_group.workers if not w.background
        )
        # A request holds a WSGI thread while PHP runs it: a few more than PHP threads keeps
        # every PHP thread busy; more only adds GIL contention (measured: 8 threads ran hello
        # at 60 % of the rate of 2).
        self.threads = threads or runtime.max_threads + http_threads + 2
        self._in_flight = 0
        self._cond = threading.Condition()
        self._draining = False
        self._servers: list[Any] = []
        self._loops: list[threading.Thread] = []
        self._stopped = threading.Event()

    # --- request accounting ----------------------------------------------------------------
    def _wrap(self, site: Site) -> WSGIApp:
        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            started = time.monotonic()
            target = environ.get("REQUEST_URI") or environ.get("PATH_INFO", "")
            line = f"{environ.get('REQUEST_METHOD', '-')} {target}"
            status: list[str] = []

            def recording_start_response(status_line: str, headers: Any, exc_info: Any = None) -> Any:
                status[:] = [status_line]
                return start_response(status_line, headers, exc_info)

            with self._cond:
                draining = self._draining
                if not draining:
                    self._in_flight += 1
            if draining:
                response = simple_response(503, "server shutting down\n")
                start_response(response.status_line, response.headers)
                return response.body
            try:
                if site.metrics and environ.get("PATH_INFO") == "/metrics":
                    body = self.runtime.metrics_text().encode()
                    recording_start_response("200 OK", [
                        ("Content-Type", "text/plain; version=0.0.4"), ("Content-Length", str(len(body))),
                    ])
                    result: Iterable[bytes] = [body]
                else:
                    result = site.app(environ, recording_start_response)
            except BaseException:
                self._request_done()
                raise
            return _Response(self, result, started, line, status)

        return app

    def _request_done(self) -> None:
        with self._cond:
            self._in_flight -= 1
            self._cond.notify_all()

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Bind every listener and serve on background threads."""
        for site in self.sites:
            server = create_server(
                self._wrap(site),
                host=site.host,
                port=site.port,
                threads=self.threads,
                connection_limit=1000,
                max_request_body_size=site.max_body_size + 1,  # the app answers 413 itself
                ident="frankenpy",
                clear_untrusted_proxy_headers=True,
                channel_timeout=self.client_timeout,
                cleanup_interval=min(30, self.client_timeout),
            )
            server.channel_class = _Channel
            _close_stalled(server)
            self._servers.append(server)
            loop = threading.Thread(target=server.run, name=f"http-{site.port}", daemon=True)
            loop.start()
            self._loops.append(loop)
            logger.info("serving on http://%s:%s/", site.host, server.effective_port, extra={"worker": "-"})

    @property
    def ports(self) -> list[int]:
        return [int(server.effective_port) for server in self._servers]

    def stop(self, grace: float = 30.0) -> None:
        """Refuse new requests, let in-flight ones finish (``grace`` seconds at most), close
        the listeners, then shut the runtime down (draining its workers)."""
        with self._cond:
            self._draining = True
            finished = self._cond.wait_for(lambda: self._in_flight == 0, grace)
            if not finished:
                logger.warning("%d request(s) still running after %.1f s", self._in_flight, grace,
                               extra={"worker": "-"})
        # Let responses already handed to waitress leave its buffers, then close every socket
        # from the server's own loop thread (closing under a running select() gives EBADF).
        deadline = time.monotonic() + min(grace, OUTPUT_FLUSH_WAIT)
        while time.monotonic() < deadline and any(_pending_output(server) for server in self._servers):
            time.sleep(0.01)
        # Past the grace, what is still being written goes to clients that stopped reading (or
        # to scripts that run on): close those connections too, which frees their threads.
        force = not finished or any(_pending_output(server) for server in self._servers)
        for server in self._servers:
            server.trigger.pull_trigger(lambda server=server: _close_everything(server, force))
        for loop in self._loops:
            loop.join(5.0)
        for server in self._servers:
            server.task_dispatcher.shutdown()
            server.trigger.close()
        self.runtime.shutdown(grace)
        self._stopped.set()



class StopSignals:
    """While active (``with``), SIGTERM and SIGINT set an event instead of killing the process
    or raising KeyboardInterrupt; the previous handlers come back on exit.  Main thread only."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.event = threading.Event()
        self._previous: dict[int, Any] = {}

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        logger.info("received %s: shutting down", signal.Signals(signum).name, extra={"worker": "-"})
        self.event.set()

    def __enter__(self) -> StopSignals:
        self._previous = {sig: signal.signal(sig, self._on_signal) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def wait(self) -> None:
        """Until a signal came (in short waits, so that the handler gets to run)."""
        while not self.event.wait(0.5):
            pass
