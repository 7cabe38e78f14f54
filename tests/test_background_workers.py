"""Background workers (FrankenPHP PR 2398) on real PHP: lifecycle, crashes and backoff, halting,
restarts, scopes, metrics, validation.

Every test writes its PHP scripts under ``tmp_path`` and watches the PHP side through sentinel
files (the scripts get the directory as ``$_SERVER['OUT']``/``getenv('OUT')``).  Waits poll with a
deadline (:func:`wait_for`) rather than sleeping a fixed time; bounds are generous because other
test suites may share the machine's two cores.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_for

import frankenpy

# PHP helpers every worker script gets: park() blocks on the handle until the host drains the
# worker (a read returns '' / feof), out() names a file in the test's sentinel directory.
PRELUDE = r"""<?php
function out(string $name): string { return getenv('OUT') . '/' . $name; }
function park($h): void {
    while (!feof($h)) {
        $r = [$h]; $w = $e = null;
        $n = @stream_select($r, $w, $e, 5);
        if ($n > 0) {
            $data = fread($h, 8192);
            if ($data === '' || $data === false || feof($h)) {
                return;
            }
        }
    }
}
"""

HANDLE_ERROR = "frankenphp_get_worker_handle() can only be called from a background worker"


# --- helpers ----------------------------------------------------------------------------------------


def status(rt: frankenpy.Runtime, name: str, scope: int = frankenpy.GLOBAL_SCOPE) -> frankenpy.WorkerStatus:
    matches = [s for s in rt.workers() if s.name == name and s.scope == scope]
    assert len(matches) == 1, rt.workers()
    return matches[0]


def worker_threads(name: str) -> list[str]:
    """Python threads still running worker ``name`` (the lifecycle names them worker-<name>-<i>)."""
    return [t.name for t in threading.enumerate() if t.name.startswith(f"worker-{name}-") and t.is_alive()]


_SAMPLE = re.compile(
    r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{worker="(?P<worker>[^"]*)"\})? (?P<value>\S+)$'
)


def parse_metrics(text: str) -> dict[tuple[str, str | None], float]:
    samples: dict[tuple[str, str | None], float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        assert match, f"unparsable metrics line: {line!r}"
        samples[(match["name"], match["worker"])] = float(match["value"])
    return samples


def sample(samples: dict[tuple[str, str | None], float], family: str, worker: str) -> float:
    """A worker's sample of ``family``; counters may carry the exposition format's ``_total``."""
    for name in (family, family + "_total"):
        if (name, worker) in samples:
            return samples[(name, worker)]
    raise AssertionError(f"no {family}{{worker={worker!r}}} sample in {sorted(samples)}")


class Records(logging.Handler):
    """Collects the records of one logger (thread-safe enough: list.append)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


# --- fixtures ---------------------------------------------------------------------------------------
@pytest.fixture
def out(tmp_path: Path) -> Path:
    """The sentinel directory the PHP scripts write into."""
    directory = tmp_path / "out"
    directory.mkdir()
    return directory


@pytest.fixture
def script(tmp_path: Path) -> Callable[[str, str], Path]:
    """``script(body, name)`` writes PRELUDE + dedented ``body`` to ``tmp_path/name``."""

    def factory(body: str, name: str = "worker.php") -> Path:
        path = tmp_path / name
        path.write_text(PRELUDE + textwrap.dedent(body).lstrip("\n"))
        return path

    return factory


@pytest.fixture
def runtime_factory(out: Path) -> Iterator[Callable[..., frankenpy.Runtime]]:
    """``runtime_factory(*workers, start=True, num_threads=1, **kwargs)``: a Runtime (started
    unless ``start=False``), shut down when the test ends whatever happened."""
    runtimes: list[frankenpy.Runtime] = []

    def factory(*workers: frankenpy.Worker, start: bool = True, num_threads: int = 1,
                **kwargs: Any) -> frankenpy.Runtime:
        rt = frankenpy.Runtime(num_threads=num_threads, workers=list(workers), **kwargs)
        runtimes.append(rt)
        if start:
            rt.start()
        return rt

    yield factory
    for rt in reversed(runtimes):
        rt.shutdown(grace=2.0)


@pytest.fixture
def worker_log() -> Iterator[Records]:
    """Records of the "frankenpy.workers" logger during the test."""
    handler = Records()
    log = logging.getLogger("frankenpy.workers")
    previous = log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    yield handler
    log.removeHandler(handler)
    log.setLevel(previous)


