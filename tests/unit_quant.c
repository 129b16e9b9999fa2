/* unit_quant.c - group quantization kernels: f16 conversion, known answers, the per-group error
 * bound, clean rejection of non-finite and out-of-range input, bit packing, and SIMD output
 * equal to the scalar reference bit for bit on random and adversarial groups. */
#include <cpuid.h>
#include <float.h>
#include <immintrin.h>
#include <math.h>

#include "t_util.h"
#include "quant.h"

__attribute__((target("f16c"))) static uint16_t hw_f16(float f)
{
	return (uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
}

Test(quant, f16_conversion)
{
	cr_assert_eq(kvcd_f32_to_f16(1.0f), 0x3c00);
	cr_assert_eq(kvcd_f32_to_f16(-2.0f), 0xc000);
	cr_assert_eq(kvcd_f32_to_f16(65504.0f), 0x7bff);
	cr_assert_eq(kvcd_f32_to_f16(65520.0f), 0x7c00, "rounds to inf");
	cr_assert_eq(kvcd_f32_to_f16(0x1p-24f), 0x0001, "smallest subnormal");
	cr_assert_eq(kvcd_f32_to_f16(0x1p-26f), 0x0000, "below half of it: zero");
	cr_assert_eq(kvcd_f32_to_f16(1.0f + 0x1p-11f), 0x3c00, "tie to even (down)");
	cr_assert_eq(kvcd_f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3c02, "tie to even (up)");
	for (uint32_t h = 0; h < 0x10000; h++) { /* every f16 survives a round trip */
		if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff))
			continue; /* NaN payloads */
		cr_assert_eq(kvcd_f32_to_f16(kvcd_f16_to_f32((uint16_t)h)), h, "0x%04x", h);
	}
	unsigned a, b, c, d;

	if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_F16C))
		return; /* no F16C: the 65536-value round trip above is the check */
	uint64_t x = 99;
	for (int i = 0; i < 200000; i++) { /* agrees with vcvtps2ph on random floats */
		uint32_t u;
		float f;

		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		u = (uint32_t)x;
		memcpy(&f, &u, 4);
		if (isnan(f))
			continue;
		cr_assert_eq(kvcd_f32_to_f16(f), hw_f16(f), "%a", f);
	}
}

static void roundtrip(enum kvcd_isa isa, const float *x, size_t n, unsigned bits, float *out,
		      uint16_t *s, uint16_t *z)
{
	uint8_t q[4096];

	cr_assert_eq(kvcd_quant_group(isa, x, n, bits, q, s, z), 0);
	kvcd_dequant_group(isa, q, n, *s, *z, out);
}

Test(quant, known_answers)
{
	const float a[4] = { 0, 1, 2, 3 }, b[3] = { -1, 0.5f, 2 };
	uint8_t q[8];
	uint16_t s, z;

	cr_assert_eq(kvcd_quant_group(KVCD_ISA_SCALAR, a, 4, 2, q, &s, &z), 0);
	cr_assert_eq(z, 0x0000);
	cr_assert_eq(s, 0x3c00, "scale (3 - 0) / 3 = 1");
	cr_assert_arr_eq(q, ((uint8_t[]){ 0, 1, 2, 3 }), 4);
	cr_assert_eq(kvcd_quant_group(KVCD_ISA_SCALAR, b, 3, 2, q, &s, &z), 0);
	cr_assert_eq(z, 0xbc00, "zero = -1");
	cr_assert_eq(s, 0x3c00, "scale (2 + 1) / 3 = 1");
	cr_assert_arr_eq(q, ((uint8_t[]){ 0, 2, 3 }), 3, "1.5 rounds half to even: 2");
	const float c[8] = { 0, 0.25f, 0.5f, 0.75f, 1, 1.25f, 1.5f, 2 }; /* int3: scale 2/7 */

	cr_assert_eq(kvcd_quant_group(KVCD_ISA_SCALAR, c, 8, 3, q, &s, &z), 0);
	/* 2/7 = 0.285714 lies between f16 0x3492 (0.285645) and 0x3493 (0.285889): round up so
	 * that zero + 7 * scale covers the maximum */
	cr_assert_eq(s, 0x3493, "scale 0x%04x", s);
	cr_assert_arr_eq(q, ((uint8_t[]){ 0, 1, 2, 3, 3, 4, 5, 7 }), 8, "%u %u %u %u %u %u %u %u",
			 q[0], q[1], q[2], q[3], q[4], q[5], q[6], q[7]);
}

