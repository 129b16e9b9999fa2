/* alloc.c - TLSF (two-level segregated fit, Masmano et al. 2004) over one pool.
 *
 * malloc and free are O(1): a first-level index by power of two and 16 second-level lists
 * per power, each with a bitmap, so finding a free block is two find-first-set operations.
 * Every allocation carries a 64-byte in-band header (the pool is private to the daemon, so
 * no client can reach it) and payloads are 64-byte aligned.
 *
 * Fragmentation: a request is served from a list whose every block is large enough, so a
 * block is never more than 1/16 (6.25%) larger than needed for sizes of 1 KiB and up, plus
 * the 64-byte header; the remainder is split off and returned at once. Free neighbours are
 * coalesced immediately, so no two free blocks are ever adjacent. External fragmentation is
 * still possible (free space scattered between long-lived blocks); eviction frees whole
 * blocks and coalescing repairs it as the CLOCK hand moves on.
 */
#include <errno.h>
#include <stddef.h>
#include <string.h>

#include "kvcd.h"

#define SL_COUNT   (1u << KVCD_ALLOC_SL_LOG2)
#define ALIGN_LOG2 6
#define FL_SHIFT   (KVCD_ALLOC_SL_LOG2 + ALIGN_LOG2)
#define SMALL	   (1ull << FL_SHIFT)
#define HDR	   KVCD_ALLOC_OVERHEAD
#define F_FREE	   1ull

struct kvcd_fblk {
	struct kvcd_fblk *prev_phys; /* NULL for the first block */
	uint64_t size;		     /* payload bytes | F_FREE */
	struct kvcd_fblk *next_free, *prev_free;
	uint64_t pad[4];
};

static_assert(sizeof(struct kvcd_fblk) == HDR, "header is 64 bytes");

static inline uint64_t bsize(const struct kvcd_fblk *b)
{
	return b->size & ~F_FREE;
}

static inline struct kvcd_fblk *next_phys(const struct kvcd_fblk *b)
{
	return (struct kvcd_fblk *)((char *)b + HDR + bsize(b));
}

static void mapping(uint64_t size, unsigned *fl, unsigned *sl)
{
	if (size < SMALL) {
		*fl = 0;
		*sl = (unsigned)(size >> ALIGN_LOG2);
	} else {
		unsigned f = 63u - (unsigned)__builtin_clzll(size);

		*sl = (unsigned)(size >> (f - KVCD_ALLOC_SL_LOG2)) & (SL_COUNT - 1);
		*fl = f - FL_SHIFT + 1;
	}
}

static void insert_free(struct kvcd_alloc *a, struct kvcd_fblk *b)
{
	unsigned fl, sl;

	mapping(bsize(b), &fl, &sl);
	b->size |= F_FREE;
	b->prev_free = NULL;
	b->next_free = a->heads[fl][sl];
	if (b->next_free)
		b->next_free->prev_free = b;
	a->heads[fl][sl] = b;
	a->fl_bitmap |= 1ull << fl;
	a->sl_bitmap[fl] |= 1u << sl;
}

static void remove_free(struct kvcd_alloc *a, struct kvcd_fblk *b)
{
	unsigned fl, sl;

	mapping(bsize(b), &fl, &sl);
	if (b->prev_free)
		b->prev_free->next_free = b->next_free;
	else
		a->heads[fl][sl] = b->next_free;
	if (b->next_free)
		b->next_free->prev_free = b->prev_free;
	if (!a->heads[fl][sl]) {
		a->sl_bitmap[fl] &= ~(1u << sl);
		if (!a->sl_bitmap[fl])
			a->fl_bitmap &= ~(1ull << fl);
	}
	b->size &= ~F_FREE;
}

/* The arena of [base, base + size): aligned, whole headers, within what the lists index.
 * The same for a new arena and an adopted one. */
static int arena(struct kvcd_alloc *a, void *base, size_t size)
{
	uintptr_t start = ((uintptr_t)base + HDR - 1) & ~(uintptr_t)(HDR - 1);
	uint64_t usable;

	memset(a, 0, sizeof(*a));
	if (start - (uintptr_t)base + 3 * HDR > size)
		return -EINVAL;
	usable = (size - (start - (uintptr_t)base)) & ~(uint64_t)(HDR - 1);
	if (usable >= (1ull << (KVCD_ALLOC_FL_MAX + FL_SHIFT - 1)))
		return -EINVAL;
	a->base = (char *)start;
	a->size = usable;
	return 0;
}

