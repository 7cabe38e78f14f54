#!/usr/bin/env python3
"""Compare the C HTTP/1.1 libraries Debian 12 packages for frankenpy's native request path.

Issue 8 asks for the library to be chosen by measurement, as ``bench_wsgi_servers.py`` chose
waitress.  This builds the smallest hello-world server each library allows
(``csrc/bench/http_libs/*.c``) and drives them side by side with ``wrk`` on 127.0.0.1:

* ``h2o``: libh2o-evloop (MIT), one event loop per thread, each on its own ``SO_REUSEPORT``
  socket: the run-to-completion model a PHP thread would use;
* ``evhttp``: libevent's evhttp (BSD), the same model;
* ``microhttpd``: libmicrohttpd (LGPL), its own internal thread pool.

Each server is checked first (200, the body, two requests on one keep-alive connection), then
measured in interleaved rounds so that drift on the machine hits every library alike.  The
numbers are the libraries' own per-request floor; PHP and the hand-off come on top.

Usage::

    python3 scripts/bench_http_libs.py [--duration 5] [--rounds 2] [--threads 1,2] [--conns 32,512]

Needs ``bash scripts/install_deps.sh --bench`` (wrk, the three ``-dev`` packages, pkg-config).
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SOURCES = Path(__file__).resolve().parent.parent / "csrc" / "bench" / "http_libs"
LIBRARIES = {
    # name: (source, pkg-config package, extra compiler flags)
    "h2o": ("h2o_hello.c", "libh2o-evloop", ["-DH2O_USE_LIBUV=0", "-lpthread"]),
    "evhttp": ("evhttp_hello.c", "libevent", ["-lpthread"]),
    "microhttpd": ("microhttpd_hello.c", "libmicrohttpd", []),
}
BODY = b"Hello, World!"


def build(name: str, out: Path) -> Path:
    source, package, flags = LIBRARIES[name]
    pkg = subprocess.run(["pkg-config", "--cflags", "--libs", package], capture_output=True, text=True)
    if pkg.returncode != 0:
        raise SystemExit(f"{name}: pkg-config {package} failed: {pkg.stderr.strip()}; "
                         "install it with bash scripts/install_deps.sh --bench")
    binary = out / name
    subprocess.run(
        ["cc", "-O2", "-Wall", "-Wextra", "-o", str(binary), str(SOURCES / source),
         *pkg.stdout.split(), *flags],
        check=True,
    )
    return binary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check(port: int) -> None:
    """200 with the body, twice on one connection (keep-alive works)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    for _ in range(2):
        conn.request("GET", "/")
        response = conn.getresponse()
        body = response.read()
        if response.status != 200 or body != BODY:
            raise RuntimeError(f"unexpected response {response.status} {body!r}")
        if (response.getheader("Connection") or "").lower() == "close":
            raise RuntimeError("the server closed a keep-alive connection")
    conn.close()


def start(binary: Path, threads: int) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen([str(binary), str(port), str(threads)], start_new_session=True)
    deadline = time.monotonic() + 5
    while True:
        try:
            check(port)
            return proc, port
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError(f"{binary.name} did not come up on 127.0.0.1:{port}") from None
            time.sleep(0.05)


def wrk(port: int, duration: float, conns: int) -> tuple[float, float, int]:
    """(requests/s, p99 latency in ms, errors)."""
    out = subprocess.run(
        ["wrk", "-t2", f"-c{conns}", f"-d{duration:g}s", "--latency", f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99_value, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    p99 = float(p99_value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    return rps, p99, errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (the best counts)")
    parser.add_argument("--threads", default="1,2", help="server threads to try, comma-separated")
    parser.add_argument("--conns", default="32,512", help="wrk connections to try, comma-separated")
    parser.add_argument("--libraries", default=",".join(LIBRARIES))
    args = parser.parse_args(argv)
    for tool in ("wrk", "cc", "pkg-config"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: bash scripts/install_deps.sh --bench")
    names = args.libraries.split(",")
    threads = [int(t) for t in args.threads.split(",")]
    conns = [int(c) for c in args.conns.split(",")]
    best: dict[tuple[str, int, int], tuple[float, float, int]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-http-libs-") as tmp:
        binaries = {name: build(name, Path(tmp)) for name in names}
        for _ in range(args.rounds):
            for n_threads in threads:
                for name in names:
                    proc, port = start(binaries[name], n_threads)
                    try:
                        for c in conns:
                            result = wrk(port, args.duration, c)
                            key = (name, n_threads, c)
                            if key not in best or result[0] > best[key][0]:
                                best[key] = result
                    finally:
                        os.killpg(proc.pid, 9)
                        proc.wait()
    print(f"wrk -t2 -d{args.duration:g}s --latency, hello world, best of {args.rounds} interleaved rounds; "
          f"{os.cpu_count()} cores shared with wrk")
    columns = ("threads", "conns", "req/s", "p99 ms", "errors", "vs best")
    print(f"{'library':12}" + "".join(f" {c:>8}" for c in columns))
    for n_threads in threads:
        for c in conns:
            top = max(best[(name, n_threads, c)][0] for name in names)
            for name in names:
                rps, p99, errors = best[(name, n_threads, c)]
                print(f"{name:12} {n_threads:>8} {c:>8} {rps:>8,.0f} {p99:>8.2f} {errors:>8} "
                      f"{rps / top:>7.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
