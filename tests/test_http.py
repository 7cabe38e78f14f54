"""frankenpy.http end to end: a real server in this process, real PHP, a real HTTP client.

Every test runs against both servers (the ``server_kind`` fixture): the WSGI path
(:class:`frankenpy.http.server.Server`, waitress + PHPApp) and the native server
(:class:`frankenpy.http.native.NativeServer`, h2o in C).  Tests talk to them over TCP with
:mod:`http.client` (raw sockets where the client library would hide what is on the wire).  PHP
scripts are written into a temporary document root; they report what PHP saw as JSON, and touch
sentinel files where the test must know whether PHP ran at all.  Time bounds are generous: other
suites may share the machine's two cores.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from helpers import wait_for
from waitress import trigger as waitress_trigger

import frankenpy
from frankenpy.http.app import PHPApp
from frankenpy.http.native import NativeServer
from frankenpy.http.server import Server, Site

# "native-per-thread": the native server with io_model="per-thread" (run-to-completion)
SERVER_KINDS = ("wsgi", "native", "native-per-thread")


def make_server(kind: str, rt: frankenpy.Runtime, sites: list[Site]) -> Server | NativeServer:
    if kind == "wsgi":
        return Server(rt, sites)
    return NativeServer(rt, sites, io_model="per-thread" if kind == "native-per-thread" else "handoff")

REPO = Path(__file__).resolve().parent.parent
SECRET = "TOPSECRET-" + secrets.token_hex(8)
SOURCE_MARKER = "SOURCE-MARKER-" + secrets.token_hex(6)
HANDLE_REQUEST_ERROR = "frankenphp_handle_request() called while not in worker mode"


# --- PHP sources ----------------------------------------------------------------------------------
def php_str(value: str | os.PathLike[str]) -> str:
    """A PHP single-quoted string literal holding ``value``."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


DUMP_PHP = """<?php
// {marker}: this comment is PHP source and must never reach a client
header('Content-Type: application/json');
$keys = ['REQUEST_METHOD', 'REQUEST_URI', 'SCRIPT_NAME', 'SCRIPT_FILENAME', 'PATH_INFO', 'PHP_SELF',
         'QUERY_STRING', 'DOCUMENT_ROOT', 'SERVER_NAME', 'SERVER_PORT', 'REMOTE_ADDR', 'REMOTE_PORT',
         'CONTENT_TYPE', 'CONTENT_LENGTH', 'HTTP_X_CUSTOM', 'HTTP_HOST', 'HTTPS', 'FRANKENPHP_WORKER'];
$server = [];
foreach ($keys as $k) {{
    if (array_key_exists($k, $_SERVER)) {{
        $server[$k] = $_SERVER[$k];
    }}
}}
echo json_encode([
    'script' => basename(__FILE__),
    'get' => (object) $_GET,
    'post' => (object) $_POST,
    'cookie' => (object) $_COOKIE,
    'server' => $server,
    'input' => file_get_contents('php://input'),
]);
"""

# An HTTP worker: boots once (random boot id), counts its requests, reports what each request saw.
# ?mode=exception|user_error|oom|exit ends the request abnormally; ?sleep=MS sleeps inside it;
# ?header=LINE sends that header line; ?stream=N flushes N lines 50 ms apart first.
WORKER_PHP = """<?php
$name = {name};
$boot = bin2hex(random_bytes(8));
$counter = 0;
$handler = function () use (&$counter, $boot, $name) {{
    $counter++;
    $mode = $_GET['mode'] ?? '';
    if ($mode === 'exception') {{
        undefined_function_for_the_test();
    }} elseif ($mode === 'user_error') {{
        trigger_error('fatal for the test', E_USER_ERROR);
    }} elseif ($mode === 'oom') {{
        ini_set('memory_limit', '16M');
        $big = str_repeat('x', 64 * 1024 * 1024);
    }} elseif ($mode === 'exit') {{
        exit(3);
    }}
    if (isset($_GET['sleep'])) {{
        usleep((int) $_GET['sleep'] * 1000);
    }}
    if (isset($_GET['header'])) {{
        header($_GET['header']);
    }}
    for ($i = 0; $i < (int) ($_GET['stream'] ?? 0); $i++) {{
        echo str_repeat('x', 1024), "\n";
        flush();
        usleep(50000);
    }}
    header('Content-Type: application/json');
    echo json_encode([
        'worker' => $name,
        'boot' => $boot,
        'counter' => $counter,
        'get' => (object) $_GET,
        'post' => (object) $_POST,
        'cookie' => (object) $_COOKIE,
        'input' => file_get_contents('php://input'),
        'FRANKENPHP_WORKER' => $_SERVER['FRANKENPHP_WORKER'] ?? null,
        'REQUEST_URI' => $_SERVER['REQUEST_URI'] ?? null,
        'REQUEST_METHOD' => $_SERVER['REQUEST_METHOD'] ?? null,
    ]);
}};
while (frankenphp_handle_request($handler)) {{
}}
"""

# A background worker: records what frankenphp_handle_request() does there, says it runs, parks
# on its handle until drained.
BACKGROUND_PHP = """<?php
$out = {out};
$h = frankenphp_get_worker_handle();
try {{
    frankenphp_handle_request(function () {{}});
    $msg = 'no exception';
}} catch (Throwable $e) {{
    $msg = get_class($e) . ': ' . $e->getMessage();
}}
file_put_contents($out . '/bg-handle-request.txt', $msg);
file_put_contents($out . '/bg-running', (string) getmypid());
while (true) {{
    $r = [$h]; $w = $e = null;
    $n = @stream_select($r, $w, $e, 1);
    if ($n > 0) {{
        $data = fread($h, 8192);
        if ($data === '' || $data === false || feof($h)) {{
            break;
        }}
    }}
}}
"""

UPLOAD_PHP = """<?php
header('Content-Type: application/json');
$result = ['files' => $_FILES, 'post' => $_POST];
foreach ($_FILES as $field => $f) {
    $result['md5'][$field] = is_uploaded_file($f['tmp_name']) ? md5_file($f['tmp_name']) : null;
}
$result['moved'] = move_uploaded_file($_FILES['moved']['tmp_name'], $_POST['target']);
$result['moved_source_gone'] = !file_exists($_FILES['moved']['tmp_name']);
echo json_encode($result);
"""

HEADERS_PHP = """<?php
http_response_code(418);
header('X-Test: yes');
header('X-A: 1', false);
header('X-A: 2', false);
setcookie('sess', 'abc 123', ['path' => '/', 'httponly' => true]);
setcookie('other', '2');
echo 'teapot';
"""

STREAM_PHP = """<?php
echo "first\\n";
flush();
sleep(1);
echo "second\\n";
"""

# 100 flushed chunks over ~5 s; records at shutdown whether PHP saw the client go away.
LONG_STREAM_PHP = """<?php
register_shutdown_function(function () {{
    file_put_contents({out} . '/long-stream.txt', connection_aborted() ? 'aborted' : 'completed');
}});
for ($i = 0; $i < 100; $i++) {{
    echo str_repeat('x', 1024), "\\n";
    flush();
    usleep(50000);
}}
"""

# Defect 5: what shutdown functions, destructors and output handlers do to the response.
SHUTDOWN_PHP = """<?php
register_shutdown_function(function () {
    http_response_code(503);
    header('X-Shutdown: ran');
    if (isset($_GET['body'])) {
        echo 'from shutdown';
    }
});
"""
OUTPUT_HANDLER_PHP = """<?php
ob_start(function ($buffer) {
    header('X-Handler: saw ' . strlen($buffer));
    return strtoupper($buffer);
});
echo 'handled';
"""
SHUTDOWN_FATAL_PHP = """<?php
register_shutdown_function(function () {
    undefined_function_in_shutdown();
});
"""
GZIP_PHP = """<?php
ob_start('ob_gzhandler');
echo str_repeat('compress me ', 500);
"""
DESTRUCTOR_PHP = """<?php
class SetsHeader {
    public function __destruct() {
        header('X-Destructor: ran');
        echo 'destructed';
    }
}
$object = new SetsHeader();
"""
FLUSH_TWICE_PHP = """<?php
header('Content-Type: text/plain');
echo 'first';
flush();
echo 'second';
"""
# ?mib=N: N MiB of output under a memory_limit of 8M.
BIG_OUTPUT_PHP = """<?php
ini_set('memory_limit', '8M');
$chunk = str_repeat('x', 1 << 20);
for ($i = 0; $i < (int) $_GET['mib']; $i++) {
    echo $chunk;
}
"""
# An HTTP worker for the same cases (?case=gzip|destructor|flush|big&mib=N).
RESPONSE_WORKER_PHP = """<?php
class SetsHeader {
    public function __destruct() {
        header('X-Destructor: ran');
        echo 'destructed';
    }
}
while (frankenphp_handle_request(function () {
    switch ($_GET['case'] ?? '') {
        case 'gzip':
            ob_start('ob_gzhandler');
            echo str_repeat('compress me ', 500);
            break;
        case 'destructor':
            $object = new SetsHeader();  // destroyed when the handler returns
            break;
        case 'flush':
            header('Content-Type: text/plain');
            echo 'first';
            flush();
            echo 'second';
            break;
        case 'big':
            $chunk = str_repeat('x', 1 << 20);
            for ($i = 0; $i < (int) $_GET['mib']; $i++) {
                echo $chunk;
            }
            break;
    }
})) {
}
"""

