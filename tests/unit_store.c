/* unit_store.c - index, placement across pools, CLOCK eviction, pins and leases, references.
 * Pools are plain heap memory here; pool.c's pinning is covered by the integration tests. */
#include "t_util.h"
#include "kvcd.h"

#define POOL (1u << 20)

static struct kvcd_pool pools[2];
static struct kvcd_store st;
static const struct kvcp_layout L = {
	.dtype = KVCP_F16, .layers = 1, .kv_heads = 1, .head_dim = 64, .tokens = 512
}; /* 128 KiB */

static void setup(void)
{
	for (int i = 0; i < 2; i++) {
		memset(&pools[i], 0, sizeof(pools[i]));
		pools[i].node = i;
		pools[i].size = POOL;
		cr_assert_eq(posix_memalign(&pools[i].base, 4096, POOL), 0);
		cr_assert_eq(kvcd_alloc_init(&pools[i].alloc, pools[i].base, POOL), 0);
	}
	cr_assert_eq(kvcd_store_init(&st, pools, 2, 95, 50), 0);
}

static void teardown(void)
{
	kvcd_store_fini(&st);
	free(pools[0].base);
	free(pools[1].base);
}

TestSuite(store, .init = setup, .fini = teardown);

static struct kvcp_key K(uint64_t i) {
	return (struct kvcp_key){ .hi = i * 7919, .lo = i };
}

/* Store block @i (contents = i) on the pools in @order. */
static int
put(uint64_t i, const uint8_t *order, unsigned n)
{
	struct kvcd_block *b;
	struct kvcp_key k = K(i);
	int err = kvcd_store_reserve(&st, 0, &k, &L, kvcp_layout_bytes(&L), order, n, &b);

	if (err)
		return err;
	memset(b->data, (int)i, kvcp_layout_bytes(&L));
	kvcd_store_commit(&st, b, true, false, 0);
	return 0;
}

static const uint8_t NEAR0[] = { 0, 1 }, ONLY0[] = { 0 };

/* Store block @i on pool 0 as the child of block @parent in its chain. */
static int put_child(uint64_t i, uint64_t parent)
{
	struct kvcd_block *b;
	struct kvcp_key k = K(i), pk = K(parent);
	int err = kvcd_store_reserve(&st, 0, &k, &L, kvcp_layout_bytes(&L), ONLY0, 1, &b);

	if (err)
		return err;
	kvcd_store_link(&st, 0, b, &pk);
	memset(b->data, (int)i, kvcp_layout_bytes(&L));
	kvcd_store_commit(&st, b, true, false, 0);
	return 0;
}

static bool cached(uint64_t i)
{
	struct kvcp_key k = K(i);

	return kvcd_store_lookup(&st, 0, &k, 1) == 1;
}

Test(store, put_get_delete)
{
	struct kvcd_block *b;
	struct kvcp_key k = K(1);

	cr_assert_eq(put(1, NEAR0, 2), 0);
	cr_assert_eq(put(1, NEAR0, 2), -EEXIST);
	cr_assert_eq(kvcd_store_get(&st, 0, &k, &b), 0);
	cr_assert_eq(((unsigned char *)b->data)[100], 1);
	kvcd_store_put(&st, b, false);
	cr_assert_eq(kvcd_store_get(&st, 1, &k, &b), -ENOENT, "other namespace");
	cr_assert_eq(kvcd_store_delete(&st, 0, &k), 0);
	cr_assert_eq(kvcd_store_get(&st, 0, &k, &b), -ENOENT);
	cr_assert_eq(pools[0].alloc.used, 0, "memory returned");
	cr_assert_eq(st.hits, 1);
	cr_assert_eq(st.misses, 2);
}

Test(store, placement_prefers_the_first_pool_then_falls_back)
{
	unsigned n0 = 0, n1 = 0;

	for (uint64_t i = 0; i < 14; i++)
		cr_assert_eq(put(i, NEAR0, 2), 0);
	n0 = (unsigned)pools[0].blocks;
	n1 = (unsigned)pools[1].blocks;
	cr_assert_eq(n0, 7, "pool 0 holds what fits: %u", n0);
	cr_assert_eq(n1, 7, "the rest went to pool 1 without evicting: %u", n1);
	cr_assert_eq(st.evictions, 0);
}

Test(store, lookup_counts_the_cached_prefix)
{
	struct kvcp_key keys[5] = { K(1), K(2), K(3), K(4), K(5) };

	cr_assert_eq(put(1, NEAR0, 2), 0);
	cr_assert_eq(put(2, NEAR0, 2), 0);
	cr_assert_eq(put(4, NEAR0, 2), 0);
	cr_assert_eq(kvcd_store_lookup(&st, 0, keys, 5), 2);
	cr_assert_eq(kvcd_store_lookup(&st, 0, keys + 3, 1), 1);
	cr_assert_eq(kvcd_store_lookup(&st, 7, keys, 5), 0);
}

Test(store, clock_evicts_unreferenced_first)
{
	struct kvcd_block *b;
	struct kvcp_key k1 = K(1);

	for (uint64_t i = 0; i < 7; i++)
		cr_assert_eq(put(i, ONLY0, 1), 0);
	cr_assert_eq(kvcd_store_get(&st, 0, &k1, &b), 0); /* referenced: second chance */
	kvcd_store_put(&st, b, false);
	cr_assert_eq(put(100, ONLY0, 1), 0);
	cr_assert_eq(st.evictions, 1);
	cr_assert_eq(kvcd_store_get(&st, 0, &k1, &b), 0, "the referenced block survived");
	kvcd_store_put(&st, b, false);
	struct kvcp_key k0 = K(0);

	cr_assert_eq(kvcd_store_get(&st, 0, &k0, &b), -ENOENT, "the oldest unreferenced went");
}

