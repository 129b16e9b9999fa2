/* lowrank.c - rank=R: a (layer, KV head)'s kept K rows, and its V rows, as a truncated SVD
 * (U_r S_r and V_r^T, in the engine's dtype or as int8 rows with a scale each), energy=-chosen
 * ranks, and svd=layer (one SVD per layer across its heads). sparse.c lays the factors out in
 * a block; this file computes and multiplies them back. */
#include <dlfcn.h>
#include <errno.h>
#include <lapacke.h>
#include <math.h>
#include <stddef.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "rc.h"

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
/* CBLAS's ssyrk, from the BLAS LAPACKE depends on (the CBLAS enums by value: RowMajor 101,
 * Upper 121, Trans 112); NULL: the plain loop in gram_add */
typedef void (*ssyrk_fn)(int, int, int, int, int, float, const float *, int, float, float *, int);
static ssyrk_fn ssyrk;
/* LAPACKE's symmetric eigensolver, for the Gram matrices (NULL: their SVD instead) */
typedef lapack_int (*ssyevd_fn)(int, char, char, lapack_int, float *, lapack_int, float *);
static ssyevd_fn ssyevd;
/* CBLAS's sgemm (RowMajor 101, NoTrans 111, Trans 112): learned='s projections, which a plain
 * loop does two orders of magnitude slower; NULL: that loop */
typedef void (*sgemm_fn)(int, int, int, int, int, int, float, const float *, int, const float *,
			 int, float, float *, int);
static sgemm_fn sgemm;

