"""frankenpy.http.routing: php_server routing, static files and CGI variables (no PHP needed).

Every test works on a real document root in a temporary directory, with real files, real
directories and real symlinks (some pointing out of the root).
"""

from __future__ import annotations

import os
import threading
import wsgiref.util
from collections.abc import Iterable
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest

from frankenpy.http.routing import (
    FileChunks,
    Route,
    RouteKind,
    Router,
    cgi_environ,
    environ_to_bytes,
    resolve,
    respond,
    serve_static,
    wsgi_to_text,
)

DATA = bytes(range(256)) * 40  # 10240 bytes


def wsgi(path: str) -> str:
    """A real-text path as a WSGI server hands it over: UTF-8 bytes decoded as latin-1."""
    return path.encode("utf-8").decode("latin-1")


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A document root ``public/`` with PHP scripts, static files, hidden files, directories
    with and without index files, and symlinks inside and out; secrets beside it."""
    root = tmp_path / "public"
    root.mkdir()
    (tmp_path / "secret.txt").write_text("TOP SECRET")
    (tmp_path / "outside.php").write_text("<?php echo 'outside';")
    (tmp_path / "private").mkdir()
    (tmp_path / "private" / "x.txt").write_text("private")
    (tmp_path / "private" / "index.php").write_text("<?php")
    (tmp_path / ".env").write_text("OUTSIDE_PASSWORD=1")
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "id_rsa").write_text("PRIVATE KEY")
    (tmp_path / ".cache" / "app" / "tpl").mkdir(parents=True)
    (tmp_path / ".cache" / "app" / "tpl" / "page.css").write_text("tpl{}")

    files = {
        "index.php": "<?php echo 'front';",
        "info.php": "<?php phpinfo();",
        "UPPER.PHP": "<?php echo 'upper';",
        "style.css": "body{}",
        "legacy.phtml": "<?php echo 'old';",
        "config.inc": "<?php $password = 'x';",
        "shown.php.txt": "not php",
        ".env": "DB_PASSWORD=hunter2",
        ".htaccess": "deny from all",
        ".git/config": "[core]",
        ".hidden_dir/file.txt": "hidden",
        ".well-known/security.txt": "Contact: mailto:security@example.com",
        "blog/index.php": "<?php echo 'blog';",
        "blog/post.php": "<?php echo 'post';",
        "blog/.env": "BLOG=1",
        "assets/app.js": "console.log(1)",
        "docs/index.html": "<h1>docs</h1>",
        "empty.txt": "",
        "café.txt": "accent",
        "€uro.txt": "euro",
        "%2e%2e/literal.txt": "literal percent dir",
        "a\\b.txt": "backslash name",
        "dir.php/inner.txt": "directory named like a script",
        "evil.com/index.php": "<?php",
        "index.php~": "<?php // editor backup",
        "wp-config.php.bak": "<?php $pw = 1;",
        "settings.PHP.orig": "<?php",
        "conf.inc.dist": "<?php",
        "lib.php5": "<?php",
    }
    for name, content in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(content)
    (root / "data.bin").write_bytes(DATA)
    (root / "café").mkdir()
    (root / "café" / "index.php").write_text("<?php")
    os.symlink("style.css", root / "link_in.css")
    os.symlink("blog", root / "link_blog")
    os.symlink("../secret.txt", root / "link_out.txt")
    os.symlink(str(tmp_path / "secret.txt"), root / "link_abs_out.txt")
    os.symlink("../private", root / "link_dir_out")
    os.symlink("../outside.php", root / "link_out.php")
    os.symlink(".env", root / "link_env.txt")
    os.symlink("../.env", root / "link_out_env.txt")
    os.symlink(str(tmp_path / ".ssh"), root / "link_out_ssh")
    os.symlink("../outside.php", root / "link_out_src.txt")
    os.symlink("../.cache/app/tpl", root / "tpl")  # a template directory linked out of the root
    os.symlink(".git", root / "gitlink")
    os.symlink("info.php", root / "source.txt")  # a static name over PHP source
    os.symlink("missing-target", root / "dangling.txt")
    os.symlink("loop_b", root / "loop_a")
    os.symlink("loop_a", root / "loop_b")
    os.mkfifo(root / "pipe")
    return root


@pytest.fixture
def bare_site(tmp_path: Path) -> Path:
    """A document root without a front controller."""
    root = tmp_path / "bare"
    root.mkdir()
    (root / "hello.txt").write_text("hello")
    (root / "page.php").write_text("<?php")
    (root / "sub").mkdir()
    (root / "sub" / "index.php").write_text("<?php")
    (root / "static").mkdir()
    (root / "static" / "index.html").write_text("<p>static index</p>")
    (root / "static" / "index.txt").write_text("lower priority")
    (root / "nothing").mkdir()
    return root


def real(root: Path) -> str:
    return os.path.realpath(root)


# ----------------------------------------------------------------------------------------------
# resolve(): PHP scripts, PATH_INFO split, directory index, front controller
# ----------------------------------------------------------------------------------------------


def test_php_script(site: Path) -> None:
    r = resolve(site, "/info.php")
    assert r.kind is RouteKind.PHP and r.status == 200
    assert r.script_name == "/info.php"
    assert r.script_filename == os.path.join(real(site), "info.php")
    assert r.real_path == os.path.join(real(site), "info.php")
    assert r.path_info == ""
    assert r.php_self == "/info.php" and r.document_uri == "/info.php"
    assert r.document_root == real(site)
    assert not r.front_controller


@pytest.mark.parametrize(
    ("path", "script", "path_info"),
    [
        ("/index.php/foo/bar", "/index.php", "/foo/bar"),
        ("/index.php/", "/index.php", "/"),
        ("/index.php", "/index.php", ""),
        ("/blog/post.php/2024/01/slug", "/blog/post.php", "/2024/01/slug"),
        ("/blog/post.php/a//b/", "/blog/post.php", "/a//b/"),
        ("//blog//post.php/x", "/blog/post.php", "/x"),
        ("/info.php/with.php/inside", "/info.php", "/with.php/inside"),
        ("/UPPER.PHP/x", "/UPPER.PHP", "/x"),
    ],
)
def test_path_info_split(site: Path, path: str, script: str, path_info: str) -> None:
    r = resolve(site, path)
    assert r.kind is RouteKind.PHP
    assert (r.script_name, r.path_info) == (script, path_info)
    assert r.php_self == script + path_info
    assert r.document_uri == script
    assert r.script_filename == os.path.join(real(site), *script.strip("/").split("/"))
    assert not r.front_controller


def test_split_requires_the_segment_to_end_in_php(site: Path) -> None:
    # "shown.php.txt" contains ".php" but is not a PHP script: it is a static file.
    r = resolve(site, "/shown.php.txt")
    assert r.kind is RouteKind.STATIC
    assert r.real_path == os.path.join(real(site), "shown.php.txt")


def test_uppercase_php_is_executed_never_served(site: Path) -> None:
    r = resolve(site, "/UPPER.PHP")
    assert r.kind is RouteKind.PHP and r.script_name == "/UPPER.PHP"


def test_directory_with_index_php_trailing_slash(site: Path) -> None:
    r = resolve(site, "/blog/")
    assert r.kind is RouteKind.PHP
    assert r.script_name == "/blog/index.php"
    assert r.path_info == ""
    assert r.script_filename == os.path.join(real(site), "blog", "index.php")
    assert not r.front_controller


def test_root_directory_runs_index_php(site: Path) -> None:
    for path in ("/", "", "//"):
        r = resolve(site, path)
        assert r.kind is RouteKind.PHP and r.script_name == "/index.php", path
        assert not r.front_controller


@pytest.mark.parametrize(
    ("path", "query", "location"),
    [
        ("/blog", "", "/blog/"),
        ("/blog", "a=1&b=%2F", "/blog/?a=1&b=%2F"),
        ("//blog", "", "/blog/"),
        ("/café", "", "/caf%C3%A9/"),
        ("//evil.com", "", "/evil.com/"),  # never a protocol-relative "//evil.com/"
        ("/link_blog", "", "/link_blog/"),
    ],
)
def test_directory_without_slash_redirects_308(site: Path, path: str, query: str, location: str) -> None:
    r = resolve(site, wsgi(path), query_string=query)
    assert r.kind is RouteKind.REDIRECT and r.status == 308
    assert r.location == location
    resp = respond(r, {"REQUEST_METHOD": "GET"})
    assert resp.status == 308 and resp.status_line == "308 Permanent Redirect"
    assert ("Location", location) in resp.headers


@pytest.mark.parametrize(
    "path",
    [
        "/some/route",
        "/api/users/42",
        "/missing.php",
        "/missing.php/foo",
        "/blog/missing.php",
        "/assets/",  # directory without index.php: falls to the front controller
        "/assets",
        "/nothing/here/",
        "/docs/",  # index.html is only a file-server fallback: try_files reaches index.php first
        "/dir.php/inner",  # dir.php is a directory, not a script
        "/%2e%2e/secret.txt",  # literal name (decoded once by the server): does not exist
        "/%252e%252e/%252e%252e/secret.txt",
        "/sub\\..\\..\\secret.txt",  # backslashes are ordinary characters on POSIX
        "/pipe",  # a FIFO is not a regular file
        "/dangling.txt",
        "/loop_a",
    ],
)
def test_front_controller_for_unknown_paths(site: Path, path: str) -> None:
    r = resolve(site, path)
    assert r.kind is RouteKind.PHP, (path, r)
    assert r.front_controller
    assert r.script_name == "/index.php"
    assert r.path_info == ""
    assert r.php_self == "/index.php"
    assert r.script_filename == os.path.join(real(site), "index.php")


def test_front_controller_keeps_a_percent_named_directory_literal(site: Path) -> None:
    # "%2e%2e" in PATH_INFO is a literal directory name, not "..": it is served from inside.
    r = resolve(site, "/%2e%2e/literal.txt")
    assert r.kind is RouteKind.STATIC
    assert r.real_path == os.path.join(real(site), "%2e%2e", "literal.txt")


def test_backslash_is_a_literal_file_name_character(site: Path) -> None:
    r = resolve(site, "/a\\b.txt")
    assert r.kind is RouteKind.STATIC
    assert r.real_path == os.path.join(real(site), "a\\b.txt")


def test_custom_index_name(site: Path) -> None:
    (site / "main.php").write_text("<?php")
    r = resolve(site, "/unknown", index="main.php")
    assert r.kind is RouteKind.PHP and r.front_controller and r.script_name == "/main.php"


# ----------------------------------------------------------------------------------------------
# resolve(): static files
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "rel"),
    [
        ("/style.css", "style.css"),
        ("/style.css/", "style.css"),
        ("/assets/app.js", "assets/app.js"),
        ("/data.bin", "data.bin"),
        ("/empty.txt", "empty.txt"),
        ("/link_in.css", "style.css"),  # symlink inside the root: followed
        ("/.well-known/security.txt", ".well-known/security.txt"),  # RFC 8615 is public
    ],
)
def test_static_files(site: Path, path: str, rel: str) -> None:
    r = resolve(site, path)
    assert r.kind is RouteKind.STATIC and r.status == 200, r
    assert r.real_path == os.path.join(real(site), *rel.split("/"))


def test_static_file_names_decoded_from_wsgi_latin1(site: Path) -> None:
    r = resolve(site, wsgi("/café.txt"))
    assert r.kind is RouteKind.STATIC
    assert r.real_path == os.path.join(real(site), "café.txt")
    assert r.script_name == "/café.txt"
    # a server that already gave real text (not latin-1 encodable) works too
    r = resolve(site, "/€uro.txt")
    assert r.kind is RouteKind.STATIC and r.real_path.endswith("€uro.txt")


def test_static_index_symlinked_to_php_source_is_forbidden(bare_site: Path) -> None:
    os.symlink("../page.php", bare_site / "nothing" / "index.html")
    assert resolve(bare_site, "/nothing/").kind is RouteKind.FORBIDDEN


def test_directory_with_static_index(bare_site: Path) -> None:
    r = resolve(bare_site, "/static/")
    assert r.kind is RouteKind.STATIC
    assert r.real_path == os.path.join(real(bare_site), "static", "index.html")
    r = resolve(bare_site, "/static")
    assert r.kind is RouteKind.REDIRECT and r.location == "/static/"


# ----------------------------------------------------------------------------------------------
# resolve(): refusals
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/.env",
        "/.htaccess",
        "/.git",
        "/.git/",
        "/.git/config",
        "/.hidden_dir/file.txt",
        "/blog/.env",
        "/.env.php",
        "/.nonexistent",  # hidden even when missing: never the front controller
        "/index.php/.git/config",  # hidden segment in PATH_INFO too
        "/.well-known/../.env",
        "/./index.php",
        "/.",
        "/..",
        "/../secret.txt",
        "/../../../../../../etc/passwd",
        "/blog/../../secret.txt",
        "/assets/../.env",
        "/..%2f..%2fsecret.txt",  # literal segment starting with "."
        "/..\\..\\secret.txt",
        "/link_env.txt",  # symlink inside the root onto a hidden file
        "/gitlink/config",  # symlink inside the root onto a hidden directory
        "/gitlink/missing",  # through it, even to a missing file (as "/.git/missing")
        "/link_out_env.txt",  # symlink out of the root onto a hidden file
        "/link_out_ssh/id_rsa",  # symlink out of the root onto a hidden directory
        "/link_out_src.txt",  # symlink out of the root onto PHP source, with a static name
        "/legacy.phtml",  # PHP source that is not executed is not disclosed either
        "/config.inc",
        "/lib.php5",
        "/index.php~",  # nor are editor and deploy copies of PHP source
        "/wp-config.php.bak",
        "/settings.PHP.orig",
        "/conf.inc.dist",
        "/source.txt",  # nor PHP source behind a symlink with a static name
    ],
)
@pytest.mark.parametrize("follow_symlinks", [True, False])
def test_forbidden(site: Path, path: str, follow_symlinks: bool) -> None:
    r = resolve(site, path, follow_symlinks=follow_symlinks)
    assert r.kind is RouteKind.FORBIDDEN and r.status == 403, (path, r)
    assert r.reason
    assert r.real_path == "" and r.script_filename == ""
    resp = respond(r, {"REQUEST_METHOD": "GET"})
    assert resp.status == 403
    assert b"".join(resp.body) == b"403 Forbidden\n"


@pytest.mark.parametrize("path", ["/\x00", "/index.php\x00.txt", "/style.css\x00", "/a/\x00/../.env"])
def test_nul_byte_is_bad_request(site: Path, path: str) -> None:
    r = resolve(site, path)
    assert r.kind is RouteKind.BAD_REQUEST and r.status == 400
    assert respond(r, {}).status == 400


def test_front_controller_linked_out_of_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "real_index.php").write_text("<?php")
    os.symlink("../real_index.php", root / "index.php")
    r = resolve(root, "/anything")
    assert r.kind is RouteKind.PHP and r.front_controller
    assert r.script_filename == os.path.join(real(root), "index.php")
    assert r.real_path == os.path.join(real(tmp_path), "real_index.php")
    r = resolve(root, "/anything", follow_symlinks=False)
    assert r.kind is RouteKind.FORBIDDEN and r.real_path == ""


# ----------------------------------------------------------------------------------------------
# resolve(): symlinks out of the document root
# ----------------------------------------------------------------------------------------------

OUT_LINKS = [
    # (path, kind, real path below tmp_path, script_name, path_info)
    ("/link_out.txt", RouteKind.STATIC, "secret.txt", "/link_out.txt", ""),
    ("/link_abs_out.txt", RouteKind.STATIC, "secret.txt", "/link_abs_out.txt", ""),
    ("/link_dir_out/x.txt", RouteKind.STATIC, "private/x.txt", "/link_dir_out/x.txt", ""),
    ("/link_dir_out/", RouteKind.PHP, "private/index.php", "/link_dir_out/index.php", ""),
    ("/link_out.php", RouteKind.PHP, "outside.php", "/link_out.php", ""),
    ("/link_out.php/path/info", RouteKind.PHP, "outside.php", "/link_out.php", "/path/info"),
    # a link's target may sit below a hidden directory: only the link's own target name and
    # the request path are checked
    ("/tpl/page.css", RouteKind.STATIC, ".cache/app/tpl/page.css", "/tpl/page.css", ""),
]


@pytest.mark.parametrize(("path", "kind", "rel", "script_name", "path_info"), OUT_LINKS)
def test_symlinks_out_of_the_root_are_followed(
    site: Path, path: str, kind: RouteKind, rel: str, script_name: str, path_info: str
) -> None:
    """As Caddy's file_server, nginx and apache: a link in the root may lead out of it."""
    r = resolve(site, path)
    assert r.kind is kind and r.status == 200, r
    assert r.real_path == os.path.join(real(site.parent), *rel.split("/"))
    assert (r.script_name, r.path_info) == (script_name, path_info)
    if kind is RouteKind.PHP:  # SCRIPT_FILENAME keeps the link, as FrankenPHP's
        assert r.script_filename == os.path.join(real(site), *script_name.strip("/").split("/"))


