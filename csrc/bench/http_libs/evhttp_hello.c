/* Hello world on libevent's evhttp: one event_base per thread, each on its own SO_REUSEPORT socket.
 * The smallest server each candidate library allows, to compare the libraries' own cost per
 * request before frankenpy's native request path picks one (scripts/bench_http_libs.py builds
 * and drives it).  Usage: evhttp_hello PORT [THREADS]; listens on 127.0.0.1 only. */
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/listener.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
static int port;
static void on_req(struct evhttp_request *req, void *arg)
{
    (void)arg;
    struct evbuffer *b = evhttp_request_get_output_buffer(req);
    evbuffer_add(b, "Hello, World!", 13);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "text/html; charset=UTF-8");
    evhttp_send_reply(req, 200, "OK", NULL);
}
static void *run(void *arg)
{
    (void)arg;
    struct event_base *base = event_base_new();
    struct evhttp *http = evhttp_new(base);
    evhttp_set_gencb(http, on_req, NULL);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), on = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof(on));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(0x7f000001)};
    if (bind(fd, (void *)&a, sizeof(a)) || listen(fd, 1024)) { perror("bind"); exit(1); }
    evhttp_accept_socket(http, fd);
    event_base_dispatch(base);
    return NULL;
}
int main(int argc, char **argv)
{
    port = atoi(argv[1]);
    int threads = argc > 2 ? atoi(argv[2]) : 2;
    pthread_t t[64];
    for (int i = 0; i < threads; i++) pthread_create(&t[i], NULL, run, NULL);
    pthread_join(t[0], NULL);
}
