/* llama.c - forward pass of llama2.c checkpoints (see ../shared/models/README.md): RMSNorm,
 * RoPE, grouped-query attention, SwiGLU, shared or separate classifier. Plain loops: the
 * models this serves are small, and the point is a real KV cache, not speed. */
#include "llama.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ---- cache dtype rounding ------------------------------------------------------------------ */

static float round_bf16(float f)
{
	uint32_t u;

	memcpy(&u, &f, 4);
	if ((u & 0x7f800000u) != 0x7f800000u) /* round to nearest even; inf/nan kept */
		u += 0x7fffu + ((u >> 16) & 1u);
	u &= 0xffff0000u;
	memcpy(&f, &u, 4);
	return f;
}

/* The f16 conversions are one instruction per 8 values with F16C and a libgcc call per value
 * without: built for both, picked at load time (an ifunc). Both round to nearest even. */
#define HOT_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))

HOT_CLONES static void put_elems(uint8_t dtype, const float *src, void *dst, size_t n)
{
	if (dtype == KVC_F32) {
		memcpy(dst, src, n * 4);
	} else if (dtype == KVC_F16) {
		_Float16 *d = dst;

		for (size_t i = 0; i < n; i++)
			d[i] = (_Float16)src[i];
	} else {
		uint16_t *d = dst;

		for (size_t i = 0; i < n; i++) {
			float r = round_bf16(src[i]);
			uint32_t u;

			memcpy(&u, &r, 4);
			d[i] = (uint16_t)(u >> 16);
		}
	}
}

/* Round @x[0..n) to what a @dtype cache holds. */
HOT_CLONES static void round_elems(uint8_t dtype, float *x, size_t n)
{
	if (dtype == KVC_F16)
		for (size_t i = 0; i < n; i++)
			x[i] = (float)(_Float16)x[i];
	else if (dtype == KVC_BF16)
		for (size_t i = 0; i < n; i++)
			x[i] = round_bf16(x[i]);
}

HOT_CLONES static void get_elems(uint8_t dtype, const void *src, float *dst, size_t n)
{
	if (dtype == KVC_F32) {
		memcpy(dst, src, n * 4);
	} else if (dtype == KVC_F16) {
		const _Float16 *s = src;

		for (size_t i = 0; i < n; i++)
			dst[i] = (float)s[i];
	} else {
		const uint16_t *s = src;

		for (size_t i = 0; i < n; i++) {
			uint32_t u = (uint32_t)s[i] << 16;

			memcpy(&dst[i], &u, 4);
		}
	}
}

/* ---- weights ---------------------------------------------------------------------------------- */

