/* internal.h - what the codec's own files share; nothing outside daemon/codec/ includes it
 * except the unit tests. The library's interface is codec.h.
 *
 * Who calls whom (no file calls back up this list):
 *   codec.c -> sparse.c -> lowrank.c, minicache.c, scores.c -> units.c -> quant.c -> convert.c
 *   codec.c -> summary.c -> scores.c;  policy.c is called by all and calls none of them
 */
#ifndef KVCD_CODEC_INTERNAL_H
#define KVCD_CODEC_INTERNAL_H

#include "codec.h"
#include "gpujob.h"
#include "quant.h"

/* ---- codec.c: the header every encoded block starts with ---------------------------------- */

#define KVCD_CODEC_MAGIC 0x3151564bu /* "KVQ1" */
#define KVCD_CODEC_VERSION \
	5 /* 2: groups longer than head_dim span heads; rope;
				 * 3: kivi resid; 4: params=u8; 5: token selection */
#define KVCD_CODEC_F_SCORES 1u

/* First bytes of every encoded block. */
struct kvcd_codec_hdr {
	uint32_t magic;
	uint16_t version; /* KVCD_CODEC_VERSION */
	uint16_t flags;	  /* KVCD_CODEC_F_* */
	struct kvcd_policy pol;
	struct kvcp_layout layout; /* the engine's layout (codec 0) */
	uint32_t pos;		   /* position of the block's first token in its sequence */
	uint32_t reserved;	   /* 0; learned=: the version of the basis it names */
	uint64_t bytes;		   /* encoded size, this header included */
};

/* ---- units.c ---------------------------------------------------------------------------- */

/* units.c: the units of a block without the header, for codec.c and sparse.c: @p's codec (NONE: the raw bytes). */
uint64_t kvcd_units_size(const struct kvcd_policy *p, const struct kvcp_layout *l, bool scores,
			 uint32_t pos);
int kvcd_units_encode(enum kvcd_isa isa, const struct kvcd_policy *p, const struct kvcp_layout *l,
		      uint32_t pos, const void *src, const float *scores, void *dst);
int kvcd_units_decode(enum kvcd_isa isa, const struct kvcd_policy *p, const struct kvcp_layout *l,
		      uint32_t pos, bool scores, const void *in, void *dst);

/* The block of @p on @l at @pos as the GPU kernels see it (gpujob.h); -ENOTSUP when it needs
 * the CPU codecs. */
int kvcd_units_gpu_job(const struct kvcd_policy *p, const struct kvcp_layout *l, uint32_t pos,
		       bool scores, struct kvcg_job *j);

/* The e4m3 decoding table: kvcd_e4m3_to_f32 of every byte (convert.c). */
const float *kvcd_e4m3_lut(void);

/* ---- token selection (sparse.c) ---------------------------------------------------------------
 * A policy with select= keeps, per (layer, KV head), count[layer][head] of the block's T
 * tokens (budget= decides the counts, select= which tokens, merge= whether the dropped ones
 * are folded into kept ones) and encodes the kept rows of each (layer, head) under the
 * policy's codec as a block of one layer, one head and count tokens. The encoded block:
 *   struct kvcd_codec_hdr
 *   u32 count[layers * kv_heads]
 *   kept-token bitmaps, ceil(T / 8) bytes per (layer, head), bit t of byte t / 8
 *   merge=key: f16 bias[total], log of the attention mass each kept token stands for over
 *              its own (>= 0)
 *   per (layer, head): the codec's units for its kept rows ([K, V][count][head_dim])
 * With rank=R the kept rows of K and of V are each stored as a truncated SVD instead of
 * through the codec (which must then be none): U_r S_r [count][r] and V_r^T [r][head_dim],
 * r = min(R, count, head_dim), in the engine's dtype (LAPACKE sgesdd). Without select= every
 * token is kept. With minicache=L (codec none, no select or rank), from layer L on each pair of
 * adjacent layers stores, per (head, K/V), the mc_keep% tokens whose directions differ most
 * in both layers (a bitmap, then their rows) and for the others one SLERP'd direction and
 * both layers' norms (MiniCache), all in the engine's dtype; FETCH gives both layers back.
 * FETCH writes struct kvcp_sparse (proto/kvcp.h). */

