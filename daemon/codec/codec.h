/* codec.h - block codecs: how kvcd compresses a KV block on STORE and restores it on FETCH.
 *
 * Pure functions over a block in the engine's layout [layer][K,V][token][head][dim] (f32, f16
 * or bf16); nothing here knows about rings, pools or sessions, so tools and tests use it as is.
 *
 * A policy names a codec and its knobs; policies are written as strings, in the config and in
 * requests, e.g. "kivi:kbits=4,vbits=4,group=32,sink=4,rotate=hadamard". Every encoded block
 * starts with a header holding the whole policy and the engine's layout, so a block decodes
 * the same way whatever policy its namespace has later.
 *
 * Within a block each (layer, K or V, head) is one unit: T tokens x D channels. Each token of
 * a unit is in one of three classes:
 *   exact      the first `sink` tokens of the sequence (attention sinks, IntactKV/KVQuant:
 *              only in blocks that start before position `sink`) and the `outliers`
 *              tokens whose keys have the largest magnitude in this (layer, head) (the same
 *              tokens for K and V); stored bit for bit in the engine's dtype
 *   important  when the STORE carries per-token importance scores and `hibits` is set: the
 *              top `hipct` percent of the other tokens by score, quantized per token at
 *              `hibits` (MiKV)
 *   regular    the rest, in token order, encoded by the codec:
 *     int   asymmetric min/max per group of `group` channels of one token (FlexGen), bits
 *           `kbits` for K and `vbits` for V (2..8), f16 scale and zero per group
 *     fp8   e4m3 with an f16 scale per group of `group` channels (amax / 448)
 *     kivi  K per channel over groups of `group` tokens, V per token over groups of `group`
 *           channels (KIVI); K tokens that do not fill a whole group stay exact
 * Options that compose with every codec:
 *   rotate=hadamard   orthonormal Walsh-Hadamard rotation of each token's channels before
 *                     quantizing, inverted after (QuaRot's idea, transparent to the engine);
 *                     needs a power-of-two head_dim
 *   sparse=F          dense-and-sparse (KVQuant): the fraction F of quantized values with the
 *                     largest magnitude in each unit is kept exact (f32) in a sparse list
 */
#ifndef KVCD_CODEC_H
#define KVCD_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../../proto/kvcp.h"
#include "quant.h"

enum kvcd_codec_kind {
	KVCD_CODEC_NONE = 0,
	KVCD_CODEC_INT = 1,
	KVCD_CODEC_FP8 = 2,
	KVCD_CODEC_KIVI = 3,
};

#define KVCD_POLICY_STR 192	/* longest canonical policy string, NUL included */

/* A parsed policy. Plain data, stored verbatim in every encoded block's header. */
struct kvcd_policy {
	uint8_t kind;		/* enum kvcd_codec_kind */
	uint8_t kbits, vbits;	/* int, kivi: 2..8 */
	uint8_t rotate;		/* 1: Walsh-Hadamard */
	uint16_t group;		/* channels (int, fp8, kivi V) or tokens (kivi K); 0: head_dim */
	uint16_t sink;		/* first tokens kept exact */
	uint16_t outliers;	/* largest-key tokens per (layer, head) kept exact */
	uint8_t hibits;		/* bits for important tokens; 0: scores are ignored */
	uint8_t hipct;		/* percent of non-exact tokens that are important */
	uint32_t sparse_ppm;	/* values kept exact, parts per million of the quantized ones */
	uint32_t rope;		/* RoPE base (e.g. 10000): quantize keys before RoPE (KVQuant);
				 * 0: keys as stored. Pairs (2i, 2i+1) in each head, llama style */
	uint8_t resid;		/* kivi K: the last nr % group regular tokens are 0: kept exact
				 * (KIVI's residual), 1: quantized per channel as one short group */
	uint8_t params;		/* int, kivi: 0: f16 scale and zero per group; 1: a reference
				 * per unit and one byte each (kvcd_quant_params_u8) */
	/* token selection (sel.c): which tokens of each (layer, KV head) are kept at all */
	uint8_t select;		/* enum kvcd_select; 0: every token */
	uint8_t budget;		/* enum kvcd_budget */
	uint16_t keep;		/* tokens kept, in 1/10000 of the block's tokens */
	uint16_t window;	/* the block's last tokens, always kept */
	uint8_t merge;		/* enum kvcd_merge */
	uint8_t kernel;		/* snapkv: max-pooling width (odd; 0 or 1: none) */
	uint8_t bounds;		/* SELECT summary kept with the block: 0 none, else its
				 * KVCD_SUMMARY_* kind (select.h): Quest bounds, or
				 * representative keys in f16 or int8 */
	uint8_t page;		/* bounds: tokens per page, 1..255 */
	uint8_t rank;		/* low-rank (sel.c): K and V of each (layer, KV head) kept as a
				 * truncated SVD of this rank; 0: off */
	uint8_t mc;		/* MiniCache (sel.c): 1 + the first layer merged with the next
				 * (then every following pair); 0: off */
	uint8_t mc_t;		/* MiniCache SLERP t, in 1/100 (0: the first layer's direction) */
	uint8_t mc_keep;	/* MiniCache: percent of tokens per (pair, head) kept unmerged */
	uint8_t reps;		/* bounds=reps, reps8: keys kept per page, 1..16 */
	uint8_t lowrank;	/* rank: KVCD_LOWRANK_* flags (sel.c) */
	uint8_t cold;		/* select: the dropped tokens kept too, as int of this many bits
				 * (2..8, params=u8) after the kept ones; 0: dropped for good */
	uint8_t energy;		/* rank: percent of each matrix's squared singular values kept;
				 * its rank is the smallest that reaches it, at most rank= (the
				 * plan takes the SVDs); 0: every matrix has rank= */
};

