/* worker.c - threads that drain client rings and execute requests.
 *
 * Each session belongs to exactly one worker, which is therefore the only consumer of its SQ
 * and the only producer of its CQ (SPSC on both rings). A worker polls its sessions, spins
 * for busy_poll_us after the last request, then sleeps in futex_waitv on every session's SQ
 * doorbell plus its own private wake word (io_uring's NEED_WAKEUP protocol, see kvcp.h).
 *
 * Every SQE is copied once into a local (kvcp_entry_read) and only the copy is validated and
 * used. Bad requests get an error completion and a counter; impossible ring indices mark the
 * session broken and the main thread disconnects it.
 */
#include <errno.h>
#include <linux/futex.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kvcd.h"
#include "codec/select.h"

#ifndef FUTEX2_SIZE_U32
#define FUTEX2_SIZE_U32 FUTEX_32	/* older uapi headers name it FUTEX_32 */
#endif
#ifndef FUTEX2_PRIVATE
#define FUTEX2_PRIVATE FUTEX_PRIVATE_FLAG
#endif

#define BATCH 32

/* ---- latency histogram: 8 buckets per power of two ---------------------------------------- */

unsigned kvcd_hist_bucket(uint64_t ns)
{
	unsigned e, b;

	if (ns < 8)
		return (unsigned)ns;
	e = 63u - (unsigned)__builtin_clzll(ns);
	b = 8 + (e - 3) * 8 + (unsigned)((ns >> (e - 3)) & 7);
	return b < KVCD_HIST ? b : KVCD_HIST - 1;
}

uint64_t kvcd_hist_value(unsigned b)
{
	unsigned e, m;

	if (b < 8)
		return b;
	e = (b - 8) / 8 + 3;
	m = (b - 8) % 8;
	return ((8ull + m) << (e - 3)) + ((1ull << (e - 3)) >> 1); /* bucket midpoint */
}

/* ---- copies ---------------------------------------------------------------------------------
 * With checksums on, the checksum is computed in the copy itself (sum.c): over the bytes
 * written to the pool on STORE, over the pool's bytes on FETCH. */

static uint64_t copy_sum(void *dst, const void *src, size_t n, bool sum)
{
	if (!sum) {
		memcpy(dst, src, n);
		return 0;
	}
	return kvcd_copy_sum(kvcd_isa_best(), dst, src, n);
}

/* ---- request execution ------------------------------------------------------------------- */

static char *region(struct kvcd_session *s, const struct kvcp_sqe *v, size_t *size)
{
	if (v->flags & KVCP_SQE_F_SCRATCH) {
		*size = s->scratch_size;
		return s->scratch;
	}
	*size = s->staging_size;
	return s->staging;
}

/* Encode @src under @pol into a new block. Returns 0 or -errno; nothing is left behind on
 * failure. */
