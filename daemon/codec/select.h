/* select.h - token selection and budget allocation (issue 5), as pure functions over one
 * block's keys and what the engine hands over, the way quant.c is for quantization.
 *
 * sel.c applies them to blocks. Keys are f32 rows of one (layer, KV head):
 * @keys[t * stride + c], c < d. */
#ifndef KVCD_SELECT_H
#define KVCD_SELECT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- scores: higher means keep ---------------------------------------------------------- */

/* SnapKV: the attention each token gets from an observation window. @q holds the window's
 * post-RoPE queries of the @g query heads that share this KV head (GQA), [g][w][d]; query i
 * sits at block position @qpos + i and sees keys 0..qpos + i (causal; a window after the
 * block sees all of it). With @lse ([g][w], each query's log-sum-exp of q.k / sqrt(d) over
 * every key it attended) the weights are its true softmax; with NULL, a softmax over the
 * block's keys it sees. Summed over the window and the group, then max-pooled over @kernel
 * neighbouring tokens (odd; 1: none). @score[t]. @tmp: t floats. */
void kvcd_score_snapkv(const float *keys, uint32_t stride, uint32_t t, uint32_t d,
		       const float *q, const float *lse, uint32_t g, uint32_t w, int64_t qpos,
		       uint32_t kernel, float *tmp, float *score);

/* Key-norm: the smaller a key's L2 norm, the higher its score (-||k||). */
void kvcd_score_keynorm(const float *keys, uint32_t stride, uint32_t t, uint32_t d,
			float *score);

/* StreamingLLM: recency (score = token index), so the top tokens are the most recent. */
void kvcd_score_recency(uint32_t t, float *score);

/* ---- which tokens -------------------------------------------------------------------------- */

/* Keep @n of @t tokens: the first @sink and the last @window always (as many as @n allows,
 * sinks first), then the highest @score among the rest (ties: the earlier token). Writes
 * the kept indices ascending to @keep[0..n). Returns n (clamped to t). @tmp: t uint32s. */
uint32_t kvcd_select_keep(const float *score, uint32_t t, uint32_t n, uint32_t sink,
			  uint32_t window, uint32_t *tmp, uint32_t *keep);

/* ---- budgets --------------------------------------------------------------------------------- */

/* PyramidKV: per-layer budgets falling linearly with depth from 2m - m/beta to m/beta, where
 * m = total / layers, summing to @total exactly (remainders go to the shallowest layers).
 * @beta >= 1 (PyramidKV: 20). */
void kvcd_budget_pyramid(uint64_t total, uint32_t layers, double beta, uint32_t *out);

/* Ada-KV: the @heads heads of a layer share @heads * @budget tokens. Each head's count is its
 * share n_i of the joint top-(heads * budget) of @score ([head][t]), pulled towards the
 * uniform budget: round(n_i (1 - alpha) + alpha budget), so no head gets less than
 * floor(alpha budget) (Ada-KV's floor; alpha in [0, 1]); counts are capped at @t and sum to
 * heads * budget exactly (budget <= t). @tmp: heads * t floats. */
void kvcd_budget_adakv(const float *score, uint32_t heads, uint32_t t, uint32_t budget,
		       double alpha, float *tmp, uint32_t *counts);

/* ---- Quest ------------------------------------------------------------------------------------ */

/* Channel-wise min and max of the keys. */
void kvcd_quest_minmax(const float *keys, uint32_t stride, uint32_t t, uint32_t d, float *mn,
		       float *mx);
/* Upper bound of q.k over every key k between @mn and @mx channel-wise:
 * sum_c max(q_c mn_c, q_c mx_c), summed in double and rounded up. */
float kvcd_quest_bound(const float *q, const float *mn, const float *mx, uint32_t d);

/* ---- Quest bounds of whole blocks (kept per stored block for SELECT) -------------------------- */

struct kvcp_layout;

/* A block's bounds are per page of @page tokens (the last page may be shorter), f16,
 * [layers][kv_heads][pages][min, max][head_dim]. */
uint32_t kvcd_quest_pages(const struct kvcp_layout *l, uint32_t page);
size_t kvcd_quest_bytes(const struct kvcp_layout *l, uint32_t page);
/* The bounds of the keys of the raw block @block (layout @l), each rounded outwards to f16
 * (min down, max up), so a bound computed from them is still a bound. @isa: enum kvcd_isa.
 * Returns 0 or -ENOMEM. */