/* Found by stress_fuzz under CI: every older block had been read once, the newest not yet, and
 * the watermark sweep cleared all the bits and evicted the newest before its owner fetched it. */
Test(store, a_new_block_is_not_the_first_victim)
{
	struct kvcd_block *b;

	for (uint64_t i = 0; i < 6; i++) {
		struct kvcp_key k = K(i);

		cr_assert_eq(put(i, ONLY0, 1), 0);
		cr_assert_eq(kvcd_store_get(&st, 0, &k, &b), 0);
		kvcd_store_put(&st, b, false);
	}
	cr_assert_eq(put(6, ONLY0, 1), 0);
	cr_assert_eq(kvcd_store_reclaim(&st, 200u << 10), 1, "room for one more block");
	struct kvcp_key k6 = K(6), k0 = K(0);

	cr_assert_eq(kvcd_store_lookup(&st, 0, &k6, 1), 1, "the newest block survived");
	cr_assert_eq(kvcd_store_lookup(&st, 0, &k0, 1), 0, "the oldest went");
}

Test(store, pinned_and_in_flight_blocks_are_never_evicted)
{
	struct kvcd_pin_owner o = { .id = 42 };
	struct kvcd_block *held;
	struct kvcp_key k;

	for (uint64_t i = 0; i < 7; i++) {
		cr_assert_eq(put(i, ONLY0, 1), 0);
		k = K(i);
		if (i < 6)
			cr_assert_eq(kvcd_store_pin(&st, 0, &k, &o, UINT64_MAX, 100), 0);
	}
	k = K(6);
	cr_assert_eq(kvcd_store_get(&st, 0, &k, &held), 0); /* a FETCH in flight */
	cr_assert_eq(put(100, ONLY0, 1), -ENOSPC, "nothing evictable");
	cr_assert_eq(kvcd_store_delete(&st, 0, &(struct kvcp_key){ K(0).hi, K(0).lo }), -EBUSY);
	for (uint64_t i = 0; i < 7; i++) { /* nothing lost, contents intact */
		struct kvcd_block *b;

		k = K(i);
		cr_assert_eq(kvcd_store_get(&st, 0, &k, &b), 0);
		cr_assert_eq(((unsigned char *)b->data)[5], i);
		kvcd_store_put(&st, b, false);
	}
	kvcd_store_put(&st, held, false);
	cr_assert_eq(put(100, ONLY0, 1), 0, "the unpinned block was evicted");
	cr_assert_eq(kvcd_store_release_pins(&st, 0, &o), 6, "owner's pins released");
	cr_assert_eq(st.npins, 0);
	cr_assert_eq(o.count, 0);
	cr_assert_eq(pools[0].pinned, 0);
}

Test(store, leases_expire)
{
	struct kvcd_pin_owner o7 = { .id = 7 }, o8 = { .id = 8 };
	struct kvcp_key k = K(1);

	cr_assert_eq(put(1, ONLY0, 1), 0);
	cr_assert_eq(kvcd_store_pin(&st, 0, &k, &o7, 1000, 100), 0);
	cr_assert_eq(kvcd_store_pin(&st, 0, &k, &o7, 5000, 100), 0);
	cr_assert_eq(kvcd_store_release_pins(&st, 999, NULL), 0);
	cr_assert_eq(kvcd_store_release_pins(&st, 1000, NULL), 1);
	cr_assert_eq(kvcd_store_delete(&st, 0, &k), -EBUSY, "one pin left");
	cr_assert_eq(kvcd_store_unpin(&st, 0, &k, &o8), -ENOENT, "not this owner's pin");
	cr_assert_eq(kvcd_store_unpin(&st, 0, &k, &o7), 0);
	cr_assert_eq(o7.count, 0);
	cr_assert_eq(kvcd_store_delete(&st, 0, &k), 0);
}

Test(store, deleted_while_fetching_is_freed_by_the_last_reference)
{
	struct kvcd_block *b;
	struct kvcp_key k = K(3);

	cr_assert_eq(put(3, ONLY0, 1), 0);
	cr_assert_eq(kvcd_store_get(&st, 0, &k, &b), 0);
	cr_assert_eq(kvcd_store_delete(&st, 0, &k), 0);
	cr_assert_neq(pools[0].alloc.used, 0, "still held by the reader");
	cr_assert_eq(((unsigned char *)b->data)[7], 3, "the reader's bytes are intact");
	kvcd_store_put(&st, b, false);
	cr_assert_eq(pools[0].alloc.used, 0);
}

Test(store, corrupt_block_is_dropped)
{
	struct kvcd_block *b;
	struct kvcp_key k = K(3);

	cr_assert_eq(put(3, ONLY0, 1), 0);
	cr_assert_eq(kvcd_store_get(&st, 0, &k, &b), 0);
	kvcd_store_put(&st, b, true);
	cr_assert_eq(st.checksum_failures, 1);
	cr_assert_eq(kvcd_store_get(&st, 0, &k, &b), -ENOENT);
	cr_assert_eq(pools[0].alloc.used, 0);
}

