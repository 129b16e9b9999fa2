/* timing.h - what every benchmark tool measures its figures against: a monotonic clock and
 * memcpy of the same bytes, measured in the same run. Header-only. */
#ifndef KVC_TOOLS_TIMING_H
#define KVC_TOOLS_TIMING_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static inline uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* GB/s of memcpy between two buffers of @bs bytes, @iters times (after a warm-up). */
static inline double memcpy_gbps(size_t bs, unsigned long iters)
{
	unsigned char *a = malloc(bs), *b = malloc(bs);
	uint64_t t0, t;

	memset(a, 1, bs);
	memset(b, 2, bs);
	for (int i = 0; i < 3; i++)
		memcpy(b, a, bs);
	t0 = now_ns();
	for (unsigned long i = 0; i < iters; i++) {
		memcpy(b, a, bs);
		__asm__ volatile("" : : "r"(b) : "memory");
	}
	t = now_ns() - t0;
	free(a);
	free(b);
	return (double)bs * iters / t;
}

#endif /* KVC_TOOLS_TIMING_H */
