"""FrankenPHP's ``php_server`` routing, static files and CGI variables.

Nothing here needs PHP: this module decides *what* a request is (a PHP script to run, a
static file to send, a redirect or a refusal), serves static files, and builds the CGI/1.1
``$_SERVER`` variables for a PHP execution.

The decisions are made in C, by the router of ``csrc/router.h`` (through ``frankenpy._native``),
which the native HTTP server calls too: the rules exist once.  This module only converts
between WSGI and the router, and does the I/O (opening the file, handing its bytes to WSGI).

Routing follows what FrankenPHP's ``php_server`` (and its ``php-server`` command) expands to::

    redir  {path}/ 308            if {path}/index.php is a file and {path} has no trailing "/"
    rewrite to the first match of try_files {path} {path}/index.php index.php  (split_path .php)
    php    if the (rewritten) path ends in .php
    file_server                   otherwise (index.html / index.txt for directories, else 404)

with these safety rules on top (FrankenPHP leaves them to the file system and Caddy):

* a NUL byte in the path is a 400 (as in FrankenPHP);
* a path segment starting with ``.`` (``.env``, ``.git/``, ``..``, ``.``) is a 403, except
  ``.well-known`` (RFC 8615);
* symlinks are followed, also out of the document root (as Caddy's file_server, nginx and
  apache do), and the hidden rule applies to their targets too: a link onto ``.env`` or into
  ``.git`` is a 403.  With ``follow_symlinks=False`` any link whose target is outside the
  document root is a 403 (for roots that hold untrusted uploads);
* a ``.php`` file is never served as a static file (it is executed or refused), nor are other
  PHP-source suffixes (``.phtml``, ``.phps``, ``.inc``, ...), editor/deploy copies of PHP
  source (``index.php~``, ``config.php.bak``) or a symlink whose target is one of those: all
  are refused (403);
* the path is decoded exactly once (by the WSGI server): ``%2e%2e`` left in ``PATH_INFO`` is
  a literal file name, never a parent reference; backslashes are ordinary characters on
  POSIX file systems and cannot traverse.

Text convention: every path and every CGI value here is a ``str`` whose exact bytes are
``value.encode("utf-8", "surrogateescape")`` (the convention of :func:`os.fsdecode`).  WSGI
gives latin-1 "native strings"; :func:`wsgi_to_text` converts them, :func:`environ_to_bytes`
gives the bytes to hand to PHP.
"""

from __future__ import annotations

import enum
import errno
import os
import stat
import threading
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import IO, Any
from urllib.parse import quote, urlsplit

from .. import _native

__all__ = [
    "DEFAULT_ALLOWED_HIDDEN",
    "DEFAULT_INDEX",
    "DEFAULT_SPLIT_EXTENSIONS",
    "DEFAULT_STATIC_INDEXES",
    "FileChunks",
    "Route",
    "RouteKind",
    "Router",
    "StaticResponse",
    "cgi_environ",
    "environ_to_bytes",
    "resolve",
    "respond",
    "serve_static",
    "simple_response",
    "wsgi_to_text",
]

ffi, lib = _native.ffi, _native.lib

DEFAULT_INDEX = "index.php"
"""The PHP index file tried in a directory and, at the root, as the front controller."""

DEFAULT_SPLIT_EXTENSIONS: tuple[str, ...] = (".php",)
"""A path segment ending in one of these (case-insensitive) is a PHP script; what follows it is
``PATH_INFO`` (FrankenPHP's ``split_path``)."""

DEFAULT_STATIC_INDEXES: tuple[str, ...] = ("index.html", "index.txt")
"""Index files of Caddy's ``file_server``, used for directories when no PHP index matched."""

DEFAULT_ALLOWED_HIDDEN: frozenset[str] = frozenset({".well-known"})
"""Dot-segments that are public anyway (RFC 8615 ``/.well-known/``)."""

CHUNK_SIZE = 64 * 1024


class RouteKind(enum.Enum):
    """What a request resolves to."""

    PHP = "php"
    """Execute :attr:`Route.script_filename` (status 200 until PHP says otherwise)."""
    STATIC = "static"
    """Send the file :attr:`Route.real_path` (see :func:`serve_static`)."""
    REDIRECT = "redirect"
    """308 to :attr:`Route.location` (directory without its trailing slash)."""
    FORBIDDEN = "forbidden"
    """403: hidden file, ``..``, a link out of the root (``follow_symlinks=False``), PHP source
    as static file."""
    NOT_FOUND = "not_found"
    """404: nothing matched and there is no front controller."""
    BAD_REQUEST = "bad_request"
    """400: the path cannot be a file name (NUL byte)."""