Test(quant, constant_and_bad_groups)
{
	float x[33], out[33];
	uint8_t q[33];
	uint16_t s, z;

	for (int i = 0; i < 33; i++)
		x[i] = 3.0f;
	roundtrip(KVCD_ISA_SCALAR, x, 33, 4, out, &s, &z);
	cr_assert_eq(s, 0, "a constant group has scale 0");
	for (int i = 0; i < 33; i++)
		cr_assert_eq(out[i], 3.0f, "and decodes exactly");
	for (enum kvcd_isa isa = 0; isa <= kvcd_isa_best(); isa++) {
		x[17] = NAN;
		cr_assert_eq(kvcd_quant_group(isa, x, 33, 4, q, &s, &z), -EINVAL, "%s",
			     kvcd_isa_name(isa));
		x[17] = INFINITY;
		cr_assert_eq(kvcd_quant_group(isa, x, 33, 4, q, &s, &z), -EINVAL);
		x[17] = 1e6f;
		cr_assert_eq(kvcd_quant_group(isa, x, 33, 4, q, &s, &z), -ERANGE, "outside f16");
		x[17] = 3.0f;
	}
	cr_assert_eq(kvcd_quant_group(KVCD_ISA_SCALAR, x, 33, 1, q, &s, &z), -EINVAL);
	cr_assert_eq(kvcd_quant_group(KVCD_ISA_SCALAR, x, 33, 9, q, &s, &z), -EINVAL);
}

static void fill_group(float *x, size_t n, uint64_t *r, int kind)
{
	for (size_t i = 0; i < n; i++) {
		*r ^= *r << 13;
		*r ^= *r >> 7;
		*r ^= *r << 17;
		float u = (float)(*r >> 40) / (float)(1 << 24) * 2 - 1; /* [-1, 1) */

		switch (kind) {
		case 0: x[i] = u; break;
		case 1: x[i] = u * 60000; break;		      /* extreme range */
		case 2: x[i] = u * 1e-40f; break;		      /* denormals */
		case 3: x[i] = 0.7f; break;			      /* constant */
		case 4: x[i] = (float)((*r >> 8) % 16) * 0.5f; break; /* exact ties */
		case 5: x[i] = i == 3 ? 40.0f : u * 0.01f; break;     /* one huge outlier */
		}
	}
}

Test(quant, error_bound_holds_per_group)
{
	float x[300], out[300];
	uint16_t s, z;
	uint64_t r = 7;

	for (unsigned bits = 2; bits <= 8; bits++)
		for (int kind = 0; kind < 6; kind++)
			for (size_t n = 1; n <= 300; n += 37) {
				fill_group(x, n, &r, kind);
				roundtrip(KVCD_ISA_SCALAR, x, n, bits, out, &s, &z);
				float sf = kvcd_f16_to_f32(s), zf = kvcd_f16_to_f32(z);

				for (size_t i = 0; i < n; i++) {
					float tol = sf / 2 +
						    4 * FLT_EPSILON *
							    (fabsf(x[i]) + fabsf(zf) +
							     sf * ((1u << bits) - 1)) +
						    FLT_MIN;

					cr_assert_leq(
						fabsf(x[i] - out[i]), tol,
						"bits %u kind %d n %zu i %zu: %a vs %a (scale %a)",
						bits, kind, n, i, x[i], out[i], sf);
				}
			}
}

