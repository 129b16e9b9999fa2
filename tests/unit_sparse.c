/* unit_sparse.c - token selection on whole blocks (daemon/codec/sparse.c): each selector keeps
 * exactly its budget per (layer, head) with the sinks and the window; PyramidKV's and Ada-KV's
 * counts reach the encoded block; FETCH's sparse form gives the kept tokens' positions and
 * values; merging keeps the attention mass; blocks compose with quantization; missing
 * auxiliary data and corrupt blocks are refused. */
#include <math.h>

#include "t_util.h"
#include "internal.h"

enum {
	LY = 3,
	H = 2,
	D = 8,
	T = 50,
	QH = 4,
	W = 6
};

static const struct kvcp_layout LAY = {
	.dtype = KVCP_F32, .layers = LY, .kv_heads = H, .head_dim = D, .tokens = T
};

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static float nrand(void)
{
	double u, v;

	rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
	u = (double)(rng >> 11) * 0x1p-53 + 1e-300;
	rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
	v = (double)(rng >> 11) * 0x1p-53;
	return (float)(sqrt(-2 * log(u)) * cos(6.283185307179586 * v));
}

struct blk {
	float x[LY * 2 * T * H * D]; /* [layer][K,V][token][head][dim] */
	float attn[LY * H * T];
	float q[LY * QH * W * D], lse[LY * QH * W];
	struct kvcd_aux aux;
};

static float *row(struct blk *b, uint32_t ly, int kv, uint32_t t, uint32_t h)
{
	return b->x + ((((size_t)ly * 2 + kv) * T + t) * H + h) * D;
}

static void make(struct blk *b)
{
	for (size_t i = 0; i < sizeof(b->x) / 4; i++)
		b->x[i] = nrand();
	for (size_t i = 0; i < sizeof(b->attn) / 4; i++)
		b->attn[i] = fabsf(nrand()) * 3;
	for (size_t i = 0; i < sizeof(b->q) / 4; i++)
		b->q[i] = nrand();
	for (size_t i = 0; i < sizeof(b->lse) / 4; i++)
		b->lse[i] = 4.0f + fabsf(nrand());
	b->aux = (struct kvcd_aux){ .what = KVCP_AUX_ATTN | KVCP_AUX_QUERIES,
				    .q_heads = QH,
				    .window = W,
				    .q_pos = T,
				    .attn = b->attn,
				    .q = b->q,
				    .lse = b->lse };
}

static struct kvcd_policy pol(const char *s)
{
	struct kvcd_policy p;
	char why[128];

	cr_assert_eq(kvcd_policy_parse(s, &p, why, sizeof(why)), 0, "%s: %s", s, why);
	return p;
}

/* The parts of a decoded sparse block. */
struct view {
	struct kvcp_sparse h;
	const uint32_t *count, *tok;
	const float *bias, *rows;
};

static struct view view_of(const void *out)
{
	struct view v;

	memcpy(&v.h, out, sizeof(v.h));
	v.count = (const uint32_t *)((const uint8_t *)out + sizeof(v.h));
	v.tok = v.count + LY * H;
	v.bias = (const float *)(v.tok + v.h.total);
	v.rows = v.bias + v.h.total;
	return v;
}

static uint64_t last_bytes; /* the encoded size of roundtrip's last block */

/* Encode @b under @s, decode, check sizes and the sparse header. Returns the output (free). */
static void *roundtrip(struct blk *b, const char *s, uint32_t pos, struct view *v)
{
	struct kvcd_policy p = pol(s);
	/* energy=: ranks too (tucker: six per layer); kbits/vbits: bits per direction */
	uint32_t counts[3 * LY * H + 6 * LY + 2 * LY * H * D];
	uint64_t n, out;
	struct kvcp_layout got;
	void *enc, *dec;

	cr_assert_eq(kvcd_sel_plan(KVCD_ISA_SCALAR, &p, &LAY, pos, b->x, &b->aux, counts), 0, "%s",
		     s);
	n = kvcd_sel_size(&p, &LAY, false, pos, counts);
	cr_assert_gt(n, 0);
	enc = malloc(n);
	cr_assert_eq(
		kvcd_sel_encode(KVCD_ISA_SCALAR, &p, &LAY, pos, b->x, NULL, &b->aux, counts, enc),
		0, "%s", s);
	out = kvcd_codec_out_size(enc, n);
	cr_assert_gt(out, 0);
	dec = malloc(out);
	cr_assert_eq(kvcd_codec_decode_with(KVCD_ISA_SCALAR, enc, n, b->aux.basis, b->aux.basis_len,
					    dec, out - 1, &got),
		     -ENOSPC);
	cr_assert_eq(kvcd_codec_decode_with(KVCD_ISA_SCALAR, enc, n, b->aux.basis, b->aux.basis_len,
					    dec, out, &got),
		     0, "%s", s);
	cr_assert_eq(got.codec, KVCP_CODEC_SPARSE);
	cr_assert_eq(got.tokens, T);
	*v = view_of(dec);
	cr_assert_eq(v->h.magic, KVCP_SPARSE_MAGIC);
	cr_assert_eq(v->h.tokens, T);
	cr_assert_eq(out, kvcp_sparse_bytes(&LAY, v->h.total));
	for (int i = 0; i < LY * H; i++) /* cold=: every token comes back */
		cr_assert_eq(v->count[i], p.cold ? T : counts[i], "%s: head %d", s, i);
	last_bytes = n;
	free(enc);
	return dec;
}

Test(sparse, each_selector_keeps_its_budget_sinks_window_and_exact_rows)
{
	static struct blk b;
	const char *sels[] = { "recent", "keynorm", "h2o", "snapkv" };

	make(&b);
	for (int si = 0; si < 4; si++) {
		char s[128];
		struct view v;
		void *dec;

		snprintf(s, sizeof(s), "none:select=%s,keep=40%%,window=5,sink=3", sels[si]);
		dec = roundtrip(&b, s, 0, &v);
		cr_assert_eq(v.h.total, LY * H * 20, "%s: 40%% of 50 per head", s);
		const uint32_t *tok = v.tok;
		const float *r = v.rows;

		for (uint32_t ly = 0; ly < LY; ly++)
			for (uint32_t h = 0; h < H; h++) {
				uint32_t n = v.count[ly * H + h];
				bool in[T] = { 0 };

				for (uint32_t i = 0; i < n; i++) {
					cr_assert(i == 0 || tok[i] > tok[i - 1], "ascending");
					in[tok[i]] = true;
					cr_assert_eq(
						memcmp(r + i * D, row(&b, ly, 0, tok[i], h), D * 4),
						0, "%s: K of token %u exact", s, tok[i]);
					cr_assert_eq(memcmp(r + (n + i) * D,
							    row(&b, ly, 1, tok[i], h), D * 4),
						     0, "%s: V exact", s);
					cr_assert_eq(v.bias[tok - v.tok + i], 0.0f);
				}
				for (uint32_t t = 0; t < 3; t++)
					cr_assert(in[t], "%s: sink %u kept", s, t);
				for (uint32_t t = T - 5; t < T; t++)
					cr_assert(in[t], "%s: window token %u kept", s, t);
				if (si == 0) /* StreamingLLM: sinks and the most recent */
					for (uint32_t t = 3; t < T; t++)
						cr_assert_eq(in[t], t >= T - 17, "recent: token %u",
							     t);
				if (si ==
				    2) { /* H2O: the rest are the highest accumulated attention */
					const float *a = b.attn + (ly * H + h) * T;
					float lo = INFINITY, hi = -INFINITY;

					for (uint32_t t = 3; t < T - 5; t++) {
						if (in[t])
							lo = fminf(lo, a[t]);
						else
							hi = fmaxf(hi, a[t]);
					}
					cr_assert_geq(lo, hi,
						      "every kept score >= every dropped one");
				}
				tok += n;
				r += 2 * n * D;
			}
		free(dec);
	}
}

Test(sparse, sinks_are_the_sequence_first_tokens_and_keep_all_is_the_block)
{
	static struct blk b;
	struct view v;
	void *dec;

	make(&b);
	/* a block at position 100: the sequence's sinks are elsewhere, none kept for them */
	dec = roundtrip(&b, "none:select=recent,keep=20%,sink=4", 100, &v);
	for (uint32_t i = 0; i < v.count[0]; i++)
		cr_assert_eq(v.tok[i], T - 10 + i, "only the most recent 10");
	free(dec);
	dec = roundtrip(&b, "none:select=keynorm,keep=100%", 0, &v);
	cr_assert_eq(v.h.total, LY * H * T);
	for (uint32_t ly = 0; ly < LY; ly++)
		for (uint32_t h = 0; h < H; h++)
			for (int kv = 0; kv < 2; kv++)
				for (uint32_t t = 0; t < T; t++)
					cr_assert_eq(memcmp(v.rows + (((ly * H + h) * 2 + kv) * T +
								      t) * D,
							    row(&b, ly, kv, t, h), D * 4),
						     0);
	free(dec);
}

