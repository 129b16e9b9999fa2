/* unit_summary.c - SELECT summaries (daemon/codec/summary.c): Quest's bound is never below
 * the true maximum score of a block; representative keys, in f16 and int8, score their best
 * dot product (within the int8 rounding) on every ISA, VNNI included where the CPU has it. */
#include <math.h>

#include "t_util.h"
#include "internal.h"

/* Quest: the bound of a block is at least q.k for every key in it, over many random blocks,
 * and is reached exactly when the block holds one key. */
Test(summary, quest_bound_is_never_below_the_true_maximum)
{
	enum {
		D = 16,
		T = 24
	};
	float keys[T * D], q[D], mn[D], mx[D];

	for (int trial = 0; trial < 2000; trial++) {
		uint32_t t = 1 + (uint32_t)(t_urand() * T);
		double best = -INFINITY;

		for (uint32_t i = 0; i < t * D; i++)
			keys[i] = t_nrand() * (i % D == 3 ? 10.0f : 1.0f);
		for (int c = 0; c < D; c++)
			q[c] = t_nrand();
		kvcd_quest_minmax(keys, D, t, D, mn, mx);
		for (uint32_t k = 0; k < t; k++) {
			double dot = 0;

			for (int c = 0; c < D; c++)
				dot += (double)q[c] * keys[k * D + c];
			best = dot > best ? dot : best;
		}
		float bound = kvcd_quest_bound(q, mn, mx, D);

		cr_assert_geq((double)bound, best, "trial %d: bound %g < max %g", trial, bound,
			      best);
		if (t == 1)
			cr_assert_leq((double)bound - best, 1e-5 * (fabs(best) + 1),
				      "tight for one key");
	}
}

/* Stored bounds (f16, per page) and the SELECT score: for random blocks in f16 and f32, pages
 * of 1, 3 and 16 tokens, head_dim 8, 16 and 24 and every ISA, the score is never below the
 * largest q.k / sqrt(d) over the block's keys and query heads; with one-token pages of f16
 * keys it is that maximum up to rounding; the ISAs agree. */
Test(summary, stored_bounds_score_never_below_the_best_key)
{
	static const uint32_t dims[] = { 8, 16, 24 }, pages[] = { 1, 3, 16 };
	static float raw[2 * 4 * 2 * 20 * 24];
	static uint16_t half[sizeof(raw) / 4], bounds[4096];
	float q[8 * 24], pos[8 * 24], neg[8 * 24];

	for (int trial = 0; trial < 300; trial++) {
		struct kvcp_layout l = { .dtype = trial % 2 ? KVCP_F32 : KVCP_F16,
					 .layers = 2,
					 .kv_heads = 2,
					 .head_dim = (uint16_t)dims[trial % 3],
					 .tokens = 1 + (uint32_t)(t_urand() * 20) };
		uint32_t page = pages[(trial / 3) % 3], d = l.head_dim, qh = 4 + 4 * (trial % 2);
		uint32_t layer = (uint32_t)(t_urand() * 2), g = qh / 2;
		size_t n = (size_t)2 * 2 * l.tokens * 2 * d;
		double best = -INFINITY;
		float l1 = 0, sc[KVCD_ISA_AVX512_VNNI + 1];

		for (size_t i = 0; i < n; i++) {
			raw[i] = t_nrand() * (i % d == 1 ? 8.0f : 1.0f);
			half[i] = kvcd_f32_to_f16(raw[i]);
			if (l.dtype == KVCP_F16)
				raw[i] = kvcd_f16_to_f32(half[i]);
		}
		for (uint32_t i = 0; i < qh * d; i++)
			q[i] = t_nrand();
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
			cr_assert_eq(kvcd_quest_block(isa, &l, page,
						      l.dtype == KVCP_F16 ? (const void *)half
									  : (const void *)raw,
						      bounds),
				     0);
			sc[isa] = kvcd_quest_score(isa, &l, page, bounds, layer, pos, neg, l1, qh);
			cr_assert_geq((double)sc[isa], best, "trial %d isa %d: %g < %g", trial, isa,
				      sc[isa], best);
			if (page == 1 && l.dtype == KVCP_F16)
				cr_assert_leq((double)sc[isa] - best, 1e-4 * (fabs(best) + 1),
					      "one-token pages of f16 keys: tight");
			cr_assert_float_eq(sc[isa], sc[0], 1e-4 * (fabsf(sc[0]) + 1), "isa %d",
					   isa);
		}
	}
}

/* Representative keys: a summary with at least as many reps as a page has tokens scores the
 * block's exact best q.k (its keys in f16); with fewer it keeps the largest-norm keys, so a
 * query along the largest key finds it; a header kvcd does not write scores -inf. */
