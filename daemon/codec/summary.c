/* summary.c - the SELECT summary kept after a block's bytes (Quest's channel bounds, or
 * representative keys in f16 or int8) and the scoring of a block from it for a query.
 * Built once per STORE from the engine's keys; read by SELECT with the query prepared once
 * (kvcd_query_init). Each kernel has a scalar reference and AVX2 / AVX-512 (VNNI) variants
 * that unit_summary checks against it. */
#include <immintrin.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

void kvcd_quest_minmax(const float *keys, uint32_t stride, uint32_t t, uint32_t d, float *mn,
		       float *mx)
{
	for (uint32_t c = 0; c < d; c++) {
		mn[c] = INFINITY;
		mx[c] = -INFINITY;
	}
	for (uint32_t k = 0; k < t; k++)
		for (uint32_t c = 0; c < d; c++) {
			float v = keys[(size_t)k * stride + c];

			mn[c] = v < mn[c] ? v : mn[c];
			mx[c] = v > mx[c] ? v : mx[c];
		}
}

float kvcd_quest_bound(const float *q, const float *mn, const float *mx, uint32_t d)
{
	double s = 0.0;
	float f;

	for (uint32_t c = 0; c < d; c++) {
		double a = (double)q[c] * mn[c], b = (double)q[c] * mx[c];

		s += a > b ? a : b;
	}
	f = (float)s;
	return (double)f < s ? nextafterf(f, INFINITY) : f; /* a bound: round up */
}

uint32_t kvcd_quest_pages(const struct kvcp_layout *l, uint32_t page)
{
	return (l->tokens + page - 1) / page;
}

size_t kvcd_quest_bytes(const struct kvcp_layout *l, uint32_t page)
{
	return (size_t)l->layers * l->kv_heads * kvcd_quest_pages(l, page) * 2 * l->head_dim * 2;
}

/* f16 nearest to @x on the side of @up (toward +inf) or not (toward -inf). */
static uint16_t f16_toward(float x, bool up)
{
	uint16_t h = kvcd_f32_to_f16(x);
	float y = kvcd_f16_to_f32(h);

	if (up ? y >= x : y <= x)
		return h;
	if (up) /* one step toward +inf */
		return h == 0x8000 ? 0x0001 : (h & 0x8000) ? (uint16_t)(h - 1) : (uint16_t)(h + 1);
	return h == 0x0000 ? 0x8001 : (h & 0x8000) ? (uint16_t)(h + 1) : (uint16_t)(h - 1);
}

/* Channel-wise min and max of @rows f16 rows of @hd values (a multiple of 8), 64 channels at
 * a time held in registers. */
__attribute__((target("avx2,f16c"))) static void minmax_f16_avx2(const uint16_t *k, size_t rows,
								 size_t hd, float *mn, float *mx)
{
	size_t c0 = 0;

	for (; c0 + 64 <= hd; c0 += 64) {
		__m256 lo[8], hi[8];

		for (int j = 0; j < 8; j++) {
			lo[j] = _mm256_set1_ps(INFINITY);
			hi[j] = _mm256_set1_ps(-INFINITY);
		}
		for (size_t t = 0; t < rows; t++)
			for (int j = 0; j < 8; j++) {
				__m256 v = _mm256_cvtph_ps(_mm_loadu_si128(
					(const __m128i *)(k + t * hd + c0 + 8 * j)));

				lo[j] = _mm256_min_ps(v, lo[j]);
				hi[j] = _mm256_max_ps(v, hi[j]);
			}
		for (int j = 0; j < 8; j++) {
			_mm256_storeu_ps(mn + c0 + 8 * j, lo[j]);
			_mm256_storeu_ps(mx + c0 + 8 * j, hi[j]);
		}
	}
	for (; c0 < hd; c0 += 8) {
		__m256 lo = _mm256_set1_ps(INFINITY), hi = _mm256_set1_ps(-INFINITY);

		for (size_t t = 0; t < rows; t++) {
			__m256 v = _mm256_cvtph_ps(
				_mm_loadu_si128((const __m128i *)(k + t * hd + c0)));

			lo = _mm256_min_ps(v, lo);
			hi = _mm256_max_ps(v, hi);
		}
		_mm256_storeu_ps(mn + c0, lo);
		_mm256_storeu_ps(mx + c0, hi);
	}
}

int kvcd_quest_block(enum kvcd_isa isa, const struct kvcp_layout *l, uint32_t page,
		     const void *block, uint16_t *out)
{
	size_t hd = (size_t)l->kv_heads * l->head_dim, es = kvcp_dtype_size(l->dtype);
	size_t plane = hd * l->tokens * es, np = kvcd_quest_pages(l, page);
	float *mn = malloc((hd * 2 + (size_t)page * hd) * sizeof(float)), *mx = mn + hd;
	float *rows_f = mx + hd;
	bool fast = isa != KVCD_ISA_SCALAR && l->dtype == KVCP_F16 && hd % 8 == 0 &&
		    kvcd_has_f16c();

	if (!mn)
		return -ENOMEM;
	for (uint32_t ly = 0; ly < l->layers; ly++)
		for (size_t pg = 0; pg < np; pg++) {
			const uint8_t *k = (const uint8_t *)block + (size_t)ly * 2 * plane +
					   pg * page * hd * es;
			size_t rows = l->tokens - pg * page < page ? l->tokens - pg * page : page;

			if (fast) {
				minmax_f16_avx2((const uint16_t *)k, rows, hd, mn, mx);
			} else { /* the page through f32, every head's channels at once */
				kvcd_to_f32(isa, l->dtype, k, rows_f, rows * hd);
				kvcd_quest_minmax(rows_f, (uint32_t)hd, (uint32_t)rows,
						  (uint32_t)hd, mn, mx);
			}
			for (uint32_t h = 0; h < l->kv_heads; h++) {
				uint16_t *o = out + (((size_t)ly * l->kv_heads + h) * np + pg) * 2 *
							    l->head_dim;

				for (uint32_t c = 0; c < l->head_dim; c++) {
					o[c] = f16_toward(mn[h * l->head_dim + c], false);
					o[l->head_dim + c] = f16_toward(mx[h * l->head_dim + c],
									true);
				}
			}
		}
	free(mn);
	return 0;
}

