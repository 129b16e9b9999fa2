/* policy.h - a compression policy: which codec and which techniques a block is stored with.
 *
 * Policies are written as strings, "codec[:key=value,...]" (e.g.
 * "kivi:kbits=4,vbits=4,group=32,sink=4,rotate=hadamard"); the grammar, every key with its
 * range, default and meaning, is one table in policy.c, printed by `kvccodec-bench policies`
 * into docs/policies.md. A parsed policy is plain data, stored verbatim in every encoded
 * block's header, so a block decodes the same way whatever policy its namespace has later.
 */
#ifndef KVCD_POLICY_H
#define KVCD_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "../../proto/kvcp.h"

/* The codec ids are the protocol's: a FETCH reports them in layout.codec. */
enum kvcd_codec_kind {
	KVCD_CODEC_NONE = KVCP_CODEC_NONE,
	KVCD_CODEC_INT = KVCP_CODEC_INT,
	KVCD_CODEC_FP8 = KVCP_CODEC_FP8,
	KVCD_CODEC_KIVI = KVCP_CODEC_KIVI,
};

#define KVCD_POLICY_STR 192 /* longest canonical policy string, NUL included */

/* A parsed policy. Plain data, stored verbatim in every encoded block's header. */
struct kvcd_policy {
	uint8_t kind;	      /* enum kvcd_codec_kind */
	uint8_t kbits, vbits; /* int, kivi: 2..8; none with learned=on: the coefficients' mean
			       * bits (kvcd_policy_coded), 0: coefficients in the engine's dtype */
	uint8_t rotate;	      /* KVCD_XFORM_*: transforms of the quantized rows */
	uint16_t group;	      /* channels (int, fp8, kivi V) or tokens (kivi K); 0: head_dim */
	uint16_t sink;	      /* first tokens kept exact */
	uint16_t outliers;    /* largest-key tokens per (layer, head) kept exact */
	uint8_t hibits;	      /* bits for important tokens; 0: scores are ignored */
	uint8_t hipct;	      /* percent of non-exact tokens that are important */
	uint32_t sparse_ppm;  /* values kept exact, parts per million of the quantized ones */
	uint32_t rope;	      /* RoPE base (e.g. 10000): quantize keys before RoPE (KVQuant);
				 * 0: keys as stored. Pairs (2i, 2i+1) in each head, llama style */
	uint8_t resid;	      /* kivi K: the last nr % group regular tokens are 0: kept exact
				 * (KIVI's residual), 1: quantized per channel as one short group */
	uint8_t params;	      /* int, kivi: 0: f16 scale and zero per group; 1: a reference
				 * per unit and one byte each (kvcd_quant_params_u8) */
	/* token selection (sparse.c): which tokens of each (layer, KV head) are kept at all */
	uint8_t select;	 /* enum kvcd_select; 0: every token */
	uint8_t budget;	 /* enum kvcd_budget */
	uint16_t keep;	 /* tokens kept, in 1/10000 of the block's tokens */
	uint16_t window; /* the block's last tokens, always kept */
	uint8_t merge;	 /* enum kvcd_merge */
	uint8_t kernel;	 /* snapkv: max-pooling width (odd; 0 or 1: none) */
	uint8_t summary; /* SELECT summary kept with the block: 0 none, else its
				 * KVCD_SUMMARY_* kind: Quest bounds, or representative keys
				 * in f16 or int8 */
	uint8_t page;	 /* summary: tokens per page, 1..255 */
	uint8_t rank;	 /* low-rank (sparse.c): K and V of each (layer, KV head) kept as a
				 * truncated SVD of this rank; 0: off */
	uint8_t mc;	 /* MiniCache (sparse.c): 1 + the first layer merged with the next
				 * (then every following pair); 0: off */
	uint8_t mc_t;	 /* MiniCache SLERP t, in 1/100 (0: the first layer's direction) */
	uint8_t mc_keep; /* MiniCache: percent of tokens per (pair, head) kept unmerged */
	uint8_t reps;	 /* summary=reps, reps8: keys kept per page, 1..16 */
	uint8_t lowrank; /* rank: KVCD_LOWRANK_* flags (sparse.c) */
	uint8_t cold;	 /* select: the dropped tokens kept too, as int of this many bits
				 * (2..8, params=u8) after the kept ones; 0: dropped for good */
	uint8_t energy;	 /* rank: percent of each matrix's squared singular values kept;
				 * its rank is the smallest that reaches it, at most rank= (the
				 * plan takes the SVDs); 0: every matrix has rank= */
};

#define KVCD_XFORM_HADAMARD 1 /* rotate=hadamard: Walsh-Hadamard rotation of each row */
#define KVCD_XFORM_VIRTUAL \
	2 /* virtual=mean: each channel's mean over the unit's quantized rows moves into one
	   * virtual token in the engine's dtype, added back on decode (rows quantized per
	   * token only: per-channel keys do not need it) */

#define KVCD_LOWRANK_INT8 \
	1 /* factors as int8 rows with an f32 scale each; else the
				 * engine's dtype */