Test(quant, simd_equals_scalar_bit_for_bit)
{
	float x[300], a[300], b[300];
	uint8_t qa[300], qb[300];
	uint16_t sa, za, sb, zb;
	uint64_t r = 12345;

	if (kvcd_isa_best() == KVCD_ISA_SCALAR)
		cr_skip_test("this CPU has neither AVX2 nor AVX-512");
	for (enum kvcd_isa isa = KVCD_ISA_AVX2; isa <= kvcd_isa_best(); isa++)
		for (unsigned bits = 2; bits <= 8; bits++)
			for (int kind = 0; kind < 6; kind++)
				for (size_t n = 1; n <= 300; n += 13) {
					fill_group(x, n, &r, kind);
					cr_assert_eq(kvcd_quant_group(KVCD_ISA_SCALAR, x, n, bits,
								      qa, &sa, &za),
						     0);
					cr_assert_eq(
						kvcd_quant_group(isa, x, n, bits, qb, &sb, &zb), 0);
					cr_assert(sa == sb && za == zb, "%s params",
						  kvcd_isa_name(isa));
					cr_assert_eq(memcmp(qa, qb, n), 0,
						     "%s codes, bits %u kind %d n %zu",
						     kvcd_isa_name(isa), bits, kind, n);
					kvcd_dequant_group(KVCD_ISA_SCALAR, qa, n, sa, za, a);
					kvcd_dequant_group(isa, qb, n, sb, zb, b);
					cr_assert_eq(memcmp(a, b, n * sizeof(float)), 0,
						     "%s values", kvcd_isa_name(isa));
				}
}

Test(quant, packing)
{
	const uint8_t codes[8] = { 1, 2, 3, 4, 5, 6, 7, 0 };
	uint8_t packed[8] = { 0 }, back[300], q[300], buf[300];
	uint64_t r = 3;

	kvcd_pack(codes, 8, 3, packed);
	cr_assert_eq(kvcd_packed_bytes(8, 3), 3, "no wasted bits");
	cr_assert_arr_eq(packed, ((uint8_t[]){ 0xd1, 0x58, 0x1f }), 3);
	for (unsigned bits = 2; bits <= 8; bits++)
		for (size_t n = 1; n < 300; n += 7) {
			for (size_t i = 0; i < n; i++) {
				r ^= r << 13;
				r ^= r >> 7;
				r ^= r << 17;
				q[i] = (uint8_t)(r & ((1u << bits) - 1));
			}
			memset(buf, 0xee, sizeof(buf));
			kvcd_pack(q, n, bits, buf);
			cr_assert_eq(buf[kvcd_packed_bytes(n, bits)], 0xee, "wrote past the end");
			for (size_t i = 0; i < n; i++) { /* LSB-first stream, read bit by bit */
				unsigned v = 0;

				for (unsigned b = 0; b < bits; b++) {
					size_t at = i * bits + b;

					v |= ((buf[at / 8] >> (at % 8)) & 1u) << b;
				}
				cr_assert_eq(v, q[i], "bits %u n %zu code %zu", bits, n, i);
			}
			kvcd_unpack(buf, n, bits, back);
			cr_assert_eq(memcmp(q, back, n), 0, "bits %u n %zu", bits, n);
		}
}

/* The batched parameter path (8 groups per step with F16C) against the scalar reference, on
 * ranges chosen to hit every directed-rounding case: signs, zeros, subnormals, f16 ties, the
 * top of the f16 range, equal ends. */
