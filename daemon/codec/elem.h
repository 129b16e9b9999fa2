/* elem.h - the codecs' element conversions, one implementation for the CPU codec (convert.c,
 * quant.c) and the GPU kernels (daemon/gpu/kern.h), so that both round alike: f16, bf16 and
 * fp8 e4m3 to and from f32 (integer code, round to nearest even) and the directed f16
 * rounding of group parameters.
 *
 * nvcc compiles them for the device too (KVCE_FN). There every rounding step is spelled out
 * (__fmul_rn, ...) so that no multiply and add are fused; on the host the codec's
 * -ffp-contract=off does the same.
 */
#ifndef KVCD_ELEM_H
#define KVCD_ELEM_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define KVCE_FN static __host__ __device__ inline
#else
#define KVCE_FN static inline
#endif

#ifdef __CUDA_ARCH__
#define KVCE_ADD(a, b) __fadd_rn((a), (b))
#define KVCE_SUB(a, b) __fsub_rn((a), (b))
#define KVCE_MUL(a, b) __fmul_rn((a), (b))
#define KVCE_DIV(a, b) __fdiv_rn((a), (b))
#define KVCE_RINT(x)   rintf(x) /* round half to even */
#else
#define KVCE_ADD(a, b) ((a) + (b))
#define KVCE_SUB(a, b) ((a) - (b))
#define KVCE_MUL(a, b) ((a) * (b))
#define KVCE_DIV(a, b) ((a) / (b))
#define KVCE_RINT(x)   nearbyintf(x) /* the default rounding mode: half to even */
#endif

KVCE_FN uint32_t kvce_bits(float f)
{
	uint32_t x;

	memcpy(&x, &f, 4);
	return x;
}

KVCE_FN float kvce_float(uint32_t x)
{
	float f;

	memcpy(&f, &x, 4);
	return f;
}

KVCE_FN int kvce_finite(float f)
{
	return (kvce_bits(f) & 0x7f800000u) != 0x7f800000u;
}

/* @x with a zero made +0. A group's minimum or maximum is exact in any order but for the
 * sign of a zero (min(-0, +0) may be either), which would change the f16 zero or scale's bits;
 * every encoder takes its range through this before the parameters, so that the order a
 * kernel folds in never shows in its bytes. */
KVCE_FN float kvce_canon0(float x)
{
	return KVCE_ADD(x, 0.0f);
}

KVCE_FN float kvce_abs(float f)
{
	return kvce_float(kvce_bits(f) & 0x7fffffffu);
}

KVCE_FN uint16_t kvce_to_f16(float f)
{
	uint32_t x = kvce_bits(f), sign = (x >> 16) & 0x8000, mant = x & 0x7fffff, h, rem;
	int32_t exp = (int32_t)((x >> 23) & 0xff) - 127 + 15;

	if (((x >> 23) & 0xff) == 0xff)
		return (uint16_t)(sign | 0x7c00 | (mant ? 0x200 | (mant >> 13) : 0));
	if (exp >= 31)
		return (uint16_t)(sign | 0x7c00);
	if (exp <= 0) {
		uint32_t shift, half;

		if (exp < -10)
			return (uint16_t)sign;
		mant |= 0x800000;
		shift = (uint32_t)(14 - exp);
		h = mant >> shift;
		rem = mant & ((1u << shift) - 1);
		half = 1u << (shift - 1);
		if (rem > half || (rem == half && (h & 1)))
			h++;
		return (uint16_t)(sign | h);
	}
	h = ((uint32_t)exp << 10) | (mant >> 13);
	rem = mant & 0x1fff;
	if (rem > 0x1000 || (rem == 0x1000 && (h & 1)))
		h++;
	return (uint16_t)(sign | h);
}

KVCE_FN float kvce_from_f16(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;

	if (exp == 0x1f)
		return kvce_float(sign | 0x7f800000 | (mant << 13));
	if (exp == 0) {
		float f = KVCE_MUL((float)mant, 0x1p-24f);

		return sign ? -f : f;
	}
	return kvce_float(sign | ((exp + 112) << 23) | (mant << 13));
}

KVCE_FN uint16_t kvce_to_bf16(float f)
{
	uint32_t x = kvce_bits(f);

	if ((x & 0x7fffffff) > 0x7f800000)
		return (uint16_t)((x >> 16) | 0x40);
	x += 0x7fff + ((x >> 16) & 1);
	return (uint16_t)(x >> 16);
}

KVCE_FN uint8_t kvce_to_e4m3(float f)
{
	uint32_t x = kvce_bits(f), m, rem;
	uint8_t sign = (uint8_t)((x >> 24) & 0x80);
	float a = kvce_abs(f);
	int e;

	if ((x & 0x7fffffff) > 0x7f800000)
		return sign | 0x7f;
	if (a >= 448.0f)
		return sign | 0x7e;
	if (a < 0x1p-6f)
		return sign | (uint8_t)KVCE_RINT(KVCE_MUL(a, 512.0f));
	e = (int)((x >> 23) & 0xff) - 127;
	m = (x >> 20) & 7;
	rem = x & 0xfffff;
	if (rem > 0x80000 || (rem == 0x80000 && (m & 1)))
		m++;
	if (m == 8) {
		m = 0;
		e++;
	}
	if (e > 8 || (e == 8 && m > 6))
		return sign | 0x7e;
	return (uint8_t)(sign | (uint8_t)((e + 7) << 3) | (uint8_t)m);
}

KVCE_FN float kvce_from_e4m3(uint8_t b)
{
	uint32_t e = (b >> 3) & 15, m = b & 7, sign = (uint32_t)(b & 0x80) << 24;

	if ((b & 0x7f) == 0x7f)
		return kvce_float(sign | 0x7fc00000u);
	if (e)
		return kvce_float(sign | ((e - 7 + 127) << 23) | (m << 20));
	return kvce_float(sign | kvce_bits(KVCE_MUL((float)m, 0x1p-9f)));
}

/* f16 @h, the round-to-nearest of @v (whose value is @back), moved one step if it went the
 * wrong way: the largest f16 <= v (@down) or the smallest f16 >= v. quant.c feeds it the
 * hardware conversion's, the GPU the integer one's; they agree. */
KVCE_FN uint16_t kvce_f16_step(uint16_t h, float back, float v, int down)
{
	if (down ? back <= v : back >= v)
		return h;
	if ((h & 0x7fff) == 0)
		return down ? 0x8001 : 0x0001;
	if (!(h & 0x8000))
		return (uint16_t)(down ? h - 1 : h + 1);
	return (uint16_t)(down ? h + 1 : h - 1);
}

KVCE_FN uint16_t kvce_f16_directed(float v, int down)
{
	uint16_t h = kvce_to_f16(v);

	return kvce_f16_step(h, kvce_from_f16(h), v, down);
}

#endif /* KVCD_ELEM_H */