SLEEP_PHP = """<?php
usleep((int) ($_GET['ms'] ?? 1000) * 1000);
echo 'slept';
"""

CLASSIC_HANDLE_PHP = """<?php
try {
    frankenphp_handle_request(function () { echo 'handler ran'; });
    echo 'no exception';
} catch (Throwable $e) {
    echo get_class($e), ': ', $e->getMessage();
}
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def build_site(base: Path) -> Path:
    """The document root ``base/public`` (PHP scripts, static files, hidden files, symlinks in
    and out), secrets beside it, worker scripts in ``base/workers``.  Returns ``base``."""
    root = base / "public"
    out = base / "out"
    out.mkdir(parents=True, exist_ok=True)
    dump = DUMP_PHP.format(marker=SOURCE_MARKER)
    write(root / "index.php", dump)
    write(root / "dump.php", dump)
    write(root / "sub" / "index.php", dump)
    write(root / "hello.php", "<?php echo 'hello from PHP';\n")
    write(root / "upload.php", UPLOAD_PHP)
    write(root / "headers.php", HEADERS_PHP)
    write(root / "redirect.php", "<?php header('Location: /x');\n")
    write(root / "stream.php", STREAM_PHP)
    write(root / "header.php", "<?php header($_GET['header']); echo 'body';\n")
    write(root / "long_stream.php", LONG_STREAM_PHP.format(out=php_str(out)))
    write(root / "sleep.php", SLEEP_PHP)
    write(root / "shutdown.php", SHUTDOWN_PHP)
    write(root / "gzip.php", GZIP_PHP)
    write(root / "output_handler.php", OUTPUT_HANDLER_PHP)
    write(root / "shutdown_fatal.php", SHUTDOWN_FATAL_PHP)
    write(root / "destructor.php", DESTRUCTOR_PHP)
    write(root / "flush_twice.php", FLUSH_TWICE_PHP)
    write(root / "big.php", BIG_OUTPUT_PHP)
    write(root / "respworker.php", RESPONSE_WORKER_PHP)
    write(root / "handle.php", CLASSIC_HANDLE_PHP)
    write(root / "sentinel.php", f"<?php touch({php_str(out / 'sentinel-ran')}); echo 'ran';\n")
    write(root / "worker.php", WORKER_PHP.format(name=php_str("app")))
    write(root / "static.txt", "0123456789 static text\n")
    # Secrets: hidden files, backups of PHP source, files outside the root reached by symlinks.
    for rel in (".env", ".git/config", "config.php.bak", "index.php~", "sub/.htpasswd"):
        write(root / rel, f"{SECRET}\n")
    write(base / "secret.txt", f"{SECRET}\n")
    write(base / "private" / "x.txt", f"{SECRET}\n")
    write(base / "outside.php", f"<?php echo {php_str(SECRET)};\n")
    (root / "link.txt").symlink_to(base / "secret.txt")
    (root / "linkdir").symlink_to(base / "private", target_is_directory=True)
    (root / "link.php").symlink_to(base / "outside.php")
    write(base / "workers" / "api.php", WORKER_PHP.format(name=php_str("api")))
    write(base / "workers" / "bg.php", BACKGROUND_PHP.format(out=php_str(out)))
    return base


# --- HTTP client helpers --------------------------------------------------------------------------
@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def header_all(self, name: str) -> list[str]:
        return self.headers.get_all(name) or []

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def wire(self) -> str:
        """Status, headers and body as text: what a leak check searches."""
        return f"{self.status}\n{self.headers}\n{self.body.decode('latin-1')}"


def fetch(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 20.0,
) -> Reply:
    """One request on a fresh connection; ``path`` is sent exactly as given."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return Reply(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def raw_exchange(port: int, request: bytes, timeout: float = 20.0) -> tuple[bytes, bytes]:
    """Send ``request`` bytes (which should say ``Connection: close``), read until the server
    closes: returns (head, everything after the blank line)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def multipart(fields: dict[str, str], files: dict[str, tuple[str, str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body: (body, content type)."""
    boundary = "----frankenpy" + secrets.token_hex(12)
    parts = []
    for name, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        )
    for name, (filename, ctype, content) in files.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            f"Content-Type: {ctype}\r\n\r\n".encode() + content + b"\r\n"
        )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"




def worker_status(rt: frankenpy.Runtime, name: str) -> list[frankenpy.WorkerStatus]:
    found = [s for s in rt.workers() if s.name == name]
    assert found, rt.workers()
    return found


# --- servers --------------------------------------------------------------------------------------
@dataclass
class Served:
    """A started runtime and server; :meth:`stop` once (the fixture stops it otherwise)."""

    runtime: frankenpy.Runtime
    server: Server | NativeServer
    base: Path
    stopped: bool = False
    apps: list[PHPApp] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.server.ports[0])  # int(): see test_server_ports_are_ints

    @property
    def root(self) -> Path:
        return self.base / "public"

    @property
    def out(self) -> Path:
        return self.base / "out"

    def get(self, path: str, **kwargs: Any) -> Reply:
        return fetch(self.port, "GET", path, **kwargs)

    def stop(self, grace: float = 5.0) -> None:
        if self.stopped:
            return
        self.stopped = True
        try:
            self.server.stop(grace=grace)
        finally:
            if self.runtime.state != "stopped":  # stop() failed half-way: free the interpreters
                self.runtime.shutdown(grace)


def start_server(
    base: Path,
    *,
    num_threads: int = 2,
    workers: list[frankenpy.Worker] | None = None,
    app_options: list[dict[str, Any]] | None = None,
    server_kind: str = "wsgi",
) -> Served:
    """Runtime + server (``server_kind``: "wsgi" or "native") on ``base/public``; one Site
    (port 0) per entry of ``app_options`` (PHPApp keyword arguments); the first has /metrics."""
    rt = frankenpy.Runtime(num_threads=num_threads, workers=workers or [])
    rt.start()
    try:
        apps = [PHPApp(rt, base / "public", **opts) for opts in (app_options or [{}])]
        sites = [Site("127.0.0.1", 0, app, metrics=(i == 0)) for i, app in enumerate(apps)]
        server = make_server(server_kind, rt, sites)
        server.start()
    except BaseException:
        rt.shutdown(5.0)
        raise
    return Served(rt, server, base, apps=apps)


@pytest.fixture(scope="module", params=SERVER_KINDS)
def server_kind(request: pytest.FixtureRequest) -> str:
    """Which server a test runs against: every test runs on both."""
    return str(request.param)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, server_kind: str) -> Iterator[Served]:
    """One server shared by the tests that do not change its state: HTTP worker ``app``
    (worker.php, the default route of its file, one thread), HTTP worker ``api`` (``/api/*``),
    a background worker; a second site whose PHPApp has ``max_body_size=1024``."""
    base = build_site(tmp_path_factory.mktemp("http"))
    served = start_server(
        base,
        workers=[
            frankenpy.Worker("app", base / "public" / "worker.php", num=1),
            frankenpy.Worker("api", base / "workers" / "api.php", num=1, match="/api/*"),
            frankenpy.Worker("bg", base / "workers" / "bg.php", background=True),
            frankenpy.Worker("resp", base / "public" / "respworker.php", num=1),
        ],
        app_options=[{}, {"max_body_size": 1024}],
        server_kind=server_kind,
    )
    yield served
    served.stop(grace=5.0)


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """A fresh site (see :func:`build_site`) for a test's own server."""
    return build_site(tmp_path)


@pytest.fixture
def serve(base: Path, server_kind: str) -> Iterator[Callable[..., Served]]:
    """Factory for a server of the test's own on ``base`` (see :func:`start_server`); stopped at
    the end."""
    started: list[Served] = []

    def factory(**kwargs: Any) -> Served:
        served = start_server(base, server_kind=server_kind, **kwargs)
        started.append(served)
        return served

    yield factory
    for served in reversed(started):
        served.stop(grace=5.0)