int kvcd_alloc_init(struct kvcd_alloc *a, void *base, size_t size)
{
	struct kvcd_fblk *b, *sentinel;
	uint64_t usable;

	if (arena(a, base, size))
		return -EINVAL;
	usable = a->size;
	b = (struct kvcd_fblk *)a->base;
	b->prev_phys = NULL;
	b->size = usable - 2 * HDR;
	sentinel = next_phys(b);
	sentinel->prev_phys = b;
	sentinel->size = 0;
	insert_free(a, b);
	return 0;
}

/* The payload a request of @n bytes takes, and the least free block size that is sure to
 * be found for it (every block of the list searched is large enough). */
static uint64_t request_size(size_t n, uint64_t *search)
{
	uint64_t size = n < HDR ? HDR : ((uint64_t)n + HDR - 1) & ~(uint64_t)(HDR - 1);

	*search = size;
	if (size >= SMALL)
		*search += (1ull << (63u - (unsigned)__builtin_clzll(size) - KVCD_ALLOC_SL_LOG2)) -
			   1;
	return size;
}

void *kvcd_alloc(struct kvcd_alloc *a, size_t n)
{
	uint64_t search, size = request_size(n, &search);
	unsigned fl, sl;
	uint32_t slmap;
	uint64_t flmap;
	struct kvcd_fblk *b;

	if (n > a->size)
		return NULL;
	mapping(search, &fl, &sl);
	if (fl >= KVCD_ALLOC_FL_MAX)
		return NULL;
	slmap = a->sl_bitmap[fl] & (~0u << sl);
	if (!slmap) {
		flmap = fl + 1 < 64 ? a->fl_bitmap & (~0ull << (fl + 1)) : 0;
		if (!flmap)
			return NULL;
		fl = (unsigned)__builtin_ctzll(flmap);
		slmap = a->sl_bitmap[fl];
	}
	sl = (unsigned)__builtin_ctz(slmap);
	b = a->heads[fl][sl];
	remove_free(a, b);
	if (bsize(b) >= size + 2 * HDR) { /* split off the tail: header + at least 64 bytes */
		struct kvcd_fblk *rest = (struct kvcd_fblk *)((char *)b + HDR + size);

		rest->size = bsize(b) - size - HDR;
		rest->prev_phys = b;
		next_phys(rest)->prev_phys = rest;
		b->size = size;
		insert_free(a, rest);
	}
	a->used += bsize(b) + HDR;
	return (char *)b + HDR;
}

void kvcd_free(struct kvcd_alloc *a, void *p)
{
	struct kvcd_fblk *b = (struct kvcd_fblk *)((char *)p - HDR), *next;

	a->used -= bsize(b) + HDR;
	if (b->prev_phys && (b->prev_phys->size & F_FREE)) {
		struct kvcd_fblk *prev = b->prev_phys;

		remove_free(a, prev);
		prev->size = bsize(prev) + HDR + bsize(b);
		b = prev;
	}
	next = next_phys(b);
	if (next->size & F_FREE) {
		remove_free(a, next);
		b->size = bsize(b) + HDR + bsize(next);
	}
	next_phys(b)->prev_phys = b;
	insert_free(a, b);
}

void *kvcd_alloc_tag(void *p)
{
	return (char *)p - HDR + offsetof(struct kvcd_fblk, next_free);
}

static_assert(HDR - offsetof(struct kvcd_fblk, next_free) == KVCD_ALLOC_TAG_BYTES, "tag size");

/* Would a free block of @size be found by a search that starts at @search's list? */
static bool class_at_least(uint64_t size, uint64_t search)
{
	unsigned fl, sl, sfl, ssl;

	mapping(size, &fl, &sl);
	mapping(search, &sfl, &ssl);
	return fl > sfl || (fl == sfl && sl >= ssl);
}

