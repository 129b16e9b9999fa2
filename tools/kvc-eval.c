/* kvc-eval - what each kvcd policy costs in quality and saves in memory, on a real model.
 *
 *   kvc-eval --socket PATH --model FILE [--tokens FILE | --seqs N --temp T --seed S]
 *            --prefix P --cont C --policies 'none;int8;...' [--chunk N] [--json]
 *            [--plot FILE.png] [--md FILE] [--window W] [--defer]
 *
 * For each sequence of P + C + 1 tokens (sampled from the model from BOS, or the first
 * P + C + 1 ids of a line of --tokens FILE) and each policy:
 *   - the KV of the prefix's whole chunks is STOREd through kvcd under the policy (with each
 *     token's accumulated attention as its score, and for selection policies the same per
 *     (layer, KV head) and the prefix's last W queries), FETCHed back into a fresh cache
 *     (tokens a policy dropped masked out of attention); prefix
 *     tokens after the last whole chunk are recomputed on top of it, as an engine would; with
 *     --defer the chunks are stored raw and then RECOMPRESSed under the policy as one chain
 *     (selection over the whole prefix with one window), as an engine does once its prefill
 *     is done;
 *   - the C continuation tokens are teacher-forced at positions P .. P+C-1 (their own KV stays
 *     exact), and the prediction of each next token is compared with the run that kept the
 *     whole prefix exact (the cache dtype, f16 by default).
 * Reported per policy: compression ratio (bytes the engine sent / bytes the pool holds, from
 * kvcd's per-namespace counters), perplexity ratio exp(mean NLL - mean base NLL), top-1
 * agreement with the exact run, mean KL(exact || policy) of the next-token distributions, and
 * the relative error of each layer's attention output over the continuation.
 */
#include "cli.h"
#include "llama.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct seq {
	int32_t *tok;		  /* P + C + 1 */
	float *acc;		  /* accumulated attention of the prefix when it was complete */
	float *acc_lh, *qs, *lse; /* the same per (layer, KV head); queries and their lse */
	float *kc, *vc;		  /* the exact prefix cache, as llm_state holds it */
	float *logp;		  /* C x vocab: exact run's log-probabilities */
	float *attn;		  /* C x layers x dim: exact run's attention outputs */
};

struct result {
	const char *policy;
	double ratio, ppl_ratio, top1, kl;
	double *attn_err; /* per layer */
	int err;	  /* -errno when the policy could not run */
	char why[128];
};

static struct {
	const char *sock, *model, *tokens, *policies, *plot, *md;
	int seqs, prefix, cont, chunk, json, window, defer, calibrate, cal_energy, cal_weights;
	int cal_rope;
	float temp;
	unsigned long seed, cal_seed;
} opt = { .seqs = 16,
	  .prefix = 256,
	  .cont = 128,
	  .chunk = 64,
	  .temp = 0.8f,
	  .seed = 1,
	  .window = 16,
	  .cal_seed = 3,
	  .cal_energy = 100,
	  .cal_weights = 1 };

static int basis_version; /* --calibrate: the basis learned= policies use, and its bytes */
static uint64_t basis_bytes;
static float cal_weight[2 * 256]; /* and the weights it was given ([layers][2]), for the report */

static void usage(void)
{
	fprintf(stderr,
		"usage: kvc-eval --socket PATH --model FILE [--tokens FILE | --seqs N --temp T --seed S]\n"
		"                --prefix P --cont C --policies 'none;int8;...' [--chunk N] [--json]\n"
		"                [--plot FILE.png] [--md FILE] [--window W] [--defer]\n"
		"                [--calibrate N [--calibrate-seed S] [--calibrate-energy PCT]\n"
		"                 [--calibrate-weights 0|1] [--calibrate-rope BASE]]\n");
	exit(2);
}

static void log_softmax(const float *x, int n, float *out)
{
	double max = x[0], sum = 0.0;

	for (int i = 1; i < n; i++)
		max = x[i] > max ? x[i] : max;
	for (int i = 0; i < n; i++)
		sum += exp((double)x[i] - max);
	for (int i = 0; i < n; i++)
		out[i] = (float)((double)x[i] - max - log(sum));
}

/* KL(p || q) of two distributions given as @n log-probabilities. */
static double kl_div(const float *p, const float *q, int n)
{
	double d = 0.0;

	for (int v = 0; v < n; v++)
		d += exp((double)p[v]) * ((double)p[v] - (double)q[v]);
	return d;
}

static int argmax(const float *x, int n)
{
	int b = 0;

	for (int i = 1; i < n; i++)
		b = x[i] > x[b] ? i : b;
	return b;
}

