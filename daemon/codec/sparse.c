/* sparse.c - the block forms that do not keep every token of every (layer, KV head) as its
 * codec would: token selection (select=, with budgets from scores.c, merging of the dropped
 * tokens, cold= demotion of them), and the block layout that low-rank (lowrank.c) and
 * MiniCache (minicache.c) bodies share with it: counts, kept-token bitmaps, then per
 * (layer, head) a body. Kept rows go through the policy's codec (units.c) as a block of one
 * layer, one head and count tokens. FETCH gets the struct kvcp_sparse form. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define PYRAMID_BETA 20.0 /* PyramidKV's default: the deepest layer keeps m / 20 */
#define ADAKV_ALPHA  0.2  /* Ada-KV's safeguard: a head keeps at least 20% of the mean */
#define HEADS_EPS    0.1  /* streaming heads: together under 10% of the non-local attention */

static uint32_t sinks_in(const struct kvcd_policy *p, uint32_t pos, uint32_t t)
{
	return p->sink > pos ? (p->sink - pos < t ? p->sink - pos : t) : 0;
}

static uint32_t mean_count(const struct kvcd_policy *p, uint32_t t)
{
	uint64_t n = ((uint64_t)t * p->keep + 5000) / 10000;

	return n ? (n < t ? (uint32_t)n : t) : 1;
}

static struct kvcp_layout mini_of(const struct kvcp_layout *l, uint32_t n)
{
	struct kvcp_layout m = {
		.dtype = l->dtype, .layers = 1, .kv_heads = 1, .head_dim = l->head_dim, .tokens = n
	};

	return m;
}

/* The codec of demoted tokens (cold=B): B-bit ints with one-byte parameters. */
static struct kvcd_policy cold_of(const struct kvcd_policy *p)
{
	struct kvcd_policy c;
	char s[32], why[8];

	snprintf(s, sizeof(s), "int%u:params=u8", p->cold);
	if (kvcd_policy_parse(s, &c, why, sizeof(why)))
		memset(&c, 0, sizeof(c)); /* 2..8 always parse; none encodes nothing wrong */
	return c;
}

/* Bytes of the cold rows of a (layer, head) that keeps @n of @l's tokens. */
static uint64_t cold_size(const struct kvcd_policy *p, const struct kvcp_layout *l, uint32_t n,
			  uint32_t pos)
{
	struct kvcd_policy c;
	struct kvcp_layout m = mini_of(l, l->tokens - n);

	if (!p->cold || n >= l->tokens)
		return 0;
	c = cold_of(p);
	return kvcd_units_size(&c, &m, false, pos);
}

static bool tucker(const struct kvcd_policy *p)
{
	return p->rank && (p->lowrank & KVCD_LOWRANK_TUCKER);
}

/* energy= and learned=: the plan also holds each (layer, head)'s K and V ranks after the
 * counts, and with tensor=tucker each layer's K then V ranks of its token, head and channel
 * modes; the block stores them as bytes after its counts (learned=: after the basis's id). */
static size_t ranks_n(const struct kvcd_policy *p, const struct kvcp_layout *l)
{
	return tucker(p)			     ? 6 * (size_t)l->layers
	       : p->energy || kvcd_policy_learned(p) ? 2 * (size_t)l->layers * l->kv_heads
						     : 0;
}

/* learned=on with kbits/vbits: the plan then holds each direction's bits, 2 x head_dim words
 * per (layer, head) (K's, then V's, 0 past the rank), after the ranks; the block stores them
 * as nibbles after its ranks. */
static size_t coded_n(const struct kvcd_policy *p, const struct kvcp_layout *l)
{
	return kvcd_policy_coded(p) ? 2 * (size_t)l->layers * l->kv_heads * l->head_dim : 0;
}

/* entropy=on: then each (layer, head)'s K and V streams' bytes, 2 words per (layer, head)
 * after the bits; the block stores them as u32 after the nibbles. */
static size_t ent_n(const struct kvcd_policy *p, const struct kvcp_layout *l)
{
	return kvcd_policy_entropy(p) ? 2 * (size_t)l->layers * l->kv_heads : 0;
}

static size_t ranks_bytes(const struct kvcd_policy *p, const struct kvcp_layout *l)
{
	return ranks_n(p, l) + (kvcd_policy_learned(p) ? 8 : 0) + coded_n(p, l) / 2 +
	       4 * ent_n(p, l);
}

static size_t plan_words(const struct kvcd_policy *p, const struct kvcp_layout *l)
{
	return (size_t)l->layers * l->kv_heads + ranks_n(p, l) + coded_n(p, l) + ent_n(p, l);
}

/* Where a sparse block's rank bytes start: after its header, its counts and (learned=) its
 * basis's id. The bits' nibbles (kbits/vbits) follow the ranks, then the streams' bytes
 * (entropy=on). Encoder and decoder both take the places from here. */
static size_t ranks_off(const struct kvcd_policy *p, const struct kvcp_layout *l)
{
	return sizeof(struct kvcd_codec_hdr) + (size_t)l->layers * l->kv_heads * 4 +
	       (kvcd_policy_learned(p) ? 8 : 0);
}

static size_t nibbles_off(const struct kvcd_policy *p, const struct kvcp_layout *l)
{
	return ranks_off(p, l) + ranks_n(p, l);
}

static size_t streams_off(const struct kvcd_policy *p, const struct kvcp_layout *l)
{
	return nibbles_off(p, l) + coded_n(p, l) / 2;
}

/* entropy=on: the stream bytes in a plan (K's then V's of each (layer, head)), or NULL. */
static const uint32_t *streams_at(const struct kvcd_policy *p, const struct kvcp_layout *l,
				  const uint32_t *counts)
{
	size_t lh = (size_t)l->layers * l->kv_heads;

	return ent_n(p, l) ? counts + lh + ranks_n(p, l) + coded_n(p, l) : NULL;
}

/* The bits of (layer, head) @u's directions in a plan (K's head_dim words, then V's), or NULL. */
static const uint32_t *bits_at(const struct kvcd_policy *p, const struct kvcp_layout *l,
			       const uint32_t *counts, size_t u)
{
	size_t lh = (size_t)l->layers * l->kv_heads;

	return kvcd_policy_coded(p) ? counts + lh + ranks_n(p, l) + 2 * u * l->head_dim : NULL;
}

/* learned=: the basis in @aux, checked against @l's shape; NULL when there is none. */
static const void *basis_for(const struct kvcp_layout *l, const struct kvcd_aux *aux)
{
	struct kvcd_basis_hdr h;

	if (!aux || !aux->basis || kvcd_basis_shape_ok(aux->basis, aux->basis_len))
		return NULL;
	memcpy(&h, aux->basis, sizeof(h));
	return h.layers == l->layers && h.kv_heads == l->kv_heads && h.head_dim == l->head_dim
		       ? aux->basis
		       : NULL;
}

/* The ranks of (layer, head) @u in a plan (for tucker, its layer's six), or NULL. */
static const uint32_t *ranks_at(const struct kvcd_policy *p, const struct kvcp_layout *l,
				const uint32_t *counts, size_t u)
{
	size_t lh = (size_t)l->layers * l->kv_heads;

	if (tucker(p))
		return counts + lh + 6 * (u / l->kv_heads);
	return p->energy || kvcd_policy_learned(p) ? counts + lh + 2 * u : NULL;
}

size_t kvcd_sel_plan_words(const struct kvcd_policy *p, const struct kvcp_layout *l)
{
	return plan_words(p, l);
}

/* Bytes of the body of (layer, head) @u's @n kept rows: the codec's units (and with cold=,
 * the dropped rows' after them), the K and V factors (svd=layer: the layer's, on its first
 * head), or (MiniCache) the pair's whole body on its first layer and nothing on its second.
 * @plan: the block's plan (its ranks and bits), or NULL where they do not matter. */
