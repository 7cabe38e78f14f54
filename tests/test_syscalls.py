"""What the glue spares PHP's request cycle (csrc/sapi.c: opcache's record locks, the SIGPROF
unblocking, closelog(), the script check): the system calls of an execution, counted with strace,
must stay spared, and nothing that needs them may break."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import syslog
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import frankenpy

needs_strace = pytest.mark.skipif(shutil.which("strace") is None,
                                  reason="needs strace (scripts/install_deps.sh)")

_ROW = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$")


def _counts(report: Path) -> dict[str, int]:
    counts = {}
    for line in report.read_text().splitlines():
        match = _ROW.match(line)
        if match and match.group(2) != "total":
            counts[match.group(2)] = int(match.group(1))
    return counts


def _per_execution(tmp_path: Path, script: Path, opcache: bool) -> dict[str, float]:
    """System calls per execute_file(script): the difference between a run of 1,200 executions
    and one of 200, in fresh processes (start-up and shut-down cancel out)."""
    code = textwrap.dedent(f"""
        import sys
        import frankenpy
        rt = frankenpy.Runtime(num_threads=1, opcache={opcache}).start()
        for _ in range(int(sys.argv[1])):
            assert rt.execute_file({str(script)!r}).output == b"hi"
        rt.shutdown()
    """)
    cache = os.environ.get("FRANKENPY_CACHE_DIR", str(tmp_path / "cache"))
    env = {**os.environ, "FRANKENPY_CACHE_DIR": cache}
    runs = {}
    for n in (200, 1200):
        report = tmp_path / f"strace-{n}.txt"
        done = subprocess.run(["strace", "-f", "-c", "-o", str(report), sys.executable, "-c", code, str(n)],
                              env=env, capture_output=True, text=True, timeout=120)
        if done.returncode != 0 and "ptrace" in done.stderr:
            pytest.skip(f"strace cannot trace here: {done.stderr.strip()}")
        assert done.returncode == 0, done.stderr
        runs[n] = _counts(report)
    names = set(runs[200]) | set(runs[1200])
    return {name: (runs[1200].get(name, 0) - runs[200].get(name, 0)) / 1000 for name in names}


@pytest.fixture
def hello(tmp_path: Path) -> Path:
    script = tmp_path / "hello.php"
    script.write_text("<?php echo 'hi';")
    old = time.time() - 60  # opcache caches no file changed in the last 2 s (file_update_protection)
    os.utime(script, (old, old))
    return script


@needs_strace
@pytest.mark.timeout(120)
def test_an_execution_of_a_cached_script_makes_no_system_call(tmp_path: Path, hello: Path) -> None:
    """With opcache, PHP's request cycle alone would make four (two fcntl() locks, the
    SIGPROF sigaction()/sigprocmask() pair); the check that the script exists, one more."""
    per = _per_execution(tmp_path, hello, opcache=True)
    assert {name: n for name, n in per.items() if n >= 0.05} == {}


@needs_strace
@pytest.mark.timeout(120)
def test_an_execution_without_opcache_makes_only_the_calls_that_read_the_script(
        tmp_path: Path, hello: Path) -> None:
    per = _per_execution(tmp_path, hello, opcache=False)
    frequent = {name: n for name, n in per.items() if n >= 0.05}
    assert set(frequent) <= {"openat", "newfstatat", "fstat", "read", "close"}, frequent
    assert sum(frequent.values()) <= 5, frequent


@pytest.mark.timeout(60)
def test_opcache_still_resets_and_recompiles(make_runtime: Callable[..., frankenpy.Runtime],
                                             tmp_path: Path) -> None:
    """opcache_reset() asks (F_GETLK) whether the cache is in use before it restarts it: the
    answer is "no other process", as it always was inside one process."""
    rt = make_runtime(num_threads=1, opcache=True)
    script = tmp_path / "v.php"
    script.write_text("<?php echo opcache_get_status(false)['opcache_statistics']['hits'] ?? -1;")
    old = time.time() - 60
    os.utime(script, (old, old))
    rt.execute_file(script)
    assert int(rt.execute_file(script).output) >= 1  # served from the cache
    assert rt.execute_code("var_export(opcache_reset());").output == b"true"
    status = rt.execute_code("echo json_encode(opcache_get_status(false)['opcache_enabled']);")
    assert status.output == b"true"
    assert int(rt.execute_file(script).output) == 0  # the restarted cache had to compile it again


@pytest.fixture
def dev_log() -> Iterator[socket.socket]:
    """A syslog daemon's socket at /dev/log (glibc's fixed path) for the test, if it is free."""
    if os.path.exists("/dev/log") or os.geteuid() != 0:
        pytest.skip("needs root and no syslog daemon on /dev/log")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("/dev/log")
    sock.settimeout(10)
    try:
        yield sock
    finally:
        syslog.closelog()
        sock.close()
        os.unlink("/dev/log")


@pytest.mark.timeout(60)
def test_requests_leave_the_hosts_syslog_connection_alone(runtime: frankenpy.Runtime,
                                                          dev_log: socket.socket) -> None:
    """glibc has one syslog connection per process.  PHP closes it at every request end (and so
    reset the host's ident, under a process-wide lock); now only a script that opened it does."""
    syslog.openlog("frankenpy-host", syslog.LOG_NDELAY)
    assert runtime.execute_code("echo 1;").output == b"1"
    syslog.syslog(syslog.LOG_WARNING, "host after a request")
    assert b"frankenpy-host" in dev_log.recv(4096)
    logged = runtime.execute_code("openlog('php-side', 0, LOG_USER); syslog(LOG_WARNING, 'from php');"
                                  " echo 'done';")
    assert logged.output == b"done"
    assert re.search(rb"php-side.*from php", dev_log.recv(4096))
    code = "var_export(openlog('php-side', 0, LOG_USER) && syslog(LOG_ERR, 'again') && closelog());"
    assert runtime.execute_code(code).output == b"true"
    assert b"again" in dev_log.recv(4096)
