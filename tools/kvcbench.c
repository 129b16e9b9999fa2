/* kvcbench - measure kvcd against the physical reference in the same run.
 *
 *   kvcbench [--socket PATH] nop [--count N] [--sleep] [--json]
 *       NOP round trips; by default the client busy-polls (--sleep: it sleeps in futex
 *       after the usual spin). p50/p99/p99.9 in microseconds.
 *   kvcbench [--socket PATH] throughput [--block-size 2M] [--procs N] [--iters N] [--json]
 *       Each process STOREs a block, FETCHes it back and DELETEs it, N times; store and
 *       fetch bandwidth against memcpy of the same bytes between two buffers of the same
 *       size, measured in the same run.
 *   kvcbench codec [--policy P] [--isa scalar|avx2|avx512] [--layers 32] [--heads 8]
 *                  [--dim 128] [--tokens 256] [--iters N] [--json]
 *       In-process, no daemon: encode and decode one f16 block (default 32 x 8 x 128 x 256,
 *       32 MiB) under each policy (default: int8, int4, int2, fp8, kivi) and each ISA this
 *       CPU has, against memcpy of the same bytes in the same run; compression ratio and
 *       relative error beside it.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <kvc.h>

#include "codec.h"

static const char *g_sock;

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static int parse_size(const char *s, size_t *out)
{
	char *end;
	unsigned long long v = strtoull(s, &end, 10);

	switch (*end) {
	case 'k': case 'K': v <<= 10; end++; break;
	case 'm': case 'M': v <<= 20; end++; break;
	case 'g': case 'G': v <<= 30; end++; break;
	}
	if (end == s || (*end && strcmp(end, "iB") && strcmp(end, "B")))
		return -EINVAL;
	*out = (size_t)v;
	return 0;
}

static kvc_client *attach(size_t staging, unsigned flags)
{
	struct kvc_attach_opts o;
	kvc_client *c;
	int err;

	kvc_attach_opts_init(&o);
	o.socket = g_sock;
	o.ns = "kvcbench";
	o.staging_size = staging;
	o.flags = flags;
	err = kvc_attach(&o, &c);
	if (err) {
		fprintf(stderr, "kvcbench: attach: %s\n", kvc_strerror(err));
		exit(1);
	}
	return c;
}

static int bench_nop(unsigned long count, int sleep_mode, int json)
{
	kvc_client *c = attach(4096, sleep_mode ? 0 : KVC_ATTACH_BUSY_POLL);
	uint64_t *lat = malloc(count * sizeof(*lat)), sum = 0;

	if (!lat)
		return 1;
	for (unsigned long i = 0; i < count / 10 + 100; i++) /* warm-up */
		kvc_nop(c);
	for (unsigned long i = 0; i < count; i++) {
		uint64_t t0 = now_ns();
		int err = kvc_nop(c);

		lat[i] = now_ns() - t0;
		sum += lat[i];
		if (err) {
			fprintf(stderr, "kvcbench: nop: %s\n", kvc_strerror(err));
			return 1;
		}
		if (sleep_mode)
			usleep(0); /* let the worker go idle now and then: measures the wake path */
	}
	qsort(lat, count, sizeof(*lat), cmp_u64);
	double p50 = lat[count / 2] / 1e3, p99 = lat[count * 99 / 100] / 1e3,
	       p999 = lat[count * 999 / 1000] / 1e3, mean = (double)sum / count / 1e3;

	if (json)
		printf("{\"mode\": \"%s\", \"count\": %lu, \"p50_us\": %.3f, \"p99_us\": %.3f, "
		       "\"p999_us\": %.3f, \"mean_us\": %.3f, \"max_us\": %.3f}\n",
		       sleep_mode ? "sleep" : "busy-poll", count, p50, p99, p999, mean,
		       lat[count - 1] / 1e3);
	else
		printf("nop %s: %lu round trips, p50 %.2f us, p99 %.2f us, p99.9 %.2f us, mean %.2f us\n",
		       sleep_mode ? "sleep" : "busy-poll", count, p50, p99, p999, mean);
	free(lat);
	kvc_detach(c);
	return 0;
}

struct tp_result {
	uint64_t store_ns, fetch_ns, bytes;
	int err;
};

