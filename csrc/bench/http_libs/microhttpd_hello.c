/* Hello world on libmicrohttpd: its internal thread pool (epoll), THREADS threads.
 * The smallest server each candidate library allows, to compare the libraries' own cost per
 * request before frankenpy's native request path picks one (scripts/bench_http_libs.py builds
 * and drives it).  Usage: microhttpd_hello PORT [THREADS]; listens on 127.0.0.1 only. */
#include <microhttpd.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
static enum MHD_Result on_req(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                              const char *version, const char *data, size_t *size, void **ptr)
{
    (void)cls; (void)url; (void)method; (void)version; (void)data; (void)size;
    static int seen;
    if (*ptr == NULL) {
        /* The first call only announces the request: answering it now would make MHD close the
         * connection (it cannot know the body was read), which would cost keep-alive. */
        *ptr = &seen;
        return MHD_YES;
    }
    static const char body[] = "Hello, World!";
    struct MHD_Response *r = MHD_create_response_from_buffer(sizeof(body) - 1, (void *)body, MHD_RESPMEM_PERSISTENT);
    MHD_add_response_header(r, "Content-Type", "text/html; charset=UTF-8");
    enum MHD_Result ret = MHD_queue_response(c, 200, r);
    MHD_destroy_response(r);
    return ret;
}
int main(int argc, char **argv)
{
    int port = atoi(argv[1]);
    unsigned threads = argc > 2 ? atoi(argv[2]) : 2;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(0x7f000001)};
    struct MHD_Daemon *d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL, port, NULL, NULL,
                                            on_req, NULL, MHD_OPTION_SOCK_ADDR, &a,
                                            MHD_OPTION_THREAD_POOL_SIZE, threads,
                                            MHD_OPTION_CONNECTION_LIMIT, 4096, MHD_OPTION_END);
    if (!d) { fprintf(stderr, "MHD_start_daemon failed\n"); return 1; }
    for (;;) pause();
}
