/* sel.c - token selection on whole blocks (codec.h, "token selection"): per (layer, KV head)
 * scores and keep sets from select.c, budgets, merging of dropped tokens, and the kept rows of
 * each (layer, head) through the policy's codec as a block of their own. */
#include <dlfcn.h>
#include <errno.h>
#include <lapacke.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "select.h"

#define PYRAMID_BETA 20.0	/* PyramidKV's default: the deepest layer keeps m / 20 */
#define ADAKV_ALPHA 0.2		/* Ada-KV's safeguard: a head keeps at least 20% of the mean */

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
	struct kvcp_layout m = { .dtype = l->dtype, .layers = 1, .kv_heads = 1,
				 .head_dim = l->head_dim, .tokens = n };

	return m;
}

/* ---- low-rank: a (layer, head)'s kept rows of K, and of V, as a truncated SVD ----------- */

static uint32_t rank_of(const struct kvcd_policy *p, uint32_t n, uint32_t d)
{
	uint32_t r = p->rank < n ? p->rank : n;

	return r < d ? r : d;
}

/* Bytes of one of K's or V's factors for @n rows: U_r S_r [n][r] and V_r^T [r][d], in the
 * engine's dtype, or (factors=int8) as int8 rows followed by each row's f32 scale. */
static uint64_t factor_bytes(const struct kvcd_policy *p, uint8_t dtype, uint32_t n, uint32_t r,
			     uint32_t d)
{
	uint64_t e = (uint64_t)n * r + (uint64_t)r * d;

	return p->lowrank & KVCD_LOWRANK_INT8 ? e + ((uint64_t)n + r) * sizeof(float) :
						 e * kvcp_dtype_size(dtype);
}

/* ---- MiniCache: adjacent layers sharing one direction per token ---------------------------- */

/* Layer @ly under @p: 0 on its own, 1 the first of a merged pair, 2 the second. */
static int mc_role(const struct kvcd_policy *p, uint32_t layers, uint32_t ly)
{
	uint32_t first = (uint32_t)p->mc - 1;

	if (!p->mc || ly < first)
		return 0;
	if ((ly - first) % 2)
		return 2;
	return ly + 1 < layers ? 1 : 0; /* an odd last layer stays on its own */
}

static uint32_t mc_kept(const struct kvcd_policy *p, uint32_t t)
{
	return (uint32_t)(((uint64_t)t * p->mc_keep + 50) / 100);
}

/* One (pair, head): for K then V, a bitmap of the tokens kept unmerged, their rows in both
 * layers, then for the others one direction and the two layers' norms. */
static uint64_t mc_pair_size(const struct kvcd_policy *p, const struct kvcp_layout *l)
{
	uint64_t t = l->tokens, nk = mc_kept(p, l->tokens), es = kvcp_dtype_size(l->dtype);

	return 2 * ((t + 7) / 8 + (nk * 2 * l->head_dim + (t - nk) * (l->head_dim + 2)) * es);
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
	return kvcd_codec_body_size(&c, &m, false, pos);
}

/* energy=: the plan also holds each (layer, head)'s K and V ranks, after the counts; the
 * block stores them as bytes after its counts. */
static size_t plan_words(const struct kvcd_policy *p, size_t lh)
{
	return p->energy ? 3 * lh : lh;
}

static size_t ranks_bytes(const struct kvcd_policy *p, size_t lh)
{
	return p->energy ? 2 * lh : 0;
}

size_t kvcd_sel_plan_words(const struct kvcd_policy *p, const struct kvcp_layout *l)
{
	return plan_words(p, (size_t)l->layers * l->kv_heads);
}

/* Bytes of the body of (layer, head) @u's @n kept rows: the codec's units (and with cold=,
 * the dropped rows' after them), the K and V factors (svd=layer: the layer's, on its first
 * head), or (MiniCache) the pair's whole body on its first layer and nothing on its second.
 * @rk: energy='s K and V ranks, else NULL. */
static uint64_t body_size(const struct kvcd_policy *p, const struct kvcp_layout *l, size_t u,
			  uint32_t n, bool scores, uint32_t pos, const uint32_t *rk)
{
	struct kvcp_layout m = mini_of(l, n);
	uint32_t layer = (uint32_t)(u / l->kv_heads), r = rank_of(p, n, l->head_dim);
	uint32_t hd = (uint32_t)l->kv_heads * l->head_dim;

	if (!n)
		return cold_size(p, l, n, pos);
	if (p->mc && mc_role(p, l->layers, layer))
		return mc_role(p, l->layers, layer) == 1 ? mc_pair_size(p, l) : 0;
	if (!p->rank)
		return kvcd_codec_body_size(p, &m, scores, pos) + cold_size(p, l, n, pos);
	if (p->lowrank & KVCD_LOWRANK_LAYER)
		return u % l->kv_heads ? 0 : 2 * factor_bytes(p, l->dtype, n, rank_of(p, n, hd), hd);
	if (rk) /* energy=: the plan's ranks of K and V */
		return factor_bytes(p, l->dtype, n, rk[0], l->head_dim) +
		       factor_bytes(p, l->dtype, n, rk[1], l->head_dim);
	return 2 * factor_bytes(p, l->dtype, n, r, l->head_dim);
}

