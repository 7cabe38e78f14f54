"""frankenpy.asgi.PHPApp: the ASGI 3 app, through a real ASGI server (uvicorn on 127.0.0.1)
and, where a server hides the timing (streaming, back-pressure, disconnects), called directly
with real receive/send coroutines.  PHP is real everywhere: Debian's libphp on the runtime's
PHP threads."""

from __future__ import annotations

import asyncio
import gc
import http.client
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import frankenpy
from frankenpy.asgi import CHUNKS_IN_FLIGHT, ASGIExchange, PHPApp

uvicorn = pytest.importorskip("uvicorn")
Site = tuple[frankenpy.Runtime, Path]

DUMP = """<?php
header('Content-Type: application/json');
$keys = ['REQUEST_METHOD', 'REQUEST_URI', 'SCRIPT_NAME', 'PATH_INFO', 'QUERY_STRING', 'SERVER_NAME',
         'SERVER_PORT', 'REMOTE_ADDR', 'CONTENT_TYPE', 'HTTP_X_CUSTOM', 'FRANKENPHP_WORKER'];
echo json_encode([
    'server' => array_intersect_key($_SERVER, array_flip($keys)),
    'get' => (object) $_GET, 'post' => (object) $_POST,
    'input' => file_get_contents('php://input'),
]);
"""
WORKER = """<?php
$n = 0;
while (frankenphp_handle_request(function () use (&$n) {
    $n++;
    echo "worker request $n ", $_SERVER['FRANKENPHP_WORKER'] ?? '-';
})) {}
"""
# Streams its body back: each 8 KiB read from php://input is reported and flushed at once.
ECHO_STREAM = """<?php
$in = fopen('php://input', 'rb');
while (($chunk = fread($in, 8192)) !== '' && $chunk !== false) {
    echo '[', $chunk[0], strlen($chunk), ']'; flush();
}
"""
# Flushes `n` chunks of 64 KiB, counting them in a file (back-pressure and disconnects).
PRODUCER = """<?php
ignore_user_abort(($_GET['ignore'] ?? '') === '1');
register_shutdown_function(function () {
    file_put_contents($_GET['out'] . '.end', connection_aborted() ? 'aborted' : 'completed');
});
$n = (int) $_GET['n'];
$chunk = str_repeat('x', 65536);
for ($i = 1; $i <= $n; $i++) {
    echo $chunk; flush();
    file_put_contents($_GET['out'], (string) $i);
    if (isset($_GET['sleep'])) { usleep((int) $_GET['sleep'] * 1000); }
}
"""


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[frankenpy.Runtime, Path]]:
    base = tmp_path_factory.mktemp("asgi")
    root = base / "public"
    write(root / "index.php", DUMP)
    write(root / "sub" / "index.php", DUMP)
    write(root / "echo.php", ECHO_STREAM)
    write(root / "producer.php", PRODUCER)
    write(root / "fatal.php", "<?php undefined_function_for_the_test();\n")
    write(root / "exception.php", "<?php throw new RuntimeException('boom');\n")
    write(root / "oom.php", "<?php ini_set('memory_limit', '16M'); $x = str_repeat('x', 64 << 20);\n")
    write(root / "exit.php", "<?php echo 'bye'; exit(3);\n")
    write(root / "sleep.php", "<?php usleep((int) $_GET['ms'] * 1000); echo 'slept';\n")
    write(root / "hints.php", "<?php header('Link: </s.css>; rel=preload'); $sent = headers_send(103);\n"
                              "header_remove('Link'); echo $sent === 1 ? 'sent' : 'not sent';\n")
    write(root / "finish.php", "<?php echo 'done early'; frankenphp_finish_request();\n"
                               "usleep(200000); file_put_contents($_GET['out'], 'went on');\n")
    write(root / "spin.php", "<?php set_time_limit(1); while (true) {}\n")
    write(root / "static.txt", "0123456789 static text\n")
    write(root / ".env", "SECRET\n")
    write(root / "lib.inc", "<?php // SECRET\n")
    write(base / "worker.php", WORKER)
    rt = frankenpy.Runtime(num_threads=2, workers=[
        frankenpy.Worker("w", base / "worker.php", num=1, match="/worker/*")])
    rt.start()
    try:
        yield rt, base
    finally:
        rt.shutdown(5.0)


