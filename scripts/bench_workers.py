#!/usr/bin/env python3
"""Background workers: frankenpy vs supervisord + php-cli, measured side by side in one run.

The same PHP logic runs both ways:

* frankenpy: a background worker (``frankenphp_get_worker_handle()``) that parks in
  ``stream_select`` on its handle and exits 0 when the handle is drained;
* supervisord: ``php-cli`` processes (Debian's stock CLI ini) that install a SIGTERM handler
  (``pcntl_async_signals(true)`` + ``pcntl_signal``), write a per-process readiness file, park in
  ``stream_select`` on STDIN (the pipe supervisord keeps open; ``sleep()`` if STDIN is at EOF) and
  exit 0 on SIGTERM.

Measured (median over the rounds, min-max in brackets):

1. ready time of 1, 4 and 16 parked workers: frankenpy ``Runtime.start()`` in a fresh process
   (interpreter images loaded and started, worker scripts up to their first
   ``frankenphp_get_worker_handle()``); supervisord from the ``startProcessGroup`` XML-RPC call
   (what ``supervisorctl start group:*`` sends) to the last readiness timestamp written by PHP;
2. shutdown: frankenpy ``rt.shutdown()`` (workers drained and joined, interpreters shut down);
   supervisord ``stopAllProcesses(wait=True)`` (what ``supervisorctl stop all`` sends): until every
   php-cli pid has exited (the number compared), and until the call returned as well (supervisord
   answers a waiting stop on a tick of its 1 s main loop);
3. crash to respawn of a first failure: the script gets its handle (frankenpy) / installs its
   handler (php-cli), writes ``microtime(true)`` and ``exit(1)``; the respawned run writes
   ``microtime(true)`` as its first line (supervisord: ``autorestart=true``, ``startsecs=0``);
4. memory per worker: frankenpy (RSS(16 workers) - RSS(1 worker)) / 15 of the Python process,
   PSS likewise from ``/proc/PID/smaps_rollup``, each in fresh processes; supervisord RSS and PSS
   summed over the 16 php-cli processes / 16.  PSS is the fair comparison (php-cli processes share
   their text pages; frankenpy's interpreter copies are private to the process); both are given.

5. shared vars and tasks (issue 10): ``frankenphp_get_vars()`` of a 1,000-entry array from a
   classic request (timed in PHP with ``hrtime()`` around the first call of each request, which
   copies the snapshot into the request's heap), and the task round trip Python -> PHP
   background worker -> Python (``rt.send_task()``, p50) against a Redis LPUSH/BRPOP round trip
   to a php-cli worker (Debian ``redis-server`` started here on 127.0.0.1, ``php8.2-redis``; the
   Python side speaks RESP on a plain socket, both sides encode JSON).

Every frankenpy measurement runs in a child process (this file with ``--child``); supervisord
runs with a generated config (``nodaemon``, its own unix socket) in a temporary directory and is
driven over XML-RPC on that socket.  Everything started is stopped at the end, errors included.
Only unix sockets are used.  The section "Background workers (scripts/bench_workers.py)" of
``docs/benchmarks.md`` is written (replaced if present) unless ``--no-docs``.

Usage::

    PYTHONPATH=. python3 scripts/bench_workers.py [--quick] [--rounds N] [--no-docs]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import json
import os
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import xmlrpc.client
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "benchmarks.md"
SECTION = "## Background workers (`python3 scripts/bench_workers.py`)"
COUNTS = (1, 4, 16)
SETTLE = 0.3  # seconds parked before memory is read
CHILD_TIMEOUT = 60.0
WAIT_TIMEOUT = 15.0
SPAWN_ERROR = 50  # supervisor.xmlrpc.Faults.SPAWN_ERROR

# --------------------------------------------------------------------------------------------------
# The PHP logic.  Both scripts read BENCH_STATE (a directory) and BENCH_MODE (park | crash).
# In crash mode the first run (no "crashed" file yet) becomes ready, writes microtime(true) to
# "crashed" and exits 1; the respawned run writes microtime(true), taken by its first line, to
# "respawned" and parks.
# --------------------------------------------------------------------------------------------------

FRANKENPY_PHP = r"""<?php
$started = microtime(true);
$state = $_SERVER['BENCH_STATE'];
$crash = $_SERVER['BENCH_MODE'] === 'crash';
$first = $crash && !is_file("$state/crashed");
if ($crash && !$first) {
    file_put_contents("$state/respawned", sprintf('%.6f', $started));
}
$h = frankenphp_get_worker_handle();
if ($first) {
    file_put_contents("$state/crashed", sprintf('%.6f', microtime(true)));
    exit(1);
}
while (true) {
    $r = [$h];
    $w = $e = null;
    if (stream_select($r, $w, $e, 60) > 0 && fread($h, 1) === '') {
        break;  // drained: nothing is ever written, readable means the host closed it
    }
}
exit(0);
"""

CLI_PHP = r"""<?php
$started = microtime(true);
$state = getenv('BENCH_STATE');
$crash = getenv('BENCH_MODE') === 'crash';
$first = $crash && !is_file("$state/crashed");
if ($crash && !$first) {
    file_put_contents("$state/respawned", sprintf('%.6f', $started));
}
$stop = false;
pcntl_async_signals(true);
pcntl_signal(SIGTERM, function () use (&$stop) { $stop = true; }, false);
$name = getenv('SUPERVISOR_PROCESS_NAME') ?: (string) getmypid();
file_put_contents("$state/ready/$name", sprintf('%.6f', microtime(true)));
if ($first) {
    file_put_contents("$state/crashed", sprintf('%.6f', microtime(true)));
    exit(1);
}
$in = STDIN;
while (!$stop) {
    if ($in === null) {
        sleep(60);
        continue;
    }
    $r = [$in];
    $w = $e = null;
    if (@stream_select($r, $w, $e, 60) > 0 && fread($in, 8192) === '' && feof($in)) {
        $in = null;  // STDIN at EOF: park in sleep() instead
    }
}
exit(0);
"""


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------


def memory_kb(pid: int | str = "self") -> tuple[int, int]:
    """(RSS, PSS) of a process in kB."""
    rss = pss = 0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
    return rss, pss


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.002) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def read_stamp(path: Path) -> float:
    """A microtime(true) written by PHP (waits for the write to be complete)."""
    text = ""
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        text = path.read_text().strip()
        if text.count(".") == 1 and len(text.split(".")[1]) == 6:
            return float(text)
        time.sleep(0.001)
    raise ValueError(f"{path}: incomplete timestamp {text!r}")


def pid_alive(pid: int) -> bool:
    """True while /proc/PID exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


