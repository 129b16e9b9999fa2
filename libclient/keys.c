/* keys.c - chained prefix keys, identical in every process and on every machine.
 *
 * key(i) = XXH3-128(key(i-1) as two little-endian u64 (hi, lo) || u32 LE length of ns ||
 *                   ns bytes || token ids of chunk i as little-endian int32), key(-1) = 0.
 * The namespace is salted in so that two models never share a key even for equal tokens.
 */
#include <errno.h>
#include <string.h>
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "kvc.h"

static void put_le64(unsigned char *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (unsigned char)(v >> (8 * i));
}

int kvc_key_chain(const struct kvc_key *prev, const char *ns, const int32_t *tokens, size_t ntokens,
		  struct kvc_key *out)
{
	XXH3_state_t st;
	unsigned char head[20];
	size_t nslen = ns ? strlen(ns) : 0;
	XXH128_hash_t h;

	if (!out || (ntokens && !tokens) || nslen > UINT32_MAX)
		return -EINVAL;
	put_le64(head, prev ? prev->hi : 0);
	put_le64(head + 8, prev ? prev->lo : 0);
	for (int i = 0; i < 4; i++)
		head[16 + i] = (unsigned char)(nslen >> (8 * i));
	XXH3_128bits_reset(&st);
	XXH3_128bits_update(&st, head, sizeof(head));
	XXH3_128bits_update(&st, ns ? ns : "", nslen);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	XXH3_128bits_update(&st, tokens, ntokens * sizeof(*tokens));
#else
	for (size_t i = 0; i < ntokens; i++) {
		uint32_t t = __builtin_bswap32((uint32_t)tokens[i]);

		XXH3_128bits_update(&st, &t, sizeof(t));
	}
#endif
	h = XXH3_128bits_digest(&st);
	out->hi = h.high64;
	out->lo = h.low64;
	return 0;
}

int kvc_key_chain_all(const char *ns, const int32_t *tokens, size_t ntokens, size_t chunk,
		      struct kvc_key *out, size_t max)
{
	size_t n;

	if (!chunk || (ntokens && !tokens) || (max && !out))
		return -EINVAL;
	n = ntokens / chunk;
	if (n > max)
		n = max;
	if (n > INT32_MAX)
		return -EOVERFLOW;
	for (size_t i = 0; i < n; i++) {
		int err = kvc_key_chain(i ? &out[i - 1] : NULL, ns, tokens + i * chunk, chunk,
					&out[i]);

		if (err)
			return err;
	}
	return (int)n;
}
