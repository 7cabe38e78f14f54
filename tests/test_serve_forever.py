"""``serve_forever`` (shared by both servers through ``ServerBase``): SIGTERM/SIGINT end it
with a graceful stop, and the handlers that were installed before come back."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest
from helpers import wait_for
from test_http import SERVER_KINDS, build_site, fetch, start_server


@pytest.mark.timeout(60)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("server_kind", SERVER_KINDS)
def test_serve_forever_stops_on_a_signal(tmp_path: Path, server_kind: str, signum: int) -> None:
    served = start_server(build_site(tmp_path), server_kind=server_kind)
    before = signal.getsignal(signum)
    try:
        assert fetch(served.port, "GET", "/hello.php").status == 200

        def send_when_installed() -> None:
            wait_for(lambda: signal.getsignal(signum) is not before, what="the stop handler")
            os.kill(os.getpid(), signum)

        sender = threading.Thread(target=send_when_installed)
        sender.start()
        served.server.serve_forever(grace=5.0)  # returns only once stopped
        sender.join(10)
        served.stopped = True
        assert served.runtime.state == "stopped"
        assert signal.getsignal(signum) is before
    finally:
        served.stop(grace=5.0)
