#!/usr/bin/env python3
"""HTTP throughput of frankenpy against the usual ways of serving PHP, side by side in one run.

Servers (each bound to 127.0.0.1 only, each started by this script and stopped by it):

* ``frankenpy classic``: ``python3 -m frankenpy php-server --root DIR --listen 127.0.0.1:PORT
  --threads 2 --opcache`` (a subprocess; the native server, h2o in C);
* ``frankenpy worker``: the same with ``--worker DIR/worker.php:N``; ``worker.php`` loops on
  ``frankenphp_handle_request()`` and produces the same pages (``/worker.php`` is routed to the
  worker, ``?page=json`` selects the JSON page);
* ``classic-wsgi``, ``worker-wsgi``: the same two with ``--server wsgi`` (waitress + PHPApp);
* ``classic-pt``, ``worker-pt``: the native two with ``--io-model per-thread`` (run-to-completion:
  each of the 2 PHP threads runs an h2o loop on its own ``SO_REUSEPORT`` socket and runs the
  classic requests it parsed; worker requests are still handed to the worker's threads);
* ``classic-tls``, ``worker-tls`` (not in the default set): the native two over HTTPS/1.1
  (``--tls-cert``/``--tls-key``, a self-signed certificate made with ``openssl``; wrk's TLS, keep-alive
  connections, so the handshakes are not what is measured);
* ``apache prefork + mod_php``: Debian's apache2 with libapache2-mod-php8.2, a private
  configuration (prefork, 40 processes, keep-alive, opcache on) in a temporary directory;
* ``nginx + php-fpm``: Debian's nginx (``worker_processes 2``) and php8.2-fpm (``pm = static``,
  4 children, opcache on), both in the foreground with configuration files, pid file, socket and
  logs in a temporary directory (system services are not touched);
* ``php -S``: ``php8.2 -S 127.0.0.1:PORT -t DIR`` (the built-in server, stock CLI ini).

Pages: ``hello`` (``<?php echo "Hello, World!";``), ``json`` (``json_encode`` of 1,000 rows of
5 fields, plus a ``Content-Type`` header and a cookie), ``static`` (a 10 kB text file; frankenpy
native and nginx only) and ``mixed`` (classic servers only: hello.php, with every
SLOW_EVERY-th request of each wrk thread going to ``slow.php``, which sleeps SLOW_MS: the fast
requests' p90/p99 show head-of-line blocking behind the slow ones).
Then 512 keep-alive connections for 10 s on the native worker's hello
page (``wrk -c512``), with the server's resident memory sampled every second.  Every server is
first checked to return the expected body, headers and opcache state; then each (page, server)
pair gets a short warm-up and ``wrk -t2 -c32 -d10s --latency``, page by page with the servers
interleaved so that the machine's drift hits them alike.  All servers run during the whole
measurement (idle ones cost nothing measurable).

Reported: req/s, p50 and p99 latency, errors, whether the server keeps connections alive, and
every target of issue 8 with MET/MISSED (see ``verdicts``).

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
import ssl
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
STATIC_BODY = b"".join(b"%05d static line of ten kB file......................................\n" % i
                       for i in range(142))[:10240]
PAGES = ("hello", "json", "static", "mixed")
SLOW_EVERY, SLOW_MS = 20, 20  # the mixed page: 1 request in 20 sleeps 20 ms
MIXED_LUA = f"""\
local n = 0
request = function()
  n = n + 1
  if n % {SLOW_EVERY} == 0 then return wrk.format("GET", "/slow.php") end
  return wrk.format("GET", "/hello.php")
