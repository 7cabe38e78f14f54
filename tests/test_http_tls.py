"""HTTPS and HTTP/2 on the native server (``tls_cert``/``tls_key``, csrc/http_server.c).

A self-signed certificate is made at test time with the ``openssl`` command; the clients are
real: Python's ``ssl`` + ``http.client`` for HTTPS/1.1, ``curl --http2`` (nghttp2) for HTTP/2,
whose ``-Z`` (parallel transfers) multiplexes several requests as streams of ONE connection.
What is checked is what HTTP/2 changes for the adapter: several requests of one connection
in flight at once on different PHP threads, a stream reset ending only that request, and
$_SERVER describing the protocol.  Bounds are generous (the machine is shared).
"""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_for

import frankenpy
from frankenpy.config import ConfigError, parse
from frankenpy.http.app import PHPApp
from frankenpy.http.native import NativeServer
from frankenpy.http.server import Server, Site

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None or shutil.which("curl") is None,
                                reason="needs the openssl and curl commands (scripts/install_deps.sh)")

STREAMS = 12  # requests multiplexed on one HTTP/2 connection


def make_cert(directory: Path, name: str = "server") -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True, timeout=30,
    )
    return cert, key


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_cert(tmp_path_factory.mktemp("tls"))


def build_root(base: Path) -> Path:
    root = base / "public"
    root.mkdir()
    out = base / "out"
    out.mkdir()
    (root / "info.php").write_text(
        "<?php header('Content-Type: text/plain');\n"
        "$keys = ['HTTPS', 'REQUEST_SCHEME', 'SERVER_PORT', 'SERVER_PROTOCOL', 'HTTP_HOST', 'HTTP_COOKIE'];\n"
        "foreach ($keys as $k) {\n"
        "    echo $k, '=', $_SERVER[$k] ?? '-', \"\\n\";\n"
        "}\n"
        "echo 'cookies=', json_encode($_COOKIE), \"\\n\";\n"
        "echo 'body=', file_get_contents('php://input'), \"\\n\";\n"
    )
    (root / "static.txt").write_text("static over TLS\n")
    (root / "preload.php").write_text(
        "<?php header('Link: </pushed.php>; rel=preload'); echo 'preloading';\n"
    )
    (root / "pushed.php").write_text(f"<?php touch('{out}/pushed'); echo 'pushed';\n")
    (root / "worker.php").write_text(
        "<?php while (frankenphp_handle_request(function () {\n"
        "    echo 'worker ', $_SERVER['SERVER_PROTOCOL'], ' ', $_SERVER['HTTPS'] ?? '-';\n"
        "})) {}\n"
    )
    # Each request says how many requests it saw running at once (at most the 2 PHP threads):
    # it waits for a partner until every other request is done, so nothing waits for nothing.
    (root / "concurrent.php").write_text(
        f"<?php $run = '{out}/running'; $done = '{out}/done'; @mkdir($run); @mkdir($done);\n"
        "$id = $_GET['id']; touch(\"$run/$id\"); $seen = 1; $until = microtime(true) + 10;\n"
        "while (microtime(true) < $until) {\n"
        "    $seen = max($seen, count(glob(\"$run/*\")));\n"
        f"    if ($seen >= 2 || count(glob(\"$done/*\")) >= {STREAMS} - 1) break;\n"
        "    usleep(5000);\n"
        "}\n"
        "usleep(50000); unlink(\"$run/$id\"); touch(\"$done/$id\");\n"
        "header('Content-Type: text/plain');\n"
        "echo \"id=$id seen=$seen\\n\", str_repeat(\"<$id>\", 2000);\n"
    )
    (root / "sleep.php").write_text("<?php usleep((int) $_GET['ms'] * 1000); echo 'slept ', $_GET['id'];\n")
    (root / "slow_stream.php").write_text(
        "<?php register_shutdown_function(function () {\n"
        f"    file_put_contents('{out}/stream.txt', connection_aborted() ? 'aborted' : 'completed');\n"
        "});\n"
        "for ($i = 0; $i < 100; $i++) { echo str_repeat('x', 1024), \"\\n\"; flush(); usleep(50000); }\n"
    )
    (root / "big.php").write_text(
        "<?php $n = (int) $_GET['kb'];\n"
        "for ($i = 0; $i < $n; $i++) { echo str_pad((string) $i, 1023, '.'), \"\\n\"; flush(); }\n"
    )
    return root