Test(sparse, pyramid_and_adakv_counts_reach_the_block)
{
	static struct blk b;
	struct view v;
	void *dec;
	uint32_t sum = 0;

	make(&b);
	dec = roundtrip(&b, "none:select=h2o,keep=30%,window=2,budget=pyramid", 0, &v);
	for (uint32_t ly = 0; ly < LY; ly++) {
		cr_assert_eq(v.count[ly * H], v.count[ly * H + 1], "one count per layer");
		if (ly)
			cr_assert_lt(v.count[ly * H], v.count[(ly - 1) * H], "falls with depth");
		sum += v.count[ly * H];
	}
	cr_assert_eq(sum, LY * 15, "the uniform total");
	free(dec);
	for (int a = 0; a < 3; a++) { /* uneven heads: head 1 gets all of layer 0's attention */
		for (uint32_t t = 0; t < T; t++) {
			b.attn[t] = a == 0 ? 0.001f : 1.0f;
			b.attn[T + t] = 10.0f + t;
		}
		dec = roundtrip(&b, "none:select=h2o,keep=30%,window=2,budget=adakv", 0, &v);
		for (uint32_t ly = 0; ly < LY; ly++) {
			cr_assert_eq(v.count[ly * H] + v.count[ly * H + 1], 2 * 15, "layer %u", ly);
			cr_assert_geq(v.count[ly * H], 3, "the floor: 20%% of 15");
			cr_assert_geq(v.count[ly * H + 1], 3);
		}
		if (a == 0)
			cr_assert_gt(v.count[1], v.count[0] + 10, "the attended head takes more");
		free(dec);
	}
}

Test(sparse, merging_folds_dropped_values_and_keeps_the_attention_mass)
{
	static struct blk b;
	struct view vk, vv;
	void *dk, *dv;

	make(&b);
	dk = roundtrip(&b, "none:select=h2o,keep=40%,window=4,sink=2,merge=key", 0, &vk);
	dv = roundtrip(&b, "none:select=h2o,keep=40%,window=4,sink=2,merge=value", 0, &vv);
	cr_assert_eq(vk.h.total, vv.h.total);
	const uint32_t *tok = vk.tok;
	const float *r = vk.rows, *rv = vv.rows;

	for (uint32_t ly = 0; ly < LY; ly++)
		for (uint32_t h = 0; h < H; h++) {
			uint32_t n = vk.count[ly * H + h];
			const float *a = b.attn + (ly * H + h) * T;
			double mass = 0, kept = 0, vs[D] = { 0 }, ks[D] = { 0 };

			for (uint32_t t = 2; t < T; t++) { /* sinks are never merge targets */
				double m = fmax(a[t], 1e-6) / (T - t);

				mass += m;
				for (int c = 0; c < D; c++)
					vs[c] += m * row(&b, ly, 1, t, h)[c];
			}
			for (uint32_t i = 0; i < n; i++) {
				size_t k = (size_t)(tok - vk.tok) + i;
				double m = fmax(a[tok[i]], 1e-6) / (T - tok[i]), g;

				cr_assert_eq(vv.bias[k], 0.0f, "merge=value: no bias");
				cr_assert_eq(memcmp(r + i * D, row(&b, ly, 0, tok[i], h), D * 4), 0,
					     "keys stay");
				cr_assert_eq(memcmp(r + (n + i) * D, rv + (n + i) * D, D * 4), 0,
					     "the same values either way");
				if (tok[i] < 2) {
					cr_assert_eq(vk.bias[k], 0.0f, "sinks take nothing");
					continue;
				}
				cr_assert_geq(vk.bias[k], 0.0f);
				g = m * exp(vk.bias[k]);
				kept += g;
				for (int c = 0; c < D; c++)
					ks[c] += g * r[(n + i) * D + c];
			}
			cr_assert_float_eq(kept, mass, 5e-3 * mass, "mass %g kept %g", mass, kept);
			for (int c = 0; c < D; c++)
				cr_assert_float_eq(ks[c], vs[c], 5e-3 * mass, "channel %d", c);
			tok += n;
			r += 2 * n * D;
			rv += 2 * n * D;
		}
	free(dk);
	free(dv);
}

Test(sparse, composes_with_quantization)
{
	static struct blk b;
	struct view v;
	void *dec;
	const char *pols[] = { "int8:select=snapkv,keep=50%,window=4",
			       "kivi:kbits=4,vbits=4,group=8,select=h2o,keep=50%,sink=2,"
			       "budget=adakv" };
	const double bound[] = { 0.01, 0.2 };

	make(&b);
	for (int pi = 0; pi < 2; pi++) {
		double num = 0, den = 0;

		dec = roundtrip(&b, pols[pi], 0, &v);
		const uint32_t *tok = v.tok;
		const float *r = v.rows;

		for (uint32_t ly = 0; ly < LY; ly++)
			for (uint32_t h = 0; h < H; h++) {
				uint32_t n = v.count[ly * H + h];

				for (int kv = 0; kv < 2; kv++)
					for (uint32_t i = 0; i < n; i++)
						for (int c = 0; c < D; c++) {
							double x = row(&b, ly, kv, tok[i], h)[c];
							double y = r[(kv * n + i) * D + c];

							num += (x - y) * (x - y);
							den += x * x;
						}
				tok += n;
				r += 2 * n * D;
			}
		cr_assert_lt(sqrt(num / den), bound[pi], "%s: %g", pols[pi], sqrt(num / den));
		cr_assert_gt(sqrt(num / den), 0.0, "quantized, not raw");
		free(dec);
	}
}

Test(sparse, missing_aux_and_corrupt_blocks_are_refused)
{
	static struct blk b;
	struct kvcd_policy h2o = pol("none:select=h2o,keep=50%"), snap = pol("int8:select=snapkv");
	struct kvcd_aux only_attn;
	uint32_t counts[LY * H];
	uint64_t n;
	uint8_t *enc, *dec;
	struct kvcp_layout got;

	make(&b);
	only_attn = (struct kvcd_aux){ .what = KVCP_AUX_ATTN, .attn = b.attn };
	cr_assert_eq(kvcd_sel_encode(KVCD_ISA_SCALAR, &h2o, &LAY, 0, b.x, NULL, NULL, NULL, NULL),
		     -EINVAL, "h2o needs accumulated attention");
	cr_assert_eq(
		kvcd_sel_encode(KVCD_ISA_SCALAR, &snap, &LAY, 0, b.x, NULL, &only_attn, NULL, NULL),
		-EINVAL, "snapkv needs window queries");
	cr_assert_eq(kvcd_codec_encode(KVCD_ISA_SCALAR, &h2o, &LAY, 0, b.x, NULL, &b), -EINVAL);
	b.x[7] = NAN;
	cr_assert_eq(kvcd_sel_plan(KVCD_ISA_SCALAR, &h2o, &LAY, 0, b.x, &b.aux, counts), 0,
		     "uniform counts need no data");
	n = kvcd_sel_size(&h2o, &LAY, false, 0, counts);
	enc = malloc(n);
	cr_assert_eq(
		kvcd_sel_encode(KVCD_ISA_SCALAR, &h2o, &LAY, 0, b.x, NULL, &b.aux, counts, enc),
		-EINVAL, "nan");
	b.x[7] = 1.0f;
	cr_assert_eq(
		kvcd_sel_encode(KVCD_ISA_SCALAR, &h2o, &LAY, 0, b.x, NULL, &b.aux, counts, enc), 0);
	dec = malloc(kvcd_codec_out_size(enc, n));
	size_t cap = kvcd_codec_out_size(enc, n), bm = sizeof(struct kvcd_codec_hdr) + LY * H * 4;

	cr_assert_eq(kvcd_codec_decode(KVCD_ISA_SCALAR, enc, n - 1, dec, cap, &got), -EBADMSG);
	enc[bm] ^= 1; /* one kept token more or less than its count says */
	cr_assert_eq(kvcd_codec_decode(KVCD_ISA_SCALAR, enc, n, dec, cap, &got), -EBADMSG);
	cr_assert_eq(kvcd_codec_out_size(enc, n), 0);
	enc[bm] ^= 1;
	enc[bm + 6] |= 0x80; /* a bit past the block's 50 tokens */
	cr_assert_eq(kvcd_codec_decode(KVCD_ISA_SCALAR, enc, n, dec, cap, &got), -EBADMSG);
	enc[bm + 6] &= 0x7f;
	counts[0] = T + 1;
	memcpy(enc + sizeof(struct kvcd_codec_hdr), counts, 4);
	cr_assert_eq(kvcd_codec_decode(KVCD_ISA_SCALAR, enc, n, dec, cap, &got), -EBADMSG);
	free(enc);
	free(dec);
}

