/* codec.c - the library's entry points (codec.h): plan, write, summarize, decode and score
 * a block, whatever technique its policy names. Here is the one place that tells the three
 * block forms apart:
 *   raw      the engine's bytes as sent (policy none without selection, low-rank or MiniCache)
 *   units    struct kvcd_codec_hdr, then the quantizing codec's units (units.c)
 *   sparse   struct kvcd_codec_hdr, then counts, bitmaps and per-(layer, head) bodies
 *            (sparse.c, with lowrank.c and minicache.c)
 * A SELECT summary (summary.c) may follow any of them, at KVCD_SUMMARY_AT(stored).
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static uint8_t stored_codec(const struct kvcd_policy *p)
{
	return (uint8_t)(p->kind | (kvcd_policy_sel(p) ? KVCP_CODEC_SPARSE : 0));
}

/* entropy=on: a block's size is known once it is encoded, so the plan encodes it (into room
 * for the raw block's bytes besides its header: a stream that needs more is -ERANGE, and the
 * STORE falls back to raw) and keeps it; writing copies it. */
static int plan_entropy(enum kvcd_isa isa, struct kvcd_plan *plan, const void *src,
			const struct kvcd_aux *aux)
{
	struct kvcd_codec_hdr h;
	int err;

	if (!src)
		return -EINVAL;
	plan->enc = malloc(plan->stored + kvcp_layout_bytes(&plan->layout));
	if (!plan->enc)
		return -ENOMEM;
	err = kvcd_sel_encode(isa, &plan->pol, &plan->layout, plan->pos, src, NULL, aux,
			      plan->words, plan->enc);
	if (err)
		return err;
	memcpy(&h, plan->enc, sizeof(h));
	plan->stored = h.bytes;
	return 0;
}

int kvcd_codec_plan(enum kvcd_isa isa, const struct kvcd_policy *p, const struct kvcp_layout *l,
		    uint32_t pos, const void *src, const float *scores, const struct kvcd_aux *aux,
		    struct kvcd_plan *plan)
{
	struct kvcd_summary sm = { .kind = p->summary, .page = p->page, .reps = p->reps };
	char why[8];
	int err;

	memset(plan, 0, sizeof(*plan));
	plan->pol = *p;
	plan->layout = *l;
	plan->layout.codec = 0;
	plan->pos = pos;
	plan->scores = scores && p->hibits && p->kind != KVCD_CODEC_NONE;
	plan->raw = p->kind == KVCD_CODEC_NONE && !kvcd_policy_sel(p);
	plan->codec = stored_codec(p);
	if (kvcd_policy_check(p, &plan->layout, why, sizeof(why)))
		return -EINVAL;
	if (kvcd_policy_sel(p)) {
		/* the counts fix the size: encoding keeps to them whatever staging holds by then */
		plan->words = malloc(kvcd_sel_plan_words(p, &plan->layout) * 4);
		if (!plan->words)
			return -ENOMEM;
		err = kvcd_sel_plan(isa, p, &plan->layout, pos, src, aux, plan->words);
		if (err)
			return err;
		plan->stored = kvcd_sel_size(p, &plan->layout, plan->scores, pos, plan->words);
		if (plan->stored && kvcd_policy_entropy(p) &&
		    (err = plan_entropy(isa, plan, src, aux)))
			return err;
	} else {
		plan->stored = kvcd_codec_size(p, &plan->layout, plan->scores, pos);
	}
	if (!plan->stored)
		return -EINVAL;
	plan->bytes = plan->stored;
	if (p->summary) {
		plan->summary_at = KVCD_SUMMARY_AT(plan->stored);
		plan->bytes = plan->summary_at + kvcd_summary_bytes(&plan->layout, &sm);
	}
	return 0;
}

void kvcd_plan_fini(struct kvcd_plan *plan)
{
	free(plan->words);
	free(plan->enc);
	plan->words = NULL;
	plan->enc = NULL;
}

/* The header of a block in the units or the sparse form. */
static void put_hdr(const struct kvcd_plan *plan, void *dst)
{
	struct kvcd_codec_hdr h = { .magic = KVCD_CODEC_MAGIC, .version = KVCD_CODEC_VERSION };

	h.flags = plan->scores ? KVCD_CODEC_F_SCORES : 0;
	h.pol = plan->pol;
	h.layout = plan->layout;
	h.pos = plan->pos;
	h.bytes = plan->stored;
	memcpy(dst, &h, sizeof(h));
}

int kvcd_codec_write(enum kvcd_isa isa, const struct kvcd_plan *plan, const void *src,
		     const float *scores, const struct kvcd_aux *aux, void *dst)
{
	const struct kvcp_layout *l = &plan->layout;

	if (plan->raw) {
		memcpy(dst, src, kvcp_layout_bytes(l));
		return 0;
	}
	scores = plan->scores ? scores : NULL;
	if (plan->scores && !scores)
		return -EINVAL;
	for (uint32_t t = 0; scores && t < l->tokens; t++)
		if (!isfinite(scores[t]))
			return -EINVAL;
	if (plan->enc) {
		memcpy(dst, plan->enc, plan->stored);
		return 0;
	}
	if (kvcd_policy_sel(&plan->pol))
		return kvcd_sel_encode(isa, &plan->pol, l, plan->pos, src, scores, aux, plan->words,
				       dst);
	put_hdr(plan, dst);
	return kvcd_units_encode(isa, &plan->pol, l, plan->pos, src, scores,
				 (uint8_t *)dst + sizeof(struct kvcd_codec_hdr));
}