class Served:
    def __init__(self, base: Path, cert: Path, key: Path) -> None:
        self.base, self.cert = base, cert
        root = base / "public"
        worker = frankenpy.Worker("w", root / "worker.php", num=1)
        self.runtime = frankenpy.Runtime(num_threads=2, workers=[worker])
        self.runtime.start()
        try:
            app = PHPApp(self.runtime, root, max_body_size=4096)
            self.server = NativeServer(self.runtime, [Site("127.0.0.1", 0, app)], tls_cert=cert, tls_key=key)
            self.server.start()
        except BaseException:
            self.runtime.shutdown(5.0)
            raise
        self.port = self.server.ports[0]
        self.url = f"https://127.0.0.1:{self.port}"

    def https(self, method: str, path: str, body: bytes | None = None,
              headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        """One request over HTTPS/1.1 (certificate and host name verified)."""
        context = ssl.create_default_context(cafile=str(self.cert))
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=context, timeout=20)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def curl(self, *args: str, timeout: float = 60) -> str:
        """curl over HTTP/2 with the test's CA; its stdout (the -w lines)."""
        done = subprocess.run(["curl", "--http2", "--cacert", str(self.cert), "--no-progress-meter", *args],
                              capture_output=True, text=True, timeout=timeout)
        return done.stdout


@pytest.fixture
def served(tmp_path: Path, tls_files: tuple[Path, Path]) -> Iterator[Served]:
    build_root(tmp_path)
    server = Served(tmp_path, *tls_files)
    yield server
    server.server.stop(grace=5.0)


# A -w line per transfer: protocol, new connections it made, curl's exit code, HTTP status.
WRITE_OUT = "%{http_version} %{num_connects} %{exitcode} %{response_code}\\n"


def transfers(output: str) -> list[list[str]]:
    return [line.split() for line in output.splitlines() if line.strip()]


@pytest.mark.timeout(60)
def test_https_1_1_serves_php_static_files_and_workers(served: Served) -> None:
    status, body = served.https("POST", "/info.php", b"a=1", {"Cookie": "c=1; d=2"})
    assert status == 200
    lines = body.decode().splitlines()
    assert lines[:6] == ["HTTPS=on", "REQUEST_SCHEME=https", f"SERVER_PORT={served.port}",
                         "SERVER_PROTOCOL=HTTP/1.1", f"HTTP_HOST=127.0.0.1:{served.port}",
                         "HTTP_COOKIE=c=1; d=2"]
    assert lines[6:] == ['cookies={"c":"1","d":"2"}', "body=a=1"]
    assert served.https("GET", "/static.txt") == (200, b"static over TLS\n")
    assert served.https("GET", "/worker.php") == (200, b"worker HTTP/1.1 on")


@pytest.mark.timeout(60)
def test_plain_http_is_unchanged_and_has_http_host(tmp_path: Path) -> None:
    """A site without TLS beside the TLS one: plain HTTP/1.1, no HTTPS; and HTTP_HOST, which
    h2o keeps out of the request's headers (as for HTTPS and HTTP/2 above)."""
    root = build_root(tmp_path)
    runtime = frankenpy.Runtime(num_threads=1)
    runtime.start()
    try:
        server = NativeServer(runtime, [Site("127.0.0.1", 0, PHPApp(runtime, root))])
        server.start()
    except BaseException:
        runtime.shutdown(5.0)
        raise
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.ports[0], timeout=20)
        conn.request("GET", "/info.php")
        lines = conn.getresponse().read().decode().splitlines()
        conn.close()
        assert lines[:5] == ["HTTPS=-", "REQUEST_SCHEME=http", f"SERVER_PORT={server.ports[0]}",
                             "SERVER_PROTOCOL=HTTP/1.1", f"HTTP_HOST=127.0.0.1:{server.ports[0]}"]
    finally:
        server.stop(grace=5.0)


