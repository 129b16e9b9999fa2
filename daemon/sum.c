/* sum.c - the block checksum, computed inside the copy that moves the bytes.
 *
 * Fletcher-4 (ZFS's default data checksum) over 8 lanes: the bytes are read as little-endian
 * u32 words, the last one zero-padded to a whole 32-byte stripe, word i goes to lane i mod 8,
 * and each lane keeps a += w, b += a, c += b, d += c in u64 (mod 2^64). The checksum is
 * XXH3-64 of the 32 sums, seeded with the byte count. Every single-bit error and every burst
 * within one word changes a, and reordered words change b, c and d.
 *
 * Why not XXH3 over the bytes: a second pass, even over a chunk still in L1, costs about 40%
 * of memcpy's throughput (docs/performance.md); these sums are four vector adds per 32 bytes
 * and hide under the copy's loads and stores (AVX-512: about 96% of memcpy on 2 MiB). The
 * scalar, AVX2 and AVX-512 versions give the same sums (tests/unit_sum.c).
 */
#include <immintrin.h>
#include <string.h>
#include <xxhash.h>

#include "kvcd.h"

struct f4 {
	uint64_t a[8], b[8], c[8], d[8];
};

static void stripe_scalar(struct f4 *s, const uint8_t *p)
{
	for (int j = 0; j < 8; j++) {
		uint32_t w;

		memcpy(&w, p + 4 * j, 4);
		s->a[j] += w;
		s->b[j] += s->a[j];
		s->c[j] += s->b[j];
		s->d[j] += s->c[j];
	}
}

/* Whole stripes of @n (a multiple of 32); @dst NULL: sum only. */
static void run_scalar(struct f4 *s, uint8_t *dst, const uint8_t *src, size_t n)
{
	for (size_t i = 0; i < n; i += 32) {
		uint8_t t[32];

		memcpy(t, src + i, 32); /* read once: the source may be client memory */
		if (dst)
			memcpy(dst + i, t, 32);
		stripe_scalar(s, t);
	}
}

#define ADD4(a, b, c, d, w, add) \
	do {                     \
		a = add(a, w);   \
		b = add(b, a);   \
		c = add(c, b);   \
		d = add(d, c);   \
	} while (0)

__attribute__((target("avx2"))) static void run_avx2(struct f4 *s, uint8_t *dst, const uint8_t *src,
						     size_t n)
{
	__m256i al = _mm256_loadu_si256((void *)s->a), ah = _mm256_loadu_si256((void *)(s->a + 4));
	__m256i bl = _mm256_loadu_si256((void *)s->b), bh = _mm256_loadu_si256((void *)(s->b + 4));
	__m256i cl = _mm256_loadu_si256((void *)s->c), ch = _mm256_loadu_si256((void *)(s->c + 4));
	__m256i dl = _mm256_loadu_si256((void *)s->d), dh = _mm256_loadu_si256((void *)(s->d + 4));

	for (size_t i = 0; i < n; i += 32) {
		__m256i v = _mm256_loadu_si256((const void *)(src + i));

		if (dst)
			_mm256_storeu_si256((void *)(dst + i), v);
		ADD4(al, bl, cl, dl, _mm256_cvtepu32_epi64(_mm256_castsi256_si128(v)),
		     _mm256_add_epi64);
		ADD4(ah, bh, ch, dh, _mm256_cvtepu32_epi64(_mm256_extracti128_si256(v, 1)),
		     _mm256_add_epi64);
	}
	_mm256_storeu_si256((void *)s->a, al);
	_mm256_storeu_si256((void *)(s->a + 4), ah);
	_mm256_storeu_si256((void *)s->b, bl);
	_mm256_storeu_si256((void *)(s->b + 4), bh);
	_mm256_storeu_si256((void *)s->c, cl);
	_mm256_storeu_si256((void *)(s->c + 4), ch);
	_mm256_storeu_si256((void *)s->d, dl);
	_mm256_storeu_si256((void *)(s->d + 4), dh);
}

/* Two stripes per 64-byte step; @n a multiple of 64. */
__attribute__((target("avx512f"))) static void run_avx512(struct f4 *s, uint8_t *dst,
							  const uint8_t *src, size_t n)
{
	__m512i a = _mm512_loadu_si512(s->a), b = _mm512_loadu_si512(s->b);
	__m512i c = _mm512_loadu_si512(s->c), d = _mm512_loadu_si512(s->d);

	for (size_t i = 0; i < n; i += 64) {
		__m512i v = _mm512_loadu_si512(src + i);

		if (dst)
			_mm512_storeu_si512(dst + i, v);
		ADD4(a, b, c, d, _mm512_cvtepu32_epi64(_mm512_castsi512_si256(v)),
		     _mm512_add_epi64);
		ADD4(a, b, c, d, _mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64(v, 1)),
		     _mm512_add_epi64);
	}
	_mm512_storeu_si512(s->a, a);
	_mm512_storeu_si512(s->b, b);
	_mm512_storeu_si512(s->c, c);
	_mm512_storeu_si512(s->d, d);
}

uint64_t kvcd_copy_sum(enum kvcd_isa isa, void *dst, const void *src, size_t n)
{
	struct f4 s;
	size_t done = 0, whole = n & ~(size_t)31;
	uint8_t t[32] = { 0 };

	memset(&s, 0, sizeof(s));
	isa = isa > kvcd_isa_best() ? kvcd_isa_best() : isa;
	if (isa >= KVCD_ISA_AVX512) {
		done = n & ~(size_t)63;
		run_avx512(&s, dst, src, done);
	}
	if (isa >= KVCD_ISA_AVX2)
		run_avx2(&s, dst ? (uint8_t *)dst + done : NULL, (const uint8_t *)src + done,
			 whole - done);
	else
		run_scalar(&s, dst, src, whole);
	if (n > whole) { /* the last partial stripe, zero-padded */
		memcpy(t, (const uint8_t *)src + whole, n - whole);
		if (dst)
			memcpy((uint8_t *)dst + whole, t, n - whole);
		stripe_scalar(&s, t);
	}
	return XXH3_64bits_withSeed(&s, sizeof(s), (XXH64_hash_t)n);
}