# --- request variables ----------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_get_query_string_and_server_variables(site: Served) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", site.port, timeout=20)
    conn.connect()
    local_port = conn.sock.getsockname()[1]
    conn.request("GET", "/dump.php?a=1&b[]=x&b[]=y&c=h%C3%A9", headers={"X-Custom": "custom value"})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    assert resp.status == 200, body
    data = json.loads(body)
    root = os.path.realpath(site.root)
    assert data["get"] == {"a": "1", "b": ["x", "y"], "c": "h\u00e9"}
    server = data["server"]
    assert server["REQUEST_METHOD"] == "GET"
    assert server["REQUEST_URI"] == "/dump.php?a=1&b[]=x&b[]=y&c=h%C3%A9"
    assert server["SCRIPT_NAME"] == "/dump.php"
    assert server["SCRIPT_FILENAME"] == os.path.join(root, "dump.php")
    assert server["QUERY_STRING"] == "a=1&b[]=x&b[]=y&c=h%C3%A9"
    assert server["DOCUMENT_ROOT"] == root
    assert server["SERVER_NAME"] == "127.0.0.1"
    assert server["SERVER_PORT"] == str(site.port)
    assert server["REMOTE_ADDR"] == "127.0.0.1"
    assert server["REMOTE_PORT"] == str(local_port)
    assert server["HTTP_X_CUSTOM"] == "custom value"
    assert "HTTPS" not in server
    assert server.get("PATH_INFO", "") == ""
    assert "FRANKENPHP_WORKER" not in server  # a classic request


@pytest.mark.timeout(30)
def test_path_info_and_host_header(site: Served) -> None:
    reply = site.get("/index.php/foo/bar?x=1", headers={"Host": "example.test:8123"})
    assert reply.status == 200, reply.body
    server = reply.json()["server"]
    assert server["SCRIPT_NAME"] == "/index.php"
    assert server["PATH_INFO"] == "/foo/bar"
    assert server["PHP_SELF"] == "/index.php/foo/bar"
    assert server["REQUEST_URI"] == "/index.php/foo/bar?x=1"
    assert server["SCRIPT_FILENAME"] == os.path.join(os.path.realpath(site.root), "index.php")
    assert (server["SERVER_NAME"], server["SERVER_PORT"]) == ("example.test", "8123")


@pytest.mark.timeout(30)
def test_post_urlencoded(site: Served) -> None:
    body = b"name=Ada+Lovelace&n=42&list[]=1&list[]=2"
    reply = fetch(site.port, "POST", "/dump.php?q=1", body=body,
                  headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert reply.status == 200, reply.body
    data = reply.json()
    assert data["post"] == {"name": "Ada Lovelace", "n": "42", "list": ["1", "2"]}
    assert data["get"] == {"q": "1"}
    assert data["server"]["REQUEST_METHOD"] == "POST"
    assert data["server"]["CONTENT_TYPE"] == "application/x-www-form-urlencoded"
    assert data["server"]["CONTENT_LENGTH"] == str(len(body))


@pytest.mark.timeout(30)
def test_php_input_raw_json_body(site: Served) -> None:
    payload = json.dumps({"hello": "world", "n": [1, 2, 3], "text": "\u00e9\u00e8"}).encode()
    reply = fetch(site.port, "POST", "/dump.php", body=payload,
                  headers={"Content-Type": "application/json"})
    assert reply.status == 200, reply.body
    data = reply.json()
    assert data["input"].encode() == payload
    assert data["post"] == {}  # not form data
    assert data["server"]["CONTENT_TYPE"] == "application/json"
    assert data["server"]["CONTENT_LENGTH"] == str(len(payload))


@pytest.mark.timeout(30)
def test_multipart_upload_round_trip(site: Served, tmp_path: Path) -> None:
    moved_content = os.urandom(5000) + b"\r\n--not-a-boundary\r\n" + bytes(range(256))
    kept_content = b"kept file " * 300
    target = tmp_path / "moved.bin"
    body, ctype = multipart(
        {"target": str(target), "note": "hi"},
        {
            "moved": ("data.bin", "application/octet-stream", moved_content),
            "kept": ("notes.txt", "text/plain", kept_content),
        },
    )
    reply = fetch(site.port, "POST", "/upload.php", body=body, headers={"Content-Type": ctype})
    assert reply.status == 200, reply.body
    data = reply.json()
    assert data["post"] == {"target": str(target), "note": "hi"}
    moved, kept = data["files"]["moved"], data["files"]["kept"]
    assert (moved["name"], moved["type"], moved["size"], moved["error"]) == (
        "data.bin", "application/octet-stream", len(moved_content), 0)
    assert (kept["name"], kept["type"], kept["size"], kept["error"]) == (
        "notes.txt", "text/plain", len(kept_content), 0)
    assert data["md5"] == {
        "moved": hashlib.md5(moved_content).hexdigest(),
        "kept": hashlib.md5(kept_content).hexdigest(),
    }
    assert data["moved"] is True and data["moved_source_gone"] is True
    assert target.read_bytes() == moved_content
    # the upload temp files are removed at the end of the request (the kept one was never moved)
    for tmp_name in (moved["tmp_name"], kept["tmp_name"]):
        assert tmp_name and not os.path.exists(tmp_name), tmp_name


# --- response headers -----------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_status_headers_and_cookies(site: Served) -> None:
    reply = site.get("/headers.php")
    assert reply.status == 418
    assert reply.body == b"teapot"
    assert reply.header("X-Test") == "yes"
    assert reply.header_all("X-A") == ["1", "2"]
    cookies = reply.header_all("Set-Cookie")
    assert len(cookies) == 2, cookies
    sess = next(c for c in cookies if c.startswith("sess="))
    assert sess.startswith("sess=abc%20123")
    assert "path=/" in sess and "HttpOnly" in sess
    assert any(c.startswith("other=2") for c in cookies)


@pytest.mark.timeout(30)
def test_location_header_redirects_302(site: Served) -> None:
    reply = site.get("/redirect.php")
    assert reply.status == 302
    assert reply.header("Location") == "/x"


@pytest.mark.timeout(30)
def test_cookie_header_fills_cookie_superglobal(site: Served) -> None:
    reply = site.get("/dump.php", headers={"Cookie": "a=1; b=hello%20world; c[]=z"})
    assert reply.status == 200
    assert reply.json()["cookie"] == {"a": "1", "b": "hello world", "c": ["z"]}


@pytest.mark.timeout(30)
def test_flush_streams_the_first_part_early(site: Served) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", site.port, timeout=20)
    try:
        started = time.monotonic()
        conn.request("GET", "/stream.php")
        resp = conn.getresponse()
        assert resp.status == 200
        first = resp.read1(65536)
        first_at = time.monotonic() - started
        rest = resp.read()
        total = time.monotonic() - started
    finally:
        conn.close()
    assert first == b"first\n"
    assert rest == b"second\n"
    assert first_at < 0.8, f"first chunk after {first_at:.2f} s: flush() did not stream"
    assert total >= 1.0


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("path", "line"),
    [
        ("/header.php", "Connection: close"),
        ("/header.php", "Transfer-Encoding: chunked"),
        ("/worker.php", "Connection: close"),
    ],
    ids=["classic-connection", "classic-transfer-encoding", "worker-connection"],
)
def test_php_hop_by_hop_header_does_not_break_the_response(site: Served, path: str, line: str) -> None:
    """PHP code may send hop-by-hop headers (``header('Connection: close')`` is common): the
    response PHP produced must still reach the client (the header may be dropped or honoured),
    not be replaced by the WSGI server's 500."""
    reply = site.get(f"{path}?header={quote(line)}")
    assert reply.status == 200, (reply.status, reply.body[:120])
    if path == "/header.php":
        assert reply.body == b"body"
    else:
        assert reply.json()["get"] == {"header": line}