static void lapack_load(void)
{
	void *h = dlopen("liblapacke.so.3", RTLD_NOW | RTLD_LOCAL);
	void (*threads)(int);

	if (!h)
		return;
	sgesdd = (sgesdd_fn)dlsym(h, "LAPACKE_sgesdd");
	ssyrk = (ssyrk_fn)dlsym(h, "cblas_ssyrk");
	sgemm = (sgemm_fn)dlsym(h, "cblas_sgemm");
	ssyevd = (ssyevd_fn)dlsym(h, "LAPACKE_ssyevd");
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

/* The smallest rank whose squared singular values @sv[0..k) reach @pct percent of their sum
 * (at least 1), at most @cap. */
static uint32_t energy_of(const float *sv, uint32_t k, uint32_t pct, uint32_t cap)
{
	double total = 0, acc = 0;
	uint32_t r = 0;

	for (uint32_t i = 0; i < k; i++)
		total += (double)sv[i] * sv[i];
	while (r < k && acc < total * pct / 100.0 * (1 - 1e-12)) {
		acc += (double)sv[r] * sv[r];
		r++;
	}
	r = r ? r : 1;
	return r < cap ? r : cap;
}

/* energy=: the smallest rank whose squared singular values (of @x, [n][d], destroyed) reach
 * @pct percent of their sum, at most @cap; 0 on failure (-errno in *@err). @u, @sv, @vt as
 * for lowrank_put. */
uint32_t kvcd_lr_energy_rank(float *x, uint32_t n, uint32_t d, uint32_t pct, uint32_t cap, float *u,
			     float *sv, float *vt, int *err)
{
	uint32_t k = n < d ? n : d;

	if ((*err = lapack_ready()))
		return 0;
	if (sgesdd(LAPACK_ROW_MAJOR, 'N', (lapack_int)n, (lapack_int)d, x, (lapack_int)d, sv, u,
		   (lapack_int)k, vt, (lapack_int)d)) {
		*err = -EINVAL;
		return 0;
	}
	return energy_of(sv, k, pct, cap);
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

/* RoPE's rotation of a row @x of @d (pairs 2i, 2i+1) at position @p, or its inverse (@sign
 * -1); @inv: the d/2 frequencies, base^(-2i/d). */
static void rope_row(float *x, uint32_t d, double p, const double *inv, double sign)
{
	for (uint32_t i = 0; i < d / 2; i++) {
		double a = sign * p * inv[i], c = cos(a), sn = sin(a);
		double x0 = x[2 * i], x1 = x[2 * i + 1];

		x[2 * i] = (float)(x0 * c - x1 * sn);
		x[2 * i + 1] = (float)(x0 * sn + x1 * c);
	}
}

/* @inv: the frequencies of RoPE base @rope for rows of @d (at most 255 channels). */
static void rope_freqs(uint32_t rope, uint32_t d, double *inv)
{
	for (uint32_t i = 0; i < d / 2; i++)
		inv[i] = pow((double)rope, -2.0 * i / d);
}

void kvcd_lr_unrope(float *x, uint32_t n, uint32_t d, uint32_t rope, uint32_t pos,
		    const uint32_t *tok)
{
	double inv[128];

	rope_freqs(rope, d, inv);
	for (uint32_t i = 0; i < n; i++)
		rope_row(x + (size_t)i * d, d, (double)pos + (tok ? tok[i] : i), inv, -1.0);
}

static int lapack_ready(void);

/* @c ([n][r]) = @x ([n][d]) times the transpose of @bt ([r][d]): each row's coefficients over
 * the basis rows. */
static void project(const float *x, uint32_t n, uint32_t d, uint32_t r, const float *bt, float *c)
{
	lapack_ready();
	if (sgemm && n && r) {
		sgemm(101, 111, 112, (int)n, (int)r, (int)d, 1.0f, x, (int)d, bt, (int)d, 0.0f, c,
		      (int)r);
		return;
	}
	for (uint32_t i = 0; i < n; i++)
		for (uint32_t j = 0; j < r; j++) {
			const float *row = x + (size_t)i * d, *v = bt + (size_t)j * d;
			float s = 0;

			for (uint32_t k = 0; k < d; k++)
				s += row[k] * v[k];
			c[(size_t)i * r + j] = s;
		}
}

/* The @n rows of @a ([n][r]) times @b ([r][d]) to @out in @dtype, each rotated by RoPE of
 * frequencies @inv (NULL: none) at @pos + @tok[i] (@tok NULL: + i): by sgemm into one buffer,
 * or where there is none, one row at a time through @row (d floats). */
static void rows_times_rope(enum kvcd_isa isa, uint8_t dtype, const float *a, uint32_t n,
			    uint32_t r, const float *b, uint32_t d, const double *inv, uint32_t pos,
			    const uint32_t *tok, float *row, uint8_t *out)
{
	size_t es = kvcp_dtype_size(dtype);
	float *all = NULL;

	lapack_ready();
	if (sgemm && n && r && (size_t)n * d <= (1u << 24))
		all = malloc((size_t)n * d * 4);
	if (all) { /* every row at once, then each turned and converted */
		sgemm(101, 111, 111, (int)n, (int)d, (int)r, 1.0f, a, (int)r, b, (int)d, 0.0f, all,
		      (int)d);
		for (uint32_t i = 0; i < n; i++) {
			float *x = all + (size_t)i * d;

			if (inv)
				rope_row(x, d, (double)pos + (tok ? tok[i] : i), inv, 1.0);
			kvcd_from_f32(isa, dtype, x, out + (size_t)i * d * es, d);
		}
		free(all);
		return;
	}
	for (uint32_t i = 0; i < n; i++) {
		memset(row, 0, (size_t)d * 4);
		for (uint32_t j = 0; j < r; j++)
			for (uint32_t c = 0; c < d; c++)
				row[c] += a[(size_t)i * r + j] * b[(size_t)j * d + c];
		if (inv)
			rope_row(row, d, (double)pos + (tok ? tok[i] : i), inv, 1.0);
		kvcd_from_f32(isa, dtype, row, out + (size_t)i * d * es, d);
	}
}

/* The @n rows of @a ([n][r]) times @b ([r][d]) to @out in @dtype, one row at a time through
 * @row (d floats). */
static void rows_times(enum kvcd_isa isa, uint8_t dtype, const float *a, uint32_t n, uint32_t r,
		       const float *b, uint32_t d, float *row, uint8_t *out)
{
	rows_times_rope(isa, dtype, a, n, r, b, d, NULL, 0, NULL, row, out);
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
	rows_times(isa, dtype, a, n, r, b, d, row, out);
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
/* ---- tensor=tucker: a layer's K (and V) as one 3-way tensor [tokens][heads][head_dim] ------
 * Higher-order SVD: each mode's factor is the leading left singular vectors of that mode's
 * unfolding, with the smallest rank keeping energy= of its squared singular values (the
 * token mode capped by rank=); the core is the tensor projected on the three factors. Stored
 * in the engine's dtype: core [r1][r2][r3], then U1 [T][r1], U2 [H][r2], U3 [D][r3]. */

static inline uint32_t min_u32(uint32_t a, uint32_t b)
{
	return a < b ? a : b;
}

uint64_t kvcd_tk_bytes(const struct kvcp_layout *l, const uint32_t *r)
{
	return ((uint64_t)r[0] * r[1] * r[2] + (uint64_t)l->tokens * r[0] +
		(uint64_t)l->kv_heads * r[1] + (uint64_t)l->head_dim * r[2]) *
	       kvcp_dtype_size(l->dtype);
}

size_t kvcd_tk_buf_floats(const struct kvcp_layout *l)
{
	size_t t = l->tokens, h = l->kv_heads, d = l->head_dim, n = t * h * d;

	return 8 * n + 2 * h * h + 2 * d * d + t + h * d + 16;
}

bool kvcd_tk_ranks_ok(const struct kvcd_policy *p, const struct kvcp_layout *l, const uint32_t *r)
{
	uint32_t hd = (uint32_t)l->kv_heads * l->head_dim;

	return r[0] >= 1 && r[0] <= min_u32(min_u32(l->tokens, hd), p->rank) && r[1] >= 1 &&
	       r[1] <= min_u32(l->kv_heads, 255) && r[2] >= 1 && r[2] <= min_u32(l->head_dim, 255);
}

/* Floats of a mode's left singular vectors, the largest of the three. */
static size_t tk_u_floats(const struct kvcp_layout *l)
{
	size_t h = l->kv_heads, d = l->head_dim;

	return (size_t)l->tokens * h * d + h * h + d * d;
}

/* Mode @mode's unfolding of @x ([T][H][D]) into @m: rows the mode's index, columns the other
 * two in order. Returns its row count; *@cols the columns. */
static uint32_t unfold(const struct kvcp_layout *l, const float *x, int mode, float *m,
		       uint32_t *cols)
{
	uint32_t t = l->tokens, h = l->kv_heads, d = l->head_dim;

	if (mode == 0) {
		memcpy(m, x, (size_t)t * h * d * 4);
		*cols = h * d;
		return t;
	}
	for (uint32_t i = 0; i < t; i++)
		for (uint32_t j = 0; j < h; j++)
			for (uint32_t c = 0; c < d; c++) {
				float v = x[((size_t)i * h + j) * d + c];

				if (mode == 1)
					m[(size_t)j * t * d + (size_t)i * d + c] = v;
				else
					m[(size_t)c * t * h + (size_t)i * h + j] = v;
			}
	*cols = mode == 1 ? t * d : t * h;
	return mode == 1 ? h : d;
}

/* The SVD of mode @mode's unfolding: singular values in @sv, left vectors in @u (rows x k,
 * k = min(rows, cols)) when @vectors. @buf: the unfolding's copy and V^T. Returns k, or 0. */
static uint32_t mode_svd(const struct kvcp_layout *l, const float *x, int mode, bool vectors,
			 float *buf, float *u, float *sv)
{
	uint32_t cols, rows = unfold(l, x, mode, buf, &cols), k = min_u32(rows, cols);
	float *vt = buf + (size_t)rows * cols;

	if (sgesdd(LAPACK_ROW_MAJOR, vectors ? 'S' : 'N', (lapack_int)rows, (lapack_int)cols, buf,
		   (lapack_int)cols, sv, u, (lapack_int)k, vt, (lapack_int)cols))
		return 0;
	return k;
}

int kvcd_tk_ranks(const struct kvcd_policy *p, const struct kvcp_layout *l, const float *x,
		  float *buf, uint32_t *r)
{
	size_t n = (size_t)l->tokens * l->kv_heads * l->head_dim;
	float *u = buf + 2 * n, *sv = u + tk_u_floats(l); /* 'N': u is not written */
	uint32_t caps[3] = { p->rank, 255, 255 };
	int err = lapack_ready();

	for (int m = 0; m < 3 && !err; m++) {
		uint32_t k = mode_svd(l, x, m, false, buf, u, sv);

		if (!k)
			return -EINVAL;
		r[m] = energy_of(sv, k, p->energy, caps[m]);
	}
	return err;
}

/* Multiply the [a][b][c] tensor @x along its middle index by the @b x @nb matrix @f
 * (transposed when @t): out [a][nb][c]. */
static void mode_mul(const float *x, uint32_t a, uint32_t b, uint32_t c, const float *f,
		     uint32_t nb, bool t, float *out)
{
	memset(out, 0, (size_t)a * nb * c * 4);
	for (uint32_t i = 0; i < a; i++)
		for (uint32_t j = 0; j < b; j++)
			for (uint32_t q = 0; q < nb; q++) {
				float w = t ? f[(size_t)j * nb + q] : f[(size_t)q * b + j];
				const float *src = x + ((size_t)i * b + j) * c;
				float *dst = out + ((size_t)i * nb + q) * c;

				for (uint32_t z = 0; z < c; z++)
					dst[z] += w * src[z];
			}
}

int kvcd_tk_put(enum kvcd_isa isa, const struct kvcp_layout *l, const float *x, const uint32_t *r,
		float *buf, uint8_t *o)
{
	uint32_t t = l->tokens, h = l->kv_heads, d = l->head_dim;
	size_t n = (size_t)t * h * d, es = kvcp_dtype_size(l->dtype);
	float *u = buf + 2 * n, *sv = u + tk_u_floats(l), *f[3], *y1, *y2, *g;
	uint32_t dim[3] = { t, h, d };
	int err = lapack_ready();

	if (err)
		return err;
	f[0] = sv + t + (size_t)h * d + 16;
	f[1] = f[0] + (size_t)t * r[0];
	f[2] = f[1] + (size_t)h * r[1];
	y1 = f[2] + (size_t)d * r[2];
	y2 = y1 + n;
	g = y2 + n;
	for (int m = 0; m < 3; m++) { /* U_m: the first r[m] left singular vectors */
		uint32_t k = mode_svd(l, x, m, true, buf, u, sv);

		if (!k || r[m] > k)
			return -EINVAL;
		for (uint32_t i = 0; i < dim[m]; i++)
			memcpy(f[m] + (size_t)i * r[m], u + (size_t)i * k, (size_t)r[m] * 4);
	}
	/* core = x x1 U1^T x2 U2^T x3 U3^T: tokens, then heads, then channels */
	mode_mul(x, 1, t, h * d, f[0], r[0], true, y1);	      /* [r1][h * d] */
	mode_mul(y1, r[0], h, d, f[1], r[1], true, y2);	      /* [r1][r2][d] */
	mode_mul(y2, r[0] * r[1], d, 1, f[2], r[2], true, g); /* [r1 r2][r3] */
	kvcd_from_f32(isa, l->dtype, g, o, (size_t)r[0] * r[1] * r[2]);
	o += (size_t)r[0] * r[1] * r[2] * es;
	for (int m = 0; m < 3; m++) {
		kvcd_from_f32(isa, l->dtype, f[m], o, (size_t)dim[m] * r[m]);
		o += (size_t)dim[m] * r[m] * es;
	}
	return 0;
}

void kvcd_tk_get(enum kvcd_isa isa, const struct kvcp_layout *l, const uint8_t *in,
		 const uint32_t *r, float *buf, float *x)
{
	uint32_t t = l->tokens, h = l->kv_heads, d = l->head_dim;
	size_t n = (size_t)t * h * d, es = kvcp_dtype_size(l->dtype);
	float *g = buf, *f[3], *w2, *w1;
	uint32_t dim[3] = { t, h, d };

	f[0] = g + n;
	f[1] = f[0] + (size_t)t * r[0];
	f[2] = f[1] + (size_t)h * r[1];
	w2 = f[2] + (size_t)d * r[2];
	w1 = w2 + n;
	kvcd_to_f32(isa, l->dtype, in, g, (size_t)r[0] * r[1] * r[2]);
	in += (size_t)r[0] * r[1] * r[2] * es;
	for (int m = 0; m < 3; m++) {
		kvcd_to_f32(isa, l->dtype, in, f[m], (size_t)dim[m] * r[m]);
		in += (size_t)dim[m] * r[m] * es;
	}
	mode_mul(g, r[0] * r[1], r[2], 1, f[2], d, false, w2); /* [r1 r2][d] */
	mode_mul(w2, r[0], r[1], d, f[1], h, false, w1);       /* [r1][h][d] */
	mode_mul(w1, 1, r[0], h * d, f[0], t, false, x);       /* [t][h d] */
}

/* ---- learned=: coefficients over a namespace's basis (codec.h) ------------------------------- */

static size_t basis_lh(const struct kvcd_basis_hdr *h)
{
	return (size_t)h->layers * h->kv_heads;
}

/* Where the rows start: after the header and the ranks, padded to 8 bytes. */
static size_t basis_rows_at(const struct kvcd_basis_hdr *h)
{
	return (sizeof(*h) + 2 * basis_lh(h) + 7) & ~(size_t)7;
}

/* Rows of every unit together: the sum of the ranks. */
static uint64_t basis_nrows(const struct kvcd_basis_hdr *h, const uint8_t *rk)
{
	uint64_t rows = 0;

	for (size_t i = 0; i < 2 * basis_lh(h); i++)
		rows += rk[i];
	return rows;
}

/* KVB2's tail, after the rows: u32 rope, u32 0, f32 weight[layers][2] (K, V), then f32
 * var[rows]. */
#define TAIL_HEAD 8
static size_t basis_tail_bytes(const struct kvcd_basis_hdr *h, uint64_t rows)
{
	return h->magic == KVCD_BASIS_MAGIC ? TAIL_HEAD + ((size_t)h->layers * 2 + rows) * 4 : 0;
}

const uint8_t *kvcd_basis_ranks(const void *b)
{
	return (const uint8_t *)b + sizeof(struct kvcd_basis_hdr);
}

/* Rows before unit @u's K (@kv 0) or V (1). */
static size_t rows_before(const void *b, size_t u, int kv)
{
	const uint8_t *rk = kvcd_basis_ranks(b);
	size_t at = 0;

	for (size_t i = 0; i < 2 * u + (size_t)kv; i++)
		at += rk[i];
	return at;
}

const float *kvcd_basis_rows(const void *b, size_t u, int kv)
{
	struct kvcd_basis_hdr h;

	memcpy(&h, b, sizeof(h));
	return (const float *)((const uint8_t *)b + basis_rows_at(&h)) +
	       rows_before(b, u, kv) * h.head_dim;
}

/* The tail, or NULL for a KVB1 basis (which has none). */
static const uint8_t *basis_tail(const void *b)
{
	struct kvcd_basis_hdr h;

	memcpy(&h, b, sizeof(h));
	if (h.magic != KVCD_BASIS_MAGIC)
		return NULL;
	return (const uint8_t *)b + basis_rows_at(&h) +
	       basis_nrows(&h, kvcd_basis_ranks(b)) * h.head_dim * 4;
}

static const float *basis_weights(const void *b)
{
	const uint8_t *t = basis_tail(b);

	return t ? (const float *)(t + TAIL_HEAD) : NULL;
}

uint32_t kvcd_basis_rope(const void *b)
{
	const uint8_t *t = basis_tail(b);
	uint32_t r = 0;

	if (t)
		memcpy(&r, t, 4);
	return r;
}

const float *kvcd_basis_vars(const void *b, size_t u, int kv)
{
	struct kvcd_basis_hdr h;
	const float *w = basis_weights(b);

	memcpy(&h, b, sizeof(h));
	return w ? w + 2 * (size_t)h.layers + rows_before(b, u, kv) : NULL;
}

float kvcd_basis_weight(const void *b, uint32_t layer, int kv)
{
	const float *w = basis_weights(b);

	return w ? w[2 * (size_t)layer + (size_t)kv] : 1.0f;
}

int kvcd_basis_shape_ok(const void *b, uint64_t len)
{
	struct kvcd_basis_hdr h;
	const uint8_t *rk;

	if (len < sizeof(h))
		return -EBADMSG;
	memcpy(&h, b, sizeof(h));
	if ((h.magic != KVCD_BASIS_MAGIC && h.magic != KVCD_BASIS_MAGIC_V1) || !h.version ||
	    h.bytes != len || !h.layers || !h.kv_heads || !h.head_dim || h.head_dim > 255 ||
	    !h.energy || h.energy > 100 || basis_lh(&h) > (1u << 20) || len < basis_rows_at(&h))
		return -EBADMSG;
	rk = kvcd_basis_ranks(b);
	for (size_t i = 0; i < 2 * basis_lh(&h); i++)
		if (!rk[i] || rk[i] > h.head_dim)
			return -EBADMSG;
	return len == basis_rows_at(&h) + basis_nrows(&h, rk) * h.head_dim * 4 +
				       basis_tail_bytes(&h, basis_nrows(&h, rk))
		       ? 0
		       : -EBADMSG;
}

int kvcd_basis_check(const void *b, uint64_t len)
{
	struct kvcd_basis_hdr h;
	uint64_t rows;
	const float *x;
	uint32_t pad;

	if (kvcd_basis_shape_ok(b, len))
		return -EBADMSG;
	memcpy(&h, b, sizeof(h));
	rows = basis_nrows(&h, kvcd_basis_ranks(b));
	x = (const float *)((const uint8_t *)b + basis_rows_at(&h));
	for (uint64_t i = 0; i < rows * h.head_dim; i++)
		if (!isfinite(x[i]))
			return -EBADMSG;
	if (!basis_tail_bytes(&h, rows))
		return 0;
	x += rows * h.head_dim + TAIL_HEAD / 4;
	memcpy(&pad, x - 1, 4);
	if (pad || kvcd_basis_rope(b) > 100000000 || (kvcd_basis_rope(b) && h.head_dim % 2))
		return -EBADMSG;
	for (uint64_t i = 0; i < 2 * (uint64_t)h.layers + rows; i++) /* weights > 0, vars >= 0 */
		if (!isfinite(x[i]) || x[i] < 0 || (i < 2 * (uint64_t)h.layers && !(x[i] > 0)))
			return -EBADMSG;
	return 0;
}

void kvcd_basis_seal(void *b, uint64_t id)
{
	memcpy((uint8_t *)b + offsetof(struct kvcd_basis_hdr, id), &id, sizeof(id));
}

/* @x's @n rows' (@stride apart) second moment, accumulated into the upper triangle of @g
 * (d x d): by BLAS when there is one (a calibration of a large model is billions of
 * multiply-adds), else plainly. */
static void gram_add(const float *x, size_t n, size_t stride, uint32_t d, float *g)
{
	if (ssyrk && n <= INT32_MAX && stride <= INT32_MAX) {
		ssyrk(101, 121, 112, (int)d, (int)n, 1.0f, x, (int)stride, 1.0f, g, (int)d);
		return;
	}
	for (size_t t = 0; t < n; t++) {
		const float *r = x + t * stride;

		for (uint32_t i = 0; i < d; i++) {
			float a = r[i];
			float *gi = g + (size_t)i * d;

			for (uint32_t j = i; j < d; j++)
				gi[j] += a * r[j];
		}
	}
}

/* The eigenvectors of the symmetric @g (d x d, destroyed) as rows of @vt, largest first,
 * and the square roots of their eigenvalues (the rows' singular values) in @sv; @u: d x d
 * floats of scratch. A second moment's singular values are its eigenvalues, so the SVD
 * serves where LAPACKE lacks the symmetric solver, only slower. */
static int gram_eig(float *g, uint32_t d, float *sv, float *u, float *vt)
{
	if (ssyevd) {
		if (ssyevd(LAPACK_ROW_MAJOR, 'V', 'U', (lapack_int)d, g, (lapack_int)d, u))
			return -EINVAL;
		for (uint32_t k = 0; k < d; k++) { /* ascending: the last is the largest */
			sv[k] = sqrtf(fmaxf(u[d - 1 - k], 0.0f));
			for (uint32_t i = 0; i < d; i++)
				vt[(size_t)k * d + i] = g[(size_t)i * d + (d - 1 - k)];
		}
		return 0;
	}
	if (sgesdd(LAPACK_ROW_MAJOR, 'S', (lapack_int)d, (lapack_int)d, g, (lapack_int)d, sv, u,
		   (lapack_int)d, vt, (lapack_int)d))
		return -EINVAL;
	for (uint32_t i = 0; i < d; i++)
		sv[i] = sqrtf(fmaxf(sv[i], 0.0f));
	return 0;
}

int kvcd_basis_learn(enum kvcd_isa isa, uint32_t n, const struct kvcp_layout *ls,
		     const void *const *srcs, uint32_t energy, const struct kvcd_cal_opts *o,
		     uint32_t version, void **out, uint64_t *len)
{
	const float *weight = o ? o->weight : NULL;
	uint32_t rope = o && o->pos ? o->rope : 0;
	double inv[128];
	struct kvcd_basis_hdr h = { .magic = KVCD_BASIS_MAGIC, .version = version };
	uint32_t d, use = 0;
	uint64_t tokens = 0, rows = 0, maxt = 0;
	size_t lh, es, plane_n;
	float *g = NULL, *plane = NULL, *u = NULL, *sv = NULL, *vt = NULL, *var = NULL;
	uint8_t *b = NULL, *rk;
	int err;

	*out = NULL;
	*len = 0;
	if (!n || !version || !energy || energy > 100)
		return -EINVAL;
	for (uint32_t i = 0; i < n && tokens < KVCD_BASIS_MAX_TOKENS; i++, use++) {
		if (ls[i].codec || ls[i].dtype != ls[0].dtype || ls[i].layers != ls[0].layers ||
		    ls[i].kv_heads != ls[0].kv_heads || ls[i].head_dim != ls[0].head_dim ||
		    !kvcp_layout_bytes(&ls[i]))
			return -EINVAL;
		tokens += ls[i].tokens;
		maxt = ls[i].tokens > maxt ? ls[i].tokens : maxt;
	}
	d = ls[0].head_dim;
	if (d > 255 || (rope && (d % 2 || rope > 100000000)))
		return -EINVAL;
	rope_freqs(rope, d, inv);
	for (uint32_t i = 0; weight && i < 2 * ls[0].layers; i++)
		if (!isfinite(weight[i]) || !(weight[i] > 0))
			return -EINVAL;
	if ((err = lapack_ready()))
		return err;
	h.layers = ls[0].layers;
	h.kv_heads = ls[0].kv_heads;
	h.head_dim = d;
	h.energy = energy;
	h.tokens = tokens;
	lh = basis_lh(&h);
	es = kvcp_dtype_size(ls[0].dtype);
	plane_n = (size_t)maxt * h.kv_heads * d;
	/* at most every vector: the rows are compacted once the ranks are known, the tail
	 * (weights, then each row's variance) written after them */
	b = malloc(basis_rows_at(&h) + lh * 2 * d * d * 4 + TAIL_HEAD +
		   (2 * (size_t)h.layers + lh * 2 * d) * 4);
	var = malloc(lh * 2 * d * 4);
	g = malloc((size_t)h.kv_heads * d * d * 4);
	plane = malloc(plane_n * 4);
	u = malloc((size_t)d * d * 4);
	sv = malloc(((size_t)d + 1) * 4);
	vt = malloc((size_t)d * d * 4);
	err = b && g && plane && u && sv && vt && var ? 0 : -ENOMEM;
	if (!err) {
		memset(b, 0, basis_rows_at(&h));
		rk = b + sizeof(h);
	}
	for (uint32_t ly = 0; !err && ly < h.layers; ly++) {
		for (int kv = 0; !err && kv < 2; kv++) {
			memset(g, 0, (size_t)h.kv_heads * d * d * 4);
			for (uint32_t i = 0; i < use; i++) {
				size_t pn = (size_t)ls[i].tokens * h.kv_heads * d;
				const uint8_t *src = (const uint8_t *)srcs[i] +
						     ((size_t)ly * 2 + (size_t)kv) * pn * es;

				kvcd_to_f32(isa, ls[i].dtype, src, plane, pn);
				for (size_t k = 0; k < pn; k++)
					if (!isfinite(plane[k]))
						err = -EINVAL;
				/* keys as they were before RoPE: each row back by its position */
				for (size_t k = 0; rope && !kv && k < pn; k += d)
					rope_row(plane + k, d,
						 (double)(o->pos[i] + k / d / h.kv_heads), inv,
						 -1.0);
				for (uint32_t hh = 0; !err && hh < h.kv_heads; hh++)
					gram_add(plane + (size_t)hh * d, ls[i].tokens,
						 (size_t)h.kv_heads * d, d, g + (size_t)hh * d * d);
			}
			for (uint32_t hh = 0; !err && hh < h.kv_heads; hh++) {
				float *gh = g + (size_t)hh * d * d;
				size_t unit = ((size_t)ly * h.kv_heads + hh) * 2 + (size_t)kv;
				uint32_t r;

				for (uint32_t i = 0; i < d; i++) /* the lower triangle too */
					for (uint32_t j = 0; j < i; j++)
						gh[(size_t)i * d + j] = gh[(size_t)j * d + i];
				err = gram_eig(gh, d, sv, u, vt);
				if (err)
					break;
				r = energy_of(sv, d, energy, d);
				rk[unit] = (uint8_t)r;
				/* each direction's mean square coefficient: its eigenvalue / tokens */
				for (uint32_t k = 0; k < d; k++)
					var[unit * d + k] = sv[k] * sv[k] / (float)tokens;
				/* parked at the unit's full-size place; compacted below */
				memcpy(b + basis_rows_at(&h) + unit * (size_t)d * d * 4, vt,
				       (size_t)r * d * 4);
			}
		}
	}
	for (size_t unit = 0; !err && unit < 2 * lh; unit++) { /* compact, in unit order */
		memmove(b + basis_rows_at(&h) + rows * d * 4,
			b + basis_rows_at(&h) + unit * (size_t)d * d * 4, (size_t)rk[unit] * d * 4);
		rows += rk[unit];
	}
	if (!err) { /* the tail: RoPE, the engine's weights (1 without), the kept rows' vars */
		uint8_t *t0 = b + basis_rows_at(&h) + rows * d * 4;
		float *tail = (float *)(t0 + TAIL_HEAD);
		size_t at = 2 * (size_t)h.layers;

		memcpy(t0, &rope, 4);
		memset(t0 + 4, 0, TAIL_HEAD - 4);

		for (size_t i = 0; i < 2 * (size_t)h.layers; i++)
			tail[i] = weight ? weight[i] : 1.0f;
		for (size_t unit = 0; unit < 2 * lh; unit++)
			for (uint32_t k = 0; k < rk[unit]; k++)
				tail[at++] = var[unit * d + k];
		h.bytes = basis_rows_at(&h) + rows * d * 4 + TAIL_HEAD + at * 4;
		memcpy(b, &h, sizeof(h));
		*out = b;
		*len = h.bytes;
		b = NULL;
	}
	free(b);
	free(g);
	free(plane);
	free(u);
	free(sv);
	free(vt);
	free(var);
	return err;
}

uint64_t kvcd_lr_coef_bytes(const struct kvcd_policy *p, uint8_t dtype, uint32_t n, uint32_t r)
{
	uint64_t e = (uint64_t)n * r;

	return p->lowrank & KVCD_LOWRANK_INT8 ? e + (uint64_t)n * sizeof(float)
					      : e * kvcp_dtype_size(dtype);
}

void kvcd_lr_coef_put(enum kvcd_isa isa, const struct kvcd_policy *p, uint8_t dtype, const float *x,
		      uint32_t n, uint32_t d, uint32_t r, const float *bt, float *c, uint8_t *o)
{
	project(x, n, d, r, bt, c);
	if (p->lowrank & KVCD_LOWRANK_INT8)
		rows_to_i8(c, n, r, (int8_t *)o, o + (size_t)n * r);
	else
		kvcd_from_f32(isa, dtype, c, o, (size_t)n * r);
}

void kvcd_lr_coef_get(enum kvcd_isa isa, const struct kvcd_policy *p, uint8_t dtype,
		      const uint8_t *in, uint32_t n, uint32_t d, uint32_t r, const float *bt,
		      float *a, uint8_t *out)
{
	float *row = a + (size_t)n * r;

	if (p->lowrank & KVCD_LOWRANK_INT8)
		rows_from_i8((const int8_t *)in, in + (size_t)n * r, n, r, a);
	else
		kvcd_to_f32(isa, dtype, in, a, (size_t)n * r);
	rows_times(isa, dtype, a, n, r, bt, d, row, out);
}

/* ---- learned=on with kbits/vbits: coefficients quantized with bits by direction -------------
 * Transform coding: the basis decorrelates a head's rows, and its variances say how much each
 * direction's error costs; bits go where they cut the most expected error, weight x variance x
 * 4^-bits (each bit quarters a direction's error), the weight being what the engine said an
 * error in that layer's K or V costs it. Greedy allocation, one bit at a time, is optimal for
 * that convex cost; it is computed as a threshold on the bits' worth, in fixed point, so that
 * the same basis and plan give the same bits on every machine. */

#define WORTH_ONE      1024	       /* fixed point of log2 */
#define WORTH_BIT      (2 * WORTH_ONE) /* a bit quarters the error: log2 falls by 2 */
#define CODED_MAX_BITS 8

static int64_t floor_div(int64_t a, int64_t b)
{
	return a >= 0 ? a / b : -((-a + b - 1) / b);
}

/* Bits of a direction of worth @e whose bits are worth more than @th (at most 8). */
static uint32_t bits_above(int64_t e, int64_t th)
{
	int64_t k = e > th ? floor_div(e - th - 1, WORTH_BIT) + 1 : 0;

	return k > CODED_MAX_BITS ? CODED_MAX_BITS : (uint32_t)k;
}

/* @n directions of worth @e share @budget bits: into @bits. */
static void alloc_bits(const int64_t *e, size_t n, uint64_t budget, uint32_t *bits)
{
	int64_t lo = INT64_MAX, hi = INT64_MIN;
	uint64_t got = 0;

	for (size_t i = 0; i < n; i++) {
		lo = e[i] < lo ? e[i] : lo;
		hi = e[i] > hi ? e[i] : hi;
	}
	if (!n)
		return;
	if (budget >= (uint64_t)n * CODED_MAX_BITS) {
		for (size_t i = 0; i < n; i++)
			bits[i] = CODED_MAX_BITS;
		return;
	}
	/* the smallest threshold th with sum bits_above(e, th) <= budget */
	lo -= (int64_t)CODED_MAX_BITS * WORTH_BIT + 1;
	while (lo < hi) { /* invariant: the sum at hi is <= budget, at lo above it */
		int64_t mid = lo + (hi - lo) / 2;
		uint64_t sum = 0;

		for (size_t i = 0; i < n; i++)
			sum += bits_above(e[i], mid);
		if (sum <= budget)
			hi = mid;
		else
			lo = mid + 1;
	}
	for (size_t i = 0; i < n; i++)
		got += bits[i] = bits_above(e[i], hi);
	/* the bits worth exactly th, in direction order, while the budget lasts */
	for (size_t i = 0; i < n && got < budget; i++)
		if (bits[i] < CODED_MAX_BITS && e[i] - (int64_t)bits[i] * WORTH_BIT == hi) {
			bits[i]++;
			got++;
		}
}

int kvcd_lr_alloc(const struct kvcd_policy *p, const struct kvcp_layout *l, const void *basis,
		  const uint32_t *counts, uint32_t *bits)
{
	size_t lh = (size_t)l->layers * l->kv_heads, d = l->head_dim;
	const uint32_t *rk = counts + lh;
	int64_t *e = malloc(2 * lh * d * sizeof(*e));
	uint32_t *b = malloc(2 * lh * d * sizeof(*b));
	uint64_t budget = 0;
	size_t n = 0;

	if (!e || !b) {
		free(e);
		free(b);
		return -ENOMEM;
	}
	memset(bits, 0, 2 * lh * d * sizeof(*bits));
	for (int kv = 0; kv < 2; kv++) /* K's and V's directions in one allocation */
		for (size_t u = 0; u < lh; u++) {
			const float *var = kvcd_basis_vars(basis, u, kv);
			double w = kvcd_basis_weight(basis, (uint32_t)(u / l->kv_heads), kv);

			for (uint32_t j = 0; j < rk[2 * u + (size_t)kv]; j++) {
				double x = w * (double)var[j];

				e[n++] = x > 1e-30 ? (int64_t)llround(log2(x) * WORTH_ONE)
						   : (int64_t)-100 * WORTH_ONE;
				budget += kv ? p->vbits : p->kbits;
			}
		}
	alloc_bits(e, n, budget, b);
	n = 0;
	for (int kv = 0; kv < 2; kv++)
		for (size_t u = 0; u < lh; u++)
			for (uint32_t j = 0; j < rk[2 * u + (size_t)kv]; j++)
				bits[(2 * u + (size_t)kv) * d + j] = b[n++];
	free(e);
	free(b);
	return 0;
}

uint64_t kvcd_lr_coded_bytes(uint32_t n, uint32_t r, const uint32_t *bits)
{
	uint64_t codes = 0;

	for (uint32_t j = 0; j < r; j++)
		codes += (uint64_t)n * bits[j];
	return 1 + 2ull * r + (codes + 7) / 8;
}

/* @b (at most 8) bits of @v at bit @at of @o (zeroed before), least significant bit first:
 * they span at most two bytes. */
static void put_code(uint8_t *o, uint64_t at, uint32_t v, uint32_t b)
{
	uint32_t sh = (uint32_t)(at % 8);

	o[at / 8] |= (uint8_t)(v << sh);
	if (sh + b > 8)
		o[at / 8 + 1] |= (uint8_t)(v >> (8 - sh));
}

static uint32_t get_code(const uint8_t *in, uint64_t at, uint32_t b)
{
	uint32_t sh = (uint32_t)(at % 8), v = in[at / 8] >> sh;

	if (sh + b > 8) /* the second byte only when the code reaches it: it may be the last */
		v |= (uint32_t)in[at / 8 + 1] << (8 - sh);
	return v & ((1u << b) - 1);
}

/* The grid a direction's range is written on: a sixteenth of its calibration RMS @var's root,
 * times 2^(@s / 4). Two int8 grid points hold the range of a block that stays within 8 RMS of
 * 0, so the unit's @s is 0 but where a block has outliers. A direction without variance
 * takes its unit's largest one's grid (@top), so that it still has one. */
static double coded_grid(float var, float top, uint32_t s)
{
	double v = var > top * 1e-12f ? var : top > 0 ? top : 1e-30;

	return sqrt(v) / 16.0 * exp2((double)s / 4.0);
}

static float top_var(const float *var, uint32_t r)
{
	float t = 0;

	for (uint32_t j = 0; j < r; j++)
		t = var[j] > t ? var[j] : t;
	return t;
}

/* The levels of a direction's range [@a, @b] on grid @g with @bits: the first, *@lo, and the
 * step between them (0 with no bits: one value). Encoder and decoder take them from here, so
 * that they agree to the last bit. */
static float coded_levels(long a, long b, double g, uint32_t bits, float *lo)
{
	*lo = (float)(a * g);
	return bits ? (float)((double)(b - a) * g) / (float)((1u << bits) - 1) : 0.0f;
}

/* The code of @v on levels @lo + k / @inv, k = 0..@top: clamped first, so that a plain
 * conversion rounds it (no libm call per value). */
static inline float code_of(float v, float lo, float inv, float top)
{
	float x = (v - lo) * inv;

	x = x > 0 ? x : 0; /* NaN too */
	x = x < top ? x : top;
	return (float)(int)(x + 0.5f);
}

/* Squared error of @n values @c (@r apart) coded with @bits on the range [@a, @b] x @g. */
static double coded_err(const float *c, uint32_t n, uint32_t r, long a, long b, double g,
			uint32_t bits)
{
	float lo, top = (float)((1u << bits) - 1), step = coded_levels(a, b, g, bits, &lo);
	float inv = step > 0 ? 1.0f / step : 0.0f;
	float e0 = 0, e1 = 0; /* two sums: a shorter chain of dependent adds */
	uint32_t i = 0;

	for (; i + 2 <= n; i += 2) {
		float v0 = c[(size_t)i * r], q0 = code_of(v0, lo, inv, top);
		float v1 = c[(size_t)(i + 1) * r], q1 = code_of(v1, lo, inv, top);

		e0 += (lo + q0 * step - v0) * (lo + q0 * step - v0);
		e1 += (lo + q1 * step - v1) * (lo + q1 * step - v1);
	}
	if (i < n) {
		float v = c[(size_t)i * r], q = code_of(v, lo, inv, top);

		e0 += (lo + q * step - v) * (lo + q * step - v);
	}
	return (double)e0 + e1;
}

/* The range of @n values @c (@r apart, from @lo to @hi) on grid @g for @bits: the whole
 * range, or one clipped towards its middle where that costs less squared error (the few
 * values beyond it lose less than every other value gains from the finer step: with few
 * bits, clipping pays), into [*@a, *@b], int8 grid points. The clips are tried from the least
 * on, up to the first that costs more than the one before. */
static void coded_range(const float *c, uint32_t n, uint32_t r, float lo, float hi, double g,
			uint32_t bits, long *a, long *b)
{
	static const double shrink[] = { 1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6, 0.5 };
	double mid = ((double)lo + hi) / 2, half = ((double)hi - lo) / 2, best = INFINITY;

	for (size_t k = 0; k < sizeof(shrink) / sizeof(shrink[0]); k++) {
		long x = (long)floor((mid - half * shrink[k]) / g);
		long y = (long)ceil((mid + half * shrink[k]) / g);
		double e;

		x = x < -128 ? -128 : x > 127 ? 127 : x;
		y = y < -128 ? -128 : y > 127 ? 127 : y;
		e = coded_err(c, n, r, x, y, g, bits);
		if (e >= best)
			break; /* past the least error: it only grows with more clipping */
		best = e;
		*a = x;
		*b = y;
	}
}

/* Fixed-width codes of the @n x @r coefficients @c (finite) to @o. -ERANGE beyond any grid. */
static int fixed_put(const float *c, uint32_t n, uint32_t r, const float *var, const uint32_t *bits,
		     uint8_t *o)
{
	uint8_t *codes = o + 1 + 2ull * r;
	float top = top_var(var, r), amax[255];
	uint64_t at = 0;
	uint32_t s = 0;

	/* the unit's grid: the finest on which every direction's range fits in int8 */
	memset(amax, 0, sizeof(amax));
	for (uint32_t i = 0; i < n; i++)
		for (uint32_t j = 0; j < r; j++) {
			float v = fabsf(c[(size_t)i * r + j]);

			amax[j] = v > amax[j] ? v : amax[j];
		}
	for (uint32_t j = 0; j < r; j++)
		while ((double)amax[j] > 127.0 * coded_grid(var[j], top, s))
			if (++s > 255)
				return -ERANGE; /* a grid beyond this byte's reach */
	o[0] = (uint8_t)s;
	memset(codes, 0, kvcd_lr_coded_bytes(n, r, bits) - 1 - 2ull * r);
	for (uint32_t j = 0; j < r; j++) {
		double g = coded_grid(var[j], top, s), mean = 0;
		float lo = INFINITY, hi = -INFINITY, step, top_code;
		long a, b;

		for (uint32_t i = 0; i < n; i++) {
			float v = c[(size_t)i * r + j];

			lo = v < lo ? v : lo;
			hi = v > hi ? v : hi;
			mean += v;
		}
		if (!bits[j]) { /* one value for every row: the mean is the least squared error */
			a = b = lround(mean / n / g);
			a = b = a < -128 ? -128 : a > 127 ? 127 : a;
		} else { /* the range on the grid that costs the least squared error */
			a = b = 0;
			coded_range(c + j, n, r, lo, hi, g, bits[j], &a, &b);
		}
		o[1 + 2 * j] = (uint8_t)(int8_t)a;
		o[2 + 2 * j] = (uint8_t)(int8_t)b;
		step = coded_levels(a, b, g, bits[j], &lo);
		top_code = (float)((1u << bits[j]) - 1);
		for (uint32_t i = 0; i < n && bits[j]; i++) {
			float q = code_of(c[(size_t)i * r + j], lo, step > 0 ? 1.0f / step : 0.0f,
					  top_code);

			put_code(codes, at, (uint32_t)q, bits[j]);
			at += bits[j];
		}
	}
	return 0;
}

/* The @n x @r coefficients of fixed-width codes @in into @a. */
static void fixed_get(const uint8_t *in, uint32_t n, uint32_t r, const float *var,
		      const uint32_t *bits, float *a)
{
	const uint8_t *codes = in + 1 + 2ull * r;
	float top = top_var(var, r);
	uint64_t at = 0;

	for (uint32_t j = 0; j < r; j++) {
		double g = coded_grid(var[j], top, in[0]);
		float lo, step = coded_levels((int8_t)in[1 + 2 * j], (int8_t)in[2 + 2 * j], g,
					      bits[j], &lo);

		for (uint32_t i = 0; i < n; i++) {
			a[(size_t)i * r + j] =
				lo + (bits[j] ? step * (float)get_code(codes, at, bits[j]) : 0.0f);
			at += bits[j];
		}
	}
}

/* ---- entropy=on: the coefficients on steps, then range coded --------------------------------
 * A direction of b bits is quantized with no range to fit: on the step a b-bit code would
 * have over 7 of its RMS (the span a fixed-rate code needs for bell-shaped values), rounded
 * to the nearest multiple, so a value far out costs bits instead of clipping. The codes are
 * range coded (rc.h) with models shared by the directions of equal bits: such directions'
 * codes have the same spread in steps, whatever their variance. The caller carries the models
 * from stream to stream of a block, so that they learn once. Zero or not, the sign, the
 * magnitude's octave in unary, its first bit below the leading one are modelled; the rest go
 * at even odds. */

#define ENT_OCTAVES KVCD_ENT_OCTAVES
#define ENT_QMAX    ((float)((1u << ENT_OCTAVES) - 1))

void kvcd_ent_model_init(struct kvcd_ent_model *m)
{
	uint16_t *p = (uint16_t *)m;

	for (size_t i = 0; i < sizeof(*m) / sizeof(*p); i++)
		p[i] = KVCD_RC_P_INIT;
}

/* Direction @j's step for @bits bits (@top: the unit's largest variance). */
static float ent_step(const float *var, float top, uint32_t j, uint32_t bits)
{
	return (float)(coded_grid(var[j], top, 0) * 112.0 / (double)(1u << bits));
}

static void ent_put(struct kvcd_rce *e, struct kvcd_ent_model *m, uint32_t b, int32_t q)
{
	uint32_t mag = (uint32_t)(q < 0 ? -q : q), k = 0;

	kvcd_rce_bit(e, &m->zero[b], !mag);
	if (!mag)
		return;
	kvcd_rce_bit(e, &m->sign[b], q < 0);
	while (mag >> (k + 1))
		k++;
	for (uint32_t i = 0; i < k; i++)
		kvcd_rce_bit(e, &m->oct[b][i], 1);
	if (k + 1 < ENT_OCTAVES)
		kvcd_rce_bit(e, &m->oct[b][k], 0);
	if (k) { /* the two bits below the leading one modelled: values thin out within an octave */
		uint32_t hi = mag >> (k - 1) & 1;

		kvcd_rce_bit(e, &m->top[b][k][0], hi);
		if (k > 1)
			kvcd_rce_bit(e, &m->top[b][k][1 + hi], mag >> (k - 2) & 1);
		if (k > 2)
			kvcd_rce_direct(e, mag, k - 2);
	}
}

static int32_t ent_get(struct kvcd_rcd *dc, struct kvcd_ent_model *m, uint32_t b)
{
	uint32_t k = 0, mag;
	int32_t neg;

	if (kvcd_rcd_bit(dc, &m->zero[b]))
		return 0;
	neg = (int32_t)kvcd_rcd_bit(dc, &m->sign[b]);
	while (k + 1 < ENT_OCTAVES && kvcd_rcd_bit(dc, &m->oct[b][k]))
		k++;
	mag = 1u << k;
	if (k) {
		uint32_t hi = kvcd_rcd_bit(dc, &m->top[b][k][0]);

		mag |= hi << (k - 1);
		if (k > 1)
			mag |= kvcd_rcd_bit(dc, &m->top[b][k][1 + hi]) << (k - 2);
		if (k > 2)
			mag |= kvcd_rcd_direct(dc, k - 2);
	}
	return neg ? -(int32_t)mag : (int32_t)mag;
}

/* The range-coded stream of the @n x @r coefficients @c (finite) to @o, at most @cap bytes:
 * its bytes, or -ERANGE when it needs more. */
static int64_t ent_codes_put(const float *c, uint32_t n, uint32_t r, const float *var,
			     const uint32_t *bits, struct kvcd_ent_model *m, uint8_t *o, size_t cap)
{
	float top = top_var(var, r);
	struct kvcd_rce e;
	size_t bytes;

	kvcd_rce_init(&e, o, cap);
	for (uint32_t j = 0; j < r; j++) {
		float inv;

		if (!bits[j])
			continue;
		inv = 1.0f / ent_step(var, top, j, bits[j]);
		for (uint32_t i = 0; i < n; i++) {
			float v = c[(size_t)i * r + j] * inv;

			v = v > ENT_QMAX ? ENT_QMAX : v < -ENT_QMAX ? -ENT_QMAX : v;
			ent_put(&e, m, bits[j], (int32_t)floorf(v + 0.5f));
		}
	}
	bytes = kvcd_rce_end(&e);
	return bytes ? (int64_t)bytes : -ERANGE;
}

/* The @n x @r coefficients of the @len-byte stream @in into @a: 0, or -EBADMSG when the
 * stream needs more bytes than it has. */
static int ent_codes_get(const uint8_t *in, size_t len, uint32_t n, uint32_t r, const float *var,
			 const uint32_t *bits, struct kvcd_ent_model *m, float *a)
{
	float top = top_var(var, r);
	struct kvcd_rcd dc;

	kvcd_rcd_init(&dc, in, len);
	for (uint32_t j = 0; j < r; j++) {
		float step = bits[j] ? ent_step(var, top, j, bits[j]) : 0.0f;

		for (uint32_t i = 0; i < n; i++)
			a[(size_t)i * r + j] = bits[j] ? step * (float)ent_get(&dc, m, bits[j])
						       : 0.0f;
	}
	return kvcd_rcd_ok(&dc) ? 0 : -EBADMSG;
}

int64_t kvcd_lr_coded_put(const float *x, uint32_t n, uint32_t d, uint32_t r, const float *bt,
			  const float *var, const uint32_t *bits, struct kvcd_ent_model *m,
			  float *c, uint8_t *o, size_t cap)
{
	uint64_t fixed = kvcd_lr_coded_bytes(n, r, bits);
	int err;

	project(x, n, d, r, bt, c);
	for (size_t i = 0; i < (size_t)n * r; i++)
		if (!isfinite(c[i]))
			return -ERANGE;
	if (m)
		return ent_codes_put(c, n, r, var, bits, m, o, cap);
	if (fixed > cap)
		return -ERANGE;
	err = fixed_put(c, n, r, var, bits, o);
	return err ? err : (int64_t)fixed;
}

int kvcd_lr_coded_get(enum kvcd_isa isa, uint8_t dtype, const uint8_t *in, size_t len, uint32_t n,
		      uint32_t d, uint32_t r, const float *bt, const float *var,
		      const uint32_t *bits, struct kvcd_ent_model *m, uint32_t rope, uint32_t pos,
		      const uint32_t *tok, float *a, uint8_t *out)
{
	double inv[128];
	int err = 0;

	if (m)
		err = ent_codes_get(in, len, n, r, var, bits, m, a);
	else if (len < kvcd_lr_coded_bytes(n, r, bits))
		err = -EBADMSG;
	else
		fixed_get(in, n, r, var, bits, a);
	if (err)
		return err;
	if (rope)
		rope_freqs(rope, d, inv);
	rows_times_rope(isa, dtype, a, n, r, bt, d, rope ? inv : NULL, pos, tok, a + (size_t)n * r,
			out);
	return 0;
}
