"""FrankenPHP's request functions over real HTTP on 127.0.0.1 (csrc/http_functions.c).

Every page runs twice: classically (``/pages/<name>.php``) and inside the HTTP worker ``w``
(``/w.php?page=<name>``), whose callback requires the same page.  Raw sockets where the client
library would hide what is on the wire (the 103 interim response).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_for

import frankenpy
from frankenpy.http.app import PHPApp
from frankenpy.http.native import NativeServer
from frankenpy.http.server import Server, Site

WORKER = """<?php
while (frankenphp_handle_request(function () {
    require __DIR__ . '/pages/' . basename($_GET['page']) . '.php';
})) {
    // Outside a request: the worker script's own callbacks (not the request's) take the log.
    frankenphp_log('between requests', FRANKENPHP_LOG_LEVEL_ERROR, ['worker_loop' => true]);
}
"""

PAGES = {
    "early_hints": """<?php
http_response_code(201);
header('Link: </style.css>; rel=preload; as=style');
$sent = headers_send(103);
usleep(1500 * 1000);
header('X-After: 1');
echo json_encode(['sent' => $sent, 'code' => http_response_code()]);
""",
    "hints_twice": """<?php
header('Link: </a.css>; rel=preload; as=style');
$first = headers_send(103);
header('Link: </b.js>; rel=preload; as=script', false);
$second = headers_send(103);
echo json_encode([$first, $second]);
""",
    "hints_late": """<?php
header('Link: </late.css>; rel=preload');
if ($_GET['how'] === 'flush') {
    echo 'started ';
    flush();
} else {
    headers_send(200);
}
$rc = headers_send(103);
echo json_encode(['rc' => $rc]);
""",
    "send_final": """<?php
header('X-Before: 1');
$rc = headers_send(404);
header('X-After: 1');
echo json_encode(['rc' => $rc, 'sent' => headers_sent(), 'code' => http_response_code()]);
""",
    "finish": """<?php
$out = $_GET['out'];
header('X-Finished: yes');
ob_start();
echo 'done';
$first = $_GET['alias'] ?? '' ? fastcgi_finish_request() : frankenphp_finish_request();
echo 'late output';
flush();
$again = frankenphp_finish_request();
usleep(2500 * 1000);
file_put_contents($out, json_encode(['first' => $first, 'again' => $again]));
""",
    "finish_after_flush": """<?php
echo 'part1 ';
flush();
echo 'part2';
frankenphp_finish_request();
usleep(2500 * 1000);
file_put_contents($_GET['out'], 'tail ran');
""",
    "headers": """<?php
header('X-One: 1');
header('X-Two: a');
header('X-Two: b');
echo json_encode([
    'request' => frankenphp_request_headers(),
    'apache' => apache_request_headers() === frankenphp_request_headers(),
    'getall' => getallheaders() === frankenphp_request_headers(),
    'response' => frankenphp_response_headers(),
    'apache_response' => apache_response_headers() === frankenphp_response_headers(),
]);
""",
    "log": """<?php
frankenphp_log('debug line', FRANKENPHP_LOG_LEVEL_DEBUG);
frankenphp_log('info line');
frankenphp_log('warn line', FRANKENPHP_LOG_LEVEL_WARN, ['user' => 'bob', 'n' => 3, 'args' => [1, 2]]);
frankenphp_log('error line', FRANKENPHP_LOG_LEVEL_ERROR, ['tag' => $_GET['tag']]);
frankenphp_log('list context', 2, ['x', 'y']);
frankenphp_log("a\x1fb line", 1, ['k' => "v\x1f"]);
echo 'logged';
""",
    "env": """<?php
$keys = ['HTTP_HOST', 'SERVER_NAME', 'SERVER_PORT', 'SERVER_PROTOCOL', 'CONTENT_TYPE', 'CONTENT_LENGTH',
         'REMOTE_USER', 'PHP_AUTH_USER', 'PHP_AUTH_PW', 'AUTH_TYPE', 'REQUEST_METHOD'];
$http = array_filter($_SERVER, fn ($k) => str_starts_with($k, 'HTTP_'), ARRAY_FILTER_USE_KEY);
ksort($http);
echo json_encode([
    'headers' => getallheaders(),
    'server' => array_combine($keys, array_map(fn ($k) => $_SERVER[$k] ?? null, $keys)),
    'http' => $http,
    'cookie' => $_COOKIE,
    'body' => file_get_contents('php://input'),
]);
""",
    "big_logs": """<?php
