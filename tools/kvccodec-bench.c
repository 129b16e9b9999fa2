/* kvccodec-bench - the block codecs in-process, without a daemon (links libkvccodec.a).
 *
 *   kvccodec-bench [codec] [--policy P] [--isa scalar|avx2|avx512|avx512vnni] [--layers 32]
 *                  [--heads 8] [--dim 128] [--tokens 256] [--iters N] [--json]
 *       Encode and decode one f16 block (default 32 x 8 x 128 x 256, 32 MiB) under each
 *       policy (default: int8, int4, int2, fp8, kivi) and each ISA this CPU has, against
 *       memcpy of the same bytes in the same run; compression ratio and relative error
 *       beside it.
 *   kvccodec-bench gpu [--policy P] [shape options] [--iters N] [--json]
 *       The GPU codec kernels on CUDA device 0 (int8, int4, fp8, kivi by default) on the
 *       same block: encode and decode GB/s against cuMemcpyDtoD of the block measured in the
 *       same run, pinned H2D and D2H copies beside them, the PCIe bytes a compressed
 *       demotion saves, and whether the GPU wrote the CPU codec's bytes. Exits 3 when there
 *       is no CUDA device.
 *   kvccodec-bench policies
 *       The policy grammar as Markdown, from the parser's own table (docs/policies.md).
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "codec.h"
#include "rt.h"
#include "kvc_version.h"
#include "timing.h"

struct codec_args {
	const char *policy;
	int isa; /* -1: every ISA this CPU has */
	unsigned layers, heads, dim, tokens;
	unsigned long iters;
};

/* One policy's line (or JSON object): @n bytes in, @e stored (and a learned= policy's @blen
 * bytes of basis, not counted), encode and decode GB/s against memcpy's @mc, the error. */
static void report(const char *canon, enum kvcd_isa isa, uint64_t n, uint64_t e, uint64_t blen,
		   double eg, double dg, double mc, struct kvcd_quality q, int json)
{
	if (json) {
		printf("{\"policy\": \"%s\", \"isa\": \"%s\", \"bytes_in\": %llu, "
		       "\"bytes_stored\": %llu, ",
		       canon, kvcd_isa_name(isa), (unsigned long long)n, (unsigned long long)e);
		if (blen)
			printf("\"basis_bytes\": %llu, ", (unsigned long long)blen);
		printf("\"ratio\": %.3f, \"encode_gbps\": %.3f, \"decode_gbps\": %.3f, "
		       "\"memcpy_gbps\": %.3f, \"encode_vs_memcpy\": %.3f, \"decode_vs_memcpy\": %.3f, "
		       "\"rel_frob\": %.6f, \"cosine\": %.6f}\n",
		       (double)n / e, eg, dg, mc, eg / mc, dg / mc, q.rel_frob, q.cosine);
		return;
	}
	printf("%-44s %-7s %6.2fx  encode %6.2f GB/s (%3.0f%%)  decode %6.2f GB/s (%3.0f%%)  "
	       "memcpy %6.2f  err %.4f",
	       canon, kvcd_isa_name(isa), (double)n / e, eg, 100 * eg / mc, dg, 100 * dg / mc, mc,
	       q.rel_frob);
	if (blen)
		printf(" (basis %llu bytes)", (unsigned long long)blen);
	printf("\n");
}

/* The rows of a sparse FETCH form that kept every token (@o) back in the engine's layout, f32,
 * into @x. */
static void dense_rows(const uint8_t *o, const struct kvcp_layout *l, float *x)
{
	size_t lh = (size_t)l->layers * l->kv_heads, t = l->tokens, d = l->head_dim;
	struct kvcp_sparse h;
	const uint16_t *rows;

	memcpy(&h, o, sizeof(h));
	rows = (const uint16_t *)(o + sizeof(h) + lh * 4 + (size_t)h.total * 8);
	for (size_t u = 0; u < lh; u++)
		for (int kv = 0; kv < 2; kv++)
			for (size_t i = 0; i < t; i++)
				kvcd_to_f32(KVCD_ISA_SCALAR, KVCP_F16,
					    rows + ((u * 2 + (size_t)kv) * t + i) * d,
					    x + ((((u / l->kv_heads) * 2 + (size_t)kv) * t + i) *
							 l->kv_heads +
						 u % l->kv_heads) *
							    d,
					    d);
}