Test(store, writing_blocks_are_invisible)
{
	struct kvcd_block *w, *b;
	struct kvcp_key k = K(9);

	cr_assert_eq(kvcd_store_reserve(&st, 0, &k, &L, 1000, ONLY0, 1, &w), 0);
	cr_assert_eq(kvcd_store_get(&st, 0, &k, &b), -ENOENT);
	cr_assert_eq(kvcd_store_lookup(&st, 0, &k, 1), 0);
	cr_assert_eq(kvcd_store_reserve(&st, 0, &k, &L, 1000, ONLY0, 1, &b), -EEXIST);
	kvcd_store_commit(&st, w, false, false, 0); /* a failed STORE leaves nothing behind */
	cr_assert_eq(pools[0].alloc.used, 0);
	cr_assert_eq(st.count, 0);
}

Test(store, watermarks_and_index_growth)
{
	struct kvcp_layout small = {
		.dtype = KVCP_F32, .layers = 1, .kv_heads = 1, .head_dim = 1, .tokens = 8
	};

	for (uint64_t i = 0; i < 5000; i++) { /* 64 B + 64 B header each: 640 KB per pool */
		struct kvcd_block *b;
		struct kvcp_key k = K(i);

		cr_assert_eq(kvcd_store_reserve(&st, 0, &k, &small, 64, NEAR0, 2, &b), 0);
		kvcd_store_commit(&st, b, true, false, 0);
	}
	cr_assert_gt(st.nslots, 4096, "the index grew");
	for (uint64_t i = 0; i < 5000; i += 250) {
		struct kvcp_key k = K(i);

		cr_assert_eq(kvcd_store_lookup(&st, 0, &k, 1), 1);
	}
	cr_assert_eq(kvcd_store_reclaim(&st, 0), 0, "below the high watermark");
	uint64_t n = kvcd_store_reclaim(&st, POOL); /* free everything */
	cr_assert_eq(n, 5000);
	cr_assert_eq(pools[0].alloc.used + pools[1].alloc.used, 0);
}

/* Store a 64-byte block under (@ns, @k) on either pool. */
static int put_small(uint16_t ns, struct kvcp_key k)
{
	static const struct kvcp_layout tiny = {
		.dtype = KVCP_F32, .layers = 1, .kv_heads = 1, .head_dim = 1, .tokens = 8
	};
	struct kvcd_block *b;
	int err = kvcd_store_reserve(&st, ns, &k, &tiny, 64, NEAR0, 2, &b);

	if (!err)
		kvcd_store_commit(&st, b, true, false, 0);
	return err;
}

/* Whether (@ns, @k) is found, checking that its record and its slot name each other. */
static bool present(uint16_t ns, struct kvcp_key k)
{
	struct kvcd_block *b;

	if (kvcd_store_get(&st, ns, &k, &b))
		return false;
	cr_assert_lt(b->slot, st.nslots);
	cr_assert(st.slots[b->slot].key.lo == k.lo && st.slots[b->slot].key.hi == k.hi &&
			  st.slots[b->slot].ns == ns,
		  "the record points at its own slot");
	kvcd_store_put(&st, b, false);
	return true;
}

Test(store, the_index_agrees_with_a_model_through_inserts_deletes_and_evictions)
{
	enum {
		KEYS = 3000,
		NS = 3,
		OPS = 40000
	};
	static bool in[NS][KEYS];
	uint64_t rng = 99, count = 0;

	memset(in, 0, sizeof(in));
	for (int op = 0; op < OPS; op++) {
		rng = rng * 6364136223846793005ull + 1442695040888963407ull;
		unsigned key = (unsigned)(rng >> 33) % KEYS, ns = (unsigned)(rng >> 20) % NS;
		/* keys that share their low bits and namespaces: long runs and moves on delete */
		struct kvcp_key k = { .lo = key & 15, .hi = key };

		if ((rng >> 60) < 9) {
			int err = put_small((uint16_t)ns, k);

			cr_assert_eq(err, in[ns][key] ? -EEXIST : 0, "op %d", op);
			count += !in[ns][key];
			in[ns][key] = true;
		} else {
			cr_assert_eq(kvcd_store_delete(&st, (uint16_t)ns, &k),
				     in[ns][key] ? 0 : -ENOENT, "op %d", op);
			count -= in[ns][key];
			in[ns][key] = false;
		}
		if (op % 10000 == 9999) { /* evict about a third, then find out which went */
			uint64_t gone = kvcd_store_reclaim(&st, POOL + POOL / 3), seen = 0;

			for (unsigned n = 0; n < NS; n++)
				for (unsigned i = 0; i < KEYS; i++)
					if (in[n][i] &&
					    !present((uint16_t)n,
						     (struct kvcp_key){ .lo = i & 15, .hi = i })) {
						in[n][i] = false;
						seen++;
					}
			cr_assert_eq(seen, gone, "exactly the evicted blocks left the index");
			count -= gone;
		}
		cr_assert_eq(st.count, count);
	}
	cr_assert_gt(st.nslots, 1024, "the index grew");
	for (unsigned n = 0; n < NS; n++)
		for (unsigned i = 0; i < KEYS; i++)
			cr_assert_eq(
				present((uint16_t)n, (struct kvcp_key){ .lo = i & 15, .hi = i }),
				in[n][i], "ns %u key %u", n, i);
	for (unsigned n = 0; n < NS; n++) { /* LIST pages through each live block once */
		static struct kvcp_list_ent ent[KEYS];
		unsigned got = 0, want = 0, page;

		while ((page = kvcd_store_list(&st, (uint16_t)n, got, ent + got, 100)) > 0)
			got += page;
		for (unsigned i = 0; i < KEYS; i++)
			want += in[n][i];
		cr_assert_eq(got, want);
		for (unsigned i = 0; i < got; i++) {
			cr_assert(in[n][ent[i].key.hi] && ent[i].key.lo == (ent[i].key.hi & 15));
			in[n][ent[i].key.hi] = false; /* a second listing would fail here */
		}
	}
}