int kvcd_codec_gpu_plan(const struct kvcd_plan *plan, struct kvcg_job *j)
{
	if (plan->raw || plan->scores)
		return -ENOTSUP;
	return kvcd_units_gpu_job(&plan->pol, &plan->layout, plan->pos, false, j);
}

void kvcd_codec_gpu_header(const struct kvcd_plan *plan, void *dst)
{
	put_hdr(plan, dst);
}

int kvcd_codec_summary(enum kvcd_isa isa, const struct kvcd_plan *plan, const void *src, void *dst)
{
	const struct kvcd_policy *p = &plan->pol;
	struct kvcd_summary sm = { .kind = p->summary, .page = p->page, .reps = p->reps };

	if (!p->summary)
		return 0;
	return kvcd_summary_make(isa, &plan->layout, &sm, plan->raw ? dst : src,
				 (uint8_t *)dst + plan->summary_at);
}

uint64_t kvcd_codec_size(const struct kvcd_policy *p, const struct kvcp_layout *l, bool scores,
			 uint32_t pos)
{
	char why[8];

	if (kvcd_policy_check(p, l, why, sizeof(why)))
		return 0;
	if (kvcd_policy_sel(p))
		return kvcd_sel_size(p, l, scores, pos, NULL);
	if (p->kind == KVCD_CODEC_NONE)
		return kvcp_layout_bytes(l);
	return sizeof(struct kvcd_codec_hdr) + kvcd_units_size(p, l, scores, pos);
}

int kvcd_codec_encode(enum kvcd_isa isa, const struct kvcd_policy *p, const struct kvcp_layout *l,
		      uint32_t pos, const void *src, const float *scores, void *dst)
{
	struct kvcd_plan plan;
	int err;

	err = kvcd_codec_plan(isa, p, l, pos, src, scores, NULL, &plan);
	if (!err)
		err = kvcd_codec_write(isa, &plan, src, scores, NULL, dst);
	kvcd_plan_fini(&plan);
	return err;
}

/* Read and check the header of an encoded block of @n bytes. */
static int read_hdr(const void *src, uint64_t n, struct kvcd_codec_hdr *h)
{
	char why[8];

	if (n < sizeof(*h))
		return -EBADMSG;
	memcpy(h, src, sizeof(*h));
	if (h->magic != KVCD_CODEC_MAGIC || h->version != KVCD_CODEC_VERSION ||
	    (h->flags & ~KVCD_CODEC_F_SCORES) ||
	    (h->pol.kind == KVCD_CODEC_NONE && !kvcd_policy_sel(&h->pol)) || h->layout.codec ||
	    (h->reserved != 0) != kvcd_policy_learned(&h->pol) || h->bytes != n ||
	    kvcd_policy_check(&h->pol, &h->layout, why, sizeof(why)))
		return -EBADMSG;
	return 0;
}

uint64_t kvcd_codec_out_size(const void *src, uint64_t n)
{
	struct kvcd_codec_hdr h;

	if (read_hdr(src, n, &h))
		return 0;
	if (kvcd_policy_sel(&h.pol))
		return kvcd_sel_out_size(&h, src, n);
	return kvcp_layout_bytes(&h.layout);
}

int kvcd_codec_gpu_read(const void *src, uint64_t n, struct kvcg_job *j)
{
	struct kvcd_codec_hdr h;
	bool scores;
	int err;

	if (read_hdr(src, n, &h))
		return -EBADMSG;
	scores = h.flags & KVCD_CODEC_F_SCORES;
	if (kvcd_policy_sel(&h.pol) || scores)
		return -ENOTSUP;
	err = kvcd_units_gpu_job(&h.pol, &h.layout, h.pos, false, j);
	if (!err && j->bytes != n)
		return -EBADMSG;
	return err;
}

uint32_t kvcd_codec_basis_of(const void *src, uint64_t n, uint64_t *id)
{
	struct kvcd_codec_hdr h;

	*id = 0;
	if (read_hdr(src, n, &h) || !kvcd_policy_sel(&h.pol))
		return 0;
	return kvcd_sel_basis_id(&h, src, n, id);
}

int kvcd_codec_decode(enum kvcd_isa isa, const void *src, uint64_t n, void *dst, uint64_t cap,
		      struct kvcp_layout *l)
{
	return kvcd_codec_decode_with(isa, src, n, NULL, 0, dst, cap, l);
}

int kvcd_codec_decode_with(enum kvcd_isa isa, const void *src, uint64_t n, const void *basis,
			   uint64_t basis_len, void *dst, uint64_t cap, struct kvcp_layout *l)
{
	struct kvcd_codec_hdr h;
	bool scores;

	if (read_hdr(src, n, &h))
		return -EBADMSG;
	if (kvcd_policy_sel(&h.pol))
		return kvcd_sel_decode(isa, &h, src, n, basis, basis_len, dst, cap, l);
	scores = h.flags & KVCD_CODEC_F_SCORES;
	if (kvcd_codec_size(&h.pol, &h.layout, scores, h.pos) != n)
		return -EBADMSG;
	*l = h.layout;
	if (kvcp_layout_bytes(&h.layout) > cap)
		return -ENOSPC;
	return kvcd_units_decode(isa, &h.pol, &h.layout, h.pos, scores,
				 (const uint8_t *)src + sizeof(h), dst);
}
