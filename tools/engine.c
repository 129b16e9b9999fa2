/* engine.c - the engine's side of kvcd for kvc-llama and kvc-eval: chained chunk keys,
 * LOOKUP of the longest cached prefix, FETCH into the KV cache, STORE of new chunks, and
 * RECOMPRESS of a prefill's chunks once it is done. */
#include "llama.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void llm_kvc_keyns(const struct llm *m, uint8_t kv_dtype, const char *ns, struct llm_kvc *k)
{
	const struct llm_config *c = &m->c;
	size_t n = (size_t)(m->rms_final + c->dim - m->mem);
	const uint8_t *b = (const uint8_t *)m->mem;
	uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a over the weights */

	for (size_t i = 0; i < n * 4; i++)
		h = (h ^ b[i]) * 0x100000001b3ull;
	snprintf(k->keyns, sizeof(k->keyns), "%s/%016llx/%s", ns ? ns : "default",
		 (unsigned long long)h,
		 kv_dtype == KVC_F16	? "f16"
		 : kv_dtype == KVC_BF16 ? "bf16"
					: "f32");
}

int llm_kvc_restore(const struct llm *m, struct llm_state *s, struct llm_kvc *k, const int32_t *tok,
		    size_t n, size_t max)
{
	size_t nk = (n < max ? n : max) / k->chunk, hits = 0, cap;
	struct kvc_key *keys;
	struct kvc_layout l;
	void *stage = kvc_staging(k->c, &cap);
	int err;

	if (!nk)
		return 0;
	llm_block_layout(m, s, k->chunk, &l);
	if (kvc_layout_bytes(&l) > cap)
		return -ENOSPC;
	keys = malloc(nk * sizeof(*keys));
	if (!keys)
		return -ENOMEM;
	err = kvc_key_chain_all(k->keyns, tok, nk * k->chunk, k->chunk, keys, nk);
	if (err >= 0)
		err = kvc_lookup(k->c, keys, nk, &hits);
	/* The hits are fetched in batches, each block into its own slot of staging (room for the
	 * sparse form too): one doorbell and one wait per batch, not a round trip per chunk. */
	size_t slot = (2 * kvc_layout_bytes(&l) + 4096 + 63) & ~(size_t)63;
	size_t per = cap / slot ? cap / slot : 1;

	if (per == 1)
		slot = cap;
	for (size_t i0 = 0; err >= 0 && i0 < hits;) {
		struct kvc_req r[64];
		struct kvc_cqe cq[64];
		size_t batch = hits - i0 < per ? hits - i0 : per;
		int sent, done = 0;

		batch = batch < 64 ? batch : 64;
		memset(r, 0, sizeof(r));
		for (size_t j = 0; j < batch; j++) {
			r[j].op = KVC_OP_FETCH;
			r[j].key = keys[i0 + j];
			r[j].off = j * slot;
			r[j].len = slot;
		}
		sent = kvc_submit(k->c, r, (unsigned)batch, NULL);
		if (sent <= 0) {
			err = sent ? sent : -EAGAIN;
			break;
		}
		while (done < sent) { /* completions come in the order the requests went */
			int w = kvc_wait(k->c, cq + done, 1, (unsigned)(sent - done), -1);

			if (w < 0) {
				err = w;
				break;
			}
			done += w;
		}
		for (int j = 0; err >= 0 && j < done; j++) {
			const char *at = (const char *)stage + (size_t)j * slot;
			uint32_t t0 = (uint32_t)((i0 + (size_t)j) * k->chunk);

			if (cq[j].res == -ENOENT) { /* evicted since the lookup: the prefix ends */
				hits = i0 + (size_t)j;
				break;
			}
			struct kvc_layout got = cq[j].layout;
			size_t room = slot;

			err = cq[j].res;
			if (err == -ENOSPC && slot < cap) { /* larger than its slot: alone, then */
				at = stage;
				room = cap;
				err = kvc_fetch(k->c, &keys[i0 + (size_t)j], 0, cap, &got);
			}
			if (!err && (got.codec & KVC_CODEC_SPARSE))
				err = llm_block_get_sparse(m, s, t0, at, room, &got);
			else if (!err)
				err = llm_block_get(m, s, t0, at, &got);
			if (!err)
				k->bytes_fetched += kvc_layout_bytes(&got);
		}
		if (i0 + (size_t)done > hits) /* the prefix ended inside this batch */
			break;
		i0 += (size_t)done;
	}
	free(keys);
	return err < 0 ? err : (int)(hits * k->chunk);
}

/* The aux header for blocks of layout @l whose stored prefix ends at @end. */
static struct kvc_aux aux_of(const struct llm *m, const struct llm_kvc *k, uint32_t t0,
			     uint32_t end)
{
	struct kvc_aux a = { .magic = KVC_AUX_MAGIC, .what = k->aux };

	if (k->aux & KVC_AUX_QUERIES) {
		a.q_heads = (uint16_t)m->c.heads;
		a.window = (uint16_t)(k->window < end ? k->window : end);
		a.q_pos = (int32_t)(end - a.window) - (int32_t)t0;
	}
	return a;
}