_KINDS = {
    lib.FP_ROUTE_PHP: RouteKind.PHP,
    lib.FP_ROUTE_STATIC: RouteKind.STATIC,
    lib.FP_ROUTE_REDIRECT: RouteKind.REDIRECT,
    lib.FP_ROUTE_FORBIDDEN: RouteKind.FORBIDDEN,
    lib.FP_ROUTE_NOT_FOUND: RouteKind.NOT_FOUND,
    lib.FP_ROUTE_BAD_REQUEST: RouteKind.BAD_REQUEST,
}


@dataclass(frozen=True)
class Route:
    """The decision for one request path.

    For ``PHP``: :attr:`script_name` is the URL path of the script (``/index.php``),
    :attr:`path_info` what followed it (``/foo/bar`` for ``/index.php/foo/bar``),
    :attr:`script_filename` is ``document_root + script_name`` (FrankenPHP's
    ``SCRIPT_FILENAME``, symlinks inside the root not resolved) and :attr:`real_path` its
    resolved path.  For ``STATIC``: :attr:`script_name` is the URL path of the file and
    :attr:`real_path` the resolved file to open.  A symlink may lead :attr:`real_path` out of
    the document root (unless ``follow_symlinks=False``).
    """

    kind: RouteKind
    status: int
    document_root: str
    script_name: str = ""
    script_filename: str = ""
    path_info: str = ""
    real_path: str = ""
    location: str = ""
    front_controller: bool = False
    reason: str = ""

    @property
    def php_self(self) -> str:
        """``$_SERVER['PHP_SELF']``: the script's URL path followed by ``PATH_INFO``."""
        return self.script_name + self.path_info

    @property
    def document_uri(self) -> str:
        """``$_SERVER['DOCUMENT_URI']``: the URL path up to and including the script."""
        return self.script_name


# ---------------------------------------------------------------------------------------------
# Text helpers
# ---------------------------------------------------------------------------------------------


def wsgi_to_text(value: str) -> str:
    """Turn a WSGI native string (bytes decoded as latin-1) into this module's convention
    (bytes decoded as UTF-8 with ``surrogateescape``).  A value that is not latin-1
    encodable was already real text and is returned unchanged."""
    try:
        raw = value.encode("latin-1")
    except UnicodeEncodeError:
        return value
    return raw.decode("utf-8", "surrogateescape")


