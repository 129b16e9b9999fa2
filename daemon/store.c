/* store.c - the block index, CLOCK eviction and pins, over the pools.
 *
 * One mutex guards the index, every block record, the pools' allocators and CLOCK rings, and
 * the pin list. It is held for bookkeeping only: bytes are copied with the lock dropped while
 * the block holds a reference (refs), and a block with references, pins or an unfinished
 * STORE is never evicted or freed. A deleted or evicted block leaves the index at once (DEAD)
 * and its memory is freed when the last reference goes.
 *
 * The index is an open-addressing table of 24-byte slots with linear probing, kept at most
 * 4/5 full (7/8 while a larger one is being made) and emptied by backward shift (no
 * tombstones). A slot holds the whole key, the namespace, whether the block is committed and
 * its record's id: a LOOKUP reads slots only, so at a million blocks it costs one cache miss,
 * where a chained table costs a bucket and then a record. Keys (namespace id, 128-bit key)
 * are chosen by clients, so the slot is a hash under a seed drawn at start-up (XXH3), not the
 * key's own bits: a client cannot aim keys at one run of slots.
 *
 * Growing: the STORE that finds the table 4/5 full makes one twice as large with the lock
 * dropped (faulting in 48 MiB of huge pages takes about 0.1 s here), then moves the entries
 * under the lock (about 20 ms at two million slots, as long as the chained table's growth
 * took); other STOREs go on meanwhile up to 7/8.
 *
 * Records (64 bytes) come from 2 MiB slabs advised as huge pages, and the slot array too once
 * it is that large: at a million blocks a lookup costs no TLB walk and a record no allocator
 * header. A record's id is slab << 15 | index; record 0 of each slab holds the slab's number,
 * so a pointer finds its id, and id 0 is never a block. Slabs are kept for reuse.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <time.h>
#include <xxhash.h>

#include "kvcd.h"

#define SLAB_BYTES (2u << 20)
#define SLAB_SHIFT 15 /* records per slab: SLAB_BYTES / 64 */
#define SLAB_RECS  (1u << SLAB_SHIFT)
#define MAX_SLABS  (1u << (32 - SLAB_SHIFT))
_Static_assert(SLAB_RECS * sizeof(struct kvcd_block) == SLAB_BYTES, "records fill a slab");

static inline struct kvcd_block *rec_at(const struct kvcd_store *s, uint32_t id)
{
	return (struct kvcd_block *)s->slabs[id >> SLAB_SHIFT] + (id & (SLAB_RECS - 1));
}

static inline uint32_t rec_id(const struct kvcd_block *b)
{
	uintptr_t base = (uintptr_t)b & ~(uintptr_t)(SLAB_BYTES - 1);

	return *(const uint32_t *)base << SLAB_SHIFT |
	       (uint32_t)(((uintptr_t)b - base) / sizeof(*b));
}

/* ---- the index ---------------------------------------------------------------------------- */

static inline size_t home(const struct kvcd_store *s, uint16_t ns, const struct kvcp_key *k)
{
	return (size_t)XXH3_64bits_withSeed(k, sizeof(*k), s->seed + ns) & (s->nslots - 1);
}

/* The slot holding (@ns, @k), or the empty slot where the probe ended (-1 - its index). */
static inline ptrdiff_t probe(const struct kvcd_store *s, size_t i, uint16_t ns,
			      const struct kvcp_key *k)
{
	for (;; i = (i + 1) & (s->nslots - 1)) {
		const struct kvcd_slot *e = &s->slots[i];

		if (e->state == KVCD_SLOT_EMPTY)
			return -1 - (ptrdiff_t)i;
		if (e->key.lo == k->lo && e->key.hi == k->hi && e->ns == ns)
			return (ptrdiff_t)i;
	}
}

static struct kvcd_slot *find(struct kvcd_store *s, uint16_t ns, const struct kvcp_key *k)
{
	ptrdiff_t i = probe(s, home(s, ns, k), ns, k);

	return i < 0 ? NULL : &s->slots[i];
}

/* Put (@ns, @k) -> @id in the first free slot of its run; it must not be there already. */
static void slot_add(struct kvcd_store *s, uint16_t ns, const struct kvcp_key *k, uint32_t id,
		     uint8_t state)
{
	size_t i = (size_t)(-1 - probe(s, home(s, ns, k), ns, k));
	struct kvcd_slot *e = &s->slots[i];

	e->key = *k;
	e->ns = ns;
	e->rec = id;
	e->state = state;
	rec_at(s, id)->slot = (uint32_t)i;
	s->count++;
}

/* Empty slot @i and close the gap: each later entry of the run whose home is not between the
 * gap and itself moves back into it. */
