/* select.c - token selection scores, keep sets, PyramidKV and Ada-KV budgets, Quest bounds
 * (see select.h). Pure functions; the caller owns every buffer. */
#include "select.h"
#include "codec.h"

#include <immintrin.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

void kvcd_score_snapkv(const float *keys, uint32_t stride, uint32_t t, uint32_t d,
		       const float *q, const float *lse, uint32_t g, uint32_t w, int64_t qpos,
		       uint32_t kernel, float *tmp, float *score)
{
	float inv = 1.0f / sqrtf((float)d);

	memset(score, 0, (size_t)t * sizeof(*score));
	for (uint32_t h = 0; h < g; h++)
		for (uint32_t i = 0; i < w; i++) {
			const float *qi = q + ((size_t)h * w + i) * d;
			int64_t last = qpos + i; /* causal: keys up to its own position */
			uint32_t seen = last < 0 ? 0 : last >= t ? t : (uint32_t)last + 1;
			float mx = -INFINITY, sum = 0.0f;

			for (uint32_t k = 0; k < seen; k++) {
				const float *kk = keys + (size_t)k * stride;
				float dot = 0.0f;

				for (uint32_t c = 0; c < d; c++)
					dot += qi[c] * kk[c];
				tmp[k] = dot * inv;
				mx = tmp[k] > mx ? tmp[k] : mx;
			}
			if (lse) /* the sequence's normaliser: the block's share of attention */
				mx = lse[(size_t)h * w + i];
			for (uint32_t k = 0; k < seen; k++) {
				tmp[k] = expf(tmp[k] - mx);
				sum += tmp[k];
			}
			sum = lse ? 1.0f : sum;
			for (uint32_t k = 0; k < seen; k++)
				score[k] += tmp[k] / sum;
		}
	if (kernel <= 1)
		return;
	memcpy(tmp, score, (size_t)t * sizeof(*tmp));
	for (uint32_t k = 0; k < t; k++) { /* max pooling, same padding */
		uint32_t lo = k > kernel / 2 ? k - kernel / 2 : 0, hi = k + kernel / 2;
		float m = tmp[k];

		for (uint32_t j = lo; j <= hi && j < t; j++)
			m = tmp[j] > m ? tmp[j] : m;
		score[k] = m;
	}
}

void kvcd_score_keynorm(const float *keys, uint32_t stride, uint32_t t, uint32_t d,
			float *score)
{
	for (uint32_t k = 0; k < t; k++) {
		double s = 0;

		for (uint32_t c = 0; c < d; c++)
			s += (double)keys[(size_t)k * stride + c] * keys[(size_t)k * stride + c];
		score[k] = -(float)sqrt(s);
	}
}

void kvcd_score_recency(uint32_t t, float *score)
{
	for (uint32_t k = 0; k < t; k++)
		score[k] = (float)k;
}

/* descending score, then ascending index */
static int by_score(const void *a, const void *b, void *ctx)
{
	const float *s = ctx;
	uint32_t i = *(const uint32_t *)a, j = *(const uint32_t *)b;

	if (s[i] != s[j])
		return s[i] > s[j] ? -1 : 1;
	return i < j ? -1 : i > j;
}

static int by_index(const void *a, const void *b)
{
	uint32_t i = *(const uint32_t *)a, j = *(const uint32_t *)b;

	return i < j ? -1 : i > j;
}

uint32_t kvcd_select_keep(const float *score, uint32_t t, uint32_t n, uint32_t sink,
			  uint32_t window, uint32_t *tmp, uint32_t *keep)
{
	uint32_t ns, nw, m = 0, nc = 0;

	n = n < t ? n : t;
	ns = sink < n ? sink : n;
	nw = window < n - ns ? window : n - ns;
	for (uint32_t k = 0; k < ns; k++)
		keep[m++] = k;
	for (uint32_t k = t - nw; k < t; k++)
		if (k >= ns)
			keep[m++] = k;
	for (uint32_t k = ns; k < t - nw; k++) /* the rest compete on score */
		tmp[nc++] = k;
	qsort_r(tmp, nc, sizeof(*tmp), by_score, (void *)score);
	for (uint32_t i = 0; m < n && i < nc; i++)
		keep[m++] = tmp[i];
	qsort(keep, m, sizeof(*keep), by_index);
	return m;
}

