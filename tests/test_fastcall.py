"""frankenpy._fastcall (csrc/fastcall.c): the common case of ``execute_file(path)`` and
``execute_code(code)`` runs in C, without a Python frame, and gives the Results the Python method
gives; everything else (and every case where nothing ran) goes to the Python method unchanged.
The Python method is reached directly as ``Runtime.execute_*.__wrapped__``."""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import pickle
import pydoc
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import frankenpy
from frankenpy import _fastcall
from frankenpy.execution import Result, new_result
from frankenpy.runtime import PREPARED_SCRIPTS, Runtime

MakeRuntime = Callable[..., frankenpy.Runtime]
PY_FILE = Runtime.execute_file.__wrapped__  # type: ignore[attr-defined]
PY_CODE = Runtime.execute_code.__wrapped__  # type: ignore[attr-defined]


def fast_calls() -> int:
    return _fastcall.stats()["fast_calls"]


@contextmanager
def c_path(expected: int) -> Iterator[None]:
    """The block runs exactly ``expected`` executions through the C path."""
    before = fast_calls()
    yield
    assert fast_calls() - before == expected


def comparable(result: Result) -> Result:
    return dataclasses.replace(result, duration=0.0)


def script(tmp_path: Path, code: str, name: str = "s.php") -> str:
    path = tmp_path / name
    path.write_text("<?php " + code)
    return str(path)


def file_both(rt: frankenpy.Runtime, path: str) -> tuple[Result, Result]:
    """The same file through the Python method, then the C path."""
    python = PY_FILE(rt, path)  # (also prepares the arguments the C path uses)
    with c_path(1):
        fast = rt.execute_file(path)
    return python, fast


def code_both(rt: frankenpy.Runtime, code: str) -> tuple[Result, Result]:
    python = PY_CODE(rt, code)
    with c_path(1):
        fast = rt.execute_code(code)
    return python, fast


# --- the C path is the one taken ---------------------------------------------------------------


@pytest.mark.timeout(60)
def test_common_case_runs_no_python_frame(runtime: frankenpy.Runtime, tmp_path: Path) -> None:
    path = script(tmp_path, "echo 'hi';")
    runtime.execute_file(path)  # prepares the arguments (Python)
    runtime.execute_code("echo 1;")
    calls: list[str] = []

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            calls.append(frame.f_code.co_qualname)

    execute_file, execute_code = runtime.execute_file, runtime.execute_code
    with c_path(4):
        sys.setprofile(profile)
        try:
            results = [runtime.execute_file(path), execute_file(path), runtime.execute_code("echo 1;"),
                       execute_code("echo 1;")]
        finally:
            sys.setprofile(None)
    assert calls == []
    assert [r.output for r in results] == [b"hi", b"hi", b"1", b"1"]
    assert all(type(r) is Result for r in results)


@pytest.mark.timeout(60)
def test_anything_but_the_common_case_runs_the_python_method(runtime: frankenpy.Runtime, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    path = script(tmp_path, "echo 'hi';")
    runtime.execute_file(path)
    monkeypatch.chdir(tmp_path)

    class Sub(str):
        pass

    calls = [
        lambda: runtime.execute_file(Path(path)),  # PathLike
        lambda: runtime.execute_file("s.php"),  # relative
        lambda: runtime.execute_file(Sub(path)),  # not exactly a str
        lambda: runtime.execute_file(path, env={"A": "1"}),  # any keyword argument
        lambda: runtime.execute_file(path, timeout=5),
        lambda: runtime.execute_file(path, stdin=None),
        lambda: Runtime.execute_file(runtime, path, argv=[path]),
        lambda: runtime.execute_code("echo 'hi';", env={}),
    ]
    seen: list[str] = []

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code.co_name in ("execute_file", "execute_code"):
            seen.append(frame.f_code.co_name)

    for call in calls:
        seen.clear()
        with c_path(0):
            sys.setprofile(profile)
            try:
                result = call()
            finally:
                sys.setprofile(None)
        assert result.output == b"hi"
        assert len(seen) == 1


@pytest.mark.timeout(60)
def test_the_method_keeps_its_signature_doc_and_unbound_form(runtime: frankenpy.Runtime,
                                                              tmp_path: Path) -> None:
    for method, wrapped in ((Runtime.execute_file, PY_FILE), (Runtime.execute_code, PY_CODE)):
        assert inspect.signature(method) == inspect.signature(wrapped)
        assert method.__doc__ == wrapped.__doc__ and method.__doc__
        assert (method.__name__, method.__qualname__) == (wrapped.__name__, wrapped.__qualname__)
        assert "path" in str(inspect.signature(runtime.execute_file))
        assert "self" not in str(inspect.signature(runtime.execute_file))
        assert wrapped.__doc__.split("\n")[0] in pydoc.render_doc(method)
    path = script(tmp_path, "echo 'unbound';")
    runtime.execute_file(path)
    runtime.execute_code("echo 1;")
    with c_path(2):
        assert Runtime.execute_file(runtime, path).output == b"unbound"
        assert Runtime.execute_code(runtime, "echo 'u';").output == b"u"


# --- same Results as the Python method ---------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("code", [
    "echo 'plain output';",
    "echo 'before'; exit(3);",
    "fwrite(STDERR, 'to stderr'); echo 'out';",
    "echo str_repeat('x', 3 << 20);",  # an output buffer too big to keep (rare)
    "",
])
def test_file_and_code_results_equal_the_python_methods(runtime: frankenpy.Runtime, tmp_path: Path,
                                                        code: str) -> None:
    path = script(tmp_path, code)
    python, fast = file_both(runtime, path)
    assert comparable(fast) == comparable(python)
    assert repr(comparable(fast)) == repr(comparable(python))
    assert hash(comparable(fast)) == hash(comparable(python))
    python, fast = code_both(runtime, code)
    assert comparable(fast) == comparable(python)
    assert fast.duration > 0 and python.duration > 0


