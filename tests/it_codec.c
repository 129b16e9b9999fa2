/* it_codec.c - compression policies through a real kvcd: namespace policies from the config,
 * policies registered per client, FETCH restoring the engine's dtype and layout within the
 * codec's bound, importance scores, the raw fallback, per-namespace bytes in and stored, old
 * blocks staying readable across policy changes, and RECOMPRESS selecting a chain of raw
 * chunks as one block. */
#include <math.h>

#include "t_util.h"
#include "codec.h"

static struct t_daemon D;

static void up(void)
{
	t_daemon_start_conf(&D, "[kvcd]\npolicy = int8\n"
				"[namespace kivi]\npolicy = kivi:kbits=4,vbits=4,group=32,sink=4,"
				"rotate=hadamard\n"
				"[namespace raw]\npolicy = none\n"
				"[namespace defer]\npolicy = none\n"
				"[namespace rot]\npolicy = int4:rotate=hadamard\n");
}

static void down(void)
{
	cr_assert_eq(t_daemon_down(&D), 0, "kvcd exits 0");
}

TestSuite(codec_ops, .init = up, .fini = down, .timeout = 60);

static const struct kvc_layout L = {
	.dtype = KVC_F16, .layers = 4, .kv_heads = 2, .head_dim = 64, .tokens = 64
};

/* f16 values ~N(0,1)-ish from a seed, at staging offset 0. */
static void fill_f16(void *stg, const struct kvc_layout *l, uint64_t seed)
{
	size_t n = kvc_layout_bytes(l) / 2;
	uint16_t *x = stg;

	for (size_t i = 0; i < n; i++) {
		seed = seed * 6364136223846793005ull + 1442695040888963407ull;
		x[i] = kvcd_f32_to_f16((float)((int64_t)(seed >> 40) - (1 << 23)) /
				       (float)(1 << 22));
	}
}

/* Relative Frobenius error between the f16 blocks at @a and @b. */
static double rel_err(const void *a, const void *b, const struct kvc_layout *l)
{
	size_t n = kvc_layout_bytes(l) / 2;
	float *x = malloc(n * 4), *y = malloc(n * 4);

	kvcd_to_f32(KVCD_ISA_SCALAR, KVCP_F16, a, x, n);
	kvcd_to_f32(KVCD_ISA_SCALAR, KVCP_F16, b, y, n);
	double e = kvcd_quality_of(x, y, n).rel_frob;

	free(x);
	free(y);
	return e;
}

static const struct kvc_stats *ns_stats(kvc_client *c, const char *ns, unsigned *i)
{
	static struct kvc_stats st;

	cr_assert_eq(kvc_stats(c, &st, sizeof(st)), 0);
	for (*i = 0; *i < st.nns; (*i)++)
		if (!strcmp(st.ns[*i].name, ns))
			return &st;
	cr_assert_fail("namespace %s not in stats", ns);
	return NULL;
}

Test(codec_ops, namespace_policies_compress_and_restore)
{
	const char *nss[] = { "default", "kivi", "raw" };
	const char *pols[] = { "int:bits=8,group=64",
			       "kivi:kbits=4,vbits=4,group=32,sink=4,rotate=hadamard", "none" };
	const double max_err[] = { 0.01, 0.15, 0 }, min_ratio[] = { 1.8, 3.0, 1.0 };
	size_t n = kvc_layout_bytes(&L);

	for (int i = 0; i < 3; i++) {
		kvc_client *c = t_attach(&D, nss[i], 4 << 20);
		unsigned char *stg = kvc_staging(c, NULL);
		struct kvc_key k = { 0xc0dec, (uint64_t)i };
		struct kvc_layout got;
		unsigned j;

		fill_f16(stg, &L, (uint64_t)i + 1);
		/* the second block of a sequence (first token at position 64): no sinks in it */
		struct kvc_req r = {
			.op = KVC_OP_STORE, .arg = 64, .key = k, .layout = L, .len = n
		};
		struct kvc_cqe cqe;

		cr_assert_eq(kvc_submit(c, &r, 1, NULL), 1);
		cr_assert_eq(kvc_wait(c, &cqe, 1, 1, 5000), 1);
		cr_assert_eq(cqe.res, 0, "%s: %s", nss[i], kvc_strerror(cqe.res));
		memset(stg + n, 0xee, n);
		cr_assert_eq(kvc_fetch(c, &k, n, n, &got), 0);
		cr_assert_eq(got.dtype, L.dtype, "the engine's dtype comes back");
		cr_assert_eq(got.tokens, L.tokens);
		cr_assert_eq(got.codec, i == 0 ? KVCD_CODEC_INT : i == 1 ? KVCD_CODEC_KIVI : 0);
		double e = rel_err(stg, stg + n, &L);

		cr_assert_leq(e, max_err[i], "%s: relative error %g", nss[i], e);
		cr_assert_eq(kvc_fetch(c, &k, 0, n - 1, NULL), -ENOSPC,
			     "room for the decoded block");
		const struct kvc_stats *st = ns_stats(c, nss[i], &j);

		cr_assert_str_eq(st->ns[j].policy, pols[i]);
		cr_assert_eq(st->ns[j].blocks, 1);
		cr_assert_eq(st->ns[j].bytes_in, n);
		cr_assert_geq((double)st->ns[j].bytes_in / (double)st->ns[j].bytes_stored,
			      min_ratio[i], "%s: %lu in, %lu stored", nss[i],
			      (unsigned long)st->ns[j].bytes_in,
			      (unsigned long)st->ns[j].bytes_stored);
		kvc_detach(c);
	}
}

