/* units.c - the quantizing codecs (int, fp8, kivi) on whole blocks, without the header that
 * codec.c puts in front: what every token class of a unit becomes (see codec.h).
 *
 * Body: one unit per (layer, K/V, head) in that order.
 * A unit of T tokens x D channels is, with every size fixed by (policy, layout, scores?):
 *   u32 exact[ne], u32 important[nh]        token indices, ascending
 *   exact rows                              ne x D in the engine's dtype, bit for bit
 *   important params, codes                 nh x ceil(D/gch) (f16 scale, f16 zero); packed
 *                                           (params=u8: every params list is a 12-byte
 *                                           reference, then 2 bytes per group)
 *   regular params, codes                   int, kivi V: nr x ceil(D/gch) (scale, zero);
 *                                           fp8: nr x ceil(D/gch) f16 scales, one byte each;
 *                                           kivi K: (nr / G) x D (scale, zero), codes in
 *                                           [group][channel][token] order
 *   residual rows                           kivi K: nr % G newest regular tokens, exact
 *   u32 sparse positions[ns], f32 values[ns] in the quantized regular values (row r, chan d:
 *                                           r * D + d), ascending
 * Rotated tokens (important and quantized regular ones) are rotated before everything above,
 * sparse values included, and rotated back after decoding.
 */
#include <errno.h>
#include <stddef.h>
#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* The largest |v[i]|, NaNs ignored (vmaxps returns its second operand when either is NaN). */
__attribute__((target("avx512f"))) static float absmax_avx512(const float *v, size_t n,
							      size_t *done)
{
	__m512 acc = _mm512_setzero_ps();
	size_t i = 0;

	for (; i + 16 <= n; i += 16)
		acc = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(v + i)), acc);
	*done = i;
	return _mm512_reduce_max_ps(acc);
}

static float absmax(enum kvcd_isa isa, const float *v, size_t n)
{
	float m = 0.0f;
	size_t i = 0;

	if (isa >= KVCD_ISA_AVX512 && kvcd_isa_best() >= KVCD_ISA_AVX512)
		m = absmax_avx512(v, n, &i);
	for (; i < n; i++)
		m = fabsf(v[i]) > m ? fabsf(v[i]) : m;
	return m;
}

/* Smallest f16 scale s with s * 448 >= amax. */
static uint16_t fp8_scale(float amax)
{
	uint16_t h = kvcd_f32_to_f16(amax / 448.0f);

	while (kvcd_f16_to_f32(h) * 448.0f < amax)
		h++;
	return h;
}

/* ---- shapes: every size is a function of (policy, layout, scores?) ---------------------- */

struct shape {
	uint32_t t, d, es;	    /* tokens, channels, bytes per element */
	uint32_t nsink, ne, nh, nr; /* sinks, exact (sinks included), important, regular */
	uint32_t gch, ngt;	    /* per-token groups: channels each, groups per token */
	uint32_t nq;		    /* regular tokens that are quantized */
	uint32_t nres;		    /* kivi K: regular tokens kept exact */
	uint64_t nsp;		    /* sparse values */
	uint64_t reg_bytes;	    /* regular params and codes */
	unsigned bits;		    /* regular bits */
	bool per_channel;	    /* kivi K */
	bool virt;		    /* a virtual token (virtual=mean) precedes the codes */
	uint64_t bytes;		    /* the whole unit */
};

static void shape_of(const struct kvcd_policy *p, const struct kvcp_layout *l, bool scores,
		     uint32_t pos, int kv, struct shape *s)
{
	uint32_t t = l->tokens, d = l->head_dim;
	uint32_t sink = p->sink > pos ? (p->sink - pos < t ? p->sink - pos : t) : 0;
	uint64_t b = 0, params;

	memset(s, 0, sizeof(*s));
	s->t = t;
	s->d = d;
	s->nsink = sink;
	s->es = kvcp_dtype_size(l->dtype);
	s->ne = sink + (p->outliers < t - sink ? p->outliers : t - sink);
	s->nh = scores && p->hibits ? (uint32_t)((uint64_t)(t - s->ne) * p->hipct / 100) : 0;
	s->nr = t - s->ne - s->nh;
	s->gch = p->group && p->group < d ? p->group : d;
	s->ngt = (d + s->gch - 1) / s->gch;
	s->bits = kv ? p->vbits : p->kbits;
	s->per_channel = p->kind == KVCD_CODEC_KIVI && kv == 0;
	if (s->per_channel) {
		s->nq = p->resid ? s->nr : s->nr / p->group * p->group;
		s->nres = s->nr - s->nq;
	} else {
		s->nq = s->nr;
	}
	s->virt = (p->rotate & KVCD_XFORM_VIRTUAL) && !s->per_channel;
	if (p->sparse_ppm)
		s->nsp = ((uint64_t)s->nq * d * p->sparse_ppm + 999999) / 1000000;
	b += (uint64_t)(s->ne + s->nh) * 4;
	b += (uint64_t)s->ne * d * s->es;
	b += s->virt ? (uint64_t)d * s->es : 0;
	b += kvcd_params_bytes((size_t)s->nh * s->ngt, p->params) +
	     kvcd_packed_bytes((size_t)s->nh * d, p->hibits);
	if (p->kind == KVCD_CODEC_FP8) {
		s->reg_bytes = (uint64_t)s->nq * s->ngt * 2 + (uint64_t)s->nq * d;
	} else {
		params = s->per_channel ? (uint64_t)((s->nq + p->group - 1) / p->group) * d
					: (uint64_t)s->nq * s->ngt;
		s->reg_bytes = kvcd_params_bytes(params, p->params) +
			       kvcd_packed_bytes((size_t)s->nq * d, s->bits);
	}
	b += s->reg_bytes;
	b += (uint64_t)s->nres * d * s->es;
	b += s->nsp * 8;
	s->bytes = b;
}

/* The layout the codec works on. [token][head][dim] is [token][1][head * dim]: when groups
 * span heads, each token's whole row is one unit row. */
static struct kvcp_layout view_of(const struct kvcd_policy *p, const struct kvcp_layout *l)
{
	struct kvcp_layout v = *l;

	if (kvcd_policy_spans(p, l)) {
		v.head_dim = (uint16_t)(l->kv_heads * l->head_dim);
		v.kv_heads = 1;
	}
	return v;
}

static uint64_t size_of_view(const struct kvcd_policy *p, const struct kvcp_layout *v, bool scores,
			     uint32_t pos)
{
	struct shape k, s;

	shape_of(p, v, scores, pos, 0, &k);
	shape_of(p, v, scores, pos, 1, &s);
	return sizeof(struct kvcd_codec_hdr) +
	       (uint64_t)v->layers * v->kv_heads * (k.bytes + s.bytes);
}

/* ---- working memory ------------------------------------------------------------------------ */

struct work {
	float *plane; /* T x H x D, f32: one (layer, K/V) of the block */
	float *tile;  /* the unit's rows: plane + head * D, rows ts apart */
	size_t ts;
	uint8_t *codes;		/* T x D */
	uint8_t *mask;		/* T x D: sparse marks over the quantized regular values */
	float *mag;		/* T x D: magnitudes, for the sparse threshold */
	uint8_t *cls;		/* T: 0 regular, 1 exact, 2 important */
	uint32_t *reg, *imp;	/* T: regular and important tokens */
	uint32_t *order;	/* T: tokens by descending importance */
	uint32_t *exact;	/* heads x ne: exact tokens per head, chosen on K */
	float *lo, *hi;		/* T x D: group ranges */
	float *plo, *phi;	/* T x H x ngt: per-token group ranges over the whole plane, found
				 * while converting it; valid for the rows when @pre */
	const float *ulo, *uhi; /* the unit's: plo + head * ngt, rows prs apart */
	size_t prs;
	bool pre;
	uint16_t *par;	    /* T x D x 2: group scale and zero */
	uint8_t *pc;	    /* T x D x 2: the same as params=u8 codes */
	float *chan;	    /* T x D: KIVI keys by [group][channel][token] */
	const float *e4m3;  /* decode: kvcd_e4m3_lut(), looked up once per block */
	uint8_t *chanm;	    /* T x D: their sparse marks, the same way */
	float *rcos, *rsin; /* T x head_dim / 2: RoPE angles, for policies with rope */
	float *ctr;	    /* D: the virtual token (virtual=mean) */
	void *mem;
};

/* Working memory is kept per thread and only grows: a fresh malloc of this size per block is
 * an mmap, and its page faults cost more than the encoding. Freed when the thread exits. */
struct work_cache {
	void *mem;
	size_t size;
};

static pthread_key_t cache_key;
static pthread_once_t cache_once = PTHREAD_ONCE_INIT;

static void cache_free(void *p)
{
	struct work_cache *c = p;

	free(c->mem);
	free(c);
}

static void cache_init(void)
{
	if (pthread_key_create(&cache_key, cache_free))
		abort(); /* only fails when the process is out of keys: a programming error */
}

static void *work_mem(size_t sz)
{
	struct work_cache *c;

	pthread_once(&cache_once, cache_init);
	c = pthread_getspecific(cache_key);
	if (!c) {
		c = calloc(1, sizeof(*c));
		if (!c || pthread_setspecific(cache_key, c)) {
			free(c);
			return NULL;
		}
	}
	if (c->size < sz) {
		free(c->mem);
		c->mem = malloc(sz);
		c->size = c->mem ? sz : 0;
	}
	return c->mem;
}

