/* quant.c - group quantization: scalar reference, AVX2 and AVX-512 kernels, bit packing.
 *
 * Bit-exactness between the variants rests on doing the same IEEE operations in the same
 * order: min and max are exact in any order, then one subtraction, one division, round half
 * to even, clamp (quantize), and one multiplication then one addition (dequantize). The file
 * is compiled with -ffp-contract=off so no compiler turns the latter into an FMA.
 */
#include <cpuid.h>
#include <errno.h>
#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <string.h>

#include "elem.h"
#include "fold.h"
#include "quant.h"

__attribute__((target("f16c"))) static uint16_t hw_to_f16(float f)
{
	return (uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

__attribute__((target("f16c"))) static float hw_from_f16(uint16_t h)
{
	return _cvtsh_ss(h);
}

/* Largest f16 <= v (@down) or smallest f16 >= v; v finite and inside the f16 range. F16C
 * rounds as kvce_to_f16 does, at a fraction of the cost. */
static uint16_t f16_directed(float v, int down, bool hw)
{
	uint16_t h = hw ? hw_to_f16(v) : kvcd_f32_to_f16(v);

	return kvce_f16_step(h, hw ? hw_from_f16(h) : kvcd_f16_to_f32(h), v, down);
}

/* Scale and zero from the group's range. Returns -ERANGE when f16 cannot hold them. */
static int params(float lo, float hi, unsigned bits, uint16_t *scale, uint16_t *zero, bool hw)
{
	float levels = (float)((1u << bits) - 1), z;

	lo = kvce_canon0(lo);
	hi = kvce_canon0(hi);
	if (!(fabsf(lo) <= 65504.0f) || !(fabsf(hi) <= 65504.0f))
		return -ERANGE;
	*zero = f16_directed(lo, 1, hw);
	z = hw ? hw_from_f16(*zero) : kvcd_f16_to_f32(*zero);
	float want = (hi - z) / levels;

	if (!(want <= 65504.0f))
		return -ERANGE;
	*scale = f16_directed(want, 0, hw);
	return 0;
}

/* @r is 1/s rounded once per group: a multiply instead of a divide per value, the same in every
 * ISA. Its error moves a rounding decision only for values within ~2^-22 of a half step. */
static inline uint8_t quant_one(float x, float z, float s, float r, float levels)
{
	float q = s > 0.0f ? nearbyintf((x - z) * r) : 0.0f;

	q = q < 0.0f ? 0.0f : q > levels ? levels : q;
	return (uint8_t)q;
}

/* ---- scalar reference ------------------------------------------------------------------- */

static int range_scalar(const float *x, size_t n, float *lo, float *hi)
{
	float l = INFINITY, h = -INFINITY;

	for (size_t j = 0; j < n; j++) {
		if (!isfinite(x[j]))
			return -EINVAL;
		l = x[j] < l ? x[j] : l;
		h = x[j] > h ? x[j] : h;
	}
	*lo = l;
	*hi = h;
	return 0;
}

static void apply_scalar(const float *x, size_t n, float s, float z, float levels, uint8_t *q)
{
	float r = s > 0.0f ? 1.0f / s : 0.0f;

	for (size_t i = 0; i < n; i++)
		q[i] = quant_one(x[i], z, s, r, levels);
}

static void dequant_scalar(const uint8_t *q, size_t n, float s, float z, float *out)
{
	for (size_t i = 0; i < n; i++)
		out[i] = (float)q[i] * s + z;
}

/* ---- AVX2 -------------------------------------------------------------------------------- */

__attribute__((target("avx2"))) static int range_avx2(const float *x, size_t n, float *lo,
						      float *hi)
{
	__m256 vlo = _mm256_set1_ps(INFINITY), vhi = _mm256_set1_ps(-INFINITY);
	__m256 bad = _mm256_setzero_ps();
	float l, h, t[8];
	size_t i = 0;

	for (; i + 8 <= n; i += 8) {
		__m256 v = _mm256_loadu_ps(x + i);

		bad = _mm256_or_ps(
			bad, _mm256_cmp_ps(_mm256_sub_ps(v, v), _mm256_setzero_ps(), _CMP_NEQ_UQ));
		vlo = _mm256_min_ps(vlo, v);
		vhi = _mm256_max_ps(vhi, v);
	}
	if (_mm256_movemask_ps(bad))
		return -EINVAL;
	_mm256_storeu_ps(t, vlo);
	l = t[0];
	for (int k = 1; k < 8; k++)
		l = t[k] < l ? t[k] : l;
	_mm256_storeu_ps(t, vhi);
	h = t[0];
	for (int k = 1; k < 8; k++)
		h = t[k] > h ? t[k] : h;
	*lo = l;
	*hi = h;
	if (i < n) {
		if (range_scalar(x + i, n - i, &l, &h))
			return -EINVAL;
		*lo = *lo < l ? *lo : l;
		*hi = *hi > h ? *hi : h;
	}
	return 0;
}

__attribute__((target("avx2"))) static void apply_avx2(const float *x, size_t n, float s, float z,
						       float levels, uint8_t *q)
{
	size_t i = 0;

	if (s > 0.0f) {
		__m256 vz = _mm256_set1_ps(z), vr = _mm256_set1_ps(1.0f / s);
		__m256 vmax = _mm256_set1_ps(levels), v0 = _mm256_setzero_ps();

		for (; i + 8 <= n; i += 8) {
			__m256 v = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vz), vr);

			v = _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
			v = _mm256_min_ps(_mm256_max_ps(v, v0), vmax);
			__m256i w = _mm256_cvtps_epi32(v);
			__m128i lo16 = _mm_packus_epi32(_mm256_castsi256_si128(w),
							_mm256_extracti128_si256(w, 1));

			_mm_storel_epi64((__m128i *)(q + i), _mm_packus_epi16(lo16, lo16));
		}
	}
	if (i < n)
		apply_scalar(x + i, n - i, s, z, levels, q + i);
}