Test(store, a_long_prefix_lookup_stops_at_the_first_miss_across_batches)
{
	struct kvcp_key keys[40];

	for (uint64_t i = 0; i < 40; i++) {
		keys[i] = K(i);
		if (i != 37)
			cr_assert_eq(put_small(0, keys[i]), 0);
	}
	cr_assert_eq(kvcd_store_lookup(&st, 0, keys, 40), 37);
	cr_assert_eq(kvcd_store_lookup(&st, 0, keys, 32), 32, "two whole batches");
	cr_assert_eq(kvcd_store_delete(&st, 0, &keys[16]), 0);
	cr_assert_eq(kvcd_store_lookup(&st, 0, keys, 40), 16, "a miss first in a batch");
	cr_assert_eq(kvcd_store_lookup(&st, 0, keys + 17, 23), 20);
	cr_assert_eq(kvcd_store_lookup(&st, 1, keys, 40), 0);
}

Test(store, select_references_find_blocks_across_batches)
{
	struct kvcp_key keys[35];
	struct kvcd_block *b[35];

	for (uint64_t i = 0; i < 35; i++) {
		keys[i] = K(i);
		if (i % 3)
			cr_assert_eq(put_small(0, keys[i]), 0);
	}
	keys[34] = keys[1]; /* a key twice: two references */
	kvcd_store_ref_many(&st, 0, keys, 35, b);
	for (unsigned i = 0; i < 34; i++)
		cr_assert_eq(b[i] != NULL, i % 3 != 0, "key %u", i);
	cr_assert_eq(b[34], b[1]);
	cr_assert_eq(b[1]->refs, 2);
	cr_assert_eq(kvcd_store_reclaim(&st, 2 * POOL), 1, "only the one not referenced");
	kvcd_store_put_many(&st, b, 35);
	cr_assert_eq(kvcd_store_reclaim(&st, 2 * POOL), 22);
	cr_assert_eq(st.count, 0);
}

static void *fill(void *arg)
{
	uint64_t first = (uint64_t)(uintptr_t)arg;

	for (uint64_t i = first; i < 60000; i += 2) /* 128 B with its header: 7.7 of 8 MiB */
		if (put_small(0, K(i)))
			return (void *)1;
	return NULL;
}

Test(store, two_writers_grow_the_index_together)
{
	pthread_t t[2];
	void *r[2];

	kvcd_store_fini(&st); /* pools large enough that nothing is evicted */
	for (int i = 0; i < 2; i++) {
		free(pools[i].base);
		pools[i].size = 4 * POOL;
		cr_assert_eq(posix_memalign(&pools[i].base, 4096, 4 * POOL), 0);
		cr_assert_eq(kvcd_alloc_init(&pools[i].alloc, pools[i].base, 4 * POOL), 0);
	}
	cr_assert_eq(kvcd_store_init(&st, pools, 2, 95, 50), 0);
	for (uintptr_t i = 0; i < 2; i++)
		cr_assert_eq(pthread_create(&t[i], NULL, fill, (void *)i), 0);
	for (int i = 0; i < 2; i++) {
		pthread_join(t[i], &r[i]);
		cr_assert_null(r[i]);
	}
	cr_assert_eq(st.count, 60000);
	cr_assert_eq(st.evictions, 0);
	cr_assert_geq(st.nslots, 65536, "grown six times");
	for (uint64_t i = 0; i < 60000; i++)
		cr_assert(present(0, K(i)), "block %lu", (unsigned long)i);
}

/* A client holds at most max pins: the next one is -EDQUOT, and pins are found again after
 * others have come and gone (the pin array moves pins to stay dense). */
Test(store, pins_per_client_are_bounded_and_found_again)
{
	struct kvcd_pin_owner a = { .id = 1 }, b = { .id = 2 };
	struct kvcp_key k;

	for (uint64_t i = 0; i < 6; i++)
		cr_assert_eq(put(i, ONLY0, 1), 0);
	for (int round = 0; round < 50; round++)
		for (uint64_t i = 0; i < 6; i++) {
			k = K(i);
			cr_assert_eq(kvcd_store_pin(&st, 0, &k, &b, UINT64_MAX, 1000), 0);
		}
	for (uint64_t i = 0; i < 4; i++) {
		k = K(i);
		cr_assert_eq(kvcd_store_pin(&st, 0, &k, &a, UINT64_MAX, 4), 0);
	}
	k = K(5);
	cr_assert_eq(kvcd_store_pin(&st, 0, &k, &a, UINT64_MAX, 4), -EDQUOT, "over the limit");
	cr_assert_eq(a.count, 4);
	/* unpin b's pins in an order unlike the pinning one: each is found, none twice */
	for (int round = 0; round < 50; round++)
		for (uint64_t i = 6; i-- > 0;) {
			k = K(i);
			cr_assert_eq(kvcd_store_unpin(&st, 0, &k, &b), 0);
		}
	k = K(0);
	cr_assert_eq(kvcd_store_unpin(&st, 0, &k, &b), -ENOENT);
	cr_assert_eq(b.count, 0);
	cr_assert_eq(st.npins, 4);
	k = K(4);
	cr_assert_eq(kvcd_store_delete(&st, 0, &k), 0, "unpinned block deletable");
	k = K(3);
	cr_assert_eq(kvcd_store_delete(&st, 0, &k), -EBUSY, "a's pin holds it");
	cr_assert_eq(kvcd_store_release_pins(&st, 0, &a), 4);
	cr_assert_eq(st.npins, 0);
	cr_assert_eq(kvcd_store_delete(&st, 0, &k), 0);
}