Test(sparse, policy_strings)
{
	const char *ok[] = { "none:select=h2o",
			     "kivi:kbits=5,vbits=4,group=64,select=snapkv,"
			     "keep=25%,window=16,budget=adakv,merge=key,kernel=7",
			     "none:select=recent,keep=0.5,sink=4",
			     "int8:select=keynorm,merge=value",
			     "none:rank=6,bounds=quest,page=4",
			     "none:select=h2o,rank=3",
			     "int8:bounds=reps8",
			     "none:bounds=reps8,reps=6,page=8",
			     "none:select=h2o,bounds=reps,reps=3",
			     "none:rank=4,factors=int8",
			     "none:select=snapkv,rank=6,factors=int8,bounds=quest",
			     "kivi:kbits=5,vbits=4,group=64,select=snapkv,keep=25%,cold=2",
			     "none:select=h2o,window=8,cold=8,bounds=reps8",
			     "none:rank=8,energy=90%",
			     "none:select=snapkv,rank=6,energy=0.75,factors=int8",
			     "none:rank=4,svd=layer",
			     "none:rank=12,factors=int8,svd=layer,bounds=quest",
			     "none:rank=8,learned=on,kbits=5,vbits=4",
			     "none:select=snapkv,bits=3,rank=8,learned=on" };
	const char *bad[] = { "none:select=h2o,keep=0",
			      "none:keep=50%",
			      "int8:merge=key",
			      "int4:select=h2o,rope=10000",
			      "none:select=snapkv,kernel=4",
			      "none:select=h2o,outliers=2",
			      "none:sink=4",
			      "none:select=lru",
			      "none:select=h2o,budget=greedy",
			      "none:select=h2o,keep=101%",
			      "int8:rank=4",
			      "none:rank=256",
			      "none:page=4",
			      "none:bounds=quest,reps=2",
			      "none:bounds=reps9",
			      "none:bounds=reps8,reps=17",
			      "none:factors=int8",
			      "none:rank=4,factors=int4",
			      "none:cold=4",
			      "none:select=h2o,merge=key,cold=4",
			      "none:select=h2o,cold=1",
			      "none:select=h2o,cold=9",
			      "none:select=h2o,rank=4,cold=4",
			      "none:energy=90%",
			      "none:rank=4,energy=0",
			      "none:rank=4,energy=90.5%",
			      "none:select=h2o,merge=value,rank=4,energy=90%",
			      "none:svd=layer",
			      "none:select=h2o,rank=4,svd=layer",
			      "none:rank=4,energy=90%,svd=layer",
			      "none:rank=4,svd=both",
			      "none:kbits=4,vbits=4,rank=8",
			      "none:kbits=4,rank=8,learned=on",
			      "none:kbits=4,vbits=4,rank=8,learned=on,factors=int8",
			      "none:kbits=9,vbits=4,rank=8,learned=on",
			      "int4:rank=8,learned=on" };
	char buf[KVCD_POLICY_STR], why[128];

	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		struct kvcd_policy p = pol(ok[i]), q;

		kvcd_policy_format(&p, buf, sizeof(buf));
		cr_assert_eq(kvcd_policy_parse(buf, &q, why, sizeof(why)), 0, "%s: %s", buf, why);
		cr_assert_eq(memcmp(&p, &q, sizeof(p)), 0, "%s round-trips as %s", ok[i], buf);
		cr_assert_eq(kvcd_policy_check(&p, &LAY, why, sizeof(why)), 0, "%s", why);
	}
	cr_assert_eq(pol("none:select=h2o").keep, 5000, "half by default");
	cr_assert_eq(pol("int8:bounds=reps8").reps, 4, "int8 representatives: 4 by default");
	cr_assert_eq(pol("int8:bounds=reps").reps, 2, "f16 representatives: 2 by default");
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct kvcd_policy p;

		why[0] = 0;
		cr_assert_eq(kvcd_policy_parse(bad[i], &p, why, sizeof(why)), -EINVAL, "%s",
			     bad[i]);
		cr_assert_neq(why[0], 0, "%s says why", bad[i]);
	}
}

/* Low-rank: at full rank the block comes back to float precision; a rank-1 K is exact at
 * rank 1; the error never grows with the rank; with select= the factors cover the kept rows. */
/* Relative Frobenius error of every row of @v against @b; *@k00: the largest error in K of
 * (layer 0, head 0). */
static double rel_err(struct blk *b, const struct view *v, double *k00)
{
	double num = 0, den = 0;

	*k00 = 0;
	for (uint32_t ly = 0; ly < LY; ly++)
		for (uint32_t h = 0; h < H; h++)
			for (int kv = 0; kv < 2; kv++)
				for (uint32_t t = 0; t < T; t++)
					for (int c = 0; c < D; c++) {
						double x = row(b, ly, kv, t, h)[c];
						double y = v->rows[(((ly * H + h) * 2 + kv) * T +
								    t) * D +
								   c];

						num += (x - y) * (x - y);
						den += x * x;
						if (!ly && !h && !kv)
							*k00 = fmax(*k00, fabs(x - y));
					}
	return sqrt(num / den);
}

Test(sparse, low_rank_is_exact_at_full_rank_and_improves_with_rank)
{
	static struct blk b;
	double prev = INFINITY, k00;

	make(&b);
	for (uint32_t t = 0; t < T; t++) /* layer 0, head 0: K = u v^T */
		for (int c = 0; c < D; c++)
			row(&b, 0, 0, t, 0)[c] = (float)((int)(t % 7) - 3) * (float)(c + 1) * 0.25f;
	for (uint32_t r = 1; r <= D; r++) {
		char s[64];
		struct view v;
		void *dec;

		snprintf(s, sizeof(s), "none:rank=%u", r);
		dec = roundtrip(&b, s, 0, &v);
		cr_assert_eq(v.h.total, LY * H * T, "every token kept");
		double e = rel_err(&b, &v, &k00);

		cr_assert_leq(k00, 1e-4, "rank %u: a rank-1 K is exact (%g)", r, k00);
		cr_assert_leq(e, prev + 1e-6, "rank %u: no worse than rank %u", r, r - 1);
		prev = e;
		if (r < D)
			cr_assert_gt(prev, 1e-3, "rank %u < %u of random rows loses something", r,
				     D);
		free(dec);
	}
	cr_assert_leq(prev, 1e-5, "full rank: float precision (%g)", prev);
	struct view v;
	void *dec = roundtrip(&b, "none:select=recent,keep=50%,rank=8", 0, &v);

	for (uint32_t i = 0; i < v.count[1]; i++) /* (layer 0, head 1): the last 25 tokens */
		for (int c = 0; c < D; c++)
			cr_assert_float_eq(v.rows[(v.count[0] * 2 + i) * D + c],
					   row(&b, 0, 0, v.tok[v.count[0] + i], 1)[c], 1e-4);
	free(dec);
	/* factors=int8: at full rank, int8 precision (each factor row to 1/254 of its largest
	 * value); not float precision, so the int8 path really ran */
	dec = roundtrip(&b, "none:rank=8,factors=int8", 0, &v);
	double e8 = rel_err(&b, &v, &k00);

	cr_assert_leq(e8, 0.01, "int8 factors at full rank (%g)", e8);
	cr_assert_gt(e8, 1e-4, "int8 factors are not exact (%g)", e8);
	free(dec);
}

/* cold=B: the tokens selection drops come back too, every token in order; the kept ones
 * exactly as without cold=, the others to B-bit precision (8 bits: a few percent, 2 bits:
 * far worse); fewer bits store fewer bytes, and all of them fewer than the raw block. */
Test(sparse, cold_tokens_come_back_at_their_precision)
{
	static struct blk b;
	struct view v, v0;
	void *d0, *dec;
	double prev_err = 0;
	uint64_t prev_bytes = ~0ull;

	make(&b);
	d0 = roundtrip(&b, "none:select=keynorm,keep=50%", 0, &v0);
	for (int bits = 8; bits >= 2; bits -= 3) { /* 8, 5, 2 */
		char s[64];
		double num = 0, den = 0;
		size_t hot = 0;

		snprintf(s, sizeof(s), "none:select=keynorm,keep=50%%,cold=%d", bits);
		dec = roundtrip(&b, s, 0, &v);
		cr_assert_eq(v.h.total, LY * H * T);
		for (uint32_t ly = 0; ly < LY; ly++)
			for (uint32_t h = 0; h < H; h++) {
				size_t u = (size_t)ly * H + h, k = 0;

				for (uint32_t t = 0; t < T; t++) {
					bool kept = k < v0.count[u] && v0.tok[hot + k] == t;

					cr_assert_eq(v.tok[u * T + t], t,
						     "%s: every token, in order", s);
					for (int kv = 0; kv < 2; kv++)
						for (int c = 0; c < D; c++) {
							double x = row(&b, ly, kv, t, h)[c];
							double y =
								v.rows[((u * 2 + kv) * T + t) * D +
								       c];

							if (kept)
								cr_assert_eq(x, y,
									     "%s: kept rows exact",
									     s);
							else
								num += (x - y) * (x - y),
									den += x * x;
						}
					k += kept;
				}
				hot += v0.count[u];
			}
		double e = sqrt(num / den);

		cr_assert_gt(e, prev_err, "%s: fewer bits, more error (%g)", s, e);
		cr_assert_leq(e, bits == 8 ? 0.02 : bits == 5 ? 0.1 : 0.6, "%s: error %g", s, e);
		cr_assert_lt(last_bytes, prev_bytes, "%s: fewer bits, fewer bytes", s);
		cr_assert_lt(last_bytes, kvcp_layout_bytes(&LAY), "%s: smaller than raw", s);
		for (uint64_t i = 0; i < v.h.total; i++)
			cr_assert_eq(v.bias[i], 0.0f);
		prev_err = e;
		prev_bytes = last_bytes;
		free(dec);
	}
	free(d0);
}

/* energy=E: each K and V takes the smallest rank that keeps E of its squared singular values,
 * so its relative squared error is at most 1 - E; a rank-1 K takes rank 1 and comes back
 * exactly; E = 100% is full rank; lower E stores fewer bytes; a rank byte past its cap or a
 * zero rank is refused. */
