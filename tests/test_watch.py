"""Watch mode (frankenpy.watch) on a temporary directory: real inotify events, real workers."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from helpers import wait_for

import frankenpy
from frankenpy import cli
from frankenpy.config import ConfigError, parse
from frankenpy.watch import DEFAULT_PATTERN, Pattern, Watcher, expand_braces, watch_workers

WORKER = """<?php
$handle = frankenphp_get_worker_handle();
file_put_contents({out}, '{version}');
while (true) {{
    $read = [$handle]; $write = $except = [];
    if (stream_select($read, $write, $except, 1) > 0 && fread($handle, 1) === '') {{
        break;
    }}
}}
"""


def worker_source(out: Path, version: str) -> str:
    return WORKER.format(out=repr(str(out)), version=version)


def test_expand_braces() -> None:
    assert expand_braces("a.{x,y}") == ["a.x", "a.y"]
    assert expand_braces("{a,b}/{c,d}") == ["a/c", "a/d", "b/c", "b/d"]
    assert expand_braces("plain") == ["plain"]


def test_default_pattern_matches_like_frankenphp(tmp_path: Path) -> None:
    pattern = Pattern(DEFAULT_PATTERN, tmp_path)
    for name in ("index.php", "src/a/b/Kernel.php", ".env", "config/app.yaml", "x.yml", "t/base.twig"):
        assert pattern.matches(str(tmp_path / name)), name
    for name in ("readme.txt", "index.php.swp", "php", "src/style.css"):
        assert not pattern.matches(str(tmp_path / name)), name
    assert not pattern.matches(str(tmp_path.parent / "other.php"))  # outside the base
    assert pattern.roots == [str(tmp_path)] * 5


def test_patterns_without_wildcards_and_single_star(tmp_path: Path) -> None:
    single = Pattern("src/*.php", tmp_path)
    assert single.matches(str(tmp_path / "src" / "a.php"))
    assert not single.matches(str(tmp_path / "src" / "deep" / "a.php"))
    exact = Pattern("worker.php", tmp_path)
    assert exact.matches(str(tmp_path / "worker.php"))
    assert not exact.matches(str(tmp_path / "worker.php2"))
    with pytest.raises(ValueError, match="non-empty"):
        Pattern("  ", tmp_path)


class Calls:
    """The on_change callback of a Watcher, recording each call's paths."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.changed = threading.Event()

    def __call__(self, paths: list[str]) -> None:
        self.calls.append(paths)
        self.changed.set()


@pytest.mark.timeout(30)
def test_a_burst_of_changes_restarts_once_and_other_files_never(tmp_path: Path) -> None:
    on_change = Calls()
    # A burst is answered once it has been quiet for debounce_ms.  1 s rather than the default
    # 150 ms: on a loaded machine this thread can stall longer than 150 ms between two writes,
    # which is then rightly two bursts.
    watcher = Watcher([DEFAULT_PATTERN], tmp_path, on_change, debounce_ms=1000).start()
    try:
        (tmp_path / "notes.txt").write_text("not watched")  # (would show in the calls below)
        # Files in a directory created just before them: inotify may watch it only after the
        # first ones are written (the watcher looks inside a new directory itself).
        (tmp_path / "sub").mkdir()
        for index in range(5):
            (tmp_path / "sub" / f"f{index}.php").write_text("<?php\n")
            time.sleep(0.02)
        assert on_change.changed.wait(10), "no restart after the change"
        time.sleep(2.0)  # a second call would come within about one debounce period
        assert len(on_change.calls) == 1, on_change.calls
        assert {Path(p).name for p in on_change.calls[0]} == {f"f{i}.php" for i in range(5)}
    finally:
        watcher.stop()


@pytest.mark.timeout(30)
def test_a_directory_moved_in_counts_with_the_watched_files_inside(tmp_path: Path) -> None:
    """A directory that appears whole (mv, cp -r, git checkout) may bring no event for its
    files at all: what it holds is the change."""
    root, staging = tmp_path / "app", tmp_path / "staging"
    root.mkdir()
    (staging / "lib" / "deep").mkdir(parents=True)
    (staging / "lib" / "a.php").write_text("<?php\n")
    (staging / "lib" / "deep" / "b.php").write_text("<?php\n")
    (staging / "lib" / "readme.txt").write_text("not watched")
    (staging / "docs").mkdir()
    (staging / "docs" / "readme.txt").write_text("not watched")
    on_change = Calls()
    watcher = Watcher([DEFAULT_PATTERN], root, on_change).start()
    try:
        (staging / "docs").rename(root / "docs")  # nothing watched inside: no restart
        (staging / "lib").rename(root / "lib")
        assert on_change.changed.wait(10), "no restart for the directory moved in"
        assert on_change.calls == [[str(root / "lib" / "a.php"), str(root / "lib" / "deep" / "b.php")]]
    finally:
        watcher.stop()


