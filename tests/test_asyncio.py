"""asyncio: Runtime.aexecute_code / aexecute_file run on PHP threads from C threads, completion
reaches the loop through an eventfd, cancelling a task stops its script."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

import frankenpy


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
