/* workload.c - prefix-cache traces (workload.h): the generator, the trace file, chained keys,
 * and the LRU and Belady references. */
#include "workload.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

void wl_defaults(struct wl_params *p)
{
	*p = (struct wl_params){ .seed = 1,
				 .requests = 4000,
				 .tenants = 16,
				 .prompts_per_tenant = 4,
				 .docs = 48,
				 .rate = 20,
				 .p_chat = 0.45,
				 .p_doc = 0.25,
				 .zipf_tenant = 1.0,
				 .zipf_doc = 1.1 };
}

/* ---- the generator ------------------------------------------------------------------------ */

static uint64_t rnd(uint64_t *s) /* splitmix64 */
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static double unif(uint64_t *s) /* (0, 1) */
{
	return ((double)(rnd(s) >> 11) + 0.5) / 9007199254740992.0;
}

static unsigned between(uint64_t *s, unsigned lo, unsigned hi) /* [lo, hi] */
{
	return lo + (unsigned)(rnd(s) % (hi - lo + 1));
}

/* The cumulative weights of Zipf(@a) over @n ranks, for zipf_pick. */
static double *zipf_cdf(unsigned n, double a)
{
	double *c = malloc(n * sizeof(*c)), sum = 0;

	for (unsigned i = 0; c && i < n; i++)
		c[i] = (sum += 1.0 / pow(i + 1, a));
	for (unsigned i = 0; c && i < n; i++)
		c[i] /= sum;
	return c;
}

