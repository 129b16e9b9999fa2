/* kvc-llama - a small real inference engine that uses kvcd as its prefix cache.
 *
 *   kvc-llama --model FILE [--socket PATH] [--ns NAME] [--chunk N] [--policy P] [--scores]
 *             [--kv-dtype f16|bf16|f32] [--steps N] [--temp T] [--seed S] [--no-kvcd]
 *             [--check] [TOKEN ...]
 *
 * Prefill: the prompt (token ids; BOS = 1 when none are given) is cut into chunks; the
 * longest cached prefix is fetched from kvcd instead of computed, the rest is computed, and
 * every new full chunk is stored. Then it generates --steps tokens (greedy, or sampled at
 * --temp with --seed) and prints their ids on one line. What kvcd saved goes to stderr.
 * --check also runs the prefill cold and compares the last logits bit for bit.
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

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void usage(void)
{
	fprintf(stderr,
		"usage: kvc-llama --model FILE [--socket PATH] [--ns NAME] [--chunk N] [--policy P]\n"
		"                 [--scores] [--kv-dtype f16|bf16|f32] [--steps N] [--temp T]\n"
		"                 [--seed S] [--no-kvcd] [--check] [TOKEN ...]\n");
	exit(2);
}

static int parse_dtype(const char *s)
{
	return !strcmp(s, "f16")    ? KVC_F16
	       : !strcmp(s, "bf16") ? KVC_BF16
	       : !strcmp(s, "f32")  ? KVC_F32
				    : -1;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = { { "model", 1, 0, 'm' },	 { "socket", 1, 0, 'S' },
					      { "ns", 1, 0, 'n' },	 { "chunk", 1, 0, 'c' },
					      { "policy", 1, 0, 'p' },	 { "scores", 0, 0, 'a' },
					      { "kv-dtype", 1, 0, 'd' }, { "steps", 1, 0, 's' },
					      { "temp", 1, 0, 't' },	 { "seed", 1, 0, 'r' },
					      { "no-kvcd", 0, 0, 'N' },	 { "check", 0, 0, 'C' },
					      { "help", 0, 0, 'h' },	 { 0 } };
	const char *model = NULL, *sock = NULL, *ns = NULL, *policy = NULL, *why = NULL;
	int steps = 32, dtype = KVC_F16, use_kvcd = 1, check = 0, o, err;
	unsigned long chunk = 16;
	float temp = 0.0f;
	uint64_t rng = 42;
	struct llm_kvc k = { 0 };
	struct llm m;
	struct llm_state s;
	int32_t *tok;
	size_t n = 0, restored = 0;
	double t0, t_restore = 0, t_compute;
	cli_version(argc, argv, "kvc-llama");

	while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (o) {
		case 'm': model = optarg; break;
		case 'S': sock = optarg; break;
		case 'n': ns = optarg; break;
		case 'c': chunk = strtoul(optarg, NULL, 10); break;
		case 'p': policy = optarg; break;
		case 'a': k.scores = true; break;
		case 'd': dtype = parse_dtype(optarg); break;
		case 's': steps = atoi(optarg); break;
		case 't': temp = strtof(optarg, NULL); break;
		case 'r': rng = strtoull(optarg, NULL, 10) * 2 + 1; break;
		case 'N': use_kvcd = 0; break;
		case 'C': check = 1; break;
		default: usage();
		}
	}
	if (!model || dtype < 0 || chunk == 0 || chunk > 4096 || steps < 0)
		usage();
	err = llm_load(model, &m, &why);
	if (err) {
		fprintf(stderr, "kvc-llama: %s: %s\n", model, why ? why : strerror(-err));
		return 1;
	}
	tok = malloc((size_t)m.c.seq_len * sizeof(*tok));
	if (!tok || llm_state_init(&m, &s, (uint8_t)dtype)) {
		fprintf(stderr, "kvc-llama: out of memory\n");
		return 1;
	}
	for (int i = optind; i < argc && n < (size_t)m.c.seq_len; i++) {
		char *end;
		long v = strtol(argv[i], &end, 10);

		if (*end || v < 0 || v >= m.c.vocab) {
			fprintf(stderr, "kvc-llama: token '%s' is not an id below %d\n", argv[i],
				m.c.vocab);
			return 2;
		}
		tok[n++] = (int32_t)v;
	}
	if (!n)
		tok[n++] = 1;
	if ((size_t)steps > (size_t)m.c.seq_len - n)
		steps = (int)((size_t)m.c.seq_len - n);

	if (use_kvcd) {
		struct kvc_attach_opts ao;

		kvc_attach_opts_init(&ao);
		ao.socket = sock;
		ao.ns = ns;
		err = kvc_attach(&ao, &k.c);
		if (err) {
			cli_attach_error("kvc-llama", sock, ns, err);
			fprintf(stderr, "kvc-llama: --no-kvcd runs without kvcd\n");
			return 1;
		}
		k.chunk = (uint32_t)chunk;
		llm_kvc_keyns(&m, (uint8_t)dtype, ns, &k);
		if (policy) {
			char reason[128] = "";

			err = kvc_policy(k.c, policy, 0, reason, sizeof(reason));
			if (err < 0) {
				fprintf(stderr, "kvc-llama: policy '%s': %s%s%s\n", policy,
					kvc_strerror(err), *reason ? ": " : "", reason);
				return 1;
			}
			k.codec = (uint8_t)err;
			/* blocks of another policy are other blocks */
			snprintf(k.keyns + strlen(k.keyns), sizeof(k.keyns) - strlen(k.keyns),
				 "/%s", policy);
		}
		/* at least the last prompt token is computed: its logits start generation */
		t0 = now_ms();
		err = llm_kvc_restore(&m, &s, &k, tok, n, n - 1);
		t_restore = now_ms() - t0;
		if (err < 0) {
			fprintf(stderr, "kvc-llama: restore: %s\n", kvc_strerror(err));
			return 1;
		}
		restored = (size_t)err;
	}
	t0 = now_ms();
	for (size_t p = restored; p < n; p++)
		llm_forward(&m, &s, tok[p], (int)p);
	t_compute = now_ms() - t0;
	if (use_kvcd) {
		err = llm_kvc_save(&m, &s, &k, tok, restored / chunk, n / chunk);
		if (err < 0)
			fprintf(stderr, "kvc-llama: store: %s\n", kvc_strerror(err));
		fprintf(stderr,
			"prefill: %zu prompt tokens, %zu restored from kvcd in %.3f ms, %zu computed in "
			"%.3f ms (%.4f ms/token): about %.3f ms saved; %d chunks stored\n",
			n, restored, t_restore, n - restored, t_compute,
			t_compute / (double)(n - restored),
			(double)restored * t_compute / (double)(n - restored) - t_restore, err);
	}
	if (check) {
		struct llm_state cold;
		double d = 0.0;

		if (llm_state_init(&m, &cold, (uint8_t)dtype))
			return 1;
		t0 = now_ms();
		for (size_t p = 0; p < n; p++)
			llm_forward(&m, &cold, tok[p], (int)p);
		for (int i = 0; i < m.c.vocab; i++)
			d = fmax(d, fabs((double)cold.logits[i] - (double)s.logits[i]));
		fprintf(stderr, "check: cold prefill %.3f ms; last logits %s (max |diff| %g)\n",
			now_ms() - t0,
			memcmp(cold.logits, s.logits, (size_t)m.c.vocab * 4) ? "differ"
									     : "equal bit for bit",
			d);
		llm_state_free(&cold);
	}
	for (int i = 0; i < steps; i++) {
		int next = llm_sample(s.logits, m.c.vocab, temp, &rng);

		printf("%s%d", i ? " " : "", next);
		tok[n] = next;
		llm_forward(&m, &s, next, (int)n);
		n++;
	}
	printf("\n");
	if (use_kvcd) { /* the chunks generation filled are a prefix too */
		err = llm_kvc_save(&m, &s, &k, tok, (n - (size_t)steps) / chunk, n / chunk);
		if (err < 0)
			fprintf(stderr, "kvc-llama: store: %s\n", kvc_strerror(err));
		kvc_detach(k.c);
	}
	llm_state_free(&s);
	llm_free(&m);
	free(tok);
	return 0;
}
