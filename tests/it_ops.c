/* it_ops.c - every operation against a real kvcd: bit-exact round trips in f32/f16/bf16,
 * errors, LOOKUP, pins, async batches, several client processes at once, eviction. */
#include "t_util.h"

static struct t_daemon D;

static void up(void)
{
	t_daemon_start(&D, "64M");
}

static void down(void)
{
	int st = t_daemon_stop(&D);
	bool gone = access(D.sock, F_OK) != 0;

	t_daemon_cleanup(&D); /* first: a failed assertion must not leave the directory */
	cr_assert_eq(st, 0, "kvcd exits 0 on SIGTERM");
	cr_assert(gone, "the socket is removed on shutdown");
}

TestSuite(ops, .init = up, .fini = down, .timeout = 60);

static struct kvc_layout lay(uint8_t dtype, uint32_t tokens)
{
	return (struct kvc_layout){
		.dtype = dtype, .layers = 4, .kv_heads = 2, .head_dim = 64, .tokens = tokens
	};
}

Test(ops, nop_and_stats)
{
	kvc_client *c = t_attach(&D, NULL, 4096);
	struct kvc_stats st;

	cr_assert_eq(kvc_nop(c), 0);
	cr_assert_eq(kvc_stats(c, &st, sizeof(st)), 0);
	cr_assert_eq(st.clients, 1);
	cr_assert_eq(st.nnodes, 1);
	cr_assert_eq(st.bytes_used + st.bytes_free, st.node[0].bytes_total);
	cr_assert_geq(st.op[0].count, 1);
	kvc_detach(c);
}

Test(ops, a_raw_block_costs_its_bytes_and_the_allocator_header)
{
	kvc_client *c = t_attach(&D, "cost", 4096);
	struct kvc_layout l = {
		.dtype = KVC_F16, .layers = 1, .kv_heads = 1, .head_dim = 64, .tokens = 1
	}; /* 256 bytes */
	struct kvc_key k = { 7, 7 };
	struct kvc_stats a, b;

	cr_assert_eq(kvc_layout_bytes(&l), 256);
	cr_assert_eq(kvc_stats(c, &a, sizeof(a)), 0);
	cr_assert_eq(kvc_store(c, &k, &l, 0), 0);
	cr_assert_eq(kvc_stats(c, &b, sizeof(b)), 0);
	/* TLSF: 64-byte granules and a 64-byte header; no room kept for a SELECT summary */
	cr_assert_eq(b.bytes_used - a.bytes_used, 256 + 64, "%llu",
		     (unsigned long long)(b.bytes_used - a.bytes_used));
	cr_assert_eq(kvc_delete(c, &k), 0);
	kvc_detach(c);
}

Test(ops, round_trip_is_bit_exact_in_every_dtype)
{
	kvc_client *c = t_attach(&D, "rt", 4 << 20);
	size_t sz;
	unsigned char *stg = kvc_staging(c, &sz);
	const uint8_t dts[] = { KVC_F32, KVC_F16, KVC_BF16 };

	for (unsigned i = 0; i < 3; i++) {
		struct kvc_layout l = lay(dts[i], 16 + 16 * i), got;
		size_t n = kvc_layout_bytes(&l);
		struct kvc_key k = { 1, i };

		cr_assert_gt(n, 0);
		t_fill(stg, n, i + 1);
		cr_assert_eq(kvc_store(c, &k, &l, 0), 0);
		memset(stg + (1 << 20), 0, n);
		cr_assert_eq(kvc_fetch(c, &k, 1 << 20, sz - (1 << 20), &got), 0);
		cr_assert_eq(memcmp(stg, stg + (1 << 20), n), 0, "dtype %u differs", dts[i]);
		cr_assert_eq(got.dtype, dts[i]);
		cr_assert_eq(got.tokens, l.tokens);
		cr_assert_eq(got.layers, 4);
		cr_assert_eq(got.codec, 0);
	}
	kvc_detach(c);
}