@pytest.mark.parametrize("path", [p for p, *_ in OUT_LINKS] + ["/link_dir_out", "/link_dir_out/nope"])
def test_no_follow_symlinks_refuses_links_out_of_the_root(site: Path, path: str) -> None:
    r = resolve(site, path, follow_symlinks=False)
    assert r.kind is RouteKind.FORBIDDEN and r.status == 403, r
    assert r.real_path == "" and r.reason


def test_no_follow_symlinks_keeps_links_inside_the_root(site: Path) -> None:
    r = resolve(site, "/link_in.css", follow_symlinks=False)
    assert r.kind is RouteKind.STATIC and r.real_path == os.path.join(real(site), "style.css")
    r = resolve(site, "/link_blog", follow_symlinks=False)
    assert r.kind is RouteKind.REDIRECT and r.location == "/link_blog/"
    r = resolve(site, "/link_blog/post.php", follow_symlinks=False)
    assert r.kind is RouteKind.PHP and r.real_path == os.path.join(real(site), "blog", "post.php")
    assert r.script_filename == os.path.join(real(site), "link_blog", "post.php")


def test_redirect_through_a_link_out_of_the_root(site: Path) -> None:
    r = resolve(site, "/link_dir_out")
    assert r.kind is RouteKind.REDIRECT and r.location == "/link_dir_out/"