@contextlib.contextmanager
def pidfds(pids: list[int]) -> Iterator[list[int]]:
    """pidfds of ``pids`` (not our children: supervisord's); a pid already gone is skipped."""
    fds = []
    try:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                fds.append(os.pidfd_open(pid))
        yield fds
    finally:
        for fd in fds:
            os.close(fd)


def wait_exited(fds: list[int], timeout: float) -> None:
    """Block (no polling loop burning the CPU the exits need) until every pidfd is readable,
    i.e. every process has terminated."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    pending = set(fds)
    deadline = time.monotonic() + timeout
    while pending:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{len(pending)} process(es) still running after {timeout:.0f} s")
        for fd, _ in poller.poll(left * 1000):
            pending.discard(fd)
            poller.unregister(fd)


def kill_group(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM the process group led by ``proc`` (started with start_new_session), then SIGKILL."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5.0)


def own_processes(marker: str) -> list[int]:
    """Pids of live processes whose command line names ``marker`` (our unique temp dir)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline and pid_alive(int(entry)):
            pids.append(int(entry))
    return pids


# Shared vars and tasks (5.): the frankenpy worker publishes 1,000 entries and answers tasks,
# waking on its handle; the php-cli worker answers the same tasks through Redis.
VARS_TASKS_PHP = r"""<?php
$vars = [];
for ($i = 0; $i < 1000; $i++) { $vars["key_$i"] = "value number $i"; }
frankenphp_set_vars($vars);
$h = frankenphp_get_worker_handle();
while (true) {
    $r = [$h]; $w = $e = [];
    if (stream_select($r, $w, $e, null) > 0 && fread($h, 1) === '') {
        break;
    }
    while (($t = frankenphp_receive_task()) !== null) {
        frankenphp_complete_task($t['id'], ['echo' => $t['payload']]);
    }
}
"""

REDIS_PHP = r"""<?php
$redis = new Redis();
$redis->connect('127.0.0.1', (int) getenv('BENCH_REDIS_PORT'));
while (true) {
    $job = $redis->brPop(['tasks'], 0);
    if (!$job) { continue; }
    $task = json_decode($job[1], true);
    if ($task === 'quit') { break; }
    $redis->lPush('reply', json_encode(['echo' => $task]));
}
"""
GETVARS_REQUESTS = 300
TASKS = 2000
TASK_WARMUP = 200

GETVARS_CODE = """
$t = hrtime(true);
$v = frankenphp_get_vars('vars');
$d = hrtime(true) - $t;
echo $d, ' ', count($v);
"""


def vars_tasks_child(script: str) -> dict[str, object]:
    """In a fresh process: frankenphp_get_vars() of 1,000 entries from classic requests (ns per
    call), and the Python -> PHP worker -> Python task round trip (us per task)."""
    import frankenpy

    worker = frankenpy.Worker("vars", script, background=True)
    rt = frankenpy.Runtime(num_threads=1, workers=[worker])
    rt.start()
    try:
        getvars = []
        for _ in range(GETVARS_REQUESTS):
            result = rt.execute_code(GETVARS_CODE)
            ns, count = result.output.split()
            if int(count) != 1000:
                raise RuntimeError(f"frankenphp_get_vars() returned {count} entries")
            getvars.append(int(ns) / 1000)
        trips = []
        for i in range(TASK_WARMUP + TASKS):
            t0 = time.perf_counter()
            answer = rt.send_task("vars", {"n": i, "job": "resize"})
            if i >= TASK_WARMUP:
                trips.append((time.perf_counter() - t0) * 1e6)
            if answer != {"echo": {"n": i, "job": "resize"}}:
                raise RuntimeError(f"unexpected task answer {answer!r}")
    finally:
        rt.shutdown(grace=5.0)
    return {"getvars_us": statistics.median(getvars), "task_p50_us": statistics.median(trips),
            "task_p99_us": sorted(trips)[int(len(trips) * 0.99)]}


