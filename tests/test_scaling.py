"""Thread autoscaling (frankenpy.scaling): real PHP threads under a real burst.

The scale-down pass runs every 5 s in production; tests shorten it (and pin the CPU probe
where the decision must not depend on the machine's load).
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_for

import frankenpy
from frankenpy import cli, scaling
from frankenpy.config import ConfigError, parse
from frankenpy.http.app import PHPApp
from frankenpy.http.server import Server, Site


@pytest.fixture
def fast_downscale(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scaling, "DOWNSCALE_INTERVAL", 0.3)


@pytest.fixture
def idle_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe reads 0 %: other test suites on the machine's two cores must not veto."""
    monkeypatch.setattr(scaling, "process_cpu_usage", lambda: 0.0)


def burst(count: int, call: Callable[[], object]) -> list[float]:
    latencies: list[float] = []
    lock = threading.Lock()

    def one() -> None:
        started = time.monotonic()
        call()
        with lock:
            latencies.append(time.monotonic() - started)

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return latencies


def total_threads_metric(rt: frankenpy.Runtime) -> int:
    lines = rt.metrics_text().splitlines()
    line = next(text for text in lines if text.startswith("frankenphp_total_threads "))
    return int(float(line.split()[1]))


def test_sizes_and_caps() -> None:
    assert scaling.parse_size("128M") == 128 << 20
    assert scaling.parse_size("1g") == 1 << 30
    assert scaling.parse_size(4096) == 4096
    assert scaling.parse_size("-1") is None
    with pytest.raises(ValueError, match="memory_limit"):
        scaling.parse_size("lots")
    auto = scaling.resolve_max_threads("auto", {"memory_limit": "256M"}, 2)
    assert auto == max(2, scaling.total_memory() // (256 << 20))
    assert scaling.resolve_max_threads(None, {}, 3) == 3
    with pytest.raises(ValueError, match=r"max_threads \(1\) must be >= num_threads \(2\)"):
        frankenpy.Runtime(num_threads=2, max_threads=1)
    with pytest.raises(ValueError, match="integer or 'auto'"):
        frankenpy.Runtime(max_threads="many")
    with pytest.raises(ValueError, match="max_idle_time"):
        frankenpy.Runtime(max_idle_time=0)


def test_worker_max_threads_validation(tmp_path: Path) -> None:
    script = tmp_path / "w.php"
    script.write_text("<?php\n")
    with pytest.raises(ValueError, match="max_threads applies to HTTP workers"):
        frankenpy.Worker("w", script, num=2, max_threads=1).validate()
    with pytest.raises(ValueError, match="max_threads applies to HTTP workers"):
        frankenpy.Worker("w", script, background=True, max_threads=4).validate()


@pytest.mark.timeout(60)
def test_burst_scales_regular_threads_up_then_idle_ones_down(fast_downscale: None, idle_cpu: None) -> None:
    with frankenpy.Runtime(num_threads=1, max_threads=4, max_idle_time=0.5) as rt:
        assert rt.reserved_threads == 3
        peak = [1]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], total_threads_metric(rt))
                time.sleep(0.01)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            latencies = burst(60, lambda: rt.execute_code("usleep(100000);"))
        finally:
            stop.set()
            sampler.join()
        assert len(latencies) == 60
        assert 1 < peak[0] <= 4, peak  # grew, never past max_threads
        # Serial on one thread the burst takes 6 s; the added threads absorb it.
        assert max(latencies) < 5.5, max(latencies)
        wait_for(lambda: total_threads_metric(rt) == 1, timeout=15, what="idle threads to be stopped")
        assert rt.reserved_threads == 3
        assert rt.execute_code("echo 'still fine';").output == b"still fine"
        # A second burst scales up again (the interpreters are taken over, not rebuilt).
        burst(20, lambda: rt.execute_code("usleep(100000);"))


@pytest.mark.timeout(60)
def test_no_scale_up_when_the_cpu_is_busy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scaling, "process_cpu_usage", lambda: 0.95)
    with frankenpy.Runtime(num_threads=1, max_threads=4) as rt:
        burst(15, lambda: rt.execute_code("usleep(50000);"))
        assert rt.total_threads == 1


@pytest.mark.timeout(60)
def test_no_scale_up_without_waiting(idle_cpu: None) -> None:
    """One caller at a time never waits 5 ms for a thread: nothing is added."""
    with frankenpy.Runtime(num_threads=1, max_threads=4) as rt:
        for _ in range(20):
            rt.execute_code("usleep(10000);")
        assert rt.total_threads == 1


WORKER = """<?php
while (frankenphp_handle_request(function () {
    usleep(100000);
    echo 'served';
})) {
}
"""


