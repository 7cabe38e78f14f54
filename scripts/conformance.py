#!/usr/bin/env python3
"""Run PHP's own .phpt test files under php-cli and under frankenpy, side by side, and list where
frankenpy differs.  Not part of CI (it needs a php-src checkout and a few minutes).

Every test runs twice with the same ini (run-tests.php's defaults, then the test's ``--INI--``):
``php -n -d ... file.php`` and ``Runtime.execute_file(file.php)``.  Each side passes when its
output matches ``--EXPECT--`` / ``--EXPECTF--`` / ``--EXPECTREGEX--`` as run-tests.php matches
it.  Supported sections: TEST, FILE, EXPECT, EXPECTF, EXPECTREGEX, INI, SKIPIF, ENV, ARGS, STDIN,
CLEAN (and the informative CREDITS, DESCRIPTION, XFAIL); a test with any other section is skipped.
frankenpy runs in a child process (a test that crashes it is reported, and the run goes on) on
one Runtime with 2 threads; a test with an ``--INI--`` section gets a runtime of its own, since
php_ini is per runtime.

Usage::

    python3 scripts/conformance.py [--php php] [--json FILE] [--show N] PATH...

PATH is a .phpt file or a directory (its *.phpt, not recursive).  Get the tests from a php-src
tree (never commit them), for example::

    git --git-dir=<php-src.git> archive <ref> Zend/tests ext/standard/tests | tar -x -C /tmp/php-src
    python3 scripts/conformance.py /tmp/php-src/Zend/tests \\
        /tmp/php-src/ext/standard/tests/{general_functions,strings,array}

The script writes each test's ``.php`` (and SKIPIF/CLEAN files) next to its ``.phpt``, as
run-tests.php does.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SUPPORTED = {"TEST", "FILE", "EXPECT", "EXPECTF", "EXPECTREGEX", "INI", "SKIPIF", "ENV", "ARGS", "STDIN",
             "CLEAN", "CREDITS", "DESCRIPTION", "XFAIL"}
# run-tests.php's $ini_overwrites (PHP 8.2), applied to both sides before the test's own INI.
DEFAULT_INI = {
    "output_handler": "",
    "open_basedir": "",
    "disable_functions": "",
    "output_buffering": "Off",
    "error_reporting": "E_ALL",
    "display_errors": "1",
    "display_startup_errors": "1",
    "log_errors": "0",
    "html_errors": "0",
    "report_memleaks": "1",
    "report_zend_debug": "0",
    "docref_root": "",
    "docref_ext": ".html",
    "error_prepend_string": "",
    "error_append_string": "",
    "auto_prepend_file": "",
    "auto_append_file": "",
    "ignore_repeated_errors": "0",
    "precision": "14",
    "serialize_precision": "-1",
    "memory_limit": "128M",
    "short_open_tag": "0",
    "zend.assertions": "1",
    "zend.exception_ignore_args": "0",
    "zend.exception_string_param_max_len": "15",
}
TIMEOUT = 20.0


# --- the .phpt format -------------------------------------------------------------------------------
def parse_phpt(path: Path) -> dict[str, str]:
    sections: dict[str, str] = {}
    name = None
    for line in path.read_bytes().decode("latin-1").splitlines(keepends=True):
        match = re.match(r"^--([_A-Z]+)--\s*$", line)
        if match:
            name = match.group(1)
            sections[name] = ""
        elif name is not None:
            sections[name] += line
    return sections


def expected_regex(sections: dict[str, str]) -> tuple[str, str] | None:
    """("exact", text) or ("regex", pattern), as run-tests.php compares."""
    if "EXPECT" in sections:
        return "exact", sections["EXPECT"].replace("\r\n", "\n").strip()
    if "EXPECTREGEX" in sections:
        return "regex", sections["EXPECTREGEX"].replace("\r\n", "\n").strip()
    if "EXPECTF" not in sections:
        return None
    wanted = sections["EXPECTF"].replace("\r\n", "\n").strip()
    parts, offset = [], 0
    while offset < len(wanted):  # preg_quote everything but %r...%r sections
        start = wanted.find("%r", offset)
        end = wanted.find("%r", start + 2) if start >= 0 else -1
        if start < 0 or end < 0:
            start = end = len(wanted)
        parts.append(re.escape(wanted[offset:start]))
        if end > start:
            parts.append("(" + wanted[start + 2:end] + ")")
        offset = end + 2
    pattern = "".join(parts)
    for token, regex in (("%e", "/"), ("%s", r"[^\r\n]+"), ("%S", r"[^\r\n]*"), ("%a", r".+"), ("%A", r".*"),
                         ("%w", r"\s*"), ("%i", r"[+-]?\d+"), ("%d", r"\d+"), ("%x", r"[0-9a-fA-F]+"),
                         ("%f", r"[+-]?\.?\d+\.?\d*(?:[Ee][+-]?\d+)?"), ("%c", ".")):
        pattern = pattern.replace(re.escape(token), regex).replace(token, regex)
    return "regex", pattern


def matches(expect: tuple[str, str], output: str) -> bool:
    output = output.replace("\r\n", "\n").strip()
    kind, wanted = expect
    if kind == "exact":
        return output == wanted
    try:
        return re.fullmatch(wanted, output, re.DOTALL) is not None
    except re.error:
        return False


def ini_pairs(text: str, test_dir: Path) -> dict[str, str]:
    """The INI section as run-tests.php reads it: key -> the value's php.ini text."""
    pairs = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(";") or "=" not in line:
            continue
        key, value = (part.strip() for part in line.split("=", 1))
        pairs[key] = value.replace("{PWD}", str(test_dir)).replace("{TMP}", tempfile.gettempdir())
    return pairs