void kvcd_quest_prep(const float *q, uint32_t n, float *pos, float *neg)
{
	for (uint32_t i = 0; i < n; i++) {
		pos[i] = q[i] > 0 ? q[i] : 0.0f;
		neg[i] = q[i] < 0 ? q[i] : 0.0f;
	}
}

/* sum_c pos_c mx_c + neg_c mn_c for @g queries of @d channels against one page's bounds
 * (f16 [min d][max d]), the largest into *@best; *@mag: the largest |bound value|. Each bound
 * is converted once and serves up to 8 queries held in registers. */
__attribute__((target("avx2,f16c,fma"))) static void page_avx2(const uint16_t *b, uint32_t d,
							       const float *pos, const float *neg,
							       uint32_t g, float *best, float *mag)
{
	__m256 m = _mm256_setzero_ps(), sign = _mm256_set1_ps(-0.0f);

	for (uint32_t j0 = 0; j0 < g; j0 += 8) {
		uint32_t gn = g - j0 < 8 ? g - j0 : 8;
		__m256 acc[8];

		for (uint32_t j = 0; j < 8; j++)
			acc[j] = _mm256_setzero_ps();
		for (uint32_t c = 0; c < d; c += 8) {
			__m256 lo = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(b + c)));
			__m256 hi = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(b + d + c)));

			if (!j0)
				m = _mm256_max_ps(m, _mm256_max_ps(_mm256_andnot_ps(sign, lo),
								   _mm256_andnot_ps(sign, hi)));
			for (uint32_t j = 0; j < gn; j++) {
				size_t o = (size_t)(j0 + j) * d + c;

				acc[j] = _mm256_fmadd_ps(_mm256_loadu_ps(pos + o), hi, acc[j]);
				acc[j] = _mm256_fmadd_ps(_mm256_loadu_ps(neg + o), lo, acc[j]);
			}
		}
		for (uint32_t j = 0; j < gn; j++) {
			__m128 s4 = _mm_add_ps(_mm256_castps256_ps128(acc[j]),
					       _mm256_extractf128_ps(acc[j], 1));
			float v;

			s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
			s4 = _mm_add_ss(s4, _mm_movehdup_ps(s4));
			v = _mm_cvtss_f32(s4);
			v = v != v ? INFINITY : v; /* 0 x inf: a bound past f16 bounds nothing */
			*best = v > *best ? v : *best;
		}
	}
	__m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
	m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
	m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
	*mag = _mm_cvtss_f32(m4);
}

/* The same sixteen channels at a time (head_dim a multiple of 16). */
__attribute__((target("avx512f"))) static void page_avx512(const uint16_t *b, uint32_t d,
							   const float *pos, const float *neg,
							   uint32_t g, float *best, float *mag)
{
	__m512 m = _mm512_setzero_ps();

	for (uint32_t j0 = 0; j0 < g; j0 += 8) {
		uint32_t gn = g - j0 < 8 ? g - j0 : 8;
		__m512 acc[8];

		for (uint32_t j = 0; j < 8; j++)
			acc[j] = _mm512_setzero_ps();
		for (uint32_t c = 0; c < d; c += 16) {
			__m512 lo = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(b + c)));
			__m512 hi =
				_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(b + d + c)));

			if (!j0)
				m = _mm512_max_ps(
					m, _mm512_max_ps(_mm512_abs_ps(lo), _mm512_abs_ps(hi)));
			for (uint32_t j = 0; j < gn; j++) {
				size_t o = (size_t)(j0 + j) * d + c;

				acc[j] = _mm512_fmadd_ps(_mm512_loadu_ps(pos + o), hi, acc[j]);
				acc[j] = _mm512_fmadd_ps(_mm512_loadu_ps(neg + o), lo, acc[j]);
			}
		}
		for (uint32_t j = 0; j < gn; j++) {
			float v = _mm512_reduce_add_ps(acc[j]);

			v = v != v ? INFINITY : v; /* 0 x inf: a bound past f16 bounds nothing */
			*best = v > *best ? v : *best;
		}
	}
	*mag = _mm512_reduce_max_ps(m);
}

static void page_scalar(const uint16_t *b, uint32_t d, const float *pos, const float *neg,
			uint32_t g, float *best, float *mag)
{
	*mag = 0.0f;
	for (uint32_t c = 0; c < 2 * d; c++) {
		float v = fabsf(kvcd_f16_to_f32(b[c]));

		*mag = v > *mag ? v : *mag;
	}
	for (uint32_t j = 0; j < g; j++) {
		float acc = 0.0f;

		for (uint32_t c = 0; c < d; c++)
			acc += pos[(size_t)j * d + c] * kvcd_f16_to_f32(b[d + c]) +
			       neg[(size_t)j * d + c] * kvcd_f16_to_f32(b[c]);
		acc = acc != acc ? INFINITY : acc; /* 0 x inf: a bound past f16 bounds nothing */
		*best = acc > *best ? acc : *best;
	}
}