end
"""
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
    tls: ssl.SSLContext | None = None  # HTTPS (the self-signed certificate trusted)

    def url(self, page: str) -> str:
        return f"{'https' if self.tls else 'http'}://{HOST}:{self.port}{self.paths[page]}"

    def tail(self, lines: int = 15) -> str:
        out = []
        for proc in self.procs:
            try:
                text = proc.log.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                continue
            out.append(f"--- {proc.log.name}\n" + "\n".join(text))
        return "\n".join(out)


def fetch(server: Server, target: str, timeout: float = 5.0) -> tuple[int, dict[str, list[str]], bytes, bool]:
    """GET ``target``: status, headers (lower-case names), body, whether the connection stays open."""
    conn = (http.client.HTTPSConnection(HOST, server.port, timeout=timeout, context=server.tls) if server.tls
            else http.client.HTTPConnection(HOST, server.port, timeout=timeout))
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
            status, _, _, _ = fetch(server, server.paths["hello"], timeout=2.0)
            if status == 200:
                return
            last = f"status {status}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise RuntimeError(f"not ready in time ({last})")


def verify(server: Server) -> None:
    """Check both pages (body, headers) and the opcache state; records keep-alive."""
    status, headers, body, keep = fetch(server, server.paths["hello"])
    if status != 200 or body != HELLO_BODY:
        raise RuntimeError(f"hello: status {status}, body {body[:80]!r}")
    server.keep_alive["hello"] = keep
    status, headers, body, keep = fetch(server, server.paths["json"])
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
    if "static" in server.paths:
        status, headers, body, keep = fetch(server, server.paths["static"])
        if status != 200 or body != STATIC_BODY:
            raise RuntimeError(f"static: status {status}, {len(body)} bytes")
        server.keep_alive["static"] = keep
    status, _, body, _ = fetch(server, server.paths["opcache"])
    server.opcache = body.decode(errors="replace") if status == 200 else f"? ({status})"


# --------------------------------------------------------------------------------------------
# Server set-up
# --------------------------------------------------------------------------------------------


def write_docroot(root: Path) -> None:
    root.mkdir(parents=True)
    (root / "hello.php").write_text(HELLO_PHP)
    (root / "slow.php").write_text(f"<?php usleep({SLOW_MS * 1000}); echo 'slow';\n")
    (root / "json.php").write_text(JSON_PHP)
    (root / "worker.php").write_text(WORKER_PHP)
    (root / "opcache.php").write_text(OPCACHE_PHP)
    (root / "10k.txt").write_bytes(STATIC_BODY)
    root.chmod(0o755)


def self_signed(tmp: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (made once, with the openssl command)."""
    cert, key = tmp / "tls.crt", tmp / "tls.key"
    if not cert.exists():
        subprocess.run([need("openssl"), "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key), "-out", str(cert),
                        "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"],
                       check=True, capture_output=True)
    return cert, key


def frankenpy_server(key: str, tmp: Path, root: Path, worker_threads: int) -> Server:
    port = free_port()
    mode, _, kind = key.partition("-")  # "classic", "worker", "classic-wsgi", "worker-pt", "classic-tls", ...
    tls = kind == "tls"
    argv = [sys.executable, "-m", "frankenpy", "--grace", "3", "php-server",
            "--server", "wsgi" if kind == "wsgi" else "native",
            "--root", str(root), "--listen", f"{HOST}:{port}", "--threads", "2", "--opcache"]
    if kind == "pt":
        argv += ["--io-model", "per-thread"]
    suffix = {"wsgi": " (wsgi)", "pt": " (per-thread)", "tls": " (https)"}.get(kind, "")
    context = None
    if tls:
        cert, private_key = self_signed(tmp)
        argv += ["--tls-cert", str(cert), "--tls-key", str(private_key)]
        context = ssl.create_default_context(cafile=str(cert))
    if mode == "worker":
        argv += ["--worker", f"{root / 'worker.php'}:{worker_threads}"]
        paths = {"hello": "/worker.php", "json": "/worker.php?page=json"}
        label = f"frankenpy worker ({worker_threads} thr){suffix}"
    else:
        paths = {"hello": "/hello.php", "json": "/json.php", "mixed": "/hello.php"}
        label = f"frankenpy classic{suffix}"
        if kind != "wsgi":
            paths["static"] = "/10k.txt"
    paths["opcache"] = "/opcache.php"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    proc = Proc(f"frankenpy-{key}", argv, tmp / f"frankenpy-{key}.log", env)
    return Server(label, key, port, paths, [proc], tls=context)


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
    paths = {"hello": "/hello.php", "json": "/json.php", "opcache": "/opcache.php", "static": "/10k.txt",
             "mixed": "/hello.php"}
    return Server("nginx + php-fpm (4 static)", "fpm", port, paths, [
        Proc("php-fpm", fpm_argv, d / "php-fpm.out", fpm_env),
        Proc("nginx", nginx_argv, d / "nginx.out"),
    ])


APACHE_MODULES = "/usr/lib/apache2/modules"