@pytest.mark.timeout(60)
def test_fatal_error_is_logged_on_the_php_threads_logger(runtime1: frankenpy.Runtime, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="frankenpy.php")
    path = script(tmp_path, "echo 'a'; undefined_function();")
    python, fast = file_both(runtime1, path)
    assert comparable(fast) == comparable(python)
    assert fast.exit_status == 255 and fast.fatal_error is not None
    assert "undefined_function" in fast.fatal_error.message
    with pytest.raises(frankenpy.PHPError, match=r"undefined_function\(\).*s\.php"):
        fast.raise_for_status()
    records = [r for r in caplog.records if "undefined_function" in r.getMessage()]
    assert len(records) == 2 and all(r.levelno == logging.ERROR for r in records)
    assert [r.worker for r in records] == [runtime1.php_threads[0].name] * 2  # type: ignore[attr-defined]


@pytest.mark.timeout(60)
def test_php_time_limit_result_from_the_c_path(runtime1: frankenpy.Runtime) -> None:
    runtime1.execute_code("echo 1;")
    with c_path(1):
        result = runtime1.execute_code("set_time_limit(1); while (true) {}")
    assert (result.timed_out, result.time_limit, result.exit_status) == (True, 1.0, 255)
    assert not result.ok


@pytest.mark.timeout(60)
def test_timeouts_and_output_callables_run_the_python_method(runtime: frankenpy.Runtime,
                                                              tmp_path: Path) -> None:
    path = script(tmp_path, "echo 'x'; usleep(2000000);")
    chunks: list[bytes] = []
    with c_path(0):
        result = runtime.execute_file(path, timeout=0.2)
        assert result.timed_out and result.output == b"x"
        assert runtime.execute_code("echo 'y';", output=chunks.append).output == b""
    assert b"".join(chunks) == b"y"


@pytest.mark.timeout(60)
def test_missing_file_raises_naming_it_on_every_call(runtime: frankenpy.Runtime, tmp_path: Path) -> None:
    path = script(tmp_path, "echo 'here';", "gone.php")
    assert runtime.execute_file(path).output == b"here"
    os.unlink(path)
    for _ in range(3):
        with c_path(0), pytest.raises(FileNotFoundError, match=r"PHP script not found: .*/gone\.php$"):
            runtime.execute_file(path)
    assert runtime.busy_threads == 0
    Path(path).write_text("<?php echo 'back';")
    with c_path(1):
        assert runtime.execute_file(path).output == b"back"


@pytest.mark.timeout(60)
def test_code_with_nul_or_lone_surrogate_behaves_as_the_python_method(runtime: frankenpy.Runtime) -> None:
    runtime.execute_code("echo 1;")
    with c_path(0):
        nul = runtime.execute_code("echo 'a';\0 echo 'b';")
    assert comparable(nul) == comparable(PY_CODE(runtime, "echo 'a';\0 echo 'b';"))
    with c_path(0):
        with pytest.raises(UnicodeEncodeError):
            runtime.execute_code("echo '\udc80';")
    with pytest.raises(UnicodeEncodeError):
        PY_CODE(runtime, "echo '\udc80';")
    with c_path(1):
        assert runtime.execute_code("echo 'é';").output == "é".encode()


@pytest.mark.timeout(60)
def test_not_running_raises_runtime_error(tmp_path: Path) -> None:
    path = script(tmp_path, "echo 1;")
    rt = frankenpy.Runtime(num_threads=1)
    with pytest.raises(RuntimeError, match="call start"):
        rt.execute_file(path)
    rt.start()
    rt.execute_file(path)
    rt.execute_code("echo 1;")
    rt.shutdown()
    with c_path(0):
        with pytest.raises(RuntimeError, match="stopped"):
            rt.execute_file(path)
        with pytest.raises(RuntimeError, match="stopped"):
            rt.execute_code("echo 1;")


