"""The execution fast path (csrc/serve.c fp_fast_*): what moved from Python into C keeps
behaving as before: the script-exists check, the per-Python-thread reuse of the C call, the PHP
thread's counters the admin API shows, the lazily built batch results, and the asyncio workers."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import frankenpy
from frankenpy import runtime as runtime_module
from frankenpy.admin import thread_states


def _task_count() -> int:
    return len(os.listdir("/proc/self/task"))


# --- the script check, without the GIL ----------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_missing_script_is_checked_in_c_on_every_call(runtime: frankenpy.Runtime, tmp_path: Path) -> None:
    """The check is not cached with the prepared arguments: a script that goes away, comes back
    or turns into a directory is seen at the next call."""
    script = tmp_path / "s.php"
    script.write_text("<?php echo 'v1';")
    assert runtime.execute_file(script).output == b"v1"
    script.unlink()
    with pytest.raises(FileNotFoundError, match=r"PHP script not found: .*s\.php$"):
        runtime.execute_file(script)
    script.write_text("<?php echo 'v2';")
    assert runtime.execute_file(str(script)).output == b"v2"
    script.unlink()
    script.mkdir()
    with pytest.raises(FileNotFoundError, match=r"s\.php"):
        runtime.execute_file(script)
    link = tmp_path / "link.php"
    target = tmp_path / "target.php"
    target.write_text("<?php echo 'via link';")
    link.symlink_to(target)  # symlinks are followed, as os.path.isfile() does
    assert runtime.execute_file(link).output == b"via link"
    assert runtime.busy_threads == 0


@pytest.mark.timeout(60)
def test_a_missing_script_is_told_apart_from_failures_of_a_script_that_ran(
        runtime: frankenpy.Runtime, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """No stat() before each call: the glue sees PHP fail to open the primary script.  Only that
    is "not found"; a script that ran and failed to open another file is a fatal error, and the
    missing script's own fatal diagnostic is not logged as if a script had run."""
    caplog.set_level(logging.DEBUG, logger="frankenpy")
    with pytest.raises(FileNotFoundError, match=r"gone\.php"):
        runtime.execute_file(tmp_path / "gone.php")
    assert "Failed opening" not in caplog.text
    requires = tmp_path / "requires.php"
    requires.write_text("<?php echo 'before;'; require __DIR__ . '/absent.php';")
    result = runtime.execute_file(requires)
    assert (result.exit_status, result.output) == (255, b"before;")
    assert "absent.php" in result.errors[-1]
    broken = tmp_path / "broken.php"
    broken.write_text("<?php function f() {} function f() {}")  # E_COMPILE_ERROR while compiling it
    result = runtime.execute_file(broken)
    assert result.exit_status == 255 and "redeclare" in result.errors[-1]


@pytest.mark.timeout(60)
def test_a_missing_script_runs_no_prepended_file(make_runtime: Callable[..., frankenpy.Runtime],
                                                 tmp_path: Path) -> None:
    marker = tmp_path / "prepended.txt"
    prepend = tmp_path / "prepend.php"
    prepend.write_text(f"<?php file_put_contents({str(marker)!r}, 'ran', FILE_APPEND);")
    rt = make_runtime(num_threads=1, php_ini={"auto_prepend_file": str(prepend)})
    with pytest.raises(FileNotFoundError, match=r"gone\.php"):
        rt.execute_file(tmp_path / "gone.php")
    assert not marker.exists()
    script = tmp_path / "s.php"
    script.write_text("<?php echo 'main';")
    assert rt.execute_file(script).output == b"main"
    assert marker.read_text() == "ran"