class RedisBench:
    """redis-server on 127.0.0.1 (a free port) and a php-cli worker on BRPOP; Python is the
    client, with RESP on a plain socket (no client library in the way)."""

    def __init__(self, root: Path, php: str, redis_server: str) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        command = [redis_server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "no", "--dir", str(root)]
        self.server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                       start_new_session=True)
        self.sock: socket.socket | None = None
        deadline = time.monotonic() + WAIT_TIMEOUT
        while self.sock is None:
            try:
                self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=WAIT_TIMEOUT)
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.02)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = self.sock.makefile("rb")
        script = root / "worker_redis.php"
        script.write_text(REDIS_PHP)
        env = {**os.environ, "BENCH_REDIS_PORT": str(self.port)}
        self.worker = subprocess.Popen([php, str(script)], env=env, stdout=subprocess.DEVNULL,
                                       start_new_session=True)

    def command(self, *args: bytes) -> object:
        assert self.sock is not None
        self.sock.sendall(b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args))
        return self._reply()

    def _reply(self) -> object:
        line = self.reader.readline()
        kind, rest = line[:1], line[1:-2]
        if kind == b":":
            return int(rest)
        if kind == b"$":
            data = self.reader.read(int(rest) + 2)[:-2]
            return data
        if kind == b"*":
            return [self._reply() for _ in range(int(rest))]
        if kind == b"+":
            return rest
        raise RuntimeError(f"redis error: {line!r}")

    def round_trips(self) -> list[float]:
        trips = []
        for i in range(TASK_WARMUP + TASKS):
            t0 = time.perf_counter()
            self.command(b"LPUSH", b"tasks", json.dumps({"n": i, "job": "resize"}).encode())
            _, reply = self.command(b"BRPOP", b"reply", b"10")  # type: ignore[misc]
            answer = json.loads(reply)
            if i >= TASK_WARMUP:
                trips.append((time.perf_counter() - t0) * 1e6)
            if answer != {"echo": {"n": i, "job": "resize"}}:
                raise RuntimeError(f"unexpected redis answer {answer!r}")
        return trips

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.command(b"LPUSH", b"tasks", b'"quit"')
        for proc in (self.worker, self.server):
            kill_group(proc, grace=2.0)
        if self.sock is not None:
            self.sock.close()


# --------------------------------------------------------------------------------------------------
# frankenpy: measured in child processes
# --------------------------------------------------------------------------------------------------


def child_main(mode: str, script: str, state: str, count: int) -> dict[str, object]:
    """Runs in a fresh process: start a runtime with ``count`` background workers running
    ``script``, measure, shut down.  Returns the measurements (printed as JSON)."""
    t_import = time.perf_counter()
    import frankenpy

    out: dict[str, object] = {"import_ms": (time.perf_counter() - t_import) * 1000}
    out["base_rss_kb"], out["base_pss_kb"] = memory_kb()
    worker = frankenpy.Worker(
        mode, script, num=count, background=True, max_consecutive_failures=-1,
        env={"BENCH_STATE": state, "BENCH_MODE": mode},
    )
    rt = frankenpy.Runtime(num_threads=1, workers=[worker])
    try:
        t0 = time.perf_counter()
        rt.start()
        out["start_ms"] = (time.perf_counter() - t0) * 1000
        out["states_after_start"] = sorted({s.state for s in rt.workers()})
        if mode == "crash":
            respawned = Path(state, "respawned")
            wait_for(respawned.exists, WAIT_TIMEOUT, "the respawned run's timestamp")
            crashed = read_stamp(Path(state, "crashed"))
            out["respawn_ms"] = (read_stamp(respawned) - crashed) * 1000
            with contextlib.suppress(TimeoutError):
                wait_for(lambda: rt.workers()[0].state == "ready", 5.0, "the respawned run's handle")
            status = rt.workers()[0]
            out["status"] = {"state": status.state, "crashes": status.crashes,
                             "restarts": status.restarts, "failures": status.failures}
        else:
            time.sleep(SETTLE)
            out["rss_kb"], out["pss_kb"] = memory_kb()
        # Instrumentation only: when the workers' part of shutdown() is over (drained, joined).
        marks: dict[str, float] = {}
        group = getattr(rt, "workers_group", None)
        if group is not None and hasattr(group, "stop"):
            original_stop = group.stop

            def timed_stop(*args: object, **kwargs: object) -> None:
                original_stop(*args, **kwargs)
                marks["workers"] = time.perf_counter()

            group.stop = timed_stop
        t1 = time.perf_counter()
        rt.shutdown(grace=10.0)
        t2 = time.perf_counter()
        out["shutdown_ms"] = (t2 - t1) * 1000
        if "workers" in marks:
            out["shutdown_workers_ms"] = (marks["workers"] - t1) * 1000
        statuses = rt.workers()
        out["exit_statuses"] = sorted({s.last_exit_status for s in statuses}, key=str)
        out["states_after_shutdown"] = sorted({s.state for s in statuses})
    finally:
        rt.shutdown(grace=1.0)  # idempotent; stops everything if a measurement failed
    return out