Test(codec_ops, client_policies_and_their_errors)
{
	kvc_client *c = t_attach(&D, "mine", 4 << 20);
	unsigned char *stg = kvc_staging(c, NULL);
	size_t n = kvc_layout_bytes(&L);
	char why[160];
	struct kvc_layout l = L, got;

	int a = kvc_policy(c, "fp8", 0, why, sizeof(why));
	int b = kvc_policy(c, "int2:hibits=8,hipct=25", 0, why, sizeof(why));

	cr_assert_eq(a, 1);
	cr_assert_eq(b, 2);
	cr_assert_eq(kvc_policy(c, "fp8:group=0", 0, NULL, 0), 1, "the same policy, the same slot");
	cr_assert_eq(kvc_policy(c, "int9", 0, why, sizeof(why)), -EINVAL);
	cr_assert_not_null(strstr(why, "unknown codec"), "the reason comes back: %s", why);
	cr_assert_eq(kvc_policy(c, "kivi:group=0", 0, why, sizeof(why)), -EINVAL);
	cr_assert_not_null(strstr(why, "group"), "%s", why);
	for (int i = 3; i <= 8; i++) {
		char p[32];

		snprintf(p, sizeof(p), "int%d", i);
		cr_assert_eq(kvc_policy(c, p, 0, NULL, 0), i);
	}
	cr_assert_eq(kvc_policy(c, "int4:group=16", 0, NULL, 0), -ENOSPC, "8 slots");

	fill_f16(stg, &l, 7);
	l.codec = 1;
	struct kvc_key k1 = { 1, 1 }, k2 = { 1, 2 }, k3 = { 1, 3 };

	cr_assert_eq(kvc_store(c, &k1, &l, 0), 0);
	cr_assert_eq(kvc_fetch(c, &k1, n, n, &got), 0);
	cr_assert_eq(got.codec, KVCD_CODEC_FP8);
	cr_assert_leq(rel_err(stg, stg + n, &L), 0.05);

	/* importance scores: tokens 0..15 matter, with hipct=25 exactly those get 8 bits */
	float *scores = (float *)(stg + n);

	for (uint32_t t = 0; t < L.tokens; t++)
		scores[t] = t < 16 ? 1.0f : 0.0f;
	l.codec = 2;
	cr_assert_eq(kvc_store_scored(c, &k2, &l, 0), 0);
	cr_assert_eq(kvc_fetch(c, &k2, 2 * n, n, &got), 0);
	double imp = 0, rest = 0;
	const uint16_t *x = (const uint16_t *)stg, *y = (const uint16_t *)(stg + 2 * n);

	for (size_t i = 0; i < n / 2; i++) {
		size_t t = (i / (2 * 64)) % 64;
		double e = fabs(kvcd_f16_to_f32(x[i]) - kvcd_f16_to_f32(y[i]));

		if (t < 16)
			imp = fmax(imp, e);
		else
			rest = fmax(rest, e);
	}
	cr_assert_lt(imp * 10, rest, "important tokens at 8 bits: %g vs %g", imp, rest);

	l.codec = 9;
	cr_assert_eq(kvc_store(c, &k3, &l, 0), -EINVAL, "no such slot");
	l.codec = 0;
	cr_assert_eq(kvc_store_scored(c, &k3, &l, 1), -EINVAL, "scores need 4-byte alignment");
	kvc_detach(c);
}

Test(codec_ops, policy_that_does_not_fit_falls_back_to_raw)
{
	kvc_client *c = t_attach(&D, "rot", 4 << 20);
	unsigned char *stg = kvc_staging(c, NULL);
	struct kvc_layout odd = L;
	struct kvc_key k = { 2, 1 };
	size_t n;
	unsigned j;

	odd.head_dim = 48; /* no Hadamard of 48 */
	n = kvc_layout_bytes(&odd);
	fill_f16(stg, &odd, 3);
	cr_assert_eq(kvc_store(c, &k, &odd, 0), 0, "the namespace policy never refuses a block");
	cr_assert_eq(kvc_fetch(c, &k, n, n, NULL), 0);
	cr_assert_eq(memcmp(stg, stg + n, n), 0, "kept raw, bit for bit");
	const struct kvc_stats *st = ns_stats(c, "rot", &j);

	cr_assert_eq(st->ns[j].fallbacks, 1);
	cr_assert_eq(st->ns[j].bytes_stored, n);
	/* a registered policy that does not fit is the client's error */
	int id = kvc_policy(c, "int4:rotate=hadamard", 0, NULL, 0);

	odd.codec = (uint8_t)id;
	k.lo = 2;
	cr_assert_eq(kvc_store(c, &k, &odd, 0), -EINVAL);
	kvc_detach(c);
}

/* STORE one request with @flags; returns the completion's res. */
static int store_req(kvc_client *c, const struct kvc_key *k, const struct kvc_layout *l,
		     uint8_t flags, uint64_t len)
{
	struct kvc_req r = {
		.op = KVC_OP_STORE, .flags = flags, .key = *k, .layout = *l, .len = len
	};
	struct kvc_cqe cqe;

	cr_assert_eq(kvc_submit(c, &r, 1, NULL), 1);
	cr_assert_eq(kvc_wait(c, &cqe, 1, 1, 5000), 1);
	return cqe.res;
}

/* Token selection through kvcd: the auxiliary section after the block, a sparse FETCH, and
 * every malformed section refused with nothing stored. */
Test(codec_ops, selection_takes_attention_and_fetches_sparse)
{
	kvc_client *c = t_attach(&D, "sel", 4 << 20);
	unsigned char *stg = kvc_staging(c, NULL);
	struct kvc_layout l = L, got;
	size_t n = kvc_layout_bytes(&L), lh = (size_t)L.layers * L.kv_heads;
	struct kvc_aux a = { .magic = KVC_AUX_MAGIC, .what = KVC_AUX_ATTN };
	uint64_t ab = kvc_aux_bytes(&a, &L);
	float *attn = (float *)(stg + n + sizeof(a));
	struct kvc_key k = { 5, 1 };
	char why[128];
	unsigned j;

	cr_assert_eq(ab, lh * L.tokens * 4);
	fill_f16(stg, &L, 11);
	memcpy(stg + n, &a, sizeof(a));
	for (size_t i = 0; i < lh * L.tokens; i++) /* token t of every head: t odd matters */
		attn[i] = (float)(i % L.tokens % 2);
	int id = kvc_policy(c, "none:select=h2o,keep=50%", 0, why, sizeof(why));

	cr_assert_gt(id, 0, "%s", why);
	l.codec = (uint8_t)id;
	cr_assert_eq(store_req(c, &k, &l, 0, n), -EINVAL, "h2o without attention");
	cr_assert_eq(store_req(c, &k, &l, KVC_REQ_AUX, n + sizeof(a) + ab - 4), -EINVAL, "short");
	a.what = 4;
	memcpy(stg + n, &a, sizeof(a));
	cr_assert_eq(store_req(c, &k, &l, KVC_REQ_AUX, n + sizeof(a) + ab), -EINVAL, "unknown bit");
	a.what = KVC_AUX_ATTN;
	memcpy(stg + n, &a, sizeof(a));
	attn[3] = NAN;
	cr_assert_eq(store_req(c, &k, &l, KVC_REQ_AUX, n + sizeof(a) + ab), -EINVAL, "nan");
	cr_assert_eq(kvc_fetch(c, &k, 0, n, NULL), -ENOENT, "nothing stored by the refusals");
	attn[3] = 1.0f;
	cr_assert_eq(store_req(c, &k, &l, KVC_REQ_AUX, n + sizeof(a) + ab), 0);

	size_t out = sizeof(struct kvc_sparse) + lh * 4 + lh * 32 * (8 + 2 * 64 * 2);
	unsigned char *dst = stg + n + sizeof(a) + ab;

	cr_assert_eq(kvc_fetch(c, &k, n + sizeof(a) + ab, out - 1, &got), -ENOSPC);
	cr_assert_eq(kvc_fetch(c, &k, n + sizeof(a) + ab, out, &got), 0);
	cr_assert_eq(got.codec, KVC_CODEC_SPARSE | 0, "raw rows, tokens selected");
	struct kvc_sparse sp;

	memcpy(&sp, dst, sizeof(sp));
	cr_assert_eq(sp.magic, KVC_SPARSE_MAGIC);
	cr_assert_eq(sp.total, lh * 32);
	const uint32_t *tok = (const uint32_t *)(dst + sizeof(sp)) + lh;
	const uint16_t *rows = (const uint16_t *)(dst + sizeof(sp) + lh * 4 + sp.total * 8);

	for (size_t h = 0; h < lh; h++)
		for (uint32_t i = 0; i < 32; i++) {
			uint32_t t = tok[h * 32 + i];

			cr_assert_eq(t, 2 * i + 1, "the odd tokens");
			cr_assert_eq(memcmp(rows + (h * 64 + i) * 64,
					    stg + (((h / 2) * 2 * 64 + t) * 2 + h % 2) * 64 * 2,
					    128),
				     0, "K of (layer %zu, head %zu, token %u) as stored", h / 2,
				     h % 2, t);
		}
	const struct kvc_stats *st = ns_stats(c, "sel", &j);

	cr_assert_eq(st->ns[j].bytes_in, n);
	cr_assert_lt(st->ns[j].bytes_stored, n / 2 + 4096, "half the tokens and a header");
	kvc_detach(c);
}