@pytest.mark.timeout(30)
def test_client_disconnect_aborts_the_script(site: Served) -> None:
    """As in PHP's other SAPIs and FrankenPHP (php_handle_aborted_connection()): once the client
    is gone, the next flush() aborts the script (no ignore_user_abort), which frees the PHP
    thread instead of streaming ~5 s more into a closed connection."""
    record = site.out / "long-stream.txt"
    record.unlink(missing_ok=True)
    with socket.create_connection(("127.0.0.1", site.port), timeout=10) as sock:
        sock.sendall(b"GET /long_stream.php HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    started = time.monotonic()
    wait_for(record.exists, timeout=10, what="the script to end")
    elapsed = time.monotonic() - started
    assert record.read_text() == "aborted"
    assert elapsed < 3.0, f"the script ran {elapsed:.1f} s after the client left"
    assert site.get("/hello.php").body == b"hello from PHP"


@pytest.mark.timeout(60)
def test_client_disconnect_frees_the_http_worker(base: Path, serve: Callable[..., Served]) -> None:
    """A client leaving a streaming worker request (100 flushes over ~5 s) must not keep the
    worker's only thread streaming into the void: the next request is served at once."""
    served = serve(workers=[frankenpy.Worker("app", base / "public" / "worker.php", num=1)])
    assert served.get("/worker.php").status == 200
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        sock.sendall(b"GET /worker.php?stream=100 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    started = time.monotonic()
    reply = served.get("/worker.php?after=1")
    elapsed = time.monotonic() - started
    assert reply.status == 200, reply.body
    assert reply.json()["get"] == {"after": "1"}
    assert elapsed < 2.5, f"the next request waited {elapsed:.1f} s for the abandoned one"


# --- routing and static files ---------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_front_controller_for_unknown_paths(site: Served) -> None:
    reply = site.get("/no/such/page?x=1")
    assert reply.status == 200, reply.body
    data = reply.json()
    assert data["script"] == "index.php"
    assert data["server"]["SCRIPT_NAME"] == "/index.php"
    assert data["server"]["REQUEST_URI"] == "/no/such/page?x=1"
    assert data["get"] == {"x": "1"}


@pytest.mark.timeout(30)
def test_directory_index_and_trailing_slash_redirect(site: Served) -> None:
    reply = site.get("/sub/")
    assert reply.status == 200, reply.body
    assert reply.json()["server"]["SCRIPT_NAME"] == "/sub/index.php"
    reply = site.get("/sub?k=v")
    assert reply.status == 308
    assert reply.header("Location") == "/sub/?k=v"
    assert site.get("/hello.php").body == b"hello from PHP"


@pytest.mark.timeout(30)
def test_static_file_validators_and_ranges(site: Served) -> None:
    content = (site.root / "static.txt").read_bytes()
    reply = site.get("/static.txt")
    assert reply.status == 200
    assert reply.body == content
    assert (reply.header("Content-Type") or "").startswith("text/plain")
    assert reply.header("Content-Length") == str(len(content))
    etag = reply.header("ETag")
    assert etag and etag.startswith('"')
    last_modified = parsedate_to_datetime(reply.header("Last-Modified") or "")
    assert abs(last_modified.timestamp() - (site.root / "static.txt").stat().st_mtime) < 2

    not_modified = site.get("/static.txt", headers={"If-None-Match": etag})
    assert not_modified.status == 304
    assert not_modified.body == b""

    partial = site.get("/static.txt", headers={"Range": "bytes=0-3"})
    assert partial.status == 206
    assert partial.body == content[:4]
    assert partial.header("Content-Range") == f"bytes 0-3/{len(content)}"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("path", ["/static.txt", "/hello.php", "/worker.php"])
def test_head_sends_headers_without_body(site: Served, path: str) -> None:
    """HEAD: the GET's headers, no body bytes on the wire (not even a chunked terminator), and
    a Content-Length only if it is the GET's (RFC 9110 section 8.6: never a made-up 0)."""
    head, rest = raw_exchange(
        site.port, f"HEAD {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
    )
    assert head.startswith(b"HTTP/1.1 200"), head
    assert b"Content-Type:" in head
    assert rest == b"", rest
    lengths = [line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
               if line.lower().startswith(b"content-length:")]
    get_length = len(site.get(path).body)
    if path == "/worker.php":  # the worker's JSON differs per request; it is never empty
        assert all(int(n) > 0 for n in lengths), head
    else:
        assert all(int(n) == get_length for n in lengths), head


# --- the response: shutdown order, streaming, HEAD ----------------------------------------------------
@pytest.mark.timeout(30)
@pytest.mark.parametrize("body", [True, False], ids=["with-body", "empty-body"])
def test_shutdown_function_sets_status_and_headers(site: Served, body: bool) -> None:
    """As in PHP's other SAPIs, the status and headers go out after shutdown functions ran (in
    php_request_shutdown()), also when the response has no body."""
    reply = site.get("/shutdown.php" + ("?body=1" if body else ""))
    assert reply.status == 503, reply.wire
    assert reply.header("X-Shutdown") == "ran"
    assert reply.body == (b"from shutdown" if body else b"")


@pytest.mark.timeout(30)
def test_output_handler_and_shutdown_fatal_error_shape_the_response(site: Served) -> None:
    """An output handler run at request end may still set headers; a fatal error in a shutdown
    function still turns the status into 500 (nothing was sent before)."""
    reply = site.get("/output_handler.php")
    assert (reply.status, reply.header("X-Handler"), reply.body) == (200, "saw 7", b"HANDLED"), reply.wire
    assert site.get("/shutdown_fatal.php").status == 500


@pytest.mark.timeout(30)
@pytest.mark.parametrize("path", ["/gzip.php", "/respworker.php?case=gzip"], ids=["classic", "worker"])
def test_ob_gzhandler_compresses_the_response(site: Served, path: str) -> None:
    text = b"compress me " * 500
    reply = site.get(path, headers={"Accept-Encoding": "gzip"})
    assert reply.status == 200, reply.wire
    assert reply.header("Content-Encoding") == "gzip", reply.headers
    assert "Accept-Encoding" in (reply.header("Vary") or "")
    assert len(reply.body) < len(text) // 4
    assert gzip.decompress(reply.body) == text
    plain = site.get(path)  # no Accept-Encoding: no compression
    assert plain.header("Content-Encoding") is None
    assert plain.body == text


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "path", ["/destructor.php", "/respworker.php?case=destructor"], ids=["classic", "worker"]
)
def test_destructor_sets_a_header(site: Served, path: str) -> None:
    """Classic: a global object's destructor runs at request shutdown; worker: a request's
    object is destroyed when its handler returns.  Either way before the headers go out."""
    reply = site.get(path)
    assert reply.status == 200, reply.wire
    assert reply.header("X-Destructor") == "ran", reply.headers
    assert reply.body == b"destructed"


def read_head(sock: socket.socket, buffered: bytes = b"") -> tuple[bytes, bytes]:
    """Read one response head from ``sock``: (head, bytes received after it)."""
    data = buffered
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed inside a response head: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "path",
    ["/flush_twice.php", "/big.php?mib=2", "/respworker.php?case=flush", "/respworker.php?case=big&mib=2"],
    ids=["classic-flush", "classic-large", "worker-flush", "worker-large"],
)
def test_head_of_a_streamed_response_has_no_body_and_keeps_the_connection(site: Served, path: str) -> None:
    """A script that flushes (or prints more than the glue collects) streams its GET response;
    its HEAD response must carry no body bytes (no chunked terminator either) and leave the
    keep-alive connection usable for the next request."""
    with socket.create_connection(("127.0.0.1", site.port), timeout=20) as sock:
        sock.sendall(f"HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        head, rest = read_head(sock)
        assert head.startswith(b"HTTP/1.1 200"), head
        assert b"transfer-encoding" not in head.lower(), head
        assert b"connection: close" not in head.lower(), head
        sock.sendall(b"GET /hello.php HTTP/1.1\r\nHost: x\r\n\r\n")
        second, body = read_head(sock, rest)
        assert second.startswith(b"HTTP/1.1 200"), (head, rest[:80], second)
        while len(body) < len(b"hello from PHP"):
            chunk = sock.recv(65536)
            assert chunk
            body += chunk
        assert body == b"hello from PHP"


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "path", ["/big.php?mib={mib}", "/respworker.php?case=big&mib={mib}"], ids=["classic", "worker"]
)
def test_unbounded_output_streams_with_flat_memory(site: Served, path: str) -> None:
    """256 MiB of output (memory_limit=8M) reaches the client whole, streamed, while this
    process's RSS stays flat: the glue never holds more than FP_FLUSH_AT of it (it held all of
    it, twice over, before)."""
    mib = 256
    baseline, peak, done = rss_bytes(), [0], threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            peak[0] = max(peak[0], rss_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    conn = http.client.HTTPConnection("127.0.0.1", site.port, timeout=60)
    try:
        conn.request("GET", path.format(mib=mib))
        resp = conn.getresponse()
        assert resp.status == 200
        total, wrong = 0, 0
        while chunk := resp.read(1 << 16):
            total += len(chunk)
            wrong += len(chunk) - chunk.count(b"x")
    finally:
        conn.close()
        done.set()
        sampler.join()
    assert total == mib << 20
    assert wrong == 0
    growth = peak[0] - baseline
    assert growth < 64 << 20, f"RSS grew by {growth >> 20} MiB while streaming {mib} MiB"


# --- security -------------------------------------------------------------------------------------
ATTACKS = [
    "/../secret.txt",
    "/../../secret.txt",
    "/%2e%2e/secret.txt",
    "/..%2fsecret.txt",
    "/%2e%2e%2fsecret.txt",
    "/sub/../../secret.txt",
    "/sub/%2e%2e/%2e%2e/secret.txt",
    "/static.txt/../../secret.txt",
    "/.env",
    "/%2eenv",
    "/.git/config",
    "/sub/.htpasswd",
    "/config.php.bak",
    "/index.php~",
]
NUL_ATTACKS = ["/secret.txt%00", "/index.php%00.txt", "/%00/../secret.txt", "/static.txt%00.php"]


def assert_no_leak(reply: Reply) -> None:
    assert SECRET not in reply.wire
    assert SOURCE_MARKER not in reply.wire
    assert "<?php" not in reply.wire


@pytest.mark.timeout(30)
@pytest.mark.parametrize("path", ATTACKS)
def test_refused_paths_leak_nothing(site: Served, path: str) -> None:
    reply = site.get(path)
    assert_no_leak(reply)
    assert reply.status in (400, 403, 404), (reply.status, reply.body[:200])


@pytest.mark.timeout(60)
def test_symlinks_out_of_the_root(serve: Callable[..., Served]) -> None:
    """Links out of the root are followed (as Caddy, nginx and apache do); with
    ``follow_symlinks=False`` every one is 403 and leaks nothing."""
    served = serve(app_options=[{}, {"follow_symlinks": False}])
    strict = int(served.server.ports[1])
    for path in ("/link.txt", "/linkdir/x.txt", "/link.php"):
        reply = served.get(path)
        assert reply.status == 200 and SECRET in reply.wire, (path, reply.status)
        reply = fetch(strict, "GET", path)
        assert_no_leak(reply)
        assert reply.status == 403, (path, reply.status)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("path", NUL_ATTACKS)
def test_nul_byte_in_path_is_400(site: Served, path: str) -> None:
    reply = site.get(path)
    assert_no_leak(reply)
    assert reply.status == 400, reply.body[:200]


@pytest.mark.timeout(30)
def test_raw_dot_dot_request_line(site: Served) -> None:
    """The request line goes out byte for byte (no client-side normalisation)."""
    for target in ("/../secret.txt", "/sub/../../secret.txt", "/./../secret.txt"):
        head, rest = raw_exchange(
            site.port, f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        )
        status = int(head.split(b" ", 2)[1])
        assert SECRET.encode() not in head + rest
        assert status in (400, 403, 404), (target, head)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "path", ["/index.php", "/index.php/", "/INDEX.PHP", "/index.php.", "/index.php%20", "/sub/index.php"]
)
def test_php_source_never_served(site: Served, path: str) -> None:
    reply = site.get(path)
    assert_no_leak(reply)
    assert reply.status in (200, 403, 404)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_body_too_large_is_413_without_running_php(site: Served, chunked: bool) -> None:
    small_port = int(site.server.ports[1])  # PHPApp(max_body_size=1024)
    sentinel = site.out / "sentinel-ran"
    sentinel.unlink(missing_ok=True)
    conn = http.client.HTTPConnection("127.0.0.1", small_port, timeout=20)
    try:
        if chunked:
            conn.request("POST", "/sentinel.php", body=iter([b"x" * 700, b"y" * 700]),
                         headers={"Content-Type": "application/octet-stream"}, encode_chunked=True)
        else:
            conn.request("POST", "/sentinel.php", body=b"x" * 2048,
                         headers={"Content-Type": "application/octet-stream"})
        resp = conn.getresponse()
        resp.read()
    finally:
        conn.close()
    assert resp.status == 413
    assert not sentinel.exists(), "PHP ran for a body over max_body_size"
    # the same script with a body within the limit does run: the sentinel check is meaningful
    ok = fetch(small_port, "POST", "/sentinel.php", body=b"x" * 1000,
               headers={"Content-Type": "application/octet-stream"})
    assert (ok.status, ok.body) == (200, b"ran")
    assert sentinel.exists()