Test(sparse, energy_picks_the_smallest_rank_that_keeps_it)
{
	static struct blk b;
	uint64_t prev = ~0ull;

	make(&b);
	for (uint32_t t = 0; t < T; t++) /* layer 0, head 0: K = u v^T */
		for (int c = 0; c < D; c++)
			row(&b, 0, 0, t, 0)[c] = (float)((int)(t % 7) - 3) * (float)(c + 1) * 0.25f;
	for (int e = 100; e >= 50; e -= 25) {
		char s[64];
		struct view v;
		double k00;
		void *dec;

		snprintf(s, sizeof(s), "none:rank=8,energy=%d%%", e);
		dec = roundtrip(&b, s, 0, &v);
		cr_assert_leq(rel_err(&b, &v, &k00), e == 100 ? 1e-5 : 1.0, "%s", s);
		cr_assert_leq(k00, 1e-4, "%s: the rank-1 K exact at rank 1", s);
		for (uint32_t ly = 0; ly < LY; ly++)
			for (uint32_t h = 0; h < H; h++)
				for (int kv = 0; kv < 2; kv++) {
					double num = 0, den = 0;

					for (uint32_t t = 0; t < T; t++)
						for (int c = 0; c < D; c++) {
							double x = row(&b, ly, kv, t, h)[c];
							double y =
								v.rows[(((ly * H + h) * 2 + kv) * T +
									t) * D +
								       c];

							num += (x - y) * (x - y);
							den += x * x;
						}
					cr_assert_leq(num / den, 1 - e / 100.0 + 1e-4,
						      "%s: (%u, %u, %d) keeps its energy", s, ly, h,
						      kv);
				}
		cr_assert_lt(last_bytes, prev, "%s: less energy, fewer bytes", s);
		prev = last_bytes;
		free(dec);
	}
	/* the stored ranks are checked on decode */
	struct kvcd_policy p = pol("none:rank=8,energy=90%");
	uint32_t counts[3 * LY * H];
	size_t lh = LY * H, at = sizeof(struct kvcd_codec_hdr) + lh * 4;
	struct kvcp_layout got;

	cr_assert_eq(kvcd_sel_plan(KVCD_ISA_SCALAR, &p, &LAY, 0, b.x, NULL, counts), 0);
	cr_assert_eq(counts[lh], 1, "the rank-1 K of (0, 0)");
	cr_assert_gt(counts[lh + 1], 1, "its random V needs more");
	uint64_t n = kvcd_sel_size(&p, &LAY, false, 0, counts), out;
	uint8_t *enc = malloc(n);
	void *dec;

	cr_assert_eq(kvcd_sel_size(&p, &LAY, false, 0, NULL), 0, "no size without the data");
	cr_assert_eq(kvcd_sel_encode(KVCD_ISA_SCALAR, &p, &LAY, 0, b.x, NULL, NULL, counts, enc),
		     0);
	out = kvcd_codec_out_size(enc, n);
	dec = malloc(out);
	cr_assert_eq(kvcd_codec_decode(KVCD_ISA_SCALAR, enc, n, dec, out, &got), 0);
	enc[at] = 9; /* above the cap (rank=8, head_dim 8) */
	cr_assert_eq(kvcd_codec_decode(KVCD_ISA_SCALAR, enc, n, dec, out, &got), -EBADMSG);
	enc[at] = 0; /* a kept head with rank 0 */
	cr_assert_eq(kvcd_codec_decode(KVCD_ISA_SCALAR, enc, n, dec, out, &got), -EBADMSG);
	enc[at] = 2; /* in range, but the body's size no longer matches */
	cr_assert_eq(kvcd_codec_decode(KVCD_ISA_SCALAR, enc, n, dec, out, &got), -EBADMSG);
	free(enc);
	free(dec);
}

/* svd=layer: one SVD of each layer's [tokens][heads x d] K and V. At full rank (min(T, H x D))
 * it is exact; a layer whose heads share one token direction (K_h = u v_h^T) comes back
 * exactly at rank 1, in fewer bytes than rank 1 per head; the error never grows with the
 * rank; int8 factors stay within 1%. */
Test(sparse, layer_svd_spans_the_heads)
{
	static struct blk b;
	struct view v;
	double prev = INFINITY, k00, e;
	uint64_t per_head;
	void *dec;

	make(&b);
	for (uint32_t t = 0; t < T; t++) /* layer 0: K_h = u v_h^T, u shared by the heads */
		for (uint32_t h = 0; h < H; h++)
			for (int c = 0; c < D; c++)
				row(&b, 0, 0, t, h)[c] = (float)((int)(t % 7) - 3) *
							 (float)((int)(h * D) + c + 1) * 0.25f;
	for (uint32_t r = 1; r <= H * D; r++) {
		char s[64];
		double num = 0, den = 0;

		snprintf(s, sizeof(s), "none:rank=%u,svd=layer", r);
		dec = roundtrip(&b, s, 0, &v);
		e = rel_err(&b, &v, &k00);
		for (uint32_t t = 0; t < T; t++) /* K of layer 0, every head */
			for (uint32_t h = 0; h < H; h++)
				for (int c = 0; c < D; c++) {
					double x = row(&b, 0, 0, t, h)[c];
					double y = v.rows[((h * 2) * T + t) * D + c];

					num += (x - y) * (x - y);
					den += x * x;
				}
		cr_assert_leq(sqrt(num / den), 1e-5, "%s: the layer's rank-1 K is exact", s);
		cr_assert_leq(e, prev + 1e-6, "%s: no worse than rank %u", s, r - 1);
		prev = e;
		free(dec);
	}
	cr_assert_leq(prev, 1e-5, "full rank: float precision (%g)", prev);
	dec = roundtrip(&b, "none:rank=1", 0, &v);
	per_head = last_bytes;
	free(dec);
	dec = roundtrip(&b, "none:rank=1,svd=layer", 0, &v);
	cr_assert_lt(last_bytes, per_head, "one factor pair per layer, not per head");
	free(dec);
	dec = roundtrip(&b, "none:rank=16,svd=layer,factors=int8", 0, &v);
	e = rel_err(&b, &v, &k00);
	cr_assert_leq(e, 0.01, "int8 factors (%g)", e);
	cr_assert_gt(e, 1e-4, "int8 factors are not exact (%g)", e);
	free(dec);
}

/* MiniCache: layers 1 and 2 share directions; with t = 0 layer 1 comes back exactly and with
 * t = 1 layer 2 does (up to float rounding), the other keeping its norms; retained tokens are
 * exact in both; layer 0 is untouched; a bitmap that lies is refused. */
Test(sparse, minicache_at_t0_and_t1_returns_one_layer_exactly)
{
	static struct blk b;
	const char *pols[] = { "none:minicache=1,slerp=0,retain=0",
			       "none:minicache=1,slerp=1,retain=0",
			       "none:minicache=1,slerp=0.6,retain=20%" };

	make(&b);
	for (int pi = 0; pi < 3; pi++) {
		struct view v;
		void *dec = roundtrip(&b, pols[pi], 0, &v);
		uint32_t exact_layer = pi == 0 ? 1 : pi == 1 ? 2 : 0, other = pi == 1 ? 1 : 2;
		unsigned kept = 0;

		cr_assert_eq(v.h.total, LY * H * T);
		for (uint32_t h = 0; h < H; h++)
			for (int kv = 0; kv < 2; kv++)
				for (uint32_t t = 0; t < T; t++) {
					const float *x = row(&b, exact_layer, kv, t, h);
					const float *y =
						v.rows +
						(((exact_layer * H + h) * 2 + kv) * T + t) * D;
					const float *xo = row(&b, other, kv, t, h);
					const float *yo = v.rows +
							  (((other * H + h) * 2 + kv) * T + t) * D;
					double nx = 0, ny = 0, dot = 0, diff = 0;

					for (int c = 0; c < D; c++) {
						if (pi < 2 || exact_layer == 0)
							cr_assert_float_eq(y[c], x[c],
									   1e-5 * (fabsf(x[c]) + 1),
									   "%s: layer %u", pols[pi],
									   exact_layer);
						nx += (double)xo[c] * xo[c];
						ny += (double)yo[c] * yo[c];
						dot += (double)xo[c] * yo[c];
						diff += fabs(xo[c] - yo[c]);
					}
					cr_assert_float_eq(sqrt(ny), sqrt(nx),
							   1e-4 * (sqrt(nx) + 1),
							   "the merged layer keeps its norms");
					kept += diff < 1e-6;
					if (pi < 2 && diff > 1e-6)
						cr_assert_lt(dot / sqrt(nx * ny), 1.0 - 1e-6,
							     "merged: the other layer's direction");
				}
		if (pi == 2) /* 20% of 50 tokens kept unmerged per (head, K/V), exact in both */
			cr_assert_geq(kept, H * 2 * 10);
		free(dec);
	}

	struct kvcd_policy p = pol("none:minicache=1,retain=20%");
	uint32_t counts[LY * H];
	uint64_t n;
	uint8_t *enc, *dec;
	struct kvcp_layout got;

	cr_assert_eq(kvcd_sel_plan(KVCD_ISA_SCALAR, &p, &LAY, 0, b.x, NULL, counts), 0);
	n = kvcd_sel_size(&p, &LAY, false, 0, counts);
	enc = malloc(n);
	cr_assert_eq(kvcd_sel_encode(KVCD_ISA_SCALAR, &p, &LAY, 0, b.x, NULL, NULL, counts, enc),
		     0);
	dec = malloc(kvcd_codec_out_size(enc, n));
	size_t pair = sizeof(struct kvcd_codec_hdr) + LY * H * 4 + LY * H * 7 + 2 * (T * 2 * D * 4);

	enc[pair] ^= 1; /* the first pair's K bitmap: one token more or less kept */
	cr_assert_eq(
		kvcd_codec_decode(KVCD_ISA_SCALAR, enc, n, dec, kvcd_codec_out_size(enc, n), &got),
		-EBADMSG);
	free(enc);
	free(dec);
	cr_assert_eq(kvcd_policy_parse("int8:minicache=1", &p, NULL, 0), -EINVAL);
}

/* A chain of blocks selected together (kvcd_codec_chain_select, then each block encoded with
 * its share) keeps exactly the tokens and rows one block holding the whole chain keeps. */