static int work_init(struct work *w, const struct kvcd_policy *p, const struct kvcp_layout *l,
		     uint32_t ne)
{
	size_t t = l->tokens, d = l->head_dim, td = t * d;
	size_t plane = td * l->kv_heads;
	/* group ranges, parameters and codes serve a unit's T rows or a plane row's H heads */
	size_t gd = (t > l->kv_heads ? t : l->kv_heads) * d;
	size_t gch = p->group && p->group < d ? p->group : d,
	       pr = t * l->kv_heads * ((d + gch - 1) / gch);
	size_t sz = plane * 4 + pr * 4 * 2 + td * 4 * 2 + gd * 4 * 2 + gd * 4 + gd + td + t +
		    t * 4 * 3 + (size_t)l->kv_heads * ne * 4 + td * 4 + gd * 2 + td + d * 4 + 64;
	char *m = work_mem(sz);

	if (!m)
		return -ENOMEM;
	w->mem = m;
	w->plane = w->tile = (float *)m;
	w->ts = d * l->kv_heads;
	w->plo = w->plane + plane;
	w->phi = w->plo + pr;
	w->mag = w->phi + pr;
	w->chan = w->mag + td;
	w->lo = w->chan + td;
	w->hi = w->lo + gd;
	w->par = (uint16_t *)(w->hi + gd);
	w->reg = (uint32_t *)(w->par + 2 * gd);
	w->imp = w->reg + t;
	w->order = w->imp + t;
	w->exact = w->order + t;
	w->codes = (uint8_t *)(w->exact + (size_t)l->kv_heads * ne);
	w->mask = w->codes + gd;
	w->cls = w->mask + td;
	w->rcos = (float *)(((uintptr_t)(w->cls + t) + 3) & ~(uintptr_t)3);
	w->rsin = w->rcos + td / 2;
	w->pc = (uint8_t *)(w->rsin + td / 2);
	w->chanm = w->pc + gd * 2;
	w->ctr = (float *)(((uintptr_t)(w->chanm + td) + 3) & ~(uintptr_t)3);
	return 0;
}

/* ---- helpers --------------------------------------------------------------------------------- */

static inline void put(uint8_t **o, const void *v, size_t n)
{
	memcpy(*o, v, n);
	*o += n;
}

static inline void get(const uint8_t **i, void *v, size_t n)
{
	memcpy(v, *i, n);
	*i += n;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

/* Descending score, then ascending index: a total order, so the choice is deterministic. */
static int cmp_score(const void *a, const void *b, void *scores)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	float sx = ((const float *)scores)[x], sy = ((const float *)scores)[y];

	if (sx != sy)
		return sx > sy ? -1 : 1;
	return x < y ? -1 : x > y;
}

/* The @k-th largest (0-based) of @n values; reorders @a (Hoare's selection). */
static float kth_largest(float *a, ptrdiff_t n, ptrdiff_t k)
{
	ptrdiff_t lo = 0, hi = n - 1;

	while (lo < hi) {
		float pivot = a[lo + (hi - lo) / 2], tmp;
		ptrdiff_t i = lo, j = hi;

		while (i <= j) {
			while (a[i] > pivot)
				i++;
			while (a[j] < pivot)
				j--;
			if (i <= j) {
				tmp = a[i];
				a[i++] = a[j];
				a[j--] = tmp;
			}
		}
		if (k <= j)
			hi = j;
		else if (k >= i)
			lo = i;
		else
			return a[k];
	}
	return a[k];
}

/* Group x[0..n) with sparse-marked values replaced by the group's first unmarked value, so
 * outliers do not stretch its range (their exact values are restored after decoding). Returns
 * @x itself when nothing is marked, else @out (which may be @x). */
static const float *dense_group(const float *x, const uint8_t *mask, size_t n, float *out)
{
	size_t first = n;
	bool any = false;
	float fill;

	for (size_t i = 0; i < n; i++) {
		any |= mask[i] != 0;
		if (!mask[i] && first == n)
			first = i;
	}
	if (!any)
		return x;
	fill = first < n ? x[first] : 0.0f;
	for (size_t i = 0; i < n; i++)
		out[i] = mask[i] ? fill : x[i];
	return out;
}

/* ---- one unit ------------------------------------------------------------------------------ */

struct unit_io {
	const struct kvcd_policy *p;
	const struct shape *s;
	enum kvcd_isa isa;
	uint8_t dtype;
	int kv;	     /* 0 K, 1 V */
	uint32_t hd; /* the engine's head_dim, for RoPE pairs */
};

/* RoPE angles of the block's tokens: cos and sin of (pos + t) * base^(-2k / head_dim). */
static void rope_tables(const struct kvcd_policy *p, const struct kvcp_layout *l, uint32_t pos,
			struct work *w)
{
	uint32_t half = l->head_dim / 2;

	for (uint32_t t = 0; p->rope && t < l->tokens; t++)
		for (uint32_t k = 0; k < half; k++) {
			double a = (double)(pos + t) * pow((double)p->rope, -2.0 * k / l->head_dim);

			w->rcos[(size_t)t * half + k] = (float)cos(a);
			w->rsin[(size_t)t * half + k] = (float)sin(a);
		}
}

/* Rotate pairs (2i, 2i+1) of each head of tile rows @rows by their token's angle: @dir -1
 * takes keys back to before RoPE, +1 applies it again. */
static void rope_rows(const struct unit_io *u, struct work *w, const uint32_t *rows, uint32_t n,
		      float dir)
{
	uint32_t half = u->hd / 2;

	for (uint32_t i = 0; i < n; i++) {
		float *x = w->tile + (size_t)rows[i] * w->ts;
		const float *c = w->rcos + (size_t)rows[i] * half,
			    *sn = w->rsin + (size_t)rows[i] * half;

		for (uint32_t o = 0; o < u->s->d; o += 2) {
			uint32_t k = (o % u->hd) / 2;
			float a = x[o], b = x[o + 1], cs = c[k], ss = dir * sn[k];

			x[o] = a * cs - b * ss;
			x[o + 1] = a * ss + b * cs;
		}
	}
}

/* Write tile row @t back in the engine's dtype: bit for bit, since every finite f16, bf16 or
 * f32 survives the trip through f32. The staging copy is never read a second time. */
static void put_row(const struct unit_io *u, const struct work *w, uint32_t t, uint8_t **o)
{
	kvcd_from_f32(u->isa, u->dtype, w->tile + (size_t)t * w->ts, *o, u->s->d);
	*o += (size_t)u->s->d * u->s->es;
}

/* Params of @ng groups from their ranges in w->lo and w->hi: the f16 pairs the kernels use
 * in w->par, and the unit's bytes of them (f16 pairs, or params=u8's reference and codes). */
static int put_params(const struct unit_io *u, struct work *w, size_t ng, unsigned bits,
		      uint8_t **o)
{
	int err;

	if (!u->p->params) {
		err = kvcd_quant_params(u->isa, w->lo, w->hi, ng, bits, w->par);
		if (!err)
			put(o, w->par, ng * 4);
		return err;
	}
	if (!ng)
		return 0;
	err = kvcd_quant_params_u8(w->lo, w->hi, ng, bits, *o, w->pc, w->par);
	if (err)
		return err;
	*o += KVCD_QREF_BYTES;
	put(o, w->pc, ng * 2);
	return 0;
}

/* The f16 pairs of @ng groups into w->par, from either form. */
static int get_params(const struct unit_io *u, struct work *w, size_t ng, const uint8_t **in)
{
	if (!u->p->params) {
		get(in, w->par, ng * 4);
		return 0;
	}
	if (!ng)
		return 0;
	if (kvcd_quant_params_u8_read(*in, *in + KVCD_QREF_BYTES, ng, w->par))
		return -EBADMSG;
	*in += kvcd_params_bytes(ng, true);
	return 0;
}

/* Per-token groups of @n tile rows at @bits: params, then packed codes. The three phases run
 * over all the rows in turn, so independent groups overlap in the CPU. */
static int enc_per_token(const struct unit_io *u, struct work *w, const uint32_t *rows, uint32_t n,
			 unsigned bits, uint8_t **o)
{
	const struct shape *s = u->s;
	uint32_t full = s->d / s->gch, tail = s->d - full * s->gch, ngt = s->ngt;
	int err = 0;

	for (uint32_t r = 0; r < n && w->pre; r++) {
		memcpy(w->lo + r * ngt, w->ulo + rows[r] * w->prs, ngt * 4);
		memcpy(w->hi + r * ngt, w->uhi + rows[r] * w->prs, ngt * 4);
	}
	for (uint32_t r = 0; r < n && !w->pre && !err; r++) {
		const float *x = w->tile + (size_t)rows[r] * w->ts;

		err = kvcd_quant_ranges(u->isa, x, full, s->gch, w->lo + r * ngt, w->hi + r * ngt);
		if (!err && tail)
			err = kvcd_quant_ranges(u->isa, x + full * s->gch, 1, tail,
						w->lo + r * ngt + full, w->hi + r * ngt + full);
	}
	if (!err)
		err = put_params(u, w, (size_t)n * ngt, bits, o);
	if (err)
		return err;
	for (uint32_t r = 0; r < n; r++) {
		const float *x = w->tile + (size_t)rows[r] * w->ts;
		const uint16_t *par = w->par + (size_t)r * ngt * 2;
		uint8_t *q = w->codes + (size_t)r * s->d;

		kvcd_quant_apply(u->isa, x, full, s->gch, bits, par, q);
		if (tail)
			kvcd_quant_apply(u->isa, x + full * s->gch, 1, tail, bits, par + 2 * full,
					 q + full * s->gch);
	}
	kvcd_pack(w->codes, (size_t)n * s->d, bits, *o);
	*o += kvcd_packed_bytes((size_t)n * s->d, bits);
	return 0;
}

