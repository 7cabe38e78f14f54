"""Watch mode: restart the workers when a watched file changes (FrankenPHP's ``watch``).

Patterns are globs with ``**`` (any number of directories) and ``{a,b}`` alternatives, relative
to a base directory (the configuration file's, or the document root for ``php-server``).  The
default, :data:`DEFAULT_PATTERN`, is FrankenPHP's.  File-system events come from ``watchfiles``
(inotify through Rust's ``notify``: no polling, no cost while nothing changes).  A burst of
events is answered once, after 150 ms without a new one (FrankenPHP's debounce), by
``Runtime.restart_workers()``: a graceful restart.  A worker that cannot boot after the change
(a syntax error) backs off and halts as usual; the next change revives it.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import watchfiles

from .threads import WorkerLogAdapter

if TYPE_CHECKING:
    from .runtime import Runtime

logger = WorkerLogAdapter(logging.getLogger("frankenpy.watch"), {"worker": "-"})

DEFAULT_PATTERN = "./**/*.{env,php,twig,yaml,yml}"
DEBOUNCE_MS = 150


def expand_braces(pattern: str) -> list[str]:
    """``a.{x,y}`` -> ``["a.x", "a.y"]`` (nested and repeated groups too)."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [out for alt in match.group(1).split(",") for out in expand_braces(head + alt + tail)]


def _glob_regex(pattern: str) -> str:
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 1 :]:
            end = pattern.index("]", i + 1)
            body = pattern[i + 1 : end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


class Pattern:
    """One watch pattern made absolute: the directory to watch and the files that count."""

    def __init__(self, pattern: str, base: str | os.PathLike[str]) -> None:
        if not isinstance(pattern, str) or not pattern.strip():
            raise ValueError(f"watch pattern must be a non-empty string, got {pattern!r}")
        self.pattern = pattern
        regexes, roots = [], []
        for alternative in expand_braces(pattern):
            path = os.path.normpath(os.path.join(os.fspath(base), alternative))
            parts = path.split(os.sep)
            fixed = []
            for part in parts:
                if any(c in part for c in "*?["):
                    break
                fixed.append(part)
            root = os.sep.join(fixed) or os.sep
            if len(fixed) == len(parts):  # no wildcard: one file (or a whole directory)
                regexes.append(re.escape(path) + "(?:/.*)?")
                root = os.path.dirname(path) if not os.path.isdir(path) else path
            else:
                regexes.append(_glob_regex(path))
            roots.append(root)
        self.regex = re.compile("|".join(f"(?:{r})" for r in regexes))
        self.roots = roots

    def matches(self, path: str) -> bool:
        return self.regex.fullmatch(path) is not None


def _existing_ancestor(path: str) -> str:
    while not os.path.isdir(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


class Watcher:
    """Calls ``on_change(paths)`` on its own thread once changes to files matching ``patterns``
    have settled for :data:`DEBOUNCE_MS`; :meth:`stop` ends it."""

    def __init__(
        self,
        patterns: Sequence[str],
        base: str | os.PathLike[str],
        on_change: Callable[[list[str]], object],
        *,
        debounce_ms: int = DEBOUNCE_MS,
    ) -> None:
        self.patterns = [Pattern(p, base) for p in patterns]
        if not self.patterns:
            raise ValueError("watch: no pattern given")
        self.on_change = on_change
        self.debounce_ms = debounce_ms
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="frankenpy-watch", daemon=True)
        roots = {_existing_ancestor(root) for p in self.patterns for root in p.roots}
        # A root inside another one is already watched (recursively).
        self.roots = sorted(
            r for r in roots if not any(r != o and r.startswith(o.rstrip("/") + "/") for o in roots)
        )
        self.changes = 0  # restarts triggered so far

    def matches(self, path: str) -> bool:
        return any(pattern.matches(path) for pattern in self.patterns)

    def start(self) -> Watcher:
        self._thread.start()
        if not self._ready.wait(10.0):  # the first yield comes once inotify is in place
            logger.warning("watch: the watcher did not start within 10 s")
        patterns = ", ".join(p.pattern for p in self.patterns)
        logger.info("watching %s under %s", patterns, ", ".join(self.roots))
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10.0)

    def _filter(self, change: watchfiles.Change, path: str) -> bool:
        # A new directory too: inotify watches it only once told of it, so files written into
        # it at once (mkdir + write, cp -r, git checkout, a directory moved in) may never be
        # reported themselves; _new_files() looks inside instead.
        return self.matches(path) or (change == watchfiles.Change.added and os.path.isdir(path))

    def _new_files(self, directory: str) -> list[str]:
        """The watched files in a directory that just appeared."""
        found = []
        for parent, _dirs, files in os.walk(directory):
            found.extend(path for name in files if self.matches(path := os.path.join(parent, name)))
        return found

    def _changed_files(self, changes: set[tuple[watchfiles.Change, str]]) -> list[str]:
        paths = set()
        for change, path in changes:
            if self.matches(path):
                paths.add(path)
            elif change == watchfiles.Change.added and os.path.isdir(path):
                paths.update(self._new_files(path))
        return sorted(paths)

    def _run(self) -> None:
        # yield_on_timeout: the first (empty) yield tells start() that inotify is in place.
        try:
            for changes in watchfiles.watch(
                *self.roots,
                watch_filter=self._filter,
                debounce=max(self.debounce_ms * 10, 1600),
                step=self.debounce_ms,
                stop_event=self._stop,
                rust_timeout=200,
                yield_on_timeout=True,
                raise_interrupt=False,
            ):
                self._ready.set()
                if not changes or self._stop.is_set():
                    continue
                paths = self._changed_files(changes)
                if not paths:  # only new directories, with nothing watched in them
                    continue
                self.changes += 1
                logger.info("watch: %s changed; restarting the workers", _describe(paths))
                try:
                    self.on_change(paths)
                except Exception:
                    logger.exception("watch: restarting the workers failed")
        except Exception:
            logger.exception("watch: the watcher stopped")
        finally:
            self._ready.set()


def _describe(paths: Iterable[str]) -> str:
    paths = list(paths)
    return ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")


def watch_workers(runtime: Runtime, patterns: Sequence[str], base: str | os.PathLike[str]) -> Watcher:
    """Restart ``runtime``'s workers (gracefully) whenever a file matching ``patterns`` changes."""
    return Watcher(patterns, base, lambda _paths: runtime.restart_workers()).start()

