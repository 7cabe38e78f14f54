"""The read-only pages of the private library copies are shared with the files they were copied
from (csrc/page_share.h): libphp's text with the system's libphp8.2.so, each extension copy's with
its template.  Real copies, real mappings, read back from /proc/self/smaps."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from frankenpy import _native
from frankenpy.images import differing_pages, find_libphp

ffi, lib = _native.ffi, _native.lib


@dataclass
class Mapping:
    start: int
    end: int
    perms: str
    path: str
    rss_kb: int = 0
    pss_kb: int = 0


def smaps() -> list[Mapping]:
    """Every mapping of this process with its Rss and Pss."""
    mappings: list[Mapping] = []
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5 and not fields[0].endswith(":"):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            mappings.append(Mapping(start, end, fields[1], fields[5] if len(fields) > 5 else ""))
        elif fields[0] == "Rss:":
            mappings[-1].rss_kb = int(fields[1])
        elif fields[0] == "Pss:":
            mappings[-1].pss_kb = int(fields[1])
    return mappings


def test_text_of_every_php_thread_is_the_system_libphp(make_runtime, tmp_path):
    rt = make_runtime(num_threads=4, extensions=["ctype", "mbstring"])
    for _ in range(8):  # touch the text and the extensions on every thread
        assert rt.execute_code('echo ctype_digit("42") ? mb_strlen("héllo") : 0;').output == b"5"
    libphp = str(find_libphp().resolve())
    mappings = smaps()
    system_text = [m for m in mappings if m.path == libphp and "x" in m.perms]
    assert len(system_text) >= 4, "each PHP thread's libphp text should be mapped from the system file"
    # No executable page comes from a private copy of libphp, the glue or an extension.
    cache_root = os.environ.get("FRANKENPY_CACHE_DIR") or str(Path.home() / ".cache" / "frankenpy")
    private_text = [
        m for m in mappings
        if "x" in m.perms and m.path.startswith(cache_root) and "/templates/" not in m.path
    ]
    assert private_text == [], [m.path for m in private_text]
    # The pages are counted once for all copies: proportional size well below resident size.
    rss = sum(m.rss_kb for m in system_text)
    pss = sum(m.pss_kb for m in system_text)
    assert rss > 0 and pss <= rss / 2, (rss, pss)


def _first_text_segment(data: bytes) -> tuple[int, int, int]:
    """(file offset, virtual address, file size) of the first executable PT_LOAD of an ELF64."""
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(phnum):
        header = struct.unpack_from("<IIQQQQ", data, phoff + i * phentsize)
        p_type, flags, offset, vaddr, _paddr, filesz = header
        if p_type == 1 and flags & 1:  # PT_LOAD, PF_X
            return offset, vaddr, filesz
    raise AssertionError("no executable segment")


def _share(copy: Path, source: Path, compared: list[int] | None = None) -> tuple[int, int, int, str]:
    """fp_share_pages() with the pages differing_pages() found; (rc, shared, kept, error)."""
    identity, differ = differing_pages(copy, source)
    result = ffi.new("fp_share_result *")
    err = ffi.new("char[]", 512)
    rc = lib.fp_share_pages(
        str(copy).encode(), str(source).encode(), ffi.new("fp_file_identity *", compared or identity),
        ffi.new("uint64_t[]", differ), len(differ), result, err, len(err),
    )
    return rc, result.pages_shared, result.pages_kept, ffi.string(err).decode()


def _copy_and_changed_source(tmp_path: Path) -> tuple[Path, Path, bytes, int, int]:
    """A loaded copy of a small shared object, and a source that differs from it by one byte in
    the text's second page: (copy, source, original bytes, changed offset, its address)."""
    import _json  # a small shared object with no dependencies, loaded once more as a copy

    original = Path(_json.__file__).read_bytes()
    offset, vaddr, size = _first_text_segment(original)
    page = os.sysconf("SC_PAGE_SIZE")
    assert size > 2 * page, "the test needs a text segment of a few pages"
    changed_at = (offset + page) // page * page + 100  # inside the text's second page
    source = bytearray(original)
    source[changed_at] ^= 0xFF
    copy_path, source_path = tmp_path / "copy.so", tmp_path / "source.so"
    copy_path.write_bytes(original)
    source_path.write_bytes(bytes(source))
    ctypes.CDLL(str(copy_path), mode=os.RTLD_LOCAL)
    base = min(m.start for m in smaps() if m.path == str(copy_path))
    return copy_path, source_path, original, changed_at, base + vaddr + (changed_at - offset)


