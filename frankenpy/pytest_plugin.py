"""pytest plugin: real PHP in tests, registered as ``frankenpy`` (``pytest11`` entry point).

Fixtures:

- ``php_runtime``: the session's :class:`~frankenpy.Runtime`, configured by ``[tool.frankenpy]``
  in the rootdir's ``pyproject.toml``.  Under ``@pytest.mark.php_runtime(**options)`` the test
  (or the class or module that carries the marker) gets a runtime of its own instead, with the
  marker's options over the table's, shut down after it.  ``php_session_runtime`` is the
  session's runtime itself, for fixtures of a wider scope.
- ``php``: ``php("echo 1;")`` runs code, ``php(pathlib.Path(...))`` runs a file, on
  ``php_runtime``; keyword arguments as ``execute_*``; returns the :class:`~frankenpy.Result`.
- ``php_server``: a live server on a free port of 127.0.0.1 serving a document root (a fresh
  directory by default; ``@pytest.mark.php_server(root)`` or an indirect parameter names
  another, relative to the test file), on a runtime of its own; ``.url``, ``.root``.
- ``php_worker``: ``php_worker(code_or_path, name=...)`` declares a background worker for the
  test, on a runtime of its own: ``.status()``, ``.records`` / ``.messages`` (its logs),
  ``.wait_for_log(text)``; stopped after the test.

When a test that used them fails, its report gets a "PHP diagnostics" section: the PHP errors,
warnings and worker log lines of that test (bounded to the last ``DIAGNOSTICS_LINES``).
"""

from __future__ import annotations

import logging
import os
import textwrap
import time
import tomllib
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .config import ConfigError, _parse_runtime, _Table

if TYPE_CHECKING:
    from .execution import Result
    from .runtime import Runtime
    from .workers import Worker, WorkerStatus

# pytest imports this module in every session of an environment that has frankenpy installed
# (the pytest11 entry point): what loads the cffi extension and PHP (runtime, execution,
# workers, http) is imported by the fixtures, when a test uses one.

LOGGERS = ("frankenpy.php", "frankenpy.workers")  # PHP's diagnostics, worker lifecycles
DIAGNOSTICS_LINES = 50  # a failure report shows at most the last this many log lines
DIAGNOSTICS_LINE_CHARS = 2000  # each cut to this length

# The Runtime arguments that [tool.frankenpy] and the php_runtime marker may set (those of a
# frankenpy.toml's [runtime] table that Runtime takes, validated by the same code).
RUNTIME_OPTIONS = frozenset({"num_threads", "php_ini", "extensions", "opcache", "start_timeout", "env"})

_OPTIONS = pytest.StashKey[dict[str, Any]]()
_CAPTURE = pytest.StashKey["_Capture"]()
_RUNTIME = pytest.StashKey["Runtime"]()


# --- configuration ------------------------------------------------------------------------------
def load_options(pyproject: Path) -> dict[str, Any]:
    """Runtime options from the ``[tool.frankenpy]`` table of ``pyproject`` ({} without one);
    :class:`frankenpy.config.ConfigError` naming the file and the key at fault."""
    try:
        data = tomllib.loads(pyproject.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{pyproject}: cannot read: {exc}") from None
    table = data.get("tool", {}).get("frankenpy")
    if table is None:
        return {}
    return _parse_runtime(_Table(str(pyproject), "[tool.frankenpy]", table, set(RUNTIME_OPTIONS)))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "php_runtime(**options): the test (class, module) gets a frankenpy Runtime of its own, "
        "with these Runtime arguments (num_threads, php_ini, extensions, opcache, env, "
        "start_timeout) over [tool.frankenpy]; used by php_runtime, php, php_server, php_worker",
    )
    config.addinivalue_line(
        "markers",
        "php_server(root, **app_options): the document root php_server serves (relative to the "
        "test file) and PHPApp options (env, follow_symlinks, max_body_size)",
    )
    try:
        config.stash[_OPTIONS] = load_options(config.rootpath / "pyproject.toml")
    except ConfigError as exc:
        raise pytest.UsageError(f"frankenpy: {exc}") from None