__attribute__((target("avx2"))) static void dequant_avx2(const uint8_t *q, size_t n, float s,
							 float z, float *out)
{
	__m256 vs = _mm256_set1_ps(s), vz = _mm256_set1_ps(z);
	size_t i = 0;

	for (; i + 8 <= n; i += 8) {
		__m256i w = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(q + i)));

		_mm256_storeu_ps(out + i,
				 _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(w), vs), vz));
	}
	if (i < n)
		dequant_scalar(q + i, n - i, s, z, out + i);
}

/* ---- AVX-512 ----------------------------------------------------------------------------- */

__attribute__((target("avx512f,avx512bw"))) static int range_avx512(const float *x, size_t n,
								    float *lo, float *hi)
{
	__m512 vlo = _mm512_set1_ps(INFINITY), vhi = _mm512_set1_ps(-INFINITY);
	__mmask16 bad = 0;
	float l, h;
	size_t i = 0;

	for (; i + 16 <= n; i += 16) {
		__m512 v = _mm512_loadu_ps(x + i);

		bad |= _mm512_cmp_ps_mask(_mm512_sub_ps(v, v), _mm512_setzero_ps(), _CMP_NEQ_UQ);
		vlo = _mm512_min_ps(vlo, v);
		vhi = _mm512_max_ps(vhi, v);
	}
	if (bad)
		return -EINVAL;
	l = _mm512_reduce_min_ps(vlo);
	h = _mm512_reduce_max_ps(vhi);
	*lo = l;
	*hi = h;
	if (i < n) {
		if (range_scalar(x + i, n - i, &l, &h))
			return -EINVAL;
		*lo = *lo < l ? *lo : l;
		*hi = *hi > h ? *hi : h;
	}
	return 0;
}

__attribute__((target("avx512f,avx512bw"))) static void apply_avx512(const float *x, size_t n,
								     float s, float z, float levels,
								     uint8_t *q)
{
	size_t i = 0;

	if (s > 0.0f) {
		__m512 vz = _mm512_set1_ps(z), vr = _mm512_set1_ps(1.0f / s);
		__m512 vmax = _mm512_set1_ps(levels), v0 = _mm512_setzero_ps();

		for (; i + 16 <= n; i += 16) {
			__m512 v = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(x + i), vz), vr);

			v = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
			v = _mm512_min_ps(_mm512_max_ps(v, v0), vmax);
			_mm_storeu_si128((__m128i *)(q + i),
					 _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(v)));
		}
	}
	if (i < n)
		apply_scalar(x + i, n - i, s, z, levels, q + i);
}

__attribute__((target("avx512f,avx512bw"))) static void dequant_avx512(const uint8_t *q, size_t n,
								       float s, float z, float *out)
{
	__m512 vs = _mm512_set1_ps(s), vz = _mm512_set1_ps(z);
	size_t i = 0;

	for (; i + 16 <= n; i += 16) {
		__m512i w = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(q + i)));

		_mm512_storeu_ps(out + i,
				 _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(w), vs), vz));
	}
	if (i < n)
		dequant_scalar(q + i, n - i, s, z, out + i);
}

/* Loops over @ng groups of @n values, one per ISA so the kernels inline into them. */
#define GROUP_LOOPS(isa, tgt)                                                                      \
	__attribute__((target(tgt))) static int ranges_##isa(const float *x, size_t ng, size_t n,  \
							     float *lo, float *hi)                 \
	{                                                                                          \
		for (size_t g = 0; g < ng; g++)                                                    \
			if (range_##isa(x + g * n, n, &lo[g], &hi[g]))                             \
				return -EINVAL;                                                    \
		return 0;                                                                          \
	}                                                                                          \
	__attribute__((target(tgt))) static void applies_##isa(                                    \
		const float *x, size_t ng, size_t n, float levels, const uint16_t *sz, uint8_t *q) \
	{                                                                                          \
		for (size_t g = 0; g < ng; g++)                                                    \
			apply_##isa(x + g * n, n, hw_from_f16(sz[2 * g]),                          \
				    hw_from_f16(sz[2 * g + 1]), levels, q + g * n);                \
	}
GROUP_LOOPS(avx2, "avx2,f16c")
GROUP_LOOPS(avx512, "avx512f,avx512bw,f16c")

/* ---- dispatch ---------------------------------------------------------------------------- */

float kvcd_to_i8(const float *x, uint32_t n, int8_t *o)
{
	float amax = 0.0f, sc;

	for (uint32_t c = 0; c < n; c++)
		amax = fmaxf(amax, fabsf(x[c]));
	sc = amax / 127.0f;
	for (uint32_t c = 0; c < n; c++)
		o[c] = (int8_t)(sc > 0.0f ? lrintf(x[c] / sc) : 0);
	return sc;
}

int kvcd_quant_ranges(enum kvcd_isa isa, const float *x, size_t ng, size_t n, float *lo, float *hi)
{
	isa = kvcd_isa_clamp(isa);
	if (isa >= KVCD_ISA_AVX512 && kvcd_has_f16c())
		return ranges_avx512(x, ng, n, lo, hi);
	if (isa == KVCD_ISA_AVX2 && kvcd_has_f16c())
		return ranges_avx2(x, ng, n, lo, hi);
	for (size_t g = 0; g < ng; g++)
		if (range_scalar(x + g * n, n, &lo[g], &hi[g]))
			return -EINVAL;
	return 0;
}

/* f16_directed on 8 lanes: @h holds round-to-nearest of @v; lanes where that went the wrong
 * way step one f16 towards the side wanted, exactly as the scalar code does. */