frankenphp_log(str_repeat('x', 300000), 0, ['big' => str_repeat('y', 1000)]);
frankenphp_log('big context', 0, ['big' => str_repeat('y', 300000)]);
error_log(str_repeat('z', 300000));
trigger_error(str_repeat('w', 300000), E_USER_WARNING);
frankenphp_log('after the big ones', FRANKENPHP_LOG_LEVEL_ERROR, ['k' => 1]);
echo 'logged';
""",
    "slow": """<?php
usleep(400 * 1000);
echo 'slow';
""",
    "auth": """<?php
$keys = ['REMOTE_USER', 'PHP_AUTH_USER', 'PHP_AUTH_PW', 'AUTH_TYPE'];
echo json_encode(array_combine($keys, array_map(fn ($k) => $_SERVER[$k] ?? null, $keys)));
""",
}

MODES = ["classic", "worker"]


def page_url(mode: str, page: str, query: str = "") -> str:
    if mode == "classic":
        return f"/pages/{page}.php" + (f"?{query}" if query else "")
    return f"/w.php?page={page}" + (f"&{query}" if query else "")


@contextlib.contextmanager
def serving(base: Path, kind: str) -> Iterator[tuple[frankenpy.Runtime, int, Path]]:
    root = base / "public"
    (root / "pages").mkdir(parents=True)
    (root / "w.php").write_text(WORKER)
    for name, source in PAGES.items():
        (root / "pages" / f"{name}.php").write_text(source)
    (base / "out").mkdir()
    rt = frankenpy.Runtime(num_threads=2, workers=[frankenpy.Worker("w", root / "w.php", num=1)])
    rt.start()
    site = Site("127.0.0.1", 0, PHPApp(rt, root))
    server: Server | NativeServer
    if kind == "waitress":
        server = Server(rt, [site])
    else:
        server = NativeServer(rt, [site], io_model="per-thread" if kind == "native-per-thread" else "handoff")
    try:
        server.start()
        yield rt, server.ports[0], base / "out"
    finally:
        server.stop(grace=5.0)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[frankenpy.Runtime, int, Path]]:
    with serving(tmp_path_factory.mktemp("phpfunc"), "waitress") as result:
        yield result


@pytest.fixture(scope="module", params=["waitress", "native", "native-per-thread"])
def both(request: pytest.FixtureRequest,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[frankenpy.Runtime, int, Path]]:
    """The same pages on waitress (frankenpy.http.server) and on the native server
    (csrc/http_server.c, which writes the 103 itself: h2o 2.2 has no 1xx API), in both its
    I/O models (per-thread: the PHP thread is the loop thread that writes it)."""
    with serving(tmp_path_factory.mktemp("phpfunc-both"), request.param) as result:
        yield result


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def read_until(sock: socket.socket, marker: bytes, data: bytes = b"") -> bytes:
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


# --- headers_send -------------------------------------------------------------------------------
def split_responses(data: bytes) -> list[tuple[bytes, bytes]]:
    """(head, body) of each response in `data`: 1xx have no body; the others are
    Content-Length or chunked (decoded)."""
    out = []
    while data:
        head, _, data = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
        body = b""
        if not lines[0].split(b" ")[1].startswith(b"1"):
            if b"content-length" in fields:
                n = int(fields[b"content-length"])
                body, data = data[:n], data[n:]
            elif fields.get(b"transfer-encoding") == b"chunked":
                while True:
                    size_line, _, data = data.partition(b"\r\n")
                    n = int(size_line, 16)
                    body, data = body + data[:n], data[n + 2:]
                    if n == 0:
                        break
            else:
                body, data = data, b""
        out.append((head, body))
    return out


def raw_exchange(port: int, request: bytes, responses: int | None) -> list[tuple[bytes, bytes]]:
    """Send `request` (one or more, pipelined) and read until the connection closes; the
    (head, body) of each response, `responses` of them (None: any number)."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    parsed = split_responses(data)
    assert responses is None or len(parsed) == responses, data
    return parsed


