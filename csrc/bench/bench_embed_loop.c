/*
 * bench_embed_loop: the floor of a PHP request in this process, with the STOCK embed SAPI.
 *
 * Times N iterations of
 *     php_request_startup(); php_execute_script(FILE); php_request_shutdown();
 * on one thread, with libphp's own embed SAPI (php_embed_init), no opcache (Debian's
 * opcache.so stays disabled under the SAPI name "embed"). Output is discarded by a
 * ub_write that only counts bytes. Any per-request path of frankenpy is compared with this.
 *
 * Usage: bench_embed_loop [-n | -c INI [-s NAME]] FILE [ITERATIONS]
 *   -n          ignore php.ini and the ini scan dir (/etc/php/8.2/embed/conf.d), so only
 *               the extensions built into libphp are loaded (like `php -n`)
 *   -c INI      read INI as php.ini (set PHP_INI_SCAN_DIR= to skip the scan dir too)
 *   -s NAME     the SAPI's name: opcache enables itself only under names it knows
 *               ("frankenphp", as frankenpy's glue; never "embed")
 *   ITERATIONS  timed requests (default 20000); a few untimed warm-up requests run first
 *
 * Prints one machine-readable line on stdout, e.g.
 *     bare_embed_loop_us_per_request=11.83 iterations=20000 bytes_per_request=13 ini=system
 * Exits 1 if a request fails to start, a script fails, or nothing was written.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sapi/embed/php_embed.h>

#define DEFAULT_ITERATIONS 20000L
#define WARMUP_ITERATIONS 100L

static size_t bytes_written;

/* Discard the body; count it so we can tell the script really ran. */
static size_t discard_write(const char *str, size_t len)
{
    (void)str;
    bytes_written += len;
    return len;
}

static void discard_flush(void *server_context)
{
    (void)server_context;
}

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

/* One full request: start-up, run the script, shut down. Returns 0 on success. */
static int one_request(const char *path)
{
    zend_file_handle fh;
    bool ok;

    if (php_request_startup() == FAILURE) {
        fprintf(stderr, "bench_embed_loop: php_request_startup failed\n");
        return -1;
    }
    zend_stream_init_filename(&fh, path);
    ok = php_execute_script(&fh);
    zend_destroy_file_handle(&fh);
    php_request_shutdown(NULL);
    if (!ok) {
        fprintf(stderr, "bench_embed_loop: php_execute_script(%s) failed\n", path);
        return -1;
    }
    return 0;
}

static void usage(void)
{
    fprintf(stderr, "usage: bench_embed_loop [-n | -c INI [-s NAME]] FILE [ITERATIONS]\n");
}

int main(int argc, char **argv)
{
    char path[PATH_MAX];
    long iterations = DEFAULT_ITERATIONS;
    int ignore_ini = 0;
    char *ini_path = NULL, *sapi_name = NULL;
    int argi = 1;
    int rc = 0;
    size_t bytes_before;
    double t0, t1;
    long i;

    for (; argi < argc && argv[argi][0] == '-'; argi++) {
        if (strcmp(argv[argi], "-n") == 0) {
            ignore_ini = 1;
        } else if (strcmp(argv[argi], "-c") == 0 && argi + 1 < argc) {
            ini_path = argv[++argi];
        } else if (strcmp(argv[argi], "-s") == 0 && argi + 1 < argc) {
            sapi_name = argv[++argi];
        } else {
            usage();
            return 2;
        }
    }
    if (argc - argi < 1 || argc - argi > 2) {
        usage();
        return 2;
    }
    /* Absolute path: php_execute_script chdir()s into the script's directory. */
    if (!realpath(argv[argi], path)) {
        fprintf(stderr, "bench_embed_loop: %s: %s\n", argv[argi], strerror(errno));
        return 2;
    }
    if (argc - argi == 2) {
        char *end;
        errno = 0;
        iterations = strtol(argv[argi + 1], &end, 10);
        if (errno || *end || iterations <= 0) {
            usage();
            return 2;
        }
    }

    /* Must be set before php_embed_init(), which starts the module. */
    php_embed_module.ub_write = discard_write;
    php_embed_module.flush = discard_flush;
    php_embed_module.php_ini_ignore = ignore_ini;
    if (ini_path) {
        php_embed_module.php_ini_path_override = ini_path;
    }
    if (sapi_name) {
        php_embed_module.name = sapi_name;
    }

    if (php_embed_init(1, argv) == FAILURE) {
        fprintf(stderr, "bench_embed_loop: php_embed_init failed\n");
        return 1;
    }
    /* php_embed_init() leaves a request open: close it so each loop turn is a whole request. */
    php_request_shutdown(NULL);

    for (i = 0; i < WARMUP_ITERATIONS && rc == 0; i++) {
        rc = one_request(path);
    }

    bytes_before = bytes_written;
    t0 = now_us();
    for (i = 0; i < iterations && rc == 0; i++) {
        rc = one_request(path);
    }
    t1 = now_us();

    /* php_embed_shutdown() ends the current request first, so open one for it. */
    php_request_startup();
    php_embed_shutdown();

    if (rc != 0) {
        return 1;
    }
    if (bytes_written == bytes_before) {
        fprintf(stderr, "bench_embed_loop: the script wrote nothing\n");
        return 1;
    }
    printf("bare_embed_loop_us_per_request=%.2f iterations=%ld bytes_per_request=%zu ini=%s\n",
           (t1 - t0) / (double)iterations, iterations,
           (bytes_written - bytes_before) / (size_t)iterations,
           ignore_ini ? "none" : ini_path ? ini_path : "system");
    return 0;
}