bool kvcd_alloc_frees_room(const struct kvcd_alloc *a, void *p, size_t n,
			   bool (*gone)(void *payload, void *arg), void *arg)
{
	struct kvcd_fblk *b = (struct kvcd_fblk *)((char *)p - HDR), *x;
	uint64_t search, run = bsize(b);

	request_size(n, &search);
	if (n > a->size)
		return false;
	for (x = b->prev_phys; x && ((x->size & F_FREE) || gone((char *)x + HDR, arg));
	     x = x->prev_phys)
		run += HDR + bsize(x);
	for (x = next_phys(b); bsize(x) && ((x->size & F_FREE) || gone((char *)x + HDR, arg));
	     x = next_phys(x))
		run += HDR + bsize(x);
	return class_at_least(run, search);
}

int kvcd_alloc_adopt(struct kvcd_alloc *a, void *base, size_t size,
		     bool (*keep)(void *payload, void *arg), void *arg)
{
	struct kvcd_fblk *b, *prev = NULL, *run = NULL;
	char *end;

	if (arena(a, base, size))
		return -EINVAL;
	end = a->base + a->size - HDR; /* the sentinel */
	/* First pass: the chain of sizes must lead exactly to the sentinel. Nothing is
	 * written until it does, so a pool that is not ours is left as it was. */
	for (b = (struct kvcd_fblk *)a->base; (char *)b != end; b = next_phys(b))
		if ((char *)b > end || bsize(b) % HDR || !bsize(b) ||
		    bsize(b) > (uint64_t)(end - (char *)b) - HDR)
			return -EBADMSG;
	if (bsize(b))
		return -EBADMSG;
	/* Second pass: keep what @keep keeps; everything else becomes free, coalesced. */
	for (b = (struct kvcd_fblk *)a->base; (char *)b != end;) {
		struct kvcd_fblk *next = next_phys(b);
		bool kept = !(b->size & F_FREE) && keep((char *)b + HDR, arg);

		b->prev_phys = prev;
		b->size &= ~F_FREE;
		if (kept) {
			if (run)
				insert_free(a, run);
			run = NULL;
			a->used += bsize(b) + HDR;
			prev = b;
		} else if (run) {
			run->size = bsize(run) + HDR + bsize(b);
		} else {
			run = b;
			prev = b;
		}
		b = next;
	}
	if (run)
		insert_free(a, run);
	b->prev_phys = prev;
	return 0;
}

size_t kvcd_alloc_charge(const void *p)
{
	return bsize((const struct kvcd_fblk *)((const char *)p - HDR)) + HDR;
}

size_t kvcd_alloc_largest(const struct kvcd_alloc *a)
{
	uint64_t best = 0;

	if (!a->fl_bitmap)
		return 0;
	unsigned fl = 63u - (unsigned)__builtin_clzll(a->fl_bitmap);
	unsigned sl = 31u - (unsigned)__builtin_clz(a->sl_bitmap[fl]);

	for (const struct kvcd_fblk *b = a->heads[fl][sl]; b; b = b->next_free)
		if (bsize(b) > best)
			best = bsize(b);
	return best;
}

int kvcd_alloc_check(const struct kvcd_alloc *a)
{
	const struct kvcd_fblk *b = (const struct kvcd_fblk *)a->base, *prev = NULL;
	uint64_t used = 0, nfree = 0, listed = 0;
	bool prev_free = false;

	while ((char *)b < a->base + a->size - HDR) {
		if (b->prev_phys != prev || (bsize(b) % HDR) || bsize(b) < HDR)
			return -EFAULT;
		if (b->size & F_FREE) {
			if (prev_free)
				return -EFAULT; /* two adjacent free blocks: missed coalescing */
			nfree++;
		} else {
			used += bsize(b) + HDR;
		}
		prev_free = b->size & F_FREE;
		prev = b;
		b = next_phys(b);
	}
	if ((char *)b != a->base + a->size - HDR || bsize(b) != 0 || b->prev_phys != prev)
		return -EFAULT;
	for (unsigned fl = 0; fl < KVCD_ALLOC_FL_MAX; fl++)
		for (unsigned sl = 0; sl < SL_COUNT; sl++) {
			bool bit = a->sl_bitmap[fl] & (1u << sl);

			if (bit != (a->heads[fl][sl] != NULL))
				return -EFAULT;
			for (const struct kvcd_fblk *f = a->heads[fl][sl]; f; f = f->next_free) {
				unsigned x, y;

				mapping(bsize(f), &x, &y);
				if (!(f->size & F_FREE) || x != fl || y != sl)
					return -EFAULT;
				listed++;
			}
		}
	return used == a->used && listed == nfree ? 0 : -EFAULT;
}
