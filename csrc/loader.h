/*
 * frankenpy._native: the CPython extension (cffi, API mode) that loads interpreter images.
 *
 * An image is a private copy of libphp plus a private copy of libfrankenpy_sapi bound to it
 * (see frankenpy/images.py).  The loader opens both with RTLD_LOCAL | RTLD_DEEPBIND, so that each
 * copy binds to its own symbols even after PHP loads an extension with RTLD_GLOBAL, and calls the
 * glue through a table of function pointers.  It is not linked against libphp itself.
 */
#ifndef FRANKENPY_LOADER_H
#define FRANKENPY_LOADER_H

#include "frankenpy.h"

typedef struct fp_image fp_image;

/* Load the libphp copy at `php_path`, then the glue copy at `sapi_path` that needs it.
 * Returns NULL with the dlerror() text in err. */
fp_image *fp_image_open(const char *php_path, const char *sapi_path, char *err, size_t err_len);

/* Thin forwards to the image's copy of the fp_* functions of frankenpy.h.  fp_image_startup
 * passes the host callbacks implemented in Python (frankenpy/runtime.py). */
int fp_image_startup(fp_image *image, const char *ini, char *err, size_t err_len);
void fp_image_shutdown(fp_image *image);
int fp_image_execute(fp_image *image, fp_request *req);
void fp_image_request_clear(fp_image *image, fp_request *req);
int fp_image_interrupt(fp_image *image, uint64_t exec_id, int64_t seconds, int signo);

/* Install a handler that does nothing for `signo`, without SA_RESTART, so that pthread_kill()
 * from fp_interrupt() makes a blocking syscall of a PHP thread return EINTR.  Returns 0 or -1. */
int fp_install_interrupt_signal(int signo);

/* The signal number frankenpy uses for that: SIGRTMIN + 7 (real-time, unused by glibc, Python
 * or PHP). */
int fp_interrupt_signal(void);

#endif
