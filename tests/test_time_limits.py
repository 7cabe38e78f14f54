"""Time limits on every kind of blocking call PHP makes, and what a PHP copy may do to the
whole process: signal handlers, profiler timers, raw writes to stdout/stderr, the working
directory.

Each libphp copy's imports of the libc functions that touch process-wide state are redirected to
hooks of the glue (csrc/interpose.c, csrc/sapi.c).  Tests that could take the interpreter down
(a profiler's SIGPROF reaching PHP's handler _exit()s the process) run in a subprocess.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import wait_for

import frankenpy
from frankenpy.execution import Execution

BOUND = 5.0  # seconds: a 0.3 s timeout or a 1 s limit must have ended the script by then


def run_child(code: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh Python process with this checkout's frankenpy."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "PYTHONPATH", "FRANKENPY_CACHE_DIR")}
    argv = [sys.executable, "-c", textwrap.dedent(code)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)


# --- blocking calls --------------------------------------------------------------------------


@pytest.fixture
def full_listener() -> Iterator[int]:
    """A port on 127.0.0.1 whose accept queue is full: a further connect() hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(8):
        client = socket.socket()
        client.setblocking(False)
        try:
            client.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(client)
    probe = socket.socket()
    probe.settimeout(0.5)
    with pytest.raises(TimeoutError):  # the premise: a connect to it really blocks
        probe.connect(("127.0.0.1", port))
    probe.close()
    yield port
    for client in fillers:
        client.close()
    listener.close()