/* Read sequences from @path: one per line, whitespace-separated ids; lines too short are an
 * error, longer ones are cut. */
static int read_tokens(const struct llm *m, const char *path, int need, struct seq **out, int *n)
{
	FILE *f = fopen(path, "r");
	char *line = NULL;
	size_t cap = 0;
	int ln = 0, cnt = 0;
	struct seq *s = NULL;

	if (!f)
		return -errno;
	while (getline(&line, &cap, f) > 0) {
		int32_t *tok = malloc((size_t)need * 4);
		char *p = line, *end;
		int k = 0;

		ln++;
		while (k < need) {
			long v = strtol(p, &end, 10);

			if (end == p)
				break;
			if (v < 0 || v >= m->c.vocab) {
				fprintf(stderr, "kvc-eval: %s:%d: token %ld is not below %d\n",
					path, ln, v, m->c.vocab);
				return -EINVAL;
			}
			tok[k++] = (int32_t)v;
			p = end;
		}
		if (k == 0) {
			free(tok);
			continue;
		}
		if (k < need) {
			fprintf(stderr, "kvc-eval: %s:%d: %d tokens, need prefix + cont + 1 = %d\n",
				path, ln, k, need);
			return -EINVAL;
		}
		s = realloc(s, (size_t)(cnt + 1) * sizeof(*s));
		memset(&s[cnt], 0, sizeof(*s));
		s[cnt++].tok = tok;
	}
	free(line);
	fclose(f);
	*out = s;
	*n = cnt;
	return cnt ? 0 : -ENODATA;
}

/* The exact run: prefix, then continuation, recording what the policies are compared with. */
static int exact_run(const struct llm *m, struct seq *q, double *nll)
{
	const struct llm_config *c = &m->c;
	struct llm_state s;
	size_t cache = (size_t)c->layers * c->seq_len * c->kv_dim;
	size_t lhs = (size_t)c->layers * c->kv_heads * c->seq_len;
	int P = opt.prefix, C = opt.cont;

	if (llm_state_init(m, &s, KVC_F16))
		return -ENOMEM;
	q->acc = malloc((size_t)P * 4);
	q->kc = malloc(cache * 4);
	q->vc = malloc(cache * 4);
	q->logp = malloc((size_t)C * c->vocab * 4);
	q->attn = malloc((size_t)C * c->layers * c->dim * 4);
	if (!q->acc || !q->kc || !q->vc || !q->logp || !q->attn)
		return -ENOMEM;
	for (int p = 0; p < P; p++)
		llm_forward(m, &s, q->tok[p], p);
	memcpy(q->acc, s.acc, (size_t)P * 4);
	q->acc_lh = malloc(lhs * 4);
	q->qs = malloc((size_t)P * c->layers * c->dim * 4);
	q->lse = malloc((size_t)P * c->layers * c->heads * 4);
	if (!q->acc_lh || !q->qs || !q->lse)
		return -ENOMEM;
	memcpy(q->acc_lh, s.acc_lh, lhs * 4);
	memcpy(q->qs, s.qs, (size_t)P * c->layers * c->dim * 4);
	memcpy(q->lse, s.lse, (size_t)P * c->layers * c->heads * 4);
	memcpy(q->kc, s.kc, cache * 4);
	memcpy(q->vc, s.vc, cache * 4);
	for (int j = 0; j < C; j++) {
		float *lp = q->logp + (size_t)j * c->vocab;

		llm_forward(m, &s, q->tok[P + j], P + j);
		log_softmax(s.logits, c->vocab, lp);
		memcpy(q->attn + (size_t)j * c->layers * c->dim, s.attn,
		       (size_t)c->layers * c->dim * 4);
		*nll -= lp[q->tok[P + j + 1]];
	}
	llm_state_free(&s);
	return 0;
}

static int ns_counters(kvc_client *c, const char *ns, uint64_t *in, uint64_t *stored)
{
	static struct kvc_stats st;
	int err = kvc_stats(c, &st, sizeof(st));

	if (err)
		return err;
	for (uint32_t i = 0; i < st.nns && i < 32; i++)
		if (!strcmp(st.ns[i].name, ns)) {
			*in = st.ns[i].bytes_in;
			*stored = st.ns[i].bytes_stored;
			return 0;
		}
	*in = *stored = 0;
	return 0;
}

/* @n sequences of @need tokens sampled from BOS with @seed. */
static struct seq *sample(const struct llm *m, int n, int need, unsigned long seed)
{
	struct seq *seqs = calloc((size_t)n, sizeof(*seqs));