static uint64_t body_size(const struct kvcd_policy *p, const struct kvcp_layout *l, size_t u,
			  uint32_t n, bool scores, uint32_t pos, const uint32_t *plan)
{
	const uint32_t *rk = plan ? ranks_at(p, l, plan, u) : NULL;
	const uint32_t *bits = plan ? bits_at(p, l, plan, u) : NULL;

	struct kvcp_layout m = mini_of(l, n);
	uint32_t layer = (uint32_t)(u / l->kv_heads), r = kvcd_lr_rank(p, n, l->head_dim);
	uint32_t hd = (uint32_t)l->kv_heads * l->head_dim;

	if (!n)
		return cold_size(p, l, n, pos);
	if (p->mc && kvcd_mc_role(p, l->layers, layer))
		return kvcd_mc_role(p, l->layers, layer) == 1 ? kvcd_mc_pair_size(p, l) : 0;
	if (!p->rank)
		return kvcd_units_size(p, &m, scores, pos) + cold_size(p, l, n, pos);
	if (tucker(p)) /* the layer's K and V tensors, on its first head */
		return u % l->kv_heads || !rk ? 0 : kvcd_tk_bytes(l, rk) + kvcd_tk_bytes(l, rk + 3);
	if (p->lowrank & KVCD_LOWRANK_LAYER)
		return u % l->kv_heads ? 0
				       : 2 * kvcd_lr_factor_bytes(p, l->dtype, n,
								  kvcd_lr_rank(p, n, hd), hd);
	if (rk && bits && kvcd_policy_entropy(p)) /* as long as their streams came out */
		return (uint64_t)streams_at(p, l, plan)[2 * u] + streams_at(p, l, plan)[2 * u + 1];
	if (rk && bits) /* coefficients with their bits: the basis is the namespace's */
		return kvcd_lr_coded_bytes(n, rk[0], bits) +
		       kvcd_lr_coded_bytes(n, rk[1], bits + l->head_dim);
	if (rk && kvcd_policy_learned(p)) /* coefficients only: the basis is the namespace's */
		return kvcd_lr_coef_bytes(p, l->dtype, n, rk[0]) +
		       kvcd_lr_coef_bytes(p, l->dtype, n, rk[1]);
	if (rk) /* energy=: the plan's ranks of K and V */
		return kvcd_lr_factor_bytes(p, l->dtype, n, rk[0], l->head_dim) +
		       kvcd_lr_factor_bytes(p, l->dtype, n, rk[1], l->head_dim);
	return 2 * kvcd_lr_factor_bytes(p, l->dtype, n, r, l->head_dim);
}

/* A kept-token bitmap with every one of @t tokens. */
static void all_kept(uint8_t *bits, uint32_t t)
{
	memset(bits, 0, (t + 7) / 8);
	for (uint32_t i = 0; i < t; i++)
		bits[i / 8] |= (uint8_t)(1u << (i % 8));
}

/* PyramidKV's per-layer counts, none above @t: what a shallow layer cannot take goes to the
 * next layers down, so the total stays layers * mean whenever it fits. */
static void pyramid(uint32_t layers, uint32_t t, uint32_t mean, uint32_t *out)
{
	uint64_t spill = 0;

	kvcd_budget_pyramid((uint64_t)mean * layers, layers, PYRAMID_BETA, out);
	for (uint32_t l = 0; l < layers; l++) {
		uint64_t want = out[l] + spill;

		out[l] = want > t ? t : (uint32_t)want;
		spill = want - out[l];
	}
}

static int need_aux(const struct kvcd_policy *p, const struct kvcd_aux *a)
{
	if (a && a->keep && !p->merge) /* chosen already: no score is read */
		return 0;
	if (p->select == KVCD_SELECT_H2O && !(a && (a->what & KVCP_AUX_ATTN) && a->attn))
		return -EINVAL;
	if (p->select == KVCD_SELECT_SNAPKV &&
	    !(a && (a->what & KVCP_AUX_QUERIES) && a->q && a->lse && a->window && a->q_heads))
		return -EINVAL;
	return 0;
}

/* Working memory for one block. */
struct sel_work {
	float *kp, *vp;	       /* T x H x D: one layer's K and V planes, f32 */
	float *score, *tmp;    /* H x T, T */
	uint32_t *keep, *utmp; /* T, T */
	float *rows;	       /* 2 x T x D: a head's kept K rows, then V rows */
	float *bias;	       /* T: log of the mass each kept row stands for over its own */
	float *mass;	       /* T: attention mass of each token, for merging */
	float *sc;	       /* T: importance scores of the kept tokens */
	void *raw;	       /* 2 x T x D in the engine's dtype */
	float *u, *sv, *vt;    /* low-rank: T x D, D + 1, D x D */
	float *kp2, *vp2;      /* MiniCache: the pair's second layer */
	float *mcf;	       /* MiniCache: T x (D + 2) + 2 D */
	uint32_t *idx;	       /* MiniCache: 2 T */
};

static int work_alloc(struct sel_work *w, const struct kvcp_layout *l)
{
	size_t t = l->tokens, hd = (size_t)l->kv_heads * l->head_dim, td = t * l->head_dim;

	memset(w, 0, sizeof(*w));
	w->kp = malloc(t * hd * 4 * 2 + (size_t)l->kv_heads * t * 4 + t * 4 * 6 + td * 4 * 2 +
		       td * 2 * kvcp_dtype_size(l->dtype) +
		       (td + l->head_dim + 1 + (size_t)l->head_dim * l->head_dim) * 4 +
		       t * hd * 4 * 2 + (t * (l->head_dim + 2) + 2 * (size_t)l->head_dim) * 4 +
		       t * 2 * 4);
	if (!w->kp)
		return -ENOMEM;
	w->vp = w->kp + t * hd;
	w->score = w->vp + t * hd;
	w->tmp = w->score + (size_t)l->kv_heads * t;
	w->keep = (uint32_t *)(w->tmp + t);
	w->utmp = w->keep + t;
	w->bias = (float *)(w->utmp + t);
	w->mass = w->bias + t;
	w->sc = w->mass + t;
	w->rows = w->sc + t;
	w->raw = w->rows + td * 2;
	w->u = (float *)((uint8_t *)w->raw + td * 2 * kvcp_dtype_size(l->dtype));
	w->sv = w->u + td;
	w->vt = w->sv + l->head_dim + 1;
	w->kp2 = w->vt + (size_t)l->head_dim * l->head_dim;
	w->vp2 = w->kp2 + t * hd;
	w->mcf = w->vp2 + t * hd;
	w->idx = (uint32_t *)(w->mcf + t * (l->head_dim + 2) + 2 * (size_t)l->head_dim);
	return 0;
}

/* One layer's planes as f32 into @kp and @vp (NULL: keys only); -EINVAL on inf/nan. */
static int load_planes(enum kvcd_isa isa, const struct kvcp_layout *l, const void *src,
		       uint32_t layer, float *kp, float *vp)
{
	size_t hd = (size_t)l->kv_heads * l->head_dim, n = hd * l->tokens;
	size_t plane = n * kvcp_dtype_size(l->dtype);
	const uint8_t *k = (const uint8_t *)src + (size_t)layer * 2 * plane;

	kvcd_to_f32(isa, l->dtype, k, kp, n);
	if (vp)
		kvcd_to_f32(isa, l->dtype, k + plane, vp, n);
	for (size_t i = 0; i < n; i++)
		if (!isfinite(kp[i]) || (vp && !isfinite(vp[i])))
			return -EINVAL;
	return 0;
}

static int load_layer(enum kvcd_isa isa, const struct kvcp_layout *l, const void *src,
		      uint32_t layer, bool values, struct sel_work *w)
{
	return load_planes(isa, l, src, layer, w->kp, values ? w->vp : NULL);
}

/* Scores of (@layer, @head): higher is kept first. */
static void score_head(const struct kvcd_policy *p, const struct kvcp_layout *l,
		       const struct kvcd_aux *a, uint32_t layer, uint32_t head, struct sel_work *w,
		       float *score)
{
	uint32_t t = l->tokens, d = l->head_dim, h = l->kv_heads;
	const float *keys = w->kp + (size_t)head * d;

	switch (p->select) {
	case KVCD_SELECT_RECENT: kvcd_score_recency(t, score); break;
	case KVCD_SELECT_KEYNORM: kvcd_score_keynorm(keys, h * d, t, d, score); break;
	case KVCD_SELECT_H2O:
		memcpy(score, a->attn + ((size_t)layer * h + head) * t, (size_t)t * 4);
		break;
	default: { /* snapkv */
		uint32_t g = a->q_heads / h;
		size_t q0 = ((size_t)layer * a->q_heads + (size_t)head * g) * a->window;

		kvcd_score_snapkv(keys, h * d, t, d, a->q + q0 * d, a->lse + q0, g, a->window,
				  a->q_pos, p->kernel ? p->kernel : 1, w->tmp, score);
	}
	}
}

/* The @m rows (@ly, @hh) keeps under @p, its layer's planes loaded: w->keep (ascending), and
 * in w->rows their K rows then their V rows. w->score keeps the head's scores. Returns m. */
