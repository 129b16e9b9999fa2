/* workload.h - prefix-cache traces: a seeded generator of what an inference fleet sends, the
 * trace file (JSON lines that any system can replay), the chained block keys of a request,
 * and the offline references computed on a trace: plain LRU and Belady's MIN.
 *
 * A request is a sequence of segments, each a run of 16-token chunks of one piece of content
 * (a system prompt, a document, a conversation turn, a one-off question). Two requests share
 * a block exactly when they share every segment before it, as chained token-hash keys do. */
#ifndef KVC_WORKLOAD_H
#define KVC_WORKLOAD_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "kvc.h"

#define WL_CHUNK_TOKENS 16
#define WL_MAX_CHUNKS	4096 /* per request */

enum wl_kind {
	WL_CHAT,
	WL_DOC,
	WL_ONEOFF
};

struct wl_seg {
	uint64_t id;	 /* the content: equal ids, equal tokens */
	uint32_t chunks; /* its length in chunks */
};

struct wl_req {
	double t_ms; /* arrival */
	uint32_t tenant;
	uint8_t kind;		/* enum wl_kind */
	uint32_t nseg, nchunks; /* the prompt: looked up, then the rest stored */
	struct wl_seg *seg;
	struct wl_seg out; /* what the engine generated: stored after the prompt */
};

struct wl_trace {
	struct wl_req *req;
	size_t n;
	uint64_t chunks; /* over every request */
};

struct wl_params {
	uint64_t seed;
	unsigned requests;
	unsigned tenants; /* each with its own system prompts */
	unsigned prompts_per_tenant;
	unsigned docs;		      /* long shared documents */
	double rate;		      /* requests per second (Poisson arrivals) */
	double p_chat, p_doc;	      /* the rest are one-off prompts */
	double zipf_tenant, zipf_doc; /* popularity exponents */
};

void wl_defaults(struct wl_params *p);
/* Write the trace @p describes to @out, a request per line. Returns 0 or -errno. */
int wl_generate(const struct wl_params *p, FILE *out);
/* Read a trace file. Returns 0, -errno, or -EBADMSG naming the line in *@bad_line. */
int wl_load(const char *path, struct wl_trace *t, size_t *bad_line);
void wl_free(struct wl_trace *t);
/* The chained keys of @r's prompt chunks, then (@out) of its generated ones; at most @max.
 * Returns how many. */
size_t wl_keys(const struct wl_req *r, int out, struct kvc_key *keys, size_t max);

/* An offline replay: each request's hit is the longest cached prefix of its prompt's chain;
 * then all its blocks, generated ones included, are cached (the hits touched, the rest
 * inserted). @cap blocks fit. */
struct wl_sim {
	uint64_t hit_chunks, chunks, evictions, unique_blocks;
};
int wl_sim_lru(const struct wl_trace *t, size_t cap, struct wl_sim *out);
/* Belady's MIN: on a miss with the cache full, evict the block used farthest in the future
 * (or bypass the new one when it is that block). */
int wl_sim_belady(const struct wl_trace *t, size_t cap, struct wl_sim *out);

#endif