Test(sparse, a_chain_selects_as_one_block_holding_it)
{
	static struct blk b;
	static const uint32_t len[3] = { 20, 17, 13 }; /* T in all */
	const char *pols[] = {
		"none:select=snapkv,keep=50%,window=4,budget=adakv,sink=2",
		"none:select=snapkv,keep=30%,window=3,kernel=3",
		"none:select=snapkv,keep=50%,window=4,budget=heads",
		"none:select=h2o,keep=40%,window=2,budget=pyramid",
		"none:select=keynorm,keep=50%",
		"none:select=recent,keep=25%,sink=4",
		"int8:select=snapkv,keep=50%,window=4,budget=adakv",
	};

	make(&b);
	b.aux.q_pos = T - W; /* the window is the chain's last tokens: causal inside it */
	for (size_t pi = 0; pi < sizeof(pols) / sizeof(pols[0]); pi++) {
		struct kvcd_policy p = pol(pols[pi]);
		struct kvcp_layout ls[3];
		float *src[3], *attn[3];
		uint8_t *keep[3];
		struct view whole;
		void *wdec = roundtrip(&b, pols[pi], 0, &whole);
		uint32_t off = 0;

		for (int i = 0; i < 3; i++) {
			ls[i] = LAY;
			ls[i].tokens = len[i];
			src[i] = malloc(kvcp_layout_bytes(&ls[i]));
			attn[i] = malloc(LY * H * len[i] * 4);
			keep[i] = malloc(kvcd_codec_keep_bytes(&ls[i]));
			for (uint32_t ly = 0; ly < LY; ly++)
				for (int kv = 0; kv < 2; kv++)
					for (uint32_t t = 0; t < len[i]; t++)
						memcpy(src[i] + (((size_t)ly * 2 + kv) * len[i] +
								 t) * H *
									D,
						       row(&b, ly, kv, off + t, 0), H * D * 4);
			for (uint32_t lh = 0; lh < LY * H; lh++)
				memcpy(attn[i] + lh * len[i], b.attn + lh * T + off, len[i] * 4);
			off += len[i];
		}
		cr_assert_eq(kvcd_codec_chain_select(KVCD_ISA_SCALAR, &p, 3, ls,
						     (const void *const *)src, 0, &b.aux, keep),
			     0, "%s", pols[pi]);
		/* each block's share, encoded and decoded, against the whole block's lists */
		const uint32_t *wtok = whole.tok;
		const float *wrow = whole.rows;
		size_t wkept[LY * H] = { 0 }; /* of each (layer, head)'s list, matched so far */

		off = 0;
		for (int i = 0; i < 3; i++) {
			struct kvcd_aux a = b.aux;
			uint32_t counts[LY * H];
			struct kvcp_layout got;
			struct view v;
			uint64_t n, out;
			void *enc, *dec;

			a.q_pos = b.aux.q_pos - (int32_t)off;
			a.attn = attn[i];
			a.keep = keep[i];
			cr_assert_eq(
				kvcd_sel_plan(KVCD_ISA_SCALAR, &p, &ls[i], off, src[i], &a, counts),
				0);
			n = kvcd_sel_size(&p, &ls[i], false, off, counts);
			enc = malloc(n);
			cr_assert_eq(kvcd_sel_encode(KVCD_ISA_SCALAR, &p, &ls[i], off, src[i], NULL,
						     &a, counts, enc),
				     0, "%s: block %d", pols[pi], i);
			out = kvcd_codec_out_size(enc, n);
			dec = malloc(out);
			cr_assert_eq(kvcd_codec_decode(KVCD_ISA_SCALAR, enc, n, dec, out, &got), 0);
			v = view_of(dec);
			cr_assert_eq(v.h.tokens, len[i]);

			const uint32_t *tok = v.tok;
			const float *r = v.rows;
			const uint32_t *wt = wtok;
			const float *wr = wrow;

			for (uint32_t u = 0; u < LY * H; u++) {
				uint32_t m = v.count[u], wn = whole.count[u];

				for (uint32_t j = 0; j < m; j++) {
					size_t w = wkept[u] + j;

					cr_assert_lt(w, wn, "%s: block %d (l,h) %u keeps more",
						     pols[pi], i, u);
					cr_assert_eq(tok[j] + off, wt[w], "%s: block %d (l,h) %u",
						     pols[pi], i, u);
					cr_assert_eq(memcmp(r + j * D, wr + w * D, D * 4), 0, "K");
					cr_assert_eq(
						memcmp(r + (m + j) * D, wr + (wn + w) * D, D * 4),
						0, "V");
				}
				/* and it kept every whole-block token that falls in it */
				cr_assert(wkept[u] + m == wn || wt[wkept[u] + m] >= off + len[i],
					  "%s: block %d (l,h) %u misses a token", pols[pi], i, u);
				wkept[u] += m;
				tok += m;
				r += 2 * m * D;
				wt += wn;
				wr += 2 * wn * D;
			}
			off += len[i];
			free(enc);
			free(dec);
		}
		for (uint32_t u = 0; u < LY * H; u++)
			cr_assert_eq(wkept[u], whole.count[u], "%s: (l,h) %u", pols[pi], u);
		for (int i = 0; i < 3; i++) {
			free(src[i]);
			free(attn[i]);
			free(keep[i]);
		}
		free(wdec);
	}
}

Test(sparse, a_chain_refuses_what_it_cannot_select)
{
	static struct blk b;
	struct kvcp_layout ls[2] = { LAY, LAY };
	const void *src[2] = { b.x, b.x };
	uint8_t k0[LY * H * 7], k1[LY * H * 7];
	uint8_t *keep[2] = { k0, k1 };
	struct kvcd_policy sel = pol("none:select=snapkv,keep=50%"), q = pol("int8");
	struct kvcd_aux none = { 0 };

	make(&b);
	cr_assert_eq(kvcd_codec_chain_select(KVCD_ISA_SCALAR, &q, 2, ls, src, 0, &b.aux, keep),
		     -EINVAL, "nothing to select");
	cr_assert_eq(kvcd_codec_chain_select(KVCD_ISA_SCALAR, &sel, 2, ls, src, 0, &none, keep),
		     -EINVAL, "no queries");
	ls[1].head_dim = 4;
	cr_assert_eq(kvcd_codec_chain_select(KVCD_ISA_SCALAR, &sel, 2, ls, src, 0, &b.aux, keep),
		     -EINVAL, "shapes differ");
	ls[1] = LAY;
	b.x[3] = NAN;
	cr_assert_eq(kvcd_codec_chain_select(KVCD_ISA_SCALAR, &sel, 2, ls, src, 0, &b.aux, keep),
		     -EINVAL, "a key is nan");
	b.x[3] = 0;
	cr_assert_eq(kvcd_codec_chain_select(KVCD_ISA_SCALAR, &sel, 2, ls, src, 0, &b.aux, keep),
		     0);
}

/* tensor=tucker: at energy 100% the higher-order SVD is exact to float precision; a tensor of
 * multilinear rank (2, 1, 1) needs those ranks and no more; lower energy keeps fewer bytes
 * and loses more; ranks a block claims beyond its dimensions are refused. */
Test(sparse, tucker_ranks_by_energy_and_round_trips)
{
	static struct blk b;
	struct view v;
	double k00, e, prev = 0;
	uint64_t prev_bytes = UINT64_MAX;
	struct kvcp_layout got;
	void *dec;

	make(&b);
	for (uint32_t t = 0; t < T; t++) /* layer 0's K: head 0 a_t f_c, head 1 b_t f_c: ranks
					  * (2, 2, 1) */
		for (uint32_t h = 0; h < H; h++)
			for (int c = 0; c < D; c++)
				row(&b, 0, 0, t,
				    h)[c] = (float)(h ? (int)(t % 3) - 1 : (int)(t % 5) - 2) *
					    (float)(c - 3.5);
	dec = roundtrip(&b, "none:rank=64,tensor=tucker,energy=100%", 0, &v);
	e = rel_err(&b, &v, &k00);
	cr_assert_leq(e, 1e-5, "full ranks: float precision (%g)", e);
	free(dec);
	for (int pct = 99; pct >= 60; pct -= 9) {
		char s[64];

		snprintf(s, sizeof(s), "none:rank=64,tensor=tucker,energy=%d%%", pct);
		dec = roundtrip(&b, s, 0, &v);
		e = rel_err(&b, &v, &k00);
		if (pct >= 90)
			cr_assert_leq(k00, 1e-4, "%s: layer 0's K has ranks (2, 2, 1): exact (%g)",
				      s, k00);
		cr_assert_geq(e, prev - 1e-6, "%s: less energy, more error", s);
		cr_assert_lt(last_bytes, prev_bytes, "%s: fewer bytes", s);
		prev = e;
		prev_bytes = last_bytes;
		free(dec);
	}

	/* the block's first rank byte (layer 0's K token rank) claims more than there are */
	struct kvcd_policy p = pol("none:rank=64,tensor=tucker,energy=90%");
	uint32_t counts[LY * H + 6 * LY];
	uint64_t n;
	void *enc;

	cr_assert_eq(kvcd_sel_plan(KVCD_ISA_SCALAR, &p, &LAY, 0, b.x, &b.aux, counts), 0);
	cr_assert_eq(counts[LY * H], 2, "layer 0's K: token rank 2");
	cr_assert_eq(counts[LY * H + 1], 2, "head rank 2");
	cr_assert_eq(counts[LY * H + 2], 1, "channel rank 1");
	n = kvcd_sel_size(&p, &LAY, false, 0, counts);
	enc = malloc(n);
	dec = malloc(kvcp_sparse_bytes(&LAY, LY * H * T));
	cr_assert_eq(kvcd_sel_encode(KVCD_ISA_SCALAR, &p, &LAY, 0, b.x, NULL, &b.aux, counts, enc),
		     0);
	cr_assert_eq(kvcd_codec_decode(KVCD_ISA_SCALAR, enc, n, dec,
				       kvcp_sparse_bytes(&LAY, LY * H * T), &got),
		     0);
	uint8_t *rk = (uint8_t *)enc + sizeof(struct kvcd_codec_hdr) + LY * H * 4;

	rk[1] = H + 1;
	cr_assert_eq(kvcd_codec_decode(KVCD_ISA_SCALAR, enc, n, dec,
				       kvcp_sparse_bytes(&LAY, LY * H * T), &got),
		     -EBADMSG, "a head rank above the heads");
	rk[1] = 0;
	cr_assert_eq(kvcd_codec_decode(KVCD_ISA_SCALAR, enc, n, dec,
				       kvcp_sparse_bytes(&LAY, LY * H * T), &got),
		     -EBADMSG, "a zero rank");
	free(enc);
	free(dec);
	for (const char **s =
		     (const char *[]){ "none:rank=8,tensor=tucker",
				       "none:rank=8,tensor=tucker,energy=90%,svd=layer",
				       "none:tensor=tucker,energy=90%",
				       "none:rank=8,tensor=tucker,energy=90%,select=recent", NULL };
	     *s; s++) {
		struct kvcd_policy q;
		char why[160];

		cr_assert_eq(kvcd_policy_parse(*s, &q, why, sizeof(why)), -EINVAL, "%s", *s);
	}
}