def _text_to_bytes(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")


def _wsgi_to_bytes(value: str) -> bytes:
    """The raw bytes of a WSGI native string (or of real text, as UTF-8)."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return _text_to_bytes(value)


def environ_to_bytes(variables: Mapping[str, str]) -> dict[bytes, bytes]:
    """The exact bytes of :func:`cgi_environ`'s result, as PHP should receive them."""
    return {_text_to_bytes(k): _text_to_bytes(v) for k, v in variables.items()}


# ---------------------------------------------------------------------------------------------
# Routing: csrc/router.c
# ---------------------------------------------------------------------------------------------

_no_clear = ffi.new_allocator(should_clear_after_alloc=False)


def _text(s: Any) -> str:
    return ffi.unpack(s.ptr, s.len).decode("utf-8", "surrogateescape") if s.ptr else ""


class Router:
    """A document root and its routing options, for the C router.

    The document root's symlinks are resolved once, here (as FrankenPHP's
    ``resolve_root_symlink`` does when it starts).  :meth:`resolve` is thread-safe; its
    file-system work (an ``lstat()`` per path segment) runs without the GIL, which cffi
    releases during the call.

    Raises :class:`NotADirectoryError` when ``document_root`` is not a directory and
    :class:`ValueError` for an invalid name (empty, with ``/``, ``.`` or ``..``).
    """

    def __init__(
        self,
        document_root: str | os.PathLike[str],
        *,
        index: str = DEFAULT_INDEX,
        split_extensions: Collection[str] = DEFAULT_SPLIT_EXTENSIONS,
        static_indexes: Collection[str] = DEFAULT_STATIC_INDEXES,
        allowed_hidden: Collection[str] = DEFAULT_ALLOWED_HIDDEN,
        follow_symlinks: bool = True,
    ) -> None:
        keep: list[Any] = []  # the C router keeps pointers to these: they live as long as self

        def c_names(names: Iterable[str]) -> tuple[Any, int]:
            strings = [ffi.new("char[]", _text_to_bytes(n)) for n in names]
            array = ffi.new("char *[]", strings or [ffi.NULL])
            keep.extend((strings, array))
            return array, len(strings)

        options = ffi.new("fp_router_options *")
        index_c = ffi.new("char[]", _text_to_bytes(index))
        keep.append(index_c)
        options.index = index_c
        options.split_extensions, options.n_split_extensions = c_names(split_extensions)
        options.static_indexes, options.n_static_indexes = c_names(static_indexes)
        options.allowed_hidden, options.n_allowed_hidden = c_names(allowed_hidden)
        options.follow_symlinks = 1 if follow_symlinks else 0
        self._router = ffi.new("fp_router *")
        root = os.fspath(document_root)
        rc = lib.fp_router_init(self._router, os.fsencode(root), options)
        if rc in (errno.ENOENT, errno.ENOTDIR):
            raise NotADirectoryError(errno.ENOTDIR, "document root is not a directory", root)
        if rc == errno.EINVAL:
            raise ValueError(
                "invalid routing option: index, static_indexes and allowed_hidden must be file"
                " names, split_extensions must start with '.'"
            )
        if rc:
            raise OSError(rc, os.strerror(rc), root)
        self._keep = keep
        self.follow_symlinks = follow_symlinks
        self.document_root: str = ffi.string(self._router.root).decode("utf-8", "surrogateescape")
        self._local = threading.local()

    def _buffer(self, size: int) -> Any:
        buf = getattr(self._local, "buf", None)
        if buf is None or len(buf) < size:
            buf = self._local.buf = _no_clear("char[]", max(size, 16384))
        return buf

    def resolve(self, path_info_raw: str, query_string: str = "") -> Route:
        """See :func:`resolve`."""
        path = _wsgi_to_bytes(path_info_raw or "/")
        query = _wsgi_to_bytes(query_string) if query_string else b""
        size = lib.fp_route_buffer_size(self._router, len(path), len(query))
        buf = self._buffer(size)
        out = ffi.new("fp_route *")
        rc = lib.fp_route_resolve(self._router, path, len(path), query, len(query), buf, len(buf), out)
        if rc:  # cannot happen with fp_route_buffer_size()'s buffer
            raise OSError(rc, os.strerror(rc), "fp_route_resolve")
        kind = _KINDS[out.kind]
        root = self.document_root
        if kind is RouteKind.PHP:
            return Route(
                kind, out.status, root,
                script_name=_text(out.script_name),
                script_filename=_text(out.script_filename),
                path_info=path[len(path) - out.path_info.len:].decode("utf-8", "surrogateescape")
                if out.path_info.len else "",
                real_path=_text(out.real_path),
                front_controller=bool(out.front_controller),
            )
        if kind is RouteKind.STATIC:
            return Route(kind, out.status, root, script_name=_text(out.script_name),
                         real_path=_text(out.real_path))
        reason = ffi.string(out.reason).decode() if out.reason else ""
        if kind is RouteKind.REDIRECT:
            # A WSGI header value: the query's bytes as the native (latin-1) string they came as.
            location = ffi.unpack(out.location.ptr, out.location.len).decode("latin-1")
            return Route(kind, out.status, root, location=location, reason=reason)
        return Route(kind, out.status, root, reason=reason)


def resolve(
    document_root: str | os.PathLike[str],
    path_info_raw: str,
    *,
    query_string: str = "",
    index: str = DEFAULT_INDEX,
    split_extensions: Collection[str] = DEFAULT_SPLIT_EXTENSIONS,
    static_indexes: Collection[str] = DEFAULT_STATIC_INDEXES,
    allowed_hidden: Collection[str] = DEFAULT_ALLOWED_HIDDEN,
    follow_symlinks: bool = True,
) -> Route:
    """Decide what the request path ``path_info_raw`` maps to under ``document_root``.

    ``path_info_raw`` is WSGI's ``PATH_INFO``: already percent-decoded once by the server,
    as a latin-1 native string (a real-text ``str`` is accepted too).  It is never decoded
    again.  ``query_string`` (WSGI ``QUERY_STRING``) is only used to keep the query on the
    trailing-slash redirect.

    The order is FrankenPHP's ``php_server``: (1) 308 to ``path + "/"`` when ``path/index.php``
    is a file; (2) ``path`` itself, split after the first segment ending in ``.php`` (case
    insensitive) into script and ``PATH_INFO``, when that is a file; (3) ``path/index.php``;
    (4) the front controller ``/index.php``; then, for paths that are not PHP, Caddy's file
    server: the file, or a directory's ``index.html``/``index.txt``; else 404.  Refusals (400,
    403) come first and win over every fallback: ``/.env`` is a 403, never the front controller.

    This builds a :class:`Router` per call (the document root's symlinks are resolved each
    time); a server keeps one :class:`Router` instead.

    Raises :class:`NotADirectoryError` when ``document_root`` is not a directory.
    """
    router = Router(
        document_root, index=index, split_extensions=split_extensions,
        static_indexes=static_indexes, allowed_hidden=allowed_hidden,
        follow_symlinks=follow_symlinks,
    )
    return router.resolve(path_info_raw, query_string)


# ---------------------------------------------------------------------------------------------
# Static files: the decisions in csrc/router.c, the I/O here
# ---------------------------------------------------------------------------------------------


@dataclass
class StaticResponse:
    """A complete WSGI response: ``start_response(r.status_line, r.headers); return r.body``."""

    status: int
    headers: list[tuple[str, str]]
    body: Iterable[bytes]

    @property
    def status_line(self) -> str:
        """``"206 Partial Content"``."""
        try:
            phrase = HTTPStatus(self.status).phrase
        except ValueError:
            phrase = "Unknown"
        return f"{self.status} {phrase}"


class FileChunks:
    """Iterate over ``length`` bytes of an open binary file from ``offset`` in chunks; closes
    the file when exhausted or when the WSGI server calls :meth:`close`."""

    def __init__(self, fileobj: IO[bytes], offset: int, length: int, chunk_size: int = CHUNK_SIZE):
        self._file = fileobj
        self._offset = offset
        self._remaining = length
        self._chunk_size = chunk_size

    def __iter__(self) -> Iterator[bytes]:
        try:
            self._file.seek(self._offset)
            while self._remaining > 0:
                data = self._file.read(min(self._chunk_size, self._remaining))
                if not data:
                    break  # the file shrank: stop short (Content-Length is already sent)
                self._remaining -= len(data)
                yield data
        finally:
            self.close()

    def close(self) -> None:
        self._file.close()


def simple_response(
    status: int, message: str | None = None, headers: Iterable[tuple[str, str]] = ()
) -> StaticResponse:
    """A small ``text/plain`` response (``"404 Not Found\\n"`` by default)."""
    body = (message if message is not None else f"{status} {HTTPStatus(status).phrase}\n").encode()
    hdrs = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))), *headers]
    return StaticResponse(status, hdrs, [body])