def _runtime_options(request: pytest.FixtureRequest) -> dict[str, Any]:
    """[tool.frankenpy] with the closest php_runtime marker's options over it (for ``php_ini``
    and ``env``, key by key)."""
    options = dict(request.config.stash.get(_OPTIONS, {}))
    marker = request.node.get_closest_marker("php_runtime")
    if marker is not None:
        for key, value in _marker_options(marker, request.node.nodeid).items():
            if key in ("php_ini", "env") and isinstance(value, dict):
                value = {**options.get(key, {}), **value}
            options[key] = value
    return options


def _marker_options(marker: pytest.Mark, where: str) -> dict[str, Any]:
    if marker.args:
        raise TypeError(f"{where}: @pytest.mark.php_runtime takes keyword arguments only")
    unknown = sorted(set(marker.kwargs) - RUNTIME_OPTIONS)
    if unknown:
        raise TypeError(
            f"{where}: @pytest.mark.php_runtime: unknown option {unknown[0]!r} "
            f"(known: {', '.join(sorted(RUNTIME_OPTIONS))})"
        )
    return dict(marker.kwargs)


def _start_runtime(options: dict[str, Any]) -> Runtime:
    from .runtime import Runtime

    return Runtime(**options).start()


# --- diagnostics of a test ----------------------------------------------------------------------
class _Records(logging.Handler):
    """Collects records of the frankenpy loggers (those of one worker if ``worker`` is set; the
    last ``keep`` if set)."""

    def __init__(self, worker: str | None = None, keep: int | None = None) -> None:
        super().__init__(logging.DEBUG)
        self.worker = worker
        self.records: deque[logging.LogRecord] = deque(maxlen=keep)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if self.worker is None or getattr(record, "worker", None) == self.worker:
            # (append is atomic: PHP threads log concurrently; a lost increment of count
            # would only miscount the lines a report says it omitted)
            self.count += 1
            self.records.append(record)

    def attach(self) -> None:
        for name in LOGGERS:
            logging.getLogger(name).addHandler(self)

    def detach(self) -> None:
        for name in LOGGERS:
            logging.getLogger(name).removeHandler(self)


class _Capture(_Records):
    """The last frankenpy log records of one test, for its failure report.  PHP notices and
    worker output are logged at INFO: the loggers are lowered to INFO meanwhile (never raised)."""

    def __init__(self) -> None:
        super().__init__(keep=DIAGNOSTICS_LINES)
        self._levels: dict[str, int] = {}

    def attach(self) -> None:
        super().attach()
        for name in LOGGERS:
            log = logging.getLogger(name)
            if log.getEffectiveLevel() > logging.INFO:
                self._levels[name] = log.level
                log.setLevel(logging.INFO)

    def detach(self) -> None:
        super().detach()
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)

    def text(self) -> str:
        lines = []
        for record in list(self.records):  # (a copy in one step: workers may still log)
            line = f"{record.levelname:<8} {record.getMessage()}"
            if len(line) > DIAGNOSTICS_LINE_CHARS:
                line = line[:DIAGNOSTICS_LINE_CHARS] + " [...]"
            lines.append(line)
        if self.count > len(lines):
            lines.insert(0, f"({self.count - len(lines)} earlier line(s) omitted)")
        return "\n".join(lines)


@pytest.fixture
def _php_capture(request: pytest.FixtureRequest) -> Iterator[_Capture]:
    capture = _Capture()
    capture.attach()
    request.node.stash[_CAPTURE] = capture
    try:
        yield capture
    finally:
        capture.detach()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    capture = item.stash.get(_CAPTURE, None)
    if capture is not None and report.failed:
        text = capture.text()
        if text:
            report.sections.append(("PHP diagnostics", text))
    if capture is not None and call.when == "teardown":
        del item.stash[_CAPTURE]  # items live as long as the session: keep no records there


