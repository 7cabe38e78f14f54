"""Build of frankenpy: a cffi extension (``frankenpy._native``) and the SAPI glue library.

``frankenpy._native`` is an ordinary CPython extension built by cffi from ``csrc/build_native.py``;
``frankenpy._fastcall`` (``csrc/fastcall.c``) a hand-written one that runs the common case of
``Runtime.execute_file``/``execute_code`` without a Python frame, through ``_native``'s functions.
``libfrankenpy_sapi.so`` (``csrc/sapi.c``) is a plain shared library linked against Debian's
libphp8.2; frankenpy never loads it as is, but copies it once per PHP thread (see
``frankenpy/images.py``).  It needs ``php-config8.2`` and the PHP headers: ``php8.2-dev``.
"""

import os
import shlex
import shutil
import subprocess

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

PHP_CONFIG = os.environ.get("PHP_CONFIG", "php-config8.2")
SAPI_LIBRARY = "libfrankenpy_sapi.so"


def php_config(option: str) -> str:
    if shutil.which(PHP_CONFIG) is None:
        raise SystemExit(
            f"frankenpy: {PHP_CONFIG} not found; install the PHP headers first: "
            "apt-get install -y libphp8.2-embed php8.2-dev (or run scripts/install_deps.sh)"
        )
    return subprocess.check_output([PHP_CONFIG, option], text=True).strip()


class BuildExtWithSapi(build_ext):
    """Builds the cffi extension, then the SAPI library next to it in the package."""

    def run(self) -> None:
        super().run()
        self.build_sapi_library()

    def build_sapi_library(self) -> None:
        include_dirs = [flag[2:] for flag in shlex.split(php_config("--includes"))]
        objects = self.compiler.compile(
            ["csrc/sapi.c", "csrc/interpose.c", "csrc/http_functions.c", "csrc/worker_functions.c"],
            output_dir=self.build_temp,
            include_dirs=["csrc", *include_dirs],
            extra_postargs=["-fPIC", "-O2", "-Wall", "-Wextra"],
        )
        package_dir = "frankenpy" if self.inplace else os.path.join(self.build_lib, "frankenpy")
        self.compiler.link_shared_object(
            objects,
            os.path.join(package_dir, SAPI_LIBRARY),
            libraries=["php8.2"],
            library_dirs=[os.path.join(php_config("--prefix"), "lib")],
            extra_postargs=["-Wl,--no-undefined", "-lpthread"],
        )


setup(
    ext_modules=[
        Extension(
            "frankenpy._fastcall",
            ["csrc/fastcall.c"],
            include_dirs=["csrc"],
            depends=["csrc/serve.h", "csrc/pool.h", "csrc/frankenpy.h"],
            extra_compile_args=["-O2", "-Wall", "-Wextra"],
        )
    ],
    cffi_modules=["csrc/build_native.py:ffibuilder"],
    cmdclass={"build_ext": BuildExtWithSapi},
)
