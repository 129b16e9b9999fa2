/* quant.c - group quantization: scalar reference, AVX2 and AVX-512 kernels, bit packing.
 *
 * Bit-exactness between the variants rests on doing the same IEEE operations in the same
 * order: min and max are exact in any order, then one subtraction, one division, round half
 * to even, clamp (quantize), and one multiplication then one addition (dequantize). The file
 * is compiled with -ffp-contract=off so no compiler turns the latter into an FMA.
 */
#include <errno.h>
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "quant.h"

/* ---- f16 ------------------------------------------------------------------------------- */

uint16_t kvcd_f32_to_f16(float f)
{
	uint32_t x;
	uint32_t sign, mant;
	int32_t exp;

	memcpy(&x, &f, 4);
	sign = (x >> 16) & 0x8000;
	exp = (int32_t)((x >> 23) & 0xff) - 127 + 15;
	mant = x & 0x7fffff;
	if (((x >> 23) & 0xff) == 0xff) /* inf or nan */
		return (uint16_t)(sign | 0x7c00 | (mant ? 0x200 | (mant >> 13) : 0));
	if (exp >= 31)
		return (uint16_t)(sign | 0x7c00);
	if (exp <= 0) { /* subnormal f16 or zero */
		if (exp < -10)
			return (uint16_t)sign;
		mant |= 0x800000;
		uint32_t shift = (uint32_t)(14 - exp), h = mant >> shift;
		uint32_t rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);

		if (rem > half || (rem == half && (h & 1)))
			h++;
		return (uint16_t)(sign | h);
	}
	uint32_t h = ((uint32_t)exp << 10) | (mant >> 13), rem = mant & 0x1fff;

	if (rem > 0x1000 || (rem == 0x1000 && (h & 1)))
		h++; /* may carry into the exponent, up to inf: correct */
	return (uint16_t)(sign | h);
}

float kvcd_f16_to_f32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, x;
	float f;

	if (exp == 0x1f) {
		x = sign | 0x7f800000 | (mant << 13);
	} else if (exp == 0) {
		f = (float)mant * 0x1p-24f;
		return sign ? -f : f;
	} else {
		x = sign | ((exp + 112) << 23) | (mant << 13);
	}
	memcpy(&f, &x, 4);
	return f;
}

/* Largest f16 <= v (@down) or smallest f16 >= v; v finite and inside the f16 range. */
static uint16_t f16_directed(float v, int down)
{
	uint16_t h = kvcd_f32_to_f16(v);
	float back = kvcd_f16_to_f32(h);

	if (down ? back <= v : back >= v)
		return h;
	/* one step towards the side we need */
	if ((h & 0x7fff) == 0)
		return down ? 0x8001 : 0x0001;
	if (!(h & 0x8000))
		return (uint16_t)(down ? h - 1 : h + 1);
	return (uint16_t)(down ? h + 1 : h - 1);
}

/* Scale and zero from the group's range. Returns -ERANGE when f16 cannot hold them. */
static int params(float lo, float hi, unsigned bits, uint16_t *scale, uint16_t *zero,
		  float *s, float *z)
{
	float levels = (float)((1u << bits) - 1);

	if (!(fabsf(lo) <= 65504.0f) || !(fabsf(hi) <= 65504.0f))
		return -ERANGE;
	*zero = f16_directed(lo, 1);
	*z = kvcd_f16_to_f32(*zero);
	float want = (hi - *z) / levels;

	if (!(want <= 65504.0f))
		return -ERANGE;
	*scale = f16_directed(want, 0);
	*s = kvcd_f16_to_f32(*scale);
	return 0;
}

/* Fold x[from..n) into the range [lo, hi] found so far, rejecting non-finite values, then
 * derive the group's parameters. Shared by every variant: the scalar tails must agree. */
static int finish_range(const float *x, size_t from, size_t n, float lo, float hi,
			unsigned bits, uint16_t *scale, uint16_t *zero, float *s, float *z)
{
	for (size_t j = from; j < n; j++) {
		if (!isfinite(x[j]))
			return -EINVAL;
		lo = x[j] < lo ? x[j] : lo;
		hi = x[j] > hi ? x[j] : hi;
	}
	return params(lo, hi, bits, scale, zero, s, z);
}