@pytest.mark.timeout(60)
def test_a_caller_finding_every_php_thread_busy_queues(runtime1: frankenpy.Runtime, tmp_path: Path) -> None:
    path = script(tmp_path, "echo 'queued';")
    runtime1.execute_file(path)
    started = threading.Event()
    slow = threading.Thread(target=lambda: (started.set(), runtime1.execute_code("usleep(300000);")))
    slow.start()
    started.wait()
    time.sleep(0.1)  # the only PHP thread is busy
    got: list[Result] = []
    waiter = threading.Thread(target=lambda: got.append(runtime1.execute_file(path)))
    waiter.start()
    waiter.join(10)
    slow.join(10)
    assert got and got[0].output == b"queued"
    assert runtime1.busy_threads == 0


@pytest.mark.timeout(60)
def test_a_logging_handler_calling_again_does_not_clobber_the_call(runtime1: frankenpy.Runtime) -> None:
    """Diagnostics are logged while the Result is built from this thread's C call: a handler that
    runs another execution on the same thread must not reuse that call."""
    runtime1.execute_code("echo 1;")
    inner: list[Result] = []

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if not inner:
                inner.append(runtime1.execute_code("echo 'inner';"))

    handler = Handler()
    logging.getLogger("frankenpy.php").addHandler(handler)
    try:
        outer = runtime1.execute_code("trigger_error('w', E_USER_WARNING); echo 'outer';")
    finally:
        logging.getLogger("frankenpy.php").removeHandler(handler)
    assert outer.output == b"outer" and len(outer.diagnostics) == 1
    assert inner[0].output == b"inner"


@pytest.mark.timeout(60)
def test_the_gil_is_released_while_php_runs(runtime1: frankenpy.Runtime) -> None:
    runtime1.execute_code("echo 1;")
    ticks = 0
    done = threading.Event()

    def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            time.sleep(0.001)

    thread = threading.Thread(target=ticker)
    thread.start()
    time.sleep(0.05)
    try:
        before = ticks
        with c_path(1):
            assert runtime1.execute_code("usleep(400000); echo 'slept';").output == b"slept"
        during = ticks - before
    finally:
        done.set()
        thread.join()
    assert during >= 20  # ~400 ticks on an idle machine; none if the GIL were held


def test_setup_refuses_another_builds_call_layout() -> None:
    with pytest.raises(ImportError, match="rebuild"):
        _fastcall.setup(1, 1, lambda pool, address: None, 8, 0)


# --- arguments prepared per script, per runtime ------------------------------------------------


@pytest.mark.timeout(120)
def test_alternating_scripts_code_and_cache_clears(runtime: frankenpy.Runtime, tmp_path: Path) -> None:
    a = script(tmp_path, "echo 'a', $argc, $_SERVER['SCRIPT_FILENAME'] === __FILE__ ? 'ok' : 'bad';", "a.php")
    b = script(tmp_path, "echo 'b';", "b.php")
    for path in (a, b):
        runtime.execute_file(path)
    runtime.execute_code("echo 1;")
    with c_path(6):
        for _ in range(2):
            assert runtime.execute_file(a).output == b"a1ok"
            assert runtime.execute_file(b).output == b"b"
            assert runtime.execute_code("echo 'c';").output == b"c"
    for i in range(PREPARED_SCRIPTS + 5):  # clears the cache the C path reads
        assert runtime.execute_file(script(tmp_path, f"echo {i};", f"o{i}.php")).output == str(i).encode()
    assert runtime.execute_file(a).output == b"a1ok"
    with c_path(1):
        assert runtime.execute_file(a).output == b"a1ok"


@pytest.mark.timeout(120)
def test_each_runtime_gets_its_own_arguments(make_runtime: MakeRuntime, tmp_path: Path) -> None:
    """One thread's reused C call never runs with another (or a gone) runtime's arguments, even
    when new ones land at the same addresses."""
    path = script(tmp_path, "echo getenv('WHO');")
    first, second = make_runtime(1, env={"WHO": "first"}), make_runtime(1, env={"WHO": "second"})
    for _ in range(3):
        assert first.execute_file(path).output == b"first"
        assert second.execute_file(path).output == b"second"
        assert first.execute_code("echo getenv('WHO');").output == b"first"
        assert second.execute_code("echo getenv('WHO');").output == b"second"
    for i in range(8):
        rt = frankenpy.Runtime(num_threads=1, env={"WHO": str(i)}).start()
        try:
            assert rt.execute_file(path).output == str(i).encode()
            assert rt.execute_file(path).output == str(i).encode()
            assert rt.execute_code("echo getenv('WHO');").output == str(i).encode()
        finally:
            rt.shutdown()