/* A STORE that cannot be placed even by evicting everything evictable fails without
 * evicting anything (a pinned block splits the pool into runs too short for it). */
Test(store, failed_store_evicts_nothing)
{
	struct kvcd_pin_owner o = { .id = 9 };
	struct kvcp_layout big = L;
	struct kvcd_block *b;
	struct kvcp_key k = K(3), kb = K(100);
	uint64_t ev;

	for (uint64_t i = 0; i < 7; i++)
		cr_assert_eq(put(i, ONLY0, 1), 0);
	cr_assert_eq(kvcd_store_pin(&st, 0, &k, &o, UINT64_MAX, 10), 0);
	big.tokens = 4 * L.tokens; /* 512 KiB: more than either side of block 3 */
	ev = st.evictions;
	cr_assert_eq(kvcd_store_reserve(&st, 0, &kb, &big, kvcp_layout_bytes(&big), ONLY0, 1, &b),
		     -ENOSPC);
	cr_assert_eq(st.evictions, ev, "nothing evicted");
	for (uint64_t i = 0; i < 7; i++) {
		k = K(i);
		cr_assert_eq(kvcd_store_lookup(&st, 0, &k, 1), 1, "block %d kept", (int)i);
	}
	big.tokens = 3 * L.tokens; /* fits once blocks 0-2 (or 4-6) go */
	cr_assert_eq(kvcd_store_reserve(&st, 0, &kb, &big, kvcp_layout_bytes(&big), ONLY0, 1, &b),
		     0);
	kvcd_store_commit(&st, b, true, false, 0);
	cr_assert_eq(st.evictions, ev + 3);
	cr_assert_eq(kvcd_alloc_check(&pools[0].alloc), 0);
	kvcd_store_release_pins(&st, 0, &o);
}

/* Store block @i of 128 KiB into namespace @ns. */
static int put_ns(uint16_t ns, uint64_t i)
{
	struct kvcd_block *b;
	struct kvcp_key k = K(i);
	int err = kvcd_store_reserve(&st, ns, &k, &L, kvcp_layout_bytes(&L), ONLY0, 1, &b);

	if (!err)
		kvcd_store_commit(&st, b, true, false, 0);
	return err;
}

/* A namespace over its quota evicts its own blocks; others cannot evict it while it is
 * within its quota, and evict their own instead. */
Test(store, quotas)
{
	uint64_t q = 2 * (kvcp_layout_bytes(&L) + KVCD_ALLOC_OVERHEAD);
	int a = kvcd_store_ns_get(&st, "a", NULL, q, KVCD_REMOTE_OFF),
	    b = kvcd_store_ns_get(&st, "b", NULL, 0, KVCD_REMOTE_OFF);
	struct kvcp_key k;

	cr_assert_geq(a, 0);
	cr_assert_geq(b, 0);
	cr_assert_eq(put_ns(a, 1), 0);
	cr_assert_eq(put_ns(a, 2), 0);
	cr_assert_eq(put_ns(a, 3), 0, "over quota: evicts its own");
	cr_assert_eq(st.ns[a].blocks, 2);
	cr_assert_leq(st.ns[a].charged, q);
	k = K(1);
	cr_assert_eq(kvcd_store_lookup(&st, a, &k, 1), 0, "its oldest went");
	for (uint64_t i = 10; i < 30; i++) /* b fills the pool many times over */
		cr_assert_eq(put_ns(b, i), 0);
	for (uint64_t i = 2; i <= 3; i++) {
		k = K(i);
		cr_assert_eq(kvcd_store_lookup(&st, a, &k, 1), 1, "a within quota keeps %d",
			     (int)i);
	}
	cr_assert_eq(kvcd_store_reclaim(&st, UINT64_MAX) > 0, 1, "an admin's EVICT takes all");
	k = K(2);
	cr_assert_eq(kvcd_store_lookup(&st, a, &k, 1), 0);
	struct kvcp_layout huge = L;
	struct kvcd_block *blk;

	huge.tokens = 3 * L.tokens;
	k = K(50);
	cr_assert_eq(kvcd_store_reserve(&st, (uint16_t)a, &k, &huge, kvcp_layout_bytes(&huge),
					ONLY0, 1, &blk),
		     -EDQUOT, "larger than its whole quota");
	kvcd_store_ns_put(&st, (uint16_t)a);
	kvcd_store_ns_put(&st, (uint16_t)b);
}

/* Namespaces nobody is attached to and that hold nothing are forgotten, so attaching to
 * ever new names never fills the table for good. */