@pytest.mark.timeout(60)
def test_http2_serves_php_static_files_and_workers_on_one_connection(served: Served, tmp_path: Path) -> None:
    out = [tmp_path / f"h2-{i}" for i in range(3)]
    result = served.curl(
        "-Z", "-w", WRITE_OUT, "-H", "Cookie: a=1", "-H", "Cookie: b=2", "--data", "posted",
        "-o", str(out[0]), f"{served.url}/info.php",
        "--next", "--http2", "--cacert", str(served.cert), "-w", WRITE_OUT, "-o", str(out[1]),
        f"{served.url}/static.txt",
        "--next", "--http2", "--cacert", str(served.cert), "-w", WRITE_OUT, "-o", str(out[2]),
        f"{served.url}/worker.php",
    )
    rows = transfers(result)
    assert [row[0] for row in rows] == ["2"] * 3 and [row[3] for row in rows] == ["200"] * 3, result
    assert sum(int(row[1]) for row in rows) == 1  # one connection for the three
    info = out[0].read_text().splitlines()
    assert info[:5] == ["HTTPS=on", "REQUEST_SCHEME=https", f"SERVER_PORT={served.port}",
                        "SERVER_PROTOCOL=HTTP/2.0", f"HTTP_HOST=127.0.0.1:{served.port}"]  # from :authority
    # An HTTP/2 client may send one Cookie header per cookie: PHP sees them joined.
    assert info[5:] == ["HTTP_COOKIE=a=1; b=2", 'cookies={"a":"1","b":"2"}', "body=posted"]
    assert out[1].read_bytes() == b"static over TLS\n"
    assert out[2].read_text() == "worker HTTP/2.0 on"


@pytest.mark.timeout(90)
def test_many_streams_of_one_connection_run_on_both_php_threads(served: Served, tmp_path: Path) -> None:
    """STREAMS requests as streams of one HTTP/2 connection: they are handed to PHP threads as
    they come, two run at once (each script sees the other running), every body is its own."""
    args = []
    for i in range(STREAMS):
        if i:
            args += ["--next", "--http2", "--cacert", str(served.cert)]
        args += ["-w", WRITE_OUT, "-o", str(tmp_path / f"c{i}"), f"{served.url}/concurrent.php?id={i}"]
    rows = transfers(served.curl("-Z", "--parallel-max", str(STREAMS), *args))
    assert len(rows) == STREAMS
    assert all(row[0] == "2" and row[2] == "0" and row[3] == "200" for row in rows), rows
    assert sum(int(row[1]) for row in rows) == 1
    seen = []
    for i in range(STREAMS):
        head, _, rest = (tmp_path / f"c{i}").read_text().partition("\n")
        assert head.startswith(f"id={i} seen=")
        assert rest == f"<{i}>" * 2000
        seen.append(int(head.rpartition("=")[2]))
    assert max(seen) == 2, seen  # both PHP threads served streams of the one connection


@pytest.mark.timeout(60)
def test_a_reset_stream_aborts_only_its_script(served: Served, tmp_path: Path) -> None:
    """curl gives up on one stream (--max-time 1: RST_STREAM) while another stream of the same
    connection is still running: that script is aborted, the other one completes."""
    other = tmp_path / "other"
    rows = transfers(served.curl(
        "-Z", "-w", WRITE_OUT, "-o", os.devnull, "--max-time", "1", f"{served.url}/slow_stream.php",
        "--next", "--http2", "--cacert", str(served.cert), "-w", WRITE_OUT, "-o", str(other),
        f"{served.url}/sleep.php?ms=2500&id=other",
    ))
    assert other.read_text() == "slept other"
    by_status = {row[3]: row for row in rows}
    assert by_status["200"][2] == "0" and sum(int(row[1]) for row in rows) == 1, rows
    assert "28" in (row[2] for row in rows)  # the timed-out transfer
    marker = served.base / "out" / "stream.txt"
    wait_for(marker.exists, timeout=10, what="the reset stream's script to end")
    assert marker.read_text() == "aborted"
    assert served.server.counters()["client_gone"] == 1
    # ... and the connection's other stream got its whole response.
    out = served.curl("-s", f"{served.url}/sleep.php?ms=1&id=after")
    assert out == "slept after"


