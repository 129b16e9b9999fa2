/* prefix_cache.c - an engine's use of kvcd in one page: look up how much of a prompt's prefix
 * is cached, fetch those chunks, compute and store the rest. Build against an installed
 * libkvcclient:
 *
 *   cc prefix_cache.c $(pkg-config --cflags --libs kvcclient) -o prefix_cache
 *   ./prefix_cache [SOCKET]        # run it twice: the second run finds every chunk cached
 *
 * The "model" here fills K and V with numbers derived from the tokens; a real engine writes
 * its attention keys and values into the staging buffer instead. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <kvc.h>

#define CHUNK  16 /* tokens per block */
#define NTOK   100
#define LAYERS 4
#define HEADS  2
#define DIM    64

/* K and V of tokens [t0, t0 + CHUNK) as the engine would compute them: [layer][K,V][token]
 * [head][dim] f16, written straight into staging. */
static void compute_chunk(const int32_t *tokens, size_t t0, uint16_t *out)
{
	for (size_t l = 0; l < LAYERS; l++)
		for (size_t kv = 0; kv < 2; kv++)
			for (size_t t = 0; t < CHUNK; t++)
				for (size_t e = 0; e < HEADS * DIM; e++)
					*out++ =
						(uint16_t)(0x3c00 +
							   ((tokens[t0 + t] + l + kv + e) & 0x3ff));
}

int main(int argc, char **argv)
{
	struct kvc_attach_opts o;
	struct kvc_layout layout = { .dtype = KVC_F16,
				     .layers = LAYERS,
				     .kv_heads = HEADS,
				     .head_dim = DIM,
				     .tokens = CHUNK };
	struct kvc_key keys[NTOK / CHUNK];
	int32_t tokens[NTOK];
	size_t size, hits = 0;
	kvc_client *c;
	void *stg;
	int n, err;

	for (int i = 0; i < NTOK; i++) /* the prompt's token ids */
		tokens[i] = (i * 7919) % 32000;
	kvc_attach_opts_init(&o);
	o.socket = argc > 1 ? argv[1] : NULL; /* NULL: $KVCD_SOCKET, then the default paths */
	o.ns = "example-model-v1";	      /* one key space per model (a fingerprint) */
	o.staging_size = 1 << 20;
	err = kvc_attach(&o, &c);
	if (err) {
		fprintf(stderr, "attach: %s\n", kvc_strerror(err));
		return 1;
	}
	stg = kvc_staging(c, &size); /* shared with kvcd: blocks are written and read here */

	n = kvc_key_chain_all(o.ns, tokens, NTOK, CHUNK, keys, NTOK / CHUNK); /* full chunks */
	err = n < 0 ? n : kvc_lookup(c, keys, (size_t)n, &hits); /* the cached prefix */
	for (size_t i = 0; !err && i < hits; i++) {
		struct kvc_layout got;

		err = kvc_fetch(c, &keys[i], 0, size, &got); /* chunk i lands in staging */
		/* ... the engine copies it from stg into its own KV cache ... */
	}
	for (size_t i = hits; !err && i < (size_t)n; i++) {
		compute_chunk(tokens, i * CHUNK, stg); /* the engine's prefill of chunk i */
		err = kvc_store(c, &keys[i], &layout, 0);
		if (err == -EEXIST) /* another engine stored it meanwhile: the same bytes */
			err = 0;
	}
	if (err) {
		fprintf(stderr, "kvcd: %s\n", kvc_strerror(err));
		kvc_detach(c);
		return 1;
	}
	printf("%d chunks: %zu cached, %zu computed and stored\n", n, hits, (size_t)n - hits);
	kvc_detach(c);
	return 0;
}