static void slot_remove(struct kvcd_store *s, size_t i)
{
	size_t m = s->nslots - 1;

	for (size_t j = (i + 1) & m; s->slots[j].state != KVCD_SLOT_EMPTY; j = (j + 1) & m) {
		struct kvcd_slot *e = &s->slots[j];
		size_t h = home(s, e->ns, &e->key);

		if (((j - h) & m) >= ((j - i) & m)) {
			s->slots[i] = *e;
			rec_at(s, e->rec)->slot = (uint32_t)i;
			i = j;
		}
	}
	memset(&s->slots[i], 0, sizeof(s->slots[i]));
	s->count--;
}

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

/* Past 4/5 full the table doubles; up to 7/8 it may go on filling while the larger one is
 * being made (or when it cannot be had). */
static bool want_larger(const struct kvcd_store *s)
{
	return (s->count + 1) * 5 > s->nslots * 4;
}

static bool too_full(const struct kvcd_store *s)
{
	return (s->count + 1) * 8 > s->nslots * 7;
}

/* Move every entry into @to (zeroed, twice as many slots) and return the old array, for the
 * caller to free once the lock is dropped. Scanning the old slots in order fills the new
 * array in two ascending streams (home i or i + n), so the cost is a pass over both arrays
 * and a write to each record, asked for ahead. */
static struct kvcd_slot *rehash(struct kvcd_store *s, struct kvcd_slot *to)
{
	struct kvcd_slot *from = s->slots;
	size_t old = s->nslots;

	s->slots = to;
	s->nslots = old * 2;
	s->count = 0;
	for (size_t i = 0; i < old; i++) {
		if (i + 32 < old && from[i + 32].state != KVCD_SLOT_EMPTY) /* the record's line */
			__builtin_prefetch(rec_at(s, from[i + 32].rec), 1);
		if (from[i].state != KVCD_SLOT_EMPTY)
			slot_add(s, from[i].ns, &from[i].key, from[i].rec, from[i].state);
	}
	return from;
}

/* ---- records ------------------------------------------------------------------------------ */

/* A zeroed record, or 0 when out of memory. */
static uint32_t rec_alloc(struct kvcd_store *s)
{
	uint32_t id;

	if (!s->free_recs) {
		void **sl = s->nslabs < MAX_SLABS ? realloc(s->slabs, (s->nslabs + 1) * sizeof(*sl))
						  : NULL;
		struct kvcd_block *b;
		uint32_t j = (uint32_t)s->nslabs;

		if (!sl)
			return 0;
		s->slabs = sl;
		b = table_alloc(SLAB_BYTES);
		if (!b)
			return 0;
		s->slabs[s->nslabs++] = b;
		*(uint32_t *)b = j; /* record 0: the slab's number, for rec_id() */
		for (uint32_t i = SLAB_RECS; i-- > 1;) {
			b[i].cnext = s->free_recs;
			s->free_recs = j << SLAB_SHIFT | i;
		}
	}
	id = s->free_recs;
	s->free_recs = rec_at(s, id)->cnext;
	memset(rec_at(s, id), 0, sizeof(struct kvcd_block));
	return id;
}

static void rec_free(struct kvcd_store *s, struct kvcd_block *b)
{
	b->flags = 0;
	b->cnext = s->free_recs;
	s->free_recs = rec_id(b);
}

