/* unit_gpool.c - a GPU pool's account on the host (daemon/gpu/pool.c): where copies go, which
 * go first when room is short, and that none outlives the host bytes it copies. Nothing here
 * needs a device: the account hands out offsets, and the device checks (gpu_tier) move bytes
 * to them. */
#include "t_util.h"
#include "kvcd.h"

#define MIB (1ull << 20)

static struct kvcd_gpool gp;

static void fini(void)
{
	kvcd_gpool_fini(&gp);
}

TestSuite(gpool, .fini = fini);

/* A published copy of record @rec, @len bytes. */
static struct kvcd_gpool_ent *copy(uint32_t rec, uint64_t len)
{
	struct kvcd_gpool_ent *e = kvcd_gpool_fill(&gp, rec, len);

	if (e)
		kvcd_gpool_filled(&gp, e, true);
	return e;
}

static bool has(uint32_t rec)
{
	struct kvcd_gpool_ent *e = kvcd_gpool_get(&gp, rec);

	if (e)
		kvcd_gpool_put(&gp, e);
	return e != NULL;
}

Test(gpool, a_copy_is_found_once_filled_and_not_after_a_failed_fill)
{
	struct kvcd_gpool_ent *e, *f;

	cr_assert_eq(kvcd_gpool_init(&gp, 64 * MIB, 95, 90), 0);
	e = kvcd_gpool_fill(&gp, 7, 3 * MIB + 5);
	cr_assert_not_null(e);
	cr_assert_eq(e->off % 64, 0, "device accesses want aligned copies");
	cr_assert_leq(e->off + e->len, gp.size);
	cr_assert_null(kvcd_gpool_get(&gp, 7), "not while it is being filled");
	cr_assert_null(kvcd_gpool_fill(&gp, 7, MIB), "nor filled twice");
	kvcd_gpool_filled(&gp, e, true);
	f = kvcd_gpool_get(&gp, 7);
	cr_assert_eq(f, e);
	cr_assert_eq(f->len, 3 * MIB + 5);
	kvcd_gpool_put(&gp, f);

	e = kvcd_gpool_fill(&gp, 8, MIB);
	cr_assert_not_null(e);
	kvcd_gpool_filled(&gp, e, false);
	cr_assert(!has(8), "a copy whose bytes did not arrive is not served");
	cr_assert_eq(gp.blocks, 1);
	cr_assert_eq(gp.promotions, 1);
	cr_assert_eq(gp.hits, 1);
	cr_assert_eq(gp.misses, 2);
	cr_assert_eq(kvcd_alloc_check(&gp.alloc), 0);
}

Test(gpool, crossing_the_high_watermark_drops_the_least_recently_used_to_the_low_one)
{
	uint64_t high, low;

	cr_assert_eq(kvcd_gpool_init(&gp, 64 * MIB, 80, 50), 0);
	high = gp.size / 100 * 80;
	low = gp.size / 100 * 50;
	for (uint32_t r = 0; r < 12; r++)
		cr_assert_not_null(copy(r, 4 * MIB));
	cr_assert_eq(gp.demotions, 0, "48 MiB of 64: under the high watermark");
	cr_assert(has(0) && has(1), "0 and 1 become the most recently used");
	for (uint32_t r = 12; gp.demotions == 0; r++)
		cr_assert_not_null(copy(r, 4 * MIB));
	cr_assert_leq(gp.alloc.used, low + 4 * MIB + KVCD_ALLOC_OVERHEAD,
		      "down to the low watermark, then the new copy");
	cr_assert_leq(gp.alloc.used, high);
	cr_assert(has(0) && has(1), "recently read copies stay");
	cr_assert(!has(2) && !has(3), "the least recently used went first");
	cr_assert_eq(gp.blocks, gp.count);
	cr_assert_eq(kvcd_alloc_check(&gp.alloc), 0);

	uint64_t blocks = gp.blocks, demoted = gp.demotions;

	cr_assert_null(kvcd_gpool_fill(&gp, 99, high), "a copy above the high watermark alone");
	cr_assert_eq(gp.blocks, blocks, "pushes nothing out");
	cr_assert_eq(gp.demotions, demoted);

	/* a reload lowers the watermarks: the next copy makes room down to the new low one */
	kvcd_gpool_watermarks(&gp, 40, 20);
	cr_assert_not_null(copy(100, MIB));
	cr_assert_leq(gp.alloc.used, gp.size / 100 * 20 + MIB + KVCD_ALLOC_OVERHEAD);
}