static uint32_t gather(const struct kvcd_policy *p, const struct kvcp_layout *l,
		       const struct kvcd_aux *aux, uint32_t ly, uint32_t hh, uint32_t m,
		       uint32_t nsink, struct sel_work *w)
{
	size_t stride = (size_t)l->kv_heads * l->head_dim;
	uint32_t d = l->head_dim;

	if (aux && aux->keep) { /* chosen across a chain: the scores only weigh merges */
		const uint8_t *bits = aux->keep +
				      ((size_t)ly * l->kv_heads + hh) * ((l->tokens + 7) / 8);

		if (p->merge)
			score_head(p, l, aux, ly, hh, w, w->score);
		m = 0;
		for (uint32_t i = 0; i < l->tokens; i++)
			if (bits[i / 8] >> (i % 8) & 1)
				w->keep[m++] = i;
	} else if (p->select) {
		score_head(p, l, aux, ly, hh, w, w->score);
		m = kvcd_select_keep(w->score, l->tokens, m, nsink, p->window, w->utmp, w->keep);
	} else {
		for (uint32_t i = 0; i < m; i++)
			w->keep[i] = i;
	}
	for (uint32_t i = 0; i < m; i++) {
		memcpy(w->rows + (size_t)i * d, w->kp + w->keep[i] * stride + hh * d, d * 4);
		memcpy(w->rows + ((size_t)m + i) * d, w->vp + w->keep[i] * stride + hh * d, d * 4);
	}
	return m;
}

/* energy=: each (layer, head)'s K and V rank from the SVD of its kept rows, after @counts. */
static int plan_ranks(enum kvcd_isa isa, const struct kvcd_policy *p, const struct kvcp_layout *l,
		      uint32_t pos, const void *src, const struct kvcd_aux *aux, uint32_t *counts)
{
	size_t lh = (size_t)l->layers * l->kv_heads;
	uint32_t d = l->head_dim, nsink = sinks_in(p, pos, l->tokens), *rk = counts + lh;
	struct sel_work w;
	int err;

	if (!src || (err = need_aux(p, aux)) || (err = work_alloc(&w, l)))
		return src ? err : -EINVAL;
	if (tucker(p)) { /* each layer's K and V tensors: three ranks each */
		float *buf = malloc(kvcd_tk_buf_floats(l) * 4);

		err = buf ? 0 : -ENOMEM;
		for (uint32_t ly = 0; ly < l->layers && !err; ly++) {
			err = load_layer(isa, l, src, ly, true, &w);
			if (!err)
				err = kvcd_tk_ranks(p, l, w.kp, buf, rk + 6 * ly);
			if (!err)
				err = kvcd_tk_ranks(p, l, w.vp, buf, rk + 6 * ly + 3);
		}
		free(buf);
		free(w.kp);
		return err;
	}
	for (uint32_t ly = 0; ly < l->layers && !err; ly++) {
		err = load_layer(isa, l, src, ly, true, &w);
		for (uint32_t hh = 0; hh < l->kv_heads && !err; hh++) {
			size_t u = (size_t)ly * l->kv_heads + hh;
			uint32_t m = gather(p, l, aux, ly, hh, counts[u], nsink, &w);
			uint32_t cap = kvcd_lr_rank(p, m, d);

			rk[2 * u] = rk[2 * u + 1] = 0;
			if (!m)
				continue;
			rk[2 * u] = kvcd_lr_energy_rank(w.rows, m, d, p->energy, cap, w.u, w.sv,
							w.vt, &err);
			if (!err)
				rk[2 * u + 1] = kvcd_lr_energy_rank(w.rows + (size_t)m * d, m, d,
								    p->energy, cap, w.u, w.sv, w.vt,
								    &err);
		}
	}
	free(w.kp);
	return err;
}

/* The counts of one layer's @h heads under budget=adakv or heads, from their scores @score
 * (@h x @t), whose sinks and window this sets to INFINITY; @tmp: @h x @t floats. */
static void layer_counts(const struct kvcd_policy *p, uint32_t h, uint32_t t, uint32_t n,
			 uint32_t nsink, float *score, float *tmp, uint32_t *counts)
{
	/* head roles, for budget=heads (at most 256 KV heads; more fall back to Ada-KV) */
	bool roles = p->budget == KVCD_BUDGET_HEADS && h <= 256;
	float frac[256];

	for (uint32_t hh = 0; hh < h; hh++) {
		float *s = score + (size_t)hh * t;
		double all = 0, far = 0;

		/* sinks and the window are kept whatever their scores: they count first */
		for (uint32_t i = 0; i < t; i++) {
			bool local = i < nsink || i + p->window >= t;

			if (roles && s[i] > 0) { /* the attention beyond them, as a share */
				all += s[i];
				far += local ? 0 : s[i];
			}
			if (local)
				s[i] = INFINITY;
		}
		if (roles)
			frac[hh] = all > 0 ? (float)(far / all) : 0.0f;
	}
	if (roles)
		kvcd_budget_heads(frac, h, t, n, nsink + (p->window < t ? p->window : t), HEADS_EPS,
				  counts);
	else
		kvcd_budget_adakv(score, h, t, n, ADAKV_ALPHA, tmp, counts);
}

static int plan_counts(enum kvcd_isa isa, const struct kvcd_policy *p, const struct kvcp_layout *l,
		       uint32_t pos, const void *src, const struct kvcd_aux *aux, uint32_t *counts)
{
	uint32_t t = l->tokens, h = l->kv_heads, n = mean_count(p, t), nsink = sinks_in(p, pos, t);
	struct sel_work w;
	int err;

	if (aux && aux->keep) { /* chosen across a chain (kvcd_codec_chain_select) */
		size_t bm = (t + 7) / 8;

		for (size_t u = 0; u < (size_t)l->layers * h; u++) {
			counts[u] = 0;
			for (size_t i = 0; i < bm; i++)
				counts[u] += (uint32_t)__builtin_popcount(aux->keep[u * bm + i]);
		}
		return 0;
	}
	if (p->budget == KVCD_BUDGET_UNIFORM) { /* low-rank alone keeps every token */
		for (size_t i = 0; i < (size_t)l->layers * h; i++)
			counts[i] = p->select ? n : t;
		return 0;
	}
	if (p->budget == KVCD_BUDGET_PYRAMID) {
		pyramid(l->layers, t, n, counts);
		for (uint32_t ly = l->layers; ly-- > 0;)
			for (uint32_t hh = 0; hh < h; hh++)
				counts[(size_t)ly * h + hh] = counts[ly];
		return 0;
	}
	if (!src || (err = need_aux(p, aux)) || (err = work_alloc(&w, l)))
		return src ? err : -EINVAL;
	for (uint32_t ly = 0; ly < l->layers && !err; ly++) {
		err = load_layer(isa, l, src, ly, false, &w);
		for (uint32_t hh = 0; hh < h && !err; hh++)
			score_head(p, l, aux, ly, hh, &w, w.score + (size_t)hh * t);
		if (!err) /* the K plane is done with: it is the joint top-k's scratch */
			layer_counts(p, h, t, n, nsink, w.score, w.kp, counts + (size_t)ly * h);
	}
	free(w.kp);
	return err;
}

int kvcd_sel_plan(enum kvcd_isa isa, const struct kvcd_policy *p, const struct kvcp_layout *l,
		  uint32_t pos, const void *src, const struct kvcd_aux *aux, uint32_t *counts)
{
	int err = plan_counts(isa, p, l, pos, src, aux, counts);
	size_t lh = (size_t)l->layers * l->kv_heads;

	if (!err && kvcd_policy_learned(p)) { /* the basis's ranks, capped by rank= */
		const void *b = basis_for(l, aux);
		const uint8_t *brk = b ? kvcd_basis_ranks(b) : NULL;

		if (!b || (kvcd_policy_coded(p) && !kvcd_basis_vars(b, 0, 0)))
			return -ENOKEY; /* none, or a KVB1 basis: no variances to spread bits by */
		for (size_t j = 0; j < 2 * lh; j++)
			counts[lh + j] = !counts[j / 2] ? 0 : brk[j] < p->rank ? brk[j] : p->rank;
		if (ent_n(p, l)) /* known once written */
			memset(counts + lh + ranks_n(p, l) + coded_n(p, l), 0, ent_n(p, l) * 4);
		return kvcd_policy_coded(p)
			       ? kvcd_lr_alloc(p, l, b, counts, counts + lh + ranks_n(p, l))
			       : 0;
	}
	return err || !p->energy ? err : plan_ranks(isa, p, l, pos, src, aux, counts);
}

size_t kvcd_codec_keep_bytes(const struct kvcp_layout *l)
{
	return (size_t)l->layers * l->kv_heads * ((l->tokens + 7) / 8);
}