/* Replace the sparse-marked values of each per-token group of the quantized regular rows by
 * the group's first unmarked value, in the tile: their exact values are already written. */
static void dense_rows(const struct shape *s, struct work *w)
{
	for (uint32_t r = 0; r < s->nq; r++)
		for (uint32_t c0 = 0; c0 < s->d; c0 += s->gch) {
			uint32_t len = s->d - c0 < s->gch ? s->d - c0 : s->gch;
			float *x = w->tile + (size_t)w->reg[r] * w->ts + c0;

			dense_group(x, w->mask + (size_t)r * s->d + c0, len, x);
		}
}

static int dec_per_token(const struct unit_io *u, struct work *w, const uint32_t *rows, uint32_t n,
			 unsigned bits, const uint8_t **in)
{
	const struct shape *s = u->s;
	const uint16_t *par = w->par;

	if (get_params(u, w, (size_t)n * s->ngt, in))
		return -EBADMSG;
	kvcd_unpack(*in, (size_t)n * s->d, bits, w->codes);
	*in += kvcd_packed_bytes((size_t)n * s->d, bits);
	for (uint32_t r = 0; r < n; r++) {
		float *x = w->tile + (size_t)rows[r] * w->ts;

		for (uint32_t g = 0; g < s->ngt; g++, par += 2) {
			uint32_t c0 = g * s->gch, len = s->d - c0 < s->gch ? s->d - c0 : s->gch;

			kvcd_dequant_group(u->isa, w->codes + (size_t)r * s->d + c0, len, par[0],
					   par[1], x + c0);
		}
	}
	return 0;
}

static int enc_fp8(const struct unit_io *u, struct work *w, uint8_t **o)
{
	const struct shape *s = u->s;
	uint8_t *codes = *o + (size_t)s->nq * s->ngt * 2;

	for (uint32_t r = 0; r < s->nq; r++) {
		const float *x = w->tile + (size_t)w->reg[r] * w->ts;

		for (uint32_t g = 0; g < s->ngt; g++) {
			uint32_t c0 = g * s->gch, len = s->d - c0 < s->gch ? s->d - c0 : s->gch;
			const float *v = x + c0;
			float amax = absmax(u->isa, v, len), inv;
			uint16_t h;

			if (amax > 65504.0f)
				return -ERANGE; /* as for int: the f16 range */
			h = fp8_scale(amax);
			put(o, &h, 2);
			inv = kvcd_f16_to_f32(h);
			kvcd_e4m3_n(u->isa, v, len, inv, codes + (size_t)r * s->d + c0);
		}
	}
	*o = codes + (size_t)s->nq * s->d;
	return 0;
}

static void dec_fp8(const struct unit_io *u, struct work *w, const uint8_t **in)
{
	const struct shape *s = u->s;
	const uint8_t *par = *in, *codes = *in + (size_t)s->nq * s->ngt * 2;
	const float *lut = w->e4m3;

	for (uint32_t r = 0; r < s->nq; r++) {
		float *x = w->tile + (size_t)w->reg[r] * w->ts;
		const uint8_t *c = codes + (size_t)r * s->d;

		for (uint32_t g = 0; g < s->ngt; g++, par += 2) {
			uint32_t c0 = g * s->gch, len = s->d - c0 < s->gch ? s->d - c0 : s->gch;
			uint16_t h;
			float sc;

			memcpy(&h, par, 2);
			sc = kvcd_f16_to_f32(h);
			for (uint32_t i = 0; i < len; i++)
				x[c0 + i] = lut[c[c0 + i]] * sc;
		}
	}
	*in = codes + (size_t)s->nq * s->d;
}

/* Are the @n ascending token indices at @rows consecutive? */
static inline bool rows_follow(const uint32_t *rows, uint32_t n)
{
	return n && rows[n - 1] - rows[0] == n - 1;
}

/* 8 x 8 floats from rows @src (@ss apart) into columns of @dst (@ds apart). */
__attribute__((target("avx2"))) static void transpose8(const float *src, size_t ss, float *dst,
						       size_t ds)
{
	__m256 r[8], t[8], u[8];

	for (int i = 0; i < 8; i++)
		r[i] = _mm256_loadu_ps(src + i * ss);
	for (int i = 0; i < 8; i += 2) {
		t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
		t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
	}
	for (int i = 0; i < 8; i += 4) {
		u[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
		u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
		u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
		u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
	}
	for (int i = 0; i < 4; i++) {
		_mm256_storeu_ps(dst + i * ds, _mm256_permute2f128_ps(u[i], u[i + 4], 0x20));
		_mm256_storeu_ps(dst + (i + 4) * ds, _mm256_permute2f128_ps(u[i], u[i + 4], 0x31));
	}
}

/* dst[c * @ds + i] = src[i * @ss + c] for @rows rows i and @cols columns c: 8 x 8 tiles in
 * AVX2 where both are multiples of 8, element by element otherwise (the same values). */
static void transpose(enum kvcd_isa isa, const float *src, size_t ss, uint32_t rows, uint32_t cols,
		      float *dst, size_t ds)
{
	if (isa >= KVCD_ISA_AVX2 && kvcd_isa_best() >= KVCD_ISA_AVX2 && rows % 8 == 0 &&
	    cols % 8 == 0) {
		for (uint32_t i = 0; i < rows; i += 8)
			for (uint32_t c = 0; c < cols; c += 8)
				transpose8(src + i * ss + c, ss, dst + c * ds + i, ds);
		return;
	}
	for (uint32_t i = 0; i < rows; i++)
		for (uint32_t c = 0; c < cols; c++)
			dst[c * ds + i] = src[i * ss + c];
}

/* KIVI keys: per channel over groups of G regular tokens; codes [group][channel][token]. With
 * resid=quant the last group may be shorter (nq % G tokens). Each group is transposed once
 * into w->chan, [channel][token] (sparse values replaced as dense_group does), so ranges,
 * params and codes are each one call over its D channel groups, with the same bits as
 * kvcd_quant_group per channel group. */
static int enc_per_channel(const struct unit_io *u, struct work *w, uint8_t **o)
{
	const struct shape *s = u->s;
	uint32_t G = u->p->group, ng = (s->nq + G - 1) / G, d = s->d;
	int err = 0;

	for (uint32_t g = 0; g < ng && !err; g++) {
		uint32_t gsz = s->nq - g * G < G ? s->nq - g * G : G;
		float *xt = w->chan + (size_t)g * G * d;
		uint8_t *mt = w->chanm + (size_t)g * G * d;

		if (rows_follow(w->reg + g * G, gsz)) /* the common case: one block move */
			transpose(u->isa, w->tile + (size_t)w->reg[g * G] * w->ts, w->ts, gsz, d,
				  xt, gsz);
		for (uint32_t i = 0; i < gsz; i++) {
			const float *x = w->tile + (size_t)w->reg[g * G + i] * w->ts;
			const uint8_t *m = w->mask + (size_t)(g * G + i) * d;

			for (uint32_t c = 0; !rows_follow(w->reg + g * G, gsz) && c < d; c++)
				xt[(size_t)c * gsz + i] = x[c];
			for (uint32_t c = 0; s->nsp && c < d; c++)
				mt[(size_t)c * gsz + i] = m[c];
		}
		for (uint32_t c = 0; s->nsp && c < d; c++)
			dense_group(xt + (size_t)c * gsz, mt + (size_t)c * gsz, gsz,
				    xt + (size_t)c * gsz);
		err = kvcd_quant_ranges(u->isa, xt, d, gsz, &w->lo[(size_t)g * d],
					&w->hi[(size_t)g * d]);
	}
	if (!err)
		err = put_params(u, w, (size_t)ng * d, s->bits, o);
	if (err)
		return err;
	for (uint32_t g = 0; g < ng; g++) {
		uint32_t gsz = s->nq - g * G < G ? s->nq - g * G : G;

		kvcd_quant_apply(u->isa, w->chan + (size_t)g * G * d, d, gsz, s->bits,
				 w->par + 2 * (size_t)g * d, w->codes + (size_t)g * G * d);
	}
	kvcd_pack(w->codes, (size_t)s->nq * d, s->bits, *o);
	*o += kvcd_packed_bytes((size_t)s->nq * d, s->bits);
	return 0;
}

static int dec_per_channel(const struct unit_io *u, struct work *w, const uint8_t **in)
{
	const struct shape *s = u->s;
	uint32_t G = u->p->group, ng = (s->nq + G - 1) / G, d = s->d;
	const uint16_t *par = w->par;

	if (get_params(u, w, (size_t)ng * d, in))
		return -EBADMSG;
	kvcd_unpack(*in, (size_t)s->nq * d, s->bits, w->codes);
	*in += kvcd_packed_bytes((size_t)s->nq * d, s->bits);
	for (uint32_t g = 0; g < ng; g++) {
		uint32_t gsz = s->nq - g * G < G ? s->nq - g * G : G;
		const uint8_t *q = w->codes + (size_t)g * G * d;

		/* the common case: the group's tokens follow each other, straight into their rows */
		if (rows_follow(w->reg + g * G, gsz) &&
		    kvcd_dequant_rows(u->isa, q, d, gsz, par,
				      w->tile + (size_t)w->reg[g * G] * w->ts, w->ts)) {
			par += 2 * (size_t)d;
			continue;
		}
		for (uint32_t c = 0; c < d; c++, par += 2)
			kvcd_dequant_group(u->isa, q + (size_t)c * gsz, gsz, par[0], par[1],
					   w->chan + (size_t)c * gsz);
		if (rows_follow(w->reg + g * G, gsz)) { /* back to token rows */
			transpose(u->isa, w->chan, gsz, d, gsz,
				  w->tile + (size_t)w->reg[g * G] * w->ts, w->ts);
			continue;
		}
		for (uint32_t i = 0; i < gsz; i++) {
			float *x = w->tile + (size_t)w->reg[g * G + i] * w->ts;

			for (uint32_t c = 0; c < d; c++)
				x[c] = w->chan[(size_t)c * gsz + i];
		}
	}
	return 0;
}

/* Choose the exact tokens of one head from its keys (tile holds K): the sinks, then the
 * `outliers` tokens with the largest max |k|. Ascending. */
static void choose_exact(const struct shape *s, struct work *w, uint32_t *exact)
{
	uint32_t sink = s->nsink;

	for (uint32_t i = 0; i < sink; i++)
		exact[i] = i;
	if (s->ne == sink)
		return; /* no outlier tokens asked for */
	for (uint32_t t = 0; t < s->t; t++) {
		float m = 0.0f;

		for (uint32_t c = 0; c < s->d; c++)
			m = fabsf(w->tile[(size_t)t * w->ts + c]) > m
				    ? fabsf(w->tile[(size_t)t * w->ts + c])
				    : m;
		w->mag[t] = t < sink ? -1.0f : m;
	}
	for (uint32_t n = sink; n < s->ne; n++) { /* few outliers: repeated selection is fine */
		uint32_t arg = sink;

		for (uint32_t t = sink; t < s->t; t++)
			if (w->mag[t] > w->mag[arg])
				arg = t;
		exact[n] = arg;
		w->mag[arg] = -1.0f;
	}
	qsort(exact, s->ne, 4, cmp_u32);
}

/* Mark the nsp largest-magnitude quantized regular values; write positions and values. */
static void choose_sparse(const struct shape *s, struct work *w, uint8_t *o)
{
	size_t n = (size_t)s->nq * s->d, want = s->nsp, got = 0;
	uint8_t *pos = o, *val = o + want * 4;
	float thr;

	memset(w->mask, 0, n);
	for (size_t i = 0; i < n; i++)
		w->mag[i] = fabsf(w->tile[(size_t)w->reg[i / s->d] * w->ts + i % s->d]);
	thr = kth_largest(w->mag, (ptrdiff_t)n, (ptrdiff_t)want - 1);
	for (int pass = 0; pass < 2; pass++) /* strictly above first, then ties, in order */
		for (size_t i = 0; i < n && got < want; i++) {
			float v = w->tile[(size_t)w->reg[i / s->d] * w->ts + i % s->d];

			if (!w->mask[i] && (pass ? fabsf(v) == thr : fabsf(v) > thr)) {
				w->mask[i] = 1;
				got++;
			}
		}
	for (size_t i = 0, k = 0; i < n; i++)
		if (w->mask[i]) {
			uint32_t p32 = (uint32_t)i;
			float v = w->tile[(size_t)w->reg[i / s->d] * w->ts + i % s->d];

			memcpy(pos + k * 4, &p32, 4);
			memcpy(val + k * 4, &v, 4);
			k++;
		}
}

/* @ng groups of @gch (a multiple of 16) f16 values at @src to f32 at @x, with each group's
 * minimum and maximum: kvcd_to_f32 then kvcd_quant_ranges in one pass, the same values.
 * Returns -EINVAL for an inf or a nan. */
__attribute__((target("avx512f"))) static int f16_row_ranges(const uint8_t *src, float *x,
							     size_t ng, size_t gch, float *lo,
							     float *hi)
{
	const __m512 inf = _mm512_set1_ps(INFINITY);
	__mmask16 ok = 0xffff;

	for (size_t g = 0; g < ng; g++) {
		__m512 mn = _mm512_set1_ps(INFINITY), mx = _mm512_set1_ps(-INFINITY);

		for (size_t i = g * gch; i < (g + 1) * gch; i += 16) {
			__m512 v =
				_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(src + 2 * i)));

			ok &= _mm512_cmp_ps_mask(_mm512_abs_ps(v), inf, _CMP_LT_OQ);
			_mm512_storeu_ps(x + i, v);
			mn = _mm512_min_ps(mn, v);
			mx = _mm512_max_ps(mx, v);
		}
		lo[g] = _mm512_reduce_min_ps(mn);
		hi[g] = _mm512_reduce_max_ps(mx);
	}
	return ok == 0xffff ? 0 : -EINVAL;
}

