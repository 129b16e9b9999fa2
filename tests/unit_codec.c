/* unit_codec.c - block codecs: policy strings, known answers worked out by hand, error bounds,
 * sinks/outliers/residuals kept bit for bit, rotation and sparse outliers lowering the error,
 * importance scores, SIMD equal to scalar on whole blocks, and decode never trusting its input. */
#include <math.h>

#include "t_util.h"
#include "internal.h"

static struct kvcd_policy P(const char *s) {
	struct kvcd_policy p;
	char why[128];

	cr_assert_eq(kvcd_policy_parse(s, &p, why, sizeof(why)), 0, "%s: %s", s, why);
	return p;
}

static uint64_t rng = 88172645463325252ull;

static double urand(void) /* [0, 1) */
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (double)(rng >> 11) * 0x1p-53;
}

static double nrand(void)
{
	return sqrt(-2 * log(urand() + 1e-300)) * cos(6.283185307179586 * urand());
}

/* A random f32 block with KV-cache-like structure: per-channel offsets and a few big channels. */
static float *block_f32(const struct kvcp_layout *l, float big)
{
	size_t n = kvcp_layout_bytes(l) / 4, d = l->head_dim;
	float *x = malloc(n * 4);

	for (size_t i = 0; i < n; i++) {
		size_t c = i % d;

		x[i] = (float)(nrand() + 0.3 * (double)(c % 5)) * (c % 17 == 3 ? big : 1.0f);
	}
	return x;
}

/* Encode then decode @src (layout @l) under @pol; returns the decoded block (malloc). */
static void *roundtrip(const char *pol, const struct kvcp_layout *l, const void *src,
		       const float *scores, uint64_t *enc_bytes)
{
	struct kvcd_policy p = P(pol);
	uint64_t n = kvcd_codec_size(&p, l, scores != NULL, 0), raw = kvcp_layout_bytes(l);
	void *e = malloc(n), *d = malloc(raw);
	struct kvcp_layout back;

	cr_assert_gt(n, 0, "%s fits the layout", pol);
	cr_assert_eq(kvcd_codec_encode(kvcd_isa_best(), &p, l, 0, src, scores, e), 0, "%s", pol);
	cr_assert_eq(kvcd_codec_decode(kvcd_isa_best(), e, n, d, raw, &back), 0, "%s", pol);
	cr_assert_eq(memcmp(&back, l, sizeof(back)), 0, "the engine's layout comes back");
	if (enc_bytes)
		*enc_bytes = n;
	free(e);
	return d;
}

Test(codec, policy_strings)
{
	struct kvcd_policy p = P("kivi:kbits=4,vbits=2,group=32,sink=4,rotate=hadamard");
	char buf[KVCD_POLICY_STR], why[128];

	cr_assert_eq(p.kind, KVCD_CODEC_KIVI);
	cr_assert_eq(p.kbits, 4);
	cr_assert_eq(p.vbits, 2);
	cr_assert_eq(p.sink, 4);
	cr_assert_eq(p.rotate, 1);
	kvcd_policy_format(&p, buf, sizeof(buf));
	cr_assert_str_eq(buf, "kivi:kbits=4,vbits=2,group=32,sink=4,rotate=hadamard");
	p = P("int4:sparse=1%,outliers=2,hibits=8");
	kvcd_policy_format(&p, buf, sizeof(buf));
	cr_assert_str_eq(buf, "int:bits=4,group=64,outliers=2,sparse=0.01,hibits=8,hipct=10");
	struct kvcd_policy q = P(buf);

	cr_assert_eq(memcmp(&p, &q, sizeof(p)), 0, "the canonical string parses back");
	p = P("kivi:rope=500000,kbits=5");
	kvcd_policy_format(&p, buf, sizeof(buf));
	cr_assert_str_eq(buf, "kivi:kbits=5,vbits=4,group=32,rope=500000");
	p = P("none");
	kvcd_policy_format(&p, buf, sizeof(buf));
	cr_assert_str_eq(buf, "none");
	const char *bad[] = { "int9",
			      "zstd",
			      "int:bits=1",
			      "int:bits=9",
			      "fp8:bits=4",
			      "kivi:group=0",
			      "int:rotate=yes",
			      "int:sparse=0.5",
			      "int:sink=-1",
			      "int:bits",
			      "int:color=red",
			      "none:bits=4",
			      "int:hipct=5",
			      "int:group=70000",
			      "fp8:rope=10000",
			      "int:rope=x",
			      "" };

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		why[0] = '\0';
		cr_assert_eq(kvcd_policy_parse(bad[i], &p, why, sizeof(why)), -EINVAL, "'%s'",
			     bad[i]);
		cr_assert_neq(why[0], '\0', "'%s' says why", bad[i]);
	}
	struct kvcp_layout l = {
		.dtype = KVCP_F16, .layers = 1, .kv_heads = 1, .head_dim = 96, .tokens = 8
	};

	p = P("int4:rotate=hadamard");
	cr_assert_eq(kvcd_policy_check(&p, &l, why, sizeof(why)), -EINVAL, "96 is no power of two");
	cr_assert_eq(kvcd_codec_size(&p, &l, false, 0), 0);
}

Test(codec, fp8_e4m3)
{
	cr_assert_eq(kvcd_f32_to_e4m3(1.0f), 0x38);
	cr_assert_eq(kvcd_f32_to_e4m3(-1.0f), 0xb8);
	cr_assert_eq(kvcd_f32_to_e4m3(448.0f), 0x7e);
	cr_assert_eq(kvcd_f32_to_e4m3(1e6f), 0x7e, "saturates");
	cr_assert_eq(kvcd_f32_to_e4m3(0x1p-9f), 0x01, "smallest subnormal");
	cr_assert_eq(kvcd_f32_to_e4m3(0x1p-6f), 0x08, "smallest normal");
	cr_assert_eq(kvcd_f32_to_e4m3(1.0625f), 0x38, "tie to even (down)");
	cr_assert_eq(kvcd_f32_to_e4m3(1.1875f), 0x3a, "tie to even (up)");
	cr_assert_eq(kvcd_f32_to_e4m3(15.5f), 0x58, "carry into the exponent: 16");
	for (int b = 0; b < 256; b++) {
		if ((b & 0x7f) == 0x7f)
			continue;
		cr_assert_eq(kvcd_f32_to_e4m3(kvcd_e4m3_to_f32((uint8_t)b)), b == 0x80 ? 0x80 : b,
			     "0x%02x", b);
	}
}

/* The SIMD conversion gives kvcd_f32_to_e4m3's byte for every value class: each code, the
 * ties halfway between neighbours (both ways of even), subnormals and their ties, values
 * past 448, infinities, NaN, both zeros, and divided by a scale that is not a power of 2. */
