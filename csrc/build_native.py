"""cffi build script for ``frankenpy._native`` (API mode), used by setup.py's ``cffi_modules``.

The C declarations come from the headers themselves, so Python and C cannot disagree on the
layout of ``fp_request``: the types of ``frankenpy.h`` (up to its ``@cdef-types-end`` marker) and
the whole of ``loader.h``, ``page_share.h`` and ``router.h``, with preprocessor lines removed.
The extension is not linked against libphp; it loads private copies of it at run time (see
``frankenpy/images.py``).
"""

import shlex
import subprocess
from pathlib import Path

from cffi import FFI

CSRC = Path(__file__).resolve().parent


def _pkg_config(package: str) -> tuple[list[str], list[str]]:
    """(compile flags, link flags) of ``package``; a clear error when it is missing."""
    try:
        cflags = subprocess.check_output(["pkg-config", "--cflags", package], text=True)
        libs = subprocess.check_output(["pkg-config", "--libs", package], text=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SystemExit(
            f"frankenpy: pkg-config cannot find {package} ({exc}); install libh2o-evloop-dev "
            "libssl-dev pkg-config (scripts/install_deps.sh)"
        ) from exc
    return shlex.split(cflags), shlex.split(libs)


# libh2o-evloop (Debian libh2o-evloop-dev, MIT): the native HTTP server's library.
H2O_CFLAGS, H2O_LIBS = _pkg_config("libh2o-evloop")
# OpenSSL (Debian libssl-dev): the server's own TLS contexts (tls_cert/tls_key); h2o links it too.
SSL_CFLAGS, SSL_LIBS = _pkg_config("openssl")


def _cdef_text(header: str, stop_marker: str | None = None) -> str:
    text = (CSRC / header).read_text()
    if stop_marker is not None:
        text = text.split(stop_marker, 1)[0]
    # cffi parses C declarations but not the preprocessor; FP_ABI_VERSION is exported below.
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


ffibuilder = FFI()
ffibuilder.cdef("#define FP_ABI_VERSION ...")
ffibuilder.cdef(_cdef_text("frankenpy.h", "/* @cdef-types-end */"))
ffibuilder.cdef(_cdef_text("loader.h"))
ffibuilder.cdef(_cdef_text("page_share.h"))
ffibuilder.cdef(_cdef_text("router.h"))  # the php_server router (frankenpy/http/routing.py)
# The native HTTP server (frankenpy/http/native.py); handoff.h stays C-only (pthread types).
ffibuilder.cdef(_cdef_text("http_server.h"))
ffibuilder.cdef(_cdef_text("pool.h"))
ffibuilder.cdef(_cdef_text("serve.h"))
# background workers' vars and tasks (frankenpy/worker_state.py)
ffibuilder.cdef(_cdef_text("worker_state.h", "/* @cdef-end */"))
ffibuilder.cdef(
    """
    extern "Python+C" int fp_py_output(void *, const char *, size_t);
    extern "Python+C" void fp_py_log(void *, int, const char *, uint32_t, const char *);
    extern "Python+C" size_t fp_py_read_body(void *, char *, size_t);
    extern "Python+C" void fp_py_time_limit(void *, int64_t, int);
    extern "Python+C" void fp_py_worker_ready(void *);
    extern "Python+C" int fp_py_next_request(void *, fp_request **);
    extern "Python+C" void fp_py_request_done(void *, fp_request *);
    extern "Python+C" void fp_py_stderr_output(void *, const char *, size_t);
    extern "Python+C" int fp_py_interim(void *, int, const char *, size_t);
    extern "Python+C" void fp_py_finish_request(void *, fp_request *);
    extern "Python+C" void fp_py_php_log(void *, int, const char *, size_t, const char *, size_t);
    extern "Python+C" int fp_py_ws_start(int64_t, int, const char *, char *, size_t);
    extern "Python+C" void fp_py_task_done(int64_t, int64_t);
    extern "Python+C" void fp_py_run_request(void *, int);
    """
)
ffibuilder.set_source(
    "frankenpy._native",
    '#include "loader.h"\n#include "page_share.h"\n#include "router.h"\n#include "serve.h"\n'
    '#include "worker_state.h"',
    # relative paths: setuptools refuses absolute ones
    sources=["csrc/loader.c", "csrc/page_share.c", "csrc/router.c",
             "csrc/handoff.c", "csrc/http_server.c", "csrc/serve.c", "csrc/worker_state.c",
             "csrc/pool.c"],
    include_dirs=["csrc"],
    define_macros=[("H2O_USE_LIBUV", "0")],
    libraries=["dl", "pthread"],
    extra_compile_args=["-Wall", "-Wextra", *H2O_CFLAGS, *SSL_CFLAGS],
    extra_link_args=[*H2O_LIBS, *SSL_LIBS],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
