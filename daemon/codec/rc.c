/* rc.c - the binary range coder of rc.h. */
#include "rc.h"

#define TOP   (1u << 24)
#define PBITS 11
#define PMOVE 5

static void out_byte(struct kvcd_rce *e, uint8_t b)
{
	if (e->n < e->cap)
		e->o[e->n] = b;
	else
		e->full = true;
	e->n++;
}

/* The top byte of low leaves once no carry can change it: the cached byte and the 0xff
 * bytes after it wait until then. */
static void shift_low(struct kvcd_rce *e)
{
	if ((uint32_t)e->low < 0xff000000u || (e->low >> 32)) {
		uint8_t carry = (uint8_t)(e->low >> 32), b = e->cache;

		for (; e->pending; e->pending--) {
			out_byte(e, (uint8_t)(b + carry));
			b = 0xff;
		}
		e->cache = (uint8_t)(e->low >> 24);
	}
	e->pending++;
	e->low = (e->low & 0x00ffffffu) << 8;
}

void kvcd_rce_init(struct kvcd_rce *e, uint8_t *o, size_t cap)
{
	*e = (struct kvcd_rce){ .o = o, .cap = cap, .range = 0xffffffffu, .pending = 1 };
}

void kvcd_rce_bit(struct kvcd_rce *e, uint16_t *p, uint32_t bit)
{
	uint32_t bound = (e->range >> PBITS) * *p;

	if (!bit) {
		e->range = bound;
		*p = (uint16_t)(*p + (((1u << PBITS) - *p) >> PMOVE));
	} else {
		e->low += bound;
		e->range -= bound;
		*p = (uint16_t)(*p - (*p >> PMOVE));
	}
	while (e->range < TOP) {
		e->range <<= 8;
		shift_low(e);
	}
}

void kvcd_rce_direct(struct kvcd_rce *e, uint32_t v, uint32_t nb)
{
	while (nb--) {
		e->range >>= 1;
		if (v >> nb & 1)
			e->low += e->range;
		while (e->range < TOP) {
			e->range <<= 8;
			shift_low(e);
		}
	}
}

size_t kvcd_rce_end(struct kvcd_rce *e)
{
	for (int i = 0; i < 5; i++)
		shift_low(e);
	return e->full ? 0 : e->n;
}

static uint8_t in_byte(struct kvcd_rcd *d)
{
	if (d->at < d->len)
		return d->in[d->at++];
	d->past = true;
	return 0;
}

void kvcd_rcd_init(struct kvcd_rcd *d, const uint8_t *in, size_t len)
{
	*d = (struct kvcd_rcd){ .in = in, .len = len, .range = 0xffffffffu };
	for (int i = 0; i < 5; i++) /* the first is the encoder's initial cache byte, 0 */
		d->code = d->code << 8 | in_byte(d);
}

uint32_t kvcd_rcd_bit(struct kvcd_rcd *d, uint16_t *p)
{
	uint32_t bound = (d->range >> PBITS) * *p, bit;

	if (d->code < bound) {
		d->range = bound;
		*p = (uint16_t)(*p + (((1u << PBITS) - *p) >> PMOVE));
		bit = 0;
	} else {
		d->code -= bound;
		d->range -= bound;
		*p = (uint16_t)(*p - (*p >> PMOVE));
		bit = 1;
	}
	while (d->range < TOP) {
		d->range <<= 8;
		d->code = d->code << 8 | in_byte(d);
	}
	return bit;
}

uint32_t kvcd_rcd_direct(struct kvcd_rcd *d, uint32_t nb)
{
	uint32_t v = 0;

	while (nb--) {
		uint32_t bit;

		d->range >>= 1;
		bit = d->code >= d->range;
		d->code -= bit ? d->range : 0;
		v = v << 1 | bit;
		while (d->range < TOP) {
			d->range <<= 8;
			d->code = d->code << 8 | in_byte(d);
		}
	}
	return v;
}