Test(codec, fp8_e4m3_vectors_equal_the_scalar_conversion)
{
	enum {
		N = 4096
	};
	static float v[N];
	static uint8_t got[N];
	size_t n = 0;

	for (int b = 0; b < 256; b++) {
		float f = kvcd_e4m3_to_f32((uint8_t)b), g = kvcd_e4m3_to_f32((uint8_t)(b + 1));

		if ((b & 0x7f) == 0x7f)
			continue;
		v[n++] = f;
		if ((b & 0x7f) < 0x7e && ((b + 1) & 0x7f) != 0x7f) { /* halfway and either side */
			float mid = (f + g) / 2;

			v[n++] = mid;
			v[n++] = nextafterf(mid, INFINITY);
			v[n++] = nextafterf(mid, -INFINITY);
		}
	}
	for (float f = 0x1p-12f; f < 1000.0f; f *= 1.37f) { /* a spread of magnitudes */
		v[n++] = f;
		v[n++] = -f;
	}
	v[n++] = 0.0f;
	v[n++] = -0.0f;
	v[n++] = 448.0f;
	v[n++] = 463.99f;
	v[n++] = 464.0f;
	v[n++] = 1e30f;
	v[n++] = -INFINITY;
	v[n++] = INFINITY;
	v[n++] = NAN;
	v[n++] = -NAN;
	v[n++] = 0x1p-6f;
	v[n++] = nextafterf(0x1p-6f, 0.0f);
	v[n++] = 0x1p-10f; /* a subnormal tie: 0.5 x 2^-9 */
	v[n++] = 3 * 0x1p-10f;
	cr_assert_lt(n, N);
	for (int isa = 0; isa <= (int)kvcd_isa_best(); isa++)
		for (int k = 0; k < 2; k++) {
			float div = k ? 0.37f : 1.0f;

			kvcd_e4m3_n((enum kvcd_isa)isa, v, n, div, got);
			for (size_t i = 0; i < n; i++)
				cr_assert_eq(got[i], kvcd_f32_to_e4m3(v[i] / div),
					     "isa %d value %a / %g: 0x%02x, want 0x%02x", isa,
					     (double)v[i], (double)div, got[i],
					     kvcd_f32_to_e4m3(v[i] / div));
		}
	kvcd_e4m3_n(kvcd_isa_best(), v, n, 0.0f, got);
	for (size_t i = 0; i < n; i++)
		cr_assert_eq(got[i], 0, "no scale: all zero");
}

Test(codec, hadamard)
{
	float a[2] = { 1, 0 }, b[4] = { 1, 1, 1, 1 }, x[128], y[128];
	double n1 = 0, n2 = 0;

	kvcd_hadamard(KVCD_ISA_SCALAR, a, 2);
	cr_assert_float_eq(a[0], (float)M_SQRT1_2, 1e-7);
	cr_assert_float_eq(a[1], (float)M_SQRT1_2, 1e-7);
	kvcd_hadamard(KVCD_ISA_SCALAR, b, 4);
	cr_assert_float_eq(b[0], 2.0f, 1e-7);
	cr_assert_float_eq(b[1] + b[2] + b[3], 0.0f, 1e-7);
	for (int i = 0; i < 128; i++) {
		x[i] = y[i] = (float)nrand();
		n1 += (double)x[i] * x[i];
	}
	kvcd_hadamard(KVCD_ISA_SCALAR, y, 128);
	for (int i = 0; i < 128; i++)
		n2 += (double)y[i] * y[i];
	cr_assert_float_eq(n1, n2, 1e-4 * n1, "orthonormal");
	kvcd_hadamard(KVCD_ISA_SCALAR, y, 128);
	for (int i = 0; i < 128; i++)
		cr_assert_float_eq(x[i], y[i], 1e-5, "its own inverse");
	/* every ISA gives the scalar loop's bits, at every size */
	for (unsigned n = 2; n <= 128; n *= 2)
		for (int isa = 1; isa <= (int)kvcd_isa_best(); isa++) {
			float p[128], q[128];

			for (unsigned i = 0; i < n; i++)
				p[i] = q[i] = (float)(nrand() * (i % 7 == 3 ? 1e4 : 1.0));
			kvcd_hadamard(KVCD_ISA_SCALAR, p, n);
			kvcd_hadamard((enum kvcd_isa)isa, q, n);
			cr_assert_eq(memcmp(p, q, n * sizeof(float)), 0, "n %u isa %d", n, isa);
		}
}

/* Worked out by hand: int2, one group of 4 channels, f32. K token 0 = 0,1,2,3 gives zero 0,
 * scale 1, codes 0,1,2,3 packed LSB first: 0b11100100 = 0xe4. */
Test(codec, int2_known_answer)
{
	struct kvcp_layout l = {
		.dtype = KVCP_F32, .layers = 1, .kv_heads = 1, .head_dim = 4, .tokens = 2
	};
	float x[16] = { 0,  1,	   2, 3,    3, 2, 1, 0,	  /* K: tokens 0 and 1 */
			-1, -0.5f, 0, 0.5f, 2, 2, 2, 2 }; /* V: token 1 is constant */
	struct kvcd_policy p = P("int2:group=4");
	uint64_t n = kvcd_codec_size(&p, &l, false, 0);
	uint8_t e[256];
	const uint8_t *k = e + sizeof(struct kvcd_codec_hdr), *v = k + 10;
	float y[16];
	struct kvcp_layout back;

	cr_assert_eq(n, sizeof(struct kvcd_codec_hdr) + 2 * (2 * 4 + 2),
		     "scale+zero per token, 2 bits");
	cr_assert_eq(kvcd_codec_encode(KVCD_ISA_SCALAR, &p, &l, 0, x, NULL, e), 0);
	uint16_t kp[4], vp[4];

	memcpy(kp, k, 8);
	memcpy(vp, v, 8);
	cr_assert_eq(kp[0], 0x3c00, "scale 1.0");
	cr_assert_eq(kp[1], 0x0000, "zero 0.0");
	cr_assert_eq(k[8], 0xe4, "codes 0,1,2,3");
	cr_assert_eq(k[9], 0x1b, "codes 3,2,1,0");
	cr_assert_eq(vp[0], 0x3800, "scale 0.5");
	cr_assert_eq(vp[1], 0xbc00, "zero -1.0");
	cr_assert_eq(vp[2], 0x0000, "constant group: scale 0");
	cr_assert_eq(vp[3], 0x4000, "zero 2.0");
	cr_assert_eq(v[8], 0xe4);
	cr_assert_eq(v[9], 0x00);
	cr_assert_eq(kvcd_codec_decode(KVCD_ISA_SCALAR, e, n, y, sizeof(y), &back), 0);
	cr_assert_eq(memcmp(x, y, sizeof(x)), 0, "every value lies on the grid: exact");
}