Test(quant, batched_params_equal_scalar)
{
	static const float edge[] = {
		0.0f,	   -0.0f,     1.0f,	   -1.0f,	    0x1p-24f,
		-0x1p-24f, 0x1p-25f,  -0x1p-20f,   1.0f + 0x1p-11f, -(1.0f + 0x1p-11f),
		65504.0f,  -65504.0f, 65500.0f,	   3.14159f,	    -2.71828f,
		1e-6f,	   -1e-6f,    0.33333334f, -0.1f,	    100.5f
	};
	const size_t ne = sizeof(edge) / sizeof(edge[0]);
	float lo[400], hi[400];
	uint16_t a[800], b[800];
	size_t n = 0;

	for (size_t i = 0; i < ne; i++)
		for (size_t j = 0; j < ne; j++)
			if (edge[i] <= edge[j]) {
				lo[n] = edge[i];
				hi[n++] = edge[j];
			}
	for (unsigned bits = 2; bits <= 8; bits++) {
		int ea = kvcd_quant_params(KVCD_ISA_SCALAR, lo, hi, n, bits, a);
		int eb = kvcd_quant_params(kvcd_isa_best(), lo, hi, n, bits, b);

		cr_assert_eq(ea, eb, "bits %u", bits);
		if (!ea)
			for (size_t g = 0; g < 2 * n; g++)
				cr_assert_eq(a[g], b[g], "bits %u group %zu [%g, %g]: %04x vs %04x",
					     bits, g / 2, lo[g / 2], hi[g / 2], a[g], b[g]);
	}
	lo[5] = -70000.0f; /* out of f16 range in one lane of a batch */
	cr_assert_eq(kvcd_quant_params(kvcd_isa_best(), lo, hi, n, 4, b), -ERANGE);
	cr_assert_eq(kvcd_quant_params(KVCD_ISA_SCALAR, lo, hi, n, 4, a), -ERANGE);
}

/* params=u8: every group's range stays covered by its f16 pair, the scale is at most 2^(1/16)
 * (plus f16 rounding) above what the group needs, the zero at most one step of the zeros'
 * span below its minimum, and the reader gives back the same pairs. */
Test(quant, compact_params_cover_and_stay_tight)
{
	enum {
		NG = 300
	};
	static float lo[NG], hi[NG];
	static uint16_t sz[2 * NG], back[2 * NG];
	static uint8_t codes[2 * NG];
	uint8_t ref[KVCD_QREF_BYTES];
	uint64_t r = 7;

	for (unsigned bits = 2; bits <= 8; bits++) {
		float levels = (float)((1u << bits) - 1), l0 = INFINITY, l1 = -INFINITY;

		for (size_t g = 0; g < NG; g++) { /* offsets up to +-40, ranges from 1e-3 to 20 */
			r = r * 6364136223846793005ull + 1442695040888963407ull;
			lo[g] = (float)((int64_t)(r >> 40) % 8000) / 100.0f - 40.0f;
			hi[g] = lo[g] + (float)exp2((double)((r >> 20) % 1400) / 100.0 - 10.0);
			if (g == 5)
				hi[g] = lo[g]; /* a constant group */
			l0 = fminf(l0, lo[g]);
			l1 = fmaxf(l1, lo[g]);
		}
		cr_assert_eq(kvcd_quant_params_u8(lo, hi, NG, bits, ref, codes, sz), 0);
		for (size_t g = 0; g < NG; g++) {
			float s = kvcd_f16_to_f32(sz[2 * g]), z = kvcd_f16_to_f32(sz[2 * g + 1]);
			float need = (hi[g] - z) / levels;

			cr_assert_leq(z, lo[g], "bits %u group %zu: zero %g above min %g", bits, g,
				      z, lo[g]);
			cr_assert_geq(z, lo[g] - (l1 - l0) / 255.0f * 1.001f - 0.04f,
				      "bits %u group %zu: zero %g far below %g", bits, g, z, lo[g]);
			cr_assert_geq(s, need, "bits %u group %zu: scale %g < %g", bits, g, s,
				      need);
			cr_assert_leq(s, need * 1.0443f * 1.001f + 1e-7f,
				      "bits %u group %zu: scale %g, need %g", bits, g, s, need);
		}
		cr_assert_eq(kvcd_quant_params_u8_read(ref, codes, NG, back), 0);
		cr_assert_eq(memcmp(sz, back, sizeof(sz)), 0, "bits %u: the reader agrees", bits);
	}
	float nan = NAN;

	memcpy(ref, &nan, 4);
	cr_assert_eq(kvcd_quant_params_u8_read(ref, codes, NG, back), -EBADMSG);
	lo[0] = 70000.0f;
	cr_assert_eq(kvcd_quant_params_u8(lo, hi, NG, 4, ref, codes, sz), -ERANGE);
	cr_assert_eq(kvcd_quant_params_u8(lo, hi, NG, 9, ref, codes, sz), -EINVAL);
}