static void tp_worker(size_t bs, unsigned long iters, unsigned id, struct tp_result *r)
{
	kvc_client *c = attach(2 * bs, KVC_ATTACH_BUSY_POLL);
	size_t ssz;
	unsigned char *stg = kvc_staging(c, &ssz);
	struct kvc_layout l = { .dtype = KVC_F16, .layers = 1, .kv_heads = 1, .head_dim = 64 };
	struct kvc_layout got;

	l.tokens = (uint32_t)(bs / (2 * 2 * 64));
	memset(r, 0, sizeof(*r));
	for (size_t i = 0; i < bs; i++)
		stg[i] = (unsigned char)(i * 131 + id);
	for (unsigned long i = 0; i < iters && !r->err; i++) {
		struct kvc_key k = { id + 1, i + 1 };
		uint64_t t0 = now_ns(), t1, t2;

		r->err = kvc_store(c, &k, &l, 0);
		t1 = now_ns();
		if (!r->err)
			r->err = kvc_fetch(c, &k, bs, bs, &got);
		t2 = now_ns();
		if (!r->err)
			r->err = kvc_delete(c, &k);
		r->store_ns += t1 - t0;
		r->fetch_ns += t2 - t1;
		r->bytes += bs;
	}
	if (!r->err && memcmp(stg, stg + bs, bs))
		r->err = -EIO;
	kvc_detach(c);
}

static double memcpy_gbps(size_t bs, unsigned long iters)
{
	unsigned char *a = malloc(bs), *b = malloc(bs);
	uint64_t t0, t;

	memset(a, 1, bs);
	memset(b, 2, bs);
	for (int i = 0; i < 3; i++)
		memcpy(b, a, bs);
	t0 = now_ns();
	for (unsigned long i = 0; i < iters; i++) {
		memcpy(b, a, bs);
		__asm__ volatile("" : : "r"(b) : "memory");
	}
	t = now_ns() - t0;
	free(a);
	free(b);
	return (double)bs * iters / t;
}