void kvcd_budget_pyramid(uint64_t total, uint32_t layers, double beta, uint32_t *out)
{
	double m = (double)total / layers, lo = m / beta, hi = 2 * m - lo;
	uint64_t sum = 0;

	for (uint32_t l = 0; l < layers; l++) {
		double b = layers > 1 ? hi - (hi - lo) * l / (layers - 1) : m;

		out[l] = (uint32_t)floor(b);
		sum += out[l];
	}
	for (uint32_t l = 0; sum < total; l = (l + 1) % layers, sum++) /* floors lost < layers */
		out[l]++;
}

static int desc(const void *a, const void *b)
{
	float x = *(const float *)a, y = *(const float *)b;

	return x > y ? -1 : x < y;
}

void kvcd_budget_adakv(const float *score, uint32_t heads, uint32_t t, uint32_t budget,
		       double alpha, float *tmp, uint32_t *counts)
{
	uint64_t k = (uint64_t)heads * budget, n = (uint64_t)heads * t, taken = 0, sum = 0;
	float thr;

	memcpy(tmp, score, n * sizeof(*tmp));
	qsort(tmp, n, sizeof(*tmp), desc);
	thr = k ? tmp[k - 1] : INFINITY;
	/* joint top-k: every score above the threshold, then ties in head order */
	for (uint32_t h = 0; h < heads; h++) {
		counts[h] = 0;
		for (uint32_t i = 0; i < t; i++)
			counts[h] += score[(size_t)h * t + i] > thr;
		taken += counts[h];
	}
	for (uint32_t h = 0; h < heads && taken < k; h++)
		for (uint32_t i = 0; i < t && taken < k; i++)
			if (score[(size_t)h * t + i] == thr) {
				counts[h]++;
				taken++;
			}
	/* pull towards uniform, then largest remainders so the sum is exact: the deficit is the
	 * sum of the fractional parts, so only heads with one (hence below t) get the +1 */
	for (uint32_t h = 0; h < heads; h++) {
		double r = counts[h] * (1 - alpha) + alpha * budget;

		counts[h] = (uint32_t)floor(r);
		tmp[h] = (float)(r - floor(r));
		sum += counts[h];
	}
	while (sum < k) {
		uint32_t best = 0;

		for (uint32_t h = 1; h < heads; h++)
			if (tmp[h] > tmp[best])
				best = h;
		counts[best]++;
		tmp[best] = -1.0f;
		sum++;
	}
}

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
			__m256 v = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k + t * hd + c0)));

			lo = _mm256_min_ps(v, lo);
			hi = _mm256_max_ps(v, hi);
		}
		_mm256_storeu_ps(mn + c0, lo);
		_mm256_storeu_ps(mx + c0, hi);
	}
}

int kvcd_quest_block(int isa, const struct kvcp_layout *l, uint32_t page, const void *block,
		     uint16_t *out)
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
				kvcd_to_f32((enum kvcd_isa)isa, l->dtype, k, rows_f, rows * hd);
				kvcd_quest_minmax(rows_f, (uint32_t)hd, (uint32_t)rows, (uint32_t)hd,
						  mn, mx);
			}
			for (uint32_t h = 0; h < l->kv_heads; h++) {
				uint16_t *o = out + (((size_t)ly * l->kv_heads + h) * np + pg) * 2 *
						    l->head_dim;

				for (uint32_t c = 0; c < l->head_dim; c++) {
					o[c] = f16_toward(mn[h * l->head_dim + c], false);
					o[l->head_dim + c] = f16_toward(mx[h * l->head_dim + c], true);
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
			__m512 hi = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(b + d + c)));

			if (!j0)
				m = _mm512_max_ps(m, _mm512_max_ps(_mm512_abs_ps(lo), _mm512_abs_ps(hi)));
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