/* A learned= policy: the basis learned from the block itself (every direction, engine weights
 * 1, no RoPE), plan and write timed as the encode, decode with the basis, into the sparse
 * form. */
static int bench_learned(const struct kvcd_policy *p, const char *canon, enum kvcd_isa isa,
			 const struct kvcp_layout *l, const void *raw, unsigned long iters,
			 double mc, int json)
{
	uint64_t n = kvcp_layout_bytes(l), blen = 0, t0, te = 0, td = 0, e = 0, out;
	const void *srcs[1] = { raw };
	struct kvcd_aux aux = { 0 };
	struct kvcd_plan plan;
	struct kvcp_layout back;
	size_t cnt = n / 2;
	float *x = malloc(cnt * 4), *y = malloc(cnt * 4);
	void *basis = NULL, *enc = NULL, *dec = NULL;
	int err = x && y ? 0 : -ENOMEM;

	if (!err)
		err = kvcd_basis_learn(isa, 1, l, srcs, 100, NULL, 1, &basis, &blen);
	if (!err) {
		kvcd_basis_seal(basis, 1);
		aux.basis = basis;
		aux.basis_len = blen;
	}
	for (unsigned long i = 0; i <= iters && !err; i++) { /* the first is the warm-up */
		t0 = now_ns();
		err = kvcd_codec_plan(isa, p, l, 256, raw, NULL, &aux, &plan);
		if (!err && !enc) {
			e = plan.stored;
			enc = malloc(e);
			err = enc ? 0 : -ENOMEM;
		}
		if (!err)
			err = kvcd_codec_write(isa, &plan, raw, NULL, &aux, enc);
		kvcd_plan_fini(&plan);
		te += i ? now_ns() - t0 : 0;
		out = err ? 0 : kvcd_codec_out_size(enc, e);
		if (!err && !dec)
			err = (dec = malloc(out)) ? 0 : -ENOMEM;
		t0 = now_ns();
		if (!err)
			err = kvcd_codec_decode_with(isa, enc, e, basis, blen, dec, out, &back);
		td += i ? now_ns() - t0 : 0;
	}
	if (err) {
		fprintf(stderr, "kvccodec-bench: codec '%s' failed: %s\n", canon, strerror(-err));
		err = 1;
		goto out;
	}
	kvcd_to_f32(KVCD_ISA_SCALAR, l->dtype, raw, x, cnt);
	dense_rows(dec, l, y);
	report(canon, isa, n, e, blen, (double)n * iters / te, (double)n * iters / td, mc,
	       kvcd_quality_of(x, y, cnt), json);
out:
	free(basis);
	free(enc);
	free(dec);
	free(x);
	free(y);
	return err;
}