/* Ask for plane row @r + PREFETCH_ROWS of @t rows of @rowb bytes at @base. The rows are read
 * in order, but the work on each row is long enough that the hardware prefetcher alone lets
 * the next row's loads miss. */
#define PREFETCH_ROWS 2
static inline void prefetch_ahead(const uint8_t *base, size_t r, size_t t, size_t rowb)
{
	if (r + PREFETCH_ROWS >= t)
		return;
	base += (r + PREFETCH_ROWS) * rowb;
	for (size_t o = 0; o < rowb; o += 64)
		__builtin_prefetch(base + o);
}

/* Any inf or nan in x[0..n)? (x - x is nan exactly for those.) */
/* Convert one (layer, K/V) plane from staging in one sequential pass, a plane row (all heads
 * of one token) at a time, rejecting inf and nan. While the row is still in L1, find the range
 * of each per-token group for the quantizer, or of each head's row when groups do not tile it. */
static int load_plane(enum kvcd_isa isa, const struct kvcp_layout *l, const uint8_t *src,
		      struct work *w)
{
	size_t hd = (size_t)l->kv_heads * l->head_dim, es = kvcp_dtype_size(l->dtype);
	size_t chunk = hd / w->prs;

	bool one_pass = l->dtype == KVCP_F16 && chunk % 16 == 0 && isa >= KVCD_ISA_AVX512 &&
			kvcd_isa_best() >= KVCD_ISA_AVX512 && kvcd_has_f16c();

	for (uint32_t t = 0; t < l->tokens; t++) {
		float *x = w->plane + t * hd;

		prefetch_ahead(src, t, l->tokens, hd * es);
		if (one_pass) {
			if (f16_row_ranges(src + t * hd * es, x, w->prs, chunk, w->plo + t * w->prs,
					   w->phi + t * w->prs))
				return -EINVAL;
			continue;
		}
		kvcd_to_f32(isa, l->dtype, src + t * hd * es, x, hd);
		if (kvcd_quant_ranges(isa, x, w->prs, chunk, w->plo + t * w->prs,
				      w->phi + t * w->prs))
			return -EINVAL;
	}
	return 0;
}

/* Add @sign x the virtual token w->ctr to the @n rows @rows of the unit. */
static void shift_rows(struct work *w, const uint32_t *rows, uint32_t n, uint32_t d, float sign)
{
	for (uint32_t i = 0; i < n; i++) {
		float *r = w->tile + (size_t)rows[i] * w->ts;

		for (uint32_t c = 0; c < d; c++)
			r[c] += sign * w->ctr[c];
	}
}

/* virtual=mean: each channel's mean over the rows about to be quantized per token (important
 * and regular), rounded to the engine's dtype as the unit stores it, is taken out of them: a
 * channel whose values all sit far from zero no longer widens every token's range. */
static void put_virtual(const struct unit_io *u, struct work *w, uint8_t **o)
{
	const struct shape *s = u->s;
	uint32_t n = s->nh + s->nq;

	for (uint32_t c = 0; c < s->d; c++) {
		double sum = 0;

		for (uint32_t i = 0; i < s->nh; i++)
			sum += w->tile[(size_t)w->imp[i] * w->ts + c];
		for (uint32_t i = 0; i < s->nq; i++)
			sum += w->tile[(size_t)w->reg[i] * w->ts + c];
		w->ctr[c] = n ? (float)(sum / n) : 0.0f;
	}
	kvcd_from_f32(u->isa, u->dtype, w->ctr, *o, s->d);
	kvcd_to_f32(u->isa, u->dtype, *o, w->ctr, s->d); /* what decode will add back */
	*o += (size_t)s->d * s->es;
	shift_rows(w, w->imp, s->nh, s->d, -1.0f);
	shift_rows(w, w->reg, s->nq, s->d, -1.0f);
}

static int encode_unit(const struct unit_io *u, struct work *w, uint32_t *exact, bool choose,
		       uint8_t **o)
{
	const struct shape *s = u->s;
	const struct kvcd_policy *p = u->p;
	uint32_t nhi = 0, nreg = 0;
	uint8_t *sparse_at;
	int err;

	if (choose)
		choose_exact(s, w, exact);
	memset(w->cls, 0, s->t);
	for (uint32_t i = 0; i < s->ne; i++)
		w->cls[exact[i]] = 1;
	for (uint32_t i = 0; i < s->t && nhi < s->nh; i++)
		if (!w->cls[w->order[i]]) {
			w->cls[w->order[i]] = 2;
			w->imp[nhi++] = w->order[i];
		}
	qsort(w->imp, nhi, 4, cmp_u32);
	for (uint32_t t = 0; t < s->t; t++)
		if (!w->cls[t])
			w->reg[nreg++] = t;
	put(o, exact, (size_t)s->ne * 4);
	put(o, w->imp, (size_t)s->nh * 4);
	for (uint32_t i = 0; i < s->ne; i++)
		put_row(u, w, exact[i], o);
	if (p->rope && u->kv == 0) {
		rope_rows(u, w, w->imp, s->nh, -1.0f);
		rope_rows(u, w, w->reg, s->nq, -1.0f);
	}
	if (s->virt)
		put_virtual(u, w, o);
	if (p->rotate & KVCD_XFORM_HADAMARD) {
		for (uint32_t i = 0; i < s->nh; i++)
			kvcd_hadamard(u->isa, w->tile + (size_t)w->imp[i] * w->ts, s->d);
		for (uint32_t i = 0; i < s->nq; i++)
			kvcd_hadamard(u->isa, w->tile + (size_t)w->reg[i] * w->ts, s->d);
	}
	if (s->nh) {
		err = enc_per_token(u, w, w->imp, s->nh, p->hibits, o);
		if (err)
			return err;
	}
	/* the sparse list goes last but is chosen first: the dense groups exclude it */
	sparse_at = *o + s->reg_bytes + (size_t)s->nres * s->d * s->es;
	if (s->nsp) {
		choose_sparse(s, w, sparse_at);
		if (!s->per_channel)
			dense_rows(s, w);
	}
	if (p->kind == KVCD_CODEC_FP8)
		err = enc_fp8(u, w, o);
	else if (s->per_channel)
		err = enc_per_channel(u, w, o);
	else
		err = enc_per_token(u, w, w->reg, s->nq, s->bits, o);
	if (err)
		return err;
	for (uint32_t i = s->nq; i < s->nr; i++)
		put_row(u, w, w->reg[i], o);
	*o = sparse_at + s->nsp * 8;
	return 0;
}

