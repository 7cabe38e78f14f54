/*
 * The assertion of the native tests that have no harness of their own: CHECK(cond, fmt, ...)
 * counts the check, and on failure says where, what failed and why (a printf-style message),
 * then goes on, so that one run reports every failure.  main() returns failures != 0.
 */
#ifndef FRANKENPY_TEST_CHECK_H
#define FRANKENPY_TEST_CHECK_H

#include <stdio.h>

static int failures, checks;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        checks++;                                                                                  \
        if (!(cond)) {                                                                             \
            failures++;                                                                            \
            fprintf(stderr, "%s:%d: FAILED %s: ", __FILE__, __LINE__, #cond);                      \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
        }                                                                                          \
    } while (0)

#endif
