/* unit_gpucodec.c - the GPU codec kernels' work (daemon/gpu/kern.h), walked over their grid
 * on the host: the bytes it writes must be the CPU codec's, for every codec, bit width, dtype
 * and ISA, and decoding must give the CPU decoder's bytes. What is left for a GPU to show is
 * that the device's arithmetic is the host's (tests/gpu_codec.c, make gpu-check). */
#include <math.h>

#include "t_util.h"
#include "internal.h"
#include "kern.h"

static struct kvcd_policy P(const char *s) {
	struct kvcd_policy p;
	char why[128];

	cr_assert_eq(kvcd_policy_parse(s, &p, why, sizeof(why)), 0, "%s: %s", s, why);
	return p;
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static double urand(void)
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

/* KV-like values in @dtype: per-channel offsets, a few large channels, some exact zeros and
 * constant groups (scale 0), and values on rounding boundaries of f16. */
static void *block(const struct kvcp_layout *l)
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

/* The kernels' two encoding phases, one item after another. */
static int grid_encode(const struct kvcd_plan *plan, const struct kvcg_job *j, const void *src,
		       uint8_t *dst)
{
	int err = 0;

	kvcd_codec_gpu_header(plan, dst);
	for (uint64_t i = 0; i < kvcg_enc1_items(j); i++) {
		int e = kvcg_enc_params(j, src, dst, i);

		err = err ? err : e;
	}
	if (err)
		return err;
	for (uint64_t i = 0; i < kvcg_enc2_items(j); i++)
		kvcg_enc_codes(j, src, dst, i);
	return 0;
}

static void grid_decode(const struct kvcg_job *j, const uint8_t *in, void *raw)
{
	for (uint64_t e = 0; e < kvcg_dec_items(j); e++)
		kvcg_dec_elem(j, in, raw, e);
}

/* Encode and decode @pol on @l at @pos both ways, at every ISA; the bytes must agree. */
static void same_bytes(const char *pol, struct kvcp_layout l, uint32_t pos)
{
	static const uint8_t dtypes[] = { KVCP_F16, KVCP_BF16, KVCP_F32 };
	struct kvcd_policy p = P(pol);

	for (size_t di = 0; di < 3; di++) {
		l.dtype = dtypes[di];
		uint64_t raw = kvcp_layout_bytes(&l);
		void *src = block(&l);

		for (int isa = KVCD_ISA_SCALAR; isa <= (int)kvcd_isa_best(); isa++) {
			struct kvcd_plan plan;
			struct kvcg_job j, jr;
			struct kvcp_layout back;
			uint8_t *cpu, *gpu;
			void *dc = malloc(raw), *dg = malloc(raw);

			cr_assert_eq(kvcd_codec_plan(isa, &p, &l, pos, src, NULL, NULL, &plan), 0,
				     "%s", pol);
			cr_assert_eq(kvcd_codec_gpu_plan(&plan, &j), 0, "%s: the kernels take it",
				     pol);
			cr_assert_eq(j.bytes, plan.stored, "%s: the job's size is the plan's", pol);
			cpu = malloc(plan.stored);
			gpu = malloc(plan.stored);
			memset(gpu, 0xa5, plan.stored); /* every byte must be written */
			cr_assert_eq(kvcd_codec_write(isa, &plan, src, NULL, NULL, cpu), 0);
			cr_assert_eq(grid_encode(&plan, &j, src, gpu), 0, "%s", pol);
			for (uint64_t b = 0; b < plan.stored; b++)
				cr_assert_eq(gpu[b], cpu[b],
					     "%s dtype %u isa %d: byte %llu of %llu: %#x, CPU %#x",
					     pol, l.dtype, isa, (unsigned long long)b,
					     (unsigned long long)plan.stored, gpu[b], cpu[b]);
			cr_assert_eq(kvcd_codec_gpu_read(cpu, plan.stored, &jr), 0);
			cr_assert_eq(memcmp(&jr, &j, sizeof(j)), 0,
				     "the header gives the same job");
			cr_assert_eq(kvcd_codec_decode(isa, cpu, plan.stored, dc, raw, &back), 0);
			memset(dg, 0x5a, raw);
			grid_decode(&jr, cpu, dg);
			cr_assert_eq(memcmp(dc, dg, raw), 0, "%s dtype %u isa %d: decoded bytes",
				     pol, l.dtype, isa);
			kvcd_plan_fini(&plan);
			free(cpu);
			free(gpu);
			free(dc);
			free(dg);
		}
		free(src);
	}
}

static const struct kvcp_layout small = { .layers = 2, .kv_heads = 4, .head_dim = 64, .tokens = 40 };
static const struct kvcp_layout wide = { .layers = 1, .kv_heads = 2, .head_dim = 128, .tokens = 37 };

Test(gpucodec, int_every_width)
{
	same_bytes("int8", small, 0);
	same_bytes("int4", small, 0);
	same_bytes("int2", small, 0);
	same_bytes("int:bits=3,group=32", small, 0);
	same_bytes("int:bits=5,group=16", wide, 0);
	same_bytes("int:bits=7,group=8", wide, 0);
}

Test(gpucodec, int_groups)
{
	same_bytes("int4:group=0", small, 0);	/* head_dim */
	same_bytes("int4:group=48", small, 0);	/* a shorter last group in each row */
	same_bytes("int4:group=256", small, 0); /* spanning the token's heads */
	same_bytes("int:bits=3,group=5", wide, 0);
}

Test(gpucodec, fp8)
{
	same_bytes("fp8", small, 0);
	same_bytes("fp8:group=32", wide, 0);
	same_bytes("fp8:group=48", small, 0);
}

Test(gpucodec, kivi)
{
	same_bytes("kivi:kbits=4,vbits=2,group=32", small, 0); /* 8 residual keys */
	same_bytes("kivi:kbits=2,vbits=2,group=16", wide, 0);
	same_bytes("kivi:kbits=3,vbits=5,group=16,resid=quant", wide, 0); /* a short group */
	same_bytes("kivi:kbits=4,vbits=4,group=64", small, 0);		  /* every key residual */
}

Test(gpucodec, sinks_before_the_block)
{
	/* sinks are the sequence's first tokens: a block after them has none */
	same_bytes("int4:sink=4", small, 100);
}

Test(gpucodec, what_stays_on_the_cpu)
{
	static const char *cpu_only[] = { "int4:sink=4",	  "int4:outliers=2",
					  "int4:rotate=hadamard", "int4:params=u8",
					  "int4:sparse=1%",	  "kivi:rope=10000",
					  "none:minicache=1",	  "none" };
	struct kvcp_layout l = small;
	void *src;

	l.dtype = KVCP_F16;
	src = block(&l);
	for (size_t i = 0; i < sizeof(cpu_only) / sizeof(cpu_only[0]); i++) {
		struct kvcd_policy p = P(cpu_only[i]);
		struct kvcd_plan plan;
		struct kvcg_job j;

		cr_assert_eq(kvcd_codec_plan(KVCD_ISA_SCALAR, &p, &l, 0, src, NULL, NULL, &plan), 0,
			     "%s", cpu_only[i]);
		cr_assert_eq(kvcd_codec_gpu_plan(&plan, &j), -ENOTSUP, "%s", cpu_only[i]);
		if (!plan.raw) {
			uint8_t *enc = malloc(plan.bytes);

			cr_assert_eq(kvcd_codec_write(KVCD_ISA_SCALAR, &plan, src, NULL, NULL, enc),
				     0);
			cr_assert_eq(kvcd_codec_gpu_read(enc, plan.stored, &j), -ENOTSUP, "%s",
				     cpu_only[i]);
			free(enc);
		}
		kvcd_plan_fini(&plan);
	}
	free(src);
}

Test(gpucodec, bad_values_and_bad_headers)
{
	struct kvcp_layout l = wide;
	struct kvcd_policy p = P("int4");
	struct kvcd_plan plan;
	struct kvcg_job j;
	float *x;
	uint8_t *cpu, *gpu;

	l.dtype = KVCP_F32;
	x = block(&l);
	cr_assert_eq(kvcd_codec_plan(KVCD_ISA_SCALAR, &p, &l, 0, x, NULL, NULL, &plan), 0);
	cr_assert_eq(kvcd_codec_gpu_plan(&plan, &j), 0);
	cpu = malloc(plan.stored);
	gpu = malloc(plan.stored);
	x[77] = INFINITY;
	cr_assert_eq(kvcd_codec_write(KVCD_ISA_SCALAR, &plan, x, NULL, NULL, cpu), -EINVAL);
	cr_assert_eq(grid_encode(&plan, &j, x, gpu), -EINVAL);
	x[77] = 1e6f; /* beyond f16: the group's zero or scale cannot be held */
	cr_assert_eq(kvcd_codec_write(KVCD_ISA_SCALAR, &plan, x, NULL, NULL, cpu), -ERANGE);
	cr_assert_eq(grid_encode(&plan, &j, x, gpu), -ERANGE);
	x[77] = 1.0f;
	cr_assert_eq(kvcd_codec_write(KVCD_ISA_SCALAR, &plan, x, NULL, NULL, cpu), 0);
	cr_assert_eq(kvcd_codec_gpu_read(cpu, plan.stored - 1, &j), -EBADMSG, "a short block");
	cpu[0] ^= 1;
	cr_assert_eq(kvcd_codec_gpu_read(cpu, plan.stored, &j), -EBADMSG, "a bad magic");
	kvcd_plan_fini(&plan);
	free(cpu);
	free(gpu);
	free(x);
}