@pytest.mark.timeout(30)
@pytest.mark.parametrize("mode", MODES)
def test_early_hints_reach_a_raw_client_before_the_response(both: Any, mode: str) -> None:
    """headers_send(103) writes ``HTTP/1.1 103 Early Hints`` with the Link header on the wire
    while the script still runs (1.5 s more); the final response keeps the status set before
    (201) and the headers set after."""
    _, port, _ = both
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        started = time.monotonic()
        target = page_url(mode, "early_hints")
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        interim = read_until(sock, b"\r\n\r\n")
        interim_at = time.monotonic() - started
        rest = read_until(sock, b"}", interim)
    assert interim.startswith(b"HTTP/1.1 103 Early Hints\r\n"), interim[:200]
    head, _, after = rest.partition(b"\r\n\r\n")
    assert b"\r\nLink: </style.css>; rel=preload; as=style" in head
    assert interim_at < 1.2, f"the 103 came after {interim_at:.2f} s, with the final response"
    assert after.startswith(b"HTTP/1.1 201 Created\r\n"), after[:200]
    final_head, _, body = after.partition(b"\r\n\r\n")
    assert b"\r\nX-After: 1" in final_head
    assert b"\r\nLink: </style.css>" in final_head  # still part of the final headers
    assert json.loads(body[body.index(b"{"):]) == {"sent": 1, "code": 201}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("mode", MODES)
def test_several_early_hints_in_one_request(both: Any, mode: str) -> None:
    """Each headers_send(103) is one interim response with the headers set so far, in order,
    then the final 200 with its body (each headers_send returned 1, SAPI_HEADER_SENT)."""
    _, port, _ = both
    request = f"GET {page_url(mode, 'hints_twice')} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    (first, _), (second, _), (final, body) = raw_exchange(port, request.encode(), 3)
    assert first.startswith(b"HTTP/1.1 103 Early Hints\r\n") and second.startswith(b"HTTP/1.1 103 ")
    assert b"</a.css>" in first and b"</b.js>" not in first
    assert b"</a.css>" in second and b"</b.js>" in second
    assert final.startswith(b"HTTP/1.1 200 "), final
    assert json.loads(body) == [1, 1]


@pytest.mark.timeout(30)
def test_early_hints_on_pipelined_requests_stay_in_order(both: Any) -> None:
    """Three pipelined requests on one connection, each with 103s: every interim response
    comes after the previous request's complete response and before its own final one."""
    _, port, _ = both
    one = f"GET {page_url('classic', 'hints_twice')} HTTP/1.1\r\nHost: t\r\n\r\n"
    last = f"GET {page_url('worker', 'hints_twice')} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    responses = raw_exchange(port, (one + one + last).encode(), 9)
    statuses = [head.split(b" ")[1] for head, _ in responses]
    assert statuses == [b"103", b"103", b"200"] * 3, responses
    assert all(json.loads(body) == [1, 1] for head, body in responses[2::3])


@pytest.mark.timeout(30)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("how", ["flush", "send"])
def test_early_hints_after_the_response_started_fail_cleanly(both: Any, mode: str, how: str) -> None:
    """Once output was flushed or the final headers sent, headers_send(103) returns 3
    (SAPI_HEADER_SEND_FAILED), nothing 1xx reaches the wire, and the response is intact and
    the connection usable for the next request."""
    _, port, _ = both
    target = page_url(mode, "hints_late", f"how={how}")
    request = f"GET {target} HTTP/1.1\r\nHost: t\r\n\r\n"
    request += f"GET {page_url(mode, 'hints_twice')} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    (head, body), *rest = raw_exchange(port, request.encode(), None)
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert b"Link: </late.css>" in head
    assert body == (b"started " if how == "flush" else b"") + b'{"rc":3}'
    if b"\r\nConnection: close" in head:  # waitress ends a streamed response's connection
        assert not rest
    else:
        assert [h.split(b" ")[1] for h, _ in rest] == [b"103", b"103", b"200"]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("mode", MODES)
def test_no_interim_response_for_http_1_0(both: Any, mode: str) -> None:
    """RFC 9110: no 1xx to an HTTP/1.0 client; headers_send() says so (3, SEND_FAILED)."""
    _, port, _ = both
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(f"GET {page_url(mode, 'early_hints')} HTTP/1.0\r\nHost: t\r\n\r\n".encode())
        data = read_until(sock, b"}")
    assert data.startswith((b"HTTP/1.0 201", b"HTTP/1.1 201")), data[:100]
    assert b" 103 " not in data
    assert json.loads(data[data.index(b"{"):]) == {"sent": 3, "code": 201}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("mode", MODES)