/* Read an ascending, in-range, disjoint token list. */
static int read_tokens(const uint8_t **in, uint32_t *list, uint32_t n, uint32_t t, uint8_t *cls,
		       uint8_t mark)
{
	get(in, list, (size_t)n * 4);
	for (uint32_t i = 0; i < n; i++) {
		if (list[i] >= t || cls[list[i]] || (i && list[i] <= list[i - 1]))
			return -EBADMSG;
		cls[list[i]] = mark;
	}
	return 0;
}

static int decode_unit(const struct unit_io *u, struct work *w, const uint8_t **in)
{
	const struct shape *s = u->s;
	const struct kvcd_policy *p = u->p;
	uint32_t nreg = 0, *exact = w->exact;

	memset(w->cls, 0, s->t);
	if (read_tokens(in, exact, s->ne, s->t, w->cls, 1) ||
	    read_tokens(in, w->imp, s->nh, s->t, w->cls, 2))
		return -EBADMSG;
	for (uint32_t t = 0; t < s->t; t++)
		if (!w->cls[t])
			w->reg[nreg++] = t;
	for (uint32_t i = 0; i < s->ne; i++) { /* into the plane, which goes out in one pass */
		kvcd_to_f32(u->isa, u->dtype, *in, w->tile + (size_t)exact[i] * w->ts, s->d);
		*in += (size_t)s->d * s->es;
	}
	if (s->virt) {
		kvcd_to_f32(u->isa, u->dtype, *in, w->ctr, s->d);
		*in += (size_t)s->d * s->es;
	}
	if (s->nh && dec_per_token(u, w, w->imp, s->nh, p->hibits, in))
		return -EBADMSG;
	if (p->kind == KVCD_CODEC_FP8)
		dec_fp8(u, w, in);
	else if (s->per_channel ? dec_per_channel(u, w, in)
				: dec_per_token(u, w, w->reg, s->nq, s->bits, in))
		return -EBADMSG;
	for (uint32_t i = s->nq; i < s->nr; i++) {
		kvcd_to_f32(u->isa, u->dtype, *in, w->tile + (size_t)w->reg[i] * w->ts, s->d);
		*in += (size_t)s->d * s->es;
	}
	if (s->nsp) {
		const uint8_t *pos = *in, *val = *in + s->nsp * 4;

		for (uint64_t k = 0; k < s->nsp; k++) {
			uint32_t i;
			float v;

			memcpy(&i, pos + k * 4, 4);
			memcpy(&v, val + k * 4, 4);
			if (i >= (uint64_t)s->nq * s->d)
				return -EBADMSG;
			w->tile[(size_t)w->reg[i / s->d] * w->ts + i % s->d] = v;
		}
		*in += s->nsp * 8;
	}
	if (p->rotate & KVCD_XFORM_HADAMARD) {
		for (uint32_t i = 0; i < s->nh; i++)
			kvcd_hadamard(u->isa, w->tile + (size_t)w->imp[i] * w->ts, s->d);
		for (uint32_t i = 0; i < s->nq; i++)
			kvcd_hadamard(u->isa, w->tile + (size_t)w->reg[i] * w->ts, s->d);
	}
	if (s->virt) { /* the virtual token back into every row it left */
		shift_rows(w, w->imp, s->nh, s->d, 1.0f);
		shift_rows(w, w->reg, s->nq, s->d, 1.0f);
	}
	if (p->rope && u->kv == 0) {
		rope_rows(u, w, w->imp, s->nh, 1.0f);
		rope_rows(u, w, w->reg, s->nq, 1.0f);
	}
	return 0;
}

/* ---- blocks ---------------------------------------------------------------------------------- */

/* Byte offset of the (layer, K/V) plane [token][head][dim] in the raw block. */
static size_t plane_base(const struct kvcp_layout *l, uint32_t layer, int kv)
{
	size_t row = (size_t)l->kv_heads * l->head_dim * kvcp_dtype_size(l->dtype);

	return ((size_t)layer * 2 + (size_t)kv) * l->tokens * row;
}

bool kvcd_codec_fused = true;

/* Can the block go through encode_fused()? Every token of every unit regular and quantized per
 * token; for int each group within one head and each row's codes a whole number of bytes. */
static bool fusable(const struct kvcd_policy *p, const struct shape *sh)
{
	for (int kv = 0; kv < 2; kv++) {
		const struct shape *s = &sh[kv];

		if (s->ne || s->nh || s->nres || s->nsp || s->per_channel || s->virt)
			return false;
		if (p->kind == KVCD_CODEC_INT && (s->d % s->gch || s->d * s->bits % 8))
			return false;
	}
	return kvcd_codec_fused && !p->rope &&
	       ((p->kind == KVCD_CODEC_INT && !p->params) || p->kind == KVCD_CODEC_FP8);
}

/* The largest |v[i]| of @n values, and whether all are finite (NaN and inf fail the < inf
 * test). The same maximum as absmax(). */
__attribute__((target("avx512f"))) static float absmax_finite_avx512(const float *v, size_t n,
								     bool *finite)
{
	const __m512 inf = _mm512_set1_ps(INFINITY);
	__m512 acc = _mm512_setzero_ps();
	__mmask16 ok = 0xffff;
	size_t i = 0;
	float m;

	for (; i + 16 <= n; i += 16) {
		__m512 a = _mm512_abs_ps(_mm512_loadu_ps(v + i));

		ok &= _mm512_cmp_ps_mask(a, inf, _CMP_LT_OQ);
		acc = _mm512_max_ps(a, acc);
	}
	m = _mm512_reduce_max_ps(acc);
	*finite = ok == 0xffff;
	for (; i < n; i++) {
		*finite &= isfinite(v[i]) != 0;
		m = fabsf(v[i]) > m ? fabsf(v[i]) : m;
	}
	return m;
}

static float absmax_finite(enum kvcd_isa isa, const float *v, size_t n, bool *finite)
{
	float m = 0.0f;

	if (isa >= KVCD_ISA_AVX512 && kvcd_isa_best() >= KVCD_ISA_AVX512)
		return absmax_finite_avx512(v, n, finite);
	*finite = true;
	for (size_t i = 0; i < n; i++) {
		*finite &= isfinite(v[i]) != 0;
		m = fabsf(v[i]) > m ? fabsf(v[i]) : m;
	}
	return m;
}

/* The scale of the fp8 group @v[0..n): -EINVAL on inf/nan, -ERANGE beyond f16's range. */
static int fp8_group(enum kvcd_isa isa, const float *v, size_t n, uint16_t *sc)
{
	bool finite;
	float amax = absmax_finite(isa, v, n, &finite);

	if (!finite)
		return -EINVAL;
	if (amax > 65504.0f)
		return -ERANGE;
	*sc = fp8_scale(amax);
	return 0;
}

/* One plane row @x (every head, f32) of token @r in fp8: each head's group scales and codes
 * straight into its unit at @base, as enc_fp8 writes them. */
static int fp8_row(enum kvcd_isa isa, const struct shape *s, const float *x, size_t heads, size_t r,
		   uint8_t *base)
{
	uint16_t sc;
	int err;

	if (s->ngt == 1 && heads <= 64) { /* one group a head: every head's codes in one loop */
		float div[64];
		uint8_t *out[64];

		for (size_t h = 0; h < heads; h++) {
			uint8_t *u = base + h * s->bytes;

			if ((err = fp8_group(isa, x + h * s->d, s->d, &sc)))
				return err;
			memcpy(u + r * 2, &sc, 2);
			div[h] = kvcd_f16_to_f32(sc);
			out[h] = u + (size_t)s->nq * 2 + r * s->d;
		}
		kvcd_e4m3_runs(isa, x, heads, s->d, div, out);
		return 0;
	}
	for (size_t h = 0; h < heads; h++) {
		uint8_t *u = base + h * s->bytes, *codes = u + (size_t)s->nq * s->ngt * 2;

		for (uint32_t g = 0; g < s->ngt; g++) {
			uint32_t c0 = g * s->gch, len = s->d - c0 < s->gch ? s->d - c0 : s->gch;
			const float *v = x + h * s->d + c0;

			if ((err = fp8_group(isa, v, len, &sc)))
				return err;
			memcpy(u + (r * s->ngt + g) * 2, &sc, 2);
			kvcd_e4m3_n(isa, v, len, kvcd_f16_to_f32(sc), codes + r * s->d + c0);
		}
	}
	return 0;
}

