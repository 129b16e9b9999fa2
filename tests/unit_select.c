/* unit_select.c - token selection and budgets (daemon/codec/select.c): each selector keeps
 * exactly its budget and the tokens it must keep; PyramidKV's budgets sum to the total and
 * fall with depth; Ada-KV's sum to the layer budget and respect the floor; SnapKV's scores
 * follow the window's attention, causally and over the GQA group; Quest's bound is never below
 * the true maximum score of a block. */
#include <math.h>

#include "t_util.h"
#include "codec.h"
#include "select.h"

static uint64_t rng = 0x2545f4914f6cdd1dull;

static double urand(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (double)(rng >> 11) * 0x1p-53;
}

static float nrand(void)
{
	return (float)(sqrt(-2 * log(urand() + 1e-300)) * cos(6.283185307179586 * urand()));
}

Test(select, keep_is_exactly_the_budget_with_sinks_window_and_top_scores)
{
	enum { T = 100 };
	float score[T];
	uint32_t tmp[T], keep[T];

	for (int trial = 0; trial < 200; trial++) {
		uint32_t n = (uint32_t)(urand() * (T + 20)), sink = (uint32_t)(urand() * 8),
			 win = (uint32_t)(urand() * 30), m, want = n < T ? n : T;
		bool in[T] = { 0 };

		for (int i = 0; i < T; i++)
			score[i] = (float)urand();
		m = kvcd_select_keep(score, T, n, sink, win, tmp, keep);
		cr_assert_eq(m, want, "n %u: kept %u", n, m);
		for (uint32_t i = 0; i < m; i++) {
			cr_assert_lt(keep[i], T);
			if (i)
				cr_assert_gt(keep[i], keep[i - 1], "ascending, no repeats");
			in[keep[i]] = true;
		}
		uint32_t ns = sink < want ? sink : want, nw = win < want - ns ? win : want - ns;
		float worst_kept = INFINITY, best_dropped = -INFINITY;

		for (uint32_t k = 0; k < ns; k++)
			cr_assert(in[k], "sink %u kept", k);
		for (uint32_t k = T - nw; k < T; k++)
			cr_assert(in[k], "window token %u kept", k);
		for (uint32_t k = ns; k < T - nw; k++) {
			if (in[k] && score[k] < worst_kept)
				worst_kept = score[k];
			if (!in[k] && score[k] > best_dropped)
				best_dropped = score[k];
		}
		cr_assert_geq(worst_kept, best_dropped, "the rest are the top scores");
	}
}

Test(select, streamingllm_is_sinks_plus_the_most_recent)
{
	float score[64];
	uint32_t tmp[64], keep[64];

	kvcd_score_recency(64, score);
	cr_assert_eq(kvcd_select_keep(score, 64, 20, 4, 0, tmp, keep), 20);
	for (uint32_t i = 0; i < 4; i++)
		cr_assert_eq(keep[i], i);
	for (uint32_t i = 4; i < 20; i++)
		cr_assert_eq(keep[i], 64 - 20 + i, "slot %u: %u", i, keep[i]);
}

Test(select, keynorm_keeps_the_smallest_keys)
{
	float keys[16 * 4], score[16];
	uint32_t tmp[16], keep[16];

	for (int k = 0; k < 16; k++)
		for (int c = 0; c < 4; c++)
			keys[k * 4 + c] = (float)(k % 5 + 1) * (c % 2 ? 1.0f : -1.0f);
	kvcd_score_keynorm(keys, 4, 16, 4, score);
	cr_assert_float_eq(score[0], -2.0f, 1e-6);
	cr_assert_eq(kvcd_select_keep(score, 16, 4, 0, 0, tmp, keep), 4);
	for (int i = 0; i < 4; i++)
		cr_assert_eq(keep[i] % 5, 0, "token %u has norm 2, the smallest", keep[i]);
}