# --- php_runtime, php -----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def php_session_runtime(pytestconfig: pytest.Config) -> Iterator[Runtime]:
    """The session's Runtime, configured by ``[tool.frankenpy]`` (markers do not apply)."""
    runtime = _start_runtime(pytestconfig.stash.get(_OPTIONS, {}))
    yield runtime
    runtime.shutdown()


@pytest.fixture
def php_runtime(request: pytest.FixtureRequest, _php_capture: _Capture) -> Runtime:
    """The session's Runtime; under ``@pytest.mark.php_runtime(**options)`` one of the test's
    own (or of the class or module carrying the marker), shut down after it."""
    if request.node.get_closest_marker("php_runtime") is None:
        runtime: Runtime = request.getfixturevalue("php_session_runtime")
        return runtime
    owner = next(
        (node for node in reversed(request.node.listchain())
         if any(mark.name == "php_runtime" for mark in node.own_markers)),
        request.node,
    )
    runtime = owner.stash.get(_RUNTIME, None)
    if runtime is None:
        runtime = _start_runtime(_runtime_options(request))
        owner.stash[_RUNTIME] = runtime
        owner.addfinalizer(runtime.shutdown)
    return runtime


class PHP:
    """The ``php`` fixture: runs code (a str) or a file (a path) on ``runtime``."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def __call__(self, script: str | os.PathLike[str], **kwargs: Any) -> Result:
        """``execute_code(script)`` for a str (without ``<?php``), ``execute_file(script)``
        for a path; keyword arguments (env, argv, timeout, output, stdin) as theirs."""
        if isinstance(script, str):
            return self.runtime.execute_code(script, **kwargs)
        if isinstance(script, os.PathLike):
            return self.runtime.execute_file(script, **kwargs)
        raise TypeError(f"php() takes code (str) or a file (path), not {type(script).__name__}")


@pytest.fixture
def php(php_runtime: Runtime) -> PHP:
    """``php("echo 1;")`` / ``php(path, env=..., argv=..., timeout=...)`` -> Result."""
    return PHP(php_runtime)


# --- php_server -------------------------------------------------------------------------------------
class PHPServer:
    """The ``php_server`` fixture: ``url`` (``http://127.0.0.1:PORT``, no trailing slash) serves
    the document root ``root`` on ``runtime``; ``server`` is the server object."""

    def __init__(self, runtime: Runtime, root: Path, server: Any) -> None:
        self.runtime, self.root, self.server = runtime, root, server
        self.host, self.port = "127.0.0.1", server.ports[0]
        self.url = f"http://{self.host}:{self.port}"

    def __repr__(self) -> str:
        return f"<PHPServer {self.url} root={self.root}>"


def _server_class() -> Any:
    """The native server when this build has it, else the waitress one (same interface)."""
    try:
        from .http.native import NativeServer
    except ImportError:
        from .http.server import Server

        return Server
    return NativeServer


@pytest.fixture
def php_server(request: pytest.FixtureRequest, tmp_path: Path, _php_capture: _Capture) -> Iterator[PHPServer]:
    """A live server on a free port of 127.0.0.1, on a runtime of its own configured as
    ``php_runtime``; it serves ``tmp_path / "www"`` (created empty) unless an indirect
    parameter or ``@pytest.mark.php_server(root)`` names a root (relative to the test file)."""
    from .http.app import PHPApp  # (imports waitress: only in sessions that serve)
    from .http.server import Site

    marker = request.node.get_closest_marker("php_server")
    app_options = dict(marker.kwargs) if marker is not None else {}
    root_arg = getattr(request, "param", None) or app_options.pop("root", None)
    if root_arg is None and marker is not None and marker.args:
        root_arg = marker.args[0]
    if root_arg is None:
        root = tmp_path / "www"
        root.mkdir()
    else:
        root = (request.path.parent / root_arg).absolute()
    runtime = _start_runtime(_runtime_options(request))
    try:
        server = _server_class()(runtime, [Site("127.0.0.1", 0, PHPApp(runtime, root, **app_options))])
        server.start()
    except BaseException:
        runtime.shutdown()
        raise
    try:
        yield PHPServer(runtime, root, server)
    finally:
        server.stop(grace=5.0)
        runtime.shutdown()  # (the server stops it too)


# --- php_worker -------------------------------------------------------------------------------------
class PHPWorker:
    """A background worker declared by the ``php_worker`` fixture, on ``runtime`` (its own)."""

    def __init__(self, worker: Worker, runtime: Runtime) -> None:
        self.worker = worker
        self.name = worker.name
        self.runtime = runtime
        self._log = _Records(worker.name)

    def start(self) -> PHPWorker:
        self._log.attach()  # before start(): the boot's records too
        try:
            self.runtime.start()
        except BaseException:
            self._log.detach()
            raise
        return self

    def stop(self, grace: float = 5.0) -> None:
        """Drain the worker and shut its runtime down (the fixture does it after the test)."""
        try:
            self.runtime.shutdown(grace)
        finally:
            self._log.detach()

    def status(self) -> list[WorkerStatus]:
        """One :class:`~frankenpy.WorkerStatus` per thread of the worker."""
        return [s for s in self.runtime.workers() if s.name == self.name]

    @property
    def records(self) -> list[logging.LogRecord]:
        """Its log records so far (loggers ``frankenpy.php`` and ``frankenpy.workers``)."""
        return list(self._log.records)

    @property
    def messages(self) -> list[str]:
        return [record.getMessage() for record in self.records]

    def wait_for_log(self, text: str, timeout: float = 10.0) -> logging.LogRecord:
        """The first record whose message contains ``text``, waiting up to ``timeout`` seconds
        for it (AssertionError, listing the messages so far, if none comes)."""
        deadline = time.monotonic() + timeout
        while True:
            for record in self.records:
                if text in record.getMessage():
                    return record
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"worker {self.name!r} logged no {text!r} in {timeout:g} s: {self.messages}"
                )
            time.sleep(0.01)

    def __repr__(self) -> str:
        return f"<PHPWorker {self.name!r} {[s.state for s in self.status()]}>"


@pytest.fixture
def php_worker(
    request: pytest.FixtureRequest, tmp_path: Path, _php_capture: _Capture
) -> Iterator[Callable[..., PHPWorker]]:
    """``php_worker(code_or_path, name="worker", num=1, env=None, max_consecutive_failures=6,
    **runtime_options)``: starts a runtime of its own (one regular PHP thread, options as
    ``php_runtime``'s) with that background worker and returns it once its threads are ready
    (RuntimeError if it halts while booting).  Code (a str) is written to a file first, with
    ``<?php`` prepended.  Every worker is stopped after the test."""
    declared: list[PHPWorker] = []

    def declare(
        script: str | os.PathLike[str],
        *,
        name: str = "worker",
        num: int = 1,
        env: dict[str, str] | None = None,
        max_consecutive_failures: int = 6,
        **runtime_options: Any,
    ) -> PHPWorker:
        if isinstance(script, str):
            path = tmp_path / f"worker-{len(declared)}-{name}.php"
            path.write_text("<?php\n" + textwrap.dedent(script).lstrip("\n"))
        else:
            path = Path(script)
        from .runtime import Runtime
        from .workers import Worker

        worker = Worker(name, path, num=num, background=True, env=dict(env or {}),
                        max_consecutive_failures=max_consecutive_failures)
        options = {**_runtime_options(request), "num_threads": 1, **runtime_options}
        handle = PHPWorker(worker, Runtime(workers=[worker], **options))
        handle.start()
        declared.append(handle)
        return handle

    try:
        yield declare
    finally:
        for handle in reversed(declared):
            handle.stop()