/* @n e4m3 codes times @sc into @out: the e4m3 table's values, from the code's bits as an f16
 * (exponent bias 15 against e4m3's 7: times 256, exact) with the NaN codes put back, then
 * one multiplication, as dec_fp8 does. */
__attribute__((target("avx512f"))) static size_t e4m3_scale_avx512(const uint8_t *c, size_t n,
								   float sc, float *out)
{
	const __m512i m7f = _mm512_set1_epi32(0x7f), m80 = _mm512_set1_epi32(0x80),
		      qnan = _mm512_set1_epi32(0x7fc00000);
	const __m512 k256 = _mm512_set1_ps(256.0f), vsc = _mm512_set1_ps(sc);
	size_t i = 0;

	for (; i + 16 <= n; i += 16) {
		__m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(c + i)));
		__m512i mag = _mm512_and_si512(b, m7f), sign = _mm512_and_si512(b, m80);
		__m512i h = _mm512_or_si512(_mm512_slli_epi32(mag, 7), _mm512_slli_epi32(sign, 8));
		__m512 f = _mm512_mul_ps(_mm512_cvtph_ps(_mm512_cvtepi32_epi16(h)), k256);
		__mmask16 nan = _mm512_cmpeq_epi32_mask(mag, m7f);

		if (nan) /* the table's NaN, signed like the code */
			f = _mm512_mask_blend_ps(nan, f,
						 _mm512_castsi512_ps(_mm512_or_si512(
							 _mm512_slli_epi32(sign, 24), qnan)));
		_mm512_storeu_ps(out + i, _mm512_mul_ps(f, vsc));
	}
	return i;
}

static void e4m3_scale(enum kvcd_isa isa, const float *lut, const uint8_t *c, size_t n, float sc,
		       float *out)
{
	size_t i = 0;

	if (isa >= KVCD_ISA_AVX512 && kvcd_isa_best() >= KVCD_ISA_AVX512)
		i = e4m3_scale_avx512(c, n, sc, out);
	for (; i < n; i++)
		out[i] = lut[c[i]] * sc;
}

/* The common case in one pass: each plane row (one token, every head) goes from staging into
 * an L1 buffer, is rotated, ranged, quantized and packed there, and its codes and parameters
 * are written straight to each head's unit. Writes the same bytes as the unit-by-unit path. */
static int encode_fused(enum kvcd_isa isa, const struct kvcd_policy *p, const struct kvcp_layout *l,
			const uint8_t *src, const struct shape *sh, struct work *w, uint8_t *o)
{
	size_t d = l->head_dim, heads = l->kv_heads, hd = heads * d, es = kvcp_dtype_size(l->dtype);
	size_t ngt = sh[0].ngt, ng = heads * ngt, gch = sh[0].gch, t = l->tokens;
	float *x = w->plane;
	/* f16 rows convert and range in one AVX-512 pass when nothing comes in between */
	bool one_pass = l->dtype == KVCP_F16 && p->kind == KVCD_CODEC_INT && !p->rotate &&
			gch % 16 == 0 && isa >= KVCD_ISA_AVX512 &&
			kvcd_isa_best() >= KVCD_ISA_AVX512 && kvcd_has_f16c();
	int err;

	for (uint32_t layer = 0; layer < l->layers; layer++)
		for (int kv = 0; kv < 2; kv++) {
			const uint8_t *in = src + plane_base(l, layer, kv);
			uint8_t *base = o + layer * heads * (sh[0].bytes + sh[1].bytes) +
					kv * heads * sh[0].bytes;
			unsigned bits = sh[kv].bits;
			size_t rowb = d * bits / 8;
			/* f16 rows at 8 or 4 bits, or in fp8: the whole row's work in one kernel */
			bool row_kernel = one_pass && kvcd_quant_row_f16_ok(isa, gch, bits);
			/* f16 rows rotated first: the kernel from the rotated floats */
			bool rot_kernel = l->dtype == KVCP_F16 && p->kind == KVCD_CODEC_INT &&
					  p->rotate && kvcd_quant_row_f16_ok(isa, gch, bits);
			bool fp8_kernel = l->dtype == KVCP_F16 && p->kind == KVCD_CODEC_FP8 &&
					  !p->rotate && sh[kv].d % sh[kv].gch == 0 &&
					  kvcd_fp8_row_f16_ok(isa, sh[kv].gch);

			for (size_t r = 0; r < t; r++) {
				const uint8_t *row = in + r * hd * es;

				prefetch_ahead(in, r, t, hd * es);
				if (fp8_kernel) {
					err = kvcd_fp8_row_f16(
						isa, row, heads * sh[kv].ngt, sh[kv].gch,
						sh[kv].ngt, sh[kv].bytes, x,
						base + r * sh[kv].ngt * 2,
						base + (size_t)sh[kv].nq * sh[kv].ngt * 2 + r * d);
					if (err)
						return err;
					continue;
				}
				if (row_kernel) {
					err = kvcd_quant_row_f16(
						isa, row, ng, gch, ngt, bits, sh[kv].bytes, x,
						base + r * ngt * 4, base + t * ngt * 4 + r * rowb);
					if (err)
						return err;
					continue;
				}
				if (one_pass) { /* converted and ranged together */
					if (f16_row_ranges(row, x, ng, gch, w->lo, w->hi))
						return -EINVAL;
				} else {
					kvcd_to_f32(isa, l->dtype, row, x, hd);
				}
				for (size_t h = 0; (p->rotate & KVCD_XFORM_HADAMARD) && h < heads;
				     h++)
					kvcd_hadamard(isa, x + h * d, (unsigned)d);
				if (rot_kernel) { /* the rotated row, through the row kernel */
					err = kvcd_quant_row_f32(isa, x, ng, gch, ngt, bits,
								 sh[kv].bytes, base + r * ngt * 4,
								 base + t * ngt * 4 + r * rowb);
					if (err)
						return err;
					continue;
				}
				if (p->kind == KVCD_CODEC_FP8) {
					err = fp8_row(isa, &sh[kv], x, heads, r, base);
					if (err)
						return err;
					continue;
				}
				if (!one_pass && kvcd_quant_ranges(isa, x, ng, gch, w->lo, w->hi))
					return -EINVAL;
				err = kvcd_quant_params(isa, w->lo, w->hi, ng, bits, w->par);
				if (err)
					return err;
				if (bits != 8) /* packed from one byte per code */
					kvcd_quant_apply(isa, x, ng, gch, bits, w->par, w->codes);
				for (size_t h = 0; h < heads; h++) {
					uint8_t *u = base + h * sh[kv].bytes;

					memcpy(u + r * ngt * 4, w->par + h * ngt * 2, ngt * 4);
					if (bits ==
					    8) /* a code is a byte: straight into the unit */
						kvcd_quant_apply(isa, x + h * d, ngt, gch, 8,
								 w->par + h * ngt * 2,
								 u + t * ngt * 4 + r * rowb);
					else
						kvcd_pack(w->codes + h * d, d, bits,
							  u + t * ngt * 4 + r * rowb);
				}
			}
		}
	return 0;
}

/* KIVI without the per-token extras (sinks, outliers, scores, sparse values, the virtual
 * token, rotation, rope, params=u8), on f16, whose keys are whole groups: the blocks the fused
 * KIVI encoder and decoder take. */
static bool kivi_plain(const struct kvcd_policy *p, const struct kvcp_layout *l,
		       const struct shape *sh)
{
	if (!kvcd_codec_fused || p->kind != KVCD_CODEC_KIVI || l->dtype != KVCP_F16 || p->rope ||
	    p->rotate || p->params || !p->group)
		return false;
	for (int kv = 0; kv < 2; kv++)
		if (sh[kv].ne || sh[kv].nh || sh[kv].nsp || sh[kv].virt)
			return false;
	return sh[0].nq % p->group == 0 && sh[1].d % sh[1].gch == 0 &&
	       sh[1].d * sh[1].bits % 8 == 0;
}

/* kivi_plain, with AVX-512: whole groups of keys through the per-channel kernel and every
 * value row through the row kernel, straight from staging. */
static bool kivi_fusable(enum kvcd_isa isa, const struct kvcd_policy *p,
			 const struct kvcp_layout *l, const struct shape *sh)
{
	return kivi_plain(p, l, sh) && kvcd_quant_chan_f16_ok(isa, p->group, sh[0].d, sh[0].bits) &&
	       kvcd_quant_row_f16_ok(isa, sh[1].gch, sh[1].bits);
}

/* The units kivi_fusable takes, with the bytes of the unit-by-unit path: each group of G key
 * rows for every head while it is in cache, then the residual keys as they are, then the
 * value rows. */