Test(select, snapkv_follows_the_window_causally_and_over_the_group)
{
	enum { T = 32, D = 8, W = 4 };
	float keys[T * D] = { 0 }, q[2 * W * D] = { 0 }, tmp[T], score[T];

	keys[10 * D + 0] = 1.0f; /* only token 10 and 29 have a key the queries can see */
	keys[29 * D + 1] = 1.0f;
	for (int i = 0; i < W; i++) {
		q[(0 * W + i) * D + 0] = 40.0f; /* head 0 of the group looks at token 10 */
		q[(1 * W + i) * D + 1] = 40.0f; /* head 1 at token 29 */
	}
	kvcd_score_snapkv(keys, D, T, D, q, NULL, 2, W, T - W, 1, tmp, score);
	float total = 0;

	for (int k = 0; k < T; k++)
		total += score[k];
	cr_assert_float_eq(total, 2.0f * W, 1e-3, "each query's softmax sums to 1");
	cr_assert_gt(score[10], 3.9f, "head 0: all four window queries");
	/* token 29 is inside the window (28..31): query 28 cannot see it */
	cr_assert_gt(score[29], 2.9f);
	cr_assert_lt(score[29], 3.1f, "causal: three of four queries see token 29");
	/* query 28 of head 1 sees nothing it matches: uniform over its 29 keys */
	cr_assert_float_eq(score[5], 1.0f / 29, 1e-4, "%g", score[5]);
	kvcd_score_snapkv(keys, D, T, D, q, NULL, 1, W, T - W, 3, tmp, score); /* head 0 alone, pooled */
	cr_assert_float_eq(score[9], score[10], 1e-6, "max pooling spreads to neighbours");
	cr_assert_float_eq(score[11], score[10], 1e-6);
	cr_assert_lt(score[12], 0.1f);
}

Test(select, snapkv_with_the_sequence_lse_is_each_query_share_of_attention)
{
	enum { T = 16, D = 4, W = 3 };
	float keys[T * D], q[W * D], lse[W], tmp[T], score[T], want[T] = { 0 };

	for (int i = 0; i < T * D; i++)
		keys[i] = nrand();
	for (int i = 0; i < W * D; i++)
		q[i] = nrand();
	for (int i = 0; i < W; i++) { /* the sequence had more keys than this block holds */
		double s = 0;

		for (int k = 0; k < T; k++) {
			double dot = 0;

			for (int c = 0; c < D; c++)
				dot += q[i * D + c] * keys[k * D + c];
			s += exp(dot / 2);
		}
		lse[i] = (float)log(s + 5.0); /* keys outside the block took a share */
	}
	for (int i = 0; i < W; i++)
		for (int k = 0; k < T; k++) {
			double dot = 0;

			for (int c = 0; c < D; c++)
				dot += q[i * D + c] * keys[k * D + c];
			want[k] += (float)exp(dot / 2 - lse[i]);
		}
	/* a window after the block: every query sees every key */
	kvcd_score_snapkv(keys, D, T, D, q, lse, 1, W, T + 40, 1, tmp, score);
	for (int k = 0; k < T; k++)
		cr_assert_float_eq(score[k], want[k], 1e-5 + 1e-4 * want[k], "token %d", k);
	/* a window before the block: nothing seen */
	kvcd_score_snapkv(keys, D, T, D, q, lse, 1, W, -W, 1, tmp, score);
	for (int k = 0; k < T; k++)
		cr_assert_eq(score[k], 0.0f);
}

Test(select, pyramid_budgets_sum_to_the_total_and_fall_with_depth)
{
	uint32_t b[40];

	for (int trial = 0; trial < 100; trial++) {
		uint32_t layers = 1 + (uint32_t)(urand() * 40);
		uint64_t total = (uint64_t)(urand() * 100000), sum = 0;

		kvcd_budget_pyramid(total, layers, 20, b);
		for (uint32_t l = 0; l < layers; l++) {
			sum += b[l];
			if (l)
				cr_assert_leq(b[l], b[l - 1] + 1, "falls with depth (rounding aside)");
		}
		cr_assert_eq(sum, total, "%u layers", layers);
		if (layers > 1 && total > 100 * layers)
			cr_assert_gt(b[0], 3 * b[layers - 1], "steep: beta 20");
	}
}

Test(select, adakv_budgets_sum_to_the_layer_and_respect_the_floor)
{
	enum { H = 8, T = 64 };
	float score[H * T], tmp[H * T];
	uint32_t counts[H];

	for (int trial = 0; trial < 100; trial++) {
		uint32_t budget = 1 + (uint32_t)(urand() * (T - 1)), sum = 0;
		double alpha = urand();

		for (int h = 0; h < H; h++) /* head h's scores are scaled by h: later heads win */
			for (int i = 0; i < T; i++)
				score[h * T + i] = (float)(urand() * (h + 1) * (h + 1));
		kvcd_budget_adakv(score, H, T, budget, alpha, tmp, counts);
		for (int h = 0; h < H; h++) {
			sum += counts[h];
			cr_assert_geq(counts[h], (uint32_t)floor(alpha * budget), "floor");
			cr_assert_leq(counts[h], T);
		}
		cr_assert_eq(sum, H * budget);
		if (alpha < 0.5 && budget < T / 2)
			cr_assert_gt(counts[H - 1], counts[0], "the head with more mass gets more");
	}
}

