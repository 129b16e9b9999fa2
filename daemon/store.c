/* store.c - the block index, CLOCK eviction and pins, over the pools.
 *
 * One mutex guards the hash table, every block record, the pools' allocators and CLOCK
 * rings, and the pin list. It is held for bookkeeping only: bytes are copied with the lock
 * dropped while the block holds a reference (refs), and a block with references, pins or an
 * unfinished STORE is never evicted or freed. A deleted or evicted block leaves the index
 * at once (DEAD) and its memory is freed when the last reference goes.
 *
 * Blocks are keyed by (namespace id, 128-bit key). The key is already a hash, so its low bits
 * index the table; chains grow the table at load factor 1.
 *
 * Block records come from 2 MiB slabs advised as huge pages, and the bucket array too once it
 * is that large: at a million blocks a lookup then costs a bucket and one record line, not
 * also a TLB walk each, and a record costs its 96 bytes with no allocator header. Slabs are
 * kept for reuse, never returned.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "kvcd.h"

static size_t slot(const struct kvcd_store *s, uint16_t ns, const struct kvcp_key *k)
{
	return (size_t)((k->lo ^ (k->hi >> 17) ^ ((uint64_t)ns * 0x9e3779b97f4a7c15ull)) &
			(s->nbuckets - 1));
}

static struct kvcd_block *find(struct kvcd_store *s, uint16_t ns, const struct kvcp_key *k)
{
	for (struct kvcd_block *b = s->buckets[slot(s, ns, k)]; b; b = b->hnext)
		if (b->key.lo == k->lo && b->key.hi == k->hi && b->ns == ns)
			return b;
	return NULL;
}

#define SLAB_BYTES (2u << 20)

/* Zeroed memory for @n bytes; from 2 MiB up, 2 MiB-aligned and advised as huge pages. */
static void *table_alloc(size_t n)
{
	void *m;

	if (n < SLAB_BYTES)
		return calloc(1, n);
	n = (n + SLAB_BYTES - 1) & ~(size_t)(SLAB_BYTES - 1);
	m = aligned_alloc(SLAB_BYTES, n);
	if (m) {
		kvcd_os.madvise(m, n, MADV_HUGEPAGE); /* advice: failure only costs speed */
		memset(m, 0, n);
	}
	return m;
}

static struct kvcd_block *rec_alloc(struct kvcd_store *s)
{
	struct kvcd_block *b;

	if (!s->free_recs) {
		void **sl = realloc(s->slabs, (s->nslabs + 1) * sizeof(*sl));
		size_t per = SLAB_BYTES / sizeof(*b);

		if (!sl)
			return NULL;
		s->slabs = sl;
		b = table_alloc(SLAB_BYTES);
		if (!b)
			return NULL;
		s->slabs[s->nslabs++] = b;
		for (size_t i = per; i-- > 0;) {
			b[i].hnext = s->free_recs;
			s->free_recs = &b[i];
		}
	}
	b = s->free_recs;
	s->free_recs = b->hnext;
	memset(b, 0, sizeof(*b));
	return b;
}

static void rec_free(struct kvcd_store *s, struct kvcd_block *b)
{
	b->flags = 0;
	b->hnext = s->free_recs;
	s->free_recs = b;
}

static void grow(struct kvcd_store *s)
{
	size_t n = s->nbuckets * 2, old = s->nbuckets;
	struct kvcd_block **nb = table_alloc(n * sizeof(*nb)), **ob = s->buckets;

	if (!nb)
		return; /* keep the longer chains; correctness does not depend on the size */
	s->buckets = nb;
	s->nbuckets = n;
	for (size_t i = 0; i < old; i++)
		for (struct kvcd_block *b = ob[i], *next; b; b = next) {
			size_t j = slot(s, b->ns, &b->key);

			next = b->hnext;
			b->hnext = nb[j];
			nb[j] = b;
		}
	free(ob);
}

int kvcd_store_init(struct kvcd_store *s, struct kvcd_pool *pools, unsigned npools,
		    unsigned high_wm, unsigned low_wm)
{
	memset(s, 0, sizeof(*s));
	s->nbuckets = 1024;
	s->buckets = table_alloc(s->nbuckets * sizeof(*s->buckets));
	if (!s->buckets)
		return -ENOMEM;
	s->pools = pools;
	s->npools = npools;
	s->high_wm = high_wm;
	s->low_wm = low_wm;
	pthread_mutex_init(&s->lock, NULL);
	return 0;
}