def _autoscaled_worker(
    tmp_path: Path, script: str, server_type: type[Any] = Server
) -> tuple[frankenpy.Runtime, Any, Callable[[], None], Callable[[], int]]:
    """A server (WSGI by default) for an HTTP worker "app" of 1 thread that may scale to 3
    (max_idle_time 0.5 s): the runtime, the started server, a GET that checks its answer, and
    the thread count."""
    root = tmp_path / "public"
    root.mkdir()
    (root / "app.php").write_text(script)
    worker = frankenpy.Worker("app", root / "app.php", num=1, max_threads=3)
    rt = frankenpy.Runtime(num_threads=1, workers=[worker], max_idle_time=0.5)
    rt.start()
    server = server_type(rt, [Site("127.0.0.1", 0, PHPApp(rt, root))])
    server.start()
    port = server.ports[0]

    def get() -> None:
        assert http_get(port, "/app.php") == (200, b"served")

    def app_threads() -> int:
        return len([s for s in rt.workers() if s.name == "app"])

    return rt, server, get, app_threads


@pytest.mark.timeout(90)
def test_burst_scales_an_http_worker(tmp_path: Path, fast_downscale: None, idle_cpu: None) -> None:
    rt, server, get, app_threads = _autoscaled_worker(tmp_path, WORKER)
    assert server.threads >= 1 + 3  # a WSGI thread for every PHP thread autoscaling may add
    try:
        peak = [1]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], app_threads())
                time.sleep(0.01)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            latencies = burst(30, get)
        finally:
            stop.set()
            sampler.join()
        assert len(latencies) == 30
        assert 1 < peak[0] <= 3, peak
        wait_for(lambda: app_threads() == 1, timeout=20, what="the idle worker threads to stop")
        assert rt.workers()[0].state == "ready"
        get()
    finally:
        server.stop(grace=5.0)


@pytest.mark.timeout(90)
def test_a_worker_thread_slow_to_stop_is_still_removed(tmp_path: Path, fast_downscale: None, idle_cpu: None,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A drained worker thread that takes longer than a pass waits for it (its request in
    progress, or work after its loop) is removed by a later pass; the scaler is not held up
    meanwhile.  It used to stay in the worker's threads for good."""
    monkeypatch.setattr(scaling.WorkerThreads, "DRAIN_WAIT", 0.05)
    rt, server, get, app_threads = _autoscaled_worker(
        tmp_path, WORKER + "usleep(1500000); // cleaning up after the loop\n")
    try:
        burst(30, get)
        wait_for(lambda: app_threads() == 1, timeout=20, what="the drained worker threads to be removed")
        assert rt.workers()[0].state == "ready"
        get()
    finally:
        server.stop(grace=5.0)


def test_config_and_cli_options(tmp_path: Path) -> None:
    (tmp_path / "w.php").write_text("<?php\n")
    config = parse(
        {
            "runtime": {"num_threads": 2, "max_threads": "auto", "max_idle_time": 2},
            "server": [{"root": ".", "worker": [{"file": "w.php", "num": 1, "max_threads": 4}]}],
        },
        base=tmp_path,
    )
    assert config.runtime["max_threads"] == "auto" and config.runtime["max_idle_time"] == 2.0
    assert config.workers[0].max_threads == 4
    bad_options = [
        ({"max_threads": "lots"}, "max_threads"),
        ({"max_threads": 1, "num_threads": 2}, "max_threads"),
        ({"max_idle_time": 0}, "max_idle_time"),
    ]
    for bad, key in bad_options:
        with pytest.raises(ConfigError, match=f"key '{key}'"):
            parse({"runtime": bad, "server": [{"root": "."}]}, base=tmp_path)
    args = cli.build_parser().parse_args(
        ["php-server", "--root", str(tmp_path), "--max-threads", "auto", "--max-idle-time", "3"]
    )
    config = cli.apply_service_options(cli.php_server_config(args), args)
    assert (config.runtime["max_threads"], config.runtime["max_idle_time"]) == ("auto", 3.0)
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["php-server", "--max-threads", "lots"])