# --- threads --------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_four_threads_on_two_php_threads(runtime: frankenpy.Runtime, tmp_path: Path) -> None:
    paths = [script(tmp_path, f"echo 'f{i}', $argc;", f"f{i}.php") for i in range(2)]
    for path in paths:
        runtime.execute_file(path)
    failures: list[str] = []
    before = fast_calls()

    def body(t: int) -> None:
        for i in range(500):
            if i % 3 == 2:
                code = f"echo {t * 1000 + i};"
                result, expected = runtime.execute_code(code), str(t * 1000 + i).encode()
            else:
                result, expected = runtime.execute_file(paths[(t + i) % 2]), f"f{(t + i) % 2}1".encode()
            if result.output != expected or not result.ok:
                failures.append(f"{t}/{i}: {result!r}")

    threads = [threading.Thread(target=body, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(100)
    assert not failures, failures[:3]
    assert fast_calls() > before  # (callers that find both PHP threads busy queue in Python)
    assert runtime.busy_threads == 0


@pytest.mark.timeout(120)
def test_short_lived_threads_free_their_c_call(runtime: frankenpy.Runtime, tmp_path: Path) -> None:
    path = script(tmp_path, "echo 'once';")
    runtime.execute_file(path)
    baseline = _fastcall.stats()["live_calls"]
    outputs: list[bytes] = []
    with c_path(200):
        for _ in range(10):
            threads = [threading.Thread(target=lambda: outputs.append(runtime.execute_file(path).output))
                       for _ in range(20)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
    assert outputs == [b"once"] * 200
    # join() returns before the thread's TLS destructors have run: wait for them
    deadline = time.monotonic() + 10
    while _fastcall.stats()["live_calls"] > baseline and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _fastcall.stats()["live_calls"] == baseline


@pytest.mark.timeout(120)
def test_shutdown_while_threads_hammer_never_crashes(tmp_path: Path) -> None:
    path = script(tmp_path, "echo 'hammer';")
    code = f"""
import threading, time
import frankenpy
from frankenpy import _fastcall
path = {path!r}
for round in range(5):
    rt = frankenpy.Runtime(num_threads=2).start()
    rt.execute_file(path)
    rt.execute_code("echo 'hammer';")
    seen, bad = [], []
    def body(t):
        ok = errors = 0
        for i in range(100000):
            try:
                r = rt.execute_file(path) if (t + i) % 2 else rt.execute_code("echo 'hammer';")
                if r.output != b"hammer":
                    bad.append(repr(r))
                ok += 1
            except RuntimeError:
                errors += 1
                if errors > 200:
                    break
        seen.append((ok, errors))
    threads = [threading.Thread(target=body, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    time.sleep(0.2)
    rt.shutdown()
    for th in threads:
        th.join(30)
    assert not bad, bad[:3]
    assert len(seen) == 4 and sum(ok for ok, _ in seen) > 0, seen
    assert all(errors > 200 for _, errors in seen), seen
assert _fastcall.stats()["fast_calls"] > 0
print("survived")
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
        str(Path(frankenpy.__file__).parent.parent), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "survived" in done.stdout


# --- the Result built in C ------------------------------------------------------------------------


def raised(call: Callable[[], object]) -> str:
    try:
        return repr(call())
    except frankenpy.PHPError as exc:
        return str(exc)


def test_new_result_is_indistinguishable_from_result() -> None:
    diagnostic = frankenpy.Diagnostic(type=1, message="boom", file="/x.php", line=3)
    for fields in [(0, b"out", (), False, 0.5, None, b""), (255, b"", (diagnostic,), True, 1.0, 2.0, b"err")]:
        built, plain = new_result(*fields), Result(*fields)
        assert type(built) is Result
        assert built == plain and hash(built) == hash(plain) and repr(built) == repr(plain)
        assert tuple(getattr(built, f.name) for f in dataclasses.fields(Result)) == fields
        assert pickle.loads(pickle.dumps(built)) == plain
        assert (built.ok, built.errors, built.describe()) == (plain.ok, plain.errors, plain.describe())
        with pytest.raises(dataclasses.FrozenInstanceError):
            built.output = b"x"  # type: ignore[misc]
        assert not hasattr(built, "__dict__")
        assert raised(built.raise_for_status) == raised(plain.raise_for_status)
    assert raised(new_result(255, b"", (diagnostic,), False, 1.0, None, b"").raise_for_status) == (
        "PHP execution failed (exit status 255): PHP Fatal error:  boom in /x.php on line 3")
    with pytest.raises(TypeError):
        new_result(0, b"")  # type: ignore[call-arg]
