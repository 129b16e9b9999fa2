/* t_gpucodec.h - what the GPU codec tests share: the host walk of the kernels' grid
 * (unit_gpucodec.c) and the device (gpu_codec.c) are checked on the same blocks and policies. */
#ifndef T_GPUCODEC_H
#define T_GPUCODEC_H

#include <math.h>

#include "t_util.h"
#include "internal.h"
#include "kern.h"

static inline struct kvcd_policy P(const char *s) {
	struct kvcd_policy p;
	char why[128];

	cr_assert_eq(kvcd_policy_parse(s, &p, why, sizeof(why)), 0, "%s: %s", s, why);
	return p;
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static inline double urand(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (double)(rng >> 11) * 0x1p-53;
}

static inline double nrand(void)
{
	return sqrt(-2 * log(urand() + 1e-300)) * cos(6.283185307179586 * urand());
}

/* KV-like values in @dtype: per-channel offsets, a few large channels, some exact zeros and
 * constant groups (scale 0), and values on rounding boundaries of f16. */
static inline void *block(const struct kvcp_layout *l)
{
	size_t n = kvcp_layout_bytes(l) / kvcp_dtype_size(l->dtype), d = l->head_dim;
	float *x = malloc(n * 4);
	void *out = malloc(kvcp_layout_bytes(l));

	for (size_t i = 0; i < n; i++) {
		size_t c = i % d;

		x[i] = (float)(nrand() + 0.3 * (double)(c % 5)) * (c % 17 == 3 ? 9.0f : 1.0f);
		if (i / d % 7 == 2)
			x[i] = 0.25f; /* a constant row */
		if (i % 97 == 5)
			x[i] = 0.0f;
	}
	kvcd_from_f32(KVCD_ISA_SCALAR, l->dtype, x, out, n);
	free(x);
	return out;
}

/* Every kind of block the kernels take, each with the layout that exercises it. */
struct t_gpucase {
	const char *pol;
	int wide; /* 0: 2 layers x 4 heads x 64 x 40 tokens; 1: 1 x 2 x 128 x 37 */
	uint32_t pos;
};

static const struct t_gpucase t_gpucases[] = {
	{ "int8", 0, 0 },
	{ "int4", 0, 0 },
	{ "int2", 0, 0 },
	{ "int:bits=3,group=32", 0, 0 },
	{ "int:bits=5,group=16", 1, 0 },
	{ "int:bits=7,group=8", 1, 0 },
	{ "int4:group=0", 0, 0 },   /* head_dim */
	{ "int4:group=48", 0, 0 },  /* a shorter last group in each row */
	{ "int4:group=256", 0, 0 }, /* spanning the token's heads */
	{ "int:bits=3,group=5", 1, 0 },
	{ "fp8", 0, 0 },
	{ "fp8:group=32", 1, 0 },
	{ "fp8:group=48", 0, 0 },
	{ "kivi:kbits=4,vbits=2,group=32", 0, 0 }, /* 8 residual keys */
	{ "kivi:kbits=2,vbits=2,group=16", 1, 0 },
	{ "kivi:kbits=3,vbits=5,group=16,resid=quant", 1, 0 }, /* a short group */
	{ "kivi:kbits=4,vbits=4,group=64", 0, 0 },	       /* every key residual */
	{ "int4:sink=4", 0, 100 }, /* sinks are the sequence's first tokens: none here */
};

static inline struct kvcp_layout t_gpulayout(int wide, uint8_t dtype)
{
	struct kvcp_layout l = {
		.dtype = dtype, .layers = 2, .kv_heads = 4, .head_dim = 64, .tokens = 40
	};

	if (wide) {
		l.layers = 1;
		l.kv_heads = 2;
		l.head_dim = 128;
		l.tokens = 37;
	}
	return l;
}

static const uint8_t t_dtypes[] = { KVCP_F16, KVCP_BF16, KVCP_F32 };

#endif /* T_GPUCODEC_H */