/* cold=: a FETCH of a block whose dropped tokens were demoted returns every token in order,
 * the kept ones exactly; the reply needs room for all of them. */
Test(codec_ops, cold_tokens_fetch_every_token)
{
	kvc_client *c = t_attach(&D, "cold", 4 << 20);
	unsigned char *stg = kvc_staging(c, NULL);
	struct kvc_layout l = L, got;
	size_t n = kvc_layout_bytes(&L), lh = (size_t)L.layers * L.kv_heads, kept = 0;
	size_t out = sizeof(struct kvc_sparse) + lh * 4 + lh * L.tokens * (8 + 2 * 64 * 2);
	struct kvc_key k = { 6, 1 };
	char why[128];
	int id = kvc_policy(c, "none:select=keynorm,keep=50%,cold=8", 0, why, sizeof(why));

	cr_assert_gt(id, 0, "%s", why);
	fill_f16(stg, &L, 21);
	l.codec = (uint8_t)id;
	cr_assert_eq(kvc_store(c, &k, &l, 0), 0);
	cr_assert_eq(kvc_fetch(c, &k, n, out - 1, &got), -ENOSPC, "room for every token");
	cr_assert_eq(kvc_fetch(c, &k, n, out, &got), 0);
	cr_assert_eq(got.codec, KVC_CODEC_SPARSE);

	const unsigned char *dst = stg + n;
	struct kvc_sparse sp;

	memcpy(&sp, dst, sizeof(sp));
	cr_assert_eq(sp.total, lh * L.tokens);
	const uint32_t *cnt = (const uint32_t *)(dst + sizeof(sp)), *tok = cnt + lh;
	const uint16_t *rows = (const uint16_t *)(dst + sizeof(sp) + lh * 4 + sp.total * 8);

	for (size_t h = 0; h < lh; h++) {
		cr_assert_eq(cnt[h], L.tokens);
		for (uint32_t t = 0; t < L.tokens; t++) {
			const uint16_t *x = (const uint16_t *)stg +
					    (((h / 2) * 2 * 64 + t) * 2 + h % 2) * 64;
			const uint16_t *y = rows + (h * 2 * L.tokens + t) * 64;

			cr_assert_eq(tok[h * L.tokens + t], t, "every token, in order");
			kept += !memcmp(x, y, 128);
		}
	}
	cr_assert_geq(kept, lh * L.tokens / 2, "the kept half exact (and some 8-bit rows too)");
	cr_assert_lt(kept, lh * L.tokens, "the demoted rows are 8-bit, not exact");
	kvc_detach(c);
}

/* One run of the SELECT test below for @summary ("bounds=quest,page=8", ...). */
static void select_case(const char *summary, uint64_t ns)
{
	kvc_client *c = t_attach(&D, "quest", 4 << 20);
	unsigned char *stg = kvc_staging(c, NULL);
	struct kvc_layout l = L;
	size_t n = kvc_layout_bytes(&L);
	struct kvc_key keys[8];
	struct kvc_select_hit hits[8];
	float q[4 * 64] = { 0 };
	char why[128], pol[64];
	int with, without = kvc_policy(c, "int8", 0, why, sizeof(why));

	snprintf(pol, sizeof(pol), "int8:%s", summary);
	with = kvc_policy(c, pol, 0, why, sizeof(why));
	cr_assert_gt(with, 0, "%s: %s", pol, why);
	cr_assert_gt(without, 0);
	for (int i = 0; i < 6; i++) { /* block i: channel 5 of layer 1, head 1 peaks at i */
		uint16_t *x = (uint16_t *)stg;

		fill_f16(stg, &L, 100 + (uint64_t)i);
		for (size_t e = 0; e < n / 2; e++)
			x[e] = kvcd_f32_to_f16(kvcd_f16_to_f32(x[e]) * 0.01f);
		x[((size_t)(1 * 2 * 64 + 9) * 2 + 1) * 64 + 5] = kvcd_f32_to_f16((float)i);
		keys[i] = (struct kvc_key){ ns, (uint64_t)i };
		l.codec = (uint8_t)(i == 4 ? without : with);
		cr_assert_eq(kvc_store(c, &keys[i], &l, 0), 0);
	}
	keys[6] = (struct kvc_key){ ns, 99 }; /* not stored */
	keys[7] = keys[2];
	for (int h = 2; h < 4; h++) /* query heads 2 and 3 read KV head 1 */
		q[h * 64 + 5] = 1.0f;
	int got = kvc_select(c, keys, 8, 1, q, 4, 64, 8, hits);

	cr_assert_eq(got, 6, "%s: 5 stored with a summary, one of them twice", summary);
	cr_assert_eq(hits[0].index, 5, "%s: block 5 holds the best key", summary);
	cr_assert_eq(hits[1].index, 3, "block 4 has no summary: skipped");
	cr_assert_eq(hits[2].index, 2);
	cr_assert_eq(hits[3].index, 7, "ties: the lower index first");
	cr_assert_geq(hits[0].score, 5.0f / 8 - 1e-3, "q.k / sqrt(64) of the best key");
	cr_assert_eq(kvc_select(c, keys, 8, 1, q, 4, 64, 2, hits), 2, "k caps the answer");
	cr_assert_eq(kvc_select(c, keys, 8, 4, q, 4, 64, 2, hits), 0, "no layer 4");
	cr_assert_eq(kvc_select(c, keys, 8, 1, q, 4, 32, 2, hits), 0, "another head_dim");
	cr_assert_eq(kvc_select(c, keys, 8, 1, q, 3, 64, 2, hits), 0, "3 heads over 2 KV heads");
	cr_assert_eq(kvc_select(c, keys, 8, 1, q, 4, 64, 9, hits), -EINVAL, "k > n");
	q[0] = NAN;
	cr_assert_eq(kvc_select(c, keys, 8, 1, q, 4, 64, 2, hits), -EINVAL, "nan query");
	struct kvc_layout got_l;

	cr_assert_eq(kvc_fetch(c, &keys[5], n, n, &got_l), 0, "the block itself is unchanged");
	cr_assert_eq(got_l.codec, 1);
	kvc_detach(c);
}