@pytest.mark.timeout(90)
@pytest.mark.parametrize("protocol", ["h2", "https/1.1"])
def test_large_streamed_response_arrives_whole(served: Served, protocol: str) -> None:
    """3 MB flushed 1 kB at a time (past the back-pressure threshold, and past HTTP/2's flow
    control windows): every byte arrives, in order."""
    if protocol == "h2":
        body = subprocess.run(["curl", "--http2", "--cacert", str(served.cert), "-s", "-f",
                               f"{served.url}/big.php?kb=3000"], capture_output=True, timeout=60).stdout
    else:
        status, body = served.https("GET", "/big.php?kb=3000")
        assert status == 200
    lines = body.split(b"\n")
    assert len(lines) == 3001 and lines[-1] == b""
    assert all(line.rstrip(b".") == str(i).encode() for i, line in enumerate(lines[:-1]))


@pytest.mark.timeout(60)
def test_clients_without_a_tls_handshake_do_not_disturb_others(served: Served) -> None:
    """Plain HTTP, garbage and a silent connection on the TLS port: the first two are closed,
    and HTTPS and HTTP/2 clients are served meanwhile."""
    silent = socket.create_connection(("127.0.0.1", served.port), timeout=10)
    try:
        for junk in (b"GET /info.php HTTP/1.1\r\nHost: x\r\n\r\n", os.urandom(4096)):
            with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
                sock.sendall(junk)
                received = b""
                try:
                    while chunk := sock.recv(65536):  # the server closes (no TLS, no PHP)
                        received += chunk
                except ConnectionResetError:
                    pass
                assert b"HTTPS=on" not in received
            assert served.https("GET", "/static.txt") == (200, b"static over TLS\n")
            assert served.curl("-s", f"{served.url}/worker.php") == "worker HTTP/2.0 on"
        assert served.server.counters()["php_requests"] == 2  # the worker requests only
    finally:
        silent.close()


@pytest.mark.timeout(60)
def test_request_smuggling_is_refused_over_https_too(served: Served) -> None:
    """HTTP/1.1 over TLS gets the head checks of plain HTTP/1.1 (they read h2o's decrypted
    input): Content-Length with Transfer-Encoding is 400 and closes."""
    context = ssl.create_default_context(cafile=str(served.cert))
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        sock.sendall(b"POST /info.php HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 400 ")
    assert served.server.counters()["php_requests"] == 0


@pytest.mark.timeout(60)
def test_body_above_max_body_size_never_reaches_php(served: Served, tmp_path: Path) -> None:
    """HTTPS/1.1: 413.  HTTP/2: h2o refuses the stream (REFUSED_STREAM) as the body passes the
    limit, before the request is complete, so no 413 can be sent; PHP never runs either way."""
    body = tmp_path / "body"
    body.write_bytes(b"x" * 5000)  # max_body_size is 4096
    out = served.curl("-s", "-o", os.devnull, "-w", "%{response_code}", "--data-binary", f"@{body}",
                      f"{served.url}/info.php")
    assert out == "000"
    assert served.https("POST", "/info.php", b"x" * 5000)[0] == 413
    assert served.server.counters()["php_requests"] == 0
    body.write_bytes(b"x" * 4000)
    out = served.curl("-s", "-o", os.devnull, "-w", "%{http_version} %{response_code}", "--data-binary",
                      f"@{body}", f"{served.url}/info.php")
    assert out == "2 200"


