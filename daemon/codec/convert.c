/* convert.c - element conversions the codecs share: f16 and bf16 to and from f32 (round to
 * nearest even, vectorised with F16C), fp8 e4m3, and the orthonormal Walsh-Hadamard
 * transform. Pure functions. */
#include <errno.h>
#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <string.h>

#include "elem.h"
#include "fold.h"
#include "internal.h"

/* ---- f16 ------------------------------------------------------------------------------- */

uint16_t kvcd_f32_to_f16(float f)
{
	return kvce_to_f16(f);
}

float kvcd_f16_to_f32(uint16_t h)
{
	return kvce_from_f16(h);
}

/* ---- dtype conversion ---------------------------------------------------------------------- */

static float bf16_to_f32(uint16_t h)
{
	uint32_t x = (uint32_t)h << 16;
	float f;

	memcpy(&f, &x, 4);
	return f;
}

static uint16_t f32_to_bf16(float f)
{
	return kvce_to_bf16(f);
}

/* Decoded values can overshoot the input range by half a step: keep f16 output finite. */
static inline float sat16(float f)
{
	return f > 65504.0f ? 65504.0f : f < -65504.0f ? -65504.0f : f;
}

__attribute__((target("avx2,f16c"))) static void f16_to_f32_avx2(const uint16_t *s, float *d,
								 size_t n)
{
	size_t i = 0;

	for (; i + 8 <= n; i += 8)
		_mm256_storeu_ps(d + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + i))));
	for (; i < n; i++)
		d[i] = kvcd_f16_to_f32(s[i]);
}

