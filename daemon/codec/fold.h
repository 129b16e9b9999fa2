/* fold.h - AVX-512 steps the codec's one-pass row kernels (quant.c, convert.c) share: a
 * group's range or largest magnitude for sixteen groups at once, codes from 32-bit lanes to
 * bytes, and 16 floats out as f16. Static inline, each under its own target attribute, so a file includes it without
 * building for AVX-512 as a whole; callers check kvcd_isa_best() first. */
#ifndef KVCD_FOLD_H
#define KVCD_FOLD_H

#include <immintrin.h>
#include <stdbool.h>
#include <stdint.h>

/* Lane g of the result: the minimum (@max false) or maximum of v[g]'s 16 lanes. Pairs of
 * vectors fold into one four times over, each fold halving the lanes a vector's partial
 * results take, so 16 reductions cost 45 independent operations instead of 16 chains of 8.
 * After the folds lane 4k + j holds v[4j + k]; the last permutation puts it in order. Exact
 * but for the sign of a zero (kvce_canon0). */
__attribute__((target("avx512f"))) static inline __m512 kvcd_fold16(const __m512 *v, bool max)
{
#define FOLD(a, b) (max ? _mm512_max_ps(a, b) : _mm512_min_ps(a, b))
	const __m512i order = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4,
					       0);
	__m512 a[8], b[4], c[2];

	for (int i = 0; i < 8; i++) /* 128-bit blocks: v[2i] in 0-1, v[2i+1] in 2-3 */
		a[i] = FOLD(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44),
			    _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xee));
	for (int i = 0; i < 4; i++) /* one block each */
		b[i] = FOLD(_mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0x88),
			    _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0xdd));
	for (int i = 0; i < 2; i++) /* two lanes each, within the blocks */
		c[i] = FOLD(_mm512_shuffle_ps(b[2 * i], b[2 * i + 1], 0x44),
			    _mm512_shuffle_ps(b[2 * i], b[2 * i + 1], 0xee));
	return _mm512_permutexvar_ps(order, FOLD(_mm512_shuffle_ps(c[0], c[1], 0x88),
						 _mm512_shuffle_ps(c[0], c[1], 0xdd)));
#undef FOLD
}

/* Four vectors of 16 32-bit lanes, @c[0] first, to 64 bytes in the same order: lanes in
 * 0..255 as they are, negative ones 0, ones up to 32767 255 (beyond that, 0: the packs
 * saturate through signed 16 bits, and no caller's codes come near it). The packs interleave
 * the vectors' 128-bit lanes (dword 4k + v of the packed result is c[v]'s lane k); one
 * permutation puts the runs of four bytes back in order. */
__attribute__((target("avx512f,avx512bw"))) static inline __m512i kvcd_pack64(const __m512i c[4])
{
	const __m512i order = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4,
					       0);

	return _mm512_permutexvar_epi32(order,
					_mm512_packus_epi16(_mm512_packus_epi32(c[0], c[1]),
							    _mm512_packus_epi32(c[2], c[3])));
}

/* 16 floats to f16 at @o as kvcd_from_f32 writes them: saturated to f16's range, rounded to
 * nearest; streamed when @nt (@o then 32-byte aligned). */
__attribute__((target("avx512f,f16c"))) static inline void kvcd_put_f16x16(uint16_t *o, __m512 x,
									   bool nt)
{
	__m256i h = _mm512_cvtps_ph(_mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-65504.0f)),
						  _mm512_set1_ps(65504.0f)),
				    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);

	if (nt)
		_mm256_stream_si256((__m256i *)o, h);
	else
		_mm256_storeu_si256((__m256i *)o, h);
}

#endif /* KVCD_FOLD_H */