#define KVCD_LOWRANK_INT8 1	/* factors as int8 rows with an f32 scale each; else the
				 * engine's dtype */
#define KVCD_LOWRANK_LAYER 2	/* one SVD per layer across its heads ([tokens][heads x
				 * head_dim]); else one per (layer, KV head) */

/* Does @p go through sel.c (token selection, low-rank or MiniCache)? */
static inline bool kvcd_policy_sel(const struct kvcd_policy *p)
{
	return p->select || p->rank || p->mc;
}

enum kvcd_select {
	KVCD_SELECT_NONE = 0,
	KVCD_SELECT_RECENT = 1,	/* StreamingLLM: sinks and the most recent tokens */
	KVCD_SELECT_KEYNORM = 2,	/* smallest key norm first; needs nothing from the engine */
	KVCD_SELECT_H2O = 3,	/* accumulated attention (KVCP_AUX_ATTN) */
	KVCD_SELECT_SNAPKV = 4,	/* the observation window's attention (KVCP_AUX_QUERIES) */
};

enum kvcd_budget {
	KVCD_BUDGET_UNIFORM = 0,	/* every (layer, head) keeps the same count */
	KVCD_BUDGET_PYRAMID = 1,	/* PyramidKV: per-layer counts falling with depth */
	KVCD_BUDGET_ADAKV = 2,	/* Ada-KV: a layer's heads share its budget by score */
};

enum kvcd_merge {
	KVCD_MERGE_NONE = 0,
	KVCD_MERGE_KEY = 1,	/* each dropped token's value folded into the kept token of most
				 * similar key (cosine), weighted by attention mass; the group's
				 * mass recorded as an attention bias (f16 per kept token) */
	KVCD_MERGE_VALUE = 2,	/* the same without the bias (CaM-style value merging) */
};

/* Parse @s into @p. Returns 0, or -EINVAL with a one-line reason in @why. */
int kvcd_policy_parse(const char *s, struct kvcd_policy *p, char *why, size_t whylen);
/* The canonical string of @p (parses back to the same policy). */
void kvcd_policy_format(const struct kvcd_policy *p, char *buf, size_t len);
/* Can @p encode blocks of layout @l? Returns 0 or -EINVAL with the reason in @why. */
int kvcd_policy_check(const struct kvcd_policy *p, const struct kvcp_layout *l, char *why,
		      size_t whylen);

/* Do @p's per-token groups span heads on @l? A group longer than head_dim covers the token's
 * row across heads (kv_heads * head_dim values at most): the codec then sees each (layer, K/V)
 * as one head of kv_heads * head_dim channels, and rotation, outlier tokens and groups work
 * on whole rows. The memory order [token][head][dim] is the same either way. */
bool kvcd_policy_spans(const struct kvcd_policy *p, const struct kvcp_layout *l);

#define KVCD_CODEC_MAGIC 0x3151564bu /* "KVQ1" */
#define KVCD_CODEC_VERSION 5	/* 2: groups longer than head_dim span heads; rope;
				 * 3: kivi resid; 4: params=u8; 5: token selection */
#define KVCD_CODEC_F_SCORES 1u

/* First bytes of every encoded block. */
struct kvcd_codec_hdr {
	uint32_t magic;
	uint16_t version;	/* KVCD_CODEC_VERSION */
	uint16_t flags;		/* KVCD_CODEC_F_* */
	struct kvcd_policy pol;
	struct kvcp_layout layout; /* the engine's layout (codec 0) */
	uint32_t pos;		/* position of the block's first token in its sequence */
	uint32_t reserved;	/* 0 */
	uint64_t bytes;		/* encoded size, this header included */
};

/* Exact encoded size of a block of layout @l whose first token is at position @pos of its
 * sequence (sinks are the sequence's first tokens, so only blocks near its start hold any),
 * under @p, with or without importance scores; 0 when @p cannot encode @l. For
 * KVCD_CODEC_NONE this is the raw size. */
uint64_t kvcd_codec_size(const struct kvcd_policy *p, const struct kvcp_layout *l, bool scores,
			 uint32_t pos);