/* SELECT: blocks stored with a summary (Quest bounds, representative keys in f16 or int8) are
 * ranked by it; blocks without one, not stored, or of another head_dim are skipped; a bad
 * query is refused. */
Test(codec_ops, select_ranks_blocks_by_their_summary)
{
	select_case("bounds=quest,page=8", 77);
	select_case("bounds=reps,reps=2", 78);
	select_case("bounds=reps8", 79);
}

/* The namespace's policy changes three times; every block still decodes as it was written. */
Test(codec_ops, old_blocks_stay_readable_across_policy_changes)
{
	kvc_client *c = t_attach(&D, "changing", 4 << 20);
	unsigned char *stg = kvc_staging(c, NULL);
	const char *pols[] = { "int4", "fp8", "kivi:kbits=2,vbits=2,group=16", "none" };
	const uint8_t codecs[] = { 1, 2, 3, 0 };
	const double bound[] = { 0.12, 0.05, 0.5, 0 };
	size_t n = kvc_layout_bytes(&L);
	char why[160];
	unsigned j;

	for (int i = 0; i < 4; i++) {
		struct kvc_key k = { 3, (uint64_t)i };

		cr_assert_eq(kvc_policy(c, pols[i], KVC_POLICY_NAMESPACE, why, sizeof(why)), 0,
			     "%s: %s", pols[i], why);
		fill_f16(stg + (size_t)i * n, &L, 100 + (uint64_t)i);
		cr_assert_eq(kvc_store(c, &k, &L, (size_t)i * n), 0);
	}
	for (int i = 0; i < 4; i++) {
		struct kvc_key k = { 3, (uint64_t)i };
		struct kvc_layout got;

		cr_assert_eq(kvc_fetch(c, &k, 4 * n, n, &got), 0, "%s block", pols[i]);
		cr_assert_eq(got.codec, codecs[i]);
		double e = rel_err(stg + (size_t)i * n, stg + 4 * n, &L);

		cr_assert_leq(e, bound[i], "%s: %g", pols[i], e);
	}
	const struct kvc_stats *st = ns_stats(c, "changing", &j);

	cr_assert_str_eq(st->ns[j].policy, "none");
	cr_assert_eq(kvc_policy(c, "int4:bogus=1", KVC_POLICY_NAMESPACE, why, sizeof(why)),
		     -EINVAL);
	cr_assert_not_null(strstr(why, "bogus"), "%s", why);
	kvc_detach(c);
}

Test(codec_ops, kvcctl_shows_and_sets_policies)
{
	char buf[512];

	cr_assert_eq(t_kvcctl(&D, "--ns kivi policy", buf, sizeof(buf)), 0, "%s", buf);
	cr_assert_str_eq(buf, "kivi:kbits=4,vbits=4,group=32,sink=4,rotate=hadamard\n");
	cr_assert_eq(t_kvcctl(&D, "--ns kivi policy int4:sink=2", buf, sizeof(buf)), 0, "%s", buf);
	cr_assert_str_eq(buf, "int:bits=4,group=64,sink=2\n");
	cr_assert_neq(t_kvcctl(&D, "policy int99", buf, sizeof(buf)), 0, "a bad policy fails");
	cr_assert_not_null(strstr(buf, "unknown codec"), "%s", buf);
}

/* The kept tokens of (layer, head) @u in the sparse FETCH form at @dst: count, indices, rows
 * (K then V, head_dim 64 f16 each). */
struct sparse_view {
	uint32_t lh, total;
	const uint32_t *cnt, *tok;
	const uint16_t *rows;
};

static struct sparse_view sparse_of(const unsigned char *dst, uint32_t lh)
{
	struct kvc_sparse sp;
	struct sparse_view v = { .lh = lh };

	memcpy(&sp, dst, sizeof(sp));
	cr_assert_eq(sp.magic, KVC_SPARSE_MAGIC);
	v.total = sp.total;
	v.cnt = (const uint32_t *)(dst + sizeof(sp));
	v.tok = v.cnt + lh;
	v.rows = (const uint16_t *)(dst + sizeof(sp) + lh * 4 + (size_t)sp.total * 8);
	return v;
}

/* RECOMPRESS: four raw 16-token chunks, selected as a chain, keep exactly the tokens and rows
 * that one 64-token block stored under the same policy keeps; what it cannot or must not
 * rewrite stays raw. */