__attribute__((target("avx2,f16c"))) static __m128i directed_x8(__m256 v, __m128i h, int down)
{
	__m256 back = _mm256_cvtph_ps(h);
	__m256 wrong = down ? _mm256_cmp_ps(back, v, _CMP_GT_OQ) : /* immediates, for clang */
			       _mm256_cmp_ps(back, v, _CMP_LT_OQ);
	__m256i w32 = _mm256_castps_si256(wrong);
	__m128i wrong16 = _mm_packs_epi32(_mm256_castsi256_si128(w32),
					  _mm256_extracti128_si256(w32, 1));
	__m128i one = _mm_set1_epi16(1);
	__m128i mag0 = _mm_cmpeq_epi16(_mm_and_si128(h, _mm_set1_epi16(0x7fff)),
				       _mm_setzero_si128());
	__m128i neg = _mm_srai_epi16(h, 15); /* all ones where the sign is set */
	/* down: positive h - 1, negative h + 1; up: the opposite; +-0 goes to -/+ smallest */
	__m128i away = down ? neg : _mm_xor_si128(neg, _mm_set1_epi16(-1));
	__m128i step = _mm_blendv_epi8(_mm_sub_epi16(h, one), _mm_add_epi16(h, one), away);
	step = _mm_blendv_epi8(step, _mm_set1_epi16(down ? (short)0x8001 : 0x0001), mag0);
	return _mm_blendv_epi8(h, step, wrong16);
}

/* params() on 8 groups. Returns -ERANGE when any of them is out of range. */
__attribute__((target("avx2,f16c"))) static int params_x8(const float *lo, const float *hi,
							  unsigned bits, uint16_t *sz)
{
	const __m256 lim = _mm256_set1_ps(65504.0f),
		     absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
	/* + 0: kvce_canon0 */
	__m256 vlo = _mm256_add_ps(_mm256_loadu_ps(lo), _mm256_setzero_ps()),
	       vhi = _mm256_add_ps(_mm256_loadu_ps(hi), _mm256_setzero_ps()), z, want;
	__m256 ok = _mm256_and_ps(_mm256_cmp_ps(_mm256_and_ps(vlo, absmask), lim, _CMP_LE_OQ),
				  _mm256_cmp_ps(_mm256_and_ps(vhi, absmask), lim, _CMP_LE_OQ));
	__m128i zh, sh;

	if (_mm256_movemask_ps(ok) != 0xff)
		return -ERANGE;
	zh = directed_x8(vlo, _mm256_cvtps_ph(vlo, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC),
			 1);
	z = _mm256_cvtph_ps(zh);
	want = _mm256_div_ps(_mm256_sub_ps(vhi, z), _mm256_set1_ps((float)((1u << bits) - 1)));
	if (_mm256_movemask_ps(_mm256_cmp_ps(want, lim, _CMP_LE_OQ)) != 0xff)
		return -ERANGE;
	sh = directed_x8(want, _mm256_cvtps_ph(want, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC),
			 0);
	_mm_storeu_si128((__m128i *)sz, _mm_unpacklo_epi16(sh, zh));
	_mm_storeu_si128((__m128i *)(sz + 8), _mm_unpackhi_epi16(sh, zh));
	return 0;
}

int kvcd_quant_params(enum kvcd_isa isa, const float *lo, const float *hi, size_t ng, unsigned bits,
		      uint16_t *sz)
{
	bool hw = kvcd_isa_clamp(isa) > KVCD_ISA_SCALAR && kvcd_has_f16c();
	size_t g = 0;

	if (bits < 2 || bits > 8)
		return -EINVAL;
	for (; hw && g + 8 <= ng; g += 8)
		if (params_x8(lo + g, hi + g, bits, sz + 2 * g))
			return -ERANGE;
	for (; g < ng; g++)
		if (params(lo[g], hi[g], bits, &sz[2 * g], &sz[2 * g + 1], hw))
			return -ERANGE;
	return 0;
}

/* ---- compact parameters (params=u8) ------------------------------------------------------
 * Group g's zero is L0 + zc[g] * step (the zeros' span in 255 steps, rounded down) and its
 * scale smax * 2^(-sc[g] / 16) (rounded up, at most 4.4% coarser than needed), both then
 * taken to f16 in the same directions as kvcd_quant_params, so the f16 pairs the kernels use
 * come out bit for bit the same in the encoder and the decoder. */

static float pow2_16th[256]; /* 2^(-k/16) */
static pthread_once_t pow2_once = PTHREAD_ONCE_INIT;

static void pow2_init(void)
{
	for (int k = 0; k < 256; k++)
		pow2_16th[k] = exp2f((float)-k / 16.0f);
}

struct qref {
	float l0, step, smax;
};

/* The f16 pair of one group; -ERANGE when f16 cannot hold it. */
static int u8_pair(const struct qref *r, uint8_t zc, uint8_t sc, uint16_t *sz)
{
	float z = r->l0 + (float)zc * r->step, s = r->smax * pow2_16th[sc];

	if (!(fabsf(z) <= 65504.0f) || !(s <= 65504.0f))
		return -ERANGE;
	sz[1] = f16_directed(z, 1, false);
	sz[0] = f16_directed(s, 0, false);
	return 0;
}

int kvcd_quant_params_u8(const float *lo, const float *hi, size_t ng, unsigned bits,
			 uint8_t ref[KVCD_QREF_BYTES], uint8_t *codes, uint16_t *sz)
{
	float levels = (float)((1u << bits) - 1), l1 = -INFINITY;
	struct qref r = { INFINITY, 0.0f, 0.0f };

	if (bits < 2 || bits > 8 || !ng)
		return -EINVAL;
	pthread_once(&pow2_once, pow2_init);
	for (size_t g = 0; g < ng; g++) {
		if (!(fabsf(lo[g]) <= 65504.0f) || !(fabsf(hi[g]) <= 65504.0f))
			return -ERANGE;
		r.l0 = lo[g] < r.l0 ? lo[g] : r.l0;
		l1 = lo[g] > l1 ? lo[g] : l1;
	}
	r.step = (l1 - r.l0) / 255.0f;
	/* zeros first (scale code 0 for now), then the largest scale any group needs */
	for (size_t g = 0; g < ng; g++) {
		float f = r.step > 0.0f ? floorf((lo[g] - r.l0) / r.step) : 0.0f;
		uint8_t zc = (uint8_t)(f < 0.0f ? 0.0f : f > 255.0f ? 255.0f : f);

		while (zc && r.l0 + (float)zc * r.step > lo[g])
			zc--;
		codes[2 * g] = zc;
		codes[2 * g + 1] = 0;
		if (u8_pair(&r, zc, 0, &sz[2 * g]))
			return -ERANGE;
		/* what the f16 zero leaves to cover */
		float need = (hi[g] - kvcd_f16_to_f32(sz[2 * g + 1])) / levels;

		r.smax = need > r.smax ? need : r.smax;
	}
	for (size_t g = 0; g < ng; g++) {
		float need = (hi[g] - kvcd_f16_to_f32(sz[2 * g + 1])) / levels;
		float f = need > 0.0f ? floorf(-16.0f * log2f(need / r.smax)) : 255.0f;
		uint8_t sc = (uint8_t)(f < 0.0f ? 0.0f : f > 255.0f ? 255.0f : f);

		while (sc && r.smax * pow2_16th[sc] < need)
			sc--;
		codes[2 * g + 1] = sc;
		if (u8_pair(&r, codes[2 * g], sc, &sz[2 * g]))
			return -ERANGE;
	}
	memcpy(ref, &r, KVCD_QREF_BYTES);
	return 0;
}