static int store_as(struct kvcd *d, struct kvcd_session *s, const struct kvcp_sqe *v,
		    const struct kvcd_policy *pol, const char *src, const float *scores,
		    const struct kvcd_aux *aux)
{
	struct kvcp_layout l = v->layout;
	uint64_t bytes = kvcp_layout_bytes(&l), stored, sum = 0, qb;
	struct kvcd_summary sm = { .kind = pol->bounds, .page = pol->page, .reps = pol->reps };
	uint32_t *counts = NULL;
	struct kvcd_block *b;
	int err;

	l.codec = 0;
	qb = pol->bounds ? kvcd_summary_bytes(&l, &sm) : 0;
	if (kvcd_policy_sel(pol)) {
		/* the counts fix the size: encoding keeps to them whatever staging holds by then */
		counts = malloc(kvcd_sel_plan_words(pol, &l) * 4);
		if (!counts)
			return -ENOMEM;
		err = kvcd_sel_plan(kvcd_isa_best(), pol, &l, v->arg, src, aux, counts);
		stored = err ? 0 : kvcd_sel_size(pol, &l, scores != NULL, v->arg, counts);
	} else {
		stored = kvcd_codec_size(pol, &l, scores != NULL, v->arg);
	}
	if (!stored) {
		free(counts);
		return -EINVAL;
	}
	l.codec = pol->kind | (kvcd_policy_sel(pol) ? KVCP_CODEC_SPARSE : 0);
	/* with bounds= the block's SELECT summary follows it in the same allocation */
	err = kvcd_store_reserve(&d->store, s->ns_id, &v->key, &l,
				 qb ? KVCD_BOUNDS_AT(stored) + qb : stored, s->order, s->norder, &b);
	if (err) {
		free(counts);
		return err;
	}
	b->stored = stored;
	if (pol->kind == KVCD_CODEC_NONE && !kvcd_policy_sel(pol)) {
		sum = copy_sum(b->data, src, bytes, d->cfg.checksum);
	} else {
		l.codec = 0;
		if (kvcd_policy_sel(pol))
			err = kvcd_sel_encode(kvcd_isa_best(), pol, &l, v->arg, src, scores, aux,
					      counts, b->data);
		else
			err = kvcd_codec_encode(kvcd_isa_best(), pol, &l, v->arg, src, scores,
						b->data);
		if (!err && d->cfg.checksum)
			sum = kvcd_copy_sum(kvcd_isa_best(), NULL, b->data, stored);
	}
	if (!err && pol->bounds) { /* of the keys as stored raw; of the engine's keys if encoded */
		l.codec = 0;
		err = kvcd_summary_make(kvcd_isa_best(), &l, &sm,
				       pol->kind == KVCD_CODEC_NONE && !kvcd_policy_sel(pol) ? b->data :
				       src,
				       (char *)b->data + KVCD_BOUNDS_AT(stored));
		b->bounds = !err;
	}
	kvcd_store_commit(&d->store, b, !err, d->cfg.checksum, sum);
	free(counts);
	return err;
}

/* The auxiliary section of a STORE at @buf[@off, @off + @len): header checked against the
 * block's layout, arrays copied (read once) and checked finite. *@mem is the copy. */
static int read_aux(const char *buf, uint64_t off, uint64_t len, const struct kvcp_layout *l,
		    struct kvcd_aux *a, float **mem)
{
	struct kvcp_aux h;
	uint64_t n;
	float *f;

	if (len < sizeof(h) || off % 4)
		return -EINVAL;
	memcpy(&h, buf + off, sizeof(h));
	n = kvcp_aux_bytes(&h, l);
	if (!n || len != sizeof(h) + n)
		return -EINVAL;
	f = malloc(n);
	if (!f)
		return -ENOMEM;
	memcpy(f, buf + off + sizeof(h), n);
	for (uint64_t i = 0; i < n / 4; i++)
		if (!isfinite(f[i])) {
			free(f);
			return -EINVAL;
		}
	memset(a, 0, sizeof(*a));
	a->what = h.what;
	a->q_heads = h.q_heads;
	a->window = h.window;
	a->q_pos = h.q_pos;
	if (h.what & KVCP_AUX_ATTN) {
		a->attn = f;
		f += (size_t)l->layers * l->kv_heads * l->tokens;
	}
	if (h.what & KVCP_AUX_QUERIES) {
		a->q = f;
		a->lse = f + (size_t)l->layers * h.q_heads * h.window * l->head_dim;
	}
	*mem = a->attn ? (float *)a->attn : (float *)a->q;
	return 0;
}

/* STORE: layout.codec 0 takes the namespace's policy, which falls back to raw (counted) when
 * it cannot encode this block; 1..8 take a policy this session registered, whose failures go
 * back to the client. */