static int encode_kivi_fused(enum kvcd_isa isa, const struct kvcd_policy *p,
			     const struct kvcp_layout *l, const uint8_t *src,
			     const struct shape *sh, struct work *w, uint8_t *o)
{
	const struct shape *k = &sh[0], *v = &sh[1];
	size_t d = l->head_dim, heads = l->kv_heads, hd = heads * d, t = l->tokens, G = p->group;
	size_t kpar = (size_t)k->nq / G * d * 4;
	size_t kcodes = kvcd_packed_bytes((size_t)k->nq * d, k->bits), rowb = d * v->bits / 8;
	int err;

	for (uint32_t layer = 0; layer < l->layers; layer++) {
		const uint8_t *kin = src + plane_base(l, layer, 0),
			      *vin = src + plane_base(l, layer, 1);
		uint8_t *kbase = o + layer * heads * (k->bytes + v->bytes);
		uint8_t *vbase = kbase + heads * k->bytes;

		for (size_t g = 0; g < k->nq / G; g++)
			for (size_t h = 0; h < heads; h++) {
				uint8_t *u = kbase + h * k->bytes;

				/* the next group's rows read across, one head's slice at a time: the
				 * hardware prefetcher does not follow that pattern */
				for (size_t r = (g + 1) * G; r < (g + 2) * G && r < k->nq; r++)
					for (size_t off = 0; off < d * 2; off += 64)
						__builtin_prefetch(kin + (r * hd + h * d) * 2 +
								   off);
				err = kvcd_quant_chan_f16(isa, kin + (g * G * hd + h * d) * 2,
							  hd * 2, G, d, k->bits, w->plane,
							  u + g * d * 4,
							  u + kpar + g * G * d * k->bits / 8);
				if (err)
					return err;
			}
		for (size_t r = k->nq; r < t; r++) /* the residual keys, exact */
			for (size_t h = 0; h < heads; h++)
				memcpy(kbase + h * k->bytes + kpar + kcodes + (r - k->nq) * d * 2,
				       kin + (r * hd + h * d) * 2, d * 2);
		for (size_t r = 0; r < t; r++) {
			prefetch_ahead(vin, r, t, hd * 2);
			err = kvcd_quant_row_f16(isa, vin + r * hd * 2, heads * v->ngt, v->gch,
						 v->ngt, v->bits, v->bytes, w->plane,
						 vbase + r * v->ngt * 4,
						 vbase + t * v->ngt * 4 + r * rowb);
			if (err)
				return err;
		}
	}
	return 0;
}

/* The units of a block under @p (a codec, not NONE), without the header, to @o. */
static int encode_body(enum kvcd_isa isa, const struct kvcd_policy *p,
		       const struct kvcp_layout *engine, uint32_t pos, const void *src,
		       const float *scores, uint8_t *o)
{
	struct kvcp_layout view = view_of(p, engine), *l = &view;
	struct shape sh[2];
	struct work w;
	int err = 0;

	shape_of(p, l, scores, pos, 0, &sh[0]);
	shape_of(p, l, scores, pos, 1, &sh[1]);
	err = work_init(&w, p, l, sh[0].ne);
	if (err)
		return err;
	/* ranges found during conversion serve the quantizer unless the rows change first */
	w.pre = l->head_dim % sh[0].gch == 0 && !p->rotate && !p->sparse_ppm && !p->rope;
	rope_tables(p, engine, pos, &w);
	w.prs = (size_t)l->kv_heads * (w.pre ? sh[0].ngt : 1);
	for (uint32_t t = 0; t < l->tokens; t++)
		w.order[t] = t;
	if (scores)
		qsort_r(w.order, l->tokens, 4, cmp_score, (void *)scores);
	if (fusable(p, sh))
		return encode_fused(isa, p, l, src, sh, &w, o);
	if (kivi_fusable(isa, p, l, sh))
		return encode_kivi_fused(isa, p, l, src, sh, &w, o);
	/* one (layer, K/V) plane at a time, read in one sequential pass */
	for (uint32_t layer = 0; layer < l->layers && !err; layer++)
		for (int kv = 0; kv < 2 && !err; kv++) {
			err = load_plane(isa, l, (const uint8_t *)src + plane_base(l, layer, kv),
					 &w);
			for (uint32_t head = 0; head < l->kv_heads && !err; head++) {
				struct unit_io u = {
					p, &sh[kv], isa, l->dtype, kv, engine->head_dim
				};

				w.tile = w.plane + (size_t)head * l->head_dim;
				w.ulo = w.plo + (size_t)head * w.prs / l->kv_heads;
				w.uhi = w.phi + (size_t)head * w.prs / l->kv_heads;
				err = encode_unit(&u, &w, w.exact + (size_t)head * sh[0].ne,
						  kv == 0, &o);
			}
		}
	return err;
}

_Static_assert(KVCG_INT == KVCD_CODEC_INT && KVCG_FP8 == KVCD_CODEC_FP8 &&
		       KVCG_KIVI == KVCD_CODEC_KIVI && KVCG_F32 == KVCP_F32 &&
		       KVCG_F16 == KVCP_F16 && KVCG_BF16 == KVCP_BF16,
	       "gpujob.h names the codecs and dtypes by their protocol values");

int kvcd_units_gpu_job(const struct kvcd_policy *p, const struct kvcp_layout *engine, uint32_t pos,
		       bool scores, struct kvcg_job *j)
{
	struct kvcp_layout v = view_of(p, engine);
	struct shape sh[2];

	if (p->kind == KVCD_CODEC_NONE || kvcd_policy_sel(p) || p->rotate || p->rope || p->params ||
	    p->sparse_ppm || p->summary)
		return -ENOTSUP;
	/* the kernels count a unit's items in 32 bits */
	if ((uint64_t)v.tokens * v.head_dim * kvcp_dtype_size(v.dtype) > INT32_MAX)
		return -ENOTSUP;
	memset(j, 0, sizeof(*j));
	for (int kv = 0; kv < 2; kv++) {
		struct shape *s = &sh[kv];
		struct kvcg_unit *u = &j->u[kv];

		shape_of(p, &v, scores && p->hibits, pos, kv, s);
		if (s->ne || s->nh || s->nsp)
			return -ENOTSUP;
		u->bytes = s->bytes;
		u->nq = s->nq;
		u->nres = s->nres;
		u->per_channel = s->per_channel;
		/* a group's codes start and end on byte boundaries, its last one's too */
		u->one_pass = !s->per_channel &&
			      (p->kind == KVCD_CODEC_FP8 ||
			       (s->gch * s->bits % 8 == 0 && s->d * s->bits % 8 == 0));
		u->bits = p->kind == KVCD_CODEC_FP8 ? 8 : s->bits;
		if (p->kind == KVCD_CODEC_FP8) {
			u->nparams = s->nq * s->ngt;
			u->codes_at = (uint64_t)u->nparams * 2;
			u->code_bytes = (uint64_t)s->nq * s->d;
		} else {
			u->nparams = s->per_channel ? (s->nq + p->group - 1) / p->group * s->d
						    : s->nq * s->ngt;
			u->codes_at = (uint64_t)u->nparams * 4;
			u->code_bytes = kvcd_packed_bytes((size_t)s->nq * s->d, s->bits);
		}
		u->res_at = u->codes_at + u->code_bytes;
	}
	j->kind = p->kind;
	j->dtype = v.dtype;
	j->es = sh[0].es;
	j->layers = v.layers;
	j->heads = v.kv_heads;
	j->tokens = v.tokens;
	j->hd = v.head_dim;
	j->gch = sh[0].gch;
	j->ngt = sh[0].ngt;
	j->G = p->group;
	j->body = sizeof(struct kvcd_codec_hdr);
	j->bytes = size_of_view(p, &v, scores && p->hibits, pos);
	j->raw_bytes = kvcp_layout_bytes(engine);
	return 0;
}

uint64_t kvcd_units_size(const struct kvcd_policy *p, const struct kvcp_layout *l, bool scores,
			 uint32_t pos)
{
	struct kvcp_layout v;

	if (p->kind == KVCD_CODEC_NONE)
		return kvcp_layout_bytes(l);
	v = view_of(p, l);
	return size_of_view(p, &v, scores && p->hibits, pos) - sizeof(struct kvcd_codec_hdr);
}

int kvcd_units_encode(enum kvcd_isa isa, const struct kvcd_policy *p, const struct kvcp_layout *l,
		      uint32_t pos, const void *src, const float *scores, void *dst)
{
	if (p->kind == KVCD_CODEC_NONE) {
		memcpy(dst, src, kvcp_layout_bytes(l));
		return 0;
	}
	return encode_body(isa, p, l, pos, src, p->hibits ? scores : NULL, dst);
}

/* Decoded blocks at least this large are written around the caches: the engine reads them
 * later, by which time they would have left the caches anyway, and streaming stores save
 * reading each destination line before it is overwritten. Smaller ones stay cached for it. */
#define KVCD_STREAM_MIN (4u << 20)

/* Row @r of the per-token int units at @base (head h's @ustride bytes on; @t rows of @ngt
 * groups of @gch codes at @bits), every head's values as floats into @x: unpacked, then
 * dequantized group by group. */
static void dequant_int_row(enum kvcd_isa isa, const uint8_t *base, size_t ustride, size_t t,
			    size_t r, size_t heads, size_t d, size_t ngt, size_t gch, unsigned bits,
			    struct work *w, float *x)
{
	size_t rowb = d * bits / 8;

	for (size_t h = 0; h < heads; h++) {
		const uint8_t *u = base + h * ustride;

		memcpy(w->par, u + r * ngt * 4, ngt * 4);
		kvcd_unpack(u + t * ngt * 4 + r * rowb, d, bits, w->codes);
		for (size_t g = 0; g < ngt; g++)
			kvcd_dequant_group(isa, w->codes + g * gch, gch, w->par[2 * g],
					   w->par[2 * g + 1], x + h * d + g * gch);
	}
}

/* The inverse of encode_fused(), for what it writes: row by row, each head's codes and
 * parameters dequantized into an L1 buffer and the row converted straight into the engine's
 * layout, where the unit-by-unit path fills a whole f32 plane first. The same bytes out. */