Test(codec_ops, recompress_selects_a_chain_as_one_block)
{
	kvc_client *c = t_attach(&D, "defer", 4 << 20);
	unsigned char *stg = kvc_staging(c, NULL);
	struct kvc_layout lw = L, lc = L, got;
	const size_t n = kvc_layout_bytes(&L), lh = (size_t)L.layers * L.kv_heads, row = 256;
	struct kvc_aux a = { .magic = KVC_AUX_MAGIC, .what = KVC_AUX_ATTN };
	const size_t ab = kvc_aux_bytes(&a, &L), A = 2 << 20, F = 1 << 20;
	struct kvc_key kw = { 30, 1 }, keys[4], more[3];
	unsigned char *whole = malloc(n), *ws = malloc(n * 2);
	float *attn = malloc(ab);
	uint64_t saved = 0, seed = 7;
	char why[128];
	int id = kvc_policy(c, "none:select=h2o,keep=50%,window=4", 0, why, sizeof(why));
	int i8 = kvc_policy(c, "int8", 0, why, sizeof(why));

	cr_assert_gt(id, 0, "%s", why);
	cr_assert_gt(i8, 0, "%s", why);
	lc.tokens = 16;
	fill_f16(stg, &L, 31);
	memcpy(whole, stg, n);
	for (size_t i = 0; i < lh * L.tokens; i++) {
		seed = seed * 6364136223846793005ull + 1442695040888963407ull;
		attn[i] = (float)(seed >> 40) / (float)(1 << 24);
	}
	memcpy(stg + n, &a, sizeof(a));
	memcpy(stg + n + sizeof(a), attn, ab);
	lw.codec = (uint8_t)id;
	cr_assert_eq(store_req(c, &kw, &lw, KVC_REQ_AUX, n + sizeof(a) + ab), 0);
	cr_assert_eq(kvc_fetch(c, &kw, F, n * 2, &got), 0);
	memcpy(ws, stg + F, n * 2);

	/* the same tokens in four raw chunks: [layer][K,V][token][head][dim] */
	for (uint64_t i = 0; i < 4; i++) {
		keys[i] = (struct kvc_key){ 31, i };
		for (size_t lk = 0; lk < (size_t)L.layers * 2; lk++)
			memcpy(stg + lk * 16 * row, whole + (lk * 64 + i * 16) * row, 16 * row);
		cr_assert_eq(kvc_store(c, &keys[i], &lc, 0), 0);
	}
	memcpy(stg + A, &a, sizeof(a));
	memcpy(stg + A + sizeof(a), attn, ab);
	cr_assert_eq(kvc_recompress(c, keys, 4, 0, (uint8_t)id, 0, 0, NULL), -EINVAL,
		     "h2o without attention");
	cr_assert_eq(kvc_recompress(c, keys, 4, 0, 9, A, sizeof(a) + ab, NULL), -EINVAL,
		     "no such policy");
	a.magic ^= 1;
	memcpy(stg + A, &a, sizeof(a));
	cr_assert_eq(kvc_recompress(c, keys, 4, 0, (uint8_t)id, A, sizeof(a) + ab, NULL), -EINVAL,
		     "bad aux");
	a.magic ^= 1;
	memcpy(stg + A, &a, sizeof(a));
	cr_assert_eq(kvc_fetch(c, &keys[2], F, n, &got), 0);
	cr_assert_eq(got.codec, 0, "the refusals left it raw");
	cr_assert_eq(kvc_recompress(c, keys, 4, 0, (uint8_t)id, A, sizeof(a) + ab - 4, NULL),
		     -EINVAL, "aux one float short");
	cr_assert_eq(kvc_recompress(c, keys, 4, 0, (uint8_t)id, A, sizeof(a) + ab, &saved), 4);
	cr_assert_gt(saved, 4 * n / 4 / 3, "about half of each chunk freed");

	struct sparse_view w = sparse_of(ws, (uint32_t)lh);
	size_t wrow[16] = { 0 }, at[16], base = 0; /* per (layer, head): matched, first row */

	for (size_t u = 0; u < lh; u++) {
		at[u] = base;
		base += w.cnt[u];
	}
	for (uint64_t i = 0; i < 4; i++) {
		cr_assert_eq(kvc_fetch(c, &keys[i], F, n, &got), 0);
		cr_assert_eq(got.codec, KVC_CODEC_SPARSE);
		cr_assert_eq(got.tokens, 16);

		struct sparse_view v = sparse_of(stg + F, (uint32_t)lh);
		const uint32_t *tok = v.tok;
		const uint16_t *r = v.rows;

		for (size_t u = 0; u < lh; u++) {
			for (uint32_t j = 0; j < v.cnt[u]; j++) {
				size_t wj = wrow[u] + j;

				cr_assert_lt(wj, w.cnt[u]);
				cr_assert_eq(tok[j] + 16 * i, w.tok[at[u] + wj],
					     "chunk %lu, (layer, head) %zu", (unsigned long)i, u);
				cr_assert_eq(
					memcmp(r + j * 64, w.rows + (2 * at[u] + wj) * 64, 128), 0,
					"K row");
				cr_assert_eq(memcmp(r + (v.cnt[u] + j) * 64,
						    w.rows + (2 * at[u] + w.cnt[u] + wj) * 64, 128),
					     0, "V row");
			}
			wrow[u] += v.cnt[u];
			tok += v.cnt[u];
			r += 2 * (size_t)v.cnt[u] * 64;
		}
	}
	for (size_t u = 0; u < lh; u++)
		cr_assert_eq(wrow[u], w.cnt[u], "every token the whole block kept");

	/* a chain cut short by a missing block: the attention still covers all 64 tokens, and
	 * the two chunks found keep half of their 32: the window (the run's last 4) and the 12
	 * best of the rest by their own rows of it */
	struct kvc_key cut[4];

	for (uint64_t i = 0; i < 4; i++) {
		cut[i] = (struct kvc_key){ 33, i };
		for (size_t lk = 0; lk < (size_t)L.layers * 2; lk++)
			memcpy(stg + lk * 16 * row, whole + (lk * 64 + i * 16) * row, 16 * row);
		cr_assert_eq(kvc_store(c, &cut[i], &lc, 0), 0);
	}
	cr_assert_eq(kvc_delete(c, &cut[2]), 0);
	memcpy(stg + A, &a, sizeof(a));
	memcpy(stg + A + sizeof(a), attn, ab);
	cr_assert_eq(kvc_recompress(c, cut, 4, 0, (uint8_t)id, A, sizeof(a) + ab, NULL), 2);
	for (size_t u = 0; u < lh; u++) {
		const float *sc = attn + u * 64;
		uint32_t kept = 0, win = 0;

		for (uint64_t i = 0; i < 2; i++) {
			cr_assert_eq(kvc_fetch(c, &cut[i], F, n, &got), 0);
			struct sparse_view v = sparse_of(stg + F, (uint32_t)lh);
			const uint32_t *tok = v.tok;

			for (size_t w2 = 0; w2 < u; w2++)
				tok += v.cnt[w2];
			for (uint32_t j = 0; j < v.cnt[u]; j++) {
				uint32_t t = tok[j] + 16 * (uint32_t)i, better = 0;

				if (t >= 28) {
					win++;
					continue;
				}
				for (uint32_t o = 0; o < 28; o++)
					better += sc[o] > sc[t];
				cr_assert_lt(better, 12, "(l,h) %zu token %u is among the 12 best",
					     u, t);
			}
			kept += v.cnt[u];
		}
		cr_assert_eq(kept, 16, "(l,h) %zu: half of the 32 tokens found", u);
		cr_assert_eq(win, 4, "(l,h) %zu: the run's last 4 tokens, its window", u);
	}

	/* a pinned block stays raw; later the chain goes on from the first raw block */
	for (uint64_t i = 0; i < 3; i++) {
		more[i] = (struct kvc_key){ 32, i };
		fill_f16(stg, &lc, 40 + i);
		cr_assert_eq(kvc_store(c, &more[i], &lc, 0), 0);
	}
	struct kvc_stats st;

	cr_assert_eq(kvc_stats(c, &st, sizeof(st)), 0);
	uint64_t busy = st.recompress.busy;

	cr_assert_eq(kvc_pin(c, &more[1], 0), 0);
	cr_assert_eq(kvc_recompress(c, more, 3, 0, (uint8_t)i8, 0, 0, NULL), 2);
	cr_assert_eq(kvc_fetch(c, &more[1], 0, n, &got), 0);
	cr_assert_eq(got.codec, 0, "pinned: raw");
	cr_assert_eq(kvc_fetch(c, &more[2], 0, n, &got), 0);
	cr_assert_eq(got.codec, KVC_CODEC_INT);
	cr_assert_eq(kvc_stats(c, &st, sizeof(st)), 0);
	cr_assert_eq(st.recompress.busy, busy + 1);
	cr_assert_eq(kvc_unpin(c, &more[1]), 0);
	cr_assert_eq(kvc_recompress(c, more, 3, 0, (uint8_t)i8, 0, 0, NULL), 1,
		     "the encoded first block is skipped, the chain ends at the next encoded");
	cr_assert_eq(kvc_fetch(c, &more[1], 0, n, &got), 0);
	cr_assert_eq(got.codec, KVC_CODEC_INT);
	fill_f16(stg + n, &lc, 41);
	cr_assert_lt(rel_err(stg, stg + n, &lc), 0.01, "int8 of what was stored");
	cr_assert_eq(kvc_recompress(c, more, 3, 0, (uint8_t)i8, 0, 0, NULL), 0);
	more[0].lo = 99; /* missing: the chain ends before it begins */
	cr_assert_eq(kvc_recompress(c, more, 3, 0, (uint8_t)i8, 0, 0, NULL), 0);
	cr_assert_eq(kvc_stats(c, &st, sizeof(st)), 0);
	cr_assert_geq(st.recompress.blocks, 9);
	cr_assert_eq(st.op_more[0].count, 9, "RECOMPRESS counted as an op");
	cr_assert_gt(st.recompress.bytes_before, st.recompress.bytes_after);
	char prom[1 << 16], line[96];

	cr_assert_gt(kvc_stats_prometheus(&st, prom, sizeof(prom)), 0);
	snprintf(line, sizeof(line), "\nkvcd_recompress_blocks_total %llu\n",
		 (unsigned long long)st.recompress.blocks);
	cr_assert_not_null(strstr(prom, line), "%s", line);
	snprintf(line, sizeof(line), "\nkvcd_recompress_busy_total %llu\n",
		 (unsigned long long)st.recompress.busy);
	cr_assert_not_null(strstr(prom, line), "%s", line);
	free(whole);
	free(ws);
	free(attn);
	kvc_detach(c);
}

