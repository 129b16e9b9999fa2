/* unit_proto.c - rings (wrap-around, full, empty, corrupt indices), header validation,
 * layouts and ranges. No daemon. */
#include "t_util.h"

struct t_ring {
	struct kvcp_ring r;
	struct kvcp_sqe e[8];
};

static void push_n(struct t_ring *t, uint32_t *prod, uint32_t *cc, unsigned n, uint64_t first)
{
	for (unsigned i = 0; i < n; i++) {
		struct kvcp_sqe s = { .user_data = first + i };

		cr_assert_eq(kvcp_ring_push(&t->r, t->e, 8, prod, cc, &s), 0);
	}
}

Test(proto, empty_ring_pops_nothing)
{
	struct t_ring t = { 0 };
	struct kvcp_sqe s;
	uint32_t cons = 0;

	cr_assert_eq(kvcp_ring_pop(&t.r, t.e, 8, &cons, &s), 0);
	cr_assert_eq(cons, 0);
}

Test(proto, full_ring_refuses_then_accepts_after_pop)
{
	struct t_ring t = { 0 };
	struct kvcp_sqe s = { 0 };
	uint32_t prod = 0, cc = 0, cons = 0;

	push_n(&t, &prod, &cc, 8, 100);
	cr_assert_eq(kvcp_ring_push(&t.r, t.e, 8, &prod, &cc, &s), -EAGAIN);
	cr_assert_eq(kvcp_ring_pop(&t.r, t.e, 8, &cons, &s), 1);
	cr_assert_eq(s.user_data, 100);
	s.user_data = 999;
	cr_assert_eq(kvcp_ring_push(&t.r, t.e, 8, &prod, &cc, &s), 0);
	for (unsigned i = 1; i < 8; i++) {
		cr_assert_eq(kvcp_ring_pop(&t.r, t.e, 8, &cons, &s), 1);
		cr_assert_eq(s.user_data, 100 + i);
	}
	cr_assert_eq(kvcp_ring_pop(&t.r, t.e, 8, &cons, &s), 1);
	cr_assert_eq(s.user_data, 999);
}

Test(proto, indices_wrap_around_uint32)
{
	struct t_ring t = { 0 };
	struct kvcp_sqe s;
	uint32_t start = UINT32_MAX - 3, prod = start, cc = start, cons = start;

	t.r.prod = t.r.cons = start;
	for (unsigned round = 0; round < 5; round++) {
		push_n(&t, &prod, &cc, 5, round * 10);
		for (unsigned i = 0; i < 5; i++) {
			cr_assert_eq(kvcp_ring_pop(&t.r, t.e, 8, &cons, &s), 1);
			cr_assert_eq(s.user_data, round * 10 + i);
		}
	}
	cr_assert_lt(prod, start, "the producer index wrapped");
	cr_assert_eq(prod, cons);
	cr_assert_eq(kvcp_ring_pending(&t.r, 8, cons), 0);
}

Test(proto, impossible_producer_index_is_rejected)
{
	struct t_ring t = { 0 };
	struct kvcp_sqe s;
	uint32_t cons = 5;

	t.r.prod = 5 + 9; /* 9 entries in a ring of 8 */
	cr_assert_eq(kvcp_ring_pop(&t.r, t.e, 8, &cons, &s), -EBADMSG);
	cr_assert_eq(cons, 5, "nothing consumed");
	t.r.prod = 4; /* behind the consumer */
	cr_assert_eq(kvcp_ring_pop(&t.r, t.e, 8, &cons, &s), -EBADMSG);
	cr_assert_eq(kvcp_ring_pending(&t.r, 8, cons), UINT32_MAX);
}

/* Phase-tagged rings: an entry is there when its phase bit is this lap's (set on the first
 * lap of zeroed memory, clear on the second, ...), for SQEs (in flags) and CQEs alike; the
 * popped copy never carries the bit, and what the entry said besides is kept. */
