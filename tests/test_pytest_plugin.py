"""The pytest plugin (frankenpy.pytest_plugin) tested as pytest's own plugins are: through
``pytester``, which runs a pytest session on test files written for the occasion (in this
process, so that they share the image pool), and ``Result.raise_for_status()``."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

import frankenpy
import frankenpy.pytest_plugin  # imported before pytester snapshots sys.modules, kept by it

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
# The inner sessions load the plugin by name and no other (the installed ones would be imported
# again by every session: pytester takes sys.modules back after each), which also keeps the
# pytest11 entry point, once installed, from registering it a second time.
PLUGIN_ARGS = ("-p", "frankenpy.pytest_plugin", "-p", "no:cacheprovider")


@pytest.fixture(autouse=True)
def _no_autoload(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest(*PLUGIN_ARGS, *args)


def test_entry_point_is_declared() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["entry-points"]["pytest11"] == {"frankenpy": "frankenpy.pytest_plugin"}


# --- the cost of the plugin in sessions that do not use it -----------------------------------------
HEAVY_MODULES = ("_cffi_backend", "frankenpy._native", "frankenpy.runtime", "frankenpy.execution",
                 "frankenpy.workers", "frankenpy.http", "waitress")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("table", ["", "[tool.frankenpy]\nnum_threads = 3\n"])
def test_the_plugin_loads_no_php_until_a_fixture_is_used(pytester: pytest.Pytester, table: str) -> None:
    """pytest imports the plugin in every session of an environment with frankenpy installed
    (pytest11): until a test uses a fixture, neither the cffi extension nor a libphp (nor the
    glue) may be loaded, [tool.frankenpy] validated at start-up or not.  In a fresh interpreter:
    this one has them all."""
    if table:
        pytester.makepyprojecttoml(table)
    pytester.makepyfile(
        test_a_without=f"""
        import sys

        HEAVY = {HEAVY_MODULES!r}

        def mapped():
            with open("/proc/self/maps") as maps:
                return {{line.split()[-1] for line in maps if "/" in line or "memfd" in line}}

        def test_nothing_heavy_before(pytestconfig):
            assert pytestconfig.pluginmanager.has_plugin("frankenpy.pytest_plugin")
            assert [m for m in HEAVY if m in sys.modules] == []
            assert [f for f in mapped() if "php" in f or "frankenpy" in f] == []
        """,
        test_b_with="""
        import sys

        def test_a_fixture_loads_it(php):
            assert php("echo 6 * 7;").output == b"42"
            assert "frankenpy._native" in sys.modules
        """,
    )
    result = pytester.runpytest_subprocess(*PLUGIN_ARGS)
    result.assert_outcomes(passed=2)


# --- php, php_runtime, the marker ------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_php_runs_code_and_files_on_the_session_runtime(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_a="""
        import pathlib
        import pytest
        import frankenpy

        seen = []

        def test_code(php, php_runtime):
            r = php("echo getenv('X'), ' ', json_encode($argv); exit(2);", env={"X": "y"}, argv=["a", "b"])
            assert isinstance(r, frankenpy.Result)
            assert (r.exit_status, r.output) == (2, b'y ["a","b"]')
            assert php("echo STDIN === null ? 0 : fread(STDIN, 9);", stdin=b"input").output == b"input"
            seen.append(php_runtime)

        def test_file(php, php_runtime, tmp_path):
            script = tmp_path / "s.php"
            script.write_text("<?php echo basename(__FILE__), ' ', $argv[0];")
            assert php(script).output == b"s.php " + str(script).encode()
            assert php(script, timeout=30).ok
            seen.append(php_runtime)

        def test_timeout(php):
            r = php("while (true) {}", timeout=0.5)
            assert r.timed_out and r.exit_status == 255

        def test_not_code(php):
            with pytest.raises(TypeError, match="code .str. or a file"):
                php(b"echo 1;")

        def test_same_runtime(php_session_runtime):
            assert seen[0] is seen[1] is php_session_runtime
            assert php_session_runtime.state == "running"
            assert php_session_runtime.num_threads == 2  # Runtime's default: no [tool.frankenpy]
        """
    )
    result = run(pytester)
    result.assert_outcomes(passed=5)


@pytest.mark.timeout(60)
def test_marker_gives_a_test_class_or_module_a_runtime_of_its_own(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import pytest
        RUNTIMES = {}

        @pytest.fixture
        def remember(request, php_runtime):
            RUNTIMES[request.node.name] = php_runtime
        """
    )
    pytester.makepyfile(
        test_a="""
        import pytest
        from conftest import RUNTIMES

        def test_session(php, remember):
            assert php("echo extension_loaded('mbstring') ? 'y' : 'n';").output == b"n"

        @pytest.mark.php_runtime(num_threads=1, extensions=["mbstring"], php_ini={"memory_limit": "48M"})
        def test_own(php, php_runtime, remember):
            assert php_runtime is not RUNTIMES["test_session"]
            assert php_runtime.num_threads == 1
            assert php("echo mb_strlen('héllo'), ini_get('memory_limit');").output == b"548M"

        def test_own_was_shut_down_after_it(php_runtime, remember):
            assert RUNTIMES["test_own"].state == "stopped"
            assert php_runtime is RUNTIMES["test_session"] and php_runtime.state == "running"

        @pytest.mark.php_runtime(num_threads=1)
        class TestClass:
            def test_one(self, php_runtime, remember):
                assert php_runtime.num_threads == 1

            def test_two(self, php_runtime, remember):
                assert php_runtime is RUNTIMES["test_one"]  # one runtime for the class

        def test_class_runtime_was_shut_down(remember):
            assert RUNTIMES["test_one"].state == "stopped"
        """,
        test_b="""
        import pytest
        from conftest import RUNTIMES

        pytestmark = pytest.mark.php_runtime(num_threads=3)

        def test_module_one(php_runtime, remember):
            assert php_runtime.num_threads == 3

        def test_module_two(php_runtime, remember):
            assert php_runtime is RUNTIMES["test_module_one"]
        """,
        test_c="""
        from conftest import RUNTIMES

        def test_module_runtime_was_shut_down():
            assert RUNTIMES["test_module_one"].state == "stopped"

        def test_markers_are_registered(pytestconfig):
            markers = "\\n".join(pytestconfig.getini("markers"))
            assert "php_runtime(**options)" in markers and "php_server(root" in markers
        """,
    )
    result = run(pytester, "--strict-markers")
    result.assert_outcomes(passed=10)


