"""frankenpy against php-cli: what a script written for the command line sees (issue 7, "PHP
conformance": headers, the filter extension, php_ini values, $_ENV, "#!" lines, the standard
streams).  Where php-cli is the reference, the same code runs under ``php -n`` and the two
answers are compared."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import wsgiref.util
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_for

import frankenpy
from frankenpy.http.app import PHPApp
from frankenpy.runtime import ini_text

MakeRuntime = Callable[..., frankenpy.Runtime]


def php_cli(
    code: str, *args: str, ini: Path | None = None, stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    """``code`` run by php-cli with no php.ini (or only ``ini``), as frankenpy runs it."""
    config = ["-c", str(ini)] if ini is not None else ["-n"]
    env = {**os.environ, "PHP_INI_SCAN_DIR": ""}
    return subprocess.run(["php", *config, "-d", "display_errors=stderr", *args, "-r", code],
                          input=stdin, capture_output=True, timeout=30, env=env)


@pytest.fixture(scope="module")
def rt() -> Iterator[frankenpy.Runtime]:
    runtime = frankenpy.Runtime(num_threads=1, env={"FROM_RUNTIME": "rt"})
    runtime.start()
    yield runtime
    runtime.shutdown()


def run(rt: frankenpy.Runtime, code: str, **kwargs: Any) -> frankenpy.Result:
    result = rt.execute_code(textwrap.dedent(code), **kwargs)
    assert result.exit_status == 0, (result.output, result.errors)
    return result


# --- defect 14: headers are not "already sent" outside HTTP ----------------------------------------
HEADER_CODE = """
    header("X-Test: 1");
    $before = headers_sent();
    header_register_callback(function () { $GLOBALS["callback_ran"] = true; });
    $ini = ini_set("session.gc_maxlifetime", "77");
    $session = session_start();
    session_write_close();
    echo "body|";
    var_dump($before, headers_sent(), headers_list(), $session, $ini, $GLOBALS["callback_ran"] ?? false);
"""


@pytest.mark.timeout(30)
def test_headers_are_not_sent_before_the_first_output(rt: frankenpy.Runtime) -> None:
    result = rt.execute_code(textwrap.dedent(HEADER_CODE), env={"HOME": "/tmp"})
    cli = php_cli(textwrap.dedent(HEADER_CODE))
    assert result.errors == [] and cli.stderr == b""
    assert result.output == cli.stdout
    # header() was accepted, the header callback ran at the first output, the session started,
    # session ini could still change; headers_list() is empty as under php-cli.
    assert result.output.startswith(b"body|bool(false)\nbool(true)\narray(0) {\n}\nbool(true)\nstring(")
    assert result.output.endswith(b"bool(true)\n")


@pytest.mark.timeout(30)
def test_after_output_headers_are_sent_as_under_php_cli(rt: frankenpy.Runtime) -> None:
    code = 'echo "x"; header("X-Late: 1"); var_dump(headers_sent($file, $line), $line > 0);'
    result = rt.execute_code(code)
    assert result.output == b"xbool(true)\nbool(true)\n"
    assert run(rt, "var_dump(http_response_code());").output == b"bool(false)\n"
    assert any("Cannot modify header information - headers already sent" in e for e in result.errors)


@pytest.mark.timeout(30)
def test_ob_gzhandler_without_accept_encoding_passes_output_through(rt: frankenpy.Runtime) -> None:
    code = 'ob_start("ob_gzhandler"); echo "plain text"; ob_end_flush(); var_dump(headers_list());'
    result = rt.execute_code(code)
    assert result.errors == []
    assert result.output == php_cli(code).stdout == b"plain textarray(0) {\n}\n"


@pytest.mark.timeout(30)
def test_http_requests_still_get_their_headers(rt: frankenpy.Runtime, tmp_path: Path) -> None:
    (tmp_path / "h.php").write_text('<?php header("X-Mine: yes"); http_response_code(201); echo "ok";')
    status, headers, body = wsgi_get(PHPApp(rt, tmp_path), "/h.php")
    assert status.startswith("201") and ("X-Mine", "yes") in headers and body == b"ok"


# --- defect 12: $_SERVER goes through the filter extension ----------------------------------------
def wsgi_get(app: PHPApp, path: str) -> tuple[str, list[tuple[str, str]], bytes]:
    environ: dict[str, Any] = {"PATH_INFO": path, "REQUEST_METHOD": "GET"}
    wsgiref.util.setup_testing_defaults(environ)
    reply: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        reply["status"], reply["headers"] = status, headers
        return lambda data: None

    body = b"".join(app(environ, start_response))
    return reply["status"], reply["headers"], body


FILTER_CODE = """
    var_dump(filter_input(INPUT_SERVER, "FOO"), $_SERVER["FOO"], filter_has_var(INPUT_SERVER, "FOO"),
             filter_input(INPUT_ENV, "FOO"), $_ENV["FOO"]);