float kvcd_quest_score(enum kvcd_isa isa, const struct kvcp_layout *l, uint32_t page,
		       const uint16_t *bounds, uint32_t layer, const float *pos, const float *neg,
		       float l1, uint32_t q_heads)
{
	uint32_t d = l->head_dim, g = q_heads / l->kv_heads, np = kvcd_quest_pages(l, page);
	bool fast = isa != KVCD_ISA_SCALAR && d % 8 == 0 && kvcd_has_f16c();
	bool wide = isa >= KVCD_ISA_AVX512 && d % 16 == 0;
	float best = -INFINITY, mag = 0.0f;

	for (uint32_t h = 0; h < l->kv_heads; h++) {
		const uint16_t *b = bounds + ((size_t)layer * l->kv_heads + h) * np * 2 * d;

		for (uint32_t pg = 0; pg < np; pg++, b += 2 * d) {
			float m;

			if (wide)
				page_avx512(b, d, pos + (size_t)h * g * d, neg + (size_t)h * g * d,
					    g, &best, &m);
			else if (fast)
				page_avx2(b, d, pos + (size_t)h * g * d, neg + (size_t)h * g * d, g,
					  &best, &m);
			else
				page_scalar(b, d, pos + (size_t)h * g * d, neg + (size_t)h * g * d,
					    g, &best, &m);
			mag = m > mag ? m : mag;
		}
	}
	/* float sums of 2d products err by at most (2d + 1) 2^-24 of sum |terms| <= l1 * mag:
	 * add that, then scale rounding up, so the result stays a bound */
	double r = ((double)best + (2.0 * d + 2) * 0x1p-24 * (double)l1 * mag) / sqrt((double)d);
	float f = (float)r;

	return (double)f < r ? nextafterf(f, INFINITY) : f;
}

/* ---- summaries ---------------------------------------------------------------------------- */

/* REPS8, per layer: for each KV head, its n = pages x reps keys padded to n4 (a multiple of
 * 4, the last key repeated), their channels to dp (a multiple of 4, zeros), in int8
 * interleaved for VNNI: [n4 / 4 key groups][dp / 4 channel groups][4 keys][4 channels], so
 * that 64 bytes are four channel groups of four keys. Then each key's f32 scale
 * [kv_heads][n4], and the int32 sum of its int8 values [kv_heads][n4] (vpdpbusd's unsigned
 * operand adds 128 x that sum, which is taken back off). The keys of every head start
 * 64-byte aligned when n4 x dp is a multiple of 64 (KVCD_BOUNDS_AT aligns the first). */
static inline uint32_t up4(uint32_t v)
{
	return (v + 3) & ~3u;
}

static inline size_t r8_at(uint32_t i, uint32_t c, uint32_t dp)
{
	return ((size_t)(i >> 2) * dp + (c & ~3u)) * 4 + (i & 3) * 4 + (c & 3);
}

static inline size_t r8_head_bytes(size_t n, uint32_t d)
{
	size_t n4 = (n + 3) & ~(size_t)3;

	return n4 * up4(d) + n4 * (sizeof(float) + sizeof(int32_t));
}

size_t kvcd_summary_bytes(const struct kvcp_layout *l, const struct kvcd_summary *s)
{
	size_t rows = (size_t)l->layers * l->kv_heads * kvcd_quest_pages(l, s->page);

	if (s->kind == KVCD_SUMMARY_REPS8)
		return sizeof(*s) +
		       (size_t)l->layers * l->kv_heads *
			       r8_head_bytes(kvcd_quest_pages(l, s->page) * s->reps, l->head_dim);
	return sizeof(*s) + rows * (s->kind == KVCD_SUMMARY_REPS ? s->reps : 2) * l->head_dim * 2;
}

/* Key @i of KV head @h of a REPS8 layer at @ly (@kv heads): @q8 (int8, @d channels) with
 * scale @sc, into its places. */
static void r8_put(uint8_t *ly, uint32_t kv, uint32_t h, size_t n4, uint32_t d, uint32_t i,
		   const int8_t *q8, float sc)
{
	uint32_t dp = up4(d);
	uint8_t *sums = ly + kv * n4 * (dp + sizeof(float));
	int32_t sum = 0;

	for (uint32_t c = 0; c < dp; c++) {
		int8_t v = c < d ? q8[c] : 0;

		ly[h * n4 * dp + r8_at(i, c, dp)] = (uint8_t)v;
		sum += v;
	}
	memcpy(ly + kv * n4 * dp + (h * n4 + i) * sizeof(float), &sc, sizeof(sc));
	memcpy(sums + (h * n4 + i) * sizeof(sum), &sum, sizeof(sum));
}

/* Representative keys: per (layer, head, page) the @reps keys of largest norm, a page shorter
 * than reps repeating its best. REPS: f16 [layers][kv_heads][pages][reps][head_dim]. REPS8:
 * per (layer, head) as r8_at() lays them out, key pg x reps + i, padded with the last. */