static int bench_one_codec(const char *pol, enum kvcd_isa isa, const struct kvcp_layout *l,
			   const void *raw, unsigned long iters, double mc, int json)
{
	struct kvcd_policy p;
	char why[128], canon[KVCD_POLICY_STR];
	uint64_t n = kvcp_layout_bytes(l), e, t0, te = 0, td = 0;
	void *enc = NULL, *dec = aligned_alloc(64, (n + 63) / 64 * 64); /* as staging is */
	struct kvcp_layout back;
	size_t cnt = n / 2;
	float *x = malloc(cnt * 4), *y = malloc(cnt * 4);
	int err = 0;

	if (!dec || !x || !y) {
		err = -ENOMEM;
		goto out;
	}
	if (kvcd_policy_parse(pol, &p, why, sizeof(why))) {
		fprintf(stderr, "kvccodec-bench: policy '%s': %s\n", pol, why);
		err = 2;
		goto out;
	}
	kvcd_policy_format(&p, canon, sizeof(canon));
	if (kvcd_policy_learned(&p)) {
		err = bench_learned(&p, canon, isa, l, raw, iters, mc, json);
		goto out;
	}
	e = kvcd_codec_size(&p, l, false, 256);
	if (!e) {
		fprintf(stderr, "kvccodec-bench: policy '%s' does not fit the layout\n", pol);
		err = 2;
		goto out;
	}
	enc = malloc(e);
	if (!enc) {
		err = -ENOMEM;
		goto out;
	}
	/* warm up once, then time encode and decode separately */
	if (kvcd_codec_encode(isa, &p, l, 256, raw, NULL, enc) ||
	    kvcd_codec_decode(isa, enc, e, dec, n, &back))
		err = 1;
	for (unsigned long i = 0; i < iters && !err; i++) {
		t0 = now_ns();
		err |= kvcd_codec_encode(isa, &p, l, 256, raw, NULL, enc);
		te += now_ns() - t0;
		t0 = now_ns();
		err |= kvcd_codec_decode(isa, enc, e, dec, n, &back);
		td += now_ns() - t0;
	}
	if (err) {
		fprintf(stderr, "kvccodec-bench: codec '%s' failed\n", pol);
		err = 1;
		goto out;
	}
	kvcd_to_f32(KVCD_ISA_SCALAR, l->dtype, raw, x, cnt);
	kvcd_to_f32(KVCD_ISA_SCALAR, l->dtype, dec, y, cnt);
	report(canon, isa, n, e, 0, (double)n * iters / te, (double)n * iters / td, mc,
	       kvcd_quality_of(x, y, cnt), json);
out:
	free(enc);
	free(dec);
	free(x);
	free(y);
	return err < 0 ? 1 : err;
}

/* The block shape the command line asked for, in f16. */
static struct kvcp_layout args_layout(const struct codec_args *a)
{
	struct kvcp_layout l = { .dtype = KVCP_F16,
				 .layers = (uint16_t)a->layers,
				 .kv_heads = (uint16_t)a->heads,
				 .head_dim = (uint16_t)a->dim,
				 .tokens = a->tokens };

	return l;
}

/* @n bytes of f16: N(0,1) by Box-Muller, with every @dim-th channel from 7 on larger. */
static void fill_block(uint16_t *raw, uint64_t n, unsigned dim)
{
	uint64_t seed = 12345;

	for (size_t i = 0; i < n / 2; i++) {
		double u1, u2;

		seed = seed * 6364136223846793005ull + 1442695040888963407ull;
		u1 = ((seed >> 11) + 1) * 0x1p-53;
		seed = seed * 6364136223846793005ull + 1442695040888963407ull;
		u2 = (seed >> 11) * 0x1p-53;
		raw[i] = kvcd_f32_to_f16((float)(sqrt(-2 * log(u1)) * cos(6.283185307179586 * u2) *
						 (i % dim == 7 ? 8 : 1)));
	}
}

static int bench_codec(const struct codec_args *a, int json)
{
	static const char *const dflt[] = {
		"int8", "int4", "int2", "fp8", "kivi:kbits=4,vbits=4,group=32", NULL
	};
	const char *one[] = { a->policy, NULL };
	const char *const *pols = a->policy ? one : dflt;
	struct kvcp_layout l = args_layout(a);
	uint64_t n = kvcp_layout_bytes(&l);
	uint16_t *raw;
	double mc;
	int err = 0;

	if (!n || a->layers > 65535 || a->heads > 65535 || a->dim > 65535) {
		fprintf(stderr, "kvccodec-bench: bad block shape\n");
		return 2;
	}
	raw = malloc(n);
	if (!raw)
		return 1;
	fill_block(raw, n, a->dim);
	mc = memcpy_gbps(n, a->iters * 4);
	for (int p = 0; pols[p] && !err; p++)
		for (int isa = a->isa >= 0			   ? a->isa
			       : kvcd_isa_best() < KVCD_ISA_AVX512 ? (int)kvcd_isa_best()
								   : KVCD_ISA_AVX512;
		     isa >= 0 && !err; isa--) {
			err = bench_one_codec(pols[p], (enum kvcd_isa)isa, &l, raw, a->iters, mc,
					      json);
			if (a->isa >= 0)
				break;
		}
	free(raw);
	return err;
}