static int bench_throughput(size_t bs, unsigned procs, unsigned long iters, int json)
{
	struct tp_result *res = mmap(NULL, procs * sizeof(*res), PROT_READ | PROT_WRITE,
				     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	uint64_t store = 0, fetch = 0, bytes = 0, t0, wall;
	double mc, sg, fg, both;
	int err = 0;

	if (bs < 256 || bs % 256 || res == MAP_FAILED) {
		fprintf(stderr, "kvcbench: block size must be a multiple of 256 bytes\n");
		return 2;
	}
	mc = memcpy_gbps(bs, iters);
	t0 = now_ns();
	for (unsigned p = 0; p < procs; p++)
		if (fork() == 0) {
			tp_worker(bs, iters, p, &res[p]);
			_exit(0);
		}
	for (unsigned p = 0; p < procs; p++) {
		int st;

		wait(&st);
		if (!WIFEXITED(st) || WEXITSTATUS(st))
			err = -ECHILD;
	}
	wall = now_ns() - t0;
	for (unsigned p = 0; p < procs; p++) {
		store += res[p].store_ns;
		fetch += res[p].fetch_ns;
		bytes += res[p].bytes;
		if (res[p].err)
			err = res[p].err;
	}
	if (!err && (!store || !fetch))
		err = -ECHILD;
	if (err) {
		fprintf(stderr, "kvcbench: throughput: %s\n", kvc_strerror(err));
		return 1;
	}
	/* per-process bandwidth summed over processes */
	sg = (double)bytes / ((double)store / procs);
	fg = (double)bytes / ((double)fetch / procs);
	both = 2.0 * bytes / ((double)(store + fetch) / procs);
	if (json)
		printf("{\"block_size\": %zu, \"procs\": %u, \"iters\": %lu, \"store_gbps\": %.3f, "
		       "\"fetch_gbps\": %.3f, \"store_fetch_gbps\": %.3f, \"memcpy_gbps\": %.3f, "
		       "\"ratio_vs_memcpy\": %.3f, \"wall_s\": %.3f}\n", bs, procs, iters, sg, fg, both,
		       mc, both / mc, wall / 1e9);
	else
		printf("throughput %zu B x %lu x %u procs: store %.2f GB/s, fetch %.2f GB/s, "
		       "store+fetch %.2f GB/s, memcpy %.2f GB/s (%.0f%%)\n", bs, iters, procs, sg, fg,
		       both, mc, 100 * both / mc);
	munmap(res, procs * sizeof(*res));
	return 0;
}

/* ---- codec ---------------------------------------------------------------------------------- */

struct codec_args {
	const char *policy;
	int isa;			/* -1: every ISA this CPU has */
	unsigned layers, heads, dim, tokens;
	unsigned long iters;
};

static int bench_one_codec(const char *pol, enum kvcd_isa isa, const struct kvcp_layout *l,
			   const void *raw, unsigned long iters, double mc, int json)
{
	struct kvcd_policy p;
	char why[128], canon[KVCD_POLICY_STR];
	uint64_t n = kvcp_layout_bytes(l), e, t0, te = 0, td = 0;
	void *enc, *dec = malloc(n);
	struct kvcp_layout back;
	size_t cnt = n / 2;
	float *x = malloc(cnt * 4), *y = malloc(cnt * 4);
	int err = 0;

	if (kvcd_policy_parse(pol, &p, why, sizeof(why))) {
		fprintf(stderr, "kvcbench: policy '%s': %s\n", pol, why);
		return 2;
	}
	kvcd_policy_format(&p, canon, sizeof(canon));
	e = kvcd_codec_size(&p, l, false, 256);
	if (!e) {
		fprintf(stderr, "kvcbench: policy '%s' does not fit the layout\n", pol);
		return 2;
	}
	enc = malloc(e);
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
		fprintf(stderr, "kvcbench: codec '%s' failed\n", pol);
		return 1;
	}
	kvcd_to_f32(KVCD_ISA_SCALAR, l->dtype, raw, x, cnt);
	kvcd_to_f32(KVCD_ISA_SCALAR, l->dtype, dec, y, cnt);
	struct kvcd_quality q = kvcd_quality_of(x, y, cnt);
	double eg = (double)n * iters / te, dg = (double)n * iters / td;

	if (json)
		printf("{\"policy\": \"%s\", \"isa\": \"%s\", \"bytes_in\": %llu, "
		       "\"bytes_stored\": %llu, \"ratio\": %.3f, \"encode_gbps\": %.3f, "
		       "\"decode_gbps\": %.3f, \"memcpy_gbps\": %.3f, \"encode_vs_memcpy\": %.3f, "
		       "\"decode_vs_memcpy\": %.3f, \"rel_frob\": %.6f, \"cosine\": %.6f}\n", canon,
		       kvcd_isa_name(isa), (unsigned long long)n, (unsigned long long)e,
		       (double)n / e, eg, dg, mc, eg / mc, dg / mc, q.rel_frob, q.cosine);
	else
		printf("%-44s %-7s %6.2fx  encode %6.2f GB/s (%3.0f%%)  decode %6.2f GB/s (%3.0f%%)  "
		       "memcpy %6.2f  err %.4f\n", canon, kvcd_isa_name(isa), (double)n / e, eg,
		       100 * eg / mc, dg, 100 * dg / mc, mc, q.rel_frob);
	free(enc);
	free(dec);
	free(x);
	free(y);
	return 0;
}