@pytest.mark.timeout(60)
def test_oversized_http2_head_never_reaches_php(served: Served, tmp_path: Path) -> None:
    """A 70 kB header on an HTTP/2 stream (HPACK would let it grow further): refused before
    PHP; a stream beside it on the same connection is served."""
    big = tmp_path / "big-header"
    big.write_text("X-Big: " + "a" * 70000)
    ok = tmp_path / "ok"
    rows = transfers(served.curl(
        "-Z", "-w", WRITE_OUT, "-o", os.devnull, "-H", f"@{big}", f"{served.url}/info.php",
        "--next", "--http2", "--cacert", str(served.cert), "-w", WRITE_OUT, "-o", str(ok),
        f"{served.url}/sleep.php?ms=1&id=beside",
    ))
    assert sorted(row[3] for row in rows) == ["000", "200"], rows
    assert ok.read_text() == "slept beside"
    assert served.server.counters()["php_requests"] == 1


@pytest.mark.timeout(60)
def test_stop_closes_idle_http2_connections(served: Served) -> None:
    """An HTTP/2 connection with no stream open when the server stops gets GOAWAY and EOF."""
    context = ssl.create_default_context(cafile=str(served.cert))
    context.set_alpn_protocols(["h2"])
    raw = socket.create_connection(("127.0.0.1", served.port), timeout=10)
    sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
    try:
        assert sock.selected_alpn_protocol() == "h2"
        # The client preface and an empty SETTINGS frame (RFC 9113 3.4, 6.5).
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        sock.recv(65536)  # the server's SETTINGS
        stopper = threading.Thread(target=served.server.stop, kwargs={"grace": 5.0})
        started = time.monotonic()
        stopper.start()
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        assert time.monotonic() - started < 8
        assert b"\x07\x00" in received  # a GOAWAY frame (type 7, no flags)
        stopper.join(10)
    finally:
        sock.close()


def h2_frames(sock: ssl.SSLSocket, until_end_of: int) -> list[tuple[int, int, int, bytes]]:
    """HTTP/2 frames (type, flags, stream, payload) read until stream ``until_end_of`` ends."""
    frames, buffer = [], b""
    while True:
        while len(buffer) >= 9 and len(buffer) >= 9 + int.from_bytes(buffer[:3], "big"):
            length = int.from_bytes(buffer[:3], "big")
            kind, flags, stream = buffer[3], buffer[4], int.from_bytes(buffer[5:9], "big") & 0x7FFFFFFF
            frames.append((kind, flags, stream, buffer[9:9 + length]))
            buffer = buffer[9 + length:]
            if (stream == until_end_of and kind in (0, 1) and flags & 0x1) or kind == 7:
                return frames
        chunk = sock.recv(65536)
        if not chunk:
            return frames
        buffer += chunk


@pytest.mark.timeout(60)
def test_no_server_push_of_preload_links(served: Served) -> None:
    """A page that sends "Link: rel=preload" to a client that accepts pushes (SETTINGS left at
    their defaults): no PUSH_PROMISE, and the linked PHP page is not run unasked (h2o 2.2 pushes
    for its proxy only; a push would run a PHP request nobody sent)."""
    context = ssl.create_default_context(cafile=str(served.cert))
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        path, authority = b"/preload.php", f"127.0.0.1:{served.port}".encode()
        # HPACK: GET, https (static table), :path and :authority as literals without indexing.
        block = b"\x82\x87\x04" + bytes([len(path)]) + path + b"\x01" + bytes([len(authority)]) + authority
        headers = len(block).to_bytes(3, "big") + b"\x01\x05" + (1).to_bytes(4, "big") + block
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00" + headers)
        frames = h2_frames(sock, until_end_of=1)
    data = b"".join(payload for kind, _, stream, payload in frames if kind == 0 and stream == 1)
    assert b"preloading" in data
    assert 5 not in [kind for kind, _, _, _ in frames]  # PUSH_PROMISE
    time.sleep(0.5)
    assert not (served.base / "out" / "pushed").exists()


# --- configuration ---------------------------------------------------------------------------