/* The chain's scores of (@ly, every head) into @score (H x @t, the chain's tokens), one block's
 * keys at a time through @kp. */
static int chain_scores(enum kvcd_isa isa, const struct kvcd_policy *p, uint32_t n,
			const struct kvcp_layout *ls, const void *const *srcs,
			const struct kvcd_aux *a, uint32_t ly, uint32_t t, float *kp, float *tmp,
			float *score)
{
	uint32_t h = ls[0].kv_heads, d = ls[0].head_dim, off = 0;

	for (uint32_t i = 0; i < n; off += ls[i++].tokens) {
		uint32_t bt = ls[i].tokens;
		int err = load_planes(isa, &ls[i], srcs[i], ly, kp, NULL);

		if (err)
			return err;
		for (uint32_t hh = 0; hh < h; hh++) {
			float *row = score + (size_t)hh * t + off;
			const float *keys = kp + (size_t)hh * d;

			switch (p->select) {
			case KVCD_SELECT_RECENT:
				for (uint32_t k = 0; k < bt; k++)
					row[k] = (float)(off + k);
				break;
			case KVCD_SELECT_KEYNORM:
				kvcd_score_keynorm(keys, h * d, bt, d, row);
				break;
			case KVCD_SELECT_H2O:
				memcpy(row, a->attn + ((size_t)ly * h + hh) * t + off,
				       (size_t)bt * 4);
				break;
			default: { /* snapkv: the same sums as over one block; pooled below */
				uint32_t g = a->q_heads / h;
				size_t q0 = ((size_t)ly * a->q_heads + (size_t)hh * g) * a->window;

				kvcd_score_snapkv(keys, h * d, bt, d, a->q + q0 * d, a->lse + q0, g,
						  a->window, (int64_t)a->q_pos - off, 1, tmp, row);
			}
			}
		}
	}
	for (uint32_t hh = 0; p->select == KVCD_SELECT_SNAPKV && p->kernel > 1 && hh < h; hh++)
		kvcd_score_pool(score + (size_t)hh * t, t, p->kernel, tmp);
	return 0;
}

int kvcd_codec_chain_select(enum kvcd_isa isa, const struct kvcd_policy *p, uint32_t n,
			    const struct kvcp_layout *ls, const void *const *srcs, uint32_t pos,
			    const struct kvcd_aux *aux, uint8_t *const *keep)
{
	struct kvcp_layout all;
	uint64_t total = 0;
	uint32_t maxt = 0, t, h, mean, nsink, *counts, *idx;
	float *score, *copy, *tmp, *kp;
	char why[8];
	int err = 0;

	if (!n || !p->select || p->mc || need_aux(p, aux))
		return -EINVAL;
	for (uint32_t i = 0; i < n; i++) {
		if (ls[i].dtype != ls[0].dtype || ls[i].layers != ls[0].layers ||
		    ls[i].kv_heads != ls[0].kv_heads || ls[i].head_dim != ls[0].head_dim ||
		    !ls[i].tokens)
			return -EINVAL;
		total += ls[i].tokens;
		maxt = ls[i].tokens > maxt ? ls[i].tokens : maxt;
	}
	all = ls[0];
	all.codec = 0;
	all.tokens = total < UINT32_MAX ? (uint32_t)total : 0;
	if (!all.tokens || kvcd_policy_check(p, &all, why, sizeof(why)))
		return -EINVAL;
	t = all.tokens;
	h = all.kv_heads;
	mean = mean_count(p, t);
	nsink = sinks_in(p, pos, t);
	score = malloc((size_t)h * t * 4 * 2 + ((size_t)h * t + maxt) * 4 +
		       (size_t)maxt * h * all.head_dim * 4 + (size_t)t * 4 * 2 +
		       ((size_t)all.layers + h) * 4);
	if (!score)
		return -ENOMEM;
	copy = score + (size_t)h * t;
	tmp = copy + (size_t)h * t;
	kp = tmp + (size_t)h * t + maxt;
	idx = (uint32_t *)(kp + (size_t)maxt * h * all.head_dim);
	counts = idx + (size_t)t * 2; /* layers (pyramid), then h */
	if (p->budget == KVCD_BUDGET_PYRAMID)
		pyramid(all.layers, t, mean, counts);
	for (uint32_t i = 0; i < n; i++)
		memset(keep[i], 0, kvcd_codec_keep_bytes(&ls[i]));
	for (uint32_t ly = 0; ly < all.layers && !err; ly++) {
		uint32_t *c = counts + all.layers;

		err = chain_scores(isa, p, n, ls, srcs, aux, ly, t, kp, tmp, score);
		if (err)
			break;
		for (uint32_t hh = 0; hh < h; hh++)
			c[hh] = p->budget == KVCD_BUDGET_UNIFORM   ? mean
				: p->budget == KVCD_BUDGET_PYRAMID ? counts[ly]
								   : 0;
		if (p->budget != KVCD_BUDGET_UNIFORM && p->budget != KVCD_BUDGET_PYRAMID) {
			/* the budgets mark sinks and window; the keep set sees the scores */
			memcpy(copy, score, (size_t)h * t * 4);
			layer_counts(p, h, t, mean, nsink, copy, tmp, c);
		}
		for (uint32_t hh = 0; hh < h; hh++) {
			uint32_t m = kvcd_select_keep(score + (size_t)hh * t, t, c[hh], nsink,
						      p->window, idx + t, idx);
			uint32_t b = 0, off = 0;

			for (uint32_t j = 0; j < m; j++) { /* ascending: walk the blocks once */
				size_t bm;

				while (idx[j] >= off + ls[b].tokens)
					off += ls[b++].tokens;
				bm = (ls[b].tokens + 7) / 8;
				keep[b][((size_t)ly * h + hh) * bm + (idx[j] - off) / 8] |=
					(uint8_t)(1u << ((idx[j] - off) % 8));
			}
		}
	}
	free(score);
	return err;
}

uint64_t kvcd_sel_size(const struct kvcd_policy *p, const struct kvcp_layout *l, bool scores,
		       uint32_t pos, const uint32_t *counts)
{
	size_t lh = (size_t)l->layers * l->kv_heads;
	uint32_t *own = NULL;
	uint64_t b, total = 0;

	if (!kvcp_layout_bytes(l))
		return 0;
	if (!counts) { /* without data: not for Ada-KV's or energy's data-chosen sizes */
		if (p->budget >= KVCD_BUDGET_ADAKV || p->energy || kvcd_policy_learned(p) ||
		    !(own = malloc(lh * 4)) ||
		    kvcd_sel_plan(KVCD_ISA_SCALAR, p, l, pos, NULL, NULL, own)) {
			free(own);
			return 0;
		}
		counts = own;
	}
	b = sizeof(struct kvcd_codec_hdr) + lh * 4 + ranks_bytes(p, l) + lh * ((l->tokens + 7) / 8);
	for (size_t i = 0; i < lh; i++) {
		if (counts[i] > l->tokens) {
			free(own);
			return 0;
		}
		total += counts[i];
		b += body_size(p, l, i, counts[i], scores, pos, counts);
	}
	free(own);
	return b + (p->merge == KVCD_MERGE_KEY ? total * 2 : 0);
}

static float dot(const float *a, const float *b, uint32_t d)
{
	float s = 0.0f;

	for (uint32_t c = 0; c < d; c++)
		s += a[c] * b[c];
	return s;
}

/* Merging (D2O's assignment, CaM's value merge): each dropped token goes to the kept token
 * (sinks aside) whose key is most similar by cosine. Tokens weigh by their attention mass
 * @mass: a kept token's value becomes the mass-weighted mean of the values it stands for and
 * its key stays; w->bias gets log(its group's mass / its own), which merge=key records so the
 * attention the group drew is not lost, and merge=value drops. */
