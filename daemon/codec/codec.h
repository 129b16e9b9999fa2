/* codec.h - libkvccodec: how kvcd compresses a KV block on STORE and restores it on FETCH.
 *
 * Pure functions over a block in the engine's layout [layer][K,V][token][head][dim] (f32, f16
 * or bf16); nothing here knows about rings, pools or sessions, and the library depends on
 * proto/ alone. The daemon calls one entry point per verb and never learns which technique
 * a policy uses:
 *
 *   kvcd_codec_plan      fix everything a block's size depends on, before any byte is
 *                        written: how many bytes to reserve, where its SELECT summary goes
 *   kvcd_codec_write     encode the block into the reserved bytes, as planned
 *   kvcd_codec_summary   write its SELECT summary after it
 *   kvcd_codec_decode    give a stored block back in the engine's dtype and layout
 *   kvcd_codec_score     score a stored block's summary against a query (SELECT)
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
 * Token selection, low-rank and MiniCache store the block in the sparse form (sparse.c).
 * Every policy key, with its range and default: docs/policies.md.
 *
 * Files: codec.c (these entry points and the block header), policy.c, units.c (the
 * quantizing codecs), quant.c (group quantization kernels), convert.c (dtypes, e4m3,
 * Hadamard), sparse.c (selection, cold tokens, merging), scores.c (SnapKV, H2O, key norm,
 * budgets), lowrank.c, minicache.c, summary.c (Quest bounds, representative keys),
 * quality.c (error measures), isa.c.
 */
#ifndef KVCD_CODEC_H
#define KVCD_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../../proto/kvcp.h"
#include "isa.h"
#include "policy.h"

/* What the engine sent with the STORE (KVCP_SQE_F_AUX), checked and copied by the caller. */
struct kvcd_aux {
	uint32_t what; /* KVCP_AUX_* */
	uint32_t q_heads, window;
	int32_t q_pos;
	const float *attn; /* [layers][kv_heads][tokens] */
	const float *q;	   /* [layers][q_heads][window][head_dim] */
	const float *lse;  /* [layers][q_heads][window] */
	/* Not from the wire: the tokens a selection across a chain of blocks kept in this
	 * block (kvcd_codec_chain_select), a bitmap of ceil(tokens / 8) bytes per (layer, KV
	 * head), LSB first. With it the block keeps exactly these, whatever its budget. */
	const uint8_t *keep;
	/* Not from the wire: learned=, the namespace's newest basis (kvcd_basis_learn), checked
	 * (kvcd_basis_check) and held unchanged from plan to write; NULL: none. */
	const void *basis;
	uint64_t basis_len;
};

/* ---- the entry points ------------------------------------------------------------------ */

/* Everything a block's bytes depend on, fixed before they are written: a client may rewrite
 * its staging while the block is encoded, and the encoder still stays inside what was
 * reserved. */
struct kvcd_plan {
	struct kvcd_policy pol;
	struct kvcp_layout layout; /* the engine's; codec 0 */
	uint32_t pos;		   /* position of the block's first token in its sequence */
	bool scores;		   /* the encoder takes the STORE's importance scores */
	bool raw;		   /* stored as sent: the caller copies the bytes itself */
	uint8_t codec;		   /* the stored block's layout.codec (KVCP_CODEC_*) */
	uint64_t stored;	   /* bytes of the block */
	uint64_t summary_at;	   /* where its SELECT summary starts; 0: none */
	uint64_t bytes;		   /* what to reserve: the block and its summary */
	uint32_t *words;	   /* sparse forms: per (layer, head) counts and ranks */
	uint8_t *enc;		   /* entropy=on: the block itself, encoded when planned (its
				    * size is its values'); NULL: encoded when written */
};

/* Plan a block of layout @l whose first token is at position @pos of its sequence (sinks are
 * the sequence's first tokens) under @p. @src is the raw block, read only by policies whose
 * sizes depend on the data (budget=adakv, energy=); @scores (one f32 per token) or NULL;
 * @aux or NULL. Returns 0, -EINVAL (@p does not fit @l, @aux lacks what select= needs, a value
 * is inf/nan) or -ENOMEM. kvcd_plan_fini releases what a plan holds, also after an error. */
int kvcd_codec_plan(enum kvcd_isa isa, const struct kvcd_policy *p, const struct kvcp_layout *l,
		    uint32_t pos, const void *src, const float *scores, const struct kvcd_aux *aux,
		    struct kvcd_plan *plan);
void kvcd_plan_fini(struct kvcd_plan *plan);

/* Encode @src as planned into @dst (plan->stored bytes). For a raw plan this is a copy; the
 * daemon copies raw blocks itself, summing them in the copy. Reads @src once. Returns 0,
 * -EINVAL (a value is inf/nan), -ERANGE (a group's scale or zero overflows f16), -ENOMEM. */