/* Kept tokens per (layer, head) into @counts[layers * kv_heads], and with energy= each one's
 * K and V rank after them (kvcd_sel_plan_words in all). Only budget=adakv and energy= look at
 * the data (@src, @aux); the plan then fixes the encoded size, so a block re-read for encoding
 * cannot outgrow its reservation. Returns 0, -EINVAL (@aux lacks what select= needs, or a
 * value is inf/nan), -ENOMEM. */
int kvcd_sel_plan(enum kvcd_isa isa, const struct kvcd_policy *p, const struct kvcp_layout *l,
		  uint32_t pos, const void *src, const struct kvcd_aux *aux, uint32_t *counts);
/* u32 words of a plan (what kvcd_sel_plan writes to @counts): a count per (layer, KV head),
 * and with energy= then a K and a V rank each. */
size_t kvcd_sel_plan_words(const struct kvcd_policy *p, const struct kvcp_layout *l);
/* Encoded size with @counts (NULL: plan without data; 0 for budget=adakv or energy=). */
uint64_t kvcd_sel_size(const struct kvcd_policy *p, const struct kvcp_layout *l, bool scores,
		       uint32_t pos, const uint32_t *counts);
/* Encode; @counts NULL plans first (budget=adakv then needs @aux or keynorm). */
int kvcd_sel_encode(enum kvcd_isa isa, const struct kvcd_policy *p, const struct kvcp_layout *l,
		    uint32_t pos, const void *src, const float *scores, const struct kvcd_aux *aux,
		    const uint32_t *counts, void *dst);
/* For kvcd_codec_decode and _out_size, after the header checked out. */
int kvcd_sel_decode(enum kvcd_isa isa, const struct kvcd_codec_hdr *h, const void *src, uint64_t n,
		    const void *basis, uint64_t basis_len, void *dst, uint64_t cap,
		    struct kvcp_layout *l);
/* learned=: the basis version block @src names (its header's reserved word), its id in *@id;
 * 0 for other blocks. */
uint32_t kvcd_sel_basis_id(const struct kvcd_codec_hdr *h, const void *src, uint64_t n,
			   uint64_t *id);
uint64_t kvcd_sel_out_size(const struct kvcd_codec_hdr *h, const void *src, uint64_t n);

/* ---- lowrank.c ---------------------------------------------------------------------------- */

/* The rank a (layer, head) of @n kept rows of @d channels gets under rank=: min(R, n, d). */
uint32_t kvcd_lr_rank(const struct kvcd_policy *p, uint32_t n, uint32_t d);
/* Bytes of one of K's or V's factors for @n rows: U_r S_r [n][r] and V_r^T [r][d], in the
 * engine's dtype, or (factors=int8) as int8 rows followed by each row's f32 scale. */
uint64_t kvcd_lr_factor_bytes(const struct kvcd_policy *p, uint8_t dtype, uint32_t n, uint32_t r,
			      uint32_t d);
/* energy=: the smallest rank whose squared singular values (of @x, [n][d], destroyed) reach
 * @pct percent of their sum, at most @cap; 0 on failure (-errno in *@err). */
uint32_t kvcd_lr_energy_rank(float *x, uint32_t n, uint32_t d, uint32_t pct, uint32_t cap, float *u,
			     float *sv, float *vt, int *err);
/* The rank-@r factors of @x ([n][d] f32, destroyed) to @o. @u: n x min(n, d), @vt:
 * min(n, d) x d, @sv: min(n, d) + 1 floats. Returns 0, -ENOSYS (no LAPACKE), -EINVAL. */
int kvcd_lr_put(enum kvcd_isa isa, const struct kvcd_policy *p, uint8_t dtype, float *x, uint32_t n,
		uint32_t d, uint32_t r, float *u, float *sv, float *vt, uint8_t *o);
/* @n rows of @d from the factors at @in into @out (@dtype). @a: n x r + r x d + d floats. */
void kvcd_lr_get(enum kvcd_isa isa, const struct kvcd_policy *p, uint8_t dtype, const uint8_t *in,
		 uint32_t n, uint32_t d, uint32_t r, float *a, uint8_t *out);