/* LAPACKE (on OpenBLAS, from Debian) is loaded at first use rather than linked: OpenBLAS's
 * threaded build starts a thread pool in a library constructor, before kvcd's main() blocks
 * the signals it takes through signalfd, and such a thread would take SIGTERM's default
 * action. Loaded from a worker, whose signals are blocked, its threads inherit that mask. */
typedef lapack_int (*sgesdd_fn)(int, char, lapack_int, lapack_int, float *, lapack_int, float *,
				float *, lapack_int, float *, lapack_int);
static sgesdd_fn sgesdd;

static void lapack_load(void)
{
	void *h = dlopen("liblapacke.so.3", RTLD_NOW | RTLD_LOCAL);
	void (*threads)(int);

	if (!h)
		return;
	sgesdd = (sgesdd_fn)dlsym(h, "LAPACKE_sgesdd");
	threads = (void (*)(int))dlsym(h, "openblas_set_num_threads");
	if (threads)
		threads(1); /* tiny matrices, on the worker's own core */
}

/* @rows x @cols floats as int8 rows (symmetric, absmax / 127) to @o, their f32 scales to
 * @scales. */
static void rows_to_i8(const float *x, uint32_t rows, uint32_t cols, int8_t *o, uint8_t *scales)
{
	for (uint32_t i = 0; i < rows; i++) {
		float sc = kvcd_to_i8(x + (size_t)i * cols, cols, o + (size_t)i * cols);

		memcpy(scales + (size_t)i * sizeof(sc), &sc, sizeof(sc));
	}
}

static void rows_from_i8(const int8_t *in, const uint8_t *scales, uint32_t rows, uint32_t cols,
			 float *x)
{
	for (uint32_t i = 0; i < rows; i++) {
		float sc;

		memcpy(&sc, scales + (size_t)i * sizeof(sc), sizeof(sc));
		for (uint32_t c = 0; c < cols; c++)
			x[(size_t)i * cols + c] = sc * in[(size_t)i * cols + c];
	}
}

static int lapack_ready(void)
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;

	pthread_once(&once, lapack_load);
	return sgesdd ? 0 : -ENOSYS; /* liblapacke.so.3 is not installed: make deps */
}

/* energy=: the smallest rank whose squared singular values (of @x, [n][d], destroyed) reach
 * @pct percent of their sum, at most @cap; 0 on failure (-errno in *@err). @u, @sv, @vt as
 * for lowrank_put. */
static uint32_t energy_rank(float *x, uint32_t n, uint32_t d, uint32_t pct, uint32_t cap,
			    float *u, float *sv, float *vt, int *err)
{
	uint32_t k = n < d ? n : d, r = 0;
	double total = 0, acc = 0;

	if ((*err = lapack_ready()))
		return 0;
	if (sgesdd(LAPACK_ROW_MAJOR, 'N', (lapack_int)n, (lapack_int)d, x, (lapack_int)d, sv, u,
		   (lapack_int)k, vt, (lapack_int)d)) {
		*err = -EINVAL;
		return 0;
	}
	for (uint32_t i = 0; i < k; i++)
		total += (double)sv[i] * sv[i];
	while (r < k && acc < total * pct / 100.0 * (1 - 1e-12)) {
		acc += (double)sv[r] * sv[r];
		r++;
	}
	r = r ? r : 1;
	return r < cap ? r : cap;
}

/* The rank-r factors of @x ([n][d] f32, destroyed): U_r S_r [n][r] then V_r^T [r][d], to @o
 * as factor_bytes() lays them out. @u: n x min(n, d), @vt: min(n, d) x d, @sv: min(n, d) + 1
 * floats. */
static int lowrank_put(enum kvcd_isa isa, const struct kvcd_policy *p, uint8_t dtype, float *x,
		       uint32_t n, uint32_t d, uint32_t r, float *u, float *sv, float *vt,
		       uint8_t *o)
{
	uint32_t k = n < d ? n : d;
	size_t es = kvcp_dtype_size(dtype), e = (size_t)n * r + (size_t)r * d;
	int err = lapack_ready();

	if (err)
		return err;
	if (sgesdd(LAPACK_ROW_MAJOR, 'S', (lapack_int)n, (lapack_int)d, x, (lapack_int)d, sv, u,
		   (lapack_int)k, vt, (lapack_int)d))
		return -EINVAL; /* no convergence */
	for (uint32_t i = 0; i < n; i++) { /* U_r S_r, compacted in place to n x r */
		for (uint32_t j = 0; j < r; j++)
			x[(size_t)i * r + j] = u[(size_t)i * k + j] * sv[j];
	}
	if (p->lowrank & KVCD_LOWRANK_INT8) {
		rows_to_i8(x, n, r, (int8_t *)o, o + e);
		rows_to_i8(vt, r, d, (int8_t *)o + (size_t)n * r, o + e + (size_t)n * sizeof(float));
		return 0;
	}
	kvcd_from_f32(isa, dtype, x, o, (size_t)n * r);
	kvcd_from_f32(isa, dtype, vt, o + (size_t)n * r * es, (size_t)r * d);
	return 0;
}