int kvcd_codec_write(enum kvcd_isa isa, const struct kvcd_plan *plan, const void *src,
		     const float *scores, const struct kvcd_aux *aux, void *dst);

/* Write the SELECT summary of the block at @dst (plan->summary_at bytes on) from the raw
 * block: @dst itself for a raw plan (the pool's copy, which no client can change), else the
 * engine's @src. Returns 0, or -ENOMEM. */
int kvcd_codec_summary(enum kvcd_isa isa, const struct kvcd_plan *plan, const void *src, void *dst);

/* Where a block's SELECT summary starts: after its @stored bytes, placed so that the data
 * after the summary's 8-byte header is 64-byte aligned (pool blocks are): vector loads of
 * the representative keys then never split a cache line. */
#define KVCD_SUMMARY_AT(stored) ((((stored) + 8 + 63) & ~(uint64_t)63) - 8)

/* One-shot forms of plan + write, for callers without a pool (tests, kvccodec-bench): the
 * exact encoded size (0 when @p cannot encode @l, or its size depends on data), and the
 * encoding into @dst of that many bytes. */
uint64_t kvcd_codec_size(const struct kvcd_policy *p, const struct kvcp_layout *l, bool scores,
			 uint32_t pos);
int kvcd_codec_encode(enum kvcd_isa isa, const struct kvcd_policy *p, const struct kvcp_layout *l,
		      uint32_t pos, const void *src, const float *scores, void *dst);

/* Blocks that every token of are quantized per token go through one fused pass per plane row;
 * false sends them unit by unit like every other block (same bytes; for tests and benches). */
extern bool kvcd_codec_fused;

/* Decode an encoded block of @n bytes into @dst (@cap bytes). *@l receives the engine's
 * layout; for a block in the sparse form @dst gets struct kvcp_sparse (kvcd_codec_out_size
 * bytes) and l->codec is KVCP_CODEC_SPARSE. Never trusts @src: returns -EBADMSG when the
 * header or sizes are inconsistent, -ENOSPC when @cap is too small, -ENOMEM. */
int kvcd_codec_decode(enum kvcd_isa isa, const void *src, uint64_t n, void *dst, uint64_t cap,
		      struct kvcp_layout *l);

/* kvcd_codec_decode for any block, those of learned= too: @basis (@basis_len bytes, checked
 * with kvcd_basis_check once by the caller: here only its shape is) is the one
 * kvcd_codec_basis_of names, or NULL. A learned block without its basis, or with another,
 * gives -ENOKEY. */
int kvcd_codec_decode_with(enum kvcd_isa isa, const void *src, uint64_t n, const void *basis,
			   uint64_t basis_len, void *dst, uint64_t cap, struct kvcp_layout *l);

/* The basis version the encoded block @src of @n bytes was written with (learned=), its id
 * in *@id; 0 when it needs none (or its header is bad: decoding says so). */
uint32_t kvcd_codec_basis_of(const void *src, uint64_t n, uint64_t *id);

/* Bytes FETCH writes for the encoded block @src of @n bytes: the raw block, or its struct
 * kvcp_sparse form; 0 when the header is bad. */
uint64_t kvcd_codec_out_size(const void *src, uint64_t n);

/* ---- selection across a chain of blocks -----------------------------------------------------
 * An engine that stores its prefill in chunks can have the chain's tokens selected as if one
 * block held the whole prefix (one observation window, one budget), once the prefill is done
 * (KVCP_OP_RECOMPRESS): the tokens each block keeps are chosen here, then each block is
 * encoded with aux.keep set to its share. */

/* Bytes of one block's keep bitmaps (struct kvcd_aux.keep) for layout @l. */
size_t kvcd_codec_keep_bytes(const struct kvcp_layout *l);

/* Choose the tokens that policy @p (with select=) keeps across the @n raw blocks @srcs of
 * layouts @ls (the same shape but for tokens), consecutive in one sequence from position
 * @pos: sinks are the sequence's first tokens, the window the chain's last tokens, the budget
 * the chain's, and @aux is the chain's (q_pos from the first block's first token, attn over
 * every token of the chain). Writes each block's bitmaps to @keep[i]
 * (kvcd_codec_keep_bytes). Exactly what one block holding the whole chain would keep. Returns
 * 0, -EINVAL (@p selects nothing or merges layers, shapes differ, @aux lacks what select=
 * needs, a key is inf/nan) or -ENOMEM. */
int kvcd_codec_chain_select(enum kvcd_isa isa, const struct kvcd_policy *p, uint32_t n,
			    const struct kvcp_layout *ls, const void *const *srcs, uint32_t pos,
			    const struct kvcd_aux *aux, uint8_t *const *keep);

