/* seedblock.h - the block the decode seeds are encoded from, and the learned basis learned=
 * blocks among them name: the same bytes in mkseeds.c and fuzz_decode.c, so that a seed's
 * basis is the one the fuzzer decodes with. */
#ifndef FUZZ_SEEDBLOCK_H
#define FUZZ_SEEDBLOCK_H

#include <stdint.h>
#include <stdlib.h>

#include "codec.h"

#define FUZZ_BASIS_ID 0x5eedba5e5eedba5eull

static const struct kvcp_layout fuzz_layout = {
	.dtype = KVCP_F16, .layers = 2, .kv_heads = 2, .head_dim = 32, .tokens = 16
};

/* The seed block: f16 values in [-2, 2) from a fixed xorshift. Malloc'd, 64-byte aligned. */
static inline uint16_t *fuzz_block(void)
{
	size_t raw = kvcp_layout_bytes(&fuzz_layout);
	uint16_t *src = aligned_alloc(64, raw);
	uint64_t x = 88172645463325252ull;

	for (size_t i = 0; src && i < raw / 2; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		src[i] = kvcd_f32_to_f16((float)((double)(x >> 11) * 0x1p-53 * 4 - 2));
	}
	return src;
}

/* The basis learned from it (90% energy, version 1, FUZZ_BASIS_ID), or NULL without
 * LAPACKE. */
static inline void *fuzz_basis(const uint16_t *src, uint64_t *len)
{
	const void *srcs[1] = { src };
	void *b = NULL;

	if (kvcd_basis_learn(KVCD_ISA_SCALAR, 1, &fuzz_layout, srcs, 90, NULL, 1, &b, len))
		return NULL;
	kvcd_basis_seal(b, FUZZ_BASIS_ID);
	return b;
}

#endif /* FUZZ_SEEDBLOCK_H */