/* @n rows of @d from the factors at @in into @out (@dtype). @a: n x r + r x d + d floats. */
static void lowrank_get(enum kvcd_isa isa, const struct kvcd_policy *p, uint8_t dtype,
			const uint8_t *in, uint32_t n, uint32_t d, uint32_t r, float *a,
			uint8_t *out)
{
	size_t es = kvcp_dtype_size(dtype), e = (size_t)n * r + (size_t)r * d;
	float *b = a + (size_t)n * r, *row = b + (size_t)r * d;

	if (p->lowrank & KVCD_LOWRANK_INT8) {
		rows_from_i8((const int8_t *)in, in + e, n, r, a);
		rows_from_i8((const int8_t *)in + (size_t)n * r, in + e + (size_t)n * sizeof(float),
			     r, d, b);
	} else {
		kvcd_to_f32(isa, dtype, in, a, (size_t)n * r);
		kvcd_to_f32(isa, dtype, in + (size_t)n * r * es, b, (size_t)r * d);
	}
	for (uint32_t i = 0; i < n; i++) {
		memset(row, 0, (size_t)d * 4);
		for (uint32_t j = 0; j < r; j++)
			for (uint32_t c = 0; c < d; c++)
				row[c] += a[(size_t)i * r + j] * b[(size_t)j * d + c];
		kvcd_from_f32(isa, dtype, row, out + (size_t)i * d * es, d);
	}
}

static float mc_norm(const float *x, uint32_t d)
{
	double s = 0;

	for (uint32_t c = 0; c < d; c++)
		s += (double)x[c] * x[c];
	return (float)sqrt(s);
}

/* SLERP between the unit vectors @a and @b (either may be zero: the other is taken) into @e. */
static void slerp(const float *a, float na, const float *b, float nb, uint32_t d, float t,
		  float *e)
{
	double dot = 0, th, s, wa, wb;

	if (!(na > 0) || !(nb > 0)) {
		for (uint32_t c = 0; c < d; c++)
			e[c] = na > 0 ? a[c] / na : nb > 0 ? b[c] / nb : 0.0f;
		return;
	}
	for (uint32_t c = 0; c < d; c++)
		dot += (double)a[c] * b[c];
	dot /= (double)na * nb;
	dot = dot > 1 ? 1 : dot < -1 ? -1 : dot;
	th = acos(dot);
	s = sin(th);
	if (s < 1e-6) { /* (anti)parallel: the linear blend */
		wa = 1 - t;
		wb = t;
	} else {
		wa = sin((1 - t) * th) / s;
		wb = sin(t * th) / s;
	}
	for (uint32_t c = 0; c < d; c++)
		e[c] = (float)(wa * a[c] / na + wb * b[c] / nb);
}

/* Encode K or V of one (pair, head): rows @a (first layer) and @b (second), @stride apart.
 * @tmp: 2 x T floats, @f: T x (D + 2) floats, @keep: T. Returns the bytes written. */
static size_t mc_put(enum kvcd_isa isa, const struct kvcd_policy *p, const struct kvcp_layout *l,
		     const float *a, const float *b, size_t stride, float *cosv, uint32_t *idx,
		     float *f, uint8_t *o)
{
	uint32_t t = l->tokens, d = l->head_dim, nk = mc_kept(p, t), m = 0;
	size_t es = kvcp_dtype_size(l->dtype), bm = (t + 7) / 8;
	uint8_t *bits = o, *out = o + bm;

	for (uint32_t i = 0; i < t; i++) { /* keep unmerged the least aligned: lowest cosine */
		const float *x = a + i * stride, *y = b + i * stride;
		float nx = mc_norm(x, d), ny = mc_norm(y, d);
		double dot = 0;

		for (uint32_t c = 0; c < d; c++)
			dot += (double)x[c] * y[c];
		cosv[i] = nx > 0 && ny > 0 ? (float)(dot / ((double)nx * ny)) : 1.0f;
		cosv[i] = -cosv[i];
	}
	kvcd_select_keep(cosv, t, nk, 0, 0, idx + t, idx);
	memset(bits, 0, bm);
	for (uint32_t i = 0; i < nk; i++)
		bits[idx[i] / 8] |= (uint8_t)(1u << (idx[i] % 8));
	for (int layer = 0; layer < 2; layer++)
		for (uint32_t i = 0; i < nk; i++) {
			kvcd_from_f32(isa, l->dtype, (layer ? b : a) + idx[i] * stride, out, d);
			out += d * es;
		}
	for (uint32_t i = 0; i < t; i++) {
		const float *x = a + i * stride, *y = b + i * stride;
		float nx, ny;

		if (bits[i / 8] >> (i % 8) & 1)
			continue;
		nx = mc_norm(x, d);
		ny = mc_norm(y, d);
		slerp(x, nx, y, ny, d, p->mc_t / 100.0f, f + (size_t)m * d);
		f[(size_t)(t - nk) * d + 2 * m] = nx;
		f[(size_t)(t - nk) * d + 2 * m + 1] = ny;
		m++;
	}
	kvcd_from_f32(isa, l->dtype, f, out, (size_t)m * d);
	kvcd_from_f32(isa, l->dtype, f + (size_t)m * d, out + (size_t)m * d * es, (size_t)m * 2);
	return (size_t)(out - o) + (size_t)m * (d + 2) * es;
}