Test(store, empty_namespaces_are_reclaimed)
{
	char name[32];
	int keep;

	keep = kvcd_store_ns_get(&st, "keep", NULL, 0, KVCD_REMOTE_OFF);
	cr_assert_eq(put_ns((uint16_t)keep, 1), 0);
	kvcd_store_ns_put(&st, (uint16_t)keep); /* detached, but it holds a block */
	for (int i = 0; i < 10 * KVCD_STORE_NS; i++) {
		snprintf(name, sizeof(name), "tenant-%d", i);
		int id = kvcd_store_ns_get(&st, name, NULL, 0, KVCD_REMOTE_OFF);

		cr_assert_geq(id, 0, "namespace %d: %d", i, id);
		kvcd_store_ns_put(&st, (uint16_t)id);
	}
	cr_assert_eq(kvcd_store_ns_get(&st, "keep", NULL, 0, KVCD_REMOTE_OFF), keep,
		     "kept: not empty");
	for (int i = 0; i < KVCD_STORE_NS; i++) { /* a full table is an error, not a crash */
		snprintf(name, sizeof(name), "held-%d", i);
		int id = kvcd_store_ns_get(&st, name, NULL, 0, KVCD_REMOTE_OFF);

		cr_assert(id >= 0 || (id == -ENFILE && i == KVCD_STORE_NS - 1), "%d: %d", i, id);
	}
}

/* A restart adopts committed blocks whose bytes match their checksum, and nothing else: not
 * a STORE that never finished, not a block deleted while a reader held it, not one whose
 * bytes changed. */
/* A pool with a superblock, as kvcd makes them, of 2 MiB at *@mem, and a store over it. */
static void warm_pool(struct kvcd_pool *p, struct kvcd_store *s, void **mem)
{
	cr_assert_eq(posix_memalign(mem, 4096, 2 * POOL), 0);
	memset(p, 0, sizeof(*p));
	p->base = *mem;
	p->size = 2 * POOL;
	kvcd_pool_format(p);
	cr_assert_eq(kvcd_store_init(s, p, 1, 95, 50), 0);
}

/* The process dies: its records go, the pool's bytes stay; a new store adopts them with
 * namespace ids unchanged. */
static void crash_and_adopt(struct kvcd_pool *p, struct kvcd_store *s, struct kvcd_adopt_stats *as)
{
	int map[256];

	free(s->slabs[0]);
	free(s->slabs);
	free(s->chains[0]);
	free(s->chains);
	free(s->slots);
	free(s->pins);
	free(s->pin_heads);
	free(s->picked);
	cr_assert_eq(kvcd_store_init(s, p, 1, 95, 50), 0);
	for (int i = 0; i < 256; i++)
		map[i] = i;
	cr_assert_eq(kvcd_store_adopt(s, 0, map, true, as), 0);
}

Test(store, adoption_keeps_only_committed_intact_blocks)
{
	static struct kvcd_pool p2[1];
	struct kvcd_store s2;
	struct kvcd_adopt_stats as;
	struct kvcd_block *b, *held;
	struct kvcp_key k;
	void *mem;

	warm_pool(&p2[0], &s2, &mem);
	for (uint64_t i = 0; i < 4; i++) { /* 0, 1, 2 committed and checksummed; 3 unfinished */
		k = K(i);
		cr_assert_eq(
			kvcd_store_reserve(&s2, 0, &k, &L, kvcp_layout_bytes(&L), ONLY0, 1, &b), 0);
		memset(b->data, (int)i + 1, kvcp_layout_bytes(&L));
		if (i < 3)
			kvcd_store_commit(&s2, b, true, true,
					  kvcd_copy_sum(KVCD_ISA_SCALAR, NULL, b->data, b->stored));
	}
	k = K(2);
	cr_assert_eq(kvcd_store_get(&s2, 0, &k, &held), 0);
	cr_assert_eq(kvcd_store_delete(&s2, 0, &k), 0); /* dead, but still held */
	k = K(1);
	cr_assert_eq(kvcd_store_get(&s2, 0, &k, &b), 0);
	((unsigned char *)b->data)[1000] ^= 1; /* bytes changed behind the checksum */
	kvcd_store_put(&s2, b, false);
	crash_and_adopt(&p2[0], &s2, &as); /* the process dies here */
	cr_assert_eq(as.seen, 4);
	cr_assert_eq(as.kept, 1, "block 0 only");
	cr_assert_eq(as.uncommitted, 2, "the unfinished and the deleted one");
	cr_assert_eq(as.bad_sum, 1);
	k = K(0);
	cr_assert_eq(kvcd_store_get(&s2, 0, &k, &b), 0);
	cr_assert_eq(((unsigned char *)b->data)[7], 1);
	kvcd_store_put(&s2, b, false);
	cr_assert_eq(kvcd_alloc_check(&p2[0].alloc), 0, "the freed blocks coalesced");
	cr_assert_eq(p2[0].alloc.used, kvcd_alloc_charge(b->data));
	cr_assert_eq(s2.ns[0].blocks, 1);
	kvcd_store_fini(&s2);
	free(mem);
}

/* A chain that has been read: plain CLOCK would take its oldest block, its head, and leave
 * six blocks no lookup of the chain reaches; taken from its tail, the chain keeps a usable
 * prefix of six. */