int kvcd_quant_params_u8_read(const uint8_t ref[KVCD_QREF_BYTES], const uint8_t *codes, size_t ng,
			      uint16_t *sz)
{
	struct qref r;

	memcpy(&r, ref, KVCD_QREF_BYTES);
	if (!(fabsf(r.l0) <= 65504.0f) || !(r.step >= 0.0f && r.step <= 65504.0f) ||
	    !(r.smax >= 0.0f && r.smax <= 65504.0f))
		return -EBADMSG;
	pthread_once(&pow2_once, pow2_init);
	for (size_t g = 0; g < ng; g++)
		if (u8_pair(&r, codes[2 * g], codes[2 * g + 1], &sz[2 * g]))
			return -EBADMSG;
	return 0;
}

void kvcd_quant_apply(enum kvcd_isa isa, const float *x, size_t ng, size_t n, unsigned bits,
		      const uint16_t *sz, uint8_t *q)
{
	float levels = (float)((1u << bits) - 1);
	bool hw;

	isa = kvcd_isa_clamp(isa);
	hw = isa > KVCD_ISA_SCALAR && kvcd_has_f16c();
	if (hw && isa >= KVCD_ISA_AVX512) {
		applies_avx512(x, ng, n, levels, sz, q);
		return;
	}
	if (hw && isa == KVCD_ISA_AVX2) {
		applies_avx2(x, ng, n, levels, sz, q);
		return;
	}
	for (size_t g = 0; g < ng; g++) {
		float s = hw ? hw_from_f16(sz[2 * g]) : kvcd_f16_to_f32(sz[2 * g]);
		float z = hw ? hw_from_f16(sz[2 * g + 1]) : kvcd_f16_to_f32(sz[2 * g + 1]);

		if (isa >= KVCD_ISA_AVX512)
			apply_avx512(x + g * n, n, s, z, levels, q + g * n);
		else if (isa == KVCD_ISA_AVX2)
			apply_avx2(x + g * n, n, s, z, levels, q + g * n);
		else
			apply_scalar(x + g * n, n, s, z, levels, q + g * n);
	}
}

int kvcd_quant_group(enum kvcd_isa isa, const float *x, size_t n, unsigned bits, uint8_t *q,
		     uint16_t *scale, uint16_t *zero)
{
	float lo, hi;
	uint16_t sz[2];
	int err;

	if (bits < 2 || bits > 8 || !n)
		return -EINVAL;
	err = kvcd_quant_ranges(isa, x, 1, n, &lo, &hi);
	if (!err)
		err = kvcd_quant_params(isa, &lo, &hi, 1, bits, sz);
	if (err)
		return err;
	kvcd_quant_apply(isa, x, 1, n, bits, sz, q);
	*scale = sz[0];
	*zero = sz[1];
	return 0;
}

void kvcd_dequant_group(enum kvcd_isa isa, const uint8_t *q, size_t n, uint16_t scale,
			uint16_t zero, float *out)
{
	float s, z;

	isa = kvcd_isa_clamp(isa);
	if (isa > KVCD_ISA_SCALAR && kvcd_has_f16c()) {
		s = hw_from_f16(scale);
		z = hw_from_f16(zero);
	} else {
		s = kvcd_f16_to_f32(scale);
		z = kvcd_f16_to_f32(zero);
	}
	if (isa >= KVCD_ISA_AVX512)
		dequant_avx512(q, n, s, z, out);
	else if (isa == KVCD_ISA_AVX2)
		dequant_avx2(q, n, s, z, out);
	else
		dequant_scalar(q, n, s, z, out);
}

/* 16 rows of 16 bytes (@src, @ss apart) into their 16 columns, @out[j] = column j: bytes,
 * then pairs, then quads, then halves interleaved. */
__attribute__((target("avx2"))) static void transpose16_u8(const uint8_t *src, size_t ss,
							   __m128i *out)
{
	__m128i r[16], t[16], u[16], v[16];

	for (int i = 0; i < 16; i++)
		r[i] = _mm_loadu_si128((const __m128i *)(src + i * ss));
	for (int k = 0; k < 8; k++) { /* t[2k], t[2k + 1]: rows 2k, 2k + 1, columns 0-7, 8-15 */
		t[2 * k] = _mm_unpacklo_epi8(r[2 * k], r[2 * k + 1]);
		t[2 * k + 1] = _mm_unpackhi_epi8(r[2 * k], r[2 * k + 1]);
	}
	for (int g = 0; g < 4; g++) { /* u[4g + q]: rows 4g..4g + 3, columns 4q..4q + 3 */
		u[4 * g + 0] = _mm_unpacklo_epi16(t[4 * g + 0], t[4 * g + 2]);
		u[4 * g + 1] = _mm_unpackhi_epi16(t[4 * g + 0], t[4 * g + 2]);
		u[4 * g + 2] = _mm_unpacklo_epi16(t[4 * g + 1], t[4 * g + 3]);
		u[4 * g + 3] = _mm_unpackhi_epi16(t[4 * g + 1], t[4 * g + 3]);
	}
	for (int h = 0; h < 2; h++) /* v[8h + m]: rows 8h..8h + 7, columns 2m, 2m + 1 */
		for (int q = 0; q < 4; q++) {
			v[8 * h + 2 * q] = _mm_unpacklo_epi32(u[8 * h + q], u[8 * h + 4 + q]);
			v[8 * h + 2 * q + 1] = _mm_unpackhi_epi32(u[8 * h + q], u[8 * h + 4 + q]);
		}
	for (int m = 0; m < 8; m++) {
		out[2 * m] = _mm_unpacklo_epi64(v[m], v[8 + m]);
		out[2 * m + 1] = _mm_unpackhi_epi64(v[m], v[8 + m]);
	}
}

