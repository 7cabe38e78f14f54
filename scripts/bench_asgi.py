#!/usr/bin/env python3
"""The ASGI app beside the WSGI one, side by side in one run: hello.php served by
``frankenpy.asgi.PHPApp`` under uvicorn, and by the WSGI ``frankenpy.http.app.PHPApp`` under
waitress, each in a child process (this file with ``--serve``) on 127.0.0.1, the same runtime
(``--php-threads`` regular PHP threads, opcache off), measured with
``wrk -t2 -c<connections> -d<duration>s``.  Prints req/s, p50/p99 latency, and the threads the
server process had at the end of the run (the ASGI app's C workers are among them).

Usage::

    python3 scripts/bench_asgi.py [--duration 5] [--connections 32] [--php-threads 2] [--rounds 2]
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HOST = "127.0.0.1"
HELLO = "<?php echo 'Hello, world!';\n"
SERVERS = ("asgi-uvicorn", "wsgi-waitress")


def serve(name: str, root: str, port: int, php_threads: int) -> None:
    import frankenpy

    rt = frankenpy.Runtime(num_threads=php_threads).start()
    if name == "asgi-uvicorn":
        import uvicorn

        from frankenpy.asgi import PHPApp as ASGIApp

        uvicorn.run(ASGIApp(rt, root), host=HOST, port=port, log_level="warning", lifespan="off",
                    access_log=False)
    else:
        import logging

        import waitress

        logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # "Task queue depth" under wrk

        from frankenpy.http.app import PHPApp as WSGIApp

        # waitress's threads each wait for a PHP thread; more than PHP threads keep them busy.
        waitress.serve(WSGIApp(rt, root), host=HOST, port=port, threads=max(4, 2 * php_threads),
                       _quiet=True)
    rt.shutdown(5.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=5)
            conn.request("GET", "/hello.php")
            body = conn.getresponse().read()
            conn.close()
            if body == b"Hello, world!":
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("server did not answer")


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def measure(name: str, root: str, args: argparse.Namespace) -> dict[str, float]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", name, "--root", root, "--port", str(port),
                             "--php-threads", str(args.php_threads)], start_new_session=True)
    try:
        wait_ready(port, proc)
        out = subprocess.run(["wrk", "-t2", f"-c{args.connections}", f"-d{args.duration}s", "--latency",
                              f"http://{HOST}:{port}/hello.php"],
                             capture_output=True, text=True, check=True).stdout
        threads = len(os.listdir(f"/proc/{proc.pid}/task"))
        latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
        errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
                "p50": _ms(latency["50"]), "p99": _ms(latency["99"]), "threads": threads,
                "errors": float(errors.group(1)) if errors else 0.0}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--php-threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2, help="alternate the servers this many times")
    ap.add_argument("--serve", choices=SERVERS, help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve(args.serve, args.root, args.port, args.php_threads)
    if not shutil.which("wrk"):
        sys.exit("wrk not found (apt-get install wrk)")
    with tempfile.TemporaryDirectory() as root:
        with open(os.path.join(root, "hello.php"), "w") as f:
            f.write(HELLO)
        results: dict[str, list[dict[str, float]]] = {name: [] for name in SERVERS}
        for _ in range(args.rounds):
            for name in SERVERS:
                results[name].append(measure(name, root, args))
    print(f"hello.php, wrk -t2 -c{args.connections} -d{args.duration}s, {args.php_threads} PHP threads, "
          f"best of {args.rounds}; load: {os.getloadavg()[0]:.2f}")
    print(f"{'server':16} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'threads':>8} {'non-2xx':>8}")
    best = {name: max(runs, key=lambda r: r["rps"]) for name, runs in results.items()}
    for name, r in best.items():
        print(f"{name:16} {r['rps']:9.0f} {r['p50']:8.2f} {r['p99']:8.2f} {r['threads']:8.0f} "
              f"{r['errors']:8.0f}")
    print(f"ASGI / WSGI: {best['asgi-uvicorn']['rps'] / best['wsgi-waitress']['rps']:.2f}x")


if __name__ == "__main__":
    main()