Test(gpool, copies_being_read_or_filled_are_never_dropped)
{
	struct kvcd_gpool_ent *held[16], *filling;
	unsigned n = 0;

	cr_assert_eq(kvcd_gpool_init(&gp, 32 * MIB, 95, 90), 0);
	for (uint32_t r = 0; r < 7; r++) {
		cr_assert_not_null(copy(r, 4 * MIB));
		held[n++] = kvcd_gpool_get(&gp, r);
	}
	filling = kvcd_gpool_fill(&gp, 100, 2 * MIB);
	cr_assert_not_null(filling);
	cr_assert_null(kvcd_gpool_fill(&gp, 101, 4 * MIB), "no room: all are in use");
	cr_assert_eq(gp.no_room, 1);
	cr_assert_eq(gp.demotions, 0);
	kvcd_gpool_put(&gp, held[3]);
	cr_assert_not_null(kvcd_gpool_fill(&gp, 101, 4 * MIB), "the one let go makes room");
	cr_assert_eq(gp.demotions, 1);
	cr_assert(!has(3));
	for (unsigned i = 0; i < n; i++)
		if (i != 3)
			cr_assert_eq(held[i]->rec, i, "the others are intact");
	kvcd_gpool_filled(&gp, filling, true);
	cr_assert(has(100));
}

Test(gpool, a_forgotten_copy_is_not_served_and_frees_its_room_with_its_last_reader)
{
	struct kvcd_gpool_ent *e, *r;

	cr_assert_eq(kvcd_gpool_init(&gp, 16 * MIB, 95, 90), 0);
	e = copy(5, 2 * MIB);
	r = kvcd_gpool_get(&gp, 5);
	cr_assert_eq(r, e);
	kvcd_gpool_forget(&gp, 5);
	cr_assert(!has(5), "the host bytes it copied are gone");
	cr_assert_gt(gp.alloc.used, 0, "a reader still copies from it");
	cr_assert_not_null(copy(5, MIB), "the record's new bytes may be copied meanwhile");
	kvcd_gpool_put(&gp, r);
	cr_assert_eq(gp.blocks, 1);
	kvcd_gpool_forget(&gp, 5);
	cr_assert_eq(gp.alloc.used, 0);

	/* forgotten while being filled: never published, freed by its filler */
	e = kvcd_gpool_fill(&gp, 9, MIB);
	kvcd_gpool_forget(&gp, 9);
	kvcd_gpool_filled(&gp, e, true);
	cr_assert(!has(9));
	cr_assert_eq(gp.alloc.used, 0);
	cr_assert_eq(gp.promotions, 2);
}

/* Random fills, reads, forgets and lets-go against a model of what must hold: a hit is a
 * record whose copy was published and not forgotten since, no two copies in use overlap, and
 * everything comes back once all is let go. */
Test(gpool, the_account_agrees_with_a_model)
{
	enum {
		RECS = 64,
		HELD = 24
	};
	struct kvcd_gpool_ent *held[HELD] = { 0 };
	bool live[RECS] = { 0 };
	uint64_t seed = 42;

	cr_assert_eq(kvcd_gpool_init(&gp, 48 * MIB, 90, 60), 0);
	for (int step = 0; step < 20000; step++) {
		uint32_t rec, op;
		struct kvcd_gpool_ent *e;

		seed = seed * 6364136223846793005ull + 1442695040888963407ull;
		rec = (uint32_t)(seed >> 33) % RECS;
		op = (uint32_t)(seed >> 20) % 8;
		if (op < 3) {
			e = kvcd_gpool_fill(&gp, rec,
					    ((seed >> 40) % 4 + 1) * MIB - (seed >> 50) % 999);
			if (e) { /* a copy it had was dropped for room */
				bool ok = (seed >> 13) % 5;

				kvcd_gpool_filled(&gp, e, ok);
				live[rec] = ok;
			}
		} else if (op < 6) {
			unsigned slot = (unsigned)(seed >> 45) % HELD;

			if (held[slot]) {
				kvcd_gpool_put(&gp, held[slot]);
				held[slot] = NULL;
			}
			e = kvcd_gpool_get(&gp, rec);
			cr_assert(!e || live[rec], "record %u served but not live", rec);
			if (!e)
				live[rec] = false; /* dropped for room */
			held[slot] = e;
		} else {
			kvcd_gpool_forget(&gp, rec);
			live[rec] = false;
		}
		if (step % 1000 == 0) {
			cr_assert_eq(kvcd_alloc_check(&gp.alloc), 0);
			for (int i = 0; i < HELD; i++)
				for (int k = i + 1; k < HELD; k++)
					if (held[i] && held[k] && held[i] != held[k])
						cr_assert(held[i]->off + held[i]->len <=
									  held[k]->off ||
								  held[k]->off + held[k]->len <=
									  held[i]->off,
							  "copies in use overlap");
		}
	}
	cr_assert_gt(gp.demotions, 0, "the walk filled the pool");
	cr_assert_gt(gp.hits, 0);
	for (int i = 0; i < HELD; i++)
		if (held[i])
			kvcd_gpool_put(&gp, held[i]);
	for (uint32_t r = 0; r < RECS; r++)
		kvcd_gpool_forget(&gp, r);
	cr_assert_eq(gp.alloc.used, 0);
	cr_assert_eq(gp.blocks, 0);
	cr_assert_eq(kvcd_alloc_check(&gp.alloc), 0);
}

