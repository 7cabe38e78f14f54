#!/usr/bin/env python3
"""Benchmark of frankenpy's Runtime against its targets, in one run.

Measures, and prints as one table with the ratio to each target:

1. per-execution cost of ``rt.execute_file(hello.php)`` on a one-thread runtime, called from the
   main thread and from a non-main Python thread, against the bare C embed loop
   (``build/cmake/bench_embed_loop -n``, the stock embed SAPI with only libphp's built-in
   extensions, as frankenpy loads by default).  The C loop runs as a subprocess interleaved with
   the Python rounds (C, py, C, py ...); every figure is the median of the rounds, and every
   ratio the median of the rounds' own ratios (both sides of one round run back to back: see
   paired()).  Each round runs on one CPU (the measuring thread, the thread it starts and the
   C loop's process are pinned to it; rounds alternate between the CPUs): on the VM this was
   measured on, one vCPU at times runs the same code 1.5x slower than the other, and a C loop
   on one CPU against Python on the other compared the CPUs, not the code.
   Target (issue 9): within 1.3x of the bare C loop; with opcache, within 1.1x of the bare C
   loop with opcache (``bench_embed_loop -c INI -s frankenphp``: the same opcache settings as
   frankenpy's, under the SAPI name opcache enables itself for, checked to be active).
2. throughput (executions/s) of hello.php with 1 PHP thread (1 caller thread) and 2 PHP threads
   (2 caller threads), and the ratio 2T/1T (as every 2T/1T ratio below: the median of the
   rounds' ratios, each round measuring 1T then 2T).
3. memory per extra PHP thread: VmRSS (/proc/self/status) and Pss (/proc/self/smaps_rollup) of a
   fresh process after starting a runtime of 1 and of 9 threads, each thread having run
   hello.php once; (mem9 - mem1) / 8.  Target: at most 8 MiB (RSS).
4. start-up time (``Runtime.start()``) with 1, 8 and 32 threads, in fresh processes: cold (an
   empty ``FRANKENPY_CACHE_DIR``: the image files must be written) and warm (cache present).
   Target: 8 threads under 0.5 s, warm.
5. 1 to 3 again with ``opcache=True``.
6. batches and asyncio: ``map_file`` of 10,000 hello.php and ``aexecute_code`` of work.php's code
   (8 in flight) on 1 and 2 PHP threads, and the event loop's longest block meanwhile.

Usage::

    python3 scripts/bench_runtime.py [--quick] [--only batch] [--json FILE]

``--only batch`` measures and prints section 6 (2b in the report) alone, in a few seconds: the
A/B runs of the batch and asyncio paths (``PYTHONPATH=<other checkout>`` picks the other build).

It needs the in-place build (``python3 setup.py -q build_ext --inplace``); the C loop is built
with CMake (``build/cmake``) when it is missing or older than its source.  Everything runs with a
temporary ``FRANKENPY_CACHE_DIR``, removed at the end.  About 1 minute (``--quick``: about 15 s).

The script also runs itself as the child process of the memory and start-up measurements
(``--child rss|startup``), so that no runtime shares memory or loaded images with another.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "csrc" / "bench" / "hello.php"
WORK = ROOT / "csrc" / "bench" / "work.php"  # about 0.3 ms of PHP per execution
HELLO_OUTPUT = b"Hello, World!"
BENCH_SOURCE = ROOT / "csrc" / "bench" / "bench_embed_loop.c"
BENCH_BUILD_DIR = ROOT / "build" / "cmake"
BENCH_BINARY = BENCH_BUILD_DIR / "bench_embed_loop"

OVERHEAD_TARGET = 1.3  # execute_file within 1.3x of the bare C loop (issue 9)
OPCACHE_OVERHEAD_TARGET = 1.1  # with opcache, within 1.1x of the bare C loop with opcache
SCALING_TARGET = 1.7  # 2 callers on 2 PHP threads vs 1, and aexecute_code 2T/1T
MAP_TARGET = 1.85  # map_file 2T/1T
MAP_ITEMS = 10_000
MAP_WORK_ITEMS = 400  # work.php, the control: ~0.3 ms of PHP each, nothing for Python to do
ASYNC_CALLS = 1_000
ASYNC_IN_FLIGHT = 8  # (all 1,000 at once would block the loop while it starts 1,000 tasks)
RSS_TARGET_MIB = 8.0  # per extra PHP thread
PSS_TARGET_MIB = {"plain": 3.0, "opcache": 4.5}  # per extra PHP thread (issue 12)
STARTUP_TARGET_S = 0.5  # 8 threads, warm cache
STARTUP_THREADS = (1, 8, 32)
RSS_THREADS = (1, 9)

# Full run / --quick.
PROFILES: dict[str, dict[str, Any]] = {
    "full": {
        "rounds": 7,
        "py_iters": 10000,
        "c_iters": 20000,
        "warmup": 500,
        "tp_rounds": 5,
        "tp_seconds": 1.0,
        "rss_rounds": 3,
        "cold_rounds": 3,
        "warm_rounds": 5,
    },
    "quick": {
        "rounds": 3,
        "py_iters": 3000,
        "c_iters": 5000,
        "warmup": 200,
        "tp_rounds": 3,
        "tp_seconds": 0.3,
        "rss_rounds": 1,
        "cold_rounds": 1,
        "warm_rounds": 3,
    },
}


def _import_frankenpy() -> Any:
    """The frankenpy of this checkout (in-place build) unless PYTHONPATH already names one."""
    if not os.environ.get("PYTHONPATH") and str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    try:
        import frankenpy
    except ImportError as exc:
        sys.exit(
            f"bench_runtime: cannot import frankenpy ({exc}); build it first:\n"
            f"  cd {ROOT} && python3 setup.py -q build_ext --inplace"
        )
    return frankenpy


# --------------------------------------------------------------------------------------------
# Child processes: one measurement each, one JSON line on stdout.
# --------------------------------------------------------------------------------------------


def memory_kib() -> dict[str, int]:
    """VmRSS and Pss of this process, in KiB."""
    found: dict[str, int] = {}
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                found["rss"] = int(line.split()[1])
    with open("/proc/self/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("Pss:"):
                found["pss"] = int(line.split()[1])
    return found


def child_rss(threads: int, opcache: bool) -> dict[str, Any]:
    frankenpy = _import_frankenpy()
    before = memory_kib()
    rt = frankenpy.Runtime(num_threads=threads, opcache=opcache).start()
    try:
        # Idle threads are handed out first-in first-out, so `threads` sequential executions
        # run hello.php once on every PHP thread.
        for _ in range(threads):
            result = rt.execute_file(str(HELLO))
            if result.output != HELLO_OUTPUT:
                raise RuntimeError(f"hello.php: unexpected result {result!r}")
        after = memory_kib()
    finally:
        rt.shutdown()
    return {"before": before, "after": after, "threads": threads, "opcache": opcache}


def child_startup(threads: int, opcache: bool) -> dict[str, Any]:
    frankenpy = _import_frankenpy()
    rt = frankenpy.Runtime(num_threads=threads, opcache=opcache)
    t0 = time.perf_counter()
    rt.start()
    seconds = time.perf_counter() - t0
    try:
        result = rt.execute_file(str(HELLO))
        if result.output != HELLO_OUTPUT:
            raise RuntimeError(f"hello.php: unexpected result {result!r}")
    finally:
        rt.shutdown()
    return {"seconds": seconds, "threads": threads, "opcache": opcache}


def run_child(kind: str, threads: int, opcache: bool, cache_dir: Path, share: bool = True) -> dict[str, Any]:
    """``share=False``: the images keep their read-only pages private (FRANKENPY_SHARE_PAGES=0),
    the state before page sharing, measured in the same run for comparison."""
    env = dict(os.environ)
    env["FRANKENPY_CACHE_DIR"] = str(cache_dir)
    env["FRANKENPY_SHARE_PAGES"] = "1" if share else "0"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    command = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--threads", str(threads)]
    if opcache:
        command.append("--opcache")
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"child {' '.join(command[2:])} failed ({done.returncode}):\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------
# The bare C loop.
# --------------------------------------------------------------------------------------------


def shown(path: Path) -> str:
    """``path`` relative to the repository when it is inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def ensure_bench_binary() -> Path:
    """build/cmake/bench_embed_loop, built with CMake when missing or older than its source."""
    if BENCH_BINARY.is_file() and BENCH_BINARY.stat().st_mtime >= BENCH_SOURCE.stat().st_mtime:
        return BENCH_BINARY
    if shutil.which("cmake") is None:
        sys.exit("bench_runtime: cmake not found and build/cmake/bench_embed_loop is missing")
    print(f"building {shown(BENCH_BINARY)} with cmake ...", flush=True)
    steps = [
        ["cmake", "-S", str(ROOT), "-B", str(BENCH_BUILD_DIR), "-DCMAKE_BUILD_TYPE=Release"],
        ["cmake", "--build", str(BENCH_BUILD_DIR), "--target", "bench_embed_loop", "-j2"],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"bench_runtime: {' '.join(step)} failed:\n{done.stdout}{done.stderr}")
    return BENCH_BINARY


