/* stress_fuzz.c - a hostile client scribbles over everything it can write (ring entries,
 * indices, flags, futex words, staging) for a bounded time, re-attaching whenever kvcd hangs
 * up on it (every other time with phase-tagged rings), while a well-behaved client keeps
 * storing and verifying. kvcd must never crash,
 * and the good client must never see a wrong byte. */
#include <pwd.h>
#include <sys/prctl.h>

#include "t_util.h"

static struct t_daemon D;

/* The socket is opened to everyone so the hostile client can be an unprivileged user. */
static void up(void)
{
	t_daemon_start_conf(&D, "[kvcd]\nsocket_mode = 0666\n");
}

static void down(void)
{
	cr_assert_eq(t_daemon_down(&D), 0, "kvcd survived and exits 0");
}

TestSuite(stress, .init = up, .fini = down, .timeout = 60);

static uint64_t rnd(uint64_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 7;
	*x ^= *x << 17;
	return *x;
}

static void hostile(const char *sock, uint64_t seed, unsigned ms)
{
	uint64_t x = seed, end;
	struct kvcp_raw r;
	struct timespec ts;
	unsigned attaches = 0;

	struct passwd *pw = getpwnam("nobody");

	prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive the test */
	if (geteuid() == 0 && (setgid(pw ? pw->pw_gid : 65534) || setuid(pw ? pw->pw_uid : 65534)))
		_exit(4);
	clock_gettime(CLOCK_MONOTONIC, &ts);
	end = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000 + ms;
	for (;;) {
		struct kvcp_attach_req req = kvcp_raw_request("default");

		/* every other attach with phase-tagged rings: scribbles with and without the bit
		 * kvcd takes an entry by */
		req.flags = attaches % 2 ? KVCP_ATTACH_F_PHASE : 0;
		if (kvcp_raw_attach(sock, &req, &r))
			_exit(2);
		attaches++;
		for (int i = 0; i < 100000; i++) {
			struct kvcp_shm_hdr *h = r.hdr;
			uint64_t *sq = (uint64_t *)((char *)h + h->sq_off);
			uint32_t n = h->sq_entries;
			char b;

			switch (rnd(&x) % 8) {
			case 0:
			case 1:
			case 2: /* random entry, then a plausible doorbell */
				for (int w = 0; w < 8; w++)
					sq[(rnd(&x) % n) * 8 + (unsigned)w] = rnd(&x);
				/* fall through */
			case 3:
				__atomic_store_n(&h->sq.prod, h->sq.prod + (uint32_t)(rnd(&x) % 3),
						 __ATOMIC_RELEASE);
				break;
			case 4: /* an entry that looks right but points anywhere */
				sq[(h->sq.prod % n) * 8] = rnd(&x) % 12;
				sq[(h->sq.prod % n) * 8 + 4] = rnd(&x) % (2 * r.staging_size);
				sq[(h->sq.prod % n) * 8 + 5] = rnd(&x) % (2 * r.staging_size);
				__atomic_store_n(&h->sq.prod, h->sq.prod + 1, __ATOMIC_RELEASE);
				break;
			case 5:
				h->cq.cons = (uint32_t)rnd(&x); /* lie about what we consumed */
				break;
			case 6:
				h->sq.flags = (uint32_t)rnd(&x);
				h->cq.flags = (uint32_t)rnd(&x);
				h->sq.futex++;
				syscall(SYS_futex, &h->sq.futex, 1, 1, NULL, NULL, 0);
				break;
			case 7:
				r.staging[rnd(&x) % r.staging_size] = (char)rnd(&x);
				if (rnd(&x) % 64 == 0) /* and sometimes the indices themselves */
					h->sq.prod = (uint32_t)rnd(&x);
				break;
			}
			if (recv(r.sock, &b, 1, MSG_DONTWAIT) == 0)
				break; /* kvcd hung up on us: attach again */
			clock_gettime(CLOCK_MONOTONIC, &ts);
			if ((uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000 > end) {
				kvcp_raw_close(&r);
				_exit(attaches > 1 ? 0 : 3);
			}
		}
		kvcp_raw_close(&r);
	}
}

Test(stress, hostile_client_cannot_hurt_kvcd_or_others)
{
	kvc_client *good = t_attach(&D, "default", 1 << 20);
	unsigned char *stg = kvc_staging(good, NULL);
	struct kvc_layout l = {
		.dtype = KVC_F16, .layers = 2, .kv_heads = 2, .head_dim = 32, .tokens = 64
	};
	size_t n = kvc_layout_bytes(&l);
	pid_t pids[2];
	int st;

	for (int p = 0; p < 2; p++)
		if ((pids[p] = fork()) == 0)
			hostile(D.sock, 0x1234567ull + (uint64_t)p, 2500);
	for (uint64_t i = 0; i < 2000; i++) {
		struct kvc_key k = { 77, i };

		t_fill(stg, n, i);
		int err = kvc_store(good, &k, &l, 0);

		cr_assert_eq(err, 0, "store %lu: %s", (unsigned long)i, kvc_strerror(err));
		err = kvc_fetch(good, &k, 65536, n, NULL);
		cr_assert_eq(err, 0, "fetch %lu: %s", (unsigned long)i, kvc_strerror(err));
		cr_assert_eq(memcmp(stg, stg + 65536, n), 0, "the good client saw a wrong byte");
		if (i % 100 == 0)
			t_sleep_ms(10);
	}
	for (int p = 0; p < 2; p++) {
		waitpid(pids[p], &st, 0);
		cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0,
			  "the hostile client was never disconnected (status %d)", st);
	}
	struct kvc_stats s;

	cr_assert_eq(kvc_stats(good, &s, sizeof(s)), 0);
	cr_assert_gt(s.bad_requests, 0);
	kvc_detach(good);
}
