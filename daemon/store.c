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

#define FREQ_MAX   3 /* reads a block is credited with, each a second chance */
#define SLAB_BYTES (2u << 20)
#define SLAB_SHIFT 15 /* records per slab: SLAB_BYTES / 64 */
#define SLAB_RECS  (1u << SLAB_SHIFT)
#define MAX_SLABS  (1u << (32 - SLAB_SHIFT))
_Static_assert(SLAB_RECS * sizeof(struct kvcd_block) == SLAB_BYTES, "records fill a slab");

static inline struct kvcd_block *rec_at(const struct kvcd_store *s, uint32_t id)
{
	return (struct kvcd_block *)s->slabs[id >> SLAB_SHIFT] + (id & (SLAB_RECS - 1));
}

static inline struct kvcd_chain *chain_at(const struct kvcd_store *s, uint32_t id)
{
	return &s->chains[id >> SLAB_SHIFT][id & (SLAB_RECS - 1)];
}

#define PARENT_GONE UINT32_MAX /* chain.parent of a block stored after its parent went */

/* Has the block with chain record @c lost its prefix? Then no LOOKUP of its chain reaches
 * it. */
static inline bool orphan(const struct kvcd_store *s, const struct kvcd_chain *c)
{
	return c->parent == PARENT_GONE ||
	       (c->parent && chain_at(s, c->parent - 1)->gen != c->parent_gen);
}

static inline uint32_t rec_id(const struct kvcd_block *b)
{
	uintptr_t base = (uintptr_t)b & ~(uintptr_t)(SLAB_BYTES - 1);

	return *(const uint32_t *)base << SLAB_SHIFT |
	       (uint32_t)(((uintptr_t)b - base) / sizeof(*b));
}

uint32_t kvcd_store_rec(const struct kvcd_block *b)
{
	return rec_id(b);
}

/* ---- block tags ------------------------------------------------------------------------------
 * Each block's allocation header carries its record (alloc.c's tag): the key, namespace,
 * layout, size and checksum, so a restarted kvcd can find every block in the pool again
 * (kvcd_store_adopt), and the record id, so a walk of the pool finds each block's record. */

#define TAG_MAGIC     0xb7u
#define TAG_COMMITTED 1u
#define TAG_HAS_SUM   2u
#define TAG_SUMMARY   4u

struct kvcd_btag {
	struct kvcp_key key;
	uint8_t dtype, codec;
	uint16_t layers, kv_heads, head_dim;
	uint32_t tokens;
	uint32_t rec;	   /* this run's record id; meaningless after a restart */
	uint64_t checksum; /* of the stored bytes, when TAG_HAS_SUM */
	uint64_t word;	   /* stored bytes (40 bits) | ns << 40 | flags << 48 | magic << 56 */
};
_Static_assert(sizeof(struct kvcd_btag) == KVCD_ALLOC_TAG_BYTES, "a tag fills the header");
_Static_assert(KVCD_STORE_NS <= 256, "a tag keeps the namespace id in 8 bits");

static inline struct kvcd_btag *tag_of(void *data)
{
	return kvcd_alloc_tag(data);
}

/* The tag of the block at @data, not yet committed: what a restart reads back. */
static void tag_put(void *data, const struct kvcp_layout *l, uint8_t codec, uint64_t stored,
		    uint16_t ns, const struct kvcp_key *k, uint32_t id)
{
	struct kvcd_btag *t = tag_of(data);

	t->key = *k;
	t->dtype = l->dtype;
	t->codec = codec;
	t->layers = l->layers;
	t->kv_heads = l->kv_heads;
	t->head_dim = l->head_dim;
	t->tokens = l->tokens;
	t->rec = id;
	t->checksum = 0;
	t->word = (stored & ((1ull << 40) - 1)) | (uint64_t)(ns & 0xff) << 40 |
		  (uint64_t)TAG_MAGIC << 56;
}

static void tag_write(struct kvcd_block *b, uint16_t ns, const struct kvcp_key *k, uint32_t id)
{
	tag_put(b->data, &b->layout, b->layout.codec, b->stored, ns, k, id);
}

/* The tag says committed last: a restart never adopts a half-written block. @stored: the
 * bytes the checksum covers, which a summary after them makes fewer than were reserved. */