def run_c_loop(binary: Path, iterations: int, ini: Path | None, script: Path) -> tuple[float, int]:
    """(us per request, bytes written per request) of the bare C loop: built-in extensions only
    (-n), or with `ini` as its php.ini (no scan dir) under the SAPI name "frankenphp" (opcache
    enables itself for it, as for frankenpy's glue)."""
    options = ["-n"] if ini is None else ["-c", str(ini), "-s", "frankenphp"]
    done = subprocess.run(
        [str(binary), *options, str(script), str(iterations)], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PHP_INI_SCAN_DIR": ""},
    )
    match = re.search(r"bare_embed_loop_us_per_request=([0-9.]+) .*bytes_per_request=([0-9]+)", done.stdout)
    if done.returncode != 0 or not match:
        raise RuntimeError(f"bench_embed_loop failed ({done.returncode}): {done.stdout}{done.stderr}")
    return float(match.group(1)), int(match.group(2))


def bare_c_us(binary: Path, iterations: int, ini: Path | None = None) -> float:
    return run_c_loop(binary, iterations, ini, HELLO)[0]


def opcache_ini(frankenpy: Any, tmp: Path, binary: Path) -> Path:
    """A php.ini loading Debian's opcache with frankenpy's opcache settings, for the bare C loop;
    RuntimeError unless opcache is active in that loop."""
    from frankenpy.runtime import OPCACHE_DEFAULTS

    ini = tmp / "opcache.ini"
    settings = "".join(f"{key}={value}\n" for key, value in OPCACHE_DEFAULTS.items())
    ini.write_text(f"zend_extension={frankenpy.images.extension_path('opcache')}\n{settings}")
    check = tmp / "opcache_check.php"  # writes 2 bytes when opcache is active, else 1
    check.write_text('<?php echo str_repeat("x", opcache_get_status(false) !== false ? 2 : 1);')
    if run_c_loop(binary, 10, ini, check)[1] != 2:
        raise RuntimeError("opcache is not active in the bare C loop")
    return ini