Test(store, read_chains_are_evicted_from_their_tails)
{
	struct kvcp_key chain[7];
	struct kvcd_block *b;

	cr_assert_eq(put(0, ONLY0, 1), 0);
	for (uint64_t i = 1; i < 7; i++)
		cr_assert_eq(put_child(i, i - 1), 0);
	for (uint64_t i = 0; i < 7; i++) { /* an engine hit the whole prefix once */
		chain[i] = K(i);
		cr_assert_eq(kvcd_store_get(&st, 0, &chain[i], &b), 0);
		kvcd_store_put(&st, b, false);
	}
	cr_assert_eq(put(100, ONLY0, 1), 0);
	cr_assert_eq(st.evictions, 1);
	cr_assert_eq(kvcd_store_lookup(&st, 0, chain, 7), 6, "the prefix of six stays");
	cr_assert(!cached(6), "the tail went");
	cr_assert_eq(put(101, ONLY0, 1), 0);
	cr_assert_eq(kvcd_store_lookup(&st, 0, chain, 7), 5, "then the new tail");
}

/* A chain nobody has read goes head first, as plain CLOCK takes it, and the rest of it right
 * after as orphans: sparing it would only keep a dead chain longer. */
Test(store, unread_chains_go_head_first_and_whole)
{
	cr_assert_eq(put(0, ONLY0, 1), 0);
	for (uint64_t i = 1; i < 4; i++)
		cr_assert_eq(put_child(i, i - 1), 0);
	for (uint64_t i = 4; i < 7; i++)
		cr_assert_eq(put(i, ONLY0, 1), 0);
	for (uint64_t i = 100; i < 104; i++)
		cr_assert_eq(put(i, ONLY0, 1), 0);
	cr_assert_eq(st.evictions, 4);
	for (uint64_t i = 0; i < 4; i++)
		cr_assert(!cached(i), "chain block %llu went", (unsigned long long)i);
	for (uint64_t i = 4; i < 7; i++)
		cr_assert(cached(i), "block %llu stayed", (unsigned long long)i);
}

/* A block whose parent is gone is reached by no lookup of its chain: it goes before older
 * blocks, referenced or not, and its own child follows it. */
Test(store, a_block_whose_prefix_is_gone_goes_first)
{
	for (uint64_t i = 3; i < 7; i++) /* older: plain CLOCK would take them first */
		cr_assert_eq(put(i, ONLY0, 1), 0);
	cr_assert_eq(put(0, ONLY0, 1), 0);
	cr_assert_eq(put_child(1, 0), 0);
	cr_assert_eq(put_child(2, 1), 0);
	struct kvcp_key k0 = K(0);

	cr_assert_eq(kvcd_store_delete(&st, 0, &k0), 0);
	for (uint64_t i = 100; i < 103; i++) /* the first takes the deleted block's room */
		cr_assert_eq(put(i, ONLY0, 1), 0);
	cr_assert_eq(st.evictions, 2);
	cr_assert(!cached(1) && !cached(2), "the orphans went");
	for (uint64_t i = 3; i < 7; i++)
		cr_assert(cached(i), "block %llu stayed", (unsigned long long)i);
}

/* A block's position in its sequence, from its chain: 0 for a block stored without a parent,
 * the tokens of every block before it otherwise; unknown once a block of the chain is gone. */
Test(store, a_chain_gives_each_block_its_position)
{
	struct kvcp_key k[4] = { K(0), K(1), K(2), K(3) };
	struct kvcd_block *b;
	uint64_t pos;

	cr_assert_eq(put(0, ONLY0, 1), 0);
	cr_assert_eq(put_child(1, 0), 0);
	cr_assert_eq(put_child(2, 1), 0);
	cr_assert_eq(put_child(3, 9), 0); /* its parent was never cached */
	for (uint64_t i = 0; i < 3; i++) {
		cr_assert_eq(kvcd_store_get(&st, 0, &k[i], &b), 0);
		cr_assert_eq(kvcd_store_chain_pos(&st, b, &pos), 0);
		cr_assert_eq(pos, i * L.tokens, "block %llu", (unsigned long long)i);
		kvcd_store_put(&st, b, false);
	}
	cr_assert_eq(kvcd_store_get(&st, 0, &k[3], &b), 0);
	cr_assert_eq(kvcd_store_chain_pos(&st, b, &pos), -ENOENT);
	kvcd_store_put(&st, b, false);
	cr_assert_eq(kvcd_store_delete(&st, 0, &k[1]), 0);
	cr_assert_eq(kvcd_store_get(&st, 0, &k[2], &b), 0);
	cr_assert_eq(kvcd_store_chain_pos(&st, b, &pos), -ENOENT, "its parent is gone");
	kvcd_store_put(&st, b, false);
}

/* Reads beyond the first earn second chances: after its REF bit, a block read three times
 * outlives blocks read once, which plain CLOCK would not have let it. */
Test(store, reads_beyond_the_first_earn_second_chances)
{
	struct kvcd_block *b;
	struct kvcp_key k0 = K(0);

	for (uint64_t i = 0; i < 7; i++)
		cr_assert_eq(put(i, ONLY0, 1), 0);
	for (int r = 0; r < 3; r++) {
		cr_assert_eq(kvcd_store_get(&st, 0, &k0, &b), 0);
		kvcd_store_put(&st, b, false);
	}
	for (uint64_t i = 100; i < 103; i++)
		cr_assert_eq(put(i, ONLY0, 1), 0);
	cr_assert_eq(st.evictions, 3);
	cr_assert(cached(0), "the block read three times stayed");
	cr_assert(!cached(1) && !cached(2) && !cached(3), "the blocks stored with it went");
}

