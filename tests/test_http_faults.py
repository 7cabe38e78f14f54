"""Fault suite, HTTP part: malformed and hostile HTTP against the real server on 127.0.0.1.

Raw sockets send what a well-behaved client library never would.  Every path of the document
root runs ``index.php``, which appends each run to a log file: a hostile request must get a 4xx
answer or a closed connection, never reach PHP (the log stays as it was), and the server must
serve a normal request right after.  Time bounds are generous (the machine is shared).
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_for

import frankenpy
from frankenpy.http.app import PHPApp
from frankenpy.http.server import Server, Site

RECORDER_PHP = """<?php
file_put_contents({log}, $_SERVER['REQUEST_METHOD'] . ' ' . $_SERVER['REQUEST_URI'] . "\\n",
                  FILE_APPEND | LOCK_EX);
echo 'recorded ', strlen(file_get_contents('php://input'));
"""

# Streams ~8 MiB in 64 KiB flushes, then records whether PHP saw the client leave.
STREAM_PHP = """<?php
ignore_user_abort(false);
register_shutdown_function(function () {{
    file_put_contents({out}, connection_aborted() ? 'aborted' : 'completed');
}});
$chunk = str_repeat('s', 65536);
for ($i = 0; $i < 128; $i++) {{
    echo $chunk;
    flush();
    usleep(20000);
}}
"""

MAX_BODY = 64 * 1024


class Site_:
    def __init__(self, base: Path, server: Server) -> None:
        self.base, self.server = base, server
        self.log = base / "runs.log"
        self.port = int(server.ports[0])

    def runs(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site_]:
    base = tmp_path_factory.mktemp("faults")
    root = base / "public"
    root.mkdir()
    (root / "index.php").write_text(RECORDER_PHP.format(log=repr(str(base / "runs.log"))))
    (root / "stream.php").write_text(STREAM_PHP.format(out=repr(str(base / "stream.txt"))))
    rt = frankenpy.Runtime(num_threads=2)
    rt.start()
    app = PHPApp(rt, root, max_body_size=MAX_BODY)
    server = Server(rt, [Site("127.0.0.1", 0, app, max_body_size=MAX_BODY)])
    try:
        server.start()
        yield Site_(base, server)
    finally:
        server.stop(grace=5.0)


def exchange(port: int, data: bytes, timeout: float = 20.0) -> bytes:
    """Send ``data``, read until the server closes the connection; everything it sent."""
    return exchange_ex(port, data, timeout)[0]


def exchange_ex(
    port: int, data: bytes, timeout: float = 20.0, idle: float | None = None
) -> tuple[bytes, bool]:
    """Send ``data`` and read what comes back: (bytes, whether the server closed the
    connection).  With ``idle``, stop once nothing more came for that many seconds after a
    first byte (a connection kept alive)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):  # refused before all was sent
            pass
        received = bytearray()
        try:
            while chunk := sock.recv(1 << 16):
                received += chunk
                if idle is not None:
                    sock.settimeout(idle)
        except ConnectionResetError:
            pass
        except TimeoutError:
            if idle is None or not received:
                raise
            return bytes(received), False
    return bytes(received), True


