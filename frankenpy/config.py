"""The TOML configuration: servers and workers declared the way a Caddyfile declares them.

```toml
[runtime]                       # optional: the PHP threads shared by every server
server = "native"               # the HTTP server: "native" (default, h2o in C) or "wsgi" (waitress)
num_threads = 4
php_ini = { memory_limit = "128M" }
extensions = ["ctype", "mbstring"]
opcache = true

[[server]]                      # one php_server block: its own worker scope
listen = "127.0.0.1:8080"
root = "public"                 # relative to this file
label = "api.example.com"       # scope label in metrics (default: the listen address)
follow_symlinks = false         # 403 for symlinks out of root (default: true, followed)
tls_cert = "tls/fullchain.pem"  # HTTPS, HTTP/2 by ALPN (native server only): PEM chain ...
tls_key = "tls/privkey.pem"     # ... and its PEM private key; both relative to this file

[[server.worker]]
name = "mailer"
file = "bg/mailer.php"
background = true
num = 2                         # 0: started lazily, on first use
max_queued_tasks = 1024         # tasks waiting for it (default 1024)

[[server.worker]]               # no name: a catch-all, one instance per name asked for
file = "bg/jobs.php"
background = true
max_workers = 16                # names it serves at most (default 16)
```

:func:`load` validates everything and raises :class:`ConfigError` with one line naming the
file, the table and the key at fault.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .scopes import next_scope, set_scope_label

if TYPE_CHECKING:  # (imported where used: parsing needs no PHP; the pytest plugin parses at start-up)
    from .workers import Worker

DEFAULT_LISTEN = "127.0.0.1:8080"
HTTP_SERVERS = ("native", "wsgi")  # frankenpy.http.native.NativeServer, frankenpy.http.server.Server
IO_MODELS = ("handoff", "per-thread")  # the native server's (frankenpy.http.native.IO_MODELS)


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names file, table and key."""


TLS_NEEDS_NATIVE = ("TLS (tls_cert/tls_key, --tls-cert/--tls-key) needs the native server: waitress "
                    "(server \"wsgi\") serves plain HTTP only")


def check_tls(cert: Path | None, key: Path | None, names: tuple[str, str]) -> None:
    """ConfigError unless ``cert``/``key`` make a TLS identity the native server can load (a
    missing, unreadable or mismatched file is named); ``names``: the options, for the message."""
    from .http.native import check_tls as check

    try:
        check(None if cert is None else str(cert), None if key is None else str(key))
    except ValueError as exc:
        message = str(exc)
        for option, name in zip(("tls_cert", "tls_key"), names, strict=True):
            if message.startswith(option):
                message = name + message[len(option):]
        raise ConfigError(message) from None


@dataclass
class ServerConfig:
    """One ``[[server]]`` block."""

    listen: str
    root: Path
    scope: int
    label: str
    env: dict[str, str] = field(default_factory=dict)
    max_body_size: int = 8 * 1024 * 1024
    max_wait_time: float = 30.0
    metrics: bool = False
    follow_symlinks: bool = True
    workers: list[Worker] = field(default_factory=list)
    tls_cert: Path | None = None  # with tls_key: HTTPS (HTTP/2 and HTTP/1.1 by ALPN)
    tls_key: Path | None = None


@dataclass
class Config:
    """A whole configuration: the runtime options and the servers.

    ``watch`` (patterns relative to ``base``), ``admin`` and ``admin_token`` belong to the
    process around the runtime (frankenpy.watch, frankenpy.admin), not to the Runtime."""

    source: str
    runtime: dict[str, Any]
    servers: list[ServerConfig]
    http_server: str = "native"  # one of HTTP_SERVERS
    io_model: str = "handoff"  # one of IO_MODELS (the native server's)
    base: Path = field(default_factory=Path.cwd)
    watch: list[str] = field(default_factory=list)
    admin: str | None = None
    admin_token: str | None = None

    @property
    def workers(self) -> list[Worker]:
        return [worker for server in self.servers for worker in server.workers]