def run_child(mode: str, script: Path, state: Path, count: int, env: dict[str, str]) -> dict[str, object]:
    state.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--child", mode, str(script), str(state),
               str(count)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=CHILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        raise RuntimeError(f"frankenpy child {mode}/{count} timed out after {CHILD_TIMEOUT:.0f} s") from None
    finally:
        kill_group(proc, grace=0.5)
    for line in stdout.decode(errors="replace").splitlines():
        if line.startswith("RESULT "):
            result: dict[str, object] = json.loads(line[len("RESULT "):])
            result["stderr"] = stderr.decode(errors="replace")
            return result
    raise RuntimeError(
        f"frankenpy child {mode}/{count} failed (exit {proc.returncode}):\n"
        f"{stderr.decode(errors='replace')[-3000:]}"
    )


# --------------------------------------------------------------------------------------------------
# supervisord
# --------------------------------------------------------------------------------------------------


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


class UnixTransport(xmlrpc.client.Transport):
    def __init__(self, path: str, timeout: float = 30.0) -> None:
        super().__init__()
        self.unix_path = path
        self.timeout = timeout

    def make_connection(self, host: object) -> http.client.HTTPConnection:  # type: ignore[override]
        return UnixHTTPConnection(self.unix_path, self.timeout)


class Supervisor:
    """supervisord with a generated config in ``root``: program ``park<N>`` (numprocs=N) for each
    count and ``crash``; nothing starts by itself."""

    def __init__(self, root: Path, php: str, script: Path) -> None:
        self.root = root
        self.socket = root / "supervisor.sock"
        self.conf = root / "supervisord.conf"
        self.state = root / "sv-state"
        self.crash_state = root / "sv-crash"
        self.proc: subprocess.Popen[bytes] | None = None
        self.seen_pids: set[int] = set()
        (root / "sv-logs").mkdir(exist_ok=True)
        for directory in (self.state, self.crash_state):
            (directory / "ready").mkdir(parents=True, exist_ok=True)
        programs = []
        for name, numprocs, mode, state, autorestart in (
            *((f"park{n}", n, "park", self.state, "false") for n in COUNTS),
            ("crash", 1, "crash", self.crash_state, "true"),
        ):
            programs.append(f"""
[program:{name}]
command={php} {script}
process_name=%(program_name)s_%(process_num)02d
numprocs={numprocs}
autostart=false
autorestart={autorestart}
startsecs=0
startretries=3
exitcodes=0
stopsignal=TERM
stopwaitsecs=10
redirect_stderr=true
stdout_logfile={root}/sv-logs/%(program_name)s_%(process_num)02d.log
environment=BENCH_STATE="{state}",BENCH_MODE="{mode}"
""")
        self.conf.write_text(f"""[unix_http_server]
file={self.socket}
chmod=0700

[supervisord]
nodaemon=true
logfile={root}/supervisord.log
pidfile={root}/supervisord.pid
childlogdir={root}/sv-logs
loglevel=info

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{self.socket}
""" + "".join(programs))

    @property
    def rpc(self) -> xmlrpc.client.ServerProxy:
        return xmlrpc.client.ServerProxy("http://localhost", transport=UnixTransport(str(self.socket)))

    def launch(self, supervisord: str) -> float:
        started = time.perf_counter()
        log = open(self.root / "supervisord.stdout", "wb")  # closed below, the child keeps its copy
        try:
            self.proc = subprocess.Popen([supervisord, "-n", "-c", str(self.conf)], stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()

        def running() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"supervisord exited: {(self.root / 'supervisord.stdout').read_text()}")
            try:
                return self.rpc.supervisor.getState()["statename"] == "RUNNING"
            except OSError:
                return False

        wait_for(running, WAIT_TIMEOUT, "supervisord", interval=0.01)
        return (time.perf_counter() - started) * 1000

    def pids(self, group: str) -> list[int]:
        pids = [info["pid"] for info in self.rpc.supervisor.getAllProcessInfo()
                if info["group"] == group and info["pid"]]
        self.seen_pids.update(pids)
        return pids

    def start_parked(self, count: int) -> tuple[float, list[int]]:
        """Start group park<count>; ms from the start call to the last readiness stamp."""
        ready = self.state / "ready"
        for path in ready.iterdir():
            path.unlink()
        t0 = time.time()
        self.rpc.supervisor.startProcessGroup(f"park{count}", False)
        wait_for(lambda: len(os.listdir(ready)) >= count, WAIT_TIMEOUT, f"{count} php-cli workers")
        last = max(read_stamp(path) for path in ready.iterdir())
        return (last - t0) * 1000, self.pids(f"park{count}")

    def stop_all(self, pids: list[int]) -> tuple[float, float]:
        """stopAllProcesses(wait=True) on a helper thread; returns (ms until every pid has exited,
        ms until the call returned and every pid is gone).  supervisord answers a waiting stop
        only on a tick of its main loop, so the second is about 1 s."""
        returned: list[float] = []
        errors: list[BaseException] = []

        def call() -> None:
            try:
                self.rpc.supervisor.stopAllProcesses(True)
                returned.append(time.perf_counter())
            except BaseException as exc:
                errors.append(exc)

        caller = threading.Thread(target=call, name="stopAllProcesses", daemon=True)
        with pidfds(pids) as fds:
            t0 = time.perf_counter()
            caller.start()
            wait_exited(fds, WAIT_TIMEOUT)
            exited = time.perf_counter()
        caller.join(WAIT_TIMEOUT)
        if errors:
            raise errors[0]
        if not returned:
            raise TimeoutError("stopAllProcesses did not return")
        return (exited - t0) * 1000, (max(returned[0], exited) - t0) * 1000

    def crash_respawn(self) -> float:
        """Start ``crash``: its first run exits 1 once ready, supervisord respawns it; ms from the
        crash stamp to the respawned run's first-line stamp.  Only files are polled meanwhile (an
        RPC would wake supervisord's loop early)."""
        for path in (self.crash_state / "crashed", self.crash_state / "respawned"):
            path.unlink(missing_ok=True)
        for path in (self.crash_state / "ready").iterdir():
            path.unlink()
        try:
            self.rpc.supervisor.startProcess("crash:crash_00", False)
        except xmlrpc.client.Fault as fault:
            # SPAWN_ERROR: the first run had already exited 1 when the call reaped children
            # ("Bad exit code 1"); the process is EXITED and autorestart respawns it all the same.
            if fault.faultCode != SPAWN_ERROR:
                raise
        respawned = self.crash_state / "respawned"
        wait_for(respawned.exists, WAIT_TIMEOUT, "the respawned php-cli run", interval=0.005)
        latency = (read_stamp(respawned) - read_stamp(self.crash_state / "crashed")) * 1000
        pids = self.pids("crash")
        self.stop_all(pids)
        return latency

    def close(self) -> None:
        """Stop every program, then supervisord; SIGKILL whatever is left."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.rpc.supervisor.stopAllProcesses(True)
        kill_group(self.proc)
        # supervisord puts each child in a process group of its own: kill any survivor by pid.
        for pid in self.seen_pids:
            if pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.proc = None


# --------------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------------


@dataclass
class Samples:
    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, key: str, value: float) -> None:
        self.values.setdefault(key, []).append(value)

    def median(self, key: str) -> float | None:
        values = self.values.get(key)
        return statistics.median(values) if values else None

    def cell(self, key: str, scale: float = 1.0, digits: int = 1) -> str:
        values = self.values.get(key)
        if not values:
            return "n/a"
        med = statistics.median(values) * scale
        if len(values) == 1:
            return f"{med:.{digits}f}"
        return f"{med:.{digits}f} [{min(values) * scale:.{digits}f}-{max(values) * scale:.{digits}f}]"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b <= 0:
        return "n/a"
    return f"{a / b:.1f}x"


def version_info(php: str, supervisord: str) -> str:
    parts = []
    with contextlib.suppress(Exception):
        parts.append("php-cli " + subprocess.run([php, "-r", "echo PHP_VERSION;"], capture_output=True,
                                                 text=True, timeout=10).stdout.strip())
    with contextlib.suppress(Exception):
        parts.append("libphp8.2-embed " + subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", "libphp8.2-embed"], capture_output=True, text=True,
            timeout=10).stdout.strip())
    with contextlib.suppress(Exception):
        parts.append("supervisord " + subprocess.run([supervisord, "--version"], capture_output=True,
                                                     text=True, timeout=10).stdout.strip())
    parts.append(f"Python {sys.version.split()[0]}")
    parts.append(f"{os.cpu_count()} CPUs")
    return ", ".join(parts)


def run(args: argparse.Namespace) -> int:
    php = shutil.which("php8.2") or shutil.which("php")
    supervisord = shutil.which("supervisord")
    redis_server = shutil.which("redis-server")
    if not php or not supervisord or not redis_server:
        print("needs php8.2-cli, supervisor, redis-server and php8.2-redis: "
              "bash scripts/install_deps.sh --bench", file=sys.stderr)
        return 2
    rounds = args.rounds or (3 if args.quick else 10)
    budget = 22.0 if args.quick else 140.0  # seconds; no new round starts after it
    began = time.monotonic()
    load_before = os.getloadavg()[0]
    root = Path(tempfile.mkdtemp(prefix="bench_workers."))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    # A private image cache: frankenpy processes that map the same interpreter copies share their
    # pages, so other frankenpy processes on the machine would lower the PSS measured here.
    env["FRANKENPY_CACHE_DIR"] = str(root / "fp-cache")
    fp_script, cli_script = root / "worker_frankenpy.php", root / "worker_cli.php"
    fp_script.write_text(FRANKENPY_PHP)
    cli_script.write_text(CLI_PHP)
    vt_script = root / "worker_vars_tasks.php"
    vt_script.write_text(VARS_TASKS_PHP)
    fp, sv = Samples(), Samples()
    notes: list[str] = []
    sup = Supervisor(root, php, cli_script)
    redis: RedisBench | None = None
    try:
        redis = RedisBench(root, php, redis_server)
        print(f"temp dir {root}; {rounds} rounds", file=sys.stderr)
        # Warm-up (not counted): writes frankenpy's interpreter copies to its (private) cache,
        # warms the page cache for php-cli.
        warm = run_child("park", fp_script, root / "fp-warm", max(COUNTS), env)
        fp.add("import_ms", float(warm["import_ms"]))  # type: ignore[arg-type]
        subprocess.run([php, "-r", "echo 1;"], capture_output=True, timeout=30, check=True)
        sv.add("launch_ms", sup.launch(supervisord))
        done = 0
        while done < rounds and (done < 1 or time.monotonic() - began < budget):
            print(f"round {done + 1}/{rounds} ...", file=sys.stderr)
            for count in COUNTS:
                res = run_child("park", fp_script, root / f"fp-park-{done}-{count}", count, env)
                check_frankenpy(res, f"park x{count}", notes)
                fp.add(f"ready{count}", float(res["start_ms"]))  # type: ignore[arg-type]
                fp.add(f"stop{count}", float(res["shutdown_ms"]))  # type: ignore[arg-type]
                if "shutdown_workers_ms" in res:
                    fp.add(f"stopw{count}", float(res["shutdown_workers_ms"]))  # type: ignore[arg-type]
                fp.add(f"rss{count}", float(res["rss_kb"]))  # type: ignore[arg-type]
                fp.add(f"pss{count}", float(res["pss_kb"]))  # type: ignore[arg-type]
                fp.add("import_ms", float(res["import_ms"]))  # type: ignore[arg-type]
            res = run_child("crash", fp_script, root / f"fp-crash-{done}", 1, env)
            check_frankenpy(res, "crash", notes)
            fp.add("respawn", float(res["respawn_ms"]))  # type: ignore[arg-type]
            for count in COUNTS:
                ready_ms, pids = sup.start_parked(count)
                if len(pids) != count:
                    notes.append(f"supervisord park{count}: {len(pids)} pids instead of {count}")
                sv.add(f"ready{count}", ready_ms)
                time.sleep(SETTLE)
                mem = [memory_kb(pid) for pid in pids]
                sv.add(f"rss{count}", sum(m[0] for m in mem) / len(mem))
                sv.add(f"pss{count}", sum(m[1] for m in mem) / len(mem))
                exited_ms, returned_ms = sup.stop_all(pids)
                sv.add(f"stop{count}", exited_ms)
                sv.add(f"stoprpc{count}", returned_ms)
            sv.add("respawn", sup.crash_respawn())
            res = run_child("vars-tasks", vt_script, root / f"fp-vt-{done}", 1, env)
            for key in ("getvars_us", "task_p50_us", "task_p99_us"):
                fp.add(key, float(res[key]))  # type: ignore[arg-type]
            trips = redis.round_trips()
            sv.add("redis_p50_us", statistics.median(trips))
            sv.add("redis_p99_us", sorted(trips)[int(len(trips) * 0.99)])
            done += 1
    finally:
        if redis is not None:
            redis.close()
        sup.close()
        leftovers = own_processes(str(root))
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if leftovers:
            print(f"killed leftover processes {leftovers}", file=sys.stderr)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    # frankenpy memory per worker: difference of the medians of fresh processes, / 15.
    n_hi, n_lo = max(COUNTS), min(COUNTS)
    for kind in ("rss", "pss"):
        hi, lo = fp.median(f"{kind}{n_hi}"), fp.median(f"{kind}{n_lo}")
        if hi is not None and lo is not None:
            fp.add(f"{kind}_per_worker", (hi - lo) / (n_hi - n_lo))
        sv.add(f"{kind}_per_worker", sv.median(f"{kind}{n_hi}") or 0.0)
    elapsed = time.monotonic() - began
    table = render_table(fp, sv)
    verdicts = check_targets(fp, sv)
    command = "PYTHONPATH=. python3 scripts/bench_workers.py" + (" --quick" if args.quick else "")
    header = (f"{done} rounds, median [min-max]; {version_info(php, supervisord)}; "
              f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after; "
              f"took {elapsed:.0f} s")
    print()
    print(header)
    print()
    print(table)
    print()
    for line in verdicts:
        print(line)
    for note in notes:
        print(f"note: {note}")
    if not args.no_docs:
        write_docs(command, header, table, verdicts, notes)
        print(f"\nwrote section {SECTION!r} of {DOCS}")
    return 0


def check_frankenpy(res: dict[str, object], what: str, notes: list[str]) -> None:
    """Record anything unexpected in a frankenpy child's statuses."""
    if res.get("states_after_shutdown") != ["stopped"]:
        notes.append(f"frankenpy {what}: states after shutdown {res.get('states_after_shutdown')}")
    if res.get("exit_statuses") != [0]:
        notes.append(f"frankenpy {what}: last exit statuses after shutdown {res.get('exit_statuses')}")
    if what == "crash":
        status = res.get("status")
        if not isinstance(status, dict) or status.get("crashes") != 1 or status.get("state") != "ready":
            notes.append(f"frankenpy crash: status after the respawn {status}")
    elif res.get("states_after_start") != ["ready"]:
        notes.append(f"frankenpy {what}: states after start() {res.get('states_after_start')}")
    if "Traceback" in str(res.get("stderr", "")):
        notes.append(f"frankenpy {what}: traceback on stderr: {str(res['stderr'])[-500:]}")