def test_document_root_that_is_a_symlink_is_resolved(site: Path, tmp_path: Path) -> None:
    os.symlink(site, tmp_path / "current")
    r = resolve(tmp_path / "current", "/style.css")
    assert r.kind is RouteKind.STATIC
    assert r.document_root == real(site)
    assert r.real_path == os.path.join(real(site), "style.css")


def test_missing_document_root_raises(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError):
        resolve(tmp_path / "nope", "/")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        Router(tmp_path / "file")


@pytest.mark.parametrize(
    "options",
    [{"index": ""}, {"index": "a/b.php"}, {"index": ".."}, {"static_indexes": ["."]},
     {"allowed_hidden": [""]}, {"split_extensions": ["php"]}],
)
def test_router_refuses_invalid_names(site: Path, options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Router(site, **options)


def test_router_resolves_the_document_root_once(site: Path, tmp_path: Path) -> None:
    """As FrankenPHP's resolve_root_symlink: a deploy that swaps a "current" link is seen by
    the next Router (the next start), not in the middle of serving."""
    other = tmp_path / "other"
    other.mkdir()
    os.symlink(site, tmp_path / "current")
    router = Router(tmp_path / "current")
    os.unlink(tmp_path / "current")
    os.symlink(other, tmp_path / "current")
    r = router.resolve("/style.css")
    assert r.kind is RouteKind.STATIC and r.real_path == os.path.join(real(site), "style.css")
    assert Router(tmp_path / "current").document_root == real(other)


def test_router_from_many_threads(site: Path) -> None:
    """One Router, eight threads at once (the C call runs without the GIL): same answers."""
    router = Router(site)
    paths = ["/style.css", "/info.php/a/b", "/blog", "/.env", "/some/route", "/link_out.txt", "/tpl/page.css"]
    expected = [router.resolve(p, "q=1") for p in paths]
    results: list[list[Route]] = []

    def work() -> None:
        results.append([router.resolve(paths[i % len(paths)], "q=1") for i in range(700)])

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 8
    for got in results:
        assert all(r == expected[i % len(paths)] for i, r in enumerate(got))


def test_redirect_location_stays_one_header_line(site: Path) -> None:
    r = resolve(site, "/blog", query_string="a=1 2\r\nSet-Cookie: x\x7f")
    assert r.kind is RouteKind.REDIRECT
    assert r.location == "/blog/?a=1%202%0D%0ASet-Cookie:%20x%7F"


ATTACKS = [
    "/../secret.txt", "/%2e%2e/secret.txt", "/..%2fsecret.txt", "/..\\secret.txt", "//../secret.txt",
    "/.env", "/link_env.txt", "/link_out_env.txt", "/link_out_ssh/id_rsa", "/link_out_src.txt",
    "/index.php/../../secret.txt", "/blog/index.php/../../../secret.txt", "/\x00../secret.txt",
    "/" + "../" * 30 + "etc/passwd", "/" + "%2e%2e/" * 5 + "secret.txt", "/.git/../../secret.txt",
    wsgi("/\u2025/secret.txt"), wsgi("/\uff0e\uff0e/secret.txt"), "/./../secret.txt",
]


LINK_ATTACKS = ["/link_out.txt", "/link_dir_out/x.txt", "/link_out.php", "/link_dir_out/index.php"]


@pytest.mark.parametrize(
    ("path", "follow_symlinks"),
    [(p, True) for p in ATTACKS] + [(p, False) for p in ATTACKS + LINK_ATTACKS],
)
@pytest.mark.parametrize("with_front_controller", [True, False])
def test_no_attack_reaches_outside_or_hidden(
    site: Path, path: str, follow_symlinks: bool, with_front_controller: bool
) -> None:
    if not with_front_controller:
        (site / "index.php").unlink()
    r = resolve(site, path, follow_symlinks=follow_symlinks)
    root = real(site)
    if r.kind in (RouteKind.STATIC, RouteKind.PHP):
        assert r.real_path.startswith(root + os.sep), r
        rel = os.path.relpath(r.real_path, root).split(os.sep)
        assert not any(p.startswith(".") and p != ".well-known" for p in rel), r
        assert "secret" not in r.real_path and ".env" not in r.real_path
        if r.kind is RouteKind.STATIC:
            assert b"SECRET" not in b"".join(respond(r, {"REQUEST_METHOD": "GET"}).body)
    else:
        assert r.kind in (RouteKind.FORBIDDEN, RouteKind.BAD_REQUEST, RouteKind.NOT_FOUND), r


# ----------------------------------------------------------------------------------------------
# resolve(): no front controller -> 404
# ----------------------------------------------------------------------------------------------


def test_without_front_controller(bare_site: Path) -> None:
    assert resolve(bare_site, "/hello.txt").kind is RouteKind.STATIC
    assert resolve(bare_site, "/page.php").kind is RouteKind.PHP
    assert resolve(bare_site, "/sub/").script_name == "/sub/index.php"
    for path in ("/", "/missing", "/missing.php", "/nothing/", "/nothing", "/page.phpx"):
        r = resolve(bare_site, path)
        assert r.kind is RouteKind.NOT_FOUND and r.status == 404, path
        resp = respond(r, {})
        assert resp.status == 404 and b"".join(resp.body) == b"404 Not Found\n"


# ----------------------------------------------------------------------------------------------
# serve_static(): headers, conditional requests, ranges, HEAD
# ----------------------------------------------------------------------------------------------


def body_of(resp_body: Iterable[bytes]) -> bytes:
    try:
        return b"".join(resp_body)
    finally:
        close = getattr(resp_body, "close", None)
        if close:
            close()


def get(path: Path | str, method: str = "GET", **headers: str) -> tuple[int, dict[str, str], bytes]:
    environ: dict[str, Any] = {"REQUEST_METHOD": method}
    environ.update({"HTTP_" + k.upper(): v for k, v in headers.items()})
    r = serve_static(environ, path)
    hdrs = dict(r.headers)
    assert len(hdrs) == len(r.headers), "duplicate header"
    return r.status, hdrs, body_of(r.body)


def test_static_headers(site: Path) -> None:
    status, h, body = get(site / "data.bin")
    st = os.stat(site / "data.bin")
    assert status == 200 and body == DATA
    assert h["Content-Length"] == str(len(DATA))
    assert h["Content-Type"] == "application/octet-stream"
    assert h["Accept-Ranges"] == "bytes"
    assert h["Last-Modified"] == formatdate(int(st.st_mtime), usegmt=True)
    assert h["ETag"].startswith('"') and h["ETag"].endswith('"')


@pytest.mark.parametrize(
    ("name", "ctype"),
    [
        ("style.css", "text/css; charset=utf-8"),
        ("docs/index.html", "text/html; charset=utf-8"),
        ("empty.txt", "text/plain; charset=utf-8"),
        ("data.bin", "application/octet-stream"),
    ],
)
def test_content_type(site: Path, name: str, ctype: str) -> None:
    assert get(site / name)[1]["Content-Type"] == ctype


def test_content_type_of_images_and_archives(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"\x89PNG")
    (tmp_path / "x.tar.gz").write_bytes(b"\x1f\x8b")
    (tmp_path / "x.unknownext").write_bytes(b"?")
    assert get(tmp_path / "x.png")[1]["Content-Type"] == "image/png"
    assert get(tmp_path / "x.tar.gz")[1]["Content-Type"] == "application/gzip"
    assert get(tmp_path / "x.unknownext")[1]["Content-Type"] == "application/octet-stream"


def test_etag_changes_with_content(site: Path) -> None:
    p = site / "style.css"
    etag1 = get(p)[1]["ETag"]
    assert get(p)[1]["ETag"] == etag1
    p.write_text("body{color:red}")
    os.utime(p, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    assert get(p)[1]["ETag"] != etag1


def test_if_none_match(site: Path) -> None:
    p = site / "style.css"
    etag = get(p)[1]["ETag"]
    for inm in (etag, "W/" + etag, f'"other", {etag}', "*"):
        status, h, body = get(p, if_none_match=inm)
        assert status == 304 and body == b"", inm
        assert h["ETag"] == etag and "Last-Modified" in h
        assert "Content-Length" not in h
    status, _, body = get(p, if_none_match='"nope"')
    assert status == 200 and body == b"body{}"


def test_if_modified_since(site: Path) -> None:
    p = site / "style.css"
    lm = get(p)[1]["Last-Modified"]
    assert get(p, if_modified_since=lm)[0] == 304
    assert get(p, if_modified_since=formatdate(os.stat(p).st_mtime + 3600, usegmt=True))[0] == 304
    assert get(p, if_modified_since=formatdate(os.stat(p).st_mtime - 3600, usegmt=True))[0] == 200
    assert get(p, if_modified_since="not a date")[0] == 200
    # If-None-Match takes precedence over If-Modified-Since
    assert get(p, if_modified_since=lm, if_none_match='"other"')[0] == 200


def test_if_match_and_if_unmodified_since(site: Path) -> None:
    p = site / "style.css"
    h = get(p)[1]
    assert get(p, if_match=h["ETag"])[0] == 200
    assert get(p, if_match="*")[0] == 200
    assert get(p, if_match='"other"')[0] == 412
    assert get(p, if_match="W/" + h["ETag"])[0] == 412  # strong comparison
    assert get(p, if_unmodified_since=h["Last-Modified"])[0] == 200
    assert get(p, if_unmodified_since=formatdate(os.stat(p).st_mtime - 3600, usegmt=True))[0] == 412


def test_head(site: Path) -> None:
    p = site / "data.bin"
    g_status, g_headers, _ = get(p)
    status, h, body = get(p, method="HEAD")
    assert (status, h, body) == (g_status, g_headers, b"")
    # Range is defined for GET only: HEAD with Range gets the full-length headers
    status, h, body = get(p, method="HEAD", range="bytes=0-9")
    assert status == 200 and h["Content-Length"] == str(len(DATA)) and body == b""
    # conditional HEAD
    assert get(p, method="HEAD", if_none_match=g_headers["ETag"])[0] == 304


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_not_allowed(site: Path, method: str) -> None:
    status, h, _ = get(site / "style.css", method=method)
    assert status == 405 and h["Allow"] == "GET, HEAD"


N = len(DATA)


@pytest.mark.parametrize(
    ("rng", "first", "last"),
    [
        ("bytes=0-9", 0, 9),
        ("bytes=10-19", 10, 19),
        ("bytes=100-", 100, N - 1),
        ("bytes=-5", N - 5, N - 1),
        ("bytes=-1", N - 1, N - 1),
        (f"bytes=-{N + 100}", 0, N - 1),  # suffix longer than the file: all of it
        (f"bytes=0-{N + 100}", 0, N - 1),  # last clamped
        (f"bytes={N - 1}-{N - 1}", N - 1, N - 1),
        ("bytes = 5 - 6", 5, 6),
        ("BYTES=5-6", 5, 6),
    ],
)
def test_range_206(site: Path, rng: str, first: int, last: int) -> None:
    status, h, body = get(site / "data.bin", range=rng)
    assert status == 206
    assert body == DATA[first : last + 1]
    assert h["Content-Range"] == f"bytes {first}-{last}/{N}"
    assert h["Content-Length"] == str(last - first + 1)


@pytest.mark.parametrize("rng", [f"bytes={N}-", f"bytes={N + 5}-{N + 10}", "bytes=-0"])
def test_range_416(site: Path, rng: str) -> None:
    status, h, body = get(site / "data.bin", range=rng)
    assert status == 416 and body == b""
    assert h["Content-Range"] == f"bytes */{N}"


@pytest.mark.parametrize(
    "rng", ["bytes=9-5", "bytes=0-1,5-6", "items=0-5", "bytes=", "bytes=-", "bytes=a-b", "garbage"]
)
def test_range_ignored_gives_full_200(site: Path, rng: str) -> None:
    status, h, body = get(site / "data.bin", range=rng)
    assert status == 200 and body == DATA and "Content-Range" not in h


def test_range_on_empty_file(site: Path) -> None:
    assert get(site / "empty.txt", range="bytes=0-")[0] == 416
    assert get(site / "empty.txt", range="bytes=-5")[0] == 416
    status, h, body = get(site / "empty.txt")
    assert status == 200 and body == b"" and h["Content-Length"] == "0"


def test_if_range(site: Path) -> None:
    p = site / "data.bin"
    h = get(p)[1]
    assert get(p, range="bytes=0-9", if_range=h["ETag"])[0] == 206
    assert get(p, range="bytes=0-9", if_range=h["Last-Modified"])[0] == 206
    status, _, body = get(p, range="bytes=0-9", if_range='"stale"')
    assert status == 200 and body == DATA
    assert get(p, range="bytes=0-9", if_range="W/" + h["ETag"])[0] == 200
    old = formatdate(os.stat(p).st_mtime - 60, usegmt=True)
    assert get(p, range="bytes=0-9", if_range=old)[0] == 200


def test_large_file_is_chunked(tmp_path: Path) -> None:
    payload = os.urandom(300_000)
    (tmp_path / "big.bin").write_bytes(payload)
    r = serve_static({"REQUEST_METHOD": "GET"}, tmp_path / "big.bin", chunk_size=65536)
    chunks = list(r.body)
    assert len(chunks) == 5 and all(len(c) <= 65536 for c in chunks)
    assert b"".join(chunks) == payload
    r = serve_static({"REQUEST_METHOD": "GET", "HTTP_RANGE": "bytes=1000-199999"}, tmp_path / "big.bin")
    assert r.status == 206 and b"".join(r.body) == payload[1000:200000]


def test_file_wrapper_used_for_full_responses(site: Path) -> None:
    environ = {"REQUEST_METHOD": "GET", "wsgi.file_wrapper": wsgiref.util.FileWrapper}
    r = serve_static(environ, site / "data.bin")
    assert isinstance(r.body, wsgiref.util.FileWrapper)
    assert body_of(r.body) == DATA
    environ["HTTP_RANGE"] = "bytes=0-3"
    r = serve_static(environ, site / "data.bin")
    assert isinstance(r.body, FileChunks) and body_of(r.body) == DATA[:4]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_no_file_descriptor_leaks(site: Path) -> None:
    p = site / "data.bin"
    etag = get(p)[1]["ETag"]
    before = open_fds()
    for _ in range(20):
        serve_static({"REQUEST_METHOD": "HEAD"}, p)
        serve_static({"REQUEST_METHOD": "GET", "HTTP_IF_NONE_MATCH": etag}, p)
        serve_static({"REQUEST_METHOD": "GET", "HTTP_RANGE": f"bytes={N}-"}, p)
        serve_static({"REQUEST_METHOD": "GET"}, site / "empty.txt")
        serve_static({"REQUEST_METHOD": "GET"}, site / "assets")  # a directory: 404
        r = serve_static({"REQUEST_METHOD": "GET"}, p)
        r.body.close()  # type: ignore[attr-defined]  # never iterated: the server closes it
        r = serve_static({"REQUEST_METHOD": "GET"}, p)
        next(iter(r.body))
        r.body.close()  # type: ignore[attr-defined]  # client went away mid-body
    assert open_fds() == before


def test_serve_static_refuses_symlinks_and_missing_files(site: Path) -> None:
    assert get(site / "link_in.css")[0] == 403  # O_NOFOLLOW: pass the resolved path
    assert get(site / "nope.txt")[0] == 404
    assert get(site / "assets")[0] == 404
    assert get(site / "pipe")[0] == 404  # a FIFO: refused at once, without waiting for a writer


def test_respond_static_route(site: Path) -> None:
    route = resolve(site, "/link_in.css")
    resp = respond(route, {"REQUEST_METHOD": "GET"})
    assert resp.status == 200 and body_of(resp.body) == b"body{}"
    assert resp.status_line == "200 OK"
    with pytest.raises(ValueError):
        respond(resolve(site, "/info.php"), {})


# ----------------------------------------------------------------------------------------------
# cgi_environ()
# ----------------------------------------------------------------------------------------------


def waitress_like_environ(**overrides: Any) -> dict[str, Any]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/index.php/foo/bar",
        "QUERY_STRING": "a=1&b=%2F",
        "REQUEST_URI": "/index.php/foo/bar?a=1&b=%2F",
        "SERVER_NAME": "waitress.invalid",
        "SERVER_PORT": "8080",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_SOFTWARE": "waitress",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_HOST": "127.0.0.1",
        "REMOTE_PORT": "51234",
        "CONTENT_TYPE": "application/x-www-form-urlencoded",
        "CONTENT_LENGTH": "7",
        "HTTP_HOST": "localhost:8080",
        "HTTP_USER_AGENT": "curl/8",
        "HTTP_ACCEPT": "*/*",
        "HTTP_X_FORWARDED_FOR": "10.0.0.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": object(),
        "wsgi.errors": object(),
        "wsgi.version": (1, 0),
    }
    environ.update(overrides)
    return environ


def test_cgi_environ_php_with_path_info(site: Path) -> None:
    route = resolve(site, "/index.php/foo/bar")
    env = cgi_environ(waitress_like_environ(), route)
    root = real(site)
    expected = {
        "REQUEST_METHOD": "POST",
        "REQUEST_URI": "/index.php/foo/bar?a=1&b=%2F",
        "SCRIPT_NAME": "/index.php",
        "SCRIPT_FILENAME": os.path.join(root, "index.php"),
        "PATH_INFO": "/foo/bar",
        "PHP_SELF": "/index.php/foo/bar",
        "QUERY_STRING": "a=1&b=%2F",
        "DOCUMENT_ROOT": root,
        "DOCUMENT_URI": "/index.php",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "8080",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_SOFTWARE": "frankenpy",
        "GATEWAY_INTERFACE": "CGI/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_HOST": "127.0.0.1",
        "REMOTE_PORT": "51234",
        "REQUEST_SCHEME": "http",
        "CONTENT_TYPE": "application/x-www-form-urlencoded",
        "CONTENT_LENGTH": "7",
        "HTTP_HOST": "localhost:8080",
        "HTTP_USER_AGENT": "curl/8",
        "HTTP_ACCEPT": "*/*",
        "HTTP_X_FORWARDED_FOR": "10.0.0.1",
    }
    assert env == expected
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())


