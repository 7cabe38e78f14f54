"""Background workers beyond PR 2398 (issue 10), on real PHP: lazy start, ensure, catch-all
workers, shared vars, tasks, their errors, metrics and statuses.

Worker scripts get the test's sentinel directory as ``getenv('OUT')``; waits poll with a
deadline; bounds are generous (other suites may share the two cores).
"""

from __future__ import annotations

import asyncio
import json
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
from frankenpy.worker_state import decode, encode

PRELUDE = r"""<?php
function out(string $name): string { return getenv('OUT') . '/' . $name; }
// The seed's loop: park on the handle, one unit of work per wake-up, leave at EOF.
function serve(callable $work): void {
    $h = frankenphp_get_worker_handle();
    while (true) {
        $r = [$h]; $w = $e = [];
        if (stream_select($r, $w, $e, 1) > 0 && fread($h, 1) === '') {
            break;
        }
        $work();
    }
}
// Answer every waiting task with what $answer returns.
function answer_tasks(callable $answer): void {
    while (($task = frankenphp_receive_task()) !== null) {
        frankenphp_complete_task($task['id'], $answer($task['payload']));
    }
}
"""

ECHO = """
frankenphp_set_vars(['name' => $_SERVER['FRANKENPHP_WORKER'], 'pid' => getmypid()]);
serve(function () {
    answer_tasks(fn ($p) => ['echo' => $p, 'by' => $_SERVER['FRANKENPHP_WORKER']]);
});
"""


@pytest.fixture
def out(tmp_path: Path) -> Path:
    directory = tmp_path / "out"
    directory.mkdir()
    return directory


@pytest.fixture
def script(tmp_path: Path) -> Callable[..., str]:
    def factory(body: str, name: str = "worker.php") -> str:
        path = tmp_path / name
        path.write_text(PRELUDE + textwrap.dedent(body).lstrip("\n"))
        return str(path)

    return factory


@pytest.fixture
def runtime(out: Path) -> Iterator[Callable[..., frankenpy.Runtime]]:
    """``runtime(*workers, num_threads=2, grace=3.0, **kwargs)``: a started runtime, shut down
    at the end with ``grace`` (short for scripts that never look at their handle: they are
    force-stopped once it is over)."""
    started: list[tuple[frankenpy.Runtime, float]] = []

    def factory(*workers: frankenpy.Worker, num_threads: int = 2, grace: float = 3.0,
                **kwargs: Any) -> frankenpy.Runtime:
        rt = frankenpy.Runtime(num_threads=num_threads, workers=list(workers),
                               env={"OUT": str(out)}, **kwargs)
        started.append((rt, grace))
        rt.start()
        return rt

    yield factory
    for rt, grace in reversed(started):
        rt.shutdown(grace=grace)


def bg(name: str | None, path: str, **kwargs: Any) -> frankenpy.Worker:
    return frankenpy.Worker(name, path, background=True, **kwargs)


def php(rt: frankenpy.Runtime, code: str, timeout: float = 20.0) -> Any:
    """Run ``code`` as a regular execution; it must echo JSON, which is returned decoded."""
    result = rt.execute_code(code, timeout=timeout)
    assert result.exit_status == 0, (result.errors, result.output)
    return json.loads(result.output)


def php_error(rt: frankenpy.Runtime, call: str) -> dict[str, str]:
    """Run ``call`` (a PHP expression) and return the class and message of what it threw."""
    return php(rt, f"""
        try {{ {call}; echo json_encode(['class' => 'none']); }}
        catch (Throwable $e) {{
            echo json_encode(['class' => get_class($e), 'message' => $e->getMessage()]);
        }}
    """)


def state(rt: frankenpy.Runtime, name: str) -> str:
    return next(s.state for s in rt.workers() if s.name == name)


# --- lazy start and ensure ------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_lazy_worker_is_idle_until_ensured(runtime, script, out):
    path = script("touch(out('booted-' . $_SERVER['FRANKENPHP_WORKER']));\n" + ECHO)
    rt = runtime(bg("lazy", path, num=0))
    assert state(rt, "lazy") == "idle"
    assert "frankenphp_total_workers{worker=\"m#:lazy\"} 0" in rt.metrics_text()
    time.sleep(0.3)
    assert not (out / "booted-lazy").exists()  # nothing ran

    rt.ensure_background_worker("lazy")
    assert state(rt, "lazy") == "ready"
    assert (out / "booted-lazy").exists()
    rt.ensure_background_worker(["lazy"])  # already running: returns at once