# --- request-target forms, upgrade offers, log records ---------------------------------------------
def read_response(sock: socket.socket, buffered: bytes = b"") -> tuple[bytes, bytes, bytes]:
    """One whole response from ``sock`` (Content-Length or chunked framing): (head, body, bytes
    received after it).  A server that stops sending makes the socket's timeout raise."""
    head, data = read_head(sock, buffered)

    def more() -> bytes:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed inside a response body: {head!r}"
        return chunk

    fields = dict(line.lower().split(b":", 1) for line in head.split(b"\r\n")[1:])
    if b"chunked" in fields.get(b"transfer-encoding", b""):
        body = b""
        while True:
            while b"\r\n" not in data:
                data += more()
            size_line, _, data = data.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            while len(data) < size + 2:
                data += more()
            body, data = body + data[:size], data[size + 2:]
            if size == 0:
                return head, body, data
    length = int(fields.get(b"content-length", b"0"))
    while len(data) < length:
        data += more()
    return head, data[:length], data[length:]


@pytest.mark.timeout(30)
def test_absolute_form_target_is_served_as_its_path(site: Served) -> None:
    """``GET http://host:port/path?q HTTP/1.1`` (RFC 9112 3.2.2, what clients send to a
    proxy): routed, and seen by PHP, as ``/path?q``, as nginx + PHP-FPM do; HTTP_HOST is the
    Host header."""
    port = site.port
    authority = f"127.0.0.1:{port}"
    root = os.path.realpath(site.root)

    def get(target: str) -> tuple[int, bytes]:
        head, body = raw_exchange(
            port, f"GET {target} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n".encode()
        )
        return int(head.split(b" ", 2)[1]), body

    query = "x=1&y=%C3%A9"
    cases = {  # target: (script, REQUEST_URI, SCRIPT_NAME, PATH_INFO, QUERY_STRING)
        f"http://{authority}/dump.php?{query}": ("dump.php", f"/dump.php?{query}", "/dump.php", "", query),
        f"HTTP://{authority}/sub/": ("index.php", "/sub/", "/sub/index.php", "", ""),
        f"http://{authority}/index.php/a/b?z": ("index.php", "/index.php/a/b?z", "/index.php", "/a/b", "z"),
        f"http://{authority}": ("index.php", "/", "/index.php", "", ""),
        f"http://{authority}?q=2": ("index.php", "/?q=2", "/index.php", "", "q=2"),
    }
    for target, expected in cases.items():
        status, body = get(target)
        assert status == 200, (target, status, body[:200])
        data = json.loads(body)
        server = data["server"]
        seen = (data["script"], server["REQUEST_URI"], server["SCRIPT_NAME"], server.get("PATH_INFO", ""),
                server["QUERY_STRING"])
        assert seen == expected, target
        assert server["SCRIPT_FILENAME"] == os.path.join(root, expected[2].lstrip("/")), target
        host = (server["HTTP_HOST"], server["SERVER_NAME"], server["SERVER_PORT"])
        assert host == (authority, "127.0.0.1", str(port)), target
        if expected[0] == "dump.php":
            assert data["get"] == {"x": "1", "y": "\u00e9"}
    status, body = get(f"http://{authority}/static.txt")
    assert (status, body) == (200, b"0123456789 static text\n")
    # the path of an absolute-form target gets every check an origin-form path gets
    for path in ("/.env", "/../secret.txt", "/sub/../../secret.txt", "/dump.php%00.txt", "/index.php~"):
        status, body = get(f"http://{authority}{path}")
        assert SECRET.encode() not in body and SOURCE_MARKER.encode() not in body, path
        assert status in (400, 403, 404), (path, status)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "line",
    ["OPTIONS * HTTP/1.1", "CONNECT 127.0.0.1:443 HTTP/1.1", "GET 127.0.0.1:443 HTTP/1.1",
     "GET *.php HTTP/1.1"],
)
def test_asterisk_and_authority_form_targets_get_400(site: Served, line: str) -> None:
    """Targets only a proxy, or the server as a whole, answers: 400 (as nginx), neither a PHP
    page nor a hang, and the server serves on."""
    host = "127.0.0.1:443" if "443" in line else "x"
    with socket.create_connection(("127.0.0.1", site.port), timeout=10) as sock:
        sock.sendall(f"{line}\r\nHost: {host}\r\n\r\n".encode())
        head, body, _ = read_response(sock)
    assert head.startswith(b"HTTP/1.1 400"), (line, head)
    assert SOURCE_MARKER.encode() not in body and b'"script"' not in body, body
    assert site.get("/hello.php").body == b"hello from PHP"