def test_headers_send_final_status_sends_headers_at_once(both: Any, mode: str) -> None:
    _, port, _ = both
    status, headers, body = get(port, page_url(mode, "send_final"))
    assert status == 404
    assert headers["X-Before"] == "1"
    assert headers["X-After"] is None  # too late: the headers were already sent
    assert json.loads(body) == {"rc": 0, "sent": True, "code": 404}


def test_headers_send_outside_http(served: Any) -> None:
    rt, _, _ = served
    result = rt.execute_code("echo headers_send(103), ' ', headers_send(200);")
    assert result.output == b"3 0"


def skip_wsgi_classic(request: pytest.FixtureRequest, mode: str) -> None:
    if mode == "classic" and request.node.callspec.params["both"] == "waitress":
        # README, "What WSGI cannot do": a classic request runs on the WSGI thread, whose
        # response (after a flush) and connection end only when the script ends.
        pytest.skip("a WSGI limitation: the connection is held until the script ends")


# --- frankenphp_finish_request ------------------------------------------------------------------
@pytest.mark.timeout(40)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("alias", [False, True], ids=["frankenphp", "fastcgi"])
def test_finish_request_completes_the_response_before_a_slow_tail(
    both: Any, mode: str, alias: bool, tmp_path: Path
) -> None:
    """The client has the whole response (output buffered so far, headers) long before the
    script ends 2.5 s later; output after the finish is dropped; a second call returns false."""
    _, port, _ = both
    out = tmp_path / "tail.json"
    query = f"out={out}" + ("&alias=1" if alias else "")
    started = time.monotonic()
    status, headers, body = get(port, page_url(mode, "finish", query))
    elapsed = time.monotonic() - started
    assert (status, body, headers["X-Finished"]) == (200, b"done", "yes")
    assert elapsed < 2.0, f"the response took {elapsed:.2f} s: it waited for the script's tail"
    assert not out.exists()
    wait_for(out.exists, timeout=15, what="the script's tail")
    assert json.loads(out.read_text()) == {"first": True, "again": False}


@pytest.mark.timeout(40)
def test_worker_takes_no_request_until_the_callback_returns(both: Any, tmp_path: Path) -> None:
    """In an HTTP worker the thread is busy with the tail: a second request for the worker
    (one thread) is answered only after the first callback has returned."""
    _, port, _ = both
    out = tmp_path / "tail.json"
    status, _, body = get(port, page_url("worker", "finish", f"out={out}"))
    assert (status, body) == (200, b"done")
    status, _, _ = get(port, page_url("worker", "auth"))
    assert status == 200
    assert out.exists(), "the worker took the next request before its callback returned"


@pytest.mark.timeout(40)
@pytest.mark.parametrize("mode", MODES)
def test_finish_request_after_flush(both: Any, mode: str, tmp_path: Path,
                                    request: pytest.FixtureRequest) -> None:
    """After a flush() the response is already streaming (chunked): it still ends at the
    finish (in a worker too, where the WSGI thread writes its end)."""
    skip_wsgi_classic(request, mode)
    _, port, _ = both
    out = tmp_path / "tail.txt"
    started = time.monotonic()
    status, _, body = get(port, page_url(mode, "finish_after_flush", f"out={out}"))
    elapsed = time.monotonic() - started
    assert (status, body) == (200, b"part1 part2")
    assert elapsed < 2.0, f"the response took {elapsed:.2f} s: it waited for the script's tail"
    wait_for(out.exists, timeout=15, what="the script's tail")


