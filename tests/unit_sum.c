/* unit_sum.c - the block checksum: the copy is exact, every ISA gives the scalar value for every
 * length and alignment, and single-bit errors, swapped words and length changes are caught. */
#include "t_util.h"
#include "kvcd.h"

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint8_t rbyte(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (uint8_t)(rng >> 24);
}

Test(sum, every_isa_copies_and_sums_the_same)
{
	size_t cap = (1u << 20) + 300;
	uint8_t *src = malloc(cap + 64), *dst = malloc(cap + 64);
	const size_t lens[] = { 0,  1,	3,   4,	  31,	32,	    33,	      63,
				64, 65, 127, 200, 4096, 65536 + 17, 1u << 20, cap };

	for (size_t i = 0; i < cap + 64; i++)
		src[i] = rbyte();
	for (size_t k = 0; k < sizeof(lens) / sizeof(lens[0]); k++)
		for (size_t off = 0; off < 3; off++) {
			size_t n = lens[k];
			uint64_t ref = kvcd_copy_sum(KVCD_ISA_SCALAR, NULL, src + off, n);

			for (int isa = KVCD_ISA_SCALAR; isa <= KVCD_ISA_AVX512; isa++) {
				memset(dst, 0xa5, cap + 64);
				cr_assert_eq(kvcd_copy_sum(isa, dst + 1, src + off, n), ref,
					     "isa %d, %zu bytes at +%zu", isa, n, off);
				cr_assert_eq(memcmp(dst + 1, src + off, n), 0, "isa %d copies %zu",
					     isa, n);
				cr_assert_eq(dst[0], 0xa5, "nothing before");
				cr_assert_eq(dst[n + 1], 0xa5, "nothing after (%zu bytes)", n);
				cr_assert_eq(kvcd_copy_sum(isa, NULL, src + off, n), ref);
			}
		}
	free(src);
	free(dst);
}

Test(sum, errors_change_the_sum)
{
	enum {
		N = 1000
	};
	uint8_t a[N], b[N];
	uint64_t s;

	for (size_t i = 0; i < N; i++)
		a[i] = rbyte();
	s = kvcd_copy_sum(kvcd_isa_best(), NULL, a, N);
	for (size_t bit = 0; bit < N * 8; bit++) { /* every single-bit flip */
		memcpy(b, a, N);
		b[bit / 8] ^= (uint8_t)(1u << (bit % 8));
		cr_assert_neq(kvcd_copy_sum(kvcd_isa_best(), NULL, b, N), s, "bit %zu", bit);
	}
	for (size_t i = 0; i + 8 <= N; i += 4) { /* swapped neighbouring words, same lane or not */
		memcpy(b, a, N);
		memcpy(b + i, a + i + 4, 4);
		memcpy(b + i + 4, a + i, 4);
		if (memcmp(a, b, N))
			cr_assert_neq(kvcd_copy_sum(kvcd_isa_best(), NULL, b, N), s, "swap at %zu",
				      i);
	}
	memcpy(b, a, N);
	memset(b + 960, 0, 40); /* a zeroed tail, and the same bytes one zero longer */
	cr_assert_neq(kvcd_copy_sum(kvcd_isa_best(), NULL, b, 961),
		      kvcd_copy_sum(kvcd_isa_best(), NULL, b, 960));
	/* two flips in lane 0, two stripes apart, that cancel in a (bit 31 up in one word, down
	 * in the other) move b */
	memcpy(b, a, N);
	b[3] &= 0x7f;
	b[3 + 64] |= 0x80;
	s = kvcd_copy_sum(kvcd_isa_best(), NULL, b, N);
	b[3] |= 0x80;
	b[3 + 64] &= 0x7f;
	cr_assert_neq(kvcd_copy_sum(kvcd_isa_best(), NULL, b, N), s);
}