UPGRADE_OFFERS = {
    "websocket": "Connection: Upgrade\r\nUpgrade: websocket\r\n"
                 "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
    "h2c": "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
           "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
    "keep-alive-websocket": "Connection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n",
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("offer", UPGRADE_OFFERS)
@pytest.mark.parametrize(
    "request_line", ["GET /dump.php?u=1", "POST /dump.php", "GET /static.txt", "GET /worker.php"]
)
def test_upgrade_offer_is_ignored_and_the_connection_kept(
    site: Served, request_line: str, offer: str
) -> None:
    """An HTTP/1.1 request offering an upgrade (WebSocket, h2c) gets its normal response (a
    server may ignore Upgrade, RFC 9110 7.8), never 101 or a hang, and the connection serves
    the next request (HTTP/1.1 persists unless told "close")."""
    body = b"a=1" if request_line.startswith("POST") else b""
    framing = "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 3\r\n" if body else ""
    head_lines = f"{request_line} HTTP/1.1\r\nHost: x\r\n{UPGRADE_OFFERS[offer]}{framing}\r\n"
    with socket.create_connection(("127.0.0.1", site.port), timeout=10) as sock:
        sock.sendall(head_lines.encode() + body)
        head, content, rest = read_response(sock)
        assert head.startswith(b"HTTP/1.1 200"), head
        assert b"\r\nupgrade:" not in head.lower(), head
        if request_line.endswith("static.txt"):
            assert content == b"0123456789 static text\n"
        elif request_line.endswith("worker.php"):
            assert json.loads(content)["worker"] == "app"
        else:
            data = json.loads(content)
            assert data["post"] == ({"a": "1"} if body else {}), data
            assert data["get"] == ({} if body else {"u": "1"}), data
        sock.sendall(b"GET /hello.php HTTP/1.1\r\nHost: x\r\n\r\n")
        head, content, _ = read_response(sock, rest)
        assert (head[:12], content) == (b"HTTP/1.1 200", b"hello from PHP"), head


LOG_NUL_PHP = """<?php
frankenphp_log("{where} a\\0b", FRANKENPHP_LOG_LEVEL_WARN, ['k' => "x\\0y", 'where' => '{where}']);
"""


@pytest.mark.timeout(60)
def test_frankenphp_log_keeps_nul_bytes(base: Path, serve: Callable[..., Served],
                                        caplog: pytest.LogCaptureFixture) -> None:
    """frankenphp_log("a\\0b") reaches the log record whole, and its context too: from a
    classic request, an HTTP worker's request, the worker script outside a request and a
    background worker (the native server queues records in C, where a C string ends at NUL)."""
    write(base / "public" / "lognul.php", LOG_NUL_PHP.format(where="classic") + "echo 'logged';\n")
    write(base / "workers" / "lognul.php", LOG_NUL_PHP.format(where="worker-boot")
          + "while (frankenphp_handle_request(function () {"
          + LOG_NUL_PHP.format(where="worker").removeprefix("<?php") + "echo 'logged'; })) {}\n")
    write(base / "workers" / "lognul_bg.php", LOG_NUL_PHP.format(where="background")
          + BACKGROUND_PHP.format(out=php_str(base / "out")).removeprefix("<?php"))
    wheres = ("classic", "worker", "worker-boot", "background")

    def mine() -> dict[str, logging.LogRecord]:
        return {getattr(r, "where", ""): r for r in caplog.records if getattr(r, "where", "") in wheres}

    with caplog.at_level(logging.INFO, logger="frankenpy.php"):
        served = serve(num_threads=1, workers=[
            frankenpy.Worker("lognul", base / "workers" / "lognul.php", num=1, match="/lognul-worker"),
            frankenpy.Worker("lognulbg", base / "workers" / "lognul_bg.php", background=True),
        ])
        assert served.get("/lognul.php").body == b"logged"
        assert served.get("/lognul-worker").body == b"logged"
        wait_for(lambda: len(mine()) == len(wheres), timeout=10, what=f"a record from each of {wheres}")
    for where, record in mine().items():
        assert record.getMessage().split("] ", 1)[-1] == f"{where} a\0b", (where, record.getMessage())
        assert record.levelno == logging.WARNING
        assert record.context == {"k": "x\0y", "where": where}  # type: ignore[attr-defined]


# --- HTTP workers ---------------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_worker_keeps_state_and_resets_superglobals(site: Served) -> None:
    first = site.get("/worker.php?a=1", headers={"Cookie": "c1=v1"})
    assert first.status == 200, first.body
    one = first.json()
    assert one["worker"] == "app"
    assert one["FRANKENPHP_WORKER"] == "1"
    assert one["get"] == {"a": "1"}
    assert one["cookie"] == {"c1": "v1"}

    two = site.get("/worker.php?b=2").json()
    assert two["boot"] == one["boot"]
    assert two["counter"] == one["counter"] + 1
    assert two["get"] == {"b": "2"}
    assert two["cookie"] == {}

    posted = fetch(site.port, "POST", "/worker.php", body=b"p=1&q=2",
                   headers={"Content-Type": "application/x-www-form-urlencoded"}).json()
    assert posted["post"] == {"p": "1", "q": "2"}
    assert posted["REQUEST_METHOD"] == "POST"
    assert posted["input"] == "p=1&q=2"

    after = site.get("/worker.php").json()
    assert after["post"] == {} and after["get"] == {}
    assert after["input"] == ""
    assert after["REQUEST_METHOD"] == "GET"
    assert after["counter"] == one["counter"] + 3
    assert after["boot"] == one["boot"]
    assert worker_status(site.runtime, "app")[0].requests >= 4


@pytest.mark.timeout(30)
def test_worker_match_routes_paths(site: Served) -> None:
    for path in ("/api/anything", "/api/deep/path?q=1"):
        reply = site.get(path)
        assert reply.status == 200, reply.body
        data = reply.json()
        assert data["worker"] == "api"
        assert data["FRANKENPHP_WORKER"] == "1"
        assert data["REQUEST_URI"] == path
    assert site.get("/api/x?k=v").json()["get"] == {"k": "v"}
    # outside the pattern: the front controller, classic
    other = site.get("/apix")
    assert other.json()["script"] == "index.php"


@pytest.mark.timeout(30)
def test_handle_request_in_classic_script_throws(site: Served) -> None:
    reply = site.get("/handle.php")
    assert reply.status == 200
    assert reply.body.decode() == f"RuntimeException: {HANDLE_REQUEST_ERROR}"


@pytest.mark.timeout(30)
def test_handle_request_in_background_worker_throws(site: Served) -> None:
    record = site.out / "bg-handle-request.txt"
    wait_for(record.exists, what="the background worker's record")
    assert record.read_text() == f"RuntimeException: {HANDLE_REQUEST_ERROR}"


@pytest.mark.timeout(60)
def test_worker_max_requests_recycles(base: Path, serve: Callable[..., Served]) -> None:
    served = serve(workers=[frankenpy.Worker("app", base / "public" / "worker.php", num=1, max_requests=3)])
    replies = [served.get(f"/worker.php?i={i}") for i in range(7)]
    assert [r.status for r in replies] == [200] * 7, [r.body for r in replies]
    data = [r.json() for r in replies]
    assert [d["counter"] for d in data] == [1, 2, 3, 1, 2, 3, 1]
    boots = [d["boot"] for d in data]
    assert boots[0] == boots[1] == boots[2]
    assert boots[3] == boots[4] == boots[5] != boots[0]
    assert boots[6] not in (boots[0], boots[3])
    assert [d["get"] for d in data] == [{"i": str(i)} for i in range(7)]
    status = wait_for(lambda: [s for s in worker_status(served.runtime, "app") if s.restarts >= 2],
                      what="two restarts")[0]
    assert status.crashes == 0
    assert status.requests == 7


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["user_error", "oom"])
def test_worker_fatal_error_in_request_gives_500_then_restarts(
    base: Path, serve: Callable[..., Served], mode: str
) -> None:
    served = serve(workers=[frankenpy.Worker("app", base / "public" / "worker.php", num=1)])
    before = served.get("/worker.php").json()
    assert before["counter"] == 1
    crashed = served.get(f"/worker.php?mode={mode}")
    assert crashed.status == 500, (crashed.status, crashed.body)
    after = served.get("/worker.php?x=1")
    assert after.status == 200, after.body
    data = after.json()
    assert data["boot"] != before["boot"]  # the script ran again
    assert data["counter"] == 1  # fresh state
    assert data["get"] == {"x": "1"}
    status = worker_status(served.runtime, "app")[0]
    assert status.crashes == 1
    assert status.state == "ready"


@pytest.mark.timeout(60)
def test_worker_uncaught_exception_in_request_gives_500_and_worker_survives(
    base: Path, serve: Callable[..., Served]
) -> None:
    """As in FrankenPHP: an exception escaping the handler is reported (zend_exception_error)
    and answered 500; the worker script keeps looping with its state."""
    served = serve(workers=[frankenpy.Worker("app", base / "public" / "worker.php", num=1)])
    before = served.get("/worker.php").json()
    crashed = served.get("/worker.php?mode=exception")
    assert crashed.status == 500, (crashed.status, crashed.body)
    after = served.get("/worker.php?x=1")
    assert after.status == 200, after.body
    assert after.json()["get"] == {"x": "1"}
    assert after.json()["boot"] == before["boot"]
    assert after.json()["counter"] == before["counter"] + 2


@pytest.mark.timeout(60)
def test_worker_exit_in_request_answers_and_restarts(base: Path, serve: Callable[..., Served]) -> None:
    """exit() inside a request ends the response as PHP left it, and the worker script: the
    next request finds a fresh run."""
    served = serve(workers=[frankenpy.Worker("app", base / "public" / "worker.php", num=1)])
    before = served.get("/worker.php").json()
    ended = served.get("/worker.php?mode=exit")
    assert ended.status == 200 and ended.body == b""
    after = served.get("/worker.php?x=1")
    assert after.status == 200, after.body
    assert after.json()["boot"] != before["boot"]
    assert after.json()["counter"] == 1