int llm_load(const char *path, struct llm *m, const char **why)
{
	int32_t h[7];
	struct llm_config *c = &m->c;
	struct stat st;
	const char *w = NULL;
	size_t n, per_layer, total;
	const float *p;
	FILE *f;
	int err = 0;

	memset(m, 0, sizeof(*m));
	f = fopen(path, "rb");
	if (!f)
		return -errno;
	if (fstat(fileno(f), &st) || fread(h, 4, 7, f) != 7) {
		err = -EINVAL;
		w = "file shorter than its header";
		goto out;
	}
	c->dim = h[0];
	c->hidden = h[1];
	c->layers = h[2];
	c->heads = h[3];
	c->kv_heads = h[4];
	c->shared_cls = h[5] > 0;
	c->vocab = h[5] > 0 ? h[5] : -h[5];
	c->seq_len = h[6];
	if (c->dim <= 0 || c->dim > 16384 || c->hidden <= 0 || c->hidden > 65536 ||
	    c->layers <= 0 || c->layers > 256 || c->heads <= 0 || c->kv_heads <= 0 ||
	    c->heads % c->kv_heads || c->dim % c->heads || c->vocab <= 0 || c->vocab > 1 << 20 ||
	    c->seq_len <= 0 || c->seq_len > 1 << 20 || (c->dim / c->heads) % 2) {
		err = -EINVAL;
		w = "implausible header";
		goto out;
	}
	c->head_dim = c->dim / c->heads;
	c->kv_dim = c->kv_heads * c->head_dim;
	per_layer = (size_t)c->dim * 2 + (size_t)c->dim * c->dim * 2 +
		    (size_t)c->kv_dim * c->dim * 2 + (size_t)c->hidden * c->dim * 3;
	total = (size_t)c->vocab * c->dim + per_layer * c->layers + c->dim +
		(size_t)c->seq_len * c->head_dim + (c->shared_cls ? 0 : (size_t)c->vocab * c->dim);
	if ((uint64_t)st.st_size != 28 + total * 4) {
		err = -EINVAL;
		w = "file size does not match its header";
		goto out;
	}
	m->mem = malloc(total * 4);
	if (!m->mem) {
		err = -ENOMEM;
		goto out;
	}
	if (fread(m->mem, 4, total, f) != total) {
		err = -EIO;
		goto out;
	}
	p = m->mem;
#define TAKE(field, count) (m->field = p, p += (count))
	n = (size_t)c->layers;
	TAKE(emb, (size_t)c->vocab * c->dim);
	TAKE(rms_att, n * c->dim);
	TAKE(wq, n * c->dim * c->dim);
	TAKE(wk, n * c->kv_dim * c->dim);
	TAKE(wv, n * c->kv_dim * c->dim);
	TAKE(wo, n * c->dim * c->dim);
	TAKE(rms_ffn, n * c->dim);
	TAKE(w1, n * c->hidden * c->dim);
	TAKE(w2, n * c->dim * c->hidden);
	TAKE(w3, n * c->hidden * c->dim);
	TAKE(rms_final, (size_t)c->dim);
	p += (size_t)c->seq_len * c->head_dim; /* freq_cis, recomputed */
	m->wcls = c->shared_cls ? m->emb : p;
#undef TAKE
out:
	fclose(f);
	if (err) {
		free(m->mem);
		m->mem = NULL;
	}
	if (why)
		*why = w;
	return err;
}

void llm_free(struct llm *m)
{
	free(m->mem);
	m->mem = NULL;
}

int llm_state_init(const struct llm *m, struct llm_state *s, uint8_t kv_dtype)
{
	const struct llm_config *c = &m->c;
	size_t cache = (size_t)c->layers * c->seq_len * c->kv_dim;

	memset(s, 0, sizeof(*s));
	if (kv_dtype != KVC_F32 && kv_dtype != KVC_F16 && kv_dtype != KVC_BF16)
		return -EINVAL;
	s->kv_dtype = kv_dtype;
	s->x = calloc(c->dim, 4);
	s->xb = calloc(c->dim, 4);
	s->xb2 = calloc(c->dim, 4);
	s->hb = calloc(c->hidden, 4);
	s->hb2 = calloc(c->hidden, 4);
	s->q = calloc(c->dim, 4);
	s->att = calloc(c->seq_len, 4);
	s->logits = calloc(c->vocab, 4);
	s->kc = calloc(cache, 4);
	s->vc = calloc(cache, 4);
	s->acc = calloc(c->seq_len, 4);
	s->attn = calloc((size_t)c->layers * c->dim, 4);
	s->acc_lh = calloc((size_t)c->layers * c->kv_heads * c->seq_len, 4);
	s->bias = calloc((size_t)c->layers * c->kv_heads * c->seq_len, 4);
	s->qs = calloc((size_t)c->seq_len * c->layers * c->dim, 4);
	s->lse = calloc((size_t)c->seq_len * c->layers * c->heads, 4);
	if (!s->x || !s->xb || !s->xb2 || !s->hb || !s->hb2 || !s->q || !s->att || !s->logits ||
	    !s->kc || !s->vc || !s->acc || !s->attn || !s->acc_lh || !s->bias || !s->qs ||
	    !s->lse) {
		llm_state_free(s);
		return -ENOMEM;
	}
	return 0;
}