def bg(name: str, path: Path, out: Path, **kwargs: Any) -> frankenpy.Worker:
    """A background worker declaration whose script writes its sentinels into ``out``."""
    env = {"OUT": str(out), **kwargs.pop("env", {})}
    return frankenpy.Worker(name, str(path), background=True, env=env, **kwargs)


PARK = """
touch(out('ready'));
park(frankenphp_get_worker_handle());
touch(out('stopped'));
"""


# --- the seed PR's tests ---------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_background_worker_lifecycle(runtime_factory, script, out):
    path = script("""
        touch(out('started'));
        $h = frankenphp_get_worker_handle();
        park($h);
        file_put_contents(out('stopped'), 'cleanup after the loop');
    """)
    rt = runtime_factory(bg("lifecycle", path, out))
    wait_for((out / "started").exists, 5.0, "the worker's sentinel")
    wait_for(lambda: status(rt, "lifecycle").state == "ready", 5.0, "state ready")
    assert not (out / "stopped").exists()  # parked on the handle

    began = time.monotonic()
    rt.shutdown()
    assert time.monotonic() - began < 10.0
    assert (out / "stopped").read_text() == "cleanup after the loop"
    assert status(rt, "lifecycle").state == "stopped"
    assert status(rt, "lifecycle").crashes == 0
    assert worker_threads("lifecycle") == []


@pytest.mark.timeout(30)
def test_background_worker_crash_restarts(runtime_factory, script, out):
    path = script("""
        if (!file_exists(out('first-boot'))) {
            touch(out('first-boot'));
            exit(1);
        }
        touch(out('restarted'));
        park(frankenphp_get_worker_handle());
    """)
    rt = runtime_factory(bg("crashy", path, out))
    wait_for((out / "restarted").exists, 5.0, "the respawned run's 'restarted' sentinel")
    wait_for(lambda: status(rt, "crashy").state == "ready", 5.0, "state ready")
    st = status(rt, "crashy")
    assert st.crashes == 1
    assert st.failures == 1
    assert st.last_exit_status == 1


@pytest.mark.timeout(30)
def test_background_worker_without_http(runtime_factory, script, out, tmp_path):
    # The HTTP variant (a request over the WSGI app next to a background worker) lives in the
    # HTTP tests; here a regular execution on the runtime still serves beside the worker.
    path = script(PARK)
    rt = runtime_factory(bg("beside", path, out))
    wait_for((out / "ready").exists, 5.0, "the worker's sentinel")

    result = rt.execute_code("echo 'regular ', 6 * 7;")
    assert result.ok, result.errors
    assert result.output == b"regular 42"
    page = tmp_path / "page.php"
    page.write_text("<?php echo isset($_SERVER['FRANKENPHP_WORKER']) ? 'worker' : 'plain';")
    result = rt.execute_file(page)
    assert result.ok, result.errors
    assert result.output == b"plain"
    assert status(rt, "beside").state == "ready"  # the worker did not take the execution


@pytest.mark.timeout(30)
def test_background_worker_same_name_different_scope(runtime_factory, script, out):
    path = script("""
        touch(out(getenv('SENTINEL')));
        park(frankenphp_get_worker_handle());
    """)
    scope_a, scope_b = frankenpy.next_scope(), frankenpy.next_scope()
    rt = runtime_factory(
        bg("shared", path, out, scope=scope_a, env={"SENTINEL": "a"}),
        bg("shared", path, out, scope=scope_b, env={"SENTINEL": "b"}),
    )
    wait_for(lambda: (out / "a").exists() and (out / "b").exists(), 5.0, "both scopes' sentinels")
    statuses = [s for s in rt.workers() if s.name == "shared"]
    assert len(statuses) == 2
    assert {s.scope for s in statuses} == {scope_a, scope_b}
    wait_for(lambda: all(s.state == "ready" for s in rt.workers()), 5.0, "both ready")


def test_next_scope_is_distinct():
    scopes = [frankenpy.next_scope() for _ in range(10)]
    assert len(set(scopes)) == len(scopes)
    assert all(scope != 0 and scope != frankenpy.GLOBAL_SCOPE for scope in scopes)
    assert frankenpy.GLOBAL_SCOPE == 0