float kvcd_quest_score(int isa, const struct kvcp_layout *l, uint32_t page,
		       const uint16_t *bounds, uint32_t layer, const float *pos, const float *neg,
		       float l1, uint32_t q_heads)
{
	uint32_t d = l->head_dim, g = q_heads / l->kv_heads, np = kvcd_quest_pages(l, page);
	bool fast = isa != KVCD_ISA_SCALAR && d % 8 == 0 && kvcd_has_f16c();
	bool wide = isa == KVCD_ISA_AVX512 && d % 16 == 0;
	float best = -INFINITY, mag = 0.0f;

	for (uint32_t h = 0; h < l->kv_heads; h++) {
		const uint16_t *b = bounds + ((size_t)layer * l->kv_heads + h) * np * 2 * d;

		for (uint32_t pg = 0; pg < np; pg++, b += 2 * d) {
			float m;

			if (wide)
				page_avx512(b, d, pos + (size_t)h * g * d, neg + (size_t)h * g * d, g,
					    &best, &m);
			else if (fast)
				page_avx2(b, d, pos + (size_t)h * g * d, neg + (size_t)h * g * d, g,
					  &best, &m);
			else
				page_scalar(b, d, pos + (size_t)h * g * d, neg + (size_t)h * g * d, g,
					    &best, &m);
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

size_t kvcd_summary_bytes(const struct kvcp_layout *l, const struct kvcd_summary *s)
{
	size_t rows = (size_t)l->layers * l->kv_heads * kvcd_quest_pages(l, s->page);

	if (s->kind == KVCD_SUMMARY_REPS8)
		return sizeof(*s) + rows * s->reps * (l->head_dim + sizeof(float));
	return sizeof(*s) + rows * (s->kind == KVCD_SUMMARY_REPS ? s->reps : 2) * l->head_dim * 2;
}

/* Representative keys: per (layer, head, page) the @reps keys of largest norm, a page shorter
 * than reps repeating its best. REPS: f16 [layers][kv_heads][pages][reps][head_dim]. REPS8:
 * per (layer, head) int8 [pages][reps][head_dim] and then each row's f32 scale [pages][reps]
 * (symmetric: absmax / 127). */
static int reps_make(int isa, const struct kvcp_layout *l, const struct kvcd_summary *s,
		     const void *block, void *out)
{
	size_t hd = (size_t)l->kv_heads * l->head_dim, es = kvcp_dtype_size(l->dtype);
	uint32_t page = s->page, reps = s->reps, d = l->head_dim;
	size_t plane = hd * l->tokens * es, np = kvcd_quest_pages(l, page);
	size_t per8 = np * reps * (d + sizeof(float)); /* REPS8 bytes per (layer, head) */
	float *row = malloc((hd * page + (size_t)page * 3) * sizeof(float)), *nrm = row + hd * page;
	uint32_t *keep = (uint32_t *)(nrm + page), *tmp = keep + page;

	if (!row)
		return -ENOMEM;
	for (uint32_t ly = 0; ly < l->layers; ly++)
		for (size_t pg = 0; pg < np; pg++) {
			const uint8_t *k = (const uint8_t *)block + (size_t)ly * 2 * plane +
					   pg * page * hd * es;
			uint32_t rows = (uint32_t)(l->tokens - pg * page < page ?
						   l->tokens - pg * page : page), m;

			kvcd_to_f32((enum kvcd_isa)isa, l->dtype, k, row, rows * hd);
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
					float sc;

					if (s->kind == KVCD_SUMMARY_REPS) {
						kvcd_from_f32((enum kvcd_isa)isa, KVCP_F16, x,
							      (uint16_t *)out + (lh * np * reps + r) * d, d);
						continue;
					}
					sc = kvcd_to_i8(x, d, (int8_t *)out + lh * per8 + r * d);
					memcpy((uint8_t *)out + lh * per8 + np * reps * d + r * sizeof(sc),
					       &sc, sizeof(sc));
				}
			}
		}
	free(row);
	return 0;
}

int kvcd_summary_make(int isa, const struct kvcp_layout *l, const struct kvcd_summary *s,
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

#define REPS_TILE(ISA, VEC, NAME, W, ZERO, LOADQ, KEY, FMA, SUM)                                 \
	__attribute__((target(ISA), always_inline)) static inline float                          \
	NAME##_tile(const void *k, const float *sc, uint32_t n, uint32_t r, uint32_t d,          \
		    const struct kvcd_query *x, uint32_t q0, uint32_t g, uint32_t j0, const uint32_t kn, \
		    const uint32_t jn)                                                           \
	{                                                                                        \
		VEC acc[4][4];                                                                   \
		size_t kr[4], qi[4];                                                             \
		float best = -INFINITY;                                                          \
                                                                                                 \
		_Pragma("GCC unroll 4") for (uint32_t i = 0; i < kn; i++)                        \
			kr[i] = (size_t)(r + i < n ? r + i : n - 1);                             \
		_Pragma("GCC unroll 4") for (uint32_t j = 0; j < jn; j++)                        \
			qi[j] = q0 + (j0 + j < g ? j0 + j : g - 1);                              \
		_Pragma("GCC unroll 4") for (uint32_t i = 0; i < kn; i++)                        \
			_Pragma("GCC unroll 4") for (uint32_t j = 0; j < jn; j++)                \
				acc[i][j] = ZERO;                                                \
		for (uint32_t c = 0; c < d; c += W) {                                            \
			VEC kv[4];                                                               \
                                                                                                 \
			_Pragma("GCC unroll 4") for (uint32_t i = 0; i < kn; i++)                \
				kv[i] = KEY(k, kr[i] * d + c);                            \
			_Pragma("GCC unroll 4") for (uint32_t j = 0; j < jn; j++) {              \
				VEC qv = LOADQ(x, qi[j] * d + c);                         \
                                                                                                 \
				_Pragma("GCC unroll 4") for (uint32_t i = 0; i < kn; i++)        \
					acc[i][j] = FMA(qv, kv[i], acc[i][j]);                   \
			}                                                                        \
		}                                                                                \
		_Pragma("GCC unroll 4") for (uint32_t i = 0; i < kn; i++) {                      \
			float s = sc ? sc[kr[i]] : 1.0f;                                         \
                                                                                                 \
			_Pragma("GCC unroll 4") for (uint32_t j = 0; j < jn; j++) {              \
				float v = s * SUM(acc[i][j]);                          \
                                                                                                 \
				best = v > best ? v : best;                                      \
			}                                                                        \
		}                                                                                \
		return best;                                                                     \
	}                                                                                        \
                                                                                                 \
	__attribute__((target(ISA))) static float NAME(const void *k, const float *sc, uint32_t n, \
						       uint32_t d, const struct kvcd_query *x,   \
						       uint32_t q0, uint32_t g)                  \
	{                                                                                        \
		uint32_t kn = n >= 4 ? 4 : n >= 2 ? 2 : 1, jn = g >= 4 ? 4 : g >= 2 ? 2 : 1;     \
		float best = -INFINITY;                                                          \
                                                                                                 \
		for (uint32_t r = 0; r < n; r += kn)                                             \
			for (uint32_t j0 = 0; j0 < g; j0 += jn) {                                \
				float v;                                                         \
                                                                                                 \
				if (kn == 4)                                                     \
					v = jn == 4 ? NAME##_tile(k, sc, n, r, d, x, q0, g, j0, 4, 4) : \
					    jn == 2 ? NAME##_tile(k, sc, n, r, d, x, q0, g, j0, 4, 2) : \
						      NAME##_tile(k, sc, n, r, d, x, q0, g, j0, 4, 1); \
				else if (kn == 2)                                                \
					v = jn == 4 ? NAME##_tile(k, sc, n, r, d, x, q0, g, j0, 2, 4) : \
					    jn == 2 ? NAME##_tile(k, sc, n, r, d, x, q0, g, j0, 2, 2) : \
						      NAME##_tile(k, sc, n, r, d, x, q0, g, j0, 2, 1); \
				else                                                             \
					v = jn == 4 ? NAME##_tile(k, sc, n, r, d, x, q0, g, j0, 1, 4) : \
					    jn == 2 ? NAME##_tile(k, sc, n, r, d, x, q0, g, j0, 1, 2) : \
						      NAME##_tile(k, sc, n, r, d, x, q0, g, j0, 1, 1); \
				best = v > best ? v : best;                                      \
			}                                                                        \
		return best;                                                                     \
	}

/* Loads of 16 (AVX-512) or 8 (AVX2) channels of a key or query row at offset o, as floats. */
#define F16_16(k, o) \
	_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)(k) + (o))))