Test(proto, phase_tagged_rings_over_laps)
{
	struct t_ring t = { 0 };
	struct {
		struct kvcp_ring r;
		struct kvcp_cqe e[8];
	} c = { 0 };
	uint32_t prod = 0, cc = 0, cons = 0, cprod = 0, ccc = 0, ccons = 0;

	for (unsigned lap = 0; lap < 5; lap++) {
		for (unsigned i = 0; i < 8; i++) {
			struct kvcp_sqe s = { .opcode = 7,
					      .flags = KVCP_SQE_F_SCRATCH,
					      .gpu = 3,
					      .user_data = lap * 100 + i };
			struct kvcp_cqe q = { .user_data = lap * 100 + i, .res = -5, .value = i };

			cr_assert_not(kvcp_ring_ready_phase(t.e, 8, prod, KVCP_SQE_PHASE_WORD,
							    KVCP_SQE_PHASE_BIT),
				      "lap %u, %u: not there before it is written", lap, i);
			cr_assert_eq(kvcp_ring_push_phase(&t.r, t.e, 8, &prod, &cc, &s,
							  KVCP_SQE_PHASE_WORD, KVCP_SQE_PHASE_BIT),
				     0);
			cr_assert_eq(!!(t.e[i].flags & KVCP_SQE_F_PHASE), lap % 2 == 0,
				     "lap %u: the slot's bit", lap);
			cr_assert_eq(kvcp_ring_push_phase(&c.r, c.e, 8, &cprod, &ccc, &q,
							  KVCP_CQE_PHASE_WORD, KVCP_CQE_PHASE_BIT),
				     0);
			cr_assert_eq(t.r.prod, prod, "prod is still published");
		}
		struct kvcp_sqe s = { 0 };

		cr_assert_eq(kvcp_ring_push_phase(&t.r, t.e, 8, &prod, &cc, &s, KVCP_SQE_PHASE_WORD,
						  KVCP_SQE_PHASE_BIT),
			     -EAGAIN, "full");
		for (unsigned i = 0; i < 8; i++) {
			struct kvcp_sqe got;
			struct kvcp_cqe q;

			cr_assert_eq(kvcp_ring_pop_phase(&t.r, t.e, 8, &cons, &got,
							 KVCP_SQE_PHASE_WORD, KVCP_SQE_PHASE_BIT),
				     1);
			cr_assert_eq(got.user_data, lap * 100 + i);
			cr_assert_eq(got.flags, KVCP_SQE_F_SCRATCH, "the phase bit cleared");
			cr_assert_eq(got.opcode, 7);
			cr_assert_eq(got.gpu, 3);
			cr_assert_eq(kvcp_ring_pop_phase(&c.r, c.e, 8, &ccons, &q,
							 KVCP_CQE_PHASE_WORD, KVCP_CQE_PHASE_BIT),
				     1);
			cr_assert_eq(q.user_data, lap * 100 + i);
			cr_assert_eq(q.flags, 0);
			cr_assert_eq(q.res, -5);
			cr_assert_eq(t.r.cons, cons, "cons is published");
		}
		struct kvcp_sqe got;

		cr_assert_eq(kvcp_ring_pop_phase(&t.r, t.e, 8, &cons, &got, KVCP_SQE_PHASE_WORD,
						 KVCP_SQE_PHASE_BIT),
			     0, "lap %u: the old lap's entries are not taken again", lap);
	}
}

static struct kvcp_shm_hdr *good_header(size_t *size)
{
	static char buf[64 * 1024] __attribute__((aligned(64)));
	struct kvcp_shm_hdr *h = (struct kvcp_shm_hdr *)buf;

	memset(buf, 0, sizeof(buf));
	h->major = KVCP_MAJOR;
	h->minor = KVCP_MINOR;
	h->hdr_size = sizeof(*h);
	h->sq_entries = h->cq_entries = 16;
	h->sq_off = sizeof(*h);
	h->cq_off = h->sq_off + 16 * 64;
	h->scratch_off = 4096;
	h->scratch_size = 4096;
	h->ctrl_size = sizeof(buf);
	h->magic = KVCP_MAGIC;
	*size = sizeof(buf);
	return h;
}

Test(proto, header_validation)
{
	size_t size;
	struct kvcp_shm_hdr *h = good_header(&size);

	cr_assert_eq(kvcp_hdr_validate(h, size), 0);
	h->magic = 0x1234;
	cr_assert_eq(kvcp_hdr_validate(h, size), -EBADMSG, "not a kvcd segment");
	h = good_header(&size);
	h->major = KVCP_MAJOR + 1;
	cr_assert_eq(kvcp_hdr_validate(h, size), -EPROTO, "other major version");
	h = good_header(&size);
	h->incompat = 1ull << 63;
	cr_assert_eq(kvcp_hdr_validate(h, size), -EPROTO, "unknown incompatible feature");
	h = good_header(&size);
	h->compat = 1ull << 63;
	cr_assert_eq(kvcp_hdr_validate(h, size), 0, "unknown compatible feature is fine");
	h = good_header(&size);
	h->reserved[3] = 1;
	cr_assert_eq(kvcp_hdr_validate(h, size), -EINVAL, "reserved must be zero");
	h = good_header(&size);
	h->sq_entries = 12;
	cr_assert_eq(kvcp_hdr_validate(h, size), -EINVAL, "not a power of two");
	h = good_header(&size);
	h->cq_off = h->sq_off; /* overlaps the SQ */
	cr_assert_eq(kvcp_hdr_validate(h, size), -EINVAL);
	h = good_header(&size);
	h->scratch_size = (uint32_t)size;
	cr_assert_eq(kvcp_hdr_validate(h, size), -EINVAL, "scratch past the end");
	h = good_header(&size);
	cr_assert_eq(kvcp_hdr_validate(h, 100), -EBADMSG, "segment smaller than a header");
}