Test(ops, errors_are_clear_and_lose_nothing)
{
	kvc_client *c = t_attach(&D, "err", 1 << 20);
	size_t sz;
	unsigned char *stg = kvc_staging(c, &sz);
	struct kvc_layout l = lay(KVC_F16, 8), bad = l, got;
	struct kvc_key k = { 2, 2 }, none = { 9, 9 };

	t_fill(stg, kvc_layout_bytes(&l), 5);
	cr_assert_eq(kvc_store(c, &k, &l, 0), 0);
	cr_assert_eq(kvc_store(c, &k, &l, 0), -EEXIST);
	cr_assert_eq(kvc_fetch(c, &none, 0, sz, &got), -ENOENT);
	cr_assert_eq(kvc_fetch(c, &k, 0, 100, &got), -ENOSPC, "capacity too small");
	cr_assert_eq(kvc_store(c, &none, &l, sz - 10), -EINVAL, "range past staging");
	bad.dtype = 7;
	cr_assert_eq(kvc_store(c, &none, &bad, 0), -EINVAL, "unknown dtype");
	cr_assert_eq(kvc_delete(c, &none), -ENOENT);
	cr_assert_eq(kvc_unpin(c, &k), -ENOENT);
	memset(stg, 0, sz);
	cr_assert_eq(kvc_fetch(c, &k, 65536, sz - 65536, &got), 0, "still there");
	t_fill(stg, kvc_layout_bytes(&l), 5);
	cr_assert_eq(memcmp(stg, stg + 65536, kvc_layout_bytes(&l)), 0);
	kvc_detach(c);
}

Test(ops, lookup_finds_the_longest_cached_prefix)
{
	kvc_client *c = t_attach(&D, "llama", 1 << 20);
	int32_t toks[8 * 16];
	struct kvc_key keys[8];
	struct kvc_layout l = lay(KVC_F16, 16);
	size_t hits;

	for (int i = 0; i < 8 * 16; i++)
		toks[i] = i % 500;
	cr_assert_eq(kvc_key_chain_all("llama", toks, 8 * 16, 16, keys, 8), 8);
	cr_assert_eq(kvc_lookup(c, keys, 8, &hits), 0);
	cr_assert_eq(hits, 0);
	for (int i = 0; i < 5; i++)
		cr_assert_eq(kvc_store(c, &keys[i], &l, 0), 0);
	cr_assert_eq(kvc_lookup(c, keys, 8, &hits), 0);
	cr_assert_eq(hits, 5);
	cr_assert_eq(kvc_delete(c, &keys[2]), 0);
	cr_assert_eq(kvc_lookup(c, keys, 8, &hits), 0);
	cr_assert_eq(hits, 2, "a hole ends the prefix");
	kvc_detach(c);

	kvc_client *other = t_attach(&D, "mistral", 4096);

	cr_assert_eq(kvc_lookup(other, keys, 8, &hits), 0);
	cr_assert_eq(hits, 0, "namespaces are isolated");
	kvc_detach(other);
}

Test(ops, async_batch_of_many_requests)
{
	kvc_client *c = t_attach(&D, "async", 4 << 20);
	struct kvc_req reqs[200];
	struct kvc_cqe cqes[200];
	uint64_t tickets[200];
	struct kvc_layout l = lay(KVC_F16, 4); /* 8 KiB */
	size_t n = kvc_layout_bytes(&l);
	unsigned char *stg = kvc_staging(c, NULL);
	int got = 0, sub = 0;

	t_fill(stg, 200 * n, 3);
	for (int i = 0; i < 200; i++)
		reqs[i] = (struct kvc_req){ .op = KVC_OP_STORE,
					    .key = { 7, (uint64_t)i },
					    .layout = l,
					    .off = i * n,
					    .len = n };
	while (sub < 200) { /* the ring holds 256; a batch of 200 goes in at once */
		int r = kvc_submit(c, reqs + sub, 200 - sub, tickets + sub);

		cr_assert_gt(r, 0, "%s", kvc_strerror(r));
		sub += r;
	}
	while (got < 200) {
		int r = kvc_wait(c, cqes + got, 1, 200 - got, 5000);

		cr_assert_gt(r, 0, "%s", kvc_strerror(r));
		got += r;
	}
	for (int i = 0; i < 200; i++) {
		cr_assert_eq(cqes[i].res, 0);
		cr_assert_eq(cqes[i].ticket, tickets[i], "in order");
	}
	struct kvc_stats st;

	cr_assert_eq(kvc_stats(c, &st, sizeof(st)), 0);
	cr_assert_eq(st.blocks, 200);
	cr_assert_eq(st.bytes_in, 200 * n);
	kvc_detach(c);
}