/* Quest: the bound of a block is at least q.k for every key in it, over many random blocks,
 * and is reached exactly when the block holds one key. */
Test(select, quest_bound_is_never_below_the_true_maximum)
{
	enum { D = 16, T = 24 };
	float keys[T * D], q[D], mn[D], mx[D];

	for (int trial = 0; trial < 2000; trial++) {
		uint32_t t = 1 + (uint32_t)(urand() * T);
		double best = -INFINITY;

		for (uint32_t i = 0; i < t * D; i++)
			keys[i] = nrand() * (i % D == 3 ? 10.0f : 1.0f);
		for (int c = 0; c < D; c++)
			q[c] = nrand();
		kvcd_quest_minmax(keys, D, t, D, mn, mx);
		for (uint32_t k = 0; k < t; k++) {
			double dot = 0;

			for (int c = 0; c < D; c++)
				dot += (double)q[c] * keys[k * D + c];
			best = dot > best ? dot : best;
		}
		float bound = kvcd_quest_bound(q, mn, mx, D);

		cr_assert_geq((double)bound, best, "trial %d: bound %g < max %g", trial, bound, best);
		if (t == 1)
			cr_assert_leq((double)bound - best, 1e-5 * (fabs(best) + 1), "tight for one key");
	}
}

/* Stored bounds (f16, per page) and the SELECT score: for random blocks in f16 and f32, pages
 * of 1, 3 and 16 tokens, head_dim 8, 16 and 24 and every ISA, the score is never below the
 * largest q.k / sqrt(d) over the block's keys and query heads; with one-token pages of f16
 * keys it is that maximum up to rounding; the ISAs agree. */
Test(select, stored_bounds_score_never_below_the_best_key)
{
	static const uint32_t dims[] = { 8, 16, 24 }, pages[] = { 1, 3, 16 };
	static float raw[2 * 4 * 2 * 20 * 24];
	static uint16_t half[sizeof(raw) / 4], bounds[4096];
	float q[8 * 24], pos[8 * 24], neg[8 * 24];

	for (int trial = 0; trial < 300; trial++) {
		struct kvcp_layout l = { .dtype = trial % 2 ? KVCP_F32 : KVCP_F16, .layers = 2,
					 .kv_heads = 2, .head_dim = (uint16_t)dims[trial % 3],
					 .tokens = 1 + (uint32_t)(urand() * 20) };
		uint32_t page = pages[(trial / 3) % 3], d = l.head_dim, qh = 4 + 4 * (trial % 2);
		uint32_t layer = (uint32_t)(urand() * 2), g = qh / 2;
		size_t n = (size_t)2 * 2 * l.tokens * 2 * d;
		double best = -INFINITY;
		float l1 = 0, sc[3];

		for (size_t i = 0; i < n; i++) {
			raw[i] = nrand() * (i % d == 1 ? 8.0f : 1.0f);
			half[i] = kvcd_f32_to_f16(raw[i]);
			if (l.dtype == KVCP_F16)
				raw[i] = kvcd_f16_to_f32(half[i]);
		}
		for (uint32_t i = 0; i < qh * d; i++)
			q[i] = nrand();
		for (uint32_t j = 0; j < qh; j++) {
			float a = 0;

			for (uint32_t c = 0; c < d; c++)
				a += fabsf(q[j * d + c]);
			l1 = a > l1 ? a : l1;
		}
		for (uint32_t t = 0; t < l.tokens; t++) /* K of @layer: [token][head][dim] */
			for (uint32_t j = 0; j < qh; j++) {
				const float *k = raw + ((size_t)layer * 2 * l.tokens + t) * 2 * d +
						 (j / g) * d;
				double dot = 0;

				for (uint32_t c = 0; c < d; c++)
					dot += (double)q[j * d + c] * k[c];
				best = fmax(best, dot / sqrt(d));
			}
		kvcd_quest_prep(q, qh * d, pos, neg);
		cr_assert_leq(kvcd_quest_bytes(&l, page), sizeof(bounds));
		for (enum kvcd_isa isa = 0; isa <= kvcd_isa_best(); isa++) {
			cr_assert_eq(kvcd_quest_block(isa, &l, page, l.dtype == KVCP_F16 ?
						      (const void *)half : (const void *)raw, bounds), 0);
			sc[isa] = kvcd_quest_score(isa, &l, page, bounds, layer, pos, neg, l1, qh);
			cr_assert_geq((double)sc[isa], best, "trial %d isa %d: %g < %g", trial, isa,
				      sc[isa], best);
			if (page == 1 && l.dtype == KVCP_F16)
				cr_assert_leq((double)sc[isa] - best, 1e-4 * (fabs(best) + 1),
					      "one-token pages of f16 keys: tight");
			cr_assert_float_eq(sc[isa], sc[0], 1e-4 * (fabsf(sc[0]) + 1), "isa %d", isa);
		}
	}
}