static int reps_make(enum kvcd_isa isa, const struct kvcp_layout *l, const struct kvcd_summary *s,
		     const void *block, void *out)
{
	size_t hd = (size_t)l->kv_heads * l->head_dim, es = kvcp_dtype_size(l->dtype);
	uint32_t page = s->page, reps = s->reps, d = l->head_dim, dp = up4(d);
	size_t plane = hd * l->tokens * es, np = kvcd_quest_pages(l, page), n = np * reps;
	size_t n4 = (n + 3) & ~(size_t)3, per8 = r8_head_bytes(n, d);
	float *row = malloc((hd * page + (size_t)page * 3) * sizeof(float) + d),
	      *nrm = row + hd * page;
	uint32_t *keep = (uint32_t *)(nrm + page), *tmp = keep + page;
	int8_t *q8 = (int8_t *)(tmp + page);

	if (!row)
		return -ENOMEM;
	for (uint32_t ly = 0; ly < l->layers; ly++) {
		for (size_t pg = 0; pg < np; pg++) {
			const uint8_t *k = (const uint8_t *)block + (size_t)ly * 2 * plane +
					   pg * page * hd * es;
			uint32_t rows = (uint32_t)(l->tokens - pg * page < page
							   ? l->tokens - pg * page
							   : page),
				 m;

			kvcd_to_f32(isa, l->dtype, k, row, rows * hd);
			for (uint32_t h = 0; h < l->kv_heads; h++) {
				size_t lh = (size_t)ly * l->kv_heads + h;

				/* largest norm first: key-norm scores are -||k||, flipped */
				kvcd_score_keynorm(row + h * d, (uint32_t)hd, rows, d, nrm);
				for (uint32_t t = 0; t < rows; t++)
					nrm[t] = -nrm[t];
				m = kvcd_select_keep(nrm, rows, reps, 0, 0, tmp, keep);
				for (uint32_t i = 0; i < reps; i++) { /* a short page repeats one */
					const float *x = row + keep[i < m ? i : 0] * hd + h * d;
					size_t r = pg * reps + i;

					if (s->kind == KVCD_SUMMARY_REPS) {
						kvcd_from_f32(isa, KVCP_F16, x,
							      (uint16_t *)out + (lh * n + r) * d,
							      d);
						continue;
					}
					r8_put((uint8_t *)out + (size_t)ly * l->kv_heads * per8,
					       l->kv_heads, h, n4, d, (uint32_t)r, q8,
					       kvcd_to_i8(x, d, q8));
				}
			}
		}
		for (uint32_t h = 0; s->kind == KVCD_SUMMARY_REPS8 && h < l->kv_heads; h++) {
			uint8_t *o8 = (uint8_t *)out + (size_t)ly * l->kv_heads * per8;
			float sc;

			for (uint32_t c = 0; c < d; c++) /* key n - 1 back in a row */
				q8[c] = (int8_t)o8[h * n4 * dp + r8_at((uint32_t)n - 1, c, dp)];
			memcpy(&sc, o8 + l->kv_heads * n4 * dp + (h * n4 + n - 1) * sizeof(sc),
			       sizeof(sc));
			for (size_t r = n; r < n4; r++)
				r8_put(o8, l->kv_heads, h, n4, d, (uint32_t)r, q8, sc);
		}
	}
	free(row);
	return 0;
}

int kvcd_summary_make(enum kvcd_isa isa, const struct kvcp_layout *l, const struct kvcd_summary *s,
		      const void *block, void *out)
{
	uint16_t *data = (uint16_t *)((uint8_t *)out + sizeof(*s));

	memcpy(out, s, sizeof(*s));
	if (s->kind == KVCD_SUMMARY_REPS || s->kind == KVCD_SUMMARY_REPS8)
		return reps_make(isa, l, s, block, data);
	return kvcd_quest_block(isa, l, s->page, block, data);
}

/* ---- representative-key scores --------------------------------------------------------------
 * The best (scale times) q.k over @n key rows (f16, or int8 with @sc per row) and @g queries
 * of @d channels. A tile of KN keys by JN queries is held in registers, so each key is
 * converted once per JN queries and each query loaded once per KN keys; rows past the end
 * repeat the last one, which a maximum does not notice. Each ISA and key type is its own
 * function, unrolled, so the accumulators stay in registers. */

#define REPS_TILE(ISA, VEC, NAME, W, ZERO, LOADQ, KEY, FMA, SUM)                                     \
	__attribute__((target(ISA), always_inline)) static inline float NAME##_tile(                 \
		const void *k, const float *sc, uint32_t n, uint32_t r, uint32_t d,                  \
		const struct kvcd_query *x, uint32_t q0, uint32_t g, uint32_t j0,                    \
		const uint32_t kn, const uint32_t jn)                                                \
	{                                                                                            \
		VEC acc[4][4];                                                                       \
		size_t kr[4], qi[4];                                                                 \
		float best = -INFINITY;                                                              \
                                                                                                     \
		_Pragma("GCC unroll 4") for (uint32_t i = 0; i < kn; i++)                            \
			kr[i] = (size_t)(r + i < n ? r + i : n - 1);                                 \
		_Pragma("GCC unroll 4") for (uint32_t j = 0; j < jn; j++)                            \
			qi[j] = q0 + (j0 + j < g ? j0 + j : g - 1);                                  \
		_Pragma("GCC unroll 4") for (uint32_t i = 0; i < kn; i++)                            \
			_Pragma("GCC unroll 4") for (uint32_t j = 0; j < jn; j++)                    \
				acc[i][j] = ZERO;                                                    \
		for (uint32_t c = 0; c < d; c += W) {                                                \
			VEC kv[4];                                                                   \
                                                                                                     \
			_Pragma("GCC unroll 4") for (uint32_t i = 0; i < kn; i++)                    \
				kv[i] = KEY(k, kr[i] * d + c);                                       \
			_Pragma("GCC unroll 4") for (uint32_t j = 0; j < jn; j++)                    \
			{                                                                            \
				VEC qv = LOADQ(x, qi[j] * d + c);                                    \
                                                                                                     \
				_Pragma("GCC unroll 4") for (uint32_t i = 0; i < kn; i++)            \
					acc[i][j] = FMA(qv, kv[i], acc[i][j]);                       \
			}                                                                            \
		}                                                                                    \
		_Pragma("GCC unroll 4") for (uint32_t i = 0; i < kn; i++)                            \
		{                                                                                    \
			float s = sc ? sc[kr[i]] : 1.0f;                                             \
                                                                                                     \
			_Pragma("GCC unroll 4") for (uint32_t j = 0; j < jn; j++)                    \
			{                                                                            \
				float v = s * SUM(acc[i][j]);                                        \
                                                                                                     \
				best = v > best ? v : best;                                          \
			}                                                                            \
		}                                                                                    \
		return best;                                                                         \
	}                                                                                            \
                                                                                                     \
	__attribute__((target(ISA))) static float NAME(const void *k, const float *sc, uint32_t n,   \
						       uint32_t d, const struct kvcd_query *x,       \
						       uint32_t q0, uint32_t g)                      \
	{                                                                                            \
		uint32_t kn = n >= 4 ? 4 : n >= 2 ? 2 : 1, jn = g >= 4 ? 4 : g >= 2 ? 2 : 1;         \
		float best = -INFINITY;                                                              \
                                                                                                     \
		for (uint32_t r = 0; r < n; r += kn)                                                 \
			for (uint32_t j0 = 0; j0 < g; j0 += jn) {                                    \
				float v;                                                             \
                                                                                                     \
				if (kn == 4)                                                         \
					v = jn == 4   ? NAME##_tile(k, sc, n, r, d, x, q0, g, j0, 4, \
								    4)                               \
					    : jn == 2 ? NAME##_tile(k, sc, n, r, d, x, q0, g, j0,    \
								    4, 2)                            \
						      : NAME##_tile(k, sc, n, r, d, x, q0, g, j0,    \
								    4, 1);                           \
				else if (kn == 2)                                                    \
					v = jn == 4   ? NAME##_tile(k, sc, n, r, d, x, q0, g, j0, 2, \
								    4)                               \
					    : jn == 2 ? NAME##_tile(k, sc, n, r, d, x, q0, g, j0,    \
								    2, 2)                            \
						      : NAME##_tile(k, sc, n, r, d, x, q0, g, j0,    \
								    2, 1);                           \
				else                                                                 \
					v = jn == 4   ? NAME##_tile(k, sc, n, r, d, x, q0, g, j0, 1, \
								    4)                               \
					    : jn == 2 ? NAME##_tile(k, sc, n, r, d, x, q0, g, j0,    \
								    1, 2)                            \
						      : NAME##_tile(k, sc, n, r, d, x, q0, g, j0,    \
								    1, 1);                           \
				best = v > best ? v : best;                                          \
			}                                                                            \
		return best;                                                                         \
	}