/* The Tucker factors at full ranks on four heads (no mode of two, where every orthogonal
 * factor may be its own transpose): put then get gives the tensor back. */
Test(sparse, tucker_full_ranks_on_four_heads)
{
	const struct kvcp_layout l = {
		.dtype = KVCP_F32, .layers = 1, .kv_heads = 4, .head_dim = 8, .tokens = 10
	};
	const uint32_t r[3] = { 10, 4, 8 };
	float x[10 * 4 * 8], y[10 * 4 * 8];
	float *buf = malloc(kvcd_tk_buf_floats(&l) * 4);
	uint8_t *o = malloc(kvcd_tk_bytes(&l, r));
	double num = 0, den = 0;

	for (size_t i = 0; i < sizeof(x) / 4; i++)
		x[i] = nrand();
	cr_assert(kvcd_tk_ranks_ok(&(struct kvcd_policy){ .rank = 64 }, &l, r));
	cr_assert_eq(kvcd_tk_put(KVCD_ISA_SCALAR, &l, x, r, buf, o), 0);
	kvcd_tk_get(KVCD_ISA_SCALAR, &l, o, r, buf, y);
	for (size_t i = 0; i < sizeof(x) / 4; i++) {
		num += (x[i] - y[i]) * (x[i] - y[i]);
		den += x[i] * x[i];
	}
	cr_assert_leq(sqrt(num / den), 1e-5);
	free(buf);
	free(o);
}

/* learned=: a basis learned from calibration blocks whose rows lie in a 3-dimensional
 * subspace per (layer, K/V, head) has rank 3 everywhere; an unseen block from the same
 * subspaces comes back exactly from its coefficients alone, in fewer bytes than a per-block
 * SVD of the same rank (which stores its factors too), and a block from elsewhere does not;
 * a block decodes with its own basis only, and a damaged basis is refused. */
static void in_subspaces(struct blk *b, const float *sub)
{
	for (uint32_t ly = 0; ly < LY; ly++)
		for (int kv = 0; kv < 2; kv++)
			for (uint32_t h = 0; h < H; h++) {
				const float *s = sub + (((size_t)ly * 2 + kv) * H + h) * 3 * D;

				for (uint32_t t = 0; t < T; t++) {
					float z[3] = { nrand(), nrand(), nrand() };

					for (int c = 0; c < D; c++)
						row(b, ly, kv, t, h)[c] = z[0] * s[c] +
									  z[1] * s[D + c] +
									  z[2] * s[2 * D + c];
				}
			}
}

Test(sparse, learned_basis_decodes_unseen_blocks_from_coefficients)
{
	static struct blk cal[2], b, other;
	static float sub[LY * 2 * H * 3 * D];
	struct kvcp_layout ls[2] = { LAY, LAY };
	const void *srcs[2] = { cal[0].x, cal[1].x };
	void *basis, *basis2;
	uint64_t len, len2, id;
	struct view v;
	double k00;

	for (size_t i = 0; i < sizeof(sub) / 4; i++)
		sub[i] = nrand();
	for (int i = 0; i < 2; i++) {
		make(&cal[i]);
		in_subspaces(&cal[i], sub);
	}
	cr_assert_eq(kvcd_basis_learn(KVCD_ISA_SCALAR, 2, ls, srcs, 99, NULL, 1, &basis, &len), 0);
	cr_assert_eq(kvcd_basis_check(basis, len), 0);
	kvcd_basis_seal(basis, 0x1234);
	for (size_t j = 0; j < 2 * LY * H; j++)
		cr_assert_eq(kvcd_basis_ranks(basis)[j], 3, "unit %zu: the calibration's rank", j);
	make(&b);
	in_subspaces(&b, sub);
	b.aux.basis = basis;
	b.aux.basis_len = len;
	void *dec = roundtrip(&b, "none:rank=8,learned=on", 0, &v);
	uint64_t learned_bytes = last_bytes;

	cr_assert_leq(rel_err(&b, &v, &k00), 1e-5, "an unseen block of the same subspaces");
	free(dec);
	free(roundtrip(&b, "none:rank=3", 0, &v));
	cr_assert_lt(learned_bytes, last_bytes, "no factors in the block: %llu vs %llu",
		     (unsigned long long)learned_bytes, (unsigned long long)last_bytes);
	/* rank= caps the basis's ranks: fewer bytes, and the third direction is lost */
	dec = roundtrip(&b, "none:rank=2,learned=on", 0, &v);
	cr_assert_lt(last_bytes, learned_bytes);
	cr_assert_gt(rel_err(&b, &v, &k00), 0.05);
	free(dec);
	/* int8 coefficients: int8 precision, not float precision */
	dec = roundtrip(&b, "none:rank=8,learned=on,factors=int8", 0, &v);
	double e8 = rel_err(&b, &v, &k00);

	cr_assert_leq(e8, 0.01, "%g", e8);
	cr_assert_gt(e8, 1e-5, "%g", e8);
	free(dec);
	/* with selection, the kept rows come back from their coefficients */
	dec = roundtrip(&b, "none:select=recent,keep=50%,rank=8,learned=on", 0, &v);
	for (uint32_t i = 0; i < v.count[0]; i++)
		for (int c = 0; c < D; c++)
			cr_assert_float_eq(v.rows[i * D + c], row(&b, 0, 0, v.tok[i], 0)[c], 1e-4);
	free(dec);
	/* a block from elsewhere projects badly: the basis is not the block's own SVD */
	make(&other);
	other.aux.basis = basis;
	other.aux.basis_len = len;
	dec = roundtrip(&other, "none:rank=8,learned=on", 0, &v);
	cr_assert_gt(rel_err(&other, &v, &k00), 0.3);
	free(dec);

	/* each block names its basis: without it, or with another, it does not decode */
	struct kvcd_policy p = pol("none:rank=8,learned=on");
	uint32_t counts[3 * LY * H];
	struct kvcp_layout got;

	cr_assert_eq(kvcd_sel_plan(KVCD_ISA_SCALAR, &p, &LAY, 0, b.x, NULL, counts), -ENOKEY);
	cr_assert_eq(kvcd_sel_plan(KVCD_ISA_SCALAR, &p, &LAY, 0, b.x, &b.aux, counts), 0);
	uint64_t n = kvcd_sel_size(&p, &LAY, false, 0, counts), out;
	uint8_t *enc = malloc(n);

	cr_assert_eq(kvcd_sel_encode(KVCD_ISA_SCALAR, &p, &LAY, 0, b.x, NULL, NULL, counts, enc),
		     -ENOKEY);
	cr_assert_eq(kvcd_sel_encode(KVCD_ISA_SCALAR, &p, &LAY, 0, b.x, NULL, &b.aux, counts, enc),
		     0);
	cr_assert_eq(kvcd_codec_basis_of(enc, n, &id), 1);
	cr_assert_eq(id, 0x1234);
	out = kvcd_codec_out_size(enc, n);
	cr_assert_gt(out, 0, "sizes are known without the basis");
	dec = malloc(out);
	cr_assert_eq(kvcd_codec_decode(KVCD_ISA_SCALAR, enc, n, dec, out, &got), -ENOKEY);
	cr_assert_eq(kvcd_basis_learn(KVCD_ISA_SCALAR, 2, ls, srcs, 99, NULL, 2, &basis2, &len2),
		     0);
	kvcd_basis_seal(basis2, 0x1234);
	cr_assert_eq(kvcd_codec_decode_with(KVCD_ISA_SCALAR, enc, n, basis2, len2, dec, out, &got),
		     -ENOKEY, "another version");
	struct kvcd_basis_hdr bh;

	memcpy(&bh, basis2, sizeof(bh));
	bh.version = 1;
	memcpy(basis2, &bh, sizeof(bh));
	kvcd_basis_seal(basis2, 0x4321);
	cr_assert_eq(kvcd_codec_decode_with(KVCD_ISA_SCALAR, enc, n, basis2, len2, dec, out, &got),
		     -ENOKEY, "another id");
	cr_assert_eq(kvcd_codec_decode_with(KVCD_ISA_SCALAR, enc, n, basis, len, dec, out, &got),
		     0);
	/* a damaged basis is refused */
	uint8_t *rk = (uint8_t *)basis + sizeof(struct kvcd_basis_hdr);

	rk[0] = D + 1;
	cr_assert_eq(kvcd_basis_check(basis, len), -EBADMSG);
	cr_assert_eq(kvcd_codec_decode_with(KVCD_ISA_SCALAR, enc, n, basis, len, dec, out, &got),
		     -ENOKEY, "a basis of another shape");
	rk[0] = 3;
	float nan = NAN;

	/* values are checked once, where kvcd takes a basis in, not at every decode */
	memcpy((uint8_t *)basis + len - 4, &nan, 4);
	cr_assert_eq(kvcd_basis_check(basis, len), -EBADMSG);
	cr_assert_eq(kvcd_basis_check(basis, len - 4), -EBADMSG);
	cr_assert_eq(
		kvcd_codec_decode_with(KVCD_ISA_SCALAR, enc, n, basis, len - 4, dec, out, &got),
		-ENOKEY);
	/* calibration takes raw blocks of one shape */
	free(basis2);
	ls[1].head_dim = 4;
	cr_assert_eq(kvcd_basis_learn(KVCD_ISA_SCALAR, 2, ls, srcs, 99, NULL, 3, &basis2, &len2),
		     -EINVAL);
	cr_assert_null(basis2);
	free(enc);
	free(dec);
	free(basis);
}

