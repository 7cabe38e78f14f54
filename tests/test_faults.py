"""Fault suite: shutdown/restart races, the thread pool, images, hostile scripts, crash cycles.

Anything that could take the interpreter down (a PHP thread reused or shut down under a running
script) runs in a child process, and the test asserts on its exit code and output.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from helpers import wait_for

import frankenpy
from frankenpy import images, threads
from frankenpy.images import POOL

ROOT = Path(__file__).resolve().parent.parent


def run_child(code: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh Python with this worktree's frankenpy and cache dir."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT,
    )


def assert_clean_exit(done: subprocess.CompletedProcess[str], expect: str) -> None:
    assert done.returncode == 0, f"child died with {done.returncode}:\n{done.stdout}\n{done.stderr[-3000:]}"
    assert expect in done.stdout, done.stdout + done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]


# A script that keeps the interpreter busy (allocating) well past any grace period used here.
BUSY = ('$t = microtime(true); $a = [];'
        ' while (microtime(true) - $t < 1.5) { $a[] = str_repeat("x", 100); if (count($a) > 1000) $a = []; }'
        ' echo "done";')


# --- defect 1: shutdown never hands back a PHP thread that still runs a script -------------------

@pytest.mark.timeout(60)
def test_shutdown_does_not_give_a_running_interpreter_to_the_next_runtime() -> None:
    done = run_child(f"""
        import threading, time, frankenpy
        rt = frankenpy.Runtime(1); rt.start()
        res = {{}}
        def run():
            try: res['r'] = rt.execute_code({BUSY!r})
            except BaseException as e: res['e'] = e
        t = threading.Thread(target=run); t.start(); time.sleep(0.3)
        rt.shutdown(grace=0.1)
        rt2 = frankenpy.Runtime(1); rt2.start()
        r2 = rt2.execute_code('for ($i = 0; $i < 200000; $i++) {{ $b[] = str_repeat("y", 20); }} echo "two";')
        t.join()
        r = res['r']
        print("second", r2.output.decode(), "first", r.exit_status, r.errors)
        rt2.shutdown()
    """)
    assert_clean_exit(done, "second two first 255")
    assert "Maximum execution time of 0 seconds exceeded" in done.stdout


@pytest.mark.timeout(60)
def test_stop_idle_at_exit_leaves_a_running_interpreter_alone() -> None:
    done = run_child(f"""
        import threading, time, frankenpy
        rt = frankenpy.Runtime(1); rt.start()
        t = threading.Thread(target=lambda: rt.execute_code({BUSY!r}), daemon=True)
        t.start(); time.sleep(0.3)
        rt.shutdown(grace=0.1)
        frankenpy.images.POOL.stop_idle()   # what atexit does
        time.sleep(1.5)
        print("survived")
    """)
    assert_clean_exit(done, "survived")


@pytest.mark.timeout(90)
def test_server_stop_during_a_long_classic_request(tmp_path: Path) -> None:
    """SIGTERM to php-server while a classic request runs longer than the grace period."""
    # Server.stop() itself waits up to 5 s for its connections: run past that.
    (tmp_path / "slow.php").write_text("<?php " + BUSY.replace("< 1.5", "< 8"))
    done = run_child(f"""
        import http.client, threading, time, frankenpy
        from frankenpy.http.app import PHPApp
        from frankenpy.http.server import Server, Site
        rt = frankenpy.Runtime(1); rt.start()
        server = Server(rt, [Site("127.0.0.1", 0, PHPApp(rt, {str(tmp_path)!r}))]); server.start()
        answer = []
        def get():
            conn = http.client.HTTPConnection("127.0.0.1", server.ports[0], timeout=20)
            try:
                conn.request("GET", "/slow.php"); answer.append(conn.getresponse().status)
            except Exception as exc:
                answer.append(type(exc).__name__)
        client = threading.Thread(target=get); client.start()
        while rt.busy_threads == 0: time.sleep(0.01)
        server.stop(grace=0.1)
        rt2 = frankenpy.Runtime(1); rt2.start()
        r = rt2.execute_code('for ($i = 0; $i < 100000; $i++) {{ $b[] = "y$i"; }} echo count($b);')
        print("next", r.output.decode())
        client.join(20)
        frankenpy.images.POOL.stop_idle()
        time.sleep(0.5)
        print("answered", answer)
    """)
    assert_clean_exit(done, "next 100000")
    assert "answered" in done.stdout


# bcrypt does not check the VM's interrupt flag: a script inside one hash survives a force-stop
# until the hash is done.
SLOW_HASH = 'password_hash("x", PASSWORD_BCRYPT, ["cost" => 14]); echo "hashed";'


@pytest.mark.timeout(60)
def test_an_execution_that_survives_its_force_stop_gets_its_image_back_only_when_it_returns() -> None:
    done = run_child(f"""
        import threading, time, frankenpy
        from frankenpy import threads
        from frankenpy.images import POOL
        threads.FORCE_STOP_WAIT = 0.05
        rt = frankenpy.Runtime(1); rt.start()
        image = rt._threads[0].image
        res = {{}}
        t = threading.Thread(target=lambda: res.setdefault('r', rt.execute_code({SLOW_HASH!r})))
        t.start()
        while rt.busy_threads < 1:  # the hash runs (not only: started within some fixed time)
            time.sleep(0.01)
        rt.shutdown(grace=0.05)
        assert image not in POOL._free, "image handed back while its script runs"
        POOL.stop_idle()
        rt2 = frankenpy.Runtime(1); rt2.start()
        assert rt2._threads[0].image is not image
        print("other", rt2.execute_code('echo 2;').output.decode())
        t.join()
        assert image in POOL._free, "image not given back once its script returned"
        print("first", res['r'].exit_status, res['r'].output.decode())
        rt2.shutdown()
        rt3 = frankenpy.Runtime(2); rt3.start()
        indexes = sorted(t.image.index for t in rt3._threads)
        print("reused", indexes, rt3.execute_code('echo 3;').output.decode())
        rt3.shutdown()
    """)
    assert_clean_exit(done, "other 2")
    assert "first 255" in done.stdout  # stopped once the hash returned
    assert "reused [0, 1] 3" in done.stdout


@pytest.mark.timeout(60)
def test_a_worker_that_survives_its_force_stop_gets_its_image_back_when_it_ends(tmp_path: Path) -> None:
    script = tmp_path / "w.php"
    script.write_text('<?php frankenphp_get_worker_handle(); for (;;) { ' + SLOW_HASH + ' }')
    done = run_child(f"""
        import time, frankenpy
        from frankenpy import threads, workers
        from frankenpy.images import POOL
        threads.FORCE_STOP_WAIT = workers.FORCE_STOP_WAIT = 0.05
        rt = frankenpy.Runtime(1, workers=[frankenpy.Worker("w", {str(script)!r}, background=True)])
        rt.start()
        time.sleep(0.3)
        image = rt._threads[1].image
        wt = rt.workers_group.threads[0]
        rt.shutdown(grace=0.05)
        assert image not in POOL._free, "worker's image handed back while its script runs"
        POOL.stop_idle()
        wt.join(10)
        assert not wt.alive
        deadline = time.monotonic() + 5
        while image not in POOL._free and time.monotonic() < deadline:
            time.sleep(0.01)
        assert image in POOL._free, "worker's image not given back"
        rt2 = frankenpy.Runtime(2); rt2.start()
        print("reused", rt2.execute_code('echo 1;').output.decode())
        rt2.shutdown()
    """)
    assert_clean_exit(done, "reused 1")


# --- defect 10: the thread pool serves callers in arrival order -----------------------------------

@pytest.mark.timeout(60)
def test_pool_serves_waiters_in_arrival_order_against_greedy_callers(runtime1: frankenpy.Runtime) -> None:
    pool = runtime1._pool
    assert pool is not None
    held = pool.acquire()
    order: list[str] = []

    def caller(name: str) -> None:
        thread = pool.acquire(10.0)
        assert thread is not None
        order.append(name)
        pool.release(thread)
        # Greedy: come straight back.  A newcomer must queue behind those already waiting.
        thread = pool.acquire(10.0)
        assert thread is not None
        order.append(name + "2")
        pool.release(thread)

    callers = []
    for i, name in enumerate("ABCDE"):
        t = threading.Thread(target=caller, args=(name,))
        t.start()
        callers.append(t)
        wait_for(lambda n=i + 1: pool.waiting == n, what=f"caller {name} queued")
    pool.release(held)
    for t in callers:
        t.join(10)
    # Everyone already waiting went before any caller's second turn.  The order of the second
    # turns is the order in which the callers came back, which the scheduler decides (on a
    # loaded machine B can be back before A).
    assert order[:5] == ["A", "B", "C", "D", "E"], order
    assert sorted(order[5:]) == ["A2", "B2", "C2", "D2", "E2"], order


@pytest.mark.timeout(60)
def test_a_waiter_is_never_starved_by_contending_callers(runtime1: frankenpy.Runtime) -> None:
    stop = threading.Event()
    served = [0]

    def hammer() -> None:
        while not stop.is_set():
            with runtime1.borrow_thread(5.0) as thread:
                assert thread is not None
                served[0] += 1
                time.sleep(0.001)

    hammers = [threading.Thread(target=hammer) for _ in range(6)]
    for t in hammers:
        t.start()
    try:
        wait_for(lambda: served[0] > 50, what="contention")
        waits = []
        for _ in range(20):
            began = time.monotonic()
            with runtime1.borrow_thread(2.0) as thread:
                assert thread is not None, "a waiter timed out while others were served"
            waits.append(time.monotonic() - began)
        # FIFO: at most the 6 callers ahead (1 ms each, plus scheduling on a loaded machine).
        assert max(waits) < 1.5, waits
    finally:
        stop.set()
        for t in hammers:
            t.join(10)


@pytest.mark.timeout(30)
def test_pool_timeouts_are_exact_and_leave_no_waiter_behind(runtime1: frankenpy.Runtime) -> None:
    with runtime1.borrow_thread() as held:
        assert held is not None
        began = time.monotonic()
        with runtime1.borrow_thread(0.3) as thread:
            assert thread is None
        waited = time.monotonic() - began
        assert 0.3 <= waited < 1.0
        assert runtime1.queue_depth == 0
    assert runtime1.execute_code("echo 1;").output == b"1"


@pytest.mark.timeout(30)
def test_shutdown_wakes_queued_callers_with_runtime_error(make_runtime) -> None:  # type: ignore[no-untyped-def]
    rt = make_runtime(num_threads=1)
    outcome: list[object] = []
    blocker = threading.Thread(target=lambda: rt.execute_code("usleep(300000);"))
    blocker.start()
    wait_for(lambda: rt.busy_threads == 1, what="busy thread")

    def waiter() -> None:
        try:
            outcome.append(rt.execute_code("echo 1;"))
        except RuntimeError as exc:
            outcome.append(exc)

    waiter_thread = threading.Thread(target=waiter)
    waiter_thread.start()
    wait_for(lambda: rt.queue_depth == 1, what="queued caller")
    rt.shutdown(grace=5)
    blocker.join(5)
    waiter_thread.join(5)
    assert len(outcome) == 1 and isinstance(outcome[0], RuntimeError), outcome
    assert "shut down" in str(outcome[0])


# --- defect 11: failed starts keep the image pool flat ------------------------------------------

def _halting_worker(tmp_path: Path) -> frankenpy.Worker:
    script = tmp_path / "halt.php"
    script.write_text("<?php exit(3);")
    return frankenpy.Worker("halts", str(script), background=True, max_consecutive_failures=0)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("failure", ["missing extension", "not an extension", "worker halts"])
def test_failing_starts_reuse_images(tmp_path: Path, failure: str) -> None:
    def attempt() -> None:
        if failure == "missing extension":
            rt = frankenpy.Runtime(2, extensions=[str(tmp_path / "nope.so")])
        elif failure == "not an extension":
            rt = frankenpy.Runtime(2, extensions=["/usr/lib/x86_64-linux-gnu/libz.so.1"])
        else:
            rt = frankenpy.Runtime(1, workers=[_halting_worker(tmp_path)])
        with pytest.raises((RuntimeError, images.ImageError)):
            rt.start()
        assert rt.state == "stopped"

    attempt()
    count, free = POOL._count, len(POOL._free)
    for _ in range(5):
        attempt()
    assert (POOL._count, len(POOL._free)) == (count, free)
    with frankenpy.Runtime(2) as rt:
        assert rt.execute_code("echo 1;").output == b"1"
    assert POOL._count == count


class _InterruptAfterStartup:
    """frankenpy.threads.lib whose fp_image_startup is interrupted right after PHP started."""

    def __init__(self, real: object) -> None:
        self.real = real

    def __getattr__(self, name: str) -> object:
        return getattr(self.real, name)

    def fp_image_startup(self, *args: object) -> int:
        self.real.fp_image_startup(*args)  # type: ignore[attr-defined]
        raise KeyboardInterrupt


@pytest.mark.timeout(60)
def test_start_interrupted_after_php_started_leaves_a_usable_image(monkeypatch: pytest.MonkeyPatch) -> None:
    ini = {"memory_limit": "37M"}  # a configuration no other test leaves started
    frankenpy.Runtime(1).start().shutdown()  # at least one free image
    count = POOL._count
    monkeypatch.setattr(threads, "lib", _InterruptAfterStartup(threads.lib))
    rt = frankenpy.Runtime(1, php_ini=ini)
    with pytest.raises(KeyboardInterrupt):
        rt.start()
    monkeypatch.undo()
    with frankenpy.Runtime(1, php_ini=ini) as rt:
        assert rt.execute_code('echo ini_get("memory_limit");').output == b"37M"
    assert POOL._count == count


# --- suspected: restart_workers() racing shutdown(), shutdown() during start() -------------------

WORKER = """<?php
$h = frankenphp_get_worker_handle();
for (;;) {
    $r = [$h]; $w = $e = [];
    if (stream_select($r, $w, $e, 1) > 0 && fread($h, 1) === '') { exit(0); }
}
"""


@pytest.mark.timeout(90)
def test_restart_workers_racing_shutdown_leaves_nothing_running(tmp_path: Path) -> None:
    script = tmp_path / "w.php"
    script.write_text(WORKER.replace("exit(0);", "usleep(100000); exit(0);"))  # slow to drain
    done = run_child(f"""
        import random, threading, time, frankenpy
        rng = random.Random(7)
        for round in range(12):
            worker = frankenpy.Worker("w", {str(script)!r}, num=2, background=True)
            rt = frankenpy.Runtime(1, workers=[worker])
            rt.start()
            outcome = []
            def restart():
                began = time.monotonic()
                try:
                    rt.restart_workers(grace=2); outcome.append("restarted")
                except RuntimeError as exc:
                    outcome.append("refused")
                took.append(time.monotonic() - began)
            took = []
            t = threading.Thread(target=restart); t.start()
            time.sleep(rng.uniform(0, 0.15))
            rt.shutdown(grace=2)
            t.join(30)
            assert not t.is_alive(), "restart_workers() hangs"
            assert took[0] < 3, f"restart_workers() took {{took[0]:.1f}} s"
            assert not any(w.alive for w in rt.workers_group.threads), "a worker runs after shutdown"
            assert outcome in (["restarted"], ["refused"]), outcome
        print("rounds ok")
    """, timeout=120)
    assert_clean_exit(done, "rounds ok")


@pytest.mark.timeout(90)
def test_shutdown_during_start_stops_start_and_releases_everything(tmp_path: Path) -> None:
    script = tmp_path / "slow.php"
    script.write_text("<?php usleep(400000);\n" + WORKER.removeprefix("<?php"))
    done = run_child(f"""
        import threading, time, frankenpy
        from frankenpy.images import POOL
        frankenpy.Runtime(3).start().shutdown()      # warm the image pool
        free = len(POOL._free)
        for delay in (0.0, 0.01, 0.05, 0.2):
            worker = frankenpy.Worker("slow", {str(script)!r}, num=2, background=True)
            rt = frankenpy.Runtime(1, workers=[worker])
            outcome = []
            def start():
                try:
                    rt.start(); outcome.append("started")
                except RuntimeError as exc:
                    outcome.append(str(exc))
            t = threading.Thread(target=start); t.start()
            time.sleep(delay)
            began = time.monotonic()
            rt.shutdown(grace=2)
            took = time.monotonic() - began
            t.join(30)
            assert outcome and outcome[0] != "started" or rt.state == "stopped", outcome
            assert rt.state == "stopped", rt.state
            assert not any(w.alive for w in rt.workers_group.threads)
            assert took < 5, took
            assert len(POOL._free) == free, (len(POOL._free), free)
            print(delay, outcome)
        print("all ok")
    """, timeout=120)
    assert_clean_exit(done, "all ok")
    assert "shut down during start()" in done.stdout


# --- suspected: extensions bound to another image's copy of the extension they call --------------

def _dynamic_symbols(path: Path, which: str) -> set[str]:
    out = subprocess.run(["nm", "-D", which, str(path)], capture_output=True, text=True, check=True).stdout
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


def test_every_extension_calling_another_declares_it() -> None:
    """An extension importing symbols another shared extension defines must list it in
    EXTENSION_DEPENDS (Debian's files have no DT_NEEDED on it): checked for every installed one."""
    if shutil.which("nm") is None:
        pytest.skip("nm (binutils) is not installed")
    found = sorted(images.EXTENSION_DIR.glob("*.so"))
    defined = {p.stem: _dynamic_symbols(p, "--defined-only") for p in found}
    missing = []
    for path in found:
        imports = _dynamic_symbols(path, "--undefined-only")
        for other, symbols in defined.items():
            declared = images.EXTENSION_DEPENDS.get(path.stem, ())
            if other != path.stem and imports & symbols and other not in declared:
                missing.append(f"{path.stem} -> {other} ({sorted(imports & symbols)[0]}, ...)")
    assert not missing


XML_WORKLOAD = r"""
$xsl = new DOMDocument();
$xsl->loadXML('<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">'
    . '<xsl:template match="/"><out><xsl:value-of select="count(//i)"/></out></xsl:template>'
    . '</xsl:stylesheet>');
$p = new XSLTProcessor(); $p->importStylesheet($xsl);
$ok = 0;
for ($k = 0; $k < 150; $k++) {
    $d = new DOMDocument(); $root = $d->createElement('r'); $d->appendChild($root);
    for ($j = 0; $j <= $k % 17; $j++) { $root->appendChild($d->createElement('i', "v$j")); }
    if ($p->transformToDoc($d)->documentElement->textContent == (string)($k % 17 + 1)) $ok++;
    $r = new XMLReader(); $r->XML($d->saveXML()); $n = 0;
    while ($r->read()) {
        if ($r->nodeType == XMLReader::ELEMENT && $r->name == 'i') {
            $node = $r->expand();
            if ($node instanceof DOMElement && $node->textContent == "v$n") $n++;
        }
    }
    if ($n == $k % 17 + 1) $ok++;
}
echo $ok;
"""


@pytest.mark.timeout(120)
def test_xsl_xmlreader_and_dom_on_8_threads_in_parallel() -> None:
    if not (images.EXTENSION_DIR / "xsl.so").is_file():
        pytest.skip("php8.2-xml is not installed (scripts/install_deps.sh installs it)")
    done = run_child(f"""
        import threading, frankenpy
        rt = frankenpy.Runtime(8, extensions=["dom", "xsl", "xmlreader"]); rt.start()
        bad = []
        def run():
            for _ in range(3):
                r = rt.execute_code({XML_WORKLOAD!r})
                if r.output != b"300" or r.errors:
                    bad.append((r.output, r.errors[:2]))
        ts = [threading.Thread(target=run) for _ in range(8)]
        [t.start() for t in ts]; [t.join() for t in ts]
        rt.shutdown()
        print("bad", len(bad), bad[:3])
    """, timeout=110)
    assert_clean_exit(done, "bad 0 []")


# --- suspected: the image cache built by several processes and threads at once ---------------------

@pytest.mark.timeout(30)
@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_a_damaged_cached_copy_is_rebuilt(tmp_path: Path, damage: str) -> None:
    source = images.find_libphp()
    target = tmp_path / "0007" / "libphp.so"
    images._bound_copy(source, target, 7)
    good = target.read_bytes()
    target.write_bytes(b"" if damage == "empty" else good[: len(good) // 2])
    images._bound_copy(source, target, 7)
    assert target.read_bytes() == good
    template = images._extension_template(images.extension_path("ctype"), tmp_path)
    data = template.read_bytes()
    template.write_bytes(b"" if damage == "empty" else data[:1000])
    assert images._extension_template(images.extension_path("ctype"), tmp_path).read_bytes() == data


@pytest.mark.timeout(60)
def test_threads_making_the_same_extension_template_at_once(tmp_path: Path) -> None:
    """Two runtimes starting on two threads make the same template: each must get a whole one
    (they shared one temp file name, and patchelf read a file being rewritten)."""
    for attempt in range(5):
        cache = tmp_path / str(attempt)
        results: list[object] = []

        def make(cache: Path = cache, results: list[object] = results) -> None:
            try:
                results.append(images._extension_template(images.extension_path("pdo_sqlite"), cache))
            except images.ImageError as exc:
                results.append(exc)

        makers = [threading.Thread(target=make) for _ in range(6)]
        for t in makers:
            t.start()
        for t in makers:
            t.join(30)
        assert all(isinstance(r, Path) and images._complete_elf(r) for r in results), results
        assert [p.name for p in (cache / "templates").iterdir()] == [results[0].name]  # type: ignore[union-attr]


@pytest.mark.timeout(120)
def test_processes_and_threads_building_a_fresh_cache_at_once(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    child = """
        import threading, frankenpy
        errors = []
        def one(i):
            try:
                with frankenpy.Runtime(2, extensions=["ctype", "tokenizer", "pdo_sqlite", "posix"]) as rt:
                    r = rt.execute_code(
                        'echo ctype_digit("1") && token_name(T_ECHO) && count(PDO::getAvailableDrivers());'
                    )
                    assert r.output == b"1", (r.output, r.errors)
            except BaseException as exc:
                errors.append(repr(exc))
        ts = [threading.Thread(target=one, args=(i,)) for i in range(3)]
        [t.start() for t in ts]; [t.join() for t in ts]
        print("errors", errors)
    """
    env = {**os.environ, "FRANKENPY_CACHE_DIR": str(cache)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    procs = [
        subprocess.Popen([sys.executable, "-c", textwrap.dedent(child)], env=env, cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=100)
        assert proc.returncode == 0, err[-3000:]
        assert "errors []" in out, out + err[-3000:]
    leftovers = [p.name for p in cache.rglob(".*") if p.name != ".lock"]
    assert not leftovers, leftovers


def test_pruning_spares_version_directories_that_a_live_process_uses(tmp_path: Path) -> None:
    import fcntl

    current, used, unused = (tmp_path / name for name in ("current", "used", "unused"))
    for directory in (current, used, unused):
        (directory / "0000").mkdir(parents=True)
        (directory / "0000" / "libphp.so").write_bytes(b"x")
    lock = os.open(used / images.LOCK_NAME, os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_SH)  # as _use_version() of another process holds it
    old = time.time() - 2 * images.STALE_AFTER
    for directory in (used, unused):
        os.utime(directory, (old, old))
    try:
        images._prune_stale_versions(current)
        assert used.is_dir() and (used / "0000" / "libphp.so").is_file()
        assert not unused.exists()
    finally:
        os.close(lock)
    images._prune_stale_versions(current)
    assert not used.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current"]
    images._use_version(used)  # a process that comes later makes it again
    assert (used / images.LOCK_NAME).is_file()
    os.close(images._version_locks.pop(used))


# --- hostile scripts ---------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_pcntl_fork_is_refused_and_forks_nothing() -> None:
    done = run_child("""
        import os, frankenpy
        with frankenpy.Runtime(1) as rt:
            r = rt.execute_code('$pid = pcntl_fork(); echo $pid, " ", getmypid();')
        print("pid", os.getpid(), "result", r.output.decode(), r.errors)
    """, timeout=30)
    assert_clean_exit(done, "result -1 ")
    assert done.stdout.count("result") == 1, done.stdout  # no forked copy of the host printed
    pid = done.stdout.split()[1]
    assert f"result -1 {pid}" in done.stdout
    assert "would fork the whole host process" in done.stdout


CHAIN_SLEEPING = ('$f = function () use (&$f) { usleep(1000); register_shutdown_function($f); };'
                  ' register_shutdown_function($f);')
CHAIN_GREEDY = ('$f = function () use (&$f) { register_shutdown_function($f); };'
                ' register_shutdown_function($f);')


@pytest.mark.timeout(60)
@pytest.mark.parametrize("code", [CHAIN_SLEEPING, CHAIN_SLEEPING + " for (;;) {}", CHAIN_GREEDY],
                         ids=["sleeping chain", "loop then chain", "greedy chain"])
def test_endless_shutdown_function_chains_end(make_runtime, code: str) -> None:  # type: ignore[no-untyped-def]
    rt = make_runtime(num_threads=1, php_ini={"memory_limit": "64M"})
    began = time.monotonic()
    r = rt.execute_code(code, timeout=0.5)
    assert time.monotonic() - began < 3.0
    assert r.fatal_error is not None, r
    assert "Maximum execution time" in r.errors[-1] or "Allowed memory size" in r.errors[-1]
    assert rt.execute_code("echo 'next';").output == b"next"


@pytest.mark.timeout(60)
def test_shutdown_ends_an_endless_shutdown_function_chain() -> None:
    done = run_child(f"""
        import threading, time, frankenpy
        rt = frankenpy.Runtime(1, php_ini={{"memory_limit": "-1"}}); rt.start()
        results = []
        caller = threading.Thread(target=lambda: results.append(rt.execute_code({CHAIN_SLEEPING!r})))
        caller.start()
        time.sleep(0.4)
        began = time.monotonic()
        rt.shutdown(grace=0.2)
        took = time.monotonic() - began
        caller.join(5)
        assert took < 3.0, took
        print("result", type(results[0]).__name__, results[0].errors[-1])
        rt2 = frankenpy.Runtime(1, php_ini={{"memory_limit": "-1"}}); rt2.start()
        print("next", rt2.execute_code("echo 2;").output.decode())
    """)
    assert_clean_exit(done, "result Result PHP Fatal error:  Maximum execution time")
    assert "next 2" in done.stdout


def _rss() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))


@pytest.mark.timeout(60)
def test_unbounded_memory_and_recursion_end_at_memory_limit(make_runtime) -> None:  # type: ignore[no-untyped-def]
    rt = make_runtime(num_threads=1, php_ini={"memory_limit": "32M"})
    scripts = [
        '$a = []; for (;;) { $a[] = str_repeat("x", 1 << 20); }',
        '$s = "x"; for (;;) { $s .= $s; }',
        # User functions call each other on PHP's own (heap) stack, not the C stack.
        "function f($n) { return f($n + 1) + 1; } f(0);",
    ]
    rt.execute_code(scripts[0])
    before = _rss()
    for _ in range(10):
        for code in scripts:
            r = rt.execute_code(code)
            assert r.exit_status == 255 and "Allowed memory size" in r.errors[-1], r
    assert rt.execute_code("echo 'ok';").output == b"ok"
    assert _rss() - before < 64 << 20  # the memory is given back after each script


RECURSE = 'function f($n) { return $n ? array_map("f", [$n - 1])[0] : 0; } echo f(%d), " ok";'


@pytest.mark.timeout(60)
def test_recursion_through_internal_callbacks_within_the_documented_bound() -> None:
    """Recursion through internal functions (array_map, usort, ...) uses the C stack of the
    calling thread, as in php-cli (PHP 8.2 has no stack limit).  Measured: about 10,000 levels
    fit in the default 8 MiB stack, as in php-cli; a thread with a bigger stack goes deeper."""
    done = run_child(f"""
        import threading, frankenpy
        rt = frankenpy.Runtime(1, php_ini={{"memory_limit": "-1"}}); rt.start()
        print("main", rt.execute_code({RECURSE % 5000!r}).output.decode())
        out = []
        threading.stack_size(64 << 20)
        t = threading.Thread(target=lambda: out.append(rt.execute_code({RECURSE % 50000!r}).output.decode()))
        t.start(); t.join()
        print("big stack", out[0])
        rt.shutdown()
    """)
    assert_clean_exit(done, "main 0 ok")
    assert "big stack 0 ok" in done.stdout


# --- shutdown and restart at random points --------------------------------------------------------

BG_FLAKY = """<?php
$h = frankenphp_get_worker_handle();
for (;;) {
    $r = [$h]; $w = $e = [];
    if (stream_select($r, $w, $e, 0, 20000) > 0 && fread($h, 1) === '') { exit(0); }
    if (mt_rand(0, 10) == 0) { exit(mt_rand(0, 1)); }   // crash or restart at random
}
"""
HTTP_WORKER = """<?php
while (frankenphp_handle_request(function () { echo "hi"; })) {}
"""


@pytest.mark.timeout(110)
def test_shutdown_and_restart_at_random_points(tmp_path: Path) -> None:
    (tmp_path / "bg.php").write_text(BG_FLAKY)
    (tmp_path / "http.php").write_text(HTTP_WORKER)
    done = run_child(f"""
        import random, threading, time, frankenpy
        SCRIPTS = ['echo 1;', 'usleep(20000); echo 2;', 'exit(3);', 'undefined_function();',
                   '$t = microtime(true); while (microtime(true) - $t < 0.05) {{}}',
                   'echo str_repeat("x", 100000);', 'usleep(300000);']
        rng = random.Random(20261129)
        bad, calls, refused, lingering, rounds = [], 0, 0, [], []
        for round in range(14):
            workers = [frankenpy.Worker("bg", {str(tmp_path / "bg.php")!r}, background=True,
                                        max_consecutive_failures=-1),
                       frankenpy.Worker("http", {str(tmp_path / "http.php")!r})]
            rt = frankenpy.Runtime(2, workers=workers, start_timeout=5)
            stop = threading.Event()
            def caller(seed):
                global calls, refused
                r = random.Random(seed)
                while not stop.is_set():
                    try:
                        res = rt.execute_code(r.choice(SCRIPTS), timeout=r.choice([None, 0.1, 1.0]))
                        if not isinstance(res, frankenpy.Result):
                            bad.append(repr(res))
                        calls += 1
                    except RuntimeError as exc:
                        refused += 1
                        time.sleep(0.005)
                    except BaseException as exc:
                        bad.append(repr(exc))
            def restarter(seed):
                r = random.Random(seed)
                while not stop.is_set():
                    time.sleep(r.uniform(0, 0.1))
                    try:
                        rt.restart_workers(grace=r.choice([0.0, 0.05, 1.0]))
                    except RuntimeError:
                        pass
                    except BaseException as exc:
                        bad.append("restart: " + repr(exc))
            early = rng.random() < 0.3   # shut down while start() runs
            helpers = [threading.Thread(target=caller, args=(rng.random(),)) for _ in range(3)]
            helpers.append(threading.Thread(target=restarter, args=(rng.random(),)))
            starter = threading.Thread(target=lambda: rt.start() if not early else None)
            if early:
                def start():
                    try: rt.start()
                    except RuntimeError: pass
                starter = threading.Thread(target=start)
            starter.start()
            if not early:
                starter.join(30)
            for t in helpers: t.start()
            time.sleep(rng.uniform(0, 0.4))
            began = time.monotonic()
            rt.shutdown(grace=rng.choice([0.0, 0.05, 0.5]))
            took = time.monotonic() - began
            stop.set()
            # The next round starts at once: an execution still running here must not end up
            # on the next runtime's interpreters.
            lingering += [starter, *helpers]
            if took > 10: bad.append(f"round {{round}}: shutdown took {{took:.1f}} s")
            rounds.append(rt)
        for t in lingering:
            t.join(20)
            if t.is_alive(): bad.append("a thread hangs")
        for rt in rounds:
            if any(w.alive for w in rt.workers_group.threads): bad.append("a worker is alive")
        print("calls", calls, "refused", refused, "bad", bad[:5])
    """, timeout=105)
    assert_clean_exit(done, "bad []")


# --- crash/restart cycles: nothing grows ------------------------------------------------------------

def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _tasks() -> int:
    return len(os.listdir("/proc/self/task"))


def _no_more_tasks_than(tasks: int) -> None:
    """The process's OS threads come back to ``tasks``.  Not at once: Thread.join() returns
    when CPython wakes the joiners at the end of a thread, which then still has to return to
    the OS; on a loaded machine /proc/self/task lists it a few ms longer.  A leaked thread never
    leaves."""
    wait_for(lambda: _tasks() <= tasks, timeout=10, what=f"OS threads back to {tasks}")


@pytest.mark.timeout(110)
def test_1000_worker_crash_restart_cycles_leak_nothing(tmp_path: Path, make_runtime) -> None:  # type: ignore[no-untyped-def]
    counter = tmp_path / "runs"
    script = tmp_path / "crashy.php"
    # Crash (exit 1) and cooperative restart (exit 0) alternate: no backoff sleep ever.
    script.write_text(f"""<?php
        frankenphp_get_worker_handle();
        $n = (int)@file_get_contents({str(counter)!r});
        file_put_contents({str(counter)!r}, $n + 1);
        echo "run $n";
        exit($n % 2);
    """)
    rt = make_runtime(num_threads=1, workers=[
        frankenpy.Worker("crashy", str(script), background=True, max_consecutive_failures=-1)])
    worker = rt.workers_group.threads[0]
    wait_for(lambda: worker.runs >= 100, timeout=60, what="warm-up runs")
    fds, tasks, active, rss = _fds(), _tasks(), threading.active_count(), _rss()
    start = worker.runs
    wait_for(lambda: worker.runs >= start + 1000, timeout=90, what="1,000 more runs")
    status = rt.workers()[0]
    assert status.crashes >= 500 and status.restarts >= 500, status
    # (a run in progress holds a few fds of its own: its pipe, PHP's dup of it, the counter file)
    now = _fds()
    assert abs(now - fds) <= 8, (fds, now)
    assert threading.active_count() <= active  # (<=: other tests' may end)
    _no_more_tasks_than(tasks)
    assert _rss() - rss < 20 << 20, (rss, _rss())


@pytest.mark.timeout(110)
def test_runtime_start_shutdown_cycles_leak_nothing(tmp_path: Path) -> None:
    (tmp_path / "bg.php").write_text(WORKER)
    def cycle() -> None:
        workers = [frankenpy.Worker("bg", str(tmp_path / "bg.php"), background=True)]
        with frankenpy.Runtime(2, workers=workers) as rt:
            assert rt.execute_code("echo 1;").output == b"1"

    for _ in range(5):
        cycle()
    fds, tasks, rss, images_loaded = _fds(), _tasks(), _rss(), POOL._count
    for _ in range(40):
        cycle()
    # (a leak per cycle would show 40 times over; some slack for the rest of the process)
    assert _fds() - fds <= 4, (fds, _fds())
    _no_more_tasks_than(tasks)
    assert POOL._count == images_loaded, (images_loaded, POOL._count)
    assert _rss() - rss < 32 << 20, (rss, _rss())