/* Representative keys: a summary with at least as many reps as a page has tokens scores the
 * block's exact best q.k (its keys in f16); with fewer it keeps the largest-norm keys, so a
 * query along the largest key finds it; a header kvcd does not write scores -inf. */
Test(select, representative_keys_keep_the_largest_and_score_their_best_dot)
{
	enum { TT = 12, DD = 16 };
	struct kvcp_layout l = { .dtype = KVCP_F16, .layers = 1, .kv_heads = 2, .head_dim = DD,
				 .tokens = TT };
	static uint16_t block[2 * TT * 2 * DD], sum[4096];
	float q[4 * DD];
	struct kvcd_query x;
	struct kvcd_summary all = { .kind = KVCD_SUMMARY_REPS, .page = 4, .reps = 4 };
	struct kvcd_summary one = { .kind = KVCD_SUMMARY_REPS, .page = 16, .reps = 1 };

	for (int trial = 0; trial < 50; trial++) {
		double best = -INFINITY;

		for (size_t i = 0; i < sizeof(block) / 2; i++)
			block[i] = kvcd_f32_to_f16(nrand());
		for (int i = 0; i < 4 * DD; i++)
			q[i] = nrand();
		cr_assert_eq(kvcd_query_init(&x, q, 4, DD), 0);
		for (int t = 0; t < TT; t++)
			for (int j = 0; j < 4; j++) {
				double dot = 0;

				for (int c = 0; c < DD; c++)
					dot += (double)q[j * DD + c] *
					       kvcd_f16_to_f32(block[(t * 2 + j / 2) * DD + c]);
				best = fmax(best, dot / 4);
			}
		cr_assert_leq(kvcd_summary_bytes(&l, &all), sizeof(sum));
		for (enum kvcd_isa isa = 0; isa <= kvcd_isa_best(); isa++) {
			cr_assert_eq(kvcd_summary_make(isa, &l, &all, block, sum), 0);
			cr_assert_float_eq(kvcd_summary_score(isa, &l, sum, 0, &x), best,
					   1e-4 * (fabs(best) + 1), "every key kept: the exact best");
		}
		kvcd_query_fini(&x);
	}
	/* one rep per page of 16: the key of largest norm, here token 7 of head 1 */
	for (size_t i = 0; i < sizeof(block) / 2; i++)
		block[i] = kvcd_f32_to_f16(0.1f * nrand());
	for (int c = 0; c < DD; c++)
		block[(7 * 2 + 1) * DD + c] = kvcd_f32_to_f16(c % 2 ? 3.0f : -3.0f);
	memset(q, 0, sizeof(q));
	for (int c = 0; c < DD; c++)
		q[2 * DD + c] = c % 2 ? 1.0f : -1.0f; /* query head 2 reads KV head 1 */
	cr_assert_eq(kvcd_query_init(&x, q, 4, DD), 0);
	for (enum kvcd_isa isa = 0; isa <= kvcd_isa_best(); isa++) {
		cr_assert_eq(kvcd_summary_make(isa, &l, &one, block, sum), 0);
		cr_assert_float_eq(kvcd_summary_score(isa, &l, sum, 0, &x), 3.0f * DD / 4, 1e-3);
		one.kind = KVCD_SUMMARY_REPS8; /* int8: the same key, to its rounding */
		cr_assert_eq(kvcd_summary_make(isa, &l, &one, block, sum), 0);
		cr_assert_float_eq(kvcd_summary_score(isa, &l, sum, 0, &x), 3.0f * DD / 4, 1e-2);
		one.kind = KVCD_SUMMARY_REPS;
	}
	sum[0] = 7; /* not a summary kind */
	cr_assert_eq(kvcd_summary_score(KVCD_ISA_SCALAR, &l, sum, 0, &x), -INFINITY);
	kvcd_query_fini(&x);
}

