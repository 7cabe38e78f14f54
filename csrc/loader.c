/* Interpreter image loader; see loader.h. */
#define _GNU_SOURCE /* RTLD_DEEPBIND */
#include "loader.h"
#include "worker_state.h"

#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Host callbacks, implemented in Python as cffi `extern "Python+C"` functions. */
int fp_py_output(void *handle, const char *data, size_t len);
void fp_py_log(void *handle, int type, const char *file, uint32_t line, const char *message);
size_t fp_py_read_body(void *handle, char *buf, size_t len);
void fp_py_time_limit(void *handle, int64_t seconds);
void fp_py_worker_ready(void *handle);
int fp_py_next_request(void *handle, fp_request **next);
void fp_py_request_done(void *handle, fp_request *done);

static void restore_host_signals(void);

static const fp_host python_host = {
    fp_py_output, fp_py_log, NULL /* headers: read from the request */, fp_py_read_body, fp_py_time_limit,
    fp_py_worker_ready, restore_host_signals, fp_py_next_request, fp_py_request_done,
    /* vars and tasks: process-wide, in C (worker_state.c) */
    fp_ws_host_ensure, fp_ws_host_set_vars, fp_ws_host_get_vars, fp_ws_host_send_task,
    fp_ws_host_receive_task, fp_ws_host_finish_task, fp_blob_release,
};

/* ---- SIGPROF ----------------------------------------------------------------------------------
 * Every libphp copy installs its own SIGPROF handler at each request start-up, process-wide.
 * The host's disposition is remembered here (one place for all copies) and put back: a handler
 * that lives inside a libphp image is PHP's, anything else is the host's (and may have changed
 * since we last looked, e.g. a profiler started). */
#define FP_MAX_IMAGES 1024
static pthread_mutex_t signal_mu = PTHREAD_MUTEX_INITIALIZER;
static struct sigaction host_sigprof; /* SIG_DFL until we have seen the host's */
static void *image_bases[FP_MAX_IMAGES];
static size_t image_count;
static void *php_handlers[16]; /* handlers already found to be PHP's (saves a dladdr) */
static size_t php_handler_count;

static int is_php_handler(void *handler)
{
    for (size_t i = 0; i < php_handler_count; i++) {
        if (php_handlers[i] == handler) {
            return 1;
        }
    }
    Dl_info info;
    if (!dladdr(handler, &info)) {
        return 0;
    }
    for (size_t i = 0; i < image_count; i++) {
        if (image_bases[i] == info.dli_fbase) {
            if (php_handler_count < sizeof(php_handlers) / sizeof(php_handlers[0])) {
                php_handlers[php_handler_count++] = handler;
            }
            return 1;
        }
    }
    return 0;
}

static void restore_host_signals(void)
{
    struct sigaction current;
    pthread_mutex_lock(&signal_mu);
    if (sigaction(SIGPROF, NULL, &current) == 0) {
        void *handler = (current.sa_flags & SA_SIGINFO) ? (void *)current.sa_sigaction
                                                        : (void *)current.sa_handler;
        if (handler != (void *)SIG_DFL && handler != (void *)SIG_IGN && is_php_handler(handler)) {
            sigaction(SIGPROF, &host_sigprof, NULL);
        } else {
            host_sigprof = current;
        }
    }
    pthread_mutex_unlock(&signal_mu);
}

static int remember_image(void *php)
{
    Dl_info info;
    void *symbol = dlsym(php, "php_request_startup");
    if (!symbol || !dladdr(symbol, &info)) {
        return -1;
    }
    pthread_mutex_lock(&signal_mu);
    int ok = image_count < FP_MAX_IMAGES;
    if (ok) {
        image_bases[image_count++] = info.dli_fbase;
    }
    pthread_mutex_unlock(&signal_mu);
    return ok ? 0 : -1;
}

struct fp_image {
    void *php;
    void *sapi;
    int (*startup)(const fp_host *, const char *, char *, size_t);
    void (*shutdown)(void);
    int (*execute)(fp_request *);
    void (*request_clear)(fp_request *);
    int (*interrupt)(uint64_t, int64_t, int);
    int (*abi_version)(void);
};

#define FP_DLFLAGS (RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND)

fp_image *fp_image_open(const char *php_path, const char *sapi_path, char *err, size_t err_len)
{
    fp_image *image = calloc(1, sizeof(*image));
    if (!image) {
        snprintf(err, err_len, "out of memory");
        return NULL;
    }
    /* libphp first: the glue's DT_NEEDED names it by its (rewritten) SONAME. */
    image->php = dlopen(php_path, FP_DLFLAGS);
    if (!image->php) {
        snprintf(err, err_len, "%s", dlerror());
        free(image);
        return NULL;
    }
    if (remember_image(image->php) != 0) {
        snprintf(err, err_len, "%s: not a usable libphp (or more than %d images)", php_path, FP_MAX_IMAGES);
        free(image);
        return NULL;
    }
    image->sapi = dlopen(sapi_path, FP_DLFLAGS);
    if (!image->sapi) {
        snprintf(err, err_len, "%s", dlerror());
        free(image); /* the libphp copy stays mapped: unloading PHP is never safe */
        return NULL;
    }
#define FP_SYM(field, name)                                                                    \
    do {                                                                                       \
        *(void **)&image->field = dlsym(image->sapi, name);                                    \
        if (!image->field) {                                                                   \
            snprintf(err, err_len, "%s: missing symbol %s", sapi_path, name);                  \
            free(image);                                                                       \
            return NULL;                                                                       \
        }                                                                                      \
    } while (0)
    FP_SYM(startup, "fp_startup");
    FP_SYM(shutdown, "fp_shutdown");
    FP_SYM(execute, "fp_execute");
    FP_SYM(request_clear, "fp_request_clear");
    FP_SYM(interrupt, "fp_interrupt");
    FP_SYM(abi_version, "fp_abi_version");
#undef FP_SYM
    if (image->abi_version() != FP_ABI_VERSION) {
        snprintf(err, err_len, "%s was built for glue ABI %d, the loader for %d", sapi_path,
                 image->abi_version(), FP_ABI_VERSION);
        free(image);
        return NULL;
    }
    return image;
}

int fp_image_startup(fp_image *image, const char *ini, char *err, size_t err_len)
{
    return image->startup(&python_host, ini, err, err_len);
}

void fp_image_shutdown(fp_image *image)
{
    image->shutdown();
}

int fp_image_execute(fp_image *image, fp_request *req)
{
    return image->execute(req);
}

void fp_image_request_clear(fp_image *image, fp_request *req)
{
    image->request_clear(req);
}

int fp_image_interrupt(fp_image *image, uint64_t exec_id, int64_t seconds, int signo)
{
    return image->interrupt(exec_id, seconds, signo);
}

static void ignore_signal(int signo)
{
    (void)signo;
}

int fp_install_interrupt_signal(int signo)
{
    restore_host_signals(); /* first look at the host's SIGPROF disposition */
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = ignore_signal;
    sa.sa_flags = SA_ONSTACK; /* no SA_RESTART: interrupted syscalls return EINTR */
    sigemptyset(&sa.sa_mask);
    return sigaction(signo, &sa, NULL);
}

int fp_interrupt_signal(void)
{
    return SIGRTMIN + 7;
}