/* Per group |x - x'| <= scale / 2, with scale the f16 rounded-up (max - min) / (2^b - 1). */
Test(codec, error_bounds_per_group)
{
	struct kvcp_layout l = {
		.dtype = KVCP_F32, .layers = 2, .kv_heads = 2, .head_dim = 64, .tokens = 64
	};
	float *x = block_f32(&l, 8.0f);
	const char *pols[] = { "int8",
			       "int4",
			       "int2",
			       "int3:group=16",
			       "int:bits=5,group=0",
			       "kivi:kbits=2,vbits=4,group=32",
			       "kivi:kbits=8,vbits=8,group=16" };

	for (size_t pi = 0; pi < sizeof(pols) / sizeof(pols[0]); pi++) {
		struct kvcd_policy p = P(pols[pi]);
		float *y = roundtrip(pols[pi], &l, x, NULL, NULL);
		size_t d = l.head_dim, t = l.tokens, row = l.kv_heads * d;

		for (size_t u = 0; u < (size_t)l.layers * 2 * l.kv_heads; u++) {
			size_t lk = u / l.kv_heads, h = u % l.kv_heads, kv = lk % 2;
			size_t base = lk * t * row + h * d;
			bool per_channel = p.kind == KVCD_CODEC_KIVI && kv == 0;
			unsigned bits = kv ? p.vbits : p.kbits;
			size_t gs = per_channel ? p.group : (p.group && p.group < d ? p.group : d);
			size_t ngroups = per_channel ? (t / gs) * d : t * ((d + gs - 1) / gs);

			for (size_t g = 0; g < ngroups; g++) {
				float lo = INFINITY, hi = -INFINITY, err = 0;

				for (size_t i = 0; i < gs; i++) {
					size_t at = per_channel ? base + ((g / d) * gs + i) * row +
									  g % d
								: base + (g / (d / gs)) * row +
									  (g % (d / gs)) * gs + i;

					lo = fminf(lo, x[at]);
					hi = fmaxf(hi, x[at]);
					err = fmaxf(err, fabsf(x[at] - y[at]));
				}
				/* zero rounds down to f16 (|lo| 2^-10 at most), scale rounds up */
				float scale = (hi - lo + fabsf(lo) * 0x1p-10f) /
					      (float)((1 << bits) - 1) * (1 + 0x1p-10f);

				cr_assert_leq(err, scale / 2 + 1e-5f,
					      "%s unit %zu group %zu: error %g, scale %g", pols[pi],
					      u, g, err, scale);
			}
		}
		free(y);
	}
	free(x);
}

Test(codec, fp8_relative_error)
{
	struct kvcp_layout l = {
		.dtype = KVCP_F32, .layers = 1, .kv_heads = 2, .head_dim = 32, .tokens = 16
	};
	float *x = block_f32(&l, 100.0f), *y = roundtrip("fp8", &l, x, NULL, NULL);
	size_t n = kvcp_layout_bytes(&l) / 4;

	for (size_t i = 0; i < n; i++) {
		size_t tok = i / (2 * 32), c0 = (i / 32) * 32;
		float amax = 0;

		(void)tok;
		for (size_t c = c0; c < c0 + 32; c++)
			amax = fmaxf(amax, fabsf(x[c]));
		/* 3 mantissa bits: half an ulp is 1/16 relative; below 2^-6 the step is 2^-9 */
		cr_assert_leq(fabsf(x[i] - y[i]), fabsf(x[i]) / 16 + amax / 448 * 0x1p-10f + 1e-7f,
			      "value %zu: %g -> %g", i, x[i], y[i]);
	}
	free(x);
	free(y);
}

/* A few channels 50x larger than the rest: rotation spreads them, int4 error drops. */
Test(codec, hadamard_rotation_lowers_error)
{
	struct kvcp_layout l = {
		.dtype = KVCP_F32, .layers = 2, .kv_heads = 2, .head_dim = 64, .tokens = 64
	};
	float *x = block_f32(&l, 50.0f);
	size_t n = kvcp_layout_bytes(&l) / 4;
	float *a = roundtrip("int4", &l, x, NULL, NULL);
	float *b = roundtrip("int4:rotate=hadamard", &l, x, NULL, NULL);
	float *c = roundtrip("kivi:kbits=2,vbits=2,rotate=hadamard", &l, x, NULL, NULL);
	struct kvcd_quality qa = kvcd_quality_of(x, a, n), qb = kvcd_quality_of(x, b, n);

	cr_assert_lt(qb.rel_frob, qa.rel_frob * 0.8, "rotated %g vs plain %g", qb.rel_frob,
		     qa.rel_frob);
	cr_assert_gt(kvcd_quality_of(x, c, n).cosine, 0.9);
	free(x);
	free(a);
	free(b);
	free(c);
}

/* Channels that sit far from zero (an offset much larger than their spread): the virtual
 * token takes the offsets out, so int4's per-token ranges shrink and the error drops; it costs
 * one row per unit quantized per token (KIVI's keys, per channel, go without). */
Test(codec, virtual_token_takes_channel_offsets_out)
{
	struct kvcp_layout l = {
		.dtype = KVCP_F16, .layers = 2, .kv_heads = 2, .head_dim = 32, .tokens = 64
	};
	size_t n = kvcp_layout_bytes(&l) / 2;
	uint16_t *x = malloc(n * 2);
	float *xf = malloc(n * 4), *af = malloc(n * 4), *bf = malloc(n * 4);
	uint64_t na, nb, nk, nkv;
	struct kvcd_policy p = P("int4:rotate=hadamard,virtual=mean");
	char buf[128];

	for (size_t i = 0; i < n; i++) {
		size_t c = i % 32;

		x[i] = kvcd_f32_to_f16((float)(nrand() + (c % 7 == 2 ? 40.0 - 3.0 * c : 0.0)));
	}
	kvcd_policy_format(&p, buf, sizeof(buf));
	cr_assert_str_eq(buf, "int:bits=4,group=64,rotate=hadamard,virtual=mean");
	cr_assert_eq(p.rotate, KVCD_XFORM_HADAMARD | KVCD_XFORM_VIRTUAL);
	p = P("int4:virtual=mean,virtual=none");
	cr_assert_eq(p.rotate, 0);
	uint16_t *a = roundtrip("int4", &l, x, NULL, &na),
		 *b = roundtrip("int4:virtual=mean", &l, x, NULL, &nb);

	kvcd_to_f32(KVCD_ISA_SCALAR, KVCP_F16, x, xf, n);
	kvcd_to_f32(KVCD_ISA_SCALAR, KVCP_F16, a, af, n);
	kvcd_to_f32(KVCD_ISA_SCALAR, KVCP_F16, b, bf, n);
	double ea = kvcd_quality_of(xf, af, n).rel_frob, eb = kvcd_quality_of(xf, bf, n).rel_frob;

	cr_assert_lt(eb, ea * 0.5, "virtual token %g vs plain %g", eb, ea);
	cr_assert_eq(nb - na, 2 * 2 * 2 * 32 * 2, "one f16 row per (layer, K/V, head)");
	free(roundtrip("kivi:kbits=4,vbits=4,group=32", &l, x, NULL, &nk));
	free(roundtrip("kivi:kbits=4,vbits=4,group=32,virtual=mean", &l, x, NULL, &nkv));
	cr_assert_eq(nkv - nk, 2 * 2 * 32 * 2, "values only: keys are quantized per channel");
	free(x);
	free(xf);
	free(af);
	free(bf);
	free(a);
	free(b);
}

/* f16 block: sinks and the outlier token come back bit for bit; so do KIVI's residual keys. */
Test(codec, exact_tokens_are_bit_exact)
{
	struct kvcp_layout l = {
		.dtype = KVCP_F16, .layers = 2, .kv_heads = 2, .head_dim = 32, .tokens = 40
	};
	size_t n = kvcp_layout_bytes(&l) / 2, row = 2 * 32;
	uint16_t *x = malloc(n * 2), *y;

	for (size_t i = 0; i < n; i++)
		x[i] = kvcd_f32_to_f16((float)nrand());
	for (size_t c = 0; c < row; c++) /* token 17 of layer 0 K is an outlier on every head */
		x[17 * row + c] = kvcd_f32_to_f16(300.0f + (float)c);
	y = roundtrip("kivi:kbits=2,vbits=2,group=16,sink=3,outliers=1", &l, x, NULL, NULL);
	for (size_t lk = 0; lk < 4; lk++)
		for (size_t t = 0; t < 40; t++) {
			/* exact: tokens 0-2 (sinks), 17 (outlier, layer 0; V follows K), and for
			 * K the 36 regular tokens leave 36 % 16 = 4 residual ones: 36..39 */
			bool exact = t < 3 || (t == 17 && lk < 2) || (lk % 2 == 0 && t >= 36);

			if (lk >= 2 && t == 17)
				continue; /* layer 1 picks its own outlier */
			if (exact)
				cr_assert_eq(memcmp(x + (lk * 40 + t) * row,
						    y + (lk * 40 + t) * row, row * 2),
					     0, "layer-kv %zu token %zu is exact", lk, t);
		}
	free(x);
	free(y);
}

