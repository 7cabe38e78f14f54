"""asyncio: Runtime.aexecute_code / aexecute_file run on PHP threads from C threads, completion
reaches the loop through an eventfd, cancelling a task stops its script."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

import frankenpy
from frankenpy import scaling


@pytest.mark.timeout(60)
def test_results_in_parallel_on_every_php_thread(make_runtime, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rt = make_runtime(num_threads=3)
    script = tmp_path / "s.php"
    script.write_text("<?php usleep(300000); echo $argv[1], getenv('X');")

    async def main() -> tuple[list[frankenpy.Result], float]:
        started = time.monotonic()
        results = await asyncio.gather(*(
            rt.aexecute_file(script, argv=[str(script), str(i)], env={"X": "x"}) for i in range(6)))
        return list(results), time.monotonic() - started

    results, took = asyncio.run(main())
    assert [r.output for r in results] == [f"{i}x".encode() for i in range(6)]
    assert took < 1.5, took  # 1.8 s on one thread, 0.6 s on three


@pytest.mark.timeout(60)
def test_failures_come_back_as_results(runtime: frankenpy.Runtime, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> list[frankenpy.Result]:
        return list(await asyncio.gather(
            runtime.aexecute_code("undefined_function();"),
            runtime.aexecute_code("fwrite(STDERR, 'e'); echo stream_get_contents(STDIN); exit(4);",
                                  stdin=b"in"),
        ))

    fatal, other = asyncio.run(main())
    assert fatal.exit_status == 255 and any("undefined_function" in e for e in fatal.errors)
    assert any("undefined_function" in r.getMessage() for r in caplog.records)
    assert (other.exit_status, other.output, other.stderr) == (4, b"in", b"e")


@pytest.mark.timeout(60)
def test_the_loop_is_never_blocked_for_long(runtime: frankenpy.Runtime) -> None:
    """The loop only submits and collects: PHP runs on other threads.  A ticker measures the
    longest gap between its 1 ms sleeps while 300 short scripts run (generous bound)."""
    async def main() -> float:
        longest = 0.0
        done = False

        async def ticker() -> None:
            nonlocal longest
            last = time.monotonic()
            while not done:
                await asyncio.sleep(0.001)
                now = time.monotonic()
                longest = max(longest, now - last)
                last = now

        tick = asyncio.create_task(ticker())
        await asyncio.sleep(0.01)
        code = "$x = 0; for ($i = 0; $i < 20000; $i++) { $x += $i; } echo $x;"
        results = await asyncio.gather(*(runtime.aexecute_code(code) for _ in range(300)))
        done = True
        await tick
        assert all(r.output == b"199990000" for r in results)
        return longest

    longest = asyncio.run(main())
    assert longest < 0.25, longest


@pytest.mark.timeout(60)
def test_cancelling_the_task_stops_the_script(runtime1: frankenpy.Runtime, tmp_path: Path) -> None:
    marker = tmp_path / "finished"

    async def main() -> float:
        task = asyncio.create_task(runtime1.aexecute_code(f"sleep(3); touch('{marker}');"))
        queued = asyncio.create_task(runtime1.aexecute_code("echo 'never';"))  # waits in line
        await asyncio.sleep(0.3)
        queued.cancel()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(asyncio.CancelledError):
            await queued
        started = time.monotonic()
        after = await runtime1.aexecute_code("echo 'next';")  # the thread is free again
        assert after.output == b"next"
        return time.monotonic() - started

    waited = asyncio.run(main())
    assert waited < 2.0, waited  # the 3 s script was stopped, not waited for
    time.sleep(3.2)
    assert not marker.exists()
    assert runtime1.execute_code("echo 1;").output == b"1"


@pytest.mark.timeout(60)
def test_two_runtimes_on_one_loop_never_wait_for_each_other(make_runtime) -> None:  # type: ignore[no-untyped-def]
    """Each runtime has its own C queue and workers on a loop: a call of the idle runtime never
    waits behind the calls queued for the busy one (nor for its PHP threads)."""
    busy, idle = make_runtime(num_threads=1), make_runtime(num_threads=1)

    async def main() -> tuple[float, float]:
        slow = [asyncio.create_task(busy.aexecute_code("usleep(1000000);")) for _ in range(3)]
        await asyncio.sleep(0.1)
        started = time.monotonic()
        result = await idle.aexecute_code("echo 'idle';")
        took = time.monotonic() - started
        assert result.output == b"idle"
        second = time.monotonic()
        assert (await busy.aexecute_code("echo 'x';", env={})).output == b"x"  # after the three
        waited = time.monotonic() - second
        for task in slow:
            task.cancel()
        await asyncio.gather(*slow, return_exceptions=True)
        return took, waited

    took, waited = asyncio.run(main())
    assert took < 0.7, took  # not the busy runtime's 3 s
    assert waited > 2.0, waited  # (the busy one's own calls did queue: FIFO among its own)
    assert idle.php_threads[0].executions == 1


@pytest.mark.timeout(60)
def test_queued_calls_make_the_runtime_scale_up(make_runtime, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """aexecute_* calls that wait in C for a PHP thread count as stalls (as the native server's
    requests do): the autoscaler adds threads, and the C workers use them at once."""
    monkeypatch.setattr(scaling, "process_cpu_usage", lambda: 0.0)  # other suites may load the CPUs
    rt = make_runtime(num_threads=1, max_threads=3)

    async def main() -> float:
        started = time.monotonic()
        results = await asyncio.gather(*(rt.aexecute_code("usleep(300000); echo 1;") for _ in range(10)))
        assert [r.output for r in results] == [b"1"] * 10
        return time.monotonic() - started

    took = asyncio.run(main())
    assert rt.total_threads > 1
    assert took < 2.4, took  # 3 s on the one thread it started with