def php_ini_values(ini: dict[str, str]) -> dict[str, str]:
    """php.ini text values as frankenpy's php_ini takes them (it writes a value in quotes only
    when it needs them: a quoted value's content is the value)."""
    return {key: value[1:-1] if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'" else value
            for key, value in ini.items()}


def env_pairs(text: str) -> dict[str, str]:
    pairs = {}
    for line in text.splitlines():
        if "=" in line:
            key, value = line.split("=", 1)
            pairs[key.strip()] = value
    return pairs


# --- the runs ---------------------------------------------------------------------------------------
@dataclass
class Outcome:
    test: str
    status: str  # both-pass, both-fail, only-cli, only-frankenpy, startup-error, skip
    reason: str = ""
    cli_output: str = field(default="", repr=False)
    fp_output: str = field(default="", repr=False)


def php_cli(php: str, script: Path, ini: dict[str, str], env: dict[str, str], args: list[str],
            stdin: bytes) -> str:
    command = [php, "-n", *(f"-d{k}={v}" for k, v in ini.items()), "-f", str(script), "--", *args]
    try:
        proc = subprocess.run(command, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=TIMEOUT, env={**os.environ, **env})
    except subprocess.TimeoutExpired:
        return "<<timeout>>"
    return proc.stdout.decode("latin-1")


