/* scores.c - which tokens of a block matter: SnapKV, H2O's accumulated attention (sent by the
 * engine), key norm and recency scores; the keep set (sinks, window, top scores); PyramidKV's
 * per-layer and Ada-KV's per-head budgets. Pure functions over f32 key rows; the caller owns
 * every buffer. sparse.c applies them to whole blocks. */
#include <errno.h>
#include <immintrin.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
bool kvcd_scores_simd = true;

/* q.k * @inv of the query @q against keys 0..@n of @kt ([d][tp], a head's keys transposed),
 * 64 keys an iteration in four independent sums. Each lane adds its products in channel
 * order, with no fused multiply-add, exactly as the scalar loop does: the same floats. */
__attribute__((target("avx512f"))) static void dots_avx512(const float *kt, size_t tp, uint32_t n,
							   uint32_t d, const float *q, float inv,
							   float *out)
{
	const __m512 vinv = _mm512_set1_ps(inv);

	for (uint32_t k = 0; k < n; k += 64) {
		__m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
		uint32_t left = n - k;

		for (uint32_t c = 0; c < d; c++) {
			const float *row = kt + (size_t)c * tp + k;
			__m512 qc = _mm512_set1_ps(q[c]);

			a0 = _mm512_add_ps(a0, _mm512_mul_ps(qc, _mm512_loadu_ps(row)));
			if (left > 16)
				a1 = _mm512_add_ps(a1,
						   _mm512_mul_ps(qc, _mm512_loadu_ps(row + 16)));
			if (left > 32)
				a2 = _mm512_add_ps(a2,
						   _mm512_mul_ps(qc, _mm512_loadu_ps(row + 32)));
			if (left > 48)
				a3 = _mm512_add_ps(a3,
						   _mm512_mul_ps(qc, _mm512_loadu_ps(row + 48)));
		}
		__m512 acc[4] = { a0, a1, a2, a3 };

		for (uint32_t j = 0; j < 4 && 16 * j < left; j++) {
			uint32_t m = left - 16 * j < 16 ? left - 16 * j : 16;

			_mm512_mask_storeu_ps(out + k + 16 * j, (__mmask16)((1u << m) - 1),
					      _mm512_mul_ps(acc[j], vinv));
		}
	}
}

/* e^x, for SnapKV's softmax weights, the same float on every path: Cody-Waite reduction by
 * ln 2 and a degree-6 Taylor polynomial on [-ln2/2, ln2/2] (within about an ulp), each step a
 * separate IEEE multiply or add, so the scalar and the vector code agree bit for bit where
 * libm's expf and a vector exp would not. Below -87 it is 0; above 88, e^88. */
#define EXP_LOG2E  1.44269504f
#define EXP_LN2_HI 0.693145752f /* ln 2 in its upper bits, so that n * it is exact */
#define EXP_LN2_LO 1.42860677e-06f

static const float exp_c[7] = { 1.0f, 1.0f, 0.5f, 1.0f / 6, 1.0f / 24, 1.0f / 120, 1.0f / 720 };

static float exp_det(float x)
{
	float n, r, p = exp_c[6];
	uint32_t e;

	if (!(x > -87.0f))
		return 0.0f;
	x = x < 88.0f ? x : 88.0f;
	n = rintf(x * EXP_LOG2E);
	r = x - n * EXP_LN2_HI;
	r = r - n * EXP_LN2_LO;
	for (int i = 5; i >= 0; i--)
		p = p * r + exp_c[i];
	e = (uint32_t)((int32_t)n + 127) << 23;
	memcpy(&n, &e, sizeof(n));
	return p * n;
}

/* exp_det of 16 lanes. */
__attribute__((target("avx512f"))) static __m512 exp_det16(__m512 x)
{
	__mmask16 zero = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_NGT_UQ);
	__m512 n, r, p = _mm512_set1_ps(exp_c[6]);

	x = _mm512_min_ps(x, _mm512_set1_ps(88.0f));
	n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(EXP_LOG2E)),
				 _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
	r = _mm512_sub_ps(x, _mm512_mul_ps(n, _mm512_set1_ps(EXP_LN2_HI)));
	r = _mm512_sub_ps(r, _mm512_mul_ps(n, _mm512_set1_ps(EXP_LN2_LO)));
	for (int i = 5; i >= 0; i--)
		p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(exp_c[i]));
	p = _mm512_mul_ps(
		p, _mm512_castsi512_ps(_mm512_slli_epi32(
			   _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23)));
	return _mm512_mask_mov_ps(p, zero, _mm512_setzero_ps());
}

/* tmp[k] = e^(tmp[k] - mx) for k < n, 16 at a time. */
__attribute__((target("avx512f"))) static void exps_avx512(float *tmp, uint32_t n, float mx)
{
	const __m512 vmx = _mm512_set1_ps(mx);

	for (uint32_t k = 0; k < n; k += 16) {
		__mmask16 m = n - k >= 16 ? 0xffff : (__mmask16)((1u << (n - k)) - 1);
		__m512 x = _mm512_maskz_loadu_ps(m, tmp + k);

		_mm512_mask_storeu_ps(tmp + k, m, exp_det16(_mm512_sub_ps(x, vmx)));
	}
}

