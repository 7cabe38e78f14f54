#!/usr/bin/env python3
"""HTTP throughput of frankenpy against the usual ways of serving PHP, side by side in one run.

Servers (each bound to 127.0.0.1 only, each started by this script and stopped by it):

* ``frankenpy classic``: ``python3 -m frankenpy php-server --root DIR --listen 127.0.0.1:PORT
  --threads 2 --opcache`` (a subprocess);
* ``frankenpy worker``: the same with ``--worker DIR/worker.php:N``; ``worker.php`` loops on
  ``frankenphp_handle_request()`` and produces the same pages (``/worker.php`` is routed to the
  worker, ``?page=json`` selects the JSON page);
* ``nginx + php-fpm``: Debian's nginx (``worker_processes 2``) and php8.2-fpm (``pm = static``,
  4 children, opcache on), both in the foreground with configuration files, pid file, socket and
  logs in a temporary directory (system services are not touched);
* ``php -S``: ``php8.2 -S 127.0.0.1:PORT -t DIR`` (the built-in server, stock CLI ini).

Pages: ``hello`` (``<?php echo "Hello, World!";``) and ``json`` (``json_encode`` of 1,000 rows of
5 fields, plus a ``Content-Type`` header and a cookie).  Every server is first checked to return
the expected body, headers and opcache state; then each (page, server) pair gets a short warm-up
and ``wrk -t2 -c32 -d10s --latency``, page by page with the servers interleaved so that the
machine's drift hits them alike.  All servers run during the whole measurement (idle ones cost
nothing measurable).

Reported: req/s, p50 and p99 latency, errors, whether the server keeps connections alive, and
the ratios worker/fpm (target >= 1.5) and classic/fpm (target >= 1.0) with MET/MISSED.

Usage::

    python3 scripts/bench_http.py [--quick] [--duration S] [--worker-threads N]
        [--append-docs docs/benchmarks.md]

``--quick`` measures 3 s per pair (about 1 minute in all); the default run takes about 2 minutes.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent
HELLO_BODY = b"Hello, World!"
COOKIE = "bench=json-page"
TARGETS = {"worker": 1.5, "classic": 1.0}

# --------------------------------------------------------------------------------------------
# The PHP pages
# --------------------------------------------------------------------------------------------

HELLO_PHP = '<?php echo "Hello, World!";\n'

JSON_FUNCTION = """\
function bench_json_page(): void
{
    $rows = [];
    for ($i = 0; $i < 1000; $i++) {
        $rows[] = [
            'id' => $i,
            'name' => "user $i",
            'email' => "user$i@example.com",
            'active' => $i % 3 === 0,
            'score' => $i / 4,
        ];
    }
    header('Content-Type: application/json');
    setcookie('bench', 'json-page');
    echo json_encode($rows);
}
"""

JSON_PHP = f"<?php\n{JSON_FUNCTION}\nbench_json_page();\n"

WORKER_PHP = f"""<?php
{JSON_FUNCTION}
$handler = static function (): void {{
    if (($_GET['page'] ?? '') === 'json') {{
        bench_json_page();
    }} else {{
        echo "Hello, World!";
    }}
}};
while (frankenphp_handle_request($handler)) {{
    gc_collect_cycles();
}}
"""

OPCACHE_PHP = """<?php
$s = function_exists('opcache_get_status') ? @opcache_get_status(false) : false;
echo is_array($s) && !empty($s['opcache_enabled']) ? 'on' : 'off';
"""


def expected_rows() -> list[dict[str, object]]:
    return [
        {"id": i, "name": f"user {i}", "email": f"user{i}@example.com", "active": i % 3 == 0,
         "score": i / 4}
        for i in range(1000)
    ]


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    name: str
    argv: list[str]
    log: Path
    env: dict[str, str] | None = None
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.popen = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=self.env, start_new_session=True, cwd=self.log.parent,
            )

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM to the process group, then SIGKILL to what is left of it."""
        if self.popen is None:
            return
        pgid = self.popen.pid  # start_new_session: the group id is the leader's pid
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            try:
                self.popen.wait(wait)
            except subprocess.TimeoutExpired:
                continue
            # the leader is gone; make sure no member of its group survives it
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            break
        if self.popen.poll() is None:
            self.popen.wait(5.0)