static inline uint8_t quant_one(float x, float z, float s, float levels)
{
	float q = s > 0.0f ? nearbyintf((x - z) / s) : 0.0f;

	q = q < 0.0f ? 0.0f : q > levels ? levels : q;
	return (uint8_t)q;
}

/* ---- scalar reference ------------------------------------------------------------------- */

static int quant_scalar(const float *x, size_t n, unsigned bits, uint8_t *q, uint16_t *scale,
			uint16_t *zero)
{
	float s, z, levels = (float)((1u << bits) - 1);
	int err = finish_range(x, 0, n, INFINITY, -INFINITY, bits, scale, zero, &s, &z);

	if (err)
		return err;
	for (size_t i = 0; i < n; i++)
		q[i] = quant_one(x[i], z, s, levels);
	return 0;
}

static void dequant_scalar(const uint8_t *q, size_t n, float s, float z, float *out)
{
	for (size_t i = 0; i < n; i++)
		out[i] = (float)q[i] * s + z;
}

/* ---- AVX2 -------------------------------------------------------------------------------- */

__attribute__((target("avx2"))) static int quant_avx2(const float *x, size_t n, unsigned bits,
						      uint8_t *q, uint16_t *scale,
						      uint16_t *zero)
{
	__m256 vlo = _mm256_set1_ps(INFINITY), vhi = _mm256_set1_ps(-INFINITY);
	__m256 bad = _mm256_setzero_ps();
	float lo, hi, s, z, levels = (float)((1u << bits) - 1), t[8];
	size_t i = 0;
	int err;

	for (; i + 8 <= n; i += 8) {
		__m256 v = _mm256_loadu_ps(x + i);

		bad = _mm256_or_ps(bad, _mm256_cmp_ps(_mm256_sub_ps(v, v), _mm256_setzero_ps(),
						      _CMP_NEQ_UQ));
		vlo = _mm256_min_ps(vlo, v);
		vhi = _mm256_max_ps(vhi, v);
	}
	if (_mm256_movemask_ps(bad))
		return -EINVAL;
	_mm256_storeu_ps(t, vlo);
	lo = t[0];
	for (int k = 1; k < 8; k++)
		lo = t[k] < lo ? t[k] : lo;
	_mm256_storeu_ps(t, vhi);
	hi = t[0];
	for (int k = 1; k < 8; k++)
		hi = t[k] > hi ? t[k] : hi;
	err = finish_range(x, i, n, lo, hi, bits, scale, zero, &s, &z);
	if (err)
		return err;
	if (s > 0.0f) {
		__m256 vz = _mm256_set1_ps(z), vs = _mm256_set1_ps(s);
		__m256 vmax = _mm256_set1_ps(levels), v0 = _mm256_setzero_ps();

		for (i = 0; i + 8 <= n; i += 8) {
			__m256 v = _mm256_div_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vz), vs);

			v = _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
			v = _mm256_min_ps(_mm256_max_ps(v, v0), vmax);
			__m256i w = _mm256_cvtps_epi32(v);
			__m128i lo16 = _mm_packus_epi32(_mm256_castsi256_si128(w),
							_mm256_extracti128_si256(w, 1));

			_mm_storel_epi64((__m128i *)(q + i), _mm_packus_epi16(lo16, lo16));
		}
	} else {
		i = 0;
	}
	for (; i < n; i++)
		q[i] = quant_one(x[i], z, s, levels);
	return 0;
}

__attribute__((target("avx2"))) static void dequant_avx2(const uint8_t *q, size_t n, float s,
							 float z, float *out)
{
	__m256 vs = _mm256_set1_ps(s), vz = _mm256_set1_ps(z);
	size_t i = 0;

	for (; i + 8 <= n; i += 8) {
		__m256i w = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(q + i)));

		_mm256_storeu_ps(out + i, _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(w), vs), vz));
	}
	for (; i < n; i++)
		out[i] = (float)q[i] * s + z;
}

/* ---- AVX-512 ----------------------------------------------------------------------------- */

