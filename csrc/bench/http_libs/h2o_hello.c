/* Hello world on libh2o-evloop: one event loop per thread, each on its own SO_REUSEPORT socket
 * (run-to-completion, the model issue 8 measures).
 * The smallest server each candidate library allows, to compare the libraries' own cost per
 * request before frankenpy's native request path picks one (scripts/bench_http_libs.py builds
 * and drives it).  Usage: h2o_hello PORT [THREADS]; listens on 127.0.0.1 only. */
#include <h2o.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
static h2o_globalconf_t config;
static int port;
static int on_req(h2o_handler_t *self, h2o_req_t *req)
{
    (void)self;
    static h2o_generator_t generator = {NULL, NULL};
    req->res.status = 200;
    req->res.reason = "OK";
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, H2O_STRLIT("text/html; charset=UTF-8"));
    req->res.content_length = 13;
    h2o_start_response(req, &generator);
    h2o_iovec_t body = h2o_iovec_init(H2O_STRLIT("Hello, World!"));
    h2o_send(req, &body, 1, H2O_SEND_STATE_FINAL);
    return 0;
}
static void on_accept(h2o_socket_t *listener, const char *err)
{
    if (err) return;
    h2o_socket_t *sock = h2o_evloop_socket_accept(listener);
    if (sock) h2o_accept(listener->data, sock);
}
static void *run(void *arg)
{
    (void)arg;
    h2o_context_t *ctx = calloc(1, sizeof(*ctx));
    h2o_context_init(ctx, h2o_evloop_create(), &config);
    h2o_accept_ctx_t *actx = calloc(1, sizeof(*actx));
    actx->ctx = ctx;
    actx->hosts = config.hosts;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), on = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof(on));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(0x7f000001)};
    if (bind(fd, (void *)&a, sizeof(a)) || listen(fd, 1024)) { perror("bind"); exit(1); }
    h2o_socket_t *sock = h2o_evloop_socket_create(ctx->loop, fd, H2O_SOCKET_FLAG_DONT_READ);
    sock->data = actx;
    h2o_socket_read_start(sock, on_accept);
    for (;;) h2o_evloop_run(ctx->loop, INT32_MAX);
    return NULL;
}
int main(int argc, char **argv)
{
    port = atoi(argv[1]);
    int threads = argc > 2 ? atoi(argv[2]) : 2;
    h2o_config_init(&config);
    h2o_hostconf_t *host = h2o_config_register_host(&config, h2o_iovec_init(H2O_STRLIT("default")), 65535);
    h2o_pathconf_t *path = h2o_config_register_path(host, "/", 0);
    h2o_create_handler(path, sizeof(h2o_handler_t))->on_req = on_req;
    pthread_t t[64];
    for (int i = 0; i < threads; i++) pthread_create(&t[i], NULL, run, NULL);
    pthread_join(t[0], NULL);
}
