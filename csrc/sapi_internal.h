/*
 * What the glue's files share inside one copy of the glue (csrc/sapi.c and
 * csrc/worker_functions.c).  Hidden symbols: every copy binds to its own (RTLD_DEEPBIND), and
 * nothing here is part of the fp_* contract of frankenpy.h.
 */
#ifndef FRANKENPY_SAPI_INTERNAL_H
#define FRANKENPY_SAPI_INTERNAL_H

#include "glue_internal.h" /* fp_glue_host() */

#define FP_HIDDEN __attribute__((visibility("hidden")))

/* sapi.c: the execution in progress (the worker script for workers). */
FP_HIDDEN fp_request *fp_glue_script_request(void);
/* Set (atomically) once the execution in progress is interrupted: host waits end on it. */
FP_HIDDEN const int *fp_glue_stop_flag(void);
/* An HTTP worker that has not called frankenphp_handle_request() yet (still booting). */
FP_HIDDEN int fp_glue_worker_booting(void);

/* worker_functions.c: forget the snapshots frankenphp_get_vars() returned, so that the next
 * call reads the latest.  Called at each request's start and end: before request shutdown
 * (they live in the request's heap), and after it with heap_gone = 1 (only forgets them). */
FP_HIDDEN void fp_wf_reset_views(int heap_gone);
/* worker_functions.c: the frankenphp module's MINIT (registers FrankenPHP\WorkerHandle). */
FP_HIDDEN zend_result fp_wf_minit(INIT_FUNC_ARGS);

#endif