def parse_listen(value: str) -> tuple[str, int]:
    """``"127.0.0.1:8080"`` -> ``("127.0.0.1", 8080)``; ``"[::1]:80"`` too.  ValueError."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"listen address must be HOST:PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


class _Table:
    """Typed access to one TOML table, with errors that say where."""

    def __init__(self, source: str, where: str, data: Any, known: set[str]) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: {where}: must be a table")
        self.source, self.where, self.data = source, where, data
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: {where}: unknown key {unknown[0]!r}")

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {self.where}: key {key!r}: {message}")

    def get(
        self, key: str, kind: type | tuple[type, ...], default: Any = None, *, required: bool = False
    ) -> Any:
        if key not in self.data:
            if required:
                raise ConfigError(f"{self.source}: {self.where}: missing key {key!r}")
            return default
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # TOML booleans are Python ints: accept them only where a boolean is asked for.
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise self.error(key, f"must be {_kind_name(kinds)}, got {value!r}")
        return value

    def string_map(self, key: str) -> dict[str, str]:
        value = self.get(key, dict, {})
        for name, item in value.items():
            if not isinstance(item, str | int | float | bool):
                raise self.error(key, f"value of {name!r} must be a string or number")
        return {name: str(item) for name, item in value.items()}

    def checked(self, key: str, build: Callable[[], Any]) -> Any:
        try:
            return build()
        except (ValueError, TypeError) as exc:
            raise self.error(key, str(exc)) from None


def _kind_name(kinds: tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
             dict: "a table", list: "an array"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


_RUNTIME_KEYS = {
    "num_threads", "php_ini", "extensions", "opcache", "start_timeout", "env", "watch", "admin",
    "admin_token", "max_threads", "max_idle_time", "server", "io_model",
}
_SERVER_KEYS = {
    "listen", "root", "label", "env", "max_body_size", "max_wait_time", "metrics", "follow_symlinks",
    "worker", "tls_cert", "tls_key",
}
_WORKER_KEYS = {
    "name", "file", "num", "background", "env", "max_consecutive_failures", "match", "max_requests",
    "watch", "max_threads", "max_workers", "max_queued_tasks",
}


def load(path: str | Path) -> Config:
    """Read and validate a TOML configuration file (see the module docstring)."""
    path = Path(path)
    source = str(path)
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))  # TOML is UTF-8, whatever the locale
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not UTF-8 (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from None
    return parse(data, source=source, base=path.absolute().parent)


def parse(data: Mapping[str, Any], *, source: str = "<config>", base: Path | None = None) -> Config:
    """Validate an already parsed configuration; relative paths are taken from ``base``."""
    base = base or Path.cwd()
    top = _Table(source, "top level", dict(data), {"runtime", "server"})
    runtime_table = _Table(source, "[runtime]", top.get("runtime", dict, {}), _RUNTIME_KEYS)
    runtime = _parse_runtime(runtime_table)
    http_server = runtime_table.get("server", str, "native")
    if http_server not in HTTP_SERVERS:
        raise runtime_table.error("server", f"must be one of {', '.join(HTTP_SERVERS)}, not {http_server!r}")
    io_model = runtime_table.get("io_model", str, "handoff")
    if io_model not in IO_MODELS:
        raise runtime_table.error("io_model", f"must be one of {', '.join(IO_MODELS)}, not {io_model!r}")
    watch = _patterns(runtime_table, "watch")
    admin = runtime_table.get("admin", str)
    if admin is not None:
        runtime_table.checked("admin", lambda: parse_listen(admin))
    admin_token = runtime_table.get("admin_token", str)
    servers_data = top.get("server", list, [])
    if not servers_data:
        raise ConfigError(f"{source}: top level: at least one [[server]] table is required")
    servers = []
    for index, item in enumerate(servers_data, 1):
        servers.append(_parse_server(source, base, index, item, watch))
    seen: dict[tuple[str, int], str] = {}
    for server in servers:
        address = parse_listen(server.listen)
        if address in seen:
            raise ConfigError(
                f"{source}: [[server]]: key 'listen': {server.listen!r} is the same address as "
                f"{seen[address]!r}"
            )
        seen[address] = server.listen
    if http_server == "wsgi" and any(server.tls_cert for server in servers):
        raise runtime_table.error("server", TLS_NEEDS_NATIVE)
    return Config(source, runtime, servers, http_server=http_server, io_model=io_model, base=base,
                  watch=watch, admin=admin, admin_token=admin_token)


def _patterns(table: _Table, key: str) -> list[str]:
    """A list of watch patterns (globs relative to the configuration file)."""
    value = table.get(key, list, [])
    if not all(isinstance(item, str) and item.strip() for item in value):
        raise table.error(key, "must be an array of non-empty strings (glob patterns)")
    return list(value)


def _parse_runtime(table: _Table) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if "num_threads" in table.data:
        options["num_threads"] = table.get("num_threads", int)
        if options["num_threads"] < 1:
            raise table.error("num_threads", "must be >= 1")
    if "php_ini" in table.data:
        options["php_ini"] = table.string_map("php_ini")
    if "extensions" in table.data:
        extensions = table.get("extensions", list)
        if not all(isinstance(e, str) for e in extensions):
            raise table.error("extensions", "must be an array of strings")
        options["extensions"] = extensions
    if "opcache" in table.data:
        options["opcache"] = table.get("opcache", bool)
    if "start_timeout" in table.data:
        options["start_timeout"] = float(table.get("start_timeout", (int, float)))
    if "env" in table.data:
        options["env"] = table.string_map("env")
    if "max_threads" in table.data:
        value = table.get("max_threads", (int, str))
        if isinstance(value, str) and value != "auto":
            raise table.error("max_threads", f"must be an integer or \"auto\", got {value!r}")
        if isinstance(value, int) and value < options.get("num_threads", 1):
            raise table.error("max_threads", "must be >= num_threads")
        options["max_threads"] = value
    if "max_idle_time" in table.data:
        options["max_idle_time"] = float(table.get("max_idle_time", (int, float)))
        if options["max_idle_time"] <= 0:
            raise table.error("max_idle_time", "must be > 0 (seconds)")
    return options


def _parse_server(source: str, base: Path, index: int, data: Any, watch: list[str]) -> ServerConfig:
    """One [[server]] block; its workers' ``watch`` patterns are added to ``watch``."""
    table = _Table(source, f"[[server]] #{index}", data, _SERVER_KEYS)
    listen = table.get("listen", str, DEFAULT_LISTEN)
    table.checked("listen", lambda: parse_listen(listen))
    root = base / table.get("root", str, ".")
    if not root.is_dir():
        raise table.error("root", f"document root not found: {root}")
    scope = next_scope()
    label = table.get("label", str, listen)
    set_scope_label(scope, label)
    server = ServerConfig(
        listen=listen,
        root=root,
        scope=scope,
        label=label,
        env=table.string_map("env"),
        max_body_size=table.get("max_body_size", int, 8 * 1024 * 1024),
        max_wait_time=float(table.get("max_wait_time", (int, float), 30.0)),
        metrics=table.get("metrics", bool, False),
        follow_symlinks=table.get("follow_symlinks", bool, True),
    )
    tls = [table.get(key, str) for key in ("tls_cert", "tls_key")]
    server.tls_cert, server.tls_key = (base / value if value is not None else None for value in tls)
    try:
        check_tls(server.tls_cert, server.tls_key, ("tls_cert", "tls_key"))
    except ConfigError as exc:
        raise ConfigError(f"{source}: {table.where}: {exc}") from None
    for number, item in enumerate(table.get("worker", list, []), 1):
        wtable = _Table(source, f"[[server]] #{index} [[server.worker]] #{number}", item, _WORKER_KEYS)
        # A change restarts every worker (FrankenPHP's watch): the patterns join the global list.
        watch.extend(p for p in _patterns(wtable, "watch") if p not in watch)
        file = base / wtable.get("file", str, required=True)
        background = wtable.get("background", bool, False)
        from .workers import Worker

        worker = Worker(
            # a background worker without a name is a catch-all; an HTTP worker is named after its file
            name=wtable.get("name", str, None if background else file.stem),
            file=file,
            num=wtable.get("num", int, 1),
            background=background,
            env=wtable.string_map("env"),
            scope=scope,
            max_consecutive_failures=wtable.get("max_consecutive_failures", int, 6),
            match=wtable.get("match", str),
            max_requests=wtable.get("max_requests", int, 0),
            max_threads=wtable.get("max_threads", int, 0),
            max_workers=wtable.get("max_workers", int, 16),
            max_queued_tasks=wtable.get("max_queued_tasks", int, 1024),
        )
        try:
            worker.validate()
        except (ValueError, FileNotFoundError) as exc:
            raise ConfigError(f"{source}: {wtable.where}: {exc}") from None
        if any(other.name == worker.name for other in server.workers):
            if worker.catch_all:
                raise ConfigError(f"{source}: {wtable.where}: this server already has a catch-all "
                                  "background worker (one without a name)")
            raise wtable.error("name", f"{worker.name!r} is already a worker of this server")
        server.workers.append(worker)
    return server