@pytest.mark.timeout(40)
@pytest.mark.parametrize("mode", MODES)
def test_next_request_on_the_connection_during_the_tail(both: Any, mode: str, tmp_path: Path,
                                                        request: pytest.FixtureRequest) -> None:
    """The connection is free once the response is complete: a classic request sent on it
    while the first script's tail runs is answered before that tail ends."""
    skip_wsgi_classic(request, mode)
    if mode == "classic" and "native-per-thread" in request.node.callspec.id:
        pytest.skip("run-to-completion: the thread running the tail is the one that parses the "
                    "connection's next request (README, run-to-completion)")
    _, port, _ = both
    out = tmp_path / "tail.json"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request("GET", page_url(mode, "finish", f"out={out}"))
        first = conn.getresponse()
        assert (first.status, first.read()) == (200, b"done")
        if first.getheader("Connection", "").lower() == "close":
            conn.close()  # waitress ends a response it could not frame by its length
        conn.request("GET", page_url("classic", "auth"))
        second = conn.getresponse()
        assert second.status == 200
        second.read()
        assert not out.exists(), "the second request waited for the first script's tail"
    finally:
        conn.close()
    wait_for(out.exists, timeout=15, what="the script's tail")


def test_finish_request_outside_http(served: Any) -> None:
    """A regular execution: its result holds the output up to the finish."""
    rt, _, _ = served
    result = rt.execute_code("echo 'a'; frankenphp_finish_request(); echo 'dropped'; exit(7);")
    assert (result.output, result.exit_status) == (b"a", 7)


# --- header functions --------------------------------------------------------------------------
@pytest.mark.timeout(30)
@pytest.mark.parametrize("mode", MODES)
def test_request_and_response_header_functions(both: Any, mode: str) -> None:
    _, port, _ = both
    status, _, body = get(port, page_url(mode, "headers"), {"X-Custom-Thing": "v1", "Accept-Language": "fr"})
    assert status == 200
    data = json.loads(body)
    assert data["request"]["X-Custom-Thing"] == "v1"
    assert data["request"]["Accept-Language"] == "fr"
    assert data["request"]["Host"].startswith("127.0.0.1")
    assert data["apache"] is data["getall"] is data["apache_response"] is True
    assert data["response"]["X-One"] == "1"
    assert data["response"]["X-Two"] == "b"


def test_header_functions_outside_http(served: Any) -> None:
    rt, _, _ = served
    result = rt.execute_code("echo json_encode([getallheaders(), frankenphp_response_headers()]);")
    assert json.loads(result.output) == [[], False]


# --- frankenphp_log ----------------------------------------------------------------------------
class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("mode", MODES)
def test_frankenphp_log_reaches_python_logging_with_extra(both: Any, mode: str) -> None:
    _, port, _ = both
    logger = logging.getLogger("frankenpy.php")
    handler, level = _Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    tag = f"tag-{mode}"

    def mine() -> list[logging.LogRecord]:
        return [r for r in handler.records if r.getMessage().endswith((" line", " context"))]

    try:
        status, _, body = get(port, page_url(mode, "log", f"tag={tag}"))
        # The native server logs in batches from its own thread: the records come a bit later.
        wait_for(lambda: len(mine()) >= 6, timeout=10, what="the frankenphp_log() records")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert (status, body) == (200, b"logged")
    records = mine()
    assert len(records) == 6, [r.getMessage() for r in records]
    by_text = {r.getMessage().split("] ", 1)[-1]: r for r in records}
    assert {k: r.levelno for k, r in by_text.items()} == {
        "debug line": logging.DEBUG, "info line": logging.INFO, "warn line": logging.WARNING,
        "error line": logging.ERROR, "list context": logging.INFO, "a\x1fb line": logging.INFO,
    }
    warn = by_text["warn line"]
    assert (warn.user, warn.n) == ("bob", 3)  # type: ignore[attr-defined]
    assert warn.context == {"user": "bob", "n": 3, "args": [1, 2]}  # type: ignore[attr-defined]
    assert warn.args != [1, 2]  # a LogRecord attribute is not overwritten by a context key
    assert by_text["error line"].tag == tag  # type: ignore[attr-defined]
    assert by_text["list context"].context == {"0": "x", "1": "y"}  # type: ignore[attr-defined]
    assert by_text["a\x1fb line"].context == {"k": "v\x1f"}  # type: ignore[attr-defined]
    assert by_text["info line"].context == {}  # type: ignore[attr-defined]
    expected_worker = "w" if mode == "worker" else "php-"
    assert all(str(r.worker).startswith(expected_worker) for r in records), [r.worker for r in records]  # type: ignore[attr-defined]


