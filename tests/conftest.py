"""Shared fixtures: real runtimes on Debian's libphp (no mocks)."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import frankenpy


@pytest.fixture
def make_runtime() -> Iterator[Callable[..., frankenpy.Runtime]]:
    """Factory: ``make_runtime(num_threads=1, php_ini={...}, ...)`` returns a started runtime,
    shut down when the test ends (even if the test fails)."""
    started: list[frankenpy.Runtime] = []

    def factory(num_threads: int = 2, **kwargs: Any) -> frankenpy.Runtime:
        rt = frankenpy.Runtime(num_threads=num_threads, **kwargs)
        rt.start()
        started.append(rt)
        return rt

    yield factory
    for rt in reversed(started):
        rt.shutdown()


@pytest.fixture
def runtime(make_runtime: Callable[..., frankenpy.Runtime]) -> frankenpy.Runtime:
    """A started runtime with two PHP threads."""
    return make_runtime(num_threads=2)


@pytest.fixture
def runtime1(make_runtime: Callable[..., frankenpy.Runtime]) -> frankenpy.Runtime:
    """A started runtime with a single PHP thread: every execution runs on the same interpreter."""
    return make_runtime(num_threads=1, php_ini={"memory_limit": "32M"})


@pytest.fixture
def php_file(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``php_file(code, name="script.php", directory=None)`` writes ``<?php`` + the
    dedented ``code`` under ``tmp_path`` (or ``directory``) and returns its path.  Give
    ``raw=True`` to write ``code`` exactly as is."""

    def factory(
        code: str, name: str = "script.php", directory: Path | None = None, raw: bool = False
    ) -> Path:
        path = (directory or tmp_path) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(code if raw else "<?php\n" + textwrap.dedent(code).lstrip("\n"))
        return path

    return factory


@pytest.fixture
def restore_cwd() -> Iterator[str]:
    """The current directory before the test; put back afterwards whatever the test did."""
    cwd = os.getcwd()
    yield cwd
    os.chdir(cwd)