/* KIVI keys straight into token rows give the floats the per-channel way gives, bit for bit;
 * shapes that are not whole 16 x 16 tiles are left to the per-channel way. */
Test(quant, dequant_into_rows_equals_per_channel)
{
	enum {
		D = 48,
		N = 32,
		TS = 56
	};
	static uint8_t q[D * N];
	static uint16_t par[2 * D];
	static float rows[N * TS], want[N * TS], chan[N];
	uint32_t x = 12345;

	for (size_t i = 0; i < sizeof(q); i++)
		q[i] = (uint8_t)((x = x * 1103515245u + 12345u) >> 24);
	for (int c = 0; c < D; c++) {
		par[2 * c] = kvcd_f32_to_f16(0.01f + 0.003f * (float)c);
		par[2 * c + 1] = kvcd_f32_to_f16(-1.5f + 0.07f * (float)c);
	}
	for (int c = 0; c < D; c++) {
		kvcd_dequant_group(kvcd_isa_best(), q + c * N, N, par[2 * c], par[2 * c + 1], chan);
		for (int i = 0; i < N; i++)
			want[i * TS + c] = chan[i];
	}
	if (!kvcd_dequant_rows(kvcd_isa_best(), q, D, N, par, rows, TS)) {
		cr_assert(kvcd_isa_best() < KVCD_ISA_AVX512 || !kvcd_has_f16c(),
			  "refused on a CPU that has what it needs");
		return;
	}
	for (int i = 0; i < N; i++)
		cr_assert_eq(memcmp(rows + i * TS, want + i * TS, D * 4), 0, "token %d", i);
	cr_assert(!kvcd_dequant_rows(kvcd_isa_best(), q, D - 8, N, par, rows, TS), "not tiles");
	cr_assert(!kvcd_dequant_rows(kvcd_isa_best(), q, D, N - 8, par, rows, TS), "not tiles");
	cr_assert(!kvcd_dequant_rows(KVCD_ISA_AVX2, q, D, N, par, rows, TS), "AVX-512 only");
}

/* A group's range decides its parameters' bits whatever the sign of a zero at its ends, so no
 * kernel's order of folding (min(-0, +0) may be either) shows in the bytes. */
Test(quant, a_zeros_sign_does_not_change_the_parameters)
{
	float lo[2] = { -0.0f, 0.0f }, hi[2] = { 3.0f, 3.0f }, lo2[2] = { -2.0f, -2.0f },
	      hi2[2] = { -0.0f, 0.0f };

	for (enum kvcd_isa isa = KVCD_ISA_SCALAR; isa <= kvcd_isa_best(); isa++)
		for (unsigned bits = 2; bits <= 8; bits += 2) {
			uint16_t a[4], b[4];

			cr_assert_eq(kvcd_quant_params(isa, lo, hi, 2, bits, a), 0);
			cr_assert_eq(memcmp(a, a + 2, 4), 0, "%s: zero at the minimum, bits %u",
				     kvcd_isa_name(isa), bits);
			cr_assert_eq(kvcd_quant_params(isa, lo2, hi2, 2, bits, b), 0);
			cr_assert_eq(memcmp(b, b + 2, 4), 0, "%s: zero at the maximum, bits %u",
				     kvcd_isa_name(isa), bits);
		}
}

/* The one-pass f16 row kernel writes what ranges, params, apply and pack write, to the same
 * places: rows of 1 to 40 groups (so batches of 16 and a short one), groups of 16 to 128
 * values, with constant groups, zeros of both signs at a group's ends, and ties; an inf or a
 * nan anywhere is -EINVAL. */