@dataclass
class Server:
    label: str
    key: str  # "classic", "worker", "fpm", "phpS"
    port: int
    paths: dict[str, str]  # page -> request target
    procs: list[Proc] = field(default_factory=list)
    error: str = ""
    keep_alive: dict[str, bool] = field(default_factory=dict)
    opcache: str = "?"

    def url(self, page: str) -> str:
        return f"http://{HOST}:{self.port}{self.paths[page]}"

    def tail(self, lines: int = 15) -> str:
        out = []
        for proc in self.procs:
            try:
                text = proc.log.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                continue
            out.append(f"--- {proc.log.name}\n" + "\n".join(text))
        return "\n".join(out)


def fetch(port: int, target: str, timeout: float = 5.0) -> tuple[int, dict[str, list[str]], bytes, bool]:
    """GET ``target``: status, headers (lower-case names), body, whether the connection stays open."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", target)
        resp = conn.getresponse()
        body = resp.read()
        headers: dict[str, list[str]] = {}
        for name, value in resp.getheaders():
            headers.setdefault(name.lower(), []).append(value)
        return resp.status, headers, body, not resp.will_close
    finally:
        conn.close()


def wait_ready(server: Server, deadline: float) -> None:
    last = ""
    while time.monotonic() < deadline:
        for proc in server.procs:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode if proc.popen else '?'}")
        try:
            status, _, _, _ = fetch(server.port, server.paths["hello"], timeout=2.0)
            if status == 200:
                return
            last = f"status {status}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise RuntimeError(f"not ready in time ({last})")


def verify(server: Server) -> None:
    """Check both pages (body, headers) and the opcache state; records keep-alive."""
    status, headers, body, keep = fetch(server.port, server.paths["hello"])
    if status != 200 or body != HELLO_BODY:
        raise RuntimeError(f"hello: status {status}, body {body[:80]!r}")
    server.keep_alive["hello"] = keep
    status, headers, body, keep = fetch(server.port, server.paths["json"])
    if status != 200:
        raise RuntimeError(f"json: status {status}, body {body[:200]!r}")
    try:
        rows = json.loads(body)
    except ValueError as exc:
        raise RuntimeError(f"json: body is not JSON ({exc}): {body[:200]!r}") from None
    if rows != expected_rows():
        raise RuntimeError(f"json: unexpected rows: {body[:200]!r}")
    ctype = headers.get("content-type", [""])[0]
    if not ctype.startswith("application/json"):
        raise RuntimeError(f"json: Content-Type {ctype!r}")
    if not any(c.startswith(COOKIE) for c in headers.get("set-cookie", [])):
        raise RuntimeError(f"json: no Set-Cookie {COOKIE!r}: {headers.get('set-cookie')}")
    server.keep_alive["json"] = keep
    status, _, body, _ = fetch(server.port, server.paths["opcache"])
    server.opcache = body.decode(errors="replace") if status == 200 else f"? ({status})"


# --------------------------------------------------------------------------------------------
# Server set-up
# --------------------------------------------------------------------------------------------


def write_docroot(root: Path) -> None:
    root.mkdir(parents=True)
    (root / "hello.php").write_text(HELLO_PHP)
    (root / "json.php").write_text(JSON_PHP)
    (root / "worker.php").write_text(WORKER_PHP)
    (root / "opcache.php").write_text(OPCACHE_PHP)
    root.chmod(0o755)


def frankenpy_server(key: str, tmp: Path, root: Path, worker_threads: int) -> Server:
    port = free_port()
    argv = [sys.executable, "-m", "frankenpy", "--grace", "3", "php-server", "--root", str(root),
            "--listen", f"{HOST}:{port}", "--threads", "2", "--opcache"]
    if key == "worker":
        argv += ["--worker", f"{root / 'worker.php'}:{worker_threads}"]
        paths = {"hello": "/worker.php", "json": "/worker.php?page=json"}
        label = f"frankenpy worker ({worker_threads} thr)"
    else:
        paths = {"hello": "/hello.php", "json": "/json.php"}
        label = "frankenpy classic"
    paths["opcache"] = "/opcache.php"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    proc = Proc(f"frankenpy-{key}", argv, tmp / f"frankenpy-{key}.log", env)
    return Server(label, key, port, paths, [proc])


def fpm_server(tmp: Path, root: Path, php_fpm: str, nginx: str) -> Server:
    port = free_port()
    d = tmp / "nginx-fpm"
    for sub in ("", "client_body", "fastcgi", "proxy", "uwsgi", "scgi"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    sock = d / "fpm.sock"
    (d / "php.ini").write_text(
        "zend_extension=opcache.so\n"
        "opcache.enable=1\nopcache.memory_consumption=32\nopcache.jit=off\n"
        "display_errors=stderr\nlog_errors=1\n"
    )
    root_user = os.geteuid() == 0
    (d / "php-fpm.conf").write_text(
        "[global]\n"
        f"pid = {d / 'php-fpm.pid'}\n"
        f"error_log = {d / 'php-fpm-error.log'}\n"
        "daemonize = no\n"
        "[bench]\n"
        f"listen = {sock}\n"
        "listen.mode = 0666\n"
        "pm = static\n"
        "pm.max_children = 4\n"
        "catch_workers_output = yes\n"
    )
    (d / "nginx.conf").write_text(
        ("user root;\n" if root_user else "")
        + "daemon off;\nmaster_process on;\nworker_processes 2;\n"
        f"pid {d / 'nginx.pid'};\n"
        f"error_log {d / 'nginx-error.log'} warn;\n"
        "events { worker_connections 1024; }\n"
        "http {\n"
        "  access_log off;\n"
        f"  client_body_temp_path {d / 'client_body'};\n"
        f"  fastcgi_temp_path {d / 'fastcgi'};\n"
        f"  proxy_temp_path {d / 'proxy'};\n"
        f"  uwsgi_temp_path {d / 'uwsgi'};\n"
        f"  scgi_temp_path {d / 'scgi'};\n"
        "  keepalive_requests 100000;\n"
        "  server {\n"
        f"    listen {HOST}:{port};\n"
        f"    root {root};\n"
        "    location ~ \\.php$ {\n"
        "      include /etc/nginx/fastcgi_params;\n"
        "      fastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name;\n"
        f"      fastcgi_pass unix:{sock};\n"
        "    }\n"
        "  }\n"
        "}\n"
    )
    fpm_env = dict(os.environ, PHP_INI_SCAN_DIR="")  # only our php.ini: no system conf.d
    fpm_argv = [php_fpm, "-F", "-y", str(d / "php-fpm.conf"), "-c", str(d / "php.ini")]
    if root_user:
        fpm_argv.append("-R")
    nginx_argv = [nginx, "-p", str(d), "-c", str(d / "nginx.conf"), "-e", str(d / "nginx-error.log")]
    paths = {"hello": "/hello.php", "json": "/json.php", "opcache": "/opcache.php"}
    return Server("nginx + php-fpm (4 static)", "fpm", port, paths, [
        Proc("php-fpm", fpm_argv, d / "php-fpm.out", fpm_env),
        Proc("nginx", nginx_argv, d / "nginx.out"),
    ])


def php_s_server(tmp: Path, root: Path, php: str) -> Server:
    port = free_port()
    paths = {"hello": "/hello.php", "json": "/json.php", "opcache": "/opcache.php"}
    argv = [php, "-S", f"{HOST}:{port}", "-t", str(root)]
    return Server("php -S", "phpS", port, paths, [Proc("php-S", argv, tmp / "php-S.log")])


# --------------------------------------------------------------------------------------------
# wrk
# --------------------------------------------------------------------------------------------

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(value: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
    if not m:
        raise ValueError(f"latency {value!r}")
    return float(m.group(1)) * _UNITS_MS[m.group(2)]


@dataclass
class WrkResult:
    rps: float
    p50: float
    p99: float
    requests: int
    errors: str

    @staticmethod
    def parse(text: str) -> WrkResult:
        rps = re.search(r"Requests/sec:\s*([\d.]+)", text)
        p50 = re.search(r"^\s*50%\s+(\S+)", text, re.M)
        p99 = re.search(r"^\s*99%\s+(\S+)", text, re.M)
        total = re.search(r"(\d+) requests in", text)
        if not (rps and p50 and p99 and total):
            raise ValueError(f"cannot parse wrk output:\n{text}")
        errors = []
        sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
        if sock:
            errors += [f"{n} {k}" for k, n in zip(("connect", "read", "write", "timeout"), sock.groups(),
                                                    strict=True) if n != "0"]
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
        if non2xx:
            errors.append(f"{non2xx.group(1)} non-2xx")
        return WrkResult(float(rps.group(1)), _ms(p50.group(1)), _ms(p99.group(1)), int(total.group(1)),
                         ", ".join(errors) or "0")


def run_wrk(wrk: str, url: str, duration: float, threads: int, conns: int) -> WrkResult:
    argv = [wrk, f"-t{threads}", f"-c{conns}", f"-d{duration:g}s", "--latency", url]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30,
                          start_new_session=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited {proc.returncode}: {proc.stderr.strip()}")
    return WrkResult.parse(proc.stdout)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def need(name: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
    if path is None:
        raise FileNotFoundError(name)
    return path


def table(servers: list[Server], results: dict[tuple[str, str], WrkResult | str]) -> str:
    rows = ["| server | page | req/s | p50 ms | p99 ms | errors | keep-alive | opcache |",
            "|---|---|---:|---:|---:|---|---|---|"]
    for page in ("hello", "json"):
        for s in servers:
            r = results.get((s.key, page), s.error or "not run")
            ka = "?" if page not in s.keep_alive else ("yes" if s.keep_alive[page] else "no")
            if isinstance(r, WrkResult):
                rows.append(f"| {s.label} | {page} | {r.rps:,.0f} | {r.p50:.2f} | {r.p99:.2f} | {r.errors} "
                            f"| {ka} | {s.opcache} |")
            else:
                rows.append(f"| {s.label} | {page} | n/a | n/a | n/a | {r} | {ka} | {s.opcache} |")
    return "\n".join(rows)


def verdicts(results: dict[tuple[str, str], WrkResult | str]) -> tuple[list[str], bool]:
    lines, all_met = [], True
    for key, target in TARGETS.items():
        for page in ("hello", "json"):
            mine, base = results.get((key, page)), results.get(("fpm", page))
            if isinstance(mine, WrkResult) and isinstance(base, WrkResult) and base.rps > 0:
                ratio = mine.rps / base.rps
                met = ratio >= target
                lines.append(f"- {key} / nginx+fpm, {page}: {ratio:.2f}x (target >= {target}x): "
                             f"{'MET' if met else 'MISSED'}")
            else:
                met = False
                lines.append(f"- {key} / nginx+fpm, {page}: n/a (target >= {target}x): MISSED")
            all_met = all_met and met
    return lines, all_met


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 s per measurement (about 1 min in all)")
    parser.add_argument("--duration", type=float, help="seconds per wrk run (default 10, 3 with --quick)")
    parser.add_argument("--worker-threads", type=int, default=2, help="threads of the HTTP worker (2)")
    parser.add_argument("--servers", default="classic,worker,fpm,phpS",
                        help="comma-separated subset of classic,worker,fpm,phpS")
    parser.add_argument("--append-docs", metavar="FILE", help="append the results as a markdown section")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temporary directory (logs)")
    args = parser.parse_args(argv)
    duration = args.duration or (3.0 if args.quick else 10.0)
    warmup = 1.0 if args.quick else 2.0
    wanted = [s.strip() for s in args.servers.split(",") if s.strip()]

    wrk = need("wrk")
    tmp = Path(tempfile.mkdtemp(prefix="bench_http-"))
    tmp.chmod(0o755)
    root = tmp / "public"
    write_docroot(root)
    servers: list[Server] = []
    results: dict[tuple[str, str], WrkResult | str] = {}
    started_at = datetime.datetime.now().astimezone()
    load_before = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    t0 = time.monotonic()
    try:
        builders: dict[str, Callable[[], Server]] = {
            "classic": lambda: frankenpy_server("classic", tmp, root, args.worker_threads),
            "worker": lambda: frankenpy_server("worker", tmp, root, args.worker_threads),
            "fpm": lambda: fpm_server(tmp, root, need("php-fpm8.2"), need("nginx")),
            "phpS": lambda: php_s_server(tmp, root, need("php8.2")),
        }
        for key in wanted:
            try:
                servers.append(builders[key]())
            except FileNotFoundError as exc:
                print(f"{key}: {exc} not installed: skipped", file=sys.stderr)
            except KeyError:
                parser.error(f"unknown server {key!r}")
        for server in servers:
            for proc in server.procs:
                proc.start()
        deadline = time.monotonic() + 30.0
        for server in servers:
            try:
                wait_ready(server, deadline)
                verify(server)
                print(f"{server.label:28} :{server.port}  ok (keep-alive hello={server.keep_alive['hello']}, "
                      f"json={server.keep_alive['json']}, opcache {server.opcache})", flush=True)
            except (RuntimeError, OSError) as exc:
                server.error = f"failed: {exc}"
                print(f"{server.label:28} :{server.port}  {server.error}\n{server.tail()}", file=sys.stderr,
                      flush=True)
        for page in ("hello", "json"):
            for server in servers:
                if server.error:
                    continue
                try:
                    run_wrk(wrk, server.url(page), warmup, 2, 32)
                    result = run_wrk(wrk, server.url(page), duration, 2, 32)
                except (RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
                    results[(server.key, page)] = f"wrk failed: {exc}"
                    print(f"{server.label:28} {page:5} wrk failed: {exc}", file=sys.stderr, flush=True)
                    continue
                results[(server.key, page)] = result
                print(f"{server.label:28} {page:5} {result.rps:9,.0f} req/s  p50 {result.p50:7.2f} ms  "
                      f"p99 {result.p99:7.2f} ms  errors {result.errors}", flush=True)
                for proc in server.procs:
                    if not proc.alive():
                        server.error = f"{proc.name} died during the run"
    finally:
        for server in servers:
            for proc in reversed(server.procs):
                try:
                    proc.stop()
                except (OSError, subprocess.TimeoutExpired) as exc:
                    print(f"stopping {proc.name}: {exc}", file=sys.stderr)
        if args.keep_tmp:
            print(f"logs kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    elapsed = time.monotonic() - t0
    lines, all_met = verdicts(results)
    command = shlex.join(["python3", "scripts/bench_http.py", *(argv or sys.argv[1:])])
    text = "\n".join([
        "",
        table(servers, results),
        "",
        *lines,
        "",
        f"Overall: {'MET' if all_met else 'MISSED'}",
    ])
    print(text)
    print(f"\n(elapsed {elapsed:.0f} s)")
    if args.append_docs:
        doc = Path(args.append_docs)
        section = "\n".join([
            "",
            "## HTTP (scripts/bench_http.py)",
            "",
            f"Command: `{command}` (wrk -t2 -c32 -d{duration:g}s --latency after a {warmup:g} s warm-up, "
            "127.0.0.1, pages measured one after the other with the servers interleaved).",
            f"Date: {started_at:%Y-%m-%d %H:%M %Z}; machine: {os.cpu_count()} cores, "
            f"{platform_line()}; load average before the run {load_before}.",
            "",
            "Pages: `hello` is `<?php echo \"Hello, World!\";`; `json` json_encodes 1,000 rows of 5 fields, "
            "sets `Content-Type: application/json` and a cookie. frankenpy classic: `php-server --threads 2 "
            f"--opcache`; worker: the same plus `--worker worker.php:{args.worker_threads}` "
            "(`/worker.php`, `?page=json`); nginx 2 workers + php8.2-fpm pm=static 4 children, opcache on; "
            "`php8.2 -S` with the stock CLI ini. keep-alive: whether the server kept the connection "
            "open after the response (`php -S` closes every connection, which wrk counts as read errors).",
            text,
            "",
        ])
        with open(doc, "a", encoding="utf-8") as fh:
            if doc.stat().st_size == 0:
                fh.write("# Benchmarks\n")
            fh.write(section)
        print(f"appended to {doc}")
    return 0 if all_met else 1


def platform_line() -> str:
    import platform

    return f"Python {platform.python_version()}, {platform.system()} {platform.release()}"


if __name__ == "__main__":
    sys.exit(main())