/* resid=quant: KIVI's leftover keys (nr % G) become one short per-channel group instead of
 * exact rows: the block shrinks by exactly their exact bytes less their codes and params, and
 * every key stays within its group's error bound (range / (2^bits - 1), half of it rounding). */
Test(codec, kivi_resid_quant_quantizes_the_leftover_keys)
{
	struct kvcp_layout l = {
		.dtype = KVCP_F32, .layers = 1, .kv_heads = 1, .head_dim = 8, .tokens = 37
	};
	struct kvcd_policy pe = P("kivi:kbits=4,vbits=4,group=16,sink=1"),
			   pq = P("kivi:kbits=4,vbits=4,group=16,sink=1,resid=quant");
	uint64_t ne = kvcd_codec_size(&pe, &l, false, 0), nq = kvcd_codec_size(&pq, &l, false, 0);
	/* 36 regular tokens: 2 groups of 16, then 4 leftover keys: exact 4 x 8 x 4 bytes against
	 * one more group per channel (8 x 4 bytes of params) and their 4-bit codes (16 bytes) */
	cr_assert_eq(ne - nq, 4 * 8 * 4 - (8 * 4 + 16), "%llu vs %llu", (unsigned long long)ne,
		     (unsigned long long)nq);
	float *x = block_f32(&l, 1.0f), *y;
	uint64_t got;

	y = roundtrip("kivi:kbits=4,vbits=4,group=16,sink=1,resid=quant", &l, x, NULL, &got);
	cr_assert_eq(got, nq);
	cr_assert_eq(memcmp(x, y, 8 * 4), 0, "the sink stays exact");
	unsigned moved = 0;

	for (unsigned c = 0; c < 8; c++) {
		float lo = INFINITY, hi = -INFINITY;

		for (unsigned t = 33; t < 37; t++) {
			lo = fminf(lo, x[t * 8 + c]);
			hi = fmaxf(hi, x[t * 8 + c]);
		}
		for (unsigned t = 33; t < 37; t++) {
			float err = fabsf(x[t * 8 + c] - y[t * 8 + c]);

			cr_assert_leq(err, (hi - lo) / 15 * 0.5f + 1e-2f * (hi - lo) + 1e-6f,
				      "token %u channel %u: %g", t, c, err);
			moved += x[t * 8 + c] != y[t * 8 + c];
		}
	}
	cr_assert_gt(moved, 16, "the leftover keys are quantized, not copied (%u of 32 moved)",
		     moved);
	char buf[KVCD_POLICY_STR], why[128];

	kvcd_policy_format(&pq, buf, sizeof(buf));
	cr_assert_str_eq(buf, "kivi:kbits=4,vbits=4,group=16,sink=1,resid=quant");
	cr_assert_eq(kvcd_policy_parse("int4:resid=quant", &pq, why, sizeof(why)), -EINVAL);
	cr_assert_eq(kvcd_policy_parse("kivi:resid=maybe", &pq, why, sizeof(why)), -EINVAL);
	free(x);
	free(y);
}

/* Sinks are the sequence's first tokens: a block starting at position 2 holds two of four, one
 * starting later holds none; the header records the position, so each decodes alone. */
Test(codec, sinks_follow_the_block_position)
{
	struct kvcp_layout l = {
		.dtype = KVCP_F32, .layers = 1, .kv_heads = 1, .head_dim = 32, .tokens = 32
	};
	struct kvcd_policy p = P("int4:sink=4");
	uint64_t n0 = kvcd_codec_size(&p, &l, false, 0), n2 = kvcd_codec_size(&p, &l, false, 2);
	uint64_t n9 = kvcd_codec_size(&p, &l, false, 900);
	/* an exact f32 token costs 4 (index) + 128 bytes; a 4-bit token 4 (params) + 16 */
	uint64_t delta = (4 + 128) - (4 + 16);

	cr_assert_eq(n0 - n2, 2 * 2 * delta, "two sinks fewer, in K and V");
	cr_assert_eq(n2 - n9, 2 * 2 * delta);
	float *x = block_f32(&l, 1.0f), *y = malloc(kvcp_layout_bytes(&l));
	uint8_t *e = malloc(n2);
	struct kvcp_layout back;

	cr_assert_eq(kvcd_codec_encode(kvcd_isa_best(), &p, &l, 2, x, NULL, e), 0);
	cr_assert_eq(kvcd_codec_decode(kvcd_isa_best(), e, n2, y, kvcp_layout_bytes(&l), &back), 0);
	cr_assert_eq(memcmp(x, y, 2 * 32 * 4), 0, "tokens 0, 1 (positions 2, 3) are exact");
	cr_assert_neq(memcmp(x + 64, y + 64, 32 * 4), 0, "token 2 (position 4) is quantized");
	free(x);
	free(y);
	free(e);
}

Test(codec, sparse_outliers_are_kept_exactly)
{
	struct kvcp_layout l = {
		.dtype = KVCP_F32, .layers = 1, .kv_heads = 1, .head_dim = 64, .tokens = 64
	};
	float *x = block_f32(&l, 1.0f);
	size_t n = kvcp_layout_bytes(&l) / 4;

	for (size_t i = 0; i < n; i += 97)
		x[i] = 40.0f + (float)(i % 7); /* 43 outliers in K, 42 in V: about 1% */
	uint64_t plain_n, sparse_n;
	float *a = roundtrip("int4", &l, x, NULL, &plain_n);
	float *b = roundtrip("int4:sparse=0.02", &l, x, NULL, &sparse_n);

	for (size_t i = 0; i < n; i += 97)
		cr_assert_eq(x[i], b[i], "outlier %zu kept exactly", i);
	cr_assert_eq(sparse_n - plain_n, 2 * ((64 * 64 * 20000 + 999999) / 1000000) * 8,
		     "2%% of the values of K and V, 8 bytes each");
	cr_assert_lt(kvcd_quality_of(x, b, n).rel_frob, kvcd_quality_of(x, a, n).rel_frob / 2);
	free(x);
	free(a);
	free(b);
}

Test(codec, importance_scores_buy_precision)
{
	struct kvcp_layout l = {
		.dtype = KVCP_F32, .layers = 1, .kv_heads = 2, .head_dim = 32, .tokens = 100
	};
	float *x = block_f32(&l, 1.0f), scores[100];
	uint64_t with, without;

	for (int t = 0; t < 100; t++)
		scores[t] = t % 10 == 0 ? 5.0f : 1.0f / (float)(t + 1); /* tokens 0, 10, ... 90 */
	float *a = roundtrip("int2:hibits=8,hipct=10", &l, x, scores, &with);
	float *b = roundtrip("int2:hibits=8,hipct=10", &l, x, NULL, &without);
	double imp = 0, rest = 0;

	for (size_t i = 0; i < kvcp_layout_bytes(&l) / 4; i++) {
		size_t t = (i / 64) % 100;
		double e = fabs((double)x[i] - a[i]);

		if (t % 10 == 0)
			imp = fmax(imp, e);
		else
			rest = fmax(rest, e);
	}
	cr_assert_lt(imp * 20, rest, "8-bit tokens: %g, 2-bit tokens: %g", imp, rest);
	cr_assert_gt(with, without, "scores cost the bits they buy");
	free(x);
	free(a);
	free(b);
}