#define I8_16(k, o) \
	_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)((const int8_t *)(k) \
										  + (o)))))
#define Q_16(x, o) _mm512_loadu_ps((x)->q + (o))
#define F16_8(k, o) \
	_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)(k) + (o))))
#define I8_8(k, o) \
	_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)((const int8_t *)(k) \
										  + (o)))))
#define Q_8(x, o) _mm256_loadu_ps((x)->q + (o))

__attribute__((target("avx2,f16c,fma"))) static inline float hsum8(__m256 v)
{
	__m128 s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));

	s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
	s4 = _mm_add_ss(s4, _mm_movehdup_ps(s4));
	return _mm_cvtss_f32(s4);
}

REPS_TILE("avx512f", __m512, reps_f16_avx512, 16, _mm512_setzero_ps(), Q_16, F16_16,
	  _mm512_fmadd_ps, _mm512_reduce_add_ps)
REPS_TILE("avx512f", __m512, reps_i8_avx512, 16, _mm512_setzero_ps(), Q_16, I8_16,
	  _mm512_fmadd_ps, _mm512_reduce_add_ps)
REPS_TILE("avx2,f16c,fma", __m256, reps_f16_avx2, 8, _mm256_setzero_ps(), Q_8, F16_8,
	  _mm256_fmadd_ps, hsum8)
