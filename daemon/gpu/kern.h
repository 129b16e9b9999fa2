/* kern.h - the GPU codecs' work, one item at a time: the kernels in codec.cu run these
 * functions over a grid, and the C compiler builds the same functions for the host so that
 * tests/unit_gpucodec.c can check, on a machine without a GPU, that walking the grid writes
 * the bytes libkvccodec writes.
 *
 * Bit-exactness with the CPU codecs (quant.c, convert.c, units.c) rests on the same IEEE
 * operations in the same order. On the device every rounding step is spelled out (__fsub_rn,
 * __fmul_rn, ...) so that nvcc cannot fuse a multiply and an add, and the file is compiled
 * with --fmad=false and IEEE division and square root besides; on the host the codec's
 * -ffp-contract=off does the same. f16, bf16 and e4m3 conversions are integer code, the
 * CPU's reference algorithms.
 *
 * Items, numbered within their unit (layer, K/V, head):
 *   encode, phase 1   one parameter group: its range, then f16 scale and zero (int, kivi)
 *                     or f16 scale (fp8), written into the unit; where each group's codes
 *                     fill whole bytes (per-token groups, the common case), its codes too,
 *                     in the same pass over its values
 *   encode, phase 2   the other units (kivi keys): one byte of packed codes (each code it
 *                     holds computed from its value and its group's parameters), or one
 *                     byte of kivi's residual rows
 *   decode            one element of the raw block
 * The header is written by the host (kvcd_codec_gpu_header). Raw blocks are aligned to
 * their element size; encoded bytes are read and written a byte at a time, since params and
 * units fall at any offset.
 */
#ifndef KVCG_KERN_H
#define KVCG_KERN_H

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "../codec/elem.h"
#include "../codec/gpujob.h"

/* ---- the block's geometry ------------------------------------------------------------------ */

KVCE_FN uint16_t kvcg_get16(const uint8_t *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}

KVCE_FN void kvcg_put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

/* Element (layer, K/V, token, head, channel) of the raw block [layer][K,V][token][head][dim]. */
KVCE_FN uint64_t kvcg_elem(const struct kvcg_job *j, uint32_t layer, uint32_t kv, uint32_t t,
			   uint32_t head, uint32_t c)
{
	return (((uint64_t)layer * 2 + kv) * j->tokens + t) * ((uint64_t)j->heads * j->hd) +
	       (uint64_t)head * j->hd + c;
}

/* Where unit (layer, K/V, head) starts in the encoded block. */
KVCE_FN uint64_t kvcg_unit_at(const struct kvcg_job *j, uint32_t layer, uint32_t kv, uint32_t head)
{
	return j->body + (uint64_t)layer * j->heads * (j->u[0].bytes + j->u[1].bytes) +
	       (uint64_t)kv * j->heads * j->u[0].bytes + (uint64_t)head * j->u[kv].bytes;
}

KVCE_FN float kvcg_load(const struct kvcg_job *j, const uint8_t *raw, uint64_t e)
{
	if (j->dtype == KVCG_F32)
		return ((const float *)raw)[e];
	if (j->dtype == KVCG_F16)
		return kvce_from_f16(((const uint16_t *)raw)[e]);
	return kvce_float((uint32_t)((const uint16_t *)raw)[e] << 16);
}

/* kvcd_from_f32: f16 saturates, so that a value decoded half a step past the range stays
 * finite. */
KVCE_FN void kvcg_store(const struct kvcg_job *j, uint8_t *raw, uint64_t e, float x)
{
	if (j->dtype == KVCG_F32)
		((float *)raw)[e] = x;
	else if (j->dtype == KVCG_F16)
		((uint16_t *)raw)[e] = kvce_to_f16(x > 65504.0f	   ? 65504.0f
						   : x < -65504.0f ? -65504.0f
								   : x);
	else
		((uint16_t *)raw)[e] = kvce_to_bf16(x);
}

/* The grid is two-dimensional: one row per unit, (layer, K/V, head) in the block's order, and
 * along it the unit's items, so that no item divides a 64-bit index to find its unit. Every
 * count inside a unit fits 32 bits (kvcd_units_gpu_job checks it). */
KVCE_FN uint32_t kvcg_units(const struct kvcg_job *j)
{
	return j->layers * 2 * j->heads;
}

KVCE_FN void kvcg_unit_of(const struct kvcg_job *j, uint32_t unit, uint32_t *layer, uint32_t *kv,
			  uint32_t *head)
{
	*layer = unit / (2 * j->heads);
	*kv = unit / j->heads % 2;
	*head = unit % j->heads;
}