Test(codec, dtypes_round_trip)
{
	struct kvcp_layout l = { .layers = 1, .kv_heads = 2, .head_dim = 32, .tokens = 32 };
	uint8_t dt[] = { KVCP_F16, KVCP_BF16 };

	for (int i = 0; i < 2; i++) {
		l.dtype = dt[i];
		size_t n = kvcp_layout_bytes(&l) / 2;
		uint16_t *x = malloc(n * 2);
		float *f = malloc(n * 4), *g = malloc(n * 4);

		for (size_t j = 0; j < n; j++)
			f[j] = (float)nrand();
		kvcd_from_f32(KVCD_ISA_SCALAR, l.dtype, f, x, n);
		kvcd_to_f32(KVCD_ISA_SCALAR, l.dtype, x, f, n);
		uint16_t *y = roundtrip("int8:group=32", &l, x, NULL, NULL);

		kvcd_to_f32(KVCD_ISA_SCALAR, l.dtype, y, g, n);
		struct kvcd_quality q = kvcd_quality_of(f, g, n);

		cr_assert_lt(q.rel_frob, 0.01, "dtype %u: %g", l.dtype, q.rel_frob);
		cr_assert_gt(q.cosine, 0.9999);
		free(x);
		free(y);
		free(f);
		free(g);
	}
}

/* Every ISA encodes to the same bytes and decodes to the same bytes. */
Test(codec, simd_equals_scalar_on_blocks)
{
	struct kvcp_layout l = {
		.dtype = KVCP_F16, .layers = 2, .kv_heads = 2, .head_dim = 64, .tokens = 48
	};
	const char *pols[] = { "int8",
			       "int4:group=32",
			       "int3",
			       "kivi:kbits=2,vbits=4,group=16",
			       "fp8",
			       "int4:rotate=hadamard,sparse=0.01,sink=2,outliers=1",
			       "int4:virtual=mean,sparse=0.01,outliers=1",
			       "fp8:rotate=hadamard,virtual=mean",
			       "kivi:kbits=2,vbits=4,group=16,virtual=mean" };
	size_t raw = kvcp_layout_bytes(&l);
	uint16_t *x = malloc(raw);

	for (size_t i = 0; i < raw / 2; i++)
		x[i] = kvcd_f32_to_f16((float)(nrand() * (i % 64 == 5 ? 30 : 1)));
	for (size_t pi = 0; pi < sizeof(pols) / sizeof(pols[0]); pi++) {
		struct kvcd_policy p = P(pols[pi]);
		uint64_t n = kvcd_codec_size(&p, &l, false, 0);
		void *e[KVCD_ISA_AVX512_VNNI + 1], *d[KVCD_ISA_AVX512_VNNI + 1];
		struct kvcp_layout back;

		for (int isa = 0; isa <= (int)kvcd_isa_best(); isa++) {
			e[isa] = malloc(n);
			d[isa] = malloc(raw);
			cr_assert_eq(
				kvcd_codec_encode((enum kvcd_isa)isa, &p, &l, 0, x, NULL, e[isa]),
				0);
			cr_assert_eq(kvcd_codec_decode((enum kvcd_isa)isa, e[isa], n, d[isa], raw,
						       &back),
				     0);
			if (isa) {
				cr_assert_eq(memcmp(e[0], e[isa], n), 0,
					     "%s: %s encodes like scalar", pols[pi],
					     kvcd_isa_name((enum kvcd_isa)isa));
				cr_assert_eq(memcmp(d[0], d[isa], raw), 0,
					     "%s: %s decodes like scalar", pols[pi],
					     kvcd_isa_name((enum kvcd_isa)isa));
			}
		}
		for (int isa = 0; isa <= (int)kvcd_isa_best(); isa++) {
			free(e[isa]);
			free(d[isa]);
		}
	}
	free(x);
}

/* The fused one-pass encoder (int, fp8 and KIVI) writes the same bytes, and refuses the same blocks,
 * as the unit-by-unit path, in every ISA and dtype, with fewer tokens than heads too; the
 * fused decoder gives back the same bytes as the unit-by-unit one. */
Test(codec, fused_pass_writes_the_unit_path_bytes)
{
	const char *pols[] = { "int8",
			       "int4:group=32",
			       "int3",
			       "int2:rotate=hadamard",
			       "int4:rotate=hadamard",
			       "int8:rotate=hadamard,group=32",
			       "int5:group=16",
			       "int4:sink=4",
			       "fp8",
			       "fp8:group=48",
			       "fp8:rotate=hadamard",
			       "kivi:kbits=4,vbits=4,group=32",
			       "kivi:kbits=2,vbits=8,group=16",
			       "kivi:kbits=8,vbits=4,group=16",
			       "kivi:kbits=4,vbits=4,group=32,resid=quant" };
	const uint8_t dtypes[] = { KVCP_F16, KVCP_BF16, KVCP_F32 };
	const uint32_t tokens[] = { 40, 2 };

	for (size_t di = 0; di < 3; di++)
		for (size_t ti = 0; ti < 2; ti++)
			for (size_t pi = 0; pi < sizeof(pols) / sizeof(pols[0]); pi++) {
				struct kvcp_layout l = { .dtype = dtypes[di],
							 .layers = 2,
							 .kv_heads = 3,
							 .head_dim = 64,
							 .tokens = tokens[ti] };
				struct kvcd_policy p = P(pols[pi]);
				uint64_t n = kvcd_codec_size(&p, &l, false, 8);
				struct kvcp_layout lf = l;
				size_t raw = kvcp_layout_bytes(&l), es = kvcp_dtype_size(l.dtype);
				float *f;

				lf.dtype = KVCP_F32;
				f = block_f32(&lf, 20.0f);
				uint8_t *x = malloc(raw), *a = malloc(n), *b = malloc(n);

				kvcd_from_f32(KVCD_ISA_SCALAR, l.dtype, f, x, raw / es);
				for (int isa = 0; isa <= (int)kvcd_isa_best(); isa++) {
					int ea, eb;

					kvcd_codec_fused = true;
					ea = kvcd_codec_encode((enum kvcd_isa)isa, &p, &l, 8, x,
							       NULL, a);
					kvcd_codec_fused = false;
					eb = kvcd_codec_encode((enum kvcd_isa)isa, &p, &l, 8, x,
							       NULL, b);
					cr_assert_eq(ea, 0, "%s", pols[pi]);
					cr_assert_eq(eb, 0, "%s", pols[pi]);
					cr_assert_eq(memcmp(a, b, n), 0,
						     "%s dtype %u tokens %u isa %d", pols[pi],
						     l.dtype, l.tokens, isa);
					uint8_t *ya = malloc(raw), *yb = malloc(raw);
					struct kvcp_layout back;

					kvcd_codec_fused = true;
					cr_assert_eq(kvcd_codec_decode((enum kvcd_isa)isa, a, n, ya,
								       raw, &back),
						     0);
					kvcd_codec_fused = false;
					cr_assert_eq(kvcd_codec_decode((enum kvcd_isa)isa, a, n, yb,
								       raw, &back),
						     0);
					cr_assert_eq(memcmp(ya, yb, raw), 0,
						     "decoded: %s dtype %u tokens %u isa %d",
						     pols[pi], l.dtype, l.tokens, isa);
					free(ya);
					free(yb);
					/* a nan in the last plane: both refuse it */
					memset(x + raw - 3 * es, 0xff, es);
					kvcd_codec_fused = true;
					ea = kvcd_codec_encode((enum kvcd_isa)isa, &p, &l, 8, x,
							       NULL, a);
					kvcd_codec_fused = false;
					eb = kvcd_codec_encode((enum kvcd_isa)isa, &p, &l, 8, x,
							       NULL, b);
					cr_assert_eq(ea, -EINVAL);
					cr_assert_eq(eb, -EINVAL);
					kvcd_from_f32(KVCD_ISA_SCALAR, l.dtype, f, x, raw / es);
				}
				kvcd_codec_fused = true;
				free(f);
				free(x);
				free(a);
				free(b);
			}
}