/* Loads of 16 (AVX-512) or 8 (AVX2) channels of a key or query row at offset o, as floats. */
#define F16_16(k, o) \
	_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)(k) + (o))))
#define Q_16(x, o)  _mm512_loadu_ps((x)->q + (o))
#define F16_8(k, o) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)(k) + (o))))
#define Q_8(x, o)   _mm256_loadu_ps((x)->q + (o))

__attribute__((target("avx2,f16c,fma"))) static inline float hsum8(__m256 v)
{
	__m128 s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));

	s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
	s4 = _mm_add_ss(s4, _mm_movehdup_ps(s4));
	return _mm_cvtss_f32(s4);
}

REPS_TILE("avx512f", __m512, reps_f16_avx512, 16, _mm512_setzero_ps(), Q_16, F16_16,
	  _mm512_fmadd_ps, _mm512_reduce_add_ps)
REPS_TILE("avx2,f16c,fma", __m256, reps_f16_avx2, 8, _mm256_setzero_ps(), Q_8, F16_8,
	  _mm256_fmadd_ps, hsum8)

/* ---- REPS8 scores: int8 keys as r8_at() lays them out ----------------------------------------
 * Each returns the best scale x q.k of KV heads [0, kv) of one layer: @k the layer's bytes,
 * @per the bytes of a head's keys (n4 x dp), @n4 keys a head, g query heads per KV head.
 * Padded keys repeat a real one and padded channels are zero: neither changes the maximum. */
struct r8 {
	const uint8_t *k;
	size_t per, n4;
	uint32_t d, dp, kv, g;
};

/* Head @h's scales and sums (4-aligned: n4 dp is a multiple of 16). */
static inline const float *r8_scales(const struct r8 *r, uint32_t h)
{
	return (const float *)(const void *)(r->k + r->kv * r->per) + h * r->n4;
}

static inline const int32_t *r8_sums(const struct r8 *r, uint32_t h)
{
	return (const int32_t *)(const void *)(r->k + r->kv * (r->per + r->n4 * sizeof(float))) +
	       h * r->n4;
}

static float r8_scalar(const struct r8 *r, const struct kvcd_query *x)
{
	float best = -INFINITY;

	for (uint32_t h = 0; h < r->kv; h++) {
		const uint8_t *k = r->k + h * r->per;

		for (uint32_t i = 0; i < r->n4; i++)
			for (uint32_t j = 0; j < r->g; j++) {
				const float *q = x->q + (size_t)(h * r->g + j) * r->d;
				float acc = 0.0f, v;

				for (uint32_t c = 0; c < r->d; c++)
					acc += q[c] * (float)(int8_t)k[r8_at(i, c, r->dp)];
				v = r8_scales(r, h)[i] * acc;
				best = v > best ? v : best;
			}
	}
	return best;
}

/* AVX2 and AVX-512 F: lanes are (key, channel of the group); a query's four channels are
 * broadcast to every key, and the four lanes of each key are added at the end. Up to four
 * query heads share each key load (heads past g repeat the last). */
static inline void r8_rows(const struct r8 *r, const struct kvcd_query *x, uint32_t h, uint32_t j0,
			   const float *q[4])
{
	for (uint32_t j = 0; j < 4; j++)
		q[j] = x->qp + (size_t)(h * r->g + (j0 + j < r->g ? j0 + j : r->g - 1)) * r->dp;
}