static int do_store(struct kvcd *d, struct kvcd_session *s, const struct kvcp_sqe *v,
		    char *buf)
{
	uint64_t bytes = kvcp_layout_bytes(&v->layout);
	bool scored = v->flags & KVCP_SQE_F_SCORES, has_aux = v->flags & KVCP_SQE_F_AUX;
	uint64_t sbytes = scored ? 4ull * v->layout.tokens : 0;
	struct kvcd_aux aux, *ap = NULL;
	struct kvcd_policy pol;
	float *scores = NULL, *auxmem = NULL;
	int err;

	if (!bytes || (!has_aux && v->len != bytes + sbytes) ||
	    (has_aux && v->len <= bytes + sbytes) || (scored && (v->off + bytes) % 4))
		return -EINVAL;
	if (!v->layout.codec)
		kvcd_store_policy(&d->store, s->ns_id, &pol);
	else if (v->layout.codec <= s->npol)
		pol = s->pol[v->layout.codec - 1];
	else
		return -EINVAL;
	if (has_aux) {
		err = read_aux(buf, v->off + bytes + sbytes, v->len - bytes - sbytes, &v->layout, &aux,
			       &auxmem);
		if (err)
			return err;
		ap = &aux;
	}
	if (scored && pol.hibits && pol.kind != KVCD_CODEC_NONE) {
		scores = malloc(4ull * v->layout.tokens);
		if (!scores) {
			free(auxmem);
			return -ENOMEM;
		}
		memcpy(scores, buf + v->off + bytes, 4ull * v->layout.tokens); /* read once */
	}
	err = store_as(d, s, v, &pol, buf + v->off, scores, ap);
	free(scores);
	free(auxmem);
	if ((err == -EINVAL || err == -ERANGE) && !v->layout.codec &&
	    (pol.kind != KVCD_CODEC_NONE || kvcd_policy_sel(&pol))) {
		struct kvcd_policy raw = { .kind = KVCD_CODEC_NONE };

		kvcd_store_fallback(&d->store, s->ns_id);
		err = store_as(d, s, v, &raw, buf + v->off, NULL, NULL);
	}
	return err;
}

static int do_fetch(struct kvcd *d, struct kvcd_session *s, const struct kvcp_sqe *v,
		    char *buf, struct kvcp_cqe *cqe)
{
	struct kvcd_block *b;
	struct kvcp_layout l;
	uint64_t raw;
	bool sum, bad = false;
	int err;

	err = kvcd_store_get(&d->store, s->ns_id, &v->key, &b);
	if (err)
		return err;
	raw = b->layout.codec & KVCP_CODEC_SPARSE ? kvcd_codec_out_size(b->data, b->stored) :
						    kvcp_layout_bytes(&b->layout);
	cqe->value = raw;
	cqe->layout = b->layout;
	if (raw > v->len) {
		kvcd_store_put(&d->store, b, false);
		return -ENOSPC;
	}
	sum = b->has_sum;
	if (!raw) { /* a header that does not check out */
		bad = true;
	} else if (b->layout.codec == KVCD_CODEC_NONE) {
		if (copy_sum(buf + v->off, b->data, b->stored, sum) != b->checksum && sum)
			bad = true;
	} else if (sum && kvcd_copy_sum(kvcd_isa_best(), NULL, b->data, b->stored) != b->checksum) {
		bad = true;
	} else {
		err = kvcd_codec_decode(kvcd_isa_best(), b->data, b->stored, buf + v->off, v->len, &l);
		bad = err == -EBADMSG;
		if (err && !bad) {
			kvcd_store_put(&d->store, b, false);
			return err;
		}
	}
	kvcd_store_put(&d->store, b, bad);
	return bad ? -EIO : 0;
}

/* POLICY: parse the string at off (read once); register it in a session slot, or set the
 * namespace's policy (admin). On -EINVAL the reason goes back at off. */
