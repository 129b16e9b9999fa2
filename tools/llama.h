/* llama.h - a small Llama-architecture inference engine for llama2.c checkpoints, shared by
 * kvc-llama and kvc-eval: weights, one forward step, sampling, and the hand-off of its KV
 * cache to and from kvcd blocks (memory order [layer][K,V][token][head][dim]).
 *
 * The KV cache holds f32 values rounded to the cache dtype (f16 by default, as engines keep
 * it), so a block stored in f16 and fetched back restores the cache bit for bit.
 */
#ifndef KVC_LLAMA_H
#define KVC_LLAMA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvc.h"

struct llm_config {
	int dim, hidden, layers, heads, kv_heads, vocab, seq_len;
	int head_dim, kv_dim;
	bool shared_cls;
};

/* Weights, all f32, read from the checkpoint into one allocation. */
struct llm {
	struct llm_config c;
	float *mem;
	const float *emb, *rms_att, *wq, *wk, *wv, *wo, *rms_ffn, *w1, *w2, *w3, *rms_final, *wcls;
};

/* One sequence being decoded. Caches are [layer][position][kv_dim]. */
struct llm_state {
	uint8_t kv_dtype; /* KVC_F32, KVC_F16 or KVC_BF16: what the cache rounds to */
	float *x, *xb, *xb2, *hb, *hb2, *q, *att, *logits;
	float *kc, *vc;
	float *acc;    /* [seq_len]: attention each position received, summed over
				 * layers, heads and later queries (H2O's accumulated score) */
	float *attn;   /* [layers][dim]: the last step's attention output per layer,
				 * heads concatenated, before wo */
	float *acc_lh; /* [layers][kv_heads][seq_len]: acc per (layer, KV head) */
	float *bias;   /* [layers][kv_heads][seq_len]: added to the attention logit of
				 * each cached token; -inf: dropped by a selection policy */
	float *qs;     /* [seq_len][layers][dim]: each position's post-RoPE queries */
	float *lse;    /* [seq_len][layers][heads]: log-sum-exp of its attention logits */
};

/* Load a llama2.c checkpoint. Returns 0, -errno from open/read, or -EINVAL when the header is
 * implausible or the file size does not match it (*@why, when not NULL, says which). */
int llm_load(const char *path, struct llm *m, const char **why);
void llm_free(struct llm *m);

int llm_state_init(const struct llm *m, struct llm_state *s, uint8_t kv_dtype);
void llm_state_free(struct llm_state *s);

/* Run @token at position @pos (0 <= pos < seq_len): writes its K and V into the cache and
 * the next-token logits into s->logits. Positions below @pos must be in the cache. */
void llm_forward(const struct llm *m, struct llm_state *s, int token, int pos);

/* Argmax of @logits, or a sample at temperature @temp (> 0) drawn with *@rng. */
int llm_sample(const float *logits, int n, float temp, uint64_t *rng);

/* A block of tokens [@t0, @t0 + @n) of the cache, layout and bytes. */
void llm_block_layout(const struct llm *m, const struct llm_state *s, uint32_t n,
		      struct kvc_layout *l);
void llm_block_put(const struct llm *m, const struct llm_state *s, uint32_t t0, uint32_t n,
		   void *dst);
/* Write block @src (layout @l, any dtype) into the cache at @t0, rounding to the cache dtype.
 * Returns -EINVAL when @l does not match this model or runs past seq_len. */
int llm_block_get(const struct llm *m, struct llm_state *s, uint32_t t0, const void *src,
		  const struct kvc_layout *l);

/* Write a block FETCH returned in kvc_sparse form (within @n bytes; layout @l, codec has
 * KVC_CODEC_SPARSE) into the cache at @t0: kept rows at their positions with their bias,
 * dropped tokens masked. Returns -EINVAL when it does not match this model. */
int llm_block_get_sparse(const struct llm *m, struct llm_state *s, uint32_t t0, const void *src,
			 size_t n, const struct kvc_layout *l);

/* Per-token scores for kvc_store_scored: s->acc[t0 .. t0 + n). */
void llm_block_scores(const struct llm_state *s, uint32_t t0, uint32_t n, float *dst);

#endif

/* ---- the engine's side of kvcd ----------------------------------------------------------------
 * Chunks of @chunk tokens, keyed by kvc_key_chain over @keyns (the model's fingerprint and the
 * cache dtype, so other models never hit). One block per chunk through staging offset 0. */
struct llm_kvc {
	kvc_client *c;
	char keyns[128];
	uint32_t chunk;
	uint8_t codec;	 /* kvc_layout.codec on STORE: 0 namespace policy, 1..8 registered */
	bool scores;	 /* send s->acc with each STORE (kvc_store_scored) */
	uint32_t aux;	 /* KVC_AUX_* sent with each STORE (kvc_aux) */
	uint32_t window; /* KVC_AUX_QUERIES: the last queries before the stored prefix ends */
	uint64_t bytes_fetched, bytes_stored;
};

/* "<ns>/<fingerprint of the weights>/<dtype>" into k->keyns. */
void llm_kvc_keyns(const struct llm *m, uint8_t kv_dtype, const char *ns, struct llm_kvc *k);

/* Restore the longest cached prefix of @tok[0..n), whole chunks of at most @max tokens in all,
 * into the cache. Returns the tokens restored, or -errno (-ENOSPC: staging too small). */
int llm_kvc_restore(const struct llm *m, struct llm_state *s, struct llm_kvc *k, const int32_t *tok,
		    size_t n, size_t max);

/* Store chunks [@first, @last) of @tok, whose K and V are in the cache, each with its first
 * token's position. Already cached chunks count as stored. Returns the count, or -errno. */
int llm_kvc_save(const struct llm *m, const struct llm_state *s, struct llm_kvc *k,
		 const int32_t *tok, size_t first, size_t last);

/* Once the prefill is done: RECOMPRESS chunks [0, @last) of @tok, stored raw, under policy
 * @codec (kvc_layout.codec), with the aux k->aux names for the whole chain (the window: the
 * last k->window queries before chunk @last ends). Returns the blocks rewritten, or -errno;
 * *@saved: the pool bytes freed. */
int llm_kvc_recompress(const struct llm *m, const struct llm_state *s, struct llm_kvc *k,
		       const int32_t *tok, size_t last, uint8_t codec, uint64_t *saved);
