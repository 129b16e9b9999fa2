/* lowrank.c - rank=R: a (layer, KV head)'s kept K rows, and its V rows, as a truncated SVD
 * (U_r S_r and V_r^T, in the engine's dtype or as int8 rows with a scale each), energy=-chosen
 * ranks, and svd=layer (one SVD per layer across its heads). sparse.c lays the factors out in
 * a block; this file computes and multiplies them back. */
#include <dlfcn.h>
#include <errno.h>
#include <lapacke.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* ---- low-rank: a (layer, head)'s kept rows of K, and of V, as a truncated SVD ----------- */

uint32_t kvcd_lr_rank(const struct kvcd_policy *p, uint32_t n, uint32_t d)
{
	uint32_t r = p->rank < n ? p->rank : n;

	return r < d ? r : d;
}

/* Bytes of one of K's or V's factors for @n rows: U_r S_r [n][r] and V_r^T [r][d], in the
 * engine's dtype, or (factors=int8) as int8 rows followed by each row's f32 scale. */
uint64_t kvcd_lr_factor_bytes(const struct kvcd_policy *p, uint8_t dtype, uint32_t n, uint32_t r,
			      uint32_t d)
{
	uint64_t e = (uint64_t)n * r + (uint64_t)r * d;

	return p->lowrank & KVCD_LOWRANK_INT8 ? e + ((uint64_t)n + r) * sizeof(float)
					      : e * kvcp_dtype_size(dtype);
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
uint32_t kvcd_lr_energy_rank(float *x, uint32_t n, uint32_t d, uint32_t pct, uint32_t cap, float *u,
			     float *sv, float *vt, int *err)
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
 * as kvcd_lr_factor_bytes() lays them out. @u: n x min(n, d), @vt: min(n, d) x d, @sv: min(n, d) + 1
 * floats. */
int kvcd_lr_put(enum kvcd_isa isa, const struct kvcd_policy *p, uint8_t dtype, float *x, uint32_t n,
		uint32_t d, uint32_t r, float *u, float *sv, float *vt, uint8_t *o)
{
	uint32_t k = n < d ? n : d;
	size_t es = kvcp_dtype_size(dtype), e = (size_t)n * r + (size_t)r * d;
	int err = lapack_ready();

	if (err)
		return err;
	if (sgesdd(LAPACK_ROW_MAJOR, 'S', (lapack_int)n, (lapack_int)d, x, (lapack_int)d, sv, u,
		   (lapack_int)k, vt, (lapack_int)d))
		return -EINVAL;		   /* no convergence */
	for (uint32_t i = 0; i < n; i++) { /* U_r S_r, compacted in place to n x r */
		for (uint32_t j = 0; j < r; j++)
			x[(size_t)i * r + j] = u[(size_t)i * k + j] * sv[j];
	}
	if (p->lowrank & KVCD_LOWRANK_INT8) {
		rows_to_i8(x, n, r, (int8_t *)o, o + e);
		rows_to_i8(vt, r, d, (int8_t *)o + (size_t)n * r,
			   o + e + (size_t)n * sizeof(float));
		return 0;
	}
	kvcd_from_f32(isa, dtype, x, o, (size_t)n * r);
	kvcd_from_f32(isa, dtype, vt, o + (size_t)n * r * es, (size_t)r * d);
	return 0;
}

/* @n rows of @d from the factors at @in into @out (@dtype). @a: n x r + r x d + d floats. */
void kvcd_lr_get(enum kvcd_isa isa, const struct kvcd_policy *p, uint8_t dtype, const uint8_t *in,
		 uint32_t n, uint32_t d, uint32_t r, float *a, uint8_t *out)
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

/* svd=layer: the layer's K and V planes (@kp, @vp: [T][heads x d]) as rank-r factors to
 * @o. @buf: T x hd + T x k + k + 1 + k x hd floats, hd = heads x d, k = min(T, hd). */
int kvcd_lr_layer_put(enum kvcd_isa isa, const struct kvcd_policy *p, const struct kvcp_layout *l,
		      const float *kp, const float *vp, float *buf, uint8_t *o)
{
	uint32_t t = l->tokens, hd = (uint32_t)l->kv_heads * l->head_dim, k = t < hd ? t : hd;
	uint32_t r = kvcd_lr_rank(p, t, hd);
	float *x = buf, *u = x + (size_t)t * hd, *sv = u + (size_t)t * k, *vt = sv + k + 1;
	int err;

	memcpy(x, kp, (size_t)t * hd * 4);
	err = kvcd_lr_put(isa, p, l->dtype, x, t, hd, r, u, sv, vt, o);
	if (err)
		return err;
	memcpy(x, vp, (size_t)t * hd * 4);
	return kvcd_lr_put(isa, p, l->dtype, x, t, hd, r, u, sv, vt,
			   o + kvcd_lr_factor_bytes(p, l->dtype, t, r, hd));
}

/* svd=layer: a layer's factors at @in back into every head's K and V rows at @out (the
 * sparse form: per head T K rows, then T V rows). @buf: T x r + r x hd + hd floats, then
 * T x hd elements. */
void kvcd_lr_layer_get(enum kvcd_isa isa, const struct kvcd_policy *p, const struct kvcp_layout *l,
		       const uint8_t *in, float *buf, uint8_t *out)
{
	uint32_t t = l->tokens, h = l->kv_heads, hd = h * (uint32_t)l->head_dim;
	uint32_t r = kvcd_lr_rank(p, t, hd);
	size_t row = (size_t)l->head_dim * kvcp_dtype_size(l->dtype);
	uint8_t *plane = (uint8_t *)(buf + (size_t)t * r + (size_t)r * hd + hd);

	for (int kv = 0; kv < 2; kv++) {
		kvcd_lr_get(isa, p, l->dtype, in + kv * kvcd_lr_factor_bytes(p, l->dtype, t, r, hd),
			    t, hd, r, buf, plane);
		for (uint32_t hh = 0; hh < h; hh++)
			for (uint32_t j = 0; j < t; j++)
				memcpy(out + (((size_t)hh * 2 + kv) * t + j) * row,
				       plane + ((size_t)j * h + hh) * row, row);
	}
}

/* What layer_get's @buf needs (0 unless svd=layer). */
size_t kvcd_lr_layer_get_bytes(const struct kvcd_policy *p, const struct kvcp_layout *l)
{
	size_t t = l->tokens, hd = (size_t)l->kv_heads * l->head_dim;
	size_t r = kvcd_lr_rank(p, l->tokens, (uint32_t)hd);

	if (!(p->lowrank & KVCD_LOWRANK_LAYER))
		return 0;
	return (t * r + r * hd + hd) * 4 + t * hd * kvcp_dtype_size(l->dtype);
}