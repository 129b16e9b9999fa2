/* kvccodec-bench - the block codecs in-process, without a daemon (links libkvccodec.a).
 *
 *   kvccodec-bench [codec] [--policy P] [--isa scalar|avx2|avx512|avx512vnni] [--layers 32]
 *                  [--heads 8] [--dim 128] [--tokens 256] [--iters N] [--json]
 *       Encode and decode one f16 block (default 32 x 8 x 128 x 256, 32 MiB) under each
 *       policy (default: int8, int4, int2, fp8, kivi) and each ISA this CPU has, against
 *       memcpy of the same bytes in the same run; compression ratio and relative error
 *       beside it.
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
#include "kvc_version.h"
#include "timing.h"

struct codec_args {
	const char *policy;
	int isa; /* -1: every ISA this CPU has */
	unsigned layers, heads, dim, tokens;
	unsigned long iters;
};

static int bench_one_codec(const char *pol, enum kvcd_isa isa, const struct kvcp_layout *l,
			   const void *raw, unsigned long iters, double mc, int json)
{
	struct kvcd_policy p;
	char why[128], canon[KVCD_POLICY_STR];
	uint64_t n = kvcp_layout_bytes(l), e, t0, te = 0, td = 0;
	void *enc = NULL, *dec = malloc(n);
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
	struct kvcd_quality q = kvcd_quality_of(x, y, cnt);
	double eg = (double)n * iters / te, dg = (double)n * iters / td;

	if (json)
		printf("{\"policy\": \"%s\", \"isa\": \"%s\", \"bytes_in\": %llu, "
		       "\"bytes_stored\": %llu, \"ratio\": %.3f, \"encode_gbps\": %.3f, "
		       "\"decode_gbps\": %.3f, \"memcpy_gbps\": %.3f, \"encode_vs_memcpy\": %.3f, "
		       "\"decode_vs_memcpy\": %.3f, \"rel_frob\": %.6f, \"cosine\": %.6f}\n",
		       canon, kvcd_isa_name(isa), (unsigned long long)n, (unsigned long long)e,
		       (double)n / e, eg, dg, mc, eg / mc, dg / mc, q.rel_frob, q.cosine);
	else
		printf("%-44s %-7s %6.2fx  encode %6.2f GB/s (%3.0f%%)  decode %6.2f GB/s (%3.0f%%)  "
		       "memcpy %6.2f  err %.4f\n",
		       canon, kvcd_isa_name(isa), (double)n / e, eg, 100 * eg / mc, dg,
		       100 * dg / mc, mc, q.rel_frob);
out:
	free(enc);
	free(dec);
	free(x);
	free(y);
	return err < 0 ? 1 : err;
}

static int bench_codec(const struct codec_args *a, int json)
{
	static const char *const dflt[] = {
		"int8", "int4", "int2", "fp8", "kivi:kbits=4,vbits=4,group=32", NULL
	};
	const char *one[] = { a->policy, NULL };
	const char *const *pols = a->policy ? one : dflt;
	struct kvcp_layout l = { .dtype = KVCP_F16,
				 .layers = (uint16_t)a->layers,
				 .kv_heads = (uint16_t)a->heads,
				 .head_dim = (uint16_t)a->dim,
				 .tokens = a->tokens };
	uint64_t n = kvcp_layout_bytes(&l), seed = 12345;
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

static void usage(FILE *f)
{
	fprintf(f,
		"usage: kvccodec-bench [codec] [--policy P] [--isa scalar|avx2|avx512|avx512vnni]\n"
		"                      [--layers N] [--heads N] [--dim N] [--tokens N] [--iters N]\n"
		"                      [--json]\n"
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
	fprintf(stderr, "kvccodec-bench: unknown command '%s'\n", cmd);
	usage(stderr);
	return 2;
}
