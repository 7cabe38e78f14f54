#!/usr/bin/env python3
"""Compare candidate WSGI servers for frankenpy's HTTP front end, in one run.

For every candidate the script starts a server child process (this same file
with ``--serve NAME``) bound to 127.0.0.1 only, then from the parent:

* checks whether the WSGI app runs in the process that was launched (``/pid``):
  frankenpy's PHP interpreters live in-process, so a server that runs the app
  in a forked/spawned worker process cannot host them;
* checks that a response iterator streams (``/stream`` yields a chunk, sleeps
  0.5 s, yields another: the first chunk must reach the client before the
  second is produced, as PHP ``flush()`` needs);
* checks 64 concurrent keep-alive connections, 3 requests each on the same socket;
* measures ``wrk -t2 -c32 -d5s --latency`` on ``/`` (hello world, ``time.sleep(0)``);
* checks graceful shutdown: a 1.5 s request is in flight when SIGTERM arrives;
  it must complete with 200 and the server must exit by itself.

Embedded servers (cheroot, waitress, uvicorn+a2wsgi) are started from Python
code in a thread and stopped by the main thread's SIGTERM/SIGINT handler: that
is the embedding pattern frankenpy would use.  gunicorn and granian are driven
through their public Python APIs, which (on a GIL build of CPython) always fork
or spawn worker processes.  ``granian-mt`` is granian's thread-based server
(meant for free-threaded CPython) forced onto the GIL build by overriding a
private check: unsupported, measured as a data point only.

Everything is bounded in time (about 15 s per server plus start-up) and every
child is killed (its own process group) if it does not exit by itself.

Usage::

    python3 scripts/bench_wsgi_servers.py [--python /tmp/httpbench/bin/python]
        [--servers cheroot,waitress,...] [--duration 5] [--threads 16]

The ``--python`` interpreter must have the candidates installed
(``pip install granian gunicorn waitress uvicorn a2wsgi cheroot httptools uvloop``);
a candidate that cannot be imported is reported as such.
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
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

HOST = "127.0.0.1"
SERVERS = (
    "cheroot", "waitress", "uvicorn+a2wsgi", "gunicorn-gthread", "granian", "granian-mt",
)
HELLO = b"Hello, world!"


# --------------------------------------------------------------------------
# The WSGI app under test (imported by name in the children).
# --------------------------------------------------------------------------


def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "/")
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])

        def gen() -> Iterable[bytes]:
            yield b"first\n"
            time.sleep(0.5)
            yield b"second\n"

        return gen()
    if path == "/slow":
        time.sleep(1.5)
        body = b"slow-done"
    elif path == "/pid":
        body = str(os.getpid()).encode()
    else:
        time.sleep(0)
        body = HELLO
    start_response(
        "200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
    )
    return [body]


# --------------------------------------------------------------------------
# Child side: run one server.
# --------------------------------------------------------------------------


def _run_embedded(start: Callable[[], None], stop: Callable[[], None]) -> None:
    """Serve in a thread; stop (draining) on SIGTERM/SIGINT from the main thread."""
    stop_requested = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop_requested.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    t = threading.Thread(target=start, name="http-server", daemon=True)
    t.start()
    while not stop_requested.wait(0.2):
        if not t.is_alive():
            sys.exit("server thread died")
    stop()
    t.join(15)
    sys.exit(0 if not t.is_alive() else 4)


def serve(name: str, port: int, threads: int) -> None:
    if name == "cheroot":
        from cheroot import wsgi

        server = wsgi.Server((HOST, port), app, numthreads=threads, shutdown_timeout=10)
        server.keep_alive_conn_limit = 1000  # default 10 idle keep-alive conns
        _run_embedded(server.safe_start, server.stop)

    elif name == "waitress":
        from waitress.server import create_server

        wserver = create_server(
            app, host=HOST, port=port, threads=threads, connection_limit=1000,
        )
        _run_embedded(wserver.run, wserver.close)

    elif name == "uvicorn+a2wsgi":
        import uvicorn
        from a2wsgi import WSGIMiddleware

        config = uvicorn.Config(
            WSGIMiddleware(app, workers=threads), host=HOST, port=port,
            log_level="warning", lifespan="off", timeout_graceful_shutdown=10,
        )
        userver = uvicorn.Server(config)

        def ustop() -> None:
            userver.should_exit = True

        _run_embedded(userver.run, ustop)

    elif name == "gunicorn-gthread":
        from gunicorn.app.base import BaseApplication

        class App(BaseApplication):
            def load_config(self) -> None:
                for k, v in {
                    "bind": f"{HOST}:{port}", "workers": 1, "worker_class": "gthread",
                    "threads": threads, "graceful_timeout": 10, "loglevel": "warning",
                }.items():
                    self.cfg.set(k, v)

            def load(self) -> Callable:
                return app

        App().run()  # forks a master + worker process; handles signals itself

    elif name == "granian":
        from granian.constants import Interfaces
        from granian.server import Server

        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        Server(
            "bench_wsgi_servers:app", address=HOST, port=port,
            interface=Interfaces.WSGI, workers=1, blocking_threads=threads,
            log_enabled=False,
        ).serve()  # GIL build: multiprocess server (spawns the worker)

    elif name == "granian-mt":
        # granian's thread-based server (workers are threads of this process) is
        # meant for free-threaded CPython; on a GIL build it refuses to start in
        # _check_gil().  Overriding that private check runs it in-process.
        # Unsupported by granian: measured here only as a data point.
        from granian.constants import Interfaces
        from granian.server.mt import MTServer

        class InProcess(MTServer):
            def _check_gil(self) -> None:
                pass

        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        InProcess(
            "bench_wsgi_servers:app", address=HOST, port=port,
            interface=Interfaces.WSGI, workers=1, blocking_threads=threads,
            log_enabled=False,
        ).serve()  # main thread only: installs its own SIGINT/SIGTERM handlers
    else:
        sys.exit(f"unknown server {name}")


# --------------------------------------------------------------------------
# Parent side: checks and measurement.
# --------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    error: str = ""
    in_process: str = "-"
    streams: str = "-"
    keepalive: str = "-"
    rps: float = 0.0
    p50: str = "-"
    p99: str = "-"
    wrk_errors: str = "-"
    drain: str = "-"
    notes: list[str] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def get(port: int, path: str, timeout: float = 10) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def check_stream(port: int) -> str:
    """Return e.g. 'yes 0.01s/0.51s' (first/second chunk arrival) or 'NO ...'."""
    with socket.create_connection((HOST, port), timeout=5) as s:
        t0 = time.monotonic()
        s.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        buf = b""
        t_first = t_second = None
        deadline = t0 + 5
        while time.monotonic() < deadline and t_second is None:
            data = s.recv(65536)
            if not data:
                break
            buf += data
            now = time.monotonic() - t0
            if t_first is None and b"first" in buf:
                t_first = now
            if b"second" in buf:
                t_second = now
    if t_first is None or t_second is None:
        return "NO (incomplete)"
    ok = t_second - t_first > 0.3
    return f"{'yes' if ok else 'NO'} {t_first:.2f}s/{t_second:.2f}s"


def check_keepalive(port: int, conns: int = 64, reqs: int = 3) -> str:
    ok = 0
    reused = 0
    lock = threading.Lock()
    barrier = threading.Barrier(conns, timeout=10)

    def worker() -> None:
        nonlocal ok, reused
        c = http.client.HTTPConnection(HOST, port, timeout=10)
        try:
            c.connect()
            barrier.wait()
            first_sock = c.sock
            n_ok = 0
            same = True
            for _ in range(reqs):
                c.request("GET", "/")
                r = c.getresponse()
                if r.status == 200 and r.read() == HELLO:
                    n_ok += 1
                if c.sock is not first_sock:
                    same = False
            with lock:
                ok += n_ok
                reused += same
        except Exception:
            pass
        finally:
            c.close()

    ts = [threading.Thread(target=worker) for _ in range(conns)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(20)
    return f"{ok}/{conns * reqs} ok, {reused}/{conns} reused"


_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> str:
    m = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    return f"{float(m.group(1)) * _UNIT[m.group(2)]:.2f}" if m else text


def run_wrk(port: int, duration: int, res: Result) -> None:
    out = subprocess.run(
        ["wrk", "-t2", "-c32", f"-d{duration}s", "--latency", f"http://{HOST}:{port}/"],
        capture_output=True, text=True, timeout=duration + 30,
    ).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    res.rps = float(m.group(1)) if m else 0.0
    for pct, attr in (("50", "p50"), ("99", "p99")):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        if m:
            setattr(res, attr, _ms(m.group(1)))
    errs = []
    m = re.search(r"Socket errors: (.*)", out)
    if m:
        errs.append(m.group(1).strip())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errs.append(f"non-2xx {m.group(1)}")
    res.wrk_errors = "; ".join(errs) or "0"


def check_drain(port: int, proc: subprocess.Popen) -> str:
    result: dict[str, object] = {}

    def slow() -> None:
        try:
            result["resp"] = get(port, "/slow", timeout=10)
        except Exception as e:
            result["resp"] = repr(e)

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.4)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    t.join(12)
    try:
        proc.wait(15)
        exited = f"exit {proc.returncode} in {time.monotonic() - t0:.1f}s"
    except subprocess.TimeoutExpired:
        exited = "did NOT exit in 15s"
    inflight = "in-flight ok" if result.get("resp") == (200, b"slow-done") else (
        f"in-flight LOST {str(result.get('resp'))[:40]}"
    )
    return f"{inflight}, {exited}"


def bench(name: str, python: str, duration: int, threads: int) -> Result:
    res = Result(name)
    port = free_port()
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [python, os.path.abspath(__file__), "--serve", name, "--port", str(port),
         "--threads", str(threads)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        cwd=os.path.dirname(os.path.abspath(__file__)),
    )
    try:
        if not wait_port(port, proc, 30):
            log.seek(0)
            tail = log.read().decode(errors="replace").strip().splitlines()[-1:]
            res.error = f"did not start: {' '.join(tail)[:100]}"
            return res
        status, body = get(port, "/pid")
        res.in_process = "yes" if status == 200 and int(body) == proc.pid else (
            f"NO (app pid {body.decode()} != {proc.pid})"
        )
        res.streams = check_stream(port)
        res.keepalive = check_keepalive(port)
        run_wrk(port, duration, res)
        res.drain = check_drain(port, proc)
    except Exception as e:
        res.error = f"{type(e).__name__}: {e}"[:120]
    finally:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(5)
        else:
            # A server that forked workers may leave them behind; reap the group.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        log.close()
    return res


def print_table(results: list[Result]) -> None:
    cols = [
        ("server", "name"), ("req/s", "rps"), ("p50 ms", "p50"), ("p99 ms", "p99"),
        ("wrk errors", "wrk_errors"), ("app in-proc", "in_process"),
        ("streams (1st/2nd)", "streams"), ("64 keep-alive conns", "keepalive"),
        ("SIGTERM drain", "drain"),
    ]
    rows = []
    for r in results:
        if r.error:
            rows.append([r.name, "ERROR: " + r.error] + [""] * (len(cols) - 2))
            continue
        rows.append([r.name] + [
            f"{r.rps:.0f}" if a == "rps" else str(getattr(r, a)) for _, a in cols[1:]
        ])
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, (h, _) in enumerate(cols)]
    print(" | ".join(h.ljust(w) for (h, _), w in zip(cols, widths, strict=True)))
    print("-+-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--python", default=sys.executable,
                    help="interpreter with the candidate servers installed")
    ap.add_argument("--servers", default=",".join(SERVERS))
    ap.add_argument("--duration", type=int, default=5, help="wrk seconds per server")
    ap.add_argument("--threads", type=int, default=16, help="app threads per server")
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.threads)
        return
    if not shutil.which("wrk"):
        sys.exit("wrk not found (apt-get install wrk)")
    results = []
    for name in args.servers.split(","):
        print(f"... {name}", file=sys.stderr, flush=True)
        results.append(bench(name, args.python, args.duration, args.threads))
    print(f"\nwrk -t2 -c32 -d{args.duration}s, {args.threads} app threads, "
          f"{os.cpu_count()} CPUs, python {args.python}\n")
    print_table(results)


if __name__ == "__main__":
    main()