static void merge_head(const struct kvcp_layout *l, uint32_t head, uint32_t m, uint32_t nsink,
		       const float *mass, struct sel_work *w)
{
	uint32_t t = l->tokens, d = l->head_dim, stride = l->kv_heads * d, k = 0;
	float *kr = w->rows, *vr = w->rows + (size_t)m * d, *grp = w->bias;
	for (uint32_t i = 0; i < m; i++) { /* norms of the kept keys, in w->tmp */
		float mi = mass[w->keep[i]];

		w->tmp[i] = sqrtf(dot(kr + (size_t)i * d, kr + (size_t)i * d, d));
		grp[i] = mi;
		for (uint32_t c = 0; c < d; c++)
			vr[(size_t)i * d + c] *= mi;
	}
	for (uint32_t j = 0; j < t; j++) {
		const float *kj = w->kp + (size_t)j * stride + (size_t)head * d;
		const float *vj = w->vp + (size_t)j * stride + (size_t)head * d;
		float nj, best = -INFINITY;
		uint32_t bi = m;

		if (k < m && w->keep[k] == j) {
			k++;
			continue;
		}
		nj = sqrtf(dot(kj, kj, d));
		for (uint32_t i = 0; i < m; i++) {
			float c;

			if (w->keep[i] < nsink)
				continue;
			c = dot(kj, w->kp + (size_t)w->keep[i] * stride + (size_t)head * d, d) /
			    (nj * w->tmp[i] + 1e-20f);
			if (c > best) {
				best = c;
				bi = i;
			}
		}
		if (bi == m)
			continue; /* only sinks kept: dropped */
		for (uint32_t c = 0; c < d; c++)
			vr[(size_t)bi * d + c] += mass[j] * vj[c];
		grp[bi] += mass[j];
	}
	for (uint32_t i = 0; i < m; i++) {
		float mi = mass[w->keep[i]];

		for (uint32_t c = 0; c < d; c++)
			vr[(size_t)i * d + c] /= grp[i];
		grp[i] = logf(grp[i] / mi);
	}
}

/* cold=: the rows of head @hh that w->keep (@m, ascending) leaves out, K then V, through
 * the cold codec to @o. */
static int cold_put(enum kvcd_isa isa, const struct kvcd_policy *p, const struct kvcp_layout *l,
		    uint32_t pos, uint32_t hh, uint32_t m, struct sel_work *w, uint8_t *o)
{
	uint32_t t = l->tokens, d = l->head_dim, c = t - m, k = 0, i = 0;
	size_t stride = (size_t)l->kv_heads * d;
	struct kvcd_policy cp = cold_of(p);
	struct kvcp_layout mini = mini_of(l, c);

	for (uint32_t j = 0; j < t; j++) {
		if (k < m && w->keep[k] == j) {
			k++;
			continue;
		}
		memcpy(w->rows + (size_t)i * d, w->kp + j * stride + hh * d, d * 4);
		memcpy(w->rows + ((size_t)c + i) * d, w->vp + j * stride + hh * d, d * 4);
		i++;
	}
	kvcd_from_f32(isa, l->dtype, w->rows, w->raw, (size_t)c * d * 2);
	return kvcd_units_encode(isa, &cp, &mini, pos, w->raw, NULL, o);
}

/* learned=on with kbits/vbits: (layer, head) @u's K rows (w->rows, @m of @d, already turned
 * back by RoPE where the basis says) and V rows, of ranks @rkv[0], @rkv[1] and bits @bk, to
 * @o. entropy=on (@em the block's models for K and V): within *@left bytes (taken from it),
 * the two streams' bytes into @sz[0], @sz[1]; -ERANGE past *@left. */
static int coded_put(struct sel_work *w, uint32_t m, uint32_t d, const uint32_t *rkv,
		     const void *basis, size_t u, const uint32_t *bk, struct kvcd_ent_model *em,
		     uint8_t *o, uint64_t *left, uint32_t *sz)
{
	for (int kv = 0; kv < 2; kv++) {
		int64_t n = kvcd_lr_coded_put(w->rows + (size_t)kv * m * d, m, d, rkv[kv],
					      kvcd_basis_rows(basis, u, kv),
					      kvcd_basis_vars(basis, u, kv), bk + (size_t)kv * d,
					      em ? &em[kv] : NULL, w->u, o,
					      !em		   ? SIZE_MAX
					      : *left > UINT32_MAX ? UINT32_MAX
								   : *left);

		if (n < 0)
			return (int)n;
		if (em) {
			sz[kv] = (uint32_t)n;
			*left -= (uint64_t)n;
		}
		o += n;
	}
	return 0;
}