REPS_TILE("avx2,f16c,fma", __m256, reps_i8_avx2, 8, _mm256_setzero_ps(), Q_8, I8_8,
	  _mm256_fmadd_ps, hsum8)

/* int8 keys on AVX-512 VNNI: 64 channels per vpdpbusd, the tail masked to zero. The keys are
 * read as unsigned k + 128 (sign bit flipped) against the signed int8 query, each
 * accumulator starting at -128 sum(q) in its first lane to take that back off. A tile is 4
 * keys by 1 query head (g == 1) or by 4 (heads past g repeat the last), and its sums are
 * reduced together: a transpose-and-add tree leaves the sum of key i and query j in lane 4i+j
 * (4 by 4) or i (4 by 1), where one multiply applies every key and query scale. */
#define VNNI_TILE(JN)                                                                            \
	__attribute__((target("avx512f,avx512bw,avx512vnni"))) static float                       \
	vnni_tile##JN(const int8_t *k, const float *sc, uint32_t n, uint32_t r, uint32_t d,      \
		      const struct kvcd_query *x, uint32_t q0, uint32_t g, uint32_t j0)         \
	{                                                                                        \
		__m512i acc[4][JN], flip = _mm512_set1_epi8((char)0x80);                         \
		size_t kr[4], qi[JN];                                                            \
		float qs[4];                                                                     \
                                                                                                 \
		_Pragma("GCC unroll 4") for (uint32_t i = 0; i < 4; i++)                         \
			kr[i] = (size_t)(r + i < n ? r + i : n - 1);                             \
		_Pragma("GCC unroll 4") for (uint32_t j = 0; j < JN; j++) {                      \
			qi[j] = q0 + (j0 + j < g ? j0 + j : g - 1);                              \
			qs[j] = x->q8_scale[qi[j]];                                              \
			_Pragma("GCC unroll 4") for (uint32_t i = 0; i < 4; i++)                 \
				acc[i][j] = _mm512_maskz_set1_epi32(1, -x->q8_bias[qi[j]]);      \
		}                                                                                \
		for (uint32_t c = 0; c < d; c += 64) {                                           \
			__mmask64 m = d - c >= 64 ? ~0ull : (1ull << (d - c)) - 1;               \
			__m512i kv[4];                                                           \
                                                                                                 \
			_Pragma("GCC unroll 4") for (uint32_t i = 0; i < 4; i++)                 \
				kv[i] = _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, k + kr[i] *  \
										 d + c), flip);  \
			_Pragma("GCC unroll 4") for (uint32_t j = 0; j < JN; j++) {              \
				__m512i qv = _mm512_maskz_loadu_epi8(m, x->q8 + qi[j] * d + c);  \
                                                                                                 \
				_Pragma("GCC unroll 4") for (uint32_t i = 0; i < 4; i++)         \
					acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], kv[i], qv);   \
			}                                                                        \
		}                                                                                \
		__m128 ks = _mm_set_ps(sc[kr[3]], sc[kr[2]], sc[kr[1]], sc[kr[0]]);              \
		return vnni_finish##JN(acc, ks, qs);                                             \
	}