void kvcd_store_fini(struct kvcd_store *s)
{
	for (size_t i = 0; i < s->nslabs; i++)
		free(s->slabs[i]);
	free(s->slabs);
	while (s->pins) {
		struct kvcd_pin *p = s->pins;

		s->pins = p->next;
		free(p);
	}
	free(s->buckets);
	pthread_mutex_destroy(&s->lock);
}

int kvcd_store_ns(struct kvcd_store *s, const char *name, const struct kvcd_policy *init)
{
	int id = -ENOSPC;

	pthread_mutex_lock(&s->lock);
	for (unsigned i = 0; i < s->nns; i++)
		if (!strcmp(s->ns[i].name, name))
			id = (int)i;
	if (id < 0 && s->nns < sizeof(s->ns) / sizeof(s->ns[0])) {
		memset(&s->ns[s->nns], 0, sizeof(s->ns[0]));
		strcpy(s->ns[s->nns].name, name);
		if (init)
			s->ns[s->nns].policy = *init;
		id = (int)s->nns++;
	}
	pthread_mutex_unlock(&s->lock);
	return id;
}

void kvcd_store_policy(struct kvcd_store *s, uint16_t ns, struct kvcd_policy *out)
{
	pthread_mutex_lock(&s->lock);
	*out = s->ns[ns].policy;
	pthread_mutex_unlock(&s->lock);
}

void kvcd_store_set_policy(struct kvcd_store *s, uint16_t ns, const struct kvcd_policy *p)
{
	pthread_mutex_lock(&s->lock);
	s->ns[ns].policy = *p;
	pthread_mutex_unlock(&s->lock);
}

void kvcd_store_fallback(struct kvcd_store *s, uint16_t ns)
{
	pthread_mutex_lock(&s->lock);
	s->ns[ns].fallbacks++;
	pthread_mutex_unlock(&s->lock);
}

/* ---- CLOCK ring of a pool ----------------------------------------------------------------- */

static void ring_insert(struct kvcd_pool *p, struct kvcd_block *b)
{
	if (!p->hand) {
		b->cnext = b->cprev = b;
		p->hand = b;
		return;
	}
	/* just behind the hand: the newest block is the last one the hand reaches */
	b->cnext = p->hand;
	b->cprev = p->hand->cprev;
	b->cprev->cnext = b;
	p->hand->cprev = b;
}

static void ring_remove(struct kvcd_pool *p, struct kvcd_block *b)
{
	if (b->cnext == b) {
		p->hand = NULL;
	} else {
		b->cprev->cnext = b->cnext;
		b->cnext->cprev = b->cprev;
		if (p->hand == b)
			p->hand = b->cnext;
	}
	b->cnext = b->cprev = NULL;
}

/* ---- removal ------------------------------------------------------------------------------ */

static void unlink_index(struct kvcd_store *s, struct kvcd_block *b)
{
	struct kvcd_block **pp = &s->buckets[slot(s, b->ns, &b->key)];

	while (*pp != b)
		pp = &(*pp)->hnext;
	*pp = b->hnext;
	b->hnext = NULL;
	s->count--;
}

static void destroy(struct kvcd_store *s, struct kvcd_block *b)
{
	struct kvcd_pool *p = &s->pools[b->pool];

	kvcd_free(&p->alloc, b->data);
	p->blocks--;
	rec_free(s, b);
}

/* Take @b out of the index and the CLOCK ring; free it now or when its last reference goes.
 * Pins on it are dropped. */
static void kill(struct kvcd_store *s, struct kvcd_block *b)
{
	for (struct kvcd_pin **pp = &s->pins; *pp;) {
		struct kvcd_pin *p = *pp;

		if (p->b == b) {
			*pp = p->next;
			free(p);
			s->npins--;
		} else {
			pp = &p->next;
		}
	}
	b->pins = 0;
	unlink_index(s, b);
	ring_remove(&s->pools[b->pool], b);
	if (!(b->flags & KVCD_BLK_WRITING)) {
		s->bytes_in -= kvcp_layout_bytes(&b->layout);
		s->bytes_stored -= b->stored;
		s->ns[b->ns].blocks--;
		s->ns[b->ns].bytes_in -= kvcp_layout_bytes(&b->layout);
		s->ns[b->ns].bytes_stored -= b->stored;
	}
	b->flags |= KVCD_BLK_DEAD;
	if (!b->refs)
		destroy(s, b);
}