@pytest.mark.timeout(30)
def test_php_ensure_starts_a_lazy_worker_and_waits_until_ready(runtime, script, out):
    path = script("usleep(300000);\n" + ECHO)  # a slow boot: the call must wait for it
    rt = runtime(bg("slow", path, num=0), bg("other", path, num=0))
    assert php(rt, "frankenphp_ensure_background_worker(['slow', 'other'], 10.0); echo 1;") == 1
    assert state(rt, "slow") == "ready" and state(rt, "other") == "ready"


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("call", "cls", "message"), [
    ("frankenphp_ensure_background_worker([])", "ValueError", "must not be an empty array"),
    ("frankenphp_ensure_background_worker('')", "ValueError", "must not be empty"),
    ("frankenphp_ensure_background_worker(['w', ''])", "ValueError", "empty name"),
    ("frankenphp_ensure_background_worker(['w', 'w'])", "ValueError", "twice"),
    ("frankenphp_ensure_background_worker('w', 0.0)", "ValueError", "greater than 0"),
    ("frankenphp_ensure_background_worker('w', -1.0)", "ValueError", "greater than 0"),
    ("frankenphp_ensure_background_worker(['w', 42])", "TypeError", "must contain only strings"),
    ("frankenphp_ensure_background_worker('nope', 5.0)", "RuntimeException",
     "unknown background worker 'nope'"),
])
def test_php_ensure_errors(runtime, script, call, cls, message):
    rt = runtime(bg("w", script(ECHO), num=0))
    error = php_error(rt, call)
    assert error["class"] == cls, error
    assert message in error["message"]
    assert state(rt, "w") == "idle"  # a rejected call starts nothing


@pytest.mark.timeout(30)
def test_python_ensure_errors(runtime, script):
    rt = runtime(bg("w", script(ECHO), num=0))
    for names, exc, message in [
        ([], ValueError, "empty"), ("", ValueError, "empty"), (["w", "w"], ValueError, "twice"),
        (["w", 3], TypeError, "str"), (7, TypeError, "str"),
    ]:
        with pytest.raises(exc, match=message):
            rt.ensure_background_worker(names)
    for timeout in (0, -1.0):
        with pytest.raises(ValueError, match="timeout"):
            rt.ensure_background_worker("w", timeout=timeout)
    with pytest.raises(RuntimeError, match="unknown background worker 'nope'"):
        rt.ensure_background_worker("nope")
    assert state(rt, "w") == "idle"


@pytest.mark.timeout(30)
def test_ensure_times_out_on_a_worker_that_never_gets_ready(runtime, script):
    path = script("sleep(30);")  # never asks for its handle
    rt = runtime(bg("sleepy", path, num=0), grace=0.2)
    began = time.monotonic()
    error = php_error(rt, "frankenphp_ensure_background_worker('sleepy', 0.5)")
    assert error["class"] == "RuntimeException"
    assert "timed out after 0.5 s" in error["message"] and "'sleepy'" in error["message"]
    assert time.monotonic() - began < 5.0
    with pytest.raises(frankenpy.WorkerError, match="timed out"):
        rt.ensure_background_worker("sleepy", timeout=0.3)


@pytest.mark.timeout(30)
def test_ensure_on_a_halted_worker_reports_status_attempts_and_error(runtime, script):
    path = script("trigger_error('boom at boot', E_USER_ERROR);")
    rt = runtime(bg("broken", path, num=0, max_consecutive_failures=2))
    error = php_error(rt, "frankenphp_ensure_background_worker('broken', 15.0)")
    assert error["class"] == "RuntimeException", error
    message = error["message"]
    assert "'broken' halted" in message
    assert "exit status 255" in message and "after 3 attempts" in message
    assert "boom at boot" in message
    with pytest.raises(RuntimeError, match=r"halted.*boom at boot"):
        rt.ensure_background_worker("broken")


@pytest.mark.timeout(40)
def test_boot_failure_fails_at_once_only_in_an_http_worker_before_its_first_request(runtime, script, out):
    broken = script("exit(3);", "broken.php")  # unlimited failures: it never halts
    http = script("""
        $began = microtime(true);
        try {
            frankenphp_ensure_background_worker('broken', 20.0);
        } catch (RuntimeException $e) {
            file_put_contents(out('http-boot'), json_encode([$e->getMessage(), microtime(true) - $began]));
        }
        while (frankenphp_handle_request(function () {})) {}
    """, "http.php")
    # (start() waits start_timeout for 'broken', which the HTTP worker starts and never gets ready)
    rt = runtime(bg("broken", broken, num=0, max_consecutive_failures=-1), frankenpy.Worker("app", http),
                 start_timeout=1.0)
    message, seconds = json.loads(wait_for(lambda: (out / "http-boot").exists() and
                                           (out / "http-boot").read_text(), 15.0, "the HTTP worker's error"))
    assert "'broken' failed to boot" in message and "exit status 3" in message
    assert seconds < 10.0  # at once, not at the 20 s timeout
    # Elsewhere the call rides out the backoff until its timeout.
    began = time.monotonic()
    error = php_error(rt, "frankenphp_ensure_background_worker('broken', 1.5)")
    assert error["class"] == "RuntimeException" and "timed out after 1.5 s" in error["message"]
    assert time.monotonic() - began >= 1.4


