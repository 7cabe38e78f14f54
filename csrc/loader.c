/* Interpreter image loader; see loader.h. */
#define _GNU_SOURCE /* RTLD_DEEPBIND */
#include "loader.h"
#include "worker_state.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Host callbacks, implemented in Python as cffi `extern "Python+C"` functions. */
int fp_py_output(void *handle, const char *data, size_t len);
void fp_py_log(void *handle, int type, const char *file, uint32_t line, const char *message);
size_t fp_py_read_body(void *handle, char *buf, size_t len);
void fp_py_time_limit(void *handle, int64_t seconds, int initial);
void fp_py_worker_ready(void *handle);
int fp_py_next_request(void *handle, fp_request **next);
void fp_py_request_done(void *handle, fp_request *done);
void fp_py_stderr_output(void *handle, const char *data, size_t len);
int fp_py_interim(void *handle, int status, const char *lines, size_t len);
void fp_py_finish_request(void *handle, fp_request *req);
void fp_py_php_log(void *handle, int level, const char *message, size_t message_len, const char *context,
                   size_t context_len);

static void chdir_begin(void);
static void chdir_end(void);

static const fp_host python_host = {
    fp_py_output, fp_py_log, NULL /* headers: read from the request */, fp_py_read_body, fp_py_time_limit,
    fp_py_worker_ready, chdir_begin, chdir_end, fp_py_next_request, fp_py_request_done,
    fp_py_stderr_output,
    fp_py_interim, fp_py_finish_request, fp_py_php_log,
    /* vars and tasks: process-wide, in C (worker_state.c) */
    fp_ws_host_ensure, fp_ws_host_set_vars, fp_ws_host_get_vars, fp_ws_host_send_task,
    fp_ws_host_receive_task, fp_ws_host_finish_task, fp_blob_release,
};

/* ---- the working directory ----------------------------------------------------------------------
 * One for the whole process, so one saved copy for every image: the directory the host had
 * before the first of the executions that called chdir() (`holders`), put back when the last
 * of them ends.  Per-image copies would race: two overlapping executions each saved ".", and the
 * one ending last put back the other's directory. */
static pthread_mutex_t cwd_mu = PTHREAD_MUTEX_INITIALIZER;
static int cwd_saved_fd = -1;
static int cwd_holders;

static void chdir_begin(void)
{
    pthread_mutex_lock(&cwd_mu);
    if (cwd_holders++ == 0) {
        cwd_saved_fd = open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    }
    pthread_mutex_unlock(&cwd_mu);
}

static void chdir_end(void)
{
    int failed = 0;
    pthread_mutex_lock(&cwd_mu);
    if (--cwd_holders == 0) {
        failed = cwd_saved_fd < 0 || fchdir(cwd_saved_fd) != 0;
        if (cwd_saved_fd >= 0) {
            close(cwd_saved_fd);
            cwd_saved_fd = -1;
        }
    }
    pthread_mutex_unlock(&cwd_mu);
    if (failed) {
        fp_py_log(NULL, 2 /* E_WARNING */, NULL, 0, "could not restore the working directory");
    }
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