/* Evict one block of pool @p by CLOCK: skip busy blocks, give referenced ones a second chance.
 * Returns true when a block was evicted. */
static bool evict_one(struct kvcd_store *s, struct kvcd_pool *p)
{
	uint64_t steps = 2 * p->blocks + 1;

	while (p->hand && steps--) {
		struct kvcd_block *b = p->hand;

		p->hand = b->cnext;
		if (b->pins || b->refs || (b->flags & KVCD_BLK_WRITING))
			continue;
		if (b->flags & KVCD_BLK_REF) {
			b->flags &= (uint8_t)~KVCD_BLK_REF;
			continue;
		}
		kill(s, b);
		s->evictions++;
		return true;
	}
	return false;
}

/* ---- operations --------------------------------------------------------------------------- */

static void *place(struct kvcd_store *s, uint64_t stored, const uint8_t *order, unsigned n,
		   unsigned *pool)
{
	void *data;

	for (unsigned i = 0; i < n; i++) /* nearest pool with room, without evicting */
		if ((data = kvcd_alloc(&s->pools[order[i]].alloc, stored))) {
			*pool = order[i];
			return data;
		}
	for (unsigned i = 0; i < n; i++) { /* then make room, nearest first */
		struct kvcd_pool *p = &s->pools[order[i]];

		if (stored > p->alloc.size)
			continue;
		while (!(data = kvcd_alloc(&p->alloc, stored)) && evict_one(s, p))
			;
		if (data) {
			*pool = order[i];
			return data;
		}
	}
	return NULL;
}

int kvcd_store_reserve(struct kvcd_store *s, uint16_t ns, const struct kvcp_key *key,
		       const struct kvcp_layout *layout, uint64_t stored, const uint8_t *order,
		       unsigned norder, struct kvcd_block **out)
{
	struct kvcd_block *b;
	unsigned pool = 0;
	void *data;
	int err = 0;

	pthread_mutex_lock(&s->lock);
	if (find(s, ns, key)) {
		err = -EEXIST;
		goto out;
	}
	b = rec_alloc(s);
	if (!b) {
		err = -ENOMEM;
		goto out;
	}
	data = place(s, stored, order, norder, &pool);
	if (!data) {
		rec_free(s, b);
		err = -ENOSPC;
		goto out;
	}
	b->key = *key;
	b->ns = ns;
	b->layout = *layout;
	b->stored = stored;
	b->data = data;
	b->pool = (uint8_t)pool;
	/* Enters CLOCK referenced: otherwise, once every older block has been read, a sweep
	 * clears them all and takes the one block nobody has had a chance to fetch yet. */
	b->flags = KVCD_BLK_WRITING | KVCD_BLK_REF;
	b->refs = 1;
	b->hnext = s->buckets[slot(s, ns, key)];
	s->buckets[slot(s, ns, key)] = b;
	s->pools[pool].blocks++;
	ring_insert(&s->pools[pool], b);
	if (++s->count > s->nbuckets)
		grow(s);
	*out = b;
out:
	pthread_mutex_unlock(&s->lock);
	return err;
}

void kvcd_store_commit(struct kvcd_store *s, struct kvcd_block *b, bool ok, bool has_sum,
		       uint64_t checksum)
{
	pthread_mutex_lock(&s->lock);
	b->checksum = checksum;
	b->has_sum = has_sum;
	b->refs--;
	if (ok) {
		b->flags &= (uint8_t)~KVCD_BLK_WRITING;
		s->bytes_in += kvcp_layout_bytes(&b->layout);
		s->bytes_stored += b->stored;
		s->ns[b->ns].blocks++;
		s->ns[b->ns].bytes_in += kvcp_layout_bytes(&b->layout);
		s->ns[b->ns].bytes_stored += b->stored;
	} else {
		kill(s, b);
	}
	pthread_mutex_unlock(&s->lock);
}

int kvcd_store_get(struct kvcd_store *s, uint16_t ns, const struct kvcp_key *key,
		   struct kvcd_block **out)
{
	struct kvcd_block *b;
	int err = 0;

