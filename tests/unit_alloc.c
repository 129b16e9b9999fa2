/* unit_alloc.c - the TLSF allocator: alignment, exhaustion, coalescing, random stress with
 * the invariant checker after every step. */
#include "t_util.h"
#include "kvcd.h"

#define POOL (8u << 20)

static void *mem;
static struct kvcd_alloc a;

static void setup(void)
{
	cr_assert_eq(posix_memalign(&mem, 4096, POOL), 0);
	cr_assert_eq(kvcd_alloc_init(&a, mem, POOL), 0);
}

static void teardown(void)
{
	free(mem);
}

TestSuite(alloc, .init = setup, .fini = teardown);

Test(alloc, aligned_and_inside_the_pool)
{
	for (size_t n = 1; n < 5000; n += 37) {
		char *p = kvcd_alloc(&a, n);

		cr_assert_not_null(p);
		cr_assert_eq((uintptr_t)p % 64, 0);
		cr_assert(p >= (char *)mem && p + n <= (char *)mem + POOL);
		cr_assert_geq(kvcd_alloc_charge(p), n + KVCD_ALLOC_OVERHEAD);
		memset(p, 0xab, n);
	}
	cr_assert_eq(kvcd_alloc_check(&a), 0);
}

Test(alloc, exhaustion_then_full_coalescing)
{
	void *ps[4096];
	size_t n = 0, largest = kvcd_alloc_largest(&a);

	cr_assert_geq(largest, POOL - 4 * KVCD_ALLOC_OVERHEAD);
	while (n < 4096 && (ps[n] = kvcd_alloc(&a, 4000)))
		n++;
	cr_assert_lt(n, 4096, "the pool ran out");
	cr_assert_gt(n, POOL / 4200, "little waste: %zu blocks", n);
	cr_assert_null(kvcd_alloc(&a, 4000));
	cr_assert_eq(kvcd_alloc_check(&a), 0);
	for (size_t i = 0; i < n; i += 2) /* free every other: no coalescing possible */
		kvcd_free(&a, ps[i]);
	cr_assert_eq(kvcd_alloc_check(&a), 0);
	cr_assert_null(kvcd_alloc(&a, 9000), "holes of 4000 cannot hold 9000");
	for (size_t i = 1; i < n; i += 2)
		kvcd_free(&a, ps[i]);
	cr_assert_eq(kvcd_alloc_check(&a), 0);
	cr_assert_eq(a.used, 0);
	cr_assert_eq(kvcd_alloc_largest(&a), largest, "everything merged back into one block");
}

Test(alloc, too_large_fails_cleanly)
{
	cr_assert_null(kvcd_alloc(&a, POOL));
	cr_assert_null(kvcd_alloc(&a, SIZE_MAX));
	cr_assert_not_null(kvcd_alloc(&a, POOL / 2));
	cr_assert_eq(kvcd_alloc_check(&a), 0);
}

Test(alloc, random_stress_keeps_invariants)
{
	enum {
		SLOTS = 512
	};
	void *slot[SLOTS] = { 0 };
	size_t len[SLOTS] = { 0 };
	uint64_t x = 42;

	for (int step = 0; step < 20000; step++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		unsigned i = (unsigned)(x % SLOTS);

		if (slot[i]) {
			unsigned char *p = slot[i];

			for (size_t k = 0; k < len[i]; k += 97) /* contents survived */
				cr_assert_eq(p[k], (unsigned char)(i + k), "slot %u corrupted", i);
			kvcd_free(&a, slot[i]);
			slot[i] = NULL;
		} else {
			len[i] = 1 + (x >> 20) % (x & 1 ? 200000 : 3000);
			slot[i] = kvcd_alloc(&a, len[i]);
			if (slot[i])
				for (size_t k = 0; k < len[i]; k++)
					((unsigned char *)slot[i])[k] = (unsigned char)(i + k);
		}
		if (step % 1000 == 0)
			cr_assert_eq(kvcd_alloc_check(&a), 0, "step %d", step);
	}
	for (unsigned i = 0; i < SLOTS; i++)
		if (slot[i])
			kvcd_free(&a, slot[i]);
	cr_assert_eq(kvcd_alloc_check(&a), 0);
	cr_assert_eq(a.used, 0);
}