int kvcd_sel_encode(enum kvcd_isa isa, const struct kvcd_policy *p, const struct kvcp_layout *l,
		    uint32_t pos, const void *src, const float *scores, const struct kvcd_aux *aux,
		    const uint32_t *counts, void *dst)
{
	struct kvcd_codec_hdr h = { .magic = KVCD_CODEC_MAGIC, .version = KVCD_CODEC_VERSION };
	size_t lh = (size_t)l->layers * l->kv_heads, bm = (l->tokens + 7) / 8;
	uint32_t t = l->tokens, d = l->head_dim, nsink = sinks_in(p, pos, t), *own = NULL;
	const uint32_t *pb;
	uint32_t *streams = NULL;    /* entropy=on: filled in as they come out */
	struct kvcd_ent_model em[2]; /* entropy=on: K's and V's, carried through the block */
	uint64_t total = 0, ent_left = kvcp_layout_bytes(l);
	uint8_t *o = dst, *bits, *wts, *body;
	float *lbuf = NULL; /* svd=layer */
	const void *basis = kvcd_policy_learned(p) ? basis_for(l, aux) : NULL;
	struct kvcd_basis_hdr bh = { 0 };
	struct sel_work w;
	char why[8];
	int err;

	if (kvcd_policy_check(p, l, why, sizeof(why)) || !kvcd_policy_sel(p) || need_aux(p, aux))
		return -EINVAL;
	if (kvcd_policy_learned(p) && !basis)
		return -ENOKEY;
	if (basis)
		memcpy(&bh, basis, sizeof(bh));
	scores = p->hibits ? scores : NULL;
	for (uint32_t i = 0; scores && i < t; i++)
		if (!isfinite(scores[i]))
			return -EINVAL;
	if (!counts) {
		own = malloc(plan_words(p, l) * 4);
		if (!own)
			return -ENOMEM;
		err = kvcd_sel_plan(isa, p, l, pos, src, aux, own);
		if (err) {
			free(own);
			return err;
		}
		counts = own;
	}
	if (kvcd_policy_entropy(p)) { /* the streams' bytes are known once they are written */
		if (!own && !(own = malloc(plan_words(p, l) * 4)))
			return -ENOMEM;
		if (own != counts)
			memcpy(own, counts, plan_words(p, l) * 4);
		counts = own;
		streams = (uint32_t *)streams_at(p, l, own);
		memset(streams, 0, ent_n(p, l) * 4);
		kvcd_ent_model_init(&em[0]);
		kvcd_ent_model_init(&em[1]);
	}
	for (size_t j = 0; basis && j < 2 * lh; j++) /* a plan for this basis */
		if (counts[lh + j] > kvcd_basis_ranks(basis)[j] || counts[lh + j] > p->rank ||
		    (counts[lh + j] == 0) != (counts[j / 2] == 0)) {
			free(own);
			return -EINVAL;
		}
	pb = counts + lh + ranks_n(p, l);	   /* kbits/vbits: each direction's bits */
	for (size_t j = 0; j < coded_n(p, l); j++) /* 0..8, none past a rank */
		if (pb[j] > 8 || (j % d >= counts[lh + j / d] && pb[j])) {
			free(own);
			return -EINVAL;
		}
	if (kvcd_policy_coded(p) && !kvcd_basis_vars(basis, 0, 0)) {
		free(own);
		return -ENOKEY; /* a KVB1 basis: no variances for the grids */
	}
	h.flags = scores ? KVCD_CODEC_F_SCORES : 0;
	h.pol = *p;
	h.layout = *l;
	h.layout.codec = 0;
	h.pos = pos;
	h.reserved = bh.version; /* learned=: which of the namespace's bases */
	h.bytes = kvcd_sel_size(p, l, scores, pos, counts);
	err = h.bytes ? work_alloc(&w, l) : -EINVAL;
	if (!err && (p->lowrank & (KVCD_LOWRANK_LAYER | KVCD_LOWRANK_TUCKER))) {
		size_t hd = (size_t)l->kv_heads * d, k = t < hd ? t : hd;

		lbuf = malloc(tucker(p) ? kvcd_tk_buf_floats(l) * 4
					: (t * hd + t * k + k + 1 + k * hd) * 4);
		err = lbuf ? 0 : -ENOMEM;
		if (err)
			free(w.kp);
	}
	if (err) {
		free(own);
		return err;
	}
	for (size_t i = 0; i < lh; i++)
		total += counts[i];
	memcpy(o, &h, sizeof(h));
	memcpy(o + sizeof(h), counts, lh * 4);
	if (basis) /* learned=: the basis's id, then the ranks */
		memcpy(o + sizeof(h) + lh * 4, &bh.id, 8);
	for (size_t i = 0; i < ranks_n(p, l); i++) /* energy=, learned=: each rank, 1..255 */
		o[ranks_off(p, l) + i] = (uint8_t)counts[lh + i];
	for (size_t i = 0; i < coded_n(p, l); i += 2) /* kbits/vbits: two nibbles a byte */
		o[nibbles_off(p, l) + i / 2] = (uint8_t)(pb[i] | pb[i + 1] << 4);
	bits = o + sizeof(h) + lh * 4 + ranks_bytes(p, l);
	memset(bits, 0, lh * bm);
	wts = bits + lh * bm;
	body = wts + (p->merge == KVCD_MERGE_KEY ? total * 2 : 0);
	for (uint32_t ly = 0; ly < l->layers && !err; ly++) {
		int role = kvcd_mc_role(p, l->layers, ly);

		if (role == 2) { /* written with the pair's first layer */
			for (uint32_t hh = 0; hh < l->kv_heads; hh++)
				all_kept(bits + ((size_t)ly * l->kv_heads + hh) * bm, t);
			continue;
		}
		err = load_layer(isa, l, src, ly, true, &w);
		if (!err && role == 1)
			err = load_planes(isa, l, src, ly + 1, w.kp2, w.vp2);
		for (uint32_t hh = 0; hh < l->kv_heads && !err; hh++) {
			size_t u = (size_t)ly * l->kv_heads + hh, stride = (size_t)l->kv_heads * d;
			uint32_t m = counts[u];
			struct kvcp_layout mini = mini_of(l, m);

			if (!m && !p->cold)
				continue;
			if (role == 1) { /* every token of both layers, K then V */
				size_t kb = kvcd_mc_put(isa, p, l, w.kp + hh * d, w.kp2 + hh * d,
							stride, w.tmp, w.idx, w.mcf, body);

				kvcd_mc_put(isa, p, l, w.vp + hh * d, w.vp2 + hh * d, stride, w.tmp,
					    w.idx, w.mcf, body + kb);
				all_kept(bits + u * bm, t);
				body += body_size(p, l, u, m, scores, pos, NULL);
				continue;
			}
			m = gather(p, l, aux, ly, hh, m, nsink, &w);
			for (uint32_t i = 0; i < m; i++) {
				bits[u * bm + w.keep[i] / 8] |= (uint8_t)(1u << (w.keep[i] % 8));
				if (scores)
					w.sc[i] = scores[w.keep[i]];
			}
			if (p->merge) {
				bool attn = p->select == KVCD_SELECT_H2O ||
					    p->select == KVCD_SELECT_SNAPKV;

				/* mass: snapkv's window attention; h2o's accumulated attention per
				 * query that saw the token (assuming they reach the block's end: it
				 * grows with their number); else one per token */
				for (uint32_t j = 0; j < t; j++)
					w.mass[j] = !attn ? 1.0f
							  : fmaxf(w.score[j], 1e-6f) /
								    (p->select == KVCD_SELECT_H2O
									     ? (float)(t - j)
									     : 1.0f);
				merge_head(l, hh, m, nsink, w.mass, &w);
				if (p->merge == KVCD_MERGE_KEY) {
					kvcd_from_f32(isa, KVCP_F16, w.bias, wts, m);
					wts += (size_t)m * 2;
				}
			}
			if (tucker(p)) {
				const uint32_t *rk = counts + lh + 6 * ly;

				if (!hh) /* the layer's K then V tensor, with its first head */
					err = kvcd_tk_put(isa, l, w.kp, rk, lbuf, body);
				if (!hh && !err)
					err = kvcd_tk_put(isa, l, w.vp, rk + 3, lbuf,
							  body + kvcd_tk_bytes(l, rk));
			} else if (p->rank && (p->lowrank & KVCD_LOWRANK_LAYER)) {
				if (!hh) /* the whole layer, stored with its first head */
					err = kvcd_lr_layer_put(isa, p, l, w.kp, w.vp, lbuf, body);
			} else if (kvcd_policy_coded(p)) {
				if (m && kvcd_basis_rope(basis)) /* keys before RoPE */
					kvcd_lr_unrope(w.rows, m, d, kvcd_basis_rope(basis), pos,
						       w.keep);
				if (m)
					err = coded_put(&w, m, d, counts + lh + 2 * u, basis, u,
							bits_at(p, l, counts, u),
							streams ? em : NULL, body, &ent_left,
							streams ? streams + 2 * u : NULL);
			} else if (kvcd_policy_learned(p)) {
				uint32_t rk = counts[lh + 2 * u], rv = counts[lh + 2 * u + 1];

				if (m) {
					kvcd_lr_coef_put(isa, p, l->dtype, w.rows, m, d, rk,
							 kvcd_basis_rows(basis, u, 0), w.u, body);
					kvcd_lr_coef_put(
						isa, p, l->dtype, w.rows + (size_t)m * d, m, d, rv,
						kvcd_basis_rows(basis, u, 1), w.u,
						body + kvcd_lr_coef_bytes(p, l->dtype, m, rk));
				}
			} else if (p->rank) {
				uint32_t rk = p->energy ? counts[lh + 2 * u]
							: kvcd_lr_rank(p, m, d);
				uint32_t rv = p->energy ? counts[lh + 2 * u + 1] : rk;
				size_t half = kvcd_lr_factor_bytes(p, l->dtype, m, rk, d);

				err = kvcd_lr_put(isa, p, l->dtype, w.rows, m, d, rk, w.u, w.sv,
						  w.vt, body);
				if (!err)
					err = kvcd_lr_put(isa, p, l->dtype, w.rows + (size_t)m * d,
							  m, d, rv, w.u, w.sv, w.vt, body + half);
			} else if (m) {
				kvcd_from_f32(isa, l->dtype, w.rows, w.raw, (size_t)m * d * 2);
				err = kvcd_units_encode(isa, p, &mini, pos, w.raw, w.sc, body);
			}
			if (!err && p->cold && m < t)
				err = cold_put(
					isa, p, l, pos, hh, m, &w,
					body + (m ? kvcd_units_size(p, &mini, scores, pos) : 0));
			body += body_size(p, l, u, m, scores, pos, counts);
		}
	}
	if (!err && streams) { /* the streams' bytes, and with them the block's */
		memcpy(o + streams_off(p, l), streams, ent_n(p, l) * 4);
		h.bytes = kvcd_sel_size(p, l, scores, pos, counts);
		memcpy(o, &h, sizeof(h));
	}
	free(w.kp);
	free(lbuf);
	free(own);
	return err;
}

/* Could the @n bytes of a block with header @h hold its counts and ranks? Checked before a
 * plan's words are allocated for it: their number comes from the header. */
static bool words_fit(const struct kvcd_codec_hdr *h, uint64_t n)
{
	size_t lh = (size_t)h->layout.layers * h->layout.kv_heads;

	/* lh within n / 4 keeps lh x head_dim (a u16) from overflowing below */
	return lh <= n / 4 && sizeof(*h) + lh * 4 + ranks_bytes(&h->pol, &h->layout) <= n;
}