	pthread_mutex_lock(&s->lock);
	b = find(s, ns, key);
	if (!b || (b->flags & KVCD_BLK_WRITING)) {
		s->misses++;
		err = -ENOENT;
	} else {
		s->hits++;
		b->hits++;
		b->refs++;
		b->flags |= KVCD_BLK_REF;
		*out = b;
	}
	pthread_mutex_unlock(&s->lock);
	return err;
}

void kvcd_store_put(struct kvcd_store *s, struct kvcd_block *b, bool corrupt)
{
	pthread_mutex_lock(&s->lock);
	b->refs--;
	if (corrupt && !(b->flags & KVCD_BLK_DEAD)) {
		s->checksum_failures++;
		kill(s, b); /* frees it too when we held the last reference */
	} else if ((b->flags & KVCD_BLK_DEAD) && !b->refs) {
		destroy(s, b);
	}
	pthread_mutex_unlock(&s->lock);
}

void kvcd_store_ref_many(struct kvcd_store *s, uint16_t ns, const struct kvcp_key *keys,
			 size_t n, struct kvcd_block **out)
{
	pthread_mutex_lock(&s->lock);
	for (size_t i = 0; i < n; i++) {
		struct kvcp_key k;
		struct kvcd_block *b;

		memcpy(&k, &keys[i], sizeof(k)); /* keys may sit in client memory: copy once */
		b = find(s, ns, &k);
		if (b && !(b->flags & KVCD_BLK_WRITING))
			b->refs++;
		else
			b = NULL;
		out[i] = b;
	}
	pthread_mutex_unlock(&s->lock);
}

void kvcd_store_put_many(struct kvcd_store *s, struct kvcd_block **b, size_t n)
{
	pthread_mutex_lock(&s->lock);
	for (size_t i = 0; i < n; i++) {
		if (!b[i])
			continue;
		b[i]->refs--;
		if ((b[i]->flags & KVCD_BLK_DEAD) && !b[i]->refs)
			destroy(s, b[i]);
	}
	pthread_mutex_unlock(&s->lock);
}

size_t kvcd_store_lookup(struct kvcd_store *s, uint16_t ns, const struct kvcp_key *keys,
			 size_t n)
{
	size_t i;

	pthread_mutex_lock(&s->lock);
	for (i = 0; i < n; i++) {
		struct kvcp_key k;
		struct kvcd_block *b;

		memcpy(&k, &keys[i], sizeof(k)); /* keys may sit in client memory: copy once */
		b = find(s, ns, &k);
		if (!b || (b->flags & KVCD_BLK_WRITING))
			break;
	}
	pthread_mutex_unlock(&s->lock);
	return i;
}

int kvcd_store_delete(struct kvcd_store *s, uint16_t ns, const struct kvcp_key *key)
{
	struct kvcd_block *b;
	int err = 0;

	pthread_mutex_lock(&s->lock);
	b = find(s, ns, key);
	if (!b || (b->flags & KVCD_BLK_WRITING))
		err = -ENOENT;
	else if (b->pins)
		err = -EBUSY;
	else
		kill(s, b);
	pthread_mutex_unlock(&s->lock);
	return err;
}

int kvcd_store_pin(struct kvcd_store *s, uint16_t ns, const struct kvcp_key *key,
		   uint32_t owner, uint64_t deadline_ns)
{
	struct kvcd_block *b;
	struct kvcd_pin *p;
	int err = 0;

	pthread_mutex_lock(&s->lock);
	b = find(s, ns, key);
	if (!b || (b->flags & KVCD_BLK_WRITING)) {
		err = -ENOENT;
	} else if (b->pins == UINT16_MAX) {
		err = -EOVERFLOW;
	} else if (!(p = malloc(sizeof(*p)))) {
		err = -ENOMEM;
	} else {
		p->b = b;
		p->owner = owner;
		p->deadline_ns = deadline_ns;
		p->next = s->pins;
		s->pins = p;
		s->npins++;
		b->pins++;
	}
	pthread_mutex_unlock(&s->lock);
	return err;
}

int kvcd_store_unpin(struct kvcd_store *s, uint16_t ns, const struct kvcp_key *key,
		     uint32_t owner)
{
	int err = -ENOENT;

	pthread_mutex_lock(&s->lock);
	for (struct kvcd_pin **pp = &s->pins; *pp; pp = &(*pp)->next) {
		struct kvcd_pin *p = *pp;

		if (p->owner != owner || p->b->ns != ns || p->b->key.lo != key->lo ||
		    p->b->key.hi != key->hi)
			continue;
		*pp = p->next;
		p->b->pins--;
		s->npins--;
		free(p);
		err = 0;
		break;
	}
	pthread_mutex_unlock(&s->lock);
	return err;
}