__attribute__((target("avx512f"))) static float r8_avx512(const struct r8 *r,
							  const struct kvcd_query *x)
{
	const __m512i spread = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
	__m512 best = _mm512_set1_ps(-INFINITY);
	uint32_t C = r->dp / 4;

	for (uint32_t h = 0; h < r->kv; h++) {
		const uint8_t *k = r->k + h * r->per;

		for (uint32_t j0 = 0; j0 < r->g; j0 += 4) {
			const float *q[4];

			r8_rows(r, x, h, j0, q);
			for (uint32_t i = 0; i < r->n4; i += 4) {
				const uint8_t *kg = k + (size_t)i * r->dp;
				__m512 acc[4] = { _mm512_setzero_ps(), _mm512_setzero_ps(),
						  _mm512_setzero_ps(), _mm512_setzero_ps() };
				__m512 sc = _mm512_permutexvar_ps(
					spread,
					_mm512_castps128_ps512(_mm_loadu_ps(r8_scales(r, h) + i)));

				for (uint32_t c = 0; c < C; c++) {
					__m512 kv = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
						_mm_loadu_si128((const __m128i *)(kg + c * 16))));

					_Pragma("GCC unroll 4") for (uint32_t j = 0; j < 4; j++)
						acc[j] = _mm512_fmadd_ps(
							kv,
							_mm512_broadcast_f32x4(
								_mm_loadu_ps(q[j] + 4 * c)),
							acc[j]);
				}
				_Pragma("GCC unroll 4") for (uint32_t j = 0; j < 4; j++)
				{
					__m512 v = _mm512_add_ps(acc[j],
								 _mm512_permute_ps(acc[j], 0xb1));

					v = _mm512_add_ps(v, _mm512_permute_ps(v, 0x4e));
					best = _mm512_max_ps(best, _mm512_mul_ps(v, sc));
				}
			}
		}
	}
	return _mm512_reduce_max_ps(best);
}

__attribute__((target("avx2,fma"))) static float r8_avx2(const struct r8 *r,
							 const struct kvcd_query *x)
{
	__m256 best = _mm256_set1_ps(-INFINITY);
	uint32_t C = r->dp / 4;
	float out[8];

	for (uint32_t h = 0; h < r->kv; h++) {
		const uint8_t *k = r->k + h * r->per;

		for (uint32_t j0 = 0; j0 < r->g; j0 += 4) {
			const float *q[4];

			r8_rows(r, x, h, j0, q);
			for (uint32_t i = 0; i < r->n4; i += 2) { /* two keys a vector */
				const uint8_t *kg = k + (size_t)(i & ~3u) * r->dp + (i & 2) * 4;
				const float *s = r8_scales(r, h) + i;
				__m256 acc[4] = { _mm256_setzero_ps(), _mm256_setzero_ps(),
						  _mm256_setzero_ps(), _mm256_setzero_ps() };
				__m256 sc = _mm256_set_m128(_mm_set1_ps(s[1]), _mm_set1_ps(s[0]));

				for (uint32_t c = 0; c < C; c++) {
					__m256 kv = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(
						_mm_loadl_epi64((const __m128i *)(kg + c * 16))));

					_Pragma("GCC unroll 4") for (uint32_t j = 0; j < 4; j++)
						acc[j] = _mm256_fmadd_ps(
							kv,
							_mm256_broadcast_ps(
								(const __m128 *)(q[j] + 4 * c)),
							acc[j]);
				}
				_Pragma("GCC unroll 4") for (uint32_t j = 0; j < 4; j++)
				{
					__m256 v = _mm256_add_ps(acc[j],
								 _mm256_permute_ps(acc[j], 0xb1));

					v = _mm256_add_ps(v, _mm256_permute_ps(v, 0x4e));
					best = _mm256_max_ps(best, _mm256_mul_ps(v, sc));
				}
			}
		}
	}
	_mm256_storeu_ps(out, best);
	for (int i = 1; i < 8; i++)
		out[0] = out[i] > out[0] ? out[i] : out[0];
	return out[0];
}

/* AVX-512 VNNI, keys signed and queries unsigned (q + 128: kvcd_query's q8h), so each lane
 * sums q.k + 128 sum(k) and the key's stored sum takes the second term back off. Each
 * vpdpbusd takes 64 bytes of keys, four channel groups of four keys, against the query's
 * pattern for them: lanes are (channel group, key), and the four 128-bit lanes are added at
 * the end. With two or more query heads a KV head, four of them share each key load, and six
 * shuffles and three adds turn their four accumulators into lanes (query head, key). (A
 * 16-byte group broadcast to lanes (query head, key) needs no adds but two loads a
 * vpdpbusd: it measured slower.) */
__attribute__((target("avx512f,avx512bw,avx512vnni"))) static float r8_vnni1(
	const struct r8 *r, const struct kvcd_query *x)
{
	uint32_t C = r->dp / 4;
	__m128 best = _mm_set1_ps(-INFINITY);

	for (uint32_t h = 0; h < r->kv; h++) {
		const uint8_t *k = r->k + h * r->per, *q = x->q8h + (size_t)h * C * 16;
		__m128 qs = _mm_set1_ps(x->q8_scale[h]);

		for (uint32_t i = 0; i < r->n4; i += 4) {
			const uint8_t *kg = k + (size_t)i * r->dp;
			__m512i a0 = _mm512_setzero_si512(), a1 = _mm512_setzero_si512();
			uint32_t c = 0;

			for (; c + 8 <= C; c += 8) {
				a0 = _mm512_dpbusd_epi32(a0, _mm512_loadu_si512(q + c * 16),
							 _mm512_loadu_si512(kg + c * 16));
				a1 = _mm512_dpbusd_epi32(a1, _mm512_loadu_si512(q + c * 16 + 64),
							 _mm512_loadu_si512(kg + c * 16 + 64));
			}
			for (; c < C; c += 4) {
				__mmask64 m = C - c >= 4 ? ~0ull : (1ull << ((C - c) * 16)) - 1;

				a0 = _mm512_dpbusd_epi32(a0, _mm512_maskz_loadu_epi8(m, q + c * 16),
							 _mm512_maskz_loadu_epi8(m, kg + c * 16));
			}
			a0 = _mm512_add_epi32(a0, a1);
			a0 = _mm512_add_epi32(a0, _mm512_shuffle_i32x4(a0, a0, 0x4e));
			a0 = _mm512_add_epi32(a0, _mm512_shuffle_i32x4(a0, a0, 0xb1));
			__m128i dot = _mm_sub_epi32(
				_mm512_castsi512_si128(a0),
				_mm_slli_epi32(
					_mm_loadu_si128((const __m128i *)(r8_sums(r, h) + i)), 7));
			__m128 v = _mm_mul_ps(_mm_mul_ps(_mm_cvtepi32_ps(dot), qs),
					      _mm_loadu_ps(r8_scales(r, h) + i));

			best = _mm_max_ps(best, v);
		}
	}
	best = _mm_max_ps(best, _mm_movehl_ps(best, best));
	return _mm_cvtss_f32(_mm_max_ss(best, _mm_movehdup_ps(best)));
}