/* Decode K or V of one (pair, head) into @x (first layer's T rows) and @y (second's). @f: as
 * mc_put's. Returns the bytes read, or 0 when the bitmap does not hold exactly its count. */
static size_t mc_get(enum kvcd_isa isa, const struct kvcd_policy *p, const struct kvcp_layout *l,
		     const uint8_t *in, float *f, uint8_t *x, uint8_t *y)
{
	uint32_t t = l->tokens, d = l->head_dim, nk = mc_kept(p, t), pop = 0, k = 0, m = 0;
	size_t es = kvcp_dtype_size(l->dtype), bm = (t + 7) / 8, row = d * es;
	const uint8_t *bits = in, *kept = in + bm, *dirs = kept + 2 * (size_t)nk * row;

	for (size_t i = 0; i < bm; i++)
		pop += (uint32_t)__builtin_popcount(bits[i]);
	if (pop != nk || (t % 8 && bits[bm - 1] >> (t % 8)))
		return 0;
	kvcd_to_f32(isa, l->dtype, dirs, f, (size_t)(t - nk) * (d + 2));
	for (uint32_t i = 0; i < t; i++) {
		if (bits[i / 8] >> (i % 8) & 1) {
			memcpy(x + i * row, kept + (size_t)k * row, row);
			memcpy(y + i * row, kept + ((size_t)nk + k) * row, row);
			k++;
			continue;
		}
		float *e = f + (size_t)m * d, nx = f[(size_t)(t - nk) * d + 2 * m];
		float ny = f[(size_t)(t - nk) * d + 2 * m + 1];

		for (int layer = 0; layer < 2; layer++) {
			float *v = f + (size_t)(t - nk) * (d + 2) + (size_t)layer * d;

			for (uint32_t c = 0; c < d; c++)
				v[c] = e[c] * (layer ? ny : nx);
			kvcd_from_f32(isa, l->dtype, v, (layer ? y : x) + i * row, d);
		}
		m++;
	}
	return bm + ((size_t)nk * 2 * d + (size_t)(t - nk) * (d + 2)) * es;
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
	if (p->select == KVCD_SELECT_H2O && !(a && (a->what & KVCP_AUX_ATTN) && a->attn))
		return -EINVAL;
	if (p->select == KVCD_SELECT_SNAPKV &&
	    !(a && (a->what & KVCP_AUX_QUERIES) && a->q && a->lse && a->window && a->q_heads))
		return -EINVAL;
	return 0;
}

/* Working memory for one block. */
struct sel_work {
	float *kp, *vp;		/* T x H x D: one layer's K and V planes, f32 */
	float *score, *tmp;	/* H x T, T */
	uint32_t *keep, *utmp;	/* T, T */
	float *rows;		/* 2 x T x D: a head's kept K rows, then V rows */
	float *bias;		/* T: log of the mass each kept row stands for over its own */
	float *mass;		/* T: attention mass of each token, for merging */
	float *sc;		/* T: importance scores of the kept tokens */
	void *raw;		/* 2 x T x D in the engine's dtype */
	float *u, *sv, *vt;	/* low-rank: T x D, D + 1, D x D */
	float *kp2, *vp2;	/* MiniCache: the pair's second layer */
	float *mcf;		/* MiniCache: T x (D + 2) + 2 D */
	uint32_t *idx;		/* MiniCache: 2 T */
};