@pytest.mark.timeout(60)
def test_marker_with_an_unknown_option_names_it(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.php_runtime(threads=4)
        def test_bad(php):
            pass
        """
    )
    result = run(pytester)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*test_bad*php_runtime: unknown option 'threads'*"])


# --- [tool.frankenpy] -------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_pyproject_table_configures_the_runtimes(pytester: pytest.Pytester) -> None:
    pytester.makepyprojecttoml(
        """
        [tool.frankenpy]
        num_threads = 3
        php_ini = { memory_limit = "40M", "date.timezone" = "Europe/Paris" }
        extensions = ["ctype"]
        opcache = false
        """
    )
    pytester.makepyfile(
        """
        import pytest

        CODE = ("echo ini_get('memory_limit'), date_default_timezone_get(), "
                "(int) function_exists('ctype_digit');")

        def test_session(php, php_runtime):
            assert php_runtime.num_threads == 3
            assert php(CODE).output == b"40MEurope/Paris1"

        @pytest.mark.php_runtime(num_threads=1, php_ini={"memory_limit": "50M"})
        def test_marker_over_table(php, php_runtime):
            assert php_runtime.num_threads == 1
            assert php(CODE).output == b"50MEurope/Paris1"  # php_ini: the marker's keys over the table's

        def test_server_and_worker_runtimes_too(php_server, php_worker):
            assert php_server.runtime.num_threads == 3
            assert php_server.runtime.php_ini["memory_limit"] == "40M"
            w = php_worker("$h = frankenphp_get_worker_handle(); while (!feof($h)) { fread($h, 1); }")
            assert w.runtime.num_threads == 1  # a worker's runtime has one regular thread
            assert w.runtime.extensions == ["ctype"]
        """
    )
    result = run(pytester)
    result.assert_outcomes(passed=3)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("threads = 4", "[tool.frankenpy]: unknown key 'threads'"),
        ('num_threads = "4"', "[tool.frankenpy]: key 'num_threads': must be an integer, got '4'"),
        ("extensions = [1]", "[tool.frankenpy]: key 'extensions': must be an array of strings"),
    ],
)
def test_pyproject_table_errors_name_the_file_and_key(
    pytester: pytest.Pytester, table: str, message: str
) -> None:
    pyproject = pytester.makepyprojecttoml(f"[tool.frankenpy]\n{table}\n")
    pytester.makepyfile("def test_never_runs(): pass")
    result = run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"ERROR: frankenpy: {pyproject}: {message}\n" in result.stderr.str() + "\n"


# --- php_server -------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_php_server_serves_a_document_root(pytester: pytest.Pytester) -> None:
    public = pytester.mkdir("public")
    (public / "index.php").write_text("<?php echo 'public ', $_SERVER['DOCUMENT_ROOT'];")
    pytester.makepyfile(
        """
        import urllib.request
        import pytest

        def get(url):
            with urllib.request.urlopen(url, timeout=30) as response:
                return response.status, response.read()

        def test_default_root(php_server, tmp_path):
            assert php_server.root == tmp_path / "www" and not any(php_server.root.iterdir())
            assert php_server.url == f"http://127.0.0.1:{php_server.port}"
            try:  # the native server once this build has it, else waitress
                from frankenpy.http.native import NativeServer as expected
            except ImportError:
                from frankenpy.http.server import Server as expected
            assert type(php_server.server) is expected
            (php_server.root / "hello.php").write_text("<?php echo 'hi ', $_GET['n'] * 2;")
            assert get(php_server.url + "/hello.php?n=21") == (200, b"hi 42")

        @pytest.mark.php_server("public")
        def test_marker_root(php_server, request):
            assert php_server.root == request.path.parent / "public"
            assert get(php_server.url + "/") == (200, b"public " + str(php_server.root).encode())

        @pytest.mark.parametrize("php_server", ["public"], indirect=True)
        def test_indirect_root(php_server):
            assert get(php_server.url + "/index.php")[1].startswith(b"public ")

        SERVERS = []

        def test_stopped_after_the_test_1(php_server):
            SERVERS.append(php_server)

        def test_stopped_after_the_test_2():
            import urllib.error
            server = SERVERS[0]
            assert server.runtime.state == "stopped"
            with pytest.raises(urllib.error.URLError):
                get(server.url + "/")
        """
    )
    result = run(pytester)
    result.assert_outcomes(passed=5)


# --- php_worker ----------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_php_worker_status_logs_and_stop(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        PARK = '''
            $h = frankenphp_get_worker_handle();
            error_log("mailer up " . getenv('QUEUE'));
            echo "some output\\n";
            while (!feof($h)) { fread($h, 1); }
            error_log("mailer down");
        '''
        WAIT = "$h = frankenphp_get_worker_handle(); while (!feof($h)) { fread($h, 1); }"
        WORKERS = []

        def test_worker(php_worker):
            w = php_worker(PARK, name="mailer", num=2, env={"QUEUE": "mails"})
            WORKERS.append(w)
            statuses = w.status()
            assert [(s.name, s.thread, s.background) for s in statuses] == [
                ("mailer", 0, True), ("mailer", 1, True),
            ]
            assert {s.state for s in statuses} == {"ready"}
            record = w.wait_for_log("mailer up mails")
            assert record.name == "frankenpy.php" and record.worker == "mailer"
            w.wait_for_log("output: some output")  # frankenpy.workers

        def test_worker_was_stopped_and_drained():
            w = WORKERS[0]
            assert w.runtime.state == "stopped"
            assert {s.state for s in w.status()} == {"stopped"}
            assert w.messages.count("[mailer] mailer down") == 2

        def test_only_its_own_records(php_worker, php):
            a = php_worker("error_log('from a');" + WAIT, name="a")
            php("error_log('from a regular execution');")
            a.wait_for_log("from a")
            assert all(r.worker == "a" for r in a.records)

        def test_halting_worker_raises(php_worker, tmp_path):
            script = tmp_path / "crash.php"
            script.write_text("<?php throw new Exception('cannot boot');")
            with pytest.raises(RuntimeError, match="cannot boot"):
                php_worker(script, name="crash", max_consecutive_failures=0)

        def test_log_wait_fails_clearly(php_worker):
            w = php_worker("error_log('x');" + WAIT)
            with pytest.raises(AssertionError, match="worker 'worker' logged no 'never' in 0.2 s"):
                w.wait_for_log("never", timeout=0.2)
        """
    )
    result = run(pytester)
    result.assert_outcomes(passed=5)


