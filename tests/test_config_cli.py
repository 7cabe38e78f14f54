"""The TOML configuration (:mod:`frankenpy.config`) and the ``frankenpy`` command
(:mod:`frankenpy.cli`) on real PHP.

Configurations are real files under ``tmp_path``; the command runs as a real subprocess
(``python3 -m frankenpy``) that the tests talk to over HTTP and stop with real signals.  Worker
scripts report through sentinel files.  Waits poll with a deadline; bounds are generous because
other suites may share the machine's two cores.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_for

import frankenpy
from frankenpy import cli
from frankenpy.config import DEFAULT_LISTEN, ConfigError, load

PROJECT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT = 30.0  # seconds for a subprocess to start serving
STOP_TIMEOUT = 10.0  # seconds for a subprocess to exit after SIGTERM/SIGINT

# A background worker: writes <OUT>/<TAG>.started, parks on its handle until drained, then
# (after its loop) writes <OUT>/<TAG>.stopped.
BG_WORKER = r"""<?php
$out = getenv('OUT');
$tag = getenv('TAG') ?: 'bg';
file_put_contents("$out/$tag.started", json_encode([
    'worker' => $_SERVER['FRANKENPHP_WORKER'], 'pid' => getmypid(),
]));
$h = frankenphp_get_worker_handle();
while (true) {
    $r = [$h]; $w = $e = null;
    if (@stream_select($r, $w, $e, 5) > 0) {
        $data = fread($h, 8192);
        if ($data === '' || $data === false || feof($h)) {
            break;
        }
    }
}
file_put_contents("$out/$tag.stopped", 'stopped');
"""

PAGE = r"""<?php
header('Content-Type: text/plain');
echo 'page ok ', PHP_SAPI, ' ', $_SERVER['GREETING'] ?? '-', "\n";
"""


# --- helpers ----------------------------------------------------------------------------------------
def toml_str(value: object) -> str:
    """A TOML basic string for ``value`` (JSON's escapes are valid TOML for these paths)."""
    return json.dumps(str(value))


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def write_config(directory: Path, text: str, name: str = "frankenpy.toml") -> Path:
    return write(directory / name, textwrap.dedent(text).lstrip("\n"))




def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def http_get(url: str, timeout: float = 10.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT), env.get("PYTHONPATH", "")]))
    env.update(extra)
    return env


def config_error(path: Path) -> str:
    """The message of the ConfigError that load(path) raises (asserted to be a single line)."""
    with pytest.raises(ConfigError) as info:
        load(path)
    message = str(info.value)
    assert "\n" not in message, message
    assert message.startswith(f"{path}: "), message
    return message


