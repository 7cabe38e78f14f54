"""What only the native HTTP server (frankenpy.http.native, csrc/http_server.c) does.

Everything both servers share is in tests/test_http.py, which runs against both.  Here: bad
requests refused before anything reaches PHP (and the server serving on), many concurrent
keep-alive connections, time limits enforced in C, a disconnecting client, large streamed
responses, the opt-in access log and PHP diagnostics reaching ``logging`` in batches.
Real sockets on 127.0.0.1, real PHP; bounds are generous (the machine is shared).
"""

from __future__ import annotations

import logging
import os
import selectors
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
from frankenpy.http.native import NativeServer
from frankenpy.http.server import Site


def build_root(base: Path) -> Path:
    root = base / "public"
    root.mkdir()
    out = base / "out"
    out.mkdir()
    (root / "hello.php").write_text("<?php echo 'hello from PHP';\n")
    (root / "static.txt").write_text("static text\n")
    (root / "sentinel.php").write_text(f"<?php touch('{out}/ran-' . ($_GET['id'] ?? 'x')); echo 'ran';\n")
    (root / "sleep.php").write_text("<?php usleep((int) ($_GET['ms'] ?? 1000) * 1000); echo 'slept';\n")
    (root / "warn.php").write_text(
        "<?php trigger_error('native warning ' . $_GET['n'], E_USER_WARNING); echo 'ok';\n"
    )
    (root / "stderr.php").write_text(
        "<?php fwrite(fopen('php://stderr', 'w'), 'to stderr ' . $_GET['n'] . \"\\n\"); echo 'body';\n"
    )
    (root / "functions.php").write_text(
        "<?php header('X-Early: 1'); $early = headers_send(103);\n"
        "frankenphp_log('native log line', FRANKENPHP_LOG_LEVEL_WARN);\n"
        "header('X-Early-Result: ' . $early); echo 'done';\n"
        "frankenphp_finish_request();\n"
        f"usleep(300000); echo 'dropped'; touch('{out}/after-finish');\n"
    )
    (root / "big.php").write_text(
        "<?php $n = (int) $_GET['kb']; $flush = isset($_GET['flush']);\n"
        "for ($i = 0; $i < $n; $i++) {\n"
        "    echo str_pad((string) $i, 1023, '.'), \"\\n\"; if ($flush) flush();\n"
        "}\n"
    )
    (root / "slow_stream.php").write_text(
        "<?php register_shutdown_function(function () {\n"
        f"    file_put_contents('{out}/stream.txt', connection_aborted() ? 'aborted' : 'completed');\n"
        "});\n"
        "for ($i = 0; $i < 100; $i++) { echo str_repeat('x', 1024), \"\\n\"; flush(); usleep(50000); }\n"
    )
    return root


IO_MODELS = ("handoff", "per-thread")


class Native:
    def __init__(self, base: Path, *, access_log: bool = False, loop_threads: int = 1,
                 io_model: str = "handoff", **runtime_options: Any) -> None:
        self.base = base
        self.runtime = frankenpy.Runtime(**{"num_threads": 2, **runtime_options})
        self.runtime.start()
        try:
            app = PHPApp(self.runtime, base / "public", max_body_size=1024)
            site = Site("127.0.0.1", 0, app, metrics=True)
            self.server = NativeServer(self.runtime, [site], access_log=access_log, loop_threads=loop_threads,
                                       io_model=io_model)
            self.server.start()
        except BaseException:
            self.runtime.shutdown(5.0)
            raise
        self.port = self.server.ports[0]

    def stop(self) -> None:
        self.server.stop(grace=5.0)


@pytest.fixture(params=IO_MODELS)
def native(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Native]]:
    """Factory of native servers on ``tmp_path``; every test runs with both I/O models (hand-off
    from loop threads to PHP threads, and run-to-completion: io_model="per-thread")."""
    build_root(tmp_path)
    started: list[Native] = []

    def factory(**options: Any) -> Native:
        served = Native(tmp_path, **{"io_model": request.param, **options})
        started.append(served)
        return served

    yield factory
    for served in started:
        served.stop()