void llm_state_free(struct llm_state *s)
{
	free(s->x);
	free(s->xb);
	free(s->xb2);
	free(s->hb);
	free(s->hb2);
	free(s->q);
	free(s->att);
	free(s->logits);
	free(s->kc);
	free(s->vc);
	free(s->acc);
	free(s->attn);
	free(s->acc_lh);
	free(s->bias);
	free(s->qs);
	free(s->lse);
	memset(s, 0, sizeof(*s));
}

/* ---- forward ---------------------------------------------------------------------------------- */

static void rmsnorm(float *o, const float *x, const float *g, int n)
{
	float ss = 0.0f;

	for (int i = 0; i < n; i++)
		ss += x[i] * x[i];
	ss = 1.0f / sqrtf(ss / (float)n + 1e-5f);
	for (int i = 0; i < n; i++)
		o[i] = g[i] * (ss * x[i]);
}

/* y = W x, W row-major [d][n] */
static void matmul(float *y, const float *x, const float *w, int n, int d)
{
	for (int i = 0; i < d; i++) {
		const float *r = w + (size_t)i * n;
		float v = 0.0f;

		for (int j = 0; j < n; j++)
			v += r[j] * x[j];
		y[i] = v;
	}
}

static void rope(float *v, int n, int head_dim, int pos)
{
	for (int i = 0; i < n; i += 2) {
		int j = i % head_dim;
		float freq = 1.0f / powf(10000.0f, (float)j / (float)head_dim);
		float a = (float)pos * freq, cr = cosf(a), ci = sinf(a);
		float v0 = v[i], v1 = v[i + 1];

		v[i] = v0 * cr - v1 * ci;
		v[i + 1] = v0 * ci + v1 * cr;
	}
}

/* In place; returns log(sum(exp(x))). */
static float softmax(float *x, int n)
{
	float max = x[0], sum = 0.0f;

	for (int i = 1; i < n; i++)
		max = x[i] > max ? x[i] : max;
	for (int i = 0; i < n; i++) {
		x[i] = expf(x[i] - max);
		sum += x[i];
	}
	for (int i = 0; i < n; i++)
		x[i] /= sum;
	return max + logf(sum);
}

