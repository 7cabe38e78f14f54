"""The ``frankenpy`` command (also ``python -m frankenpy``).

* ``frankenpy`` with no arguments serves the bundled demo (frankenpy/demo/frankenpy.toml);
* ``frankenpy run --config FILE`` serves the servers and workers of a TOML file
  (:mod:`frankenpy.config`);
* ``frankenpy php-server --root DIR --listen HOST:PORT [--worker FILE[:NUM]]
  [--background-worker NAME=FILE[:NUM]] [--php-ini KEY=VALUE] [--tls-cert PEM --tls-key PEM]
  ...`` serves one directory, like FrankenPHP's ``php-server`` (``NUM`` 0 starts the background
  worker lazily; with a certificate: HTTPS, HTTP/2 by ALPN).

Each runs until SIGTERM or SIGINT, then stops gracefully: in-flight requests finish, workers
are drained.  The HTTP server is the native one (:mod:`frankenpy.http.native`) unless
``--server wsgi`` (or ``server = "wsgi"`` in the TOML's ``[runtime]``) picks waitress;
``--io-model per-thread`` (``io_model``) has the native server run to completion on each PHP thread.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from .config import (
    HTTP_SERVERS,
    IO_MODELS,
    TLS_NEEDS_NATIVE,
    Config,
    ConfigError,
    ServerConfig,
    check_tls,
    load,
    parse_listen,
)
from .scopes import GLOBAL_SCOPE
from .watch import DEFAULT_PATTERN
from .workers import Worker

DEMO_CONFIG = Path(__file__).resolve().parent / "demo" / "frankenpy.toml"


class _WorkerNameFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "worker"):
            record.worker = "-"
        return True


def _configure_logging(level: str, access_log: bool) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(_WorkerNameFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])
    if not access_log:  # a line per request costs ~10 % of throughput: opt in, as in Caddy
        logging.getLogger("frankenpy.access").setLevel(logging.WARNING)


def _split_count(value: str, option: str) -> tuple[str, int]:
    path, sep, num = value.rpartition(":")
    if sep and num.isdigit():
        return path, int(num)
    if sep and not num.isdigit() and not Path(value).exists():
        raise ConfigError(f"{option} {value!r}: NUM after ':' must be a whole number")
    return value, 1


def php_server_config(args: argparse.Namespace) -> Config:
    """The configuration that ``php-server``'s options describe."""
    root = Path(args.root).absolute()
    if not root.is_dir():
        raise ConfigError(f"--root {args.root!r}: not a directory")
    try:
        parse_listen(args.listen)
    except ValueError as exc:
        raise ConfigError(f"--listen: {exc}") from None
    workers = []
    for value in args.worker:
        file, num = _split_count(value, "--worker")
        path = Path(file).absolute()
        workers.append(Worker(path.stem, path, num=num))
    for value in args.background_worker:
        name, sep, rest = value.partition("=")
        if not sep or not name:
            raise ConfigError(f"--background-worker {value!r}: expected NAME=FILE[:NUM]")
        file, num = _split_count(rest, "--background-worker")
        workers.append(Worker(name, Path(file).absolute(), num=num, background=True))
    for worker in workers:
        try:
            worker.validate()
        except (ValueError, FileNotFoundError) as exc:
            raise ConfigError(f"php-server: {exc}") from None
    php_ini = {}
    for setting in args.php_ini:
        key, sep, value = setting.partition("=")
        if not sep or not key:
            raise ConfigError(f"--php-ini {setting!r}: expected KEY=VALUE")
        php_ini[key] = value
    runtime: dict[str, object] = {"php_ini": php_ini, "extensions": args.extension, "opcache": args.opcache}
    if args.threads:
        runtime["num_threads"] = args.threads
    server = ServerConfig(listen=args.listen, root=root, scope=GLOBAL_SCOPE, label="",
                          metrics=args.metrics, follow_symlinks=args.follow_symlinks, workers=workers)
    if args.tls_cert is not None or args.tls_key is not None:
        server.tls_cert, server.tls_key = (Path(p).absolute() if p else None
                                           for p in (args.tls_cert, args.tls_key))
        check_tls(server.tls_cert, server.tls_key, ("--tls-cert", "--tls-key"))
    return Config("php-server", runtime, [server], base=root)


def apply_service_options(config: Config, args: argparse.Namespace) -> Config:
    """Command-line options that add to (or override) the configuration: --watch, --admin."""
    if args.max_threads is not None:
        config.runtime["max_threads"] = args.max_threads
    if args.max_idle_time is not None:
        config.runtime["max_idle_time"] = args.max_idle_time
    if args.watch:
        config.watch.extend(p for p in args.watch if p not in config.watch)
    if args.admin:
        config.admin = args.admin
    token = os.environ.get("FRANKENPY_ADMIN_TOKEN")
    if token:
        config.admin_token = token
    if config.admin is not None:
        from .admin import check_address

        try:
            check_address(config.admin, config.admin_token)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    return config