def exchange(port: int, data: bytes, timeout: float = 10.0) -> tuple[bytes, bool]:
    """Send ``data``; read until the server closes (True) or ``timeout`` passes (False)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            return received, False
        return received, True


def dechunk(body: bytes) -> bytes:
    decoded, rest = b"", body
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return decoded
        decoded, rest = decoded + rest[:size], rest[size + 2:]


def get(port: int, path: str) -> tuple[int, bytes]:
    """Status and (de-chunked) body of GET ``path`` on a fresh connection."""
    reply, _ = exchange(port, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    head, _, body = reply.partition(b"\r\n\r\n")
    if b"\r\ntransfer-encoding: chunked" in head.lower():
        body = dechunk(body)
    return int(head.split(b" ", 2)[1]), body


BAD_REQUESTS = {
    "malformed request line": b"GET /sentinel.php?id=1 HTTP/1.1 extra\r\nHost: x\r\n\r\n",
    "not HTTP at all": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
    "oversized headers": (
        b"GET /sentinel.php?id=2 HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n"
    ),
    "bad Content-Length": b"POST /sentinel.php?id=3 HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\n1x",
    "negative Content-Length": (
        b"POST /sentinel.php?id=4 HTTP/1.1\r\nHost: x\r\nContent-Length: -3\r\n\r\nabc"
    ),
    "Content-Length and Transfer-Encoding": (
        b"POST /sentinel.php?id=5 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    ),
    "Transfer-Encoding then Content-Length": (
        b"POST /sentinel.php?id=6 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    ),
    "two Content-Length": (
        b"POST /sentinel.php?id=7 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"
    ),
    "unknown Transfer-Encoding": (
        b"POST /sentinel.php?id=8 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nxx"
    ),
}


@pytest.mark.timeout(90)
@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_bad_request_gets_400_and_a_closed_connection(native: Callable[..., Native], name: str) -> None:
    """Each malformed request gets 400 and the connection closed (even though the client keeps
    it open and follows with a valid request on it), nothing reaches PHP, and the server goes
    on serving a valid request on a new connection."""
    served = native()
    follow_up = b"GET /sentinel.php?id=smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    reply, closed = exchange(served.port, BAD_REQUESTS[name] + follow_up)
    assert reply.startswith(b"HTTP/1.1 400 "), reply[:200]
    assert closed, "the server kept the connection open"
    assert reply.count(b"HTTP/1.1 ") == 1, reply  # the follow-up was never answered
    assert list((served.base / "out").iterdir()) == []  # PHP never ran
    assert get(served.port, "/hello.php") == (200, b"hello from PHP")


@pytest.mark.timeout(60)
def test_413_above_max_body_size_without_running_php(native: Callable[..., Native]) -> None:
    served = native()
    # Small enough to be sent whole before the server answers and closes (a larger body would
    # meet a reset on the client's side, which tests the client, not the server).
    for body in (b"x" * 1025, b"x" * 4000):
        head = f"POST /sentinel.php?id=big HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
        reply, closed = exchange(served.port, head.encode() + body)
        assert reply.startswith(b"HTTP/1.1 413 "), reply[:200]
        assert closed
    reply, _ = exchange(served.port, b"POST /sentinel.php?id=ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                        b"Content-Length: 1024\r\n\r\n" + b"x" * 1024)
    assert reply.startswith(b"HTTP/1.1 200 "), reply[:200]
    assert [p.name for p in (served.base / "out").iterdir()] == ["ran-ok"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("loop_threads", [1, 2])
def test_512_keep_alive_connections(native: Callable[..., Native], loop_threads: int) -> None:
    """512 connections open at once, each sending request after request on the same
    connection (keep-alive) for a few seconds: every response is a 200 with PHP's body, no
    connection is closed or reset, and the server still answers afterwards.  With two loop
    threads a response can leave (and its exchange be freed) while the PHP thread is still
    finishing it: the exchange must outlive the PHP side's last touch."""
    served = native(loop_threads=loop_threads)
    if served.server.io_model == "per-thread" and loop_threads > 1:
        pytest.skip("per-thread: no loop threads (each PHP thread runs a loop)")
    request = b"GET /hello.php HTTP/1.1\r\nHost: x\r\n\r\n"
    expected_tail = b"\r\n\r\nhello from PHP"
    conns = [socket.create_connection(("127.0.0.1", served.port), timeout=30) for _ in range(512)]
    sel = selectors.DefaultSelector()
    try:
        for sock in conns:
            sock.setblocking(False)
            sel.register(sock, selectors.EVENT_READ, bytearray())
        answered = 0
        errors: list[str] = []
        deadline = time.monotonic() + 4.0
        rounds = 0
        while time.monotonic() < deadline and not errors:
            rounds += 1
            for sock in conns:
                sock.sendall(request)
            pending = set(conns)
            round_deadline = time.monotonic() + 30
            while pending and time.monotonic() < round_deadline:
                for key, _ in sel.select(timeout=1.0):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    data = sock.recv(65536)
                    if not data:
                        errors.append("connection closed by the server")
                        pending.discard(sock)
                        sel.unregister(sock)
                        continue
                    buf = key.data
                    buf += data
                    if buf.endswith(expected_tail):
                        if not buf.startswith(b"HTTP/1.1 200 "):
                            errors.append(bytes(buf[:100]).decode("latin-1"))
                        buf.clear()
                        answered += 1
                        pending.discard(sock)
            if pending:
                errors.append(f"{len(pending)} connections got no answer in round {rounds}")
        assert errors == []
        assert rounds >= 2 and answered == rounds * 512
    finally:
        sel.close()
        for sock in conns:
            sock.close()
    assert get(served.port, "/hello.php") == (200, b"hello from PHP")