int kvcd_quest_block(int isa, const struct kvcp_layout *l, uint32_t page, const void *block,
		     uint16_t *out);
/* The query split by sign, once per request: @pos = max(q, 0), @neg = min(q, 0). */
void kvcd_quest_prep(const float *q, uint32_t n, float *pos, float *neg);
/* A block's SELECT score at @layer for queries [q_heads][head_dim] (q_heads a multiple of
 * kv_heads; query head h reads KV head h / (q_heads / kv_heads)), given as kvcd_quest_prep's
 * halves and @l1, the largest L1 norm of a query head: the largest Quest bound over the
 * query heads and pages, over sqrt(head_dim). Never below the block's largest
 * q.k / sqrt(head_dim) (float rounding included). */
float kvcd_quest_score(int isa, const struct kvcp_layout *l, uint32_t page,
		       const uint16_t *bounds, uint32_t layer, const float *pos, const float *neg,
		       float l1, uint32_t q_heads);

/* ---- a block's SELECT summary: Quest bounds or representative keys ------------------------ */

#define KVCD_SUMMARY_QUEST 1	/* kvcd_quest_block's bounds: scores are upper bounds */
#define KVCD_SUMMARY_REPS 2	/* per page, the @reps keys of largest norm (InfLLM-style
				 * representatives): scores are their best q.k, not a bound */
#define KVCD_SUMMARY_REPS8 3	/* the same keys in int8 with a scale per key: half the
				 * bytes of REPS for a small error in the score */

/* First bytes of the summary kept after a block's data. */
struct kvcd_summary {
	uint8_t kind;		/* KVCD_SUMMARY_* */
	uint8_t page;		/* tokens per page, 1..255 */
	uint8_t reps;		/* REPS, REPS8: keys kept per page, 1..16 */
	uint8_t pad[5];		/* 0 */
};

/* Bytes of the summary of a block of layout @l, header included. */
size_t kvcd_summary_bytes(const struct kvcp_layout *l, const struct kvcd_summary *s);
/* Write the summary of the raw block @block to @out. Returns 0 or -ENOMEM. */
int kvcd_summary_make(int isa, const struct kvcp_layout *l, const struct kvcd_summary *s,
		      const void *block, void *out);
/* A SELECT request's queries [q_heads][head_dim], prepared once for every summary kind. */
struct kvcd_query {
	const float *q;		/* the caller's; must outlive this */
	uint32_t q_heads, head_dim;
	float *pos, *neg;	/* Quest: kvcd_quest_prep's halves */
	float l1;		/* Quest: the largest L1 norm of a query head, rounded up */
	float *qp;		/* REPS8: each head's channels padded to a multiple of 4 */
	int8_t *q8;		/* REPS8 on VNNI: each query head in int8, symmetric */
	float *q8_scale;	/* its scale (absmax / 127) */
	float *q8s4;		/* the scales, each four times, [q_heads + 3][4] */
	uint8_t *q8h;		/* q8 + 128 per channel group of 4, four times (once for each
				 * key of a group): [q_heads][groups][16] */
	void *buf;		/* all of the above */
};
/* Prepare @q (finite). Returns 0 or -ENOMEM; kvcd_query_fini frees what it holds. */
int kvcd_query_init(struct kvcd_query *x, const float *q, uint32_t q_heads, uint32_t head_dim);
void kvcd_query_fini(struct kvcd_query *x);

/* The SELECT score of a block from its summary at @layer, for queries @x (q_heads a multiple
 * of kv_heads; query head h reads KV head h / (q_heads / kv_heads)), over sqrt(head_dim):
 * Quest's bound (see kvcd_quest_score), or the best q.k over the representatives. With REPS8
 * on a CPU with AVX-512 VNNI the query is taken in int8 too; @isa | KVCD_SELECT_NO_VNNI
 * takes the AVX-512 F path there instead (tests). -INFINITY when the summary's header is not
 * one kvcd writes or the head_dim differs. */
#define KVCD_SELECT_NO_VNNI 0x100
float kvcd_summary_score(int isa, const struct kvcp_layout *l, const void *sum, uint32_t layer,
			 const struct kvcd_query *x);

#endif