/* e4m3's NaN codes, which kvcd never writes but a block may hold, decode to the same bytes
 * in the fused decoder (its codes taken from their bits) as through the table. */
Test(codec, fp8_nan_codes_decode_alike)
{
	struct kvcp_layout l = {
		.dtype = KVCP_F16, .layers = 1, .kv_heads = 2, .head_dim = 64, .tokens = 8
	};
	struct kvcp_layout lf = l, back;
	struct kvcd_policy p = P("fp8");
	size_t raw = kvcp_layout_bytes(&l);
	uint64_t n = kvcd_codec_size(&p, &l, false, 0);
	float *f;
	uint8_t *x = malloc(raw), *e = malloc(n), *a = malloc(raw), *b = malloc(raw);

	lf.dtype = KVCP_F32;
	f = block_f32(&lf, 1.0f);
	kvcd_from_f32(KVCD_ISA_SCALAR, l.dtype, f, x, raw / 2);
	cr_assert_eq(kvcd_codec_encode(KVCD_ISA_SCALAR, &p, &l, 0, x, NULL, e), 0);
	for (uint64_t i = n - 40; i < n; i += 3) /* codes of the last unit */
		e[i] = i & 1 ? 0xff : 0x7f;
	for (int isa = 0; isa <= (int)kvcd_isa_best(); isa++) {
		kvcd_codec_fused = true;
		cr_assert_eq(kvcd_codec_decode((enum kvcd_isa)isa, e, n, a, raw, &back), 0);
		kvcd_codec_fused = false;
		cr_assert_eq(kvcd_codec_decode((enum kvcd_isa)isa, e, n, b, raw, &back), 0);
		kvcd_codec_fused = true;
		cr_assert_eq(memcmp(a, b, raw), 0, "isa %d", isa);
	}
	free(f);
	free(x);
	free(e);
	free(a);
	free(b);
}

/* Blocks large enough to be decoded around the caches (streaming stores, into a destination
 * aligned for them) come out as the scalar decoder and an unaligned destination give them. */
Test(codec, large_blocks_decode_to_the_same_bytes)
{
	const char *pols[] = { "int8", "int4", "fp8", "kivi:kbits=4,vbits=2,group=32" };
	struct kvcp_layout l = {
		.dtype = KVCP_F16, .layers = 2, .kv_heads = 8, .head_dim = 128, .tokens = 520
	};
	struct kvcp_layout lf = l, back;
	size_t raw = kvcp_layout_bytes(&l);
	float *f;
	uint8_t *x = malloc(raw), *ref = malloc(raw), *al = aligned_alloc(64, raw),
		*un = malloc(raw + 8);

	lf.dtype = KVCP_F32;
	f = block_f32(&lf, 20.0f);
	kvcd_from_f32(KVCD_ISA_SCALAR, l.dtype, f, x, raw / 2);
	cr_assert_geq(raw, 4u << 20, "large enough to stream");
	for (size_t pi = 0; pi < sizeof(pols) / sizeof(pols[0]); pi++) {
		struct kvcd_policy p = P(pols[pi]);
		uint64_t n = kvcd_codec_size(&p, &l, false, 0);
		uint8_t *e = malloc(n);

		cr_assert_eq(kvcd_codec_encode(kvcd_isa_best(), &p, &l, 0, x, NULL, e), 0);
		cr_assert_eq(kvcd_codec_decode(KVCD_ISA_SCALAR, e, n, ref, raw, &back), 0);
		cr_assert_eq(kvcd_codec_decode(kvcd_isa_best(), e, n, al, raw, &back), 0);
		cr_assert_eq(kvcd_codec_decode(kvcd_isa_best(), e, n, un + 8, raw, &back), 0);
		cr_assert_eq(memcmp(ref, al, raw), 0, "%s: aligned destination", pols[pi]);
		cr_assert_eq(memcmp(ref, un + 8, raw), 0, "%s: unaligned destination", pols[pi]);
		free(e);
	}
	free(f);
	free(x);
	free(ref);
	free(al);
	free(un);
}

/* A group longer than head_dim covers the token's row across heads: the encoding is that of
 * the same bytes seen as one head of kv_heads * head_dim, and costs fewer parameters. */
Test(codec, groups_longer_than_head_dim_span_heads)
{
	struct kvcp_layout l = {
		.dtype = KVCP_F32, .layers = 2, .kv_heads = 4, .head_dim = 8, .tokens = 64
	};
	struct kvcp_layout one = l;
	const char *pols[] = { "int4:group=32", "int3:group=16,rotate=hadamard", "fp8:group=32",
			       "kivi:kbits=4,vbits=2,group=32,sink=2,outliers=1" };
	size_t raw = kvcp_layout_bytes(&l), hs = sizeof(struct kvcd_codec_hdr);
	float *x = block_f32(&l, 10.0f), *y = malloc(raw);

	one.kv_heads = 1;
	one.head_dim = 32;
	for (size_t pi = 0; pi < sizeof(pols) / sizeof(pols[0]); pi++) {
		struct kvcd_policy p = P(pols[pi]), capped = p;
		uint64_t n = kvcd_codec_size(&p, &l, false, 0);
		uint8_t *a = malloc(n), *b = malloc(n);
		struct kvcp_layout back;

		cr_assert(kvcd_policy_spans(&p, &l), "%s", pols[pi]);
		cr_assert(!kvcd_policy_spans(&p, &one));
		cr_assert_eq(n, kvcd_codec_size(&p, &one, false, 0));
		cr_assert_eq(kvcd_codec_encode(KVCD_ISA_SCALAR, &p, &l, 0, x, NULL, a), 0);
		cr_assert_eq(kvcd_codec_encode(KVCD_ISA_SCALAR, &p, &one, 0, x, NULL, b), 0);
		cr_assert_eq(memcmp(a + hs, b + hs, n - hs), 0, "%s: same codes as one wide head",
			     pols[pi]);
		cr_assert_eq(kvcd_codec_decode(KVCD_ISA_SCALAR, a, n, y, raw, &back), 0);
		cr_assert_eq(back.kv_heads, 4);
		cr_assert_eq(back.head_dim, 8);
		cr_assert_lt(kvcd_quality_of(x, y, raw / 4).rel_frob, 0.5);
		if (p.kind == KVCD_CODEC_INT) { /* per-head groups: more scales and zeros */
			capped.group = 8;
			cr_assert_gt(kvcd_codec_size(&capped, &l, false, 0), n, "%s", pols[pi]);
		}
		free(a);
		free(b);
	}
	free(x);
	free(y);
}