__attribute__((target("avx512f,avx512bw,avx512vnni"))) static float r8_vnni4(
	const struct r8 *r, const struct kvcd_query *x)
{
	uint32_t C = r->dp / 4;
	__m512 best = _mm512_set1_ps(-INFINITY);

	for (uint32_t h = 0; h < r->kv; h++) {
		const uint8_t *k = r->k + h * r->per;

		for (uint32_t j0 = 0; j0 < r->g; j0 += 4) {
			const uint8_t *q[4];
			uint32_t nj = r->g - j0 < 4 ? r->g - j0 : 4;
			/* the lanes of this KV head's query heads */
			__mmask16 live = (__mmask16)((1u << (4 * nj)) - 1);
			__m512 qs = _mm512_loadu_ps(x->q8s4 + (size_t)(h * r->g + j0) * 4);

			_Pragma("GCC unroll 4") for (uint32_t j = 0; j < 4; j++) q[j] =
				x->q8h + (size_t)(h * r->g + (j < nj ? j0 + j : j0)) * C * 16;
			for (uint32_t i = 0; i < r->n4; i += 4) {
				const uint8_t *kg = k + (size_t)i * r->dp;
				__m512i a[4], b[4]; /* b: every other block of channel groups */
				uint32_t c = 0;

				_Pragma("GCC unroll 4") for (uint32_t j = 0; j < 4; j++)
					a[j] = b[j] = _mm512_setzero_si512();
				for (; c + 8 <= C; c += 8) {
					__m512i ka = _mm512_loadu_si512(kg + c * 16),
						kb = _mm512_loadu_si512(kg + c * 16 + 64);

					_Pragma("GCC unroll 4") for (uint32_t j = 0; j < 4; j++)
					{
						a[j] = _mm512_dpbusd_epi32(
							a[j], _mm512_loadu_si512(q[j] + c * 16),
							ka);
						b[j] = _mm512_dpbusd_epi32(
							b[j],
							_mm512_loadu_si512(q[j] + c * 16 + 64), kb);
					}
				}
				for (; c < C; c += 4) {
					__mmask64 m = C - c >= 4 ? ~0ull
								 : (1ull << ((C - c) * 16)) - 1;
					__m512i kv = _mm512_maskz_loadu_epi8(m, kg + c * 16);

					_Pragma("GCC unroll 4") for (uint32_t j = 0; j < 4; j++)
						a[j] = _mm512_dpbusd_epi32(
							a[j],
							_mm512_maskz_loadu_epi8(m, q[j] + c * 16),
							kv);
				}
				_Pragma("GCC unroll 4") for (uint32_t j = 0; j < 4; j++)
					a[j] = _mm512_add_epi32(a[j], b[j]);
				/* lanes (channel group, key) of four heads to (head, key) */
				__m512i u =
					_mm512_add_epi32(_mm512_shuffle_i32x4(a[0], a[1], 0x88),
							 _mm512_shuffle_i32x4(a[0], a[1], 0xdd));
				__m512i w =
					_mm512_add_epi32(_mm512_shuffle_i32x4(a[2], a[3], 0x88),
							 _mm512_shuffle_i32x4(a[2], a[3], 0xdd));
				__m512i dot = _mm512_sub_epi32(
					_mm512_add_epi32(_mm512_shuffle_i32x4(u, w, 0x88),
							 _mm512_shuffle_i32x4(u, w, 0xdd)),
					_mm512_slli_epi32(
						_mm512_broadcast_i32x4(_mm_loadu_si128(
							(const __m128i *)(r8_sums(r, h) + i))),
						7));
				__m512 ks =
					_mm512_broadcast_f32x4(_mm_loadu_ps(r8_scales(r, h) + i));
				__m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(dot), qs),
							 ks);

				best = _mm512_mask_max_ps(best, live, best, v);
			}
		}
	}
	return _mm512_reduce_max_ps(best);
}

/* @isa KVCD_ISA_AVX512 takes the AVX-512 F kernel even where VNNI is present (tests). */
static float r8_score(enum kvcd_isa isa, const struct r8 *r, const struct kvcd_query *x)
{
	if (isa >= KVCD_ISA_AVX512_VNNI)
		return r->g == 1 ? r8_vnni1(r, x) : r8_vnni4(r, x);
	if (isa >= KVCD_ISA_AVX512)
		return r8_avx512(r, x);
	if (isa >= KVCD_ISA_AVX2)
		return r8_avx2(r, x);
	return r8_scalar(r, x);
}

static float reps_scalar(const uint16_t *k, uint32_t n, uint32_t d, const float *q, uint32_t g)
{
	float best = -INFINITY;

	for (uint32_t r = 0; r < n; r++)
		for (uint32_t j = 0; j < g; j++) {
			float acc = 0.0f;

			for (uint32_t c = 0; c < d; c++)
				acc += q[(size_t)j * d + c] * kvcd_f16_to_f32(k[(size_t)r * d + c]);
			best = acc > best ? acc : best;
		}
	return best;
}