static int do_policy(struct kvcd *d, struct kvcd_session *s, const struct kvcp_sqe *v,
		     char *buf, size_t size, struct kvcp_cqe *cqe)
{
	char str[KVCP_POLICY_MAX], why[128] = "";
	struct kvcd_policy p;
	int err = 0;

	if (!v->len || v->len >= sizeof(str) || v->arg > KVCP_POLICY_NS) {
		snprintf(why, sizeof(why), "policy string of 1..%d bytes, arg 0 or %u",
			 KVCP_POLICY_MAX - 1, KVCP_POLICY_NS);
		err = -EINVAL;
	} else {
		memcpy(str, buf + v->off, v->len);
		str[v->len] = '\0';
		if (strlen(str) != v->len) {
			snprintf(why, sizeof(why), "NUL inside the policy string");
			err = -EINVAL;
		} else {
			err = kvcd_policy_parse(str, &p, why, sizeof(why));
		}
	}
	if (err) {
		size_t n = strlen(why) + 1, room = size - v->off;

		n = n < room ? n : room;
		memcpy(buf + v->off, why, n);
		cqe->value = n;
		return err;
	}
	if (v->arg == KVCP_POLICY_NS) {
		if (!s->admin)
			return -EPERM;
		kvcd_store_set_policy(&d->store, s->ns_id, &p);
		return 0;
	}
	for (unsigned i = 0; i < s->npol; i++)
		if (!memcmp(&s->pol[i], &p, sizeof(p)))
			return (int)i + 1;
	if (s->npol == KVCP_POLICY_SLOTS)
		return -ENOSPC;
	s->pol[s->npol++] = p;
	return (int)s->npol;
}

static int by_score(const void *a, const void *b)
{
	const struct kvcp_select_hit *x = a, *y = b;

	if (x->score != y->score)
		return x->score > y->score ? -1 : 1;
	return x->index < y->index ? -1 : x->index > y->index;
}

/* The best @k of @n hits (by_score order) to the front of @h, sorted; returns how many. A
 * min-heap of the k best so far: n log k, where sorting all of them was n log n. */
static uint32_t top_k(struct kvcp_select_hit *h, uint32_t n, uint32_t k)
{
	k = k < n ? k : n;
	for (uint32_t i = 0; i < n; i++) {
		struct kvcp_select_hit x = h[i];
		uint32_t j;

		if (i >= k) {
			if (by_score(&x, &h[0]) >= 0) /* not better than the worst kept */
				continue;
			j = 0; /* replace the root and sift down */
			for (;;) {
				uint32_t c = 2 * j + 1;

				if (c >= k)
					break;
				if (c + 1 < k && by_score(&h[c + 1], &h[c]) > 0)
					c++;
				if (by_score(&h[c], &x) <= 0)
					break;
				h[j] = h[c];
				j = c;
			}
			h[j] = x;
			continue;
		}
		for (j = i; j && by_score(&h[(j - 1) / 2], &x) < 0; j = (j - 1) / 2) /* sift up */
			h[j] = h[(j - 1) / 2];
		h[j] = x;
	}
	qsort(h, k, sizeof(*h), by_score);
	return k;
}

/* Ask for the layer's summary of @b before it is needed. */
static void prefetch_bounds(const struct kvcd_block *b, uint32_t layer)
{
	const struct kvcp_layout *l = &b->layout;
	const char *p = (const char *)b->data + KVCD_BOUNDS_AT(b->stored);
	struct kvcd_summary s;
	size_t per;

	memcpy(&s, p, sizeof(s));
	if (layer >= l->layers || !s.page)
		return;
	per = (kvcd_summary_bytes(l, &s) - sizeof(s)) / l->layers;
	p += sizeof(s) + per * layer;
	for (size_t o = 0; o < per; o += 64)
		__builtin_prefetch(p + o);
}