# --- catch-all workers ----------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_catch_all_starts_one_instance_per_name(runtime, script):
    rt = runtime(bg(None, script(ECHO)))
    assert rt.workers() == []  # nothing until a name is asked for
    rt.ensure_background_worker(["jobs-a", "jobs-b"])
    assert {s.name for s in rt.workers()} == {"jobs-a", "jobs-b"}
    assert rt.get_vars("jobs-a")["name"] == "jobs-a"  # $_SERVER['FRANKENPHP_WORKER']
    assert rt.get_vars("jobs-b")["name"] == "jobs-b"
    assert rt.send_task("jobs-b", {"x": 1}) == {"echo": {"x": 1}, "by": "jobs-b"}
    assert php(rt, "echo json_encode(frankenphp_get_vars('jobs-c')['name']);") == "jobs-c"
    metrics = rt.metrics_text()
    assert 'frankenphp_ready_workers{worker="m#:jobs-c"} 1' in metrics


@pytest.mark.timeout(30)
def test_catch_all_serves_at_most_max_workers_names(runtime, script):
    rt = runtime(bg(None, script(ECHO), max_workers=2))
    rt.ensure_background_worker(["one", "two"])
    with pytest.raises(RuntimeError, match="max_workers=2"):
        rt.ensure_background_worker("three")
    error = php_error(rt, "frankenphp_get_vars('four')")
    assert error["class"] == "RuntimeException" and "max_workers=2" in error["message"]
    assert sorted(s.name for s in rt.workers()) == ["one", "two"]
    rt.ensure_background_worker("two")  # a name it already serves is fine


@pytest.mark.timeout(30)
def test_declared_worker_wins_over_the_catch_all(runtime, script):
    path = script(ECHO)
    rt = runtime(bg("named", path, env={"KIND": "named"}), bg(None, path))
    assert rt.send_task("named", [1])["by"] == "named"
    assert [s.name for s in rt.workers()] == ["named"]  # the catch-all started nothing


# --- shared vars ----------------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_vars_round_trip_types_into_php_and_python(runtime, script):
    path = script("""
        frankenphp_set_vars([
            'list' => [1, 2, 3], 'map' => ['a' => 1, 7 => 'seven'], 'f' => 1.5, 't' => true,
            'n' => null, 'bytes' => "\\xff\\xfe", 'nested' => ['deep' => [[['x' => -5]]]], 'empty' => [],
        ]);
        serve(fn () => null);
    """)
    rt = runtime(bg("cfg", path))
    vars_ = rt.get_vars("cfg")
    assert vars_["list"] == [1, 2, 3]
    assert vars_["map"] == {"a": 1, 7: "seven"}
    assert vars_["f"] == 1.5 and vars_["t"] is True and vars_["n"] is None
    assert vars_["bytes"] == b"\xff\xfe"  # not UTF-8: bytes
    assert vars_["nested"] == {"deep": [[{"x": -5}]]}
    assert vars_["empty"] == []
    same = php(rt, """
        $v = frankenphp_get_vars('cfg');
        echo json_encode([$v['map'][7], $v['list'], $v['nested']['deep'][0][0]['x'], bin2hex($v['bytes'])]);
    """)
    assert same == ["seven", [1, 2, 3], -5, "fffe"]


@pytest.mark.timeout(30)
def test_set_vars_outside_a_background_worker_throws(runtime, script):
    rt = runtime()
    error = php_error(rt, "frankenphp_set_vars(['a' => 1])")
    assert error == {"class": "RuntimeException",
                     "message": "frankenphp_set_vars() can only be called from a background worker"}


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("value", "path", "kind"), [
    ("['db' => ['conn' => fopen('php://memory', 'r')]]", "$vars['db']['conn']", "resource"),
    ("['obj' => new stdClass]", "$vars['obj']", "stdClass"),
    ("[0, [1, fn () => 1]]", "$vars[1][1]", "Closure"),
])
def test_set_vars_type_error_names_the_key_path(runtime, script, out, value, path, kind):
    worker = script(f"""
        try {{ frankenphp_set_vars({value}); }}
        catch (TypeError $e) {{ file_put_contents(out('error'), $e->getMessage()); }}
        frankenphp_set_vars(['ok' => true]);
        serve(fn () => null);
    """)
    rt = runtime(bg("typed", worker))
    message = (out / "error").read_text()
    assert path in message and kind in message
    assert rt.get_vars("typed") == {"ok": True}  # the bad snapshot was never published


@pytest.mark.timeout(30)
def test_get_vars_errors(runtime, script):
    rt = runtime(bg("sleepy", script("sleep(30);"), num=0), grace=0.2)
    error = php_error(rt, "frankenphp_get_vars('ghost')")
    assert error["class"] == "RuntimeException" and "unknown background worker 'ghost'" in error["message"]
    error = php_error(rt, "frankenphp_get_vars('sleepy', 0.4)")
    assert error["class"] == "RuntimeException" and "timed out" in error["message"]
    error = php_error(rt, "frankenphp_get_vars('sleepy', 0.0)")
    assert error["class"] == "ValueError"
    with pytest.raises(RuntimeError, match="unknown background worker"):
        rt.get_vars("ghost")
    with pytest.raises(RuntimeError, match="timed out"):
        rt.get_vars("sleepy", timeout=0.3)