static unsigned zipf_pick(const double *c, unsigned n, uint64_t *s)
{
	double u = unif(s);
	unsigned lo = 0, hi = n - 1;

	while (lo < hi) {
		unsigned mid = (lo + hi) / 2;

		if (c[mid] < u)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* A live conversation: its segments so far; each turn adds the last answer and a question. */
struct conv {
	unsigned tenant, turns_left, nseg;
	struct wl_seg seg[64];
	struct wl_seg answer; /* of the last turn; 0 chunks before the first */
};

/* Content ids: the kind in the top byte, so that a prompt and a document never collide. */
#define ID(kind, n) ((uint64_t)(kind) << 56 | (n))
enum {
	ID_PROMPT = 1,
	ID_DOC,
	ID_QUESTION,
	ID_ANSWER,
	ID_ONEOFF
};

static void put_req(FILE *out, double t, unsigned tenant, const char *kind,
		    const struct wl_seg *seg, unsigned nseg, struct wl_seg ans)
{
	fprintf(out, "{\"t_ms\": %.3f, \"tenant\": %u, \"kind\": \"%s\", \"segs\": [", t, tenant,
		kind);
	for (unsigned i = 0; i < nseg; i++)
		fprintf(out, "%s[%llu, %u]", i ? ", " : "", (unsigned long long)seg[i].id,
			seg[i].chunks);
	fprintf(out, "], \"out\": [%llu, %u]}\n", (unsigned long long)ans.id, ans.chunks);
}

int wl_generate(const struct wl_params *p, FILE *out)
{
	uint64_t s = p->seed * 0x2545f4914f6cdd1dull + 1, next_id = 1;
	unsigned np = p->tenants * p->prompts_per_tenant, nconv = 0;
	double *ct = zipf_cdf(p->tenants, p->zipf_tenant), *cd = zipf_cdf(p->docs, p->zipf_doc),
	       *cp = zipf_cdf(p->prompts_per_tenant, 1.0), t = 0;
	uint32_t *plen = malloc(np * sizeof(*plen)), *dlen = malloc(p->docs * sizeof(*dlen));
	struct conv *conv = calloc(256, sizeof(*conv));
	int err = 0;

	if (!ct || !cd || !cp || !plen || !dlen || !conv || !p->tenants || !p->docs ||
	    !p->prompts_per_tenant) {
		err = -ENOMEM;
		goto out;
	}
	for (unsigned i = 0; i < np; i++) /* system prompts: 128 to 1024 tokens */
		plen[i] = between(&s, 8, 64);
	for (unsigned i = 0; i < p->docs; i++) /* documents: 512 to 4096 tokens */
		dlen[i] = between(&s, 32, 256);
	for (unsigned r = 0; r < p->requests; r++) {
		double u = unif(&s);
		unsigned tenant = zipf_pick(ct, p->tenants, &s);
		unsigned pr = tenant * p->prompts_per_tenant +
			      zipf_pick(cp, p->prompts_per_tenant, &s);
		struct wl_seg seg[70], ans = { ID(ID_ANSWER, next_id++), between(&s, 1, 8) };
		unsigned nseg = 0;

		t += -log(unif(&s)) / p->rate * 1000.0;
		seg[nseg++] = (struct wl_seg){ ID(ID_PROMPT, pr), plen[pr] };
		if (u < p->p_chat) {
			struct conv *c;

			/* a new conversation, or the next turn of a live one */
			if (!nconv || (nconv < 256 && unif(&s) < 0.3)) {
				c = &conv[nconv++];
				*c = (struct conv){ .tenant = tenant,
						    .turns_left = between(&s, 2, 8) };
				c->seg[c->nseg++] = seg[0];
			} else {
				c = &conv[rnd(&s) % nconv];
			}
			if (c->answer.chunks)
				c->seg[c->nseg++] = c->answer;
			c->seg[c->nseg++] = (struct wl_seg){ ID(ID_QUESTION, next_id++),
							     between(&s, 1, 6) };
			ans.chunks = between(&s, 2, 16);
			c->answer = ans;
			put_req(out, t, c->tenant, "chat", c->seg, c->nseg, ans);
			if (!--c->turns_left)
				*c = conv[--nconv];
			continue;
		}
		if (u < p->p_chat + p->p_doc) {
			unsigned d = zipf_pick(cd, p->docs, &s);

			seg[nseg++] = (struct wl_seg){ ID(ID_DOC, d), dlen[d] };
			seg[nseg++] = (struct wl_seg){ ID(ID_QUESTION, next_id++),
						       between(&s, 1, 4) };
			put_req(out, t, tenant, "doc", seg, nseg, ans);
			continue;
		}
		seg[nseg++] = (struct wl_seg){ ID(ID_ONEOFF, next_id++), between(&s, 2, 32) };
		put_req(out, t, tenant, "oneoff", seg, nseg, ans);
	}
	if (ferror(out))
		err = -EIO;
out:
	free(ct);
	free(cd);
	free(cp);
	free(plen);
	free(dlen);
	free(conv);
	return err;
}

/* ---- the trace file ----------------------------------------------------------------------- */

static const char *after(const char *line, const char *field)
{
	const char *f = strstr(line, field);

	return f ? f + strlen(field) : NULL;
}

/* "[id, chunks]" at @p into *@g; the position after it, or NULL. */
static const char *pair(const char *p, struct wl_seg *g)
{
	char *end;
	unsigned long long id;
	unsigned long n;

	while (*p == ' ')
		p++;
	if (*p++ != '[')
		return NULL;
	id = strtoull(p, &end, 10);
	if (end == p || *end != ',')
		return NULL;
	p = end + 1;
	n = strtoul(p, &end, 10);
	if (end == p || *end != ']' || n > WL_MAX_CHUNKS)
		return NULL;
	*g = (struct wl_seg){ id, (uint32_t)n };
	return end + 1;
}

static int parse(const char *line, struct wl_req *r)
{
	const char *p;
	struct wl_seg g[256];
	char *end;

	memset(r, 0, sizeof(*r));
	if (!(p = after(line, "\"t_ms\":")))
		return -EBADMSG;
	r->t_ms = strtod(p, &end);
	if (end == p || !(p = after(line, "\"tenant\":")))
		return -EBADMSG;
	r->tenant = (uint32_t)strtoul(p, &end, 10);
	if (end == p || !(p = after(line, "\"kind\": \"")))
		return -EBADMSG;
	r->kind = !strncmp(p, "chat\"", 5) ? WL_CHAT : !strncmp(p, "doc\"", 4) ? WL_DOC : WL_ONEOFF;
	if (!(p = after(line, "\"segs\": [")))
		return -EBADMSG;
	while (*p != ']') {
		if (r->nseg == 256 || !(p = pair(p, &g[r->nseg])))
			return -EBADMSG;
		r->nchunks += g[r->nseg++].chunks;
		if (*p == ',')
			p++;
	}
	if (!(p = after(line, "\"out\":")) || !pair(p, &r->out) || !r->nseg ||
	    r->nchunks + r->out.chunks > WL_MAX_CHUNKS)
		return -EBADMSG;
	r->seg = malloc(r->nseg * sizeof(*r->seg));
	if (!r->seg)
		return -ENOMEM;
	memcpy(r->seg, g, r->nseg * sizeof(*r->seg));
	return 0;
}

int wl_load(const char *path, struct wl_trace *t, size_t *bad_line)
{
	FILE *f = fopen(path, "r");
	char *line = NULL;
	size_t cap = 0, alloc = 0;
	int err = 0;

	memset(t, 0, sizeof(*t));
	if (!f)
		return -errno;
	while (getline(&line, &cap, f) > 0) {
		if (t->n == alloc) {
			struct wl_req *n = realloc(t->req,
						   (alloc = alloc ? 2 * alloc : 1024) * sizeof(*n));

			if (!n) {
				err = -ENOMEM;
				break;
			}
			t->req = n;
		}
		err = parse(line, &t->req[t->n]);
		if (err) {
			if (bad_line)
				*bad_line = t->n + 1;
			break;
		}
		t->chunks += t->req[t->n].nchunks;
		t->n++;
	}
	free(line);
	fclose(f);
	if (err)
		wl_free(t);
	return err;
}

void wl_free(struct wl_trace *t)
{
	for (size_t i = 0; i < t->n; i++)
		free(t->req[i].seg);
	free(t->req);
	memset(t, 0, sizeof(*t));
}

size_t wl_keys(const struct wl_req *r, int out, struct kvc_key *keys, size_t max)
{
	struct {
		struct kvc_key prev;
		uint64_t id;
		uint64_t index;
	} in = { { 0, 0 }, 0, 0 };
	size_t n = 0;

	for (uint32_t s = 0; s <= r->nseg; s++) {
		const struct wl_seg *g = s < r->nseg ? &r->seg[s] : out ? &r->out : NULL;

		for (uint32_t i = 0; g && i < g->chunks && n < max; i++) {
			XXH128_hash_t h;

			in.id = g->id;
			in.index = i;
			h = XXH3_128bits(&in, sizeof(in));
			keys[n] = (struct kvc_key){ h.high64, h.low64 };
			in.prev = keys[n++];
		}
	}
	return n;
}

/* ---- the references ----------------------------------------------------------------------- */

/* Every request's blocks (prompt, then generated) as dense ids, in trace order. */
struct dense {
	uint32_t *id;	   /* access j's block */
	size_t *first;	   /* request i's accesses: first[i] .. first[i + 1] */
	uint32_t *prompt;  /* request i's prompt chunks (the first of them) */
	size_t n, nblocks; /* accesses, distinct blocks */
};

static void dense_free(struct dense *d)
{
	free(d->id);
	free(d->first);
	free(d->prompt);
}

static int dense_build(const struct wl_trace *t, struct dense *d)
{
	size_t total = 0, cap = 1, n = 0;
	struct kvc_key *keys = malloc(WL_MAX_CHUNKS * sizeof(*keys)), *tab;
	uint32_t *val;

	memset(d, 0, sizeof(*d));
	for (size_t i = 0; i < t->n; i++)
		total += t->req[i].nchunks + t->req[i].out.chunks;
	while (cap < 2 * total + 2)
		cap *= 2;
	tab = calloc(cap, sizeof(*tab));
	val = calloc(cap, sizeof(*val));
	d->id = malloc((total + 1) * sizeof(*d->id));
	d->first = malloc((t->n + 1) * sizeof(*d->first));
	d->prompt = malloc((t->n + 1) * sizeof(*d->prompt));
	if (!keys || !tab || !val || !d->id || !d->first || !d->prompt) {
		free(keys);
		free(tab);
		free(val);
		dense_free(d);
		return -ENOMEM;
	}
	for (size_t i = 0; i < t->n; i++) {
		size_t m = wl_keys(&t->req[i], 1, keys, WL_MAX_CHUNKS);

		d->first[i] = n;
		d->prompt[i] = t->req[i].nchunks;
		for (size_t j = 0; j < m; j++) {
			size_t h = (size_t)(keys[j].lo ^ keys[j].hi) & (cap - 1);

			while (val[h] && (tab[h].hi != keys[j].hi || tab[h].lo != keys[j].lo))
				h = (h + 1) & (cap - 1);
			if (!val[h]) {
				tab[h] = keys[j];
				val[h] = (uint32_t)++d->nblocks;
			}
			d->id[n++] = val[h] - 1;
		}
	}
	d->first[t->n] = n;
	d->n = n;
	free(keys);
	free(tab);
	free(val);
	return 0;
}

/* Request @r's hit, its prompt's longest prefix whose blocks are @cached (nonzero), counted
 * into @out. Returns the index of its first access. */
static size_t count_prefix(const struct dense *d, size_t r, const uint32_t *cached,
			   struct wl_sim *out)
{
	size_t a = d->first[r], h = a;

	while (h < a + d->prompt[r] && cached[d->id[h]])
		h++;
	out->hit_chunks += h - a;
	out->chunks += d->prompt[r];
	return a;
}

int wl_sim_lru(const struct wl_trace *t, size_t cap, struct wl_sim *out)
{
	struct dense d;
	uint32_t *prev, *next, *in, head = UINT32_MAX, tail = UINT32_MAX; /* head: most recent */
	size_t used = 0;
	int err = dense_build(t, &d);

	if (err)
		return err;
	prev = malloc(d.nblocks * sizeof(*prev));
	next = malloc(d.nblocks * sizeof(*next));
	in = calloc(d.nblocks, sizeof(*in));
	memset(out, 0, sizeof(*out));
	out->unique_blocks = d.nblocks;
	for (size_t r = 0; prev && next && in && r < t->n; r++) {
		size_t b = d.first[r + 1];

		for (size_t j = count_prefix(&d, r, in, out); j < b; j++) {
			uint32_t x = d.id[j];

			if (in[x]) { /* unlink, to go to the front */
				if (prev[x] != UINT32_MAX)
					next[prev[x]] = next[x];
				else
					head = next[x];
				if (next[x] != UINT32_MAX)
					prev[next[x]] = prev[x];
				else
					tail = prev[x];
			} else {
				if (used == cap && cap) { /* the least recent goes */
					uint32_t v = tail;

					tail = prev[v];
					if (tail != UINT32_MAX)
						next[tail] = UINT32_MAX;
					else
						head = UINT32_MAX;
					in[v] = 0;
					used--;
					out->evictions++;
				}
				if (!cap)
					continue;
				in[x] = 1;
				used++;
			}
			prev[x] = UINT32_MAX;
			next[x] = head;
			if (head != UINT32_MAX)
				prev[head] = x;
			head = x;
			if (tail == UINT32_MAX)
				tail = x;
		}
	}
	err = prev && next && in ? 0 : -ENOMEM;
	free(prev);
	free(next);
	free(in);
	dense_free(&d);
	return err;
}

/* A max-heap of (next use, block), stale entries skipped when popped. */
struct heap {
	uint64_t *v; /* next use << 32 | block */
	size_t n, cap;
};

static bool heap_push(struct heap *h, uint64_t x)
{
	size_t i;

	if (h->n == h->cap) {
		uint64_t *v = realloc(h->v, (h->cap = h->cap ? 2 * h->cap : 1024) * sizeof(*v));

		if (!v)
			return false;
		h->v = v;
	}
	for (i = h->n++; i && h->v[(i - 1) / 2] < x; i = (i - 1) / 2)
		h->v[i] = h->v[(i - 1) / 2];
	h->v[i] = x;
	return true;
}

static uint64_t heap_pop(struct heap *h)
{
	uint64_t top = h->v[0], last = h->v[--h->n];
	size_t i = 0;

	for (;;) {
		size_t c = 2 * i + 1;

		if (c >= h->n)
			break;
		if (c + 1 < h->n && h->v[c + 1] > h->v[c])
			c++;
		if (h->v[c] <= last)
			break;
		h->v[i] = h->v[c];
		i = c;
	}
	if (h->n)
		h->v[i] = last;
	return top;
}

int wl_sim_belady(const struct wl_trace *t, size_t cap, struct wl_sim *out)
{
	struct dense d;
	uint32_t *nextuse, *last, *cur; /* per access; per block: last seen, next use in cache */
	struct heap h = { 0 };
	size_t used = 0;
	int err = dense_build(t, &d);

	if (err)
		return err;
	nextuse = malloc((d.n + 1) * sizeof(*nextuse));
	last = malloc(d.nblocks * sizeof(*last));
	cur = malloc(d.nblocks * sizeof(*cur));
	memset(out, 0, sizeof(*out));
	out->unique_blocks = d.nblocks;
	if (!nextuse || !last || !cur) {
		err = -ENOMEM;
		goto out;
	}
	/* next uses, by a backward pass; UINT32_MAX: never again */
	memset(last, 0xff, d.nblocks * sizeof(*last));
	for (size_t j = d.n; j-- > 0;) {
		nextuse[j] = last[d.id[j]];
		last[d.id[j]] = (uint32_t)j;
	}
	memset(cur, 0, d.nblocks * sizeof(*cur)); /* 0: not cached, else next use + 1 */
	for (size_t r = 0; r < t->n; r++) {
		size_t b = d.first[r + 1];

		for (size_t j = count_prefix(&d, r, cur, out); j < b; j++) {
			uint32_t x = d.id[j], nu = nextuse[j];

			if (nu == UINT32_MAX) { /* never used again: not worth a place */
				if (cur[x]) {
					cur[x] = 0;
					used--;
				}
				continue;
			}
			if (!cur[x]) {
				while (used == cap && cap && h.n) { /* the farthest next use */
					uint64_t top = h.v[0];
					uint32_t v = (uint32_t)top, when = (uint32_t)(top >> 32);

					if (cur[v] != when + 1) { /* stale */
						heap_pop(&h);
						continue;
					}
					if (when <= nu) /* the new block is used later: bypass it */
						break;
					heap_pop(&h);
					cur[v] = 0;
					used--;
					out->evictions++;
				}
				if (used == cap)
					continue;
				used++;
			}
			cur[x] = nu + 1;
			if (!heap_push(&h, (uint64_t)nu << 32 | x)) {
				err = -ENOMEM;
				goto out;
			}
		}
	}
out:
	free(h.v);
	free(nextuse);
	free(last);
	free(cur);
	dense_free(&d);
	return err;
}
