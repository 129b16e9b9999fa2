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