/* learned=: a basis's ranks (K then V of each (layer, head)) and the rows of unit @u's K
 * (@kv 0) or V (1), from a basis kvcd_basis_check accepted. */
const uint8_t *kvcd_basis_ranks(const void *b);
/* kvcd_basis_check without reading the values: what a codec needs of a basis that was checked
 * whole once (at CALIBRATE, or when kvcd found it in its pools), so that a STORE or FETCH does
 * not read every float of it. 0 or -EBADMSG. */
int kvcd_basis_shape_ok(const void *b, uint64_t len);
const float *kvcd_basis_rows(const void *b, size_t u, int kv);
/* learned=: bytes of @n rows' rank-@r coefficients (engine dtype, or factors=int8: int8 rows
 * and an f32 scale each); the coefficients of @x ([n][d]) over the basis rows @bt ([r][d])
 * to @o (@c: n x r floats); and @n rows back from them into @out (@a: n x r + d floats). */
uint64_t kvcd_lr_coef_bytes(const struct kvcd_policy *p, uint8_t dtype, uint32_t n, uint32_t r);
void kvcd_lr_coef_put(enum kvcd_isa isa, const struct kvcd_policy *p, uint8_t dtype, const float *x,
		      uint32_t n, uint32_t d, uint32_t r, const float *bt, float *c, uint8_t *o);
void kvcd_lr_coef_get(enum kvcd_isa isa, const struct kvcd_policy *p, uint8_t dtype,
		      const uint8_t *in, uint32_t n, uint32_t d, uint32_t r, const float *bt,
		      float *a, uint8_t *out);
/* learned=on with kbits/vbits (kvcd_policy_coded): a KVB2 basis's mean square coefficient on
 * each of unit @u's K (@kv 0) or V (1) rows, and the engine's weight of an error in @layer's K
 * or V (NULL and 1 for a KVB1 basis, which cannot serve such policies). */
const float *kvcd_basis_vars(const void *b, size_t u, int kv);
float kvcd_basis_weight(const void *b, uint32_t layer, int kv);
/* The bits of every direction: @counts is a plan (lh counts, then K and V ranks of each
 * unit); @bits gets 2 x lh x head_dim words, unit by unit K then V, 0 past the rank. K's
 * directions share kbits x their number, V's vbits x theirs. 0 or -ENOMEM. */
int kvcd_lr_alloc(const struct kvcd_policy *p, const struct kvcp_layout *l, const void *basis,
		  const uint32_t *counts, uint32_t *bits);
/* learned=on with kbits/vbits: @n rows' @r coefficients, each direction with its @bits,
 * written one of two ways.
 * - Fixed-width (@m NULL): kvcd_lr_coded_bytes of them, a byte of grid for the unit, each
 *   direction's range as two int8 on its grid (set by the basis's variance @var), then the
 *   codes, direction by direction, packed least significant bit first.
 * - entropy=on (@m the block's models for K or V): on steps with no range, range coded
 *   (rc.h); the models learn from the codes, so a block's encoder and decoder each start
 *   them with kvcd_ent_model_init and carry them through its streams in the same order.
 * kvcd_lr_coded_put writes the coefficients of @x ([n][d]) over @bt ([r][d]) to @o, at most
 * @cap bytes (@c: n x r floats): their bytes, or -ERANGE (a coefficient not finite or beyond
 * any grid, or more than @cap bytes). kvcd_lr_coded_get turns @len bytes of them back into
 * @n rows at @out (@a: n x r + d floats): 0, or -EBADMSG when they need more than @len. */
#define KVCD_ENT_OCTAVES 23 /* magnitudes up to 2^23 - 1 steps */
struct kvcd_ent_model {
	uint16_t zero[9], sign[9]; /* by the direction's bits */
	uint16_t oct[9][KVCD_ENT_OCTAVES], top[9][KVCD_ENT_OCTAVES][3];
};
void kvcd_ent_model_init(struct kvcd_ent_model *m);
uint64_t kvcd_lr_coded_bytes(uint32_t n, uint32_t r, const uint32_t *bits);
int64_t kvcd_lr_coded_put(const float *x, uint32_t n, uint32_t d, uint32_t r, const float *bt,
			  const float *var, const uint32_t *bits, struct kvcd_ent_model *m,
			  float *c, uint8_t *o, size_t cap);
