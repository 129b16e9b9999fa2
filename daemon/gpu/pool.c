/* pool.c - a device's GPU pool as the host keeps account of it: which blocks have a copy in
 * it, where, and which copy goes first when room is short. No CUDA call is made here: the
 * device memory is one VMM allocation (gpu.c) and this file hands out offsets into it.
 *
 * The allocator is the host pools' TLSF (alloc.c), run over a mirror of the device range:
 * an anonymous MAP_NORESERVE mapping of the same size, of which only the pages holding the
 * allocator's headers and free-list links are ever touched (one per allocated or free run;
 * GPU memory cannot hold them, since the CPU cannot write there). A payload's offset in the
 * mirror is its offset in the device pool, so the host pools' size classes, splitting and
 * coalescing apply unchanged.
 *
 * The pool is inclusive: every copy here is a committed host block's bytes (the store's
 * encoded form, header included), so a copy can be dropped at any time without a copy back.
 * Dropping the least recently used copies when the pool crosses its high watermark is the
 * GPU tier's demotion. The host block stays the one the index, checksum, eviction and
 * restarts know; the store says when its bytes go (kvcd_gpool_forget), and a copy still
 * being read then is freed when its last reader lets go.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "kvcd.h"

enum {
	ENT_FILLING, /* bytes on their way: not found by lookups */
	ENT_LIVE,
	ENT_DEAD /* forgotten or dropped while referenced: freed by its last put */
};

static size_t bucket(const struct kvcd_gpool *p, uint32_t rec)
{
	return (size_t)((rec * 0x9E3779B1u) >> 7) & (p->nbuckets - 1);
}

static void lru_unlink(struct kvcd_gpool_ent *e)
{
	e->lprev->lnext = e->lnext;
	e->lnext->lprev = e->lprev;
	e->lprev = e->lnext = e;
}

/* Most recently used at the head's prev end; eviction takes from lru.lnext. */
static void lru_push(struct kvcd_gpool *p, struct kvcd_gpool_ent *e)
{
	e->lprev = p->lru.lprev;
	e->lnext = &p->lru;
	p->lru.lprev->lnext = e;
	p->lru.lprev = e;
}

static struct kvcd_gpool_ent **find(struct kvcd_gpool *p, uint32_t rec)
{
	struct kvcd_gpool_ent **at = &p->buckets[bucket(p, rec)];

	while (*at && (*at)->rec != rec)
		at = &(*at)->hnext;
	return at;
}

static int grow(struct kvcd_gpool *p)
{
	size_t n = p->nbuckets ? 2 * p->nbuckets : 64, old = p->nbuckets;
	struct kvcd_gpool_ent **nb = calloc(n, sizeof(*nb)), **ob = p->buckets;

	if (!nb)
		return -ENOMEM;
	p->buckets = nb;
	p->nbuckets = n;
	for (size_t i = 0; i < old; i++)
		for (struct kvcd_gpool_ent *e = ob[i], *next; e; e = next) {
			struct kvcd_gpool_ent **h = &nb[bucket(p, e->rec)];

			next = e->hnext;
			e->hnext = *h;
			*h = e;
		}
	free(ob);
	return 0;
}

/* Free @e's bytes and record; it is out of the LRU list already. */
static void release(struct kvcd_gpool *p, struct kvcd_gpool_ent *e)
{
	kvcd_free(&p->alloc, p->mirror + e->off);
	p->blocks--;
	free(e);
}

/* Take @e out of the table; free it now, or mark it for its last reader. */
static void drop(struct kvcd_gpool *p, struct kvcd_gpool_ent **at)
{
	struct kvcd_gpool_ent *e = *at;

	*at = e->hnext;
	e->hnext = NULL;
	p->count--;
	lru_unlink(e);
	if (e->refs) {
		e->state = ENT_DEAD;
		return;
	}
	release(p, e);
}

int kvcd_gpool_init(struct kvcd_gpool *p, uint64_t size, unsigned high_wm, unsigned low_wm)
{
	void *m;
	int err;

	memset(p, 0, sizeof(*p));
	m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
		 -1, 0);
	if (m == MAP_FAILED)
		return -ENOMEM;
	err = kvcd_alloc_init(&p->alloc, m, size) ? -EINVAL : grow(p);
	if (err) {
		munmap(m, size);
		return err;
	}
	p->mirror = m;
	p->size = size;
	p->high_wm = high_wm;
	p->low_wm = low_wm;
	p->lru.lprev = p->lru.lnext = &p->lru;
	pthread_mutex_init(&p->lock, NULL);
	return 0;
}

void kvcd_gpool_fini(struct kvcd_gpool *p)
{
	if (!p->mirror)
		return;
	for (size_t i = 0; i < p->nbuckets; i++)
		for (struct kvcd_gpool_ent *e = p->buckets[i], *next; e; e = next) {
			next = e->hnext;
			free(e);
		}
	free(p->buckets);
	munmap(p->mirror, p->size);
	pthread_mutex_destroy(&p->lock);
	memset(p, 0, sizeof(*p));
}