Test(summary, representative_keys_keep_the_largest_and_score_their_best_dot)
{
	enum {
		TT = 12,
		DD = 16
	};
	struct kvcp_layout l = {
		.dtype = KVCP_F16, .layers = 1, .kv_heads = 2, .head_dim = DD, .tokens = TT
	};
	static uint16_t block[2 * TT * 2 * DD], sum[4096];
	float q[4 * DD];
	struct kvcd_query x;
	struct kvcd_summary all = { .kind = KVCD_SUMMARY_REPS, .page = 4, .reps = 4 };
	struct kvcd_summary one = { .kind = KVCD_SUMMARY_REPS, .page = 16, .reps = 1 };

	for (int trial = 0; trial < 50; trial++) {
		double best = -INFINITY;

		for (size_t i = 0; i < sizeof(block) / 2; i++)
			block[i] = kvcd_f32_to_f16(t_nrand());
		for (int i = 0; i < 4 * DD; i++)
			q[i] = t_nrand();
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
			cr_assert_float_eq(kvcd_codec_score(isa, &l, sum, 0, &x), best,
					   1e-4 * (fabs(best) + 1),
					   "every key kept: the exact best");
		}
		kvcd_query_fini(&x);
	}
	/* one rep per page of 16: the key of largest norm, here token 7 of head 1 */
	for (size_t i = 0; i < sizeof(block) / 2; i++)
		block[i] = kvcd_f32_to_f16(0.1f * t_nrand());
	for (int c = 0; c < DD; c++)
		block[(7 * 2 + 1) * DD + c] = kvcd_f32_to_f16(c % 2 ? 3.0f : -3.0f);
	memset(q, 0, sizeof(q));
	for (int c = 0; c < DD; c++)
		q[2 * DD + c] = c % 2 ? 1.0f : -1.0f; /* query head 2 reads KV head 1 */
	cr_assert_eq(kvcd_query_init(&x, q, 4, DD), 0);
	for (enum kvcd_isa isa = 0; isa <= kvcd_isa_best(); isa++) {
		cr_assert_eq(kvcd_summary_make(isa, &l, &one, block, sum), 0);
		cr_assert_float_eq(kvcd_codec_score(isa, &l, sum, 0, &x), 3.0f * DD / 4, 1e-3);
		one.kind = KVCD_SUMMARY_REPS8; /* int8: the same key, to its rounding */
		cr_assert_eq(kvcd_summary_make(isa, &l, &one, block, sum), 0);
		cr_assert_float_eq(kvcd_codec_score(isa, &l, sum, 0, &x), 3.0f * DD / 4, 1e-2);
		one.kind = KVCD_SUMMARY_REPS;
	}
	sum[0] = 7; /* not a summary kind */
	cr_assert_eq(kvcd_codec_score(KVCD_ISA_SCALAR, &l, sum, 0, &x), -INFINITY);
	kvcd_query_fini(&x);
}

/* int8 representatives (REPS8): with every key kept, the score is the exact best q.k to within
 * the rounding of keys and, on VNNI, of the query to int8: |q|_1 max|k| / 254 + |k|_1 max|q|
 * / 254 per dot. Head dims that leave a tail to every ISA (12, 16, 72), 1, 2 and 4 query heads
 * per KV head, every ISA; the result never lies outside that band. */
Test(summary, int8_representatives_score_the_best_dot_within_their_rounding)
{
	/* Every key is a representative (reps >= page), so the score is the best q.k of them
	 * all up to int8 rounding. Shapes: head_dim on and off multiples of 4, 16 and 64; 1, 2,
	 * 3, 4 and 8 query heads a KV head; 8 keys, or 9 (pages of 3, short last page), so the
	 * key groups of 4 are padded. */
	enum {
		TT = 8,
		DMAX = 128,
		QHMAX = 16
	};
	static const uint32_t dims[] = { 12, 16, 20, 72, 128, 7 };
	static const uint32_t qhs[] = { 2, 4, 6, 8, 16 };
	static uint16_t block[2 * TT * 2 * DMAX];
	static uint8_t sum[8 + 2 * 12 * (DMAX + 8)];
	static float q[QHMAX * DMAX];

	for (int trial = 0; trial < 90; trial++) {
		uint32_t d = dims[trial % 6], qh = qhs[trial / 6 % 5], g = qh / 2;
		struct kvcd_summary all = { .kind = KVCD_SUMMARY_REPS8,
					    .page = trial % 2 ? 3 : 4,
					    .reps = trial % 2 ? 3 : 4 };
		struct kvcp_layout l = { .dtype = KVCP_F16,
					 .layers = 1,
					 .kv_heads = 2,
					 .head_dim = (uint16_t)d,
					 .tokens = TT };
		double best = -INFINITY, tol = 0;
		struct kvcd_query x;

		for (size_t i = 0; i < 2 * TT * 2 * d; i++)
			block[i] = kvcd_f32_to_f16(t_nrand() * (1 + trial % 4));
		for (uint32_t i = 0; i < qh * d; i++)
			q[i] = t_nrand();
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
		/* AVX-512 F and, where the CPU has it, VNNI each take their own kernel */
		for (enum kvcd_isa isa = 0; isa <= kvcd_isa_best(); isa++) {
			float sc;

			cr_assert_eq(kvcd_summary_make(isa, &l, &all, block, sum), 0);
			sc = kvcd_codec_score(isa, &l, sum, 0, &x);
			cr_assert_leq(fabs(sc - best), tol + 1e-5,
				      "trial %d d %u g %u isa %s: %g vs "
				      "%g (band %g)",
				      trial, d, g, kvcd_isa_name(isa), sc, best, tol);
		}
		kvcd_query_fini(&x);
	}
}
