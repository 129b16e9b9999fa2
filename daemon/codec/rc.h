/* rc.h - a binary range coder with adaptive bit models, the one LZMA made standard: 11-bit
 * probabilities that move a 32nd of the way towards each coded bit, a 32-bit range, carries
 * propagated through a cached byte. Integers only, so every machine writes and reads the same
 * bytes. The encoder never writes past its buffer and the decoder never reads past its input:
 * each says afterwards whether it had to stop (kvcd_rce_end, kvcd_rcd_ok). */
#ifndef KVCD_RC_H
#define KVCD_RC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KVCD_RC_P_INIT 1024 /* a fresh bit model: 1 and 0 alike */

struct kvcd_rce {
	uint8_t *o;
	size_t cap, n;
	uint64_t low;
	uint32_t range;
	uint8_t cache;
	uint64_t pending; /* bytes held back: the cached one, then 0xff ones a carry may bump */
	bool full;
};

struct kvcd_rcd {
	const uint8_t *in;
	size_t len, at;
	uint32_t range, code;
	bool past; /* read beyond the input (taken as zeros) */
};

void kvcd_rce_init(struct kvcd_rce *e, uint8_t *o, size_t cap);
/* Code @bit with the model *@p, which then learns it. */
void kvcd_rce_bit(struct kvcd_rce *e, uint16_t *p, uint32_t bit);
/* The low @nb (at most 24) bits of @v, most significant first, each at even odds. */
void kvcd_rce_direct(struct kvcd_rce *e, uint32_t v, uint32_t nb);
/* Flush: the bytes written, or 0 when they did not fit in the buffer. */
size_t kvcd_rce_end(struct kvcd_rce *e);

void kvcd_rcd_init(struct kvcd_rcd *d, const uint8_t *in, size_t len);
uint32_t kvcd_rcd_bit(struct kvcd_rcd *d, uint16_t *p);
uint32_t kvcd_rcd_direct(struct kvcd_rcd *d, uint32_t nb);
/* Did the decoder keep within its input? (A stream that needs more is not one the encoder
 * wrote.) */
static inline bool kvcd_rcd_ok(const struct kvcd_rcd *d)
{
	return !d->past;
}

#endif