class Uvicorn:
    """uvicorn serving ``app`` on 127.0.0.1 (a free port) from a thread of its own."""

    def __init__(self, app: Any) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            reply = conn.getresponse()
            return reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()
        finally:
            conn.close()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


@pytest.fixture(scope="module")
def served(site: Site) -> Iterator[Uvicorn]:
    rt, base = site
    server = Uvicorn(PHPApp(rt, base / "public", max_body_size=1000))
    try:
        yield server
    finally:
        server.stop()


# --- through uvicorn ------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_classic_php_request_variables_and_body(served: Uvicorn) -> None:
    status, headers, body = served.request("POST", "/index.php/extra?a=1", b"x=2",
                                           {"Content-Type": "application/x-www-form-urlencoded",
                                            "X-Custom": "yes"})
    assert status == 200 and headers["content-type"] == "application/json"
    data = json.loads(body)
    assert data["get"] == {"a": "1"} and data["post"] == {"x": "2"}
    server = data["server"]
    assert server["REQUEST_METHOD"] == "POST" and server["REQUEST_URI"] == "/index.php/extra?a=1"
    assert server["SCRIPT_NAME"] == "/index.php" and server["PATH_INFO"] == "/extra"
    assert server["HTTP_X_CUSTOM"] == "yes" and server["REMOTE_ADDR"] == "127.0.0.1"
    assert "FRANKENPHP_WORKER" not in server


@pytest.mark.timeout(60)
def test_routing_front_controller_directory_and_refusals(served: Uvicorn) -> None:
    status, _, body = served.request("GET", "/no/such/page")
    assert status == 200 and json.loads(body)["server"]["SCRIPT_NAME"] == "/index.php"
    status, headers, _ = served.request("GET", "/sub?q=1")
    assert status == 308 and headers["location"] == "/sub/?q=1"
    for path, expected in (("/.env", 403), ("/lib.inc", 403), ("/a%00b", 400)):
        status, _, body = served.request("GET", path)
        assert status == expected, path
        assert b"SECRET" not in body
    status, _, _ = served.request("POST", "/index.php", b"y" * 1001)
    assert status == 413


@pytest.mark.timeout(60)
def test_static_files_validators_ranges_and_head(served: Uvicorn) -> None:
    status, headers, body = served.request("GET", "/static.txt")
    assert status == 200 and body == b"0123456789 static text\n"
    assert headers["content-type"].startswith("text/plain") and headers["etag"]
    status, _, body = served.request("GET", "/static.txt", headers={"If-None-Match": headers["etag"]})
    assert status == 304 and body == b""
    status, ranged, body = served.request("GET", "/static.txt", headers={"Range": "bytes=2-5"})
    assert status == 206 and body == b"2345" and ranged["content-range"] == "bytes 2-5/23"
    status, head, body = served.request("HEAD", "/static.txt")
    assert status == 200 and body == b"" and head["content-length"] == "23"
    status, head, body = served.request("HEAD", "/index.php")
    assert status == 200 and body == b"" and int(head["content-length"]) > 10


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("script", "expected"), [
    ("fatal.php", 500), ("exception.php", 500), ("oom.php", 500),
    ("exit.php", 200),  # exit(n) ends a web request normally, as in PHP-FPM and FrankenPHP
])
def test_php_failures_and_exit_answer_and_the_app_keeps_serving(
    served: Uvicorn, script: str, expected: int
) -> None:
    status, _, body = served.request("GET", f"/{script}")
    assert status == expected
    assert body == (b"bye" if script == "exit.php" else b"")
    for _ in range(3):  # every PHP thread still serves
        status, _, body = served.request("GET", "/index.php")
        assert status == 200 and json.loads(body)["server"]["SCRIPT_NAME"] == "/index.php"