static int work_alloc(struct sel_work *w, const struct kvcp_layout *l)
{
	size_t t = l->tokens, hd = (size_t)l->kv_heads * l->head_dim, td = t * l->head_dim;

	memset(w, 0, sizeof(*w));
	w->kp = malloc(t * hd * 4 * 2 + (size_t)l->kv_heads * t * 4 + t * 4 * 6 + td * 4 * 2 +
		       td * 2 * kvcp_dtype_size(l->dtype) + (td + l->head_dim + 1 +
		       (size_t)l->head_dim * l->head_dim) * 4 + t * hd * 4 * 2 +
		       (t * (l->head_dim + 2) + 2 * (size_t)l->head_dim) * 4 + t * 2 * 4);
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
		       const struct kvcd_aux *a, uint32_t layer, uint32_t head,
		       struct sel_work *w, float *score)
{
	uint32_t t = l->tokens, d = l->head_dim, h = l->kv_heads;
	const float *keys = w->kp + (size_t)head * d;

	switch (p->select) {
	case KVCD_SELECT_RECENT:
		kvcd_score_recency(t, score);
		break;
	case KVCD_SELECT_KEYNORM:
		kvcd_score_keynorm(keys, h * d, t, d, score);
		break;
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

	if (p->select) {
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
static int plan_ranks(enum kvcd_isa isa, const struct kvcd_policy *p,
		      const struct kvcp_layout *l, uint32_t pos, const void *src,
		      const struct kvcd_aux *aux, uint32_t *counts)
{
	size_t lh = (size_t)l->layers * l->kv_heads;
	uint32_t d = l->head_dim, nsink = sinks_in(p, pos, l->tokens), *rk = counts + lh;
	struct sel_work w;
	int err;

	if (!src || (err = need_aux(p, aux)) || (err = work_alloc(&w, l)))
		return src ? err : -EINVAL;
	for (uint32_t ly = 0; ly < l->layers && !err; ly++) {
		err = load_layer(isa, l, src, ly, true, &w);
		for (uint32_t hh = 0; hh < l->kv_heads && !err; hh++) {
			size_t u = (size_t)ly * l->kv_heads + hh;
			uint32_t m = gather(p, l, aux, ly, hh, counts[u], nsink, &w);
			uint32_t cap = rank_of(p, m, d);

			rk[2 * u] = rk[2 * u + 1] = 0;
			if (!m)
				continue;
			rk[2 * u] = energy_rank(w.rows, m, d, p->energy, cap, w.u, w.sv, w.vt, &err);
			if (!err)
				rk[2 * u + 1] = energy_rank(w.rows + (size_t)m * d, m, d, p->energy,
							    cap, w.u, w.sv, w.vt, &err);
		}
	}
	free(w.kp);
	return err;
}

static int plan_counts(enum kvcd_isa isa, const struct kvcd_policy *p,
		       const struct kvcp_layout *l, uint32_t pos, const void *src,
		       const struct kvcd_aux *aux, uint32_t *counts)
{
	uint32_t t = l->tokens, h = l->kv_heads, n = mean_count(p, t), nsink = sinks_in(p, pos, t);
	struct sel_work w;
	int err;

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
		for (uint32_t hh = 0; hh < h && !err; hh++) {
			float *s = w.score + (size_t)hh * t;

			score_head(p, l, aux, ly, hh, &w, s);
			/* sinks and the window are kept whatever their scores: they count first */
			for (uint32_t i = 0; i < t; i++)
				if (i < nsink || i + p->window >= t)
					s[i] = INFINITY;
		}
		if (!err) /* the K plane is done with: it is the joint top-k's scratch */
			kvcd_budget_adakv(w.score, h, t, n, ADAKV_ALPHA, w.kp, counts + (size_t)ly * h);
	}
	free(w.kp);
	return err;
}

int kvcd_sel_plan(enum kvcd_isa isa, const struct kvcd_policy *p, const struct kvcp_layout *l,
		  uint32_t pos, const void *src, const struct kvcd_aux *aux, uint32_t *counts)
{
	int err = plan_counts(isa, p, l, pos, src, aux, counts);

	return err || !p->energy ? err : plan_ranks(isa, p, l, pos, src, aux, counts);
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
		if (p->budget == KVCD_BUDGET_ADAKV || p->energy || !(own = malloc(lh * 4)) ||
		    kvcd_sel_plan(KVCD_ISA_SCALAR, p, l, pos, NULL, NULL, own)) {
			free(own);
			return 0;
		}
		counts = own;
	}
	b = sizeof(struct kvcd_codec_hdr) + lh * 4 + ranks_bytes(p, lh) +
	    lh * ((l->tokens + 7) / 8);
	for (size_t i = 0; i < lh; i++) {
		const uint32_t *rk = p->energy ? counts + lh + 2 * i : NULL;

		if (counts[i] > l->tokens) {
			free(own);
			return 0;
		}
		total += counts[i];
		b += body_size(p, l, i, counts[i], scores, pos, rk);
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

/* svd=layer: the layer's K and V planes (w->kp, w->vp: [T][heads x d]) as rank-r factors to
 * @o. @buf: T x hd + T x k + k + 1 + k x hd floats, hd = heads x d, k = min(T, hd). */
static int layer_put(enum kvcd_isa isa, const struct kvcd_policy *p,
		     const struct kvcp_layout *l, const struct sel_work *w, float *buf, uint8_t *o)
{
	uint32_t t = l->tokens, hd = (uint32_t)l->kv_heads * l->head_dim, k = t < hd ? t : hd;
	uint32_t r = rank_of(p, t, hd);
	float *x = buf, *u = x + (size_t)t * hd, *sv = u + (size_t)t * k, *vt = sv + k + 1;
	int err;

	memcpy(x, w->kp, (size_t)t * hd * 4);
	err = lowrank_put(isa, p, l->dtype, x, t, hd, r, u, sv, vt, o);
	if (err)
		return err;
	memcpy(x, w->vp, (size_t)t * hd * 4);
	return lowrank_put(isa, p, l->dtype, x, t, hd, r, u, sv, vt,
			   o + factor_bytes(p, l->dtype, t, r, hd));
}

/* svd=layer: a layer's factors at @in back into every head's K and V rows at @out (the
 * sparse form: per head T K rows, then T V rows). @buf: T x r + r x hd + hd floats, then
 * T x hd elements. */
static void layer_get(enum kvcd_isa isa, const struct kvcd_policy *p,
		      const struct kvcp_layout *l, const uint8_t *in, float *buf, uint8_t *out)
{
	uint32_t t = l->tokens, h = l->kv_heads, hd = h * (uint32_t)l->head_dim;
	uint32_t r = rank_of(p, t, hd);
	size_t row = (size_t)l->head_dim * kvcp_dtype_size(l->dtype);
	uint8_t *plane = (uint8_t *)(buf + (size_t)t * r + (size_t)r * hd + hd);

	for (int kv = 0; kv < 2; kv++) {
		lowrank_get(isa, p, l->dtype, in + kv * factor_bytes(p, l->dtype, t, r, hd), t, hd,
			    r, buf, plane);
		for (uint32_t hh = 0; hh < h; hh++)
			for (uint32_t j = 0; j < t; j++)
				memcpy(out + (((size_t)hh * 2 + kv) * t + j) * row,
				       plane + ((size_t)j * h + hh) * row, row);
	}
}

/* What layer_get's @buf needs (0 unless svd=layer). */
static size_t layer_get_bytes(const struct kvcd_policy *p, const struct kvcp_layout *l)
{
	size_t t = l->tokens, hd = (size_t)l->kv_heads * l->head_dim;
	size_t r = rank_of(p, l->tokens, (uint32_t)hd);

	if (!(p->lowrank & KVCD_LOWRANK_LAYER))
		return 0;
	return (t * r + r * hd + hd) * 4 + t * hd * kvcp_dtype_size(l->dtype);
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
	return kvcd_codec_body_encode(isa, &cp, &mini, pos, w->raw, NULL, o);
}

int kvcd_sel_encode(enum kvcd_isa isa, const struct kvcd_policy *p, const struct kvcp_layout *l,
		    uint32_t pos, const void *src, const float *scores, const struct kvcd_aux *aux,
		    const uint32_t *counts, void *dst)
{
	struct kvcd_codec_hdr h = { .magic = KVCD_CODEC_MAGIC, .version = KVCD_CODEC_VERSION };
	size_t lh = (size_t)l->layers * l->kv_heads, bm = (l->tokens + 7) / 8;
	uint32_t t = l->tokens, d = l->head_dim, nsink = sinks_in(p, pos, t), *own = NULL;
	uint64_t total = 0;
	uint8_t *o = dst, *bits, *wts, *body;
	float *lbuf = NULL; /* svd=layer */
	struct sel_work w;
	char why[8];
	int err;

	if (kvcd_policy_check(p, l, why, sizeof(why)) || !kvcd_policy_sel(p) || need_aux(p, aux))
		return -EINVAL;
	scores = p->hibits ? scores : NULL;
	for (uint32_t i = 0; scores && i < t; i++)
		if (!isfinite(scores[i]))
			return -EINVAL;
	if (!counts) {
		own = malloc(plan_words(p, lh) * 4);
		if (!own)
			return -ENOMEM;
		err = kvcd_sel_plan(isa, p, l, pos, src, aux, own);
		if (err) {
			free(own);
			return err;
		}
		counts = own;
	}
	h.flags = scores ? KVCD_CODEC_F_SCORES : 0;
	h.pol = *p;
	h.layout = *l;
	h.layout.codec = 0;
	h.pos = pos;
	h.bytes = kvcd_sel_size(p, l, scores, pos, counts);
	err = h.bytes ? work_alloc(&w, l) : -EINVAL;
	if (!err && (p->lowrank & KVCD_LOWRANK_LAYER)) {
		size_t hd = (size_t)l->kv_heads * d, k = t < hd ? t : hd;

		lbuf = malloc((t * hd + t * k + k + 1 + k * hd) * 4);
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
	for (size_t i = 0; i < ranks_bytes(p, lh); i++) /* energy=: each rank, 1..255 */
		o[sizeof(h) + lh * 4 + i] = (uint8_t)counts[lh + i];
	bits = o + sizeof(h) + lh * 4 + ranks_bytes(p, lh);
	memset(bits, 0, lh * bm);
	wts = bits + lh * bm;
	body = wts + (p->merge == KVCD_MERGE_KEY ? total * 2 : 0);
	for (uint32_t ly = 0; ly < l->layers && !err; ly++) {
		int role = mc_role(p, l->layers, ly);

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
				size_t kb = mc_put(isa, p, l, w.kp + hh * d, w.kp2 + hh * d, stride,
						   w.tmp, w.idx, w.mcf, body);

				mc_put(isa, p, l, w.vp + hh * d, w.vp2 + hh * d, stride, w.tmp, w.idx,
				       w.mcf, body + kb);
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
				bool attn = p->select == KVCD_SELECT_H2O || p->select == KVCD_SELECT_SNAPKV;

				/* mass: snapkv's window attention; h2o's accumulated attention per
				 * query that saw the token (assuming they reach the block's end: it
				 * grows with their number); else one per token */
				for (uint32_t j = 0; j < t; j++)
					w.mass[j] = !attn ? 1.0f : fmaxf(w.score[j], 1e-6f) /
						(p->select == KVCD_SELECT_H2O ? (float)(t - j) : 1.0f);
				merge_head(l, hh, m, nsink, w.mass, &w);
				if (p->merge == KVCD_MERGE_KEY) {
					kvcd_from_f32(isa, KVCP_F16, w.bias, wts, m);
					wts += (size_t)m * 2;
				}
			}
			if (p->rank && (p->lowrank & KVCD_LOWRANK_LAYER)) {
				if (!hh) /* the whole layer, stored with its first head */
					err = layer_put(isa, p, l, &w, lbuf, body);
			} else if (p->rank) {
				uint32_t rk = p->energy ? counts[lh + 2 * u] : rank_of(p, m, d);
				uint32_t rv = p->energy ? counts[lh + 2 * u + 1] : rk;
				size_t half = factor_bytes(p, l->dtype, m, rk, d);

				err = lowrank_put(isa, p, l->dtype, w.rows, m, d, rk, w.u, w.sv, w.vt,
						  body);
				if (!err)
					err = lowrank_put(isa, p, l->dtype, w.rows + (size_t)m * d, m, d,
							  rv, w.u, w.sv, w.vt, body + half);
			} else if (m) {
				kvcd_from_f32(isa, l->dtype, w.rows, w.raw, (size_t)m * d * 2);
				err = kvcd_codec_body_encode(isa, p, &mini, pos, w.raw, w.sc, body);
			}
			if (!err && p->cold && m < t)
				err = cold_put(isa, p, l, pos, hh, m, &w,
					       body + (m ? kvcd_codec_body_size(p, &mini, scores, pos) : 0));
			body += body_size(p, l, u, m, scores, pos,
					  p->energy ? counts + lh + 2 * u : NULL);
		}
	}
	free(w.kp);
	free(lbuf);
	free(own);
	return err;
}

/* Counts and bitmaps of an encoded block, checked against each other and its size. */
static int read_sel(const struct kvcd_codec_hdr *h, const void *src, uint64_t n,
		    uint32_t *counts, uint64_t *total)
{
	const struct kvcp_layout *l = &h->layout;
	size_t lh = (size_t)l->layers * l->kv_heads, bm = (l->tokens + 7) / 8;
	size_t rb = ranks_bytes(&h->pol, lh);
	const uint8_t *rk = (const uint8_t *)src + sizeof(*h) + lh * 4, *bits = rk + rb;

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
		    ((h->pol.lowrank & KVCD_LOWRANK_LAYER) && counts[i] != l->tokens))
			return -EBADMSG;
		for (size_t j = 2 * i; j < 2 * i + 2 && rb; j++) { /* energy=: 1..cap, 0 if empty */
			counts[lh + j] = rk[j];
			if ((rk[j] == 0) != (counts[i] == 0) ||
			    rk[j] > rank_of(&h->pol, counts[i], l->head_dim))
				return -EBADMSG;
		}
		*total += counts[i];
	}
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
	uint32_t *counts = malloc(kvcd_sel_plan_words(&h->pol, &h->layout) * 4);
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
		err = kvcd_codec_body_decode(isa, p, &hm, pos, scores, in, hot);
	if (!err && c)
		err = kvcd_codec_body_decode(isa, &cp, &cm, pos, false,
					     in + (m ? kvcd_codec_body_size(p, &hm, scores, pos) : 0),
					     cold);
	for (uint32_t j = 0; j < t && !err; j++) {
		bool kept = bits[j / 8] >> (j % 8) & 1;
		const uint8_t *k = kept ? hot + (size_t)hi * row : cold + (size_t)ci * row;
		const uint8_t *v = kept ? hot + ((size_t)m + hi) * row : cold + ((size_t)c + ci) * row;

		memcpy(out + (size_t)j * row, k, row);
		memcpy(out + ((size_t)t + j) * row, v, row);
		hi += kept;
		ci += !kept;
	}
	return err;
}