Test(ops, many_processes_at_once)
{
	enum {
		PROCS = 4,
		BLOCKS = 40
	};
	struct kvc_layout l = lay(KVC_BF16, 8);
	size_t n = kvc_layout_bytes(&l);

	for (int p = 0; p < PROCS; p++) {
		if (fork())
			continue;
		kvc_client *c = t_try_attach(&D, "shared", 1 << 20);
		int bad = 0;

		if (!c)
			_exit(10);
		unsigned char *stg = kvc_staging(c, NULL);

		for (int i = 0; i < BLOCKS; i++) {
			struct kvc_key k = { (uint64_t)p, (uint64_t)i };

			t_fill(stg, n, (uint64_t)(p * 1000 + i));
			if (kvc_store(c, &k, &l, 0))
				bad++;
		}
		/* read everyone's blocks, retrying until the writer got there */
		for (int q = 0; q < PROCS; q++)
			for (int i = 0; i < BLOCKS; i++) {
				struct kvc_key k = { (uint64_t)q, (uint64_t)i };
				int err, tries = 0;

				while ((err = kvc_fetch(c, &k, 65536, 65536, NULL)) == -ENOENT &&
				       tries++ < 2000)
					usleep(1000);
				t_fill(stg, n, (uint64_t)(q * 1000 + i));
				if (err || memcmp(stg, stg + 65536, n))
					bad++;
			}
		kvc_detach(c);
		_exit(bad ? 1 : 0);
	}
	for (int p = 0; p < PROCS; p++) {
		int st;

		wait(&st);
		cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "a client saw wrong data");
	}
}

Test(ops, eviction_under_pressure_spares_pinned_blocks)
{
	kvc_client *c = t_attach(&D, "evict", 2 << 20);
	struct kvc_layout l = {
		.dtype = KVC_F32, .layers = 2, .kv_heads = 4, .head_dim = 64, .tokens = 256
	}; /* 1 MiB */
	struct kvc_key pinned = { 5, 0 };
	unsigned char *stg = kvc_staging(c, NULL);
	struct kvc_stats st;

	t_fill(stg, kvc_layout_bytes(&l), 77);
	cr_assert_eq(kvc_store(c, &pinned, &l, 0), 0);
	cr_assert_eq(kvc_pin(c, &pinned, 0), 0);
	for (uint64_t i = 1; i < 200; i++) { /* 200 MiB through a 64 MiB pool */
		struct kvc_key k = { 5, i };

		cr_assert_eq(kvc_store(c, &k, &l, 0), 0, "store %lu", (unsigned long)i);
	}
	cr_assert_eq(kvc_stats(c, &st, sizeof(st)), 0);
	cr_assert_gt(st.evictions, 130);
	cr_assert_eq(st.pinned, 1);
	cr_assert_leq(st.bytes_used, 64ull << 20);
	memset(stg + (1 << 20), 0, 1 << 20);
	int err = kvc_fetch(c, &pinned, 1 << 20, 1 << 20, NULL);

	cr_assert_eq(err, 0, "the pinned block stayed: %s", kvc_strerror(err));
	cr_assert_eq(memcmp(stg, stg + (1 << 20), 1 << 20), 0);
	struct kvc_key last = { 5, 199 };

	cr_assert_eq(kvc_fetch(c, &last, 1 << 20, 1 << 20, NULL), 0, "the newest is there");
	/* the background reclaim may still be taking blocks since the STATS above: EVICT takes
	 * what is left, and of this namespace only the pinned block stays */
	int ev = kvc_evict(c, 0);

	cr_assert(ev > 0 && ev <= (int)st.blocks - 1, "admin evicts (%d of %llu)", ev,
		  (unsigned long long)st.blocks);
	cr_assert_eq(kvc_stats(c, &st, sizeof(st)), 0);
	for (unsigned i = 0; i < st.nns && i < 32; i++)
		if (!strcmp(st.ns[i].name, "evict"))
			cr_assert_eq(st.ns[i].blocks, 1, "all but the pinned");
	cr_assert_eq(kvc_fetch(c, &pinned, 1 << 20, 1 << 20, NULL), 0, "which is still there");
	cr_assert_eq(kvc_unpin(c, &pinned), 0);
	kvc_detach(c);
}