@pytest.mark.timeout(30)
def test_frankenphp_log_between_worker_requests(both: Any) -> None:
    """frankenphp_log() in the worker script outside the callback: same level and extra."""
    _, port, _ = both
    logger = logging.getLogger("frankenpy.php")
    handler, level = _Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)

    def mine() -> list[logging.LogRecord]:
        return [r for r in handler.records if r.getMessage().endswith("between requests")]

    try:
        assert get(port, page_url("worker", "auth"))[0] == 200
        record = wait_for(mine, timeout=10, what="the worker's log record")[0]
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert (record.levelno, record.worker_loop, record.worker) == (logging.ERROR, True, "w")  # type: ignore[attr-defined]


@pytest.mark.timeout(30)
def test_huge_log_records_do_not_block_later_ones(both: Any) -> None:
    """Records of 300 KB (frankenphp_log() message or context, error_log(), a warning) reach
    the log, and so do the records after them.  The native server's C queue hands Python whole
    records in 256 KiB batches: it cuts a message to 64 KiB and drops a context it would cut
    (a larger record stayed in the queue for ever, and every later one behind it)."""
    _, port, _ = both
    logger = logging.getLogger("frankenpy.php")
    handler, level = _Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)

    def texts() -> dict[str, logging.LogRecord]:
        return {r.getMessage().split("] ", 1)[-1][:20]: r for r in handler.records}

    try:
        assert get(port, page_url("classic", "big_logs"))[2] == b"logged"
        wait_for(lambda: "after the big ones" in texts(), timeout=10, what="the record after the big ones")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    records = texts()
    assert records["after the big ones"].levelno == logging.ERROR
    assert records["after the big ones"].k == 1  # type: ignore[attr-defined]
    assert records["x" * 20].levelno == logging.INFO
    assert len(records["x" * 20].getMessage()) > 60000
    assert records["x" * 20].context in ({}, {"big": "y" * 1000})  # type: ignore[attr-defined]
    assert records["big context"].context in ({}, {"big": "y" * 300000})  # type: ignore[attr-defined]
    assert any("z" * 60000 in r.getMessage() for r in handler.records)
    assert any("w" * 60000 in r.getMessage() for r in handler.records)


# --- Basic auth --------------------------------------------------------------------------------
@pytest.mark.timeout(30)
@pytest.mark.parametrize("mode", MODES)
def test_basic_auth_server_variables(both: Any, mode: str) -> None:
    _, port, _ = both
    token = base64.b64encode(b"alice:s3cret:with-colon").decode()
    status, _, body = get(port, page_url(mode, "auth"), {"Authorization": f"Basic {token}"})
    assert status == 200
    assert json.loads(body) == {
        "REMOTE_USER": "alice", "PHP_AUTH_USER": "alice", "PHP_AUTH_PW": "s3cret:with-colon",
        "AUTH_TYPE": "Basic",
    }
    status, _, body = get(port, page_url(mode, "auth"))
    assert json.loads(body) == dict.fromkeys(["REMOTE_USER", "PHP_AUTH_USER", "PHP_AUTH_PW", "AUTH_TYPE"])


# --- the same request on both servers -----------------------------------------------------------
@pytest.fixture(scope="module")
def twin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    """Both servers at once, each on its own runtime: a request can be sent to both and the
    answers compared."""
    with contextlib.ExitStack() as stack:
        yield {kind: stack.enter_context(serving(tmp_path_factory.mktemp(f"twin-{kind}"), kind))[1]
               for kind in ("waitress", "native")}


def raw_response(port: int, request: bytes) -> tuple[bytes, bytes]:
    """(status line, body) of the one response to `request` (which asks to close)."""
    (head, body), = raw_exchange(port, request, 1)
    return head.split(b"\r\n", 1)[0], body


def env_request(mode: str, head: str, body: bytes = b"") -> bytes:
    """`head` with ``{t}`` for the request target of the env page, CRLF line ends, and `body`."""
    text = head.format(t=page_url(mode, "env")).replace("\n", "\r\n")
    return text.encode("latin-1") + b"\r\n" + body