void llm_forward(const struct llm *m, struct llm_state *s, int token, int pos)
{
	const struct llm_config *c = &m->c;
	int dim = c->dim, kvd = c->kv_dim, hd = c->head_dim, rep = c->heads / c->kv_heads;
	float scale = 1.0f / sqrtf((float)hd);

	memcpy(s->x, m->emb + (size_t)token * dim, (size_t)dim * 4);
	for (int l = 0; l < c->layers; l++) {
		size_t lo = (size_t)l * c->seq_len * kvd;
		float *k = s->kc + lo + (size_t)pos * kvd, *v = s->vc + lo + (size_t)pos * kvd;
		float *out = s->attn + (size_t)l * dim;

		rmsnorm(s->xb, s->x, m->rms_att + (size_t)l * dim, dim);
		matmul(s->q, s->xb, m->wq + (size_t)l * dim * dim, dim, dim);
		matmul(k, s->xb, m->wk + (size_t)l * kvd * dim, dim, kvd);
		matmul(v, s->xb, m->wv + (size_t)l * kvd * dim, dim, kvd);
		rope(s->q, dim, hd, pos);
		rope(k, kvd, hd, pos);
		round_elems(s->kv_dtype, k, (size_t)kvd);
		round_elems(s->kv_dtype, v, (size_t)kvd);
		memcpy(s->qs + ((size_t)pos * c->layers + l) * dim, s->q, (size_t)dim * 4);
		for (int h = 0; h < c->heads; h++) {
			const float *q = s->q + h * hd;
			int kh = h / rep;
			size_t lh = ((size_t)l * c->kv_heads + kh) * c->seq_len;

			for (int t = 0; t <= pos; t++) {
				const float *kt = s->kc + lo + (size_t)t * kvd + kh * hd;
				float d = 0.0f;

				for (int i = 0; i < hd; i++)
					d += q[i] * kt[i];
				s->att[t] = d * scale + s->bias[lh + t];
			}
			s->lse[((size_t)pos * c->layers + l) * c->heads + h] = softmax(s->att,
										       pos + 1);
			memset(out + h * hd, 0, (size_t)hd * 4);
			for (int t = 0; t <= pos; t++) {
				const float *vt = s->vc + lo + (size_t)t * kvd + kh * hd;

				for (int i = 0; i < hd; i++)
					out[h * hd + i] += s->att[t] * vt[i];
				s->acc[t] += s->att[t];
				s->acc_lh[lh + t] += s->att[t];
			}
		}
		matmul(s->xb2, out, m->wo + (size_t)l * dim * dim, dim, dim);
		for (int i = 0; i < dim; i++)
			s->x[i] += s->xb2[i];
		rmsnorm(s->xb, s->x, m->rms_ffn + (size_t)l * dim, dim);
		matmul(s->hb, s->xb, m->w1 + (size_t)l * c->hidden * dim, dim, c->hidden);
		matmul(s->hb2, s->xb, m->w3 + (size_t)l * c->hidden * dim, dim, c->hidden);
		for (int i = 0; i < c->hidden; i++) {
			float z = s->hb[i];

			s->hb[i] = z / (1.0f + expf(-z)) * s->hb2[i];
		}
		matmul(s->xb2, s->hb, m->w2 + (size_t)l * dim * c->hidden, c->hidden, dim);
		for (int i = 0; i < dim; i++)
			s->x[i] += s->xb2[i];
	}
	rmsnorm(s->xb, s->x, m->rms_final, dim);
	matmul(s->logits, s->xb, m->wcls, dim, c->vocab);
}

static uint64_t next_rng(uint64_t *r)
{
	*r ^= *r >> 12;
	*r ^= *r << 25;
	*r ^= *r >> 27;
	return *r * 0x2545f4914f6cdd1dull;
}

int llm_sample(const float *logits, int n, float temp, uint64_t *rng)
{
	int best = 0;
	double sum = 0.0, u, max;

	for (int i = 1; i < n; i++)
		best = logits[i] > logits[best] ? i : best;
	if (!(temp > 0.0f))
		return best;
	max = logits[best];
	for (int i = 0; i < n; i++)
		sum += exp((logits[i] - max) / temp);
	u = (double)(next_rng(rng) >> 11) / 9007199254740992.0 * sum;
	for (int i = 0; i < n; i++) {
		u -= exp((logits[i] - max) / temp);
		if (u <= 0.0)
			return i;
	}
	return n - 1;
}

/* ---- blocks ----------------------------------------------------------------------------------- */

void llm_block_layout(const struct llm *m, const struct llm_state *s, uint32_t n,
		      struct kvc_layout *l)
{
	memset(l, 0, sizeof(*l));
	l->dtype = s->kv_dtype;
	l->layers = (uint16_t)m->c.layers;
	l->kv_heads = (uint16_t)m->c.kv_heads;
	l->head_dim = (uint16_t)m->c.head_dim;
	l->tokens = n;
}

/* [layer][K,V][token][head][dim] is, per (layer, K/V), n consecutive cache rows. */
void llm_block_put(const struct llm *m, const struct llm_state *s, uint32_t t0, uint32_t n,
		   void *dst)
{
	const struct llm_config *c = &m->c;
	size_t es = s->kv_dtype == KVC_F32 ? 4 : 2, plane = (size_t)n * c->kv_dim;
	uint8_t *o = dst;

	for (int l = 0; l < c->layers; l++)
		for (int kv = 0; kv < 2; kv++) {
			const float *src = (kv ? s->vc : s->kc) +
					   ((size_t)l * c->seq_len + t0) * c->kv_dim;

			put_elems(s->kv_dtype, src, o, plane);
			o += plane * es;
		}
}