/* ---- kvccodec-bench gpu ----------------------------------------------------------------- */

/* Seconds per call of @what over @iters calls, the device drained before and after. */
#define TIME_GPU(rt, iters, secs, what)                                    \
	do {                                                               \
		uint64_t t0_;                                              \
		(rt)->cu.ctx_sync();                                       \
		t0_ = now_ns();                                            \
		for (unsigned long i_ = 0; i_ < (iters); i_++)             \
			what;                                              \
		(rt)->cu.ctx_sync();                                       \
		(secs) = (double)(now_ns() - t0_) / 1e9 / (double)(iters); \
	} while (0)

/* One policy on device memory: encode and decode timed, and the GPU's bytes compared with the
 * CPU codec's once. */
static int bench_gpu_one(struct kvcg_rt *rt, const char *pol, const struct kvcp_layout *l,
			 const void *raw, CUdeviceptr draw, CUdeviceptr dtmp, CUdeviceptr derr,
			 unsigned long iters, const double ref[3], int json)
{
	struct kvcd_policy p;
	struct kvcd_plan plan;
	struct kvcg_job j;
	char why[128], canon[KVCD_POLICY_STR];
	uint64_t n = kvcp_layout_bytes(l);
	uint8_t *cpu = NULL, *gpu = NULL;
	CUdeviceptr denc = 0;
	double te = 0, td = 0;
	int kerr = 0, same = 0, ret = 1;

	if (kvcd_policy_parse(pol, &p, why, sizeof(why))) {
		fprintf(stderr, "kvccodec-bench: policy '%s': %s\n", pol, why);
		return 2;
	}
	kvcd_policy_format(&p, canon, sizeof(canon));
	if (kvcd_codec_plan(KVCD_ISA_SCALAR, &p, l, 256, raw, NULL, NULL, &plan) ||
	    kvcd_codec_gpu_plan(&plan, &j)) {
		fprintf(stderr, "kvccodec-bench: '%s' is not a block the GPU codecs take\n", canon);
		kvcd_plan_fini(&plan);
		return 2;
	}
	cpu = malloc(plan.stored);
	gpu = malloc(plan.stored);
	if (!cpu || !gpu || rt->cu.mem_alloc(&denc, plan.stored) ||
	    kvcd_codec_write(kvcd_isa_best(), &plan, raw, NULL, NULL, cpu))
		goto out;
	if (kvcg_encode(&rt->cu, &rt->d, &j, draw, denc, derr, NULL) || rt->cu.ctx_sync() ||
	    rt->cu.dtoh(&kerr, derr, sizeof(kerr)) || kerr || rt->cu.dtoh(gpu, denc, plan.stored))
		goto out;
	kvcd_codec_gpu_header(&plan, gpu);
	same = !memcmp(cpu, gpu, plan.stored);
	TIME_GPU(rt, iters, te, kvcg_encode(&rt->cu, &rt->d, &j, draw, denc, derr, NULL));
	TIME_GPU(rt, iters, td, kvcg_decode(&rt->cu, &rt->d, &j, denc, dtmp, NULL));
	double eg = (double)n / te / 1e9, dg = (double)n / td / 1e9;

	if (json)
		printf("{\"policy\": \"%s\", \"device\": \"%s\", \"bytes_in\": %llu, "
		       "\"bytes_stored\": %llu, \"ratio\": %.3f, \"encode_gbps\": %.2f, "
		       "\"decode_gbps\": %.2f, \"d2d_gbps\": %.2f, \"h2d_gbps\": %.2f, "
		       "\"d2h_gbps\": %.2f, \"encode_vs_d2d\": %.3f, \"decode_vs_d2d\": %.3f, "
		       "\"pcie_bytes_saved\": %llu, \"same_bytes_as_cpu\": %s}\n",
		       canon, rt->d.name, (unsigned long long)n, (unsigned long long)plan.stored,
		       (double)n / plan.stored, eg, dg, ref[0], ref[1], ref[2], eg / ref[0],
		       dg / ref[0], (unsigned long long)(n - plan.stored), same ? "true" : "false");
	else
		printf("%-36s %6.2fx  encode %7.1f GB/s (%3.0f%% of D2D)  decode %7.1f GB/s "
		       "(%3.0f%%)  PCIe bytes saved %4.1f%%  %s\n",
		       canon, (double)n / plan.stored, eg, 100 * eg / ref[0], dg, 100 * dg / ref[0],
		       100.0 * (double)(n - plan.stored) / (double)n,
		       same ? "same bytes as the CPU" : "BYTES DIFFER FROM THE CPU");
	ret = same ? 0 : 1;
out:
	if (ret)
		fprintf(stderr, "kvccodec-bench: '%s' failed on the GPU (%s, kernel error %d)\n",
			canon, "bytes differ from the CPU's or a CUDA call failed", kerr);
	if (denc)
		rt->cu.mem_free(denc);
	kvcd_plan_fini(&plan);
	free(cpu);
	free(gpu);
	return ret;
}