__attribute__((target("avx512f,avx512bw"))) static int quant_avx512(const float *x, size_t n,
								    unsigned bits, uint8_t *q,
								    uint16_t *scale, uint16_t *zero)
{
	__m512 vlo = _mm512_set1_ps(INFINITY), vhi = _mm512_set1_ps(-INFINITY);
	__mmask16 bad = 0;
	float lo, hi, s, z, levels = (float)((1u << bits) - 1);
	size_t i = 0;
	int err;

	for (; i + 16 <= n; i += 16) {
		__m512 v = _mm512_loadu_ps(x + i);

		bad |= _mm512_cmp_ps_mask(_mm512_sub_ps(v, v), _mm512_setzero_ps(), _CMP_NEQ_UQ);
		vlo = _mm512_min_ps(vlo, v);
		vhi = _mm512_max_ps(vhi, v);
	}
	if (bad)
		return -EINVAL;
	lo = _mm512_reduce_min_ps(vlo);
	hi = _mm512_reduce_max_ps(vhi);
	err = finish_range(x, i, n, lo, hi, bits, scale, zero, &s, &z);
	if (err)
		return err;
	i = 0;
	if (s > 0.0f) {
		__m512 vz = _mm512_set1_ps(z), vs = _mm512_set1_ps(s);
		__m512 vmax = _mm512_set1_ps(levels), v0 = _mm512_setzero_ps();

		for (; i + 16 <= n; i += 16) {
			__m512 v = _mm512_div_ps(_mm512_sub_ps(_mm512_loadu_ps(x + i), vz), vs);

			v = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
			v = _mm512_min_ps(_mm512_max_ps(v, v0), vmax);
			_mm_storeu_si128((__m128i *)(q + i), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(v)));
		}
	}
	for (; i < n; i++)
		q[i] = quant_one(x[i], z, s, levels);
	return 0;
}

__attribute__((target("avx512f,avx512bw"))) static void dequant_avx512(const uint8_t *q,
								       size_t n, float s, float z,
								       float *out)
{
	__m512 vs = _mm512_set1_ps(s), vz = _mm512_set1_ps(z);
	size_t i = 0;

	for (; i + 16 <= n; i += 16) {
		__m512i w = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(q + i)));

		_mm512_storeu_ps(out + i, _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(w), vs), vz));
	}
	for (; i < n; i++)
		out[i] = (float)q[i] * s + z;
}

/* ---- dispatch ---------------------------------------------------------------------------- */

enum kvcd_isa kvcd_isa_best(void)
{
	static int best = -1;

	if (best < 0) {
		__builtin_cpu_init();
		best = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") ?
		       KVCD_ISA_AVX512 : __builtin_cpu_supports("avx2") ? KVCD_ISA_AVX2 :
		       KVCD_ISA_SCALAR;
	}
	return (enum kvcd_isa)best;
}

const char *kvcd_isa_name(enum kvcd_isa isa)
{
	return isa == KVCD_ISA_AVX512 ? "avx512" : isa == KVCD_ISA_AVX2 ? "avx2" : "scalar";
}

int kvcd_quant_group(enum kvcd_isa isa, const float *x, size_t n, unsigned bits, uint8_t *q,
		     uint16_t *scale, uint16_t *zero)
{
	if (bits < 2 || bits > 8 || !n)
		return -EINVAL;
	if (isa > kvcd_isa_best())
		isa = kvcd_isa_best();
	if (isa == KVCD_ISA_AVX512)
		return quant_avx512(x, n, bits, q, scale, zero);
	if (isa == KVCD_ISA_AVX2)
		return quant_avx2(x, n, bits, q, scale, zero);
	return quant_scalar(x, n, bits, q, scale, zero);
}

void kvcd_dequant_group(enum kvcd_isa isa, const uint8_t *q, size_t n, uint16_t scale,
			uint16_t zero, float *out)
{
	float s = kvcd_f16_to_f32(scale), z = kvcd_f16_to_f32(zero);

	if (isa > kvcd_isa_best())
		isa = kvcd_isa_best();
	if (isa == KVCD_ISA_AVX512)
		dequant_avx512(q, n, s, z, out);
	else if (isa == KVCD_ISA_AVX2)
		dequant_avx2(q, n, s, z, out);
	else
		dequant_scalar(q, n, s, z, out);
}

/* ---- packing: little-endian bit stream, LSB first ---------------------------------------- */

void kvcd_pack(const uint8_t *q, size_t n, unsigned bits, uint8_t *out)
{
	uint64_t acc = 0;
	unsigned have = 0;
	size_t o = 0;

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