struct kvcd_gpool_ent *kvcd_gpool_get(struct kvcd_gpool *p, uint32_t rec)
{
	struct kvcd_gpool_ent *e;

	pthread_mutex_lock(&p->lock);
	e = *find(p, rec);
	if (e && e->state == ENT_LIVE) {
		e->refs++;
		lru_unlink(e);
		lru_push(p, e);
		p->hits++;
	} else {
		e = NULL;
		p->misses++;
	}
	pthread_mutex_unlock(&p->lock);
	return e;
}

/* Drop least recently used copies nobody reads until @want more bytes fit under the low
 * watermark (when the pool would cross its high one), and until the allocator has a run of
 * @want. Returns the payload, or NULL when not even an empty pool of unread copies would
 * do. */
static void *make_room(struct kvcd_gpool *p, uint64_t want)
{
	uint64_t high = p->size / 100 * p->high_wm, low = p->size / 100 * p->low_wm;
	bool over = p->alloc.used + want + KVCD_ALLOC_OVERHEAD > high;
	struct kvcd_gpool_ent *e = p->lru.lnext, *next;
	void *at;

	if (want + KVCD_ALLOC_OVERHEAD > high)
		return NULL; /* it would push out everything and still cross the watermark */
	for (; e != &p->lru; e = next) {
		next = e->lnext;
		if (!over || p->alloc.used + want + KVCD_ALLOC_OVERHEAD <= low)
			break;
		if (e->refs)
			continue;
		drop(p, find(p, e->rec));
		p->demotions++;
	}
	at = kvcd_alloc(&p->alloc, want);
	for (e = p->lru.lnext; !at && e != &p->lru; e = next) {
		next = e->lnext;
		if (e->refs)
			continue;
		drop(p, find(p, e->rec));
		p->demotions++;
		at = kvcd_alloc(&p->alloc, want);
	}
	return at;
}

struct kvcd_gpool_ent *kvcd_gpool_fill(struct kvcd_gpool *p, uint32_t rec, uint64_t len)
{
	struct kvcd_gpool_ent *e = NULL, **at;
	void *payload;

	if (!len)
		return NULL;
	pthread_mutex_lock(&p->lock);
	if (*find(p, rec) || (p->count + 1 > p->nbuckets && grow(p)))
		goto out; /* a copy exists or is on its way; or no memory for the table */
	e = calloc(1, sizeof(*e));
	if (!e)
		goto out;
	payload = make_room(p, len);
	if (!payload) {
		free(e);
		e = NULL;
		p->no_room++;
		goto out;
	}
	e->rec = rec;
	e->off = (uint64_t)((char *)payload - p->mirror);
	e->len = len;
	e->refs = 1;
	e->state = ENT_FILLING;
	at = &p->buckets[bucket(p, rec)];
	e->hnext = *at;
	*at = e;
	p->count++;
	p->blocks++;
	lru_push(p, e);
out:
	pthread_mutex_unlock(&p->lock);
	return e;
}

void kvcd_gpool_filled(struct kvcd_gpool *p, struct kvcd_gpool_ent *e, bool ok)
{
	pthread_mutex_lock(&p->lock);
	if (e->state == ENT_FILLING) {
		if (ok) {
			e->state = ENT_LIVE;
			p->promotions++;
		} else {
			drop(p, find(p, e->rec));
		}
	}
	if (!--e->refs && e->state == ENT_DEAD)
		release(p, e);
	pthread_mutex_unlock(&p->lock);
}

void kvcd_gpool_put(struct kvcd_gpool *p, struct kvcd_gpool_ent *e)
{
	pthread_mutex_lock(&p->lock);
	if (!--e->refs && e->state == ENT_DEAD)
		release(p, e);
	pthread_mutex_unlock(&p->lock);
}

void kvcd_gpool_forget(struct kvcd_gpool *p, uint32_t rec)
{
	struct kvcd_gpool_ent **at;

	pthread_mutex_lock(&p->lock);
	at = find(p, rec);
	if (*at) {
		drop(p, at);
		p->forgotten++;
	}
	pthread_mutex_unlock(&p->lock);
}

void kvcd_gpool_watermarks(struct kvcd_gpool *p, unsigned high_wm, unsigned low_wm)
{
	if (!p)
		return;
	pthread_mutex_lock(&p->lock);
	p->high_wm = high_wm;
	p->low_wm = low_wm;
	pthread_mutex_unlock(&p->lock);
}

void kvcd_gpool_stats(struct kvcd_gpool *p, struct kvcp_gpu_pool *out)
{
	pthread_mutex_lock(&p->lock);
	out->pool_bytes = p->size;
	out->bytes_used = p->alloc.used;
	out->blocks = p->blocks;
	out->hits = p->hits;
	out->misses = p->misses;
	out->promotions = p->promotions;
	out->demotions = p->demotions;
	out->no_room = p->no_room;
	pthread_mutex_unlock(&p->lock);
}