def apache_server(tmp: Path, root: Path, apache: str) -> Server:
    """Debian's apache2, prefork with 40 processes and mod_php, configured from scratch in a
    temporary directory (the system's /etc/apache2 is not read, no service is touched)."""
    if not os.path.exists(f"{APACHE_MODULES}/libphp8.2.so"):
        raise FileNotFoundError("libapache2-mod-php8.2")
    port = free_port()
    d = tmp / "apache"
    d.mkdir()
    (d / "php.ini").write_text(
        "zend_extension=opcache.so\nopcache.enable=1\nopcache.memory_consumption=32\nopcache.jit=off\n"
        "display_errors=stderr\nlog_errors=1\n"
    )
    modules = ["mpm_prefork", "authz_core", "mime", "dir"]
    user = "User www-data\nGroup www-data\n" if os.geteuid() == 0 else ""
    (d / "apache2.conf").write_text(
        f"ServerRoot {d}\nServerName 127.0.0.1\nListen {HOST}:{port}\nPidFile {d / 'apache.pid'}\n"
        f"ErrorLog {d / 'error.log'}\nLogLevel warn\n{user}"
        + "".join(f"LoadModule {m}_module {APACHE_MODULES}/mod_{m}.so\n" for m in modules)
        + f"LoadModule php_module {APACHE_MODULES}/libphp8.2.so\n"
        "StartServers 40\nMinSpareServers 40\nMaxSpareServers 40\nServerLimit 40\nMaxRequestWorkers 40\n"
        "MaxConnectionsPerChild 0\nKeepAlive On\nMaxKeepAliveRequests 0\nKeepAliveTimeout 5\n"
        "TypesConfig /etc/mime.types\n"
        f"PHPIniDir {d}\n"
        f"DocumentRoot {root}\n"
        f"<Directory {root}>\n  Require all granted\n</Directory>\n"
        "<FilesMatch \\.php$>\n  SetHandler application/x-httpd-php\n</FilesMatch>\n"
    )
    env = dict(os.environ, PHP_INI_SCAN_DIR="", APACHE_RUN_DIR=str(d), APACHE_LOCK_DIR=str(d))
    argv = [apache, "-f", str(d / "apache2.conf"), "-DFOREGROUND"]
    paths = {"hello": "/hello.php", "json": "/json.php", "opcache": "/opcache.php", "mixed": "/hello.php"}
    return Server("apache prefork + mod_php (40)", "apache", port, paths,
                  [Proc("apache2", argv, d / "apache.out", env)])


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
    p90: float = 0.0

    @staticmethod
    def parse(text: str) -> WrkResult:
        rps = re.search(r"Requests/sec:\s*([\d.]+)", text)
        p50 = re.search(r"^\s*50%\s+(\S+)", text, re.M)
        p99 = re.search(r"^\s*99%\s+(\S+)", text, re.M)
        p90 = re.search(r"^\s*90%\s+(\S+)", text, re.M)
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
                         ", ".join(errors) or "0", _ms(p90.group(1)) if p90 else 0.0)


def run_wrk(wrk: str, url: str, duration: float, threads: int, conns: int,
            script: Path | None = None) -> WrkResult:
    argv = [wrk, f"-t{threads}", f"-c{conns}", f"-d{duration:g}s", "--latency", url]
    if script is not None:
        argv[1:1] = ["-s", str(script)]
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
    rows = ["| server | page | req/s | p50 ms | p90 ms | p99 ms | errors | keep-alive | opcache |",
            "|---|---|---:|---:|---:|---:|---|---|---|"]
    for page in PAGES:
        for s in servers:
            if page not in s.paths:
                continue
            r = results.get((s.key, page), s.error or "not run")
            ka = "?" if page not in s.keep_alive else ("yes" if s.keep_alive[page] else "no")
            if isinstance(r, WrkResult):
                rows.append(f"| {s.label} | {page} | {r.rps:,.0f} | {r.p50:.2f} | {r.p90:.2f} | {r.p99:.2f} "
                            f"| {r.errors} | {ka} | {s.opcache} |")
            else:
                rows.append(f"| {s.label} | {page} | n/a | n/a | n/a | n/a | {r} | {ka} | {s.opcache} |")
    return "\n".join(rows)