@pytest.mark.timeout(30)
def test_get_vars_blocks_until_ready_once_and_starts_a_lazy_worker(runtime, script):
    path = script("""
        usleep(400000);
        frankenphp_set_vars(['booted' => true]);
        serve(fn () => null);
    """)
    rt = runtime(bg("late", path, num=0))
    assert php(rt, "echo json_encode(frankenphp_get_vars('late', 10.0));") == {"booted": True}
    assert state(rt, "late") == "ready"


# A background worker publishing a counter that moves every 2 ms: {"i": N}.
COUNTER = """
$i = 0;
frankenphp_set_vars(['i' => 0]);
$h = frankenphp_get_worker_handle();
while (true) {
    $r = [$h]; $w = $e = [];
    if (stream_select($r, $w, $e, 0, 2000) > 0 && fread($h, 1) === '') break;
    frankenphp_set_vars(['i' => ++$i]);
}
"""


@pytest.mark.timeout(30)
def test_one_consistent_view_per_request(runtime, script):
    rt = runtime(bg("counter", script(COUNTER)))
    first, second, later = php(rt, """
        $a = frankenphp_get_vars('counter');
        usleep(100000);
        $b = frankenphp_get_vars('counter');
        echo json_encode([$a['i'], $b['i'], $a === $b]);
    """), None, None
    assert first[0] == first[1] and first[2] is True
    second = php(rt, "echo json_encode(frankenphp_get_vars('counter')['i']);")
    assert second > first[0]  # the next request sees a newer snapshot
    later = rt.get_vars("counter")["i"]
    assert later >= second


@pytest.mark.timeout(30)
def test_vars_survive_restarts_and_the_last_writer_wins(runtime, script, out):
    path = script("""
        $run = count(glob(out('run-*')));
        touch(out('run-' . $run));
        if ($run === 0) { frankenphp_set_vars(['from' => 'first run']); }
        serve(fn () => null);
    """)
    rt = runtime(bg("keeper", path))
    assert rt.get_vars("keeper") == {"from": "first run"}
    rt.restart_workers()
    wait_for((out / "run-1").exists, 10.0, "the second run")
    assert rt.get_vars("keeper") == {"from": "first run"}  # the slot belongs to the worker

    writers = script("""
        frankenphp_set_vars(['t' => getmypid() . '-' . spl_object_id(new stdClass) . '-' . hrtime(true)]);
        touch(out('wrote-' . hrtime(true)));
        serve(fn () => null);
    """, "writers.php")
    rt2 = runtime(bg("pair", writers, num=2))
    wait_for(lambda: len(list(out.glob("wrote-*"))) == 2, 10.0, "both threads published")
    assert "t" in rt2.get_vars("pair")
    counts = rt2.workers_group.task_counts()["m#:pair"]
    assert counts[3] == 2  # two publications, one snapshot: the last writer's


@pytest.mark.timeout(60)
def test_snapshot_is_never_torn_while_8_readers_read_and_a_writer_publishes_1000_times(runtime, script, out):
    path = script("""
        $h = frankenphp_get_worker_handle();
        while (!file_exists(out('go'))) { usleep(1000); }   // once the readers run
        for ($v = 1; $v <= 1000; $v++) {
            $text = str_repeat(chr(65 + $v % 26), 300);
            frankenphp_set_vars(['v' => $v, 'data' => array_fill(0, 200, $v), 'text' => $text]);
            usleep(100);
        }
        touch(out('published'));
        serve(fn () => null);
    """)
    rt = runtime(bg("writer", path), num_threads=2)
    errors: list[str] = []
    seen: list[set[int]] = [set() for _ in range(8)]

    def read(index: int) -> None:
        last = 0
        while True:
            done = (out / "published").exists()
            if index < 6:
                snap = rt.get_vars("writer")
            else:  # two readers in PHP, through the glue
                snap = php(rt, "echo json_encode(frankenphp_get_vars('writer'));")
            if snap:
                v = snap["v"]
                if snap["data"] != [v] * 200 or snap["text"] != chr(65 + v % 26) * 300:
                    errors.append(f"torn snapshot at v={v}")
                if v < last:
                    errors.append(f"went back from {last} to {v}")
                last = v
                seen[index].add(v)
            if done:
                return

    readers = [threading.Thread(target=read, args=(i,)) for i in range(8)]
    for reader in readers:
        reader.start()
    (out / "go").touch()
    for reader in readers:
        reader.join(50)
    assert not errors, errors[:5]
    assert all(1000 in s for s in seen)  # every reader saw the final snapshot
    assert rt.workers_group.task_counts()["m#:writer"][3] == 1000
    assert len(set().union(*seen)) > 1  # reads overlapped the publications


@pytest.mark.timeout(40)
def test_wait_cycle_throws_instead_of_deadlocking(runtime, script, out):
    path = script("""
        $me = $_SERVER['FRANKENPHP_WORKER'];
        $other = $me === 'alpha' ? 'beta' : 'alpha';
        try {
            frankenphp_get_vars($other, 20.0);
            file_put_contents(out($me), 'read');
        } catch (RuntimeException $e) {
            file_put_contents(out($me), $e->getMessage());
        }
        serve(fn () => null);
    """)
    began = time.monotonic()
    rt = runtime(bg("alpha", path), bg("beta", path))
    wait_for(lambda: (out / "alpha").exists() and (out / "beta").exists(), 15.0, "both workers past the wait")
    assert time.monotonic() - began < 15.0  # not the 20 s timeout
    messages = [(out / name).read_text() for name in ("alpha", "beta")]
    assert any("wait cycle" in m for m in messages), messages
    assert state(rt, "alpha") == "ready" and state(rt, "beta") == "ready"