@pytest.mark.timeout(60)
def test_worker_crashes_past_boot_have_no_backoff_and_no_halt(
    base: Path, serve: Callable[..., Served]
) -> None:
    """Seven crashes in a row inside requests: each is answered 500 at once and the worker is
    back at once (a boot failure would back off 0.1+0.4+0.9+1+1+1 s and halt at the cap of 6)."""
    served = serve(workers=[frankenpy.Worker("app", base / "public" / "worker.php", num=1)])
    assert served.get("/worker.php").status == 200
    started = time.monotonic()
    statuses = [served.get("/worker.php?mode=user_error").status for _ in range(7)]
    ok = served.get("/worker.php")
    elapsed = time.monotonic() - started
    assert statuses == [500] * 7
    assert ok.status == 200 and ok.json()["counter"] == 1
    assert elapsed < 2.5, f"8 requests took {elapsed:.2f} s: crashes after boot were backed off"
    status = worker_status(served.runtime, "app")[0]
    assert status.crashes == 7
    assert status.state == "ready"
    assert status.failures == 0


@pytest.mark.timeout(60)
def test_restart_workers_under_load(base: Path, serve: Callable[..., Served]) -> None:
    served = serve(workers=[frankenpy.Worker("app", base / "public" / "worker.php", num=2)])
    results: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + 2.5

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=15)
        try:
            while time.monotonic() < deadline:
                try:
                    conn.request("GET", "/worker.php?sleep=5")
                    resp = conn.getresponse()
                    body = resp.read()
                    with lock:
                        results.append(resp.status)
                        if resp.status == 200 and json.loads(body)["worker"] != "app":
                            errors.append(f"unexpected body {body!r}")
                except Exception as exc:
                    with lock:
                        errors.append(repr(exc))
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=15)
        finally:
            conn.close()

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    served.runtime.restart_workers()
    time.sleep(0.5)
    served.runtime.restart_workers()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "a client hung"
    assert errors == []
    assert set(results) <= {200, 503}, set(results)
    assert results.count(200) >= 20
    assert all(s.restarts >= 2 for s in worker_status(served.runtime, "app"))


@pytest.mark.timeout(60)
def test_background_worker_without_http(base: Path, serve: Callable[..., Served]) -> None:
    bg = frankenpy.Worker("bg", base / "workers" / "bg.php", background=True)
    served = serve(num_threads=1, workers=[bg])
    wait_for((served.out / "bg-running").exists, what="the background worker's sentinel")
    reply = served.get("/hello.php")
    assert (reply.status, reply.body) == (200, b"hello from PHP")
    status = worker_status(served.runtime, "bg")[0]
    assert status.state == "ready" and status.crashes == 0
    assert served.get("/dump.php?z=1").json()["get"] == {"z": "1"}