Test(quant, one_pass_rows_equal_the_three_phases)
{
	enum {
		MAXV = 40 * 128
	};
	static const size_t gchs[] = { 16, 48, 64, 128 };
	uint16_t *h = malloc(MAXV * 2);
	float *x = malloc(MAXV * 4), *scratch = malloc(MAXV * 4), lo[40], hi[40];
	uint8_t *want = malloc(3 * MAXV), *got = malloc(3 * MAXV), q[128];
	uint16_t sz[80];
	uint64_t r = 99;

	if (!kvcd_quant_row_f16_ok(kvcd_isa_best(), 64, 8))
		cr_skip_test("this CPU has no AVX-512 with F16C");
	cr_assert_eq(kvcd_quant_row_f16(KVCD_ISA_AVX2, (const uint8_t *)h, 1, 64, 1, 8, 64, scratch,
					got, got),
		     -EOPNOTSUPP);
	cr_assert_eq(kvcd_quant_row_f16(kvcd_isa_best(), (const uint8_t *)h, 1, 64, 1, 3, 64,
					scratch, got, got),
		     -EOPNOTSUPP);
	for (size_t gi = 0; gi < 4; gi++)
		for (unsigned bits = 4; bits <= 8; bits += 4)
			for (size_t ng = 1; ng <= 40; ng += 3) {
				size_t gch = gchs[gi], per = ng % 2 ? 1 : 2;
				size_t cb = gch * bits / 8, stride = per * (4 + cb) + 8;
				size_t nh = ng / per, out = nh * stride;

				for (size_t g = 0; g < ng; g++) {
					fill_group(x + g * gch, gch, &r, (int)((g + ng) % 6));
					if (g % 5 == 1) /* a zero of each sign at the minimum */
						for (size_t i = 0; i < gch; i++)
							x[g * gch + i] =
								i == 1	 ? -0.0f
								: i == 2 ? 0.0f
									 : fabsf(x[g * gch + i]);
				}
				for (size_t i = 0; i < ng * gch; i++) {
					h[i] = kvcd_f32_to_f16(x[i]);
					x[i] = kvcd_f16_to_f32(h[i]);
				}
				memset(want, 0xa5, out);
				memset(got, 0xa5, out);
				cr_assert_eq(kvcd_quant_ranges(KVCD_ISA_SCALAR, x, ng, gch, lo, hi),
					     0);
				cr_assert_eq(
					kvcd_quant_params(KVCD_ISA_SCALAR, lo, hi, ng, bits, sz),
					0);
				for (size_t g = 0; g < ng; g++) {
					uint8_t *u = want + g / per * stride;

					memcpy(u + g % per * 4, &sz[2 * g], 4);
					kvcd_quant_apply(KVCD_ISA_SCALAR, x + g * gch, 1, gch, bits,
							 &sz[2 * g], q);
					kvcd_pack(q, gch, bits, u + per * 4 + g % per * cb);
				}
				cr_assert_eq(kvcd_quant_row_f16(kvcd_isa_best(), (const uint8_t *)h,
								ng, gch, per, bits, stride, scratch,
								got, got + per * 4),
					     0);
				cr_assert_eq(memcmp(want, got, out), 0,
					     "gch %zu bits %u groups %zu", gch, bits, ng);
				/* an inf, a nan: refused wherever they are */
				size_t at = (size_t)(r % (ng * gch));
				uint16_t keep = h[at];

				h[at] = at % 2 ? 0xfc00 : 0x7e00;
				cr_assert_eq(kvcd_quant_row_f16(kvcd_isa_best(), (const uint8_t *)h,
								ng, gch, per, bits, stride, scratch,
								got, got + per * 4),
					     -EINVAL, "value %zu of %zu", at, ng * gch);
				h[at] = keep;
			}
	free(h);
	free(x);
	free(scratch);
	free(want);
	free(got);
}

/* KIVI's per-channel key kernel writes what the three phases and pack write on the rows
 * turned to [channel][token]: 2, 4 and 8 bits over groups of 16 to 64 tokens, rows with a
 * stride, constant channels and zeros of both signs; an inf or a nan is -EINVAL. */