int kvcd_lr_coded_get(enum kvcd_isa isa, uint8_t dtype, const uint8_t *in, size_t len, uint32_t n,
		      uint32_t d, uint32_t r, const float *bt, const float *var,
		      const uint32_t *bits, struct kvcd_ent_model *m, uint32_t rope, uint32_t pos,
		      const uint32_t *tok, float *a, uint8_t *out);
/* A basis learned with RoPE base @rope (kvcd_basis_rope; 0: none) holds keys as they were
 * before RoPE: @n rows of @d at positions @pos + @tok[i] (@tok NULL: + i) are turned back by
 * it, in place, before they are projected (kvcd_lr_coded_get turns them forward again). */
uint32_t kvcd_basis_rope(const void *b);
void kvcd_lr_unrope(float *x, uint32_t n, uint32_t d, uint32_t rope, uint32_t pos,
		    const uint32_t *tok);
/* svd=layer: a layer's K and V planes as factors, and back into every head's rows. */
int kvcd_lr_layer_put(enum kvcd_isa isa, const struct kvcd_policy *p, const struct kvcp_layout *l,
		      const float *kp, const float *vp, float *buf, uint8_t *o);
void kvcd_lr_layer_get(enum kvcd_isa isa, const struct kvcd_policy *p, const struct kvcp_layout *l,
		       const uint8_t *in, float *buf, uint8_t *out);
size_t kvcd_lr_layer_get_bytes(const struct kvcd_policy *p, const struct kvcp_layout *l);
/* tensor=tucker (lowrank.c): one layer's K or V plane @x ([T][H][D] f32) as a Tucker core and
 * three factors with ranks @r (token, head, channel). kvcd_tk_ranks picks them by energy=
 * (the token rank capped by rank=); kvcd_tk_put writes them (kvcd_tk_bytes, engine dtype);
 * kvcd_tk_get multiplies them back into @x. @buf: kvcd_tk_buf_floats floats. */
uint64_t kvcd_tk_bytes(const struct kvcp_layout *l, const uint32_t *r);
size_t kvcd_tk_buf_floats(const struct kvcp_layout *l);
bool kvcd_tk_ranks_ok(const struct kvcd_policy *p, const struct kvcp_layout *l, const uint32_t *r);
int kvcd_tk_ranks(const struct kvcd_policy *p, const struct kvcp_layout *l, const float *x,
		  float *buf, uint32_t *r);
int kvcd_tk_put(enum kvcd_isa isa, const struct kvcp_layout *l, const float *x, const uint32_t *r,
		float *buf, uint8_t *o);
void kvcd_tk_get(enum kvcd_isa isa, const struct kvcp_layout *l, const uint8_t *in,
		 const uint32_t *r, float *buf, float *x);

/* ---- minicache.c ---------------------------------------------------------------------------- */

/* Layer @ly under @p: 0 on its own, 1 the first of a merged pair, 2 the second. */
int kvcd_mc_role(const struct kvcd_policy *p, uint32_t layers, uint32_t ly);
/* Bytes of one (pair, head)'s body. */
uint64_t kvcd_mc_pair_size(const struct kvcd_policy *p, const struct kvcp_layout *l);
/* Encode K or V of one (pair, head) from rows @a and @b, @stride apart; returns the bytes
 * written. Decode it into @x and @y; returns the bytes read, 0 for a bad bitmap. */
size_t kvcd_mc_put(enum kvcd_isa isa, const struct kvcd_policy *p, const struct kvcp_layout *l,
		   const float *a, const float *b, size_t stride, float *cosv, uint32_t *idx,
		   float *f, uint8_t *o);
size_t kvcd_mc_get(enum kvcd_isa isa, const struct kvcd_policy *p, const struct kvcp_layout *l,
		   const uint8_t *in, float *f, uint8_t *x, uint8_t *y);

/* ---- scores.c and summary.c: selection scores, budgets, Quest -------------------------------- */

/* ---- scores: higher means keep ---------------------------------------------------------- */