int kvcd_store_init(struct kvcd_store *s, struct kvcd_pool *pools, unsigned npools,
		    unsigned high_wm, unsigned low_wm)
{
	struct timespec t;

	memset(s, 0, sizeof(*s));
	if (getrandom(&s->seed, sizeof(s->seed), GRND_NONBLOCK) != sizeof(s->seed)) {
		clock_gettime(CLOCK_MONOTONIC, &t); /* no entropy yet: still not the client's */
		s->seed = XXH3_64bits(&t, sizeof(t)) ^ (uintptr_t)s;
	}
	s->nslots = 1024;
	s->slots = table_alloc(s->nslots * sizeof(*s->slots));
	if (!s->slots)
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
	free(s->slots);
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

static void ring_insert(struct kvcd_store *s, struct kvcd_pool *p, uint32_t id)
{
	struct kvcd_block *b = rec_at(s, id), *hand, *prev;

	if (!p->hand) {
		b->cnext = b->cprev = id;
		p->hand = id;
		return;
	}
	/* just behind the hand: the newest block is the last one the hand reaches */
	hand = rec_at(s, p->hand);
	prev = rec_at(s, hand->cprev);
	b->cnext = p->hand;
	b->cprev = hand->cprev;
	prev->cnext = id;
	hand->cprev = id;
}

static void ring_remove(struct kvcd_store *s, struct kvcd_pool *p, struct kvcd_block *b,
			uint32_t id)
{
	if (b->cnext == id) {
		p->hand = 0;
	} else {
		rec_at(s, b->cprev)->cnext = b->cnext;
		rec_at(s, b->cnext)->cprev = b->cprev;
		if (p->hand == id)
			p->hand = b->cnext;
	}
	b->cnext = b->cprev = 0;
}

/* ---- removal ------------------------------------------------------------------------------ */

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
	uint16_t ns = s->slots[b->slot].ns;

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
	slot_remove(s, b->slot);
	ring_remove(s, &s->pools[b->pool], b, rec_id(b));
	if (!(b->flags & KVCD_BLK_WRITING)) {
		s->bytes_in -= kvcp_layout_bytes(&b->layout);
		s->bytes_stored -= b->stored;
		s->ns[ns].blocks--;
		s->ns[ns].bytes_in -= kvcp_layout_bytes(&b->layout);
		s->ns[ns].bytes_stored -= b->stored;
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
		struct kvcd_block *b = rec_at(s, p->hand);

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
	struct kvcd_slot *spare = NULL, *old = NULL; /* freed with the lock dropped */
	size_t spare_n = 0;
	struct kvcd_block *b;
	unsigned pool = 0;
	uint32_t id;
	void *data;
	int err = 0;

	pthread_mutex_lock(&s->lock);
again:
	if (find(s, ns, key)) {
		err = -EEXIST;
		goto out;
	}
	if (want_larger(s) && spare_n == s->nslots * 2) {
		old = rehash(s, spare);
		spare = NULL;
	} else if (want_larger(s) && (!s->growing || too_full(s))) {
		/* Faulting in the larger array (48 MiB at a million blocks, with huge-page
		 * compaction: about 0.1 s here) is done with the lock dropped: only this STORE
		 * waits for it, and the others go on filling the table up to 7/8. */
		size_t n = s->nslots * 2;

		s->growing = true;
		pthread_mutex_unlock(&s->lock);
		free(spare);
		/* slot numbers are 32-bit (struct kvcd_block.slot) */
		spare = n <= (size_t)UINT32_MAX + 1 ? table_alloc(n * sizeof(*spare)) : NULL;
		spare_n = spare ? n : 0;
		pthread_mutex_lock(&s->lock);
		s->growing = false;
		if (spare)
			goto again; /* the table may have changed meanwhile */
		if (too_full(s)) {
			err = -ENOMEM;
			goto out;
		}
	}
	id = rec_alloc(s);
	if (!id) {
		err = -ENOMEM;
		goto out;
	}
	b = rec_at(s, id);
	data = place(s, stored, order, norder, &pool); /* may evict: slots move */
	if (!data) {
		rec_free(s, b);
		err = -ENOSPC;
		goto out;
	}
	b->layout = *layout;
	b->stored = stored;
	b->data = data;
	b->pool = pool & 63;
	/* Enters CLOCK referenced: otherwise, once every older block has been read, a sweep
	 * clears them all and takes the one block nobody has had a chance to fetch yet. */
	b->flags = KVCD_BLK_WRITING | KVCD_BLK_REF;
	b->refs = 1;
	slot_add(s, ns, key, id, KVCD_SLOT_WRITING);
	s->pools[pool].blocks++;
	ring_insert(s, &s->pools[pool], id);
	*out = b;
out:
	pthread_mutex_unlock(&s->lock);
	free(spare);
	free(old);
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
		uint16_t ns = s->slots[b->slot].ns;

		b->flags &= (uint8_t)~KVCD_BLK_WRITING;
		s->slots[b->slot].state = KVCD_SLOT_LIVE;
		s->bytes_in += kvcp_layout_bytes(&b->layout);
		s->bytes_stored += b->stored;
		s->ns[ns].blocks++;
		s->ns[ns].bytes_in += kvcp_layout_bytes(&b->layout);
		s->ns[ns].bytes_stored += b->stored;
	} else {
		kill(s, b);
	}
	pthread_mutex_unlock(&s->lock);
}

/* The committed block of (@ns, @k), or NULL. */
static struct kvcd_block *live(struct kvcd_store *s, uint16_t ns, const struct kvcp_key *k)
{
	const struct kvcd_slot *e = find(s, ns, k);

	return e && e->state == KVCD_SLOT_LIVE ? rec_at(s, e->rec) : NULL;
}

int kvcd_store_get(struct kvcd_store *s, uint16_t ns, const struct kvcp_key *key,
		   struct kvcd_block **out)
{
	struct kvcd_block *b;
	int err = 0;

