/* unit_scores.c - token selection scores and budgets (daemon/codec/scores.c): each selector
 * keeps exactly its budget and the tokens it must keep; PyramidKV's budgets sum to the total
 * and fall with depth; Ada-KV's sum to the layer budget and respect the floor; SnapKV's
 * scores follow the window's attention, causally and over the GQA group. */
#include <math.h>

#include "t_util.h"
#include "internal.h"

Test(scores, keep_is_exactly_the_budget_with_sinks_window_and_top_scores)
{
	enum {
		T = 100
	};
	float score[T];
	uint32_t tmp[T], keep[T];

	for (int trial = 0; trial < 200; trial++) {
		uint32_t n = (uint32_t)(t_urand() * (T + 20)), sink = (uint32_t)(t_urand() * 8),
			 win = (uint32_t)(t_urand() * 30), m, want = n < T ? n : T;
		bool in[T] = { 0 };

		for (int i = 0; i < T; i++)
			score[i] = (float)t_urand();
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

Test(scores, streamingllm_is_sinks_plus_the_most_recent)
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

Test(scores, keynorm_keeps_the_smallest_keys)
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

Test(scores, snapkv_follows_the_window_causally_and_over_the_group)
{
	enum {
		T = 32,
		D = 8,
		W = 4
	};
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
	kvcd_score_snapkv(keys, D, T, D, q, NULL, 1, W, T - W, 3, tmp,
			  score); /* head 0 alone, pooled */
	cr_assert_float_eq(score[9], score[10], 1e-6, "max pooling spreads to neighbours");
	cr_assert_float_eq(score[11], score[10], 1e-6);
	cr_assert_lt(score[12], 0.1f);
}

Test(scores, snapkv_with_the_sequence_lse_is_each_query_share_of_attention)
{
	enum {
		T = 16,
		D = 4,
		W = 3
	};
	float keys[T * D], q[W * D], lse[W], tmp[T], score[T], want[T] = { 0 };

	for (int i = 0; i < T * D; i++)
		keys[i] = t_nrand();
	for (int i = 0; i < W * D; i++)
		q[i] = t_nrand();
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

Test(scores, pyramid_budgets_sum_to_the_total_and_fall_with_depth)
{
	uint32_t b[40];

	for (int trial = 0; trial < 100; trial++) {
		uint32_t layers = 1 + (uint32_t)(t_urand() * 40);
		uint64_t total = (uint64_t)(t_urand() * 100000), sum = 0;

		kvcd_budget_pyramid(total, layers, 20, b);
		for (uint32_t l = 0; l < layers; l++) {
			sum += b[l];
			if (l)
				cr_assert_leq(b[l], b[l - 1] + 1,
					      "falls with depth (rounding aside)");
		}
		cr_assert_eq(sum, total, "%u layers", layers);
		if (layers > 1 && total > 100 * layers)
			cr_assert_gt(b[0], 3 * b[layers - 1], "steep: beta 20");
	}
}

Test(scores, adakv_budgets_sum_to_the_layer_and_respect_the_floor)
{
	enum {
		H = 8,
		T = 64
	};
	float score[H * T], tmp[H * T];
	uint32_t counts[H];

	for (int trial = 0; trial < 100; trial++) {
		uint32_t budget = 1 + (uint32_t)(t_urand() * (T - 1)), sum = 0;
		double alpha = t_urand();

		for (int h = 0; h < H; h++) /* head h's scores are scaled by h: later heads win */
			for (int i = 0; i < T; i++)
				score[h * T + i] = (float)(t_urand() * (h + 1) * (h + 1));
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

/* Head roles: the heads whose attention stays on the sinks and the window keep just those;
 * the retrieval heads share the rest of the layer's budget, up to the block each. */
Test(scores, head_budgets_give_streaming_heads_their_window_and_the_rest_to_retrieval)
{
	/* 4 heads of 64 tokens, 16 each on average: two look far (0.6, 0.8), two barely */
	const float frac[4] = { 0.02f, 0.6f, 0.01f, 0.8f };
	uint32_t counts[4], sum = 0;

	kvcd_budget_heads(frac, 4, 64, 16, 8, 0.1, counts);
	cr_assert_eq(counts[0], 8, "streaming head: sinks and window (%u)", counts[0]);
	cr_assert_eq(counts[2], 8);
	cr_assert_eq(counts[1], 24, "retrieval heads share the rest (%u)", counts[1]);
	cr_assert_eq(counts[3], 24);
	/* no head is streaming: uniform */
	const float even[4] = { 0.5f, 0.5f, 0.5f, 0.5f };

	kvcd_budget_heads(even, 4, 64, 16, 8, 0.1, counts);
	for (int h = 0; h < 4; h++)
		cr_assert_eq(counts[h], 16);
	/* a retrieval head is capped at the block; the others take what it cannot */
	const float one[4] = { 0.0f, 0.0f, 0.9f, 0.3f };

	kvcd_budget_heads(one, 4, 40, 30, 4, 0.1, counts);
	for (int h = 0; h < 4; h++)
		sum += counts[h];
	cr_assert_eq(counts[0], 4);
	cr_assert_eq(counts[1], 4);
	cr_assert_eq(counts[2], 40, "capped at the block (%u)", counts[2]);
	cr_assert_eq(counts[3], 40);
	cr_assert_eq(sum, 88, "all the block allows: %u", sum);
	/* the last head is never streaming, even when every head keeps to its window */
	const float none[2] = { 0.0f, 0.0f };

	kvcd_budget_heads(none, 2, 64, 16, 8, 0.1, counts);
	cr_assert_eq(counts[0] + counts[1], 32);
	cr_assert(counts[0] == 8 || counts[1] == 8);
}

/* SnapKV's vector dot products give the scalar loop's floats: every score equal, for block
 * lengths around the vector widths, causal windows inside and after the block, with and
 * without the sequence's lse. */
Test(scores, snapkv_vector_path_equals_the_scalar_one)
{
	static const uint32_t ts[] = { 5, 16, 17, 63, 64, 65, 130 }, ds[] = { 8, 64, 128 };
	uint64_t x = 12345;

	for (size_t ti = 0; ti < sizeof(ts) / sizeof(ts[0]); ti++)
		for (size_t di = 0; di < sizeof(ds) / sizeof(ds[0]); di++) {
			uint32_t t = ts[ti], d = ds[di], g = 2, w = 6, stride = 3 * d;
			float *keys = malloc((size_t)t * stride * 4),
			      *q = malloc((size_t)g * w * d * 4);
			float lse[12], tmp[130], a[130], b[130];

			for (size_t i = 0; i < (size_t)t * stride; i++) {
				x = x * 6364136223846793005ull + 1442695040888963407ull;
				keys[i] = (float)((int64_t)(x >> 40) - (1 << 23)) /
					  (float)(1 << 21);
			}
			for (size_t i = 0; i < (size_t)g * w * d; i++) {
				x = x * 6364136223846793005ull + 1442695040888963407ull;
				q[i] = (float)((int64_t)(x >> 40) - (1 << 23)) / (float)(1 << 22);
			}
			for (int i = 0; i < 12; i++)
				lse[i] = 3.0f + (float)i / 7;
			for (int64_t qpos = -3; qpos <= (int64_t)t; qpos += (int64_t)t / 2 + 1)
				for (int l = 0; l < 2; l++) {
					kvcd_scores_simd = false;
					kvcd_score_snapkv(keys, stride, t, d, q, l ? lse : NULL, g,
							  w, qpos, 1, tmp, a);
					kvcd_scores_simd = true;
					kvcd_score_snapkv(keys, stride, t, d, q, l ? lse : NULL, g,
							  w, qpos, 1, tmp, b);
					cr_assert_eq(memcmp(a, b, t * 4), 0,
						     "t %u d %u qpos %lld lse %d", t, d,
						     (long long)qpos, l);
				}
			free(keys);
			free(q);
		}
}

/* SnapKV's own exponential (the same float on every path) is e^x to a few ulps over the range
 * softmax weights take, 0 far below it. */
Test(scores, snapkv_exponential_is_accurate)
{
	float key = 1.0f, tmp[1], score[1];

	for (double x = -86.0; x <= 88.0; x += 0.37) {
		float q = (float)x, lse = 0.0f;
		double want = exp((double)q);

		kvcd_score_snapkv(&key, 1, 1, 1, &q, &lse, 1, 1, 0, 1, tmp, score);
		cr_assert_leq(fabs(score[0] - want), want * 5e-7, "e^%g: %g against %g", x,
			      (double)score[0], want);
	}
	float q = -100.0f, lse = 0.0f;

	kvcd_score_snapkv(&key, 1, 1, 1, &q, &lse, 1, 1, 0, 1, tmp, score);
	cr_assert_eq(score[0], 0.0f);
}