KVCE_FN uint32_t kvcg_res_bytes(const struct kvcg_job *j, uint32_t kv)
{
	return j->u[kv].nres * j->hd * j->es;
}

/* Items of a unit: phase 1 (its parameter groups), phase 2 (its code and residual bytes), and
 * decoding (its elements). */
KVCE_FN uint32_t kvcg_enc1_items(const struct kvcg_job *j, uint32_t kv)
{
	return j->u[kv].nparams;
}

KVCE_FN uint32_t kvcg_enc2_items(const struct kvcg_job *j, uint32_t kv)
{
	return j->u[kv].one_pass ? 0 : (uint32_t)j->u[kv].code_bytes + kvcg_res_bytes(j, kv);
}

KVCE_FN uint32_t kvcg_dec_items(const struct kvcg_job *j, uint32_t kv)
{
	return j->u[kv].one_pass ? j->u[kv].nparams : j->tokens * j->hd;
}

/* Code @q of a unit: the token and channel it stands for, and where its group's parameters
 * are (the group's index). */
KVCE_FN void kvcg_code_at(const struct kvcg_job *j, const struct kvcg_unit *u, uint32_t q,
			  uint32_t *t, uint32_t *c, uint32_t *g)
{
	if (u->per_channel) { /* codes [group][channel][token], the last group maybe shorter */
		uint32_t grp = q / (j->G * j->hd), in = q - grp * j->G * j->hd;
		uint32_t gsz = u->nq - grp * j->G < j->G ? u->nq - grp * j->G : j->G;

		*c = in / gsz;
		*t = grp * j->G + in % gsz;
		*g = grp * j->hd + *c;
	} else {
		*t = q / j->hd;
		*c = q % j->hd;
		*g = *t * j->ngt + *c / j->gch;
	}
}

/* ---- encode --------------------------------------------------------------------------------- */

/* The code of value @x in a group of f16 @scale and @zero at @bits (quant.c's quant_one, with
 * the reciprocal rounded once as the CPU does per group). */
KVCE_FN uint32_t kvcg_quant(float x, uint16_t scale, uint16_t zero, uint32_t bits)
{
	float s = kvce_from_f16(scale), z = kvce_from_f16(zero), levels = (float)((1u << bits) - 1);
	float r = s > 0.0f ? KVCE_DIV(1.0f, s) : 0.0f;
	float q = s > 0.0f ? KVCE_RINT(KVCE_MUL(KVCE_SUB(x, z), r)) : 0.0f;

	q = q < 0.0f ? 0.0f : q > levels ? levels : q;
	return (uint32_t)q;
}

/* A one-pass unit's group (token @t, channels @c0.. @c0 + @nch) encoded with its parameters
 * just computed: its codes, packed LSB first from the byte where they start, as kvcd_pack
 * lays out a row (fp8: one e4m3 byte each, of x / scale). */
KVCE_FN void kvcg_group_codes(const struct kvcg_job *j, const struct kvcg_unit *u,
			      const uint8_t *raw, uint8_t *o, uint32_t layer, uint32_t kv,
			      uint32_t head, uint32_t t, uint32_t c0, uint32_t nch, uint16_t scale,
			      uint16_t zero)
{
	uint8_t *out = o + u->codes_at + ((uint64_t)t * j->hd + c0) * u->bits / 8;
	uint32_t acc = 0, have = 0;
	float div = kvce_from_f16(scale);

	for (uint32_t c = c0; c < c0 + nch; c++) {
		float x = kvcg_load(j, raw, kvcg_elem(j, layer, kv, t, head, c));

		if (j->kind == KVCG_FP8) {
			*out++ = div > 0.0f ? kvce_to_e4m3(KVCE_DIV(x, div)) : 0;
			continue;
		}
		acc |= kvcg_quant(x, scale, zero, u->bits) << have;
		for (have += u->bits; have >= 8; have -= 8, acc >>= 8)
			*out++ = (uint8_t)acc;
	}
}

/* Phase 1, item @i: one group's parameters. Returns 0, -EINVAL (a value is inf or nan) or
 * -ERANGE (f16 cannot hold its scale or zero), as the CPU codec would. */
