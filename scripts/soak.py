#!/usr/bin/env python3
"""Soak test: mixed load on one runtime for a long time; resources must stay flat.

For ``--duration`` seconds (default 600) it runs, at once:

- ``--callers`` Python threads calling ``execute_code``/``execute_file`` with a mix of scripts
  (output, sleeps, busy loops, fatal errors, ``exit(n)``, time-outs, memory_limit exhaustion);
- HTTP clients on keep-alive connections to the WSGI server (``frankenpy.http.server``) on
  127.0.0.1: classic PHP pages and an HTTP worker;
- background workers whose script crashes (or exits 0) at random;
- ``restart_workers()`` every ``--restart-every`` seconds.

Every ``--interval`` seconds (default 30) it prints RSS, open fds, OS threads and the work done.
The first sample after ``--warmup`` seconds is the baseline; it exits 1 when, at the end, RSS grew
by more than ``--max-rss-growth`` MiB, or fds or threads by more than ``--max-fd-growth`` /
``--max-thread-growth``, or when a call failed in an unexpected way (anything but a Result, an
HTTP 200/500 answer, or a clear RuntimeError after shutdown).

Usage::

    python3 scripts/soak.py [--duration 600] [--interval 30]

Not run in CI (it takes minutes); needs the in-place build (``python3 setup.py build_ext --inplace``).
"""

from __future__ import annotations

import argparse
import http.client
import logging
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import frankenpy  # noqa: E402
from frankenpy.http.app import PHPApp  # noqa: E402
from frankenpy.http.server import Server, Site  # noqa: E402

SCRIPTS = [
    ('echo "hello";', None),
    ('echo str_repeat("x", 200000);', None),
    ("usleep(20000); echo 1;", None),
    ("$t = microtime(true); while (microtime(true) - $t < 0.02) {}", None),
    ("undefined_function();", None),
    ("exit(3);", None),
    ("throw new Exception('boom');", None),
    ("for (;;) {}", 0.1),  # stopped by its timeout
    ('$a = []; for (;;) { $a[] = str_repeat("x", 1 << 20); }', None),  # memory_limit
    ("$s = json_encode(range(1, 5000)); echo strlen($s);", None),
]

PAGE = '<?php header("X-Soak: 1"); echo "page ", $_GET["n"] ?? 0;'
FATAL_PAGE = "<?php undefined_function();"
HTTP_WORKER = """<?php
$n = 0;
while (frankenphp_handle_request(function () use (&$n) { echo "worker ", ++$n; })) {
    if (mt_rand(0, 200) == 0) { exit(1); }   // crash now and then
}
"""
BG_WORKER = """<?php
$h = frankenphp_get_worker_handle();
for (;;) {
    $r = [$h]; $w = $e = [];
    if (stream_select($r, $w, $e, 0, 50000) > 0 && fread($h, 1) === '') { exit(0); }
    $x = mt_rand(0, 40);
    if ($x == 0) { exit(1); }          // crash
    if ($x == 1) { exit(0); }          // cooperative restart
    if ($x == 2) { undefined_function(); }
}
"""


def rss() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def tasks() -> int:
    return len(os.listdir("/proc/self/task"))