static int bench_codec(const struct codec_args *a, int json)
{
	static const char *const dflt[] = { "int8", "int4", "int2", "fp8",
					    "kivi:kbits=4,vbits=4,group=32", NULL };
	const char *one[] = { a->policy, NULL };
	const char *const *pols = a->policy ? one : dflt;
	struct kvcp_layout l = { .dtype = KVCP_F16, .layers = (uint16_t)a->layers,
				 .kv_heads = (uint16_t)a->heads, .head_dim = (uint16_t)a->dim,
				 .tokens = a->tokens };
	uint64_t n = kvcp_layout_bytes(&l), seed = 12345;
	uint16_t *raw;
	double mc;
	int err = 0;

	if (!n || a->layers > 65535 || a->heads > 65535 || a->dim > 65535) {
		fprintf(stderr, "kvcbench: bad block shape\n");
		return 2;
	}
	raw = malloc(n);
	for (size_t i = 0; i < n / 2; i++) { /* N(0,1) by Box-Muller; a few larger channels */
		double u1, u2;

		seed = seed * 6364136223846793005ull + 1442695040888963407ull;
		u1 = ((seed >> 11) + 1) * 0x1p-53;
		seed = seed * 6364136223846793005ull + 1442695040888963407ull;
		u2 = (seed >> 11) * 0x1p-53;
		raw[i] = kvcd_f32_to_f16((float)(sqrt(-2 * log(u1)) * cos(6.283185307179586 * u2) *
						 (i % a->dim == 7 ? 8 : 1)));
	}
	mc = memcpy_gbps(n, a->iters * 4);
	for (int p = 0; pols[p] && !err; p++)
		for (int isa = a->isa < 0 ? (int)kvcd_isa_best() : a->isa; isa >= 0 && !err; isa--) {
			err = bench_one_codec(pols[p], (enum kvcd_isa)isa, &l, raw, a->iters, mc, json);
			if (a->isa >= 0)
				break;
		}
	free(raw);
	return err;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: kvcbench [--socket PATH] nop [--count N] [--sleep] [--json]\n"
		   "       kvcbench [--socket PATH] throughput [--block-size SIZE] [--procs N]\n"
		   "                [--iters N] [--json]\n"
		   "       kvcbench codec [--policy P] [--isa scalar|avx2|avx512] [--layers N]\n"
		   "                [--heads N] [--dim N] [--tokens N] [--iters N] [--json]\n");
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "socket", required_argument, 0, 's' }, { "count", required_argument, 0, 'c' },
		{ "sleep", no_argument, 0, 'S' }, { "json", no_argument, 0, 'j' },
		{ "block-size", required_argument, 0, 'b' }, { "procs", required_argument, 0, 'p' },
		{ "iters", required_argument, 0, 'i' }, { "help", no_argument, 0, 'h' },
		{ "policy", required_argument, 0, 'P' }, { "isa", required_argument, 0, 'I' },
		{ "layers", required_argument, 0, 'L' }, { "heads", required_argument, 0, 'H' },
		{ "dim", required_argument, 0, 'D' }, { "tokens", required_argument, 0, 'T' },
		{ 0, 0, 0, 0 }
	};
	unsigned long count = 100000, iters = 0;
	size_t bs = 2 << 20;
	unsigned procs = 1;
	int o, json = 0, sleep_mode = 0;
	struct codec_args ca = { NULL, -1, 32, 8, 128, 256, 0 };
	const char *cmd = NULL;

	/* options may come before or after the command */
	while (optind < argc) {
		o = getopt_long(argc, argv, "+s:c:Sjb:p:i:hP:I:L:H:D:T:", opts, NULL);
		if (o == -1) {
			if (cmd) {
				usage(stderr);
				return 2;
			}
			cmd = argv[optind++];
			continue;
		}
		switch (o) {
		case 's': g_sock = optarg; break;
		case 'c': count = strtoul(optarg, NULL, 10); break;
		case 'S': sleep_mode = 1; break;
		case 'j': json = 1; break;
		case 'b':
			if (parse_size(optarg, &bs))
				return 2;
			break;
		case 'p': procs = (unsigned)strtoul(optarg, NULL, 10); break;
		case 'i': iters = strtoul(optarg, NULL, 10); break;
		case 'h': usage(stdout); return 0;
		case 'P': ca.policy = optarg; break;
		case 'I':
			ca.isa = !strcmp(optarg, "scalar") ? KVCD_ISA_SCALAR :
				 !strcmp(optarg, "avx2") ? KVCD_ISA_AVX2 :
				 !strcmp(optarg, "avx512") ? KVCD_ISA_AVX512 : -2;
			if (ca.isa == -2 || ca.isa > (int)kvcd_isa_best()) {
				fprintf(stderr, "kvcbench: --isa %s: not available here (best: %s)\n",
					optarg, kvcd_isa_name(kvcd_isa_best()));
				return 2;
			}
			break;
		case 'L': ca.layers = (unsigned)strtoul(optarg, NULL, 10); break;
		case 'H': ca.heads = (unsigned)strtoul(optarg, NULL, 10); break;
		case 'D': ca.dim = (unsigned)strtoul(optarg, NULL, 10); break;
		case 'T': ca.tokens = (unsigned)strtoul(optarg, NULL, 10); break;
		default: usage(stderr); return 2;
		}
	}
	if (!cmd || !count || !procs || procs > 256) {
		usage(stderr);
		return 2;
	}
	ca.iters = iters ? iters : 5;
	if (!iters) /* about 1 GiB moved per process by default */
		iters = bs >= (1u << 30) ? 1 : (1u << 30) / bs;
	if (!strcmp(cmd, "nop"))
		return bench_nop(count, sleep_mode, json);
	if (!strcmp(cmd, "throughput"))
		return bench_throughput(bs, procs, iters, json);
	if (!strcmp(cmd, "codec"))
		return bench_codec(&ca, json);
	usage(stderr);
	return 2;
}