/* RECOMPRESS's rewrite: only the one reader that asks may swap a block's bytes; the record,
 * its index slot and the accounting follow; a failed or refused rewrite changes nothing; a
 * restart finds the new bytes, at the length their checksum covers, and not the old ones. */
Test(store, a_rewritten_block_keeps_its_place_and_a_restart_finds_its_new_bytes)
{
	static struct kvcd_pool p2[1];
	struct kvcd_pin_owner o = { .id = 3 };
	struct kvcd_store s2;
	struct kvcd_adopt_stats as;
	struct kvcd_rewrite rw;
	struct kvcd_block *b, *held;
	struct kvcp_key k0 = K(0), k1 = K(1);
	uint64_t raw = kvcp_layout_bytes(&L), used;
	void *mem;

	warm_pool(&p2[0], &s2, &mem);
	for (uint64_t i = 0; i < 2; i++) {
		struct kvcp_key k = K(i);

		cr_assert_eq(kvcd_store_reserve(&s2, 0, &k, &L, raw, ONLY0, 1, &b), 0);
		memset(b->data, (int)i + 1, raw);
		kvcd_store_commit(&s2, b, true, true,
				  kvcd_copy_sum(KVCD_ISA_SCALAR, NULL, b->data, raw));
	}
	kvcd_store_ref_many(&s2, 0, &k0, 1, &b);
	cr_assert_not_null(b);
	cr_assert_eq(kvcd_store_get(&s2, 0, &k0, &held), 0);
	cr_assert_eq(kvcd_store_rewrite_begin(&s2, b, 4096, 1, ONLY0, 1, &rw), -EBUSY, "read");
	kvcd_store_put(&s2, held, false);
	cr_assert_eq(kvcd_store_pin(&s2, 0, &k0, &o, UINT64_MAX, 8), 0);
	cr_assert_eq(kvcd_store_rewrite_begin(&s2, b, 4096, 1, ONLY0, 1, &rw), -EBUSY, "pinned");
	cr_assert_eq(kvcd_store_unpin(&s2, 0, &k0, &o), 0);

	used = p2[0].alloc.used;
	cr_assert_eq(kvcd_store_rewrite_begin(&s2, b, 4096, 1, ONLY0, 1, &rw), 0);
	cr_assert_eq(kvcd_store_rewrite_end(&s2, b, &rw, false, false, 0, false), -ECANCELED);
	cr_assert_eq(p2[0].alloc.used, used, "a failed rewrite gives its room back");
	cr_assert_eq(((unsigned char *)b->data)[5], 1, "and keeps the old bytes");

	cr_assert_eq(kvcd_store_rewrite_begin(&s2, b, 4096, 1, ONLY0, 1, &rw), 0);
	memset(rw.data, 0x5a, 4096);
	rw.stored = 4000; /* a summary after the checksummed bytes, as a policy may add */
	cr_assert_eq(kvcd_store_rewrite_end(&s2, b, &rw, true, true,
					    kvcd_copy_sum(KVCD_ISA_SCALAR, NULL, rw.data, 4000),
					    false),
		     0);
	cr_assert_eq(b->stored, 4000);
	cr_assert_eq(b->layout.codec, 1);
	cr_assert_eq(s2.ns[0].bytes_stored, raw + 4000);
	cr_assert_eq(s2.ns[0].bytes_in, 2 * raw);
	cr_assert_eq(s2.ns[0].charged, p2[0].alloc.used, "charges follow the bytes");
	cr_assert_eq(kvcd_alloc_check(&p2[0].alloc), 0);
	kvcd_store_put(&s2, b, false);
	cr_assert_eq(kvcd_store_lookup(&s2, 0, (struct kvcp_key[]){ k0, k1 }, 2), 2);

	/* a STORE with a SELECT summary after its bytes: reserved longer than it is stored */
	struct kvcp_key k2 = K(2);

	cr_assert_eq(kvcd_store_reserve(&s2, 0, &k2, &L, raw + 512, ONLY0, 1, &b), 0);
	memset(b->data, 3, raw + 512);
	b->stored = raw;
	b->summary = 1;
	kvcd_store_commit(&s2, b, true, true, kvcd_copy_sum(KVCD_ISA_SCALAR, NULL, b->data, raw));

	/* the process dies: a restart finds block 0's new bytes, block 1 as it was, and block 2
	 * with its summary */
	crash_and_adopt(&p2[0], &s2, &as);
	cr_assert_eq(as.kept, 3);
	cr_assert_eq(as.bad_sum + as.bad_tag + as.uncommitted, 0);
	cr_assert_eq(kvcd_store_get(&s2, 0, &k2, &b), 0);
	cr_assert_eq(b->stored, raw, "the length the checksum covers");
	cr_assert(b->summary);
	kvcd_store_put(&s2, b, false);
	cr_assert_eq(kvcd_store_get(&s2, 0, &k0, &b), 0);
	cr_assert_eq(b->stored, 4000);
	cr_assert_eq(b->layout.codec, 1);
	cr_assert_eq(((unsigned char *)b->data)[7], 0x5a);
	kvcd_store_put(&s2, b, false);
	kvcd_store_fini(&s2);
	free(mem);
}