def normal_request_works(site: Site_, path: str = "/after") -> None:
    reply = exchange(site.port, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    assert reply.endswith(b"recorded 0"), reply[-200:]
    assert site.runs()[-1] == f"GET {path}"


def status_of(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/") else 0


HOSTILE = {
    "garbage-request-line": b"GARBAGE\r\n\r\n",
    "request-line-without-version": b"GET /x\r\nHost: x\r\n\r\n",
    "header-without-colon": b"GET /x HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n",
    "header-name-with-space": b"GET /x HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n",
    "oversized-header": b"GET /x HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 300_000 + b"\r\n\r\n",
    "many-headers": (
        b"GET /x HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(3000)) + b"\r\n"
    ),
    "oversized-request-line": b"GET /" + b"a" * 300_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "content-length-not-a-number": b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\nabc",
    "content-length-negative": b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\nabcde",
    "content-length-plus-sign": b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nabcde",
    "content-length-twice-differing": (
        b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nabcdef"
    ),
    "content-length-beyond-max-body": (
        b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\nabc"
    ),
    "content-length-and-chunked": (
        b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    ),
    "http10-transfer-encoding": (
        b"POST /x HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"GET /smuggled HTTP/1.0\r\nHost: x\r\n\r\n"
    ),
    "http11-without-host": b"GET /x HTTP/1.1\r\nX-A: 1\r\n\r\n",
    "http11-two-hosts": b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "unknown-transfer-encoding": (
        b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabc"
    ),
    "chunked-not-last": (
        b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n"
    ),
    "bad-chunk-size": (
        b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"
    ),
    "chunked-body-beyond-max-body": (
        b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"".join(b"4000\r\n" + b"c" * 0x4000 + b"\r\n" for _ in range(5)) + b"0\r\n\r\n"
    ),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_request_is_refused_before_php(site: Site_, name: str) -> None:
    """waitress refuses these (400, 413, 431, 501) and closes the connection.  It served five
    of them until frankenpy's StrictRequestParser: the request line without a version, the
    HTTP/1.1 requests without a Host or with two, and Content-Length + Transfer-Encoding and
    HTTP/1.0 + Transfer-Encoding (both with a second, smuggled request behind, which it also
    ran)."""
    before = site.runs()
    reply, closed = exchange_ex(site.port, HOSTILE[name])
    status = status_of(reply)
    assert status in (400, 413, 431, 501), reply[:300]
    assert closed
    assert b"\r\nconnection: close" in reply.lower(), reply[:300]
    assert len(re.findall(rb"(?:^|\n)HTTP/1\.[01] \d{3} ", reply)) == 1, reply  # nothing behind it ran
    assert site.runs() == before, f"{name} reached PHP"
    normal_request_works(site)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "request_line",
    [b"GET /\x00x HTTP/1.1", b"GET /%00x HTTP/1.1", b"GET /index.php%00.txt HTTP/1.1"],
    ids=["raw-nul", "encoded-nul", "encoded-nul-extension"],
)
def test_nul_in_the_path_is_refused_before_php_and_the_connection_lives(
    site: Site_, request_line: bytes
) -> None:
    """waitress passes a NUL in the path on; the app answers 400 itself (keep-alive)."""
    before = site.runs()
    reply, closed = exchange_ex(site.port, request_line + b"\r\nHost: x\r\n\r\n", idle=1.0)
    assert status_of(reply) == 400, reply[:300]
    assert not closed
    assert site.runs() == before
    normal_request_works(site)


@pytest.mark.timeout(60)
def test_valid_request_then_garbage_on_the_same_connection(site: Site_) -> None:
    """A pipelined valid request is served; the garbage after it gets a 400 and the connection
    closes; nothing of the garbage reaches PHP."""
    before = site.runs()
    reply = exchange(site.port, b"GET /first HTTP/1.1\r\nHost: x\r\n\r\nNOT HTTP AT ALL\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200"), reply[:300]
    assert b"recorded 0" in reply
    assert b"HTTP/1.0 400" in reply or b"HTTP/1.1 400" in reply, reply[-300:]
    assert site.runs() == [*before, "GET /first"]
    normal_request_works(site)


@pytest.mark.timeout(60)
def test_client_disconnecting_mid_body_never_reaches_php(site: Site_) -> None:
    before = site.runs()
    with socket.create_connection(("127.0.0.1", site.port), timeout=10) as sock:
        sock.sendall(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 50000\r\n\r\n" + b"b" * 1000)
        time.sleep(0.2)
    with socket.create_connection(("127.0.0.1", site.port), timeout=10) as sock:  # chunked too
        sock.sendall(b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n100\r\n" + b"b" * 50)
        time.sleep(0.2)
    normal_request_works(site)
    assert site.runs() == [*before, "GET /after"]


@pytest.mark.timeout(60)
def test_client_disconnecting_mid_response_aborts_the_script(site: Site_) -> None:
    record = site.base / "stream.txt"
    record.unlink(missing_ok=True)
    with socket.create_connection(("127.0.0.1", site.port), timeout=10) as sock:
        sock.sendall(b"GET /stream.php HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        while len(received) < 200_000:
            chunk = sock.recv(65536)
            assert chunk
            received += chunk
        assert received.startswith(b"HTTP/1.1 200")
    wait_for(record.exists, timeout=15, what="the streaming script to end")
    assert record.read_text() == "aborted"
    normal_request_works(site)


@pytest.mark.timeout(60)
def test_slowloris_connections_do_not_block_the_server(site: Site_) -> None:
    """Connections that trickle a request's head (or, head complete, its body) byte by byte
    hold no PHP thread and no WSGI thread: normal requests are served meanwhile, and none of
    the partial requests runs."""
    before = site.runs()
    heads = [b"GET /slow-head HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 200] * 30
    heads += [b"POST /slow-body HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"b" * 150] * 10
    socks = [socket.create_connection(("127.0.0.1", site.port), timeout=10) for _ in heads]
    stop, sent = threading.Event(), [0]

    def trickle() -> None:
        for i in range(max(map(len, heads))):
            for sock, head in zip(socks, heads, strict=True):
                try:
                    sock.sendall(head[i : i + 1])
                except OSError:
                    pass
            sent[0] = i + 1
            if stop.wait(0.02):
                return

    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    try:
        wait_for(lambda: sent[0] >= 20, timeout=10, what="the slow clients to start")
        for n in range(10):
            started = time.monotonic()
            normal_request_works(site, f"/during-{n}")
            assert time.monotonic() - started < 5.0
            time.sleep(0.1)
        assert not stop.is_set() and trickler.is_alive(), "the slow clients finished too early"
    finally:
        stop.set()
        trickler.join()
        for sock in socks:
            sock.close()
    assert [r for r in site.runs()[len(before):] if "slow" in r] == []
    normal_request_works(site)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fail_at", [1, 3], ids=["before-anything-was-sent", "mid-response"])
def test_output_lost_on_the_host_side_is_never_a_clean_response(
    site: Site_, monkeypatch: pytest.MonkeyPatch, fail_at: int
) -> None:
    """Fault injection: delivering a chunk of the body fails on the host (as a MemoryError
    would).  The script is stopped; the client gets a 500 if nothing was sent yet, otherwise
    a connection closed without the chunked terminator: never a complete-looking body."""
    from frankenpy.http.exchange import HTTPExchange

    record = site.base / "stream.txt"
    record.unlink(missing_ok=True)
    original, calls = HTTPExchange.on_output, [0]

    def failing_on_output(self: HTTPExchange, data: bytes) -> bool:
        calls[0] += 1
        if calls[0] == fail_at:
            raise MemoryError("injected")
        return original(self, data)

    monkeypatch.setattr(HTTPExchange, "on_output", failing_on_output)
    reply, closed = exchange_ex(site.port, b"GET /stream.php HTTP/1.1\r\nHost: x\r\n\r\n")
    assert closed
    if fail_at == 1:
        assert status_of(reply) == 500, reply[:300]
        assert b"s" * 1000 not in reply
    else:
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head.lower(), head
        assert len(body) >= 2 * 65536
        assert not body.endswith(b"0\r\n\r\n"), "a truncated body ended like a complete one"
    wait_for(record.exists, timeout=15, what="the script to end")
    assert record.read_text() == "aborted"  # stopped at once, not streamed into the void
    monkeypatch.undo()
    normal_request_works(site)


# --- clients that stop reading ------------------------------------------------------------------
# 64 MiB of output: more than waitress buffers (16 MiB) before it blocks the writing thread.
FLOOD_PHP = """<?php
register_shutdown_function(function () {{
    file_put_contents({out}, connection_aborted() ? 'aborted' : 'completed');
}});
$chunk = str_repeat('f', 1 << 20);
for ($i = 0; $i < 64; $i++) {{
    echo $chunk;
}}
"""
FLOOD_WORKER_PHP = """<?php
$chunk = str_repeat('f', 1 << 20);
while (frankenphp_handle_request(function () use ($chunk) {
    if (isset($_GET['flood'])) {
        for ($i = 0; $i < 64; $i++) {
            echo $chunk;
        }
    }
    echo 'worker ok';
})) {
}
"""


def stalled_client(port: int, path: str) -> socket.socket:
    """A client that sends a request and never reads its response (small receive buffer)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return sock


@pytest.fixture
def flood_server(tmp_path: Path) -> Iterator[Callable[..., tuple[Server, Path]]]:
    servers: list[Server] = []

    def start(**options: Any) -> tuple[Server, Path]:
        (tmp_path / "flood.php").write_text(FLOOD_PHP.format(out=repr(str(tmp_path / "flood.txt"))))
        (tmp_path / "worker.php").write_text(FLOOD_WORKER_PHP)
        workers = [frankenpy.Worker("w", tmp_path / "worker.php", num=1)]
        rt = frankenpy.Runtime(num_threads=1, workers=workers)
        rt.start()
        server = Server(rt, [Site("127.0.0.1", 0, PHPApp(rt, tmp_path))], **options)
        server.start()
        servers.append(server)
        return server, tmp_path

    yield start
    for server in servers:
        if not server._stopped.is_set():
            server.stop(grace=1.0)


def get_ok(port: int, path: str, expected: bytes) -> None:
    reply = exchange(port, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(expected), reply[-200:]


@pytest.mark.timeout(60)
def test_client_that_stops_reading_is_dropped_after_client_timeout(
    flood_server: Callable[..., tuple[Server, Path]],
) -> None:
    """waitress blocks the thread writing to a client that stopped reading, for as long as the
    client keeps its connection open: the only PHP thread (and the only worker thread) would be
    held for ever.  After ``client_timeout`` seconds without progress the connection is closed
    and the script aborted, as for a client that went away."""
    server, base = flood_server(client_timeout=2)
    port = server.ports[0]
    classic = stalled_client(port, "/flood.php")
    worker = stalled_client(port, "/worker.php?flood=1")
    try:
        wait_for(lambda: (base / "flood.txt").exists(), timeout=20, what="the classic script to end")
        assert (base / "flood.txt").read_text() == "aborted"
        started = time.monotonic()
        get_ok(port, "/worker.php", b"worker ok")  # the worker's only thread is free again
        reply = exchange(port, b"GET /flood.php?x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 200"), reply[:200]  # and the only PHP thread
        assert len(reply) > 64 << 20 and reply.endswith(b"\r\n0\r\n\r\n")
        assert time.monotonic() - started < 15
    finally:
        classic.close()
        worker.close()


@pytest.mark.timeout(60)
def test_stop_does_not_wait_for_clients_that_stopped_reading(
    flood_server: Callable[..., tuple[Server, Path]], caplog: pytest.LogCaptureFixture
) -> None:
    """After the grace period, stop() closes connections whose output is still pending, which
    frees the threads blocked writing to them: no PHP thread is left running (leaked)."""
    server, base = flood_server()  # default client_timeout (120 s): only stop() can help
    port = server.ports[0]
    socks = [stalled_client(port, "/flood.php"), stalled_client(port, "/worker.php?flood=1")]
    try:
        time.sleep(1.0)  # both responses are stuck in waitress's buffers by now
        started = time.monotonic()
        server.stop(grace=1.0)
        elapsed = time.monotonic() - started
    finally:
        for sock in socks:
            sock.close()
    assert elapsed < 12, f"stop() took {elapsed:.1f} s"
    assert (base / "flood.txt").read_text() == "aborted"
    messages = [r.getMessage() for r in caplog.records]
    leaks = [m for m in messages if "leak" in m or ("still running" in m and "request(s)" not in m)]
    assert not leaks, leaks


def test_client_timeout_is_validated() -> None:
    rt = frankenpy.Runtime(num_threads=1)  # never started: Server() only reads its workers
    for bad in (0, -1, 1.5, "60", True):
        with pytest.raises(ValueError, match="client_timeout"):
            Server(rt, [], client_timeout=bad)  # type: ignore[arg-type]
