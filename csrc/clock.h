/* Deadlines for pthread_cond_timedwait, shared by the C units (internal; header-only, so that
 * every library that compiles a unit gets its own copy and nothing is exported). */
#ifndef FP_CLOCK_H
#define FP_CLOCK_H

#include <time.h>

/* Longer waits are cut to this (about 31 years): it keeps tv_sec from overflowing for any
 * timeout a caller passes (PHP floats included), and nobody waits that long. */
#define FP_CLOCK_MAX_WAIT 1e9

/* The instant `seconds` from now on `clock`, which must be the clock the condition variable
 * waits on: CLOCK_REALTIME for a default one, CLOCK_MONOTONIC for one made with
 * pthread_condattr_setclock (there a wall-clock step neither stretches nor cuts the wait).
 * A negative or NaN `seconds` is now. */
static inline struct timespec fp_clock_after(clockid_t clock, double seconds)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    if (!(seconds > 0)) {
        return ts;
    }
    if (seconds > FP_CLOCK_MAX_WAIT) {
        seconds = FP_CLOCK_MAX_WAIT;
    }
    time_t whole = (time_t)seconds;
    ts.tv_sec += whole;
    ts.tv_nsec += (long)((seconds - (double)whole) * 1e9);
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec += 1;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

#endif
