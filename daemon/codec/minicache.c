/* minicache.c - minicache=L: adjacent layers that share one direction per token (MiniCache).
 * Per (pair of layers, KV head) and K/V, the tokens whose directions differ most between the
 * two layers keep both rows; every other token keeps one SLERP'd direction and both layers'
 * norms. sparse.c places a pair's body in the block; this file encodes and decodes it. */
#include <math.h>
#include <string.h>

#include "internal.h"

/* ---- MiniCache: adjacent layers sharing one direction per token ---------------------------- */

/* Layer @ly under @p: 0 on its own, 1 the first of a merged pair, 2 the second. */
int kvcd_mc_role(const struct kvcd_policy *p, uint32_t layers, uint32_t ly)
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
uint64_t kvcd_mc_pair_size(const struct kvcd_policy *p, const struct kvcp_layout *l)
{
	uint64_t t = l->tokens, nk = mc_kept(p, l->tokens), es = kvcp_dtype_size(l->dtype);

	return 2 * ((t + 7) / 8 + (nk * 2 * l->head_dim + (t - nk) * (l->head_dim + 2)) * es);
}

static float mc_norm(const float *x, uint32_t d)
{
	double s = 0;

	for (uint32_t c = 0; c < d; c++)
		s += (double)x[c] * x[c];
	return (float)sqrt(s);
}

/* SLERP between the unit vectors @a and @b (either may be zero: the other is taken) into @e. */
static void slerp(const float *a, float na, const float *b, float nb, uint32_t d, float t, float *e)
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
size_t kvcd_mc_put(enum kvcd_isa isa, const struct kvcd_policy *p, const struct kvcp_layout *l,
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
size_t kvcd_mc_get(enum kvcd_isa isa, const struct kvcd_policy *p, const struct kvcp_layout *l,
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