	for (int i = 0; seqs && i < n; i++) {
		struct llm_state s;
		uint64_t rng = (seed * 1000003ull + (uint64_t)i) * 2 + 1;

		if (llm_state_init(m, &s, KVC_F16))
			return NULL;
		seqs[i].tok = malloc((size_t)need * 4);
		seqs[i].tok[0] = 1;
		for (int p = 0; p + 1 < need; p++) {
			llm_forward(m, &s, seqs[i].tok[p], p);
			seqs[i].tok[p + 1] = llm_sample(s.logits, m->c.vocab, opt.temp, &rng);
		}
		llm_state_free(&s);
	}
	return seqs;
}

/* A standard normal draw (Box-Muller) from *@rng. */
static double gauss(uint64_t *rng)
{
	double u1, u2;

	*rng = *rng * 6364136223846793005ull + 1442695040888963407ull;
	u1 = ((double)(*rng >> 11) + 0.5) / 9007199254740992.0;
	*rng = *rng * 6364136223846793005ull + 1442695040888963407ull;
	u2 = ((double)(*rng >> 11) + 0.5) / 9007199254740992.0;
	return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

/* What an error in each layer's K, and V, costs the model, as kvc_calibrate_model takes it:
 * on the calibration sequences @cal (their exact runs done), noise of a twentieth of the
 * unit's RMS is added to that layer's K (or V) over the prefix, and the continuation's mean KL
 * divergence from the exact run, divided by the noise's variance, is the weight. Into @w
 * ([layers][2]). */
static int sensitivity(const struct llm *m, struct seq *cal, int n, float *w)
{
	const struct llm_config *c = &m->c;
	size_t cache = (size_t)c->layers * c->seq_len * c->kv_dim, lo;
	float *lp = malloc((size_t)c->vocab * 4);
	uint64_t rng = 0x5eed;

	if (!lp)
		return -ENOMEM;
	for (int u = 0; u < 2 * c->layers; u++) {
		int ly = u / 2, kv = u % 2;
		double kl = 0.0, var = 0.0, sd;
		long count = 0;

		lo = (size_t)ly * c->seq_len * c->kv_dim;
		for (int i = 0; i < n; i++) { /* the unit's mean square over the prefixes */
			const float *x = (kv ? cal[i].vc : cal[i].kc) + lo;

			for (size_t e = 0; e < (size_t)opt.prefix * c->kv_dim; e++)
				var += (double)x[e] * x[e];
		}
		sd = 0.05 * sqrt(var / ((double)n * opt.prefix * c->kv_dim));
		for (int i = 0; i < n; i++) {
			struct llm_state s;
			float *x;

			if (llm_state_init(m, &s, KVC_F16)) {
				free(lp);
				return -ENOMEM;
			}
			memcpy(s.kc, cal[i].kc, cache * 4);
			memcpy(s.vc, cal[i].vc, cache * 4);
			x = (kv ? s.vc : s.kc) + lo;
			for (size_t e = 0; e < (size_t)opt.prefix * c->kv_dim; e++)
				x[e] += (float)(sd * gauss(&rng));
			for (int j = 0; j < opt.cont; j++) {
				const float *bp = cal[i].logp + (size_t)j * c->vocab;

				llm_forward(m, &s, cal[i].tok[opt.prefix + j], opt.prefix + j);
				log_softmax(s.logits, c->vocab, lp);
				kl += kl_div(bp, lp, c->vocab);
				count++;
			}
			llm_state_free(&s);
		}
		/* a KL of 0 (a layer that does not matter) still gets a weight above 0 */
		w[u] = (float)fmax(kl / (double)count / (sd * sd), 1e-12);
	}
	free(lp);
	return 0;
}

/* --calibrate N: the prefixes of N sequences sampled with --calibrate-seed (sequences the
 * figures are never measured on) are stored raw in kvc-eval's namespace, kvcd learns the
 * namespace's basis from them, and they are deleted: learned= policies use that basis. With
 * --calibrate-weights (the default), their continuations also measure what an error in each
 * layer costs (sensitivity), which the basis keeps for kbits/vbits policies. */
static int calibrate(const struct llm *m)
{
	struct seq *cal = sample(m, opt.calibrate, opt.prefix + opt.cont + 1, opt.cal_seed);
	float *w = calloc(2 * (size_t)m->c.layers, sizeof(float));
	double ignored = 0.0;
	struct kvc_attach_opts ao;
	struct llm_kvc k = { .chunk = (uint32_t)opt.chunk };
	size_t nchunks = opt.prefix / opt.chunk;
	int err;

	if (!cal || !w)
		return -ENOMEM;
	for (int i = 0; opt.cal_weights && i < opt.calibrate; i++)
		if ((err = exact_run(m, &cal[i], &ignored)))
			return err;
	if (opt.cal_weights && (err = sensitivity(m, cal, opt.calibrate, w)))
		return err;
	for (int i = 0; opt.cal_weights && i < 2 * m->c.layers; i++)
		cal_weight[i] = w[i];
	kvc_attach_opts_init(&ao);
	ao.socket = opt.sock;
	ao.ns = "kvc-eval";
	err = kvc_attach(&ao, &k.c);
	if (err)
		return err;
	err = kvc_policy(k.c, "none", 0, NULL, 0);
	k.codec = (uint8_t)(err > 0 ? err : 0);
	snprintf(k.keyns, sizeof(k.keyns), "kvc-eval/%ld.%ld/calibration", (long)getpid(),
		 (long)time(NULL));
	for (int i = 0; err > 0 && i < opt.calibrate; i++) {
		struct llm_state s;

		if ((err = llm_state_init(m, &s, KVC_F16)))
			break;
		for (int p = 0; p < opt.prefix; p++)
			llm_forward(m, &s, cal[i].tok[p], p);
		err = llm_kvc_save(m, &s, &k, cal[i].tok, 0, nchunks);
		err = err == (int)nchunks ? 1 : err < 0 ? err : -EAGAIN;
		llm_state_free(&s);
	}
	if (err > 0)
		err = kvc_calibrate_model(k.c, 0, (uint32_t)opt.cal_energy, (uint32_t)opt.cal_rope,
					  opt.cal_weights ? w : NULL,
					  opt.cal_weights ? (uint32_t)m->c.layers : 0,
					  &basis_bytes);
	if (err > 0)
		basis_version = err;
	for (int i = 0; i < opt.calibrate; i++) {
		struct kvc_key keys[64];
		int nk = kvc_key_chain_all(k.keyns, cal[i].tok, nchunks * opt.chunk, opt.chunk,
					   keys, 64);

		for (int j = 0; j < nk; j++)
			kvc_delete(k.c, &keys[j]);
		free(cal[i].tok);
		free(cal[i].acc);
		free(cal[i].kc);
		free(cal[i].vc);
		free(cal[i].logp);
		free(cal[i].attn);
		free(cal[i].acc_lh);
		free(cal[i].qs);
		free(cal[i].lse);
	}
	free(cal);
	free(w);
	kvc_detach(k.c);
	return err < 0 ? err : 0;
}

static void run_policy(const struct llm *m, struct seq *seqs, int n, double base_nll, int idx,
		       struct result *r)
{
	const struct llm_config *c = &m->c;
	struct kvc_attach_opts ao;
	struct llm_kvc k = { .chunk = (uint32_t)opt.chunk,
			     .scores = true,
			     .aux = KVC_AUX_ATTN | KVC_AUX_QUERIES,
			     .window = (uint32_t)opt.window };
	struct llm_state s;
	size_t cache = (size_t)c->layers * c->seq_len * c->kv_dim, nchunks = opt.prefix / opt.chunk;
	uint64_t in0, st0, in1, st1;
	double nll = 0.0, kl = 0.0, *num, *den;
	float *lp = malloc((size_t)c->vocab * 4);
	long agree = 0, count = 0;
	const char *what = "attach";
	int err;

	kvc_attach_opts_init(&ao);
	ao.socket = opt.sock;
	ao.ns = "kvc-eval";
	r->attn_err = calloc((size_t)c->layers, sizeof(double));
	num = calloc((size_t)c->layers, sizeof(double));
	den = calloc((size_t)c->layers, sizeof(double));
	if (!lp || !r->attn_err || !num || !den) {
		err = -ENOMEM;
		goto out;
	}
	err = kvc_attach(&ao, &k.c);
	if (err)
		goto out;
	err = kvc_policy(k.c, r->policy, 0, r->why, sizeof(r->why));
	if (err < 0) {
		r->err = err; /* the daemon's reason is in r->why already */
		goto detach;
	}
	k.codec = (uint8_t)err;
	what = "store";
	/* blocks of this run and policy only: a fresh key namespace */
	snprintf(k.keyns, sizeof(k.keyns), "kvc-eval/%ld.%ld/%d", (long)getpid(), (long)time(NULL),
		 idx);
	err = ns_counters(k.c, "kvc-eval", &in0, &st0);
	for (int i = 0; !err && i < n; i++) {
		if ((err = llm_state_init(m, &s, KVC_F16)))
			break;
		/* the engine's cache when the prefix was complete, stored under the policy */
		memcpy(s.kc, seqs[i].kc, cache * 4);
		memcpy(s.vc, seqs[i].vc, cache * 4);
		memcpy(s.acc, seqs[i].acc, (size_t)opt.prefix * 4);
		memcpy(s.acc_lh, seqs[i].acc_lh, (size_t)c->layers * c->kv_heads * c->seq_len * 4);
		memcpy(s.qs, seqs[i].qs, (size_t)opt.prefix * c->layers * c->dim * 4);
		memcpy(s.lse, seqs[i].lse, (size_t)opt.prefix * c->layers * c->heads * 4);
		if (opt.defer) { /* raw now, the policy's form once the prefill is done */
			struct llm_kvc raw = k;

			raw.codec = 0;
			raw.scores = false;
			raw.aux = 0;
			err = llm_kvc_save(m, &s, &raw, seqs[i].tok, 0, nchunks);
			if (err >= 0)
				err = llm_kvc_recompress(m, &s, &k, seqs[i].tok, nchunks, k.codec,
							 NULL);
			if (err >= 0 && err != (int)nchunks)
				err = -EAGAIN; /* a chunk stayed raw: the figures would mix */
		} else {
			err = llm_kvc_save(m, &s, &k, seqs[i].tok, 0, nchunks);
		}
		llm_state_free(&s);
		if (err < 0)
			break;
		err = 0;
	}
	if (!err)
		err = ns_counters(k.c, "kvc-eval", &in1, &st1);
	if (!err) {
		r->ratio = st1 > st0 ? (double)(in1 - in0) / (double)(st1 - st0) : 0.0;
		what = "fetch";
	}
	for (int i = 0; !err && i < n; i++) {
		struct seq *q = &seqs[i];
		int got;

		if ((err = llm_state_init(m, &s, KVC_F16)))
			break;
		got = llm_kvc_restore(m, &s, &k, q->tok, (size_t)opt.prefix, nchunks * opt.chunk);
		if (got != (int)(nchunks * opt.chunk)) {
			err = got < 0 ? got : -ENOENT;
			llm_state_free(&s);
			break;
		}
		for (int p = got; p < opt.prefix; p++)
			llm_forward(m, &s, q->tok[p], p);
		for (int j = 0; j < opt.cont; j++) {
			const float *bp = q->logp + (size_t)j * c->vocab;
			const float *ba = q->attn + (size_t)j * c->layers * c->dim;

			llm_forward(m, &s, q->tok[opt.prefix + j], opt.prefix + j);
			log_softmax(s.logits, c->vocab, lp);
			nll -= lp[q->tok[opt.prefix + j + 1]];
			kl += kl_div(bp, lp, c->vocab);
			agree += argmax(lp, c->vocab) == argmax(bp, c->vocab);
			count++;
			for (int l = 0; l < c->layers; l++)
				for (int e = 0; e < c->dim; e++) {
					double a = ba[l * c->dim + e], b = s.attn[l * c->dim + e];

					num[l] += (a - b) * (a - b);
					den[l] += a * a;
				}
		}
		llm_state_free(&s);
	}
	/* leave the daemon as it was, whatever went wrong */
	for (int i = 0; i < n; i++) {
		struct kvc_key keys[64];
		int nk = kvc_key_chain_all(k.keyns, seqs[i].tok, nchunks * opt.chunk, opt.chunk,
					   keys, 64);

		for (int j = 0; j < nk; j++)
			kvc_delete(k.c, &keys[j]);
	}
detach:
	kvc_detach(k.c);
out:
	if (err && !r->err) {
		snprintf(r->why, sizeof(r->why), "%s: %s", what, kvc_strerror(err));
		r->err = err;
	}
	if (r->err) {
		free(num);
		free(den);
		free(lp);
		return;
	}
	r->ppl_ratio = exp(nll / (double)count - base_nll);
	r->top1 = (double)agree / (double)count;
	r->kl = kl / (double)count;
	for (int l = 0; l < c->layers; l++)
		r->attn_err[l] = den[l] > 0 ? sqrt(num[l] / den[l]) : 0.0;
	free(num);
	free(den);
	free(lp);
}

/* The codec's name: "int4:group=8" and "int6" are both "int"; with token selection,
 * "kivi+select" ("none" alone: "select"). */
static void family(const char *policy, char *out, size_t n)
{
	size_t k = strcspn(policy, ":0123456789");
	bool sel = strstr(policy, "select=") != NULL;

	if (sel && !strncmp(policy, "none", 4))
		snprintf(out, n, "select");
	else
		snprintf(out, n, "%.*s%s", (int)k, policy, sel ? "+select" : "");
}

static int write_plot(const struct result *r, int np, const char *png)
{
	char data[] = "/tmp/kvc-eval-XXXXXX", fam[32], names[512] = "";
	FILE *f, *g;
	int fd = mkstemp(data), nf = 0;

	if (fd < 0 || !(f = fdopen(fd, "w")))
		return -errno;
	/* one gnuplot data block per family (the policy's name before ':'), two blank lines
	 * apart, in order of first appearance */
	for (int first = 0; first < np; first++) {
		int seen = 0;

		family(r[first].policy, fam, sizeof(fam));
		for (int j = 0; j < first; j++) {
			char fj[32];

			family(r[j].policy, fj, sizeof(fj));
			seen |= !r[j].err && !strcmp(fj, fam);
		}
		if (r[first].err || seen)
			continue;
		for (int i = first; i < np; i++) {
			char fi[32];

			family(r[i].policy, fi, sizeof(fi));
			if (!r[i].err && !strcmp(fi, fam))
				fprintf(f, "%.4f %.5f\n", r[i].ratio, r[i].ppl_ratio);
		}
		fprintf(f, "\n\n");
		snprintf(names + strlen(names), sizeof(names) - strlen(names), "%s%s",
			 nf ? " " : "", fam);
		nf++;
	}
	fclose(f);
	g = popen("gnuplot", "w");
	if (!g) {
		unlink(data);
		return -errno;
	}
	fprintf(g,
		"set terminal pngcairo size 900,600\nset output '%s'\n"
		"set xlabel 'compression ratio (bytes sent / bytes stored)'\n"
		"set ylabel 'perplexity ratio (log scale)'\nset logscale y\nset grid\n"
		"set key outside right\nset title 'kvcd policies on stories260K'\n",
		png);
	fprintf(g,
		"names = '%s'\nplot for [i=0:%d] '%s' index i using 1:2 with points pt 7 "
		"ps 1.3 title word(names, i + 1)\n",
		names, nf - 1, data);
	fprintf(g, "\n");
	fflush(g);
	int st = pclose(g);

	unlink(data);
	return st == 0 ? 0 : -EIO;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = { { "socket", 1, 0, 'S' },
					      { "model", 1, 0, 'm' },
					      { "tokens", 1, 0, 'T' },
					      { "seqs", 1, 0, 'n' },
					      { "temp", 1, 0, 't' },
					      { "seed", 1, 0, 'r' },
					      { "prefix", 1, 0, 'P' },
					      { "cont", 1, 0, 'C' },
					      { "policies", 1, 0, 'p' },
					      { "chunk", 1, 0, 'k' },
					      { "json", 0, 0, 'j' },
					      { "plot", 1, 0, 'g' },
					      { "md", 1, 0, 'M' },
					      { "window", 1, 0, 'w' },
					      { "defer", 0, 0, 'D' },
					      { "calibrate", 1, 0, 'c' },
					      { "calibrate-seed", 1, 0, 'e' },
					      { "calibrate-energy", 1, 0, 'E' },
					      { "calibrate-weights", 1, 0, 'W' },
					      { "calibrate-rope", 1, 0, 'R' },
					      { "help", 0, 0, 'h' },
					      { 0 } };
	struct llm m;
	struct seq *seqs = NULL;
	struct result *res = NULL;
	const char *why = NULL;
	char *pols, *save = NULL;
	int n = 0, np = 0, o, err, need;
	double base_nll = 0.0;
	cli_version(argc, argv, "kvc-eval");

	while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (o) {
		case 'S': opt.sock = optarg; break;
		case 'm': opt.model = optarg; break;
		case 'T': opt.tokens = optarg; break;
		case 'n': opt.seqs = atoi(optarg); break;
		case 't': opt.temp = strtof(optarg, NULL); break;
		case 'r': opt.seed = strtoul(optarg, NULL, 10); break;
		case 'P': opt.prefix = atoi(optarg); break;
		case 'C': opt.cont = atoi(optarg); break;
		case 'p': opt.policies = optarg; break;
		case 'k': opt.chunk = atoi(optarg); break;
		case 'j': opt.json = 1; break;
		case 'g': opt.plot = optarg; break;
		case 'M': opt.md = optarg; break;
		case 'w': opt.window = atoi(optarg); break;
		case 'D': opt.defer = 1; break;
		case 'c': opt.calibrate = atoi(optarg); break;
		case 'e': opt.cal_seed = strtoul(optarg, NULL, 10); break;
		case 'E': opt.cal_energy = atoi(optarg); break;
		case 'W': opt.cal_weights = atoi(optarg); break;
		case 'R': opt.cal_rope = atoi(optarg); break;
		default: usage();
		}
	}
	if (!opt.model || !opt.policies || opt.seqs <= 0 || opt.prefix <= 0 || opt.cont <= 0 ||
	    opt.chunk <= 0 || opt.chunk > opt.prefix || opt.prefix / opt.chunk > 64 ||
	    opt.window <= 0 || opt.window > 4096 || opt.calibrate < 0 ||
	    (long)opt.calibrate * opt.prefix > 8192 || opt.cal_energy < 1 || opt.cal_energy > 100 ||
	    opt.cal_rope < 0)
		usage();
	err = llm_load(opt.model, &m, &why);
	if (err) {
		fprintf(stderr, "kvc-eval: %s: %s\n", opt.model, why ? why : strerror(-err));
		return 1;
	}
	need = opt.prefix + opt.cont + 1;
	if (opt.calibrate && m.c.layers > 256) {
		fprintf(stderr, "kvc-eval: --calibrate: at most 256 layers (the model has %d)\n",
			m.c.layers);
		return 2;
	}
	if (need > m.c.seq_len) {
		fprintf(stderr,
			"kvc-eval: prefix + cont + 1 = %d exceeds the model's %d positions\n", need,
			m.c.seq_len);
		return 2;
	}
	if (opt.tokens) {
		err = read_tokens(&m, opt.tokens, need, &seqs, &n);
		if (err) {
			fprintf(stderr, "kvc-eval: %s: %s\n", opt.tokens, strerror(-err));
			return 1;
		}
	} else {
		n = opt.seqs;
		seqs = sample(&m, n, need, opt.seed);
		if (!seqs)
			return 1;
	}
	if (opt.calibrate) {
		err = calibrate(&m);
		if (err) {
			fprintf(stderr, "kvc-eval: --calibrate: %s\n", kvc_strerror(err));
			return 1;
		}
		fprintf(stderr,
			"kvc-eval: basis %d (%llu bytes) learned from %d sequences of seed %lu, "
			"%d%% energy\n",
			basis_version, (unsigned long long)basis_bytes, opt.calibrate, opt.cal_seed,
			opt.cal_energy);
		for (int i = 0; opt.cal_weights && i < m.c.layers; i++)
			fprintf(stderr, "kvc-eval: layer %d: weight of K %.4g, of V %.4g\n", i,
				cal_weight[2 * i], cal_weight[2 * i + 1]);
	}
	for (int i = 0; i < n; i++)
		if (exact_run(&m, &seqs[i], &base_nll))
			return 1;
	base_nll /= (double)n * opt.cont;

	pols = strdup(opt.policies);
	for (char *p = strtok_r(pols, ";", &save); p; p = strtok_r(NULL, ";", &save)) {
		while (*p == ' ')
			p++;
		if (!*p)
			continue;
		res = realloc(res, (size_t)(np + 1) * sizeof(*res));
		memset(&res[np], 0, sizeof(*res));
		res[np].policy = p;
		run_policy(&m, seqs, n, base_nll, np, &res[np]);
		if (res[np].err)
			fprintf(stderr, "kvc-eval: policy '%s': %s\n", p, res[np].why);
		np++;
	}

	if (opt.json) {
		printf("{\"model\": \"%s\", \"seqs\": %d, \"prefix\": %d, \"cont\": %d, \"chunk\": %d, "
		       "\"temp\": %g, \"seed\": %lu, \"base_nll\": %.6f, ",
		       opt.model, n, opt.prefix, opt.cont, opt.chunk, opt.temp, opt.seed, base_nll);
		if (basis_version) { /* learned= policies' ratios leave it out: it is per namespace */
			printf("\"basis\": {\"bytes\": %llu, \"calibration_seqs\": %d, \"seed\": %lu, "
			       "\"energy_pct\": %d, \"rope\": %d, \"weights\": [",
			       (unsigned long long)basis_bytes, opt.calibrate, opt.cal_seed,
			       opt.cal_energy, opt.cal_rope);
			for (int i = 0; opt.cal_weights && i < 2 * m.c.layers; i++)
				printf("%s%.4g", i ? ", " : "", cal_weight[i]);
			printf("]}, ");
		}
		printf("\"policies\": [");
		for (int i = 0; i < np; i++) {
			printf("%s\n  {\"policy\": \"%s\"", i ? "," : "", res[i].policy);
			if (res[i].err) {
				printf(", \"error\": \"%s\"}", res[i].why);
				continue;
			}
			printf(", \"compression_ratio\": %.4f, \"ppl_ratio\": %.6f, \"top1\": %.6f, "
			       "\"kl\": %.6g, \"attn_err\": [",
			       res[i].ratio, res[i].ppl_ratio, res[i].top1, res[i].kl);
			for (int l = 0; l < m.c.layers; l++)
				printf("%s%.5f", l ? ", " : "", res[i].attn_err[l]);
			printf("]}");
		}
		printf("\n]}\n");
	} else {
		printf("%d sequences, prefix %d, continuation %d, chunk %d; base NLL %.4f "
		       "(perplexity %.3f)\n",
		       n, opt.prefix, opt.cont, opt.chunk, base_nll, exp(base_nll));
		if (basis_version)
			printf("learned= policies: basis of %llu bytes, not counted in their ratios, "
			       "from %d sequences of seed %lu\n",
			       (unsigned long long)basis_bytes, opt.calibrate, opt.cal_seed);
		printf("%-48s %7s %9s %7s %9s  attention-output error per layer\n", "policy",
		       "ratio", "ppl ratio", "top-1", "KL");
		for (int i = 0; i < np; i++) {
			if (res[i].err) {
				printf("%-48s error: %s\n", res[i].policy, res[i].why);
				continue;
			}
			printf("%-48s %6.2fx %9.4f %6.1f%% %9.5f ", res[i].policy, res[i].ratio,
			       res[i].ppl_ratio, 100.0 * res[i].top1, res[i].kl);
			for (int l = 0; l < m.c.layers; l++)
				printf(" %.4f", res[i].attn_err[l]);
			printf("\n");
		}
	}
	if (opt.md) {
		FILE *f = fopen(opt.md, "w");

		if (!f) {
			fprintf(stderr, "kvc-eval: %s: %s\n", opt.md, strerror(errno));
			return 1;
		}
		fprintf(f,
			"| policy | compression | perplexity ratio | top-1 | KL | attention-output "
			"error, layers 0..%d |\n|---|---|---|---|---|---|\n",
			m.c.layers - 1);
		for (int i = 0; i < np; i++) {
			if (res[i].err) {
				fprintf(f, "| `%s` | error: %s | | | | |\n", res[i].policy,
					res[i].why);
				continue;
			}
			fprintf(f, "| `%s` | %.2fx | %.3f | %.1f%% | %.4f |", res[i].policy,
				res[i].ratio, res[i].ppl_ratio, 100.0 * res[i].top1, res[i].kl);
			for (int l = 0; l < m.c.layers; l++)
				fprintf(f, " %.3f", res[i].attn_err[l]);
			fprintf(f, " |\n");
		}
		/* the frontier: at each compression, the best perplexity among pure quantization
		 * policies and among those that select tokens (alone or composed) */
		fprintf(f,
			"\nFrontier: at each compression, the policy with the lowest perplexity "
			"ratio among those that compress at least as much, without and with token "
			"selection.\n\n| at least | without selection | ratio | perplexity ratio | "
			"with selection | ratio | perplexity ratio |\n|---|---|---|---|---|---|---|\n");
		static const double at[] = { 1.5, 2, 2.5, 3, 3.2, 4, 5, 6, 8, 10, 12, 16 };

		for (size_t a = 0; a < sizeof(at) / sizeof(at[0]); a++) {
			int b[2] = { -1, -1 };

			for (int i = 0; i < np; i++) {
				int sel = strstr(res[i].policy, "select=") != NULL;

				if (!res[i].err && res[i].ratio >= at[a] &&
				    (b[sel] < 0 || res[i].ppl_ratio < res[b[sel]].ppl_ratio))
					b[sel] = i;
			}
			if (b[0] < 0 && b[1] < 0)
				continue;
			fprintf(f, "| %gx |", at[a]);
			for (int k = 0; k < 2; k++)
				if (b[k] < 0)
					fprintf(f, " none | | |");
				else
					fprintf(f, " `%s` | %.2fx | %.3f |", res[b[k]].policy,
						res[b[k]].ratio, res[b[k]].ppl_ratio);
			fprintf(f, "\n");
		}
		fclose(f);
	}
	if (opt.plot) {
		err = write_plot(res, np, opt.plot);
		if (err)
			fprintf(stderr, "kvc-eval: plot %s: gnuplot failed (%s)\n", opt.plot,
				strerror(-err));
	}
	err = 0;
	for (int i = 0; i < np; i++) {
		err |= res[i].err;
		free(res[i].attn_err);
	}
	for (int i = 0; i < n; i++) {
		void *own[] = { seqs[i].tok, seqs[i].acc, seqs[i].acc_lh, seqs[i].qs,  seqs[i].lse,
				seqs[i].kc,  seqs[i].vc,  seqs[i].logp,	  seqs[i].attn };

		for (size_t j = 0; j < sizeof(own) / sizeof(own[0]); j++)
			free(own[j]);
	}
	free(seqs);
	free(res);
	free(pols);
	llm_free(&m);
	return err ? 1 : 0;
}
