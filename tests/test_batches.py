"""Batches (Runtime.map_file / map_code): one GIL release for the whole batch, results in order,
every PHP thread used, a failing item never stops the others."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

import frankenpy
from frankenpy import threads as threads_module


@pytest.mark.timeout(60)
def test_map_code_results_in_order_with_per_item_env_and_argv(runtime: frankenpy.Runtime) -> None:
    code = "echo $argv[1] ?? '-', ':', getenv('X') ?: '', ':', $_SERVER['X'] ?? '';"
    items = [{"argv": ["a", str(i)], "env": {"X": f"x{i}"}} for i in range(50)] + [{}]
    results = runtime.map_code(code, items)
    assert [r.output for r in results] == [f"{i}:x{i}:x{i}".encode() for i in range(50)] + [b"-::"]
    assert all(r.ok for r in results)


@pytest.mark.timeout(60)
def test_a_failing_item_does_not_stop_the_others(runtime: frankenpy.Runtime,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    code = ("$n = (int) $argv[1];"
            "if ($n % 4 == 1) exit(7);"
            "if ($n % 4 == 2) undefined_function();"
            "if ($n % 4 == 3) { trigger_error('warned ' . $n, E_USER_WARNING); }"
            "echo $n;")
    with caplog.at_level(logging.INFO, logger="frankenpy.php"):
        results = runtime.map_code(code, [{"argv": ["x", str(n)]} for n in range(20)])
    for n, result in enumerate(results):
        if n % 4 == 1:
            assert result.exit_status == 7 and result.output == b""
        elif n % 4 == 2:
            assert result.exit_status == 255
            assert any("undefined_function" in e for e in result.errors)
        else:
            assert result.exit_status == 0 and result.output == str(n).encode()
        if n % 4 == 3:
            assert result.errors == [f"PHP Warning:  warned {n} in frankenpy code on line 1"]
    # every diagnostic also reached logging, once
    warned = [r for r in caplog.records if "warned" in r.getMessage()]
    assert len(warned) == 5


@pytest.mark.timeout(60)
def test_map_file_runs_on_every_php_thread_at_once(make_runtime, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    script = tmp_path / "sleep.php"
    script.write_text("<?php usleep(300000); echo $argv[1];")
    rt = make_runtime(num_threads=3)
    started = time.monotonic()
    results = rt.map_file(script, [{"argv": [str(script), str(i)]} for i in range(6)])
    took = time.monotonic() - started
    assert [r.output for r in results] == [str(i).encode() for i in range(6)]
    assert took < 1.5, took  # 6 x 0.3 s: 1.8 s on one thread, 0.6 s on three
    assert sum(t.executions for t in rt.php_threads) >= 6


@pytest.mark.timeout(60)
def test_map_items_honour_time_limits_and_max_output_size(make_runtime) -> None:  # type: ignore[no-untyped-def]
    rt = make_runtime(num_threads=2, max_output_size=1000)
    results = rt.map_code("if ($argv[1] == 'spin') { set_time_limit(1); while (true); }"
                          "echo str_repeat('x', (int) $argv[1]);",
                          [{"argv": ["-", "spin"]}, {"argv": ["-", "10"]}, {"argv": ["-", "5000"]}])
    assert results[0].timed_out and results[0].exit_status == 255
    assert results[1].ok and results[1].output == b"x" * 10
    assert results[2].exit_status == 255 and len(results[2].output) <= 1000


def test_map_rejects_bad_items_naming_them(runtime: frankenpy.Runtime, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="map item 1: unknown key"):
        runtime.map_code("echo 1;", [{}, {"stdin": b""}])
    with pytest.raises(TypeError, match="map item 0 must be a mapping"):
        runtime.map_code("echo 1;", [["argv"]])  # type: ignore[list-item]
    with pytest.raises(FileNotFoundError, match=r"missing\.php"):
        runtime.map_file(tmp_path / "missing.php", [{}])
    assert runtime.map_code("echo 1;", []) == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("threads", [1, 2])
def test_a_caller_waiting_for_a_thread_gets_one_within_an_item(make_runtime, threads: int) -> None:  # type: ignore[no-untyped-def]
    """A batch keeps its PHP threads between items, but gives one back as soon as somebody else
    waits for one: FIFO fairness holds for execute_* callers (and is not a batch's whole run)."""
    rt = make_runtime(num_threads=threads)
    items = [{"argv": ["-", str(i)]} for i in range(40 * threads)]  # 40 x 0.05 s per thread: 2 s
    out: list[Sequence[frankenpy.Result]] = []
    batch = threading.Thread(target=lambda: out.append(rt.map_code("usleep(50000); echo $argv[1];", items)))
    batch.start()
    try:
        time.sleep(0.3)
        waits = []
        for _ in range(3):
            started = time.monotonic()
            assert rt.execute_code("echo 'me';").output == b"me"
            waits.append(time.monotonic() - started)
    finally:
        batch.join()
    assert max(waits) < 0.5, waits  # one item is 0.05 s; the batch's rest is ~1.5 s
    assert [r.output for r in out[0]] == [str(i).encode() for i in range(len(items))]


@pytest.mark.timeout(60)
def test_shutdown_during_a_batch_stops_it_after_the_items_running(make_runtime) -> None:  # type: ignore[no-untyped-def]
    rt = make_runtime(num_threads=2)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            rt.map_code("usleep(50000);", [{}] * 200)  # 5 s on two threads
        except BaseException as exc:
            errors.append(exc)

    batch = threading.Thread(target=run)
    batch.start()
    time.sleep(0.3)
    started = time.monotonic()
    rt.shutdown(grace=5.0)
    batch.join()
    assert time.monotonic() - started < 2.0  # not the batch's remaining ~4.7 s
    assert len(errors) == 1 and "shut down" in str(errors[0])


@pytest.mark.timeout(60)
def test_a_thread_given_up_during_a_batch_is_released(make_runtime, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """Shutdown gives up on the thread of an item that outlives grace and force-stop (bcrypt
    does not look at the interrupt) while the other worker's items, earlier in the batch, found
    the runtime closed: the batch raises, and the thread given up is still released once it is
    back (settling did not stop at the first closed item)."""
    monkeypatch.setattr(threads_module, "FORCE_STOP_WAIT", 0.1)
    rt = make_runtime(num_threads=2)
    threads = list(rt.php_threads)
    code = ("if ($argv[1] == '16') { password_hash('x', PASSWORD_BCRYPT, ['cost' => 14]); }"
            " else { usleep(20000); }")
    items = [{"argv": ["-", str(i)]} for i in range(512)]  # chunks of 16: item 16 starts one
    errors: list[BaseException] = []

    def run() -> None:
        try:
            rt.map_code(code, items)
        except BaseException as exc:
            errors.append(exc)

    batch = threading.Thread(target=run)
    batch.start()
    time.sleep(0.15)  # items 0-15 (0.32 s) are half done
    rt.shutdown(grace=0.1)
    assert any(thread.started for thread in threads)  # the bcrypt one: given up, still busy
    batch.join()
    assert len(errors) == 1 and "shut down" in str(errors[0])
    assert not any(thread.started for thread in threads)
