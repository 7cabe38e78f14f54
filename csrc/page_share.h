/*
 * Sharing the read-only pages of private library copies with the file they were copied from.
 *
 * Every PHP thread loads its own byte copy of libphp, of the glue and of each shared extension
 * (frankenpy/images.py).  A copy differs from its source only in a few bytes of .dynstr (the
 * rewritten SONAME / DT_NEEDED names), so its text and read-only data are byte-identical, at the
 * same file offsets, but the page cache holds them once per copy, because each copy is its own
 * file.  fp_share_pages() maps the source file over the copy's identical read-only pages with
 * mmap(MAP_FIXED | MAP_PRIVATE): they become the source's page-cache pages, shared by every
 * copy and with every other process that maps the source (php-fpm, apache's mod_php).
 *
 * Safety rules:
 *  - only PT_LOAD segments without PF_W are touched: writable and relocated pages (.data, .got,
 *    RELRO, which are written by the dynamic linker before it makes them read-only) never are;
 *  - the caller says which pages of the copy differ from the source, having compared the two
 *    files byte for byte (frankenpy/images.py does it once per copy and keeps the answer beside
 *    it, tied to both files' identities); those pages, and any page reaching past the source's
 *    end, keep the copy's bytes;
 *  - the source opened here must still be the file that was compared (same device, inode, size
 *    and modification time), or nothing is mapped: a library replaced in between is never
 *    mapped over code it does not match;
 *  - the replacement has the same address, length and protection, and equal contents, so code
 *    running in the copy meanwhile is not disturbed (the kernel swaps the mapping under its
 *    mmap lock; a thread still using the old page sees the same bytes).
 * Comparing the files once instead of the mapped pages at every load keeps start-up as fast as
 * without sharing, and the copy's read-only pages never enter the page cache at all.
 * A source later replaced by a package upgrade (dpkg renames a new file into place) keeps its
 * old inode alive for the mappings.  A source overwritten in place would break these mappings,
 * as it breaks the dynamic linker's own mappings of any library.
 *
 * Thread-safe; any thread.  No allocation survives the call.
 */
#ifndef FRANKENPY_PAGE_SHARE_H
#define FRANKENPY_PAGE_SHARE_H

#include <stddef.h>
#include <stdint.h>

/* Result of one fp_share_pages() call. */
typedef struct fp_share_result {
    size_t pages_shared;   /* read-only pages now mapped from the source */
    size_t pages_kept;     /* read-only pages left private: they differ from the source */
} fp_share_result;

/* The identity of the source file when it was compared with the copy (from stat()). */
typedef struct fp_file_identity {
    uint64_t device;
    uint64_t inode;
    int64_t size;
    int64_t mtime_ns;
} fp_file_identity;

/* Map `source_path` over the read-only pages of the loaded object whose path is `loaded_path`
 * (as given to dlopen), except the `n_differing` pages listed in `differing` (file offset / page
 * size, ascending): they differ between the two files.  `compared` is the source's identity
 * when the files were compared.  Returns 0 and fills `result`; 1 when no object is loaded from
 * that path (nothing done); or -1 with the reason in `err` (source unreadable or changed since
 * it was compared, mmap failure): the object is then untouched, or partly shared if mmap failed
 * midway (each page is either the copy's or an equal source page, so both are correct). */
int fp_share_pages(const char *loaded_path, const char *source_path, const fp_file_identity *compared,
                   const uint64_t *differing, size_t n_differing, fp_share_result *result, char *err,
                   size_t err_len);

#endif