/* Pairs of vectors to one: per 128-bit lane, [a0+a2, b0+b2, a1+a3, b1+b3]; then, of two such,
 * [a, b, c, d] partial sums. */
#define ADD32(a, b) _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b))
#define ADD64(a, b) _mm512_add_epi32(_mm512_unpacklo_epi64(a, b), _mm512_unpackhi_epi64(a, b))
#define ADD128(a, b) \
	_mm512_add_epi32(_mm512_shuffle_i32x4(a, b, 0x88), _mm512_shuffle_i32x4(a, b, 0xdd))

__attribute__((target("avx512f,avx512bw,avx512vnni"), always_inline)) static inline float
vnni_finish1(__m512i acc[4][1], __m128 ks, const float *qs)
{
	__m512i v = ADD64(ADD32(acc[0][0], acc[1][0]), ADD32(acc[2][0], acc[3][0]));
	__m256i h = _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
	__m128i t = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
	__m128 f = _mm_mul_ps(_mm_cvtepi32_ps(t), _mm_mul_ps(ks, _mm_set1_ps(qs[0])));

	f = _mm_max_ps(f, _mm_movehl_ps(f, f));
	return _mm_cvtss_f32(_mm_max_ss(f, _mm_movehdup_ps(f)));
}

__attribute__((target("avx512f,avx512bw,avx512vnni"), always_inline)) static inline float
vnni_finish4(__m512i acc[4][4], __m128 ks, const float *qs)
{
	__m512i b[4], v;

	_Pragma("GCC unroll 4") for (int i = 0; i < 4; i++)
		b[i] = ADD64(ADD32(acc[i][0], acc[i][1]), ADD32(acc[i][2], acc[i][3]));
	v = ADD128(ADD128(b[0], b[1]), ADD128(b[2], b[3]));
	__m512 s = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1,
									1, 1, 1, 0, 0, 0, 0),
						       _mm512_castps128_ps512(ks)),
				 _mm512_broadcast_f32x4(_mm_loadu_ps(qs)));

	return _mm512_reduce_max_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(v), s));
}

VNNI_TILE(1)
VNNI_TILE(4)

__attribute__((target("avx512f,avx512bw,avx512vnni"))) static float
reps_i8_vnni(const void *k, const float *sc, uint32_t n, uint32_t d, const struct kvcd_query *x,
	     uint32_t q0, uint32_t g)
{
	float best = -INFINITY;

	for (uint32_t r = 0; r < n; r += 4)
		for (uint32_t j0 = 0; j0 < g; j0 += g == 1 ? 1 : 4) {
			float v = g == 1 ? vnni_tile1(k, sc, n, r, d, x, q0, g, j0) :
					   vnni_tile4(k, sc, n, r, d, x, q0, g, j0);

			best = v > best ? v : best;
		}
	return best;
}

/* @sc: the scales' bytes, read one at a time (int8 rows of odd head_dim leave them
 * unaligned). */
static float reps_scalar(const void *k, const uint8_t *sc, uint32_t n, uint32_t d,
			 const float *q, uint32_t g)
{
	float best = -INFINITY;

	for (uint32_t r = 0; r < n; r++) {
		float s = 1.0f;

		if (sc)
			memcpy(&s, sc + (size_t)r * sizeof(s), sizeof(s));
		for (uint32_t j = 0; j < g; j++) {
			float acc = 0.0f;

			for (uint32_t c = 0; c < d; c++)
				acc += q[(size_t)j * d + c] *
				       (sc ? (float)((const int8_t *)k)[(size_t)r * d + c] :
					     kvcd_f16_to_f32(((const uint16_t *)k)[(size_t)r * d + c]));
			best = s * acc > best ? s * acc : best;
		}
	}
	return best;
}