Test(quant, channel_kernel_equals_the_three_phases)
{
	static const size_t Gs[] = { 16, 32, 64 }, ds[] = { 16, 64, 128 };
	enum {
		MAXG = 64,
		MAXD = 128,
		RS = 2 * MAXD + 32
	};
	uint8_t *src = malloc(MAXG * RS), *want = malloc(MAXD * MAXG), *got = malloc(MAXD * MAXG);
	float *xt = malloc(MAXD * MAXG * 4), *scratch = malloc(MAXG * 16 * 4), lo[MAXD], hi[MAXD];
	uint8_t *q = malloc(MAXD * MAXG);
	uint16_t sz[2 * MAXD], par[2 * MAXD];
	uint64_t r = 5;

	if (!kvcd_quant_chan_f16_ok(kvcd_isa_best(), 32, 128, 4))
		cr_skip_test("this CPU has no AVX-512 with F16C");
	cr_assert(!kvcd_quant_chan_f16_ok(kvcd_isa_best(), 32, 128, 3));
	cr_assert(!kvcd_quant_chan_f16_ok(kvcd_isa_best(), 32, 120, 4));
	cr_assert(!kvcd_quant_chan_f16_ok(kvcd_isa_best(), 8, 128, 4)); /* 4 bytes a channel */
	for (size_t gi = 0; gi < 3; gi++)
		for (size_t di = 0; di < 3; di++)
			for (unsigned bits = 2; bits <= 8; bits *= 2) {
				size_t G = Gs[gi], d = ds[di], n = G * bits / 8;

				if (!kvcd_quant_chan_f16_ok(kvcd_isa_best(), G, d, bits))
					continue;
				for (size_t c = 0; c < d; c++) {
					fill_group(xt + c * G, G, &r, (int)(c % 6));
					if (c % 7 ==
					    2) /* zeros of each sign at the channel's minimum */
						for (size_t t = 0; t < G; t++)
							xt[c * G + t] =
								t == 0	 ? 0.0f
								: t == 3 ? -0.0f
									 : fabsf(xt[c * G + t]);
				}
				for (size_t t = 0; t < G; t++)
					for (size_t c = 0; c < d; c++) {
						uint16_t h = kvcd_f32_to_f16(xt[c * G + t]);

						memcpy(src + t * RS + 2 * c, &h, 2);
						xt[c * G + t] = kvcd_f16_to_f32(h);
					}
				cr_assert_eq(kvcd_quant_ranges(KVCD_ISA_SCALAR, xt, d, G, lo, hi),
					     0);
				cr_assert_eq(
					kvcd_quant_params(KVCD_ISA_SCALAR, lo, hi, d, bits, sz), 0);
				kvcd_quant_apply(KVCD_ISA_SCALAR, xt, d, G, bits, sz, q);
				kvcd_pack(q, d * G, bits, want);
				memset(got, 0xa5, d * n);
				cr_assert_eq(kvcd_quant_chan_f16(kvcd_isa_best(), src, RS, G, d,
								 bits, scratch, (uint8_t *)par,
								 got),
					     0);
				cr_assert_eq(memcmp(sz, par, d * 4), 0,
					     "params: G %zu d %zu bits %u", G, d, bits);
				cr_assert_eq(memcmp(want, got, d * n), 0,
					     "codes: G %zu d %zu bits %u", G, d, bits);
				size_t t = (size_t)(r % G), c = (size_t)(r >> 20) % d;
				uint16_t keep, bad = r & 1 ? 0x7c00 : 0xfe00;

				memcpy(&keep, src + t * RS + 2 * c, 2);
				memcpy(src + t * RS + 2 * c, &bad, 2);
				cr_assert_eq(kvcd_quant_chan_f16(kvcd_isa_best(), src, RS, G, d,
								 bits, scratch, (uint8_t *)par,
								 got),
					     -EINVAL);
				memcpy(src + t * RS + 2 * c, &keep, 2);
			}
	free(src);
	free(want);
	free(got);
	free(xt);
	free(scratch);
	free(q);
}

/* The f16 decoders write what kvcd_dequant_group (or _rows) then kvcd_from_f32 write,
 * streamed or not, saturating values past f16's range; a streamed write to a misaligned
 * row is refused and writes nothing. */
