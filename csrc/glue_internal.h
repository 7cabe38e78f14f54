/*
 * Internal interface between the parts of the C glue (sapi.c and http_functions.c): the few
 * per-copy statics of sapi.c that the request functions need.  Hidden: each glue copy resolves
 * them to its own definitions, and the host never sees them.
 */
#ifndef FRANKENPY_GLUE_INTERNAL_H
#define FRANKENPY_GLUE_INTERNAL_H

#include "frankenpy.h"

#include <php.h>

#define FP_INTERNAL __attribute__((visibility("hidden")))

/* The host callbacks of the execution in progress: its own table (fp_request.host), else this
 * copy's (fp_startup()). */
FP_INTERNAL const fp_host *fp_glue_host(void);
/* This copy's own table (fp_startup()), whatever the request: the process-wide callbacks (the
 * workers' vars and tasks) are only there, since a request's table (the native server's) covers
 * its response only. */
FP_INTERNAL const fp_host *fp_glue_process_host(void);
/* Where output and headers go now: the execution, or the HTTP worker's request in progress. */
FP_INTERNAL fp_request *fp_glue_current(void);
/* $_SERVER entries derived from the Authorization header (http_functions.c). */
FP_INTERNAL void fp_register_auth_variables(zval *track_vars);

#endif