unsigned kvcd_store_release_pins(struct kvcd_store *s, uint64_t now_ns, uint32_t owner)
{
	unsigned n = 0;

	pthread_mutex_lock(&s->lock);
	for (struct kvcd_pin **pp = &s->pins; *pp;) {
		struct kvcd_pin *p = *pp;

		if ((owner && p->owner == owner) || p->deadline_ns <= now_ns) {
			*pp = p->next;
			p->b->pins--;
			s->npins--;
			free(p);
			n++;
		} else {
			pp = &p->next;
		}
	}
	pthread_mutex_unlock(&s->lock);
	return n;
}

uint64_t kvcd_store_reclaim(struct kvcd_store *s, uint64_t target_free)
{
	uint64_t n = 0;

	pthread_mutex_lock(&s->lock);
	for (unsigned i = 0; i < s->npools; i++) {
		struct kvcd_pool *p = &s->pools[i];
		uint64_t size = p->alloc.size, goal;

		if (target_free) {
			goal = target_free >= size ? 0 : size - target_free;
		} else {
			if (p->alloc.used * 100 <= size * s->high_wm)
				continue;
			goal = size / 100 * s->low_wm;
		}
		while (p->alloc.used > goal && evict_one(s, p))
			n++;
	}
	pthread_mutex_unlock(&s->lock);
	return n;
}

void kvcd_store_stats(struct kvcd_store *s, struct kvcp_stats *st)
{
	pthread_mutex_lock(&s->lock);
	st->nnodes = s->npools;
	st->blocks = s->count;
	for (unsigned i = 0; i < s->npools && i < KVCP_MAX_NODES; i++) {
		struct kvcd_pool *p = &s->pools[i];

		st->node[i].node = p->node;
		st->node[i].hugepages = p->huge;
		st->node[i].bytes_total = p->alloc.size;
		st->node[i].bytes_used = p->alloc.used;
		st->node[i].blocks = p->blocks;
		st->bytes_used += p->alloc.used;
		st->bytes_free += p->alloc.size - p->alloc.used;
	}
	st->bytes_in = s->bytes_in;
	st->bytes_stored = s->bytes_stored;
	st->nns = s->nns < KVCP_MAX_NS_STATS ? s->nns : KVCP_MAX_NS_STATS;
	for (unsigned i = 0; i < st->nns; i++) {
		struct kvcp_ns_stats *n = &st->ns[i];

		memcpy(n->name, s->ns[i].name, sizeof(n->name));
		kvcd_policy_format(&s->ns[i].policy, n->policy, sizeof(n->policy));
		n->blocks = s->ns[i].blocks;
		n->bytes_in = s->ns[i].bytes_in;
		n->bytes_stored = s->ns[i].bytes_stored;
		n->fallbacks = s->ns[i].fallbacks;
	}
	st->hits = s->hits;
	st->misses = s->misses;
	st->evictions = s->evictions;
	st->pinned = s->npins;
	st->checksum_failures = s->checksum_failures;
	st->metadata_bytes = s->nslabs * SLAB_BYTES + s->nslabs * sizeof(void *) +
			     s->nbuckets * sizeof(struct kvcd_block *) +
			     s->npins * sizeof(struct kvcd_pin);
	pthread_mutex_unlock(&s->lock);
}

unsigned kvcd_store_list(struct kvcd_store *s, uint16_t ns, uint32_t start,
			 struct kvcp_list_ent *out, unsigned max)
{
	unsigned n = 0;
	uint64_t seen = 0;

	pthread_mutex_lock(&s->lock);
	for (size_t i = 0; i < s->nbuckets && n < max; i++)
		for (struct kvcd_block *b = s->buckets[i]; b && n < max; b = b->hnext) {
			if (b->ns != ns || (b->flags & KVCD_BLK_WRITING) || seen++ < start)
				continue;
			memset(&out[n], 0, sizeof(out[n]));
			out[n].key = b->key;
			out[n].layout = b->layout;
			out[n].bytes = b->stored;
			out[n].node = s->pools[b->pool].node;
			out[n].pins = b->pins;
			out[n].hits = b->hits;
			n++;
		}
	pthread_mutex_unlock(&s->lock);
	return n;
}