Test(ops, pool_full_of_pins_says_enospc)
{
	kvc_client *c = t_attach(&D, "full", 16 << 20);
	struct kvc_layout l = {
		.dtype = KVC_F32, .layers = 8, .kv_heads = 8, .head_dim = 64, .tokens = 512
	}; /* 16 MiB */
	struct kvc_key k;
	int stored = 0, err = 0;

	for (uint64_t i = 0; i < 8 && !err; i++) {
		k = (struct kvc_key){ 6, i };
		err = kvc_store(c, &k, &l, 0);
		if (!err) {
			cr_assert_eq(kvc_pin(c, &k, 60000), 0);
			stored++;
		}
	}
	cr_assert_eq(err, -ENOSPC, "%s", kvc_strerror(err));
	cr_assert_eq(stored, 3, "64 MiB holds three 16 MiB blocks plus headers");
	for (uint64_t i = 0; i < 3; i++) {
		k = (struct kvc_key){ 6, i };
		cr_assert_eq(kvc_fetch(c, &k, 0, 16 << 20, NULL), 0);
	}
	kvc_detach(c); /* detaching drops the pins */
	c = t_attach(&D, "full", 16 << 20);
	k = (struct kvc_key){ 6, 100 };
	cr_assert_eq(kvc_store(c, &k, &l, 0), 0, "pins died with their client");
	kvc_detach(c);
}

Test(ops, kvcctl_speaks_json)
{
	static char buf[32768];

	cr_assert_eq(t_kvcctl(&D, "stats --json", buf, sizeof(buf)), 0, "%s", buf);
	for (const char *k = "blocks\0bytes_used\0bytes_free\0hits\0misses\0evictions\0clients\0"
			     "namespaces\0";
	     *k; k += strlen(k) + 1) {
		char want[64];

		snprintf(want, sizeof(want), "\"%s\":", k);
		cr_assert_not_null(strstr(buf, want), "missing %s in %s", want, buf);
	}
}

/* More requests in flight than the completion ring holds: the worker stops draining the SQ
 * while the CQ is full and goes to sleep; the client that then drains the CQ and waits must
 * wake it, or the rest stalls until the worker's 1 s safety timeout. */
Test(ops, backlog_beyond_the_completion_ring_does_not_stall)
{
	kvc_client *c = t_attach(&D, NULL, 4096);
	struct kvc_req nop[256] = { { .op = KVC_OP_NOP } };
	struct kvc_cqe cq[512];
	int sub = 0, got = 0;

	for (int round = 0; round < 3; round++) {
		while (sub < 512) { /* SQ and CQ both full: 256 + 256 in flight */
			int r = kvc_submit(c, nop, (unsigned)(512 - sub > 256 ? 256 : 512 - sub),
					   NULL);

			if (r == -EAGAIN) {
				t_sleep_ms(1);
				continue;
			}
			cr_assert_gt(r, 0, "%s", kvc_strerror(r));
			sub += r;
		}
		t_sleep_ms(20); /* the worker fills the CQ, cannot go on, and falls asleep */
		got = 0;
		while (got < 512) {
			/* 500 ms is half the worker's fallback timeout: only a wake-up gets here */
			int r = kvc_wait(c, cq, 1, 512, 500);

			cr_assert_gt(r, 0, "round %d: %d of 512 completions, then %s", round, got,
				     kvc_strerror(r));
			got += r;
		}
		sub = 0;
	}
	kvc_detach(c);
}

/* A prefix of 32 blocks that engines have read, then 96 more blocks of its chain through a
 * 64 MiB pool, stored with their parents named: eviction takes the unread blocks (and their
 * orphans) and the read prefix from its tail, so a LOOKUP of the chain still finds most of it
 * (plain CLOCK takes the oldest blocks first: the prefix, leaving nothing a LOOKUP reaches).
 * Bad parent trailers are refused and store nothing. */