int kvcd_sel_decode(enum kvcd_isa isa, const struct kvcd_codec_hdr *h, const void *src,
		    uint64_t n, void *dst, uint64_t cap, struct kvcp_layout *l)
{
	const struct kvcp_layout *hl = &h->layout;
	size_t lh = (size_t)hl->layers * hl->kv_heads, bm = (hl->tokens + 7) / 8;
	size_t row = (size_t)hl->head_dim * kvcp_dtype_size(hl->dtype);
	bool scores = h->flags & KVCD_CODEC_F_SCORES;
	uint32_t *counts = malloc(plan_words(&h->pol, lh) * 4), *tok;
	float *fac;
	struct kvcp_sparse sp = { .magic = KVCP_SPARSE_MAGIC, .tokens = hl->tokens };
	const uint8_t *bits, *wts, *in;
	uint64_t total, all;
	float *bias;
	uint8_t *rows;
	int err = 0;

	if (!counts)
		return -ENOMEM;
	if (read_sel(h, src, n, counts, &total)) {
		free(counts);
		return -EBADMSG;
	}
	all = out_total(h, total);
	/* low-rank factors of the largest head: n x r + r x d + d floats, r <= d; MiniCache:
	 * T x (d + 2) + 2d; cold=: the cold rows of a head, 2T rows; svd=layer: layer_get's */
	fac = h->pol.rank || h->pol.mc || h->pol.cold ?
	      malloc(((size_t)hl->tokens * (hl->head_dim + 2) +
		      (size_t)hl->head_dim * hl->head_dim + 2 * (size_t)hl->head_dim) * 4 +
		     2 * (size_t)hl->tokens * row + layer_get_bytes(&h->pol, hl)) : NULL;
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
	bits = (const uint8_t *)src + sizeof(*h) + lh * 4 + ranks_bytes(&h->pol, lh);
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
		int role = mc_role(&h->pol, hl->layers, ly);

		if (!counts[i] && !h->pol.cold)
			continue;
		if (role) { /* every (layer, head) holds all T rows: the pair's second is H on */
			size_t tr = (size_t)hl->tokens * row, kb;

			if (counts[i] != hl->tokens) {
				err = -EBADMSG;
				break;
			}
			if (role == 1) {
				kb = mc_get(isa, &h->pol, hl, in, fac, rows,
					    rows + (size_t)hl->kv_heads * 2 * tr);
				if (!kb || !mc_get(isa, &h->pol, hl, in + kb, fac, rows + tr,
						   rows + (size_t)hl->kv_heads * 2 * tr + tr)) {
					err = -EBADMSG;
					break;
				}
			}
			in += body_size(&h->pol, hl, i, counts[i], scores, h->pos, NULL);
			rows += 2 * tr;
			continue;
		}
		if (h->pol.rank && (h->pol.lowrank & KVCD_LOWRANK_LAYER)) {
			if (!(i % hl->kv_heads)) /* writes every head of the layer */
				layer_get(isa, &h->pol, hl, in, fac, rows);
		} else if (h->pol.rank) {
			uint32_t c = counts[i], d = hl->head_dim, r = rank_of(&h->pol, c, d);
			uint32_t rk = h->pol.energy ? counts[lh + 2 * i] : r;
			uint32_t rv = h->pol.energy ? counts[lh + 2 * i + 1] : r;
			size_t half = factor_bytes(&h->pol, hl->dtype, c, rk, d);

			lowrank_get(isa, &h->pol, hl->dtype, in, c, d, rk, fac, rows);
			lowrank_get(isa, &h->pol, hl->dtype, in + half, c, d, rv, fac,
				    rows + (size_t)c * row);
		} else if (h->pol.cold) {
			err = cold_get(isa, &h->pol, hl, h->pos, scores,
				       bits + i * bm, counts[i], in, (uint8_t *)fac, rows);
		} else if (counts[i]) {
			err = kvcd_codec_body_decode(isa, &h->pol, &mini, h->pos, scores, in, rows);
		}
		in += body_size(&h->pol, hl, i, counts[i], scores, h->pos,
				h->pol.energy ? counts + lh + 2 * i : NULL);
		rows += 2 * (size_t)(h->pol.cold ? hl->tokens : counts[i]) * row;
	}
	free(counts);
	free(fac);
	return err;
}