def test_tls_options_in_toml_are_checked_before_serving(tmp_path: Path, tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    _, other_key = make_cert(tmp_path, "other")
    (tmp_path / "public").mkdir()

    def server(**options: Any) -> dict[str, Any]:
        return {"server": [{"root": "public", **options}]}

    config = parse(server(tls_cert=str(cert), tls_key=str(key)), base=tmp_path)
    assert (config.servers[0].tls_cert, config.servers[0].tls_key) == (cert, key)
    cases = [
        (dict(tls_cert=str(cert)), "tls_key: missing"),
        (dict(tls_cert="nope.pem", tls_key=str(key)), f"tls_cert {tmp_path / 'nope.pem'}: No such file"),
        (dict(tls_cert=str(key), tls_key=str(key)), f"tls_cert {key}: not a PEM certificate chain"),
        (dict(tls_cert=str(cert), tls_key=str(cert)), f"tls_key {cert}: not a PEM private key"),
        (dict(tls_cert=str(cert), tls_key=str(other_key)),
         f"tls_key {other_key}: not the private key of the certificate in tls_cert"),
        (dict(tls_cert=str(cert), tls_key=7), "key 'tls_key': must be a string"),
    ]
    for options, message in cases:
        with pytest.raises(ConfigError, match=r"\[\[server\]\] #1: .*" + message.replace("[", r"\[")):
            parse(server(**options), base=tmp_path)
    with pytest.raises(ConfigError, match=r"key 'server': TLS .* needs the native server"):
        parse({"runtime": {"server": "wsgi"}, **server(tls_cert=str(cert), tls_key=str(key))}, base=tmp_path)


def test_unreadable_key_is_named(tmp_path: Path, tls_files: tuple[Path, Path]) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    cert, key = tls_files
    locked = tmp_path / "locked.key"
    locked.write_bytes(key.read_bytes())
    locked.chmod(0)
    (tmp_path / "public").mkdir()
    with pytest.raises(ConfigError, match=f"tls_key {locked}: Permission denied"):
        parse({"server": [{"root": "public", "tls_cert": str(cert), "tls_key": str(locked)}]}, base=tmp_path)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-m", "frankenpy", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.timeout(120)
def test_cli_tls_options(tmp_path: Path, tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    (tmp_path / "public").mkdir()
    bad = _cli("php-server", "--root", "public", "--tls-cert", str(cert), "--tls-key",
               str(tmp_path / "x.key"), cwd=tmp_path)
    assert bad.returncode == 2 and f"--tls-key {tmp_path / 'x.key'}: No such file" in bad.stderr
    half = _cli("php-server", "--root", "public", "--tls-key", str(key), cwd=tmp_path)
    assert half.returncode == 2 and "--tls-cert: missing" in half.stderr
    wsgi = _cli("php-server", "--root", "public", "--tls-cert", str(cert), "--tls-key", str(key),
                "--server", "wsgi", cwd=tmp_path)
    assert wsgi.returncode == 2 and "needs the native server" in wsgi.stderr


def test_python_api_refuses_bad_tls_and_wsgi_tls(tmp_path: Path, tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    (tmp_path / "public").mkdir()
    runtime = frankenpy.Runtime(num_threads=1)
    app = PHPApp(runtime, tmp_path / "public")
    with pytest.raises(ValueError, match=f"tls_key {cert}: not a PEM private key"):
        NativeServer(runtime, [Site("127.0.0.1", 0, app)], tls_cert=cert, tls_key=cert)
    with pytest.raises(ValueError, match="needs the native server"):
        Server(runtime, [Site("127.0.0.1", 0, app, tls_cert=str(cert), tls_key=str(key))])


@pytest.mark.timeout(120)
def test_php_server_command_serves_https_and_h2(tmp_path: Path, tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    build_root(tmp_path)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "frankenpy", "--grace", "2", "php-server", "--root", "public", "--listen",
         f"127.0.0.1:{port}", "--tls-cert", str(cert), "--tls-key", str(key)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        def answer() -> str:
            done = subprocess.run(["curl", "--http2", "--cacert", str(cert), "-s", "-w", " %{http_version}",
                                   f"https://127.0.0.1:{port}/static.txt"], capture_output=True, text=True,
                                  timeout=20)
            return done.stdout

        assert wait_for(lambda: answer().endswith(" 2") and answer(), timeout=60,
                        what="php-server over HTTPS") == "static over TLS\n 2"
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
    assert f"serving on https://127.0.0.1:{port}/ (native)" in output