# --- exit statuses, backoff, halting ---------------------------------------------------------------
@pytest.mark.timeout(30)
def test_exit_zero_restarts_without_counting_failures(runtime_factory, script, out):
    path = script("""
        file_put_contents(out('runs'), "run\\n", FILE_APPEND);
        frankenphp_get_worker_handle();
        usleep(20000);
        exit(0);
    """)
    rt = runtime_factory(bg("cooperative", path, out))
    wait_for(lambda: status(rt, "cooperative").restarts >= 3, 5.0, "3 cooperative restarts")
    st = status(rt, "cooperative")
    assert st.crashes == 0
    assert st.failures == 0
    assert st.state != "halted"
    assert st.last_error is None
    assert (out / "runs").read_text().count("run") >= 4


def test_backoff_delay_values():
    expected = [0.0, 0.1, 0.4, 0.9, 1.0, 1.0]
    assert [frankenpy.backoff_delay(n) for n in range(6)] == pytest.approx(expected)
    assert frankenpy.backoff_delay(50) == pytest.approx(1.0)


@pytest.mark.timeout(30)
def test_backoff_sequence_observed(runtime_factory, script, out):
    path = script("""
        file_put_contents(out('runs'), sprintf("%.6F\\n", microtime(true)), FILE_APPEND);
        exit(1);
    """)
    rt = runtime_factory(bg("backoff", path, out, max_consecutive_failures=-1), start_timeout=0.5)

    def runs() -> list[float]:
        path = out / "runs"
        return [float(x) for x in path.read_text().split()] if path.exists() else []

    times = wait_for(lambda: (r := runs()) and len(r) >= 4 and r, 5.0, "4 runs of the crashing script")
    gaps = [b - a for a, b in itertools.pairwise(times)][:3]
    assert gaps[0] < 0.080, gaps
    assert 0.060 < gaps[1] < 0.300, gaps
    assert 0.300 < gaps[2] < 0.800, gaps
    assert status(rt, "backoff").state != "halted"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("cap", [0, 1])
def test_start_raises_when_worker_halts_during_start(runtime_factory, script, out, cap):
    path = script("""
        file_put_contents(out('runs'), "run\\n", FILE_APPEND);
        exit(3);
    """)
    name = f"doomed{cap}"
    rt = runtime_factory(bg(name, path, out, max_consecutive_failures=cap), start=False)
    began = time.monotonic()
    with pytest.raises(RuntimeError) as info:
        rt.start()
    assert time.monotonic() - began < 5.0
    message = str(info.value)
    assert repr(name) in message or name in message
    assert "exit status 3" in message
    assert (out / "runs").read_text().count("run") == cap + 1
    # Nothing left running.
    assert rt.state == "stopped"
    assert worker_threads(name) == []
    with pytest.raises(RuntimeError):
        rt.execute_code("echo 1;")
    rt.shutdown()  # still fine


HALTS_AFTER_READY = """
    $runs = file_exists(out('runs')) ? (int) file_get_contents(out('runs')) : 0;
    file_put_contents(out('runs'), (string) ($runs + 1));
    if (file_exists(out('fixed')) || $runs === 0) {
        touch(out('ready-' . ($runs + 1)));
        $h = frankenphp_get_worker_handle();   // ready
        if (!file_exists(out('fixed'))) {
            while (!file_exists(out('crash-now'))) { usleep(10000); }
            exit(1);
        }
        park($h);
        exit(0);
    }
    exit(1);                                    // every later run crashes before the handle
"""


@pytest.mark.timeout(30)
def test_worker_halts_at_cap_after_ready(runtime_factory, script, out, worker_log):
    path = script(HALTS_AFTER_READY)
    rt = runtime_factory(bg("halter", path, out, max_consecutive_failures=2))
    assert status(rt, "halter").state == "ready"  # start() waited for the handle
    (out / "crash-now").touch()

    wait_for(lambda: status(rt, "halter").state == "halted", 5.0, "state halted")
    st = status(rt, "halter")
    assert st.crashes == 3  # failures 0 and 1 respawn (0 ms, 100 ms), the third crash halts
    assert st.last_exit_status == 1
    assert st.last_error and "exit status 1" in st.last_error
    wait_for(lambda: worker_threads("halter") == [], 5.0, "the halted loop to end")
    # It does not respawn any more.
    runs = int((out / "runs").read_text())
    assert runs == 3
    time.sleep(0.3)
    assert int((out / "runs").read_text()) == runs
    assert status(rt, "halter").state == "halted"

    errors = [r for r in worker_log.records
              if r.levelno >= logging.ERROR and getattr(r, "worker", None) == "halter"]
    assert errors, [r.getMessage() for r in worker_log.records]
    assert "halter" in errors[-1].getMessage()
    assert "halt" in errors[-1].getMessage()