@pytest.mark.timeout(60)
def test_missing_scripts_with_opcache(make_runtime: Callable[..., frankenpy.Runtime], tmp_path: Path) -> None:
    """opcache compiles scripts without the engine's opening of them: a missing script is still
    found missing, and one deleted after it was cached is found missing once opcache revalidates
    it (here at every call; by default every opcache.revalidate_freq = 2 s, as in php-fpm)."""
    rt = make_runtime(num_threads=1, opcache=True, php_ini={"opcache.revalidate_freq": 0})
    with pytest.raises(FileNotFoundError, match=r"gone\.php"):
        rt.execute_file(tmp_path / "gone.php")
    script = tmp_path / "s.php"
    script.write_text("<?php echo 'cached';")
    assert rt.execute_file(script).output == b"cached"
    assert rt.execute_file(script).output == b"cached"
    script.unlink()
    with pytest.raises(FileNotFoundError, match=r"s\.php"):
        rt.execute_file(script)
    script.mkdir()
    with pytest.raises(FileNotFoundError, match=r"s\.php"):
        rt.execute_file(script)


@pytest.mark.timeout(60)
def test_missing_script_while_every_thread_is_busy_gives_the_thread_back(
        runtime1: frankenpy.Runtime, tmp_path: Path) -> None:
    """A caller that queued for a thread (every one busy) and then finds no script returns the
    thread it was handed: the runtime keeps serving."""
    started = threading.Event()
    runner = threading.Thread(target=lambda: (started.set(), runtime1.execute_code("usleep(300000);")))
    runner.start()
    started.wait()
    time.sleep(0.1)  # the only PHP thread is busy: the next caller queues in line
    with pytest.raises(FileNotFoundError, match=r"gone\.php"):
        runtime1.execute_file(tmp_path / "gone.php")
    runner.join()
    assert runtime1.busy_threads == 0
    assert runtime1.execute_code("echo 'still serving';").output == b"still serving"


# --- one C call per Python thread, filled again only when the arguments change -----------------


@pytest.mark.timeout(60)
def test_alternating_arguments_on_one_python_thread(runtime: frankenpy.Runtime, tmp_path: Path) -> None:
    a, b = tmp_path / "a.php", tmp_path / "b.php"
    a.write_text("<?php echo 'a', $argc, getenv('X') ?: '-', stream_get_contents(STDIN);")
    b.write_text("<?php echo 'b', $argc, getenv('X') ?: '-';")
    expected = [
        (lambda: runtime.execute_file(a), b"a1-"),
        (lambda: runtime.execute_file(b), b"b1-"),
        (lambda: runtime.execute_file(a, env={"X": "x"}), b"a1x"),
        (lambda: runtime.execute_file(a), b"a1-"),
        (lambda: runtime.execute_file(a, argv=["a", "1", "2"]), b"a3-"),
        (lambda: runtime.execute_file(a, stdin=b"in"), b"a1-in"),
        (lambda: runtime.execute_file(a), b"a1-"),
        (lambda: runtime.execute_code("echo 'code';"), b"code"),
        (lambda: runtime.execute_file(a), b"a1-"),
    ]
    for _ in range(2):
        for run, output in expected:
            assert run().output == output


@pytest.mark.timeout(120)
def test_prepared_arguments_stay_valid_when_the_cache_is_cleared(runtime: frankenpy.Runtime,
                                                                 tmp_path: Path) -> None:
    """The reused C call points into the last script's prepared arguments: clearing the cache of
    prepared scripts (past PREPARED_SCRIPTS of them) must not free what it points to."""
    first = tmp_path / "first.php"
    first.write_text("<?php echo 'first:', $_SERVER['SCRIPT_FILENAME'] === __FILE__ ? 'ok' : 'bad';")
    assert runtime.execute_file(first).output == b"first:ok"
    for i in range(runtime_module.PREPARED_SCRIPTS + 5):
        other = tmp_path / f"o{i}.php"
        other.write_text(f"<?php echo {i};")
        assert runtime.execute_file(other).output == str(i).encode()
    assert runtime.execute_file(first).output == b"first:ok"