/* The relative error of @b's round trip under @s at position @pos, and its size in last_bytes. */
static double roundtrip_err(struct blk *b, const char *s, uint32_t pos)
{
	struct view v;
	double k00, e;
	void *dec = roundtrip(b, s, pos, &v);

	e = rel_err(b, &v, &k00);
	free(dec);
	return e;
}

/* Two calibration blocks and a block @b whose channel c has variance 2^-c, and a basis
 * learned from the calibration ones (with @o), sealed with @id and set in @b's aux. */
static void graded_basis(struct blk cal[2], struct blk *b, const struct kvcd_cal_opts *o,
			 uint64_t id, void **basis, uint64_t *len)
{
	struct kvcp_layout ls[2] = { LAY, LAY };
	const void *srcs[2] = { cal[0].x, cal[1].x };

	for (int i = 0; i < 2; i++) {
		make(&cal[i]);
		for (size_t e = 0; e < sizeof(cal[i].x) / 4; e++)
			cal[i].x[e] *= (float)exp2(-(double)(e % D) / 2);
	}
	make(b);
	for (size_t e = 0; e < sizeof(b->x) / 4; e++)
		b->x[e] *= (float)exp2(-(double)(e % D) / 2);
	cr_assert_eq(kvcd_basis_learn(KVCD_ISA_SCALAR, 2, ls, srcs, 100, o, 1, basis, len), 0);
	cr_assert_eq(kvcd_basis_check(*basis, *len), 0);
	kvcd_basis_seal(*basis, id);
	b->aux.basis = *basis;
	b->aux.basis_len = *len;
}

/* learned=on with kbits/vbits: the directions' bits follow the engine's weights and the
 * calibration's variances, add up to the budget (K's and V's together), and more bits give
 * less error; a corrupt bit count is refused, and a basis without variances serves the plain
 * coefficients but not these. */
Test(sparse, coded_coefficients_spend_their_bits_by_weight_and_variance)
{
	static struct blk cal[2], b;
	struct kvcp_layout ls[2] = { LAY, LAY };
	const void *srcs[2] = { cal[0].x, cal[1].x };
	float weight[2 * LY];
	struct kvcd_cal_opts o = { .weight = weight };
	size_t lh = LY * H;
	void *basis;
	uint64_t len;
	double err[3];

	for (int i = 0; i < 2 * LY; i++)
		weight[i] = 1.0f;
	weight[0] = 256.0f; /* an error in layer 0's K costs 256 times more: 4 bits more */
	graded_basis(cal, &b, &o, 0x77, &basis, &len);

	struct kvcd_policy p = pol("none:rank=8,learned=on,kbits=4,vbits=3");
	uint32_t counts[3 * LY * H + 2 * LY * H * D], sum = 0, l0 = 0, l1 = 0;

	cr_assert_eq(kvcd_sel_plan(KVCD_ISA_SCALAR, &p, &LAY, 0, b.x, &b.aux, counts), 0);
	for (size_t u = 0; u < lh; u++)
		for (int kv = 0; kv < 2; kv++) {
			const uint32_t *bits = counts + 3 * lh + (2 * u + kv) * D;

			cr_assert_eq(counts[lh + 2 * u + kv], D, "full rank");
			for (int j = 0; j < D; j++) {
				cr_assert_leq(bits[j], 8);
				cr_assert(!j || bits[j] <= bits[j - 1],
					  "unit %zu/%d: bits fall with the variance", u, kv);
				sum += bits[j];
				l0 += !kv && u < H ? bits[j] : 0;
				l1 += !kv && u >= H && u < 2 * H ? bits[j] : 0;
			}
		}
	cr_assert_eq(sum, lh * D * (4 + 3), "the budget, every bit of it");
	cr_assert_gt(l0, l1 + 3 * H * D / 2, "layer 0's K takes bits: %u against %u", l0, l1);

	/* more bits, less error; the sizes are the plan's (roundtrip checks them) */
	const char *ps[3] = { "none:rank=8,learned=on,kbits=2,vbits=2",
			      "none:rank=8,learned=on,kbits=5,vbits=5",
			      "none:rank=8,learned=on,kbits=8,vbits=8" };
	uint64_t bytes[3];

	for (int i = 0; i < 3; i++) {
		err[i] = roundtrip_err(&b, ps[i], 0);
		bytes[i] = last_bytes;
	}
	cr_assert_lt(err[1], err[0] / 3, "%g %g", err[1], err[0]);
	cr_assert_lt(err[2], err[1] / 3, "%g %g", err[2], err[1]);
	cr_assert_lt(err[2], 0.01, "%g", err[2]);
	cr_assert_lt(bytes[0], bytes[1]);
	cr_assert_lt(bytes[1], bytes[2]);
	cr_assert_lt(bytes[1], sizeof(b.x) * 5 / 32 + 4096, "about 5 bits a value: %llu",
		     (unsigned long long)bytes[1]);

	/* a plan with 9 bits is refused; so is a block whose bits say 9 */
	struct kvcd_policy q = pol(ps[1]);
	struct kvcp_layout got;
	uint64_t n, out;
	uint8_t *enc;
	void *dec;

	cr_assert_eq(kvcd_sel_plan(KVCD_ISA_SCALAR, &q, &LAY, 0, b.x, &b.aux, counts), 0);
	n = kvcd_sel_size(&q, &LAY, false, 0, counts);
	enc = malloc(n);
	counts[3 * lh] = 9;
	cr_assert_eq(kvcd_sel_encode(KVCD_ISA_SCALAR, &q, &LAY, 0, b.x, NULL, &b.aux, counts, enc),
		     -EINVAL);
	cr_assert_eq(kvcd_sel_plan(KVCD_ISA_SCALAR, &q, &LAY, 0, b.x, &b.aux, counts), 0);
	cr_assert_eq(kvcd_sel_encode(KVCD_ISA_SCALAR, &q, &LAY, 0, b.x, NULL, &b.aux, counts, enc),
		     0);
	out = kvcd_codec_out_size(enc, n);
	dec = malloc(out);
	/* the nibbles follow the header, the counts, the basis id and the ranks */
	size_t at = sizeof(struct kvcd_codec_hdr) + lh * 4 + 8 + 2 * lh;

	cr_assert_eq(enc[at] & 15, counts[3 * lh], "the first direction's bits");
	enc[at] = (uint8_t)((enc[at] & 0xf0) | 9);
	cr_assert_eq(kvcd_codec_decode_with(KVCD_ISA_SCALAR, enc, n, basis, len, dec, out, &got),
		     -EBADMSG);
	free(enc);
	free(dec);

	/* a KVB1 basis (no variances, no weights) cannot plan these, but still serves the plain
	 * coefficients */
	struct kvcd_basis_hdr bh;
	uint64_t rows = 2 * lh * D, v1 = len - (8 + (2 * LY + rows) * 4);

	memcpy(&bh, basis, sizeof(bh));
	bh.magic = KVCD_BASIS_MAGIC_V1;
	bh.bytes = v1;
	memcpy(basis, &bh, sizeof(bh));
	cr_assert_eq(kvcd_basis_check(basis, v1), 0);
	b.aux.basis_len = v1;
	cr_assert_eq(kvcd_sel_plan(KVCD_ISA_SCALAR, &q, &LAY, 0, b.x, &b.aux, counts), -ENOKEY);
	cr_assert_lt(roundtrip_err(&b, "none:rank=8,learned=on", 0), 1e-3);
	/* weights must be positive */
	weight[1] = 0;
	free(basis);
	cr_assert_eq(kvcd_basis_learn(KVCD_ISA_SCALAR, 2, ls, srcs, 100, &o, 2, &basis, &len),
		     -EINVAL);
	cr_assert_null(basis);
}

/* @b under @s through the codec's entry points (plan, write, decode): the relative error,
 * and the encoded block in *@enc (free) of *@n bytes. */
static double planned_roundtrip(struct blk *b, const char *s, uint8_t **enc, uint64_t *n)
{
	struct kvcd_policy p = pol(s);
	struct kvcd_plan plan;
	struct kvcp_layout got;
	struct view v;
	uint64_t out;
	double k00, e;
	void *dec;

	cr_assert_eq(kvcd_codec_plan(KVCD_ISA_SCALAR, &p, &LAY, 0, b->x, NULL, &b->aux, &plan), 0,
		     "%s", s);
	*n = plan.stored;
	*enc = malloc(*n);
	cr_assert_eq(kvcd_codec_write(KVCD_ISA_SCALAR, &plan, b->x, NULL, &b->aux, *enc), 0);
	kvcd_plan_fini(&plan);
	out = kvcd_codec_out_size(*enc, *n);
	cr_assert_gt(out, 0);
	dec = malloc(out);
	cr_assert_eq(kvcd_codec_decode_with(KVCD_ISA_SCALAR, *enc, *n, b->aux.basis,
					    b->aux.basis_len, dec, out, &got),
		     0, "%s", s);
	v = view_of(dec);
	e = rel_err(b, &v, &k00);
	free(dec);
	return e;
}