def test_a_page_that_differs_keeps_the_copys_bytes(tmp_path):
    copy_path, source_path, original, changed_at, address = _copy_and_changed_source(tmp_path)
    assert differing_pages(copy_path, source_path)[1] == [changed_at // os.sysconf("SC_PAGE_SIZE")]
    rc, shared, kept, error = _share(copy_path, source_path)
    assert rc == 0 and kept == 1 and shared >= 1, error
    assert ctypes.string_at(address, 1) == original[changed_at : changed_at + 1]
    mapped_from = {m.path for m in smaps() if "x" in m.perms and m.path in (str(copy_path), str(source_path))}
    assert mapped_from == {str(copy_path), str(source_path)}  # the differing page stayed the copy's
    # The comparison is kept beside the copy, tied to both files.
    kept_record = json.loads((tmp_path / "copy.so.pages").read_text())
    assert kept_record["differ"] == [changed_at // os.sysconf("SC_PAGE_SIZE")]


def test_a_source_changed_since_the_comparison_is_not_mapped(tmp_path):
    copy_path, source_path, *_ = _copy_and_changed_source(tmp_path)
    identity = differing_pages(copy_path, source_path)[0]
    stale = [identity[0], identity[1], identity[2], identity[3] - 1]  # another modification time
    rc, shared, _, error = _share(copy_path, source_path, compared=stale)
    assert rc == -1 and shared == 0 and "changed since it was compared" in error
    assert {m.path for m in smaps() if m.path == str(source_path)} == set()


def test_a_stale_comparison_is_made_again(tmp_path):
    copy_path, source_path, original, *_ = _copy_and_changed_source(tmp_path)
    differing_pages(copy_path, source_path)
    before = source_path.stat().st_mtime_ns
    source_path.write_bytes(original)  # the source changes: now equal to the copy everywhere
    os.utime(source_path, ns=(before + 1_000_000, before + 1_000_000))  # whatever the clock's grain
    assert differing_pages(copy_path, source_path)[1] == []


def test_an_object_that_is_not_loaded_is_left_alone(tmp_path):
    missing = tmp_path / "never-loaded.so"
    shutil.copyfile(find_libphp(), missing)
    assert _share(missing, Path(find_libphp()))[0] == 1


@pytest.mark.timeout(60)
def test_running_threads_survive_a_package_upgrade_of_libphp(tmp_path):
    """dpkg renames the new libphp into place: the old file's pages stay mapped and in use."""
    libphp = tmp_path / "libphp8.2.so"
    shutil.copyfile(find_libphp(), libphp)
    code = textwrap.dedent(
        f"""
        import os, shutil, frankenpy
        rt = frankenpy.Runtime(2)
        rt.start()
        assert rt.execute_code("echo strrev('abc');").output == b"cba"
        upgraded = {str(libphp)!r} + ".dpkg-new"
        with open(upgraded, "wb") as f:
            f.write(b"\\0" * os.path.getsize({str(libphp)!r}))
        os.replace(upgraded, {str(libphp)!r})
        for _ in range(200):
            assert rt.execute_code("echo json_encode(range(1, 3));").output == b"[1,2,3]"
        rt.shutdown()
        print("ok")
        """
    )
    env = {**os.environ, "FRANKENPY_LIBPHP": str(libphp), "FRANKENPY_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=50)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