/* Encode the raw block @src (layout @l) into @dst, which has kvcd_codec_size() bytes.
 * @scores is NULL or one f32 importance score per token. Returns 0, -EINVAL (policy does not
 * fit the layout, or a value is inf/nan), -ERANGE (a group's scale or zero overflows f16),
 * -ENOMEM. Reads @src once. */
int kvcd_codec_encode(enum kvcd_isa isa, const struct kvcd_policy *p, const struct kvcp_layout *l,
		      uint32_t pos, const void *src, const float *scores, void *dst);

/* Blocks that every token of are quantized per token go through one fused pass per plane row;
 * false sends them unit by unit like every other block (same bytes; for tests and kvcbench). */
extern bool kvcd_codec_fused;

/* Decode an encoded block of @n bytes into @dst (@cap bytes). *@l receives the engine's
 * layout; for a block whose policy selected tokens, @dst gets the struct kvcp_sparse form
 * (kvcd_codec_out_size bytes) and l->codec is KVCP_CODEC_SPARSE. Never trusts @src: returns -EBADMSG when the header or sizes are inconsistent,
 * -ENOSPC when @cap is too small, -ENOMEM. */
int kvcd_codec_decode(enum kvcd_isa isa, const void *src, uint64_t n, void *dst, uint64_t cap,
		      struct kvcp_layout *l);

/* Bytes FETCH writes for the encoded block @src of @n bytes: the raw block, or for a block
 * whose policy selected tokens its struct kvcp_sparse form; 0 when the header is bad. */
uint64_t kvcd_codec_out_size(const void *src, uint64_t n);

/* ---- token selection (sel.c) ---------------------------------------------------------------
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

/* What the engine sent with the STORE (KVCP_SQE_F_AUX), checked and copied by the caller. */
struct kvcd_aux {
	uint32_t what;		/* KVCP_AUX_* */
	uint32_t q_heads, window;
	int32_t q_pos;
	const float *attn;	/* [layers][kv_heads][tokens] */
	const float *q;		/* [layers][q_heads][window][head_dim] */
	const float *lse;	/* [layers][q_heads][window] */
};

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
int kvcd_sel_decode(enum kvcd_isa isa, const struct kvcd_codec_hdr *h, const void *src,
		    uint64_t n, void *dst, uint64_t cap, struct kvcp_layout *l);
uint64_t kvcd_sel_out_size(const struct kvcd_codec_hdr *h, const void *src, uint64_t n);

/* The units of a block without the header, for sel.c: @p's codec (NONE: the raw bytes). */
uint64_t kvcd_codec_body_size(const struct kvcd_policy *p, const struct kvcp_layout *l,
			      bool scores, uint32_t pos);
int kvcd_codec_body_encode(enum kvcd_isa isa, const struct kvcd_policy *p,
			   const struct kvcp_layout *l, uint32_t pos, const void *src,
			   const float *scores, void *dst);
int kvcd_codec_body_decode(enum kvcd_isa isa, const struct kvcd_policy *p,
			   const struct kvcp_layout *l, uint32_t pos, bool scores, const void *in,
			   void *dst);

/* ---- conversions shared with tools -------------------------------------------------------- */

/* Widen @n elements of @dtype to f32, and narrow back with round-to-nearest-even. */
void kvcd_to_f32(enum kvcd_isa isa, uint8_t dtype, const void *src, float *dst, size_t n);
void kvcd_from_f32(enum kvcd_isa isa, uint8_t dtype, const float *src, void *dst, size_t n);

/* fp8 e4m3 (OCP, no infinities, max 448), round to nearest even, saturating. */
uint8_t kvcd_f32_to_e4m3(float f);
/* @n values v[i] / @div as kvcd_f32_to_e4m3 gives them (all 0 when @div is not positive);
 * the same bytes whatever @isa. */
void kvcd_e4m3_n(enum kvcd_isa isa, const float *v, size_t n, float div, uint8_t *out);
float kvcd_e4m3_to_f32(uint8_t b);

/* In-place orthonormal Walsh-Hadamard transform of @n (a power of two) values; its own
 * inverse. */
void kvcd_hadamard(float *x, unsigned n);

/* ---- quality (quality.c) ------------------------------------------------------------------ */

struct kvcd_quality {
	double rel_frob;	/* ||X - X'||_F / ||X||_F */
	double cosine;		/* <X, X'> / (||X|| ||X'||) */
};

/* Compare @n values. */
struct kvcd_quality kvcd_quality_of(const float *x, const float *y, size_t n);

/* Attention-output error for one head: for each of @nq probe queries q (D values each),
 * o = softmax(q K^T / sqrt(D)) V over T tokens, against o' computed with K', V'. Reports the
 * relative L2 error and cosine of all outputs together. K, V are [T][D] contiguous. */
struct kvcd_quality kvcd_quality_attention(const float *q, size_t nq, const float *k,
					   const float *v, const float *k2, const float *v2,
					   size_t t, size_t d);

#endif /* KVCD_CODEC_H */
