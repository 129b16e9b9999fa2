/* fuzz_request.c - request validation: ring entries and the staging bytes they name, as a
 * hostile client writes them, executed against a real store over a heap pool. Each input is
 * a count byte, that many entries (up to 8, 64 bytes each), then the staging contents. Nothing a client writes
 * may crash kvcd, leak, or break the store's invariants. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kvcd.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n);

#define STAGING (1u << 20)
#define SCRATCH (64u << 10)
#define POOLSZ	(8u << 20)

static struct kvcd d;
static struct kvcd_session s;

static void setup(void)
{
	static char staging[STAGING] __attribute__((aligned(4096)));
	static char scratch[SCRATCH] __attribute__((aligned(4096)));
	void *mem;

	kvcd_config_defaults(&d.cfg);
	d.cfg.max_lookup_keys = 1u << 14;
	mem = aligned_alloc(4096, POOLSZ);
	if (!mem)
		abort();
	d.pools[0].base = mem;
	d.pools[0].size = POOLSZ;
	d.pools[0].fd = -1;
	kvcd_pool_format(&d.pools[0]);
	d.npools = 1;
	if (kvcd_store_init(&d.store, d.pools, 1, 95, 90))
		abort();
	pthread_mutex_init(&d.sessions_lock, NULL);
	s.id = s.pins.id = 1;
	s.admin = true;
	s.staging = staging;
	s.staging_size = STAGING;
	s.scratch = scratch;
	s.scratch_size = SCRATCH;
	s.norder = 1;
	s.ns_id = (uint16_t)kvcd_store_ns_get(&d.store, "fuzz", NULL, 0, KVCD_REMOTE_OFF);
	strcpy(s.ns, "fuzz");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n)
{
	struct kvcp_sqe sqe;
	struct kvcp_cqe cqe;
	size_t nsqe, rest;

	if (!d.npools)
		setup();
	if (n < 1 + sizeof(sqe))
		return 0;
	nsqe = 1 + data[0] % 8;
	if (nsqe > (n - 1) / sizeof(sqe))
		nsqe = (n - 1) / sizeof(sqe);
	rest = n - 1 - nsqe * sizeof(sqe);
	memset(s.staging, 0, 4096);
	memcpy(s.staging, data + 1 + nsqe * sizeof(sqe), rest < STAGING ? rest : STAGING);
	memcpy(s.scratch, s.staging, SCRATCH);
	for (size_t i = 0; i < nsqe; i++) {
		memcpy(&sqe, data + 1 + i * sizeof(sqe), sizeof(sqe));
		if (sqe.opcode == KVCP_OP_EVICT || sqe.opcode == KVCP_OP_STATS)
			sqe.arg %= 64; /* whole-pool sweeps are correct but slow the fuzzer */
		/* CALIBRATE's checks run for anyone; its learning (a thread, LAPACK, a basis that
		 * outlives the input) only for an admin: here it stops at -EPERM */
		s.admin = sqe.opcode != KVCP_OP_CALIBRATE;
		if (!kvcd_execute(&d, &s, &sqe, &cqe))
			while (!kvcd_resume(&d, &s, &cqe))
				;
		if (cqe.user_data != sqe.user_data)
			abort();
	}
	/* the next input starts from an empty store */
	kvcd_store_release_pins(&d.store, 0, &s.pins);
	kvcd_store_reclaim(&d.store, UINT64_MAX);
	s.npol = 0;
	if (d.store.count || d.pools[0].alloc.used || kvcd_alloc_check(&d.pools[0].alloc))
		abort(); /* a block left behind, or a broken allocator */
	return 0;
}