# --------------------------------------------------------------------------------------------
# In-process measurements.
# --------------------------------------------------------------------------------------------


def exec_loop_us(rt: Any, iterations: int, warmup: int) -> float:
    """Mean us per execute_file(hello.php) over `iterations` calls on this thread."""
    execute, path = rt.execute_file, str(HELLO)
    for _ in range(warmup):
        execute(path)
    t0 = time.perf_counter()
    for _ in range(iterations):
        execute(path)
    return (time.perf_counter() - t0) / iterations * 1e6


def exec_loop_us_in_thread(rt: Any, iterations: int, warmup: int) -> float:
    """exec_loop_us() run by a new (non-main) Python thread while this one waits in join()."""
    out: list[float] = []
    failure: list[BaseException] = []

    def body() -> None:
        try:
            out.append(exec_loop_us(rt, iterations, warmup))
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=body, name="bench-caller")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return out[0]


def glue_only_us(rt: Any, iterations: int, warmup: int) -> float | None:
    """The C side alone: fp_image_execute() + fp_request_clear() called through cffi on one
    prepared request, without frankenpy's Python layer.  Uses internals: None if they moved."""
    try:
        from frankenpy.execution import Execution, ScriptArgs, lib

        pool = rt._pool
        thread = pool.acquire()
        try:
            execution = Execution(thread)
            request = execution.request
            request.apply(ScriptArgs.build(str(HELLO), [], [str(HELLO)]))
            req, handle = request.struct, thread.image.handle
            run, clear = lib.fp_image_execute, lib.fp_image_request_clear
            for _ in range(warmup):
                run(handle, req)
                clear(handle, req)
            t0 = time.perf_counter()
            for _ in range(iterations):
                run(handle, req)
                clear(handle, req)
            return (time.perf_counter() - t0) / iterations * 1e6
        finally:
            pool.release(thread)
    except Exception as exc:
        print(f"  (C glue only measurement skipped: {exc!r})", flush=True)
        return None


def map_rate(rt: Any, items: int, script: Path = HELLO) -> float:
    """Executions per second of map_file(script) over `items` items."""
    started = time.perf_counter()
    results = rt.map_file(str(script), [{}] * items)
    took = time.perf_counter() - started
    assert results[-1].ok and (script != HELLO or results[-1].output == HELLO_OUTPUT)
    return items / took


