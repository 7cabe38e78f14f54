"""The admin API (frankenpy.admin) over real HTTP on 127.0.0.1 only.

The refusal to listen on a wildcard address without a token is checked at start-up, before
anything binds: no test ever binds a non-loopback address.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_for

import frankenpy
from frankenpy import cli
from frankenpy.admin import RESTARTED, AdminServer, check_address
from frankenpy.http.app import PHPApp
from frankenpy.http.server import Server, Site

HTTP_WORKER = """<?php
while (frankenphp_handle_request(function () {
    usleep((int) ($_GET['ms'] ?? 0) * 1000);
    echo 'ok';
})) {
}
"""

BACKGROUND = """<?php
$handle = frankenphp_get_worker_handle();
while (true) {
    $read = [$handle]; $write = $except = [];
    if (stream_select($read, $write, $except, 1) > 0 && fread($handle, 1) === '') {
        break;
    }
}
"""

THREAD_KEYS = {
    "Index", "Name", "State", "IsWaiting", "IsBusy", "WaitingSinceMilliseconds", "CurrentURI",
    "CurrentMethod", "RequestStartedAt", "RequestCount", "MemoryUsage",
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("admin")
    root = base / "public"
    root.mkdir()
    (root / "app.php").write_text(HTTP_WORKER)
    (root / "slow.php").write_text("<?php usleep((int) $_GET['ms'] * 1000); echo 'slow';\n")
    (base / "bg.php").write_text(BACKGROUND)
    rt = frankenpy.Runtime(num_threads=2, workers=[
        frankenpy.Worker("app", root / "app.php", num=1),
        frankenpy.Worker("bg", base / "bg.php", background=True),
    ])
    rt.start()
    server = Server(rt, [Site("127.0.0.1", 0, PHPApp(rt, root))])
    server.start()
    admin = AdminServer(rt, "127.0.0.1:0").start()
    try:
        yield {"rt": rt, "port": server.ports[0], "admin": admin.port, "root": root}
    finally:
        admin.stop()
        server.stop(grace=5.0)


def call(port: int, method: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


@pytest.mark.timeout(60)
def test_restart_endpoint(stack: dict[str, Any]) -> None:
    rt = stack["rt"]
    before = {s.name: s.restarts for s in rt.workers()}
    status, headers, body = call(stack["admin"], "POST", "/frankenphp/workers/restart")
    assert (status, body) == (200, RESTARTED)
    assert body == b"workers restarted successfully\n"
    assert headers["Content-Type"].startswith("text/plain")
    after = {s.name: s.restarts for s in rt.workers()}
    assert all(after[name] > before[name] for name in before), (before, after)
    for method in ("GET", "PUT", "DELETE"):
        status, headers, _ = call(stack["admin"], method, "/frankenphp/workers/restart")
        assert status == 405 and headers["Allow"] == "POST"
    assert call(stack["admin"], "GET", "/nope")[0] == 404


@pytest.mark.timeout(60)
def test_threads_endpoint_shape_and_a_busy_request(stack: dict[str, Any]) -> None:
    port, rt = stack["port"], stack["rt"]
    results: list[int] = []
    slow = threading.Thread(target=lambda: results.append(call(port, "GET", "/app.php?ms=3000")[0]))
    slow_classic = threading.Thread(target=lambda: results.append(call(port, "GET", "/slow.php?ms=3000")[0]))
    slow.start()
    slow_classic.start()
    try:
        def busy_states() -> list[dict[str, Any]] | None:
            data = json.loads(call(stack["admin"], "GET", "/frankenphp/threads")[2])
            busy = [t for t in data["ThreadDebugStates"] if t["CurrentURI"]]
            return data if len(busy) == 2 else None

        data = wait_for(busy_states, timeout=10, what="both slow requests in the thread list")
    finally:
        slow.join()
        slow_classic.join()
    assert results == [200, 200]
    assert set(data) == {"ThreadDebugStates", "ReservedThreadCount"}
    assert isinstance(data["ReservedThreadCount"], int)
    states = data["ThreadDebugStates"]
    assert [t["Index"] for t in states] == list(range(rt.total_threads))
    for state in states:
        assert set(state) == THREAD_KEYS
    names = [t["Name"] for t in states]
    assert names.count("Regular PHP Thread") == 2
    assert f"Worker PHP Thread - {stack['root'] / 'app.php'}" in names
    by_uri = {t["CurrentURI"]: t for t in states if t["CurrentURI"]}
    assert set(by_uri) == {"/app.php?ms=3000", "/slow.php?ms=3000"}
    now_ms = time.time() * 1000
    for state in by_uri.values():
        assert state["IsBusy"] and not state["IsWaiting"] and state["CurrentMethod"] == "GET"
        assert now_ms - 30_000 < state["RequestStartedAt"] <= now_ms
    worker = by_uri["/app.php?ms=3000"]
    assert worker["Name"].startswith("Worker PHP Thread - ") and worker["State"] == "ready"
    # Once the requests are over, the threads wait again.
    data = json.loads(call(stack["admin"], "GET", "/frankenphp/threads")[2])
    waiting = [t for t in data["ThreadDebugStates"] if t["IsWaiting"]]
    assert len(waiting) >= 3  # two regular threads and the HTTP worker's
    assert all(not t["IsBusy"] and t["WaitingSinceMilliseconds"] >= 0 for t in waiting)
    # PHP's own accounting as the last request ended (a few hundred KiB for these scripts).
    by_name = {t["Name"]: t for t in data["ThreadDebugStates"]}
    assert 64 << 10 < by_name[f"Worker PHP Thread - {stack['root'] / 'app.php'}"]["MemoryUsage"] < 64 << 20
    assert any(64 << 10 < t["MemoryUsage"] < 64 << 20 for t in waiting if t["Name"] == "Regular PHP Thread")


def test_workers_endpoint(stack: dict[str, Any]) -> None:
    status, headers, body = call(stack["admin"], "GET", "/frankenphp/workers")
    assert status == 200 and headers["Content-Type"] == "application/json"
    workers = {w["name"]: w for w in json.loads(body)}
    assert set(workers) == {"app", "bg"}
    assert workers["bg"]["background"] is True
    assert workers["app"]["state"] in ("ready", "restarting", "booting")
    assert set(workers["app"]) >= {"state", "restarts", "crashes", "requests", "last_error", "metric_name"}


def test_worker_request_time_metric(stack: dict[str, Any]) -> None:
    assert call(stack["port"], "GET", "/app.php?ms=50")[2] == b"ok"
    lines = [line for line in stack["rt"].metrics_text().splitlines()
             if line.startswith('frankenphp_worker_request_time{worker="app"}')]
    assert len(lines) == 1
    assert float(lines[0].split()[-1]) >= 0.05


def test_token_required_when_set(stack: dict[str, Any]) -> None:
    admin = AdminServer(stack["rt"], "127.0.0.1:0", token="s3cret-token").start()
    try:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-token"}):
            status, response_headers, _ = call(admin.port, "GET", "/frankenphp/workers", headers)
            assert status == 401, headers
            assert response_headers["WWW-Authenticate"].startswith("Bearer")
        assert call(admin.port, "POST", "/frankenphp/workers/restart")[0] == 401
        good = {"Authorization": "Bearer s3cret-token"}
        assert call(admin.port, "GET", "/frankenphp/workers", good)[0] == 200
    finally:
        admin.stop()


@pytest.mark.parametrize("address", ["0.0.0.0:2019", "[::]:2019", "10.1.2.3:2019", "example.org:2019"])
def test_non_loopback_without_token_refuses_to_start(stack: dict[str, Any], address: str) -> None:
    with pytest.raises(ValueError, match=r"not a loopback address.*admin_token"):
        check_address(address, None)
    with pytest.raises(ValueError, match="admin_token"):
        AdminServer(stack["rt"], address)  # refused before anything binds
    assert check_address(address, "tok")  # allowed with a token (not bound here)
    assert check_address("127.0.0.1:2019", None) == ("127.0.0.1", 2019)
    assert check_address("[::1]:2019", None) == ("::1", 2019)


def test_cli_refuses_a_wildcard_admin_without_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FRANKENPY_ADMIN_TOKEN", raising=False)
    root = str(tmp_path)
    code = cli.main(["php-server", "--root", root, "--listen", "127.0.0.1:0", "--admin", "0.0.0.0:2019"])
    assert code == 2
    err = capsys.readouterr().err
    assert "not a loopback address" in err and "admin_token" in err
    args = cli.build_parser().parse_args(["php-server", "--root", str(tmp_path), "--admin"])
    assert cli.apply_service_options(cli.php_server_config(args), args).admin == "127.0.0.1:2019"
