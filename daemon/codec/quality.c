/* quality.c - how far a compressed KV cache is from the original: tensor error and the error of
 * the attention output it produces. Double accumulation: these are measurements, not kernels. */
#include <math.h>
#include <stdlib.h>

#include "codec.h"

struct kvcd_quality kvcd_quality_of(const float *x, const float *y, size_t n)
{
	double xx = 0, yy = 0, xy = 0, ee = 0;
	struct kvcd_quality q;

	for (size_t i = 0; i < n; i++) {
		double a = x[i], b = y[i];

		xx += a * a;
		yy += b * b;
		xy += a * b;
		ee += (a - b) * (a - b);
	}
	q.rel_frob = xx > 0 ? sqrt(ee / xx) : (ee > 0 ? INFINITY : 0);
	q.cosine = xx > 0 && yy > 0 ? xy / sqrt(xx * yy) : (xx == yy ? 1 : 0);
	return q;
}

/* out[d] = softmax(q K^T / sqrt(d)) V for one query. @w has @t doubles. */
static void attend(const float *q, const float *k, const float *v, size_t t, size_t d, double *w,
		   double *out)
{
	double mx = -INFINITY, sum = 0, scale = 1.0 / sqrt((double)d);

	for (size_t j = 0; j < t; j++) {
		double s = 0;

		for (size_t c = 0; c < d; c++)
			s += (double)q[c] * k[j * d + c];
		w[j] = s * scale;
		mx = w[j] > mx ? w[j] : mx;
	}
	for (size_t j = 0; j < t; j++)
		sum += w[j] = exp(w[j] - mx);
	for (size_t c = 0; c < d; c++)
		out[c] = 0;
	for (size_t j = 0; j < t; j++)
		for (size_t c = 0; c < d; c++)
			out[c] += w[j] / sum * v[j * d + c];
}

struct kvcd_quality kvcd_quality_attention(const float *q, size_t nq, const float *k,
					   const float *v, const float *k2, const float *v2,
					   size_t t, size_t d)
{
	struct kvcd_quality r = { NAN, NAN };
	double *w = malloc(sizeof(double) * (t + 2 * d)), xx = 0, yy = 0, xy = 0, ee = 0;

	if (!w)
		return r;
	for (size_t i = 0; i < nq; i++) {
		double *o1 = w + t, *o2 = w + t + d;

		attend(q + i * d, k, v, t, d, w, o1);
		attend(q + i * d, k2, v2, t, d, w, o2);
		for (size_t c = 0; c < d; c++) {
			xx += o1[c] * o1[c];
			yy += o2[c] * o2[c];
			xy += o1[c] * o2[c];
			ee += (o1[c] - o2[c]) * (o1[c] - o2[c]);
		}
	}
	free(w);
	r.rel_frob = xx > 0 ? sqrt(ee / xx) : (ee > 0 ? INFINITY : 0);
	r.cosine = xx > 0 && yy > 0 ? xy / sqrt(xx * yy) : (xx == yy ? 1 : 0);
	return r;
}