"""


@pytest.mark.timeout(30)
def test_filter_input_sees_server_and_env_variables(rt: frankenpy.Runtime) -> None:
    result = run(rt, FILTER_CODE, env={"FOO": "a<b>"})
    assert result.output == (b'string(4) "a<b>"\nstring(4) "a<b>"\nbool(true)\n'
                             b'string(4) "a<b>"\nstring(4) "a<b>"\n')


@pytest.mark.timeout(30)
def test_filter_default_applies_to_server_and_env(make_runtime: MakeRuntime) -> None:
    rt = make_runtime(num_threads=1, php_ini={"filter.default": "special_chars"})
    result = run(rt, FILTER_CODE, env={"FOO": "a<b>"})
    # filter_input() answers the raw value, the superglobals hold the filtered one (as CGI/FPM).
    assert result.output == (b'string(4) "a<b>"\nstring(12) "a&#60;b&#62;"\nbool(true)\n'
                             b'string(4) "a<b>"\nstring(12) "a&#60;b&#62;"\n')


@pytest.mark.timeout(30)
def test_filter_input_server_in_http_requests_and_workers(tmp_path: Path) -> None:
    answer = ('echo json_encode([filter_input(INPUT_SERVER, "REQUEST_METHOD"),'
              ' filter_input(INPUT_SERVER, "REQUEST_URI")]);')
    (tmp_path / "classic.php").write_text("<?php " + answer)
    (tmp_path / "worker.php").write_text(
        f"<?php while (frankenphp_handle_request(function () {{ {answer} }})) {{}}"
    )
    worker = frankenpy.Worker("w", tmp_path / "worker.php", num=1, match="/w/*")
    with frankenpy.Runtime(num_threads=1, workers=[worker]) as rt:
        app = PHPApp(rt, tmp_path)
        assert wsgi_get(app, "/classic.php")[2] == b'["GET","\\/classic.php"]'
        for path in ("/w/one", "/w/two"):  # every request of a worker gets its own values
            assert wsgi_get(app, path)[2] == b'["GET","\\/w\\/%s"]' % path[3:].encode()


# --- defect 16: php_ini values reach PHP as a php.ini line would -------------------------------------
INI_VALUES = {
    "error_reporting": "E_ALL & ~E_DEPRECATED",  # Debian's production default: an expression
    "precision": 11,
    "display_startup_errors": "Off",  # a bare word
    "user_agent": "E_ALL",  # a constant
    "error_log": "/tmp/a dir/with spaces.log",
    "date.timezone": "Europe/Paris",
    "arg_separator.output": "&amp;",
    "sendmail_path": "/usr/sbin/sendmail -t -i -f a=b;c",
    "session.name": "it's ${HOME} \"quoted\" \\back\\slash",
    "highlight.string": "#DD0000",
    "user_dir": "",
    "auto_prepend_file": " leading and trailing ",
}
INI_KEYS = "error_reporting precision display_startup_errors user_agent error_log date.timezone " \
    "arg_separator.output sendmail_path session.name highlight.string user_dir auto_prepend_file"


@pytest.mark.timeout(30)
def test_php_ini_values_read_as_in_a_php_ini_file(make_runtime: MakeRuntime, tmp_path: Path) -> None:
    code = f'foreach (explode(" ", "{INI_KEYS}") as $k) echo $k, "=", var_export(ini_get($k), true), "\\n";'
    rt = make_runtime(num_threads=1, php_ini=INI_VALUES)
    ini = tmp_path / "php.ini"
    ini.write_text(ini_text(INI_VALUES))
    cli = php_cli(code, ini=ini)
    assert cli.returncode == 0 and cli.stderr == b"", cli.stderr
    result = rt.execute_code(code)
    assert result.output == cli.stdout
    got = dict(line.split("=", 1) for line in result.output.decode().splitlines())
    assert got["error_reporting"] == "'24575'"
    assert got["user_agent"] == "'32767'"
    assert got["display_startup_errors"] == "''"
    assert got["error_log"] == "'/tmp/a dir/with spaces.log'"
    assert got["sendmail_path"] == "'/usr/sbin/sendmail -t -i -f a=b;c'"
    assert got["session.name"] == "'it\\'s ${HOME} \"quoted\" \\\\back\\\\slash'"
    assert got["auto_prepend_file"] == "' leading and trailing '"


@pytest.mark.parametrize("value", ["E_ALL &", "(E_ALL", "E_ALL | | E_NOTICE", "foo(bar)"])
@pytest.mark.timeout(30)
def test_php_ini_value_php_cannot_parse_names_its_key(value: str) -> None:
    runtime = frankenpy.Runtime(num_threads=1, php_ini={"precision": 10, "error_reporting": value})
    with pytest.raises(RuntimeError) as info:
        runtime.start()
    assert "error_reporting" in str(info.value) and "syntax error" in str(info.value)
    assert runtime.state == "stopped"


@pytest.mark.timeout(30)
def test_php_ini_operator_alone_is_a_string(make_runtime: MakeRuntime) -> None:
    rt = make_runtime(num_threads=1, php_ini={"arg_separator.output": "&", "highlight.html": "~"})
    assert run(rt, 'echo ini_get("arg_separator.output"), ini_get("highlight.html");').output == b"&~"


@pytest.mark.parametrize("value", ["1\nextension=evil.so", "a\rb", "a\0b"])
def test_php_ini_values_that_cannot_be_written_are_refused(value: str) -> None:
    with pytest.raises(ValueError, match="memory_limit"):
        frankenpy.Runtime(num_threads=1, php_ini={"memory_limit": value})


# --- defect 17: $_ENV --------------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_env_superglobal_has_the_execution_environment(rt: frankenpy.Runtime) -> None:
    result = run(rt, """
        echo json_encode([$_ENV["FROM_RUNTIME"] ?? null, $_ENV["FROM_CALL"] ?? null,
                          $_ENV["PATH"] ?? null, getenv("FROM_CALL")], JSON_UNESCAPED_SLASHES);
    """, env={"FROM_CALL": "call"})
    assert result.output.decode() == f'["rt","call",{json_str(os.environ["PATH"])},"call"]'
    # The next execution does not see the previous one's variables.
    assert run(rt, 'var_dump(isset($_ENV["FROM_CALL"]), $_ENV["FROM_RUNTIME"]);').output == \
        b'bool(false)\nstring(2) "rt"\n'


def json_str(text: str) -> str:
    import json

    return json.dumps(text)


@pytest.mark.timeout(30)
def test_getenv_without_arguments_has_the_execution_environment(rt: frankenpy.Runtime) -> None:
    code = 'var_dump(getenv()["FROM_CALL"] ?? null, isset(getenv()["PATH"]));'
    assert run(rt, code, env={"FROM_CALL": "x"}).output == b'string(1) "x"\nbool(true)\n'


@pytest.mark.timeout(30)
def test_register_argc_argv_off_is_honoured(make_runtime: MakeRuntime) -> None:
    code = 'var_dump(isset($argv), isset($_SERVER["argv"]));'
    assert run(make_runtime(num_threads=1), code).output == b"bool(true)\nbool(true)\n"
    off = make_runtime(num_threads=1, php_ini={"register_argc_argv": "Off"})
    assert run(off, code).output == php_cli(code, "-d", "register_argc_argv=Off").stdout
    assert run(off, code).output == b"bool(false)\nbool(false)\n"


@pytest.mark.timeout(30)
def test_env_superglobal_follows_variables_order(make_runtime: MakeRuntime) -> None:
    rt = make_runtime(num_threads=1, php_ini={"variables_order": "GPCS"})
    assert run(rt, 'var_dump($_ENV);', env={"FROM_CALL": "x"}).output == b"array(0) {\n}\n"


# --- defect 18: "#!" lines -------------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_shebang_line_is_skipped(rt: frankenpy.Runtime, tmp_path: Path) -> None:
    included = tmp_path / "included.php"
    included.write_text("#!/usr/bin/env php\n<?php echo 'included|';\n")
    script = tmp_path / "script.php"
    script.write_text(f"#!/usr/bin/env php\n<?php include {str(included)!r}; echo 'main|', __LINE__;\n")
    result = rt.execute_file(script)
    assert result.output == b"included|main|2"  # line numbers still count the "#!" line
    assert rt.execute_code(f"include {str(included)!r};").output == b"included|"
    assert subprocess.run(["php", "-n", str(script)], capture_output=True).stdout == result.output


# --- defect 19: STDIN, STDOUT, STDERR, php://std*, $_SERVER ------------------------------------------------
STREAMS_CODE = """
    ob_start();
    echo "buffered|";
    fwrite(STDOUT, "stdout|");           // past the output buffer, as the CLI writes to fd 1
    ob_end_flush();
    fwrite(STDERR, "to stderr\\n");
    file_put_contents("php://stderr", "again\\n");
    file_put_contents("php://stdout", "php-stdout|");
    echo json_encode([fgets(STDIN), stream_get_contents(STDIN), feof(STDIN),
                      stream_get_contents(fopen("php://stdin", "r"))]);