@pytest.mark.timeout(60)
def test_http_worker_serves_matched_paths(served: Uvicorn) -> None:
    first = served.request("GET", "/worker/a")
    second = served.request("GET", "/worker/b")
    assert first[0] == second[0] == 200
    assert first[2].startswith(b"worker request ") and first[2].endswith(b" 1")
    assert int(second[2].split()[2]) == int(first[2].split()[2]) + 1  # the same booted script


@pytest.mark.timeout(60)
def test_finish_request_ends_the_response_and_the_script_goes_on(served: Uvicorn, tmp_path: Path) -> None:
    out = tmp_path / "finish"
    started = time.monotonic()
    status, _, body = served.request("GET", f"/finish.php?out={out}")
    assert status == 200 and body == b"done early"
    assert time.monotonic() - started < 5
    deadline = time.monotonic() + 10
    while not out.exists():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert out.read_text() == "went on"


@pytest.mark.timeout(60)
def test_starlette_mount(site: Site) -> None:
    starlette = pytest.importorskip("starlette")
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    del starlette
    rt, base = site

    async def hello(request: Any) -> PlainTextResponse:
        return PlainTextResponse("from python")

    app = Starlette(routes=[Route("/py", hello), Mount("/php", app=PHPApp(rt, base / "public"))])
    server = Uvicorn(app)
    try:
        assert server.request("GET", "/py")[2] == b"from python"
        status, _, body = server.request("GET", "/php/sub/?x=1")
        assert status == 200
        data = json.loads(body)["server"]
        assert data["SCRIPT_NAME"] == "/php/sub/index.php" and data["REQUEST_URI"] == "/php/sub/?x=1"
        assert server.request("GET", "/php/static.txt")[2] == b"0123456789 static text\n"
    finally:
        server.stop()