/* SELECT: score each candidate by the Quest bound of its keys, answer the best k in place. */
static int do_select(struct kvcd *d, struct kvcd_session *s, const struct kvcp_sqe *v,
		     char *buf, struct kvcp_cqe *cqe)
{
	enum { CHUNK = 1024 }; /* references held at a time */
	enum { PF_HEAD = 20, PF_BODY = 8 }; /* prefetch distances, in candidates (measured) */
	struct kvcd_block *blk[CHUNK];
	struct kvcp_select h;
	struct kvcp_select_hit *hits;
	const struct kvcp_key *keys;
	struct kvcd_query x;
	uint32_t found = 0;
	float *q;
	size_t qn;

	if (v->len < sizeof(h) || v->off % 8)
		return -EINVAL;
	memcpy(&h, buf + v->off, sizeof(h)); /* read once */
	qn = (size_t)h.q_heads * h.head_dim;
	if (!h.nkeys || h.nkeys > KVCP_SELECT_MAX_KEYS || !h.k || h.k > h.nkeys || !qn ||
	    qn > KVCP_SELECT_MAX_QUERY || h.reserved0 || h.reserved[0] || h.reserved[1] ||
	    v->len != sizeof(h) + (uint64_t)h.nkeys * sizeof(*keys) + qn * 4)
		return -EINVAL;
	keys = (const struct kvcp_key *)(buf + v->off + sizeof(h));
	q = malloc(qn * 4);
	hits = malloc((size_t)h.nkeys * sizeof(*hits));
	if (!q || !hits) {
		free(q);
		free(hits);
		return -ENOMEM;
	}
	memcpy(q, keys + h.nkeys, qn * 4); /* read once */
	for (size_t i = 0; i < qn; i++) {
		if (!isfinite(q[i])) {
			free(q);
			free(hits);
			return -EINVAL;
		}
	}
	if (kvcd_query_init(&x, q, h.q_heads, h.head_dim)) {
		free(q);
		free(hits);
		return -ENOMEM;
	}
	for (uint32_t i0 = 0; i0 < h.nkeys; i0 += CHUNK) {
		uint32_t n = h.nkeys - i0 < CHUNK ? h.nkeys - i0 : CHUNK;

		kvcd_store_ref_many(&d->store, s->ns_id, keys + i0, n, blk);
		for (uint32_t i = 0; i < n; i++) {
			const struct kvcd_block *b = blk[i];

			/* DRAM-bound: ask for a summary's header well ahead, its layer once the
			 * header (which says how large it is) has arrived */
			if (i + PF_HEAD < n && blk[i + PF_HEAD] && blk[i + PF_HEAD]->bounds)
				__builtin_prefetch((const char *)blk[i + PF_HEAD]->data +
						   KVCD_BOUNDS_AT(blk[i + PF_HEAD]->stored));
			if (i + PF_BODY < n && blk[i + PF_BODY] && blk[i + PF_BODY]->bounds)
				prefetch_bounds(blk[i + PF_BODY], h.layer);
			if (!b || !b->bounds || h.layer >= b->layout.layers ||
			    h.head_dim != b->layout.head_dim || h.q_heads % b->layout.kv_heads)
				continue;
			hits[found].index = i0 + i;
			hits[found++].score = kvcd_summary_score(kvcd_isa_best(), &b->layout,
				(const char *)b->data + KVCD_BOUNDS_AT(b->stored), h.layer, &x);
		}
		kvcd_store_put_many(&d->store, blk, n);
	}
	found = top_k(hits, found, h.k);
	memcpy(buf + v->off, hits, (size_t)found * sizeof(*hits));
	cqe->value = (uint64_t)found * sizeof(*hits);
	kvcd_query_fini(&x);
	free(q);
	free(hits);
	return (int)found;
}

static int do_lookup(struct kvcd *d, struct kvcd_session *s, const struct kvcp_sqe *v,
		     char *buf)
{
	if (v->len % sizeof(struct kvcp_key) || v->off % 8)
		return -EINVAL;
	return (int)kvcd_store_lookup(&d->store, s->ns_id, (const struct kvcp_key *)(buf + v->off),
				      v->len / sizeof(struct kvcp_key));
}

static int do_admin(struct kvcd *d, struct kvcd_session *s, const struct kvcp_sqe *v,
		    char *buf, struct kvcp_cqe *cqe)
{
	unsigned n;

	switch (v->opcode) {
	case KVCP_OP_STATS: {
		struct kvcp_stats st;

		if (v->len < sizeof(st))
			return -ENOSPC;
		kvcd_stats(d, &st);
		memcpy(buf + v->off, &st, sizeof(st));
		cqe->value = sizeof(st);
		return 0;
	}
	case KVCP_OP_LIST:
		if (v->off % 8)
			return -EINVAL;
		n = kvcd_store_list(&d->store, s->ns_id, v->arg, (struct kvcp_list_ent *)(buf + v->off),
				    (unsigned)(v->len / sizeof(struct kvcp_list_ent)));
		cqe->value = n * sizeof(struct kvcp_list_ent);
		return (int)n;
	case KVCP_OP_CLIENTS:
		if (v->off % 8)
			return -EINVAL;
		n = kvcd_clients(d, (struct kvcp_client_ent *)(buf + v->off),
				 (unsigned)(v->len / sizeof(struct kvcp_client_ent)));
		cqe->value = n * sizeof(struct kvcp_client_ent);
		return (int)n;
	case KVCP_OP_EVICT:
		if (!s->admin)
			return -EPERM;
		return (int)kvcd_store_reclaim(&d->store,
					       v->arg ? (uint64_t)v->arg << 20 : UINT64_MAX);
	}
	return -EBADMSG;
}