/* entropy=on: the coefficients on their bits' steps, range coded. Fewer bytes than the
 * fixed-width codes of the same bits for an error of the same order, the same bytes every
 * time, and a block whose stream sizes lie is refused. */
Test(sparse, entropy_coding_spends_fewer_bytes_on_the_same_coefficients)
{
	static struct blk cal[2], b;
	size_t lh = LY * H;
	void *basis, *dec;
	uint64_t len, n, n2, nf, out;
	uint8_t *enc, *enc2;
	double ef, ee, e6;
	struct kvcp_layout got;

	graded_basis(cal, &b, NULL, 0x78, &basis, &len);

	ef = roundtrip_err(&b, "none:rank=8,learned=on,kbits=5,vbits=5", 0);
	nf = last_bytes;
	ee = planned_roundtrip(&b, "none:rank=8,learned=on,kbits=5,vbits=5,entropy=on", &enc, &n);
	cr_assert_lt(n, nf * 95 / 100, "entropy %llu bytes, fixed %llu", (unsigned long long)n,
		     (unsigned long long)nf);
	cr_assert_lt(ee, 2 * ef, "entropy %g, fixed %g", ee, ef);
	cr_assert_lt(ee, 0.05, "%g", ee);
	e6 = planned_roundtrip(&b, "none:rank=8,learned=on,kbits=6,vbits=6,entropy=on", &enc2, &n2);
	cr_assert_lt(e6, ee * 0.6, "a bit more halves the step: %g against %g", e6, ee);
	cr_assert_gt(n2, n);
	free(enc2);

	/* the same bytes again */
	cr_assert_eq(planned_roundtrip(&b, "none:rank=8,learned=on,kbits=5,vbits=5,entropy=on",
				       &enc2, &n2),
		     ee);
	cr_assert_eq(n2, n);
	cr_assert_eq(memcmp(enc, enc2, n), 0);

	/* stream sizes follow the nibbles: one a byte short and the next a byte long keep the
	 * block's size, but the first stream then needs more bytes than it has */
	size_t at = sizeof(struct kvcd_codec_hdr) + lh * 4 + 8 + 2 * lh + lh * D;
	uint32_t s0, s1;

	out = kvcd_codec_out_size(enc, n);
	dec = malloc(out);
	memcpy(&s0, enc2 + at, 4);
	memcpy(&s1, enc2 + at + 4, 4);
	cr_assert_gt(s0, 5);
	s0--, s1++;
	memcpy(enc2 + at, &s0, 4);
	memcpy(enc2 + at + 4, &s1, 4);
	cr_assert_eq(kvcd_codec_decode_with(KVCD_ISA_SCALAR, enc2, n, basis, len, dec, out, &got),
		     -EBADMSG);
	s1 += 7; /* sizes that no longer add up to the block's */
	memcpy(enc2 + at + 4, &s1, 4);
	cr_assert_eq(kvcd_codec_decode_with(KVCD_ISA_SCALAR, enc2, n, basis, len, dec, out, &got),
		     -EBADMSG);
	s0 = 0; /* an empty stream for a head that keeps tokens */
	memcpy(enc2 + at, &s0, 4);
	cr_assert_eq(kvcd_codec_decode_with(KVCD_ISA_SCALAR, enc2, n, basis, len, dec, out, &got),
		     -EBADMSG);
	/* a stream that would outgrow its room is -ERANGE (the STORE then falls back to raw) */
	uint32_t bits8[D];
	float cf[T * D], rows8[T * D];
	uint8_t small[16];
	struct kvcd_ent_model em;

	kvcd_ent_model_init(&em);
	for (int j = 0; j < D; j++)
		bits8[j] = 8;
	for (int i = 0; i < T * D; i++)
		rows8[i] = b.x[i];
	cr_assert_eq(kvcd_lr_coded_put(rows8, T, D, D, kvcd_basis_rows(basis, 0, 0),
				       kvcd_basis_vars(basis, 0, 0), bits8, &em, cf, small,
				       sizeof(small)),
		     -ERANGE);
	/* entropy=on codes kbits/vbits coefficients only */
	struct kvcd_policy q;
	char why[128];

	cr_assert_neq(kvcd_policy_parse("none:rank=8,learned=on,entropy=on", &q, why, sizeof(why)),
		      0);
	cr_assert_neq(kvcd_policy_parse("int8:entropy=on", &q, why, sizeof(why)), 0);
	free(enc);
	free(enc2);
	free(dec);
	free(basis);
}

/* RoPE as llama applies it: pairs (2i, 2i + 1) turned by pos * base^(-2i / d). */
static void rope_fwd(float *x, double pos, double base)
{
	for (int i = 0; i < D / 2; i++) {
		double a = pos * pow(base, -2.0 * i / D), x0 = x[2 * i], x1 = x[2 * i + 1];

		x[2 * i] = (float)(x0 * cos(a) - x1 * sin(a));
		x[2 * i + 1] = (float)(x0 * sin(a) + x1 * cos(a));
	}
}

/* Keys that lie in a plane before RoPE fill four dimensions after it: a basis learned with
 * the model's RoPE (and the calibration blocks' positions) codes them in two directions at a
 * block's own position, one learned on the keys as stored cannot. */
Test(sparse, coded_keys_are_projected_as_before_rope)
{
	static struct blk cal[2], b;
	static float sub[LY * 2 * H * 3 * D];
	struct kvcp_layout ls[2] = { LAY, LAY };
	const void *srcs[2] = { cal[0].x, cal[1].x };
	uint64_t at[2] = { 0, T }, len;
	struct kvcd_cal_opts o = { .rope = 10000, .pos = at };
	const char *ps = "none:rank=2,learned=on,kbits=8,vbits=8";
	double e_rope, e_plain;
	void *basis;

	for (size_t i = 0; i < sizeof(sub) / 4; i++)
		sub[i] = nrand();
	/* each K plane spans channels 0 and 2, of two different RoPE pairs */
	for (size_t i = 0; i < LY * 2 * H; i++)
		for (int c = 0; c < D; c++) {
			sub[i * 3 * D + c] = c == 0 ? 1.0f : 0.0f;
			sub[i * 3 * D + D + c] = c == 2 ? 1.0f : 0.0f;
			sub[i * 3 * D + 2 * D + c] = 0.0f;
		}
	for (int i = 0; i < 3; i++) {
		struct blk *x = i < 2 ? &cal[i] : &b;
		uint32_t p0 = i < 2 ? (uint32_t)at[i] : 3 * T;

		make(x);
		in_subspaces(x, sub);
		for (uint32_t ly = 0; ly < LY; ly++)
			for (uint32_t t = 0; t < T; t++)
				for (uint32_t h = 0; h < H; h++)
					rope_fwd(row(x, ly, 0, t, h), p0 + t, 10000);
	}
	for (int i = 0; i < 2; i++) { /* with RoPE, then without */
		cr_assert_eq(kvcd_basis_learn(KVCD_ISA_SCALAR, 2, ls, srcs, 100, i ? NULL : &o, 1,
					      &basis, &len),
			     0);
		kvcd_basis_seal(basis, 1);
		b.aux.basis = basis;
		b.aux.basis_len = len;
		*(i ? &e_plain : &e_rope) = roundtrip_err(&b, ps, 3 * T);
		free(basis);
	}
	cr_assert_lt(e_rope, 0.01, "two directions hold the keys before RoPE: %g", e_rope);
	cr_assert_gt(e_plain, 0.1, "and not after it: %g", e_plain);
}

/* Heads wider than 255 channels (a u16 head_dim: Gemma's are 256) select and decode like any
 * other: the check that a header's counts fit its block must not refuse them. */
Test(sparse, wide_heads_select_and_decode)
{
	const struct kvcp_layout wide = {
		.dtype = KVCP_F32, .layers = 1, .kv_heads = 2, .head_dim = 256, .tokens = 8
	};
	struct kvcd_policy p = pol("none:select=recent,keep=50%");
	struct kvcd_plan plan;
	struct kvcp_layout got;
	size_t n = kvcp_layout_bytes(&wide) / 4;
	float *x = malloc(n * 4);
	uint64_t out;
	void *enc, *dec;

	for (size_t i = 0; i < n; i++)
		x[i] = nrand();
	cr_assert_eq(kvcd_codec_plan(KVCD_ISA_SCALAR, &p, &wide, 0, x, NULL, NULL, &plan), 0);
	enc = malloc(plan.stored);
	cr_assert_eq(kvcd_codec_write(KVCD_ISA_SCALAR, &plan, x, NULL, NULL, enc), 0);
	out = kvcd_codec_out_size(enc, plan.stored);
	cr_assert_gt(out, 0);
	dec = malloc(out);
	cr_assert_eq(kvcd_codec_decode(KVCD_ISA_SCALAR, enc, plan.stored, dec, out, &got), 0);
	cr_assert_eq(got.head_dim, 256);
	cr_assert_eq(view_of(dec).h.total, 2 * 4, "half of 8 tokens on each of 2 heads");
	kvcd_plan_fini(&plan);
	free(x);
	free(enc);
	free(dec);
}