_STATIC_HEADERS = (
    ("if_match", "HTTP_IF_MATCH"),
    ("if_unmodified_since", "HTTP_IF_UNMODIFIED_SINCE"),
    ("if_none_match", "HTTP_IF_NONE_MATCH"),
    ("if_modified_since", "HTTP_IF_MODIFIED_SINCE"),
    ("range", "HTTP_RANGE"),
    ("if_range", "HTTP_IF_RANGE"),
)


def _decide(environ: Mapping[str, Any], method: str, st: os.stat_result, name: str) -> Any:
    """fp_static_decide() for the open file ``st`` named ``name``."""
    keep = []
    request = ffi.new("fp_static_request *")

    def put(field: Any, value: str) -> None:
        data = ffi.from_buffer(_wsgi_to_bytes(value))
        keep.append(data)
        field.ptr, field.len = data, len(data)

    put(request.method, method)
    for field, key in _STATIC_HEADERS:
        value = environ.get(key)
        if value is not None:
            put(getattr(request, field), str(value))
    info = ffi.new("fp_file_info *", (st.st_size, *divmod(st.st_mtime_ns, 1_000_000_000)))
    out = ffi.new("fp_static_response *")
    raw_name = os.fsencode(name)
    if lib.fp_static_decide(info, raw_name, len(raw_name), request, out):
        raise ValueError("fp_static_decide: invalid arguments")
    return out