/* Keys that are one vector per head rotated by RoPE vary wildly along each channel; taken back
 * to before RoPE (rope=BASE) they barely vary, and per-channel quantization gets far better. */
Test(codec, rope_quantizes_keys_before_rope)
{
	struct kvcp_layout l = {
		.dtype = KVCP_F32, .layers = 1, .kv_heads = 2, .head_dim = 16, .tokens = 64
	};
	size_t raw = kvcp_layout_bytes(&l), plane = (size_t)l.tokens * 2 * 16;
	float *x = malloc(raw), *a, *b, base[2][16];
	uint32_t pos = 1000;
	struct kvcd_quality qa, qb;

	for (int h = 0; h < 2; h++)
		for (int c = 0; c < 16; c++)
			base[h][c] = (float)(nrand() * 3.0);
	for (uint32_t t = 0; t < l.tokens; t++)
		for (int h = 0; h < 2; h++)
			for (int c = 0; c < 16; c += 2) {
				double ang = (pos + t) * pow(10000.0, -(double)c / 16);
				float k0 = base[h][c] + (float)(0.01 * nrand());
				float k1 = base[h][c + 1] + (float)(0.01 * nrand());
				float *k = x + ((size_t)t * 2 + h) * 16 + c, *v = k + plane;

				k[0] = (float)(k0 * cos(ang) - k1 * sin(ang));
				k[1] = (float)(k0 * sin(ang) + k1 * cos(ang));
				v[0] = (float)nrand();
				v[1] = (float)nrand();
			}
	/* the policy encodes at the block's position: roundtrip() uses 0, so encode here */
	{
		struct kvcd_policy pa = P("kivi:kbits=4,vbits=4,group=32"),
				   pb = P("kivi:kbits=4,vbits=4,group=32,rope=10000");
		uint64_t na = kvcd_codec_size(&pa, &l, false, pos),
			 nb = kvcd_codec_size(&pb, &l, false, pos);
		uint8_t *ea = malloc(na), *eb = malloc(nb);
		struct kvcp_layout back;

		cr_assert_eq(na, nb, "rope costs no bytes");
		a = malloc(raw);
		b = malloc(raw);
		cr_assert_eq(kvcd_codec_encode(KVCD_ISA_SCALAR, &pa, &l, pos, x, NULL, ea), 0);
		cr_assert_eq(kvcd_codec_encode(KVCD_ISA_SCALAR, &pb, &l, pos, x, NULL, eb), 0);
		cr_assert_eq(kvcd_codec_decode(kvcd_isa_best(), ea, na, a, raw, &back), 0);
		cr_assert_eq(kvcd_codec_decode(kvcd_isa_best(), eb, nb, b, raw, &back), 0);
		free(ea);
		free(eb);
	}
	qa = kvcd_quality_of(x, a, plane);
	qb = kvcd_quality_of(x, b, plane);
	cr_assert_lt(qb.rel_frob, qa.rel_frob / 4, "keys: %g with rope, %g without", qb.rel_frob,
		     qa.rel_frob);
	cr_assert_eq(memcmp(a + plane, b + plane, plane * 4), 0, "values are untouched");
	free(x);
	free(a);
	free(b);
}

Test(codec, bad_input_is_refused_cleanly)
{
	struct kvcp_layout l = {
		.dtype = KVCP_F32, .layers = 1, .kv_heads = 1, .head_dim = 32, .tokens = 32
	};
	struct kvcd_policy p = P("int4:sink=2");
	uint64_t n = kvcd_codec_size(&p, &l, false, 0), raw = kvcp_layout_bytes(&l);
	float *x = block_f32(&l, 1.0f), *y = malloc(raw);
	uint8_t *e = malloc(n), *f = malloc(n);
	struct kvcp_layout back;
	float scores[32] = { 0 };

	x[100] = NAN;
	cr_assert_eq(kvcd_codec_encode(KVCD_ISA_SCALAR, &p, &l, 0, x, NULL, e), -EINVAL, "nan");
	x[100] = INFINITY;
	cr_assert_eq(kvcd_codec_encode(kvcd_isa_best(), &p, &l, 0, x, NULL, e), -EINVAL, "inf");
	x[100] = 1e6f;
	cr_assert_eq(kvcd_codec_encode(kvcd_isa_best(), &p, &l, 0, x, NULL, e), -ERANGE,
		     "beyond f16");
	x[100] = 1.0f;
	struct kvcd_policy h = P("int4:hibits=8");

	scores[3] = NAN;
	cr_assert_eq(kvcd_codec_encode(kvcd_isa_best(), &h, &l, 0, x, scores, e), -EINVAL,
		     "nan score");
	cr_assert_eq(kvcd_codec_encode(kvcd_isa_best(), &p, &l, 0, x, NULL, e), 0);
	cr_assert_eq(kvcd_codec_decode(kvcd_isa_best(), e, n, y, raw - 1, &back), -ENOSPC);
	cr_assert_eq(kvcd_codec_decode(kvcd_isa_best(), e, n - 1, y, raw, &back), -EBADMSG);
	cr_assert_eq(kvcd_codec_decode(kvcd_isa_best(), e, 10, y, raw, &back), -EBADMSG);
	for (size_t i = 0; i < sizeof(struct kvcd_codec_hdr); i++) { /* any header byte */
		memcpy(f, e, n);
		f[i] ^= 0x5a;
		int err = kvcd_codec_decode(kvcd_isa_best(), f, n, y, raw, &back);

		cr_assert(err == -EBADMSG || err == 0 || err == -ENOSPC, "byte %zu: %d", i, err);
	}
	memcpy(f, e, n);
	f[sizeof(struct kvcd_codec_hdr)] = 1; /* sink list 0,1 becomes 1,1 */
	cr_assert_eq(kvcd_codec_decode(kvcd_isa_best(), f, n, y, raw, &back), -EBADMSG,
		     "token lists are checked");
	for (int round = 0; round < 2000; round++) { /* random damage anywhere: never a crash */
		memcpy(f, e, n);
		for (int k = 0; k < 4; k++)
			f[(size_t)(urand() * (double)n)] ^= (uint8_t)(1 + urand() * 255);
		(void)kvcd_codec_decode(kvcd_isa_best(), f, n, y, raw, &back);
	}
	free(x);
	free(y);
	free(e);
	free(f);
}