# --- failure reports ----------------------------------------------------------------------------------
def sections(reprec: pytest.HookRecorder, name: str) -> dict[str, str]:
    """The "PHP diagnostics" section of each test's report of phase ``name`` (call/setup)."""
    found = {}
    for report in reprec.getreports("pytest_runtest_logreport"):
        if report.when == name:
            found[report.head_line] = dict(report.sections).get("PHP diagnostics", "")
    return found


@pytest.mark.timeout(60)
def test_failure_report_shows_php_diagnostics(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        def test_assertion(php, tmp_path):
            script = tmp_path / "job.php"
            script.write_text("<?php\\n$x = [];\\necho $x['missing'];\\nerror_log('logged');\\n")
            php("trigger_error('a notice', E_USER_NOTICE);")
            assert php(script).output == b"something"

        def test_raise(php):
            php("function f() { undefined_call(); }\\nf();").raise_for_status()

        def test_runtime_used_directly(php_runtime):
            php_runtime.execute_code("trigger_error('direct', E_USER_WARNING);")
            assert False

        def test_worker(php_worker):
            w = php_worker("error_log('worker says hi'); $h = frankenphp_get_worker_handle();"
                           "while (!feof($h)) { fread($h, 1); }")
            w.wait_for_log("worker says hi")
            assert False

        def test_worker_halts(php_worker):
            php_worker("throw new Exception('cannot boot');", name="crash", max_consecutive_failures=0)

        def test_passes(php):
            php("trigger_error('fine', E_USER_WARNING);")

        def test_fails_without_php_output(php):
            assert False

        def test_no_php_fixture():
            assert False

        def test_many(php):
            php("for ($i = 0; $i < 120; $i++) "
                "trigger_error(\\"warning $i \\" . str_repeat('x', $i * 30), E_USER_WARNING);")
            assert False
        """
    )
    reprec = pytester.inline_run(*PLUGIN_ARGS)
    reprec.assertoutcome(passed=1, failed=8)
    found = sections(reprec, "call")

    assertion = found["test_assertion"]
    assert 'PHP Warning:  Undefined array key "missing" in ' in assertion
    assert "job.php on line 3" in assertion
    assert "PHP Notice:  a notice in frankenpy code on line 1" in assertion
    assert "logged" in assertion
    assert "Uncaught Error: Call to undefined function undefined_call()" in found["test_raise"]
    assert "PHP Warning:  direct" in found["test_runtime_used_directly"]
    assert "[worker] worker says hi" in found["test_worker"]
    halted = found["test_worker_halts"]
    assert "[crash] PHP Fatal error:  Uncaught Exception: cannot boot" in halted
    assert "[crash] halted after 1 consecutive failures" in halted
    assert found["test_passes"] == ""  # passing tests get no section
    assert found["test_fails_without_php_output"] == ""
    assert found["test_no_php_fixture"] == ""

    many = found["test_many"].splitlines()  # bounded: the last lines, each cut
    assert len(many) == frankenpy.pytest_plugin.DIAGNOSTICS_LINES + 1
    assert many[0] == f"({120 - frankenpy.pytest_plugin.DIAGNOSTICS_LINES} earlier line(s) omitted)"
    assert "warning 119 " in many[-1] and many[-1].endswith(" [...]")
    assert max(len(line) for line in many) <= frankenpy.pytest_plugin.DIAGNOSTICS_LINE_CHARS + 6

    # ... and the terminal shows it beside the assertion.
    result = run(pytester, "-k", "test_assertion")
    result.stdout.fnmatch_lines([
        "*assert b'' == b'something'*",
        "*- PHP diagnostics -*",
        "*PHP Warning:  Undefined array key \"missing\" in *job.php on line 3",
    ])


# --- Result.raise_for_status() ------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_raise_for_status(runtime: frankenpy.Runtime, php_file) -> None:
    ok = runtime.execute_code("echo 1;")
    assert ok.raise_for_status() is ok

    path = php_file("""
        function boot() {
            throw new LogicException('config missing');
        }
        boot();
    """, name="boot.php")
    failed = runtime.execute_file(path)
    with pytest.raises(frankenpy.PHPError) as caught:
        failed.raise_for_status()
    error = caught.value
    assert isinstance(error, RuntimeError) and error.result is failed
    assert str(error).startswith(
        "PHP execution failed (exit status 255): "
        "PHP Fatal error:  Uncaught LogicException: config missing in "
    )
    assert str(error).endswith(f"thrown in {path} on line 3")

    parse = runtime.execute_code("echo 'unterminated")
    with pytest.raises(frankenpy.PHPError, match=r"PHP Parse error: .* on line 1$"):
        parse.raise_for_status()

    with pytest.raises(frankenpy.PHPError, match=r"^PHP execution failed: exit status 3$"):
        runtime.execute_code("echo 'no error, just a status'; exit(3);").raise_for_status()

    timed_out = runtime.execute_code("while (true) {}", timeout=0.5)
    expected = r"^PHP execution failed \(exit status 255\): timed out after 0.5 s$"
    with pytest.raises(frankenpy.PHPError, match=expected):
        timed_out.raise_for_status()