/* int8 representatives (REPS8): with every key kept, the score is the exact best q.k to within
 * the rounding of keys and, on VNNI, of the query to int8: |q|_1 max|k| / 254 + |k|_1 max|q|
 * / 254 per dot. Head dims that leave a tail to every ISA (12, 16, 72), 1, 2 and 4 query heads
 * per KV head, every ISA; the result never lies outside that band. */
Test(select, int8_representatives_score_the_best_dot_within_their_rounding)
{
	/* Every key is a representative (reps >= page), so the score is the best q.k of them
	 * all up to int8 rounding. Shapes: head_dim on and off multiples of 4, 16 and 64; 1, 2,
	 * 3, 4 and 8 query heads a KV head; 8 keys, or 9 (pages of 3, short last page), so the
	 * key groups of 4 are padded. */
	enum { TT = 8, DMAX = 128, QHMAX = 16 };
	static const uint32_t dims[] = { 12, 16, 20, 72, 128, 7 };
	static const uint32_t qhs[] = { 2, 4, 6, 8, 16 };
	static uint16_t block[2 * TT * 2 * DMAX];
	static uint8_t sum[8 + 2 * 12 * (DMAX + 8)];
	static float q[QHMAX * DMAX];

	for (int trial = 0; trial < 90; trial++) {
		uint32_t d = dims[trial % 6], qh = qhs[trial / 6 % 5], g = qh / 2;
		struct kvcd_summary all = { .kind = KVCD_SUMMARY_REPS8, .page = trial % 2 ? 3 : 4,
					    .reps = trial % 2 ? 3 : 4 };
		struct kvcp_layout l = { .dtype = KVCP_F16, .layers = 1, .kv_heads = 2,
					 .head_dim = (uint16_t)d, .tokens = TT };
		double best = -INFINITY, tol = 0;
		struct kvcd_query x;

		for (size_t i = 0; i < 2 * TT * 2 * d; i++)
			block[i] = kvcd_f32_to_f16(nrand() * (1 + trial % 4));
		for (uint32_t i = 0; i < qh * d; i++)
			q[i] = nrand();
		cr_assert_eq(kvcd_query_init(&x, q, qh, d), 0);
		for (uint32_t t = 0; t < TT; t++)
			for (uint32_t j = 0; j < qh; j++) {
				const uint16_t *k = block + (t * 2 + j / g) * d;
				double dot = 0, q1 = 0, k1 = 0, qm = 0, km = 0;

				for (uint32_t c = 0; c < d; c++) {
					double kc = kvcd_f16_to_f32(k[c]), qc = q[j * d + c];

					dot += qc * kc;
					q1 += fabs(qc);
					k1 += fabs(kc);
					qm = fmax(qm, fabs(qc));
					km = fmax(km, fabs(kc));
				}
				best = fmax(best, dot / sqrt(d));
				tol = fmax(tol, (q1 * km + k1 * qm) / 254 * 1.01 / sqrt(d));
			}
		cr_assert_leq(kvcd_summary_bytes(&l, &all), sizeof(sum));
		for (int isa = 0; isa <= (int)kvcd_isa_best() + 1; isa++) {
			/* one past the best: AVX-512 F where VNNI would be taken */
			int as = isa > (int)kvcd_isa_best() ? (int)kvcd_isa_best() | KVCD_SELECT_NO_VNNI
							   : isa;
			float sc;

			cr_assert_eq(kvcd_summary_make(as & 0xff, &l, &all, block, sum), 0);
			sc = kvcd_summary_score(as, &l, sum, 0, &x);
			cr_assert_leq(fabs(sc - best), tol + 1e-5, "trial %d d %u g %u isa %#x: %g vs "
				      "%g (band %g)", trial, d, g, as, sc, best, tol);
		}
		kvcd_query_fini(&x);
	}
}