/* Keys @keys ([t] rows @stride apart, @d channels) transposed to [d][tp], tp = t rounded up
 * to 64 (the rest zero), or NULL when the vector path does not apply. */
static float *keys_t(const float *keys, uint32_t stride, uint32_t t, uint32_t d, size_t *tp)
{
	float *kt;

	if (!kvcd_scores_simd || kvcd_isa_best() < KVCD_ISA_AVX512 || t < 16)
		return NULL;
	*tp = ((size_t)t + 63) & ~(size_t)63;
	kt = calloc((size_t)d * *tp, sizeof(*kt));
	for (uint32_t k = 0; kt && k < t; k++)
		for (uint32_t c = 0; c < d; c++)
			kt[(size_t)c * *tp + k] = keys[(size_t)k * stride + c];
	return kt;
}

void kvcd_score_snapkv(const float *keys, uint32_t stride, uint32_t t, uint32_t d, const float *q,
		       const float *lse, uint32_t g, uint32_t w, int64_t qpos, uint32_t kernel,
		       float *tmp, float *score)
{
	float inv = 1.0f / sqrtf((float)d);
	size_t tp = 0;
	float *kt = keys_t(keys, stride, t, d, &tp);

	memset(score, 0, (size_t)t * sizeof(*score));
	for (uint32_t h = 0; h < g; h++)
		for (uint32_t i = 0; i < w; i++) {
			const float *qi = q + ((size_t)h * w + i) * d;
			int64_t last = qpos + i; /* causal: keys up to its own position */
			uint32_t seen = last < 0 ? 0 : last >= t ? t : (uint32_t)last + 1;
			float mx = -INFINITY, sum = 0.0f;

			if (kt && seen)
				dots_avx512(kt, tp, seen, d, qi, inv, tmp);
			for (uint32_t k = 0; !kt && k < seen; k++) {
				const float *kk = keys + (size_t)k * stride;
				float dot = 0.0f;

				for (uint32_t c = 0; c < d; c++)
					dot += qi[c] * kk[c];
				tmp[k] = dot * inv;
			}
			for (uint32_t k = 0; k < seen; k++)
				mx = tmp[k] > mx ? tmp[k] : mx;
			if (lse) /* the sequence's normaliser: the block's share of attention */
				mx = lse[(size_t)h * w + i];
			if (kt)
				exps_avx512(tmp, seen, mx);
			for (uint32_t k = 0; !kt && k < seen; k++)
				tmp[k] = exp_det(tmp[k] - mx);
			for (uint32_t k = 0; k < seen; k++)
				sum += tmp[k];
			sum = lse ? 1.0f : sum;
			for (uint32_t k = 0; k < seen; k++)
				score[k] += tmp[k] / sum;
		}
	free(kt);
	kvcd_score_pool(score, t, kernel, tmp);
}

void kvcd_score_pool(float *score, uint32_t t, uint32_t kernel, float *tmp)
{
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

void kvcd_score_keynorm(const float *keys, uint32_t stride, uint32_t t, uint32_t d, float *score)
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

void kvcd_budget_heads(const float *frac, uint32_t heads, uint32_t t, uint32_t budget,
		       uint32_t local, double eps, uint32_t *counts)
{
	uint64_t left = (uint64_t)heads * budget;
	uint32_t order[256], nr = 0;
	double sum = 0, cum = 0;
	bool streaming[256] = { false };

	heads = heads < 256 ? heads : 256;
	local = local < budget ? local : budget; /* a streaming head never keeps more */
	for (uint32_t h = 0; h < heads; h++) {
		order[h] = h;
		sum += frac[h] > 0 ? frac[h] : 0;
	}
	for (uint32_t i = 1; i < heads; i++) /* ascending share beyond the local tokens */
		for (uint32_t k = i; k > 0 && frac[order[k]] < frac[order[k - 1]]; k--) {
			uint32_t x = order[k];

			order[k] = order[k - 1];
			order[k - 1] = x;
		}
	for (uint32_t i = 0; i + 1 < heads; i++) { /* at least one retrieval head stays */
		cum += frac[order[i]] > 0 ? frac[order[i]] : 0;
		if (cum > eps * sum)
			break;
		streaming[order[i]] = true;
	}
	for (uint32_t h = 0; h < heads; h++) {
		counts[h] = streaming[h] ? local : 0;
		left -= counts[h];
		nr += !streaming[h];
	}
	/* water-filling: the retrieval heads share what is left equally, each up to t */
	while (left && nr) {
		uint64_t each = left / nr, extra = left % nr;
		uint32_t open = 0;

		for (uint32_t h = 0; h < heads; h++) {
			uint64_t want, give;

			if (streaming[h] || counts[h] >= t)
				continue;
			want = each + (extra ? 1 : 0);
			extra -= extra ? 1 : 0;
			give = t - counts[h] < want ? t - counts[h] : want;
			counts[h] += (uint32_t)give;
			left -= give;
			open += counts[h] < t;
		}
		if (open == nr && !each)
			break;
		nr = open;
	}
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
