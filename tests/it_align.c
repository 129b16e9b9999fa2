/* it_align.c - a client chooses its staging offsets, odd ones included: kvcd's codec reads
 * and writes 16-bit and 32-bit elements there, so it must never do so through a misaligned
 * pointer (undefined behaviour in C, even where x86 tolerates it). make test runs this suite
 * against a kvcd built with -fsanitize=alignment (KVCD_UBSAN_BIN), which aborts on the first
 * such access. */
#include "t_util.h"

static struct t_daemon D;

static void setup(void)
{
	const char *ubsan = getenv("KVCD_UBSAN_BIN");

	if (ubsan && *ubsan)
		setenv("KVCD_BIN", ubsan, 1);
	t_daemon_start(&D, "64M");
}

static void teardown(void)
{
	cr_assert_eq(t_daemon_down(&D), 0, "kvcd exited cleanly (no sanitizer abort)");
}

TestSuite(align, .init = setup, .fini = teardown, .timeout = 60);

/* STORE from and FETCH into odd offsets under every kind of policy, each dtype: the bytes
 * come back as a raw STORE at an aligned offset would give them. */
Test(align, odd_staging_offsets_under_every_codec)
{
	static const char *const pols[] = { "none",
					    "int8",
					    "int4:group=32",
					    "fp8",
					    "kivi:kbits=4,vbits=4",
					    "int8:sparse=0.05",
					    "none:rank=4",
					    "int8:select=keynorm,keep=50%",
					    "none:minicache=1",
					    "int4:rotate=hadamard" };
	static const uint8_t dtypes[] = { KVC_F16, KVC_BF16, KVC_F32 };
	uint64_t id = 0;

	for (unsigned p = 0; p < sizeof(pols) / sizeof(pols[0]); p++) {
		kvc_client *c = t_attach(&D, NULL, 4u << 20); /* a session has 8 policy slots */
		size_t size;
		unsigned char *stg = kvc_staging(c, &size);
		char why[128] = "";
		int slot = kvc_policy(c, pols[p], 0, why, sizeof(why));

		cr_assert_gt(slot, 0, "%s: %s", pols[p], why);
		for (unsigned t = 0; t < sizeof(dtypes); t++) {
			struct kvc_layout l = { .dtype = dtypes[t],
						.codec = (uint8_t)slot,
						.layers = 2,
						.kv_heads = 2,
						.head_dim = 64,
						.tokens = 32 },
					  got;
			/* a FETCH of selected tokens is in the sparse format, at most 2n here */
			size_t n = kvc_layout_bytes(&l), in = 1, al = 3 * n + 64, out = 6 * n + 3,
			       ar = 9 * n + 128;
			struct kvc_key k = { ++id, 77 }, k2 = { ++id, 78 };
			unsigned es = l.dtype == KVC_F32 ? 4 : 2;

			for (size_t i = 0; i < n; i++) /* small finite values: top byte masked */
				stg[in + i] = (unsigned char)(t_urand() * 256) &
					      (i % es == es - 1u ? 0x3f : 0xff);
			memcpy(stg + al, stg + in, n);
			memset(stg + out, 0, 2 * n);
			memset(stg + ar, 0, 2 * n);
			cr_assert_eq(kvc_store(c, &k, &l, in), 0, "%s dtype %d: store at %zu",
				     pols[p], l.dtype, in);
			cr_assert_eq(kvc_fetch(c, &k, out, size - out, &got), 0, "%s: fetch",
				     pols[p]);
			int e = kvc_store(c, &k2, &l, al);

			cr_assert_eq(e, 0, "%s dtype %d aligned: %s", pols[p], l.dtype,
				     kvc_strerror(e));
			cr_assert_eq(kvc_fetch(c, &k2, ar, size - ar, &got), 0);
			cr_assert_eq(memcmp(stg + out, stg + ar, 2 * n), 0,
				     "%s dtype %d: odd offsets decode as aligned ones do", pols[p],
				     l.dtype);
		}
		kvc_detach(c);
	}
}