@pytest.mark.timeout(60)
def test_classic_max_execution_time_is_enforced_in_c(native: Callable[..., Native]) -> None:
    """max_execution_time stops a classic request (its PHP thread never returns to Python
    between requests: C's deadline watcher interrupts it); the thread then serves on."""
    served = native(php_ini={"max_execution_time": 1})
    started = time.monotonic()
    status, _ = get(served.port, "/sleep.php?ms=10000")
    assert status == 500
    assert time.monotonic() - started < 5
    assert get(served.port, "/sleep.php?ms=200") == (200, b"slept")  # under the limit: fine
    for _ in range(4):  # both PHP threads still serve
        assert get(served.port, "/hello.php") == (200, b"hello from PHP")


@pytest.mark.timeout(60)
def test_client_gone_aborts_the_script(native: Callable[..., Native]) -> None:
    """A client that disconnects in the middle of a streamed response: the next output of the
    script fails and PHP aborts it (connection_aborted() in its shutdown function)."""
    served = native()
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        sock.sendall(b"GET /slow_stream.php HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")
    marker = served.base / "out" / "stream.txt"
    wait_for(marker.exists, timeout=10, what="the script to end")
    assert marker.read_text() == "aborted"
    assert served.server.counters()["client_gone"] >= 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize("flush", [False, True])
def test_large_response_arrives_whole(native: Callable[..., Native], flush: bool) -> None:
    """3 MB from PHP, in one piece or flushed 1 kB at a time (more than the back-pressure
    threshold of 256 kB): every byte arrives, in order."""
    served = native()
    status, body = get(served.port, "/big.php?kb=3000" + ("&flush=1" if flush else ""))
    assert status == 200
    lines = body.split(b"\n")
    assert len(lines) == 3001 and lines[-1] == b""
    assert all(line.rstrip(b".") == str(i).encode() for i, line in enumerate(lines[:-1]))


@pytest.mark.timeout(60)
def test_access_log_is_opt_in(native: Callable[..., Native], caplog: pytest.LogCaptureFixture) -> None:
    quiet = native()
    with caplog.at_level(logging.INFO, logger="frankenpy.access"):
        assert get(quiet.port, "/hello.php")[0] == 200
        time.sleep(0.6)  # longer than one wait of the log thread
        assert [r for r in caplog.records if r.name == "frankenpy.access"] == []
        loud = native(access_log=True)
        assert get(loud.port, "/hello.php?x=1")[0] == 200
        assert get(loud.port, "/nothing/here.txt")[0] == 404

        def lines() -> list[str]:
            return [r.getMessage() for r in caplog.records if r.name == "frankenpy.access"]

        wait_for(lambda: len(lines()) >= 2, timeout=10, what="two access log lines")
        assert any("GET /hello.php?x=1 200" in line for line in lines()), lines()
        assert any("GET /nothing/here.txt 404" in line for line in lines()), lines()