/* The GPU codec kernels on device 0 against what the same device copies in the same run:
 * cuMemcpyDtoD of the raw block, and H2D / D2H from pinned memory. Exit 3 without a device. */
static int bench_gpu(const struct codec_args *a, int json)
{
	static const char *const dflt[] = { "int8", "int4", "fp8", "kivi:kbits=4,vbits=4,group=32",
					    NULL };
	const char *one[] = { a->policy, NULL };
	const char *const *pols = a->policy ? one : dflt;
	struct kvcp_layout l = args_layout(a);
	uint64_t n = kvcp_layout_bytes(&l);
	unsigned long iters = a->iters * 4;
	struct kvcg_rt rt;
	CUdeviceptr draw = 0, dtmp = 0, derr = 0;
	void *host = NULL;
	double ref[3], s;
	char why[160];
	int err;

	if (!n) {
		fprintf(stderr, "kvccodec-bench: bad block shape\n");
		return 2;
	}
	err = kvcg_rt_open(&rt, 0, why, sizeof(why));
	if (err) {
		fprintf(stderr, "kvccodec-bench gpu: %s%s\n",
			err == -ENOENT || err == -ENODEV ? "skipped: no CUDA device: " : "", why);
		kvcg_rt_close(&rt);
		return err == -ENOENT || err == -ENODEV ? 3 : 1;
	}
	err = 1;
	if (rt.cu.host_alloc(&host, n) || rt.cu.mem_alloc(&draw, n) || rt.cu.mem_alloc(&dtmp, n) ||
	    rt.cu.mem_alloc(&derr, sizeof(int)))
		goto out;
	fill_block(host, n, a->dim);
	if (rt.cu.htod(draw, host, n) || rt.cu.dtod(dtmp, draw, n))
		goto out;
	TIME_GPU(&rt, iters, s, rt.cu.dtod(dtmp, draw, n));
	ref[0] = (double)n / s / 1e9;
	TIME_GPU(&rt, iters, s, rt.cu.htod(dtmp, host, n));
	ref[1] = (double)n / s / 1e9;
	TIME_GPU(&rt, iters, s, rt.cu.dtoh(host, dtmp, n));
	ref[2] = (double)n / s / 1e9;
	fill_block(host, n, a->dim); /* the D2H copies wrote the block back: the same bytes */
	if (!json)
		printf("%s: %llu-byte f16 block; D2D %.1f GB/s, H2D %.1f GB/s, D2H %.1f GB/s "
		       "(pinned)\n",
		       rt.d.name, (unsigned long long)n, ref[0], ref[1], ref[2]);
	err = 0;
	for (int p = 0; pols[p] && !err; p++)
		err = bench_gpu_one(&rt, pols[p], &l, host, draw, dtmp, derr, iters, ref, json);
out:
	if (err == 1 && !draw)
		fprintf(stderr, "kvccodec-bench gpu: cannot allocate %llu bytes on %s\n",
			(unsigned long long)n, rt.d.name);
	if (host)
		rt.cu.host_free(host);
	if (draw)
		rt.cu.mem_free(draw);
	if (dtmp)
		rt.cu.mem_free(dtmp);
	if (derr)
		rt.cu.mem_free(derr);
	kvcg_rt_close(&rt);
	return err;
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: kvccodec-bench [codec] [--policy P] [--isa scalar|avx2|avx512|avx512vnni]\n"
		"                      [--layers N] [--heads N] [--dim N] [--tokens N] [--iters N]\n"
		"                      [--json]\n"
		"       kvccodec-bench gpu [--policy P] [shape options] [--iters N] [--json]\n"
		"       kvccodec-bench policies\n");
}