def test_cgi_environ_front_controller(site: Path) -> None:
    route = resolve(site, "/api/users/42")
    environ = waitress_like_environ(
        REQUEST_METHOD="GET", PATH_INFO="/api/users/42", QUERY_STRING="", REQUEST_URI="/api/users/42",
        CONTENT_TYPE="", CONTENT_LENGTH="",
    )
    env = cgi_environ(environ, route)
    assert env["REQUEST_URI"] == "/api/users/42"
    assert env["SCRIPT_NAME"] == "/index.php"
    assert env["PHP_SELF"] == "/index.php"
    assert env["DOCUMENT_URI"] == "/index.php"
    assert env["PATH_INFO"] == ""
    assert env["QUERY_STRING"] == ""
    assert env["CONTENT_LENGTH"] == "" and env["CONTENT_TYPE"] == ""


def test_cgi_environ_directory_index(site: Path) -> None:
    env = cgi_environ(waitress_like_environ(PATH_INFO="/blog/", REQUEST_URI="/blog/?p=2"),
                      resolve(site, "/blog/"))
    assert env["SCRIPT_NAME"] == "/blog/index.php"
    assert env["SCRIPT_FILENAME"] == os.path.join(real(site), "blog", "index.php")
    assert env["REQUEST_URI"] == "/blog/?p=2"