	pthread_mutex_lock(&s->lock);
	b = live(s, ns, key);
	if (!b) {
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

/* Keys come in batches: the slots of a whole batch are asked for before the first is read,
 * so a LOOKUP of a long prefix waits for about one cache miss, not one per key. */
#define BATCH 16

/* Hash @n <= BATCH keys (copied once: they may sit in client memory) and prefetch their
 * slots. */
static void batch_start(const struct kvcd_store *s, uint16_t ns, const struct kvcp_key *keys,
			size_t n, struct kvcp_key *k, size_t *at)
{
	for (size_t i = 0; i < n; i++) {
		memcpy(&k[i], &keys[i], sizeof(k[i]));
		at[i] = home(s, ns, &k[i]);
		__builtin_prefetch(&s->slots[at[i]]);
	}
}

void kvcd_store_ref_many(struct kvcd_store *s, uint16_t ns, const struct kvcp_key *keys, size_t n,
			 struct kvcd_block **out)
{
	pthread_mutex_lock(&s->lock);
	for (size_t i0 = 0; i0 < n; i0 += BATCH) {
		struct kvcp_key k[BATCH];
		size_t at[BATCH], m = n - i0 < BATCH ? n - i0 : BATCH;

		batch_start(s, ns, keys + i0, m, k, at);
		for (size_t i = 0; i < m; i++) { /* ask for the records before touching one */
			ptrdiff_t e = probe(s, at[i], ns, &k[i]);

			out[i0 + i] = e >= 0 && s->slots[e].state == KVCD_SLOT_LIVE
					      ? rec_at(s, s->slots[e].rec)
					      : NULL;
			if (out[i0 + i])
				__builtin_prefetch(out[i0 + i], 1);
		}
		for (size_t i = 0; i < m; i++)
			if (out[i0 + i])
				out[i0 + i]->refs++;
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

size_t kvcd_store_lookup(struct kvcd_store *s, uint16_t ns, const struct kvcp_key *keys, size_t n)
{
	size_t i0 = 0, i = 0;

	pthread_mutex_lock(&s->lock);
	for (; i0 < n && i == i0; i0 += BATCH) {
		struct kvcp_key k[BATCH];
		size_t at[BATCH], m = n - i0 < BATCH ? n - i0 : BATCH;

		batch_start(s, ns, keys + i0, m, k, at);
		for (; i < i0 + m; i++) {
			ptrdiff_t e = probe(s, at[i - i0], ns, &k[i - i0]);

			if (e < 0 || s->slots[e].state != KVCD_SLOT_LIVE)
				break;
		}
	}
	pthread_mutex_unlock(&s->lock);
	return i;
}

int kvcd_store_delete(struct kvcd_store *s, uint16_t ns, const struct kvcp_key *key)
{
	struct kvcd_block *b;
	int err = 0;

	pthread_mutex_lock(&s->lock);
	b = live(s, ns, key);
	if (!b)
		err = -ENOENT;
	else if (b->pins)
		err = -EBUSY;
	else
		kill(s, b);
	pthread_mutex_unlock(&s->lock);
	return err;
}

int kvcd_store_pin(struct kvcd_store *s, uint16_t ns, const struct kvcp_key *key, uint32_t owner,
		   uint64_t deadline_ns)
{
	struct kvcd_block *b;
	struct kvcd_pin *p;
	int err = 0;

	pthread_mutex_lock(&s->lock);
	b = live(s, ns, key);
	if (!b) {
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

int kvcd_store_unpin(struct kvcd_store *s, uint16_t ns, const struct kvcp_key *key, uint32_t owner)
{
	int err = -ENOENT;

	pthread_mutex_lock(&s->lock);
	for (struct kvcd_pin **pp = &s->pins; *pp; pp = &(*pp)->next) {
		struct kvcd_pin *p = *pp;

		const struct kvcd_slot *e = &s->slots[p->b->slot]; /* pinned: indexed */

		if (p->owner != owner || e->ns != ns || e->key.lo != key->lo ||
		    e->key.hi != key->hi)
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
			     s->nslots * sizeof(struct kvcd_slot) +
			     s->npins * sizeof(struct kvcd_pin);
	pthread_mutex_unlock(&s->lock);
}

unsigned kvcd_store_list(struct kvcd_store *s, uint16_t ns, uint32_t start,
			 struct kvcp_list_ent *out, unsigned max)
{
	unsigned n = 0;
	uint64_t seen = 0;

	pthread_mutex_lock(&s->lock);
	for (size_t i = 0; i < s->nslots && n < max; i++) {
		const struct kvcd_slot *e = &s->slots[i];
		const struct kvcd_block *b;

		if (e->state != KVCD_SLOT_LIVE || e->ns != ns || seen++ < start)
			continue;
		b = rec_at(s, e->rec);
		memset(&out[n], 0, sizeof(out[n]));
		out[n].key = e->key;
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