class Process:
    """A ``python3 -m frankenpy ...`` subprocess whose output goes to files."""

    def __init__(self, args: list[str], directory: Path, env: dict[str, str]) -> None:
        self.stdout_path = directory / "stdout.log"
        self.stderr_path = directory / "stderr.log"
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "frankenpy", *args], stdout=out, stderr=err,
                stdin=subprocess.DEVNULL, env=env, cwd=directory,
            )

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"frankenpy did not exit within {timeout:g} s; stderr:\n{self.stderr}")

    def get_when_up(self, url: str, timeout: float = STARTUP_TIMEOUT) -> tuple[int, str]:
        """GET ``url`` once the server accepts connections (fails if the process dies)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.popen.poll() is not None:
                pytest.fail(f"frankenpy exited early ({self.popen.returncode}); stderr:\n{self.stderr}")
            try:
                return http_get(url)
            except (ConnectionError, urllib.error.URLError, TimeoutError, OSError):
                if time.monotonic() >= deadline:
                    pytest.fail(f"{url} not served within {timeout:g} s; stderr:\n{self.stderr}")
                time.sleep(0.1)


@pytest.fixture
def run_frankenpy(tmp_path: Path) -> Iterator[Callable[..., Process]]:
    """Factory: ``run_frankenpy(*args, **env)`` starts the command; killed at teardown if alive."""
    started: list[Process] = []

    def factory(*args: str, **env: str) -> Process:
        directory = tmp_path / f"proc{len(started)}"
        directory.mkdir()
        process = Process(list(args), directory, subprocess_env(**env))
        started.append(process)
        return process

    yield factory
    for process in started:
        if process.popen.poll() is None:
            process.popen.kill()
            process.popen.wait(10)


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    path = tmp_path / "out"
    path.mkdir()
    return path


# --- load(): a full valid configuration ---------------------------------------------------------------
def full_config(tmp_path: Path, out_dir: Path) -> Path:
    conf = tmp_path / "conf"
    write(conf / "public" / "index.php", PAGE)
    write(conf / "admin" / "index.php", PAGE)
    write(conf / "workers" / "bg.php", BG_WORKER)
    write(conf / "workers" / "http.php", "<?php while (frankenphp_handle_request(fn() => print('w'))) {}\n")
    return write_config(conf, f"""
        [runtime]
        num_threads = 3
        php_ini = {{ memory_limit = "64M", max_execution_time = 7, display_errors = true }}
        extensions = ["ctype"]
        opcache = false
        start_timeout = 20
        env = {{ APP_ENV = "test", LEVEL = 3 }}

        [[server]]
        listen = "127.0.0.1:18901"
        root = "public"
        label = "api.example.com"
        env = {{ GREETING = "hello" }}
        max_body_size = 1024
        max_wait_time = 2.5
        metrics = true
        follow_symlinks = false

        [[server.worker]]
        name = "mailer"
        file = "workers/bg.php"
        background = true
        num = 2
        env = {{ OUT = {toml_str(out_dir)}, TAG = "mailer" }}
        max_consecutive_failures = -1

        [[server.worker]]
        file = "workers/http.php"
        match = "/api/*"
        max_requests = 50

        [[server]]
        listen = "127.0.0.1:18902"
        root = "admin"

        [[server.worker]]
        name = "mailer"
        file = "workers/bg.php"
        background = true
        env = {{ OUT = {toml_str(out_dir)}, TAG = "mailer2" }}
    """)


def test_load_full_config(tmp_path: Path, out_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = full_config(tmp_path, out_dir)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative paths must follow the file, not the cwd
    config = load(path)
    conf = path.parent

    assert config.source == str(path)
    assert config.runtime == {
        "num_threads": 3,
        "php_ini": {"memory_limit": "64M", "max_execution_time": "7", "display_errors": "True"},
        "extensions": ["ctype"],
        "opcache": False,
        "start_timeout": 20.0,
        "env": {"APP_ENV": "test", "LEVEL": "3"},
    }
    assert isinstance(config.runtime["start_timeout"], float)

    first, second = config.servers
    assert (first.listen, second.listen) == ("127.0.0.1:18901", "127.0.0.1:18902")
    assert first.root == conf / "public" and first.root.is_absolute()
    assert second.root == conf / "admin"
    assert first.env == {"GREETING": "hello"} and second.env == {}
    assert (first.max_body_size, first.max_wait_time, first.metrics) == (1024, 2.5, True)
    assert (second.max_body_size, second.max_wait_time, second.metrics) == (8 * 1024 * 1024, 30.0, False)
    assert (first.follow_symlinks, second.follow_symlinks) == (False, True)

    # Each server block is its own non-global scope, labelled (default label: the listen address).
    assert first.scope != frankenpy.GLOBAL_SCOPE and second.scope != frankenpy.GLOBAL_SCOPE
    assert first.scope != second.scope
    assert (first.label, second.label) == ("api.example.com", "127.0.0.1:18902")
    assert frankenpy.scope_label(first.scope) == "api.example.com"
    assert frankenpy.scope_label(second.scope) == "127.0.0.1:18902"

    mailer, http_worker = first.workers
    (mailer2,) = second.workers
    assert config.workers == [mailer, http_worker, mailer2]
    assert (mailer.name, mailer.num, mailer.background, mailer.scope) == ("mailer", 2, True, first.scope)
    assert mailer.file == conf / "workers" / "bg.php" and Path(mailer.file).is_absolute()
    assert mailer.env == {"OUT": str(out_dir), "TAG": "mailer"}
    assert mailer.max_consecutive_failures == -1
    assert mailer.metric_name == "m#api.example.com:mailer"

    # name defaults to the file's stem; HTTP worker options pass through.
    assert (http_worker.name, http_worker.background, http_worker.scope) == ("http", False, first.scope)
    assert (http_worker.match, http_worker.max_requests, http_worker.num) == ("/api/*", 50, 1)
    assert http_worker.max_consecutive_failures == 6
    assert http_worker.file == conf / "workers" / "http.php"

    assert (mailer2.name, mailer2.scope, mailer2.num) == ("mailer", second.scope, 1)
    assert mailer2.metric_name == "m#127.0.0.1:18902:mailer"


def test_load_relative_config_path_and_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "conf"
    (conf / "www").mkdir(parents=True)
    write(conf / "w" / "tick.php", BG_WORKER)
    write_config(conf, """
        [[server]]
        root = "www"

        [[server.worker]]
        file = "w/tick.php"
        background = true
    """)
    monkeypatch.chdir(tmp_path)
    config = load("conf/frankenpy.toml")
    (server,) = config.servers
    assert config.runtime == {}
    assert server.listen == DEFAULT_LISTEN and server.label == DEFAULT_LISTEN
    assert server.root == tmp_path / "conf" / "www" and server.root.is_absolute()
    (worker,) = server.workers
    # no name: a catch-all (issue 10), which starts one instance per name asked for
    assert worker.name is None and worker.catch_all and worker.background and worker.num == 1
    assert worker.max_workers == 16 and worker.max_queued_tasks == 1024
    assert worker.file == tmp_path / "conf" / "w" / "tick.php" and worker.path.is_file()


def test_load_root_defaults_to_config_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_config(tmp_path / "site", '[[server]]\nlisten = "127.0.0.1:18903"\n')
    monkeypatch.chdir(tmp_path)
    (server,) = load(path).servers
    assert server.root.resolve() == (tmp_path / "site").resolve()


def test_each_load_gets_fresh_scopes(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[[server]]\nlisten = "127.0.0.1:18904"\nlabel = "x"\n')
    a, b = load(path).servers[0], load(path).servers[0]
    assert a.scope != b.scope
    assert frankenpy.scope_label(a.scope) == frankenpy.scope_label(b.scope) == "x"


# --- load(): bad configurations -------------------------------------------------------------------------
W1 = "[[server]] #1 [[server.worker]] #1"
S2W1 = "[[server]] #2 [[server.worker]] #1"


def bad_config_cases() -> list[Any]:
    """(id, TOML written after a valid first server, fragments the message must contain)."""
    worker = '[[server]]\nlisten = "127.0.0.1:18912"\n[[server.worker]]\nname = "w"\nfile = "bg.php"\n'
    return [
        pytest.param('[[server]]\nlisten = "127.0.0.1:18912"\nbogus = 1\n',
                     ["[[server]] #2", "unknown key 'bogus'"], id="unknown-server-key"),
        pytest.param(worker + "colour = 'red'\n", [S2W1, "unknown key 'colour'"], id="unknown-worker-key"),
        pytest.param("[runtime]\nthreads = 2\n", ["[runtime]", "unknown key 'threads'"],
                     id="unknown-runtime-key"),
        pytest.param(worker + 'num = "two"\n', [S2W1, "key 'num'", "must be an integer", "'two'"],
                     id="num-string"),
        pytest.param(worker + 'background = "yes"\n', [S2W1, "key 'background'", "true or false", "'yes'"],
                     id="background-string"),
        pytest.param(worker + "num = true\n", [S2W1, "key 'num'", "must be an integer"], id="num-bool"),
        pytest.param("[runtime]\nphp_ini = { memory_limit = { value = '1G' } }\n",
                     ["[runtime]", "key 'php_ini'", "memory_limit"], id="php-ini-table-value"),
        pytest.param("[runtime]\nphp_ini = 'memory_limit=1G'\n", ["[runtime]", "key 'php_ini'", "a table"],
                     id="php-ini-string"),
        pytest.param("[runtime]\nnum_threads = '4'\n", ["[runtime]", "key 'num_threads'", "an integer"],
                     id="num-threads-string"),
        pytest.param("[runtime]\nnum_threads = 0\n", ["[runtime]", "key 'num_threads'", ">= 1"],
                     id="num-threads-zero"),
        pytest.param("[runtime]\nextensions = ['ctype', 3]\n", ["[runtime]", "key 'extensions'"],
                     id="extensions-not-strings"),
        pytest.param("[runtime]\nopcache = 1\n", ["[runtime]", "key 'opcache'", "true or false"],
                     id="opcache-int"),
        pytest.param("[runtime]\nserver = 'apache'\n",
                     ["[runtime]", "key 'server'", "native, wsgi", "'apache'"], id="server-unknown"),
        pytest.param("[runtime]\nserver = true\n", ["[runtime]", "key 'server'", "a string"],
                     id="server-bool"),
        pytest.param('[[server]]\nlisten = "127.0.0.1:18912"\nmetrics = "on"\n',
                     ["[[server]] #2", "key 'metrics'"], id="metrics-string"),
        pytest.param('[[server]]\nlisten = "127.0.0.1:18912"\nfollow_symlinks = "no"\n',
                     ["[[server]] #2", "key 'follow_symlinks'", "true or false"],
                     id="follow-symlinks-string"),
        pytest.param('[[server]]\nlisten = "127.0.0.1:18912"\nmax_wait_time = true\n',
                     ["[[server]] #2", "key 'max_wait_time'"], id="max-wait-time-bool"),
        pytest.param('[[server]]\nlisten = "127.0.0.1:18912"\nenv = { A = [1] }\n',
                     ["[[server]] #2", "key 'env'", "'A'"], id="server-env-array-value"),
        pytest.param(worker + "env = { X = { y = 1 } }\n", [S2W1, "key 'env'", "'X'"],
                     id="worker-env-table-value"),
        pytest.param('[[server]]\nlisten = "127.0.0.1:18912"\n[[server.worker]]\nname = "w"\n',
                     [S2W1, "missing key 'file'"], id="worker-file-missing-key"),
        pytest.param(worker.replace("bg.php", "nope/missing.php"), [S2W1, "nope/missing.php", "not found"],
                     id="worker-file-not-found"),
        pytest.param('[[server]]\nlisten = "127.0.0.1:18912"\nroot = "no-such-dir"\n',
                     ["[[server]] #2", "key 'root'", "no-such-dir"], id="root-missing"),
        pytest.param('[[server]]\nlisten = "127.0.0.1:18912"\nroot = "bg.php"\n',
                     ["[[server]] #2", "key 'root'", "bg.php"], id="root-is-a-file"),
        pytest.param('[[server]]\nlisten = "127.0.0.1:18911"\n',
                     ["[[server]]", "key 'listen'", "127.0.0.1:18911"], id="duplicate-listen"),
        # ":PORT" means 127.0.0.1:PORT (parse_listen): the same address spelled differently.
        pytest.param('[[server]]\nlisten = ":18911"\n', ["[[server]]", "key 'listen'", "18911"],
                     id="duplicate-listen-other-spelling"),
        pytest.param(worker + "num = 0\n", [S2W1, "'w'", "num must be >= 1"], id="num-zero"),
        pytest.param(worker + "max_consecutive_failures = -2\n", [S2W1, "'w'", "max_consecutive_failures"],
                     id="max-consecutive-failures-minus-2"),
        pytest.param(worker + "background = true\nmatch = '/x/*'\n", [S2W1, "'w'", "match"],
                     id="match-on-background"),
        pytest.param(worker + "background = true\nmax_requests = 5\n", [S2W1, "'w'", "max_requests"],
                     id="max-requests-on-background"),
        pytest.param(worker + "max_requests = -1\n", [S2W1, "'w'", "max_requests"],
                     id="max-requests-negative"),
        pytest.param(worker.replace('name = "w"', 'name = ""'), [S2W1, "name"], id="empty-name"),
        pytest.param('[[server]]\nlisten = "nohost"\n', ["[[server]] #2", "key 'listen'", "'nohost'"],
                     id="listen-no-port"),
        pytest.param('[[server]]\nlisten = "127.0.0.1:99999"\n', ["[[server]] #2", "key 'listen'"],
                     id="listen-port-out-of-range"),
        pytest.param('[[server]]\nlisten = "127.0.0.1:http"\n', ["[[server]] #2", "key 'listen'"],
                     id="listen-port-not-a-number"),
        pytest.param("[[server]]\nlisten = 8080\n", ["[[server]] #2", "key 'listen'", "a string"],
                     id="listen-int"),
        pytest.param("[[server.worker]]\nfile = 'bg.php'\nnum = 'x'\n",
                     ["[[server]] #1 [[server.worker]] #2", "key 'num'"], id="second-worker-of-first-server"),
    ]


@pytest.mark.parametrize(("extra", "fragments"), bad_config_cases())
def test_bad_config(tmp_path: Path, extra: str, fragments: list[str]) -> None:
    write(tmp_path / "bg.php", BG_WORKER)
    valid = '[[server]]\nlisten = "127.0.0.1:18911"\n[[server.worker]]\nfile = "bg.php"\nbackground = true\n'
    path = write(tmp_path / "frankenpy.toml", valid + extra)
    message = config_error(path)
    for fragment in fragments:
        assert fragment in message, message


def test_unknown_top_level_key(tmp_path: Path) -> None:
    path = write(tmp_path / "frankenpy.toml", 'debug = true\n[[server]]\nlisten = "127.0.0.1:18913"\n')
    message = config_error(path)
    assert "top level" in message and "unknown key 'debug'" in message, message


def test_bad_config_in_first_worker_names_its_table(tmp_path: Path) -> None:
    write(tmp_path / "bg.php", BG_WORKER)
    path = write_config(tmp_path, """
        [[server]]
        [[server.worker]]
        file = "bg.php"
        num = "two"
    """)
    message = config_error(path)
    assert f"{W1}: key 'num'" in message, message


def test_missing_worker_file_names_the_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, """
        [[server]]
        [[server.worker]]
        name = "ghost"
        file = "workers/ghost.php"
        background = true
    """)
    message = config_error(path)
    assert W1 in message and "'ghost'" in message, message
    assert str(tmp_path / "workers" / "ghost.php") in message, message


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "broken.toml", '[[server]]\nlisten = "127.0.0.1:18920\nroot = "."\n')
    message = config_error(path)
    assert "invalid TOML" in message and "line 2" in message, message


def test_non_utf8_config_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('[[server]]\nlabel = "caf\xe9"\n'.encode("latin-1"))
    config_error(path)


@pytest.mark.parametrize(
    "text", ["", "[runtime]\nnum_threads = 2\n", "server = []\n"],
    ids=["empty", "runtime-only", "empty-array"],
)
def test_no_server_is_an_error(tmp_path: Path, text: str) -> None:
    message = config_error(write(tmp_path / "frankenpy.toml", text))
    assert "[[server]]" in message, message


def test_server_must_be_an_array_of_tables(tmp_path: Path) -> None:
    message = config_error(write(tmp_path / "frankenpy.toml", '[server]\nlisten = "127.0.0.1:18921"\n'))
    assert "key 'server'" in message, message


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    message = config_error(missing)
    assert "no such file" in message, message


# --- duplicate worker names ------------------------------------------------------------------------------
def test_duplicate_worker_name_in_one_server_is_refused_by_the_runtime(tmp_path: Path) -> None:
    """load() does not check names; the Runtime refuses the duplicate at construction."""
    write(tmp_path / "a.php", BG_WORKER)
    write(tmp_path / "b.php", BG_WORKER)
    path = write_config(tmp_path, """
        [[server]]
        [[server.worker]]
        name = "twin"
        file = "a.php"
        background = true
        [[server.worker]]
        name = "twin"
        file = "b.php"
        background = true
    """)
    try:
        config = load(path)
    except ConfigError as exc:  # load() catching it is acceptable too
        assert "twin" in str(exc) and "[[server.worker]] #2" in str(exc), exc
        return
    (server,) = config.servers
    with pytest.raises(ValueError, match=rf"worker 'twin'.*scope {server.scope}"):
        frankenpy.Runtime(**config.runtime, workers=config.workers)


def test_same_worker_name_in_two_servers_both_run(tmp_path: Path, out_dir: Path) -> None:
    write(tmp_path / "workers" / "bg.php", BG_WORKER)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    path = write_config(tmp_path, f"""
        [runtime]
        num_threads = 1

        [[server]]
        listen = "127.0.0.1:18931"
        root = "a"
        label = "alpha"
        [[server.worker]]
        name = "shared"
        file = "workers/bg.php"
        background = true
        env = {{ OUT = {toml_str(out_dir)}, TAG = "alpha" }}

        [[server]]
        listen = "127.0.0.1:18932"
        root = "b"
        [[server.worker]]
        name = "shared"
        file = "workers/bg.php"
        background = true
        env = {{ OUT = {toml_str(out_dir)}, TAG = "beta" }}
    """)
    config = load(path)
    alpha, beta = config.servers
    rt = frankenpy.Runtime(**config.runtime, workers=config.workers)
    rt.start()
    try:
        wait_for(lambda: (out_dir / "alpha.started").exists() and (out_dir / "beta.started").exists(),
                 20.0, "both 'shared' workers to start")
        for tag in ("alpha", "beta"):
            assert json.loads((out_dir / f"{tag}.started").read_text())["worker"] == "shared"
        statuses = sorted(rt.workers(), key=lambda s: s.scope)
        assert [(s.name, s.scope, s.label, s.metric_name) for s in statuses] == [
            ("shared", alpha.scope, "alpha", "m#alpha:shared"),
            ("shared", beta.scope, "127.0.0.1:18932", "m#127.0.0.1:18932:shared"),
        ]
        wait_for(lambda: all(s.state == "ready" for s in rt.workers()), 20.0, "both workers ready")
        assert not (out_dir / "alpha.stopped").exists()
    finally:
        rt.shutdown(grace=10.0)
    assert (out_dir / "alpha.stopped").read_text() == "stopped"
    assert (out_dir / "beta.stopped").read_text() == "stopped"


# --- the command: run --config -------------------------------------------------------------------------
def serving_config(tmp_path: Path, out_dir: Path, port: int) -> Path:
    conf = tmp_path / "site"
    write(conf / "public" / "index.php", PAGE)
    write(conf / "workers" / "bg.php", BG_WORKER)
    return write_config(conf, f"""
        [runtime]
        num_threads = 2

        [[server]]
        listen = "127.0.0.1:{port}"
        root = "public"
        label = "site"
        env = {{ GREETING = "hello-from-config" }}

        [[server.worker]]
        name = "parker"
        file = "workers/bg.php"
        background = true
        env = {{ OUT = {toml_str(out_dir)}, TAG = "parker" }}
    """)


def linked_site(tmp_path: Path) -> Path:
    """``site/public`` with a symlink ``tpl`` to a template directory outside the root."""
    conf = tmp_path / "site"
    write(conf / "public" / "index.php", PAGE)
    write(conf / "shared" / "tpl" / "style.css", "tpl{}")
    (conf / "public" / "tpl").symlink_to(conf / "shared" / "tpl", target_is_directory=True)
    return conf


def test_cli_run_follow_symlinks_per_server(
    tmp_path: Path, run_frankenpy: Callable[..., Process]
) -> None:
    """``follow_symlinks = false`` in one [[server]] block refuses links out of its root; the
    other block follows them (the default)."""
    conf = linked_site(tmp_path)
    strict, default = free_port(), free_port()
    path = write_config(conf, f"""
        [[server]]
        listen = "127.0.0.1:{strict}"
        root = "public"
        follow_symlinks = false

        [[server]]
        listen = "127.0.0.1:{default}"
        root = "public"
    """)
    proc = run_frankenpy("run", "--config", str(path))
    status, body = proc.get_when_up(f"http://127.0.0.1:{default}/tpl/style.css")
    assert (status, body) == (200, "tpl{}"), proc.stderr
    status, body = proc.get_when_up(f"http://127.0.0.1:{strict}/tpl/style.css")
    assert status == 403 and "tpl{}" not in body, proc.stderr


@pytest.mark.parametrize("flag", [True, False], ids=["no-follow-symlinks", "default"])
def test_cli_php_server_no_follow_symlinks(
    tmp_path: Path, run_frankenpy: Callable[..., Process], flag: bool
) -> None:
    conf = linked_site(tmp_path)
    port = free_port()
    args = ["php-server", "--root", str(conf / "public"), "--listen", f"127.0.0.1:{port}"]
    config = cli.php_server_config(cli.build_parser().parse_args(args + ["--no-follow-symlinks"] * flag))
    assert config.servers[0].follow_symlinks is not flag
    proc = run_frankenpy(*args, *(["--no-follow-symlinks"] if flag else []))
    status, body = proc.get_when_up(f"http://127.0.0.1:{port}/tpl/style.css")
    assert (status, body == "tpl{}") == ((403, False) if flag else (200, True)), proc.stderr


@pytest.mark.parametrize(("toml", "option", "expected"), [
    ("", [], "native"),
    ('server = "wsgi"\n', [], "wsgi"),
    ('server = "wsgi"\n', ["--server", "native"], "native"),
    ("", ["--server", "wsgi"], "wsgi"),
])
def test_http_server_choice(tmp_path: Path, toml: str, option: list[str], expected: str) -> None:
    """The native server is the default; [runtime] server = "wsgi" or --server choose, the
    command line winning."""
    path = write(tmp_path / "frankenpy.toml", f'[runtime]\n{toml}[[server]]\nlisten = "127.0.0.1:18915"\n')
    assert load(path).http_server == ("wsgi" if toml else "native")
    args = cli.build_parser().parse_args(["run", "--config", str(path), *option])
    config = load(path)
    if args.server:
        config.http_server = args.server
    assert config.http_server == expected
    php = cli.build_parser().parse_args(["php-server", "--root", str(tmp_path), *option])
    assert cli.php_server_config(php).http_server == "native"
    assert php.server == (option[1] if option else None)


@pytest.mark.parametrize(("toml", "option", "expected"), [
    ("", [], "handoff"),
    ('io_model = "per-thread"\n', [], "per-thread"),
    ('io_model = "per-thread"\n', ["--io-model", "handoff"], "handoff"),
    ("", ["--io-model", "per-thread"], "per-thread"),
])
def test_io_model_choice(tmp_path: Path, toml: str, option: list[str], expected: str) -> None:
    """The native server hands requests off by default; [runtime] io_model or --io-model pick
    run-to-completion, the command line winning; an unknown model is an error naming the key."""
    path = write(tmp_path / "frankenpy.toml", f'[runtime]\n{toml}[[server]]\nlisten = "127.0.0.1:18916"\n')
    config = load(path)
    args = cli.build_parser().parse_args(["run", "--config", str(path), *option])
    if args.io_model:
        config.io_model = args.io_model
    assert config.io_model == expected
    bad = write(tmp_path / "bad.toml",
                '[runtime]\nio_model = "prefork"\n[[server]]\nlisten = "127.0.0.1:18917"\n')
    with pytest.raises(ConfigError, match=r"key 'io_model'.*handoff, per-thread.*'prefork'"):
        load(bad)


def test_cli_php_server_serves_per_thread(tmp_path: Path, run_frankenpy: Callable[..., Process]) -> None:
    write(tmp_path / "www" / "index.php", "<?php echo 'served by ', PHP_SAPI;\n")
    port = free_port()
    proc = run_frankenpy("php-server", "--io-model", "per-thread", "--root", str(tmp_path / "www"),
                         "--listen", f"127.0.0.1:{port}")
    status, body = proc.get_when_up(f"http://127.0.0.1:{port}/")
    assert (status, body) == (200, "served by frankenphp"), proc.stderr
    assert "(native, per-thread)" in proc.stderr, proc.stderr
    proc.popen.send_signal(signal.SIGTERM)
    assert proc.wait(STOP_TIMEOUT) == 0, proc.stderr


@pytest.mark.parametrize("server", ["native", "wsgi"])
def test_cli_php_server_serves_with_either_server(
    tmp_path: Path, run_frankenpy: Callable[..., Process], server: str
) -> None:
    write(tmp_path / "www" / "index.php", "<?php echo 'served by ', PHP_SAPI;\n")
    port = free_port()
    proc = run_frankenpy("php-server", "--server", server, "--root", str(tmp_path / "www"),
                         "--listen", f"127.0.0.1:{port}")
    status, body = proc.get_when_up(f"http://127.0.0.1:{port}/")
    assert (status, body) == (200, "served by frankenphp"), proc.stderr
    assert ("(native)" in proc.stderr) == (server == "native"), proc.stderr
    proc.popen.send_signal(signal.SIGTERM)
    assert proc.wait(STOP_TIMEOUT) == 0, proc.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_cli_run_serves_and_stops_gracefully(
    tmp_path: Path, out_dir: Path, run_frankenpy: Callable[..., Process], signum: signal.Signals
) -> None:
    port = free_port()
    path = serving_config(tmp_path, out_dir, port)
    proc = run_frankenpy("run", "--config", str(path))

    status, body = proc.get_when_up(f"http://127.0.0.1:{port}/index.php")
    assert status == 200, (body, proc.stderr)
    assert body.startswith("page ok ") and body.endswith(" hello-from-config\n"), body
    status, body = http_get(f"http://127.0.0.1:{port}/")
    assert status == 200 and body.startswith("page ok "), body

    # Runtime.start() waits for the worker to be ready before the listeners open: already there.
    assert (out_dir / "parker.started").exists(), proc.stderr
    info = json.loads((out_dir / "parker.started").read_text())
    assert info == {"worker": "parker", "pid": proc.popen.pid}  # runs inside the frankenpy process
    assert not (out_dir / "parker.stopped").exists()
    assert proc.popen.poll() is None

    time.sleep(0.5)  # the signal handlers are installed just after the listeners start
    sent = time.monotonic()
    proc.popen.send_signal(signum)
    code = proc.wait(STOP_TIMEOUT)
    elapsed = time.monotonic() - sent
    assert code == 0, proc.stderr
    assert elapsed < STOP_TIMEOUT
    assert (out_dir / "parker.stopped").read_text() == "stopped", proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_cli_signal_during_startup_stops_gracefully(
    tmp_path: Path, out_dir: Path, run_frankenpy: Callable[..., Process], signum: signal.Signals
) -> None:
    """A signal while a worker is still booting (the runtime is starting) must stop gracefully too."""
    port = free_port()
    path = serving_config(tmp_path, out_dir, port)
    bg = path.parent / "workers" / "bg.php"
    # Boot slowly: the sentinel is written 2 s before the worker takes its handle (becomes ready).
    bg.write_text(BG_WORKER.replace("$h = frankenphp_get_worker_handle();",
                                    "usleep(2000000);\n$h = frankenphp_get_worker_handle();"))
    proc = run_frankenpy("run", "--config", str(path))
    wait_for(lambda: (out_dir / "parker.started").exists(), STARTUP_TIMEOUT, "worker sentinel",
             interval=0.01)
    proc.popen.send_signal(signum)
    code = proc.wait(STOP_TIMEOUT)
    assert code == 0, f"exit status {code}; stderr:\n{proc.stderr}"
    assert (out_dir / "parker.stopped").exists(), proc.stderr


def test_cli_bad_config_exits_2_with_one_line(tmp_path: Path, run_frankenpy: Callable[..., Process]) -> None:
    write(tmp_path / "bg.php", BG_WORKER)
    path = write_config(tmp_path, """
        [[server]]
        listen = "127.0.0.1:18941"
        [[server.worker]]
        file = "bg.php"
        background = true
        num = "two"
    """)
    proc = run_frankenpy("run", "--config", str(path))
    assert proc.wait(STARTUP_TIMEOUT) == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("frankenpy: "), lines
    assert str(path) in lines[0] and W1 in lines[0] and "key 'num'" in lines[0], lines
    assert proc.stdout == ""


@pytest.mark.parametrize("kind", ["unknown-key", "invalid-toml", "missing-file", "no-server", "not-utf8"])
def test_cli_other_bad_configs_exit_2(
    tmp_path: Path, run_frankenpy: Callable[..., Process], kind: str
) -> None:
    path = tmp_path / "bad.toml"
    texts = {
        "unknown-key": '[[server]]\nlisten = "127.0.0.1:18942"\nlisen = "x"\n',
        "invalid-toml": "[[server]\n",
        "no-server": "[runtime]\nnum_threads = 1\n",
    }
    if kind in texts:
        path.write_text(texts[kind])
    elif kind == "not-utf8":
        path.write_bytes(b'[[server]]\nlabel = "caf\xe9"\n')
    proc = run_frankenpy("run", "--config", str(path))
    assert proc.wait(STARTUP_TIMEOUT) == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"frankenpy: {path}: "), proc.stderr
    if kind == "unknown-key":
        assert "[[server]] #1" in lines[0] and "'lisen'" in lines[0], lines


def test_cli_duplicate_worker_name_fails_with_one_line(
    tmp_path: Path, run_frankenpy: Callable[..., Process]
) -> None:
    """Not a ConfigError (the Runtime catches it), but still one line naming the worker."""
    write(tmp_path / "bg.php", BG_WORKER)
    path = write_config(tmp_path, """
        [[server]]
        listen = "127.0.0.1:18943"
        [[server.worker]]
        name = "twin"
        file = "bg.php"
        background = true
        [[server.worker]]
        name = "twin"
        file = "bg.php"
        background = true
    """)
    proc = run_frankenpy("run", "--config", str(path))
    code = proc.wait(STARTUP_TIMEOUT)
    assert code != 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("frankenpy: ") and "'twin'" in lines[0], proc.stderr


def test_main_missing_config_returns_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.toml"
    assert cli.main(["run", "--config", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err == f"frankenpy: {missing}: no such file\n"


def test_main_bad_config_returns_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, '[[server]]\nlisten = "nohost"\n')
    assert cli.main(["run", "--config", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"frankenpy: {path}: [[server]] #1: key 'listen'"), err


# --- the command without arguments: the demo ---------------------------------------------------------
COUNTER = re.compile(r'id="counter">(\d+)<')


def test_demo_serves_counter_and_stops(tmp_path: Path, run_frankenpy: Callable[..., Process]) -> None:
    if not port_is_free(8080):
        pytest.skip("port 8080 is taken")
    state_dir = tmp_path / "phptmp"
    state_dir.mkdir()
    proc = run_frankenpy(TMPDIR=str(state_dir))

    def counter() -> int | None:
        status, body = http_get("http://127.0.0.1:8080/")
        assert status == 200, body
        match = COUNTER.search(body)
        return int(match.group(1)) if match else None

    status, body = proc.get_when_up("http://127.0.0.1:8080/")
    assert status == 200, body
    assert "frankenpy" in body
    wait_for(lambda: counter() is not None, STARTUP_TIMEOUT, "the demo counter", interval=0.2)
    first = counter()
    assert first is not None
    wait_for(lambda: (counter() or -1) > first, 6.0, f"the counter to pass {first}", interval=0.25)
    wait_for(lambda: (counter() or -1) >= first + 2, 10.0, f"the counter to reach {first + 2}", interval=0.25)
    # The worker's state file lives in TMPDIR, named after the frankenpy process.
    assert (state_dir / f"frankenpy-demo-{proc.popen.pid}.json").exists()
    status, metrics = http_get("http://127.0.0.1:8080/metrics")
    assert status == 200 and "m#demo:ticker" in metrics, metrics[:2000]

    proc.popen.send_signal(signal.SIGTERM)
    assert proc.wait(STOP_TIMEOUT) == 0, proc.stderr
    # The worker left its loop and removed its state file.
    assert not list(state_dir.glob("frankenpy-demo-*")), list(state_dir.iterdir())


# --- lazy and catch-all background workers (issue 10) ------------------------------------------------
def test_toml_lazy_and_catch_all_workers(tmp_path: Path) -> None:
    write(tmp_path / "bg" / "w.php", BG_WORKER)
    path = write_config(tmp_path, """
        [[server]]
        listen = "127.0.0.1:18931"

        [[server.worker]]
        name = "config"
        file = "bg/w.php"
        background = true
        num = 0
        max_queued_tasks = 8

        [[server.worker]]
        file = "bg/w.php"
        background = true
        max_workers = 3
    """)
    lazy, catch_all = load(path).servers[0].workers
    assert (lazy.name, lazy.num, lazy.lazy, lazy.max_queued_tasks) == ("config", 0, True, 8)
    assert catch_all.name is None and catch_all.catch_all and catch_all.max_workers == 3
    rt = frankenpy.Runtime(num_threads=1, workers=[lazy, catch_all])  # the runtime accepts both
    assert rt.workers_group.thread_count == 0  # neither starts with the runtime


@pytest.mark.parametrize(("body", "message"), [
    ('file = "bg/w.php"\nbackground = true\nnum = -1', "num must be >= 0"),
    ('file = "bg/w.php"\nnum = 0', "num must be >= 1"),
    ('file = "bg/w.php"\nbackground = true\nmax_workers = 0', "max_workers must be >= 1"),
    ('file = "bg/w.php"\nbackground = true\nmax_queued_tasks = "many"',
     "'max_queued_tasks': must be an integer"),
])
def test_toml_lazy_and_catch_all_errors(tmp_path: Path, body: str, message: str) -> None:
    write(tmp_path / "bg" / "w.php", BG_WORKER)
    head = '[[server]]\nlisten = "127.0.0.1:18932"\n\n[[server.worker]]\n'
    path = write_config(tmp_path, head + body + "\n")
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(path)


def test_toml_two_catch_alls_in_one_server_are_refused(tmp_path: Path) -> None:
    write(tmp_path / "bg" / "w.php", BG_WORKER)
    path = write_config(tmp_path, """
        [[server]]
        listen = "127.0.0.1:18933"
        [[server.worker]]
        file = "bg/w.php"
        background = true
        [[server.worker]]
        file = "bg/w.php"
        background = true
    """)
    with pytest.raises(ConfigError, match=r"#2: this server already has a catch-all"):
        load(path)


def test_cli_background_worker_with_num_0_is_lazy(tmp_path: Path) -> None:
    worker_file = write(tmp_path / "bg.php", BG_WORKER)
    args = ["php-server", "--root", str(tmp_path), "--background-worker", f"lazy={worker_file}:0",
            "--background-worker", f"eager={worker_file}"]
    lazy, eager = cli.php_server_config(cli.build_parser().parse_args(args)).servers[0].workers
    assert (lazy.name, lazy.num, lazy.lazy) == ("lazy", 0, True)
    assert (eager.name, eager.num, eager.lazy) == ("eager", 1, False)