def render_table(fp: Samples, sv: Samples) -> str:
    rows = [("Measurement", "frankenpy", "supervisord + php-cli", "supervisord / frankenpy")]
    for count in COUNTS:
        rows.append((f"Ready, {count} parked worker(s) (ms)", fp.cell(f"ready{count}"),
                     sv.cell(f"ready{count}"), ratio(sv.median(f"ready{count}"), fp.median(f"ready{count}"))))
    for count in COUNTS:
        rows.append((f"Shutdown to all exited, {count} worker(s) (ms)", fp.cell(f"stop{count}"),
                     sv.cell(f"stop{count}"), ratio(sv.median(f"stop{count}"), fp.median(f"stop{count}"))))
    for count in COUNTS:
        rows.append((f"- supervisord: until stopAllProcesses returned, {count} (ms)", "",
                     sv.cell(f"stoprpc{count}"),
                     ratio(sv.median(f"stoprpc{count}"), fp.median(f"stop{count}"))))
    for count in COUNTS:
        rows.append((f"- of which frankenpy workers drained + joined, {count} (ms)", fp.cell(f"stopw{count}"),
                     "", ""))
    rows.append(("First crash to respawned first line (ms)", fp.cell("respawn", digits=2), sv.cell("respawn"),
                 ratio(sv.median("respawn"), fp.median("respawn"))))
    mb = 1 / 1024
    rows.append(("RSS per worker (MB)", fp.cell("rss_per_worker", mb), sv.cell("rss_per_worker", mb),
                 ratio(sv.median("rss_per_worker"), fp.median("rss_per_worker"))))
    rows.append(("PSS per worker (MB)", fp.cell("pss_per_worker", mb), sv.cell("pss_per_worker", mb),
                 ratio(sv.median("pss_per_worker"), fp.median("pss_per_worker"))))
    for count in (COUNTS[0], COUNTS[-1]):
        rows.append((f"Process RSS / PSS with {count} worker(s) (MB; sv: per php-cli)",
                     f"{fp.cell(f'rss{count}', mb)} / {fp.cell(f'pss{count}', mb)}",
                     f"{sv.cell(f'rss{count}', mb)} / {sv.cell(f'pss{count}', mb)}", ""))
    rows.append(("Not counted: python3 `import frankenpy` / supervisord launch (ms)", fp.cell("import_ms"),
                 sv.cell("launch_ms"), ""))
    rows.append(("frankenphp_get_vars(), 1,000 entries, classic request (us)", fp.cell("getvars_us"), "", ""))
    rows.append(("Task round trip p50: send_task vs Redis LPUSH/BRPOP to php-cli (us)",
                 fp.cell("task_p50_us"), sv.cell("redis_p50_us"),
                 ratio(sv.median("redis_p50_us"), fp.median("task_p50_us"))))
    rows.append(("Task round trip p99 (us)", fp.cell("task_p99_us"), sv.cell("redis_p99_us"),
                 ratio(sv.median("redis_p99_us"), fp.median("task_p99_us"))))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = []
    for index, row in enumerate(rows):
        lines.append("| " + " | ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) + " |")
        if index == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def check_targets(fp: Samples, sv: Samples) -> list[str]:
    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("MET" if ok else "MISSED")

    out = []
    stop_fp, stop_sv = fp.median("stop16"), sv.median("stop16")
    out.append(f"{verdict(None if stop_fp is None else stop_fp < 50)}: shutdown of 16 parked workers "
               f"under 50 ms (frankenpy median {stop_fp or 0:.1f} ms)")
    speedup = None if not stop_fp or stop_sv is None else stop_sv / stop_fp
    rpc_sv = sv.median("stoprpc16")
    out.append(f"{verdict(None if speedup is None else speedup >= 10)}: shutdown of 16 at least 10x faster "
               f"than supervisord ({speedup or 0:.1f}x: php-cli all exited after {stop_sv or 0:.1f} ms vs "
               f"{stop_fp or 0:.1f} ms; {ratio(rpc_sv, stop_fp)} counting until stopAllProcesses "
               f"returned, {rpc_sv or 0:.0f} ms)")
    respawn = fp.median("respawn")
    worst = max(fp.values.get("respawn", [0.0]))
    out.append(f"{verdict(None if respawn is None else respawn < 20)}: first respawn under 20 ms "
               f"(frankenpy median {respawn or 0:.2f} ms, max {worst:.2f} ms; "
               f"supervisord {sv.median('respawn') or 0:.0f} ms)")
    for kind, label in (("pss", "PSS (the fair comparison)"), ("rss", "RSS")):
        mine, theirs = fp.median(f"{kind}_per_worker"), sv.median(f"{kind}_per_worker")
        ok = None if mine is None or theirs is None else mine < theirs / 2
        out.append(f"{verdict(ok)}: memory per worker below half of a php-cli process, by {label}: "
                   f"{(mine or 0) / 1024:.2f} MB vs {(theirs or 0) / 1024:.2f} MB / 2 = "
                   f"{(theirs or 0) / 2048:.2f} MB")
    getvars = fp.median("getvars_us")
    out.append(f"{verdict(None if getvars is None else getvars <= 50)}: frankenphp_get_vars() of a "
               f"1,000-entry array from a classic request <= 50 us ({getvars or 0:.1f} us)")
    task, redis = fp.median("task_p50_us"), sv.median("redis_p50_us")
    out.append(f"{verdict(None if task is None or redis is None else task <= redis / 2)}: task round trip "
               f"p50 <= half of a Redis LPUSH/BRPOP round trip to php-cli ({task or 0:.1f} us vs "
               f"{redis or 0:.1f} us / 2 = {(redis or 0) / 2:.1f} us)")
    return out


def write_docs(command: str, header: str, table: str, verdicts: list[str], notes: list[str]) -> None:
    today = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    body = [
        SECTION,
        "",
        f"Command: `{command}` (run {today}). {header}.",
        "",
        "Same PHP logic both ways: a frankenpy background worker parked in `stream_select` on",
        "`frankenphp_get_worker_handle()`, and php-cli (stock CLI ini) under supervisord parked in",
        "`stream_select` on STDIN with a `pcntl_async_signals` SIGTERM handler. frankenpy is measured",
        "in fresh processes (`Runtime(num_threads=1)` + N workers); supervisord via XML-RPC on its unix",
        "socket (`startProcessGroup`; `stopAllProcesses(wait=True)`: compared until every php-cli pid",
        "has exited, the time until the call returned is shown too;",
        "`autorestart=true`, `startsecs=0` for the crash). frankenpy memory per worker is",
        "(process with 16 workers - process with 1 worker) / 15; supervisord's is the sum over the 16",
        "php-cli processes / 16.",
        "",
        table,
        "",
        "Targets:",
        "",
        *(f"- {line}" for line in verdicts),
        "",
        "Reading the numbers:",
        "",
        "- frankenpy's `rt.shutdown()` drains and joins the workers (row \"of which ... drained +",
        "  joined\") and then shuts down every interpreter (17 with 16 workers: `num_threads=1` plus",
        "  one per worker); the rest of the shutdown time is that interpreter teardown.",
        "- Likewise \"Ready, 1\" starts two interpreters in frankenpy.",
        "- supervisord answers `stopAllProcesses(wait=True)` (and `supervisorctl stop all`) and",
        "  respawns exited programs on ticks of its 1 s main loop; it reaps after running the",
        "  transitions of that loop iteration, so a respawn takes one or two ticks.",
        "- frankenpy's interpreter copies map their read-only pages from /usr/lib/libphp8.2.so (and",
        "  extension templates) once verified equal, so every PHP thread shares libphp's text; what",
        "  each worker adds is its writable data and heap. `FRANKENPY_SHARE_PAGES=0` shows the cost",
        "  before that sharing.",
        "- Shared vars and tasks: `frankenphp_get_vars()` is timed inside PHP (`hrtime()`) around the",
        "  first call of each of 300 classic requests (it copies the snapshot into the request's",
        "  heap; later calls in the same request return that copy). A task round trip is",
        "  `rt.send_task()` from Python to a background worker parked on its handle and back (2,000",
        "  tasks after 200 warm-up); Redis: LPUSH of a JSON payload from Python (RESP on a plain",
        "  socket) to a php-cli worker on `brPop` (php8.2-redis) that LPUSHes the answer, which",
        "  Python BRPOPs: the way PHP applications hand work to workers today.",
        "- The machine is shared and drifts: compare the ratios of one run, not runs with each other.",
    ]
    if notes:
        body += ["", "Notes from the run:", "", *(f"- {note}" for note in notes)]
    text = "\n".join(body) + "\n"
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    existing = DOCS.read_text() if DOCS.exists() else ""
    if SECTION in existing:
        # Replace our own section only (up to the next "## " heading); leave the rest untouched.
        start = existing.index(SECTION)
        end = existing.find("\n## ", start + len(SECTION))
        rest = existing[end + 1:] if end != -1 else ""
        DOCS.write_text(existing[:start] + text + ("\n" + rest if rest else ""))
    else:
        with open(DOCS, "a") as docs:
            if not existing:
                docs.write("# Benchmarks\n\n")
            elif not existing.endswith("\n\n"):
                docs.write("\n" if existing.endswith("\n") else "\n\n")
            docs.write(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds (about 30 s)")
    parser.add_argument("--rounds", type=int, default=0, help="rounds (default 10, --quick 3)")
    parser.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    parser.add_argument("--child", nargs=4, metavar=("MODE", "SCRIPT", "STATE", "COUNT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        mode, script, state, count = args.child
        if mode == "vars-tasks":
            result = vars_tasks_child(script)
        else:
            result = child_main(mode, script, state, int(count))
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