/* With @out16, f16 rows there (@nt: streamed) instead of floats at @out. */
__attribute__((target("avx512f,avx512bw,avx2,f16c"))) static void dequant_rows_avx512(
	const uint8_t *q, size_t d, size_t n, const uint16_t *par, float *out, size_t ts,
	uint16_t *out16, bool nt)
{
	float s[1024], z[1024];
	__m128i col[16];

	for (size_t c = 0; c < d; c++) {
		s[c] = hw_from_f16(par[2 * c]);
		z[c] = hw_from_f16(par[2 * c + 1]);
	}
	for (size_t c = 0; c < d; c += 16) {
		__m512 vs = _mm512_loadu_ps(s + c), vz = _mm512_loadu_ps(z + c);

		for (size_t i = 0; i < n; i += 16) { /* tokens i..i + 15 of channels c..c + 15 */
			transpose16_u8(q + c * n + i, n, col);
			for (int k = 0; k < 16; k++) {
				__m512 x = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(col[k]));

				/* multiply, then add, as dequant_avx512 does: the same floats */
				x = _mm512_add_ps(_mm512_mul_ps(x, vs), vz);
				if (out16)
					kvcd_put_f16x16(out16 + (i + (size_t)k) * ts + c, x, nt);
				else
					_mm512_storeu_ps(out + (i + (size_t)k) * ts + c, x);
			}
		}
	}
}

bool kvcd_dequant_rows(enum kvcd_isa isa, const uint8_t *q, size_t d, size_t n, const uint16_t *par,
		       float *out, size_t ts)
{
	if (kvcd_isa_clamp(isa) < KVCD_ISA_AVX512 || !kvcd_has_f16c() || d % 16 || n % 16 ||
	    d > 1024)
		return false;
	dequant_rows_avx512(q, d, n, par, out, ts, NULL, false);
	return true;
}

bool kvcd_dequant_rows_f16(enum kvcd_isa isa, const uint8_t *q, size_t d, size_t n,
			   const uint16_t *par, uint16_t *out, size_t ts, bool nt)
{
	if (kvcd_isa_clamp(isa) < KVCD_ISA_AVX512 || !kvcd_has_f16c() || d % 16 || n % 16 ||
	    d > 1024 || (nt && ((uintptr_t)out % 32 || ts % 16)))
		return false;
	dequant_rows_avx512(q, d, n, par, NULL, ts, out, nt);
	return true;
}

/* 16 codes of @bits (8 or 4: two a byte, the low nibble first) at @c, as 32-bit lanes */
__attribute__((target("avx512f,avx512bw"))) static inline __m512i codes16(const uint8_t *c,
									  unsigned bits)
{
	if (bits == 8)
		return _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)c));
	__m128i b = _mm_loadl_epi64((const __m128i *)c), m = _mm_set1_epi8(0x0f);

	return _mm512_cvtepu8_epi32(
		_mm_unpacklo_epi8(_mm_and_si128(b, m), _mm_and_si128(_mm_srli_epi16(b, 4), m)));
}

__attribute__((target("avx512f,avx512bw,f16c"))) static void dequant_row_avx512(
	const uint8_t *par, const uint8_t *codes, size_t ng, size_t gch, size_t per, unsigned bits,
	size_t stride, uint16_t *out, bool nt)
{
	size_t cb = gch * bits / 8, head = 0, gi = 0;

	for (size_t g = 0; g < ng; g++, gi = gi + 1 < per ? gi + 1 : 0, head += !gi) {
		const uint8_t *q = codes + head * stride + gi * cb;
		uint16_t sz[2];

		memcpy(sz, par + head * stride + gi * 4, 4);
		__m512 vs = _mm512_set1_ps(hw_from_f16(sz[0])),
		       vz = _mm512_set1_ps(hw_from_f16(sz[1]));

		for (size_t i = 0; i < gch; i += 16) {
			__m512 x = _mm512_cvtepi32_ps(codes16(q + i * bits / 8, bits));

			/* multiply, then add, as dequant_avx512 does: the same floats */
			kvcd_put_f16x16(out + g * gch + i, _mm512_add_ps(_mm512_mul_ps(x, vs), vz),
					nt);
		}
	}
}

bool kvcd_dequant_row_f16(enum kvcd_isa isa, const uint8_t *par, const uint8_t *codes, size_t ng,
			  size_t gch, size_t per, unsigned bits, size_t stride, uint16_t *out,
			  bool nt)
{
	if (!kvcd_quant_row_f16_ok(isa, gch, bits) || (nt && (uintptr_t)out % 32))
		return false;
	dequant_row_avx512(par, codes, ng, gch, per, bits, stride, out, nt);
	return true;
}

/* ---- f16 rows in one pass (AVX-512) ------------------------------------------------------- */

/* 64 codes, four vectors of 16 each in 0..@levels after rounding (a value is at most a few
 * ulps past the top level) but not yet clamped, to bytes clamped as kvcd_quant_apply clamps:
 * the saturating packs give 0..255, a minimum the rest. */
__attribute__((target("avx512f,avx512bw"))) static inline __m512i codes64(const __m512i c[4],
									  unsigned bits)
{
	__m512i q = kvcd_pack64(c);

	return bits == 8 ? q : _mm512_min_epu8(q, _mm512_set1_epi8((char)((1u << bits) - 1)));
}