@pytest.mark.timeout(30)
def test_a_worker_waiting_for_itself_is_a_cycle(runtime, script, out):
    path = script("""
        try { frankenphp_get_vars('self', 20.0); }
        catch (RuntimeException $e) { file_put_contents(out('self'), $e->getMessage()); }
        serve(fn () => null);
    """)
    runtime(bg("self", path))
    assert "wait cycle" in (out / "self").read_text()


# --- tasks ----------------------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_tasks_from_python_sync_future_and_asyncio(runtime, script):
    rt = runtime(bg("echo", script(ECHO)))
    assert rt.send_task("echo", {"n": 1, "list": [1, 2]}) == {"echo": {"n": 1, "list": [1, 2]}, "by": "echo"}
    futures = [rt.submit_task("echo", [i]) for i in range(20)]
    assert [f.result(10)["echo"] for f in futures] == [[i] for i in range(20)]

    async def many() -> list[Any]:
        return await asyncio.gather(*(rt.asend_task("echo", {"i": i}) for i in range(20)))

    threads_before = threading.active_count()
    answers = asyncio.run(many())
    assert [a["echo"]["i"] for a in answers] == list(range(20))
    assert threading.active_count() <= threads_before + 1  # no thread per task


@pytest.mark.timeout(30)
def test_tasks_from_php_and_a_null_result(runtime, script):
    path = script("""
        serve(function () {
            while (($t = frankenphp_receive_task()) !== null) {
                if ($t['payload'] === ['nothing']) { frankenphp_complete_task($t['id']); continue; }
                frankenphp_complete_task($t['id'], ['sum' => array_sum($t['payload'])]);
            }
        });
    """)
    rt = runtime(bg("adder", path))
    assert php(rt, "echo json_encode(frankenphp_send_task('adder', [1, 2, 39]));") == {"sum": 42}
    assert php(rt, "echo json_encode(frankenphp_send_task('adder', ['nothing']));") == []
    assert rt.send_task("adder", ["nothing"]) == {}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("timeout", ["1e300", "INF", "PHP_INT_MAX"])
def test_a_huge_timeout_from_php_waits_for_the_answer(runtime, script, timeout):
    """A timeout too large for a timespec means no practical limit (csrc/clock.h clamps it), not
    a deadline that has already passed."""
    path = script("""
        frankenphp_set_vars(['ready' => true]);
        serve(function () {
            while (($t = frankenphp_receive_task()) !== null) {
                usleep(200000); // the caller waits in earnest
                frankenphp_complete_task($t['id'], ['got' => $t['payload'][0]]);
            }
        });
    """)
    rt = runtime(bg("slow", path))
    assert php(rt, f"frankenphp_ensure_background_worker('slow', {timeout});"
                   f"echo json_encode([frankenphp_get_vars('slow', {timeout}),"
                   f"                  frankenphp_send_task('slow', [7], {timeout})]);") == [
        {"ready": True}, {"got": 7}]


@pytest.mark.timeout(30)
def test_failed_task_raises_with_the_message(runtime, script):
    path = script("""
        serve(function () {
            while (($t = frankenphp_receive_task()) !== null) {
                frankenphp_fail_task($t['id'], 'cannot do ' . $t['payload']['what']);
            }
        });
    """)
    rt = runtime(bg("refuser", path))
    with pytest.raises(frankenpy.TaskError, match=r"^cannot do laundry$"):
        rt.send_task("refuser", {"what": "laundry"})
    future = rt.submit_task("refuser", {"what": "dishes"})
    with pytest.raises(frankenpy.TaskError, match="cannot do dishes"):
        future.result(10)
    error = php_error(rt, "frankenphp_send_task('refuser', ['what' => 'taxes'])")
    assert error == {"class": "RuntimeException", "message": "cannot do taxes"}


@pytest.mark.timeout(30)
def test_task_timeout_and_a_full_queue(runtime, script):
    path = script("serve(fn () => null);")  # never takes a task
    rt = runtime(bg("deaf", path, max_queued_tasks=2))
    began = time.monotonic()
    with pytest.raises(frankenpy.TaskTimeout, match="timed out"):
        rt.send_task("deaf", [1], timeout=0.3)
    assert time.monotonic() - began < 5.0
    with pytest.raises(TimeoutError):
        rt.submit_task("deaf", [2], timeout=0.2).result(10)
    error = php_error(rt, "frankenphp_send_task('deaf', [3], 0.3)")
    assert error["class"] == "RuntimeException"
    expected = r"timed out after 0\.3 s waiting for task \d+ of background worker 'deaf'"
    assert re.fullmatch(expected, error["message"]), error
    # The withdrawn tasks left the queue: two fit, the third is refused at once.
    pending = [rt.submit_task("deaf", [i]) for i in range(2)]
    began = time.monotonic()
    with pytest.raises(frankenpy.WorkerError, match=r"full \(max_queued_tasks=2\)"):
        rt.send_task("deaf", [3])
    error = php_error(rt, "frankenphp_send_task('deaf', [4])")
    assert error["class"] == "RuntimeException" and "max_queued_tasks=2" in error["message"]
    assert time.monotonic() - began < 5.0
    assert "frankenphp_worker_tasks_queued{worker=\"m#:deaf\"} 2" in rt.metrics_text()
    assert not any(f.done() for f in pending)