def serve_static(
    environ: Mapping[str, Any], path: str | os.PathLike[str], *, chunk_size: int = CHUNK_SIZE
) -> StaticResponse:
    """Serve the regular file ``path`` for the WSGI request ``environ``.

    GET and HEAD only (405 with ``Allow`` otherwise).  Sends ``Content-Type`` (from the file
    name), ``Content-Length``, ``Last-Modified``, a strong ``ETag`` from mtime and size and
    ``Accept-Ranges: bytes``.  Honours ``If-Match``/``If-Unmodified-Since`` (412),
    ``If-None-Match``/``If-Modified-Since`` (304), ``If-Range`` and a single
    ``Range: bytes=a-b``, ``bytes=a-`` or ``bytes=-n`` (206 with ``Content-Range``; 416 with
    ``Content-Range: bytes */size`` when unsatisfiable; several ranges or a malformed header
    are ignored and the whole file is sent): the decisions of ``fp_static_decide()``
    (csrc/router.h).  A full GET body uses ``wsgi.file_wrapper`` when the server offers it,
    otherwise a :class:`FileChunks` iterator; both close the file.

    The file is opened with ``O_NOFOLLOW``: the caller passes the resolved path
    (:attr:`Route.real_path`), so a symlink appearing there after routing is refused (403).
    """
    method = str(environ.get("REQUEST_METHOD", "GET")).upper()
    if method not in ("GET", "HEAD"):
        return simple_response(405, headers=[("Allow", "GET, HEAD")])
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer (no effect on regular files).
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            return simple_response(404)
        return simple_response(403)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            return simple_response(404)
        fileobj = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    handed_over = False
    try:
        d = _decide(environ, method, st, os.fspath(path))
        etag = ffi.string(d.etag).decode("ascii")
        validators = [("ETag", etag)]
        if d.last_modified[0] != b"\0":
            validators.insert(0, ("Last-Modified", ffi.string(d.last_modified).decode("ascii")))
        if d.status in (405, 412):
            return simple_response(d.status, headers=[("Allow", "GET, HEAD")] if d.status == 405 else [])
        if d.status == 304:
            return StaticResponse(304, validators, [])
        if d.status == 416:
            return StaticResponse(416, [("Content-Range", f"bytes */{d.size}"),
                                        ("Content-Length", "0"), *validators], [])
        headers = [("Content-Type", ffi.string(d.content_type).decode("ascii")),
                   ("Accept-Ranges", "bytes"), *validators, ("Content-Length", str(d.length))]
        if d.status == 206:
            headers.append(("Content-Range", f"bytes {d.offset}-{d.offset + d.length - 1}/{d.size}"))
        if not d.send_body:
            return StaticResponse(d.status, headers, [])
        wrapper = environ.get("wsgi.file_wrapper")
        body: Iterable[bytes]
        if d.status == 200 and wrapper is not None:
            body = wrapper(fileobj, chunk_size)
        else:
            body = FileChunks(fileobj, d.offset, d.length, chunk_size)
        handed_over = True
        return StaticResponse(d.status, headers, body)
    finally:
        if not handed_over:
            fileobj.close()


def respond(route: Route, environ: Mapping[str, Any]) -> StaticResponse:
    """The response for every route that is not ``PHP``: the static file, the 308 redirect
    or the 400/403/404 refusal.  Raises :class:`ValueError` for a ``PHP`` route."""
    if route.kind is RouteKind.PHP:
        raise ValueError("PHP routes are executed, not answered here")
    if route.kind is RouteKind.STATIC:
        return serve_static(environ, route.real_path)
    if route.kind is RouteKind.REDIRECT:
        return simple_response(308, f"Redirecting to {route.location}\n",
                               headers=[("Location", route.location)])
    return simple_response(route.status)


# ---------------------------------------------------------------------------------------------
# CGI variables
# ---------------------------------------------------------------------------------------------


def _split_host(host: str) -> tuple[str, str]:
    """``"example.com:8080"`` -> ``("example.com", "8080")``; ``"[::1]:80"`` -> ``("::1", "80")``."""
    if host.startswith("["):
        end = host.find("]")
        if end != -1:
            rest = host[end + 1:]
            return host[1:end], rest[1:] if rest.startswith(":") else ""
        return host, ""
    if host.count(":") == 1:
        name, port = host.split(":")
        return name, port
    return host, ""


def _quote_path(path: str) -> str:
    return quote(_text_to_bytes(path), safe="/!$&'()*+,;=:@-._~")