/* f16_directed on 16 lanes, each f16 in the low half of a 32-bit lane: directed_x8's steps. */
__attribute__((target("avx512f,f16c"))) static inline __m512i directed_x16(__m512 v, int down)
{
	__m256i h16 = _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
	__m512i h = _mm512_cvtepu16_epi32(h16), one = _mm512_set1_epi32(1);
	__m512 back = _mm512_cvtph_ps(h16);
	__mmask16 wrong = down ? _mm512_cmp_ps_mask(back, v, _CMP_GT_OQ) /* immediates */
			       : _mm512_cmp_ps_mask(back, v, _CMP_LT_OQ);
	__mmask16 neg = _mm512_test_epi32_mask(h, _mm512_set1_epi32(0x8000));
	__mmask16 zero = _mm512_testn_epi32_mask(h, _mm512_set1_epi32(0x7fff));
	/* down: positive h - 1, negative h + 1; up: the opposite; +-0 to -/+ the smallest */
	__m512i step = _mm512_mask_add_epi32(_mm512_sub_epi32(h, one), down ? neg : (__mmask16)~neg,
					     h, one);

	step = _mm512_mask_mov_epi32(step, zero, _mm512_set1_epi32(down ? 0x8001 : 0x0001));
	return _mm512_mask_mov_epi32(h, wrong, step);
}

/* params() on the 16 lanes of @lo and @hi: the f16 pairs to @sz (scale, zero) and as floats
 * to @s and @z, with 1 / s to @r. Returns -ERANGE when any lane is out of range. */
__attribute__((target("avx512f,f16c"))) static int params_x16(__m512 lo, __m512 hi, unsigned bits,
							      float *s, float *z, float *r,
							      uint16_t *sz)
{
	const __m512 lim = _mm512_set1_ps(65504.0f);
	__m512i zh, sh;
	__m512 zf, sf, want;

	lo = _mm512_add_ps(lo, _mm512_setzero_ps()); /* kvce_canon0 */
	hi = _mm512_add_ps(hi, _mm512_setzero_ps());
	if (_mm512_cmp_ps_mask(_mm512_abs_ps(lo), lim, _CMP_NLE_UQ) |
	    _mm512_cmp_ps_mask(_mm512_abs_ps(hi), lim, _CMP_NLE_UQ))
		return -ERANGE;
	zh = directed_x16(lo, 1);
	zf = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(zh));
	want = _mm512_div_ps(_mm512_sub_ps(hi, zf), _mm512_set1_ps((float)((1u << bits) - 1)));
	if (_mm512_cmp_ps_mask(want, lim, _CMP_NLE_UQ))
		return -ERANGE;
	sh = directed_x16(want, 0);
	sf = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(sh));
	_mm512_storeu_si512(sz, _mm512_or_si512(sh, _mm512_slli_epi32(zh, 16)));
	_mm512_storeu_ps(s, sf);
	_mm512_storeu_ps(z, zf);
	_mm512_storeu_ps(r, _mm512_div_ps(_mm512_set1_ps(1.0f), sf));
	return 0;
}

/* From f16 values at @src, converted into @x; or, with @src NULL, from the floats at @x. */
__attribute__((target("avx512f,avx512bw,f16c"))) static int row_avx512(const uint8_t *src,
								       size_t ng, size_t gch,
								       size_t per, unsigned bits,
								       size_t stride, float *x,
								       uint8_t *par, uint8_t *codes)
{
	size_t cb = gch * bits / 8, head = 0, gi = 0; /* a group's code bytes; where it goes */

	for (size_t g0 = 0; g0 < ng; g0 += 16) {
		size_t nb = ng - g0 < 16 ? ng - g0 : 16;
		__m512 mn[16], mx[16], bad = _mm512_setzero_ps();
		float s[16], z[16], r[16];
		uint16_t sz[32];

		/* convert and range. An inf or nan makes its group's sum times 0 a nan (finite
		 * f16 values cannot add up to an inf): a chain of adds per group, where a running
		 * mask of compares would be one chain through the whole row. */
		for (size_t j = 0; j < nb; j++) {
			size_t g = g0 + j;
			const uint8_t *h = src ? src + 2 * g * gch : NULL;
			__m512 acc = _mm512_setzero_ps();

			mn[j] = _mm512_set1_ps(INFINITY);
			mx[j] = _mm512_set1_ps(-INFINITY);
			for (size_t i = 0; i < gch; i += 16) {
				__m512 v;

				if (src) {
					v = _mm512_cvtph_ps(
						_mm256_loadu_si256((const __m256i *)(h + 2 * i)));
					_mm512_storeu_ps(x + g * gch + i, v);
				} else {
					v = _mm512_loadu_ps(x + g * gch + i);
				}
				acc = _mm512_add_ps(acc, v);
				mn[j] = _mm512_min_ps(mn[j], v);
				mx[j] = _mm512_max_ps(mx[j], v);
			}
			bad = _mm512_add_ps(bad, _mm512_mul_ps(acc, _mm512_setzero_ps()));
		}
		for (size_t j = nb; j < 16; j++) { /* a short batch folds its last group again */
			mn[j] = mn[nb - 1];
			mx[j] = mx[nb - 1];
		}
		__m512 vlo = kvcd_fold16(mn, false), vhi = kvcd_fold16(mx, true);

		if (_mm512_cmp_ps_mask(bad, bad, _CMP_UNORD_Q))
			return -EINVAL;
		if (params_x16(vlo, vhi, bits, s, z, r, sz))
			return -ERANGE;
		/* quantize from the converted copy, 64 codes at a time */
		for (size_t j = 0; j < nb; j++, gi = gi + 1 < per ? gi + 1 : 0, head += !gi) {
			size_t g = g0 + j;
			uint8_t *q = codes + head * stride + gi * cb;
			const float *v = x + g * gch;
			__m512 vz = _mm512_set1_ps(z[j]), vr = _mm512_set1_ps(r[j]);

			memcpy(par + head * stride + gi * 4, &sz[2 * j], 4);
			if (!(s[j] > 0.0f)) { /* a constant group: every code 0 */
				memset(q, 0, cb);
				continue;
			}
			size_t i = 0;

			for (; i + 64 <= gch; i += 64) {
				__m512i c[4], b;

				for (int k = 0; k < 4; k++)
					c[k] = _mm512_cvt_roundps_epi32(
						_mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(v + i +
											    16 * k),
									    vz),
							      vr),
						_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
				b = codes64(c, bits);
				if (bits == 8) {
					_mm512_storeu_si512(q + i, b);
				} else { /* two to a byte, the even one low */
					b = _mm512_maddubs_epi16(b, _mm512_set1_epi16(0x1001));
					_mm256_storeu_si256((__m256i *)(q + i / 2),
							    _mm512_cvtepi16_epi8(b));
				}
			}
			for (; i < gch; i += 16) { /* groups not in 64s: 16 codes at a time */
				__m512i c = _mm512_min_epi32(
					_mm512_cvt_roundps_epi32(
						_mm512_mul_ps(
							_mm512_sub_ps(_mm512_loadu_ps(v + i), vz),
							vr),
						_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC),
					_mm512_set1_epi32((int)((1u << bits) - 1)));

				if (bits == 8)
					_mm_storeu_si128((__m128i *)(q + i),
							 _mm512_cvtepi32_epi8(c));
				else /* each 64-bit lane a pair: the odd one up 4 bits */
					_mm_storel_epi64((__m128i *)(q + i / 2),
							 _mm512_cvtepi64_epi8(_mm512_or_si512(
								 c, _mm512_srli_epi64(c, 28))));
			}
		}
	}
	return 0;
}

