#!/usr/bin/env python3
"""Thread autoscaling under a burst: p99 with autoscaling against a fixed 2 threads.

The page waits 20 ms on I/O (``usleep(20000)``) and answers ``ok``: the CPUs are idle while a
request holds its PHP thread, which is the case autoscaling is for.  Each configuration starts
idle (2 regular PHP threads), then ``wrk -t2 -cC -dDs --latency`` hits it at once from another
process: the burst.  The scaler's warm-up is inside the measurement.

* ``fixed``: ``Runtime(num_threads=2)``;
* ``autoscaling``: ``Runtime(num_threads=2, max_threads=M)``;

each behind the WSGI server (frankenpy's waitress) and behind the native server
(``NativeServer``, where C counts the waits and a StallWatch polls them).

Reported: req/s, p50/p99 latency (wrk's), the peak of ``frankenphp_total_threads`` during the
run, and per server the p99 ratio fixed/autoscaling.  Every server listens on 127.0.0.1 only.

Usage::

    python3 scripts/bench_scaling.py [--connections 32] [--duration 8] [--max-threads 16]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import frankenpy  # noqa: E402
from frankenpy.http.app import PHPApp  # noqa: E402
from frankenpy.http.native import NativeServer  # noqa: E402
from frankenpy.http.server import Server, Site  # noqa: E402

PAGE = "<?php usleep(20000); echo 'ok';\n"


def parse_latency(text: str, percentile: str) -> float:
    """wrk's ``--latency`` line for ``percentile`` ("50%", "99%"), in milliseconds."""
    match = re.search(rf"^\s*{re.escape(percentile)}\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    if match is None:
        raise SystemExit(f"wrk output without a {percentile} line:\n{text}")
    value, unit = float(match.group(1)), match.group(2)
    return value * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run(label: str, root: Path, args: argparse.Namespace, max_threads: int | None,
        native: bool) -> dict[str, float]:
    rt = frankenpy.Runtime(num_threads=2, max_threads=max_threads)
    rt.start()
    site = Site("127.0.0.1", 0, PHPApp(rt, root))
    server: Server | NativeServer = (NativeServer(rt, [site]) if native
                                     else Server(rt, [site], threads=args.connections + 4))
    server.start()
    peak = [rt.total_threads]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rt.total_threads)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        url = f"http://127.0.0.1:{server.ports[0]}/page.php"
        out = subprocess.run(
            ["wrk", "-t2", f"-c{args.connections}", f"-d{args.duration}s", "--latency", url],
            capture_output=True, text=True, check=True,
        ).stdout
    finally:
        stop.set()
        sampler.join()
        server.stop(grace=5.0)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    result = {
        "rps": float(rate.group(1)) if rate else 0.0,
        "p50": parse_latency(out, "50%"),
        "p99": parse_latency(out, "99%"),
        "threads": float(peak[0]),
    }
    print(f"{label:<20} {result['rps']:9.0f} req/s   p50 {result['p50']:8.1f} ms   "
          f"p99 {result['p99']:8.1f} ms   peak PHP threads {int(result['threads'])}", flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--max-threads", type=int, default=16)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("bench_scaling: wrk not found (apt-get install wrk)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "page.php").write_text(PAGE)
        print(f"page: 20 ms of I/O wait; wrk -c{args.connections} -d{args.duration}s from idle")
        for name, native in (("wsgi", False), ("native", True)):
            fixed = run(f"{name} fixed 2", root, args, None, native)
            scaled = run(f"{name} auto <= {args.max_threads}", root, args, args.max_threads, native)
            print(f"{name}: p99 fixed / autoscaling: {fixed['p99'] / scaled['p99']:.1f}x   "
                  f"throughput autoscaling / fixed: {scaled['rps'] / fixed['rps']:.1f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