/* Write the aux section for the block at @t0 to @dst: the header, then its arrays. */
static void aux_put(const struct llm *m, const struct llm_state *s, const struct kvc_aux *a,
		    uint32_t t0, uint32_t n, uint8_t *dst)
{
	const struct llm_config *c = &m->c;
	float *f = (float *)(dst + sizeof(*a));

	memcpy(dst, a, sizeof(*a));
	if (a->what & KVC_AUX_ATTN)
		for (int lh = 0; lh < c->layers * c->kv_heads; lh++, f += n)
			memcpy(f, s->acc_lh + (size_t)lh * c->seq_len + t0, (size_t)n * 4);
	if (!(a->what & KVC_AUX_QUERIES))
		return;
	for (int l = 0; l < c->layers; l++)
		for (int h = 0; h < c->heads; h++)
			for (int i = 0; i < a->window; i++, f += c->head_dim)
				memcpy(f,
				       s->qs +
					       ((size_t)(t0 + a->q_pos + i) * c->layers + l) *
						       c->dim +
					       (size_t)h * c->head_dim,
				       (size_t)c->head_dim * 4);
	for (int l = 0; l < c->layers; l++)
		for (int h = 0; h < c->heads; h++)
			for (int i = 0; i < a->window; i++)
				*f++ = s->lse[((size_t)(t0 + a->q_pos + i) * c->layers + l) *
						      c->heads +
					      h];
}

/* STORE through kvc_submit, which carries the block's position in @arg; @aux bytes of aux
 * section follow the block (and scores). */
/* STORE the block in staging (then its scores and aux) as @key, naming its @parent in the
 * chain (NULL for the first), which kvcd's eviction uses to keep prefixes whole. */
static int store_at(struct llm_kvc *k, const struct kvc_key *key, const struct kvc_key *parent,
		    const struct kvc_layout *l, uint32_t pos, uint64_t aux)
{
	struct kvc_req r = { .op = KVC_OP_STORE, .arg = pos, .key = *key, .layout = *l };
	struct kvc_cqe cqe;
	int err;

	r.len = kvc_layout_bytes(l);
	if (k->scores) {
		r.flags = KVC_REQ_SCORES;
		r.len += (uint64_t)l->tokens * 4;
	}
	if (aux) {
		r.flags |= KVC_REQ_AUX;
		r.len += aux;
	}
	if (parent) /* no room for it in staging: the STORE goes without it */
		kvc_req_parent(k->c, &r, parent);
	err = kvc_submit(k->c, &r, 1, NULL);
	if (err == 0)
		return -EAGAIN;
	if (err < 0)
		return err;
	err = kvc_wait(k->c, &cqe, 1, 1, -1);
	return err < 0 ? err : cqe.res;
}

int llm_kvc_save(const struct llm *m, const struct llm_state *s, struct llm_kvc *k,
		 const int32_t *tok, size_t first, size_t last)
{
	struct kvc_layout l;
	struct kvc_key *keys;
	size_t cap, bytes, sbytes, abytes = 0;
	uint8_t *stage = kvc_staging(k->c, &cap);
	int err = 0, stored = 0;

	if (first >= last)
		return 0;
	llm_block_layout(m, s, k->chunk, &l);
	l.codec = k->codec;
	bytes = kvc_layout_bytes(&l);
	sbytes = k->scores ? (size_t)k->chunk * 4 : 0;
	if (k->aux) {
		struct kvc_aux a = aux_of(m, k, 0, (uint32_t)(last * k->chunk));

		abytes = sizeof(a) + kvc_aux_bytes(&a, &l);
		if (abytes == sizeof(a))
			return -EINVAL;
	}
	if (bytes + sbytes + abytes > cap)
		return -ENOSPC;
	keys = malloc(last * sizeof(*keys));
	if (!keys)
		return -ENOMEM;
	err = kvc_key_chain_all(k->keyns, tok, last * k->chunk, k->chunk, keys, last);
	for (size_t i = first; err >= 0 && i < last; i++) {
		uint32_t t0 = (uint32_t)(i * k->chunk);

		llm_block_put(m, s, t0, k->chunk, stage);
		if (k->scores)
			llm_block_scores(s, t0, k->chunk, (float *)(stage + bytes));
		if (k->aux) {
			struct kvc_aux a = aux_of(m, k, t0, (uint32_t)(last * k->chunk));

			aux_put(m, s, &a, t0, k->chunk, stage + bytes + sbytes);
		}
		err = store_at(k, &keys[i], i ? &keys[i - 1] : NULL, &l, t0, abytes);
		if (!err)
			k->bytes_stored += bytes;
		if (!err || err == -EEXIST) {
			err = 0;
			stored++;
		}
	}
	free(keys);
	return err < 0 ? err : stored;
}

int llm_kvc_recompress(const struct llm *m, const struct llm_state *s, struct llm_kvc *k,
		       const int32_t *tok, size_t last, uint8_t codec, uint64_t *saved)
{
	uint32_t end = (uint32_t)(last * k->chunk);
	struct kvc_aux a = aux_of(m, k, 0, end);
	struct kvc_layout l;
	struct kvc_key *keys;
	size_t cap, abytes = 0;
	uint8_t *stage = kvc_staging(k->c, &cap);
	int err;

	if (!last)
		return 0;
	llm_block_layout(m, s, end, &l); /* one block holding the chain: its aux */
	if (k->aux) {
		abytes = sizeof(a) + kvc_aux_bytes(&a, &l);
		if (abytes == sizeof(a))
			return -EINVAL;
		if (abytes > cap)
			return -ENOSPC;
		aux_put(m, s, &a, 0, end, stage);
	}
	keys = malloc(last * sizeof(*keys));
	if (!keys)
		return -ENOMEM;
	err = kvc_key_chain_all(k->keyns, tok, end, k->chunk, keys, last);
	if (err >= 0)
		err = kvc_recompress(k->c, keys, last, 0, codec, 0, abytes, saved);
	free(keys);
	return err;
}