int kvcd_query_init(struct kvcd_query *x, const float *q, uint32_t q_heads, uint32_t head_dim)
{
	size_t n = (size_t)q_heads * head_dim, dp = up4(head_dim), qp = (size_t)q_heads * dp;
	size_t pats = (qp * 4 + 63) & ~(size_t)63;
	uint8_t *m;

	memset(x, 0, sizeof(*x));
	x->q = q;
	x->q_heads = q_heads;
	x->head_dim = head_dim;
	/* the VNNI pattern first, 64-byte aligned: its loads never split a cache line */
	m = aligned_alloc(
		64, (pats + (n * 2 + q_heads + qp + (q_heads + 3) * 4) * sizeof(float) + n + 63) &
			    ~(size_t)63);
	if (!m)
		return -ENOMEM;
	x->buf = m;
	x->q8h = m;
	x->pos = (float *)(m + pats);
	x->neg = x->pos + n;
	x->q8_scale = x->neg + n;
	x->qp = x->q8_scale + q_heads;
	x->q8s4 = x->qp + qp;
	x->q8 = (int8_t *)(x->q8s4 + (q_heads + 3) * 4);
	kvcd_quest_prep(q, (uint32_t)n, x->pos, x->neg);
	memset(x->qp, 0, qp * sizeof(float));
	memset(x->q8s4, 0, (q_heads + 3) * 4 * sizeof(float));
	for (uint32_t j = 0; j < q_heads; j++) {
		const float *qj = q + (size_t)j * head_dim;
		int8_t *q8 = x->q8 + (size_t)j * head_dim;
		float a = 0.0f;

		for (uint32_t c = 0; c < head_dim; c++)
			a += fabsf(qj[c]);
		x->l1 = a > x->l1 ? a : x->l1;
		memcpy(x->qp + (size_t)j * dp, qj, head_dim * sizeof(float));
		x->q8_scale[j] = kvcd_to_i8(qj, head_dim, q8);
		for (uint32_t t = 0; t < 4; t++)
			x->q8s4[(size_t)j * 4 + t] = x->q8_scale[j];
		for (uint32_t c = 0; c < dp; c++) { /* as unsigned q + 128, once for each key */
			uint8_t u = (uint8_t)((c < head_dim ? q8[c] : 0) + 128);

			for (uint32_t t = 0; t < 4; t++)
				x->q8h[((size_t)j * dp / 4 + c / 4) * 16 + t * 4 + c % 4] = u;
		}
	}
	x->l1 *= 1.0f + 0x1p-10f; /* the float sum above may have rounded down */
	return 0;
}

void kvcd_query_fini(struct kvcd_query *x)
{
	free(x->buf);
	x->buf = NULL;
}

float kvcd_codec_score(enum kvcd_isa isa, const struct kvcp_layout *l, const void *sum,
		       uint32_t layer, const struct kvcd_query *x)
{
	struct kvcd_summary s;
	const uint8_t *data = (const uint8_t *)sum + sizeof(s);
	uint32_t d = l->head_dim, g = x->q_heads / l->kv_heads;
	bool wide = isa >= KVCD_ISA_AVX512 && d % 16 == 0;
	bool fast = isa != KVCD_ISA_SCALAR && d % 8 == 0 && kvcd_has_f16c();
	float best = -INFINITY;
	size_t n, per;

	memcpy(&s, sum, sizeof(s));
	if (!s.page || d != x->head_dim)
		return -INFINITY;
	if (s.kind == KVCD_SUMMARY_QUEST)
		return kvcd_quest_score(isa, l, s.page, (const uint16_t *)data, layer, x->pos,
					x->neg, x->l1, x->q_heads);
	if ((s.kind != KVCD_SUMMARY_REPS && s.kind != KVCD_SUMMARY_REPS8) || !s.reps)
		return -INFINITY;
	n = (size_t)kvcd_quest_pages(l, s.page) * s.reps;
	if (s.kind == KVCD_SUMMARY_REPS8) {
		struct r8 r = {
			.n4 = (n + 3) & ~(size_t)3, .d = d, .dp = up4(d), .kv = l->kv_heads, .g = g
		};

		r.per = r.n4 * r.dp;
		r.k = data + (size_t)layer * l->kv_heads * r8_head_bytes(n, d);
		return r8_score(isa, &r, x) / sqrtf((float)d);
	}
	per = n * 2 * (size_t)d;
	for (uint32_t h = 0; h < l->kv_heads; h++) {
		const uint16_t *k =
			(const uint16_t *)(data + ((size_t)layer * l->kv_heads + h) * per);
		float v;

		if (wide)
			v = reps_f16_avx512(k, NULL, (uint32_t)n, d, x, h * g, g);
		else if (fast)
			v = reps_f16_avx2(k, NULL, (uint32_t)n, d, x, h * g, g);
		else
			v = reps_scalar(k, (uint32_t)n, d, x->q + (size_t)h * g * d, g);
		best = v > best ? v : best;
	}
	return best / sqrtf((float)d);
}

void kvcd_codec_score_prefetch(const struct kvcp_layout *l, const void *sum, uint32_t layer)
{
	const char *p = sum;
	struct kvcd_summary s;
	size_t per;

	memcpy(&s, p, sizeof(s));
	if (layer >= l->layers || !s.page)
		return;
	per = (kvcd_summary_bytes(l, &s) - sizeof(s)) / l->layers;
	p += sizeof(s) + per * layer;
	for (size_t o = 0; o < per; o += 64)
		__builtin_prefetch(p + o);
}