void kvcd_execute(struct kvcd *d, struct kvcd_worker *w, struct kvcd_session *s,
		  const struct kvcp_sqe *v, struct kvcp_cqe *cqe)
{
	uint64_t t0 = kvcd_now_ns(), ms;
	size_t size;
	char *buf = region(s, v, &size);
	int res;

	memset(cqe, 0, sizeof(*cqe));
	cqe->user_data = v->user_data;
	if (v->opcode >= KVCP_OP__COUNT || (v->flags & ~KVCP_SQE_F_KNOWN) || v->reserved0 ||
	    ((v->flags & KVCP_SQE_F_SCORES) && v->opcode != KVCP_OP_STORE)) {
		res = -EBADMSG;
		goto out;
	}
	if (v->opcode != KVCP_OP_NOP && v->opcode != KVCP_OP_DELETE && v->opcode != KVCP_OP_PIN &&
	    v->opcode != KVCP_OP_UNPIN && v->opcode != KVCP_OP_EVICT &&
	    !kvcp_range_ok(v->off, v->len, size)) {
		res = -EINVAL;
		goto out;
	}
	switch (v->opcode) {
	case KVCP_OP_NOP:
		res = 0;
		break;
	case KVCP_OP_STORE:
		res = do_store(d, s, v, buf);
		break;
	case KVCP_OP_FETCH:
		res = do_fetch(d, s, v, buf, cqe);
		break;
	case KVCP_OP_LOOKUP:
		res = do_lookup(d, s, v, buf);
		break;
	case KVCP_OP_DELETE:
		res = kvcd_store_delete(&d->store, s->ns_id, &v->key);
		break;
	case KVCP_OP_PIN:
		ms = v->arg && v->arg < d->cfg.lease_max_ms ? v->arg : d->cfg.lease_max_ms;
		res = kvcd_store_pin(&d->store, s->ns_id, &v->key, s->id, t0 + ms * 1000000ull);
		break;
	case KVCP_OP_UNPIN:
		res = kvcd_store_unpin(&d->store, s->ns_id, &v->key, s->id);
		break;
	case KVCP_OP_POLICY:
		res = do_policy(d, s, v, buf, size, cqe);
		break;
	case KVCP_OP_SELECT:
		res = do_select(d, s, v, buf, cqe);
		break;
	default:
		res = do_admin(d, s, v, buf, cqe);
		break;
	}
out:
	cqe->res = res;
	if (res == -EBADMSG || res == -EINVAL)
		__atomic_fetch_add(&s->bad_requests, 1, __ATOMIC_RELAXED);
	__atomic_fetch_add(&s->requests, 1, __ATOMIC_RELAXED);
	if (w) {
		unsigned op = v->opcode < KVCP_OP__COUNT ? v->opcode : KVCP_OP_NOP;

		__atomic_fetch_add(&w->count[op], 1, __ATOMIC_RELAXED);
		if (res < 0 && res != -ENOENT)
			__atomic_fetch_add(&w->errors[op], 1, __ATOMIC_RELAXED);
		__atomic_fetch_add(&w->hist[op].b[kvcd_hist_bucket(kvcd_now_ns() - t0)], 1,
				   __ATOMIC_RELAXED);
	}
}

/* ---- the polling loop --------------------------------------------------------------------- */