def _request_uri(environ: Mapping[str, Any]) -> str:
    raw = environ.get("REQUEST_URI") or environ.get("RAW_URI")
    if raw:
        raw = str(raw)
        if not raw.startswith("/") and "://" in raw:  # absolute-form request target
            parts = urlsplit(raw)
            raw = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return wsgi_to_text(raw)
    path = wsgi_to_text(str(environ.get("SCRIPT_NAME", ""))) + wsgi_to_text(
        str(environ.get("PATH_INFO", ""))
    )
    uri = _quote_path(path or "/")
    qs = wsgi_to_text(str(environ.get("QUERY_STRING", "")))
    return uri + ("?" + qs if qs else "")


def cgi_environ(
    environ: Mapping[str, Any],
    route: Route,
    *,
    server_software: str = "frankenpy",
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The CGI/1.1 ``$_SERVER`` variables for running ``route`` (a ``PHP`` route) for the WSGI
    request ``environ``, as FrankenPHP registers them.

    Only known variables and the request's ``HTTP_*`` headers are copied: a WSGI environ may
    carry the server's whole OS environment (granian does), which must not reach PHP.
    ``HTTP_PROXY`` is dropped (httpoxy).  ``SCRIPT_NAME``, ``PHP_SELF`` and ``DOCUMENT_URI``
    are prefixed with the WSGI ``SCRIPT_NAME`` (the mount point, usually empty).
    ``SERVER_NAME``/``SERVER_PORT`` come from the ``Host`` header as in FrankenPHP (port 80/443
    by scheme when the header has none), else from the WSGI server.  ``HTTPS`` is ``"on"`` for
    https and absent otherwise.  ``REQUEST_URI`` is the raw request target when the server
    provides it (``REQUEST_URI``/``RAW_URI``), else rebuilt from the decoded path.
    ``REQUEST_TIME``/``REQUEST_TIME_FLOAT`` are left to PHP.  ``extra`` (FrankenPHP's ``env``)
    is applied last and overrides.  Values follow the module's text convention
    (:func:`environ_to_bytes` gives the bytes).
    """
    if route.kind is not RouteKind.PHP:
        raise ValueError(f"cgi_environ needs a PHP route, not {route.kind.value}")

    def get(key: str, default: str = "") -> str:
        value = environ.get(key)
        return wsgi_to_text(str(value)) if value is not None else default

    scheme = get("wsgi.url_scheme", "http").lower() or "http"
    mount = get("SCRIPT_NAME").rstrip("/")
    script_name = mount + route.script_name
    host_header = get("HTTP_HOST")
    if host_header:
        server_name, server_port = _split_host(host_header)
        if not server_port:
            server_port = "443" if scheme == "https" else "80"
    else:
        server_name, server_port = get("SERVER_NAME"), get("SERVER_PORT")

    env: dict[str, str] = {}
    for key, value in environ.items():
        if key.startswith("HTTP_") and key != "HTTP_PROXY" and isinstance(value, str):
            env[key] = wsgi_to_text(value)
    remote_addr = get("REMOTE_ADDR")
    env.update({
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SERVER_SOFTWARE": server_software,
        "SERVER_PROTOCOL": get("SERVER_PROTOCOL", "HTTP/1.1"),
        "SERVER_NAME": server_name,
        "SERVER_PORT": server_port,
        "REQUEST_METHOD": get("REQUEST_METHOD", "GET").upper(),
        "REQUEST_URI": _request_uri(environ),
        "REQUEST_SCHEME": scheme,
        "QUERY_STRING": get("QUERY_STRING"),
        "DOCUMENT_ROOT": route.document_root,
        "DOCUMENT_URI": mount + route.document_uri,
        "SCRIPT_NAME": script_name,
        "SCRIPT_FILENAME": route.script_filename,
        "PATH_INFO": route.path_info,
        "PHP_SELF": mount + route.php_self,
        "REMOTE_ADDR": remote_addr,
        "REMOTE_HOST": remote_addr,
        "REMOTE_PORT": get("REMOTE_PORT"),
        "CONTENT_TYPE": get("CONTENT_TYPE"),
        "CONTENT_LENGTH": get("CONTENT_LENGTH"),
    })
    if scheme == "https":
        env["HTTPS"] = "on"
    if extra:
        env.update(extra)
    return env