@pytest.mark.timeout(60)
def test_change_restarts_workers_and_a_syntax_error_halts_until_the_next_change(tmp_path: Path) -> None:
    out = tmp_path / "version.txt"
    script = tmp_path / "app" / "worker.php"
    script.parent.mkdir()
    script.write_text(worker_source(out, "v1"))
    worker = frankenpy.Worker("bg", script, background=True, max_consecutive_failures=2)
    with frankenpy.Runtime(num_threads=1, workers=[worker]) as rt:
        wait_for(lambda: out.exists() and out.read_text() == "v1", what="the first boot")
        watcher = watch_workers(rt, [DEFAULT_PATTERN], tmp_path)
        try:
            script.write_text(worker_source(out, "v2"))
            wait_for(lambda: out.read_text() == "v2", timeout=20, what="the restart after the change")
            assert rt.workers()[0].restarts >= 1

            script.write_text("<?php this is not PHP;\n")  # a syntax error: boots fail
            wait_for(lambda: rt.workers()[0].state == "halted", timeout=30, what="the halt")
            assert "syntax error" in (rt.workers()[0].last_error or "")
            assert rt.execute_code("echo 'still serving';").output == b"still serving"

            script.write_text(worker_source(out, "v3"))  # the fix revives it
            wait_for(lambda: out.read_text() == "v3", timeout=20, what="the revival")
            wait_for(lambda: rt.workers()[0].state == "ready", timeout=20, what="ready again")
        finally:
            watcher.stop()


def test_config_watch_keys(tmp_path: Path) -> None:
    (tmp_path / "w.php").write_text("<?php\n")
    config = parse(
        {
            "runtime": {"watch": ["./src/**/*.php"]},
            "server": [{"root": ".", "worker": [{"file": "w.php", "watch": ["./config/*.yaml"]}]}],
        },
        source="t.toml", base=tmp_path,
    )
    assert config.watch == ["./src/**/*.php", "./config/*.yaml"]
    assert config.base == tmp_path
    with pytest.raises(ConfigError, match=r"\[runtime\]: key 'watch'"):
        parse({"runtime": {"watch": "x"}, "server": [{"root": "."}]}, base=tmp_path)
    with pytest.raises(ConfigError, match=r"key 'watch'"):
        parse({"runtime": {"watch": [""]}, "server": [{"root": "."}]}, base=tmp_path)


def test_cli_watch_option(tmp_path: Path) -> None:
    parser = cli.build_parser()
    args = parser.parse_args(["php-server", "--root", str(tmp_path), "--watch", "--watch", "lib/*.php"])
    config = cli.apply_service_options(cli.php_server_config(args), args)
    assert config.watch == [DEFAULT_PATTERN, "lib/*.php"]
    assert config.base == tmp_path.absolute()
    args = parser.parse_args(["php-server", "--root", str(tmp_path)])
    assert cli.apply_service_options(cli.php_server_config(args), args).watch == []


HTTP_WORKER = """<?php
$version = '{version}';
while (frankenphp_handle_request(function () use ($version) {{ echo $version; }})) {{
}}
"""


@pytest.mark.timeout(90)
def test_cli_run_with_watch_and_admin_end_to_end(tmp_path: Path) -> None:
    """``frankenpy run`` with ``watch`` and ``admin`` in [runtime]: editing the worker's file
    changes what it serves; the admin API sees the restart and restarts on request."""
    import json
    import signal
    import urllib.request

    from test_config_cli import Process, free_port, subprocess_env

    public = tmp_path / "public"
    public.mkdir()
    (public / "index.php").write_text(HTTP_WORKER.format(version="v1"))
    port, admin = free_port(), free_port()
    (tmp_path / "conf.toml").write_text(
        f'[runtime]\nnum_threads = 1\nadmin = "127.0.0.1:{admin}"\nwatch = ["./public/*.php"]\n\n'
        f'[[server]]\nlisten = "127.0.0.1:{port}"\nroot = "public"\n\n'
        f'[[server.worker]]\nfile = "public/index.php"\n'
    )
    workdir = tmp_path / "proc"
    workdir.mkdir()
    process = Process(["run", "--config", str(tmp_path / "conf.toml")], workdir, subprocess_env())
    try:
        assert process.get_when_up(f"http://127.0.0.1:{port}/index.php") == (200, "v1")

        def admin_call(method: str, path: str) -> tuple[int, bytes]:
            request = urllib.request.Request(f"http://127.0.0.1:{admin}{path}", method=method)
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read()

        wait_for(lambda: process.get_when_up(f"http://127.0.0.1:{admin}/frankenphp/workers")[0] == 200,
                 what="the admin API")
        (public / "index.php").write_text(HTTP_WORKER.format(version="v2"))
        wait_for(lambda: process.get_when_up(f"http://127.0.0.1:{port}/index.php") == (200, "v2"),
                 timeout=30, what="the watched change to be served")
        workers = json.loads(admin_call("GET", "/frankenphp/workers")[1])
        assert workers[0]["restarts"] >= 1
        assert admin_call("POST", "/frankenphp/workers/restart") == (200, b"workers restarted successfully\n")
        assert json.loads(admin_call("GET", "/frankenphp/workers")[1])[0]["restarts"] > workers[0]["restarts"]
        process.popen.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, process.stderr
        assert "watch: " in process.stderr and "admin API on http://127.0.0.1" in process.stderr
    finally:
        if process.popen.poll() is None:
            process.popen.kill()
            process.popen.wait(10)