Test(quant, f16_decoders_equal_dequant_then_convert)
{
	enum {
		D = 128,
		N = 32,
		PER = 2,
		NG = 8
	};
	static const unsigned widths[] = { 4, 8 };
	uint16_t *want = aligned_alloc(64, N * D * 2 + 64),
		 *got = aligned_alloc(64, N * D * 2 + 64);
	uint8_t *q = malloc(N * D), *unit = malloc(4096);
	float *f = malloc(N * D * 4);
	uint16_t par[2 * D];
	uint64_t r = 17;

	if (!kvcd_quant_row_f16_ok(kvcd_isa_best(), 16, 8))
		cr_skip_test("this CPU has no AVX-512 with F16C");
	for (size_t c = 0; c < D; c++) { /* a few channels that overflow f16 when dequantized */
		par[2 * c] = kvcd_f32_to_f16(c % 9 == 4 ? 600.0f : (float)(c % 5 + 1) * 0.01f);
		par[2 * c + 1] = kvcd_f32_to_f16(c % 9 == 4 ? 65000.0f : -0.5f * (float)(c % 3));
	}
	for (size_t i = 0; i < N * D; i++) {
		r = r * 6364136223846793005ull + 1442695040888963407ull;
		q[i] = (uint8_t)(r >> 56);
	}
	for (int nt = 0; nt < 2; nt++) {
		/* rows: channels of N codes each, [channel][token] */
		for (size_t c = 0; c < D; c++)
			kvcd_dequant_group(KVCD_ISA_SCALAR, q + c * N, N, par[2 * c],
					   par[2 * c + 1], f + c * N);
		for (size_t t = 0; t < N; t++)
			for (size_t c = 0; c < D; c++)
				want[t * D + c] = kvcd_f32_to_f16(
					fminf(fmaxf(f[c * N + t], -65504.0f), 65504.0f));
		memset(got, 0, N * D * 2);
		cr_assert(kvcd_dequant_rows_f16(kvcd_isa_best(), q, D, N, par, got, D, nt));
		cr_assert_eq(memcmp(want, got, N * D * 2), 0, "rows, nt %d", nt);
		if (nt)
			cr_assert(!kvcd_dequant_rows_f16(kvcd_isa_best(), q, D, N, par, got + 1, D,
							 true));
		/* one row of NG heads of PER groups of 16 codes, in the row kernel's layout */
		for (size_t wi = 0; wi < 2; wi++) {
			unsigned bits = widths[wi];
			size_t cb = 16 * bits / 8, stride = PER * (4 + cb) + 12;

			for (size_t g = 0; g < NG * PER; g++) {
				uint8_t *u = unit + g / PER * stride;

				memcpy(u + g % PER * 4, &par[2 * g], 4);
				for (size_t i = 0; i < 16; i++)
					q[i] = (uint8_t)((q[g * 16 + i] + g) & ((1u << bits) - 1));
				kvcd_pack(q, 16, bits, u + PER * 4 + g % PER * cb);
				kvcd_dequant_group(KVCD_ISA_SCALAR, q, 16, par[2 * g],
						   par[2 * g + 1], f + g * 16);
			}
			kvcd_from_f32(KVCD_ISA_SCALAR, KVCP_F16, f, want, NG * PER * 16);
			memset(got, 0, NG * PER * 32);
			cr_assert(kvcd_dequant_row_f16(kvcd_isa_best(), unit, unit + PER * 4,
						       NG * PER, 16, PER, bits, stride, got, nt));
			cr_assert_eq(memcmp(want, got, NG * PER * 32), 0, "row, bits %u nt %d",
				     bits, nt);
			cr_assert(!kvcd_dequant_row_f16(kvcd_isa_best(), unit, unit + PER * 4,
							NG * PER, 16, PER, 3, stride, got, nt));
			if (nt)
				cr_assert(!kvcd_dequant_row_f16(kvcd_isa_best(), unit,
								unit + PER * 4, NG * PER, 16, PER,
								bits, stride, got + 1, true));
		}
	}
	free(want);
	free(got);
	free(q);
	free(unit);
	free(f);
}