@pytest.mark.timeout(60)
def test_php_diagnostics_reach_logging_in_batches(
    native: Callable[..., Native], caplog: pytest.LogCaptureFixture
) -> None:
    """Warnings of classic requests are queued in C and logged by one Python thread: every one
    arrives, with PHP's text, at WARNING on frankenpy.php, naming the PHP thread."""
    served = native()
    with caplog.at_level(logging.INFO, logger="frankenpy.php"):
        for n in range(50):
            assert get(served.port, f"/warn.php?n={n}")[0] == 200

        def warnings() -> list[logging.LogRecord]:
            return [r for r in caplog.records if "native warning" in r.getMessage()]

        wait_for(lambda: len(warnings()) == 50, timeout=10, what="50 warnings")
    assert all(r.levelno == logging.WARNING and r.name == "frankenpy.php" for r in warnings())
    assert all("[php-" in r.getMessage() and "warn.php" in r.getMessage() for r in warnings())


@pytest.mark.timeout(60)
def test_php_stderr_of_a_request_is_logged_not_sent(
    native: Callable[..., Native], caplog: pytest.LogCaptureFixture
) -> None:
    served = native()
    with caplog.at_level(logging.INFO, logger="frankenpy.php"):
        assert get(served.port, "/stderr.php?n=7") == (200, b"body")
        wait_for(lambda: any("to stderr 7" in r.getMessage() for r in caplog.records), timeout=10,
                 what="the stderr line in the log")


@pytest.mark.timeout(60)
def test_metrics_include_the_servers_counters_read_from_c(native: Callable[..., Native]) -> None:
    served = native()
    for _ in range(5):
        assert get(served.port, "/hello.php")[0] == 200
    assert get(served.port, "/nothing.txt")[0] == 404
    status, body = get(served.port, "/metrics")
    assert status == 200
    values = dict(line.rsplit(" ", 1) for line in body.decode().splitlines() if line and line[0] != "#")
    assert int(values["frankenpy_http_requests_total"]) >= 6  # this request is still in flight
    assert int(values["frankenpy_http_php_requests_total"]) >= 5
    assert int(values["frankenpy_http_requests_in_flight"]) >= 1
    assert "frankenphp_total_threads" in values  # the runtime's metrics are there too


@pytest.mark.timeout(60)
def test_frankenphp_request_functions_use_the_requests_own_callbacks(
    native: Callable[..., Native], caplog: pytest.LogCaptureFixture
) -> None:
    """headers_send(103), frankenphp_log() and frankenphp_finish_request() in a native request
    reach the exchange's C callbacks (never the interpreter's Python ones with a C handle):
    the 103 goes out first, the log line is logged, and the response is complete before the
    script ends, without what it echoes afterwards."""
    served = native()
    with caplog.at_level(logging.INFO, logger="frankenpy.php"):
        request = b"GET /functions.php HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        reply, _ = exchange(served.port, request)
        interim, _, reply = reply.partition(b"\r\n\r\n")
        assert interim.startswith(b"HTTP/1.1 103 Early Hints\r\n") and b"X-Early: 1" in interim, interim
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and body == b"done", reply
        assert b"X-Early-Result: 1" in head  # SAPI_HEADER_SENT_SUCCESSFULLY
        wait_for(lambda: any("native log line" in r.getMessage() for r in caplog.records), timeout=10,
                 what="frankenphp_log's line")
    marker = served.base / "out" / "after-finish"
    wait_for(marker.exists, timeout=10, what="the script to run on after finishing")