/* f16 blocks whose rows (per layer, K or V, head) lie in a 4-dimensional subspace of the 64
 * channels, the same subspaces for every seed: what a learned basis captures. */
static void fill_sub(void *stg, const struct kvc_layout *l, uint64_t seed)
{
	uint16_t *x = stg;
	uint64_t s = 99;
	float sub[4 * 64], z[4];

	for (uint32_t ly = 0; ly < l->layers; ly++)
		for (int kv = 0; kv < 2; kv++)
			for (uint32_t h = 0; h < l->kv_heads; h++) {
				for (int i = 0; i < 4 * 64; i++) { /* this (ly, kv, h)'s subspace */
					s = s * 6364136223846793005ull + 1442695040888963407ull;
					sub[i] = (float)((int64_t)(s >> 40) - (1 << 23)) /
						 (1 << 24);
				}
				for (uint32_t t = 0; t < l->tokens; t++) {
					uint16_t *row = x +
							(((size_t)ly * 2 + kv) * l->tokens + t) *
								l->kv_heads * 64 +
							(size_t)h * 64;

					for (int k = 0; k < 4; k++) {
						seed = seed * 6364136223846793005ull +
						       1442695040888963407ull;
						z[k] = (float)((int64_t)(seed >> 40) - (1 << 23)) /
						       (1 << 22);
					}
					for (int c = 0; c < 64; c++)
						row[c] = kvcd_f32_to_f16(
							z[0] * sub[c] + z[1] * sub[64 + c] +
							z[2] * sub[128 + c] + z[3] * sub[192 + c]);
				}
			}
}

/* The sparse FETCH form of a block that kept every token, back in the engine's layout. */
static void dense_of(const unsigned char *dst, const struct kvc_layout *l, uint16_t *out)
{
	struct sparse_view v = sparse_of(dst, l->layers * l->kv_heads);
	size_t row = 64;

	cr_assert_eq(v.total, l->layers * l->kv_heads * l->tokens, "every token kept");
	for (uint32_t ly = 0; ly < l->layers; ly++)
		for (uint32_t h = 0; h < l->kv_heads; h++)
			for (int kv = 0; kv < 2; kv++)
				for (uint32_t t = 0; t < l->tokens; t++)
					memcpy(out +
						       (((size_t)ly * 2 + kv) * l->tokens + t) *
							       l->kv_heads * row +
						       (size_t)h * row,
					       v.rows + ((((size_t)ly * l->kv_heads + h) * 2 + kv) *
								 l->tokens +
							 t) * row,
					       row * 2);
}

/* learned=: CALIBRATE learns the namespace's basis from its raw blocks; a block stored under
 * learned= keeps only coefficients and comes back within f16 rounding; basis keys are the
 * daemon's; a namespace keeps its 8 newest bases, and a block whose basis was dropped reads
 * as a miss, once and for good. */
