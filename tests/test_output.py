"""Output and response memory: what the glue collects stays bounded and is never lost silently.

In-process WSGI calls into :class:`frankenpy.http.app.PHPApp` (no sockets: thousands of requests
in seconds) and in-process executions, on Debian's libphp.  Tests that shrink the address space
run in a subprocess.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import frankenpy
from frankenpy.http.app import PHPApp
from frankenpy.runtime import DEFAULT_MAX_OUTPUT_SIZE

REPO = Path(__file__).resolve().parent.parent


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def wsgi_get(app: PHPApp, path: str) -> tuple[str, list[tuple[str, str]], bytes]:
    """One in-process WSGI request: (status line, headers, body)."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "", "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1",
        "wsgi.input": io.BytesIO(b""), "wsgi.url_scheme": "http", "HTTP_HOST": "127.0.0.1",
    }
    started: list[Any] = []
    written: list[bytes] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        started[:] = [status, headers]
        return written.append

    body = b"".join(app(environ, start_response))
    return started[0], started[1], b"".join(written) + body


# --- defect 6: the header block of every classic HTTP request ------------------------------------
@pytest.mark.timeout(120)
def test_classic_requests_do_not_leak_their_header_blocks(tmp_path: Path) -> None:
    """A PHP thread's reused request struct used to be zeroed over its malloc'ed header block:
    5,000 requests with an 8 kB header grew RSS by ~40 MB.  The glue now frees it."""
    value = "v" * 8192
    (tmp_path / "big_header.php").write_text(f"<?php header('X-Big: {value}'); echo 'ok';\n")
    rt = frankenpy.Runtime(num_threads=1)
    rt.start()
    try:
        app = PHPApp(rt, tmp_path)
        for _ in range(500):  # warm up allocator arenas and caches
            status, headers, body = wsgi_get(app, "/big_header.php")
        assert status.startswith("200") and body == b"ok"
        assert dict(headers)["X-Big"] == value
        before = rss_bytes()
        for _ in range(5000):
            wsgi_get(app, "/big_header.php")
        growth = rss_bytes() - before
    finally:
        rt.shutdown()
    assert growth < 10 << 20, f"RSS grew by {growth / 2**20:.1f} MiB over 5,000 requests"


# --- defect 9: a bound on collected output ------------------------------------------------------
def test_max_output_size_default_and_validation() -> None:
    assert frankenpy.Runtime(1).max_output_size == DEFAULT_MAX_OUTPUT_SIZE == 64 << 20
    assert frankenpy.Runtime(1, max_output_size=None).max_output_size is None
    for bad in (0, -1, 1.5, "1M", True):
        with pytest.raises(ValueError, match="max_output_size"):
            frankenpy.Runtime(1, max_output_size=bad)  # type: ignore[arg-type]


@pytest.mark.timeout(60)
def test_output_past_max_output_size_ends_the_script(make_runtime: Callable[..., frankenpy.Runtime]) -> None:
    """An endless echo loop ends with a fatal error naming the limit (it used to grow the host's
    memory without bound); the thread serves the next execution normally."""
    limit = 1 << 20
    rt = make_runtime(num_threads=1, max_output_size=limit, php_ini={"memory_limit": "8M"})
    result = rt.execute_code(
        "register_shutdown_function(function () { echo 'more output'; });"
        "$c = str_repeat('x', 65536); for (;;) { echo $c; }",
        timeout=30,
    )
    assert result.exit_status == 255
    assert not result.timed_out
    limit_errors = [e for e in result.errors if "max_output_size" in e]
    assert len(limit_errors) == 1, result.errors  # later output is dropped, not reported again
    assert f"{limit} bytes" in limit_errors[0]
    assert result.fatal_error is not None and "max_output_size" in result.fatal_error.message
    assert len(result.output) <= limit
    after = rt.execute_code("echo 'next';")
    assert (after.exit_status, after.output, after.errors) == (0, b"next", [])


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "code",
    [
        "echo str_repeat('y', 3 << 20);",  # one write
        "ob_start(); for ($i = 0; $i < 48; $i++) { echo str_repeat('y', 65536); } ob_end_flush();",
        "ob_start(fn ($s) => strtoupper($s)); echo str_repeat('y', 3 << 20);",  # a handler's output
        "register_shutdown_function(function () { echo str_repeat('y', 3 << 20); });",
    ],
    ids=["echo", "ob-buffer", "ob-handler", "shutdown-function"],
)
def test_every_output_path_respects_max_output_size(
    make_runtime: Callable[..., frankenpy.Runtime], code: str
) -> None:
    rt = make_runtime(num_threads=1, max_output_size=1 << 20, php_ini={"memory_limit": "32M"})
    result = rt.execute_code(code, timeout=30)
    assert result.exit_status == 255, result
    assert any("max_output_size" in e for e in result.errors), result.errors
    assert len(result.output) <= 1 << 20