/* ---- learned=: a namespace's basis -------------------------------------------------------
 * For each (layer, KV head), K and V each get the leading eigenvectors of their rows' second
 * moment over calibration blocks (the right singular vectors of those rows, as rank= would
 * find in one block), as many as keep @energy percent of it. A block under learned= stores
 * only each row's coefficients over them; the basis is stored once, by the daemon, and named
 * in each block by its version and id. */

#define KVCD_BASIS_MAGIC      0x3242564bu /* "KVB2": with the tail below */
#define KVCD_BASIS_MAGIC_V1   0x3142564bu /* "KVB1": without (still read) */
#define KVCD_BASIS_MAX_TOKENS 8192	  /* calibration tokens read at most */

/* The basis's first bytes. Then u8 ranks[layers * kv_heads * 2] (K then V of each (layer,
 * head), 1..head_dim), zero-padded to 8 bytes, then f32 rows: for each (layer, head), K's
 * rank orthonormal rows of head_dim, then V's. KVB2 then has f32 weight[layers][2] (what an
 * error in each layer's K and V costs, as the CALIBRATE's engine measured it; 1 when it gave
 * none) and f32 var[] (each row's mean square coefficient over the calibration tokens, rows
 * in the same order): what learned=on with kbits/vbits spreads its bits by. The tail starts
 * with u32 rope, u32 0: the RoPE base K's rows were learned under (keys as before RoPE, which
 * blocks under kbits/vbits are projected as), 0: keys as stored. */
struct kvcd_basis_hdr {
	uint32_t magic;
	uint32_t version; /* 1, 2, ... within its namespace */
	uint64_t id;	  /* what blocks name it by: set by the caller (kvcd_basis_seal) */
	uint32_t layers, kv_heads, head_dim;
	uint32_t energy; /* percent of the calibration rows' second moment the ranks keep */
	uint64_t tokens; /* calibration tokens it was learned from */
	uint64_t bytes;	 /* the whole basis, this header included */
};

/* Learn a basis from the @n raw blocks @srcs of layouts @ls (one shape but for tokens; the
 * first KVCD_BASIS_MAX_TOKENS tokens are read) into a malloc'd *@out of *@len bytes, with
 * version @version and id 0, with @o's weights and RoPE (@o may be NULL: none). Returns 0,
 * -EINVAL (no blocks, shapes differ, a block is not raw, head_dim above 255 or odd with rope,
 * a value inf/nan, a weight not positive), -ENOSYS (no LAPACKE) or -ENOMEM. */
struct kvcd_cal_opts {
	const float *weight; /* [layers][2] (K, V) positive weights, or NULL (all 1) */
	uint32_t rope;	     /* the model's RoPE base: keys learned as before RoPE; 0: as stored */
	const uint64_t *pos; /* with rope: the position of each block's first token */
};
int kvcd_basis_learn(enum kvcd_isa isa, uint32_t n, const struct kvcp_layout *ls,
		     const void *const *srcs, uint32_t energy, const struct kvcd_cal_opts *o,
		     uint32_t version, void **out, uint64_t *len);
/* Give the basis @b its @id (what the blocks written with it record). */
void kvcd_basis_seal(void *b, uint64_t id);
/* Is @b (@len bytes) a basis this library wrote: sizes, ranks and rows finite? 0 or -EBADMSG. */
int kvcd_basis_check(const void *b, uint64_t len);

/* ---- the GPU codecs' view of a block ---------------------------------------------------------
 * The kernels in daemon/gpu/ encode and decode blocks in the units form bit for bit as this
 * library does, from a struct kvcg_job (gpujob.h) that fixes every count and offset. */
struct kvcg_job;
/* Describe the block @plan will write: 0, or -ENOTSUP when only the CPU codecs can write it
 * (gpujob.h says which blocks the kernels take). */
int kvcd_codec_gpu_plan(const struct kvcd_plan *plan, struct kvcg_job *j);
/* The header such a block starts with: j->body bytes to @dst. */
void kvcd_codec_gpu_header(const struct kvcd_plan *plan, void *dst);
/* Describe the encoded block @src of @n bytes for the GPU decoder, from its header (checked
 * as kvcd_codec_decode checks it): 0, -EBADMSG, or -ENOTSUP (decode it on the CPU). */
int kvcd_codec_gpu_read(const void *src, uint64_t n, struct kvcg_job *j);

/* ---- SELECT: scoring stored blocks for a query --------------------------------------------- */