int kvcd_quant_row_f16(enum kvcd_isa isa, const uint8_t *src, size_t ng, size_t gch, size_t per,
		       unsigned bits, size_t stride, float *x, uint8_t *par, uint8_t *codes)
{
	if (!kvcd_quant_row_f16_ok(isa, gch, bits))
		return -EOPNOTSUPP;
	return row_avx512(src, ng, gch, per, bits, stride, x, par, codes);
}

int kvcd_quant_row_f32(enum kvcd_isa isa, float *x, size_t ng, size_t gch, size_t per,
		       unsigned bits, size_t stride, uint8_t *par, uint8_t *codes)
{
	if (!kvcd_quant_row_f16_ok(isa, gch, bits))
		return -EOPNOTSUPP;
	return row_avx512(NULL, ng, gch, per, bits, stride, x, par, codes);
}

bool kvcd_quant_row_f16_ok(enum kvcd_isa isa, size_t gch, unsigned bits)
{
	return (bits == 8 || bits == 4) && gch && gch % 16 == 0 &&
	       kvcd_isa_clamp(isa) >= KVCD_ISA_AVX512 && kvcd_has_f16c();
}

/* ---- KIVI keys: f16 token rows quantized per channel (AVX-512) ----------------------------- */

bool kvcd_quant_chan_f16_ok(enum kvcd_isa isa, size_t G, size_t d, unsigned bits)
{
	size_t n = G * bits / 8;

	return (bits == 2 || bits == 4 || bits == 8) && G * bits % 8 == 0 &&
	       (n == 8 || n == 16 || n == 32) && d && d % 16 == 0 &&
	       kvcd_isa_clamp(isa) >= KVCD_ISA_AVX512 && kvcd_has_f16c();
}

__attribute__((target("avx512f,avx512bw,f16c"))) static int chan_f16_avx512(const uint8_t *src,
									    size_t rs, size_t G,
									    size_t d, unsigned bits,
									    float *x, uint8_t *par,
									    uint8_t *codes)
{
	/* bytes and 32-bit words a channel, tokens a word */
	const size_t n = G * bits / 8, m = n / 4, tpw = 32 / bits;
	const __m512i top = _mm512_set1_epi32((int)((1u << bits) - 1));
	/* lane i: i / m, the channel its word comes from (+ 16 / m per vector); lanes i % m == 0 */
	const __m512i base = _mm512_srli_epi32(
		_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
		(unsigned)__builtin_ctz((unsigned)m));
	const unsigned every = m == 2 ? 0x5555 : m == 4 ? 0x1111 : 0x0101;

	for (size_t k = 0; k < d; k += 16) { /* 16 channels: a lane each */
		__m512 lo = _mm512_set1_ps(INFINITY), hi = _mm512_set1_ps(-INFINITY);
		__m512 acc = _mm512_setzero_ps(), vz, vr;
		float s[16], z[16], r[16];
		uint16_t sz[32];
		__m512i w[8];
		__mmask16 live;

		/* each channel's range runs down the rows: no reduction across lanes */
		for (size_t t = 0; t < G; t++) {
			__m512 v = _mm512_cvtph_ps(
				_mm256_loadu_si256((const __m256i *)(src + t * rs + 2 * k)));

			_mm512_storeu_ps(x + t * 16, v);
			acc = _mm512_add_ps(acc, v);
			lo = _mm512_min_ps(lo, v);
			hi = _mm512_max_ps(hi, v);
		}
		/* an inf or nan: the sum times 0 is a nan (as in the row kernels) */
		acc = _mm512_mul_ps(acc, _mm512_setzero_ps());
		if (_mm512_cmp_ps_mask(acc, acc, _CMP_UNORD_Q))
			return -EINVAL;
		if (params_x16(lo, hi, bits, s, z, r, sz))
			return -ERANGE;
		memcpy(par + k * 4, sz, 64);
		vz = _mm512_loadu_ps(z);
		vr = _mm512_loadu_ps(r);
		live = _mm512_cmp_ps_mask(_mm512_loadu_ps(s), _mm512_setzero_ps(), _CMP_GT_OQ);
		/* the codes of 32 / bits consecutive tokens into one 32-bit word per channel,
		 * little-endian as kvcd_pack has them, then the words turned from [token][channel]
		 * to [channel][token]: output word i of vector o is word i % m of channel
		 * (16 o + i) / m, one masked permutation per source word */
		for (size_t v = 0; v < m; v++)
			w[v] = _mm512_setzero_si512();
		for (size_t t = 0; t < G; t++) {
			__m512 v = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(x + t * 16), vz),
						 vr);
			__m512i q = _mm512_maskz_cvt_roundps_epi32(
				live, v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);

			w[t / tpw] = _mm512_or_si512(w[t / tpw],
						     _mm512_slli_epi32(_mm512_min_epi32(q, top),
								       (unsigned)(t % tpw * bits)));
		}
		for (size_t o = 0; o < m; o++) {
			__m512i out = _mm512_setzero_si512(),
				idx = _mm512_add_epi32(base, _mm512_set1_epi32((int)(16 / m * o)));

			for (size_t v = 0; v < m; v++)
				out = _mm512_mask_permutexvar_epi32(out, (__mmask16)(every << v),
								    idx, w[v]);
			_mm512_storeu_si512(codes + k * n + o * 64, out);
		}
	}
	return 0;
}