@pytest.mark.timeout(30)
def test_task_api_errors(runtime, script):
    rt = runtime(bg("echo", script(ECHO)))
    with pytest.raises(TypeError, match=r"payload\['db'\]\['conn'\]"):
        rt.send_task("echo", {"db": {"conn": object()}})
    with pytest.raises(TypeError, match="dict or a list"):
        rt.send_task("echo", "text")
    with pytest.raises(RuntimeError, match="unknown background worker"):
        rt.send_task("ghost", [1])
    error = php_error(rt, "frankenphp_send_task('echo', ['f' => fopen('php://memory', 'r')])")
    assert error["class"] == "TypeError" and "$payload['f']" in error["message"]
    for call in ("frankenphp_receive_task()", "frankenphp_complete_task(1)", "frankenphp_fail_task(1, 'x')"):
        error = php_error(rt, call)
        assert error["class"] == "RuntimeException"
        assert "only be called from a background worker" in error["message"]


@pytest.mark.timeout(30)
def test_receive_returns_null_and_unknown_ids_throw(runtime, script, out):
    path = script("""
        $r = frankenphp_receive_task();
        try { frankenphp_complete_task(12345, []); } catch (RuntimeException $e) { $err = $e->getMessage(); }
        file_put_contents(out('probe'), json_encode([$r, $err]));
        serve(fn () => null);
    """)
    runtime(bg("probe", path))
    received, error = json.loads((out / "probe").read_text())
    assert received is None
    assert "no task 12345 is in progress" in error


@pytest.mark.timeout(30)
def test_handle_becomes_readable_for_a_task_and_the_seed_loop_still_drains(runtime, script, out):
    # The seed's loop, unchanged: a long select timeout, one task per wake-up.
    path = script("""
        $h = frankenphp_get_worker_handle();
        while (true) {
            $r = [$h]; $w = $e = [];
            if (stream_select($r, $w, $e, 60) > 0 && fread($h, 1) === '') {
                break;
            }
            $t = frankenphp_receive_task();
            if ($t !== null) { frankenphp_complete_task($t['id'], ['ok' => $t['payload'][0]]); }
        }
        touch(out('drained'));
    """)
    rt = runtime(bg("seed", path))
    began = time.monotonic()
    for i in range(5):
        assert rt.send_task("seed", [i], timeout=10) == {"ok": i}
    assert time.monotonic() - began < 5.0  # woken by each task, not by the 60 s select timeout
    rt.shutdown(grace=10)
    assert (out / "drained").exists()
    status = rt.workers()[0]
    assert status.crashes == 0 and status.last_exit_status == 0


@pytest.mark.timeout(40)
def test_tasks_across_a_worker_crash(runtime, script, out):
    path = script("""
        serve(function () {
            while (($t = frankenphp_receive_task()) !== null) {
                if (($t['payload']['crash'] ?? false) && !file_exists(out('crashed'))) {
                    touch(out('crashed'));
                    exit(1);   // holding the task
                }
                frankenphp_complete_task($t['id'], ['done' => $t['payload']['n']]);
            }
        });
    """)
    rt = runtime(bg("fragile", path))
    doomed = rt.submit_task("fragile", {"crash": True, "n": 0})
    queued = [rt.submit_task("fragile", {"n": i}) for i in range(1, 4)]
    with pytest.raises(frankenpy.TaskError, match="background worker 'fragile' crashed"):
        doomed.result(15)
    assert [f.result(15) for f in queued] == [{"done": i} for i in range(1, 4)]  # the restarted script
    metrics = rt.metrics_text()
    assert 'frankenphp_worker_tasks_failed{worker="m#:fragile"} 1' in metrics
    assert 'frankenphp_worker_tasks_completed{worker="m#:fragile"} 3' in metrics


@pytest.mark.timeout(40)
def test_tasks_across_restart_workers(runtime, script, out):
    path = script("""
        $run = count(glob(out('run-*')));
        touch(out('run-' . $run));
        $h = frankenphp_get_worker_handle();
        if ($run === 0) {
            while (($t = frankenphp_receive_task()) === null) { usleep(5000); }
            touch(out('holding'));
            while (fread($h, 1) !== '') {}   // holds it until drained
            exit(0);
        }
        serve(function () { answer_tasks(fn ($p) => ['run' => 1, 'n' => $p[0]]); });
    """)
    rt = runtime(bg("slow", path))
    held = rt.submit_task("slow", [0])
    wait_for((out / "holding").exists, 10.0, "the task taken")
    waiting = rt.submit_task("slow", [1])
    statuses = rt.restart_workers(grace=5.0)
    assert statuses[0].state == "ready"
    with pytest.raises(frankenpy.TaskError, match="background worker 'slow' was stopped while holding it"):
        held.result(10)
    assert waiting.result(10) == {"run": 1, "n": 1}