# --- called directly: what a server hides -------------------------------------------------------
def scope_for(path: str, query: str = "", method: str = "GET",
              headers: list[tuple[bytes, bytes]] | None = None,
              extensions: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
            "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query.encode(),
            "root_path": "", "headers": [(b"host", b"test"), *(headers or [])],
            "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "extensions": extensions or {}}


@pytest.mark.timeout(60)
def test_request_body_streams_in_and_the_response_streams_out(site: Site) -> None:
    """The client's body arrives slowly: PHP reports each chunk as it reads it, so the first
    response bytes are sent before the client has sent its last chunk.  (PHP's SAPI takes a
    short read for the body's end: its reads of php://input, 8 KiB each, are filled.)"""
    rt, base = site
    app = PHPApp(rt, base / "public")
    log: list[str] = []

    async def main() -> None:
        chunks = [b"a" * 8192, b"b" * 8192, b"c" * 8192]

        async def receive() -> dict[str, Any]:
            if not chunks:
                await asyncio.sleep(3600)
            if len(chunks) < 3:
                await asyncio.sleep(0.3)  # a slow client
            chunk = chunks.pop(0)
            log.append(f"recv {chunk[:1].decode()}")
            return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body" and message["body"]:
                log.append(f"send {message['body'].decode()}")

        await app(scope_for("/echo.php", method="PUT", headers=[(b"transfer-encoding", b"chunked")]),
                  receive, send)

    asyncio.run(main())
    assert "".join(e[5:] for e in log if e.startswith("send")) == "[a8192][b8192][c8192]"
    assert log.index("send [a8192]") < log.index("recv c"), log


@pytest.mark.timeout(60)
def test_a_fast_producer_waits_for_a_slow_client(site: Site, tmp_path: Path) -> None:
    """Back-pressure: while the client takes nothing, PHP runs at most CHUNKS_IN_FLIGHT
    chunks ahead; once it reads, the whole 32 MiB arrive."""
    rt, base = site
    app = PHPApp(rt, base / "public")
    out = tmp_path / "count"
    received = 0

    async def main() -> int:
        nonlocal received
        gate = asyncio.Event()

        async def receive() -> dict[str, Any]:
            await asyncio.sleep(3600)
            return {}

        async def send(message: dict[str, Any]) -> None:
            nonlocal received
            if message["type"] == "http.response.body":
                await gate.wait()
                received += len(message.get("body", b""))

        task = asyncio.create_task(app(scope_for("/producer.php", f"n=512&out={out}"), receive, send))
        await asyncio.sleep(1.5)
        ahead = int(out.read_text()) if out.exists() else 0
        gate.set()
        await asyncio.wait_for(task, 30)
        return ahead

    ahead = asyncio.run(main())
    assert 1 <= ahead <= CHUNKS_IN_FLIGHT + 2, ahead
    assert received == 512 * 65536


@pytest.mark.timeout(60)
@pytest.mark.parametrize("ignore", [False, True])
def test_client_disconnect_aborts_the_script_unless_ignore_user_abort(
    site: Site, tmp_path: Path, ignore: bool
) -> None:
    rt, base = site
    app = PHPApp(rt, base / "public")
    out = tmp_path / "count"

    async def main() -> None:
        gone = asyncio.Event()
        first = True
        chunks = 0

        async def receive() -> dict[str, Any]:
            nonlocal first
            if first:
                first = False
                return {"type": "http.request", "body": b"", "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal chunks
            if message["type"] == "http.response.body":
                chunks += 1
                if chunks == 3:
                    gone.set()  # the client leaves after the third chunk

        query = f"n=40&sleep=20&out={out}&ignore={int(ignore)}"
        await asyncio.wait_for(app(scope_for("/producer.php", query), receive, send), 30)

    asyncio.run(main())
    end = Path(f"{out}.end")
    deadline = time.monotonic() + 10
    while not end.exists():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert end.read_text() == "aborted"  # connection_aborted() knows, in both cases
    if ignore:
        assert out.read_text() == "40"  # ... and the script went on to its end
    else:
        assert 2 <= int(out.read_text()) < 40


@pytest.mark.timeout(60)
def test_two_php_threads_run_concurrently_without_blocking_the_loop(site: Site) -> None:
    rt, base = site
    app = PHPApp(rt, base / "public")

    async def one() -> bytes:
        body = b""
        first = True

        async def receive() -> dict[str, Any]:
            nonlocal first
            if not first:
                await asyncio.sleep(3600)  # until the client leaves
            first = False
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            nonlocal body
            body += message.get("body", b"")

        await app(scope_for("/sleep.php", "ms=800"), receive, send)
        return body

    async def main() -> tuple[float, float, list[bytes]]:
        longest = 0.0
        running = True

        async def ticker() -> None:
            nonlocal longest
            last = time.monotonic()
            while running:
                await asyncio.sleep(0.002)
                now = time.monotonic()
                longest, last = max(longest, now - last), now

        tick = asyncio.create_task(ticker())
        started = time.monotonic()
        bodies = await asyncio.gather(one(), one())
        elapsed = time.monotonic() - started
        running = False
        await tick
        return elapsed, longest, bodies

    elapsed, longest, bodies = asyncio.run(main())
    assert bodies == [b"slept", b"slept"]
    assert elapsed < 1.5, elapsed  # side by side (one after the other takes 1.6 s)
    assert longest < 0.3, longest  # the loop kept running while PHP slept (generous bound)


@pytest.mark.timeout(60)
def test_early_hints_through_the_asgi_extension(site: Site) -> None:
    rt, base = site
    app = PHPApp(rt, base / "public")

    async def call(extensions: dict[str, Any]) -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(scope_for("/hints.php", extensions=extensions), receive, send)
        return sent

    with_hints = asyncio.run(call({"http.response.early_hint": {}}))
    assert with_hints[0] == {"type": "http.response.early_hint", "links": [b"</s.css>; rel=preload"]}
    assert with_hints[-1]["body"] == b"sent"
    without = asyncio.run(call({}))
    assert without[0]["type"] == "http.response.start" and without[-1]["body"] == b"not sent"


@pytest.mark.timeout(60)
def test_lifespan_and_other_scopes(site: Site) -> None:
    rt, base = site
    app = PHPApp(rt, base / "public")

    async def main() -> list[str]:
        incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
        sent: list[str] = []

        async def receive() -> dict[str, Any]:
            return incoming.pop(0)

        async def send(message: dict[str, Any]) -> None:
            sent.append(message["type"])

        await app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
        with pytest.raises(ValueError, match="websocket"):
            await app({"type": "websocket"}, receive, send)
        return sent

    assert asyncio.run(main()) == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


@pytest.mark.timeout(60)
def test_cancelling_the_request_task_stops_the_script(site: Site) -> None:
    """A server cancels the app's task (shutdown): the script is stopped as a timeout does,
    and its PHP thread serves again at once."""
    rt, base = site
    app = PHPApp(rt, base / "public")

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(3600)
        return {}

    async def send(message: dict[str, Any]) -> None:
        pass

    async def main() -> float:
        scope = scope_for("/sleep.php", "ms=20000")
        tasks = [asyncio.create_task(app(scope, receive, send)) for _ in range(2)]
        await asyncio.sleep(0.5)  # both PHP threads are sleeping
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        started = time.monotonic()
        sent: list[dict[str, Any]] = []

        async def collect(message: dict[str, Any]) -> None:
            sent.append(message)

        first = [{"type": "http.request", "body": b"", "more_body": False}]

        async def receive_once() -> dict[str, Any]:
            return first.pop() if first else await receive()

        await asyncio.wait_for(app(scope_for("/sleep.php", "ms=1"), receive_once, collect), 15)
        assert sent[-1]["body"] == b"slept"
        return time.monotonic() - started

    assert asyncio.run(main()) < 5  # not the 20 s the cancelled scripts would have slept


async def call(app: PHPApp, path: str, query: str = "",
               on_send: Callable[[], None] | None = None) -> list[dict[str, Any]]:
    """One GET through ``app``; the messages it sent.  ``on_send`` runs as each is sent."""
    sent: list[dict[str, Any]] = []
    first = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict[str, Any]:
        if not first:
            await asyncio.sleep(3600)
        return first.pop()

    async def send(message: dict[str, Any]) -> None:
        if on_send is not None:
            on_send()
        sent.append(message)

    await app(scope_for(path, query), receive, send)
    return sent


@pytest.mark.timeout(60)
def test_time_limit_stops_the_script_with_500(site: Site) -> None:
    """max_execution_time / set_time_limit() hold on the PHP thread the C thread borrowed."""
    rt, base = site
    app = PHPApp(rt, base / "public")
    started = time.monotonic()
    sent = asyncio.run(call(app, "/spin.php"))
    assert sent[0]["status"] == 500
    assert time.monotonic() - started < 10


@pytest.mark.timeout(60)
def test_no_free_php_thread_within_max_wait_time_is_503(site: Site) -> None:
    rt, base = site
    app = PHPApp(rt, base / "public", max_wait_time=0.5)

    async def main() -> tuple[list[list[dict[str, Any]]], float]:
        busy = [asyncio.create_task(call(app, "/sleep.php", "ms=3000")) for _ in range(2)]
        await asyncio.sleep(0.5)  # both PHP threads are taken
        started = time.monotonic()
        refused = await call(app, "/sleep.php", "ms=1")
        waited = time.monotonic() - started
        return [refused, *await asyncio.gather(*busy)], waited

    (refused, *served), waited = asyncio.run(main())
    assert refused[0]["status"] == 503 and 0.4 < waited < 2.5
    assert [messages[-1]["body"] for messages in served] == [b"slept", b"slept"]


@pytest.mark.timeout(60)
def test_queued_requests_make_the_runtime_scale_up(tmp_path: Path) -> None:
    """A request that waits for a regular PHP thread asks autoscaling for one, as under WSGI:
    three 1 s requests on a runtime of 1 thread (max 3) run side by side."""
    write(tmp_path / "sleep.php", "<?php usleep(1000000); echo 'slept';\n")
    rt = frankenpy.Runtime(num_threads=1, max_threads=3).start()
    try:
        app = PHPApp(rt, tmp_path)

        async def main() -> tuple[float, list[list[dict[str, Any]]]]:
            started = time.monotonic()
            results = await asyncio.gather(*(call(app, "/sleep.php") for _ in range(3)))
            return time.monotonic() - started, list(results)

        elapsed, results = asyncio.run(main())
        assert [r[-1]["body"] for r in results] == [b"slept"] * 3
        assert elapsed < 2.5, elapsed  # one after the other takes 3 s
    finally:
        rt.shutdown(5.0)


def _tasks() -> set[int]:
    return {int(tid) for tid in os.listdir("/proc/self/task")}


def _get_sampling(app: PHPApp, path: str, query: str, seen: set[int]) -> Any:
    """One GET through ``app``; ``seen`` gets the process's threads as each message is sent
    (the thread that runs the request is alive then)."""
    return call(app, path, query, on_send=lambda: seen.update(_tasks()))


@pytest.mark.timeout(60)
def test_asgi_requests_reuse_their_worker_threads(site: Site) -> None:
    """50 requests, one after the other and then 10 at a time, start at most one OS thread per
    PHP thread (the loop's C workers): not one per request.  Once idle, the workers exit."""
    rt, base = site
    app = PHPApp(rt, base / "public")

    async def main() -> tuple[set[int], set[int], set[int], list[list[dict[str, Any]]]]:
        before = _tasks()
        seen: set[int] = set()
        results = [await _get_sampling(app, "/sleep.php", "ms=1", seen) for _ in range(25)]
        for _ in range(3):
            batch = (_get_sampling(app, "/sleep.php", "ms=5", seen) for _ in range(10))
            results += await asyncio.gather(*batch)
        started = seen - before
        deadline = time.monotonic() + 15
        while started & _tasks() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)  # the loop still runs: only the workers' idle exit ends them
        return before, started, started & _tasks(), results

    before, started, left, results = asyncio.run(main())
    assert [r[-1]["body"] for r in results] == [b"slept"] * 55
    assert 1 <= len(started) <= rt.num_threads, (len(started), before)
    assert not left, "idle workers did not exit"


@pytest.mark.timeout(60)
def test_a_burst_bigger_than_the_php_threads_queues_and_completes(site: Site) -> None:
    """12 requests of 200 ms at once on 2 PHP threads: they wait for the 2 workers, in order,
    and all are served (no 503 without max_wait_time); no thread is started past the 2."""
    rt, base = site
    app = PHPApp(rt, base / "public")

    async def main() -> tuple[float, set[int], list[list[dict[str, Any]]]]:
        before = _tasks()
        seen: set[int] = set()
        started = time.monotonic()
        results = await asyncio.gather(*(_get_sampling(app, "/sleep.php", "ms=200", seen) for _ in range(12)))
        return time.monotonic() - started, seen - before, list(results)

    elapsed, started, results = asyncio.run(main())
    assert [r[0]["status"] for r in results] == [200] * 12
    assert [r[-1]["body"] for r in results] == [b"slept"] * 12
    assert elapsed >= 6 * 0.2 * 0.9  # two at a time
    assert len(started) <= rt.num_threads


@pytest.mark.timeout(60)
def test_a_finished_request_leaves_nothing_behind_on_the_loop(site: Site) -> None:
    """Once answered, a request's exchange is freed while the loop runs on: no timer
    (max_wait_time, autoscaling) nor completion entry keeps it (at a thousand requests a
    second, max_wait_time's 30 s would keep 30,000 alive, and the GC's pauses grow)."""
    rt, base = site
    app = PHPApp(rt, base / "public", max_wait_time=30.0)

    def alive() -> int:
        gc.collect()
        return sum(isinstance(o, ASGIExchange) for o in gc.get_objects())

    async def main() -> tuple[int, int]:
        before = alive()  # earlier tests' loops may have ended with requests in flight
        for _ in range(3):
            await asyncio.gather(*(call(app, "/sleep.php", "ms=1") for _ in range(5)))
        await asyncio.sleep(0.1)  # the completions are drained
        return before, alive()

    before, after = asyncio.run(main())
    assert after <= before
