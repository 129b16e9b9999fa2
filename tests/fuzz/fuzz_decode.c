/* fuzz_decode.c - decoding a block from untrusted bytes: the remote tier reads blocks back
 * from the network, so kvcd_codec_decode must check every header field it relies on. Any
 * input decodes into the size kvcd_codec_out_size gave, or is refused; nothing is read or
 * written out of bounds (ASan), no undefined behaviour (UBSan). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "seedblock.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n);

/* learned= blocks decode with the seeds' basis (and a wrong one must refuse them). */
static const void *basis;
static uint64_t basis_len;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n)
{
	struct kvcp_layout l;
	uint64_t out, id;
	void *src, *dst;

	if (!basis) {
		uint16_t *b = fuzz_block();

		basis = b ? fuzz_basis(b, &basis_len) : NULL;
		free(b);
	}
	/* pool blocks are 64-byte aligned: so is the copy the codec reads */
	src = aligned_alloc(64, (n + 64) & ~(size_t)63);
	if (!src)
		return 0;
	memcpy(src, data, n);
	out = kvcd_codec_out_size(src, n);
	if (out && out <= (64u << 20)) {
		dst = aligned_alloc(64, (out + 64) & ~(uint64_t)63);
		if (dst) {
			enum kvcd_isa isa = n % 2 ? KVCD_ISA_SCALAR : kvcd_isa_best();
			int err = kvcd_codec_basis_of(src, n, &id)
					  ? kvcd_codec_decode_with(isa, src, n, basis, basis_len,
								   dst, out, &l)
					  : kvcd_codec_decode(isa, src, n, dst, out, &l);

			/* out_size promised room: only a bad block, or one whose basis this is
			 * not, may fail */
			if (err && err != -EBADMSG && err != -ENOMEM && err != -ENOKEY)
				abort();
			free(dst);
		}
	}
	free(src);
	return 0;
}