Test(proto, layout_bytes)
{
	struct kvcp_layout l = {
		.dtype = KVCP_F16, .layers = 32, .kv_heads = 8, .head_dim = 128, .tokens = 256
	};

	cr_assert_eq(kvcp_layout_bytes(&l), 2ull * 2 * 32 * 8 * 128 * 256);
	l.dtype = KVCP_F32;
	cr_assert_eq(kvcp_layout_bytes(&l), 4ull * 2 * 32 * 8 * 128 * 256);
	l.dtype = 9;
	cr_assert_eq(kvcp_layout_bytes(&l), 0, "unknown dtype");
	l.dtype = KVCP_BF16;
	l.tokens = 0;
	cr_assert_eq(kvcp_layout_bytes(&l), 0, "empty block");
	l.tokens = UINT32_MAX;
	l.layers = l.kv_heads = l.head_dim = UINT16_MAX;
	cr_assert_eq(kvcp_layout_bytes(&l), 0, "overflow is rejected, not wrapped");
	l = (struct kvcp_layout){
		.dtype = 1, .layers = 1, .kv_heads = 1, .head_dim = 1, .tokens = 1, .reserved = 1
	};
	cr_assert_eq(kvcp_layout_bytes(&l), 0, "reserved must be zero");
}

Test(proto, range_checks_do_not_overflow)
{
	cr_assert(kvcp_range_ok(0, 100, 100));
	cr_assert(kvcp_range_ok(100, 0, 100));
	cr_assert_not(kvcp_range_ok(101, 0, 100));
	cr_assert_not(kvcp_range_ok(50, 51, 100));
	cr_assert_not(kvcp_range_ok(UINT64_MAX, 2, 100));
	cr_assert_not(kvcp_range_ok(2, UINT64_MAX, 100));
}

/* ---- how a client waits (struct kvcp_spin) -------------------------------------------------- */

/* Waits of @n at a steady clock, each taking what its way costs: @spin_ns when it spins,
 * @sleep_ns when it sleeps at once. Returns how many of them spun. */
static unsigned spin_run(struct kvcp_spin *s, uint64_t *now, unsigned n, uint64_t spin_ns,
			 uint64_t sleep_ns)
{
	unsigned spun = 0;

	for (unsigned i = 0; i < n; i++) {
		uint64_t budget = kvcp_spin_begin(s, *now);
		uint64_t took = s->cur == KVCP_WAIT_SPIN ? spin_ns : sleep_ns;

		cr_assert_eq(budget, s->cur == KVCP_WAIT_SPIN ? s->max_ns : 0);
		spun += s->cur == KVCP_WAIT_SPIN;
		*now += took + 1000; /* and a microsecond between waits */
		kvcp_spin_end(s, took, *now);
	}
	return spun;
}

Test(proto, waits_take_the_way_that_measures_faster)
{
	struct kvcp_spin s;
	uint64_t now = 1000000000ull;
	unsigned spun;

	/* a quiet machine: spinning pays; trials of sleeping come ever less often and end at
	 * their first counted wait, so they cost a few sleeping waits a second */
	kvcp_spin_init(&s, 200000);
	spun = spin_run(&s, &now, 2000000, 300, 50000);
	cr_assert_eq(s.mode, KVCP_WAIT_SPIN);
	cr_assert_eq(s.changes, 0);
	cr_assert_eq(s.every_ns, KVCP_SPIN_EVERY_MAX);
	cr_assert_gt(s.trials, 3);
	cr_assert_leq(2000000 - spun, 2 * s.trials, "%u sleeping waits in %u trials",
		      2000000 - spun, s.trials);

	/* the machine gets busy: spinning now costs more than sleeping; the next trial (within
	 * a second) finds it, and every wait after sleeps at once */
	uint64_t t_busy = now;

	while (!s.changes && now - t_busy < 2 * KVCP_SPIN_EVERY_MAX)
		spin_run(&s, &now, 1, 80000, 10000);
	cr_assert_eq(s.mode, KVCP_WAIT_SLEEP);
	cr_assert_eq(s.changes, 1);

	/* a lucky trial of spinning (waits of a fraction of a microsecond: spinning's cost on a
	 * busy machine is the rare lost time slice) does not bring it back while its loss is
	 * recent... */
	uint64_t t_change = now;

	unsigned trials = s.trials;

	spin_run(&s, &now, 20000, 300, 10000);
	cr_assert_eq(s.mode, KVCP_WAIT_SLEEP, "taken back %.3f s after it lost",
		     (now - t_change) / 1e9);
	cr_assert_eq(s.trials, trials, "trials of a way whose loss is recent are not run");
	/* ...and does once the loss is old: its remembered mean halves every 250 ms */
	cr_assert_lt(now - t_change, 2 * KVCP_SPIN_FORGET_NS);
	spin_run(&s, &now, 400000, 300, 10000);
	cr_assert_eq(s.mode, KVCP_WAIT_SPIN);
	cr_assert_eq(s.changes, 2);
}