@pytest.mark.timeout(60)
def test_fast_results_are_frozen_results_and_rare_fields_do_not_leak(runtime1: frankenpy.Runtime,
                                                                     tmp_path: Path) -> None:
    """The common case reads only exit status, output and duration from C: what an earlier call
    on the same reused C call set (STDERR, diagnostics, a time limit) must not show up."""
    script = tmp_path / "plain.php"
    script.write_text("<?php echo 'plain';")
    rare = runtime1.execute_code("set_time_limit(7); fwrite(STDERR, 'err'); trigger_error('n'); exit(3);")
    assert (rare.exit_status, rare.stderr, rare.time_limit, len(rare.diagnostics)) == (3, b"err", 7.0, 1)
    plain = runtime1.execute_file(script)
    assert (plain.exit_status, plain.output, plain.stderr, plain.diagnostics) == (0, b"plain", b"", ())
    assert (plain.time_limit, plain.timed_out, plain.ok) == (None, False, True)
    assert 0 < plain.duration < 10
    assert type(plain) is frankenpy.Result
    with pytest.raises(dataclasses.FrozenInstanceError):
        plain.output = b"changed"  # type: ignore[misc]
    assert dataclasses.replace(plain) == plain and hash(plain) == hash(dataclasses.replace(plain))
    assert dataclasses.replace(plain, exit_status=1) != plain
    assert repr(plain).startswith("Result(exit_status=0, output=b'plain', diagnostics=(), timed_out=False")


# --- the PHP thread's counters (admin API) -----------------------------------------------------


@pytest.mark.timeout(60)
def test_fast_path_executions_show_in_the_admin_thread_list(runtime1: frankenpy.Runtime) -> None:
    states = thread_states(runtime1)["ThreadDebugStates"]
    before = states[0]["RequestCount"]
    for _ in range(3):
        runtime1.execute_code("echo 1;")
    done = threading.Event()
    runner = threading.Thread(
        target=lambda: (runtime1.execute_code("$a = str_repeat('x', 4 << 20); usleep(400000);"), done.set()))
    runner.start()
    deadline = time.monotonic() + 5
    busy = None
    while time.monotonic() < deadline and not done.is_set():
        state = thread_states(runtime1)["ThreadDebugStates"][0]
        if state["IsBusy"]:
            busy = state
            break
        time.sleep(0.01)
    runner.join()
    assert busy is not None, "a fast-path execution never showed as busy"
    assert busy["IsWaiting"] is False and busy["RequestStartedAt"] > 0
    idle = thread_states(runtime1)["ThreadDebugStates"][0]
    assert (idle["IsBusy"], idle["IsWaiting"]) == (False, True)
    assert idle["RequestCount"] == before + 4
    assert idle["MemoryUsage"] > 4 << 20  # PHP's usage at the end of the last script


# --- batches: results built when read ----------------------------------------------------------


@pytest.mark.timeout(60)
def test_batch_results_are_a_sequence_built_when_read(runtime: frankenpy.Runtime) -> None:
    items = [{"argv": ["x", str(i)]} for i in range(10)] + [{}]
    results = runtime.map_code("echo $argv[1] ?? $argv[0];", items)
    assert len(results) == 11
    assert results[0].output == b"0" and results[-1].output == b"Standard input code"
    assert results[-2] is results[9]  # built once
    assert [r.output for r in results[2:5]] == [b"2", b"3", b"4"]
    assert results == list(results) and list(results) == [results[i] for i in range(11)]
    with pytest.raises(IndexError):
        results[11]
    assert runtime.map_code("echo 1;", []) == []


@pytest.mark.timeout(60)
def test_batch_diagnostics_are_logged_even_if_no_result_is_read(runtime: frankenpy.Runtime,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="frankenpy.php"):
        runtime.map_code("trigger_error('batch ' . $argv[1], E_USER_NOTICE);",
                         [{"argv": ["x", str(i)]} for i in range(4)])
    logged = [r.getMessage() for r in caplog.records if "batch" in r.getMessage()]
    for i in range(4):
        assert sum(f"PHP Notice:  batch {i} in frankenpy code on line 1" in m for m in logged) == 1, logged