Test(codec_ops, learned_basis_from_calibration)
{
	kvc_client *c = t_attach(&D, "learn", 8 << 20);
	unsigned char *stg = kvc_staging(c, NULL);
	size_t n = kvc_layout_bytes(&L);
	struct kvc_layout l = L, got;
	uint64_t bytes = 0;
	char why[160];
	int raw = kvc_policy(c, "none", 0, why, sizeof(why));
	int lr = kvc_policy(c, "none:rank=64,learned=on", 0, why, sizeof(why));
	int lr8 = kvc_policy(c, "none:rank=64,learned=on,factors=int8", 0, why, sizeof(why));

	cr_assert_gt(raw, 0);
	cr_assert_gt(lr, 0, "%s", why);
	cr_assert_gt(lr8, 0, "%s", why);
	cr_assert_eq(kvc_calibrate(c, 0, 99, &bytes), -ENOENT, "no raw block to learn from");
	cr_assert_eq(kvc_calibrate(c, 0, 0, &bytes), -EINVAL);
	fill_sub(stg, &l, 1);
	l.codec = (uint8_t)lr;
	struct kvc_key k = { 7, 100 };

	cr_assert_eq(kvc_store(c, &k, &l, 0), -ENOKEY, "no basis yet");
	l.codec = (uint8_t)raw;
	for (uint64_t i = 0; i < 4; i++) {
		struct kvc_key ki = { 7, i };

		fill_sub(stg, &l, 10 + i);
		cr_assert_eq(kvc_store(c, &ki, &l, 0), 0);
	}
	unsigned i;
	const struct kvc_stats *st = ns_stats(c, "learn", &i);

	cr_assert_eq(st->ns_bases[i].count, 0);
	cr_assert_eq(kvc_calibrate(c, 4, 99, &bytes), 1);
	st = ns_stats(c, "learn", &i);
	cr_assert_eq(st->ns_bases[i].count, 1);
	cr_assert_eq(st->ns_bases[i].newest, 1);
	cr_assert_eq(st->ns_bases[i].bytes, bytes);
	/* 4 layers x 2 heads x K, V: 4 directions of 64 f32 each, and a header */
	cr_assert_geq(bytes, 16 * 4 * 64 * 4);
	cr_assert_lt(bytes, 16 * 8 * 64 * 4, "the ranks the data has, not head_dim: %llu",
		     (unsigned long long)bytes);

	unsigned char *orig = malloc(n);
	uint16_t *back = malloc(n);

	fill_sub(stg, &l, 77); /* a block calibration never saw */
	memcpy(orig, stg, n);
	l.codec = (uint8_t)lr;
	cr_assert_eq(kvc_store(c, &k, &l, 0), 0);
	struct kvc_key k8 = { 7, 101 };

	l.codec = (uint8_t)lr8;
	cr_assert_eq(kvc_store(c, &k8, &l, 0), 0);
	st = ns_stats(c, "learn", &i);
	/* 4 raw blocks, the basis, and two blocks of 4 coefficients a row (f16, int8) */
	cr_assert_lt(st->ns[i].bytes_stored, 4 * n + bytes + n / 4, "%llu",
		     (unsigned long long)st->ns[i].bytes_stored);
	cr_assert_eq(kvc_fetch(c, &k, 0, 8 << 20, &got), 0);
	cr_assert_eq(got.codec, KVC_CODEC_SPARSE);
	dense_of(stg, &L, back);
	double e = rel_err(orig, back, &L);

	cr_assert_lt(e, 0.01, "within f16 rounding of the coefficients: %g", e);
	cr_assert_eq(kvc_fetch(c, &k8, 0, 8 << 20, &got), 0);
	dense_of(stg, &L, back);
	e = rel_err(orig, back, &L);
	cr_assert_lt(e, 0.02, "int8 coefficients: %g", e);
	cr_assert_gt(e, 1e-3, "int8, not f16: %g", e);
	/* the bases' keys are the daemon's */
	struct kvc_key bk = { KVCP_BASIS_KEY_HI, 1 };

	cr_assert_eq(kvc_fetch(c, &bk, 0, 8 << 20, &got), -EPERM);
	cr_assert_eq(kvc_delete(c, &bk), -EPERM);
	cr_assert_eq(kvc_pin(c, &bk, 0), -EPERM);
	l.codec = (uint8_t)raw;
	cr_assert_eq(kvc_store(c, &bk, &l, 0), -EPERM);
	cr_assert_eq(kvc_evict(c, 0) >= 0, 1);
	cr_assert_eq(kvc_fetch(c, &k, 0, 8 << 20, &got), -ENOENT, "evicted");
	/* eviction took every block but the basis: a new block still has it */
	fill_sub(stg, &l, 78);
	l.codec = (uint8_t)lr;
	cr_assert_eq(kvc_store(c, &k, &l, 0), 0, "the basis outlived EVICT");
	/* the namespace's policy can be learned= too */
	cr_assert_eq(
		kvc_policy(c, "none:rank=8,learned=on", KVC_POLICY_NAMESPACE, why, sizeof(why)), 0,
		"%s", why);
	struct kvc_key kn = { 7, 102 };

	l.codec = 0;
	cr_assert_eq(kvc_store(c, &kn, &l, 0), 0);
	cr_assert_eq(kvc_fetch(c, &kn, 0, 8 << 20, &got), 0);
	cr_assert_eq(got.codec, KVC_CODEC_SPARSE);
	/* eight more bases: the first is dropped, and blocks that name it with it */
	l.codec = (uint8_t)raw;
	for (uint64_t j = 0; j < 4; j++) {
		struct kvc_key ki = { 7, j };

		fill_sub(stg, &l, 10 + j);
		cr_assert_eq(kvc_store(c, &ki, &l, 0), 0);
	}
	for (int v = 2; v <= 9; v++)
		cr_assert_eq(kvc_calibrate(c, 4, 99, NULL), v);
	st = ns_stats(c, "learn", &i);
	cr_assert_eq(st->ns_bases[i].count, 8, "the 8 newest");
	cr_assert_eq(st->ns_bases[i].newest, 9);
	cr_assert_eq(kvc_fetch(c, &k, 0, 8 << 20, &got), -ENOENT, "its basis is gone");
	size_t hits = 1;

	cr_assert_eq(kvc_lookup(c, &k, 1, &hits), 0);
	cr_assert_eq(hits, 0, "and so is the block");
	l.codec = (uint8_t)lr;
	cr_assert_eq(kvc_store(c, &k, &l, 0), 0, "under the newest basis");
	cr_assert_eq(kvc_fetch(c, &k, 0, 8 << 20, &got), 0);
	/* and from kvcctl */
	char out[256];

	cr_assert_eq(
		t_kvcctl(&D, "--ns learn calibrate --from-blocks 4 --energy 95", out, sizeof(out)),
		0, "%s", out);
	cr_assert_not_null(strstr(out, "basis 10 of namespace learn: "), "%s", out);
	char big[1 << 16];

	cr_assert_eq(t_kvcctl(&D, "stats --json", big, sizeof(big)), 0);
	cr_assert_not_null(strstr(big, "\"bases\": {\"count\": 8, \"newest\": 10,"), "%s", big);
	cr_assert_eq(t_kvcctl(&D, "stats --prometheus", big, sizeof(big)), 0);
	cr_assert_not_null(strstr(big, "kvcd_namespace_learned_basis_version{namespace=\"learn\"} "
				       "10\n"),
			   "%s", big);
	cr_assert_neq(t_kvcctl(&D, "--ns learn calibrate --energy 0", out, sizeof(out)), 0);
	cr_assert_not_null(strstr(out, "--energy"), "%s", out);
	cr_assert_neq(t_kvcctl(&D, "--ns nobody calibrate", out, sizeof(out)), 0);
	cr_assert_not_null(strstr(out, "no raw block"), "%s", out);
	free(orig);
	free(back);
	kvc_detach(c);
}