static int parse_isa(const char *s)
{
	for (int i = KVCD_ISA_SCALAR; i <= KVCD_ISA_AVX512_VNNI; i++)
		if (!strcmp(s, kvcd_isa_name((enum kvcd_isa)i)))
			return i <= (int)kvcd_isa_best() ? i : -2;
	return -3;
}

static int whole(const char *s, unsigned long max, unsigned *out)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno || end == s || *end || *s == '-' || !v || v > max)
		return -EINVAL;
	*out = (unsigned)v;
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "policy", required_argument, 0, 'P' }, { "isa", required_argument, 0, 'I' },
		{ "layers", required_argument, 0, 'L' }, { "heads", required_argument, 0, 'H' },
		{ "dim", required_argument, 0, 'D' },	 { "tokens", required_argument, 0, 'T' },
		{ "iters", required_argument, 0, 'i' },	 { "json", no_argument, 0, 'j' },
		{ "help", no_argument, 0, 'h' },	 { 0, 0, 0, 0 }
	};

	for (int i = 1; i < argc; i++)
		if (!strcmp(argv[i], "--version")) {
			printf("kvccodec-bench %s\n", KVC_VERSION_STRING);
			return 0;
		}
	struct codec_args ca = { NULL, -1, 32, 8, 128, 256, 5 };
	const char *cmd = "codec";
	unsigned iters = 5;
	int o, json = 0, bad = 0;

	while ((o = getopt_long(argc, argv, "P:I:L:H:D:T:i:jh", opts, NULL)) != -1) {
		switch (o) {
		case 'P': ca.policy = optarg; break;
		case 'I':
			ca.isa = parse_isa(optarg);
			if (ca.isa < 0) {
				fprintf(stderr, "kvccodec-bench: --isa %s: %s (best here: %s)\n",
					optarg, ca.isa == -2 ? "not available here" : "unknown",
					kvcd_isa_name(kvcd_isa_best()));
				return 2;
			}
			break;
		case 'L': bad |= whole(optarg, 65535, &ca.layers); break;
		case 'H': bad |= whole(optarg, 65535, &ca.heads); break;
		case 'D': bad |= whole(optarg, 65535, &ca.dim); break;
		case 'T': bad |= whole(optarg, 1u << 20, &ca.tokens); break;
		case 'i': bad |= whole(optarg, 1000000, &iters); break;
		case 'j': json = 1; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind < argc)
		cmd = argv[optind++];
	if (bad || optind < argc) {
		usage(stderr);
		return 2;
	}
	ca.iters = iters;
	if (!strcmp(cmd, "policies")) {
		kvcd_policy_doc(stdout);
		return 0;
	}
	if (!strcmp(cmd, "codec"))
		return bench_codec(&ca, json);
	if (!strcmp(cmd, "gpu"))
		return bench_gpu(&ca, json);
	fprintf(stderr, "kvccodec-bench: unknown command '%s'\n", cmd);
	usage(stderr);
	return 2;
}