class Frankenpy:
    """The frankenpy side: a child process running tests on a Runtime(2), restarted if it dies."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.proc: subprocess.Popen[bytes] | None = None
        self.pending: dict[int, tuple[threading.Event, list[Any]]] = {}
        self.next_id = 0
        self.generation = 0

    def _start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--child"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=os.environ.copy())
        self.generation += 1
        threading.Thread(target=self._reader, args=(self.proc, self.generation), daemon=True).start()

    def _reader(self, proc: subprocess.Popen[bytes], generation: int) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            reply = json.loads(line)
            with self.lock:
                waiter = self.pending.pop(reply["id"], None)
            if waiter is not None:
                waiter[1].append(reply)
                waiter[0].set()
        proc.wait()
        with self.lock:  # the child died: everything it was running crashed it (or was with it)
            if self.generation == generation:
                self.proc = None
            for event, slot in self.pending.values():
                slot.append({"crashed": f"frankenpy process died (exit {proc.returncode})"})
                event.set()
            self.pending.clear()

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        event, slot = threading.Event(), []
        with self.lock:
            if self.proc is None:
                self._start()
            assert self.proc is not None and self.proc.stdin is not None
            self.next_id += 1
            job = {**job, "id": self.next_id}
            self.pending[self.next_id] = (event, slot)
            try:
                self.proc.stdin.write(json.dumps(job).encode() + b"\n")
                self.proc.stdin.flush()
            except BrokenPipeError:
                self.pending.pop(self.next_id, None)
                return {"crashed": "frankenpy process died"}
        event.wait(TIMEOUT * 3)
        return slot[0] if slot else {"crashed": "no answer"}

    def close(self) -> None:
        with self.lock:
            if self.proc is not None and self.proc.stdin is not None:
                self.proc.stdin.close()


def run_test(path: Path, php: str, fp: Frankenpy) -> Outcome:
    name = str(path)
    try:
        sections = parse_phpt(path)
    except OSError as exc:
        return Outcome(name, "skip", f"unreadable: {exc}")
    unsupported = sorted(set(sections) - SUPPORTED)
    if unsupported:
        return Outcome(name, "skip", "unsupported section " + ", ".join(unsupported))
    expect = expected_regex(sections)
    if "FILE" not in sections or expect is None:
        return Outcome(name, "skip", "no FILE or EXPECT section")
    base = path.with_suffix("")
    ini = {**DEFAULT_INI, **ini_pairs(sections.get("INI", ""), path.parent)}
    if {"extension", "zend_extension"} & set(ini):
        return Outcome(name, "skip", "INI loads an extension")
    env = env_pairs(sections.get("ENV", ""))
    args = shlex.split(sections.get("ARGS", ""))
    stdin = sections.get("STDIN", "").encode("latin-1")
    if "SKIPIF" in sections:
        skipif = base.parent / (base.name + ".skip.php")
        skipif.write_bytes(sections["SKIPIF"].encode("latin-1"))
        said = php_cli(php, skipif, ini, env, [], b"").strip()
        skipif.unlink()
        if said.lower().startswith("skip"):
            return Outcome(name, "skip", "SKIPIF: " + said[:80])
    script = base.parent / (base.name + ".php")
    script.write_bytes(sections["FILE"].encode("latin-1"))
    clean = None
    if "CLEAN" in sections:
        clean = base.parent / (base.name + ".clean.php")
        clean.write_bytes(sections["CLEAN"].encode("latin-1"))
    try:
        cli_output = php_cli(php, script, ini, env, args, stdin)
        if clean:
            php_cli(php, clean, ini, env, [], b"")
        reply = fp.run({"script": str(script), "ini": php_ini_values(ini), "env": env, "args": args,
                        "stdin": stdin.decode("latin-1"), "skipif": sections.get("SKIPIF")})
        if clean:
            php_cli(php, clean, ini, env, [], b"")
    finally:
        script.unlink(missing_ok=True)
        if clean:
            clean.unlink(missing_ok=True)
    cli_pass = matches(expect, cli_output)
    if "crashed" in reply:
        return Outcome(name, "only-cli" if cli_pass else "both-fail", "frankenpy: " + reply["crashed"],
                       cli_output, "")
    if "startup" in reply:  # frankenpy raises what php-cli prints (a documented difference)
        return Outcome(name, "startup-error", reply["startup"], cli_output, "")
    if "error" in reply:
        return Outcome(name, "only-cli" if cli_pass else "both-fail", "frankenpy: " + reply["error"],
                       cli_output, "")
    if reply.get("skipped"):
        return Outcome(name, "only-cli" if cli_pass else "skip", "frankenpy SKIPIF: " + reply["skipped"],
                       cli_output, "")
    fp_output = reply["output"]
    fp_pass = matches(expect, fp_output)
    status = {(True, True): "both-pass", (False, False): "both-fail", (True, False): "only-cli",
              (False, True): "only-frankenpy"}[(cli_pass, fp_pass)]
    return Outcome(name, status, "", cli_output, fp_output)


# --- the child: frankenpy -----------------------------------------------------------------------------
def child() -> None:
    import logging

    import frankenpy

    logging.getLogger("frankenpy").setLevel(logging.CRITICAL + 1)  # displayed in the output instead
    # The job channel gets fds of its own: programs that tests start inherit fds 0 and 1.
    jobs = os.fdopen(os.dup(0), "r")
    replies = os.fdopen(os.dup(1), "w")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    out_lock = threading.Lock()
    shared = frankenpy.Runtime(num_threads=2, php_ini=php_ini_values(DEFAULT_INI))
    shared.start()

    def execute(job: dict[str, Any]) -> dict[str, Any]:
        own = None
        rt = shared
        if job["ini"] != php_ini_values(DEFAULT_INI):
            try:
                own = rt = frankenpy.Runtime(num_threads=1, php_ini=job["ini"])
                rt.start()
            except (RuntimeError, ValueError) as exc:
                return {"startup": f"{type(exc).__name__}: {exc}"}
        try:
            script = job["script"]
            env = job["env"]
            if job.get("skipif"):
                skip = Path(script).with_suffix(".fpskip.php")
                skip.write_bytes(job["skipif"].encode("latin-1"))
                try:
                    said = rt.execute_file(skip, env=env, timeout=TIMEOUT).output.decode("latin-1").strip()
                finally:
                    skip.unlink()
                if said.lower().startswith("skip"):
                    return {"skipped": said[:80]}
            result = rt.execute_file(script, env=env, argv=[script, *job["args"]], timeout=TIMEOUT,
                                     stdin=job["stdin"].encode("latin-1"))
            output = (result.output + result.stderr).decode("latin-1")
            if result.timed_out:
                output += "<<timeout>>"
            return {"output": output}
        finally:
            if own is not None:
                own.shutdown()

    def serve(job: dict[str, Any]) -> None:
        try:
            reply = execute(job)
        except Exception as exc:  # reported to the parent as the test's result
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        reply["id"] = job["id"]
        with out_lock:
            replies.write(json.dumps(reply) + "\n")
            replies.flush()

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        for line in jobs:
            pool.submit(serve, json.loads(line))
    shared.shutdown()


# --- main ---------------------------------------------------------------------------------------------
def collect(paths: list[str]) -> list[Path]:
    tests: list[Path] = []
    for item in paths:
        path = Path(item)
        tests.extend(sorted(path.glob("*.phpt")) if path.is_dir() else [path])
    return tests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*")
    parser.add_argument("--php", default="php", help="php-cli binary (default: php)")
    parser.add_argument("--json", help="write every outcome to this file")
    parser.add_argument("--show", type=int, default=40, help="list at most N differing tests")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.child:
        child()
        return 0
    tests = collect(opts.paths)
    os.environ["TEST_PHP_EXECUTABLE"] = shutil.which(opts.php) or opts.php  # for programs tests start
    if not tests:
        parser.error("no .phpt files given")
    fp = Frankenpy()
    started = time.monotonic()
    outcomes: list[Outcome] = []
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        for i, outcome in enumerate(pool.map(lambda t: run_test(t, opts.php, fp), tests), 1):
            outcomes.append(outcome)
            if i % 250 == 0:
                print(f"  {i}/{len(tests)} tests, {time.monotonic() - started:.0f} s", file=sys.stderr)
    fp.close()
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    ran = len(outcomes) - counts.get("skip", 0)
    print(f"{len(outcomes)} tests in {time.monotonic() - started:.0f} s: {ran} run, "
          f"{counts.get('skip', 0)} skipped")
    for status in ("both-pass", "both-fail", "only-cli", "only-frankenpy", "startup-error"):
        print(f"  {status:15} {counts.get(status, 0)}")
    differing = [o for o in outcomes if o.status in ("only-cli", "only-frankenpy", "startup-error")]
    for outcome in differing[: opts.show]:
        print(f"\n{outcome.status}: {outcome.test} {outcome.reason}")
        cli, fpo = outcome.cli_output.splitlines(), outcome.fp_output.splitlines()
        for n, (a, b) in enumerate(zip(cli + [""] * len(fpo), fpo + [""] * len(cli), strict=True)):
            if a != b:
                print(f"    line {n + 1}:\n      php-cli:   {a[:150]!r}\n      frankenpy: {b[:150]!r}")
                break
    if opts.json:
        Path(opts.json).write_text(json.dumps([asdict(o) for o in outcomes], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