Test(codec, quality_library)
{
	float k[4 * 8], v[4 * 8], k2[4 * 8], q[2 * 8];

	for (int i = 0; i < 32; i++) {
		k[i] = k2[i] = (float)nrand();
		v[i] = (float)nrand();
	}
	for (int i = 0; i < 16; i++)
		q[i] = (float)nrand();
	struct kvcd_quality a = kvcd_quality_attention(q, 2, k, v, k2, v, 4, 8);

	cr_assert_float_eq(a.rel_frob, 0, 1e-12);
	cr_assert_float_eq(a.cosine, 1, 1e-12);
	float x[3] = { 3, 4, 0 }, y[3] = { 3, 4, 5 };
	struct kvcd_quality b = kvcd_quality_of(x, y, 3);

	cr_assert_float_eq(b.rel_frob, 1.0, 1e-12, "|(0,0,5)| / |(3,4,0)|");
	cr_assert_float_eq(b.cosine, 25 / (5 * sqrt(50)), 1e-12);
	/* all values of V equal: attention output is that value whatever K is */
	for (int i = 0; i < 32; i++) {
		v[i] = 2.0f;
		k2[i] = (float)nrand();
	}
	a = kvcd_quality_attention(q, 2, k, v, k2, v, 4, 8);
	cr_assert_float_eq(a.rel_frob, 0, 1e-12);
}

/* params=u8: each params list costs a 12-byte reference and 2 bytes per group instead of 4,
 * and the error stays close to the f16 params' (scales at most 2^(1/16) coarser). */
Test(codec, compact_params_save_bytes_and_keep_the_error)
{
	struct kvcp_layout l = {
		.dtype = KVCP_F32, .layers = 2, .kv_heads = 1, .head_dim = 8, .tokens = 32
	};
	const char *pol[][2] = { { "kivi:kbits=5,vbits=4,group=16",
				   "kivi:kbits=5,vbits=4,group=16,params=u8" },
				 { "int4:group=8", "int4:group=8,params=u8" } };
	/* kivi: K 2 groups x 8 channels, V 32 tokens x 1 group; int4: 32 x 1 for K and for V */
	const uint64_t saved[] = { 2 * ((16 * 4 - (12 + 16 * 2)) + (32 * 4 - (12 + 32 * 2))),
				   2 * 2 * (32 * 4 - (12 + 32 * 2)) };
	float *x = block_f32(&l, 4.0f);
	size_t n = kvcp_layout_bytes(&l) / 4;

	for (size_t i = 0; i < 2; i++) {
		uint64_t nf, nu;
		float *yf = roundtrip(pol[i][0], &l, x, NULL, &nf);
		float *yu = roundtrip(pol[i][1], &l, x, NULL, &nu);
		double ef = 0, eu = 0;

		cr_assert_eq(nf - nu, saved[i], "%s: %llu against %llu bytes", pol[i][1],
			     (unsigned long long)nu, (unsigned long long)nf);
		for (size_t k = 0; k < n; k++) {
			ef += (double)(x[k] - yf[k]) * (x[k] - yf[k]);
			eu += (double)(x[k] - yu[k]) * (x[k] - yu[k]);
		}
		cr_assert_gt(eu, 0.0);
		cr_assert_leq(sqrt(eu), 1.25 * sqrt(ef), "%s: rms error %g against f16 params' %g",
			      pol[i][1], sqrt(eu / n), sqrt(ef / n));
		free(yf);
		free(yu);
	}
	struct kvcd_policy p = P("kivi:kbits=5,vbits=4,group=64,params=u8"), q;
	char buf[KVCD_POLICY_STR], why[128];

	kvcd_policy_format(&p, buf, sizeof(buf));
	cr_assert_str_eq(buf, "kivi:kbits=5,vbits=4,group=64,params=u8");
	q = P(buf);
	cr_assert_eq(memcmp(&p, &q, sizeof(p)), 0);
	cr_assert_eq(P("int4:params=f16").params, 0);
	cr_assert_eq(kvcd_policy_parse("fp8:params=u8", &q, why, sizeof(why)), -EINVAL);
	cr_assert_eq(kvcd_policy_parse("int4:params=u4", &q, why, sizeof(why)), -EINVAL);
	p.params = 2;
	cr_assert_eq(kvcd_policy_check(&p, &l, why, sizeof(why)), -EINVAL);
	free(x);
}

/* The one-pass fp8 row kernel writes what the per-group steps write (the smallest f16 scale s
 * with s * 448 >= the group's largest magnitude, then kvcd_f32_to_e4m3 of each value over s),
 * to the same places: rows of 1 to 40 groups of 16 to 192 values, with all-zero groups, values
 * in e4m3's subnormal range, zeros of both signs and the largest magnitude of either sign; an
 * inf or a nan anywhere is -EINVAL. */
Test(codec, fp8_rows_equal_the_per_group_steps)
{
	enum {
		MAXV = 40 * 192
	};
	static const size_t gchs[] = { 16, 48, 64, 128, 192 };
	uint16_t *h = malloc(MAXV * 2);
	float *x = malloc(MAXV * 4);
	uint8_t *want = malloc(2 * MAXV), *got = malloc(2 * MAXV);

	if (!kvcd_fp8_row_f16_ok(kvcd_isa_best(), 64))
		cr_skip_test("this CPU has no AVX-512 with F16C");
	cr_assert_eq(kvcd_fp8_row_f16(KVCD_ISA_AVX2, (const uint8_t *)h, 1, 64, 1, 64, x, got, got),
		     -EOPNOTSUPP);
	for (size_t gi = 0; gi < 5; gi++)
		for (size_t ng = 1; ng <= 40; ng += 3) {
			size_t gch = gchs[gi], per = ng % 2 ? 1 : 2, stride = per * (2 + gch) + 8;
			size_t out = ng / per * stride;

			for (size_t g = 0; g < ng; g++)
				for (size_t i = 0; i < gch; i++) {
					double v = nrand() * (g % 4 == 1 ? 1e-3 : 3.0);

					h[g * gch + i] = kvcd_f32_to_f16(
						g % 7 == 3 ? 0.0f : /* all zero */
							i == 5 ? -0.0f
						: i == 9       ? (g % 2 ? -1.0f : 1.0f) * 40.0f
							       : (float)v);
				}
			memset(want, 0xa5, out);
			memset(got, 0xa5, out);
			for (size_t g = 0; g < ng; g++) {
				uint8_t *u = want + g / per * stride;
				float amax = 0.0f, s;
				uint16_t sc;

				for (size_t i = 0; i < gch; i++)
					amax = fmaxf(amax, fabsf(kvcd_f16_to_f32(h[g * gch + i])));
				for (sc = kvcd_f32_to_f16(amax / 448.0f);
				     kvcd_f16_to_f32(sc) * 448.0f < amax; sc++)
					;
				memcpy(u + g % per * 2, &sc, 2);
				s = kvcd_f16_to_f32(sc);
				for (size_t i = 0; i < gch; i++)
					u[per * 2 + g % per * gch + i] =
						s > 0.0f ? kvcd_f32_to_e4m3(
								   kvcd_f16_to_f32(h[g * gch + i]) /
								   s)
							 : 0;
			}
			cr_assert_eq(kvcd_fp8_row_f16(kvcd_isa_best(), (const uint8_t *)h, ng, gch,
						      per, stride, x, got, got + per * 2),
				     0);
			cr_assert_eq(memcmp(want, got, out), 0, "gch %zu groups %zu", gch, ng);
			size_t at = (size_t)(urand() * (double)(ng * gch));
			uint16_t keep = h[at];

			h[at] = at % 2 ? 0x7c00 : 0xfe01;
			cr_assert_eq(kvcd_fp8_row_f16(kvcd_isa_best(), (const uint8_t *)h, ng, gch,
						      per, stride, x, got, got + per * 2),
				     -EINVAL, "value %zu of %zu", at, ng * gch);
			h[at] = keep;
		}
	free(h);
	free(x);
	free(want);
	free(got);
}