__attribute__((target("avx2,f16c"))) static void f32_to_f16_avx2(const float *s, uint16_t *d,
								 size_t n)
{
	const __m256 hi = _mm256_set1_ps(65504.0f), lo = _mm256_set1_ps(-65504.0f);
	size_t i = 0;

	for (; i + 8 <= n; i += 8) {
		__m256 v = _mm256_min_ps(_mm256_max_ps(_mm256_loadu_ps(s + i), lo), hi);

		_mm_storeu_si128((__m128i *)(d + i),
				 _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
	}
	for (; i < n; i++)
		d[i] = kvcd_f32_to_f16(sat16(s[i]));
}

/* f32_to_f16_avx2 with non-temporal stores: @d 32-byte aligned, @n a multiple of 16. */
__attribute__((target("avx2,f16c"))) static void f32_to_f16_nt(const float *s, uint16_t *d,
							       size_t n)
{
	const __m256 hi = _mm256_set1_ps(65504.0f), lo = _mm256_set1_ps(-65504.0f);

	for (size_t i = 0; i < n; i += 16) {
		__m256 a = _mm256_min_ps(_mm256_max_ps(_mm256_loadu_ps(s + i), lo), hi);
		__m256 b = _mm256_min_ps(_mm256_max_ps(_mm256_loadu_ps(s + i + 8), lo), hi);
		__m128i ha = _mm256_cvtps_ph(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
		__m128i hb = _mm256_cvtps_ph(b, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);

		_mm256_stream_si256((__m256i *)(d + i), _mm256_set_m128i(hb, ha));
	}
}

/* The two above on 16 lanes: half the instructions. */
__attribute__((target("avx512f,f16c"))) static void f32_to_f16_avx512(const float *s, uint16_t *d,
								      size_t n, bool nt)
{
	size_t i = 0;

	for (; i + 16 <= n; i += 16)
		kvcd_put_f16x16(d + i, _mm512_loadu_ps(s + i), nt);
	for (; i < n; i++)
		d[i] = kvcd_f32_to_f16(sat16(s[i]));
}

static bool avx512_f16(enum kvcd_isa isa)
{
	return isa >= KVCD_ISA_AVX512 && kvcd_isa_best() >= KVCD_ISA_AVX512 && kvcd_has_f16c();
}

bool kvcd_from_f32_stream(enum kvcd_isa isa, uint8_t dtype, const float *src, void *dst, size_t n)
{
	if (dtype != KVCP_F16 || isa < KVCD_ISA_AVX2 || !kvcd_has_f16c() || n % 16 ||
	    (uintptr_t)dst % 32) {
		kvcd_from_f32(isa, dtype, src, dst, n);
		return false;
	}
	if (avx512_f16(isa))
		f32_to_f16_avx512(src, dst, n, true);
	else
		f32_to_f16_nt(src, dst, n);
	return true;
}

void kvcd_to_f32(enum kvcd_isa isa, uint8_t dtype, const void *src, float *dst, size_t n)
{
	if (dtype == KVCP_F32) {
		memcpy(dst, src, n * 4);
	} else if (dtype == KVCP_F16) {
		const uint16_t *s = src;

		if (isa >= KVCD_ISA_AVX2 && kvcd_has_f16c()) {
			f16_to_f32_avx2(s, dst, n);
			return;
		}
		for (size_t i = 0; i < n; i++)
			dst[i] = kvcd_f16_to_f32(s[i]);
	} else {
		const uint16_t *s = src;

		for (size_t i = 0; i < n; i++) /* the compiler vectorizes the shift */
			dst[i] = bf16_to_f32(s[i]);
	}
}

void kvcd_from_f32(enum kvcd_isa isa, uint8_t dtype, const float *src, void *dst, size_t n)
{
	if (dtype == KVCP_F32) {
		memcpy(dst, src, n * 4);
	} else if (dtype == KVCP_F16) {
		uint16_t *d = dst;

		if (avx512_f16(isa)) {
			f32_to_f16_avx512(src, d, n, false);
			return;
		}
		if (isa >= KVCD_ISA_AVX2 && kvcd_has_f16c()) {
			f32_to_f16_avx2(src, d, n);
			return;
		}
		for (size_t i = 0; i < n; i++)
			d[i] = kvcd_f32_to_f16(sat16(src[i]));
	} else {
		uint16_t *d = dst;

		for (size_t i = 0; i < n; i++)
			d[i] = f32_to_bf16(src[i]);
	}
}

/* ---- fp8 e4m3 ------------------------------------------------------------------------------ */

uint8_t kvcd_f32_to_e4m3(float f)
{
	return kvce_to_e4m3(f);
}

/* kvcd_f32_to_e4m3 on 16 or 8 lanes, the same bits. Rounding to nearest even is an integer
 * add on the float's exponent-and-mantissa bits (a carry moves into the exponent), then the
 * exponent is rebiased from 127 to 7 (960 = 120 << 3) and the code saturates at 0x7e; below
 * 2^-6 the value is a multiple of 2^-9, and NaN is 0x7f. */
/* 16 quotients' e4m3 codes in the low byte of each lane. */
__attribute__((target("avx512f,avx512bw"))) static inline __m512i e4m3_x16(__m512i x)
{
	const __m512i abs = _mm512_set1_epi32(0x7fffffff), half = _mm512_set1_epi32(0x7ffff);
	const __m512i one = _mm512_set1_epi32(1), bias = _mm512_set1_epi32(960);
	const __m512i top = _mm512_set1_epi32(0x7e), inf = _mm512_set1_epi32(0x7f800000);
	const __m512 tiny = _mm512_set1_ps(0x1p-6f);
	__m512i ax = _mm512_and_si512(x, abs);
	__m512i t = _mm512_add_epi32(
		ax, _mm512_add_epi32(half, _mm512_and_si512(_mm512_srli_epi32(ax, 20), one)));
	__m512i code = _mm512_min_epi32(_mm512_sub_epi32(_mm512_srli_epi32(t, 20), bias), top);
	__m512 a = _mm512_castsi512_ps(ax);
	__m512i sub = _mm512_cvtps_epi32(
		_mm512_roundscale_ps(_mm512_mul_ps(a, _mm512_set1_ps(512.0f)),
				     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));

	code = _mm512_mask_mov_epi32(code, _mm512_cmp_ps_mask(a, tiny, _CMP_LT_OQ), sub);
	code = _mm512_mask_mov_epi32(code, _mm512_cmpgt_epi32_mask(ax, inf),
				     _mm512_set1_epi32(0x7f));
	return _mm512_or_si512(code, _mm512_srli_epi32(_mm512_andnot_si512(abs, x), 24));
}

__attribute__((target("avx512f,avx512bw"))) static size_t e4m3_avx512(const float *v, size_t n,
								      float div, uint8_t *out)
{
	const __m512 vd = _mm512_set1_ps(div);
	size_t i = 0;

	for (; i + 16 <= n; i += 16) {
		__m512i x = _mm512_castps_si512(_mm512_div_ps(_mm512_loadu_ps(v + i), vd));

		_mm_storeu_si128((__m128i *)(out + i), _mm512_cvtepi32_epi8(e4m3_x16(x)));
	}
	return i;
}

/* Runs of a multiple of 16 values in one loop: no call or scalar work between runs holds the
 * next run's divisions back. */
__attribute__((target("avx512f,avx512bw"))) static void e4m3_runs_avx512(const float *v, size_t n,
									 size_t len,
									 const float *div,
									 uint8_t *const *out)
{
	for (size_t r = 0; r < n; r++) {
		const __m512 vd = _mm512_set1_ps(div[r]);
		const float *x = v + r * len;

		for (size_t i = 0; i < len; i += 16) {
			__m512i q = _mm512_castps_si512(_mm512_div_ps(_mm512_loadu_ps(x + i), vd));

			_mm_storeu_si128((__m128i *)(out[r] + i),
					 _mm512_cvtepi32_epi8(e4m3_x16(q)));
		}
	}
}

__attribute__((target("avx2"))) static size_t e4m3_avx2(const float *v, size_t n, float div,
							uint8_t *out)
{
	const __m256i abs = _mm256_set1_epi32(0x7fffffff), half = _mm256_set1_epi32(0x7ffff);
	const __m256i one = _mm256_set1_epi32(1), bias = _mm256_set1_epi32(960);
	const __m256i top = _mm256_set1_epi32(0x7e), inf = _mm256_set1_epi32(0x7f800000);
	const __m256 vd = _mm256_set1_ps(div), tiny = _mm256_set1_ps(0x1p-6f);
	size_t i = 0;

	for (; i + 8 <= n; i += 8) {
		__m256i x = _mm256_castps_si256(_mm256_div_ps(_mm256_loadu_ps(v + i), vd));
		__m256i ax = _mm256_and_si256(x, abs);
		__m256i t = _mm256_add_epi32(
			ax,
			_mm256_add_epi32(half, _mm256_and_si256(_mm256_srli_epi32(ax, 20), one)));
		__m256i code = _mm256_min_epi32(_mm256_sub_epi32(_mm256_srli_epi32(t, 20), bias),
						top);
		__m256 a = _mm256_castsi256_ps(ax);
		__m256i sub = _mm256_cvtps_epi32(
			_mm256_round_ps(_mm256_mul_ps(a, _mm256_set1_ps(512.0f)),
					_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
		__m256i p;

		code = _mm256_blendv_epi8(code, sub,
					  _mm256_castps_si256(_mm256_cmp_ps(a, tiny, _CMP_LT_OQ)));
		code = _mm256_blendv_epi8(code, _mm256_set1_epi32(0x7f),
					  _mm256_cmpgt_epi32(ax, inf));
		code = _mm256_or_si256(code, _mm256_srli_epi32(_mm256_andnot_si256(abs, x), 24));
		p = _mm256_packus_epi16(_mm256_packus_epi32(code, code),
					code); /* bytes 0-3 a lane */
		_mm_storel_epi64((__m128i *)(out + i),
				 _mm_unpacklo_epi32(_mm256_castsi256_si128(p),
						    _mm256_extracti128_si256(p, 1)));
	}
	return i;
}

void kvcd_e4m3_n(enum kvcd_isa isa, const float *v, size_t n, float div, uint8_t *out)
{
	size_t i = 0;

	isa = isa < kvcd_isa_best() ? isa : kvcd_isa_best();
	if (!(div > 0.0f)) {
		memset(out, 0, n);
		return;
	}
	if (isa >= KVCD_ISA_AVX512)
		i = e4m3_avx512(v, n, div, out);
	else if (isa == KVCD_ISA_AVX2)
		i = e4m3_avx2(v, n, div, out);
	for (; i < n; i++)
		out[i] = kvcd_f32_to_e4m3(v[i] / div);
}

void kvcd_e4m3_runs(enum kvcd_isa isa, const float *v, size_t n, size_t len, const float *div,
		    uint8_t *const *out)
{
	bool pos = true;

	for (size_t r = 0; r < n; r++)
		pos &= div[r] > 0.0f;
	if (pos && len % 16 == 0 && isa >= KVCD_ISA_AVX512 && kvcd_isa_best() >= KVCD_ISA_AVX512) {
		e4m3_runs_avx512(v, n, len, div, out);
		return;
	}
	for (size_t r = 0; r < n; r++)
		kvcd_e4m3_n(isa, v + r * len, len, div[r], out[r]);
}

/* e4m3_x16 without what a group's own quotients never need: @q are finite with |q| <= 448
 * (the scale is the smallest f16 with scale * 448 >= the group's largest magnitude), so there is
 * no nan to map and nothing to saturate; and no sign, which the caller puts back on the bytes.
 * From 2^-6 up, Veltkamp's split (a * (2^20 + 1), then c - (c - a)) rounds a to four
 * significant bits, to nearest even (checked on every float from 2^-6 to 448), which leaves
 * the code in the exponent and top mantissa bits; below, the subnormal codes round once, in
 * the conversion. */
__attribute__((target("avx512f"))) static inline __m512i e4m3_mag_x16(__m512 q)
{
	__m512 a = _mm512_abs_ps(q), c = _mm512_mul_ps(a, _mm512_set1_ps(1048577.0f));
	__m512i r = _mm512_castps_si512(_mm512_sub_ps(c, _mm512_sub_ps(c, a)));
	__m512i code = _mm512_sub_epi32(_mm512_srli_epi32(r, 20), _mm512_set1_epi32(960));
	__m512i sub = _mm512_cvt_roundps_epi32(_mm512_mul_ps(a, _mm512_set1_ps(512.0f)),
					       _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);

	return _mm512_mask_mov_epi32(
		code, _mm512_cmp_ps_mask(a, _mm512_set1_ps(0x1p-6f), _CMP_LT_OQ), sub);
}

/* x / s rounded to nearest, as _mm512_div_ps gives it, from @r = 1 / s rounded: the product,
 * its remainder (exact, by FMA) and one correction (Markstein). The division's throughput was
 * the row kernel's limit. The same value as the division for every finite f16 x and positive
 * f16 s with |x| <= 448 s, the only quotients the kernel takes (checked on all of them), but
 * for the sign of a zero (-0 / s comes out +0): the kernel takes signs from x. */
__attribute__((target("avx512f"))) static inline __m512 quotient(__m512 x, __m512 s, __m512 r)
{
	__m512 q = _mm512_mul_ps(x, r);

	return _mm512_fmadd_ps(_mm512_fnmadd_ps(q, s, x), r, q);
}

__attribute__((target("avx512f,avx512bw,f16c"))) static int fp8_row_avx512(
	const uint8_t *src, size_t ng, size_t gch, size_t per, size_t stride, float *x,
	uint8_t *par, uint8_t *codes)
{
	size_t head = 0, gi = 0;

	for (size_t g0 = 0; g0 < ng; g0 += 16) {
		size_t nb = ng - g0 < 16 ? ng - g0 : 16;
		__m512 mx[16], bad = _mm512_setzero_ps();
		float amax[16];

		/* convert, and each group's largest magnitude; an inf or nan makes its group's
		 * sum times 0 a nan (as in the int row kernel) */
		for (size_t j = 0; j < nb; j++) {
			size_t g = g0 + j;
			const uint8_t *h = src + 2 * g * gch;
			__m512 acc = _mm512_setzero_ps();

			mx[j] = _mm512_setzero_ps();
			for (size_t i = 0; i < gch; i += 16) {
				__m512 v = _mm512_cvtph_ps(
					_mm256_loadu_si256((const __m256i *)(h + 2 * i)));

				_mm512_storeu_ps(x + g * gch + i, v);
				acc = _mm512_add_ps(acc, v);
				mx[j] = _mm512_max_ps(mx[j], _mm512_abs_ps(v));
			}
			bad = _mm512_add_ps(bad, _mm512_mul_ps(acc, _mm512_setzero_ps()));
		}
		for (size_t j = nb; j < 16; j++) /* a short batch folds its last group again */
			mx[j] = mx[nb - 1];
		if (_mm512_cmp_ps_mask(bad, bad, _CMP_UNORD_Q))
			return -EINVAL;
		_mm512_storeu_ps(amax, kvcd_fold16(mx, true));
		for (size_t j = 0; j < nb; j++, gi = gi + 1 < per ? gi + 1 : 0, head += !gi) {
			size_t g = g0 + j;
			uint8_t *q = codes + head * stride + gi * gch;
			const float *v = x + g * gch;
			/* fp8_scale, with F16C's conversions (the same on finite values) */
			uint16_t sc = (uint16_t)_cvtss_sh(amax[j] / 448.0f,
							  _MM_FROUND_TO_NEAREST_INT);
			float s;

			while (_cvtsh_ss(sc) * 448.0f < amax[j])
				sc++;
			memcpy(par + head * stride + gi * 2, &sc, 2);
			s = _cvtsh_ss(sc);
			if (!(s > 0.0f)) { /* all zeros */
				memset(q, 0, gch);
				continue;
			}
			const __m512 vs = _mm512_set1_ps(s), vr = _mm512_set1_ps(1.0f / s);
			size_t i = 0;

			for (; i + 64 <= gch; i += 64) {
				const uint8_t *h = src + 2 * (g * gch + i);
				/* the signs, straight from the f16 values: x / s has x's */
				__mmask64 neg =
					(__mmask64)_mm512_movepi16_mask(_mm512_loadu_si512(h)) |
					(__mmask64)_mm512_movepi16_mask(_mm512_loadu_si512(h + 64))
						<< 32;

				__m512i c[4] = {
					e4m3_mag_x16(quotient(_mm512_loadu_ps(v + i), vs, vr)),
					e4m3_mag_x16(quotient(_mm512_loadu_ps(v + i + 16), vs, vr)),
					e4m3_mag_x16(quotient(_mm512_loadu_ps(v + i + 32), vs, vr)),
					e4m3_mag_x16(quotient(_mm512_loadu_ps(v + i + 48), vs, vr))
				};
				__m512i b =
					kvcd_pack64(c); /* magnitudes are below 0x80: + 0x80 sets
							      the sign */
				_mm512_storeu_si512(
					q + i,
					_mm512_mask_add_epi8(b, neg, b, _mm512_set1_epi8(-128)));
			}
			for (; i < gch; i += 16) {
				__m512 xv = _mm512_loadu_ps(v + i);
				__m512i c =
					_mm512_or_si512(/* the sign from x, as above */
							e4m3_mag_x16(quotient(xv, vs, vr)),
							_mm512_srli_epi32(
								_mm512_andnot_si512(
									_mm512_set1_epi32(
										0x7fffffff),
									_mm512_castps_si512(xv)),
								24));

				_mm_storeu_si128((__m128i *)(q + i), _mm512_cvtepi32_epi8(c));
			}
		}
	}
	return 0;
}

bool kvcd_fp8_row_f16_ok(enum kvcd_isa isa, size_t gch)
{
	return gch && gch % 16 == 0 && kvcd_isa_clamp(isa) >= KVCD_ISA_AVX512 && kvcd_has_f16c();
}

int kvcd_fp8_row_f16(enum kvcd_isa isa, const uint8_t *src, size_t ng, size_t gch, size_t per,
		     size_t stride, float *x, uint8_t *par, uint8_t *codes)
{
	if (!kvcd_fp8_row_f16_ok(isa, gch))
		return -EOPNOTSUPP;
	return fp8_row_avx512(src, ng, gch, per, stride, x, par, codes);
}

float kvcd_e4m3_to_f32(uint8_t b)
{
	return kvce_from_e4m3(b);
}

/* Decoding reads a table: one load per value instead of a ldexpf. Built once, then read-only. */
static float e4m3_table[256];

static void e4m3_init(void)
{
	for (int i = 0; i < 256; i++)
		e4m3_table[i] = kvcd_e4m3_to_f32((uint8_t)i);
}

const float *kvcd_e4m3_lut(void)
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;

	pthread_once(&once, e4m3_init);
	return e4m3_table;
}

/* ---- Walsh-Hadamard ------------------------------------------------------------------------ */

/* One stage below 16: lane j takes v[j] + v[j ^ h] where j & h is clear (@upper's bit not
 * set), v[j ^ h] - v[j] where it is set, @idx holding j ^ h. */
__attribute__((target("avx512f"))) static inline __m512 hstage(__m512 v, __m512i idx,
							       __mmask16 upper)
{
	__m512 w = _mm512_permutexvar_ps(idx, v);

	return _mm512_mask_blend_ps(upper, _mm512_add_ps(v, w), _mm512_sub_ps(w, v));
}

/* Stages below 16 within each vector of 16 (lane j pairs with lane j ^ h: the lower one takes
 * a + b, the upper one a - b, the scalar loop's two operations), then the stages across
 * vectors: every value goes through the same additions, in the same order, as in the scalar
 * loop, so the same bits. */
__attribute__((target("avx512f"))) static void hadamard_avx512(float *x, unsigned n, float norm)
{
	const __m512i x1 = _mm512_set_epi32(14, 15, 12, 13, 10, 11, 8, 9, 6, 7, 4, 5, 2, 3, 0, 1);
	const __m512i x2 = _mm512_set_epi32(13, 12, 15, 14, 9, 8, 11, 10, 5, 4, 7, 6, 1, 0, 3, 2);
	const __m512i x4 = _mm512_set_epi32(11, 10, 9, 8, 15, 14, 13, 12, 3, 2, 1, 0, 7, 6, 5, 4);
	const __m512i x8 = _mm512_set_epi32(7, 6, 5, 4, 3, 2, 1, 0, 15, 14, 13, 12, 11, 10, 9, 8);

	for (unsigned k = 0; k < n; k += 16) {
		__m512 v = _mm512_loadu_ps(x + k);

		v = hstage(v, x1, 0xaaaa);
		v = hstage(v, x2, 0xcccc);
		v = hstage(v, x4, 0xf0f0);
		v = hstage(v, x8, 0xff00);
		_mm512_storeu_ps(x + k, v);
	}
	for (unsigned h = 16; h < n; h <<= 1)
		for (unsigned i = 0; i < n; i += 2 * h)
			for (unsigned j = i; j < i + h; j += 16) {
				__m512 a = _mm512_loadu_ps(x + j), b = _mm512_loadu_ps(x + j + h);

				_mm512_storeu_ps(x + j, _mm512_add_ps(a, b));
				_mm512_storeu_ps(x + j + h, _mm512_sub_ps(a, b));
			}
	for (unsigned i = 0; i < n; i += 16)
		_mm512_storeu_ps(x + i,
				 _mm512_mul_ps(_mm512_loadu_ps(x + i), _mm512_set1_ps(norm)));
}

void kvcd_hadamard(enum kvcd_isa isa, float *x, unsigned n)
{
	float norm = 1.0f / sqrtf((float)n);

	if (n >= 16 && isa >= KVCD_ISA_AVX512 && kvcd_isa_best() >= KVCD_ISA_AVX512) {
		hadamard_avx512(x, n, norm);
		return;
	}
	for (unsigned h = 1; h < n; h <<= 1)
		for (unsigned i = 0; i < n; i += 2 * h)
			for (unsigned j = i; j < i + h; j++) {
				float a = x[j], b = x[j + h];

				x[j] = a + b;
				x[j + h] = a - b;
			}
	for (unsigned i = 0; i < n; i++)
		x[i] *= norm;
}