def test_cgi_environ_https_and_ports(site: Path) -> None:
    route = resolve(site, "/info.php")
    https = waitress_like_environ(**{"wsgi.url_scheme": "https", "HTTP_HOST": "example.com"})
    env = cgi_environ(https, route)
    assert env["HTTPS"] == "on" and env["REQUEST_SCHEME"] == "https"
    assert env["SERVER_NAME"] == "example.com" and env["SERVER_PORT"] == "443"
    env = cgi_environ(waitress_like_environ(HTTP_HOST="example.com"), route)
    assert "HTTPS" not in env and env["REQUEST_SCHEME"] == "http"
    assert env["SERVER_PORT"] == "80"
    env = cgi_environ(waitress_like_environ(HTTP_HOST="[::1]:8443"), route)
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("::1", "8443")
    env = cgi_environ(waitress_like_environ(HTTP_HOST="[::1]"), route)
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("::1", "80")
    environ = waitress_like_environ(SERVER_NAME="srv.local", SERVER_PORT="9000")
    del environ["HTTP_HOST"]  # HTTP/1.0 without Host: the server's own name and port
    env = cgi_environ(environ, route)
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("srv.local", "9000")
    assert "HTTP_HOST" not in env


def test_cgi_environ_copies_only_cgi_and_headers(site: Path) -> None:
    # granian puts the server's whole OS environment into each WSGI environ
    environ = waitress_like_environ(
        PATH="/usr/bin", HOME="/root", AWS_SECRET_ACCESS_KEY="s3cr3t", HTTP_PROXY="http://evil:1",
        **{"granian.extra": "x", "wsgi.multithread": True},
    )
    env = cgi_environ(environ, resolve(site, "/info.php"))
    for key in ("PATH", "HOME", "AWS_SECRET_ACCESS_KEY", "HTTP_PROXY", "granian.extra", "wsgi.multithread",
                "wsgi.input"):
        assert key not in env
    assert "REQUEST_TIME" not in env and "REQUEST_TIME_FLOAT" not in env