KVCE_FN int kvcg_enc_params(const struct kvcg_job *j, const uint8_t *raw, uint8_t *dst,
			    uint32_t unit, uint32_t k)
{
	uint32_t layer, kv, head, t0, ntok, c0, nch;
	const struct kvcg_unit *u;
	uint8_t *o;
	float lo = INFINITY, hi = -INFINITY, amax = 0.0f;

	kvcg_unit_of(j, unit, &layer, &kv, &head);
	u = &j->u[kv];
	o = dst + kvcg_unit_at(j, layer, kv, head);
	if (u->per_channel) {
		t0 = k / j->hd * j->G;
		ntok = u->nq - t0 < j->G ? u->nq - t0 : j->G;
		c0 = k % j->hd;
		nch = 1;
	} else {
		t0 = k / j->ngt;
		ntok = 1;
		c0 = k % j->ngt * j->gch;
		nch = j->hd - c0 < j->gch ? j->hd - c0 : j->gch;
	}
	for (uint32_t t = t0; t < t0 + ntok; t++)
		for (uint32_t c = c0; c < c0 + nch; c++) {
			float x = kvcg_load(j, raw, kvcg_elem(j, layer, kv, t, head, c));

			if (!kvce_finite(x))
				return -EINVAL;
			lo = x < lo ? x : lo;
			hi = x > hi ? x : hi;
			amax = kvce_abs(x) > amax ? kvce_abs(x) : amax;
		}
	if (j->kind == KVCG_FP8) { /* smallest f16 scale s with s * 448 >= amax */
		uint16_t h;

		if (amax > 65504.0f)
			return -ERANGE;
		h = kvce_to_f16(KVCE_DIV(amax, 448.0f));
		while (KVCE_MUL(kvce_from_f16(h), 448.0f) < amax)
			h++;
		kvcg_put16(o + (uint64_t)k * 2, h);
		if (u->one_pass)
			kvcg_group_codes(j, u, raw, o, layer, kv, head, t0, c0, nch, h, 0);
		return 0;
	}
	{
		float levels = (float)((1u << u->bits) - 1), z, want;
		uint16_t zero, scale;

		if (!(kvce_abs(lo) <= 65504.0f) || !(kvce_abs(hi) <= 65504.0f))
			return -ERANGE;
		lo = kvce_canon0(lo);
		hi = kvce_canon0(hi);
		zero = kvce_f16_directed(lo, 1);
		z = kvce_from_f16(zero);
		want = KVCE_DIV(KVCE_SUB(hi, z), levels);
		if (!(want <= 65504.0f))
			return -ERANGE;
		scale = kvce_f16_directed(want, 0);
		kvcg_put16(o + (uint64_t)k * 4, scale);
		kvcg_put16(o + (uint64_t)k * 4 + 2, zero);
		if (u->one_pass)
			kvcg_group_codes(j, u, raw, o, layer, kv, head, t0, c0, nch, scale, zero);
	}
	return 0;
}

/* Phase 2, item @k of @unit: one byte of its codes or residual rows. */
KVCE_FN void kvcg_enc_codes(const struct kvcg_job *j, const uint8_t *raw, uint8_t *dst,
			    uint32_t unit, uint32_t k)
{
	uint32_t layer, kv, head, t, c, g;
	const struct kvcg_unit *u;
	uint8_t *o;

	kvcg_unit_of(j, unit, &layer, &kv, &head);
	u = &j->u[kv];
	o = dst + kvcg_unit_at(j, layer, kv, head);
	if (k >= u->code_bytes) { /* kivi's residual rows, as sent */
		uint32_t b = k - (uint32_t)u->code_bytes, row = j->hd * j->es;

		o[u->res_at + b] =
			raw[kvcg_elem(j, layer, kv, u->nq + b / row, head, 0) * j->es + b % row];
		return;
	}
	if (j->kind == KVCG_FP8) {
		float div, x;

		kvcg_code_at(j, u, k, &t, &c, &g);
		div = kvce_from_f16(kvcg_get16(o + (uint64_t)g * 2));
		x = kvcg_load(j, raw, kvcg_elem(j, layer, kv, t, head, c));
		o[u->codes_at + k] = div > 0.0f ? kvce_to_e4m3(KVCE_DIV(x, div)) : 0;
		return;
	}
	{
		/* codes q0..q1 touch bits [8k, 8k + 8): packed LSB first, as kvcd_pack does */
		uint32_t n = u->nq * j->hd, q0 = k * 8 / u->bits, q1 = (k * 8 + 7) / u->bits;
		uint32_t acc = 0;

		for (uint32_t q = q0; q <= q1 && q < n; q++) {
			int32_t off = (int32_t)(q * u->bits) - (int32_t)(k * 8);
			uint32_t code;

			kvcg_code_at(j, u, q, &t, &c, &g);
			code = kvcg_quant(kvcg_load(j, raw, kvcg_elem(j, layer, kv, t, head, c)),
					  kvcg_get16(o + (uint64_t)g * 4),
					  kvcg_get16(o + (uint64_t)g * 4 + 2), u->bits);
			acc |= off >= 0 ? code << off : code >> -off;
		}
		o[u->codes_at + k] = (uint8_t)acc;
	}
}