"""


@pytest.mark.timeout(30)
def test_standard_streams_are_the_executions(rt: frankenpy.Runtime) -> None:
    result = run(rt, STREAMS_CODE, stdin=b"line one\nrest")
    cli = php_cli(textwrap.dedent(STREAMS_CODE), stdin=b"line one\nrest")
    assert result.output == cli.stdout == b'stdout|buffered|php-stdout|["line one\\n","rest",true,""]'
    assert result.stderr == cli.stderr == b"to stderr\nagain\n"
    # Without stdin= STDIN is empty; nothing is left over from the previous execution.
    again = run(rt, 'var_dump(stream_get_contents(STDIN), feof(STDIN));')
    assert again.output == b'string(0) ""\nbool(true)\n' and again.stderr == b""


@pytest.mark.parametrize("stdin", ["text", bytearray(b"x"), memoryview(b"x"), 1])
def test_stdin_must_be_bytes(rt: frankenpy.Runtime, stdin: Any) -> None:
    with pytest.raises(TypeError, match="stdin"):
        rt.execute_code("echo 1;", stdin=stdin)
    with pytest.raises(TypeError, match="stdin"):
        rt.execute_file(__file__, stdin=stdin)


@pytest.mark.timeout(30)
def test_stdin_of_execute_file_and_large_stderr(rt: frankenpy.Runtime, tmp_path: Path) -> None:
    script = tmp_path / "cat.php"
    script.write_text('<?php $in = stream_get_contents(STDIN); echo strlen($in); fwrite(STDERR, $in);')
    data = os.urandom(300_000)
    result = rt.execute_file(script, stdin=data)
    assert result.output == b"300000" and result.stderr == data


HOST_FDS = r"""
import os, sys
import frankenpy
rt = frankenpy.Runtime(num_threads=1)
rt.start()
r = rt.execute_code('''
    file_put_contents("php://stdout", "MARK-php-stdout");
    file_put_contents("php://stderr", "MARK-php-stderr");
    file_put_contents("php://fd/1", "MARK-fd1");
    file_put_contents("php://fd/2", "MARK-fd2");
    fwrite(STDOUT, "MARK-STDOUT"); fwrite(STDERR, "MARK-STDERR");
    echo "|", stream_get_contents(STDIN), "|", file_get_contents("php://stdin"), "|", file_get_contents("php://fd/0");
''')
rt.shutdown()
os.write(2, b"RESULT" + r.output + b"#" + r.stderr)
"""


@pytest.mark.timeout(60)
def test_php_std_streams_never_touch_the_hosts_fds() -> None:
    env = {**os.environ}
    proc = subprocess.run([sys.executable, "-c", HOST_FDS], input=b"HOST-STDIN", capture_output=True,
                          timeout=50, env=env)
    assert proc.returncode == 0, proc.stderr
    assert b"MARK" not in proc.stdout
    assert proc.stderr.count(b"MARK") == 6 and proc.stderr.startswith(b"RESULT"), proc.stderr
    assert b"HOST-STDIN" not in proc.stderr  # PHP read the execution's (empty) stdin
    output, stderr = proc.stderr[len(b"RESULT"):].split(b"#")
    assert output == b"MARK-php-stdoutMARK-fd1MARK-STDOUT|||"
    assert stderr == b"MARK-php-stderrMARK-fd2MARK-STDERR"


@pytest.mark.timeout(30)
def test_http_request_php_stdout_goes_to_the_log_not_the_response(
    rt: frankenpy.Runtime, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "s.php").write_text(
        '<?php file_put_contents("php://stdout", "to-log-1\\n");'
        ' file_put_contents("php://stderr", "to-log-2\\n");'
        ' echo defined("STDOUT") ? "defined" : "body";'
    )
    with caplog.at_level(logging.WARNING, logger="frankenpy.php"):
        status, _, body = wsgi_get(PHPApp(rt, tmp_path), "/s.php")
    assert status.startswith("200") and body == b"body"  # no STDOUT in HTTP requests (as CGI/FPM)
    messages = [r.getMessage() for r in caplog.records]
    assert any("to-log-1" in m for m in messages) and any("to-log-2" in m for m in messages)


@pytest.mark.timeout(30)
def test_background_worker_stderr_goes_to_its_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    script = tmp_path / "bg.php"
    script.write_text(
        '<?php fwrite(STDERR, "worker says hi\\n"); $h = frankenphp_get_worker_handle();'
        ' fwrite(STDERR, "ready\\n"); stream_get_contents($h);'
    )
    with caplog.at_level(logging.INFO, logger="frankenpy.php"):
        worker = frankenpy.Worker("bgerr", script, background=True)
        with frankenpy.Runtime(num_threads=1, workers=[worker]) as rt:
            wait_for(lambda: any("ready" in r.getMessage() for r in caplog.records), 10, "stderr in the log")
            assert rt.workers()[0].state == "ready"
    lines = [r for r in caplog.records if "worker says hi" in r.getMessage()]
    assert lines and getattr(lines[0], "worker", None) == "bgerr"
    assert not any("Undefined constant" in r.getMessage() for r in caplog.records)


@pytest.mark.timeout(30)
def test_server_superglobal_exists_from_the_start(rt: frankenpy.Runtime, tmp_path: Path) -> None:
    code = 'var_dump(array_key_exists("_SERVER", $GLOBALS), $GLOBALS["_SERVER"]["argc"] ?? null);'
    assert run(rt, code).output == php_cli(code).stdout == b"bool(true)\nint(1)\n"
    script = tmp_path / "g.php"
    script.write_text("<?php " + code)
    assert rt.execute_file(script).output == b"bool(true)\nint(1)\n"


@pytest.mark.timeout(60)
def test_gc_threshold_is_reset_for_each_execution(make_runtime: MakeRuntime) -> None:
    rt = make_runtime(num_threads=1, php_ini={"memory_limit": "512M"})
    default = int(run(rt, 'echo gc_status()["threshold"];').output)
    # Collections that free nothing make PHP raise the threshold (zend_gc.c gc_adjust_threshold).
    tuned = run(rt, """
        $keep = [];
        for ($i = 0; $i < 200000; $i++) { $o = new stdClass; $o->self = $o; $keep[] = $o; }
        echo gc_status()["threshold"];
    """)
    assert int(tuned.output) > default
    assert int(run(rt, 'echo gc_status()["threshold"];').output) == default


RESTARTS = r"""
import frankenpy
for precision in (10, 11, 12):  # each runtime takes over the interpreter the last one left
    with frankenpy.Runtime(num_threads=1, php_ini={"precision": precision}) as rt:
        r = rt.execute_code('echo $_ENV["X"], getenv()["X"], file_get_contents("php://stdin"),'
                            ' ini_get("precision"); fwrite(STDERR, "e");', env={"X": "x"}, stdin=b"in")
        print(r.output.decode(), r.stderr.decode())
"""


@pytest.mark.timeout(60)
def test_interpreter_restarted_with_another_ini_keeps_its_streams_and_env() -> None:
    proc = subprocess.run([sys.executable, "-c", RESTARTS], capture_output=True, timeout=50,
                          env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.decode().split("\n")[:3] == ["xxin10 e", "xxin11 e", "xxin12 e"]