static void decode_fused(enum kvcd_isa isa, const struct kvcd_policy *p,
			 const struct kvcp_layout *l, const uint8_t *in, const struct shape *sh,
			 struct work *w, uint8_t *dst)
{
	size_t d = l->head_dim, heads = l->kv_heads, hd = heads * d, es = kvcp_dtype_size(l->dtype);
	size_t ngt = sh[0].ngt, gch = sh[0].gch, t = l->tokens;
	float *x = w->plane;
	bool stream = kvcp_layout_bytes(l) >= KVCD_STREAM_MIN, streamed = false;

	for (uint32_t layer = 0; layer < l->layers; layer++)
		for (int kv = 0; kv < 2; kv++) {
			const uint8_t *base = in + layer * heads * (sh[0].bytes + sh[1].bytes) +
					      kv * heads * sh[0].bytes;
			uint8_t *out = dst + plane_base(l, layer, kv);
			unsigned bits = sh[kv].bits;
			size_t rowb = d * bits / 8;

			/* f16 rows at 8 or 4 bits: straight out of one kernel */
			bool row_kernel = p->kind == KVCD_CODEC_INT && !p->rotate &&
					  l->dtype == KVCP_F16 &&
					  kvcd_quant_row_f16_ok(isa, gch, bits);

			for (size_t r = 0; r < t; r++) {
				uint8_t *row = out + r * hd * es;
				bool nt = stream && (uintptr_t)row % 32 == 0;

				if (row_kernel &&
				    kvcd_dequant_row_f16(isa, base + r * ngt * 4,
							 base + t * ngt * 4 + r * rowb, heads * ngt,
							 gch, ngt, bits, sh[kv].bytes,
							 (uint16_t *)row, nt)) {
					streamed |= nt;
					continue;
				}
				for (size_t h = 0; h < heads && p->kind == KVCD_CODEC_FP8; h++) {
					const uint8_t *u = base + h * sh[kv].bytes;
					const uint8_t *codes = u + t * ngt * 2 + r * d;

					for (size_t g = 0; g < ngt; g++) {
						size_t c0 = g * gch,
						       len = d - c0 < gch ? d - c0 : gch;
						uint16_t sc;

						memcpy(&sc, u + (r * ngt + g) * 2, 2);
						e4m3_scale(isa, w->e4m3, codes + c0, len,
							   kvcd_f16_to_f32(sc), x + h * d + c0);
					}
					if (p->rotate & KVCD_XFORM_HADAMARD)
						kvcd_hadamard(isa, x + h * d, (unsigned)d);
				}
				if (p->kind == KVCD_CODEC_INT) {
					dequant_int_row(isa, base, sh[kv].bytes, t, r, heads, d,
							ngt, gch, bits, w, x);
					/* the rotation undone, as it was done */
					for (size_t h = 0;
					     (p->rotate & KVCD_XFORM_HADAMARD) && h < heads; h++)
						kvcd_hadamard(isa, x + h * d, (unsigned)d);
				}
				if (stream)
					streamed |= kvcd_from_f32_stream(isa, l->dtype, x,
									 out + r * hd * es, hd);
				else
					kvcd_from_f32(isa, l->dtype, x, out + r * hd * es, hd);
			}
		}
	if (streamed) /* non-temporal stores are weakly ordered: done before the caller publishes */
		_mm_sfence();
}

/* kivi_plain, whose keys come in 16s of tokens and channels, with AVX-512 for their
 * transposition (the blocks encode_kivi_fused writes among them): each group of key rows for
 * every head straight to f16 rows, the residual keys copied, each value row dequantized and
 * out. The same bytes as the unit-by-unit path. */
static bool kivi_decodable(enum kvcd_isa isa, const struct kvcd_policy *p,
			   const struct kvcp_layout *l, const struct shape *sh)
{
	return kivi_plain(p, l, sh) && p->group % 16 == 0 && sh[0].d % 16 == 0 && sh[0].d <= 1024 &&
	       kvcd_isa_clamp(isa) >= KVCD_ISA_AVX512 && kvcd_has_f16c();
}

static void decode_kivi_fused(enum kvcd_isa isa, const struct kvcd_policy *p,
			      const struct kvcp_layout *l, const uint8_t *in,
			      const struct shape *sh, struct work *w, uint8_t *dst)
{
	const struct shape *k = &sh[0], *v = &sh[1];
	size_t d = l->head_dim, heads = l->kv_heads, hd = heads * d, t = l->tokens, G = p->group;
	size_t kpar = (size_t)k->nq / G * d * 4,
	       kcodes = kvcd_packed_bytes((size_t)k->nq * d, k->bits);
	size_t ngt = v->ngt, gch = v->gch, rowb = d * v->bits / 8;
	/* f16 straight out of the kernels; the value rows streamed as decode_body streams */
	bool nt = kvcp_layout_bytes(l) >= KVCD_STREAM_MIN && (uintptr_t)dst % 32 == 0;
	bool vrow = kvcd_quant_row_f16_ok(isa, gch, v->bits);
	float *x = w->plane;

	for (uint32_t layer = 0; layer < l->layers; layer++) {
		const uint8_t *kbase = in + layer * heads * (k->bytes + v->bytes);
		const uint8_t *vbase = kbase + heads * k->bytes;
		uint8_t *kout = dst + plane_base(l, layer, 0),
			*vout = dst + plane_base(l, layer, 1);

		for (size_t g = 0; g < k->nq / G; g++)
			for (size_t h = 0; h < heads; h++) {
				const uint8_t *u = kbase + h * k->bytes;

				memcpy(w->par, u + g * d * 4, d * 4);
				kvcd_unpack(u + kpar + g * G * d * k->bits / 8, G * d, k->bits,
					    w->codes);
				/* not streamed: it writes 32 bytes at a time, rows apart, and
				 * streamed half lines would go out one by one */
				kvcd_dequant_rows_f16(isa, w->codes, d, G, w->par,
						      (uint16_t *)(kout + (g * G * hd + h * d) * 2),
						      hd, false);
			}
		for (size_t r = k->nq; r < t; r++) /* the residual keys, as they are */
			for (size_t h = 0; h < heads; h++)
				memcpy(kout + (r * hd + h * d) * 2,
				       kbase + h * k->bytes + kpar + kcodes + (r - k->nq) * d * 2,
				       d * 2);
		for (size_t r = 0; r < t; r++) {
			uint8_t *row = vout + r * hd * 2;

			if (vrow &&
			    kvcd_dequant_row_f16(isa, vbase + r * ngt * 4,
						 vbase + t * ngt * 4 + r * rowb, heads * ngt, gch,
						 ngt, v->bits, v->bytes, (uint16_t *)row, nt))
				continue;
			dequant_int_row(isa, vbase, v->bytes, t, r, heads, d, ngt, gch, v->bits, w,
					x);
			if (nt)
				kvcd_from_f32_stream(isa, l->dtype, x, row, hd);
			else
				kvcd_from_f32(isa, l->dtype, x, row, hd);
		}
	}
	if (nt) /* non-temporal stores are weakly ordered: done before the caller publishes */
		_mm_sfence();
}

/* Decode the units of a block under @p (a codec, not NONE) from @in, whose size the caller
 * has checked against kvcd_units_size(), into @dst (layout @engine). */
static int decode_body(enum kvcd_isa isa, const struct kvcd_policy *p,
		       const struct kvcp_layout *engine, uint32_t pos, bool scores,
		       const uint8_t *in, void *dst)
{
	struct kvcp_layout v = view_of(p, engine);
	struct shape sh[2];
	struct work w;
	bool stream = kvcp_layout_bytes(engine) >= KVCD_STREAM_MIN, streamed = false;
	int err = 0;

	shape_of(p, &v, scores, pos, 0, &sh[0]);
	shape_of(p, &v, scores, pos, 1, &sh[1]);
	err = work_init(&w, p, &v, sh[0].ne);
	if (err)
		return err;
	rope_tables(p, engine, pos, &w);
	w.e4m3 = p->kind == KVCD_CODEC_FP8 ? kvcd_e4m3_lut() : NULL;
	if (fusable(p, sh)) {
		decode_fused(isa, p, &v, in, sh, &w, dst);
		return 0;
	}
	if (kivi_decodable(isa, p, &v, sh)) {
		decode_kivi_fused(isa, p, &v, in, sh, &w, dst);
		return 0;
	}
	for (uint32_t layer = 0; layer < v.layers && !err; layer++)
		for (int kv = 0; kv < 2 && !err; kv++) {
			for (uint32_t head = 0; head < v.kv_heads && !err; head++) {
				struct unit_io u = {
					p, &sh[kv], isa, v.dtype, kv, engine->head_dim
				};

				w.tile = w.plane + (size_t)head * v.head_dim;
				err = decode_unit(&u, &w, &in);
			}
			if (!err && stream) /* the whole plane out in one sequential pass */
				streamed |= kvcd_from_f32_stream(isa, v.dtype, w.plane,
								 (uint8_t *)dst +
									 plane_base(&v, layer, kv),
								 (size_t)v.tokens * w.ts);
			else if (!err)
				kvcd_from_f32(isa, v.dtype, w.plane,
					      (uint8_t *)dst + plane_base(&v, layer, kv),
					      (size_t)v.tokens * w.ts);
		}
	if (streamed)
		_mm_sfence();
	return err;
}

int kvcd_units_decode(enum kvcd_isa isa, const struct kvcd_policy *p, const struct kvcp_layout *l,
		      uint32_t pos, bool scores, const void *in, void *dst)
{
	if (p->kind == KVCD_CODEC_NONE) {
		memcpy(dst, in, kvcp_layout_bytes(l));
		return 0;
	}
	return decode_body(isa, p, l, pos, scores && p->hibits, in, dst);
}

/* Read and check the header of an encoded block of @n bytes. */
