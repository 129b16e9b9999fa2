/* unit_keys.c - chained prefix keys: the byte layout is pinned against a one-shot XXH3-128 of
 * the documented encoding, and every input changes the key. */
#include <xxhash.h>

#include "t_util.h"

Test(keys, matches_the_documented_encoding)
{
	int32_t toks[3] = { 1, 500, -7 };
	unsigned char buf[16 + 4 + 5 + 12] = { 0 };
	struct kvc_key k, prev = { 0x0102030405060708ull, 0x1112131415161718ull }, k2;
	XXH128_hash_t h;

	/* first chunk: prev = 0 */
	buf[16] = 5;
	memcpy(buf + 20, "llama", 5);
	memcpy(buf + 25, "\x01\0\0\0\xf4\x01\0\0\xf9\xff\xff\xff", 12);
	h = XXH3_128bits(buf, sizeof(buf));
	cr_assert_eq(kvc_key_chain(NULL, "llama", toks, 3, &k), 0);
	cr_assert_eq(k.hi, h.high64);
	cr_assert_eq(k.lo, h.low64);
	/* chained: prev as little-endian hi then lo */
	for (int i = 0; i < 8; i++) {
		buf[i] = (unsigned char)(prev.hi >> (8 * i));
		buf[8 + i] = (unsigned char)(prev.lo >> (8 * i));
	}
	h = XXH3_128bits(buf, sizeof(buf));
	cr_assert_eq(kvc_key_chain(&prev, "llama", toks, 3, &k2), 0);
	cr_assert_eq(k2.hi, h.high64);
	cr_assert_eq(k2.lo, h.low64);
}

Test(keys, every_input_matters)
{
	int32_t a[4] = { 1, 2, 3, 4 }, b[4] = { 1, 2, 3, 5 };
	struct kvc_key k1, k2, k3, k4;

	kvc_key_chain(NULL, "m", a, 4, &k1);
	kvc_key_chain(NULL, "m", b, 4, &k2);
	kvc_key_chain(NULL, "n", a, 4, &k3);
	kvc_key_chain(&k2, "m", a, 4, &k4);
	cr_assert(k1.lo != k2.lo && k1.lo != k3.lo && k1.lo != k4.lo);
	kvc_key_chain(NULL, "m", a, 4, &k2);
	cr_assert(k1.lo == k2.lo && k1.hi == k2.hi, "deterministic");
}

Test(keys, chain_all_equals_step_by_step)
{
	int32_t toks[70];
	struct kvc_key all[8], step;

	for (int i = 0; i < 70; i++)
		toks[i] = i * 3;
	cr_assert_eq(kvc_key_chain_all("ns", toks, 70, 16, all, 8), 4, "4 full chunks of 16");
	for (int i = 0; i < 4; i++) {
		kvc_key_chain(i ? &all[i - 1] : NULL, "ns", toks + 16 * i, 16, &step);
		cr_assert(step.hi == all[i].hi && step.lo == all[i].lo);
	}
	cr_assert_eq(kvc_key_chain_all("ns", toks, 70, 0, all, 8), -EINVAL);
	cr_assert_eq(kvc_key_chain_all("ns", toks, 70, 16, all, 2), 2, "capped by max");
}