/* SnapKV: the attention each token gets from an observation window. @q holds the window's
 * post-RoPE queries of the @g query heads that share this KV head (GQA), [g][w][d]; query i
 * sits at block position @qpos + i and sees keys 0..qpos + i (causal; a window after the
 * block sees all of it). With @lse ([g][w], each query's log-sum-exp of q.k / sqrt(d) over
 * every key it attended) the weights are its true softmax; with NULL, a softmax over the
 * block's keys it sees. Summed over the window and the group, then max-pooled over @kernel
 * neighbouring tokens (odd; 1: none). @score[t]. @tmp: t floats. */
/* Whether SnapKV's dot products may take the AVX-512 path (the same floats; tests compare). */
extern bool kvcd_scores_simd;
void kvcd_score_snapkv(const float *keys, uint32_t stride, uint32_t t, uint32_t d, const float *q,
		       const float *lse, uint32_t g, uint32_t w, int64_t qpos, uint32_t kernel,
		       float *tmp, float *score);

/* Max-pool @score[t] over @kernel neighbouring tokens (odd; 1: none), same padding. @tmp: t
 * floats. */
void kvcd_score_pool(float *score, uint32_t t, uint32_t kernel, float *tmp);

/* Key-norm: the smaller a key's L2 norm, the higher its score (-||k||). */
void kvcd_score_keynorm(const float *keys, uint32_t stride, uint32_t t, uint32_t d, float *score);

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
/* Head roles (DuoAttention's retrieval and streaming heads, told apart per block): @frac[h]
 * is the share of head h's attention that goes beyond the sinks and the local window. The
 * heads with the least of it, together under @eps of the layer's sum, are streaming heads and
 * keep @local tokens (their sinks and window); the other heads share what is left of
 * @heads * @budget equally, up to @t each. Counts sum to @heads * @budget when @t allows.
 * With no streaming head it is uniform. */
void kvcd_budget_heads(const float *frac, uint32_t heads, uint32_t t, uint32_t budget,
		       uint32_t local, double eps, uint32_t *counts);
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

/* A block's bounds are per page of @page tokens (the last page may be shorter), f16,
 * [layers][kv_heads][pages][min, max][head_dim]. */
uint32_t kvcd_quest_pages(const struct kvcp_layout *l, uint32_t page);
size_t kvcd_quest_bytes(const struct kvcp_layout *l, uint32_t page);
/* The bounds of the keys of the raw block @block (layout @l), each rounded outwards to f16
 * (min down, max up), so a bound computed from them is still a bound. Returns 0 or -ENOMEM. */
int kvcd_quest_block(enum kvcd_isa isa, const struct kvcp_layout *l, uint32_t page,
		     const void *block, uint16_t *out);
/* The query split by sign, once per request: @pos = max(q, 0), @neg = min(q, 0). */
void kvcd_quest_prep(const float *q, uint32_t n, float *pos, float *neg);
/* A block's SELECT score at @layer for queries [q_heads][head_dim] (q_heads a multiple of
 * kv_heads; query head h reads KV head h / (q_heads / kv_heads)), given as kvcd_quest_prep's
 * halves and @l1, the largest L1 norm of a query head: the largest Quest bound over the
 * query heads and pages, over sqrt(head_dim). Never below the block's largest
 * q.k / sqrt(head_dim) (float rounding included). */
float kvcd_quest_score(enum kvcd_isa isa, const struct kvcp_layout *l, uint32_t page,
		       const uint16_t *bounds, uint32_t layer, const float *pos, const float *neg,
		       float l1, uint32_t q_heads);

/* ---- summary.c: the SELECT summary kept with a block --------------------------------------- */

/* First bytes of the summary kept after a block's data. */
struct kvcd_summary {
	uint8_t kind;	/* KVCD_SUMMARY_* */
	uint8_t page;	/* tokens per page, 1..255 */
	uint8_t reps;	/* REPS, REPS8: keys kept per page, 1..16 */
	uint8_t pad[5]; /* 0 */
};

/* Bytes of the summary of a block of layout @l, header included. */
size_t kvcd_summary_bytes(const struct kvcp_layout *l, const struct kvcd_summary *s);
/* Write the summary of the raw block @block to @out. Returns 0 or -ENOMEM. */
int kvcd_summary_make(enum kvcd_isa isa, const struct kvcp_layout *l, const struct kvcd_summary *s,
		      const void *block, void *out);

#endif /* KVCD_CODEC_INTERNAL_H */