# --- load, metrics, lifecycle ---------------------------------------------------------------------
@pytest.mark.timeout(90)
def test_fifty_concurrent_clients(site: Served) -> None:
    results: list[tuple[str, int, bytes]] = []
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(50)

    def client(index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", site.port, timeout=30)
        try:
            barrier.wait(30)
            deadline = time.monotonic() + 3.0
            n = 0
            while time.monotonic() < deadline:
                path = "/hello.php" if (index + n) % 2 else f"/worker.php?c={index}"
                n += 1
                try:
                    conn.request("GET", path)
                    resp = conn.getresponse()
                    body = resp.read()
                    with lock:
                        results.append((path, resp.status, body))
                except Exception as exc:
                    with lock:
                        errors.append(f"{path}: {exc!r}")
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", site.port, timeout=30)
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a client hung"
    assert errors == []
    bad = [(p, s, b[:100]) for p, s, b in results if s != 200]
    assert bad == []
    assert len(results) >= 100
    for path, _, body in results:
        if path == "/hello.php":
            assert body == b"hello from PHP"
        else:
            assert json.loads(body)["get"] == {"c": path.rsplit("=", 1)[1]}
    assert {p.split("?")[0] for p, _, _ in results} == {"/hello.php", "/worker.php"}


def test_server_ports_are_ints(site: Served) -> None:
    """``Server.ports`` is documented as ``list[int]`` (waitress's effective_port is a str)."""
    assert all(isinstance(port, int) for port in site.server.ports), site.server.ports


@pytest.mark.timeout(30)
def test_metrics_endpoint(site: Served) -> None:
    reply = site.get("/metrics")
    assert reply.status == 200
    text = reply.body.decode()
    assert "frankenphp_total_threads" in text
    assert 'frankenphp_total_workers{worker="app"}' in text
    # the second site has no /metrics: the path goes to PHP's front controller
    other = fetch(int(site.server.ports[1]), "GET", "/metrics")
    assert "frankenphp_total_threads" not in other.body.decode()


@pytest.mark.timeout(60)
def test_graceful_stop_finishes_in_flight_request(
    base: Path, serve: Callable[..., Served], server_kind: str
) -> None:
    served = serve(workers=[frankenpy.Worker("app", base / "public" / "worker.php", num=1)])
    replies: list[Reply | BaseException] = []

    def slow(path: str) -> None:
        try:
            replies.append(served.get(path))
        except BaseException as exc:
            replies.append(exc)

    expected = [b"slept", b'{"wor']
    paths = ["/sleep.php?ms=1000", "/worker.php?sleep=1000"]
    if server_kind == "native-per-thread":
        # Run-to-completion: the worker request may land on the thread that runs the classic
        # one, which reads it only after the drain has begun (503 then; README).
        expected, paths = expected[:1], paths[:1]
    clients = [threading.Thread(target=slow, args=(path,)) for path in paths]
    for client in clients:
        client.start()
    wait_for(lambda: served.runtime.busy_threads >= 1, what="the classic request to start")
    time.sleep(0.2)
    started = time.monotonic()
    served.stop(grace=5.0)
    elapsed = time.monotonic() - started
    for client in clients:
        client.join(10)
    assert len(replies) == len(paths)
    for reply in replies:
        assert isinstance(reply, Reply), reply
        assert reply.status == 200, reply.body
    assert sorted(r.body[:5] for r in replies if isinstance(r, Reply)) == expected
    assert 0.3 < elapsed < 4.0, elapsed
    assert served.runtime.state == "stopped"


@pytest.mark.timeout(60)
def test_new_request_during_graceful_stop_gets_503(serve: Callable[..., Served]) -> None:
    """While stop() waits for an in-flight request, the listener is still open and a new
    request is refused with 503 (server.py: "new requests get 503")."""
    served = serve()
    slow: list[Reply] = []
    in_flight = threading.Thread(target=lambda: slow.append(served.get("/sleep.php?ms=1500")))
    in_flight.start()
    wait_for(lambda: served.runtime.busy_threads >= 1, what="the slow request to start")
    stop_errors: list[BaseException] = []

    def stop() -> None:
        try:
            served.stop(grace=5.0)
        except BaseException as exc:
            stop_errors.append(exc)

    stopper = threading.Thread(target=stop)
    stopper.start()
    time.sleep(0.3)
    try:
        refused = served.get("/hello.php", timeout=10)
    finally:
        stopper.join(10)
        in_flight.join(10)
    assert refused.status == 503, (refused.status, refused.body)
    assert slow and slow[0].status == 200
    assert stop_errors == []
    assert not stopper.is_alive()
    assert served.runtime.state == "stopped"


@pytest.mark.timeout(60)
def test_stop_survives_a_concurrent_wake_of_the_server_loop(
    serve: Callable[..., Served], monkeypatch: pytest.MonkeyPatch, server_kind: str
) -> None:
    """stop() hands its close to waitress's loop thread through the trigger (queue a thunk,
    then write to the trigger's pipe).  A task thread may pull the same trigger in between
    (every finished response does), so the loop can run the thunk before stop() writes; the
    thunk must not leave stop() writing to a closed pipe.  Seen unforced in about one stop in
    ten under load; here the interleaving is forced: the first write of each pull stands for
    the task thread's, then the loop gets time to run the thunks."""
    if server_kind != "wsgi":
        pytest.skip("waitress's trigger: the WSGI server only")
    served = serve()
    assert served.get("/hello.php").status == 200
    real_pull = waitress_trigger.trigger._physical_pull

    def pull_with_a_concurrent_wake(self: Any) -> None:
        real_pull(self)  # a task thread's pull wakes the loop first ...
        time.sleep(0.2)  # ... which runs every queued thunk meanwhile
        real_pull(self)

    monkeypatch.setattr(waitress_trigger.trigger, "_physical_pull", pull_with_a_concurrent_wake)
    started = time.monotonic()
    served.stop(grace=5.0)
    assert time.monotonic() - started < 5.0
    assert served.runtime.state == "stopped"


@pytest.mark.timeout(120)
def test_stop_under_load_answers_or_refuses_every_request(
    base: Path, serve: Callable[..., Served], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopping while 8 clients keep sending requests, 4 times: every request is answered
    (200, or 503 while draining) or refused at connect time; none hangs, and no server thread
    dies with an exception (waitress's loop thread must not be pulled from under select())."""
    thread_errors: list[str] = []
    monkeypatch.setattr(threading, "excepthook",
                        lambda args: thread_errors.append(f"{args.thread.name}: {args.exc_value!r}"))
    problems: list[str] = []
    statuses: set[int] = set()
    for _ in range(4):
        served = serve()
        port = served.port
        done = threading.Event()

        def client(port: int = port, done: threading.Event = done) -> None:
            while not done.is_set():
                started = time.monotonic()
                try:
                    reply = fetch(port, "GET", "/hello.php", timeout=8)
                    statuses.add(reply.status)
                    if reply.status == 200 and reply.body != b"hello from PHP":
                        problems.append(f"bad body {reply.body!r}")
                except ConnectionError:
                    pass  # refused or reset by a closed listener: not hung
                except Exception as exc:
                    problems.append(f"{exc!r} after {time.monotonic() - started:.1f} s")

        clients = [threading.Thread(target=client) for _ in range(8)]
        for t in clients:
            t.start()
        time.sleep(0.3)
        started = time.monotonic()
        served.stop(grace=5.0)
        stop_took = time.monotonic() - started
        time.sleep(0.1)
        done.set()
        for t in clients:
            t.join(20)
        assert not any(t.is_alive() for t in clients), "a client hung"
        assert stop_took < 5.0, stop_took
    assert (thread_errors, problems) == ([], [])
    assert statuses <= {200, 503} and 200 in statuses, statuses


@pytest.mark.timeout(60)
def test_max_wait_time_gives_503(base: Path, serve: Callable[..., Served], server_kind: str) -> None:
    """One PHP thread and one worker thread, both busy: a classic request and a worker request
    each get 503 after max_wait_time (0.3 s); the busy ones finish normally."""
    if server_kind == "native-per-thread":
        pytest.skip("run-to-completion: a request behind a busy PHP thread is not read until that "
                    "thread is done (README); test_http_native.py checks what max_wait_time does there")
    served = serve(
        num_threads=1,
        workers=[frankenpy.Worker("app", base / "public" / "worker.php", num=1)],
        app_options=[{"max_wait_time": 0.3}],
    )
    slow: list[Reply] = []
    blockers = [
        threading.Thread(target=lambda p=p: slow.append(served.get(p)))
        for p in ("/sleep.php?ms=2000", "/worker.php?sleep=2000")
    ]
    for t in blockers:
        t.start()
    wait_for(lambda: served.runtime.busy_threads == 1, what="the only PHP thread to be busy")
    wait_for(lambda: worker_status(served.runtime, "app")[0].busy, what="the only worker thread to be busy")
    for path in ("/hello.php", "/worker.php"):
        started = time.monotonic()
        reply = served.get(path)
        elapsed = time.monotonic() - started
        assert reply.status == 503, (path, reply.status, reply.body)
        assert elapsed < 1.5, (path, elapsed)
    for t in blockers:
        t.join(10)
    assert sorted((r.status, r.body[:5]) for r in slow) == [(200, b"slept"), (200, b'{"wor')]
    # the refused worker request never ran: the worker counted only the slow one
    assert served.get("/worker.php").json()["counter"] == 2


# --- the php-server command -------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def cli_process(args: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    proc = subprocess.Popen([sys.executable, "-m", "frankenpy", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


@pytest.mark.timeout(60)
def test_php_server_cli_serves_worker_and_stops_on_sigterm(tmp_path: Path) -> None:
    root = build_site(tmp_path) / "public"
    port = free_port()
    args = ["php-server", "--root", str(root), "--listen", f"127.0.0.1:{port}",
            "--worker", str(root / "worker.php")]
    with cli_process(args) as proc:
        def answers() -> Reply | None:
            assert proc.poll() is None, proc.communicate(timeout=5)
            try:
                return fetch(port, "GET", "/hello.php", timeout=2)
            except OSError:
                return None

        hello = wait_for(answers, timeout=30, what="php-server to answer")
        assert (hello.status, hello.body) == (200, b"hello from PHP")
        reply = fetch(port, "GET", "/worker.php?via=cli")
        assert reply.status == 200, reply.body
        data = reply.json()
        assert data["FRANKENPHP_WORKER"] == "1" and data["get"] == {"via": "cli"}
        assert fetch(port, "GET", "/worker.php").json()["counter"] == data["counter"] + 1
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pytest.fail("php-server did not exit within 15 s of SIGTERM")
        elapsed = time.monotonic() - started
        _, err = proc.communicate(timeout=5)
    assert code == 0, err.decode()
    assert elapsed < 10, elapsed


@pytest.mark.timeout(60)
def test_php_server_cli_rejects_missing_root() -> None:
    with cli_process(["php-server", "--root", "/nonexistent/frankenpy-root"]) as proc:
        out, err = proc.communicate(timeout=30)
    assert proc.returncode != 0
    lines = [line for line in err.decode().splitlines() if line.strip()]
    assert len(lines) == 1, err.decode()
    assert "--root" in lines[0]
    assert out == b""


@pytest.mark.timeout(90)
def test_php_server_worker_large_responses_under_load(tmp_path: Path) -> None:
    """wrk (as fast as the server answers) fetches ~70 KB pages with headers and cookies from
    a 2-thread HTTP worker of the php-server command.  Regression: the glue clears a request's
    C struct after request_done(), and the WSGI thread used to free that struct's memory as soon
    as it had the response: heap corruption, and glibc aborted the process within a second."""
    wrk = shutil.which("wrk")
    if wrk is None:
        pytest.skip("wrk is not installed (scripts/install_deps.sh installs it)")
    root = tmp_path / "public"
    write(root / "big.php", """<?php
$n = 0;
while (frankenphp_handle_request(function () use (&$n) {
    $n++;
    header('Content-Type: application/json');
    setcookie('big', (string) $n);
    echo json_encode(array_fill(0, 2000, ['id' => $n, 'name' => str_repeat('x', 20)]));
})) { gc_collect_cycles(); }
""")
    port = free_port()
    log = tmp_path / "server.log"
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "frankenpy", "php-server", "--root", str(root), "--listen",
             f"127.0.0.1:{port}", "--threads", "2", "--worker", f"{root / 'big.php'}:2"],
            env=env, stdout=sink, stderr=sink,
        )
    try:
        def answers() -> Reply | None:
            assert proc.poll() is None, log.read_text()[-2000:]
            try:
                return fetch(port, "GET", "/big.php", timeout=2)
            except OSError:
                return None

        wait_for(answers, timeout=30, what="php-server to answer")
        done = subprocess.run(
            [wrk, "-t2", "-c32", "-d4s", f"http://127.0.0.1:{port}/big.php?page=json"],
            capture_output=True, text=True, timeout=30,
        )
        assert proc.poll() is None, f"php-server died: {log.read_text()[-2000:]}"
        assert done.returncode == 0, done.stderr
        assert "Socket errors" not in done.stdout and "Non-2xx" not in done.stdout, done.stdout
        reply = fetch(port, "GET", "/big.php")
        assert reply.status == 200 and len(reply.body) > 60_000
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.mark.timeout(60)
def test_http_worker_busy_and_queue_metrics(base: Path, serve: Callable[..., Served]) -> None:
    """frankenphp_busy_workers counts worker threads inside a request and
    frankenphp_worker_queue_depth the requests waiting for one; both drop back to 0."""
    served = serve(workers=[frankenpy.Worker("app", base / "public" / "worker.php", num=1)])

    def metric(name: str) -> float:
        text = served.runtime.metrics_text()
        line = next(line for line in text.splitlines() if line.startswith(f'{name}{{worker="app"}}'))
        return float(line.rsplit(" ", 1)[1])

    slow = [threading.Thread(target=served.get, args=("/worker.php?sleep=1000",)) for _ in range(3)]
    for t in slow:
        t.start()
    wait_for(lambda: metric("frankenphp_busy_workers") == 1 and metric("frankenphp_worker_queue_depth") == 2,
             timeout=10, what="one request in the worker and two queued")
    for t in slow:
        t.join(20)
    wait_for(lambda: metric("frankenphp_busy_workers") == 0 and metric("frankenphp_worker_queue_depth") == 0,
             timeout=10, what="the worker idle again")


@pytest.mark.timeout(60)
def test_http_worker_max_execution_time_counts_per_request(base: Path, server_kind: str) -> None:
    """max_execution_time applies to each request of an HTTP worker (not to its whole life):
    requests shorter than the limit pass however long the worker lives; one past it gets a
    500, and the worker, restarted at once, serves the next request."""
    rt = frankenpy.Runtime(num_threads=1, php_ini={"max_execution_time": 1}, workers=[
        frankenpy.Worker("app", base / "public" / "worker.php", num=1),
    ])
    rt.start()
    try:
        app = PHPApp(rt, base / "public")
        server = make_server(server_kind, rt, [Site("127.0.0.1", 0, app)])
        server.start()
        served = Served(rt, server, base, apps=[app])
        for _ in range(3):  # 3 x 0.6 s: longer than the limit together, not one by one
            assert served.get("/worker.php?sleep=600").status == 200
        started = time.monotonic()
        assert served.get("/worker.php?sleep=5000").status == 500
        assert time.monotonic() - started < 4
        assert served.get("/worker.php").status == 200
        assert rt.workers()[0].crashes == 1
    finally:
        server.stop(grace=5)