@pytest.mark.timeout(30)
def test_restart_workers_revives_halted_worker(runtime_factory, script, out):
    path = script(HALTS_AFTER_READY)
    rt = runtime_factory(bg("phoenix", path, out, max_consecutive_failures=1))
    (out / "crash-now").touch()
    wait_for(lambda: status(rt, "phoenix").state == "halted", 5.0, "state halted")
    wait_for(lambda: worker_threads("phoenix") == [], 5.0, "the halted loop to end")

    (out / "fixed").touch()
    statuses = rt.restart_workers()
    st = next(s for s in statuses if s.name == "phoenix")
    assert st.state == "ready"
    wait_for(lambda: status(rt, "phoenix").state == "ready", 5.0, "state ready after restart")
    runs = int((out / "runs").read_text())
    assert (out / f"ready-{runs}").exists()
    assert status(rt, "phoenix").failures == 0
    assert worker_threads("phoenix") != []


class SlowHaltLog(logging.Handler):
    """Holds the worker's thread for a moment in its "halted" error log line: the status already
    says halted while the thread has not finished yet."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR and "halted" in record.getMessage():
            time.sleep(0.3)


@pytest.mark.timeout(30)
def test_restart_workers_right_after_halt(runtime_factory, script, out):
    # A caller that restarts as soon as it sees state "halted" must get the worker back too.
    # The slow log handler only widens a window that exists without it (about 1 run in 12 of
    # the test above hit it before that test waited for the thread to end).
    path = script(HALTS_AFTER_READY)
    slow = SlowHaltLog()
    log = logging.getLogger("frankenpy.workers")
    log.addHandler(slow)
    try:
        rt = runtime_factory(bg("quick", path, out, max_consecutive_failures=0), start_timeout=2.0)
        (out / "crash-now").touch()
        wait_for(lambda: status(rt, "quick").state == "halted", 5.0, "state halted", interval=0.002)
        (out / "fixed").touch()
        statuses = rt.restart_workers()
    finally:
        log.removeHandler(slow)
    assert next(s for s in statuses if s.name == "quick").state == "ready"
    assert status(rt, "quick").state == "ready"
    assert worker_threads("quick") != []


@pytest.mark.timeout(30)
def test_unlimited_failures_never_halt(runtime_factory, script, out):
    path = script("exit(1);\n")
    rt = runtime_factory(bg("forever", path, out, max_consecutive_failures=-1), start_timeout=0.3)
    states: set[str] = set()

    def crashed_enough() -> bool:
        st = status(rt, "forever")
        states.add(st.state)
        return st.crashes >= 6

    # Backoff 0, 0.1, 0.4, 0.9, 1 s: the 6th crash comes about 2.4 s after the first.
    wait_for(crashed_enough, 8.0, "6 crashes")
    assert "halted" not in states
    st = status(rt, "forever")
    assert st.state != "halted"
    assert st.failures >= 5  # a cap of 2..5 would have halted it by now
    assert worker_threads("forever") != []


# --- drains -----------------------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_shutdown_force_stops_stuck_worker(runtime_factory, script, out):
    path = script("""
        frankenphp_get_worker_handle();
        touch(out('sleeping'));
        sleep(60);                       // never looks at the handle
        touch(out('woke'));
    """)
    rt = runtime_factory(bg("sleeper", path, out))
    wait_for((out / "sleeping").exists, 5.0, "the worker to go to sleep")
    began = time.monotonic()
    rt.shutdown(grace=0.5)
    elapsed = time.monotonic() - began
    assert elapsed < 5.0, elapsed
    assert rt.state == "stopped"
    assert worker_threads("sleeper") == []
    assert status(rt, "sleeper").state == "stopped"


@pytest.mark.timeout(30)
def test_repeated_handle_calls_share_the_stream(runtime_factory, script, out):
    path = script("""
        $a = frankenphp_get_worker_handle();
        $b = frankenphp_get_worker_handle();
        file_put_contents(out('ids'), json_encode([get_resource_id($a), get_resource_id($b)]));
        park($a);
        $ra = fread($a, 10); $rb = fread($b, 10);
        file_put_contents(out('drained'), json_encode([
            'a' => $ra, 'b' => $rb, 'eof_a' => feof($a), 'eof_b' => feof($b),
        ]));
    """)
    rt = runtime_factory(bg("twice", path, out))
    ids = json.loads(wait_for(lambda: (out / "ids").exists() and (out / "ids").read_text(), 5.0, "ids"))
    assert ids[0] == ids[1]
    rt.shutdown(grace=5.0)
    drained = json.loads((out / "drained").read_text())
    assert drained == {"a": "", "b": "", "eof_a": True, "eof_b": True}


@pytest.mark.timeout(30)
def test_handle_outside_background_worker_throws(runtime_factory):
    rt = runtime_factory()
    result = rt.execute_code("""
        try {
            frankenphp_get_worker_handle();
            echo 'no exception';
        } catch (RuntimeException $e) {
            echo get_class($e), '|', $e->getMessage();
        }
    """)
    assert result.ok, result.errors
    assert result.output.decode() == f"RuntimeException|{HANDLE_ERROR}"

    uncaught = rt.execute_code("frankenphp_get_worker_handle();")
    assert uncaught.exit_status == 255
    assert any(HANDLE_ERROR in e for e in uncaught.errors), uncaught.errors


@pytest.mark.timeout(30)
def test_worker_server_variables_and_env(runtime_factory, script, out):
    path = script("""
        file_put_contents(out('server'), json_encode([
            'worker' => $_SERVER['FRANKENPHP_WORKER'] ?? null,
            'background' => $_SERVER['FRANKENPHP_WORKER_BACKGROUND'] ?? null,
            'getenv' => getenv('GREETING'),
            'server' => $_SERVER['GREETING'] ?? null,
        ]));
        park(frankenphp_get_worker_handle());
    """)
    runtime_factory(bg("vars", path, out, env={"GREETING": "hello bg"}))
    text = wait_for(lambda: (out / "server").exists() and (out / "server").read_text(), 5.0, "server dump")
    assert json.loads(text) == {
        "worker": "vars", "background": True, "getenv": "hello bg", "server": "hello bg",
    }


# --- validation -------------------------------------------------------------------------------------
def test_validation_rules(tmp_path):
    php = tmp_path / "w.php"
    php.write_text("<?php\n")
    file = str(php)

    def declare(*workers: frankenpy.Worker) -> frankenpy.Runtime:
        return frankenpy.Runtime(num_threads=1, workers=list(workers))

    with pytest.raises(ValueError, match="name") as info:
        declare(frankenpy.Worker("", file, background=True))
    assert file in str(info.value)  # no name to give: the message names the script

    with pytest.raises(ValueError, match=r"'negative'.*num must be >= 0"):
        declare(frankenpy.Worker("negative", file, num=-1, background=True))
    with pytest.raises(ValueError, match=r"'http'.*num must be >= 1"):
        declare(frankenpy.Worker("http", file, num=0))  # lazy start is for background workers
    declare(frankenpy.Worker("zero", file, num=0, background=True))  # lazy: allowed
    with pytest.raises(ValueError, match=r"name is required"):
        declare(frankenpy.Worker(None, file))  # only a background worker may be a catch-all
    with pytest.raises(ValueError, match=r"catch-all.*already has a catch-all"):
        declare(frankenpy.Worker(None, file, background=True), frankenpy.Worker(None, file, background=True))
    for option in ("max_workers", "max_queued_tasks"):
        with pytest.raises(ValueError, match=rf"{option} must be >= 1"):
            declare(frankenpy.Worker(None, file, background=True, **{option: 0}))

    with pytest.raises(ValueError, match=r"'dup'.*already declared"):
        declare(frankenpy.Worker("dup", file, background=True),
                frankenpy.Worker("dup", file, background=True))

    scope = frankenpy.next_scope()
    rt = declare(frankenpy.Worker("dup", file, background=True),
                 frankenpy.Worker("dup", file, background=True, scope=scope))
    assert len(rt.workers_group.workers) == 2

    missing = tmp_path / "nowhere" / "missing.php"
    with pytest.raises(FileNotFoundError, match=r"'lost'") as info:
        declare(frankenpy.Worker("lost", str(missing), background=True))
    assert str(missing) in str(info.value)

    with pytest.raises(ValueError, match=r"'capped'.*max_consecutive_failures"):
        declare(frankenpy.Worker("capped", file, background=True, max_consecutive_failures=-2))
    declare(frankenpy.Worker("capped", file, background=True, max_consecutive_failures=-1))

    with pytest.raises(ValueError, match=r"'routed'.*match"):
        declare(frankenpy.Worker("routed", file, background=True, match="/api/*"))


# --- metrics ----------------------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_metric_names_and_values(runtime_factory, script, out):
    steady = script(PARK, "steady.php")
    flaky = script("""
        $runs = file_exists(out('flaky-runs')) ? (int) file_get_contents(out('flaky-runs')) : 0;
        file_put_contents(out('flaky-runs'), (string) ($runs + 1));
        if ($runs < 2) {
            exit(1);
        }
        park(frankenphp_get_worker_handle());
    """, "flaky.php")
    label = f"site-{os.getpid()}-{time.monotonic_ns()}"
    scope = frankenpy.next_scope()
    frankenpy.set_scope_label(scope, label)
    rt = runtime_factory(bg("steady", steady, out), bg("flaky", flaky, out, scope=scope))
    global_name, scoped_name = "m#:steady", f"m#{label}:flaky"
    assert status(rt, "steady").metric_name == global_name
    assert status(rt, "flaky", scope).metric_name == scoped_name
    assert status(rt, "flaky", scope).label == label

    text = rt.metrics_text()
    assert f'frankenphp_total_workers{{worker="{global_name}"}} 1' in text
    assert f'frankenphp_total_workers{{worker="{scoped_name}"}} 1' in text
    samples = parse_metrics(text)
    assert sample(samples, "frankenphp_ready_workers", global_name) == 1
    assert sample(samples, "frankenphp_ready_workers", scoped_name) == 1
    assert sample(samples, "frankenphp_worker_crashes", global_name) == 0
    assert sample(samples, "frankenphp_worker_crashes", scoped_name) == 2
    assert sample(samples, "frankenphp_worker_restarts", global_name) == 0
    assert sample(samples, "frankenphp_worker_restarts", scoped_name) == 0
    assert all(value >= 0 for value in samples.values()), samples

    rt.restart_workers()
    samples = parse_metrics(rt.metrics_text())
    for name in (global_name, scoped_name):
        assert sample(samples, "frankenphp_ready_workers", name) == 1
        assert sample(samples, "frankenphp_worker_restarts", name) == 1
        assert sample(samples, "frankenphp_total_workers", name) == 1
    assert sample(samples, "frankenphp_worker_crashes", scoped_name) == 2
    assert all(value >= 0 for value in samples.values()), samples

    rt.shutdown(grace=5.0)
    samples = parse_metrics(rt.metrics_text())
    for name in (global_name, scoped_name):
        assert sample(samples, "frankenphp_ready_workers", name) == 0
    assert all(value >= 0 for value in samples.values()), samples


# --- resources and concurrency ----------------------------------------------------------------------
def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.timeout(60)
def test_restart_cycles_do_not_leak_fds(runtime_factory, script, out):
    path = script("""
        frankenphp_get_worker_handle();
        exit(0);
    """)
    before = open_fds()
    rt = runtime_factory(bg("cycler", path, out))
    wait_for(lambda: status(rt, "cycler").restarts >= 10, 10.0, "10 restarts")
    after_start = open_fds()
    wait_for(lambda: status(rt, "cycler").restarts >= 200, 30.0, "200 restarts")
    assert status(rt, "cycler").crashes == 0
    during = open_fds()
    assert abs(during - before) <= 4 + 4, (before, after_start, during)  # + the runtime's own fds
    assert abs(during - after_start) <= 4, (before, after_start, during)
    rt.shutdown(grace=5.0)
    assert abs(open_fds() - before) <= 4, (before, open_fds())


@pytest.mark.timeout(30)
def test_regular_execution_during_restart_workers(runtime_factory, script, out):
    path = script("""
        park(frankenphp_get_worker_handle());
        if (!file_exists(out('slept'))) {   // the first drain has a slow cleanup (about 1 s)
            touch(out('draining'));
            usleep(1000000);
            touch(out('slept'));
            unlink(out('draining'));
        }
        exit(0);
    """)
    rt = runtime_factory(bg("slowdrain", path, out))
    results: list[Any] = []
    restarter = threading.Thread(target=lambda: results.append(rt.restart_workers(grace=6.0)))
    restarter.start()
    try:
        wait_for((out / "draining").exists, 5.0, "the worker to start draining")
        for i in range(5):
            result = rt.execute_code(f"echo 'during restart {i}';", timeout=5.0)
            assert result.ok, result.errors
            assert result.output == f"during restart {i}".encode()
        assert restarter.is_alive()  # those executions were served while the restart ran
    finally:
        restarter.join(15.0)
    assert not restarter.is_alive()
    st = status(rt, "slowdrain")
    assert st.state == "ready"
    assert st.restarts == 1
    assert st.crashes == 0
    assert rt.execute_code("echo 'after';").output == b"after"