static void mark_broken(struct kvcd *d, struct kvcd_session *s, const char *why)
{
	uint64_t one = 1;

	if (s->broken)
		return;
	fprintf(stderr, "kvcd: client %u (pid %d): %s; disconnecting\n", s->id, (int)s->pid, why);
	__atomic_store_n(&s->broken, 1, __ATOMIC_RELEASE);
	__atomic_fetch_add(&s->bad_requests, 1, __ATOMIC_RELAXED);
	if (write(d->reap_fd, &one, sizeof(one)) < 0)
		perror("kvcd: eventfd");
}

/* Room for one more completion? Reloads the client's consumer index when the cached one says
 * full, and checks it is possible. */
static bool cq_room(struct kvcd *d, struct kvcd_session *s)
{
	uint32_t cons;

	if (s->cq_prod - s->cq_cons_cache < s->cq_entries)
		return true;
	/* A3: pairs with R2 of the client's kvcp_ring_pop() on the CQ */
	cons = kvcp_load_acquire(&s->hdr->cq.cons);
	if (s->cq_prod - cons > s->cq_entries) {
		mark_broken(d, s, "completion ring consumer index out of range");
		return false;
	}
	s->cq_cons_cache = cons;
	return s->cq_prod - cons < s->cq_entries;
}

static unsigned process(struct kvcd *d, struct kvcd_worker *w, struct kvcd_session *s)
{
	struct kvcp_sqe sqe;
	struct kvcp_cqe cqe;
	unsigned n = 0;
	int r;

	while (n < BATCH && !s->broken && cq_room(d, s)) {
		r = kvcp_ring_pop(&s->hdr->sq, s->sq, s->sq_entries, &s->sq_cons, &sqe);
		if (r < 0)
			mark_broken(d, s, "submission ring producer index out of range");
		if (r != 1)
			break;
		kvcd_execute(d, w, s, &sqe, &cqe);
		kvcp_ring_push(&s->hdr->cq, s->cq, s->cq_entries, &s->cq_prod, &s->cq_cons_cache,
			       &cqe);
		n++;
	}
	if (n) {
		/* Pairs with the client's fence between setting NEED_WAKEUP and re-checking. */
		kvcp_fence();
		if (kvcp_load_relaxed(&s->hdr->cq.flags) & KVCP_RING_NEED_WAKEUP) {
			__atomic_fetch_add(&s->hdr->cq.futex, 1, __ATOMIC_RELEASE);
			kvcd_futex_wake(&s->hdr->cq.futex, 1, true);
		}
	}
	return n;
}

static bool has_work(struct kvcd_session *s)
{
	return !s->broken && kvcp_ring_pending(&s->hdr->sq, s->sq_entries, s->sq_cons) &&
	       (s->cq_prod - s->cq_cons_cache < s->cq_entries ||
		s->cq_prod - kvcp_load_acquire(&s->hdr->cq.cons) < s->cq_entries);
}

/* Sleep until a client rings, the session list changes or one second passes. */
static void sleep_on(struct kvcd_worker *w, struct kvcd_session **ss, unsigned n)
{
	struct futex_waitv wv[KVCD_WORKER_MAX_SESSIONS + 1];
	unsigned k = 1;
	bool work = false;

	memset(wv, 0, sizeof(wv));
	wv[0].uaddr = (uintptr_t)&w->wake;
	wv[0].val = __atomic_load_n(&w->wake, __ATOMIC_ACQUIRE);
	wv[0].flags = FUTEX2_SIZE_U32 | FUTEX2_PRIVATE;
	for (unsigned i = 0; i < n; i++) {
		if (ss[i]->broken)
			continue;
		wv[k].uaddr = (uintptr_t)&ss[i]->hdr->sq.futex;
		wv[k].val = kvcp_load_acquire(&ss[i]->hdr->sq.futex);
		wv[k].flags = FUTEX2_SIZE_U32;
		k++;
		kvcp_store_relaxed(&ss[i]->hdr->sq.flags, KVCP_RING_NEED_WAKEUP);
	}
	/* Pairs with the client's fence in ring_doorbell(): it sees our flag or we its prod. */
	kvcp_fence();
	for (unsigned i = 0; i < n && !work; i++)
		work = has_work(ss[i]);
	if (!work && __atomic_load_n(&w->gen, __ATOMIC_ACQUIRE) == w->seen_gen)
		kvcd_futex_waitv(wv, k, kvcd_now_ns() + 1000000000ull);
	for (unsigned i = 0; i < n; i++)
		kvcp_store_relaxed(&ss[i]->hdr->sq.flags, 0);
}

