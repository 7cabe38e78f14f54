"""FrankenPHP's ``php_server`` routing, static files and CGI variables, in pure Python.

Nothing here needs PHP: this module decides *what* a request is (a PHP script to run, a
static file to send, a redirect or a refusal), serves static files, and builds the CGI/1.1
``$_SERVER`` variables for a PHP execution.

Routing follows what FrankenPHP's ``php_server`` (and its ``php-server`` command) expands to::

    redir  {path}/ 308            if {path}/index.php is a file and {path} has no trailing "/"
    rewrite to the first match of try_files {path} {path}/index.php index.php  (split_path .php)
    php    if the (rewritten) path ends in .php
    file_server                   otherwise (index.html / index.txt for directories, else 404)

with these safety rules on top (FrankenPHP leaves them to the file system and Caddy):

* a NUL byte in the path is a 400 (as in FrankenPHP);
* a path segment starting with ``.`` (``.env``, ``.git/``, ``..``, ``.``) is a 403, except
  ``.well-known`` (RFC 8615); the same rule applies to the *resolved* path below the root, so
  a symlink to ``.env`` is refused too;
* anything whose real path (``os.path.realpath``, symlinks followed) is outside the
  document root is a 403;
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
import mimetypes
import os
import re
import stat
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate, parsedate_to_datetime
from http import HTTPStatus
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, urlsplit

__all__ = [
    "DEFAULT_ALLOWED_HIDDEN",
    "DEFAULT_INDEX",
    "DEFAULT_SPLIT_EXTENSIONS",
    "DEFAULT_STATIC_INDEXES",
    "PHP_SOURCE_SUFFIXES",
    "FileChunks",
    "Route",
    "RouteKind",
    "StaticResponse",
    "cgi_environ",
    "environ_to_bytes",
    "resolve",
    "respond",
    "serve_static",
    "simple_response",
    "wsgi_to_text",
]

DEFAULT_INDEX = "index.php"
"""The PHP index file tried in a directory and, at the root, as the front controller."""

DEFAULT_SPLIT_EXTENSIONS: tuple[str, ...] = (".php",)
"""A path segment ending in one of these (case-insensitive) is a PHP script; what follows it is
``PATH_INFO`` (FrankenPHP's ``split_path``)."""

DEFAULT_STATIC_INDEXES: tuple[str, ...] = ("index.html", "index.txt")
"""Index files of Caddy's ``file_server``, used for directories when no PHP index matched."""

DEFAULT_ALLOWED_HIDDEN: frozenset[str] = frozenset({".well-known"})
"""Dot-segments that are public anyway (RFC 8615 ``/.well-known/``)."""

PHP_SOURCE_SUFFIXES: frozenset[str] = frozenset(
    {".phtml", ".php3", ".php4", ".php5", ".php7", ".php8", ".phps", ".phar", ".inc"}
)
"""Suffixes (compared lower-case) of files that hold PHP source but are not executed by the
router: they are refused (403) rather than disclosed as static files."""

_PHP_BACKUP_RE = re.compile(
    r"\.(php\d?|phtml|inc)(~|\.(bak|backup|copy|dist|old|orig|sav|save|swo|swp|tmp)~?)$", re.IGNORECASE
)
"""Editor and deploy leftovers of PHP source (``index.php~``, ``config.php.bak``,
``wp-config.php.orig``, ``settings.inc.dist``): refused (403) like the source itself."""

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
    """403: hidden file, outside the document root, PHP source as static file."""
    NOT_FOUND = "not_found"
    """404: nothing matched and there is no front controller."""
    BAD_REQUEST = "bad_request"
    """400: the path cannot be a file name (NUL byte)."""


@dataclass(frozen=True)
class Route:
    """The decision for one request path.

    For ``PHP``: :attr:`script_name` is the URL path of the script (``/index.php``),
    :attr:`path_info` what followed it (``/foo/bar`` for ``/index.php/foo/bar``),
    :attr:`script_filename` is ``document_root + script_name`` (FrankenPHP's
    ``SCRIPT_FILENAME``, symlinks inside the root not resolved) and :attr:`real_path` its
    resolved path.  For ``STATIC``: :attr:`script_name` is the URL path of the file and
    :attr:`real_path` the resolved file to open.
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


def environ_to_bytes(variables: Mapping[str, str]) -> dict[bytes, bytes]:
    """The exact bytes of :func:`cgi_environ`'s result, as PHP should receive them."""
    return {_text_to_bytes(k): _text_to_bytes(v) for k, v in variables.items()}


# ---------------------------------------------------------------------------------------------
# Routing
# ---------------------------------------------------------------------------------------------

_OUTSIDE = object()  # sentinel: the candidate resolves outside the document root


def _inside(real: str, root_real: str) -> bool:
    if real == root_real:
        return True
    prefix = root_real if root_real.endswith(os.sep) else root_real + os.sep
    return real.startswith(prefix)


def _is_hidden(segment: str, allowed_hidden: Collection[str]) -> bool:
    return segment.startswith(".") and segment not in allowed_hidden


@dataclass
class _Resolver:
    root_real: str
    allowed_hidden: Collection[str]
    # reasons for refusals found while probing candidates
    refusals: list[str] = field(default_factory=list)

    def lookup(self, segments: list[str]) -> tuple[str, os.stat_result] | object | None:
        """Resolve ``segments`` below the root.

        Returns ``(real_path, stat)`` when the path exists inside the root and nothing on the
        resolved path is hidden, :data:`_OUTSIDE` when it exists but resolves outside the root
        or onto a hidden name (the reason is recorded), ``None`` when it does not exist.
        """
        logical = os.path.join(self.root_real, *segments) if segments else self.root_real
        try:
            st = os.stat(logical)  # follows symlinks; any error means "not there"
        except (OSError, ValueError):
            return None
        real = os.path.realpath(logical)
        if not _inside(real, self.root_real):
            self.refusals.append(f"{'/'.join(segments)!r} resolves outside the document root")
            return _OUTSIDE
        if real != self.root_real:
            rel_parts = os.path.relpath(real, self.root_real).split(os.sep)
            if any(_is_hidden(p, self.allowed_hidden) for p in rel_parts):
                self.refusals.append(f"{'/'.join(segments)!r} resolves to a hidden path")
                return _OUTSIDE
        return real, st


def _url_path(segments: Iterable[str]) -> str:
    return "/" + "/".join(segments)


def _quote_path(path: str) -> str:
    return quote(_text_to_bytes(path), safe="/!$&'()*+,;=:@-._~")


def _remainder_after(path: str, n: int) -> str:
    """The raw part of ``path`` after its ``n``-th (0-based) non-empty segment: ``PATH_INFO``.
    ``/a//x.php/b//c`` with n=1 -> ``/b//c``; ``/x.php`` -> ``""``; ``/x.php/`` -> ``/``."""
    parts = path.split("/")
    seen = -1
    for k, part in enumerate(parts):
        if part:
            seen += 1
            if seen == n:
                return "/" + "/".join(parts[k + 1:]) if k + 1 < len(parts) else ""
    return ""


def _has_suffix(name: str, suffixes: Iterable[str]) -> bool:
    lower = name.lower()
    return any(lower.endswith(s) for s in suffixes)


def _is_php_source(name: str, split_extensions: Iterable[str]) -> bool:
    """True for a file name that must not be sent as a static file (PHP source or a copy)."""
    return (
        _has_suffix(name, split_extensions)
        or _has_suffix(name, PHP_SOURCE_SUFFIXES)
        or _PHP_BACKUP_RE.search(name) is not None
    )


def resolve(
    document_root: Path | str,
    path_info_raw: str,
    *,
    query_string: str = "",
    index: str = DEFAULT_INDEX,
    split_extensions: Collection[str] = DEFAULT_SPLIT_EXTENSIONS,
    static_indexes: Collection[str] = DEFAULT_STATIC_INDEXES,
    allowed_hidden: Collection[str] = DEFAULT_ALLOWED_HIDDEN,
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

    Raises :class:`NotADirectoryError` when ``document_root`` is not a directory.
    """
    root_real = os.path.realpath(os.fspath(document_root))
    if not os.path.isdir(root_real):
        raise NotADirectoryError(errno.ENOTDIR, "document root is not a directory", root_real)

    def refuse(kind: RouteKind, reason: str) -> Route:
        status = {RouteKind.BAD_REQUEST: 400, RouteKind.FORBIDDEN: 403, RouteKind.NOT_FOUND: 404}[kind]
        return Route(kind, status, root_real, reason=reason)

    path = wsgi_to_text(path_info_raw or "/")
    if "\x00" in path:
        return refuse(RouteKind.BAD_REQUEST, "NUL byte in the request path")
    if not path.startswith("/"):
        path = "/" + path
    trailing_slash = path.endswith("/")
    segments = [s for s in path.split("/") if s]
    for seg in segments:
        if seg == "..":
            return refuse(RouteKind.FORBIDDEN, "parent directory reference in the request path")
        if _is_hidden(seg, allowed_hidden):
            return refuse(RouteKind.FORBIDDEN, f"hidden path segment {seg!r}")

    res = _Resolver(root_real, allowed_hidden)

    def forbidden() -> Route:
        return refuse(RouteKind.FORBIDDEN, res.refusals[-1])

    def php_route(script_segments: list[str], path_info: str, real: str, front: bool) -> Route:
        script_name = _url_path(script_segments)
        return Route(
            RouteKind.PHP, 200, root_real,
            script_name=script_name,
            script_filename=os.path.join(root_real, *script_segments),
            path_info=path_info,
            real_path=real,
            front_controller=front,
        )

    # (1) canonical directory URL: /dir -> /dir/ when /dir/index.php exists.
    if segments and not trailing_slash:
        found = res.lookup([*segments, index])
        if found is _OUTSIDE:
            return forbidden()
        if isinstance(found, tuple) and stat.S_ISREG(found[1].st_mode):
            location = _quote_path(_url_path(segments) + "/")
            if query_string:
                location += "?" + query_string
            return Route(RouteKind.REDIRECT, 308, root_real, location=location,
                         reason="directory without trailing slash")

    # (2) the path itself, with split_path.
    split_at = next(
        (i for i, seg in enumerate(segments) if _has_suffix(seg, split_extensions)), None
    )
    if split_at is not None:
        script_segments = segments[: split_at + 1]
        found = res.lookup(script_segments)
        if found is _OUTSIDE:
            return forbidden()
        if isinstance(found, tuple) and stat.S_ISREG(found[1].st_mode):
            return php_route(script_segments, _remainder_after(path, split_at), found[0], front=False)
    else:
        found = res.lookup(segments)
        if found is _OUTSIDE:
            return forbidden()
        if isinstance(found, tuple) and stat.S_ISREG(found[1].st_mode) and segments:
            # the URL's name and the resolved name (a symlink "x.txt" -> "index.php")
            for name in (segments[-1], os.path.basename(found[0])):
                if _is_php_source(name, split_extensions):
                    return refuse(RouteKind.FORBIDDEN, f"PHP source file {name!r} not served")
            return Route(RouteKind.STATIC, 200, root_real, script_name=_url_path(segments),
                         real_path=found[0])

    # (3) the directory's index.php (reached with a trailing slash, see (1)).
    found = res.lookup([*segments, index])
    if found is _OUTSIDE:
        return forbidden()
    if isinstance(found, tuple) and stat.S_ISREG(found[1].st_mode):
        return php_route([*segments, index], "", found[0], front=False)

    # (4) the front controller.
    found = res.lookup([index])
    if found is _OUTSIDE:
        return forbidden()
    if isinstance(found, tuple) and stat.S_ISREG(found[1].st_mode):
        return php_route([index], "", found[0], front=True)

    # (5) file server for directories: index.html / index.txt.
    if split_at is None:
        found = res.lookup(segments)
        if isinstance(found, tuple) and stat.S_ISDIR(found[1].st_mode):
            for name in static_indexes:
                idx = res.lookup([*segments, name])
                if idx is _OUTSIDE:
                    return forbidden()
                if isinstance(idx, tuple) and stat.S_ISREG(idx[1].st_mode):
                    if _is_php_source(os.path.basename(idx[0]), split_extensions):
                        return refuse(RouteKind.FORBIDDEN, f"PHP source behind {name!r} not served")
                    if segments and not trailing_slash:
                        location = _quote_path(_url_path(segments) + "/")
                        if query_string:
                            location += "?" + query_string
                        return Route(RouteKind.REDIRECT, 308, root_real, location=location,
                                     reason="directory without trailing slash")
                    return Route(RouteKind.STATIC, 200, root_real,
                                 script_name=_url_path([*segments, name]), real_path=idx[0])

    return refuse(RouteKind.NOT_FOUND, "no file matched and no front controller")


# ---------------------------------------------------------------------------------------------
# Static files
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


_TEXTUAL_TYPES = frozenset({"application/javascript", "application/json", "application/xml",
                            "image/svg+xml"})
_ENCODING_TYPES = {"gzip": "application/gzip", "bzip2": "application/x-bzip2",
                   "xz": "application/x-xz", "br": "application/x-brotli",
                   "compress": "application/x-compress"}


def _content_type(path: str) -> str:
    """``Content-Type`` from the file name; ``charset=utf-8`` on textual types.  A compressed
    file (``.tar.gz``) is sent as the compressed type: no ``Content-Encoding`` is added."""
    ctype, encoding = mimetypes.guess_type(path, strict=False)
    if encoding is not None:
        return _ENCODING_TYPES.get(encoding, "application/octet-stream")
    if ctype is None:
        return "application/octet-stream"
    if ctype.startswith("text/") or ctype in _TEXTUAL_TYPES:
        return ctype + "; charset=utf-8"
    return ctype


def _etag(st: os.stat_result) -> str:
    """Strong validator from mtime (ns) and size, like Caddy's file server."""
    return f'"{st.st_mtime_ns:x}-{st.st_size:x}"'


def _etag_list(header: str) -> list[str]:
    return [t.strip() for t in header.split(",") if t.strip()]


def _weak_match(header: str, etag: str) -> bool:
    if header.strip() == "*":
        return True
    bare = etag.removeprefix("W/")
    return any(t.removeprefix("W/") == bare for t in _etag_list(header))


def _strong_match(header: str, etag: str) -> bool:
    if header.strip() == "*":
        return True
    if etag.startswith("W/"):
        return False
    return any(t == etag for t in _etag_list(header))


def _http_date(value: str) -> int | None:
    try:
        dt = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if dt is None or dt.tzinfo is None:
        return None
    return int(dt.timestamp())


_RANGE_RE = re.compile(r"^bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


def _parse_range(header: str, size: int) -> tuple[int, int] | bool | None:
    """``(first, last)`` inclusive for a satisfiable single byte range, ``False`` when it is
    unsatisfiable (416), ``None`` when the header is to be ignored (malformed, several
    ranges, other unit: a full 200 is sent)."""
    m = _RANGE_RE.match(header.strip())
    if not m:
        return None
    first_s, last_s = m.groups()
    if not first_s and not last_s:
        return None
    if not first_s:  # suffix range: the last N bytes
        n = int(last_s)
        if n == 0 or size == 0:
            return False
        return max(0, size - n), size - 1
    first = int(first_s)
    last = int(last_s) if last_s else size - 1
    if last_s and last < first:
        return None  # invalid range-spec: ignore the header
    if first >= size:
        return False
    return first, min(last, size - 1)


def serve_static(
    environ: Mapping[str, Any], path: str | os.PathLike[str], *, chunk_size: int = CHUNK_SIZE
) -> StaticResponse:
    """Serve the regular file ``path`` for the WSGI request ``environ``.

    GET and HEAD only (405 with ``Allow`` otherwise).  Sends ``Content-Type`` (mimetypes),
    ``Content-Length``, ``Last-Modified``, a strong ``ETag`` from mtime and size and
    ``Accept-Ranges: bytes``.  Honours ``If-Match``/``If-Unmodified-Since`` (412),
    ``If-None-Match``/``If-Modified-Since`` (304), ``If-Range`` and a single
    ``Range: bytes=a-b``, ``bytes=a-`` or ``bytes=-n`` (206 with ``Content-Range``; 416 with
    ``Content-Range: bytes */size`` when unsatisfiable; several ranges or a malformed header
    are ignored and the whole file is sent).  A full GET body uses ``wsgi.file_wrapper`` when
    the server offers it, otherwise a :class:`FileChunks` iterator; both close the file.

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
        size = st.st_size
        etag = _etag(st)
        mtime = int(st.st_mtime)
        validators = [("Last-Modified", formatdate(mtime, usegmt=True)), ("ETag", etag)]
        base = [("Content-Type", _content_type(os.fspath(path))), ("Accept-Ranges", "bytes"),
                *validators]

        # RFC 9110 section 13.2.2: evaluation order of the preconditions.
        if_match = environ.get("HTTP_IF_MATCH")
        if if_match is not None:
            if not _strong_match(if_match, etag):
                return simple_response(412)
        else:
            ius = environ.get("HTTP_IF_UNMODIFIED_SINCE")
            ius_t = _http_date(ius) if ius else None
            if ius_t is not None and mtime > ius_t:
                return simple_response(412)
        inm = environ.get("HTTP_IF_NONE_MATCH")
        if inm is not None:
            if _weak_match(inm, etag):
                return StaticResponse(304, validators, [])
        else:
            ims = environ.get("HTTP_IF_MODIFIED_SINCE")
            ims_t = _http_date(ims) if ims else None
            if ims_t is not None and mtime <= ims_t:
                return StaticResponse(304, validators, [])

        first, last = 0, size - 1
        status = 200
        range_header = environ.get("HTTP_RANGE")
        if range_header and method == "GET":
            if_range = environ.get("HTTP_IF_RANGE")
            use_range = True
            if if_range is not None:
                if_range = if_range.strip()
                if if_range.startswith(('"', "W/")):
                    use_range = _strong_match(if_range, etag) and if_range != "*"
                else:
                    use_range = _http_date(if_range) == mtime
            rng = _parse_range(range_header, size) if use_range else None
            if rng is False:
                return StaticResponse(416, [("Content-Range", f"bytes */{size}"),
                                            ("Content-Length", "0"), *validators], [])
            if isinstance(rng, tuple):
                first, last = rng
                status = 206
        length = last - first + 1 if size else 0
        headers = [*base, ("Content-Length", str(length))]
        if status == 206:
            headers.append(("Content-Range", f"bytes {first}-{last}/{size}"))
        if method == "HEAD" or length == 0:
            return StaticResponse(status, headers, [])
        wrapper = environ.get("wsgi.file_wrapper")
        body: Iterable[bytes]
        if status == 200 and wrapper is not None:
            body = wrapper(fileobj, chunk_size)
        else:
            body = FileChunks(fileobj, first, length, chunk_size)
        handed_over = True
        return StaticResponse(status, headers, body)
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