Test(proto, a_wait_trial_is_judged_on_enough_waits)
{
	struct kvcp_spin s;
	uint64_t now = 5000;

	/* no trial before KVCP_SPIN_MIN_N waits of the way in use, whatever the clock says */
	kvcp_spin_init(&s, 50000);
	for (unsigned i = 0; i < KVCP_SPIN_MIN_N - 1; i++) {
		kvcp_spin_begin(&s, now);
		now += KVCP_SPIN_EVERY_MAX;
		kvcp_spin_end(&s, 100000, now);
	}
	cr_assert_eq(s.trials, 0);
	cr_assert_eq(s.cur, KVCP_WAIT_SPIN);

	/* a trial is its first wait (not counted) and KVCP_SPIN_TRIAL counted ones; it wins by a
	 * tenth or more, and a wait counts KVCP_SPIN_CAP_NS at most */
	kvcp_spin_begin(&s, now);
	kvcp_spin_end(&s, 100 * KVCP_SPIN_CAP_NS, now); /* the incumbent's mean: the cap */
	cr_assert_eq(s.sum_ns[KVCP_WAIT_SPIN],
		     (KVCP_SPIN_MIN_N - 1) * 100000ull + KVCP_SPIN_CAP_NS);
	now += KVCP_SPIN_EVERY_MAX;
	uint64_t mean = s.sum_ns[KVCP_WAIT_SPIN] / s.n[KVCP_WAIT_SPIN];

	for (unsigned i = 0; i <= KVCP_SPIN_TRIAL; i++) {
		kvcp_spin_begin(&s, now);
		cr_assert_eq(s.cur, KVCP_WAIT_SLEEP, "trial wait %u", i);
		/* the uncounted first wait is dreadful; the counted ones just under 0.9x */
		kvcp_spin_end(&s, i ? mean * 9 / 10 - 10 : KVCP_SPIN_CAP_NS, now);
	}
	/* one win is not enough: the spell it was judged against may have met a stall that had
	 * nothing to do with spinning, as this one did */
	cr_assert_eq(s.trials, 1);
	cr_assert_eq(s.mode, KVCP_WAIT_SPIN);
	cr_assert_eq(s.wins, 1);
	cr_assert_eq(s.every_ns, KVCP_SPIN_EVERY_NS, "the next trial comes soon");
	/* a fresh spell without the stall: sleeping no longer wins */
	for (unsigned i = 0; i < 1000 && (s.trials < 2 || s.trial); i++) {
		kvcp_spin_begin(&s, now);
		now += KVCP_SPIN_EVERY_NS / KVCP_SPIN_MIN_N;
		kvcp_spin_end(&s, s.cur == KVCP_WAIT_SPIN ? 100000 : mean * 9 / 10 - 10, now);
	}
	cr_assert_eq(s.trials, 2);
	cr_assert_eq(s.mode, KVCP_WAIT_SPIN);
	cr_assert_eq(s.wins, 0);
	/* two wins in a row take the other way, and remember the mean of the one dropped */
	for (unsigned round = 0; round < KVCP_SPIN_WINS; round++) {
		for (unsigned i = 0; i <= KVCP_SPIN_MIN_N; i++) { /* its first is not counted */
			kvcp_spin_begin(&s, now);
			now += KVCP_SPIN_EVERY_MAX / KVCP_SPIN_MIN_N;
			kvcp_spin_end(&s, 100000, now);
		}
		for (unsigned i = 0; i <= KVCP_SPIN_TRIAL; i++) {
			kvcp_spin_begin(&s, now);
			cr_assert_eq(s.cur, KVCP_WAIT_SLEEP, "round %u, trial wait %u", round, i);
			kvcp_spin_end(&s, 80000, now);
		}
	}
	cr_assert_eq(s.mode, KVCP_WAIT_SLEEP);
	cr_assert_eq(s.changes, 1);
	cr_assert_eq(s.lost_ns[KVCP_WAIT_SPIN], 100000);
}