#define KVCD_LOWRANK_TUCKER \
	4 /* tensor=tucker: each layer's K and V as one [tokens][heads][head_dim] tensor,
	   * a Tucker core and three factors with ranks chosen by energy= */
#define KVCD_LOWRANK_LEARNED \
	8 /* learned=on: K and V rows as coefficients over the namespace's learned basis, at
	   * most rank= of them per (layer, head); the block names the basis */
#define KVCD_LOWRANK_ENTROPY \
	16 /* entropy=on: kbits/vbits coefficients on steps without a range, range coded; a
	    * block's size then depends on its values */
#define KVCD_LOWRANK_LAYER \
	2 /* one SVD per layer across its heads ([tokens][heads x
				 * head_dim]); else one per (layer, KV head) */

/* Does @p go through sparse.c (token selection, low-rank or MiniCache)? */
static inline bool kvcd_policy_sel(const struct kvcd_policy *p)
{
	return p->select || p->rank || p->mc;
}

/* Does @p store coefficients over its namespace's learned basis (learned=on)? */
static inline bool kvcd_policy_learned(const struct kvcd_policy *p)
{
	return p->rank && (p->lowrank & KVCD_LOWRANK_LEARNED);
}

/* Does @p quantize learned=on's coefficients (kbits and vbits on codec none)? Each coefficient
 * direction of each (layer, head) gets its own bits, from the basis (lowrank.c). */
static inline bool kvcd_policy_coded(const struct kvcd_policy *p)
{
	return kvcd_policy_learned(p) && p->kind == KVCD_CODEC_NONE && p->kbits &&
	       !(p->lowrank & KVCD_LOWRANK_INT8);
}

/* Are @p's coded coefficients range coded (entropy=on)? */
static inline bool kvcd_policy_entropy(const struct kvcd_policy *p)
{
	return kvcd_policy_coded(p) && (p->lowrank & KVCD_LOWRANK_ENTROPY);
}

enum kvcd_select {
	KVCD_SELECT_NONE = 0,
	KVCD_SELECT_RECENT = 1,	 /* StreamingLLM: sinks and the most recent tokens */
	KVCD_SELECT_KEYNORM = 2, /* smallest key norm first; needs nothing from the engine */
	KVCD_SELECT_H2O = 3,	 /* accumulated attention (KVCP_AUX_ATTN) */
	KVCD_SELECT_SNAPKV = 4,	 /* the observation window's attention (KVCP_AUX_QUERIES) */
};

enum kvcd_budget {
	KVCD_BUDGET_UNIFORM = 0, /* every (layer, head) keeps the same count */
	KVCD_BUDGET_PYRAMID = 1, /* PyramidKV: per-layer counts falling with depth */
	KVCD_BUDGET_ADAKV = 2,	 /* Ada-KV: a layer's heads share its budget by score */
	KVCD_BUDGET_HEADS = 3,	 /* retrieval heads full, streaming heads sinks + window */
};

enum kvcd_merge {
	KVCD_MERGE_NONE = 0,
	KVCD_MERGE_KEY = 1,   /* each dropped token's value folded into the kept token of most
				 * similar key (cosine), weighted by attention mass; the group's
				 * mass recorded as an attention bias (f16 per kept token) */
	KVCD_MERGE_VALUE = 2, /* the same without the bias (CaM-style value merging) */
};

#define KVCD_SUMMARY_QUEST \
	1 /* Quest's channel-wise key bounds per page: scores are upper
				 * bounds of q.k */
#define KVCD_SUMMARY_REPS \
	2		     /* per page, the @reps keys of largest norm (InfLLM-style
				 * representatives): scores are their best q.k, not a bound */
#define KVCD_SUMMARY_REPS8 3 /* the same keys in int8 with a scale per key */

/* Parse @s into @p. Returns 0, or -EINVAL with a one-line reason in @why. */
int kvcd_policy_parse(const char *s, struct kvcd_policy *p, char *why, size_t whylen);
/* The canonical string of @p (parses back to the same policy). */
void kvcd_policy_format(const struct kvcd_policy *p, char *buf, size_t len);
/* Can @p encode blocks of layout @l? Returns 0 or -EINVAL with the reason in @why. */
int kvcd_policy_check(const struct kvcd_policy *p, const struct kvcp_layout *l, char *why,
		      size_t whylen);
/* The grammar as Markdown (docs/policies.md), from the same table the parser reads. */
void kvcd_policy_doc(FILE *f);

/* Do @p's per-token groups span heads on @l? A group longer than head_dim covers the token's
 * row across heads (kv_heads * head_dim values at most): the codec then sees each (layer, K/V)
 * as one head of kv_heads * head_dim channels, and rotation, outlier tokens and groups work
 * on whole rows. The memory order [token][head][dim] is the same either way. */
bool kvcd_policy_spans(const struct kvcd_policy *p, const struct kvcp_layout *l);

#endif /* KVCD_POLICY_H */
