/* it_llama.c - kvc-llama and kvc-eval on the real model (../shared/models/stories260K.bin, or
 * $KVC_MODEL; skipped with a message when absent): the engine's cached decode against a full
 * recompute written independently here, greedy decoding from BOS against the published ids,
 * the cached-prefix path against the cold path bit for bit through a real kvcd, and
 * kvc-eval's figures for the lossless policy. */
#include <math.h>

#include "t_util.h"
#include "llama.h"

static const char *model_path(void)
{
	const char *m = getenv("KVC_MODEL");

	return m ? m : "../shared/models/stories260K.bin";
}

static void need_model(void)
{
	if (access(model_path(), R_OK))
		cr_skip_test("model %s is absent: kvc-llama tests skipped", model_path());
}

/* Logits of the last of @n tokens, computed a layer at a time over all positions at once
 * (causal mask, no cache): shares nothing with llm_forward but the weights. */
static void full_recompute(const struct llm *m, const int *tok, int n, float *logits)
{
	const struct llm_config *c = &m->c;
	int D = c->dim, KV = c->kv_dim, hd = c->head_dim, H = c->hidden;
	double *x = calloc((size_t)n * D, 8), *xb = calloc((size_t)n * D, 8);
	double *q = calloc((size_t)n * D, 8), *k = calloc((size_t)n * KV, 8);
	double *v = calloc((size_t)n * KV, 8), *att = calloc((size_t)n * D, 8);
	double *p = calloc((size_t)n, 8), *h1 = calloc((size_t)H, 8), *h3 = calloc((size_t)H, 8);

#define W(base, l, rows, cols, i, j) ((double)(base)[((size_t)(l) * (rows) + (i)) * (cols) + (j)])
	for (int t = 0; t < n; t++)
		for (int i = 0; i < D; i++)
			x[t * D + i] = m->emb[(size_t)tok[t] * D + i];
	for (int l = 0; l < c->layers; l++) {
		for (int t = 0; t < n; t++) {
			double ss = 0;

			for (int i = 0; i < D; i++)
				ss += x[t * D + i] * x[t * D + i];
			ss = 1.0 / sqrt(ss / D + 1e-5);
			for (int i = 0; i < D; i++)
				xb[t * D + i] = m->rms_att[l * D + i] * x[t * D + i] * ss;
			for (int i = 0; i < D; i++) {
				q[t * D + i] = 0;
				for (int j = 0; j < D; j++)
					q[t * D + i] += W(m->wq, l, D, D, i, j) * xb[t * D + j];
			}
			for (int i = 0; i < KV; i++) {
				k[t * KV + i] = v[t * KV + i] = 0;
				for (int j = 0; j < D; j++) {
					k[t * KV + i] += W(m->wk, l, KV, D, i, j) * xb[t * D + j];
					v[t * KV + i] += W(m->wv, l, KV, D, i, j) * xb[t * D + j];
				}
			}
			for (int i = 0; i < D; i += 2) { /* RoPE on q and k */
				double a = t * pow(10000.0, -(double)(i % hd) / hd), cs = cos(a),
				       sn = sin(a);
				double q0 = q[t * D + i], q1 = q[t * D + i + 1];

				q[t * D + i] = q0 * cs - q1 * sn;
				q[t * D + i + 1] = q0 * sn + q1 * cs;
				if (i < KV) {
					double k0 = k[t * KV + i], k1 = k[t * KV + i + 1];

					k[t * KV + i] = k0 * cs - k1 * sn;
					k[t * KV + i + 1] = k0 * sn + k1 * cs;
				}
			}
		}
		for (int t = 0; t < n; t++)
			for (int h = 0; h < c->heads; h++) {
				int kh = h / (c->heads / c->kv_heads);
				double max = -1e300, sum = 0;

				for (int s = 0; s <= t; s++) {
					p[s] = 0;
					for (int i = 0; i < hd; i++)
						p[s] += q[t * D + h * hd + i] *
							k[s * KV + kh * hd + i];
					p[s] /= sqrt((double)hd);
					max = p[s] > max ? p[s] : max;
				}
				for (int s = 0; s <= t; s++)
					sum += (p[s] = exp(p[s] - max));
				for (int i = 0; i < hd; i++) {
					att[t * D + h * hd + i] = 0;
					for (int s = 0; s <= t; s++)
						att[t * D + h * hd + i] += p[s] / sum *
									   v[s * KV + kh * hd + i];
				}
			}
		for (int t = 0; t < n; t++) {
			double ss = 0;

			for (int i = 0; i < D; i++)
				for (int j = 0; j < D; j++)
					x[t * D + i] += W(m->wo, l, D, D, i, j) * att[t * D + j];
			for (int i = 0; i < D; i++)
				ss += x[t * D + i] * x[t * D + i];
			ss = 1.0 / sqrt(ss / D + 1e-5);
			for (int i = 0; i < D; i++)
				xb[t * D + i] = m->rms_ffn[l * D + i] * x[t * D + i] * ss;
			for (int i = 0; i < H; i++) {
				h1[i] = h3[i] = 0;
				for (int j = 0; j < D; j++) {
					h1[i] += W(m->w1, l, H, D, i, j) * xb[t * D + j];
					h3[i] += W(m->w3, l, H, D, i, j) * xb[t * D + j];
				}
				h1[i] = h1[i] / (1 + exp(-h1[i])) * h3[i];
			}
			for (int i = 0; i < D; i++)
				for (int j = 0; j < H; j++)
					x[t * D + i] += W(m->w2, l, D, H, i, j) * h1[j];
		}
	}
	{
		double ss = 0;
		const double *xl = x + (size_t)(n - 1) * D;

		for (int i = 0; i < D; i++)
			ss += xl[i] * xl[i];
		ss = 1.0 / sqrt(ss / D + 1e-5);
		for (int o = 0; o < c->vocab; o++) {
			double s = 0;

			for (int i = 0; i < D; i++)
				s += (double)m->wcls[(size_t)o * D + i] * m->rms_final[i] * xl[i] *
				     ss;
			logits[o] = (float)s;
		}
	}
#undef W
	free(x), free(xb), free(q), free(k), free(v), free(att), free(p), free(h1), free(h3);
}