ENV_CASES = {
    # Host has its own place in h2o (req->input.authority), not among the headers.
    "host": ("GET {t} HTTP/1.1\nHost: example.com:8080\nAccept-Language: fr\nConnection: close\n", b""),
    # Repeated headers are one variable, values joined by ", " (waitress, Go's net/http).
    "repeated": ("GET {t} HTTP/1.1\nHost: h\nX-Rep: a\nX-Rep: b\nx-lower-case: v\nx-REP: c\n"
                 "Connection: close\n", b""),
    # Optional whitespace around a value is not part of it (RFC 9112 5.1); a name with "_"
    # would pose as its "-" twin (waitress, nginx, Apache drop it).
    "whitespace": ("GET {t} HTTP/1.1\nHost: h \nX-Space:  padded \t \nX-Empty:\nX_Real_Ip: 6.6.6.6\n"
                   "X-Real-Ip: 1.2.3.4\nConnection: close\n", b""),
    "post": ("POST {t} HTTP/1.1\nHost: h\nContent-Type: application/x-www-form-urlencoded\n"
             "Content-Length: 7\nConnection: close\n", b"a=1&b=2"),
    "chunked": ("POST {t} HTTP/1.1\nHost: h\nContent-Type: text/plain\nTransfer-Encoding: chunked\n"
                "Connection: close\n", b"3\r\nabc\r\n0\r\n\r\n"),
    "no-body": ("POST {t} HTTP/1.1\nHost: h\nContent-Length: 0\nConnection: close\n", b""),
    "cookie": ("GET {t} HTTP/1.1\nHost: h\nCookie: a=1; b=2\nConnection: close\n", b""),
    "basic": ("GET {t} HTTP/1.1\nHost: h\nAuthorization: Basic " + base64.b64encode(b"al:pw:x").decode()
              + "\nConnection: close\n", b""),
    # Malformed credentials: not base64, no colon, another scheme, Basic without a token.
    "bad-base64": ("GET {t} HTTP/1.1\nHost: h\nAuthorization: Basic !!!notbase64\nConnection: close\n", b""),
    "no-colon": ("GET {t} HTTP/1.1\nHost: h\nAuthorization: Basic " + base64.b64encode(b"alice").decode()
                 + "\nConnection: close\n", b""),
    "bearer": ("GET {t} HTTP/1.1\nHost: h\nAuthorization: Bearer abc.def\nConnection: close\n", b""),
    "basic-empty": ("GET {t} HTTP/1.1\nHost: h\nAuthorization: Basic\nConnection: close\n", b""),
    "http-1.0": ("GET {t} HTTP/1.0\nX-Old: yes\n", b""),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", list(ENV_CASES))
def test_request_headers_and_server_variables_match(twin: dict[str, int], mode: str, case: str) -> None:
    """getallheaders(), the HTTP_* variables, CONTENT_*, SERVER_NAME/PORT, the Basic-auth
    variables, $_COOKIE and the body: the same on the native server as on waitress."""
    head, body = ENV_CASES[case]
    request = env_request(mode, head, body)
    answers = {}
    for kind, port in twin.items():
        status, data = raw_response(port, request)
        assert status.split(b" ")[1] == b"200", (kind, status)
        answers[kind] = json.loads(data)
    native, waitress = answers["native"], answers["waitress"]
    if case == "http-1.0":
        # No Host: SERVER_NAME is the WSGI server's own name (waitress.invalid) on waitress,
        # the address the client reached on the native server.
        assert native["server"].pop("SERVER_NAME") == "127.0.0.1"
        waitress["server"].pop("SERVER_NAME")
        assert native["server"]["SERVER_PORT"] == str(twin["native"])
        native["server"]["SERVER_PORT"] = waitress["server"]["SERVER_PORT"]
    assert native == waitress
    headers, server = native["headers"], native["server"]
    for name, value in headers.items():  # getallheaders() names as the client would write them
        assert name == "-".join(part.capitalize() for part in name.split("-")), name
        if name not in ("Content-Type", "Content-Length"):
            assert native["http"]["HTTP_" + name.upper().replace("-", "_")] == value
    expected = {
        "host": {"Host": "example.com:8080", "Accept-Language": "fr"},
        "repeated": {"X-Rep": "a, b, c", "X-Lower-Case": "v"},
        "whitespace": {"Host": "h", "X-Space": "padded", "X-Empty": "", "X-Real-Ip": "1.2.3.4"},
        "post": {"Content-Type": "application/x-www-form-urlencoded", "Content-Length": "7"},
        "cookie": {"Cookie": "a=1; b=2"},
        "http-1.0": {"X-Old": "yes"},
    }.get(case, {})
    assert headers | expected == headers, headers
    if case == "host":
        assert (server["HTTP_HOST"], server["SERVER_NAME"], server["SERVER_PORT"]) == ("example.com:8080",
                                                                                       "example.com", "8080")
    if case == "http-1.0":
        assert "Host" not in headers and server["HTTP_HOST"] is None
    if case in ("post", "chunked"):
        assert native["body"] == body.decode() if case == "post" else native["body"] == "abc"
    if case == "no-body":
        assert "Content-Type" not in headers  # not an empty one
    if case == "cookie":
        assert native["cookie"] == {"a": "1", "b": "2"}
    auth = {k: server[k] for k in ("REMOTE_USER", "PHP_AUTH_USER", "PHP_AUTH_PW", "AUTH_TYPE")}
    if case == "basic":
        assert auth == {"REMOTE_USER": "al", "PHP_AUTH_USER": "al", "PHP_AUTH_PW": "pw:x",
                        "AUTH_TYPE": "Basic"}
    elif case in ("bad-base64", "no-colon", "bearer", "basic-empty"):
        assert auth == dict.fromkeys(auth), auth
        assert headers["Authorization"] == head.split("Authorization: ")[1].split("\n")[0]


@pytest.mark.timeout(30)
def test_repeated_cookie_headers_reach_cookie_on_the_native_server(twin: dict[str, int]) -> None:
    """Two Cookie headers (as HTTP/2 sends them, and some HTTP/1.1 clients) are one
    HTTP_COOKIE joined by "; " (RFC 9113 8.2.3), so $_COOKIE has both.  waitress joins them
    by ", ", which PHP parses as one cookie: not compared."""
    head = "GET {t} HTTP/1.1\nHost: h\nCookie: a=1\nCookie: b=2\nConnection: close\n"
    status, data = raw_response(twin["native"], env_request("classic", head))
    assert status.split(b" ")[1] == b"200", status
    answer = json.loads(data)
    assert answer["cookie"] == {"a": "1", "b": "2"}
    assert answer["headers"]["Cookie"] == "a=1; b=2"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("request_head", [
    "GET /pages/env.php HTTP/1.1\r\nConnection: close\r\n\r\n",
    "GET /pages/env.php HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
], ids=["no-host", "two-hosts"])
def test_http_1_1_host_errors_match(twin: dict[str, int], request_head: str) -> None:
    """RFC 9112 3.2: an HTTP/1.1 request without exactly one Host is a 400 on both servers."""
    statuses = {kind: raw_response(port, request_head.encode())[0].split(b" ")[1]
                for kind, port in twin.items()}
    assert statuses == {"waitress": b"400", "native": b"400"}


# --- frankenphp_worker_request_time -------------------------------------------------------------
def metric(rt: frankenpy.Runtime, name: str) -> float:
    lines = [line for line in rt.metrics_text().splitlines() if line.startswith(f'{name}{{worker="w"}}')]
    assert len(lines) == 1, lines
    return float(lines[0].split()[-1])


@pytest.mark.timeout(60)
def test_worker_request_time_metric(both: Any, tmp_path: Path) -> None:
    """Each worker request adds its time to frankenphp_worker_request_time (and 1 to the
    count), on either server; a finish_request()ed request counts until its callback returned."""
    rt, port, _ = both
    time_before = metric(rt, "frankenphp_worker_request_time")
    count_before = metric(rt, "frankenphp_worker_request_count")
    assert get(port, page_url("worker", "slow"))[2] == b"slow"
    wait_for(lambda: metric(rt, "frankenphp_worker_request_count") == count_before + 1, timeout=10,
             what="the request count")
    assert 0.4 <= metric(rt, "frankenphp_worker_request_time") - time_before < 10
    out = tmp_path / "tail.json"
    assert get(port, page_url("worker", "finish", f"out={out}"))[2] == b"done"
    wait_for(out.exists, timeout=15, what="the script's tail")
    wait_for(lambda: metric(rt, "frankenphp_worker_request_count") == count_before + 2, timeout=10,
             what="the request count")
    assert metric(rt, "frankenphp_worker_request_time") - time_before >= 0.4 + 2.5