# --- the native server (csrc/http_server.c): C counts the waits, a StallWatch polls them ------
def http_get(port: int, path: str) -> tuple[int, bytes]:
    """GET `path` on 127.0.0.1:`port` (either server): the status and the body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def sample_peak(measure: Callable[[], int], during: Callable[[], object]) -> int:
    peak = [measure()]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], measure())
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        during()
    finally:
        stop.set()
        sampler.join()
    return peak[0]


@pytest.mark.timeout(120)
def test_native_burst_scales_regular_threads_up_then_down(
    tmp_path: Path, fast_downscale: None, idle_cpu: None
) -> None:
    """A burst on a page with 20 ms of usleep: requests wait in C (queue 0), the StallWatch
    sees it, the scaler adds PHP threads and as many serving threads; after max_idle_time the
    added ones go again (their serving threads drained).  Every request gets its 200, including
    the ones served while threads are being removed; the metric follows the thread count."""
    from frankenpy.http.native import NativeServer

    root = tmp_path / "public"
    root.mkdir()
    (root / "page.php").write_text("<?php usleep(20000); echo 'ok';\n")
    rt = frankenpy.Runtime(num_threads=1, max_threads=4, max_idle_time=0.5)
    rt.start()
    server = NativeServer(rt, [Site("127.0.0.1", 0, PHPApp(rt, root))])
    server.start()
    port = server.ports[0]
    results: list[tuple[int, bytes]] = []
    lock = threading.Lock()

    def one() -> None:
        result = http_get(port, "/page.php")
        with lock:
            results.append(result)

    try:
        assert server.serving_threads == 1
        peak = sample_peak(lambda: total_threads_metric(rt), lambda: burst(120, one))
        assert 1 < peak <= 4, peak  # grew, never past max_threads
        # (the scaler may be between adding a PHP thread and its serving thread)
        wait_for(lambda: server.serving_threads == rt.total_threads, timeout=10,
                 what="one serving thread per regular PHP thread")
        gauge = next(line for line in server.metrics_text().splitlines()
                     if line.startswith("frankenpy_http_serving_threads "))
        assert 1 <= int(gauge.split()[1]) <= 4, gauge
        # Scale-down while a trickle of requests keeps arriving: none lost, none 5xx.
        trickle_stop = threading.Event()

        def trickle() -> None:
            while not trickle_stop.is_set():
                one()
                time.sleep(0.05)

        trickler = threading.Thread(target=trickle)
        trickler.start()
        try:
            # (the trickle may keep one added thread busy: the pool hands out the most recently
            # used idle thread, so only the others go while it runs)
            wait_for(lambda: total_threads_metric(rt) < peak, timeout=30, what="idle threads to be stopped")
            time.sleep(1.0)
        finally:
            trickle_stop.set()
            trickler.join(30)
        wait_for(lambda: total_threads_metric(rt) == 1, timeout=30, what="every added thread to be stopped")
        wait_for(lambda: server.serving_threads == 1, timeout=10, what="serving threads to be drained")
        assert len(results) > 120
        assert all(r == (200, b"ok") for r in results), [r for r in results if r != (200, b"ok")][:5]
        assert http_get(port, "/page.php") == (200, b"ok")
    finally:
        server.stop(grace=5.0)


@pytest.mark.timeout(60)
def test_native_no_scale_up_without_waiting(tmp_path: Path, idle_cpu: None) -> None:
    """One client at a time never waits 5 ms for a thread: nothing is added."""
    from frankenpy.http.native import NativeServer

    root = tmp_path / "public"
    root.mkdir()
    (root / "page.php").write_text("<?php usleep(10000); echo 'ok';\n")
    rt = frankenpy.Runtime(num_threads=1, max_threads=4)
    rt.start()
    server = NativeServer(rt, [Site("127.0.0.1", 0, PHPApp(rt, root))])
    server.start()
    try:
        for _ in range(20):
            assert http_get(server.ports[0], "/page.php") == (200, b"ok")
        assert rt.total_threads == 1 and server.serving_threads == 1
    finally:
        server.stop(grace=5.0)


@pytest.mark.timeout(120)
def test_native_burst_scales_an_http_worker(tmp_path: Path, fast_downscale: None, idle_cpu: None) -> None:
    """The worker's C queue: added worker threads take requests in C, and go again once idle."""
    from frankenpy.http.native import NativeServer

    rt, server, get, app_threads = _autoscaled_worker(tmp_path, WORKER, NativeServer)
    try:
        latencies: list[float] = []
        served_by_added = [0]

        def measure() -> int:
            statuses = [s for s in rt.workers() if s.name == "app"]
            served_by_added[0] = max(served_by_added[0], sum(s.requests for s in statuses if s.thread > 0))
            return len(statuses)

        peak = sample_peak(measure, lambda: latencies.extend(burst(30, get)))
        assert len(latencies) == 30
        assert 1 < peak <= 3, peak
        assert served_by_added[0] > 0, "the added worker threads took no request from the C queue"
        # Serially on one thread the burst takes 3 s; the added threads took requests in C.
        wait_for(lambda: app_threads() == 1, timeout=30, what="the idle worker threads to stop")
        assert rt.workers()[0].state == "ready"
        get()
    finally:
        server.stop(grace=5.0)