Test(llama, cached_decode_equals_full_recompute, .timeout = 120)
{
	struct llm m;
	struct llm_state s;
	int tok[40];
	float *ref;
	uint64_t rng = 7;

	need_model();
	cr_assert_eq(llm_load(model_path(), &m, NULL), 0);
	cr_assert_eq(llm_state_init(&m, &s, KVC_F32), 0);
	ref = malloc((size_t)m.c.vocab * 4);
	tok[0] = 1;
	for (int p = 0; p < 40; p++) {
		llm_forward(&m, &s, tok[p], p);
		if (p % 13 == 0 || p == 39) {
			double err = 0, norm = 0;

			full_recompute(&m, tok, p + 1, ref);
			for (int i = 0; i < m.c.vocab; i++) {
				err = fmax(err, fabs((double)s.logits[i] - ref[i]));
				norm = fmax(norm, fabs((double)ref[i]));
			}
			cr_assert_lt(err, 1e-4 * norm, "position %d: cached decode off by %g", p,
				     err);
		}
		if (p + 1 < 40)
			tok[p + 1] = llm_sample(s.logits, m.c.vocab, 1.0f, &rng);
	}
	free(ref);
	llm_state_free(&s);
	llm_free(&m);
}

Test(llama, blocks_round_trip_the_cache_bit_for_bit)
{
	struct llm m;
	struct llm_state a, b;
	struct kvc_layout l;
	void *blk;

	need_model();
	cr_assert_eq(llm_load(model_path(), &m, NULL), 0);
	cr_assert_eq(llm_state_init(&m, &a, KVC_F16), 0);
	cr_assert_eq(llm_state_init(&m, &b, KVC_F16), 0);
	for (int p = 0; p < 24; p++)
		llm_forward(&m, &a, 300 + p, p);
	llm_block_layout(&m, &a, 16, &l);
	cr_assert_eq(kvc_layout_bytes(&l), (size_t)m.c.layers * 2 * 16 * m.c.kv_dim * 2);
	blk = malloc(kvc_layout_bytes(&l));
	llm_block_put(&m, &a, 8, 16, blk);
	cr_assert_eq(llm_block_get(&m, &b, 8, blk, &l), 0);
	for (int ly = 0; ly < m.c.layers; ly++) {
		size_t off = ((size_t)ly * m.c.seq_len + 8) * m.c.kv_dim,
		       n = 16 * (size_t)m.c.kv_dim;

		cr_assert_eq(memcmp(a.kc + off, b.kc + off, n * 4), 0);
		cr_assert_eq(memcmp(a.vc + off, b.vc + off, n * 4), 0);
	}
	l.head_dim++; /* another model's block */
	cr_assert_eq(llm_block_get(&m, &b, 8, blk, &l), -EINVAL);
	free(blk);
	llm_state_free(&a);
	llm_state_free(&b);
	llm_free(&m);
}