def async_rate(rt: Any, calls: int) -> tuple[float, float, float]:
    """(executions/s of aexecute_code(work.php's code) from one event loop, ASYNC_IN_FLIGHT
    at a time; the loop's longest block in ms beyond a 1 ms ticker's own sleep, measured
    meanwhile; and the CPU time the loop thread spent in that longest-CPU gap, in ms: what the
    loop itself ran, without the time the OS gave its core to other threads)."""
    import asyncio

    code = WORK.read_text().replace("<?php", "", 1)

    async def main() -> tuple[float, float, float]:
        longest, longest_cpu, done = 0.0, 0.0, False

        async def ticker() -> None:
            nonlocal longest, longest_cpu
            last, last_cpu = time.perf_counter(), time.thread_time()
            while not done:
                await asyncio.sleep(0.001)
                now, now_cpu = time.perf_counter(), time.thread_time()
                longest = max(longest, now - last - 0.001)
                longest_cpu = max(longest_cpu, now_cpu - last_cpu)
                last, last_cpu = now, now_cpu

        left = calls

        async def client() -> None:  # keeps one call in flight at a time
            nonlocal left
            while left > 0:
                left -= 1
                await rt.aexecute_code(code)

        # One call first: what the first call on a new loop does once (modules imported on
        # first use, the loop's eventfd and C workers) is not the steady state measured here.
        await rt.aexecute_code(code)
        tick = asyncio.create_task(ticker())
        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(ASYNC_IN_FLIGHT)))
        took = time.perf_counter() - started
        done = True
        await tick
        return calls / took, longest * 1000, longest_cpu * 1000

    return asyncio.run(main())


def throughput(rt: Any, callers: int, seconds: float, script: Path = HELLO) -> float:
    """Executions per second of `script` with `callers` Python threads calling execute_file."""
    path = str(script)
    barrier = threading.Barrier(callers + 1)
    counts = [0] * callers
    ends = [0.0] * callers
    start = [0.0]
    failure: list[BaseException] = []

    def body(index: int) -> None:
        execute = rt.execute_file
        try:
            barrier.wait()
            deadline = start[0] + seconds
            done = 0
            while time.perf_counter() < deadline:
                execute(path)
                done += 1
            counts[index] = done
            ends[index] = time.perf_counter()
        except BaseException as exc:
            failure.append(exc)

    workers = [threading.Thread(target=body, args=(i,), name=f"bench-tp-{i}") for i in range(callers)]
    for worker in workers:
        worker.start()
    start[0] = time.perf_counter()  # read by the callers once the barrier lets them go
    barrier.wait()
    for worker in workers:
        worker.join()
    if failure:
        raise failure[0]
    return sum(counts) / (max(ends) - start[0])


# --------------------------------------------------------------------------------------------
# The run.
# --------------------------------------------------------------------------------------------


def progress(text: str) -> None:
    """A transient progress line on a terminal (nothing when stderr is not one)."""
    if sys.stderr.isatty():
        print(f"\r  {text:<40}", end="" if text else "\r", file=sys.stderr, flush=True)


def paired(base: list[float], other: list[float]) -> float:
    """The median of the rounds' ratios other/base: each round measures both back to back, so
    a round that ran while the machine was slower (or on its slower CPU) is slower on both
    sides; a ratio of medians would compare a fast-machine median with a slow-machine one."""
    return med([b / a for a, b in zip(base, other, strict=True)])


def med(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float]) -> str:
    return f"{min(values):.1f}-{max(values):.1f}"


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def measure_startup(cfg: dict[str, Any], tmp: Path, warm_cache: Path) -> dict[str, Any]:
    cold: dict[int, list[float]] = {n: [] for n in STARTUP_THREADS}
    warm: dict[int, list[float]] = {n: [] for n in STARTUP_THREADS}
    warm_private: dict[int, list[float]] = {n: [] for n in STARTUP_THREADS}
    for r in range(cfg["cold_rounds"]):
        for n in STARTUP_THREADS:
            cache = tmp / f"cold-{n}-{r}"
            cache.mkdir()
            cold[n].append(run_child("startup", n, False, cache)["seconds"])
            written = sum(1 for p in cache.rglob("*.so") if p.is_file())
            if written < n:
                raise RuntimeError(f"cold start-up of {n} threads wrote only {written} image files")
            shutil.rmtree(cache, ignore_errors=True)
    # Prime the warm cache with every image (and the opcache copies) the rest of the run uses.
    run_child("startup", max(STARTUP_THREADS), cfg["opcache"], warm_cache)
    for _ in range(cfg["warm_rounds"]):
        for n in STARTUP_THREADS:
            warm[n].append(run_child("startup", n, False, warm_cache)["seconds"])
            warm_private[n].append(run_child("startup", n, False, warm_cache, share=False)["seconds"])
    return {"cold": cold, "warm": warm, "warm_private": warm_private}


