/* gpu_codec.c - the GPU codec kernels on a device: for every kind of block they take, at every
 * dtype and every CPU ISA, the GPU encodes to the CPU codec's bytes and decodes the CPU's
 * encoding to the CPU decoder's bytes; with two devices, what one encodes the other decodes.
 * Without a CUDA device every test says so and is skipped. */
#include "t_gpucodec.h"
#include "rt.h"

static struct kvcg_rt rt;
static char why[160];

/* Device @ordinal's runtime, or skip the test when there is none to be had. */
static struct kvcg_rt *device(struct kvcg_rt *r, int ordinal)
{
	int err = kvcg_rt_open(r, ordinal, why, sizeof(why));

	if (err == -ENOENT || err == -ENODEV) {
		kvcg_rt_close(r);
		cr_skip_test("skipped: no CUDA device (%s)", why);
	}
	cr_assert_eq(err, 0, "device %d: %s", ordinal, why);
	return r;
}

static void teardown(void)
{
	if (rt.lib)
		kvcg_rt_close(&rt);
}

#define CU(x) cr_assert_eq((x), 0, "%s", #x)

/* @j's block encoded on @r from @raw (host): the encoded bytes into @out (j->bytes), with the
 * header from @plan; returns the kernels' error. */
static int gpu_encode(struct kvcg_rt *r, const struct kvcd_plan *plan, const struct kvcg_job *j,
		      const void *raw, uint8_t *out)
{
	CUdeviceptr draw, denc, derr;
	int err = 0;

	CU(kvcg_dev_bind(&r->cu, &r->d));
	CU(r->cu.mem_alloc(&draw, j->raw_bytes));
	CU(r->cu.mem_alloc(&denc, j->bytes));
	CU(r->cu.mem_alloc(&derr, sizeof(int)));
	CU(r->cu.htod(draw, raw, j->raw_bytes));
	CU(r->cu.memset8(denc, 0xa5, j->bytes)); /* every byte must be written */
	CU(kvcg_encode(&r->cu, &r->d, j, draw, denc, derr, NULL));
	CU(r->cu.ctx_sync());
	CU(r->cu.dtoh(&err, derr, sizeof(int)));
	CU(r->cu.dtoh(out, denc, j->bytes));
	kvcd_codec_gpu_header(plan, out);
	r->cu.mem_free(draw);
	r->cu.mem_free(denc);
	r->cu.mem_free(derr);
	return err;
}

static void gpu_decode(struct kvcg_rt *r, const struct kvcg_job *j, const uint8_t *enc, void *raw)
{
	CUdeviceptr draw, denc;

	CU(kvcg_dev_bind(&r->cu, &r->d));
	CU(r->cu.mem_alloc(&draw, j->raw_bytes));
	CU(r->cu.mem_alloc(&denc, j->bytes));
	CU(r->cu.htod(denc, enc, j->bytes));
	CU(r->cu.memset8(draw, 0x5a, j->raw_bytes));
	CU(kvcg_decode(&r->cu, &r->d, j, denc, draw, NULL));
	CU(r->cu.ctx_sync());
	CU(r->cu.dtoh(raw, draw, j->raw_bytes));
	r->cu.mem_free(draw);
	r->cu.mem_free(denc);
}

/* Encode on @enc_dev and decode on @dec_dev, against the CPU at every ISA. */
static void check_case(struct kvcg_rt *enc_dev, struct kvcg_rt *dec_dev, const struct t_gpucase *c)
{
	struct kvcd_policy p = P(c->pol);

	for (size_t di = 0; di < sizeof(t_dtypes); di++) {
		struct kvcp_layout l = t_gpulayout(c->wide, t_dtypes[di]), back;
		uint64_t raw = kvcp_layout_bytes(&l);
		void *src = block(&l);

		for (int isa = KVCD_ISA_SCALAR; isa <= (int)kvcd_isa_best(); isa++) {
			struct kvcd_plan plan;
			struct kvcg_job j;
			uint8_t *cpu, *gpu;
			void *dc = malloc(raw), *dg = malloc(raw);

			cr_assert_eq(kvcd_codec_plan(isa, &p, &l, c->pos, src, NULL, NULL, &plan),
				     0);
			cr_assert_eq(kvcd_codec_gpu_plan(&plan, &j), 0, "%s", c->pol);
			cpu = malloc(plan.stored);
			gpu = malloc(plan.stored);
			cr_assert_eq(kvcd_codec_write(isa, &plan, src, NULL, NULL, cpu), 0);
			cr_assert_eq(gpu_encode(enc_dev, &plan, &j, src, gpu), 0, "%s", c->pol);
			for (uint64_t b = 0; b < plan.stored; b++)
				cr_assert_eq(
					gpu[b], cpu[b],
					"%s dtype %u isa %d: byte %llu of %llu: GPU %#x, CPU %#x",
					c->pol, l.dtype, isa, (unsigned long long)b,
					(unsigned long long)plan.stored, gpu[b], cpu[b]);
			cr_assert_eq(kvcd_codec_decode(isa, cpu, plan.stored, dc, raw, &back), 0);
			gpu_decode(dec_dev, &j, cpu, dg);
			cr_assert_eq(memcmp(dc, dg, raw), 0, "%s dtype %u isa %d: decoded bytes",
				     c->pol, l.dtype, isa);
			kvcd_plan_fini(&plan);
			free(cpu);
			free(gpu);
			free(dc);
			free(dg);
		}
		free(src);
	}
}

Test(gpu_codec, same_bytes_as_the_cpu, .fini = teardown)
{
	struct kvcg_rt *r = device(&rt, 0);

	for (size_t i = 0; i < sizeof(t_gpucases) / sizeof(t_gpucases[0]); i++)
		check_case(r, r, &t_gpucases[i]);
}

Test(gpu_codec, bad_values_give_the_cpu_errors, .fini = teardown)
{
	struct kvcg_rt *r = device(&rt, 0);
	struct kvcp_layout l = t_gpulayout(1, KVCP_F32);
	struct kvcd_policy p = P("int4");
	struct kvcd_plan plan;
	struct kvcg_job j;
	float *x = block(&l);
	uint8_t *out;

	cr_assert_eq(kvcd_codec_plan(KVCD_ISA_SCALAR, &p, &l, 0, x, NULL, NULL, &plan), 0);
	cr_assert_eq(kvcd_codec_gpu_plan(&plan, &j), 0);
	out = malloc(plan.stored);
	x[77] = NAN;
	cr_assert_eq(gpu_encode(r, &plan, &j, x, out), -EINVAL);
	x[77] = -1e6f;
	cr_assert_eq(gpu_encode(r, &plan, &j, x, out), -ERANGE);
	kvcd_plan_fini(&plan);
	free(out);
	free(x);
}

Test(gpu_codec, decode_on_another_device, .fini = teardown)
{
	static struct kvcg_rt second;
	struct kvcg_rt *r = device(&rt, 0);
	int n = 0;

	CU(r->cu.count(&n));
	if (n < 2)
		cr_skip_test("skipped: one CUDA device, nothing to decode across");
	device(&second, 1);
	for (size_t i = 0; i < sizeof(t_gpucases) / sizeof(t_gpucases[0]); i++)
		check_case(r, &second, &t_gpucases[i]);
	kvcg_rt_close(&second);
}
