/* fuzz_decode.c - decoding a block from untrusted bytes: the remote tier reads blocks back
 * from the network, so kvcd_codec_decode must check every header field it relies on. Any
 * input decodes into the size kvcd_codec_out_size gave, or is refused; nothing is read or
 * written out of bounds (ASan), no undefined behaviour (UBSan). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n)
{
	struct kvcp_layout l;
	uint64_t out;
	void *src, *dst;

	/* pool blocks are 64-byte aligned: so is the copy the codec reads */
	src = aligned_alloc(64, (n + 64) & ~(size_t)63);
	if (!src)
		return 0;
	memcpy(src, data, n);
	out = kvcd_codec_out_size(src, n);
	if (out && out <= (64u << 20)) {
		dst = aligned_alloc(64, (out + 64) & ~(uint64_t)63);
		if (dst) {
			int err = kvcd_codec_decode(n % 2 ? KVCD_ISA_SCALAR : kvcd_isa_best(), src,
						    n, dst, out, &l);

			if (err && err != -EBADMSG && err != -ENOMEM)
				abort(); /* out_size promised room: only a bad block may fail */
			free(dst);
		}
	}
	free(src);
	return 0;
}