/* ---- the store tells the pool when a block's bytes go ------------------------------------- */

static void forget(struct kvcd_store *s, uint32_t rec, void *arg)
{
	(void)s;
	kvcd_gpool_forget(arg, rec);
}

static struct kvcp_key K(uint64_t i) {
	return (struct kvcp_key){ .hi = i * 7919, .lo = i };
}

Test(gpool, no_copy_outlives_its_block_deleted_evicted_or_rewritten)
{
	static const struct kvcp_layout L = {
		.dtype = KVCP_F16, .layers = 1, .kv_heads = 1, .head_dim = 64, .tokens = 512
	};
	static const uint8_t ONLY0[] = { 0 };
	uint64_t raw = kvcp_layout_bytes(&L);
	struct kvcd_pool pool = { .size = 1u << 20 };
	struct kvcd_store st;
	struct kvcd_block *b[4], *r;
	struct kvcd_rewrite rw;
	uint32_t rec[4];

	cr_assert_eq(kvcd_gpool_init(&gp, 16 * MIB, 95, 90), 0);
	cr_assert_eq(posix_memalign(&pool.base, 4096, pool.size), 0);
	cr_assert_eq(kvcd_alloc_init(&pool.alloc, pool.base, pool.size), 0);
	cr_assert_eq(kvcd_store_init(&st, &pool, 1, 100, 90), 0);
	st.forget = forget;
	st.forget_arg = &gp;
	for (uint64_t i = 0; i < 4; i++) {
		struct kvcp_key k = K(i);

		cr_assert_eq(kvcd_store_reserve(&st, 0, &k, &L, raw, ONLY0, 1, &b[i]), 0);
		memset(b[i]->data, (int)i, raw);
		kvcd_store_commit(&st, b[i], true, false, 0);
		rec[i] = kvcd_store_rec(b[i]);
		cr_assert_not_null(copy(rec[i], raw));
	}

	/* deleted while a FETCH reads it: the copy stays until the block's bytes go */
	struct kvcp_key k0 = K(0), k1 = K(1), k2 = K(2);

	cr_assert_eq(kvcd_store_get(&st, 0, &k0, &r), 0);
	cr_assert_eq(kvcd_store_delete(&st, 0, &k0), 0);
	cr_assert(has(rec[0]), "its reader still holds the bytes it copies");
	kvcd_store_put(&st, r, false);
	cr_assert(!has(rec[0]), "gone with the block's bytes");

	/* rewritten (RECOMPRESS): the copy is of the old bytes */
	kvcd_store_ref_many(&st, 0, &k1, 1, &r);
	cr_assert_eq(kvcd_store_rewrite_begin(&st, r, 4096, 1, ONLY0, 1, &rw), 0);
	memset(rw.data, 0x5a, 4096);
	cr_assert_eq(kvcd_store_rewrite_end(&st, r, &rw, true, false, 0, false), 0);
	kvcd_store_put(&st, r, false);
	cr_assert(!has(rec[1]));

	/* a failed rewrite keeps the bytes, and the copy */
	kvcd_store_ref_many(&st, 0, &k2, 1, &r);
	cr_assert_eq(kvcd_store_rewrite_begin(&st, r, 4096, 1, ONLY0, 1, &rw), 0);
	cr_assert_eq(kvcd_store_rewrite_end(&st, r, &rw, false, false, 0, false), -ECANCELED);
	kvcd_store_put(&st, r, false);
	cr_assert(has(rec[2]));

	/* evicted */
	cr_assert_gt(kvcd_store_reclaim(&st, UINT64_MAX), 0);
	cr_assert_eq(kvcd_store_lookup(&st, 0, &k2, 1), 0);
	cr_assert(!has(rec[2]) && !has(rec[3]));
	cr_assert_eq(gp.alloc.used, 0);
	kvcd_store_fini(&st);
	free(pool.base);
}