/* A SELECT request's queries [q_heads][head_dim], prepared once for every summary kind. */
struct kvcd_query {
	const float *q; /* the caller's; must outlive this */
	uint32_t q_heads, head_dim;
	float *pos, *neg; /* Quest: kvcd_quest_prep's halves */
	float l1;	  /* Quest: the largest L1 norm of a query head, rounded up */
	float *qp;	  /* REPS8: each head's channels padded to a multiple of 4 */
	int8_t *q8;	  /* REPS8 on VNNI: each query head in int8, symmetric */
	float *q8_scale;  /* its scale (absmax / 127) */
	float *q8s4;	  /* the scales, each four times, [q_heads + 3][4] */
	uint8_t *q8h;	  /* q8 + 128 per channel group of 4, four times (once for each
				 * key of a group): [q_heads][groups][16] */
	void *buf;	  /* all of the above */
};
/* Prepare @q (finite). Returns 0 or -ENOMEM; kvcd_query_fini frees what it holds. */
int kvcd_query_init(struct kvcd_query *x, const float *q, uint32_t q_heads, uint32_t head_dim);
void kvcd_query_fini(struct kvcd_query *x);

/* The SELECT score, over sqrt(head_dim), of the block of layout @l whose summary is at @sum,
 * at @layer, for queries @x (q_heads a multiple of kv_heads; query head h reads KV head
 * h / (q_heads / kv_heads)): Quest's upper bound, or the best q.k over the representatives.
 * -INFINITY when the summary's header is not one kvcd writes or the head_dim differs. */
float kvcd_codec_score(enum kvcd_isa isa, const struct kvcp_layout *l, const void *sum,
		       uint32_t layer, const struct kvcd_query *x);
/* Ask the memory system for the part of the summary at @sum that scoring @layer reads. */
void kvcd_codec_score_prefetch(const struct kvcp_layout *l, const void *sum, uint32_t layer);

/* ---- conversions and measures, shared with tools -------------------------------------------- */

uint16_t kvcd_f32_to_f16(float f); /* round to nearest even, like vcvtps2ph */
float kvcd_f16_to_f32(uint16_t h);
/* Widen @n elements of @dtype to f32, and narrow back with round-to-nearest-even. */
void kvcd_to_f32(enum kvcd_isa isa, uint8_t dtype, const void *src, float *dst, size_t n);
void kvcd_from_f32(enum kvcd_isa isa, uint8_t dtype, const float *src, void *dst, size_t n);

/* kvcd_from_f32 writing around the caches where it can (f16, AVX2, @dst 32-byte aligned, @n a
 * multiple of 16): for outputs larger than the caches, whose reader comes later. Returns
 * whether it did; the caller then issues _mm_sfence() before publishing the bytes. */
bool kvcd_from_f32_stream(enum kvcd_isa isa, uint8_t dtype, const float *src, void *dst, size_t n);

/* fp8 e4m3 (OCP, no infinities, max 448), round to nearest even, saturating. */
uint8_t kvcd_f32_to_e4m3(float f);
/* @n values v[i] / @div as kvcd_f32_to_e4m3 gives them (all 0 when @div is not positive);
 * the same bytes whatever @isa. */
void kvcd_e4m3_n(enum kvcd_isa isa, const float *v, size_t n, float div, uint8_t *out);
/* kvcd_e4m3_n on @n runs of @len values, run r at @v + r * @len divided by @div[r] into
 * @out[r]: the same bytes, in one loop where the ISA allows. */
void kvcd_e4m3_runs(enum kvcd_isa isa, const float *v, size_t n, size_t len, const float *div,
		    uint8_t *const *out);
float kvcd_e4m3_to_f32(uint8_t b);
/* One row of f16 values (@ng groups of @gch) in fp8 in one pass, with the bytes the fused
 * encoder's per-group steps give (scale: the smallest f16 s with s * 448 >= the group's
 * largest magnitude; codes: kvcd_e4m3_n of the values over s): group g's scale (2 bytes) at
 * @par + (g / @per) * @stride + (g % @per) * 2, its codes at @codes + (g / @per) * @stride +
 * (g % @per) * @gch. @x is room for the row as floats. Only where kvcd_fp8_row_f16_ok says so
 * (AVX-512 and F16C, groups of a multiple of 16): -EOPNOTSUPP elsewhere; -EINVAL for an inf
 * or a nan. */
bool kvcd_fp8_row_f16_ok(enum kvcd_isa isa, size_t gch);
int kvcd_fp8_row_f16(enum kvcd_isa isa, const uint8_t *src, size_t ng, size_t gch, size_t per,
		     size_t stride, float *x, uint8_t *par, uint8_t *codes);

/* In-place orthonormal Walsh-Hadamard transform of @n (a power of two) values; its own
 * inverse. The same bits whatever @isa. */
void kvcd_hadamard(enum kvcd_isa isa, float *x, unsigned n);

struct kvcd_quality {
	double rel_frob; /* ||X - X'||_F / ||X||_F */
	double cosine;	 /* <X, X'> / (||X|| ||X'||) */
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