def measure_rss(cfg: dict[str, Any], warm_cache: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    variants = [("plain", False, True), ("opcache", True, True), ("private", False, False)]
    for variant, opcache, share in variants:
        if opcache and not cfg["opcache"]:
            continue
        samples: dict[int, list[dict[str, Any]]] = {n: [] for n in RSS_THREADS}
        for _ in range(cfg["rss_rounds"]):
            for n in RSS_THREADS:
                samples[n].append(run_child("rss", n, opcache, warm_cache, share))
        row: dict[str, float] = {}
        lo, hi = RSS_THREADS
        for key in ("rss", "pss"):
            for n in RSS_THREADS:
                row[f"{key}{n}"] = med([s["after"][key] for s in samples[n]]) / 1024
            row[f"{key}_before"] = med([s["before"][key] for s in samples[lo]]) / 1024
            row[f"{key}_per_thread"] = (row[f"{key}{hi}"] - row[f"{key}{lo}"]) / (hi - lo)
        out[variant] = row
    return out


def measure_in_process(
    cfg: dict[str, Any], frankenpy: Any, binary: Path, op_ini: Path | None
) -> dict[str, Any]:
    runtimes: dict[str, Any] = {}
    try:
        for label, threads, opcache in (
            ("plain1", 1, False),
            ("plain2", 2, False),
            ("op1", 1, True),
            ("op2", 2, True),
        )[: 4 if cfg["opcache"] and not cfg["only_batch"] else 2]:
            runtimes[label] = frankenpy.Runtime(num_threads=threads, opcache=opcache).start()
            result = runtimes[label].execute_file(str(HELLO))
            if result.output != HELLO_OUTPUT or not result.ok:
                raise RuntimeError(f"hello.php on {label}: unexpected result {result!r}")
        n, warm = cfg["py_iters"], cfg["warmup"]
        series: dict[str, list[float]] = {
            k: [] for k in ("c", "c_op", "main", "thread", "op_main", "op_thread", "glue", "op_glue")
        }
        cpus = sorted(os.sched_getaffinity(0))
        for r in range(0 if cfg["only_batch"] else cfg["rounds"]):
            progress(f"overhead round {r + 1}/{cfg['rounds']}")
            # (a process or thread started from here inherits this thread's CPU affinity)
            os.sched_setaffinity(0, {cpus[r % len(cpus)]})
            series["c"].append(bare_c_us(binary, cfg["c_iters"]))
            if cfg["opcache"] and op_ini is not None:
                series["c_op"].append(bare_c_us(binary, cfg["c_iters"], op_ini))
            series["main"].append(exec_loop_us(runtimes["plain1"], n, warm))
            series["thread"].append(exec_loop_us_in_thread(runtimes["plain1"], n, warm))
            if cfg["opcache"]:
                series["op_main"].append(exec_loop_us(runtimes["op1"], n, warm))
                series["op_thread"].append(exec_loop_us_in_thread(runtimes["op1"], n, warm))
            for key, label in (("glue", "plain1"), ("op_glue", "op1"))[: 2 if cfg["opcache"] else 1]:
                glue = glue_only_us(runtimes[label], n, warm)
                if glue is not None:
                    series[key].append(glue)
        os.sched_setaffinity(0, cpus)
        tp: dict[str, list[float]] = {k: [] for k in runtimes}
        work: dict[str, list[float]] = {k: [] for k in ("plain1", "plain2")}
        for r in range(0 if cfg["only_batch"] else cfg["tp_rounds"]):
            progress(f"throughput round {r + 1}/{cfg['tp_rounds']}")
            for label in tp:
                tp[label].append(
                    throughput(runtimes[label], 2 if label.endswith("2") else 1, cfg["tp_seconds"])
                )
            for label in work:
                work[label].append(throughput(
                    runtimes[label], 2 if label.endswith("2") else 1, cfg["tp_seconds"], WORK
                ))
        maps: dict[str, list[float]] = {"plain1": [], "plain2": []}
        map_work: dict[str, list[float]] = {"plain1": [], "plain2": []}
        asyncs: dict[str, list[float]] = {"plain1": [], "plain2": []}
        blocked: list[float] = []
        blocked_cpu: list[float] = []
        for r in range(cfg["tp_rounds"]):
            progress(f"map/async round {r + 1}/{cfg['tp_rounds']}")
            for label in maps:
                maps[label].append(map_rate(runtimes[label], MAP_ITEMS))
                map_work[label].append(map_rate(runtimes[label], MAP_WORK_ITEMS, WORK))
                rate, block, block_cpu = async_rate(runtimes[label], ASYNC_CALLS)
                asyncs[label].append(rate)
                blocked.append(block)
                blocked_cpu.append(block_cpu)
        progress("")
        return {"overhead": series, "throughput": tp, "work_throughput": work, "map": maps,
                "map_work": map_work, "async": asyncs, "async_longest_block_ms": blocked,
                "async_longest_block_cpu_ms": blocked_cpu}
    finally:
        for rt in runtimes.values():
            rt.shutdown()


def report(res: dict[str, Any], cfg: dict[str, Any], header: str) -> str:
    lines = [header, ""]
    summary: list[tuple[str, str, bool | None]] = []
    if not cfg["only_batch"]:
        summary = report_overhead(res, cfg, lines)
    report_batch(res, cfg, lines, summary)
    if not cfg["only_batch"]:
        report_memory(res, cfg, lines, summary)
    lines.append("Summary")
    for label, value, ok in summary:
        result = "info" if ok is None else verdict(ok)
        lines.append(f"  {result:<7} {label:<62} {value}")
    return "\n".join(lines)


def report_overhead(
    res: dict[str, Any], cfg: dict[str, Any], lines: list[str]
) -> list[tuple[str, str, bool | None]]:
    ov, tp = res["overhead"], res["throughput"]
    lines.append(
        f"1+5. Per-execution cost, 1 PHP thread, hello.php (median of {cfg['rounds']} interleaved, pinned "
        f"rounds; {cfg['py_iters']} execs/round, C loop {cfg['c_iters']} requests/round)"
    )
    lines.append(f"  {'measurement':<46} {'us/exec':>8} {'min-max':>12} {'vs C':>7}  target (vs its C loop)")
    # (label, series, baseline series, target)
    rows: list[tuple[str, str, str, float | None]] = [
        ("bare C embed loop (bench_embed_loop -n)", "c", "c", None),
        ("bare C embed loop, opcache (-c INI -s frankenphp)", "c_op", "c_op", None),
        ("execute_file, main thread", "main", "c", OVERHEAD_TARGET),
        ("execute_file, non-main thread", "thread", "c", OVERHEAD_TARGET),
        ("execute_file, main thread, opcache", "op_main", "c_op", OPCACHE_OVERHEAD_TARGET),
        ("execute_file, non-main thread, opcache", "op_thread", "c_op", OPCACHE_OVERHEAD_TARGET),
        ("(info) C glue only: fp_image_execute via cffi", "glue", "c", None),
        ("(info) C glue only, opcache", "op_glue", "c_op", None),
    ]
    summary: list[tuple[str, str, bool | None]] = []
    for label, key, base, target in rows:
        if not ov[key] or not ov[base]:
            continue
        value = med(ov[key])
        ratio = paired(ov[base], ov[key])
        mark = f"  {verdict(ratio <= target)} (<= {target}x)" if target else ""
        lines.append(f"  {label:<46} {value:8.1f} {spread(ov[key]):>12} {ratio:6.2f}x{mark}")
        if target:
            what = "bare C with opcache" if base == "c_op" else "bare C"
            summary.append(
                (f"{label}: within {target}x of {what}", f"{ratio:.2f}x ({value:.1f} us)", ratio <= target)
            )
    lines.append("")

    lines.append(
        f"2+5. Throughput, hello.php, one Python caller thread per PHP thread (median of "
        f"{cfg['tp_rounds']} rounds of {cfg['tp_seconds']:g} s)"
    )
    lines.append(
        f"  {'runtime':<14} {'1 thread/s':>11} {'2 threads/s':>12} {'2T/1T':>7}  (ideal 2.00x on 2 cores)"
    )
    for label, one, two in (("opcache off", "plain1", "plain2"), ("opcache on", "op1", "op2")):
        if one not in tp:
            continue
        t1, t2, ratio = med(tp[one]), med(tp[two]), paired(tp[one], tp[two])
        ok = ratio >= SCALING_TARGET
        lines.append(f"  {label:<14} {t1:11,.0f} {t2:12,.0f} {ratio:6.2f}x  {verdict(ok)} (target >= 1.7x)")
        summary.append((f"throughput 2T/1T, {label}: >= 1.7x", f"{ratio:.2f}x", ok))
    work = res["work_throughput"]
    t1, t2, ratio = med(work["plain1"]), med(work["plain2"]), paired(work["plain1"], work["plain2"])
    lines.append(f"  {'work.php':<14} {t1:11,.0f} {t2:12,.0f} {ratio:6.2f}x  (a ~0.3 ms loop; opcache off)")
    summary.append(("throughput 2T/1T, work.php (no target)", f"{ratio:.2f}x", None))
    lines.append(
        "  (hello.php spends ~10 us in PHP per call; the GIL is held only around it, so the two"
        " callers' PHP runs overlap as long as the machine has two free cores)"
    )
    lines.append("")
    return summary


def report_batch(
    res: dict[str, Any], cfg: dict[str, Any], lines: list[str], summary: list[tuple[str, str, bool | None]]
) -> None:
    m1, m2 = med(res["map"]["plain1"]), med(res["map"]["plain2"])
    a1, a2 = med(res["async"]["plain1"]), med(res["async"]["plain2"])
    map_ratio = paired(res["map"]["plain1"], res["map"]["plain2"])
    async_ratio = paired(res["async"]["plain1"], res["async"]["plain2"])
    work_ratio = paired(res["map_work"]["plain1"], res["map_work"]["plain2"])
    block = max(res["async_longest_block_ms"])
    lines.append(f"2b. Batches and asyncio, opcache off (median of {cfg['tp_rounds']} rounds)")
    lines.append(f"  {'measure':<44} {'1 thread/s':>11} {'2 threads/s':>12} {'2T/1T':>7}")
    lines.append(f"  {f'map_file, {MAP_ITEMS:,} x hello.php':<44} {m1:11,.0f} {m2:12,.0f} {map_ratio:6.2f}x"
                 f"  {verdict(map_ratio >= MAP_TARGET)} (target >= 1.85x)")
    w1, w2 = med(res["map_work"]["plain1"]), med(res["map_work"]["plain2"])
    lines.append(f"  {f'(control) map_file, {MAP_WORK_ITEMS:,} x work.php':<44} {w1:11,.0f} {w2:12,.0f}"
                 f" {work_ratio:6.2f}x  (PHP only: the cores this run had)")
    lines.append(f"  {f'aexecute_code, {ASYNC_CALLS:,} x work.php, 8 in flight':<44} {a1:11,.0f} {a2:12,.0f}"
                 f" {async_ratio:6.2f}x  {verdict(async_ratio >= SCALING_TARGET)} (target >= 1.7x)")
    lines.append(f"  longest event-loop block during aexecute_code: {block:.2f} ms"
                 f"  {verdict(block <= 1.0)} (target <= 1 ms)")
    lines.append(f"  (info) the loop thread's own CPU in its longest gap: "
                 f"{max(res['async_longest_block_cpu_ms']):.2f} ms (the rest of a block is the OS"
                 " running other threads on its core)")
    summary.append(("map_file 2T/1T: >= 1.85x", f"{map_ratio:.2f}x", map_ratio >= MAP_TARGET))
    summary.append(("aexecute_code 2T/1T: >= 1.7x", f"{async_ratio:.2f}x", async_ratio >= SCALING_TARGET))
    summary.append(("aexecute_code, longest loop block: <= 1 ms", f"{block:.2f} ms", block <= 1.0))
    lines.append("")


def report_memory(
    res: dict[str, Any], cfg: dict[str, Any], lines: list[str], summary: list[tuple[str, str, bool | None]]
) -> None:
    mem, st = res["rss"], res["startup"]
    lo, hi = RSS_THREADS
    lines.append(
        f"3+5. Memory per extra PHP thread: fresh process per runtime, each thread ran hello.php once; "
        f"({hi}T - {lo}T)/{hi - lo}, MiB (median of {cfg['rss_rounds']})"
    )
    lines.append(
        f"  {'runtime':<14} {'RSS before':>10} {'RSS 1T':>8} {'RSS 9T':>8} {'RSS/thr':>8}"
        f" {'PSS 1T':>8} {'PSS 9T':>8} {'PSS/thr':>8}  targets RSS/thr <= 8, PSS/thr <= 3.0 (4.5 opcache)"
    )
    rows = (("opcache off", "plain"), ("opcache on", "opcache"), ("private pages", "private"))
    for label, key in rows:
        if key not in mem:
            continue
        m = mem[key]
        ok = m["rss_per_thread"] <= RSS_TARGET_MIB and m["pss_per_thread"] <= PSS_TARGET_MIB.get(key, 1e9)
        lines.append(
            f"  {label:<14} {m['rss_before']:10.1f} {m['rss1']:8.1f} {m['rss9']:8.1f} "
            f"{m['rss_per_thread']:8.2f} {m['pss1']:8.1f} {m['pss9']:8.1f} {m['pss_per_thread']:8.2f}"
            f"  {verdict(ok) if key in PSS_TARGET_MIB else 'before page sharing (FRANKENPY_SHARE_PAGES=0)'}"
        )
        if key in PSS_TARGET_MIB:
            summary.append(
                (
                    f"PSS per extra PHP thread, {label}: <= {PSS_TARGET_MIB[key]} MiB",
                    f"{m['pss_per_thread']:.2f} MiB (RSS {m['rss_per_thread']:.2f})",
                    ok,
                )
            )
    lines.append("")

    lines.append(
        f"4. Start-up, Runtime(num_threads=N).start() in a fresh process, seconds (median; cold: "
        f"empty cache dir, {cfg['cold_rounds']} runs; warm: {cfg['warm_rounds']} runs)"
    )
    lines.append(
        f"  {'threads':>7} {'cold':>8} {'warm':>8} {'warm, private pages':>20}  target warm(8) < 0.5 s"
    )
    for n in STARTUP_THREADS:
        cold, warm, private = med(st["cold"][n]), med(st["warm"][n]), med(st["warm_private"][n])
        mark = f"  {verdict(warm < STARTUP_TARGET_S)}" if n == 8 else ""
        lines.append(f"  {n:>7} {cold:8.3f} {warm:8.3f} {private:20.3f}{mark}")
        if n == 8:
            summary.append(("start-up of 8 threads, warm: < 0.5 s", f"{warm:.3f} s", warm < STARTUP_TARGET_S))
    lines.append("")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (about 15 s)")
    parser.add_argument("--json", metavar="FILE", help="also write the raw measurements here")
    parser.add_argument("--only", choices=("batch",),
                        help="measure only the batches and asyncio (section 2b), in this process")
    parser.add_argument("--child", choices=("rss", "startup"), help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--opcache", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        measure: Callable[[int, bool], dict[str, Any]] = child_rss if args.child == "rss" else child_startup
        print(json.dumps(measure(args.threads, args.opcache)))
        return

    cfg = dict(PROFILES["quick" if args.quick else "full"])
    cfg["only_batch"] = args.only == "batch"
    began = time.perf_counter()
    load_start = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    frankenpy = _import_frankenpy()
    try:
        frankenpy.images.extension_path("opcache")
        cfg["opcache"] = True
    except Exception as exc:
        cfg["opcache"] = False
        print(f"opcache rows skipped: {exc}", flush=True)
    binary = ensure_bench_binary()
    now = datetime.datetime.now().astimezone()
    header = (
        f"frankenpy runtime benchmark, {now:%Y-%m-%d %H:%M %Z}, "
        f"{'--quick' if args.quick else 'full'} run\n"
        f"  {platform.node()}: {platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, frankenpy from {Path(frankenpy.__file__).parent}\n"
        f"  script {HELLO.relative_to(ROOT)}; C baselines {shown(binary)} -n "
        f"(stock embed SAPI, built-in extensions only) and -c INI -s frankenphp (with opcache)"
    )
    tmp = Path(tempfile.mkdtemp(prefix="frankenpy-bench-"))
    warm_cache = tmp / "warm"
    warm_cache.mkdir()
    os.environ["FRANKENPY_CACHE_DIR"] = str(warm_cache)  # this process's runtimes, too
    results: dict[str, Any] = {}
    try:
        op_ini = None
        if not cfg["only_batch"]:
            print("start-up (fresh processes) ...", flush=True)
            results["startup"] = measure_startup(cfg, tmp, warm_cache)
            # Before this process loads any image: the children's PSS must not be shared with ours.
            print("memory per thread (fresh processes) ...", flush=True)
            results["rss"] = measure_rss(cfg, warm_cache)
        if cfg["opcache"] and not cfg["only_batch"]:
            try:
                op_ini = opcache_ini(frankenpy, tmp, binary)
            except RuntimeError as exc:
                print(f"bare C loop with opcache skipped: {exc}", flush=True)
        print("per-execution cost and throughput (this process) ...", flush=True)
        results.update(measure_in_process(cfg, frankenpy, binary, op_ini))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = report(results, cfg, header)
    print()
    print(text)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\n(total {time.perf_counter() - began:.0f} s; load average at start {load_start}, at end {load})")
    if args.json:
        Path(args.json).write_text(json.dumps({"config": cfg, "results": results}, indent=1))


if __name__ == "__main__":
    main()