@pytest.mark.timeout(60)
def test_early_hints_after_100_continue(native: Callable[..., Native]) -> None:
    """h2o writes ``100 Continue`` on the socket itself; the 103 the loop thread writes later
    comes after it (never while h2o's own write is in flight), then the final response."""
    served = native()
    with socket.create_connection(("127.0.0.1", served.port), timeout=20) as sock:
        sock.sendall(b"POST /functions.php HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                     b"Expect: 100-continue\r\nConnection: close\r\n\r\n")
        received = b""
        while b"\r\n\r\n" not in received:
            received += sock.recv(65536)
        assert received.startswith(b"HTTP/1.1 100 Continue\r\n"), received
        sock.sendall(b"a=1")
        while chunk := sock.recv(65536):
            received += chunk
    heads = [part.split(b"\r\n", 1)[0] for part in received.split(b"\r\n\r\n")[:3]]
    assert heads == [b"HTTP/1.1 100 Continue", b"HTTP/1.1 103 Early Hints", b"HTTP/1.1 200 OK"], received
    assert received.endswith(b"\r\n\r\ndone")


@pytest.mark.timeout(60)
def test_server_refuses_non_php_apps(tmp_path: Path) -> None:
    rt = frankenpy.Runtime(num_threads=1)
    with pytest.raises(TypeError, match="PHPApp"):
        NativeServer(rt, [Site("127.0.0.1", 0, lambda environ, start_response: [])])


@pytest.mark.timeout(60)
def test_port_in_use_is_a_clear_error(native: Callable[..., Native]) -> None:
    """Also between two per-thread servers, whose sockets are SO_REUSEPORT ones: the second
    must not join the first's group and take half of its connections."""
    first = native()
    rt = frankenpy.Runtime(num_threads=1)
    rt.start()
    try:
        app = PHPApp(rt, first.base / "public")
        with pytest.raises(OSError, match=f"127.0.0.1:{first.port}"):
            NativeServer(rt, [Site("127.0.0.1", first.port, app)], io_model=first.server.io_model).start()
    finally:
        rt.shutdown(5.0)


@pytest.mark.timeout(90)
def test_execute_code_is_served_while_the_native_server_is_under_load(native: Callable[..., Native]) -> None:
    """Serving threads borrow a PHP thread per request from the runtime's C pool (FIFO with
    Python callers): execute_code() gets one within a bounded time while HTTP clients keep
    every PHP thread busy, and HTTP keeps being served meanwhile (it used to wait until the
    server stopped: the server held every regular PHP thread for its life)."""

    served = native()
    stop = threading.Event()
    answers: list[int] = []

    def client() -> None:
        while not stop.is_set():
            status, body = get(served.port, "/sleep.php?ms=30")
            answers.append(status if body == b"slept" else -status)

    clients = [threading.Thread(target=client, daemon=True) for _ in range(6)]
    for thread in clients:
        thread.start()
    try:
        wait_for(lambda: len(answers) >= 12, 30.0)
        waits = []
        for n in range(5):
            done: list[frankenpy.Result] = []
            code = f"echo {n} * 7;"
            caller = threading.Thread(target=lambda code=code, done=done: done.append(
                served.runtime.execute_code(code)))
            started = time.monotonic()
            caller.start()
            caller.join(20.0)
            waits.append(time.monotonic() - started)
            assert done, "execute_code() did not get a PHP thread while the native server ran"
            assert done[0].output == str(n * 7).encode()
        before = len(answers)
        wait_for(lambda: len(answers) >= before + 6, 30.0)  # HTTP goes on
    finally:
        stop.set()
        for thread in clients:
            thread.join(30.0)
    assert max(waits) < 10.0, waits  # queued behind a handful of 30 ms requests, FIFO
    assert set(answers) == {200}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("io_model", IO_MODELS)
def test_max_wait_time_counts_the_wait_for_a_pool_thread(tmp_path: Path, io_model: str) -> None:
    """A classic request leaves the hand-off queue at once (a serving thread is idle) but then
    waits for an interpreter, which execute_code() callers hold: that wait counts toward
    max_wait_time too (503 after it), not only the time in the hand-off queue."""

    build_root(tmp_path)
    runtime = frankenpy.Runtime(num_threads=1)
    runtime.start()
    try:
        app = PHPApp(runtime, tmp_path / "public", max_wait_time=0.5)
        server = NativeServer(runtime, [Site("127.0.0.1", 0, app)], io_model=io_model)
        server.start()
        try:
            holder = threading.Thread(target=runtime.execute_code, args=("usleep(4000000);",))
            holder.start()
            wait_for(lambda: runtime._running_pool().busy == 1, 10.0)  # the only interpreter
            started = time.monotonic()
            status, body = get(server.ports[0], "/hello.php")
            waited = time.monotonic() - started
            assert status == 503, (status, body)
            assert waited < 3.0  # answered after max_wait_time, not once the caller is done
            assert server.counters()["rejected_503"] == 1
            holder.join(10.0)
            assert get(server.ports[0], "/hello.php") == (200, b"hello from PHP")
        finally:
            server.stop(grace=5.0)
    finally:
        runtime.shutdown(5.0)


@pytest.mark.timeout(60)
def test_a_slow_page_holds_its_threads_connections_only_when_run_to_completion(
    native: Callable[..., Native]
) -> None:
    """The trade-off of io_model="per-thread" (README): with one PHP thread, a slow page holds
    the only loop, so even a static file waits for it (head-of-line blocking, as behind a busy
    apache prefork process); with the hand-off, the loop thread answers it at once."""

    served = native(num_threads=1)
    slow: list[tuple[int, bytes]] = []
    blocker = threading.Thread(target=lambda: slow.append(get(served.port, "/sleep.php?ms=3000")))
    blocker.start()
    wait_for(lambda: served.server.counters()["php_busy"] == 1, 10.0)
    started = time.monotonic()
    assert get(served.port, "/static.txt") == (200, b"static text\n")
    waited = time.monotonic() - started
    blocker.join(10.0)
    assert slow == [(200, b"slept")]
    if served.server.io_model == "per-thread":
        assert waited > 1.5, waited  # behind the rest of the 3 s page
    else:
        assert waited < 1.5, waited


def get_full(port: int, path: str, headers: str = "") -> tuple[int, bytes, bytes]:
    """Status, head and body of GET ``path`` (Content-Length framed) on a fresh connection."""
    request = f"GET {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n"
    reply, _ = exchange(port, request.encode())
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head, body


@pytest.mark.timeout(60)
def test_cached_static_files_follow_every_change(native: Callable[..., Native]) -> None:
    """Small static files are served from memory, revalidated by one lstat per request: every
    change is seen at once, however the file changes: new content of the same size with its
    mtime put back (the ctime still moves), a replacement by rename, a deletion, a growth past
    the cache's file limit, a swap for a symlink to PHP source or to a hidden file; and many
    files (more than the cache's slots) each get their own bytes; validators, Range and HEAD
    work on cached files.  One PHP thread: per-thread, one loop (and one cache) too."""
    served = native(num_threads=1)
    root = served.base / "public"
    page = root / "page.txt"
    page.write_bytes(b"A" * 1000)
    for _ in range(2):
        assert get(served.port, "/page.txt") == (200, b"A" * 1000)
    stat = page.stat()
    page.write_bytes(b"B" * 1000)
    os.utime(page, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert get(served.port, "/page.txt") == (200, b"B" * 1000)
    (root / "next.txt").write_bytes(b"C" * 1000)
    os.replace(root / "next.txt", page)
    assert get(served.port, "/page.txt") == (200, b"C" * 1000)
    page.write_bytes(b"D" * 200_000)
    assert get(served.port, "/page.txt") == (200, b"D" * 200_000)
    page.write_bytes(b"E" * 10)
    assert get(served.port, "/page.txt") == (200, b"E" * 10)
    page.unlink()
    assert get(served.port, "/page.txt")[0] == 404
    (root / ".secret").write_text("hidden")
    page.symlink_to(root / "hello.php")
    assert get(served.port, "/page.txt")[0] == 403  # PHP source, by the resolved target's name
    page.unlink()
    page.symlink_to(root / ".secret")
    assert get(served.port, "/page.txt")[0] == 403  # hidden target
    page.unlink()
    page.write_bytes(b"F" * 1000)
    assert get(served.port, "/page.txt") == (200, b"F" * 1000)

    for i in range(600):
        (root / f"f{i}.txt").write_text(f"file {i}\n" * (i % 7 + 1))
    for _ in range(2):
        for i in range(0, 600, 7):
            assert get(served.port, f"/f{i}.txt") == (200, f"file {i}\n".encode() * (i % 7 + 1))

    status, head, _ = get_full(served.port, "/page.txt")
    etag = next(line.split(b": ", 1)[1] for line in head.split(b"\r\n") if line.lower().startswith(b"etag:"))
    assert get_full(served.port, "/page.txt", f"If-None-Match: {etag.decode()}\r\n")[0] == 304
    status, head, body = get_full(served.port, "/page.txt", "Range: bytes=10-19\r\n")
    assert (status, body) == (206, b"F" * 10) and b"Content-Range: bytes 10-19/1000" in head
    assert get_full(served.port, "/page.txt", "Range: bytes=5000-\r\n")[0] == 416
    reply, _ = exchange(served.port, b"HEAD /page.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200 ") and b"Content-Length: 1000" in reply
    assert reply.endswith(b"\r\n\r\n")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("io_model", IO_MODELS)
def test_start_stop_cycles_free_the_server(tmp_path: Path, io_model: str) -> None:
    """A native server stopped and freed leaves nothing behind: its loops' descriptors (h2o's
    epoll instance and wake-up pipe, the listeners) are closed and its h2o contexts freed, so
    start/stop cycles keep the process's descriptors flat (they grew by each loop's epoll
    descriptor and wake-up pipe on every cycle)."""
    build_root(tmp_path)

    def cycle() -> None:
        served = Native(tmp_path, loop_threads=2, io_model=io_model)
        try:
            assert get(served.port, "/hello.php") == (200, b"hello from PHP")
            assert get(served.port, "/static.txt") == (200, b"static text\n")
        finally:
            served.stop()
        assert served.server.counters()["requests"] == 2  # the last values, after the free

    for _ in range(2):
        cycle()
    fds = open_fds()
    for _ in range(8):
        cycle()
    assert open_fds() <= fds + 2, (fds, open_fds())


def read_one(sock: socket.socket) -> tuple[int, bytes]:
    """Status and body of one Content-Length framed response on a keep-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lengths = [line for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")]
    assert lengths, head
    length = int(lengths[0].split(b":")[1])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, head
        body += chunk
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.timeout(60)
def test_per_thread_queue_expiry_is_not_held_back_by_a_request_on_loop_0(tmp_path: Path) -> None:
    """Per-thread, every loop is a PHP thread's.  The worker queues' max_wait_time ran out on
    loop 0: a long page there held back every queue's 503s (the waiter below was served by the
    worker once free, after 3 s).  Now a waiter for the busy worker, its connection on loop 1,
    gets 503 after max_wait_time (0.5 s) while loop 0's thread runs a 4 s page."""
    root = build_root(tmp_path)
    (root / "tid.php").write_text("<?php echo basename(readlink('/proc/thread-self'));\n")
    worker_script = tmp_path / "w.php"
    worker_script.write_text(
        "<?php while (frankenphp_handle_request(function () {\n"
        "    usleep((int) ($_GET['ms'] ?? 0) * 1000); echo 'worker';\n"
        "})) {}\n"
    )
    worker = frankenpy.Worker("w", worker_script, num=1, match="/w/*")
    runtime = frankenpy.Runtime(num_threads=2, workers=[worker])
    runtime.start()
    socks: list[socket.socket] = []
    try:
        app = PHPApp(runtime, root, max_wait_time=0.5)
        server = NativeServer(runtime, [Site("127.0.0.1", 0, app)], io_model="per-thread")
        server.start()
        try:
            # Which loop accepted a connection: the thread that ran its page (it runs its own).
            loop_of = {t.native_id: t.name for t in threading.enumerate()}
            on_loop: dict[str, list[socket.socket]] = {"php-http-0": [], "php-http-1": []}
            for _ in range(16):
                sock = socket.create_connection(("127.0.0.1", server.ports[0]), timeout=10)
                socks.append(sock)
                sock.sendall(b"GET /tid.php HTTP/1.1\r\nHost: x\r\n\r\n")
                status, tid = read_one(sock)
                assert status == 200, tid
                on_loop[loop_of[int(tid)]].append(sock)
            if not on_loop["php-http-0"] or len(on_loop["php-http-1"]) < 2:
                pytest.skip(f"the kernel gave loops 0 and 1 {[len(v) for v in on_loop.values()]} connections")
            (page,), (held, waiter) = on_loop["php-http-0"][:1], on_loop["php-http-1"][:2]
            held.sendall(b"GET /w/hold?ms=3000 HTTP/1.1\r\nHost: x\r\n\r\n")
            wait_for(lambda: any(s.name == "w" and s.busy for s in runtime.workers()), 10.0, "a busy worker")
            page.sendall(b"GET /sleep.php?ms=4000 HTTP/1.1\r\nHost: x\r\n\r\n")
            wait_for(lambda: server.counters()["php_busy"] == 1, 10.0, "loop 0's thread in the page")
            started = time.monotonic()
            waiter.sendall(b"GET /w/wait HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _ = read_one(waiter)
            waited = time.monotonic() - started
            assert status == 503 and waited < 2.5, (status, waited)
            assert read_one(held) == (200, b"worker")
            assert read_one(page) == (200, b"slept")
        finally:
            server.stop(grace=5.0)
    finally:
        for sock in socks:
            sock.close()
        runtime.shutdown(5.0)