def test_output_up_to_max_output_size_and_streamed_output_pass(
    make_runtime: Callable[..., frankenpy.Runtime],
) -> None:
    limit = 1 << 20
    rt = make_runtime(num_threads=1, max_output_size=limit)
    exact = rt.execute_code(f"echo str_repeat('z', {limit});")
    assert (exact.exit_status, len(exact.output), exact.errors) == (0, limit, [])
    chunks: list[bytes] = []  # streamed output is never collected: no limit applies
    streamed = rt.execute_code(f"echo str_repeat('z', {3 * limit});", output=chunks.append)
    assert streamed.exit_status == 0
    assert sum(map(len, chunks)) == 3 * limit
    unlimited = make_runtime(num_threads=1, max_output_size=None)
    big = unlimited.execute_code(f"echo str_repeat('z', {3 * limit});")
    assert (big.exit_status, len(big.output)) == (0, 3 * limit)


# Shrinks this process's address space so that the glue's buffer cannot grow, and gives it back
# as soon as PHP reports the error (Python then needs memory for the result).
OOM_CHILD = textwrap.dedent("""
    import json, logging, resource
    import frankenpy

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)

    class GiveMemoryBack(logging.Handler):
        def emit(self, record):
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))

    logging.getLogger("frankenpy.php").addHandler(GiveMemoryBack())
    rt = frankenpy.Runtime(1, max_output_size=None, php_ini={"memory_limit": "16M"})
    rt.start()
    assert rt.execute_code("echo 'warm';").output == b"warm"
    pages = int(open("/proc/self/statm").read().split()[0])
    resource.setrlimit(resource.RLIMIT_AS, (pages * resource.getpagesize() + (200 << 20), hard))
    result = rt.execute_code("$c = str_repeat('x', 1 << 20); for ($i = 0; $i < 1024; $i++) { echo $c; }")
    after = rt.execute_code("echo 'after';")
    print(json.dumps([result.exit_status, result.errors, len(result.output), after.output.decode()]))
    rt.shutdown()
""")


@pytest.mark.timeout(120)
def test_failed_output_allocation_is_a_fatal_error_not_silent_truncation() -> None:
    """The glue's collected output cannot grow (address space exhausted): the script ends with
    a fatal error (it used to end "successfully" with its output silently cut short)."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    proc = subprocess.run(
        [sys.executable, "-c", OOM_CHILD], env=env, capture_output=True, text=True, timeout=110
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    exit_status, errors, output_len, after = json.loads(proc.stdout.strip().splitlines()[-1])
    assert exit_status == 255, (errors, output_len)
    assert any("Out of memory collecting the output" in e for e in errors), errors
    assert 0 < output_len < 1 << 30
    assert after == "after"


def test_a_failing_output_callable_stops_the_script_and_raises(
    make_runtime: Callable[..., frankenpy.Runtime], tmp_path: Path
) -> None:
    """Output the host cannot take is never dropped silently: the script stops (as when an
    HTTP client leaves) and execute_code() raises the callable's exception."""
    rt = make_runtime(num_threads=1)
    record = tmp_path / "aborted.txt"
    seen: list[bytes] = []

    def reader(data: bytes) -> None:
        seen.append(data)
        if len(seen) == 2:
            raise OSError("reader broke")

    code = (
        f"register_shutdown_function(function () {{ file_put_contents('{record}', "
        "connection_aborted() ? 'aborted' : 'completed'); });"
        "for ($i = 0; $i < 1000; $i++) { echo $i, ' '; flush(); }"
    )
    with pytest.raises(OSError, match="reader broke"):
        rt.execute_code(code, output=reader)
    assert len(seen) == 2
    assert record.read_text() == "aborted"
    assert rt.execute_code("echo 'next';").output == b"next"