/* Counts and bitmaps of an encoded block, checked against each other and its size. */
static int read_sel(const struct kvcd_codec_hdr *h, const void *src, uint64_t n, uint32_t *counts,
		    uint64_t *total)
{
	const struct kvcp_layout *l = &h->layout;
	size_t lh = (size_t)l->layers * l->kv_heads, bm = (l->tokens + 7) / 8;
	size_t rb = ranks_bytes(&h->pol, l), rn = ranks_n(&h->pol, l), cn = coded_n(&h->pol, l);
	size_t en = ent_n(&h->pol, l);
	const uint8_t *rk = (const uint8_t *)src + ranks_off(&h->pol, l);
	const uint8_t *nib = (const uint8_t *)src + nibbles_off(&h->pol, l);
	const uint8_t *streams = (const uint8_t *)src + streams_off(&h->pol, l),
		      *bits = streams + 4 * en;

	*total = 0;
	if (n < sizeof(*h) + lh * (4 + bm) + rb)
		return -EBADMSG;
	memcpy(counts, (const uint8_t *)src + sizeof(*h), lh * 4);
	for (size_t i = 0; i < lh; i++) {
		uint32_t pop = 0;

		for (size_t b = 0; b < bm; b++)
			pop += (uint32_t)__builtin_popcount(bits[i * bm + b]);
		if (counts[i] > l->tokens || pop != counts[i] ||
		    (l->tokens % 8 && bits[i * bm + bm - 1] >> (l->tokens % 8)) ||
		    ((h->pol.lowrank & (KVCD_LOWRANK_LAYER | KVCD_LOWRANK_TUCKER)) &&
		     counts[i] != l->tokens))
			return -EBADMSG;
		for (size_t j = 2 * i; j < 2 * i + 2 && rn && !tucker(&h->pol); j++) {
			/* energy=: 1..cap, 0 if empty; learned=: at most rank= and head_dim */
			uint32_t cap = kvcd_policy_learned(&h->pol)
					       ? (h->pol.rank < l->head_dim ? h->pol.rank
									    : l->head_dim)
					       : kvcd_lr_rank(&h->pol, counts[i], l->head_dim);

			counts[lh + j] = rk[j];
			if ((rk[j] == 0) != (counts[i] == 0) || rk[j] > cap)
				return -EBADMSG;
		}
		*total += counts[i];
	}
	for (size_t j = 0; j < cn; j++) { /* kbits/vbits: 0..8 per direction, 0 past its rank */
		uint32_t b = nib[j / 2] >> (j % 2 * 4) & 15;

		counts[lh + rn + j] = b;
		if (b > 8 || (b && j % l->head_dim >= counts[lh + j / l->head_dim]))
			return -EBADMSG;
	}
	/* entropy=on: each stream's bytes, none where its (layer, head) keeps no token (the
	 * sum is checked with the size below) */
	memcpy(counts + lh + rn + cn, streams, en * 4);
	for (size_t j = 0; j < en; j++)
		if ((counts[lh + rn + cn + j] == 0) != (counts[j / 2] == 0) ||
		    counts[lh + rn + cn + j] > n)
			return -EBADMSG;
	for (size_t j = 0; tucker(&h->pol) && j < rn; j++)
		counts[lh + j] = rk[j];
	for (size_t j = 0; tucker(&h->pol) && j < rn; j += 3)
		if (!kvcd_tk_ranks_ok(&h->pol, l, counts + lh + j))
			return -EBADMSG;
	if (kvcd_sel_size(&h->pol, l, h->flags & KVCD_CODEC_F_SCORES, h->pos, counts) != n)
		return -EBADMSG;
	return 0;
}

/* Rows a FETCH returns for @kept stored ones: with cold=, every token of every head. */
static uint64_t out_total(const struct kvcd_codec_hdr *h, uint64_t kept)
{
	const struct kvcp_layout *l = &h->layout;

	return h->pol.cold ? (uint64_t)l->layers * l->kv_heads * l->tokens : kept;
}

uint64_t kvcd_sel_out_size(const struct kvcd_codec_hdr *h, const void *src, uint64_t n)
{
	uint32_t *counts = words_fit(h, n) ? malloc(kvcd_sel_plan_words(&h->pol, &h->layout) * 4)
					   : NULL;
	uint64_t total, out = 0;

	if (counts && !read_sel(h, src, n, counts, &total))
		out = kvcp_sparse_bytes(&h->layout, out_total(h, total));
	free(counts);
	return out;
}

/* cold=: a head's @m kept rows (bitmap @bits) and T - m cold rows from @in, K then V, back
 * into token order at @out (every token: T K rows, then T V rows). @tmp: 2T rows. */
static int cold_get(enum kvcd_isa isa, const struct kvcd_policy *p, const struct kvcp_layout *l,
		    uint32_t pos, bool scores, const uint8_t *bits, uint32_t m, const uint8_t *in,
		    uint8_t *tmp, uint8_t *out)
{
	uint32_t t = l->tokens, c = t - m, hi = 0, ci = 0;
	size_t row = (size_t)l->head_dim * kvcp_dtype_size(l->dtype);
	struct kvcd_policy cp = cold_of(p);
	struct kvcp_layout hm = mini_of(l, m), cm = mini_of(l, c);
	uint8_t *hot = tmp, *cold = tmp + 2 * (size_t)m * row;
	int err = 0;

	if (m)
		err = kvcd_units_decode(isa, p, &hm, pos, scores, in, hot);
	if (!err && c)
		err = kvcd_units_decode(isa, &cp, &cm, pos, false,
					in + (m ? kvcd_units_size(p, &hm, scores, pos) : 0), cold);
	for (uint32_t j = 0; j < t && !err; j++) {
		bool kept = bits[j / 8] >> (j % 8) & 1;
		const uint8_t *k = kept ? hot + (size_t)hi * row : cold + (size_t)ci * row;
		const uint8_t *v = kept ? hot + ((size_t)m + hi) * row
					: cold + ((size_t)c + ci) * row;

		memcpy(out + (size_t)j * row, k, row);
		memcpy(out + ((size_t)t + j) * row, v, row);
		hi += kept;
		ci += !kept;
	}
	return err;
}

/* tensor=tucker: a layer's K and V tensors at @in (ranks @rk) back into every head's K and V
 * rows at @out (per head T K rows, then T V rows). @buf: kvcd_tk_buf_floats + T x H x D
 * floats, then T x H rows of the engine's dtype. */
static void tucker_get(enum kvcd_isa isa, const struct kvcp_layout *l, const uint8_t *in,
		       const uint32_t *rk, float *buf, uint8_t *out)
{
	size_t t = l->tokens, h = l->kv_heads,
	       row = (size_t)l->head_dim * kvcp_dtype_size(l->dtype);
	float *x = buf + kvcd_tk_buf_floats(l);
	uint8_t *plane = (uint8_t *)(x + t * h * l->head_dim);

	for (int kv = 0; kv < 2; kv++) {
		kvcd_tk_get(isa, l, in, rk + 3 * kv, buf, x);
		kvcd_from_f32(isa, l->dtype, x, plane, t * h * l->head_dim);
		for (size_t hh = 0; hh < h; hh++)
			for (size_t j = 0; j < t; j++)
				memcpy(out + ((hh * 2 + kv) * t + j) * row,
				       plane + (j * h + hh) * row, row);
		in += kvcd_tk_bytes(l, rk);
	}
}

/* What tucker_get's @buf needs (0 unless tensor=tucker). */
static size_t tucker_get_bytes(const struct kvcd_policy *p, const struct kvcp_layout *l)
{
	size_t n = (size_t)l->tokens * l->kv_heads * l->head_dim;

	return tucker(p) ? (kvcd_tk_buf_floats(l) + n) * 4 + n * kvcp_dtype_size(l->dtype) : 0;
}

/* learned=: is @b (@len bytes) the basis block @src (header @h, plan @counts) was written
 * with? */
static bool basis_fits(const struct kvcd_codec_hdr *h, const void *src, const uint32_t *counts,
		       const void *b, uint64_t len)
{
	const struct kvcp_layout *l = &h->layout;
	size_t lh = (size_t)l->layers * l->kv_heads;
	struct kvcd_basis_hdr bh;
	uint64_t id;

	if (!b || kvcd_basis_shape_ok(b, len))
		return false;
	memcpy(&bh, b, sizeof(bh));
	memcpy(&id, (const uint8_t *)src + sizeof(*h) + lh * 4, 8);
	if (bh.version != h->reserved || bh.id != id || bh.layers != l->layers ||
	    bh.kv_heads != l->kv_heads || bh.head_dim != l->head_dim)
		return false;
	for (size_t j = 0; j < 2 * lh; j++)
		if (counts[lh + j] > kvcd_basis_ranks(b)[j])
			return false;
	/* coded coefficients' ranges are on grids from the basis's variances: a KVB2 basis */
	return !kvcd_policy_coded(&h->pol) || kvcd_basis_vars(b, 0, 0);
}

uint32_t kvcd_sel_basis_id(const struct kvcd_codec_hdr *h, const void *src, uint64_t n,
			   uint64_t *id)
{
	size_t at = sizeof(*h) + (size_t)h->layout.layers * h->layout.kv_heads * 4;

	if (!kvcd_policy_learned(&h->pol) || n < at + 8)
		return 0;
	memcpy(id, (const uint8_t *)src + at, 8);
	return h->reserved;
}

/* learned=on with kbits/vbits: (layer, head) @i's K and V rows from its body @in into @rows
 * (@fac: scratch); entropy=on streams with the block's models @em. 0 or -EBADMSG. */
static int coded_get(enum kvcd_isa isa, const struct kvcd_codec_hdr *h, const uint8_t *in, size_t i,
		     const uint32_t *counts, const void *basis, struct kvcd_ent_model *em,
		     const uint32_t *tok, float *fac, uint8_t *rows)
{
	const struct kvcp_layout *hl = &h->layout;
	size_t lh = (size_t)hl->layers * hl->kv_heads;
	uint32_t c = counts[i], d = hl->head_dim;
	const uint32_t *bk = bits_at(&h->pol, hl, counts, i);
	const uint32_t *sz = streams_at(&h->pol, hl, counts);

	for (int kv = 0; kv < 2; kv++) { /* K turned forward by RoPE where the basis says */
		uint32_t r = counts[lh + 2 * i + (size_t)kv];
		const uint32_t *b = bk + (size_t)kv * d;
		uint64_t len = sz ? sz[2 * i + (size_t)kv] : kvcd_lr_coded_bytes(c, r, b);
		int err = kvcd_lr_coded_get(
			isa, hl->dtype, in, len, c, d, r, kvcd_basis_rows(basis, i, kv),
			kvcd_basis_vars(basis, i, kv), b, sz ? &em[kv] : NULL,
			kv ? 0 : kvcd_basis_rope(basis), kv ? 0 : h->pos, kv ? NULL : tok, fac,
			rows + (size_t)kv * c * d * kvcp_dtype_size(hl->dtype));

		if (err)
			return err;
		in += len;
	}
	return 0;
}