@pytest.fixture
def locked_file(tmp_path: Path) -> Iterator[Path]:
    """A file on which this process holds an exclusive flock() through another descriptor."""
    path = tmp_path / "locked"
    path.write_text("x")
    fd = os.open(path, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    yield path
    os.close(fd)


BLOCKING = {
    "sleep": "sleep(30);",
    "usleep": "usleep(30000000);",
    "stream_select": (
        "$p = stream_socket_pair(STREAM_PF_UNIX, STREAM_SOCK_STREAM, 0);"
        "$r = [$p[0]]; $w = $e = null; stream_select($r, $w, $e, 30);"
    ),
    "socket_read": (
        "ini_set('default_socket_timeout', '30');"
        "$p = stream_socket_pair(STREAM_PF_UNIX, STREAM_SOCK_STREAM, 0); fread($p[0], 10);"
    ),
    "connect": "stream_socket_client('tcp://127.0.0.1:{port}', $errno, $errstr, 30);",
    "flock": "$f = fopen('{lock}', 'r+'); flock($f, LOCK_EX);",
    "exec": "exec('sleep 30');",
    "popen": "$p = popen('sleep 30', 'r'); fread($p, 10); pclose($p);",
    "proc_close": (
        "$p = proc_open('sleep 30', [], $pipes); echo proc_get_status($p)['pid'], ' '; proc_close($p);"
    ),
}


def _pid_gone(pid: int) -> bool:
    """True once ``pid`` has exited and been reaped (no zombie left)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] == "X"
    except OSError:  # gone meanwhile (ENOENT, or ESRCH while reading)
        return True


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["timeout", "set_time_limit"])
@pytest.mark.parametrize("call", list(BLOCKING))
def test_time_limit_ends_blocking_call(
    runtime1: frankenpy.Runtime, full_listener: int, locked_file: Path, call: str, how: str
) -> None:
    """Each blocking call ends at the deadline: timed_out, exit status 255, thread reusable."""
    code = BLOCKING[call].format(port=full_listener, lock=locked_file)
    started = time.monotonic()
    if how == "timeout":
        result = runtime1.execute_code(code, timeout=0.3)
    else:
        result = runtime1.execute_code("set_time_limit(1);" + code)
    elapsed = time.monotonic() - started
    assert elapsed < BOUND, f"{call}: still blocked {elapsed:.1f} s after a {how} deadline"
    assert result.timed_out and result.exit_status == 255, result
    assert any("Maximum execution time" in e for e in result.errors), result.errors
    after = runtime1.execute_code("echo 'reusable';")
    assert after.ok and after.output == b"reusable"
    if call == "proc_close":
        # proc_close() stopped waiting, and the child is still reaped once it ends (no zombie).
        pid = int(result.output.split()[0])
        os.kill(pid, 9)
        wait_for(lambda: _pid_gone(pid), timeout=10, what=f"child {pid} reaped")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("call", ["sleep", "socket_read", "stream_select"])
def test_max_execution_time_ends_blocking_call(make_runtime, call: str) -> None:  # type: ignore[no-untyped-def]
    rt = make_runtime(num_threads=1, php_ini={"max_execution_time": 1})
    started = time.monotonic()
    result = rt.execute_code(BLOCKING[call])
    assert time.monotonic() - started < BOUND
    assert result.timed_out and result.exit_status == 255, result


@pytest.fixture
def silent_nameserver() -> Iterator[socket.socket]:
    """A nameserver on 127.0.0.1:53 that receives queries and never answers (root only)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        server.bind(("127.0.0.1", 53))
    except OSError as exc:
        server.close()
        pytest.skip(f"cannot listen on 127.0.0.1:53 ({exc})")
    yield server
    server.close()


@pytest.mark.timeout(60)
def test_dns_lookup_ends_within_the_resolver_bound(silent_nameserver, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The README's bound for DNS, which no hook reaches (glibc retries its own poll()): a
    lookup against a silent nameserver ends after timeout x attempts of resolv.conf, then the
    time limit stops the script.  The child gets its own resolv.conf in a private mount
    namespace, so nothing of the machine's changes."""
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    code = textwrap.dedent(
        """
        import json, time, frankenpy
        rt = frankenpy.Runtime(1).start()
        started = time.monotonic()
        r = rt.execute_code("gethostbyname('frankenpy-test.invalid'); for (;;) {}", timeout=0.3)
        print(json.dumps([time.monotonic() - started, r.timed_out, r.exit_status]))
        rt.shutdown()
        """
    )
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "PYTHONPATH", "FRANKENPY_CACHE_DIR")}
    script = f"mount --bind {resolv} /etc/resolv.conf && exec {sys.executable} -c \"$0\""
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"no private mount namespace here: {probe.stderr.decode().strip()}")
    done = subprocess.run(["unshare", "-m", "sh", "-c", script, code], capture_output=True, text=True,
                          timeout=50, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    elapsed, timed_out, status = json.loads(done.stdout.strip().splitlines()[-1])
    assert timed_out and status == 255
    assert 0.8 < elapsed < 5.0, f"the lookup should take about 1 s (timeout:1 attempts:1): {elapsed:.1f} s"


# --- hostile and huge limits ---------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_huge_time_limits_mean_no_deadline_and_the_watchdog_survives(runtime1: frankenpy.Runtime) -> None:
    """set_time_limit(PHP_INT_MAX) and timeout=inf used to kill the watchdog (OverflowError),
    silently ending every later time limit of the runtime."""
    result = runtime1.execute_code("set_time_limit(PHP_INT_MAX); usleep(200000); echo 'done';")
    assert result.ok and result.output == b"done"
    result = runtime1.execute_code("usleep(200000); echo 'done';", timeout=float("inf"))
    assert result.ok and result.output == b"done"
    result = runtime1.execute_code("set_time_limit(10**6); usleep(100000); echo 'done';", timeout=1e12)
    assert result.ok
    started = time.monotonic()
    result = runtime1.execute_code("sleep(30);", timeout=0.3)
    assert result.timed_out and time.monotonic() - started < BOUND
    started = time.monotonic()
    result = runtime1.execute_code("set_time_limit(PHP_INT_MAX); set_time_limit(1); sleep(30);")
    assert result.timed_out and time.monotonic() - started < BOUND


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("-inf"), "1", True])
def test_bad_timeout_is_a_value_error_naming_it(runtime1: frankenpy.Runtime, bad: object) -> None:
    with pytest.raises(ValueError, match="timeout"):
        runtime1.execute_code("echo 1;", timeout=bad)  # type: ignore[arg-type]
    assert runtime1.execute_code("echo 1;").ok  # the PHP thread went back to the pool