static void tag_commit(void *data, uint64_t stored, bool has_sum, bool summary, uint64_t checksum)
{
	struct kvcd_btag *t = tag_of(data);

	t->checksum = checksum;
	t->word =
		(t->word & ~(0xffull << 48) & ~((1ull << 40) - 1)) | (stored & ((1ull << 40) - 1)) |
		(uint64_t)(TAG_COMMITTED | (has_sum ? TAG_HAS_SUM : 0) | (summary ? TAG_SUMMARY : 0))
			<< 48;
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
	struct kvcd_chain *c;
	uint32_t id;

	if (!s->free_recs) {
		void **sl = s->nslabs < MAX_SLABS ? realloc(s->slabs, (s->nslabs + 1) * sizeof(*sl))
						  : NULL;
		struct kvcd_chain **ch;
		struct kvcd_block *b;
		uint32_t j = (uint32_t)s->nslabs;

		if (!sl)
			return 0;
		s->slabs = sl;
		ch = realloc(s->chains, (s->nslabs + 1) * sizeof(*ch));
		if (!ch)
			return 0;
		s->chains = ch;
		ch[j] = calloc(SLAB_RECS, sizeof(**ch));
		b = ch[j] ? table_alloc(SLAB_BYTES) : NULL;
		if (!b) {
			free(ch[j]);
			return 0;
		}
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
	c = chain_at(s, id);
	*c = (struct kvcd_chain){ .gen = c->gen }; /* gen outlives the block: links check it */
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
	s->pin_next_deadline = UINT64_MAX;
	pthread_mutex_init(&s->lock, NULL);
	return 0;
}

void kvcd_store_fini(struct kvcd_store *s)
{
	for (size_t i = 0; i < s->nslabs; i++) {
		free(s->slabs[i]);
		free(s->chains[i]);
	}
	free(s->slabs);
	free(s->chains);
	free(s->pins);
	free(s->pin_heads);
	free(s->picked);
	free(s->slots);
	pthread_mutex_destroy(&s->lock);
}

int kvcd_store_ns_get(struct kvcd_store *s, const char *name, const struct kvcd_policy *init,
		      uint64_t quota, int remote)
{
	int id = -1, spare = -1;

	pthread_mutex_lock(&s->lock);
	for (unsigned i = 0; i < s->nns && id < 0; i++) {
		if (!strcmp(s->ns[i].name, name))
			id = (int)i;
		else if (!s->ns[i].name[0] && spare < 0)
			spare = (int)i;
	}
	if (id < 0 && spare < 0 && s->nns < KVCD_STORE_NS)
		spare = (int)s->nns++;
	if (id < 0 && spare >= 0) {
		struct kvcd_store_ns *n = &s->ns[spare];

		memset(n, 0, sizeof(*n));
		strcpy(n->name, name);
		if (init)
			n->policy = *init;
		n->quota = quota;
		n->remote = remote;
		id = spare;
		if (s->ns_changed)
			s->ns_changed(s, (unsigned)id, s->ns_arg);
	}
	if (id >= 0)
		s->ns[id].attached++;
	pthread_mutex_unlock(&s->lock);
	return id >= 0 ? id : -ENFILE;
}

/* Forget namespace @id if nobody is attached to it and it holds nothing. Lock held. */
static void ns_maybe_free(struct kvcd_store *s, uint16_t id)
{
	struct kvcd_store_ns *n = &s->ns[id];

	if (!n->name[0] || n->attached || n->blocks || n->charged)
		return;
	memset(n, 0, sizeof(*n));
	if (s->ns_changed)
		s->ns_changed(s, id, s->ns_arg);
}

void kvcd_store_ns_put(struct kvcd_store *s, uint16_t ns)
{
	pthread_mutex_lock(&s->lock);
	if (s->ns[ns].attached)
		s->ns[ns].attached--;
	ns_maybe_free(s, ns);
	pthread_mutex_unlock(&s->lock);
}

void kvcd_store_ns_hold(struct kvcd_store *s, uint16_t ns)
{
	pthread_mutex_lock(&s->lock);
	s->ns[ns].attached++;
	pthread_mutex_unlock(&s->lock);
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

/* ---- pins ----------------------------------------------------------------------------------- */

static size_t pin_hash(const struct kvcd_store *s, uint32_t rec, const struct kvcd_pin_owner *o)
{
	uint64_t k = (uint64_t)rec << 32 | o->id;

	return (size_t)XXH3_64bits_withSeed(&k, sizeof(k), s->seed) & (s->npin_heads - 1);
}

static void pin_link(struct kvcd_store *s, uint32_t i)
{
	struct kvcd_pin *p = &s->pins[i];
	uint32_t *head = &s->pin_heads[pin_hash(s, p->rec, p->owner)];

	p->hnext = *head;
	*head = i + 1;
}

/* Take pin @i off its hash chain (chains are short: the table grows with the pins). */
static void pin_unlink(struct kvcd_store *s, uint32_t i)
{
	struct kvcd_pin *p = &s->pins[i];
	uint32_t *pp = &s->pin_heads[pin_hash(s, p->rec, p->owner)];

	while (*pp != i + 1)
		pp = &s->pins[*pp - 1].hnext;
	*pp = p->hnext;
}

/* Point whatever names pin @from (its owner's list) at @to instead. */
static void pin_renumber(struct kvcd_store *s, uint32_t from, uint32_t to)
{
	struct kvcd_pin *p = &s->pins[from];

	if (p->oprev)
		s->pins[p->oprev - 1].onext = to + 1;
	else
		p->owner->head = to + 1;
	if (p->onext)
		s->pins[p->onext - 1].oprev = to + 1;
}

/* A block gains or loses its first pin: what its pool and namespace hold pinned. */
static void pinned_account(struct kvcd_store *s, struct kvcd_block *b, bool on)
{
	struct kvcd_store_ns *n = &s->ns[s->slots[b->slot].ns];
	uint64_t c = kvcd_alloc_charge(b->data);

	s->pools[b->pool].pinned += on ? 1 : -1;
	n->pinned += on ? c : -c;
}

static void pin_remove(struct kvcd_store *s, uint32_t i)
{
	struct kvcd_pin *p = &s->pins[i];
	struct kvcd_block *b = rec_at(s, p->rec);
	uint32_t last;

	pin_unlink(s, i);
	if (p->oprev)
		s->pins[p->oprev - 1].onext = p->onext;
	else
		p->owner->head = p->onext;
	if (p->onext)
		s->pins[p->onext - 1].oprev = p->oprev;
	p->owner->count--;
	if (--b->pins == 0)
		pinned_account(s, b, false);
	last = (uint32_t)--s->npins;
	if (i != last) { /* keep the array dense: the last pin moves into the hole */
		pin_unlink(s, last);
		pin_renumber(s, last, i);
		s->pins[i] = s->pins[last];
		pin_link(s, i);
	}
}

/* Room for one more pin: the array and the hash table grow by doubling. */
static int pin_reserve(struct kvcd_store *s)
{
	if (s->npins == s->cap_pins) {
		size_t cap = s->cap_pins ? 2 * s->cap_pins : 64;
		struct kvcd_pin *n = realloc(s->pins, cap * sizeof(*n));

		if (!n)
			return -ENOMEM;
		s->pins = n;
		s->cap_pins = cap;
	}
	if (s->npins + 1 > s->npin_heads) {
		size_t nh = s->npin_heads ? 2 * s->npin_heads : 64;
		uint32_t *h = calloc(nh, sizeof(*h));

		if (!h)
			return -ENOMEM;
		free(s->pin_heads);
		s->pin_heads = h;
		s->npin_heads = nh;
		for (uint32_t i = 0; i < s->npins; i++)
			pin_link(s, i);
	}
	return 0;
}

/* ---- removal ------------------------------------------------------------------------------ */

static void destroy(struct kvcd_store *s, struct kvcd_block *b)
{
	struct kvcd_pool *p = &s->pools[b->pool];

	if (s->forget)
		s->forget(s, rec_id(b), s->forget_arg);
	kvcd_free(&p->alloc, b->data);
	p->blocks--;
	rec_free(s, b);
}

/* Take @b out of the index and the CLOCK ring; free it now or when its last reference goes.
 * Pins on it are dropped. */
static void kill(struct kvcd_store *s, struct kvcd_block *b)
{
	uint16_t ns = s->slots[b->slot].ns;
	uint32_t id = rec_id(b);
	struct kvcd_chain *c = chain_at(s, id);

	if (c->parent && !orphan(s, c)) {
		struct kvcd_chain *p = chain_at(s, c->parent - 1);

		if (p->children && p->children < KVCD_CHAIN_CHILDREN_MAX) /* stuck once full */
			p->children--;
	}
	c->parent = 0;
	c->gen++; /* the blocks linked to it see their prefix is gone */

	/* only a corrupt block is killed pinned (DELETE refuses, eviction skips): rare enough
	 * for a walk of the pins */
	for (size_t i = s->npins; b->pins && i-- > 0;)
		if (s->pins[i].rec == id)
			pin_remove(s, (uint32_t)i);
	slot_remove(s, b->slot);
	ring_remove(s, &s->pools[b->pool], b, rec_id(b));
	if (!(b->flags & KVCD_BLK_WRITING)) {
		s->bytes_in -= kvcp_layout_bytes(&b->layout);
		s->bytes_stored -= b->stored;
		s->ns[ns].blocks--;
		s->ns[ns].bytes_in -= kvcp_layout_bytes(&b->layout);
		s->ns[ns].bytes_stored -= b->stored;
	}
	s->ns[ns].charged -= kvcd_alloc_charge(b->data);
	/* gone from the index: a restart must not find it again, even while a reader holds it */
	tag_of(b->data)->word &= ~((uint64_t)TAG_COMMITTED << 48);
	b->flags |= KVCD_BLK_DEAD;
	if (!b->refs)
		destroy(s, b);
	ns_maybe_free(s, ns);
}

/* @b is about to be evicted: counted, and offered to the remote tier when its namespace
 * spills there. */
static void evicting(struct kvcd_store *s, const struct kvcd_block *b)
{
	uint16_t ns = s->slots[b->slot].ns;

	s->ns[ns].evictions++;
	if (s->evicting && s->ns[ns].remote >= KVCD_REMOTE_EVICTED)
		s->evicting(s, b, ns, s->evicting_arg);
}

/* Who is asking for room: a STORE's namespace, or one of these. */
#define FOR_ADMIN     (-1) /* EVICT: anything not in use */
#define FOR_WATERMARK (-2) /* background: what no quota protects */

/* May eviction on behalf of @who take @b? Never a block in use; never, unless an admin asks,
 * a block of another namespace that is within its quota. */
static bool evictable(const struct kvcd_store *s, const struct kvcd_block *b, int who)
{
	const struct kvcd_store_ns *n;
	uint16_t ns;

	if (b->pins || b->refs || (b->flags & KVCD_BLK_WRITING))
		return false;
	ns = s->slots[b->slot].ns;
	n = &s->ns[ns];
	return who == FOR_ADMIN || ns == who || !n->quota || n->charged > n->quota;
}

/* The CLOCK, prefix-aware. A block whose parent is gone goes first: no LOOKUP of its chain
 * reaches it any more. Others get a second chance for their REF bit (recency) and one per
 * read beyond the first, up to FREQ_MAX (frequency); then, in chains that have been read,
 * leaves go before the blocks they extend, so that what stays is still a prefix. After
 * FREQ_MAX + 2 sweeps, inner blocks go too. */
enum {
	TAKE,
	SPARE_REF,
	SPARE_FREQ,
	SPARE_INNER
};

static int clock_visit(struct kvcd_store *s, struct kvcd_block *b, uint32_t id, bool late)
{
	struct kvcd_chain *c = chain_at(s, id);

	if (orphan(s, c))
		return TAKE;
	if (b->flags & KVCD_BLK_REF) {
		b->flags &= (uint8_t)~KVCD_BLK_REF;
		return SPARE_REF;
	}
	if (c->freq) {
		c->freq--;
		return SPARE_FREQ;
	}
	/* A prefix that has been read (shared, reused) loses its tail before its head. A chain
	 * nobody has read since it was stored goes head first, as plain CLOCK takes it, and its
	 * orphans right after: sparing its inner blocks would only keep a dead chain longer. */
	return c->children && b->hits && !late ? SPARE_INNER : TAKE;
}

/* Steps of the hand that make FREQ_MAX + 3 sweeps of pool @p: the last one may take inner
 * blocks. */
static uint64_t clock_budget(const struct kvcd_pool *p)
{
	return (FREQ_MAX + 3) * p->blocks + 1;
}

/* Evict one block of pool @p by CLOCK (clock_visit), skipping what @who may not take.
 * Returns true when a block was evicted. */
static bool evict_one(struct kvcd_store *s, struct kvcd_pool *p, int who)
{
	uint64_t steps = clock_budget(p);

	while (p->hand && steps--) {
		uint32_t id = p->hand;
		struct kvcd_block *b = rec_at(s, id);

		p->hand = b->cnext;
		if (!evictable(s, b, who) || clock_visit(s, b, id, steps < p->blocks) != TAKE)
			continue;
		evicting(s, b);
		kill(s, b);
		s->evictions++;
		return true;
	}
	return false;
}

static bool is_victim(void *payload, void *arg)
{
	const struct kvcd_store *s = arg;

	return rec_at(s, tag_of(payload)->rec)->flags & KVCD_BLK_VICTIM;
}

#define PICK_CLEARED (1ull << 32) /* a REF bit cleared, not a victim */
#define PICK_FREQ    (1ull << 33) /* a read spent, not a victim */

static bool pick_push(struct kvcd_store *s, uint64_t v)
{
	if (s->npicked == s->cap_picked) {
		size_t cap = s->cap_picked ? 2 * s->cap_picked : 64;
		uint64_t *n = realloc(s->picked, cap * sizeof(*n));

		if (!n)
			return false;
		s->picked = n;
		s->cap_picked = cap;
	}
	s->picked[s->npicked++] = v;
	return true;
}

/* Choose victims in pool @p by CLOCK for a STORE of namespace @who, marking them and adding
 * them to s->picked, until there is room for @stored bytes (@own < 0), or until they hold
 * *@need more bytes of namespace @own's (counted down). Nothing is freed: evict_picked()
 * evicts them, unpick() puts everything back as it was. True when that is enough. */
static bool pick_victims(struct kvcd_store *s, struct kvcd_pool *p, int who, uint64_t stored,
			 int own, uint64_t *need)
{
	for (uint64_t steps = clock_budget(p); p->hand && steps--;) {
		uint32_t id = p->hand;
		struct kvcd_block *b = rec_at(s, id);
		uint64_t c;
		int v;

		p->hand = b->cnext;
		if ((b->flags & KVCD_BLK_VICTIM) || !evictable(s, b, who) ||
		    (own >= 0 && s->slots[b->slot].ns != own))
			continue;
		/* room for the undo first: a failed push must leave nothing changed */
		if (!pick_push(s, id))
			return false;
		v = clock_visit(s, b, id, steps < p->blocks);
		if (v != TAKE) {
			if (v == SPARE_INNER)
				s->npicked--; /* nothing changed */
			else
				s->picked[s->npicked - 1] |= v == SPARE_REF ? PICK_CLEARED
									    : PICK_FREQ;
			continue;
		}
		b->flags |= KVCD_BLK_VICTIM;
		if (own >= 0) {
			c = kvcd_alloc_charge(b->data);
			*need = c >= *need ? 0 : *need - c;
			if (!*need)
				return true;
		} else if (kvcd_alloc_frees_room(&p->alloc, b->data, stored, is_victim, s)) {
			return true;
		}
	}
	return false;
}

/* Undo pick_victims(): marks and REF bits as they were; the caller restores the hands. */
static void unpick(struct kvcd_store *s)
{
	for (size_t i = 0; i < s->npicked; i++) {
		struct kvcd_block *b = rec_at(s, (uint32_t)s->picked[i]);

		if (s->picked[i] & PICK_CLEARED)
			b->flags |= KVCD_BLK_REF;
		else if (s->picked[i] & PICK_FREQ)
			chain_at(s, (uint32_t)s->picked[i])->freq++;
		else
			b->flags &= (uint8_t)~KVCD_BLK_VICTIM;
	}
	s->npicked = 0;
}

/* Evict what pick_victims() chose. */
static void evict_picked(struct kvcd_store *s)
{
	for (size_t i = 0; i < s->npicked; i++) {
		struct kvcd_block *b = rec_at(s, (uint32_t)s->picked[i]);

		if (s->picked[i] & (PICK_CLEARED | PICK_FREQ))
			continue;
		b->flags &= (uint8_t)~KVCD_BLK_VICTIM;
		evicting(s, b);
		kill(s, b);
		s->evictions++;
	}
	s->npicked = 0;
}

/* ---- operations --------------------------------------------------------------------------- */

/* Room for @stored bytes on the nearest pool of @order that has it, evicting for namespace
 * @ns where none has; NULL (nothing evicted) when no pool can have it. */
static void *place(struct kvcd_store *s, int ns, uint64_t stored, const uint8_t *order, unsigned n,
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
		uint32_t hand0 = p->hand;

		if (stored > p->alloc.size)
			continue;
		s->npicked = 0;
		if (!pick_victims(s, p, ns, stored, -1, NULL)) {
			unpick(s);
			p->hand = hand0;
			continue;
		}
		evict_picked(s);
		data = kvcd_alloc(&p->alloc, stored);
		if (data) { /* always: the victims' run had room */
			*pool = order[i];
			return data;
		}
	}
	return NULL;
}

/* Keep namespace @ns within its quota for @stored more bytes, evicting its own blocks from
 * any pool. Returns 0, or -EDQUOT with nothing evicted. */
static int make_quota(struct kvcd_store *s, uint16_t ns, uint64_t stored)
{
	struct kvcd_store_ns *n = &s->ns[ns];
	uint64_t est = ((stored + KVCD_ALLOC_ALIGN - 1) & ~(uint64_t)(KVCD_ALLOC_ALIGN - 1)) +
		       KVCD_ALLOC_OVERHEAD;
	uint32_t hand0[KVCD_MAX_NODES];
	uint64_t need;
	bool enough = false;

	if (!n->quota || n->charged + est <= n->quota)
		return 0;
	if (n->pinned + est > n->quota) /* not even evicting all it may */
		return -EDQUOT;
	need = n->charged + est - n->quota;
	s->npicked = 0;
	for (unsigned i = 0; i < s->npools && !enough; i++) {
		hand0[i] = s->pools[i].hand;
		enough = pick_victims(s, &s->pools[i], ns, 0, ns, &need);
	}
	if (!enough) {
		unpick(s);
		for (unsigned i = 0; i < s->npools; i++)
			s->pools[i].hand = hand0[i];
		return -EDQUOT;
	}
	evict_picked(s);
	return 0;
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
	err = make_quota(s, ns, stored); /* may evict: slots move */
	data = err ? NULL : place(s, ns, stored, order, norder, &pool);
	if (!data) {
		rec_free(s, b);
		err = err ? err : -ENOSPC;
		goto out;
	}
	b->layout = *layout;
	b->stored = stored;
	b->data = data;
	b->pool = pool & 63;
	s->ns[ns].charged += kvcd_alloc_charge(data);
	/* Enters CLOCK referenced: otherwise, once every older block has been read, a sweep
	 * clears them all and takes the one block nobody has had a chance to fetch yet. */
	b->flags = KVCD_BLK_WRITING | KVCD_BLK_REF;
	b->refs = 1;
	slot_add(s, ns, key, id, KVCD_SLOT_WRITING);
	tag_write(b, ns, key, id);
	s->pools[pool].blocks++;
	ring_insert(s, &s->pools[pool], id);
	*out = b;
out:
	pthread_mutex_unlock(&s->lock);
	free(spare);
	free(old);
	return err;
}

void kvcd_store_link(struct kvcd_store *s, uint16_t ns, struct kvcd_block *b,
		     const struct kvcp_key *parent)
{
	struct kvcd_chain *c;
	struct kvcd_slot *e;
	uint32_t id;

	pthread_mutex_lock(&s->lock);
	e = find(s, ns, parent);
	id = rec_id(b);
	c = chain_at(s, id);
	if (c->parent || (e && e->rec == id)) {
		/* linked already, or its own parent: leave it a root */
	} else if (!e || orphan(s, chain_at(s, e->rec))) {
		/* its prefix is not cached (evicted, perhaps to make room for it): no LOOKUP of
		 * the chain reaches it, so it is worth least */
		c->parent = PARENT_GONE;
	} else {
		struct kvcd_chain *p = chain_at(s, e->rec);

		c->parent = e->rec + 1;
		c->parent_gen = p->gen;
		p->children += p->children < KVCD_CHAIN_CHILDREN_MAX;
	}
	pthread_mutex_unlock(&s->lock);
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
		tag_commit(b->data, b->stored, has_sum, b->summary, checksum);
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

/* Rewriting a committed block in place: its new bytes go to a new allocation, which takes
 * the old one's place only while nobody else reads the block, so a reader never sees bytes
 * change under it and the old bytes are freed at once. */
static bool rewritable(const struct kvcd_block *b)
{
	return b->refs == 1 && !b->pins && !(b->flags & (KVCD_BLK_DEAD | KVCD_BLK_WRITING));
}

int kvcd_store_rewrite_begin(struct kvcd_store *s, struct kvcd_block *b, uint64_t stored,
			     uint8_t codec, const uint8_t *order, unsigned norder,
			     struct kvcd_rewrite *rw)
{
	uint16_t ns;
	int err = 0;

	pthread_mutex_lock(&s->lock);
	if (!rewritable(b)) {
		err = -EBUSY;
		goto out;
	}
	ns = s->slots[b->slot].ns;
	err = make_quota(s, ns, stored); /* never evicts @b: it is referenced */
	rw->data = err ? NULL : place(s, ns, stored, order, norder, &rw->pool);
	if (!rw->data) {
		err = err ? err : -ENOSPC;
		goto out;
	}
	rw->stored = stored;
	rw->codec = codec;
	s->ns[ns].charged += kvcd_alloc_charge(rw->data);
	tag_put(rw->data, &b->layout, codec, stored, ns, &s->slots[b->slot].key, rec_id(b));
out:
	pthread_mutex_unlock(&s->lock);
	return err;
}

int kvcd_store_rewrite_end(struct kvcd_store *s, struct kvcd_block *b,
			   const struct kvcd_rewrite *rw, bool ok, bool has_sum, uint64_t checksum,
			   bool summary)
{
	uint16_t ns;
	uint32_t id = rec_id(b);
	unsigned old_pool = b->pool;
	void *old = b->data;
	int err = 0;

	pthread_mutex_lock(&s->lock);
	ns = s->slots[b->slot].ns;
	if (!ok || !rewritable(b)) { /* a reader came meanwhile: the old bytes stay */
		s->ns[ns].charged -= kvcd_alloc_charge(rw->data);
		kvcd_free(&s->pools[rw->pool].alloc, rw->data);
		err = ok ? -EBUSY : -ECANCELED;
		goto out;
	}
	/* the old tag stops being committed first: a restart in between loses the block, it
	 * never finds it twice */
	tag_of(old)->word &= ~((uint64_t)TAG_COMMITTED << 48);
	if (s->forget)
		s->forget(s, id, s->forget_arg);
	tag_commit(rw->data, rw->stored, has_sum, summary, checksum);
	s->bytes_stored += rw->stored - b->stored;
	s->ns[ns].bytes_stored += rw->stored - b->stored;
	s->ns[ns].charged -= kvcd_alloc_charge(old);
	b->data = rw->data;
	b->stored = rw->stored;
	b->layout.codec = rw->codec;
	b->checksum = checksum;
	b->has_sum = has_sum;
	b->summary = summary;
	if (rw->pool != old_pool) {
		ring_remove(s, &s->pools[old_pool], b, id);
		s->pools[old_pool].blocks--;
		b->pool = rw->pool & 63;
		ring_insert(s, &s->pools[rw->pool], id);
		s->pools[rw->pool].blocks++;
	}
	kvcd_free(&s->pools[old_pool].alloc, old);
out:
	pthread_mutex_unlock(&s->lock);
	return err;
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
		s->ns[ns].misses++;
		err = -ENOENT;
	} else {
		struct kvcd_chain *c = chain_at(s, rec_id(b));

		s->hits++;
		s->ns[ns].hits++;
		b->hits++;
		b->refs++;
		b->flags |= KVCD_BLK_REF;
		/* the first read counts as the REF bit a new block enters with: only reads
		 * beyond it earn more, so an unread new block is no likelier victim than a
		 * block read once */
		c->freq += b->hits > 1 && c->freq < FREQ_MAX;
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

void kvcd_store_hold(struct kvcd_store *s, struct kvcd_block *b)
{
	pthread_mutex_lock(&s->lock);
	b->refs++;
	pthread_mutex_unlock(&s->lock);
}

unsigned kvcd_store_hold_hi(struct kvcd_store *s, uint64_t hi,
			    bool (*fn)(void *arg, uint16_t ns, const struct kvcp_key *k,
				       struct kvcd_block *b),
			    void *arg)
{
	unsigned n = 0;

	pthread_mutex_lock(&s->lock);
	for (size_t i = 0; i < s->nslots; i++) {
		const struct kvcd_slot *e = &s->slots[i];
		struct kvcd_block *b;

		if (e->state != KVCD_SLOT_LIVE || e->key.hi != hi)
			continue;
		b = rec_at(s, e->rec);
		if (fn(arg, e->ns, &e->key, b)) {
			b->refs++;
			n++;
		}
	}
	pthread_mutex_unlock(&s->lock);
	return n;
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
	enum {
		SLICE = 64 * BATCH /* keys per hold of the lock */
	};
	size_t i0 = 0, i = 0;

	while (i0 < n && i == i0) {
		size_t end = n - i0 < SLICE ? n : i0 + SLICE;

		pthread_mutex_lock(&s->lock);
		for (; i0 < end && i == i0; i0 += BATCH) {
			struct kvcp_key k[BATCH];
			size_t at[BATCH], m = end - i0 < BATCH ? end - i0 : BATCH;

			batch_start(s, ns, keys + i0, m, k, at);
			for (; i < i0 + m; i++) {
				ptrdiff_t e = probe(s, at[i - i0], ns, &k[i - i0]);

				if (e < 0 || s->slots[e].state != KVCD_SLOT_LIVE)
					break;
			}
		}
		pthread_mutex_unlock(&s->lock);
	}
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

int kvcd_store_pin(struct kvcd_store *s, uint16_t ns, const struct kvcp_key *key,
		   struct kvcd_pin_owner *o, uint64_t deadline_ns, unsigned max)
{
	struct kvcd_block *b;
	struct kvcd_pin *p;
	uint32_t i;
	int err = 0;

	pthread_mutex_lock(&s->lock);
	b = live(s, ns, key);
	if (!b)
		err = -ENOENT;
	else if (b->pins == UINT16_MAX)
		err = -EOVERFLOW;
	else if (o->count >= max)
		err = -EDQUOT;
	else
		err = pin_reserve(s);
	if (!err) {
		i = (uint32_t)s->npins++;
		p = &s->pins[i];
		p->rec = rec_id(b);
		p->deadline_ns = deadline_ns;
		p->owner = o;
		p->oprev = 0;
		p->onext = o->head;
		if (o->head)
			s->pins[o->head - 1].oprev = i + 1;
		o->head = i + 1;
		o->count++;
		pin_link(s, i);
		if (b->pins++ == 0)
			pinned_account(s, b, true);
		if (deadline_ns < s->pin_next_deadline)
			s->pin_next_deadline = deadline_ns;
	}
	pthread_mutex_unlock(&s->lock);
	return err;
}

int kvcd_store_unpin(struct kvcd_store *s, uint16_t ns, const struct kvcp_key *key,
		     struct kvcd_pin_owner *o)
{
	struct kvcd_block *b;
	int err = -ENOENT;

	pthread_mutex_lock(&s->lock);
	b = live(s, ns, key);
	if (b && b->pins) {
		uint32_t id = rec_id(b);

		for (uint32_t i = s->pin_heads[pin_hash(s, id, o)]; i; i = s->pins[i - 1].hnext)
			if (s->pins[i - 1].rec == id && s->pins[i - 1].owner == o) {
				pin_remove(s, i - 1);
				err = 0;
				break;
			}
	}
	pthread_mutex_unlock(&s->lock);
	return err;
}

unsigned kvcd_store_release_pins(struct kvcd_store *s, uint64_t now_ns, struct kvcd_pin_owner *o)
{
	unsigned n = 0;

	pthread_mutex_lock(&s->lock);
	if (o) {
		while (o->head) {
			pin_remove(s, o->head - 1);
			n++;
		}
	} else if (now_ns >= s->pin_next_deadline) {
		uint64_t next = UINT64_MAX;

		/* from the top: the pin that moves into a hole has been looked at already */
		for (size_t i = s->npins; i-- > 0;) {
			if (s->pins[i].deadline_ns <= now_ns) {
				pin_remove(s, (uint32_t)i);
				n++;
			} else if (s->pins[i].deadline_ns < next) {
				next = s->pins[i].deadline_ns;
			}
		}
		s->pin_next_deadline = next;
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
		while (p->alloc.used > goal &&
		       evict_one(s, p, target_free ? FOR_ADMIN : FOR_WATERMARK))
			n++;
	}
	pthread_mutex_unlock(&s->lock);
	return n;
}

void kvcd_store_stats(struct kvcd_store *s, struct kvcp_stats *st, uint16_t *ids,
		      bool (*show)(const char *name, void *arg), void *arg)
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
	st->nns = 0;
	for (unsigned i = 0; i < s->nns && st->nns < KVCP_MAX_NS_STATS; i++) {
		struct kvcp_ns_stats *n = &st->ns[st->nns];

		if (!s->ns[i].name[0] || (show && !show(s->ns[i].name, arg)))
			continue;
		ids[st->nns++] = (uint16_t)i;
		memcpy(n->name, s->ns[i].name, sizeof(n->name));
		kvcd_policy_format(&s->ns[i].policy, n->policy, sizeof(n->policy));
		n->blocks = s->ns[i].blocks;
		n->bytes_in = s->ns[i].bytes_in;
		n->bytes_stored = s->ns[i].bytes_stored;
		n->fallbacks = s->ns[i].fallbacks;
		st->ns_ext[st->nns - 1] = (struct kvcp_ns_ext){ s->ns[i].hits, s->ns[i].misses,
								s->ns[i].evictions, s->ns[i].quota,
								s->ns[i].charged };
	}
	st->hits = s->hits;
	st->misses = s->misses;
	st->evictions = s->evictions;
	st->pinned = s->npins;
	st->checksum_failures = s->checksum_failures;
	st->metadata_bytes = s->nslabs * (SLAB_BYTES + SLAB_RECS * sizeof(struct kvcd_chain)) +
			     s->nslabs * 2 * sizeof(void *) + s->nslots * sizeof(struct kvcd_slot) +
			     s->cap_pins * sizeof(struct kvcd_pin) +
			     s->npin_heads * sizeof(*s->pin_heads);
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

/* ---- adoption: the index rebuilt from a pool a previous kvcd filled --------------------------- */

struct adopt_ctx {
	struct kvcd_store *s;
	unsigned pool;
	const int *ns_map; /* the tags' namespace ids -> this run's (-1: none) */
	bool verify;
	struct kvcd_adopt_stats *st;
};

/* Double the index now (start-up: nobody else is waiting). */
static int grow_now(struct kvcd_store *s)
{
	struct kvcd_slot *to = table_alloc(s->nslots * 2 * sizeof(*to));

	if (!to)
		return -ENOMEM;
	free(rehash(s, to));
	return 0;
}

/* Keep block @data if its tag and checksum check out: it enters the index as committed. */
static bool adopt_one(void *data, void *arg)
{
	struct adopt_ctx *x = arg;
	struct kvcd_store *s = x->s;
	struct kvcd_btag *t = tag_of(data);
	struct kvcp_layout l = { .dtype = t->dtype,
				 .codec = t->codec,
				 .layers = t->layers,
				 .kv_heads = t->kv_heads,
				 .head_dim = t->head_dim,
				 .tokens = t->tokens };
	uint64_t stored = t->word & ((1ull << 40) - 1);
	unsigned flags = (unsigned)(t->word >> 48) & 0xff, tns = (unsigned)(t->word >> 40) & 0xff;
	uint64_t room = kvcd_alloc_charge(data) - KVCD_ALLOC_OVERHEAD;
	struct kvcd_block *b;
	uint32_t id;
	int ns;

	x->st->seen++;
	if ((t->word >> 56) != TAG_MAGIC || !(flags & TAG_COMMITTED)) {
		x->st->uncommitted++;
		return false;
	}
	ns = x->ns_map[tns];
	if (ns < 0 || !stored || stored > room || !kvcp_layout_bytes(&l) ||
	    (!l.codec && stored != kvcp_layout_bytes(&l))) {
		x->st->bad_tag++;
		return false;
	}
	if (x->verify && (flags & TAG_HAS_SUM) &&
	    kvcd_copy_sum(kvcd_isa_best(), NULL, data, stored) != t->checksum) {
		x->st->bad_sum++;
		return false;
	}
	if (find(s, (uint16_t)ns, &t->key) || (want_larger(s) && grow_now(s)) ||
	    !(id = rec_alloc(s))) {
		x->st->bad_tag++; /* a key twice, or no memory for it */
		return false;
	}
	b = rec_at(s, id);
	b->data = data;
	b->stored = stored;
	b->layout = l;
	b->checksum = t->checksum;
	b->has_sum = !!(flags & TAG_HAS_SUM);
	b->summary = !!(flags & TAG_SUMMARY);
	b->pool = x->pool & 63;
	slot_add(s, (uint16_t)ns, &t->key, id, KVCD_SLOT_LIVE);
	t->rec = id;
	t->word = (t->word & ~(0xffull << 40)) | (uint64_t)(ns & 0xff) << 40;
	s->pools[x->pool].blocks++;
	ring_insert(s, &s->pools[x->pool], id);
	s->bytes_in += kvcp_layout_bytes(&l);
	s->bytes_stored += stored;
	s->ns[ns].blocks++;
	s->ns[ns].bytes_in += kvcp_layout_bytes(&l);
	s->ns[ns].bytes_stored += stored;
	s->ns[ns].charged += kvcd_alloc_charge(data);
	x->st->kept++;
	x->st->bytes += stored;
	return true;
}

int kvcd_store_adopt(struct kvcd_store *s, unsigned pool, const int ns_map[256], bool verify,
		     struct kvcd_adopt_stats *st)
{
	struct kvcd_pool *p = &s->pools[pool];
	struct adopt_ctx x = { s, pool, ns_map, verify, st };
	int err;

	memset(st, 0, sizeof(*st));
	pthread_mutex_lock(&s->lock);
	err = kvcd_alloc_adopt(&p->alloc, (char *)p->base + KVCD_SB_BYTES, p->size - KVCD_SB_BYTES,
			       adopt_one, &x);
	pthread_mutex_unlock(&s->lock);
	return err;
}

int kvcd_store_chain_pos(struct kvcd_store *s, const struct kvcd_block *b, uint64_t *pos)
{
	uint32_t id = rec_id(b), hops = 0;
	uint64_t p = 0;
	int err = -ENOENT;

	pthread_mutex_lock(&s->lock);
	for (;;) {
		const struct kvcd_chain *c = chain_at(s, id);

		if (!c->parent) {
			err = 0;
			break;
		}
		if (orphan(s, c) || ++hops > s->count) /* broken, or (never) a loop */
			break;
		id = c->parent - 1;
		p += rec_at(s, id)->layout.tokens;
	}
	pthread_mutex_unlock(&s->lock);
	*pos = p;
	return err;
}