def serve(config: Config, grace: float, *, access_log: bool = False) -> None:
    """Start the runtime and every server of ``config``; serve until SIGTERM/SIGINT, then stop
    gracefully.  A signal during start-up is honoured as soon as the runtime has started."""
    from .http.app import PHPApp
    from .http.native import NativeServer
    from .http.server import Server, Site, StopSignals
    from .runtime import Runtime

    if config.http_server == "wsgi" and any(server.tls_cert for server in config.servers):
        raise ConfigError(TLS_NEEDS_NATIVE)
    with StopSignals() as stop:
        runtime = Runtime(**config.runtime, workers=config.workers)  # type: ignore[arg-type]
        runtime.start()
        http: Server | NativeServer | None = None
        services: list[Any] = []  # the watcher and the admin server, stopped before the runtime
        try:
            if not stop.event.is_set():
                sites = []
                for server in config.servers:
                    host, port = parse_listen(server.listen)
                    app = PHPApp(runtime, server.root, scope=server.scope, env=server.env,
                                 max_body_size=server.max_body_size, max_wait_time=server.max_wait_time,
                                 follow_symlinks=server.follow_symlinks)
                    tls = [str(path) if path else None for path in (server.tls_cert, server.tls_key)]
                    sites.append(Site(host, port, app, metrics=server.metrics,
                                      max_body_size=server.max_body_size, tls_cert=tls[0], tls_key=tls[1]))
                if config.http_server == "wsgi":
                    http = Server(runtime, sites)
                else:
                    http = NativeServer(runtime, sites, access_log=access_log, io_model=config.io_model)
                http.start()
                if config.watch:
                    from .watch import watch_workers

                    services.append(watch_workers(runtime, config.watch, config.base))
                if config.admin is not None:
                    from .admin import AdminServer

                    services.append(AdminServer(runtime, config.admin, config.admin_token).start())
                stop.wait()
        finally:
            for service in reversed(services):
                service.stop()
            if http is not None:
                http.stop(grace)  # then shuts the runtime down
            else:
                runtime.shutdown(grace)


def _max_threads(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {value!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="frankenpy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--access-log", action="store_true", help="log every request (frankenpy.access)")
    parser.add_argument("--grace", type=float, default=30.0, help="seconds to drain on stop (default 30)")
    server_choice = argparse.ArgumentParser(add_help=False)
    server_choice.add_argument(
        "--server", choices=HTTP_SERVERS, default=argparse.SUPPRESS,
        help="HTTP server: native (h2o in C, the default) or wsgi (waitress); overrides the config",
    )
    server_choice.add_argument(
        "--io-model", choices=IO_MODELS, default=argparse.SUPPRESS,
        help="native server: handoff (loop threads hand requests to PHP threads, the default) or "
        "per-thread (each PHP thread parses and runs its own connections' requests); overrides the config",
    )
    parser.add_argument("--server", choices=HTTP_SERVERS, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--io-model", choices=IO_MODELS, default=None, help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command")
    service = argparse.ArgumentParser(add_help=False)
    service.add_argument(
        "--watch", action="append", nargs="?", const=DEFAULT_PATTERN, default=[], metavar="PATTERN",
        help=f"restart the workers when a matching file changes (repeatable; bare: {DEFAULT_PATTERN!r}, "
        "relative to the config file or the root)",
    )
    service.add_argument(
        "--admin", nargs="?", const="127.0.0.1:2019", metavar="ADDR",
        help="serve the admin API (/frankenphp/...) on ADDR (bare: 127.0.0.1:2019; a non-loopback "
        "address needs FRANKENPY_ADMIN_TOKEN)",
    )
    service.add_argument(
        "--max-threads", type=_max_threads, metavar="N|auto",
        help="let regular PHP threads grow to N under load (auto: memory / memory_limit)",
    )
    service.add_argument(
        "--max-idle-time", type=float, metavar="SECONDS",
        help="stop autoscaled PHP threads idle this long (default 5)",
    )
    run = commands.add_parser(
        "run", parents=[service, server_choice], help="serve the servers and workers of a TOML configuration"
    )
    run.add_argument("--config", required=True, help="TOML file (see frankenpy.config)")
    php = commands.add_parser("php-server", parents=[service, server_choice],
                              help="serve a directory with PHP")
    php.add_argument("--root", default=".", help="document root (default: .)")
    php.add_argument("--listen", default="127.0.0.1:8080", help="HOST:PORT (default 127.0.0.1:8080)")
    php.add_argument("--worker", action="append", default=[], metavar="FILE[:NUM]", help="HTTP worker")
    php.add_argument("--background-worker", action="append", default=[], metavar="NAME=FILE[:NUM]",
                     help="background worker (NUM 0: started lazily, on first use)")
    php.add_argument("--php-ini", action="append", default=[], metavar="KEY=VALUE")
    php.add_argument("--extension", action="append", default=[], metavar="NAME", help="Debian PHP extension")
    php.add_argument("--opcache", action="store_true", help="enable opcache in each PHP thread")
    php.add_argument("--threads", type=int, default=0, help="regular PHP threads (default 2)")
    php.add_argument("--metrics", action="store_true", help="serve Prometheus metrics at /metrics")
    php.add_argument("--tls-cert", metavar="PEM", help="serve HTTPS (HTTP/2 and HTTP/1.1) with this "
                     "certificate chain (native server only; needs --tls-key)")
    php.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")
    php.add_argument("--no-follow-symlinks", dest="follow_symlinks", action="store_false",
                     help="refuse (403) symlinks whose target is outside the root (for untrusted uploads)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.log_level, args.access_log)
    try:
        if args.command == "php-server":
            config = php_server_config(args)
        else:
            config = load(args.config if args.command == "run" else DEMO_CONFIG)
        if args.command is not None:
            config = apply_service_options(config, args)
        if args.server:
            config.http_server = args.server
        if args.io_model:
            config.io_model = args.io_model
        serve(config, args.grace, access_log=args.access_log)
    except ConfigError as exc:
        print(f"frankenpy: {exc}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"frankenpy: {exc}", file=sys.stderr)
        return 1
    return 0
