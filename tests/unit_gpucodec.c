/* unit_gpucodec.c - the GPU codec kernels' work (daemon/gpu/kern.h), walked over their grid
 * on the host: the bytes it writes must be the CPU codec's, for every codec, bit width, dtype
 * and ISA, and decoding must give the CPU decoder's bytes. What is left for a GPU to show is
 * that the device's arithmetic is the host's (tests/gpu_codec.c, make gpu-check). */
#include <math.h>

#include "t_gpucodec.h"

/* The kernels' two encoding phases, one item after another: unit by unit, as the grid's rows. */
static int grid_encode(const struct kvcd_plan *plan, const struct kvcg_job *j, const void *src,
		       uint8_t *dst)
{
	int err = 0;

	kvcd_codec_gpu_header(plan, dst);
	for (uint32_t u = 0; u < kvcg_units(j); u++)
		for (uint32_t k = 0; k < kvcg_enc1_items(j, u / j->heads % 2); k++) {
			int e = kvcg_enc_params(j, src, dst, u, k);

			err = err ? err : e;
		}
	if (err)
		return err;
	for (uint32_t u = 0; u < kvcg_units(j); u++)
		for (uint32_t k = 0; k < kvcg_enc2_items(j, u / j->heads % 2); k++)
			kvcg_enc_codes(j, src, dst, u, k);
	return 0;
}

static void grid_decode(const struct kvcg_job *j, const uint8_t *in, void *raw)
{
	for (uint32_t u = 0; u < kvcg_units(j); u++)
		for (uint32_t k = 0; k < kvcg_dec_items(j, u / j->heads % 2); k++)
			kvcg_dec_elem(j, in, raw, u, k);
}

/* Encode and decode @pol on @l at @pos both ways, at every ISA; the bytes must agree. */
static void same_bytes(const char *pol, struct kvcp_layout l, uint32_t pos)
{
	struct kvcd_policy p = P(pol);

	for (size_t di = 0; di < 3; di++) {
		l.dtype = t_dtypes[di];
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

Test(gpucodec, every_kind_of_block)
{
	for (size_t i = 0; i < sizeof(t_gpucases) / sizeof(t_gpucases[0]); i++)
		same_bytes(t_gpucases[i].pol, t_gpulayout(t_gpucases[i].wide, 0),
			   t_gpucases[i].pos);
}

Test(gpucodec, what_stays_on_the_cpu)
{
	static const char *cpu_only[] = { "int4:sink=4",	  "int4:outliers=2",
					  "int4:rotate=hadamard", "int4:params=u8",
					  "int4:sparse=1%",	  "kivi:rope=10000",
					  "none:minicache=1",	  "none" };
	struct kvcp_layout l = t_gpulayout(0, KVCP_F16);
	void *src = block(&l);
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
	struct kvcp_layout l = t_gpulayout(1, KVCP_F32);
	struct kvcd_policy p = P("int4");
	struct kvcd_plan plan;
	struct kvcg_job j;
	float *x;
	uint8_t *cpu, *gpu;

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
