"""The admin API (FrankenPHP's ``/frankenphp/*`` endpoints of Caddy's admin server).

Off by default; ``admin = "127.0.0.1:2019"`` in ``[runtime]`` or ``--admin ADDR`` turns it on.

* ``POST /frankenphp/workers/restart``: graceful restart of every worker, answers
  ``workers restarted successfully\\n`` (405 for any other method);
* ``GET /frankenphp/threads``: FrankenPHP's ``DebugState()`` JSON, one entry per PHP thread;
* ``GET /frankenphp/workers``: each worker thread's status (``Runtime.workers()``).

It listens on loopback.  Any other address must be given explicitly and needs a bearer token
(``admin_token``): without one the server refuses to start; with one, a request without
``Authorization: Bearer <token>`` gets 401.  A token set for a loopback address is required
too.  Not a hot path: a small threaded ``http.server``.
"""

from __future__ import annotations

import dataclasses
import hmac
import ipaddress
import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from .config import parse_listen
from .threads import WorkerLogAdapter

if TYPE_CHECKING:
    from .runtime import Runtime

logger = WorkerLogAdapter(logging.getLogger("frankenpy.admin"), {"worker": "-"})

DEFAULT_ADDRESS = "127.0.0.1:2019"
RESTARTED = b"workers restarted successfully\n"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: whatever it resolves to is not known to stay local


def check_address(address: str, token: str | None) -> tuple[str, int]:
    """(host, port) of ``address``; ValueError saying why it cannot be used."""
    host, port = parse_listen(address)
    if not is_loopback(host) and not token:
        raise ValueError(
            f"admin: {address!r} is not a loopback address; anyone who reaches it could restart "
            "the workers. Set admin_token (a bearer token) in [runtime] or FRANKENPY_ADMIN_TOKEN, "
            "or listen on 127.0.0.1"
        )
    if token is not None and not token.strip():
        raise ValueError("admin: admin_token is empty")
    return host, port


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def thread_states(runtime: Runtime) -> dict[str, Any]:
    """FrankenPHP's ``FrankenPHPDebugState``: every PHP thread of ``runtime``."""
    workers = {id(t.php): t for t in runtime.workers_group.threads}
    now_wall, now_mono = time.time(), time.monotonic()
    states = []
    for index, php in enumerate(runtime.php_threads):
        state: dict[str, Any] = {
            "Index": index, "Name": "Regular PHP Thread", "State": "ready", "IsWaiting": False,
            "IsBusy": False, "WaitingSinceMilliseconds": 0, "CurrentURI": "", "CurrentMethod": "",
            "RequestStartedAt": 0, "RequestCount": php.executions, "MemoryUsage": php.memory_usage,
        }
        request = None
        worker = workers.get(id(php))
        if worker is None:
            current = php.current
            request = current if current is not None and hasattr(current, "uri") else None
            if not php.busy:
                state.update(IsWaiting=True, WaitingSinceMilliseconds=_ms(now_wall - php.since))
            else:
                state["IsBusy"] = True
                if request is None:  # execute_file()/execute_code()
                    state["RequestStartedAt"] = _ms(php.since)
        else:
            state["Name"] = f"Worker PHP Thread - {worker.worker.path}"
            state["State"] = worker.state
            run = getattr(worker, "current_run", None)  # HTTP workers
            if not worker.worker.background:
                state["RequestCount"] = worker.requests
            if run is not None and worker.state == "ready":
                request = run.in_flight
                if request is None:
                    state.update(IsWaiting=True, WaitingSinceMilliseconds=_ms(now_wall - run.idle_since))
                else:
                    state["IsBusy"] = True
            elif worker.state == "ready":
                state["IsBusy"] = True  # a background worker runs its script
        if request is not None:
            state.update(
                CurrentURI=request.uri, CurrentMethod=request.method,
                RequestStartedAt=_ms(now_wall - (now_mono - request.started)),
            )
        states.append(state)
    return {"ThreadDebugStates": states, "ReservedThreadCount": runtime.reserved_threads}


def worker_states(runtime: Runtime) -> list[dict[str, Any]]:
    return [dataclasses.asdict(status) for status in runtime.workers()]


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "frankenpy-admin"

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.client_address[0], *args)

    def _send(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _authorized(self) -> bool:
        token = self.server.token
        if token is None:
            return True
        scheme, _, given = (self.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
            return True
        self._send(401, b"unauthorized\n", headers={"WWW-Authenticate": 'Bearer realm="frankenpy"'})
        return False

    def _dispatch(self) -> None:
        if not self._authorized():
            return
        path = self.path.split("?", 1)[0]
        runtime = self.server.runtime
        routes = {
            "/frankenphp/workers/restart": ("POST", lambda: (RESTARTED, "text/plain; charset=utf-8")),
            "/frankenphp/threads": ("GET", lambda: (_json(thread_states(runtime)), "application/json")),
            "/frankenphp/workers": ("GET", lambda: (_json(worker_states(runtime)), "application/json")),
        }
        route = routes.get(path)
        if route is None:
            self._send(404, b"not found\n")
            return
        method, produce = route
        if self.command != method and not (method == "GET" and self.command == "HEAD"):
            self._send(405, b"method not allowed\n", headers={"Allow": method})
            return
        if path == "/frankenphp/workers/restart":
            try:
                runtime.restart_workers()
            except RuntimeError as exc:
                self._send(500, f"{exc}\n".encode())
                return
            logger.info("workers restarted through the admin API")
        body, content_type = produce()
        self._send(200, body, content_type)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _dispatch


def _json(value: Any) -> bytes:
    return json.dumps(value).encode() + b"\n"


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], runtime: Runtime, token: str | None) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.runtime = runtime
        self.token = token
        super().__init__(address, _Handler)


class AdminServer:
    """The admin API of ``runtime`` on ``address`` (see the module docstring)."""

    def __init__(self, runtime: Runtime, address: str = DEFAULT_ADDRESS, token: str | None = None) -> None:
        host, port = check_address(address, token)
        self._server = _Server((host, port), runtime, token)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="frankenpy-admin", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> AdminServer:
        self._thread.start()
        host, port = self._server.server_address[:2]
        logger.info("admin API on http://%s:%s/frankenphp/", host, port)
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