@pytest.mark.timeout(30)
def test_queued_tasks_fail_when_the_runtime_shuts_down(runtime, script):
    rt = runtime(bg("deaf", script("serve(fn () => null);")))
    future = rt.submit_task("deaf", [1], timeout=None)
    rt.shutdown(grace=3.0)
    with pytest.raises(frankenpy.TaskError, match="'deaf' is stopped"):
        future.result(5)


@pytest.mark.timeout(30)
def test_tasks_and_vars_metrics(runtime, script):
    path = script("""
        frankenphp_set_vars(['a' => 1]);
        frankenphp_set_vars(['a' => 2]);
        serve(function () {
            while (($t = frankenphp_receive_task()) !== null) {
                if ($t['payload'] === ['bad']) { frankenphp_fail_task($t['id'], 'bad'); }
                else { frankenphp_complete_task($t['id'], []); }
            }
        });
    """)
    rt = runtime(bg("m", path), bg("idle", path, num=0))
    rt.send_task("m", ["good"])
    rt.send_task("m", ["good"])
    with pytest.raises(frankenpy.TaskError):
        rt.send_task("m", ["bad"])
    metrics = rt.metrics_text()
    for line in ('frankenphp_worker_tasks_queued{worker="m#:m"} 0',
                 'frankenphp_worker_tasks_completed{worker="m#:m"} 2',
                 'frankenphp_worker_tasks_failed{worker="m#:m"} 1',
                 'frankenphp_worker_vars_publications{worker="m#:m"} 2',
                 'frankenphp_worker_vars_publications{worker="m#:idle"} 0'):
        assert line in metrics, metrics
    assert "# TYPE frankenphp_worker_tasks_completed counter" in metrics


# --- the encoding ---------------------------------------------------------------------------------
def test_python_encoding_round_trip_and_errors():
    value = {"a": [1, 2.5, None, True, False, "é", b"\xff"], 3: {"nested": []}, "big": -(1 << 63)}
    assert decode(encode(value)) == value
    with pytest.raises(TypeError, match=r"vars\['x'\]\[1\] is of type set"):
        encode({"x": [1, {2}]}, "vars")
    with pytest.raises(TypeError, match="keys must be int or str"):
        encode({1.5: 1})
    with pytest.raises(TypeError, match="does not fit"):
        encode([1 << 64])
    with pytest.raises(ValueError, match="malformed"):
        decode(b"S\xff\x00\x00\x00ab")


@pytest.mark.timeout(40)
def test_queued_tasks_fail_when_the_worker_halts_and_a_halted_worker_takes_none(runtime, script, out):
    path = script("""
        $run = count(glob(out('run-*')));
        touch(out('run-' . $run));
        if ($run === 0) { serve(fn () => null); }   // ready, takes no task, until restarted
        exit(4);                                     // every later run fails at boot
    """)
    rt = runtime(bg("doomed", path, max_consecutive_failures=1))
    queued = rt.submit_task("doomed", [1], timeout=None)
    rt.restart_workers(grace=5.0)  # the next runs crash twice: halted
    wait_for(lambda: state(rt, "doomed") == "halted", 15.0, "the halt")
    with pytest.raises(frankenpy.TaskError, match="background worker 'doomed' halted: exit status 4"):
        queued.result(10)
    with pytest.raises(frankenpy.WorkerError, match="halted"):
        rt.send_task("doomed", [2])


@pytest.mark.timeout(30)
def test_a_background_worker_sends_tasks_to_another(runtime, script, out):
    adder = script("""
        serve(function () { answer_tasks(fn ($p) => ['sum' => array_sum($p)]); });
    """, "adder.php")
    client = script("""
        $answer = frankenphp_send_task('adder', [20, 22], 10.0);
        frankenphp_set_vars(['answer' => $answer['sum']]);
        serve(fn () => null);
    """, "client.php")
    rt = runtime(bg("adder", adder), bg("client", client))
    assert rt.get_vars("client") == {"answer": 42}