/* learned=on with kbits/vbits: CALIBRATE takes the engine's weights and RoPE base; keys are
 * learned at the positions their chains give, blocks of broken chains are not read, bad
 * weights are refused, and a block comes back at its bits' precision. */
Test(codec_ops, coded_coefficients_from_a_calibration_with_the_models_weights)
{
	kvc_client *c = t_attach(&D, "coded", 8 << 20);
	unsigned char *stg = kvc_staging(c, NULL);
	size_t n = kvc_layout_bytes(&L);
	struct kvc_layout l = L, got;
	float w[2 * 4] = { 8, 4, 2, 1, 1, 1, 1, 1 };
	uint64_t bytes = 0;
	char why[160];
	int raw = kvc_policy(c, "none", 0, why, sizeof(why));
	int k5 = kvc_policy(c, "none:rank=64,learned=on,kbits=5,vbits=5", 0, why, sizeof(why));
	int k8 = kvc_policy(c, "none:rank=64,learned=on,kbits=8,vbits=8", 0, why, sizeof(why));
	int ent = kvc_policy(c, "none:rank=64,learned=on,kbits=5,vbits=5,entropy=on", 0, why,
			     sizeof(why));
	struct kvc_key root = { 9, 1 }, mid = { 9, 2 }, tail = { 9, 3 };

	cr_assert_gt(raw, 0);
	cr_assert_gt(k5, 0, "%s", why);
	cr_assert_gt(k8, 0, "%s", why);
	l.codec = (uint8_t)raw;
	/* a chain of three; the middle one goes, so only the root's position is known */
	fill_sub(stg, &l, 31);
	cr_assert_eq(kvc_store_chained(c, &root, NULL, &l, 0), 0);
	fill_sub(stg, &l, 32);
	cr_assert_eq(kvc_store_chained(c, &mid, &root, &l, 0), 0);
	fill_sub(stg, &l, 33);
	cr_assert_eq(kvc_store_chained(c, &tail, &mid, &l, 0), 0);
	cr_assert_eq(kvc_delete(c, &root), 0);
	cr_assert_eq(kvc_calibrate_model(c, 0, 100, 10000, NULL, 0, &bytes), -ENOENT,
		     "no block whose position is known");
	cr_assert_eq(kvc_calibrate_model(c, 0, 100, 0, w, 3, &bytes), -EINVAL,
		     "weights for three layers, blocks of four");
	w[3] = 0;
	cr_assert_eq(kvc_calibrate_model(c, 0, 100, 0, w, 4, &bytes), -EINVAL, "a weight of 0");
	w[3] = 1;
	cr_assert_eq(kvc_calibrate_model(c, 0, 100, 0, NULL, 4, &bytes), -EINVAL);
	fill_sub(stg, &l, 34);
	cr_assert_eq(kvc_store_chained(c, &root, NULL, &l, 0), 0);
	cr_assert_eq(kvc_calibrate_model(c, 0, 10000, 0, w, 4, &bytes), -EINVAL, "energy");
	cr_assert_eq(kvc_calibrate_model(c, 0, 99, 0, w, 4, &bytes), 1);
	cr_assert_gt(bytes, 0);

	unsigned char *orig = malloc(n);
	uint16_t *back = malloc(n);
	struct kvc_key k = { 9, 100 }, kk = { 9, 101 }, ke = { 9, 102 };
	uint64_t stored[4];
	unsigned j;
	double e5, e8, ee;

	fill_sub(stg, &l, 77); /* a block calibration never saw */
	memcpy(orig, stg, n);
	/* each block's stored bytes: what the namespace's count grows by */
	stored[0] = ns_stats(c, "coded", &j)->ns[j].bytes_stored;
	l.codec = (uint8_t)k5;
	cr_assert_eq(kvc_store(c, &k, &l, 0), 0);
	stored[1] = ns_stats(c, "coded", &j)->ns[j].bytes_stored;
	l.codec = (uint8_t)k8;
	cr_assert_eq(kvc_store(c, &kk, &l, 0), 0);
	stored[2] = ns_stats(c, "coded", &j)->ns[j].bytes_stored;
	l.codec = (uint8_t)ent; /* sized by its values: the plan encodes it */
	cr_assert_gt(ent, 0, "%s", why);
	cr_assert_eq(kvc_store(c, &ke, &l, 0), 0);
	stored[3] = ns_stats(c, "coded", &j)->ns[j].bytes_stored;
	cr_assert_eq(kvc_fetch(c, &k, 0, 8 << 20, &got), 0);
	cr_assert_eq(got.codec, KVC_CODEC_SPARSE);
	dense_of(stg, &L, back);
	e5 = rel_err(orig, back, &L);
	cr_assert_eq(kvc_fetch(c, &kk, 0, 8 << 20, &got), 0);
	dense_of(stg, &L, back);
	e8 = rel_err(orig, back, &L);
	cr_assert_lt(e5, 0.05, "five bits a coefficient: %g", e5);
	cr_assert_lt(e8, e5 / 4, "eight bits: %g against %g", e8, e5);
	cr_assert_eq(kvc_fetch(c, &ke, 0, 8 << 20, &got), 0);
	dense_of(stg, &L, back);
	ee = rel_err(orig, back, &L);
	/* entropy=on: its steps are those of 5 bits without a range to fit, so on these values
	 * (spread evenly, not bell-shaped) it spends fewer bytes for a coarser step */
	cr_assert_lt(stored[3] - stored[2], stored[1] - stored[0], "%llu bytes against %llu",
		     (unsigned long long)(stored[3] - stored[2]),
		     (unsigned long long)(stored[1] - stored[0]));
	cr_assert_lt(ee, 2 * e5, "%g against %g", ee, e5);
	/* and from kvcctl */
	char out[256];

	cr_assert_eq(t_kvcctl(&D, "--ns coded calibrate --rope 10000 --weights 8,4,2,1,1,1,1,1",
			      out, sizeof(out)),
		     0, "%s", out);
	cr_assert_not_null(strstr(out, "basis 2 of namespace coded"), "%s", out);
	cr_assert_eq(t_kvcctl(&D, "--ns coded calibrate --weights 8,4,x", out, sizeof(out)), 2,
		     "%s", out);
	free(orig);
	free(back);
	kvc_detach(c);
}