/* ---- decode --------------------------------------------------------------------------------- */

/* A one-pass unit's group @k (token k / ngt, its channels), decoded with its parameters read
 * once: what kvcg_dec_elem gives for each of its elements. */
KVCE_FN void kvcg_dec_group(const struct kvcg_job *j, const struct kvcg_unit *u, const uint8_t *o,
			    uint8_t *raw, uint32_t layer, uint32_t kv, uint32_t head, uint32_t k)
{
	uint32_t t = k / j->ngt, c0 = k % j->ngt * j->gch,
		 nch = j->hd - c0 < j->gch ? j->hd - c0 : j->gch;
	uint64_t e = kvcg_elem(j, layer, kv, t, head, c0);
	const uint8_t *in = o + u->codes_at + ((uint64_t)t * j->hd + c0) * u->bits / 8;
	uint32_t acc = 0, have = 0, mask = (1u << u->bits) - 1;

	if (j->kind == KVCG_FP8) {
		float sc = kvce_from_f16(kvcg_get16(o + (uint64_t)k * 2));

		for (uint32_t i = 0; i < nch; i++)
			kvcg_store(j, raw, e + i, KVCE_MUL(kvce_from_e4m3(in[i]), sc));
		return;
	}
	float s = kvce_from_f16(kvcg_get16(o + (uint64_t)k * 4)),
	      z = kvce_from_f16(kvcg_get16(o + (uint64_t)k * 4 + 2));

	for (uint32_t i = 0; i < nch; i++) { /* LSB first, from the group's first byte */
		for (; have < u->bits; have += 8)
			acc |= (uint32_t)*in++ << have;
		kvcg_store(j, raw, e + i, KVCE_ADD(KVCE_MUL((float)(acc & mask), s), z));
		acc >>= u->bits;
		have -= u->bits;
	}
}

/* Item @k of @unit: in a one-pass unit its group @k, else its element (token k / hd,
 * channel k % hd), into the raw block. */
KVCE_FN void kvcg_dec_elem(const struct kvcg_job *j, const uint8_t *in, uint8_t *raw, uint32_t unit,
			   uint32_t k)
{
	uint32_t layer, kv, head, t, c, q, tt, cc, g;
	const struct kvcg_unit *u;
	const uint8_t *o;
	uint64_t e;
	float x;

	kvcg_unit_of(j, unit, &layer, &kv, &head);
	u = &j->u[kv];
	o = in + kvcg_unit_at(j, layer, kv, head);
	if (u->one_pass) {
		kvcg_dec_group(j, u, o, raw, layer, kv, head, k);
		return;
	}
	t = k / j->hd;
	c = k % j->hd;
	e = kvcg_elem(j, layer, kv, t, head, c);
	if (t >= u->nq) { /* a residual row: its bytes as stored */
		const uint8_t *s = o + u->res_at + ((t - u->nq) * j->hd + c) * j->es;

		for (uint32_t b = 0; b < j->es; b++)
			raw[e * j->es + b] = s[b];
		return;
	}
	if (u->per_channel) {
		uint32_t grp = t / j->G,
			 gsz = u->nq - grp * j->G < j->G ? u->nq - grp * j->G : j->G;

		q = grp * j->G * j->hd + c * gsz + (t - grp * j->G);
	} else {
		q = t * j->hd + c;
	}
	kvcg_code_at(j, u, q, &tt, &cc, &g);
	if (j->kind == KVCG_FP8) {
		x = KVCE_MUL(kvce_from_e4m3(o[u->codes_at + q]),
			     kvce_from_f16(kvcg_get16(o + (uint64_t)g * 2)));
	} else {
		uint64_t bit = (uint64_t)q * u->bits, at = u->codes_at + bit / 8;
		uint32_t sh = (uint32_t)(bit % 8), v = o[at];

		if (sh + u->bits > 8)
			v |= (uint32_t)o[at + 1] << 8;
		v = (v >> sh) & ((1u << u->bits) - 1);
		x = KVCE_ADD(KVCE_MUL((float)v, kvce_from_f16(kvcg_get16(o + (uint64_t)g * 4))),
			     kvce_from_f16(kvcg_get16(o + (uint64_t)g * 4 + 2)));
	}
	kvcg_store(j, raw, e, x);
}

#endif /* KVCG_KERN_H */
