/*
 * Redirect the imports of one loaded shared object (x86_64 ELF, glibc).
 *
 * fp_interpose() rewrites the GOT slots through which ONE already-loaded object reaches named
 * symbols of other objects (its R_X86_64_JUMP_SLOT and R_X86_64_GLOB_DAT relocations), so that its
 * calls land in replacement functions.  Nothing else in the process is affected: other objects,
 * including other private copies of the same library, keep calling the real functions.
 *
 * Contract:
 *  - The object must be fully relocated (loaded with RTLD_NOW, or BIND_NOW as Debian's libphp is),
 *    otherwise a lazy PLT slot would be bound again by the dynamic linker on first use.
 *  - Slots in the RELRO segment (full RELRO) are made writable for the write and read-only again.
 *  - `original` receives what the first rewritten slot held, i.e. the function the object called
 *    until now (normally libc's).  A replacement calls it to pass a call through.
 *  - Each slot is replaced with one aligned store, so a thread calling through it meanwhile gets
 *    either function; the glue redirects libphp before php_module_startup() and each shared
 *    extension right after it, before any script runs.
 *  - Calling it twice on an object with the same table is harmless: the slots already hold the
 *    replacements and `original` is left alone.
 * Plain libc, no dependency.
 */
#ifndef FRANKENPY_INTERPOSE_H
#define FRANKENPY_INTERPOSE_H

#include <stddef.h>

typedef struct fp_interposition {
    const char *name;  /* the imported symbol, e.g. "sigaction" */
    void *replacement; /* where the object's calls go from now on */
    void **original;   /* out (may be NULL): what the slot held before, the real function */
} fp_interposition;

/* Redirect the imports listed in `table` of the loaded object that contains address `inside`
 * (any function or variable of it).  Symbols the object does not import are skipped.
 * Returns the number of slots rewritten, or -1 with errno set (object not found, EINVAL for a
 * dynamic section we do not understand, or mprotect's errno). */
int fp_interpose(const void *inside, fp_interposition *table, size_t count);

/* The same for the object of a dlopen() handle. */
int fp_interpose_handle(void *handle, fp_interposition *table, size_t count);

#endif