def test_cgi_environ_without_request_uri(site: Path) -> None:
    environ = waitress_like_environ(PATH_INFO=wsgi("/index.php/café bar"), QUERY_STRING="q=1")
    del environ["REQUEST_URI"]
    env = cgi_environ(environ, resolve(site, environ["PATH_INFO"]))
    assert env["REQUEST_URI"] == "/index.php/caf%C3%A9%20bar?q=1"
    assert env["PATH_INFO"] == "/café bar"
    environ = waitress_like_environ(PATH_INFO="/x", QUERY_STRING="", RAW_URI="/x%2Fy")  # gunicorn
    del environ["REQUEST_URI"]
    assert cgi_environ(environ, resolve(site, "/x"))["REQUEST_URI"] == "/x%2Fy"


def test_cgi_environ_absolute_form_request_uri(site: Path) -> None:
    environ = waitress_like_environ(REQUEST_URI="http://example.com/index.php/foo?x=1")
    assert cgi_environ(environ, resolve(site, "/index.php/foo"))["REQUEST_URI"] == "/index.php/foo?x=1"


def test_cgi_environ_mount_point(site: Path) -> None:
    environ = waitress_like_environ(SCRIPT_NAME="/app", PATH_INFO="/index.php/foo/bar",
                                    REQUEST_URI="/app/index.php/foo/bar")
    env = cgi_environ(environ, resolve(site, environ["PATH_INFO"]))
    assert env["SCRIPT_NAME"] == "/app/index.php"
    assert env["PHP_SELF"] == "/app/index.php/foo/bar"
    assert env["DOCUMENT_URI"] == "/app/index.php"
    assert env["PATH_INFO"] == "/foo/bar"