Test(ops, chained_stores_keep_a_prefix_under_pressure)
{
	kvc_client *c = t_attach(&D, "chain", 2 << 20);
	struct kvc_layout l = {
		.dtype = KVC_F32, .layers = 2, .kv_heads = 4, .head_dim = 64, .tokens = 256
	}; /* 1 MiB */
	struct kvc_key keys[128];
	size_t hits = 0, size;
	unsigned char *stg = kvc_staging(c, &size);

	for (uint64_t i = 0; i < 128; i++) {
		keys[i] = (struct kvc_key){ 9, i };
		t_fill(stg, kvc_layout_bytes(&l), i);
		cr_assert_eq(kvc_store_chained(c, &keys[i], i ? &keys[i - 1] : NULL, &l, 0), 0,
			     "store %lu", (unsigned long)i);
		if (i == 31) /* the prefix is read */
			for (unsigned j = 0; j < 32; j++)
				cr_assert_eq(kvc_fetch(c, &keys[j], 0, size, NULL), 0);
	}
	cr_assert_eq(kvc_lookup(c, keys, 128, &hits), 0);
	cr_assert_geq(hits, 16, "a prefix of %zu blocks stayed", hits);
	memset(stg, 0, kvc_layout_bytes(&l));
	cr_assert_eq(kvc_fetch(c, &keys[hits - 1], 0, size, NULL), 0);
	unsigned char *want = malloc(kvc_layout_bytes(&l));

	t_fill(want, kvc_layout_bytes(&l), hits - 1);
	cr_assert_eq(memcmp(stg, want, kvc_layout_bytes(&l)), 0, "its last block intact");
	free(want);

	/* kvc_req_parent: a STORE once, with room for the key after it */
	struct kvc_req q = {
		.op = KVC_OP_STORE, .key = { 9, 2000 }, .layout = l, .len = kvc_layout_bytes(&l)
	};

	cr_assert_eq(kvc_req_parent(c, &q, &keys[0]), 0);
	cr_assert(q.flags & KVC_REQ_PARENT);
	cr_assert_eq(q.len, kvc_layout_bytes(&l) + sizeof(struct kvc_key), "8-aligned already");
	cr_assert_eq(kvc_req_parent(c, &q, &keys[0]), -EINVAL, "named twice");
	q = (struct kvc_req){ .op = KVC_OP_FETCH, .len = 16 };
	cr_assert_eq(kvc_req_parent(c, &q, &keys[0]), -EINVAL, "not a STORE");
	q = (struct kvc_req){ .op = KVC_OP_STORE, .layout = l, .off = size - 8, .len = 8 };
	cr_assert_eq(kvc_req_parent(c, &q, &keys[0]), -EINVAL, "no room in staging");

	/* the trailer: too short for a key, or a parent not 8-aligned */
	struct kvc_key k = { 9, 1000 };
	struct kvc_req r = { .op = KVC_OP_STORE, .flags = KVC_REQ_PARENT, .key = k, .layout = l };
	struct kvc_cqe cq;

	r.len = kvc_layout_bytes(&l) + 8;
	cr_assert_eq(kvc_submit(c, &r, 1, NULL), 1);
	cr_assert_eq(kvc_wait(c, &cq, 1, 1, 5000), 1);
	cr_assert_eq(cq.res, -EINVAL);
	r.off = 4;
	r.len = kvc_layout_bytes(&l) + 16;
	cr_assert_eq(kvc_submit(c, &r, 1, NULL), 1);
	cr_assert_eq(kvc_wait(c, &cq, 1, 1, 5000), 1);
	cr_assert_eq(cq.res, -EINVAL);
	cr_assert_eq(kvc_fetch(c, &k, 0, size, NULL), -ENOENT, "nothing stored");
	kvc_detach(c);
}

/* A burst of engine processes attaching at once, more than kvcd lets one uid have handshakes
 * in progress: the ones turned away (-EBUSY) try again and all get in. */
Test(ops, a_burst_of_attaches_beyond_the_handshake_limit_all_get_in)
{
	enum {
		PROCS = 32
	};
	int go[2];

	cr_assert_eq(pipe(go), 0);
	for (int p = 0; p < PROCS; p++) {
		char c;

		if (fork())
			continue;
		close(go[1]);
		if (read(go[0], &c, 1) < 0) /* all start together */
			_exit(9);
		kvc_client *cl = t_try_attach(&D, "burst", 1 << 20);

		if (!cl)
			_exit(10);
		int err = kvc_nop(cl);

		kvc_detach(cl);
		_exit(err ? 11 : 0);
	}
	close(go[0]);
	close(go[1]); /* EOF: every child's read returns now */
	for (int p = 0; p < PROCS; p++) {
		int st;

		wait(&st);
		cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "a process did not get in (%d)",
			  WIFEXITED(st) ? WEXITSTATUS(st) : -1);
	}
}