def io_models(results: dict[tuple[str, str], WrkResult | str]) -> str:
    """The native server's two I/O models side by side: hand-off (loop threads -> PHP threads)
    against per-thread (run-to-completion), same run."""
    rows = ["| mode | page | hand-off req/s | per-thread req/s | ratio | hand-off p90/p99 ms "
            "| per-thread p90/p99 ms |", "|---|---|---:|---:|---:|---:|---:|"]
    for mode in ("classic", "worker"):
        for page in PAGES:
            a, b = results.get((mode, page)), results.get((f"{mode}-pt", page))
            if not isinstance(a, WrkResult) or not isinstance(b, WrkResult):
                continue
            rows.append(f"| {mode} | {page} | {a.rps:,.0f} | {b.rps:,.0f} | {b.rps / a.rps:.2f}x "
                        f"| {a.p90:.2f} / {a.p99:.2f} | {b.p90:.2f} / {b.p99:.2f} |")
    return "\n".join(rows) if len(rows) > 2 else ""


@dataclass
class ManyConnections:
    """512 keep-alive connections for a while: wrk's result and the server's RSS samples (MB)."""

    result: WrkResult | str
    rss: list[float]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def many_connections(wrk: str, server: Server, duration: float) -> ManyConnections:
    """wrk -c512 on the hello page while sampling the server process's RSS every second."""
    import threading

    pid = server.procs[0].popen.pid if server.procs[0].popen else 0
    samples: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(1.0):
            try:
                samples.append(rss_mb(pid))
            except OSError:
                return

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result: WrkResult | str = run_wrk(wrk, server.url("hello"), duration, 2, 512)
    except (RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
        result = f"wrk failed: {exc}"
    done.set()
    sampler.join()
    return ManyConnections(result, samples)


def verdicts(results: dict[tuple[str, str], WrkResult | str],
             many: ManyConnections | None) -> tuple[list[str], bool]:
    """Every target of issue 8, MET or MISSED (n/a counts as missed)."""

    def get(key: str, page: str) -> WrkResult | None:
        r = results.get((key, page))
        return r if isinstance(r, WrkResult) else None

    lines, all_met = [], True

    def verdict(text: str, met: bool | None, detail: str) -> None:
        nonlocal all_met
        all_met = all_met and bool(met)
        lines.append(f"- {text}: {detail}: {'MET' if met else 'MISSED'}")

    for text, mine, base, factor in (
        ("worker mode, hello >= 1.5x nginx + php-fpm", ("worker", "hello"), ("fpm", "hello"), 1.5),
        ("worker mode, hello >= apache prefork + mod_php", ("worker", "hello"), ("apache", "hello"), 1.0),
        ("classic mode, hello >= nginx + php-fpm", ("classic", "hello"), ("fpm", "hello"), 1.0),
        ("worker mode, json >= apache prefork + mod_php", ("worker", "json"), ("apache", "json"), 1.0),
        ("10 kB static file >= nginx", ("classic", "static"), ("fpm", "static"), 1.0),
    ):
        a, b = get(*mine), get(*base)
        if a and b and b.rps > 0:
            verdict(text, a.rps / b.rps >= factor, f"{a.rps / b.rps:.2f}x")
        else:
            verdict(text, None, "n/a")
    for key in ("worker", "classic"):
        a, b = get(key, "hello"), get("fpm", "hello")
        if a and b:
            verdict(f"{key} mode, hello p99 at 32 connections <= nginx + php-fpm's", a.p99 <= b.p99,
                    f"{a.p99:.2f} ms vs {b.p99:.2f} ms")
        else:
            verdict(f"{key} mode, hello p99 at 32 connections <= nginx + php-fpm's", None, "n/a")
    if many is not None and isinstance(many.result, WrkResult) and len(many.rss) >= 4:
        early, last = many.rss[1], many.rss[-1]
        flat = last <= early * 1.10 + 4.0  # within 10 % (+4 MB of allocator slack) of second 2
        ok = many.result.errors == "0" and flat
        verdict("512 keep-alive connections, worker hello: no errors, RSS flat", ok,
                f"{many.result.rps:,.0f} req/s, errors {many.result.errors}, p99 {many.result.p99:.1f} ms, "
                f"RSS {early:.1f} MB at 2 s -> {last:.1f} MB at the end "
                f"(samples {', '.join(f'{x:.0f}' for x in many.rss)})")
    else:
        verdict("512 keep-alive connections, worker hello: no errors, RSS flat", None,
                "n/a" if many is None else str(many.result))
    return lines, all_met


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 s per measurement (about 1 min in all)")
    parser.add_argument("--duration", type=float, help="seconds per wrk run (default 10, 3 with --quick)")
    parser.add_argument("--worker-threads", type=int, default=2, help="threads of the HTTP worker (2)")
    parser.add_argument("--servers",
                        default="classic,worker,classic-pt,worker-pt,classic-wsgi,worker-wsgi,fpm,apache",
                        help="comma-separated subset of classic,worker,classic-pt,worker-pt,classic-wsgi,"
                             "worker-wsgi,fpm,apache,phpS,classic-tls,worker-tls (the native server over "
                             "HTTPS/1.1)")
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
    mixed_lua = tmp / "mixed.lua"
    mixed_lua.write_text(MIXED_LUA)
    servers: list[Server] = []
    results: dict[tuple[str, str], WrkResult | str] = {}
    started_at = datetime.datetime.now().astimezone()
    load_before = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    t0 = time.monotonic()
    try:
        builders: dict[str, Callable[[], Server]] = {
            "classic": lambda: frankenpy_server("classic", tmp, root, args.worker_threads),
            "worker": lambda: frankenpy_server("worker", tmp, root, args.worker_threads),
            "classic-wsgi": lambda: frankenpy_server("classic-wsgi", tmp, root, args.worker_threads),
            "worker-wsgi": lambda: frankenpy_server("worker-wsgi", tmp, root, args.worker_threads),
            "classic-pt": lambda: frankenpy_server("classic-pt", tmp, root, args.worker_threads),
            "worker-pt": lambda: frankenpy_server("worker-pt", tmp, root, args.worker_threads),
            "classic-tls": lambda: frankenpy_server("classic-tls", tmp, root, args.worker_threads),
            "worker-tls": lambda: frankenpy_server("worker-tls", tmp, root, args.worker_threads),
            "apache": lambda: apache_server(tmp, root, need("apache2")),
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
        for page in PAGES:
            for server in servers:
                if server.error or page not in server.paths:
                    continue
                script = mixed_lua if page == "mixed" else None
                try:
                    run_wrk(wrk, server.url(page), warmup, 2, 32, script)
                    result = run_wrk(wrk, server.url(page), duration, 2, 32, script)
                except (RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
                    results[(server.key, page)] = f"wrk failed: {exc}"
                    print(f"{server.label:28} {page:5} wrk failed: {exc}", file=sys.stderr, flush=True)
                    continue
                results[(server.key, page)] = result
                print(f"{server.label:30} {page:6} {result.rps:9,.0f} req/s  p50 {result.p50:7.2f} ms  "
                      f"p90 {result.p90:7.2f} ms  p99 {result.p99:7.2f} ms  errors {result.errors}",
                      flush=True)
                for proc in server.procs:
                    if not proc.alive():
                        server.error = f"{proc.name} died during the run"
        many = None
        native_worker = next((s for s in servers if s.key == "worker" and not s.error), None)
        if native_worker is not None:
            many = many_connections(wrk, native_worker, max(duration, 10.0))
            outcome = many.result if isinstance(many.result, str) else (
                f"{many.result.rps:,.0f} req/s, errors {many.result.errors}")
            print(f"512 connections: {outcome}; RSS MB {[round(x) for x in many.rss]}", flush=True)
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
    lines, all_met = verdicts(results, many)
    command = shlex.join(["python3", "scripts/bench_http.py", *(argv or sys.argv[1:])])
    text = "\n".join([
        "",
        table(servers, results),
        "",
        "I/O models of the native server (hand-off from loop threads to PHP threads, against "
        "per-thread run-to-completion):",
        "",
        io_models(results) or "(not measured: run classic/worker with classic-pt/worker-pt)",
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
            "sets `Content-Type: application/json` and a cookie; `static` is a 10 kB text file. "
            "frankenpy classic: `php-server --threads 2 "
            "--opcache` (native server; `(wsgi)`: `--server wsgi`; `(per-thread)`: `--io-model per-thread`); "
            "worker: the same plus "
            f"`--worker worker.php:{args.worker_threads}` "
            "(`/worker.php`, `?page=json`); nginx 2 workers + php8.2-fpm pm=static 4 children, opcache on; "
            "apache2 prefork, 40 processes, mod_php 8.2, opcache on; 512 connections: "
            "`wrk -t2 -c512` on the native worker's hello page, RSS of the frankenpy process each second; "
            f"`mixed`: hello.php with 1 request in {SLOW_EVERY} to slow.php (usleep {SLOW_MS} ms), classic "
            "servers only. "
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