int kvcd_query_init(struct kvcd_query *x, const float *q, uint32_t q_heads, uint32_t head_dim)
{
	size_t n = (size_t)q_heads * head_dim;

	memset(x, 0, sizeof(*x));
	x->q = q;
	x->q_heads = q_heads;
	x->head_dim = head_dim;
	x->pos = malloc(n * 2 * sizeof(float) + q_heads * (sizeof(float) + sizeof(int32_t)) + n);
	if (!x->pos)
		return -ENOMEM;
	x->neg = x->pos + n;
	x->q8_scale = x->neg + n;
	x->q8_bias = (int32_t *)(x->q8_scale + q_heads);
	x->q8 = (int8_t *)(x->q8_bias + q_heads);
	kvcd_quest_prep(q, (uint32_t)n, x->pos, x->neg);
	for (uint32_t j = 0; j < q_heads; j++) {
		const float *qj = q + (size_t)j * head_dim;
		int8_t *q8 = x->q8 + (size_t)j * head_dim;
		float a = 0.0f;
		int32_t sum = 0;

		for (uint32_t c = 0; c < head_dim; c++)
			a += fabsf(qj[c]);
		x->l1 = a > x->l1 ? a : x->l1;
		x->q8_scale[j] = kvcd_to_i8(qj, head_dim, q8);
		for (uint32_t c = 0; c < head_dim; c++)
			sum += q8[c];
		x->q8_bias[j] = 128 * sum;
	}
	x->l1 *= 1.0f + 0x1p-10f; /* the float sum above may have rounded down */
	return 0;
}

void kvcd_query_fini(struct kvcd_query *x)
{
	free(x->pos);
	x->pos = NULL;
}

float kvcd_summary_score(int isa, const struct kvcp_layout *l, const void *sum, uint32_t layer,
			 const struct kvcd_query *x)
{
	struct kvcd_summary s;
	const uint8_t *data = (const uint8_t *)sum + sizeof(s);
	uint32_t d = l->head_dim, g = x->q_heads / l->kv_heads;
	bool wide = isa == KVCD_ISA_AVX512 && d % 16 == 0;
	bool fast = isa != KVCD_ISA_SCALAR && d % 8 == 0 && kvcd_has_f16c();
	bool vnni = isa == KVCD_ISA_AVX512 && d % 4 == 0 && kvcd_has_vnni();
	float best = -INFINITY;
	size_t n, per;
	bool i8;

	memcpy(&s, sum, sizeof(s));
	if (!s.page || d != x->head_dim)
		return -INFINITY;
	if (s.kind == KVCD_SUMMARY_QUEST)
		return kvcd_quest_score(isa, l, s.page, (const uint16_t *)data, layer, x->pos,
					x->neg, x->l1, x->q_heads);
	if ((s.kind != KVCD_SUMMARY_REPS && s.kind != KVCD_SUMMARY_REPS8) || !s.reps)
		return -INFINITY;
	i8 = s.kind == KVCD_SUMMARY_REPS8;
	n = (size_t)kvcd_quest_pages(l, s.page) * s.reps;
	per = n * (i8 ? d + sizeof(float) : 2 * (size_t)d);
	for (uint32_t h = 0; h < l->kv_heads; h++) {
		const uint8_t *k = data + ((size_t)layer * l->kv_heads + h) * per;
		const uint8_t *sc = i8 ? k + n * d : NULL; /* 4-aligned when d % 4 == 0 */
		float v;

		if (i8 && vnni)
			v = reps_i8_vnni(k, (const float *)sc, (uint32_t)n, d, x, h * g, g);
		else if (wide)
			v = (i8 ? reps_i8_avx512 : reps_f16_avx512)(k, (const float *)sc,
								   (uint32_t)n, d, x, h * g, g);
		else if (fast)
			v = (i8 ? reps_i8_avx2 : reps_f16_avx2)(k, (const float *)sc, (uint32_t)n,
								 d, x, h * g, g);
		else
			v = reps_scalar(k, sc, (uint32_t)n, d, x->q + (size_t)h * g * d, g);
		best = v > best ? v : best;
	}
	return best / sqrtf((float)d);
}