int kvcd_sel_decode(enum kvcd_isa isa, const struct kvcd_codec_hdr *h, const void *src, uint64_t n,
		    const void *basis, uint64_t basis_len, void *dst, uint64_t cap,
		    struct kvcp_layout *l)
{
	const struct kvcp_layout *hl = &h->layout;
	size_t lh = (size_t)hl->layers * hl->kv_heads, bm = (hl->tokens + 7) / 8;
	size_t row = (size_t)hl->head_dim * kvcp_dtype_size(hl->dtype);
	bool scores = h->flags & KVCD_CODEC_F_SCORES;
	uint32_t *counts = words_fit(h, n) ? malloc(plan_words(&h->pol, hl) * 4) : NULL, *tok;
	float *fac;
	struct kvcp_sparse sp = { .magic = KVCP_SPARSE_MAGIC, .tokens = hl->tokens };
	struct kvcd_ent_model em[2]; /* entropy=on: as the encoder carried them */
	const uint8_t *bits, *wts, *in;
	uint64_t total, all, kept = 0; /* rows written so far: where a head's tokens start */
	float *bias;
	uint8_t *rows;
	int err = 0;

	if (!counts)
		return words_fit(h, n) ? -ENOMEM : -EBADMSG;
	kvcd_ent_model_init(&em[0]);
	kvcd_ent_model_init(&em[1]);
	if (read_sel(h, src, n, counts, &total)) {
		free(counts);
		return -EBADMSG;
	}
	if (kvcd_policy_learned(&h->pol) && !basis_fits(h, src, counts, basis, basis_len)) {
		free(counts);
		return -ENOKEY;
	}
	all = out_total(h, total);
	/* low-rank factors of the largest head: n x r + r x d + d floats, r <= d; MiniCache:
	 * T x (d + 2) + 2d; cold=: the cold rows of a head, 2T rows; svd=layer: layer_get's */
	fac = h->pol.rank || h->pol.mc || h->pol.cold
		      ? malloc(((size_t)hl->tokens * (hl->head_dim + 2) +
				(size_t)hl->head_dim * hl->head_dim + 2 * (size_t)hl->head_dim) *
				       4 +
			       2 * (size_t)hl->tokens * row + kvcd_lr_layer_get_bytes(&h->pol, hl) +
			       tucker_get_bytes(&h->pol, hl))
		      : NULL;
	if ((h->pol.rank || h->pol.mc || h->pol.cold) && !fac) {
		free(counts);
		return -ENOMEM;
	}
	*l = *hl;
	l->codec = KVCP_CODEC_SPARSE;
	if (kvcp_sparse_bytes(hl, all) > cap) {
		free(counts);
		free(fac);
		return -ENOSPC;
	}
	sp.total = (uint32_t)all;
	bits = (const uint8_t *)src + sizeof(*h) + lh * 4 + ranks_bytes(&h->pol, hl);
	wts = bits + lh * bm;
	in = wts + (h->pol.merge == KVCD_MERGE_KEY ? total * 2 : 0);
	memcpy(dst, &sp, sizeof(sp));
	tok = (uint32_t *)((uint8_t *)dst + sizeof(sp) + lh * 4);
	bias = (float *)(tok + all);
	rows = (uint8_t *)(bias + all);
	for (size_t i = 0, k = 0; i < lh; i++) { /* kept tokens (cold=: every token) */
		uint32_t c = h->pol.cold ? hl->tokens : counts[i];

		memcpy((uint8_t *)dst + sizeof(sp) + i * 4, &c, 4);
		for (uint32_t t = 0; t < hl->tokens; t++)
			if (h->pol.cold || bits[i * bm + t / 8] >> (t % 8) & 1)
				tok[k++] = t;
	}
	if (h->pol.merge == KVCD_MERGE_KEY)
		kvcd_to_f32(isa, KVCP_F16, wts, bias, total);
	else
		memset(bias, 0, all * 4);
	for (uint64_t k = 0; k < total; k++)
		if (!(bias[k] >= 0.0f) || isinf(bias[k])) {
			free(counts);
			free(fac);
			return -EBADMSG;
		}
	for (size_t i = 0; i < lh && !err; i++) {
		struct kvcp_layout mini = mini_of(hl, counts[i]);
		uint32_t ly = (uint32_t)(i / hl->kv_heads);
		int role = kvcd_mc_role(&h->pol, hl->layers, ly);

		if (!counts[i] && !h->pol.cold)
			continue;
		if (role) { /* every (layer, head) holds all T rows: the pair's second is H on */
			size_t tr = (size_t)hl->tokens * row, kb;

			if (counts[i] != hl->tokens) {
				err = -EBADMSG;
				break;
			}
			if (role == 1) {
				kb = kvcd_mc_get(isa, &h->pol, hl, in, fac, rows,
						 rows + (size_t)hl->kv_heads * 2 * tr);
				if (!kb ||
				    !kvcd_mc_get(isa, &h->pol, hl, in + kb, fac, rows + tr,
						 rows + (size_t)hl->kv_heads * 2 * tr + tr)) {
					err = -EBADMSG;
					break;
				}
			}
			in += body_size(&h->pol, hl, i, counts[i], scores, h->pos, NULL);
			rows += 2 * tr;
			kept += hl->tokens;
			continue;
		}
		if (tucker(&h->pol)) {
			if (!(i % hl->kv_heads)) /* writes every head of the layer */
				tucker_get(isa, hl, in, counts + lh + 6 * ly, fac, rows);
		} else if (h->pol.rank && (h->pol.lowrank & KVCD_LOWRANK_LAYER)) {
			if (!(i % hl->kv_heads)) /* writes every head of the layer */
				kvcd_lr_layer_get(isa, &h->pol, hl, in, fac, rows);
		} else if (kvcd_policy_coded(&h->pol)) {
			err = coded_get(isa, h, in, i, counts, basis, em, tok + kept, fac, rows);
		} else if (kvcd_policy_learned(&h->pol)) {
			uint32_t c = counts[i], d = hl->head_dim;
			uint32_t rk = counts[lh + 2 * i], rv = counts[lh + 2 * i + 1];

			kvcd_lr_coef_get(isa, &h->pol, hl->dtype, in, c, d, rk,
					 kvcd_basis_rows(basis, i, 0), fac, rows);
			kvcd_lr_coef_get(isa, &h->pol, hl->dtype,
					 in + kvcd_lr_coef_bytes(&h->pol, hl->dtype, c, rk), c, d,
					 rv, kvcd_basis_rows(basis, i, 1), fac,
					 rows + (size_t)c * row);
		} else if (h->pol.rank) {
			uint32_t c = counts[i], d = hl->head_dim, r = kvcd_lr_rank(&h->pol, c, d);
			uint32_t rk = h->pol.energy ? counts[lh + 2 * i] : r;
			uint32_t rv = h->pol.energy ? counts[lh + 2 * i + 1] : r;
			size_t half = kvcd_lr_factor_bytes(&h->pol, hl->dtype, c, rk, d);

			kvcd_lr_get(isa, &h->pol, hl->dtype, in, c, d, rk, fac, rows);
			kvcd_lr_get(isa, &h->pol, hl->dtype, in + half, c, d, rv, fac,
				    rows + (size_t)c * row);
		} else if (h->pol.cold) {
			err = cold_get(isa, &h->pol, hl, h->pos, scores, bits + i * bm, counts[i],
				       in, (uint8_t *)fac, rows);
		} else if (counts[i]) {
			err = kvcd_units_decode(isa, &h->pol, &mini, h->pos, scores, in, rows);
		}
		in += body_size(&h->pol, hl, i, counts[i], scores, h->pos, counts);
		rows += 2 * (size_t)(h->pol.cold ? hl->tokens : counts[i]) * row;
		kept += h->pol.cold ? hl->tokens : counts[i];
	}
	free(counts);
	free(fac);
	return err;
}