Test(llama, load_refuses_a_truncated_checkpoint)
{
	char path[] = "/tmp/kvc-llama-bad-XXXXXX", buf[4096];
	int fd = mkstemp(path);
	FILE *in;
	size_t n;
	struct llm m;
	const char *why = NULL;

	need_model();
	in = fopen(model_path(), "rb");
	n = fread(buf, 1, sizeof(buf), in);
	fclose(in);
	cr_assert_eq(write(fd, buf, n), (ssize_t)n);
	close(fd);
	cr_assert_eq(llm_load(path, &m, &why), -EINVAL);
	cr_assert_str_eq(why, "file size does not match its header");
	unlink(path);
}

static struct t_daemon D;

/* No daemon without the model: a skipped test does not run .fini, so it would outlive us. */
static void up(void)
{
	if (!access(model_path(), R_OK))
		t_daemon_start(&D, "64M");
}

static void down(void)
{
	cr_assert_eq(t_daemon_down(&D), 0, "kvcd exits 0");
}

Test(llama, greedy_from_bos_matches_the_published_ids)
{
	char out[4096], args[512];

	need_model();
	snprintf(args, sizeof(args), "--model %s --no-kvcd --steps 16", model_path());
	cr_assert_eq(
		t_tool(&(struct t_daemon){ .sock = "unused" }, "kvc-llama", args, out, sizeof(out)),
		0, "%s", out);
	cr_assert_str_eq(out, "461 461 401 401 401 461 378 455 473 456 435 299 362 409 283 264\n");
}

Test(llama, cached_prefix_equals_cold_bit_for_bit, .init = up, .fini = down, .timeout = 60)
{
	char out[4096], args[1024], prompt[512] = "";
	const char *pols[] = { "", "--policy none", "--kv-dtype bf16", "--kv-dtype f32 --chunk 7" };

	need_model();
	for (int i = 0; i < 50; i++)
		snprintf(prompt + strlen(prompt), sizeof(prompt) - strlen(prompt), " %d",
			 1 + i * 7);
	for (size_t pi = 0; pi < sizeof(pols) / sizeof(pols[0]); pi++) {
		snprintf(args, sizeof(args), "--model %s --check --steps 12 %s %s", model_path(),
			 pols[pi], prompt);
		cr_assert_eq(t_tool(&D, "kvc-llama", args, out, sizeof(out)), 0, "%s", out);
		cr_assert(strstr(out, ", 0 restored from kvcd"), "cold first: %s", out);
		cr_assert(strstr(out, "last logits equal bit for bit"), "%s", out);
		cr_assert_eq(t_tool(&D, "kvc-llama", args, out, sizeof(out)), 0, "%s", out);
		cr_assert_null(strstr(out, ", 0 restored from kvcd"), "second run hits: %s", out);
		cr_assert(strstr(out, "last logits equal bit for bit"), "%s: %s", pols[pi], out);
	}
	/* a lossy policy fetches, and its logits are not the cold ones */
	snprintf(args, sizeof(args), "--model %s --check --steps 4 --policy int2 %s", model_path(),
		 prompt);
	cr_assert_eq(t_tool(&D, "kvc-llama", args, out, sizeof(out)), 0, "%s", out);
	cr_assert_eq(t_tool(&D, "kvc-llama", args, out, sizeof(out)), 0, "%s", out);
	cr_assert(strstr(out, "last logits differ"), "%s", out);
}