int llm_block_get(const struct llm *m, struct llm_state *s, uint32_t t0, const void *src,
		  const struct kvc_layout *l)
{
	const struct llm_config *c = &m->c;
	size_t es = l->dtype == KVC_F32 ? 4 : 2, plane = (size_t)l->tokens * c->kv_dim;
	const uint8_t *in = src;

	if (l->layers != c->layers || l->kv_heads != c->kv_heads || l->head_dim != c->head_dim ||
	    (l->dtype != KVC_F32 && l->dtype != KVC_F16 && l->dtype != KVC_BF16) ||
	    (uint64_t)t0 + l->tokens > (uint64_t)c->seq_len)
		return -EINVAL;
	for (int ly = 0; ly < c->layers; ly++)
		for (int kv = 0; kv < 2; kv++) {
			float *dst = (kv ? s->vc : s->kc) +
				     ((size_t)ly * c->seq_len + t0) * c->kv_dim;

			get_elems(l->dtype, in, dst, plane);
			if (l->dtype != s->kv_dtype)
				round_elems(s->kv_dtype, dst, plane);
			in += plane * es;
		}
	return 0;
}

int llm_block_get_sparse(const struct llm *m, struct llm_state *s, uint32_t t0, const void *src,
			 size_t n, const struct kvc_layout *l)
{
	const struct llm_config *c = &m->c;
	size_t lh = (size_t)c->layers * c->kv_heads, es = l->dtype == KVC_F32 ? 4 : 2,
	       hd = c->head_dim;
	const uint8_t *in = src;
	struct kvc_sparse sp;
	const uint32_t *cnt, *tok;
	const float *bias;
	const uint8_t *rows;
	uint64_t total = 0;

	if (l->layers != c->layers || l->kv_heads != c->kv_heads || l->head_dim != c->head_dim ||
	    (l->dtype != KVC_F32 && l->dtype != KVC_F16 && l->dtype != KVC_BF16) ||
	    (uint64_t)t0 + l->tokens > (uint64_t)c->seq_len || n < sizeof(sp) + lh * 4)
		return -EINVAL;
	memcpy(&sp, in, sizeof(sp));
	cnt = (const uint32_t *)(in + sizeof(sp));
	for (size_t i = 0; i < lh; i++)
		total += cnt[i];
	if (sp.magic != KVC_SPARSE_MAGIC || sp.tokens != l->tokens || sp.total != total ||
	    n < sizeof(sp) + lh * 4 + total * (8 + 2 * hd * es))
		return -EINVAL;
	tok = cnt + lh;
	bias = (const float *)(tok + total);
	rows = (const uint8_t *)(bias + total);
	for (int ly = 0; ly < c->layers; ly++)
		for (int h = 0; h < c->kv_heads; h++) {
			size_t u = (size_t)ly * c->kv_heads + h, k = cnt[u];
			float *b = s->bias + u * c->seq_len + t0;

			for (uint32_t t = 0; t < l->tokens; t++)
				b[t] = -INFINITY; /* dropped unless listed */
			for (size_t i = 0; i < k; i++) {
				size_t at = ((size_t)ly * c->seq_len + t0 + tok[i]) * c->kv_dim +
					    h * hd;

				if (tok[i] >= l->tokens)
					return -EINVAL;
				b[tok[i]] = bias[i];
				get_elems(l->dtype, rows + i * hd * es, s->kc + at, hd);
				get_elems(l->dtype, rows + (k + i) * hd * es, s->vc + at, hd);
				round_elems(s->kv_dtype, s->kc + at, hd);
				round_elems(s->kv_dtype, s->vc + at, hd);
			}
			rows += 2 * k * hd * es;
			tok += k;
			bias += k;
		}
	return 0;
}

void llm_block_scores(const struct llm_state *s, uint32_t t0, uint32_t n, float *dst)
{
	memcpy(dst, s->acc + t0, (size_t)n * 4);
}