# --- FrankenPHP\WorkerHandle (PR #2617's API): thin aliases ------------------------------------------
@pytest.mark.timeout(30)
def test_worker_handle_class_aliases(runtime, script, out):
    path = script("""
        $w = new FrankenPHP\\WorkerHandle();
        $w->setVars(['via' => 'WorkerHandle']);   // before the handle: readers see it once ready
        $w->setVars(['via' => 'WorkerHandle', 'stream' => is_resource($w->getStream())]);
        $ticks = 0;
        while ($w->tick(5.0)) {       // true: a task waits (or the timeout passed)
            $ticks++;
            while (($t = $w->receive()) !== null) {
                frankenphp_complete_task($t['id'], ['twice' => $t['payload'][0] * 2]);
            }
        }
        file_put_contents(out('drained'), $ticks);   // false: drained
    """)
    rt = runtime(bg("oo", path))
    wait_for(lambda: rt.get_vars("oo") == {"via": "WorkerHandle", "stream": True}, 10.0, "the 2nd snapshot")
    assert state(rt, "oo") == "ready"
    began = time.monotonic()
    assert [rt.send_task("oo", [i]) for i in range(3)] == [{"twice": 2 * i} for i in range(3)]
    assert time.monotonic() - began < 5.0  # tick() woke for each task
    rt.shutdown(grace=10.0)
    assert int((out / "drained").read_text()) >= 1
    assert rt.workers()[0].last_exit_status == 0
    error = php_error(runtime(), "new FrankenPHP\\WorkerHandle()")
    assert error == {"class": "RuntimeException", "message": "FrankenPHP\\WorkerHandle::__construct() can "
                     "only be called from a background worker"}


@pytest.mark.timeout(40)
@pytest.mark.parametrize("server_kind", ["native", "wsgi"])
def test_http_requests_each_get_one_view_and_classic_requests_find_scoped_workers(
    script, tmp_path, out, server_kind
):
    import urllib.request

    from frankenpy.http.app import PHPApp
    from frankenpy.http.native import NativeServer
    from frankenpy.http.server import Server, Site

    counter = script(COUNTER, "counter.php")
    public = tmp_path / "public"
    public.mkdir()
    (public / "app.php").write_text(textwrap.dedent("""\
        <?php
        while (frankenphp_handle_request(function () {
            $a = frankenphp_get_vars('counter');
            usleep(50000);
            echo json_encode([$a['i'], frankenphp_get_vars('counter')['i']]);
        })) {}
    """))
    (public / "classic.php").write_text("<?php echo json_encode(frankenphp_get_vars('counter')['i']);")
    scope = frankenpy.next_scope()
    rt = frankenpy.Runtime(num_threads=1, env={"OUT": str(out)}, workers=[
        bg("counter", counter, scope=scope),
        frankenpy.Worker("app", str(public / "app.php"), scope=scope),
    ])
    rt.start()
    factory = NativeServer if server_kind == "native" else Server
    server = factory(rt, [Site("127.0.0.1", 0, PHPApp(rt, public, scope=scope))])
    server.start()
    try:
        base = f"http://127.0.0.1:{int(server.ports[0])}"

        def get(path: str) -> Any:
            with urllib.request.urlopen(base + path, timeout=20) as reply:
                return json.loads(reply.read())

        first = get("/app.php")
        second = get("/app.php")
        assert first[0] == first[1] and second[0] == second[1]  # one view per request
        assert second[0] > first[0]  # a fresh one for the next request
        assert get("/classic.php") >= second[0]
    finally:
        server.stop(grace=5.0)


@pytest.mark.timeout(40)
def test_a_time_limit_stops_a_script_waiting_for_a_worker(runtime, script):
    deaf = script("serve(fn () => null);", "deaf.php")
    rt = runtime(bg("sleepy", script("sleep(30);"), num=0), bg("deaf", deaf), grace=0.2)
    for code in ("frankenphp_get_vars('sleepy', 30.0);",
                 "frankenphp_ensure_background_worker('sleepy', 30.0);",
                 "frankenphp_send_task('deaf', [1], null);"):  # no timeout of its own
        began = time.monotonic()
        result = rt.execute_code(code, timeout=0.5)
        assert result.timed_out, (code, result.errors)
        assert time.monotonic() - began < 5.0, code
    assert rt.execute_code("echo 'still serving';").output == b"still serving"


@pytest.mark.timeout(30)
def test_ctrl_c_interrupts_python_waits_and_withdraws_the_task(runtime, script):
    import os
    import signal

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach the main thread only")
    sleepy = script("sleep(30);", "s.php")
    rt = runtime(bg("deaf", script("serve(fn () => null);")), bg("sleepy", sleepy, num=0), grace=0.2)
    for call in (lambda: rt.send_task("deaf", [1], timeout=None), lambda: rt.get_vars("sleepy", timeout=30)):
        timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        began = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            call()
        timer.join()
        assert time.monotonic() - began < 5.0
    assert rt.workers_group.task_counts()["m#:deaf"][0] == 0  # the task was withdrawn


@pytest.mark.timeout(60)
def test_autoscaled_regular_threads_reach_the_workers(runtime, script, monkeypatch):
    import concurrent.futures

    from frankenpy import scaling

    monkeypatch.setattr(scaling, "process_cpu_usage", lambda: 0.1)  # let it scale up
    rt = runtime(bg("cfg", script(ECHO)), num_threads=1, max_threads=4)
    code = ("usleep(100000); echo frankenphp_get_vars('cfg')['name'], ' ', "
            "json_encode(frankenphp_send_task('cfg', [1]));")
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda _: rt.execute_code(code, timeout=20), range(40)))
    assert rt.total_threads > 2  # grew past one regular thread (+ the worker's)
    for result in results:
        assert result.exit_status == 0, result.errors
        assert result.output == b'cfg {"echo":[1],"by":"cfg"}'