static void *worker_main(void *arg)
{
	struct kvcd_worker *w = arg;
	struct kvcd_session *local[KVCD_WORKER_MAX_SESSIONS];
	unsigned n = 0;
	uint64_t last = kvcd_now_ns(), spin_ns = w->d->cfg.busy_poll_us * 1000ull;

	for (;;) {
		if (__atomic_load_n(&w->gen, __ATOMIC_ACQUIRE) != w->seen_gen) {
			pthread_mutex_lock(&w->lock);
			if (w->stop) {
				w->seen_gen = w->gen;
				pthread_cond_broadcast(&w->acked);
				pthread_mutex_unlock(&w->lock);
				return NULL;
			}
			n = w->nsessions;
			memcpy(local, w->sessions, n * sizeof(local[0]));
			w->seen_gen = w->gen;
			pthread_cond_broadcast(&w->acked);
			pthread_mutex_unlock(&w->lock);
		}
		unsigned did = 0;

		for (unsigned i = 0; i < n; i++)
			did += process(w->d, w, local[i]);
		if (did) {
			last = kvcd_now_ns();
			continue;
		}
		if (kvcd_now_ns() - last < spin_ns) {
			__builtin_ia32_pause();
			continue;
		}
		sleep_on(w, local, n);
		last = kvcd_now_ns();
	}
}

static void kick(struct kvcd_worker *w)
{
	__atomic_fetch_add(&w->wake, 1, __ATOMIC_RELEASE);
	kvcd_futex_wake(&w->wake, 1, false);
}

/* Bump the generation and wait until the worker has taken the new list. Lock held. */
static void publish_and_wait(struct kvcd_worker *w)
{
	uint32_t gen = ++w->gen;

	kick(w);
	while (w->seen_gen != gen)
		pthread_cond_wait(&w->acked, &w->lock);
}

int kvcd_worker_start(struct kvcd_worker *w, struct kvcd *d, unsigned id)
{
	int err;

	memset(w, 0, sizeof(*w));
	w->d = d;
	w->id = id;
	pthread_mutex_init(&w->lock, NULL);
	pthread_cond_init(&w->acked, NULL);
	err = -pthread_create(&w->thread, NULL, worker_main, w);
	if (!err) {
		char name[16];

		snprintf(name, sizeof(name), "kvcd-w%u", id);
		pthread_setname_np(w->thread, name);
	}
	return err;
}

void kvcd_worker_stop(struct kvcd_worker *w)
{
	pthread_mutex_lock(&w->lock);
	w->stop = true;
	publish_and_wait(w);
	pthread_mutex_unlock(&w->lock);
	pthread_join(w->thread, NULL);
}

int kvcd_worker_add(struct kvcd_worker *w, struct kvcd_session *s)
{
	int err = 0;

	pthread_mutex_lock(&w->lock);
	if (w->nsessions == KVCD_WORKER_MAX_SESSIONS) {
		err = -EUSERS;
	} else {
		w->sessions[w->nsessions++] = s;
		s->worker = w->id;
		++w->gen;
		kick(w);
	}
	pthread_mutex_unlock(&w->lock);
	return err;
}

void kvcd_worker_remove(struct kvcd_worker *w, struct kvcd_session *s)
{
	pthread_mutex_lock(&w->lock);
	for (unsigned i = 0; i < w->nsessions; i++)
		if (w->sessions[i] == s) {
			w->sessions[i] = w->sessions[--w->nsessions];
			break;
		}
	publish_and_wait(w);
	pthread_mutex_unlock(&w->lock);
}