class Load:
    def __init__(self, rt: frankenpy.Runtime, port: int, script: Path, args: argparse.Namespace) -> None:
        self.rt, self.port, self.script, self.args = rt, port, script, args
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.counts = {"executions": 0, "http": 0, "restarts": 0}
        self.failures: list[str] = []

    def count(self, key: str) -> None:
        with self.lock:
            self.counts[key] += 1

    def fail(self, what: str) -> None:
        with self.lock:
            if len(self.failures) < 20:
                self.failures.append(what)

    def caller(self, seed: int) -> None:
        rng = random.Random(seed)
        while not self.stop.is_set():
            try:
                if rng.random() < 0.2:
                    result = self.rt.execute_file(self.script)
                else:
                    code, timeout = rng.choice(SCRIPTS)
                    result = self.rt.execute_code(code, timeout=timeout)
                if not isinstance(result, frankenpy.Result):
                    self.fail(f"execute returned {result!r}")
                self.count("executions")
            except Exception as exc:  # anything else is a finding
                self.fail(f"execute raised {exc!r}")

    def client(self, seed: int) -> None:
        rng = random.Random(seed)
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        while not self.stop.is_set():
            path = rng.choice(["/page.php?n=1", "/fatal.php", "/worker.php", "/worker.php"])
            try:
                conn.request("GET", path)
                response = conn.getresponse()
                response.read()
                if response.status not in (200, 500):
                    self.fail(f"GET {path}: {response.status}")
                self.count("http")
            except (OSError, http.client.HTTPException):
                conn.close()  # the server closed the connection (e.g. after a worker crash)
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.close()

    def restarter(self) -> None:
        while not self.stop.wait(self.args.restart_every):
            try:
                self.rt.restart_workers(grace=1.0)
                self.count("restarts")
            except Exception as exc:
                self.fail(f"restart_workers raised {exc!r}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between samples (default 30)")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds before the baseline sample")
    parser.add_argument("--threads", type=int, default=2, help="PHP threads for executions (default 2)")
    parser.add_argument("--callers", type=int, default=3, help="Python threads calling execute_*")
    parser.add_argument("--clients", type=int, default=3, help="HTTP client threads")
    parser.add_argument("--restart-every", type=float, default=5.0, help="seconds between restart_workers()")
    parser.add_argument("--max-rss-growth", type=float, default=50.0, help="MiB (default 50)")
    parser.add_argument("--max-fd-growth", type=int, default=20)
    parser.add_argument("--max-thread-growth", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)  # the crashes are deliberate: keep the log quiet

    with tempfile.TemporaryDirectory(prefix="frankenpy-soak-") as tmp:
        root = Path(tmp)
        (root / "page.php").write_text(PAGE)
        (root / "fatal.php").write_text(FATAL_PAGE)
        (root / "worker.php").write_text(HTTP_WORKER)
        (root / "bg.php").write_text(BG_WORKER)
        script = root / "script.php"
        script.write_text('<?php echo implode(",", $argv), " ", getenv("SOAK") ?: "-";')
        rt = frankenpy.Runtime(
            args.threads,
            php_ini={"memory_limit": "32M"},
            workers=[
                frankenpy.Worker(
                    "bg", str(root / "bg.php"), num=2, background=True, max_consecutive_failures=-1
                ),
                frankenpy.Worker("web", str(root / "worker.php"), num=2, max_consecutive_failures=-1),
            ],
        )
        rt.start()
        server = Server(rt, [Site("127.0.0.1", 0, PHPApp(rt, root))])
        server.start()
        load = Load(rt, server.ports[0], script, args)
        rng = random.Random(args.seed)
        threads = [threading.Thread(target=load.caller, args=(rng.random(),)) for _ in range(args.callers)]
        threads += [threading.Thread(target=load.client, args=(rng.random(),)) for _ in range(args.clients)]
        threads.append(threading.Thread(target=load.restarter))
        for t in threads:
            t.start()

        began = time.monotonic()
        baseline = None
        print(f"{'t (s)':>6} {'RSS MiB':>8} {'fds':>5} {'threads':>8} {'executions':>11} {'http':>8} "
              f"{'restarts':>8} {'crashes':>8}", flush=True)

        def sample() -> tuple[int, int, int]:
            now = (rss(), fds(), tasks())
            crashes = sum(s.crashes for s in rt.workers())
            print(f"{time.monotonic() - began:6.0f} {now[0] / 2**20:8.1f} {now[1]:5d} {now[2]:8d} "
                  f"{load.counts['executions']:11d} {load.counts['http']:8d} {load.counts['restarts']:8d} "
                  f"{crashes:8d}", flush=True)
            return now

        next_sample = began + min(args.warmup, args.interval)
        current = sample()
        while time.monotonic() - began < args.duration:
            time.sleep(max(0.0, min(next_sample, began + args.duration) - time.monotonic()))
            if time.monotonic() >= next_sample:
                current = sample()
                if baseline is None and time.monotonic() - began >= args.warmup:
                    baseline = current
                next_sample += args.interval
        final = current if time.monotonic() - (next_sample - args.interval) < 1.0 else sample()
        load.stop.set()
        for t in threads:
            t.join(60)
        server.stop(grace=5)

    if baseline is None:
        baseline = final
    growth = (final[0] - baseline[0]) / 2**20, final[1] - baseline[1], final[2] - baseline[2]
    print(f"growth after warm-up: RSS {growth[0]:+.1f} MiB, fds {growth[1]:+d}, threads {growth[2]:+d}")
    problems = list(load.failures)
    if growth[0] > args.max_rss_growth:
        problems.append(f"RSS grew by {growth[0]:.1f} MiB (max {args.max_rss_growth})")
    if growth[1] > args.max_fd_growth:
        problems.append(f"fds grew by {growth[1]} (max {args.max_fd_growth})")
    if growth[2] > args.max_thread_growth:
        problems.append(f"threads grew by {growth[2]} (max {args.max_thread_growth})")
    if any(t.is_alive() for t in threads):
        problems.append("a load thread did not stop")
    for problem in problems:
        print("FAIL:", problem)
    print("soak:", "FAILED" if problems else "OK")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