int kvcd_quant_chan_f16(enum kvcd_isa isa, const uint8_t *src, size_t rs, size_t G, size_t d,
			unsigned bits, float *x, uint8_t *par, uint8_t *codes)
{
	if (!kvcd_quant_chan_f16_ok(isa, G, d, bits))
		return -EOPNOTSUPP;
	return chan_f16_avx512(src, rs, G, d, bits, x, par, codes);
}

/* ---- packing: little-endian bit stream, LSB first ---------------------------------------- */

/* 4-bit codes, two per byte, low nibble first: 32 codes per step. */
__attribute__((target("avx2"))) static size_t pack4_avx2(const uint8_t *q, size_t n, uint8_t *out)
{
	const __m256i lo4 = _mm256_set1_epi16(0x000f), hi4 = _mm256_set1_epi16(0x00f0);
	size_t i = 0;

	for (; i + 64 <= n; i += 64) {
		__m256i a = _mm256_loadu_si256((const __m256i *)(q + i));
		__m256i b = _mm256_loadu_si256((const __m256i *)(q + i + 32));
		/* per 16-bit lane: low byte | high byte << 4 */
		a = _mm256_or_si256(_mm256_and_si256(a, lo4),
				    _mm256_and_si256(_mm256_srli_epi16(a, 4), hi4));
		b = _mm256_or_si256(_mm256_and_si256(b, lo4),
				    _mm256_and_si256(_mm256_srli_epi16(b, 4), hi4));
		__m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi16(a, b), 0xd8);

		_mm256_storeu_si256((__m256i *)(out + i / 2), p);
	}
	return i;
}

__attribute__((target("avx2"))) static size_t unpack4_avx2(const uint8_t *in, size_t n, uint8_t *q)
{
	const __m256i m = _mm256_set1_epi8(0x0f);
	size_t i = 0;

	for (; i + 64 <= n; i += 64) {
		__m256i b = _mm256_permute4x64_epi64(
			_mm256_loadu_si256((const __m256i *)(in + i / 2)), 0xd8);
		__m256i lo = _mm256_and_si256(b, m),
			hi = _mm256_and_si256(_mm256_srli_epi16(b, 4), m);

		_mm256_storeu_si256((__m256i *)(q + i), _mm256_unpacklo_epi8(lo, hi));
		_mm256_storeu_si256((__m256i *)(q + i + 32), _mm256_unpackhi_epi8(lo, hi));
	}
	return i;
}

void kvcd_pack(const uint8_t *q, size_t n, unsigned bits, uint8_t *out)
{
	uint64_t acc = 0;
	unsigned have = 0;
	size_t o = 0;

	/* the common widths, same bit order as the general loop */
	if (bits == 8) {
		memcpy(out, q, n);
		return;
	}
	if (bits == 4) {
		size_t done = kvcd_isa_best() >= KVCD_ISA_AVX2 ? pack4_avx2(q, n, out) : 0;

		for (size_t i = done / 2; i < n / 2; i++)
			out[i] = (uint8_t)((q[2 * i] & 15) | (q[2 * i + 1] << 4));
		if (n & 1)
			out[n / 2] = q[n - 1] & 15;
		return;
	}
	if (bits == 2 && n % 4 == 0) {
		for (size_t i = 0; i < n / 4; i++)
			out[i] = (uint8_t)((q[4 * i] & 3) | (q[4 * i + 1] & 3) << 2 |
					   (q[4 * i + 2] & 3) << 4 | (q[4 * i + 3] << 6));
		return;
	}

	for (size_t i = 0; i < n; i++) {
		acc |= (uint64_t)(q[i] & ((1u << bits) - 1)) << have;
		have += bits;
		while (have >= 8) {
			out[o++] = (uint8_t)acc;
			acc >>= 8;
			have -= 8;
		}
	}
	if (have)
		out[o] = (uint8_t)acc;
}

void kvcd_unpack(const uint8_t *in, size_t n, unsigned bits, uint8_t *q)
{
	uint64_t acc = 0;
	unsigned have = 0;
	size_t o = 0;

	if (bits == 8) {
		memcpy(q, in, n);
		return;
	}
	if (bits == 4) {
		size_t done = kvcd_isa_best() >= KVCD_ISA_AVX2 ? unpack4_avx2(in, n, q) : 0;

		for (size_t i = done / 2; i < n / 2; i++) {
			q[2 * i] = in[i] & 15;
			q[2 * i + 1] = in[i] >> 4;
		}
		if (n & 1)
			q[n - 1] = in[n / 2] & 15;
		return;
	}
	if (bits == 2 && n % 4 == 0) {
		for (size_t i = 0; i < n / 4; i++) {
			q[4 * i] = in[i] & 3;
			q[4 * i + 1] = (in[i] >> 2) & 3;
			q[4 * i + 2] = (in[i] >> 4) & 3;
			q[4 * i + 3] = in[i] >> 6;
		}
		return;
	}

	for (size_t i = 0; i < n; i++) {
		while (have < bits) {
			acc |= (uint64_t)in[o++] << have;
			have += 8;
		}
		q[i] = (uint8_t)(acc & ((1u << bits) - 1));
		acc >>= bits;
		have -= bits;
	}
}