@pytest.mark.timeout(60)
def test_batch_outputs_small_ones_copied_large_ones_handed_over(runtime: frankenpy.Runtime) -> None:
    """A batch item's small output is copied out of the request's buffer (which the request
    keeps for the next item), a large one is handed over: both arrive whole, in order."""
    sizes = [0, 1, 13, 4095, 4096, 4097, 70000, 5, 0, 300000, 2]
    results = runtime.map_code("echo str_repeat(chr(97 + $argv[1] % 26), (int) $argv[1]);",
                               [{"argv": ["x", str(n)]} for n in sizes] * 3)
    assert [r.output for r in results] == [bytes([97 + n % 26]) * n for n in sizes] * 3

    async def main() -> list[frankenpy.Result]:
        return list(await asyncio.gather(*(
            runtime.aexecute_code(f"echo str_repeat('z', {n});") for n in sizes)))

    assert [r.output for r in asyncio.run(main())] == [b"z" * n for n in sizes]


@pytest.mark.timeout(60)
def test_batch_results_outlive_the_runtime(make_runtime) -> None:  # type: ignore[no-untyped-def]
    rt = make_runtime(num_threads=2)
    results = rt.map_code("echo str_repeat('y', 3000);", [{}] * 50)
    rt.shutdown()
    assert all(r.output == b"y" * 3000 and r.ok for r in results)


# --- asyncio: a bounded pool of C workers -----------------------------------------------------


@pytest.mark.timeout(60)
def test_async_calls_use_at_most_one_c_worker_per_php_thread(make_runtime) -> None:  # type: ignore[no-untyped-def]
    rt = make_runtime(num_threads=2)
    rt.execute_code("set_time_limit(5);")  # starts the process's C deadline watcher, if not yet
    before = _task_count()
    peak = 0

    async def main() -> list[frankenpy.Result]:
        nonlocal peak
        calls = [asyncio.ensure_future(rt.aexecute_code("usleep(20000); echo $argv[0];")) for _ in range(40)]
        while not all(c.done() for c in calls):
            peak = max(peak, _task_count())
            await asyncio.sleep(0.005)
        return [c.result() for c in calls]

    results = asyncio.run(main())
    assert all(r.output == b"Standard input code" for r in results)
    assert peak - before <= 2, f"{peak - before} threads for 40 calls on 2 PHP threads"


@pytest.mark.timeout(60)
def test_async_completions_are_drained_in_bounded_batches(runtime: frankenpy.Runtime,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """More completions than one loop callback takes: the rest are taken by later callbacks."""
    monkeypatch.setattr(runtime_module, "ASYNC_BATCH", 3)

    async def main() -> list[frankenpy.Result]:
        return list(await asyncio.gather(*(runtime.aexecute_code(f"echo {i};") for i in range(50))))

    results = asyncio.run(main())
    assert [r.output for r in results] == [str(i).encode() for i in range(50)]


@pytest.mark.timeout(60)
def test_idle_async_workers_and_eventfd_go_away(runtime: frankenpy.Runtime,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime_module, "ASYNC_IDLE_CLOSE", 0.05)
    runtime.execute_code("set_time_limit(5);")  # starts the process's C deadline watcher, if not yet
    before = _task_count()

    async def main() -> tuple[int, bool]:
        await asyncio.gather(*(runtime.aexecute_code("echo 1;") for _ in range(4)))
        during = _task_count()
        await asyncio.sleep(0.3)
        # closed and dropped: no queue of this runtime's left on the loop
        queues = runtime_module._AsyncCompletions._by_loop.get(asyncio.get_running_loop(), {})
        return during, runtime._running_pool() not in queues

    during, closed = asyncio.run(main())
    assert during > before  # the workers were C threads of the process
    assert closed
    deadline = time.monotonic() + 5
    while _task_count() > before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _task_count() <= before