class _Hostile(Execution):
    def interrupt(self, seconds: float) -> None:
        raise OverflowError("hostile")


@pytest.mark.timeout(30)
def test_watchdog_survives_an_exception(
    runtime1: frankenpy.Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    with runtime1.borrow_thread() as thread:
        assert thread is not None
        hostile = _Hostile(thread, timeout=0.01)
        hostile.set_deadline(None)  # armed: the watchdog calls interrupt(), which raises
        try:
            wait_for(lambda: "hostile" in caplog.text, timeout=5, what="the watchdog's log of the failure")
        finally:
            thread.watchdog.unwatch(hostile)
    assert f"frankenpy-watchdog: stopping {thread.name} failed" in caplog.text  # names the worker
    started = time.monotonic()
    result = runtime1.execute_code("sleep(30);", timeout=0.3)
    assert result.timed_out and time.monotonic() - started < BOUND


# --- workers: the script's own time limit ---------------------------------------------------------


@pytest.mark.timeout(30)
def test_background_worker_first_set_time_limit_is_enforced(make_runtime, php_file) -> None:  # type: ignore[no-untyped-def]
    """With max_execution_time=0, a worker's first set_time_limit() used to be dropped as if it
    were the start-up limit."""
    script = php_file(
        """
        $h = frankenphp_get_worker_handle();
        set_time_limit(1);
        sleep(10);
        """
    )
    started = time.monotonic()
    rt = make_runtime(num_threads=1, workers=[frankenpy.Worker("limited", script, background=True)])
    status = wait_for(lambda: next((s for s in rt.workers() if s.crashes), None), timeout=BOUND,
                      what="the worker stopped by its set_time_limit(1)")
    assert time.monotonic() - started < BOUND
    assert "timed out after 1 s" in (status.last_error or "")


@pytest.mark.timeout(30)
def test_background_worker_ignores_start_up_max_execution_time(make_runtime, php_file, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Workers run without the max_execution_time in force at start (set_time_limit(0)
    semantics), however the limit reaches them."""
    marker = tmp_path / "slept"
    script = php_file(
        f"""
        $h = frankenphp_get_worker_handle();
        usleep(1500000);
        file_put_contents('{marker}', 'ok');
        $r = [$h]; $w = $e = null;
        stream_select($r, $w, $e, 30);
        """
    )
    rt = make_runtime(num_threads=1, php_ini={"max_execution_time": 1},
                      workers=[frankenpy.Worker("bg", script, background=True)])
    wait_for(marker.exists, timeout=BOUND, what="the worker outliving max_execution_time=1")
    assert all(s.crashes == 0 for s in rt.workers())


# --- the working directory -------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_concurrent_chdir_restores_the_host_directory(make_runtime) -> None:  # type: ignore[no-untyped-def]
    """The directory is the process's: one saved copy for every PHP thread, restored when the
    last execution that changed it ends (each copy used to save and restore its own)."""
    rt = make_runtime(num_threads=3)
    original = os.getcwd()
    targets = ["/tmp", "/usr", "/"]
    errors: list[str] = []

    def run(target: str) -> None:
        for i in range(40):
            r = rt.execute_code(f"chdir('{target}'); usleep({(i * 7919) % 3000}); echo getcwd();")
            if r.exit_status != 0:
                errors.append(str(r))

    try:
        for _round in range(3):
            threads = [threading.Thread(target=run, args=(t,)) for t in targets]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert os.getcwd() == original, f"round {_round}: the host was left in {os.getcwd()}"
    finally:
        os.chdir(original)
    assert not errors


# --- signals and profilers (subprocesses: a failure kills the process) -----------------------


PROFILER = """
    import json, signal, sys, time, threading
    import frankenpy
    ticks = [0]
    def on_prof(signo, frame):
        ticks[0] += 1
    signal.signal(signal.SIGPROF, on_prof)
    signal.setitimer(signal.ITIMER_PROF, 0.002, 0.002)

    def burn(seconds):
        end = time.process_time() + seconds
        while time.process_time() < end:
            pass

    def profiler_alive():
        before = ticks[0]
        burn(0.2)
        return (ticks[0] > before and signal.getsignal(signal.SIGPROF) is on_prof
                and signal.getitimer(signal.ITIMER_PROF)[1] > 0)
"""


@pytest.mark.timeout(120)
def test_profiler_survives_timeout_with_slow_shutdown_function() -> None:
    """Defect 2's trigger: a host SIGPROF profiler, a busy loop stopped by timeout=, and a
    shutdown function that keeps PHP busy in C.  PHP's zend_timeout_handler used to find
    EG(timed_out) set and _exit(124) the whole process."""
    proc = run_child(PROFILER + """
    rt = frankenpy.Runtime(1).start()
    r = rt.execute_code(
        'register_shutdown_function(function () {'
        '    for ($i = 0; $i < 3; $i++) { password_hash("x", PASSWORD_BCRYPT, ["cost" => 12]); }'
        '}); for (;;) {}', timeout=0.3)
    ok = profiler_alive()
    rt.shutdown()
    ok = ok and profiler_alive()
    signal.setitimer(signal.ITIMER_PROF, 0, 0)
    print(json.dumps({"timed_out": r.timed_out, "status": r.exit_status, "profiler": ok}))
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == {"timed_out": True, "status": 255, "profiler": True}


@pytest.mark.timeout(120)
def test_profiler_through_startup_executions_timeouts_and_shutdown() -> None:
    """A 1 kHz profiler while runtimes start, run scripts on two threads, time out and shut down:
    PHP neither takes its SIGPROF handler nor arms or disarms ITIMER_PROF."""
    proc = run_child(PROFILER.replace("0.002, 0.002", "0.001, 0.001") + """
    import tempfile, os
    stuck = os.path.join(tempfile.mkdtemp(), "stuck.php")
    with open(stuck, "w") as f:  # ignores its drain: force-stopped at shutdown
        f.write("<?php $h = frankenphp_get_worker_handle(); for (;;) { usleep(100000); }")
    results = []
    for cycle in range(2):
        rt = frankenpy.Runtime(2, php_ini={"max_execution_time": 30},
                               workers=[frankenpy.Worker("stuck", stuck, background=True)]).start()
        def work(n):
            for i in range(40):
                r = rt.execute_code("echo str_repeat('x', 1000); $a = []; "
                                    "for ($i = 0; $i < 20000; $i++) { $a[] = $i; }")
                results.append(r.ok)
            for code in ("for (;;) {}", "sleep(30);", "set_time_limit(1); for (;;) {}"):
                r = rt.execute_code(code, timeout=0.3 if "set_time_limit" not in code else None)
                results.append(r.timed_out)
        threads = [threading.Thread(target=work, args=(n,)) for n in range(2)]
        [t.start() for t in threads]
        burn(0.3)
        [t.join() for t in threads]
        rt.shutdown(grace=0.2)
        results.append(rt.workers()[0].state == "stopped")
        results.append(profiler_alive())
    from frankenpy.images import POOL
    POOL.stop_idle()  # module shutdown of every interpreter, under the profiler too
    results.append(profiler_alive())
    signal.setitimer(signal.ITIMER_PROF, 0, 0)
    print(json.dumps({"all": all(results), "n": len(results)}))
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == {"all": True, "n": 2 * (2 * 43 + 2) + 1}


@pytest.mark.timeout(60)
def test_pcntl_signal_cannot_take_the_host_handlers() -> None:
    """pcntl_signal() would install a process-wide handler (and reset it to SIG_DFL at request
    end): it is refused with a warning, and the host's handlers keep firing."""
    proc = run_child("""
    import json, os, signal, time
    import frankenpy
    got = []
    def handler(signo, frame):
        got.append(signo)
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    rt = frankenpy.Runtime(1).start()
    r = rt.execute_code(
        'var_dump(pcntl_signal(SIGTERM, function () { echo "php"; }));'
        'var_dump(pcntl_signal(SIGINT, SIG_IGN));'
        'pcntl_alarm(1);'  # SIGALRM's default action would kill the host
        'echo "end";')
    same = signal.getsignal(signal.SIGTERM) is handler and signal.getsignal(signal.SIGINT) is handler
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(1.5)  # past pcntl_alarm(1)
    rt.shutdown()
    print(json.dumps({"output": r.output.decode(), "errors": r.errors, "same": same, "got": got}))
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.splitlines()[-1])
    assert report["output"] == "bool(false)\nbool(false)\nend"
    assert sum("signal handlers belong to the whole host process" in e for e in report["errors"]) == 2
    assert report["same"] and sorted(report["got"]) == sorted([2, 15])


@pytest.mark.timeout(60)
def test_python_signal_handlers_fire_while_php_threads_run() -> None:
    proc = run_child("""
    import json, os, signal, threading, time
    import frankenpy
    got = []
    signal.signal(signal.SIGTERM, lambda s, f: got.append(("TERM", busy())))
    signal.signal(signal.SIGINT, lambda s, f: got.append(("INT", busy())))
    rt = frankenpy.Runtime(2).start()
    busy = lambda: rt.busy_threads
    threads = [threading.Thread(target=rt.execute_code, args=("usleep(1500000);",)) for _ in range(2)]
    [t.start() for t in threads]
    while rt.busy_threads < 2:
        time.sleep(0.01)
    time.sleep(0.2)
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.3)
    fired = list(got)
    [t.join() for t in threads]
    rt.shutdown()
    print(json.dumps(fired))
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == [["TERM", 2], ["INT", 2]]


# --- output written around PHP's output layer -------------------------------------------------------

RAW_OUTPUT = {
    # A user stream wrapper's stream_close() runs when the resource list is freed, after the
    # output layer is shut down: PHP writes such output straight to the process's stdout.
    "wrapper_close": (
        "class W { public $context; function stream_open($p, $m, $o, &$op) { return true; }"
        " function stream_write($d) { return strlen($d); }"
        " function stream_close() { echo 'closed'; } }"
        "stream_wrapper_register('wrap', 'W'); $GLOBALS['f'] = fopen('wrap://x', 'w');",
        "closed", 0,
    ),
    # The same with a fatal error there: php-cli says 255 (the status was read before request
    # shutdown, so frankenpy said 0).
    "wrapper_close_fatal": (
        "class W { public $context; function stream_open($p, $m, $o, &$op) { return true; }"
        " function stream_close() { echo 'closing'; undefined_function(); } }"
        "stream_wrapper_register('wrap', 'W'); $GLOBALS['f'] = fopen('wrap://x', 'r');",
        "closing", 255,
    ),
    "destructor_at_shutdown": (
        "class D { function __destruct() { echo 'destructed'; } } $GLOBALS['d'] = new D;",
        "destructed", 0,
    ),
    "output_handler_fatal": (
        "ob_start(function ($buffer) { undefined_function(); return $buffer; }); echo 'lost';",
        "", 255,
    ),
    "shutdown_function_fatal": (
        "register_shutdown_function(function () { echo 'shut'; undefined_function(); }); echo 'body|';",
        "body|shut", 255,
    ),
    "php_stdout": ("file_put_contents('php://stdout', 'raw'); fwrite(fopen('php://output', 'w'), '|out');",
                   "raw|out", 0),
}


@pytest.mark.timeout(120)
def test_output_around_the_output_layer_never_reaches_the_host_stdout() -> None:
    proc = run_child(f"""
    import json, sys
    import frankenpy
    cases = {json.dumps({name: code for name, (code, _, _) in RAW_OUTPUT.items()})}
    rt = frankenpy.Runtime(1, php_ini={{"display_errors": "1"}}).start()
    report = {{}}
    for name, code in cases.items():
        r = rt.execute_code(code)
        report[name] = [r.output.decode(), r.exit_status]
    r = rt.execute_code("file_put_contents('php://stderr', 'to stderr');")
    report["stderr"] = [r.stderr.decode(), r.errors, r.exit_status]
    rt.shutdown()
    sys.stdout.flush()
    print("REPORT " + json.dumps(report))
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("REPORT "), f"PHP wrote to the host's stdout: {proc.stdout[:500]!r}"
    report = json.loads(proc.stdout[len("REPORT "):])
    for name, (code, output, status) in RAW_OUTPUT.items():
        got_output, got_status = report[name]
        if name.endswith("fatal") and output:
            assert got_output.startswith(output), (name, got_output)  # then the displayed error
        else:
            assert got_output == output, (name, got_output)
        assert got_status == status, (name, got_status)
        cli = subprocess.run(["php8.2", "-n", "-d", "display_errors=0", "-r", code], capture_output=True,
                             timeout=30)
        assert cli.returncode == status, f"{name}: php-cli says {cli.returncode}, frankenpy {got_status}"
    assert report["stderr"] == ["to stderr", [], 0]  # the execution's stderr, not the host's


def test_math_inf_is_no_deadline(runtime1: frankenpy.Runtime) -> None:
    result = runtime1.execute_code("echo 1;", timeout=math.inf)
    assert result.ok and result.time_limit is None


@pytest.mark.timeout(60)
def test_http_worker_waits_for_requests_without_its_own_time_limit(make_runtime, php_file) -> None:  # type: ignore[no-untyped-def]
    """A worker script's set_time_limit() before its loop is enforced now (it used to be dropped
    as the start-up limit), but never while the worker waits for a request."""
    from wsgiref.util import setup_testing_defaults

    from frankenpy.http.app import PHPApp

    script = php_file(
        """
        set_time_limit(1);
        while (frankenphp_handle_request(function () { echo 'served'; })) {}
        """,
        name="worker.php",
    )
    rt = make_runtime(num_threads=1, workers=[frankenpy.Worker("app", script)])
    app = PHPApp(rt, script.parent)

    def get() -> tuple[str, bytes]:
        environ: dict = {"PATH_INFO": "/worker.php", "REQUEST_METHOD": "GET"}
        setup_testing_defaults(environ)
        status: list[str] = []
        body = b"".join(app(environ, lambda s, h, exc=None: status.append(s)))
        return status[0], body

    for _ in range(2):
        time.sleep(1.5)  # idle for longer than the script's limit: before and after a request
        assert get() == ("200 OK", b"served")
    assert rt.workers()[0].crashes == 0


@pytest.mark.timeout(60)
def test_shared_extension_waits_are_redirected_too(make_runtime) -> None:  # type: ignore[no-untyped-def]
    """Shared extensions call libc themselves (sockets.so's select(), ftp.so's and redis.so's
    poll()): each copy's extensions get the same hooks as its libphp.  An interrupted
    socket_select() returns 0 like a timeout instead of failing with EINTR."""
    rt = make_runtime(num_threads=1, extensions=["sockets"])
    started = time.monotonic()
    result = rt.execute_code(
        "socket_create_pair(AF_UNIX, SOCK_STREAM, 0, $p); $r = [$p[0]]; $w = $e = null;"
        "socket_select($r, $w, $e, 30);",
        timeout=0.3,
    )
    assert time.monotonic() - started < BOUND
    assert result.timed_out and result.exit_status == 255
    assert not any("Interrupted system call" in e for e in result.errors), result.errors