Test(llama, eval_of_the_lossless_policy_is_exact, .init = up, .fini = down, .timeout = 120)
{
	static char out[16384];
	char args[1024];
	double ratio, ppl, top1, kl;
	const char *p;

	need_model();
	snprintf(args, sizeof(args),
		 "--model %s --seqs 2 --prefix 64 --cont 16 --chunk 32 "
		 "--policies 'none;int4' --json",
		 model_path());
	cr_assert_eq(t_tool(&D, "kvc-eval", args, out, sizeof(out)), 0, "%s", out);
	p = strstr(out, "{\"policy\": \"none\"");
	cr_assert_not_null(p, "%s", out);
	cr_assert_eq(sscanf(p,
			    "{\"policy\": \"none\", \"compression_ratio\": %lf, \"ppl_ratio\": "
			    "%lf, \"top1\": %lf, \"kl\": %lf",
			    &ratio, &ppl, &top1, &kl),
		     4, "%s", p);
	cr_assert_eq(ratio, 1.0);
	cr_assert_eq(ppl, 1.0);
	cr_assert_eq(top1, 1.0);
	cr_assert_eq(kl, 0.0);
	p = strstr(out, "{\"policy\": \"int4\"");
	cr_assert_not_null(p, "%s", out);
	cr_assert_eq(sscanf(p,
			    "{\"policy\": \"int4\", \"compression_ratio\": %lf, \"ppl_ratio\": "
			    "%lf, \"top1\": %lf, \"kl\": %lf",
			    &ratio, &ppl, &top1, &kl),
		     4, "%s", p);
	cr_assert_gt(ratio, 2.5, "int4 with 32-channel groups stores about 3.2x less");
	cr_assert_neq(ppl, 1.0);
	cr_assert_gt(kl, 0.0);
	/* and it left nothing behind */
	cr_assert_eq(t_kvcctl(&D, "stats --json", out, sizeof(out)), 0);
	cr_assert_eq(strncmp(out, "{\"blocks\": 0,", 13), 0, "%s", out);
}

Test(llama, eval_refuses_bad_input, .init = up, .fini = down)
{
	char out[4096], args[1024], path[] = "/tmp/kvc-eval-tok-XXXXXX";
	int fd = mkstemp(path);

	need_model();
	cr_assert_eq(write(fd, "1 2 3\n", 6), 6);
	close(fd);
	snprintf(args, sizeof(args),
		 "--model %s --tokens %s --prefix 64 --cont 16 "
		 "--policies none",
		 model_path(), path);
	cr_assert_eq(t_tool(&D, "kvc-eval", args, out, sizeof(out)), 1, "%s", out);
	cr_assert(strstr(out, "need prefix + cont + 1"), "%s", out);
	snprintf(args, sizeof(args),
		 "--model %s --seqs 1 --prefix 32 --cont 4 --chunk 16 "
		 "--policies 'int9'",
		 model_path());
	cr_assert_eq(t_tool(&D, "kvc-eval", args, out, sizeof(out)), 1, "%s", out);
	cr_assert(strstr(out, "policy 'int9'"), "%s", out);
	unlink(path);
}