def test_cgi_environ_text_convention_and_bytes(site: Path) -> None:
    environ = waitress_like_environ(HTTP_X_NAME=wsgi("café"), HTTP_X_BIN="\xff\xfe")
    env = cgi_environ(environ, resolve(site, "/info.php"), extra={"APP_ENV": "prod", "SERVER_SOFTWARE": "X"})
    assert env["HTTP_X_NAME"] == "café"
    assert env["APP_ENV"] == "prod" and env["SERVER_SOFTWARE"] == "X"
    raw = environ_to_bytes(env)
    assert raw[b"HTTP_X_NAME"] == "café".encode()
    assert raw[b"HTTP_X_BIN"] == b"\xff\xfe"  # invalid UTF-8 survives byte-exact


def test_cgi_environ_needs_a_php_route(site: Path) -> None:
    with pytest.raises(ValueError):
        cgi_environ(waitress_like_environ(), resolve(site, "/style.css"))


def test_wsgi_to_text() -> None:
    assert wsgi_to_text(wsgi("/é/€")) == "/é/€"
    assert wsgi_to_text("/€") == "/€"  # already text
    assert wsgi_to_text("\xff").encode("utf-8", "surrogateescape") == b"\xff"


def test_route_is_immutable(site: Path) -> None:
    r = resolve(site, "/info.php")
    assert isinstance(r, Route)
    with pytest.raises(AttributeError):
        r.script_name = "/x.php"  # type: ignore[misc]
